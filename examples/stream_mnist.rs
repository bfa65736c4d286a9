//! Full-batch cost and gradient on all 60,000 MNIST training images on the GPU backend, with
//! the data resident on the device (uploaded once) and streamed from the host chunk by chunk
//! (`set_max_resident_bytes(0)`: every evaluation uploads every chunk, twice with sparsity),
//! for softmax regression 784 → 10 and a sparse autoencoder 784-16-784 (two passes over the
//! data for ρ̂). Each at the device's own chunk size and at 10,000-row chunks. Prints the
//! median of `WGNN_STREAM_ROUNDS` (default 3) alternating evaluations and checks that both
//! give the same numbers.
//!
//! Run: `WGNN_DATA_DIR=../shared/data cargo run --release --example stream_mnist`.

mod common;

use std::time::Instant;

use wgnn::data::Split;
use wgnn::gpu::{GpuBackend, GpuOptions};
use wgnn::model::{Init, NetSpec, Sparsity};
use wgnn::{Backend, Batch, Result, Targets};

fn main() {
    common::main(run)
}

fn run() -> Result<()> {
    let rounds = std::env::var("WGNN_STREAM_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3usize);
    let train = common::mnist(Split::Train, None)?;
    let labels = train.labels.clone().expect("MNIST has labels");
    let softmax = NetSpec::softmax_regression(784, 10, 1e-4)?;
    let sae = NetSpec::sparse_autoencoder(784, 16, 3e-3, Sparsity { target: 0.1, weight: 3.0 })?;
    for (name, spec, targets) in
        [("softmax 784→10", softmax, Targets::Labels(&labels)), ("sparse AE 784-16-784", sae, Targets::Inputs)]
    {
        let theta = Init::Uniform.theta(&spec, 1);
        for chunk_rows in [None, Some(10_000)] {
            let mut backends = Vec::new();
            for streaming in [false, true] {
                let mut g = GpuBackend::new(spec.clone(), &GpuOptions::default())?;
                if let Some(rows) = chunk_rows {
                    g.set_max_chunk_rows(rows);
                }
                if streaming {
                    g.set_max_resident_bytes(0);
                }
                let start = Instant::now();
                g.set_data((&train.x).into(), targets)?;
                let load = start.elapsed().as_secs_f64();
                backends.push((g, load, Vec::new(), 0u64, 0.0));
            }
            let mut grad = vec![0.0; theta.len()];
            for round in 0..=rounds {
                for (g, _, times, bytes, cost) in &mut backends {
                    let before = g.data_uploaded_bytes();
                    let start = Instant::now();
                    *cost = g.cost_and_grad(&theta, Batch::All, &mut grad)?.total();
                    // Round 0 warms up: plans and pipelines.
                    if round > 0 {
                        times.push(start.elapsed().as_secs_f64());
                    }
                    *bytes = g.data_uploaded_bytes() - before;
                }
            }
            let chunks = chunk_rows.map_or("device chunk size".to_string(), |r| format!("chunks of {r}"));
            for (g, load, mut times, bytes, cost) in backends {
                times.sort_by(f64::total_cmp);
                println!(
                    "{name:<22} {chunks:<18} {:<9} set_data {load:6.2} s, cost+gradient {:7.2} s (median of {rounds}; {:.2}–{:.2}), {:.0} MB uploaded per evaluation, J = {cost:.9}",
                    if g.is_streaming() { "streamed" } else { "resident" },
                    times[times.len() / 2],
                    times[0],
                    times[times.len() - 1],
                    bytes as f64 / 1e6
                );
            }
        }
    }
    Ok(())
}
