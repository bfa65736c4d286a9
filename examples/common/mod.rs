//! What the task examples share: the data folder from `WGNN_DATA_DIR` (refusing to run
//! without it), MNIST splits, a [`TrainJob`] with the usual defaults writing to
//! `runs/examples/NAME/`, and a `main` that prints errors as one line and exits non-zero.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use ndarray::Array2;
use wgnn::data::{DataSource, Dataset, Digits, LoadOptions, Split};
use wgnn::model::{NetSpec, ThetaLayout};
use wgnn::optim::{Lbfgs, Method};
use wgnn::train::{TestTargets, TrainJob, TrainOutcome, train};
use wgnn::{Backend, Error, Result, Targets};

/// Runs `task`; an error ends the program with one line on stderr and exit status 1.
pub fn main(task: fn() -> Result<()>) {
    if let Err(e) = task() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// The real data sets' folder, from `WGNN_DATA_DIR`: an error (not a guess) when it is unset.
pub fn data_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("WGNN_DATA_DIR").map(PathBuf::from).ok_or_else(|| {
        Error::Data(
            "WGNN_DATA_DIR is not set: run as `WGNN_DATA_DIR=../shared/data cargo run --release --example …`".into(),
        )
    })?;
    if !dir.is_dir() {
        return Err(Error::Data(format!("WGNN_DATA_DIR={} is not a folder", dir.display())));
    }
    Ok(dir)
}

/// MNIST's training or test split, optionally only some digits.
pub fn mnist(split: Split, digits: Option<&str>) -> Result<Dataset> {
    let options =
        LoadOptions { split: Some(split), digits: digits.map(str::parse::<Digits>).transpose()?, ..Default::default() };
    DataSource::Mnist(data_dir()?.join("mnist")).load(&options)
}

/// L-BFGS as `wgnn train` sets it up: minFunc's history of 100 up to 50,000 parameters, 10 above.
pub fn lbfgs(spec: &NetSpec) -> Method {
    Method::Lbfgs(Lbfgs::default().with_memory(Lbfgs::memory_for(ThetaLayout::new(spec).len())))
}

/// A job with the CLI's defaults (uniform initialisation, seed 0, no validation split) that
/// writes `runs/examples/NAME/`.
pub fn job(
    name: &str,
    spec: NetSpec,
    method: Method,
    iterations: usize,
    test: Option<(Array2<f32>, TestTargets)>,
) -> TrainJob {
    let out = PathBuf::from("runs/examples").join(name);
    TrainJob { data_description: name.into(), test_set: test, ..TrainJob::new(spec, method, iterations, out) }
}

/// Trains, printing the cost every `every` iterations, and says where the run went.
pub fn fit(
    job: TrainJob,
    backend: &mut dyn Backend,
    x: &Array2<f32>,
    y: Targets<'_>,
    every: usize,
) -> Result<TrainOutcome> {
    let out = job.out_dir.clone();
    eprintln!(
        "training {} on {} examples with {} ({})",
        job.spec.describe(),
        x.nrows(),
        job.method.name(),
        backend.name()
    );
    let outcome = train(
        job,
        backend,
        x,
        y,
        &mut |p| {
            if let Some(r) = p.record.filter(|r| r.iteration % every == 0) {
                eprintln!("  iteration {:>4}  J = {:.6}  {:.1} s", r.iteration, r.cost, r.seconds);
            }
        },
        &AtomicBool::new(false),
    )?;
    eprintln!(
        "  {} iterations in {:.1} s; wrote {}",
        outcome.summary.iterations,
        outcome.summary.seconds,
        out.join("metrics.json").display()
    );
    Ok(outcome)
}
