//! First-order updates on θ in GPU memory (`shaders/update.wgsl`, `src/gpu/update.rs`)
//! against their specification, `UpdateState::apply` (src/optim/update.rs): the kernel alone
//! on awkward lengths, then minibatch training on the GPU against the CPU f32 backend and the
//! GPU's own host path, NaN rollback, and resuming mid-epoch. Small shapes: lavapipe in CI.

mod common;

use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, StandardNormal};
use wgnn::gpu::{Gpu, GpuBackend, GpuOptions, StandaloneUpdate, Transfers};
use wgnn::model::{Activation, Init, NetSpec, Output, Sparsity};
use wgnn::optim::{
    BackendObjective, Control, Hooks, Method, Minibatch, Optimizer, Stop, StopReason, UpdateRule, UpdateState,
};
use wgnn::{Backend, CpuBackend, Targets};

use common::relative_error as rel;

fn gpu_backend(spec: &NetSpec) -> GpuBackend {
    let mut g = GpuBackend::new(spec.clone(), &GpuOptions::default())
        .expect("a GPU adapter (lavapipe in CI: apt-get install mesa-vulkan-drivers)");
    g.set_poison(true);
    g
}

fn rules() -> [UpdateRule; 5] {
    [
        UpdateRule::Plain,
        UpdateRule::Momentum { momentum: 0.9, nesterov: false },
        UpdateRule::NESTEROV,
        UpdateRule::ADAM,
        UpdateRule::Adam { beta1: 0.5, beta2: 0.9, epsilon: 1e-3 },
    ]
}

/// f32-representable normal samples times `scale`, so both sides start from the same numbers.
fn f32_normal(len: usize, scale: f64, rng: &mut StdRng) -> Vec<f64> {
    (0..len)
        .map(|_| {
            let z: f64 = StandardNormal.sample(rng);
            ((z * scale) as f32) as f64
        })
        .collect()
}

fn difference(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

#[test]
fn the_update_kernel_follows_update_rs_for_every_rule() {
    let gpu = Gpu::open(&GpuOptions::default()).expect("a GPU adapter");
    let mut rng = StdRng::seed_from_u64(11);
    for rule in rules() {
        for len in [1, 7, 1000, 65_537] {
            let theta0 = f32_normal(len, 1.0, &mut rng);
            let mut reference = UpdateState::new(rule, len);
            let mut theta = theta0.clone();
            let mut device = StandaloneUpdate::new(&gpu, &theta0, &reference).unwrap();
            let mut got = UpdateState::new(rule, len);
            let mut got_theta = vec![f64::NAN; len];
            for step in 0..4 {
                // Gradients of several magnitudes: Adam divides by their running size.
                let scale = [1.0, 1e-3, 10.0, 0.1][step];
                let grad = f32_normal(len, scale, &mut rng);
                let learning_rate = [0.01, 0.05, 0.001, 0.02][step];
                let scalars = rule.scalars(reference.steps + 1, learning_rate);
                let norm = device.step(&gpu, &grad, &scalars).unwrap();
                reference.apply(&mut theta, &grad, learning_rate);
                device.read(&gpu, &mut got_theta, &mut got).unwrap();

                let what = format!("{} |θ| = {len} step {}", rule.name(), step + 1);
                let exact_norm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
                assert!(((norm - exact_norm) / exact_norm).abs() < 1e-5, "{what}: ‖g‖ {norm} vs {exact_norm}");
                assert!(got_theta.iter().all(|v| v.is_finite()), "{what}: unwritten or non-finite θ");
                let e = rel(&got_theta, &theta);
                assert!(e < 1e-5, "{what}: θ relative error {e:e}");
                // θ is mostly θ₀, so also the distance travelled: f32 rounds θ (~1) to 6e-8 at
                // each step, ~1e-5 of the ~0.01 moved, so 1e-4 here; a wrong formula (a
                // missing bias correction, a sign, μ applied twice) misses by 1e-2 or more.
                let e = rel(&difference(&got_theta, &theta0), &difference(&theta, &theta0));
                assert!(e < 1e-4, "{what}: θ − θ₀ relative error {e:e}");
                for (g, r, name) in [
                    (&got.first_moment, &reference.first_moment, "m"),
                    (&got.second_moment, &reference.second_moment, "v"),
                ] {
                    if !r.is_empty() {
                        let e = rel(g, r);
                        assert!(e < 1e-5, "{what}: {name} relative error {e:e}");
                    }
                }
            }
            // A NaN in the gradient: no update at all, θ and the moments stay as they were.
            let (before, moments) = (got_theta.clone(), got.clone());
            let mut grad = f32_normal(len, 1.0, &mut rng);
            grad[len - 1] = f64::NAN;
            let norm = device.step(&gpu, &grad, &rule.scalars(reference.steps + 1, 0.01)).unwrap();
            assert!(norm.is_nan(), "{}: ‖g‖ {norm} with a NaN in g", rule.name());
            device.read(&gpu, &mut got_theta, &mut got).unwrap();
            assert_eq!((&got_theta, &got.first_moment), (&before, &moments.first_moment), "{}", rule.name());
            assert_eq!(got.second_moment, moments.second_moment, "{}", rule.name());
        }
    }
}

/// Four Gaussian blobs in 20-D, 320 examples, for a 20-16-4 tanh MLP with a softmax output.
fn blobs() -> (NetSpec, Array2<f64>, Vec<usize>) {
    let (m, n, k) = (320, 20, 4);
    let mut rng = StdRng::seed_from_u64(5);
    let centres = common::normal(k, n, &mut rng);
    let labels: Vec<usize> = (0..m).map(|_| rng.random_range(0..k)).collect();
    let noise = common::normal(m, n, &mut rng);
    let x = Array2::from_shape_fn((m, n), |(i, j)| centres[[labels[i], j]] + noise[[i, j]]);
    let spec = NetSpec::new(&[n, 16, k], Activation::Tanh, Output::Softmax).unwrap().with_weight_decay(1e-4).unwrap();
    (spec, x, labels)
}

/// 3 epochs of 10 minibatches of 32.
fn minibatch(rule: UpdateRule) -> Method {
    let rate = if matches!(rule, UpdateRule::Adam { .. }) { 0.01 } else { 0.05 };
    Method::Minibatch(Minibatch::sgd(rate).with_rule(rule).with_batch_size(32).with_seed(4))
}

const EPOCHS: usize = 3;

fn train(backend: &mut dyn Backend, method: &Method, theta0: &[f64]) -> (Vec<f64>, Optimizer) {
    let mut theta = theta0.to_vec();
    let mut opt = Optimizer::new(method.clone()).unwrap();
    let stop = Stop::MINIBATCH.with_max_iterations(EPOCHS);
    opt.run(&mut BackendObjective::new(backend), &mut theta, &stop, &mut Hooks::new()).unwrap();
    (theta, opt)
}

#[test]
fn minibatch_training_on_the_gpu_follows_the_cpu_with_theta_on_the_device() {
    let (spec, x, labels) = blobs();
    let theta0 = Init::Uniform.theta(&spec, 2);
    let mut cpu = CpuBackend::<f32>::new(spec.clone()).unwrap();
    cpu.set_data((&x).into(), Targets::Labels(&labels)).unwrap();
    let mut gpu = gpu_backend(&spec);
    gpu.set_data((&x).into(), Targets::Labels(&labels)).unwrap();
    for rule in [UpdateRule::NESTEROV, UpdateRule::ADAM] {
        let method = minibatch(rule);
        let (theta_cpu, opt_cpu) = train(&mut cpu, &method, &theta0);

        let start = gpu.transfers();
        let (theta_dev, opt_dev) = train(&mut gpu, &method, &theta0);
        let on_device = since(gpu.transfers(), start);
        gpu.set_device_training(false);
        let start = gpu.transfers();
        let (theta_host, _) = train(&mut gpu, &method, &theta0);
        let on_host = since(gpu.transfers(), start);
        gpu.set_device_training(true);

        // The device path: θ goes up once per run and comes back once per epoch; no gradient
        // comes back. The host path: θ up and ∇J back at every one of the 30 steps.
        assert_eq!(on_device, Transfers { theta_uploads: 1, theta_readbacks: EPOCHS as u64, grad_readbacks: 0 });
        assert_eq!(on_host, Transfers { theta_uploads: 30, theta_readbacks: 0, grad_readbacks: 30 });

        let moved = difference(&theta_cpu, &theta0);
        let vs_cpu = rel(&difference(&theta_dev, &theta0), &moved);
        let vs_host = rel(&difference(&theta_dev, &theta0), &difference(&theta_host, &theta0));
        let costs = |o: &Optimizer| o.history().costs();
        let cost_gap = rel(&costs(&opt_dev), &costs(&opt_cpu));
        println!(
            "{}: θ − θ₀ vs CPU f32 {vs_cpu:.2e}, vs the GPU host path {vs_host:.2e}; epoch costs {:?} vs CPU {:?}",
            rule.name(),
            costs(&opt_dev),
            costs(&opt_cpu)
        );
        // Both run in f32 with different summation orders, and the device updates θ in f32
        // where the host path does it in f64: ~1e-7 per step, compounded over 30 steps of a
        // nonlinear map (measured on lavapipe: 2.3e-7 Nesterov, 2.8e-7 Adam; Adam's m/√v
        // magnifies differences in small gradients). 1e-4 of the distance travelled leaves
        // room for another GPU's summation order and is far below what a wrong formula, a
        // missed or repeated step or a stale θ gives (≥ 1e-2: one step in 30).
        assert!(vs_cpu < 1e-4, "{}: θ − θ₀ differs from the CPU's by {vs_cpu:e}", rule.name());
        assert!(vs_host < 1e-4, "{}: θ − θ₀ differs from the host path's by {vs_host:e}", rule.name());
        assert!(cost_gap < 1e-4, "{}: epoch costs differ by {cost_gap:e}", rule.name());
        let last = costs(&opt_dev);
        assert!(last[EPOCHS - 1] < 0.5 * last[0], "{}: no learning: {last:?}", rule.name());
    }
}

#[test]
fn a_sparse_autoencoder_trains_alike_on_the_device_with_whole_and_partial_batches() {
    // Sparsity adds a cost term the device's finiteness check must include; one batch of
    // all 50 examples is `Batch::All`, batches of 20 are shuffled `Batch::Indices` (the last
    // one of 10).
    let spec = NetSpec::sparse_autoencoder(16, 5, 1e-3, Sparsity { target: 0.1, weight: 3.0 }).unwrap();
    let mut rng = StdRng::seed_from_u64(8);
    let x = common::uniform(50, 16, 0.0, 1.0, &mut rng);
    let theta0 = Init::Uniform.theta(&spec, 3);
    let mut cpu = CpuBackend::<f32>::new(spec.clone()).unwrap();
    cpu.set_data((&x).into(), Targets::Inputs).unwrap();
    let mut gpu = gpu_backend(&spec);
    gpu.set_data((&x).into(), Targets::Inputs).unwrap();
    for batch in [50, 20] {
        let method = Method::Minibatch(Minibatch::adam(0.02).with_batch_size(batch).with_seed(1));
        let (theta_cpu, opt_cpu) = train(&mut cpu, &method, &theta0);
        let (theta_gpu, opt_gpu) = train(&mut gpu, &method, &theta0);
        let e = rel(&difference(&theta_gpu, &theta0), &difference(&theta_cpu, &theta0));
        let (c_cpu, c_gpu) = (opt_cpu.history().costs(), opt_gpu.history().costs());
        println!("batch {batch}: θ − θ₀ vs CPU f32 {e:.2e}; epoch costs {c_gpu:?} vs {c_cpu:?}");
        assert!(e < 1e-4, "batch {batch}: θ − θ₀ differs from the CPU's by {e:e}");
        assert!(rel(&c_gpu, &c_cpu) < 1e-5, "batch {batch}: epoch costs {c_gpu:?} vs {c_cpu:?}");
        assert!(c_gpu[EPOCHS - 1] < c_gpu[0], "batch {batch}: no learning: {c_gpu:?}");
    }
    assert_eq!(gpu.transfers().grad_readbacks, 0, "the device path was taken");
}

fn since(now: Transfers, start: Transfers) -> Transfers {
    Transfers {
        theta_uploads: now.theta_uploads - start.theta_uploads,
        theta_readbacks: now.theta_readbacks - start.theta_readbacks,
        grad_readbacks: now.grad_readbacks - start.grad_readbacks,
    }
}

#[test]
fn a_diverging_gpu_run_goes_back_to_the_best_theta_like_the_cpu() {
    // A ReLU regression network and an absurd learning rate: the first step is finite, the
    // second overflows f32 (outputs ~1e25, squared ~1e50), so θ must return to the best point
    // seen: θ₀, where the first minibatch was evaluated.
    let spec = NetSpec::new(&[6, 8, 3], Activation::Relu, Output::SquaredError(Activation::Identity)).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let (x, y) = (common::normal(64, 6, &mut rng), common::normal(64, 3, &mut rng));
    let theta0: Vec<f64> = Init::Uniform.theta(&spec, 1).iter().map(|&v| v as f32 as f64).collect();
    let method = Method::Minibatch(Minibatch::sgd(1e25).with_rule(UpdateRule::Plain).with_batch_size(16));
    let run = |backend: &mut dyn Backend| {
        backend.set_data((&x).into(), Targets::Values((&y).into())).unwrap();
        let mut theta = theta0.clone();
        let mut opt = Optimizer::new(method.clone()).unwrap();
        let stop = Stop::MINIBATCH.with_max_iterations(3);
        let err = opt.run(&mut BackendObjective::new(backend), &mut theta, &stop, &mut Hooks::new()).unwrap_err();
        let wgnn::Error::Diverged(d) = &err else { panic!("not a divergence: {err}") };
        (err.to_string(), (**d).clone(), theta)
    };
    let (_, cpu, cpu_theta) = run(&mut CpuBackend::<f32>::new(spec.clone()).unwrap());
    let mut gpu = gpu_backend(&spec);
    let (gpu_error, on_gpu, gpu_theta) = run(&mut gpu);
    println!("{gpu_error}");
    assert!(gpu_error.contains("NaN") && gpu_error.contains("put back to the initial θ"), "{gpu_error}");
    // The same step fails for the same reason (the kept cost is an f32 sum on each side).
    assert_eq!((&on_gpu.cause, on_gpu.iteration, on_gpu.evaluations), (&cpu.cause, cpu.iteration, cpu.evaluations));
    assert_eq!(on_gpu.kept.map(|k| k.iteration), Some(0));
    assert_eq!(cpu.kept.map(|k| k.iteration), Some(0));
    assert_eq!(cpu_theta, theta0);
    assert_eq!(gpu_theta, theta0, "θ went back to the initial θ");
    assert_eq!(gpu.transfers().grad_readbacks, 0, "the device path was taken");
}

#[test]
fn a_non_finite_start_on_the_gpu_is_an_error_and_leaves_theta_untouched() {
    // θ₀ = 1e30 everywhere overflows f32 at the first forward pass. θ must come back as it
    // was given, not as its f32 rounding from the device.
    let spec = NetSpec::new(&[6, 8, 3], Activation::Relu, Output::SquaredError(Activation::Identity)).unwrap();
    let mut rng = StdRng::seed_from_u64(4);
    let (x, y) = (common::normal(32, 6, &mut rng), common::normal(32, 3, &mut rng));
    let mut gpu = gpu_backend(&spec);
    gpu.set_data((&x).into(), Targets::Values((&y).into())).unwrap();
    let theta0 = vec![1.000000001e30; wgnn::model::ThetaLayout::new(&spec).len()];
    let mut theta = theta0.clone();
    let mut opt = Optimizer::new(Method::Minibatch(Minibatch::adam(0.01).with_batch_size(8))).unwrap();
    let stop = Stop::MINIBATCH.with_max_iterations(2);
    let err = opt.run(&mut BackendObjective::new(&mut gpu), &mut theta, &stop, &mut Hooks::new()).unwrap_err();
    assert!(err.to_string().contains("initial θ"), "{err}");
    assert!(theta.iter().zip(&theta0).all(|(a, b)| a.to_bits() == b.to_bits()), "θ changed");
    assert_eq!(gpu.transfers().theta_uploads, 1, "the device path was taken");
}

#[test]
fn resuming_gpu_training_mid_epoch_gives_the_uninterrupted_theta() {
    let (spec, x, labels) = blobs();
    let theta0 = Init::Uniform.theta(&spec, 7);
    let mut gpu = gpu_backend(&spec);
    gpu.set_data((&x).into(), Targets::Labels(&labels)).unwrap();
    for rule in [UpdateRule::NESTEROV, UpdateRule::ADAM] {
        let method = minibatch(rule);
        let (straight, whole) = train(&mut gpu, &method, &theta0);

        // Stopped by the callback at step 3 of epoch 2 (its 13th call), saved as JSON text as
        // a checkpoint keeps it, then resumed on a fresh backend.
        let mut theta = theta0.clone();
        let mut first = Optimizer::new(method.clone()).unwrap();
        let mut calls = 0;
        let mut hooks = Hooks::new().on_progress(|_| {
            calls += 1;
            if calls == 13 { Control::Stop } else { Control::Continue }
        });
        let stop = Stop::MINIBATCH.with_max_iterations(EPOCHS);
        let part = first.run(&mut BackendObjective::new(&mut gpu), &mut theta, &stop, &mut hooks).unwrap();
        drop(hooks);
        assert_eq!((part.reason, part.iterations), (StopReason::Interrupted, 1), "{}", rule.name());
        let saved = serde_json::to_string(&first).unwrap();

        let mut fresh = gpu_backend(&spec);
        fresh.set_data((&x).into(), Targets::Labels(&labels)).unwrap();
        let mut second: Optimizer = serde_json::from_str(&saved).unwrap();
        let rest = second.run(&mut BackendObjective::new(&mut fresh), &mut theta, &stop, &mut Hooks::new()).unwrap();
        assert_eq!((rest.iterations, rest.evaluations), (EPOCHS, whole.evaluations()), "{}", rule.name());
        assert!(
            theta.iter().zip(&straight).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}: resumed θ differs from the uninterrupted run's by {:e}",
            rule.name(),
            rel(&theta, &straight)
        );
        assert_eq!(fresh.transfers().grad_readbacks, 0, "the device path was taken");
    }
}

/// Clipping by global norm inside the update kernel (`StandaloneUpdate::step_clipped`, the
/// char model's device path): every rule on g·min(1, τ/‖g‖) follows `clip_by_global_norm`
/// then `UpdateState::apply` in f64; τ above ‖g‖ leaves g as it is (the same bits as the
/// unclipped kernel), τ below scales it (θ − θ₀ then differs from the unclipped step's).
#[test]
fn the_update_kernel_clips_by_global_norm_like_the_host() {
    use wgnn::optim::clip_by_global_norm;
    let gpu = Gpu::open(&GpuOptions::default()).expect("a GPU adapter");
    let mut rng = StdRng::seed_from_u64(12);
    for rule in rules() {
        for len in [7, 5000] {
            let theta0 = f32_normal(len, 1.0, &mut rng);
            let mut reference = UpdateState::new(rule, len);
            let mut theta = theta0.clone();
            let mut device = StandaloneUpdate::new(&gpu, &theta0, &reference).unwrap();
            let mut plain = StandaloneUpdate::new(&gpu, &theta0, &reference).unwrap();
            let (mut got, mut got_theta) = (UpdateState::new(rule, len), vec![f64::NAN; len]);
            let (mut unclipped, mut unclipped_theta) = (UpdateState::new(rule, len), vec![f64::NAN; len]);
            for step in 0..3 {
                let mut grad = f32_normal(len, [1.0, 0.01, 3.0][step], &mut rng);
                let exact_norm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
                // Steps 1 and 3 clip (τ a tenth and a half of ‖g‖); step 2 does not (τ = 2‖g‖).
                let tau = exact_norm * [0.1, 2.0, 0.5][step];
                let scalars = rule.scalars(reference.steps + 1, 0.01);
                let norm = device.step_clipped(&gpu, &grad, &scalars, tau).unwrap();
                plain.step(&gpu, &grad, &scalars).unwrap();
                let host_norm = clip_by_global_norm(&mut grad, tau).unwrap();
                reference.apply(&mut theta, &grad, 0.01);
                device.read(&gpu, &mut got_theta, &mut got).unwrap();
                plain.read(&gpu, &mut unclipped_theta, &mut unclipped).unwrap();
                let what = format!("{} |θ| = {len} step {} τ = {tau:.3e}", rule.name(), step + 1);
                assert!(((norm - host_norm) / host_norm).abs() < 1e-5, "{what}: ‖g‖ {norm} vs {host_norm}");
                let e = rel(&difference(&got_theta, &theta0), &difference(&theta, &theta0));
                assert!(e < 1e-4, "{what}: θ − θ₀ relative error {e:e}");
                if step == 0 && !matches!(rule, UpdateRule::Adam { .. }) {
                    // Adam's first step is about ±η whatever g's scale; the others move by g·τ/‖g‖.
                    let e = rel(&difference(&unclipped_theta, &theta0), &difference(&theta, &theta0));
                    assert!(e > 1.0, "{what}: the clipped step equals the unclipped one ({e:e})");
                }
            }
            if matches!(rule, UpdateRule::Adam { .. }) {
                // Clipping changed m and v from step 1 on (τ/‖g‖ = 0.1): so θ after 3 steps.
                let e = rel(&difference(&unclipped_theta, &theta0), &difference(&got_theta, &theta0));
                assert!(e > 1e-3, "Adam |θ| = {len}: clipped and unclipped runs agree to {e:e}");
            }
        }
    }
}
