//! The cost of wgnn's fixed-order sum over ranks (issue 17 §3, BENCHMARKS.md "Data-parallel
//! training over MPI"): for the |θ| of the README's models, the time of one sum of |θ| + 4 f64
//! values as `MpiWorld::sum_in_rank_order` does it — a gather to rank 0, added there in rank
//! order, then a broadcast — against a pipelined chain that keeps the same bits: chunks of
//! the vector travel 0 → 1 → … → N − 1, each rank adding its own values to the partial sum it
//! receives ((x₀ + x₁) + x₂ …, the same order), then rank N − 1 broadcasts the sum. Rounds
//! alternate the two; each line gives the median of 15 rounds per method and checks the two
//! sums are the same bits.
//!
//! ```text
//! cargo build --release --features mpi --example mpi_reduce
//! mpirun --oversubscribe -np 2 target/release/examples/mpi_reduce
//! mpirun --oversubscribe -np 3 target/release/examples/mpi_reduce
//! ```

use std::time::Instant;

use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

/// The README's models and their |θ| (BENCHMARKS.md, "A model of scaling to many nodes").
const MODELS: [(&str, usize); 6] = [
    ("softmax 784-10", 7_850),
    ("sparse autoencoder 784-196-784", 308_308),
    ("self-taught autoencoder 784-200-784", 314_584),
    ("stacked fine-tuning 784-200-200-10", 199_210),
    ("MLP 784-1024-512-10", 1_333_770),
    ("CNN conv 20x5x5, conv 50x5x5, dense 500", 431_080),
];

/// Values per chunk of the chain: 64 KiB messages.
const CHUNK: usize = 8192;

/// wgnn's sum: gather to rank 0, add in rank order, broadcast.
fn gather_broadcast(world: &SimpleCommunicator, local: &[f64], out: &mut [f64]) {
    let (rank, size, n) = (world.rank() as usize, world.size() as usize, local.len());
    let root = world.process_at_rank(0);
    if rank == 0 {
        let mut all = vec![0.0f64; n * size];
        root.gather_into_root(local, &mut all[..]);
        out.copy_from_slice(&all[..n]);
        for part in all.chunks_exact(n).skip(1) {
            out.iter_mut().zip(part).for_each(|(o, x)| *o += x);
        }
    } else {
        root.gather_into(local);
    }
    root.broadcast_into(out);
}

/// The same sum, the same order, as a pipelined chain 0 → 1 → … → N − 1, then a broadcast
/// from N − 1.
fn chain(world: &SimpleCommunicator, local: &[f64], out: &mut [f64]) {
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    out.copy_from_slice(local);
    for (c, part) in out.chunks_mut(CHUNK).enumerate() {
        let tag = c as i32;
        if rank > 0 {
            let mut partial = vec![0.0f64; part.len()];
            world.process_at_rank(rank as i32 - 1).receive_into_with_tag(&mut partial[..], tag);
            // partial = (x₀ + …) + x_{rank−1}: add this rank's values to it (IEEE addition
            // commutes; the grouping is what fixes the bits).
            part.iter_mut().zip(&partial).for_each(|(o, p)| *o += p);
        }
        if rank + 1 < size {
            world.process_at_rank(rank as i32 + 1).send_with_tag(&part[..], tag);
        }
    }
    world.process_at_rank(size as i32 - 1).broadcast_into(out);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let universe = mpi::initialize().expect("MPI initialises once");
    let world = universe.world();
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    for (name, theta) in MODELS {
        let n = theta + 4;
        // Values whose sum rounds differently in another order.
        let local: Vec<f64> = (0..n).map(|i| ((i * 7 + rank * 13) % 101) as f64 * 0.1 + 1e-3 * rank as f64).collect();
        let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
        let (mut ta, mut tb) = (Vec::new(), Vec::new());
        for round in 0..16 {
            for first in [round % 2 == 0, round % 2 == 1] {
                world.barrier();
                let t = Instant::now();
                if first {
                    gather_broadcast(&world, &local, &mut a);
                } else {
                    chain(&world, &local, &mut b);
                }
                let s = t.elapsed().as_secs_f64();
                // Round 0 warms both up.
                if round > 0 {
                    if first { ta.push(s) } else { tb.push(s) }
                }
            }
        }
        let same = a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits());
        if rank == 0 {
            let mb = 8.0 * n as f64 / 1e6;
            println!(
                "N = {size}, {name}, |θ| = {theta}: gather+broadcast {:.2} ms (rank 0 moves {:.1} MB), chain {:.2} ms (every rank ≤ {:.1} MB); same bits: {same}",
                1e3 * median(ta),
                2.0 * (size - 1) as f64 * mb,
                1e3 * median(tb),
                2.0 * mb,
            );
        }
        assert!(same, "the chain summed in another order");
    }
}
