//! Numerical gradient checking (MATH.md, "Gradient checking"): central differences with
//! ε = 1e-4 and the relative difference ‖g − ĝ‖/‖g + ĝ‖. Works on any function J(θ), and on
//! any [`Backend`] through its cost.

use crate::Result;
use crate::backend::{Backend, Batch};

/// The step of the central difference, as UFLDL prescribes.
pub const EPSILON: f64 = 1e-4;

/// ĝᵢ = (J(θ + ε eᵢ) − J(θ − ε eᵢ)) / 2ε for every i. θ is restored before returning.
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
    pub analytic: Vec<f64>,
    pub numerical: Vec<f64>,
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
