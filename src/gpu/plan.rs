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

use super::backend::GpuBackend;
use super::data::{Chunk, RING, Segment, Source, Visit};
use super::kernels::{self, BLOCK_ROWS, Epilogue, Op, Operand, Small, SmallParams};
use super::plumbing::{poison, read_back, staging, storage, u32_of};
use crate::model::{Activation, Output};
use crate::{Error, Result};

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
}

impl GpuBackend {
    /// Builds the recorded operations for a pass over `segments`.
    pub(super) fn build_plan(&self, segments: &[Segment], want_grad: bool) -> Result<Plan> {
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
            Output::SquaredError(_) => rows.div_ceil(16) * spec.outputs().div_ceil(16),
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
        let w_t = Operand::row_major(&self.theta, u(lay.weight_range(l).start)?, u(inp)?).t();
        let epilogue = Epilogue::BiasAct { bias: (&self.theta, u(lay.bias_range(l).start)?), act };
        Ok(self.kernels.matmul(&self.gpu.device, a, w_t, (out, 0, u(out_w)?), (u(rows)?, u(out_w)?, u(inp)?), epilogue))
    }

    /// The plan for `visit`'s segments (built on first use); its key.
    pub(super) fn plan_for(&mut self, visit: &Visit, want_grad: bool) -> Result<(Vec<Segment>, bool)> {
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
    pub(super) fn poison_plan(&self, key: &(Vec<Segment>, bool)) {
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
    pub(super) fn submit_plan(
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
        let mut holds = [None; RING];
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
