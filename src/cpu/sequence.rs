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
use crate::layers::rnn::{
    ParamGradients, Rnn, RnnForward, Scratch, StateGradients, batch_major, one_hot_columns, time_major,
};
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
    /// The buffers of the last evaluation, for the next.
    work: Work,
}

/// The arrays of a plan's last evaluation ([`Buffers`], one per precision), handed to the next
/// one: a training step of the character model (LSTM-256, T 64, 32 sequences) uses ~35 MB of
/// arrays, which fresh from the allocator are fresh pages from the kernel (a fault per page)
/// every step unless the allocator keeps freed memory (the `wgnn` binary's `mallopt`; a
/// library's caller does not). Cloning a plan starts it with none; two threads evaluating with
/// one plan at once do not wait for each other: the one that finds the buffers taken uses
/// fresh arrays.
#[derive(Default)]
struct Work(std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>);

impl Clone for Work {
    fn clone(&self) -> Work {
        Work::default()
    }
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Work")
    }
}

/// The kept arrays: the layers' and the sequence code's, and the output layer's (its logits).
struct Buffers<F> {
    arrays: Scratch<F>,
    output: net::Scratch<F>,
}

impl<F> Default for Buffers<F> {
    fn default() -> Buffers<F> {
        Buffers { arrays: Scratch::default(), output: net::Scratch::default() }
    }
}

impl Work {
    /// Runs `f` with the kept buffers of precision F (none at first), then keeps them.
    fn with<F: Real, R>(&self, f: impl FnOnce(&mut Buffers<F>) -> R) -> R {
        let kept = self.0.try_lock().ok().and_then(|mut k| k.take());
        let mut scratch = kept.and_then(|b| b.downcast::<Buffers<F>>().ok()).map_or_else(Buffers::default, |b| *b);
        let out = f(&mut scratch);
        if let Ok(mut k) = self.0.try_lock() {
            *k = Some(Box::new(scratch));
        }
        out
    }
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
        Ok(Some(Plan { out_l: ops.len(), ops, steps, per_step: stack.output_steps() > 1, work: Work::default() }))
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
    fn recycle(self, scratch: &mut Scratch<F>) {
        match self {
            Kept::Rnn(f) => f.recycle(scratch),
            Kept::Lstm(f) => f.recycle(scratch),
        }
    }

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

/// A chunk's forward pass: the time-major input (and its one-hot columns, when it is one-hot),
/// each layer's kept values, the output layer's input when it is not the top layer's outputs
/// (last-step: h_T, one row per sequence) and its [`Forward`]. A per-step output's rows are the
/// top layer's, time-major: row t·m + i is sequence i's step t.
struct Pass<F> {
    xt: Array2<F>,
    one_hot: Option<Vec<usize>>,
    kept: Vec<Kept<F>>,
    last: Option<Array2<F>>,
    out: Forward<F>,
}

impl<F: Real> Pass<F> {
    /// The output layer's input: (T·m) × h time-major per step, else m × h.
    fn head(&self) -> ArrayView2<'_, F> {
        match &self.last {
            Some(h) => h.view(),
            None => self.kept.last().expect("a recurrent plan has a layer").outputs(),
        }
    }

    fn recycle(self, bufs: &mut Buffers<F>) {
        let scratch = &mut bufs.arrays;
        scratch.recycle(self.xt);
        self.kept.into_iter().for_each(|k| k.recycle(scratch));
        self.last.into_iter().chain(self.out.activations).for_each(|a| scratch.recycle(a));
        self.out.softmax.into_iter().for_each(|(z, _)| bufs.output.recycle(z));
        self.out.logits.into_iter().for_each(|z| bufs.output.recycle(z));
    }
}

fn forward_chunk<F: Real>(
    bufs: &mut Buffers<F>,
    plan: &Plan,
    spec: &NetSpec,
    layout: &ThetaLayout,
    theta: &[F],
    x: ArrayView2<F>,
    state: Option<StateRows<'_, F>>,
) -> Result<Pass<F>> {
    let m = x.nrows();
    let scratch = &mut bufs.arrays;
    let xt = time_major_in(scratch, x, plan.steps)?;
    let one_hot = one_hot_columns(xt.view());
    let mut kept: Vec<Kept<F>> = Vec::with_capacity(plan.ops.len());
    for (i, op) in plan.ops.iter().enumerate() {
        let (input, cols) = match kept.last() {
            Some(k) => (k.outputs(), None),
            None => (xt.view(), one_hot.as_deref()),
        };
        let (w_ih, w_hh) = weights(layout, theta, op);
        let b = layout.bias(theta, op.l());
        let s = state.as_ref().map(|s| s[i]);
        let k = match op {
            Op::Rnn { rnn, .. } => Kept::Rnn(rnn.forward_in(scratch, w_ih, w_hh, b, input, cols, s.map(|s| s.0))?),
            Op::Lstm { lstm, .. } => {
                let s = s.map(|(h, c)| (h, c.expect("a checked LSTM state has its cells")));
                Kept::Lstm(lstm.forward_in(scratch, w_ih, w_hh, b, input, cols, s)?)
            }
        };
        kept.push(k);
    }
    let top = kept.last().expect("a recurrent plan has a layer");
    let last = (!plan.per_step).then(|| {
        let h_t = top.final_state().0;
        let mut a = scratch.array(m, h_t.ncols());
        a.assign(&h_t);
        a
    });
    let head = last.as_ref().map_or_else(|| top.outputs(), |a| a.view());
    // The output layer: Z = H Wᵀ + b, then the activation or softmax (as cpu::stack).
    let w = layout.weight(theta, plan.out_l);
    let mut z = scratch.array(head.nrows(), w.nrows());
    gemm(F::one(), &head, &w.t(), F::zero(), &mut z.view_mut());
    let out = net::output_forward(&mut bufs.output, spec, z, layout.bias(theta, plan.out_l));
    Ok(Pass { xt, one_hot, kept, last, out })
}

/// [`time_major`] into a buffer of `scratch`.
fn time_major_in<F: Real>(scratch: &mut Scratch<F>, x: ArrayView2<F>, steps: usize) -> Result<Array2<F>> {
    let (m, cols) = x.dim();
    if !cols.is_multiple_of(steps) {
        return time_major(x, steps);
    }
    let n = cols / steps;
    let mut out = scratch.array(steps * m, n);
    for t in 0..steps {
        out.slice_mut(s![t * m..(t + 1) * m, ..]).assign(&x.slice(s![.., t * n..(t + 1) * n]));
    }
    Ok(out)
}

/// m × (S·k) from the output layer's rows: time-major (T·m) × k per step, m × k at the last.
fn per_example<F: Real>(plan: &Plan, out: ArrayView2<F>) -> Result<Array2<F>> {
    match plan.per_step {
        true => batch_major(out, plan.steps),
        false => Ok(out.to_owned()),
    }
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
    plan.work.with(|scratch| {
        let mut parts: Vec<Vec<Array2<F>>> = Vec::new();
        for (c, chunk) in x.axis_chunks_iter(Axis(0), CHUNK_ROWS).enumerate() {
            let r = c * CHUNK_ROWS..c * CHUNK_ROWS + chunk.nrows();
            let pass = forward_chunk(scratch, plan, spec, layout, theta, chunk, state.map(|s| s.rows(r)))?;
            let mut acts = Vec::with_capacity(plan.ops.len() + 1);
            for (k, layer) in pass.kept.iter().zip(&spec.net.as_ref().expect("a recurrent spec has a stack").layers) {
                acts.push(match layer.is_per_step() {
                    true => batch_major(k.outputs(), plan.steps)?,
                    false => k.final_state().0.to_owned(),
                });
            }
            acts.push(per_example(plan, output_of(&pass.out))?);
            parts.push(acts);
            pass.recycle(scratch);
        }
        stack_chunks(&parts, plan.ops.len() + 1)
    })
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
    plan.work.with(|scratch| -> Result<()> {
        for (c, (chunk, mut o)) in
            x.axis_chunks_iter(Axis(0), CHUNK_ROWS).zip(out.axis_chunks_iter_mut(Axis(0), CHUNK_ROWS)).enumerate()
        {
            let r = c * CHUNK_ROWS..c * CHUNK_ROWS + chunk.nrows();
            let pass = forward_chunk(scratch, plan, spec, layout, theta, chunk, state.map(|s| s.rows(r)))?;
            push_final_state(&pass.kept, &mut finals);
            o.assign(&per_example(plan, output_of(&pass.out))?);
            pass.recycle(scratch);
        }
        Ok(())
    })?;
    Ok((out, join_state(finals)?))
}

/// The output h(x) of a forward pass: its last activations.
fn output_of<F: Real>(out: &Forward<F>) -> ArrayView2<'_, F> {
    out.activations.last().expect("an output layer").view()
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
    // The first chunk's gradient is written into `grad`, later chunks' added in order (the
    // same bits as adding the first to zeros).
    let mut chunk_grad = Vec::new();
    let mut finals = vec![Vec::new(); plan.ops.len()];
    plan.work.with(|scratch| -> Result<()> {
        for start in (0..m).step_by(CHUNK_ROWS) {
            let r = start..(start + CHUNK_ROWS).min(m);
            let xc = x.slice(s![r.clone(), ..]);
            let mut pass = forward_chunk(scratch, plan, spec, layout, theta, xc, state.map(|s| s.rows(r.clone())))?;
            push_final_state(&pass.kept, &mut finals);
            let yc = target_rows(y, r.clone(), steps);
            // Per step, the output's rows are time-major (step, sequence) pairs: so must the
            // targets' be and, for an autoencoder, the inputs' (the time-major input itself).
            let want = grad.is_some();
            let (data, delta) = match (plan.per_step, yc) {
                (false, yc) => net::output_cost_and_delta(spec, &mut pass.out, xc, yc, want),
                (true, TargetView::Labels(l)) => {
                    let mc = r.len();
                    let labels: Vec<usize> =
                        (0..plan.steps).flat_map(|t| (0..mc).map(move |i| l[i * plan.steps + t])).collect();
                    net::output_cost_and_delta(spec, &mut pass.out, pass.xt.view(), TargetView::Labels(&labels), want)
                }
                (true, TargetView::Values(v)) => {
                    let v = time_major_in(&mut scratch.arrays, v, plan.steps)?;
                    let y = TargetView::Values(v.view());
                    let out = net::output_cost_and_delta(spec, &mut pass.out, pass.xt.view(), y, want);
                    scratch.arrays.recycle(v);
                    out
                }
                (true, TargetView::Inputs) => {
                    net::output_cost_and_delta(spec, &mut pass.out, pass.xt.view(), TargetView::Inputs, want)
                }
            };
            data_sum += data * (r.len() * steps) as f64;
            if let (Some(g), Some(delta)) = (grad.as_deref_mut(), delta) {
                if start == 0 {
                    backward_chunk(&mut scratch.arrays, plan, layout, theta, &pass, delta, alpha, g)?;
                } else {
                    chunk_grad.resize(g.len(), F::zero());
                    backward_chunk(&mut scratch.arrays, plan, layout, theta, &pass, delta, alpha, &mut chunk_grad)?;
                    g.iter_mut().zip(&chunk_grad).for_each(|(g, &c)| *g += c);
                }
            }
            pass.recycle(scratch);
        }
        Ok(())
    })?;
    if m == 0
        && let Some(g) = grad.as_deref_mut()
    {
        g.iter_mut().for_each(|v| *v = F::zero());
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
/// into `g` (every value). `delta` (the output's δ, rows as the pass's output) goes back to
/// `scratch`.
#[allow(clippy::too_many_arguments)]
fn backward_chunk<F: Real>(
    scratch: &mut Scratch<F>,
    plan: &Plan,
    layout: &ThetaLayout,
    theta: &[F],
    pass: &Pass<F>,
    delta: Array2<F>,
    alpha: F,
    g: &mut [F],
) -> Result<()> {
    // Output layer: ∇W = α δᵀ H, ∇b = α Σ δ, δH = δ W.
    let head = pass.head();
    let mut gw = layout.weight_mut(g, plan.out_l);
    gemm(alpha, &delta.t(), &head, F::zero(), &mut gw);
    let sums = column_sums(delta.view());
    Zip::from(layout.bias_mut(g, plan.out_l)).and(&sums).for_each(|gb, &s| *gb = s * alpha);
    let w = layout.weight(theta, plan.out_l);
    // δh of the top layer at every step, time-major: per step, δ W itself (δ's rows are
    // time-major); at the last step only, δ W in the last block and zeros before it.
    let m = pass.xt.nrows() / plan.steps;
    let h = w.ncols();
    let mut dh = scratch.array(plan.steps * m, h);
    let from = if plan.per_step { 0 } else { (plan.steps - 1) * m };
    dh.slice_mut(s![..from, ..]).fill(F::zero());
    gemm(F::one(), &delta.view(), &w, F::zero(), &mut dh.slice_mut(s![from.., ..]));
    scratch.recycle(delta);
    for (i, op) in plan.ops.iter().enumerate().rev() {
        let (input, one_hot) =
            if i == 0 { (pass.xt.view(), pass.one_hot.as_deref()) } else { (pass.kept[i - 1].outputs(), None) };
        let (w_ih, w_hh) = weights(layout, theta, op);
        let grads = gradients(layout, g, op);
        let back: StateGradients<F> = match (op, &pass.kept[i]) {
            (Op::Rnn { rnn, .. }, Kept::Rnn(f)) => {
                rnn.backward_in(scratch, w_ih, w_hh, input, one_hot, f, dh.view(), alpha, grads, i > 0)?
            }
            (Op::Lstm { lstm, .. }, Kept::Lstm(f)) => {
                lstm.backward_in(scratch, w_ih, w_hh, input, one_hot, f, dh.view(), alpha, grads, i > 0)?
            }
            _ => unreachable!("each layer keeps its own kind"),
        };
        let StateGradients { input, h0, c0 } = back;
        [h0].into_iter().chain(c0).for_each(|a| scratch.recycle(a));
        match input {
            Some(d) => scratch.recycle(std::mem::replace(&mut dh, d)),
            None => break,
        }
    }
    scratch.recycle(dh);
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

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    use super::*;
    use crate::model::{InputShape, LayerStack, parse_net};

    fn recurrent(text: &str, steps: usize, n: usize, k: usize) -> Recurrent {
        let parsed = parse_net(text).unwrap();
        let stack = LayerStack { input: InputShape::sequence(steps, n), layers: parsed.layers };
        let mut spec = NetSpec::stack(stack, k, parsed.output).unwrap();
        spec.weight_decay = 1e-3;
        Recurrent::new(spec).unwrap()
    }

    /// One evaluation's results as bits: the cost, ∇J, the final state and the output.
    fn evaluate(rec: &Recurrent, theta: &[f32], x: &Array2<f32>, y: &Targets, state: Option<&State<f32>>) -> Vec<u32> {
        let mut grad = vec![f32::NAN; theta.len()];
        let target = match y {
            Targets::Labels(l) => TargetView::Labels(l),
            Targets::Values(v) => TargetView::Values(v.view()),
        };
        let (cost, end) = rec.cost_and_grad(theta, x.view(), target, state, Some(&mut grad)).unwrap();
        let (out, end2) = rec.predict(theta, x.view(), state).unwrap();
        assert_eq!(end, end2);
        let mut bits = vec![cost.data as f32, cost.weight_decay as f32];
        bits.extend(grad);
        end.layers.iter().for_each(|l| bits.extend(l.h.iter().chain(l.c.iter().flatten())));
        bits.extend(out.iter());
        bits.into_iter().map(f32::to_bits).collect()
    }

    enum Targets {
        Labels(Vec<usize>),
        Values(Array2<f32>),
    }

    /// A plan keeps its arrays between evaluations, their old values unread: evaluations that
    /// reuse them — other data, a carried state then the zero state (block 0 of the kept
    /// states must not leak), a batch of another size in between, one-hot then dense inputs —
    /// give the bits of a fresh plan's, for each layer kind, last-step and per-step outputs.
    #[test]
    fn reused_buffers_give_the_bits_of_fresh_ones() {
        let cases = [
            ("lstm 5, per-step softmax", 4),
            ("rnn 4 tanh, lstm 3, softmax", 3),
            ("lstm 3, per-step identity", 2),
            ("rnn 3 relu, rnn 2 tanh, per-step identity", 3),
        ];
        let (steps, n) = (6, 4);
        let mut rng = StdRng::seed_from_u64(5);
        for (text, k) in cases {
            let rec = recurrent(text, steps, n, k);
            let theta: Vec<f32> = (0..rec.layout.len()).map(|_| rng.random_range(-0.5..0.5)).collect();
            let mut batch = |m: usize, one_hot: bool| {
                let x = Array2::from_shape_fn((m, steps * n), |(_, c)| match one_hot {
                    true => f32::from(c % n == (c / n + m) % n),
                    false => rng.random_range(-1.0..1.0),
                });
                let s = rec.output_steps();
                let y = match rec.spec.output {
                    crate::model::Output::Softmax => {
                        Targets::Labels((0..m * s).map(|_| rng.random_range(0..k)).collect())
                    }
                    _ => Targets::Values(Array2::from_shape_fn((m, s * k), |_| rng.random_range(-1.0..1.0))),
                };
                let mut state = rec.zero_state::<f32>(m);
                for l in &mut state.layers {
                    l.h.mapv_inplace(|_| rng.random_range(-1.0..1.0));
                    l.c.iter_mut().for_each(|c| c.mapv_inplace(|_| rng.random_range(-2.0..2.0)));
                }
                (x, y, state)
            };
            let runs = [batch(5, true), batch(5, false), batch(3, false), batch(5, true)];
            let order = [(0, true), (1, false), (2, true), (0, false), (3, true), (1, true)];
            for (i, &(b, carried)) in order.iter().enumerate() {
                let (x, y, state) = &runs[b];
                let state = carried.then_some(state);
                let reused = evaluate(&rec, &theta, x, y, state);
                let fresh = evaluate(&rec.clone(), &theta, x, y, state);
                assert_eq!(
                    reused, fresh,
                    "{text}: evaluation {i} (batch {b}, carried {carried}) differs from a fresh plan's"
                );
            }
        }
    }
}
