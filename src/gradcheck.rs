//! Numerical gradient checking (MATH.md, "Gradient checking"): central differences with
//! ε = 1e-4 and the relative difference ‖g − ĝ‖/‖g + ĝ‖. Works on any function J(θ), and on
//! any [`Backend`] through its cost.

use crate::Result;
use crate::backend::{Backend, Batch, Inputs};
use crate::model::{Activation, ThetaLayout};

/// The step of the central difference, as UFLDL prescribes.
pub const EPSILON: f64 = 1e-4;

/// ĝᵢ = (J(θ + ε eᵢ) − J(θ − ε eᵢ)) / 2ε for every i. θ is restored before returning.
///
/// MATH.md's first check, J(x) = x₁² + 3x₁x₂ at (4, 10), whose gradient is (38, 12):
/// ```
/// use wgnn::gradcheck::{numerical_gradient, relative_difference, EPSILON};
/// let j = |x: &[f64]| Ok::<f64, ()>(x[0] * x[0] + 3.0 * x[0] * x[1]);
/// let g = numerical_gradient(j, &[4.0, 10.0], EPSILON).unwrap();
/// assert!(relative_difference(&g, &[38.0, 12.0]) < 1e-9);
/// ```
pub fn numerical_gradient<E>(
    mut cost: impl FnMut(&[f64]) -> std::result::Result<f64, E>,
    theta: &[f64],
    epsilon: f64,
) -> std::result::Result<Vec<f64>, E> {
    let mut probe = theta.to_vec();
    let mut grad = vec![0.0; theta.len()];
    for i in 0..theta.len() {
        probe[i] = theta[i] + epsilon;
        let plus = cost(&probe)?;
        probe[i] = theta[i] - epsilon;
        let minus = cost(&probe)?;
        probe[i] = theta[i];
        grad[i] = (plus - minus) / (2.0 * epsilon);
    }
    Ok(grad)
}

/// ‖a − b‖ / ‖a + b‖; 0 when both are zero.
pub fn relative_difference(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "gradients of different lengths");
    let (diff, sum) = a.iter().zip(b).fold((0.0, 0.0), |(d, s), (x, y)| (d + (x - y).powi(2), s + (x + y).powi(2)));
    if sum == 0.0 { diff.sqrt() } else { (diff / sum).sqrt() }
}

/// The analytic gradient of a backend beside its numerical one.
#[derive(Clone, Debug)]
pub struct Report {
    /// ∇J(θ) as the backend computes it, one value per parameter.
    pub analytic: Vec<f64>,
    /// ĝ, the central differences of the backend's J ([`numerical_gradient`]).
    pub numerical: Vec<f64>,
    /// ‖g − ĝ‖ / ‖g + ĝ‖ ([`relative_difference`]); MATH.md expects < 1e-9 in f64.
    pub relative_difference: f64,
}

/// Checks `backend`'s gradient at θ on `batch` against central differences of its own cost.
/// Costs 2·|θ| cost evaluations: use small networks.
pub fn check_backend(backend: &mut dyn Backend, theta: &[f64], batch: Batch<'_>) -> Result<Report> {
    let mut analytic = vec![0.0; theta.len()];
    backend.cost_and_grad(theta, batch.clone(), &mut analytic)?;
    let numerical = numerical_gradient(|t| backend.cost(t, batch.clone()).map(|c| c.total()), theta, EPSILON)?;
    let relative_difference = relative_difference(&analytic, &numerical);
    Ok(Report { analytic, numerical, relative_difference })
}

/// The smallest |z| over units whose activation has a kink at z = 0 (ReLU, leaky ReLU), with
/// z recomputed from the forward pass on `x` as A Wᵀ + b; infinity when there are none. A
/// central difference whose step crosses a kink measures nothing, so a check is only
/// meaningful when this is well above the change a step of ε makes to z.
pub fn kink_margin(backend: &mut dyn Backend, theta: &[f64], x: Inputs<'_>) -> Result<f64> {
    let spec = backend.spec().clone();
    let layout = ThetaLayout::new(&spec);
    let activations = backend.forward(theta, x)?;
    let input = match x {
        Inputs::F32(x) => x.mapv(f64::from),
        Inputs::F64(x) => x.to_owned(),
        Inputs::Shared(x) => x.mapv(f64::from),
    };
    let mut margin = f64::INFINITY;
    for l in 0..layout.num_layers() {
        if let Some(Activation::Relu | Activation::LeakyRelu { .. }) = spec.activation_after(l) {
            let a_prev = if l == 0 { &input } else { &activations[l - 1] };
            let z = a_prev.dot(&layout.weight(theta, l).t()) + layout.bias(theta, l);
            margin = z.iter().fold(margin, |m, v| m.min(v.abs()));
        }
    }
    Ok(margin)
}
