//! An MLP classifier on MNIST: 784-1024-512-10, ReLU, softmax output, λ = 1e-4, Adam
//! (η = 1e-3, batches of 200), η divided by 10 when the validation error has not improved for
//! two epochs, early stopping after five epochs without improvement (10% of the training
//! images held out for it), at most 30 epochs; accuracy on the 10,000 test images.
//! The same job as README's
//! `wgnn train mlp --data mnist:DIR --test-data mnist:DIR --hidden 1024,512 --weight-decay 1e-4 \
//!  --schedule plateau:0.1:1 --validation 0.1 --patience 5`, through the estimator API.
//!
//! Run: `WGNN_DATA_DIR=../shared/data cargo run --release --example mlp_mnist`.

mod common;

use std::sync::atomic::AtomicBool;

use wgnn::data::Split;
use wgnn::optim::{Plateau, Schedule};
use wgnn::{Mlp, Result};

fn main() {
    common::main(run)
}

fn run() -> Result<()> {
    let (train, test) = (common::mnist(Split::Train, None)?, common::mnist(Split::Test, None)?);
    let (labels, test_labels) = (train.labels.expect("MNIST has labels"), test.labels.expect("MNIST has labels"));
    let schedule = Schedule::ReduceOnPlateau(Plateau { factor: 0.1, patience: 1, ..Plateau::default() });
    let estimator =
        Mlp::classifier(&[1024, 512]).weight_decay(1e-4).schedule(schedule).validation(0.1).patience(5).epochs(30);
    let progress = &mut |p: &wgnn::optim::Progress<'_>| {
        if let Some(r) = p.record {
            let validation = r.validation.map_or(String::new(), |v| format!("  validation error {v:.4}"));
            eprintln!("  epoch {:>3}  mean J = {:.6}{validation}  {:.1} s", r.iteration, r.cost, r.seconds);
        }
    };
    let model = estimator.fit_with(&train.x, &labels, progress, &AtomicBool::new(false))?;
    println!(
        "MLP on {}: test accuracy {:.2}% after {} epochs",
        model.backend_used().0,
        100.0 * model.score(&test.x, &test_labels)?,
        model.iterations()
    );
    Ok(())
}
