//! Device plumbing: storage and staging buffers, NaN poison, uploads and read-backs, bind-group
//! layouts, pipelines, and the recorded operation [`Op`] (pipeline + bind group + grid) that
//! every kernel launcher returns. It knows nothing of networks, data or kernels: a leaf that
//! imports nothing of ours but the crate's error type, so every other GPU module may use it.

use wgpu::util::DeviceExt;

use crate::{Error, Result};

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

/// `v` as a u32 index, or an error naming `what` when it is beyond 32-bit indexing.
pub(crate) fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Gpu(format!("{what} = {v} is beyond 32-bit indexing")))
}

/// Maps a staging buffer of `device` and copies out its first `len` floats (waits for the
/// device). Errors: the device lost or the mapping refused.
pub(crate) fn read_back(device: &wgpu::Device, staging: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
    let slice = staging.slice(..(len.max(1) * 4) as u64);
    let (tx, rx) = std::sync::mpsc::channel();
    slice.map_async(wgpu::MapMode::Read, move |r| {
        let _ = tx.send(r);
    });
    device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(format!("waiting for the device: {e}")))?;
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

/// One recorded operation: one dispatch, or (the texture-fed matmul) a few in order.
pub struct Op {
    steps: Vec<(wgpu::ComputePipeline, wgpu::BindGroup, [u32; 3])>,
}

impl Op {
    pub(super) fn one(pipeline: wgpu::ComputePipeline, bind_group: wgpu::BindGroup, groups: [u32; 3]) -> Op {
        Op { steps: vec![(pipeline, bind_group, groups)] }
    }

    pub(super) fn steps(steps: Vec<(wgpu::ComputePipeline, wgpu::BindGroup, [u32; 3])>) -> Op {
        Op { steps }
    }

    /// Records the dispatches into `pass`, in order.
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for (pipeline, bind_group, groups) in &self.steps {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
    }
}

/// The layout entry of a compute binding of type `ty`.
pub(crate) fn entry(binding: u32, ty: wgpu::BindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry { binding, visibility: wgpu::ShaderStages::COMPUTE, ty, count: None }
}

/// A buffer binding: Some(read_only) for a storage buffer, None for the uniform block.
pub(crate) fn buffer(kind: Option<bool>) -> wgpu::BindingType {
    wgpu::BindingType::Buffer {
        ty: match kind {
            Some(read_only) => wgpu::BufferBindingType::Storage { read_only },
            None => wgpu::BufferBindingType::Uniform,
        },
        has_dynamic_offset: false,
        min_binding_size: None,
    }
}

/// A layout of buffer bindings 0, 1, … of the kinds [`buffer`] takes.
pub(crate) fn layout(device: &wgpu::Device, label: &str, kinds: &[Option<bool>]) -> wgpu::BindGroupLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> =
        kinds.iter().enumerate().map(|(i, &kind)| entry(i as u32, buffer(kind))).collect();
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(label), entries: &entries })
}

/// A uniform buffer holding a kernel's parameter block.
pub(crate) fn uniform(device: &wgpu::Device, bytes: &[u8]) -> wgpu::Buffer {
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("params"),
        contents: bytes,
        usage: wgpu::BufferUsages::UNIFORM,
    })
}

pub(crate) fn pipeline(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    source: &str,
    entry: &str,
) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(entry),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(entry),
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    })
}

/// A bind group binding `buffers` in order, each whole.
pub(crate) fn bind_all(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(i, buf)| wgpu::BindGroupEntry { binding: i as u32, resource: buf.as_entire_binding() })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout, entries: &entries })
}
