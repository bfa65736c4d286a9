//! The UFLDL stacked autoencoder: sparse autoencoders trained greedily, each on the previous
//! one's hidden activations; a softmax layer trained on the last features; then the whole
//! network (sigmoid hidden layers, softmax output) fine-tuned by backpropagation from those
//! weights. Every stage is an ordinary [`train`] run with L-BFGS and writes its own run folder
//! under the output folder (`layer1/`, …, `softmax/`, `finetune/`); `metrics.json` there
//! compares test accuracy before and after fine-tuning and adds up the stages' seconds.
//!
//! It prints nothing; the caller chooses the backend of each stage and hears of each stage
//! through a callback. The output folder is locked ([`RunFolder`]) for the whole pipeline; a
//! stage that does not finish (interrupted, diverged) ends the pipeline there, and its
//! status is the pipeline's ([`StackedOutcome::status`]): no summary `metrics.json` is
//! written then.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use ndarray::Array2;
use serde_json::json;

use crate::checkpoint::Checkpoint;
use crate::model::{Activation, NetSpec, Output, Sparsity, ThetaLayout};
use crate::optim::{Lbfgs, Method, StopReason, Summary};
use crate::train::{RunFolder, RunStatus, TrainJob, TrainOutcome, accuracy, hidden_features, train};
use crate::{Backend, CpuBackend, Error, Result, Targets};

/// The settings of the whole pipeline (UFLDL's exercise: 200, 200; ρ = 0.1, β = 3, λ = 3e-3;
/// 400 iterations per autoencoder and for fine-tuning; softmax λ = 1e-4, 100 iterations).
/// Its `Default` is the table of per-kind defaults' rows for stacked and softmax
/// ([`crate::estimator::Kind::defaults`], where that impl lives, so that this module does not
/// depend on the estimators that build on it).
#[derive(Clone, Debug)]
pub struct StackedConfig {
    /// Hidden layer sizes, one autoencoder each (UFLDL: 200, 200).
    pub hidden: Vec<usize>,
    /// KL sparsity of each autoencoder (`None`: plain autoencoders).
    pub sparsity: Option<Sparsity>,
    /// λ of the autoencoders.
    pub weight_decay: f64,
    /// L-BFGS iterations of each autoencoder and of fine-tuning.
    pub iterations: usize,
    /// λ and iterations of the softmax stage, λ of fine-tuning.
    pub softmax_weight_decay: f64,
    /// L-BFGS iterations of the softmax stage.
    pub softmax_iterations: usize,
    /// Seed of every stage's initial weights.
    pub seed: u64,
    /// Save each stage's `checkpoint.safetensors` every this many iterations (`None`: at the end only).
    pub checkpoint_every: Option<usize>,
    /// What the data was, for `metrics.json`.
    pub data_description: String,
    /// What the raw examples went through before `x` (whitening, an encoder: see
    /// [`crate::predict`]), stored with the first autoencoder and the fine-tuned stack — the
    /// stages that take `x` itself — so they predict from raw examples.
    pub preprocessing: serde_json::Value,
    /// Continue the pipeline already in the output folder: a stage whose folder holds a
    /// finished model (of the same network) is kept, not trained again; a stage whose folder
    /// holds a checkpoint continues from it (θ and optimizer state: the same bits as an
    /// uninterrupted run); the rest train as usual.
    pub resume: bool,
    /// The command that started the pipeline, stored in every stage's checkpoint and model
    /// ([`crate::checkpoint::Metadata::command`]).
    pub command: serde_json::Value,
}

/// What the pipeline leaves besides its folders.
pub struct StackedOutcome {
    /// [`RunStatus::Finished`] when every stage finished; else the status of the stage that
    /// did not, which `stage` names, and the fields below are that stage's.
    pub status: RunStatus,
    /// The folder of the last stage that ran.
    pub stage: PathBuf,
    /// The fine-tuned network and its θ.
    pub spec: NetSpec,
    /// θ of the fine-tuned network, in its layout.
    pub theta: Vec<f64>,
    /// Test accuracy of the stack before fine-tuning (autoencoders + softmax), in [0, 1], when a test set was given.
    pub test_accuracy_before_finetuning: Option<f64>,
    /// Test accuracy after fine-tuning, in [0, 1], when a test set was given.
    pub test_accuracy: Option<f64>,
    /// J(θ) of the fine-tuned network over the training examples.
    pub final_cost: f64,
    /// The summary `metrics.json` in the output folder (a stage's, when one did not finish).
    pub metrics: PathBuf,
}

/// One stage as the caller hears of it: its network and folder before, its outcome after.
pub enum StageEvent<'a> {
    /// A stage is about to train.
    Start {
        /// Its network.
        spec: &'a NetSpec,
        /// Its run folder.
        dir: &'a Path,
    },
    /// A stage finished (or stopped: see its status).
    Done {
        /// What it left.
        outcome: &'a TrainOutcome,
    },
}

/// Runs the pipeline on (x, labels), with test accuracy on `test` when given. `backend`
/// builds the backend for each stage's network.
pub fn train_stacked(
    config: &StackedConfig,
    backend: &mut dyn FnMut(&NetSpec) -> Result<Box<dyn Backend>>,
    x: &Array2<f32>,
    labels: &[usize],
    test: Option<(&Array2<f32>, &[usize])>,
    out: &Path,
    on_stage: &mut dyn FnMut(StageEvent<'_>),
) -> Result<StackedOutcome> {
    let folder = RunFolder::open(out)?;
    train_stacked_until(config, backend, x, labels, test, folder, on_stage, &AtomicBool::new(false))
}

/// As [`train_stacked`], into a run folder the caller has opened and locked, stopping the
/// running stage (saved, resumable) when `interrupt` is set.
#[allow(clippy::too_many_arguments)]
pub fn train_stacked_until(
    config: &StackedConfig,
    backend: &mut dyn FnMut(&NetSpec) -> Result<Box<dyn Backend>>,
    x: &Array2<f32>,
    labels: &[usize],
    test: Option<(&Array2<f32>, &[usize])>,
    folder: RunFolder,
    on_stage: &mut dyn FnMut(StageEvent<'_>),
    interrupt: &AtomicBool,
) -> Result<StackedOutcome> {
    pipeline(config, backend, x, labels, test, Some(folder), on_stage, interrupt)
}

/// As [`train_stacked`], in memory: the same stages, each through
/// [`crate::train::train_in_memory`] instead of [`train`] (the same θ bit for bit), and no
/// file written or read — a [`crate::estimator::StackedAutoencoder`]'s `fit`. The stage
/// folders [`StageEvent::Start`] names (`layer1`, …) are names only, and
/// [`StackedOutcome::metrics`] is empty.
///
/// Errors: as [`train_stacked`]'s before training; a config that asks for files
/// (`checkpoint_every`, `resume`) ([`Error::Data`]).
pub fn train_stacked_in_memory(
    config: &StackedConfig,
    backend: &mut dyn FnMut(&NetSpec) -> Result<Box<dyn Backend>>,
    x: &Array2<f32>,
    labels: &[usize],
    test: Option<(&Array2<f32>, &[usize])>,
    on_stage: &mut dyn FnMut(StageEvent<'_>),
    interrupt: &AtomicBool,
) -> Result<StackedOutcome> {
    if config.resume || config.checkpoint_every.is_some() {
        return Err(Error::Data(
            "a stacked autoencoder trained in memory neither resumes nor checkpoints: leave resume and checkpoint_every unset".into(),
        ));
    }
    let mut outcome = pipeline(config, backend, x, labels, test, None, on_stage, interrupt)?;
    outcome.metrics = PathBuf::new();
    Ok(outcome)
}

/// The pipeline into `folder`, or in memory when `None` (nothing written or read).
#[allow(clippy::too_many_arguments)]
fn pipeline(
    config: &StackedConfig,
    backend: &mut dyn FnMut(&NetSpec) -> Result<Box<dyn Backend>>,
    x: &Array2<f32>,
    labels: &[usize],
    test: Option<(&Array2<f32>, &[usize])>,
    folder: Option<RunFolder>,
    on_stage: &mut dyn FnMut(StageEvent<'_>),
    interrupt: &AtomicBool,
) -> Result<StackedOutcome> {
    let in_memory = folder.is_none();
    let out = folder.as_ref().map_or(Path::new(""), RunFolder::path);
    let classes = labels.iter().max().map_or(0, |&m| m + 1);
    if config.iterations == 0 || config.softmax_iterations == 0 {
        return Err(Error::Data("0 iterations would train nothing: give at least 1".into()));
    }
    // Training seconds of each stage, by folder name, for metrics.json.
    let mut seconds = serde_json::Map::new();
    let mut stage = |spec: NetSpec,
                     iterations: usize,
                     x: &Array2<f32>,
                     y: Targets<'_>,
                     test: Option<(&Array2<f32>, &[usize])>,
                     initial_theta: Option<Vec<f64>>,
                     preprocessing: &serde_json::Value,
                     dir: &Path|
     -> Result<(TrainOutcome, Box<dyn Backend>)> {
        let memory = Lbfgs::memory_for(ThetaLayout::new(&spec).len());
        let method = Method::Lbfgs(Lbfgs::default().with_memory(memory));
        on_stage(StageEvent::Start { spec: &spec, dir });
        let mut b = backend(&spec)?;
        let stage_name = dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        if config.resume
            && !in_memory
            && let Some(kept) = finished_stage(&spec, dir)?
        {
            on_stage(StageEvent::Done { outcome: &kept });
            seconds.insert(stage_name, kept.summary.seconds.into());
            return Ok((kept, b));
        }
        let checkpoint = dir.join(crate::train::CHECKPOINT_FILE);
        let resume = if config.resume && !in_memory && checkpoint.is_file() {
            Some(Checkpoint::load(&checkpoint)?)
        } else {
            None
        };
        let job = TrainJob {
            resume,
            command: config.command.clone(),
            seed: config.seed,
            initial_theta,
            checkpoint_every: config.checkpoint_every,
            data_description: "stacked autoencoder stage".into(),
            test_set: test.map(|(x, l)| (x.clone(), l.to_vec().into())),
            preprocessing: preprocessing.clone(),
            ..TrainJob::new(spec, method, iterations, dir)
        };
        let outcome = if in_memory {
            crate::train::train_in_memory(job, b.as_mut(), x, y, &mut |_| {}, interrupt)?
        } else {
            train(job, b.as_mut(), x, y, &mut |_| {}, interrupt)?
        };
        on_stage(StageEvent::Done { outcome: &outcome });
        seconds.insert(stage_name, outcome.summary.seconds.into());
        Ok((outcome, b))
    };

    // Greedy layer-wise pretraining.
    let mut features = x.clone();
    let mut test_features = test.map(|(t, _)| t.clone());
    let mut layers_theta = Vec::new();
    for (i, &h) in config.hidden.iter().enumerate() {
        let n = features.ncols();
        let spec = NetSpec::new(&[n, h, n], Activation::Sigmoid, Output::SquaredError(Activation::Sigmoid))?
            .with_weight_decay(config.weight_decay)?
            .with_sparsity(config.sparsity)?;
        let dir = out.join(format!("layer{}", i + 1));
        // Only the first autoencoder takes the examples as they came.
        let null = serde_json::Value::Null;
        let pre = if i == 0 { &config.preprocessing } else { &null };
        let (outcome, mut b) =
            stage(spec.clone(), config.iterations, &features, Targets::Inputs, None, None, pre, &dir)?;
        if !outcome.status.is_finished() {
            return Ok(stopped(spec, outcome, &dir));
        }
        features = hidden_features(b.as_mut(), &outcome.theta, &features)?;
        if let Some(t) = test_features.as_mut() {
            *t = hidden_features(b.as_mut(), &outcome.theta, t)?;
        }
        layers_theta.push((spec, outcome.theta));
    }

    // Softmax on the last features.
    let softmax_spec = NetSpec::softmax_regression(features.ncols(), classes, config.softmax_weight_decay)?;
    let test_on_features = test.zip(test_features.as_ref()).map(|((_, l), f)| (f, l));
    let (softmax, _) = stage(
        softmax_spec.clone(),
        config.softmax_iterations,
        &features,
        Targets::Labels(labels),
        test_on_features,
        None,
        &serde_json::Value::Null,
        &out.join("softmax"),
    )?;
    if !softmax.status.is_finished() {
        return Ok(stopped(softmax_spec, softmax, &out.join("softmax")));
    }

    // The whole stack as one network, its θ assembled from the stages.
    let mut sizes = vec![x.ncols()];
    sizes.extend(&config.hidden);
    sizes.push(classes);
    let stack =
        NetSpec::new(&sizes, Activation::Sigmoid, Output::Softmax)?.with_weight_decay(config.softmax_weight_decay)?;
    let layout = ThetaLayout::new(&stack);
    let mut theta = vec![0.0; layout.len()];
    let parts = layers_theta
        .iter()
        .map(|(s, t)| (ThetaLayout::new(s), t))
        .chain([(ThetaLayout::new(&softmax_spec), &softmax.theta)]);
    for (l, (part, t)) in parts.enumerate() {
        theta[layout.weight_range(l)].copy_from_slice(&t[part.weight_range(0)]);
        theta[layout.bias_range(l)].copy_from_slice(&t[part.bias_range(0)]);
    }
    let before = match test {
        Some((x_test, y_test)) => {
            let mut cpu = CpuBackend::<f32>::new(stack.clone())?;
            Some(accuracy(&cpu.classify(&theta, x_test.into())?, y_test))
        }
        None => None,
    };
    let (finetuned, _) = stage(
        stack.clone(),
        config.iterations,
        x,
        Targets::Labels(labels),
        test,
        Some(theta),
        &config.preprocessing,
        &out.join("finetune"),
    )?;
    if !finetuned.status.is_finished() {
        return Ok(stopped(stack, finetuned, &out.join("finetune")));
    }

    let summary = json!({
        "status": RunStatus::Finished.name(),
        "network": stack.describe(),
        "data": config.data_description,
        "train_examples": x.nrows(),
        "test_examples": test.map(|t| t.1.len()),
        "hidden": config.hidden,
        "sparsity": config.sparsity.map(|s| s.target),
        "weight_decay_pretraining": config.weight_decay,
        "weight_decay_finetuning": config.softmax_weight_decay,
        "iterations": config.iterations,
        "test_accuracy_before_finetuning": before,
        "test_accuracy": finetuned.test_accuracy,
        "final_cost": finetuned.final_cost,
        "seconds": seconds.values().filter_map(serde_json::Value::as_f64).sum::<f64>(),
        "stage_seconds": seconds,
    });
    let path = if in_memory { PathBuf::new() } else { out.join("metrics.json") };
    if !in_memory {
        let text = serde_json::to_string_pretty(&summary).map_err(|e| Error::Data(format!("metrics: {e}")))?;
        crate::atomic::write_bytes(&path, text.as_bytes())?;
    }
    Ok(StackedOutcome {
        status: RunStatus::Finished,
        stage: out.join("finetune"),
        spec: stack,
        theta: finetuned.theta,
        test_accuracy_before_finetuning: before,
        test_accuracy: finetuned.test_accuracy,
        final_cost: finetuned.final_cost,
        metrics: path,
    })
}

/// The stage already finished in `dir` (its `model.safetensors`, of network `spec`), as the
/// outcome its run had (counts, seconds, final cost and test accuracy from its
/// `metrics.json`); `None` when there is no finished model there.
///
/// Errors: the model holds another network than `spec` (the pipeline's settings changed).
fn finished_stage(spec: &NetSpec, dir: &Path) -> Result<Option<TrainOutcome>> {
    let model = dir.join(crate::train::MODEL_FILE);
    if !model.is_file() {
        return Ok(None);
    }
    let ck = Checkpoint::load(&model)?;
    if ck.spec != *spec {
        return Err(Error::Data(format!(
            "the finished stage in {} holds {} but the pipeline asks for {}: resume with the same settings",
            dir.display(),
            ck.spec.describe(),
            spec.describe()
        )));
    }
    let metrics: serde_json::Value = std::fs::read(dir.join(crate::train::METRICS_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let number = |key: &str| metrics[key].as_f64();
    let count = |key: &str| metrics[key].as_u64().unwrap_or(0) as usize;
    Ok(Some(TrainOutcome {
        status: RunStatus::Finished,
        theta: ck.theta,
        summary: Summary {
            reason: StopReason::MaxIterations,
            iterations: count("iterations"),
            evaluations: count("evaluations"),
            cost: number("final_cost"),
            grad_norm: None,
            best_validation: None,
            seconds: number("seconds").unwrap_or(0.0),
        },
        final_cost: number("final_cost").unwrap_or(f64::NAN),
        validation: None,
        test_accuracy: number("test_accuracy"),
        r2: None,
        files: Vec::new(),
    }))
}

/// The pipeline's outcome when the stage in `dir` did not finish.
fn stopped(spec: NetSpec, outcome: TrainOutcome, dir: &Path) -> StackedOutcome {
    StackedOutcome {
        status: outcome.status,
        stage: dir.to_path_buf(),
        spec,
        theta: outcome.theta,
        test_accuracy_before_finetuning: None,
        test_accuracy: outcome.test_accuracy,
        final_cost: outcome.final_cost,
        metrics: dir.join(crate::train::METRICS_FILE),
    }
}
