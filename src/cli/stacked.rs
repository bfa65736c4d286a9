//! `wgnn train stacked`: the UFLDL stacked autoencoder ([`wgnn::stacked`]) with the settings
//! from the command line. Each stage writes its own run folder under the output folder, and
//! `metrics.json` there compares accuracy before and after fine-tuning.

use std::path::Path;

use anyhow::Context;
use ndarray::Array2;

use wgnn::data::Dataset;
use wgnn::model::Sparsity;
use wgnn::stacked::{StackedConfig, StageEvent, train_stacked};

use super::train::TrainArgs;

pub fn run(
    args: &TrainArgs,
    data: &Dataset,
    test: Option<(Array2<f32>, Vec<usize>)>,
    out: &Path,
) -> anyhow::Result<()> {
    let labels = data.labels.as_deref().context("a stacked autoencoder ends in a softmax: it needs labelled data")?;
    let defaults = StackedConfig::default();
    let rho = args.sparsity.unwrap_or(0.1);
    let config = StackedConfig {
        hidden: args.hidden.clone().unwrap_or(defaults.hidden.clone()),
        // Only 0 turns the penalty off: NaN or a negative ρ reaches the spec's validation.
        sparsity: (rho != 0.0).then_some(Sparsity { target: rho, weight: args.sparsity_weight }),
        weight_decay: args.weight_decay.unwrap_or(defaults.weight_decay),
        iterations: args.iterations.unwrap_or(defaults.iterations),
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        data_description: data.description.clone(),
        ..defaults
    };
    let mut backend = |spec: &wgnn::model::NetSpec| -> wgnn::Result<Box<dyn wgnn::Backend>> {
        args.backend
            .build_quietly(spec.clone(), super::Precision::F32)
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
    let outcome = train_stacked(&config, &mut backend, &data.x, labels, test, out, &mut report)?;
    if !args.quiet {
        if let (Some(b), Some(a)) = (outcome.test_accuracy_before_finetuning, outcome.test_accuracy) {
            eprintln!("test accuracy before fine-tuning {:.2}%, after {:.2}%", 100.0 * b, 100.0 * a);
        }
        eprintln!("wrote    {}", outcome.metrics.display());
    }
    Ok(())
}
