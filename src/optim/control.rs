//! When training stops and who may watch it: limits and tolerances ([`Stop`]), the
//! validation metric with early stopping, and the per-iteration callback ([`Hooks`]) that
//! draws progress and can ask to stop (Ctrl-C, a checkpoint to write). Plain settings and
//! reports; the loop that applies them is in `mod.rs`.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::history::Record;
use crate::{Error, Result};

/// Limits and tolerances; a run stops at the first one met. Iterations are epochs for the
/// minibatch methods. Limits count all runs of an [`super::Optimizer`] together, so a resumed
/// run with the same `Stop` ends where an uninterrupted one would.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stop {
    pub max_iterations: usize,
    /// Cost-and-gradient evaluations (line-search trials and minibatches included), checked
    /// between iterations, so a line search may go past it by up to its own budget.
    pub max_evaluations: Option<usize>,
    /// Converged when ‖∇J‖₂ ≤ `grad_tol` (for minibatch methods, the epoch's mean minibatch
    /// gradient norm). 0 turns it off.
    pub grad_tol: f64,
    /// Converged when the relative decrease of the best cost so far,
    /// (best − J) / max(|best|, |J|, 1), is ≤ `cost_tol` for `cost_patience` iterations in a
    /// row. 0 turns it off.
    pub cost_tol: f64,
    pub cost_patience: usize,
}

impl Stop {
    /// For full-batch methods, minFunc's defaults: 500 iterations, ‖∇J‖ ≤ 1e-5, cost change
    /// ≤ 1e-9 (minFunc's `progTol`, here relative as in scipy's `ftol`). No evaluation limit
    /// (minFunc's is 1000), so raising the iteration limit is always enough.
    pub const FULL_BATCH: Stop =
        Stop { max_iterations: 500, max_evaluations: None, grad_tol: 1e-5, cost_tol: 1e-9, cost_patience: 1 };

    /// For minibatch methods, scikit-learn's MLP defaults: 200 epochs, stop when the epoch's
    /// mean cost has not improved by 1e-4 for 10 epochs in a row; no gradient test (a
    /// minibatch gradient does not vanish at the minimum).
    pub const MINIBATCH: Stop =
        Stop { max_iterations: 200, max_evaluations: None, grad_tol: 0.0, cost_tol: 1e-4, cost_patience: 10 };

    pub fn with_max_iterations(self, max_iterations: usize) -> Stop {
        Stop { max_iterations, ..self }
    }

    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("gradient tolerance", self.grad_tol), ("cost tolerance", self.cost_tol)] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::Data(format!("{name} {v} must be a finite number ≥ 0 (0 turns it off)")));
            }
        }
        if self.cost_patience == 0 {
            return Err(Error::Data("cost patience must be at least 1 iteration".into()));
        }
        Ok(())
    }
}

/// Why a run ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    MaxIterations,
    MaxEvaluations,
    /// ‖∇J‖ fell to the gradient tolerance.
    GradientTolerance,
    /// The cost stopped decreasing by more than the cost tolerance.
    CostTolerance,
    /// The validation metric stopped improving (θ is restored to its best when asked, so the
    /// optimizer's state no longer matches θ: a finished run, not one to resume).
    EarlyStopping,
    /// The progress callback asked to stop. θ and the optimizer are left mid-run, ready to
    /// be saved and resumed.
    Interrupted,
    /// The line search found no lower cost along the L-BFGS/CG direction, even after a
    /// restart along −∇J: the minimum is reached to machine precision, or the gradient is
    /// wrong.
    LineSearchFailed,
}

impl StopReason {
    /// True for the reasons that mean "at a minimum" rather than "out of budget".
    pub fn converged(&self) -> bool {
        matches!(self, StopReason::GradientTolerance | StopReason::CostTolerance | StopReason::LineSearchFailed)
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StopReason::MaxIterations => "reached the iteration limit",
            StopReason::MaxEvaluations => "reached the evaluation limit",
            StopReason::GradientTolerance => "converged: the gradient norm fell below its tolerance",
            StopReason::CostTolerance => "converged: the cost stopped decreasing by more than its tolerance",
            StopReason::EarlyStopping => "stopped early: the validation metric stopped improving",
            StopReason::Interrupted => "interrupted",
            StopReason::LineSearchFailed => {
                "converged: the line search can lower the cost no further (machine precision, or a wrong gradient)"
            }
        })
    }
}

/// What one run did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub reason: StopReason,
    /// Iterations (epochs) done, all runs together.
    pub iterations: usize,
    pub evaluations: usize,
    /// Cost and gradient norm of the last record (minibatch methods: epoch means); `None`
    /// when nothing was recorded yet.
    pub cost: Option<f64>,
    pub grad_norm: Option<f64>,
    /// Best validation metric, when a validation metric was given.
    pub best_validation: Option<f64>,
    pub seconds: f64,
}

/// Early stopping on a held-out validation metric (lower is better).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    /// Compute the metric every this many iterations (epochs), and at iteration 0 for
    /// full-batch methods.
    pub every: usize,
    /// Stop after this many checks in a row without improvement; `None` only records it.
    pub patience: Option<usize>,
    /// An improvement must lower the best metric by more than this.
    pub min_delta: f64,
    /// On early stopping, put θ back to the best point seen.
    pub restore_best: bool,
}

impl Default for EarlyStopping {
    /// Every iteration, patience 10 (scikit-learn's `n_iter_no_change`), best restored.
    fn default() -> EarlyStopping {
        EarlyStopping { every: 1, patience: Some(10), min_delta: 0.0, restore_best: true }
    }
}

/// What the callback sees. It is called after every iteration with `record` set, and for
/// minibatch methods also after every minibatch step with `record` unset.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// Iterations (epochs) completed.
    pub iteration: usize,
    /// Minibatch steps done in the current epoch and steps per epoch (1 and 1 for
    /// full-batch methods).
    pub step: usize,
    pub steps_per_iteration: usize,
    pub evaluations: usize,
    /// The newest cost: the iteration's record, or the minibatch just evaluated.
    pub cost: f64,
    /// The record just appended to the history, at the end of an iteration.
    pub record: Option<&'a Record>,
    /// θ at the end of an iteration; `None` between minibatch steps, where a GPU backend
    /// keeps θ on the device.
    pub theta: Option<&'a [f64]>,
}

/// The callback's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// End the run as [`StopReason::Interrupted`]; it can be resumed.
    Stop,
}

type Metric<'a> = Box<dyn FnMut(&[f64]) -> Result<f64> + 'a>;
type Callback<'a> = Box<dyn FnMut(&Progress<'_>) -> Control + 'a>;

/// Optional observers of a run.
#[derive(Default)]
pub struct Hooks<'a> {
    pub(super) validation: Option<(Metric<'a>, EarlyStopping)>,
    pub(super) progress: Option<Callback<'a>>,
}

impl<'a> Hooks<'a> {
    pub fn new() -> Hooks<'a> {
        Hooks::default()
    }

    /// A held-out validation metric of θ, lower is better (a validation cost, an error
    /// rate). It must not change θ.
    pub fn validation(mut self, metric: impl FnMut(&[f64]) -> Result<f64> + 'a, early: EarlyStopping) -> Hooks<'a> {
        self.validation = Some((Box::new(metric), early));
        self
    }

    /// Called after every iteration (and minibatch step); return [`Control::Stop`] to end
    /// the run resumably.
    pub fn on_progress(mut self, callback: impl FnMut(&Progress<'_>) -> Control + 'a) -> Hooks<'a> {
        self.progress = Some(Box::new(callback));
        self
    }

    pub(super) fn validate(&self) -> Result<()> {
        if let Some((_, early)) = &self.validation {
            if early.every == 0 {
                return Err(Error::Data("validate every 0 iterations? use 1 or more".into()));
            }
            if early.patience == Some(0) {
                return Err(Error::Data("early-stopping patience must be at least 1 check".into()));
            }
            if !(early.min_delta >= 0.0 && early.min_delta.is_finite()) {
                return Err(Error::Data(format!("early-stopping min_delta {} must be ≥ 0", early.min_delta)));
            }
        }
        Ok(())
    }
}
