//! Time per training step of an LSTM on the CPU backend (f32): one Adam minibatch step (cost,
//! BPTT gradient, update) through the library's optimizer, on random data of the given shape.
//! `benches/compare/lstm.py` runs it beside PyTorch's `nn.LSTM` and prints the ratios.
//!
//! Run: `cargo run --release --example lstm_step -- BATCH STEPS FEATURES HIDDEN CLASSES
//! [per-step] [STEPS_TIMED]`, e.g. `128 28 28 128 10` (row-by-row MNIST) or
//! `32 64 73 256 73 per-step` (the character model: one-hot inputs). Prints one JSON line:
//! `{"ms_per_step": …, "threads": …}` (the median of 5 runs of STEPS_TIMED steps each, after
//! one untimed run).

use std::time::Instant;

use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::model::{Init, InputShape, LayerStack, NetSpec, parse_net};
use wgnn::optim::{BackendObjective, Hooks, Method, Minibatch, Optimizer, Stop};
use wgnn::{Backend, CpuBackend, Targets};

fn main() -> wgnn::Result<()> {
    // As the `wgnn` binary does (src/main.rs, `keep_freed_memory`): freed step arrays stay in
    // the heap for the next step instead of going back to the kernel. `WGNN_GLIBC_MALLOC=1`
    // leaves glibc's defaults, to measure the difference.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("WGNN_GLIBC_MALLOC").is_none() {
        // SAFETY: mallopt only sets two of glibc's thresholds, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        }
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (batch, steps, n, hidden, k) = (num(0, 128), num(1, 28), num(2, 28), num(3, 128), num(4, 10));
    let per_step = args.iter().any(|a| a == "per-step");
    let timed = args.iter().filter_map(|a| a.parse::<usize>().ok()).nth(5).unwrap_or(10);
    let text = format!("lstm {hidden}, {}softmax", if per_step { "per-step " } else { "" });
    let parsed = parse_net(&text)?;
    let stack = LayerStack { input: InputShape::sequence(steps, n), layers: parsed.layers };
    let spec = NetSpec::stack(stack, k, parsed.output)?;
    let mut rng = StdRng::seed_from_u64(0);
    // `timed` minibatches of data: one epoch is the timed run.
    let m = batch * timed;
    let x = if per_step {
        // One-hot characters.
        let mut x = Array2::zeros((m, steps * n));
        for mut row in x.rows_mut() {
            for t in 0..steps {
                row[t * n + rng.random_range(0..n)] = 1.0f32;
            }
        }
        x
    } else {
        Array2::from_shape_simple_fn((m, steps * n), || rng.random_range(0.0f32..1.0))
    };
    let labels: Vec<usize> = (0..m * spec.output_steps()).map(|_| rng.random_range(0..k)).collect();
    let mut cpu = CpuBackend::<f32>::new(spec.clone())?;
    cpu.set_data((&x).into(), Targets::Labels(&labels))?;
    let theta0 = Init::Uniform.theta(&spec, 1);
    let method = Method::Minibatch(Minibatch::adam(2e-3).with_batch_size(batch).with_seed(3));
    let mut run = || -> wgnn::Result<f64> {
        let mut theta = theta0.clone();
        let mut opt = Optimizer::new(method.clone())?;
        let stop = Stop { cost_tol: 0.0, ..Stop::MINIBATCH.with_max_iterations(1) };
        let start = Instant::now();
        opt.run(&mut BackendObjective::new(&mut cpu), &mut theta, &stop, &mut Hooks::new())?;
        Ok(start.elapsed().as_secs_f64() / timed as f64)
    };
    run()?;
    let mut times: Vec<f64> = (0..5).map(|_| run()).collect::<wgnn::Result<_>>()?;
    times.sort_by(f64::total_cmp);
    println!(
        "{{\"ms_per_step\": {:.3}, \"min_ms\": {:.3}, \"threads\": {}, \"net\": \"{text}\", \"batch\": {batch}, \"steps\": {steps}}}",
        times[2] * 1e3,
        times[0] * 1e3,
        rayon::current_num_threads()
    );
    Ok(())
}
