//! The CPU backend beyond the contract every backend keeps (`contract.rs`): f32 agrees with
//! the f64 reference, the maths is stable at extreme inputs, the bits do not depend on the
//! number of threads, shared data is kept rather than copied, and specs are checked.

mod common;

use ndarray::array;
use wgnn::model::{Activation, Init, NetSpec, Output, Sparsity, ThetaLayout};
use wgnn::{Backend, Batch, CpuBackend, Targets};

use common::relative_error as rel;

fn eval(backend: &mut dyn Backend, theta: &[f64], batch: Batch) -> (f64, Vec<f64>) {
    let mut g = vec![f64::NAN; theta.len()];
    let c = backend.cost_and_grad(theta, batch, &mut g).unwrap();
    (c.total(), g)
}

#[test]
fn f32_agrees_with_the_f64_reference() {
    for case in common::gradcheck_cases() {
        let mut reference = CpuBackend::<f64>::new(case.spec.clone()).unwrap();
        let mut fast = CpuBackend::<f32>::new(case.spec.clone()).unwrap();
        case.load(&mut reference);
        case.load(&mut fast);
        let (c64, g64) = eval(&mut reference, &case.theta, Batch::All);
        let (c32, g32) = eval(&mut fast, &case.theta, Batch::All);
        let (dc, dg) = (((c32 - c64) / c64).abs(), rel(&g32, &g64));
        println!("{}: cost {dc:e}, gradient {dg:e}", case.name);
        assert!(dc < 1e-5 && dg < 1e-4, "{}: f32 differs from f64 by {dc:e} (cost), {dg:e} (gradient)", case.name);
    }
}

/// The README promises the same bits whatever RAYON_NUM_THREADS is: every product, sweep and
/// sum is split so that no element's arithmetic depends on the number of threads. The batch
/// is large enough (1,500 rows, 3 blocks of the column sums) for every split to happen.
#[test]
fn the_bits_do_not_depend_on_the_number_of_threads() {
    let spec = NetSpec::sparse_autoencoder(196, 64, 3e-3, Sparsity { target: 0.1, weight: 3.0 }).unwrap();
    let theta = Init::Uniform.theta(&spec, 7);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    let x = common::uniform(1500, 196, 0.0, 1.0, &mut rng);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut b = CpuBackend::<f32>::new(spec.clone()).unwrap();
            b.set_data((&x).into(), Targets::Inputs).unwrap();
            eval(&mut b, &theta, Batch::All)
        })
    };
    let (c1, g1) = run(1);
    for threads in [2, 3, 8] {
        let (c, g) = run(threads);
        assert_eq!(c1.to_bits(), c.to_bits(), "{threads} threads: another cost");
        assert!(g1.iter().zip(&g).all(|(a, b)| a.to_bits() == b.to_bits()), "{threads} threads: another gradient");
    }
}

#[test]
fn sigmoid_and_softmax_are_stable_at_extreme_inputs() {
    // One input, weights that push z to ±1000: no NaN, no infinity, probabilities in [0,1].
    let spec = NetSpec::new(&[1, 2, 3], Activation::Sigmoid, Output::Softmax).unwrap();
    let layout = ThetaLayout::new(&spec);
    let mut theta = vec![0.0; layout.len()];
    theta[layout.weight_range(0)].copy_from_slice(&[1000.0, -1000.0]);
    theta[layout.weight_range(1)].copy_from_slice(&[900.0, 0.0, 0.0, 900.0, -900.0, 0.0]);
    let x = array![[1.0], [-1.0]];
    for f32_backend in [false, true] {
        let mut b: Box<dyn Backend> = if f32_backend {
            Box::new(CpuBackend::<f32>::new(spec.clone()).unwrap())
        } else {
            Box::new(CpuBackend::<f64>::new(spec.clone()).unwrap())
        };
        b.set_data((&x).into(), Targets::Labels(&[2, 1])).unwrap();
        let (cost, grad) = eval(b.as_mut(), &theta, Batch::All);
        assert!(cost.is_finite() && grad.iter().all(|g| g.is_finite()), "{}: cost {cost}", b.name());
        // Row 0: hidden (1, 0), logits (900, 0, -900), label 2 → −log P = 1800.
        // Row 1: hidden (0, 1), logits (0, 900, 0), label 1 → −log P ≈ 0.
        assert!((cost - 900.0).abs() < 1e-3, "{}: cost {cost}", b.name());
        let p = b.predict(&theta, (&x).into()).unwrap();
        assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));
        assert_eq!(b.classify(&theta, (&x).into()).unwrap(), vec![0, 1]);
    }
}

#[test]
fn forward_gives_every_layer_and_probabilities_sum_to_one() {
    let case = &common::gradcheck_cases()[2];
    let mut b = CpuBackend::<f64>::new(case.spec.clone()).unwrap();
    let acts = b.forward(&case.theta, (&case.x).into()).unwrap();
    let sizes: Vec<(usize, usize)> = acts.iter().map(|a| a.dim()).collect();
    assert_eq!(sizes, vec![(9, 12), (9, 9), (9, 7), (9, 4)]);
    for row in acts[3].rows() {
        assert!((row.sum() - 1.0).abs() < 1e-12);
    }
    assert!(acts[0].iter().all(|a| a.abs() < 1.0), "tanh layer out of range");
}

#[test]
fn theta_layout_is_ufldl_order() {
    let spec = NetSpec::sparse_autoencoder(64, 25, 0.0, Sparsity { target: 0.01, weight: 3.0 }).unwrap();
    let layout = ThetaLayout::new(&spec);
    assert_eq!(layout.len(), 64 * 25 * 2 + 25 + 64);
    assert_eq!(layout.weight_range(0), 0..1600);
    assert_eq!(layout.weight_range(1), 1600..3200);
    assert_eq!(layout.bias_range(0), 3200..3225);
    assert_eq!(layout.bias_range(1), 3225..3289);
    let theta: Vec<f64> = (0..layout.len()).map(|i| i as f64).collect();
    // W⁽¹⁾ is 25 × 64, row-major: W[1][0] is the 65th number.
    assert_eq!(layout.weight(&theta, 0)[[1, 0]], 64.0);
    assert_eq!(layout.weight(&theta, 1).dim(), (64, 25));
}

#[test]
fn initialisers_follow_the_notes_and_the_seed() {
    let spec = NetSpec::new(&[100, 50, 10], Activation::Tanh, Output::Softmax).unwrap();
    let layout = ThetaLayout::new(&spec);
    let a = Init::Uniform.theta(&spec, 9);
    assert_eq!(a, Init::Uniform.theta(&spec, 9));
    assert_ne!(a, Init::Uniform.theta(&spec, 10));
    let r0 = (6.0f64 / 151.0).sqrt();
    let w0 = &a[layout.weight_range(0)];
    assert!(w0.iter().all(|w| w.abs() <= r0));
    assert!(w0.iter().any(|w| w.abs() > 0.9 * r0), "uniform draws should reach near ±r");
    assert!(a[layout.bias_range(0).start..].iter().all(|&b| b == 0.0), "biases start at 0");
    let n = Init::DEFAULT_NORMAL.theta(&spec, 9);
    let w = &n[layout.all_weights()];
    let std = (w.iter().map(|v| v * v).sum::<f64>() / w.len() as f64).sqrt();
    assert!((std - 0.01).abs() < 0.0005, "N(0, 0.01²) has std {std}");
}

#[test]
fn spec_round_trips_through_json_and_refuses_bad_networks() {
    for case in common::gradcheck_cases() {
        let json = serde_json::to_string(&case.spec).unwrap();
        assert_eq!(serde_json::from_str::<NetSpec>(&json).unwrap(), case.spec);
    }
    let tanh_sparse = NetSpec::new(&[4, 3, 4], Activation::Tanh, Output::SquaredError(Activation::Tanh))
        .unwrap()
        .with_sparsity(Some(Sparsity { target: 0.05, weight: 3.0 }));
    let msg = tanh_sparse.unwrap_err().to_string();
    assert!(msg.contains("(0,1)") && msg.contains("tanh"), "{msg}");
    assert!(NetSpec::new(&[4], Activation::Sigmoid, Output::Softmax).is_err());
    assert!(NetSpec::new(&[4, 1], Activation::Sigmoid, Output::Softmax).is_err());
    assert!(NetSpec::new(&[4, 0, 2], Activation::Sigmoid, Output::Softmax).is_err());
    assert!(Activation::parse("leaky-relu:-1").is_err());
    assert_eq!(Activation::parse("leaky-relu:0.2").unwrap(), Activation::LeakyRelu { alpha: 0.2 });
    assert!(Activation::parse("swish").unwrap_err().to_string().contains("sigmoid, tanh"));
}

/// Data handed over as `Inputs::Shared` is kept, not copied, by the f32 backend (it holds a
/// second handle to the caller's array, and lets go of it when other data is loaded), and is
/// converted by the f64 one; either way every result has the bits of the same data lent as a
/// plain f32 view. `predict` (only the output widened to f64) gives the bits of `forward`'s
/// last layer.
#[test]
fn shared_data_is_kept_not_copied_and_gives_the_same_bits() {
    use std::sync::Arc;
    use wgnn::backend::Inputs;
    fn same_results<F: wgnn::cpu::Real>(case: &common::Case, x: &Arc<ndarray::Array2<f32>>, kept: bool) {
        let values = case.values.as_ref().map(|v| Arc::new(v.mapv(|v| v as f32)));
        let targets = |shared: bool| match (&case.labels, &values) {
            (Some(l), _) => Targets::Labels(l),
            (_, Some(v)) if shared => Targets::Values(Inputs::Shared(v)),
            (_, Some(v)) => Targets::Values(Inputs::F32(v.view())),
            _ => Targets::Inputs,
        };
        let mut lent = CpuBackend::<F>::new(case.spec.clone()).unwrap();
        lent.set_data(Inputs::F32(x.view()), targets(false)).unwrap();
        let mut shared = CpuBackend::<F>::new(case.spec.clone()).unwrap();
        shared.set_data(Inputs::Shared(x), targets(true)).unwrap();
        let handles = if kept { 2 } else { 1 };
        assert_eq!(Arc::strong_count(x), handles, "{} cpu {}: handles on the shared examples", case.name, F::NAME);
        if let Some(v) = &values {
            assert_eq!(Arc::strong_count(v), handles, "{} cpu {}: handles on the shared targets", case.name, F::NAME);
        }
        let m = x.nrows();
        let ix: Vec<usize> = (0..m).rev().step_by(2).collect();
        for batch in [Batch::All, Batch::Rows(1..m), Batch::Indices(&ix)] {
            let (c_lent, g_lent) = eval(&mut lent, &case.theta, batch.clone());
            let (c_shared, g_shared) = eval(&mut shared, &case.theta, batch.clone());
            assert_eq!(c_lent.to_bits(), c_shared.to_bits(), "{} cpu {}: cost on {batch:?}", case.name, F::NAME);
            let same = g_lent.iter().zip(&g_shared).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{} cpu {}: gradient on {batch:?}", case.name, F::NAME);
        }
        let out = lent.forward(&case.theta, Inputs::F32(x.view())).unwrap().pop().unwrap();
        assert_eq!(shared.forward(&case.theta, Inputs::Shared(x)).unwrap().pop().unwrap(), out);
        assert_eq!(shared.predict(&case.theta, Inputs::Shared(x)).unwrap(), out, "{}: predict", case.name);
        assert_eq!(lent.predict(&case.theta, Inputs::F32(x.view())).unwrap(), out, "{}: predict", case.name);
        // Other data loaded: the backend lets go of the caller's array.
        shared.set_data(Inputs::F32(x.view()), targets(false)).unwrap();
        assert_eq!(Arc::strong_count(x), 1, "{} cpu {}: the old data is still held", case.name, F::NAME);
    }
    for case in common::gradcheck_cases() {
        let x = Arc::new(case.x.mapv(|v| v as f32));
        same_results::<f32>(&case, &x, true);
        same_results::<f64>(&case, &x, false);
    }
}
