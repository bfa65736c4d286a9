//! Minibatch training — SGD (plain, momentum, Nesterov) and Adam — one epoch per iteration:
//! visit the examples in an order drawn from the seed and the epoch number alone (so a resumed
//! run draws the same batches), take a step of the [`UpdateRule`] on each minibatch's
//! gradient, then let the [`Schedule`] set the learning rate of the next epoch. The update
//! itself lives in `update.rs`, where the GPU kernels find their specification.

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::control::{DivergenceCause, StopReason};
use super::linalg::{all_finite, norm};
use super::schedule::{Schedule, ScheduleState};
use super::{Iterated, Outcome, Run, non_finite_start, positive};
use crate::backend::{Batch, DeviceTraining};
use crate::update::{UpdateRule, UpdateState};
use crate::{Error, Result};

/// A minibatch method: the update rule, the initial learning rate η₀ and its schedule,
/// the batch size (the last batch of an epoch takes what is left) and the shuffling seed.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Minibatch {
    /// How a gradient becomes a step.
    pub rule: UpdateRule,
    /// η₀.
    pub learning_rate: f64,
    /// How η changes over epochs.
    #[serde(default)]
    pub schedule: Schedule,
    /// Examples per minibatch (the last one of an epoch may be shorter).
    pub batch_size: usize,
    /// Visit examples in a fresh random order each epoch (else in their stored order).
    pub shuffle: bool,
    /// Seed of the per-epoch shuffles.
    pub seed: u64,
    /// τ of gradient clipping by global norm ([`clip_by_global_norm`]) before each update;
    /// `None`: no clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_norm: Option<f64>,
}

impl Minibatch {
    /// scikit-learn's `batch_size="auto"`: min(200, number of examples).
    pub const DEFAULT_BATCH_SIZE: usize = 200;

    /// SGD with Nesterov momentum 0.9 (scikit-learn's `solver="sgd"` defaults; its default
    /// η₀ is 0.001).
    pub fn sgd(learning_rate: f64) -> Minibatch {
        Minibatch {
            rule: UpdateRule::NESTEROV,
            learning_rate,
            schedule: Schedule::Constant,
            batch_size: Minibatch::DEFAULT_BATCH_SIZE,
            shuffle: true,
            seed: 0,
            clip_norm: None,
        }
    }

    /// Adam with β₁ = 0.9, β₂ = 0.999, ε = 1e-8 (scikit-learn's default η₀ is 0.001).
    pub fn adam(learning_rate: f64) -> Minibatch {
        Minibatch { rule: UpdateRule::ADAM, ..Minibatch::sgd(learning_rate) }
    }

    /// This method with `rule`.
    pub fn with_rule(self, rule: UpdateRule) -> Minibatch {
        Minibatch { rule, ..self }
    }

    /// This method with `batch_size`.
    pub fn with_batch_size(self, batch_size: usize) -> Minibatch {
        Minibatch { batch_size, ..self }
    }

    /// This method with `schedule`.
    pub fn with_schedule(self, schedule: Schedule) -> Minibatch {
        Minibatch { schedule, ..self }
    }

    /// This method with `seed`.
    pub fn with_seed(self, seed: u64) -> Minibatch {
        Minibatch { seed, ..self }
    }

    /// Clips each minibatch gradient to norm at most τ ([`clip_by_global_norm`]).
    pub fn with_clip_norm(self, tau: f64) -> Minibatch {
        Minibatch { clip_norm: Some(tau), ..self }
    }

    /// Errors (`Error::Data`): η not positive and finite, batch size 0, an invalid clip norm,
    /// rule or schedule.
    pub fn validate(&self) -> Result<()> {
        positive("learning rate", self.learning_rate)?;
        if self.batch_size == 0 {
            return Err(Error::Data("batch size must be at least 1".into()));
        }
        if let Some(tau) = self.clip_norm {
            clip_by_global_norm(&mut [], tau)?;
        }
        self.rule.validate()?;
        self.schedule.validate()
    }

    /// The order examples 0..n are visited in during epoch `epoch` (0-based).
    pub fn epoch_order(&self, epoch: usize, n: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..n).collect();
        if self.shuffle {
            // Each epoch's generator depends on (seed, epoch) only: no position to save.
            let mut rng = StdRng::seed_from_u64(self.seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            order.shuffle(&mut rng);
        }
        order
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct State {
    update: UpdateState,
    /// η for the current epoch.
    learning_rate: f64,
    schedule: ScheduleState,
    /// Examples of all completed epochs (scikit-learn's `t_`, for inverse scaling).
    examples_seen: u64,
    /// Steps done in the current epoch, and the epoch's batch-size-weighted sums so far, so
    /// that a run interrupted mid-epoch resumes it exactly.
    step_in_epoch: usize,
    epoch_cost: f64,
    epoch_grad_norm: f64,
    epoch_examples: usize,
}

impl State {
    pub(super) fn new(m: &Minibatch, dim: usize) -> State {
        State {
            update: UpdateState::new(m.rule, dim),
            learning_rate: m.learning_rate,
            schedule: ScheduleState::default(),
            examples_seen: 0,
            step_in_epoch: 0,
            epoch_cost: 0.0,
            epoch_grad_norm: 0.0,
            epoch_examples: 0,
        }
    }

    pub(super) fn rule(&self) -> UpdateRule {
        self.update.rule
    }

    pub(super) fn dim(&self) -> Option<usize> {
        self.update.dim()
    }

    /// The rest of the current epoch (all of it unless resumed mid-epoch).
    pub(super) fn iterate(&mut self, m: &Minibatch, run: &mut Run, theta: &mut [f64]) -> Result<Outcome> {
        if run.objective.device_training().is_some() {
            if m.clip_norm.is_some() {
                return Err(Error::Data(
                    "gradient clipping runs with the update on the host: drop --clip-norm or train on the CPU".into(),
                ));
            }
            return self.iterate_on_device(m, run, theta);
        }
        let n = run.num_examples();
        let size = m.batch_size.min(n);
        let steps = n.div_ceil(size);
        run.steps_per_iteration = steps;
        let order = m.epoch_order(run.counters.iteration, n);
        let mut grad = vec![0.0; theta.len()];
        while self.step_in_epoch < steps {
            let rows = &order[self.step_in_epoch * size..((self.step_in_epoch + 1) * size).min(n)];
            let batch = if steps == 1 { Batch::All } else { Batch::Indices(rows) };
            let cost = run.eval(theta, batch, &mut grad)?;
            if !(cost.is_finite() && all_finite(&grad)) {
                return Err(self.non_finite(run, cost, theta));
            }
            run.offer_start(cost, theta);
            let weight = rows.len() as f64;
            self.epoch_cost += weight * cost;
            self.epoch_grad_norm += weight * norm(&grad);
            self.epoch_examples += rows.len();
            if let Some(tau) = m.clip_norm {
                clip_by_global_norm(&mut grad, tau)?;
            }
            self.update.apply(theta, &grad, self.learning_rate);
            self.step_in_epoch += 1;
            // The last step of an epoch is reported with the epoch's record instead.
            if self.step_in_epoch < steps && run.report_step(self.step_in_epoch, cost) {
                return Ok(Outcome::Stopped(StopReason::Interrupted));
            }
        }
        Ok(Outcome::Iterated(self.end_epoch()))
    }

    /// The same epoch as [`State::iterate`] with θ, the gradient and the moments in device
    /// memory ([`DeviceTraining`]): θ and the moments are loaded at the run's first step
    /// and read back when the epoch ends or the run stops; each step reports only the
    /// minibatch cost and ‖∇J‖. Same batches, same update formulas, same errors.
    fn iterate_on_device(&mut self, m: &Minibatch, run: &mut Run, theta: &mut [f64]) -> Result<Outcome> {
        fn device<'a>(run: &'a mut Run) -> &'a mut dyn DeviceTraining {
            run.objective.device_training().expect("checked by State::iterate")
        }
        let n = run.num_examples();
        let size = m.batch_size.min(n);
        let steps = n.div_ceil(size);
        run.steps_per_iteration = steps;
        let order = m.epoch_order(run.counters.iteration, n);
        if !run.on_device {
            device(run).load(theta, &self.update)?;
            run.on_device = true;
        }
        while self.step_in_epoch < steps {
            let rows = &order[self.step_in_epoch * size..((self.step_in_epoch + 1) * size).min(n)];
            let batch = if steps == 1 { Batch::All } else { Batch::Indices(rows) };
            run.counters.evaluations += 1;
            let scalars = self.update.rule.scalars(self.update.steps + 1, self.learning_rate);
            let step = match device(run).step(batch, &scalars) {
                Ok(step) => step,
                Err(e) => {
                    // Keep what was learned if the device still answers.
                    let _ = device(run).read(theta, &mut self.update);
                    return Err(e);
                }
            };
            if !(step.cost.is_finite() && step.grad_norm.is_finite()) {
                // The host's θ is the initial θ (no step yet) or the last epoch's end; the
                // best point to go back to is on the host too.
                return Err(self.non_finite(run, step.cost, theta));
            }
            // Before the first step the host's θ is still the one loaded.
            run.offer_start(step.cost, theta);
            let weight = rows.len() as f64;
            self.epoch_cost += weight * step.cost;
            self.epoch_grad_norm += weight * step.grad_norm;
            self.epoch_examples += rows.len();
            self.update.steps += 1;
            self.step_in_epoch += 1;
            if self.step_in_epoch < steps && run.report_step(self.step_in_epoch, step.cost) {
                device(run).read(theta, &mut self.update)?;
                return Ok(Outcome::Stopped(StopReason::Interrupted));
            }
        }
        device(run).read(theta, &mut self.update)?;
        Ok(Outcome::Iterated(self.end_epoch()))
    }

    /// The error for a NaN or infinite minibatch cost or gradient: at the first minibatch of
    /// the run, nothing was learned (θ is untouched); later the run diverged and θ goes back
    /// to the best point.
    fn non_finite(&self, run: &mut Run, cost: f64, theta: &mut [f64]) -> Error {
        if run.counters.best.is_none() {
            return non_finite_start(cost);
        }
        run.diverge(DivergenceCause::NonFinite, Some(self.learning_rate), theta)
    }

    /// The epoch's record from its weighted sums, which start again from zero.
    fn end_epoch(&mut self) -> Iterated {
        let examples = self.epoch_examples as f64;
        let it = Iterated {
            cost: self.epoch_cost / examples,
            grad_norm: self.epoch_grad_norm / examples,
            step_size: self.learning_rate,
        };
        self.examples_seen += self.epoch_examples as u64;
        self.step_in_epoch = 0;
        self.epoch_cost = 0.0;
        self.epoch_grad_norm = 0.0;
        self.epoch_examples = 0;
        it
    }

    /// After an epoch's record: the schedule sets η for the next epoch.
    pub(super) fn observe(&mut self, m: &Minibatch, monitored: f64) {
        self.learning_rate =
            m.schedule.next(m.learning_rate, self.learning_rate, self.examples_seen, monitored, &mut self.schedule);
    }
}

/// g ← g · min(1, τ/‖g‖₂): gradient clipping by global norm (MATH.md, "Backpropagation
/// through time"; Pascanu et al. 2013, "On the difficulty of training recurrent neural
/// networks", §3.2), over the whole gradient of θ. Returns ‖g‖₂ before clipping, its sum of
/// squares taken in order after scaling by the largest |gᵢ| (so it neither overflows nor
/// underflows). τ must be finite and > 0 (else `Error::Data`). A gradient holding a NaN or an
/// infinity is left as it is and its norm returned as NaN or ∞ (the optimizer's divergence
/// check stops on it).
pub fn clip_by_global_norm(g: &mut [f64], tau: f64) -> Result<f64> {
    if !(tau.is_finite() && tau > 0.0) {
        return Err(Error::Data(format!("the clipping norm τ = {tau} must be a finite number > 0")));
    }
    let largest = g.iter().fold(0.0f64, |a, &v| if v.is_nan() || a.is_nan() { f64::NAN } else { a.max(v.abs()) });
    if !largest.is_finite() || largest == 0.0 {
        return Ok(largest);
    }
    let norm = largest * g.iter().map(|&v| (v / largest).powi(2)).sum::<f64>().sqrt();
    if norm > tau {
        let scale = tau / norm;
        g.iter_mut().for_each(|v| *v *= scale);
    }
    Ok(norm)
}
