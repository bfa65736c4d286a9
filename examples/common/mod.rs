//! What the task examples share: the data folder from `WGNN_DATA_DIR` (refusing to run
//! without it), MNIST's splits read from it, and a `main` that prints errors as one line and
//! exits non-zero. Training itself is the library's estimator API ([`wgnn::estimator`]).
#![allow(dead_code)]

use std::path::PathBuf;

use wgnn::data::{DataSource, Dataset, Digits, LoadOptions, Split};
use wgnn::{Error, Result};

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
