//! Recurrent networks on the CPU: a stack of rnn/lstm layers over m sequences of T steps, then
//! the dense output layer at the last step (classification) or at every step (sequence
//! labelling, language models), trained by backpropagation through time (MATH.md, "Layers
//! beyond dense": Elman RNN, LSTM, BPTT, the character-level language model).
//!
//! ## Shapes
//! - The input is m × (T·n), row i holding step t's n features at columns t·n … t·n + n − 1.
//! - Last-step output: m × k, one label or target row per sequence.
//! - Per-step output: m × (T·k), row i holding step t's k outputs at columns t·k … t·k + k − 1;
//!   labels are m·T (sequence i's step t at i·T + t), targets m × (T·k) like the output.
//!   The cost is the mean over all steps and sequences.
//!
//! ## θ
//! Every weight block in layer order (a recurrent layer's is W_ih then W_hh, PyTorch's
//! layouts, see [`crate::model::Layer::Lstm`]), the output's W, then every bias. The gradient
//! of the data term is summed over [`CHUNK_ROWS`] sequences at a time in order, so its bits do
//! not depend on the number of threads.
//!
//! ## Carried state (truncated BPTT)
//! [`cost_and_grad`] and [`predict`] take each layer's initial state (h_0, and c_0 for an LSTM;
//! zero when `None`) and return the final one, to pass into the next window: the state is
//! carried across windows, the gradient is not. [`Recurrent`] bundles the spec for library
//! users; gradient clipping by global norm for the minibatch optimizers is
//! [`crate::optim::clip_by_global_norm`] (`Minibatch::with_clip_norm`).

use ndarray::{Array2, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, Zip, s};

use super::net::{self, Forward, TargetView, column_sums};
use super::stack::{CHUNK_ROWS, stack_chunks};
use super::{Real, gemm};
use crate::backend::Cost;
use crate::layers::lstm::{Lstm, LstmForward};
use crate::layers::rnn::{ParamGradients, Rnn, RnnForward, batch_major, time_major};
use crate::model::{Layer, NetSpec, ThetaLayout};
use crate::{Error, Result};

/// One recurrent layer, its geometry checked, with the index `l` of its weights and bias in θ.
#[derive(Clone, Debug)]
enum Op {
    Rnn { l: usize, rnn: Rnn },
    Lstm { l: usize, lstm: Lstm },
}

impl Op {
    fn l(&self) -> usize {
        match self {
            Op::Rnn { l, .. } | Op::Lstm { l, .. } => *l,
        }
    }

    /// (gate rows, n, h): W_ih is rows × n, W_hh rows × h.
    fn dims(&self) -> (usize, usize, usize) {
        match self {
            Op::Rnn { rnn, .. } => (rnn.hidden, rnn.inputs, rnn.hidden),
            Op::Lstm { lstm, .. } => (4 * lstm.hidden, lstm.inputs, lstm.hidden),
        }
    }

    fn hidden(&self) -> usize {
        self.dims().2
    }
}

/// The layers of a recurrent stack spec, ready to run.
#[derive(Clone, Debug)]
pub struct Plan {
    ops: Vec<Op>,
    /// θ index of the output layer.
    out_l: usize,
    /// T.
    steps: usize,
    /// The output at every step (else at the last).
    per_step: bool,
}

impl Plan {
    /// The plan of a validated spec whose stack starts with a recurrent layer; `None` for any
    /// other spec.
    pub fn of(spec: &NetSpec) -> Result<Option<Plan>> {
        let Some(stack) = spec.net.as_ref().filter(|s| s.is_sequence()) else { return Ok(None) };
        stack.shapes()?;
        let steps = stack.input.height;
        let mut n = stack.input.width;
        let mut ops = Vec::with_capacity(stack.layers.len());
        for (l, layer) in stack.layers.iter().enumerate() {
            let op = match *layer {
                Layer::Rnn { units, activation, .. } => Op::Rnn { l, rnn: Rnn::new(n, units, steps, activation)? },
                Layer::Lstm { units, .. } => Op::Lstm { l, lstm: Lstm::new(n, units, steps)? },
                _ => {
                    return Err(Error::Shape(format!(
                        "layer {} ({}): only rnn and lstm layers may follow a recurrent layer",
                        l + 1,
                        layer.describe()
                    )));
                }
            };
            n = op.hidden();
            ops.push(op);
        }
        Ok(Some(Plan { out_l: ops.len(), ops, steps, per_step: stack.output_steps() > 1 }))
    }

    /// Steps the output is applied at: T per step, else 1.
    pub fn output_steps(&self) -> usize {
        if self.per_step { self.steps } else { 1 }
    }

    /// The zero state of every layer for `m` sequences.
    pub fn zero_state<F: Real>(&self, m: usize) -> State<F> {
        let layers = self
            .ops
            .iter()
            .map(|op| {
                let zero = || Array2::zeros((m, op.hidden()));
                LayerState { h: zero(), c: matches!(op, Op::Lstm { .. }).then(zero) }
            })
            .collect();
        State { layers }
    }
}

/// The state of one recurrent layer for m sequences: h (m × units) and, for an LSTM, c.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerState<F> {
    /// h_t, the hidden state after the last step: m × units.
    pub h: Array2<F>,
    /// c_t, the LSTM cell state after the last step (m × units); `None` for a plain rnn.
    pub c: Option<Array2<F>>,
}

/// The state of every recurrent layer of a network, bottom first: what truncated BPTT carries
/// from one window to the next.
#[derive(Clone, Debug, PartialEq)]
pub struct State<F> {
    /// One state per recurrent layer, bottom first.
    pub layers: Vec<LayerState<F>>,
}

impl<F: Real> State<F> {
    /// Sequences the state is for.
    pub fn batch(&self) -> usize {
        self.layers.first().map_or(0, |l| l.h.nrows())
    }

    fn rows(&self, r: std::ops::Range<usize>) -> StateRows<'_, F> {
        self.layers
            .iter()
            .map(|l| (l.h.slice(s![r.clone(), ..]), l.c.as_ref().map(|c| c.slice(s![r.clone(), ..]))))
            .collect()
    }

    /// Checks that the state fits `plan` and `m` sequences, in one line naming the layer.
    fn check(&self, plan: &Plan, m: usize) -> Result<()> {
        if self.layers.len() != plan.ops.len() {
            return Err(Error::Shape(format!(
                "the carried state has {} layers, the network {} recurrent layers",
                self.layers.len(),
                plan.ops.len()
            )));
        }
        for (i, (st, op)) in self.layers.iter().zip(&plan.ops).enumerate() {
            let want = (m, op.hidden());
            let lstm = matches!(op, Op::Lstm { .. });
            let c_ok = match (&st.c, lstm) {
                (Some(c), true) => c.dim() == want,
                (None, false) => true,
                _ => false,
            };
            if st.h.dim() != want || !c_ok {
                return Err(Error::Shape(format!(
                    "the carried state of layer {} is {}×{}{}, but {m} sequences of that layer need {}×{}{}",
                    i + 1,
                    st.h.nrows(),
                    st.h.ncols(),
                    if st.c.is_some() { " with a cell state" } else { "" },
                    want.0,
                    want.1,
                    if lstm { " with a cell state" } else { "" }
                )));
            }
        }
        Ok(())
    }
}

/// Each layer's (h, c) for some rows of a [`State`].
type StateRows<'a, F> = Vec<(ArrayView2<'a, F>, Option<ArrayView2<'a, F>>)>;

/// One layer's forward pass, as kept for the backward.
enum Kept<F> {
    Rnn(RnnForward<F>),
    Lstm(LstmForward<F>),
}

impl<F: Real> Kept<F> {
    fn outputs(&self) -> ArrayView2<'_, F> {
        match self {
            Kept::Rnn(f) => f.outputs(),
            Kept::Lstm(f) => f.outputs(),
        }
    }

    fn final_state(&self) -> (ArrayView2<'_, F>, Option<ArrayView2<'_, F>>) {
        match self {
            Kept::Rnn(f) => (f.final_state(), None),
            Kept::Lstm(f) => {
                let (h, c) = f.final_state();
                (h, Some(c))
            }
        }
    }
}

/// W_ih (rows × n) and W_hh (rows × h) of recurrent layer `op`: its weight block in θ.
fn weights<'a, F>(layout: &ThetaLayout, theta: &'a [F], op: &Op) -> (ArrayView2<'a, F>, ArrayView2<'a, F>) {
    let (rows, n, h) = op.dims();
    let (ih, hh) = theta[layout.weight_range(op.l())].split_at(rows * n);
    (
        ArrayView2::from_shape((rows, n), ih).expect("layout matches the layer"),
        ArrayView2::from_shape((rows, h), hh).expect("layout matches the layer"),
    )
}

/// The gradient views of recurrent layer `op` inside `g`.
fn gradients<'a, F>(layout: &ThetaLayout, g: &'a mut [F], op: &Op) -> ParamGradients<'a, F> {
    let (rows, n, h) = op.dims();
    let (w_range, b_range) = (layout.weight_range(op.l()), layout.bias_range(op.l()));
    let (lo, hi) = g.split_at_mut(b_range.start);
    let (ih, hh) = lo[w_range].split_at_mut(rows * n);
    ParamGradients {
        w_ih: ArrayViewMut2::from_shape((rows, n), ih).expect("layout matches the layer"),
        w_hh: ArrayViewMut2::from_shape((rows, h), hh).expect("layout matches the layer"),
        b: ArrayViewMut1::from(&mut hi[..b_range.len()]),
    }
}

/// A chunk's forward pass: the time-major input, each layer's kept values, the output layer's
/// input (one row per sequence, or per (sequence, step), sequence-major) and its [`Forward`].
struct Pass<F> {
    xt: Array2<F>,
    kept: Vec<Kept<F>>,
    head: Array2<F>,
    out: Forward<F>,
}

fn forward_chunk<F: Real>(
    plan: &Plan,
    spec: &NetSpec,
    layout: &ThetaLayout,
    theta: &[F],
    x: ArrayView2<F>,
    state: Option<StateRows<'_, F>>,
) -> Result<Pass<F>> {
    let m = x.nrows();
    let xt = time_major(x, plan.steps)?;
    let mut kept: Vec<Kept<F>> = Vec::with_capacity(plan.ops.len());
    for (i, op) in plan.ops.iter().enumerate() {
        let input = kept.last().map_or(xt.view(), Kept::outputs);
        let (w_ih, w_hh) = weights(layout, theta, op);
        let b = layout.bias(theta, op.l());
        let s = state.as_ref().map(|s| s[i]);
        let k = match op {
            Op::Rnn { rnn, .. } => Kept::Rnn(rnn.forward(w_ih, w_hh, b, input, s.map(|s| s.0))?),
            Op::Lstm { lstm, .. } => {
                let s = s.map(|(h, c)| (h, c.expect("a checked LSTM state has its cells")));
                Kept::Lstm(lstm.forward(w_ih, w_hh, b, input, s)?)
            }
        };
        kept.push(k);
    }
    let top = kept.last().expect("a recurrent plan has a layer");
    let h = top.outputs().ncols();
    let head = if plan.per_step {
        let rows = batch_major(top.outputs(), plan.steps)?;
        rows.into_shape_with_order((m * plan.steps, h)).map_err(|e| Error::Shape(e.to_string()))?
    } else {
        top.final_state().0.to_owned()
    };
    // The output layer: Z = H Wᵀ + b, then the activation or softmax (as cpu::stack).
    let w = layout.weight(theta, plan.out_l);
    let mut z = Array2::zeros((head.nrows(), w.nrows()));
    gemm(F::one(), &head.view(), &w.t(), F::zero(), &mut z.view_mut());
    let out = net::output_forward(&mut net::Scratch::default(), spec, z, layout.bias(theta, plan.out_l));
    Ok(Pass { xt, kept, head, out })
}

/// m × (S·k) from the output layer's (m·S) × k rows.
fn per_example<F: Real>(out: Array2<F>, m: usize) -> Result<Array2<F>> {
    let cols = out.len() / m.max(1);
    out.into_shape_with_order((m, cols)).map_err(|e| Error::Shape(e.to_string()))
}

/// Rows viewed as (rows·S) × (cols/S): a per-step target or input, one row per step.
fn per_step_rows<F: Real>(a: ArrayView2<F>, steps: usize) -> Result<Array2<F>> {
    let (m, cols) = a.dim();
    a.as_standard_layout()
        .into_owned()
        .into_shape_with_order((m * steps, cols / steps))
        .map_err(|e| Error::Shape(e.to_string()))
}

fn check_state<F: Real>(plan: &Plan, state: Option<&State<F>>, m: usize) -> Result<()> {
    state.map_or(Ok(()), |s| s.check(plan, m))
}

/// Appends each layer's final state to its list in `out`.
fn push_final_state<F: Real>(kept: &[Kept<F>], out: &mut [Vec<LayerState<F>>]) {
    for (k, o) in kept.iter().zip(out.iter_mut()) {
        let (h, c) = k.final_state();
        o.push(LayerState { h: h.to_owned(), c: c.map(|c| c.to_owned()) });
    }
}

/// Each layer's chunks of state stacked into one.
fn join_state<F: Real>(parts: Vec<Vec<LayerState<F>>>) -> Result<State<F>> {
    let cat = |v: Vec<ArrayView2<F>>| ndarray::concatenate(Axis(0), &v).map_err(|e| Error::Shape(e.to_string()));
    let layers = parts
        .into_iter()
        .map(|chunks| {
            let h = cat(chunks.iter().map(|l| l.h.view()).collect())?;
            let c = match chunks.first().is_some_and(|l| l.c.is_some()) {
                true => Some(cat(chunks.iter().map(|l| l.c.as_ref().expect("an LSTM state").view()).collect())?),
                false => None,
            };
            Ok(LayerState { h, c })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(State { layers })
}

/// The activations of every layer after the input, batch-major as [`crate::Backend::forward`]
/// returns them: a per-step recurrent layer m × (T·units), a last-step one m × units, the
/// output m × (S·k). Starts from `state` (zero when `None`).
pub fn forward<F: Real>(
    plan: &Plan,
    spec: &NetSpec,
    layout: &ThetaLayout,
    theta: &[F],
    x: ArrayView2<F>,
    state: Option<&State<F>>,
) -> Result<Vec<Array2<F>>> {
    check_state(plan, state, x.nrows())?;
    let mut parts: Vec<Vec<Array2<F>>> = Vec::new();
    for (c, chunk) in x.axis_chunks_iter(Axis(0), CHUNK_ROWS).enumerate() {
        let r = c * CHUNK_ROWS..c * CHUNK_ROWS + chunk.nrows();
        let pass = forward_chunk(plan, spec, layout, theta, chunk, state.map(|s| s.rows(r)))?;
        let mut acts = Vec::with_capacity(plan.ops.len() + 1);
        for (k, layer) in pass.kept.iter().zip(&spec.net.as_ref().expect("a recurrent spec has a stack").layers) {
            acts.push(match layer.is_per_step() {
                true => batch_major(k.outputs(), plan.steps)?,
                false => k.final_state().0.to_owned(),
            });
        }
        let out = pass.out.activations.into_iter().next().expect("an output layer");
        acts.push(per_example(out, chunk.nrows())?);
        parts.push(acts);
    }
    stack_chunks(&parts, plan.ops.len() + 1)
}

/// The network's output h(x) (m × (S·k)) from `state` (zero when `None`), and the final state.
pub fn predict<F: Real>(
    plan: &Plan,
    spec: &NetSpec,
    layout: &ThetaLayout,
    theta: &[F],
    x: ArrayView2<F>,
    state: Option<&State<F>>,
) -> Result<(Array2<F>, State<F>)> {
    let m = x.nrows();
    check_state(plan, state, m)?;
    let mut out = Array2::zeros((m, spec.outputs() * plan.output_steps()));
    let mut finals = vec![Vec::new(); plan.ops.len()];
    for (c, (chunk, mut o)) in
        x.axis_chunks_iter(Axis(0), CHUNK_ROWS).zip(out.axis_chunks_iter_mut(Axis(0), CHUNK_ROWS)).enumerate()
    {
        let r = c * CHUNK_ROWS..c * CHUNK_ROWS + chunk.nrows();
        let pass = forward_chunk(plan, spec, layout, theta, chunk, state.map(|s| s.rows(r)))?;
        push_final_state(&pass.kept, &mut finals);
        let z = pass.out.activations.into_iter().next().expect("an output layer");
        o.assign(&per_example(z, chunk.nrows())?);
    }
    Ok((out, join_state(finals)?))
}

/// The targets of sequences `r` (labels: S per sequence).
fn target_rows<'a, F>(y: TargetView<'a, F>, r: std::ops::Range<usize>, steps: usize) -> TargetView<'a, F> {
    match y {
        TargetView::Inputs => TargetView::Inputs,
        TargetView::Labels(l) => TargetView::Labels(&l[r.start * steps..r.end * steps]),
        TargetView::Values(v) => TargetView::Values(v.slice_move(s![r, ..])),
    }
}

/// Checks the targets against the batch: S labels per sequence, S·k target columns.
fn check_targets<F: Real>(spec: &NetSpec, plan: &Plan, m: usize, y: TargetView<F>) -> Result<()> {
    let steps = plan.output_steps();
    let k = spec.outputs();
    match y {
        TargetView::Labels(l) if l.len() != m * steps => Err(Error::Shape(format!(
            "{} labels for {m} sequences: give {steps} label{} per sequence",
            l.len(),
            if steps == 1 { "" } else { "s (one per step)" }
        ))),
        TargetView::Values(v) if v.dim() != (m, k * steps) => Err(Error::Shape(format!(
            "targets are {}×{} but need to be {m}×{} ({steps} step{} of {k} outputs per sequence)",
            v.nrows(),
            v.ncols(),
            k * steps,
            if steps == 1 { "" } else { "s" }
        ))),
        _ => Ok(()),
    }
}

/// J(θ) on the sequences (x, y) from `state` (zero when `None`), and, when `grad` is given,
/// ∇J(θ) written into it (every value); also the final state of every layer, to carry into
/// the next window. The data term is the mean over sequences and output steps (MATH.md,
/// "Character-level language model"); weight decay (λ/2)‖W‖² covers W_ih, W_hh and the
/// output's W, never a bias. Errors: `Error::Shape` when x, y or the state do not fit.
#[allow(clippy::too_many_arguments)]
pub fn cost_and_grad<F: Real>(
    plan: &Plan,
    spec: &NetSpec,
    layout: &ThetaLayout,
    theta: &[F],
    x: ArrayView2<F>,
    y: TargetView<F>,
    state: Option<&State<F>>,
    mut grad: Option<&mut [F]>,
) -> Result<(Cost, State<F>)> {
    let m = x.nrows();
    check_state(plan, state, m)?;
    check_targets(spec, plan, m, y)?;
    let steps = plan.output_steps();
    let total = (m * steps) as f64;
    let alpha = F::of(1.0 / total);
    let mut data_sum = 0.0;
    let mut chunk_grad = grad.as_ref().map(|g| vec![F::zero(); g.len()]);
    if let Some(g) = grad.as_deref_mut() {
        g.iter_mut().for_each(|v| *v = F::zero());
    }
    let mut finals = vec![Vec::new(); plan.ops.len()];
    for start in (0..m).step_by(CHUNK_ROWS) {
        let r = start..(start + CHUNK_ROWS).min(m);
        let xc = x.slice(s![r.clone(), ..]);
        let mut pass = forward_chunk(plan, spec, layout, theta, xc, state.map(|s| s.rows(r.clone())))?;
        push_final_state(&pass.kept, &mut finals);
        let yc = target_rows(y, r.clone(), steps);
        // Per step, the output's rows are (sequence, step) pairs: so are the targets' and,
        // for an autoencoder, the inputs'.
        let x_rows = if plan.per_step { Some(per_step_rows(xc, plan.steps)?) } else { None };
        let y_rows = match (plan.per_step, yc) {
            (true, TargetView::Values(v)) => Some(per_step_rows(v, plan.steps)?),
            _ => None,
        };
        let x_out = x_rows.as_ref().map_or(xc, |a| a.view());
        let y_out = match (&y_rows, yc) {
            (Some(v), _) => TargetView::Values(v.view()),
            (None, TargetView::Values(v)) => TargetView::Values(v),
            (None, TargetView::Labels(l)) => TargetView::Labels(l),
            (None, TargetView::Inputs) => TargetView::Inputs,
        };
        let want = chunk_grad.is_some();
        let (data, delta) = net::output_cost_and_delta(spec, &mut pass.out, x_out, y_out, want);
        data_sum += data * (r.len() * steps) as f64;
        if let (Some(cg), Some(delta)) = (chunk_grad.as_mut(), delta) {
            backward_chunk(plan, layout, theta, &pass, delta, alpha, cg)?;
            let g = grad.as_deref_mut().expect("a gradient buffer with the chunk gradient");
            g.iter_mut().zip(cg.iter()).for_each(|(g, &c)| *g += c);
        }
    }
    let weight_decay = net::weight_decay_cost(spec, layout, theta);
    if let Some(g) = grad {
        let lambda = F::of(spec.weight_decay);
        let weights = layout.all_weights();
        g[weights.clone()].iter_mut().zip(&theta[weights]).for_each(|(g, &w)| *g += lambda * w);
    }
    let cost = Cost { data: if m == 0 { 0.0 } else { data_sum / total }, weight_decay, sparsity: 0.0 };
    Ok((cost, join_state(finals)?))
}

/// The gradient of one chunk's data term, scaled by α = 1/(m·S) of the whole batch, written
/// into `g` (every value).
fn backward_chunk<F: Real>(
    plan: &Plan,
    layout: &ThetaLayout,
    theta: &[F],
    pass: &Pass<F>,
    delta: Array2<F>,
    alpha: F,
    g: &mut [F],
) -> Result<()> {
    // Output layer: ∇W = α δᵀ H, ∇b = α Σ δ, δH = δ W.
    let mut gw = layout.weight_mut(g, plan.out_l);
    gemm(alpha, &delta.t(), &pass.head.view(), F::zero(), &mut gw);
    let sums = column_sums(delta.view());
    Zip::from(layout.bias_mut(g, plan.out_l)).and(&sums).for_each(|gb, &s| *gb = s * alpha);
    let w = layout.weight(theta, plan.out_l);
    let mut d_head = Array2::zeros((delta.nrows(), w.ncols()));
    gemm(F::one(), &delta.view(), &w, F::zero(), &mut d_head.view_mut());
    // δh of the top layer at every step, time-major.
    let m = pass.xt.nrows() / plan.steps;
    let h = d_head.ncols();
    let mut dh = if plan.per_step {
        let rows = d_head.into_shape_with_order((m, plan.steps * h)).map_err(|e| Error::Shape(e.to_string()))?;
        time_major(rows.view(), plan.steps)?
    } else {
        let mut dh = Array2::zeros((plan.steps * m, h));
        dh.slice_mut(s![(plan.steps - 1) * m.., ..]).assign(&d_head);
        dh
    };
    for (i, op) in plan.ops.iter().enumerate().rev() {
        let input = if i == 0 { pass.xt.view() } else { pass.kept[i - 1].outputs() };
        let (w_ih, w_hh) = weights(layout, theta, op);
        let grads = gradients(layout, g, op);
        let back = match (op, &pass.kept[i]) {
            (Op::Rnn { rnn, .. }, Kept::Rnn(f)) => {
                rnn.backward(w_ih, w_hh, input, f, dh.view(), alpha, grads, i > 0)?
            }
            (Op::Lstm { lstm, .. }, Kept::Lstm(f)) => {
                lstm.backward(w_ih, w_hh, input, f, dh.view(), alpha, grads, i > 0)?
            }
            _ => unreachable!("each layer keeps its own kind"),
        };
        match back.input {
            Some(d) => dh = d,
            None => break,
        }
    }
    Ok(())
}

/// A recurrent network for library users (truncated BPTT, sampling): the spec, θ's layout and
/// the plan, with a state in and the final state out of every call. Each call works in the
/// precision of its θ, data and state (f64 the reference, f32 the fast path).
///
/// Truncated BPTT over two windows of T = 3 steps, the state carried, the gradient not:
/// ```
/// use ndarray::Array2;
/// use wgnn::cpu::net::TargetView;
/// use wgnn::cpu::sequence::Recurrent;
/// use wgnn::model::{InputShape, LayerStack, NetSpec, parse_net};
///
/// let parsed = parse_net("lstm 4, per-step softmax").unwrap();
/// let stack = LayerStack { input: InputShape::sequence(3, 2), layers: parsed.layers };
/// let rec = Recurrent::new(NetSpec::stack(stack, 5, parsed.output).unwrap()).unwrap();
/// let theta = vec![0.1f32; rec.layout.len()];
/// let x = Array2::<f32>::ones((2, 3 * 2)); // 2 sequences, 3 steps of 2 features
/// let labels = vec![0; 2 * 3]; // one per (sequence, step)
/// let mut grad = vec![0.0f32; theta.len()];
/// let (_, state) = rec.cost_and_grad(&theta, x.view(), TargetView::Labels(&labels), None, Some(&mut grad)).unwrap();
/// let (cost, _) =
///     rec.cost_and_grad(&theta, x.view(), TargetView::Labels(&labels), Some(&state), Some(&mut grad)).unwrap();
/// assert!(cost.total() > 0.0 && state.layers[0].c.is_some());
/// ```
#[derive(Clone, Debug)]
pub struct Recurrent {
    /// The network: recurrent layers first, then dense layers and the output.
    pub spec: NetSpec,
    /// Where each layer's parameters sit in θ (`layout.len()` values in all).
    pub layout: ThetaLayout,
    plan: Plan,
}

impl Recurrent {
    /// The network of a spec whose stack starts with an rnn or lstm layer; `Error::Shape` (or
    /// the spec's error) otherwise.
    pub fn new(spec: NetSpec) -> Result<Recurrent> {
        spec.validate()?;
        let plan = Plan::of(&spec)?.ok_or_else(|| {
            Error::Shape(format!("{} is not a recurrent network: start the --net with rnn or lstm", spec.describe()))
        })?;
        Ok(Recurrent { layout: ThetaLayout::new(&spec), spec, plan })
    }

    /// T: steps per sequence (the window of truncated BPTT).
    pub fn steps(&self) -> usize {
        self.plan.steps
    }

    /// Steps the output is applied at: T for a per-step output, else 1.
    pub fn output_steps(&self) -> usize {
        self.plan.output_steps()
    }

    /// The zero state for `m` sequences.
    pub fn zero_state<F: Real>(&self, m: usize) -> State<F> {
        self.plan.zero_state(m)
    }

    fn check_theta<F>(&self, theta: &[F]) -> Result<()> {
        crate::backend::check_theta_len(&self.spec, theta.len())
    }

    /// J(θ) and, with `grad`, ∇J(θ) on one window of sequences from `state`, and the final
    /// state: see [`cost_and_grad`]. x is m × (T·n); y S labels per sequence or m × (S·k)
    /// targets.
    pub fn cost_and_grad<F: Real>(
        &self,
        theta: &[F],
        x: ArrayView2<F>,
        y: TargetView<F>,
        state: Option<&State<F>>,
        grad: Option<&mut [F]>,
    ) -> Result<(Cost, State<F>)> {
        self.check_theta(theta)?;
        if let Some(g) = &grad
            && g.len() != theta.len()
        {
            return Err(Error::Shape(format!("gradient buffer has {} values, θ has {}", g.len(), theta.len())));
        }
        check_x(&self.spec, x)?;
        cost_and_grad(&self.plan, &self.spec, &self.layout, theta, x, y, state, grad)
    }

    /// The output (m × (S·k)) from `state`, and the final state: see [`predict`].
    pub fn predict<F: Real>(
        &self,
        theta: &[F],
        x: ArrayView2<F>,
        state: Option<&State<F>>,
    ) -> Result<(Array2<F>, State<F>)> {
        self.check_theta(theta)?;
        check_x(&self.spec, x)?;
        predict(&self.plan, &self.spec, &self.layout, theta, x, state)
    }
}

fn check_x<F: Real>(spec: &NetSpec, x: ArrayView2<F>) -> Result<()> {
    if x.nrows() == 0 {
        return Err(Error::Data("the batch holds no sequences".into()));
    }
    if x.ncols() != spec.inputs() {
        let shape = spec.net.as_ref().map(|s| s.input).expect("a recurrent spec has a stack");
        return Err(Error::Shape(format!(
            "the sequences have {} columns, but the network reads {} steps of {} features ({} columns per row)",
            x.ncols(),
            shape.height,
            shape.width,
            spec.inputs()
        )));
    }
    Ok(())
}
