//! `wgnn export`: a trained model's θ as a .npy vector (float64, wgnn's layout: all weights,
//! each out × in row-major, in layer order, then all biases) and its network as JSON
//! (`NetSpec`, serde), plus what its inputs go through (`preprocessing.json`) when anything.
//! `wgnn cost --theta DIR/theta.npy` with the flags printed here computes the model's cost.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;

use wgnn::checkpoint::Checkpoint;
use wgnn::model::NetSpec;
use wgnn::predict::Task;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The trained model: a model.safetensors file, its run folder, or a `train stacked`
    /// folder (its fine-tuned stack).
    #[arg(long)]
    pub model: PathBuf,
    /// The folder to write theta.npy and spec.json into (created when missing).
    #[arg(long)]
    pub out: PathBuf,
}

/// The `wgnn cost` flags that build `spec`.
pub fn cost_flags(spec: &NetSpec) -> String {
    let sizes: Vec<String> = spec.layers.iter().map(usize::to_string).collect();
    let activations: Vec<String> = spec.hidden_activations.iter().map(|a| a.name()).collect();
    let mut flags = format!("--layers {}", sizes.join(","));
    if !activations.is_empty() {
        flags += &format!(" --activation {}", activations.join(","));
    }
    flags += &format!(" --output {} --weight-decay {}", spec.output.name(), spec.weight_decay);
    if let Some(s) = spec.sparsity {
        flags += &format!(" --sparsity {} --sparsity-weight {}", s.target, s.weight);
    }
    flags
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let file = super::model_file_for("--model", &args.model)?;
    let ck = Checkpoint::load(&file)?;
    if args.out.exists() && !args.out.is_dir() {
        bail!("--out {}: is a file; give a folder to write theta.npy and spec.json into", args.out.display());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("--out {}: cannot create the folder", args.out.display()))?;
    let theta_path = args.out.join("theta.npy");
    wgnn::npy::write_vector(&theta_path, &ck.theta.clone().into())?;
    let spec_path = args.out.join("spec.json");
    wgnn::atomic::write_bytes(&spec_path, serde_json::to_string_pretty(&ck.spec)?.as_bytes())?;
    let mut written = vec![theta_path.display().to_string(), spec_path.display().to_string()];
    if !ck.metadata.preprocessing.is_null() {
        let path = args.out.join("preprocessing.json");
        wgnn::atomic::write_bytes(&path, serde_json::to_string_pretty(&ck.metadata.preprocessing)?.as_bytes())?;
        written.push(path.display().to_string());
    }
    println!("network  {} ({} parameters)", ck.spec.describe(), ck.theta.len());
    println!("wrote    {}", written.join(", "));
    // What `cost` needs beside the inputs: the model's task says (an autoencoder's target is
    // its input; a classifier takes class indices 0..k−1; a regressor or a multi-label model
    // its target matrix).
    if ck.spec.net.is_some() {
        // A layer stack (conv, pooling, maxout, rnn, lstm): `cost` builds dense --layers nets
        // and convolutional --net stacks of images, not sequences; no command is better than
        // a wrong one.
        println!(
            "its cost: `wgnn cost` does not build this network ({}); spec.json and theta.npy load in the \
             library (serde_json into wgnn::model::NetSpec, then any wgnn::Backend)",
            ck.spec.describe()
        );
        return Ok(());
    }
    let targets = match wgnn::predict::Model::from_checkpoint(&ck)?.task {
        Task::Autoencoder { .. } => "",
        Task::Classifier { .. } => " --labels LABELS.npy",
        Task::Regressor { .. } | Task::MultiLabel { .. } => " --targets TARGETS.npy",
    };
    println!(
        "its cost: wgnn cost {} --theta {} --data X.npy{targets}",
        cost_flags(&ck.spec),
        args.out.join("theta.npy").display()
    );
    Ok(())
}
