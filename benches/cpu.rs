//! CPU backend benchmarks: GEMM rate and one full cost-and-gradient evaluation for the
//! networks people train (issue 6 grows this into the CPU-vs-GPU harness). Throughput is
//! counted in floating-point operations (2mnk per matmul), so criterion's "elem/s" reads as
//! FLOP/s. Run: `cargo bench --bench cpu`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ndarray::Array2;
use ndarray::linalg::general_mat_mul;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use std::hint::black_box;
use wgnn::model::{Activation, Init, NetSpec, Output, Sparsity};
use wgnn::{Backend, Batch, CpuBackend, Targets};

fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(0.0..1.0))
}

fn matmul(c: &mut Criterion) {
    let mut group = c.benchmark_group("matmul_f32");
    group.sample_size(10);
    for (m, k, n) in [(1024, 1024, 1024), (10_000, 784, 196)] {
        let (a, b) = (random(m, k, 1), random(k, n, 2));
        let mut out = Array2::<f32>::zeros((m, n));
        group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        group.bench_function(format!("{m}x{k}x{n}"), |bench| {
            bench.iter(|| general_mat_mul(1.0, &a, &b, 0.0, &mut out));
        });
    }
    group.finish();
}

/// FLOPs of one cost-and-gradient: forward (2mnk per layer) and backward (two products per
/// layer, minus the input delta of the first layer).
fn step_flops(spec: &NetSpec, m: usize) -> u64 {
    let per_layer: Vec<u64> = spec.layers.windows(2).map(|w| 2 * (m * w[0] * w[1]) as u64).collect();
    3 * per_layer.iter().sum::<u64>() - per_layer[0]
}

fn step<F: wgnn::cpu::Real>(c: &mut Criterion, name: &str, spec: NetSpec, m: usize, labels: bool) {
    let x = random(m, spec.inputs(), 3);
    let y: Vec<usize> = (0..m).map(|i| i % spec.outputs()).collect();
    let theta = Init::Uniform.theta(&spec, 0);
    let mut backend = CpuBackend::<F>::new(spec.clone()).unwrap();
    let targets = if labels { Targets::Labels(&y) } else { Targets::Inputs };
    backend.set_data((&x).into(), targets).unwrap();
    let mut grad = vec![0.0; theta.len()];
    let mut group = c.benchmark_group("cost_and_grad");
    group.sample_size(10);
    group.throughput(Throughput::Elements(step_flops(&spec, m)));
    group.bench_function(format!("{name}_{}_m{m}", F::NAME), |bench| {
        bench.iter(|| black_box(backend.cost_and_grad(&theta, Batch::All, &mut grad).unwrap()));
    });
    group.finish();
}

fn steps(c: &mut Criterion) {
    let sae = NetSpec::sparse_autoencoder(784, 196, 3e-3, Sparsity { target: 0.1, weight: 3.0 }).unwrap();
    let softmax = NetSpec::softmax_regression(784, 10, 1e-4).unwrap();
    let mlp = NetSpec::new(&[784, 256, 128, 10], Activation::Relu, Output::Softmax).unwrap();
    step::<f32>(c, "sparse_autoencoder_784_196", sae.clone(), 10_000, false);
    step::<f64>(c, "sparse_autoencoder_784_196", sae, 10_000, false);
    step::<f32>(c, "softmax_784_10", softmax, 10_000, true);
    step::<f32>(c, "mlp_784_256_128_10", mlp.clone(), 256, true);
    step::<f32>(c, "mlp_784_256_128_10", mlp, 10_000, true);
}

criterion_group!(benches, matmul, steps);
criterion_main!(benches);
