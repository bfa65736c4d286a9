//! What happened during training, one [`Record`] per iteration, serialisable for
//! `metrics.json` and checkpoints. Plain data: nothing here computes or decides.

use serde::{Deserialize, Serialize};

/// One iteration. For full-batch methods (GD, L-BFGS, CG) iteration 0 is the starting point
/// and `cost`/`grad_norm` are J and ‖∇J‖₂ at the θ reached by the iteration. For minibatch
/// methods (SGD, Adam) an iteration is an epoch, numbered from 1, and `cost` and `grad_norm`
/// are the means over its minibatches, weighted by batch size (scikit-learn's `loss_curve_`),
/// each taken at the θ the minibatch's gradient was evaluated at.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The iteration (epoch) number, from 1.
    pub iteration: usize,
    /// J at the iteration's end (minibatch methods: the epoch mean).
    pub cost: f64,
    /// ‖∇J‖₂ there (minibatch methods: the epoch mean).
    pub grad_norm: f64,
    /// The line search's step length α (L-BFGS, CG) or the learning rate used (GD, SGD,
    /// Adam); 0 at iteration 0.
    pub step_size: f64,
    /// Cost-and-gradient evaluations so far, all runs of this optimizer together.
    pub evaluations: usize,
    /// Wall-clock seconds since training started, all runs together.
    pub seconds: f64,
    /// The held-out validation metric at this iteration, when one was computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<f64>,
}

/// Every record so far, oldest first. Serialised as a plain JSON array.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct History {
    /// One record per iteration, in order.
    pub records: Vec<Record>,
}

impl History {
    /// Iterations recorded.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The latest record.
    pub fn last(&self) -> Option<&Record> {
        self.records.last()
    }

    /// The cost of every record, for loss curves.
    pub fn costs(&self) -> Vec<f64> {
        self.records.iter().map(|r| r.cost).collect()
    }
}
