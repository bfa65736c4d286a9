//! A training run from start to finish: load the examples into a backend, hold some out for
//! validation, run an optimizer (resuming one from a checkpoint when asked), save a checkpoint
//! every N iterations and when interrupted, and write the run's folder.
//!
//! The run folder (DESIGN.md, "Run folders and exit codes"):
//! - it is written by one process at a time: [`RunFolder`] creates it, proves it writable and
//!   holds an OS lock on `.wgnn.lock` inside it from before training to the end;
//! - `model.safetensors` appears only when the job did what was asked ([`RunStatus::Finished`]),
//!   with `metrics.json` (history, `final_cost`, timings, `"status": "finished"`), `loss.png`
//!   and, when the inputs are pictures, `filters.png` (and `reconstructions.png` for an
//!   autoencoder). A held-out test set adds `test_accuracy` (classifiers) or `r2` (regression:
//!   [`r2_score`]);
//! - while training, and when a run is interrupted, θ and the optimizer state go to
//!   `checkpoint.safetensors` (resumable; those on the way are written by a background thread,
//!   [`crate::checkpoint::Writer`], and every return waits for it); a finished run removes it;
//! - a run that fails (a non-finite cost, divergence) keeps the θ the optimizer left in
//!   `checkpoint.safetensors`, without optimizer state, and says why in `metrics.json`
//!   (`"status": "diverged"`, `"error"`; `"failed"` for another error while training, such as a
//!   device error, which `train` then returns). A folder without `model.safetensors` is not a
//!   finished run ([`unfinished_reason`]).
//!
//! It prints nothing: the caller watches through a progress callback.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ndarray::{Array2, ArrayView2, Axis};
use serde::Serialize;

use crate::backend::{Backend, Batch, Inputs, Targets};
use crate::checkpoint::{Checkpoint, Metadata};
use crate::data::whiten::Whitening;
use crate::model::{Init, NetSpec, Output, ThetaLayout};
use crate::optim::{
    BackendObjective, Control, EarlyStopping, Hooks, Method, Optimizer, Progress, Stop, StopReason, Summary,
};
use crate::{CpuBackend, Error, Result, viz};

/// The finished model: written only when the job did what was asked.
pub const MODEL_FILE: &str = "model.safetensors";
/// θ (and, unless the run failed, the optimizer state) of a run in progress, interrupted or
/// failed.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// The run's metrics (history, final cost, timings, status) as JSON.
pub const METRICS_FILE: &str = "metrics.json";
/// The file whose OS lock marks the folder as being written by a process.
pub const LOCK_FILE: &str = ".wgnn.lock";

/// A run folder held by this process: created when missing, proven writable, and locked
/// (an advisory OS lock on `DIR/.wgnn.lock`, std's `File::try_lock`) until dropped, so a
/// second process that asks for it is refused at once instead of racing this one. The lock
/// file stays (removing it would let two processes lock two different files); a folder this
/// value created that holds nothing else when dropped (the run failed before writing
/// anything) is removed again.
#[derive(Debug)]
pub struct RunFolder {
    dir: PathBuf,
    /// Held open for the lock's sake.
    _lock: File,
    created: bool,
}

impl RunFolder {
    /// Creates `dir` if needed, checks that files can be created in it, and locks it. Once
    /// locked, temporary files that a process killed mid-write left there go
    /// ([`crate::atomic::remove_stale_temporaries`]: never a live process's).
    ///
    /// Errors ([`Error::File`]): `dir` is a file or cannot be created, a file cannot be
    /// created in it, or another process holds its lock.
    pub fn open(dir: &Path) -> Result<RunFolder> {
        if dir.exists() && !dir.is_dir() {
            return Err(Error::file(dir, "is a file, not a folder: give the run a folder (e.g. --out runs/NAME)"));
        }
        let created = !dir.exists();
        std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, format!("cannot create the run folder: {e}")))?;
        let folder = || -> Result<File> {
            let unwritable = |e: std::io::Error| Error::file(dir, format!("cannot write in the run folder: {e}"));
            let lock = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(dir.join(LOCK_FILE))
                .map_err(unwritable)?;
            match lock.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(Error::file(
                        dir,
                        "another wgnn process is writing this run folder (it holds .wgnn.lock): wait for it to finish or give another --out",
                    ));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::file(dir, format!("cannot lock the run folder: {e}")));
                }
            }
            // A new file, as the run's outputs will be (an existing lock file proves nothing).
            let probe = dir.join(format!(".wgnn.probe.{}", std::process::id()));
            let written =
                OpenOptions::new().write(true).create_new(true).open(&probe).and_then(|mut f| f.write_all(b"ok"));
            let _ = std::fs::remove_file(&probe);
            written.map_err(unwritable)?;
            // Temporary files of a process killed mid-write (`.NAME.PID.N.tmp`) go now, held by
            // the lock; a live process's stay.
            crate::atomic::remove_stale_temporaries(dir);
            Ok(lock)
        };
        match folder() {
            Ok(lock) => Ok(RunFolder { dir: dir.to_path_buf(), _lock: lock, created }),
            Err(e) => {
                if created {
                    let _ = std::fs::remove_file(dir.join(LOCK_FILE));
                    let _ = std::fs::remove_dir(dir);
                }
                Err(e)
            }
        }
    }

    /// As [`RunFolder::open`], but `dir` must not exist yet: it is created here, atomically,
    /// so two processes picking the same new name cannot both get it. `Ok(None)` when the
    /// name is taken; errors as [`RunFolder::open`] otherwise.
    pub fn create_new(dir: &Path) -> Result<Option<RunFolder>> {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::file(parent, format!("cannot create the folder for runs: {e}")))?;
        }
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(None),
            Err(e) => return Err(Error::file(dir, format!("cannot create the run folder: {e}"))),
        }
        let mut folder = RunFolder::open(dir)?;
        folder.created = true;
        Ok(Some(folder))
    }

    /// The folder's path.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RunFolder {
    fn drop(&mut self) {
        if !self.created {
            return;
        }
        let only_the_lock = std::fs::read_dir(&self.dir)
            .map(|entries| entries.filter_map(|e| e.ok()).all(|e| e.file_name() == LOCK_FILE))
            .unwrap_or(false);
        if only_the_lock {
            let _ = std::fs::remove_file(self.dir.join(LOCK_FILE));
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Why the run in `dir` is not a finished one, or `None` when `dir/model.safetensors` exists.
/// Reads the status and error that `metrics.json` records; for `eval`, `visualize` and
/// the CLI's checks before overwriting.
pub fn unfinished_reason(dir: &Path) -> Option<String> {
    if dir.join(MODEL_FILE).is_file() {
        return None;
    }
    let metrics = recorded_metrics(dir);
    let status = metrics.as_ref().and_then(|m| m["status"].as_str().map(str::to_owned));
    let error = metrics.as_ref().and_then(|m| m["error"].as_str().map(str::to_owned));
    let checkpoint = dir.join(CHECKPOINT_FILE).is_file();
    let kept =
        if checkpoint { format!("; its last θ is in {}", dir.join(CHECKPOINT_FILE).display()) } else { String::new() };
    Some(match (status.as_deref(), error) {
        (Some("diverged"), Some(e)) => format!("it diverged ({e}){kept}"),
        (Some("failed"), Some(e)) => format!("it failed ({e}){kept}"),
        (Some(s), _) => format!("it ended {s}, with no {MODEL_FILE}{kept}"),
        (None, _) if checkpoint => format!("it was stopped before the end (no {MODEL_FILE}){kept}"),
        (None, _) => format!("there is no {MODEL_FILE} in it"),
    })
}

/// The `status` that `dir/metrics.json` records ([`RunStatus::name`]), if it can be read.
pub fn recorded_status(dir: &Path) -> Option<String> {
    recorded_metrics(dir)?["status"].as_str().map(str::to_owned)
}

fn recorded_metrics(dir: &Path) -> Option<serde_json::Value> {
    std::fs::read(dir.join(METRICS_FILE)).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Refuses, before anything is written, settings that would divide by zero, loop for nothing
/// or silently do nothing: 0 iterations (or evaluations), a validation fraction outside
/// [0, 1), a patience of 0 or one without a validation fraction, a checkpoint every 0
/// iterations, and the stopping rule's own tolerances ([`Stop::validate`]).
pub fn check_settings(
    stop: &Stop,
    validation_fraction: f64,
    patience: Option<usize>,
    checkpoint_every: Option<usize>,
) -> Result<()> {
    if stop.max_iterations == 0 {
        return Err(Error::Data("0 iterations would train nothing: give at least 1".into()));
    }
    if stop.max_evaluations == Some(0) {
        return Err(Error::Data("a limit of 0 evaluations would train nothing: give at least 1".into()));
    }
    stop.validate()?;
    if !(0.0..1.0).contains(&validation_fraction) {
        return Err(Error::Data(format!(
            "a validation fraction of {validation_fraction} must be in [0, 1) (0: no validation set)"
        )));
    }
    match patience {
        Some(0) => {
            return Err(Error::Data("a patience of 0 checks would stop before the first: give at least 1".into()));
        }
        Some(p) if validation_fraction == 0.0 => {
            return Err(Error::Data(format!(
                "a patience of {p} watches the validation metric: give a validation fraction above 0 too"
            )));
        }
        _ => {}
    }
    if checkpoint_every == Some(0) {
        return Err(Error::Data(
            "a checkpoint every 0 iterations is no period: give at least 1 (or none: a checkpoint at the end only)"
                .into(),
        ));
    }
    Ok(())
}

/// Everything a run needs besides the data and the backend.
pub struct TrainJob {
    /// The network to train.
    pub spec: NetSpec,
    /// The optimizer.
    pub method: Method,
    /// When to stop (iterations, tolerances, evaluations).
    pub stop: Stop,
    /// Initial weights: drawn with `init` and `seed` unless `initial_theta` is given.
    pub init: Init,
    /// Seed of the initial weights (and of the validation split).
    pub seed: u64,
    /// θ to start from instead of drawing it (as many values as the network's parameters).
    pub initial_theta: Option<Vec<f64>>,
    /// A checkpoint to continue: its θ and optimizer state replace the above.
    pub resume: Option<Checkpoint>,
    /// Fraction of the examples (after a seeded shuffle) held out for early stopping.
    pub validation_fraction: f64,
    /// Stop after this many validation checks without improvement (and restore the best θ).
    pub patience: Option<usize>,
    /// Save `checkpoint.safetensors` every this many iterations (epochs) while training.
    pub checkpoint_every: Option<usize>,
    /// The run folder (ignored by [`train_in_memory`]).
    pub out_dir: PathBuf,
    /// `out_dir`, already opened and locked by the caller ([`RunFolder::open`]), e.g. to
    /// refuse a busy folder before loading data; `train` opens it itself when `None`.
    pub folder: Option<RunFolder>,
    /// For metrics.json and the checkpoint: what the data was and how it was prepared.
    pub data_description: String,
    /// The examples' picture size (height, width), to draw the filters; `None`: not pictures.
    pub image_shape: Option<(usize, usize)>,
    /// What the raw examples went through before training (stages [`crate::predict::Model`] applies; JSON, stored in the model).
    pub preprocessing: serde_json::Value,
    /// Held-out test examples and what they should give: with labels, their accuracy goes
    /// into metrics.json as `test_accuracy`; with real-valued targets, R² as `r2`.
    pub test_set: Option<(Array2<f32>, TestTargets)>,
    /// The command that started the job (for the CLI, its `train` flags as JSON), stored in
    /// the checkpoint and model ([`Metadata::command`]) so that `--resume DIR` alone can
    /// restore the whole job. Null: none.
    pub command: serde_json::Value,
}

impl TrainJob {
    /// A job with the usual settings, to change field by field: at most `iterations`
    /// iterations (epochs) under the method's default stopping rules, uniform initialisation,
    /// seed 0, no validation split, a checkpoint only at the end, no test set.
    pub fn new(spec: NetSpec, method: Method, iterations: usize, out_dir: impl Into<PathBuf>) -> TrainJob {
        TrainJob {
            stop: method.default_stop().with_max_iterations(iterations),
            spec,
            method,
            init: Init::Uniform,
            seed: 0,
            initial_theta: None,
            resume: None,
            validation_fraction: 0.0,
            patience: None,
            checkpoint_every: None,
            out_dir: out_dir.into(),
            folder: None,
            data_description: String::new(),
            image_shape: None,
            preprocessing: serde_json::Value::Null,
            test_set: None,
            command: serde_json::Value::Null,
        }
    }

    /// Refuses settings that cannot make a run ([`check_settings`], the method's and the
    /// network's own checks) before anything is written.
    pub fn validate(&self) -> Result<()> {
        self.spec.validate()?;
        self.method.validate()?;
        check_settings(&self.stop, self.validation_fraction, self.patience, self.checkpoint_every)
    }
}

/// How a run ended. Only [`RunStatus::Finished`] means the job did what was asked; the CLI
/// exits 0 for it alone (README.md, "Exit codes").
#[derive(Clone, Debug, PartialEq)]
pub enum RunStatus {
    /// A stopping rule was met: `model.safetensors` holds the result.
    Finished,
    /// The `interrupt` flag stopped it: `checkpoint.safetensors` holds θ after the last
    /// completed iteration and the optimizer state, to resume from.
    Interrupted,
    /// Training failed numerically (a NaN or infinite cost or gradient, at the start or
    /// later; divergence): `checkpoint.safetensors` holds the θ the optimizer kept, without
    /// optimizer state (it cannot be resumed), and `metrics.json` the reason.
    Diverged {
        /// Why, in one line.
        reason: String,
    },
}

impl RunStatus {
    /// `finished`, `interrupted` or `diverged`, as `metrics.json` records it.
    pub fn name(&self) -> &'static str {
        match self {
            RunStatus::Finished => "finished",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Diverged { .. } => "diverged",
        }
    }

    /// True for [`RunStatus::Finished`].
    pub fn is_finished(&self) -> bool {
        *self == RunStatus::Finished
    }
}

/// What held-out test examples should give: class labels (a classifier) or real-valued
/// targets (m × outputs, a regression network).
#[derive(Clone, Debug)]
pub enum TestTargets {
    /// One class number per test example.
    Labels(Vec<usize>),
    /// m × outputs real values.
    Values(Array2<f32>),
}

impl TestTargets {
    /// The number of test examples.
    pub fn len(&self) -> usize {
        match self {
            TestTargets::Labels(l) => l.len(),
            TestTargets::Values(v) => v.nrows(),
        }
    }

    /// True when there are no test examples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<usize>> for TestTargets {
    fn from(labels: Vec<usize>) -> TestTargets {
        TestTargets::Labels(labels)
    }
}

/// What a run leaves behind, finished or not: check [`TrainOutcome::status`].
pub struct TrainOutcome {
    /// How it ended; anything but [`RunStatus::Finished`] left no `model.safetensors`.
    pub status: RunStatus,
    /// The θ kept (the one saved).
    pub theta: Vec<f64>,
    /// The optimizer's summary. A [`RunStatus::Diverged`] run got none: its counts are the
    /// optimizer's so far and its `reason` is `Interrupted` (the failure stopped it); read
    /// `status` for why.
    pub summary: Summary,
    /// J(θ) on all training examples at the end (for minibatch methods the history holds
    /// epoch means instead).
    pub final_cost: f64,
    /// The best validation metric seen (error rate or squared error), when validating.
    pub validation: Option<f64>,
    /// Accuracy on the test set, in [0, 1] (classifiers).
    pub test_accuracy: Option<f64>,
    /// R² of a regression network on the test set ([`r2_score`]).
    pub r2: Option<f64>,
    /// The files written, in order (none in memory).
    pub files: Vec<PathBuf>,
}

#[derive(Serialize)]
struct Metrics<'a> {
    wgnn_version: &'a str,
    /// [`RunStatus::name`].
    status: &'a str,
    spec: &'a NetSpec,
    method: &'a Method,
    backend: String,
    data: &'a str,
    train_examples: usize,
    validation_examples: usize,
    seed: u64,
    final_cost: f64,
    initial_cost: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    train_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    validation_metric: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    test_accuracy: Option<f64>,
    /// Coefficient of determination on the training examples (regression).
    #[serde(skip_serializing_if = "Option::is_none")]
    train_r2: Option<f64>,
    /// Coefficient of determination on the test examples (regression).
    #[serde(skip_serializing_if = "Option::is_none")]
    r2: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    test_examples: Option<usize>,
    stop_reason: String,
    iterations: usize,
    evaluations: usize,
    seconds: f64,
    history: &'a crate::optim::History,
}

const VALIDATION_STREAM: u64 = 0x7661_6c69_6461_7465;

/// Shuffles rows by seed and splits off the last `fraction` for validation.
fn split(x: ArrayView2<'_, f32>, fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    // Its own stream, so the split does not repeat the weights' or the minibatches' draws.
    crate::data::hold_out(x.nrows(), fraction, seed ^ VALIDATION_STREAM, "validation")
}

/// The examples [`train`] learns from (m × n, f32), lent or handed over.
///
/// Handed over ([`Examples::Owned`], from an `Array2<f32>` or an `Arc` of one), they are the
/// one copy of the data for the whole run: the backend keeps a handle to them instead of a
/// copy when it computes in f32 ([`Inputs::Shared`]), and a validation split drops them once
/// the two sides are gathered. Lent ([`Examples::Borrowed`]), `train` makes its own copy, as
/// the caller keeps theirs.
#[derive(Clone, Debug)]
pub enum Examples<'a> {
    /// Lent: `train` copies them.
    Borrowed(ArrayView2<'a, f32>),
    /// Handed over: the run's one copy.
    Owned(Arc<Array2<f32>>),
}

impl Examples<'_> {
    fn view(&self) -> ArrayView2<'_, f32> {
        match self {
            Examples::Borrowed(x) => x.view(),
            Examples::Owned(x) => x.view(),
        }
    }

    /// All the rows, shared: the handed-over array itself, or a copy of lent rows.
    fn into_shared(self) -> Arc<Array2<f32>> {
        match self {
            Examples::Borrowed(x) => Arc::new(x.to_owned()),
            Examples::Owned(x) => x,
        }
    }
}

impl<'a> From<&'a Array2<f32>> for Examples<'a> {
    fn from(x: &'a Array2<f32>) -> Self {
        Examples::Borrowed(x.view())
    }
}

impl<'a> From<ArrayView2<'a, f32>> for Examples<'a> {
    fn from(x: ArrayView2<'a, f32>) -> Self {
        Examples::Borrowed(x)
    }
}

impl From<Array2<f32>> for Examples<'_> {
    fn from(x: Array2<f32>) -> Self {
        Examples::Owned(Arc::new(x))
    }
}

impl From<Arc<Array2<f32>>> for Examples<'_> {
    fn from(x: Arc<Array2<f32>>) -> Self {
        Examples::Owned(x)
    }
}

/// The targets of some rows, owned (the training and validation sides of a split).
enum RowTargets {
    Inputs,
    Labels(Vec<usize>),
    Values(Array2<f32>),
}

impl RowTargets {
    fn view(&self) -> Targets<'_> {
        match self {
            RowTargets::Inputs => Targets::Inputs,
            RowTargets::Labels(l) => Targets::Labels(l),
            RowTargets::Values(v) => Targets::Values(v.into()),
        }
    }

    fn labels(&self) -> Option<&[usize]> {
        match self {
            RowTargets::Labels(l) => Some(l),
            _ => None,
        }
    }
}

fn gather(x: ArrayView2<'_, f32>, y: &Targets<'_>, rows: &[usize]) -> (Arc<Array2<f32>>, RowTargets) {
    let y = match y {
        Targets::Inputs => RowTargets::Inputs,
        // s labels per example: T for a softmax at every step of a sequence (m·T labels).
        Targets::Labels(l) => {
            let s = if x.nrows() > 0 && l.len() > x.nrows() { l.len() / x.nrows() } else { 1 };
            RowTargets::Labels(rows.iter().flat_map(|&i| l[i * s..(i + 1) * s].iter().copied()).collect())
        }
        Targets::Values(Inputs::F32(v)) => RowTargets::Values(v.select(Axis(0), rows)),
        Targets::Values(Inputs::Shared(v)) => RowTargets::Values(v.select(Axis(0), rows)),
        Targets::Values(Inputs::F64(v)) => RowTargets::Values(v.select(Axis(0), rows).mapv(|t| t as f32)),
    };
    (Arc::new(x.select(Axis(0), rows)), y)
}

/// The targets of all rows as [`gather`] would give them, but without copying the examples.
fn all_targets(y: &Targets<'_>) -> RowTargets {
    match y {
        Targets::Inputs => RowTargets::Inputs,
        Targets::Labels(l) => RowTargets::Labels(l.to_vec()),
        Targets::Values(Inputs::F32(v)) => RowTargets::Values(v.to_owned()),
        Targets::Values(Inputs::Shared(v)) => RowTargets::Values(v.as_ref().clone()),
        Targets::Values(Inputs::F64(v)) => RowTargets::Values(v.mapv(|t| t as f32)),
    }
}

/// What the output is trained against: the labels for softmax; for a squared-error output the
/// real-valued targets when given, else the inputs (an autoencoder; labels are then unused).
fn targets<'a>(spec: &NetSpec, y: Targets<'a>) -> Result<Targets<'a>> {
    match (spec.output, y) {
        (Output::Softmax, Targets::Labels(l)) => Ok(Targets::Labels(l)),
        (Output::Softmax, _) => Err(Error::Data("a softmax network needs labelled data".into())),
        (Output::SquaredError(_), Targets::Values(v)) => Ok(Targets::Values(v)),
        (Output::SquaredError(_), _) => Ok(Targets::Inputs),
        (Output::SigmoidBce, Targets::Values(v)) => Ok(Targets::Values(v)),
        (Output::SigmoidBce, _) => {
            Err(Error::Data("a sigmoid-bce output needs 0/1 targets, one column per label: give --targets".into()))
        }
    }
}

/// The coefficient of determination R², scikit-learn's `r2_score` with its defaults
/// (`multioutput="uniform_average"`, `force_finite=True`): for each output j,
/// R²_j = 1 − SS_res/SS_tot with SS_res = Σᵢ (y_ij − ŷ_ij)² and SS_tot = Σᵢ (y_ij − ȳ_j)²
/// (ȳ_j the mean of the true values given, e.g. the test set's), then the plain mean over
/// outputs. An output whose true values are all equal (SS_tot = 0) scores 1 when predicted
/// exactly and 0 otherwise. 1 is perfect, 0 is what predicting each output's mean gives,
/// and it is negative for worse. Needs at least 2 examples (NaN otherwise, as scikit-learn).
pub fn r2_score(truth: ArrayView2<'_, f64>, predicted: ArrayView2<'_, f64>) -> f64 {
    let per_output = r2_per_output(truth, predicted);
    per_output.iter().sum::<f64>() / per_output.len().max(1) as f64
}

/// R²_j of each output (column), as [`r2_score`] defines it, before the mean.
pub fn r2_per_output(truth: ArrayView2<'_, f64>, predicted: ArrayView2<'_, f64>) -> Vec<f64> {
    assert_eq!(truth.dim(), predicted.dim(), "truth and predictions must have the same shape");
    if truth.nrows() < 2 {
        return vec![f64::NAN; truth.ncols()];
    }
    truth
        .columns()
        .into_iter()
        .zip(predicted.columns())
        .map(|(y, y_hat)| {
            let mean = y.sum() / y.len() as f64;
            let ss_tot: f64 = y.iter().map(|v| (v - mean).powi(2)).sum();
            let ss_res: f64 = y.iter().zip(y_hat).map(|(v, p)| (v - p).powi(2)).sum();
            match (ss_tot == 0.0, ss_res == 0.0) {
                (false, _) => 1.0 - ss_res / ss_tot,
                (true, true) => 1.0,
                (true, false) => 0.0,
            }
        })
        .collect()
}

/// R² ([`r2_score`]) of the network at θ on inputs `x` with true values `y`; for a network
/// with outputs at every one of T steps (`y` m × (T·k)), over the m·T (example, step) pairs
/// as examples of k outputs.
pub fn r2_of<'x>(backend: &mut dyn Backend, theta: &[f64], x: impl Into<Inputs<'x>>, y: &Array2<f32>) -> Result<f64> {
    let predicted = backend.predict(theta, x.into())?;
    if predicted.dim() != y.dim() {
        return Err(Error::Shape(format!(
            "the network predicts {}×{} values but the targets are {}×{}",
            predicted.nrows(),
            predicted.ncols(),
            y.nrows(),
            y.ncols()
        )));
    }
    // A per-step regressor (outputs at each of T steps, k per step): every (example, step) is
    // one example of k outputs, as the estimator's `PerStepRegressor::score` pools them.
    let (steps, m) = (backend.spec().output_steps(), y.nrows());
    let truth = y.mapv(f64::from);
    if steps <= 1 {
        return Ok(r2_score(truth.view(), predicted.view()));
    }
    if !y.ncols().is_multiple_of(steps) {
        return Err(Error::Shape(format!("{} targets per example do not divide into {steps} steps", y.ncols())));
    }
    let shape = (m * steps, y.ncols() / steps);
    // Row-major copies (a backend's output may be in another memory order): row i's T·k
    // values become T rows of k.
    let truth = truth.as_standard_layout().into_owned().into_shape_with_order(shape).expect("row-major, divisible");
    let predicted =
        predicted.as_standard_layout().into_owned().into_shape_with_order(shape).expect("row-major, divisible");
    Ok(r2_score(truth.view(), predicted.view()))
}

/// The first hidden layer's activations for each row of `x`: the features a trained
/// autoencoder extracts (self-taught learning).
pub fn hidden_features(backend: &mut dyn Backend, theta: &[f64], x: &Array2<f32>) -> Result<Array2<f32>> {
    if backend.spec().layers.len() < 3 {
        return Err(Error::Data(format!("{} has no hidden layer to take features from", backend.spec().describe())));
    }
    let mut acts = backend.forward(theta, x.into())?;
    Ok(acts.swap_remove(0).mapv(|v| v as f32))
}

/// The fraction of `predicted` equal to `labels`.
/// The threshold at which a multi-label probability P(yⱼ = 1 | x) is decided 1 (scikit-learn's
/// `MLPClassifier.predict` for multi-label targets: σ(z) ≥ 0.5, i.e. z ≥ 0).
pub const DECISION_THRESHOLD: f64 = 0.5;

/// The 0/1 decisions of multi-label probabilities (m × k): 1 where p ≥ [`DECISION_THRESHOLD`].
pub fn decide(probabilities: ArrayView2<'_, f64>) -> Array2<u8> {
    probabilities.mapv(|p| u8::from(p >= DECISION_THRESHOLD))
}

/// How well multi-label decisions match 0/1 targets (scikit-learn's `accuracy_score` and
/// `hamming_loss` on multi-label indicator matrices).
#[derive(Clone, Debug, PartialEq)]
pub struct MultiLabelScores {
    /// Subset (exact-match) accuracy: the fraction of examples whose k decisions all match.
    pub subset_accuracy: f64,
    /// Hamming loss: the fraction of the m·k decisions that are wrong.
    pub hamming_loss: f64,
    /// For each label j, the fraction of examples whose decision for j matches.
    pub per_label_accuracy: Vec<f64>,
}

/// [`MultiLabelScores`] of the probabilities (m × k, decided by [`decide`]) against the 0/1
/// targets (m × k).
///
/// Errors: shapes that differ or no examples ([`Error::Shape`]).
pub fn multilabel_scores(probabilities: ArrayView2<'_, f64>, targets: ArrayView2<'_, f32>) -> Result<MultiLabelScores> {
    if probabilities.dim() != targets.dim() || targets.nrows() == 0 {
        return Err(Error::Shape(format!(
            "the network gives {}×{} probabilities but the targets are {}×{}: give one 0/1 target per label and example",
            probabilities.nrows(),
            probabilities.ncols(),
            targets.nrows(),
            targets.ncols()
        )));
    }
    let decided = decide(probabilities);
    let (m, k) = targets.dim();
    let right = ndarray::Zip::from(&decided).and(&targets).map_collect(|&d, &t| f64::from(d) == f64::from(t));
    let exact = right.rows().into_iter().filter(|r| r.iter().all(|&ok| ok)).count();
    let per_label: Vec<f64> =
        right.columns().into_iter().map(|c| c.iter().filter(|&&ok| ok).count() as f64 / m as f64).collect();
    let wrong = right.iter().filter(|&&ok| !ok).count();
    Ok(MultiLabelScores {
        subset_accuracy: exact as f64 / m as f64,
        hamming_loss: wrong as f64 / (m * k) as f64,
        per_label_accuracy: per_label,
    })
}

/// The fraction of examples whose predicted class equals the label, in [0, 1]: pairs beyond
/// the shorter slice are not counted; 0 for no labels.
pub fn accuracy(predicted: &[usize], labels: &[usize]) -> f64 {
    predicted.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / labels.len().max(1) as f64
}

/// Refuses, before any work, a test set that does not fit the network: its width, its row
/// count, the kind and number of its targets.
fn check_test_set(spec: &NetSpec, x: &Array2<f32>, y: &TestTargets) -> Result<()> {
    if x.ncols() != spec.inputs() {
        return Err(Error::Shape(format!(
            "the test examples have {} values each but the network takes {}: give test data like the training data",
            x.ncols(),
            spec.inputs()
        )));
    }
    // A softmax at every step (sequence labelling) takes T labels per example, row-major.
    let steps = match y {
        TestTargets::Labels(_) => spec.output_steps(),
        _ => 1,
    };
    if y.len() != x.nrows() * steps {
        let (what, per) = if steps > 1 {
            ("labels", format!("{steps} per example, one per step"))
        } else {
            ("rows of labels or targets", "one per example".to_string())
        };
        return Err(Error::Shape(format!(
            "the test set has {} examples but {} {what}: give {per}",
            x.nrows(),
            y.len()
        )));
    }
    // Values per example: k at each of the network's output steps (1 for a dense net).
    let width = spec.outputs() * spec.output_steps();
    match (spec.output, y) {
        // A test label the network has no class for simply counts as a wrong answer.
        (Output::Softmax, TestTargets::Labels(_)) => Ok(()),
        (Output::SquaredError(_), TestTargets::Values(v)) if v.ncols() != width => Err(Error::Shape(format!(
            "the test targets have {} values per example but the training targets {width}: give test targets of the same width",
            v.ncols(),
        ))),
        (Output::SquaredError(_), TestTargets::Values(_)) => Ok(()),
        (Output::SigmoidBce, TestTargets::Values(v)) if v.ncols() != width => Err(Error::Shape(format!(
            "the test targets have {} labels per example but the network {width}: give test targets of the same width",
            v.ncols(),
        ))),
        (Output::SigmoidBce, TestTargets::Values(v)) => crate::cpu::check_zero_one(&v.view().into()),
        _ => Err(Error::Data(format!(
            "the test set's targets do not suit {}: labels go with a softmax output, real values with a squared-error one",
            spec.describe()
        ))),
    }
}

/// Trains `job.spec` on (x, y) with `backend`, calling `progress` after every step, and writes
/// the run folder `job.out_dir` (module docs). `y` is what the output learns: class labels
/// (softmax; m of them), real-valued targets (regression; m × outputs) or the inputs
/// themselves (an autoencoder; labels given to a squared-error network are unused). `x`
/// (m × n, n = `job.spec.inputs()`) is lent (`&Array2<f32>`: `train` copies it once) or handed
/// over (an `Array2<f32>` or `Arc`: no copy at all when the backend computes in f32; see
/// [`Examples`]). Sets `interrupt` (e.g. from Ctrl-C) to stop after the current step: the run
/// is then saved and can be resumed.
///
/// The steps, in order, each its own function shared with [`train_in_memory`]: validate (the
/// job, [`TrainJob::validate`], and its test set) → the run folder (opened and locked,
/// [`RunFolder`]) → data (the seeded validation split, [`Backend::set_data`]) → the starting
/// point (θ₀ from `init` and `seed`, or the checkpoint's θ and optimizer state) → optimize
/// (checkpoints on the way) → measure (the final cost, accuracy or R²) → write (model, metrics,
/// pictures).
///
/// Returns `Ok` with [`TrainOutcome::status`] when training ran: [`RunStatus::Finished`],
/// [`RunStatus::Interrupted`], or [`RunStatus::Diverged`] (θ and the reason saved as the module
/// docs say). Errors before training (bad settings: [`TrainJob::validate`]; data that does not
/// fit; a run folder that is busy, a file, or not writable; a checkpoint that cannot be
/// resumed) leave nothing behind; errors while training or writing (a device or file error)
/// keep θ in `checkpoint.safetensors` when they can.
pub fn train<'x>(
    mut job: TrainJob,
    backend: &mut dyn Backend,
    x: impl Into<Examples<'x>>,
    y: Targets<'_>,
    progress: &mut dyn FnMut(&Progress<'_>),
    interrupt: &AtomicBool,
) -> Result<TrainOutcome> {
    validate_job(&job)?;
    // Held until train returns: no other process writes this folder meanwhile.
    let _folder = take_folder(&mut job)?;
    let data = TrainingData::load(&job, backend, x.into(), y)?;
    let (mut theta, mut optimizer) = starting_point(&job)?;
    let spec = &job.spec;
    // The history travels inside the optimizer state (and in metrics.json), not twice.
    let metadata = |extra| Metadata {
        seed: Some(job.seed),
        preprocessing: job.preprocessing.clone(),
        command: job.command.clone(),
        extra,
        ..Default::default()
    };
    // Checkpoints on the way are written in the background (one in flight, one waiting: a
    // newer hand-over replaces the waiting one, so training never waits for the disk); every
    // other file of the run waits for those writes first, so files land in the order asked,
    // the last state is the one on disk, and no return leaves one half written
    // (checkpoint::Writer).
    let writer = crate::checkpoint::Writer::new();
    let save = |theta: &[f64],
                optimizer: Option<&Optimizer>,
                extra: serde_json::Map<String, serde_json::Value>,
                file: &str|
     -> Result<PathBuf> {
        let path = job.out_dir.join(file);
        writer.wait()?;
        // The optimizer's vectors go straight into tensor bytes (no JSON value per number).
        crate::checkpoint::save_state(spec, theta, &metadata(extra), &optimizer, &path)?;
        Ok(path)
    };
    // A copy of θ and the optimizer state goes to the writer; training goes on meanwhile. The
    // metadata (which may hold a whitening matrix or an encoder as JSON) is shared, not copied
    // on the training path: the writer builds each checkpoint's from it.
    let shared = std::cell::OnceCell::new();
    let in_background = |theta: &[f64],
                         optimizer: Option<&Optimizer>,
                         extra: serde_json::Map<String, serde_json::Value>,
                         file: &str|
     -> Result<PathBuf> {
        let path = job.out_dir.join(file);
        let shared = shared.get_or_init(|| Arc::new((spec.clone(), metadata(Default::default())))).clone();
        // Copied only when the writer would start at once: else a newer state would replace
        // this copy before it is written (Writer::offer).
        writer.offer(|| {
            let (theta, optimizer, to) = (theta.to_vec(), optimizer.cloned(), path.clone());
            move || {
                let (spec, base) = &*shared;
                let metadata = Metadata { extra, ..base.clone() };
                crate::checkpoint::save_state(spec, &theta, &metadata, &optimizer, &to)
            }
        })?;
        Ok(path)
    };
    let (train_examples, validation_examples) = (data.train_examples, data.validation_examples);
    let summary =
        match optimize(&job, backend, &data, &mut theta, &mut optimizer, progress, interrupt, Some(&in_background)) {
            Ok(s) => s,
            Err(e) => {
                // Keep what can be kept, under names that do not claim a finished model. The
                // optimizer reports a run whose cost exploded, kept rising or stopped being
                // finite as Error::Diverged, θ already put back to the best point it saw.
                // The writes handed over land first (the newest state), so that what is kept
                // below is judged on the folder as they leave it; an error of theirs is not
                // reported twice: `e` is the run's.
                let _ = writer.wait();
                let diverged = matches!(e, Error::Diverged(_));
                let status = if diverged { "diverged" } else { "failed" };
                let failure = Failure { status, reason: &e.to_string(), theta: &theta, optimizer: &optimizer };
                let files = failure.write(&job, spec, backend, train_examples, validation_examples, &save);
                return match (diverged, files) {
                    (true, Ok((files, final_cost))) => writer.wait().map(|()| failure.outcome(files, final_cost)),
                    _ => Err(e),
                };
            }
        };
    let final_cost = match final_cost(backend, &theta, &summary) {
        Ok(c) => c,
        Err(reason) => {
            let failure = Failure { status: "diverged", reason: &reason, theta: &theta, optimizer: &optimizer };
            let (files, final_cost) = failure.write(&job, spec, backend, train_examples, validation_examples, &save)?;
            writer.wait()?;
            return Ok(failure.outcome(files, final_cost));
        }
    };
    let measures = measure(&job, backend, &data, &theta)?;
    let outcome = write_run(&job, backend, &data, theta, &optimizer, summary, final_cost, measures, &save)?;
    writer.wait()?;
    Ok(outcome)
}

/// As [`train`], in memory: the same steps but the folder and write steps, so the same θ bit
/// for bit, and no file written or read (`job.out_dir` is unused). An embedder's
/// [`crate::estimator`] `fit` trains here; [`TrainOutcome::files`] is empty.
///
/// Errors: as [`train`]'s before training, and a job that asks for files
/// (`checkpoint_every`, `folder`), refused before any work ([`Error::Data`]). A run that
/// diverges is `Ok` with [`RunStatus::Diverged`] and the θ the optimizer kept (its
/// `final_cost` NaN when J cannot be computed there); another error while training is
/// returned.
pub fn train_in_memory<'x>(
    job: TrainJob,
    backend: &mut dyn Backend,
    x: impl Into<Examples<'x>>,
    y: Targets<'_>,
    progress: &mut dyn FnMut(&Progress<'_>),
    interrupt: &AtomicBool,
) -> Result<TrainOutcome> {
    validate_job(&job)?;
    if let Some(n) = job.checkpoint_every {
        return Err(Error::Data(format!(
            "a checkpoint every {n} iterations needs a run folder: train in memory without checkpoint_every, or write a run with train()"
        )));
    }
    if job.folder.is_some() {
        return Err(Error::Data("a job trained in memory writes no folder: leave its folder None".into()));
    }
    let data = TrainingData::load(&job, backend, x.into(), y)?;
    let (mut theta, mut optimizer) = starting_point(&job)?;
    let diverged = |theta: &[f64], optimizer: &Optimizer, backend: &mut dyn Backend, reason: &str| {
        let failure = Failure { status: "diverged", reason, theta, optimizer };
        let cost = backend.cost(theta, Batch::All).map(|c| c.total()).unwrap_or(f64::NAN);
        failure.outcome(Vec::new(), cost)
    };
    let summary = match optimize(&job, backend, &data, &mut theta, &mut optimizer, progress, interrupt, None) {
        Ok(s) => s,
        Err(e @ Error::Diverged(_)) => return Ok(diverged(&theta, &optimizer, backend, &e.to_string())),
        Err(e) => return Err(e),
    };
    let final_cost = match final_cost(backend, &theta, &summary) {
        Ok(c) => c,
        Err(reason) => return Ok(diverged(&theta, &optimizer, backend, &reason)),
    };
    let measures = measure(&job, backend, &data, &theta)?;
    let status = if summary.reason == StopReason::Interrupted { RunStatus::Interrupted } else { RunStatus::Finished };
    Ok(TrainOutcome {
        status,
        theta,
        validation: summary.best_validation,
        summary,
        final_cost,
        test_accuracy: measures.test_accuracy,
        r2: measures.r2,
        files: Vec::new(),
    })
}

/// Step "validate": the job's settings ([`TrainJob::validate`]) and its test set, refused
/// before any work.
fn validate_job(job: &TrainJob) -> Result<()> {
    if let Some((x_test, y_test)) = &job.test_set {
        check_test_set(&job.spec, x_test, y_test)?;
    }
    job.validate()
}

/// Step "run folder": the folder the caller opened for `job.out_dir`, or opened here.
fn take_folder(job: &mut TrainJob) -> Result<RunFolder> {
    match job.folder.take() {
        Some(f) if f.path() == job.out_dir => Ok(f),
        Some(f) => Err(Error::Data(format!(
            "the job writes {} but holds the folder {}: open the run folder of out_dir",
            job.out_dir.display(),
            f.path().display()
        ))),
        None => RunFolder::open(&job.out_dir),
    }
}

/// Step "data": the training and validation sides of the examples, the training side set
/// on the backend.
struct TrainingData {
    x_train: Arc<Array2<f32>>,
    y_train: RowTargets,
    x_val: Arc<Array2<f32>>,
    y_val: RowTargets,
    train_examples: usize,
    validation_examples: usize,
}

impl TrainingData {
    fn load(job: &TrainJob, backend: &mut dyn Backend, x: Examples<'_>, y: Targets<'_>) -> Result<TrainingData> {
        let spec = &job.spec;
        let y = targets(spec, y)?;
        let (train_rows, val_rows) = split(x.view(), job.validation_fraction, job.seed)?;
        // The backend's own checks, on all the data before the split indexes into it.
        crate::cpu::validate_data(spec, &x.view().into(), &y)?;
        // Without a validation split the rows are used as given (split keeps their order); with
        // one, both sides are gathered and the examples handed over are dropped.
        let ((x_train, y_train), (x_val, y_val)) = if val_rows.is_empty() {
            ((x.into_shared(), all_targets(&y)), (Arc::new(Array2::zeros((0, spec.inputs()))), RowTargets::Inputs))
        } else {
            let sides = (gather(x.view(), &y, &train_rows), gather(x.view(), &y, &val_rows));
            drop(x);
            sides
        };
        backend.set_data((&x_train).into(), y_train.view())?;
        Ok(TrainingData {
            // All examples trained on, when this process holds one shard of them (data-parallel).
            train_examples: backend.num_examples(),
            x_train,
            y_train,
            x_val,
            y_val,
            validation_examples: val_rows.len(),
        })
    }
}

/// Step "starting point": θ₀ (`initial_theta`, else drawn by `init` with `seed`) and a new
/// optimizer, or the checkpoint's θ and optimizer state when resuming.
fn starting_point(job: &TrainJob) -> Result<(Vec<f64>, Optimizer)> {
    let spec = &job.spec;
    match &job.resume {
        Some(ck) => {
            if ck.spec != *spec {
                return Err(Error::Data(format!(
                    "the checkpoint holds {} but this run asks for {}: resume with the same network",
                    ck.spec.describe(),
                    spec.describe()
                )));
            }
            if ck.metadata.optimizer.is_null() && ck.metadata.extra.contains_key("final_cost") {
                return Err(Error::Data(format!(
                    "the run finished and its {MODEL_FILE} keeps no optimizer state, so it cannot be continued \
                     (only a run trained with --checkpoint-every keeps its {CHECKPOINT_FILE} beside the model \
                     for that): start a new run with the iterations you want"
                )));
            }
            if ck.metadata.optimizer.is_null() {
                let why = ck.metadata.extra.get("error").and_then(|e| e.as_str()).unwrap_or("no optimizer state");
                return Err(Error::Data(format!(
                    "this checkpoint cannot be resumed: it holds no optimizer state (its run failed: {why}); start a new run"
                )));
            }
            let opt: Optimizer = serde_json::from_value(ck.metadata.optimizer.clone()).map_err(|e| {
                Error::Data(format!("the checkpoint's optimizer state is unreadable ({e}): it cannot be resumed"))
            })?;
            Ok((ck.theta.clone(), opt))
        }
        None => {
            let theta = job.initial_theta.clone().unwrap_or_else(|| job.init.theta(spec, job.seed));
            let needed = ThetaLayout::new(spec).len();
            if theta.len() != needed {
                return Err(Error::Shape(format!("initial θ has {} values, the network needs {needed}", theta.len())));
            }
            Ok((theta, Optimizer::new(job.method.clone())?))
        }
    }
}

/// Step "optimize": runs the optimizer from θ until a stopping rule, `interrupt` or an error,
/// with early stopping on the validation side when there is one, and (given `save`) a
/// checkpoint every `job.checkpoint_every` iterations.
#[allow(clippy::too_many_arguments)]
fn optimize(
    job: &TrainJob,
    backend: &mut dyn Backend,
    data: &TrainingData,
    theta: &mut [f64],
    optimizer: &mut Optimizer,
    progress: &mut dyn FnMut(&Progress<'_>),
    interrupt: &AtomicBool,
    save: Option<&Save<'_>>,
) -> Result<Summary> {
    let spec = &job.spec;
    // Validation runs on its own CPU backend so that it never competes with the training
    // backend for the data it holds.
    let mut validator = if data.validation_examples == 0 {
        None
    } else {
        let mut v = CpuBackend::<f32>::new(spec.clone())?;
        v.set_data((&data.x_val).into(), data.y_val.view())?;
        Some(v)
    };
    let checkpoint_every = job.checkpoint_every.filter(|_| save.is_some());
    loop {
        let next_save = checkpoint_every.map(|n| (optimizer.iterations() / n + 1) * n);
        let mut stop_for_save = false;
        let mut hooks = Hooks::new().on_progress(|p: &Progress<'_>| {
            progress(p);
            if interrupt.load(Ordering::SeqCst) {
                return Control::Stop;
            }
            if p.record.is_some() && next_save.is_some_and(|n| p.iteration >= n) {
                stop_for_save = true;
                return Control::Stop;
            }
            Control::Continue
        });
        if let Some(v) = validator.as_mut() {
            let (x_val, y_val) = (&data.x_val, &data.y_val);
            let metric = move |t: &[f64]| -> Result<f64> {
                match y_val.labels() {
                    // Classification error rate on the held-out examples.
                    Some(l) if spec.output == Output::Softmax => Ok(1.0 - accuracy(&v.classify(t, x_val.into())?, l)),
                    // Else the data term of the cost (squared error): early stopping on it.
                    _ => Ok(v.cost(t, Batch::All)?.data),
                }
            };
            let early = EarlyStopping { every: 1, patience: job.patience, min_delta: 0.0, restore_best: true };
            hooks = hooks.validation(metric, early);
        }
        let mut objective = BackendObjective::new(backend);
        let result = optimizer.run(&mut objective, theta, &job.stop, &mut hooks);
        drop(hooks);
        let summary = result?;
        if let Some(save) = save
            && summary.reason == StopReason::Interrupted
            && stop_for_save
            && !interrupt.load(Ordering::SeqCst)
        {
            // Not backend.release_buffers() here (as before the final save): the next step would
            // allocate them again at once, while the writer still serialises this copy.
            save(theta, Some(optimizer), Default::default(), CHECKPOINT_FILE)?;
            continue;
        }
        return Ok(summary);
    }
}

/// Step "measure", first part: J(θ) over all training examples, or why it cannot be computed
/// (Backend::cost refuses a J that is not finite, or a θ it cannot represent).
fn final_cost(backend: &mut dyn Backend, theta: &[f64], summary: &Summary) -> std::result::Result<f64, String> {
    backend.cost(theta, Batch::All).map(|c| c.total()).map_err(|e| {
        format!(
            "at the final θ after {} iterations ({}): {e}; lower the learning rate, or check the data for extreme values",
            summary.iterations, summary.reason
        )
    })
}

/// What step "measure" finds at the final θ besides the cost.
struct Measures {
    train_accuracy: Option<f64>,
    train_r2: Option<f64>,
    test_accuracy: Option<f64>,
    r2: Option<f64>,
}

/// Step "measure": accuracy (classifiers) or R² (regression) on the training and test sets.
fn measure(job: &TrainJob, backend: &mut dyn Backend, data: &TrainingData, theta: &[f64]) -> Result<Measures> {
    let spec = &job.spec;
    let train_accuracy = match (&data.y_train, spec.output) {
        (RowTargets::Labels(l), Output::Softmax) => {
            // Over all examples, when this process holds one shard of them (data-parallel).
            let local = accuracy(&backend.classify(theta, (&data.x_train).into())?, l);
            let tally = backend.sum_over_shards(&[local * l.len() as f64, l.len() as f64])?;
            Some(if tally[1] > 0.0 { tally[0] / tally[1] } else { local })
        }
        _ => None,
    };
    // Sigmoid-BCE: subset (exact-match) accuracy in place of R² ([`multilabel_scores`]).
    let bce = spec.output == Output::SigmoidBce;
    let subset_accuracy = |backend: &mut dyn Backend, x: &Array2<f32>, y: &Array2<f32>| -> Result<f64> {
        let p = backend.predict(theta, x.into())?;
        Ok(multilabel_scores(p.view(), y.view())?.subset_accuracy)
    };
    let train_accuracy = match (&data.y_train, bce) {
        (RowTargets::Values(v), true) => Some(subset_accuracy(backend, &data.x_train, v)?),
        _ => train_accuracy,
    };
    let train_r2 = match &data.y_train {
        RowTargets::Values(_) if bce => None,
        RowTargets::Values(v) => Some(r2_of(backend, theta, &data.x_train, v)?),
        _ => None,
    };
    let (test_accuracy, r2) = match &job.test_set {
        Some((x_test, TestTargets::Values(v))) if bce => (Some(subset_accuracy(backend, x_test, v)?), None),
        Some((x_test, TestTargets::Labels(l))) if spec.output == Output::Softmax => {
            (Some(accuracy(&backend.classify(theta, x_test.into())?, l)), None)
        }
        Some((x_test, TestTargets::Values(v))) if spec.output != Output::Softmax => {
            (None, Some(r2_of(backend, theta, x_test, v)?))
        }
        Some(_) => unreachable!("check_test_set refused it before training"),
        None => (None, None),
    };
    Ok(Measures { train_accuracy, train_r2, test_accuracy, r2 })
}

/// Step "write": `model.safetensors` (a finished run) or `checkpoint.safetensors` (an
/// interrupted one), `metrics.json`, `loss.png` and the pictures.
#[allow(clippy::too_many_arguments)]
fn write_run(
    job: &TrainJob,
    backend: &mut dyn Backend,
    data: &TrainingData,
    theta: Vec<f64>,
    optimizer: &Optimizer,
    summary: Summary,
    final_cost: f64,
    measures: Measures,
    save: &Save<'_>,
) -> Result<TrainOutcome> {
    let spec = &job.spec;
    let interrupted = summary.reason == StopReason::Interrupted;
    let Measures { train_accuracy, train_r2, test_accuracy, r2 } = measures;
    let mut extra = serde_json::Map::new();
    extra.insert("final_cost".into(), final_cost.into());
    if let Some(a) = test_accuracy {
        extra.insert("test_accuracy".into(), a.into());
    }
    if let Some(r) = r2 {
        extra.insert("r2".into(), r.into());
    }
    let status = if interrupted { RunStatus::Interrupted } else { RunStatus::Finished };
    // Only a finished run writes the model: θ, spec, preprocessing, the flags and a summary,
    // no optimizer state (the size of the model, not of L-BFGS's memory). The checkpoint of
    // its progress then goes, unless the run asked for checkpoints (--checkpoint-every): then
    // it holds the final optimizer state, so that the run can be continued further.
    backend.release_buffers();
    let mut files = Vec::new();
    if interrupted {
        files.push(save(&theta, Some(optimizer), extra, CHECKPOINT_FILE)?);
    } else {
        extra.insert("iterations".into(), summary.iterations.into());
        extra.insert("evaluations".into(), summary.evaluations.into());
        extra.insert("stop_reason".into(), summary.reason.to_string().into());
        files.push(save(&theta, None, extra, MODEL_FILE)?);
        if job.checkpoint_every.is_some() {
            files.push(save(&theta, Some(optimizer), Default::default(), CHECKPOINT_FILE)?);
        } else {
            match std::fs::remove_file(job.out_dir.join(CHECKPOINT_FILE)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::file(job.out_dir.join(CHECKPOINT_FILE), format!("cannot remove: {e}")));
                }
                _ => {}
            }
        }
    }

    let history = optimizer.history();
    let metrics = Metrics {
        wgnn_version: env!("CARGO_PKG_VERSION"),
        status: status.name(),
        spec,
        method: optimizer.method(),
        backend: backend.name(),
        data: &job.data_description,
        train_examples: data.train_examples,
        validation_examples: data.validation_examples,
        seed: job.seed,
        final_cost,
        initial_cost: history.records.first().map(|r| r.cost),
        train_accuracy,
        validation_metric: summary.best_validation,
        test_accuracy,
        train_r2,
        r2,
        test_examples: job.test_set.as_ref().map(|t| t.1.len()),
        stop_reason: summary.reason.to_string(),
        iterations: summary.iterations,
        evaluations: summary.evaluations,
        seconds: summary.seconds,
        history,
    };
    let json = serde_json::to_string_pretty(&metrics).map_err(|e| Error::Data(format!("metrics: {e}")))?;
    let metrics_path = job.out_dir.join(METRICS_FILE);
    crate::atomic::write_bytes(&metrics_path, json.as_bytes())?;
    files.push(metrics_path);

    let loss_path = job.out_dir.join("loss.png");
    viz::save_png(&viz::loss_curve(history, &viz::LossAxes::of(optimizer.method(), spec)), &loss_path)?;
    files.push(loss_path);
    let autoencoder = matches!(data.y_train, RowTargets::Inputs);
    files.extend(draw_pictures(spec, &theta, backend, &data.x_train, autoencoder, job)?);

    let validation = metrics.validation_metric;
    Ok(TrainOutcome { status, theta, summary, final_cost, validation, test_accuracy, r2, files })
}

/// A run that failed while training: what it keeps and how it says so.
struct Failure<'a> {
    /// `diverged` (numbers gone wrong: [`RunStatus::Diverged`]) or `failed` (any other error
    /// while training, returned as the error).
    status: &'static str,
    reason: &'a str,
    /// What the optimizer left (today: the last point where the cost and gradient were finite).
    theta: &'a [f64],
    optimizer: &'a Optimizer,
}

type Save<'s> =
    dyn Fn(&[f64], Option<&Optimizer>, serde_json::Map<String, serde_json::Value>, &str) -> Result<PathBuf> + 's;

impl Failure<'_> {
    /// Writes `checkpoint.safetensors` (θ when finite, no optimizer state: it is not to be
    /// resumed) and `metrics.json` with the status and the reason. Returns the
    /// files and J at the kept θ (NaN when it cannot be computed).
    fn write(
        &self,
        job: &TrainJob,
        spec: &NetSpec,
        backend: &mut dyn Backend,
        train_examples: usize,
        validation_examples: usize,
        save: &Save<'_>,
    ) -> Result<(Vec<PathBuf>, f64)> {
        let mut files = Vec::new();
        // A run that failed at its first evaluation saw no θ with a finite cost: the initial θ
        // is no "best seen", so nothing is kept (no checkpoint; metrics.json says why).
        let seen = self.optimizer.best_cost().is_some() || !self.optimizer.history().records.is_empty();
        let finite = seen && self.theta.iter().all(|v| v.is_finite());
        // A run that failed (not diverged: a disk that filled up, a lost device) keeps the
        // checkpoint already in its folder — a periodic one, or the one it resumed from, both
        // resumable — rather than replace it with θ alone, which could not be resumed (a full
        // disk refuses the whole checkpoint and then takes θ alone, which is smaller).
        let existing = job.out_dir.join(CHECKPOINT_FILE);
        let keep_existing = self.status == "failed" && existing.is_file();
        if keep_existing {
            files.push(existing);
        } else if finite {
            let mut extra = serde_json::Map::new();
            extra.insert("status".into(), self.status.into());
            extra.insert("error".into(), self.reason.into());
            // No optimizer state: it is not to be resumed (metrics.json holds the history).
            files.push(save(self.theta, None, extra, CHECKPOINT_FILE)?);
        }
        let final_cost =
            if finite { backend.cost(self.theta, Batch::All).map(|c| c.total()).unwrap_or(f64::NAN) } else { f64::NAN };
        let history = self.optimizer.history();
        let metrics = serde_json::json!({
            "wgnn_version": env!("CARGO_PKG_VERSION"),
            "status": self.status,
            "error": self.reason,
            "kept": if finite || keep_existing { serde_json::json!(CHECKPOINT_FILE) } else { serde_json::Value::Null },
            "resumable": keep_existing,
            "spec": spec,
            "method": self.optimizer.method(),
            "backend": backend.name(),
            "data": job.data_description,
            "train_examples": train_examples,
            "validation_examples": validation_examples,
            "seed": job.seed,
            "initial_cost": history.records.first().map(|r| r.cost),
            // JSON has no NaN: null when J at the kept θ is not a number.
            "final_cost": final_cost.is_finite().then_some(final_cost),
            "iterations": self.optimizer.iterations(),
            "evaluations": self.optimizer.evaluations(),
            "history": history,
        });
        let json = serde_json::to_string_pretty(&metrics).map_err(|e| Error::Data(format!("metrics: {e}")))?;
        let path = job.out_dir.join(METRICS_FILE);
        crate::atomic::write_bytes(&path, json.as_bytes())?;
        files.push(path);
        Ok((files, final_cost))
    }

    fn outcome(&self, files: Vec<PathBuf>, final_cost: f64) -> TrainOutcome {
        TrainOutcome {
            status: RunStatus::Diverged { reason: self.reason.to_string() },
            theta: self.theta.to_vec(),
            summary: Summary {
                reason: StopReason::Interrupted,
                iterations: self.optimizer.iterations(),
                evaluations: self.optimizer.evaluations(),
                cost: self.optimizer.history().records.last().map(|r| r.cost),
                grad_norm: self.optimizer.history().records.last().map(|r| r.grad_norm),
                best_validation: None,
                seconds: 0.0,
            },
            final_cost,
            validation: None,
            test_accuracy: None,
            r2: None,
            files,
        }
    }
}

/// Filters of the first layer, and originals above reconstructions for an autoencoder, when
/// the inputs are square pictures.
fn draw_pictures(
    spec: &NetSpec,
    theta: &[f64],
    backend: &mut dyn Backend,
    x: &Array2<f32>,
    autoencoder: bool,
    job: &TrainJob,
) -> Result<Vec<PathBuf>> {
    let (image_shape, dir) = (job.image_shape, &job.out_dir);
    if spec.has_layer_stack() {
        // A stack draws its first convolution's filters (colour over 3 channels); one with no
        // filters over pixels (e.g. pooling first, no convolution) draws none.
        return Ok(match viz::first_layer_filters(spec, theta, None) {
            Ok((picture, _)) => {
                let path = dir.join("filters.png");
                picture.save(&path)?;
                vec![path]
            }
            Err(_) => Vec::new(),
        });
    }
    let square = image_shape.is_some_and(|(h, w)| h == w) || viz::square_side(spec.inputs()).is_ok();
    // A recurrent layer's weight block (W_ih then W_hh) is no picture of the input.
    let recurrent = spec.net.as_ref().is_some_and(|s| s.is_sequence());
    if !square || spec.layers.len() < 3 || recurrent {
        return Ok(Vec::new());
    }
    // A recurrent layer's weights (W_ih beside W_hh, per gate) are no picture of the input.
    if spec.net.as_ref().is_some_and(|s| s.layers.iter().any(crate::model::Layer::is_recurrent)) {
        return Ok(Vec::new());
    }
    let layout = ThetaLayout::new(spec);
    let mut files = Vec::new();
    let path = dir.join("filters.png");
    // Trained on whitened data: both pictures are drawn as the pixels see them.
    let whitening = Whitening::from_preprocessing(&job.preprocessing)?;
    viz::save_png(&viz::filters_in_pixels(layout.weight(theta, 0), whitening.as_ref())?, &path)?;
    files.push(path);
    if autoencoder && spec.output != Output::Softmax && spec.outputs() == spec.inputs() {
        let count = x.nrows().min(10);
        let originals = x.slice(ndarray::s![..count, ..]).mapv(f64::from);
        let recon = backend.predict(theta, (&originals).into())?;
        let path = dir.join("reconstructions.png");
        let picture = viz::reconstructions_in_pixels(originals.view(), recon.view(), whitening.as_ref())?;
        viz::save_png(&picture, &path)?;
        files.push(path);
    }
    Ok(files)
}

/// Character-level language models (MATH.md, "Character-level language model"; issue 16):
/// truncated backpropagation through time over consecutive text with the state carried across
/// windows, gradient clipping by global norm, a first-order update rule, and bits per
/// character on held-out text. Sequences come from [`crate::data::text`]; the network is a
/// recurrent stack with a softmax over the vocabulary at every step
/// ([`crate::cpu::sequence::Recurrent`]). It prints nothing and writes no file: the caller
/// saves θ (with the vocabulary, see [`crate::data::text::Vocabulary::to_json`]).
pub mod char_model {
    use crate::cpu::Real;
    use crate::cpu::net::TargetView;
    use crate::cpu::sequence::{Recurrent, State};
    use crate::data::text::{self, StreamBatches};
    use crate::model::{InputShape, Layer, LayerStack, NetSpec, Output};
    use crate::optim::clip_by_global_norm;
    use crate::optim::{Control, UpdateRule, UpdateState};
    use crate::{Error, Result};

    /// [`clip_by_global_norm`] on a gradient held in `F`: the same norm and scale, computed in
    /// f64, each value scaled as f64 and rounded back to `F`.
    fn clip<F: Real>(g: &mut [F], tau: f64) -> Result<f64> {
        let mut wide: Vec<f64> = g.iter().map(|v| v.f64()).collect();
        let norm = clip_by_global_norm(&mut wide, tau)?;
        if norm > tau {
            g.iter_mut().zip(&wide).for_each(|(v, &w)| *v = F::of(w));
        }
        Ok(norm)
    }

    /// Windows evaluated in one call: bounds the one-hot batch (256 × T × V values) and the
    /// activations kept for it.
    pub const EVAL_CHUNK: usize = 256;

    /// The language model over `vocab` characters in windows of `steps`: `layers` (recurrent,
    /// bottom first, each made to give every step — the layer above, or the softmax, reads
    /// all T) on the input 1 × T × V (one-hot characters), then a softmax of V classes at every
    /// step. Refused: no layers, or a layer that is not rnn/lstm.
    pub fn spec(vocab: usize, steps: usize, mut layers: Vec<Layer>) -> Result<NetSpec> {
        if layers.is_empty() || !layers.iter().all(Layer::is_recurrent) {
            return Err(Error::Data("a character model is a stack of rnn/lstm layers, e.g. --net \"lstm 256\"".into()));
        }
        for layer in &mut layers {
            if let Layer::Rnn { per_step, .. } | Layer::Lstm { per_step, .. } = layer {
                *per_step = true;
            }
        }
        let stack = LayerStack { input: InputShape::sequence(steps, vocab), layers };
        Ok(NetSpec::stack(stack, vocab, Output::Softmax)?)
    }

    /// The settings of one run.
    #[derive(Clone, Debug)]
    pub struct Job {
        /// Streams per minibatch (rows).
        pub batch: usize,
        /// The update rule (Adam for the issue's setup) and its learning rate η.
        pub rule: UpdateRule,
        /// The learning rate η.
        pub learning_rate: f64,
        /// τ for clipping by global norm (None: no clipping).
        pub clip_norm: Option<f64>,
        /// Minibatch updates to run.
        pub steps: usize,
        /// Held-out bits per character every this many updates (and after the last); 0: only
        /// after the last.
        pub eval_every: usize,
    }

    impl Job {
        /// Whether the held-out text is scored after update `step`: every `eval_every`
        /// updates (0: never) and after the last.
        fn measures_after(&self, step: usize) -> bool {
            step == self.steps || (self.eval_every > 0 && step.is_multiple_of(self.eval_every))
        }
    }

    /// Held-out bits per character: consecutive windows of T characters, each from a zero
    /// state (the last N − 1 − windows·T characters, fewer than T, are not scored).
    #[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct HeldOut {
        /// Mean cross-entropy over the scored characters / ln 2.
        pub bits_per_character: f64,
        /// Windows scored.
        pub windows: usize,
        /// Characters predicted: windows · T.
        pub scored: usize,
        /// Characters at the end not scored.
        pub left_out: usize,
    }

    /// Bits per character of θ on the character ids `ids` (MATH.md: cost / ln 2), in
    /// consecutive windows of T from a zero state each. Refused: a text shorter than T + 1.
    pub fn bits_per_character<F: Real>(net: &Recurrent, theta: &[F], ids: &[u32]) -> Result<HeldOut> {
        bits_per_character_on_ranks(net, theta, ids, &crate::dist::Solo)
    }

    /// [`bits_per_character`] with the windows shared by the ranks of `comm` (consecutive
    /// blocks, [`crate::dist::shard_rows`]), their nats summed in rank order. Collective.
    pub fn bits_per_character_on_ranks<F: Real>(
        net: &Recurrent,
        theta: &[F],
        ids: &[u32],
        comm: &dyn crate::dist::Collective,
    ) -> Result<HeldOut> {
        let steps = net.steps();
        let vocab = net.spec.outputs();
        let starts = text::eval_starts(ids.len(), steps, "the held-out text")?;
        let mine = crate::dist::shard_rows(starts.len(), comm.size(), comm.rank());
        let score = || -> Result<f64> {
            let mut nats = 0.0;
            for chunk in starts[mine.clone()].chunks(EVAL_CHUNK) {
                let (x, next) = text::one_hot_windows(ids, chunk, steps, vocab)?;
                let x = x.mapv(F::of_f32);
                let (cost, _) = net.cost_and_grad(theta, x.view(), TargetView::Labels(&next), None, None)?;
                nats += cost.data * chunk.len() as f64;
            }
            Ok(nats)
        };
        let mut nats = score();
        if comm.size() > 1 {
            // Every rank reaches the sum, failed or not, so that none waits for another:
            // [nats, failed].
            let mine = match &nats {
                Ok(v) => [*v, 0.0],
                Err(_) => [0.0, 1.0],
            };
            let mut total = [0.0; 2];
            comm.sum_in_rank_order(&mine, &mut total)?;
            if total[1] > 0.0 {
                let failure = nats.err().map(|e| e.to_string());
                return Err(failed_on_a_rank_while(comm, "scoring the held-out text", failure));
            }
            nats = Ok(total[0]);
        }
        let nats = nats?;
        let windows = starts.len();
        let scored = windows * steps;
        Ok(HeldOut {
            bits_per_character: nats / windows as f64 / std::f64::consts::LN_2,
            windows,
            scored,
            left_out: ids.len() - 1 - scored,
        })
    }

    /// What one update did, for the caller's progress line.
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct Step {
        /// 1 for the first update.
        pub step: usize,
        /// Minibatches of one pass over the training text.
        pub per_epoch: usize,
        /// The minibatch's mean cross-entropy in bits per character (before the update).
        pub train_bits: f64,
        /// ‖∇J‖ before clipping.
        pub grad_norm: f64,
        /// Held-out bits per character, when measured at this step.
        pub held_out: Option<HeldOut>,
        /// Set on a second call after this update when another rank asked to stop (over MPI):
        /// the run ends here, so a caller that saves on stopping saves now.
        pub stopping: bool,
    }

    impl Step {
        /// The report of update `step` as the trainers make it (`stopping` unset): the
        /// minibatch's mean cross-entropy `data_nats` (nats per character) in bits.
        fn after_update(
            step: usize,
            per_epoch: usize,
            data_nats: f64,
            grad_norm: f64,
            held_out: Option<HeldOut>,
        ) -> Step {
            Step {
                step,
                per_epoch,
                train_bits: data_nats / std::f64::consts::LN_2,
                grad_norm,
                held_out,
                stopping: false,
            }
        }
    }

    /// Trains θ (f64, updated in place; the network computes in `F`) on the training ids
    /// `train` for `job.steps` updates: minibatch k of [`StreamBatches`] continues minibatch
    /// k − 1 row by row, its state carried (gradients are not); a new pass over the text starts
    /// from a zero state. Each update: cost and gradient of the window, the gradient clipped
    /// to norm τ, then the rule's step. Held-out bits per character on `held_out` (when not
    /// empty) as `job.eval_every` says. `on_step` sees every update and may stop the run
    /// (Ctrl-C). Returns the updates done and the last held-out measure. A non-finite cost or
    /// gradient is refused ([`Error::Data`]) with θ left at the last finite point.
    pub fn train<F: Real>(
        net: &Recurrent,
        theta: &mut [f64],
        train: &[u32],
        held_out: &[u32],
        job: &Job,
        on_step: &mut dyn FnMut(&Step) -> Control,
    ) -> Result<(usize, Option<HeldOut>)> {
        train_from_on_ranks::<F>(net, theta, train, held_out, job, None, &crate::dist::Solo, &mut |s, _| on_step(s))
    }

    /// Where a character model's training stands after an update: everything besides θ that
    /// the next update reads, so that a run continued from it ([`train_from`]) takes the same
    /// steps, to the bit, as one never interrupted. Stored in a checkpoint's optimizer state
    /// (`--checkpoint-every`, Ctrl-C) for `--resume`.
    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Progress {
        /// Updates done (the next is `updates + 1`).
        pub updates: usize,
        /// The update rule's state (Adam's moments and t).
        pub update: UpdateState,
        /// The state carried into the next window, per recurrent layer bottom first: h then
        /// (LSTM) c, each batch × units row-major, as f64 (an f32 state converts exactly).
        pub state: Vec<Vec<Vec<f64>>>,
        /// The last held-out measure, if any.
        pub held_out: Option<HeldOut>,
    }

    impl Progress {
        fn carried<F: Real>(state: &State<F>) -> Vec<Vec<Vec<f64>>> {
            state
                .layers
                .iter()
                .map(|l| {
                    std::iter::once(&l.h).chain(l.c.as_ref()).map(|a| a.iter().map(|v| v.f64()).collect()).collect()
                })
                .collect()
        }

        /// The carried state in `F` for `net` and `batch` streams; `Error::Data` in one line
        /// when it was saved for another network or batch.
        fn restore<F: Real>(&self, net: &Recurrent, batch: usize) -> Result<State<F>> {
            let mut state = net.zero_state::<F>(batch);
            let fits = self.state.len() == state.layers.len()
                && self.state.iter().zip(&state.layers).all(|(saved, l)| {
                    saved.len() == 1 + usize::from(l.c.is_some()) && saved.iter().all(|a| a.len() == l.h.len())
                });
            if !fits {
                return Err(Error::Data(
                    "the checkpoint's carried state does not fit this network and batch: resume it with the flags it was trained with"
                        .into(),
                ));
            }
            for (saved, l) in self.state.iter().zip(&mut state.layers) {
                let arrays = std::iter::once(&mut l.h).chain(l.c.as_mut());
                for (a, values) in arrays.zip(saved) {
                    a.iter_mut().zip(values).for_each(|(d, &v)| *d = F::of(v));
                }
            }
            Ok(state)
        }
    }

    /// What [`train_from`]'s callback may call to get the [`Progress`] and θ after an update.
    pub type Snapshot<'a> = dyn Fn() -> (Progress, Vec<f64>) + 'a;

    /// As [`train`], continued from `from` (θ being the θ saved with it) when given: the
    /// update after `from.updates` reads the next window with the saved state and rule state,
    /// so the run ends on the bits of an uninterrupted one. `on_step` also gets a function
    /// that gives the [`Progress`] and θ after that update (call it only when saving: it
    /// copies them). `job.steps` is the total of updates, those before `from` included.
    /// Refused ([`Error::Data`]): a `from` of another rule, θ length, network or batch, or
    /// with more updates than `job.steps`.
    pub fn train_from<F: Real>(
        net: &Recurrent,
        theta: &mut [f64],
        train: &[u32],
        held_out: &[u32],
        job: &Job,
        from: Option<&Progress>,
        on_step: &mut dyn FnMut(&Step, &Snapshot<'_>) -> Control,
    ) -> Result<(usize, Option<HeldOut>)> {
        train_from_on_ranks::<F>(net, theta, train, held_out, job, from, &crate::dist::Solo, on_step)
    }

    /// [`train`] as one rank of a data-parallel job (DESIGN.md, "Wave 2: beyond one
    /// machine"): every rank holds the whole text and θ; the streams of each minibatch are
    /// shared by the ranks in consecutive blocks ([`crate::dist::shard_rows`] of `job.batch`,
    /// each rank carrying its streams' state), and the mean cost and gradient of the whole
    /// minibatch are Σᵣ (bᵣ/b)·(Jᵣ, ∇Jᵣ), summed in rank order in f64, before clipping and the
    /// update — the same step on every rank, equal to one process's up to f32 rounding.
    /// Held-out windows are shared the same way ([`bits_per_character_on_ranks`]), and the
    /// run stops at the first update after which any rank's `on_step` asked to stop.
    /// Collective; with one rank it is [`train`], bit for bit. Errors as [`train`], and fewer
    /// streams than ranks.
    pub fn train_on_ranks<F: Real>(
        net: &Recurrent,
        theta: &mut [f64],
        train: &[u32],
        held_out: &[u32],
        job: &Job,
        comm: &dyn crate::dist::Collective,
        on_step: &mut dyn FnMut(&Step) -> Control,
    ) -> Result<(usize, Option<HeldOut>)> {
        train_from_on_ranks::<F>(net, theta, train, held_out, job, None, comm, &mut |s, _| on_step(s))
    }

    /// [`train_from`] as one rank of a data-parallel job ([`train_on_ranks`]). The carried
    /// state of all the streams is summed from the ranks' blocks after every update (each
    /// rank's block exact, zeros elsewhere), so the [`Progress`] a snapshot gives is the whole
    /// minibatch's on every rank, and a checkpoint written with N ranks resumes with M. When
    /// the ranks agree to stop after an update that this rank's `on_step` let pass, `on_step`
    /// is called again with [`Step::stopping`] set, so that it can save. Collective.
    #[allow(clippy::too_many_arguments)]
    pub fn train_from_on_ranks<F: Real>(
        net: &Recurrent,
        theta: &mut [f64],
        train: &[u32],
        held_out: &[u32],
        job: &Job,
        from: Option<&Progress>,
        comm: &dyn crate::dist::Collective,
        on_step: &mut dyn FnMut(&Step, &Snapshot<'_>) -> Control,
    ) -> Result<(usize, Option<HeldOut>)> {
        let size = comm.size();
        let (mine, weight) = rank_share(job, comm)?;
        let streams = check_job(net, train, held_out, job)?;
        let (steps, vocab) = (net.steps(), net.spec.outputs());
        let (mut update, first, mut last) = starting_point(from, job, theta.len())?;
        // The whole minibatch's carried state (this rank's streams are rows `mine` of it).
        let mut full = match from {
            Some(p) => p.restore::<F>(net, job.batch)?,
            None => net.zero_state::<F>(job.batch),
        };
        let mut state = rows_of(&full, &mine);
        let mut theta_f: Vec<F> = theta.iter().map(|&v| F::of(v)).collect();
        let mut grad = vec![F::zero(); theta.len()];
        let mut grad64 = vec![0.0; theta.len()];
        // Over ranks: [weight · ∇J_r …, weight · J_r (data), weight · J_r (total), failed]: a
        // rank that failed (its window, its evaluation, a cost or gradient not finite on its
        // streams alone) says so in the same sum, so every rank stops at this update.
        let mut local = vec![0.0; if size > 1 { theta.len() + 3 } else { 0 }];
        let mut summed = local.clone();
        for step in first..=job.steps {
            let k = (step - 1) % streams.len();
            if k == 0 && step > 1 {
                state = net.zero_state::<F>(mine.len());
            }
            let outcome =
                text::one_hot_windows(train, &streams.starts(k)[mine.clone()], steps, vocab).and_then(|(x, next)| {
                    let x = x.mapv(F::of_f32);
                    net.cost_and_grad(&theta_f, x.view(), TargetView::Labels(&next), Some(&state), Some(&mut grad))
                });
            let failure = match (&outcome, size) {
                (_, 1) => None,
                (Err(e), _) => Some(e.to_string()),
                (Ok((c, _)), _) if !(c.total().is_finite() && grad.iter().all(|g| g.f64().is_finite())) => {
                    Some(format!(
                        "the cost of its streams is {} and their gradient is not finite: training diverged; \
                         try a smaller learning rate or --clip-norm",
                        c.total()
                    ))
                }
                _ => None,
            };
            let failed = failure.is_some();
            let (mut cost, carried) = match outcome {
                Ok(done) if !failed => done,
                Err(e) if size == 1 => return Err(e),
                // The failure travels with the sum below.
                _ => (crate::backend::Cost::default(), state.clone()),
            };
            state = carried;
            let grad_norm = if size == 1 {
                full = state.clone();
                let norm = match job.clip_norm {
                    Some(tau) => clip(&mut grad, tau)?,
                    None => grad.iter().map(|g| g.f64() * g.f64()).sum::<f64>().sqrt(),
                };
                grad64.iter_mut().zip(&grad).for_each(|(d, g)| *d = g.f64());
                norm
            } else {
                let n = theta.len();
                if failed {
                    local.iter_mut().for_each(|v| *v = 0.0);
                    local[n + 2] = 1.0;
                } else {
                    local[..n].iter_mut().zip(&grad).for_each(|(d, g)| *d = weight * g.f64());
                    (local[n], local[n + 1], local[n + 2]) = (weight * cost.data, weight * cost.total(), 0.0);
                }
                comm.sum_in_rank_order(&local, &mut summed)?;
                if summed[n + 2] > 0.0 {
                    return Err(failed_on_a_rank(comm, step, failure));
                }
                gather_state(comm, &state, &mut full, mine.start)?;
                grad64.copy_from_slice(&summed[..n]);
                cost.data = summed[n];
                cost.weight_decay = summed[n + 1] - summed[n];
                cost.sparsity = 0.0;
                match job.clip_norm {
                    Some(tau) => clip_by_global_norm(&mut grad64, tau)?,
                    None => grad64.iter().map(|g| g * g).sum::<f64>().sqrt(),
                }
            };
            check_finite_update(step, cost.total(), grad_norm)?;
            update.apply(theta, &grad64, job.learning_rate);
            theta_f.iter_mut().zip(theta.iter()).for_each(|(f, &v)| *f = F::of(v));
            let measure = !held_out.is_empty() && job.measures_after(step);
            let held = if measure { Some(bits_per_character_on_ranks(net, &theta_f, held_out, comm)?) } else { None };
            last = held.or(last);
            let report = Step::after_update(step, streams.len(), cost.data, grad_norm, held);
            let snapshot = || {
                let progress =
                    Progress { updates: step, update: update.clone(), state: Progress::carried(&full), held_out: last };
                (progress, theta.to_vec())
            };
            let asked = on_step(&report, &snapshot) == Control::Stop;
            if any_rank_stops(comm, asked)? {
                if !asked {
                    on_step(&Step { stopping: true, ..report }, &snapshot);
                }
                return Ok((step, last));
            }
        }
        Ok((job.steps.max(first - 1), last))
    }

    /// The whole minibatch's state from the ranks' blocks: this rank's `state` (its streams,
    /// rows `start`… of the minibatch) in its block, zeros elsewhere, summed in rank order —
    /// exact, since every entry has one non-zero term.
    fn gather_state<F: Real>(
        comm: &dyn crate::dist::Collective,
        state: &State<F>,
        full: &mut State<F>,
        start: usize,
    ) -> Result<()> {
        let arrays = |s: &State<F>| -> Vec<usize> {
            s.layers.iter().flat_map(|l| std::iter::once(l.h.len()).chain(l.c.as_ref().map(|c| c.len()))).collect()
        };
        let total: usize = arrays(full).iter().sum();
        let mut local = vec![0.0; total];
        let mut offset = 0;
        for (mine, whole) in state.layers.iter().zip(&full.layers) {
            let pairs = std::iter::once((&mine.h, &whole.h)).chain(mine.c.as_ref().zip(whole.c.as_ref()));
            for (m, w) in pairs {
                let cols = w.ncols();
                for (i, row) in m.rows().into_iter().enumerate() {
                    let at = offset + (start + i) * cols;
                    local[at..at + cols].iter_mut().zip(row).for_each(|(d, v)| *d = v.f64());
                }
                offset += w.len();
            }
        }
        let mut summed = vec![0.0; total];
        comm.sum_in_rank_order(&local, &mut summed)?;
        let mut values = summed.into_iter();
        for whole in &mut full.layers {
            let arrays = std::iter::once(&mut whole.h).chain(whole.c.as_mut());
            for w in arrays {
                w.iter_mut().zip(&mut values).for_each(|(d, v)| *d = F::of(v));
            }
        }
        Ok(())
    }

    /// [`train`] with each window's cost and gradient on the GPU (`gpu`, a backend built for
    /// `net.spec`): the state carried from window to window on the device
    /// ([`crate::gpu::GpuBackend::set_recurrent_state`]; a new pass over the text starts from
    /// zero), and θ, the rule's moments, the clipping by global norm and the update on the
    /// device too (`train_on_gpu_resident`: per update one submission and 16 bytes read back;
    /// θ read back for the held-out measures, snapshots and the end). After
    /// [`crate::gpu::GpuBackend::set_device_training`]`(false)` the gradient is read back,
    /// clipped and applied on the host as [`train`] does instead. Held-out bits per character
    /// on the CPU in f32. The same windows, order and rule as [`train`]; the numbers are
    /// f32's. Continued from `from` and giving snapshots as [`train_from`] does (the state
    /// read back from the device).
    #[allow(clippy::too_many_arguments)]
    pub fn train_on_gpu(
        gpu: &mut crate::gpu::GpuBackend,
        net: &Recurrent,
        theta: &mut [f64],
        train: &[u32],
        held_out: &[u32],
        job: &Job,
        from: Option<&Progress>,
        on_step: &mut dyn FnMut(&Step, &Snapshot<'_>) -> Control,
    ) -> Result<(usize, Option<HeldOut>)> {
        train_on_gpu_on_ranks(gpu, net, theta, train, held_out, job, from, &crate::dist::Solo, on_step)
    }

    /// [`train_on_gpu`] as one rank of a data-parallel job, as [`train_from_on_ranks`] shares
    /// the work (DESIGN.md, "Wave 2: beyond one machine"): this rank's GPU evaluates its block
    /// of every minibatch's streams ([`crate::dist::shard_rows`] of `job.batch`), carrying their
    /// state on the device; the gradient is read back every update (no GPU-aware MPI:
    /// 4·|θ| bytes from the device, then 8·|θ| per rank in the sum) and Σᵣ (bᵣ/b)·(Jᵣ, ∇Jᵣ) is
    /// summed in rank order in f64 before clipping and the update, the same step on every rank.
    /// After every update the streams' carried state is read back and gathered
    /// (`gather_state`), so a snapshot's [`Progress`] is the whole minibatch's and a checkpoint
    /// written with N ranks resumes with M (on the CPU or the GPU). A failure on one rank (a
    /// window the device refused) is every rank's error at the same update, naming the rank.
    /// Held-out windows are shared as [`bits_per_character_on_ranks`] shares them. Collective;
    /// with one rank it is [`train_on_gpu`]. Errors as [`train_on_gpu`], and fewer streams than
    /// ranks.
    #[allow(clippy::too_many_arguments)]
    pub fn train_on_gpu_on_ranks(
        gpu: &mut crate::gpu::GpuBackend,
        net: &Recurrent,
        theta: &mut [f64],
        train: &[u32],
        held_out: &[u32],
        job: &Job,
        from: Option<&Progress>,
        comm: &dyn crate::dist::Collective,
        on_step: &mut dyn FnMut(&Step, &Snapshot<'_>) -> Control,
    ) -> Result<(usize, Option<HeldOut>)> {
        use crate::backend::{Backend, Batch, Targets};
        if comm.size() == 1 && gpu.device_training().is_some() {
            return train_on_gpu_resident(gpu, net, theta, train, held_out, job, from, on_step);
        }
        let size = comm.size();
        let (mine, weight) = rank_share(job, comm)?;
        let streams = check_job(net, train, held_out, job)?;
        let (steps, vocab) = (net.steps(), net.spec.outputs());
        let (mut update, first, mut last) = starting_point(from, job, theta.len())?;
        let mut grad = vec![0.0; theta.len()];
        // Over ranks: the whole minibatch's carried state (this rank's streams are rows `mine`).
        let mut full = match from {
            Some(p) => p.restore::<f32>(net, job.batch)?,
            None => net.zero_state::<f32>(job.batch),
        };
        if from.is_some() {
            gpu.set_recurrent_state(Some(rows_of(&full, &mine)))?;
        }
        // Over ranks: [weight · ∇J_r …, weight · J_r (data), weight · J_r (total), failed].
        let mut local = vec![0.0; if size > 1 { theta.len() + 3 } else { 0 }];
        let mut summed = local.clone();
        for step in first..=job.steps {
            let k = (step - 1) % streams.len();
            if k == 0 {
                gpu.set_recurrent_state(Some(net.zero_state::<f32>(mine.len())))?;
            }
            let (x, next) = text::one_hot_windows(train, &streams.starts(k)[mine.clone()], steps, vocab)?;
            let mut evaluate = || -> Result<crate::backend::Cost> {
                gpu.set_data((&x).into(), Targets::Labels(&next))?;
                gpu.cost_and_grad(theta, Batch::All, &mut grad)
            };
            let cost = if size == 1 {
                evaluate()?
            } else {
                // Every rank reaches the sum, failed or not, so that none waits for another.
                let outcome = evaluate().and_then(|c| Ok((c, gpu.recurrent_state()?)));
                let n = theta.len();
                let failure = match &outcome {
                    Ok((c, _)) => {
                        local[..n].iter_mut().zip(&grad).for_each(|(d, g)| *d = weight * g);
                        (local[n], local[n + 1], local[n + 2]) = (weight * c.data, weight * c.total(), 0.0);
                        None
                    }
                    Err(e) => {
                        local.iter_mut().for_each(|v| *v = 0.0);
                        local[n + 2] = 1.0;
                        Some(e.to_string())
                    }
                };
                comm.sum_in_rank_order(&local, &mut summed)?;
                if summed[n + 2] > 0.0 {
                    return Err(failed_on_a_rank(comm, step, failure));
                }
                let (_, state) = outcome.expect("no rank failed");
                gather_state(comm, &state, &mut full, mine.start)?;
                grad.copy_from_slice(&summed[..n]);
                crate::backend::Cost { data: summed[n], weight_decay: summed[n + 1] - summed[n], sparsity: 0.0 }
            };
            let grad_norm = match job.clip_norm {
                Some(tau) => clip_by_global_norm(&mut grad, tau)?,
                None => grad.iter().map(|g| g * g).sum::<f64>().sqrt(),
            };
            check_finite_update(step, cost.total(), grad_norm)?;
            update.apply(theta, &grad, job.learning_rate);
            let measure = !held_out.is_empty() && job.measures_after(step);
            let held = if measure {
                let theta_f: Vec<f32> = theta.iter().map(|&v| v as f32).collect();
                Some(bits_per_character_on_ranks(net, &theta_f, held_out, comm)?)
            } else {
                None
            };
            last = held.or(last);
            let report = Step::after_update(step, streams.len(), cost.data, grad_norm, held);
            let device: &crate::gpu::GpuBackend = gpu;
            let full = &full;
            let snapshot = || {
                // Alone: the state the window just evaluated left on the device; over ranks:
                // every rank's streams, gathered after the update.
                let state = if size == 1 {
                    Progress::carried(
                        &device.recurrent_state().expect("the GPU keeps the state of the window it just evaluated"),
                    )
                } else {
                    Progress::carried(full)
                };
                let progress = Progress { updates: step, update: update.clone(), state, held_out: last };
                (progress, theta.to_vec())
            };
            let asked = on_step(&report, &snapshot) == Control::Stop;
            if any_rank_stops(comm, asked)? {
                if !asked {
                    on_step(&Step { stopping: true, ..report }, &snapshot);
                }
                return Ok((step, last));
            }
        }
        Ok((job.steps.max(first - 1), last))
    }

    /// [`train_on_gpu`] alone with θ on the device (the default; the host path above runs
    /// after [`crate::gpu::GpuBackend::set_device_training`]`(false)` and over ranks): θ and the
    /// rule's moments are loaded once, the carried state stays on the device, and each update
    /// writes the window over the last one in place (one plan for the run,
    /// [`crate::gpu::GpuBackend::replace_data`]) and runs its forward and backward pass, ‖∇J‖²
    /// (a fixed-order sum), the clipping g·min(1, τ/‖g‖) and the rule's step in one submission
    /// ([`crate::gpu::GpuBackend::step_clipped`]), reading back 16 bytes: the cost terms and
    /// ‖∇J‖². θ (and the moments) come back only to score the held-out text, for a snapshot,
    /// and at the end — also when the run fails, so that `theta` holds the last finite point.
    /// The numbers are f32's throughout (θ and the moments too), equal to the host path's to
    /// f32 rounding; a run resumed from a snapshot ends on the bits of an uninterrupted one.
    #[allow(clippy::too_many_arguments)]
    fn train_on_gpu_resident(
        gpu: &mut crate::gpu::GpuBackend,
        net: &Recurrent,
        theta: &mut [f64],
        train: &[u32],
        held_out: &[u32],
        job: &Job,
        from: Option<&Progress>,
        on_step: &mut dyn FnMut(&Step, &Snapshot<'_>) -> Control,
    ) -> Result<(usize, Option<HeldOut>)> {
        use crate::backend::{DeviceTraining, Targets};
        let streams = check_job(net, train, held_out, job)?;
        let (steps, vocab) = (net.steps(), net.spec.outputs());
        let (mut update, first, mut last) = starting_point(from, job, theta.len())?;
        if let Some(p) = from {
            gpu.set_recurrent_state(Some(p.restore::<f32>(net, job.batch)?))?;
        }
        gpu.load(theta, &update)?;
        let dim = theta.len();
        let gpu = std::cell::RefCell::new(gpu);
        let mut run = || -> Result<usize> {
            for step in first..=job.steps {
                let k = (step - 1) % streams.len();
                let mut g = gpu.borrow_mut();
                if k == 0 {
                    g.set_recurrent_state(Some(net.zero_state::<f32>(job.batch)))?;
                }
                let (x, next) = text::one_hot_windows(train, &streams.starts(k), steps, vocab)?;
                g.replace_data((&x).into(), Targets::Labels(&next))?;
                let scalars = update.rule.scalars(update.steps + 1, job.learning_rate);
                let (cost, grad_norm) = g.step_clipped(&scalars, job.clip_norm)?;
                check_finite_update(step, cost.total(), grad_norm)?;
                update.steps += 1;
                let held = if !held_out.is_empty() && job.measures_after(step) {
                    g.read(theta, &mut update)?;
                    let theta_f: Vec<f32> = theta.iter().map(|&v| v as f32).collect();
                    Some(bits_per_character(net, &theta_f, held_out)?)
                } else {
                    None
                };
                drop(g);
                last = held.or(last);
                let report = Step::after_update(step, streams.len(), cost.data, grad_norm, held);
                let snapshot = || {
                    let mut g = gpu.borrow_mut();
                    let state = g.recurrent_state().expect("the GPU keeps the state of the window it just evaluated");
                    let (mut now, mut rule) = (vec![0.0; dim], update.clone());
                    g.read(&mut now, &mut rule).expect("the GPU holds θ and the moments it trained");
                    let progress =
                        Progress { updates: step, update: rule, state: Progress::carried(&state), held_out: last };
                    (progress, now)
                };
                if on_step(&report, &snapshot) == Control::Stop {
                    return Ok(step);
                }
            }
            Ok(job.steps.max(first - 1))
        };
        let outcome = run();
        // θ (and the moments) as the device holds them: the last finite point on an error.
        let read = gpu.borrow_mut().read(theta, &mut update);
        let done = outcome?;
        read?;
        Ok((done, last))
    }

    /// This rank's streams of the minibatch (rows `mine`) and its share of the mean
    /// (`mine.len() / batch`). Errors: fewer streams than ranks.
    fn rank_share(job: &Job, comm: &dyn crate::dist::Collective) -> Result<(std::ops::Range<usize>, f64)> {
        let (size, rank) = (comm.size(), comm.rank());
        if job.batch < size {
            return Err(Error::Data(format!(
                "--batch-size {} streams cannot be shared by {size} ranks: give at least {size}",
                job.batch
            )));
        }
        let mine = crate::dist::shard_rows(job.batch, size, rank);
        let weight = mine.len() as f64 / job.batch as f64;
        Ok((mine, weight))
    }

    /// Rows `mine` of the whole minibatch's carried state.
    fn rows_of<F: Real>(full: &State<F>, mine: &std::ops::Range<usize>) -> State<F> {
        State {
            layers: full
                .layers
                .iter()
                .map(|l| crate::cpu::sequence::LayerState {
                    h: l.h.slice(ndarray::s![mine.clone(), ..]).to_owned(),
                    c: l.c.as_ref().map(|c| c.slice(ndarray::s![mine.clone(), ..]).to_owned()),
                })
                .collect(),
        }
    }

    /// Whether every rank stops after this update: once any rank's caller `asked` to.
    /// Collective (alone: `asked`).
    fn any_rank_stops(comm: &dyn crate::dist::Collective, asked: bool) -> Result<bool> {
        if comm.size() == 1 {
            return Ok(asked);
        }
        let mut any = [0.0];
        comm.sum_in_rank_order(&[f64::from(u8::from(asked))], &mut any)?;
        Ok(any[0] > 0.0)
    }

    /// Refuses an update whose cost or gradient norm is not finite: training diverged.
    fn check_finite_update(step: usize, cost: f64, grad_norm: f64) -> Result<()> {
        if cost.is_finite() && grad_norm.is_finite() {
            return Ok(());
        }
        Err(Error::Data(format!(
            "update {step}: the cost is {} and the gradient's norm {}: training diverged; \
             try a smaller learning rate or --clip-norm",
            crate::short_number(cost),
            crate::short_number(grad_norm)
        )))
    }

    /// The error every rank returns at update `step` once the sum said that some rank failed:
    /// the first failing rank's own message (`mine` on that rank), gathered from all.
    /// Collective.
    fn failed_on_a_rank(comm: &dyn crate::dist::Collective, step: usize, mine: Option<String>) -> Error {
        failed_on_a_rank_while(comm, &format!("update {step}"), mine)
    }

    /// As [`failed_on_a_rank`], the line naming what the ranks were doing (`doing`, e.g.
    /// "update 3" or "scoring the held-out text"). Collective.
    fn failed_on_a_rank_while(comm: &dyn crate::dist::Collective, doing: &str, mine: Option<String>) -> Error {
        let all = match comm.all_gather_bytes(mine.unwrap_or_default().as_bytes()) {
            Ok(all) => all,
            Err(e) => return e,
        };
        match all.iter().enumerate().find(|(_, m)| !m.is_empty()) {
            Some((r, m)) => Error::Data(format!("rank {r}, {doing}: {}", String::from_utf8_lossy(m))),
            None => Error::Data(format!("{doing}: a rank failed without saying why")),
        }
    }

    /// The checks every trainer of a character model makes before its first update: the
    /// rule, η > 0, τ > 0 when clipping, and windows that fit the training and held-out text.
    /// Returns the training text's minibatches of streams.
    fn check_job(net: &Recurrent, train: &[u32], held_out: &[u32], job: &Job) -> Result<StreamBatches> {
        job.rule.validate()?;
        if !(job.learning_rate.is_finite() && job.learning_rate > 0.0) {
            return Err(Error::Data(format!("the learning rate η = {} must be > 0", job.learning_rate)));
        }
        if let Some(tau) = job.clip_norm
            && !(tau.is_finite() && tau > 0.0)
        {
            return Err(Error::Data(format!("--clip-norm {tau} must be a finite number > 0")));
        }
        let streams = StreamBatches::new(train.len(), job.batch, net.steps())?;
        if !held_out.is_empty() {
            text::check_window(held_out.len(), net.steps(), "the held-out text")?;
        }
        Ok(streams)
    }

    /// Where a run of `job` over θ of `dim` values starts: the rule's state, the first update
    /// and the last held-out measure — fresh, or those of the checkpoint's [`Progress`] `from`
    /// (its carried state is restored by the caller, which knows where it lives). Refused
    /// ([`Error::Data`], one line): a `from` of another rule or θ length, or with more updates
    /// than `job.steps`.
    fn starting_point(from: Option<&Progress>, job: &Job, dim: usize) -> Result<(UpdateState, usize, Option<HeldOut>)> {
        let Some(p) = from else { return Ok((UpdateState::new(job.rule, dim), 1, None)) };
        if p.update.rule != job.rule || p.update.dim().is_some_and(|d| d != dim) {
            return Err(Error::Data(format!(
                "the checkpoint's optimizer state is for {} over {} values, the run is {} over {}: resume it with the flags it was trained with",
                p.update.rule.name(),
                p.update.dim().unwrap_or(dim),
                job.rule.name(),
                dim
            )));
        }
        if p.updates > job.steps {
            return Err(Error::Data(format!(
                "the checkpoint is after {} updates, more than the {} asked for: give --steps of at least {}",
                p.updates, job.steps, p.updates
            )));
        }
        Ok((p.update.clone(), p.updates + 1, p.held_out))
    }

    /// The same network reading one character at a time (T = 1): θ's layout does not depend
    /// on T, so a model trained on windows of T samples with the state carried step by step.
    pub fn one_step(net: &Recurrent) -> Result<Recurrent> {
        let stack = net.spec.net.as_ref().expect("a recurrent spec has a stack");
        let spec = spec(net.spec.outputs(), 1, stack.layers.clone())?;
        Recurrent::new(spec.with_weight_decay(net.spec.weight_decay)?)
    }

    /// Draws `length` characters from a character model, one at a time from its own output,
    /// the state carried from character to character (MATH.md, "Character-level language
    /// model"). It first reads `prime` (character ids) from a zero state; with an empty prime
    /// the first character is drawn uniformly from the vocabulary (and is the first of the
    /// `length`). The next character is drawn from the softmax output p with temperature τ:
    /// p_τ(c) ∝ p(c)^(1/τ) (τ → 0 tends to the most likely character, τ = 1 is the model's own
    /// distribution), by inverting its cumulative sum at a draw u from `uniform` (values in
    /// [0, 1): a seeded generator gives the same text for the same seed). Refused: τ not
    /// finite and > 0.
    pub fn sample<F: Real>(
        net: &Recurrent,
        theta: &[F],
        prime: &[u32],
        length: usize,
        temperature: f64,
        uniform: &mut dyn FnMut() -> f64,
    ) -> Result<Vec<u32>> {
        if !(temperature.is_finite() && temperature > 0.0) {
            return Err(Error::Data(format!("the temperature τ = {temperature} must be a finite number > 0")));
        }
        let net = one_step(net)?;
        let vocab = net.spec.outputs();
        let mut out = Vec::with_capacity(length);
        if length == 0 {
            return Ok(out);
        }
        let mut state = net.zero_state::<F>(1);
        let mut x = ndarray::Array2::<F>::zeros((1, vocab));
        let mut feed: Vec<u32> = prime.to_vec();
        if feed.is_empty() {
            let first = ((uniform() * vocab as f64) as usize).min(vocab - 1) as u32;
            out.push(first);
            feed.push(first);
        }
        let mut weights = vec![0.0f64; vocab];
        while out.len() < length {
            let mut p = None;
            for &c in &feed {
                x.fill(F::zero());
                x[[0, c as usize]] = F::of(1.0);
                let (output, carried) = net.predict(theta, x.view(), Some(&state))?;
                state = carried;
                p = Some(output);
            }
            let p = p.expect("at least one character is fed");
            // log p / τ, shifted by its largest value before exp so that nothing overflows.
            for (w, &v) in weights.iter_mut().zip(p.iter()) {
                *w = v.f64().max(0.0).ln() / temperature;
            }
            let top = weights.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if !top.is_finite() {
                return Err(Error::Data(
                    "the model's output is not a distribution (NaN or all zero): θ is damaged".into(),
                ));
            }
            weights.iter_mut().for_each(|w| *w = (*w - top).exp());
            let total: f64 = weights.iter().sum();
            let mut u = uniform() * total;
            let mut next = vocab - 1;
            for (c, &w) in weights.iter().enumerate() {
                if u < w {
                    next = c;
                    break;
                }
                u -= w;
            }
            out.push(next as u32);
            feed = vec![next as u32];
        }
        Ok(out)
    }
}
