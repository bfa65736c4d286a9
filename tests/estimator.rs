//! The estimator API as an embedder uses it (issue 14 §8): each builder fits small generated
//! data well enough that broken learning fails the bar; fit writes no file; save → load gives
//! the same predictions bit for bit; `wgnn predict`/`eval` read what the estimator saved and
//! the estimator loads what `wgnn train` wrote, with the same θ bit for bit for the same
//! settings; bad input is one line of `Err`.

use std::path::Path;

use assert_cmd::Command;
use ndarray::{Array1, Array2};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use rand::{RngExt, SeedableRng, rngs::StdRng};

use wgnn::estimator::{
    Autoencoder, Classifier, MultiLabel, PerStepClassifier, PerStepRegressor, Regressor, SequenceClassifier, Solver,
};
use wgnn::{BackendChoice, CharModel, Mlp, Network, Recurrent, Softmax, SparseAutoencoder, StackedAutoencoder};
use wgnn::{Trained, TrainedCharModel};

fn gpu_skipped() -> bool {
    std::env::var_os("WGNN_SKIP_GPU").is_some_and(|v| v == "1")
}

/// `k` classes in 2-D around centres on a circle of radius 3, noise σ ≈ 0.5 (uniform ±0.8).
fn blobs(m: usize, k: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let labels: Vec<usize> = (0..m).map(|i| i % k).collect();
    let x = Array2::from_shape_fn((m, 2), |(i, j)| {
        let angle = std::f32::consts::TAU * labels[i] as f32 / k as f32;
        let centre = if j == 0 { 3.0 * angle.cos() } else { 3.0 * angle.sin() };
        centre + rng.random_range(-0.8f32..0.8)
    });
    (x, labels)
}

/// y = (0.5 x₀ − 0.3 x₁ + 0.2, x₀ x₁) on x uniform in [−1, 1]³.
fn regression(m: usize, seed: u64) -> (Array2<f32>, Array2<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = Array2::from_shape_fn((m, 3), |_| rng.random_range(-1.0f32..1.0));
    let y = Array2::from_shape_fn((m, 2), |(i, j)| {
        if j == 0 { 0.5 * x[[i, 0]] - 0.3 * x[[i, 1]] + 0.2 } else { x[[i, 0]] * x[[i, 1]] }
    });
    (x, y)
}

/// Mixtures a·p + (1 − a)·q of two 16-pixel prototypes in [0.1, 0.9]: rank-2 data an
/// autoencoder with a few hidden units reconstructs well.
fn mixtures(m: usize, seed: u64) -> Array2<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let p: Vec<f32> = (0..16).map(|j| if j % 2 == 0 { 0.9 } else { 0.1 }).collect();
    let q: Vec<f32> = (0..16).map(|j| if j < 8 { 0.8 } else { 0.2 }).collect();
    let mut x = Array2::zeros((m, 16));
    for mut row in x.rows_mut() {
        let a = rng.random_range(0.0f32..1.0);
        row.iter_mut().enumerate().for_each(|(j, v)| *v = a * p[j] + (1.0 - a) * q[j]);
    }
    x
}

/// 1×6×6 pictures: class 0 lights the top-left 3×3 quadrant, class 1 the bottom-right one,
/// over noise.
fn pictures(m: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let labels: Vec<usize> = (0..m).map(|i| i % 2).collect();
    let x = Array2::from_shape_fn((m, 36), |(i, p)| {
        let (r, c) = (p / 6, p % 6);
        let lit = if labels[i] == 0 { r < 3 && c < 3 } else { r >= 3 && c >= 3 };
        (if lit { 0.8 } else { 0.1 }) + rng.random_range(0.0f32..0.2)
    });
    (x, labels)
}

#[test]
fn an_mlp_classifier_fits_predicts_and_scores() {
    let (x, y) = blobs(150, 3, 1);
    let (x_test, y_test) = blobs(90, 3, 2);
    let model = Mlp::classifier(&[16]).learning_rate(0.02).epochs(60).batch_size(32).backend(BackendChoice::Cpu);
    let model = model.fit(&x, &y).unwrap();
    let p = model.predict_proba(&x_test).unwrap();
    assert_eq!(p.dim(), (90, 3));
    for row in p.rows() {
        assert!((row.sum() - 1.0).abs() < 1e-6, "probabilities sum to {}", row.sum());
    }
    let predicted = model.predict(&x_test).unwrap();
    let argmax: Vec<usize> = p.rows().into_iter().map(|r| wgnn::backend::argmax(r.iter().copied())).collect();
    assert_eq!(predicted, argmax);
    let accuracy = model.score(&x_test, &y_test).unwrap();
    assert!(accuracy > 0.95, "test accuracy {accuracy} (chance: 1/3)");
    assert!((1..=60).contains(&model.iterations()), "{} epochs", model.iterations());
}

#[test]
fn softmax_regression_fits_and_scores() {
    let (x, y) = blobs(120, 4, 3);
    let (x_test, y_test) = blobs(80, 4, 4);
    let model = Softmax::new().backend(BackendChoice::Cpu).fit(&x, &y).unwrap();
    assert_eq!(model.spec().layers, vec![2, 4]);
    let accuracy = model.score(&x_test, &y_test).unwrap();
    assert!(accuracy > 0.9, "test accuracy {accuracy} (chance: 1/4)");
}

#[test]
fn an_mlp_regressor_fits_and_scores_r2() {
    let (x, y) = regression(200, 5);
    let (x_test, y_test) = regression(100, 6);
    let model = Mlp::regressor(&[16]).solver(Solver::Lbfgs).iterations(200).backend(BackendChoice::Cpu);
    let model = model.fit(&x, &y).unwrap();
    assert_eq!(model.predict(&x_test).unwrap().dim(), (100, 2));
    let r2 = model.score(&x_test, &y_test).unwrap();
    assert!(r2 > 0.95, "test R² {r2}");
}

#[test]
fn a_sparse_autoencoder_transforms_and_reconstructs() {
    let x = mixtures(200, 7);
    let model =
        SparseAutoencoder::new(4).sparsity(0.1, 3.0).iterations(200).backend(BackendChoice::Cpu).fit(&x).unwrap();
    let features = model.transform(&x).unwrap();
    assert_eq!(features.dim(), (200, 4));
    assert!(features.iter().all(|&a| (0.0..=1.0).contains(&a)), "sigmoid features lie in [0, 1]");
    assert_eq!(model.predict(&x).unwrap().dim(), (200, 16));
    let r2 = model.score(&x).unwrap();
    assert!(r2 > 0.8, "reconstruction R² {r2}");
}

#[test]
fn a_layer_stack_from_a_net_string_learns_pictures() {
    let (x, y) = pictures(120, 8);
    let (x_test, y_test) = pictures(60, 9);
    let net = Network::from_net("conv 4x3x3 relu, maxpool 2, softmax")
        .input_shape("1x6x6")
        .learning_rate(0.01)
        .batch_size(16)
        .epochs(15)
        .backend(BackendChoice::Cpu);
    let model = net.fit(&x, &y).unwrap();
    assert!(model.spec().has_layer_stack());
    let accuracy = model.score(&x_test, &y_test).unwrap();
    assert!(accuracy > 0.95, "test accuracy {accuracy} (chance: 1/2)");
}

/// The GPU backend (lavapipe here) through the same builder: it learns as the CPU does.
#[test]
fn the_gpu_backend_fits_through_the_same_builder() {
    if gpu_skipped() {
        return;
    }
    let (x, y) = blobs(120, 3, 10);
    let model = Mlp::classifier(&[8]).learning_rate(0.02).epochs(40).batch_size(32).backend(BackendChoice::Gpu);
    let model = model.fit(&x, &y).unwrap();
    assert!(model.backend_used().0.starts_with("gpu"), "trained on {:?}", model.backend_used());
    let accuracy = model.score(&x, &y).unwrap();
    assert!(accuracy > 0.95, "training accuracy {accuracy} on the GPU");
}

/// The tests that move the process's working folder take turns (it is one per process).
static WORKING_FOLDER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// fit trains in memory: the working folder stays empty.
#[test]
fn fit_writes_no_file() {
    let _turn = WORKING_FOLDER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let before = std::env::current_dir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();
    let (x, y) = blobs(60, 2, 11);
    let fitted = Mlp::classifier(&[4]).epochs(3).backend(BackendChoice::Cpu).fit(&x, &y);
    let autoencoder = SparseAutoencoder::new(3).iterations(5).backend(BackendChoice::Cpu).fit(&mixtures(30, 1));
    std::env::set_current_dir(before).unwrap();
    fitted.unwrap();
    autoencoder.unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "fit wrote {left:?}");
}

#[test]
fn save_then_load_predicts_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = blobs(60, 3, 12);
    let classifier = Mlp::classifier(&[6]).epochs(5).backend(BackendChoice::Cpu).fit(&x, &y).unwrap();
    classifier.save(dir.path().join("c")).unwrap();
    let loaded = Trained::<Classifier>::load(dir.path().join("c")).unwrap().with_backend(BackendChoice::Cpu);
    assert_eq!(loaded.theta(), classifier.theta());
    assert_eq!(loaded.predict_proba(&x).unwrap(), classifier.predict_proba(&x).unwrap());

    let (xr, yr) = regression(40, 13);
    let regressor = Mlp::regressor(&[5]).epochs(5).backend(BackendChoice::Cpu).fit(&xr, &yr).unwrap();
    regressor.save(dir.path().join("r")).unwrap();
    let loaded = Trained::<Regressor>::load(dir.path().join("r")).unwrap().with_backend(BackendChoice::Cpu);
    assert_eq!(loaded.predict(&xr).unwrap(), regressor.predict(&xr).unwrap());

    let xa = mixtures(30, 14);
    let autoencoder = SparseAutoencoder::new(3).iterations(5).backend(BackendChoice::Cpu).fit(&xa).unwrap();
    autoencoder.save(dir.path().join("a")).unwrap();
    let loaded = Trained::<Autoencoder>::load(dir.path().join("a")).unwrap().with_backend(BackendChoice::Cpu);
    assert_eq!(loaded.transform(&xa).unwrap(), autoencoder.transform(&xa).unwrap());

    // A model of another task, and a folder that already holds a run, are refused.
    let wrong = Trained::<Classifier>::load(dir.path().join("r")).unwrap_err().to_string();
    assert!(wrong.contains("not a classifier") && !wrong.contains('\n'), "{wrong}");
    let again = classifier.save(dir.path().join("c")).unwrap_err().to_string();
    assert!(again.contains("already holds a run") && !again.contains('\n'), "{again}");
}

fn wgnn() -> Command {
    Command::cargo_bin("wgnn").unwrap()
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn write_data(dir: &Path, x: &Array2<f32>, labels: &[usize]) -> (String, String) {
    x.write_npy(std::fs::File::create(dir.join("x.npy")).unwrap()).unwrap();
    let l = Array1::from_iter(labels.iter().map(|&l| l as i64));
    l.write_npy(std::fs::File::create(dir.join("labels.npy")).unwrap()).unwrap();
    (format!("npy:{}", dir.join("x.npy").display()), dir.join("labels.npy").display().to_string())
}

/// The CLI and the estimator are one job: `wgnn train mlp` with the same settings leaves the
/// θ the estimator fits, bit for bit, and each reads the other's run.
#[test]
fn the_cli_and_the_estimator_train_the_same_bits_and_read_each_others_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = blobs(80, 3, 15);
    let (data, labels) = write_data(dir.path(), &x, &y);
    let cli_run = dir.path().join("cli");
    ok(wgnn()
        .args(["train", "mlp", "--backend", "cpu", "--quiet", "--hidden", "7", "--iterations", "4", "--seed", "3"])
        .args(["--alpha", "1e-3", "--data", &data, "--labels", &labels, "--out"])
        .arg(&cli_run));
    let estimator =
        Mlp::classifier(&[7]).iterations(4).seed(3).alpha(1e-3).backend(BackendChoice::Cpu).fit(&x, &y).unwrap();
    let from_cli = Trained::<Classifier>::load(&cli_run).unwrap().with_backend(BackendChoice::Cpu);
    assert_eq!(from_cli.spec(), estimator.spec());
    assert_eq!(from_cli.theta(), estimator.theta(), "the same settings train the same θ");
    assert_eq!(from_cli.predict(&x).unwrap(), estimator.predict(&x).unwrap());

    // The same with L-BFGS (full batch) and a validation split with early stopping.
    let cli_run = dir.path().join("cli-lbfgs");
    ok(wgnn()
        .args(["train", "mlp", "--backend", "cpu", "--quiet", "--hidden", "5", "--iterations", "8"])
        .args(["--optimizer", "lbfgs", "--validation", "0.25", "--patience", "3", "--data", &data])
        .args(["--labels", &labels, "--out"])
        .arg(&cli_run));
    let estimator = Mlp::classifier(&[5])
        .solver(Solver::Lbfgs)
        .iterations(8)
        .validation(0.25)
        .patience(3)
        .backend(BackendChoice::Cpu)
        .fit(&x, &y)
        .unwrap();
    assert_eq!(Trained::<Classifier>::load(&cli_run).unwrap().theta(), estimator.theta());

    // What the estimator saves, `wgnn predict` and `wgnn eval` read.
    let saved = dir.path().join("saved");
    estimator.save(&saved).unwrap();
    let out = dir.path().join("p.npy");
    ok(wgnn().args(["predict", "--backend", "cpu", "--data", &data, "--model"]).arg(&saved).arg("--out").arg(&out));
    let p = Array2::<f32>::read_npy(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(p, estimator.predict_proba(&x).unwrap().mapv(|v| v as f32));
    let eval = ok(wgnn()
        .args(["eval", "--json", "--backend", "cpu", "--data", &data, "--labels", &labels, "--model"])
        .arg(&saved));
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(eval["accuracy"].as_f64().unwrap(), estimator.score(&x, &y).unwrap());
}

#[test]
fn bad_input_is_one_line_of_err() {
    let (x, y) = blobs(40, 2, 16);
    let one_line = |e: wgnn::Error, needle: &str| {
        let text = e.to_string();
        assert!(text.contains(needle) && !text.contains('\n'), "expected `{needle}` in one line: {text}");
    };
    let estimator = Mlp::classifier(&[3]).epochs(2).backend(BackendChoice::Cpu);
    // Labels that do not match the examples.
    one_line(estimator.fit(&x, &y[..39]).unwrap_err(), "40 examples but 39 labels");
    one_line(estimator.fit(&x, &vec![1; 40]).unwrap_err(), "at least 2 classes");
    // NaN in the examples, or in a regressor's targets.
    let mut nan = x.clone();
    nan[[3, 1]] = f32::NAN;
    one_line(estimator.fit(&nan, &y).unwrap_err(), "row 3, column 1");
    let (xr, mut yr) = regression(20, 17);
    yr[[2, 0]] = f32::INFINITY;
    one_line(Mlp::regressor(&[3]).backend(BackendChoice::Cpu).fit(&xr, &yr).unwrap_err(), "the targets hold inf");
    // Settings that make no run.
    one_line(estimator.clone().validation(1.5).fit(&x, &y).unwrap_err(), "validation fraction");
    one_line(estimator.clone().alpha(1e-4).weight_decay(1e-4).fit(&x, &y).unwrap_err(), "give one");
    // A trained model given the wrong column count, or NaN.
    let model = estimator.fit(&x, &y).unwrap();
    one_line(model.predict(&Array2::zeros((5, 3))).unwrap_err(), "3 values per example but the model takes 2");
    one_line(model.predict(&nan).unwrap_err(), "NaN");
    one_line(model.score(&x, &y[..10]).unwrap_err(), "40 examples but 10 labels");
}

/// train() with its run folder and train_in_memory() are the same steps: the same job gives
/// the same θ, cost and iterations bit for bit (full batch and minibatch with early stopping;
/// on the CPU and on the GPU).
#[test]
fn training_in_memory_gives_the_bits_a_run_folder_holds() {
    use std::sync::atomic::AtomicBool;
    use wgnn::estimator::{DenseSettings, Kind};
    use wgnn::estimator::{OptimizerSettings, Precision, build_backend};
    use wgnn::train::{TrainJob, train, train_in_memory};
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = blobs(90, 3, 18);
    let xa = mixtures(40, 19);
    let mut choices = vec![BackendChoice::Cpu];
    if !gpu_skipped() {
        choices.push(BackendChoice::Gpu);
    }
    for (i, backend) in choices.into_iter().enumerate() {
        for (j, kind) in [Kind::Autoencoder, Kind::Mlp].into_iter().enumerate() {
            let (inputs, outputs) = if kind == Kind::Mlp { (2, 3) } else { (16, 16) };
            let dense = DenseSettings { hidden: Some(vec![5]), ..DenseSettings::default() };
            let spec = kind.dense_spec(inputs, outputs, false, &dense).unwrap();
            let settings = OptimizerSettings { iterations: 6, batch_size: 16, ..OptimizerSettings::of(kind) };
            let method = settings.method(100).unwrap();
            let job = |out: &Path| TrainJob {
                stop: settings.stop(&method),
                seed: 4,
                validation_fraction: if kind == Kind::Mlp { 0.2 } else { 0.0 },
                patience: (kind == Kind::Mlp).then_some(2),
                ..TrainJob::new(spec.clone(), method.clone(), 6, out)
            };
            let run = |folder: Option<&Path>| {
                let (mut b, _) = build_backend(backend, spec.clone(), Precision::F32, &Default::default()).unwrap();
                let targets = if kind == Kind::Mlp { wgnn::Targets::Labels(&y) } else { wgnn::Targets::Inputs };
                let data = if kind == Kind::Mlp { &x } else { &xa };
                let stop = AtomicBool::new(false);
                match folder {
                    Some(out) => train(job(out), b.as_mut(), data, targets, &mut |_| {}, &stop).unwrap(),
                    None => train_in_memory(job(Path::new("")), b.as_mut(), data, targets, &mut |_| {}, &stop).unwrap(),
                }
            };
            let out = dir.path().join(format!("{i}-{j}"));
            let (written, in_memory) = (run(Some(&out)), run(None));
            assert!(out.join("model.safetensors").is_file() && in_memory.files.is_empty());
            assert_eq!(written.theta, in_memory.theta, "{kind:?} on {backend:?}");
            assert_eq!(written.final_cost.to_bits(), in_memory.final_cost.to_bits());
            assert_eq!(written.summary.iterations, in_memory.summary.iterations);
        }
    }
}

/// Two classes of 16-value patterns in [0, 1] over noise: class 0 lights the even pixels,
/// class 1 the first half (what a sigmoid stacked autoencoder reads).
fn patterns(m: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let labels: Vec<usize> = (0..m).map(|i| i % 2).collect();
    let x = Array2::from_shape_fn((m, 16), |(i, j)| {
        let lit = if labels[i] == 0 { j % 2 == 0 } else { j < 8 };
        (if lit { 0.7 } else { 0.15 }) + rng.random_range(0.0f32..0.15)
    });
    (x, labels)
}

/// m sequences of T steps of 3 values uniform in [−1, 1]; the class is the sign of the first
/// value of the last step (so the recurrent layer must read the last step, not the first).
fn sequences(m: usize, steps: usize, seed: u64) -> (ndarray::Array3<f32>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = ndarray::Array3::from_shape_fn((m, steps, 3), |_| rng.random_range(-1.0f32..1.0));
    let labels = (0..m).map(|i| usize::from(x[[i, steps - 1, 0]] > 0.0)).collect();
    (x, labels)
}

/// A text of the words "the cat sat on a mat" in a seeded random order: within a word every
/// character follows from the one before, so a model that learns falls far below the
/// unigram entropy.
fn toy_text(words: usize, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let vocabulary = ["the ", "cat ", "sat ", "on ", "a ", "mat "];
    (0..words).map(|_| vocabulary[rng.random_range(0..vocabulary.len())]).collect()
}

fn unigram_bits(text: &str) -> f64 {
    let mut counts = std::collections::HashMap::<char, f64>::new();
    text.chars().for_each(|c| *counts.entry(c).or_default() += 1.0);
    let n = text.chars().count() as f64;
    -counts.values().map(|k| k / n * (k / n).log2()).sum::<f64>()
}

fn one_line(e: wgnn::Error, needle: &str) {
    let text = e.to_string();
    assert!(text.contains(needle) && !text.contains('\n'), "expected `{needle}` in one line: {text}");
}

/// Predicting builds each backend once and keeps it: the second call builds none (and gives
/// the same bits); another backend choice starts afresh, the same one keeps them.
#[test]
fn predicting_twice_builds_the_backend_once() {
    let (x, y) = blobs(60, 3, 20);
    let model = Mlp::classifier(&[5]).epochs(3).backend(BackendChoice::Cpu).fit(&x, &y).unwrap();
    assert_eq!(model.backends_built(), 0, "fit builds its own backend, not the prediction's");
    let first = model.predict_proba(&x).unwrap();
    assert_eq!(model.backends_built(), 1);
    let second = model.predict_proba(&x).unwrap();
    model.predict(&x).unwrap();
    model.score(&x, &y).unwrap();
    assert_eq!(model.backends_built(), 1, "later predictions reuse the backend");
    assert_eq!(first, second);
    let model = model.with_backend(BackendChoice::Cpu);
    model.predict(&x).unwrap();
    assert_eq!(model.backends_built(), 1, "the same choice keeps the backend");
    let model = model.with_backend(BackendChoice::Auto);
    assert_eq!(model.backends_built(), 0, "another choice drops it");
    // An autoencoder's transform and predict share its one network's backend.
    let xa = mixtures(30, 21);
    let autoencoder = SparseAutoencoder::new(3).iterations(5).backend(BackendChoice::Cpu).fit(&xa).unwrap();
    autoencoder.transform(&xa).unwrap();
    autoencoder.predict(&xa).unwrap();
    autoencoder.transform(&xa).unwrap();
    assert_eq!(autoencoder.backends_built(), 1);
    // The kept backend does not stop a model from moving to, or being shared by, threads.
    fn send_sync<T: Send + Sync>(_: &T) {}
    send_sync(&autoencoder);
    let shared = std::sync::Arc::new(model.with_backend(BackendChoice::Cpu));
    let other = std::sync::Arc::clone(&shared);
    let from_thread = std::thread::spawn(move || other.predict_proba(&x).unwrap()).join().unwrap();
    assert_eq!(from_thread, first);
    assert_eq!(shared.backends_built(), 1);
}

/// Labels y₀ = [x₀ > 0], y₁ = [x₁ > 0.5] on x uniform in [−2, 2]²: both may be 1.
fn two_labels(m: usize, seed: u64) -> (Array2<f32>, Array2<f32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = Array2::from_shape_fn((m, 2), |_| rng.random_range(-2.0f32..2.0));
    let y = Array2::from_shape_fn((m, 2), |(i, j)| f32::from(u8::from(x[[i, j]] > if j == 0 { 0.0 } else { 0.5 })));
    (x, y)
}

/// A multi-label (sigmoid-BCE) mlp learns two labels; predict_proba gives per-label
/// probabilities in (0, 1) whose decisions are predict's; the CLI trains the same θ and its
/// `predict` writes the estimator's probabilities as its columns; 0/1 targets are checked.
#[test]
fn a_multilabel_mlp_gives_per_label_probabilities_as_the_cli_does() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = two_labels(200, 22);
    let (x_test, y_test) = two_labels(100, 23);
    // λ = 0.01 keeps the weights small enough that no probability rounds to 0 or 1.
    let estimator = Mlp::multilabel(&[8]).solver(Solver::Lbfgs).iterations(150).weight_decay(0.01).seed(2);
    let estimator = estimator.backend(BackendChoice::Cpu);
    let model = estimator.fit(&x, &y).unwrap();
    let p = model.predict_proba(&x_test).unwrap();
    assert_eq!(p.dim(), (100, 2));
    assert!(p.iter().all(|&v| v > 0.0 && v < 1.0), "probabilities lie in (0, 1)");
    assert!(p.rows().into_iter().any(|r| (r.sum() - 1.0).abs() > 0.2), "per label, not a distribution");
    assert_eq!(model.predict(&x_test).unwrap(), p.mapv(|v| u8::from(v >= 0.5)));
    let accuracy = model.score(&x_test, &y_test).unwrap();
    assert!(accuracy > 0.9, "subset accuracy {accuracy} (chance: about 1/4)");

    // The CLI with the same settings: the same θ; its predict reads the estimator's model.
    x.write_npy(std::fs::File::create(dir.path().join("x.npy")).unwrap()).unwrap();
    y.write_npy(std::fs::File::create(dir.path().join("y.npy")).unwrap()).unwrap();
    let data = format!("npy:{}", dir.path().join("x.npy").display());
    let targets = format!("npy:{}", dir.path().join("y.npy").display());
    let cli_run = dir.path().join("cli");
    ok(wgnn()
        .args(["train", "mlp", "--backend", "cpu", "--quiet", "--hidden", "8", "--optimizer", "lbfgs"])
        .args(["--iterations", "150", "--weight-decay", "0.01", "--seed", "2", "--output", "sigmoid-bce"])
        .args(["--data", &data])
        .args(["--targets", &targets, "--out"])
        .arg(&cli_run));
    let from_cli = Trained::<MultiLabel>::load(&cli_run).unwrap().with_backend(BackendChoice::Cpu);
    assert_eq!(from_cli.theta(), model.theta(), "the same settings train the same θ");
    let saved = dir.path().join("saved");
    model.save(&saved).unwrap();
    let out = dir.path().join("p.npy");
    ok(wgnn().args(["predict", "--backend", "cpu", "--data", &data, "--model"]).arg(&saved).arg("--out").arg(&out));
    let columns = Array2::<f32>::read_npy(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(columns, model.predict_proba(&x).unwrap().mapv(|v| v as f32));
    let decisions = Array2::<i64>::read_npy(std::fs::File::open(dir.path().join("p.labels.npy")).unwrap()).unwrap();
    assert_eq!(decisions, model.predict(&x).unwrap().mapv(i64::from));
    // The GPU computes the same probabilities in f32.
    if !gpu_skipped() {
        let gpu = model.clone().with_backend(BackendChoice::Gpu).predict_proba(&x_test).unwrap();
        let most = gpu.iter().zip(&p).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(most < 1e-4 && gpu.iter().all(|&v| v > 0.0 && v < 1.0), "GPU and CPU differ by {most}");
    }
    // Targets that are not 0/1, and a model of another task, are refused.
    let mut half = y.clone();
    half[[4, 1]] = 0.5;
    one_line(estimator.fit(&x, &half).unwrap_err(), "0.5");
    let wrong = Trained::<Classifier>::load(&saved).unwrap_err().to_string();
    assert!(wrong.contains("not a classifier"), "{wrong}");
}

/// The stacked autoencoder learns, writes nothing, saves and loads the same bits, and is the
/// CLI's `train stacked` bit for bit; the CLI's `predict` and `eval` read what it saved.
#[test]
fn a_stacked_autoencoder_fits_in_memory_as_the_cli_does() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = patterns(80, 24);
    let (x_test, y_test) = patterns(60, 25);
    let estimator = StackedAutoencoder::new(&[6, 4]).iterations(40).seed(3).backend(BackendChoice::Cpu);
    let mut stages = Vec::new();
    let model = estimator
        .fit_with(
            &x,
            &y,
            &mut |e| {
                if let wgnn::stacked::StageEvent::Start { spec, .. } = e {
                    stages.push(spec.describe());
                }
            },
            &std::sync::atomic::AtomicBool::new(false),
        )
        .unwrap();
    assert_eq!(stages.len(), 4, "two autoencoders, the softmax, fine-tuning: {stages:?}");
    assert_eq!(model.spec().layers, vec![16, 6, 4, 2]);
    let accuracy = model.score(&x_test, &y_test).unwrap();
    assert!(accuracy > 0.95, "test accuracy {accuracy} (chance: 1/2)");

    let (data, labels) = write_data(dir.path(), &x, &y);
    let cli_run = dir.path().join("cli");
    ok(wgnn()
        .args(["train", "stacked", "--backend", "cpu", "--quiet", "--hidden", "6,4", "--iterations", "40"])
        .args(["--seed", "3", "--data", &data, "--labels", &labels, "--out"])
        .arg(&cli_run));
    let from_cli = Trained::<Classifier>::load(&cli_run).unwrap().with_backend(BackendChoice::Cpu);
    assert_eq!(from_cli.spec(), model.spec());
    assert_eq!(from_cli.theta(), model.theta(), "the same pipeline trains the same θ");

    let saved = dir.path().join("saved");
    model.save(&saved).unwrap();
    let loaded = Trained::<Classifier>::load(&saved).unwrap().with_backend(BackendChoice::Cpu);
    assert_eq!(loaded.predict_proba(&x_test).unwrap(), model.predict_proba(&x_test).unwrap());
    let out = dir.path().join("p.npy");
    ok(wgnn().args(["predict", "--backend", "cpu", "--data", &data, "--model"]).arg(&saved).arg("--out").arg(&out));
    let p = Array2::<f32>::read_npy(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(p, model.predict_proba(&x).unwrap().mapv(|v| v as f32));
    let eval = ok(wgnn()
        .args(["eval", "--json", "--backend", "cpu", "--data", &data, "--labels", &labels, "--model"])
        .arg(&saved));
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(eval["accuracy"].as_f64().unwrap(), model.score(&x, &y).unwrap());
    one_line(estimator.fit(&x, &y[..70]).unwrap_err(), "80 examples but 70 labels");
}

/// An LSTM (and an RNN) sequence classifier learns m × T × n data; the CLI's `train lstm|rnn`
/// on the same .npy gives the same θ; its `predict` and `eval` read the saved model; save →
/// load predicts the same bits; 2-D data and sequences of another T are one line of Err.
#[test]
fn a_recurrent_classifier_fits_sequences_as_the_cli_does() {
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = sequences(96, 4, 26);
    let (x_test, y_test) = sequences(60, 4, 27);
    let model = Recurrent::lstm(8).epochs(30).batch_size(16).learning_rate(0.02).backend(BackendChoice::Cpu);
    let model = model.fit(&x, &y).unwrap();
    let accuracy = model.score(&x_test, &y_test).unwrap();
    assert!(accuracy > 0.9, "LSTM test accuracy {accuracy} (chance: 1/2)");
    let rnn = Recurrent::rnn(8).epochs(30).batch_size(16).learning_rate(0.02).backend(BackendChoice::Cpu);
    let accuracy = rnn.fit(&x, &y).unwrap().score(&x_test, &y_test).unwrap();
    assert!(accuracy > 0.9, "RNN test accuracy {accuracy} (chance: 1/2)");

    x.write_npy(std::fs::File::create(dir.path().join("x.npy")).unwrap()).unwrap();
    let l = Array1::from_iter(y.iter().map(|&l| l as i64));
    l.write_npy(std::fs::File::create(dir.path().join("l.npy")).unwrap()).unwrap();
    let data = format!("npy:{}", dir.path().join("x.npy").display());
    let labels = dir.path().join("l.npy").display().to_string();
    for kind in ["lstm", "rnn"] {
        let cli_run = dir.path().join(kind);
        ok(wgnn()
            .args(["train", kind, "--backend", "cpu", "--quiet", "--hidden", "5", "--iterations", "3"])
            .args(["--seed", "4", "--data", &data, "--labels", &labels, "--out"])
            .arg(&cli_run));
        let estimator = if kind == "lstm" { Recurrent::lstm(5) } else { Recurrent::rnn(5) };
        let fitted = estimator.iterations(3).seed(4).backend(BackendChoice::Cpu).fit(&x, &y).unwrap();
        let from_cli = Trained::<SequenceClassifier>::load(&cli_run).unwrap().with_backend(BackendChoice::Cpu);
        assert_eq!(from_cli.spec(), fitted.spec(), "{kind}");
        assert_eq!(from_cli.theta(), fitted.theta(), "{kind}: the same settings train the same θ");
    }

    let saved = dir.path().join("saved");
    model.save(&saved).unwrap();
    let loaded = Trained::<SequenceClassifier>::load(&saved).unwrap().with_backend(BackendChoice::Cpu);
    assert_eq!(loaded.predict_proba(&x_test).unwrap(), model.predict_proba(&x_test).unwrap());
    let out = dir.path().join("p.npy");
    ok(wgnn().args(["predict", "--backend", "cpu", "--data", &data, "--model"]).arg(&saved).arg("--out").arg(&out));
    let p = Array2::<f32>::read_npy(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(p, model.predict_proba(&x).unwrap().mapv(|v| v as f32));
    let eval = ok(wgnn()
        .args(["eval", "--json", "--backend", "cpu", "--data", &data, "--labels", &labels, "--model"])
        .arg(&saved));
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(eval["accuracy"].as_f64().unwrap(), model.score(&x, &y).unwrap());

    // 2-D where 3-D is needed; sequences of another length; labels that do not match.
    let flat = x.clone().into_shape_with_order((96, 12)).unwrap().into_dyn();
    one_line(Recurrent::lstm(4).fit(&flat, &y).unwrap_err(), "m × T × n");
    let (short, _) = sequences(10, 3, 28);
    one_line(model.predict(&short).unwrap_err(), "T×n = 3×3 but the model reads 4×3");
    one_line(model.score(&x, &y[..5]).unwrap_err(), "96 sequences but 5 labels");
    one_line(Recurrent::lstm(4).activation(wgnn::model::Activation::Relu).fit(&x, &y).unwrap_err(), "lstm's gates");
}

/// The character model learns (held-out bits per character far below the unigram entropy),
/// is the CLI's `train lstm --data text:FILE` bit for bit, and what it saves `wgnn sample` and
/// `wgnn eval` read, giving its samples and bits; save → load keeps θ and samples; bad text,
/// a prime with unseen characters and a bad temperature are one line of Err.
#[test]
fn a_character_model_fits_text_samples_and_scores_as_the_cli_does() {
    let dir = tempfile::tempdir().unwrap();
    let text = toy_text(260, 29);
    let estimator = CharModel::lstm(16).bptt(8).batch_size(8).steps(120).learning_rate(0.01).eval_every(0).seed(2);
    let model = estimator.clone().backend(BackendChoice::Cpu).fit_text(&text).unwrap();
    assert_eq!(model.updates(), 120);
    let chars: Vec<char> = text.chars().collect();
    let held_text: String = chars[chars.len() - (chars.len() as f64 * 0.1).round() as usize..].iter().collect();
    let bits = model.held_out().unwrap().bits_per_character;
    let unigram = unigram_bits(&held_text);
    assert!(bits < unigram - 0.5, "held-out {bits} bits/char, unigram {unigram}");
    assert_eq!(model.bits_per_character(&held_text).unwrap().bits_per_character, bits);
    let drawn = model.sample(40, 0.5, 7, "the ").unwrap();
    assert_eq!(drawn.chars().count(), 40);
    assert!(drawn.chars().all(|c| "thecasonm ".contains(c)), "{drawn}");
    assert_eq!(model.sample(40, 0.5, 7, "the ").unwrap(), drawn, "the same seed draws the same text");

    // The CLI with the same settings trains the same θ.
    let file = dir.path().join("toy.txt");
    std::fs::write(&file, &text).unwrap();
    let data = format!("text:{}", file.display());
    let cli_run = dir.path().join("cli");
    ok(wgnn()
        .args(["train", "lstm", "--backend", "cpu", "--quiet", "--hidden", "16", "--bptt", "8", "--batch-size", "8"])
        .args(["--steps", "120", "--learning-rate", "0.01", "--eval-every", "0", "--seed", "2", "--data", &data])
        .arg("--out")
        .arg(&cli_run));
    let from_cli = TrainedCharModel::load(&cli_run).unwrap();
    assert_eq!(from_cli.spec(), model.spec());
    assert_eq!(from_cli.theta(), model.theta(), "the same settings train the same θ");

    // What it saves, `sample` and `eval` read; load gives the same θ and samples.
    let saved = dir.path().join("saved");
    model.save(&saved).unwrap();
    let sampled = ok(wgnn()
        .args(["sample", "--length", "40", "--temperature", "0.5", "--seed", "7", "--prime", "the ", "--model"])
        .arg(&saved));
    assert_eq!(sampled, format!("the {drawn}\n"));
    let eval = ok(wgnn().args(["eval", "--json", "--data", &data, "--model"]).arg(&saved));
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(eval["bits_per_character"].as_f64().unwrap(), bits);
    let loaded = TrainedCharModel::load(&saved).unwrap();
    assert_eq!(loaded.theta(), model.theta());
    assert_eq!(loaded.sample(40, 0.5, 7, "the ").unwrap(), drawn);
    let (xb, yb) = blobs(20, 2, 33);
    let mlp = Mlp::classifier(&[2]).epochs(1).backend(BackendChoice::Cpu).fit(&xb, &yb).unwrap();
    mlp.save(dir.path().join("mlp")).unwrap();
    one_line(TrainedCharModel::load(dir.path().join("mlp")).unwrap_err(), "not a character model");

    one_line(estimator.fit_text("").unwrap_err(), "no characters");
    one_line(estimator.fit_text("aaaaaaaaaaaaaaaaaaaa").unwrap_err(), "one distinct character");
    one_line(estimator.fit_text("the cat sat").unwrap_err(), "too few for 8 streams");
    one_line(model.sample(10, 1.0, 0, "the dog").unwrap_err(), "'d' at position 4");
    one_line(model.sample(10, 0.0, 0, "").unwrap_err(), "temperature");
    one_line(model.bits_per_character("zzz").unwrap_err(), "never saw");
}

/// The new estimators train in memory too: nothing appears in the working folder.
#[test]
fn sequence_and_stacked_fits_write_no_file() {
    let _turn = WORKING_FOLDER.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (x, y) = patterns(30, 30);
    let (xs, ys) = sequences(20, 3, 31);
    let text = toy_text(80, 32);
    let before = std::env::current_dir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();
    let stacked = StackedAutoencoder::new(&[3]).iterations(3).backend(BackendChoice::Cpu).fit(&x, &y);
    let recurrent = Recurrent::lstm(3).epochs(2).backend(BackendChoice::Cpu).fit(&xs, &ys);
    let char_model = CharModel::rnn(4).bptt(4).batch_size(2).steps(3).backend(BackendChoice::Cpu).fit_text(&text);
    std::env::set_current_dir(before).unwrap();
    stacked.unwrap();
    recurrent.unwrap();
    char_model.unwrap();
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "fit wrote {left:?}");
}

/// The sequence models' defaults are one table: `wgnn train --help` states TEXT_DEFAULTS and
/// the lstm/rnn row of `Kind::defaults` (what `Recurrent` and `CharModel` use).
#[test]
fn the_help_states_the_character_models_defaults() {
    let d = wgnn::estimator::TEXT_DEFAULTS;
    let lstm = wgnn::estimator::Kind::Lstm.defaults();
    assert_eq!(lstm, wgnn::estimator::Kind::Rnn.defaults(), "rnn is as lstm otherwise");
    assert_eq!(lstm.solver, Solver::Adam);
    let help = ok(wgnn().args(["train", "--help"]));
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for stated in [
        format!("(truncated BPTT's T). Default {}", d.bptt),
        format!("0 turns it off. Default {}", d.clip_norm),
        format!("Minibatch updates for a character model. Default {}", d.steps),
        format!("(and after the last). Default {}", d.eval_every),
        format!("bits per character. Default {}", d.held_out),
        format!("(--hidden {}, --bptt {}, batch {}, Adam η = {:e}", d.hidden, d.bptt, d.batch_size, d.learning_rate),
        format!("--clip-norm {}, {} --steps", d.clip_norm, d.steps),
        format!(
            "a sequence classifier (--hidden {}, softmax at the last step, Adam, batch {}, {} epochs)",
            lstm.hidden[0], lstm.batch_size, lstm.iterations
        ),
    ] {
        assert!(help.contains(&stated), "`wgnn train --help` does not say `{stated}`");
    }
}

/// y_t = (x_{t,0} + x_{t−1,0})/2 (x_{−1,0} = 0): one step of memory, a target at every step.
fn running_pairs(x: &ndarray::Array3<f32>) -> ndarray::Array3<f32> {
    let (m, steps, _) = x.dim();
    ndarray::Array3::from_shape_fn((m, steps, 1), |(i, t, _)| {
        0.5 * (x[[i, t, 0]] + if t > 0 { x[[i, t - 1, 0]] } else { 0.0 })
    })
}

/// Per-step targets (m × T × k): an LSTM whose layers give every step learns a target that
/// needs the step before; save → load predicts the same bits, `wgnn predict` writes the same
/// values (m × T·k); targets of another T, and loading it as a classifier, are refused.
#[test]
fn a_recurrent_regressor_learns_per_step_targets() {
    let dir = tempfile::tempdir().unwrap();
    let (x, _) = sequences(128, 5, 34);
    let (x_test, _) = sequences(60, 5, 35);
    let (y, y_test) = (running_pairs(&x), running_pairs(&x_test));
    let estimator = Recurrent::lstm(12).epochs(60).batch_size(16).learning_rate(0.01).backend(BackendChoice::Cpu);
    let model = estimator.fit_per_step(&x, &y).unwrap();
    assert_eq!(model.spec().output_steps(), 5);
    let predicted = model.predict(&x_test).unwrap();
    assert_eq!(predicted.dim(), (60, 5, 1));
    let r2 = model.score(&x_test, &y_test).unwrap();
    assert!(r2 > 0.9, "per-step test R² {r2}");

    let saved = dir.path().join("saved");
    model.save(&saved).unwrap();
    let loaded = Trained::<PerStepRegressor>::load(&saved).unwrap().with_backend(BackendChoice::Cpu);
    assert_eq!(loaded.predict(&x_test).unwrap(), predicted);
    x_test.write_npy(std::fs::File::create(dir.path().join("x.npy")).unwrap()).unwrap();
    let data = format!("npy:{}", dir.path().join("x.npy").display());
    let out = dir.path().join("p.npy");
    ok(wgnn().args(["predict", "--backend", "cpu", "--data", &data, "--model"]).arg(&saved).arg("--out").arg(&out));
    let p = Array2::<f32>::read_npy(std::fs::File::open(&out).unwrap()).unwrap();
    assert_eq!(p, predicted.mapv(|v| v as f32).into_shape_with_order((60, 5)).unwrap());

    // The CLI trains the same θ from .npy files of m × T × n and m × T × k (`--targets`), and
    // `eval` scores the saved model as the estimator does.
    x.write_npy(std::fs::File::create(dir.path().join("train-x.npy")).unwrap()).unwrap();
    y.write_npy(std::fs::File::create(dir.path().join("train-y.npy")).unwrap()).unwrap();
    let train_x = format!("npy:{}", dir.path().join("train-x.npy").display());
    let train_y = format!("npy:{}", dir.path().join("train-y.npy").display());
    let cli_run = dir.path().join("cli");
    ok(wgnn()
        .args(["train", "lstm", "--backend", "cpu", "--quiet", "--hidden", "12", "--iterations", "60"])
        .args(["--batch-size", "16", "--learning-rate", "0.01", "--data", &train_x, "--targets", &train_y, "--out"])
        .arg(&cli_run));
    let from_cli = Trained::<PerStepRegressor>::load(&cli_run).unwrap();
    assert_eq!(from_cli.spec(), model.spec());
    // export offers no `wgnn cost` command for a recurrent net (it would build a dense one).
    let exported = ok(wgnn().args(["export", "--model"]).arg(&cli_run).arg("--out").arg(dir.path().join("exported")));
    let line = exported.lines().find(|l| l.starts_with("its cost:")).expect("export says how to get the cost");
    assert!(line.contains("does not build this network") && !line.contains("--layers"), "{line}");
    assert_eq!(from_cli.theta(), model.theta(), "the same settings train the same θ");
    y_test.write_npy(std::fs::File::create(dir.path().join("y.npy")).unwrap()).unwrap();
    let targets = format!("npy:{}", dir.path().join("y.npy").display());
    let eval = ok(wgnn()
        .args(["eval", "--json", "--backend", "cpu", "--data", &data, "--targets", &targets, "--model"])
        .arg(&saved));
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    let cli_r2 = eval["r2"].as_f64().unwrap();
    assert!((cli_r2 - r2).abs() < 1e-12, "eval's R² {cli_r2}, the estimator's {r2}");

    let (short, _) = sequences(128, 4, 36);
    one_line(estimator.fit_per_step(&x, &running_pairs(&short)).unwrap_err(), "one row of targets per step");
    let wrong = Trained::<SequenceClassifier>::load(&saved).unwrap_err().to_string();
    assert!(wrong.contains("not a sequence classifier"), "{wrong}");
}

/// The sequence estimators on the GPU backend (lavapipe here): a sequence classifier's
/// probabilities and a per-step regressor's values match the CPU's to f32 rounding, and a
/// character model trained on the GPU (the CLI's `--backend gpu` path) ends near the CPU's θ.
#[test]
fn the_sequence_estimators_compute_on_the_gpu_as_on_the_cpu() {
    if gpu_skipped() {
        return;
    }
    let (x, y) = sequences(40, 4, 37);
    let largest = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0, f64::max);
    let classifier = Recurrent::lstm(6).epochs(3).batch_size(8).backend(BackendChoice::Cpu).fit(&x, &y).unwrap();
    let cpu = classifier.predict_proba(&x).unwrap();
    let gpu = classifier.with_backend(BackendChoice::Gpu).predict_proba(&x).unwrap();
    let most = largest(cpu.as_slice().unwrap(), gpu.as_slice().unwrap());
    assert!(most < 1e-4, "class probabilities differ by {most}");
    let regressor =
        Recurrent::rnn(5).epochs(2).backend(BackendChoice::Cpu).fit_per_step(&x, &running_pairs(&x)).unwrap();
    let cpu = regressor.predict(&x).unwrap();
    let gpu = regressor.with_backend(BackendChoice::Gpu).predict(&x).unwrap();
    let most = largest(cpu.as_slice().unwrap(), gpu.as_slice().unwrap());
    assert!(most < 1e-4, "per-step values differ by {most}");

    let text = toy_text(120, 38);
    let lm = CharModel::lstm(8).bptt(6).batch_size(4).steps(10).learning_rate(0.01).eval_every(0).seed(3);
    let on_cpu = lm.clone().backend(BackendChoice::Cpu).fit_text(&text).unwrap();
    let on_gpu = lm.backend(BackendChoice::Gpu).fit_text(&text).unwrap();
    assert!(on_gpu.backend_used().starts_with("gpu"), "{}", on_gpu.backend_used());
    let most = largest(on_cpu.theta(), on_gpu.theta());
    assert!(most < 1e-4, "θ after 10 updates differs by {most}");
    let (a, b) = (on_cpu.held_out().unwrap().bits_per_character, on_gpu.held_out().unwrap().bits_per_character);
    assert!((a - b).abs() < 1e-4, "held-out bits per character {a} (CPU) and {b} (GPU)");
}

/// The stop flag: a character model stopped after update 3 holds θ of update 3 (status
/// Interrupted, the same θ as a run of 3 updates); a stacked autoencoder stopped before its
/// fine-tuning has no stack to give and says so in one line.
#[test]
fn a_stopped_fit_keeps_what_it_reached_or_says_why_not() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let text = toy_text(80, 39);
    let lm = CharModel::rnn(4).bptt(4).batch_size(2).steps(10).eval_every(0).backend(BackendChoice::Cpu);
    let stop = AtomicBool::new(false);
    let stopped = lm
        .fit_text_with(
            &text,
            &mut |s| {
                if s.step == 3 {
                    stop.store(true, Ordering::SeqCst);
                }
            },
            &stop,
        )
        .unwrap();
    assert_eq!((stopped.updates(), stopped.status()), (3, &wgnn::train::RunStatus::Interrupted));
    assert_eq!(stopped.theta(), lm.steps(3).fit_text(&text).unwrap().theta(), "θ of update 3");

    let (x, y) = patterns(30, 40);
    let stop = AtomicBool::new(true);
    let stacked = StackedAutoencoder::new(&[3]).iterations(5).backend(BackendChoice::Cpu);
    one_line(stacked.fit_with(&x, &y, &mut |_| {}, &stop).unwrap_err(), "interrupted in stage layer1");
}

/// Labels m × T: yₜ = [x_{t,0} > 0] + [x_{t−1,0} > 0] (x_{−1} = 0), a class at every step
/// that needs the step before.
fn running_classes(x: &ndarray::Array3<f32>) -> Array2<usize> {
    let (m, steps, _) = x.dim();
    Array2::from_shape_fn((m, steps), |(i, t)| {
        usize::from(x[[i, t, 0]] > 0.0) + usize::from(t > 0 && x[[i, t - 1, 0]] > 0.0)
    })
}

/// Labels at every step (sequence labelling, issue 16 §1): `fit_per_step_labels` learns a
/// class that needs the step before; save → load predicts the same bits; the CLI
/// (`--labels` of m × T) trains the same θ bit for bit, `predict` writes the labels m × T
/// and the probabilities m × (T·k), `eval` gives the per-step accuracy the estimator gives;
/// the GPU's probabilities equal the CPU's to f32 rounding; bad labels are refused in one line.
#[test]
fn a_recurrent_classifier_labels_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let (x, _) = sequences(96, 5, 40);
    let (x_test, _) = sequences(40, 5, 41);
    let (y, y_test) = (running_classes(&x), running_classes(&x_test));
    let estimator = Recurrent::lstm(10).epochs(40).batch_size(16).learning_rate(0.02).backend(BackendChoice::Cpu);
    let model = estimator.fit_per_step_labels(&x, &y).unwrap();
    assert_eq!((model.spec().output_steps(), model.spec().outputs()), (5, 3));
    let predicted = model.predict(&x_test).unwrap();
    assert_eq!(predicted.dim(), (40, 5));
    let accuracy = model.score(&x_test, &y_test).unwrap();
    assert!(accuracy > 0.85, "per-step test accuracy {accuracy}");

    let saved = dir.path().join("saved");
    model.save(&saved).unwrap();
    let loaded = Trained::<PerStepClassifier>::load(&saved).unwrap().with_backend(BackendChoice::Cpu);
    assert_eq!(loaded.predict_proba(&x_test).unwrap(), model.predict_proba(&x_test).unwrap());
    let wrong = Trained::<SequenceClassifier>::load(&saved).unwrap_err().to_string();
    assert!(wrong.contains("not a sequence classifier"), "{wrong}");

    let save = |name: &str, a: &dyn Fn(std::fs::File)| {
        let path = dir.path().join(name);
        a(std::fs::File::create(&path).unwrap());
        path.display().to_string()
    };
    let train_x = save("train-x.npy", &|f| x.write_npy(f).unwrap());
    let train_y = save("train-y.npy", &|f| y.mapv(|v| v as i64).write_npy(f).unwrap());
    let cli_run = dir.path().join("cli");
    ok(wgnn()
        .args(["train", "lstm", "--backend", "cpu", "--quiet", "--hidden", "10", "--iterations", "40"])
        .args(["--batch-size", "16", "--learning-rate", "0.02", "--data", &format!("npy:{train_x}")])
        .args(["--labels", &format!("npy:{train_y}"), "--out"])
        .arg(&cli_run));
    let from_cli = Trained::<PerStepClassifier>::load(&cli_run).unwrap();
    assert_eq!(from_cli.spec(), model.spec());
    assert_eq!(from_cli.theta(), model.theta(), "the same settings train the same θ");

    let test_x = format!("npy:{}", save("x.npy", &|f| x_test.write_npy(f).unwrap()));
    let test_y = save("y.npy", &|f| y_test.mapv(|v| v as i64).write_npy(f).unwrap());
    let out = dir.path().join("p.npy");
    ok(wgnn().args(["predict", "--backend", "cpu", "--data", &test_x, "--model"]).arg(&saved).arg("--out").arg(&out));
    let labels = Array2::<i64>::read_npy(std::fs::File::open(dir.path().join("p.labels.npy")).unwrap()).unwrap();
    assert_eq!(labels, predicted.mapv(|v| v as i64));
    let p = Array2::<f32>::read_npy(std::fs::File::open(&out).unwrap()).unwrap();
    let proba = model.predict_proba(&x_test).unwrap().mapv(|v| v as f32);
    assert_eq!(p, proba.into_shape_with_order((40, 15)).unwrap());
    let eval = ok(wgnn()
        .args(["eval", "--json", "--backend", "cpu", "--data", &test_x, "--labels", &test_y, "--model"])
        .arg(&saved));
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(eval["accuracy"].as_f64().unwrap(), accuracy, "eval's per-step accuracy");

    if !gpu_skipped() {
        let cpu = model.predict_proba(&x_test).unwrap();
        let gpu = loaded.with_backend(BackendChoice::Gpu).predict_proba(&x_test).unwrap();
        let most = cpu.iter().zip(&gpu).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        assert!(most < 1e-4, "per-step class probabilities differ by {most} on the GPU");
        // Trained on the GPU (θ and Adam on the device, the m·T labels gathered with their
        // rows): near the CPU f32 run's θ after 240 updates.
        let on_gpu = estimator.clone().backend(BackendChoice::Gpu).fit_per_step_labels(&x, &y).unwrap();
        let (a, b) = (on_gpu.theta(), model.theta());
        let gap =
            (a.iter().zip(b).map(|(p, q)| (p - q).powi(2)).sum::<f64>() / b.iter().map(|q| q * q).sum::<f64>()).sqrt();
        eprintln!("per-step labels: θ on the GPU vs the CPU f32 run: {gap:.2e} relative");
        assert!(gap < 1e-5, "θ trained on the GPU differs from the CPU's by {gap:e}");
    }

    // Labels of another T, per-sequence fit with m·T labels, a single class: one line each.
    let (short, _) = sequences(96, 4, 42);
    one_line(estimator.fit_per_step_labels(&x, &running_classes(&short)).unwrap_err(), "one label per step");
    let flat: Vec<usize> = y.iter().copied().collect();
    one_line(estimator.fit(&x, &flat).unwrap_err(), "fit_per_step_labels");
    one_line(estimator.fit_per_step_labels(&x, &Array2::zeros((96, 5))).unwrap_err(), "at least 2 classes");
}

/// `train lstm --labels` of m × T from the CLI refuses, one line each and writing nothing:
/// another m, another T, a 3-D labels file, a negative label (named by sequence and step);
/// `eval` refuses a label beyond the model's classes and per-sequence labels for a
/// per-step model.
#[test]
fn per_step_labels_that_do_not_fit_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let (x, _) = sequences(12, 4, 43);
    let y = running_classes(&x).mapv(|v| v as i64);
    let path = |name: &str| dir.path().join(name).display().to_string();
    x.write_npy(std::fs::File::create(path("x.npy")).unwrap()).unwrap();
    let data = format!("npy:{}", path("x.npy"));
    let write = |name: &str, a: ndarray::ArrayD<i64>| a.write_npy(std::fs::File::create(path(name)).unwrap()).unwrap();
    write("y.npy", y.clone().into_dyn());
    write("m.npy", y.slice(ndarray::s![..10, ..]).to_owned().into_dyn());
    write("t.npy", y.slice(ndarray::s![.., ..3]).to_owned().into_dyn());
    write("three.npy", y.clone().insert_axis(ndarray::Axis(2)).into_dyn());
    let mut negative = y.clone();
    negative[[3, 2]] = -1;
    write("negative.npy", negative.into_dyn());
    for (file, words) in [
        ("m.npy", ["labels for 10 sequences of 4 steps", "12 sequences of 4 steps"]),
        ("t.npy", ["labels for 12 sequences of 3 steps", "one per step (shape (12, 4))"]),
        ("three.npy", ["has shape (12, 4, 1) (3 axes)", "--targets"]),
        ("negative.npy", ["label -1 of sequence 3, step 2", "not a class number"]),
    ] {
        let out = dir.path().join(format!("run-{file}"));
        let o = wgnn()
            .args(["train", "lstm", "--backend", "cpu", "--quiet", "--hidden", "3", "--iterations", "1"])
            .args(["--data", &data, "--labels", &format!("npy:{}", path(file)), "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.trim().lines().count() == 1, "{file}: {stderr}");
        assert!(words.iter().all(|w| stderr.contains(w)), "{file}: {stderr}");
        assert!(!out.exists(), "{file}: a refused run wrote {}", out.display());
    }
    let run = dir.path().join("run");
    let o = wgnn()
        .args(["train", "lstm", "--backend", "cpu", "--hidden", "3", "--iterations", "1", "--validation", "0.25"])
        .args(["--data", &data, "--labels", &path("y.npy"), "--out"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The held-out metric of a softmax is its error rate, and the epoch line (stderr) says so.
    let progress = String::from_utf8_lossy(&o.stderr);
    let epoch = progress.lines().find(|l| l.starts_with("epoch")).expect("an epoch line");
    assert!(epoch.contains("validation error ") && !epoch.contains("squared"), "{epoch}");
    let mut beyond = y.clone();
    beyond[[0, 1]] = 7;
    write("beyond.npy", beyond.into_dyn());
    write("per-sequence.npy", y.column(0).to_owned().into_dyn());
    for (file, needle) in [("beyond.npy", "label 7"), ("per-sequence.npy", "one per step")] {
        let o = wgnn()
            .args(["eval", "--backend", "cpu", "--data", &data, "--labels", &path(file), "--model"])
            .arg(&run)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.trim().lines().count() == 1, "{file}: {stderr}");
        assert!(stderr.contains(needle), "{file}: {stderr}");
    }
}
