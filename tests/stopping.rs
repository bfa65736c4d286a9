//! Stopping rules that tell the truth (the reliability pass): a fixed step that raises the
//! cost is not "converged"; a run whose cost explodes, keeps rising or turns NaN ends in
//! `Error::Diverged` with θ put back to the best point seen, on the CPU and the GPU alike; a
//! normal noisy run ends exactly as it did before the rules existed; and an interrupted run
//! resumes to the same bits, divergence included. Mostly on scikit-learn's 8×8 digits
//! (1,797 × 64, pixels 0–16, found through WGNN_DATA_DIR).

mod common;

use std::cell::Cell;
use std::sync::OnceLock;

use ndarray::Array2;
use wgnn::data::{DataSource, LoadOptions};
use wgnn::gpu::{GpuBackend, GpuOptions};
use wgnn::model::{Activation, Init, NetSpec, Output};
use wgnn::optim::{
    BackendObjective, Control, Diverged, Divergence, DivergenceCause, FnObjective, Hooks, Method, Minibatch, Objective,
    Optimizer, Record, Stop, StopReason, Summary,
};
use wgnn::{Backend, Batch, CpuBackend, Error, Result, Targets};

/// The digits as f64 rows and their labels, read once per test binary.
fn digits() -> &'static (Array2<f64>, Vec<usize>) {
    static DIGITS: OnceLock<(Array2<f64>, Vec<usize>)> = OnceLock::new();
    DIGITS.get_or_init(|| {
        let path = common::data_dir().join("digits8x8/digits.csv.gz");
        let source: DataSource = format!("csv:{}", path.display()).parse().unwrap();
        let data = source.load(&LoadOptions::default()).unwrap();
        (data.x.mapv(f64::from), data.labels.unwrap())
    })
}

/// Softmax regression on the digits as `wgnn train softmax` builds it (λ = 1e-4).
fn softmax() -> NetSpec {
    NetSpec::softmax_regression(64, 10, 1e-4).unwrap()
}

/// A 64-32-10 ReLU network with a softmax output (λ = 1e-5, the CLI's MLP default).
fn mlp() -> NetSpec {
    NetSpec::new(&[64, 32, 10], Activation::Relu, Output::Softmax).unwrap().with_weight_decay(1e-5).unwrap()
}

fn load(backend: &mut dyn Backend) {
    let (x, labels) = digits();
    backend.set_data(x.into(), Targets::Labels(labels)).unwrap();
}

fn cpu64(spec: &NetSpec) -> CpuBackend<f64> {
    let mut b = CpuBackend::<f64>::new(spec.clone()).unwrap();
    load(&mut b);
    b
}

fn accuracy(backend: &mut dyn Backend, theta: &[f64]) -> f64 {
    let (x, labels) = digits();
    let predicted = backend.classify(theta, x.into()).unwrap();
    predicted.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / labels.len() as f64
}

fn cost(backend: &mut dyn Backend, theta: &[f64]) -> f64 {
    backend.cost(theta, Batch::All).unwrap().total()
}

fn run(method: Method, objective: &mut dyn Objective, theta: &mut [f64], stop: Stop) -> (Result<Summary>, Optimizer) {
    let mut opt = Optimizer::new(method).unwrap();
    let result = opt.run(objective, theta, &stop, &mut Hooks::new());
    (result, opt)
}

/// The report of a run that must have diverged; it must also be what the optimizer keeps.
fn diverged(result: Result<Summary>, opt: &Optimizer) -> Diverged {
    match result {
        Err(Error::Diverged(d)) => {
            println!("{d}");
            assert_eq!(opt.diverged(), Some(&*d), "the optimizer keeps the report");
            *d
        }
        Err(e) => panic!("expected a divergence, got the error {e}"),
        Ok(s) => panic!("expected a divergence, the run ended: {s:?}"),
    }
}

fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn without_time(records: &[Record]) -> Vec<Record> {
    records.iter().map(|r| Record { seconds: 0.0, ..r.clone() }).collect()
}

/// Divergence rules off, to compare a run with and without them.
fn no_divergence(stop: Stop) -> Stop {
    Stop { divergence: Divergence { explode: 1e300, explode_fixed_step: 1e300, patience: 0, rise: 1e300 }, ..stop }
}

// ---------------------------------------------------------------- the handed cases

#[test]
fn gd_on_the_digits_rides_out_its_early_rises_and_reaches_98_percent() {
    // The handed case: softmax, f64, uniform θ₀ (seed 0), η = 0.1, λ = 1e-4. The cost rises
    // at the first step; wgnn used to stop there, "converged", at train accuracy 0.27.
    let spec = softmax();
    let mut backend = cpu64(&spec);
    let mut theta = Init::Uniform.theta(&spec, 0);
    let stop = Stop::FULL_BATCH.with_max_iterations(200);
    let (result, opt) = run(Method::gradient_descent(0.1), &mut BackendObjective::new(&mut backend), &mut theta, stop);
    let s = result.unwrap();
    let costs = opt.history().costs();
    let acc = accuracy(&mut backend, &theta);
    let above = costs.iter().take_while(|&&c| c >= costs[0]).count() - 1;
    println!(
        "J {:.4} → {:.4} (peak {:.4}, {above} iterations above J(θ₀)), train accuracy {acc:.4}",
        costs[0], costs[200], costs[2]
    );
    assert!(costs[1] > costs[0], "the case must start with a rise: {:?}", &costs[..3]);
    assert_eq!((s.reason, s.iterations), (StopReason::MaxIterations, 200));
    assert!(acc > 0.98, "train accuracy {acc}");
    assert!(costs[200] < 0.06 && costs[200] < costs[0] / 100.0, "J = {}", costs[200]);
}

/// Found by attacking the first version of these rules: plain gradient descent from θ = 0
/// with η = 1 overshoots to J = 33.5 (14.5 × J(θ₀)) at its second step and then recovers, as
/// NumPy's gradient descent with the same settings does (J 2.3026 → 1.3101 → 33.455, then
/// 0.600 and 98% train accuracy at iteration 100). It was called "diverged" at iteration 2.
#[test]
fn gd_overshooting_far_from_zero_is_let_recover() {
    let spec = softmax();
    let mut backend = cpu64(&spec);
    let mut theta = vec![0.0; wgnn::model::ThetaLayout::new(&spec).len()];
    let stop = Stop::FULL_BATCH.with_max_iterations(100);
    let (result, opt) = run(Method::gradient_descent(1.0), &mut BackendObjective::new(&mut backend), &mut theta, stop);
    let costs = opt.history().costs();
    assert!(costs[2] > 10.0 * costs[0], "the case must overshoot: {:?}", &costs[..3]);
    let s = result.unwrap();
    let acc = accuracy(&mut backend, &theta);
    assert_eq!(s.iterations, 100, "{:?}", s.reason);
    assert!(acc > 0.97, "train accuracy {acc}");
    assert!(costs[100] < 1.0, "J = {}", costs[100]);
}

#[test]
fn gd_at_eta_1e10_adam_at_1e3_and_sgd_at_1_diverge_and_keep_the_initial_theta() {
    let spec = softmax();
    let mut backend = cpu64(&spec);
    let theta0 = Init::Uniform.theta(&spec, 0);
    let initial = cost(&mut backend, &theta0);
    let cases = [
        (Method::gradient_descent(1e10), Stop::FULL_BATCH.with_max_iterations(100)),
        (Method::adam(1e3), Stop::MINIBATCH.with_max_iterations(50)),
        (Method::sgd(1.0), Stop::MINIBATCH.with_max_iterations(50)),
    ];
    for (method, stop) in cases {
        let name = method.name();
        let mut theta = theta0.clone();
        let (result, opt) = run(method, &mut BackendObjective::new(&mut backend), &mut theta, stop);
        let d = diverged(result, &opt);
        let DivergenceCause::Exploded { cost: blown, best, .. } = d.cause else { panic!("{name}: {:?}", d.cause) };
        let kept = d.kept.unwrap();
        assert_eq!((d.iteration, kept.iteration), (1, 0), "{name}: found at the first record, θ₀ kept");
        assert!(blown > 11.0 * best, "{name}: {blown} vs {best}");
        // θ is θ₀ to the bit: finite, and its cost is the initial one.
        assert!(same_bits(&theta, &theta0), "{name}: θ is not θ₀");
        assert!(cost(&mut backend, &theta) <= initial, "{name}");
        // The record of the blow-up is kept for the loss curve.
        assert_eq!(opt.history().last().unwrap().cost, blown, "{name}");
        if name == "gd" {
            assert_eq!(kept.cost, initial, "gd: the kept cost is J(θ₀)");
            assert_eq!(opt.history().len(), 2);
        }
    }
}

#[test]
fn gd_that_does_not_recover_diverges_and_one_that_converges_does_not() {
    // Pseudo-Huber f(x) = √(1 + x²): its gradient is at most 1, so GD with η = 3 from 0.5
    // overshoots into the 2-cycle ±√1.25 (f = 1.5) and stays there, above f(0.5) = 1.118,
    // without ever exploding. The old rule called the first rise "converged".
    let huber = |x: &[f64], g: &mut [f64]| {
        let r = (1.0 + x[0] * x[0]).sqrt();
        g[0] = x[0] / r;
        r
    };
    let mut x = vec![0.5];
    let (result, opt) = run(Method::gradient_descent(3.0), &mut FnObjective::new(1, huber), &mut x, Stop::FULL_BATCH);
    let d = diverged(result, &opt);
    let patience = Divergence::DEFAULT.patience;
    assert!(matches!(d.cause, DivergenceCause::NoRecovery { iterations, .. } if iterations == patience), "{d:?}");
    // The first step above f(0.5) opens the excursion (its low); the next `patience` add no
    // new low.
    assert_eq!(d.iteration, patience + 1);
    assert_eq!(x, [0.5], "θ goes back to the start, the best point");
    let last = opt.history().last().unwrap().cost;
    assert!((last - 1.5).abs() < 1e-3, "the run ended in the 2-cycle: J = {last}");
    // η = 0.5 is stable: the same rules let it converge.
    let mut x = vec![0.5];
    let (result, _) = run(Method::gradient_descent(0.5), &mut FnObjective::new(1, huber), &mut x, Stop::FULL_BATCH);
    let s = result.unwrap();
    assert!(s.reason.converged(), "{s:?}");
    assert!(x[0].abs() < 1e-3, "x = {x:?}");
}

/// An objective that turns NaN after `finite` evaluations: a run that goes bad mid-epoch.
struct NanAfter<'a> {
    inner: BackendObjective<'a>,
    calls: &'a Cell<usize>,
    finite: usize,
}

impl Objective for NanAfter<'_> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn num_examples(&self) -> usize {
        self.inner.num_examples()
    }
    fn eval(&mut self, theta: &[f64], batch: Batch<'_>, grad: &mut [f64]) -> Result<f64> {
        self.calls.set(self.calls.get() + 1);
        let cost = self.inner.eval(theta, batch, grad)?;
        Ok(if self.calls.get() > self.finite { f64::NAN } else { cost })
    }
}

/// Adam at η = 0.03 on the MLP, batches of 64 (29 steps an epoch): its epoch means fall to
/// their lowest around epoch 12 and then wander up, 2–4 times higher, as a too-large η does.
fn noisy_adam() -> Method {
    Method::Minibatch(Minibatch::adam(0.03).with_batch_size(64))
}

const STEPS_PER_EPOCH: usize = 29;

#[test]
fn a_minibatch_run_that_turns_nan_keeps_its_best_epoch_not_its_last() {
    let spec = mlp();
    let mut backend = cpu64(&spec);
    let theta0 = Init::Uniform.theta(&spec, 0);
    let calls = Cell::new(0);
    // NaN from step 5 of epoch 21 on; the cost tolerance off, so nothing else stops it.
    let finite = 20 * STEPS_PER_EPOCH + 4;
    let mut epoch_thetas = Vec::new();
    let mut hooks = Hooks::new().on_progress(|p| {
        if let Some(theta) = p.theta {
            epoch_thetas.push(theta.to_vec());
        }
        Control::Continue
    });
    let mut theta = theta0.clone();
    let mut opt = Optimizer::new(noisy_adam()).unwrap();
    let stop = Stop { cost_tol: 0.0, ..Stop::MINIBATCH.with_max_iterations(30) };
    let mut objective = NanAfter { inner: BackendObjective::new(&mut backend), calls: &calls, finite };
    let result = opt.run(&mut objective, &mut theta, &stop, &mut hooks);
    drop(hooks);
    let d = diverged(result, &opt);
    assert_eq!(d.cause, DivergenceCause::NonFinite);
    assert_eq!((d.iteration, d.evaluations), (21, finite + 1));
    let costs = opt.history().costs();
    assert_eq!(costs.len(), 20);
    let best = (0..costs.len()).min_by(|&a, &b| costs[a].total_cmp(&costs[b])).unwrap();
    let kept = d.kept.unwrap();
    println!("epoch means {costs:.4?}; kept epoch {}", kept.iteration);
    assert_eq!((kept.iteration, kept.cost), (best + 1, costs[best]), "the epoch with the lowest mean");
    assert!(kept.iteration < 20, "the case must have its best epoch before the last finite one");
    assert!(same_bits(&theta, &epoch_thetas[best]), "θ is the θ that epoch ended at");
    let (j_kept, j_last) = (cost(&mut backend, &theta), cost(&mut backend, &epoch_thetas[19]));
    println!("J(kept) = {j_kept:.4}, J(last finite) = {j_last:.4}");
    assert!(j_kept < j_last, "the kept θ is better than the last finite one");
}

#[test]
fn with_a_validation_metric_a_diverging_minibatch_run_keeps_its_best_validated_epoch() {
    // The same run with a validation metric (the error rate on the last 297 digits, which it
    // also trains on: only the choice of θ is tested here): the kept θ is the best validated.
    let spec = mlp();
    let mut backend = cpu64(&spec);
    let mut validator = cpu64(&spec);
    let (x, labels) = digits();
    let held = x.slice(ndarray::s![1500.., ..]).to_owned();
    let held_labels = &labels[1500..];
    let metric = |theta: &[f64]| -> Result<f64> {
        let predicted = validator.classify(theta, (&held).into())?;
        Ok(predicted.iter().zip(held_labels).filter(|(p, l)| p != l).count() as f64 / held_labels.len() as f64)
    };
    let early = wgnn::optim::EarlyStopping { patience: None, ..Default::default() };
    let mut hooks = Hooks::new().validation(metric, early);
    let calls = Cell::new(0);
    let finite = 20 * STEPS_PER_EPOCH + 4;
    let mut theta = Init::Uniform.theta(&spec, 0);
    let mut opt = Optimizer::new(noisy_adam()).unwrap();
    let stop = Stop { cost_tol: 0.0, ..Stop::MINIBATCH.with_max_iterations(30) };
    let mut objective = NanAfter { inner: BackendObjective::new(&mut backend), calls: &calls, finite };
    let result = opt.run(&mut objective, &mut theta, &stop, &mut hooks);
    drop(hooks);
    let d = diverged(result, &opt);
    let kept = d.kept.unwrap();
    let (best_theta, best_metric) = opt.best().unwrap();
    let first_best = opt.history().records.iter().find(|r| r.validation == Some(best_metric)).unwrap();
    println!("validation {:?}", opt.history().records.iter().map(|r| r.validation.unwrap()).collect::<Vec<_>>());
    assert_eq!(kept.validation, Some(best_metric));
    assert_eq!((kept.iteration, kept.cost), (first_best.iteration, first_best.cost));
    assert!(same_bits(&theta, best_theta), "θ is the best validated one");
    let by_cost = opt.best_cost().unwrap().0;
    assert_ne!(kept.iteration, by_cost, "the case must tell the two choices apart");
    assert!(d.to_string().contains("validation metric"), "{d}");
}

// ---------------------------------------------------------------- normal runs are untouched

#[test]
fn noisy_minibatch_runs_end_exactly_as_without_the_divergence_rules() {
    // Adam at η = 0.03 on the MLP rises to ~4 times its best epoch mean and stops on the
    // cost tolerance (scikit-learn's rule, unchanged); SGD on softmax is a quiet run.
    let cases = [(mlp(), noisy_adam()), (softmax(), Method::sgd(0.01))];
    for (spec, method) in cases {
        let name = method.name();
        let mut backend = cpu64(&spec);
        let theta0 = Init::Uniform.theta(&spec, 0);
        let stop = Stop::MINIBATCH.with_max_iterations(40);
        let mut with = theta0.clone();
        let (result, opt) = run(method.clone(), &mut BackendObjective::new(&mut backend), &mut with, stop);
        let s = result.unwrap();
        let mut without = theta0.clone();
        let (plain, plain_opt) =
            run(method, &mut BackendObjective::new(&mut backend), &mut without, no_divergence(stop));
        let p = plain.unwrap();
        let costs = opt.history().costs();
        let lowest = costs.iter().copied().fold(f64::INFINITY, f64::min);
        let peak_after = costs.iter().skip_while(|&&c| c > lowest).copied().fold(0.0, f64::max);
        let acc = accuracy(&mut backend, &with);
        println!(
            "{name}: {:?} after {} epochs, lowest mean {lowest:.4}, then up to {peak_after:.4}, accuracy {acc:.4}",
            s.reason, s.iterations
        );
        assert_eq!((s.reason, s.iterations, s.evaluations), (p.reason, p.iterations, p.evaluations), "{name}");
        assert!(same_bits(&with, &without), "{name}: θ differs");
        assert_eq!(without_time(&opt.history().records), without_time(&plain_opt.history().records), "{name}");
        assert!(acc > 0.95, "{name}: accuracy {acc}");
        if name == "adam" {
            assert_eq!(s.reason, StopReason::CostTolerance);
            assert!(peak_after > 2.0 * lowest, "the Adam case must be noisy: {costs:?}");
        }
    }
}

#[test]
fn rounding_noise_at_the_minimum_is_neither_a_rise_nor_a_divergence() {
    // 1 + x² with a deterministic wobble of up to 1e-6 in the cost (a golden-ratio sequence),
    // as an f32 sum at the minimum has: once GD has converged most iterations end a hair
    // above the best, and a new best comes only every 13, 21, 34 … iterations.
    let calls = Cell::new(0u64);
    let wobbly = |x: &[f64], g: &mut [f64]| {
        calls.set(calls.get() + 1);
        g[0] = 2.0 * x[0];
        1.0 + x[0] * x[0] + 1e-6 * (calls.get() as f64 * 0.618_033_988_749_895).fract()
    };
    let loose = Stop { grad_tol: 0.0, cost_tol: 0.0, ..Stop::FULL_BATCH.with_max_iterations(100) };
    let mut x = vec![3.0];
    let (result, opt) = run(Method::gradient_descent(0.25), &mut FnObjective::new(1, wobbly), &mut x, loose);
    let costs = opt.history().costs();
    let above =
        (1..costs.len()).filter(|&i| costs[i] > costs[..i].iter().copied().fold(f64::INFINITY, f64::min)).count();
    println!("{above} of {} iterations ended above the best", costs.len() - 1);
    assert_eq!(result.unwrap().reason, StopReason::MaxIterations);
    assert!(above > 2 * Divergence::DEFAULT.patience, "the case must wobble: {above} rises");
    // With no room for rounding the same run would count as not recovering …
    calls.set(0);
    let strict = Stop { divergence: Divergence { rise: 1e-12, ..Divergence::DEFAULT }, ..loose };
    let mut x = vec![3.0];
    let (result, opt) = run(Method::gradient_descent(0.25), &mut FnObjective::new(1, wobbly), &mut x, strict);
    assert!(matches!(diverged(result, &opt).cause, DivergenceCause::NoRecovery { .. }));
    // … and under the default cost tolerance it converges, the wobble counting as a stall.
    calls.set(0);
    let mut x = vec![3.0];
    let (result, _) = run(Method::gradient_descent(0.25), &mut FnObjective::new(1, wobbly), &mut x, Stop::FULL_BATCH);
    assert_eq!(result.unwrap().reason, StopReason::CostTolerance);
    assert!(x[0].abs() < 1e-2, "x = {x:?}");
}

// ---------------------------------------------------------------- resume

#[test]
fn an_interrupted_run_resumes_to_the_same_divergence_and_bits() {
    // GD on the pseudo-Huber 2-cycle, stopped 7 iterations into its rise (JSON text), and the
    // NaN minibatch run stopped mid-epoch 15, after its best epoch (JSON value).
    let huber = |x: &[f64], g: &mut [f64]| {
        let r = (1.0 + x[0] * x[0]).sqrt();
        g[0] = x[0] / r;
        r
    };
    let straight = {
        let mut x = vec![0.5];
        let (result, opt) =
            run(Method::gradient_descent(3.0), &mut FnObjective::new(1, huber), &mut x, Stop::FULL_BATCH);
        (diverged(result, &opt), x, without_time(&opt.history().records))
    };
    let mut x = vec![0.5];
    let mut first = Optimizer::new(Method::gradient_descent(3.0)).unwrap();
    let mut hooks = Hooks::new().on_progress(|p| if p.iteration == 7 { Control::Stop } else { Control::Continue });
    let part = first.run(&mut FnObjective::new(1, huber), &mut x, &Stop::FULL_BATCH, &mut hooks).unwrap();
    drop(hooks);
    assert_eq!((part.reason, part.iterations), (StopReason::Interrupted, 7));
    let saved = serde_json::to_string(&first).unwrap();
    let mut second: Optimizer = serde_json::from_str(&saved).unwrap();
    let result = second.run(&mut FnObjective::new(1, huber), &mut x, &Stop::FULL_BATCH, &mut Hooks::new());
    let resumed = (diverged(result, &second), x, without_time(&second.history().records));
    assert_eq!(resumed, straight, "GD: the same divergence, θ and history");

    let spec = mlp();
    let mut backend = cpu64(&spec);
    let theta0 = Init::Uniform.theta(&spec, 0);
    let stop = Stop { cost_tol: 0.0, ..Stop::MINIBATCH.with_max_iterations(30) };
    let finite = 20 * STEPS_PER_EPOCH + 4;
    let calls = Cell::new(0);
    let mut straight = theta0.clone();
    let mut whole = Optimizer::new(noisy_adam()).unwrap();
    let mut objective = NanAfter { inner: BackendObjective::new(&mut backend), calls: &calls, finite };
    let d_straight = diverged(whole.run(&mut objective, &mut straight, &stop, &mut Hooks::new()), &whole);

    calls.set(0);
    let mut theta = theta0.clone();
    let mut first = Optimizer::new(noisy_adam()).unwrap();
    let interrupt = 14 * STEPS_PER_EPOCH + 3;
    let mut seen = 0;
    let mut hooks = Hooks::new().on_progress(|_| {
        seen += 1;
        if seen == interrupt { Control::Stop } else { Control::Continue }
    });
    let part = first.run(&mut objective, &mut theta, &stop, &mut hooks).unwrap();
    drop(hooks);
    assert_eq!((part.reason, part.iterations), (StopReason::Interrupted, 14));
    let state = serde_json::to_value(&first).unwrap();
    let best = &state["counters"]["best"];
    assert_eq!(best["theta"].as_array().map(Vec::len), Some(theta0.len()), "the best θ is in the saved state");
    let mut second: Optimizer = serde_json::from_value(state).unwrap();
    let d_resumed = diverged(second.run(&mut objective, &mut theta, &stop, &mut Hooks::new()), &second);
    assert_eq!(d_resumed, d_straight);
    assert!(same_bits(&theta, &straight), "minibatch: θ differs after resuming");
    assert_eq!(without_time(&second.history().records), without_time(&whole.history().records));
}

// ---------------------------------------------------------------- CPU and GPU alike

fn gpu(spec: &NetSpec) -> GpuBackend {
    let mut g = GpuBackend::new(spec.clone(), &GpuOptions::default())
        .expect("a GPU adapter (lavapipe in CI: apt-get install mesa-vulkan-drivers)");
    g.set_poison(true);
    load(&mut g);
    g
}

/// `method` from θ₀ must explode at its first record and leave θ₀ to the bit.
fn explodes_at_once(what: &str, method: Method, backend: &mut dyn Backend, theta0: &[f64]) {
    let mut theta = theta0.to_vec();
    let stop = method.default_stop().with_max_iterations(20);
    let (result, opt) = run(method, &mut BackendObjective::new(backend), &mut theta, stop);
    let d = diverged(result, &opt);
    assert!(matches!(d.cause, DivergenceCause::Exploded { .. }), "{what}: {:?}", d.cause);
    assert_eq!((d.iteration, d.kept.map(|k| k.iteration)), (1, Some(0)), "{what}");
    assert!(same_bits(&theta, theta0), "{what}: θ is not θ₀");
}

#[test]
fn the_cpu_and_the_gpu_judge_the_same_jobs_alike() {
    let spec = softmax();
    let theta0 = Init::Uniform.theta(&spec, 0);
    let mut f64_cpu = cpu64(&spec);
    let mut f32_cpu = CpuBackend::<f32>::new(spec.clone()).unwrap();
    load(&mut f32_cpu);
    let mut on_gpu = gpu(&spec);

    // Adam at η = 1e3 on the GPU runs on the device (θ and moments there, no gradient read
    // back) and must still come back to θ₀.
    let before = on_gpu.transfers().grad_readbacks;
    explodes_at_once("gpu adam", Method::adam(1e3), &mut on_gpu, &theta0);
    assert_eq!(on_gpu.transfers().grad_readbacks, before, "the device path was taken");

    let backends: [(&str, &mut dyn Backend); 3] =
        [("cpu f64", &mut f64_cpu), ("cpu f32", &mut f32_cpu), ("gpu", &mut on_gpu)];
    let mut early_costs = Vec::new();
    for (name, backend) in backends {
        // The same GD job, η = 1e10: a blow-up at the first step, θ₀ kept, on every backend.
        explodes_at_once(&format!("{name} gd"), Method::gradient_descent(1e10), &mut *backend, &theta0);
        if name != "gpu" {
            explodes_at_once(&format!("{name} adam"), Method::adam(1e3), &mut *backend, &theta0);
        }
        // η = 0.1: rises first, then recovers; no backend stops at the rise.
        let mut theta = theta0.clone();
        let stop = Stop::FULL_BATCH.with_max_iterations(12);
        let (result, opt) =
            run(Method::gradient_descent(0.1), &mut BackendObjective::new(&mut *backend), &mut theta, stop);
        assert_eq!(result.unwrap().reason, StopReason::MaxIterations, "{name}");
        early_costs.push(opt.history().costs());
    }
    // η = 1e30: the first step's cost is 4e58, beyond f32, and the GPU's f32 cost
    // overflows where the CPU backends (which sum the cost in f64) see a finite blow-up: the
    // cause differs with the precision of the sum, the outcome does not.
    let backends: [(&str, &mut dyn Backend); 3] =
        [("cpu f64", &mut f64_cpu), ("cpu f32", &mut f32_cpu), ("gpu", &mut on_gpu)];
    for (name, backend) in backends {
        let mut theta = theta0.clone();
        let stop = Stop::FULL_BATCH.with_max_iterations(20);
        let (result, opt) = run(Method::gradient_descent(1e30), &mut BackendObjective::new(backend), &mut theta, stop);
        let d = diverged(result, &opt);
        let expected = if name == "gpu" { "NonFinite" } else { "Exploded" };
        assert!(format!("{:?}", d.cause).starts_with(expected), "{name}: {:?}", d.cause);
        assert_eq!((d.iteration, d.kept.map(|k| k.iteration)), (1, Some(0)), "{name}");
        assert!(same_bits(&theta, &theta0), "{name}: θ is not θ₀");
    }
    let f64_costs = &early_costs[0];
    for (costs, name) in early_costs[1..].iter().zip(["cpu f32", "gpu"]) {
        let e = common::relative_error(costs, f64_costs);
        println!("{name}: GD η = 0.1 costs {costs:.4?}, relative error {e:.1e} against f64");
        assert!(e < 1e-4, "{name}: {costs:?} vs {f64_costs:?}");
    }
}
