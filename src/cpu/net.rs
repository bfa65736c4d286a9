//! Forward and backward passes of a dense network on a batch, written to read like MATH.md
//! (examples are rows: Z = A Wᵀ + 1 bᵀ). Pure functions of (spec, θ, X, y): no state, no I/O.
//! Elementwise work is fused with the pass that produces it (bias + activation in one sweep,
//! error × f′ in one sweep) and split across cores by rows (rayon; every element and every
//! reduction is computed in a fixed order, so results stay bit-for-bit reproducible), and the
//! matrix products go through [`gemm()`](super::gemm).

use ndarray::parallel::prelude::*;
use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis, Zip};

use super::{Real, gemm};
use crate::backend::Cost;
use crate::model::{Activation, NetSpec, Output, ThetaLayout};

/// What the output is compared with, in the backend's precision.
#[derive(Clone, Copy, Debug)]
pub enum TargetView<'a, F> {
    /// y = x (autoencoder).
    Inputs,
    /// Class labels 0..k−1 (softmax output): one per example, or for a recurrent network with
    /// an output at every step T per sequence, sequence after sequence (m·T in all).
    Labels(&'a [usize]),
    /// Real targets y, m × k (m × (T·k) for per-step targets of a recurrent network), for a
    /// squared-error or sigmoid-BCE output.
    Values(ArrayView2<'a, F>),
}

/// f(z), overflow-safe for sigmoid.
#[inline]
pub fn activate<F: Real>(act: Activation, z: F) -> F {
    match act {
        Activation::Sigmoid => z.sigmoid(),
        Activation::Tanh => z.tanh_act(),
        Activation::Relu => z.max(F::zero()),
        Activation::LeakyRelu { alpha } => {
            if z >= F::zero() {
                z
            } else {
                F::of(alpha) * z
            }
        }
        Activation::Identity => z,
    }
}

/// f′(z) written with the stored value a = f(z) (MATH.md). For (leaky) ReLU, a > 0 exactly
/// when z > 0 because α ≥ 0.
#[inline]
pub fn derivative_from_value<F: Real>(act: Activation, a: F) -> F {
    match act {
        Activation::Sigmoid => a * (F::one() - a),
        Activation::Tanh => F::one() - a * a,
        Activation::Relu => {
            if a > F::zero() {
                F::one()
            } else {
                F::zero()
            }
        }
        Activation::LeakyRelu { alpha } => {
            if a > F::zero() {
                F::one()
            } else {
                F::of(alpha)
            }
        }
        Activation::Identity => F::one(),
    }
}

/// Most buffers a pass needs, kept between calls. A cost-and-gradient of the autoencoder on
/// 10,000 rows fills ~80 MB of fresh arrays; allocated anew each call they come straight from
/// the kernel (zeroed pages, one fault per page, with the two threads queueing on the same
/// lock), which cost ~20% of the step (BENCHMARKS.md). Arrays handed out here keep whatever
/// values their buffer held: only for results that are then written in full.
#[derive(Debug)]
pub struct Scratch<F> {
    free: Vec<Vec<F>>,
}

impl<F> Default for Scratch<F> {
    fn default() -> Scratch<F> {
        Scratch { free: Vec::new() }
    }
}

/// Buffers kept at most; beyond it the smallest is dropped (batch sizes that change keep
/// adding new ones).
const SCRATCH_BUFFERS: usize = 16;

impl<F: Real> Scratch<F> {
    /// A rows × cols array in standard layout with unspecified (but initialised) values.
    pub fn array(&mut self, rows: usize, cols: usize) -> Array2<F> {
        let n = rows * cols;
        // The smallest kept buffer that holds n values, else the largest one, grown.
        let fits = self.free.iter().enumerate().filter(|(_, v)| v.len() >= n).min_by_key(|(_, v)| v.len());
        let pick = fits.or_else(|| self.free.iter().enumerate().max_by_key(|(_, v)| v.len())).map(|(i, _)| i);
        let mut v = pick.map_or_else(Vec::new, |i| self.free.swap_remove(i));
        v.resize(n, F::zero());
        Array2::from_shape_vec((rows, cols), v).expect("the buffer has rows × cols values")
    }

    /// A copy of `a` in a kept buffer.
    pub fn copy_of(&mut self, a: &Array2<F>) -> Array2<F> {
        let mut c = self.array(a.nrows(), a.ncols());
        c.assign(a);
        c
    }

    /// Takes an array's buffer back for later calls.
    pub fn recycle(&mut self, a: Array2<F>) {
        let (mut v, offset) = a.into_raw_vec_and_offset();
        if offset.unwrap_or(0) != 0 {
            return;
        }
        // Lengths only shrink by truncation, which keeps the values: grow back to capacity
        // so that a later, larger request does not pay for a fresh buffer.
        let cap = v.capacity();
        v.resize(cap, F::zero());
        self.free.push(v);
        if self.free.len() > SCRATCH_BUFFERS {
            let smallest = (0..self.free.len()).min_by_key(|&i| self.free[i].len()).expect("not empty");
            self.free.swap_remove(smallest);
        }
    }

    /// Returns every array of a forward pass.
    pub fn recycle_forward(&mut self, fwd: Forward<F>) {
        fwd.activations.into_iter().for_each(|a| self.recycle(a));
        if let Some((logits, _)) = fwd.softmax {
            self.recycle(logits);
        }
        if let Some(logits) = fwd.logits {
            self.recycle(logits);
        }
        if let Some(c) = fwd.complement {
            self.recycle(c);
        }
    }
}

/// A Wᵀ: the pre-activation of the next layer before its bias, which the caller adds in the
/// same sweep as the activation.
fn times_weights_t<F: Real>(scratch: &mut Scratch<F>, a: ArrayView2<F>, w: ArrayView2<F>) -> Array2<F> {
    let mut z = scratch.array(a.nrows(), w.nrows());
    gemm(F::one(), &a, &w.t(), F::zero(), &mut z.view_mut());
    z
}

/// The normaliser of one row of logits, kept in two pieces: the row maximum and
/// log Σ_j exp(z_j − max). Their sum would cancel against z_y in f32 (MATH.md, "Numerically
/// safe forms"), so they are only ever used through [`RowNormaliser::log_prob`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RowNormaliser<F> {
    /// max_j z_j, the row's largest logit.
    pub max: F,
    /// log Σ_j exp(z_j − max_j z_j) (≥ 0).
    pub log_sum: F,
}

impl<F: Real> RowNormaliser<F> {
    /// log P(k|x) = (z_k − max_j z_j) − log Σ_j exp(z_j − max_j z_j), for the logit z_k of this
    /// row, in f64: exact where P itself underflows, and free of cancellation when the logits
    /// are large (logits of 1e8 give ln ½, not 0).
    pub fn log_prob(&self, z_k: F) -> f64 {
        (z_k - self.max).f64() - self.log_sum.f64()
    }
}

/// Replaces each row of logits with softmax probabilities (row maximum subtracted) and
/// returns each row's normaliser.
pub fn softmax_rows<F: Real>(z: &mut Array2<F>) -> Vec<RowNormaliser<F>> {
    let mut norms = Vec::with_capacity(z.nrows());
    for mut row in z.axis_iter_mut(Axis(0)) {
        let max = row.fold(F::neg_infinity(), |m, &v| m.max(v));
        let mut sum = F::zero();
        row.mapv_inplace(|v| {
            let e = (v - max).exp();
            sum += e;
            e
        });
        let inv = F::one() / sum;
        row.mapv_inplace(|e| e * inv);
        norms.push(RowNormaliser { max, log_sum: sum.ln() });
    }
    norms
}

/// A ← σ(Z + 1 bᵀ) and C ← σ(−(Z + 1 bᵀ)) = 1 − A, each computed from z: where σ(z) rounds
/// to 1 (z ≳ 17 in f32, ≳ 37 in f64) 1 − A is 0, while C keeps e^{−z} (MATH.md, "Numerically
/// safe forms"). Rows split across cores.
pub fn bias_sigmoid_with_complement<F: Real>(z: &mut Array2<F>, b: ArrayView1<F>, c: &mut Array2<F>) {
    Zip::from(z.rows_mut()).and(c.rows_mut()).par_for_each(|mut z, mut c| {
        match (z.as_slice_mut(), c.as_slice_mut(), b.as_slice()) {
            (Some(z), Some(c), Some(b)) => pair_row(z, c, b),
            _ => Zip::from(&mut z)
                .and(&mut c)
                .and(&b)
                .for_each(|zij, cij, &bj| (*zij, *cij) = (*zij + bj).sigmoid_pair()),
        }
    });
}

/// (z, c) ← (σ(z + b), σ(−(z + b))) along one row; built for the baseline and for AVX2 like
/// [`row_sweep`], with the same bits from both.
fn pair_row<F: Real>(z: &mut [F], c: &mut [F], b: &[F]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has just been checked for AVX-512F.
        return unsafe { pair_row_avx512(z, c, b) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has just been checked for AVX2.
        return unsafe { pair_row_avx2(z, c, b) };
    }
    pair_row_plain(z, c, b)
}

#[inline(always)]
fn pair_row_plain<F: Real>(z: &mut [F], c: &mut [F], b: &[F]) {
    for ((zij, cij), &bj) in z.iter_mut().zip(c.iter_mut()).zip(b) {
        (*zij, *cij) = (*zij + bj).sigmoid_pair();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn pair_row_avx2<F: Real>(z: &mut [F], c: &mut [F], b: &[F]) {
    pair_row_plain(z, c, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn pair_row_avx512<F: Real>(z: &mut [F], c: &mut [F], b: &[F]) {
    pair_row_plain(z, c, b)
}

/// Z ← f(Z + 1 bᵀ) in one sweep, rows split across cores.
pub fn bias_activate<F: Real>(z: &mut Array2<F>, b: ArrayView1<F>, act: Activation) {
    // One loop per activation, so that each inner loop is straight-line code to vectorise.
    fn sweep<F: Real>(z: &mut Array2<F>, b: ArrayView1<F>, f: impl Fn(F) -> F + Sync + Copy) {
        Zip::from(z.rows_mut()).par_for_each(|mut row| match (row.as_slice_mut(), b.as_slice()) {
            (Some(row), Some(b)) => row_sweep(row, b, f),
            _ => Zip::from(&mut row).and(&b).for_each(|zij, &bj| *zij = f(*zij + bj)),
        });
    }
    match act {
        Activation::Sigmoid => sweep(z, b, F::sigmoid),
        Activation::Tanh => sweep(z, b, F::tanh_act),
        Activation::Relu => sweep(z, b, |v| v.max(F::zero())),
        _ => sweep(z, b, |v| activate(act, v)),
    }
}

/// z ← f(z + b) along one row. Built three times on x86-64: for the baseline (SSE2, 4 lanes),
/// with AVX2 (8 lanes) and with AVX-512F (16 lanes), picked at run time. All do the same IEEE
/// operations in the same order (no fused multiply-add), so the results are bit for bit the
/// same on any machine.
fn row_sweep<F: Real>(z: &mut [F], b: &[F], f: impl Fn(F) -> F + Copy) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has just been checked for AVX-512F.
        return unsafe { row_sweep_avx512(z, b, f) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has just been checked for AVX2.
        return unsafe { row_sweep_avx2(z, b, f) };
    }
    row_sweep_plain(z, b, f)
}

#[inline(always)]
fn row_sweep_plain<F: Real>(z: &mut [F], b: &[F], f: impl Fn(F) -> F) {
    for (zij, &bj) in z.iter_mut().zip(b) {
        *zij = f(*zij + bj);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn row_sweep_avx2<F: Real>(z: &mut [F], b: &[F], f: impl Fn(F) -> F) {
    row_sweep_plain(z, b, f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn row_sweep_avx512<F: Real>(z: &mut [F], b: &[F], f: impl Fn(F) -> F) {
    row_sweep_plain(z, b, f)
}

/// Lanes of the running sums in [`error_row`]: independent accumulators, so the f64 sum is
/// not one long dependency chain and vectorises; added in a fixed order at the end.
const LANES: usize = 8;

/// δ = (a − y) ⊙ f′(a) along one row, written over a (`d` holds a on entry, δ on return),
/// returning Σ (a − y)² in f64. Built for the baseline and for AVX2 like [`row_sweep`], with
/// the same bits from both.
fn error_row<F: Real>(d: &mut [F], y: &[F], fp: impl Fn(F) -> F + Copy) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has just been checked for AVX-512F.
        return unsafe { error_row_avx512(d, y, fp) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has just been checked for AVX2.
        return unsafe { error_row_avx2(d, y, fp) };
    }
    error_row_plain(d, y, fp)
}

#[inline(always)]
fn error_row_plain<F: Real>(d: &mut [F], y: &[F], fp: impl Fn(F) -> F) -> f64 {
    let mut acc = [0.0f64; LANES];
    let split = d.len() / LANES * LANES;
    for (d, y) in d[..split].chunks_exact_mut(LANES).zip(y[..split].chunks_exact(LANES)) {
        for l in 0..LANES {
            let a = d[l];
            let e = a - y[l];
            acc[l] += e.f64() * e.f64();
            d[l] = e * fp(a);
        }
    }
    let mut tail = 0.0;
    for (d, &y) in d[split..].iter_mut().zip(&y[split..]) {
        let a = *d;
        let e = a - y;
        tail += e.f64() * e.f64();
        *d = e * fp(a);
    }
    acc.iter().sum::<f64>() + tail
}

/// Σ (a − y)² along one row, summed exactly as [`error_row`] sums it.
fn squares_row<F: Real>(a: &[F], y: &[F]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let split = a.len() / LANES * LANES;
    for (a, y) in a[..split].chunks_exact(LANES).zip(y[..split].chunks_exact(LANES)) {
        for l in 0..LANES {
            let e = a[l] - y[l];
            acc[l] += e.f64() * e.f64();
        }
    }
    let tail: f64 = a[split..].iter().zip(&y[split..]).map(|(&a, &y)| (a - y).f64() * (a - y).f64()).sum();
    acc.iter().sum::<f64>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn error_row_avx2<F: Real>(d: &mut [F], y: &[F], fp: impl Fn(F) -> F) -> f64 {
    error_row_plain(d, y, fp)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn error_row_avx512<F: Real>(d: &mut [F], y: &[F], fp: impl Fn(F) -> F) -> f64 {
    error_row_plain(d, y, fp)
}

/// δ ← (δ + 1 kᵀ) ⊙ f′(A), with f′ written through the stored activations A; `k` is the
/// sparsity term of each hidden unit (none: plain backpropagation).
pub fn times_derivative<F: Real>(delta: &mut Array2<F>, a: ArrayView2<F>, act: Activation, k: Option<&Array1<F>>) {
    match k {
        Some(k) => Zip::from(delta.rows_mut()).and(a.rows()).par_for_each(|mut d, a| {
            Zip::from(&mut d).and(&a).and(k).for_each(|d, &a, &k| *d = (*d + k) * derivative_from_value(act, a));
        }),
        None => Zip::from(delta).and(&a).par_for_each(|d, &a| *d *= derivative_from_value(act, a)),
    }
}

/// δ ← (δ + 1 kᵀ) ⊙ A ⊙ C for a sigmoid layer whose complement C = σ(−Z) was kept
/// ([`bias_sigmoid_with_complement`]): f′ = σ(z)σ(−z), which a(1 − a) loses where a rounds
/// to 1 — exactly where the sparsity term k = β(1−ρ)/(1−ρ̂) is large.
pub fn times_sigmoid_derivative<F: Real>(delta: &mut Array2<F>, a: ArrayView2<F>, c: ArrayView2<F>, k: &Array1<F>) {
    Zip::from(delta.rows_mut()).and(a.rows()).and(c.rows()).par_for_each(|mut d, a, c| {
        Zip::from(&mut d).and(&a).and(&c).and(k).for_each(|d, &a, &c, &k| *d = (*d + k) * (a * c));
    });
}

/// The KL-sparsity term of the hidden delta: β(−ρ/ρ̂ⱼ + (1−ρ)/(1−ρ̂ⱼ)) per unit, with 1 − ρ̂ⱼ
/// given as its own mean ([`Sparse::rho_hat_complement`]), never formed by subtraction.
pub fn kl_delta<F: Real>(rho: f64, beta: f64, rho_hat: &Array1<F>, rho_hat_complement: &Array1<F>) -> Array1<F> {
    Zip::from(rho_hat)
        .and(rho_hat_complement)
        .map_collect(|&rh, &rc| F::of(beta * (-rho / rh.f64() + (1.0 - rho) / rc.f64())))
}

/// Σᵢ ½‖aᵢ − yᵢ‖² of the output activations A against the targets Y, in f64 with rows summed
/// in order (the same value on every run).
pub fn squared_error<F: Real>(out: &Array2<F>, y: ArrayView2<F>) -> f64 {
    // The same sums, lane for lane, as squared_error_delta's sweep: J(θ) has the same bits
    // whether or not the gradient is asked for.
    let row_sq = Zip::from(out.rows()).and(y.rows()).par_map_collect(|a, y| match (a.as_slice(), y.as_slice()) {
        (Some(a), Some(y)) => squares_row(a, y),
        _ => a.iter().zip(y).map(|(&a, &y)| (a - y).f64() * (a - y).f64()).sum::<f64>(),
    });
    0.5 * row_sq.iter().sum::<f64>()
}

/// [`squared_error`] and δ = (A − Y) ⊙ f′(A) from one sweep over A and Y, δ written over A:
/// the output activations are not read again once δ⁽ᴸ⁾ is formed, and at MNIST's size
/// (60,000 × 784 in f32) a separate δ would be another 188 MB.
pub fn squared_error_delta<F: Real>(mut out: Array2<F>, y: ArrayView2<F>, act: Activation) -> (f64, Array2<F>) {
    let row_sq = Zip::from(out.rows_mut()).and(y.rows()).par_map_collect(|d, y| error_row_of(d, y, act));
    (0.5 * row_sq.iter().sum::<f64>(), out)
}

/// One row of [`squared_error_delta`]: δ = (a − y) ⊙ f′(a) over a, returning Σ (a − y)².
fn error_row_of<F: Real>(mut d: ndarray::ArrayViewMut1<F>, y: ArrayView1<F>, act: Activation) -> f64 {
    match (d.as_slice_mut(), y.as_slice()) {
        (Some(d), Some(y)) => match act {
            Activation::Sigmoid => error_row(d, y, |a| a * (F::one() - a)),
            Activation::Identity => error_row(d, y, |_| F::one()),
            _ => error_row(d, y, |a| derivative_from_value(act, a)),
        },
        _ => {
            let mut sum = 0.0;
            Zip::from(&mut d).and(&y).for_each(|d, &y| {
                let a = *d;
                let e = a - y;
                sum += e.f64() * e.f64();
                *d = e * derivative_from_value(act, a);
            });
            sum
        }
    }
}

/// acc ← acc + row, element by element: one step of `sum_axis`, which [`column_sums`] runs
/// on each block.
#[inline]
fn add_row<F: Real>(acc: &mut Array1<F>, row: ArrayView1<F>) {
    acc.zip_mut_with(&row, |s, &v| *s += v);
}

/// The block sums of [`column_sums`] added in block order, as it adds them.
fn fold_blocks<F: Real>(partials: impl IntoIterator<Item = Array1<F>>, cols: usize) -> Array1<F> {
    partials.into_iter().fold(Array1::zeros(cols), |acc, p| acc + p)
}

/// [`squared_error_delta`] with the column sums of δ (∇b of the output layer before 1/m)
/// added while each row is in cache, in [`column_sums`]' blocks and order: the same bits as
/// `column_sums(δ)` without a second pass over the m × k matrix (31 MB for the MNIST
/// autoencoder on 10,000 images).
pub fn squared_error_delta_sums<F: Real>(
    mut out: Array2<F>,
    y: ArrayView2<F>,
    act: Activation,
) -> (f64, Array2<F>, Array1<F>) {
    let cols = out.ncols();
    let blocks: Vec<(Vec<f64>, Array1<F>)> = out
        .axis_chunks_iter_mut(Axis(0), SUM_BLOCK_ROWS)
        .into_par_iter()
        .zip(y.axis_chunks_iter(Axis(0), SUM_BLOCK_ROWS).into_par_iter())
        .map(|(mut d, y)| {
            let mut sums = Array1::zeros(cols);
            let mut row_sq = Vec::with_capacity(d.nrows());
            for (mut d, y) in d.rows_mut().into_iter().zip(y.rows()) {
                row_sq.push(error_row_of(d.view_mut(), y, act));
                add_row(&mut sums, d.view());
            }
            (row_sq, sums)
        })
        .collect();
    // Σ over rows in row order, as squared_error_delta adds them.
    let sum_sq = blocks.iter().flat_map(|(rows, _)| rows.iter()).sum::<f64>();
    let sums = fold_blocks(blocks.into_iter().map(|(_, s)| s), cols);
    (0.5 * sum_sq, out, sums)
}

/// [`times_sigmoid_derivative`] with the column sums of the new δ (∇b before 1/m) added while
/// each row is in cache: the bits of `column_sums(δ)` ([`squared_error_delta_sums`]).
pub fn times_sigmoid_derivative_sums<F: Real>(
    delta: &mut Array2<F>,
    a: ArrayView2<F>,
    c: ArrayView2<F>,
    k: &Array1<F>,
) -> Array1<F> {
    let cols = delta.ncols();
    let partials: Vec<Array1<F>> = delta
        .axis_chunks_iter_mut(Axis(0), SUM_BLOCK_ROWS)
        .into_par_iter()
        .zip(a.axis_chunks_iter(Axis(0), SUM_BLOCK_ROWS).into_par_iter())
        .zip(c.axis_chunks_iter(Axis(0), SUM_BLOCK_ROWS).into_par_iter())
        .map(|((mut d, a), c)| {
            let mut sums = Array1::zeros(cols);
            for ((mut d, a), c) in d.rows_mut().into_iter().zip(a.rows()).zip(c.rows()) {
                Zip::from(&mut d).and(&a).and(&c).and(k).for_each(|d, &a, &c, &k| *d = (*d + k) * (a * c));
                add_row(&mut sums, d.view());
            }
            sums
        })
        .collect();
    fold_blocks(partials, cols)
}

/// [`bias_sigmoid_with_complement`] with the column sums of A and of C (n·ρ̂ and n·(1 − ρ̂))
/// added while each row is in cache: the bits of `column_sums(A)` and `column_sums(C)`
/// ([`squared_error_delta_sums`]).
pub fn bias_sigmoid_with_complement_sums<F: Real>(
    z: &mut Array2<F>,
    b: ArrayView1<F>,
    c: &mut Array2<F>,
) -> (Array1<F>, Array1<F>) {
    let cols = z.ncols();
    let partials: Vec<(Array1<F>, Array1<F>)> = z
        .axis_chunks_iter_mut(Axis(0), SUM_BLOCK_ROWS)
        .into_par_iter()
        .zip(c.axis_chunks_iter_mut(Axis(0), SUM_BLOCK_ROWS).into_par_iter())
        .map(|(mut z, mut c)| {
            let (mut sa, mut sc) = (Array1::zeros(cols), Array1::zeros(cols));
            for (mut z, mut c) in z.rows_mut().into_iter().zip(c.rows_mut()) {
                match (z.as_slice_mut(), c.as_slice_mut(), b.as_slice()) {
                    (Some(z), Some(c), Some(b)) => pair_row(z, c, b),
                    _ => Zip::from(&mut z)
                        .and(&mut c)
                        .and(&b)
                        .for_each(|zij, cij, &bj| (*zij, *cij) = (*zij + bj).sigmoid_pair()),
                }
                add_row(&mut sa, z.view());
                add_row(&mut sc, c.view());
            }
            (sa, sc)
        })
        .collect();
    let (pa, pc): (Vec<_>, Vec<_>) = partials.into_iter().unzip();
    (fold_blocks(pa, cols), fold_blocks(pc, cols))
}

/// The forward pass: activations a⁽²⁾ … a⁽ᴸ⁾ (the last one: probabilities for softmax).
pub struct Forward<F> {
    /// One matrix per layer, bottom first: `activations[l]` is a⁽ˡ⁺²⁾, m × s_{l+2}; the
    /// last is the network's output h(x).
    pub activations: Vec<Array2<F>>,
    /// Softmax output only: the logits Z⁽ᴸ⁾ and each row's normaliser, so that log P(y|x)
    /// ([`RowNormaliser::log_prob`]) stays exact where P itself underflows.
    pub softmax: Option<(Array2<F>, Vec<RowNormaliser<F>>)>,
    /// With KL sparsity only: 1 − a⁽²⁾ of the (sigmoid) first hidden layer, computed as
    /// σ(−z⁽²⁾) ([`bias_sigmoid_with_complement`]).
    pub complement: Option<Array2<F>>,
    /// With KL sparsity only: the column sums Σᵢ a⁽²⁾ᵢ and Σᵢ (1 − a⁽²⁾ᵢ) (length s₂), taken in
    /// the sweep that computed them ([`bias_sigmoid_with_complement_sums`]): m·ρ̂ and m·(1 − ρ̂).
    pub complement_sums: Option<(Array1<F>, Array1<F>)>,
    /// Sigmoid-BCE output only ([`Output::SigmoidBce`]): the logits Z⁽ᴸ⁾, from which the
    /// binary cross-entropy is computed ([`binary_cross_entropy`]); the activations hold σ(Z).
    pub logits: Option<Array2<F>>,
}

/// The output layer on Z = A Wᵀ before its bias b (m × k): the output activation, softmax
/// (keeping the logits and row normalisers) or σ (keeping the logits for the binary
/// cross-entropy), as a [`Forward`] whose activations hold the output alone. Layer stacks
/// and recurrent networks end here.
pub(crate) fn output_forward<F: Real>(
    scratch: &mut Scratch<F>,
    spec: &NetSpec,
    mut z: Array2<F>,
    b: ArrayView1<F>,
) -> Forward<F> {
    let (mut softmax, mut logits) = (None, None);
    match spec.output {
        Output::SquaredError(act) => bias_activate(&mut z, b, act),
        Output::Softmax => {
            z += &b;
            let kept = scratch.copy_of(&z);
            let norms = softmax_rows(&mut z);
            softmax = Some((kept, norms));
        }
        Output::SigmoidBce => {
            z += &b;
            logits = Some(scratch.copy_of(&z));
            z.par_mapv_inplace(F::sigmoid);
        }
    }
    Forward { activations: vec![z], softmax, complement: None, complement_sums: None, logits }
}

/// The binary cross-entropy summed over every element of the logits Z (m × k) against the
/// 0/1 targets Y: Σᵢⱼ −[y log σ(z) + (1 − y) log(1 − σ(z))], computed per element in f64 as
/// max(z, 0) − z·y + ln(1 + e^{−|z|}) (MATH.md, "Numerically safe forms"; PyTorch's
/// `BCEWithLogitsLoss`): log σ(z) = −softplus(−z) and log(1 − σ(z)) = −softplus(z), so no
/// logarithm of a σ rounded to 0 or 1 is ever taken and z = ±100 gives a finite, exact cost.
/// Rows are summed in order (the same value on every run and any number of threads).
pub fn binary_cross_entropy<F: Real>(z: ArrayView2<F>, y: ArrayView2<F>) -> f64 {
    let rows = Zip::from(z.rows())
        .and(y.rows())
        .par_map_collect(|z, y| z.iter().zip(y).map(|(&z, &y)| bce_term(z.f64(), y.f64())).sum::<f64>());
    rows.iter().sum()
}

/// One element of [`binary_cross_entropy`]: max(z, 0) − z·y + ln(1 + e^{−|z|}).
#[inline]
pub fn bce_term(z: f64, y: f64) -> f64 {
    z.max(0.0) - z * y + (-z.abs()).exp().ln_1p()
}

/// The forward pass of a dense network (MATH.md, "Forward", with examples as rows):
/// Z⁽ˡ⁺¹⁾ = A⁽ˡ⁾ W⁽ˡ⁾ᵀ + 1 b⁽ˡ⁾ᵀ, A⁽ˡ⁺¹⁾ = f(Z⁽ˡ⁺¹⁾), from A⁽¹⁾ = `x` (m × s_1); the output
/// layer applies the spec's output (softmax with its row maximum subtracted, sigmoid, identity).
/// `theta` holds `layout.len()` values in `layout`'s order; `scratch` lends reused buffers.
/// The caller checks the shapes ([`CpuBackend`](super::CpuBackend) does before calling): a θ or
/// `x` that does not fit the layout panics.
pub fn forward<F: Real>(
    scratch: &mut Scratch<F>,
    spec: &NetSpec,
    layout: &ThetaLayout,
    theta: &[F],
    x: ArrayView2<F>,
) -> Forward<F> {
    let mut activations: Vec<Array2<F>> = Vec::with_capacity(layout.num_layers());
    let mut softmax = None;
    let mut complement = None;
    let mut complement_sums = None;
    let mut logits = None;
    for l in 0..layout.num_layers() {
        let input = if l == 0 { x } else { activations[l - 1].view() };
        // Z = A Wᵀ + 1 bᵀ; A = f(Z)
        let mut z = times_weights_t(scratch, input, layout.weight(theta, l));
        let b = layout.bias(theta, l);
        match spec.activation_after(l) {
            // KL sparsity needs 1 − a⁽²⁾ (validated: the layer is sigmoid).
            Some(Activation::Sigmoid) if l == 0 && spec.sparsity.is_some() => {
                let mut c = scratch.array(z.nrows(), z.ncols());
                complement_sums = Some(bias_sigmoid_with_complement_sums(&mut z, b, &mut c));
                complement = Some(c);
            }
            Some(act) => bias_activate(&mut z, b, act),
            None => {
                let out = output_forward(scratch, spec, z, b);
                (softmax, logits) = (out.softmax, out.logits);
                z = out.activations.into_iter().next().expect("the output layer");
            }
        }
        activations.push(z);
    }
    Forward { activations, softmax, complement, complement_sums, logits }
}

/// Rows per block of [`column_sums`]: the blocks are summed in parallel and their partial sums
/// added in block order, so the result does not depend on the number of threads.
const SUM_BLOCK_ROWS: usize = 512;

/// Σᵢ aᵢ: the sum of the rows (bias gradients, ρ̂), in a fixed order.
pub fn column_sums<F: Real>(a: ArrayView2<F>) -> Array1<F> {
    let partials: Vec<Array1<F>> =
        a.axis_chunks_iter(Axis(0), SUM_BLOCK_ROWS).into_par_iter().map(|block| block.sum_axis(Axis(0))).collect();
    partials.into_iter().fold(Array1::zeros(a.ncols()), |acc, p| acc + p)
}

/// ρ̂: the mean activation of each unit over the batch.
pub fn mean_activation<F: Real>(a: &Array2<F>) -> Array1<F> {
    assert!(a.nrows() > 0, "batch is not empty");
    column_sums(a.view()) * F::of(1.0 / a.nrows() as f64)
}

/// ρ̂ and 1 − ρ̂ of the first hidden layer, each the mean of its own values over the batch
/// (MATH.md, "Numerically safe forms"): 1 − ρ̂ is never ρ̂ subtracted from 1, which is 0 once
/// ρ̂ rounds to 1 and makes KL infinite.
#[derive(Clone, Debug)]
pub struct Sparse<F> {
    /// ρ̂_j = (1/m) Σᵢ σ(z_ij).
    pub rho_hat: Array1<F>,
    /// 1 − ρ̂_j = (1/m) Σᵢ σ(−z_ij).
    pub rho_hat_complement: Array1<F>,
}

impl<F: Real> Sparse<F> {
    /// From the first hidden layer's activations A = σ(Z) and complement C = σ(−Z).
    pub fn of(a: &Array2<F>, c: &Array2<F>) -> Sparse<F> {
        Sparse { rho_hat: mean_activation(a), rho_hat_complement: mean_activation(c) }
    }

    /// From the column sums of A and C over m rows (as [`Forward::complement_sums`] keeps
    /// them): the bits of [`Sparse::of`], whose means are those sums times 1/m.
    pub fn from_sums(sums: &(Array1<F>, Array1<F>), m: usize) -> Sparse<F> {
        assert!(m > 0, "batch is not empty");
        let inv_m = F::of(1.0 / m as f64);
        Sparse { rho_hat: &sums.0 * inv_m, rho_hat_complement: &sums.1 * inv_m }
    }
}

/// β Σ_j KL(ρ‖ρ̂_j) = β Σ_j [ρ (ln ρ − ln ρ̂_j) + (1−ρ)(ln(1−ρ) − ln(1−ρ̂_j))], accumulated in
/// f64, with 1 − ρ̂_j given as its own mean. Logarithms of the two sides are taken apart, so
/// a ρ̂ as small as the precision allows still gives a finite term; it is infinite (and the
/// cost refused, [`crate::backend::Cost::finite`]) when ρ̂_j or 1 − ρ̂_j is 0 in the working
/// precision, or at the floor of f32's sigmoid ([`Real::SIGMOID_FLOOR`]), where its
/// logarithm would be a made-up −87 instead of a wrong-but-finite cost.
pub fn kl_sparsity<F: Real>(rho: f64, beta: f64, rho_hat: &Array1<F>, rho_hat_complement: &Array1<F>) -> f64 {
    let (ln_rho, ln_rho_c) = (rho.ln(), (1.0 - rho).ln());
    let ln = |mean: F| if mean.f64() <= 2.0 * F::SIGMOID_FLOOR { f64::NEG_INFINITY } else { mean.f64().ln() };
    beta * rho_hat
        .iter()
        .zip(rho_hat_complement)
        .map(|(&rh, &rc)| rho * (ln_rho - ln(rh)) + (1.0 - rho) * (ln_rho_c - ln(rc)))
        .sum::<f64>()
}

/// (λ/2) Σ_l ‖W⁽ˡ⁾‖², accumulated in f64. Exactly 0 when λ = 0, whatever the weights (never
/// 0 · ∞; MATH.md, "Numerically safe forms").
pub fn weight_decay_cost<F: Real>(spec: &NetSpec, layout: &ThetaLayout, theta: &[F]) -> f64 {
    if spec.weight_decay == 0.0 {
        return 0.0;
    }
    let sum_sq: f64 = theta[layout.all_weights()].iter().map(|&w| w.f64() * w.f64()).sum();
    0.5 * spec.weight_decay * sum_sq
}

/// The data term of J and the output delta δ⁽ᴸ⁾ (not yet divided by m).
/// Squared error: J = (1/m) Σ ½‖a − y‖², δ = (a − y) ⊙ f′(a).
/// Softmax: J = −(1/m) Σ log P(yᵢ|xᵢ), δ = P − onehot(y).
/// Sigmoid-BCE: J = −(1/m) Σᵢⱼ [y log a + (1 − y) log(1 − a)] from the logits
/// ([`binary_cross_entropy`]), δ = a − y.
/// δ is written over the output activations, which it takes out of `fwd` (no later step
/// reads them); without `want_delta`, `fwd` is left as it is.
pub(crate) fn output_cost_and_delta<F: Real>(
    spec: &NetSpec,
    fwd: &mut Forward<F>,
    x: ArrayView2<F>,
    y: TargetView<F>,
    want_delta: bool,
) -> (f64, Option<Array2<F>>) {
    let m = fwd.activations.last().expect("a network has an output layer").nrows() as f64;
    let take_out = |fwd: &mut Forward<F>| fwd.activations.pop().expect("a network has an output layer");
    match (spec.output, y) {
        (Output::Softmax, TargetView::Labels(labels)) => {
            let (logits, norms) = fwd.softmax.as_ref().expect("softmax forward keeps its logits");
            let mut nll = 0.0;
            for ((z, norm), &label) in logits.axis_iter(Axis(0)).zip(norms).zip(labels) {
                nll -= norm.log_prob(z[label]);
            }
            let delta = want_delta.then(|| {
                let mut d = take_out(fwd);
                for (mut row, &label) in d.axis_iter_mut(Axis(0)).zip(labels) {
                    row[label] -= F::one();
                }
                d
            });
            (nll / m, delta)
        }
        (Output::SquaredError(act), y) => {
            let y = match y {
                TargetView::Inputs => x,
                TargetView::Values(v) => v,
                TargetView::Labels(_) => unreachable!("labels with a squared-error output are refused by set_data"),
            };
            let (sum_sq, delta) = match want_delta {
                true => {
                    let (sum_sq, delta) = squared_error_delta(take_out(fwd), y, act);
                    (sum_sq, Some(delta))
                }
                false => (squared_error(fwd.activations.last().expect("a network has an output layer"), y), None),
            };
            (sum_sq / m, delta)
        }
        (Output::SigmoidBce, TargetView::Values(y)) => {
            let logits = fwd.logits.as_ref().expect("a sigmoid-BCE forward keeps its logits");
            let sum = binary_cross_entropy(logits.view(), y);
            let delta = want_delta.then(|| {
                let mut d = take_out(fwd);
                Zip::from(&mut d).and(&y).par_for_each(|d, &y| *d -= y);
                d
            });
            (sum / m, delta)
        }
        (Output::Softmax, _) => unreachable!("softmax without labels is refused by set_data"),
        (Output::SigmoidBce, _) => unreachable!("a sigmoid-BCE output without 0/1 targets is refused by set_data"),
    }
}

/// [`output_cost_and_delta`], with the column sums of δ⁽ᴸ⁾ taken in the same sweep when they
/// can be (a squared-error output: [`squared_error_delta_sums`]); `None` otherwise.
#[allow(clippy::type_complexity)]
fn output_cost_delta_and_sums<F: Real>(
    spec: &NetSpec,
    fwd: &mut Forward<F>,
    x: ArrayView2<F>,
    y: TargetView<F>,
    want_delta: bool,
) -> (f64, Option<Array2<F>>, Option<Array1<F>>) {
    let y = match (spec.output, y, want_delta) {
        (Output::SquaredError(_), TargetView::Inputs, true) => x,
        (Output::SquaredError(_), TargetView::Values(v), true) => v,
        _ => {
            let (data, delta) = output_cost_and_delta(spec, fwd, x, y, want_delta);
            return (data, delta, None);
        }
    };
    let Output::SquaredError(act) = spec.output else { unreachable!("matched above") };
    let out = fwd.activations.pop().expect("a network has an output layer");
    let m = out.nrows() as f64;
    let (sum_sq, delta, sums) = squared_error_delta_sums(out, y, act);
    (sum_sq / m, Some(delta), Some(sums))
}

/// J(θ) on the batch (x, y) and, when `grad` is given, ∇J(θ) written into it (MATH.md,
/// "Backpropagation").
pub fn cost_and_grad<F: Real>(
    scratch: &mut Scratch<F>,
    spec: &NetSpec,
    layout: &ThetaLayout,
    theta: &[F],
    x: ArrayView2<F>,
    y: TargetView<F>,
    grad: Option<&mut [F]>,
) -> Cost {
    cost_and_grad_given_sparsity(scratch, spec, layout, theta, x, y, grad, None)
}

/// Σᵢ σ(z⁽²⁾ᵢⱼ) and Σᵢ σ(−z⁽²⁾ᵢⱼ) over the rows of `x`: the sums behind ρ̂ and 1 − ρ̂
/// ([`Sparse`]) of the first hidden layer, from that layer's forward pass alone. Data-parallel
/// training ([`crate::dist`]) adds them over every shard before the backward pass.
pub fn sparsity_sums<F: Real>(
    scratch: &mut Scratch<F>,
    layout: &ThetaLayout,
    theta: &[F],
    x: ArrayView2<F>,
) -> (Array1<F>, Array1<F>) {
    let mut a = times_weights_t(scratch, x, layout.weight(theta, 0));
    let mut c = scratch.array(a.nrows(), a.ncols());
    bias_sigmoid_with_complement(&mut a, layout.bias(theta, 0), &mut c);
    let sums = (column_sums(a.view()), column_sums(c.view()));
    scratch.recycle(a);
    scratch.recycle(c);
    sums
}

/// [`cost_and_grad`], with ρ̂ and 1 − ρ̂ taken from `given` instead of this batch when given:
/// the means over all the shards of a data-parallel batch ([`crate::dist`]). The sparsity
/// term of J and of every hidden δ then uses them; the data term and the gradient's
/// 1/m are this batch's own.
#[allow(clippy::too_many_arguments)]
pub fn cost_and_grad_given_sparsity<F: Real>(
    scratch: &mut Scratch<F>,
    spec: &NetSpec,
    layout: &ThetaLayout,
    theta: &[F],
    x: ArrayView2<F>,
    y: TargetView<F>,
    grad: Option<&mut [F]>,
    given: Option<&Sparse<F>>,
) -> Cost {
    let m = x.nrows();
    let mut fwd = forward(scratch, spec, layout, theta, x);
    let (data, delta_out, mut delta_sums) = output_cost_delta_and_sums(spec, &mut fwd, x, y, grad.is_some());
    let weight_decay = weight_decay_cost(spec, layout, theta);

    // ρ̂ needs the forward pass over the whole batch before any backward step.
    let sparsity = spec.sparsity.map(|s| {
        let complement = fwd.complement.as_ref().expect("a sparse network's forward pass keeps 1 − a⁽²⁾");
        let sparse = given.cloned().unwrap_or_else(|| match &fwd.complement_sums {
            Some(sums) => Sparse::from_sums(sums, m),
            None => Sparse::of(&fwd.activations[0], complement),
        });
        let cost = kl_sparsity(s.target, s.weight, &sparse.rho_hat, &sparse.rho_hat_complement);
        (s, sparse, cost)
    });
    let cost = Cost { data, weight_decay, sparsity: sparsity.as_ref().map_or(0.0, |s| s.2) };

    let (Some(grad), Some(mut delta)) = (grad, delta_out) else {
        scratch.recycle_forward(fwd);
        return cost;
    };
    let inv_m = F::of(1.0 / m as f64);
    let lambda = F::of(spec.weight_decay);
    for l in (0..layout.num_layers()).rev() {
        let a_prev = if l == 0 { x } else { fwd.activations[l - 1].view() };
        let w = layout.weight(theta, l);

        // ∇W = (1/m) δᵀ A + λ W;   ∇b = (1/m) Σᵢ δ
        let mut grad_w = layout.weight_mut(grad, l);
        grad_w.assign(&w);
        gemm(inv_m, &delta.t(), &a_prev, lambda, &mut grad_w);
        let grad_b = delta_sums.take().unwrap_or_else(|| column_sums(delta.view()));
        Zip::from(layout.bias_mut(grad, l)).and(&grad_b).for_each(|g, &s| *g = s * inv_m);

        if l == 0 {
            break;
        }
        // δ⁽ˡ⁾ = (δ⁽ˡ⁺¹⁾ W + sparsity term) ⊙ f′(a⁽ˡ⁾)
        let mut delta_prev = scratch.array(a_prev.nrows(), a_prev.ncols());
        gemm(F::one(), &delta.view(), &w, F::zero(), &mut delta_prev.view_mut());
        let act = spec.hidden_activations[l - 1];
        match (&sparsity, &fwd.complement, l) {
            (Some((s, sparse, _)), Some(c), 1) => {
                let kl = kl_delta(s.target, s.weight, &sparse.rho_hat, &sparse.rho_hat_complement);
                delta_sums = Some(times_sigmoid_derivative_sums(&mut delta_prev, a_prev, c.view(), &kl));
            }
            _ => times_derivative(&mut delta_prev, a_prev, act, None),
        }
        scratch.recycle(std::mem::replace(&mut delta, delta_prev));
    }
    scratch.recycle(delta);
    scratch.recycle_forward(fwd);
    cost
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sweeps that add column sums as they go give the bits of the sweep followed by
    /// [`column_sums`], for batches of one block, several blocks and a partial last one.
    #[test]
    fn sweeps_with_sums_equal_the_sweep_then_column_sums_bit_for_bit() {
        fn bits<F: Real>(a: impl IntoIterator<Item = F>) -> Vec<u64> {
            a.into_iter().map(|v| v.f64().to_bits()).collect()
        }
        fn check<F: Real>(m: usize) {
            let k = 37;
            let val =
                |i: usize, j: usize, p: usize| F::of((((i * 131 + j * 17 + p) * 7919) % 2003) as f64 / 250.0 - 4.0);
            let z = Array2::from_shape_fn((m, k), |(i, j)| val(i, j, 1));
            let b = Array1::from_shape_fn(k, |j| val(0, j, 2));

            let (mut a1, mut c1) = (z.clone(), z.clone());
            bias_sigmoid_with_complement(&mut a1, b.view(), &mut c1);
            let (mut a2, mut c2) = (z.clone(), z.clone());
            let (sa, sc) = bias_sigmoid_with_complement_sums(&mut a2, b.view(), &mut c2);
            assert_eq!(bits(a1.iter().copied()), bits(a2.iter().copied()));
            assert_eq!(bits(c1.iter().copied()), bits(c2.iter().copied()));
            assert_eq!(bits(column_sums(a1.view())), bits(sa.iter().copied()), "Σ a, m = {m}");
            assert_eq!(bits(column_sums(c1.view())), bits(sc.iter().copied()), "Σ c, m = {m}");
            let sparse = Sparse::of(&a1, &c1);
            let from_sums = Sparse::from_sums(&(sa, sc), m);
            assert_eq!(bits(sparse.rho_hat), bits(from_sums.rho_hat));
            assert_eq!(bits(sparse.rho_hat_complement), bits(from_sums.rho_hat_complement));

            let kl = Array1::from_shape_fn(k, |j| val(1, j, 3));
            let delta = Array2::from_shape_fn((m, k), |(i, j)| val(i, j, 4));
            let mut d1 = delta.clone();
            times_sigmoid_derivative(&mut d1, a1.view(), c1.view(), &kl);
            let mut d2 = delta.clone();
            let s2 = times_sigmoid_derivative_sums(&mut d2, a1.view(), c1.view(), &kl);
            assert_eq!(bits(d1.iter().copied()), bits(d2.iter().copied()));
            assert_eq!(bits(column_sums(d1.view())), bits(s2), "Σ δ hidden, m = {m}");

            let y = Array2::from_shape_fn((m, k), |(i, j)| val(i, j, 5).abs() / F::of(4.0));
            for act in [Activation::Sigmoid, Activation::Identity, Activation::Tanh] {
                let (j1, e1) = squared_error_delta(a1.clone(), y.view(), act);
                let (j2, e2, s) = squared_error_delta_sums(a1.clone(), y.view(), act);
                assert_eq!(j1.to_bits(), j2.to_bits(), "J, m = {m}, {act:?}");
                assert_eq!(bits(e1.iter().copied()), bits(e2.iter().copied()));
                assert_eq!(bits(column_sums(e1.view())), bits(s), "Σ δ out, m = {m}, {act:?}");
            }
        }
        for m in [1, SUM_BLOCK_ROWS, 2 * SUM_BLOCK_ROWS + 77] {
            check::<f32>(m);
            check::<f64>(m);
        }
    }

    /// The AVX2 and AVX-512F builds of the sweeps give the same bits as the baseline build, for
    /// every activation and both precisions, on a row long enough for vector loops and tails.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn wide_sweeps_equal_the_baseline_bit_for_bit() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            eprintln!("this CPU has no AVX2: only the baseline sweep runs here");
            return;
        }
        fn check<F: Real>() {
            let z: Vec<F> = (0..1003).map(|i| F::of(((i * 7919) % 2001) as f64 / 20.0 - 50.0)).collect();
            let b: Vec<F> = (0..1003).map(|i| F::of(((i * 31) % 17) as f64 / 8.0 - 1.0)).collect();
            for act in [Activation::Sigmoid, Activation::Tanh, Activation::Relu, Activation::LeakyRelu { alpha: 0.01 }]
            {
                let f = move |v: F| activate(act, v);
                let (mut plain, mut wide) = (z.clone(), z.clone());
                row_sweep_plain(&mut plain, &b, f);
                // SAFETY: AVX2 was detected above.
                unsafe { row_sweep_avx2(&mut wide, &b, f) };
                let same = plain.iter().zip(&wide).all(|(p, w)| p.f64().to_bits() == w.f64().to_bits());
                assert!(same, "{} {act:?}: the AVX2 sweep differs from the baseline", F::NAME);
                if std::arch::is_x86_feature_detected!("avx512f") {
                    let mut widest = z.clone();
                    // SAFETY: AVX-512F was detected just above.
                    unsafe { row_sweep_avx512(&mut widest, &b, f) };
                    let same = plain.iter().zip(&widest).all(|(p, w)| p.f64().to_bits() == w.f64().to_bits());
                    assert!(same, "{} {act:?}: the AVX-512 sweep differs from the baseline", F::NAME);
                }
            }
            let (mut z_plain, mut c_plain) = (z.clone(), z.clone());
            pair_row_plain(&mut z_plain, &mut c_plain, &b);
            let bits = |v: &[F]| v.iter().map(|x| x.f64().to_bits()).collect::<Vec<_>>();
            let (mut z_wide, mut c_wide) = (z.clone(), z.clone());
            // SAFETY: AVX2 was detected above.
            unsafe { pair_row_avx2(&mut z_wide, &mut c_wide, &b) };
            assert_eq!((bits(&z_plain), bits(&c_plain)), (bits(&z_wide), bits(&c_wide)), "{} AVX2 pair sweep", F::NAME);
            if std::arch::is_x86_feature_detected!("avx512f") {
                let (mut z_wide, mut c_wide) = (z.clone(), z.clone());
                // SAFETY: AVX-512F was detected just above.
                unsafe { pair_row_avx512(&mut z_wide, &mut c_wide, &b) };
                let same = (bits(&z_plain), bits(&c_plain)) == (bits(&z_wide), bits(&c_wide));
                assert!(same, "{} AVX-512 pair sweep", F::NAME);
            }
        }
        check::<f32>();
        check::<f64>();

        let a: Vec<f32> = (0..1003).map(|i| ((i * 37) % 101) as f32 / 101.0).collect();
        let y: Vec<f32> = (0..1003).map(|i| ((i * 53) % 97) as f32 / 97.0).collect();
        let (mut d_plain, mut d_wide) = (a.clone(), a.clone());
        let fp = |a: f32| a * (1.0 - a);
        let s_plain = error_row_plain(&mut d_plain, &y, fp);
        // SAFETY: AVX2 was detected above.
        let s_wide = unsafe { error_row_avx2(&mut d_wide, &y, fp) };
        assert_eq!(s_plain.to_bits(), s_wide.to_bits());
        assert_eq!(s_plain.to_bits(), squares_row(&a, &y).to_bits(), "cost without the delta sums differently");
        assert!(d_plain.iter().zip(&d_wide).all(|(p, w)| p.to_bits() == w.to_bits()));
        if std::arch::is_x86_feature_detected!("avx512f") {
            let mut d_widest = a.clone();
            // SAFETY: AVX-512F was detected just above.
            let s_widest = unsafe { error_row_avx512(&mut d_widest, &y, fp) };
            assert_eq!(s_plain.to_bits(), s_widest.to_bits(), "AVX-512 error sums");
            assert!(d_plain.iter().zip(&d_widest).all(|(p, w)| p.to_bits() == w.to_bits()), "AVX-512 deltas");
        } else {
            eprintln!("this CPU has no AVX-512F: the AVX-512 builds were not compared");
        }
        let direct: f64 = a.iter().zip(&y).map(|(&a, &y)| ((a - y) as f64).powi(2)).sum();
        assert!((s_plain - direct).abs() <= 1e-12 * direct, "lane sums {s_plain} vs in order {direct}");
    }
}
