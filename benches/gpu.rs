//! GPU kernel and step timings on whatever adapter wgpu finds (lavapipe here), synchronised
//! to completion (each timed run ends with a wait on the device), median of repeated runs
//! after one warm-up. A plain table rather than criterion: on a software adapter one big
//! matmul takes seconds. Run: `cargo bench --bench gpu` (WGNN_BENCH_REPS, default 3;
//! WGNN_BENCH_BIG=1 adds the 10,000-row autoencoder shapes).

use std::time::Instant;

use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::gpu::kernels::{Epilogue, Kernels, Operand};
use wgnn::gpu::{Gpu, GpuBackend, GpuOptions};
use wgnn::model::{Init, NetSpec, Sparsity};
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
    let reps: usize = std::env::var("WGNN_BENCH_REPS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let big = std::env::var("WGNN_BENCH_BIG").is_ok_and(|v| v == "1");
    let gpu = Gpu::open(&GpuOptions::default()).expect("a GPU adapter");
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

    println!("\n{:<44} {:>10} {:>10} {:>8} {:>10}", "cost and gradient", "gpu s", "cpu f32 s", "gpu/cpu", "gpu cpu s");
    let sae = NetSpec::sparse_autoencoder(784, 196, 3e-3, Sparsity { target: 0.1, weight: 3.0 }).unwrap();
    let rows = if big { 10_000 } else { 1_000 };
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
}
