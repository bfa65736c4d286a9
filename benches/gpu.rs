//! GPU kernel and step timings on whatever adapter wgpu finds (lavapipe here), synchronised
//! to completion (each timed run ends with a wait on the device), median of repeated runs
//! after one warm-up. A plain table rather than criterion: on a software adapter one big
//! matmul takes seconds. Run: `cargo bench --bench gpu` (WGNN_BENCH_REPS, default 3;
//! WGNN_BENCH_BIG=1 adds the 10,000-row autoencoder shapes).
//!
//! Every kernel family has rows, mirroring `benches/cpu.rs` at shapes scaled for a software
//! adapter: matrix products, bias + activation, × f′ (with and without the KL term), squared
//! error, softmax, column sums (ρ̂, bias gradients), the KL terms, the one-workgroup sum (weight
//! decay, the loss), each optimizer update, convolution + pooling, and one minibatch training
//! step — cost, gradient and update with θ on the device — per model.
//!
//! Smoke mode: without `--bench` (that is, under `cargo test`) every row runs once (plus the
//! warm-up) on tiny shapes, so a kernel that fails to compile or errors fails the test. With
//! no adapter at all the run fails, unless WGNN_SKIP_GPU=1 says to skip it. WGNN_BENCH_ONLY=recurrent
//! runs the recurrent training-step rows alone.

use std::time::Instant;

use ndarray::{Array1, Array2};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::features::{FeatureBank, GpuConvolution, PoolKind, Pooling};
use wgnn::gpu::StandaloneUpdate;
use wgnn::gpu::kernels::{BLOCK_ROWS, ConvParams, FeatureKernels, Op, PoolParams, Small, SmallParams, act_code};
use wgnn::gpu::kernels::{Epilogue, Kernels, Operand};
use wgnn::gpu::layers::{LayerKernels, conv2d_partials_len};
use wgnn::gpu::{Gpu, GpuBackend, GpuOptions};
use wgnn::layers::ImageShape;
use wgnn::layers::conv2d::Conv2d;
use wgnn::layers::maxout::Maxout;
use wgnn::layers::pool2d::{Pool2d, PoolKind as LayerPool};
use wgnn::model::{Activation, Output};
use wgnn::model::{Init, NetSpec, Sparsity};
use wgnn::model::{InputShape, LayerStack, parse_net};
use wgnn::optim::{UpdateRule, UpdateState};
use wgnn::{Backend, Batch, CpuBackend, Targets};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU seconds this process has used (all threads, user + system; lavapipe's worker threads
/// included), from /proc/self/stat; 0 where that is unreadable.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which may hold spaces, so split after its ')').
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Median wall seconds and median CPU seconds of `reps` runs after one warm-up. On a shared
/// machine the CPU seconds say what the work costs whatever else is running.
fn time(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let (wall, cpu): (Vec<f64>, Vec<f64>) = (0..reps)
        .map(|_| {
            let (t, c) = (Instant::now(), cpu_seconds());
            f();
            (t.elapsed().as_secs_f64(), cpu_seconds() - c)
        })
        .unzip();
    (median(wall), median(cpu))
}

fn main() {
    // As in wgnn's main: Mesa's Wayland probe complains on every adapter scan without it.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    let reps: usize = std::env::var("WGNN_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let big = std::env::var("WGNN_BENCH_BIG").is_ok_and(|v| v == "1");
    let smoke = !std::env::args().any(|a| a == "--bench");
    let reps = if smoke { 1 } else { reps };
    let Some(gpu) = open_gpu() else { return };
    // WGNN_BENCH_ONLY=recurrent: the recurrent training-step rows alone.
    if std::env::var("WGNN_BENCH_ONLY").is_ok_and(|v| v == "recurrent") {
        println!(
            "adapter: {}; load average: {}",
            gpu.describe(),
            std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
        );
        recurrent_steps(reps, smoke);
        return;
    }
    println!("adapter: {}; matmul kernel: {}", gpu.describe(), gpu.matmul.name());
    let k = Kernels::new(&gpu);
    let mut rng = StdRng::seed_from_u64(0);

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("load average: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    println!(
        "{:<44} {:>10} {:>9} {:>8} {:>14}",
        "matmul (m×n×k, form)",
        "median s",
        "GFLOP/s",
        "cpu s",
        format!("GFLOP/s/{cores}cpu")
    );
    let mut shapes = vec![(256, 256, 256, "NN"), (1024, 1024, 1024, "NN")];
    if smoke {
        shapes.truncate(1);
    }
    if big {
        // The MNIST autoencoder: forward X·Wᵀ, weight gradient δᵀ·X, input delta δ·W.
        shapes.extend([(10_000, 196, 784, "NT"), (196, 784, 10_000, "TN"), (10_000, 784, 196, "NN")]);
    }
    for (m, n, kk, form) in shapes {
        let (ta, tb) = (form.as_bytes()[0] == b'T', form.as_bytes()[1] == b'T');
        let a: Vec<f32> = (0..m * kk).map(|_| rng.random_range(-1.0..1.0)).collect();
        let b: Vec<f32> = (0..kk * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        let (a_buf, b_buf) = (gpu.upload_f32("a", &a), gpu.upload_f32("b", &b));
        let c_buf = gpu.upload_f32("c", &vec![0.0; m * n]);
        let op_a =
            if ta { Operand::row_major(&a_buf, 0, m as u32).t() } else { Operand::row_major(&a_buf, 0, kk as u32) };
        let op_b =
            if tb { Operand::row_major(&b_buf, 0, kk as u32).t() } else { Operand::row_major(&b_buf, 0, n as u32) };
        let epi = Epilogue::Plain { alpha: 1.0, accumulate: false, decay: None };
        let op = k.matmul(&gpu.device, op_a, op_b, (&c_buf, 0, n as u32), (m as u32, n as u32, kk as u32), epi);
        let (s, cpu) = time(reps, || gpu.run(std::slice::from_ref(&op)).unwrap());
        let gflop = 2.0 * (m * n * kk) as f64 / 1e9;
        // The rate had the process had every core to itself: GFLOP per CPU-second × cores.
        let per_cores = if cpu > 0.0 { gflop / cpu * cores as f64 } else { f64::NAN };
        println!(
            "{:<44} {:>10.4} {:>9.2} {:>8.2} {:>14.2}",
            format!("{m}×{n}×{kk} {form}"),
            s,
            gflop / s,
            cpu,
            per_cores
        );
    }

    kernel_families(&gpu, &k, reps, smoke);

    println!("\n{:<44} {:>10} {:>10} {:>8} {:>10}", "cost and gradient", "gpu s", "cpu f32 s", "gpu/cpu", "gpu cpu s");
    let sae = NetSpec::sparse_autoencoder(784, 196, 3e-3, Sparsity { target: 0.1, weight: 3.0 }).unwrap();
    let rows = if smoke {
        64
    } else if big {
        10_000
    } else {
        1_000
    };
    let x = Array2::from_shape_simple_fn((rows, 784), || rng.random_range(0.0f32..1.0));
    let theta = Init::Uniform.theta(&sae, 0);
    let mut grad = vec![0.0; theta.len()];
    let mut g = GpuBackend::on(sae.clone(), gpu).unwrap();
    g.set_data((&x).into(), Targets::Inputs).unwrap();
    let mut c = CpuBackend::<f32>::new(sae).unwrap();
    c.set_data((&x).into(), Targets::Inputs).unwrap();
    let (tg, tg_cpu) = time(reps, || {
        g.cost_and_grad(&theta, Batch::All, &mut grad).unwrap();
    });
    let (tc, _) = time(reps, || {
        c.cost_and_grad(&theta, Batch::All, &mut grad).unwrap();
    });
    let name = format!("sparse autoencoder 784-196-784, m={rows}");
    println!("{name:<44} {tg:>10.4} {tc:>10.4} {:>8.1} {tg_cpu:>10.2}", tg / tc);

    training_steps(reps, smoke);
    recurrent_steps(reps, smoke);
}

/// No adapter is a failure (CI always has lavapipe), unless WGNN_SKIP_GPU=1 asks to skip.
fn open_gpu() -> Option<Gpu> {
    match Gpu::open(&GpuOptions::default()) {
        Ok(gpu) => Some(gpu),
        Err(e) if std::env::var("WGNN_SKIP_GPU").is_ok_and(|v| v == "1") => {
            println!("SKIPPED: every GPU benchmark (WGNN_SKIP_GPU=1): {e}");
            None
        }
        Err(e) => panic!(
            "\n\n*** no GPU adapter for the GPU benchmark: {e}\n*** (set WGNN_SKIP_GPU=1 to skip it on a machine \
             without one)\n"
        ),
    }
}

/// Work per timed run: floating-point operations (products, steps) or values touched.
#[derive(Clone, Copy)]
enum Work {
    Flops(f64),
    Values(f64),
}

fn header(title: &str) {
    println!("\n{title:<60} {:>10} {:>16}", "median s", "rate");
}

fn report(name: &str, s: f64, work: Work) {
    let rate = match work {
        Work::Flops(f) => format!("{:.2} GFLOP/s", f / s / 1e9),
        Work::Values(v) => format!("{:.1} Mval/s", v / s / 1e6),
    };
    println!("{name:<60} {s:>10.5} {rate:>16}");
}

fn uniform(len: usize, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random_range(lo..hi)).collect()
}

/// Full size `n`, or `n / 64` (at least 3) in smoke mode.
fn scaled(n: usize, smoke: bool) -> usize {
    if smoke { (n / 64).max(3) } else { n }
}

/// Times `ops` as one submission waited to completion.
fn time_ops(gpu: &Gpu, reps: usize, ops: &[Op]) -> f64 {
    time(reps, || gpu.run(ops).expect("a kernel failed")).0
}

/// Every kernel family but the matrix product, each on its own, at `benches/cpu.rs`' shapes
/// (the autoencoder's 10,000 × 196 hidden and 10,000 × 784 output activations, softmax over
/// 10 classes, θ of the 784-256-128-10 MLP), then convolution + pooling of 28×28 images.
fn kernel_families(gpu: &Gpu, k: &Kernels, reps: usize, smoke: bool) {
    let dev = &gpu.device;
    let (m, h, n) = (scaled(10_000, smoke) as u32, 196u32, 784u32);
    let (mh, mn) = ((m * h) as usize, (m * n) as usize);

    header("elementwise (rows×cols)");
    let z = gpu.upload_f32("z", &uniform(mh, -4.0, 4.0, 11));
    let a = gpu.upload_f32("a", &uniform(mh, 0.05, 0.95, 12));
    let out = gpu.upload_f32("out", &vec![0.0; mh]);
    // The bias and the KL term sit in one buffer, at offsets, as they sit in θ and the workspace.
    let bias_kl = gpu.upload_f32("bias and kl", &uniform(2 * h as usize, -0.5, 0.5, 13));
    let (col, row) =
        (gpu.upload_f32("column", &uniform(m as usize, -1.0, 1.0, 14)), uniform(h as usize, -1.0, 1.0, 15));
    let row = gpu.upload_f32("row", &row);
    // The training path fuses bias + f and × f′ into the matmul epilogues: a depth-1 product
    // (an outer product, 2 FLOP per value) makes the row time the epilogue pass itself.
    let outer = |epi| {
        k.matmul(dev, Operand::row_major(&col, 0, 1), Operand::row_major(&row, 0, h), (&out, 0, h), (m, h, 1), epi)
    };
    let grid = [h.div_ceil(16), m.div_ceil(16), 1];
    let values = Work::Values(mh as f64);
    // The same product with the plain epilogue: the tile machinery alone, so the rows below
    // read as this plus what their epilogue costs.
    let op = outer(Epilogue::Plain { alpha: 1.0, accumulate: false, decay: None });
    report(&format!("no epilogue (plain product, depth 1) {m}×{h}"), time_ops(gpu, reps, &[op]), values);
    for act in [Activation::Sigmoid, Activation::Tanh, Activation::Relu] {
        let name = act.name();
        let op = outer(Epilogue::BiasAct { bias: (&bias_kl, 0), act });
        report(&format!("bias + {name} (fused epilogue, depth 1) {m}×{h}"), time_ops(gpu, reps, &[op]), values);
        // The standalone kernel (the forward pass of arbitrary data): f(z), no bias.
        let (code, leaky) = act_code(act);
        let p = SmallParams { rows: m, cols: h, in_rs: h, act: code, leaky_alpha: leaky, ..Default::default() };
        let op = k.small(dev, Small::Elementwise, Some(&z), None, Some(&out), None, p, grid);
        report(&format!("{name} f(z) (elementwise kernel) {m}×{h}"), time_ops(gpu, reps, &[op]), values);
    }
    for with_kl in [false, true] {
        let kl = with_kl.then_some((&bias_kl, h));
        let op = outer(Epilogue::Delta { kl, a_prev: Operand::row_major(&a, 0, h), act: Activation::Sigmoid });
        let what = if with_kl { "+ KL term" } else { "no KL" };
        report(&format!("× sigmoid′ {what} (fused epilogue, depth 1) {m}×{h}"), time_ops(gpu, reps, &[op]), values);
    }
    let p = SmallParams { rows: m, cols: h, in_rs: h, flag: 1, ..Default::default() };
    let op = k.small(dev, Small::Elementwise, Some(&a), None, Some(&out), None, p, grid);
    report(&format!("sigmoid′ from value (elementwise kernel) {m}×{h}"), time_ops(gpu, reps, &[op]), values);

    // Squared error: δ = (a − y) ⊙ f′(a) and one partial sum of (a − y)² per workgroup.
    let out_a = gpu.upload_f32("output activations", &uniform(mn, 0.05, 0.95, 16));
    let y = gpu.upload_f32("targets", &uniform(mn, 0.0, 1.0, 17));
    let delta = gpu.upload_f32("delta", &vec![0.0; mn]);
    let grid = [n.div_ceil(16), m.div_ceil(16), 1];
    let partials = gpu.upload_f32("partials", &vec![0.0; (grid[0] * grid[1]) as usize]);
    let p = SmallParams { rows: m, cols: n, in_rs: n, flag: 1, ..Default::default() };
    let op = k.small(dev, Small::SquaredError, Some(&out_a), Some(&y), Some(&delta), Some(&partials), p, grid);
    report(&format!("squared error + delta (sigmoid) {m}×{n}"), time_ops(gpu, reps, &[op]), Work::Values(mn as f64));

    header("softmax (rows×classes, + cross-entropy delta and row loss)");
    for rows in [m, scaled(256, smoke) as u32] {
        let logits = gpu.upload_f32("logits", &uniform(rows as usize * 10, -5.0, 5.0, 18));
        let labels: Vec<u32> = (0..rows).map(|i| i % 10).collect();
        let labels = gpu.upload_f32("labels", bytemuck::cast_slice(&labels));
        let loss = gpu.upload_f32("row loss", &vec![0.0; rows as usize]);
        let p = SmallParams { rows, cols: 10, flag: 1, ..Default::default() };
        // In place: later runs see P − onehot rather than logits, the same work.
        let op =
            k.small(dev, Small::Softmax, None, Some(&labels), Some(&logits), Some(&loss), p, [rows.div_ceil(64), 1, 1]);
        report(&format!("softmax {rows}×10"), time_ops(gpu, reps, &[op]), Work::Values(rows as f64 * 10.0));
    }

    header("reductions");
    // Column sums in two passes: blocks of 256 rows, then the blocks in order.
    let column_sums = |src: &wgpu::Buffer, cols: u32, alpha: f32| {
        let blocks = m.div_ceil(BLOCK_ROWS);
        let partials = gpu.upload_f32("column partials", &vec![0.0; (blocks * cols) as usize]);
        let sums = gpu.upload_f32("column sums", &vec![0.0; cols as usize]);
        let p = SmallParams { rows: m, cols, in_rs: cols, ..Default::default() };
        let first = k.small(
            dev,
            Small::ColumnPartials,
            Some(src),
            None,
            Some(&partials),
            None,
            p,
            [cols.div_ceil(64), blocks, 1],
        );
        let p = SmallParams { cols, alpha, len: blocks, ..Default::default() };
        let finish =
            k.small(dev, Small::ColumnFinish, Some(&partials), None, Some(&sums), None, p, [cols.div_ceil(64), 1, 1]);
        time_ops(gpu, reps, &[first, finish])
    };
    report(&format!("column sums (bias gradient) {m}×{n}"), column_sums(&delta, n, 1.0), Work::Values(mn as f64));
    report(&format!("ρ̂ = column means {m}×{h}"), column_sums(&a, h, 1.0 / m as f32), values);
    // Σ W² over the sparse autoencoder's weights (2·784·196): one workgroup, as the backend does.
    let len = scaled(2 * 784 * 196, smoke);
    let w = gpu.upload_f32("weights", &uniform(len, -0.1, 0.1, 19));
    let sum = gpu.upload_f32("sum", &[0.0; 4]);
    let p = SmallParams { act: 1, len: len as u32, ..Default::default() };
    let op = k.small(dev, Small::SumRange, Some(&w), None, Some(&sum), None, p, [1, 1, 1]);
    report(&format!("weight decay Σ W² (one workgroup) {len}"), time_ops(gpu, reps, &[op]), Work::Values(len as f64));

    header("sparsity");
    // Σ σ(z) then Σ σ(−z), as the plan lays them out.
    let colsum = gpu.upload_f32("column sums", &uniform(2 * h as usize, 0.05 * m as f32, 0.95 * m as f32, 20));
    let terms = gpu.upload_f32("kl terms", &vec![0.0; 2 * h as usize]);
    let p = SmallParams { cols: h, alpha: 1.0 / m as f32, rho: 0.1, beta: 3.0, ..Default::default() };
    let kl = k.small(dev, Small::KlTerms, Some(&colsum), None, Some(&terms), None, p, [h.div_ceil(64), 1, 1]);
    let p = SmallParams { in_off: h, len: h, ..Default::default() };
    let kl_sum = k.small(dev, Small::SumRange, Some(&terms), None, Some(&sum), None, p, [1, 1, 1]);
    report(
        &format!("KL delta and cost terms + their sum, {h} units"),
        time_ops(gpu, reps, &[kl, kl_sum]),
        Work::Values(h as f64),
    );

    updates(gpu, reps, smoke);
    convolution(gpu, reps, smoke);
    layer_kernels(gpu, reps, smoke);
}

/// One optimizer step on θ of the 784-256-128-10 MLP (235,146 values). StandaloneUpdate is the
/// public way in: each step also uploads ∇J (f64 → f32 on the host, then a queue write) and
/// reads back 16 bytes (the norm), as the update kernel alone cannot be reached from outside
/// the crate; `training_steps` times it inside a real step.
fn updates(gpu: &Gpu, reps: usize, smoke: bool) {
    let dim = scaled(235_146, smoke);
    header(&format!("update on θ of {dim} (+ ∇J upload, ‖∇J‖ read-back)"));
    let grad: Vec<f64> = uniform(dim, -1.0, 1.0, 21).into_iter().map(f64::from).collect();
    for rule in [
        UpdateRule::Plain,
        UpdateRule::Momentum { momentum: 0.9, nesterov: false },
        UpdateRule::NESTEROV,
        UpdateRule::ADAM,
    ] {
        let mut update = StandaloneUpdate::new(gpu, &vec![0.0; dim], &UpdateState::new(rule, dim)).unwrap();
        let scalars = rule.scalars(1, 1e-3);
        let (s, _) = time(reps, || {
            update.step(gpu, &grad, &scalars).expect("the update kernel failed");
        });
        report(&format!("{} mlp_784_256_128_10", rule.name()), s, Work::Values(dim as f64));
    }
}

/// 196 8×8 features over 28×28 images, mean-pooled 3×3 (the MNIST convolution pipeline):
/// the two kernels alone, then GpuConvolution's whole call (upload, both kernels, read-back).
fn convolution(gpu: &Gpu, reps: usize, smoke: bool) {
    let images = if smoke { 2 } else { 20 };
    let (features, patch, size, d, pool) = (196u32, 8u32, 28u32, 21u32, 3u32);
    let q = d / pool;
    // 2·k·p² FLOP per convolved value.
    let flops = Work::Flops((images * d * d * features * patch * patch * 2) as f64);
    header(&format!("convolution + pooling, {images} images"));
    let fk = FeatureKernels::new(&gpu.device);
    let x = uniform((images * size * size) as usize, 0.0, 1.0, 22);
    let image_buf = gpu.upload_f32("images", &x);
    let weights = gpu.upload_f32("features", &uniform(((patch * patch + 1) * features) as usize, -0.1, 0.1, 23));
    let conv = gpu.upload_f32("convolved", &vec![0.0; (images * features * d * d) as usize]);
    let pooled = gpu.upload_f32("pooled", &vec![0.0; (images * features * q * q) as usize]);
    let cp = ConvParams {
        images,
        image_size: size,
        channels: 1,
        patch,
        conv_size: d,
        features,
        depth: patch * patch,
        act: 0,
        bias_off: patch * patch * features,
        ..Default::default()
    };
    let pp = PoolParams { maps: images * features, conv_size: d, pool, pooled: q, ..Default::default() };
    let max = gpu.limits.max_compute_workgroups_per_dimension;
    let conv_op = fk.convolve(&gpu.device, &image_buf, &weights, &conv, cp);
    let pool_op = fk.pool(&gpu.device, &conv, &pooled, pp, max);
    report(&format!("convolve kernel {images}×28×28, 196×8×8"), time_ops(gpu, reps, &[conv_op]), flops);
    let maps = Work::Values((images * features * d * d) as f64);
    report(&format!("mean-pool 3×3 kernel {images}×196×21×21"), time_ops(gpu, reps, &[pool_op]), maps);

    let mut rng = StdRng::seed_from_u64(24);
    let w = Array2::from_shape_simple_fn((196, 64), || rng.random_range(-0.1..0.1));
    let bank = FeatureBank::new(w, Array1::zeros(196), Activation::Sigmoid, 8, 1).unwrap();
    let pooling = Pooling { size: 3, kind: PoolKind::Mean };
    let x = Array2::from_shape_vec((images as usize, 784), x).unwrap();
    let conv = GpuConvolution::new(gpu);
    let (s, _) = time(reps, || {
        conv.convolve_and_pool(&bank, x.view(), 28, pooling).expect("the GPU convolution failed");
    });
    report(&format!("GpuConvolution::convolve_and_pool {images} images"), s, flops);
}

/// FLOPs of one cost-and-gradient (as in benches/cpu.rs): forward 2mnk per layer, backward two
/// products per layer less the first layer's input delta.
fn step_flops(spec: &NetSpec, m: usize) -> f64 {
    let per_layer: Vec<f64> = spec.layers.windows(2).map(|w| 2.0 * (m * w[0] * w[1]) as f64).collect();
    3.0 * per_layer.iter().sum::<f64>() - per_layer[0]
}

/// One minibatch training step with θ on the device (DeviceTraining, the path `wgnn train`
/// takes on a GPU): cost, gradient, ‖∇J‖² and the update in one submission, 16 bytes read
/// back; batch 256 of a 1,024-row set, shuffled rows. The CPU f32 column is the host path's
/// cost_and_grad + update on the same batch.
fn training_steps(reps: usize, smoke: bool) {
    let (batch, rows) = (scaled(256, smoke), scaled(1024, smoke));
    println!(
        "\n{:<60} {:>10} {:>16} {:>10}",
        format!("training step (cost + gradient + update), batch {batch}"),
        "gpu s",
        "rate",
        "cpu f32 s"
    );
    let sae = NetSpec::sparse_autoencoder(784, 196, 3e-3, Sparsity { target: 0.1, weight: 3.0 }).unwrap();
    let softmax = NetSpec::softmax_regression(784, 10, 1e-4).unwrap();
    let mlp = NetSpec::new(&[784, 256, 128, 10], Activation::Relu, Output::Softmax).unwrap();
    let mut rng = StdRng::seed_from_u64(25);
    let x = Array2::from_shape_simple_fn((rows, 784), || rng.random_range(0.0f32..1.0));
    let labels: Vec<usize> = (0..rows).map(|i| i % 10).collect();
    let mut order: Vec<usize> = (0..rows).collect();
    for i in (1..rows).rev() {
        order.swap(i, rng.random_range(0..=i));
    }
    let picked = &order[..batch];
    // The LeNet-like CNN at batch 64 (issue 15's CPU comparison), or 2 in smoke mode.
    let cnn_batch = if smoke { 2 } else { 64 };
    for (name, spec, rule) in [
        ("sparse_autoencoder_784_196", sae, UpdateRule::Plain),
        ("softmax_784_10", softmax, UpdateRule::Plain),
        ("mlp_784_256_128_10", mlp, UpdateRule::ADAM),
        ("lenet_like_cnn (batch 64)", lenet(), UpdateRule::ADAM),
    ] {
        let picked = if spec.has_layer_stack() { &order[..cnn_batch] } else { picked };
        let targets = if spec.outputs() == 784 { Targets::Inputs } else { Targets::Labels(&labels) };
        let theta = Init::Uniform.theta(&spec, 0);
        // A tiny rate keeps θ (and so the work) the same from step to step.
        let scalars = rule.scalars(1, 1e-9);
        let mut g = GpuBackend::new(spec.clone(), &GpuOptions::default()).unwrap();
        g.set_data((&x).into(), targets).unwrap();
        let device = g.device_training().expect("the GPU backend trains on the device");
        device.load(&theta, &UpdateState::new(rule, theta.len())).unwrap();
        let (tg, _) = time(reps, || {
            let step = device.step(Batch::Indices(picked), &scalars).expect("a device training step failed");
            assert!(step.cost.is_finite() && step.grad_norm.is_finite(), "non-finite step: {step:?}");
        });
        let mut c = CpuBackend::<f32>::new(spec.clone()).unwrap();
        c.set_data((&x).into(), targets).unwrap();
        let (mut theta, mut grad, mut state) =
            (theta.clone(), vec![0.0; theta.len()], UpdateState::new(rule, theta.len()));
        let (tc, _) = time(reps, || {
            c.cost_and_grad(&theta, Batch::Indices(picked), &mut grad).unwrap();
            state.apply(&mut theta, &grad, 1e-9);
        });
        let flops = if spec.has_layer_stack() { lenet_step_flops(picked.len()) } else { step_flops(&spec, batch) };
        let rate = format!("{:.2} GFLOP/s", flops / tg / 1e9);
        println!("{:<60} {tg:>10.5} {rate:>16} {tc:>10.5}", format!("{name} {}", rule.name()));
    }
}

/// The layer kernels of `src/gpu/layers/` (shaders/conv2d.wgsl, pool2d.wgsl, maxout.wgsl) at
/// the LeNet-like net's shapes, batch 64 (2 in smoke mode): each conv layer's forward pass,
/// weight gradient (slices + finish) and input gradient; 2×2 max and mean pooling of the first
/// conv's output, both ways; maxout 240×5 on 64 rows, both ways. FLOP rates count 2·m·h′w′·f·c·k²
/// per conv product (the ∇W row adds the ∇b column).
fn layer_kernels(gpu: &Gpu, reps: usize, smoke: bool) {
    let m = if smoke { 2 } else { 64 };
    let dev = &gpu.device;
    let lk = LayerKernels::new(dev);
    header(&format!("layer kernels (LeNet-like shapes), batch {m}"));
    for (input, filters) in [(ImageShape::new(1, 28, 28), 20), (ImageShape::new(20, 12, 12), 50)] {
        let conv = Conv2d::new(input, filters, 5, 1, 0).unwrap();
        let (in_len, out_len, depth) = (m * input.len(), m * conv.output().len(), conv.patch_len());
        let x = gpu.upload_f32("x", &uniform(in_len, 0.0, 1.0, 30));
        let theta = gpu.upload_f32("θ", &uniform(filters * depth + filters, -0.1, 0.1, 31));
        let delta = gpu.upload_f32("δ", &uniform(out_len, -1.0, 1.0, 32));
        let out = gpu.upload_f32("out", &vec![0.0; out_len]);
        let grad = gpu.upload_f32("∇θ", &vec![0.0; filters * depth + filters]);
        let partials = gpu.upload_f32("partials", &vec![0.0; conv2d_partials_len(&conv, m)]);
        let back = gpu.upload_f32("∂L/∂in", &vec![0.0; in_len]);
        let at = (0, filters * depth);
        let flops = Work::Flops(conv.forward_flops(m) as f64);
        let name = format!("conv2d {} → {filters}×5×5", input.describe());
        let forward = lk.conv2d_forward(dev, &conv, m, Activation::Relu, (&x, 0), &theta, at, &out).unwrap();
        report(&format!("{name} forward (+ bias, relu)"), time_ops(gpu, reps, &[forward]), flops);
        let weight_grad = lk
            .conv2d_weight_grad(
                dev,
                &conv,
                m,
                (&x, 0),
                &delta,
                &partials,
                (&theta, 0),
                (&grad, 0, at.1),
                (1.0, false, 0.0),
            )
            .unwrap();
        report(&format!("{name} ∇W ∇b"), time_ops(gpu, reps, &weight_grad), flops);
        let input_grad =
            lk.conv2d_input_grad(dev, &conv, m, &delta, (&theta, 0), (&x, 0), Activation::Relu, &back).unwrap();
        report(&format!("{name} ∂L/∂in (× f′)"), time_ops(gpu, reps, &[input_grad]), flops);
    }
    let maps = ImageShape::new(20, 24, 24);
    let x = gpu.upload_f32("conv out", &uniform(m * maps.len(), 0.0, 1.0, 33));
    let out = gpu.upload_f32("pooled", &vec![0.0; m * maps.len() / 4]);
    let winners = gpu.upload_f32("winners", &vec![0.0; m * maps.len() / 4]);
    let delta = gpu.upload_f32("δ", &uniform(m * maps.len() / 4, -1.0, 1.0, 34));
    let back = gpu.upload_f32("∂L/∂in", &vec![0.0; m * maps.len()]);
    for kind in [LayerPool::Max, LayerPool::Mean] {
        let pool = Pool2d::new(maps, kind, 2).unwrap();
        let kept = (kind == LayerPool::Max).then_some(&winners);
        let values = Work::Values((m * maps.len()) as f64);
        let forward = lk.pool2d_forward(dev, &pool, m, (&x, 0), &out, kept).unwrap();
        report(&format!("{} pool 2×2 forward {m}×20×24×24", kind.name()), time_ops(gpu, reps, &[forward]), values);
        let backward = lk.pool2d_backward(dev, &pool, m, &delta, kept, (&x, 0), Activation::Relu, &back).unwrap();
        report(&format!("{} pool 2×2 backward (× f′)", kind.name()), time_ops(gpu, reps, &[backward]), values);
    }
    let max = Maxout::new(240, 5).unwrap();
    let z = gpu.upload_f32("z", &uniform(m * max.piece_count(), -1.0, 1.0, 35));
    let out = gpu.upload_f32("out", &vec![0.0; m * max.units]);
    let winners = gpu.upload_f32("winners", &vec![0.0; m * max.units]);
    let dz = gpu.upload_f32("∂L/∂z", &vec![0.0; m * max.piece_count()]);
    let values = Work::Values((m * max.piece_count()) as f64);
    let forward = lk.maxout_forward(dev, &max, m, &z, &out, &winners).unwrap();
    report(&format!("maxout 240×5 forward, {m} rows"), time_ops(gpu, reps, &[forward]), values);
    let backward = lk.maxout_backward(dev, &max, m, &out, &winners, &dz).unwrap();
    report(&format!("maxout 240×5 backward, {m} rows"), time_ops(gpu, reps, &[backward]), values);
}

/// The LeNet-like net of `wgnn train cnn` (conv 20x5x5 relu, maxpool 2, conv 50x5x5 relu,
/// maxpool 2, dense 500 relu, softmax) on 1×28×28 inputs.
fn lenet() -> NetSpec {
    let parsed =
        parse_net("conv 20x5x5 relu, maxpool 2, conv 50x5x5 relu, maxpool 2, dense 500 relu, softmax").unwrap();
    NetSpec::stack(LayerStack { input: InputShape::image(1, 28, 28), layers: parsed.layers }, 10, parsed.output)
        .unwrap()
}

/// FLOPs of one LeNet-like cost-and-gradient on m images: each conv's forward, ∇W and
/// ∂L/∂in products (the first conv has no ∂L/∂in), the dense layers' three products (the
/// output's input delta included).
fn lenet_step_flops(m: usize) -> f64 {
    let conv1 = Conv2d::new(ImageShape::new(1, 28, 28), 20, 5, 1, 0).unwrap().forward_flops(m) as f64;
    let conv2 = Conv2d::new(ImageShape::new(20, 12, 12), 50, 5, 1, 0).unwrap().forward_flops(m) as f64;
    let dense = 2.0 * (m * (800 * 500 + 500 * 10)) as f64;
    2.0 * conv1 + 3.0 * conv2 + 3.0 * dense
}

/// FLOPs of one cost-and-gradient of a recurrent stack on m sequences (the products only):
/// per layer of G gate rows, n inputs and h units over T steps, 2·m·T·G·(n + h) forward and
/// 2·m·T·G·(n + 2h) backward (δh through W_hh, ∇W_ih, ∇W_hh) plus 2·m·T·G·n for the δ of a
/// layer below; the output layer's three products on S steps.
fn recurrent_step_flops(spec: &NetSpec, m: usize) -> f64 {
    let stack = spec.net.as_ref().expect("a recurrent stack");
    let steps = stack.input.height;
    let mut n = stack.input.width;
    let mut flops = 0.0;
    for (i, layer) in stack.layers.iter().enumerate() {
        let (g, h) = match *layer {
            wgnn::model::Layer::Lstm { units, .. } => (4 * units, units),
            wgnn::model::Layer::Rnn { units, .. } => (units, units),
            _ => unreachable!("a recurrent stack"),
        };
        let mtg = 2.0 * (m * steps * g) as f64;
        flops += mtg * ((n + h) + (n + 2 * h)) as f64 + if i > 0 { mtg * n as f64 } else { 0.0 };
        n = h;
    }
    flops + 3.0 * 2.0 * (m * spec.output_steps() * spec.outputs() * n) as f64
}

/// One minibatch training step of the issue-16 recurrent models with θ and Adam on the device
/// (DeviceTraining), against the CPU f32 backend's cost_and_grad + update on the same batch:
/// row-by-row MNIST with an LSTM of 128 (T = 28 steps of 28 pixels, batch 128, softmax at the
/// last step) and the character LSTM of 256 (T = 64, one-hot over 73 characters, batch 32, a
/// softmax at every step; here from a zero state each step). Random data of those shapes; in
/// smoke mode 2 sequences of 8 units.
fn recurrent_steps(reps: usize, smoke: bool) {
    println!(
        "\n{:<60} {:>10} {:>16} {:>10} {:>8}",
        "recurrent training step (cost + gradient + Adam)", "gpu s", "rate", "cpu f32 s", "gpu/cpu"
    );
    let (rows_h, char_h) = if smoke { (8, 8) } else { (128, 256) };
    let seq = |steps: usize, n: usize, text: &str, k: usize| {
        let parsed = parse_net(text).unwrap();
        NetSpec::stack(LayerStack { input: InputShape::sequence(steps, n), layers: parsed.layers }, k, parsed.output)
            .unwrap()
    };
    let mut rng = StdRng::seed_from_u64(16);
    let (rows_batch, char_batch, char_t) = if smoke { (2, 2, 4) } else { (128, 32, 64) };
    for (name, spec, batch) in [
        (
            format!("row-MNIST lstm {rows_h} (T 28, batch {rows_batch})"),
            seq(28, 28, &format!("lstm {rows_h}, softmax"), 10),
            rows_batch,
        ),
        (
            format!("char lstm {char_h} (T {char_t}, 73 chars, batch {char_batch})"),
            seq(char_t, 73, &format!("lstm {char_h}, per-step softmax"), 73),
            char_batch,
        ),
    ] {
        let x = Array2::from_shape_fn((batch, spec.inputs()), |(i, j)| {
            if spec.inputs() == 28 * 28 {
                rng.random_range(0.0f32..1.0)
            } else {
                ((j % 73) == (i * 7 + j / 73) % 73) as u8 as f32
            }
        });
        let labels: Vec<usize> = (0..batch * spec.output_steps()).map(|i| (i * 13) % spec.outputs()).collect();
        let all: Vec<usize> = (0..batch).collect();
        let theta = Init::Uniform.theta(&spec, 0);
        let rule = UpdateRule::ADAM;
        let scalars = rule.scalars(1, 1e-9);
        let mut g = GpuBackend::new(spec.clone(), &GpuOptions::default()).unwrap();
        g.set_data((&x).into(), Targets::Labels(&labels)).unwrap();
        let device = g.device_training().expect("the GPU backend trains on the device");
        device.load(&theta, &UpdateState::new(rule, theta.len())).unwrap();
        let (tg, _) = time(reps, || {
            let step = device.step(Batch::Indices(&all), &scalars).expect("a device training step failed");
            assert!(step.cost.is_finite() && step.grad_norm.is_finite(), "non-finite step: {step:?}");
        });
        let mut c = CpuBackend::<f32>::new(spec.clone()).unwrap();
        c.set_data((&x).into(), Targets::Labels(&labels)).unwrap();
        let (mut theta, mut grad, mut state) =
            (theta.clone(), vec![0.0; theta.len()], UpdateState::new(rule, theta.len()));
        let (tc, _) = time(reps, || {
            c.cost_and_grad(&theta, Batch::Indices(&all), &mut grad).unwrap();
            state.apply(&mut theta, &grad, 1e-9);
        });
        let rate = format!("{:.2} GFLOP/s", recurrent_step_flops(&spec, batch) / tg / 1e9);
        println!("{name:<60} {tg:>10.5} {rate:>16} {tc:>10.5} {:>8.2}", tg / tc);
    }
}
