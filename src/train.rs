//! A training run from start to finish: load the examples into a backend, hold some out for
//! validation, run an optimizer (resuming one from a checkpoint when asked), save a checkpoint
//! every N iterations and when interrupted, and write the run's folder: `model.safetensors`,
//! `metrics.json` (history, `final_cost`, timings), `loss.png` and, when the inputs are
//! pictures, `filters.png` (and `reconstructions.png` for an autoencoder). A held-out test
//! set adds `test_accuracy` (classifiers) or `r2` (regression: [`r2_score`]).
//!
//! It prints nothing: the caller watches through a progress callback.

use std::path::PathBuf;
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

/// Everything a run needs besides the data and the backend.
pub struct TrainJob {
    pub spec: NetSpec,
    pub method: Method,
    pub stop: Stop,
    /// Initial weights: drawn with `init` and `seed` unless `initial_theta` is given.
    pub init: Init,
    pub seed: u64,
    pub initial_theta: Option<Vec<f64>>,
    /// A checkpoint to continue: its θ and optimizer state replace the above.
    pub resume: Option<Checkpoint>,
    /// Fraction of the examples (after a seeded shuffle) held out for early stopping.
    pub validation_fraction: f64,
    /// Stop after this many validation checks without improvement (and restore the best θ).
    pub patience: Option<usize>,
    /// Save `model.safetensors` every this many iterations (epochs) as well as at the end.
    pub checkpoint_every: Option<usize>,
    pub out_dir: PathBuf,
    /// For metrics.json and the checkpoint: what the data was and how it was prepared.
    pub data_description: String,
    pub image_shape: Option<(usize, usize)>,
    pub preprocessing: serde_json::Value,
    /// Held-out test examples and what they should give: with labels, their accuracy goes
    /// into metrics.json as `test_accuracy`; with real-valued targets, R² as `r2`.
    pub test_set: Option<(Array2<f32>, TestTargets)>,
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
            data_description: String::new(),
            image_shape: None,
            preprocessing: serde_json::Value::Null,
            test_set: None,
        }
    }
}

/// What held-out test examples should give: class labels (a classifier) or real-valued
/// targets (m × outputs, a regression network).
#[derive(Clone, Debug)]
pub enum TestTargets {
    Labels(Vec<usize>),
    Values(Array2<f32>),
}

impl TestTargets {
    pub fn len(&self) -> usize {
        match self {
            TestTargets::Labels(l) => l.len(),
            TestTargets::Values(v) => v.nrows(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<usize>> for TestTargets {
    fn from(labels: Vec<usize>) -> TestTargets {
        TestTargets::Labels(labels)
    }
}

/// What a finished (or interrupted) run leaves behind.
pub struct TrainOutcome {
    pub theta: Vec<f64>,
    pub summary: Summary,
    /// J(θ) on all training examples at the end (for minibatch methods the history holds
    /// epoch means instead).
    pub final_cost: f64,
    pub validation: Option<f64>,
    pub test_accuracy: Option<f64>,
    /// R² of a regression network on the test set ([`r2_score`]).
    pub r2: Option<f64>,
    pub files: Vec<PathBuf>,
    pub interrupted: bool,
}

#[derive(Serialize)]
struct Metrics<'a> {
    wgnn_version: &'a str,
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
fn split(x: &Array2<f32>, fraction: f64, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    // Its own stream, so the split does not repeat the weights' or the minibatches' draws.
    crate::data::hold_out(x.nrows(), fraction, seed ^ VALIDATION_STREAM, "validation")
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

fn gather(x: &Array2<f32>, y: &Targets<'_>, rows: &[usize]) -> (Array2<f32>, RowTargets) {
    let y = match y {
        Targets::Inputs => RowTargets::Inputs,
        Targets::Labels(l) => RowTargets::Labels(rows.iter().map(|&i| l[i]).collect()),
        Targets::Values(Inputs::F32(v)) => RowTargets::Values(v.select(Axis(0), rows)),
        Targets::Values(Inputs::F64(v)) => RowTargets::Values(v.select(Axis(0), rows).mapv(|t| t as f32)),
    };
    (x.select(Axis(0), rows), y)
}

/// What the output is trained against: the labels for softmax; for a squared-error output the
/// real-valued targets when given, else the inputs (an autoencoder; labels are then unused).
fn targets<'a>(spec: &NetSpec, y: Targets<'a>) -> Result<Targets<'a>> {
    match (spec.output, y) {
        (Output::Softmax, Targets::Labels(l)) => Ok(Targets::Labels(l)),
        (Output::Softmax, _) => Err(Error::Data("a softmax network needs labelled data".into())),
        (Output::SquaredError(_), Targets::Values(v)) => Ok(Targets::Values(v)),
        (Output::SquaredError(_), _) => Ok(Targets::Inputs),
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

/// R² ([`r2_score`]) of the network at θ on inputs `x` with true values `y`.
pub fn r2_of(backend: &mut dyn Backend, theta: &[f64], x: &Array2<f32>, y: &Array2<f32>) -> Result<f64> {
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
    Ok(r2_score(y.mapv(f64::from).view(), predicted.view()))
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
    if y.len() != x.nrows() {
        return Err(Error::Shape(format!(
            "the test set has {} examples but {} rows of labels or targets: give one per example",
            x.nrows(),
            y.len()
        )));
    }
    match (spec.output, y) {
        // A test label the network has no class for simply counts as a wrong answer.
        (Output::Softmax, TestTargets::Labels(_)) => Ok(()),
        (Output::SquaredError(_), TestTargets::Values(v)) if v.ncols() != spec.outputs() => Err(Error::Shape(format!(
            "the test targets have {} values per example but the training targets {}: give test targets of the same width",
            v.ncols(),
            spec.outputs()
        ))),
        (Output::SquaredError(_), TestTargets::Values(_)) => Ok(()),
        _ => Err(Error::Data(format!(
            "the test set's targets do not suit {}: labels go with a softmax output, real values with a squared-error one",
            spec.describe()
        ))),
    }
}

/// Trains `job.spec` on (x, y) with `backend`, calling `progress` after every step. `y` is
/// what the output learns: class labels (softmax), real-valued targets (regression) or the
/// inputs themselves (an autoencoder; labels given to a squared-error network are unused).
/// Sets `interrupt` (e.g. from Ctrl-C) to stop after the current step: the run is then saved
/// and can be resumed.
pub fn train(
    job: TrainJob,
    backend: &mut dyn Backend,
    x: &Array2<f32>,
    y: Targets<'_>,
    progress: &mut dyn FnMut(&Progress<'_>),
    interrupt: &AtomicBool,
) -> Result<TrainOutcome> {
    let spec = job.spec.clone();
    let layout = ThetaLayout::new(&spec);
    if let Some((x_test, y_test)) = &job.test_set {
        check_test_set(&spec, x_test, y_test)?;
    }
    std::fs::create_dir_all(&job.out_dir)
        .map_err(|e| Error::file(&job.out_dir, format!("cannot create the run folder: {e}")))?;

    let y = targets(&spec, y)?;
    let (train_rows, val_rows) = split(x, job.validation_fraction, job.seed)?;
    // The backend's own checks, on all the data before the split indexes into it.
    crate::cpu::validate_data(&spec, &x.into(), &y)?;
    let (x_train, y_train) = gather(x, &y, &train_rows);
    let (x_val, y_val) = gather(x, &y, &val_rows);
    backend.set_data((&x_train).into(), y_train.view())?;

    let (mut theta, mut optimizer) = match &job.resume {
        Some(ck) => {
            if ck.spec != spec {
                return Err(Error::Data(format!(
                    "the checkpoint holds {} but this run asks for {}: resume with the same network",
                    ck.spec.describe(),
                    spec.describe()
                )));
            }
            let opt: Optimizer = serde_json::from_value(ck.metadata.optimizer.clone()).map_err(|e| {
                Error::Data(format!("the checkpoint's optimizer state is unreadable ({e}): it cannot be resumed"))
            })?;
            (ck.theta.clone(), opt)
        }
        None => {
            let theta = job.initial_theta.clone().unwrap_or_else(|| job.init.theta(&spec, job.seed));
            if theta.len() != layout.len() {
                return Err(Error::Shape(format!(
                    "initial θ has {} values, the network needs {}",
                    theta.len(),
                    layout.len()
                )));
            }
            (theta, Optimizer::new(job.method.clone())?)
        }
    };

    // Validation runs on its own CPU backend so that it never competes with the training
    // backend for the data it holds.
    let mut validator = if val_rows.is_empty() {
        None
    } else {
        let mut v = CpuBackend::<f32>::new(spec.clone())?;
        v.set_data((&x_val).into(), y_val.view())?;
        Some(v)
    };

    let save =
        |theta: &[f64], optimizer: &Optimizer, extra: serde_json::Map<String, serde_json::Value>| -> Result<PathBuf> {
            let metadata = Metadata {
                seed: Some(job.seed),
                history: serde_json::to_value(optimizer.history()).unwrap_or_default(),
                optimizer: serde_json::to_value(optimizer).map_err(|e| Error::Data(format!("optimizer state: {e}")))?,
                preprocessing: job.preprocessing.clone(),
                extra,
                ..Default::default()
            };
            let path = job.out_dir.join("model.safetensors");
            Checkpoint::new(spec.clone(), theta.to_vec(), metadata)?.save(&path)?;
            Ok(path)
        };

    let interrupted;
    let summary = loop {
        let next_save = job.checkpoint_every.map(|n| (optimizer.iterations() / n + 1) * n);
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
            let (x_val, y_val, spec) = (&x_val, &y_val, &spec);
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
        let result = optimizer.run(&mut objective, &mut theta, &job.stop, &mut hooks);
        drop(hooks);
        let summary = match result {
            Ok(s) => s,
            Err(e) => {
                // Keep what was learned: θ holds the last finite point.
                let _ = save(&theta, &optimizer, Default::default());
                return Err(e);
            }
        };
        if summary.reason == StopReason::Interrupted && stop_for_save && !interrupt.load(Ordering::SeqCst) {
            save(&theta, &optimizer, Default::default())?;
            continue;
        }
        interrupted = summary.reason == StopReason::Interrupted;
        break summary;
    };

    let final_cost = backend.cost(&theta, Batch::All)?.total();
    let train_accuracy = match (&y_train, spec.output) {
        (RowTargets::Labels(l), Output::Softmax) => Some(accuracy(&backend.classify(&theta, (&x_train).into())?, l)),
        _ => None,
    };
    let train_r2 = match &y_train {
        RowTargets::Values(v) => Some(r2_of(backend, &theta, &x_train, v)?),
        _ => None,
    };
    let (test_accuracy, r2) = match &job.test_set {
        Some((x_test, TestTargets::Labels(l))) if spec.output == Output::Softmax => {
            (Some(accuracy(&backend.classify(&theta, x_test.into())?, l)), None)
        }
        Some((x_test, TestTargets::Values(v))) if spec.output != Output::Softmax => {
            (None, Some(r2_of(backend, &theta, x_test, v)?))
        }
        Some(_) => unreachable!("check_test_set refused it before training"),
        None => (None, None),
    };
    let mut extra = serde_json::Map::new();
    extra.insert("final_cost".into(), final_cost.into());
    if let Some(a) = test_accuracy {
        extra.insert("test_accuracy".into(), a.into());
    }
    if let Some(r) = r2 {
        extra.insert("r2".into(), r.into());
    }
    let model = save(&theta, &optimizer, extra)?;
    let mut files = vec![model];

    let history = optimizer.history();
    let metrics = Metrics {
        wgnn_version: env!("CARGO_PKG_VERSION"),
        spec: &spec,
        method: optimizer.method(),
        backend: backend.name(),
        data: &job.data_description,
        train_examples: train_rows.len(),
        validation_examples: val_rows.len(),
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
    let metrics_path = job.out_dir.join("metrics.json");
    crate::atomic::write_bytes(&metrics_path, json.as_bytes())?;
    files.push(metrics_path);

    let loss_path = job.out_dir.join("loss.png");
    viz::save_png(&viz::loss_curve(&history.costs()), &loss_path)?;
    files.push(loss_path);
    let autoencoder = matches!(y_train, RowTargets::Inputs);
    files.extend(draw_pictures(&spec, &theta, backend, &x_train, autoencoder, &job)?);

    Ok(TrainOutcome {
        theta,
        summary,
        final_cost,
        validation: metrics.validation_metric,
        test_accuracy,
        r2,
        files,
        interrupted,
    })
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
    let square = image_shape.is_some_and(|(h, w)| h == w) || viz::square_side(spec.inputs()).is_ok();
    if !square || spec.layers.len() < 3 {
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
