//! Self-taught learning on MNIST (UFLDL's exercise): a sparse autoencoder 784-200 (ρ = 0.1,
//! λ = 3e-3, β = 3, 400 L-BFGS iterations) learns features from the digits 5–9 without their
//! labels; softmax regression (λ = 1e-4) on those features of the digits 0–4 is compared with
//! softmax on the raw pixels of the same digits. The same runs as README's
//! `wgnn train --data mnist:DIR --digits 5-9 …` then `wgnn train softmax … --features-from`.
//!
//! Run: `WGNN_DATA_DIR=../shared/data cargo run --release --example self_taught [-- ITERATIONS]`
//! (default 400; the autoencoder takes ~15 minutes on 2 cores); writes
//! `runs/examples/self-taught-{autoencoder,features,pixels}/`.

mod common;

use wgnn::data::Split;
use wgnn::model::{NetSpec, Sparsity};
use wgnn::train::hidden_features;
use wgnn::{CpuBackend, Result, Targets};

fn main() {
    common::main(run)
}

fn run() -> Result<()> {
    let iterations = std::env::args().nth(1).map_or(Ok(400), |a| a.parse()).map_err(|_| {
        wgnn::Error::Data("the argument is the autoencoder's number of L-BFGS iterations, e.g. 400".into())
    })?;
    let unlabelled = common::mnist(Split::Train, Some("5-9"))?;
    let (train, test) = (common::mnist(Split::Train, Some("0-4"))?, common::mnist(Split::Test, Some("0-4"))?);

    // 1. Features from the digits 5–9, labels unused.
    let sae = NetSpec::sparse_autoencoder(784, 200, 3e-3, Sparsity { target: 0.1, weight: 3.0 })?;
    let mut encoder = CpuBackend::<f32>::new(sae.clone())?;
    let job = common::job("self-taught-autoencoder", sae.clone(), common::lbfgs(&sae), iterations, None);
    let autoencoder = common::fit(job, &mut encoder, &unlabelled.x, Targets::Inputs, 50)?;

    // 2. Softmax on those features of 0–4, and on the raw pixels, λ = 1e-4, 100 iterations.
    let (labels, test_labels) = (train.labels.clone().unwrap(), test.labels.clone().unwrap());
    let accuracy = |name: &str, x: ndarray::Array2<f32>, x_test: ndarray::Array2<f32>| -> Result<f64> {
        let spec = NetSpec::softmax_regression(x.ncols(), 5, 1e-4)?;
        let method = common::lbfgs(&spec);
        let job = common::job(name, spec.clone(), method, 100, Some((x_test, test_labels.clone().into())));
        let mut backend = CpuBackend::<f32>::new(spec)?;
        Ok(common::fit(job, &mut backend, &x, Targets::Labels(&labels), 50)?.test_accuracy.unwrap_or(f64::NAN))
    };
    let features = hidden_features(&mut encoder, &autoencoder.theta, &train.x)?;
    let test_features = hidden_features(&mut encoder, &autoencoder.theta, &test.x)?;
    let on_features = accuracy("self-taught-features", features, test_features)?;
    let on_pixels = accuracy("self-taught-pixels", train.x, test.x)?;
    println!(
        "digits 0-4, test accuracy: {:.2}% on learned features, {:.2}% on raw pixels",
        100.0 * on_features,
        100.0 * on_pixels
    );
    Ok(())
}
