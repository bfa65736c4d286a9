//! The GPU backend against the f64 CPU reference: cost, gradient and forward pass on fresh
//! random inputs of awkward shapes, every activation, both losses, with and without sparsity,
//! 1 to 4 hidden layers, data split into chunks. Runs on whatever adapter wgpu finds (lavapipe
//! in CI), so shapes stay small.

mod common;

use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::gpu::{GpuBackend, GpuOptions};
use wgnn::model::{Activation, Init, NetSpec, Output, Sparsity};
use wgnn::{Backend, Batch, CpuBackend};

fn rel(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let n: f64 = b.iter().map(|y| y * y).sum();
    if n == 0.0 { d.sqrt() } else { (d / n).sqrt() }
}

fn gpu(spec: &NetSpec) -> GpuBackend {
    GpuBackend::new(spec.clone(), &GpuOptions::default())
        .expect("a GPU adapter (lavapipe in CI: apt-get install mesa-vulkan-drivers)")
}

/// Cost and gradient on both backends; returns (cost error, gradient error).
fn compare(case: &common::Case, gpu: &mut GpuBackend, batch: Batch) -> (f64, f64) {
    let mut cpu = CpuBackend::<f64>::new(case.spec.clone()).unwrap();
    case.load(&mut cpu);
    case.load(gpu);
    let mut g_cpu = vec![0.0; case.theta.len()];
    let mut g_gpu = vec![f64::NAN; case.theta.len()];
    let c_cpu = cpu.cost_and_grad(&case.theta, batch.clone(), &mut g_cpu).unwrap();
    let c_gpu = gpu.cost_and_grad(&case.theta, batch.clone(), &mut g_gpu).unwrap();
    assert!(g_gpu.iter().all(|g| g.is_finite()), "{}: non-finite GPU gradient", case.name);
    let cost_alone = gpu.cost(&case.theta, batch).unwrap();
    assert_eq!(cost_alone.total(), c_gpu.total(), "{}: cost alone differs from cost with gradient", case.name);
    (((c_gpu.total() - c_cpu.total()) / c_cpu.total()).abs(), rel(&g_gpu, &g_cpu))
}

#[test]
fn gradcheck_cases_agree_with_the_cpu_reference() {
    for case in common::gradcheck_cases() {
        let mut g = gpu(&case.spec);
        let (dc, dg) = compare(&case, &mut g, Batch::All);
        println!("{}: cost {dc:e}, gradient {dg:e}", case.name);
        assert!(dc < 1e-4 && dg < 1e-4, "{}: cost {dc:e}, gradient {dg:e}", case.name);
    }
}
