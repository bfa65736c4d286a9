//! Recurrent networks on the GPU (`shaders/recurrent.wgsl`, `src/gpu/layers/recurrent.rs`)
//! against the f64 CPU reference (`cpu::sequence`): cost, gradient and forward pass of rnn
//! (tanh, ReLU) and lstm layers, one and two stacked, last-step and per-step outputs, softmax
//! and squared error, hidden sizes 1, 7, 65, 129 and T = 1, 3, 50; outputs poisoned with NaN;
//! ‖gpu − cpu‖/‖cpu‖ < 1e-4 (f32). Batches split into chunks (segments accumulating ∇J on the
//! device) and gathered minibatches; the carried state across two windows equals one long
//! window; a short training run with θ and Adam on the device lowers the cost. Shapes stay
//! small: lavapipe runs every dispatch on the CPU.
//!
//! | kernel (WGSL entry)        | CPU twin                            | test here                         | bench row (benches/gpu.rs) |
//! |----------------------------|-------------------------------------|-----------------------------------|----------------------------|
//! | rnn_forward / rnn_backward | `Rnn::forward` / `Rnn::backward`    | recurrent_nets_agree_with_the_cpu | — (no rnn row yet)         |
//! | lstm_forward / _backward   | `Lstm::forward` / `Lstm::backward`  | recurrent_nets_agree_with_the_cpu | row-MNIST lstm, char lstm  |
//! | copy_rows (carried state)  | `cpu::sequence` state in and out    | carried_state_is_one_long_window  | —                          |
//! | RecurrentParams            | the WGSL struct                     | parameter_block_matches_the_wgsl  | —                          |

#[macro_use]
mod common;

use ndarray::{Array2, s};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::cpu::net::TargetView;
use wgnn::cpu::sequence::{Recurrent, State};
use wgnn::gpu::layers::recurrent::{RECURRENT_WGSL, RecurrentParams};
use wgnn::gpu::{Gpu, GpuBackend, GpuOptions, MatmulKernel};
use wgnn::model::NetSpec;
use wgnn::optim::{BackendObjective, Hooks, Method, Minibatch, Optimizer, Stop};
use wgnn::{Backend, Batch, CpuBackend, Targets};

use common::relative_error as rel;
use common::sequence::{Problem, net};

const TOLERANCE: f64 = 1e-4;

/// (name, spec, sequences): every hidden size of the issue (1, 7, 65, 129), T = 1, 3, 50, rnn
/// tanh and relu, lstm, two stacked, last-step and per-step, softmax and squared error, one
/// with weight decay.
fn cases() -> Vec<(&'static str, NetSpec, usize)> {
    vec![
        ("lstm 1, T = 3, last step, softmax", net(3, 2, "lstm 1, softmax", 3, 0.0), 5),
        ("lstm 7, T = 1, per step, softmax", net(1, 3, "lstm 7, per-step softmax", 4, 0.0), 5),
        ("rnn 65 tanh, T = 3, per step, softmax, λ", net(3, 4, "rnn 65 tanh, per-step softmax", 5, 1e-3), 5),
        ("rnn 7 relu, T = 50, last step, squared error", net(50, 2, "rnn 7 relu, identity", 2, 0.0), 3),
        ("lstm 129, T = 3, last step, sigmoid", net(3, 3, "lstm 129, sigmoid", 2, 0.0), 3),
        ("lstm 7, T = 50, per step, softmax", net(50, 2, "lstm 7, per-step softmax", 3, 0.0), 3),
        ("lstm 7, T = 3, per step, sigmoid-bce", net(3, 2, "lstm 7, per-step sigmoid-bce", 3, 0.0), 5),
        ("lstm 7, lstm 5, T = 3, per step, softmax", net(3, 2, "lstm 7, lstm 5, per-step softmax", 3, 0.0), 5),
        ("rnn 7 relu, lstm 65, T = 3, last step, λ", net(3, 3, "rnn 7 relu, lstm 65, softmax", 3, 1e-3), 5),
    ]
}

for_each_matmul_kernel!(recurrent_nets_agree_with_the_cpu);

/// Cost, gradient and forward pass of every case on the GPU, the batch whole and in chunks of
/// 2 sequences, and a gathered minibatch, against the f64 CPU backend; poisoned outputs; the
/// same bits on a second evaluation.
fn recurrent_nets_agree_with_the_cpu(kernel: MatmulKernel) {
    let options = GpuOptions { matmul: Some(kernel), ..Default::default() };
    let device = Gpu::open(&options).expect("a GPU adapter (lavapipe in CI)");
    let picked: Vec<usize> = vec![2, 0, 1];
    for (name, spec, m) in cases() {
        let started = std::time::Instant::now();
        let p = Problem::new(&spec, m, 7);
        let mut cpu = CpuBackend::<f64>::new(spec.clone()).unwrap();
        cpu.set_data((&p.x).into(), p.backend_targets(&spec)).unwrap();
        let batches = [Batch::All, Batch::Indices(&picked)];
        let reference: Vec<(f64, f64, Vec<f64>)> = batches
            .iter()
            .map(|batch| {
                let mut g = vec![0.0; p.theta.len()];
                let c = cpu.cost_and_grad(&p.theta, batch.clone(), &mut g).unwrap();
                (c.total(), c.weight_decay, g)
            })
            .collect();
        let cpu_s = started.elapsed().as_secs_f64();
        let mut gpu = GpuBackend::on(spec.clone(), device.clone()).unwrap();
        gpu.set_poison(true);
        // Long windows (T = 50) once, whole: their dispatches dominate on lavapipe.
        let chunkings: &[usize] = if spec.inputs() > 50 { &[2] } else { &[m, 2] };
        for &chunk_rows in chunkings {
            gpu.set_max_chunk_rows(chunk_rows);
            gpu.set_data((&p.x).into(), p.backend_targets(&spec)).unwrap();
            for (batch, (c_cpu, decay_cpu, g_cpu)) in batches.iter().zip(&reference) {
                let what = format!("{name} ({chunk_rows} sequences per chunk, {batch:?})");
                let mut g_gpu = vec![f64::NAN; p.theta.len()];
                let c_gpu = gpu.cost_and_grad(&p.theta, batch.clone(), &mut g_gpu).unwrap();
                assert!(g_gpu.iter().all(|g| g.is_finite()), "{what}: unwritten or non-finite gradient");
                let dc = ((c_gpu.total() - c_cpu) / c_cpu).abs();
                let dd = ((c_gpu.weight_decay - decay_cpu) / decay_cpu.max(1e-300)).abs();
                let dg = rel(&g_gpu, g_cpu);
                assert!(
                    dc < TOLERANCE && dd < TOLERANCE && dg < TOLERANCE,
                    "{what}: cost {dc:e}, decay {dd:e}, gradient {dg:e}"
                );
                // Every weight block moved: a block the backward pass forgot would be zero.
                let norm = g_cpu.iter().map(|v| v * v).sum::<f64>().sqrt();
                assert!(norm > 1e-6, "{what}: a (nearly) zero gradient proves nothing");
                if chunk_rows == 2 && matches!(batch, Batch::All) {
                    let alone = gpu.cost(&p.theta, batch.clone()).unwrap().total();
                    assert_eq!(alone, c_gpu.total(), "{what}: the cost alone differs");
                    let mut again = vec![f64::NAN; p.theta.len()];
                    gpu.cost_and_grad(&p.theta, batch.clone(), &mut again).unwrap();
                    assert_eq!(again, g_gpu, "{what}: a second evaluation gave other bits");
                }
            }
        }
        let want = cpu.forward(&p.theta, (&p.x).into()).unwrap();
        let got = gpu.forward(&p.theta, (&p.x).into()).unwrap();
        assert_eq!(got.len(), want.len(), "{name}: one array per layer");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.dim(), w.dim(), "{name}: layer {i}'s shape");
            let e = rel(g.as_slice().unwrap(), w.as_slice().unwrap());
            assert!(e < TOLERANCE, "{name}: forward layer {i}: {e:e}");
        }
        eprintln!("{name}: {:.2} s ({cpu_s:.2} s the CPU reference)", started.elapsed().as_secs_f64());
    }
}

fn to_f32(s: &State<f64>) -> State<f32> {
    let mut out = State { layers: Vec::new() };
    for l in &s.layers {
        out.layers.push(wgnn::cpu::sequence::LayerState {
            h: l.h.mapv(|v| v as f32),
            c: l.c.as_ref().map(|c| c.mapv(|v| v as f32)),
        });
    }
    out
}

fn state_error(gpu: &State<f32>, cpu: &State<f64>) -> f64 {
    let flat32 = |s: &State<f32>| -> Vec<f64> {
        s.layers
            .iter()
            .flat_map(|l| l.h.iter().chain(l.c.iter().flatten()).map(|&v| v as f64).collect::<Vec<_>>())
            .collect()
    };
    let flat64 = |s: &State<f64>| -> Vec<f64> {
        s.layers.iter().flat_map(|l| l.h.iter().chain(l.c.iter().flatten()).copied().collect::<Vec<_>>()).collect()
    };
    rel(&flat32(gpu), &flat64(cpu))
}

/// Truncated BPTT's carried state: two windows of T = 3 from a given state, the second
/// starting where the first ended (on the device), end in the state of one window of 6 steps,
/// and each window's cost and gradient match the CPU reference (`Recurrent`) with its state
/// carried; a state that does not fit the batch is refused in one line.
#[test]
fn carried_state_is_one_long_window() {
    let (m, n, k) = (3, 2, 4);
    let text = "rnn 5 tanh, lstm 7, per-step softmax";
    let short = net(3, n, text, k, 0.0);
    let long = net(6, n, text, k, 0.0);
    let p = Problem::new(&long, m, 11);
    let rec = Recurrent::new(short.clone()).unwrap();
    let rec_long = Recurrent::new(long.clone()).unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let mut start = rec.zero_state::<f64>(m);
    for l in &mut start.layers {
        l.h.mapv_inplace(|_| rng.random_range(-0.5..0.5));
        if let Some(c) = &mut l.c {
            c.mapv_inplace(|_| rng.random_range(-0.5..0.5));
        }
    }
    let device = Gpu::open(&GpuOptions::default()).expect("a GPU adapter (lavapipe in CI)");
    let mut gpu = GpuBackend::on(short.clone(), device.clone()).unwrap();
    gpu.set_poison(true);
    gpu.set_recurrent_state(Some(to_f32(&start))).unwrap();
    let mut cpu_state = start.clone();
    for w in 0..2 {
        let x = p.x.slice(s![.., w * 3 * n..(w + 1) * 3 * n]).to_owned();
        let labels: Vec<usize> = (0..m).flat_map(|i| p.labels[i * 6 + w * 3..i * 6 + w * 3 + 3].to_vec()).collect();
        gpu.set_data((&x).into(), Targets::Labels(&labels)).unwrap();
        let mut g_gpu = vec![f64::NAN; p.theta.len()];
        let c_gpu = gpu.cost_and_grad(&p.theta, Batch::All, &mut g_gpu).unwrap();
        let mut g_cpu = vec![0.0; p.theta.len()];
        let (c_cpu, next) = rec
            .cost_and_grad(&p.theta, x.view(), TargetView::Labels(&labels), Some(&cpu_state), Some(&mut g_cpu))
            .unwrap();
        cpu_state = next;
        let dc = ((c_gpu.total() - c_cpu.total()) / c_cpu.total()).abs();
        let dg = rel(&g_gpu, &g_cpu);
        assert!(dc < TOLERANCE && dg < TOLERANCE, "window {w}: cost {dc:e}, gradient {dg:e}");
        let ds = state_error(&gpu.recurrent_state().unwrap(), &cpu_state);
        assert!(ds < TOLERANCE, "window {w}: final state {ds:e}");
    }
    // One window of 6 steps from the same start ends in the same state.
    let (_, long_state) = rec_long.predict(&p.theta, p.x.view(), Some(&start)).unwrap();
    let ds = state_error(&gpu.recurrent_state().unwrap(), &long_state);
    assert!(ds < TOLERANCE, "two windows carried vs one long window: {ds:e}");
    // The GPU's own long window agrees too.
    let mut gpu_long = GpuBackend::on(long.clone(), device.clone()).unwrap();
    gpu_long.set_recurrent_state(Some(to_f32(&start))).unwrap();
    gpu_long.set_data((&p.x).into(), Targets::Labels(&p.labels)).unwrap();
    gpu_long.cost(&p.theta, Batch::All).unwrap();
    let ds = state_error(&gpu_long.recurrent_state().unwrap(), &long_state);
    assert!(ds < TOLERANCE, "the GPU's long window: {ds:e}");
    // A batch of another size cannot carry this state.
    gpu.set_data((&p.x.slice(s![..2, ..3 * n]).to_owned()).into(), Targets::Labels(&p.labels[..6])).unwrap();
    let err = gpu.cost(&p.theta, Batch::All).unwrap_err().to_string();
    assert!(err.contains("is for 3 sequences, this batch has 2") && !err.contains('\n'), "{err}");
    // Back to zero state: the CPU backend's evaluation.
    gpu.set_recurrent_state(None).unwrap();
    let mut cpu = CpuBackend::<f64>::new(short.clone()).unwrap();
    cpu.set_data((&p.x.slice(s![..2, ..3 * n]).to_owned()).into(), Targets::Labels(&p.labels[..6])).unwrap();
    let c_cpu = cpu.cost(&p.theta, Batch::All).unwrap().total();
    let c_gpu = gpu.cost(&p.theta, Batch::All).unwrap().total();
    assert!(((c_gpu - c_cpu) / c_cpu).abs() < TOLERANCE, "zero state: {c_gpu} vs {c_cpu}");
}

/// Adam with θ and the update on the device, 8 epochs on 96 sequences of T = 6 whose class is
/// the sign pattern of their first and last steps: the cost falls well below chance, no
/// gradient is read back, and the CPU f32 backend reaches nearly the same θ.
#[test]
fn a_small_lstm_learns_on_the_gpu_with_theta_on_the_device() {
    let (m, steps, classes) = (96, 6, 4);
    let mut rng = StdRng::seed_from_u64(3);
    let labels: Vec<usize> = (0..m).map(|_| rng.random_range(0..classes)).collect();
    let x = Array2::from_shape_fn((m, steps * 2), |(i, j)| {
        let (t, f) = (j / 2, j % 2);
        let signal = match (t, f) {
            (0, 0) => {
                if labels[i] & 1 == 1 {
                    0.8
                } else {
                    -0.8
                }
            }
            (5, 1) => {
                if labels[i] & 2 == 2 {
                    0.8
                } else {
                    -0.8
                }
            }
            _ => 0.0,
        };
        signal + 0.2 * (((i * 31 + j * 17) % 11) as f64 / 11.0 - 0.5)
    });
    let spec = net(steps, 2, "lstm 8, softmax", classes, 0.0);
    let theta0 = wgnn::model::Init::Uniform.theta(&spec, 3);
    let method = Method::Minibatch(Minibatch::adam(0.03).with_batch_size(16).with_seed(5));
    let train = |backend: &mut dyn Backend| {
        backend.set_data((&x).into(), Targets::Labels(&labels)).unwrap();
        let start = backend.cost(&theta0, Batch::All).unwrap().total();
        let mut theta = theta0.clone();
        let mut opt = Optimizer::new(method.clone()).unwrap();
        let stop = Stop::MINIBATCH.with_max_iterations(8);
        opt.run(&mut BackendObjective::new(backend), &mut theta, &stop, &mut Hooks::new()).unwrap();
        (theta.clone(), start, backend.cost(&theta, Batch::All).unwrap().total())
    };
    let mut gpu = GpuBackend::new(spec.clone(), &GpuOptions::default()).expect("a GPU adapter (lavapipe in CI)");
    let before = gpu.transfers();
    let (theta_gpu, start, cost) = train(&mut gpu);
    assert_eq!(gpu.transfers().grad_readbacks, before.grad_readbacks, "training read the gradient back");
    let mut cpu = CpuBackend::<f32>::new(spec.clone()).unwrap();
    let (theta_cpu, _, cost_cpu) = train(&mut cpu);
    let moved = |t: &[f64]| t.iter().zip(&theta0).map(|(a, b)| a - b).collect::<Vec<f64>>();
    let gap = rel(&moved(&theta_gpu), &moved(&theta_cpu));
    eprintln!("GPU: cost {start:.4} → {cost:.4}; CPU f32: {cost_cpu:.4}; θ − θ₀ gap {gap:.2e}");
    assert!(cost < 0.5 * start, "the cost only fell from {start} to {cost}");
    assert!(gap < 1e-3, "θ − θ₀ on the GPU differs from the CPU f32 run's by {gap:e}");
}

/// (member name, byte offset) of WGSL struct `name` and its size, as naga lays it out.
fn wgsl_struct(source: &str, name: &str) -> (Vec<(String, u32)>, u32) {
    let module = wgpu::naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{name}: {e}"));
    for (_, ty) in module.types.iter() {
        if ty.name.as_deref() == Some(name)
            && let wgpu::naga::TypeInner::Struct { members, span } = &ty.inner
        {
            let fields = members.iter().map(|m| (m.name.clone().unwrap_or_default(), m.offset)).collect();
            return (fields, *span);
        }
    }
    panic!("no struct {name} in the WGSL");
}

/// RecurrentParams has the WGSL struct's size and field offsets (Rust's order is the WGSL's).
#[test]
fn parameter_block_matches_the_wgsl() {
    let source = format!("{}\n{RECURRENT_WGSL}", wgnn::gpu::layers::COMMON_WGSL);
    let (fields, size) = wgsl_struct(&source, "RecurrentParams");
    assert_eq!(size as usize, std::mem::size_of::<RecurrentParams>());
    let p = RecurrentParams::default();
    let base = &p as *const RecurrentParams as usize;
    let rust: Vec<(&str, usize)> = vec![
        ("rows", &p.rows as *const u32 as usize - base),
        ("hidden", &p.hidden as *const u32 as usize - base),
        ("steps", &p.steps as *const u32 as usize - base),
        ("step", &p.step as *const u32 as usize - base),
        ("act", &p.act as *const u32 as usize - base),
        ("first", &p.first as *const u32 as usize - base),
        ("has_dh", &p.has_dh as *const u32 as usize - base),
        ("b_off", &p.b_off as *const u32 as usize - base),
        ("dh_off", &p.dh_off as *const u32 as usize - base),
        ("dh_rs", &p.dh_rs as *const u32 as usize - base),
        ("src_off", &p.src_off as *const u32 as usize - base),
        ("src_rs", &p.src_rs as *const u32 as usize - base),
        ("dst_off", &p.dst_off as *const u32 as usize - base),
        ("dst_rs", &p.dst_rs as *const u32 as usize - base),
        ("leaky_alpha", &p.leaky_alpha as *const f32 as usize - base),
        ("_pad", &p._pad as *const u32 as usize - base),
    ];
    assert_eq!(fields.len(), rust.len());
    for ((wn, wo), (rn, ro)) in fields.iter().zip(&rust) {
        assert_eq!((wn.as_str(), *wo as usize), (*rn, *ro), "RecurrentParams field");
    }
}

/// The character model on the GPU with θ on the device (`char_model::train_on_gpu`, the
/// default): 8 Adam updates on windows of a 5-character text, clipped by global norm at a τ
/// below every update's ‖∇J‖ (so clipping engages each time), held-out bits after 4 and 8.
/// θ goes up once and comes back only for the two held-out measures and the end; no gradient
/// is read back; one plan serves every window. θ, the training and held-out bits follow the
/// host-update GPU path (`set_device_training(false)`) and the CPU f32 path to f32 rounding.
#[test]
fn the_gpu_character_model_keeps_theta_on_the_device_and_clips_there() {
    use wgnn::model::Layer;
    use wgnn::optim::{Control, UpdateRule};
    use wgnn::train::char_model::{self, Job};
    let vocab = 5;
    let ids: Vec<u32> = (0..700u32).map(|i| (i * 7 + i / 5) % vocab as u32).collect();
    let (train_ids, held) = ids.split_at(600);
    let spec = char_model::spec(vocab, 6, vec![Layer::Lstm { units: 7, per_step: true }]).unwrap();
    let net = Recurrent::new(spec.clone()).unwrap();
    let tau = 0.05;
    let job =
        Job { batch: 5, rule: UpdateRule::ADAM, learning_rate: 1e-2, clip_norm: Some(tau), steps: 8, eval_every: 4 };
    let theta0 = wgnn::model::Init::Uniform.theta(&spec, 3);
    // (θ, held-out bits after the last update, (training bits, ‖∇J‖) per update).
    type Run = (Vec<f64>, f64, Vec<(f64, f64)>);
    fn record(steps: &mut Vec<(f64, f64)>) -> impl FnMut(&char_model::Step, &char_model::Snapshot<'_>) -> Control + '_ {
        move |s, _| {
            steps.push((s.train_bits, s.grad_norm));
            Control::Continue
        }
    }
    let on_gpu = |device: bool| -> (Run, wgnn::gpu::Transfers, u64) {
        let mut gpu = GpuBackend::new(spec.clone(), &GpuOptions::default()).expect("a GPU adapter (lavapipe in CI)");
        gpu.set_device_training(device);
        gpu.set_poison(true);
        let (mut theta, mut steps) = (theta0.clone(), Vec::new());
        let (done, last) =
            char_model::train_on_gpu(&mut gpu, &net, &mut theta, train_ids, held, &job, None, &mut record(&mut steps))
                .unwrap();
        assert_eq!(done, job.steps);
        ((theta, last.unwrap().bits_per_character, steps), gpu.transfers(), gpu.builds().plans)
    };
    let ((theta, bits, steps), transfers, plans) = on_gpu(true);
    assert_eq!(transfers.theta_uploads, 1, "θ went up more than once: {transfers:?}");
    assert_eq!(transfers.grad_readbacks, 0, "the device path read ∇J back: {transfers:?}");
    assert_eq!(transfers.theta_readbacks, 3, "θ comes back for 2 held-out measures and the end: {transfers:?}");
    assert_eq!(plans, 1, "one plan serves every window of one shape");
    assert!(steps.iter().all(|&(_, norm)| norm > tau), "clipping did not engage at every update: {steps:?}");
    let ((host_theta, host_bits, host_steps), host_transfers, _) = on_gpu(false);
    assert_eq!(host_transfers.grad_readbacks, job.steps as u64, "the host path reads ∇J every update");
    let mut cpu_theta = theta0.clone();
    let mut cpu_steps = Vec::new();
    let (_, cpu_last) =
        char_model::train_from::<f32>(&net, &mut cpu_theta, train_ids, held, &job, None, &mut record(&mut cpu_steps))
            .unwrap();
    let cpu_bits = cpu_last.unwrap().bits_per_character;
    let moved = |t: &[f64]| t.iter().zip(&theta0).map(|(a, b)| a - b).collect::<Vec<f64>>();
    for (name, other, other_bits, other_steps) in
        [("host-update GPU", &host_theta, host_bits, &host_steps), ("CPU f32", &cpu_theta, cpu_bits, &cpu_steps)]
    {
        let d = rel(&moved(&theta), &moved(other));
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs();
        eprintln!("device vs {name}: θ − θ₀ {d:.2e}, held-out {bits} vs {other_bits}");
        assert!(d < 1e-5, "θ − θ₀ after 8 updates on the device differs from the {name} path's by {d:e}");
        assert!(close(bits, other_bits), "held-out {bits} bits/char on the device, {other_bits} on the {name} path");
        for (k, (a, b)) in steps.iter().zip(other_steps.iter()).enumerate() {
            assert!(
                close(a.0, b.0) && close(a.1, b.1),
                "update {}: {a:?} on the device, {b:?} on the {name} path",
                k + 1
            );
        }
    }
}
