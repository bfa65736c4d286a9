//! Saving and loading a trained network: the weights as safetensors (one f64 tensor per W and
//! b, named `layers.{l}.weight` (out × in) and `layers.{l}.bias`, readable by any safetensors
//! tool), and the spec plus free-form training metadata (optimizer state, preprocessing,
//! seed, a summary) as JSON in the safetensors header under the key `wgnn`.
//!
//! Long numeric arrays in the metadata (L-BFGS pairs, Adam moments, the best θ kept, a
//! whitening matrix: anything of at least [`MIN_TENSOR`] numbers) do not go into that JSON:
//! each becomes its own tensor, f64 with its exact bits (u64 for arrays of whole numbers),
//! named `metadata/` plus its JSON path (e.g. `metadata/optimizer/state/pairs/0/s`), and the
//! JSON keeps `{"$tensor": NAME}` in its place. Loading puts the arrays back, so the
//! [`Metadata`] a caller sees is the same JSON either way and a new optimizer's vectors need no
//! new code. As text those numbers took ~20 bytes each; as tensors 8.
//!
//! Files written before (`wgnn-checkpoint-1`, the optimizer state as a byte tensor of JSON
//! text) still load.
//!
//! Writes are atomic (temporary file, fsync, rename): a crash never leaves a broken file.
//! A [`Writer`] does them on a background thread, so that training goes on meanwhile.
//! Loading checks every shape against the spec and refuses a corrupt or mismatched file with
//! a message that says what is wrong.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::model::{NetSpec, ThetaLayout};
use crate::{Error, Result};

/// The header key holding the JSON metadata.
const KEY: &str = "wgnn";
const FORMAT: &str = "wgnn-checkpoint-2";
/// The format before long arrays became tensors; still read.
const FORMAT_1: &str = "wgnn-checkpoint-1";
/// The byte tensor holding the optimizer state as JSON in [`FORMAT_1`] files.
const OPTIMIZER: &str = "optimizer_state_json";
/// Numeric arrays in the metadata at least this long are stored as tensors, shorter ones stay
/// JSON (a tensor's header entry costs about as much as 16 numbers as text).
pub const MIN_TENSOR: usize = 16;
/// The JSON key that stands for an array stored as a tensor.
const TENSOR_REF: &str = "$tensor";
/// The prefix of the names of tensors holding metadata arrays.
const TENSOR_PREFIX: &str = "metadata/";

/// Everything a checkpoint holds besides the weights. The values are JSON so that the
/// optimizer, data and training code own their own formats.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The wgnn version that wrote the file.
    #[serde(default)]
    pub wgnn_version: String,
    #[serde(default)]
    /// The seed the run used (weights, validation split, minibatch order); `None` when unknown.
    pub seed: Option<u64>,
    /// The training history (cost per iteration and so on). Files written now leave it null
    /// (the optimizer state holds the history, metrics.json too); older files may hold it.
    #[serde(default)]
    pub history: serde_json::Value,
    /// Optimizer state, for resuming: in `checkpoint.safetensors`, null in a finished run's
    /// `model.safetensors` (weights, spec, preprocessing and a summary in `extra` only).
    #[serde(default)]
    pub optimizer: serde_json::Value,
    /// How inputs were preprocessed (scaling, whitening), so new data can be treated alike.
    #[serde(default)]
    pub preprocessing: serde_json::Value,
    /// The command that started the run (the CLI's `train` flags as JSON), so `--resume DIR`
    /// alone can restore the whole job; null in files written before it was recorded.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub command: serde_json::Value,
    /// Anything else (e.g. final metrics).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    spec: NetSpec,
    metadata: Metadata,
}

/// A network's spec, its parameters θ and its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The network.
    pub spec: NetSpec,
    /// θ in wgnn's layout ([`crate::model::ThetaLayout`]): as many values as the network has parameters.
    pub theta: Vec<f64>,
    /// What the run was and how far it got.
    pub metadata: Metadata,
}

fn weight_name(l: usize) -> String {
    format!("layers.{l}.weight")
}

fn bias_name(l: usize) -> String {
    format!("layers.{l}.bias")
}

impl Checkpoint {
    /// A checkpoint of `spec` at θ.
    ///
    /// Errors ([`Error::Shape`]): θ of another length than the network's parameters.
    pub fn new(spec: NetSpec, theta: Vec<f64>, metadata: Metadata) -> Result<Checkpoint> {
        spec.validate()?;
        let len = ThetaLayout::new(&spec).len();
        if theta.len() != len {
            return Err(Error::Shape(format!("θ has {} values but the network needs {len}", theta.len())));
        }
        Ok(Checkpoint { spec, theta, metadata })
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        encode(&self.spec, &self.theta, &self.metadata, &self.metadata.optimizer)
    }

    /// Writes atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        crate::atomic::write_bytes(path, &bytes)
    }

    /// Reads a checkpoint file (safetensors; README.md, "The parameter vector θ").
    ///
    /// Errors ([`Error::File`]): the file cannot be read; as [`Checkpoint::from_bytes`] otherwise.
    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        Checkpoint::from_bytes(&bytes).map_err(|e| match e {
            Error::Data(m) | Error::Shape(m) => Error::file(path, m),
            Error::Spec(e) => Error::file(path, format!("the checkpoint's network is invalid: {e}")),
            other => other,
        })
    }

    /// Parses a checkpoint's bytes.
    ///
    /// Errors ([`Error::Data`]): not a safetensors file, a missing or unreadable spec, tensors that do not match the spec's layout.
    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint> {
        let corrupt = |e: safetensors::SafeTensorError| {
            Error::Data(crate::one_line(&format!(
                "not a readable safetensors checkpoint ({e}): the file is corrupt or truncated"
            )))
        };
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
        let json =
            meta.metadata().as_ref().and_then(|m| m.get(KEY)).ok_or_else(|| {
                Error::Data("a safetensors file, but not a wgnn checkpoint (no `wgnn` metadata)".into())
            })?;
        let header: Header = serde_json::from_str(json)
            .map_err(|e| Error::Data(crate::one_line(&format!("the checkpoint's metadata is unreadable: {e}"))))?;
        if header.format != FORMAT && header.format != FORMAT_1 {
            return Err(Error::Data(format!(
                "checkpoint format `{}`; this wgnn reads `{FORMAT}` and `{FORMAT_1}`: it was written by another wgnn version",
                header.format
            )));
        }
        header.spec.validate()?;
        let tensors = SafeTensors::deserialize(bytes).map_err(corrupt)?;
        let layout = ThetaLayout::new(&header.spec);
        // θ is sized from the spec: its tensors (4 bytes a value at least) must be in the file.
        if layout.len().saturating_mul(4) > bytes.len() {
            return Err(Error::Data(format!(
                "the network {} has {} parameters, more than the file's {} bytes can hold: it is truncated or corrupt",
                header.spec.describe(),
                layout.len(),
                bytes.len()
            )));
        }
        let mut theta = vec![0.0; layout.len()];
        for l in 0..layout.num_layers() {
            let (out, inp) = layout.shapes[l];
            for (name, shape, range) in [
                (weight_name(l), vec![out, inp], layout.weight_range(l)),
                (bias_name(l), vec![out], layout.bias_range(l)),
            ] {
                let t = tensors
                    .tensor(&name)
                    .map_err(|_| Error::Data(format!("tensor `{name}` is missing for {}", header.spec.describe())))?;
                if t.shape() != shape.as_slice() {
                    return Err(Error::Shape(format!(
                        "tensor `{name}` has shape {:?}, but the network {} needs {shape:?}",
                        t.shape(),
                        header.spec.describe()
                    )));
                }
                let dst = &mut theta[range];
                match t.dtype() {
                    Dtype::F64 => dst.iter_mut().zip(t.data().chunks_exact(8)).for_each(|(d, c)| {
                        *d = f64::from_le_bytes(c.try_into().expect("8 bytes"));
                    }),
                    Dtype::F32 => dst.iter_mut().zip(t.data().chunks_exact(4)).for_each(|(d, c)| {
                        *d = f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64;
                    }),
                    other => {
                        return Err(Error::Data(format!("tensor `{name}` holds {other:?}; expected F64 or F32")));
                    }
                }
            }
        }
        let mut metadata = header.metadata;
        if header.format == FORMAT_1 {
            if let Ok(t) = tensors.tensor(OPTIMIZER) {
                metadata.optimizer = serde_json::from_slice(t.data()).map_err(|e| {
                    Error::Data(crate::one_line(&format!("the checkpoint's optimizer state is unreadable: {e}")))
                })?;
            }
        } else {
            for value in [&mut metadata.history, &mut metadata.optimizer, &mut metadata.preprocessing] {
                restore_arrays(value, &tensors)?;
            }
            for value in metadata.extra.values_mut() {
                restore_arrays(value, &tensors)?;
            }
        }
        if let Some(i) = theta.iter().position(|v| !v.is_finite()) {
            return Err(Error::Data(format!("θ[{i}] is {}: the checkpoint holds non-finite weights", theta[i])));
        }
        Ok(Checkpoint { spec: header.spec, theta, metadata })
    }
}

/// Writes a checkpoint of `spec`, `theta` and `metadata` atomically to `path`, with
/// `optimizer` (any serde value: the optimizer's state) in place of `metadata.optimizer`.
///
/// The same file as [`Checkpoint::save`] of a checkpoint holding `serde_json::to_value(optimizer)`,
/// but the state's long vectors go straight from `optimizer` into tensor bytes: no JSON value
/// per number and no copy of θ. This is what makes `--checkpoint-every 1` cheap (BENCHMARKS.md,
/// "Model and checkpoint files").
///
/// Errors: [`Error::Shape`] when θ's length does not fit `spec`, [`Error::Spec`] for an invalid
/// spec, [`Error::Data`] when `optimizer` cannot be serialised, [`Error::File`] when the file
/// cannot be written.
pub fn save_state<S: Serialize + ?Sized>(
    spec: &NetSpec,
    theta: &[f64],
    metadata: &Metadata,
    optimizer: &S,
    path: &Path,
) -> Result<()> {
    spec.validate()?;
    let len = ThetaLayout::new(spec).len();
    if theta.len() != len {
        return Err(Error::Shape(format!("θ has {} values but the network needs {len}", theta.len())));
    }
    let bytes = encode(spec, theta, metadata, optimizer)?;
    crate::atomic::write_bytes(path, &bytes)
}

/// The checkpoint writer: training hands it a copy of θ and the optimizer state and goes on,
/// while one background thread serialises the copy and writes it atomically (temporary file,
/// fsync, rename: [`crate::atomic`]). This is asynchronous checkpointing as PyTorch's
/// `torch.distributed.checkpoint.async_save` and Orbax's `AsyncCheckpointer` do it: the
/// training path pays for a memory copy, not for the serialisation, the write and the fsync
/// (BENCHMARKS.md, "Checkpoints written in the background").
///
/// - Hand-overs coalesce: at most one write is in flight and one waits behind it. A hand-over
///   ([`Writer::save_state`], [`Writer::submit`]) never waits for the disk: while a write is
///   in flight, or the writer pauses after one, it replaces the waiting one, unstarted (the
///   newest state wins, as a queue of depth one that drops the older entry). So when steps
///   are quicker than a durable write (a 4 ms step, an 8 ms write with its fsync) training
///   does not slow to the disk's pace: some periodic checkpoints are skipped, never
///   reordered. After each write the writer pauses four times as long as it took (busy at
///   most 20% of the time), so that its serialisation does not take a core's worth from
///   training either. The files land in the order handed over, and [`Writer::wait`] starts
///   the waiting one at once: after it the last one handed over is on disk.
/// - A write's error is returned once, by the first hand-over after the write ended or by
///   [`Writer::wait`]; the file it was writing is then as it was before (the atomic write's
///   promise), and the write waiting behind it is dropped, unstarted.
/// - Dropping the writer waits for the write in flight and the one waiting (their errors are
///   then lost: call [`Writer::wait`] on every path that can report one), so no caller
///   returns, and no process exits through a return, with a checkpoint half written.
///
/// Write everything else to the same file only after [`Writer::wait`]: a synchronous write
/// could otherwise be overtaken by an older one still in flight.
pub struct Writer {
    shared: std::sync::Arc<Shared>,
    /// The writer thread, started by the first hand-over and joined on drop.
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A write handed over: it runs on the writer thread.
type Job = Box<dyn FnOnce() -> Result<()> + Send>;

/// What the training thread and the writer thread share.
#[derive(Default)]
struct Shared {
    slot: std::sync::Mutex<Slot>,
    /// Signalled whenever the slot changes.
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct Slot {
    /// The write waiting behind the one in flight (replaced by a newer hand-over).
    queued: Option<Job>,
    /// A write is running.
    busy: bool,
    /// The error of a write that ended, until it is reported.
    error: Option<Error>,
    /// Hand-overs replaced before they started, over the writer's life.
    skipped: usize,
    /// The writer is being dropped: the thread ends once the slot is empty.
    closing: bool,
    /// [`Writer::wait`] is waiting: the waiting write starts now, not after the pause.
    urgent: bool,
    /// The end of the pause after the last write (none before the first).
    resume_at: Option<std::time::Instant>,
}

impl Slot {
    /// Whether a write handed over now would start at once: none in flight or waiting, and
    /// the pause over.
    fn ready(&self) -> bool {
        !self.busy && self.queued.is_none() && self.resume_at.is_none_or(|t| std::time::Instant::now() >= t)
    }
}

/// The writer's pause after a periodic write, as a multiple of that write's duration: the
/// writer is then busy at most 1/(1 + PAUSE) = 20% of the time, so its serialisation (the
/// serde walk over the optimizer state: ~2 ms of CPU for 2.6 MB of L-BFGS pairs) takes at
/// most that share of one core from training, however short the steps
/// (BENCHMARKS.md, "Checkpoints coalesced"). A write handed over meanwhile waits, and is
/// replaced by newer ones, until the pause ends or [`Writer::wait`] asks for it.
const PAUSE: u32 = 4;

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer thread: runs each write handed over, newest first, until the writer closes;
    /// after each write it pauses [`PAUSE`] times as long as the write took, unless
    /// [`Writer::wait`] asks for the waiting one.
    fn serve(&self) {
        loop {
            let job = {
                let mut slot = self.lock();
                loop {
                    let now = std::time::Instant::now();
                    let resume_at = slot.resume_at.unwrap_or(now);
                    if slot.queued.is_some() && (slot.urgent || slot.closing || now >= resume_at) {
                        slot.busy = true;
                        break slot.queued.take().expect("checked");
                    }
                    if slot.closing && slot.queued.is_none() {
                        return;
                    }
                    slot = if slot.queued.is_some() {
                        self.changed.wait_timeout(slot, resume_at - now).unwrap_or_else(|e| e.into_inner()).0
                    } else {
                        self.changed.wait(slot).unwrap_or_else(|e| e.into_inner())
                    };
                }
            };
            let started = std::time::Instant::now();
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".into());
                Err(Error::Data(crate::one_line(&format!("the checkpoint writer thread stopped: {what}"))))
            });
            let mut slot = self.lock();
            slot.resume_at = Some(std::time::Instant::now() + started.elapsed() * PAUSE);
            slot.busy = false;
            // After a failure the waiting write is not started: the error ends the run first.
            let dropped = if let Err(e) = result {
                slot.error.get_or_insert(e);
                slot.queued.take()
            } else {
                None
            };
            drop(slot);
            self.changed.notify_all();
            drop(dropped);
        }
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let slot = self.shared.lock();
        f.debug_struct("Writer")
            .field("busy", &slot.busy)
            .field("queued", &slot.queued.is_some())
            .field("skipped", &slot.skipped)
            .field("error", &slot.error)
            .finish()
    }
}

impl Default for Writer {
    fn default() -> Writer {
        Writer::new()
    }
}

impl Writer {
    /// A writer with nothing in flight (no thread until the first write).
    pub fn new() -> Writer {
        Writer { shared: Default::default(), thread: std::sync::Mutex::new(None) }
    }

    /// Waits until the write in flight and the one waiting behind it, if any, have ended, and
    /// returns the first error not yet reported.
    ///
    /// Errors: a write's own ([`Error::File`] when the file could not be written,
    /// [`Error::Data`] when the state could not be serialised), or [`Error::Data`] when a
    /// write panicked.
    pub fn wait(&self) -> Result<()> {
        let mut slot = self.shared.lock();
        slot.urgent = true;
        self.shared.changed.notify_all();
        while slot.busy || slot.queued.is_some() {
            slot = self.shared.changed.wait(slot).unwrap_or_else(|e| e.into_inner());
        }
        slot.urgent = false;
        slot.error.take().map_or(Ok(()), Err)
    }

    /// How many hand-overs were replaced by a newer one before they started (skipped
    /// checkpoints), over the writer's life.
    pub fn skipped(&self) -> usize {
        self.shared.lock().skipped
    }

    /// Hands `write` to the writer thread and returns at once, without waiting for the disk:
    /// it runs when the write in flight, if any, has ended, unless a newer hand-over replaces
    /// it first (it is then dropped, unstarted). When a write before it failed, that error is
    /// returned (once) and `write` is dropped, unstarted.
    ///
    /// Errors: an earlier write's (as [`Writer::wait`]); [`Error::Data`] when the system
    /// cannot start the writer thread (`write` is then not run).
    pub fn submit(&self, write: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
        {
            let mut thread = self.thread.lock().unwrap_or_else(|e| e.into_inner());
            if thread.is_none() {
                let shared = self.shared.clone();
                *thread = Some(
                    std::thread::Builder::new()
                        .name("wgnn-checkpoint".into())
                        .spawn(move || shared.serve())
                        .map_err(|e| Error::Data(format!("cannot start the checkpoint writer thread: {e}")))?,
                );
            }
        }
        let mut slot = self.shared.lock();
        if let Some(e) = slot.error.take() {
            return Err(e);
        }
        let replaced = slot.queued.replace(Box::new(write));
        slot.skipped += usize::from(replaced.is_some());
        drop(slot);
        self.shared.changed.notify_all();
        // The older copy is freed here, off the lock.
        drop(replaced);
        Ok(())
    }

    /// Hands over the write that `make` builds only when the writer would start it at once
    /// (no write in flight or waiting, the pause after the last one over); otherwise skips
    /// this checkpoint without calling `make`, so that training does not even copy a state
    /// that a newer one would replace before it is written (on a short job that copy, 2.6 MB
    /// of L-BFGS pairs each step, was most of a checkpoint's cost: BENCHMARKS.md,
    /// "Checkpoints coalesced"). Returns whether it was handed over; a skip counts in
    /// [`Writer::skipped`]. The next checkpoint after the writer is free is the one written,
    /// and [`Writer::wait`] then a synchronous write give the last state.
    ///
    /// Errors: an earlier write's, once (as [`Writer::submit`]), whether or not this one would
    /// have been handed over.
    pub fn offer<W: FnOnce() -> Result<()> + Send + 'static>(&self, make: impl FnOnce() -> W) -> Result<bool> {
        {
            let mut slot = self.shared.lock();
            if let Some(e) = slot.error.take() {
                return Err(e);
            }
            if !slot.ready() {
                slot.skipped += 1;
                return Ok(false);
            }
        }
        self.submit(make()).map(|()| true)
    }

    /// Hands a checkpoint of `spec`, `theta`, `metadata` and `optimizer` to the writer thread,
    /// which writes to `path` the file [`save_state`] writes (the same bytes). The values are
    /// moved in: the caller copies what it goes on changing (θ, the optimizer).
    ///
    /// Errors, before anything is handed over: as [`save_state`] for θ's length and the spec;
    /// the previous write's error (as [`Writer::submit`]). The write's own errors come back
    /// from the next hand-over or from [`Writer::wait`].
    pub fn save_state<S: Serialize + Send + 'static>(
        &self,
        spec: NetSpec,
        theta: Vec<f64>,
        metadata: Metadata,
        optimizer: S,
        path: std::path::PathBuf,
    ) -> Result<()> {
        spec.validate()?;
        let len = ThetaLayout::new(&spec).len();
        if theta.len() != len {
            return Err(Error::Shape(format!("θ has {} values but the network needs {len}", theta.len())));
        }
        self.submit(move || {
            let bytes = encode(&spec, &theta, &metadata, &optimizer)?;
            // The copies go before the write: the file's bytes are all this thread still holds.
            drop((theta, optimizer, metadata));
            crate::atomic::write_bytes(&path, &bytes)
        })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.wait();
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// The bytes of a checkpoint file: θ's tensors, then the metadata's long arrays as tensors (with
/// `optimizer` standing for `metadata.optimizer`), then the header.
fn encode<S: Serialize + ?Sized>(spec: &NetSpec, theta: &[f64], m: &Metadata, optimizer: &S) -> Result<Vec<u8>> {
    let layout = ThetaLayout::new(spec);
    let bytes: &[u8] = bytemuck::cast_slice(theta);
    let mut tensors = Vec::new();
    for l in 0..layout.num_layers() {
        let (out, inp) = layout.shapes[l];
        let w = layout.weight_range(l);
        let b = layout.bias_range(l);
        let view = |range: std::ops::Range<usize>, shape| {
            TensorView::new(Dtype::F64, shape, &bytes[range.start * 8..range.end * 8]).expect("sizes match")
        };
        tensors.push((weight_name(l), view(w, vec![out, inp])));
        tensors.push((bias_name(l), view(b, vec![out])));
    }
    // Long numeric arrays leave the JSON: their bytes are kept here until serialised.
    let mut arrays: Vec<Array> = Vec::new();
    let mut split = |key: &str, value: &dyn erased::Serialize| -> Result<serde_json::Value> {
        value
            .serialize_into(Capture { path: format!("{TENSOR_PREFIX}{key}"), out: &mut arrays })
            .map_err(|e| Error::Data(format!("metadata `{key}` cannot be serialised: {e}")))
    };
    let mut extra = serde_json::Map::new();
    for (k, v) in &m.extra {
        extra.insert(k.clone(), split(&format!("extra/{k}"), v)?);
    }
    let metadata = Metadata {
        wgnn_version: env!("CARGO_PKG_VERSION").to_string(),
        seed: m.seed,
        history: split("history", &m.history)?,
        optimizer: split("optimizer", &erased::Of(optimizer))?,
        preprocessing: split("preprocessing", &m.preprocessing)?,
        command: m.command.clone(),
        extra,
    };
    for a in &arrays {
        let bytes: &[u8] = bytemuck::cast_slice(&a.words);
        tensors.push((a.name.clone(), TensorView::new(a.dtype, vec![a.words.len()], bytes).expect("sizes match")));
    }
    let header = Header { format: FORMAT.into(), spec: spec.clone(), metadata };
    let json = serde_json::to_string(&header).map_err(|e| Error::Data(format!("metadata: {e}")))?;
    safetensors::serialize(tensors, Some(HashMap::from([(KEY.to_string(), json)])))
        .map_err(|e| Error::Data(format!("cannot serialise the checkpoint: {e}")))
}

/// A metadata array stored as a tensor: its name, dtype (F64 or U64) and its numbers as
/// 64-bit words whose bytes in memory are little-endian (`to_le`: no work on the usual
/// machines), so the tensor's bytes are the words themselves, not a copy.
struct Array {
    name: String,
    dtype: Dtype,
    words: Vec<u64>,
}

/// Serialising through a `&dyn` (the metadata's values and the optimizer's state share one
/// code path without making [`encode`]'s closure generic).
mod erased {
    use super::Capture;

    pub trait Serialize {
        fn serialize_into(&self, c: Capture<'_>) -> Result<serde_json::Value, serde_json::Error>;
    }
    impl Serialize for serde_json::Value {
        fn serialize_into(&self, c: Capture<'_>) -> Result<serde_json::Value, serde_json::Error> {
            serde::Serialize::serialize(self, c)
        }
    }
    /// Any serde value, borrowed.
    pub struct Of<'a, S: ?Sized>(pub &'a S);
    impl<S: serde::Serialize + ?Sized> Serialize for Of<'_, S> {
        fn serialize_into(&self, c: Capture<'_>) -> Result<serde_json::Value, serde_json::Error> {
            self.0.serialize(c)
        }
    }
}

/// A serde serializer that gives the JSON value `serde_json::to_value` would, except that every
/// array of at least [`MIN_TENSOR`] numbers, all finite f64 (or all whole numbers ≥ 0), becomes
/// `{"$tensor": NAME}` and its numbers go, as bytes, to `out`: they are never JSON values. NAME
/// is `path` plus the value's JSON path, `/`-separated (e.g. `metadata/optimizer/state/pairs/0/s`).
struct Capture<'a> {
    path: String,
    out: &'a mut Vec<Array>,
}

impl Capture<'_> {
    fn child(&mut self, key: &dyn std::fmt::Display) -> Capture<'_> {
        Capture { path: format!("{}/{key}", self.path), out: &mut *self.out }
    }
}

type JsonError = serde_json::Error;
type Value = serde_json::Value;

fn json() -> serde_json::value::Serializer {
    serde_json::value::Serializer
}

/// A number as the array probe sees it.
enum Number {
    F64(f64),
    U64(u64),
}

/// Serialises a value when it is a number (any other value is an error, never built).
struct NumberProbe;

impl serde::Serializer for NumberProbe {
    type Ok = Number;
    type Error = JsonError;
    type SerializeSeq = serde::ser::Impossible<Number, JsonError>;
    type SerializeTuple = serde::ser::Impossible<Number, JsonError>;
    type SerializeTupleStruct = serde::ser::Impossible<Number, JsonError>;
    type SerializeTupleVariant = serde::ser::Impossible<Number, JsonError>;
    type SerializeMap = serde::ser::Impossible<Number, JsonError>;
    type SerializeStruct = serde::ser::Impossible<Number, JsonError>;
    type SerializeStructVariant = serde::ser::Impossible<Number, JsonError>;

    fn serialize_f64(self, v: f64) -> Result<Number, JsonError> {
        Ok(Number::F64(v))
    }
    fn serialize_f32(self, v: f32) -> Result<Number, JsonError> {
        Ok(Number::F64(v as f64))
    }
    fn serialize_u64(self, v: u64) -> Result<Number, JsonError> {
        Ok(Number::U64(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Number, JsonError> {
        Ok(Number::U64(v as u64))
    }
    fn serialize_u16(self, v: u16) -> Result<Number, JsonError> {
        Ok(Number::U64(v as u64))
    }
    fn serialize_u8(self, v: u8) -> Result<Number, JsonError> {
        Ok(Number::U64(v as u64))
    }
    fn serialize_i64(self, v: i64) -> Result<Number, JsonError> {
        u64::try_from(v).map(Number::U64).map_err(|_| not_number())
    }
    fn serialize_i32(self, v: i32) -> Result<Number, JsonError> {
        self.serialize_i64(v as i64)
    }
    fn serialize_i16(self, v: i16) -> Result<Number, JsonError> {
        self.serialize_i64(v as i64)
    }
    fn serialize_i8(self, v: i8) -> Result<Number, JsonError> {
        self.serialize_i64(v as i64)
    }
    fn serialize_bool(self, _: bool) -> Result<Number, JsonError> {
        Err(not_number())
    }
    fn serialize_char(self, _: char) -> Result<Number, JsonError> {
        Err(not_number())
    }
    fn serialize_str(self, _: &str) -> Result<Number, JsonError> {
        Err(not_number())
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<Number, JsonError> {
        Err(not_number())
    }
    fn serialize_none(self) -> Result<Number, JsonError> {
        Err(not_number())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<Number, JsonError> {
        Err(not_number())
    }
    fn serialize_unit(self) -> Result<Number, JsonError> {
        Err(not_number())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Number, JsonError> {
        Err(not_number())
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, _: &'static str) -> Result<Number, JsonError> {
        Err(not_number())
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, _: &T) -> Result<Number, JsonError> {
        Err(not_number())
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<Number, JsonError> {
        Err(not_number())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq, JsonError> {
        Err(not_number())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple, JsonError> {
        Err(not_number())
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeTupleStruct, JsonError> {
        Err(not_number())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, JsonError> {
        Err(not_number())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, JsonError> {
        Err(not_number())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct, JsonError> {
        Err(not_number())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, JsonError> {
        Err(not_number())
    }
}

fn not_number() -> JsonError {
    <JsonError as serde::ser::Error>::custom("not a number")
}

/// The items of an array so far: numbers of one kind kept unboxed while they last.
enum Items {
    F64(Vec<f64>),
    U64(Vec<u64>),
    Json(Vec<Value>),
}

/// An array being serialised by [`Capture`]; `variant` wraps it as `{variant: [...]}`.
struct SeqCapture<'a> {
    capture: Capture<'a>,
    items: Items,
    variant: Option<&'static str>,
}

impl<'a> SeqCapture<'a> {
    fn new(capture: Capture<'a>, variant: Option<&'static str>) -> SeqCapture<'a> {
        let capture = match variant {
            Some(v) => Capture { path: format!("{}/{v}", capture.path), out: capture.out },
            None => capture,
        };
        SeqCapture { capture, items: Items::F64(Vec::new()), variant }
    }

    fn len(&self) -> usize {
        match &self.items {
            Items::F64(v) => v.len(),
            Items::U64(v) => v.len(),
            Items::Json(v) => v.len(),
        }
    }

    /// The items, turned into JSON values from here on (a non-finite f64 is null, as in serde_json).
    fn as_json(&mut self) -> &mut Vec<Value> {
        let items = std::mem::replace(&mut self.items, Items::Json(Vec::new()));
        self.items = Items::Json(match items {
            Items::F64(v) => v.into_iter().map(Value::from).collect(),
            Items::U64(v) => v.into_iter().map(Value::from).collect(),
            Items::Json(v) => v,
        });
        match &mut self.items {
            Items::Json(v) => v,
            _ => unreachable!("just set"),
        }
    }

    fn push<T: Serialize + ?Sized>(&mut self, item: &T) -> Result<(), JsonError> {
        let i = self.len();
        match (item.serialize(NumberProbe), &mut self.items) {
            (Ok(Number::F64(x)), Items::F64(v)) => v.push(x),
            (Ok(Number::U64(n)), Items::U64(v)) => v.push(n),
            (Ok(Number::U64(n)), Items::F64(v)) if v.is_empty() => self.items = Items::U64(vec![n]),
            (Ok(Number::F64(x)), _) => self.as_json().push(Value::from(x)),
            (Ok(Number::U64(n)), _) => self.as_json().push(Value::from(n)),
            (Err(_), _) => {
                let value = item.serialize(self.capture.child(&i))?;
                self.as_json().push(value);
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Value, JsonError> {
        let tensor = match &self.items {
            Items::F64(v) if v.len() >= MIN_TENSOR && v.iter().all(|x| x.is_finite()) => {
                Some((Dtype::F64, v.iter().map(|x| x.to_bits().to_le()).collect::<Vec<u64>>()))
            }
            Items::U64(v) if v.len() >= MIN_TENSOR => Some((Dtype::U64, v.iter().map(|x| x.to_le()).collect())),
            _ => None,
        };
        let value = match tensor {
            Some((dtype, words)) => {
                let mut name = self.capture.path.clone();
                // Keys holding `/` could make two paths alike: keep names unique.
                if self.capture.out.iter().any(|a| a.name == name) {
                    name = format!("{name}#{}", self.capture.out.len());
                }
                self.capture.out.push(Array { name: name.clone(), dtype, words });
                serde_json::json!({ TENSOR_REF: name })
            }
            None => Value::Array(std::mem::take(self.as_json())),
        };
        Ok(match self.variant {
            Some(v) => serde_json::json!({ v: value }),
            None => value,
        })
    }
}

impl serde::ser::SerializeSeq for SeqCapture<'_> {
    type Ok = Value;
    type Error = JsonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JsonError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, JsonError> {
        self.finish()
    }
}

impl serde::ser::SerializeTuple for SeqCapture<'_> {
    type Ok = Value;
    type Error = JsonError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JsonError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, JsonError> {
        self.finish()
    }
}

impl serde::ser::SerializeTupleStruct for SeqCapture<'_> {
    type Ok = Value;
    type Error = JsonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JsonError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, JsonError> {
        self.finish()
    }
}

impl serde::ser::SerializeTupleVariant for SeqCapture<'_> {
    type Ok = Value;
    type Error = JsonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JsonError> {
        self.push(value)
    }
    fn end(self) -> Result<Value, JsonError> {
        self.finish()
    }
}

/// An object being serialised by [`Capture`]; `variant` wraps it as `{variant: {...}}`.
struct MapCapture<'a> {
    capture: Capture<'a>,
    map: serde_json::Map<String, Value>,
    key: Option<String>,
    variant: Option<&'static str>,
}

impl<'a> MapCapture<'a> {
    fn new(capture: Capture<'a>, variant: Option<&'static str>) -> MapCapture<'a> {
        let capture = match variant {
            Some(v) => Capture { path: format!("{}/{v}", capture.path), out: capture.out },
            None => capture,
        };
        MapCapture { capture, map: serde_json::Map::new(), key: None, variant }
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: String, value: &T) -> Result<(), JsonError> {
        let value = value.serialize(self.capture.child(&key))?;
        self.map.insert(key, value);
        Ok(())
    }

    fn finish(self) -> Result<Value, JsonError> {
        let value = Value::Object(self.map);
        Ok(match self.variant {
            Some(v) => serde_json::json!({ v: value }),
            None => value,
        })
    }
}

impl serde::ser::SerializeMap for MapCapture<'_> {
    type Ok = Value;
    type Error = JsonError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), JsonError> {
        // JSON keys are strings: numbers and booleans as their text, as serde_json writes them.
        self.key = Some(match key.serialize(json())? {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(<JsonError as serde::ser::Error>::custom("key must be a string")),
        });
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), JsonError> {
        let key = self.key.take().expect("serialize_key comes first");
        self.field(key, value)
    }
    fn end(self) -> Result<Value, JsonError> {
        self.finish()
    }
}

impl serde::ser::SerializeStruct for MapCapture<'_> {
    type Ok = Value;
    type Error = JsonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), JsonError> {
        self.field(key.to_string(), value)
    }
    fn end(self) -> Result<Value, JsonError> {
        self.finish()
    }
}

impl serde::ser::SerializeStructVariant for MapCapture<'_> {
    type Ok = Value;
    type Error = JsonError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), JsonError> {
        self.field(key.to_string(), value)
    }
    fn end(self) -> Result<Value, JsonError> {
        self.finish()
    }
}

impl<'a> serde::Serializer for Capture<'a> {
    type Ok = Value;
    type Error = JsonError;
    type SerializeSeq = SeqCapture<'a>;
    type SerializeTuple = SeqCapture<'a>;
    type SerializeTupleStruct = SeqCapture<'a>;
    type SerializeTupleVariant = SeqCapture<'a>;
    type SerializeMap = MapCapture<'a>;
    type SerializeStruct = MapCapture<'a>;
    type SerializeStructVariant = MapCapture<'a>;

    fn serialize_bool(self, v: bool) -> Result<Value, JsonError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, JsonError> {
        Ok(Value::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, JsonError> {
        Ok(Value::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, JsonError> {
        Ok(Value::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, JsonError> {
        Ok(Value::from(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Value, JsonError> {
        Ok(Value::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, JsonError> {
        Ok(Value::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, JsonError> {
        Ok(Value::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, JsonError> {
        Ok(Value::from(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, JsonError> {
        json().serialize_i128(v)
    }
    fn serialize_u128(self, v: u128) -> Result<Value, JsonError> {
        json().serialize_u128(v)
    }
    fn serialize_f32(self, v: f32) -> Result<Value, JsonError> {
        json().serialize_f32(v)
    }
    fn serialize_f64(self, v: f64) -> Result<Value, JsonError> {
        Ok(Value::from(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, JsonError> {
        Ok(Value::String(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, JsonError> {
        Ok(Value::String(v.to_string()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, JsonError> {
        json().serialize_bytes(v)
    }
    fn serialize_none(self) -> Result<Value, JsonError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, JsonError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, JsonError> {
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<Value, JsonError> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Result<Value, JsonError> {
        Ok(Value::String(variant.to_string()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, value: &T) -> Result<Value, JsonError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, JsonError> {
        let inner = value.serialize(self.child(&variant))?;
        Ok(serde_json::json!({ variant: inner }))
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<SeqCapture<'a>, JsonError> {
        Ok(SeqCapture::new(self, None))
    }
    fn serialize_tuple(self, _: usize) -> Result<SeqCapture<'a>, JsonError> {
        Ok(SeqCapture::new(self, None))
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<SeqCapture<'a>, JsonError> {
        Ok(SeqCapture::new(self, None))
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<SeqCapture<'a>, JsonError> {
        Ok(SeqCapture::new(self, Some(variant)))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<MapCapture<'a>, JsonError> {
        Ok(MapCapture::new(self, None))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<MapCapture<'a>, JsonError> {
        Ok(MapCapture::new(self, None))
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<MapCapture<'a>, JsonError> {
        Ok(MapCapture::new(self, Some(variant)))
    }
}

/// Puts back the arrays [`Capture`] took out: each `{"$tensor": NAME}` becomes the
/// numbers of tensor NAME. A missing tensor, another dtype or a non-finite f64 is refused.
fn restore_arrays(value: &mut serde_json::Value, tensors: &SafeTensors<'_>) -> Result<()> {
    use serde_json::Value;
    match value {
        Value::Object(map) if map.len() == 1 && map.get(TENSOR_REF).is_some_and(Value::is_string) => {
            let name = map[TENSOR_REF].as_str().expect("a string").to_string();
            let t = tensors.tensor(&name).map_err(|_| {
                Error::Data(format!("the metadata names tensor `{name}`, which the file lacks: it is corrupt"))
            })?;
            if t.shape().len() != 1 {
                return Err(Error::Data(format!("tensor `{name}` has shape {:?}; expected one dimension", t.shape())));
            }
            let chunks = t.data().chunks_exact(8).map(|c| <[u8; 8]>::try_from(c).expect("8 bytes"));
            let items: Vec<Value> = match t.dtype() {
                Dtype::F64 => chunks
                    .map(|c| {
                        let v = f64::from_le_bytes(c);
                        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| {
                            Error::Data(format!("tensor `{name}` holds {v}: the metadata's numbers are finite"))
                        })
                    })
                    .collect::<Result<_>>()?,
                Dtype::U64 => chunks.map(|c| Value::from(u64::from_le_bytes(c))).collect(),
                other => {
                    return Err(Error::Data(format!("tensor `{name}` holds {other:?}; expected F64 or U64")));
                }
            };
            *value = Value::Array(items);
        }
        Value::Object(map) => map.values_mut().try_for_each(|v| restore_arrays(v, tensors))?,
        Value::Array(items) => items.iter_mut().try_for_each(|v| restore_arrays(v, tensors))?,
        _ => {}
    }
    Ok(())
}
