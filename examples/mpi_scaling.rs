//! Data-parallel cost: time per full-batch evaluation (J and ∇J) of the MNIST sparse
//! autoencoder 784-196-784 (UFLDL's ρ = 0.1, β = 3, λ = 3e-3; CPU f32) on all 60,000 training
//! images, split into compute and communication, and the bytes the sums move (issue 17,
//! BENCHMARKS.md "Data-parallel training over MPI").
//!
//! ```text
//! cargo run --release --features mpi --example mpi_scaling -- ../shared/data/mnist 5
//! mpirun -np 2 target/release/examples/mpi_scaling ../shared/data/mnist 5
//! mpirun -np 2 target/release/examples/mpi_scaling ../shared/data/mnist 5 gpu 6000
//! ```
//! The optional third and fourth arguments: `cpu` (default) or `gpu` (each rank's GPU backend,
//! the adapter its local rank picks; the evaluation cut between its passes for ρ̂), and the
//! number of training images to use (default all 60,000).
//! Alone it runs as one rank (no MPI calls). Rank 0 prints one line per rank.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use wgnn::data::{Mnist, Split};
use wgnn::dist::{Collective, DistBackend, Solo, local_spec};
use wgnn::model::{Init, NetSpec, Sparsity};
use wgnn::{Backend, Batch, CpuBackend, Inputs, Targets};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = args.get(1).map_or("../shared/data/mnist", String::as_str);
    let evaluations: usize = args.get(2).map_or(Ok(5), |n| n.parse())?;
    let world: Rc<dyn Collective> =
        if wgnn::dist::mpi::launched() { Rc::new(wgnn::dist::mpi::MpiWorld::init()?) } else { Rc::new(Solo) };
    let (rank, size) = (world.rank(), world.size());

    let on_gpu = args.get(3).is_some_and(|b| b == "gpu");
    let mut x = Mnist::load(std::path::Path::new(dir), Split::Train)?.images;
    if let Some(rows) = args.get(4) {
        let rows = rows.parse::<usize>()?.min(x.nrows());
        x = x.slice_move(ndarray::s![..rows, ..]);
    }
    let x = Arc::new(x);
    let spec = NetSpec::sparse_autoencoder(784, 196, 3e-3, Sparsity { target: 0.1, weight: 3.0 })?;
    let theta = Init::Uniform.theta(&spec, 0);
    let inner: Box<dyn wgnn::dist::ShardBackend> = if on_gpu {
        let options = wgnn::gpu::GpuOptions { api: wgnn::gpu::Api::Auto, adapter: None, matmul: None };
        Box::new(wgnn::GpuBackend::new(local_spec(&spec), &options)?)
    } else {
        Box::new(CpuBackend::<f32>::new(local_spec(&spec))?)
    };
    let mut backend = DistBackend::new(spec.clone(), inner, world.clone())?;
    backend.set_data(Inputs::Shared(&x), Targets::Inputs)?;
    let mut grad = vec![0.0; theta.len()];
    backend.cost_and_grad(&theta, Batch::All, &mut grad)?; // warm-up: buffers, pages
    let before = backend.stats();
    let start = Instant::now();
    for _ in 0..evaluations {
        backend.cost_and_grad(&theta, Batch::All, &mut grad)?;
    }
    let wall = start.elapsed().as_secs_f64() / evaluations as f64;
    let after = backend.stats();
    let per = |a: f64, b: f64| (a - b) / evaluations as f64;
    let mine = [
        per(after.compute_seconds, before.compute_seconds),
        per(after.comm_seconds, before.comm_seconds),
        (after.bytes - before.bytes) as f64 / evaluations as f64,
        backend.shard().len() as f64,
    ];
    // The sum alone, ranks lined up first: the transfer without waiting for a slower rank.
    let values = vec![1.0; theta.len() + 4];
    let mut out = vec![0.0; values.len()];
    world.sum_in_rank_order(&[0.0], &mut [0.0])?;
    let start = Instant::now();
    for _ in 0..20 {
        world.sum_in_rank_order(&values, &mut out)?;
    }
    let sum_alone = start.elapsed().as_secs_f64() / 20.0;
    if on_gpu && size == 1 {
        // The same evaluation without the cut: one GPU process's one submission, rounds
        // alternating with the cut one.
        let options = wgnn::gpu::GpuOptions { api: wgnn::gpu::Api::Auto, adapter: None, matmul: None };
        let mut plain = wgnn::GpuBackend::new(spec.clone(), &options)?;
        plain.set_data(Inputs::Shared(&x), Targets::Inputs)?;
        plain.cost_and_grad(&theta, Batch::All, &mut grad)?;
        let (mut one, mut cut) = (0.0, 0.0);
        for _ in 0..evaluations {
            let t = Instant::now();
            plain.cost_and_grad(&theta, Batch::All, &mut grad)?;
            one += t.elapsed().as_secs_f64();
            let t = Instant::now();
            backend.cost_and_grad(&theta, Batch::All, &mut grad)?;
            cut += t.elapsed().as_secs_f64();
        }
        let n = evaluations as f64;
        println!(
            "  alternating: one submission {:.3} s, cut between the passes {:.3} s per evaluation",
            one / n,
            cut / n
        );
    }
    // Each rank's four numbers in its own slots, summed (all others are 0): rank 0 sees all.
    let mut slots = vec![0.0; 4 * size];
    slots[4 * rank..4 * rank + 4].copy_from_slice(&mine);
    let mut all = vec![0.0; slots.len()];
    world.sum_in_rank_order(&slots, &mut all)?;
    if rank == 0 {
        let threads = rayon::current_num_threads();
        println!(
            "N = {size} ranks × {threads} threads, {}, {} images, |θ| = {}, {evaluations} evaluations: {:.3} s per evaluation (wall, rank 0)",
            backend.name(),
            x.nrows(),
            theta.len(),
            wall
        );
        println!("  one sum of |θ| + 4 f64 values, ranks lined up: {:.4} s", sum_alone);
        for r in 0..size {
            let v = &all[4 * r..4 * r + 4];
            println!(
                "  rank {r}: {} rows, compute {:.3} s, communication {:.4} s, {:.2} MB sent+received per evaluation",
                v[3],
                v[0],
                v[1],
                v[2] / 1e6
            );
        }
    }
    Ok(())
}
