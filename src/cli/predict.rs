//! `wgnn predict`: a trained model on new data, no labels needed, with everything stored with
//! the model applied first ([`wgnn::predict::Model`]). What it writes, one row per example:
//!
//! | model | `.npy` | `.csv` header |
//! |---|---|---|
//! | classifier | F.npy: probabilities (m × k, float32); F.labels.npy: labels (m, int64, or unicode when the classes are names) | `label,p0,…,p{k-1}` (`p_setosa,…` for named classes) |
//!
//! A classifier's labels are given back as its training data wrote them (`setosa`, `7` of
//! `{3, 7}`): the class names stored with the model.
//! | multi-label (sigmoid-bce) | F.npy: probabilities P(yⱼ = 1 given x) (m × k, float32); F.labels.npy: the 0/1 decisions at p ≥ 0.5 (m × k, int64) | `p0,…,p{k-1},y0,…,y{k-1}` (probabilities, then decisions) |
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
    /// it) or F.csv (with a header naming the columns). A sequence model with a label at every
    /// step writes F.labels.npy of m × T (sequence i's label at step t in row i, column t) and
    /// F.npy of m × (T·k) probabilities (step t's k at columns t·k …); as CSV, columns y0 …
    /// y{T−1} then p{t}_{class}.
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
    let seed = args.input.seed_for(&checkpoint);
    let (source, mut data) = args.input.data.load(seed)?;
    super::check_sequence_input(&source, &model.spec)?;
    // A regressor trained on `--targets columns:SPEC` takes the file without those columns:
    // given the same kind of file, with them, they are taken out as training took them out.
    let stored_targets = checkpoint.metadata.preprocessing.get("targets").and_then(|t| t.as_str());
    if let Some(columns) = stored_targets.filter(|t| t.trim_start().starts_with("columns:"))
        && data.num_features() != model.inputs()
        && args.input.data.targets.is_none()
    {
        let mut with_targets = args.input.data.clone();
        with_targets.targets = Some(columns.to_string());
        if let Ok((_, without)) = with_targets.load(seed)
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
        write(&args.out, format, &Columns::Prefix("h"), None, &h)?;
    } else {
        match model.task {
            Task::Classifier { classes } if model.spec.output_steps() > 1 => {
                let steps = model.spec.output_steps();
                let (p, labels) = model.predict_proba(&data.x, &mut backends)?;
                what = format!(
                    "a label at each of {steps} steps (m × T) and {classes} class probabilities at each, step t's in columns t·{classes}…"
                );
                super::sequence::write_per_step_labels(&args.out, format == Format::Npy, &labels, steps, p)?;
            }
            Task::Classifier { classes } => {
                let (p, labels) = model.predict_proba(&data.x, &mut backends)?;
                what = format!("label and {classes} class probabilities");
                let p = p.mapv(|v| v as f32);
                // The labels as the training data wrote them (class numbers for MNIST).
                let names = model.class_names().unwrap_or_default();
                let written: Vec<String> = labels.iter().map(|&l| names[l].clone()).collect();
                if format == Format::Npy {
                    // The probabilities last: their file appears only once the labels are there.
                    let path = labels_path(&args.out);
                    let numbers: Option<Vec<i64>> = written.iter().map(|n| n.parse().ok()).collect();
                    match numbers {
                        Some(numbers) => {
                            let labels = Array1::from(numbers);
                            wgnn::atomic::write_with(&path, |w| labels.write_npy(w).map_err(|e| e.to_string()))?
                        }
                        None => wgnn::atomic::write_with(&path, |w| write_unicode_npy(w, &written))?,
                    }
                }
                let columns: Vec<String> = names.iter().map(|n| probability_column(n)).collect();
                write(&args.out, format, &Columns::Named(&columns), Some(&written), &p)?;
            }
            Task::MultiLabel { labels } => {
                let p = model.predict(&data.x, &mut backends)?;
                let decided = wgnn::predict::decide(p.view());
                let (noun, each) = if labels == 1 { ("label", "its") } else { ("labels", "their") };
                what = format!("the probabilities of {labels} {noun} and {each} 0/1 decisions at p ≥ 0.5");
                let p = p.mapv(|v| v as f32);
                match format {
                    Format::Npy => {
                        // The decisions first: the probabilities' file appears only once they are there.
                        let d = decided.mapv(i64::from);
                        wgnn::atomic::write_with(&labels_path(&args.out), |w| {
                            d.write_npy(w).map_err(|e| e.to_string())
                        })?;
                        write(&args.out, format, &Columns::Prefix("p"), None, &p)?;
                    }
                    Format::Csv => {
                        let both = ndarray::concatenate![ndarray::Axis(1), p, decided.mapv(f32::from)];
                        let mut columns: Vec<String> = (0..labels).map(|j| format!("p{j}")).collect();
                        columns.extend((0..labels).map(|j| format!("y{j}")));
                        write(&args.out, format, &Columns::Named(&columns), None, &both)?;
                    }
                }
            }
            Task::Regressor { outputs } | Task::Autoencoder { hidden: outputs } => {
                let y = model.predict(&data.x, &mut backends)?.mapv(|v| v as f32);
                let steps = model.spec.output_steps();
                what = if matches!(model.task, Task::Regressor { .. }) && steps > 1 {
                    format!("{outputs} predicted values at each of {steps} steps, step t's in columns t·{outputs}…")
                } else if matches!(model.task, Task::Regressor { .. }) {
                    format!("{outputs} predicted values")
                } else {
                    format!("reconstructions of {} values", y.ncols())
                };
                write(&args.out, format, &Columns::Prefix("y"), None, &y)?;
            }
        }
    }
    if let Some(n) = note {
        eprintln!("note: {n}");
    }
    let also = if format == Format::Npy && !args.features && matches!(model.task, Task::Classifier { .. }) {
        format!(" (labels in {})", labels_path(&args.out).display())
    } else if format == Format::Npy && !args.features && matches!(model.task, Task::MultiLabel { .. }) {
        format!(" (0/1 decisions in {})", labels_path(&args.out).display())
    } else {
        String::new()
    };
    println!("wrote {} ({m} examples: {what}){also}", args.out.display());
    Ok(())
}

/// How the value columns of a CSV are named.
enum Columns<'a> {
    /// `{prefix}0` … `{prefix}{k-1}`.
    Prefix(&'a str),
    /// One name a column.
    Named(&'a [String]),
}

/// The probability column of class `name`: `p7` for a class number, `p_setosa` for a name.
fn probability_column(name: &str) -> String {
    if name.parse::<i64>().is_ok() { format!("p{name}") } else { format!("p_{name}") }
}

/// A CSV cell: as it is, or quoted (RFC 4180) when it holds a separator, a quote or a line break.
fn cell(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}

/// `names` as a NumPy unicode vector (`<U{n}`, UTF-32 code units, `np.load` reads it as `str`).
fn write_unicode_npy(w: &mut impl Write, names: &[String]) -> Result<(), String> {
    let width = names.iter().map(|n| n.chars().count()).max().unwrap_or(0).max(1);
    let dict = format!("{{'descr': '<U{width}', 'fortran_order': False, 'shape': ({},), }}", names.len());
    // Magic, version 1.0, header length; the header padded with spaces to a multiple of 64.
    let unpadded = 10 + dict.len() + 1;
    let padding = unpadded.div_ceil(64) * 64 - unpadded;
    let header = format!("{dict}{}\n", " ".repeat(padding));
    let io = |e: std::io::Error| e.to_string();
    w.write_all(b"\x93NUMPY\x01\x00").map_err(io)?;
    w.write_all(&u16::try_from(header.len()).map_err(|e| e.to_string())?.to_le_bytes()).map_err(io)?;
    w.write_all(header.as_bytes()).map_err(io)?;
    for name in names {
        let mut units: Vec<u32> = name.chars().map(u32::from).collect();
        units.resize(width, 0);
        units.iter().try_for_each(|u| w.write_all(&u.to_le_bytes())).map_err(io)?;
    }
    Ok(())
}

/// `values` (m × k) to `out`: a float32 .npy, or a CSV whose columns are `label` (when
/// `labels` are given) then the value columns named by `columns`.
fn write(
    out: &Path,
    format: Format,
    columns: &Columns<'_>,
    labels: Option<&[String]>,
    values: &Array2<f32>,
) -> anyhow::Result<()> {
    match format {
        Format::Npy => wgnn::atomic::write_with(out, |w| values.write_npy(w).map_err(|e| e.to_string()))?,
        Format::Csv => wgnn::atomic::write_with(out, |w| {
            let mut header: Vec<String> = labels.iter().map(|_| "label".to_string()).collect();
            match columns {
                Columns::Prefix(prefix) => header.extend((0..values.ncols()).map(|j| format!("{prefix}{j}"))),
                Columns::Named(names) => header.extend(names.iter().map(|n| cell(n))),
            }
            let io = |e: std::io::Error| e.to_string();
            writeln!(w, "{}", header.join(",")).map_err(io)?;
            for (i, row) in values.rows().into_iter().enumerate() {
                let mut cells: Vec<String> = labels.iter().map(|l| cell(&l[i])).collect();
                cells.extend(row.iter().map(|v| v.to_string()));
                writeln!(w, "{}", cells.join(",")).map_err(io)?;
            }
            Ok(())
        })?,
    }
    Ok(())
}
