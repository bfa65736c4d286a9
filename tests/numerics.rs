//! Numbers you can trust (MATH.md, "Numerically safe forms"), on every backend and precision:
//! CPU f64, CPU f32 and the GPU (both matmul kernels; lavapipe in CI). Each handed case of
//! issue 13 is a test with its right value, computed here in f64 by the formula written out,
//! or with its refusal:
//! - cross-entropy of logits 1e8 is ln 2, not 0 (no `max + log Σ − z_y` cancellation);
//! - KL sparsity where ρ̂ rounds to 1 (or is tiny) is finite and right, and so is its gradient;
//! - weight decay with λ = 0 is exactly 0 whatever the weights (never 0 · ∞);
//! - θ that is not finite in the backend's precision, and a cost that is not finite, are
//!   refused with one clear message, never reported as a result;
//! - a spec with invalid values or absurd sizes is refused by its validation.

#[macro_use]
mod common;

use ndarray::{Array2, Axis};
use rand::{SeedableRng, rngs::StdRng};
use wgnn::gpu::{GpuBackend, GpuOptions, MatmulKernel};
use wgnn::model::{Activation, Init, NetSpec, Output, Sparsity, ThetaLayout};
use wgnn::{Backend, Batch, Cost, CpuBackend};

/// The backends every test here runs on.
#[derive(Clone, Copy, Debug)]
enum Which {
    CpuF64,
    CpuF32,
    Gpu(MatmulKernel),
}

impl Which {
    fn build(self, spec: &NetSpec) -> Box<dyn Backend> {
        match self {
            Which::CpuF64 => Box::new(CpuBackend::<f64>::new(spec.clone()).unwrap()),
            Which::CpuF32 => Box::new(CpuBackend::<f32>::new(spec.clone()).unwrap()),
            Which::Gpu(kernel) => {
                let options = GpuOptions { matmul: Some(kernel), ..Default::default() };
                let mut g = GpuBackend::new(spec.clone(), &options)
                    .expect("a GPU adapter (lavapipe in CI: apt-get install mesa-vulkan-drivers)");
                g.set_poison(true);
                Box::new(g)
            }
        }
    }

    /// Relative tolerance against an f64 value computed here: f64 round-off, or f32's.
    fn tolerance(self) -> f64 {
        match self {
            Which::CpuF64 => 1e-12,
            _ => 1e-5,
        }
    }
}

/// One test per backend for each function named: `cpu_f64::f`, `cpu_f32::f`, `gpu_tiled::f`,
/// `gpu_texture::f`.
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod cpu_f64 { $(#[test] fn $name() { super::$name(super::Which::CpuF64) })* }
        mod cpu_f32 { $(#[test] fn $name() { super::$name(super::Which::CpuF32) })* }
        mod gpu_tiled { $(#[test] fn $name() { super::$name(super::Which::Gpu(wgnn::gpu::MatmulKernel::Tiled)) })* }
        mod gpu_texture { $(#[test] fn $name() { super::$name(super::Which::Gpu(wgnn::gpu::MatmulKernel::Texture)) })* }
    };
}

for_each_backend!(
    cross_entropy_of_huge_logits_has_no_cancellation,
    kl_sparsity_where_rho_hat_rounds_to_one_is_finite_and_right,
    kl_sparsity_where_rho_hat_is_tiny_is_finite_and_right,
    weight_decay_with_lambda_zero_is_exactly_zero,
    theta_beyond_the_precision_is_refused_with_one_clear_message,
);

fn rel(got: f64, want: f64) -> f64 {
    ((got - want) / want).abs()
}

/// σ(z) in f64 without overflow, and σ(−z) = 1 − σ(z) computed on its own.
fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 { 1.0 / (1.0 + (-z).exp()) } else { z.exp() / (1.0 + z.exp()) }
}

// ---------------------------------------------------------------------------------------
// Cross-entropy

/// `--layers 2,2 --output softmax` with W = [[1e8, 0], [1e8 − d, 0]], b = 0, on x = [1, 0]:
/// the logits are (1e8, 1e8 − d), so −log P(0|x) = log(1 + e^{−d}) and −log P(1|x) =
/// d + log(1 + e^{−d}). d = 0 is the handed case (ln 2 each; `max + log Σ − z_y` gave 0 in
/// f32); d = 16 is exact in f32 (1e8 − 16 is a multiple of f32's spacing 8 there).
fn cross_entropy_of_huge_logits_has_no_cancellation(which: Which) {
    let spec = NetSpec::softmax_regression(2, 2, 0.0).unwrap();
    for d in [0.0f64, 16.0] {
        let theta = [1e8, 0.0, 1e8 - d, 0.0, 0.0, 0.0];
        let x = ndarray::array![[1.0, 0.0], [1.0, 0.0]];
        for (labels, want) in [
            // The handed case: one example, label 1.
            (&[1usize][..], d + (1.0 + (-d).exp()).ln()),
            (&[0, 1][..], 0.5 * ((1.0 + (-d).exp()).ln() + d + (1.0 + (-d).exp()).ln())),
        ] {
            let mut b = which.build(&spec);
            let x = x.slice(ndarray::s![..labels.len(), ..]).to_owned();
            b.set_data((&x).into(), wgnn::Targets::Labels(labels)).unwrap();
            let cost = b.cost(&theta, Batch::All).unwrap();
            assert!(
                rel(cost.total(), want) < which.tolerance(),
                "{which:?} d = {d} labels {labels:?}: cost {} but −(1/m) Σ log P = {want}",
                cost.total()
            );
            let mut grad = vec![f64::NAN; theta.len()];
            let with_grad = b.cost_and_grad(&theta, Batch::All, &mut grad).unwrap();
            assert!(rel(with_grad.total(), want) < which.tolerance(), "{which:?}: cost with gradient {with_grad:?}");
            // ∇_b = mean of (P − onehot(y)): P = (1, e^{−d}) / (1 + e^{−d}).
            let p1 = (-d).exp() / (1.0 + (-d).exp());
            let m = labels.len() as f64;
            let want_gb1 = labels.iter().map(|&l| p1 - (l == 1) as u8 as f64).sum::<f64>() / m;
            assert!((grad[5] - want_gb1).abs() < 1e-6, "{which:?} d = {d}: ∂J/∂b₁ = {} but want {want_gb1}", grad[5]);
            // The probabilities themselves (classify, eval) are finite and right.
            let p = b.predict(&theta, (&x).into()).unwrap();
            assert!((p[[0, 1]] - p1).abs() < 1e-6, "{which:?} d = {d}: P(1|x) = {} but want {p1}", p[[0, 1]]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// KL sparsity

/// The handed sparse autoencoder 4-3-4: X uniform(0.1, 0.9) of 20 × 4, W ~ N(0, 0.01²), the
/// hidden biases all `hidden_bias`, the output biases 0.
fn saturated_autoencoder(hidden_bias: f64) -> (NetSpec, Vec<f64>, Array2<f64>) {
    let spec = NetSpec::sparse_autoencoder(4, 3, 0.0, Sparsity { target: 0.01, weight: 3.0 }).unwrap();
    let mut theta = Init::Normal { epsilon: 0.01 }.theta(&spec, 0);
    let layout = ThetaLayout::new(&spec);
    theta[layout.bias_range(0)].fill(hidden_bias);
    let x = common::uniform(20, 4, 0.1, 0.9, &mut StdRng::seed_from_u64(0));
    (spec, theta, x)
}

/// J of a one-hidden-layer sigmoid autoencoder with KL sparsity, in f64, by the formulas of
/// MATH.md with ρ̂ = mean σ(z) and 1 − ρ̂ = mean σ(−z) each summed on its own: (data term,
/// weight decay, sparsity term).
fn reference_autoencoder_cost(spec: &NetSpec, theta: &[f64], x: &Array2<f64>) -> (f64, f64, f64) {
    let layout = ThetaLayout::new(spec);
    let (w1, b1) = (layout.weight(theta, 0), layout.bias(theta, 0));
    let (w2, b2) = (layout.weight(theta, 1), layout.bias(theta, 1));
    let z2 = x.dot(&w1.t()) + b1;
    let a2 = z2.mapv(sigmoid);
    let a3 = (a2.dot(&w2.t()) + b2).mapv(sigmoid);
    let m = x.nrows() as f64;
    let data = 0.5 * (&a3 - x).mapv(|e| e * e).sum() / m;
    let decay = if spec.weight_decay == 0.0 {
        0.0
    } else {
        0.5 * spec.weight_decay * theta[layout.all_weights()].iter().map(|w| w * w).sum::<f64>()
    };
    let sparsity = spec.sparsity.map_or(0.0, |s| {
        let rho_hat = a2.mean_axis(Axis(0)).unwrap();
        let rho_hat_c = z2.mapv(|z| sigmoid(-z)).mean_axis(Axis(0)).unwrap();
        let rho = s.target;
        let kl = |rh: f64, rc: f64| rho * (rho.ln() - rh.ln()) + (1.0 - rho) * ((1.0 - rho).ln() - rc.ln());
        s.weight * rho_hat.iter().zip(&rho_hat_c).map(|(&rh, &rc)| kl(rh, rc)).sum::<f64>()
    });
    (data, decay, sparsity)
}

/// Cost and gradient of `which` at θ, checked against the f64 reference formula and (the
/// gradient) against the CPU f64 backend's, which the gradient check below proves.
fn check_sparse_case(which: Which, hidden_bias: f64) {
    let (spec, theta, x) = saturated_autoencoder(hidden_bias);
    let (data, _, sparsity) = reference_autoencoder_cost(&spec, &theta, &x);
    let mut b = which.build(&spec);
    b.set_data((&x).into(), wgnn::Targets::Inputs).unwrap();
    let cost = b.cost(&theta, Batch::All).unwrap();
    assert!(
        rel(cost.sparsity, sparsity) < which.tolerance() && rel(cost.data, data) < which.tolerance(),
        "{which:?} hidden bias {hidden_bias}: {cost:?}, but the formula gives data {data}, sparsity {sparsity}"
    );
    let mut grad = vec![f64::NAN; theta.len()];
    let with_grad = b.cost_and_grad(&theta, Batch::All, &mut grad).unwrap();
    assert!(rel(with_grad.total(), data + sparsity) < which.tolerance(), "{which:?}: {with_grad:?}");
    assert!(grad.iter().all(|g| g.is_finite()), "{which:?} hidden bias {hidden_bias}: gradient {grad:?}");
    let mut reference = CpuBackend::<f64>::new(spec.clone()).unwrap();
    reference.set_data((&x).into(), wgnn::Targets::Inputs).unwrap();
    let mut want = vec![0.0; theta.len()];
    reference.cost_and_grad(&theta, Batch::All, &mut want).unwrap();
    let err = common::relative_error(&grad, &want);
    let tolerance = if matches!(which, Which::CpuF64) { 1e-14 } else { 1e-4 };
    assert!(err < tolerance, "{which:?} hidden bias {hidden_bias}: gradient {err:e} from the f64 reference");
}

/// ρ̂ rounds to 1 in f32 at hidden biases of 20 (the handed case: `sparsity inf`, 15 NaN in
/// the gradient), and in f64 at 50 (true cost ≈ 445).
fn kl_sparsity_where_rho_hat_rounds_to_one_is_finite_and_right(which: Which) {
    for bias in [20.0, 50.0] {
        check_sparse_case(which, bias);
    }
}

/// The other side: ρ̂ ≈ e^{−20} and e^{−50}, far below ρ, with 1 − ρ̂ ≈ 1.
fn kl_sparsity_where_rho_hat_is_tiny_is_finite_and_right(which: Which) {
    for bias in [-20.0, -50.0] {
        check_sparse_case(which, bias);
    }
}

/// The safe sparsity gradient is the gradient of the cost: central differences agree to
/// 1e-9 in f64 (MATH.md, "Gradient checking") at a normal point and at the saturated ones.
#[test]
fn the_safe_sparsity_gradient_passes_the_gradient_check_in_f64() {
    for bias in [0.0, 20.0, 50.0, -20.0] {
        let (spec, theta, x) = saturated_autoencoder(bias);
        let spec = spec.with_weight_decay(1e-3).unwrap();
        let mut b = CpuBackend::<f64>::new(spec).unwrap();
        b.set_data((&x).into(), wgnn::Targets::Inputs).unwrap();
        let report = wgnn::gradcheck::check_backend(&mut b, &theta, Batch::All).unwrap();
        assert!(
            report.relative_difference < 1e-9,
            "hidden bias {bias}: relative difference {:e}",
            report.relative_difference
        );
        assert!(report.analytic.iter().all(|g| g.is_finite()));
    }
}

/// A hidden unit whose σ(z) underflows to 0 for every example (f64: z = −1000) has ρ̂ = 0 and
/// an infinite KL, and so does one at the floor of f32's fast sigmoid (z = −100: σ is
/// e^{−87.3} there, which would give a finite but made-up KL): refused with a message naming
/// the sparsity term, never reported as `inf` or as a wrong number.
#[test]
fn a_rho_hat_below_the_precision_is_refused_not_reported() {
    let check = |b: &mut dyn Backend, bias: f64| {
        let (_, theta, x) = saturated_autoencoder(bias);
        b.set_data((&x).into(), wgnn::Targets::Inputs).unwrap();
        let err = b.cost(&theta, Batch::All).unwrap_err().to_string();
        assert!(err.contains("not finite") && err.contains("sparsity inf") && err.contains("ρ̂"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    };
    let spec = saturated_autoencoder(0.0).0;
    check(&mut CpuBackend::<f64>::new(spec.clone()).unwrap(), -1000.0);
    check(&mut CpuBackend::<f32>::new(spec.clone()).unwrap(), -100.0);
    // Above the floor f32 stays finite and right (kl_sparsity_where_rho_hat_is_tiny_…).
}

// ---------------------------------------------------------------------------------------
// Weight decay and non-finite values

/// λ = 0 and weights whose squares overflow (1e20 in f32, 1e300 in f64): the decay term is
/// exactly 0 and the cost is the data term alone — on the GPU Σ W² is inf in f32 and
/// 0 · inf gave NaN.
fn weight_decay_with_lambda_zero_is_exactly_zero(which: Which) {
    let spec = NetSpec::new(&[4, 3, 4], Activation::Sigmoid, Output::SquaredError(Activation::Sigmoid)).unwrap();
    let (_, mut theta, x) = saturated_autoencoder(0.0);
    let big = if matches!(which, Which::CpuF64) { -1e300 } else { -1e20 };
    theta[0] = big;
    let (data, _, _) = reference_autoencoder_cost(&spec, &theta, &x);
    let mut b = which.build(&spec);
    b.set_data((&x).into(), wgnn::Targets::Inputs).unwrap();
    let cost = b.cost(&theta, Batch::All).unwrap();
    assert_eq!(cost.weight_decay, 0.0, "{which:?}: {cost:?}");
    assert!(rel(cost.total(), data) < which.tolerance(), "{which:?}: {cost:?}, want data term {data}");
    let mut grad = vec![f64::NAN; theta.len()];
    b.cost_and_grad(&theta, Batch::All, &mut grad).unwrap();
    assert!(grad.iter().all(|g| g.is_finite()), "{which:?}: {grad:?}");
}

/// θ holding NaN, ±∞, or (f32 backends) a value beyond ±f32::MAX is refused by every
/// entry point — cost, cost and gradient, forward — with one line naming the entry.
fn theta_beyond_the_precision_is_refused_with_one_clear_message(which: Which) {
    let (spec, theta, x) = saturated_autoencoder(0.0);
    let mut b = which.build(&spec);
    b.set_data((&x).into(), wgnn::Targets::Inputs).unwrap();
    let mut bad_values = vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
    if !matches!(which, Which::CpuF64) {
        bad_values.extend([-1e300, 1e39]);
    }
    for bad in bad_values {
        let mut t = theta.clone();
        t[7] = bad;
        let mut grad = vec![0.0; t.len()];
        let errors = [
            b.cost(&t, Batch::All).map(|_| ()),
            b.cost_and_grad(&t, Batch::All, &mut grad).map(|_| ()),
            b.forward(&t, (&x).into()).map(|_| ()),
        ];
        for e in errors {
            let msg = e.expect_err("a θ that is not finite in the backend's precision").to_string();
            assert!(msg.contains("θ[7]") && !msg.contains('\n'), "{which:?} θ[7] = {bad}: {msg}");
        }
    }
}

/// J's terms that are not finite are an error that names them; finite ones pass through.
#[test]
fn a_cost_that_is_not_finite_is_an_error_naming_the_term() {
    let ok = Cost { data: 1.0, weight_decay: 0.5, sparsity: 2.0 };
    assert_eq!(ok.finite("cpu f32").unwrap(), ok);
    for (cost, needle) in [
        (Cost { data: f64::INFINITY, ..ok }, "data term inf"),
        (Cost { data: f64::NAN, ..ok }, "data term NaN"),
        (Cost { weight_decay: f64::INFINITY, ..ok }, "weight decay inf"),
        (Cost { sparsity: f64::INFINITY, ..ok }, "sparsity inf"),
    ] {
        let msg = cost.finite("cpu f32").unwrap_err().to_string();
        assert!(msg.contains(needle) && msg.contains("cpu f32") && !msg.contains('\n'), "{msg}");
    }
}

/// `wgnn cost` on the f64 CPU with λ > 0 and a weight of −1e300: (λ/2)Σ W² overflows, and
/// `cost` says so instead of printing `cost inf`.
#[test]
fn an_overflowing_weight_decay_is_refused_in_f64() {
    let (spec, mut theta, x) = saturated_autoencoder(0.0);
    let spec = spec.with_weight_decay(1e-4).unwrap();
    theta[0] = -1e300;
    let mut b = CpuBackend::<f64>::new(spec).unwrap();
    b.set_data((&x).into(), wgnn::Targets::Inputs).unwrap();
    let msg = b.cost(&theta, Batch::All).unwrap_err().to_string();
    assert!(msg.contains("weight decay inf"), "{msg}");
}

// ---------------------------------------------------------------------------------------
// Spec validation

fn refused(spec: NetSpec, needle: &str) {
    let msg = spec.validate().expect_err("an invalid spec").to_string();
    assert!(msg.contains(needle), "expected `{needle}` in: {msg}");
    // The same spec from JSON (a checkpoint's or a config's) is refused alike.
    let json = serde_json::to_string(&spec).unwrap();
    let back: NetSpec = serde_json::from_str(&json).unwrap_or(spec);
    assert!(back.validate().is_err());
    // And no backend is built on it.
    assert!(CpuBackend::<f64>::new(back).is_err());
}

#[test]
fn invalid_values_in_a_spec_are_refused() {
    let sae = |rho: f64, beta: f64, lambda: f64| NetSpec {
        layers: vec![4, 3, 4],
        hidden_activations: vec![Activation::Sigmoid],
        output: Output::SquaredError(Activation::Sigmoid),
        weight_decay: lambda,
        sparsity: Some(Sparsity { target: rho, weight: beta }),
        net: None,
    };
    for rho in [f64::NAN, -0.1, 0.0, 1.0, 1.5, f64::INFINITY] {
        refused(sae(rho, 3.0, 0.0), "sparsity target ρ");
    }
    for beta in [f64::NAN, -1.0, f64::INFINITY] {
        refused(sae(0.1, beta, 0.0), "sparsity weight β");
    }
    for lambda in [f64::NAN, -1e-4, f64::INFINITY] {
        refused(sae(0.1, 3.0, lambda), "weight decay λ");
    }
    for alpha in [f64::NAN, f64::INFINITY, -0.5] {
        let mut spec = sae(0.1, 3.0, 0.0);
        spec.sparsity = None;
        spec.hidden_activations = vec![Activation::LeakyRelu { alpha }];
        refused(spec, "leaky ReLU slope");
    }
    assert!(sae(0.1, 3.0, 1e-4).validate().is_ok());
}

#[test]
fn absurd_layer_sizes_are_refused_before_anything_is_allocated() {
    let net = |layers: Vec<usize>| NetSpec {
        hidden_activations: vec![Activation::Sigmoid; layers.len() - 2],
        layers,
        output: Output::SquaredError(Activation::Sigmoid),
        weight_decay: 0.0,
        sparsity: None,
        net: None,
    };
    // A layer of 3e9 units; sizes whose θ length overflows usize; just over 2^31 parameters.
    for layers in
        [vec![3_000_000_000, 2, 2], vec![2, usize::MAX, 2], vec![usize::MAX / 2, 3, 2], vec![1 << 16, 1 << 15, 1]]
    {
        refused(net(layers.clone()), "2^31");
        assert!(net(layers).parameter_count().is_err());
    }
    // Just under the bound is a valid spec (nothing is allocated by validating it).
    let big = net(vec![1 << 20, 1 << 10, 2]);
    assert_eq!(big.parameter_count().unwrap(), (1 << 30) + (1 << 10) + (1 << 11) + 2);
    assert_eq!(big.parameter_count().unwrap(), ThetaLayout::new(&big).len());
}

/// Minibatch training with θ on the GPU: the device update checks the cost terms it sums
/// (update.wgsl) and skipped every step when Σ W² overflowed f32, although λ = 0 makes the
/// decay term 0. With λ = 0 and a weight of 1e20 (W² = 1e40 > f32::MAX) the step is taken.
#[test]
fn a_device_step_with_lambda_zero_is_taken_whatever_the_weights() {
    use wgnn::optim::{UpdateRule, UpdateState};
    let spec = NetSpec::new(&[4, 3, 4], Activation::Sigmoid, Output::SquaredError(Activation::Sigmoid)).unwrap();
    let (_, mut theta, x) = saturated_autoencoder(0.0);
    theta[0] = 1e20;
    let mut b = Which::Gpu(MatmulKernel::Tiled).build(&spec);
    b.set_data((&x).into(), wgnn::Targets::Inputs).unwrap();
    let rule = UpdateRule::Plain;
    let mut state = UpdateState::new(rule, theta.len());
    let device = b.device_training().expect("the GPU trains on the device");
    device.load(&theta, &state).unwrap();
    let step = device.step(Batch::All, &rule.scalars(1, 0.1)).unwrap();
    assert!(step.cost.is_finite() && step.grad_norm.is_finite(), "{step:?}");
    let mut after = vec![f64::NAN; theta.len()];
    device.read(&mut after, &mut state).unwrap();
    assert!(after != theta && after.iter().all(|v| v.is_finite()), "the step was not taken: {after:?}");
}
