//! Training runs end to end: the run folder, resuming bit for bit, interrupting, early
//! stopping, and learning that actually happens.

mod common;

use std::sync::atomic::AtomicBool;

use wgnn::data::{DataSource, LoadOptions};
use wgnn::model::{NetSpec, Sparsity};
use wgnn::optim::{Lbfgs, Method, Minibatch, Stop, UpdateRule};
use wgnn::train::{RunFolder, RunStatus, TrainJob, train};
use wgnn::{Backend, CpuBackend, Targets};

fn job(spec: NetSpec, method: Method, iterations: usize, out: &std::path::Path) -> TrainJob {
    TrainJob { seed: 3, image_shape: Some((8, 8)), ..TrainJob::new(spec, method, iterations, out) }
}

fn patches() -> ndarray::Array2<f32> {
    let options = LoadOptions { patch_count: 400, ..Default::default() };
    DataSource::Synthetic.load(&options).unwrap().x
}

fn sae() -> NetSpec {
    NetSpec::sparse_autoencoder(64, 16, 1e-4, Sparsity { target: 0.01, weight: 3.0 }).unwrap()
}

/// One uninterrupted run of `total` iterations, and one that stops after `first` with a
/// checkpoint every `every` and is resumed from the file to `total`.
fn straight_and_resumed(
    backend: &mut dyn wgnn::Backend,
    method: Method,
    total: usize,
    first: usize,
    every: usize,
) -> (wgnn::train::TrainOutcome, wgnn::train::TrainOutcome) {
    let (x, never) = (patches(), AtomicBool::new(false));
    let straight_dir = tempfile::tempdir().unwrap();
    let straight_job = job(sae(), method.clone(), total, straight_dir.path());
    let straight = train(straight_job, backend, &x, Targets::Inputs, &mut |_| {}, &never).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut stopped = job(sae(), method.clone(), first, dir.path());
    stopped.checkpoint_every = Some(every);
    train(stopped, backend, &x, Targets::Inputs, &mut |_| {}, &never).unwrap();
    let mut resumed_job = job(sae(), method, total, dir.path());
    // The run asked for checkpoints: the final optimizer state is kept beside the model.
    resumed_job.resume = Some(wgnn::checkpoint::Checkpoint::load(&dir.path().join("checkpoint.safetensors")).unwrap());
    let resumed = train(resumed_job, backend, &x, Targets::Inputs, &mut |_| {}, &never).unwrap();
    (straight, resumed)
}

#[test]
fn a_run_writes_its_folder_and_learns() {
    let dir = tempfile::tempdir().unwrap();
    let x = patches();
    let mut backend = CpuBackend::<f32>::new(sae()).unwrap();
    let never = AtomicBool::new(false);
    let outcome =
        train(job(sae(), Method::lbfgs(), 40, dir.path()), &mut backend, &x, Targets::Inputs, &mut |_| {}, &never)
            .unwrap();
    for f in ["model.safetensors", "metrics.json", "loss.png", "filters.png", "reconstructions.png"] {
        assert!(dir.path().join(f).exists(), "{f} missing");
    }
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("metrics.json")).unwrap()).unwrap();
    let (initial, final_cost) = (metrics["initial_cost"].as_f64().unwrap(), metrics["final_cost"].as_f64().unwrap());
    assert!(final_cost < initial / 10.0, "J went from {initial} to {final_cost}");
    assert_eq!(metrics["history"].as_array().unwrap().len(), 41);
    let filters = image::open(dir.path().join("filters.png")).unwrap();
    // 16 tiles of 8×8 drawn 6× larger in a 4×4 grid with 1-pixel borders.
    assert_eq!((filters.width(), filters.height()), (4 * 49 + 1, 4 * 49 + 1));
    let ck = wgnn::checkpoint::Checkpoint::load(&dir.path().join("model.safetensors")).unwrap();
    assert_eq!(ck.theta, outcome.theta);
    assert_eq!(backend.cost(&ck.theta, wgnn::Batch::All).unwrap().total(), final_cost);
}

#[test]
fn resuming_from_checkpoints_equals_one_uninterrupted_run() {
    let mut backend = CpuBackend::<f32>::new(sae()).unwrap();
    let method = Method::Lbfgs(Lbfgs::default().with_memory(10));
    // 12 iterations with a checkpoint every 5, then resume from the file to 30.
    let (straight, resumed) = straight_and_resumed(&mut backend, method, 30, 12, 5);
    assert!(resumed.theta.iter().zip(&straight.theta).all(|(a, b)| a.to_bits() == b.to_bits()), "resumed θ differs");
    assert_eq!(resumed.final_cost, straight.final_cost);
}

#[test]
fn resuming_gpu_minibatch_training_from_a_checkpoint_equals_one_uninterrupted_run() {
    // Adam keeps θ and its moments on the device; the checkpoint every 4 epochs reads them
    // back, and the resumed run loads them again: the same θ, bit for bit.
    let mut backend =
        wgnn::GpuBackend::new(sae(), &wgnn::gpu::GpuOptions::default()).expect("a GPU adapter (lavapipe in CI)");
    let method = Method::Minibatch(Minibatch::adam(0.01).with_batch_size(50).with_seed(2));
    let (straight, resumed) = straight_and_resumed(&mut backend, method, 10, 6, 4);
    assert_eq!(resumed.summary.evaluations, straight.summary.evaluations);
    assert!(resumed.theta.iter().zip(&straight.theta).all(|(a, b)| a.to_bits() == b.to_bits()), "resumed θ differs");
    assert_eq!(resumed.final_cost, straight.final_cost);
    assert_eq!(backend.transfers().grad_readbacks, 0, "minibatch steps never read the gradient back");
}

#[test]
fn an_interrupted_run_is_saved_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let x = patches();
    let mut backend = CpuBackend::<f32>::new(sae()).unwrap();
    let stop = AtomicBool::new(false);
    let mut seen = 0;
    let outcome = train(
        job(sae(), Method::lbfgs(), 100, dir.path()),
        &mut backend,
        &x,
        Targets::Inputs,
        &mut |p| {
            if p.record.is_some() {
                seen += 1;
                if seen == 5 {
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                }
            }
        },
        &stop,
    )
    .unwrap();
    assert_eq!(outcome.status, RunStatus::Interrupted);
    assert_eq!(outcome.summary.iterations, 4);
    // Not a finished model: a checkpoint to resume from, and metrics that say so.
    assert!(!dir.path().join("model.safetensors").exists(), "an interrupted run wrote model.safetensors");
    let ck = wgnn::checkpoint::Checkpoint::load(&dir.path().join("checkpoint.safetensors")).unwrap();
    assert!(!ck.metadata.optimizer.is_null(), "the optimizer state is saved for resuming");
    assert_eq!(ck.theta, outcome.theta);
    assert_eq!(wgnn::train::recorded_status(dir.path()).as_deref(), Some("interrupted"));
    assert!(wgnn::train::unfinished_reason(dir.path()).unwrap().contains("checkpoint.safetensors"));

    // Resumed from that checkpoint to the end: the model appears and the checkpoint goes.
    let mut resumed = job(sae(), Method::lbfgs(), 8, dir.path());
    resumed.resume = Some(ck);
    let outcome = train(resumed, &mut backend, &x, Targets::Inputs, &mut |_| {}, &AtomicBool::new(false)).unwrap();
    assert_eq!((outcome.status, outcome.summary.iterations), (RunStatus::Finished, 8));
    assert!(dir.path().join("model.safetensors").exists());
    assert!(!dir.path().join("checkpoint.safetensors").exists(), "a finished run left its checkpoint");
    assert_eq!(wgnn::train::unfinished_reason(dir.path()), None);
}

/// Settings that would divide by zero, loop for nothing or be silently ignored are refused
/// by `train` itself (not only by the CLI), before the run folder is created.
#[test]
fn zero_and_out_of_range_settings_are_refused_before_anything_is_written() {
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("run");
    let x = patches();
    let mut backend = CpuBackend::<f32>::new(sae()).unwrap();
    type Change = Box<dyn Fn(&mut TrainJob)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|j| j.checkpoint_every = Some(0)), "checkpoint every 0"),
        (Box::new(|j| j.stop.max_iterations = 0), "0 iterations"),
        (Box::new(|j| j.stop.max_evaluations = Some(0)), "0 evaluations"),
        (Box::new(|j| j.validation_fraction = 1.0), "validation fraction of 1"),
        (Box::new(|j| j.validation_fraction = f64::NAN), "validation fraction of NaN"),
        (Box::new(|j| j.validation_fraction = -0.1), "validation fraction of -0.1"),
        (
            Box::new(|j| {
                j.validation_fraction = 0.2;
                j.patience = Some(0);
            }),
            "patience of 0",
        ),
        (Box::new(|j| j.patience = Some(3)), "give a validation fraction above 0"),
        (Box::new(|j| j.stop.cost_patience = 0), "cost patience"),
        (Box::new(|j| j.method = Method::Minibatch(Minibatch::adam(0.01).with_batch_size(0))), "batch size"),
    ];
    for (change, needle) in cases {
        let mut j = job(sae(), Method::lbfgs(), 5, &out);
        change(&mut j);
        let e = train(j, &mut backend, &x, Targets::Inputs, &mut |_| {}, &AtomicBool::new(false))
            .err()
            .unwrap_or_else(|| panic!("`{needle}` was accepted"))
            .to_string();
        assert!(e.contains(needle), "expected `{needle}` in: {e}");
        assert!(!out.exists(), "`{needle}`: the refused run created its folder");
    }
}

/// A run that diverges keeps what it can under names that do not claim a finished model, and
/// says why; it cannot be resumed, and says so. On both backends.
#[test]
fn a_diverged_run_keeps_a_checkpoint_and_no_model() {
    let x = patches();
    let diverging = Method::Minibatch(Minibatch::sgd(1e4).with_batch_size(50).with_seed(1));
    let gpu = wgnn::GpuBackend::new(sae(), &wgnn::gpu::GpuOptions::default()).expect("a GPU adapter (lavapipe in CI)");
    let backends: Vec<Box<dyn Backend>> = vec![Box::new(CpuBackend::<f32>::new(sae()).unwrap()), Box::new(gpu)];
    for mut backend in backends {
        let name = backend.name();
        let dir = tempfile::tempdir().unwrap();
        let never = AtomicBool::new(false);
        let outcome = train(
            job(sae(), diverging.clone(), 20, dir.path()),
            backend.as_mut(),
            &x,
            Targets::Inputs,
            &mut |_| {},
            &never,
        )
        .unwrap();
        let RunStatus::Diverged { reason } = &outcome.status else {
            panic!("{name}: SGD at η = 1e4 ended {:?}", outcome.status)
        };
        assert!(reason.contains("NaN or infinite"), "{name}: {reason}");
        assert!(!dir.path().join("model.safetensors").exists(), "{name}: a diverged run wrote model.safetensors");
        let ck = wgnn::checkpoint::Checkpoint::load(&dir.path().join("checkpoint.safetensors")).unwrap();
        assert!(ck.theta.iter().all(|v| v.is_finite()), "{name}: the kept θ is not finite");
        assert_eq!(ck.theta, outcome.theta, "{name}");
        assert!(ck.metadata.optimizer.is_null(), "{name}: a failed optimizer's state is not for resuming");
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("metrics.json")).unwrap()).unwrap();
        assert_eq!(metrics["status"], "diverged", "{name}");
        assert_eq!(metrics["error"].as_str(), Some(reason.as_str()), "{name}");
        assert!(wgnn::train::unfinished_reason(dir.path()).unwrap().contains("diverged"), "{name}");

        let mut again = job(sae(), diverging.clone(), 20, dir.path());
        again.resume = Some(ck);
        let e = train(again, backend.as_mut(), &x, Targets::Inputs, &mut |_| {}, &never).err().unwrap().to_string();
        assert!(e.contains("cannot be resumed") && e.contains("start a new run"), "{name}: {e}");
    }
}

/// A cost that is not finite at the initial θ (here: λ/2·ΣW² overflows) fails at once with an
/// error: the run is a failure, not a model.
#[test]
fn a_non_finite_cost_at_the_initial_theta_leaves_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let x = patches();
    let mut backend = CpuBackend::<f64>::new(sae()).unwrap();
    let mut j = job(sae(), Method::lbfgs(), 5, dir.path());
    let mut theta = wgnn::model::Init::Uniform.theta(&sae(), 1);
    theta[0] = 1e200;
    j.initial_theta = Some(theta);
    // Not a divergence (no step was taken): bad data or a bad θ, so an error, and the folder
    // records a failed run.
    let e = train(j, &mut backend, &x, Targets::Inputs, &mut |_| {}, &AtomicBool::new(false)).err().unwrap();
    assert!(e.to_string().contains("initial θ"), "{e}");
    assert!(!dir.path().join("model.safetensors").exists());
    assert_eq!(wgnn::train::recorded_status(dir.path()).as_deref(), Some("failed"));
}

/// One process at a time per run folder: a folder held by another writer is refused before
/// any work; a path under a file (unwritable even for root) is refused and nothing is created.
#[test]
fn a_busy_or_unwritable_run_folder_is_refused_before_training() {
    let parent = tempfile::tempdir().unwrap();
    let x = patches();
    let mut backend = CpuBackend::<f32>::new(sae()).unwrap();
    let never = AtomicBool::new(false);
    let busy = parent.path().join("busy");
    let held = RunFolder::open(&busy).unwrap();
    let mut trained = false;
    let e = train(
        job(sae(), Method::lbfgs(), 3, &busy),
        &mut backend,
        &x,
        Targets::Inputs,
        &mut |_| trained = true,
        &never,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("another wgnn process is writing this run folder"), "{e}");
    assert!(!trained, "it trained before refusing the folder");
    drop(held);
    // Released: the next run may write there.
    let outcome =
        train(job(sae(), Method::lbfgs(), 2, &busy), &mut backend, &x, Targets::Inputs, &mut |_| {}, &never).unwrap();
    assert_eq!(outcome.status, RunStatus::Finished);

    let file = parent.path().join("a-file");
    std::fs::write(&file, "not a folder").unwrap();
    for out in [file.join("run"), file.clone()] {
        let e = train(job(sae(), Method::lbfgs(), 2, &out), &mut backend, &x, Targets::Inputs, &mut |_| {}, &never)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(&out.display().to_string()), "{e}");
        assert_eq!(std::fs::read(&file).unwrap(), b"not a folder");
    }
}

/// Checkpoints written while training are `checkpoint.safetensors`; a finished run replaces
/// them by `model.safetensors`.
#[test]
fn periodic_checkpoints_are_not_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let x = patches();
    let mut backend = CpuBackend::<f32>::new(sae()).unwrap();
    let mut j = job(sae(), Method::lbfgs(), 6, dir.path());
    j.checkpoint_every = Some(2);
    let mut seen_during = Vec::new();
    let path = dir.path().to_path_buf();
    let outcome = train(
        j,
        &mut backend,
        &x,
        Targets::Inputs,
        &mut |p| {
            if p.record.is_some_and(|r| r.iteration == 5) {
                seen_during
                    .push((path.join("checkpoint.safetensors").exists(), path.join("model.safetensors").exists()));
            }
        },
        &AtomicBool::new(false),
    )
    .unwrap();
    assert_eq!(outcome.status, RunStatus::Finished);
    assert_eq!(seen_during, [(true, false)], "during training: (checkpoint, model)");
    // Finished: the model (no optimizer state), and, since the run asked for checkpoints, the
    // final optimizer state beside it to continue from.
    let model = wgnn::checkpoint::Checkpoint::load(&dir.path().join("model.safetensors")).unwrap();
    let kept = wgnn::checkpoint::Checkpoint::load(&dir.path().join("checkpoint.safetensors")).unwrap();
    assert!(model.metadata.optimizer.is_null() && !kept.metadata.optimizer.is_null());
    assert_eq!(kept.theta, outcome.theta);
}

#[test]
fn softmax_on_real_digits_with_early_stopping() {
    let path = common::data_dir().join("digits8x8/digits.csv.gz");
    let data = DataSource::Csv(path).load(&LoadOptions::default()).unwrap();
    let spec = NetSpec::new(&[64, 32, 10], wgnn::model::Activation::Relu, wgnn::model::Output::Softmax).unwrap();
    let x = data.x.mapv(|v| v / 16.0);
    let dir = tempfile::tempdir().unwrap();
    let method = Method::Minibatch(Minibatch::adam(0.01).with_rule(UpdateRule::ADAM).with_batch_size(64).with_seed(1));
    let mut j = job(spec.clone(), method, 60, dir.path());
    j.stop = Stop { max_iterations: 60, ..Stop::MINIBATCH };
    j.validation_fraction = 0.2;
    j.patience = Some(5);
    let mut backend = CpuBackend::<f32>::new(spec).unwrap();
    let never = AtomicBool::new(false);
    let y = Targets::Labels(data.labels.as_deref().unwrap());
    let outcome = train(j, &mut backend, &x, y, &mut |_| {}, &never).unwrap();
    let error = outcome.validation.unwrap();
    println!("validation error {error}, stop: {}", outcome.summary.reason);
    assert!(error < 0.06, "held-out error rate {error}");
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["validation_examples"].as_u64().unwrap(), 359);
    assert!(metrics["train_accuracy"].as_f64().unwrap() > 0.97);
}

#[test]
fn the_gpu_trains_the_ufldl_autoencoder_to_the_cpu_cost() {
    // The training issue's check, reduced for lavapipe: 2,000 normalised 8×8 natural-image
    // patches, 64-25-64, ρ = 0.01, λ = 1e-4, β = 3, 100 L-BFGS iterations, uniform init.
    let dir = common::data_dir().join("natural");
    let options = LoadOptions { patch_count: 2_000, seed: 0, ..Default::default() };
    let x = DataSource::Patches(dir).load(&options).unwrap().x;
    let spec = NetSpec::sparse_autoencoder(64, 25, 1e-4, Sparsity { target: 0.01, weight: 3.0 }).unwrap();
    let never = AtomicBool::new(false);
    let run = |backend: &mut dyn Backend| {
        let out = tempfile::tempdir().unwrap();
        train(job(spec.clone(), Method::lbfgs(), 100, out.path()), backend, &x, Targets::Inputs, &mut |_| {}, &never)
            .unwrap()
    };
    let cpu = run(&mut CpuBackend::<f32>::new(spec.clone()).unwrap());
    let mut gpu =
        wgnn::GpuBackend::new(spec.clone(), &wgnn::gpu::GpuOptions::default()).expect("a GPU adapter (lavapipe in CI)");
    let gpu = run(&mut gpu);
    let gap = (gpu.final_cost - cpu.final_cost).abs() / cpu.final_cost;
    println!("final cost: cpu {} gpu {} (gap {gap:e})", cpu.final_cost, gpu.final_cost);
    assert!(gap < 0.01, "GPU final cost {} vs CPU {}", gpu.final_cost, cpu.final_cost);
    assert!(cpu.final_cost < 1.0, "the autoencoder did not learn: J = {}", cpu.final_cost);
}

/// The top row of tiles (originals) of a reconstructions.png: its first 6·8 + 1 pixel rows.
fn top_row(picture: &image::GrayImage) -> Vec<u8> {
    let cell = 8 * 6 + 1;
    picture.rows().take(cell).flat_map(|row| row.map(|p| p[0])).collect()
}

#[test]
fn reconstructions_of_a_model_trained_on_whitened_patches_are_drawn_in_pixels() {
    use wgnn::data::whiten::{Components, Whitening};
    use wgnn::model::{Activation, Output};
    let raw = patches();
    let never = AtomicBool::new(false);
    // ZCA: the top row is the raw patches themselves. PCA with 20 of 64 components: it is the
    // patches projected onto the top 20 principal components (UFLDL's approximate recovery),
    // and the 20 whitened values are no square picture at all.
    for white in [
        Whitening::fit_zca(raw.view(), 0.1).unwrap(),
        Whitening::fit_pca(raw.view(), 0.1, Components::Count(20)).unwrap(),
    ] {
        let x = white.apply(raw.view()).unwrap();
        let n = white.outputs;
        let spec = NetSpec::new(&[n, 16, n], Activation::Sigmoid, Output::SquaredError(Activation::Identity)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut job = job(spec.clone(), Method::lbfgs(), 3, dir.path());
        job.preprocessing = serde_json::json!({ "whitening": white });
        let mut backend = CpuBackend::<f32>::new(spec).unwrap();
        train(job, &mut backend, &x, Targets::Inputs, &mut |_| {}, &never).unwrap();
        let drawn = image::open(dir.path().join("reconstructions.png")).unwrap().to_luma8();
        // 10 originals over 10 reconstructions, 8×8 tiles drawn 6× larger with 1-pixel borders,
        // right of the rows' labels.
        assert_eq!((drawn.width(), drawn.height()), (wgnn::viz::ROW_LABEL_MARGIN + 10 * 49 + 1, 2 * 49 + 1));

        // The reference, from the raw patches and M alone: M's rows are uᵢᵀ/√(λᵢ + ε), so its
        // normalised rows are the kept eigenvectors U_kᵀ and the drawn originals should be
        // μ + (x − μ) U_k U_kᵀ (for ZCA, k = n and U U ᵀ = I: x itself).
        let raw10 = raw.slice(ndarray::s![..10, ..]).mapv(f64::from);
        let mean = ndarray::Array1::from(white.mean.clone());
        let expected = match white.kind {
            wgnn::data::whiten::WhiteningKind::Zca => raw10.clone(),
            wgnn::data::whiten::WhiteningKind::Pca => {
                let mut u_t = white.matrix();
                for mut row in u_t.rows_mut() {
                    let norm = row.dot(&row).sqrt();
                    row /= norm;
                }
                (&raw10 - &mean).dot(&u_t.t()).dot(&u_t) + &mean
            }
        };
        let reference = wgnn::viz::reconstructions(expected.view(), expected.view()).unwrap();
        let (got, want) = (top_row(&drawn), top_row(&reference));
        // f32 whitening and back may move a pixel across a rounding boundary: one grey level.
        let worst = got.iter().zip(&want).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
        assert!(worst <= 1, "{:?}: the drawn originals differ from the patches by {worst} grey levels", white.kind);
        // And the pixels are not the whitened values: drawn directly, those look different.
        if n == 64 {
            let whitened = x.slice(ndarray::s![..10, ..]).mapv(f64::from);
            let as_whitened = top_row(&wgnn::viz::reconstructions(whitened.view(), whitened.view()).unwrap());
            let far = got.iter().zip(&as_whitened).filter(|(a, b)| a.abs_diff(**b) > 20).count();
            assert!(far > got.len() / 10, "{:?}: only {far} pixels differ from the whitened drawing", white.kind);
        }
    }
}

/// Examples handed over to `train` (an `Array2` or an `Arc` of one) train to the bits of the
/// same examples lent (`&Array2`), with and without a validation split. Without a split the
/// f32 backend keeps the handed-over array itself (no copy: a second handle on it); with one,
/// it holds the gathered training rows and `train` lets go of the original.
#[test]
fn handed_over_examples_train_the_bits_of_lent_ones() {
    use std::sync::Arc;
    let x = patches();
    let never = AtomicBool::new(false);
    for validation_fraction in [0.0, 0.25] {
        let run = |data: &mut dyn FnMut(TrainJob, &mut CpuBackend<f32>) -> wgnn::train::TrainOutcome| {
            let dir = tempfile::tempdir().unwrap();
            let mut j = job(sae(), Method::lbfgs(), 4, dir.path());
            j.validation_fraction = validation_fraction;
            let mut backend = CpuBackend::<f32>::new(sae()).unwrap();
            let outcome = data(j, &mut backend);
            (outcome.theta, outcome.final_cost, backend.num_examples())
        };
        let lent = run(&mut |j, b| train(j, b, &x, Targets::Inputs, &mut |_| {}, &never).unwrap());
        let owned = run(&mut |j, b| train(j, b, x.clone(), Targets::Inputs, &mut |_| {}, &never).unwrap());
        let shared = Arc::new(x.clone());
        let mut backend_after = 0;
        let arc = run(&mut |j, b| {
            let outcome = train(j, b, Arc::clone(&shared), Targets::Inputs, &mut |_| {}, &never).unwrap();
            // The backend still holds its data here: the caller's array when unsplit.
            backend_after = Arc::strong_count(&shared);
            outcome
        });
        let bits = |t: &[f64]| t.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for (what, other) in [("an owned array", &owned), ("an Arc", &arc)] {
            assert_eq!(bits(&lent.0), bits(&other.0), "θ from {what}, validation {validation_fraction}");
            assert_eq!(lent.1.to_bits(), other.1.to_bits(), "final cost from {what}, validation {validation_fraction}");
            assert_eq!(lent.2, other.2, "examples loaded from {what}");
        }
        let expected = if validation_fraction == 0.0 { 2 } else { 1 };
        assert_eq!(backend_after, expected, "handles on the examples after train, validation {validation_fraction}");
        assert_eq!(Arc::strong_count(&shared), 1, "the backend is gone: only the caller's handle is left");
    }
}
