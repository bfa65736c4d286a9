//! Softmax regression on MNIST's raw pixels (UFLDL's exercise): 784 → 10, λ = 1e-4, 100
//! L-BFGS iterations on all 60,000 training images, accuracy on the 10,000 test images.
//! The same job as `wgnn train softmax --data mnist:DIR --test-data mnist:DIR`, through the
//! estimator API (`wgnn::Softmax`, the defaults of `wgnn train softmax`), on the backend
//! `--backend auto` would choose.
//!
//! Run: `WGNN_DATA_DIR=../shared/data cargo run --release --example softmax_mnist`.

mod common;

use std::sync::atomic::AtomicBool;

use wgnn::data::Split;
use wgnn::{Result, Softmax};

fn main() {
    common::main(run)
}

fn run() -> Result<()> {
    let (train, test) = (common::mnist(Split::Train, None)?, common::mnist(Split::Test, None)?);
    let (labels, test_labels) = (train.labels.expect("MNIST has labels"), test.labels.expect("MNIST has labels"));
    let progress = &mut |p: &wgnn::optim::Progress<'_>| {
        if let Some(r) = p.record.filter(|r| r.iteration % 10 == 0) {
            eprintln!("  iteration {:>4}  J = {:.6}  {:.1} s", r.iteration, r.cost, r.seconds);
        }
    };
    let model = Softmax::new().fit_with(&train.x, &labels, progress, &AtomicBool::new(false))?;
    let accuracy = model.score(&test.x, &test_labels)?;
    println!("softmax regression on {}: test accuracy {:.2}%", model.backend_used().0, 100.0 * accuracy);
    Ok(())
}
