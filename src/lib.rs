//! wgnn: feedforward networks — sparse autoencoders, softmax regression, MLPs — trained on
//! the CPU (ndarray) or any GPU wgpu reaches, every GPU result checked against the f64 CPU
//! reference. The formulas every backend computes are in [`maths`] (forward and backward
//! passes, the costs, sparsity, softmax, gradient checking, the numerically safe forms); the
//! θ layout is in [`model::ThetaLayout`] and README.md.

#![warn(missing_docs)]

// Links the BLAS that ndarray's `blas` feature calls.
#[cfg(feature = "blas")]
extern crate blas_src;

pub mod atomic;
pub mod backend;
pub mod checkpoint;
pub mod cpu;
pub mod data;
pub mod dist;
mod error;
pub mod features;
pub mod gpu;
pub mod gradcheck;
pub mod layers;
pub mod linear;
pub mod maths;
pub mod model;
pub mod npy;
pub mod optim;
pub mod predict;
pub mod stacked;
pub mod train;
pub mod update;
pub mod viz;

pub use backend::{Backend, Batch, Cost, Inputs, Targets};
pub use cpu::CpuBackend;
pub use error::short_number;
pub use error::{Error, Result, one_line};
pub use gpu::GpuBackend;
pub mod estimator;
pub use estimator::{BackendChoice, Mlp, Network, Softmax, SparseAutoencoder, Trained};
pub use estimator::{CharModel, Recurrent, StackedAutoencoder, TrainedCharModel};
