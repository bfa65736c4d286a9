//! Limited-memory BFGS (Nocedal & Wright, Algorithms 7.4 and 7.5), as minFunc runs it for the
//! UFLDL exercises: the two-loop recursion over the last m correction pairs (s, y) with the
//! initial Hessian γI, γ = sᵀy/yᵀy; a strong-Wolfe line search from α = 1 (the first step,
//! along −∇J, from min(1, 1/‖∇J‖₁)); pairs with too little curvature are skipped. Full batch
//! only: L-BFGS needs the same J at every evaluation.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::control::StopReason;
use super::linalg::{axpy, axpy_dot, correction_pair, descends, dot, negate_dot, norm, norm_l1, scale_dot};
use super::line_search::{LineSearch, LineSearchOutcome, Workspace};
use super::{Iterated, Outcome, Point, Run};
use crate::{Error, Result};

/// L-BFGS settings. Defaults: memory m = 100 (minFunc's `Corr`, which the UFLDL exercises
/// run with; scipy uses 10, and large networks should too: memory costs 2m|θ| f64) and the
/// quasi-Newton line search (c₁ = 1e-4, c₂ = 0.9, at most 25 evaluations).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lbfgs {
    /// Correction pairs kept.
    pub memory: usize,
    /// The Wolfe line search each iteration runs.
    pub line_search: LineSearch,
}

impl Lbfgs {
    /// Correction pairs kept: minFunc's default, 100.
    pub const DEFAULT_MEMORY: usize = 100;

    /// The memory `wgnn train` uses for a network of `parameters` values: minFunc's 100 up to
    /// 50,000 parameters, 10 above (where 100 pairs would cost 200|θ| f64 and little gain).
    pub fn memory_for(parameters: usize) -> usize {
        if parameters <= 50_000 { Lbfgs::DEFAULT_MEMORY } else { 10 }
    }

    /// This method keeping `memory` correction pairs.
    pub fn with_memory(self, memory: usize) -> Lbfgs {
        Lbfgs { memory, ..self }
    }

    /// Errors (`Error::Data`): memory 0, or an invalid line search.
    pub fn validate(&self) -> Result<()> {
        if self.memory == 0 {
            return Err(Error::Data("L-BFGS memory must be at least 1 correction pair (usual: 10 to 100)".into()));
        }
        self.line_search.validate()
    }
}

impl Default for Lbfgs {
    fn default() -> Lbfgs {
        Lbfgs { memory: Lbfgs::DEFAULT_MEMORY, line_search: LineSearch::QUASI_NEWTON }
    }
}

/// s = θₖ₊₁ − θₖ, y = ∇Jₖ₊₁ − ∇Jₖ and ρ = 1/yᵀs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Pair {
    s: Vec<f64>,
    y: Vec<f64>,
    rho: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) point: Point,
    /// Oldest first.
    pairs: VecDeque<Pair>,
    /// Buffers reused from iteration to iteration; never saved.
    #[serde(skip)]
    work: Work,
}

/// The |θ|-long vectors an iteration needs besides the pairs — the direction, the line
/// search's trial point and gradients, and a spare pair (the one dropped, or one whose
/// curvature was refused) — kept so that no iteration asks the allocator for fresh ones
/// (on a 308,000-value θ each is 2.4 MB, a page fault every 4 kB when fresh). Working
/// memory only: not saved, and equal to any other (see [`State`]'s `PartialEq`).
#[derive(Clone, Debug, Default)]
struct Work {
    d: Vec<f64>,
    line_search: Workspace,
    spare: Option<Pair>,
}

impl PartialEq for Work {
    fn eq(&self, _: &Work) -> bool {
        true
    }
}

impl State {
    pub(super) fn dim(&self) -> Option<usize> {
        (!self.point.grad.is_empty()).then_some(self.point.grad.len())
    }

    /// One iteration with its line search. Its vectors live on the host, so every evaluation
    /// sends θ to the backend and takes ∇J back: on a GPU, 2·|θ|·4 bytes (f32) per evaluation.
    pub(super) fn iterate(&mut self, m: &Lbfgs, run: &mut Run, theta: &mut [f64]) -> Result<Outcome> {
        let Work { d, line_search, spare } = &mut self.work;
        d.resize(theta.len(), 0.0);
        loop {
            let steepest = self.pairs.is_empty();
            let slope = direction(&self.pairs, &self.point.grad, d);
            if !descends(slope) {
                // Rounding can spoil H's positive definiteness: forget it and use −∇J.
                if steepest {
                    return Ok(Outcome::Stopped(StopReason::LineSearchFailed));
                }
                self.pairs.clear();
                continue;
            }
            let alpha0 = if steepest { (1.0 / norm_l1(&self.point.grad)).min(1.0) } else { 1.0 };
            let mut cost = self.point.cost();
            let outcome = m.line_search.search_in(
                line_search,
                &mut run.full_batch(),
                theta,
                &mut cost,
                &mut self.point.grad,
                d,
                alpha0,
                slope,
            )?;
            match outcome {
                LineSearchOutcome::Accepted { alpha, .. } => {
                    self.point.cost = Some(cost);
                    let g_old = line_search.previous_grad();
                    remember(&mut self.pairs, spare, m.memory, alpha, d, g_old, &self.point.grad);
                    let it = Iterated { cost, grad_norm: norm(&self.point.grad), step_size: alpha };
                    return Ok(Outcome::Iterated(it));
                }
                LineSearchOutcome::Failed { .. } if !steepest => self.pairs.clear(),
                LineSearchOutcome::Failed { evaluations, non_finite } => {
                    return run.line_search_failed(theta, evaluations, non_finite);
                }
            }
        }
    }
}

/// d = −H∇J by the two-loop recursion (Nocedal & Wright Algorithm 7.4); −∇J without pairs.
/// Returns the slope ∇Jᵀd. Each step's update of d and the next step's dot product share one
/// pass over d ([`axpy_dot`], [`negate_dot`], [`scale_dot`]), the last update computing the
/// slope: 2m + 1 passes over |θ|-long vectors instead of 4m + 3, with the bits of the
/// separate passes.
fn direction(pairs: &VecDeque<Pair>, grad: &[f64], d: &mut [f64]) -> f64 {
    let n = pairs.len();
    let Some(newest) = pairs.back() else { return negate_dot(grad, d, grad) };
    let mut alphas = vec![0.0; n];
    // Newest to oldest: αᵢ = ρᵢ sᵢᵀd, d ← d − αᵢ yᵢ.
    let mut s_dot_d = negate_dot(grad, d, &newest.s);
    for i in (0..n).rev() {
        let p = &pairs[i];
        alphas[i] = p.rho * s_dot_d;
        if i > 0 {
            s_dot_d = axpy_dot(-alphas[i], &p.y, d, &pairs[i - 1].s);
        } else {
            axpy(-alphas[i], &p.y, d);
        }
    }
    let gamma = 1.0 / (newest.rho * dot(&newest.y, &newest.y));
    // Oldest to newest: βᵢ = ρᵢ yᵢᵀd, d ← d + (αᵢ − βᵢ) sᵢ.
    let mut y_dot_d = scale_dot(gamma, d, &pairs[0].y);
    for i in 0..n {
        let p = &pairs[i];
        let beta = p.rho * y_dot_d;
        let next = if i + 1 < n { &pairs[i + 1].y } else { grad };
        y_dot_d = axpy_dot(alphas[i] - beta, &p.s, d, next);
    }
    // After the last pair, the product taken was ∇Jᵀd.
    y_dot_d
}

/// Adds the pair of the step just taken, dropping the oldest beyond `memory`; skips it
/// when yᵀs ≤ ε yᵀy (no usable curvature, e.g. after a step accepted without the curvature
/// condition), as scipy's L-BFGS-B does. The new pair is written into `spare`'s vectors when
/// there is one, and the pair dropped (or refused) becomes the next spare.
fn remember(
    pairs: &mut VecDeque<Pair>,
    spare: &mut Option<Pair>,
    memory: usize,
    alpha: f64,
    d: &[f64],
    g_old: &[f64],
    g_new: &[f64],
) {
    let mut pair = spare.take().unwrap_or_else(|| Pair { s: Vec::new(), y: Vec::new(), rho: 0.0 });
    pair.s.resize(d.len(), 0.0);
    pair.y.resize(d.len(), 0.0);
    let (ys, yy) = correction_pair(alpha, d, g_new, g_old, &mut pair.s, &mut pair.y);
    let enough_curvature = ys > f64::EPSILON * yy;
    if !enough_curvature {
        *spare = Some(pair);
        return;
    }
    pair.rho = 1.0 / ys;
    while pairs.len() >= memory {
        *spare = pairs.pop_front();
    }
    pairs.push_back(pair);
}

#[cfg(test)]
mod tests {
    use super::super::linalg::BLOCK;
    use super::*;

    /// The two-loop recursion as Algorithm 7.4 writes it, one pass per operation (the form
    /// before the passes were fused), and the slope taken afterwards.
    fn reference(pairs: &VecDeque<Pair>, grad: &[f64]) -> (Vec<f64>, f64) {
        let mut d: Vec<f64> = grad.iter().map(|g| -g).collect();
        let n = pairs.len();
        if let Some(newest) = pairs.back() {
            let mut alphas = vec![0.0; n];
            for i in (0..n).rev() {
                alphas[i] = pairs[i].rho * dot(&pairs[i].s, &d);
                axpy(-alphas[i], &pairs[i].y, &mut d);
            }
            let gamma = 1.0 / (newest.rho * dot(&newest.y, &newest.y));
            d.iter_mut().for_each(|di| *di *= gamma);
            for i in 0..n {
                let beta = pairs[i].rho * dot(&pairs[i].y, &d);
                axpy(alphas[i] - beta, &pairs[i].s, &mut d);
            }
        }
        let slope = dot(grad, &d);
        (d, slope)
    }

    fn wave(n: usize, k: usize) -> Vec<f64> {
        (0..n).map(|i| (((i * (2 * k + 7919)) % 1013) as f64 / 101.0 - 5.0) * (1.0 + k as f64 / 3.0)).collect()
    }

    #[test]
    fn the_fused_two_loop_recursion_gives_the_reference_bits() {
        for n in [11, 2 * BLOCK + 5] {
            let grad = wave(n, 0);
            for m in 0..4 {
                let pairs: VecDeque<Pair> = (0..m)
                    .map(|k| {
                        let s = wave(n, 2 * k + 1);
                        // y close to s (positive curvature), but not a multiple of it.
                        let y: Vec<f64> = s.iter().zip(wave(n, 2 * k + 2)).map(|(s, w)| s + 0.1 * w).collect();
                        let rho = 1.0 / dot(&y, &s);
                        assert!(rho > 0.0);
                        Pair { s, y, rho }
                    })
                    .collect();
                let mut d = vec![f64::NAN; n];
                let slope = direction(&pairs, &grad, &mut d);
                let (d_ref, slope_ref) = reference(&pairs, &grad);
                assert!(d.iter().zip(&d_ref).all(|(a, b)| a.to_bits() == b.to_bits()), "d, n = {n}, m = {m}");
                assert_eq!(slope.to_bits(), slope_ref.to_bits(), "∇Jᵀd, n = {n}, m = {m}");
                assert!(slope < 0.0, "a descent direction");
            }
        }
    }

    #[test]
    fn pairs_reuse_the_vectors_of_the_pair_they_replace() {
        let n = 100;
        let (mut pairs, mut spare) = (VecDeque::new(), None);
        let d = wave(n, 1);
        let g_old = wave(n, 2);
        let g_new: Vec<f64> = g_old.iter().zip(&d).map(|(g, d)| g + 0.5 * d).collect();
        for k in 0..5 {
            remember(&mut pairs, &mut spare, 2, 1.0 + k as f64, &d, &g_old, &g_new);
        }
        assert_eq!(pairs.len(), 2);
        let newest = pairs.back().unwrap();
        assert!(newest.s.iter().zip(&d).all(|(s, d)| s.to_bits() == (5.0 * d).to_bits()));
        assert_eq!(newest.rho.to_bits(), (1.0 / dot(&newest.y, &newest.s)).to_bits());
        assert!(spare.is_some(), "the dropped pair is kept for the next one");
        // No curvature (y = 0): refused, its vectors kept as the spare, the pairs unchanged.
        let before = pairs.clone();
        remember(&mut pairs, &mut spare, 2, 1.0, &d, &g_old, &g_old);
        assert_eq!(pairs, before);
        assert!(spare.is_some());
    }
}
