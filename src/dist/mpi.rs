//! [`Collective`] over MPI (the `mpi` crate on the system's Open MPI; cargo feature `mpi`).
//!
//! Sums are a gather to rank 0, added there in rank order, then a broadcast: the bits do not
//! depend on which message arrives first (MPI_Allreduce does not promise an order for
//! floating-point sums). Every collective is non-blocking underneath and waited for with a
//! timeout ([`MpiWorld::timeout`], `WGNN_MPI_TIMEOUT` seconds, default 300): a rank that died
//! or hangs makes the others print one line and end the whole job (MPI_Abort) instead of
//! waiting forever. Open MPI's `mpirun` usually notices a dead rank first and ends the job
//! itself, with its own message.

use std::time::{Duration, Instant};

use mpi::environment::Universe;
use mpi::request::{Request, Scope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::Collective;
use crate::{Error, Result};

/// Whether this process was started by an MPI launcher (`mpirun`, `mpiexec`, `srun`): then
/// `wgnn train` runs as one rank of a data-parallel job; otherwise it runs alone, exactly as a
/// build without the `mpi` feature ([`super::launched`]).
pub fn launched() -> bool {
    super::launched()
}

/// MPI_COMM_WORLD of this process, initialised once ([`MpiWorld::init`]); finalised when
/// dropped.
pub struct MpiWorld {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    timeout: Duration,
    // Dropped last: MPI_Finalize.
    _universe: Universe,
}

impl MpiWorld {
    /// Initialises MPI (threads: funneled — rayon's workers never call MPI). Errors: MPI was
    /// initialised already, or `WGNN_MPI_TIMEOUT` is not a positive number of seconds (MPI is
    /// then finalised again: [`MpiWorld::init_reporting`] keeps it up to refuse together).
    pub fn init() -> Result<MpiWorld> {
        let (world, setting) = MpiWorld::init_reporting()?;
        match setting {
            Some(e) => Err(e),
            None => Ok(world),
        }
    }

    /// As [`MpiWorld::init`], but a `WGNN_MPI_TIMEOUT` that is not a positive number of
    /// seconds does not stop the initialisation: its error comes back beside the world (which
    /// waits the default 300 s), so that every rank can refuse the job together, rank 0 saying
    /// why in one line. A rank that printed and exited on its own would race: `mpirun` ends the
    /// job at the first non-zero exit, which can cut rank 0 short before its line. Errors: MPI
    /// was initialised already.
    pub fn init_reporting() -> Result<(MpiWorld, Option<Error>)> {
        let (timeout, setting) = match std::env::var("WGNN_MPI_TIMEOUT") {
            Err(_) => (Duration::from_secs(300), None),
            Ok(t) => match t.trim().parse::<f64>() {
                Ok(s) if s > 0.0 && s.is_finite() => (Duration::from_secs_f64(s), None),
                _ => (
                    Duration::from_secs(300),
                    Some(Error::Data(format!(
                        "WGNN_MPI_TIMEOUT={t} is not a number of seconds above 0 (the longest wait for the other ranks)"
                    ))),
                ),
            },
        };
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| Error::Data("MPI was initialised twice in one process".into()))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok((MpiWorld { world, rank, size, timeout, _universe: universe }, setting))
    }

    /// The longest wait for the other ranks in one collective.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Ends every rank of the job now (MPI_Abort) with exit code `code`.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    /// Waits for `request`, at most [`MpiWorld::timeout`]; past it, says so in one line and
    /// ends the job.
    fn wait<'a, D: ?Sized, S: Scope<'a>>(&self, mut request: Request<'a, D, S>, what: &str) {
        let start = Instant::now();
        let mut pause = Duration::from_micros(10);
        loop {
            match request.test() {
                Ok(_) => return,
                Err(r) => request = r,
            }
            if start.elapsed() > self.timeout {
                eprintln!(
                    "error: rank {}: no answer from the other ranks for {:.0} s while {what}: a rank died, hangs or was \
                     stopped (WGNN_MPI_TIMEOUT sets this wait); ending every rank",
                    self.rank,
                    self.timeout.as_secs_f64()
                );
                self.abort(1);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }
}

impl Collective for MpiWorld {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn sum_in_rank_order(&self, local: &[f64], out: &mut [f64]) -> Result<()> {
        if self.size == 1 {
            out.copy_from_slice(local);
            return Ok(());
        }
        let n = local.len();
        let root = self.world.process_at_rank(0);
        if self.rank == 0 {
            let mut all = vec![0.0f64; n * self.size];
            mpi::request::scope(|scope| {
                self.wait(root.immediate_gather_into_root(scope, local, &mut all[..]), "summing (gather)")
            });
            out.copy_from_slice(&all[..n]);
            for part in all.chunks_exact(n.max(1)).skip(1).take(self.size - 1) {
                out.iter_mut().zip(part).for_each(|(o, x)| *o += x);
            }
        } else {
            mpi::request::scope(|scope| self.wait(root.immediate_gather_into(scope, local), "summing (gather)"));
        }
        mpi::request::scope(|scope| self.wait(root.immediate_broadcast_into(scope, out), "summing (broadcast)"));
        Ok(())
    }

    fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        if self.size == 1 {
            return Ok(vec![local.to_vec()]);
        }
        let len = local.len() as u64;
        let mut lens = vec![0u64; self.size];
        mpi::request::scope(|scope| {
            self.wait(self.world.immediate_all_gather_into(scope, &len, &mut lens[..]), "exchanging sizes")
        });
        let longest = lens.iter().copied().max().unwrap_or(0) as usize;
        let mut padded = local.to_vec();
        padded.resize(longest, 0);
        let mut all = vec![0u8; longest * self.size];
        if longest > 0 {
            mpi::request::scope(|scope| {
                self.wait(self.world.immediate_all_gather_into(scope, &padded[..], &mut all[..]), "exchanging checks")
            });
        }
        Ok((0..self.size).map(|r| all[r * longest..r * longest + lens[r] as usize].to_vec()).collect())
    }
}
