//! A stacked autoencoder on MNIST (UFLDL's exercise): two sparse autoencoders 784-200 and
//! 200-200 (ρ = 0.1, λ = 3e-3, β = 3) trained greedily, softmax regression (λ = 1e-4) on the
//! second one's features, then the whole 784-200-200-10 network fine-tuned (λ = 1e-4); test
//! accuracy before and after fine-tuning. The same pipeline as
//! `wgnn train stacked --data mnist:DIR --test-data mnist:DIR` (the library's
//! `wgnn::stacked::train_stacked`).
//!
//! Run: `WGNN_DATA_DIR=../shared/data cargo run --release --example stacked_autoencoder
//! [-- ITERATIONS]` (L-BFGS iterations per autoencoder and for fine-tuning; default 400, which
//! takes ~37 minutes on 2 cores); writes `runs/examples/stacked-autoencoder/` (metrics.json
//! there has `test_accuracy_before_finetuning`, `test_accuracy`, `seconds` and
//! `stage_seconds`; each stage's folder has its own run files).

mod common;

use std::time::Instant;

use wgnn::data::Split;
use wgnn::model::NetSpec;
use wgnn::stacked::{StackedConfig, StageEvent, train_stacked};
use wgnn::{Backend, CpuBackend, Result};

fn main() {
    common::main(run)
}

fn run() -> Result<()> {
    let iterations = std::env::args()
        .nth(1)
        .map_or(Ok(400), |a| a.parse())
        .map_err(|_| wgnn::Error::Data("the argument is the number of L-BFGS iterations per stage, e.g. 400".into()))?;
    let (train, test) = (common::mnist(Split::Train, None)?, common::mnist(Split::Test, None)?);
    let config = StackedConfig { iterations, data_description: train.description.clone(), ..StackedConfig::default() };
    let mut backend =
        |spec: &NetSpec| -> Result<Box<dyn Backend>> { Ok(Box::new(CpuBackend::<f32>::new(spec.clone())?)) };
    let start = Instant::now();
    let mut report = |event: StageEvent<'_>| match event {
        StageEvent::Start { spec, dir } => eprintln!("stage {} → {}", spec.describe(), dir.display()),
        StageEvent::Done { outcome } => {
            eprintln!("  {} iterations in {:.1} s", outcome.summary.iterations, outcome.summary.seconds)
        }
    };
    let labels = train.labels.as_deref().expect("MNIST has labels");
    let test_set = Some((&test.x, test.labels.as_deref().expect("MNIST has labels")));
    let out = std::path::Path::new("runs/examples/stacked-autoencoder");
    let outcome = train_stacked(&config, &mut backend, &train.x, labels, test_set, out, &mut report)?;
    println!(
        "stacked autoencoder: test accuracy {:.2}% before fine-tuning, {:.2}% after ({:.0} s in all); wrote {}",
        100.0 * outcome.test_accuracy_before_finetuning.unwrap_or(f64::NAN),
        100.0 * outcome.test_accuracy.unwrap_or(f64::NAN),
        start.elapsed().as_secs_f64(),
        outcome.metrics.display()
    );
    Ok(())
}
