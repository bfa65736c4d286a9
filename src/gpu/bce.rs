//! The GPU passes of a sigmoid output with the binary cross-entropy
//! ([`crate::model::Output::SigmoidBce`]), shared by the dense plan and the layer-stack plan
//! (whole batch, chunked, and minibatches gathered on the device all record them per
//! segment): the loss and δ from the logits (`shaders/loss.wgsl`, `sigmoid_bce`), and σ in
//! place for the forward pass (`sigmoid_in_place`).

use crate::Result;
use crate::gpu::device::Gpu;
use crate::gpu::kernels::{Kernels, Op, Small, SmallParams};
use crate::gpu::plumbing::u32_of;
use crate::model::NetSpec;

/// The binary cross-entropy of `rows` rows of logits `z` (rows × outputs, row-major) against
/// the 0/1 targets at element `y.1` of `y.0` (row stride: outputs): one partial sum of
/// max(z, 0) − z·y + log(1 + e^{−|z|}) per 16 × 16 tile into `partials` (⌈rows/16⌉·⌈outputs/16⌉
/// of them, summed afterwards in a fixed order), and with `want_grad` δ = σ(z) − y into
/// `delta` (rows × outputs).
#[allow(clippy::too_many_arguments)]
pub(in crate::gpu) fn bce_loss_op(
    gpu: &Gpu,
    kernels: &Kernels,
    spec: &NetSpec,
    z: &wgpu::Buffer,
    y: (&wgpu::Buffer, usize),
    rows: usize,
    delta: &wgpu::Buffer,
    partials: &wgpu::Buffer,
    want_grad: bool,
) -> Result<Op> {
    let u = |v: usize| u32_of(v, "an index");
    let outputs = spec.outputs();
    let p = SmallParams {
        rows: u(rows)?,
        cols: u(outputs)?,
        in_off: u(y.1)?,
        in_rs: u(outputs)?,
        flag: want_grad as u32,
        ..Default::default()
    };
    let groups = [u(outputs.div_ceil(16))?, u(rows.div_ceil(16))?, 1];
    Ok(kernels.small(&gpu.device, Small::SigmoidBce, Some(z), Some(y.0), Some(delta), Some(partials), p, groups))
}

/// σ(z) in place over `rows` rows of the output logits in `out`: the probabilities
/// P(yⱼ = 1 | x) the forward pass returns.
pub(in crate::gpu) fn sigmoid_in_place_op(
    gpu: &Gpu,
    kernels: &Kernels,
    spec: &NetSpec,
    out: &wgpu::Buffer,
    rows: usize,
) -> Result<Op> {
    let u = |v: usize| u32_of(v, "an index");
    let outputs = spec.outputs();
    let p = SmallParams { rows: u(rows)?, cols: u(outputs)?, ..Default::default() };
    let groups = [u(outputs.div_ceil(16))?, u(rows.div_ceil(16))?, 1];
    Ok(kernels.small(&gpu.device, Small::SigmoidInPlace, None, None, Some(out), None, p, groups))
}
