//! `mpirun -np N wgnn train …` (built with `--features mpi`): this process as one rank of a
//! data-parallel job (DESIGN.md, "Wave 2: beyond one machine"; the maths in
//! [`wgnn::dist`]). Every rank runs the same job through [`super::train::run_job`]; rank 0
//! alone writes the run folder and prints; every rank ends with the same exit code.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;

use wgnn::model::NetSpec;
use wgnn::train::RunFolder;

use super::{BackendArgs, Exit};

/// This process's part in a data-parallel `wgnn train` (`mpirun -np N wgnn train …`, built
/// with `--features mpi`; DESIGN.md, "Wave 2: beyond one machine"). Every rank runs the same
/// job; rank 0 alone writes the run folder and prints, the others keep what train() writes
/// in a private scratch folder, removed when they end.
pub(super) struct Ranks {
    comm: Rc<dyn wgnn::dist::Collective>,
    /// Every rank agreed to start training ([`Ranks::start`]).
    started: Cell<bool>,
    /// train() returned an error on this rank.
    pub(super) training_failed: Cell<bool>,
    /// Set by each DistBackend when an evaluation failed on every rank together.
    failed_together: RefCell<Vec<Rc<Cell<bool>>>>,
    /// This rank's Ctrl-C flag ([`Ranks::interrupt`]).
    raw_interrupt: RefCell<Option<Arc<AtomicBool>>>,
    /// Set on every rank at the same evaluation once any rank's Ctrl-C flag is, shared by
    /// every backend this rank builds (one per stage of `train stacked`).
    agreed_interrupt: Arc<AtomicBool>,
    /// The shard this rank read itself, for the next backend ([`Ranks::load_shard`]).
    shard: RefCell<Option<wgnn::dist::ShardPlace>>,
    /// The rows of the shard this rank read itself, and the examples of the whole set.
    shard_rows: RefCell<Option<(std::ops::Range<usize>, usize)>>,
    /// What this rank read: "whole" or "by row offset", and how many example rows.
    read: RefCell<(String, usize)>,
    /// Every rank's line for `ranks.json` ([`Ranks::announce`]).
    report: RefCell<Vec<serde_json::Value>>,
    scratch: PathBuf,
}

#[cfg_attr(not(feature = "mpi"), allow(dead_code))]
impl Ranks {
    pub(super) fn new(comm: Rc<dyn wgnn::dist::Collective>) -> Ranks {
        let scratch = std::env::temp_dir().join(format!("wgnn-rank{}-{}", comm.rank(), std::process::id()));
        Ranks {
            comm,
            started: Default::default(),
            training_failed: Default::default(),
            failed_together: Default::default(),
            raw_interrupt: Default::default(),
            agreed_interrupt: Default::default(),
            shard: Default::default(),
            shard_rows: Default::default(),
            read: RefCell::new(("whole".into(), 0)),
            report: Default::default(),
            scratch,
        }
    }

    pub(super) fn rank(&self) -> usize {
        self.comm.rank()
    }

    /// The ranks of the job, to reduce over.
    pub(super) fn comm(&self) -> &dyn wgnn::dist::Collective {
        &*self.comm
    }

    /// Where a rank other than 0 lets train() write (never the run folder).
    pub(super) fn scratch_folder(&self) -> anyhow::Result<RunFolder> {
        Ok(RunFolder::open(&self.scratch)?)
    }

    /// Watches this rank's Ctrl-C flag `raw`; returns the flag to give train(): set on every
    /// rank at the same evaluation once any rank's `raw` is
    /// ([`wgnn::dist::DistBackend::agree_on_interrupt`]).
    pub(super) fn interrupt(&self, raw: &Arc<AtomicBool>) -> Arc<AtomicBool> {
        *self.raw_interrupt.borrow_mut() = Some(raw.clone());
        self.agreed_interrupt.clone()
    }

    /// Reads this rank's shard of the examples alone, by row offset, when the source allows
    /// it (`mnist:` and a 2-D `npy:`, [`wgnn::data::shard::load_shard`]) and nothing in the job
    /// needs every example on every rank (a validation or test split, whitening, an encoder,
    /// --alpha, targets, --digits or --limit, stacked and sequence models); `Ok(None)` then,
    /// and the caller reads the whole set (each rank keeps its rows of it). The data set
    /// returned holds the shard's examples but the labels of every example (so that the
    /// classes are counted as one process counts them): slice them with [`Ranks::shard_labels`].
    pub(super) fn load_shard(
        &self,
        args: &super::train::TrainArgs,
    ) -> anyhow::Result<Option<(wgnn::data::DataSource, wgnn::data::Dataset)>> {
        use super::train::Kind;
        use wgnn::data::{DataSource, Dataset, Split};
        let d = &args.data;
        let whole = args.validation != 0.0
            || args.test_fraction.is_some()
            || args.whiten.is_some()
            || args.features_from.is_some()
            || args.alpha.is_some()
            || d.targets.is_some()
            || d.digits.is_some()
            || d.limit.is_some()
            || !matches!(args.kind, Kind::Autoencoder | Kind::Softmax | Kind::Mlp | Kind::Cnn);
        let Some(text) = d.data.as_deref().filter(|_| !whole) else { return Ok(None) };
        let source: DataSource = text.parse().context("--data")?;
        let split = d.split.as_deref().map(str::parse::<Split>).transpose().context("--split")?.unwrap_or_default();
        if let DataSource::Npy(path) = &source
            && wgnn::data::sequence::is_sequence_npy(path)
        {
            return Ok(None);
        }
        let (rank, size) = (self.comm.rank(), self.comm.size());
        let loaded = wgnn::data::shard::load_shard(&source, split, d.labels.as_deref(), rank, size)
            .with_context(|| format!("loading --data {source}"))?;
        let Some((shard, classes)) = loaded else { return Ok(None) };
        let (total, cols) = (shard.total, shard.x.ncols());
        let description = match &source {
            DataSource::Mnist(dir) => {
                let side = (cols as f64).sqrt().round() as usize;
                format!("MNIST {split} ({}): {total} images of {side}×{side}", dir.display())
            }
            DataSource::Npy(path) => format!(
                "{}: {total} rows of {cols} values{}",
                path.display(),
                classes.as_ref().map_or_else(String::new, |c| format!(
                    ", with labels ({})",
                    wgnn::data::ClassLabels { labels: Vec::new(), classes: c.clone() }.describe()
                ))
            ),
            _ => unreachable!("load_shard reads mnist: and npy: alone"),
        };
        let image_shape = match &source {
            DataSource::Mnist(_) => {
                let side = (cols as f64).sqrt().round() as usize;
                Some((side, side))
            }
            _ => {
                let side = (cols as f64).sqrt().round() as usize;
                (side > 1 && side * side == cols).then_some((side, side))
            }
        };
        *self.read.borrow_mut() = (format!("rows {:?} of {total} by row offset", shard.rows), shard.rows_read());
        *self.shard.borrow_mut() = Some(shard.place());
        *self.shard_rows.borrow_mut() = Some((shard.rows.clone(), total));
        let data = Dataset { x: shard.x, labels: shard.all_labels, classes, targets: None, description, image_shape };
        Ok(Some((source, data)))
    }

    /// The labels of this rank's shard, of `all` (every example's, as [`Ranks::load_shard`]
    /// gives them); `all` itself when this rank read the whole set.
    pub(super) fn shard_labels<'a>(&self, all: &'a [usize]) -> &'a [usize] {
        match &*self.shard_rows.borrow() {
            Some((rows, total)) if all.len() == *total => &all[rows.clone()],
            _ => all,
        }
    }

    /// Notes that this rank read the whole set, `rows` examples (each rank keeps its rows).
    pub(super) fn read_whole(&self, rows: usize) {
        if self.shard_rows.borrow().is_none() {
            *self.read.borrow_mut() = ("whole".into(), rows);
        }
    }

    /// This rank's backend: its own CPU or GPU backend for the network without weight decay
    /// (`dist::local_spec`), inside a DistBackend that sums over the ranks. A sparse
    /// autoencoder's backend sums ρ̂ over the ranks between its passes (the GPU's in two
    /// submissions, its column sums read back and written again).
    pub(super) fn backend(
        &self,
        choice: &BackendArgs,
        spec: &NetSpec,
    ) -> anyhow::Result<(Box<dyn wgnn::Backend>, Option<String>)> {
        use wgnn::dist::{DistBackend, ShardBackend, local_spec};
        let local = local_spec(spec);
        let (inner, note): (Box<dyn ShardBackend>, Option<String>) = if spec.sparsity.is_some() {
            // ρ̂ is summed over the ranks between the passes: the backend itself, not a
            // Box<dyn Backend>, so that DistBackend can split its evaluation.
            let (on_gpu, note) = match choice.backend {
                super::BackendChoice::Gpu => (true, None),
                super::BackendChoice::Cpu => (false, None),
                // What `auto` picks (it opens the adapter it tries; the GPU backend opens its own).
                super::BackendChoice::Auto => {
                    let (chosen, note) = choice.build_quietly(local.clone(), super::Precision::F32)?;
                    (chosen.name().starts_with("gpu"), note)
                }
            };
            if on_gpu {
                (Box::new(wgnn::GpuBackend::new(local, &choice.gpu_options())?), note)
            } else {
                match choice.precision.unwrap_or(super::Precision::F32) {
                    super::Precision::F64 => (Box::new(wgnn::CpuBackend::<f64>::new(local)?), note),
                    super::Precision::F32 => (Box::new(wgnn::CpuBackend::<f32>::new(local)?), note),
                }
            }
        } else {
            let (b, note) = choice.build_quietly(local, super::Precision::F32)?;
            (Box::new(b), note)
        };
        let mut backend = DistBackend::new(spec.clone(), inner, self.comm.clone())?;
        self.failed_together.borrow_mut().push(backend.failed_together());
        let raw = self.raw_interrupt.borrow().clone().unwrap_or_default();
        backend.agree_on_interrupt_into(raw, self.agreed_interrupt.clone());
        if let Some(place) = self.shard.borrow_mut().take() {
            backend.expect_shard(place);
        }
        Ok((Box::new(backend), note))
    }

    /// Every rank agrees to start, with the same flags ([`wgnn::dist::agree_to_start`]).
    pub(super) fn start(&self, job: u64) -> anyhow::Result<()> {
        let agreed = wgnn::dist::agree_to_start(&*self.comm, Ok(job));
        self.started.set(true);
        agreed.map_err(|(code, message)| Exit { code, message }.into())
    }

    /// After [`Ranks::start`]: every rank tells the others its backend (the GPU adapter its
    /// local rank chose) and what it read; rank 0 prints a line per rank (unless `quiet`) and
    /// keeps them for `ranks.json` ([`Ranks::write_report`]). Collective.
    pub(super) fn announce(&self, backend: &str, quiet: bool) -> anyhow::Result<()> {
        let suffix = format!(" × {} ranks", self.comm.size());
        let backend = backend.strip_suffix(&suffix).unwrap_or(backend);
        let (read, rows) = self.read.borrow().clone();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        let mine = serde_json::json!({
            "rank": self.comm.rank(),
            "host": host,
            "local_rank": wgnn::dist::launcher_local_rank(),
            "backend": backend,
            "read": read,
            "rows_read": rows,
        });
        let all = self.comm.all_gather_bytes(mine.to_string().as_bytes())?;
        let all: Vec<serde_json::Value> =
            all.iter().map(|b| serde_json::from_slice(b).unwrap_or(serde_json::Value::Null)).collect();
        if self.comm.rank() == 0 && !quiet {
            for r in &all {
                eprintln!(
                    "rank {:<4} {} on {}, read {} ({} example rows)",
                    r["rank"].as_u64().unwrap_or(0),
                    r["backend"].as_str().unwrap_or("?"),
                    r["host"].as_str().unwrap_or("?"),
                    r["read"].as_str().unwrap_or("?"),
                    r["rows_read"]
                );
            }
        }
        *self.report.borrow_mut() = all;
        Ok(())
    }

    /// Rank 0 writes what [`Ranks::announce`] gathered to `ranks.json` in the run folder.
    pub(super) fn write_report(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        if self.comm.rank() == 0 && !self.report.borrow().is_empty() {
            let text = serde_json::to_string_pretty(&*self.report.borrow())?;
            wgnn::atomic::write_bytes(&dir.join("ranks.json"), text.as_bytes())?;
        }
        Ok(())
    }

    /// Whether an error that ended this rank's job ended every rank's the same way (so that
    /// no rank waits for another).
    fn failed_together(&self) -> bool {
        self.failed_together.borrow().iter().any(|f| f.get())
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
    // A bad setting is refused by every rank together (below), not by each on its own.
    let (world, setting) = wgnn::dist::mpi::MpiWorld::init_reporting()?;
    let world = Rc::new(world);
    let rank = world.rank();
    let ranks = Ranks::new(world.clone());
    let result = if let Some(e) = setting {
        Err(anyhow::Error::from(e))
    } else if args.compare_sparsity {
        Err(anyhow::anyhow!(
            "--compare-sparsity does not run over MPI: run it as one process (without mpirun), or train the two \
             runs over MPI one by one (--sparsity-weight 0, then β)"
        ))
    } else {
        super::train::run_job(args, Some(&ranks))
    };
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
    // Every rank says how it ended (after training: writing files may fail on one rank
    // alone); all end with the first failing rank's code, and rank 0 says why, once. They
    // end together: mpirun ends the whole job as soon as one rank exits with a non-zero code,
    // which would cut rank 0 short if another went first.
    let mine = match &result {
        Ok(()) => "0\u{0}".to_string(),
        Err(e) => format!("{}\u{0}{}", super::code_of(e), wgnn::one_line(&format!("{e:#}"))),
    };
    let all = world.all_gather_bytes(mine.as_bytes()).unwrap_or_default();
    let failed = all.iter().enumerate().find_map(|(r, b)| {
        let text = String::from_utf8_lossy(b).into_owned();
        let (code, line) = text.split_once('\u{0}')?;
        let code: u8 = code.parse().ok()?;
        (code != 0).then(|| (r, code, line.to_string()))
    });
    let Some((r, code, line)) = failed else {
        drop(world);
        return Ok(());
    };
    if rank == 0 {
        // An error that every rank shares already names the rank it came from.
        let same_everywhere = all.iter().all(|b| b == &all[r]);
        if r == 0 || same_everywhere {
            eprintln!("error: {line}");
        } else {
            eprintln!("error: rank {r}: {line}");
        }
    }
    // No rank exits before rank 0 has written its line: mpirun kills the rest of the job as
    // soon as one rank exits with a non-zero code, and rank 0 killed before its `eprintln`
    // would leave the job failing without saying why (CI saw it once in a few hundred runs).
    let _ = world.all_gather_bytes(&[]);
    drop(world);
    std::process::exit(i32::from(code));
}

/// Refuses to run `wgnn COMMAND` as one of several ranks of an MPI job when only `train` runs
/// over MPI (and only in a build with `--features mpi`): N copies of the command would write
/// the same files. Rank 0 says so in one line and fails; the others end quietly. Alone (no
/// launcher, or `-np 1`) it does nothing.
pub(super) fn refuse_under_mpirun(command: &super::Command) -> anyhow::Result<()> {
    use super::Command as C;
    let command = match command {
        C::Train(_) => "train",
        C::Cost(_) => "cost",
        C::Gradcheck(_) => "gradcheck",
        C::Devices(_) => "devices",
        C::Convolve(_) => "convolve",
        C::Visualize(_) => "visualize",
        C::Reconstruct(_) => "reconstruct",
        C::Eval(_) => "eval",
        C::Predict(_) => "predict",
        C::Export(_) => "export",
        C::Bench(_) => "bench",
        C::Sample(_) => "sample",
    };
    let Some((rank, size)) = wgnn::dist::launcher_rank_size() else { return Ok(()) };
    if size == Some(1) || (command == "train" && cfg!(feature = "mpi")) {
        return Ok(());
    }
    if rank > 0 {
        std::process::exit(0);
    }
    let why = if command == "train" {
        "this wgnn was built without MPI: build it with `cargo build --release --features mpi` to train over \
         several ranks, or run it without mpirun"
            .to_string()
    } else {
        format!(
            "`wgnn {command}` does not run over MPI (only `wgnn train` does): run it as one process, without mpirun"
        )
    };
    Err(Exit { code: super::exit_code::ERROR, message: why }.into())
}
