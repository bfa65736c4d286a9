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
//!
//! The rooms (DESIGN.md, "Wave 2"): `plumbing.rs` (buffers, staging, poison, uploads,
//! read-backs, pipelines, bind groups: a leaf), `params.rs` (the WGSL parameter blocks and
//! codes), `device.rs` (adapters and the open device), `kernels.rs` / `texmatmul.rs` /
//! `layers/` (the typed launchers), `data.rs` (data residency: chunks, streaming, gather),
//! `plan.rs` (the recorded passes), `backend.rs` ([`GpuBackend`]), `update.rs` (the device-side
//! update) and `training.rs` (minibatch training with θ on the device).

mod backend;
mod bce;
mod data;
mod device;
pub mod kernels;
pub mod layers;
mod params;
mod plan;
mod plumbing;
mod texmatmul;
mod training;
mod update;
mod windows;

pub use backend::{Builds, GpuBackend};
pub use data::{GATHER_SHAPES, default_max_resident_bytes, max_buffer_bytes};
pub use device::{Api, Gpu, GpuOptions, MatmulKernel, adapters, choose_adapter, is_real_gpu, kind_name};
pub(crate) use plumbing::{poison, staging, storage};
pub use update::{StandaloneUpdate, Transfers, UPDATE_BLOCK};

use crate::Result;

/// Maps `staging` (a buffer of `gpu`'s device) and copies out its first `len` floats.
pub(crate) fn read_back(gpu: &Gpu, staging: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
    plumbing::read_back(&gpu.device, staging, len)
}
