//! The library in a few lines: a UFLDL sparse autoencoder, its cost and gradient on the CPU
//! backend, and a gradient check against central differences.
//! Run: `cargo run --release --example quickstart`.

use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::model::{Init, NetSpec, Sparsity};
use wgnn::{Backend, Batch, CpuBackend, Targets, gradcheck};

fn main() -> wgnn::Result<()> {
    // 64-25-64, ρ = 0.01, λ = 1e-4, β = 3: the CS294A exercise's network.
    let spec = NetSpec::sparse_autoencoder(64, 25, 1e-4, Sparsity { target: 0.01, weight: 3.0 })?;
    let theta = Init::Uniform.theta(&spec, 42);
    let mut rng = StdRng::seed_from_u64(42);
    let x = Array2::from_shape_simple_fn((10, 64), || rng.random_range(0.0..1.0));

    let mut backend = CpuBackend::<f64>::new(spec.clone())?;
    backend.set_data((&x).into(), Targets::Inputs)?; // an autoencoder's target is its input
    let mut grad = vec![0.0; theta.len()];
    let cost = backend.cost_and_grad(&theta, Batch::All, &mut grad)?;
    println!(
        "{}: J = {} (data {}, decay {}, sparsity {})",
        spec.describe(),
        cost.total(),
        cost.data,
        cost.weight_decay,
        cost.sparsity
    );

    let report = gradcheck::check_backend(&mut backend, &theta, Batch::All)?;
    println!("relative difference {:e} (UFLDL: below 1e-9)", report.relative_difference);
    Ok(())
}
