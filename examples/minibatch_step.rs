//! Time per minibatch step of Adam on the GPU backend, with θ kept on the device (the default)
//! and with the host path (θ uploaded and ∇J read back every step, update on the host), for a
//! 784-256-128-10 ReLU MLP with a softmax output on random MNIST-shaped data. Also times the
//! part of the host path that the device path removes — θ up and ∇J back — and the host-side
//! gather of a shuffled minibatch. Each path runs with the minibatch gathered on the device
//! from an uploaded index list (the default for resident data) and gathered on the host and
//! uploaded row by row (as before `src/gpu/data.rs`), with the bytes of data sent per step.
//!
//! Run: `cargo run --release --example minibatch_step -- [BATCH ...]` (default 256 32);
//! `WGNN_STEP_EPOCHS` epochs of 10 steps per run (default 2), `WGNN_STEP_ROUNDS` alternating
//! runs of each path (default 3). Synchronised: every step reads back at least the cost.

use std::time::Instant;

use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::gpu::{GpuBackend, GpuOptions, StandaloneUpdate};
use wgnn::model::{Activation, Init, NetSpec, Output};
use wgnn::optim::{BackendObjective, Hooks, Method, Minibatch, Optimizer, Stop, UpdateRule, UpdateState};
use wgnn::{Backend, Targets};

fn main() -> wgnn::Result<()> {
    let batches: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let batches = if batches.is_empty() { vec![256, 32] } else { batches };
    let env = |name, default| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let (epochs, rounds): (usize, usize) = (env("WGNN_STEP_EPOCHS", 2), env("WGNN_STEP_ROUNDS", 3));
    let spec = NetSpec::new(&[784, 256, 128, 10], Activation::Relu, Output::Softmax)?.with_weight_decay(1e-4)?;
    let theta0 = Init::Uniform.theta(&spec, 1);
    let mut gpu = GpuBackend::new(spec.clone(), &GpuOptions::default())?;
    println!("adapter: {}; |θ| = {}", gpu.gpu().describe(), theta0.len());
    let mut rng = StdRng::seed_from_u64(0);
    for &batch in &batches {
        // Ten steps per epoch.
        let m = 10 * batch;
        let x = Array2::from_shape_simple_fn((m, 784), || rng.random_range(0.0f32..1.0));
        let labels: Vec<usize> = (0..m).map(|_| rng.random_range(0..10)).collect();
        gpu.set_data((&x).into(), Targets::Labels(&labels))?;
        let method = Method::Minibatch(Minibatch::adam(1e-3).with_batch_size(batch).with_seed(3));
        let run = |gpu: &mut GpuBackend, epochs: usize| -> wgnn::Result<f64> {
            let mut theta = theta0.clone();
            let mut opt = Optimizer::new(method.clone())?;
            let stop = Stop { cost_tol: 0.0, ..Stop::MINIBATCH.with_max_iterations(epochs) };
            let start = Instant::now();
            opt.run(&mut BackendObjective::new(gpu), &mut theta, &stop, &mut Hooks::new())?;
            Ok(start.elapsed().as_secs_f64() / (10 * epochs) as f64)
        };
        // (θ on the device, minibatch gathered on the device)
        let paths = [(true, true), (true, false), (false, true), (false, false)];
        for (device, gather) in paths {
            gpu.set_device_training(device);
            gpu.set_device_gather(gather);
            run(&mut gpu, 1)?; // warm-up: plans, pipelines, buffers
        }
        // Alternating rounds, so every path sees the same machine load; medians.
        let mut times = vec![Vec::new(); paths.len()];
        let mut bytes = vec![0u64; paths.len()];
        for _ in 0..rounds {
            for (i, &(device, gather)) in paths.iter().enumerate() {
                gpu.set_device_training(device);
                gpu.set_device_gather(gather);
                let before = gpu.data_uploaded_bytes();
                times[i].push(run(&mut gpu, epochs)?);
                bytes[i] = (gpu.data_uploaded_bytes() - before) / (10 * epochs) as u64;
            }
        }
        gpu.set_device_training(true);
        gpu.set_device_gather(true);
        for ((device, gather), (t, b)) in paths.into_iter().zip(times.into_iter().zip(bytes)) {
            let path = if device { "θ on the device" } else { "host path      " };
            let gather = if gather { "device gather" } else { "host gather  " };
            let (lo, mid, hi) = spread(t);
            println!(
                "batch {batch:>4}  {path}, {gather}  {:8.2} ms per step (median of {rounds} runs of {} steps; {:.2}–{:.2}); {b} B of data per step",
                mid * 1e3,
                10 * epochs,
                lo * 1e3,
                hi * 1e3
            );
        }

        // What the host path adds per step: θ (f64 → f32) up and ∇J (f32 → f64) back.
        let g = gpu.gpu();
        let buf = g.upload_f32("θ", &vec![0.0; theta0.len()]);
        let reps = 50;
        let start = Instant::now();
        for _ in 0..reps {
            let theta32: Vec<f32> = theta0.iter().map(|&v| v as f32).collect();
            g.queue.write_buffer(&buf, 0, bytemuck::cast_slice(&theta32));
            let back: Vec<f64> = g.download_f32(&buf, theta0.len())?.iter().map(|&v| v as f64).collect();
            std::hint::black_box(back);
        }
        let round_trip = start.elapsed().as_secs_f64() / reps as f64;
        // The host-side gather of a shuffled minibatch (what the device gather removes).
        let order: Vec<usize> = (0..m).rev().collect();
        let start = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(x.select(ndarray::Axis(0), &order[..batch]));
        }
        let gather = start.elapsed().as_secs_f64() / reps as f64;
        println!(
            "batch {batch:>4}  θ up + ∇J back alone {:.2} ms; host gather of {batch} rows {:.3} ms",
            round_trip * 1e3,
            gather * 1e3
        );
    }

    // The update alone: Adam on the device (with the gradient's upload, as StandaloneUpdate
    // takes it from the host) against UpdateState::apply in f64 on the host.
    let reps = 50;
    let grad: Vec<f64> = theta0.iter().map(|v| v * 0.1).collect();
    let mut state = UpdateState::new(UpdateRule::ADAM, theta0.len());
    let mut device = StandaloneUpdate::new(gpu.gpu(), &theta0, &state)?;
    let scalars = UpdateRule::ADAM.scalars(1, 1e-3);
    device.step(gpu.gpu(), &grad, &scalars)?;
    let start = Instant::now();
    for _ in 0..reps {
        device.step(gpu.gpu(), &grad, &scalars)?;
    }
    let on_device = start.elapsed().as_secs_f64() / reps as f64;
    let mut theta = theta0.clone();
    let start = Instant::now();
    for _ in 0..reps {
        state.apply(&mut theta, &grad, 1e-3);
    }
    let on_host = start.elapsed().as_secs_f64() / reps as f64;
    println!(
        "Adam update of |θ| = {}: device {:.2} ms (gradient upload included), host f64 {:.2} ms",
        theta0.len(),
        on_device * 1e3,
        on_host * 1e3
    );
    Ok(())
}

/// (min, median, max).
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}
