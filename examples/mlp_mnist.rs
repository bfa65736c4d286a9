//! An MLP classifier on MNIST: 784-1024-512-10, ReLU, softmax output, λ = 1e-4, Adam
//! (η = 1e-3, batches of 200), η divided by 10 when the validation error has not improved for
//! two epochs, early stopping after five epochs without improvement (10% of the training
//! images held out for it), at most 30 epochs; accuracy on the 10,000 test images.
//! The same run as README's
//! `wgnn train mlp --data mnist:DIR --test-data mnist:DIR --hidden 1024,512 --weight-decay 1e-4 \
//!  --schedule plateau:0.1:1 --validation 0.1 --patience 5`.
//!
//! Run: `WGNN_DATA_DIR=../shared/data cargo run --release --example mlp_mnist`; writes
//! `runs/examples/mlp-mnist/` (metrics.json has `test_accuracy` and `seconds`).

mod common;

use wgnn::data::Split;
use wgnn::model::{Activation, NetSpec, Output};
use wgnn::optim::{Method, Minibatch, Plateau, Schedule};
use wgnn::{CpuBackend, Result, Targets};

fn main() {
    common::main(run)
}

fn run() -> Result<()> {
    let (train, test) = (common::mnist(Split::Train, None)?, common::mnist(Split::Test, None)?);
    let spec = NetSpec::new(&[784, 1024, 512, 10], Activation::Relu, Output::Softmax)?.with_weight_decay(1e-4)?;
    let schedule = Schedule::ReduceOnPlateau(Plateau { factor: 0.1, patience: 1, ..Plateau::default() });
    let method = Method::Minibatch(Minibatch::adam(1e-3).with_schedule(schedule).with_batch_size(200));
    let mut job = common::job("mlp-mnist", spec.clone(), method, 30, Some((test.x, test.labels.unwrap().into())));
    job.validation_fraction = 0.1;
    job.patience = Some(5);
    let mut backend = CpuBackend::<f32>::new(spec)?;
    let labels = train.labels.as_deref().expect("MNIST has labels");
    let outcome = common::fit(job, &mut backend, &train.x, Targets::Labels(labels), 1)?;
    println!(
        "MLP: test accuracy {:.2}% after {} epochs",
        100.0 * outcome.test_accuracy.unwrap_or(f64::NAN),
        outcome.summary.iterations
    );
    Ok(())
}
