//! How the GPU backend's data reach its kernels (`src/gpu/data.rs`, `shaders/gather.wgsl`):
//! data streamed from the host chunk by chunk give the same cost and gradient as resident
//! data (bit for bit: same chunks, same kernels, same order) and the CPU reference's within
//! f32 rounding; shuffled minibatches gathered on the device give bit for bit the batches the
//! host gathers, and only the index list crosses the bus; a buffer the device cannot hold is
//! a clear error. Small shapes: lavapipe in CI; outputs poisoned with NaN.

mod common;

use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::backend::{Batch, DeviceTraining};
use wgnn::gpu::{GATHER_SHAPES, Gpu, GpuBackend, GpuOptions};
use wgnn::model::{Activation, Init, NetSpec, Output, Sparsity};
use wgnn::optim::{BackendObjective, Hooks, Method, Minibatch, Optimizer, Stop, UpdateRule, UpdateState};
use wgnn::{Backend, CpuBackend, Targets};

use common::relative_error as rel;

/// 47 rows in chunks of 10: five chunks, the last of 7.
const ROWS: usize = 47;
const CHUNK: usize = 10;

/// A network, θ and data: targets are the inputs, labels, or real values.
struct Net {
    name: &'static str,
    spec: NetSpec,
    theta: Vec<f64>,
    x: Array2<f64>,
    labels: Option<Vec<usize>>,
    values: Option<Array2<f64>>,
}

impl Net {
    fn targets(&self) -> Targets<'_> {
        match (&self.labels, &self.values) {
            (Some(l), _) => Targets::Labels(l),
            (_, Some(v)) => Targets::Values(v.into()),
            _ => Targets::Inputs,
        }
    }
}

fn nets() -> Vec<Net> {
    let mut rng = StdRng::seed_from_u64(21);
    let sae = NetSpec::sparse_autoencoder(30, 12, 1e-3, Sparsity { target: 0.05, weight: 3.0 }).unwrap();
    let softmax =
        NetSpec::new(&[20, 16, 5], Activation::Tanh, Output::Softmax).unwrap().with_weight_decay(1e-3).unwrap();
    let regression = NetSpec::new(&[6, 8, 3], Activation::Sigmoid, Output::SquaredError(Activation::Identity)).unwrap();
    vec![
        Net {
            name: "sparse autoencoder 30-12-30 (two passes)",
            theta: Init::Uniform.theta(&sae, 1),
            spec: sae,
            x: common::uniform(ROWS, 30, 0.0, 1.0, &mut rng),
            labels: None,
            values: None,
        },
        Net {
            name: "softmax MLP 20-16-5",
            theta: Init::Uniform.theta(&softmax, 2),
            spec: softmax,
            x: common::uniform(ROWS, 20, -1.0, 1.0, &mut rng),
            labels: Some(common::labels(ROWS, 5, &mut rng)),
            values: None,
        },
        Net {
            name: "regression 6-8-3",
            theta: Init::Uniform.theta(&regression, 3),
            spec: regression,
            x: common::normal(ROWS, 6, &mut rng),
            labels: None,
            values: Some(common::normal(ROWS, 3, &mut rng)),
        },
    ]
}

/// A poisoned GPU backend with chunks of `CHUNK` rows, streaming when `streaming`.
fn gpu(net: &Net, streaming: bool) -> GpuBackend {
    let mut g = GpuBackend::new(net.spec.clone(), &GpuOptions::default())
        .expect("a GPU adapter (lavapipe in CI: apt-get install mesa-vulkan-drivers)");
    g.set_poison(true);
    g.set_max_chunk_rows(CHUNK);
    if streaming {
        g.set_max_resident_bytes(0);
    }
    g.set_data((&net.x).into(), net.targets()).unwrap();
    assert_eq!(g.is_streaming(), streaming, "{}", net.name);
    g
}

fn eval(backend: &mut dyn Backend, theta: &[f64], batch: Batch<'_>) -> (f64, Vec<f64>) {
    let mut grad = vec![f64::NAN; theta.len()];
    let cost = backend.cost_and_grad(theta, batch, &mut grad).unwrap().total();
    (cost, grad)
}

#[test]
fn streamed_data_give_the_resident_cost_and_gradient_bit_for_bit() {
    for net in nets() {
        let mut resident = gpu(&net, false);
        let mut streamed = gpu(&net, true);
        let mut cpu = CpuBackend::<f64>::new(net.spec.clone()).unwrap();
        cpu.set_data((&net.x).into(), net.targets()).unwrap();
        // All rows, and a range that starts and ends inside chunks.
        for batch in [Batch::All, Batch::Rows(3..41), Batch::Rows(12..13)] {
            let what = format!("{} {batch:?}", net.name);
            let (c_res, g_res) = eval(&mut resident, &net.theta, batch.clone());
            let before = streamed.data_uploaded_bytes();
            let (c_str, g_str) = eval(&mut streamed, &net.theta, batch.clone());
            assert!(streamed.data_uploaded_bytes() > before, "{what}: nothing was streamed");
            assert!(c_str.is_finite() && g_str.iter().all(|v| v.is_finite()), "{what}: unwritten output");
            assert_eq!(c_str.to_bits(), c_res.to_bits(), "{what}: cost {c_str} streamed vs {c_res} resident");
            assert_eq!(g_str, g_res, "{what}: gradients differ");
            let (c_cpu, g_cpu) = eval(&mut cpu, &net.theta, batch.clone());
            let (dc, dg) = (((c_str - c_cpu) / c_cpu).abs(), rel(&g_str, &g_cpu));
            assert!(dc < 1e-4 && dg < 1e-4, "{what}: against the CPU, cost {dc:e}, gradient {dg:e}");
            // The cost alone takes the same stretches without the backward pass.
            let cost = streamed.cost(&net.theta, batch.clone()).unwrap().total();
            assert!(((cost - c_cpu) / c_cpu).abs() < 1e-4, "{what}: cost alone {cost} vs {c_cpu}");
        }
        // The sparse autoencoder visits every chunk twice (ρ̂ first); the others once. Each
        // visit uploads the chunk's examples (and targets or labels).
        let per_row = net.spec.inputs() + net.values.as_ref().map_or(0, |v| v.ncols()) + net.labels.is_some() as usize;
        let visits = if net.spec.sparsity.is_some() { 2 } else { 1 };
        let before = streamed.data_uploaded_bytes();
        eval(&mut streamed, &net.theta, Batch::All);
        assert_eq!(streamed.data_uploaded_bytes() - before, (visits * ROWS * per_row * 4) as u64, "{}", net.name);
    }
}

#[test]
fn device_training_steps_alike_on_streamed_and_resident_data() {
    let net = &nets()[0];
    let rule = UpdateRule::ADAM;
    let mut thetas = Vec::new();
    for streaming in [false, true] {
        let mut g = gpu(net, streaming);
        let mut state = UpdateState::new(rule, net.theta.len());
        g.load(&net.theta, &state).unwrap();
        for step in 1..=3 {
            let batch = if step == 2 { Batch::Rows(5..38) } else { Batch::All };
            let s = g.step(batch, &rule.scalars(step, 0.01)).unwrap();
            assert!(s.cost.is_finite() && s.grad_norm > 0.0, "step {step}: {s:?}");
        }
        let mut theta = vec![f64::NAN; net.theta.len()];
        g.read(&mut theta, &mut state).unwrap();
        assert!(rel(&theta, &net.theta) > 1e-4, "θ did not move");
        thetas.push(theta);
    }
    assert_eq!(thetas[0], thetas[1], "θ after three Adam steps, resident vs streamed");
}

/// Index lists: duplicates, every chunk, scattered, a batch of 1, a batch spanning several
/// gathered chunks, all rows reversed.
fn index_lists(rng: &mut StdRng) -> Vec<Vec<usize>> {
    let random: Vec<usize> = (0..25).map(|_| rng.random_range(0..ROWS)).collect();
    let every_chunk: Vec<usize> = (0..ROWS).step_by(CHUNK).chain([ROWS - 1, 0, ROWS - 1]).collect();
    vec![random, every_chunk, vec![46], vec![0], (0..ROWS).rev().collect(), vec![9, 10, 9, 10, 19, 20, 39, 40]]
}

#[test]
fn device_gather_gives_the_host_gathers_batch_cost_and_gradient() {
    let mut rng = StdRng::seed_from_u64(5);
    for net in nets() {
        let mut g = gpu(&net, false);
        let per_row = net.spec.inputs() + net.values.as_ref().map_or(0, |v| v.ncols()) + net.labels.is_some() as usize;
        for ix in index_lists(&mut rng) {
            let what = format!("{} indices {ix:?}", net.name);
            g.set_device_gather(false);
            let before = g.data_uploaded_bytes();
            let (c_host, g_host) = eval(&mut g, &net.theta, Batch::Indices(&ix));
            assert_eq!(g.data_uploaded_bytes() - before, (ix.len() * per_row * 4) as u64, "{what}: host gather");
            g.set_device_gather(true);
            let before = g.data_uploaded_bytes();
            let (c_dev, g_dev) = eval(&mut g, &net.theta, Batch::Indices(&ix));
            // Only the u32 index list went up: the rows were gathered on the device.
            assert_eq!(g.data_uploaded_bytes() - before, (ix.len() * 4) as u64, "{what}: device gather");
            assert!(c_dev.is_finite() && g_dev.iter().all(|v| v.is_finite()), "{what}: unwritten output");
            assert_eq!(c_dev.to_bits(), c_host.to_bits(), "{what}: cost {c_dev} vs {c_host}");
            assert_eq!(g_dev, g_host, "{what}: gradients differ");
        }
        // Streamed data keep the host gather, and give the same numbers.
        let mut s = gpu(&net, true);
        let ix: Vec<usize> = (0..ROWS).rev().step_by(3).collect();
        let before = s.data_uploaded_bytes();
        let (c_str, g_str) = eval(&mut s, &net.theta, Batch::Indices(&ix));
        assert_eq!(s.data_uploaded_bytes() - before, (ix.len() * per_row * 4) as u64, "{}: streamed", net.name);
        let (c_dev, g_dev) = eval(&mut g, &net.theta, Batch::Indices(&ix));
        assert_eq!((c_str.to_bits(), g_str), (c_dev.to_bits(), g_dev), "{}: streamed vs device gather", net.name);
    }
}

/// `len` row indices drawn at random (with repeats).
fn random_indices(len: usize, rng: &mut StdRng) -> Vec<usize> {
    (0..len).map(|_| rng.random_range(0..ROWS)).collect()
}

#[test]
fn alternating_batch_sizes_keep_their_gathered_buffers_and_plans() {
    // An epoch's full minibatches and its short last one take turns. Batches of 32 rows
    // gather into chunks of 10, 10, 10 and 2; of 20 rows into 10 and 10; of 7 into one of 7.
    let (a, b, c) = (32, 20, 7);
    assert_eq!(GATHER_SHAPES, 2, "the counts below are for two kept batch shapes");
    let mut rng = StdRng::seed_from_u64(17);
    for net in nets() {
        for device_gather in [true, false] {
            let what = format!("{}, device gather {device_gather}", net.name);
            let mut g = gpu(&net, false);
            g.set_device_gather(device_gather);
            eval(&mut g, &net.theta, Batch::All);
            let start = g.builds();
            // Each batch draws new rows, so a plan reading another batch's buffers, or rows
            // left from an earlier batch of its size, gives numbers unlike a fresh backend's.
            let mut check = |g: &mut GpuBackend, len: usize, sets: u64, step: &str| {
                let ix = random_indices(len, &mut rng);
                let (cost, grad) = eval(g, &net.theta, Batch::Indices(&ix));
                let mut fresh = gpu(&net, false);
                fresh.set_device_gather(device_gather);
                let (c_fresh, g_fresh) = eval(&mut fresh, &net.theta, Batch::Indices(&ix));
                assert!(cost.is_finite() && grad.iter().all(|v| v.is_finite()), "{what}, {step}: unwritten output");
                assert_eq!(cost.to_bits(), c_fresh.to_bits(), "{what}, {step}: cost {cost} vs fresh {c_fresh}");
                assert_eq!(grad, g_fresh, "{what}, {step}: gradient vs a fresh backend's");
                let built = g.builds();
                let (sets_built, plans_built) = (built.gather_sets - start.gather_sets, built.plans - start.plans);
                assert_eq!((sets_built, plans_built), (sets, sets), "{what}, {step}: (buffer sets, plans) built");
            };
            // Built once per size, however often the sizes alternate.
            for (step, (len, sets)) in [(a, 1), (b, 2), (a, 2), (b, 2), (a, 2)].into_iter().enumerate() {
                check(&mut g, len, sets, &format!("batch {step} of {len} rows"));
            }
            // A third size evicts the least recently used (b); a stays, b comes back anew.
            check(&mut g, c, 3, "a third size");
            check(&mut g, a, 3, "the first size after the third");
            check(&mut g, b, 4, "the evicted size again");
            check(&mut g, c, 5, "the third size, evicted by the second");
            // The whole data's plan survived every eviction.
            let plans = g.builds().plans;
            eval(&mut g, &net.theta, Batch::All);
            assert_eq!(g.builds().plans, plans, "{what}: the loaded data's plan was rebuilt");
        }
    }
}

#[test]
fn minibatch_adam_on_the_device_is_unchanged_by_the_device_gather() {
    let net = &nets()[1];
    let batch = 8;
    let method = Method::Minibatch(Minibatch::adam(0.01).with_batch_size(batch).with_seed(7));
    let epochs = 2;
    let steps = epochs * ROWS.div_ceil(batch);
    let mut runs = Vec::new();
    for device_gather in [false, true] {
        let mut g = gpu(net, false);
        g.set_device_gather(device_gather);
        let mut theta = net.theta.clone();
        let mut opt = Optimizer::new(method.clone()).unwrap();
        let stop = Stop { cost_tol: 0.0, ..Stop::MINIBATCH.with_max_iterations(epochs) };
        let (uploads, before) = (g.transfers().theta_uploads, g.data_uploaded_bytes());
        opt.run(&mut BackendObjective::new(&mut g), &mut theta, &stop, &mut Hooks::new()).unwrap();
        assert_eq!(g.transfers().theta_uploads - uploads, 1, "θ stays on the device");
        let bytes = g.data_uploaded_bytes() - before;
        // 47 rows per epoch; device gather: 4 bytes per row (its index); host: 21 floats.
        let per_row = if device_gather { 4 } else { (net.spec.inputs() + 1) * 4 };
        assert_eq!(bytes, (epochs * ROWS * per_row) as u64, "device gather {device_gather}: {steps} steps");
        // Batches of 8 rows and each epoch's last of 7: one buffer set and one plan per size,
        // not two rebuilds an epoch.
        let built = g.builds();
        assert_eq!((built.gather_sets, built.plans), (2, 2), "device gather {device_gather}: built");
        runs.push(theta);
    }
    assert!(rel(&runs[1], &net.theta) > 1e-3, "θ did not move");
    assert_eq!(runs[0], runs[1], "θ after Adam with the host gather vs the device gather");
}

#[test]
fn a_buffer_the_device_cannot_hold_is_a_clear_error() {
    let net = &nets()[0];
    let mut gpu = Gpu::open(&GpuOptions::default()).expect("a GPU adapter");
    // A device that binds 4 KiB at most: chunks of 34 rows of 30 floats fit; 47 rows do not.
    gpu.limits.max_storage_buffer_binding_size = 4096;
    let mut g = GpuBackend::on(net.spec.clone(), gpu).unwrap();
    g.set_data((&net.x).into(), net.targets()).expect("the default chunks fit");
    let (c, _) = eval(&mut g, &net.theta, Batch::All);
    assert!(c.is_finite());
    g.set_max_chunk_rows(1000);
    let e = g.set_data((&net.x).into(), net.targets()).unwrap_err().to_string();
    assert!(e.contains("47 rows") && e.contains("set_max_chunk_rows") && e.contains("--backend cpu"), "{e}");
    // The same for a gathered minibatch larger than a chunk may be.
    let mut g = GpuBackend::on(net.spec.clone(), {
        let mut gpu = Gpu::open(&GpuOptions::default()).unwrap();
        gpu.limits.max_storage_buffer_binding_size = 4096;
        gpu
    })
    .unwrap();
    g.set_data((&net.x).into(), net.targets()).unwrap();
    g.set_max_chunk_rows(1000);
    let ix: Vec<usize> = (0..ROWS).collect();
    let mut grad = vec![0.0; net.theta.len()];
    let e = g.cost_and_grad(&net.theta, Batch::Indices(&ix), &mut grad).unwrap_err().to_string();
    assert!(e.contains("47 rows") && e.contains("batch-size"), "{e}");
}
