//! `wgnn bench`: how fast each backend is on this machine. It times the three matrix products
//! a dense layer is made of and one full cost-and-gradient of the networks people train, on
//! the CPU backend and on a GPU adapter: one untimed warm-up, then the median of `--repeats`
//! runs, each timed to completion (the GPU's work is waited for, not just submitted).
//! It prints a table, or with `--json` one array for scripts (benches/compare/compare.py).
//! It checks no results — the parity tests do — and makes no claim about speed itself.

use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use ndarray::{Array2, s};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use serde::Serialize;

use wgnn::cpu::{Real, gemm};
use wgnn::data::{DataSource, Mnist, Split};
use wgnn::gpu::kernels::{Epilogue, Kernels, Operand};
use wgnn::gpu::{Gpu, GpuBackend};
use wgnn::model::{Activation, Init, NetSpec, Output, Sparsity};
use wgnn::{Backend, Batch, CpuBackend, Targets};

use super::{BackendArgs, BackendChoice, GpuApi};

/// The f64 reference is timed only where one run is cheap: at most this many GFLOP.
const F64_MAX_GFLOP: f64 = 20.0;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Shape preset. small: 256³ and a 1,000-row layer, steps on 256 rows (10–20 s on a
    /// software adapter); medium: 1024³ and the MNIST autoencoder's 10,000×784×196 layer, steps
    /// on 256 and 10,000 rows; large: adds 2048³, the 60,000-row layer and steps on 60,000 rows;
    /// xlarge: adds 4096³ (for hardware GPUs such as a data-centre NVIDIA card; ~1 s per run on 2 CPU cores).
    #[arg(long, value_enum, default_value_t = Shapes::Small)]
    pub shapes: Shapes,
    /// Backends to time. Default: both when wgpu finds an adapter, else cpu.
    #[arg(long, value_enum)]
    pub backend: Option<Which>,
    /// Timed runs per measurement, after one untimed warm-up; the median is reported.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
    /// Rows for the cost-and-gradient steps, e.g. 256,10000 (default: the preset's).
    #[arg(long, value_delimiter = ',')]
    pub batch: Option<Vec<usize>>,
    /// mnist:DIR: real MNIST training images and labels for the cost-and-gradient steps.
    /// Default: random values in [0, 1] and labels i mod 10.
    #[arg(long)]
    pub data: Option<String>,
    /// Print one JSON array; each row: name, backend, adapter, shape, median_seconds, gflops.
    #[arg(long)]
    pub json: bool,
    /// Time only the CNN on the CPU (f32): `train cnn`'s LeNet training step (cost, gradient
    /// and the Adam update, batch 64) and its two convolutions' forward and backward passes
    /// (benches/compare/cnn.py sets them beside PyTorch's).
    #[arg(long)]
    pub cnn: bool,
    /// Graphics API to look for GPUs through (auto: Vulkan, Metal or DX12, then GL).
    #[arg(long, value_enum, default_value_t = GpuApi::Auto)]
    pub gpu_api: GpuApi,
    /// Use the GPU adapter whose name contains this text (see `wgnn devices`); also read from
    /// the environment variable WGNN_ADAPTER.
    #[arg(long)]
    pub adapter: Option<String>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shapes {
    Small,
    Medium,
    Large,
    Xlarge,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    Cpu,
    Gpu,
    Both,
}

/// What a preset measures.
struct Preset {
    /// Edges n of square products n × n × n.
    squares: &'static [usize],
    /// Dense layers (rows, inputs, outputs) whose three products are timed.
    layers: &'static [(usize, usize, usize)],
    /// Rows of the cost-and-gradient steps.
    batches: &'static [usize],
}

impl Shapes {
    fn preset(self) -> Preset {
        match self {
            Shapes::Small => Preset { squares: &[256], layers: &[(1_000, 784, 196)], batches: &[256] },
            Shapes::Medium => Preset { squares: &[1024], layers: &[(10_000, 784, 196)], batches: &[256, 10_000] },
            Shapes::Large => Preset {
                squares: &[1024, 2048],
                layers: &[(10_000, 784, 196), (60_000, 784, 196)],
                batches: &[256, 10_000, 60_000],
            },
            Shapes::Xlarge => Preset {
                squares: &[1024, 2048, 4096],
                layers: &[(10_000, 784, 196), (60_000, 784, 196)],
                batches: &[256, 10_000, 60_000],
            },
        }
    }
}

/// Which product of a dense layer (examples are rows, W is outputs × inputs; MATH.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// A·B, both stored as they are used.
    Plain,
    /// Z = X·Wᵀ, the forward pass.
    Forward,
    /// ∇W = δᵀ·A, the weight gradient.
    WeightGrad,
    /// δ·W, the delta handed to the layer below.
    InputDelta,
}

/// C (m × n) = op(A) (m × k) · op(B) (k × n), with the operands stored as the network stores
/// them, so a transposed form is timed with the strides the backends really meet.
#[derive(Clone, Copy, Debug)]
struct Product {
    form: Form,
    m: usize,
    n: usize,
    k: usize,
}

impl Product {
    /// The three products of a layer of `inputs` → `outputs` units on `rows` examples.
    fn of_layer(rows: usize, inputs: usize, outputs: usize) -> [Product; 3] {
        [
            Product { form: Form::Forward, m: rows, n: outputs, k: inputs },
            Product { form: Form::WeightGrad, m: outputs, n: inputs, k: rows },
            Product { form: Form::InputDelta, m: rows, n: inputs, k: outputs },
        ]
    }

    fn name(&self) -> &'static str {
        match self.form {
            Form::Plain => "matmul",
            Form::Forward => "matmul_forward",
            Form::WeightGrad => "matmul_weight_grad",
            Form::InputDelta => "matmul_input_delta",
        }
    }

    fn flops(&self) -> f64 {
        2.0 * (self.m * self.n * self.k) as f64
    }

    /// δ is stored rows × outputs, so the weight gradient reads it transposed.
    fn a_transposed(&self) -> bool {
        self.form == Form::WeightGrad
    }

    /// W is stored outputs × inputs, so the forward pass reads it transposed.
    fn b_transposed(&self) -> bool {
        self.form == Form::Forward
    }

    /// (rows, columns) of A and B as stored.
    fn stored_shapes(&self) -> ((usize, usize), (usize, usize)) {
        let a = if self.a_transposed() { (self.k, self.m) } else { (self.m, self.k) };
        let b = if self.b_transposed() { (self.n, self.k) } else { (self.k, self.n) };
        (a, b)
    }
}

/// A network whose cost and gradient is timed.
struct Step {
    name: &'static str,
    spec: NetSpec,
}

impl Step {
    fn all() -> anyhow::Result<Vec<Step>> {
        Ok(vec![
            Step {
                name: "sae_784_196_784",
                spec: NetSpec::sparse_autoencoder(784, 196, 3e-3, Sparsity { target: 0.1, weight: 3.0 })?,
            },
            Step { name: "softmax_784_10", spec: NetSpec::softmax_regression(784, 10, 1e-4)? },
            Step {
                name: "mlp_784_256_128_10",
                spec: NetSpec::new(&[784, 256, 128, 10], Activation::Relu, Output::Softmax)?,
            },
        ])
    }

    /// FLOPs of one cost-and-gradient on `rows` examples, counting 2mnk per product: three
    /// products per layer (forward, weight gradient, input delta) less the first layer's
    /// input delta, which nothing needs.
    fn flops(&self, rows: usize) -> f64 {
        let per_layer: Vec<f64> = self.spec.layers.windows(2).map(|w| 2.0 * (rows * w[0] * w[1]) as f64).collect();
        3.0 * per_layer.iter().sum::<f64>() - per_layer[0]
    }
}

/// What one row times: a product or a step, at one shape.
struct Work {
    name: &'static str,
    shape: String,
    flops: f64,
}

impl Work {
    fn describe(&self) -> String {
        format!("{} {}", self.name, self.shape)
    }

    /// The f64 reference is timed only where one run is cheap.
    fn cheap_in_f64(&self) -> bool {
        self.flops <= F64_MAX_GFLOP * 1e9
    }

    fn row(&self, backend: &str, adapter: &str, seconds: f64) -> Row {
        Row {
            name: self.name.into(),
            backend: backend.into(),
            adapter: adapter.into(),
            shape: self.shape.clone(),
            median_seconds: seconds,
            gflops: self.flops / seconds / 1e9,
        }
    }
}

/// One measured line.
#[derive(Serialize, Debug, Clone)]
struct Row {
    name: String,
    backend: String,
    adapter: String,
    shape: String,
    median_seconds: f64,
    gflops: f64,
}

/// Examples for the steps: `rows` × 784 in [0, 1], with class labels.
struct Examples {
    x: Array2<f32>,
    labels: Vec<usize>,
}

impl Examples {
    fn load(data: Option<&str>, rows: usize) -> anyhow::Result<Examples> {
        let Some(data) = data else {
            let labels = (0..rows).map(|i| i % 10).collect();
            return Ok(Examples { x: random(rows, 784, 3), labels });
        };
        let dir = match data.parse::<DataSource>().context("--data")? {
            DataSource::Mnist(dir) => dir,
            other => bail!("--data {other}: bench reads only mnist:DIR (or random data without --data)"),
        };
        let mnist = Mnist::load(&dir, Split::Train).with_context(|| format!("loading --data {data}"))?;
        if mnist.len() < rows {
            bail!(
                "--data {data} holds {} training images, but the steps ask for {rows} rows: lower --batch",
                mnist.len()
            );
        }
        let mnist = mnist.take(rows);
        Ok(Examples { x: mnist.images, labels: mnist.labels })
    }
}

fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(0.0..1.0))
}

/// Runs `f` once untimed, then `repeats` times; the median wall-clock seconds.
fn median_seconds(repeats: u32, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(repeats as usize);
    for _ in 0..repeats {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let mid = times.len() / 2;
    Ok(if times.len() % 2 == 1 { times[mid] } else { 0.5 * (times[mid - 1] + times[mid]) })
}

fn time_cpu_product<F: Real>(p: &Product, repeats: u32) -> anyhow::Result<f64> {
    let ((ar, ac), (br, bc)) = p.stored_shapes();
    let a = random(ar, ac, 1).mapv(F::of_f32);
    let b = random(br, bc, 2).mapv(F::of_f32);
    let a_op = if p.a_transposed() { a.t() } else { a.view() };
    let b_op = if p.b_transposed() { b.t() } else { b.view() };
    let mut c = Array2::<F>::zeros((p.m, p.n));
    median_seconds(repeats, || {
        gemm(F::one(), &a_op, &b_op, F::zero(), &mut c.view_mut());
        Ok(())
    })
}

/// Times one matmul dispatch on the GPU, or `None` when an operand exceeds what one storage
/// binding of the adapter holds.
fn time_gpu_product(gpu: &Gpu, kernels: &Kernels, p: &Product, repeats: u32) -> anyhow::Result<Option<f64>> {
    let ((ar, ac), (br, bc)) = p.stored_shapes();
    let binding = wgnn::gpu::max_buffer_bytes(&gpu.limits);
    if [ar * ac, br * bc, p.m * p.n].iter().any(|&len| len as u64 * 4 > binding) {
        return Ok(None);
    }
    let a = gpu.upload_f32("A", random(ar, ac, 1).as_slice().expect("contiguous"));
    let b = gpu.upload_f32("B", random(br, bc, 2).as_slice().expect("contiguous"));
    let c = gpu.upload_f32("C", &vec![0.0; p.m * p.n]);
    let a_op = Operand::row_major(&a, 0, ac as u32);
    let b_op = Operand::row_major(&b, 0, bc as u32);
    let a_op = if p.a_transposed() { a_op.t() } else { a_op };
    let b_op = if p.b_transposed() { b_op.t() } else { b_op };
    let epilogue = Epilogue::Plain { alpha: 1.0, accumulate: false, decay: None };
    let dims = (p.m as u32, p.n as u32, p.k as u32);
    let op = kernels.matmul(&gpu.device, a_op, b_op, (&c, 0, p.n as u32), dims, epilogue);
    // Gpu::run submits and waits for the device, so each run is timed to completion.
    median_seconds(repeats, || Ok(gpu.run(std::slice::from_ref(&op))?)).map(Some)
}

/// Times the backend's cost and gradient on the first `rows` examples. Every backend reads
/// back the cost and the gradient, so a run ends when the work is done.
fn time_step(backend: &mut dyn Backend, ex: &Examples, rows: usize, repeats: u32) -> anyhow::Result<f64> {
    let spec = backend.spec().clone();
    let x = ex.x.slice(s![..rows, ..]);
    let targets = match spec.output {
        Output::Softmax => Targets::Labels(&ex.labels[..rows]),
        Output::SquaredError(_) => Targets::Inputs,
        Output::SigmoidBce => bail!("bench times softmax and squared-error networks, not {}", spec.describe()),
    };
    backend.set_data(x.into(), targets)?;
    let theta = Init::Uniform.theta(&spec, 0);
    let mut grad = vec![0.0; theta.len()];
    median_seconds(repeats, || {
        backend.cost_and_grad(&theta, Batch::All, &mut grad)?;
        Ok(())
    })
}

/// e.g. `AMD EPYC 7B13 (2 threads)`: the CPU's model name where the OS tells it, and the
/// threads the CPU backend computes on (rayon's pool: every core, or RAYON_NUM_THREADS).
fn cpu_name() -> String {
    let threads = rayon::current_num_threads();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    format!("{model} ({threads} thread{})", if threads == 1 { "" } else { "s" })
}

/// The 1-, 5- and 15-minute load averages where the OS tells them: benchmarks on a busy
/// machine read low, and the reader should know.
fn load_average() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let preset = args.shapes.preset();
    let batches = args.batch.clone().unwrap_or_else(|| preset.batches.to_vec());
    if batches.contains(&0) {
        bail!("--batch 0: a cost-and-gradient needs at least one row");
    }
    let gpu_args = BackendArgs {
        backend: BackendChoice::Gpu,
        precision: None,
        gpu_api: args.gpu_api,
        adapter: args.adapter.clone(),
    };
    let options = gpu_args.gpu_options();
    let (cpu, adapter) = match args.backend {
        Some(Which::Cpu) => (true, None),
        Some(which) => (which == Which::Both, Some(wgnn::gpu::choose_adapter(&options)?)),
        None => match wgnn::gpu::choose_adapter(&options) {
            Ok(adapter) => (true, Some(adapter)),
            Err(e) => {
                eprintln!("note: {e}; timing the CPU backend only");
                (true, None)
            }
        },
    };
    if args.cnn {
        let rows = cnn_rows(args.repeats, args.data.as_deref())?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            print_table(&rows, args.repeats, None, &cpu_name(), args.data.as_deref());
        }
        return Ok(());
    }
    let examples = Examples::load(args.data.as_deref(), batches.iter().copied().max().unwrap_or(1))?;

    let mut products: Vec<Product> =
        preset.squares.iter().map(|&n| Product { form: Form::Plain, m: n, n, k: n }).collect();
    for &(rows, inputs, outputs) in preset.layers {
        products.extend(Product::of_layer(rows, inputs, outputs));
    }
    let steps = Step::all()?;
    let bar = indicatif::ProgressBar::new((products.len() + steps.len() * batches.len()) as u64);
    let cpu_adapter = cpu_name();
    let mut rows = Vec::new();

    let gpu = adapter.as_ref().map(Gpu::from_adapter).transpose()?;
    let kernels = gpu.as_ref().map(Kernels::new);
    for p in &products {
        let work = Work { name: p.name(), shape: format!("{}x{}x{}", p.m, p.n, p.k), flops: p.flops() };
        bar.set_message(work.describe());
        if cpu {
            rows.push(work.row("cpu f32", &cpu_adapter, time_cpu_product::<f32>(p, args.repeats)?));
            if work.cheap_in_f64() {
                rows.push(work.row("cpu f64", &cpu_adapter, time_cpu_product::<f64>(p, args.repeats)?));
            }
        }
        if let (Some(gpu), Some(kernels)) = (&gpu, &kernels) {
            match time_gpu_product(gpu, kernels, p, args.repeats)? {
                Some(seconds) => rows.push(work.row("gpu", &gpu.info.name, seconds)),
                None => bar.suspend(|| {
                    eprintln!(
                        "note: {} exceeds one storage binding of {}: skipped on the GPU",
                        work.describe(),
                        gpu.info.name
                    )
                }),
            }
        }
        bar.inc(1);
    }
    for step in &steps {
        let mut gpu_backend = adapter
            .as_ref()
            .map(|a| anyhow::Ok(GpuBackend::on(step.spec.clone(), Gpu::from_adapter(a)?)?))
            .transpose()?;
        for &batch in &batches {
            let work = Work { name: step.name, shape: format!("batch={batch}"), flops: step.flops(batch) };
            bar.set_message(work.describe());
            if cpu {
                let mut backend = CpuBackend::<f32>::new(step.spec.clone())?;
                rows.push(work.row("cpu f32", &cpu_adapter, time_step(&mut backend, &examples, batch, args.repeats)?));
                if work.cheap_in_f64() {
                    let mut backend = CpuBackend::<f64>::new(step.spec.clone())?;
                    let seconds = time_step(&mut backend, &examples, batch, args.repeats)?;
                    rows.push(work.row("cpu f64", &cpu_adapter, seconds));
                }
            }
            if let Some(backend) = &mut gpu_backend {
                let seconds = time_step(backend, &examples, batch, args.repeats)?;
                rows.push(work.row("gpu", &backend.gpu().info.name, seconds));
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();

    if args.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print_table(&rows, args.repeats, gpu.as_ref(), &cpu_adapter, args.data.as_deref());
    }
    Ok(())
}

/// The rows as a table, each GPU row with its time over the CPU f32 row of the same work.
fn print_table(rows: &[Row], repeats: u32, gpu: Option<&Gpu>, cpu: &str, data: Option<&str>) {
    println!("cpu      {cpu}");
    if let Some(gpu) = gpu {
        println!("adapter  {}", gpu.describe());
        println!("matmul   {} kernel (WGNN_MATMUL=tex|tiled chooses)", gpu.matmul.name());
    }
    if let Some(load) = load_average() {
        println!("load     {load} (1, 5, 15 min): a busy machine reads slow");
    }
    println!("data     {}", data.unwrap_or("random values in [0, 1]"));
    println!("timing   median of {repeats} runs after one warm-up, each to completion\n");
    let adapter_width = rows.iter().map(|r| r.adapter.chars().count()).max().unwrap_or(7).max(7);
    println!(
        "{:<20} {:<8} {:<adapter_width$} {:<14} {:>10} {:>9} {:>8}",
        "name", "backend", "adapter", "shape", "median s", "GFLOP/s", "gpu/cpu"
    );
    for r in rows {
        let ratio = (r.backend == "gpu")
            .then(|| rows.iter().find(|c| c.backend == "cpu f32" && c.name == r.name && c.shape == r.shape))
            .flatten()
            .map_or(String::new(), |c| format!("{:.2}", r.median_seconds / c.median_seconds));
        println!(
            "{:<20} {:<8} {:<adapter_width$} {:<14} {:>10.5} {:>9.2} {:>8}",
            r.name, r.backend, r.adapter, r.shape, r.median_seconds, r.gflops, ratio
        );
    }
    println!("\ngpu/cpu: the GPU's time over the CPU f32 backend's for the same work (below 1: the GPU is faster).");
    println!("GFLOP/s counts 2mnk per product; a cost-and-gradient counts three products per layer, less the");
    println!("first layer's input delta. matmul shapes are m×n×k of C (m×n) = A (m×k) · B (k×n).");
}

/// The CNN rows (`--cnn`), CPU f32: `train cnn`'s default LeNet (1×28×28 → conv 20×5×5 relu,
/// max pool 2, conv 50×5×5 relu, max pool 2, dense 500 relu, softmax 10) — one whole training
/// step (cost, gradient, Adam update; batch 64, as `train cnn` trains) — and each convolution
/// alone, forward (Z = W·Pᵀ + b per image) and backward (∇W, ∇b and, for the second, ∇input).
/// FLOPs count 2 per multiply-add of the products: per conv layer 2·m·h′w′·f·c·k² for each of
/// forward, ∇W and ∇input (not for the first layer's input), per dense layer 2·m·in·out for
/// each of its three products (less the first's input delta: none here).
fn cnn_rows(repeats: u32, data: Option<&str>) -> anyhow::Result<Vec<Row>> {
    use ndarray::Array1;
    use wgnn::layers::{ImageShape, conv2d::Conv2d};
    use wgnn::model::{InputShape, LayerStack, parse_net};
    use wgnn::optim::{UpdateRule, UpdateState};

    let m = 64;
    let parsed = parse_net(super::train::LENET)?;
    let stack = LayerStack { input: InputShape::image(1, 28, 28), layers: parsed.layers };
    let spec = NetSpec::stack(stack, 10, parsed.output)?;
    let examples = Examples::load(data, m)?;
    let convs = [
        (
            ["conv2d_lenet1_forward", "conv2d_lenet1_backward_dW_db"],
            Conv2d::new(ImageShape::new(1, 28, 28), 20, 5, 1, 0)?,
            false,
        ),
        (
            ["conv2d_lenet2_forward", "conv2d_lenet2_backward_dW_db_dx"],
            Conv2d::new(ImageShape::new(20, 12, 12), 50, 5, 1, 0)?,
            true,
        ),
    ];
    let dense = [(800, 500), (500, 10)];
    let step_flops =
        convs.iter().map(|(_, c, dx)| c.forward_flops(m) as f64 * if *dx { 3.0 } else { 2.0 }).sum::<f64>()
            + dense.iter().map(|&(i, o)| 3.0 * 2.0 * (m * i * o) as f64).sum::<f64>();
    let cpu = cpu_name();
    let mut rows = Vec::new();

    let mut backend = CpuBackend::<f32>::new(spec.clone())?;
    backend.set_data(examples.x.view().into(), Targets::Labels(&examples.labels))?;
    let mut theta = Init::Uniform.theta(&spec, 0);
    let mut grad = vec![0.0; theta.len()];
    let mut adam = UpdateState::new(UpdateRule::ADAM, theta.len());
    let seconds = median_seconds(repeats, || {
        backend.cost_and_grad(&theta, Batch::All, &mut grad)?;
        // A tiny rate keeps θ (and so the work) the same from step to step.
        adam.apply(&mut theta, &grad, 1e-9);
        Ok(())
    })?;
    let work = Work { name: "cnn_lenet_step_adam", shape: format!("batch={m}"), flops: step_flops };
    rows.push(work.row("cpu f32", &cpu, seconds));

    for (names, conv, input_grad) in convs {
        let (f, depth) = conv.weight_shape();
        let w = random(f, depth, 11);
        let b = Array1::from_elem(f, 0.1f32);
        let x = random(m, conv.input.len(), 12);
        let delta = random(m, conv.output().len(), 13);
        let shape = format!("{m}x{}_{f}x{}x5x5", conv.input.describe().replace('×', "x"), conv.input.channels);
        let forward = median_seconds(repeats, || Ok(conv.forward(w.view(), b.view(), x.view()).map(|_| ())?))?;
        let flops = conv.forward_flops(m) as f64;
        rows.push(Work { name: names[0], shape: shape.clone(), flops }.row("cpu f32", &cpu, forward));
        let (mut gw, mut gb, mut gx) =
            (Array2::<f32>::zeros((f, depth)), Array1::<f32>::zeros(f), Array2::<f32>::zeros(x.dim()));
        let backward = median_seconds(repeats, || {
            let gx = input_grad.then(|| gx.view_mut());
            Ok(conv.backward(w.view(), x.view(), delta.view(), 1.0, gw.view_mut(), gb.view_mut(), gx)?)
        })?;
        let flops = flops * if input_grad { 2.0 } else { 1.0 };
        rows.push(Work { name: names[1], shape, flops }.row("cpu f32", &cpu, backward));
    }
    Ok(rows)
}
