//! Estimators for sequence models: recurrent classifiers on m × T × n sequences
//! ([`Recurrent`], `wgnn train lstm|rnn --data npy:FILE`), and the character-level language
//! model on text ([`CharModel`], `wgnn train lstm|rnn --data text:FILE`) with held-out bits
//! per character and sampling. Both train in memory through the code the CLI runs: a
//! classifier through [`crate::train::train_in_memory`] (as every estimator), a character
//! model through [`char_model::train_from_on_ranks`] (or [`char_model::train_on_gpu`]), so
//! the same settings give the CLI's θ bit for bit.
//!
//! A sequence classifier, LSTM over 4 steps of 2 values, the class set by the sign of the
//! first value of the last step:
//! ```
//! use ndarray::Array3;
//! use wgnn::{BackendChoice, Recurrent};
//!
//! let x = Array3::from_shape_fn((64, 4, 2), |(i, t, j)| ((i * 3 + t * 5 + j * 7) % 11) as f32 / 5.0 - 1.0);
//! let y: Vec<usize> = (0..64).map(|i| usize::from(x[[i, 3, 0]] > 0.0)).collect();
//! let model = Recurrent::lstm(8).epochs(40).batch_size(16).learning_rate(0.02).backend(BackendChoice::Cpu);
//! let model = model.fit(&x, &y)?;
//! assert!(model.score(&x, &y)? > 0.9);
//! # Ok::<(), wgnn::Error>(())
//! ```
//!
//! A character model, sampled:
//! ```
//! use wgnn::CharModel;
//!
//! let text = "the cat sat on the mat. ".repeat(20);
//! let model = CharModel::lstm(16).bptt(8).batch_size(4).steps(30).seed(1).fit_text(&text)?;
//! let bits = model.held_out().unwrap().bits_per_character; // on the last 10% of the text
//! let drawn = model.sample(20, 0.8, 7, "the ")?; // 20 characters after "the "
//! assert!(bits.is_finite() && drawn.chars().count() == 20);
//! # Ok::<(), wgnn::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ndarray::{Array2, Array3, ArrayD, ArrayView3, Ix3};
use rand::{RngExt, SeedableRng, rngs::StdRng};

use super::{BackendChoice, Classifier, Estimator, Kind, Precision, TEXT_DEFAULTS, TaskOf, Trained, Y, check_finite};
use crate::checkpoint::{Checkpoint, Metadata};
use crate::cpu::sequence::Recurrent as RecurrentNet;
use crate::data::text::{CharText, Vocabulary};
use crate::gpu::GpuOptions;
use crate::model::{Activation, InputShape, Layer, LayerStack, NetSpec, Output};
use crate::optim::{Control, Progress, UpdateRule};
use crate::predict::{Model, Task};
use crate::train::char_model::{self, HeldOut, Job, Step};
use crate::train::{CHECKPOINT_FILE, METRICS_FILE, MODEL_FILE, RunFolder, RunStatus};
use crate::{Error, Result};

/// The task of a sequence classifier: one class per sequence of T steps of n values, read
/// by recurrent layers and decided by a softmax at the last step. `fit(&x, &labels)` with x
/// m × T × n ([`Sequences`]); `predict`, `predict_proba`, `score` as a classifier's.
#[derive(Clone, Copy, Debug)]
pub struct SequenceClassifier;

/// The task of a per-step sequence regressor: k real values at every step of a sequence,
/// from recurrent layers that give every step and a squared-error output applied at each.
/// Fitted by [`Estimator::fit_per_step`] on x m × T × n and targets m × T × k; `predict`
/// gives m × T × k, `score` R².
#[derive(Clone, Copy, Debug)]
pub struct PerStepRegressor;

/// The task of a per-step sequence classifier (sequence labelling): a class at every step of a
/// sequence, from recurrent layers that give every step and a softmax applied at each; the
/// cost is the cross-entropy averaged over the m·T steps (MATH.md, "Layers beyond dense").
/// Fitted by [`Estimator::fit_per_step_labels`] on x m × T × n and labels m × T; `predict`
/// gives m × T classes, `predict_proba` m × T × k, `score` the accuracy over the m·T steps.
#[derive(Clone, Copy, Debug)]
pub struct PerStepClassifier;

/// Recurrent sequence classifiers (`wgnn train lstm|rnn` on m × T × n data): recurrent
/// layers (bottom first; each below the top one gives the next every step), then a softmax
/// over the classes at the last step. Adam, η = 1e-3, batch 128, 10 epochs, λ = 0 unless set
/// ([`Kind::defaults`]).
pub struct Recurrent;

impl Recurrent {
    /// One LSTM layer of `units` units (PyTorch's gates i, f, g, o); [`Estimator::hidden`]
    /// stacks more (`hidden(&[64, 64])`).
    pub fn lstm(units: usize) -> Estimator<SequenceClassifier> {
        Estimator::new(Kind::Lstm).hidden(&[units])
    }

    /// One Elman RNN layer of `units` units, h_t = tanh(W x_t + U h_{t−1} + b) (another
    /// activation through [`Estimator::activation`]).
    pub fn rnn(units: usize) -> Estimator<SequenceClassifier> {
        Estimator::new(Kind::Rnn).hidden(&[units])
    }
}

/// Sequences as a sequence model takes them: m × T × n `f32` (m sequences of T steps of n
/// values). Given as an `Array3`, a view of one, or an `ArrayD` (e.g. read from a `.npy`),
/// whose axes are checked: anything but 3 is refused in one line.
pub trait Sequences {
    /// The sequences as m × T × n.
    ///
    /// Errors ([`Error::Shape`]): not three axes, or an empty axis.
    fn sequences(&self) -> Result<ArrayView3<'_, f32>>;
}

impl Sequences for Array3<f32> {
    fn sequences(&self) -> Result<ArrayView3<'_, f32>> {
        check_sequences(self.view())
    }
}

impl Sequences for ArrayView3<'_, f32> {
    fn sequences(&self) -> Result<ArrayView3<'_, f32>> {
        check_sequences(self.view())
    }
}

impl Sequences for ArrayD<f32> {
    fn sequences(&self) -> Result<ArrayView3<'_, f32>> {
        let view = self.view().into_dimensionality::<Ix3>().map_err(|_| {
            Error::Shape(format!(
                "the sequences have shape {:?}: a sequence model needs m × T × n (3 axes: sequences, steps, values per step)",
                self.shape()
            ))
        })?;
        check_sequences(view)
    }
}

fn check_sequences(x: ArrayView3<'_, f32>) -> Result<ArrayView3<'_, f32>> {
    if x.is_empty() {
        return Err(Error::Shape(format!(
            "the sequences are empty ({:?}): give at least one sequence of one step of one value",
            x.shape()
        )));
    }
    Ok(x)
}

/// m × T × n as the rows the networks read: m × (T·n), step t's values at columns t·n … .
fn rows(x: ArrayView3<'_, f32>) -> Array2<f32> {
    let (m, steps, n) = x.dim();
    x.as_standard_layout().into_owned().into_shape_with_order((m, steps * n)).expect("a standard layout reshapes")
}

impl<T> Estimator<T> {
    /// Step "network" of a sequence kind: one recurrent layer per hidden size (each below the
    /// top one giving every step), a softmax of `outputs` classes at the last step, on
    /// sequences of [`Estimator::steps`] steps of `inputs`/T values.
    ///
    /// A `regression` network gives every step (all its layers per-step) `outputs`/T values
    /// through a squared-error output (identity unless [`Estimator::output`] says).
    pub(super) fn sequence_spec(&self, inputs: usize, outputs: usize, regression: bool) -> Result<NetSpec> {
        let Some(steps) = self.steps.filter(|&t| t > 0 && inputs.is_multiple_of(t)) else {
            return Err(Error::Shape(format!(
                "a sequence model reads m × T × n sequences: fit it on 3-axis data ({inputs} values per example give no T)"
            )));
        };
        let d = self.kind.defaults();
        let sizes = self.dense.hidden.as_deref().unwrap_or(d.hidden);
        if sizes.is_empty() || sizes.contains(&0) {
            return Err(Error::Data(format!("hidden {sizes:?}: a recurrent layer needs at least 1 unit")));
        }
        let activation = match (self.kind, self.dense.activation) {
            (Kind::Lstm, Some(a)) => {
                return Err(Error::Data(format!(
                    "activation {}: an lstm's gates are fixed (σ and tanh); it goes with rnn",
                    a.name()
                )));
            }
            (_, a) => a.unwrap_or(Activation::Tanh),
        };
        let top = sizes.len() - 1;
        let layers = sizes
            .iter()
            .enumerate()
            .map(|(i, &units)| match self.kind {
                Kind::Rnn => Layer::Rnn { units, activation, per_step: i < top || regression },
                _ => Layer::Lstm { units, per_step: i < top || regression },
            })
            .collect();
        let stack = LayerStack { input: InputShape::sequence(steps, inputs / steps), layers };
        let lambda = self.dense.weight_decay.unwrap_or(d.weight_decay);
        let (outputs, output) = if regression {
            let output = self.dense.output.unwrap_or(Output::SquaredError(Activation::Identity));
            if !matches!(output, Output::SquaredError(_)) || !outputs.is_multiple_of(steps) {
                return Err(Error::Data(format!(
                    "per-step targets are real values, m × T × k, learnt with a squared-error output (not {})",
                    output.name()
                )));
            }
            (outputs / steps, output)
        } else {
            (outputs, Output::Softmax)
        };
        Ok(NetSpec::stack(stack, outputs, output)?.with_weight_decay(lambda)?)
    }
}

impl Estimator<SequenceClassifier> {
    /// Trains on sequences `x` (m × T × n) with one class label per sequence (m numbers
    /// 0..k−1, k ≥ 2).
    ///
    /// Errors: `x` not 3 axes ([`Error::Shape`]), labels not one per sequence, fewer than 2
    /// classes, NaN or infinite values, settings that make no network; a run that diverges.
    pub fn fit(&self, x: &impl Sequences, labels: &[usize]) -> Result<Trained<SequenceClassifier>> {
        self.fit_with(x, labels, &mut |_| {}, &AtomicBool::new(false))
    }

    /// As [`Estimator::fit`], with progress and a stop flag (see the classifier's).
    pub fn fit_with(
        &self,
        x: &impl Sequences,
        labels: &[usize],
        progress: &mut dyn FnMut(&Progress<'_>),
        interrupt: &AtomicBool,
    ) -> Result<Trained<SequenceClassifier>> {
        let x = x.sequences()?;
        let (m, steps, _) = x.dim();
        if labels.len() != m {
            return Err(Error::Shape(format!(
                "{m} sequences but {} labels: give one per sequence (a class at every step is fit_per_step_labels, m × T)",
                labels.len()
            )));
        }
        let estimator = Estimator { steps: Some(steps), ..self.clone() };
        estimator.fit_targets(&rows(x), Y::Labels(labels), progress, interrupt)
    }

    /// Trains the same recurrent layers, each giving every step, to predict per-step targets
    /// `y` (m × T × k real values: k at each step of each sequence) with a squared-error output
    /// at every step (identity unless [`Estimator::output`] says), J = (1/2m) Σ ‖h_t − y_t‖²
    /// summed over the steps (MATH.md, "Layers beyond dense").
    ///
    /// Errors: `x` or `y` not 3 axes, `y` not of x's m and T ([`Error::Shape`]), NaN or
    /// infinite values, settings that make no network; a run that diverges.
    pub fn fit_per_step(&self, x: &impl Sequences, y: &Array3<f32>) -> Result<Trained<PerStepRegressor>> {
        self.fit_per_step_with(x, y, &mut |_| {}, &AtomicBool::new(false))
    }

    /// As [`Estimator::fit_per_step`], with progress and a stop flag (see the classifier's).
    pub fn fit_per_step_with(
        &self,
        x: &impl Sequences,
        y: &Array3<f32>,
        progress: &mut dyn FnMut(&Progress<'_>),
        interrupt: &AtomicBool,
    ) -> Result<Trained<PerStepRegressor>> {
        let x = x.sequences()?;
        let y = y.view();
        if y.is_empty() {
            return Err(Error::Shape(format!(
                "the per-step targets have shape {:?}: give at least one target per step, m × T × k with k ≥ 1",
                y.shape()
            )));
        }
        let ((m, steps, _), (ym, ysteps, _)) = (x.dim(), y.dim());
        if (ym, ysteps) != (m, steps) {
            return Err(Error::Shape(format!(
                "the targets are for {ym} sequences of {ysteps} steps but x has {m} of {steps}: give one row of targets per step, m × T × k"
            )));
        }
        let estimator: Estimator<PerStepRegressor> = self.retask(Some(steps));
        estimator.fit_targets(&rows(x), Y::Values(&rows(y)), progress, interrupt)
    }

    /// Trains the same recurrent layers, each giving every step, to label every step of a
    /// sequence (sequence labelling): `labels` m × T class numbers 0..k−1 (k ≥ 2), a softmax
    /// of k at every step, J = −(1/(m·T)) Σᵢ Σₜ log p(yᵢₜ | x) (MATH.md, "Layers beyond dense";
    /// the CLI's `train lstm|rnn --data npy:X --labels npy:Y` with Y of m × T).
    ///
    /// Errors: `x` not 3 axes, `labels` not of x's m and T ([`Error::Shape`]), fewer than 2
    /// classes, NaN or infinite values, settings that make no network; a run that diverges.
    pub fn fit_per_step_labels(
        &self,
        x: &impl Sequences,
        labels: &Array2<usize>,
    ) -> Result<Trained<PerStepClassifier>> {
        self.fit_per_step_labels_with(x, labels, &mut |_| {}, &AtomicBool::new(false))
    }

    /// As [`Estimator::fit_per_step_labels`], with progress and a stop flag (see the
    /// classifier's).
    pub fn fit_per_step_labels_with(
        &self,
        x: &impl Sequences,
        labels: &Array2<usize>,
        progress: &mut dyn FnMut(&Progress<'_>),
        interrupt: &AtomicBool,
    ) -> Result<Trained<PerStepClassifier>> {
        let x = x.sequences()?;
        let (m, steps, _) = x.dim();
        if labels.dim() != (m, steps) {
            return Err(Error::Shape(format!(
                "the labels are {}×{} but x has {m} sequences of {steps} steps: give one label per step, m × T",
                labels.nrows(),
                labels.ncols()
            )));
        }
        let flat: Vec<usize> = labels.iter().copied().collect();
        if flat.iter().all(|&c| c == flat[0]) {
            return Err(Error::Data(format!("every label is {}: a classifier needs at least 2 classes", flat[0])));
        }
        let estimator: Estimator<PerStepClassifier> = self.retask(Some(steps));
        estimator.fit_targets(&rows(x), Y::Labels(&flat), progress, interrupt)
    }

    /// The same settings for another task, on sequences of `steps` steps.
    fn retask<U>(&self, steps: Option<usize>) -> Estimator<U> {
        let e = self.clone();
        Estimator {
            kind: e.kind,
            dense: e.dense,
            net: e.net,
            input_shape: e.input_shape,
            steps,
            alpha: e.alpha,
            optimizer: e.optimizer,
            validation: e.validation,
            patience: e.patience,
            init: e.init,
            seed: e.seed,
            backend: e.backend,
            gpu: e.gpu,
            precision: e.precision,
            task: std::marker::PhantomData,
        }
    }
}

impl TaskOf for PerStepRegressor {
    const NAME: &'static str = "per-step sequence regressor";
    fn matches(task: Task) -> bool {
        matches!(task, Task::Regressor { .. })
    }
    fn accepts(model: &Model) -> bool {
        Self::matches(model.task) && model.spec.output_steps() > 1
    }
}

impl<T> Trained<T> {
    /// The network's output at every step of `x`, m × T × k (a per-step model's values or
    /// class probabilities). Errors: as [`checked_rows`], and the backend's.
    fn output_per_step(&self, x: &impl Sequences) -> Result<Array3<f64>> {
        let rows = checked_rows(&self.model, x)?;
        let (m, steps, k) = (rows.nrows(), self.model.spec.output_steps(), self.model.spec.outputs());
        let out = self.output(&rows)?;
        // Row-major first: a backend's output may be in another memory order.
        out.as_standard_layout()
            .into_owned()
            .into_shape_with_order((m, steps, k))
            .map_err(|e| Error::Shape(e.to_string()))
    }
}

impl Trained<PerStepRegressor> {
    /// The predicted values at every step (m × T × k).
    ///
    /// Errors: sequences of another T or n than the training ones ([`Error::Shape`]), NaN or
    /// infinite values, a backend error.
    pub fn predict(&self, x: &impl Sequences) -> Result<Array3<f64>> {
        self.output_per_step(x)
    }

    /// R² over every (sequence, step) as one example of k outputs ([`crate::train::r2_score`],
    /// uniform average over the k).
    ///
    /// Errors: targets not m × T × k, and as [`Trained::predict`].
    pub fn score(&self, x: &impl Sequences, y: &Array3<f32>) -> Result<f64> {
        let predicted = self.predict(x)?;
        if predicted.dim() != y.dim() {
            return Err(Error::Shape(format!(
                "the model predicts {:?} (m × T × k) but the targets are {:?}",
                predicted.dim(),
                y.dim()
            )));
        }
        let (m, steps, k) = y.dim();
        // Row-major copies: the caller's targets (and a backend's output) may be column-major.
        let truth = y.mapv(f64::from).as_standard_layout().into_owned();
        let truth = truth.into_shape_with_order((m * steps, k)).expect("a row-major array reshapes");
        let predicted = predicted
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((m * steps, k))
            .expect("row-major reshapes");
        Ok(crate::train::r2_score(truth.view(), predicted.view()))
    }
}

/// Whether `labels` give a class at every step of the rows `x` (sequences of `steps` steps,
/// T > 1): m·T of them, as [`Estimator::fit_per_step_labels`] hands them over.
pub(super) fn labels_at_every_step(steps: Option<usize>, x: &Array2<f32>, labels: &[usize]) -> bool {
    steps.is_some_and(|t| t > 1 && x.nrows() > 0 && labels.len() == x.nrows() * t)
}

/// `spec` with every recurrent layer giving every step, so that its output is applied at each
/// (a softmax at every step for labels per step). Errors: `spec` is not a layer stack.
pub(super) fn at_every_step(spec: NetSpec) -> Result<NetSpec> {
    let Some(mut stack) = spec.net.clone() else {
        return Err(Error::Data("labels at every step need a recurrent network".into()));
    };
    for layer in &mut stack.layers {
        if let Layer::Rnn { per_step, .. } | Layer::Lstm { per_step, .. } = layer {
            *per_step = true;
        }
    }
    Ok(NetSpec::stack(stack, spec.outputs(), spec.output)?.with_weight_decay(spec.weight_decay)?)
}

impl TaskOf for PerStepClassifier {
    const NAME: &'static str = "per-step sequence classifier";
    fn matches(task: Task) -> bool {
        matches!(task, Task::Classifier { .. })
    }
    fn accepts(model: &Model) -> bool {
        Self::matches(model.task) && model.stages.is_empty() && model.spec.output_steps() > 1
    }
}

impl Trained<PerStepClassifier> {
    /// The most probable class at every step (m × T; the first of equals).
    ///
    /// Errors: sequences of another T or n than the training ones ([`Error::Shape`]), NaN or
    /// infinite values, a backend error.
    pub fn predict(&self, x: &impl Sequences) -> Result<Array2<usize>> {
        let p = self.predict_proba(x)?;
        let (m, steps, _) = p.dim();
        let labels = p.outer_iter().flat_map(|seq| {
            seq.outer_iter().map(|step| crate::backend::argmax(step.iter().copied())).collect::<Vec<_>>()
        });
        Ok(Array2::from_shape_vec((m, steps), labels.collect()).expect("one label per step"))
    }

    /// The class probabilities P(yₜ = j | x) at every step (m × T × k, each step's summing to 1).
    ///
    /// Errors: as [`Trained::predict`].
    pub fn predict_proba(&self, x: &impl Sequences) -> Result<Array3<f64>> {
        self.output_per_step(x)
    }

    /// The accuracy over every (sequence, step) of (x, labels m × T), in [0, 1].
    ///
    /// Errors: labels not m × T, and as [`Trained::predict`].
    pub fn score(&self, x: &impl Sequences, labels: &Array2<usize>) -> Result<f64> {
        let predicted = self.predict(x)?;
        if predicted.dim() != labels.dim() {
            return Err(Error::Shape(format!(
                "the model labels {:?} (m × T) but the labels are {:?}",
                predicted.dim(),
                labels.dim()
            )));
        }
        let truth: Vec<usize> = labels.iter().copied().collect();
        let got: Vec<usize> = predicted.iter().copied().collect();
        Ok(crate::train::accuracy(&got, &truth))
    }
}

/// The sequences as the rows `model` reads, after checking T and n against its network's.
fn checked_rows(model: &Model, x: &impl Sequences) -> Result<Array2<f32>> {
    let x = x.sequences()?;
    let (_, steps, n) = x.dim();
    let input = model.spec.net.as_ref().map(|s| s.input);
    if input != Some(InputShape::sequence(steps, n)) {
        let wanted = input.map_or_else(|| "?".into(), |i| format!("{}×{}", i.height, i.width));
        return Err(Error::Shape(format!(
            "the sequences are T×n = {steps}×{n} but the model reads {wanted}: give sequences like its training data"
        )));
    }
    let x = rows(x);
    check_finite(&x, "the sequences")?;
    Ok(x)
}

impl TaskOf for SequenceClassifier {
    const NAME: &'static str = "sequence classifier";
    fn matches(task: Task) -> bool {
        matches!(task, Task::Classifier { .. })
    }
    fn accepts(model: &Model) -> bool {
        Self::matches(model.task)
            && model.stages.is_empty()
            && model.spec.output_steps() == 1
            && RecurrentNet::new(model.spec.clone()).is_ok()
    }
}

impl Trained<SequenceClassifier> {
    /// The most probable class of each sequence (m labels; the first of equals).
    ///
    /// Errors: sequences of another T or n than the training ones ([`Error::Shape`]), NaN or
    /// infinite values, a backend error.
    pub fn predict(&self, x: &impl Sequences) -> Result<Vec<usize>> {
        let p = self.predict_proba(x)?;
        Ok(p.rows().into_iter().map(|row| crate::backend::argmax(row.iter().copied())).collect())
    }

    /// The class probabilities P(y = j | x) at the last step (m × k, rows summing to 1).
    ///
    /// Errors: as [`Trained::predict`].
    pub fn predict_proba(&self, x: &impl Sequences) -> Result<Array2<f64>> {
        let x = checked_rows(&self.model, x)?;
        self.output(&x)
    }

    /// The accuracy on (x, labels), in [0, 1].
    ///
    /// Errors: labels not one per sequence, and as [`Trained::predict`].
    pub fn score(&self, x: &impl Sequences, labels: &[usize]) -> Result<f64> {
        let m = x.sequences()?.dim().0;
        if labels.len() != m {
            return Err(Error::Shape(format!("{m} sequences but {} labels: give one per sequence", labels.len())));
        }
        Ok(crate::train::accuracy(&self.predict(x)?, labels))
    }

    /// The same model as a classifier of m × (T·n) rows (step t's values at columns t·n …),
    /// the layout `wgnn predict` reads from a `.npy` of m × T × n.
    pub fn into_rows(self) -> Trained<Classifier> {
        let Trained {
            model,
            preprocessing,
            backend,
            gpu,
            precision,
            backend_name,
            backend_note,
            status,
            final_cost,
            iterations,
            seed,
            cache,
            ..
        } = self;
        Trained {
            model,
            preprocessing,
            backend,
            gpu,
            precision,
            backend_name,
            backend_note,
            status,
            final_cost,
            iterations,
            seed,
            cache,
            task: std::marker::PhantomData,
        }
    }
}

/// The character-level language model (`wgnn train lstm|rnn --data text:FILE`): recurrent
/// layers over one-hot characters, a softmax over the vocabulary at every step, trained by
/// truncated BPTT over consecutive windows of the text (the state carried from window to
/// window, gradients clipped by global norm), Adam; held-out bits per character on the end
/// of the text (MATH.md, "Character-level language model"). The settings not given come from
/// [`TEXT_DEFAULTS`], which `wgnn train` reads too.
#[derive(Clone, Debug)]
pub struct CharModel {
    kind: Kind,
    hidden: Vec<usize>,
    activation: Activation,
    bptt: usize,
    batch_size: usize,
    learning_rate: f64,
    clip_norm: Option<f64>,
    steps: usize,
    eval_every: usize,
    held_out: f64,
    weight_decay: f64,
    rule: UpdateRule,
    seed: u64,
    backend: BackendChoice,
    gpu: GpuOptions,
    precision: Precision,
}

impl CharModel {
    fn new(kind: Kind, units: usize) -> CharModel {
        let d = TEXT_DEFAULTS;
        CharModel {
            kind,
            hidden: vec![units],
            activation: Activation::Tanh,
            bptt: d.bptt,
            batch_size: d.batch_size,
            learning_rate: d.learning_rate,
            clip_norm: Some(d.clip_norm),
            steps: d.steps,
            eval_every: d.eval_every,
            held_out: d.held_out,
            weight_decay: 0.0,
            rule: UpdateRule::ADAM,
            seed: 0,
            backend: BackendChoice::Auto,
            gpu: GpuOptions::default(),
            precision: Precision::F32,
        }
    }

    /// An LSTM language model of `units` units (the default table's is 256).
    pub fn lstm(units: usize) -> CharModel {
        CharModel::new(Kind::Lstm, units)
    }

    /// An Elman RNN language model of `units` tanh units.
    pub fn rnn(units: usize) -> CharModel {
        CharModel::new(Kind::Rnn, units)
    }

    /// Stacked recurrent layers of these sizes, bottom first (`--hidden 128,128`).
    pub fn hidden(mut self, sizes: &[usize]) -> Self {
        self.hidden = sizes.to_vec();
        self
    }

    /// The RNN's activation (tanh by default; refused for an LSTM by `fit_text`).
    pub fn activation(mut self, activation: Activation) -> Self {
        self.activation = activation;
        self
    }

    /// T, characters per window of truncated BPTT (`--bptt`).
    pub fn bptt(mut self, steps: usize) -> Self {
        self.bptt = steps;
        self
    }

    /// Streams per minibatch (`--batch-size`).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }

    /// The learning rate η (`--learning-rate`).
    pub fn learning_rate(mut self, eta: f64) -> Self {
        self.learning_rate = eta;
        self
    }

    /// τ of clipping by global norm, g ← g·min(1, τ/‖g‖); `None` turns it off (`--clip-norm 0`).
    pub fn clip_norm(mut self, tau: Option<f64>) -> Self {
        self.clip_norm = tau;
        self
    }

    /// Minibatch updates (`--steps`).
    pub fn steps(mut self, n: usize) -> Self {
        self.steps = n;
        self
    }

    /// Held-out bits per character every this many updates and after the last (0: after the
    /// last only; `--eval-every`).
    pub fn eval_every(mut self, n: usize) -> Self {
        self.eval_every = n;
        self
    }

    /// The fraction of the text held out at its end, in [0, 1) (`--held-out`).
    pub fn held_out(mut self, fraction: f64) -> Self {
        self.held_out = fraction;
        self
    }

    /// L2 weight decay λ (`--weight-decay`).
    pub fn weight_decay(mut self, lambda: f64) -> Self {
        self.weight_decay = lambda;
        self
    }

    /// The update rule: [`UpdateRule::ADAM`] by default (`--optimizer sgd` is
    /// [`UpdateRule::NESTEROV`]).
    pub fn rule(mut self, rule: UpdateRule) -> Self {
        self.rule = rule;
        self
    }

    /// The seed of the initial weights.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The backend: [`BackendChoice::Gpu`] computes each window on the GPU; `Auto` and `Cpu`
    /// train on the CPU (as `wgnn train` does).
    pub fn backend(mut self, backend: BackendChoice) -> Self {
        self.backend = backend;
        self
    }

    /// How the GPU is found (API, adapter name).
    pub fn gpu_options(mut self, options: GpuOptions) -> Self {
        self.gpu = options;
        self
    }

    /// The CPU's precision (default f32; the GPU computes in f32).
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The network for a vocabulary of `vocab` characters (1 × T × V one-hot input, a softmax
    /// of V classes at every step).
    ///
    /// Errors: no layers, a layer of 0 units, an activation given to an LSTM, the network's
    /// own checks.
    pub fn spec(&self, vocab: usize) -> Result<NetSpec> {
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            return Err(Error::Data(format!("hidden {:?}: a recurrent layer needs at least 1 unit", self.hidden)));
        }
        if self.kind == Kind::Lstm && self.activation != Activation::Tanh {
            return Err(Error::Data(format!(
                "activation {}: an lstm's gates are fixed (σ and tanh); it goes with rnn",
                self.activation.name()
            )));
        }
        let top = self.hidden.len() - 1;
        let layers = self
            .hidden
            .iter()
            .enumerate()
            .map(|(i, &units)| match self.kind {
                Kind::Rnn => Layer::Rnn { units, activation: self.activation, per_step: i < top },
                _ => Layer::Lstm { units, per_step: i < top },
            })
            .collect();
        Ok(char_model::spec(vocab, self.bptt, layers)?.with_weight_decay(self.weight_decay)?)
    }

    /// Trains on `text` (the last [`CharModel::held_out`] of it held out), in memory.
    ///
    /// Errors ([`Error::Data`], one line): an empty text or one of a single distinct
    /// character, a text too short for one minibatch of windows (or a held-out part shorter
    /// than T + 1), settings out of range (η, τ, the fraction), a run that diverges.
    pub fn fit_text(&self, text: &str) -> Result<TrainedCharModel> {
        self.fit_text_with(text, &mut |_| {}, &AtomicBool::new(false))
    }

    /// As [`CharModel::fit_text`], calling `progress` after every update and stopping after
    /// the current one when `interrupt` is set (the model then holds θ of that update:
    /// [`TrainedCharModel::status`] is [`RunStatus::Interrupted`]).
    pub fn fit_text_with(
        &self,
        text: &str,
        progress: &mut dyn FnMut(&Step),
        interrupt: &AtomicBool,
    ) -> Result<TrainedCharModel> {
        if !(0.0..1.0).contains(&self.held_out) {
            return Err(Error::Data(format!(
                "held_out {}: the held-out fraction must lie in [0, 1) (0: hold nothing out)",
                self.held_out
            )));
        }
        if self.bptt == 0 || self.steps == 0 || self.batch_size == 0 {
            return Err(Error::Data("bptt, steps and batch_size must each be at least 1".into()));
        }
        let corpus = CharText::from_text(text, self.held_out, "the text")?;
        let spec = self.spec(corpus.vocabulary.len())?;
        let net = RecurrentNet::new(spec.clone())?;
        let job = Job {
            batch: self.batch_size,
            rule: self.rule,
            learning_rate: self.learning_rate,
            clip_norm: self.clip_norm,
            steps: self.steps,
            eval_every: self.eval_every,
        };
        let mut theta = crate::model::Init::Uniform.theta(&spec, self.seed);
        let mut on_step = |s: &Step, _: &char_model::Snapshot<'_>| {
            progress(s);
            if interrupt.load(Ordering::SeqCst) { Control::Stop } else { Control::Continue }
        };
        let (train, held) = (&corpus.train, &corpus.validation);
        let (result, backend_name) = match (self.backend, self.precision) {
            (BackendChoice::Gpu, _) => {
                let mut gpu = crate::GpuBackend::new(spec.clone(), &self.gpu)?;
                let name = crate::Backend::name(&gpu);
                (char_model::train_on_gpu(&mut gpu, &net, &mut theta, train, held, &job, None, &mut on_step), name)
            }
            (_, Precision::F64) => (
                char_model::train_from::<f64>(&net, &mut theta, train, held, &job, None, &mut on_step),
                "cpu f64".to_string(),
            ),
            (_, Precision::F32) => (
                char_model::train_from::<f32>(&net, &mut theta, train, held, &job, None, &mut on_step),
                "cpu f32".to_string(),
            ),
        };
        let (updates, held_out) = result?;
        let preprocessing = serde_json::json!({
            "source": "in memory",
            crate::data::text::VOCABULARY_KEY: corpus.vocabulary.to_json(),
            "held_out": self.held_out,
            "bptt": self.bptt,
        });
        Ok(TrainedCharModel {
            spec,
            theta,
            vocabulary: corpus.vocabulary,
            preprocessing,
            held_out,
            updates,
            status: if updates == self.steps { RunStatus::Finished } else { RunStatus::Interrupted },
            seed: self.seed,
            backend_name,
        })
    }
}

/// A trained character model: θ, its network and vocabulary; samples text, scores text in
/// bits per character, saves a run folder `wgnn sample` and `wgnn eval` read.
#[derive(Clone, Debug)]
pub struct TrainedCharModel {
    spec: NetSpec,
    theta: Vec<f64>,
    vocabulary: Vocabulary,
    preprocessing: serde_json::Value,
    held_out: Option<HeldOut>,
    updates: usize,
    status: RunStatus,
    seed: u64,
    backend_name: String,
}

impl TrainedCharModel {
    /// The network (1 × T × V input, V = the vocabulary's size).
    pub fn spec(&self) -> &NetSpec {
        &self.spec
    }

    /// θ in wgnn's layout ([`crate::model::ThetaLayout`]).
    pub fn theta(&self) -> &[f64] {
        &self.theta
    }

    /// The characters it knows, in id order (its one-hot columns and softmax classes).
    pub fn vocabulary(&self) -> &Vocabulary {
        &self.vocabulary
    }

    /// Held-out bits per character after the last update (`None` when nothing was held out,
    /// or for a loaded model).
    pub fn held_out(&self) -> Option<HeldOut> {
        self.held_out
    }

    /// Minibatch updates done (0 for a loaded model without that record).
    pub fn updates(&self) -> usize {
        self.updates
    }

    /// How training ended: finished, or interrupted by the stop flag.
    pub fn status(&self) -> &RunStatus {
        &self.status
    }

    /// The backend that trained it (`cpu f32`, `cpu f64`, a GPU's name).
    pub fn backend_used(&self) -> &str {
        &self.backend_name
    }

    fn net(&self) -> Result<RecurrentNet> {
        RecurrentNet::new(self.spec.clone())
    }

    fn theta_f32(&self) -> Vec<f32> {
        self.theta.iter().map(|&v| v as f32).collect()
    }

    /// Bits per character of `text` under the model (mean cross-entropy / ln 2, in f32 as
    /// `wgnn eval --data text:FILE` computes it), in consecutive windows of T characters
    /// each from a zero state.
    ///
    /// Errors ([`Error::Data`]): a character the model never saw (named, with its position),
    /// a text shorter than T + 1 characters.
    pub fn bits_per_character(&self, text: &str) -> Result<HeldOut> {
        let ids = self.vocabulary.encode(text, "the text")?;
        char_model::bits_per_character(&self.net()?, &self.theta_f32(), &ids)
    }

    /// `length` characters drawn after reading `prime` (every character of it in the
    /// vocabulary; empty: the first drawn uniformly), each from p_τ(c) ∝ p(c)^(1/τ) at
    /// temperature τ = `temperature`, with the draws seeded by `seed`
    /// ([`char_model::sample`]). The same arguments give the same text, and `wgnn sample
    /// --length L --temperature τ --seed S --prime P` prints P followed by it.
    ///
    /// Errors ([`Error::Data`]): a character of `prime` the model never saw (named, with its
    /// position), τ not a finite number > 0.
    pub fn sample(&self, length: usize, temperature: f64, seed: u64, prime: &str) -> Result<String> {
        let prime_ids = self.vocabulary.encode(prime, "the prime")?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut uniform = || rng.random::<f64>();
        let drawn = char_model::sample(&self.net()?, &self.theta_f32(), &prime_ids, length, temperature, &mut uniform)?;
        Ok(self.vocabulary.decode(&drawn))
    }

    /// Writes the model as a finished run folder `dir` (created when missing):
    /// `model.safetensors` (with its vocabulary) and `metrics.json`, which `wgnn sample`,
    /// `wgnn eval` and [`TrainedCharModel::load`] read. Returns the model file's path.
    ///
    /// Errors ([`Error::File`]): `dir` is a file, cannot be written, is busy, or already
    /// holds a run.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let dir = dir.as_ref();
        let folder = RunFolder::open(dir)?;
        if let Some(f) = [MODEL_FILE, CHECKPOINT_FILE, METRICS_FILE].into_iter().find(|f| dir.join(f).exists()) {
            return Err(Error::file(dir, format!("already holds a run ({f}): save into another folder")));
        }
        let mut metadata =
            Metadata { seed: Some(self.seed), preprocessing: self.preprocessing.clone(), ..Default::default() };
        metadata.extra.insert("updates".into(), self.updates.into());
        if let Some(h) = self.held_out {
            metadata.extra.insert("held_out_bits_per_character".into(), h.bits_per_character.into());
        }
        let path = dir.join(MODEL_FILE);
        Checkpoint::new(self.spec.clone(), self.theta.clone(), metadata)?.save(&path)?;
        let metrics = serde_json::json!({
            "status": RunStatus::Finished.name(),
            "updates": self.updates,
            "held_out_bits_per_character": self.held_out.map(|h| h.bits_per_character),
            "data": "in memory (saved by the estimator API)",
        });
        let json = serde_json::to_string_pretty(&metrics).map_err(|e| Error::Data(format!("metrics: {e}")))?;
        crate::atomic::write_bytes(&dir.join(METRICS_FILE), json.as_bytes())?;
        drop(folder);
        Ok(path)
    }

    /// Loads a finished character model (`wgnn train lstm --data text:FILE`'s folder,
    /// [`TrainedCharModel::save`]'s, or its `model.safetensors`).
    ///
    /// Errors: as [`Model::load`]; a model that stores no vocabulary ([`Error::Data`]: not a
    /// character model).
    pub fn load(path: impl AsRef<Path>) -> Result<TrainedCharModel> {
        let path = path.as_ref();
        let ck = Checkpoint::load(&crate::predict::model_file(path)?)?;
        let Some(vocabulary) = Vocabulary::from_preprocessing(&ck.metadata.preprocessing)? else {
            return Err(Error::Data(format!(
                "{} holds {}, which stores no vocabulary: it is not a character model",
                path.display(),
                ck.spec.describe()
            )));
        };
        RecurrentNet::new(ck.spec.clone())?;
        Ok(TrainedCharModel {
            held_out: None,
            updates: ck.metadata.extra.get("updates").and_then(|v| v.as_u64()).unwrap_or(0) as usize,
            spec: ck.spec,
            theta: ck.theta,
            vocabulary,
            preprocessing: ck.metadata.preprocessing,
            status: RunStatus::Finished,
            seed: ck.metadata.seed.unwrap_or(0),
            backend_name: String::new(),
        })
    }
}
