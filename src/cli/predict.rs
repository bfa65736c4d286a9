//! `wgnn predict`: a trained model on new data, no labels needed, with everything stored with
//! the model applied first ([`wgnn::predict::Model`]). What it writes, one row per example:
//!
//! | model | `.npy` | `.csv` header |
//! |---|---|---|
//! | classifier | F.npy: probabilities (m × k, float32); F.labels.npy: labels (m, int64) | `label,p0,…,p{k-1}` |
//! | regressor | F.npy: predicted values (m × outputs, float32) | `y0,…` |
//! | autoencoder | F.npy: reconstructions (m × n, float32), whitened when the model whitens | `y0,…` |
//! | `--features` | F.npy: first hidden layer's activations (m × h, float32) | `h0,…` |
//!
//! Every file is written atomically (`wgnn::atomic`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use ndarray::{Array1, Array2};
use ndarray_npy::WriteNpyExt;

use wgnn::model::NetSpec;
use wgnn::predict::{Model, Task};

use super::inspect::ModelOnData;
use super::{BackendArgs, Precision};

#[derive(Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    pub input: ModelOnData,
    /// Where to write the predictions: F.npy (a classifier's labels go to F.labels.npy beside
    /// it) or F.csv (with a header naming the columns).
    #[arg(long)]
    pub out: PathBuf,
    /// Write the first hidden layer's activations (the features the model extracts) instead
    /// of its output.
    #[arg(long)]
    pub features: bool,
    #[command(flatten)]
    pub backend: BackendArgs,
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Npy,
    Csv,
}

/// The format `--out` names, checked (and its folder) before any work.
fn format_of(out: &Path) -> anyhow::Result<Format> {
    let format = match out.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("npy") => Format::Npy,
        Some("csv") => Format::Csv,
        _ => bail!("--out {}: name a .npy or .csv file", out.display()),
    };
    let folder = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !folder.is_dir() {
        bail!("--out {}: the folder {} does not exist", out.display(), folder.display());
    }
    if out.is_dir() {
        bail!("--out {}: is a folder; name a .npy or .csv file", out.display());
    }
    Ok(format)
}

/// F.labels.npy beside F.npy.
fn labels_path(out: &Path) -> PathBuf {
    out.with_extension("labels.npy")
}

pub fn run(args: PredictArgs) -> anyhow::Result<()> {
    let format = format_of(&args.out)?;
    let d = &args.input.data;
    let labels = d.labels.as_ref().map(|p| p.to_string_lossy().into_owned());
    let model = args.input.model.to_string_lossy().into_owned();
    let inputs = [d.data.as_deref(), labels.as_deref(), d.targets.as_deref(), Some(model.as_str())];
    for out in [args.out.clone(), labels_path(&args.out)] {
        super::refuse_overwriting_inputs("--out", &out, inputs.into_iter().flatten())?;
    }
    let context = || format!("--model {}", args.input.model.display());
    let file = super::model_file_for("--model", &args.input.model)?;
    let checkpoint = wgnn::checkpoint::Checkpoint::load(&file)?;
    let model = Model::from_checkpoint(&checkpoint).with_context(context)?;
    if args.features && model.spec.layers.len() < 3 {
        bail!("--features: {} has no hidden layer to take features from", model.spec.describe());
    }
    let (_, mut data) = args.input.data.load(args.input.seed)?;
    // A regressor trained on `--targets columns:SPEC` takes the file without those columns:
    // given the same kind of file, with them, they are taken out as training took them out.
    let stored_targets = checkpoint.metadata.preprocessing.get("targets").and_then(|t| t.as_str());
    if let Some(columns) = stored_targets.filter(|t| t.trim_start().starts_with("columns:"))
        && data.num_features() != model.inputs()
        && args.input.data.targets.is_none()
    {
        let mut with_targets = args.input.data.clone();
        with_targets.targets = Some(columns.to_string());
        if let Ok((_, without)) = with_targets.load(args.input.seed)
            && without.num_features() == model.inputs()
        {
            data = without;
        }
    }
    let mut note = None;
    let mut backends = |spec: &NetSpec| -> wgnn::Result<Box<dyn wgnn::Backend>> {
        let (b, n) = args
            .backend
            .build_quietly(spec.clone(), Precision::F32)
            .map_err(|e| wgnn::Error::Data(format!("{e:#}")))?;
        note = note.take().or(n);
        Ok(b)
    };
    let m = data.len();
    let what;
    if args.features {
        let h = model.transform(&data.x, &mut backends)?;
        what = format!("{} hidden features", h.ncols());
        write(&args.out, format, "h", None, &h)?;
    } else {
        match model.task {
            Task::Classifier { classes } => {
                let (p, labels) = model.predict_proba(&data.x, &mut backends)?;
                what = format!("label and {classes} class probabilities");
                let p = p.mapv(|v| v as f32);
                if format == Format::Npy {
                    let labels = Array1::from_iter(labels.iter().map(|&l| l as i64));
                    // The probabilities last: their file appears only once the labels are there.
                    wgnn::atomic::write_with(&labels_path(&args.out), |w| {
                        labels.write_npy(w).map_err(|e| e.to_string())
                    })?;
                }
                write(&args.out, format, "p", Some(&labels), &p)?;
            }
            Task::Regressor { outputs } | Task::Autoencoder { hidden: outputs } => {
                let y = model.predict(&data.x, &mut backends)?.mapv(|v| v as f32);
                what = if matches!(model.task, Task::Regressor { .. }) {
                    format!("{outputs} predicted values")
                } else {
                    format!("reconstructions of {} values", y.ncols())
                };
                write(&args.out, format, "y", None, &y)?;
            }
        }
    }
    if let Some(n) = note {
        eprintln!("note: {n}");
    }
    let also = if format == Format::Npy && !args.features && matches!(model.task, Task::Classifier { .. }) {
        format!(" (labels in {})", labels_path(&args.out).display())
    } else {
        String::new()
    };
    println!("wrote {} ({m} examples: {what}){also}", args.out.display());
    Ok(())
}

/// `values` (m × k) to `out`: a float32 .npy, or a CSV whose columns are `label` (when
/// `labels` are given) then `{prefix}0` … `{prefix}{k-1}`.
fn write(
    out: &Path,
    format: Format,
    prefix: &str,
    labels: Option<&[usize]>,
    values: &Array2<f32>,
) -> anyhow::Result<()> {
    match format {
        Format::Npy => wgnn::atomic::write_with(out, |w| values.write_npy(w).map_err(|e| e.to_string()))?,
        Format::Csv => wgnn::atomic::write_with(out, |w| {
            let mut header: Vec<String> = labels.iter().map(|_| "label".to_string()).collect();
            header.extend((0..values.ncols()).map(|j| format!("{prefix}{j}")));
            let io = |e: std::io::Error| e.to_string();
            writeln!(w, "{}", header.join(",")).map_err(io)?;
            for (i, row) in values.rows().into_iter().enumerate() {
                let mut cells: Vec<String> = labels.iter().map(|l| l[i].to_string()).collect();
                cells.extend(row.iter().map(|v| v.to_string()));
                writeln!(w, "{}", cells.join(",")).map_err(io)?;
            }
            Ok(())
        })?,
    }
    Ok(())
}
