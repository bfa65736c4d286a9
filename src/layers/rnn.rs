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
//! all steps (summed in one fixed order), and ∇X = δZ W_ih.
//!
//! ## Threads
//! The recurrence (forward and backward) runs in lock step ([`lockstep`]): the hidden units
//! fall into fixed blocks of 32 ([`unit_blocks`]), a task computes one block's columns of a
//! step's product (on its own thread, [`cpu::gemm_serial`](crate::cpu::gemm_serial)) and that
//! block's sweep in one go, and a team of threads that lives for the whole pass meets once per
//! step (h_t is needed whole by the next step's product) — not a fork-join per product and per
//! sweep. The blocks depend on h alone and each task's arithmetic on its block alone, and the
//! products over all steps go through [`cpu::gemm`](crate::cpu::gemm), so the bits do not
//! depend on the number of threads.
//!
//! This module computes one layer; it does not own parameters or θ.

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, Zip, s};

use super::{check_cols, check_dim, check_len, checked_len};
use crate::cpu::net::{activate, column_sums, derivative_from_value};
use crate::cpu::{Real, gemm, gemm_serial};
use crate::model::Activation;
use crate::{Error, Result};

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

    /// Gives the kept arrays' buffers back to `scratch`.
    pub(crate) fn recycle(self, scratch: &mut Scratch<F>) {
        scratch.recycle(self.hidden);
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

/// Buffers kept by a recurrent network between evaluations ([`crate::cpu::sequence`]): the
/// passes take their arrays here and give them back, so that a training step whose shapes
/// repeat reuses the last step's memory instead of faulting in fresh pages (a character
/// model's step uses ~35 MB). A request takes a kept buffer of exactly its length when there is
/// one (the shapes of one step repeat at the next), else the smallest that is longer, else a
/// new one. Arrays handed out keep whatever values their buffer held: the passes write every
/// value they read.
#[derive(Debug)]
pub(crate) struct Scratch<F> {
    free: Vec<Vec<F>>,
}

impl<F> Default for Scratch<F> {
    fn default() -> Scratch<F> {
        Scratch { free: Vec::new() }
    }
}

/// Buffers kept at most (a step of one LSTM layer gives back 16); beyond it the smallest goes.
const KEPT_BUFFERS: usize = 48;

impl<F: Real> Scratch<F> {
    /// A rows × cols array in standard layout with unspecified (but initialised) values.
    pub(crate) fn array(&mut self, rows: usize, cols: usize) -> Array2<F> {
        let n = rows * cols;
        let exact = self.free.iter().position(|v| v.len() == n);
        let longer = || {
            let fits = self.free.iter().enumerate().filter(|(_, v)| v.len() > n);
            fits.min_by_key(|(_, v)| v.len()).map(|(i, _)| i)
        };
        let v = match exact.or_else(longer) {
            Some(i) => {
                let mut v = self.free.swap_remove(i);
                v.truncate(n);
                v
            }
            None => vec![F::zero(); n],
        };
        Array2::from_shape_vec((rows, cols), v).expect("the buffer has rows × cols values")
    }

    /// Takes an array's buffer back for later requests.
    pub(crate) fn recycle(&mut self, a: Array2<F>) {
        let (v, offset) = a.into_raw_vec_and_offset();
        if offset.unwrap_or(0) != 0 || v.is_empty() {
            return;
        }
        self.free.push(v);
        if self.free.len() > KEPT_BUFFERS {
            let smallest = (0..self.free.len()).min_by_key(|&i| self.free[i].len()).expect("not empty");
            self.free.swap_remove(smallest);
        }
    }
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

/// Z ← X W_ihᵀ for all steps at once, written into `z` ((T·m) × rows), from `w_t` = W_ihᵀ
/// (n × rows, any strides). A one-hot X (a character model's: `one_hot` its columns, from
/// [`one_hot_columns`]) is a row gather of W_ihᵀ instead of a product: the same values to the
/// bit (1·w plus zeros is w for finite w), without the (T·m) × n × rows multiply-adds.
pub(crate) fn input_projection<F: Real>(
    w_t: ArrayView2<F>,
    x: ArrayView2<F>,
    one_hot: Option<&[usize]>,
    mut z: ArrayViewMut2<F>,
) {
    match one_hot {
        Some(cols) => Zip::from(z.rows_mut()).and(cols).par_for_each(|mut row, &c| row.assign(&w_t.row(c))),
        None => gemm(F::one(), &x, &w_t, F::zero(), &mut z),
    }
}

/// `w`'s rows in the order `order` (entry r: the row of `w` to take), transposed: the
/// cols × order.len() matrix whose column r is row `order[r]` of `w`, in a buffer of
/// `scratch`. One pass, for the LSTM's block-ordered W_ihᵀ and W_hhᵀ.
pub(crate) fn gathered_transpose<F: Real>(scratch: &mut Scratch<F>, w: ArrayView2<F>, order: &[usize]) -> Array2<F> {
    let (rows, cols) = (order.len(), w.ncols());
    let mut out = scratch.array(cols, rows);
    let w = w.as_standard_layout();
    let (w, o) = (w.as_slice().expect("standard layout"), out.as_slice_mut().expect("a new array"));
    // 16 rows of `w` at a time, read along, each row of `out` written 16 values at once.
    for (k, from) in order.chunks(16).enumerate() {
        let srcs: Vec<&[F]> = from.iter().map(|&f| &w[f * cols..(f + 1) * cols]).collect();
        for (c, dst) in o.chunks_exact_mut(rows).enumerate() {
            for (d, src) in dst[k * 16..k * 16 + from.len()].iter_mut().zip(&srcs) {
                *d = src[c];
            }
        }
    }
    out
}

/// `w`'s rows in the order `order`, in a buffer of `scratch` (`select` without a fresh array).
pub(crate) fn gathered_rows<F: Real>(scratch: &mut Scratch<F>, w: ArrayView2<F>, order: &[usize]) -> Array2<F> {
    let mut out = scratch.array(order.len(), w.ncols());
    for (mut row, &from) in out.rows_mut().into_iter().zip(order) {
        row.assign(&w.row(from));
    }
    out
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
/// one-hot X, `one_hot` its columns, by a scatter of δZ's rows instead,
/// [`one_hot_weight_gradient`]).
pub(crate) fn parameter_gradients<F: Real>(
    alpha: F,
    dz: ArrayView2<F>,
    x: ArrayView2<F>,
    one_hot: Option<&[usize]>,
    h_prev: ArrayView2<F>,
    g: ParamGradients<'_, F>,
) {
    let ParamGradients { mut w_ih, mut w_hh, mut b } = g;
    match one_hot {
        Some(cols) => one_hot_weight_gradient(alpha, dz, cols, w_ih.view_mut()),
        None => gemm(alpha, &dz.t(), &x, F::zero(), &mut w_ih),
    }
    gemm(alpha, &dz.t(), &h_prev, F::zero(), &mut w_hh);
    let sums = column_sums(dz);
    Zip::from(&mut b).and(&sums).for_each(|gb, &s| *gb = s * alpha);
}

/// Hidden units per block of the lock-step recurrence ([`lockstep`]): an LSTM block is 4 × 32
/// gate columns (two of the AVX-512 GEMM kernel's 64-row panels), an Elman block 32 columns.
/// Fixed, never derived from the number of threads, so each block's product is the same call
/// (same shape, same summation order) whichever thread runs it.
pub(crate) const UNIT_BLOCK: usize = 32;

/// Per-step multiply-adds (m × gate rows × h) below which the recurrence stays on one thread:
/// a step's hand-off (~1 µs) would cost more than the second core saves.
const LOCKSTEP_SERIAL_BELOW: usize = 1 << 14;

/// Spins (each a `pause`, tens of ns) a waiting thread of [`lockstep`] makes before it sleeps:
/// some tens of µs, longer than a balanced step's stragglers, far shorter than a time slice.
const SPINS_BEFORE_SLEEP: usize = 2000;

/// The unit blocks of a layer of `hidden` units: [0, 32), [32, 64), …, the last one shorter.
pub(crate) fn unit_blocks(hidden: usize) -> Vec<std::ops::Range<usize>> {
    (0..hidden.div_ceil(UNIT_BLOCK)).map(|j| j * UNIT_BLOCK..((j + 1) * UNIT_BLOCK).min(hidden)).collect()
}

/// Threads for a recurrence of `blocks` unit blocks and `work` multiply-adds per step: one
/// below [`LOCKSTEP_SERIAL_BELOW`], else rayon's count, at most one per block.
pub(crate) fn lockstep_threads(blocks: usize, work: usize) -> usize {
    if work < LOCKSTEP_SERIAL_BELOW { 1 } else { rayon::current_num_threads().min(blocks).max(1) }
}

/// Runs `task(s, j)` for every step s < `steps` and block j < `blocks`, every task of step s
/// after every task of step s − 1 has finished (and its writes are visible), on a team of
/// `threads` threads that lives for the whole recurrence: ONE synchronisation per step instead
/// of a fork-join per product and per gate pass.
///
/// Thread w owns blocks [w·B/p, (w+1)·B/p) and runs them first at each step (so its slice of
/// the weights stays in its own cache); a thread that is done takes any block of the step not
/// yet claimed, so a thread that starts late (its pool busy) delays nothing and can never
/// deadlock the others (the caller alone can run every task); a thread waits only for blocks
/// another thread is running, spinning briefly, then asleep. Which
/// thread runs a task never changes what the task computes, so results do not depend on
/// `threads` as long as each task's own arithmetic does not.
pub(crate) fn lockstep(steps: usize, blocks: usize, threads: usize, task: &(dyn Fn(usize, usize) + Sync)) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = threads.min(blocks);
    if threads <= 1 {
        for s in 0..steps {
            (0..blocks).for_each(|j| task(s, j));
        }
        return;
    }
    let total = steps * blocks;
    // Tasks finished, over all steps: step s may start once `done` ≥ s·blocks (exactly the
    // tasks of steps < s, since no task of step s is claimed before that).
    let done = AtomicUsize::new(0);
    // Per block: how many of its steps have been claimed (claiming step s moves it s → s + 1).
    let claimed: Vec<AtomicUsize> = (0..blocks).map(|_| AtomicUsize::new(0)).collect();
    // Threads asleep (or about to sleep) on `wake` until `done` moves: a wait longer than the
    // spin gives the core away, so on a busy machine the thread holding the last block of a
    // step can have it (a spinning or yielding waiter kept it from running for whole time
    // slices). A finisher takes the lock only when someone sleeps.
    let sleepers = AtomicUsize::new(0);
    let (lock, wake) = (std::sync::Mutex::new(()), std::sync::Condvar::new());
    // Set when a task panics: the others stop waiting for its block, and `rayon::scope` passes
    // the panic on (instead of the team waiting forever for a step that cannot finish).
    let aborted = std::sync::atomic::AtomicBool::new(false);
    let wait_past = |seen: usize| {
        for _ in 0..SPINS_BEFORE_SLEEP {
            if done.load(Ordering::Acquire) != seen || aborted.load(Ordering::Relaxed) {
                return;
            }
            std::hint::spin_loop();
        }
        // SeqCst on both sides: either the finisher sees this sleeper and notifies under the
        // lock, or this thread sees the finisher's `done` before it waits (no lost wake-up).
        sleepers.fetch_add(1, Ordering::SeqCst);
        let mut guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        while done.load(Ordering::SeqCst) == seen && !aborted.load(Ordering::SeqCst) {
            guard = wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
        drop(guard);
        sleepers.fetch_sub(1, Ordering::SeqCst);
    };
    /// Wakes the team when a worker unwinds from a panicking task.
    struct OnPanic<'a>(&'a std::sync::atomic::AtomicBool, &'a std::sync::Mutex<()>, &'a std::sync::Condvar);
    impl Drop for OnPanic<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.store(true, Ordering::SeqCst);
                let _guard = self.1.lock().unwrap_or_else(|e| e.into_inner());
                self.2.notify_all();
            }
        }
    }
    let work = |w: usize| {
        let _on_panic = OnPanic(&aborted, &lock, &wake);
        let own = w * blocks / threads;
        let mut seen = done.load(Ordering::Acquire);
        while seen < total && !aborted.load(Ordering::Relaxed) {
            let s = seen / blocks;
            let mut ran = false;
            for j in (own..blocks).chain(0..own) {
                if claimed[j].load(Ordering::Relaxed) == s
                    && claimed[j].compare_exchange(s, s + 1, Ordering::AcqRel, Ordering::Relaxed).is_ok()
                {
                    task(s, j);
                    done.fetch_add(1, Ordering::SeqCst);
                    if sleepers.load(Ordering::SeqCst) > 0 {
                        let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                        wake.notify_all();
                    }
                    ran = true;
                }
            }
            if !ran {
                // Every block of step s is claimed: wait for one of them to finish.
                wait_past(seen);
            }
            seen = done.load(Ordering::Acquire);
        }
    };
    rayon::scope(|scope| {
        let work = &work;
        for w in 1..threads {
            scope.spawn(move |_| work(w));
        }
        work(0);
    });
}

/// A row-major matrix that the tasks of [`lockstep`] read and write in parts from several
/// threads at once. Safe to share; every access is `unsafe`, its caller promising that no part
/// it writes is read or written by another task at the same time.
#[derive(Clone, Copy)]
pub(crate) struct SharedRows<'a, F> {
    ptr: *mut F,
    rows: usize,
    cols: usize,
    row_stride: usize,
    _borrow: std::marker::PhantomData<&'a mut F>,
}

// SAFETY: the pointer is to an array borrowed mutably for 'a, and all access goes through the
// unsafe methods below, whose callers keep the parts that tasks write disjoint.
unsafe impl<F: Send + Sync> Send for SharedRows<'_, F> {}
// SAFETY: as above.
unsafe impl<F: Send + Sync> Sync for SharedRows<'_, F> {}

impl<'a, F> SharedRows<'a, F> {
    /// Shares `a`, whose rows must be contiguous (column stride 1).
    pub(crate) fn new(a: &'a mut ArrayViewMut2<'_, F>) -> SharedRows<'a, F> {
        let (rows, cols) = a.dim();
        let strides = a.strides();
        assert!(cols <= 1 || strides[1] == 1, "shared rows must be contiguous");
        let row_stride = if rows <= 1 { cols } else { usize::try_from(strides[0]).expect("a positive row stride") };
        SharedRows { ptr: a.as_mut_ptr(), rows, cols, row_stride, _borrow: std::marker::PhantomData }
    }

    fn offset(&self, r: &std::ops::Range<usize>, c: &std::ops::Range<usize>) -> usize {
        assert!(r.start <= r.end && r.end <= self.rows && c.start <= c.end && c.end <= self.cols, "part out of range");
        r.start * self.row_stride + c.start
    }

    /// Rows `r`, columns `c`, to read.
    ///
    /// # Safety
    /// No task writes any of these values while the view lives.
    pub(crate) unsafe fn part(&self, r: std::ops::Range<usize>, c: std::ops::Range<usize>) -> ArrayView2<'a, F> {
        use ndarray::ShapeBuilder;
        let at = self.offset(&r, &c);
        // SAFETY: in bounds (checked above) of the array borrowed for 'a; the caller keeps
        // writers away.
        unsafe { ArrayView2::from_shape_ptr((r.len(), c.len()).strides((self.row_stride, 1)), self.ptr.add(at)) }
    }

    /// Rows `r`, columns `c`, to write.
    ///
    /// # Safety
    /// No other task reads or writes any of these values while the view lives.
    pub(crate) unsafe fn part_mut(&self, r: std::ops::Range<usize>, c: std::ops::Range<usize>) -> ArrayViewMut2<'a, F> {
        use ndarray::ShapeBuilder;
        let at = self.offset(&r, &c);
        // SAFETY: in bounds (checked above) of the array borrowed mutably for 'a; the caller
        // keeps every other access away.
        unsafe { ArrayViewMut2::from_shape_ptr((r.len(), c.len()).strides((self.row_stride, 1)), self.ptr.add(at)) }
    }
}

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
        self.forward_in(&mut Scratch::default(), w_ih, w_hh, b, x, one_hot_columns(x).as_deref(), h0)
    }

    /// [`Rnn::forward`] with its arrays from `scratch` (their old values unread) and the
    /// one-hot columns of `x` given (`None`: x is not one-hot).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_in<F: Real>(
        &self,
        scratch: &mut Scratch<F>,
        w_ih: ArrayView2<F>,
        w_hh: ArrayView2<F>,
        b: ArrayView1<F>,
        x: ArrayView2<F>,
        one_hot: Option<&[usize]>,
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
        let mut hidden = scratch.array((t_steps + 1) * m, h);
        match h0 {
            Some(h0) => hidden.slice_mut(s![..m, ..]).assign(&h0),
            None => hidden.slice_mut(s![..m, ..]).fill(F::zero()),
        }
        // Block t + 1 of `hidden` starts as step t's input projection.
        input_projection(w_ih.t(), x, one_hot, hidden.slice_mut(s![m.., ..]));
        let act = self.activation;
        // W_hhᵀ copied once, row-major, for the per-step products (see lstm.rs).
        let mut w_hh_t = scratch.array(h, h);
        w_hh_t.assign(&w_hh.t());
        let blocks = unit_blocks(h);
        let threads = lockstep_threads(blocks.len(), m * h * h);
        let mut hidden_v = hidden.view_mut();
        let h_all = SharedRows::new(&mut hidden_v);
        // Task (t, j): block j's units of h_t = f(its input projection + h_{t−1} times its
        // columns of W_hhᵀ + b).
        lockstep(t_steps, blocks.len(), threads, &|t, j| {
            let units = blocks[j].clone();
            // SAFETY: task (t, j) alone writes block j's units of h_t (rows t + 1); it reads
            // h_{t−1} whole (rows t), which every task of step t − 1 finished writing before
            // any task of step t began (`lockstep`), and which no task of step t writes.
            let (h_prev, mut z) = unsafe {
                (h_all.part(t * m..(t + 1) * m, 0..h), h_all.part_mut((t + 1) * m..(t + 2) * m, units.clone()))
            };
            gemm_serial(F::one(), &h_prev, &w_hh_t.slice(s![.., units.clone()]), F::one(), &mut z);
            let b = b.slice(s![units]);
            for mut row in z.rows_mut() {
                Zip::from(&mut row).and(&b).for_each(|z, &b| *z = activate(act, *z + b));
            }
        });
        scratch.recycle(w_hh_t);
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
        let one_hot = one_hot_columns(x);
        self.backward_in(&mut Scratch::default(), w_ih, w_hh, x, one_hot.as_deref(), fwd, dh, alpha, g, want_input)
    }

    /// [`Rnn::backward`] with its arrays from `scratch` and the one-hot columns of `x` given
    /// (`None`: x is not one-hot).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward_in<F: Real>(
        &self,
        scratch: &mut Scratch<F>,
        w_ih: ArrayView2<F>,
        w_hh: ArrayView2<F>,
        x: ArrayView2<F>,
        one_hot: Option<&[usize]>,
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
        let mut dz = scratch.array(dh.nrows(), dh.ncols());
        dz.assign(&dh);
        let mut carry = scratch.array(m, h);
        carry.fill(F::zero());
        let steps = self.steps;
        let blocks = unit_blocks(h);
        let threads = lockstep_threads(blocks.len(), m * h * h);
        {
            let (mut dz_v, mut carry_v) = (dz.view_mut(), carry.view_mut());
            let (dz_all, carry_all) = (SharedRows::new(&mut dz_v), SharedRows::new(&mut carry_v));
            // Task (s, j), s = 0 … T: block j's units of δh_{t+1→t} (t = T − 1 − s) = δz_{t+1}
            // W_hh's columns of those units (s > 0), then δz_t = (δh_t + that) ⊙ f′(h_t) on
            // them. Step T only forms δh_0 = δz_1 W_hh.
            lockstep(steps + 1, blocks.len(), threads, &|s, j| {
                let units = blocks[j].clone();
                // SAFETY: task (s, j) alone writes block j's units of the carry and of δz_t;
                // it reads δz_{t+1} whole, which every task of step s − 1 finished writing
                // before any task of step s began (`lockstep`), and which no task of step s
                // writes.
                let mut c = unsafe { carry_all.part_mut(0..m, units.clone()) };
                if s > 0 {
                    let after = steps - s;
                    let dz_next = unsafe { dz_all.part(after * m..(after + 1) * m, 0..h) };
                    gemm_serial(F::one(), &dz_next, &w_hh.slice(s![.., units.clone()]), F::zero(), &mut c);
                }
                if s == steps {
                    return;
                }
                let t = steps - 1 - s;
                // SAFETY: as above.
                let mut dz_t = unsafe { dz_all.part_mut(t * m..(t + 1) * m, units.clone()) };
                let h_t = fwd.hidden.slice(s![(t + 1) * m..(t + 2) * m, units]);
                Zip::from(&mut dz_t)
                    .and(&c)
                    .and(&h_t)
                    .for_each(|d, &c, &a| *d = (*d + c) * derivative_from_value(act, a));
            });
        }
        let h_prev = fwd.hidden.slice(s![..self.steps * m, ..]);
        parameter_gradients(alpha, dz.view(), x, one_hot, h_prev, g);
        let input = want_input.then(|| {
            let mut dx = scratch.array(x.nrows(), x.ncols());
            gemm(F::one(), &dz.view(), &w_ih, F::zero(), &mut dx.view_mut());
            dx
        });
        scratch.recycle(dz);
        Ok(StateGradients { input, h0: carry, c0: None })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Every task runs exactly once, and each sees every task of the step before finished —
    /// on teams of 1 … 5 threads, including teams larger than the pool they run on (a helper
    /// that never starts must not stall the others) and more blocks than threads.
    #[test]
    fn lockstep_runs_each_task_once_after_the_step_before() {
        let (steps, blocks) = (40, 7);
        for pool_threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(pool_threads).build().unwrap();
            for team in 1..=5 {
                let runs: Vec<AtomicUsize> = (0..steps * blocks).map(|_| AtomicUsize::new(0)).collect();
                let finished: Vec<AtomicUsize> = (0..steps).map(|_| AtomicUsize::new(0)).collect();
                let early = AtomicUsize::new(0);
                pool.install(|| {
                    lockstep(steps, blocks, team, &|s, j| {
                        if s > 0 && finished[s - 1].load(Ordering::Acquire) != blocks {
                            early.fetch_add(1, Ordering::Relaxed);
                        }
                        runs[s * blocks + j].fetch_add(1, Ordering::Relaxed);
                        finished[s].fetch_add(1, Ordering::Release);
                    })
                });
                let counts: Vec<usize> = runs.iter().map(|r| r.load(Ordering::Relaxed)).collect();
                assert!(counts.iter().all(|&c| c == 1), "pool {pool_threads}, team {team}: runs {counts:?}");
                assert_eq!(early.load(Ordering::Relaxed), 0, "pool {pool_threads}, team {team}: a step began early");
            }
        }
    }

    /// A task that panics ends the pass with its panic on every team size: the others must not
    /// wait forever for the block it never finishes.
    #[test]
    fn a_panicking_task_is_passed_on_not_waited_for() {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        for team in 1..=3 {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.install(|| {
                    lockstep(20, 4, team, &|s, j| {
                        if s == 5 && j == 1 {
                            panic!("task (5, 1) fails");
                        }
                    })
                })
            }));
            assert!(result.is_err(), "team {team}: the panic was lost");
        }
    }

    /// Blocks of 32 cover the units once, in order; LSTM gate order groups each block's i, f, g, o.
    #[test]
    fn unit_blocks_and_gate_order() {
        assert_eq!(unit_blocks(1), vec![0..1]);
        assert_eq!(unit_blocks(65), vec![0..32, 32..64, 64..65]);
        let order = crate::layers::lstm::gate_order(33);
        assert_eq!(order.len(), 4 * 33);
        assert_eq!(&order[..3], &[0, 1, 2]);
        assert_eq!(&order[32..34], &[33, 34]); // block 0's f rows start at θ row h = 33
        assert_eq!(&order[128..], &[32, 65, 98, 131]); // block 1 (unit 32): i, f, g, o
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert!(sorted.iter().enumerate().all(|(i, &r)| i == r), "a permutation");
    }
}
