//! Nonlinear conjugate gradient, Polak–Ribière+ (Nocedal & Wright §5.2, eq. 5.44):
//! dₖ₊₁ = −gₖ₊₁ + β dₖ with β = max(0, gₖ₊₁ᵀ(gₖ₊₁ − gₖ) / gₖᵀgₖ), restarted along −∇J every
//! `restart_every` iterations (|θ| by default), whenever d is not a descent direction, and
//! when the line search fails along d. Steps come from the strong-Wolfe line search with
//! c₂ = 0.1, the first trial from the previous decrease, α₀ = 2(Jₖ − Jₖ₋₁)/∇Jₖᵀdₖ
//! (their eq. 3.60). Full batch only.

use serde::{Deserialize, Serialize};

use super::linalg::{descends, dot, norm, norm_l1};
use super::line_search::{LineSearch, LineSearchOutcome, Workspace};
use super::{Iterated, Outcome, Point, Run};
use crate::Result;

/// Nonlinear conjugate gradient with Polak–Ribière+ directions and a strong Wolfe line search
/// (Nocedal & Wright, §5.2).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConjugateGradient {
    /// Restart along −∇J after this many iterations; `None` means |θ|, the number of steps
    /// in which CG with exact line searches minimises a quadratic.
    pub restart_every: Option<usize>,
    /// The line search (c₂ = 0.1 by default, [`LineSearch::CONJUGATE_GRADIENT`]).
    pub line_search: LineSearch,
}

impl Default for ConjugateGradient {
    fn default() -> ConjugateGradient {
        ConjugateGradient { restart_every: None, line_search: LineSearch::CONJUGATE_GRADIENT }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) point: Point,
    /// The next search direction; empty before the first iteration.
    direction: Vec<f64>,
    /// Iterations since the last restart along −∇J.
    since_restart: usize,
    /// J before the latest step, for the first trial step.
    previous_cost: Option<f64>,
    /// The line search's vectors, reused from iteration to iteration; never saved.
    #[serde(skip)]
    line_search: Kept,
}

/// The line search's working vectors: not saved, and equal to any other.
#[derive(Clone, Debug, Default)]
struct Kept(Workspace);

impl PartialEq for Kept {
    fn eq(&self, _: &Kept) -> bool {
        true
    }
}

impl State {
    pub(super) fn dim(&self) -> Option<usize> {
        (!self.point.grad.is_empty()).then_some(self.point.grad.len())
    }

    /// One iteration with its line search. Its vectors live on the host, so every evaluation
    /// sends θ to the backend and takes ∇J back: on a GPU, 2·|θ|·4 bytes (f32) per evaluation.
    pub(super) fn iterate(&mut self, m: &ConjugateGradient, run: &mut Run, theta: &mut [f64]) -> Result<Outcome> {
        let n = theta.len();
        let restart_every = m.restart_every.unwrap_or(n).max(1);
        let mut steepest = self.direction.len() != n || self.since_restart >= restart_every;
        loop {
            let mut slope = if steepest { f64::NAN } else { dot(&self.point.grad, &self.direction) };
            if steepest || !descends(slope) {
                self.direction = self.point.grad.iter().map(|g| -g).collect();
                self.since_restart = 0;
                steepest = true;
                slope = dot(&self.point.grad, &self.direction);
            }
            let cost = self.point.cost();
            let alpha0 = match self.previous_cost.map(|prev| 2.0 * (cost - prev) / slope) {
                Some(a) if a > 0.0 && a.is_finite() => a,
                _ => (1.0 / norm_l1(&self.point.grad)).min(1.0),
            };
            let mut new_cost = cost;
            let outcome = m.line_search.search_in(
                &mut self.line_search.0,
                &mut run.full_batch(),
                theta,
                &mut new_cost,
                &mut self.point.grad,
                &self.direction,
                alpha0,
                slope,
            )?;
            match outcome {
                LineSearchOutcome::Accepted { alpha, .. } => {
                    self.point.cost = Some(new_cost);
                    self.previous_cost = Some(cost);
                    let g_old = std::mem::take(&mut self.line_search.0);
                    self.next_direction(g_old.previous_grad());
                    self.line_search.0 = g_old;
                    let it = Iterated { cost: new_cost, grad_norm: norm(&self.point.grad), step_size: alpha };
                    return Ok(Outcome::Iterated(it));
                }
                LineSearchOutcome::Failed { .. } if !steepest => steepest = true,
                LineSearchOutcome::Failed { evaluations, non_finite } => {
                    return run.line_search_failed(theta, evaluations, non_finite);
                }
            }
        }
    }

    /// d ← −g + β_PR+ d, with g the new gradient and `g_old` the previous one.
    fn next_direction(&mut self, g_old: &[f64]) {
        let g = &self.point.grad;
        let g_change: f64 = g.iter().zip(g_old).map(|(a, b)| a * (a - b)).sum();
        let beta = (g_change / dot(g_old, g_old)).max(0.0);
        for (d, &gi) in self.direction.iter_mut().zip(g) {
            *d = -gi + beta * *d;
        }
        self.since_restart = if beta > 0.0 { self.since_restart + 1 } else { 0 };
    }
}
