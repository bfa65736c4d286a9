//! The GPU plan of a layer stack (conv2d, pooling, maxout and dense layers, then the dense
//! output layer and its loss): the recorded forward and backward passes over every segment of
//! a batch, mirroring `cpu::stack` (MATH.md, "Layers beyond dense" and "Backpropagation") in
//! the shape of the dense plan of `gpu/mod.rs` — the same [`Plan`] (operations, stages per
//! segment, workspace), so evaluation, streaming, gathering and the device update run it
//! unchanged, in one submission per evaluation for resident data.
//!
//! δ flows down as ∂L/∂z of each layer: whoever computes a layer's δ multiplies by that layer's
//! f′ (the matmul's delta epilogue, the conv and pool input-gradient kernels), pooling and
//! maxout having none. Gradients are (1/m) Σ over the batch, accumulated on the device segment
//! after segment, λW added once (first segment), as in the dense plan.
//!
//! This module records; it does not submit, read back or own anything beyond the workspace
//! of the plan it returns.

use super::LayerKernels;
use crate::gpu::data::Segment;
use crate::gpu::kernels::{BLOCK_ROWS, Epilogue, Op, Operand, Small, SmallParams};
use crate::gpu::plan::{Plan, Recorder, loss_partials_len};
use crate::gpu::plumbing::{read_back, staging, storage, u32_of};
use crate::layers::ImageShape;
use crate::layers::conv2d::Conv2d;
use crate::layers::lstm::Lstm;
use crate::layers::maxout::Maxout;
use crate::layers::pool2d::{Pool2d, PoolKind};
use crate::layers::rnn::Rnn;
use crate::model::{Activation, Layer, NetSpec, Output};
use crate::{Error, Result};

/// One hidden layer, its geometry checked, with the index `l` of its W and b in θ.
#[derive(Clone, Debug)]
pub(crate) enum StackOp {
    Dense {
        l: usize,
        act: Activation,
    },
    Maxout {
        l: usize,
        max: Maxout,
    },
    Conv {
        l: usize,
        conv: Conv2d,
        act: Activation,
    },
    Pool(Pool2d),
    /// An Elman layer (tanh or ReLU) over all T steps: `recurrent.rs` records it.
    Rnn {
        l: usize,
        rnn: Rnn,
    },
    /// An LSTM layer over all T steps: `recurrent.rs` records it.
    Lstm {
        l: usize,
        lstm: Lstm,
    },
}

impl StackOp {
    /// The activation applied to the layer's output (identity for pooling and maxout).
    fn activation(&self) -> Activation {
        match self {
            StackOp::Dense { act, .. } | StackOp::Conv { act, .. } => *act,
            StackOp::Maxout { .. } | StackOp::Pool(_) => Activation::Identity,
            // The recurrent gate kernels apply their own derivatives.
            StackOp::Rnn { .. } | StackOp::Lstm { .. } => Activation::Identity,
        }
    }

    /// (θ index, gate rows G, inputs n, hidden h) of a recurrent layer: W_ih is G × n, W_hh
    /// G × h (G = h for the RNN, 4h for the LSTM); `None` for other layers.
    pub(crate) fn recurrent_dims(&self) -> Option<(usize, usize, usize, usize)> {
        match self {
            StackOp::Rnn { l, rnn } => Some((*l, rnn.hidden, rnn.inputs, rnn.hidden)),
            StackOp::Lstm { l, lstm } => Some((*l, 4 * lstm.hidden, lstm.inputs, lstm.hidden)),
            _ => None,
        }
    }
}

/// The hidden layers of a stack spec, with each one's output width.
pub(crate) struct StackLayers {
    pub ops: Vec<StackOp>,
    pub widths: Vec<usize>,
    /// θ index of the output layer.
    pub out_l: usize,
}

impl StackLayers {
    /// The layers of `spec`'s stack; `None` for a dense spec.
    pub fn of(spec: &NetSpec) -> Result<Option<StackLayers>> {
        let Some(stack) = &spec.net else { return Ok(None) };
        let shapes = stack.shapes()?;
        let (mut ops, mut widths) = (Vec::new(), Vec::new());
        let (mut shape, mut l) = (stack.input, 0);
        // Recurrent layers (a sequence stack) all run over the input's T steps, each reading
        // the one below at every step (as cpu::sequence's plan).
        let (steps, mut seq_n) = (stack.input.height, stack.input.width);
        for (layer, &next) in stack.layers.iter().zip(&shapes) {
            let image = ImageShape::new(shape.channels, shape.height, shape.width);
            ops.push(match *layer {
                Layer::Dense { activation, .. } => StackOp::Dense { l, act: activation },
                Layer::Maxout { units, pieces } => StackOp::Maxout { l, max: Maxout::new(units, pieces)? },
                Layer::Conv2d { filters, kernel, stride, padding, activation } => {
                    StackOp::Conv { l, conv: Conv2d::new(image, filters, kernel, stride, padding)?, act: activation }
                }
                Layer::MaxPool { size, stride } => {
                    StackOp::Pool(Pool2d::with_stride(image, PoolKind::Max, size, stride)?)
                }
                Layer::MeanPool { size, stride } => {
                    StackOp::Pool(Pool2d::with_stride(image, PoolKind::Mean, size, stride)?)
                }
                // `GpuBackend::supports` refuses recurrent stacks before a plan is built.
                Layer::Rnn { units, activation, .. } => {
                    let rnn = Rnn::new(seq_n, units, steps, activation)?;
                    seq_n = units;
                    StackOp::Rnn { l, rnn }
                }
                Layer::Lstm { units, .. } => {
                    let lstm = Lstm::new(seq_n, units, steps)?;
                    seq_n = units;
                    StackOp::Lstm { l, lstm }
                }
            });
            l += layer.has_parameters() as usize;
            widths.push(next.len());
            shape = next;
        }
        Ok(Some(StackLayers { ops, widths, out_l: l }))
    }

    /// The widest row any buffer of an evaluation holds: inputs, outputs, every layer's
    /// output and maxout's pieces (values per example).
    pub fn widest(&self, spec: &NetSpec) -> usize {
        let pieces = self.ops.iter().map(|op| match op {
            StackOp::Maxout { max, .. } => max.piece_count(),
            // The gates of every step, and their δ (T·G), and the cells (T+1)·h.
            _ => op.recurrent_dims().map_or(0, |(_, g, _, h)| (g * self.steps()).max((self.steps() + 1) * h)),
        });
        let out = spec.outputs() * spec.output_steps();
        self.widths.iter().copied().chain(pieces).chain([spec.inputs(), out]).max().unwrap_or(1)
    }

    /// T of a sequence stack (1 for any other).
    pub fn steps(&self) -> usize {
        self.ops
            .iter()
            .find_map(|op| match op {
                StackOp::Rnn { rnn, .. } => Some(rnn.steps),
                StackOp::Lstm { lstm, .. } => Some(lstm.steps),
                _ => None,
            })
            .unwrap_or(1)
    }
}

/// The buffers a layer's forward pass writes: its output, maxout's z, the winners.
struct LayerBuffers {
    a: wgpu::Buffer,
    z: Option<wgpu::Buffer>,
    winners: Option<wgpu::Buffer>,
}

/// A [`Recorder`] with the layer kernels: records a layer stack's plan and forward pass.
pub(in crate::gpu) struct StackRecorder<'a> {
    /// The device, kernels, network, θ and data the dense plan records with.
    pub rec: &'a Recorder<'a>,
    /// The conv2d, pooling and maxout kernels.
    pub kernels: &'a LayerKernels,
}

impl<'a> std::ops::Deref for StackRecorder<'a> {
    type Target = Recorder<'a>;

    fn deref(&self) -> &Recorder<'a> {
        self.rec
    }
}

impl StackRecorder<'_> {
    /// Buffers for the hidden layers' forward pass over `rows` rows.
    fn layer_buffers(&self, layers: &StackLayers, rows: usize) -> Vec<LayerBuffers> {
        let device = &self.gpu.device;
        layers
            .ops
            .iter()
            .zip(&layers.widths)
            .map(|(op, &width)| {
                let (z, winners) = match op {
                    StackOp::Maxout { max, .. } => (
                        Some(storage(device, "maxout z", rows * max.piece_count())),
                        Some(storage(device, "maxout winners", rows * width)),
                    ),
                    StackOp::Pool(p) if p.kind == PoolKind::Max => {
                        (None, Some(storage(device, "pool winners", rows * width)))
                    }
                    _ => (None, None),
                };
                LayerBuffers { a: storage(device, "activations", rows * width), z, winners }
            })
            .collect()
    }

    /// Records the hidden layers and the output layer's f(A Wᵀ + b) (identity for softmax) on
    /// `rows` rows of `input` (buffer, element offset), into `bufs` and `out`.
    fn record_stack_forward(
        &self,
        ops: &mut Vec<Op>,
        layers: &StackLayers,
        bufs: &[LayerBuffers],
        input: (&wgpu::Buffer, usize),
        rows: usize,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        let (device, lk, lay) = (&self.gpu.device, self.kernels, self.layout);
        for (i, op) in layers.ops.iter().enumerate() {
            let inp = if i == 0 { input } else { (&bufs[i - 1].a, 0) };
            let b = &bufs[i];
            match op {
                StackOp::Dense { l, act } => ops.push(self.layer_op_with(*l, inp, rows, &b.a, *act)?),
                StackOp::Maxout { l, max } => {
                    let z = b.z.as_ref().expect("maxout has z");
                    ops.push(self.layer_op_with(*l, inp, rows, z, Activation::Identity)?);
                    ops.push(lk.maxout_forward(device, max, rows, z, &b.a, b.winners.as_ref().expect("kept"))?);
                }
                StackOp::Conv { l, conv, act } => {
                    let at = (lay.weight_range(*l).start, lay.bias_range(*l).start);
                    ops.push(lk.conv2d_forward(device, conv, rows, *act, inp, self.theta, at, &b.a)?);
                }
                StackOp::Pool(pool) => {
                    ops.push(lk.pool2d_forward(device, pool, rows, inp, &b.a, b.winners.as_ref())?)
                }
                StackOp::Rnn { .. } | StackOp::Lstm { .. } => return Err(recurrent_elsewhere()),
            }
        }
        let last = bufs.last().map_or(input, |b| (&b.a, 0));
        let act = self.spec.activation_after(layers.out_l).unwrap_or(Activation::Identity);
        ops.push(self.layer_op_with(layers.out_l, last, rows, out, act)?);
        Ok(())
    }

    /// The plan of one evaluation of a layer stack over `segments` (the stack twin of the
    /// dense `build_plan`): per segment, the forward pass, the loss and — with `want_grad` —
    /// the backward pass accumulating ∇J; then Σ W² for weight decay.
    pub(in crate::gpu) fn build_stack_plan(&self, segments: &[Segment], want_grad: bool) -> Result<Plan> {
        let layers = StackLayers::of(self.spec)?.ok_or_else(|| Error::Gpu("not a layer stack".into()))?;
        if layers.ops.iter().any(|op| op.recurrent_dims().is_some()) {
            return self.build_recurrent_plan(&layers, segments, want_grad);
        }
        let (device, lk, spec, lay) = (&self.gpu.device, self.kernels, self.spec, self.layout);
        let u = |v: usize| u32_of(v, "an index");
        let examples: usize = segments.iter().map(|s| s.rows).sum();
        let rows_max = segments.iter().map(|s| s.rows).max().unwrap_or(1);
        let inv_m = 1.0 / examples as f32;
        let n = layers.ops.len();
        let outputs = spec.outputs();

        // Workspace, sized for the largest segment and reused by every segment in turn.
        let bufs = self.layer_buffers(&layers, rows_max);
        let out = storage(device, "output activations", rows_max * outputs);
        let widest = layers.widest(spec);
        let deltas = [storage(device, "δ", rows_max * widest), storage(device, "δ'", rows_max * widest)];
        let summed = layers
            .ops
            .iter()
            .map(|op| match op {
                StackOp::Dense { l, .. } | StackOp::Maxout { l, .. } => lay.shapes[*l].0,
                _ => 0,
            })
            .chain([outputs])
            .max()
            .unwrap_or(1);
        let col_partials = storage(device, "column partials", rows_max.div_ceil(BLOCK_ROWS as usize) * summed);
        let conv_partials_len = layers
            .ops
            .iter()
            .map(|op| match op {
                StackOp::Conv { conv, .. } => super::conv2d_partials_len(conv, rows_max),
                _ => 0,
            })
            .max()
            .unwrap_or(0);
        let conv_partials = storage(device, "conv2d ∇W partials", conv_partials_len);
        let loss_partials = storage(device, "loss partials", loss_partials_len(spec, rows_max));

        let mut ops = Vec::new();
        let mut stages = Vec::new();
        for (i, seg) in segments.iter().enumerate() {
            stages.push((i, ops.len()));
            let chunk = self.data.chunk(seg.chunk);
            let x = (&chunk.x, seg.row * spec.inputs());
            let rows = seg.rows;
            self.record_stack_forward(&mut ops, &layers, &bufs, x, rows, &out)?;

            // The loss; δ⁽ᴸ⁾ lands in deltas[0] (squared error) or in place of the probabilities.
            let delta_out = self.record_loss(&mut ops, seg, &out, &deltas[0], &loss_partials, want_grad, i == 0)?;
            if !want_grad {
                continue;
            }

            let accumulate = i > 0;
            let decay = if i == 0 { spec.weight_decay as f32 } else { 0.0 };
            // The input of hidden layer j (or of the output layer, j = n) and its activation.
            let input_of = |j: usize| if j == 0 { x } else { (&bufs[j - 1].a, 0) };
            let below = |j: usize| if j == 0 { Activation::Identity } else { layers.ops[j - 1].activation() };
            // A dense product layer's gradients: ∇W = (1/m) δᵀ A (+ λW), ∇b = (1/m) Σ δ, and —
            // unless it reads the data — the δ below = (δ W) ⊙ f′(a_below) into `next`.
            let dense_backward =
                |ops: &mut Vec<Op>, j: usize, l: usize, delta: &wgpu::Buffer, next: &wgpu::Buffer| -> Result<()> {
                    let inp = lay.shapes[l].1;
                    let input = input_of(j);
                    let a_prev = Operand::row_major(input.0, u(input.1)?, u(inp)?);
                    self.record_dense_grads(ops, &col_partials, l, a_prev, delta, rows, inv_m, !accumulate)?;
                    if j > 0 {
                        let epilogue = Epilogue::Delta { kl: None, a_prev, act: below(j) };
                        self.record_delta_below(ops, l, delta, next, rows, epilogue)?;
                    }
                    Ok(())
                };

            // The output layer, then the hidden layers top down; `cur` indexes the δ buffer.
            let (mut delta, mut spare) = (delta_out, 1);
            dense_backward(&mut ops, n, layers.out_l, delta, &deltas[spare])?;
            if n > 0 {
                delta = &deltas[spare];
                spare = 1 - spare;
            }
            for j in (0..n).rev() {
                let next = &deltas[spare];
                match &layers.ops[j] {
                    StackOp::Dense { l, .. } => dense_backward(&mut ops, j, *l, delta, next)?,
                    StackOp::Maxout { l, max } => {
                        // ∂L/∂z into `next`; the δ below then goes where δ was.
                        let winners = bufs[j].winners.as_ref().expect("kept");
                        ops.push(lk.maxout_backward(device, max, rows, delta, winners, next)?);
                        dense_backward(&mut ops, j, *l, next, delta)?;
                        // The δ below (if any) is in `delta`'s buffer: keep pointing at it.
                        continue;
                    }
                    StackOp::Conv { l, conv, .. } => {
                        let w_at = lay.weight_range(*l).start;
                        let grads = (self.grad, w_at, lay.bias_range(*l).start);
                        ops.extend(lk.conv2d_weight_grad(
                            device,
                            conv,
                            rows,
                            input_of(j),
                            delta,
                            &conv_partials,
                            (self.theta, w_at),
                            grads,
                            (inv_m, accumulate, decay),
                        )?);
                        if j > 0 {
                            ops.push(lk.conv2d_input_grad(
                                device,
                                conv,
                                rows,
                                delta,
                                (self.theta, w_at),
                                input_of(j),
                                below(j),
                                next,
                            )?);
                        }
                    }
                    StackOp::Rnn { .. } | StackOp::Lstm { .. } => return Err(recurrent_elsewhere()),
                    StackOp::Pool(pool) => {
                        if j > 0 {
                            let winners = bufs[j].winners.as_ref();
                            ops.push(lk.pool2d_backward(
                                device,
                                pool,
                                rows,
                                delta,
                                winners,
                                input_of(j),
                                below(j),
                                next,
                            )?);
                        }
                    }
                }
                delta = next;
                spare = 1 - spare;
            }
        }
        // (λ/2)‖W‖²: Σ W² over the weight prefix of θ.
        self.record_weight_squares(&mut ops)?;

        let mut workspace: Vec<wgpu::Buffer> = Vec::new();
        for b in bufs {
            workspace.push(b.a);
            workspace.extend(b.z);
            workspace.extend(b.winners);
        }
        workspace.extend(deltas);
        workspace.extend([out, col_partials, conv_partials, loss_partials]);
        Ok(Plan { ops, stages, examples, workspace, state: Vec::new(), shared_sparsity: None })
    }

    /// The activations of every hidden layer and the output (softmax applied) on one uploaded
    /// chunk, read back in one submission: [`crate::Backend::forward`] for a layer stack.
    pub(in crate::gpu) fn forward_stack_chunk(
        &self,
        x: &wgpu::Buffer,
        rows: usize,
    ) -> Result<Vec<ndarray::Array2<f64>>> {
        let layers = StackLayers::of(self.spec)?.ok_or_else(|| Error::Gpu("not a layer stack".into()))?;
        if layers.ops.iter().any(|op| op.recurrent_dims().is_some()) {
            return self.forward_recurrent_chunk(&layers, x, rows);
        }
        let (device, spec) = (&self.gpu.device, self.spec);
        let bufs = self.layer_buffers(&layers, rows);
        let out = storage(device, "output activations", rows * spec.outputs());
        let mut ops = Vec::new();
        self.record_stack_forward(&mut ops, &layers, &bufs, (x, 0), rows, &out)?;
        if spec.output == Output::Softmax {
            let p = SmallParams {
                rows: u32_of(rows, "rows")?,
                cols: u32_of(spec.outputs(), "outputs")?,
                flag: 0,
                ..Default::default()
            };
            let groups = [u32_of(rows.div_ceil(64), "rows")?, 1, 1];
            ops.push(self.rec.kernels.small(device, Small::Softmax, None, None, Some(&out), None, p, groups));
        }
        if spec.output == Output::SigmoidBce {
            ops.push(crate::gpu::bce::sigmoid_in_place_op(self.rec.gpu, self.rec.kernels, spec, &out, rows)?);
        }
        let widths: Vec<usize> = layers.widths.iter().copied().chain([spec.outputs()]).collect();
        let sources: Vec<&wgpu::Buffer> = bufs.iter().map(|b| &b.a).chain([&out]).collect();
        let total: usize = widths.iter().map(|w| w * rows).sum();
        let staging = staging(device, "activations readback", total);
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("forward") });
        {
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("forward"), timestamp_writes: None });
            ops.iter().for_each(|op| op.record(&mut pass));
        }
        let mut at = 0u64;
        for (buf, w) in sources.iter().zip(&widths) {
            let bytes = (rows * w * 4) as u64;
            if bytes > 0 {
                encoder.copy_buffer_to_buffer(buf, 0, &staging, at, bytes);
            }
            at += bytes;
        }
        self.gpu.queue.submit([encoder.finish()]);
        let flat = read_back(&self.gpu.device, &staging, total)?;
        let mut start = 0;
        Ok(widths
            .iter()
            .map(|&w| {
                let values = flat[start..start + rows * w].iter().map(|&v| v as f64).collect();
                start += rows * w;
                ndarray::Array2::from_shape_vec((rows, w), values).expect("sizes match")
            })
            .collect())
    }
}

/// A recurrent layer reached the layer-stack recording: `recurrent.rs` records sequence stacks.
fn recurrent_elsewhere() -> Error {
    Error::Gpu("a recurrent layer inside a non-recurrent stack plan (recurrent stacks have their own plan)".into())
}
