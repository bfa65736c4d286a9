//! The GPU layer kernels (conv2d, pooling, maxout: `shaders/{conv2d,pool2d,maxout}.wgsl`,
//! `src/gpu/layers/`) against their CPU twins, and whole layer stacks on the GPU backend
//! against the f64 CPU reference (`src/cpu/stack.rs`). Fresh random inputs of awkward shapes
//! (odd sides 7 and 31, stride 1 and 2, padding 0–2, kernels 1, 3, 5, 1 and 3 channels, maxout
//! k = 2 and 3, tiles of 64 crossed, batches split over chunks), outputs poisoned with NaN;
//! ‖gpu − cpu‖/‖cpu‖ < 1e-4 (f32). Winners (max pooling, maxout) must be the same indices.
//!
//! | kernel (WGSL entry)            | CPU twin                     | test here                                   | bench row (benches/gpu.rs) |
//! |--------------------------------|------------------------------|---------------------------------------------|----------------------------|
//! | conv2d_forward                 | `Conv2d::forward_reference`  | conv2d_kernels_match_the_cpu_twin           | conv2d forward             |
//! | conv2d_weight_grad (+ _finish) | `Conv2d::backward_reference` | conv2d_kernels_match_the_cpu_twin           | conv2d ∇W ∇b               |
//! | conv2d_input_grad              | `Conv2d::backward_reference` | conv2d_kernels_match_the_cpu_twin           | conv2d ∂L/∂in              |
//! | pool2d_forward / _backward     | `Pool2d::forward / backward` | pool2d_kernels_match_the_cpu_twin           | pool2d max/mean fwd, bwd   |
//! | maxout_forward / _backward     | `Maxout::forward / backward` | maxout_kernels_match_the_cpu_twin           | maxout fwd, bwd            |
//! | parameter blocks               | WGSL structs                 | parameter_blocks_match_the_wgsl_structs     | —                          |
//! | the stack plan                 | `cpu::stack::cost_and_grad`  | stacks_agree_with_the_cpu_reference (both matmul kernels) | LeNet-like step |

#[macro_use]
mod common;

use ndarray::{Array1, Array2};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::cpu::net::{activate, derivative_from_value};
use wgnn::gpu::layers::{Conv2dParams, LayerKernels, MaxoutParams, Pool2dParams, conv2d_partials_len};
use wgnn::gpu::{Gpu, GpuBackend, GpuOptions, MatmulKernel};
use wgnn::layers::ImageShape;
use wgnn::layers::conv2d::Conv2d;
use wgnn::layers::maxout::Maxout;
use wgnn::layers::pool2d::{Pool2d, PoolKind};
use wgnn::model::{Activation, InputShape, LayerStack, NetSpec, Output, ThetaLayout, parse_net};
use wgnn::optim::{BackendObjective, Hooks, Method, Minibatch, Optimizer, Stop};
use wgnn::{Backend, Batch, CpuBackend, Targets};

use common::relative_error as rel;

const TOLERANCE: f64 = 1e-4;

fn open() -> (Gpu, LayerKernels) {
    let gpu =
        Gpu::open(&GpuOptions::default()).expect("a GPU adapter (lavapipe in CI: apt-get install mesa-vulkan-drivers)");
    let k = LayerKernels::new(&gpu.device);
    (gpu, k)
}

fn random(rows: usize, cols: usize, lo: f64, hi: f64, rng: &mut StdRng) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(lo..hi))
}

/// `values` after `pad` values of junk (so that offsets are exercised), as f32.
fn padded(pad: usize, values: &[f64]) -> Vec<f32> {
    let mut v = vec![123.0f32; pad];
    v.extend(values.iter().map(|&x| x as f32));
    v
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn finite(v: &[f32], what: &str) {
    assert!(v.iter().all(|x| x.is_finite()), "{what}: unwritten (NaN) or non-finite GPU output");
}

// ---------------------------------------------------------------------------------------------
// Parameter blocks against the WGSL structs.

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

macro_rules! rust_layout {
    ($ty:ty, $($field:ident),* $(,)?) => {
        (vec![$((stringify!($field).to_string(), std::mem::offset_of!($ty, $field) as u32)),*], std::mem::size_of::<$ty>() as u32)
    };
}

#[test]
fn parameter_blocks_match_the_wgsl_structs() {
    use wgnn::gpu::layers::{COMMON_WGSL, CONV2D_WGSL, MAXOUT_WGSL, POOL2D_WGSL};
    let conv = rust_layout!(
        Conv2dParams,
        images,
        channels,
        height,
        width,
        filters,
        kernel,
        stride,
        padding,
        out_height,
        out_width,
        x_off,
        w_off,
        b_off,
        act,
        leaky_alpha,
        alpha,
        grad_w_off,
        grad_b_off,
        accumulate,
        weight_decay,
        slices,
        slice_rows,
        _pad0,
        _pad1
    );
    assert_eq!(wgsl_struct(&format!("{COMMON_WGSL}\n{CONV2D_WGSL}"), "Conv2dParams"), conv);
    let pool = rust_layout!(
        Pool2dParams,
        images,
        channels,
        height,
        width,
        size,
        stride,
        out_height,
        out_width,
        kind,
        x_off,
        act,
        leaky_alpha
    );
    assert_eq!(wgsl_struct(&format!("{COMMON_WGSL}\n{POOL2D_WGSL}"), "Pool2dParams"), pool);
    let maxout = rust_layout!(MaxoutParams, rows, units, pieces, _pad);
    assert_eq!(wgsl_struct(MAXOUT_WGSL, "MaxoutParams"), maxout);
    // Uniform blocks are read in 16-byte rows.
    for size in [conv.1, pool.1, maxout.1] {
        assert_eq!(size % 16, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// conv2d

/// (channels, height, width, filters, kernel, stride, padding, images)
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize);
const CONV_CASES: [ConvCase; 7] = [
    (1, 7, 7, 3, 3, 1, 1, 5),
    (3, 7, 7, 2, 5, 2, 2, 3),
    (1, 31, 31, 4, 5, 1, 0, 2), // 1458 patch rows: several slices of the ∇W sum
    (3, 31, 31, 5, 1, 2, 0, 2), // kernel 1
    (3, 7, 31, 65, 3, 2, 1, 1), // 65 filters: two filter tiles
    (1, 28, 28, 2, 3, 1, 2, 1), // padding 2 > kernel/2: border outputs read padding only
    (3, 9, 9, 6, 5, 2, 1, 70),  // 70·16 = 1120 patch rows: several position tiles
];

#[test]
fn conv2d_kernels_match_the_cpu_twin() {
    let (gpu, k) = open();
    let mut rng = StdRng::seed_from_u64(15);
    let (x_pad, w_pad, g_pad) = (13, 7, 5);
    for &(c, h, w, f, ker, s, p, m) in &CONV_CASES {
        let conv = Conv2d::new(ImageShape::new(c, h, w), f, ker, s, p).unwrap();
        let name = conv.describe();
        let (out_len, depth) = (conv.output().len(), conv.patch_len());
        // The input is a layer's stored output: a sigmoid's values, so that f′ = a(1 − a) is
        // exercised by the input gradient.
        let x = random(m, conv.input.len(), 0.05, 0.95, &mut rng);
        let weights = random(f, depth, -0.5, 0.5, &mut rng);
        let bias = Array1::from_shape_simple_fn(f, || rng.random_range(-0.5..0.5));
        let delta = random(m, out_len, -1.0, 1.0, &mut rng);
        // θ: junk, W, b, junk.
        let mut theta_host = padded(w_pad, weights.as_slice().unwrap());
        theta_host.extend(bias.iter().map(|&v| v as f32));
        theta_host.extend([7.0; 3]);
        let (w_off, b_off) = (w_pad, w_pad + f * depth);
        let x_buf = gpu.upload_f32("x", &padded(x_pad, x.as_slice().unwrap()));
        let theta = gpu.upload_f32("θ", &theta_host);
        let delta_buf = gpu.upload_f32("δ", &padded(0, delta.as_slice().unwrap()));

        // Forward, with a tanh.
        let z = conv.forward_reference(weights.view(), bias.view(), x.view()).unwrap();
        let want: Vec<f64> = z.iter().map(|&v| activate(Activation::Tanh, v)).collect();
        let out = gpu.upload_f32("out", &vec![f32::NAN; m * out_len]);
        let op =
            k.conv2d_forward(&gpu.device, &conv, m, Activation::Tanh, (&x_buf, x_pad), &theta, (w_off, b_off), &out);
        gpu.run(&[op.unwrap()]).unwrap();
        let got = gpu.download_f32(&out, m * out_len).unwrap();
        finite(&got, &name);
        let e = rel(&f64s(&got), &want);
        assert!(e < TOLERANCE, "{name} forward: {e:e}");

        // ∇W, ∇b: α·Σ + λW (first), then accumulated again without decay: 2α·Σ + λW.
        let g = conv.backward_reference(weights.view(), x.view(), delta.view()).unwrap();
        let (alpha, lambda) = (0.37f32, 0.05f32);
        let grad_len = g_pad + f * depth + f + 4;
        let grad = gpu.upload_f32("∇θ", &vec![f32::NAN; grad_len]);
        let partials = gpu.upload_f32("partials", &vec![f32::NAN; conv2d_partials_len(&conv, m)]);
        let (gw_off, gb_off) = (g_pad, g_pad + f * depth);
        for (round, accumulate, decay) in [(1.0, false, lambda), (2.0, true, 0.0)] {
            let ops = k
                .conv2d_weight_grad(
                    &gpu.device,
                    &conv,
                    m,
                    (&x_buf, x_pad),
                    &delta_buf,
                    &partials,
                    (&theta, w_off),
                    (&grad, gw_off, gb_off),
                    (alpha, accumulate, decay),
                )
                .unwrap();
            gpu.run(&ops).unwrap();
            let got = gpu.download_f32(&grad, grad_len).unwrap();
            let a = round * alpha as f64;
            let want_w: Vec<f64> =
                g.weight.iter().zip(weights.iter()).map(|(&gw, &wv)| a * gw + lambda as f64 * wv).collect();
            let want_b: Vec<f64> = g.bias.iter().map(|&gb| a * gb).collect();
            finite(&got[gw_off..gb_off + f], &name);
            let (ew, eb) = (rel(&f64s(&got[gw_off..gb_off]), &want_w), rel(&f64s(&got[gb_off..gb_off + f]), &want_b));
            assert!(ew < TOLERANCE && eb < TOLERANCE, "{name} round {round}: ∇W {ew:e}, ∇b {eb:e}");
            // Nothing outside ∇W and ∇b is written.
            assert!(got[..gw_off].iter().chain(&got[gb_off + f..]).all(|v| v.is_nan()), "{name}: wrote outside ∇θ");
        }

        // ∂L/∂in ⊙ f′ of the sigmoid below.
        let want: Vec<f64> =
            g.input.iter().zip(x.iter()).map(|(&d, &a)| d * derivative_from_value(Activation::Sigmoid, a)).collect();
        let out = gpu.upload_f32("∂L/∂in", &vec![f32::NAN; m * conv.input.len()]);
        let op = k.conv2d_input_grad(
            &gpu.device,
            &conv,
            m,
            &delta_buf,
            (&theta, w_off),
            (&x_buf, x_pad),
            Activation::Sigmoid,
            &out,
        );
        gpu.run(&[op.unwrap()]).unwrap();
        let got = gpu.download_f32(&out, m * conv.input.len()).unwrap();
        finite(&got, &name);
        let e = rel(&f64s(&got), &want);
        assert!(e < TOLERANCE, "{name} input gradient: {e:e}");
    }
}

// ---------------------------------------------------------------------------------------------
// pool2d and maxout

/// Values from a few levels only, so that ties are common and the first-wins rule shows.
fn tied(rows: usize, cols: usize, rng: &mut StdRng) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(0..5) as f64 * 0.2 - 0.45)
}

fn winners_of(bits: &[f32]) -> Vec<u32> {
    bits.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn pool2d_kernels_match_the_cpu_twin() {
    let (gpu, k) = open();
    let mut rng = StdRng::seed_from_u64(16);
    let x_pad = 9;
    // (channels, height, width, kind, size, stride, images)
    let cases = [
        (1, 7, 7, PoolKind::Max, 3, 2, 3),
        (3, 7, 7, PoolKind::Mean, 3, 2, 2),
        (2, 31, 31, PoolKind::Max, 3, 2, 2),
        (3, 31, 31, PoolKind::Mean, 1, 1, 1),
        (3, 6, 8, PoolKind::Max, 2, 2, 5),
        (1, 9, 9, PoolKind::Mean, 3, 3, 70),
        (2, 9, 9, PoolKind::Max, 3, 1, 4),
    ];
    for (c, h, w, kind, size, stride, m) in cases {
        let pool = Pool2d::with_stride(ImageShape::new(c, h, w), kind, size, stride).unwrap();
        let name = pool.describe();
        let (in_len, out_len) = (pool.input.len(), pool.output().len());
        let x = tied(m, in_len, &mut rng);
        let delta = random(m, out_len, -1.0, 1.0, &mut rng);
        let x_buf = gpu.upload_f32("x", &padded(x_pad, x.as_slice().unwrap()));
        let out = gpu.upload_f32("pooled", &vec![f32::NAN; m * out_len]);
        let winners = gpu.upload_f32("winners", &vec![f32::NAN; m * out_len]);
        let want = pool.forward(x.view()).unwrap();
        let op = k.pool2d_forward(&gpu.device, &pool, m, (&x_buf, x_pad), &out, Some(&winners)).unwrap();
        gpu.run(&[op]).unwrap();
        let got = gpu.download_f32(&out, m * out_len).unwrap();
        finite(&got, &name);
        let e = rel(&f64s(&got), want.out.as_slice().unwrap());
        assert!(e < TOLERANCE, "{name} forward: {e:e}");
        if let Some(cpu_winners) = &want.winners {
            let got_winners = winners_of(&gpu.download_f32(&winners, m * out_len).unwrap());
            assert_eq!(&got_winners[..], cpu_winners.as_slice().unwrap(), "{name}: winners");
        }

        // Backward, times f′ of a tanh below (x as its stored values).
        let grad = pool.backward(delta.view(), want.winners.as_ref().map(|w| w.view())).unwrap();
        let want: Vec<f64> =
            grad.iter().zip(x.iter()).map(|(&d, &a)| d * derivative_from_value(Activation::Tanh, a)).collect();
        let delta_buf = gpu.upload_f32("δ", &padded(0, delta.as_slice().unwrap()));
        let back = gpu.upload_f32("∂L/∂in", &vec![f32::NAN; m * in_len]);
        let kept = (kind == PoolKind::Max).then_some(&winners);
        let op = k
            .pool2d_backward(&gpu.device, &pool, m, &delta_buf, kept, (&x_buf, x_pad), Activation::Tanh, &back)
            .unwrap();
        gpu.run(&[op]).unwrap();
        let got = gpu.download_f32(&back, m * in_len).unwrap();
        finite(&got, &name);
        let e = rel(&f64s(&got), &want);
        assert!(e < TOLERANCE, "{name} backward: {e:e}");
    }
}

#[test]
fn maxout_kernels_match_the_cpu_twin() {
    let (gpu, k) = open();
    let mut rng = StdRng::seed_from_u64(17);
    for (rows, units, pieces) in [(7, 5, 2), (65, 3, 3), (1, 1, 3), (130, 33, 2)] {
        let max = Maxout::new(units, pieces).unwrap();
        let name = max.describe();
        let z = tied(rows, max.piece_count(), &mut rng);
        let delta = random(rows, units, -1.0, 1.0, &mut rng);
        let want = max.forward(z.view()).unwrap();
        let z_buf = gpu.upload_f32("z", &padded(0, z.as_slice().unwrap()));
        let out = gpu.upload_f32("out", &vec![f32::NAN; rows * units]);
        let winners = gpu.upload_f32("winners", &vec![f32::NAN; rows * units]);
        gpu.run(&[k.maxout_forward(&gpu.device, &max, rows, &z_buf, &out, &winners).unwrap()]).unwrap();
        let got = gpu.download_f32(&out, rows * units).unwrap();
        finite(&got, &name);
        // A max is one of its inputs: exactly equal in f32.
        let want_out: Vec<f32> = want.out.iter().map(|&v| v as f32).collect();
        assert_eq!(got, want_out, "{name}: out");
        let got_winners = winners_of(&gpu.download_f32(&winners, rows * units).unwrap());
        assert_eq!(&got_winners[..], want.winners.as_slice().unwrap(), "{name}: winners");

        let dz = max.backward(delta.view(), want.winners.view()).unwrap();
        let delta_buf = gpu.upload_f32("δ", &padded(0, delta.as_slice().unwrap()));
        let back = gpu.upload_f32("∂L/∂z", &vec![f32::NAN; rows * max.piece_count()]);
        gpu.run(&[k.maxout_backward(&gpu.device, &max, rows, &delta_buf, &winners, &back).unwrap()]).unwrap();
        let got = gpu.download_f32(&back, rows * max.piece_count()).unwrap();
        let want: Vec<f32> = dz.iter().map(|&v| v as f32).collect();
        assert_eq!(got, want, "{name}: ∂L/∂z");
    }
}

// ---------------------------------------------------------------------------------------------
// Whole stacks on the GPU backend

fn net(input: InputShape, text: &str, outputs: usize, lambda: f64) -> NetSpec {
    let parsed = parse_net(text).expect("the test's --net parses");
    NetSpec::stack(LayerStack { input, layers: parsed.layers }, outputs, parsed.output)
        .and_then(|s| s.with_weight_decay(lambda))
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Every layer kind and geometry in four stacks: a LeNet-like net; conv k5 s2 p2 (3 channels),
/// overlapping mean pooling, maxout k2 and a squared-error output; conv k3 p1, overlapping max
/// pooling, conv k1, mean pooling, maxout k3; max pooling of the raw 3×31×31 input, conv k3 s2
/// p1 and maxout on features. Activations: relu, sigmoid, tanh, leaky relu, identity.
fn stacks() -> Vec<(&'static str, NetSpec)> {
    vec![
        (
            "LeNet-like 1×28×28: conv5 relu, maxpool 2, conv5 relu, maxpool 2, dense, softmax",
            net(
                InputShape::image(1, 28, 28),
                "conv 4x5x5 relu, maxpool 2, conv 6x5x5 relu, maxpool 2, dense 16 relu, softmax",
                10,
                1e-3,
            ),
        ),
        (
            "3×9×9, conv k5 s2 p2, mean pool 3/2, maxout k2, squared error",
            net(
                InputShape::image(3, 9, 9),
                "conv 4x5x5 sigmoid stride 2 pad 2, meanpool 3 stride 2, maxout 3x2, identity",
                2,
                1e-2,
            ),
        ),
        (
            "1×7×7, conv k3 p1, max pool 3/2, conv k1, mean pool 3, maxout k3, softmax",
            net(
                InputShape::image(1, 7, 7),
                "conv 3x3x3 tanh pad 1, maxpool 3 stride 2, conv 2x1x1 leaky-relu, meanpool 3, maxout 4x3, softmax",
                3,
                0.0,
            ),
        ),
        (
            "3×31×31 max pool first, conv k3 s2 p1, maxout k2, dense tanh, sigmoid squared error",
            net(
                InputShape::image(3, 31, 31),
                "maxpool 3 stride 2, conv 2x3x3 sigmoid stride 2 pad 1, maxout 4x2, dense 5 tanh, sigmoid",
                3,
                1e-3,
            ),
        ),
    ]
}

struct Problem {
    x: Array2<f64>,
    labels: Vec<usize>,
    values: Array2<f64>,
    theta: Vec<f64>,
}

impl Problem {
    fn new(spec: &NetSpec, m: usize, seed: u64) -> Problem {
        let mut rng = StdRng::seed_from_u64(seed);
        let x = random(m, spec.inputs(), 0.0, 1.0, &mut rng);
        let labels = (0..m).map(|i| (i * 7 + seed as usize) % spec.outputs()).collect();
        let values = random(m, spec.outputs(), 0.1, 0.9, &mut rng);
        let theta = (0..ThetaLayout::new(spec).len()).map(|_| rng.random_range(-0.5..0.5)).collect();
        Problem { x, labels, values, theta }
    }

    fn load(&self, spec: &NetSpec, backend: &mut dyn Backend) {
        let targets = match spec.output {
            Output::Softmax => Targets::Labels(&self.labels),
            Output::SquaredError(_) => Targets::Values((&self.values).into()),
            Output::SigmoidBce => unreachable!("no sigmoid-bce case here (tests/bce.rs)"),
        };
        backend.set_data((&self.x).into(), targets).expect("the problem fits its network");
    }
}

for_each_matmul_kernel!(stacks_agree_with_the_cpu_reference);

/// Cost, gradient and forward pass of every stack on 9 examples, on the GPU whole, split into
/// chunks of 4 rows (three segments accumulating ∇J on the device) and streamed from the host
/// in those chunks, against the f64 CPU reference; a minibatch of shuffled rows too; then the
/// same bits on a second evaluation. One backend per stack, reloaded for each way of holding
/// the data (opening a device and compiling its kernels dominates on lavapipe).
fn stacks_agree_with_the_cpu_reference(kernel: MatmulKernel) {
    let rows: Vec<usize> = vec![8, 0, 3, 5, 1];
    let batches = [Batch::All, Batch::Indices(&rows)];
    let options = GpuOptions { matmul: Some(kernel), ..Default::default() };
    let device = Gpu::open(&options).expect("a GPU adapter (lavapipe in CI)");
    assert_eq!(device.matmul, kernel);
    for (name, spec) in stacks() {
        let p = Problem::new(&spec, 9, 3);
        let mut cpu = CpuBackend::<f64>::new(spec.clone()).unwrap();
        p.load(&spec, &mut cpu);
        let reference: Vec<(f64, f64, Vec<f64>)> = batches
            .iter()
            .map(|batch| {
                let mut g = vec![0.0; p.theta.len()];
                let c = cpu.cost_and_grad(&p.theta, batch.clone(), &mut g).unwrap();
                let norm = g.iter().map(|v| v * v).sum::<f64>().sqrt();
                assert!(norm > 1e-3, "{name}: a (nearly) zero gradient proves nothing");
                (c.total(), c.weight_decay, g)
            })
            .collect();
        let mut gpu = GpuBackend::on(spec.clone(), device.clone()).unwrap();
        gpu.set_poison(true);
        for (chunk_rows, streamed) in [(9, false), (4, false), (4, true)] {
            gpu.set_max_chunk_rows(chunk_rows);
            gpu.set_max_resident_bytes(if streamed { 0 } else { u64::MAX });
            p.load(&spec, &mut gpu);
            assert_eq!(gpu.is_streaming(), streamed);
            for (batch, (c_cpu, decay_cpu, g_cpu)) in batches.iter().zip(&reference) {
                let what = format!("{name} ({chunk_rows} rows per chunk, streamed {streamed}, {batch:?})");
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
                // The cost alone, and a second evaluation: the same bits (fixed-order sums).
                let alone = gpu.cost(&p.theta, batch.clone()).unwrap().total();
                assert_eq!(alone, c_gpu.total(), "{what}: the cost alone differs");
                if chunk_rows == 4 && !streamed {
                    let mut again = vec![f64::NAN; p.theta.len()];
                    gpu.cost_and_grad(&p.theta, batch.clone(), &mut again).unwrap();
                    assert_eq!(again, g_gpu, "{what}: a second evaluation gave other bits");
                }
            }
        }
        // The forward pass, in chunks of 4 rows.
        let want = cpu.forward(&p.theta, (&p.x).into()).unwrap();
        let got = gpu.forward(&p.theta, (&p.x).into()).unwrap();
        assert_eq!(got.len(), want.len(), "{name}: one array per layer");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.dim(), w.dim(), "{name}: layer {i}'s shape");
            let e = rel(g.as_slice().unwrap(), w.as_slice().unwrap());
            assert!(e < TOLERANCE, "{name}: forward layer {i}: {e:e}");
        }
    }
}

/// One epoch of Adam (batch 32, θ and the update on the device) of a small CNN on 640
/// synthetic 1×12×12 images of 4 classes (a bright bar in one of four places, with noise):
/// the cost must fall well below ln 4 and most training images must be classified right; the
/// same run on the CPU f32 backend must reach nearly the same θ.
#[test]
fn a_small_cnn_learns_on_the_gpu_with_theta_on_the_device() {
    let (m, side, classes) = (640, 12, 4);
    let mut rng = StdRng::seed_from_u64(21);
    let labels: Vec<usize> = (0..m).map(|_| rng.random_range(0..classes)).collect();
    let x = Array2::from_shape_fn((m, side * side), |(i, j)| {
        let (y, xx) = (j / side, j % side);
        let class = labels[i];
        // Horizontal bar in the top or bottom half, or vertical in the left or right half.
        let on = match class {
            0 => (2..4).contains(&y),
            1 => (8..10).contains(&y),
            2 => (2..4).contains(&xx),
            _ => (8..10).contains(&xx),
        };
        (if on { 0.8 } else { 0.1 }) + 0.1 * ((i * 31 + j * 17) % 7) as f64 / 7.0
    });
    let spec =
        net(InputShape::image(1, side, side), "conv 4x3x3 tanh, maxpool 2, dense 8 tanh, softmax", classes, 1e-4);
    let theta0 = wgnn::model::Init::Uniform.theta(&spec, 3);
    let method = Method::Minibatch(Minibatch::adam(0.01).with_batch_size(32).with_seed(5));
    let train = |backend: &mut dyn Backend| {
        backend.set_data((&x).into(), Targets::Labels(&labels)).unwrap();
        let mut theta = theta0.clone();
        let mut opt = Optimizer::new(method.clone()).unwrap();
        let stop = Stop::MINIBATCH.with_max_iterations(1);
        opt.run(&mut BackendObjective::new(backend), &mut theta, &stop, &mut Hooks::new()).unwrap();
        let cost = backend.cost(&theta, Batch::All).unwrap().total();
        let predicted = backend.classify(&theta, (&x).into()).unwrap();
        let right = predicted.iter().zip(&labels).filter(|(p, l)| p == l).count() as f64 / m as f64;
        (theta, cost, right)
    };
    let mut gpu = GpuBackend::new(spec.clone(), &GpuOptions::default()).expect("a GPU adapter (lavapipe in CI)");
    let start = gpu.transfers();
    let (theta_gpu, cost, right) = train(&mut gpu);
    assert_eq!(
        gpu.transfers().grad_readbacks,
        start.grad_readbacks,
        "training read the gradient back: not on the device"
    );
    let mut cpu = CpuBackend::<f32>::new(spec.clone()).unwrap();
    let (theta_cpu, cost_cpu, right_cpu) = train(&mut cpu);
    let moved = |t: &[f64]| t.iter().zip(&theta0).map(|(a, b)| a - b).collect::<Vec<f64>>();
    let gap = rel(&moved(&theta_gpu), &moved(&theta_cpu));
    eprintln!(
        "GPU: cost {cost:.4}, accuracy {right:.3}; CPU f32: cost {cost_cpu:.4}, accuracy {right_cpu:.3}; θ − θ₀ gap {gap:.2e}"
    );
    assert!(cost < 0.5 * (classes as f64).ln(), "the cost only fell to {cost} (ln 4 = 1.386 at chance)");
    assert!(right > 0.9, "training accuracy {right} after one epoch (chance is 0.25)");
    assert!(gap < 1e-3, "θ − θ₀ on the GPU differs from the CPU f32 run's by {gap:e}");
}
