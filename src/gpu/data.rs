//! Where the GPU backend's data live and how a batch reaches the kernels: the device-memory
//! budget that decides between resident data and data streamed from the host, the size check
//! that turns a buffer the device cannot hold into a clear error, and the gather kernel
//! (`shaders/gather.wgsl`) that assembles a shuffled minibatch from resident chunks on the
//! device. This module must not change what a cost or gradient is (that is `mod.rs`): a
//! gathered row is a bit copy of the loaded row.

use bytemuck::{Pod, Zeroable};

use super::kernels::{Op, bind_all, layout, pipeline, uniform};
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
