//! `wgnn train stacked`: the UFLDL stacked autoencoder ([`wgnn::stacked`]) with the settings
//! from the command line. Each stage writes its own run folder under the output folder, and
//! `metrics.json` there compares accuracy before and after fine-tuning.

use std::sync::atomic::AtomicBool;

use anyhow::Context;
use ndarray::Array2;

use wgnn::data::Dataset;
use wgnn::stacked::{StackedConfig, StageEvent, train_stacked_until};
use wgnn::train::{CHECKPOINT_FILE, RunFolder, RunStatus};

use super::{BackendArgs, Exit};

/// Runs the pipeline `config` describes (built from `wgnn train stacked`'s flags by
/// `cli::train`, which calls this module and is not called back by it) on `data`, with the
/// backends `backend_args` ask for; prints the stages unless `quiet`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    config: &StackedConfig,
    backend_args: &BackendArgs,
    quiet: bool,
    data: &Dataset,
    test: Option<(Array2<f32>, Vec<usize>)>,
    folder: RunFolder,
    interrupt: &AtomicBool,
    ranks: Option<&super::ranks::Ranks>,
) -> anyhow::Result<()> {
    let labels = data.labels.as_deref().context("a stacked autoencoder ends in a softmax: it needs labelled data")?;
    let mut backend = |spec: &wgnn::model::NetSpec| -> wgnn::Result<Box<dyn wgnn::Backend>> {
        match ranks {
            // Over MPI: each stage's backend sums over the ranks (every stage is full batch).
            Some(r) => r.backend(backend_args, spec),
            None => backend_args.build_quietly(spec.clone(), super::Precision::F32),
        }
        .map(|(b, _)| b)
        .map_err(|e| wgnn::Error::Data(format!("{e:#}")))
    };
    let mut report = |event: StageEvent<'_>| {
        if quiet {
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
    let outcome = train_stacked_until(config, &mut backend, &data.x, labels, test, folder, &mut report, interrupt)?;
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
    if !quiet {
        if let (Some(b), Some(a)) = (outcome.test_accuracy_before_finetuning, outcome.test_accuracy) {
            println!("test accuracy before fine-tuning {:.2}%, after {:.2}%", 100.0 * b, 100.0 * a);
        }
        println!("wrote    {}", outcome.metrics.display());
    }
    Ok(())
}
