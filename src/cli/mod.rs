//! The `wgnn` command line: parses arguments, calls the library, prints. No maths here.
//! Every failure reaches `main` as one error whose message says what was wrong and what to do.

mod bench;
mod config;
mod convolve;
mod cost;
mod devices;
mod export;
mod gradcheck;
mod inspect;
mod predict;
mod ranks;
mod sample;
mod sequence;
mod stacked;
mod train;

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use wgnn::Backend;
use wgnn::model::{Activation, NetSpec, Output, Sparsity};

#[derive(Parser, Debug)]
#[command(name = "wgnn", version, about = "Train and check neural networks — sparse autoencoders, softmax regression, MLPs — on the CPU or any GPU wgpu reaches", long_about = None, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Settings from a JSON or TOML file (keys are flag names, e.g. {"iterations": 100,
    /// "hidden": [196]}); flags on the command line override them.
    #[arg(long, global = true)]
    pub config: Option<std::path::PathBuf>,
}

/// Parses the command line, with `--config` files expanded into flags first.
pub fn parse() -> anyhow::Result<Cli> {
    let args = config::expand(std::env::args_os().collect())?;
    let matches = Cli::command().try_get_matches_from(args).map_err(usage_error)?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(usage_error)?;
    // `train --resume` restores the run's own settings: it needs to know which flags the
    // user gave (on the command line or in a --config file), not just their values.
    if let (Command::Train(train), Some(("train", m))) = (&mut cli.command, matches.subcommand()) {
        train.given = m
            .ids()
            .filter(|id| m.value_source(id.as_str()) == Some(ValueSource::CommandLine))
            .map(|id| id.to_string())
            .collect();
    }
    Ok(cli)
}

/// Every subcommand takes negative numbers as values (`--weight-decay -1`), so they reach the
/// real check instead of clap's "unexpected argument" tip.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a network and write its run folder (model, metrics, loss curve, pictures). With
    /// no arguments: a sparse autoencoder learns edge filters from built-in synthetic images.
    #[command(allow_negative_numbers = true)]
    Train(Box<train::TrainArgs>),
    /// Evaluate the cost J(θ) (and optionally its gradient) of a network on data from .npy files.
    /// The last line printed is `cost <value>`.
    #[command(allow_negative_numbers = true)]
    Cost(cost::CostArgs),
    /// Check the analytic gradient against central differences (ε = 1e-4) on a random network
    /// and random data. The last line printed is `relative difference <value>`.
    #[command(allow_negative_numbers = true)]
    Gradcheck(gradcheck::GradcheckArgs),
    /// Draw what each hidden unit of a trained model learned, as a grid of tiles.
    #[command(allow_negative_numbers = true)]
    Visualize(inspect::VisualizeArgs),
    /// Draw examples (top row) above the model's reconstructions of them (bottom row).
    #[command(allow_negative_numbers = true)]
    Reconstruct(inspect::ReconstructArgs),
    /// Evaluate a trained model on data: cost, and the reconstruction error (autoencoders), R²
    /// (regressors, with --targets) or accuracy and a confusion matrix (classifiers).
    #[command(allow_negative_numbers = true)]
    Eval(inspect::EvalArgs),
    /// Run a trained model on new data (no labels needed) and write what it gives to a .npy
    /// or .csv file: labels and class probabilities (classifiers), predicted values
    /// (regressors), reconstructions or hidden features (autoencoders).
    #[command(allow_negative_numbers = true)]
    Predict(predict::PredictArgs),
    /// Write a trained model's θ as a .npy vector and its network as JSON, for other tools and
    /// `wgnn cost --theta`.
    Export(export::ExportArgs),
    /// Convolve the features a trained autoencoder learned on patches over whole images and pool
    /// them; writes a float32 .npy of images × features × pooled rows × pooled columns.
    #[command(allow_negative_numbers = true)]
    Convolve(convolve::ConvolveArgs),
    /// List every GPU adapter wgpu can see: name, API, type, driver and the limits that matter.
    #[command(allow_negative_numbers = true)]
    Devices(devices::DevicesArgs),
    /// Time matrix products and full cost-and-gradient steps on the CPU backend and a GPU
    /// adapter (median of repeated runs, to completion); a table with GPU/CPU ratios, or --json.
    #[command(allow_negative_numbers = true)]
    Bench(bench::BenchArgs),
    /// Print text drawn from a character-level language model (`train lstm --data
    /// text:FILE`), one character at a time from its own output: --length characters after
    /// --prime, at --temperature, the draws seeded by --seed.
    #[command(allow_negative_numbers = true)]
    Sample(sample::SampleArgs),
}

/// The exit codes scripts can rely on (README.md, "Exit codes"). 0 means the job did what
/// was asked.
pub mod exit_code {
    /// An error: bad input, a refused setting or folder, a file or device error.
    pub const ERROR: u8 = 1;
    /// The command line itself is not valid (an unknown flag, a value out of range): clap's
    /// verdict, as one line.
    pub const USAGE: u8 = 2;
    /// Training ran but failed numerically (a NaN or infinite cost, divergence): the θ kept is
    /// in the run's checkpoint.safetensors, and there is no model.safetensors.
    pub const DIVERGED: u8 = 3;
    /// Stopped by Ctrl-C (SIGINT) after saving: 128 + 2, as a shell reports a SIGINT death.
    pub const INTERRUPTED: u8 = 130;
}

/// An error that ends the program with its own exit code instead of [`exit_code::ERROR`].
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    pub fn diverged(message: String) -> Exit {
        Exit { code: exit_code::DIVERGED, message }
    }

    pub fn interrupted(message: String) -> Exit {
        Exit { code: exit_code::INTERRUPTED, message }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

/// clap's verdict on the command line as one line with exit code [`exit_code::USAGE`]; help
/// and version requests are printed whole and exit 0, as clap does.
fn usage_error(e: clap::Error) -> anyhow::Error {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    // clap renders "error: WHAT\n  [possible values: …]\n\n  tip: …\n\nUsage: …\n\nFor more
    // information, try '--help'.": keep what comes before "Usage:", joined into one line.
    let text = e.render().to_string();
    let parts: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    let what = parts.join("; ");
    let what = what.strip_prefix("error:").unwrap_or(&what).trim();
    let what = if what.is_empty() { "the command line is not valid" } else { what };
    Exit { code: exit_code::USAGE, message: wgnn::one_line(&format!("{what} (see wgnn --help)")) }.into()
}

/// Refuses an output path that names one of the command's input files (`wgnn predict --data
/// npy:X.npy --out X.npy` overwrote its own data): inputs are given as `PATH` or `KIND:PATH`
/// (`npy:X.npy`, `csv:F.csv`). Compared as canonical paths, so `./X.npy` and `X.npy` are one.
pub fn refuse_overwriting_inputs<'a>(
    flag: &str,
    out: &std::path::Path,
    inputs: impl IntoIterator<Item = &'a str>,
) -> anyhow::Result<()> {
    let Ok(out_canonical) = out.canonicalize() else { return Ok(()) }; // not there yet: no input
    for input in inputs {
        let path = input.split_once(':').filter(|(kind, _)| kind.len() > 1).map_or(input, |(_, p)| p);
        if std::path::Path::new(path).canonicalize().is_ok_and(|p| p == out_canonical) {
            bail!("{flag} {} is also an input of this command: write the output to another file", out.display());
        }
    }
    Ok(())
}

/// The exit code for an error that reached `main`.
pub fn code_of(error: &anyhow::Error) -> u8 {
    error.downcast_ref::<Exit>().map_or(exit_code::ERROR, |e| e.code)
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // Under mpirun only `wgnn train` of an MPI build runs as ranks; the rest is refused.
    ranks::refuse_under_mpirun(&cli.command)?;
    match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Cost(args) => cost::run(args),
        Command::Gradcheck(args) => gradcheck::run(args),
        Command::Devices(args) => devices::run(args),
        Command::Convolve(args) => convolve::run(args),
        Command::Visualize(args) => inspect::visualize(args),
        Command::Reconstruct(args) => inspect::reconstruct(args),
        Command::Eval(args) => inspect::eval(args),
        Command::Predict(args) => predict::run(args),
        Command::Export(args) => export::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Sample(args) => sample::run(args),
    }
}

/// The network, as flags shared by every command that builds one.
#[derive(Args, Debug, Clone)]
pub struct NetArgs {
    /// Layer sizes from input to output, e.g. 64,25,64 (a 64-25-64 autoencoder) or 784,10.
    #[arg(long, value_delimiter = ',', default_value = "64,25,64", value_parser = layer_size)]
    pub layers: Vec<usize>,
    /// Hidden activation: sigmoid, tanh, relu, leaky-relu[:ALPHA] (α defaults to 0.01) or
    /// identity. One name for every hidden layer, or a comma-separated list, one per hidden layer.
    #[arg(long, value_delimiter = ',', default_value = "sigmoid")]
    pub activation: Vec<String>,
    /// Output layer: an activation name (squared-error loss), softmax (cross-entropy loss
    /// on class labels) or sigmoid-bce (binary cross-entropy on 0/1 targets).
    #[arg(long, default_value = "sigmoid")]
    pub output: String,
    /// L2 weight decay λ on the weights (never the biases).
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Target mean activation ρ of the first hidden layer: turns on the KL sparsity penalty
    /// (needs a sigmoid first hidden layer).
    #[arg(long)]
    pub sparsity: Option<f64>,
    /// Weight β of the sparsity penalty (used with --sparsity).
    #[arg(long, default_value_t = 3.0, requires = "sparsity")]
    pub sparsity_weight: f64,
    /// A stack of layers instead of --layers, comma-separated, ending in the output and its
    /// size: conv FxKxK ACT [stride S] [pad P], maxpool K [stride S], meanpool K [stride S],
    /// dense N ACT, maxout UNITSxPIECES, then softmax N (or ACT N: squared error), e.g.
    /// "conv 4x3x3 relu, maxpool 2, dense 16 tanh, softmax 10". Needs --input-shape.
    #[arg(long, conflicts_with_all = ["layers", "activation", "output", "sparsity"])]
    pub net: Option<String>,
    /// The shape of one example for --net: CHANNELSxHEIGHTxWIDTH, e.g. 1x28x28.
    #[arg(long, requires = "net")]
    pub input_shape: Option<String>,
}

impl NetArgs {
    pub fn spec(&self) -> anyhow::Result<NetSpec> {
        if let Some(text) = &self.net {
            let Some(shape) = &self.input_shape else {
                bail!(
                    "--net needs --input-shape CHANNELSxHEIGHTxWIDTH (e.g. 1x28x28): there is no data to read it from"
                );
            };
            let input = wgnn::model::InputShape::parse(shape).context("--input-shape")?;
            let parsed = wgnn::model::parse_net(text)?;
            let Some(outputs) = parsed.outputs else {
                bail!(
                    "--net: give the output's size, e.g. `{} 10`: there is no data to read it from",
                    parsed.output.name()
                );
            };
            let stack = wgnn::model::LayerStack { input, layers: parsed.layers };
            return Ok(NetSpec::stack(stack, outputs, parsed.output)?.with_weight_decay(self.weight_decay)?);
        }
        let hidden = self.layers.len().saturating_sub(2);
        let acts = self.activation.iter().map(|a| Activation::parse(a)).collect::<Result<Vec<_>, _>>()?;
        let hidden_activations = match acts.len() {
            1 => vec![acts[0]; hidden],
            n if n == hidden => acts,
            n => bail!(
                "--activation lists {n} activations but --layers has {hidden} hidden layers: give one, or one per hidden layer"
            ),
        };
        let spec = NetSpec {
            layers: self.layers.clone(),
            hidden_activations,
            output: Output::parse(&self.output)?,
            weight_decay: self.weight_decay,
            sparsity: self.sparsity.map(|target| Sparsity { target, weight: self.sparsity_weight }),
            net: None,
        };
        spec.validate()?;
        Ok(spec)
    }
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// A hardware GPU when wgpu finds one, otherwise the CPU backend (a software Vulkan
    /// adapter such as lavapipe is slower than the CPU backend, so auto never picks it).
    Auto,
    /// The CPU backend (ndarray).
    Cpu,
    /// The GPU backend on the best adapter, even a software one.
    Gpu,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    F32,
    F64,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuApi {
    Auto,
    Vulkan,
    Metal,
    Dx12,
    Gl,
}

/// Where the network is computed. Serde: `train` stores its flags in the checkpoint
/// (`--resume`).
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendArgs {
    /// Which backend computes: auto uses a hardware GPU when there is one, else the CPU.
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Precision of the CPU backend: f64 is the reference, f32 the fast path. Default: f32
    /// for train, f64 for cost and gradcheck. The GPU computes in f32.
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,
    /// Graphics API to look for GPUs through (auto: Vulkan, Metal or DX12, then GL).
    #[arg(long, value_enum, default_value_t = GpuApi::Auto)]
    pub gpu_api: GpuApi,
    /// Use the GPU adapter whose name contains this text (see `wgnn devices`); also read
    /// from the environment variable WGNN_ADAPTER.
    #[arg(long)]
    pub adapter: Option<String>,
}

impl Default for BackendArgs {
    fn default() -> BackendArgs {
        defaults()
    }
}

impl Default for DataArgs {
    fn default() -> DataArgs {
        defaults()
    }
}

/// Flags `T` with every value at its default, as an empty command line gives them.
pub fn defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("wgnn"));
    T::from_arg_matches(&command.get_matches_from(["wgnn"])).expect("every flag has a default")
}

impl BackendArgs {
    pub fn gpu_options(&self) -> wgnn::gpu::GpuOptions {
        let api = match self.gpu_api {
            GpuApi::Auto => wgnn::gpu::Api::Auto,
            GpuApi::Vulkan => wgnn::gpu::Api::Vulkan,
            GpuApi::Metal => wgnn::gpu::Api::Metal,
            GpuApi::Dx12 => wgnn::gpu::Api::Dx12,
            GpuApi::Gl => wgnn::gpu::Api::Gl,
        };
        wgnn::gpu::GpuOptions { api, adapter: self.adapter.clone(), matmul: None }
    }

    /// The backend the flags ask for, with `precision` unless --precision says otherwise;
    /// `auto` says on stderr why it chose the CPU, once per command however many backends it
    /// builds (commands with --quiet use [`BackendArgs::build_quietly`] and decide themselves).
    pub fn build(&self, spec: NetSpec, precision: Precision) -> anyhow::Result<Box<dyn Backend>> {
        static NOTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        let (backend, note) = self.build_quietly(spec, precision)?;
        if let Some(note) = note
            && !NOTED.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            eprintln!("note: {note}");
        }
        Ok(backend)
    }

    /// As [`BackendArgs::build`], returning the note about `auto`'s choice instead of printing it.
    pub fn build_quietly(
        &self,
        spec: NetSpec,
        precision: Precision,
    ) -> anyhow::Result<(Box<dyn Backend>, Option<String>)> {
        // The one choice the library's estimators make too (wgnn::estimator::build_backend).
        let choice = match self.backend {
            BackendChoice::Auto => wgnn::estimator::BackendChoice::Auto,
            BackendChoice::Cpu => wgnn::estimator::BackendChoice::Cpu,
            BackendChoice::Gpu => wgnn::estimator::BackendChoice::Gpu,
        };
        let precision = match self.precision.unwrap_or(precision) {
            Precision::F32 => wgnn::estimator::Precision::F32,
            Precision::F64 => wgnn::estimator::Precision::F64,
        };
        Ok(wgnn::estimator::build_backend(choice, spec, precision, &self.gpu_options())?)
    }

    /// True when the chosen backend is the f64 CPU reference itself.
    pub fn is_reference(&self, backend: &dyn Backend) -> bool {
        backend.name() == "cpu f64"
    }
}

/// Where examples come from, as flags shared by every command that reads data. Serde: `train`
/// stores its flags in the checkpoint (`--resume`).
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DataArgs {
    /// Examples: synthetic (built-in images, cut into patches), mnist:DIR, patches:DIR (a
    /// folder of PNG/JPEG photographs), npy:FILE (with --labels or --targets), csv:FILE (label
    /// in the last column); a bare .npy or .csv file (.csv.gz too) reads as npy:/csv:. Default:
    /// synthetic.
    #[arg(long)]
    pub data: Option<String>,
    /// Side of the square patches cut from synthetic or patches: images.
    #[arg(long, default_value_t = 8, value_parser = patch_side)]
    pub patch: usize,
    /// Number of patches to cut from synthetic or patches: data (default 10,000).
    #[arg(long, value_parser = count)]
    pub count: Option<usize>,
    /// Keep only these labels, e.g. 5-9 or 0,2,4 (labelled data).
    #[arg(long)]
    pub digits: Option<String>,
    /// MNIST split: train or test.
    #[arg(long)]
    pub split: Option<String>,
    /// Use only the first N examples (after --digits): the first N rows of the data and,
    /// alike, of --labels and --targets. Those files hold one row per example of the data
    /// file, or exactly N rows (then they are the kept examples' rows; not with --digits,
    /// where that would be ambiguous); any other count is refused.
    #[arg(long, value_parser = limit)]
    pub limit: Option<usize>,
    /// Class labels for npy: data, one per example: npy:FILE (an integer vector), csv:FILE
    /// (one label per line), or a bare .npy or .csv file. Labels may be numbers or names.
    /// For sequences m × T × n: one per sequence (a vector of m) or one per step (a .npy
    /// matrix m × T: a softmax at every step).
    #[arg(long)]
    pub labels: Option<std::path::PathBuf>,
    /// csv: data only: the column holding the class label — last, first, a number counted
    /// from 1, or none (every column is a value).
    #[arg(long, default_value = "last")]
    pub label_column: String,
    /// Real-valued targets for regression (`train mlp`, `eval`), one row per example:
    /// npy:FILE (a float matrix, rows × outputs, or a vector), csv:FILE (numbers only), a
    /// bare .npy or .csv file, or
    /// columns:SPEC — columns of the --data file itself, counted from 1 as in the file, e.g.
    /// columns:33-64; they are taken out of the inputs (a CSV's label column is dropped).
    /// With --output sigmoid-bce: the 0/1 targets, one column per label (multi-label). For
    /// `train lstm|rnn` on npy:X.npy (m × T × n): npy:Y.npy of m × T × k, real targets at
    /// every step (a per-step regressor).
    #[arg(long)]
    pub targets: Option<String>,
    /// Read images as sequences for `train lstm|rnn`: rows (an h × w image is h steps of w
    /// pixels: MNIST row by row, 28 steps of 28).
    #[arg(long)]
    pub sequence: Option<String>,
}

impl DataArgs {
    /// Loads the examples; `seed` drives patch sampling and the synthetic images.
    pub fn load(&self, seed: u64) -> anyhow::Result<(wgnn::data::DataSource, wgnn::data::Dataset)> {
        self.load_counting(seed, 10_000)
    }

    /// As [`DataArgs::load`], cutting `default_count` patches unless --count says otherwise.
    pub fn load_counting(
        &self,
        seed: u64,
        default_count: usize,
    ) -> anyhow::Result<(wgnn::data::DataSource, wgnn::data::Dataset)> {
        use wgnn::data::{DataSource, Digits, LoadOptions, Split};
        let source: DataSource = match &self.data {
            Some(d) => d.parse().context("--data")?,
            None => DataSource::Synthetic,
        };
        if let Some(labels) = &self.labels {
            wgnn::data::FileArg::parse(&labels.to_string_lossy(), None).context("--labels")?;
        }
        let options = LoadOptions {
            patch_size: self.patch,
            patch_count: self.count.unwrap_or(default_count),
            seed,
            digits: self.digits.as_deref().map(str::parse::<Digits>).transpose().context("--digits")?,
            split: self.split.as_deref().map(str::parse::<Split>).transpose().context("--split")?,
            limit: self.limit,
            labels: self.labels.clone(),
            targets: self.targets.as_deref().map(str::parse).transpose().context("--targets")?,
            label_column: self.label_column.parse().context("--label-column")?,
        };
        // A .npy of three axes holds sequences (m × T × n) for a recurrent model (issue 16).
        if let DataSource::Npy(path) = &source
            && wgnn::data::sequence::is_sequence_npy(path)
        {
            if options.digits.is_some() {
                bail!(
                    "--digits keeps the examples of some classes of 2-D data; it does not filter sequences (m × T × n): \
                     keep the sequences you want in the file, or use --limit"
                );
            }
            let targets = match &options.targets {
                Some(wgnn::data::TargetSource::Npy(t)) => Some(t.as_path()),
                Some(other) => bail!("--targets {other}: sequences take per-step targets as npy:FILE (m × T × k)"),
                None => None,
            };
            let seq = wgnn::data::sequence::load_npy_sequences_limited(
                path,
                options.labels.as_deref(),
                targets,
                options.limit,
            )
            .with_context(|| format!("loading --data {source}"))?;
            return Ok((source, seq.data));
        }
        let data = source.load(&options).with_context(|| format!("loading --data {source}"))?;
        Ok((source, data))
    }
}

/// Refuses sequences (a `.npy` of m × T × n) whose T or n differ from the recurrent model's,
/// in one line naming both: the rows the networks read are m × (T·n), so 120 × 8 × 3 would
/// otherwise pass for a model of 6 steps of 4 values. Other sources and models pass.
pub fn check_sequence_input(source: &wgnn::data::DataSource, spec: &wgnn::model::NetSpec) -> anyhow::Result<()> {
    let wgnn::data::DataSource::Npy(path) = source else { return Ok(()) };
    let Some(stack) = spec.net.as_ref().filter(|s| s.layers.first().is_some_and(|l| l.is_recurrent())) else {
        return Ok(());
    };
    if let Some(shape) = wgnn::data::sequence::npy_sequence_shape(path)
        && wgnn::model::InputShape::sequence(shape.steps, shape.features) != stack.input
    {
        bail!(
            "{} holds sequences of {} steps of {} values, but the model reads {}: give sequences like its training data",
            path.display(),
            shape.steps,
            shape.features,
            spec.input_text()
        );
    }
    Ok(())
}

/// A whole number from `low` to `high` for the flag `what`, or one line saying why not:
/// sizes from the command line are bounded where they are parsed, before anything is
/// allocated from them.
fn bounded(text: &str, low: usize, high: usize, what: &str) -> Result<usize, String> {
    let n: u128 = text.trim().parse().map_err(|_| format!("`{text}` is not a whole number ({what})"))?;
    if n < low as u128 || n > high as u128 {
        let range = if low == 0 { format!("at most {high}") } else { format!("from {low} to {high}") };
        return Err(format!("{n} is out of range: {what} must be {range}"));
    }
    Ok(n as usize)
}

/// The most units a layer may have on the command line (--hidden, --layers): 2²⁴.
pub const MAX_LAYER_SIZE: usize = 1 << 24;

// Zero passes these parsers: the library refuses it with a message that says what it means
// (a layer of size 0, a limit of 0 examples); they bound the top, which nothing else does
// before memory is sized from it.

/// A layer size for --hidden and --layers: at most [`MAX_LAYER_SIZE`].
pub fn layer_size(text: &str) -> Result<usize, String> {
    bounded(text, 0, MAX_LAYER_SIZE, "a layer size")
}

/// --patch: a patch side of at most 4096 pixels.
fn patch_side(text: &str) -> Result<usize, String> {
    bounded(text, 0, 4096, "the patch side in pixels")
}

/// --count: at most 2²⁹ (the most values a set of patches may hold, see
/// `wgnn::data::patches::MAX_PATCH_VALUES`, which also bounds count × patch²).
fn count(text: &str) -> Result<usize, String> {
    bounded(text, 0, wgnn::data::patches::MAX_PATCH_VALUES, "the count")
}

/// --limit: at most 2³² examples.
pub fn limit(text: &str) -> Result<usize, String> {
    bounded(text, 0, 1 << 32, "the limit (a number of examples)")
}

/// The finished model file `flag PATH` names ([`wgnn::predict::model_file`]: a file, a run
/// folder or a `train stacked` folder); its error says the flag and the path once.
pub fn model_file_for(flag: &str, path: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    wgnn::predict::model_file(path).map_err(|e| match e {
        wgnn::Error::File { message, .. } => anyhow::anyhow!("{flag} {}: {message}", path.display()),
        other => other.into(),
    })
}

/// A file given as `FILE` or `npy:FILE` ([`wgnn::data::FileArg`], a bare FILE of any other
/// extension read as .npy); refuses `csv:FILE`, which this flag does not read.
pub fn npy_path(arg: &str) -> anyhow::Result<std::path::PathBuf> {
    let file = wgnn::data::FileArg::parse(arg, Some(wgnn::data::FileFormat::Npy))?;
    if file.format != wgnn::data::FileFormat::Npy {
        bail!("{arg}: this flag reads a .npy file; convert the CSV with numpy.save, or give npy:FILE");
    }
    let path = file.path;
    if !path.exists() {
        bail!("{}: no such file", path.display());
    }
    Ok(path)
}

/// θ from a .npy vector, checked finite.
pub fn read_theta(arg: &str) -> anyhow::Result<Vec<f64>> {
    let path = npy_path(arg)?;
    if path.is_dir() {
        bail!(
            "{}: a folder, not a .npy vector of θ; for a run folder, `wgnn export --model {} --out DIR` writes DIR/theta.npy",
            path.display(),
            path.display()
        );
    }
    let theta = wgnn::npy::read_vector(&path).context("reading θ")?;
    if let Some(i) = theta.iter().position(|v| !v.is_finite()) {
        bail!("{}: θ[{i}] is {}; θ must be finite", path.display(), theta[i]);
    }
    Ok(theta.to_vec())
}
