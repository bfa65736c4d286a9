//! Self-taught learning on MNIST (UFLDL's exercise): a sparse autoencoder 784-200 (ρ = 0.1,
//! λ = 3e-3, β = 3, 400 L-BFGS iterations) learns features from the digits 5–9 without their
//! labels; softmax regression (λ = 1e-4) on those features of the digits 0–4 is compared with
//! softmax on the raw pixels of the same digits. The same jobs as README's
//! `wgnn train --data mnist:DIR --digits 5-9 …` then `wgnn train softmax … --features-from`,
//! through the estimator API.
//!
//! Run: `WGNN_DATA_DIR=../shared/data cargo run --release --example self_taught [-- ITERATIONS]`
//! (default 400; the autoencoder takes ~15 minutes on 2 cores).

mod common;

use wgnn::data::Split;
use wgnn::{Result, Softmax, SparseAutoencoder};

fn main() {
    common::main(run)
}

fn run() -> Result<()> {
    let iterations = std::env::args().nth(1).map_or(Ok(400), |a| a.parse()).map_err(|_| {
        wgnn::Error::Data("the argument is the autoencoder's number of L-BFGS iterations, e.g. 400".into())
    })?;
    let unlabelled = common::mnist(Split::Train, Some("5-9"))?;
    let (train, test) = (common::mnist(Split::Train, Some("0-4"))?, common::mnist(Split::Test, Some("0-4"))?);
    let (labels, test_labels) = (train.labels.expect("MNIST has labels"), test.labels.expect("MNIST has labels"));

    // 1. Features from the digits 5–9, labels unused.
    let autoencoder =
        SparseAutoencoder::new(200).sparsity(0.1, 3.0).weight_decay(3e-3).iterations(iterations).fit(&unlabelled.x)?;

    // 2. Softmax (λ = 1e-4, 100 iterations) on those features of 0–4, and on the raw pixels.
    let (features, test_features) = (autoencoder.transform(&train.x)?, autoencoder.transform(&test.x)?);
    let on_features = Softmax::new().fit(&features, &labels)?.score(&test_features, &test_labels)?;
    let on_pixels = Softmax::new().fit(&train.x, &labels)?.score(&test.x, &test_labels)?;
    println!(
        "digits 0-4, test accuracy: {:.2}% on learned features, {:.2}% on raw pixels",
        100.0 * on_features,
        100.0 * on_pixels
    );
    Ok(())
}
