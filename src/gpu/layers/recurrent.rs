//! The recurrent layers on the GPU (MATH.md, "Layers beyond dense": Elman RNN, LSTM in
//! PyTorch's gate order i, f, g, o, backpropagation through time), twins of
//! `layers::{rnn,lstm}` and `cpu::sequence`:
//!
//! | kernel (`recurrent.wgsl`) | CPU twin                                   | launcher                              |
//! |---------------------------|--------------------------------------------|---------------------------------------|
//! | rnn_forward               | `Rnn::forward`'s sweep: h_t = f(z_t + b)   | [`RecurrentKernels::rnn_forward`]     |
//! | lstm_forward              | `lstm::gate_row` (gates, c_t, h_t)         | [`RecurrentKernels::lstm_forward`]    |
//! | rnn_backward              | `Rnn::backward`'s δz_t = δh ⊙ f′(h_t)      | [`RecurrentKernels::rnn_backward`]    |
//! | lstm_backward             | `lstm::gate_delta_row` (δz_t, δc_{t−1})    | [`RecurrentKernels::lstm_backward`]   |
//! | copy_rows                 | the carried state in and out               | [`RecurrentKernels::copy_rows`]       |
//!
//! ## One evaluation (per segment of the batch, m sequences, all recorded in one submission)
//! Buffers are batch-major like the data: the gates (pre-activations, then activated) m × T × G
//! (G = h for the RNN, 4h for the LSTM), the outputs h_1 … h_T m × T × h, the cells c_0 … c_T
//! m × (T+1) × h. Forward, per layer: Z = X W_ihᵀ for all T steps in one GEMM ((m·T) × n
//! times n × G); then per step t a GEMM adding H_{t−1} W_hhᵀ to Z's block t (H_0 the carried
//! state) and one gate kernel. Backward, per layer top down, t = T … 1: one gate kernel
//! (δz_t, and δc_{t−1} for the LSTM, from δh_t = the layer above's + the next step's) and one
//! GEMM δh_{t−1} = δz_t W_hh; then ∇W_ih = α δZᵀ X (one GEMM over all steps), ∇W_hh =
//! α Σ_t δz_tᵀ H_{t−1} (one GEMM per step, accumulated in the order t = 1 … T), ∇b = α Σ δZ
//! (column sums in a fixed order) and the δ of the layer below δZ W_ih. No float atomics: the
//! bits are the same run after run.
//!
//! ## Carried state (truncated BPTT)
//! Each plan holds the state of every layer for its batch (h, and c for an LSTM, one row per
//! sequence); each segment reads its rows at step 0 and writes its final state back at its
//! end. [`GpuBackend::set_recurrent_state`] says where evaluations start: from zero (the
//! default, as the CPU backend's), or from a given state and then each from where the last
//! one ended; [`GpuBackend::recurrent_state`] reads the final state back.

use std::sync::OnceLock;

use bytemuck::{Pod, Zeroable};
use ndarray::Array2;

use super::plan::{StackLayers, StackOp, StackRecorder};
use super::{flat_grid, placeholder};
use crate::cpu::sequence::{LayerState, State};
use crate::gpu::data::Segment;
use crate::gpu::kernels::{BLOCK_ROWS, Epilogue, Op, Operand, Small, SmallParams, act_code};
use crate::gpu::plan::Plan;
use crate::gpu::plumbing::{bind_all, layout, pipeline, read_back, staging, storage, u32_of, uniform};
use crate::gpu::{Gpu, GpuBackend};
use crate::layers::lstm::Lstm;
use crate::layers::rnn::Rnn;
use crate::model::{Activation, Output};
use crate::{Error, Result};

/// recurrent.wgsl, compiled after common.wgsl.
pub const RECURRENT_WGSL: &str = include_str!("../../../shaders/recurrent.wgsl");

/// recurrent.wgsl's parameter block: m sequences (`rows`) of T steps (`steps`) of a layer of
/// h units (`hidden`), the step t (`step`), the activation (the RNN's f), `first` = 1 on the
/// first step of the backward walk (no δ from a later step yet), `has_dh` = 1 when the layer
/// above sends δh at this step (at `dh_off` + i·`dh_rs`), b at `b_off` in θ, and the copy's
/// source and destination (offset, row stride).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct RecurrentParams {
    /// m: sequences in this segment.
    pub rows: u32,
    /// h: units of the layer.
    pub hidden: u32,
    /// T: steps per sequence.
    pub steps: u32,
    /// t: the step this dispatch computes (0-based).
    pub step: u32,
    /// The RNN's activation f as an activation code (`params::ActCode`).
    pub act: u32,
    /// 1 on the first step of the backward walk (t = T − 1: no δ from a later step yet), else 0.
    pub first: u32,
    /// 1 when the layer above sends δh at this step (at `dh_off` + i·`dh_rs`), else 0.
    pub has_dh: u32,
    /// Offset of the layer's bias b in θ (floats).
    pub b_off: u32,
    /// Offset of the δh the layer above sends (floats).
    pub dh_off: u32,
    /// Row stride of that δh (floats per sequence).
    pub dh_rs: u32,
    /// `copy_rows`: offset of the source (floats).
    pub src_off: u32,
    /// `copy_rows`: row stride of the source (floats).
    pub src_rs: u32,
    /// `copy_rows`: offset of the destination (floats).
    pub dst_off: u32,
    /// `copy_rows`: row stride of the destination (floats).
    pub dst_rs: u32,
    /// Slope α of a leaky ReLU f (unused by other activations).
    pub leaky_alpha: f32,
    /// Padding to a 16-byte multiple (uniform layout); 0.
    pub _pad: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    RnnForward,
    LstmForward,
    RnnBackward,
    LstmBackward,
    CopyRows,
}

impl Entry {
    const ALL: [Entry; 5] =
        [Entry::RnnForward, Entry::LstmForward, Entry::RnnBackward, Entry::LstmBackward, Entry::CopyRows];

    fn name(self) -> &'static str {
        match self {
            Entry::RnnForward => "rnn_forward",
            Entry::LstmForward => "lstm_forward",
            Entry::RnnBackward => "rnn_backward",
            Entry::LstmBackward => "lstm_backward",
            Entry::CopyRows => "copy_rows",
        }
    }
}

/// A δh operand: (buffer, element offset, row stride) of the layer above's δ at one step.
pub type DeltaRows<'a> = (&'a wgpu::Buffer, usize, usize);

/// The recurrent kernels of one device, each compiled on first use. One bind-group layout:
/// four read-only storage buffers, three writable ones, the parameters.
pub struct RecurrentKernels {
    layout: wgpu::BindGroupLayout,
    pipelines: [OnceLock<wgpu::ComputePipeline>; 5],
    dummy_read: wgpu::Buffer,
    dummy_write: [wgpu::Buffer; 3],
    max_groups: u32,
}

impl RecurrentKernels {
    /// The kernels' layout and placeholders on `device` (nothing is compiled yet).
    pub fn new(device: &wgpu::Device) -> RecurrentKernels {
        let (r, w) = (Some(true), Some(false));
        RecurrentKernels {
            layout: layout(device, "recurrent", &[r, r, r, r, w, w, w, None]),
            pipelines: Default::default(),
            dummy_read: placeholder(device, "unused input"),
            dummy_write: [
                placeholder(device, "unused output 0"),
                placeholder(device, "unused output 1"),
                placeholder(device, "unused output 2"),
            ],
            max_groups: device.limits().max_compute_workgroups_per_dimension,
        }
    }

    fn op(
        &self,
        device: &wgpu::Device,
        entry: Entry,
        reads: [Option<&wgpu::Buffer>; 4],
        writes: [Option<&wgpu::Buffer>; 3],
        p: &RecurrentParams,
        cells: usize,
    ) -> Result<Op> {
        let slot = Entry::ALL.iter().position(|&e| e == entry).expect("every entry has a slot");
        let pipeline = self.pipelines[slot]
            .get_or_init(|| {
                let source = format!("{}\n{RECURRENT_WGSL}", super::COMMON_WGSL);
                pipeline(device, &self.layout, &source, entry.name())
            })
            .clone();
        let params = uniform(device, bytemuck::bytes_of(p));
        let r = reads.map(|b| b.unwrap_or(&self.dummy_read));
        let [w0, w1, w2] = writes;
        let w = [
            w0.unwrap_or(&self.dummy_write[0]),
            w1.unwrap_or(&self.dummy_write[1]),
            w2.unwrap_or(&self.dummy_write[2]),
        ];
        let buffers = [r[0], r[1], r[2], r[3], w[0], w[1], w[2], &params];
        Ok(Op::one(pipeline, bind_all(device, &self.layout, &buffers), flat_grid(cells, self.max_groups)?))
    }

    /// The parameters of step `step` of a layer of `hidden` units over `rows` sequences of
    /// `steps` steps; Error::Gpu when an index passes 32 bits.
    pub fn params(rows: usize, hidden: usize, steps: usize, step: usize) -> Result<RecurrentParams> {
        let u = |v: usize| u32_of(v, "a recurrent layer's size");
        u(rows.saturating_mul(steps + 1).saturating_mul(4 * hidden))?;
        Ok(RecurrentParams {
            rows: u(rows)?,
            hidden: u(hidden)?,
            steps: u(steps)?,
            step: u(step)?,
            ..Default::default()
        })
    }

    /// out[i, t] = f(z[i, t] + b) for the `rows` sequences at step `step`: z and out are
    /// m × T × h from element 0, b at element `b_off` of `theta`.
    #[allow(clippy::too_many_arguments)]
    pub fn rnn_forward(
        &self,
        device: &wgpu::Device,
        rnn: &Rnn,
        rows: usize,
        step: usize,
        (theta, b_off): (&wgpu::Buffer, usize),
        z: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> Result<Op> {
        let mut p = Self::params(rows, rnn.hidden, rnn.steps, step)?;
        (p.act, p.leaky_alpha) = act_code(rnn.activation);
        p.b_off = u32_of(b_off, "an offset")?;
        self.op(
            device,
            Entry::RnnForward,
            [Some(theta), Some(z), None, None],
            [Some(out), None, None],
            &p,
            rows * rnn.hidden,
        )
    }

    /// The LSTM's step `step`: `gates` (m × T × 4h) block t holds the products and becomes the
    /// activated gates [i f g o] (b added, b at `b_off` of `theta`); c_t goes to block t+1 of
    /// `cells` (m × (T+1) × h, c_{t−1} read from block t), h_t to block t of `out` (m × T × h).
    #[allow(clippy::too_many_arguments)]
    pub fn lstm_forward(
        &self,
        device: &wgpu::Device,
        lstm: &Lstm,
        rows: usize,
        step: usize,
        (theta, b_off): (&wgpu::Buffer, usize),
        gates: &wgpu::Buffer,
        cells: &wgpu::Buffer,
        out: &wgpu::Buffer,
    ) -> Result<Op> {
        let mut p = Self::params(rows, lstm.hidden, lstm.steps, step)?;
        p.b_off = u32_of(b_off, "an offset")?;
        let writes = [Some(gates), Some(cells), Some(out)];
        self.op(device, Entry::LstmForward, [Some(theta), None, None, None], writes, &p, rows * lstm.hidden)
    }

    fn backward_params(
        hidden: usize,
        steps: usize,
        rows: usize,
        step: usize,
        dh: Option<DeltaRows>,
        first: bool,
    ) -> Result<RecurrentParams> {
        let mut p = Self::params(rows, hidden, steps, step)?;
        p.first = first as u32;
        if let Some((_, off, rs)) = dh {
            (p.has_dh, p.dh_off, p.dh_rs) = (1, u32_of(off, "an offset")?, u32_of(rs, "a row stride")?);
        }
        Ok(p)
    }

    /// dz block t (m × T × h) = δh ⊙ f′(h_t), δh the layer above's at this step (`dh`, when it
    /// sends one) plus `carry_h` (m × h: δz_{t+1} W_hh; `None` on the first step of the walk).
    /// `out` holds h_1 … h_T (m × T × h).
    #[allow(clippy::too_many_arguments)]
    pub fn rnn_backward(
        &self,
        device: &wgpu::Device,
        rnn: &Rnn,
        rows: usize,
        step: usize,
        dh: Option<DeltaRows>,
        carry_h: Option<&wgpu::Buffer>,
        out: &wgpu::Buffer,
        dz: &wgpu::Buffer,
    ) -> Result<Op> {
        let mut p = Self::backward_params(rnn.hidden, rnn.steps, rows, step, dh, carry_h.is_none())?;
        (p.act, p.leaky_alpha) = act_code(rnn.activation);
        let reads = [dh.map(|d| d.0), carry_h, Some(out), None];
        self.op(device, Entry::RnnBackward, reads, [Some(dz), None, None], &p, rows * rnn.hidden)
    }

    /// The LSTM's backward gate pass at step t: dz block t (m × T × 4h) and `carry_c`
    /// (m × h: δc_{t+1→t} in, δc_{t→t−1} out; not read on the first step, when `carry_h` is
    /// `None`) from δh (as [`RecurrentKernels::rnn_backward`]), the activated `gates` and the
    /// `cells` of the forward pass.
    #[allow(clippy::too_many_arguments)]
    pub fn lstm_backward(
        &self,
        device: &wgpu::Device,
        lstm: &Lstm,
        rows: usize,
        step: usize,
        dh: Option<DeltaRows>,
        carry_h: Option<&wgpu::Buffer>,
        (gates, cells): (&wgpu::Buffer, &wgpu::Buffer),
        dz: &wgpu::Buffer,
        carry_c: &wgpu::Buffer,
    ) -> Result<Op> {
        let p = Self::backward_params(lstm.hidden, lstm.steps, rows, step, dh, carry_h.is_none())?;
        let reads = [dh.map(|d| d.0), carry_h, Some(gates), Some(cells)];
        self.op(device, Entry::LstmBackward, reads, [Some(dz), Some(carry_c), None], &p, rows * lstm.hidden)
    }

    /// dst[off + i·rs + j] = src[off + i·rs + j] for `rows` × `cols` values ((buffer, offset,
    /// row stride) each).
    pub fn copy_rows(
        &self,
        device: &wgpu::Device,
        rows: usize,
        cols: usize,
        src: (&wgpu::Buffer, usize, usize),
        dst: (&wgpu::Buffer, usize, usize),
    ) -> Result<Op> {
        let u = |v: usize| u32_of(v, "a copy's index");
        u(src.1 + rows * src.2)?;
        u(dst.1 + rows * dst.2)?;
        let p = RecurrentParams {
            rows: u(rows)?,
            hidden: u(cols)?,
            src_off: u(src.1)?,
            src_rs: u(src.2)?,
            dst_off: u(dst.1)?,
            dst_rs: u(dst.2)?,
            ..Default::default()
        };
        self.op(device, Entry::CopyRows, [Some(src.0), None, None, None], [Some(dst.0), None, None], &p, rows * cols)
    }
}

/// Where a recurrent network's evaluations start.
#[derive(Clone, Debug, Default)]
enum Start {
    /// From h = c = 0, every evaluation (as the CPU backend).
    #[default]
    Zero,
    /// From this state (next evaluation), then carried.
    Given(State<f32>),
    /// From the final state of the last evaluation.
    Carried,
}

/// The carried state's bookkeeping (a field of [`GpuBackend`]).
#[derive(Debug, Default)]
pub(crate) struct Carry {
    start: Start,
    /// The state buffers of the last evaluation's plan (they hold its final state; they
    /// outlive the plan when new data replace it) and the sequences they are for.
    holder: Option<(Vec<wgpu::Buffer>, usize)>,
}

/// One recurrent layer of a plan, with its buffers for `rows_max` sequences.
struct LayerBufs {
    /// The layer's θ index, G, n and h.
    l: usize,
    g: usize,
    n: usize,
    h: usize,
    /// z / the activated gates: m × T × G.
    gates: wgpu::Buffer,
    /// c_0 … c_T (LSTM only): m × (T+1) × h.
    cells: Option<wgpu::Buffer>,
    /// h_1 … h_T: m × T × h.
    out: wgpu::Buffer,
}

/// The layers of a sequence stack.
fn recurrent_ops(layers: &StackLayers) -> Result<Vec<&StackOp>> {
    layers
        .ops
        .iter()
        .map(|op| match op {
            StackOp::Rnn { .. } | StackOp::Lstm { .. } => Ok(op),
            _ => Err(Error::Gpu("a recurrent stack on the GPU holds only rnn and lstm layers".into())),
        })
        .collect()
}

impl StackRecorder<'_> {
    fn recurrent_kernels(&self) -> Result<&RecurrentKernels> {
        Ok(&self.kernels.recurrent)
    }

    /// The per-layer buffers of a sequence stack for `rows` sequences.
    fn recurrent_buffers(&self, ops: &[&StackOp], rows: usize, steps: usize) -> Vec<LayerBufs> {
        let device = &self.gpu.device;
        ops.iter()
            .map(|op| {
                let (l, g, n, h) = op.recurrent_dims().expect("a recurrent layer");
                let lstm = matches!(op, StackOp::Lstm { .. });
                LayerBufs {
                    l,
                    g,
                    n,
                    h,
                    gates: storage(device, "recurrent gates", rows * steps * g),
                    cells: lstm.then(|| storage(device, "lstm cells", rows * (steps + 1) * h)),
                    out: storage(device, "recurrent outputs", rows * steps * h),
                }
            })
            .collect()
    }

    /// State buffers (h, then c for an LSTM, per layer) for `rows` sequences.
    fn state_buffers(&self, bufs: &[LayerBufs], rows: usize) -> Vec<wgpu::Buffer> {
        let device = &self.gpu.device;
        let mut state = Vec::new();
        for b in bufs {
            state.push(storage(device, "recurrent state h", rows * b.h));
            if b.cells.is_some() {
                state.push(storage(device, "recurrent state c", rows * b.h));
            }
        }
        state
    }

    /// Records the forward pass of every recurrent layer on `rows` sequences of `input`
    /// (buffer, element offset), from the state rows at sequence `base` of `state`.
    #[allow(clippy::too_many_arguments)]
    fn record_recurrent_forward(
        &self,
        ops: &mut Vec<Op>,
        layer_ops: &[&StackOp],
        bufs: &[LayerBufs],
        state: &[wgpu::Buffer],
        input: (&wgpu::Buffer, usize),
        rows: usize,
        base: usize,
    ) -> Result<()> {
        let (device, k, rk, lay) = (&self.gpu.device, self.rec.kernels, self.recurrent_kernels()?, self.layout);
        let u = |v: usize| u32_of(v, "an index");
        let mut si = 0;
        for (j, (op, b)) in layer_ops.iter().zip(bufs).enumerate() {
            let steps = recurrent_steps(op);
            let (g, n, h) = (b.g, b.n, b.h);
            let (w_off, b_off) = (lay.weight_range(b.l).start, lay.bias_range(b.l).start);
            let inp = if j == 0 { input } else { (&bufs[j - 1].out, 0) };
            let state_h = &state[si];
            let state_c = b.cells.as_ref().map(|_| &state[si + 1]);
            si += 1 + state_c.is_some() as usize;
            // Z = X W_ihᵀ for all steps.
            let x = Operand::row_major(inp.0, u(inp.1)?, u(n)?);
            let w_ih_t = Operand::row_major(self.theta, u(w_off)?, u(n)?).t();
            let plain = Epilogue::Plain { alpha: 1.0, accumulate: false, decay: None };
            ops.push(k.matmul(device, x, w_ih_t, (&b.gates, 0, u(g)?), (u(rows * steps)?, u(g)?, u(n)?), plain));
            if let (Some(cells), Some(c0)) = (&b.cells, state_c) {
                ops.push(rk.copy_rows(device, rows, h, (c0, base * h, h), (cells, 0, (steps + 1) * h))?);
            }
            let w_hh_t = Operand::row_major(self.theta, u(w_off + g * n)?, u(h)?).t();
            for t in 0..steps {
                let h_prev = match t {
                    0 => Operand::row_major(state_h, u(base * h)?, u(h)?),
                    _ => Operand { buf: &b.out, off: u((t - 1) * h)?, rs: u(steps * h)?, cs: 1 },
                };
                let add = Epilogue::Plain { alpha: 1.0, accumulate: true, decay: None };
                let c = (&b.gates, u(t * g)?, u(steps * g)?);
                ops.push(k.matmul(device, h_prev, w_hh_t, c, (u(rows)?, u(g)?, u(h)?), add));
                ops.push(match op {
                    StackOp::Rnn { rnn, .. } => {
                        rk.rnn_forward(device, rnn, rows, t, (self.theta, b_off), &b.gates, &b.out)?
                    }
                    StackOp::Lstm { lstm, .. } => {
                        let cells = b.cells.as_ref().expect("an LSTM has cells");
                        rk.lstm_forward(device, lstm, rows, t, (self.theta, b_off), &b.gates, cells, &b.out)?
                    }
                    _ => unreachable!("recurrent_ops keeps recurrent layers only"),
                });
            }
        }
        Ok(())
    }

    /// Records the copy of every layer's final state (h_T, c_T of `rows` sequences) into the
    /// state rows at sequence `base`.
    fn record_final_state(
        &self,
        ops: &mut Vec<Op>,
        layer_ops: &[&StackOp],
        bufs: &[LayerBufs],
        state: &[wgpu::Buffer],
        rows: usize,
        base: usize,
    ) -> Result<()> {
        let (device, rk) = (&self.gpu.device, self.recurrent_kernels()?);
        let mut si = 0;
        for (op, b) in layer_ops.iter().zip(bufs) {
            let (steps, h) = (recurrent_steps(op), b.h);
            ops.push(rk.copy_rows(device, rows, h, (&b.out, (steps - 1) * h, steps * h), (&state[si], base * h, h))?);
            if let Some(cells) = &b.cells {
                let src = (cells, steps * h, (steps + 1) * h);
                ops.push(rk.copy_rows(device, rows, h, src, (&state[si + 1], base * h, h))?);
                si += 1;
            }
            si += 1;
        }
        Ok(())
    }

    /// The output layer's Z = H Wᵀ + b (and its activation; identity for softmax) on the top
    /// layer's output at every step (per-step: (m·T) rows) or at the last step (m rows).
    fn record_recurrent_head(
        &self,
        ops: &mut Vec<Op>,
        layers: &StackLayers,
        top: &LayerBufs,
        rows: usize,
        out: &wgpu::Buffer,
    ) -> Result<()> {
        let u = |v: usize| u32_of(v, "an index");
        let (spec, lay) = (self.spec, self.layout);
        let (head, head_rows) = self.recurrent_head(top, rows)?;
        let (k_out, h) = lay.shapes[layers.out_l];
        let w_t = Operand::row_major(self.theta, u(lay.weight_range(layers.out_l).start)?, u(h)?).t();
        let act = spec.activation_after(layers.out_l).unwrap_or(Activation::Identity);
        let epilogue = Epilogue::BiasAct { bias: (self.theta, u(lay.bias_range(layers.out_l).start)?), act };
        ops.push(self.rec.kernels.matmul(
            &self.gpu.device,
            head,
            w_t,
            (out, 0, u(k_out)?),
            (u(head_rows)?, u(k_out)?, u(h)?),
            epilogue,
        ));
        Ok(())
    }

    /// The output layer's input: the top layer's h at every step ((m·T) × h) or at the last
    /// step (m × h, strided), and its rows.
    fn recurrent_head<'a>(&self, top: &'a LayerBufs, rows: usize) -> Result<(Operand<'a>, usize)> {
        let u = |v: usize| u32_of(v, "an index");
        let steps = self.spec.net.as_ref().map_or(1, |s| s.input.height);
        let h = top.h;
        Ok(if self.spec.output_steps() > 1 {
            (Operand::row_major(&top.out, 0, u(h)?), rows * steps)
        } else {
            (Operand { buf: &top.out, off: u((steps - 1) * h)?, rs: u(steps * h)?, cs: 1 }, rows)
        })
    }

    /// The plan of one evaluation of a recurrent stack over `segments` (the recurrent twin of
    /// `build_stack_plan`, see the module notes): per segment the forward pass, the loss and —
    /// with `want_grad` — backpropagation through time accumulating ∇J, then the final state;
    /// then Σ W² for weight decay.
    pub(in crate::gpu) fn build_recurrent_plan(
        &self,
        layers: &StackLayers,
        segments: &[Segment],
        want_grad: bool,
    ) -> Result<Plan> {
        let layer_ops = recurrent_ops(layers)?;
        let (device, k, rk, spec, lay) =
            (&self.gpu.device, self.rec.kernels, self.recurrent_kernels()?, self.spec, self.layout);
        let u = |v: usize| u32_of(v, "an index");
        let steps = layers.steps();
        let s_out = spec.output_steps();
        let sequences: usize = segments.iter().map(|s| s.rows).sum();
        let examples = sequences * s_out;
        let rows_max = segments.iter().map(|s| s.rows).max().unwrap_or(1);
        let inv_m = 1.0 / examples as f32;
        let outputs = spec.outputs();

        // Workspace, sized for the largest segment and reused by every segment in turn.
        let bufs = self.recurrent_buffers(&layer_ops, rows_max, steps);
        let state = self.state_buffers(&bufs, sequences);
        let out = storage(device, "output activations", rows_max * s_out * outputs);
        let d_out = storage(device, "output δ", rows_max * s_out * outputs);
        let g_max = bufs.iter().map(|b| b.g).max().unwrap_or(1);
        let h_max = bufs.iter().map(|b| b.h).max().unwrap_or(1);
        let wide = bufs.iter().map(|b| b.h.max(b.n)).max().unwrap_or(1);
        let dz = storage(device, "recurrent δz", rows_max * steps * g_max);
        let dh = [storage(device, "δh", rows_max * steps * wide), storage(device, "δh'", rows_max * steps * wide)];
        let carry = [storage(device, "δh carried", rows_max * h_max), storage(device, "δc carried", rows_max * h_max)];
        let summed_rows = rows_max * steps.max(s_out);
        let col_partials =
            storage(device, "column partials", summed_rows.div_ceil(BLOCK_ROWS as usize) * g_max.max(outputs));
        let per_seg_loss = |rows: usize| match spec.output {
            Output::Softmax => rows * s_out,
            Output::SquaredError(_) | Output::SigmoidBce => (rows * s_out).div_ceil(16) * outputs.div_ceil(16),
        };
        let loss_partials = storage(device, "loss partials", per_seg_loss(rows_max));

        // α·(column sums of rows × cols at `src`) into ∇J[off..] (accumulating).
        let column_sum = |ops: &mut Vec<Op>,
                          src: &wgpu::Buffer,
                          rows: usize,
                          cols: usize,
                          off: usize,
                          accumulate: bool|
         -> Result<()> {
            let blocks = rows.div_ceil(BLOCK_ROWS as usize);
            let p = SmallParams { rows: u(rows)?, cols: u(cols)?, in_rs: u(cols)?, ..Default::default() };
            let groups = [u(cols.div_ceil(64))?, u(blocks)?, 1];
            ops.push(k.small(device, Small::ColumnPartials, Some(src), None, Some(&col_partials), None, p, groups));
            let p = SmallParams {
                cols: u(cols)?,
                out_off: u(off)?,
                alpha: inv_m,
                flag: accumulate as u32,
                len: u(blocks)?,
                ..Default::default()
            };
            let groups = [u(cols.div_ceil(64))?, 1, 1];
            ops.push(k.small(device, Small::ColumnFinish, Some(&col_partials), None, Some(self.grad), None, p, groups));
            Ok(())
        };

        let mut ops = Vec::new();
        let mut stages = Vec::new();
        let mut base = 0;
        for (i, seg) in segments.iter().enumerate() {
            stages.push((i, ops.len()));
            let chunk = self.data.chunk(seg.chunk);
            let x = (&chunk.x, seg.row * spec.inputs());
            let rows = seg.rows;
            let out_rows = rows * s_out;
            self.record_recurrent_forward(&mut ops, &layer_ops, &bufs, &state, x, rows, base)?;
            let top = bufs.last().expect("a recurrent stack has a layer");
            self.record_recurrent_head(&mut ops, layers, top, rows, &out)?;

            // The loss; δ of the output layer lands in d_out (squared error) or in place of the
            // probabilities (softmax).
            let delta_out: &wgpu::Buffer = match spec.output {
                Output::SquaredError(act) => {
                    let (y, y_off, y_rs) = match &chunk.y {
                        Some(y) => (y, seg.row * outputs * s_out, outputs),
                        None => (&chunk.x, seg.row * spec.inputs(), spec.inputs() / s_out),
                    };
                    let (code, leaky) = act_code(act);
                    let p = SmallParams {
                        rows: u(out_rows)?,
                        cols: u(outputs)?,
                        in_off: u(y_off)?,
                        in_rs: u(y_rs)?,
                        act: code,
                        leaky_alpha: leaky,
                        flag: want_grad as u32,
                        ..Default::default()
                    };
                    let groups = [u(outputs.div_ceil(16))?, u(out_rows.div_ceil(16))?, 1];
                    ops.push(k.small(
                        device,
                        Small::SquaredError,
                        Some(&out),
                        Some(y),
                        Some(&d_out),
                        Some(&loss_partials),
                        p,
                        groups,
                    ));
                    &d_out
                }
                Output::Softmax => {
                    let labels = chunk.labels.as_ref().expect("softmax data has labels");
                    let p = SmallParams {
                        rows: u(out_rows)?,
                        cols: u(outputs)?,
                        aux_off: u(seg.row * s_out)?,
                        flag: 1,
                        ..Default::default()
                    };
                    let groups = [u(out_rows.div_ceil(64))?, 1, 1];
                    ops.push(k.small(
                        device,
                        Small::Softmax,
                        None,
                        Some(labels),
                        Some(&out),
                        Some(&loss_partials),
                        p,
                        groups,
                    ));
                    &out
                }
                Output::SigmoidBce => {
                    let y = chunk.y.as_ref().expect("sigmoid-BCE data has 0/1 targets");
                    let y = (y, seg.row * outputs * s_out);
                    ops.push(crate::gpu::bce::bce_loss_op(
                        self.rec.gpu,
                        k,
                        spec,
                        &out,
                        y,
                        out_rows,
                        &d_out,
                        &loss_partials,
                        want_grad,
                    )?);
                    &d_out
                }
            };
            let p = SmallParams { len: u(per_seg_loss(rows))?, out_off: 0, flag: (i > 0) as u32, ..Default::default() };
            ops.push(k.small(
                device,
                Small::SumRange,
                Some(&loss_partials),
                None,
                Some(self.scalars),
                None,
                p,
                [1, 1, 1],
            ));
            if want_grad {
                let accumulate = i > 0;
                let decay = |l: usize, off: usize| {
                    (i == 0 && spec.weight_decay != 0.0)
                        .then(|| (spec.weight_decay as f32, self.theta, (lay.weight_range(l).start + off) as u32))
                };
                // The output layer: ∇W = α δᵀ H, ∇b = α Σ δ, δH = δ W (no f′: the gate kernels
                // apply the recurrent layers' derivatives).
                let (head, head_rows) = self.recurrent_head(top, rows)?;
                let (k_out, h_top) = lay.shapes[layers.out_l];
                let w_out = lay.weight_range(layers.out_l).start;
                let delta_t = Operand::row_major(delta_out, 0, u(k_out)?).t();
                let epilogue = Epilogue::Plain { alpha: inv_m, accumulate, decay: decay(layers.out_l, 0) };
                let gw = (self.grad, u(w_out)?, u(h_top)?);
                ops.push(k.matmul(device, delta_t, head, gw, (u(k_out)?, u(h_top)?, u(head_rows)?), epilogue));
                column_sum(&mut ops, delta_out, head_rows, k_out, lay.bias_range(layers.out_l).start, accumulate)?;
                let d = Operand::row_major(delta_out, 0, u(k_out)?);
                let w = Operand::row_major(self.theta, u(w_out)?, u(h_top)?);
                let plain = Epilogue::Plain { alpha: 1.0, accumulate: false, decay: None };
                ops.push(k.matmul(device, d, w, (&dh[0], 0, u(h_top)?), (u(head_rows)?, u(h_top)?, u(k_out)?), plain));

                // The recurrent layers, top down; δh of layer j in dh[cur].
                let mut cur = 0;
                let mut si_end = state.len();
                for (j, (op, b)) in layer_ops.iter().zip(&bufs).enumerate().rev() {
                    let (g, n, h) = (b.g, b.n, b.h);
                    let si = si_end - 1 - b.cells.is_some() as usize;
                    si_end = si;
                    let state_h = &state[si];
                    let top_layer = j + 1 == layer_ops.len();
                    let (w_off, b_off) = (lay.weight_range(b.l).start, lay.bias_range(b.l).start);
                    for t in (0..steps).rev() {
                        let from_above: Option<DeltaRows> = match (top_layer, s_out > 1) {
                            (true, false) => (t + 1 == steps).then_some((&dh[cur], 0, h)),
                            _ => Some((&dh[cur], t * h, steps * h)),
                        };
                        let carry_h = (t + 1 < steps).then_some(&carry[0]);
                        ops.push(match op {
                            StackOp::Rnn { rnn, .. } => {
                                rk.rnn_backward(device, rnn, rows, t, from_above, carry_h, &b.out, &dz)?
                            }
                            StackOp::Lstm { lstm, .. } => {
                                let cells = b.cells.as_ref().expect("an LSTM has cells");
                                rk.lstm_backward(
                                    device,
                                    lstm,
                                    rows,
                                    t,
                                    from_above,
                                    carry_h,
                                    (&b.gates, cells),
                                    &dz,
                                    &carry[1],
                                )?
                            }
                            _ => unreachable!("recurrent_ops keeps recurrent layers only"),
                        });
                        // δh_{t−1} = δz_t W_hh.
                        if t > 0 {
                            let dz_t = Operand { buf: &dz, off: u(t * g)?, rs: u(steps * g)?, cs: 1 };
                            let w_hh = Operand::row_major(self.theta, u(w_off + g * n)?, u(h)?);
                            let plain = Epilogue::Plain { alpha: 1.0, accumulate: false, decay: None };
                            ops.push(k.matmul(
                                device,
                                dz_t,
                                w_hh,
                                (&carry[0], 0, u(h)?),
                                (u(rows)?, u(h)?, u(g)?),
                                plain,
                            ));
                        }
                    }
                    // ∇W_ih = α δZᵀ X over all steps.
                    let input = if j == 0 { x } else { (&bufs[j - 1].out, 0) };
                    let dz_all_t = Operand::row_major(&dz, 0, u(g)?).t();
                    let xs = Operand::row_major(input.0, u(input.1)?, u(n)?);
                    let epilogue = Epilogue::Plain { alpha: inv_m, accumulate, decay: decay(b.l, 0) };
                    ops.push(k.matmul(
                        device,
                        dz_all_t,
                        xs,
                        (self.grad, u(w_off)?, u(n)?),
                        (u(g)?, u(n)?, u(rows * steps)?),
                        epilogue,
                    ));
                    // ∇W_hh = α Σ_t δz_tᵀ H_{t−1}, t = 1 … T in order.
                    for t in 0..steps {
                        let dz_t = Operand { buf: &dz, off: u(t * g)?, rs: u(steps * g)?, cs: 1 }.t();
                        let h_prev = match t {
                            0 => Operand::row_major(state_h, u(base * h)?, u(h)?),
                            _ => Operand { buf: &b.out, off: u((t - 1) * h)?, rs: u(steps * h)?, cs: 1 },
                        };
                        let first = t == 0;
                        let epilogue = Epilogue::Plain {
                            alpha: inv_m,
                            accumulate: accumulate || !first,
                            decay: if first { decay(b.l, g * n) } else { None },
                        };
                        let gw = (self.grad, u(w_off + g * n)?, u(h)?);
                        ops.push(k.matmul(device, dz_t, h_prev, gw, (u(g)?, u(h)?, u(rows)?), epilogue));
                    }
                    column_sum(&mut ops, &dz, rows * steps, g, b_off, accumulate)?;
                    // The δh of the layer below, at every step: δZ W_ih.
                    if j > 0 {
                        let d = Operand::row_major(&dz, 0, u(g)?);
                        let w_ih = Operand::row_major(self.theta, u(w_off)?, u(n)?);
                        let plain = Epilogue::Plain { alpha: 1.0, accumulate: false, decay: None };
                        ops.push(k.matmul(
                            device,
                            d,
                            w_ih,
                            (&dh[1 - cur], 0, u(n)?),
                            (u(rows * steps)?, u(n)?, u(g)?),
                            plain,
                        ));
                        cur = 1 - cur;
                    }
                }
            }
            self.record_final_state(&mut ops, &layer_ops, &bufs, &state, rows, base)?;
            base += rows;
        }
        // (λ/2)‖W‖²: Σ W² over the weight prefix of θ (an empty sum, exactly 0, when λ = 0).
        let decayed = if spec.weight_decay != 0.0 { lay.all_weights().len() } else { 0 };
        let p = SmallParams { act: 1, out_off: 1, len: u(decayed)?, ..Default::default() };
        ops.push(k.small(device, Small::SumRange, Some(self.theta), None, Some(self.scalars), None, p, [1, 1, 1]));
        let _ = rk;

        let mut workspace: Vec<wgpu::Buffer> = Vec::new();
        for b in bufs {
            workspace.push(b.gates);
            workspace.extend(b.cells);
            workspace.push(b.out);
        }
        workspace.extend(dh);
        workspace.extend(carry);
        workspace.extend([out, d_out, dz, col_partials, loss_partials]);
        Ok(Plan { ops, stages, examples, workspace, state, shared_sparsity: None })
    }

    /// The activations of every recurrent layer (a per-step layer m × (T·h), a last-step one
    /// m × h) and the output (m × (S·k), softmax applied) on one uploaded chunk from a zero
    /// state, read back in one submission: [`crate::Backend::forward`] for a recurrent stack.
    pub(in crate::gpu) fn forward_recurrent_chunk(
        &self,
        layers: &StackLayers,
        x: &wgpu::Buffer,
        rows: usize,
    ) -> Result<Vec<Array2<f64>>> {
        let layer_ops = recurrent_ops(layers)?;
        let (device, spec) = (&self.gpu.device, self.spec);
        let steps = layers.steps();
        let s_out = spec.output_steps();
        let bufs = self.recurrent_buffers(&layer_ops, rows, steps);
        let state = self.state_buffers(&bufs, rows);
        for s in &state {
            self.gpu.queue.write_buffer(s, 0, &vec![0u8; s.size() as usize]);
        }
        let out = storage(device, "output activations", rows * s_out * spec.outputs());
        let mut ops = Vec::new();
        self.record_recurrent_forward(&mut ops, &layer_ops, &bufs, &state, (x, 0), rows, 0)?;
        let top = bufs.last().expect("a recurrent stack has a layer");
        self.record_recurrent_head(&mut ops, layers, top, rows, &out)?;
        if spec.output == Output::Softmax {
            let p = SmallParams {
                rows: u32_of(rows * s_out, "rows")?,
                cols: u32_of(spec.outputs(), "outputs")?,
                flag: 0,
                ..Default::default()
            };
            let groups = [u32_of((rows * s_out).div_ceil(64), "rows")?, 1, 1];
            ops.push(self.rec.kernels.small(device, Small::Softmax, None, None, Some(&out), None, p, groups));
        }
        if spec.output == Output::SigmoidBce {
            ops.push(crate::gpu::bce::sigmoid_in_place_op(self.rec.gpu, self.rec.kernels, spec, &out, rows * s_out)?);
        }
        let sources: Vec<(&wgpu::Buffer, usize)> =
            bufs.iter().map(|b| (&b.out, steps * b.h)).chain([(&out, s_out * spec.outputs())]).collect();
        let flat = run_and_read(self.gpu, ops, &sources, rows)?;
        let stack = spec.net.as_ref().expect("a recurrent spec has a stack");
        let mut acts = Vec::new();
        for (j, ((_, w), values)) in sources.iter().zip(flat).enumerate() {
            let a =
                Array2::from_shape_vec((rows, *w), values.into_iter().map(f64::from).collect()).expect("sizes match");
            // A last-step layer's activation is its h_T.
            acts.push(match stack.layers.get(j) {
                Some(layer) if !layer.is_per_step() => {
                    let h = bufs[j].h;
                    a.slice(ndarray::s![.., (steps - 1) * h..]).to_owned()
                }
                _ => a,
            });
        }
        Ok(acts)
    }
}

/// Submits `ops` and reads back the first `rows` × width values of each source.
fn run_and_read(gpu: &Gpu, ops: Vec<Op>, sources: &[(&wgpu::Buffer, usize)], rows: usize) -> Result<Vec<Vec<f32>>> {
    let device = &gpu.device;
    let total: usize = sources.iter().map(|(_, w)| w * rows).sum();
    let staging = staging(device, "recurrent readback", total);
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("recurrent") });
    {
        let mut pass = encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("recurrent"), timestamp_writes: None });
        ops.iter().for_each(|op| op.record(&mut pass));
    }
    let mut at = 0u64;
    for (buf, w) in sources {
        let bytes = (rows * w * 4) as u64;
        if bytes > 0 {
            encoder.copy_buffer_to_buffer(buf, 0, &staging, at, bytes);
        }
        at += bytes;
    }
    gpu.queue.submit([encoder.finish()]);
    let flat = read_back(&gpu.device, &staging, total)?;
    let mut start = 0;
    Ok(sources
        .iter()
        .map(|(_, w)| {
            let v = flat[start..start + rows * w].to_vec();
            start += rows * w;
            v
        })
        .collect())
}

impl GpuBackend {
    /// Where the evaluations of a recurrent network start: `None`, from h = c = 0 every time
    /// (the default, as the CPU backend's [`crate::Backend`] calls); `Some(state)`, the next
    /// evaluation from `state` (one [`LayerState`] per recurrent layer, bottom first, each
    /// m × h for the m sequences of that evaluation's batch, c for an LSTM) and every later
    /// one from where the one before it ended — truncated BPTT's carried state (the gradient
    /// is not carried). Errors: `Error::Shape` for a network without recurrent layers; a state
    /// that does not fit the batch is refused at the evaluation.
    pub fn set_recurrent_state(&mut self, state: Option<State<f32>>) -> Result<()> {
        if !self.spec.net.as_ref().is_some_and(|s| s.is_sequence()) {
            return Err(Error::Shape(format!("{} has no recurrent state", self.spec.describe())));
        }
        self.recurrent.start = match state {
            None => Start::Zero,
            Some(s) => Start::Given(s),
        };
        Ok(())
    }

    /// The final state of the last evaluation (one [`LayerState`] per recurrent layer, each
    /// m × h for its m sequences), read back from the device. Errors: no evaluation yet.
    pub fn recurrent_state(&self) -> Result<State<f32>> {
        let (buffers, rows) =
            self.recurrent.holder.as_ref().ok_or_else(|| Error::Data("no recurrent evaluation has run yet".into()))?;
        let layers = StackLayers::of(&self.spec)?.ok_or_else(|| Error::Gpu("not a layer stack".into()))?;
        let mut sources = Vec::new();
        let mut kinds = Vec::new();
        for op in &layers.ops {
            let (_, _, _, h) = op.recurrent_dims().expect("a recurrent stack");
            let is_lstm = matches!(op, StackOp::Lstm { .. });
            for _ in 0..1 + is_lstm as usize {
                sources.push((&buffers[sources.len()], h));
            }
            kinds.push((h, is_lstm));
        }
        let mut flat = run_and_read(&self.gpu, Vec::new(), &sources, *rows)?.into_iter();
        let mut next =
            |h: usize| Array2::from_shape_vec((*rows, h), flat.next().expect("one per buffer")).expect("sizes match");
        let layers = kinds
            .into_iter()
            .map(|(h, is_lstm)| {
                let hs = next(h);
                LayerState { h: hs, c: is_lstm.then(|| next(h)) }
            })
            .collect();
        Ok(State { layers })
    }

    /// Fills the state buffers of plan `key` as [`GpuBackend::set_recurrent_state`] says,
    /// before it is submitted: zeros, the given state, or (carried) the last evaluation's
    /// final state, copied over from that evaluation's plan when it was another one.
    pub(in crate::gpu) fn start_recurrent_state(&mut self, key: &(Vec<Segment>, bool)) -> Result<()> {
        let plan = &self.plans[key];
        if plan.state.is_empty() {
            return Ok(());
        }
        let queue = &self.gpu.queue;
        let rows: usize = key.0.iter().map(|s| s.rows).sum();
        match std::mem::take(&mut self.recurrent.start) {
            Start::Zero => {
                for s in &plan.state {
                    queue.write_buffer(s, 0, &vec![0u8; s.size() as usize]);
                }
            }
            Start::Given(state) => {
                let layers = StackLayers::of(&self.spec)?.ok_or_else(|| Error::Gpu("not a layer stack".into()))?;
                let widths: Vec<(usize, bool)> = layers
                    .ops
                    .iter()
                    .filter_map(|op| op.recurrent_dims().map(|d| (d.3, matches!(op, StackOp::Lstm { .. }))))
                    .collect();
                check_state(&state, &widths, rows)?;
                let mut si = 0;
                for l in &state.layers {
                    for a in std::iter::once(&l.h).chain(l.c.as_ref()) {
                        let v: Vec<f32> = a.iter().copied().collect();
                        queue.write_buffer(&plan.state[si], 0, bytemuck::cast_slice(&v));
                        si += 1;
                    }
                }
                self.recurrent.start = Start::Carried;
            }
            Start::Carried => {
                self.recurrent.start = Start::Carried;
                let Some((from, had)) = &self.recurrent.holder else {
                    return Err(Error::Data("no carried recurrent state: set one first".into()));
                };
                if *from != plan.state {
                    if *had != rows {
                        return Err(Error::Shape(format!(
                            "the carried recurrent state is for {had} sequences, this batch has {rows}: keep the batch size, or start from a new state"
                        )));
                    }
                    let mut encoder = self
                        .gpu
                        .device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("carry state") });
                    for (a, b) in from.iter().zip(&plan.state) {
                        encoder.copy_buffer_to_buffer(a, 0, b, 0, a.size());
                    }
                    queue.submit([encoder.finish()]);
                }
            }
        }
        self.recurrent.holder = Some((plan.state.clone(), rows));
        Ok(())
    }
}

/// T of a recurrent layer.
fn recurrent_steps(op: &StackOp) -> usize {
    match op {
        StackOp::Rnn { rnn, .. } => rnn.steps,
        StackOp::Lstm { lstm, .. } => lstm.steps,
        _ => 1,
    }
}

/// Checks a given state against the layers' (h, is LSTM) and `rows` sequences, in one line.
fn check_state(state: &State<f32>, widths: &[(usize, bool)], rows: usize) -> Result<()> {
    if state.layers.len() != widths.len() {
        return Err(Error::Shape(format!(
            "the carried state has {} layers, the network {} recurrent layers",
            state.layers.len(),
            widths.len()
        )));
    }
    for (i, (st, &(h, lstm))) in state.layers.iter().zip(widths).enumerate() {
        let c_ok = match (&st.c, lstm) {
            (Some(c), true) => c.dim() == (rows, h),
            (None, false) => true,
            _ => false,
        };
        if st.h.dim() != (rows, h) || !c_ok {
            return Err(Error::Shape(format!(
                "the carried state of layer {} is {}×{}{}, but {rows} sequences of that layer need {rows}×{h}{}",
                i + 1,
                st.h.nrows(),
                st.h.ncols(),
                if st.c.is_some() { " with a cell state" } else { "" },
                if lstm { " with a cell state" } else { "" }
            )));
        }
    }
    Ok(())
}
