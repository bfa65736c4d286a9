//! Full-batch gradient descent with a fixed learning rate, θ ← θ − η∇J(θ) (MATH.md,
//! "Optimisation"). The step is [`UpdateRule::Plain`], the same piece the minibatch methods
//! and the GPU kernels use. A step may raise the cost: the [`super::Divergence`] rules decide
//! when that is a divergence rather than a recovery.

use serde::{Deserialize, Serialize};

use super::control::DivergenceCause;
use super::linalg::{all_finite, norm};
use super::{Iterated, Outcome, Point, Run};
use crate::Result;
use crate::backend::Batch;
use crate::update::{UpdateRule, UpdateState};

/// Full-batch gradient descent, θ ← θ − η ∇J(θ), with a fixed step η.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradientDescent {
    /// η.
    pub learning_rate: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) point: Point,
    update: UpdateState,
}

impl State {
    pub(super) fn new(dim: usize) -> State {
        State { point: Point::default(), update: UpdateState::new(UpdateRule::Plain, dim) }
    }

    pub(super) fn dim(&self) -> Option<usize> {
        (!self.point.grad.is_empty()).then_some(self.point.grad.len())
    }

    pub(super) fn iterate(&mut self, m: &GradientDescent, run: &mut Run, theta: &mut [f64]) -> Result<Outcome> {
        self.update.apply(theta, &self.point.grad, m.learning_rate);
        let cost = run.eval(theta, Batch::All, &mut self.point.grad)?;
        if !(cost.is_finite() && all_finite(&self.point.grad)) {
            return Err(run.diverge(DivergenceCause::NonFinite, Some(m.learning_rate), theta));
        }
        self.point.cost = Some(cost);
        Ok(Outcome::Iterated(Iterated { cost, grad_norm: norm(&self.point.grad), step_size: m.learning_rate }))
    }
}
