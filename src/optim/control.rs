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
    /// Iterations (epochs for minibatch methods) at most.
    pub max_iterations: usize,
    /// Cost-and-gradient evaluations (line-search trials and minibatches included), checked
    /// between iterations, so a line search may go past it by up to its own budget.
    pub max_evaluations: Option<usize>,
    /// Converged when ‖∇J‖₂ ≤ `grad_tol` (for minibatch methods, the epoch's mean minibatch
    /// gradient norm). 0 turns it off.
    pub grad_tol: f64,
    /// Converged when the relative decrease of the best cost so far,
    /// (best − J) / max(|best|, |J|, 1), is ≤ `cost_tol` for `cost_patience` iterations in a
    /// row. 0 turns it off. For full-batch gradient descent an iteration whose cost rose
    /// above the best by more than [`Divergence::rise`] does not count: a fixed step that
    /// raised the cost has not converged. For the minibatch methods it counts, as in
    /// scikit-learn (an epoch mean is noisy; [`Divergence::explode`] catches real rises).
    pub cost_tol: f64,
    /// Iterations in a row the cost tolerance must hold.
    pub cost_patience: usize,
    /// When a run counts as diverged (an error, θ put back to the best point seen).
    #[serde(default)]
    pub divergence: Divergence,
}

/// When a run has diverged. With J* the best cost seen so far (full-batch methods: the lowest
/// J(θ) recorded, iteration 0 included; minibatch methods: the lowest epoch-mean cost, or
/// the first minibatch's cost, taken at the initial θ, if lower) and s = max(|J*|, 1):
/// - **non-finite**: a cost or gradient is NaN or infinite (every method);
/// - **exploded**: a recorded cost J (an epoch mean for SGD and Adam) exceeds
///   J* + `explode`·s (every method; the line-search methods never get there, since each
///   step lowers J);
/// - **no recovery** (full-batch gradient descent only): `patience` iterations in a row each
///   end with J > J* + `rise`·s without going below the lowest J since the run left J* (a
///   run coming back down after an overshoot is recovering; one that stays up or
///   oscillates there is not).
///
/// A diverged run ends in [`crate::Error::Diverged`] with θ put back to the best point seen:
/// for the full-batch methods the θ of J*; for the minibatch methods the θ at the end of the
/// epoch with the best validation metric when one was computed, else of the epoch whose
/// mean is J* (or the initial θ). The epoch mean is taken along the epoch, so it estimates
/// that θ's cost; a noisy run at its minimum stays far below J* + 10·s. Every backend and
/// precision applies the same rules; only a cost beyond f32's range tells them apart: where
/// the GPU's f32 cost overflows (non-finite) the CPU backends, which sum the cost in f64, see
/// it explode — at the same iteration, keeping the same θ.
///
/// Defaults ([`Divergence::DEFAULT`]): `explode` 10 (full-batch GD: 1e4), `patience` 20, `rise` 1e-4. On the 8×8
/// digits (softmax, λ = 1e-4, uniform initialisation, pixels 0–16) GD with η = 0.1 goes
/// J = 14.5 → 26.2 → 36.4 (2.5 J*) and stays above 14.5 for 10 iterations before falling to
/// 0.047 by iteration 200: a recovery, which these rules let run. GD with η = 1e10 gives
/// J = 4e18 at iteration 1, Adam with η = 1e3 an epoch mean of 3e5 against a first
/// minibatch cost of 15, SGD (Nesterov) with η = 1 one of 852: divergences. SGD with
/// η = 0.1 (epoch mean 113, 7.3 J*) is the largest η of those that still passes.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Divergence {
    /// How far above J*, in units of s, a cost may rise before the run counts as exploded.
    pub explode: f64,
    /// The same for full-batch gradient descent, whose rises the no-recovery rule watches: a
    /// fixed step can overshoot far and still recover (softmax on the digits from θ = 0 with
    /// η = 1 goes J = 2.30 → 1.31 → 33.5, then falls to 0.60 and 98% train accuracy), so
    /// only a cost this far above J* stops it at once, before it overflows.
    #[serde(default = "Divergence::default_explode_fixed_step")]
    pub explode_fixed_step: f64,
    /// Full-batch gradient descent: iterations in a row above J* + `rise`·s, none of them a
    /// new low of the excursion above J*, before the run counts as not recovering; 0 turns
    /// the rule off.
    pub patience: usize,
    /// A rise smaller than `rise`·s is rounding noise (f32 costs of a run at its minimum
    /// wander by ~1e-6 relative), not a rise: it neither counts towards `patience` nor stops
    /// gradient descent's cost-tolerance test from calling the run converged.
    pub rise: f64,
}

impl Default for Divergence {
    fn default() -> Divergence {
        Divergence::DEFAULT
    }
}

impl Divergence {
    /// Explode at 10× (10⁴× for fixed-step methods), no recovery after 20 iterations, a rise
    /// above 1e-4 relative.
    pub const DEFAULT: Divergence = Divergence { explode: 10.0, explode_fixed_step: 1e4, patience: 20, rise: 1e-4 };

    fn default_explode_fixed_step() -> f64 {
        Divergence::DEFAULT.explode_fixed_step
    }

    /// max(|J*|, 1): what a rise is measured in.
    pub fn scale(best: f64) -> f64 {
        best.abs().max(1.0)
    }

    /// The cost above which a run has exploded, given the best cost J*.
    pub fn explode_limit(&self, best: f64) -> f64 {
        best + self.explode * Divergence::scale(best)
    }

    /// [`Divergence::explode_limit`] for full-batch gradient descent (`explode_fixed_step`).
    pub fn explode_limit_fixed_step(&self, best: f64) -> f64 {
        best + self.explode_fixed_step * Divergence::scale(best)
    }

    /// True when J is above J* by more than the `rise` tolerance.
    pub fn rose(&self, best: f64, cost: f64) -> bool {
        cost - best > self.rise * Divergence::scale(best)
    }

    /// Errors (`Error::Data`): the explode factor or the rise tolerance not positive and finite.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("divergence factor (explode)", self.explode), ("divergence rise tolerance", self.rise)] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(Error::Data(format!("{name} {v} must be a positive number")));
            }
        }
        Ok(())
    }
}

impl Stop {
    /// For full-batch methods, minFunc's defaults: 500 iterations, ‖∇J‖ ≤ 1e-5, cost change
    /// ≤ 1e-9 (minFunc's `progTol`, here relative as in scipy's `ftol`). No evaluation limit
    /// (minFunc's is 1000), so raising the iteration limit is always enough.
    pub const FULL_BATCH: Stop = Stop {
        max_iterations: 500,
        max_evaluations: None,
        grad_tol: 1e-5,
        cost_tol: 1e-9,
        cost_patience: 1,
        divergence: Divergence::DEFAULT,
    };

    /// For minibatch methods, scikit-learn's MLP defaults: 200 epochs, stop when the epoch's
    /// mean cost has not improved by 1e-4 for 10 epochs in a row; no gradient test (a
    /// minibatch gradient does not vanish at the minimum).
    pub const MINIBATCH: Stop = Stop {
        max_iterations: 200,
        max_evaluations: None,
        grad_tol: 0.0,
        cost_tol: 1e-4,
        cost_patience: 10,
        divergence: Divergence::DEFAULT,
    };

    /// This limit with `max_iterations`.
    pub fn with_max_iterations(self, max_iterations: usize) -> Stop {
        Stop { max_iterations, ..self }
    }

    /// Errors (`Error::Data`): a tolerance negative or not finite, a cost patience of 0, or an
    /// invalid divergence rule.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("gradient tolerance", self.grad_tol), ("cost tolerance", self.cost_tol)] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::Data(format!("{name} {v} must be a finite number ≥ 0 (0 turns it off)")));
            }
        }
        if self.cost_patience == 0 {
            return Err(Error::Data("cost patience must be at least 1 iteration".into()));
        }
        self.divergence.validate()
    }
}

/// Why a run ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The iteration limit was reached.
    MaxIterations,
    /// The evaluation limit was reached.
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
    /// Why the run ended.
    pub reason: StopReason,
    /// Iterations (epochs) done, all runs together.
    pub iterations: usize,
    /// Cost-and-gradient evaluations over the run.
    pub evaluations: usize,
    /// Cost and gradient norm of the last record (minibatch methods: epoch means); `None`
    /// when nothing was recorded yet.
    pub cost: Option<f64>,
    /// ‖∇J‖ at the end, when known.
    pub grad_norm: Option<f64>,
    /// Best validation metric, when a validation metric was given.
    pub best_validation: Option<f64>,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Why a run diverged (the rules are [`Divergence`]'s).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cause", rename_all = "snake_case")]
pub enum DivergenceCause {
    /// A cost or gradient was NaN or infinite (gradient descent, a minibatch step).
    NonFinite,
    /// The line search (L-BFGS, CG) found no lower cost along −∇J and the cost or gradient
    /// was NaN or infinite at `non_finite` of the `tried` steps.
    LineSearchNonFinite {
        /// Steps tried.
        tried: usize,
        /// Steps whose cost or gradient was not finite.
        non_finite: usize,
    },
    /// The recorded cost J exceeded J* + `factor`·max(|J*|, 1), J* = `best`.
    Exploded {
        /// J.
        cost: f64,
        /// J*.
        best: f64,
        /// The factor allowed.
        factor: f64,
    },
    /// `iterations` iterations in a row ended above the best cost `best`; J is the last.
    NoRecovery {
        /// The last J.
        cost: f64,
        /// The best J.
        best: f64,
        /// Iterations above the best.
        iterations: usize,
    },
}

/// The point a diverged run was put back to: the best seen.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    /// Its iteration (epoch); 0 is the initial θ.
    pub iteration: usize,
    /// Its cost: J(θ) for full-batch methods; for minibatch methods the epoch's mean, or at
    /// iteration 0 the first minibatch's cost.
    pub cost: f64,
    /// Its validation metric, when it was chosen by that (minibatch methods with a metric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<f64>,
}

/// A diverged run, as [`crate::Error::Diverged`] reports it: what happened, where, and which
/// θ it left. The θ given to [`super::Optimizer::run`] holds the kept point; the optimizer
/// keeps the history up to and including the iteration that diverged and refuses to be run
/// again (its state belongs to the point that diverged, not to the kept one).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diverged {
    /// What happened.
    pub cause: DivergenceCause,
    /// The iteration (epoch) that diverged: the one recorded last for a rise, the one under
    /// way for a NaN.
    pub iteration: usize,
    /// Cost-and-gradient evaluations done, the failing one included.
    pub evaluations: usize,
    /// `None` only if no finite point was ever seen (not reported as a divergence).
    pub kept: Option<Kept>,
    /// The learning rate in use (gradient descent, SGD, Adam), for the advice to lower it.
    pub learning_rate: Option<f64>,
    /// Iterations are epochs (SGD, Adam).
    pub epochs: bool,
}

impl fmt::Display for Diverged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.epochs { "epoch" } else { "iteration" };
        write!(f, "training diverged at {unit} {} (evaluation {}): ", self.iteration, self.evaluations)?;
        match &self.cause {
            DivergenceCause::NonFinite if self.epochs => {
                write!(f, "a minibatch cost or gradient became NaN or infinite")?
            }
            DivergenceCause::NonFinite => write!(f, "the cost or gradient became NaN or infinite")?,
            DivergenceCause::LineSearchNonFinite { tried, non_finite } => write!(
                f,
                "no step lowered the cost and the cost or gradient was NaN or infinite at {non_finite} of the {tried} steps the line search tried"
            )?,
            DivergenceCause::Exploded { cost, best, factor } => write!(
                f,
                "the cost rose to {cost:.4e}, more than {factor}·max(|J*|, 1) above its best J* = {best:.4e}"
            )?,
            DivergenceCause::NoRecovery { cost, best, iterations } => write!(
                f,
                "the cost stayed above its best J* = {best:.4e} for {iterations} {unit}s in a row (now {cost:.4e})"
            )?,
        }
        match &self.kept {
            Some(Kept { iteration: 0, cost, .. }) if self.epochs => {
                write!(f, "; θ is put back to the initial θ (first minibatch cost {cost:.4e})")?
            }
            Some(Kept { iteration: 0, cost, .. }) => write!(f, "; θ is put back to the initial θ (cost {cost:.4e})")?,
            Some(Kept { iteration, validation: Some(v), .. }) => {
                write!(f, "; θ is put back to the best seen, {unit} {iteration} (validation metric {v:.4e})")?
            }
            Some(Kept { iteration, cost, .. }) if self.epochs => {
                write!(f, "; θ is put back to the best seen, epoch {iteration} (mean cost {cost:.4e})")?
            }
            Some(Kept { iteration, cost, .. }) => {
                write!(f, "; θ is put back to the best seen, iteration {iteration} (cost {cost:.4e})")?
            }
            None => write!(f, "; no finite point to go back to")?,
        }
        match self.learning_rate {
            Some(rate) => write!(f, ". Lower the learning rate (now {rate:e}) and try again."),
            None => write!(f, ". Check the data for extreme values and the initial θ."),
        }
    }
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
    /// Steps per iteration (minibatches per epoch).
    pub steps_per_iteration: usize,
    /// Evaluations so far.
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
    /// Go on.
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
    /// No callbacks.
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
