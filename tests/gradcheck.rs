//! Gradients proven by central differences (MATH.md, "Gradient checking"): each analytic
//! gradient of the f64 CPU reference must be within 1e-9 relative difference of the
//! numerical one, as UFLDL demands.

mod common;

use wgnn::gradcheck::{self, EPSILON};
use wgnn::{Batch, CpuBackend};

#[test]
fn numerical_gradient_of_the_ufldl_example() {
    // J(x) = x₁² + 3x₁x₂ at (4, 10): ∇J = (2x₁ + 3x₂, 3x₁) = (38, 12).
    let j = |x: &[f64]| Ok::<_, ()>(x[0] * x[0] + 3.0 * x[0] * x[1]);
    let numerical = gradcheck::numerical_gradient(j, &[4.0, 10.0], EPSILON).unwrap();
    let analytic = [38.0, 12.0];
    let diff = gradcheck::relative_difference(&analytic, &numerical);
    assert!(diff < 1e-9, "relative difference {diff:e}, numerical {numerical:?}");
    // A wrong gradient must be caught.
    assert!(gradcheck::relative_difference(&[38.0, 13.0], &numerical) > 1e-3);
}

#[test]
fn relative_difference_is_symmetric_and_scale_free() {
    let a = [1.0, -2.0, 3.0];
    let b = [1.1, -2.0, 2.9];
    let d = gradcheck::relative_difference(&a, &b);
    assert_eq!(d, gradcheck::relative_difference(&b, &a));
    let scaled = |v: &[f64]| v.iter().map(|x| x * 1e6).collect::<Vec<_>>();
    assert!((gradcheck::relative_difference(&scaled(&a), &scaled(&b)) - d).abs() < 1e-15);
    assert_eq!(gradcheck::relative_difference(&[0.0], &[0.0]), 0.0);
}

#[test]
fn analytic_gradients_match_central_differences_in_f64() {
    for case in common::gradcheck_cases() {
        let mut backend = CpuBackend::<f64>::new(case.spec.clone()).unwrap();
        case.load(&mut backend);
        let margin = gradcheck::kink_margin(&mut backend, &case.theta, (&case.x).into()).unwrap();
        assert!(margin > 10.0 * EPSILON, "{}: a unit sits {margin:e} from a kink", case.name);
        let report = gradcheck::check_backend(&mut backend, &case.theta, Batch::All).unwrap();
        let norm = report.analytic.iter().map(|g| g * g).sum::<f64>().sqrt();
        println!("{}: relative difference {:e} (‖g‖ = {norm:.3e})", case.name, report.relative_difference);
        assert!(norm > 1e-3, "{}: gradient is (nearly) zero, the check proves nothing", case.name);
        assert!(
            report.relative_difference < 1e-9,
            "{}: relative difference {:e}",
            case.name,
            report.relative_difference
        );
    }
}

#[test]
fn gradient_check_catches_a_wrong_gradient() {
    // Break one component of a correct gradient: the relative difference must see it.
    let case = &common::gradcheck_cases()[0];
    let mut backend = CpuBackend::<f64>::new(case.spec.clone()).unwrap();
    case.load(&mut backend);
    let mut report = gradcheck::check_backend(&mut backend, &case.theta, Batch::All).unwrap();
    let i = report.analytic.len() / 2;
    report.analytic[i] += 1e-3;
    assert!(gradcheck::relative_difference(&report.analytic, &report.numerical) > 1e-6);
}

#[test]
fn what_remains_is_truncation_error() {
    // Central differences err by O(ε²): for a correct gradient, halving ε divides the
    // relative difference by 4; a wrong gradient leaves a difference that does not shrink.
    // Checked on a deep tanh network, where the ε = 1e-4 truncation error is largest.
    use wgnn::model::{Activation, Init, NetSpec, Output};
    let spec = NetSpec {
        layers: vec![10, 12, 9, 7, 4],
        hidden_activations: vec![Activation::Tanh, Activation::Tanh, Activation::Tanh],
        output: Output::Softmax,
        weight_decay: 1e-3,
        sparsity: None,
        net: None,
    };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
    let x = common::uniform(9, 10, -1.0, 1.0, &mut rng);
    let labels = common::labels(9, 4, &mut rng);
    let theta = Init::Uniform.theta(&spec, 7);
    let mut backend = CpuBackend::<f64>::new(spec).unwrap();
    wgnn::Backend::set_data(&mut backend, (&x).into(), wgnn::Targets::Labels(&labels)).unwrap();
    let mut analytic = vec![0.0; theta.len()];
    wgnn::Backend::cost_and_grad(&mut backend, &theta, Batch::All, &mut analytic).unwrap();
    let diff_at = |eps: f64, backend: &mut CpuBackend<f64>| {
        let num = gradcheck::numerical_gradient(
            |t| wgnn::Backend::cost(backend, t, Batch::All).map(|c| c.total()),
            &theta,
            eps,
        )
        .unwrap();
        gradcheck::relative_difference(&analytic, &num)
    };
    let (d1, d2) = (diff_at(2e-4, &mut backend), diff_at(1e-4, &mut backend));
    println!("relative difference: ε=2e-4 {d1:e}, ε=1e-4 {d2:e}, ratio {:.3}", d1 / d2);
    assert!((3.5..4.5).contains(&(d1 / d2)), "ratio {} is not the O(ε²) 4", d1 / d2);
    assert!(d2 < 1e-8);
}
