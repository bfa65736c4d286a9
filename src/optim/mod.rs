//! Optimizers: minimise J(θ) knowing only J and ∇J (MATH.md, "Optimisation"). Full-batch
//! gradient descent; minibatch SGD with momentum or Nesterov momentum and Adam, with
//! learning-rate schedules and seeded shuffling; L-BFGS and Polak–Ribière+ conjugate
//! gradient with a strong-Wolfe line search.
//!
//! Everything is written against [`Objective`]: a backend, CPU or GPU, through
//! [`BackendObjective`], or a plain function through [`FnObjective`]. Nothing here reads
//! files, prints or draws: the CLI watches a run through [`Hooks`], saves the serde-
//! serialisable [`Optimizer`] (method, counters, per-method state, [`History`]) in checkpoints
//! and resumes by deserialising it and calling [`Optimizer::run`] again with the θ saved
//! beside it. For every method a run stopped by [`Control::Stop`] or by a limit and then
//! resumed gives the same θ, bit for bit, as one uninterrupted run (provided the JSON
//! round trip keeps f64 exactly: serde_json needs its `float_roundtrip` feature for that).
//!
//! Evaluations cross the backend interface as θ (host → backend) and ∇J plus the scalar cost
//! (backend → host), nothing more: on a GPU, 2·|θ|·4 bytes over the bus per evaluation, which
//! L-BFGS, CG and full-batch gradient descent pay every time. They keep their vectors on the
//! host and reuse them from iteration to iteration (no fresh |θ|-long buffer per step): L-BFGS
//! about 2m + 7 vectors of |θ| f64, a spare pair included (m = memory, 100 by default: 5 MB for the
//! 64-25-64 sparse autoencoder, 0.5 GB for a 784-196-784 one, where `memory: 10` is wiser),
//! CG 6.
//! A checkpoint should store those vectors as tensors: as JSON text they are ~20 bytes a
//! number.
//! The first-order update rules are a separate piece ([`UpdateState`]) so the GPU backend
//! can run the same formulas as kernels on θ in device memory and be tested against them.
//!
//! On a backend that offers [`crate::backend::DeviceTraining`] (the GPU), the minibatch methods
//! keep θ and the moments in device memory for the whole run: per step only the minibatch
//! cost and ‖∇J‖ cross the bus, θ comes back at each epoch end (records, hooks, checkpoints).
//!
//! A run that diverges — a NaN or infinite cost or gradient, a cost that explodes, or (fixed-step
//! gradient descent) one that rises and does not come back: the rules are [`Divergence`]'s —
//! ends in [`crate::Error::Diverged`] with θ put back to the best point seen and the history
//! kept in the optimizer, on every backend alike. A line-search trial that overflows is not
//! an error: the search backs off. A NaN or infinity at the initial θ is
//! [`crate::Error::Data`], θ untouched.

mod cg;
mod control;
mod gd;
mod history;
mod lbfgs;
mod linalg;
mod line_search;
mod minibatch;
mod objective;
mod schedule;

use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use crate::update::{UpdateRule, UpdateScalars, UpdateState};
pub use cg::ConjugateGradient;
pub use control::{
    Control, Diverged, Divergence, DivergenceCause, EarlyStopping, Hooks, Kept, Progress, Stop, StopReason, Summary,
};
pub use gd::GradientDescent;
pub use history::{History, Record};
pub use lbfgs::Lbfgs;
pub use line_search::{CostAndGrad, LineSearch, LineSearchOutcome};
pub use minibatch::{Minibatch, clip_by_global_norm};
pub use objective::{BackendObjective, FnObjective, Objective};
pub use schedule::{Plateau, Schedule, ScheduleState};

use crate::backend::Batch;
use crate::{Error, Result};
use linalg::{all_finite, norm};

/// An optimization method and its hyperparameters. Serialised with a `method` tag, e.g.
/// `{"method": "lbfgs", "memory": 100, "line_search": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Method {
    /// Full-batch gradient descent with a fixed step.
    GradientDescent(GradientDescent),
    /// SGD (plain, momentum, Nesterov) and Adam: the update rule is part of the config.
    Minibatch(Minibatch),
    /// L-BFGS with a Wolfe line search (Nocedal & Wright, Algorithm 7.5).
    Lbfgs(Lbfgs),
    /// Nonlinear conjugate gradient (Polak–Ribière+, Nocedal & Wright §5.2).
    ConjugateGradient(ConjugateGradient),
}

impl Method {
    /// Full-batch gradient descent with step η = `learning_rate`.
    pub fn gradient_descent(learning_rate: f64) -> Method {
        Method::GradientDescent(GradientDescent { learning_rate })
    }

    /// SGD with scikit-learn's defaults: Nesterov momentum 0.9, batches of 200, constant η.
    pub fn sgd(learning_rate: f64) -> Method {
        Method::Minibatch(Minibatch::sgd(learning_rate))
    }

    /// Adam with β₁ = 0.9, β₂ = 0.999, ε = 1e-8, batches of 200, constant η.
    pub fn adam(learning_rate: f64) -> Method {
        Method::Minibatch(Minibatch::adam(learning_rate))
    }

    /// L-BFGS with its defaults.
    pub fn lbfgs() -> Method {
        Method::Lbfgs(Lbfgs::default())
    }

    /// Conjugate gradient with its defaults.
    pub fn cg() -> Method {
        Method::ConjugateGradient(ConjugateGradient::default())
    }

    /// Short name for logs: `gd`, `sgd`, `sgd+momentum`, `sgd+nesterov`, `adam`, `lbfgs`, `cg`.
    pub fn name(&self) -> &'static str {
        match self {
            Method::GradientDescent(_) => "gd",
            Method::Minibatch(m) => m.rule.name(),
            Method::Lbfgs(_) => "lbfgs",
            Method::ConjugateGradient(_) => "cg",
        }
    }

    /// [`Stop::MINIBATCH`] for minibatch methods, [`Stop::FULL_BATCH`] for the others.
    pub fn default_stop(&self) -> Stop {
        match self {
            Method::Minibatch(_) => Stop::MINIBATCH,
            _ => Stop::FULL_BATCH,
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Method::GradientDescent(_) => Kind::GradientDescent,
            Method::Minibatch(_) => Kind::Minibatch,
            Method::Lbfgs(_) | Method::ConjugateGradient(_) => Kind::LineSearch,
        }
    }

    /// Errors (`Error::Data`, one line): a parameter out of its range.
    pub fn validate(&self) -> Result<()> {
        match self {
            Method::GradientDescent(m) => positive("learning rate", m.learning_rate),
            Method::Minibatch(m) => m.validate(),
            Method::Lbfgs(m) => m.validate(),
            Method::ConjugateGradient(m) => m.line_search.validate(),
        }
    }
}

pub(crate) fn positive(name: &str, v: f64) -> Result<()> {
    if v > 0.0 && v.is_finite() { Ok(()) } else { Err(Error::Data(format!("{name} {v} must be a positive number"))) }
}

/// A method with everything it has learned about the problem so far: iteration and
/// evaluation counts, its vectors (moments, L-BFGS pairs, CG direction, the current cost and
/// gradient), early-stopping state and the history. Serialise it to checkpoint; deserialise
/// and [`Optimizer::run`] again, with the θ it left, to resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Optimizer {
    method: Method,
    counters: Counters,
    /// Made on the first run, when |θ| is known.
    state: Option<MethodState>,
    history: History,
}

/// Progress shared by every method. Only finite numbers and `Option`s: JSON has no
/// infinity.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Counters {
    iteration: usize,
    evaluations: usize,
    seconds: f64,
    best_cost: Option<f64>,
    /// Iterations in a row whose relative cost decrease was within the cost tolerance.
    stalled: usize,
    best_validation: Option<f64>,
    best_theta: Option<Vec<f64>>,
    checks_without_improvement: usize,
    /// The lowest cost seen for the [`Divergence`] rules (the initial θ's included) and the
    /// θ that gave it.
    #[serde(default)]
    best: Option<Best>,
    /// Gradient descent: iterations in a row that ended above `best` by more than the rise
    /// tolerance without a new low of the excursion above it (a run coming back down resets it).
    #[serde(default)]
    above_best: usize,
    /// Gradient descent: the lowest cost since the run last left `best` (None at `best`).
    #[serde(default)]
    excursion_low: Option<f64>,
    /// Set when the run diverged: it must not be run again.
    #[serde(default)]
    diverged: Option<Diverged>,
}

/// The lowest cost seen and where. θ is copied only by the fixed-step methods (gradient
/// descent, SGD, Adam); the line-search methods lower the cost at every step, so their θ is
/// always the best and `theta` stays empty.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Best {
    iteration: usize,
    cost: f64,
    theta: Vec<f64>,
}

/// How a method's costs are judged by the [`Divergence`] rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// L-BFGS, CG: every step lowers the cost.
    LineSearch,
    /// Full-batch gradient descent with a fixed step: the cost may rise.
    GradientDescent,
    /// SGD and Adam: noisy epoch means.
    Minibatch,
}

impl Optimizer {
    /// An optimizer running `method`. Errors: `method` invalid ([`Method::validate`]).
    pub fn new(method: Method) -> Result<Optimizer> {
        method.validate()?;
        Ok(Optimizer { method, counters: Counters::default(), state: None, history: History::default() })
    }

    /// The method it runs.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Every iteration recorded so far, over all runs.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Iterations (epochs) completed over all runs.
    pub fn iterations(&self) -> usize {
        self.counters.iteration
    }

    /// Cost-and-gradient evaluations so far, over all runs.
    pub fn evaluations(&self) -> usize {
        self.counters.evaluations
    }

    /// The best validation metric and the θ that gave it, when a validation metric was
    /// given. A run restores it only on early stopping (and, for minibatch methods, on
    /// divergence); take it from here to use it after a run that ended otherwise.
    pub fn best(&self) -> Option<(&[f64], f64)> {
        Some((self.counters.best_theta.as_deref()?, self.counters.best_validation?))
    }

    /// The lowest cost seen so far and its iteration (see [`Divergence`] for what the cost is
    /// for each method): the point a diverging run goes back to.
    pub fn best_cost(&self) -> Option<(usize, f64)> {
        self.counters.best.as_ref().map(|b| (b.iteration, b.cost))
    }

    /// How the run diverged, if it did (it then refuses to run again).
    pub fn diverged(&self) -> Option<&Diverged> {
        self.counters.diverged.as_ref()
    }

    /// Minimises `objective` from θ, in place, until a [`Stop`] criterion is met, an error
    /// occurs, or the progress callback asks to stop. Called again (or after
    /// deserialising), it continues where it stopped; θ must then be the one it left.
    ///
    /// A run that diverges ([`Divergence`]) returns [`Error::Diverged`] with θ put back to the
    /// best point seen and [`Optimizer::history`] holding the records up to the divergence;
    /// the optimizer then refuses to run again. After another error θ holds the last point
    /// where the cost and gradient were finite; the optimizer should not be resumed.
    pub fn run(
        &mut self,
        objective: &mut dyn Objective,
        theta: &mut [f64],
        stop: &Stop,
        hooks: &mut Hooks<'_>,
    ) -> Result<Summary> {
        self.method.validate()?;
        stop.validate()?;
        hooks.validate()?;
        if let Some(d) = &self.counters.diverged {
            return Err(Error::Data(format!(
                "this run diverged at {} {} and cannot be continued; start afresh with a lower learning rate (or another method), from its saved θ if you like",
                if d.epochs { "epoch" } else { "iteration" },
                d.iteration
            )));
        }
        let dim = objective.dim();
        if theta.len() != dim {
            return Err(Error::Shape(format!("θ has {} values but the objective takes {dim}", theta.len())));
        }
        if objective.num_examples() == 0 {
            return Err(Error::Data("there are no examples to train on".into()));
        }
        let state = match &mut self.state {
            Some(state) => {
                state.check(&self.method, dim)?;
                state
            }
            None => self.state.insert(MethodState::new(&self.method, dim)),
        };
        let mut run = Run {
            objective,
            stop,
            hooks,
            seconds_before: self.counters.seconds,
            counters: &mut self.counters,
            history: &mut self.history,
            started: Instant::now(),
            stop_requested: false,
            steps_per_iteration: 1,
            on_device: false,
            kind: self.method.kind(),
        };
        let result = drive(&self.method, state, &mut run, theta);
        run.counters.seconds = run.seconds();
        result
    }
}

/// The loop every method shares: iterate, record, validate, test the stopping rules, call
/// back.
fn drive(method: &Method, state: &mut MethodState, run: &mut Run, theta: &mut [f64]) -> Result<Summary> {
    let reason = 'run: {
        if let Some(initial) = state.start(run, theta)?
            && run.counters.iteration == 0
            && run.history.is_empty()
        {
            run.record(initial, theta)?;
            if let Some(reason) = run.finish_iteration(theta) {
                break 'run reason;
            }
        }
        loop {
            if run.counters.iteration >= run.stop.max_iterations {
                break StopReason::MaxIterations;
            }
            if run.stop.max_evaluations.is_some_and(|max| run.counters.evaluations >= max) {
                break StopReason::MaxEvaluations;
            }
            match state.iterate(method, run, theta)? {
                Outcome::Stopped(reason) => break reason,
                Outcome::Iterated(it) => {
                    run.counters.iteration += 1;
                    let monitored = run.record(it, theta)?;
                    state.observe(method, monitored);
                    if let Some(reason) = run.finish_iteration(theta) {
                        break reason;
                    }
                }
            }
        }
    };
    if reason == StopReason::EarlyStopping
        && let Some((_, early)) = &run.hooks.validation
        && early.restore_best
        && let Some(best) = &run.counters.best_theta
    {
        theta.copy_from_slice(best);
    }
    let last = run.history.last();
    Ok(Summary {
        reason,
        iterations: run.counters.iteration,
        evaluations: run.counters.evaluations,
        cost: last.map(|r| r.cost),
        grad_norm: last.map(|r| r.grad_norm),
        best_validation: run.counters.best_validation,
        seconds: run.seconds(),
    })
}

/// One run's view of the objective, settings and bookkeeping, handed to the methods.
struct Run<'r, 'h> {
    objective: &'r mut dyn Objective,
    stop: &'r Stop,
    hooks: &'r mut Hooks<'h>,
    counters: &'r mut Counters,
    history: &'r mut History,
    started: Instant,
    seconds_before: f64,
    /// The callback asked to stop at a minibatch step that ended an epoch.
    stop_requested: bool,
    /// Minibatch steps per iteration, for [`Progress`] (1 for full-batch methods).
    steps_per_iteration: usize,
    /// θ and the update state are loaded into the objective's [`crate::backend::DeviceTraining`] (minibatch
    /// methods on a GPU): loaded once per run, since nothing else can use the objective
    /// while the run holds it.
    on_device: bool,
    kind: Kind,
}

/// What an iteration produced, before it becomes a [`Record`].
#[derive(Clone, Copy, Debug)]
struct Iterated {
    cost: f64,
    grad_norm: f64,
    step_size: f64,
}

enum Outcome {
    Iterated(Iterated),
    Stopped(StopReason),
}

impl Run<'_, '_> {
    fn seconds(&self) -> f64 {
        self.seconds_before + self.started.elapsed().as_secs_f64()
    }

    fn num_examples(&self) -> usize {
        self.objective.num_examples()
    }

    /// J and ∇J on `batch`, counted.
    fn eval(&mut self, theta: &[f64], batch: Batch<'_>, grad: &mut [f64]) -> Result<f64> {
        self.counters.evaluations += 1;
        self.objective.eval(theta, batch, grad)
    }

    /// Full-batch J and ∇J, counted: the function the line search probes.
    fn full_batch(&mut self) -> impl FnMut(&[f64], &mut [f64]) -> Result<f64> + '_ {
        |x, g| self.eval(x, Batch::All, g)
    }

    /// Reports a minibatch step to the callback; true when it asks to stop.
    fn report_step(&mut self, step: usize, cost: f64) -> bool {
        let Some(callback) = &mut self.hooks.progress else { return false };
        let progress = Progress {
            iteration: self.counters.iteration,
            step,
            steps_per_iteration: self.steps_per_iteration,
            evaluations: self.counters.evaluations,
            cost,
            record: None,
            theta: None,
        };
        let stop = callback(&progress) == Control::Stop;
        self.stop_requested |= stop;
        stop
    }

    /// Appends the record of the iteration just completed, first testing the [`Divergence`]
    /// rules on its cost (a divergence is recorded, then returned as the error with θ put
    /// back to the best point), then validating when due and updating the cost-tolerance,
    /// early-stopping and best-point counters. Returns the value a reduce-on-plateau
    /// schedule watches: the validation metric if computed, else the cost.
    fn record(&mut self, it: Iterated, theta: &mut [f64]) -> Result<f64> {
        let divergence = self.stop.divergence;
        let c = &mut *self.counters;
        let mut cause = None;
        if let Some(best) = &c.best {
            let fixed_step = self.kind == Kind::GradientDescent;
            let (limit, factor) = match fixed_step {
                true => (divergence.explode_limit_fixed_step(best.cost), divergence.explode_fixed_step),
                false => (divergence.explode_limit(best.cost), divergence.explode),
            };
            if it.cost > limit {
                cause = Some(DivergenceCause::Exploded { cost: it.cost, best: best.cost, factor });
            } else if self.kind == Kind::GradientDescent {
                // Above J*: progress only when the excursion reaches a new low (by more than
                // the rise tolerance); a fixed step that overshot and is coming back is
                // recovering, one that stays up or oscillates there is not.
                if divergence.rose(best.cost, it.cost) {
                    let new_low = c.excursion_low.is_none_or(|low| divergence.rose(it.cost, low));
                    c.above_best = if new_low { 0 } else { c.above_best + 1 };
                    if new_low {
                        c.excursion_low = Some(it.cost);
                    }
                } else {
                    (c.above_best, c.excursion_low) = (0, None);
                }
                if divergence.patience > 0 && c.above_best >= divergence.patience {
                    cause =
                        Some(DivergenceCause::NoRecovery { cost: it.cost, best: best.cost, iterations: c.above_best });
                }
            }
        }
        if let Some(cause) = cause {
            self.push_record(it, None);
            return Err(self.diverge(cause, Some(it.step_size), theta));
        }
        let c = &mut *self.counters;
        let mut validation = None;
        if let Some((metric, early)) = &mut self.hooks.validation
            && c.iteration.is_multiple_of(early.every)
        {
            let m = metric(theta)?;
            if !m.is_finite() {
                return Err(Error::Data(format!(
                    "the validation metric is {m} at iteration {}: it must be a finite number (lower is better)",
                    c.iteration
                )));
            }
            validation = Some(m);
            if c.best_validation.is_none_or(|best| m < best - early.min_delta) {
                c.best_validation = Some(m);
                match &mut c.best_theta {
                    Some(best) => best.copy_from_slice(theta),
                    None => c.best_theta = Some(theta.to_vec()),
                }
                c.checks_without_improvement = 0;
            } else {
                c.checks_without_improvement += 1;
            }
        }
        if let Some(best) = c.best_cost {
            let decrease = (best - it.cost) / best.abs().max(it.cost.abs()).max(1.0);
            // A fixed step that raised the cost has not converged (a line search never
            // raises it; minibatch epoch means are noisy, and scikit-learn counts them).
            let rose = self.kind == Kind::GradientDescent && divergence.rose(best, it.cost);
            c.stalled = if decrease <= self.stop.cost_tol && !rose { c.stalled + 1 } else { 0 };
        }
        c.best_cost = Some(c.best_cost.map_or(it.cost, |b| b.min(it.cost)));
        self.offer_best(it.cost, theta);
        self.push_record(it, validation);
        Ok(validation.unwrap_or(it.cost))
    }

    fn push_record(&mut self, it: Iterated, validation: Option<f64>) {
        self.history.records.push(Record {
            iteration: self.counters.iteration,
            cost: it.cost,
            grad_norm: it.grad_norm,
            step_size: it.step_size,
            evaluations: self.counters.evaluations,
            seconds: self.seconds_before + self.started.elapsed().as_secs_f64(),
            validation,
        });
    }

    /// The first minibatch's cost, taken at the initial θ, is the minibatch methods' first
    /// best point (their first record comes only at the end of an epoch).
    fn offer_start(&mut self, cost: f64, theta: &[f64]) {
        if self.counters.best.is_none() {
            self.offer_best(cost, theta);
        }
    }

    /// Makes (cost, θ) at the current iteration the best point if it is the first or lower
    /// than the best; the fixed-step methods keep a copy of θ.
    fn offer_best(&mut self, cost: f64, theta: &[f64]) {
        let iteration = self.counters.iteration;
        let keep_theta = self.kind != Kind::LineSearch;
        match &mut self.counters.best {
            Some(best) if cost < best.cost => {
                best.iteration = iteration;
                best.cost = cost;
                if keep_theta {
                    best.theta.copy_from_slice(theta);
                }
            }
            Some(_) => {}
            None => {
                let theta = if keep_theta { theta.to_vec() } else { Vec::new() };
                self.counters.best = Some(Best { iteration, cost, theta });
            }
        }
    }

    /// Ends a diverging run: puts θ back to the best point (for minibatch methods the best
    /// validated one when a metric was computed), marks the optimizer diverged and returns
    /// the error that reports it.
    fn diverge(&mut self, cause: DivergenceCause, learning_rate: Option<f64>, theta: &mut [f64]) -> Error {
        let c = &mut *self.counters;
        let validated = match (&c.best_theta, c.best_validation) {
            (Some(t), Some(v)) if self.kind == Kind::Minibatch => Some((t, v)),
            _ => None,
        };
        let kept = if let Some((best_theta, v)) = validated {
            theta.copy_from_slice(best_theta);
            self.history.records.iter().find(|r| r.validation == Some(v)).map(|r| Kept {
                iteration: r.iteration,
                cost: r.cost,
                validation: Some(v),
            })
        } else if let Some(best) = &c.best {
            if !best.theta.is_empty() {
                theta.copy_from_slice(&best.theta);
            }
            Some(Kept { iteration: best.iteration, cost: best.cost, validation: None })
        } else {
            None
        };
        let iteration = match cause {
            DivergenceCause::Exploded { .. } | DivergenceCause::NoRecovery { .. } => c.iteration,
            DivergenceCause::NonFinite | DivergenceCause::LineSearchNonFinite { .. } => c.iteration + 1,
        };
        let diverged = Diverged {
            cause,
            iteration,
            evaluations: c.evaluations,
            kept,
            learning_rate: learning_rate.filter(|_| self.kind != Kind::LineSearch),
            epochs: self.kind == Kind::Minibatch,
        };
        c.diverged = Some(diverged.clone());
        Error::Diverged(Box::new(diverged))
    }

    /// Tests the convergence and early-stopping rules on the newest record, then calls back.
    fn finish_iteration(&mut self, theta: &[f64]) -> Option<StopReason> {
        let record = self.history.records.last().expect("an iteration was just recorded");
        let c = &*self.counters;
        let mut reason = if record.grad_norm <= self.stop.grad_tol {
            Some(StopReason::GradientTolerance)
        } else if self.stop.cost_tol > 0.0 && c.stalled >= self.stop.cost_patience {
            Some(StopReason::CostTolerance)
        } else if let Some((_, early)) = &self.hooks.validation
            && early.patience.is_some_and(|p| c.checks_without_improvement >= p)
        {
            Some(StopReason::EarlyStopping)
        } else {
            None
        };
        if let Some(callback) = &mut self.hooks.progress {
            let progress = Progress {
                iteration: c.iteration,
                step: self.steps_per_iteration,
                steps_per_iteration: self.steps_per_iteration,
                evaluations: c.evaluations,
                cost: record.cost,
                record: Some(record),
                theta: Some(theta),
            };
            self.stop_requested |= callback(&progress) == Control::Stop;
        }
        if self.stop_requested {
            reason.get_or_insert(StopReason::Interrupted);
        }
        reason
    }

    /// A line search from the steepest direction found no lower cost: a stop when every
    /// step it tried was finite, a divergence when some cost or gradient was NaN or infinite
    /// (θ, which the search left in place, is the best point).
    fn line_search_failed(&mut self, theta: &mut [f64], tried: usize, non_finite: usize) -> Result<Outcome> {
        if non_finite == 0 {
            return Ok(Outcome::Stopped(StopReason::LineSearchFailed));
        }
        Err(self.diverge(DivergenceCause::LineSearchNonFinite { tried, non_finite }, None, theta))
    }
}

/// The error for a NaN or infinite cost or gradient at the starting θ.
fn non_finite_start(cost: f64) -> Error {
    // Name what is not finite: a finite cost (9e76 from targets near f32's limit) with a
    // gradient that overflowed must not read as an infinite cost.
    let what = if cost.is_finite() {
        format!("the gradient is NaN or infinite at the initial θ (the cost there is {})", crate::short_number(cost))
    } else {
        format!("the cost ({}) is NaN or infinite at the initial θ", crate::short_number(cost))
    };
    Error::Data(format!("{what}: check the data for extreme values and the initial parameters"))
}

/// The cost and gradient at the current θ, kept by the full-batch methods so an iteration
/// (and a resumed run) needs no extra evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Point {
    cost: Option<f64>,
    grad: Vec<f64>,
}

impl Point {
    /// Evaluates J and ∇J at θ unless already known (a resumed run). Returns the values when
    /// it evaluated.
    fn ensure(&mut self, run: &mut Run, theta: &[f64]) -> Result<Option<Iterated>> {
        if self.cost.is_some() && self.grad.len() == theta.len() {
            return Ok(None);
        }
        self.grad = vec![0.0; theta.len()];
        let cost = run.eval(theta, Batch::All, &mut self.grad)?;
        if !(cost.is_finite() && all_finite(&self.grad)) {
            return Err(non_finite_start(cost));
        }
        self.cost = Some(cost);
        Ok(Some(Iterated { cost, grad_norm: norm(&self.grad), step_size: 0.0 }))
    }

    fn cost(&self) -> f64 {
        self.cost.expect("the point was evaluated at the start of the run")
    }
}

/// Per-method state, tagged with the method's kind.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum MethodState {
    GradientDescent(gd::State),
    Minibatch(minibatch::State),
    Lbfgs(lbfgs::State),
    ConjugateGradient(cg::State),
}

impl MethodState {
    fn new(method: &Method, dim: usize) -> MethodState {
        match method {
            Method::GradientDescent(_) => MethodState::GradientDescent(gd::State::new(dim)),
            Method::Minibatch(m) => MethodState::Minibatch(minibatch::State::new(m, dim)),
            Method::Lbfgs(_) => MethodState::Lbfgs(lbfgs::State::default()),
            Method::ConjugateGradient(_) => MethodState::ConjugateGradient(cg::State::default()),
        }
    }

    /// Refuses a state made for another method or another |θ| (a mismatched checkpoint).
    fn check(&self, method: &Method, dim: usize) -> Result<()> {
        let (matches, state_dim) = match (self, method) {
            (MethodState::GradientDescent(s), Method::GradientDescent(_)) => (true, s.dim()),
            (MethodState::Minibatch(s), Method::Minibatch(m)) => (s.rule() == m.rule, s.dim()),
            (MethodState::Lbfgs(s), Method::Lbfgs(_)) => (true, s.dim()),
            (MethodState::ConjugateGradient(s), Method::ConjugateGradient(_)) => (true, s.dim()),
            _ => (false, None),
        };
        if !matches {
            return Err(Error::Data(format!(
                "the optimizer state does not belong to method {}: the checkpoint is inconsistent; start afresh",
                method.name()
            )));
        }
        match state_dim {
            Some(n) if n != dim => Err(Error::Shape(format!(
                "the optimizer state was made for θ of {n} values but θ has {dim}: resume with the checkpoint's own network"
            ))),
            _ => Ok(()),
        }
    }

    fn start(&mut self, run: &mut Run, theta: &mut [f64]) -> Result<Option<Iterated>> {
        match self {
            MethodState::GradientDescent(s) => s.point.ensure(run, theta),
            MethodState::Minibatch(_) => Ok(None),
            MethodState::Lbfgs(s) => s.point.ensure(run, theta),
            MethodState::ConjugateGradient(s) => s.point.ensure(run, theta),
        }
    }

    fn iterate(&mut self, method: &Method, run: &mut Run, theta: &mut [f64]) -> Result<Outcome> {
        match (self, method) {
            (MethodState::GradientDescent(s), Method::GradientDescent(m)) => s.iterate(m, run, theta),
            (MethodState::Minibatch(s), Method::Minibatch(m)) => s.iterate(m, run, theta),
            (MethodState::Lbfgs(s), Method::Lbfgs(m)) => s.iterate(m, run, theta),
            (MethodState::ConjugateGradient(s), Method::ConjugateGradient(m)) => s.iterate(m, run, theta),
            _ => unreachable!("checked by MethodState::check"),
        }
    }

    /// After each iteration's record: the minibatch schedules update η.
    fn observe(&mut self, method: &Method, monitored: f64) {
        if let (MethodState::Minibatch(s), Method::Minibatch(m)) = (self, method) {
            s.observe(m, monitored);
        }
    }
}

#[cfg(test)]
mod tests {
    /// A finite cost with a gradient that overflowed names the gradient (the tester's targets
    /// near f32's limit gave "the cost (9e76) … is NaN or infinite").
    #[test]
    fn the_start_refusal_names_what_is_not_finite() {
        let finite = super::non_finite_start(9e76).to_string();
        assert!(finite.contains("the gradient is NaN or infinite") && finite.contains("9e76"), "{finite}");
        let infinite = super::non_finite_start(f64::INFINITY).to_string();
        assert!(infinite.contains("the cost (") && infinite.contains("is NaN or infinite"), "{infinite}");
    }
}
