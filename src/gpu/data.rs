//! Where the GPU backend's data live and how a batch reaches the kernels: the device-memory
//! budget that decides between resident data and data streamed from the host, the size check
//! that turns a buffer the device cannot hold into a clear error, and the gather kernel
//! (`shaders/gather.wgsl`) that assembles a shuffled minibatch from resident chunks on the
//! device; and the backend's side of it: the loaded chunks (resident, or streamed through a
//! ring of chunk buffers), the segments an evaluation visits, and the gathered-batch buffer
//! sets. This module must not change what a cost or gradient is (that is the plan,
//! `plan.rs`): a gathered or streamed row is a bit copy of the loaded row.

use std::ops::Range;
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use ndarray::{Array2, ArrayView2};

use super::device::Gpu;
use super::plumbing::poison as fill_nan;
use super::plumbing::{Op, bind_all, layout, pipeline, storage, u32_of, uniform, upload};
use crate::backend::Batch;
use crate::{Error, Result};

const GATHER: &str = include_str!("../../shaders/gather.wgsl");

/// Invocations per gather workgroup (`@workgroup_size` in gather.wgsl).
const GATHER_GROUP: u32 = 256;

/// Chunk buffers that streamed data cycle through. One submission per chunk orders a chunk's
/// upload after the previous users of its buffer, so one would be correct; two let a driver
/// that overlaps copies with compute fill the next chunk while the last one runs.
pub(super) const RING: usize = 2;

/// The default budget for resident data: four times the largest buffer the device allows,
/// at most 4 GiB. wgpu reports no memory size, and a buffer limit is a floor of what a
/// device can hold, not its size; this keeps MNIST-sized data (188 MB) resident everywhere,
/// and streams what would take a large share of a small GPU. Workspace is not counted.
pub fn default_max_resident_bytes(limits: &wgpu::Limits) -> u64 {
    limits.max_buffer_size.saturating_mul(4).min(4 << 30)
}

/// The largest buffer this backend may make: every buffer is bound whole as storage.
pub fn max_buffer_bytes(limits: &wgpu::Limits) -> u64 {
    limits.max_storage_buffer_binding_size.min(limits.max_buffer_size)
}

/// Refuses a buffer of `floats` 4-byte values for `rows` rows of `what` that the device
/// cannot make or bind, with what to do instead, rather than letting wgpu panic.
pub(super) fn check_buffer(limits: &wgpu::Limits, what: &str, rows: usize, floats: usize) -> Result<()> {
    let bytes = (floats as u64).saturating_mul(4);
    let max = max_buffer_bytes(limits);
    if bytes <= max {
        return Ok(());
    }
    Err(Error::Gpu(format!(
        "{what}: {rows} rows need one buffer of {} MiB, more than this device allows ({} MiB per buffer): \
         use fewer rows per chunk (GpuBackend::set_max_chunk_rows), a smaller --batch-size, or --backend cpu",
        bytes.div_ceil(1 << 20),
        max >> 20
    )))
}

/// The parameter block of gather.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct GatherParams {
    count: u32,
    width: u32,
    first: u32,
    rows: u32,
    idx_off: u32,
    stride: u32,
    _pad: [u32; 2],
}

/// The gather pipeline, compiled on first use.
pub(super) struct GatherKernel {
    layout: wgpu::BindGroupLayout,
    pipeline: wgpu::ComputePipeline,
}

/// Rows of one source chunk for [`GatherKernel::op`]: its buffer, the global index of its
/// first row, its rows.
pub(super) struct SourceRows<'a> {
    pub buf: &'a wgpu::Buffer,
    pub first: u32,
    pub rows: u32,
}

impl GatherKernel {
    pub fn new(device: &wgpu::Device) -> GatherKernel {
        let layout = layout(device, "gather", &[Some(true), Some(true), Some(false), None]);
        let pipeline = pipeline(device, &layout, GATHER, "gather");
        GatherKernel { layout, pipeline }
    }

    /// dst's `count` rows of `width` values = the rows of `src` that the batch positions
    /// `idx_off..idx_off + count` of `indices` name (the others are left as they are).
    #[allow(clippy::too_many_arguments)]
    pub fn op(
        &self,
        device: &wgpu::Device,
        indices: &wgpu::Buffer,
        idx_off: u32,
        count: u32,
        src: SourceRows<'_>,
        width: u32,
        dst: &wgpu::Buffer,
    ) -> Op {
        let max_groups = device.limits().max_compute_workgroups_per_dimension;
        let total = count.saturating_mul(width);
        let groups = total.div_ceil(GATHER_GROUP).clamp(1, max_groups);
        let p = GatherParams {
            count,
            width,
            first: src.first,
            rows: src.rows,
            idx_off,
            stride: groups * GATHER_GROUP,
            _pad: [0; 2],
        };
        let params = uniform(device, bytemuck::bytes_of(&p));
        let bind_group = bind_all(device, &self.layout, &[indices, src.buf, dst, &params]);
        Op::one(self.pipeline.clone(), bind_group, [groups, 1, 1])
    }
}

/// Rows of the loaded data held in one set of device buffers.
pub(super) struct Chunk {
    /// The examples (rows × inputs).
    pub(super) x: wgpu::Buffer,
    /// Real-valued targets (rows × outputs), when the targets are not the inputs.
    pub(super) y: Option<wgpu::Buffer>,
    /// Class labels as u32.
    pub(super) labels: Option<wgpu::Buffer>,
    /// Rows the buffers hold.
    pub(super) rows: usize,
}

/// Batch shapes (rows per gathered chunk) whose gathered-batch buffers, device gather and
/// plans are kept: two covers an epoch's full minibatches and its short last one. The least
/// recently used shape goes first.
pub const GATHER_SHAPES: usize = 2;

/// Which stored rows a pass over the data visits.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Segment {
    /// The buffers holding the rows.
    pub(super) chunk: Source,
    /// The first row visited, within the chunk.
    pub(super) row: usize,
    /// Rows visited.
    pub(super) rows: usize,
}

/// The loaded data's chunks, a chunk of a gathered-batch buffer set (by the set's serial
/// number, so that a plan built on one set's buffers never matches another set's visit), or a
/// ring buffer that streamed rows are uploaded into just before the submission that reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Source {
    Loaded(usize),
    Gathered { set: u64, chunk: usize },
    Streamed(usize),
}

/// The gathered-batch buffers of one batch shape and, once a batch of that shape is gathered
/// on the device, the batch's row indices (u32) and the recorded copies from every resident
/// chunk into `chunks`.
pub(super) struct GatherSet {
    /// Serial number: `Source::Gathered`'s `set`.
    pub(super) serial: u64,
    pub(super) chunks: Vec<Chunk>,
    pub(super) indices: Option<wgpu::Buffer>,
    pub(super) ops: Vec<Op>,
}

/// How one evaluation reaches its rows: the segments it visits, the global rows each
/// segment holds (what a streamed segment uploads), and whether the gathered batch is
/// assembled on the device first.
pub(super) struct Visit {
    pub(super) segments: Vec<Segment>,
    pub(super) rows: Vec<Range<usize>>,
    pub(super) gather: bool,
}

/// The loaded data, where they live, and the gathered-batch buffer sets: the backend's data
/// residency. Resident data sit in `chunks`; streamed data stay in `host_*` and pass through
/// the `ring` buffers; shuffled batches are assembled in the kept [`GatherSet`]s.
pub(super) struct Residency {
    /// Values per example and per target row (the network's inputs and outputs).
    inputs: usize,
    outputs: usize,
    /// Labels per example: T for a recurrent network with an output at every step (whose
    /// `outputs` are then T·k target values per example), else 1.
    pub(super) label_steps: usize,
    /// Rows in each chunk of the loaded data, resident or streamed.
    pub(super) chunk_rows: Vec<usize>,
    /// The resident chunks; empty when the data are streamed.
    chunks: Vec<Chunk>,
    /// The chunk buffers streamed rows are uploaded into (empty when resident).
    ring: Vec<Chunk>,
    /// Loaded data larger than this stay on the host and are streamed chunk by chunk.
    pub(super) max_resident_bytes: u64,
    /// The data on the host: streamed from, and gathered from when streaming. The caller's
    /// own array when it was handed over as `Inputs::Shared`, else a copy.
    host_x: Arc<Array2<f32>>,
    host_y: Option<Array2<f32>>,
    host_labels: Option<Vec<u32>>,
    /// Gathered-batch buffer sets, least recently used first; the last is the current batch's.
    gathered: Vec<GatherSet>,
    /// The gather kernel; `device_gather` off forces the host gather.
    gather_kernel: Option<GatherKernel>,
    pub(super) device_gather: bool,
    /// Bytes of examples, targets, labels and row indices written to the device so far.
    pub(super) data_bytes: u64,
    pub(super) max_chunk_rows: usize,
    /// Gathered-batch sets built so far (also the serial number of the latest).
    pub(super) sets_built: u64,
    /// The serial number of a gathered set dropped since the owner last looked: plans built on
    /// its buffers must go with it.
    pub(super) evicted: Option<u64>,
}

impl Residency {
    /// No data yet, for a network of `inputs` → `outputs` values per example.
    pub(super) fn new(inputs: usize, outputs: usize, max_chunk_rows: usize, max_resident_bytes: u64) -> Residency {
        Residency {
            inputs,
            outputs,
            label_steps: 1,
            chunk_rows: Vec::new(),
            chunks: Vec::new(),
            ring: Vec::new(),
            max_resident_bytes,
            host_x: Arc::new(Array2::zeros((0, 0))),
            host_y: None,
            host_labels: None,
            gathered: Vec::new(),
            gather_kernel: None,
            device_gather: true,
            data_bytes: 0,
            max_chunk_rows,
            sets_built: 0,
            evicted: None,
        }
    }

    /// Examples loaded.
    pub(super) fn num_examples(&self) -> usize {
        self.host_x.nrows()
    }

    /// Whether the loaded data are streamed from the host.
    pub(super) fn is_streaming(&self) -> bool {
        !self.ring.is_empty()
    }

    /// The gathered-batch set of the current batch (the most recently used).
    pub(super) fn current_set(&self) -> Option<&GatherSet> {
        self.gathered.last()
    }

    /// The ring buffer `slot` streamed rows are uploaded into.
    pub(super) fn ring(&self, slot: usize) -> &Chunk {
        &self.ring[slot]
    }

    /// Device buffers for a chunk of `rows` examples, to be filled later.
    pub(super) fn empty_chunk(&self, gpu: &Gpu, rows: usize, values: bool, labels: bool) -> Result<Chunk> {
        let device = &gpu.device;
        let (inputs, outputs) = (self.inputs, self.outputs);
        check_buffer(&gpu.limits, "a chunk of examples", rows, rows * inputs.max(outputs))?;
        Ok(Chunk {
            x: storage(device, "examples", rows * inputs),
            y: values.then(|| storage(device, "targets", rows * outputs)),
            labels: labels.then(|| storage(device, "labels", rows * self.label_steps)),
            rows,
        })
    }

    /// Device buffers holding `x` and, when given, `y` and `labels`. Errors: a chunk larger than
    /// one buffer of this device may be.
    pub(super) fn upload_chunk(
        gpu: &Gpu,
        x: ArrayView2<f32>,
        y: Option<ArrayView2<f32>>,
        labels: Option<&[u32]>,
    ) -> Result<Chunk> {
        let device = &gpu.device;
        let widest = x.ncols().max(y.map_or(0, |y| y.ncols()));
        check_buffer(&gpu.limits, "a chunk of examples", x.nrows(), x.nrows() * widest)?;
        Ok(Chunk {
            x: upload(device, "examples", bytemuck::cast_slice(&contiguous(x))),
            y: y.map(|y| upload(device, "targets", bytemuck::cast_slice(&contiguous(y)))),
            labels: labels.map(|l| upload(device, "labels", bytemuck::cast_slice(l))),
            rows: x.nrows(),
        })
    }

    /// Writes the loaded rows `rows` into the first rows of `chunk`; returns the bytes written.
    pub(super) fn write_rows(&self, gpu: &Gpu, chunk: &Chunk, rows: Range<usize>) -> u64 {
        let r = ndarray::s![rows.clone(), ..];
        let steps = self.label_steps;
        let labels = self.host_labels.as_ref().map(|l| &l[rows.start * steps..rows.end * steps]);
        write_chunk(&gpu.queue, chunk, self.host_x.slice(r), self.host_y.as_ref().map(|y| y.slice(r)), labels)
    }

    /// The buffers `source` names.
    pub(super) fn chunk(&self, source: Source) -> &Chunk {
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
    /// so both give the same numbers; scattered rows are gathered first (their buffers filled
    /// with NaN first under `poison`).
    pub(super) fn visit(&mut self, gpu: &Gpu, batch: &Batch, poison: bool) -> Result<Visit> {
        let n = self.host_x.nrows();
        batch.len_checked(n)?;
        let (start, end) = match batch {
            Batch::All => (0, n),
            Batch::Rows(r) => (r.start, r.end),
            Batch::Indices(ix) => return self.gather(gpu, ix, poison),
        };
        let streaming = self.is_streaming();
        let mut visit = Visit { segments: Vec::new(), rows: Vec::new(), gather: false };
        let mut first = 0;
        for (i, &rows) in self.chunk_rows.iter().enumerate() {
            let (lo, hi) = (start.max(first), end.min(first + rows));
            if lo < hi {
                let (chunk, row) = if streaming {
                    (Source::Streamed(visit.segments.len() % RING), 0)
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
    fn gather(&mut self, gpu: &Gpu, ix: &[usize], poison: bool) -> Result<Visit> {
        self.gather_set(gpu, &chunk_sizes(ix.len(), self.max_chunk_rows))?;
        let on_device = self.device_gather && !self.is_streaming();
        if on_device {
            if self.gathered.last().expect("made above").ops.is_empty() {
                self.record_gather(gpu, ix.len())?;
            }
            let set = self.gathered.last().expect("made above");
            let ix32: Vec<u32> = ix.iter().map(|&i| i as u32).collect();
            let q = &gpu.queue;
            if poison {
                for g in &set.chunks {
                    for buf in [Some(&g.x), g.y.as_ref(), g.labels.as_ref()].into_iter().flatten() {
                        fill_nan(q, buf);
                    }
                }
            }
            q.write_buffer(set.indices.as_ref().expect("made with the copies"), 0, bytemuck::cast_slice(&ix32));
            self.data_bytes += ix32.len() as u64 * 4;
        } else {
            let x = self.host_x.select(ndarray::Axis(0), ix);
            let y = self.host_y.as_ref().map(|y| y.select(ndarray::Axis(0), ix));
            let steps = self.label_steps;
            let labels = self
                .host_labels
                .as_ref()
                .map(|l| ix.iter().flat_map(|&i| l[i * steps..(i + 1) * steps].iter().copied()).collect::<Vec<u32>>());
            let mut start = 0;
            for g in &self.gathered.last().expect("made above").chunks {
                let r = start..start + g.rows;
                let rows = ndarray::s![r.clone(), ..];
                let ls = labels.as_ref().map(|l| &l[r.start * steps..r.end * steps]);
                let ys = y.as_ref().map(|y| y.slice(rows));
                self.data_bytes += write_chunk(&gpu.queue, g, x.slice(rows), ys, ls);
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
    /// least recently used once [`GATHER_SHAPES`] are kept (its serial number goes to
    /// `evicted`, so that its plans go with it).
    fn gather_set(&mut self, gpu: &Gpu, sizes: &[usize]) -> Result<()> {
        let kept = self.gathered.iter().position(|g| g.chunks.iter().map(|c| c.rows).eq(sizes.iter().copied()));
        if let Some(i) = kept {
            let set = self.gathered.remove(i);
            self.gathered.push(set);
            return Ok(());
        }
        let (values, labels) = (self.host_y.is_some(), self.host_labels.is_some());
        let chunks = sizes.iter().map(|&rows| self.empty_chunk(gpu, rows, values, labels)).collect::<Result<_>>()?;
        if self.gathered.len() >= GATHER_SHAPES {
            self.evicted = Some(self.gathered.remove(0).serial);
        }
        // Serial numbers are the count of sets built, so no two sets share one.
        self.sets_built += 1;
        self.gathered.push(GatherSet { serial: self.sets_built, chunks, indices: None, ops: Vec::new() });
        Ok(())
    }

    /// Records the device gather of a batch of `len` rows into the current gathered-batch
    /// buffer set: for each of its chunks, one copy from every resident chunk (each writes
    /// the rows whose index falls in its chunk).
    fn record_gather(&mut self, gpu: &Gpu, len: usize) -> Result<()> {
        let device = &gpu.device;
        let kernel = self.gather_kernel.get_or_insert_with(|| GatherKernel::new(device));
        let set = self.gathered.last_mut().expect("a current set");
        let indices = storage(device, "batch row indices", len);
        let u = |v: usize| u32_of(v, "a row index");
        let mut ops = Vec::new();
        let mut position = 0;
        for g in &set.chunks {
            let mut first = 0;
            for c in &self.chunks {
                let pairs = [(Some(&c.x), Some(&g.x), self.inputs)].into_iter().chain([
                    (c.y.as_ref(), g.y.as_ref(), self.outputs),
                    (c.labels.as_ref(), g.labels.as_ref(), self.label_steps),
                ]);
                for (src, dst, width) in pairs {
                    if let (Some(src), Some(dst)) = (src, dst) {
                        let rows = SourceRows { buf: src, first: u(first)?, rows: u(c.rows)? };
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

    /// Replaces the loaded data with `x` (and `y` or `labels`): uploaded chunk by chunk when
    /// they fit the resident budget, else kept on the host and streamed through the ring.
    /// Forgets every gathered set built on the old data (the owner drops its plans).
    pub(super) fn load(
        &mut self,
        gpu: &Gpu,
        x: Arc<Array2<f32>>,
        y: Option<Array2<f32>>,
        labels: Option<Vec<u32>>,
    ) -> Result<()> {
        self.gathered.clear();
        self.chunks.clear();
        self.ring.clear();
        self.chunk_rows.clear();
        let n = x.nrows();
        let sizes = chunk_sizes(n, self.max_chunk_rows);
        let per_row = x.ncols() + y.as_ref().map_or(0, |y| y.ncols()) + labels.is_some() as usize * self.label_steps;
        let streaming = (n as u64).saturating_mul(per_row as u64 * 4) > self.max_resident_bytes;
        if streaming {
            let rows = sizes.iter().copied().max().unwrap_or(1);
            self.ring =
                (0..RING).map(|_| self.empty_chunk(gpu, rows, y.is_some(), labels.is_some())).collect::<Result<_>>()?;
        } else {
            let mut start = 0;
            for &rows in &sizes {
                let r = ndarray::s![start..start + rows, ..];
                let chunk = Residency::upload_chunk(
                    gpu,
                    x.slice(r),
                    y.as_ref().map(|y| y.slice(r)),
                    labels.as_ref().map(|l| &l[start * self.label_steps..(start + rows) * self.label_steps]),
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
}

impl Residency {
    /// Writes `x` (and `y` or `labels`) over the loaded data in place, keeping the chunks,
    /// their buffers and so every plan recorded on them: for a caller that loads a new batch
    /// of the same shape every step (a character model's windows). Only when the loaded data
    /// are resident and `x`, `y` and `labels` have their rows, widths and kinds; otherwise
    /// nothing is written and they come back, for the caller to [`Residency::load`].
    pub(super) fn rewrite(&mut self, gpu: &Gpu, data: HostData) -> std::result::Result<(), HostData> {
        let (x, y, labels) = data;
        let fits = !self.chunks.is_empty()
            && x.dim() == self.host_x.dim()
            && y.as_ref().map(Array2::dim) == self.host_y.as_ref().map(Array2::dim)
            && labels.as_ref().map(Vec::len) == self.host_labels.as_ref().map(Vec::len);
        if !fits {
            return Err((x, y, labels));
        }
        let steps = self.label_steps;
        let mut start = 0;
        for chunk in &self.chunks {
            let r = ndarray::s![start..start + chunk.rows, ..];
            let ls = labels.as_ref().map(|l| &l[start * steps..(start + chunk.rows) * steps]);
            self.data_bytes += write_chunk(&gpu.queue, chunk, x.slice(r), y.as_ref().map(|y| y.slice(r)), ls);
            start += chunk.rows;
        }
        self.host_x = x;
        self.host_y = y;
        self.host_labels = labels;
        Ok(())
    }
}

/// Examples, real-valued targets and labels as the host holds them ([`Residency::rewrite`]).
pub(super) type HostData = (Arc<Array2<f32>>, Option<Array2<f32>>, Option<Vec<u32>>);

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

/// The values of `a` in row-major order.
pub(super) fn contiguous(a: ArrayView2<f32>) -> Vec<f32> {
    a.as_standard_layout().into_owned().into_raw_vec_and_offset().0
}

/// Rows per chunk when `n` rows are split into chunks of at most `max`.
pub(super) fn chunk_sizes(n: usize, max: usize) -> Vec<usize> {
    (0..n.div_ceil(max)).map(|i| max.min(n - i * max)).collect()
}
