//! `wgnn visualize`, `wgnn reconstruct` and `wgnn eval`: looking at a trained model.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use wgnn::checkpoint::Checkpoint;
use wgnn::model::{Output, ThetaLayout};
use wgnn::{Batch, Targets, viz};

use super::{BackendArgs, DataArgs, Precision};

/// A model file, a run folder holding `model.safetensors`, or a `train stacked` folder (its
/// fine-tuned stack).
pub fn load_model(path: &Path) -> anyhow::Result<Checkpoint> {
    if path.is_dir() && !path.join("model.safetensors").exists() && path.join("layer1").is_dir() {
        let file = super::model_file_for("--model", path)?;
        return Ok(Checkpoint::load(&file)?);
    }
    if path.is_dir()
        && let Some(why) = wgnn::train::unfinished_reason(path)
    {
        bail!("--model {}: this run did not finish: {why}", path.display());
    }
    let file = if path.is_dir() { path.join("model.safetensors") } else { path.to_path_buf() };
    if !file.exists() {
        bail!("--model {}: no such file (give a model.safetensors or the run folder holding one)", path.display());
    }
    Ok(Checkpoint::load(&file)?)
}

/// The whitening stored under `preprocessing.whitening`, if any.
pub fn stored_whitening(ck: &Checkpoint) -> anyhow::Result<Option<wgnn::data::whiten::Whitening>> {
    Ok(wgnn::data::whiten::Whitening::from_preprocessing(&ck.metadata.preprocessing)?)
}

/// Data prepared as the model's training data was: through every stage stored with it
/// (`--features-from`'s encoder, whitening: [`wgnn::predict::Model::prepare`]).
fn prepared(ck: &Checkpoint, x: ndarray::Array2<f32>, backend: &BackendArgs) -> anyhow::Result<ndarray::Array2<f32>> {
    let model = wgnn::predict::Model::from_checkpoint(ck)?;
    if model.stages.is_empty() {
        return Ok(x);
    }
    let mut backends = |spec: &wgnn::model::NetSpec| -> wgnn::Result<Box<dyn wgnn::Backend>> {
        backend
            .build_quietly(spec.clone(), Precision::F32)
            .map(|(b, _)| b)
            .map_err(|e| wgnn::Error::Data(format!("{e:#}")))
    };
    Ok(model.prepare(&x, &mut backends)?)
}

/// Warns on stderr when an autoencoder trained on whitened inputs has an output activation
/// that cannot reach them: whitened values are centred with unit variance, about half of them
/// negative and many beyond ±1, outside a sigmoid's (0, 1), a tanh's (−1, 1) and a ReLU's
/// [0, ∞). Such a network cannot reconstruct its inputs and its filters come out as noise;
/// a linear decoder (--output identity) can.
pub fn warn_whitened_range(spec: &wgnn::model::NetSpec, whitened_autoencoder: bool) {
    use wgnn::model::Activation;
    let range = match spec.output {
        Output::SquaredError(Activation::Sigmoid) => "(0, 1)",
        Output::SquaredError(Activation::Tanh) => "(−1, 1)",
        Output::SquaredError(Activation::Relu) => "[0, ∞)",
        _ => return,
    };
    if whitened_autoencoder {
        eprintln!(
            "warning: --whiten with this output: whitened values are centred with unit variance, not in the output's range {range}, so the network cannot reconstruct them and its filters will look like noise; use --output identity (a linear decoder)"
        );
    }
}

#[derive(Args, Debug)]
pub struct VisualizeArgs {
    /// The trained model: a model.safetensors file or its run folder.
    #[arg(long)]
    pub model: PathBuf,
    /// Where to write the PNG.
    #[arg(long, default_value = "filters.png")]
    pub out: PathBuf,
}

pub fn visualize(args: VisualizeArgs) -> anyhow::Result<()> {
    let ck = load_model(&args.model)?;
    if ck.spec.has_layer_stack() {
        // The first convolution's filters (colour over 3 channels): viz::first_layer_filters.
        let (picture, what) = viz::first_layer_filters(&ck.spec, &ck.theta, None)?;
        picture.save(&args.out)?;
        println!("{what} drawn to {}", args.out.display());
        return Ok(());
    }
    let layout = ThetaLayout::new(&ck.spec);
    if ck.spec.layers.len() < 3 && ck.spec.output != Output::Softmax {
        bail!("this model has no hidden layer to draw");
    }
    let w = layout.weight(&ck.theta, 0);
    let whitening = stored_whitening(&ck)?;
    viz::save_png(&viz::filters_in_pixels(w, whitening.as_ref())?, &args.out)?;
    let space = if whitening.is_some() { " (W·M: seen from the pixels, before whitening)" } else { "" };
    println!("{} filters of {} inputs{space} drawn to {}", layout.shapes[0].0, layout.shapes[0].1, args.out.display());
    Ok(())
}

/// A trained model and the data to run it on: what `reconstruct` and `eval` both take.
#[derive(Args, Debug)]
pub struct ModelOnData {
    /// The trained model: a model.safetensors file, its run folder, or a `train stacked`
    /// folder.
    #[arg(long)]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Seed for patch sampling, the synthetic images and the rows --test-fraction holds out
    /// (default: the seed the model was trained with, so the same rows; 1 for older models).
    #[arg(long)]
    pub seed: Option<u64>,
}

impl ModelOnData {
    /// --seed, or the seed `ck` was trained with, or 1.
    pub fn seed_for(&self, ck: &Checkpoint) -> u64 {
        self.seed.or(ck.metadata.seed).unwrap_or(1)
    }
}

/// `reconstruct`'s own words for the shared flags: its model is an autoencoder, and --count
/// is how many examples it draws.
#[derive(Args, Debug)]
#[command(mut_arg("model", |a| a.help("The trained autoencoder: a model.safetensors file or its run folder")))]
#[command(mut_arg("count", |a| a.help("Examples to draw, each above its reconstruction (default 10); for synthetic or patches: data, the number of patches cut")))]
pub struct ReconstructArgs {
    #[command(flatten)]
    pub input: ModelOnData,
    /// Where to write the PNG.
    #[arg(long, default_value = "reconstructions.png")]
    pub out: PathBuf,
    #[command(flatten)]
    pub backend: BackendArgs,
}

pub fn reconstruct(args: ReconstructArgs) -> anyhow::Result<()> {
    let ck = load_model(&args.input.model)?;
    if ck.spec.output == Output::Softmax || ck.spec.outputs() != ck.spec.inputs() {
        bail!(
            "{} is not an autoencoder: only a network whose output has its input's size reconstructs",
            ck.spec.describe()
        );
    }
    let (_, data) = args.input.data.load_counting(args.input.seed_for(&ck), 10)?;
    let shown = args.input.data.count.unwrap_or(10).min(data.len());
    let x = prepared(&ck, data.x.slice(ndarray::s![..shown, ..]).to_owned(), &args.backend)?.mapv(f64::from);
    let mut backend = args.backend.build(ck.spec.clone(), Precision::F32)?;
    let recon = backend.predict(&ck.theta, (&x).into())?;
    // Trained on whitened data: both rows are drawn back in pixels, where a person sees
    // patches; the error below stays in the whitened space the model was trained in.
    let whitening = stored_whitening(&ck)?;
    viz::save_png(&viz::reconstructions_in_pixels(x.view(), recon.view(), whitening.as_ref())?, &args.out)?;
    let (space, error_space) =
        if whitening.is_some() { (" in pixels (unwhitened)", " on the whitened values") } else { ("", "") };
    let err = (&recon - &x).mapv(|v| v * v).sum() / (2.0 * shown as f64);
    println!(
        "{shown} examples and their reconstructions drawn{space} to {} (mean ½‖x − x̂‖²{error_space} = {err:.6})",
        args.out.display()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(flatten)]
    pub input: ModelOnData,
    /// Score only the examples `train --test-fraction F` held out: the same fraction of the
    /// --data examples, drawn by --seed as training drew them (give the run's --seed).
    #[arg(long)]
    pub test_fraction: Option<f64>,
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Serialize)]
struct Evaluation {
    network: String,
    data: String,
    examples: usize,
    cost: f64,
    data_term: f64,
    weight_decay_term: f64,
    sparsity_term: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    reconstruction_error: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    accuracy: Option<f64>,
    /// Coefficient of determination (regression, with --targets): scikit-learn's r2_score.
    #[serde(skip_serializing_if = "Option::is_none")]
    r2: Option<f64>,
    /// confusion[true][predicted]
    #[serde(skip_serializing_if = "Option::is_none")]
    confusion: Option<Vec<Vec<usize>>>,
    /// The classes of the confusion matrix's rows and columns, as the training data wrote them.
    #[serde(skip_serializing_if = "Option::is_none")]
    classes: Option<Vec<String>>,
    /// A sigmoid-bce model: subset (exact-match) accuracy, Hamming loss and each label's
    /// accuracy ([`wgnn::predict::multilabel_scores`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    subset_accuracy: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hamming_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_label_accuracy: Option<Vec<f64>>,
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let ck = load_model(&args.input.model)?;
    // A character model scores bits per character on text (issue 16).
    if let Some(vocabulary) = super::sequence::vocabulary_of(&ck)? {
        let data = args.input.data.data.as_deref();
        return super::sequence::eval_text(&ck, &vocabulary, data, args.test_fraction, args.json);
    }
    let spec = &ck.spec;
    // A model trained on `--targets columns:SPEC` (a regressor or sigmoid-BCE labels) takes
    // the same columns of the file as its targets unless told otherwise, as `predict` takes
    // them out of its inputs.
    let mut source = args.input.data.clone();
    let stored_targets = ck.metadata.preprocessing.get("targets").and_then(|t| t.as_str());
    if source.targets.is_none()
        && let Some(columns) = stored_targets.filter(|t| t.trim_start().starts_with("columns:"))
    {
        source.targets = Some(columns.trim().to_string());
    }
    // A regressor (trained with --targets) has nothing to score without its targets: the
    // "reconstruction error" of an input against a prediction of something else means nothing.
    let trained_on_targets = !ck.metadata.preprocessing.get("targets").is_none_or(serde_json::Value::is_null);
    let bce = spec.output == Output::SigmoidBce;
    if spec.output != Output::Softmax
        && !bce
        && source.targets.is_none()
        && (trained_on_targets || spec.outputs() != spec.inputs())
    {
        bail!(
            "{} is a regressor: give --targets (npy:FILE, csv:FILE or columns:SPEC, as in training) to score its predictions",
            spec.describe()
        );
    }
    let seed = args.input.seed_for(&ck);
    let (loaded_from, mut data) = source.load(seed)?;
    super::check_sequence_input(&loaded_from, spec)?;
    if let Some(fraction) = args.test_fraction {
        if !(fraction > 0.0 && fraction < 1.0) {
            bail!("--test-fraction {fraction}: the test fraction must lie strictly between 0 and 1");
        }
        if let Some(trained) = ck.metadata.seed.filter(|&s| s != seed) {
            eprintln!(
                "note: the model was trained with --seed {trained}, this is --seed {seed}: --test-fraction holds out the rows training held out only with the same seed (leave --seed out to use the model's)"
            );
        }
        data = data.split_test(fraction, seed).context("--test-fraction")?.1;
    }
    if bce {
        // 0/1 targets, one column per label, or 0/1 labels as one column (binary).
        data.targets = Some(data.zero_one_targets()?);
    }
    data.x = prepared(&ck, data.x, &args.backend)?;
    let mut backend = args.backend.build(spec.clone(), Precision::F32)?;
    // The data's labels as the model numbers its classes, matched by name (a file numbers its
    // own classes: `setosa` may be class 2 there and class 0 here).
    let model = wgnn::predict::Model::from_checkpoint(&ck)?;
    let labels = match spec.classes() {
        Some(k) => data.labels_for(model.classes.as_deref(), k)?,
        None => data.labels.clone(),
    };
    let class_names = model.class_names();
    let targets = match (spec.output, &labels, &data.targets) {
        (Output::Softmax, Some(l), _) => Targets::Labels(l),
        (Output::Softmax, None, _) => bail!(
            "{} is a classifier: evaluate it on labelled data (give --labels), or get its predictions for unlabelled data with `wgnn predict --model {} --data … --out F.csv`",
            spec.describe(),
            args.input.model.display()
        ),
        (_, _, Some(t)) => Targets::Values(t.into()),
        _ => Targets::Inputs,
    };
    backend.set_data((&data.x).into(), targets).context("the data does not fit the model")?;
    let cost = backend.cost(&ck.theta, Batch::All)?;
    let (accuracy, confusion) = match (spec.classes(), &labels) {
        (Some(k), Some(l)) => {
            let predicted = backend.classify(&ck.theta, (&data.x).into())?;
            let mut confusion = vec![vec![0usize; k]; k];
            for (&t, &p) in l.iter().zip(&predicted) {
                confusion[t][p] += 1;
            }
            let correct = l.iter().zip(&predicted).filter(|(a, b)| a == b).count();
            (Some(correct as f64 / l.len() as f64), Some(confusion))
        }
        _ => (None, None),
    };
    let scores = match &data.targets {
        Some(t) if bce => {
            let p = backend.predict(&ck.theta, (&data.x).into())?;
            Some(wgnn::predict::multilabel_scores(p.view(), t.view())?)
        }
        _ => None,
    };
    let r2 = match &data.targets {
        Some(_) if bce => None,
        Some(t) if spec.output != Output::Softmax => Some(wgnn::train::r2_of(backend.as_mut(), &ck.theta, &data.x, t)?),
        _ => None,
    };
    let result = Evaluation {
        network: spec.describe(),
        data: data.description.clone(),
        examples: data.len(),
        cost: cost.total(),
        data_term: cost.data,
        weight_decay_term: cost.weight_decay,
        sparsity_term: cost.sparsity,
        reconstruction_error: (spec.output != Output::Softmax && !bce && r2.is_none()).then_some(cost.data),
        accuracy,
        r2,
        classes: confusion.as_ref().and(class_names),
        confusion,
        subset_accuracy: scores.as_ref().map(|s| s.subset_accuracy),
        hamming_loss: scores.as_ref().map(|s| s.hamming_loss),
        per_label_accuracy: scores.as_ref().map(|s| s.per_label_accuracy.clone()),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&result)?);
        return Ok(());
    }
    println!("network  {}", result.network);
    println!("data     {} ({} examples)", result.data, result.examples);
    println!(
        "cost     {} (data {}, weight decay {}, sparsity {})",
        result.cost, cost.data, cost.weight_decay, cost.sparsity
    );
    if let Some(e) = result.reconstruction_error {
        println!("reconstruction error (mean ½‖x − x̂‖²) {e}");
    }
    if let Some(r2) = result.r2 {
        println!("squared error (mean ½‖y − ŷ‖²) {}", cost.data);
        println!("r2 {r2}");
    }
    if let Some(s) = &scores {
        println!("binary cross-entropy (mean over examples, summed over labels) {}", cost.data);
        println!("subset accuracy (all labels right) {}", s.subset_accuracy);
        println!("hamming loss (labels wrong) {}", s.hamming_loss);
        let per: Vec<String> = s.per_label_accuracy.iter().enumerate().map(|(j, a)| format!("{j}: {a}")).collect();
        println!("per-label accuracy {}", per.join(", "));
    }
    if let (Some(a), Some(c)) = (result.accuracy, &result.confusion) {
        println!("confusion matrix (rows: true class, columns: predicted)");
        let names = result.classes.clone().unwrap_or_default();
        // Columns as wide as the longest class name or count; rows headed by the names.
        let width = names.iter().map(|n| n.chars().count()).chain(c.iter().flatten().map(|v| v.to_string().len()));
        let width = width.max().unwrap_or(1) + 2;
        let head = names.iter().map(|n| n.chars().count()).max().unwrap_or(1).max(4);
        let cells: Vec<String> = names.iter().map(|n| format!("{n:>width$}")).collect();
        println!("  {:>head$} {}", "", cells.join(""));
        for (row, name) in c.iter().zip(&names) {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:>width$}")).collect();
            println!("  {name:>head$} {}", cells.join(""));
        }
        println!("accuracy {a}");
    }
    Ok(())
}
