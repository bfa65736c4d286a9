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

use wgnn::checkpoint::Checkpoint;
use wgnn::model::{Activation, Init, NetSpec, Output, Sparsity};
use wgnn::optim::{Lbfgs, Method, Minibatch, Progress, UpdateRule};
use wgnn::train::{TrainJob, train};

use super::{BackendArgs, DataArgs};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A sparse autoencoder n-h-n (sigmoid, KL sparsity): learns features without labels.
    Autoencoder,
    /// Softmax regression: one softmax layer on the raw inputs (needs labels).
    Softmax,
    /// A multilayer perceptron: hidden layers and a softmax output (needs labels).
    Mlp,
    /// A stacked autoencoder (needs labels): sparse autoencoders trained greedily layer by
    /// layer (--hidden 200,200, ρ = 0.1, λ = 3e-3), a softmax on the last features, then the
    /// whole stack fine-tuned by backpropagation. Writes one folder per stage.
    Stacked,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerChoice {
    /// L-BFGS with a strong-Wolfe line search (full batch).
    Lbfgs,
    /// Nonlinear conjugate gradient, Polak–Ribière+ (full batch).
    Cg,
    /// Gradient descent with a fixed learning rate (full batch).
    Gd,
    /// Minibatch SGD with Nesterov momentum 0.9.
    Sgd,
    /// Minibatch Adam (β₁ 0.9, β₂ 0.999).
    Adam,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhitenChoice {
    /// ZCA: decorrelated, unit variance, as close to the original pixels as possible.
    Zca,
    /// PCA: coordinates on the principal components, unit variance.
    Pca,
}

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// What to train.
    #[arg(value_enum, default_value_t = Kind::Autoencoder)]
    pub kind: Kind,
    #[command(flatten)]
    pub data: DataArgs,
    /// Labelled test examples to report `test_accuracy` on (softmax, mlp): a data source as
    /// for --data; for mnist: the test split is used. Same --digits and --limit as --data.
    #[arg(long)]
    pub test_data: Option<String>,
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
    #[arg(long, value_delimiter = ',')]
    pub hidden: Option<Vec<usize>>,
    /// Hidden activation (sigmoid, tanh, relu, leaky-relu[:α], identity). Default: sigmoid
    /// (autoencoder), relu (mlp).
    #[arg(long)]
    pub activation: Option<String>,
    /// Autoencoder output activation.
    #[arg(long, default_value = "sigmoid")]
    pub output: String,
    /// L2 weight decay λ. Default: 1e-4 (autoencoder, softmax), 1e-5 (mlp).
    #[arg(long)]
    pub weight_decay: Option<f64>,
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
    /// Minibatch size for sgd and adam.
    #[arg(long, default_value_t = 200)]
    pub batch_size: usize,
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
    /// Save the model every N iterations as well as at the end (and on Ctrl-C).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Continue the run saved in this folder (same network and data options).
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Where to write the run. Default: runs/<kind>-N (the first unused N).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
}

pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Autoencoder => "autoencoder",
        Kind::Softmax => "softmax",
        Kind::Mlp => "mlp",
        Kind::Stacked => "stacked",
    }
}

pub fn default_out(kind: Kind) -> PathBuf {
    let name = kind_name(kind);
    (1..).map(|n| PathBuf::from(format!("runs/{name}-{n}"))).find(|p| !p.exists()).expect("some number is free")
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let say = |s: String| {
        if !args.quiet {
            eprintln!("{s}");
        }
    };
    // Files named on the command line are read first, so a typo fails before any work.
    let (init, initial_theta) = match args.init.as_str() {
        "uniform" => (Init::Uniform, None),
        "normal" => (Init::DEFAULT_NORMAL, None),
        path => (Init::Uniform, Some(super::read_theta(path).context("--init")?)),
    };
    let resume = args.resume.as_ref().map(|dir| Checkpoint::load(&dir.join("model.safetensors"))).transpose()?;

    // Data.
    if args.data.data.is_none() && args.kind != Kind::Autoencoder {
        bail!(
            "{} needs labelled data: give --data mnist:DIR (e.g. --data mnist:../shared/data/mnist)",
            kind_name(args.kind)
        );
    }
    let (source, mut data) = args.data.load(args.seed)?;
    say(format!("data     {}", data.description));
    let mut test = match &args.test_data {
        Some(t) => {
            let mut test_args = args.data.clone();
            test_args.data = Some(t.clone());
            if t.starts_with("mnist:") {
                test_args.split = Some("test".into());
            }
            let (_, d) = test_args.load(args.seed).context("--test-data")?;
            let labels = d.labels.clone().context("--test-data has no labels")?;
            say(format!("test     {}", d.description));
            Some((d.x, labels))
        }
        None => None,
    };
    if let Some(path) = &args.features_from {
        let ck = super::inspect::load_model(path)?;
        let (mut encoder, _) = args.backend.build_quietly(ck.spec.clone(), super::Precision::F32)?;
        data.x = wgnn::train::hidden_features(encoder.as_mut(), &ck.theta, &data.x).context("--features-from")?;
        if let Some((x, _)) = test.as_mut() {
            *x = wgnn::train::hidden_features(encoder.as_mut(), &ck.theta, x)?;
        }
        data.image_shape = None;
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
    let n = data.num_features();
    if args.kind == Kind::Stacked {
        let out_dir = args.out.clone().unwrap_or_else(|| default_out(args.kind));
        return super::stacked::run(&args, &data, test, &out_dir);
    }

    // Network.
    let activation = |default: Activation| -> anyhow::Result<Activation> {
        Ok(args.activation.as_deref().map(Activation::parse).transpose()?.unwrap_or(default))
    };
    let spec = match args.kind {
        Kind::Autoencoder => {
            let hidden = args.hidden.clone().unwrap_or(vec![25]);
            let mut layers = vec![n];
            layers.extend(&hidden);
            layers.push(n);
            let rho = args.sparsity.unwrap_or(0.01);
            let sparsity = (rho > 0.0).then_some(Sparsity { target: rho, weight: args.sparsity_weight });
            NetSpec::new(&layers, activation(Activation::Sigmoid)?, Output::parse(&args.output)?)?
                .with_weight_decay(args.weight_decay.unwrap_or(1e-4))?
                .with_sparsity(sparsity)?
        }
        Kind::Softmax | Kind::Mlp | Kind::Stacked => {
            let classes = data.num_classes().context("this data has no labels: softmax and mlp need them")?;
            let hidden = match args.kind {
                Kind::Softmax => args.hidden.clone().unwrap_or_default(),
                _ => args.hidden.clone().unwrap_or(vec![256, 128]),
            };
            let mut layers = vec![n];
            layers.extend(&hidden);
            layers.push(classes);
            let lambda = args.weight_decay.unwrap_or(if args.kind == Kind::Mlp { 1e-5 } else { 1e-4 });
            NetSpec::new(&layers, activation(Activation::Relu)?, Output::Softmax)?.with_weight_decay(lambda)?
        }
    };
    let params = wgnn::model::ThetaLayout::new(&spec).len();
    say(format!("network  {} ({params} parameters)", spec.describe()));

    // Optimizer.
    let choice =
        args.optimizer.unwrap_or(if args.kind == Kind::Mlp { OptimizerChoice::Adam } else { OptimizerChoice::Lbfgs });
    let iterations = args.iterations.unwrap_or(match args.kind {
        Kind::Autoencoder => 400,
        Kind::Softmax => 100,
        Kind::Mlp | Kind::Stacked => 30,
    });
    let minibatch = |rule: UpdateRule, lr: f64| {
        Method::Minibatch(
            Minibatch::sgd(args.learning_rate.unwrap_or(lr))
                .with_rule(rule)
                .with_batch_size(args.batch_size)
                .with_seed(args.seed),
        )
    };
    let method = match choice {
        OptimizerChoice::Lbfgs => {
            let memory = args.lbfgs_memory.unwrap_or(if params <= 50_000 { 100 } else { 10 });
            Method::Lbfgs(Lbfgs::default().with_memory(memory))
        }
        OptimizerChoice::Cg => Method::cg(),
        OptimizerChoice::Gd => Method::gradient_descent(args.learning_rate.unwrap_or(0.1)),
        OptimizerChoice::Sgd => minibatch(UpdateRule::NESTEROV, 0.01),
        OptimizerChoice::Adam => minibatch(UpdateRule::ADAM, 0.001),
    };
    method.validate()?;
    let stop = method.default_stop().with_max_iterations(iterations);

    let out_dir = match (&args.out, &args.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => r.clone(),
        (None, None) => default_out(args.kind),
    };
    let (mut backend, note) = args.backend.build_quietly(spec.clone(), super::Precision::F32)?;
    if let Some(note) = note {
        say(format!("note: {note}"));
    }
    say(format!("backend  {}", backend.name()));
    say(format!(
        "training {} for up to {iterations} {}",
        method.name(),
        if matches!(method, Method::Minibatch(_)) { "epochs" } else { "iterations" }
    ));

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
        data_description: data.description.clone(),
        image_shape: data.image_shape,
        preprocessing: serde_json::json!({
            "source": source.to_string(),
            "patch": args.data.patch,
            "count": args.data.count.unwrap_or(10_000),
            "features_from": args.features_from.as_ref().map(|p| p.display().to_string()),
            "whitening": whitening,
        }),
        test_set: test,
    };

    // Ctrl-C stops after the current step; the run is saved and can be resumed.
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupt.clone();
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    }
    let mut reporter = Reporter::new(args.quiet, iterations);
    let outcome =
        train(job, backend.as_mut(), &data.x, data.labels.as_deref(), &mut |p| reporter.update(p), &interrupt);
    reporter.finish();
    let outcome = outcome?;

    let s = &outcome.summary;
    if outcome.interrupted {
        say(format!(
            "interrupted after {} iterations; resume with: wgnn train {} --resume {}",
            s.iterations,
            kind_name(args.kind),
            out_dir.display()
        ));
    }
    say(format!(
        "done     {} iterations, {} evaluations, {:.1} s: {}",
        s.iterations, s.evaluations, s.seconds, s.reason
    ));
    say(format!("final cost {}", outcome.final_cost));
    if let Some(a) = outcome.test_accuracy {
        say(format!("test accuracy {:.2}%", 100.0 * a));
    }
    for f in &outcome.files {
        say(format!("wrote    {}", f.display()));
    }
    Ok(())
}

/// A progress bar on a terminal, a line every few iterations otherwise, nothing when quiet.
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    every: usize,
}

impl Reporter {
    fn new(quiet: bool, iterations: usize) -> Reporter {
        let terminal = std::io::stderr().is_terminal();
        let bar = (!quiet && terminal).then(|| {
            let bar = indicatif::ProgressBar::new(iterations as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed_precise}]")
                    .expect("valid template"),
            );
            bar
        });
        Reporter { bar, plain: !quiet && !terminal, every: (iterations / 20).max(1) }
    }

    fn update(&mut self, p: &Progress<'_>) {
        let Some(record) = p.record else { return };
        if let Some(bar) = &self.bar {
            bar.set_position(record.iteration as u64);
            bar.set_message(format!("J = {:.6}  ‖∇J‖ = {:.2e}", record.cost, record.grad_norm));
        } else if self.plain && record.iteration % self.every == 0 {
            eprintln!(
                "iteration {:>5}  J = {:<14.8}  ‖∇J‖ = {:.3e}  evaluations {}  {:.1} s",
                record.iteration, record.cost, record.grad_norm, record.evaluations, record.seconds
            );
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
