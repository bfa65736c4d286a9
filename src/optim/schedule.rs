//! Learning-rate schedules for the minibatch methods, applied at the end of each epoch:
//! constant, inverse scaling (scikit-learn's `invscaling`), scikit-learn's `adaptive` and
//! reduce-on-plateau (PyTorch's `ReduceLROnPlateau`). Pure functions of their state, so a resumed run schedules exactly as
//! an uninterrupted one.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How the learning rate η changes over epochs (minibatch methods).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Schedule {
    /// η = η₀ throughout.
    #[default]
    Constant,
    /// η = η₀ / (t + 1)^power with t the number of examples seen so far, updated after each
    /// epoch — scikit-learn's `invscaling` exactly (its default power is 0.5).
    InvScaling {
        /// The exponent (scikit-learn: 0.5).
        power: f64,
    },
    /// η × factor after `patience` epochs without improvement ([`Plateau`]).
    ReduceOnPlateau(Plateau),
    /// scikit-learn's `learning_rate="adaptive"` as its documentation states it: η stays η₀
    /// while the monitored value (the validation metric when there is one, else the epoch's
    /// mean training cost) keeps improving; each time two consecutive epochs fail to lower
    /// its best value by more than `tol`, η ← η / 5. An epoch fails when
    /// (best − J) / max(|best|, |J|, 1) ≤ `tol`, the measure of [`super::Stop::cost_tol`]
    /// (scikit-learn's absolute `tol` whenever the values are at most 1); its default 1e-4.
    Adaptive {
        /// The relative improvement an epoch must beat (default 1e-4).
        tol: f64,
    },
}

/// Multiply η by `factor` when the monitored value (the validation metric when there is one,
/// else the epoch's mean training cost) has not improved for more than `patience` epochs.
/// Defaults are PyTorch's: factor 0.1, patience 10, relative threshold 1e-4, no cooldown.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plateau {
    /// The factor η is multiplied by, in (0, 1).
    pub factor: f64,
    /// Epochs without improvement before η drops.
    pub patience: usize,
    /// An improvement must beat the best value by this fraction of it.
    pub threshold: f64,
    /// Epochs to wait after a reduction before counting bad epochs again.
    pub cooldown: usize,
    /// η never drops below this.
    pub min_learning_rate: f64,
}

impl Default for Plateau {
    fn default() -> Plateau {
        Plateau { factor: 0.1, patience: 10, threshold: 1e-4, cooldown: 0, min_learning_rate: 0.0 }
    }
}

/// What a schedule remembers between epochs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// Best monitored value so far (reduce-on-plateau).
    pub best: Option<f64>,
    /// Epochs in a row without improvement.
    pub bad_epochs: usize,
    /// Epochs left before η may drop again.
    pub cooldown_left: usize,
}

impl Schedule {
    /// scikit-learn's default power for `invscaling`.
    pub const INV_SCALING: Schedule = Schedule::InvScaling { power: 0.5 };
    /// scikit-learn's `adaptive` with its default `tol`.
    pub const ADAPTIVE: Schedule = Schedule::Adaptive { tol: 1e-4 };
    /// The divisor of `adaptive`: η ← η / 5.
    pub const ADAPTIVE_DIVISOR: f64 = 5.0;
    /// Failing epochs in a row after which `adaptive` divides η.
    pub const ADAPTIVE_EPOCHS: usize = 2;

    /// Errors (`Error::Data`): a factor, power or tolerance out of range.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Schedule::Constant => Ok(()),
            Schedule::InvScaling { power } if power >= 0.0 && power.is_finite() => Ok(()),
            Schedule::InvScaling { power } => {
                Err(Error::Data(format!("inverse-scaling power {power} must be a finite number ≥ 0 (usual: 0.5)")))
            }
            Schedule::Adaptive { tol } if tol >= 0.0 && tol.is_finite() => Ok(()),
            Schedule::Adaptive { tol } => {
                Err(Error::Data(format!("adaptive tolerance {tol} must be a finite number ≥ 0 (usual: 1e-4)")))
            }
            Schedule::ReduceOnPlateau(p) => {
                if !(p.factor > 0.0 && p.factor < 1.0) {
                    return Err(Error::Data(format!("plateau factor {} must lie in (0, 1) (usual: 0.1)", p.factor)));
                }
                if !(p.threshold >= 0.0 && p.threshold.is_finite()) {
                    return Err(Error::Data(format!("plateau threshold {} must be a finite number ≥ 0", p.threshold)));
                }
                if !(p.min_learning_rate >= 0.0 && p.min_learning_rate.is_finite()) {
                    return Err(Error::Data(format!(
                        "minimum learning rate {} must be a finite number ≥ 0",
                        p.min_learning_rate
                    )));
                }
                Ok(())
            }
        }
    }

    /// The learning rate for the next epoch, after an epoch that ran with `current`.
    /// `initial` is η₀, `examples_seen` counts all examples of all epochs so far, and
    /// `monitored` is the value reduce-on-plateau and adaptive watch (lower is better).
    pub fn next(
        &self,
        initial: f64,
        current: f64,
        examples_seen: u64,
        monitored: f64,
        state: &mut ScheduleState,
    ) -> f64 {
        match *self {
            Schedule::Constant => current,
            Schedule::InvScaling { power } => initial / ((examples_seen + 1) as f64).powf(power),
            Schedule::Adaptive { tol } => {
                let failed =
                    state.best.is_some_and(|best| (best - monitored) / best.abs().max(monitored.abs()).max(1.0) <= tol);
                state.best = Some(state.best.map_or(monitored, |best| best.min(monitored)));
                state.bad_epochs = if failed { state.bad_epochs + 1 } else { 0 };
                if state.bad_epochs >= Schedule::ADAPTIVE_EPOCHS {
                    state.bad_epochs = 0;
                    current / Schedule::ADAPTIVE_DIVISOR
                } else {
                    current
                }
            }
            Schedule::ReduceOnPlateau(p) => {
                let improved = state.best.is_none_or(|best| monitored < best - p.threshold * best.abs());
                if improved {
                    state.best = Some(monitored);
                    state.bad_epochs = 0;
                } else {
                    state.bad_epochs += 1;
                }
                if state.cooldown_left > 0 {
                    state.cooldown_left -= 1;
                    state.bad_epochs = 0;
                }
                if state.bad_epochs > p.patience {
                    state.cooldown_left = p.cooldown;
                    state.bad_epochs = 0;
                    (current * p.factor).max(p.min_learning_rate)
                } else {
                    current
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inverse_scaling_matches_scikit_learn() {
        // After one epoch of 99 examples: 0.1 / 100^0.5.
        let mut s = ScheduleState::default();
        assert_eq!(Schedule::INV_SCALING.next(0.1, 0.1, 99, 0.0, &mut s), 0.01);
    }

    #[test]
    fn plateau_reduces_after_patience_bad_epochs() {
        let sched = Schedule::ReduceOnPlateau(Plateau { patience: 2, ..Plateau::default() });
        let mut s = ScheduleState::default();
        let mut lr = 1.0;
        let mut lrs = Vec::new();
        for cost in [5.0, 4.0, 4.0, 4.0, 4.0, 3.0, 3.0] {
            lr = sched.next(1.0, lr, 0, cost, &mut s);
            lrs.push(lr);
        }
        // Three epochs without improvement (more than patience 2) cut η tenfold.
        assert_eq!(lrs, [1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1]);
    }
}
