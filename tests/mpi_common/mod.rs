//! The networks and data both MPI test files evaluate (`tests/mpi_threads.rs`: ranks as
//! threads; `tests/mpi.rs`: ranks under mpirun), and one process's answer to compare with.
#![allow(dead_code)]

use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::cpu::Real;
use wgnn::model::{Activation, Init, InputShape, LayerStack, NetSpec, Output, Sparsity, parse_net};
use wgnn::{Backend, Batch, CpuBackend, Targets};

fn uniform(rows: usize, cols: usize, lo: f64, hi: f64, rng: &mut StdRng) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(lo..hi))
}

/// Labels 0..k with every class present (k ≤ m).
fn labels(m: usize, k: usize, rng: &mut StdRng) -> Vec<usize> {
    (0..m).map(|i| if i < k { i } else { rng.random_range(0..k) }).collect()
}

/// A network, its data (m rows) and a θ to evaluate it at.
pub struct Problem {
    pub name: &'static str,
    pub spec: NetSpec,
    pub x: Array2<f64>,
    pub labels: Option<Vec<usize>>,
    pub theta: Vec<f64>,
}

impl Problem {
    pub fn targets(&self) -> Targets<'_> {
        self.labels.as_deref().map_or(Targets::Inputs, Targets::Labels)
    }
}

pub fn problems(m: usize) -> Vec<Problem> {
    let mut rng = StdRng::seed_from_u64(17);
    let sae = NetSpec::sparse_autoencoder(64, 25, 1e-4, Sparsity { target: 0.05, weight: 3.0 }).unwrap();
    let softmax = NetSpec::softmax_regression(20, 5, 1e-4).unwrap();
    let mlp =
        NetSpec::new(&[20, 16, 12, 5], Activation::Tanh, Output::Softmax).unwrap().with_weight_decay(1e-3).unwrap();
    let parsed = parse_net("conv 2x3x3 tanh, maxpool 2, softmax").unwrap();
    let cnn = NetSpec::stack(LayerStack { input: InputShape::image(1, 8, 8), layers: parsed.layers }, 4, parsed.output)
        .unwrap()
        .with_weight_decay(1e-3)
        .unwrap();
    vec![
        Problem {
            name: "sparse autoencoder 64-25-64",
            theta: Init::Uniform.theta(&sae, 1),
            spec: sae,
            x: uniform(m, 64, 0.0, 1.0, &mut rng),
            labels: None,
        },
        Problem {
            name: "softmax 20→5",
            theta: Init::Normal { epsilon: 0.1 }.theta(&softmax, 2),
            spec: softmax,
            x: uniform(m, 20, 0.0, 1.0, &mut rng),
            labels: Some(labels(m, 5, &mut rng)),
        },
        Problem {
            name: "MLP 20-16-12-5",
            theta: Init::Uniform.theta(&mlp, 3),
            spec: mlp,
            x: uniform(m, 20, -1.0, 1.0, &mut rng),
            labels: Some(labels(m, 5, &mut rng)),
        },
        Problem {
            name: "CNN conv 2x3x3, maxpool 2 → softmax 4",
            theta: Init::Uniform.theta(&cnn, 4),
            spec: cnn,
            x: uniform(m, 64, 0.0, 1.0, &mut rng),
            labels: Some(labels(m, 4, &mut rng)),
        },
    ]
}

/// J and ∇J on `batch` in one process (precision F), no data parallelism.
pub fn single<F: Real>(p: &Problem, batch: Batch<'_>) -> (f64, Vec<f64>) {
    let mut b = CpuBackend::<F>::new(p.spec.clone()).unwrap();
    b.set_data((&p.x).into(), p.targets()).unwrap();
    let mut g = vec![0.0; p.theta.len()];
    let c = b.cost_and_grad(&p.theta, batch, &mut g).unwrap();
    (c.total(), g)
}

/// ‖got − reference‖ / ‖reference‖.
pub fn relative_error(got: &[f64], reference: &[f64]) -> f64 {
    let diff: f64 = got.iter().zip(reference).map(|(a, b)| (a - b) * (a - b)).sum();
    let norm: f64 = reference.iter().map(|b| b * b).sum();
    (diff / norm).sqrt()
}
