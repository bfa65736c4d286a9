//! The one interface every backend implements (CPU in f64 and f32, GPU in f32): the cost J(θ)
//! and its gradient on a batch of the loaded examples, forward activations and predictions.
//! Optimizers, gradient checking and the CLI are written against this trait and nothing else.
//!
//! θ and the gradient cross this interface as f64 in the layout of [`crate::model::ThetaLayout`];
//! a backend computes in its own precision. Data is loaded once with [`Backend::set_data`]
//! (so a GPU uploads it once) and batches select rows of it.

use std::ops::Range;
use std::sync::Arc;

use ndarray::{Array2, ArrayView2, Axis};

use crate::Result;
use crate::model::NetSpec;
use crate::update::{UpdateScalars, UpdateState};

/// Examples as rows (m × n), in either precision; a backend converts once to its own.
///
/// [`Inputs::Shared`] is f32 data the caller lets the backend keep: a backend that computes in
/// f32 holds another handle to the same array instead of copying it (MNIST's 60,000 × 784
/// images are 188 MB as f32), and reads it without copying in [`Backend::forward`]. Any other
/// backend reads it as it reads [`Inputs::F32`].
#[derive(Clone, Copy, Debug)]
pub enum Inputs<'a> {
    /// A view of f32 values (rows × features).
    F32(ArrayView2<'a, f32>),
    /// A view of f64 values (rows × features).
    F64(ArrayView2<'a, f64>),
    /// An f32 array the backend may keep a handle to instead of copying (the GPU streams from it).
    Shared(&'a Arc<Array2<f32>>),
}

impl Inputs<'_> {
    /// Examples (rows).
    pub fn nrows(&self) -> usize {
        match self {
            Inputs::F32(x) => x.nrows(),
            Inputs::F64(x) => x.nrows(),
            Inputs::Shared(x) => x.nrows(),
        }
    }

    /// Values per example (columns).
    pub fn ncols(&self) -> usize {
        match self {
            Inputs::F32(x) => x.ncols(),
            Inputs::F64(x) => x.ncols(),
            Inputs::Shared(x) => x.ncols(),
        }
    }

    /// The first row and column holding a NaN or infinity, if any.
    pub fn first_non_finite(&self) -> Option<(usize, usize)> {
        fn find<T: Copy>(x: &ArrayView2<'_, T>, finite: impl Fn(T) -> bool) -> Option<(usize, usize)> {
            x.indexed_iter().find(|(_, v)| !finite(**v)).map(|(ix, _)| ix)
        }
        match self {
            Inputs::F32(x) => find(x, f32::is_finite),
            Inputs::F64(x) => find(x, f64::is_finite),
            Inputs::Shared(x) => find(&x.view(), f32::is_finite),
        }
    }
}

impl<'a> From<ArrayView2<'a, f64>> for Inputs<'a> {
    fn from(x: ArrayView2<'a, f64>) -> Self {
        Inputs::F64(x)
    }
}

impl<'a> From<ArrayView2<'a, f32>> for Inputs<'a> {
    fn from(x: ArrayView2<'a, f32>) -> Self {
        Inputs::F32(x)
    }
}

impl<'a> From<&'a Array2<f64>> for Inputs<'a> {
    fn from(x: &'a Array2<f64>) -> Self {
        Inputs::F64(x.view())
    }
}

impl<'a> From<&'a Array2<f32>> for Inputs<'a> {
    fn from(x: &'a Array2<f32>) -> Self {
        Inputs::F32(x.view())
    }
}

impl<'a> From<&'a Arc<Array2<f32>>> for Inputs<'a> {
    fn from(x: &'a Arc<Array2<f32>>) -> Self {
        Inputs::Shared(x)
    }
}

/// What the network's output is compared with.
#[derive(Clone, Copy, Debug)]
pub enum Targets<'a> {
    /// y = x: an autoencoder reconstructs its input.
    Inputs,
    /// Class labels 0..k for a softmax output, one per example.
    Labels(&'a [usize]),
    /// Real-valued targets (m × outputs) for a squared-error output.
    Values(Inputs<'a>),
}

/// Which of the loaded examples a cost is taken on.
#[derive(Clone, Debug)]
pub enum Batch<'a> {
    /// Every loaded example.
    All,
    /// The loaded examples in this range, in order.
    Rows(Range<usize>),
    /// Any rows, in any order (a shuffled minibatch).
    Indices(&'a [usize]),
}

impl Batch<'_> {
    /// Number of examples in the batch, checked against the `n` loaded.
    pub fn len_checked(&self, n: usize) -> Result<usize> {
        let (len, bad) = match self {
            Batch::All => (n, None),
            Batch::Rows(r) => (r.len(), (r.end > n).then(|| r.end - 1)),
            Batch::Indices(ix) => (ix.len(), ix.iter().copied().find(|&i| i >= n)),
        };
        if let Some(i) = bad {
            return Err(crate::Error::Shape(format!("batch asks for example {i}, but only {n} are loaded")));
        }
        if len == 0 {
            return Err(crate::Error::Data("the batch is empty: the cost of no examples is undefined".into()));
        }
        Ok(len)
    }
}

/// J(θ) split into its terms (MATH.md): data term (squared error or cross-entropy), weight
/// decay (λ/2)‖W‖², sparsity β Σ KL(ρ‖ρ̂).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// The data term: (1/m) Σ of the per-example losses (½‖a − y‖² or −log p_y; MATH.md, "Cost function").
    pub data: f64,
    /// (λ/2) Σ W² over every weight (never the biases).
    pub weight_decay: f64,
    /// β Σⱼ KL(ρ ‖ ρ̂ⱼ) (MATH.md, "Sparse autoencoder"); 0 without sparsity.
    pub sparsity: f64,
}

impl Cost {
    /// J = data + weight decay + sparsity.
    pub fn total(&self) -> f64 {
        self.data + self.weight_decay + self.sparsity
    }

    /// The cost itself when J and each of its terms are finite; otherwise an error
    /// ([`crate::Error::Data`]) that names the term that is not and what to do. `computed_by`
    /// names the backend and precision (e.g. `cpu f32`). A cost that cannot be represented is
    /// never reported as a result: [`Backend::cost`] and every command that prints a cost go
    /// through this.
    pub fn finite(self, computed_by: &str) -> Result<Cost> {
        if self.total().is_finite() {
            return Ok(self);
        }
        let terms = format!(
            "data term {}, weight decay {}, sparsity {}",
            crate::short_number(self.data),
            crate::short_number(self.weight_decay),
            crate::short_number(self.sparsity)
        );
        let advice = if !self.sparsity.is_finite() {
            "some hidden unit's mean activation ρ̂ is 0 or 1 in this precision (every σ(z) saturated): \
             the first hidden layer's weights or biases are extreme; start from smaller parameters"
                .to_string()
        } else if !self.weight_decay.is_finite() {
            "Σ W² overflows: the weights are too large for weight decay; start from smaller parameters".to_string()
        } else if computed_by.contains("f64") {
            "the parameters or the data are too large even for f64 arithmetic: check θ and the data for extreme values"
                .to_string()
        } else {
            format!(
                "the parameters or the data are too large for the {computed_by} arithmetic: \
                 check θ and the data for extreme values, or compute in f64 (--backend cpu --precision f64)"
            )
        };
        Err(crate::Error::Data(format!("the cost J(θ) is not finite ({terms}) on the {computed_by} backend: {advice}")))
    }
}

/// A way to compute J(θ), ∇J(θ) and the forward pass of one network on loaded data: the
/// CPU backend (f64 reference, f32 fast path) and the GPU backend implement it alike, and
/// tests/contract.rs holds both to the same contract. θ is always the flat f64 vector of
/// [`crate::model::ThetaLayout`]; errors are the crate's [`crate::Error`].
pub trait Backend {
    /// Which backend and precision, e.g. `cpu f64`; shown to users.
    fn name(&self) -> String;

    /// The network this backend computes.
    fn spec(&self) -> &NetSpec;

    /// Loads the examples that batches select from, replacing any loaded before. Checks sizes
    /// against the spec, labels against the classes, and refuses NaN and infinities. Given
    /// [`Inputs::Shared`], a backend that computes in f32 keeps a handle to the caller's array
    /// rather than a copy of it.
    fn set_data(&mut self, x: Inputs<'_>, targets: Targets<'_>) -> Result<()>;

    /// Number of examples loaded by [`Backend::set_data`].
    fn num_examples(&self) -> usize;

    /// J(θ) on `batch`, and ∇J(θ) written into `grad` (same length and layout as θ). This is
    /// what optimizers call: a cost or gradient that overflowed comes back as it is (NaN or
    /// infinite), so that a line search can step back from it. Callers that report the
    /// cost check it with [`Cost::finite`]. Errors: θ of the wrong length, or holding NaN,
    /// infinities or values beyond the backend's precision ([`check_theta_values`]).
    fn cost_and_grad(&mut self, theta: &[f64], batch: Batch<'_>, grad: &mut [f64]) -> Result<Cost>;

    /// J(θ) on `batch` alone (no backward pass): the reported cost. Errors as
    /// [`Backend::cost_and_grad`], and when J is not finite ([`Cost::finite`]).
    fn cost(&mut self, theta: &[f64], batch: Batch<'_>) -> Result<Cost>;

    /// Activations a⁽²⁾ … a⁽ᴸ⁾ of every layer after the input for the rows of `x`; the last is
    /// the network's output (class probabilities for a softmax output).
    fn forward(&mut self, theta: &[f64], x: Inputs<'_>) -> Result<Vec<Array2<f64>>>;

    /// The network's output h(x) for each row of `x`.
    fn predict(&mut self, theta: &[f64], x: Inputs<'_>) -> Result<Array2<f64>> {
        Ok(self.forward(theta, x)?.pop().expect("a network has an output layer"))
    }

    /// Lets go of the working memory a backend keeps from call to call for speed (the CPU
    /// backend's reused buffers: a forward and backward pass over all of MNIST, some 330 MB
    /// for the 784-196-784 autoencoder), e.g. before serialising a checkpoint beside them. The
    /// next call allocates afresh; no result changes. The default keeps nothing to let go of.
    fn release_buffers(&mut self) {}

    /// Minibatch training with θ and the update rule's moments kept in the backend's own
    /// memory, when it offers that (the GPU backend does); `None` (the default) means the
    /// optimizer reads the gradient and updates θ on the host.
    fn device_training(&mut self) -> Option<&mut dyn DeviceTraining> {
        None
    }

    /// The most probable class of each row (argmax of the output); for a recurrent network with
    /// an output at every step, of each (row, step), row-major: m·T classes, as its labels.
    fn classify(&mut self, theta: &[f64], x: Inputs<'_>) -> Result<Vec<usize>> {
        let k = self.spec().outputs();
        let out = self.predict(theta, x)?;
        Ok(out
            .axis_iter(Axis(0))
            .flat_map(|row| row.exact_chunks(k).into_iter().map(|c| argmax(c.iter().copied())).collect::<Vec<_>>())
            .collect())
    }

    /// Totals over every example of `local`, tallies (e.g. correct predictions, examples)
    /// taken over the examples given to [`Backend::set_data`]: the identity (the default),
    /// unless those were one shard of a data-parallel job ([`crate::dist::DistBackend`]
    /// given the rank's shard alone), where it sums over the ranks in rank order.
    fn sum_over_shards(&mut self, local: &[f64]) -> Result<Vec<f64>> {
        Ok(local.to_vec())
    }
}

/// Refuses a θ whose length does not fit `spec`, saying what it should be.
pub fn check_theta_len(spec: &NetSpec, len: usize) -> Result<()> {
    let needed = crate::model::ThetaLayout::new(spec).len();
    if len != needed {
        return Err(crate::Error::Shape(format!(
            "θ has {len} values but the network {} needs {needed}",
            spec.describe()
        )));
    }
    Ok(())
}

/// Refuses a θ holding NaN or an infinity, or a value beyond ±`max` (the largest finite
/// number of the precision the backend computes in, e.g. `f32::MAX` — such a value would
/// become infinite there), saying which entry and what to do. `computed_by` names the backend.
pub fn check_theta_values(theta: &[f64], max: f64, computed_by: &str) -> Result<()> {
    let Some((i, &v)) = theta.iter().enumerate().find(|&(_, &v)| v.is_nan() || v.abs() > max) else {
        return Ok(());
    };
    Err(crate::Error::Data(if v.is_finite() {
        format!(
            "θ[{i}] = {v:e} is beyond ±{max:.3e}, the range of the {computed_by} arithmetic: \
             use --backend cpu --precision f64, or parameters of a sane size"
        )
    } else {
        format!(
            "θ[{i}] is {v}: these parameters are not usable (a diverged run?); start again from a fresh θ or an earlier checkpoint"
        )
    }))
}

/// Refuses a gradient holding NaN or an infinity (from [`Backend::cost_and_grad`], which
/// returns such values as they are), naming the first such entry and what to do.
pub fn check_gradient_finite(grad: &[f64], computed_by: &str) -> Result<()> {
    match grad.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(crate::Error::Data(format!(
            "the gradient ∇J(θ) is not finite (entry {i} is {}) on the {computed_by} backend: the parameters or the \
             data are too large for this arithmetic; check θ and the data for extreme values, or compute in f64 \
             (--backend cpu --precision f64)",
            grad[i]
        ))),
    }
}

/// Index of the largest value (the first of equals); NaN never wins.
pub fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// What one [`DeviceTraining::step`] reports: the minibatch cost J (all terms) and ‖∇J‖₂,
/// either of them NaN or infinite when the step went wrong.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceStep {
    /// J at θ before the step.
    pub cost: f64,
    /// ‖∇J‖ at θ before the step.
    pub grad_norm: f64,
}

/// Minibatch training with θ resident in the backend (GPU memory): θ and the rule's moments
/// go in once ([`DeviceTraining::load`]), each step evaluates the gradient and applies the
/// update where they live and reports two numbers, and θ comes back only when asked
/// ([`DeviceTraining::read`]: at epoch ends, for hooks and checkpoints). The update is that
/// of [`UpdateState::apply`], formula for formula.
///
/// Any other use of the backend (a cost, a forward pass) may replace θ on the device: load
/// again after it.
pub trait DeviceTraining {
    /// Puts θ and the rule's state on the device, replacing what it held. The device then
    /// has no "θ before the last update" until its first step.
    fn load(&mut self, theta: &[f64], update: &UpdateState) -> Result<()>;

    /// J and ∇J on `batch` at the device's θ, then — only if the cost and the gradient are
    /// finite — one update with `scalars` (those of [`crate::update::UpdateRule::scalars`] for
    /// the step about to be taken). A non-finite step changes nothing: θ stays at the point
    /// just evaluated.
    fn step(&mut self, batch: Batch<'_>, scalars: &UpdateScalars) -> Result<DeviceStep>;

    /// Puts θ back to where it was before the latest update; false (and nothing changed) when
    /// no update was made since [`DeviceTraining::load`].
    fn roll_back(&mut self) -> Result<bool>;

    /// Reads θ and the rule's moment vectors back (the step count stays the caller's).
    fn read(&mut self, theta: &mut [f64], update: &mut UpdateState) -> Result<()>;

    /// Whether [`DeviceTraining::gradient_step`] and [`DeviceTraining::apply_update`] work: a
    /// step cut at the gradient, so that data-parallel ranks can sum their gradients between
    /// the two halves ([`crate::dist::DistBackend`]). False (the default) for a backend that
    /// only steps whole.
    fn splits_at_gradient(&self) -> bool {
        false
    }

    /// The first half of a [`DeviceTraining::step`]: J's terms and ∇J on `batch` at the
    /// device's θ (one submission), ∇J read back into `grad` (|θ| values, f64 of the device's
    /// precision). θ does not move. The default refuses ([`DeviceTraining::splits_at_gradient`]).
    fn gradient_step(&mut self, _batch: Batch<'_>, _grad: &mut [f64]) -> Result<Cost> {
        Err(crate::Error::Data("this backend does not split its device step at the gradient".into()))
    }

    /// The second half: `grad` (|θ| values, e.g. the sum of every rank's gradient) becomes
    /// the device's ∇J, plus λW over the weights when `weight_decay` λ ≠ 0 (MATH.md, "Cost
    /// function"); then Σ W² at the device's θ, ‖∇J‖² and — only if `data_cost_finite`, Σ W²
    /// and ‖∇J‖² are finite — one update with `scalars`, all in one submission. The default
    /// refuses ([`DeviceTraining::splits_at_gradient`]).
    fn apply_update(
        &mut self,
        _grad: &[f64],
        _weight_decay: f64,
        _data_cost_finite: bool,
        _scalars: &UpdateScalars,
    ) -> Result<AppliedUpdate> {
        Err(crate::Error::Data("this backend does not split its device step at the gradient".into()))
    }
}

/// What [`DeviceTraining::apply_update`] reports, as the device computed it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AppliedUpdate {
    /// ‖∇J‖₂ of the gradient applied (λW included); NaN or infinite when it is not finite.
    pub grad_norm: f64,
    /// Σ W² over every weight at θ before the update (0 when λ = 0: not summed).
    pub weight_squares: f64,
    /// Whether θ moved (everything checked was finite).
    pub stepped: bool,
}
