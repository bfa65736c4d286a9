//! `mpirun -np N wgnn train …` (built with `--features mpi`): this process as one rank of a
//! data-parallel job (DESIGN.md, "Wave 2: beyond one machine"; the maths in
//! [`wgnn::dist`]). Every rank runs the same job through [`super::train::run_job`]; rank 0
//! alone writes the run folder and prints; every rank ends with the same exit code.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::bail;

use wgnn::model::NetSpec;
use wgnn::train::RunFolder;

use super::{BackendArgs, Exit};

/// This process's part in a data-parallel `wgnn train` (`mpirun -np N wgnn train …`, built
/// with `--features mpi`; DESIGN.md, "Wave 2: beyond one machine"). Every rank runs the same
/// job; rank 0 alone writes the run folder and prints, the others keep what train() writes
/// in a private scratch folder, removed when they end.
pub(super) struct Ranks {
    comm: std::rc::Rc<dyn wgnn::dist::Collective>,
    /// Every rank agreed to start training ([`Ranks::start`]).
    started: std::cell::Cell<bool>,
    /// train() returned an error on this rank.
    pub(super) training_failed: std::cell::Cell<bool>,
    /// Set by the DistBackend when an evaluation failed on every rank together.
    failed_together: std::cell::RefCell<Option<std::rc::Rc<std::cell::Cell<bool>>>>,
    interrupt: std::cell::RefCell<Option<Arc<AtomicBool>>>,
    scratch: PathBuf,
}

#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
impl Ranks {
    pub(super) fn new(comm: std::rc::Rc<dyn wgnn::dist::Collective>) -> Ranks {
        let scratch = std::env::temp_dir().join(format!("wgnn-rank{}-{}", comm.rank(), std::process::id()));
        Ranks {
            comm,
            started: Default::default(),
            training_failed: Default::default(),
            failed_together: Default::default(),
            interrupt: Default::default(),
            scratch,
        }
    }

    pub(super) fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// Where a rank other than 0 lets train() write (never the run folder).
    pub(super) fn scratch_folder(&self) -> anyhow::Result<RunFolder> {
        Ok(RunFolder::open(&self.scratch)?)
    }

    /// This rank's backend: its own CPU or GPU backend for the network without weight decay
    /// (`dist::local_spec`), inside a DistBackend that sums over the ranks. A sparse
    /// autoencoder needs the CPU backend (ρ̂ is summed over the ranks between the passes).
    pub(super) fn backend(
        &self,
        choice: &BackendArgs,
        spec: &NetSpec,
        interrupt: &Arc<AtomicBool>,
    ) -> anyhow::Result<(Box<dyn wgnn::Backend>, Option<String>)> {
        use wgnn::dist::{DistBackend, ShardBackend, local_spec};
        let local = local_spec(spec);
        let (inner, note): (Box<dyn ShardBackend>, Option<String>) = if spec.sparsity.is_some() {
            if choice.backend == super::BackendChoice::Gpu {
                bail!(
                    "a sparse autoencoder trains over MPI on the CPU backend only (ρ̂ is summed over the ranks between \
                     the forward and backward passes): give --backend cpu"
                );
            }
            match choice.precision.unwrap_or(super::Precision::F32) {
                super::Precision::F64 => (Box::new(wgnn::CpuBackend::<f64>::new(local)?), None),
                super::Precision::F32 => (Box::new(wgnn::CpuBackend::<f32>::new(local)?), None),
            }
        } else {
            let (b, note) = choice.build_quietly(local, super::Precision::F32)?;
            (Box::new(b), note)
        };
        let mut backend = DistBackend::new(spec.clone(), inner, self.comm.clone())?;
        *self.failed_together.borrow_mut() = Some(backend.failed_together());
        *self.interrupt.borrow_mut() = Some(backend.agree_on_interrupt(interrupt.clone()));
        Ok((Box::new(backend), note))
    }

    /// The flag train() watches: set on every rank at the same evaluation once any rank's
    /// Ctrl-C flag is ([`wgnn::dist::DistBackend::agree_on_interrupt`]).
    pub(super) fn agreed_interrupt(&self) -> Arc<AtomicBool> {
        self.interrupt.borrow().clone().expect("Ranks::backend was built first")
    }

    /// Every rank agrees to start, with the same flags ([`wgnn::dist::agree_to_start`]).
    pub(super) fn start(&self, job: u64) -> anyhow::Result<()> {
        let agreed = wgnn::dist::agree_to_start(&*self.comm, Ok(job));
        self.started.set(true);
        agreed.map_err(|(code, message)| Exit { code, message }.into())
    }

    /// Whether an error that ended this rank's job ended every rank's the same way (so that
    /// no rank waits for another).
    fn failed_together(&self) -> bool {
        self.failed_together.borrow().as_ref().is_some_and(|f| f.get())
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        if self.rank() > 0 {
            let _ = std::fs::remove_dir_all(&self.scratch);
        }
    }
}

/// `wgnn train` as one rank of an MPI job: runs the job, and makes sure that every rank ends
/// with the same exit code and that one line (rank 0's) says why.
#[cfg(feature = "mpi")]
pub(super) fn run_on_ranks(args: super::train::TrainArgs) -> anyhow::Result<()> {
    use wgnn::dist::Collective;
    let world = std::rc::Rc::new(wgnn::dist::mpi::MpiWorld::init()?);
    let rank = world.rank();
    let ranks = Ranks::new(world.clone());
    let result = super::train::run_job(args, Some(&ranks));
    let result = match result {
        Ok(()) => Ok(()),
        // Failed while setting up: the others wait for this rank at the start.
        Err(e) if !ranks.started.get() => {
            match wgnn::dist::agree_to_start(&*world, Err((super::code_of(&e), wgnn::one_line(&format!("{e:#}"))))) {
                Err((code, message)) => Err(Exit { code, message }.into()),
                Ok(()) => unreachable!("a rank that failed does not agree to start"),
            }
        }
        // Alone in failing while the others may still be training: end them all now.
        Err(e) if ranks.training_failed.get() && !ranks.failed_together() => {
            eprintln!("error: rank {rank}: {}; ending every rank", wgnn::one_line(&format!("{e:#}")));
            world.abort(i32::from(super::code_of(&e)));
        }
        Err(e) => Err(e),
    };
    drop(ranks);
    let Err(e) = result else { return Ok(()) };
    // Every rank has the same error. Rank 0 says it, once; then all end together (mpirun
    // ends the whole job as soon as one rank exits with a non-zero code, which would cut
    // rank 0 short if another went first).
    let code = super::code_of(&e);
    if rank == 0 {
        eprintln!("error: {}", wgnn::one_line(&format!("{e:#}")));
    }
    let _ = world.all_gather_bytes(&[]);
    drop(world);
    std::process::exit(i32::from(code));
}
