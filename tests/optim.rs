//! The optimizers (src/optim) on functions whose minimum is known — Rosenbrock in 2 and 10
//! dimensions, an ill-conditioned quadratic — and on real networks: L-BFGS on a small sparse
//! autoencoder, SGD and Adam on softmax regression. Also the strong-Wolfe conditions at every
//! accepted step, NaN handling, determinism by seed, and resume equivalence.

mod common;

use std::cell::{Cell, RefCell};

use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, StandardNormal};
use wgnn::model::{Init, NetSpec, Sparsity};
use wgnn::optim::{
    BackendObjective, ConjugateGradient, Control, Divergence, EarlyStopping, FnObjective, Hooks, LineSearch,
    LineSearchOutcome, Method, Minibatch, Optimizer, Plateau, Record, Schedule, ScheduleState, Stop, StopReason,
    Summary, UpdateRule,
};
use wgnn::{Backend, CpuBackend, Targets};

// ---------------------------------------------------------------- test functions

/// Chained Rosenbrock, Σᵢ 100(xᵢ₊₁ − xᵢ²)² + (1 − xᵢ)², minimum 0 at (1, …, 1).
fn rosenbrock(x: &[f64], g: &mut [f64]) -> f64 {
    g.iter_mut().for_each(|v| *v = 0.0);
    let mut f = 0.0;
    for i in 0..x.len() - 1 {
        let (a, b) = (x[i], x[i + 1]);
        let r = b - a * a;
        f += 100.0 * r * r + (1.0 - a) * (1.0 - a);
        g[i] += -400.0 * a * r - 2.0 * (1.0 - a);
        g[i + 1] += 200.0 * r;
    }
    f
}

/// The classic start (−1.2, 1, −1.2, 1, …).
fn rosenbrock_start(n: usize) -> Vec<f64> {
    (0..n).map(|i| if i % 2 == 0 { -1.2 } else { 1.0 }).collect()
}

/// ½ (x − x*)ᵀ A (x − x*) with A = Q diag(λ) Qᵀ, λ from 1 to `condition` (log-spaced, or
/// evenly spaced when `linear`), Q a random rotation.
struct Quadratic {
    a: Array2<f64>,
    minimum: Vec<f64>,
}

impl Quadratic {
    fn new(n: usize, condition: f64, linear: bool, seed: u64) -> Quadratic {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut q = Array2::<f64>::from_shape_simple_fn((n, n), || StandardNormal.sample(&mut rng));
        // Gram–Schmidt on the columns.
        for j in 0..n {
            for k in 0..j {
                let proj = q.column(j).dot(&q.column(k));
                let qk = q.column(k).to_owned();
                q.column_mut(j).scaled_add(-proj, &qk);
            }
            let len = q.column(j).dot(&q.column(j)).sqrt();
            q.column_mut(j).mapv_inplace(|v| v / len);
        }
        let t = |i: usize| i as f64 / (n - 1) as f64;
        let lambda = Array2::from_diag(&ndarray::Array1::from_shape_fn(n, |i| {
            if linear { 1.0 + (condition - 1.0) * t(i) } else { condition.powf(t(i)) }
        }));
        let a = q.dot(&lambda).dot(&q.t());
        let minimum = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Quadratic { a, minimum }
    }

    fn eval(&self, x: &[f64], g: &mut [f64]) -> f64 {
        let e = ndarray::Array1::from_shape_fn(x.len(), |i| x[i] - self.minimum[i]);
        let ae = self.a.dot(&e);
        g.copy_from_slice(ae.as_slice().unwrap());
        0.5 * e.dot(&ae)
    }
}

fn max_error(x: &[f64], target: &[f64]) -> f64 {
    x.iter().zip(target).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

/// Runs `method` on f from x0 and returns the final x, the summary and the optimizer.
fn minimize(
    method: Method,
    f: impl FnMut(&[f64], &mut [f64]) -> f64,
    x0: &[f64],
    stop: Stop,
) -> (Vec<f64>, Summary, Optimizer) {
    let mut x = x0.to_vec();
    let mut objective = FnObjective::new(x.len(), f);
    let mut opt = Optimizer::new(method).unwrap();
    let summary = opt.run(&mut objective, &mut x, &stop, &mut Hooks::new()).unwrap();
    (x, summary, opt)
}

/// Records compared without their wall-clock times.
fn without_time(records: &[Record]) -> Vec<Record> {
    records.iter().map(|r| Record { seconds: 0.0, ..r.clone() }).collect()
}

fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Tight full-batch stopping: only the gradient test and an iteration limit.
fn tight(max_iterations: usize, grad_tol: f64) -> Stop {
    Stop {
        max_iterations,
        max_evaluations: None,
        grad_tol,
        cost_tol: 0.0,
        cost_patience: 1,
        divergence: Divergence::DEFAULT,
    }
}

/// Full-batch first-order methods on a plain function: one "example", one step per epoch.
fn full_batch(m: Minibatch) -> Method {
    Method::Minibatch(m.with_batch_size(1))
}

// ---------------------------------------------------------------- L-BFGS and CG

#[test]
fn lbfgs_reaches_the_rosenbrock_minimum_in_under_100_iterations() {
    let (x, s, _) = minimize(Method::lbfgs(), rosenbrock, &[-1.2, 1.0], tight(100, 1e-10));
    println!(
        "L-BFGS 2-D Rosenbrock: {} iterations, {} evaluations, {:?}, x = {x:?}",
        s.iterations, s.evaluations, s.reason
    );
    assert_eq!(s.reason, StopReason::GradientTolerance);
    assert!(s.iterations < 100);
    assert!(max_error(&x, &[1.0, 1.0]) < 1e-6, "x = {x:?}");
}

#[test]
fn lbfgs_and_cg_minimise_10d_rosenbrock() {
    let ones = vec![1.0; 10];
    for (method, max_iterations) in [(Method::lbfgs(), 200), (Method::cg(), 2000)] {
        let name = method.name();
        let (x, s, _) = minimize(method, rosenbrock, &rosenbrock_start(10), tight(max_iterations, 1e-9));
        println!("{name} 10-D Rosenbrock: {} iterations, {} evaluations, {:?}", s.iterations, s.evaluations, s.reason);
        assert_eq!(s.reason, StopReason::GradientTolerance, "{name}");
        assert!(max_error(&x, &ones) < 1e-6, "{name}: x = {x:?}");
    }
}

#[test]
fn cg_minimises_2d_rosenbrock() {
    let (x, s, _) = minimize(Method::cg(), rosenbrock, &[-1.2, 1.0], tight(1000, 1e-10));
    println!("CG 2-D Rosenbrock: {} iterations, {} evaluations", s.iterations, s.evaluations);
    assert_eq!(s.reason, StopReason::GradientTolerance);
    assert!(max_error(&x, &[1.0, 1.0]) < 1e-6, "x = {x:?}");
}

#[test]
fn lbfgs_and_cg_minimise_an_ill_conditioned_quadratic() {
    let q = Quadratic::new(20, 100.0, false, 7);
    for method in [Method::lbfgs(), Method::cg()] {
        let name = method.name();
        let (x, s, _) = minimize(method, |x, g| q.eval(x, g), &[0.0; 20], tight(200, 1e-10));
        println!("{name} quadratic (n = 20, κ = 100): {} iterations, {} evaluations", s.iterations, s.evaluations);
        assert_eq!(s.reason, StopReason::GradientTolerance, "{name}");
        assert!(max_error(&x, &q.minimum) < 1e-9, "{name}");
    }
}

#[test]
fn cg_with_near_exact_line_searches_minimises_a_quadratic_in_about_n_iterations() {
    // With exact line searches CG ends in n steps on a quadratic. The cubic interpolation is
    // exact on a quadratic, so a small c₂ makes each search (nearly) exact. Evenly spaced
    // eigenvalues: with log-spaced ones rounding alone delays even linear CG by ~5 steps at
    // κ = 100, n = 20 (checked with numpy).
    let n = 20;
    let q = Quadratic::new(n, 100.0, true, 11);
    let line_search = LineSearch { c2: 1e-3, ..LineSearch::CONJUGATE_GRADIENT };
    let method = Method::ConjugateGradient(ConjugateGradient { restart_every: None, line_search });
    let (x, s, _) = minimize(method, |x, g| q.eval(x, g), &[0.0; 20], tight(100, 1e-8));
    println!("CG (c2 = 1e-3) quadratic n = {n}: {} iterations, {} evaluations", s.iterations, s.evaluations);
    assert_eq!(s.reason, StopReason::GradientTolerance);
    assert!(s.iterations <= n + 2, "{} iterations for n = {n}", s.iterations);
    assert!(max_error(&x, &q.minimum) < 1e-7);
    // Restarting every iteration turns it into steepest descent, which is far slower.
    let method = Method::ConjugateGradient(ConjugateGradient { restart_every: Some(1), line_search });
    let (_, s, _) = minimize(method, |x, g| q.eval(x, g), &[0.0; 20], tight(1000, 1e-8));
    println!("CG restarted every iteration: {} iterations", s.iterations);
    assert!(s.iterations > 5 * n, "{} iterations", s.iterations);
}

/// θ at every record, through the progress callback.
fn iterates(method: Method, f: fn(&[f64], &mut [f64]) -> f64, x0: &[f64], stop: Stop) -> Vec<Vec<f64>> {
    let points = RefCell::new(Vec::new());
    let mut hooks = Hooks::new().on_progress(|p| {
        if let Some(theta) = p.theta {
            points.borrow_mut().push(theta.to_vec());
        }
        Control::Continue
    });
    let mut x = x0.to_vec();
    let mut opt = Optimizer::new(method).unwrap();
    opt.run(&mut FnObjective::new(x.len(), f), &mut x, &stop, &mut hooks).unwrap();
    drop(hooks);
    points.into_inner()
}

#[test]
fn every_accepted_step_satisfies_the_strong_wolfe_conditions() {
    for (method, ls) in [(Method::lbfgs(), LineSearch::QUASI_NEWTON), (Method::cg(), LineSearch::CONJUGATE_GRADIENT)] {
        let name = method.name();
        let points = iterates(method, rosenbrock, &rosenbrock_start(6), tight(300, 1e-8));
        assert!(points.len() > 20, "{name}: only {} iterations", points.len());
        let (mut g0, mut g1) = (vec![0.0; 6], vec![0.0; 6]);
        for (k, w) in points.windows(2).enumerate() {
            let (f0, f1) = (rosenbrock(&w[0], &mut g0), rosenbrock(&w[1], &mut g1));
            let s: Vec<f64> = w[1].iter().zip(&w[0]).map(|(a, b)| a - b).collect();
            let slope0: f64 = g0.iter().zip(&s).map(|(a, b)| a * b).sum();
            let slope1: f64 = g1.iter().zip(&s).map(|(a, b)| a * b).sum();
            assert!(slope0 < 0.0, "{name} step {k}: not a descent step");
            assert!(f1 <= f0 + ls.c1 * slope0, "{name} step {k}: sufficient decrease fails ({f1} > {f0})");
            assert!(slope1.abs() <= ls.c2 * slope0.abs(), "{name} step {k}: curvature fails ({slope1} vs {slope0})");
        }
    }
}

/// A function that writes its gradient and returns its value.
type TestFn<'a> = Box<dyn Fn(&[f64], &mut [f64]) -> f64 + 'a>;

/// One line search to try: a function, a start, a direction (−∇J when `None`), a first step.
struct LineCase<'a> {
    name: &'static str,
    f: TestFn<'a>,
    x0: Vec<f64>,
    d: Option<Vec<f64>>,
    alpha0: f64,
}

#[test]
fn the_line_search_finds_strong_wolfe_steps() {
    // First trials too long, too short, far too short, far too long; random descent
    // directions; and one where the cost is NaN beyond a point.
    let mut rng = StdRng::seed_from_u64(3);
    let q = Quadratic::new(5, 100.0, false, 5);
    let case = |name, f: TestFn<'static>, x0, d, alpha0| LineCase { name, f, x0, d, alpha0 };
    let mut cases = vec![
        case("rosenbrock, α₀ = 1", Box::new(rosenbrock), vec![-1.2, 1.0], None, 1.0),
        case("rosenbrock, α₀ = 1e-6", Box::new(rosenbrock), vec![-1.2, 1.0], None, 1e-6),
        case("rosenbrock 6-D, α₀ = 1e-3", Box::new(rosenbrock), rosenbrock_start(6), None, 1e-3),
        LineCase {
            name: "quadratic, α₀ = 1e-4",
            f: Box::new(|x, g| q.eval(x, g)),
            x0: vec![0.0; 5],
            d: None,
            alpha0: 1e-4,
        },
        LineCase {
            name: "quadratic, α₀ = 100",
            f: Box::new(|x, g| q.eval(x, g)),
            x0: vec![0.0; 5],
            d: None,
            alpha0: 100.0,
        },
        LineCase {
            name: "NaN beyond x₀ = 2.5, α₀ = 10",
            f: Box::new(|x, g| if x[0] > 2.5 { f64::NAN } else { q.eval(x, g) }),
            x0: vec![0.0; 5],
            d: Some(vec![1.0, 0.0, 0.0, 0.0, 0.0]),
            alpha0: 10.0,
        },
        LineCase {
            name: "NaN beyond x₀ = 2.5, α₀ = 1e12",
            f: Box::new(|x, g| if x[0] > 2.5 { f64::NAN } else { q.eval(x, g) }),
            x0: vec![0.0; 5],
            d: Some(vec![1.0, 0.0, 0.0, 0.0, 0.0]),
            alpha0: 1e12,
        },
    ];
    for _ in 0..5 {
        let x: Vec<f64> = (0..4).map(|_| rng.random_range(-2.0..2.0)).collect();
        let mut g = vec![0.0; 4];
        rosenbrock(&x, &mut g);
        let d: Vec<f64> = g.iter().map(|gi| -gi * rng.random_range(0.1..2.0)).collect();
        cases.push(case("rosenbrock 4-D, random descent direction", Box::new(rosenbrock), x, Some(d), 1.0));
    }
    for c2 in [0.9, 0.1] {
        let ls = LineSearch { c2, ..LineSearch::QUASI_NEWTON };
        for LineCase { name, f, x0, d, alpha0 } in &cases {
            let mut g = vec![0.0; x0.len()];
            let f0 = f(x0, &mut g);
            let d = d.clone().unwrap_or_else(|| g.iter().map(|v| -v).collect());
            let slope0: f64 = g.iter().zip(&d).map(|(a, b)| a * b).sum();
            let (mut x, mut fx) = (x0.clone(), f0);
            let mut objective = |x: &[f64], g: &mut [f64]| Ok(f(x, g));
            let outcome = ls.search(&mut objective, &mut x, &mut fx, &mut g, &d, *alpha0).unwrap();
            let LineSearchOutcome::Accepted { alpha, evaluations, strong_wolfe } = outcome else {
                panic!("{name}, c2 = {c2}: {outcome:?}");
            };
            assert!(strong_wolfe, "{name}, c2 = {c2}: {outcome:?}");
            // x, f and g are those of x₀ + αd.
            let mut g_check = vec![0.0; x.len()];
            assert_eq!(fx, f(&x, &mut g_check), "{name}");
            assert_eq!(g, g_check, "{name}");
            let expected: Vec<f64> = x0.iter().zip(&d).map(|(a, b)| a + alpha * b).collect();
            assert!(same_bits(&x, &expected), "{name}");
            let slope: f64 = g.iter().zip(&d).map(|(a, b)| a * b).sum();
            assert!(fx <= f0 + ls.c1 * alpha * slope0, "{name}, c2 = {c2}: sufficient decrease");
            assert!(slope.abs() <= c2 * slope0.abs(), "{name}, c2 = {c2}: curvature {slope} vs {slope0}");
            println!("{name}, c2 = {c2}: α = {alpha:.4e} after {evaluations} evaluations");
        }
    }
}

#[test]
fn the_line_search_refuses_an_ascent_direction() {
    let ls = LineSearch::QUASI_NEWTON;
    let (mut x, mut g) = (vec![-1.2, 1.0], vec![0.0; 2]);
    let mut f = rosenbrock(&x, &mut g);
    let uphill = g.clone();
    let err = ls.search(&mut |x, g| Ok(rosenbrock(x, g)), &mut x, &mut f, &mut g, &uphill, 1.0).unwrap_err();
    assert!(err.to_string().contains("not a descent direction"), "{err}");
}

// ---------------------------------------------------------------- first-order methods

#[test]
fn first_order_methods_minimise_rosenbrock_and_the_quadratic() {
    let q = Quadratic::new(20, 100.0, false, 7);
    let rosen_2 = [-1.2, 1.0];
    let rosen_10 = rosenbrock_start(10);
    // (name, method, iterations, tolerance on the distance to the minimum)
    let cases: Vec<(&str, Method, usize, f64)> = vec![
        ("gd", Method::gradient_descent(1e-3), 40_000, 1e-3),
        (
            "sgd+momentum",
            full_batch(Minibatch::sgd(2e-4).with_rule(UpdateRule::Momentum { momentum: 0.9, nesterov: false })),
            10_000,
            1e-3,
        ),
        ("sgd+nesterov", full_batch(Minibatch::sgd(2e-4)), 10_000, 1e-3),
        ("adam", full_batch(Minibatch::adam(0.02)), 10_000, 1e-3),
    ];
    for (name, method, iterations, tol) in &cases {
        let stop = tight(*iterations, 1e-8);
        let (x, s, _) = minimize(method.clone(), rosenbrock, &rosen_2, stop);
        println!("{name} 2-D Rosenbrock: {} iterations, error {:.2e}", s.iterations, max_error(&x, &[1.0; 2]));
        assert!(max_error(&x, &[1.0; 2]) < *tol, "{name} 2-D: x = {x:?}");
        let (x, s, _) = minimize(method.clone(), rosenbrock, &rosen_10, stop);
        println!("{name} 10-D Rosenbrock: {} iterations, error {:.2e}", s.iterations, max_error(&x, &[1.0; 10]));
        assert!(max_error(&x, &[1.0; 10]) < *tol, "{name} 10-D: x = {x:?}");
    }
    let quadratic_cases: Vec<(&str, Method)> = vec![
        ("gd", Method::gradient_descent(0.01)),
        ("sgd+nesterov", full_batch(Minibatch::sgd(0.005))),
        ("adam", full_batch(Minibatch::adam(0.01))),
    ];
    for (name, method) in quadratic_cases {
        let (x, s, _) = minimize(method, |x, g| q.eval(x, g), &[0.0; 20], tight(5000, 1e-8));
        println!("{name} quadratic: {} iterations, error {:.2e}", s.iterations, max_error(&x, &q.minimum));
        assert!(max_error(&x, &q.minimum) < 1e-4, "{name} quadratic");
    }
}

#[test]
fn inverse_scaling_follows_scikit_learn() {
    // One example per epoch, so after epoch k the schedule has seen k examples:
    // η = η₀ / (k + 1)^0.5 for epoch k + 1. (η₀ = 0.01 would be 13 times the stable step at
    // the start, where the curvature is 1330: J 24.2 → 3272, a divergence.)
    let method = full_batch(Minibatch::sgd(1e-4).with_schedule(Schedule::INV_SCALING));
    let (_, _, opt) = minimize(method, rosenbrock, &[-1.2, 1.0], tight(5, 0.0));
    let rates: Vec<f64> = opt.history().records.iter().map(|r| r.step_size).collect();
    let expected: Vec<f64> = (1..=5).map(|k| 1e-4 / (k as f64).sqrt()).collect();
    assert_eq!(rates, expected);
}

#[test]
fn reduce_on_plateau_cuts_the_learning_rate_when_the_cost_stalls() {
    // Plain GD steps on f(x) = |x|-like valley: with η too large the cost oscillates and
    // stops improving, so the schedule must cut η.
    let plateau = Plateau { patience: 2, ..Plateau::default() };
    let method =
        full_batch(Minibatch::sgd(1.0).with_rule(UpdateRule::Plain).with_schedule(Schedule::ReduceOnPlateau(plateau)));
    let bowl = |x: &[f64], g: &mut [f64]| {
        g[0] = 2.0 * x[0];
        x[0] * x[0]
    };
    // η = 1 bounces between ±1 forever (cost 1); after 3 bad epochs η = 0.1 converges.
    let (x, _, opt) = minimize(method, bowl, &[1.0], tight(40, 0.0));
    let rates: Vec<f64> = opt.history().records.iter().map(|r| r.step_size).collect();
    assert_eq!(rates[..4], [1.0; 4]);
    assert_eq!(rates[4], 0.1);
    assert!(x[0].abs() < 1e-3, "x = {x:?}");
}

// ---------------------------------------------------------------- NaN, stopping, hooks

#[test]
fn a_nan_cost_is_a_divergence_and_theta_goes_back_to_the_best_point() {
    let methods = [
        Method::lbfgs(),
        Method::cg(),
        Method::gradient_descent(1e-3),
        full_batch(Minibatch::sgd(2e-4)),
        full_batch(Minibatch::adam(0.02)),
    ];
    for method in methods {
        let name = method.name();
        let minibatch = matches!(method, Method::Minibatch(_));
        // Finite for the first 15 evaluations, NaN everywhere after.
        let calls = Cell::new(0);
        let f = |x: &[f64], g: &mut [f64]| {
            calls.set(calls.get() + 1);
            let v = rosenbrock(x, g);
            if calls.get() > 15 { f64::NAN } else { v }
        };
        let mut x = vec![-1.2, 1.0];
        let mut opt = Optimizer::new(method).unwrap();
        let err = opt.run(&mut FnObjective::new(2, f), &mut x, &tight(1000, 1e-10), &mut Hooks::new()).unwrap_err();
        let msg = err.to_string();
        println!("{name}: {msg}");
        let wgnn::Error::Diverged(d) = &err else { panic!("{name}: not a divergence: {msg}") };
        assert!(msg.contains("NaN") && msg.contains("put back to"), "{name}: {msg}");
        let kept = d.kept.unwrap();
        assert_eq!(Some(&**d), opt.diverged(), "{name}");
        // θ is the best point: finite, and (full batch) its cost is the lowest recorded.
        let costs = opt.history().costs();
        assert!(x.iter().all(|v| v.is_finite()), "{name}: {x:?}");
        if minibatch {
            // One example per epoch: epoch k's "mean" is J at the θ it started from, and the
            // θ kept is the one that epoch ended at.
            assert_eq!(kept.cost, costs.iter().copied().fold(24.2, f64::min), "{name}");
        } else {
            assert_eq!(rosenbrock(&x, &mut [0.0; 2]), kept.cost, "{name}");
            assert_eq!(kept.cost, costs.iter().copied().fold(f64::INFINITY, f64::min), "{name}");
        }
        assert!(rosenbrock(&x, &mut [0.0; 2]) < 24.2, "{name}: no progress before the NaN");
        // A diverged optimizer refuses to go on.
        let again = opt.run(&mut FnObjective::new(2, rosenbrock), &mut x, &tight(1000, 1e-10), &mut Hooks::new());
        assert!(again.unwrap_err().to_string().contains("cannot be continued"), "{name}");
    }
}

#[test]
fn a_nan_at_the_start_is_an_error_and_theta_is_untouched() {
    for method in [Method::lbfgs(), full_batch(Minibatch::adam(0.01))] {
        let mut x = vec![-1.2, 1.0];
        let mut opt = Optimizer::new(method).unwrap();
        let mut nan = FnObjective::new(2, |_: &[f64], _: &mut [f64]| f64::INFINITY);
        let err = opt.run(&mut nan, &mut x, &Stop::FULL_BATCH, &mut Hooks::new()).unwrap_err();
        assert!(err.to_string().contains("initial θ"), "{err}");
        assert_eq!(x, [-1.2, 1.0]);
        assert!(opt.history().is_empty());
    }
}

#[test]
fn limits_and_tolerances_stop_the_run() {
    let run = |method: Method, stop: Stop| minimize(method, rosenbrock, &rosenbrock_start(10), stop).1;
    let s = run(Method::lbfgs(), Stop { max_evaluations: Some(10), ..tight(1000, 0.0) });
    assert_eq!(s.reason, StopReason::MaxEvaluations);
    assert!((10..10 + LineSearch::QUASI_NEWTON.max_evaluations).contains(&s.evaluations), "{s:?}");
    let s = run(Method::lbfgs(), tight(7, 0.0));
    assert_eq!((s.reason, s.iterations), (StopReason::MaxIterations, 7));
    let s = run(Method::lbfgs(), Stop { cost_tol: 1e-3, ..tight(1000, 0.0) });
    assert_eq!(s.reason, StopReason::CostTolerance);
    let s = run(Method::lbfgs(), Stop::FULL_BATCH);
    assert!(s.reason.converged(), "{s:?}");
    assert!(s.grad_norm.unwrap() < 1e-3, "{s:?}");
}

#[test]
fn early_stopping_restores_the_best_validated_theta() {
    // GD walks x from 0 towards 10; the "validation metric" |x − 3| is best near x = 3 and
    // gets worse after, so the run stops `patience` checks later and returns to the best x.
    let line = |x: &[f64], g: &mut [f64]| {
        g[0] = x[0] - 10.0;
        0.5 * (x[0] - 10.0).powi(2)
    };
    let early = EarlyStopping { patience: Some(3), ..EarlyStopping::default() };
    let mut hooks = Hooks::new().validation(|x: &[f64]| Ok((x[0] - 3.0).abs()), early);
    let mut x = vec![0.0];
    let mut opt = Optimizer::new(Method::gradient_descent(0.1)).unwrap();
    let s = opt.run(&mut FnObjective::new(1, line), &mut x, &tight(100, 1e-8), &mut hooks).unwrap();
    drop(hooks);
    assert_eq!(s.reason, StopReason::EarlyStopping);
    let records = &opt.history().records;
    let best = records.iter().map(|r| r.validation.unwrap()).fold(f64::INFINITY, f64::min);
    assert_eq!(s.best_validation, Some(best));
    assert_eq!((x[0] - 3.0).abs(), best, "θ restored to the best point");
    assert_eq!(opt.best().unwrap(), (&x[..], best));
    // Exactly `patience` checks after the best one.
    let best_at = records.iter().position(|r| r.validation == Some(best)).unwrap();
    assert_eq!(records.len(), best_at + 1 + 3);
}

#[test]
fn the_progress_callback_sees_every_step_and_can_stop() {
    let (spec, x, labels) = softmax_problem(7);
    let mut backend = CpuBackend::<f64>::new(spec.clone()).unwrap();
    backend.set_data((&x).into(), Targets::Labels(&labels)).unwrap();
    let steps = Cell::new(0);
    let records = Cell::new(0);
    let mut hooks = Hooks::new().on_progress(|p| {
        assert_eq!(p.steps_per_iteration, 10);
        match (p.record, p.theta) {
            (Some(r), Some(_)) => {
                records.set(records.get() + 1);
                assert_eq!((p.step, p.iteration, p.cost), (10, r.iteration, r.cost));
            }
            (None, None) => steps.set(steps.get() + 1),
            _ => panic!("θ comes with the record, and only then"),
        }
        if records.get() == 3 { Control::Stop } else { Control::Continue }
    });
    let mut theta = vec![0.0; 33];
    let mut opt = Optimizer::new(Method::Minibatch(Minibatch::adam(0.01).with_batch_size(30))).unwrap();
    let s = opt.run(&mut BackendObjective::new(&mut backend), &mut theta, &Stop::MINIBATCH, &mut hooks).unwrap();
    drop(hooks);
    assert_eq!(s.reason, StopReason::Interrupted);
    assert_eq!((s.iterations, s.evaluations), (3, 30));
    // The last step of an epoch is reported by its record.
    assert_eq!((steps.get(), records.get()), (27, 3));
    // The history is a JSON array of records.
    let json = serde_json::to_value(opt.history()).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    assert_eq!(json[2]["iteration"], 3);
    assert_eq!(json[2]["evaluations"], 30);
}

#[test]
fn methods_serialise_with_a_method_tag_and_round_trip() {
    let methods = [
        Method::gradient_descent(0.1),
        Method::sgd(0.01),
        Method::Minibatch(Minibatch::adam(1e-3).with_schedule(Schedule::ReduceOnPlateau(Plateau::default()))),
        Method::lbfgs(),
        Method::cg(),
    ];
    for method in methods {
        let json = serde_json::to_value(&method).unwrap();
        println!("{json}");
        assert!(json["method"].is_string(), "{json}");
        assert_eq!(serde_json::from_value::<Method>(json).unwrap(), method);
    }
    let bad = Method::Minibatch(Minibatch::adam(-1.0));
    let err = Optimizer::new(bad).unwrap_err().to_string();
    assert!(err.contains("learning rate -1"), "{err}");
}

// ---------------------------------------------------------------- resume and determinism

/// Runs `method` to `stop` in one go, and again stopped by the callback after `interrupt`
/// callbacks, saved, loaded and resumed; θ and the history must agree bit for bit.
///
/// Saved through `serde_json::Value`, which keeps every f64 exactly, so this proves the
/// state is complete. Through JSON *text* it is also exact only when serde_json parses floats
/// exactly (its `float_roundtrip` feature); without it the last bit may differ, which the
/// text round trip checks with a tolerance.
fn check_resume(method: Method, objective: &mut dyn wgnn::optim::Objective, x0: &[f64], stop: Stop, interrupt: usize) {
    let name = method.name();
    let mut straight = x0.to_vec();
    let mut opt = Optimizer::new(method.clone()).unwrap();
    let whole = opt.run(objective, &mut straight, &stop, &mut Hooks::new()).unwrap();

    let mut resumed = x0.to_vec();
    let mut first = Optimizer::new(method).unwrap();
    let mut calls = 0;
    let mut hooks = Hooks::new().on_progress(|_| {
        calls += 1;
        if calls == interrupt { Control::Stop } else { Control::Continue }
    });
    let part = first.run(objective, &mut resumed, &stop, &mut hooks).unwrap();
    drop(hooks);
    assert_eq!(part.reason, StopReason::Interrupted, "{name}");
    assert!(part.iterations < whole.iterations, "{name}");

    let mut from_text = resumed.clone();
    let mut second: Optimizer = serde_json::from_value(serde_json::to_value(&first).unwrap()).unwrap();
    let rest = second.run(objective, &mut resumed, &stop, &mut Hooks::new()).unwrap();
    println!(
        "{name}: interrupted at iteration {} of {}, resumed: {:?}",
        part.iterations, whole.iterations, rest.reason
    );
    assert_eq!((rest.reason, rest.iterations, rest.evaluations), (whole.reason, whole.iterations, whole.evaluations));
    assert!(same_bits(&straight, &resumed), "{name}: θ differs after resuming");
    assert_eq!(without_time(&second.history().records), without_time(&opt.history().records), "{name}");

    let mut third: Optimizer = serde_json::from_str(&serde_json::to_string(&first).unwrap()).unwrap();
    third.run(objective, &mut from_text, &stop, &mut Hooks::new()).unwrap();
    let diff = max_error(&from_text, &straight) / (1.0 + straight.iter().fold(0.0, |m: f64, v| m.max(v.abs())));
    assert!(diff < 1e-6, "{name}: resumed from JSON text, θ differs by {diff:e}");
}

#[test]
fn resuming_full_batch_methods_gives_the_uninterrupted_result() {
    let x0 = rosenbrock_start(10);
    for method in [Method::lbfgs(), Method::cg(), Method::gradient_descent(1e-3)] {
        check_resume(method, &mut FnObjective::new(10, rosenbrock), &x0, tight(60, 1e-10), 23);
    }
}

#[test]
fn raising_the_iteration_limit_continues_as_if_never_stopped() {
    let x0 = rosenbrock_start(10);
    let mut straight = x0.clone();
    let mut whole = Optimizer::new(Method::lbfgs()).unwrap();
    whole.run(&mut FnObjective::new(10, rosenbrock), &mut straight, &tight(40, 1e-10), &mut Hooks::new()).unwrap();
    let mut x = x0.clone();
    let mut opt = Optimizer::new(Method::lbfgs()).unwrap();
    for limit in [10, 25, 40] {
        let s =
            opt.run(&mut FnObjective::new(10, rosenbrock), &mut x, &tight(limit, 1e-10), &mut Hooks::new()).unwrap();
        assert_eq!((s.reason, s.iterations), (StopReason::MaxIterations, limit));
    }
    assert!(same_bits(&x, &straight));
    assert_eq!(without_time(&opt.history().records), without_time(&whole.history().records));
}

#[test]
fn resuming_minibatch_methods_mid_epoch_gives_the_uninterrupted_result() {
    let (spec, x, labels) = softmax_problem(7);
    let mut backend = CpuBackend::<f64>::new(spec.clone()).unwrap();
    backend.set_data((&x).into(), Targets::Labels(&labels)).unwrap();
    let theta0 = Init::DEFAULT_NORMAL.theta(&spec, 3);
    let stop = Stop::MINIBATCH.with_max_iterations(5);
    for m in [Minibatch::adam(0.01), Minibatch::sgd(0.05).with_schedule(Schedule::INV_SCALING)] {
        // 10 steps per epoch; callback 23 is step 3 of epoch 3.
        let method = Method::Minibatch(m.with_batch_size(30).with_seed(9));
        check_resume(method, &mut BackendObjective::new(&mut backend), &theta0, stop, 23);
    }
}

#[test]
fn minibatch_methods_are_deterministic_by_seed() {
    let (spec, x, labels) = softmax_problem(7);
    let mut backend = CpuBackend::<f64>::new(spec.clone()).unwrap();
    backend.set_data((&x).into(), Targets::Labels(&labels)).unwrap();
    let theta0 = Init::DEFAULT_NORMAL.theta(&spec, 3);
    let stop = Stop::MINIBATCH.with_max_iterations(3);
    for m in [Minibatch::sgd(0.05), Minibatch::adam(0.01)] {
        let mut train = |seed| {
            let mut theta = theta0.clone();
            let mut opt = Optimizer::new(Method::Minibatch(m.with_batch_size(32).with_seed(seed))).unwrap();
            opt.run(&mut BackendObjective::new(&mut backend), &mut theta, &stop, &mut Hooks::new()).unwrap();
            theta
        };
        let (a, b, c) = (train(1), train(1), train(2));
        assert!(same_bits(&a, &b), "{}: same seed, different θ", m.rule.name());
        assert!(!same_bits(&a, &c), "{}: the seed changes nothing", m.rule.name());
    }
}

// ---------------------------------------------------------------- real networks

/// Three well-separated Gaussian blobs in 10-D, 100 examples each, with softmax regression.
fn softmax_problem(seed: u64) -> (NetSpec, Array2<f64>, Vec<usize>) {
    let (m, n, k) = (300, 10, 3);
    let mut rng = StdRng::seed_from_u64(seed);
    let centres = common::normal(k, n, &mut rng) * 2.0;
    let labels: Vec<usize> = (0..m).map(|i| i % k).collect();
    let noise = common::normal(m, n, &mut rng);
    let x = Array2::from_shape_fn((m, n), |(i, j)| centres[[labels[i], j]] + noise[[i, j]]);
    (NetSpec::softmax_regression(n, k, 1e-4).unwrap(), x, labels)
}

#[test]
fn lbfgs_trains_a_small_sparse_autoencoder() {
    let spec = NetSpec::sparse_autoencoder(64, 25, 1e-4, Sparsity { target: 0.01, weight: 3.0 }).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let x = common::uniform(200, 64, 0.0, 1.0, &mut rng);
    let mut backend = CpuBackend::<f64>::new(spec.clone()).unwrap();
    backend.set_data((&x).into(), Targets::Inputs).unwrap();
    let mut theta = Init::Uniform.theta(&spec, 1);
    let initial = backend.cost(&theta, wgnn::Batch::All).unwrap().total();
    let mut opt = Optimizer::new(Method::lbfgs()).unwrap();
    let stop = Stop::FULL_BATCH.with_max_iterations(50);
    let s = opt.run(&mut BackendObjective::new(&mut backend), &mut theta, &stop, &mut Hooks::new()).unwrap();
    let last = s.cost.unwrap();
    println!(
        "sparse autoencoder: J {initial:.4} → {last:.4} in {} iterations, {} evaluations",
        s.iterations, s.evaluations
    );
    assert_eq!(last, backend.cost(&theta, wgnn::Batch::All).unwrap().total());
    assert!(last < initial / 10.0, "J {initial} → {last}");
    // Every step satisfies sufficient decrease, so the cost never rises.
    let costs = opt.history().costs();
    assert!(costs.windows(2).all(|w| w[1] <= w[0]), "{costs:?}");
}

#[test]
fn sgd_and_adam_train_softmax_regression_to_high_accuracy() {
    let (spec, x, labels) = softmax_problem(11);
    let mut backend = CpuBackend::<f64>::new(spec.clone()).unwrap();
    backend.set_data((&x).into(), Targets::Labels(&labels)).unwrap();
    for m in [Minibatch::sgd(0.05), Minibatch::adam(0.01)] {
        let mut theta = Init::DEFAULT_NORMAL.theta(&spec, 2);
        let mut opt = Optimizer::new(Method::Minibatch(m.with_batch_size(32))).unwrap();
        let stop = Stop::MINIBATCH.with_max_iterations(15);
        let s = opt.run(&mut BackendObjective::new(&mut backend), &mut theta, &stop, &mut Hooks::new()).unwrap();
        let predicted = backend.classify(&theta, (&x).into()).unwrap();
        let accuracy = predicted.iter().zip(&labels).filter(|(p, l)| p == l).count() as f64 / labels.len() as f64;
        let costs = opt.history().costs();
        println!(
            "{}: accuracy {accuracy:.3}, cost {:.4} → {:.4} in {} epochs",
            m.rule.name(),
            costs[0],
            s.cost.unwrap(),
            s.iterations
        );
        assert!(accuracy >= 0.97, "{}: accuracy {accuracy}", m.rule.name());
        assert!(s.cost.unwrap() < 0.5 * costs[0], "{}", m.rule.name());
    }
}

// ---------------------------------------------------------------- scikit-learn's adaptive schedule

#[test]
fn adaptive_divides_the_learning_rate_by_5_after_two_epochs_without_improvement() {
    // A constructed sequence of epoch costs, tol = 1e-4: an epoch fails when the best cost
    // falls by no more than tol·max(|best|, |J|, 1).
    let adaptive = Schedule::Adaptive { tol: 1e-4 };
    let costs = [
        1.0,     // first epoch: the best so far
        0.5,     // improves
        0.49995, // fails (falls by 5e-5)
        0.4999,  // fails again (5e-5 below the best 0.49995): η ÷ 5 for the next epoch
        0.3,     // improves
        0.3,     // fails
        0.2,     // improves: the count starts again
        0.2,     // fails
        0.2,     // fails: η ÷ 5
        0.2,     // fails
        0.21,    // fails (a rise): η ÷ 5
        150.0,   // a rise is a failure at any scale
        99.995,  // still above the best 0.2: a failure, η ÷ 5
    ];
    // η after each epoch, from η₀ = 1.
    let rates_of = |schedule: Schedule, costs: &[f64]| -> Vec<f64> {
        let mut state = ScheduleState::default();
        let mut eta = 1.0;
        costs
            .iter()
            .map(|&j| {
                eta = schedule.next(1.0, eta, 0, j, &mut state);
                eta
            })
            .collect()
    };
    let a = 1.0 / 5.0;
    let (b, c, d) = (a / 5.0, a / 5.0 / 5.0, a / 5.0 / 5.0 / 5.0);
    assert_eq!(rates_of(adaptive, &costs), [1.0, 1.0, 1.0, a, a, a, a, a, b, b, c, c, d]);
    // Above 1 the measure is relative: 100 → 99.995 falls by 5e-5 of 100, a failure.
    assert_eq!(rates_of(adaptive, &[100.0, 99.995, 99.99]), [1.0, 1.0, a]);
    // tol = 0: only a cost that does not fall at all fails.
    let strict = Schedule::Adaptive { tol: 0.0 };
    assert_eq!(rates_of(strict, &[1.0, 0.9999999, 0.9999998, 0.9999998, 0.9999998]), [1.0, 1.0, 1.0, 1.0, a]);
    assert!(Schedule::Adaptive { tol: -1.0 }.validate().is_err());
    assert!(Schedule::Adaptive { tol: f64::NAN }.validate().is_err());
}

#[test]
fn adaptive_cuts_eta_when_plain_sgd_bounces() {
    // η = 1 on x² bounces between ±1 (epoch cost 1): epochs 2 and 3 fail, so epoch 4 runs
    // with η = 0.2, which converges (x ← 0.6 x).
    let method = full_batch(Minibatch::sgd(1.0).with_rule(UpdateRule::Plain).with_schedule(Schedule::ADAPTIVE));
    let bowl = |x: &[f64], g: &mut [f64]| {
        g[0] = 2.0 * x[0];
        x[0] * x[0]
    };
    let (x, _, opt) = minimize(method, bowl, &[1.0], tight(30, 0.0));
    let rates: Vec<f64> = opt.history().records.iter().map(|r| r.step_size).collect();
    assert_eq!(rates[..4], [1.0, 1.0, 1.0, 0.2]);
    // J falls ×0.36 an epoch until a fall is below tol = 1e-4 (J ≲ 1.6e-4); from there on
    // every second epoch divides η again, as in scikit-learn, and x stays near that level.
    let cuts = rates.windows(2).filter(|w| w[1] < w[0]).count();
    assert!(cuts >= 2 && rates.windows(2).all(|w| w[1] == w[0] || w[1] == w[0] / 5.0), "{rates:?}");
    assert!(x[0] * x[0] < 2e-4, "x = {x:?}");
}

// ---------------------------------------------------------------- long vectors (threaded passes)

/// θ longer than a few of the optimizers' blocks (2¹⁵ values), so every vector pass of L-BFGS,
/// CG and the line search is split over the thread pool, and the reused buffers (direction,
/// trial point, gradients, correction pairs) are long.
const LONG: usize = 2 * (1 << 15) + 1001;

/// L-BFGS (memory 3, so pairs are dropped and their vectors reused) and CG on a long
/// Rosenbrock.
fn long_methods() -> [Method; 2] {
    [Method::Lbfgs(wgnn::optim::Lbfgs::default().with_memory(3)), Method::cg()]
}

#[test]
fn long_runs_give_the_same_bits_on_one_thread_and_on_three() {
    let x0 = rosenbrock_start(LONG);
    for method in long_methods() {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| minimize(method.clone(), rosenbrock, &x0, tight(25, 1e-12)))
        };
        let (x1, s1, o1) = run(1);
        let (x3, s3, o3) = run(3);
        let name = method.name();
        assert_eq!((s1.iterations, s1.evaluations), (s3.iterations, s3.evaluations), "{name}");
        assert_eq!(s1.iterations, 25, "{name}: stopped early ({:?})", s1.reason);
        assert!(same_bits(&x1, &x3), "{name}: θ depends on the thread count");
        assert_eq!(without_time(&o1.history().records), without_time(&o3.history().records), "{name}");
        let (first, last) = (o1.history().records[0].cost, s1.cost.unwrap());
        assert!(last < 0.5 * first, "{name}: J went from {first} to {last} only");
    }
}

#[test]
fn long_runs_resume_to_the_uninterrupted_bits() {
    // The resumed optimizer starts with empty working buffers, the uninterrupted one reuses
    // its own: the same θ means no stale value is ever read.
    let x0 = rosenbrock_start(LONG);
    for method in long_methods() {
        check_resume(method, &mut FnObjective::new(LONG, rosenbrock), &x0, tight(20, 1e-12), 9);
    }
}
