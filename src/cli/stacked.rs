//! `wgnn train stacked`: the UFLDL stacked autoencoder ([`wgnn::stacked`]) with the settings
//! from the command line. Each stage writes its own run folder under the output folder, and
//! `metrics.json` there compares accuracy before and after fine-tuning.

use std::sync::atomic::AtomicBool;

use anyhow::Context;
use ndarray::Array2;

use wgnn::data::Dataset;
use wgnn::stacked::{StackedConfig, StageEvent, train_stacked_until};
use wgnn::train::{CHECKPOINT_FILE, RunFolder, RunStatus};

use super::Exit;
use super::train::TrainArgs;

pub fn run(
    args: &TrainArgs,
    data: &Dataset,
    test: Option<(Array2<f32>, Vec<usize>)>,
    folder: RunFolder,
    preprocessing: serde_json::Value,
    interrupt: &AtomicBool,
    ranks: Option<&super::ranks::Ranks>,
) -> anyhow::Result<()> {
    let labels = data.labels.as_deref().context("a stacked autoencoder ends in a softmax: it needs labelled data")?;
    let defaults = StackedConfig::default();
    let config = StackedConfig {
        hidden: args.hidden.clone().unwrap_or(defaults.hidden.clone()),
        sparsity: super::train::sparsity(args.sparsity.unwrap_or(0.1), args.sparsity_weight),
        weight_decay: args.weight_decay.unwrap_or(defaults.weight_decay),
        iterations: args.iterations.unwrap_or(defaults.iterations),
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        data_description: data.description.clone(),
        preprocessing,
        resume: args.resume.is_some(),
        command: serde_json::to_value(super::train::stored_form(args))?,
        ..defaults
    };
    let mut backend = |spec: &wgnn::model::NetSpec| -> wgnn::Result<Box<dyn wgnn::Backend>> {
        match ranks {
            // Over MPI: each stage's backend sums over the ranks (every stage is full batch).
            Some(r) => r.backend(&args.backend, spec),
            None => args.backend.build_quietly(spec.clone(), super::Precision::F32),
        }
        .map(|(b, _)| b)
        .map_err(|e| wgnn::Error::Data(format!("{e:#}")))
    };
    let mut report = |event: StageEvent<'_>| {
        if args.quiet {
            return;
        }
        match event {
            StageEvent::Start { spec, dir } => eprintln!("stage    {} → {}", spec.describe(), dir.display()),
            StageEvent::Done { outcome } => {
                eprintln!("         final cost {} after {} iterations", outcome.final_cost, outcome.summary.iterations)
            }
        }
    };
    let test = test.as_ref().map(|(x, l)| (x, l.as_slice()));
    let out = folder.path().to_path_buf();
    let outcome = train_stacked_until(&config, &mut backend, &data.x, labels, test, folder, &mut report, interrupt)?;
    let (stage, checkpoint) = (outcome.stage.display(), outcome.stage.join(CHECKPOINT_FILE));
    match &outcome.status {
        RunStatus::Finished => {}
        RunStatus::Interrupted => {
            return Err(Exit::interrupted(format!(
                "interrupted in stage {stage}: its θ and optimizer state are in {}; the later stages did not run; resume with: wgnn train --resume {}",
                checkpoint.display(),
                out.display()
            ))
            .into());
        }
        RunStatus::Diverged { reason } => {
            return Err(Exit::diverged(format!(
                "stage {stage}: {reason} — the θ it kept is in {}; the later stages did not run",
                checkpoint.display()
            ))
            .into());
        }
    }
    if !args.quiet {
        if let (Some(b), Some(a)) = (outcome.test_accuracy_before_finetuning, outcome.test_accuracy) {
            println!("test accuracy before fine-tuning {:.2}%, after {:.2}%", 100.0 * b, 100.0 * a);
        }
        println!("wrote    {}", outcome.metrics.display());
    }
    Ok(())
}
