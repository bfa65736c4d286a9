//! The GPU backend against the f64 CPU reference: cost, gradient and forward pass on fresh
//! random inputs of awkward shapes (batches 1, 7, 65, 1000; widths 1, 3, 63, 64, 65, 257,
//! 784), every activation, both losses, with and without sparsity, 1 to 4 hidden layers, data
//! split into several chunks, and every output buffer poisoned with NaN before each run. Runs
//! on whatever adapter wgpu finds (lavapipe in CI), so shapes stay small. Every test runs once
//! per matmul kernel (`tiled::…` and `texture::…`).

#[macro_use]
mod common;

use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::gpu::{GpuBackend, GpuOptions, MatmulKernel};
use wgnn::model::{Activation, Init, NetSpec, Output, Sparsity};
use wgnn::{Backend, Batch, CpuBackend};

const TOLERANCE: f64 = 1e-4;

use common::relative_error as rel;

fn gpu(spec: &NetSpec, kernel: MatmulKernel) -> GpuBackend {
    let options = GpuOptions { matmul: Some(kernel), ..Default::default() };
    let mut g = GpuBackend::new(spec.clone(), &options)
        .expect("a GPU adapter (lavapipe in CI: apt-get install mesa-vulkan-drivers)");
    assert_eq!(g.gpu().matmul, kernel);
    g.set_poison(true);
    g
}

for_each_matmul_kernel!(
    gradcheck_cases_agree_with_the_cpu_reference,
    every_shape_activation_and_loss_agrees_with_the_cpu_reference,
    chunked_and_whole_data_give_the_same_cost_and_gradient,
    all_of_mnist_in_one_full_batch_evaluation_fits_the_binding_limits,
);

/// Cost and gradient on both backends for `batch`; asserts agreement and returns the errors.
fn check(case: &common::Case, cpu: &mut CpuBackend<f64>, gpu: &mut GpuBackend, batch: Batch, what: &str) -> (f64, f64) {
    let mut g_cpu = vec![0.0; case.theta.len()];
    let mut g_gpu = vec![f64::NAN; case.theta.len()];
    let c_cpu = cpu.cost_and_grad(&case.theta, batch.clone(), &mut g_cpu).unwrap().total();
    let c_gpu = gpu.cost_and_grad(&case.theta, batch.clone(), &mut g_gpu).unwrap().total();
    let alone = gpu.cost(&case.theta, batch).unwrap().total();
    let (dc, dg) = (((c_gpu - c_cpu) / c_cpu).abs(), rel(&g_gpu, &g_cpu));
    assert!(
        g_gpu.iter().all(|g| g.is_finite()) && c_gpu.is_finite(),
        "{} {what}: unwritten or non-finite output",
        case.name
    );
    assert!(dc < TOLERANCE && dg < TOLERANCE, "{} {what}: cost error {dc:e}, gradient error {dg:e}", case.name);
    assert!(((alone - c_gpu) / c_gpu).abs() < 1e-6, "{} {what}: cost alone {alone} vs {c_gpu}", case.name);
    (dc, dg)
}

struct Config {
    layers: &'static [usize],
    hidden: &'static [Activation],
    output: Output,
    sparsity: bool,
    batch: usize,
    chunk_rows: Option<usize>,
}

const S: Activation = Activation::Sigmoid;
const T: Activation = Activation::Tanh;
const R: Activation = Activation::Relu;
const L: Activation = Activation::LEAKY_RELU;
const I: Activation = Activation::Identity;

fn configs() -> Vec<Config> {
    let se = Output::SquaredError;
    let c = |layers, hidden, output, sparsity, batch, chunk_rows| Config {
        layers,
        hidden,
        output,
        sparsity,
        batch,
        chunk_rows,
    };
    vec![
        c(&[1, 3, 1], &[S], se(S), false, 1, None),
        c(&[3, 7, 3], &[T], se(T), false, 7, None),
        c(&[63, 64, 63], &[S], se(S), true, 65, Some(16)),
        c(&[65, 63, 10], &[R], Output::Softmax, false, 1000, Some(300)),
        c(&[64, 65, 65, 3], &[L, L], se(I), false, 65, None),
        c(&[784, 65, 10], &[S], Output::Softmax, false, 65, Some(20)),
        c(&[257, 64, 63, 7, 5], &[T, R, L], Output::Softmax, false, 7, None),
        c(&[10, 9, 8, 7, 6, 5], &[S, T, R, L], se(R), true, 65, Some(30)),
        c(&[20, 1, 20], &[I], se(S), false, 7, None),
        c(&[5, 4, 5], &[S], se(L), true, 1000, Some(64)),
        c(&[784, 257, 784], &[S], se(S), true, 7, None),
        c(&[63, 4], &[], Output::Softmax, false, 1000, Some(333)),
        c(&[3, 2, 4], &[S], se(T), false, 1, None),
    ]
}

fn build(config: &Config, seed: u64) -> common::Case {
    let spec = NetSpec {
        layers: config.layers.to_vec(),
        hidden_activations: config.hidden.to_vec(),
        output: config.output,
        weight_decay: 1e-3,
        sparsity: config.sparsity.then_some(Sparsity { target: 0.05, weight: 0.5 }),
        net: None,
    };
    spec.validate().unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let m = config.batch;
    let mut theta = Init::Uniform.theta(&spec, seed);
    // Random biases too, so bias paths carry non-zero values.
    let layout = wgnn::model::ThetaLayout::new(&spec);
    for v in &mut theta[layout.all_weights().end..] {
        *v = rng.random_range(-0.1..0.1);
    }
    let x = common::uniform(m, spec.inputs(), 0.0, 1.0, &mut rng);
    let (labels, values) = match spec.output {
        Output::Softmax => (Some((0..m).map(|_| rng.random_range(0..spec.outputs())).collect()), None),
        Output::SquaredError(_) if spec.outputs() == spec.inputs() => (None, None),
        Output::SquaredError(_) => (None, Some(common::uniform(m, spec.outputs(), -0.9, 0.9, &mut rng))),
        Output::SigmoidBce => unreachable!("no sigmoid-bce case here (tests/bce.rs)"),
    };
    let name = Box::leak(format!("{} m={m}", spec.describe()).into_boxed_str());
    common::Case { name, spec, theta, x, labels, values }
}

fn gradcheck_cases_agree_with_the_cpu_reference(kernel: MatmulKernel) {
    for case in common::gradcheck_cases() {
        let mut g = gpu(&case.spec, kernel);
        let mut cpu = CpuBackend::<f64>::new(case.spec.clone()).unwrap();
        case.load(&mut cpu);
        case.load(&mut g);
        let (dc, dg) = check(&case, &mut cpu, &mut g, Batch::All, "all");
        println!("{}: cost {dc:e}, gradient {dg:e}", case.name);
    }
}

fn every_shape_activation_and_loss_agrees_with_the_cpu_reference(kernel: MatmulKernel) {
    for (i, config) in configs().iter().enumerate() {
        let case = build(config, 100 + i as u64);
        let mut g = gpu(&case.spec, kernel);
        if let Some(rows) = config.chunk_rows {
            g.set_max_chunk_rows(rows);
        }
        let mut cpu = CpuBackend::<f64>::new(case.spec.clone()).unwrap();
        case.load(&mut cpu);
        case.load(&mut g);
        let (dc, dg) = check(&case, &mut cpu, &mut g, Batch::All, "all");
        println!("{}: cost {dc:e}, gradient {dg:e}", case.name);
        let m = config.batch;
        // A range that crosses chunk boundaries, and scattered rows with a repeat.
        if m > 2 {
            check(&case, &mut cpu, &mut g, Batch::Rows(1..m - 1), "rows");
        }
        let ix: Vec<usize> = (0..m.min(40)).rev().chain([0]).collect();
        check(&case, &mut cpu, &mut g, Batch::Indices(&ix), "indices");
        // Twice more, so the cached plan and the reused gather buffers are exercised.
        check(&case, &mut cpu, &mut g, Batch::Indices(&ix), "indices again");
        check(&case, &mut cpu, &mut g, Batch::All, "all again");

        let a_cpu = cpu.forward(&case.theta, (&case.x).into()).unwrap();
        let a_gpu = g.forward(&case.theta, (&case.x).into()).unwrap();
        for (l, (c, gp)) in a_cpu.iter().zip(&a_gpu).enumerate() {
            assert_eq!(c.dim(), gp.dim());
            let d = rel(gp.as_slice().unwrap(), c.as_slice().unwrap());
            assert!(d < TOLERANCE, "{}: forward layer {l} differs by {d:e}", case.name);
        }
        if case.spec.output == Output::Softmax {
            assert_eq!(
                cpu.classify(&case.theta, (&case.x).into()).unwrap(),
                g.classify(&case.theta, (&case.x).into()).unwrap()
            );
        }
    }
}

fn chunked_and_whole_data_give_the_same_cost_and_gradient(kernel: MatmulKernel) {
    let config = Config {
        layers: &[30, 20, 30],
        hidden: &[S],
        output: Output::SquaredError(S),
        sparsity: true,
        batch: 200,
        chunk_rows: None,
    };
    let case = build(&config, 7);
    let eval = |chunk: Option<usize>| {
        let mut g = gpu(&case.spec, kernel);
        if let Some(r) = chunk {
            g.set_max_chunk_rows(r);
        }
        case.load(&mut g);
        let mut grad = vec![0.0; case.theta.len()];
        let c = g.cost_and_grad(&case.theta, Batch::All, &mut grad).unwrap().total();
        (c, grad)
    };
    let (c1, g1) = eval(None);
    for rows in [1, 17, 199] {
        let (c, g) = eval(Some(rows));
        assert!(
            ((c - c1) / c1).abs() < 1e-5 && rel(&g, &g1) < 1e-5,
            "chunks of {rows}: {c} vs {c1}, {:e}",
            rel(&g, &g1)
        );
    }
}

fn all_of_mnist_in_one_full_batch_evaluation_fits_the_binding_limits(kernel: MatmulKernel) {
    // 60,000 × 784 f32 is 188 MB, over the 128 MiB storage binding lavapipe (and WebGPU's
    // default) allows: the backend must chunk it and accumulate the gradient on the device.
    use wgnn::data::{DataSource, LoadOptions};
    let dir = common::data_dir().join("mnist");
    let data = DataSource::Mnist(dir).load(&LoadOptions::default()).unwrap();
    assert_eq!(data.x.dim(), (60_000, 784));
    let labels = data.labels.clone().unwrap();
    let spec = NetSpec::softmax_regression(784, 10, 1e-4).unwrap();
    let theta = Init::Normal { epsilon: 0.005 }.theta(&spec, 1);
    let mut g = gpu(&spec, kernel);
    g.set_data((&data.x).into(), wgnn::Targets::Labels(&labels)).unwrap();
    let binding = g.gpu().limits.max_storage_buffer_binding_size;
    println!("max storage binding {} MiB; data {} MB", binding >> 20, 60_000 * 784 * 4 / 1_000_000);
    let mut cpu = CpuBackend::<f64>::new(spec.clone()).unwrap();
    cpu.set_data((&data.x).into(), wgnn::Targets::Labels(&labels)).unwrap();
    let mut g_gpu = vec![f64::NAN; theta.len()];
    let mut g_cpu = vec![0.0; theta.len()];
    let c_gpu = g.cost_and_grad(&theta, Batch::All, &mut g_gpu).unwrap().total();
    let c_cpu = cpu.cost_and_grad(&theta, Batch::All, &mut g_cpu).unwrap().total();
    let (dc, dg) = (((c_gpu - c_cpu) / c_cpu).abs(), rel(&g_gpu, &g_cpu));
    println!("MNIST 60,000: cost {c_gpu} (cpu {c_cpu}), errors {dc:e} {dg:e}");
    assert!(dc < TOLERANCE && dg < TOLERANCE, "cost {dc:e}, gradient {dg:e}");
}

/// Data handed over as `Inputs::Shared` is kept by the GPU backend as its host copy (a second
/// handle, no copy), and gives the bits of the same data lent as a plain f32 view.
#[test]
fn shared_data_is_kept_not_copied_and_gives_the_same_bits() {
    use std::sync::Arc;
    use wgnn::backend::Inputs;
    for case in common::gradcheck_cases() {
        let x = Arc::new(case.x.mapv(|v| v as f32));
        let mut lent = gpu(&case.spec, MatmulKernel::Tiled);
        lent.set_data(Inputs::F32(x.view()), case.targets()).unwrap();
        let mut shared = gpu(&case.spec, MatmulKernel::Tiled);
        shared.set_data(Inputs::Shared(&x), case.targets()).unwrap();
        assert_eq!(Arc::strong_count(&x), 2, "{}: the GPU backend copied the shared examples", case.name);
        let (mut g_lent, mut g_shared) = (vec![0.0; case.theta.len()], vec![0.0; case.theta.len()]);
        let ix: Vec<usize> = (0..x.nrows()).rev().step_by(2).collect();
        for batch in [Batch::All, Batch::Indices(&ix)] {
            let c_lent = lent.cost_and_grad(&case.theta, batch.clone(), &mut g_lent).unwrap().total();
            let c_shared = shared.cost_and_grad(&case.theta, batch.clone(), &mut g_shared).unwrap().total();
            assert_eq!(c_lent.to_bits(), c_shared.to_bits(), "{}: cost on {batch:?}", case.name);
            assert!(g_lent.iter().zip(&g_shared).all(|(a, b)| a.to_bits() == b.to_bits()), "{}: gradient", case.name);
        }
        drop(shared);
        assert_eq!(Arc::strong_count(&x), 1, "{}: the dropped backend still holds the examples", case.name);
    }
}
