//! Limited-memory BFGS (Nocedal & Wright, Algorithms 7.4 and 7.5), as minFunc runs it for the
//! UFLDL exercises: the two-loop recursion over the last m correction pairs (s, y) with the
//! initial Hessian γI, γ = sᵀy/yᵀy; a strong-Wolfe line search from α = 1 (the first step,
//! along −∇J, from min(1, 1/‖∇J‖₁)); pairs with too little curvature are skipped. Full batch
//! only: L-BFGS needs the same J at every evaluation.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::control::StopReason;
use super::linalg::{axpy, axpy_dot, descends, dot, norm, norm_l1};
use super::line_search::{LineSearch, LineSearchOutcome};
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
}

impl State {
    pub(super) fn dim(&self) -> Option<usize> {
        (!self.point.grad.is_empty()).then_some(self.point.grad.len())
    }

    /// One iteration with its line search. Its vectors live on the host, so every evaluation
    /// sends θ to the backend and takes ∇J back: on a GPU, 2·|θ|·4 bytes (f32) per evaluation.
    pub(super) fn iterate(&mut self, m: &Lbfgs, run: &mut Run, theta: &mut [f64]) -> Result<Outcome> {
        let mut d = vec![0.0; theta.len()];
        loop {
            let steepest = self.pairs.is_empty();
            direction(&self.pairs, &self.point.grad, &mut d);
            if !descends(dot(&self.point.grad, &d)) {
                // Rounding can spoil H's positive definiteness: forget it and use −∇J.
                if steepest {
                    return Ok(Outcome::Stopped(StopReason::LineSearchFailed));
                }
                self.pairs.clear();
                continue;
            }
            let alpha0 = if steepest { (1.0 / norm_l1(&self.point.grad)).min(1.0) } else { 1.0 };
            let g_old = self.point.grad.clone();
            let mut cost = self.point.cost();
            let outcome =
                m.line_search.search(&mut run.full_batch(), theta, &mut cost, &mut self.point.grad, &d, alpha0)?;
            match outcome {
                LineSearchOutcome::Accepted { alpha, .. } => {
                    self.point.cost = Some(cost);
                    remember(&mut self.pairs, m.memory, alpha, &d, &g_old, &self.point.grad);
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
/// Each step's update of d and the next step's dot product share one pass over d
/// ([`axpy_dot`]): 2m + 2 passes over |θ|-long vectors instead of 4m + 1.
fn direction(pairs: &VecDeque<Pair>, grad: &[f64], d: &mut [f64]) {
    for (di, &gi) in d.iter_mut().zip(grad) {
        *di = -gi;
    }
    let n = pairs.len();
    let Some(newest) = pairs.back() else { return };
    let mut alphas = vec![0.0; n];
    // Newest to oldest: αᵢ = ρᵢ sᵢᵀd, d ← d − αᵢ yᵢ.
    let mut s_dot_d = dot(&newest.s, d);
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
    d.iter_mut().for_each(|di| *di *= gamma);
    // Oldest to newest: βᵢ = ρᵢ yᵢᵀd, d ← d + (αᵢ − βᵢ) sᵢ.
    let mut y_dot_d = dot(&pairs[0].y, d);
    for i in 0..n {
        let p = &pairs[i];
        let beta = p.rho * y_dot_d;
        if i + 1 < n {
            y_dot_d = axpy_dot(alphas[i] - beta, &p.s, d, &pairs[i + 1].y);
        } else {
            axpy(alphas[i] - beta, &p.s, d);
        }
    }
}

/// Adds the pair of the step just taken, dropping the oldest beyond `memory`; skips it
/// when yᵀs ≤ ε yᵀy (no usable curvature, e.g. after a step accepted without the curvature
/// condition), as scipy's L-BFGS-B does.
fn remember(pairs: &mut VecDeque<Pair>, memory: usize, alpha: f64, d: &[f64], g_old: &[f64], g_new: &[f64]) {
    let s: Vec<f64> = d.iter().map(|di| alpha * di).collect();
    let y: Vec<f64> = g_new.iter().zip(g_old).map(|(a, b)| a - b).collect();
    let ys = dot(&y, &s);
    let enough_curvature = ys > f64::EPSILON * dot(&y, &y);
    if !enough_curvature {
        return;
    }
    while pairs.len() >= memory {
        pairs.pop_front();
    }
    pairs.push_back(Pair { s, y, rho: 1.0 / ys });
}
