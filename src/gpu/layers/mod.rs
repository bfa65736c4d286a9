//! The GPU kernels of the layers beyond dense (DESIGN.md, "Wave 2: a network is a stack of
//! layers"), one WGSL file per family beside its CPU twin in [`crate::layers`]:
//!
//! | kernel (WGSL entry)            | CPU twin                          | launcher                          |
//! |--------------------------------|-----------------------------------|-----------------------------------|
//! | `conv2d.wgsl` conv2d_forward   | `Conv2d::forward` (+ activation)  | [`LayerKernels::conv2d_forward`]  |
//! | conv2d_weight_grad (+ _finish) | `Conv2d::backward` ∇W, ∇b         | [`LayerKernels::conv2d_weight_grad`] |
//! | conv2d_input_grad              | `Conv2d::backward` ∂L/∂in (× f′)  | [`LayerKernels::conv2d_input_grad`] |
//! | `pool2d.wgsl` pool2d_forward   | `Pool2d::forward`                 | [`LayerKernels::pool2d_forward`]  |
//! | pool2d_backward                | `Pool2d::backward` (× f′)         | [`LayerKernels::pool2d_backward`] |
//! | `maxout.wgsl` maxout_forward   | `Maxout::forward`                 | [`LayerKernels::maxout_forward`]  |
//! | maxout_backward                | `Maxout::backward`                | [`LayerKernels::maxout_backward`] |
//!
//! Each launcher takes the layer's geometry as the CPU twin validated it and returns recorded
//! operations ([`Op`]); the parameter blocks ([`Conv2dParams`], [`Pool2dParams`],
//! [`MaxoutParams`]) mirror the WGSL structs field for field (tests/gpu_layers.rs checks sizes
//! and offsets against the WGSL parsed by naga). No kernel uses float atomics: every sum runs
//! in a fixed order, so results are the same bits run after run.
//!
//! The input gradients fuse "× f′ of the layer below" (read from that layer's stored output,
//! the kernel's own input), as the dense path's delta epilogue does, so a stack's backward pass
//! needs no separate elementwise step. `plan.rs` strings these into a network's evaluation.
//!
//! This module records kernels; it owns no data, θ or workspace.

pub(crate) mod plan;

use std::sync::OnceLock;

use bytemuck::{Pod, Zeroable};

use super::params::act_code;
use super::plumbing::{Op, bind_all, layout, pipeline, uniform};
use crate::layers::conv2d::Conv2d;
use crate::layers::maxout::Maxout;
use crate::layers::pool2d::{Pool2d, PoolKind};
use crate::model::Activation;
use crate::{Error, Result};

const COMMON: &str = include_str!("../../../shaders/common.wgsl");
/// The WGSL of each family (with the shared activations prepended at compile time): conv2d,
/// with the tile loop it shares with the matmul (tile_gemm.wgsl).
pub const CONV2D_WGSL: &str =
    concat!(include_str!("../../../shaders/tile_gemm.wgsl"), include_str!("../../../shaders/conv2d.wgsl"));
/// pool2d.wgsl: max and mean pooling, forward and backward.
pub const POOL2D_WGSL: &str = include_str!("../../../shaders/pool2d.wgsl");
/// maxout.wgsl: the max over pieces and its backward pass.
pub const MAXOUT_WGSL: &str = include_str!("../../../shaders/maxout.wgsl");
/// common.wgsl, which every family's source is compiled with.
pub const COMMON_WGSL: &str = COMMON;

/// Invocations per workgroup of the one-value-per-invocation kernels.
const GROUP: u64 = 64;
/// Rows of the patch matrix the weight gradient sums per slice, at least (fewer slices of
/// larger sums on small batches; at most [`MAX_SLICES`] slices).
const MIN_SLICE_ROWS: usize = 256;
/// Slices of the weight gradient's sum over the rows of the patch matrix, at most.
const MAX_SLICES: usize = 64;

/// conv2d.wgsl's parameter block: geometry (m images of c × h × w, f filters of k × k, stride
/// s, padding p, output h′ × w′), where the operands lie (input at `x_off`, W and b in θ at
/// `w_off`, `b_off`; ∇W and ∇b at `grad_w_off`, `grad_b_off`), the activation (forward: the
/// layer's; input gradient: the layer below's f′), and the weight gradient's α = 1/m,
/// accumulate flag, λ and slicing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct Conv2dParams {
    /// Images m in the chunk.
    pub images: u32,
    /// Input channels c.
    pub channels: u32,
    /// Input height h.
    pub height: u32,
    /// Input width w.
    pub width: u32,
    /// Filters f.
    pub filters: u32,
    /// Kernel side k.
    pub kernel: u32,
    /// Stride s.
    pub stride: u32,
    /// Zero padding p on every side.
    pub padding: u32,
    /// Output height h′ = (h + 2p − k)/s + 1.
    pub out_height: u32,
    /// Output width w′ = (w + 2p − k)/s + 1.
    pub out_width: u32,
    /// The input's first element.
    pub x_off: u32,
    /// W's offset in θ.
    pub w_off: u32,
    /// b's offset in θ.
    pub b_off: u32,
    /// Activation code ([`crate::gpu::kernels::ActCode`]): the layer's (forward) or the layer below's (input gradient).
    pub act: u32,
    /// The leaky ReLU slope.
    pub leaky_alpha: f32,
    /// α = 1/m of the weight gradient.
    pub alpha: f32,
    /// ∇W's offset in ∇J.
    pub grad_w_off: u32,
    /// ∇b's offset in ∇J.
    pub grad_b_off: u32,
    /// 1: add to ∇W and ∇b (later chunks).
    pub accumulate: u32,
    /// λ, added as λW (first chunk only).
    pub weight_decay: f32,
    /// Slices the weight gradient's sum over images is split into (summed in order after).
    pub slices: u32,
    /// Images per slice.
    pub slice_rows: u32,
    /// Padding to 16-byte alignment.
    pub _pad0: u32,
    /// Padding to 16-byte alignment.
    pub _pad1: u32,
}

/// pool2d.wgsl's parameter block: m images of c × h × w, k × k regions (`size`) every s
/// pixels giving h′ × w′, `kind` 0 mean / 1 max, the input at `x_off`, and (backward) the
/// layer below's activation whose f′ the input gradient is multiplied by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct Pool2dParams {
    /// Images m.
    pub images: u32,
    /// Channels c.
    pub channels: u32,
    /// Input height h.
    pub height: u32,
    /// Input width w.
    pub width: u32,
    /// Region side k.
    pub size: u32,
    /// Stride s between regions.
    pub stride: u32,
    /// Output height h′.
    pub out_height: u32,
    /// Output width w′.
    pub out_width: u32,
    /// 0 mean, 1 max.
    pub kind: u32,
    /// The input's first element.
    pub x_off: u32,
    /// The layer below's activation code (backward: × its f′).
    pub act: u32,
    /// The leaky ReLU slope.
    pub leaky_alpha: f32,
}

/// maxout.wgsl's parameter block: m rows of `units` units of k pieces (`pieces`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct MaxoutParams {
    /// Rows m.
    pub rows: u32,
    /// Units per row.
    pub units: u32,
    /// Pieces k per unit.
    pub pieces: u32,
    /// Padding to 16-byte alignment.
    pub _pad: u32,
}

fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Gpu(format!("{what} = {v} is beyond 32-bit indexing")))
}

/// A one-dimensional grid of `count` invocations in workgroups of 64, folded into a second
/// dimension past `max` workgroups (the kernels index gid.x + gid.y·64·nwg.x).
fn flat_grid(count: usize, max: u32) -> Result<[u32; 3]> {
    let groups = (count as u64).div_ceil(GROUP).max(1);
    let x = groups.min(max as u64);
    let y = groups.div_ceil(x);
    if y > max as u64 {
        return Err(Error::Gpu(format!(
            "{count} values need {groups} workgroups, more than this device dispatches: use a smaller --batch-size or --backend cpu"
        )));
    }
    Ok([x as u32, y as u32, 1])
}

/// Values of the weight gradient's partial sums at most (32 MiB of f32, a quarter of the
/// smallest storage binding wgpu guarantees): wide layers get fewer slices. One slice holds as
/// many values as W and b, which θ's own binding check bounds.
const MAX_PARTIALS: usize = 1 << 23;

/// (slices, rows per slice) of `conv`'s weight-gradient sum over the patch matrix's rows for
/// `images` images: a function of the shape only, so the bits are too.
pub fn conv2d_slices(conv: &Conv2d, images: usize) -> (usize, usize) {
    let rows = images * conv.output().plane();
    let per_slice = conv.filters * (conv.patch_len() + 1);
    let max_slices = (MAX_PARTIALS / per_slice.max(1)).clamp(1, MAX_SLICES);
    let slice_rows = rows.div_ceil(max_slices).max(MIN_SLICE_ROWS);
    (rows.div_ceil(slice_rows).max(1), slice_rows)
}

/// Values of the partial-sum buffer [`LayerKernels::conv2d_weight_grad`] needs for `images`.
pub fn conv2d_partials_len(conv: &Conv2d, images: usize) -> usize {
    let (slices, _) = conv2d_slices(conv, images);
    slices * conv.filters * (conv.patch_len() + 1)
}

/// A read-only or writable placeholder storage buffer for unused bindings.
fn placeholder(device: &wgpu::Device, label: &str) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    })
}

/// The entry points of the three families, in [`LayerKernels`]' pipeline slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Conv2dForward,
    Conv2dWeightGrad,
    Conv2dWeightGradFinish,
    Conv2dInputGrad,
    Pool2dForward,
    Pool2dBackward,
    MaxoutForward,
    MaxoutBackward,
}

impl Entry {
    const ALL: [Entry; 8] = [
        Entry::Conv2dForward,
        Entry::Conv2dWeightGrad,
        Entry::Conv2dWeightGradFinish,
        Entry::Conv2dInputGrad,
        Entry::Pool2dForward,
        Entry::Pool2dBackward,
        Entry::MaxoutForward,
        Entry::MaxoutBackward,
    ];

    /// The WGSL entry point's name.
    fn name(self) -> &'static str {
        match self {
            Entry::Conv2dForward => "conv2d_forward",
            Entry::Conv2dWeightGrad => "conv2d_weight_grad",
            Entry::Conv2dWeightGradFinish => "conv2d_weight_grad_finish",
            Entry::Conv2dInputGrad => "conv2d_input_grad",
            Entry::Pool2dForward => "pool2d_forward",
            Entry::Pool2dBackward => "pool2d_backward",
            Entry::MaxoutForward => "maxout_forward",
            Entry::MaxoutBackward => "maxout_backward",
        }
    }
}

/// The layer kernels of one device. Each pipeline is compiled on its first use and kept, so a
/// network pays only for the kinds it has (a software adapter compiles a pipeline in ~0.1–0.5 s).
pub struct LayerKernels {
    conv_layout: wgpu::BindGroupLayout,
    /// Pooling and maxout: input, δ, output, winners, parameters.
    max_layout: wgpu::BindGroupLayout,
    pipelines: [OnceLock<wgpu::ComputePipeline>; 8],
    dummy_read: wgpu::Buffer,
    dummy_winners: wgpu::Buffer,
    max_groups: u32,
}

impl LayerKernels {
    /// The layer kernels of `device`, each compiled on its first use.
    pub fn new(device: &wgpu::Device) -> LayerKernels {
        let (r, w) = (Some(true), Some(false));
        LayerKernels {
            conv_layout: layout(device, "conv2d", &[r, r, w, r, None]),
            max_layout: layout(device, "pool2d/maxout", &[r, r, w, w, None]),
            pipelines: Default::default(),
            dummy_read: placeholder(device, "unused input"),
            dummy_winners: placeholder(device, "unused winners"),
            max_groups: device.limits().max_compute_workgroups_per_dimension,
        }
    }

    /// The pipeline of `entry`, compiled on first use.
    fn pipeline(&self, device: &wgpu::Device, entry: Entry) -> &wgpu::ComputePipeline {
        let slot = Entry::ALL.iter().position(|&e| e == entry).expect("every entry has a slot");
        self.pipelines[slot].get_or_init(|| {
            let (layout, source) = match entry {
                Entry::Conv2dForward
                | Entry::Conv2dWeightGrad
                | Entry::Conv2dWeightGradFinish
                | Entry::Conv2dInputGrad => (&self.conv_layout, format!("{COMMON}\n{CONV2D_WGSL}")),
                Entry::Pool2dForward | Entry::Pool2dBackward => (&self.max_layout, format!("{COMMON}\n{POOL2D_WGSL}")),
                Entry::MaxoutForward | Entry::MaxoutBackward => (&self.max_layout, MAXOUT_WGSL.to_string()),
            };
            pipeline(device, layout, &source, entry.name())
        })
    }

    /// The geometry part of conv2d.wgsl's parameters for `images` images.
    pub fn conv2d_params(conv: &Conv2d, images: usize) -> Result<Conv2dParams> {
        let out = conv.output();
        let u = |v: usize| u32_of(v, "a conv2d size");
        // Every index the kernels form stays below the batch's input, output or patch-row count.
        u(images.saturating_mul(conv.input.len().max(out.len())))?;
        u(images.saturating_mul(out.plane()).saturating_mul(conv.patch_len() + 1))?;
        Ok(Conv2dParams {
            images: u(images)?,
            channels: u(conv.input.channels)?,
            height: u(conv.input.height)?,
            width: u(conv.input.width)?,
            filters: u(conv.filters)?,
            kernel: u(conv.kernel)?,
            stride: u(conv.stride)?,
            padding: u(conv.padding)?,
            out_height: u(out.height)?,
            out_width: u(out.width)?,
            ..Default::default()
        })
    }

    fn conv_op(
        &self,
        device: &wgpu::Device,
        entry: Entry,
        buffers: [&wgpu::Buffer; 4],
        p: &Conv2dParams,
        groups: [u32; 3],
    ) -> Op {
        let params = uniform(device, bytemuck::bytes_of(p));
        let [x, theta, out, delta] = buffers;
        let pipeline = self.pipeline(device, entry).clone();
        Op::one(pipeline, bind_all(device, &self.conv_layout, &[x, theta, out, delta, &params]), groups)
    }

    /// out (m × f·h′·w′, from element 0) = f(P Wᵀ + b) for the `images` images at element
    /// `input.1` of `input.0`, W (f × c·k·k) and b at elements `w_off`, `b_off` of `theta`.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_forward(
        &self,
        device: &wgpu::Device,
        conv: &Conv2d,
        images: usize,
        act: Activation,
        input: (&wgpu::Buffer, usize),
        theta: &wgpu::Buffer,
        (w_off, b_off): (usize, usize),
        out: &wgpu::Buffer,
    ) -> Result<Op> {
        let mut p = Self::conv2d_params(conv, images)?;
        (p.x_off, p.w_off, p.b_off) =
            (u32_of(input.1, "an offset")?, u32_of(w_off, "an offset")?, u32_of(b_off, "an offset")?);
        (p.act, p.leaky_alpha) = act_code(act);
        let tiles = (images * conv.output().plane()).div_ceil(64).max(1) as u32;
        let x = tiles.min(self.max_groups);
        let groups = [x, conv.filters.div_ceil(64) as u32, tiles.div_ceil(x)];
        Ok(self.conv_op(device, Entry::Conv2dForward, [input.0, theta, out, &self.dummy_read], &p, groups))
    }

    /// ∇W (f × c·k·k at `grad_w_off` of `grad`) and ∇b (f values at `grad_b_off`) =
    /// α·δᵀP and α·Σ δ, summed over the images in a fixed order (`partials` holds
    /// [`conv2d_partials_len`] values), plus the old values when `accumulate` and λW (W at
    /// `w_off` of `theta`) when `weight_decay` ≠ 0. δ = ∂L/∂z is m × f·h′·w′ from element 0.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_weight_grad(
        &self,
        device: &wgpu::Device,
        conv: &Conv2d,
        images: usize,
        input: (&wgpu::Buffer, usize),
        delta: &wgpu::Buffer,
        partials: &wgpu::Buffer,
        (theta, w_off): (&wgpu::Buffer, usize),
        (grad, grad_w_off, grad_b_off): (&wgpu::Buffer, usize, usize),
        (alpha, accumulate, weight_decay): (f32, bool, f32),
    ) -> Result<Vec<Op>> {
        let mut p = Self::conv2d_params(conv, images)?;
        let (slices, slice_rows) = conv2d_slices(conv, images);
        let off = |v: usize| u32_of(v, "an offset");
        (p.x_off, p.w_off, p.grad_w_off, p.grad_b_off) =
            (off(input.1)?, off(w_off)?, off(grad_w_off)?, off(grad_b_off)?);
        (p.alpha, p.accumulate, p.weight_decay) = (alpha, accumulate as u32, weight_decay);
        (p.slices, p.slice_rows) = (slices as u32, u32_of(slice_rows, "rows per slice")?);
        let cols = conv.patch_len() + 1;
        let sums = [cols.div_ceil(16) as u32, conv.filters.div_ceil(16) as u32, slices as u32];
        let finish = flat_grid(conv.filters * cols, self.max_groups)?;
        Ok(vec![
            self.conv_op(device, Entry::Conv2dWeightGrad, [input.0, theta, partials, delta], &p, sums),
            self.conv_op(device, Entry::Conv2dWeightGradFinish, [&self.dummy_read, theta, grad, partials], &p, finish),
        ])
    }

    /// out (m × c·h·w, from element 0) = ∂L/∂in ⊙ f′(in): each input pixel gathers the
    /// δ·W terms that read it (in the order f, i, j), then is multiplied by the derivative of
    /// `below` (the activation that produced the input; identity for none) read from the input
    /// at element `input.1` of `input.0`. δ is m × f·h′·w′ from element 0.
    #[allow(clippy::too_many_arguments)]
    pub fn conv2d_input_grad(
        &self,
        device: &wgpu::Device,
        conv: &Conv2d,
        images: usize,
        delta: &wgpu::Buffer,
        (theta, w_off): (&wgpu::Buffer, usize),
        input: (&wgpu::Buffer, usize),
        below: Activation,
        out: &wgpu::Buffer,
    ) -> Result<Op> {
        let mut p = Self::conv2d_params(conv, images)?;
        (p.x_off, p.w_off) = (u32_of(input.1, "an offset")?, u32_of(w_off, "an offset")?);
        (p.act, p.leaky_alpha) = act_code(below);
        let groups = flat_grid(images * conv.input.len(), self.max_groups)?;
        Ok(self.conv_op(device, Entry::Conv2dInputGrad, [input.0, theta, out, delta], &p, groups))
    }

    /// The geometry part of pool2d.wgsl's parameters for `images` images.
    pub fn pool2d_params(pool: &Pool2d, images: usize) -> Result<Pool2dParams> {
        let out = pool.output();
        let u = |v: usize| u32_of(v, "a pool2d size");
        u(images.saturating_mul(pool.input.len()))?;
        Ok(Pool2dParams {
            images: u(images)?,
            channels: u(pool.input.channels)?,
            height: u(pool.input.height)?,
            width: u(pool.input.width)?,
            size: u(pool.size)?,
            stride: u(pool.stride)?,
            out_height: u(out.height)?,
            out_width: u(out.width)?,
            kind: (pool.kind == PoolKind::Max) as u32,
            ..Default::default()
        })
    }

    fn max_op(
        &self,
        device: &wgpu::Device,
        entry: Entry,
        buffers: [&wgpu::Buffer; 4],
        bytes: &[u8],
        groups: [u32; 3],
    ) -> Op {
        let params = uniform(device, bytes);
        let [x, delta, out, winners] = buffers;
        let pipeline = self.pipeline(device, entry).clone();
        Op::one(pipeline, bind_all(device, &self.max_layout, &[x, delta, out, winners, &params]), groups)
    }

    /// out (m × c·h′·w′, from element 0) = the pooled `images` images at element `input.1`
    /// of `input.0`; for max pooling `winners` (u32, one per output value) receives each
    /// value's column in its example's input row. `winners` is ignored for mean pooling.
    pub fn pool2d_forward(
        &self,
        device: &wgpu::Device,
        pool: &Pool2d,
        images: usize,
        input: (&wgpu::Buffer, usize),
        out: &wgpu::Buffer,
        winners: Option<&wgpu::Buffer>,
    ) -> Result<Op> {
        let mut p = Self::pool2d_params(pool, images)?;
        p.x_off = u32_of(input.1, "an offset")?;
        let winners = winners.unwrap_or(&self.dummy_winners);
        let groups = flat_grid(images * pool.output().len(), self.max_groups)?;
        Ok(self.max_op(
            device,
            Entry::Pool2dForward,
            [input.0, &self.dummy_read, out, winners],
            bytemuck::bytes_of(&p),
            groups,
        ))
    }

    /// out (m × c·h·w, from element 0) = ∂L/∂in ⊙ f′(in) from δ = ∂L/∂out (m × c·h′·w′):
    /// mean spreads δ/k², max sends δ to the `winners` of the forward pass; `below` and the
    /// input (at element `input.1` of `input.0`) give the f′ as in
    /// [`LayerKernels::conv2d_input_grad`].
    #[allow(clippy::too_many_arguments)]
    pub fn pool2d_backward(
        &self,
        device: &wgpu::Device,
        pool: &Pool2d,
        images: usize,
        delta: &wgpu::Buffer,
        winners: Option<&wgpu::Buffer>,
        input: (&wgpu::Buffer, usize),
        below: Activation,
        out: &wgpu::Buffer,
    ) -> Result<Op> {
        let mut p = Self::pool2d_params(pool, images)?;
        p.x_off = u32_of(input.1, "an offset")?;
        (p.act, p.leaky_alpha) = act_code(below);
        let winners = match (pool.kind, winners) {
            (PoolKind::Max, None) => {
                return Err(Error::Gpu(format!(
                    "{}: the backward pass needs the forward pass's winners",
                    pool.describe()
                )));
            }
            (_, w) => w.unwrap_or(&self.dummy_winners),
        };
        let groups = flat_grid(images * pool.input.len(), self.max_groups)?;
        Ok(self.max_op(device, Entry::Pool2dBackward, [input.0, delta, out, winners], bytemuck::bytes_of(&p), groups))
    }

    fn maxout_params(max: &Maxout, rows: usize) -> Result<MaxoutParams> {
        u32_of(rows.saturating_mul(max.piece_count()), "a maxout size")?;
        Ok(MaxoutParams { rows: rows as u32, units: max.units as u32, pieces: max.pieces as u32, _pad: 0 })
    }

    /// out (rows × units) = the max over each unit's pieces of z (rows × units·k, from element
    /// 0), and `winners` (u32, rows × units) the column of z that won.
    pub fn maxout_forward(
        &self,
        device: &wgpu::Device,
        max: &Maxout,
        rows: usize,
        z: &wgpu::Buffer,
        out: &wgpu::Buffer,
        winners: &wgpu::Buffer,
    ) -> Result<Op> {
        let p = Self::maxout_params(max, rows)?;
        let groups = flat_grid(rows * max.units, self.max_groups)?;
        Ok(self.max_op(
            device,
            Entry::MaxoutForward,
            [z, &self.dummy_read, out, winners],
            bytemuck::bytes_of(&p),
            groups,
        ))
    }

    /// out = ∂L/∂z (rows × units·k, every value) from δ = ∂L/∂out (rows × units): δ at the
    /// winning piece, 0 at the others.
    pub fn maxout_backward(
        &self,
        device: &wgpu::Device,
        max: &Maxout,
        rows: usize,
        delta: &wgpu::Buffer,
        winners: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> Result<Op> {
        let p = Self::maxout_params(max, rows)?;
        let groups = flat_grid(rows * max.piece_count(), self.max_groups)?;
        Ok(self.max_op(
            device,
            Entry::MaxoutBackward,
            [&self.dummy_read, delta, out, winners],
            bytemuck::bytes_of(&p),
            groups,
        ))
    }
}
