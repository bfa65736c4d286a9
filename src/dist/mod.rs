//! Data-parallel evaluation: every rank (process) holds the whole θ and one shard of the
//! examples; J(θ) and ∇J(θ) of a batch are sums over the shards, reduced in a fixed order so
//! that a run's bits never depend on timing (DESIGN.md, "Wave 2: beyond one machine").
//!
//! - [`Collective`] is what ranks do together: a sum added in rank order ((x₀ + x₁) + x₂) …
//!   (never MPI_Allreduce, whose order is not specified), and an all-gather of bytes. Two
//!   implementations: [`ThreadGroup`] (ranks as threads of one process: tests, and proofs
//!   without MPI) and, with the cargo feature `mpi`, `mpi::MpiWorld` (Open MPI, with a
//!   timeout on every collective so a dead rank never hangs the others).
//! - [`DistBackend`] is a [`Backend`] over the rank's shard: given all the examples it keeps
//!   rows [`shard_rows`] of them, checks that every rank has the same data and network, and
//!   answers each full-batch or minibatch evaluation with the sum over all ranks. Optimizers
//!   see one ordinary backend, identical on every rank, so L-BFGS and CG take the same step
//!   everywhere.
//!
//! The maths of the split (MATH.md's J(θ) = (1/m) Σᵢ Jᵢ + (λ/2)‖W‖² + β Σⱼ KL(ρ‖ρ̂ⱼ)): rank r
//! evaluates its m_r rows of a batch of m with weight decay 0, giving the mean data term Jᵣ
//! and gradient gᵣ; then J = Σᵣ (m_r/m) Jᵣ + (λ/2)‖W‖² and ∇J = Σᵣ (m_r/m) gᵣ + λW, the decay
//! added once, in f64, after the sum. For KL sparsity, ρ̂ⱼ = (1/m) Σᵣ Σ_{i∈r} σ(z⁽²⁾ᵢⱼ) (and
//! 1 − ρ̂ⱼ from σ(−z), MATH.md "Numerically safe forms") is summed over ranks first and every
//! rank's pass then uses the global means ([`ShardBackend::evaluate_sharing_sparsity`]: the
//! CPU backend through [`crate::CpuBackend::sparsity_sums`] and
//! [`crate::CpuBackend::set_sparsity_means`], the GPU backend by cutting its plan between the
//! passes, `GpuBackend::evaluate_sharing_sparsity`): each hidden δᵢ carries the same sparsity
//! term as in one process, so the weighted sum is exact.
//!
//! Minibatch training on GPU ranks keeps θ on each rank's device ([`DistBackend`]'s
//! [`DeviceTraining`]): the gradient is cut out of the device step, summed here as above, and
//! written back for the update; θ crosses the bus only at load, epoch ends and checkpoints.
//!
//! Faults: an error on one rank (a shard it cannot use, a θ its backend refuses) travels with
//! the sums, so every rank returns the same error at the same collective, naming the rank.

#[cfg(feature = "mpi")]
pub mod mpi;

use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use ndarray::{Array2, s};

use crate::backend::{Backend, Batch, Cost, DeviceTraining, Inputs, Targets};
use crate::cpu::{CpuBackend, Real};
use crate::model::{NetSpec, ThetaLayout};
use crate::{Error, Result};

/// What the ranks of a data-parallel job do together. Every rank calls the same methods in the
/// same order with arguments of the same length; a rank that cannot go on ends the job
/// (MPI: with a timeout, then MPI_Abort) rather than leave the others waiting.
pub trait Collective {
    /// This rank, 0 ≤ rank < size.
    fn rank(&self) -> usize;
    /// The number of ranks N.
    fn size(&self) -> usize;
    /// out ← Σᵣ localᵣ over r = 0, 1, …, N − 1, added elementwise in that order
    /// ((x₀ + x₁) + x₂) …: the same bits on every rank, on every run. `out` has `local`'s length.
    fn sum_in_rank_order(&self, local: &[f64], out: &mut [f64]) -> Result<()>;
    /// Every rank's `local`, in rank order (lengths may differ).
    fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>>;
    /// Bytes this rank sends plus receives for one [`Collective::sum_in_rank_order`] of
    /// `values` f64s. The gather-then-broadcast of `mpi::MpiWorld` and [`ThreadGroup`]: the
    /// root receives and sends (N − 1)·8·values, every other rank sends and receives 8·values.
    fn sum_traffic(&self, values: usize) -> usize {
        let (n, bytes) = (self.size(), 8 * values);
        match (n, self.rank()) {
            (1, _) => 0,
            (_, 0) => 2 * (n - 1) * bytes,
            _ => 2 * bytes,
        }
    }
}

/// The variables MPI launchers set in every process they start, for (rank, size): Open MPI's
/// `mpirun`, PMI (MPICH's Hydra, `srun --mpi=pmi2`), PMIx (`srun --mpi=pmix`).
const LAUNCHER_VARIABLES: [(&str, &str); 3] =
    [("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"), ("PMIX_RANK", "PMIX_SIZE")];

/// This process's rank and the job's size as an MPI launcher announced them in the
/// environment (read before MPI is initialised, in any build); `None` when no launcher
/// started this process. The size is `None` where the launcher does not say it.
pub fn launcher_rank_size() -> Option<(usize, Option<usize>)> {
    let number = |v: &str| std::env::var(v).ok()?.trim().parse::<usize>().ok();
    LAUNCHER_VARIABLES.iter().find_map(|(rank, size)| Some((number(rank)?, number(size))))
}

/// This process's rank among the ranks of an MPI job on its machine, as the launcher says
/// (Open MPI's `mpirun`, MPICH's Hydra, Slurm's `srun`): it picks the GPU adapter
/// ([`crate::gpu::choose_adapter`]). `None` outside such a job.
pub fn launcher_local_rank() -> Option<usize> {
    ["OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.trim().parse().ok())
}

/// Whether an MPI launcher (`mpirun`, `mpiexec`, `srun`) started this process
/// ([`launcher_rank_size`]).
pub fn launched() -> bool {
    launcher_rank_size().is_some()
}

/// The rows of `m` examples that rank `rank` of `size` holds: consecutive blocks in rank
/// order, the first m mod N ranks one row more (m = 10, N = 3: 0..4, 4..7, 7..10).
pub fn shard_rows(m: usize, size: usize, rank: usize) -> Range<usize> {
    assert!(size > 0 && rank < size, "rank {rank} of {size}");
    let (base, extra) = (m / size, m % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// The network each rank's own backend evaluates: `spec` with weight decay 0 (the decay is
/// added once, after the sum over ranks: [`DistBackend`]).
pub fn local_spec(spec: &NetSpec) -> NetSpec {
    let mut local = spec.clone();
    local.weight_decay = 0.0;
    local
}

/// Ranks as threads of one process, sharing memory: the same sums as MPI, for tests and for
/// proving the reduction without an MPI installation. [`ThreadGroup::new`] gives one handle
/// per rank; move each into its own thread.
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    size: usize,
    barrier: Barrier,
    sums: Mutex<Vec<Vec<f64>>>,
    bytes: Mutex<Vec<Vec<u8>>>,
}

impl ThreadGroup {
    /// One handle for each of `size` ranks, rank 0 first.
    pub fn new(size: usize) -> Vec<ThreadGroup> {
        assert!(size > 0, "a group has at least one rank");
        let shared = Arc::new(Shared {
            size,
            barrier: Barrier::new(size),
            sums: Mutex::new(vec![Vec::new(); size]),
            bytes: Mutex::new(vec![Vec::new(); size]),
        });
        (0..size).map(|rank| ThreadGroup { rank, shared: shared.clone() }).collect()
    }
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.shared.size
    }

    fn sum_in_rank_order(&self, local: &[f64], out: &mut [f64]) -> Result<()> {
        self.shared.sums.lock().expect("no rank panicked")[self.rank] = local.to_vec();
        self.shared.barrier.wait();
        {
            let all = self.shared.sums.lock().expect("no rank panicked");
            if let Some(r) = all.iter().position(|v| v.len() != local.len()) {
                return Err(Error::Shape(format!(
                    "rank {r} summed {} values, rank {} {}",
                    all[r].len(),
                    self.rank,
                    local.len()
                )));
            }
            out.copy_from_slice(&all[0]);
            for v in &all[1..] {
                out.iter_mut().zip(v).for_each(|(o, x)| *o += x);
            }
        }
        self.shared.barrier.wait();
        Ok(())
    }

    fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.shared.bytes.lock().expect("no rank panicked")[self.rank] = local.to_vec();
        self.shared.barrier.wait();
        let all = self.shared.bytes.lock().expect("no rank panicked").clone();
        self.shared.barrier.wait();
        Ok(all)
    }
}

/// One rank alone (N = 1): every collective is the identity.
#[derive(Clone, Copy, Debug, Default)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn sum_in_rank_order(&self, local: &[f64], out: &mut [f64]) -> Result<()> {
        out.copy_from_slice(local);
        Ok(())
    }
    fn all_gather_bytes(&self, local: &[u8]) -> Result<Vec<Vec<u8>>> {
        Ok(vec![local.to_vec()])
    }
}

/// A rank's own backend, as [`DistBackend`] drives it: any [`Backend`], plus the two steps of
/// KL sparsity across shards, which the CPU backend offers.
pub trait ShardBackend {
    /// The backend itself, for the evaluations every backend answers.
    fn backend(&mut self) -> &mut dyn Backend;
    /// The backend as [`std::any::Any`], for callers that know its type (tests reading a GPU
    /// backend's transfer counters through [`DistBackend::shard_backend`]); `None` (the
    /// default) when it does not say.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
    /// Whether [`ShardBackend::sparsity_sums`] and [`ShardBackend::set_sparsity_means`] work.
    fn shares_sparsity(&self) -> bool {
        false
    }
    /// Σᵢ σ(z⁽²⁾ᵢⱼ) and Σᵢ σ(−z⁽²⁾ᵢⱼ) over `batch` ([`CpuBackend::sparsity_sums`]).
    fn sparsity_sums(&mut self, _theta: &[f64], _batch: Batch<'_>) -> Result<(Vec<f64>, Vec<f64>)> {
        Err(no_shared_sparsity(self.backend().name()))
    }
    /// ρ̂ and 1 − ρ̂ for the next evaluations ([`CpuBackend::set_sparsity_means`]).
    fn set_sparsity_means(&mut self, _means: Option<(Vec<f64>, Vec<f64>)>) -> Result<()> {
        Err(no_shared_sparsity(self.backend().name()))
    }
    /// J (and ∇J into `grad`, when given) on `batch` of this rank's examples, with ρ̂ from
    /// every rank: the backend computes its column sums [Σᵢ σ(z⁽²⁾ᵢⱼ) …, Σᵢ σ(−z⁽²⁾ᵢⱼ) …]
    /// (2 × hidden), `share` returns [ρ̂ⱼ …, 1 − ρ̂ⱼ …] of the whole batch, and the backend
    /// finishes the evaluation with them. The data term and ∇J are this batch's means; the
    /// sparsity term is the whole batch's. The default: [`ShardBackend::sparsity_sums`],
    /// [`ShardBackend::set_sparsity_means`], then [`Backend::cost_and_grad`] or
    /// [`Backend::cost`] (the CPU backend: two passes over the rows); the GPU backend runs
    /// its plan in two submissions (`GpuBackend::evaluate_sharing_sparsity`). Errors: the
    /// backend's, or `share`'s (then returned as it is, the evaluation not finished).
    fn evaluate_sharing_sparsity(
        &mut self,
        theta: &[f64],
        batch: Batch<'_>,
        grad: Option<&mut [f64]>,
        share: &mut dyn FnMut(Vec<f64>) -> Result<Vec<f64>>,
    ) -> Result<Cost> {
        let (mut sums, complement) = self.sparsity_sums(theta, batch.clone())?;
        let hidden = sums.len();
        sums.extend(complement);
        let mut means = share(sums)?;
        if means.len() != 2 * hidden {
            return Err(Error::Shape(format!(
                "ρ̂ and 1 − ρ̂ have {} values, the hidden layer {}",
                means.len(),
                2 * hidden
            )));
        }
        let complement = means.split_off(hidden);
        self.set_sparsity_means(Some((means, complement)))?;
        let backend = self.backend();
        let cost = match grad {
            Some(g) => backend.cost_and_grad(theta, batch, g),
            None => backend.cost(theta, batch),
        };
        let _ = self.set_sparsity_means(None);
        cost
    }
}

fn no_shared_sparsity(name: String) -> Error {
    Error::Data(format!(
        "the {name} backend cannot take ρ̂ from all ranks yet: train a sparse autoencoder over MPI with --backend cpu"
    ))
}

impl<F: Real> ShardBackend for CpuBackend<F> {
    fn backend(&mut self) -> &mut dyn Backend {
        self
    }
    fn shares_sparsity(&self) -> bool {
        true
    }
    fn sparsity_sums(&mut self, theta: &[f64], batch: Batch<'_>) -> Result<(Vec<f64>, Vec<f64>)> {
        CpuBackend::sparsity_sums(self, theta, batch)
    }
    fn set_sparsity_means(&mut self, means: Option<(Vec<f64>, Vec<f64>)>) -> Result<()> {
        CpuBackend::set_sparsity_means(self, means)
    }
}

impl ShardBackend for Box<dyn Backend> {
    fn backend(&mut self) -> &mut dyn Backend {
        self.as_mut()
    }
}

/// Where the time of the evaluations went on this rank, and what it moved.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommStats {
    /// Evaluations (cost, or cost and gradient) answered.
    pub evaluations: usize,
    /// Seconds in this rank's own backend.
    pub compute_seconds: f64,
    /// Seconds in collectives: the sums and the waiting for the slowest rank.
    pub comm_seconds: f64,
    /// Bytes this rank sent and received in the sums ([`Collective::sum_traffic`]).
    pub bytes: usize,
    /// Bytes between host and device memory for the sums on the device path
    /// ([`DistBackend`]'s [`DeviceTraining`]; MPI here is not GPU-aware, so ∇J goes through
    /// host memory): per step 4·|θ| + 16 read back (∇J and J's terms, by a rank holding rows
    /// of the batch), then 4·|θ| + 16 written (the summed ∇J, the cost terms) and 16 read
    /// (Σ W², ‖∇J‖²). θ itself crosses only at load and read.
    pub device_bytes: usize,
}

/// A batch of the global examples as this rank's backend sees it.
enum LocalBatch {
    None,
    All,
    Rows(Range<usize>),
    Indices(Vec<usize>),
}

impl LocalBatch {
    fn batch(&self) -> Option<Batch<'_>> {
        match self {
            LocalBatch::None => None,
            LocalBatch::All => Some(Batch::All),
            LocalBatch::Rows(r) => Some(Batch::Rows(r.clone())),
            LocalBatch::Indices(ix) => Some(Batch::Indices(ix)),
        }
    }
}

/// A [`Backend`] whose examples are spread over the ranks of a [`Collective`]: each rank
/// keeps its shard ([`shard_rows`]) in its own backend, and every cost and gradient is the
/// sum over all ranks (module docs). [`Backend::num_examples`] and batches count the global
/// examples, so an optimizer's minibatch (a seeded shuffle of all m rows) is the same for
/// any N: each rank evaluates the rows of it that it holds. Forward passes and predictions
/// are local (the rank's own backend on the rows given).
///
/// Every rank must make the same calls in the same order (optimizers do: they see identical
/// numbers everywhere). A [`Backend::cost`] or [`Backend::cost_and_grad`] call is collective;
/// so is [`Backend::set_data`].
pub struct DistBackend {
    spec: NetSpec,
    layout: ThetaLayout,
    inner: Box<dyn ShardBackend>,
    inner_name: String,
    comm: Rc<dyn Collective>,
    rows: Range<usize>,
    total: usize,
    interrupt: Option<(Arc<AtomicBool>, Arc<AtomicBool>)>,
    failed_together: Rc<Cell<bool>>,
    stats: CommStats,
    /// A shard this rank read itself, announced by [`DistBackend::expect_shard`]: the next
    /// [`Backend::set_data`] is given only those rows.
    pending_shard: Option<ShardPlace>,
    /// Whether the examples of the last [`Backend::set_data`] were this rank's shard alone
    /// (then [`Backend::sum_over_shards`] sums over the ranks).
    holds_shard_only: bool,
}

/// Where a shard a rank read itself lies in the whole set ([`DistBackend::expect_shard`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ShardPlace {
    /// The rows of the whole set this rank read ([`shard_rows`]).
    pub rows: Range<usize>,
    /// Examples in the whole set.
    pub total: usize,
    /// The row after the shard (the next rank's first) and its label; `None` for the last rank.
    pub next: Option<(Vec<f32>, Option<usize>)>,
}

impl DistBackend {
    /// A backend over `comm`'s ranks for `spec`, computing with `inner`, which must have been
    /// built for [`local_spec`]`(spec)` (weight decay 0). Errors: `inner`'s network is another,
    /// or `spec` has KL sparsity and `inner` cannot share ρ̂ ([`ShardBackend::shares_sparsity`]).
    pub fn new(spec: NetSpec, mut inner: Box<dyn ShardBackend>, comm: Rc<dyn Collective>) -> Result<DistBackend> {
        spec.validate()?;
        if *inner.backend().spec() != local_spec(&spec) {
            return Err(Error::Data(format!(
                "a rank's backend computes {} but the job is {} (built without weight decay: dist::local_spec)",
                inner.backend().spec().describe(),
                spec.describe()
            )));
        }
        if spec.sparsity.is_some() && !inner.shares_sparsity() {
            return Err(no_shared_sparsity(inner.backend().name()));
        }
        Ok(DistBackend {
            inner_name: inner.backend().name(),
            layout: ThetaLayout::new(&spec),
            spec,
            inner,
            comm,
            rows: 0..0,
            total: 0,
            interrupt: None,
            failed_together: Rc::new(Cell::new(false)),
            stats: CommStats::default(),
            pending_shard: None,
            holds_shard_only: false,
        })
    }

    /// A stop flag that every rank sets at the same evaluation: `raw` (set by this rank's
    /// Ctrl-C handler, say) travels with each sum, and the returned flag is set on every rank
    /// once any rank's `raw` was. Give the returned flag to [`crate::train::train`], so all
    /// ranks stop after the same iteration.
    pub fn agree_on_interrupt(&mut self, raw: Arc<AtomicBool>) -> Arc<AtomicBool> {
        let agreed = Arc::new(AtomicBool::new(false));
        self.agree_on_interrupt_into(raw, agreed.clone());
        agreed
    }

    /// As [`DistBackend::agree_on_interrupt`], setting `agreed` (one flag shared by the
    /// backends of several stages, e.g. `train stacked`).
    pub fn agree_on_interrupt_into(&mut self, raw: Arc<AtomicBool>, agreed: Arc<AtomicBool>) {
        self.interrupt = Some((raw, agreed));
    }

    /// Announces that this rank read only its shard (`place`) of the examples: the next
    /// [`Backend::set_data`] gives only those rows (and their targets), and is checked with
    /// every rank as [`DistBackend::set_shard`] checks. Then per-example tallies the caller
    /// makes over its rows are summed over the ranks by [`Backend::sum_over_shards`].
    pub fn expect_shard(&mut self, place: ShardPlace) {
        self.pending_shard = Some(place);
    }

    /// True once a collective ended in an error that every rank returned together (one rank's
    /// failure, shared): no rank is left waiting, so the job can end normally.
    pub fn failed_together(&self) -> Rc<Cell<bool>> {
        self.failed_together.clone()
    }

    /// This rank's rows of the examples given to [`Backend::set_data`].
    pub fn shard(&self) -> Range<usize> {
        self.rows.clone()
    }

    /// Where this rank's time went and what it moved, so far.
    pub fn stats(&self) -> CommStats {
        self.stats
    }

    /// This rank's own backend.
    pub fn shard_backend(&self) -> &dyn ShardBackend {
        &*self.inner
    }

    /// This rank's device trainer, when its backend splits a step at the gradient and the
    /// network has no KL sparsity ([`Backend::device_training`] of [`DistBackend`]).
    fn split_device(&mut self) -> Option<&mut dyn DeviceTraining> {
        if self.spec.sparsity.is_some() {
            return None;
        }
        self.inner.backend().device_training().filter(|d| d.splits_at_gradient())
    }

    /// `local` (this rank's outcome of a step every rank takes) on every rank once all agree
    /// it went well; otherwise the same error on every rank, naming the first rank that
    /// failed. Collective: one value summed.
    fn agree<T>(&mut self, local: Result<T>) -> Result<T> {
        let failed = local.as_ref().err().map(|e| e.to_string());
        let sum = self.reduce(&[f64::from(u8::from(failed.is_some()))])?;
        if sum[0] > 0.0 {
            return Err(self.fail_together(failed));
        }
        local
    }

    /// Sums `local` over the ranks (timed, counted).
    fn reduce(&mut self, local: &[f64]) -> Result<Vec<f64>> {
        let t = Instant::now();
        let mut out = vec![0.0; local.len()];
        self.comm.sum_in_rank_order(local, &mut out)?;
        self.stats.comm_seconds += t.elapsed().as_secs_f64();
        self.stats.bytes += self.comm.sum_traffic(local.len());
        Ok(out)
    }

    /// After a sum that reported a failure on some rank: every rank's message, and the same
    /// error on every rank, naming the first rank that failed.
    fn fail_together(&mut self, mine: Option<String>) -> Error {
        self.failed_together.set(true);
        let _ = self.inner.set_sparsity_means(None);
        let all = match self.comm.all_gather_bytes(mine.unwrap_or_default().as_bytes()) {
            Ok(all) => all,
            Err(e) => return e,
        };
        match all.iter().enumerate().find(|(_, m)| !m.is_empty()) {
            Some((_, m)) if self.comm.size() == 1 => Error::Data(String::from_utf8_lossy(m).into_owned()),
            Some((r, m)) => Error::Data(format!("rank {r}: {}", String::from_utf8_lossy(m))),
            None => Error::Data("a rank failed without saying why".into()),
        }
    }

    /// The rows of `batch` (global indices) that this rank holds, as indices into its shard;
    /// with this rank's count and the batch's.
    fn localise(&self, batch: &Batch<'_>) -> Result<(LocalBatch, usize, usize)> {
        let total = batch.len_checked(self.total)?;
        let (start, end) = (self.rows.start, self.rows.end);
        let local = match batch {
            Batch::All => LocalBatch::All,
            Batch::Rows(r) => {
                let (lo, hi) = (r.start.max(start), r.end.min(end));
                if lo < hi { LocalBatch::Rows(lo - start..hi - start) } else { LocalBatch::None }
            }
            Batch::Indices(ix) => {
                LocalBatch::Indices(ix.iter().filter(|&&i| (start..end).contains(&i)).map(|&i| i - start).collect())
            }
        };
        let count = match &local {
            LocalBatch::None => 0,
            LocalBatch::All => end - start,
            LocalBatch::Rows(r) => r.len(),
            LocalBatch::Indices(ix) => ix.len(),
        };
        let local = if count == 0 { LocalBatch::None } else { local };
        Ok((local, count, total))
    }

    /// J (and ∇J into `grad`) on `batch`, summed over the ranks (module docs), at `theta`; or,
    /// with `theta` `None`, at the θ on this rank's device ([`DeviceTraining::gradient_step`],
    /// `grad` required), then without weight decay: the caller adds it where θ is.
    fn evaluate(&mut self, theta: Option<&[f64]>, batch: Batch<'_>, grad: Option<&mut [f64]>) -> Result<Cost> {
        if let Some(theta) = theta {
            crate::backend::check_theta_len(&self.spec, theta.len())?;
        } else if grad.is_none() || self.spec.sparsity.is_some() {
            return Err(Error::Data("a step at the device's θ needs the gradient and no KL sparsity".into()));
        }
        let n = self.layout.len();
        if let Some(g) = &grad
            && g.len() != n
        {
            return Err(Error::Shape(format!("gradient buffer has {} values, θ has {n}", g.len())));
        }
        if self.total == 0 {
            return Err(Error::Data("no examples are loaded: call set_data first".into()));
        }
        let (local, count, total) = self.localise(&batch)?;
        let weight = count as f64 / total as f64;
        self.stats.evaluations += 1;
        let mut failure: Option<String> = None;
        // [weight · ∇J_r …, weight · data_r, weight · sparsity_r, failed, interrupted]
        let g_len = if grad.is_some() { n } else { 0 };
        let mut v = vec![0.0; g_len + 4];
        let t = Instant::now();
        let comm_before = self.stats.comm_seconds;
        let cost = if self.spec.sparsity.is_some() {
            // ρ̂ is summed over the ranks between the passes: the backend hands its column sums
            // to `share` (collective) and finishes with the whole batch's means.
            let hidden = self.layout.shapes[0].0;
            let (comm, stats) = (self.comm.clone(), &mut self.stats);
            // Some(whether every rank had its sums) once they were exchanged.
            let mut exchanged: Option<bool> = None;
            let mut share = |sums: Vec<f64>| -> Result<Vec<f64>> {
                let means = share_column_sums(&*comm, stats, Some(sums), hidden, total)?;
                exchanged = Some(means.is_some());
                means.ok_or_else(|| Error::Data("another rank failed".into()))
            };
            let cost = match local.batch() {
                Some(b) => {
                    let g = if grad.is_some() { Some(&mut v[..n]) } else { None };
                    let theta = theta.expect("checked above: sparsity evaluates at a given θ");
                    self.inner.evaluate_sharing_sparsity(theta, b, g, &mut share)
                }
                // No rows of this batch here: nothing to add to the sums, nothing to evaluate.
                None => share(vec![0.0; 2 * hidden]).map(|_| Cost::default()),
            };
            match (exchanged, cost) {
                (Some(true), cost) => Some(cost),
                (Some(false), _) => return Err(self.fail_together(None)),
                // Failed before its sums: the others wait for them at the exchange.
                (None, cost) => {
                    let mine = cost.err().map_or("failed before its column sums".to_string(), |e| e.to_string());
                    share_column_sums(&*self.comm, &mut self.stats, None, hidden, total)?;
                    return Err(self.fail_together(Some(mine)));
                }
            }
        } else {
            local.batch().map(|b| {
                let backend = self.inner.backend();
                match (theta, grad.is_some()) {
                    (Some(theta), true) => backend.cost_and_grad(theta, b, &mut v[..n]),
                    (Some(theta), false) => backend.cost(theta, b),
                    (None, _) => {
                        self.stats.device_bytes += 4 * n + 16;
                        match backend.device_training() {
                            Some(device) => device.gradient_step(b, &mut v[..n]),
                            None => Err(Error::Data("this rank's backend does not keep θ on a device".into())),
                        }
                    }
                }
            })
        };
        match cost {
            Some(Ok(c)) => {
                v[..g_len].iter_mut().for_each(|g| *g *= weight);
                v[g_len] = weight * c.data;
                v[g_len + 1] = weight * c.sparsity;
            }
            Some(Err(e)) => failure = Some(e.to_string()),
            None => {}
        }
        self.stats.compute_seconds += t.elapsed().as_secs_f64() - (self.stats.comm_seconds - comm_before);
        v[g_len + 2] = f64::from(u8::from(failure.is_some()));
        if let Some((raw, _)) = &self.interrupt {
            v[g_len + 3] = f64::from(u8::from(raw.load(Ordering::SeqCst)));
        }
        let sum = self.reduce(&v)?;
        if sum[g_len + 2] > 0.0 {
            return Err(self.fail_together(failure));
        }
        if sum[g_len + 3] > 0.0
            && let Some((_, agreed)) = &self.interrupt
        {
            agreed.store(true, Ordering::SeqCst);
        }
        let Some(theta) = theta else {
            // On the device: the caller adds the decay there (DeviceTraining::apply_update).
            if let Some(grad) = grad {
                grad.copy_from_slice(&sum[..n]);
            }
            return Ok(Cost { data: sum[g_len], weight_decay: 0.0, sparsity: sum[g_len + 1] });
        };
        // Weight decay once, in f64, after the sum: (λ/2)‖W‖² and λW.
        let (lambda, weights) = (self.spec.weight_decay, self.layout.all_weights());
        let weight_decay =
            if lambda == 0.0 { 0.0 } else { 0.5 * lambda * theta[weights.clone()].iter().map(|w| w * w).sum::<f64>() };
        if let Some(grad) = grad {
            grad.copy_from_slice(&sum[..n]);
            if lambda != 0.0 {
                grad[weights.clone()].iter_mut().zip(&theta[weights]).for_each(|(g, w)| *g += lambda * w);
            }
        }
        Ok(Cost { data: sum[g_len], weight_decay, sparsity: sum[g_len + 1] })
    }
}

impl DistBackend {
    /// Loads this rank's shard, read by this rank alone (e.g. [`crate::data::Mnist::load_shard`],
    /// [`crate::data::shard::npy_shard`]): `x` holds rows `rows` of `total` examples, which must
    /// be this rank's [`shard_rows`], and `next` the row after them with its label (`None` for
    /// the last rank). Collective: every rank checks that all have the same `total`, values per
    /// example and network, and that the row after each rank's shard is the first row of the
    /// next rank's (with the same label) — the ranks read the same data. Errors, on every rank
    /// alike: a shard that is not this rank's, a rank whose data or network differs (naming
    /// it), or a rank's backend that refused its shard.
    pub fn set_shard(
        &mut self,
        x: Inputs<'_>,
        targets: Targets<'_>,
        rows: Range<usize>,
        total: usize,
        next: Option<(&[f32], Option<usize>)>,
    ) -> Result<()> {
        let (size, rank) = (self.comm.size(), self.comm.rank());
        let mut failure = None;
        let expected = (total >= size).then(|| shard_rows(total, size, rank));
        if expected.as_ref() != Some(&rows) || x.nrows() != rows.len() {
            failure = Some(format!(
                "holds rows {rows:?} ({} read) of {total} examples, but its shard is {}",
                x.nrows(),
                expected.map_or("none (fewer examples than ranks)".into(), |e| format!("{e:?}"))
            ));
        } else if let Err(e) = self.inner.backend().set_data(x, targets) {
            failure = Some(e.to_string());
        }
        let label = |i: usize| match &targets {
            Targets::Labels(l) => l.get(i).map_or(u64::MAX, |&v| v as u64),
            _ => u64::MAX,
        };
        let first = if x.nrows() > 0 { fingerprint((row_bits(&x, 0), label(0))) } else { 0 };
        let next_fp = next.map(|(row, l)| {
            fingerprint((
                row.iter().map(|v| u64::from(v.to_bits())).collect::<Vec<_>>(),
                l.map_or(u64::MAX, |v| v as u64),
            ))
        });
        let spec_fp = fingerprint(serde_json::to_string(&self.spec).unwrap_or_default());
        let payload = format!(
            "{total}\u{1}{}\u{1}{spec_fp:x}\u{1}{first:x}\u{1}{}\u{0}{}",
            x.ncols(),
            next_fp.map_or("-".into(), |f| format!("{f:x}")),
            failure.unwrap_or_default()
        );
        let all = self.comm.all_gather_bytes(payload.as_bytes())?;
        let all: Vec<(Vec<String>, String)> = all
            .iter()
            .map(|b| {
                let text = String::from_utf8_lossy(b).into_owned();
                let (fp, err) = text.split_once('\u{0}').unwrap_or(("", "sent an unreadable check"));
                (fp.split('\u{1}').map(str::to_owned).collect(), err.to_owned())
            })
            .collect();
        let refuse = |this: &mut DistBackend, what: String| {
            this.failed_together.set(true);
            Err(Error::Data(what))
        };
        if let Some((r, (_, err))) = all.iter().enumerate().find(|(_, (_, e))| !e.is_empty()) {
            return refuse(self, if size == 1 { err.clone() } else { format!("rank {r}: {err}") });
        }
        let field = |r: usize, k: usize| all[r].0.get(k).cloned().unwrap_or_default();
        for r in 1..size {
            if field(r, 0) != field(0, 0) || field(r, 1) != field(0, 1) {
                return refuse(
                    self,
                    format!(
                        "rank {r} has {} examples of {} values but rank 0 has {} of {}: every rank must read the same data",
                        field(r, 0),
                        field(r, 1),
                        field(0, 0),
                        field(0, 1)
                    ),
                );
            }
            if field(r, 2) != field(0, 2) {
                return refuse(
                    self,
                    format!("rank {r} builds another network than rank 0: start every rank with the same flags"),
                );
            }
            if field(r - 1, 4) != field(r, 3) {
                return refuse(
                    self,
                    format!(
                        "rank {r}'s first example (row {}) differs from the one rank {} reads there: every rank must read the same data",
                        shard_rows(total, size, r).start,
                        r - 1
                    ),
                );
            }
        }
        self.rows = rows;
        self.total = total;
        self.holds_shard_only = true;
        Ok(())
    }
}

/// The exchange of a sparse autoencoder's column sums between the passes (module docs): this
/// rank's [Σᵢ σ(z⁽²⁾ᵢⱼ) …, Σᵢ σ(−z⁽²⁾ᵢⱼ) …] (`None`: it failed before having them) and a
/// failure flag are summed in rank order over the ranks (collective, timed and counted in
/// `stats`); returns [ρ̂ⱼ …, 1 − ρ̂ⱼ …] = the sums / `total` (the batch's examples over every
/// rank), or `None` on every rank when any rank failed.
fn share_column_sums(
    comm: &dyn Collective,
    stats: &mut CommStats,
    sums: Option<Vec<f64>>,
    hidden: usize,
    total: usize,
) -> Result<Option<Vec<f64>>> {
    let mut local = vec![0.0; 2 * hidden + 1];
    match sums {
        Some(s) if s.len() == 2 * hidden => local[..2 * hidden].copy_from_slice(&s),
        _ => local[2 * hidden] = 1.0,
    }
    let t = Instant::now();
    let mut summed = vec![0.0; local.len()];
    comm.sum_in_rank_order(&local, &mut summed)?;
    stats.comm_seconds += t.elapsed().as_secs_f64();
    stats.bytes += comm.sum_traffic(local.len());
    if summed[2 * hidden] > 0.0 {
        return Ok(None);
    }
    summed.truncate(2 * hidden);
    summed.iter_mut().for_each(|s| *s /= total as f64);
    Ok(Some(summed))
}

/// A 64-bit fingerprint of `values`' bits (std's SipHash with fixed keys: the same on every
/// rank of one build).
fn fingerprint<T: Hash>(value: T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

fn row_bits(x: &Inputs<'_>, i: usize) -> Vec<u64> {
    match x {
        Inputs::F32(x) => x.row(i).iter().map(|v| u64::from(v.to_bits())).collect(),
        Inputs::Shared(x) => x.row(i).iter().map(|v| u64::from(v.to_bits())).collect(),
        Inputs::F64(x) => x.row(i).iter().map(|v| v.to_bits()).collect(),
    }
}

fn slice_inputs<'a>(x: &Inputs<'a>, rows: Range<usize>) -> Inputs<'a> {
    match *x {
        Inputs::F32(x) => Inputs::F32(x.slice_move(s![rows, ..])),
        Inputs::F64(x) => Inputs::F64(x.slice_move(s![rows, ..])),
        Inputs::Shared(x) => Inputs::F32(x.slice(s![rows, ..])),
    }
}

impl Backend for DistBackend {
    /// The rank's own backend and the number of ranks, e.g. `cpu f32 × 2 ranks`.
    fn name(&self) -> String {
        format!("{} × {} ranks", self.inner_name, self.comm.size())
    }

    fn spec(&self) -> &NetSpec {
        &self.spec
    }

    /// After [`DistBackend::expect_shard`]: `x` is this rank's shard alone, checked as
    /// [`DistBackend::set_shard`] checks. Otherwise: keeps this rank's rows ([`shard_rows`])
    /// of `x` (all the examples, the same on every rank) and checks, with every rank, that all have the same number of examples and
    /// values per example, the same network, and the same values in the first and last row
    /// of every shard (and their targets). Collective. Errors: a rank's data or network
    /// differs (naming the rank and what), fewer examples than ranks, or a rank's backend
    /// refused its shard — on every rank alike.
    fn set_data(&mut self, x: Inputs<'_>, targets: Targets<'_>) -> Result<()> {
        if let Some(place) = self.pending_shard.take() {
            let next = place.next.as_ref().map(|(row, label)| (row.as_slice(), *label));
            return self.set_shard(x, targets, place.rows.clone(), place.total, next);
        }
        self.holds_shard_only = false;
        let (m, size, rank) = (x.nrows(), self.comm.size(), self.comm.rank());
        let rows = shard_rows(m, size, rank);
        let mut failure = None;
        if m < size {
            failure = Some(format!("{m} examples cannot be shared by {size} ranks: start at most {m} ranks"));
        } else {
            let y = match &targets {
                Targets::Inputs => Targets::Inputs,
                Targets::Labels(l) => Targets::Labels(&l[rows.clone()]),
                Targets::Values(v) => Targets::Values(slice_inputs(v, rows.clone())),
            };
            if let Err(e) = self.inner.backend().set_data(slice_inputs(&x, rows.clone()), y) {
                failure = Some(e.to_string());
            }
        }
        // What every rank must agree on: sizes, the network, the shard boundary rows.
        let boundaries: Vec<usize> = (0..size)
            .flat_map(|r| {
                let b = shard_rows(m, size, r);
                [b.start, b.end.saturating_sub(1)]
            })
            .filter(|&i| i < m)
            .collect();
        let rows_fp = fingerprint(boundaries.iter().map(|&i| row_bits(&x, i)).collect::<Vec<_>>());
        let targets_fp = fingerprint(
            boundaries
                .iter()
                .map(|&i| match &targets {
                    Targets::Inputs => vec![u64::MAX],
                    Targets::Labels(l) => vec![l.get(i).map_or(u64::MAX - 1, |&v| v as u64)],
                    Targets::Values(v) if i < v.nrows() => row_bits(v, i),
                    Targets::Values(_) => vec![u64::MAX - 2],
                })
                .collect::<Vec<_>>(),
        );
        let spec_fp = fingerprint(serde_json::to_string(&self.spec).unwrap_or_default());
        let mine = format!("{m}\u{1}{}\u{1}{spec_fp:x}\u{1}{rows_fp:x}\u{1}{targets_fp:x}", x.ncols());
        let payload = format!("{mine}\u{0}{}", failure.clone().unwrap_or_default());
        let all = self.comm.all_gather_bytes(payload.as_bytes())?;
        let parse = |b: &Vec<u8>| {
            let text = String::from_utf8_lossy(b).into_owned();
            let (fp, err) = text.split_once('\u{0}').map(|(a, b)| (a.to_string(), b.to_string())).unwrap_or_default();
            (fp, err)
        };
        let all: Vec<(String, String)> = all.iter().map(parse).collect();
        if let Some((r, (_, err))) = all.iter().enumerate().find(|(_, (_, e))| !e.is_empty()) {
            self.failed_together.set(true);
            return Err(Error::Data(if size == 1 { err.clone() } else { format!("rank {r}: {err}") }));
        }
        let field = |fp: &str, k: usize| fp.split('\u{1}').nth(k).unwrap_or("").to_string();
        for (r, (fp, _)) in all.iter().enumerate().skip(1) {
            let first = &all[0].0;
            if fp == first {
                continue;
            }
            self.failed_together.set(true);
            let what = if field(fp, 0) != field(first, 0) || field(fp, 1) != field(first, 1) {
                format!(
                    "rank {r} has {} examples of {} values but rank 0 has {} of {}",
                    field(fp, 0),
                    field(fp, 1),
                    field(first, 0),
                    field(first, 1)
                )
            } else if field(fp, 2) != field(first, 2) {
                format!("rank {r} builds another network than rank 0")
            } else if field(fp, 3) != field(first, 3) {
                format!("rank {r}'s examples differ from rank 0's at the shard boundaries")
            } else {
                format!("rank {r}'s labels or targets differ from rank 0's at the shard boundaries")
            };
            return Err(Error::Data(format!(
                "{what}: every rank must read the same data and build the same network (same files, flags and wgnn build)"
            )));
        }
        self.rows = rows;
        self.total = m;
        Ok(())
    }

    fn num_examples(&self) -> usize {
        self.total
    }

    fn cost_and_grad(&mut self, theta: &[f64], batch: Batch<'_>, grad: &mut [f64]) -> Result<Cost> {
        self.evaluate(Some(theta), batch, Some(grad))
    }

    fn cost(&mut self, theta: &[f64], batch: Batch<'_>) -> Result<Cost> {
        let name = self.inner_name.clone();
        self.evaluate(Some(theta), batch, None)?.finite(&name)
    }

    fn forward(&mut self, theta: &[f64], x: Inputs<'_>) -> Result<Vec<Array2<f64>>> {
        self.inner.backend().forward(theta, x)
    }

    fn predict(&mut self, theta: &[f64], x: Inputs<'_>) -> Result<Array2<f64>> {
        self.inner.backend().predict(theta, x)
    }

    fn classify(&mut self, theta: &[f64], x: Inputs<'_>) -> Result<Vec<usize>> {
        self.inner.backend().classify(theta, x)
    }

    fn release_buffers(&mut self) {
        self.inner.backend().release_buffers()
    }

    /// This rank's own backend keeps θ on its device ([`DistBackend`]'s [`DeviceTraining`])
    /// when it can split its step at the gradient ([`DeviceTraining::splits_at_gradient`]: the
    /// GPU backend) and the network has no KL sparsity (ρ̂ is shared between the passes of a
    /// host evaluation only); otherwise `None`, and the optimizer updates θ on the host.
    fn device_training(&mut self) -> Option<&mut dyn DeviceTraining> {
        if self.split_device().is_some() { Some(self) } else { None }
    }

    /// Sums `local` over the ranks when this rank was given its shard alone
    /// ([`DistBackend::expect_shard`]); the identity when every rank was given all the
    /// examples. Collective.
    fn sum_over_shards(&mut self, local: &[f64]) -> Result<Vec<f64>> {
        if self.holds_shard_only { self.reduce(local) } else { Ok(local.to_vec()) }
    }
}

/// The start of a job, agreed by every rank: each says whether its set-up went well (`Ok`
/// with a fingerprint of the job it means to run, e.g. of its flags) or not (`Err` with an
/// exit code and one line). Collective. Returns `Ok` on every rank when all are ready with the
/// same fingerprint; otherwise the same `Err` on every rank: the first failing rank's code and
/// line (prefixed "rank r: " unless r = 0), or exit code 1 and a line naming the first rank
/// whose job differs from rank 0's. Nothing else may be collective before it.
pub fn agree_to_start(
    comm: &dyn Collective,
    mine: std::result::Result<u64, (u8, String)>,
) -> std::result::Result<(), (u8, String)> {
    let payload = match &mine {
        Ok(fp) => format!("ok\u{0}{fp:x}"),
        Err((code, line)) => format!("{code}\u{0}{line}"),
    };
    let all = comm.all_gather_bytes(payload.as_bytes()).map_err(|e| (1, e.to_string()))?;
    let all: Vec<(String, String)> = all
        .iter()
        .map(|b| {
            let text = String::from_utf8_lossy(b);
            let (status, rest) = text.split_once('\u{0}').unwrap_or(("1", "a rank sent an unreadable message"));
            (status.to_string(), rest.to_string())
        })
        .collect();
    if let Some((r, (status, line))) = all.iter().enumerate().find(|(_, (s, _))| s != "ok") {
        let code = status.parse().unwrap_or(1);
        return Err((code, if r == 0 { line.clone() } else { format!("rank {r}: {line}") }));
    }
    if let Some(r) = all.iter().position(|(_, fp)| fp != &all[0].1) {
        return Err((
            1,
            format!(
                "rank {r} was started with other flags than rank 0: start every rank with the same `wgnn train` command"
            ),
        ));
    }
    Ok(())
}

/// A 64-bit fingerprint of `text` (SipHash with fixed keys: the same on every rank of one
/// build), for [`agree_to_start`].
pub fn fingerprint_of(text: &str) -> u64 {
    fingerprint(text)
}

/// Minibatch training with θ and the rule's moments on every rank's device (the GPU backend's
/// split step, [`DeviceTraining::gradient_step`] and [`DeviceTraining::apply_update`]): each
/// rank loads the same θ once; per step it evaluates its rows of the batch on its device (one
/// submission) and reads back its (J, ∇J); the ranks sum them in rank order with the weights
/// of the host path ([`DistBackend`]'s `cost_and_grad`: the same bits), each writes the sum
/// back as its device's ∇J, and the update (λW, ‖∇J‖², the rule) runs there (a second
/// submission). Every rank then holds the same θ: the same summed numbers, the same kernels.
/// The cost, the gradient norm and whether a step was taken are the same on every rank, so
/// divergence and early stopping agree. MPI here is not GPU-aware: ∇J goes through host
/// memory, counted in [`CommStats::device_bytes`]. Every call is collective; a rank's failure
/// is every rank's error at the same step, naming the rank.
impl DeviceTraining for DistBackend {
    fn load(&mut self, theta: &[f64], update: &crate::update::UpdateState) -> Result<()> {
        let loaded = match self.split_device() {
            Some(device) => device.load(theta, update),
            None => Err(Error::Data("this rank's backend does not keep θ on a device".into())),
        };
        self.agree(loaded)
    }

    fn step(&mut self, batch: Batch<'_>, scalars: &crate::update::UpdateScalars) -> Result<crate::backend::DeviceStep> {
        let n = self.layout.len();
        let mut grad = vec![0.0; n];
        let cost = self.evaluate(None, batch, Some(&mut grad))?;
        let lambda = self.spec.weight_decay;
        let t = Instant::now();
        let applied = match self.split_device() {
            Some(device) => device.apply_update(&grad, lambda, cost.data.is_finite(), scalars),
            None => Err(Error::Data("this rank's backend does not keep θ on a device".into())),
        };
        self.stats.compute_seconds += t.elapsed().as_secs_f64();
        self.stats.device_bytes += 4 * n + 32;
        let applied = self.agree(applied)?;
        let weight_decay = if lambda == 0.0 { 0.0 } else { 0.5 * lambda * applied.weight_squares };
        Ok(crate::backend::DeviceStep { cost: cost.data + cost.sparsity + weight_decay, grad_norm: applied.grad_norm })
    }

    fn roll_back(&mut self) -> Result<bool> {
        let rolled = match self.split_device() {
            Some(device) => device.roll_back(),
            None => Err(Error::Data("this rank's backend does not keep θ on a device".into())),
        };
        self.agree(rolled)
    }

    fn read(&mut self, theta: &mut [f64], update: &mut crate::update::UpdateState) -> Result<()> {
        let read = match self.split_device() {
            Some(device) => device.read(theta, update),
            None => Err(Error::Data("this rank's backend does not keep θ on a device".into())),
        };
        self.agree(read)
    }
}
