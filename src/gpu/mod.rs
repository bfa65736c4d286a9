//! The GPU backend: the same cost, gradient and forward pass as the CPU reference, in f32
//! WGSL kernels (`shaders/`) through wgpu. One call of cost-and-gradient records the whole
//! forward and backward pass — over every chunk of the data — and submits it; only the three
//! cost terms and (when asked) the gradient are read back.
//!
//! Data handling (`data.rs` holds the budget, the size check and the gather kernel):
//! - **Chunks.** The loaded rows are split into chunks that each fit one storage binding;
//!   a pass visits them in order and the gradient accumulates across them on the device.
//!   With sparsity, ρ̂ needs the whole batch's first hidden layer before any backward step,
//!   so the chunks are visited twice.
//! - **Resident** (data within `set_max_resident_bytes`, by default
//!   [`default_max_resident_bytes`]): the chunks are uploaded once by `set_data`, and an
//!   evaluation is one submission.
//! - **Streamed** (larger data): the rows stay on the host; each chunk is written into one
//!   of two ring buffers just before the submission that reads it, one submission per chunk
//!   visit. A `write_buffer` lands before the next submission and after the earlier ones,
//!   so reusing a ring buffer is safe; writes within one submission would not be ordered per
//!   dispatch, which is why there is no single-submission streaming. The recorded operations
//!   and chunk boundaries are those of the resident path, so the results are the same bits.
//! - **Shuffled minibatches** (`Batch::Indices`) are copied into gathered-batch buffers:
//!   with resident data by `shaders/gather.wgsl` from an uploaded u32 index list (4 bytes per
//!   row cross the bus), with streamed data (or `set_device_gather(false)`) on the host.
//! - A chunk or batch larger than one buffer may be is a clear error, not a wgpu panic.
//!
//! Recorded operations (bind groups, parameter blocks, workspace) are built once per batch
//! shape and reused. Gathered-batch buffers, with their device gather and plans, are kept for
//! the [`GATHER_SHAPES`] most recently used batch shapes, so an epoch's full minibatches and
//! its short last one do not rebuild them twice an epoch.

mod data;
mod device;
pub mod kernels;
pub mod layers;
mod texmatmul;
mod update;

use std::collections::HashMap;
use std::ops::Range;

use ndarray::{Array2, ArrayView2};
use wgpu::util::DeviceExt;

pub use data::{default_max_resident_bytes, max_buffer_bytes};
pub use device::{Api, Gpu, GpuOptions, MatmulKernel, adapters, choose_adapter, is_real_gpu, kind_name};
use kernels::{BLOCK_ROWS, Epilogue, Kernels, Op, Operand, Small, SmallParams};
pub use update::{StandaloneUpdate, Transfers, UPDATE_BLOCK};

use crate::backend::{Backend, Batch, Cost, DeviceTraining, Inputs, Targets};
use crate::cpu::{check_inputs, to_real, validate_data};
use crate::model::{Activation, NetSpec, Output, ThetaLayout};
use crate::{Error, Result};

/// Rows of the loaded data held in one set of device buffers.
struct Chunk {
    x: wgpu::Buffer,
    /// Real-valued targets (rows × outputs), when the targets are not the inputs.
    y: Option<wgpu::Buffer>,
    /// Class labels as u32.
    labels: Option<wgpu::Buffer>,
    rows: usize,
}

/// Batch shapes (rows per gathered chunk) whose gathered-batch buffers, device gather and
/// plans are kept: two covers an epoch's full minibatches and its short last one. The least
/// recently used shape goes first.
pub const GATHER_SHAPES: usize = 2;

/// Which stored rows a pass over the data visits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Segment {
    chunk: Source,
    row: usize,
    rows: usize,
}

/// The loaded data's chunks, a chunk of a gathered-batch buffer set (by the set's serial
/// number, so that a plan built on one set's buffers never matches another set's visit), or a
/// ring buffer that streamed rows are uploaded into just before the submission that reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    Loaded(usize),
    Gathered { set: u64, chunk: usize },
    Streamed(usize),
}

/// The gathered-batch buffers of one batch shape and, once a batch of that shape is gathered
/// on the device, the batch's row indices (u32) and the recorded copies from every resident
/// chunk into `chunks`.
struct GatherSet {
    /// Serial number: `Source::Gathered`'s `set`.
    serial: u64,
    chunks: Vec<Chunk>,
    indices: Option<wgpu::Buffer>,
    ops: Vec<Op>,
}

/// How one evaluation reaches its rows: the segments it visits, the global rows each
/// segment holds (what a streamed segment uploads), and whether the gathered batch is
/// assembled on the device first.
struct Visit {
    segments: Vec<Segment>,
    rows: Vec<Range<usize>>,
    gather: bool,
}

/// Recorded operations for one batch shape, with the workspace they write.
struct Plan {
    ops: Vec<Op>,
    /// (segment, first op) for each stretch of `ops` that reads one segment's rows (the
    /// ops between segments, ρ̂'s KL terms and Σ W², go with the stretch before them).
    /// Streamed data submit one stretch at a time, after uploading its segment.
    stages: Vec<(usize, usize)>,
    examples: usize,
    workspace: Vec<wgpu::Buffer>,
}

/// How many times the backend built device state that should be built once per shape and
/// then reused: gathered-batch buffer sets (with their device gather) and evaluation plans
/// (workspace, bind groups, parameter blocks). For tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Builds {
    pub gather_sets: u64,
    pub plans: u64,
}

pub struct GpuBackend {
    spec: NetSpec,
    layout: ThetaLayout,
    gpu: Gpu,
    kernels: Kernels,
    theta: wgpu::Buffer,
    grad: wgpu::Buffer,
    /// [data sum, Σ W², Σ β KL, unused] of the last evaluation.
    scalars: wgpu::Buffer,
    grad_staging: wgpu::Buffer,
    scalar_staging: wgpu::Buffer,
    /// Rows in each chunk of the loaded data, resident or streamed.
    chunk_rows: Vec<usize>,
    /// The resident chunks; empty when the data are streamed.
    chunks: Vec<Chunk>,
    /// The chunk buffers streamed rows are uploaded into (empty when resident).
    ring: Vec<Chunk>,
    /// Loaded data larger than this stay on the host and are streamed chunk by chunk.
    max_resident_bytes: u64,
    /// The data on the host: streamed from, and gathered from when streaming. The caller's
    /// own array when it was handed over as [`Inputs::Shared`], else a copy.
    host_x: std::sync::Arc<Array2<f32>>,
    host_y: Option<Array2<f32>>,
    host_labels: Option<Vec<u32>>,
    /// Gathered-batch buffer sets, least recently used first; the last is the current batch's.
    gathered: Vec<GatherSet>,
    /// The gather kernel; `device_gather` off forces the host gather.
    gather_kernel: Option<data::GatherKernel>,
    device_gather: bool,
    /// Bytes of examples, targets, labels and row indices written to the device so far.
    data_bytes: u64,
    max_chunk_rows: usize,
    plans: HashMap<(Vec<Segment>, bool), Plan>,
    builds: Builds,
    poison: bool,
    /// Minibatch training with θ kept on the device (`update.rs`), and the transfer counts.
    resident: update::Resident,
    /// The conv2d, pooling and maxout kernels, compiled for a layer-stack spec only.
    layer_kernels: Option<layers::LayerKernels>,
}

/// A storage buffer of `floats` f32 values (at least 4), usable as a copy source and target.
pub(crate) fn storage(device: &wgpu::Device, label: &str, floats: usize) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (floats.max(4) * 4) as u64,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// A buffer to copy `floats` f32 values (at least 4) into and map for reading.
pub(crate) fn staging(device: &wgpu::Device, label: &str, floats: usize) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (floats.max(4) * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    })
}

/// Fills `buf` with NaN, so that a value a kernel should have written and did not shows.
pub(crate) fn poison(queue: &wgpu::Queue, buf: &wgpu::Buffer) {
    queue.write_buffer(buf, 0, bytemuck::cast_slice(&vec![f32::NAN; (buf.size() / 4) as usize]));
}

/// Writes `values` (θ, a gradient, moments) into `buf` as f32.
pub(crate) fn write_f64(queue: &wgpu::Queue, buf: &wgpu::Buffer, values: &[f64]) {
    let v: Vec<f32> = values.iter().map(|&x| x as f32).collect();
    queue.write_buffer(buf, 0, bytemuck::cast_slice(&v));
}

/// A storage buffer holding `bytes`, usable as a copy source and target.
pub(crate) fn upload(device: &wgpu::Device, label: &str, bytes: &[u8]) -> wgpu::Buffer {
    // Buffers must not be empty; a 16-byte pad keeps tiny ones valid.
    let mut padded;
    let contents = if bytes.len() < 16 {
        padded = bytes.to_vec();
        padded.resize(16, 0);
        &padded[..]
    } else {
        bytes
    };
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some(label),
        contents,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
    })
}

fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Gpu(format!("{what} = {v} is beyond 32-bit indexing")))
}

impl GpuBackend {
    /// A GPU backend for `spec` on the adapter `options` select. Errors: a spec with layers
    /// beyond dense ([`GpuBackend::supports`]) before any adapter is opened.
    pub fn new(spec: NetSpec, options: &GpuOptions) -> Result<GpuBackend> {
        GpuBackend::supports(&spec)?;
        GpuBackend::on(spec, Gpu::open(options)?)
    }

    /// Whether this backend computes `spec`: every dense network and every layer stack of
    /// conv2d, max/mean pooling, maxout and dense layers (`layers/`). Recurrent layers (rnn,
    /// lstm) have no GPU kernels yet: refused in one line before an adapter is opened
    /// (`--backend auto` then picks the CPU).
    pub fn supports(spec: &NetSpec) -> Result<()> {
        match &spec.net {
            Some(stack) if stack.is_sequence() => Err(Error::Gpu(format!(
                "rnn/lstm layers run on the CPU backend for now: use --backend cpu (the network: {})",
                stack.describe()
            ))),
            _ => Ok(()),
        }
    }

    pub fn on(spec: NetSpec, gpu: Gpu) -> Result<GpuBackend> {
        spec.validate()?;
        GpuBackend::supports(&spec)?;
        let layout = ThetaLayout::new(&spec);
        let device = &gpu.device;
        let kernels = Kernels::new(&gpu);
        let params = layout.len();
        let binding = max_buffer_bytes(&gpu.limits);
        if (params as u64) * 4 > binding {
            return Err(Error::Gpu(format!(
                "θ has {params} values ({} MB), more than one storage binding of this device holds ({} MB): use a smaller network or --backend cpu",
                params * 4 / 1_000_000,
                binding / 1_000_000
            )));
        }
        let stack = layers::plan::StackLayers::of(&spec)?;
        let widest = match &stack {
            Some(stack) => stack.widest(&spec),
            None => spec.layers.iter().copied().max().unwrap_or(1),
        } as u64;
        let mut max_chunk_rows = ((binding / 4 / widest) as usize).clamp(1, 1 << 20);
        if gpu.matmul == MatmulKernel::Texture {
            // Chunks no taller than a texture, so that every product of a chunk (the data as A
            // in the forward pass, as B in the weight gradient) takes the texture-fed kernel.
            max_chunk_rows = max_chunk_rows.min(gpu.limits.max_texture_dimension_2d as usize);
        }
        Ok(GpuBackend {
            theta: storage(device, "θ", params),
            grad: storage(device, "∇J", params),
            scalars: storage(device, "cost terms", 4),
            grad_staging: staging(device, "∇J readback", params),
            scalar_staging: staging(device, "cost readback", 4),
            kernels,
            spec,
            layout,
            chunk_rows: Vec::new(),
            chunks: Vec::new(),
            ring: Vec::new(),
            max_resident_bytes: data::default_max_resident_bytes(&gpu.limits),
            host_x: std::sync::Arc::new(Array2::zeros((0, 0))),
            host_y: None,
            host_labels: None,
            gathered: Vec::new(),
            gather_kernel: None,
            device_gather: true,
            data_bytes: 0,
            max_chunk_rows,
            plans: HashMap::new(),
            builds: Builds::default(),
            poison: false,
            resident: update::Resident::default(),
            layer_kernels: stack.map(|_| layers::LayerKernels::new(device)),
            gpu,
        })
    }

    /// Caps the rows per chunk (tests use this to exercise chunking on small data). Takes
    /// effect at the next `set_data`.
    pub fn set_max_chunk_rows(&mut self, rows: usize) {
        self.max_chunk_rows = rows.max(1);
        self.plans.clear();
    }

    /// Loaded data needing more than `bytes` of device memory (examples, targets and labels)
    /// stay on the host and are streamed through two chunk buffers, one submission per
    /// chunk, instead of being uploaded once. Default: [`default_max_resident_bytes`]; tests
    /// set it low to stream small data. Takes effect at the next `set_data`.
    pub fn set_max_resident_bytes(&mut self, bytes: u64) {
        self.max_resident_bytes = bytes;
    }

    /// Whether the loaded data are streamed from the host (see `set_max_resident_bytes`).
    pub fn is_streaming(&self) -> bool {
        !self.ring.is_empty()
    }

    /// Whether shuffled minibatches of resident data are gathered on the device from an
    /// uploaded index list (the default) or on the host and uploaded row by row (for
    /// comparisons). Streamed data are always gathered on the host.
    pub fn set_device_gather(&mut self, on: bool) {
        self.device_gather = on;
    }

    /// Bytes of examples, targets, labels and batch row indices written to the device since
    /// the backend was made (θ is counted by [`GpuBackend::transfers`]).
    pub fn data_uploaded_bytes(&self) -> u64 {
        self.data_bytes
    }

    /// Gathered-batch buffer sets and evaluation plans built since the backend was made. For
    /// tests and diagnostics: a run that rebuilds them each step or epoch shows here.
    pub fn builds(&self) -> Builds {
        self.builds
    }

    /// Before every evaluation, fill the gradient, the cost terms and every workspace buffer
    /// with NaN, so that an element a kernel forgot to write shows up in the result. For tests.
    pub fn set_poison(&mut self, on: bool) {
        self.poison = on;
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Device buffers for a chunk of `rows` examples, to be filled later.
    fn empty_chunk(&self, rows: usize, values: bool, labels: bool) -> Result<Chunk> {
        let device = &self.gpu.device;
        let (inputs, outputs) = (self.spec.inputs(), self.spec.outputs());
        data::check_buffer(&self.gpu.limits, "a chunk of examples", rows, rows * inputs.max(outputs))?;
        Ok(Chunk {
            x: storage(device, "examples", rows * inputs),
            y: values.then(|| storage(device, "targets", rows * outputs)),
            labels: labels.then(|| storage(device, "labels", rows)),
            rows,
        })
    }

    fn upload_chunk(&self, x: ArrayView2<f32>, y: Option<ArrayView2<f32>>, labels: Option<&[u32]>) -> Result<Chunk> {
        let device = &self.gpu.device;
        let widest = x.ncols().max(y.map_or(0, |y| y.ncols()));
        data::check_buffer(&self.gpu.limits, "a chunk of examples", x.nrows(), x.nrows() * widest)?;
        Ok(Chunk {
            x: upload(device, "examples", bytemuck::cast_slice(&contiguous(x))),
            y: y.map(|y| upload(device, "targets", bytemuck::cast_slice(&contiguous(y)))),
            labels: labels.map(|l| upload(device, "labels", bytemuck::cast_slice(l))),
            rows: x.nrows(),
        })
    }

    /// Writes the loaded rows `rows` into the first rows of `chunk`; returns the bytes written.
    fn write_rows(&self, chunk: &Chunk, rows: Range<usize>) -> u64 {
        let r = ndarray::s![rows.clone(), ..];
        let labels = self.host_labels.as_ref().map(|l| &l[rows]);
        write_chunk(&self.gpu.queue, chunk, self.host_x.slice(r), self.host_y.as_ref().map(|y| y.slice(r)), labels)
    }

    fn chunk(&self, source: Source) -> &Chunk {
        match source {
            Source::Loaded(i) => &self.chunks[i],
            Source::Gathered { set, chunk } => {
                let set = self.gathered.iter().find(|g| g.serial == set);
                &set.expect("a plan outlived its gathered buffers").chunks[chunk]
            }
            Source::Streamed(i) => &self.ring[i],
        }
    }

    /// The segments a batch visits. Contiguous rows are visited where they lie (resident) or
    /// in the ring buffers (streamed), in the loaded chunks' order and boundaries either way,
    /// so both give the same numbers; scattered rows are gathered first.
    fn visit(&mut self, batch: &Batch) -> Result<Visit> {
        let n = self.host_x.nrows();
        batch.len_checked(n)?;
        let (start, end) = match batch {
            Batch::All => (0, n),
            Batch::Rows(r) => (r.start, r.end),
            Batch::Indices(ix) => return self.gather(ix),
        };
        let streaming = self.is_streaming();
        let mut visit = Visit { segments: Vec::new(), rows: Vec::new(), gather: false };
        let mut first = 0;
        for (i, &rows) in self.chunk_rows.iter().enumerate() {
            let (lo, hi) = (start.max(first), end.min(first + rows));
            if lo < hi {
                let (chunk, row) = if streaming {
                    (Source::Streamed(visit.segments.len() % data::RING), 0)
                } else {
                    (Source::Loaded(i), lo - first)
                };
                visit.segments.push(Segment { chunk, row, rows: hi - lo });
                visit.rows.push(lo..hi);
            }
            first += rows;
        }
        Ok(visit)
    }

    /// Gathers the rows `ix` into the gathered-batch buffers of their shape (made, or taken
    /// from the kept sets): on the device from an uploaded index list when the data are
    /// resident, else on the host.
    fn gather(&mut self, ix: &[usize]) -> Result<Visit> {
        self.gather_set(&chunk_sizes(ix.len(), self.max_chunk_rows))?;
        let on_device = self.device_gather && !self.is_streaming();
        if on_device {
            if self.gathered.last().expect("made above").ops.is_empty() {
                self.record_gather(ix.len())?;
            }
            let set = self.gathered.last().expect("made above");
            let ix32: Vec<u32> = ix.iter().map(|&i| i as u32).collect();
            let q = &self.gpu.queue;
            if self.poison {
                for g in &set.chunks {
                    for buf in [Some(&g.x), g.y.as_ref(), g.labels.as_ref()].into_iter().flatten() {
                        poison(q, buf);
                    }
                }
            }
            q.write_buffer(set.indices.as_ref().expect("made with the copies"), 0, bytemuck::cast_slice(&ix32));
            self.data_bytes += ix32.len() as u64 * 4;
        } else {
            let x = self.host_x.select(ndarray::Axis(0), ix);
            let y = self.host_y.as_ref().map(|y| y.select(ndarray::Axis(0), ix));
            let labels = self.host_labels.as_ref().map(|l| ix.iter().map(|&i| l[i]).collect::<Vec<u32>>());
            let mut start = 0;
            for g in &self.gathered.last().expect("made above").chunks {
                let r = start..start + g.rows;
                let rows = ndarray::s![r.clone(), ..];
                let (ys, ls) = (y.as_ref().map(|y| y.slice(rows)), labels.as_ref().map(|l| &l[r]));
                self.data_bytes += write_chunk(&self.gpu.queue, g, x.slice(rows), ys, ls);
                start += g.rows;
            }
        }
        let set = self.gathered.last().expect("made above");
        let segments = set.chunks.iter().enumerate().map(|(chunk, g)| Segment {
            chunk: Source::Gathered { set: set.serial, chunk },
            row: 0,
            rows: g.rows,
        });
        Ok(Visit { segments: segments.collect(), rows: Vec::new(), gather: on_device })
    }

    /// Makes the gathered-batch buffer set with chunks of `sizes` rows the current one (the
    /// last of `gathered`): a kept set when there is one, else a new set, which replaces the
    /// least recently used once [`GATHER_SHAPES`] are kept; that set's plans go with it.
    fn gather_set(&mut self, sizes: &[usize]) -> Result<()> {
        let kept = self.gathered.iter().position(|g| g.chunks.iter().map(|c| c.rows).eq(sizes.iter().copied()));
        if let Some(i) = kept {
            let set = self.gathered.remove(i);
            self.gathered.push(set);
            return Ok(());
        }
        let (values, labels) = (self.host_y.is_some(), self.host_labels.is_some());
        let chunks = sizes.iter().map(|&rows| self.empty_chunk(rows, values, labels)).collect::<Result<_>>()?;
        if self.gathered.len() >= GATHER_SHAPES {
            let old = self.gathered.remove(0).serial;
            self.plans.retain(|(segs, _), _| {
                !segs.iter().any(|s| matches!(s.chunk, Source::Gathered { set, .. } if set == old))
            });
        }
        // Serial numbers are the count of sets built, so no two sets share one.
        self.builds.gather_sets += 1;
        self.gathered.push(GatherSet { serial: self.builds.gather_sets, chunks, indices: None, ops: Vec::new() });
        Ok(())
    }

    /// Records the device gather of a batch of `len` rows into the current gathered-batch
    /// buffer set: for each of its chunks, one copy from every resident chunk (each writes
    /// the rows whose index falls in its chunk).
    fn record_gather(&mut self, len: usize) -> Result<()> {
        let device = &self.gpu.device;
        let kernel = self.gather_kernel.get_or_insert_with(|| data::GatherKernel::new(device));
        let set = self.gathered.last_mut().expect("a current set");
        let indices = storage(device, "batch row indices", len);
        let u = |v: usize| u32_of(v, "a row index");
        let mut ops = Vec::new();
        let mut position = 0;
        for g in &set.chunks {
            let mut first = 0;
            for c in &self.chunks {
                let pairs = [(Some(&c.x), Some(&g.x), self.spec.inputs())].into_iter().chain([
                    (c.y.as_ref(), g.y.as_ref(), self.spec.outputs()),
                    (c.labels.as_ref(), g.labels.as_ref(), 1),
                ]);
                for (src, dst, width) in pairs {
                    if let (Some(src), Some(dst)) = (src, dst) {
                        let rows = data::SourceRows { buf: src, first: u(first)?, rows: u(c.rows)? };
                        ops.push(kernel.op(device, &indices, u(position)?, u(g.rows)?, rows, u(width)?, dst));
                    }
                }
                first += c.rows;
            }
            position += g.rows;
        }
        set.ops = ops;
        set.indices = Some(indices);
        Ok(())
    }
    /// Builds the recorded operations for a pass over `segments`.
    fn build_plan(&self, segments: &[Segment], want_grad: bool) -> Result<Plan> {
        if self.spec.net.is_some() {
            return self.build_stack_plan(segments, want_grad);
        }
        let device = &self.gpu.device;
        let k = &self.kernels;
        let spec = &self.spec;
        let lay = &self.layout;
        let nl = lay.num_layers();
        let examples: usize = segments.iter().map(|s| s.rows).sum();
        let rows_max = segments.iter().map(|s| s.rows).max().unwrap_or(1);
        let widest_hidden = spec.layers[1..].iter().copied().max().unwrap_or(1);
        let u = |v: usize| u32_of(v, "an index");
        let inv_m = 1.0 / examples as f32;

        // Workspace, sized for the largest segment and reused by every segment in turn.
        let acts: Vec<wgpu::Buffer> =
            (0..nl).map(|l| storage(device, "activations", rows_max * spec.layers[l + 1])).collect();
        let deltas = [storage(device, "δ", rows_max * widest_hidden), storage(device, "δ'", rows_max * widest_hidden)];
        let col_partials = storage(device, "column partials", rows_max.div_ceil(BLOCK_ROWS as usize) * widest_hidden);
        let per_seg_loss = |rows: usize| match spec.output {
            Output::Softmax => rows,
            Output::SquaredError(_) | Output::SigmoidBce => rows.div_ceil(16) * spec.outputs().div_ceil(16),
        };
        let loss_partials = storage(device, "loss partials", per_seg_loss(rows_max));
        let hidden1 = spec.layers.get(1).copied().unwrap_or(1);
        // With sparsity: Σ σ(z⁽²⁾) then Σ σ(−z⁽²⁾) (ρ̂ and 1 − ρ̂, each summed on its own), the
        // pre-activations z⁽²⁾, and σ(−z⁽²⁾) (pass 1) or f′ = σ(z⁽²⁾)σ(−z⁽²⁾) (pass 2).
        let sparse_rows = if spec.sparsity.is_some() { rows_max } else { 0 };
        let colsum = storage(device, "Σ σ(z⁽²⁾), Σ σ(−z⁽²⁾)", 2 * hidden1);
        let kl = storage(device, "KL terms", 2 * hidden1);
        let z_hidden = storage(device, "z⁽²⁾", sparse_rows * hidden1);
        let complement = storage(device, "σ(−z⁽²⁾) or f′", sparse_rows * hidden1);

        let mut ops = Vec::new();
        let mut stages = Vec::new();
        // Column sums of rows × cols at `src`, times alpha, into dst[off..] (accumulating).
        let column_sum = |ops: &mut Vec<Op>,
                          src: &wgpu::Buffer,
                          rows: usize,
                          cols: usize,
                          dst: &wgpu::Buffer,
                          off: u32,
                          alpha: f32,
                          accumulate: bool|
         -> Result<()> {
            let blocks = rows.div_ceil(BLOCK_ROWS as usize);
            let p = SmallParams { rows: u(rows)?, cols: u(cols)?, in_rs: u(cols)?, ..Default::default() };
            ops.push(k.small(
                device,
                Small::ColumnPartials,
                Some(src),
                None,
                Some(&col_partials),
                None,
                p,
                [u(cols.div_ceil(64))?, u(blocks)?, 1],
            ));
            let p = SmallParams {
                cols: u(cols)?,
                out_off: off,
                alpha,
                flag: accumulate as u32,
                len: u(blocks)?,
                ..Default::default()
            };
            ops.push(k.small(
                device,
                Small::ColumnFinish,
                Some(&col_partials),
                None,
                Some(dst),
                None,
                p,
                [u(cols.div_ceil(64))?, 1, 1],
            ));
            Ok(())
        };
        let sparsity = spec.sparsity;
        // `flag` (sparse first layer only): 0 keeps σ(−z) in `complement`, 1 keeps f′.
        let forward_layer = |ops: &mut Vec<Op>, seg: &Segment, l: usize, flag: u32| -> Result<()> {
            let inp = lay.shapes[l].1;
            let input = if l == 0 { (&self.chunk(seg.chunk).x, seg.row * inp) } else { (&acts[l - 1], 0) };
            if l > 0 || sparsity.is_none() {
                ops.push(self.layer_op(l, input, seg.rows, &acts[l])?);
                return Ok(());
            }
            // z⁽²⁾ = x Wᵀ + b, then σ(z) and σ(−z) (or f′) each from z.
            ops.push(self.layer_op_with(l, input, seg.rows, &z_hidden, Activation::Identity)?);
            let p =
                SmallParams { rows: u(seg.rows)?, cols: u(hidden1)?, in_rs: u(hidden1)?, flag, ..Default::default() };
            let groups = [u(hidden1.div_ceil(16))?, u(seg.rows.div_ceil(16))?, 1];
            ops.push(k.small(
                device,
                Small::SigmoidComplement,
                Some(&z_hidden),
                None,
                Some(&acts[0]),
                Some(&complement),
                p,
                groups,
            ));
            Ok(())
        };

        // Pass 1 (sparsity only): ρ̂ and 1 − ρ̂ over the whole batch before any backward step.
        if let Some(s) = sparsity {
            for (i, seg) in segments.iter().enumerate() {
                stages.push((i, ops.len()));
                forward_layer(&mut ops, seg, 0, 0)?;
                column_sum(&mut ops, &acts[0], seg.rows, hidden1, &colsum, 0, 1.0, i > 0)?;
                column_sum(&mut ops, &complement, seg.rows, hidden1, &colsum, u(hidden1)?, 1.0, i > 0)?;
            }
            let p = SmallParams {
                cols: u(hidden1)?,
                alpha: inv_m,
                rho: s.target as f32,
                beta: s.weight as f32,
                ..Default::default()
            };
            ops.push(k.small(
                device,
                Small::KlTerms,
                Some(&colsum),
                None,
                Some(&kl),
                None,
                p,
                [u(hidden1.div_ceil(64))?, 1, 1],
            ));
            let p = SmallParams { in_off: u(hidden1)?, out_off: 2, len: u(hidden1)?, ..Default::default() };
            ops.push(k.small(device, Small::SumRange, Some(&kl), None, Some(&self.scalars), None, p, [1, 1, 1]));
        }

        // Pass 2: forward, loss and backward, segment by segment.
        for (i, seg) in segments.iter().enumerate() {
            stages.push((i, ops.len()));
            let chunk = self.chunk(seg.chunk);
            for l in 0..nl {
                forward_layer(&mut ops, seg, l, 1)?;
            }
            let out = &acts[nl - 1];
            let outputs = spec.outputs();
            let loss_len = per_seg_loss(seg.rows);
            // δ⁽ᴸ⁾ lands in `deltas[0]` (squared error) or in place of the probabilities (softmax).
            let delta_out: &wgpu::Buffer = match spec.output {
                Output::SquaredError(act) => {
                    let (y, y_off, y_rs) = match &chunk.y {
                        Some(y) => (y, seg.row * outputs, outputs),
                        None => (&chunk.x, seg.row * spec.inputs(), spec.inputs()),
                    };
                    let (code, leaky) = kernels::act_code(act);
                    let p = SmallParams {
                        rows: u(seg.rows)?,
                        cols: u(outputs)?,
                        in_off: u(y_off)?,
                        in_rs: u(y_rs)?,
                        act: code,
                        leaky_alpha: leaky,
                        flag: want_grad as u32,
                        ..Default::default()
                    };
                    let groups = [u(outputs.div_ceil(16))?, u(seg.rows.div_ceil(16))?, 1];
                    ops.push(k.small(
                        device,
                        Small::SquaredError,
                        Some(out),
                        Some(y),
                        Some(&deltas[0]),
                        Some(&loss_partials),
                        p,
                        groups,
                    ));
                    &deltas[0]
                }
                Output::SigmoidBce => {
                    let y = chunk.y.as_ref().expect("sigmoid-BCE data has 0/1 targets");
                    let y = (y, seg.row * outputs);
                    ops.push(self.bce_loss_op(out, y, seg.rows, &deltas[0], &loss_partials, want_grad)?);
                    &deltas[0]
                }
                Output::Softmax => {
                    let labels = chunk.labels.as_ref().expect("softmax data has labels");
                    let p = SmallParams {
                        rows: u(seg.rows)?,
                        cols: u(outputs)?,
                        aux_off: u(seg.row)?,
                        flag: 1,
                        ..Default::default()
                    };
                    ops.push(k.small(
                        device,
                        Small::Softmax,
                        None,
                        Some(labels),
                        Some(out),
                        Some(&loss_partials),
                        p,
                        [u(seg.rows.div_ceil(64))?, 1, 1],
                    ));
                    out
                }
            };
            let p = SmallParams { len: u(loss_len)?, out_off: 0, flag: (i > 0) as u32, ..Default::default() };
            ops.push(k.small(
                device,
                Small::SumRange,
                Some(&loss_partials),
                None,
                Some(&self.scalars),
                None,
                p,
                [1, 1, 1],
            ));
            if !want_grad {
                continue;
            }

            let mut delta = delta_out;
            let mut spare = 1;
            for l in (0..nl).rev() {
                let (out_w, inp) = lay.shapes[l];
                let a_prev = if l == 0 {
                    Operand::row_major(&chunk.x, u(seg.row * inp)?, u(inp)?)
                } else {
                    Operand::row_major(&acts[l - 1], 0, u(inp)?)
                };
                // ∇W = (1/m) δᵀ A (+ λW once), accumulated over segments.
                let decay = (i == 0 && spec.weight_decay != 0.0)
                    .then(|| (spec.weight_decay as f32, &self.theta, lay.weight_range(l).start as u32));
                let epilogue = Epilogue::Plain { alpha: inv_m, accumulate: i > 0, decay };
                let delta_t = Operand::row_major(delta, 0, u(out_w)?).t();
                let gw = (&self.grad, u(lay.weight_range(l).start)?, u(inp)?);
                ops.push(k.matmul(device, delta_t, a_prev, gw, (u(out_w)?, u(inp)?, u(seg.rows)?), epilogue));
                // ∇b = (1/m) Σᵢ δ
                column_sum(&mut ops, delta, seg.rows, out_w, &self.grad, u(lay.bias_range(l).start)?, inv_m, i > 0)?;
                if l == 0 {
                    break;
                }
                // δ⁽ˡ⁾ = (δ⁽ˡ⁺¹⁾ W (+ sparsity term)) ⊙ f′(a⁽ˡ⁾)
                let w = Operand::row_major(&self.theta, u(lay.weight_range(l).start)?, u(inp)?);
                let epilogue = if l == 1 && sparsity.is_some() {
                    let fprime = Operand::row_major(&complement, 0, u(inp)?);
                    Epilogue::DeltaGiven { kl: Some((&kl, 0)), fprime }
                } else {
                    Epilogue::Delta { kl: None, a_prev, act: spec.hidden_activations[l - 1] }
                };
                let next = &deltas[spare];
                let d = Operand::row_major(delta, 0, u(out_w)?);
                ops.push(k.matmul(device, d, w, (next, 0, u(inp)?), (u(seg.rows)?, u(inp)?, u(out_w)?), epilogue));
                delta = next;
                spare = 1 - spare;
            }
        }
        // (λ/2)‖W‖²: Σ W² over the weight prefix of θ. With λ = 0 an empty sum, 0: the term is
        // exactly 0 however large W is, and the device update's finiteness check of this slot
        // (update.wgsl) passes where Σ W² overflows f32.
        let decayed = if spec.weight_decay != 0.0 { lay.all_weights().len() } else { 0 };
        let p = SmallParams { act: 1, out_off: 1, len: u(decayed)?, ..Default::default() };
        ops.push(k.small(device, Small::SumRange, Some(&self.theta), None, Some(&self.scalars), None, p, [1, 1, 1]));

        let mut workspace = acts;
        workspace.extend(deltas);
        workspace.extend([col_partials, loss_partials, colsum, kl, z_hidden, complement]);
        Ok(Plan { ops, stages, examples, workspace })
    }

    /// One forward layer, Z = A Wᵀ + b then f, as a fused matmul: A is `rows` rows of the
    /// layer's input starting at element `input.1` of `input.0`; the activations go to `out`.
    /// A softmax output gets the identity here and its softmax from a separate kernel.
    fn layer_op(&self, l: usize, input: (&wgpu::Buffer, usize), rows: usize, out: &wgpu::Buffer) -> Result<Op> {
        let act = self.spec.activation_after(l).unwrap_or(Activation::Identity);
        self.layer_op_with(l, input, rows, out, act)
    }

    /// [`GpuBackend::layer_op`] with the activation `act` in place of the layer's own.
    fn layer_op_with(
        &self,
        l: usize,
        input: (&wgpu::Buffer, usize),
        rows: usize,
        out: &wgpu::Buffer,
        act: Activation,
    ) -> Result<Op> {
        let u = |v: usize| u32_of(v, "an index");
        let lay = &self.layout;
        let (out_w, inp) = lay.shapes[l];
        let a = Operand::row_major(input.0, u(input.1)?, u(inp)?);
        let w_t = Operand::row_major(&self.theta, u(lay.weight_range(l).start)?, u(inp)?).t();
        let epilogue = Epilogue::BiasAct { bias: (&self.theta, u(lay.bias_range(l).start)?), act };
        Ok(self.kernels.matmul(&self.gpu.device, a, w_t, (out, 0, u(out_w)?), (u(rows)?, u(out_w)?, u(inp)?), epilogue))
    }

    /// θ's length, and that every value is finite in f32.
    fn check_theta(&self, theta: &[f64]) -> Result<()> {
        crate::backend::check_theta_len(&self.spec, theta.len())?;
        crate::backend::check_theta_values(theta, f32::MAX as f64, "gpu f32")
    }

    /// The plan for `visit`'s segments (built on first use); its key.
    fn plan_for(&mut self, visit: &Visit, want_grad: bool) -> Result<(Vec<Segment>, bool)> {
        if self.chunk_rows.is_empty() {
            return Err(Error::Data("no data loaded: call set_data first".into()));
        }
        let key = (visit.segments.clone(), want_grad);
        if !self.plans.contains_key(&key) {
            let plan = self.build_plan(&visit.segments, want_grad)?;
            self.plans.insert(key.clone(), plan);
            self.builds.plans += 1;
        }
        Ok(key)
    }

    /// Fills the plan's workspace, the gradient and the cost terms with NaN (`set_poison`).
    fn poison_plan(&self, key: &(Vec<Segment>, bool)) {
        if self.poison {
            for buf in self.plans[key].workspace.iter().chain([&self.grad, &self.scalars]) {
                poison(&self.gpu.queue, buf);
            }
        }
    }

    /// Records and submits the plan `key` over `visit`: the device gather first (when the
    /// visit asks for it), then the plan's operations — in one submission when every segment
    /// is on the device, else one submission per stretch of a streamed segment, each after
    /// uploading that segment's rows into its ring buffer — then `last` at the end of the
    /// final compute pass and `finish` on the final encoder. Returns the bytes of data
    /// uploaded.
    fn submit_plan(
        &self,
        key: &(Vec<Segment>, bool),
        visit: &Visit,
        last: impl FnOnce(&mut wgpu::ComputePass<'_>),
        finish: impl FnOnce(&mut wgpu::CommandEncoder),
    ) -> u64 {
        let (gpu, plan) = (&self.gpu, &self.plans[key]);
        let streamed = visit.segments.iter().any(|s| matches!(s.chunk, Source::Streamed(_)));
        let stages: Vec<(Option<usize>, Range<usize>)> = if streamed {
            let ends = plan.stages.iter().skip(1).map(|s| s.1).chain([plan.ops.len()]);
            plan.stages.iter().zip(ends).map(|(&(seg, start), end)| (Some(seg), start..end)).collect()
        } else {
            vec![(None, 0..plan.ops.len())]
        };
        let (mut last, mut finish) = (Some(last), Some(finish));
        let mut holds = [None; data::RING];
        let mut bytes = 0;
        for (k, (seg, ops)) in stages.iter().enumerate() {
            if let Some(s) = *seg
                && let Source::Streamed(slot) = visit.segments[s].chunk
                && holds[slot] != Some(s)
            {
                bytes += self.write_rows(&self.ring[slot], visit.rows[s].clone());
                holds[slot] = Some(s);
            }
            let final_stage = k + 1 == stages.len();
            let mut encoder =
                gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("cost") });
            {
                let mut pass = encoder
                    .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("cost"), timestamp_writes: None });
                if k == 0 && visit.gather {
                    let set = self.gathered.last().expect("the visit gathered into it");
                    set.ops.iter().for_each(|op| op.record(&mut pass));
                }
                plan.ops[ops.clone()].iter().for_each(|op| op.record(&mut pass));
                if final_stage && let Some(last) = last.take() {
                    last(&mut pass);
                }
            }
            if final_stage && let Some(finish) = finish.take() {
                finish(&mut encoder);
            }
            gpu.queue.submit([encoder.finish()]);
        }
        bytes
    }

    /// Runs one evaluation: uploads θ, records the plan, submits it (once, or once per
    /// streamed chunk), reads back the cost terms and, when `grad` is given, the gradient.
    fn evaluate(&mut self, theta: &[f64], batch: Batch<'_>, grad: Option<&mut [f64]>) -> Result<Cost> {
        self.check_theta(theta)?;
        if self.chunk_rows.is_empty() {
            return Err(Error::Data("no data loaded: call set_data first".into()));
        }
        let visit = self.visit(&batch)?;
        let want_grad = grad.is_some();
        let key = self.plan_for(&visit, want_grad)?;
        self.resident.transfers.theta_uploads += 1;
        self.resident.transfers.grad_readbacks += want_grad as u64;
        let gpu = &self.gpu;
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        write_f64(&gpu.queue, &self.theta, theta);
        self.poison_plan(&key);
        let bytes = self.submit_plan(
            &key,
            &visit,
            |_| {},
            |encoder| {
                encoder.copy_buffer_to_buffer(&self.scalars, 0, &self.scalar_staging, 0, 16);
                if want_grad {
                    encoder.copy_buffer_to_buffer(&self.grad, 0, &self.grad_staging, 0, (theta.len() * 4) as u64);
                }
            },
        );
        self.data_bytes += bytes;
        let gpu = &self.gpu;
        let scalars = read_back(gpu, &self.scalar_staging, 4)?;
        if let Some(grad) = grad {
            let g = read_back(gpu, &self.grad_staging, theta.len())?;
            grad.iter_mut().zip(&g).for_each(|(o, &v)| *o = v as f64);
        }
        for s in [oom, scope] {
            if let Some(e) = pollster::block_on(s.pop()) {
                return Err(refused(gpu, e));
            }
        }
        Ok(self.cost_terms(&scalars, self.plans[&key].examples))
    }

    /// J's terms from the cost-terms buffer [data sum, Σ W², Σ β KL, …] of `examples` examples.
    fn cost_terms(&self, scalars: &[f32], examples: usize) -> Cost {
        let m = examples as f64;
        let data = match self.spec.output {
            Output::Softmax | Output::SigmoidBce => scalars[0] as f64 / m,
            Output::SquaredError(_) => 0.5 * scalars[0] as f64 / m,
        };
        let sparsity = if self.spec.sparsity.is_some() { scalars[2] as f64 } else { 0.0 };
        // λ = 0: exactly 0 (the plan sums no W² then).
        let lambda = self.spec.weight_decay;
        let weight_decay = if lambda == 0.0 { 0.0 } else { 0.5 * lambda * scalars[1] as f64 };
        Cost { data, weight_decay, sparsity }
    }
}

/// The error for work the device refused (a validation or out-of-memory error scope).
fn refused(gpu: &Gpu, e: wgpu::Error) -> Error {
    Error::Gpu(format!(
        "the device refused the work ({e}): it may be out of memory or over a limit ({} MiB per storage binding, {} MiB per buffer); try a smaller --batch-size, fewer examples (--limit), or --backend cpu",
        gpu.limits.max_storage_buffer_binding_size >> 20,
        gpu.limits.max_buffer_size >> 20
    ))
}

/// Maps a staging buffer and copies out `len` floats.
pub(crate) fn read_back(gpu: &Gpu, staging: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
    let slice = staging.slice(..(len.max(1) * 4) as u64);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
    rx.recv()
        .map_err(|_| Error::Gpu("the device never answered the read-back".into()))?
        .map_err(|e| Error::Gpu(format!("reading results back: {e}")))?;
    let out = {
        let view = slice.get_mapped_range().map_err(|e| Error::Gpu(format!("reading results back: {e}")))?;
        bytemuck::cast_slice::<u8, f32>(&view[..len * 4]).to_vec()
    };
    staging.unmap();
    Ok(out)
}

/// The values of `a` in row-major order.
/// Writes rows (examples, and targets and labels where the chunk has buffers for them) into
/// the first rows of `chunk`; returns the bytes written.
fn write_chunk(
    q: &wgpu::Queue,
    chunk: &Chunk,
    x: ArrayView2<f32>,
    y: Option<ArrayView2<f32>>,
    labels: Option<&[u32]>,
) -> u64 {
    let x = contiguous(x);
    q.write_buffer(&chunk.x, 0, bytemuck::cast_slice(&x));
    let mut bytes = x.len() * 4;
    if let (Some(buf), Some(y)) = (&chunk.y, y) {
        let y = contiguous(y);
        q.write_buffer(buf, 0, bytemuck::cast_slice(&y));
        bytes += y.len() * 4;
    }
    if let (Some(buf), Some(l)) = (&chunk.labels, labels) {
        q.write_buffer(buf, 0, bytemuck::cast_slice(l));
        bytes += l.len() * 4;
    }
    bytes as u64
}

fn contiguous(a: ArrayView2<f32>) -> Vec<f32> {
    a.as_standard_layout().into_owned().into_raw_vec_and_offset().0
}

/// Rows per chunk when `n` rows are split into chunks of at most `max`.
fn chunk_sizes(n: usize, max: usize) -> Vec<usize> {
    (0..n.div_ceil(max)).map(|i| max.min(n - i * max)).collect()
}

impl Backend for GpuBackend {
    fn name(&self) -> String {
        format!("gpu f32: {}", self.gpu.describe())
    }

    fn spec(&self) -> &NetSpec {
        &self.spec
    }

    fn set_data(&mut self, x: Inputs<'_>, targets: Targets<'_>) -> Result<()> {
        // The same checks as the CPU backend, so both refuse alike.
        validate_data(&self.spec, &x, &targets)?;
        // Row indices travel to the gather kernel as u32.
        u32_of(x.nrows(), "the number of examples")?;
        let x = match x {
            Inputs::Shared(x) => std::sync::Arc::clone(x),
            x => std::sync::Arc::new(to_real::<f32>(x)),
        };
        let y = match targets {
            Targets::Values(v) => Some(to_real::<f32>(v)),
            _ => None,
        };
        let labels = match targets {
            Targets::Labels(l) => Some(l.iter().map(|&v| v as u32).collect::<Vec<u32>>()),
            _ => None,
        };
        // Forget the old data's buffers before making new ones.
        self.plans.clear();
        self.gathered.clear();
        self.chunks.clear();
        self.ring.clear();
        self.chunk_rows.clear();
        let n = x.nrows();
        let sizes = chunk_sizes(n, self.max_chunk_rows);
        let per_row = x.ncols() + y.as_ref().map_or(0, |y| y.ncols()) + labels.is_some() as usize;
        let streaming = (n as u64).saturating_mul(per_row as u64 * 4) > self.max_resident_bytes;
        if streaming {
            let rows = sizes.iter().copied().max().unwrap_or(1);
            self.ring = (0..data::RING)
                .map(|_| self.empty_chunk(rows, y.is_some(), labels.is_some()))
                .collect::<Result<_>>()?;
        } else {
            let mut start = 0;
            for &rows in &sizes {
                let r = ndarray::s![start..start + rows, ..];
                let chunk = self.upload_chunk(
                    x.slice(r),
                    y.as_ref().map(|y| y.slice(r)),
                    labels.as_ref().map(|l| &l[start..start + rows]),
                )?;
                self.chunks.push(chunk);
                start += rows;
            }
            self.data_bytes += (n * per_row * 4) as u64;
        }
        self.chunk_rows = sizes;
        self.host_x = x;
        self.host_y = y;
        self.host_labels = labels;
        Ok(())
    }

    fn num_examples(&self) -> usize {
        self.host_x.nrows()
    }

    fn cost_and_grad(&mut self, theta: &[f64], batch: Batch<'_>, grad: &mut [f64]) -> Result<Cost> {
        if grad.len() != self.layout.len() {
            return Err(Error::Shape(format!(
                "gradient buffer has {} values, θ has {}",
                grad.len(),
                self.layout.len()
            )));
        }
        self.evaluate(theta, batch, Some(grad))
    }

    fn cost(&mut self, theta: &[f64], batch: Batch<'_>) -> Result<Cost> {
        self.evaluate(theta, batch, None)?.finite("gpu f32")
    }

    fn device_training(&mut self) -> Option<&mut dyn DeviceTraining> {
        if self.resident.disabled { None } else { Some(self) }
    }

    fn forward(&mut self, theta: &[f64], x: Inputs<'_>) -> Result<Vec<Array2<f64>>> {
        self.check_theta(theta)?;
        check_inputs(&self.spec, &x, "the input")?;
        let x = to_real::<f32>(x);
        write_f64(&self.gpu.queue, &self.theta, theta);
        self.resident.transfers.theta_uploads += 1;
        // One array per layer after the input: the stack's hidden layers (pooling too), or the
        // dense layers, then the output.
        let widths: Vec<usize> = match layers::plan::StackLayers::of(&self.spec)? {
            Some(stack) => stack.widths.iter().copied().chain([self.spec.outputs()]).collect(),
            None => self.spec.layers[1..].to_vec(),
        };
        let mut outputs: Vec<Array2<f64>> = widths.iter().map(|&w| Array2::zeros((0, w))).collect();
        let mut start = 0;
        while start < x.nrows() {
            let end = (start + self.max_chunk_rows).min(x.nrows());
            let chunk = self.upload_chunk(x.slice(ndarray::s![start..end, ..]), None, None)?;
            let acts = match self.spec.net {
                Some(_) => self.forward_stack_chunk(&chunk.x, chunk.rows)?,
                None => self.forward_chunk(&chunk)?,
            };
            for (o, a) in outputs.iter_mut().zip(acts) {
                o.append(ndarray::Axis(0), a.view()).expect("same width");
            }
            start = end;
        }
        Ok(outputs)
    }
}

impl GpuBackend {
    fn forward_chunk(&self, chunk: &Chunk) -> Result<Vec<Array2<f64>>> {
        let device = &self.gpu.device;
        let (lay, spec, k) = (&self.layout, &self.spec, &self.kernels);
        let u = |v: usize| u32_of(v, "an index");
        let rows = chunk.rows;
        let acts: Vec<wgpu::Buffer> =
            (0..lay.num_layers()).map(|l| storage(device, "activations", rows * spec.layers[l + 1])).collect();
        let mut ops = Vec::new();
        for l in 0..lay.num_layers() {
            let input = if l == 0 { (&chunk.x, 0) } else { (&acts[l - 1], 0) };
            ops.push(self.layer_op(l, input, rows, &acts[l])?);
        }
        if spec.output == Output::Softmax {
            let p = SmallParams { rows: u(rows)?, cols: u(spec.outputs())?, flag: 0, ..Default::default() };
            ops.push(k.small(device, Small::Softmax, None, None, acts.last(), None, p, [u(rows.div_ceil(64))?, 1, 1]));
        }
        if spec.output == Output::SigmoidBce {
            ops.push(self.sigmoid_in_place_op(acts.last().expect("a network has an output layer"), rows)?);
        }
        let total: usize = spec.layers[1..].iter().map(|w| w * rows).sum();
        let staging = staging(device, "activations readback", total);
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") });
        {
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("forward"), timestamp_writes: None });
            ops.iter().for_each(|op| op.record(&mut pass));
        }
        let mut off = 0u64;
        for (l, a) in acts.iter().enumerate() {
            let bytes = (rows * spec.layers[l + 1] * 4) as u64;
            encoder.copy_buffer_to_buffer(a, 0, &staging, off, bytes);
            off += bytes;
        }
        self.gpu.queue.submit([encoder.finish()]);
        let flat = read_back(&self.gpu, &staging, total)?;
        let mut out = Vec::new();
        let mut at = 0;
        for l in 0..lay.num_layers() {
            let w = spec.layers[l + 1];
            let a = Array2::from_shape_vec((rows, w), flat[at..at + rows * w].iter().map(|&v| v as f64).collect())
                .expect("sizes match");
            at += rows * w;
            out.push(a);
        }
        Ok(out)
    }
}
