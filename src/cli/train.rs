//! `wgnn train`: the main job. With no arguments it trains the UFLDL sparse autoencoder
//! (64-25-64, ρ = 0.01, λ = 1e-4, β = 3, L-BFGS, 400 iterations) on 10,000 8×8 patches of
//! built-in synthetic images and writes `runs/autoencoder-N/` with the model, metrics, loss
//! curve and the learned filters.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use wgnn::Targets;
use wgnn::checkpoint::Checkpoint;
use wgnn::data::Dataset;
use wgnn::estimator::{OptimizerSettings, Solver};
use wgnn::model::{Activation, Init, NetSpec, Output, Sparsity};
use wgnn::optim::{Method, Plateau, Progress, Schedule};
use wgnn::train::{CHECKPOINT_FILE, MODEL_FILE, RunFolder, RunStatus, TestTargets, TrainJob, check_settings, train};

use super::ranks::Ranks;
use super::{BackendArgs, DataArgs, Exit};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A sparse autoencoder n-h-n (sigmoid, KL sparsity): learns features without labels.
    Autoencoder,
    /// Softmax regression: one softmax layer on the raw inputs (needs labels).
    Softmax,
    /// A multilayer perceptron: hidden layers and a softmax output (needs labels); with
    /// --targets, a regressor instead: an identity output (--output) and the squared error.
    Mlp,
    /// A stacked autoencoder (needs labels): sparse autoencoders trained greedily layer by
    /// layer (--hidden 200,200, ρ = 0.1, λ = 3e-3), a softmax on the last features, then the
    /// whole stack fine-tuned by backpropagation. Writes one folder per stage.
    Stacked,
    /// A convolutional (or maxout) network (needs labels), on either backend: --net (default
    /// LeNet-like: conv 20x5x5 relu, maxpool 2, conv 50x5x5 relu, maxpool 2, dense 500 relu,
    /// softmax) on --input-shape (default from the data: MNIST is 1x28x28); Adam, η = 1e-3,
    /// batch 64, 10 epochs.
    Cnn,
    /// An LSTM (PyTorch's gates i, f, g, o): on --data text:FILE a character-level language
    /// model (--hidden 256, --bptt 64, batch 32, Adam η = 2e-3, --clip-norm 5, 2000 --steps,
    /// the last 10% held out: bits per character); on mnist:DIR --sequence rows or npy:FILE
    /// (m × T × n, --labels) a sequence classifier (--hidden 128, softmax at the last step,
    /// Adam, batch 128, 10 epochs). Several --hidden sizes (or --net "lstm 128, lstm 128")
    /// stack layers.
    Lstm,
    /// An Elman RNN (--activation tanh or relu), as lstm otherwise.
    Rnn,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerChoice {
    /// L-BFGS with a strong-Wolfe line search (full batch).
    Lbfgs,
    /// Nonlinear conjugate gradient, Polak–Ribière+ (full batch).
    Cg,
    /// Gradient descent with a fixed learning rate (full batch).
    Gd,
    /// Minibatch SGD with Nesterov momentum 0.9 (--momentum, --nesterov).
    Sgd,
    /// Minibatch Adam (β₁ 0.9, β₂ 0.999, ε 1e-8: --beta1, --beta2, --adam-epsilon).
    Adam,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhitenChoice {
    /// ZCA: decorrelated, unit variance, as close to the original pixels as possible.
    Zca,
    /// PCA: coordinates on the principal components, unit variance.
    Pca,
}

/// The flags of `wgnn train`. Serde: a run stores them (paths made absolute) in its checkpoint
/// and model (`Metadata::command`), so `--resume DIR` alone restores the whole job.
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainArgs {
    /// What to train.
    #[arg(value_enum, default_value_t = Kind::Autoencoder)]
    pub kind: Kind,
    #[command(flatten)]
    #[serde(flatten)]
    pub data: DataArgs,
    /// Test examples to report `test_accuracy` (classifiers) or `r2` (regression) on: a data
    /// source as for --data; for mnist: the test split is used. Same --digits, --limit and
    /// --label-column as --data, and the same --targets when they are columns:.
    #[arg(long, conflicts_with = "test_fraction")]
    pub test_data: Option<String>,
    /// The test examples' targets when --targets names a file: npy:FILE or csv:FILE.
    #[arg(long, requires = "test_data")]
    pub test_targets: Option<String>,
    /// The test examples' class labels when --test-data is npy:FILE (as --labels for --data):
    /// npy:FILE, csv:FILE, or a bare .npy or .csv file.
    #[arg(long, requires = "test_data")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_labels: Option<String>,
    /// Hold out this fraction of the --data examples, drawn by --seed, as the test set (before
    /// any --validation split, whitening or --features-from, which see the rest only).
    #[arg(long)]
    pub test_fraction: Option<f64>,
    /// Train on the features a trained autoencoder extracts (its first hidden layer's
    /// activations) instead of the raw inputs: self-taught learning. A model.safetensors or its
    /// run folder.
    #[arg(long)]
    pub features_from: Option<PathBuf>,
    /// Whiten the inputs before training: zca or pca (all components). The whitening is
    /// fitted on the training examples, stored with the model (preprocessing.whitening) and
    /// applied the same way by eval, reconstruct and convolve. Use with --output identity (a
    /// linear decoder): whitened values leave the sigmoid's range.
    #[arg(long, value_enum)]
    pub whiten: Option<WhitenChoice>,
    /// The whitening's regulariser ε, added to each eigenvalue.
    #[arg(long, default_value_t = 0.1)]
    pub whiten_epsilon: f64,
    /// Hidden layer sizes, e.g. 25 or 256,128. Default: 25 (autoencoder), 256,128 (mlp);
    /// softmax has none.
    #[arg(long, value_delimiter = ',', value_parser = super::layer_size)]
    pub hidden: Option<Vec<usize>>,
    /// Hidden activation (sigmoid, tanh, relu, leaky-relu[:α], identity). Default: sigmoid
    /// (autoencoder), relu (mlp).
    #[arg(long)]
    pub activation: Option<String>,
    /// Output activation, with the squared-error loss: for an autoencoder (default sigmoid)
    /// and an mlp regressor, i.e. with --targets (default identity; sigmoid, tanh, relu, …).
    /// Classifiers end in softmax. `sigmoid-bce` (mlp): k sigmoid outputs with the binary
    /// cross-entropy (PyTorch's BCEWithLogitsLoss; scikit-learn's MLPClassifier on multi-label
    /// targets): --targets gives the 0/1 matrix, one column per label (multi-label), or
    /// --label-column/--labels 0/1 labels (binary); predict writes each label's probability and
    /// its 0/1 decision at 0.5, eval the exact-match accuracy and Hamming loss.
    #[arg(long)]
    pub output: Option<String>,
    /// L2 weight decay λ: the cost J gets + (λ/2)·‖W‖² (weights only, not biases) beside the
    /// mean loss over the examples. Default: 1e-4 (autoencoder, softmax), 1e-5 (mlp). See
    /// --alpha for scikit-learn's α.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// scikit-learn's L2 penalty α instead of --weight-decay: its loss adds α/(2 n)·‖W‖²
    /// with n the examples of each gradient, so λ = α/n: n is the batch size (at most the
    /// training examples) for sgd and adam, and the training examples (after the validation
    /// split) for lbfgs, cg and gd. scikit-learn's default is 1e-4. Not with the weight-decay
    /// flag, nor with stacked.
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Autoencoder sparsity target ρ (0 turns the penalty off). Default: 0.01 (autoencoder),
    /// 0.1 (stacked).
    #[arg(long)]
    pub sparsity: Option<f64>,
    /// Weight β of the sparsity penalty.
    #[arg(long, default_value_t = 3.0)]
    pub sparsity_weight: f64,
    /// Optimizer. Default: lbfgs (autoencoder, softmax), adam (mlp).
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerChoice>,
    /// Iterations (epochs for sgd and adam). Default: 400 (autoencoder), 100 (softmax), 30 (mlp).
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Learning rate for gd, sgd and adam. Default: 0.1 (gd), 0.01 (sgd), 0.001 (adam).
    #[arg(long)]
    pub learning_rate: Option<f64>,
    /// Learning-rate schedule for sgd and adam, applied after each epoch: constant,
    /// invscaling[:POWER] (η₀/(t+1)^POWER, t examples seen; scikit-learn's, POWER 0.5),
    /// adaptive (scikit-learn's: η ÷ 5 each time two epochs in a row fail to improve the
    /// best validation metric — or epoch cost without --validation — by more than --tol) or
    /// plateau[:FACTOR[:PATIENCE]] (η × FACTOR after more than PATIENCE epochs without a
    /// better validation metric — or epoch cost without --validation; default 0.1:10, PyTorch's).
    #[arg(long, default_value = "constant")]
    pub schedule: String,
    /// Minibatch size for sgd and adam: a number, or auto (scikit-learn's: min(200, n)); a
    /// batch never holds more than the n training examples. Default: auto (64 for cnn).
    #[arg(long, value_parser = batch_size)]
    pub batch_size: Option<usize>,
    /// Momentum μ of sgd, in [0, 1) (scikit-learn's `momentum`). Default 0.9; 0 is plain SGD.
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Nesterov's momentum for sgd: true or false (scikit-learn's `nesterovs_momentum`).
    /// Default true.
    #[arg(long)]
    pub nesterov: Option<bool>,
    /// Adam's β₁, in [0, 1) (scikit-learn's `beta_1`). Default 0.9.
    #[arg(long)]
    pub beta1: Option<f64>,
    /// Adam's β₂, in [0, 1) (scikit-learn's `beta_2`). Default 0.999.
    #[arg(long)]
    pub beta2: Option<f64>,
    /// Adam's ε, > 0 (scikit-learn's `epsilon`; not --whiten-epsilon). Default 1e-8.
    #[arg(long, visible_alias = "epsilon")]
    pub adam_epsilon: Option<f64>,
    /// Cost tolerance (scikit-learn's `tol`): converged once the best cost has fallen by no
    /// more than tol·max(|J*|, |J|, 1) for --n-iter-no-change iterations (epochs) in a row;
    /// 0 turns it off. Also the tolerance of --schedule adaptive. Default: 1e-4 (sgd, adam),
    /// 1e-9 (lbfgs, cg, gd).
    #[arg(long)]
    pub tol: Option<f64>,
    /// Iterations (epochs) in a row without a decrease by --tol before the run counts as
    /// converged (scikit-learn's `n_iter_no_change`). Default: 10 (sgd, adam), 1 (lbfgs, cg,
    /// gd). Early stopping on the validation metric has its own --patience.
    #[arg(long)]
    pub n_iter_no_change: Option<usize>,
    /// Stop after this many cost-and-gradient evaluations (line-search trials and minibatches
    /// count; checked between iterations), like scikit-learn's `max_fun` (15000 for lbfgs).
    /// Default: no limit.
    #[arg(long)]
    pub max_fun: Option<usize>,
    /// L-BFGS history size. Default: 100 (minFunc's) up to 50,000 parameters, 10 above.
    #[arg(long)]
    pub lbfgs_memory: Option<usize>,
    /// Initial weights: uniform (±√(6/(n_in+n_out+1))), normal (N(0, 0.01²)), or a .npy
    /// vector of parameters θ in wgnn's layout to start from. Biases start at 0.
    #[arg(long, default_value = "uniform", conflicts_with = "resume")]
    pub init: String,
    /// Seed for the data (patches, synthetic images, validation split), the weights and the
    /// minibatch order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fraction of the examples held out to watch for overfitting (early stopping).
    #[arg(long, default_value_t = 0.0)]
    pub validation: f64,
    /// Stop after this many checks without a better validation metric, keeping the best θ.
    #[arg(long, requires = "validation")]
    pub patience: Option<usize>,
    /// Save checkpoint.safetensors (θ and the optimizer state, for --resume) every N iterations
    /// while training; Ctrl-C saves it too. model.safetensors is written only at the end.
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Continue the run saved in this folder as it was started — kind, network, data and its
    /// options, optimizer, seed all come from its checkpoint.safetensors (interrupted) or
    /// model.safetensors (finished: give a larger --iterations). Beside it only --iterations,
    /// --checkpoint-every, --quiet, --out, --backend, --gpu-api and --adapter may take other
    /// values.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Where to write the run. Default: runs/<kind>-N (the first N with no folder yet; folders
    /// of failed or interrupted runs keep their number). A folder holding a run (finished or
    /// not) is refused unless --force or --resume names it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace the run already in --out: its model and checkpoint are removed once every
    /// check has passed, just before training.
    #[arg(long)]
    pub force: bool,
    /// Print nothing but errors.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    #[serde(flatten)]
    pub backend: BackendArgs,
    // ---- layer stacks (`train cnn`) ----
    /// The network of `train cnn`, layers separated by commas: conv FxKxK ACT [stride S]
    /// [pad P], maxpool K [stride S], meanpool K [stride S], dense N ACT, maxout UNITSxPIECES,
    /// then softmax (the classes come from the data), e.g. "conv 20x5x5 relu, maxpool 2,
    /// conv 50x5x5 relu, maxpool 2, dense 500 relu, softmax" or "maxout 240x5, maxout 240x5,
    /// softmax".
    #[arg(long)]
    pub net: Option<String>,
    /// The shape of one example for `train cnn`: CHANNELSxHEIGHTxWIDTH, e.g. 1x28x28. Default:
    /// from the data (1×h×w for images such as MNIST).
    #[arg(long)]
    pub input_shape: Option<String>,
    /// `train autoencoder` twice on the same data, seed and settings, with β = 0 (weight decay
    /// alone) and with --sparsity-weight β, into OUT/weight-decay and OUT/sparse, and draw both
    /// filter grids side by side, labelled, in OUT/compare.png (the lecture's comparison).
    /// OUT: --out, or runs/compare-sparsity-N.
    #[arg(long)]
    #[serde(default)]
    pub compare_sparsity: bool,
    // ---- sequence models (`train lstm`, `train rnn`) ----
    /// Characters per window for a character model (truncated BPTT's T). Default 64.
    #[arg(long)]
    pub bptt: Option<usize>,
    /// Clip the gradient to this global norm (g ← g·min(1, τ/‖g‖)) before each update of a
    /// character model; 0 turns it off. Default 5.
    #[arg(long)]
    pub clip_norm: Option<f64>,
    /// Minibatch updates for a character model. Default 2000.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Held-out bits per character every N updates of a character model (and after the
    /// last). Default 500.
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// The fraction of a text held out at its end for a character model's bits per
    /// character. Default 0.1.
    #[arg(long)]
    pub held_out: Option<f64>,
    /// The flags given on the command line (or in a --config file), by their ids
    /// (`checkpoint_every`): set by `cli::parse`, for `--resume`.
    #[arg(skip)]
    #[serde(skip)]
    pub given: Vec<String>,
}

impl TrainArgs {
    /// The minibatch size: --batch-size, or by default scikit-learn's auto (200, capped at the
    /// examples when used) — 64 for `train cnn`, LeNet's usual batch.
    fn batch(&self) -> usize {
        self.batch_size.unwrap_or(self.kind.defaults().batch_size)
    }
}

impl Kind {
    /// The library's kind: the key of the one table of per-kind defaults.
    pub fn lib(self) -> wgnn::estimator::Kind {
        use wgnn::estimator::Kind as K;
        match self {
            Kind::Autoencoder => K::Autoencoder,
            Kind::Softmax => K::Softmax,
            Kind::Mlp => K::Mlp,
            Kind::Stacked => K::Stacked,
            Kind::Cnn => K::Cnn,
            Kind::Lstm => K::Lstm,
            Kind::Rnn => K::Rnn,
        }
    }

    /// This kind's row of the table ([`wgnn::estimator::Kind::defaults`]).
    pub fn defaults(self) -> wgnn::estimator::KindDefaults {
        self.lib().defaults()
    }
}

impl OptimizerChoice {
    /// The library's solver.
    pub fn solver(self) -> Solver {
        match self {
            OptimizerChoice::Lbfgs => Solver::Lbfgs,
            OptimizerChoice::Cg => Solver::Cg,
            OptimizerChoice::Gd => Solver::Gd,
            OptimizerChoice::Sgd => Solver::Sgd,
            OptimizerChoice::Adam => Solver::Adam,
        }
    }

    /// The choice naming `solver`.
    pub fn of(solver: Solver) -> OptimizerChoice {
        match solver {
            Solver::Lbfgs => OptimizerChoice::Lbfgs,
            Solver::Cg => OptimizerChoice::Cg,
            Solver::Gd => OptimizerChoice::Gd,
            Solver::Sgd => OptimizerChoice::Sgd,
            Solver::Adam => OptimizerChoice::Adam,
        }
    }
}

impl Default for TrainArgs {
    fn default() -> TrainArgs {
        super::defaults()
    }
}

/// `train cnn`'s default network: LeNet-5 as Caffe's MNIST example builds it.
pub const LENET: &str = wgnn::estimator::LENET;

/// The layer stack `train cnn` asks for, on data of `features` values per example with
/// `classes` labels (`image` its h × w when the data knows it). A layer-stack block, kept
/// apart from the dense kinds above.
fn cnn_spec(
    args: &TrainArgs,
    features: usize,
    image: Option<(usize, usize)>,
    classes: usize,
) -> anyhow::Result<NetSpec> {
    use wgnn::model::{InputShape, LayerStack, parse_net};
    let input = match (&args.input_shape, image) {
        (Some(text), _) => InputShape::parse(text).context("--input-shape")?,
        (None, Some((h, w))) => InputShape::image(1, h, w),
        (None, None) => bail!(
            "cnn needs the shape of an example: give --input-shape CHANNELSxHEIGHTxWIDTH (the data has {features} values per example)"
        ),
    };
    if input.len() != features {
        bail!(
            "--input-shape {} holds {} values, but the data has {features} per example: give a shape whose product is {features}",
            input.describe(),
            input.len()
        );
    }
    let text = args.net.as_deref().unwrap_or(LENET);
    let parsed = parse_net(text).context("--net")?;
    if parsed.output != Output::Softmax {
        bail!("--net ends in {}: `train cnn` is a classifier, end it in softmax", parsed.output.name());
    }
    if let Some(n) = parsed.outputs.filter(|&n| n != classes) {
        bail!(
            "--net ends in softmax {n}, but the data has {classes} classes: write softmax (the data decides) or softmax {classes}"
        );
    }
    let stack = LayerStack { input, layers: parsed.layers };
    Ok(NetSpec::stack(stack, classes, Output::Softmax)?.with_weight_decay(args.weight_decay.unwrap_or(0.0))?)
}

/// `--batch-size`: a whole number ≥ 1, or `auto`, scikit-learn's min(200, n) — 200, since a
/// batch never holds more than the n training examples.
fn batch_size(text: &str) -> Result<usize, String> {
    if text.trim().eq_ignore_ascii_case("auto") {
        return Ok(wgnn::optim::Minibatch::DEFAULT_BATCH_SIZE);
    }
    text.trim().parse::<usize>().map_err(|_| format!("`{text}` is not a batch size: give a whole number or auto"))
}

/// The kind's name on the command line.
pub fn kind_name(kind: Kind) -> &'static str {
    kind.lib().name()
}

/// `runs/<kind>-N` for the first N with no folder yet, created and locked here (atomically:
/// two runs started together get two numbers). A failed or interrupted run's folder keeps
/// its number: it holds a checkpoint to resume or inspect.
fn default_folder(kind: Kind) -> anyhow::Result<RunFolder> {
    let name = kind_name(kind);
    for n in 1.. {
        if let Some(folder) = RunFolder::create_new(&PathBuf::from(format!("runs/{name}-{n}")))? {
            return Ok(folder);
        }
    }
    unreachable!("some number is free")
}

/// The run folder, checked and locked before any data is read: a file, a folder that cannot
/// be written, a folder another process is writing, or one that holds a run (finished or
/// not) without --force or --resume naming it, is refused now, not after training.
fn open_run_folder(args: &TrainArgs) -> anyhow::Result<RunFolder> {
    let out = match (&args.out, &args.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => return default_folder(args.kind),
    };
    let resuming_here = args.resume.as_ref().is_some_and(|r| same_folder(r, &out));
    if !args.force && !resuming_here && out.is_dir() {
        let held = [MODEL_FILE, CHECKPOINT_FILE, "metrics.json", "layer1", "finetune"]
            .into_iter()
            .find(|f| out.join(f).exists());
        if let Some(f) = held {
            let status = wgnn::train::recorded_status(&out);
            let finished = f == MODEL_FILE || status.as_deref() == Some("finished");
            let failed = matches!(status.as_deref(), Some("diverged" | "failed"));
            let what = match (finished, status.as_deref()) {
                (true, _) => "a finished run",
                (false, Some("diverged")) => "a run that diverged",
                (false, Some("failed")) => "a run that failed",
                (false, _) => "an unfinished run",
            };
            // A failed run (no optimizer state) cannot be continued, nor a finished one that
            // kept no checkpoint (only --checkpoint-every keeps it beside the model).
            let resumable = !failed && (!finished || out.join(CHECKPOINT_FILE).is_file());
            let tip = if resumable { format!(", --resume {} to continue it", out.display()) } else { String::new() };
            bail!("{} holds {what} ({f}): give another --out{tip}, or --force to replace it", out.display());
        }
    }
    Ok(RunFolder::open(&out)?)
}

fn same_folder(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// The checkpoint `--resume DIR` continues from: DIR/checkpoint.safetensors (interrupted, or a
/// checkpoint written while training) when there is one, else DIR/model.safetensors.
fn resume_checkpoint(dir: &std::path::Path) -> anyhow::Result<Checkpoint> {
    let checkpoint = dir.join(CHECKPOINT_FILE);
    let file = if checkpoint.is_file() { checkpoint } else { dir.join(MODEL_FILE) };
    if !file.is_file() {
        bail!("--resume {}: no {CHECKPOINT_FILE} or {MODEL_FILE} there to continue from", dir.display());
    }
    Ok(Checkpoint::load(&file)?)
}

/// The flags that may be given beside `--resume` (by their ids): the iteration budget, where
/// and how the run reports, and which device computes (on another device the bits may differ
/// from an uninterrupted run). Any other flag must repeat the run's own value.
const MAY_CHANGE_ON_RESUME: &[&str] =
    &["resume", "iterations", "checkpoint_every", "quiet", "out", "backend", "gpu_api", "adapter", "steps"];

/// `--resume DIR`: the job stored in DIR's checkpoint (kind, network, data and its options,
/// optimizer and its settings, seed), with the flags of [`MAY_CHANGE_ON_RESUME`] taken from
/// `given`; any other flag given with another value than the run's is refused in one line.
/// A checkpoint without stored flags (no `command`: written by the library's `train`, or by a
/// wgnn before runs stored them) leaves `given` as it is: its flags must then repeat the job,
/// and `--resume` with none of them is refused at once, before any data is read.
///
/// The budget may only extend (DESIGN.md, "Run folders and exit codes": flags beside
/// `--resume` may only extend the iteration budget): an `--iterations` below the iterations
/// the run has done is refused in one line; one equal to them on a finished run has nothing
/// to do: `Ok(None)`, after saying so, and nothing is written.
fn restore_job(given: TrainArgs, dir: &std::path::Path) -> anyhow::Result<Option<TrainArgs>> {
    // A stacked pipeline's flags are stored with each stage: its first one always ran.
    let stacked = dir.join("layer1").is_dir();
    // One stage's folder would otherwise restore the whole pipeline's flags and run it all
    // again inside that folder.
    if !stacked && let Some(top) = stacked_run_of(dir) {
        bail!(
            "{} is a stage of the stacked run {}: resume the whole run with wgnn train --resume {}",
            dir.display(),
            top.display(),
            top.display()
        );
    }
    let checkpoint = resume_checkpoint(&if stacked { dir.join("layer1") } else { dir.to_path_buf() })?;
    if checkpoint.metadata.command.is_null() {
        if stacked || given.kind == Kind::Stacked {
            bail!(
                "--resume {}: this stacked autoencoder was written before runs stored their flags, so it cannot be resumed: train it again with --force",
                dir.display()
            );
        }
        // Only flags that leave the job as it was: the job would be built from the defaults
        // (data loaded, network built) only to be refused for another network.
        // (Ids that are no flag of the job, such as clap's groups, do not count.)
        let values = serde_json::to_value(stored_form(&given))?;
        let mut job_flags = given.given.iter().filter(|id| values.get(id.as_str()).is_some());
        if job_flags.all(|id| MAY_CHANGE_ON_RESUME.contains(&id.as_str())) {
            bail!(
                "--resume {}: the checkpoint holds {} but not the flags it was trained with (saved by the library, or by a wgnn before runs stored them), so --resume alone cannot rebuild the job: give the kind, --data and network flags it was trained with beside --resume",
                dir.display(),
                checkpoint.spec.describe()
            );
        }
        return budget_extends(given, dir, &checkpoint);
    }
    let mut stored: TrainArgs = serde_json::from_value(checkpoint.metadata.command.clone()).with_context(|| {
        format!("--resume {}: the run's stored flags are unreadable (written by another wgnn version?)", dir.display())
    })?;
    if stored.kind == Kind::Stacked && !stacked {
        // A stage moved out of its pipeline's folder (the check above finds it in place).
        bail!(
            "--resume {}: this folder holds one stage of a stacked run: resume the whole run from its top folder (the one holding layer1/) with wgnn train --resume TOP",
            dir.display()
        );
    }
    if stored.kind == Kind::Stacked && !stacked_budget_holds(&stored, &given, dir)? {
        return Ok(None);
    }
    // Compared as stored (paths absolute): `--data npy:x.npy` names the run's own file.
    let (given_values, stored_values) = (serde_json::to_value(stored_form(&given))?, serde_json::to_value(&stored)?);
    for id in &given.given {
        let (Some(g), Some(s)) = (given_values.get(id), stored_values.get(id)) else { continue };
        if MAY_CHANGE_ON_RESUME.contains(&id.as_str()) || g == s {
            continue;
        }
        let flag = if id == "kind" { "the kind".to_string() } else { format!("--{}", id.replace('_', "-")) };
        let trained =
            if s.is_null() { format!("without {flag}: its default") } else { format!("with {flag} {}", shown(s)) };
        bail!(
            "{flag} {} conflicts with the run in {} (trained {trained}): --resume continues that job as it was; beside it give only --iterations (--steps for a character model), --checkpoint-every, --quiet, --out, --backend, --gpu-api or --adapter, or start a new run",
            shown(g),
            dir.display(),
        );
    }
    stored.resume = given.resume.clone();
    stored.out = given.out.clone();
    stored.quiet = given.quiet;
    stored.iterations = given.iterations.or(stored.iterations);
    stored.checkpoint_every = given.checkpoint_every.or(stored.checkpoint_every);
    // A character model's budget of updates (its --iterations).
    stored.steps = given.steps.or(stored.steps);
    let changed = |id: &str| given.given.iter().any(|g| g == id);
    if changed("backend") {
        stored.backend.backend = given.backend.backend;
    }
    if changed("gpu_api") {
        stored.backend.gpu_api = given.backend.gpu_api;
    }
    if changed("adapter") {
        stored.backend.adapter = given.backend.adapter.clone();
    }
    if stored.kind == Kind::Stacked && given.out.as_ref().is_some_and(|o| !same_folder(o, dir)) {
        bail!(
            "--out beside --resume {}: a stacked autoencoder continues in its own folder; leave --out out",
            dir.display()
        );
    }
    // θ comes from the checkpoint, never from --init.
    stored.init = "uniform".into();
    stored.given = given.given;
    budget_extends(stored, dir, &checkpoint)
}

/// The top folder of the stacked run whose stage `dir` is (`layerN`, `softmax` or
/// `finetune` beside a `layer1` folder), if it is one.
fn stacked_run_of(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    let name = dir.file_name()?.to_str()?;
    let layer = name.strip_prefix("layer").is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !(layer || name == "softmax" || name == "finetune") {
        return None;
    }
    let top = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    top.join("layer1").is_dir().then_some(top)
}

/// Whether the stacked run in `dir`, trained with `stored`'s flags, is to continue with the
/// `--iterations` of `given`. Its finished stages are kept as they are and the later ones were
/// trained on them, so no stage can be extended: another budget is refused in one line (the
/// run unfinished or finished). The same budget on a finished run has nothing to do: `false`,
/// after saying so, and nothing is written.
fn stacked_budget_holds(stored: &TrainArgs, given: &TrainArgs, dir: &std::path::Path) -> anyhow::Result<bool> {
    let trained = stored.iterations.unwrap_or(wgnn::stacked::StackedConfig::default().iterations);
    let finished = wgnn::train::recorded_status(dir).as_deref() == Some("finished");
    if let Some(asked) = given.iterations.filter(|&n| n != trained) {
        let (state, instead) = if finished {
            ("has finished", String::new())
        } else {
            ("was started", "resume it without --iterations, or ".to_string())
        };
        bail!(
            "--resume {}: the stacked run {state} with --iterations {trained} per stage and a stacked run's budget cannot change (each stage is trained on the ones before it): {instead}start a new run with --iterations {asked} (another --out, or --force)",
            dir.display()
        );
    }
    if finished {
        if !given.quiet {
            println!(
                "the stacked run in {} has already finished its {trained} iterations per stage: nothing to do",
                dir.display()
            );
        }
        return Ok(false);
    }
    Ok(true)
}

/// `args` when their iteration budget is above what the run in `dir` has done (its
/// checkpoint's optimizer counts them: iterations, or epochs); a budget below is refused in
/// one line; a budget it has reached on a finished run gives `Ok(None)` after saying so.
/// Character models count updates against `--steps` themselves (`sequence::resume_text`), and
/// a stacked pipeline per stage.
fn budget_extends(
    args: TrainArgs,
    dir: &std::path::Path,
    checkpoint: &Checkpoint,
) -> anyhow::Result<Option<TrainArgs>> {
    let done = checkpoint.metadata.optimizer.get("counters").and_then(|c| c.get("iteration")).and_then(|i| i.as_u64());
    let (Some(done), false) = (done, args.kind == Kind::Stacked) else { return Ok(Some(args)) };
    let budget = args.iterations.unwrap_or(args.kind.defaults().iterations) as u64;
    let finished = dir.join(MODEL_FILE).is_file() && wgnn::train::recorded_status(dir).as_deref() == Some("finished");
    if budget < done {
        bail!(
            "--resume {}: the run has done {done} iterations, more than --iterations {budget}: --resume only extends the budget; give --iterations above {done} to continue it, or start a new run",
            dir.display()
        );
    }
    if budget == done && finished {
        if !args.quiet {
            println!(
                "the run in {} has already finished its {done} iterations: nothing to do (give --iterations above {done} to continue it)",
                dir.display()
            );
        }
        return Ok(None);
    }
    Ok(Some(args))
}

/// A flag's value as a user would type it.
fn shown(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "(none)".into(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(items) => items.iter().map(shown).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// The flags a run stores for `--resume`: paths made absolute (the run may be resumed from
/// another folder), without the flags that belong to one invocation (--resume, --out,
/// --force, --quiet).
pub(super) fn stored_form(args: &TrainArgs) -> TrainArgs {
    let absolute = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    // mnist:DIR, npy:FILE, a bare FILE.npy, … with DIR or FILE absolute; synthetic and
    // columns:SPEC as given (wgnn::data::absolute_source, which reads them as the loaders do).
    let source = |s: &String| wgnn::data::absolute_source(s);
    let mut a = args.clone();
    a.data.data = a.data.data.as_ref().map(source);
    a.data.targets = a.data.targets.as_ref().map(source);
    a.data.labels = a.data.labels.as_deref().map(|p| wgnn::data::absolute_source(&p.to_string_lossy()).into());
    a.test_data = a.test_data.as_ref().map(source);
    a.test_targets = a.test_targets.as_ref().map(source);
    a.test_labels = a.test_labels.as_ref().map(source);
    a.features_from = a.features_from.as_deref().map(absolute);
    if !matches!(a.init.as_str(), "uniform" | "normal") {
        a.init = absolute(std::path::Path::new(&a.init)).display().to_string();
    }
    a.resume = None;
    a.out = None;
    a.force = false;
    a.quiet = false;
    a.given.clear();
    a
}

/// Settings that no data can make right, refused before anything is read or written.
fn check_flags(args: &TrainArgs) -> anyhow::Result<()> {
    let iterations = args.iterations.unwrap_or(1);
    let stop = wgnn::optim::Stop::FULL_BATCH.with_max_iterations(iterations);
    check_settings(&stop, args.validation, args.patience, args.checkpoint_every)?;
    if let Some(rho) = args.sparsity
        && !(0.0..1.0).contains(&rho)
    {
        bail!("--sparsity {rho}: the sparsity target ρ must be 0 (off) or lie strictly between 0 and 1");
    }
    let at_least_zero = [
        ("--weight-decay", "the weight decay λ", args.weight_decay),
        ("--sparsity-weight", "the sparsity weight β", Some(args.sparsity_weight)),
        ("--whiten-epsilon", "the whitening ε", Some(args.whiten_epsilon)),
    ];
    for (flag, what, value) in at_least_zero {
        if let Some(v) = value
            && !(v >= 0.0 && v.is_finite())
        {
            bail!("{flag} {v}: {what} must be a finite number ≥ 0");
        }
    }
    if args.batch_size == Some(0) {
        bail!("--batch-size 0: a minibatch holds at least 1 example");
    }
    if args.kind == Kind::Cnn {
        let dense_only = [
            ("--hidden", args.hidden.is_some()),
            ("--activation", args.activation.is_some()),
            ("--sparsity", args.sparsity.is_some()),
            ("--whiten", args.whiten.is_some()),
            ("--features-from", args.features_from.is_some()),
        ];
        if let Some((flag, _)) = dense_only.iter().find(|(_, given)| *given) {
            bail!("{flag} does not go with `train cnn`: describe the network with --net");
        }
    }
    if !matches!(args.kind, Kind::Lstm | Kind::Rnn) {
        let sequence_flag =
            super::sequence::text_only_flag(args).or_else(|| args.data.sequence.is_some().then_some("--sequence"));
        if let Some(flag) = sequence_flag {
            bail!("{flag} goes with a sequence model: `train lstm` or `train rnn`");
        }
    }
    if matches!(args.kind, Kind::Lstm | Kind::Rnn) {
        if args.input_shape.is_some() {
            bail!("--input-shape does not go with `train {}`: the data gives T and n", kind_name(args.kind));
        }
    } else if args.kind != Kind::Cnn && (args.net.is_some() || args.input_shape.is_some()) {
        bail!("--net and --input-shape describe a layer stack: use them with `train cnn`");
    }
    if args.alpha.is_some() && args.weight_decay.is_some() {
        bail!("--alpha and --weight-decay both set the L2 penalty: give one (--alpha α is scikit-learn's, λ = α/n)");
    }
    type Check<'a> = (&'a str, &'a str, Option<f64>, fn(f64) -> bool, &'a str);
    let checks: [Check; 6] = [
        ("--alpha", "the L2 penalty α", args.alpha, |v| v >= 0.0 && v.is_finite(), "be a finite number ≥ 0"),
        ("--tol", "the cost tolerance", args.tol, |v| v >= 0.0 && v.is_finite(), "be a finite number ≥ 0 (0: off)"),
        ("--momentum", "the momentum μ", args.momentum, |v| (0.0..1.0).contains(&v), "lie in [0, 1) (usual: 0.9)"),
        ("--beta1", "Adam's β₁", args.beta1, |v| (0.0..1.0).contains(&v), "lie in [0, 1) (usual: 0.9)"),
        ("--beta2", "Adam's β₂", args.beta2, |v| (0.0..1.0).contains(&v), "lie in [0, 1) (usual: 0.999)"),
        (
            "--adam-epsilon",
            "Adam's ε",
            args.adam_epsilon,
            |v| v > 0.0 && v.is_finite(),
            "be a finite number > 0 (usual: 1e-8)",
        ),
    ];
    for (flag, what, value, ok, rule) in checks {
        if let Some(v) = value
            && !ok(v)
        {
            bail!("{flag} {v}: {what} must {rule}");
        }
    }
    if args.n_iter_no_change == Some(0) {
        bail!("--n-iter-no-change 0: give at least 1 iteration (scikit-learn's default for sgd and adam is 10)");
    }
    if args.max_fun == Some(0) {
        bail!("--max-fun 0: allow at least 1 evaluation (scikit-learn's default is 15000)");
    }
    if args.lbfgs_memory == Some(0) {
        bail!("--lbfgs-memory 0: L-BFGS keeps at least 1 correction pair (usual: 10 to 100)");
    }
    if let Some(eta) = args.learning_rate
        && !(eta > 0.0 && eta.is_finite())
    {
        bail!("--learning-rate {eta}: the learning rate η must be a finite number > 0");
    }
    if let Some(fraction) = args.test_fraction
        && !(fraction > 0.0 && fraction < 1.0)
    {
        bail!("--test-fraction {fraction}: the test fraction must lie strictly between 0 and 1");
    }
    Ok(())
}

/// `train stacked`'s pipeline: the flags given, the rest from [`StackedConfig::default`]
/// (the table's row for stacked and softmax).
fn stacked_config(
    args: &TrainArgs,
    data: &Dataset,
    preprocessing: serde_json::Value,
) -> anyhow::Result<wgnn::stacked::StackedConfig> {
    let defaults = wgnn::stacked::StackedConfig::default();
    let rho = args.sparsity.or(Kind::Stacked.defaults().sparsity).unwrap_or(0.0);
    Ok(wgnn::stacked::StackedConfig {
        hidden: args.hidden.clone().unwrap_or(defaults.hidden.clone()),
        sparsity: sparsity(rho, args.sparsity_weight),
        weight_decay: args.weight_decay.unwrap_or(defaults.weight_decay),
        iterations: args.iterations.unwrap_or(defaults.iterations),
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        data_description: data.description.clone(),
        preprocessing,
        resume: args.resume.is_some(),
        command: serde_json::to_value(stored_form(args))?,
        ..defaults
    })
}

/// Step "network" of the dense kinds: the flags as the library's settings, the rest from the
/// table ([`wgnn::estimator::Kind::dense_spec`]).
fn dense_settings(args: &TrainArgs) -> anyhow::Result<wgnn::estimator::DenseSettings> {
    Ok(wgnn::estimator::DenseSettings {
        hidden: args.hidden.clone(),
        activation: args.activation.as_deref().map(Activation::parse).transpose()?,
        output: args.output.as_deref().map(Output::parse).transpose()?,
        weight_decay: args.weight_decay,
        sparsity: args.sparsity,
        sparsity_weight: args.sparsity_weight,
    })
}

/// Step "optimizer": the flags as the library's settings, the rest from the table
/// ([`wgnn::estimator::OptimizerSettings`], which the estimators use too).
fn optimizer_settings(args: &TrainArgs, choice: OptimizerChoice, schedule: Schedule) -> OptimizerSettings {
    OptimizerSettings {
        solver: choice.solver(),
        iterations: args.iterations.unwrap_or(args.kind.defaults().iterations),
        learning_rate: args.learning_rate,
        batch_size: args.batch(),
        schedule,
        momentum: args.momentum,
        nesterov: args.nesterov,
        beta1: args.beta1,
        beta2: args.beta2,
        adam_epsilon: args.adam_epsilon,
        lbfgs_memory: args.lbfgs_memory,
        seed: args.seed,
        tol: args.tol,
        n_iter_no_change: args.n_iter_no_change,
        max_fun: args.max_fun,
    }
}

/// The sparsity penalty `--sparsity` asks for: none for ρ = 0.
pub fn sparsity(rho: f64, weight: f64) -> Option<Sparsity> {
    (rho != 0.0).then_some(Sparsity { target: rho, weight })
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    // Started by mpirun/srun in a build with `--features mpi`: one rank of a data-parallel job.
    #[cfg(feature = "mpi")]
    if wgnn::dist::mpi::launched() {
        return super::ranks::run_on_ranks(args);
    }
    if args.compare_sparsity {
        return compare_sparsity(args);
    }
    run_job(args, None)
}

/// The job of `wgnn train`, alone (`ranks` None) or as one rank of a data-parallel job
/// ([`Ranks`]): then every rank loads the data and builds the network the same way, trains
/// over its shard through a [`wgnn::dist::DistBackend`], and rank 0 alone writes the run
/// folder and prints.
pub(super) fn run_job(mut args: TrainArgs, ranks: Option<&Ranks>) -> anyhow::Result<()> {
    if let Some(dir) = args.resume.clone() {
        match restore_job(args, &dir)? {
            Some(restored) => args = restored,
            // Already where the budget asks: nothing is written.
            None => return Ok(()),
        }
    }
    let job_fingerprint = wgnn::dist::fingerprint_of(&serde_json::to_string(&stored_form(&args))?);
    if ranks.is_some() && args.kind == Kind::Stacked && args.resume.is_some() {
        bail!("train stacked --resume does not run over MPI: resume the pipeline as one process (without mpirun)");
    }
    if ranks.is_some_and(|r| r.rank() > 0) {
        args.quiet = true;
    }
    let say = |s: String| {
        if !args.quiet {
            eprintln!("{s}");
        }
    };
    // Ctrl-C from here on stops the run after the current step (saved, resumable); before
    // training it ends the command with nothing written.
    // One flag for the process (ctrlc takes one handler): --compare-sparsity runs twice.
    static INTERRUPT: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    let interrupt = INTERRUPT
        .get_or_init(|| {
            let flag = Arc::new(AtomicBool::new(false));
            let handler = flag.clone();
            let _ = ctrlc::set_handler(move || handler.store(true, Ordering::SeqCst));
            flag
        })
        .clone();
    // Over MPI every rank stops at the same evaluation (a Ctrl-C reaches them at different
    // moments): the flag training watches is the one the ranks agree on.
    let (raw_interrupt, interrupt) = (interrupt.clone(), ranks.map_or(interrupt.clone(), |r| r.interrupt(&interrupt)));
    check_flags(&args)?;
    // The run folder is taken first: a busy or unwritable one is refused before any work.
    let folder = match ranks {
        Some(r) if r.rank() > 0 => r.scratch_folder()?,
        _ => open_run_folder(&args)?,
    };
    let sequence_kind = matches!(args.kind, Kind::Lstm | Kind::Rnn);
    if sequence_kind && let Some(path) = super::sequence::text_file(args.data.data.as_deref()) {
        return super::sequence::train_text(&args, &path, folder, &raw_interrupt, ranks, job_fingerprint);
    }
    let out_dir = folder.path().to_path_buf();
    // Files named on the command line are read first, so a typo fails before any work.
    let (init, initial_theta) = match args.init.as_str() {
        "uniform" => (Init::Uniform, None),
        "normal" => (Init::DEFAULT_NORMAL, None),
        path => (Init::Uniform, Some(super::read_theta(path).context("--init")?)),
    };
    // A stacked pipeline finds each stage's checkpoint itself.
    let resume = match args.kind {
        Kind::Stacked => None,
        _ => args.resume.as_deref().map(resume_checkpoint).transpose()?,
    };
    // The optimizer's flags too.
    let choice = args.optimizer.unwrap_or(OptimizerChoice::of(args.kind.defaults().solver));
    check_optimizer_flags(&args, choice)?;
    let schedule = parse_schedule(&args.schedule, args.tol.unwrap_or(wgnn::optim::Stop::MINIBATCH.cost_tol))
        .context("--schedule")?;
    if schedule != Schedule::Constant && !matches!(choice, OptimizerChoice::Sgd | OptimizerChoice::Adam) {
        bail!(
            "--schedule {} sets the learning rate of sgd and adam: use it with --optimizer sgd or adam",
            args.schedule
        );
    }

    // Data.
    let Loaded { data, sequence_shape, test, regression, whitening, preprocessing } =
        load_data(&args, sequence_kind, ranks, &say)?;
    let n = data.num_features();
    if args.kind == Kind::Stacked {
        let test = test.map(|(x, t)| match t {
            TestTargets::Labels(l) => (x, l),
            TestTargets::Values(_) => unreachable!("regression was refused above for stacked"),
        });
        if args.force {
            for stage in ["layer1", "layer2", "layer3", "softmax", "finetune", "metrics.json"] {
                let _ =
                    std::fs::remove_dir_all(out_dir.join(stage)).or_else(|_| std::fs::remove_file(out_dir.join(stage)));
            }
        }
        let config = stacked_config(&args, &data, preprocessing)?;
        if let Some(r) = ranks {
            r.start(job_fingerprint)?;
        }
        let result = super::stacked::run(&config, &args.backend, args.quiet, &data, test, folder, &interrupt, ranks);
        if let (Some(r), Err(_)) = (ranks, &result) {
            r.training_failed.set(true);
        }
        return result;
    }

    // Network.
    let spec = match args.kind {
        Kind::Cnn => {
            let classes = data.num_classes().context("this data has no labels: cnn needs them")?;
            cnn_spec(&args, n, data.image_shape, classes)?
        }
        Kind::Lstm | Kind::Rnn if data.targets.is_some() => {
            let shape = sequence_shape.expect("sequence kinds load sequences");
            let per_example = data.targets.as_ref().map_or(0, |t| t.ncols());
            super::sequence::per_step_regressor_spec(&args, shape, per_example / shape.steps)?
        }
        Kind::Lstm | Kind::Rnn if data.labels_per_example() > 1 => {
            let classes = data.num_classes().context("these sequences have no labels")?;
            let shape = sequence_shape.expect("sequence kinds load sequences");
            super::sequence::per_step_classifier_spec(&args, shape, classes)?
        }
        Kind::Lstm | Kind::Rnn => {
            let classes =
                data.num_classes().context("these sequences have no labels: give --labels, one per sequence")?;
            let shape = sequence_shape.expect("sequence kinds load sequences");
            super::sequence::classifier_spec(&args, shape, classes)?
        }
        Kind::Autoencoder | Kind::Mlp | Kind::Softmax | Kind::Stacked => {
            let outputs = match (&data.targets, args.kind) {
                (Some(t), _) => t.ncols(),
                (None, Kind::Autoencoder) => n,
                (None, _) => data.num_classes().context("this data has no labels: softmax and mlp need them")?,
            };
            args.kind.lib().dense_spec(n, outputs, regression, &dense_settings(&args)?)?
        }
    };
    let spec = match args.alpha {
        None => spec,
        Some(alpha) => {
            // scikit-learn divides α by the examples of each gradient (its `n_samples`).
            let n_train = wgnn::data::hold_out(data.x.nrows(), args.validation, 0, "validation")?.0.len();
            let (lambda, n) = wgnn::estimator::weight_decay_of_alpha(alpha, choice.solver(), args.batch(), n_train);
            say(format!("penalty  --alpha {alpha}: weight decay λ = α/n = {alpha}/{n} = {lambda:e}"));
            spec.with_weight_decay(lambda)?
        }
    };
    super::inspect::warn_whitened_range(&spec, whitening.is_some() && args.kind == Kind::Autoencoder);
    let params = wgnn::model::ThetaLayout::new(&spec).len();
    say(format!("network  {} ({params} parameters)", spec.describe()));

    // Optimizer.
    let settings = optimizer_settings(&args, choice, schedule);
    let iterations = settings.iterations;
    let method = settings.method(params)?;
    let stop = settings.stop(&method);

    let (mut backend, note) = match ranks {
        None => args.backend.build_quietly(spec.clone(), super::Precision::F32)?,
        Some(r) => r.backend(&args.backend, &spec)?,
    };
    if let Some(note) = note {
        say(format!("note: {note}"));
    }
    say(format!("backend  {}", backend.name()));
    say(format!(
        "training {} for up to {iterations} {}",
        method.name(),
        if matches!(method, Method::Minibatch(_)) { "epochs" } else { "iterations" }
    ));

    // The epochs before a resume, so that the kept epoch can be named from all of them.
    // They live in the optimizer's state (checkpoints written before it moved out of the
    // metadata also kept a copy under `history`).
    let earlier: Vec<wgnn::optim::Record> = resume
        .as_ref()
        .and_then(|ck| {
            let history = ck.metadata.optimizer.get("history").filter(|h| !h.is_null()).unwrap_or(&ck.metadata.history);
            serde_json::from_value(history.clone()).ok()
        })
        .unwrap_or_default();
    let job = TrainJob {
        spec,
        method,
        stop,
        init,
        seed: args.seed,
        initial_theta,
        resume,
        validation_fraction: args.validation,
        patience: args.patience,
        checkpoint_every: args.checkpoint_every,
        out_dir: out_dir.clone(),
        folder: Some(folder),
        data_description: data.description.clone(),
        image_shape: data.image_shape,
        preprocessing,
        test_set: test,
        command: serde_json::to_value(stored_form(&args))?,
    };
    job.validate()?;
    if interrupt.load(Ordering::SeqCst) {
        return Err(Exit::interrupted("interrupted before training started; nothing was written".into()).into());
    }
    if args.force {
        // Every check has passed: the run this one replaces goes now, so the folder never
        // mixes two runs.
        for f in [MODEL_FILE, CHECKPOINT_FILE] {
            match std::fs::remove_file(out_dir.join(f)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    bail!("--force: cannot remove {}: {e}", out_dir.join(f).display())
                }
                _ => {}
            }
        }
    }
    let epochs = matches!(job.method, Method::Minibatch(_));
    // The metric follows the output (as the loss plot's axis, viz::LossAxes): an error rate for
    // every softmax (cnn, lstm and rnn classifiers too, per step or not).
    let validation_label =
        if job.spec.output == Output::Softmax { "validation error" } else { "validation squared error" };
    let mut reporter = Reporter::new(args.quiet, iterations, epochs, schedule != Schedule::Constant, validation_label);
    earlier.iter().for_each(|r| reporter.note(r));
    let y = match (&data.targets, &data.labels) {
        (Some(t), _) => Targets::Values(t.into()),
        // This rank's labels when it read its shard alone.
        (None, Some(l)) => Targets::Labels(ranks.map_or(&l[..], |r| r.shard_labels(l))),
        (None, None) => Targets::Inputs,
    };
    if let Some(r) = ranks {
        r.start(job_fingerprint)?;
        r.announce(&backend.name(), args.quiet)?;
    }
    // The examples are handed over, not lent: the run holds the only copy of them.
    let outcome = train(job, backend.as_mut(), data.x, y, &mut |p| reporter.update(p), &interrupt);
    reporter.finish();
    if let (Some(r), Err(_)) = (ranks, &outcome) {
        r.training_failed.set(true);
    }
    let outcome = outcome?;
    if let Some(r) = ranks {
        r.write_report(&out_dir)?;
    }

    report(&args, &outcome, &reporter, &out_dir, epochs)
}

/// What step "data" leaves: the training examples (after the test split, `--features-from`
/// and whitening), the test set, and what the model stores about them.
struct Loaded {
    data: Dataset,
    sequence_shape: Option<wgnn::data::sequence::SequenceShape>,
    test: Option<(ndarray::Array2<f32>, TestTargets)>,
    regression: bool,
    whitening: Option<wgnn::data::whiten::Whitening>,
    preprocessing: serde_json::Value,
}

/// Step "data" of `wgnn train`: reads --data (and --test-data or --test-fraction), checks
/// that the kind can learn from it, applies --features-from and --whiten to both sides.
fn load_data(
    args: &TrainArgs,
    sequence_kind: bool,
    ranks: Option<&Ranks>,
    say: &dyn Fn(String),
) -> anyhow::Result<Loaded> {
    if args.data.data.is_none() && args.kind != Kind::Autoencoder {
        bail!(
            "{} needs labelled data: give --data mnist:DIR (e.g. --data mnist:../shared/data/mnist)",
            kind_name(args.kind)
        );
    }
    let mut sequence_shape = None;
    let (source, mut data) = if sequence_kind {
        let (source, data, shape) = super::sequence::load_sequences(args)?;
        sequence_shape = Some(shape);
        (source, data)
    } else if let Some(loaded) = ranks.map(|r| r.load_shard(args)).transpose()?.flatten() {
        // Over MPI, where the format allows: this rank's rows alone, read by offset.
        loaded
    } else {
        args.data.load(args.seed)?
    };
    if let Some(r) = ranks {
        r.read_whole(data.x.nrows());
    }
    // A sigmoid output with the binary cross-entropy learns 0/1 targets (multi-label), or 0/1
    // labels as one target column (binary).
    let bce = args.output.as_deref().map(Output::parse).transpose()?.is_some_and(|o| o == Output::SigmoidBce);
    if bce {
        if args.kind != Kind::Mlp {
            bail!("--output sigmoid-bce goes with `train mlp`, not {}", kind_name(args.kind));
        }
        data.targets = Some(data.zero_one_targets().context("--output sigmoid-bce")?);
        (data.labels, data.classes) = (None, None);
    }
    let regression = data.targets.is_some();
    if regression && !matches!(args.kind, Kind::Mlp | Kind::Lstm | Kind::Rnn) {
        bail!(
            "--targets (real-valued targets) go with `train mlp` (a regressor) or `train lstm|rnn` (targets at every step), not {}",
            kind_name(args.kind)
        );
    }
    match (args.kind, args.output.as_deref().map(Output::parse).transpose()?) {
        (Kind::Mlp, Some(Output::Softmax)) if regression => {
            bail!("a regressor (--targets) needs a squared-error output: --output identity, sigmoid, tanh or relu")
        }
        (Kind::Lstm | Kind::Rnn, Some(o)) if regression && !matches!(o, Output::SquaredError(_)) => bail!(
            "--output {}: per-step targets are real values learnt with a squared-error output (identity, sigmoid, tanh or relu)",
            o.name()
        ),
        (Kind::Softmax | Kind::Mlp | Kind::Stacked | Kind::Cnn | Kind::Lstm | Kind::Rnn, Some(o))
            if !regression && o != Output::Softmax =>
        {
            bail!(
                "--output {} needs real-valued targets: a classifier ends in softmax; give --targets for a regressor",
                o.name()
            )
        }
        _ => {}
    }
    // What test examples must bring: targets for a regressor, labels for a classifier (the
    // training data's classes, matched by name: a test file numbers its own classes).
    let (train_classes, train_k) = (data.classes.clone(), data.num_classes().unwrap_or(0));
    let test_targets = |d: &Dataset, what: &str| -> anyhow::Result<TestTargets> {
        Ok(if bce {
            TestTargets::Values(d.zero_one_targets().with_context(|| what.to_string())?)
        } else if regression {
            TestTargets::Values(d.targets.clone().with_context(|| format!("{what} has no targets"))?)
        } else {
            let labels = d.labels_for(train_classes.as_deref(), train_k).with_context(|| what.to_string())?;
            TestTargets::Labels(labels.with_context(|| format!("{what} has no labels"))?)
        })
    };
    let mut test_description = None;
    let mut test = match (&args.test_data, args.test_fraction) {
        (Some(t), _) => {
            let mut test_args = args.data.clone();
            test_args.data = Some(t.clone());
            // --labels belongs to --data: test examples bring their own (--test-labels).
            test_args.labels = args.test_labels.as_deref().map(Into::into);
            if let (None, Some(l)) = (&args.test_labels, &args.data.labels)
                && matches!(t.parse::<wgnn::data::DataSource>(), Ok(wgnn::data::DataSource::Npy(_)))
            {
                bail!(
                    "--test-data {t} needs its own labels: give --test-labels npy:FILE or csv:FILE (--labels {} belongs to --data)",
                    l.display()
                );
            }
            if t.starts_with("mnist:") {
                test_args.split = Some("test".into());
            }
            match (&args.test_targets, args.data.targets.as_deref()) {
                (Some(tt), _) => test_args.targets = Some(tt.clone()),
                (None, Some(tt)) if !tt.trim_start().starts_with("columns:") => bail!(
                    "--test-data needs its own targets: give --test-targets npy:FILE or csv:FILE (--targets {tt} belongs to --data)"
                ),
                _ => {}
            }
            let (_, d) = test_args.load(args.seed).context("--test-data")?;
            test_description = Some(d.description.clone());
            Some((test_targets(&d, "--test-data")?, d.x))
        }
        (None, Some(fraction)) => {
            let (train, held_out) = data.split_test(fraction, args.seed).context("--test-fraction")?;
            data = train;
            test_description = Some(held_out.description.clone());
            Some((test_targets(&held_out, "the data")?, held_out.x))
        }
        (None, None) => None,
    }
    .map(|(t, x)| (x, t));
    if let Some((x, y)) = &test {
        // Checked here, before any message or file, as well as by train() itself.
        if x.ncols() != data.num_features() {
            bail!(
                "--test-data has {} values per example but --data has {}: give test data like the training data",
                x.ncols(),
                data.num_features()
            );
        }
        if let (TestTargets::Values(t), Some(train_targets)) = (y, &data.targets)
            && t.ncols() != train_targets.ncols()
        {
            bail!(
                "the test targets have {} values per example but the training targets {}: give test targets of the same width",
                t.ncols(),
                train_targets.ncols()
            );
        }
    }
    if let Some(t) = test_description {
        say(format!("test     {t}"));
    }
    say(format!("data     {}", data.description));
    // The encoder with everything its own inputs went through (its whitening, its own
    // encoder), stored whole in this model's preprocessing so the model needs no other folder.
    let mut encoder_stored = serde_json::Value::Null;
    if let Some(path) = &args.features_from {
        let context = || format!("--features-from {}", path.display());
        let file = super::model_file_for("--features-from", path)?;
        let ck = Checkpoint::load(&file).with_context(context)?;
        let encoder = wgnn::predict::Model::from_checkpoint(&ck).with_context(context)?;
        let mut backends = |spec: &NetSpec| -> wgnn::Result<Box<dyn wgnn::Backend>> {
            args.backend
                .build_quietly(spec.clone(), super::Precision::F32)
                .map(|(b, _)| b)
                .map_err(|e| wgnn::Error::Data(format!("{e:#}")))
        };
        data.x = encoder.transform(&data.x, &mut backends).with_context(context)?;
        if let Some((x, _)) = test.as_mut() {
            *x = encoder.transform(x, &mut backends).with_context(context)?;
        }
        data.image_shape = None;
        encoder_stored = wgnn::predict::encoder_json(&ck);
        say(format!("features {} hidden activations of {}", data.num_features(), ck.spec.describe()));
    }
    let whitening = match args.whiten {
        None => None,
        Some(choice) => {
            use wgnn::data::whiten::{Components, Whitening, WhiteningKind};
            let kind = match choice {
                WhitenChoice::Zca => WhiteningKind::Zca,
                WhitenChoice::Pca => WhiteningKind::Pca,
            };
            let w = Whitening::fit(data.x.view(), kind, args.whiten_epsilon, Components::All).context("--whiten")?;
            data.x = w.apply(data.x.view())?;
            if let Some((x, _)) = test.as_mut() {
                *x = w.apply(x.view())?;
            }
            say(format!("whitened {kind:?} with ε = {}", args.whiten_epsilon));
            Some(w)
        }
    };
    let preprocessing = serde_json::json!({
        "source": source.to_string(),
        "patch": args.data.patch,
        "count": args.data.count.unwrap_or(10_000),
        "features_from": args.features_from.as_ref().map(|p| p.display().to_string()),
        "encoder": encoder_stored,
        "whitening": whitening,
        "targets": args.data.targets,
        "test_fraction": args.test_fraction,
        // The labels as the data wrote them, class by class (CSV, .npy): predict and eval use them.
        "classes": if regression { None } else { data.classes.clone() },
    });
    Ok(Loaded { data, sequence_shape, test, regression, whitening, preprocessing })
}

/// Step "write" of `wgnn train` as the user sees it: what the run wrote and how it ended, in
/// one line for an interrupted or diverged run (its exit code), the results on stdout otherwise.
fn report(
    args: &TrainArgs,
    outcome: &wgnn::train::TrainOutcome,
    reporter: &Reporter,
    out_dir: &std::path::Path,
    epochs: bool,
) -> anyhow::Result<()> {
    let say = |s: String| {
        if !args.quiet {
            eprintln!("{s}");
        }
    };
    let s = &outcome.summary;
    // Results go to stdout (`wgnn train > log.txt` keeps them); progress stays on stderr.
    let result = |s: String| {
        if !args.quiet {
            println!("{s}");
        }
    };
    for f in &outcome.files {
        if !outcome.status.is_finished() {
            say(format!("wrote    {}", f.display()));
        }
    }
    let checkpoint = out_dir.join(CHECKPOINT_FILE);
    match &outcome.status {
        RunStatus::Finished => {}
        RunStatus::Interrupted => {
            return Err(Exit::interrupted(format!(
                "interrupted after {} complete iterations: θ where it stopped and the optimizer state are in {} (no {MODEL_FILE} was written); resume with: wgnn train --resume {}",
                s.iterations,
                checkpoint.display(),
                out_dir.display()
            ))
            .into());
        }
        RunStatus::Diverged { reason } => {
            let kept = if checkpoint.is_file() {
                format!("the θ it kept is in {}", checkpoint.display())
            } else {
                "no θ was kept (none with a finite cost was seen)".into()
            };
            return Err(Exit::diverged(format!("{reason} — {kept}; no {MODEL_FILE} was written")).into());
        }
    }
    let unit = if epochs { "epochs" } else { "iterations" };
    result(format!(
        "done     {} {unit}, {} evaluations, {:.1} s: {}",
        s.iterations, s.evaluations, s.seconds, s.reason
    ));
    result(reporter.kept(s));
    result(format!("final cost {}", outcome.final_cost));
    if let Some(a) = outcome.test_accuracy {
        result(format!("test accuracy {:.2}%", 100.0 * a));
    }
    if let Some(r2) = outcome.r2 {
        result(format!("test R² {r2:.4}"));
    }
    for f in &outcome.files {
        result(format!("wrote    {}", f.display()));
    }
    Ok(())
}

/// The flags that belong to one optimizer (or that stacked does not take), refused in one
/// line with another: they would be silently ignored.
fn check_optimizer_flags(args: &TrainArgs, choice: OptimizerChoice) -> anyhow::Result<()> {
    let given = |id: &str, set: bool| set.then(|| format!("--{}", id.replace('_', "-")));
    if args.kind == Kind::Stacked {
        let stacked_ignores = [
            given("alpha", args.alpha.is_some()),
            given("tol", args.tol.is_some()),
            given("n_iter_no_change", args.n_iter_no_change.is_some()),
            given("max_fun", args.max_fun.is_some()),
        ];
        if let Some(flag) = stacked_ignores.into_iter().flatten().next() {
            bail!(
                "{flag}: train stacked runs its own L-BFGS stages and does not take it (use --weight-decay, --iterations)"
            );
        }
    }
    let sgd_only = [given("momentum", args.momentum.is_some()), given("nesterov", args.nesterov.is_some())];
    if choice != OptimizerChoice::Sgd
        && let Some(flag) = sgd_only.into_iter().flatten().next()
    {
        bail!("{flag} sets sgd's momentum: use it with --optimizer sgd");
    }
    let adam_only = [
        given("beta1", args.beta1.is_some()),
        given("beta2", args.beta2.is_some()),
        given("adam_epsilon", args.adam_epsilon.is_some()),
    ];
    if choice != OptimizerChoice::Adam
        && let Some(flag) = adam_only.into_iter().flatten().next()
    {
        bail!("{flag} is Adam's: use it with --optimizer adam");
    }
    Ok(())
}

/// `constant`, `invscaling[:POWER]`, `adaptive` (with the tolerance `tol`, from --tol) or
/// `plateau[:FACTOR[:PATIENCE]]`.
fn parse_schedule(text: &str, tol: f64) -> anyhow::Result<Schedule> {
    let mut parts = text.trim().split(':');
    let name = parts.next().unwrap_or_default().to_ascii_lowercase();
    let args: Vec<&str> = parts.collect();
    let number = |i: usize| -> anyhow::Result<Option<f64>> {
        args.get(i).map(|a| a.parse::<f64>().with_context(|| format!("`{a}` in `{text}` is not a number"))).transpose()
    };
    let schedule = match (name.as_str(), args.len()) {
        ("constant", 0) => Schedule::Constant,
        ("invscaling", 0..=1) => Schedule::InvScaling { power: number(0)?.unwrap_or(0.5) },
        ("adaptive", 0) => Schedule::Adaptive { tol },
        ("plateau", 0..=2) => {
            let default = Plateau::default();
            let patience = number(1)?.unwrap_or(default.patience as f64);
            if patience < 0.0 || patience.fract() != 0.0 {
                bail!("the plateau patience in `{text}` must be a whole number of epochs");
            }
            Schedule::ReduceOnPlateau(Plateau {
                factor: number(0)?.unwrap_or(default.factor),
                patience: patience as usize,
                ..default
            })
        }
        _ => bail!(
            "unknown schedule `{text}`: use constant, invscaling[:POWER], adaptive or plateau[:FACTOR[:PATIENCE]]"
        ),
    };
    schedule.validate()?;
    Ok(schedule)
}

/// A progress bar on a terminal, a line every few iterations (epochs) otherwise, nothing when
/// quiet; all on stderr. Minibatch runs count epochs and show the validation metric and η
/// when those drive early stopping or the schedule.
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    every: usize,
    epochs: bool,
    show_rate: bool,
    validation_label: &'static str,
    /// The first iteration with the lowest validation metric, and that metric: the θ early
    /// stopping restores.
    best_validation: Option<(usize, f64)>,
    last: Option<usize>,
}

impl Reporter {
    fn new(quiet: bool, iterations: usize, epochs: bool, show_rate: bool, validation_label: &'static str) -> Reporter {
        let terminal = std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let bar = indicatif::ProgressBar::new(iterations as u64);
            let unit = if epochs { "epochs" } else { "iterations" };
            bar.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "{{bar:40}} {{pos}}/{{len}} {unit} {{msg}} [{{elapsed_precise}}]"
                ))
                .expect("valid template"),
            );
            bar
        });
        Reporter {
            bar,
            plain: !quiet && !terminal,
            every: (iterations / 20).max(1),
            epochs,
            show_rate,
            validation_label,
            best_validation: None,
            last: None,
        }
    }

    /// Remembers a record's iteration and validation metric (for [`Reporter::kept`]).
    fn note(&mut self, record: &wgnn::optim::Record) {
        self.last = Some(record.iteration);
        if let Some(v) = record.validation
            && self.best_validation.is_none_or(|(_, best)| v < best)
        {
            self.best_validation = Some((record.iteration, v));
        }
    }

    fn update(&mut self, p: &Progress<'_>) {
        let Some(record) = p.record else { return };
        self.note(record);
        let mut extra = String::new();
        if let Some(v) = record.validation {
            extra += &format!("  {} {v:.6}", self.validation_label);
        }
        if self.epochs && self.show_rate {
            extra += &format!("  η = {:.3e}", record.step_size);
        }
        if let Some(bar) = &self.bar {
            bar.set_position(record.iteration as u64);
            bar.set_message(format!("J = {:.6}  ‖∇J‖ = {:.2e}{extra}", record.cost, record.grad_norm));
        } else if self.plain && record.iteration % self.every == 0 {
            if self.epochs {
                // An epoch's J and ‖∇J‖ are means over its minibatches, taken along the way.
                eprintln!(
                    "epoch {:>5}  mean J = {:<14.8}  mean ‖∇J‖ = {:.3e}{extra}  {:.1} s",
                    record.iteration, record.cost, record.grad_norm, record.seconds
                );
            } else {
                eprintln!(
                    "iteration {:>5}  J = {:<14.8}  ‖∇J‖ = {:.3e}  evaluations {}  {:.1} s",
                    record.iteration, record.cost, record.grad_norm, record.evaluations, record.seconds
                );
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// Which θ the run kept, in one line: the best validated one when early stopping restored
    /// it, else the last; and what the final cost is measured on.
    fn kept(&self, summary: &wgnn::optim::Summary) -> String {
        let unit = if self.epochs { "epoch" } else { "iteration" };
        let measured = "the final cost is J at that θ over all training examples";
        match (summary.reason, self.best_validation) {
            (wgnn::optim::StopReason::EarlyStopping, Some((at, v))) => format!(
                "kept     θ of {unit} {at}, the best {} ({v:.6}), restored at early stopping; {measured}",
                self.validation_label
            ),
            _ => {
                let at = self.last.unwrap_or(summary.iterations);
                let means = if self.epochs { " (epoch lines show means along each epoch)" } else { "" };
                format!("kept     θ of {unit} {at}, the last; {measured}{means}")
            }
        }
    }
}

/// `--compare-sparsity`: the same autoencoder job with β = 0 and with β, in two run folders,
/// and OUT/compare.png with both filter grids labelled (UFLDL's lecture notes show MNIST
/// filters learned with weight decay alone beside those learned with the sparsity penalty).
fn compare_sparsity(args: TrainArgs) -> anyhow::Result<()> {
    if args.kind != Kind::Autoencoder {
        bail!("--compare-sparsity compares sparse autoencoders: use it with `train autoencoder`");
    }
    if args.resume.is_some() {
        bail!("--compare-sparsity trains two new runs: it does not --resume (resume either folder on its own)");
    }
    if args.sparsity_weight <= 0.0 {
        bail!(
            "--compare-sparsity compares β = 0 with --sparsity-weight β: give a β above 0 (default 3), not {}",
            args.sparsity_weight
        );
    }
    let folder = match &args.out {
        Some(out) => RunFolder::open(out)?,
        None => (1..)
            .find_map(|n| RunFolder::create_new(&PathBuf::from(format!("runs/compare-sparsity-{n}"))).transpose())
            .expect("some number is free")?,
    };
    let base = folder.path().to_path_buf();
    let beta = args.sparsity_weight;
    let rho = args.sparsity.unwrap_or(0.01);
    let runs = [
        ("weight-decay", 0.0, "weight decay only (β = 0)".to_string()),
        ("sparse", beta, format!("sparse (ρ = {rho}, β = {beta})")),
    ];
    let (mut grids, mut times) = (Vec::new(), Vec::new());
    for (i, (name, weight, title)) in runs.iter().enumerate() {
        let dir = base.join(name);
        if !args.quiet {
            eprintln!("compare  {}/2: {title} → {}", i + 1, dir.display());
        }
        let one =
            TrainArgs { out: Some(dir.clone()), sparsity_weight: *weight, compare_sparsity: false, ..args.clone() };
        let started = std::time::Instant::now();
        run(one).with_context(|| format!("--compare-sparsity, {title}"))?;
        let seconds = started.elapsed().as_secs_f64();
        let ck = Checkpoint::load(&dir.join(MODEL_FILE))?;
        let whitening = wgnn::data::whiten::Whitening::from_preprocessing(&ck.metadata.preprocessing)?;
        let w1 = wgnn::model::ThetaLayout::new(&ck.spec).weight(&ck.theta, 0).to_owned();
        grids.push((wgnn::viz::filters_in_pixels(w1.view(), whitening.as_ref())?, title.clone()));
        times.push(format!("{name} {seconds:.1} s"));
    }
    let panels: Vec<(&image::GrayImage, &str)> = grids.iter().map(|(g, t)| (g, t.as_str())).collect();
    let path = base.join("compare.png");
    wgnn::viz::save_png(&wgnn::viz::side_by_side(&panels), &path)?;
    println!("compare  {} and {} (training wall time: {})", runs[0].0, runs[1].0, times.join(", "));
    println!("wrote    {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a run stores for --resume names its files absolutely, drops the flags of one
    /// invocation, and comes back through JSON unchanged; flags missing from an older record
    /// take their defaults.
    #[test]
    fn stored_flags_name_files_absolutely_and_read_back() {
        let mut args = TrainArgs::default();
        args.data.data = Some("npy:x.npy".into());
        args.data.targets = Some("columns:3-4".into());
        args.features_from = Some("runs/ae-1".into());
        args.out = Some("o".into());
        args.quiet = true;
        args.given = vec!["quiet".into()];
        let stored = stored_form(&args);
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(stored.data.data, Some(format!("npy:{}", cwd.join("x.npy").display())));
        assert_eq!(stored.data.targets.as_deref(), Some("columns:3-4"));
        assert_eq!(stored.features_from, Some(cwd.join("runs/ae-1")));
        assert!(stored.out.is_none() && !stored.quiet && stored.given.is_empty());
        let json = serde_json::to_value(&stored).unwrap();
        let back: TrainArgs = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), json);
        let old: TrainArgs = serde_json::from_str(r#"{"kind": "mlp", "seed": 7}"#).unwrap();
        assert_eq!((old.kind, old.seed, old.batch_size, old.iterations), (Kind::Mlp, 7, None, None));
    }

    /// `wgnn train --help` states the table of per-kind defaults the run reads
    /// (wgnn::estimator::Kind::defaults): a change to one without the other fails here.
    #[test]
    fn the_help_states_the_table_of_defaults() {
        use clap::Args as _;
        let mut command = TrainArgs::augment_args(clap::Command::new("train"));
        let help = command.render_long_help().to_string().split_whitespace().collect::<Vec<_>>().join(" ");
        let (ae, softmax, mlp, stacked, cnn) = (
            Kind::Autoencoder.defaults(),
            Kind::Softmax.defaults(),
            Kind::Mlp.defaults(),
            Kind::Stacked.defaults(),
            Kind::Cnn.defaults(),
        );
        let sizes = |h: &[usize]| h.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        let name = |s: Solver| format!("{:?}", OptimizerChoice::of(s)).to_lowercase();
        let rate = |s: Solver| s.learning_rate().unwrap();
        assert_eq!(ae.weight_decay, softmax.weight_decay);
        assert_eq!(ae.solver, softmax.solver);
        let stated = [
            format!("Default: {} (autoencoder), {} (mlp); softmax has none", sizes(ae.hidden), sizes(mlp.hidden)),
            format!("Default: {:e} (autoencoder, softmax), {:e} (mlp)", ae.weight_decay, mlp.weight_decay),
            format!("Default: {} (autoencoder), {} (stacked)", ae.sparsity.unwrap(), stacked.sparsity.unwrap()),
            format!("Default: {} (autoencoder, softmax), {} (mlp)", name(ae.solver), name(mlp.solver)),
            format!(
                "Default: {} (autoencoder), {} (softmax), {} (mlp)",
                ae.iterations, softmax.iterations, mlp.iterations
            ),
            format!("Default: {} (gd), {} (sgd), {} (adam)", rate(Solver::Gd), rate(Solver::Sgd), rate(Solver::Adam)),
            format!("Default: auto ({} for cnn)", cnn.batch_size),
        ];
        for s in stated {
            assert!(help.contains(&s), "`wgnn train --help` does not say `{s}`");
        }
        assert!(softmax.hidden.is_empty() && mlp.batch_size == wgnn::optim::Minibatch::DEFAULT_BATCH_SIZE);
    }

    #[test]
    fn schedules_parse_with_their_defaults() {
        let parse_schedule = |text: &str| parse_schedule(text, 1e-4);
        assert_eq!(parse_schedule("constant").unwrap(), Schedule::Constant);
        assert_eq!(parse_schedule("adaptive").unwrap(), Schedule::ADAPTIVE);
        assert_eq!(parse_schedule("invscaling").unwrap(), Schedule::InvScaling { power: 0.5 });
        assert_eq!(parse_schedule("invscaling:0.25").unwrap(), Schedule::InvScaling { power: 0.25 });
        let plateau = |factor, patience| Schedule::ReduceOnPlateau(Plateau { factor, patience, ..Plateau::default() });
        assert_eq!(parse_schedule("plateau").unwrap(), plateau(0.1, 10));
        assert_eq!(parse_schedule("plateau:0.1:1").unwrap(), plateau(0.1, 1));
        assert_eq!(parse_schedule("Plateau:0.5").unwrap(), plateau(0.5, 10));
        for bad in
            ["", "cosine", "constant:1", "adaptive:2", "plateau:2", "plateau:0.1:1.5", "plateau:x", "invscaling:-1"]
        {
            assert!(parse_schedule(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
