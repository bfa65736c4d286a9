//! Estimators in the spirit of scikit-learn's: a builder per kind of network whose `fit`
//! trains in memory (no file is written or read) through the same named steps as
//! `wgnn train` ([`crate::train::train_in_memory`]; the settings not given come from the one
//! table of per-kind defaults, [`Kind::defaults`]), and returns a trained model that
//! predicts, scores, saves a run folder `wgnn predict`/`eval` read, and loads one `wgnn train`
//! wrote.
//!
//! ```
//! use ndarray::Array2;
//! use wgnn::Mlp;
//!
//! // Two classes: is x₀ + x₁ above 1? (200 examples, 2 features, f32.)
//! let x = Array2::from_shape_fn((200, 2), |(i, j)| ((i * 7 + j * 13) % 20) as f32 / 10.0);
//! let y: Vec<usize> = x.rows().into_iter().map(|r| usize::from(r[0] + r[1] > 2.0)).collect();
//! let model = Mlp::classifier(&[16]).iterations(200).learning_rate(0.01).seed(1).fit(&x, &y)?;
//! let predicted: Vec<usize> = model.predict(&x)?;
//! let accuracy = model.score(&x, &y)?;
//! assert!(accuracy > 0.9, "accuracy {accuracy}");
//! assert_eq!(predicted.len(), 200);
//! # Ok::<(), wgnn::Error>(())
//! ```
//!
//! The builders: [`Mlp`] (classifier, regressor, multi-label), [`Softmax`],
//! [`SparseAutoencoder`], [`Network`] (a layer stack), [`StackedAutoencoder`] (`train
//! stacked`), [`Recurrent`] (LSTM/RNN sequence classifiers) and [`CharModel`] (a
//! character-level language model on text, with sampling): one per kind of `wgnn train`.
//! A trained model builds the backend it predicts with once, on first use, and keeps it
//! ([`Trained::backends_built`]).
//!
//! Shapes: examples `x` are m × n `f32` (one row per example; a sequence model's are m × T × n,
//! [`Sequences`]); labels are m class numbers 0..k−1; a regressor's targets are m × outputs
//! `f32`, a multi-label classifier's m × k values 0 or 1. Bad input (a width the model does not
//! take, labels that do not match the examples, NaN or infinite values) is refused with one
//! line ([`Error::Shape`], [`Error::Data`]) before any work. This module prints nothing;
//! training can report progress and be stopped ([`Estimator::fit_with`]).

pub mod choose;
pub mod defaults;
pub mod sequence;
pub mod stacked;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use ndarray::Array2;

use crate::checkpoint::{Checkpoint, Metadata};
use crate::gpu::GpuOptions;
use crate::model::{Activation, Init, InputShape, LayerStack, NetSpec, Output, ThetaLayout, parse_net};
use crate::optim::{Progress, Schedule};
use crate::predict::{BackendSource, Model, Task};
use crate::train::{
    CHECKPOINT_FILE, METRICS_FILE, MODEL_FILE, RunFolder, RunStatus, TrainJob, TrainOutcome, accuracy, r2_score,
    train_in_memory,
};
use crate::{Backend, Error, Result, Targets};

pub use choose::{BackendChoice, Precision, build_backend, build_sendable_backend, cpu_backend};
pub use defaults::{
    DenseSettings, Kind, KindDefaults, LENET, OptimizerSettings, Solver, TEXT_DEFAULTS, TextDefaults,
    weight_decay_of_alpha,
};
pub use sequence::{
    CharModel, PerStepClassifier, PerStepRegressor, Recurrent, SequenceClassifier, Sequences, TrainedCharModel,
};
pub use stacked::StackedAutoencoder;

/// The task of a classifier (a softmax output over k classes): `fit(&x, &labels)`,
/// `predict` gives labels, `predict_proba` probabilities, `score` accuracy.
#[derive(Clone, Copy, Debug)]
pub struct Classifier;
/// The task of a regressor (a squared-error output): `fit(&x, &targets)`, `predict` gives
/// values, `score` R².
#[derive(Clone, Copy, Debug)]
pub struct Regressor;
/// The task of an autoencoder (n-h-n, trained to reconstruct its input): `fit(&x)`,
/// `transform` gives features, `predict` reconstructions, `score` their R².
#[derive(Clone, Copy, Debug)]
pub struct Autoencoder;
/// The task of a multi-label classifier (a sigmoid output with the binary cross-entropy,
/// [`Output::SigmoidBce`], as scikit-learn's `MLPClassifier` for indicator targets):
/// `fit(&x, &y)` with 0/1 targets (m × k), `predict` gives the 0/1 decisions,
/// `predict_proba` the per-label probabilities P(yⱼ = 1 | x), `score` the subset accuracy.
#[derive(Clone, Copy, Debug)]
pub struct MultiLabel;

/// Multilayer perceptrons (`wgnn train mlp`).
pub struct Mlp;

impl Mlp {
    /// A classifier with these hidden layers (ReLU) and a softmax output; Adam, η = 1e-3,
    /// batch min(200, m), 30 epochs, λ = 1e-5 unless set ([`Kind::defaults`]).
    pub fn classifier(hidden: &[usize]) -> Estimator<Classifier> {
        Estimator::new(Kind::Mlp).hidden(hidden)
    }

    /// A regressor with these hidden layers (ReLU) and an identity output with the squared
    /// error; the defaults as [`Mlp::classifier`].
    pub fn regressor(hidden: &[usize]) -> Estimator<Regressor> {
        Estimator::new(Kind::Mlp).hidden(hidden)
    }

    /// A multi-label classifier with these hidden layers (ReLU) and k sigmoid outputs trained
    /// with the binary cross-entropy J = −(1/m) Σ [y log a + (1 − y) log(1 − a)] (computed in
    /// the safe form from z; [`crate::maths`]), as `wgnn train mlp --output sigmoid-bce`; the
    /// defaults as [`Mlp::classifier`].
    pub fn multilabel(hidden: &[usize]) -> Estimator<MultiLabel> {
        Estimator::new(Kind::Mlp).hidden(hidden).output(Output::SigmoidBce)
    }
}

/// Softmax regression (`wgnn train softmax`): L-BFGS, 100 iterations, λ = 1e-4.
pub struct Softmax;

impl Softmax {
    /// The classifier (UFLDL's softmax regression exercise settings).
    #[allow(clippy::new_ret_no_self)] // One builder type serves every kind.
    pub fn new() -> Estimator<Classifier> {
        Estimator::new(Kind::Softmax)
    }
}

/// The sparse autoencoder (`wgnn train autoencoder`): n-hidden-n, sigmoid, ρ = 0.01, β = 3,
/// λ = 1e-4, L-BFGS, 400 iterations (UFLDL's exercise).
pub struct SparseAutoencoder;

impl SparseAutoencoder {
    /// The autoencoder with `hidden` sigmoid units.
    #[allow(clippy::new_ret_no_self)] // One builder type serves every kind.
    pub fn new(hidden: usize) -> Estimator<Autoencoder> {
        Estimator::new(Kind::Autoencoder).hidden(&[hidden])
    }
}

/// Layer-stack classifiers (`wgnn train cnn`): convolution, pooling, maxout, dense layers.
pub struct Network;

impl Network {
    /// The network `--net` describes (e.g. `"conv 20x5x5 relu, maxpool 2, dense 100 relu,
    /// softmax"`, grammar: [`crate::model::parse_net`]), ending in a softmax over the labels'
    /// classes; Adam, η = 1e-3, batch 64, 10 epochs. The shape of an example comes from
    /// [`Estimator::input_shape`], or is 1 × s × s when n = s² (a square grey picture).
    pub fn from_net(net: &str) -> Estimator<Classifier> {
        Estimator { net: Some(net.to_string()), ..Estimator::new(Kind::Cnn) }
    }
}

/// A network to train and its settings; built by [`Mlp`], [`Softmax`],
/// [`SparseAutoencoder`], [`Network`] and [`Recurrent`], changed knob by knob, trained by
/// `fit`. The knobs
/// not set take the kind's defaults ([`Kind::defaults`]), as `wgnn train` does.
#[derive(Clone, Debug)]
pub struct Estimator<T> {
    kind: Kind,
    dense: DenseSettings,
    net: Option<String>,
    input_shape: Option<String>,
    /// T of a sequence model's examples (set by its `fit` from the m × T × n data).
    steps: Option<usize>,
    alpha: Option<f64>,
    optimizer: OptimizerSettings,
    validation: f64,
    patience: Option<usize>,
    init: Init,
    seed: u64,
    backend: BackendChoice,
    gpu: GpuOptions,
    precision: Precision,
    task: PhantomData<T>,
}

impl<T> Estimator<T> {
    fn new(kind: Kind) -> Estimator<T> {
        Estimator {
            kind,
            dense: DenseSettings::default(),
            net: None,
            input_shape: None,
            steps: None,
            alpha: None,
            optimizer: OptimizerSettings::of(kind),
            validation: 0.0,
            patience: None,
            init: Init::Uniform,
            seed: 0,
            backend: BackendChoice::Auto,
            gpu: GpuOptions::default(),
            precision: Precision::F32,
            task: PhantomData,
        }
    }

    /// Hidden layer sizes: a dense kind's layers, or a sequence model's recurrent layers
    /// (bottom first).
    pub fn hidden(mut self, sizes: &[usize]) -> Self {
        self.dense.hidden = Some(sizes.to_vec());
        self
    }

    /// The hidden activation (dense kinds; an RNN's, tanh by default — an LSTM's gates are
    /// fixed and refuse one).
    pub fn activation(mut self, activation: Activation) -> Self {
        self.dense.activation = Some(activation);
        self
    }

    /// The output of a squared-error network (a regressor, an autoencoder).
    pub fn output(mut self, output: Output) -> Self {
        self.dense.output = Some(output);
        self
    }

    /// The optimizer (`--optimizer`).
    pub fn solver(mut self, solver: Solver) -> Self {
        self.optimizer.solver = solver;
        self
    }

    /// Iterations of a full-batch solver, epochs of sgd and adam (`--iterations`).
    pub fn iterations(mut self, n: usize) -> Self {
        self.optimizer.iterations = n;
        self
    }

    /// Epochs of sgd and adam: the same knob as [`Estimator::iterations`].
    pub fn epochs(self, n: usize) -> Self {
        self.iterations(n)
    }

    /// Minibatch size of sgd and adam (at most the training examples are used).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.optimizer.batch_size = n;
        self
    }

    /// The learning rate η of gd, sgd and adam.
    pub fn learning_rate(mut self, eta: f64) -> Self {
        self.optimizer.learning_rate = Some(eta);
        self
    }

    /// The learning-rate schedule of sgd and adam.
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.optimizer.schedule = schedule;
        self
    }

    /// sgd's momentum μ in [0, 1) (0: plain SGD).
    pub fn momentum(mut self, mu: f64) -> Self {
        self.optimizer.momentum = Some(mu);
        self
    }

    /// The cost tolerance and the iterations (epochs) without a decrease by it before the
    /// run counts as converged (scikit-learn's `tol`, `n_iter_no_change`).
    pub fn tolerance(mut self, tol: f64, n_iter_no_change: usize) -> Self {
        self.optimizer.tol = Some(tol);
        self.optimizer.n_iter_no_change = Some(n_iter_no_change);
        self
    }

    /// L2 weight decay λ: the cost gets + (λ/2)·‖W‖² (MATH.md, "Cost"). Not with
    /// [`Estimator::alpha`].
    pub fn weight_decay(mut self, lambda: f64) -> Self {
        self.dense.weight_decay = Some(lambda);
        self
    }

    /// scikit-learn's L2 penalty α instead of λ: λ = α/n ([`weight_decay_of_alpha`]).
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = Some(alpha);
        self
    }

    /// The seed of the initial weights, the validation split and the minibatch order.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The initial weights' distribution.
    pub fn init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }

    /// Which backend trains and predicts ([`build_backend`]; default: as `--backend auto`).
    pub fn backend(mut self, backend: BackendChoice) -> Self {
        self.backend = backend;
        self
    }

    /// How the GPU is found (API, adapter name).
    pub fn gpu_options(mut self, options: GpuOptions) -> Self {
        self.gpu = options;
        self
    }

    /// The CPU backend's precision (default f32).
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Holds out this fraction of the examples (a seeded draw) to watch the validation metric;
    /// the θ with the best one is kept.
    pub fn validation(mut self, fraction: f64) -> Self {
        self.validation = fraction;
        self
    }

    /// Early stopping: stop after this many checks without a better validation metric (needs
    /// [`Estimator::validation`]).
    pub fn patience(mut self, checks: usize) -> Self {
        self.patience = Some(checks);
        self
    }

    /// The shape of one example of a layer stack, CHANNELSxHEIGHTxWIDTH (e.g. `1x28x28`).
    pub fn input_shape(mut self, shape: &str) -> Self {
        self.input_shape = Some(shape.to_string());
        self
    }

    /// The network this estimator would train on m × `inputs` examples with `outputs`
    /// classes or target columns (step "network"). A sequence model's `inputs` are T·n and
    /// its T comes from the data `fit` is given; with `regression` it is a per-step regressor
    /// of `outputs`/T values per step.
    ///
    /// Errors: settings that make no network (a layer stack's shape or grammar, both α and λ,
    /// the network's own checks).
    pub fn spec(&self, inputs: usize, outputs: usize, regression: bool) -> Result<NetSpec> {
        if self.alpha.is_some() && self.dense.weight_decay.is_some() {
            return Err(Error::Data(
                "alpha and weight_decay both set the L2 penalty: give one (α is scikit-learn's, λ = α/n)".into(),
            ));
        }
        if matches!(self.kind, Kind::Lstm | Kind::Rnn) {
            return self.sequence_spec(inputs, outputs, regression);
        }
        if self.kind != Kind::Cnn {
            return self.kind.dense_spec(inputs, outputs, regression, &self.dense);
        }
        let input = match &self.input_shape {
            Some(text) => InputShape::parse(text)?,
            None => {
                let side = (inputs as f64).sqrt().round() as usize;
                if side * side != inputs {
                    return Err(Error::Shape(format!(
                        "a layer stack needs the shape of an example: give input_shape(\"CxHxW\") (the data has {inputs} values per example)"
                    )));
                }
                InputShape::image(1, side, side)
            }
        };
        if input.len() != inputs {
            return Err(Error::Shape(format!(
                "the input shape {} holds {} values, but the data has {inputs} per example",
                input.describe(),
                input.len()
            )));
        }
        let parsed = parse_net(self.net.as_deref().or(self.kind.defaults().net).unwrap_or(LENET))?;
        if parsed.output != Output::Softmax {
            return Err(Error::Data(format!("the net ends in {}: a classifier ends in softmax", parsed.output.name())));
        }
        if let Some(n) = parsed.outputs.filter(|&n| n != outputs) {
            return Err(Error::Data(format!("the net ends in softmax {n}, but the labels have {outputs} classes")));
        }
        let stack = LayerStack { input, layers: parsed.layers };
        let lambda = self.dense.weight_decay.unwrap_or(self.kind.defaults().weight_decay);
        Ok(NetSpec::stack(stack, outputs, Output::Softmax)?.with_weight_decay(lambda)?)
    }

    /// Steps network → optimizer → backend → train, in memory.
    fn fit_targets(
        &self,
        x: &Array2<f32>,
        y: Y<'_>,
        progress: &mut dyn FnMut(&Progress<'_>),
        interrupt: &AtomicBool,
    ) -> Result<Trained<T>> {
        check_finite(x, "the examples")?;
        let every_step = matches!(y, Y::Labels(l) if sequence::labels_at_every_step(self.steps, x, l));
        let (outputs, regression, task) = match y {
            Y::Inputs => (x.ncols(), false, "autoencoder"),
            Y::ZeroOne(v) => {
                check_rows(x, v.nrows(), "target rows")?;
                check_finite(v, "the targets")?;
                crate::cpu::check_zero_one(&v.into())?;
                if self.dense.output != Some(Output::SigmoidBce) {
                    return Err(Error::Data(
                        "a multi-label classifier ends in sigmoid-bce: leave its output as Mlp::multilabel sets it"
                            .into(),
                    ));
                }
                (v.ncols(), true, "multi-label classifier")
            }
            // T labels per sequence (m·T): a softmax at every step ([`Recurrent`]'s `fit_per_step_labels`).
            Y::Labels(l) if every_step => (l.iter().max().map_or(0, |&m| m + 1), false, "per-step classifier"),
            Y::Labels(l) => {
                check_rows(x, l.len(), "labels")?;
                let classes = l.iter().max().map_or(0, |&m| m + 1);
                if l.iter().all(|&c| c == l[0]) {
                    return Err(Error::Data(format!(
                        "every label is {}: a classifier needs at least 2 classes",
                        l.first().copied().unwrap_or(0)
                    )));
                }
                (classes, false, "classifier")
            }
            Y::Values(v) => {
                check_rows(x, v.nrows(), "target rows")?;
                check_finite(v, "the targets")?;
                (v.ncols(), true, "regressor")
            }
        };
        let mut spec = self.spec(x.ncols(), outputs, regression)?;
        if every_step {
            spec = sequence::at_every_step(spec)?;
        }
        let mut optimizer = self.optimizer.clone();
        optimizer.seed = self.seed;
        if let Some(alpha) = self.alpha {
            if !(alpha >= 0.0 && alpha.is_finite()) {
                return Err(Error::Data(format!("alpha {alpha}: the L2 penalty α must be a finite number ≥ 0")));
            }
            let n_train = crate::data::hold_out(x.nrows(), self.validation, 0, "validation")?.0.len();
            let (lambda, _) = weight_decay_of_alpha(alpha, optimizer.solver, optimizer.batch_size, n_train);
            spec = spec.with_weight_decay(lambda)?;
        }
        let method = optimizer.method(ThetaLayout::new(&spec).len())?;
        let stop = optimizer.stop(&method);
        let (mut backend, note) = build_backend(self.backend, spec.clone(), self.precision, &self.gpu)?;
        let preprocessing = serde_json::json!({
            "source": "in memory",
            "targets": if regression { Some("in memory") } else { None },
            "classes": null,
        });
        let job = TrainJob {
            stop,
            init: self.init,
            seed: self.seed,
            validation_fraction: self.validation,
            patience: self.patience,
            data_description: format!("{} in-memory examples ({task})", x.nrows()),
            preprocessing: preprocessing.clone(),
            ..TrainJob::new(spec.clone(), method, optimizer.iterations, PathBuf::new())
        };
        let y = match y {
            Y::Inputs => Targets::Inputs,
            Y::Labels(l) => Targets::Labels(l),
            Y::Values(v) | Y::ZeroOne(v) => Targets::Values(v.into()),
        };
        let outcome = train_in_memory(job, backend.as_mut(), x, y, progress, interrupt)?;
        if let RunStatus::Diverged { reason } = &outcome.status {
            return Err(Error::Data(format!("training diverged ({reason}): lower the learning rate")));
        }
        Trained::from_outcome(self, spec, backend.name(), note, preprocessing, outcome)
    }
}

impl Estimator<Classifier> {
    /// Trains on examples `x` (m × n) with class labels `labels` (m numbers 0..k−1, k ≥ 2).
    ///
    /// Errors: labels not one per example, fewer than 2 classes, NaN or infinite values,
    /// settings or a backend that cannot train (one line each); a run that diverges.
    pub fn fit(&self, x: &Array2<f32>, labels: &[usize]) -> Result<Trained<Classifier>> {
        self.fit_with(x, labels, &mut |_| {}, &AtomicBool::new(false))
    }

    /// As [`Estimator::fit`], calling `progress` after every step and stopping after the
    /// current one when `interrupt` is set (the model then holds θ of the last step:
    /// [`Trained::status`] is [`RunStatus::Interrupted`]).
    pub fn fit_with(
        &self,
        x: &Array2<f32>,
        labels: &[usize],
        progress: &mut dyn FnMut(&Progress<'_>),
        interrupt: &AtomicBool,
    ) -> Result<Trained<Classifier>> {
        self.fit_targets(x, Y::Labels(labels), progress, interrupt)
    }
}

impl Estimator<Regressor> {
    /// Trains on examples `x` (m × n) with real-valued targets `y` (m × outputs).
    ///
    /// Errors: as the classifier's `fit`, with targets instead of labels.
    pub fn fit(&self, x: &Array2<f32>, y: &Array2<f32>) -> Result<Trained<Regressor>> {
        self.fit_with(x, y, &mut |_| {}, &AtomicBool::new(false))
    }

    /// As [`Estimator::fit`], with progress and a stop flag (see the classifier's).
    pub fn fit_with(
        &self,
        x: &Array2<f32>,
        y: &Array2<f32>,
        progress: &mut dyn FnMut(&Progress<'_>),
        interrupt: &AtomicBool,
    ) -> Result<Trained<Regressor>> {
        self.fit_targets(x, Y::Values(y), progress, interrupt)
    }
}

impl Estimator<Autoencoder> {
    /// The sparsity target ρ (0 turns the penalty off) and its weight β.
    pub fn sparsity(mut self, rho: f64, beta: f64) -> Self {
        self.dense.sparsity = Some(rho);
        self.dense.sparsity_weight = beta;
        self
    }

    /// Trains on examples `x` (m × n) to reconstruct them.
    ///
    /// Errors: as the classifier's `fit`, without labels.
    pub fn fit(&self, x: &Array2<f32>) -> Result<Trained<Autoencoder>> {
        self.fit_with(x, &mut |_| {}, &AtomicBool::new(false))
    }

    /// As [`Estimator::fit`], with progress and a stop flag (see the classifier's).
    pub fn fit_with(
        &self,
        x: &Array2<f32>,
        progress: &mut dyn FnMut(&Progress<'_>),
        interrupt: &AtomicBool,
    ) -> Result<Trained<Autoencoder>> {
        self.fit_targets(x, Y::Inputs, progress, interrupt)
    }
}

enum Y<'a> {
    Inputs,
    Labels(&'a [usize]),
    Values(&'a Array2<f32>),
    ZeroOne(&'a Array2<f32>),
}

impl Estimator<MultiLabel> {
    /// Trains on examples `x` (m × n) with 0/1 targets `y` (m × k, one column per label;
    /// several may be 1 in a row).
    ///
    /// Errors: targets not one row per example or not all 0 or 1, and as the classifier's
    /// `fit`.
    pub fn fit(&self, x: &Array2<f32>, y: &Array2<f32>) -> Result<Trained<MultiLabel>> {
        self.fit_with(x, y, &mut |_| {}, &AtomicBool::new(false))
    }

    /// As [`Estimator::fit`], with progress and a stop flag (see the classifier's).
    pub fn fit_with(
        &self,
        x: &Array2<f32>,
        y: &Array2<f32>,
        progress: &mut dyn FnMut(&Progress<'_>),
        interrupt: &AtomicBool,
    ) -> Result<Trained<MultiLabel>> {
        self.fit_targets(x, Y::ZeroOne(y), progress, interrupt)
    }
}

fn check_rows(x: &Array2<f32>, rows: usize, what: &str) -> Result<()> {
    if rows != x.nrows() {
        return Err(Error::Shape(format!("{} examples but {rows} {what}: give one per example", x.nrows())));
    }
    Ok(())
}

fn check_finite(a: &Array2<f32>, what: &str) -> Result<()> {
    if a.is_empty() {
        return Err(Error::Data(format!(
            "{what} are empty ({}×{}): give at least one row and column",
            a.nrows(),
            a.ncols()
        )));
    }
    if let Some(((i, j), v)) = a.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::Data(format!("{what} hold {v} at row {i}, column {j}: give finite numbers only")));
    }
    Ok(())
}

/// A trained network: θ with its spec, ready to predict and to save. `T` is its task
/// ([`Classifier`], [`Regressor`], [`Autoencoder`], [`MultiLabel`], [`SequenceClassifier`],
/// [`PerStepRegressor`]); the backend it predicts with is built on first use and kept
/// ([`Trained::backends_built`]). `Send + Sync`: it may be shared between threads (their
/// predictions then take turns on the kept backend).
#[derive(Clone, Debug)]
pub struct Trained<T> {
    model: Model,
    preprocessing: serde_json::Value,
    backend: BackendChoice,
    gpu: GpuOptions,
    precision: Precision,
    backend_name: String,
    backend_note: Option<String>,
    status: RunStatus,
    final_cost: f64,
    iterations: usize,
    seed: u64,
    cache: BackendCache,
    task: PhantomData<T>,
}

/// The backends a trained model predicts with: built on first use, one per network (the
/// model's own, each stage's encoder), and kept for the next call. A clone starts empty.
#[derive(Default)]
struct BackendCache(Mutex<CacheSlots>);

#[derive(Default)]
struct CacheSlots {
    built: Vec<(NetSpec, Box<dyn Backend + Send>)>,
    builds: usize,
}

impl Clone for BackendCache {
    fn clone(&self) -> BackendCache {
        BackendCache::default()
    }
}

impl std::fmt::Debug for BackendCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = self.0.lock().map_or(0, |s| s.built.len());
        write!(f, "BackendCache {{ kept: {kept} }}")
    }
}

/// The cache as a [`BackendSource`] for one prediction, building what it lacks with `choice`.
struct Cached<'a> {
    slots: &'a mut CacheSlots,
    choice: BackendChoice,
    precision: Precision,
    gpu: &'a GpuOptions,
}

impl BackendSource for Cached<'_> {
    fn backend(&mut self, spec: &NetSpec) -> Result<&mut dyn Backend> {
        let i = match self.slots.built.iter().position(|(s, _)| s == spec) {
            Some(i) => i,
            None => {
                let (b, _) = build_sendable_backend(self.choice, spec.clone(), self.precision, self.gpu)?;
                self.slots.builds += 1;
                self.slots.built.push((spec.clone(), b));
                self.slots.built.len() - 1
            }
        };
        Ok(self.slots.built[i].1.as_mut())
    }
}

impl<T> Trained<T> {
    fn from_outcome(
        estimator: &Estimator<T>,
        spec: NetSpec,
        backend_name: String,
        backend_note: Option<String>,
        preprocessing: serde_json::Value,
        outcome: TrainOutcome,
    ) -> Result<Trained<T>> {
        let ck = Checkpoint::new(
            spec,
            outcome.theta,
            Metadata { preprocessing: preprocessing.clone(), ..Default::default() },
        )?;
        Ok(Trained {
            model: Model::from_checkpoint(&ck)?,
            preprocessing,
            backend: estimator.backend,
            gpu: estimator.gpu.clone(),
            precision: estimator.precision,
            backend_name,
            backend_note,
            status: outcome.status,
            final_cost: outcome.final_cost,
            iterations: outcome.summary.iterations,
            seed: estimator.seed,
            cache: BackendCache::default(),
            task: PhantomData,
        })
    }

    /// The network (layer sizes, activations, λ).
    pub fn spec(&self) -> &NetSpec {
        &self.model.spec
    }

    /// The trained parameters θ in wgnn's layout ([`ThetaLayout`]).
    pub fn theta(&self) -> &[f64] {
        &self.model.theta
    }

    /// The model as `wgnn predict` sees it (network, stages, task).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// How training ended: [`RunStatus::Finished`], or [`RunStatus::Interrupted`] by the
    /// stop flag.
    pub fn status(&self) -> &RunStatus {
        &self.status
    }

    /// J(θ) over all training examples at the end (NaN for a loaded model).
    pub fn final_cost(&self) -> f64 {
        self.final_cost
    }

    /// Iterations (epochs) trained (0 for a loaded model).
    pub fn iterations(&self) -> usize {
        self.iterations
    }

    /// The backend that trained it (`cpu f32`, a GPU's name) and, when `auto` chose the
    /// CPU, why.
    pub fn backend_used(&self) -> (&str, Option<&str>) {
        (&self.backend_name, self.backend_note.as_deref())
    }

    /// Predicts with another backend from now on: the backends kept from earlier predictions
    /// are dropped when `backend` differs from the one they were built for (and the count of
    /// [`Trained::backends_built`] starts again from 0).
    pub fn with_backend(mut self, backend: BackendChoice) -> Self {
        if backend != self.backend {
            self.cache = BackendCache::default();
        }
        self.backend = backend;
        self
    }

    /// How many backends this model has built for its predictions so far: each network it
    /// computes (its own, each stage's encoder) gets one on first use, kept for the next
    /// calls, so predicting twice builds no more than predicting once.
    pub fn backends_built(&self) -> usize {
        self.cache.0.lock().map_or(0, |s| s.builds)
    }

    /// Runs `f` with the kept backends (building those it needs).
    fn with_backends<R>(&self, f: impl FnOnce(&mut dyn BackendSource) -> Result<R>) -> Result<R> {
        let mut slots = self.cache.0.lock().unwrap_or_else(|poisoned| {
            // A prediction panicked midway: its backends may be half-updated, so build afresh.
            let mut slots = poisoned.into_inner();
            slots.built.clear();
            slots
        });
        f(&mut Cached { slots: &mut slots, choice: self.backend, precision: self.precision, gpu: &self.gpu })
    }

    fn output(&self, x: &Array2<f32>) -> Result<Array2<f64>> {
        check_finite(x, "the examples")?;
        self.with_backends(|b| self.model.predict_on(x, b))
    }

    /// Writes the model as a finished run folder `dir` (created when missing):
    /// `model.safetensors` and `metrics.json`, which `wgnn predict --model DIR` and `wgnn eval`
    /// read and [`Trained::load`] loads. Returns the model file's path.
    ///
    /// Errors ([`Error::File`]): `dir` is a file, cannot be written, is being written by
    /// another process, or already holds a run (nothing in it is replaced).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let dir = dir.as_ref();
        let folder = RunFolder::open(dir)?;
        if let Some(f) = [MODEL_FILE, CHECKPOINT_FILE, METRICS_FILE].into_iter().find(|f| dir.join(f).exists()) {
            return Err(Error::file(dir, format!("already holds a run ({f}): save into another folder")));
        }
        let mut extra = serde_json::Map::new();
        extra.insert("final_cost".into(), self.final_cost.into());
        extra.insert("iterations".into(), self.iterations.into());
        let metadata =
            Metadata { seed: Some(self.seed), preprocessing: self.preprocessing.clone(), extra, ..Default::default() };
        let path = dir.join(MODEL_FILE);
        Checkpoint::new(self.model.spec.clone(), self.model.theta.clone(), metadata)?.save(&path)?;
        let metrics = serde_json::json!({
            "wgnn_version": env!("CARGO_PKG_VERSION"),
            "status": RunStatus::Finished.name(),
            "spec": self.model.spec,
            "backend": self.backend_name,
            "data": "in memory (saved by the estimator API)",
            "seed": self.seed,
            "final_cost": self.final_cost.is_finite().then_some(self.final_cost),
            "iterations": self.iterations,
        });
        let json = serde_json::to_string_pretty(&metrics).map_err(|e| Error::Data(format!("metrics: {e}")))?;
        crate::atomic::write_bytes(&dir.join(METRICS_FILE), json.as_bytes())?;
        drop(folder);
        Ok(path)
    }

    /// Loads a finished run (`wgnn train`'s or [`Trained::save`]'s folder, or its
    /// `model.safetensors`), to predict with the `auto` backend.
    ///
    /// Errors: as [`Model::load`]; a model of another task than `T` ([`Error::Data`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Trained<T>>
    where
        T: TaskOf,
    {
        let file = crate::predict::model_file(path.as_ref())?;
        let ck = Checkpoint::load(&file)?;
        let model = Model::from_checkpoint(&ck)?;
        if !T::accepts(&model) {
            return Err(Error::Data(format!(
                "{} holds {} ({:?}), not a {}: load it as that",
                path.as_ref().display(),
                model.spec.describe(),
                model.task,
                T::NAME
            )));
        }
        let final_cost = ck.metadata.extra.get("final_cost").and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
        let iterations = ck.metadata.extra.get("iterations").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
        Ok(Trained {
            model,
            preprocessing: ck.metadata.preprocessing.clone(),
            backend: BackendChoice::Auto,
            gpu: GpuOptions::default(),
            precision: Precision::F32,
            backend_name: String::new(),
            backend_note: None,
            status: RunStatus::Finished,
            final_cost,
            iterations,
            seed: ck.metadata.seed.unwrap_or(0),
            cache: BackendCache::default(),
            task: PhantomData,
        })
    }
}

/// The tasks [`Trained::load`] tells apart.
pub trait TaskOf {
    /// `classifier`, `regressor`, `autoencoder`, …
    const NAME: &'static str;
    /// True when a model of `task` is one of these.
    fn matches(task: Task) -> bool;
    /// True when `model` is one of these (by default: its task [`TaskOf::matches`]).
    fn accepts(model: &Model) -> bool {
        Self::matches(model.task)
    }
}

impl TaskOf for MultiLabel {
    const NAME: &'static str = "multi-label classifier";
    fn matches(task: Task) -> bool {
        matches!(task, Task::MultiLabel { .. })
    }
}

impl TaskOf for Classifier {
    const NAME: &'static str = "classifier";
    fn matches(task: Task) -> bool {
        matches!(task, Task::Classifier { .. })
    }
}

impl TaskOf for Regressor {
    const NAME: &'static str = "regressor";
    fn matches(task: Task) -> bool {
        matches!(task, Task::Regressor { .. })
    }
}

impl TaskOf for Autoencoder {
    const NAME: &'static str = "autoencoder";
    fn matches(task: Task) -> bool {
        matches!(task, Task::Autoencoder { .. })
    }
}

impl Trained<Classifier> {
    /// The most probable class of each example (m labels; the first of equals).
    ///
    /// Errors: `x` of another width than the training examples ([`Error::Shape`]), NaN or
    /// infinite values, a backend error.
    pub fn predict(&self, x: &Array2<f32>) -> Result<Vec<usize>> {
        let p = self.predict_proba(x)?;
        Ok(p.rows().into_iter().map(|row| crate::backend::argmax(row.iter().copied())).collect())
    }

    /// The class probabilities P(y = j | x) (m × k, rows summing to 1; MATH.md, "Softmax").
    ///
    /// Errors: as [`Trained::predict`].
    pub fn predict_proba(&self, x: &Array2<f32>) -> Result<Array2<f64>> {
        self.output(x)
    }

    /// The accuracy on (x, labels): the fraction predicted right, in [0, 1] (scikit-learn's
    /// `ClassifierMixin.score`).
    ///
    /// Errors: labels not one per example, and as [`Trained::predict`].
    pub fn score(&self, x: &Array2<f32>, labels: &[usize]) -> Result<f64> {
        check_rows(x, labels.len(), "labels")?;
        Ok(accuracy(&self.predict(x)?, labels))
    }
}

impl Trained<Regressor> {
    /// The predicted values (m × outputs).
    ///
    /// Errors: `x` of another width than the training examples ([`Error::Shape`]), NaN or
    /// infinite values, a backend error.
    pub fn predict(&self, x: &Array2<f32>) -> Result<Array2<f64>> {
        self.output(x)
    }

    /// R² on (x, y) ([`r2_score`]: scikit-learn's `RegressorMixin.score`, uniform average over
    /// outputs; 1 is perfect, 0 what the mean gives).
    ///
    /// Errors: targets not m × outputs, and as [`Trained::predict`].
    pub fn score(&self, x: &Array2<f32>, y: &Array2<f32>) -> Result<f64> {
        check_rows(x, y.nrows(), "target rows")?;
        let predicted = self.predict(x)?;
        if predicted.ncols() != y.ncols() {
            return Err(Error::Shape(format!(
                "the model predicts {} values per example but the targets have {}",
                predicted.ncols(),
                y.ncols()
            )));
        }
        Ok(r2_score(y.mapv(f64::from).view(), predicted.view()))
    }
}

impl Trained<Autoencoder> {
    /// The reconstructions h(x) (m × n).
    ///
    /// Errors: `x` of another width than the training examples ([`Error::Shape`]), NaN or
    /// infinite values, a backend error.
    pub fn predict(&self, x: &Array2<f32>) -> Result<Array2<f64>> {
        self.output(x)
    }

    /// The features: the hidden activations a⁽²⁾ = f(W⁽¹⁾x + b⁽¹⁾) (m × hidden; UFLDL,
    /// "Self-Taught Learning").
    ///
    /// Errors: as [`Trained::predict`].
    pub fn transform(&self, x: &Array2<f32>) -> Result<Array2<f32>> {
        check_finite(x, "the examples")?;
        self.with_backends(|b| self.model.transform_on(x, b))
    }

    /// R² of the reconstructions against x ([`r2_score`], uniform average over the n inputs).
    ///
    /// Errors: as [`Trained::predict`].
    pub fn score(&self, x: &Array2<f32>) -> Result<f64> {
        let predicted = self.predict(x)?;
        Ok(r2_score(x.mapv(f64::from).view(), predicted.view()))
    }
}

impl Trained<MultiLabel> {
    /// The 0/1 decision for each label of each example (m × k): 1 where P(yⱼ = 1 | x) ≥ 0.5
    /// ([`crate::predict::decide`], scikit-learn's `MLPClassifier.predict`).
    ///
    /// Errors: `x` of another width than the training examples ([`Error::Shape`]), NaN or
    /// infinite values, a backend error.
    pub fn predict(&self, x: &Array2<f32>) -> Result<Array2<u8>> {
        Ok(crate::predict::decide(self.predict_proba(x)?.view()))
    }

    /// The per-label probabilities P(yⱼ = 1 | x) = σ(zⱼ) (m × k, each in (0, 1); the rows do
    /// not sum to 1): the columns `wgnn predict` writes for this model.
    ///
    /// Errors: as [`Trained::predict`].
    pub fn predict_proba(&self, x: &Array2<f32>) -> Result<Array2<f64>> {
        self.output(x)
    }

    /// The subset accuracy on (x, y): the fraction of examples whose k decisions all match
    /// their 0/1 targets, in [0, 1] (scikit-learn's `ClassifierMixin.score` on indicator
    /// targets; [`crate::predict::multilabel_scores`] gives the Hamming loss too).
    ///
    /// Errors: targets not m × k, and as [`Trained::predict`].
    pub fn score(&self, x: &Array2<f32>, y: &Array2<f32>) -> Result<f64> {
        check_rows(x, y.nrows(), "target rows")?;
        Ok(crate::predict::multilabel_scores(self.predict_proba(x)?.view(), y.view())?.subset_accuracy)
    }
}
