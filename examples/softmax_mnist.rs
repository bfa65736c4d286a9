//! Softmax regression on MNIST's raw pixels (UFLDL's exercise): 784 → 10, λ = 1e-4, 100
//! L-BFGS iterations on all 60,000 training images, accuracy on the 10,000 test images.
//! The same run as `wgnn train softmax --data mnist:DIR --test-data mnist:DIR`.
//!
//! Run: `WGNN_DATA_DIR=../shared/data cargo run --release --example softmax_mnist`; writes
//! `runs/examples/softmax-mnist/` (metrics.json has `test_accuracy` and `seconds`).

mod common;

use wgnn::data::Split;
use wgnn::model::NetSpec;
use wgnn::{CpuBackend, Result, Targets};

fn main() {
    common::main(run)
}

fn run() -> Result<()> {
    let (train, test) = (common::mnist(Split::Train, None)?, common::mnist(Split::Test, None)?);
    let spec = NetSpec::softmax_regression(784, 10, 1e-4)?;
    let method = common::lbfgs(&spec);
    let job = common::job("softmax-mnist", spec.clone(), method, 100, Some((test.x, test.labels.unwrap().into())));
    let mut backend = CpuBackend::<f32>::new(spec)?;
    let labels = train.labels.as_deref().expect("MNIST has labels");
    let outcome = common::fit(job, &mut backend, &train.x, Targets::Labels(labels), 10)?;
    println!("softmax regression: test accuracy {:.2}%", 100.0 * outcome.test_accuracy.unwrap_or(f64::NAN));
    Ok(())
}
