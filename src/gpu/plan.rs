//! The plan: the recorded operations of one evaluation (forward pass, loss, backward pass,
//! Σ W²) for one batch shape, built once and replayed; the dense network's plan (MATH.md,
//! "Forward propagation", "Backpropagation", "Sparse autoencoder"), the recorded passes both
//! plans share (the output loss, column sums, a dense layer's gradients, Σ W²) — the layer
//! stack's plan is `layers/plan.rs` — and the submission of a plan over a visit's segments.
//!
//! This module must not decide where rows live (that is `data.rs`) nor own device state
//! beyond a plan's workspace.

use std::ops::Range;

use ndarray::Array2;

use super::data::{Chunk, RING, Residency, Segment, Source, Visit};
use super::device::Gpu;
use super::kernels::{self, BLOCK_ROWS, Epilogue, Kernels, Op, Operand, Small, SmallParams};
use super::params::{CostSlot, SumOf};
use super::plumbing::{read_back, staging, storage, u32_of};
use crate::Result;
use crate::model::{Activation, NetSpec, Output, ThetaLayout};

/// Values of the loss partials one segment of `rows` rows writes: one per row (softmax) or one
/// per 16 × 16 tile of the output (squared error, loss.wgsl's workgroups).
pub(super) fn loss_partials_len(spec: &NetSpec, rows: usize) -> usize {
    match spec.output {
        Output::Softmax => rows,
        Output::SquaredError(_) | Output::SigmoidBce => rows.div_ceil(16) * spec.outputs().div_ceil(16),
    }
}

/// Recorded operations for one batch shape, with the workspace they write.
pub(super) struct Plan {
    /// The operations, in recording order.
    pub(super) ops: Vec<Op>,
    /// (segment, first op) for each stretch of `ops` that reads one segment's rows (the
    /// ops between segments, ρ̂'s KL terms and Σ W², go with the stretch before them).
    /// Streamed data submit one stretch at a time, after uploading its segment.
    pub(super) stages: Vec<(usize, usize)>,
    /// Rows over all segments: the m of (1/m).
    pub(super) examples: usize,
    /// The buffers the operations write (poisoned with NaN under `set_poison`).
    pub(super) workspace: Vec<wgpu::Buffer>,
    /// A recurrent network's state for the batch (h, and c for an LSTM, per layer: see
    /// `layers/recurrent.rs`), not poisoned; empty for other networks.
    pub(super) state: Vec<wgpu::Buffer>,
    /// Where a sparse autoencoder's plan may be cut to take ρ̂ from other ranks; `None` for
    /// other networks.
    pub(super) shared_sparsity: Option<SharedSparsity>,
}

/// The cut of a sparse autoencoder's plan between its two passes, for data-parallel training
/// ([`submit_part`], `GpuBackend::evaluate_sharing_sparsity`): `ops[..cut]` is pass 1 (the
/// first layer's forward pass and the column sums Σᵢ σ(z⁽²⁾ᵢⱼ), Σᵢ σ(−z⁽²⁾ᵢⱼ) into `colsum`);
/// `ops[cut]` turns `colsum` into the KL terms with α = 1/m of this batch alone, and is
/// replaced by `kl_from_means` (α = 1: `colsum` then holds ρ̂ and 1 − ρ̂ of all ranks, written
/// from the host); `ops[cut + 1..]` is the sparsity term's sum and pass 2.
pub(super) struct SharedSparsity {
    /// Index of the KL-terms op in the plan's ops.
    pub(super) cut: usize,
    /// The KL terms from means written into `colsum` (α = 1).
    pub(super) kl_from_means: Op,
    /// Σ σ(z⁽²⁾) then Σ σ(−z⁽²⁾), 2 × hidden values (then ρ̂ and 1 − ρ̂).
    pub(super) colsum: wgpu::Buffer,
    /// Where `colsum` is copied to be read back.
    pub(super) staging: wgpu::Buffer,
    /// Hidden units: `colsum` holds twice as many values.
    pub(super) hidden: usize,
}

/// What recording a plan reads: the device, the compiled kernels, the network and θ's layout,
/// the device buffers of θ, ∇J and the cost terms ([data sum, Σ W², Σ β KL, ‖∇J‖²]), and the
/// data's residency (for the buffers each segment's rows lie in).
pub(super) struct Recorder<'a> {
    pub(super) gpu: &'a Gpu,
    pub(super) kernels: &'a Kernels,
    pub(super) spec: &'a NetSpec,
    pub(super) layout: &'a ThetaLayout,
    pub(super) theta: &'a wgpu::Buffer,
    pub(super) grad: &'a wgpu::Buffer,
    pub(super) scalars: &'a wgpu::Buffer,
    pub(super) data: &'a Residency,
}

impl Recorder<'_> {
    /// Builds the recorded operations for a pass over `segments`.
    pub(super) fn build_plan(&self, segments: &[Segment], want_grad: bool) -> Result<Plan> {
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
        let loss_partials = storage(device, "loss partials", loss_partials_len(spec, rows_max));
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
        let mut shared_sparsity = None;
        let sparsity = spec.sparsity;
        // `flag` (sparse first layer only): 0 keeps σ(−z) in `complement`, 1 keeps f′.
        let forward_layer = |ops: &mut Vec<Op>, seg: &Segment, l: usize, flag: u32| -> Result<()> {
            let inp = lay.shapes[l].1;
            let input = if l == 0 { (&self.data.chunk(seg.chunk).x, seg.row * inp) } else { (&acts[l - 1], 0) };
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
                let (partials, shape) = (&col_partials, (seg.rows, hidden1));
                self.record_column_sum(&mut ops, partials, &acts[0], shape, (&colsum, 0), 1.0, i > 0)?;
                self.record_column_sum(&mut ops, partials, &complement, shape, (&colsum, hidden1), 1.0, i > 0)?;
            }
            let p = SmallParams {
                cols: u(hidden1)?,
                alpha: inv_m,
                rho: s.target as f32,
                beta: s.weight as f32,
                ..Default::default()
            };
            let kl_op = |p: SmallParams| -> Result<Op> {
                let groups = [u(hidden1.div_ceil(64))?, 1, 1];
                Ok(k.small(device, Small::KlTerms, Some(&colsum), None, Some(&kl), None, p, groups))
            };
            shared_sparsity = Some(SharedSparsity {
                cut: ops.len(),
                kl_from_means: kl_op(SmallParams { alpha: 1.0, ..p })?,
                colsum: colsum.clone(),
                staging: staging(device, "Σ σ(z⁽²⁾), Σ σ(−z⁽²⁾) readback", 2 * hidden1),
                hidden: hidden1,
            });
            ops.push(kl_op(p)?);
            let p = SmallParams {
                in_off: u(hidden1)?,
                out_off: CostSlot::Sparsity as u32,
                len: u(hidden1)?,
                ..Default::default()
            };
            ops.push(k.small(device, Small::SumRange, Some(&kl), None, Some(self.scalars), None, p, [1, 1, 1]));
        }

        // Pass 2: forward, loss and backward, segment by segment.
        for (i, seg) in segments.iter().enumerate() {
            stages.push((i, ops.len()));
            let chunk = self.data.chunk(seg.chunk);
            for l in 0..nl {
                forward_layer(&mut ops, seg, l, 1)?;
            }
            let out = &acts[nl - 1];
            let delta_out = self.record_loss(&mut ops, seg, out, &deltas[0], &loss_partials, want_grad, i == 0)?;
            if !want_grad {
                continue;
            }

            let mut delta = delta_out;
            let mut spare = 1;
            for l in (0..nl).rev() {
                let inp = lay.shapes[l].1;
                let a_prev = if l == 0 {
                    Operand::row_major(&chunk.x, u(seg.row * inp)?, u(inp)?)
                } else {
                    Operand::row_major(&acts[l - 1], 0, u(inp)?)
                };
                self.record_dense_grads(&mut ops, &col_partials, l, a_prev, delta, seg.rows, inv_m, i == 0)?;
                if l == 0 {
                    break;
                }
                // δ⁽ˡ⁾ = (δ⁽ˡ⁺¹⁾ W (+ sparsity term)) ⊙ f′(a⁽ˡ⁾)
                let epilogue = if l == 1 && sparsity.is_some() {
                    let fprime = Operand::row_major(&complement, 0, u(inp)?);
                    Epilogue::DeltaGiven { kl: Some((&kl, 0)), fprime }
                } else {
                    Epilogue::Delta { kl: None, a_prev, act: spec.hidden_activations[l - 1] }
                };
                let next = &deltas[spare];
                self.record_delta_below(&mut ops, l, delta, next, seg.rows, epilogue)?;
                delta = next;
                spare = 1 - spare;
            }
        }
        self.record_weight_squares(&mut ops)?;

        let mut workspace = acts;
        workspace.extend(deltas);
        workspace.extend([col_partials, loss_partials, colsum, kl, z_hidden, complement]);
        Ok(Plan { ops, stages, examples, workspace, state: Vec::new(), shared_sparsity })
    }

    /// Column sums through the two-pass reduction of reduce.wgsl (blocks of [`BLOCK_ROWS`]
    /// rows into `partials`, then the blocks in order — no float atomics):
    /// dst[off + j] = alpha Σᵢ src[i, j] over the `rows` × `cols` rows of `src`, plus the old
    /// dst[off + j] when `accumulate`. Used for ∇b = (1/m) Σᵢ δ and for ρ̂'s sums.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_column_sum(
        &self,
        ops: &mut Vec<Op>,
        partials: &wgpu::Buffer,
        src: &wgpu::Buffer,
        (rows, cols): (usize, usize),
        (dst, off): (&wgpu::Buffer, usize),
        alpha: f32,
        accumulate: bool,
    ) -> Result<()> {
        let (device, k) = (&self.gpu.device, self.kernels);
        let u = |v: usize| u32_of(v, "an index");
        let blocks = rows.div_ceil(BLOCK_ROWS as usize);
        let p = SmallParams { rows: u(rows)?, cols: u(cols)?, in_rs: u(cols)?, ..Default::default() };
        let groups = [u(cols.div_ceil(64))?, u(blocks)?, 1];
        ops.push(k.small(device, Small::ColumnPartials, Some(src), None, Some(partials), None, p, groups));
        let p = SmallParams {
            cols: u(cols)?,
            out_off: u(off)?,
            alpha,
            flag: accumulate as u32,
            len: u(blocks)?,
            ..Default::default()
        };
        let groups = [u(cols.div_ceil(64))?, 1, 1];
        ops.push(k.small(device, Small::ColumnFinish, Some(partials), None, Some(dst), None, p, groups));
        Ok(())
    }

    /// The output layer's loss on one segment (MATH.md, "Cost function" and "Softmax
    /// regression"): squared error ½‖a − y‖² (targets from the chunk's y, or its x for an
    /// autoencoder) with δ⁽ᴸ⁾ = (a − y) ⊙ f′(a) into `delta` when `want_grad`, or softmax
    /// cross-entropy −log p_y with δ⁽ᴸ⁾ = p − onehot(y) in place of `out`'s activations; then
    /// its partial sums added, in a fixed order, to the data slot of the cost terms (replacing
    /// it on the `first` segment). Returns the buffer holding δ⁽ᴸ⁾ (m × outputs).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_loss<'b>(
        &self,
        ops: &mut Vec<Op>,
        seg: &Segment,
        out: &'b wgpu::Buffer,
        delta: &'b wgpu::Buffer,
        partials: &wgpu::Buffer,
        want_grad: bool,
        first: bool,
    ) -> Result<&'b wgpu::Buffer> {
        let (device, k, spec) = (&self.gpu.device, self.kernels, self.spec);
        let u = |v: usize| u32_of(v, "an index");
        let chunk = self.data.chunk(seg.chunk);
        let outputs = spec.outputs();
        let delta_out = match spec.output {
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
                    Some(delta),
                    Some(partials),
                    p,
                    groups,
                ));
                delta
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
                let groups = [u(seg.rows.div_ceil(64))?, 1, 1];
                ops.push(k.small(device, Small::Softmax, None, Some(labels), Some(out), Some(partials), p, groups));
                out
            }
            Output::SigmoidBce => {
                let y = chunk.y.as_ref().expect("sigmoid-BCE data has 0/1 targets");
                let y = (y, seg.row * outputs);
                ops.push(super::bce::bce_loss_op(self.gpu, k, spec, out, y, seg.rows, delta, partials, want_grad)?);
                delta
            }
        };
        let len = loss_partials_len(spec, seg.rows);
        let p = SmallParams { len: u(len)?, out_off: CostSlot::Data as u32, flag: !first as u32, ..Default::default() };
        ops.push(k.small(device, Small::SumRange, Some(partials), None, Some(self.scalars), None, p, [1, 1, 1]));
        Ok(delta_out)
    }

    /// Dense layer `l`'s gradients from its δ (`rows` × out) and input A (`a_prev`, `rows` ×
    /// in), accumulated over segments (MATH.md, "Backpropagation"): ∇W = (1/m) δᵀ A, plus λW on
    /// the `first` segment when λ ≠ 0, and ∇b = (1/m) Σᵢ δ (through `partials`).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_dense_grads(
        &self,
        ops: &mut Vec<Op>,
        partials: &wgpu::Buffer,
        l: usize,
        a_prev: Operand,
        delta: &wgpu::Buffer,
        rows: usize,
        inv_m: f32,
        first: bool,
    ) -> Result<()> {
        let (device, lay, spec) = (&self.gpu.device, self.layout, self.spec);
        let u = |v: usize| u32_of(v, "an index");
        let (out_w, inp) = lay.shapes[l];
        let decay = (first && spec.weight_decay != 0.0)
            .then(|| (spec.weight_decay as f32, self.theta, lay.weight_range(l).start as u32));
        let epilogue = Epilogue::Plain { alpha: inv_m, accumulate: !first, decay };
        let delta_t = Operand::row_major(delta, 0, u(out_w)?).t();
        let gw = (self.grad, u(lay.weight_range(l).start)?, u(inp)?);
        ops.push(self.kernels.matmul(device, delta_t, a_prev, gw, (u(out_w)?, u(inp)?, u(rows)?), epilogue));
        let bias = (self.grad, lay.bias_range(l).start);
        self.record_column_sum(ops, partials, delta, (rows, out_w), bias, inv_m, !first)
    }

    /// The δ of the layer below dense layer `l`: (δ W) then `epilogue` (which multiplies by
    /// the lower layer's f′, MATH.md "Backpropagation"), `rows` × in, into `next`.
    pub(super) fn record_delta_below(
        &self,
        ops: &mut Vec<Op>,
        l: usize,
        delta: &wgpu::Buffer,
        next: &wgpu::Buffer,
        rows: usize,
        epilogue: Epilogue,
    ) -> Result<()> {
        let u = |v: usize| u32_of(v, "an index");
        let lay = self.layout;
        let (out_w, inp) = lay.shapes[l];
        let w = Operand::row_major(self.theta, u(lay.weight_range(l).start)?, u(inp)?);
        let d = Operand::row_major(delta, 0, u(out_w)?);
        let shape = (u(rows)?, u(inp)?, u(out_w)?);
        ops.push(self.kernels.matmul(&self.gpu.device, d, w, (next, 0, u(inp)?), shape, epilogue));
        Ok(())
    }

    /// Σ W² over the weight prefix of θ into the weight-decay slot of the cost terms, for
    /// (λ/2)‖W‖² (MATH.md, "Cost function"). With λ = 0 an empty sum, 0: the term is exactly 0
    /// however large W is, and the device update's finiteness check of this slot
    /// (update.wgsl) passes where Σ W² overflows f32.
    pub(super) fn record_weight_squares(&self, ops: &mut Vec<Op>) -> Result<()> {
        let decayed = if self.spec.weight_decay != 0.0 { self.layout.all_weights().len() } else { 0 };
        let p = SmallParams {
            act: SumOf::Squares as u32,
            out_off: CostSlot::WeightSquares as u32,
            len: u32_of(decayed, "the number of weights")?,
            ..Default::default()
        };
        let k = self.kernels;
        ops.push(k.small(
            &self.gpu.device,
            Small::SumRange,
            Some(self.theta),
            None,
            Some(self.scalars),
            None,
            p,
            [1, 1, 1],
        ));
        Ok(())
    }

    /// One forward layer, Z = A Wᵀ + b then f, as a fused matmul: A is `rows` rows of the
    /// layer's input starting at element `input.1` of `input.0`; the activations go to `out`.
    /// A softmax output gets the identity here and its softmax from a separate kernel.
    pub(super) fn layer_op(
        &self,
        l: usize,
        input: (&wgpu::Buffer, usize),
        rows: usize,
        out: &wgpu::Buffer,
    ) -> Result<Op> {
        let act = self.spec.activation_after(l).unwrap_or(Activation::Identity);
        self.layer_op_with(l, input, rows, out, act)
    }

    /// [`GpuBackend::layer_op`] with the activation `act` in place of the layer's own.
    pub(super) fn layer_op_with(
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
        let w_t = Operand::row_major(self.theta, u(lay.weight_range(l).start)?, u(inp)?).t();
        let epilogue = Epilogue::BiasAct { bias: (self.theta, u(lay.bias_range(l).start)?), act };
        Ok(self.kernels.matmul(&self.gpu.device, a, w_t, (out, 0, u(out_w)?), (u(rows)?, u(out_w)?, u(inp)?), epilogue))
    }

    /// The activations of every layer after the input (softmax applied) of a dense network on
    /// one uploaded chunk, read back in one submission.
    pub(super) fn forward_chunk(&self, chunk: &Chunk) -> Result<Vec<Array2<f64>>> {
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
            let out = acts.last().expect("a network has an output layer");
            ops.push(super::bce::sigmoid_in_place_op(self.gpu, k, spec, out, rows)?);
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
        let flat = read_back(&self.gpu.device, &staging, total)?;
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

/// Records and submits `plan` over `visit`: the device gather first (when the
/// visit asks for it), then the plan's operations — in one submission when every segment
/// is on the device, else one submission per stretch of a streamed segment, each after
/// uploading that segment's rows into its ring buffer — then `last` at the end of the
/// final compute pass and `finish` on the final encoder. Returns the bytes of data
/// uploaded.
pub(super) fn submit(
    gpu: &Gpu,
    data: &Residency,
    plan: &Plan,
    visit: &Visit,
    last: impl FnOnce(&mut wgpu::ComputePass<'_>),
    finish: impl FnOnce(&mut wgpu::CommandEncoder),
) -> u64 {
    submit_part(gpu, data, plan, visit, 0..plan.ops.len(), &[], last, finish)
}

/// [`submit`] of the plan's operations `part` alone (`0..ops.len()`: the whole plan), with
/// `prefix` recorded before the first of them: one submission when every segment is on the
/// device, else one per stretch of a streamed segment that `part` reaches. The device gather
/// runs when `part` starts at the plan's start. Returns the bytes of data uploaded.
#[allow(clippy::too_many_arguments)]
pub(super) fn submit_part(
    gpu: &Gpu,
    data: &Residency,
    plan: &Plan,
    visit: &Visit,
    part: Range<usize>,
    prefix: &[&Op],
    last: impl FnOnce(&mut wgpu::ComputePass<'_>),
    finish: impl FnOnce(&mut wgpu::CommandEncoder),
) -> u64 {
    let streamed = visit.segments.iter().any(|s| matches!(s.chunk, Source::Streamed(_)));
    let stages: Vec<(Option<usize>, Range<usize>)> = if streamed {
        let ends = plan.stages.iter().skip(1).map(|s| s.1).chain([plan.ops.len()]);
        plan.stages
            .iter()
            .zip(ends)
            .map(|(&(seg, start), end)| (Some(seg), start.max(part.start)..end.min(part.end)))
            .filter(|(_, ops)| !ops.is_empty())
            .collect()
    } else {
        vec![(None, part.clone())]
    };
    let (mut last, mut finish) = (Some(last), Some(finish));
    let mut holds = [None; RING];
    let mut bytes = 0;
    for (k, (seg, ops)) in stages.iter().enumerate() {
        if let Some(s) = *seg
            && let Source::Streamed(slot) = visit.segments[s].chunk
            && holds[slot] != Some(s)
        {
            bytes += data.write_rows(gpu, data.ring(slot), visit.rows[s].clone());
            holds[slot] = Some(s);
        }
        let final_stage = k + 1 == stages.len();
        let mut encoder = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("cost") });
        {
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("cost"), timestamp_writes: None });
            if k == 0 && part.start == 0 && visit.gather {
                let set = data.current_set().expect("the visit gathered into it");
                set.ops.iter().for_each(|op| op.record(&mut pass));
            }
            if k == 0 {
                prefix.iter().for_each(|op| op.record(&mut pass));
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
