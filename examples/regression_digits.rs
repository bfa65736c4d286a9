//! Regression on real data — scikit-learn's "face completion" idea on its 8×8 digits: predict
//! the bottom half of each digit (32 pixels, columns 33–64 of the file) from the top half
//! (columns 1–32), 20% of the 1,797 digits held out by seed 0. An MLP against two baselines
//! computed here on the same split: closed-form ridge regression (the best of several α,
//! chosen on the test split itself, which can only flatter it) and the training mean (R² ≈ 0).
//! R² is scikit-learn's `r2_score` (per output 1 − SS_res/SS_tot, then the plain mean).
//!
//! The MLP run is the same as
//! `wgnn train mlp --data csv:DIR/digits8x8/digits.csv.gz --targets columns:33-64 --test-fraction 0.2 \
//!  --hidden 256 --output relu --weight-decay 0.3 --optimizer lbfgs --iterations 500`.
//!
//! Run: `WGNN_DATA_DIR=../shared/data cargo run --release --example regression_digits`; prints
//! the R² of each and, as JSON, the baselines' R² and times.

mod common;

use std::time::Instant;

use wgnn::data::{DataSource, LoadOptions};
use wgnn::estimator::Solver;
use wgnn::linear::{Ridge, mean_prediction};
use wgnn::model::{Activation, Output};
use wgnn::train::r2_score;
use wgnn::{Mlp, Result};

fn main() {
    common::main(run)
}

fn run() -> Result<()> {
    let options = LoadOptions { targets: Some("columns:33-64".parse()?), ..Default::default() };
    let data = DataSource::Csv(common::data_dir()?.join("digits8x8/digits.csv.gz")).load(&options)?;
    let (train, test) = data.split_test(0.2, 0)?;
    let (y_train, y_test) = (train.targets.clone().expect("targets"), test.targets.clone().expect("targets"));
    let truth = y_test.mapv(f64::from);

    // Baselines.
    let start = Instant::now();
    let mut ridge = Vec::new();
    for alpha in [0.0, 1.0, 10.0, 100.0, 1000.0] {
        let fit = Ridge::fit(train.x.view(), y_train.view(), alpha)?;
        ridge.push((alpha, r2_score(truth.view(), fit.predict(test.x.view()).view())));
    }
    let ridge_seconds = start.elapsed().as_secs_f64();
    let (best_alpha, best_ridge) =
        ridge.iter().copied().fold((0.0, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a });
    let mean = r2_score(truth.view(), mean_prediction(y_train.view(), test.len()).view());

    // The MLP: 32-256-32, ReLU hidden and output (pixels are ≥ 0, and two bottom-half pixels
    // are 0 in every digit, which a ReLU output can predict exactly), squared error with
    // λ = 0.3 (for pixels 0–16), 500 L-BFGS iterations.
    let start = Instant::now();
    let model = Mlp::regressor(&[256])
        .output(Output::SquaredError(Activation::Relu))
        .weight_decay(0.3)
        .solver(Solver::Lbfgs)
        .iterations(500)
        .fit(&train.x, &y_train)?;
    let mlp_seconds = start.elapsed().as_secs_f64();
    let r2 = model.score(&test.x, &y_test)?;

    let baselines = serde_json::json!({
        "task": "digits8x8: bottom half (32 pixels) from top half (32 pixels), 20% test split, seed 0",
        "train_examples": train.len(),
        "test_examples": test.len(),
        "mlp_r2": r2,
        "mlp_seconds": mlp_seconds,
        "ridge_r2_by_alpha": ridge,
        "ridge_r2": best_ridge,
        "ridge_alpha": best_alpha,
        "ridge_seconds": ridge_seconds,
        "mean_r2": mean,
    });
    println!("{baselines}");
    println!(
        "test R²: MLP {r2:.4} ({:.1} s), ridge {best_ridge:.4} (α = {best_alpha}), training mean {mean:.4}",
        mlp_seconds
    );
    Ok(())
}
