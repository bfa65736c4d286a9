//! Forward and backward passes of a dense network on a batch, written to read like MATH.md
//! (examples are rows: Z = A Wᵀ + 1 bᵀ). Pure functions of (spec, θ, X, y): no state, no I/O.
//! Elementwise work is fused with the pass that produces it (bias + activation in one sweep,
//! error × f′ in one sweep) and split across cores by rows (rayon; every element and every
//! reduction is computed in a fixed order, so results stay bit-for-bit reproducible), and the
//! matrix products go through ndarray's threaded GEMM.

use ndarray::linalg::general_mat_mul;
use ndarray::{Array1, Array2, ArrayView2, Axis, Zip};

use super::Real;
use crate::backend::Cost;
use crate::model::{Activation, NetSpec, Output, ThetaLayout};

/// What the output is compared with, in the backend's precision.
#[derive(Clone, Copy, Debug)]
pub enum TargetView<'a, F> {
    /// y = x (autoencoder).
    Inputs,
    Labels(&'a [usize]),
    Values(ArrayView2<'a, F>),
}

/// f(z), overflow-safe for sigmoid.
#[inline]
pub fn activate<F: Real>(act: Activation, z: F) -> F {
    match act {
        Activation::Sigmoid => {
            // e^{−|z|} never overflows; pick the form that divides by a number ≥ 1.
            let e = (-z.abs()).exp();
            if z >= F::zero() { F::one() / (F::one() + e) } else { e / (F::one() + e) }
        }
        Activation::Tanh => z.tanh(),
        Activation::Relu => z.max(F::zero()),
        Activation::LeakyRelu { alpha } => {
            if z >= F::zero() {
                z
            } else {
                F::of(alpha) * z
            }
        }
        Activation::Identity => z,
    }
}

/// f′(z) written with the stored value a = f(z) (MATH.md). For (leaky) ReLU, a > 0 exactly
/// when z > 0 because α ≥ 0.
#[inline]
pub fn derivative_from_value<F: Real>(act: Activation, a: F) -> F {
    match act {
        Activation::Sigmoid => a * (F::one() - a),
        Activation::Tanh => F::one() - a * a,
        Activation::Relu => {
            if a > F::zero() {
                F::one()
            } else {
                F::zero()
            }
        }
        Activation::LeakyRelu { alpha } => {
            if a > F::zero() {
                F::one()
            } else {
                F::of(alpha)
            }
        }
        Activation::Identity => F::one(),
    }
}

/// A Wᵀ: the pre-activation of the next layer before its bias, which the caller adds in the
/// same sweep as the activation.
fn times_weights_t<F: Real>(a: ArrayView2<F>, w: ArrayView2<F>) -> Array2<F> {
    let mut z = Array2::<F>::zeros((a.nrows(), w.nrows()));
    general_mat_mul(F::one(), &a, &w.t(), F::zero(), &mut z);
    z
}

/// Replaces each row of logits with softmax probabilities (row maximum subtracted) and
/// returns, per row, log Σ_j exp(z_j − max) + max, i.e. log of the normaliser.
fn softmax_rows<F: Real>(z: &mut Array2<F>) -> Array1<F> {
    let mut log_norm = Array1::<F>::zeros(z.nrows());
    for (mut row, ln) in z.axis_iter_mut(Axis(0)).zip(log_norm.iter_mut()) {
        let max = row.fold(F::neg_infinity(), |m, &v| m.max(v));
        let mut sum = F::zero();
        row.mapv_inplace(|v| {
            let e = (v - max).exp();
            sum += e;
            e
        });
        let inv = F::one() / sum;
        row.mapv_inplace(|e| e * inv);
        *ln = max + sum.ln();
    }
    log_norm
}

/// The forward pass: activations a⁽²⁾ … a⁽ᴸ⁾ (the last one: probabilities for softmax).
pub struct Forward<F> {
    pub activations: Vec<Array2<F>>,
    /// Softmax output only: the logits Z⁽ᴸ⁾ and log Σ_j exp(z_j) per row, so that
    /// log P(y|x) = z_y − log Σ exp(z) stays exact where P itself underflows.
    pub softmax: Option<(Array2<F>, Array1<F>)>,
}

pub fn forward<F: Real>(spec: &NetSpec, layout: &ThetaLayout, theta: &[F], x: ArrayView2<F>) -> Forward<F> {
    let mut activations: Vec<Array2<F>> = Vec::with_capacity(layout.num_layers());
    let mut softmax = None;
    for l in 0..layout.num_layers() {
        let input = if l == 0 { x } else { activations[l - 1].view() };
        // Z = A Wᵀ + 1 bᵀ; A = f(Z)
        let mut z = times_weights_t(input, layout.weight(theta, l));
        let b = layout.bias(theta, l);
        match spec.activation_after(l) {
            Some(act) => {
                Zip::from(z.rows_mut()).par_for_each(|mut row| {
                    Zip::from(&mut row).and(&b).for_each(|zij, &bj| *zij = activate(act, *zij + bj));
                });
            }
            None => {
                z += &b;
                let logits = z.clone();
                let log_norm = softmax_rows(&mut z);
                softmax = Some((logits, log_norm));
            }
        }
        activations.push(z);
    }
    Forward { activations, softmax }
}

/// ρ̂: the mean activation of each unit over the batch.
pub fn mean_activation<F: Real>(a: &Array2<F>) -> Array1<F> {
    a.mean_axis(Axis(0)).expect("batch is not empty")
}

/// β Σ_j KL(ρ‖ρ̂_j), accumulated in f64.
pub fn kl_sparsity<F: Real>(rho: f64, beta: f64, rho_hat: &Array1<F>) -> f64 {
    beta * rho_hat
        .iter()
        .map(|&rh| {
            let rh = rh.f64();
            rho * (rho / rh).ln() + (1.0 - rho) * ((1.0 - rho) / (1.0 - rh)).ln()
        })
        .sum::<f64>()
}

/// (λ/2) Σ_l ‖W⁽ˡ⁾‖², accumulated in f64.
pub fn weight_decay_cost<F: Real>(spec: &NetSpec, layout: &ThetaLayout, theta: &[F]) -> f64 {
    let sum_sq: f64 = theta[layout.all_weights()].iter().map(|&w| w.f64() * w.f64()).sum();
    0.5 * spec.weight_decay * sum_sq
}

/// The data term of J and the output delta δ⁽ᴸ⁾ (not yet divided by m).
/// Squared error: J = (1/m) Σ ½‖a − y‖², δ = (a − y) ⊙ f′(a).
/// Softmax: J = −(1/m) Σ log P(yᵢ|xᵢ), δ = P − onehot(y).
fn output_cost_and_delta<F: Real>(
    spec: &NetSpec,
    fwd: &Forward<F>,
    x: ArrayView2<F>,
    y: TargetView<F>,
    want_delta: bool,
) -> (f64, Option<Array2<F>>) {
    let out = fwd.activations.last().expect("a network has an output layer");
    let m = out.nrows() as f64;
    match (spec.output, y) {
        (Output::Softmax, TargetView::Labels(labels)) => {
            let (logits, log_norm) = fwd.softmax.as_ref().expect("softmax forward keeps its logits");
            let mut nll = 0.0;
            for ((z, &ln), &label) in logits.axis_iter(Axis(0)).zip(log_norm).zip(labels) {
                nll -= (z[label] - ln).f64();
            }
            let delta = want_delta.then(|| {
                let mut d = out.clone();
                for (mut row, &label) in d.axis_iter_mut(Axis(0)).zip(labels) {
                    row[label] -= F::one();
                }
                d
            });
            (nll / m, delta)
        }
        (Output::SquaredError(act), y) => {
            let y = match y {
                TargetView::Inputs => x,
                TargetView::Values(v) => v,
                TargetView::Labels(_) => unreachable!("labels with a squared-error output are refused by set_data"),
            };
            // Per-row sums in parallel, then added in row order: the same cost on every run.
            let row_sq = Zip::from(out.rows())
                .and(y.rows())
                .par_map_collect(|a, y| a.iter().zip(y).map(|(&a, &y)| (a - y).f64() * (a - y).f64()).sum::<f64>());
            let sum_sq: f64 = row_sq.iter().sum();
            let delta = want_delta
                .then(|| Zip::from(out).and(&y).par_map_collect(|&a, &y| (a - y) * derivative_from_value(act, a)));
            (0.5 * sum_sq / m, delta)
        }
        (Output::Softmax, _) => unreachable!("softmax without labels is refused by set_data"),
    }
}

/// J(θ) on the batch (x, y) and, when `grad` is given, ∇J(θ) written into it (MATH.md,
/// "Backpropagation").
pub fn cost_and_grad<F: Real>(
    spec: &NetSpec,
    layout: &ThetaLayout,
    theta: &[F],
    x: ArrayView2<F>,
    y: TargetView<F>,
    grad: Option<&mut [F]>,
) -> Cost {
    let m = x.nrows();
    let fwd = forward(spec, layout, theta, x);
    let (data, delta_out) = output_cost_and_delta(spec, &fwd, x, y, grad.is_some());
    let weight_decay = weight_decay_cost(spec, layout, theta);

    // ρ̂ needs the forward pass over the whole batch before any backward step.
    let sparsity = spec.sparsity.map(|s| {
        let rho_hat = mean_activation(&fwd.activations[0]);
        let cost = kl_sparsity(s.target, s.weight, &rho_hat);
        (s, rho_hat, cost)
    });
    let cost = Cost { data, weight_decay, sparsity: sparsity.as_ref().map_or(0.0, |s| s.2) };

    let (Some(grad), Some(mut delta)) = (grad, delta_out) else {
        return cost;
    };
    let inv_m = F::of(1.0 / m as f64);
    let lambda = F::of(spec.weight_decay);
    for l in (0..layout.num_layers()).rev() {
        let a_prev = if l == 0 { x } else { fwd.activations[l - 1].view() };
        let w = layout.weight(theta, l);

        // ∇W = (1/m) δᵀ A + λ W;   ∇b = (1/m) Σᵢ δ
        let mut grad_w = layout.weight_mut(grad, l);
        grad_w.assign(&w);
        general_mat_mul(inv_m, &delta.t(), &a_prev, lambda, &mut grad_w);
        let grad_b = delta.sum_axis(Axis(0));
        Zip::from(layout.bias_mut(grad, l)).and(&grad_b).for_each(|g, &s| *g = s * inv_m);

        if l == 0 {
            break;
        }
        // δ⁽ˡ⁾ = (δ⁽ˡ⁺¹⁾ W + sparsity term) ⊙ f′(a⁽ˡ⁾)
        let mut delta_prev = Array2::<F>::zeros(a_prev.raw_dim());
        general_mat_mul(F::one(), &delta, &w, F::zero(), &mut delta_prev);
        let act = spec.hidden_activations[l - 1];
        match (&sparsity, l) {
            (Some((s, rho_hat, _)), 1) => {
                let (rho, beta) = (s.target, s.weight);
                let kl_delta: Array1<F> =
                    rho_hat.mapv(|rh| F::of(beta * (-rho / rh.f64() + (1.0 - rho) / (1.0 - rh.f64()))));
                Zip::from(delta_prev.rows_mut()).and(a_prev.rows()).par_for_each(|mut d, a| {
                    Zip::from(&mut d).and(&a).and(&kl_delta).for_each(|d, &a, &k| {
                        *d = (*d + k) * derivative_from_value(act, a);
                    });
                });
            }
            _ => Zip::from(&mut delta_prev).and(&a_prev).par_for_each(|d, &a| *d *= derivative_from_value(act, a)),
        }
        delta = delta_prev;
    }
    cost
}
