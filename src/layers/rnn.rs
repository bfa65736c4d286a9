//! The Elman recurrent layer (MATH.md, "Layers beyond dense", Elman RNN and backpropagation
//! through time; PyTorch's `nn.RNN` with one bias): over T steps,
//! h_t = f(W_ih x_t + W_hh h_{t−1} + b), f = tanh or ReLU, from a given h_0 (zero or carried
//! from the previous window, truncated BPTT).
//!
//! ## Layout: time-major
//! The recurrent layers work on **time-major** batches: a sequence batch of m examples of T
//! steps of n features is the (T·m) × n matrix whose row t·m + i holds example i's step t, so
//! that each step is a contiguous block of m rows. [`time_major`] and [`batch_major`] convert
//! from and to the network's layout (row i of m × (T·n) holding step t at columns t·n…t·n+n−1).
//!
//! ## The passes
//! Forward: the input projection of all T steps is one GEMM, P = X W_ihᵀ ((T·m) × h; for a
//! one-hot X, a character model's, a gather of W_ih's columns, and ∇W_ih a scatter); then
//! each step adds H_{t−1} W_hhᵀ to its block (a GEMM with β = 1) and applies b and f in one
//! sweep. Backward (t = T … 1): δz_t = (δh_t + δh_{t+1→t}) ⊙ f′(h_t), δh_{t→t−1} = δz_t W_hh;
//! then ∇W_ih = α δZᵀ X, ∇W_hh = α δZᵀ H_{0…T−1} and ∇b = α Σ δZ are each one product over
//! all steps (summed in one fixed order), and ∇X = δZ W_ih. Every product goes through
//! [`cpu::gemm`](crate::cpu::gemm) and every sweep is split over rows, so the bits do not
//! depend on the number of threads.
//!
//! This module computes one layer; it does not own parameters or θ.

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, Zip, s};

use super::{check_cols, check_dim, check_len, checked_len};
use crate::cpu::net::{activate, column_sums, derivative_from_value};
use crate::cpu::{Real, gemm};
use crate::model::Activation;
use crate::{Error, Result};

/// Rows below which a per-step sweep runs on one thread (waking another costs more).
pub(crate) const SERIAL_ROWS: usize = 32;

/// An Elman layer's geometry: `inputs` features per step, `hidden` units, `steps` steps, and
/// its activation (tanh or ReLU).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rnn {
    /// n: features per step.
    pub inputs: usize,
    /// h: hidden units.
    pub hidden: usize,
    /// T: steps per sequence.
    pub steps: usize,
    /// f of the hidden state: h_t = f(x_t W_ihᵀ + h_{t−1} W_hhᵀ + b).
    pub activation: Activation,
}

/// What the forward pass keeps for the backward pass.
#[derive(Clone, Debug)]
pub struct RnnForward<F> {
    /// h_0 … h_T stacked time-major: ((T+1)·m) × h, block t in rows t·m … t·m + m − 1; block 0
    /// is the initial state.
    pub hidden: Array2<F>,
    /// m: sequences in the batch.
    pub batch: usize,
}

impl<F: Real> RnnForward<F> {
    /// h_1 … h_T: the layer's output, (T·m) × h time-major.
    pub fn outputs(&self) -> ArrayView2<'_, F> {
        self.hidden.slice(s![self.batch.., ..])
    }

    /// h_T (m × h): the state to carry into the next window.
    pub fn final_state(&self) -> ArrayView2<'_, F> {
        let rows = self.hidden.nrows();
        self.hidden.slice(s![rows - self.batch.., ..])
    }
}

/// ∂L/∂X ((T·m) × n time-major, when asked for) and ∂L/∂h_0 (m × h) of a backward pass; the
/// LSTM adds ∂L/∂c_0. None of them is scaled by α.
#[derive(Clone, Debug)]
pub struct StateGradients<F> {
    /// ∂L/∂X ((T·m) × n time-major), when asked for.
    pub input: Option<Array2<F>>,
    /// ∂L/∂h_0 (m × h).
    pub h0: Array2<F>,
    /// ∂L/∂c_0 (m × h), LSTM only.
    pub c0: Option<Array2<F>>,
}

/// The parameter gradients a backward pass writes (every value, overwritten): ∇W_ih (rows × n),
/// ∇W_hh (rows × h) and ∇b (rows), rows = h for the Elman layer and 4h for the LSTM.
pub struct ParamGradients<'a, F> {
    /// ∇W_ih (rows × n).
    pub w_ih: ArrayViewMut2<'a, F>,
    /// ∇W_hh (rows × h).
    pub w_hh: ArrayViewMut2<'a, F>,
    /// ∇b (rows).
    pub b: ArrayViewMut1<'a, F>,
}

/// The batch-major m × (T·n) sequence batch as the time-major (T·m) × n matrix (row t·m + i =
/// example i's step t). Errors when the columns are not a multiple of T.
pub fn time_major<F: Real>(x: ArrayView2<F>, steps: usize) -> Result<Array2<F>> {
    let (m, cols) = x.dim();
    if steps == 0 || !cols.is_multiple_of(steps) {
        return Err(Error::Shape(format!(
            "a batch of {cols} columns is not {steps} steps of equal width: give m × (T·n) with T = {steps}"
        )));
    }
    let n = cols / steps;
    checked_len("a sequence batch", "the time-major copy", &[steps, m, n])?;
    let mut out = Array2::zeros((steps * m, n));
    for t in 0..steps {
        out.slice_mut(s![t * m..(t + 1) * m, ..]).assign(&x.slice(s![.., t * n..(t + 1) * n]));
    }
    Ok(out)
}

/// The inverse of [`time_major`]: (T·m) × n time-major rows back to m × (T·n).
pub fn batch_major<F: Real>(x: ArrayView2<F>, steps: usize) -> Result<Array2<F>> {
    let (rows, n) = x.dim();
    if steps == 0 || !rows.is_multiple_of(steps) {
        return Err(Error::Shape(format!("{rows} time-major rows are not {steps} steps of equal size")));
    }
    let m = rows / steps;
    let mut out = Array2::zeros((m, steps * n));
    for t in 0..steps {
        out.slice_mut(s![.., t * n..(t + 1) * n]).assign(&x.slice(s![t * m..(t + 1) * m, ..]));
    }
    Ok(out)
}

/// Checks the time-major input of a recurrent layer: (T·m) × n; gives m.
pub(crate) fn batch_of(name: &str, x: (usize, usize), steps: usize, inputs: usize) -> Result<usize> {
    check_cols(name, "the input", x, inputs, &format!("steps of {inputs} features"))?;
    if !x.0.is_multiple_of(steps) {
        return Err(Error::Shape(format!(
            "{name}: the time-major input has {} rows, not a multiple of its {steps} steps",
            x.0
        )));
    }
    Ok(x.0 / steps)
}

/// Checks a given initial state: m × h.
pub(crate) fn check_state<F: Real>(
    name: &str,
    what: &str,
    state: Option<ArrayView2<F>>,
    m: usize,
    h: usize,
) -> Result<()> {
    if let Some(s) = state {
        check_dim(name, what, s.dim(), (m, h))?;
    }
    Ok(())
}

/// The column of the one 1 in each row of `x` when every row is one-hot (one value exactly 1,
/// every other exactly 0: a character model's input), else `None`. Stops at the first row that
/// is not, so a dense input costs a few values.
pub(crate) fn one_hot_columns<F: Real>(x: ArrayView2<F>) -> Option<Vec<usize>> {
    let mut cols = Vec::with_capacity(x.nrows());
    for row in x.rows() {
        let mut hot = None;
        for (c, &v) in row.iter().enumerate() {
            if v == F::one() && hot.is_none() {
                hot = Some(c);
            } else if v != F::zero() {
                return None;
            }
        }
        cols.push(hot?);
    }
    Some(cols)
}

/// Z ← X W_ihᵀ for all steps at once: (T·m) × rows. A one-hot X (a character model's) is a
/// row gather of W_ihᵀ instead of a product: the same values to the bit (1·w plus zeros is w
/// for finite w), without the (T·m) × n × rows multiply-adds.
pub(crate) fn input_projection<F: Real>(w_ih: ArrayView2<F>, x: ArrayView2<F>) -> Array2<F> {
    if let Some(cols) = one_hot_columns(x) {
        let w_t = w_ih.t().as_standard_layout().into_owned();
        let mut z = Array2::zeros((x.nrows(), w_ih.nrows()));
        Zip::from(z.rows_mut()).and(&cols[..]).par_for_each(|mut row, &c| row.assign(&w_t.row(c)));
        return z;
    }
    let mut z = Array2::zeros((x.nrows(), w_ih.nrows()));
    gemm(F::one(), &x, &w_ih.t(), F::zero(), &mut z.view_mut());
    z
}

/// Gate rows per task of the one-hot weight gradient (a task's sums are in row order whatever
/// the threads, so the bits do not depend on their number).
const SCATTER_BLOCK: usize = 256;

/// ∇W_ih ← α δZᵀ X for a one-hot X whose row r has its 1 in column `cols[r]`: column c of ∇W_ih
/// is α times the sum, in row order, of the rows of δZ whose input is c. Replaces a product of
/// (T·m) × rows × n multiply-adds, nearly all by zero.
fn one_hot_weight_gradient<F: Real>(alpha: F, dz: ArrayView2<F>, cols: &[usize], mut w_ih: ArrayViewMut2<F>) {
    use rayon::prelude::*;
    let (rows, n) = w_ih.dim();
    let blocks: Vec<_> = w_ih.axis_chunks_iter_mut(Axis(0), SCATTER_BLOCK).enumerate().collect();
    blocks.into_par_iter().for_each(|(b, mut out)| {
        let j0 = b * SCATTER_BLOCK;
        let width = out.nrows();
        // sums[c] holds Σ δZ[r, j0..j0 + width] over the rows r whose input is c.
        let mut sums = Array2::<F>::zeros((n, width));
        for (r, &c) in cols.iter().enumerate() {
            let src = dz.slice(s![r, j0..j0 + width]);
            Zip::from(sums.row_mut(c)).and(&src).for_each(|a, &d| *a += d);
        }
        Zip::from(&mut out).and(&sums.t()).for_each(|g, &v| *g = alpha * v);
    });
    debug_assert_eq!(rows, dz.ncols());
}

/// ∇W_ih = α δZᵀ X, ∇W_hh = α δZᵀ H_{0…T−1}, ∇b = α Σ δZ (all steps in one product each; a
/// one-hot X by a scatter of δZ's rows instead, [`one_hot_weight_gradient`]).
pub(crate) fn parameter_gradients<F: Real>(
    alpha: F,
    dz: ArrayView2<F>,
    x: ArrayView2<F>,
    h_prev: ArrayView2<F>,
    g: ParamGradients<'_, F>,
) {
    let ParamGradients { mut w_ih, mut w_hh, mut b } = g;
    match one_hot_columns(x) {
        Some(cols) => one_hot_weight_gradient(alpha, dz, &cols, w_ih.view_mut()),
        None => gemm(alpha, &dz.t(), &x, F::zero(), &mut w_ih),
    }
    gemm(alpha, &dz.t(), &h_prev, F::zero(), &mut w_hh);
    let sums = column_sums(dz);
    Zip::from(&mut b).and(&sums).for_each(|gb, &s| *gb = s * alpha);
}

/// Runs `f` on each row of a Zip over `rows` rows, split over rows when the block is large
/// enough to be worth a second thread.
macro_rules! rows_sweep {
    ($rows:expr, $zip:expr, $f:expr) => {{
        let zip = $zip;
        if $rows >= $crate::layers::rnn::SERIAL_ROWS { zip.par_for_each($f) } else { zip.for_each($f) }
    }};
}
pub(crate) use rows_sweep;

impl Rnn {
    /// An Elman layer, or `Error::Shape` in one line when a size is zero, the activation is
    /// not tanh or ReLU, or a size overflows. Nothing is allocated.
    pub fn new(inputs: usize, hidden: usize, steps: usize, activation: Activation) -> Result<Rnn> {
        let layer = Rnn { inputs, hidden, steps, activation };
        let name = layer.describe();
        if inputs == 0 || hidden == 0 || steps == 0 {
            return Err(Error::Shape(format!("{name}: features, units and steps must all be at least 1")));
        }
        if !matches!(activation, Activation::Tanh | Activation::Relu) {
            return Err(Error::Shape(format!("{name}: an rnn layer's activation is tanh or relu")));
        }
        checked_len(&name, "W_ih", &[hidden, inputs])?;
        checked_len(&name, "W_hh", &[hidden, hidden])?;
        Ok(layer)
    }

    /// "rnn (T steps of n → h tanh)", as messages name the layer.
    pub fn describe(&self) -> String {
        format!("rnn ({} steps of {} → {} {})", self.steps, self.inputs, self.hidden, self.activation.name())
    }

    /// The forward pass over T steps. `w_ih` is h × n, `w_hh` h × h, `b` has h values, `x` is
    /// (T·m) × n time-major ([`time_major`]), `h0` m × h (zero when `None`). Errors:
    /// `Error::Shape` when an array does not fit the layer.
    pub fn forward<F: Real>(
        &self,
        w_ih: ArrayView2<F>,
        w_hh: ArrayView2<F>,
        b: ArrayView1<F>,
        x: ArrayView2<F>,
        h0: Option<ArrayView2<F>>,
    ) -> Result<RnnForward<F>> {
        let name = self.describe();
        let (h, t_steps) = (self.hidden, self.steps);
        check_dim(&name, "W_ih", w_ih.dim(), (h, self.inputs))?;
        check_dim(&name, "W_hh", w_hh.dim(), (h, h))?;
        check_len(&name, "b", b.len(), h)?;
        let m = batch_of(&name, x.dim(), t_steps, self.inputs)?;
        check_state(&name, "h_0", h0, m, h)?;
        checked_len(&name, "the hidden states", &[t_steps + 1, m, h])?;
        let mut hidden = Array2::zeros(((t_steps + 1) * m, h));
        if let Some(h0) = h0 {
            hidden.slice_mut(s![..m, ..]).assign(&h0);
        }
        // Block t + 1 of `hidden` starts as step t's input projection.
        let p = input_projection(w_ih, x);
        hidden.slice_mut(s![m.., ..]).assign(&p);
        drop(p);
        let act = self.activation;
        // W_hhᵀ copied once, row-major, for the per-step products (see lstm.rs).
        let w_hh_t = w_hh.t().as_standard_layout().into_owned();
        for t in 0..t_steps {
            let (prev, mut rest) = hidden.view_mut().split_at(Axis(0), (t + 1) * m);
            let h_prev = prev.slice(s![t * m.., ..]);
            let mut z = rest.slice_mut(s![..m, ..]);
            gemm(F::one(), &h_prev, &w_hh_t.view(), F::one(), &mut z);
            rows_sweep!(m, Zip::from(z.rows_mut()), |mut row| {
                Zip::from(&mut row).and(&b).for_each(|z, &b| *z = activate(act, *z + b));
            });
        }
        Ok(RnnForward { hidden, batch: m })
    }

    /// Backpropagation through time. `dh` is ∂L/∂h_t for t = 1 … T ((T·m) × h time-major;
    /// zero where a step's output is not used), `x` and `fwd` those of the forward pass.
    /// Writes ∇W_ih = α Σ_t δz_tᵀ x_t, ∇W_hh = α Σ_t δz_tᵀ h_{t−1}, ∇b = α Σ_t Σ_i δz_t into
    /// `g`, and returns ∂L/∂X (when `want_input`) and ∂L/∂h_0.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<F: Real>(
        &self,
        w_ih: ArrayView2<F>,
        w_hh: ArrayView2<F>,
        x: ArrayView2<F>,
        fwd: &RnnForward<F>,
        dh: ArrayView2<F>,
        alpha: F,
        g: ParamGradients<'_, F>,
        want_input: bool,
    ) -> Result<StateGradients<F>> {
        let name = self.describe();
        let h = self.hidden;
        check_dim(&name, "W_ih", w_ih.dim(), (h, self.inputs))?;
        check_dim(&name, "W_hh", w_hh.dim(), (h, h))?;
        let m = batch_of(&name, x.dim(), self.steps, self.inputs)?;
        check_dim(&name, "the kept states", fwd.hidden.dim(), ((self.steps + 1) * m, h))?;
        check_dim(&name, "δh", dh.dim(), (self.steps * m, h))?;
        check_dim(&name, "∇W_ih", g.w_ih.dim(), (h, self.inputs))?;
        check_dim(&name, "∇W_hh", g.w_hh.dim(), (h, h))?;
        check_len(&name, "∇b", g.b.len(), h)?;
        let act = self.activation;
        let mut dz = dh.to_owned();
        let mut carry: Array2<F> = Array2::zeros((m, h));
        for t in (0..self.steps).rev() {
            let rows = t * m..(t + 1) * m;
            let mut dz_t = dz.slice_mut(s![rows.clone(), ..]);
            let h_t = fwd.hidden.slice(s![rows.start + m..rows.end + m, ..]);
            rows_sweep!(m, Zip::from(dz_t.rows_mut()).and(carry.rows()).and(h_t.rows()), |mut d, c, a| {
                Zip::from(&mut d).and(&c).and(&a).for_each(|d, &c, &a| *d = (*d + c) * derivative_from_value(act, a));
            });
            gemm(F::one(), &dz_t.view(), &w_hh, F::zero(), &mut carry.view_mut());
        }
        let h_prev = fwd.hidden.slice(s![..self.steps * m, ..]);
        parameter_gradients(alpha, dz.view(), x, h_prev, g);
        let input = want_input.then(|| {
            let mut dx = Array2::zeros(x.dim());
            gemm(F::one(), &dz.view(), &w_ih, F::zero(), &mut dx.view_mut());
            dx
        });
        Ok(StateGradients { input, h0: carry, c0: None })
    }
}
