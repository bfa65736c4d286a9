//! C ← α·op(A)·op(B) + β·C, the one matrix product of the CPU backend.
//!
//! By default it goes through the `gemm` crate (pure Rust, packed panels, kernels picked at
//! run time for AVX-512 / AVX2+FMA / SSE / NEON, threaded on rayon's pool): on the 2-core
//! Zen 4 of BENCHMARKS.md it runs the autoencoder's products at ~170–190 GFLOP/s against
//! matrixmultiply's 130–185, the weight gradient gaining most. With `--features blas` the
//! product goes through ndarray to the system's OpenBLAS instead. Operands may have any
//! strides (a transposed view costs nothing); the result is the same bits on every call with
//! the same shapes, so training stays reproducible.

use ndarray::{ArrayView2, ArrayViewMut2};

use super::Real;

/// C ← α·A·B + β·C with A m×k, B k×n, C m×n (panics on mismatched shapes, like ndarray's
/// `general_mat_mul`). With β = 0 the old contents of C are never read, so C may hold
/// anything (NaN included) on entry.
pub fn gemm<F: Real>(alpha: F, a: &ArrayView2<F>, b: &ArrayView2<F>, beta: F, c: &mut ArrayViewMut2<F>) {
    let ((m, k), (k2, n)) = (a.dim(), b.dim());
    assert!(k == k2 && c.dim() == (m, n), "gemm: {m}×{k} times {k2}×{n} into {:?}", c.dim());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || alpha == F::zero() {
        if beta == F::zero() {
            c.fill(F::zero());
        } else {
            c.mapv_inplace(|v| v * beta);
        }
        return;
    }
    product(alpha, a, b, beta, c);
}

/// As [`gemm()`], on the calling thread alone: for the many small products of a loop that is
/// itself split over threads (one product per image of a convolution), where splitting each
/// product again would only add hand-offs. The same bits as [`gemm()`] for the same operands.
pub fn gemm_serial<F: Real>(alpha: F, a: &ArrayView2<F>, b: &ArrayView2<F>, beta: F, c: &mut ArrayViewMut2<F>) {
    let ((m, k), (k2, n)) = (a.dim(), b.dim());
    assert!(k == k2 && c.dim() == (m, n), "gemm: {m}×{k} times {k2}×{n} into {:?}", c.dim());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 || alpha == F::zero() {
        if beta == F::zero() {
            c.fill(F::zero());
        } else {
            c.mapv_inplace(|v| v * beta);
        }
        return;
    }
    #[cfg(not(feature = "blas"))]
    serial_or_crate_threads(alpha, a, b, beta, c, gemm::Parallelism::None);
    #[cfg(feature = "blas")]
    product(alpha, a, b, beta, c);
}

/// Products below this many multiply-adds run on one thread (waking a second costs more).
#[cfg(not(feature = "blas"))]
const SERIAL_BELOW: usize = 1 << 18;

/// The narrowest part of C, in rows or columns, handed to a thread. Over 64 for the bits as
/// well as for speed: the crate runs a product whose sides are both ≤ 64 with another depth
/// blocking (k in blocks of 512 instead of its cache-derived ones), so a part that thin
/// would sum its elements in another order than the whole product does.
#[cfg(not(feature = "blas"))]
const MIN_PART: usize = 65;

/// Splits C along its longer side into one contiguous part per thread (sizes differing by at
/// most one), each part a single-threaded product. On the autoencoder's weight gradients
/// (196×784 and 784×196 over 10,000 rows) this runs at ~185 GFLOP/s where the crate's own
/// threading gives ~160; the other shapes gain 0–5% (BENCHMARKS.md). The crate's depth
/// blocking depends only on k and the caches once a side is over 64, so each element is summed
/// in the same order however C is split: the bits do not depend on the number of threads
/// (tested below and in tests/cpu_backend.rs).
#[cfg(not(feature = "blas"))]
fn product<F: Real>(alpha: F, a: &ArrayView2<F>, b: &ArrayView2<F>, beta: F, c: &mut ArrayViewMut2<F>) {
    use ndarray::Axis;
    use rayon::prelude::*;

    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    let threads = rayon::current_num_threads();
    if m * n * k < SERIAL_BELOW || threads < 2 {
        return serial_or_crate_threads(alpha, a, b, beta, c, gemm::Parallelism::None);
    }
    let long = m.max(n);
    if long / MIN_PART < threads {
        // Too thin to split by hand: the crate splits inside the panels.
        return serial_or_crate_threads(alpha, a, b, beta, c, gemm::Parallelism::Rayon(threads));
    }
    // Part i covers [i·long/threads, (i+1)·long/threads): every part at least MIN_PART long.
    let axis = if m >= n { Axis(0) } else { Axis(1) };
    let mut parts = Vec::with_capacity(threads);
    let (mut c_rest, mut operand_rest) = (c.view_mut(), if m >= n { a.view() } else { b.view() });
    for i in (1..threads).rev() {
        let cut = i * long / threads;
        let (c_head, c_part) = c_rest.split_at(axis, cut);
        let (o_head, o_part) = operand_rest.split_at(axis, cut);
        parts.push((c_part, o_part));
        (c_rest, operand_rest) = (c_head, o_head);
    }
    parts.push((c_rest, operand_rest));
    parts.into_par_iter().for_each(|(mut c, operand)| {
        let (a, b) = if m >= n { (operand, b.view()) } else { (a.view(), operand) };
        serial_or_crate_threads(alpha, &a, &b, beta, &mut c, gemm::Parallelism::None)
    });
}

#[cfg(not(feature = "blas"))]
fn serial_or_crate_threads<F: Real>(
    alpha: F,
    a: &ArrayView2<F>,
    b: &ArrayView2<F>,
    beta: F,
    c: &mut ArrayViewMut2<F>,
    parallelism: gemm::Parallelism,
) {
    let (m, k, n) = (a.nrows(), a.ncols(), b.ncols());
    let ([a_rs, a_cs], [b_rs, b_cs], [c_rs, c_cs]) = (strides(a.strides()), strides(b.strides()), strides(c.strides()));
    // The crate's names are the other way round: dst ← alpha·dst + beta·lhs·rhs.
    let read_c = beta != F::zero();
    // SAFETY: each pointer is the first element of a live view whose every element lies at
    // row·row_stride + column·column_stride from it for the dimensions passed (ndarray's
    // invariant); C is borrowed mutably, so nothing else aliases it, and A and B are only read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_cs,
            c_rs,
            read_c,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(not(feature = "blas"))]
fn strides(s: &[isize]) -> [isize; 2] {
    [s[0], s[1]]
}

#[cfg(feature = "blas")]
fn product<F: Real>(alpha: F, a: &ArrayView2<F>, b: &ArrayView2<F>, beta: F, c: &mut ArrayViewMut2<F>) {
    ndarray::linalg::general_mat_mul(alpha, a, b, beta, c);
}

#[cfg(test)]
mod tests {
    use ndarray::{Array2, ShapeBuilder, s};

    use super::*;

    /// The product in plain f64 loops, the reference for every stride pattern below.
    fn naive(alpha: f64, a: &ArrayView2<f64>, b: &ArrayView2<f64>, beta: f64, c: &Array2<f64>) -> Array2<f64> {
        Array2::from_shape_fn(c.dim(), |(i, j)| {
            alpha * (0..a.ncols()).map(|p| a[[i, p]] * b[[p, j]]).sum::<f64>() + beta * c[[i, j]]
        })
    }

    fn filled(rows: usize, cols: usize, seed: usize) -> Array2<f64> {
        Array2::from_shape_fn((rows, cols), |(i, j)| (((i * 31 + j * 17 + seed * 7) % 23) as f64 - 11.0) / 7.0)
    }

    /// Row-major, transposed, column-major and sliced-with-a-step operands, awkward sizes,
    /// α and β both used; β = 0 must ignore a C full of NaN.
    #[test]
    fn matches_the_naive_product_for_every_layout() {
        for &(m, k, n) in &[(1, 1, 1), (3, 5, 2), (17, 1, 9), (65, 33, 130), (7, 300, 1), (129, 64, 257)] {
            let a = filled(m, k, 1);
            let a_t = filled(k, m, 2).reversed_axes(); // m×k, column-major
            let b = filled(k, n, 3);
            let b_t = filled(n, k, 4);
            let b_wide = filled(k, 2 * n, 5);
            let b_step = b_wide.slice(s![.., ..;2]); // k×n, column stride 2
            let c0 = filled(m, n, 6);
            for (a, b) in [(a.view(), b.view()), (a_t.view(), b_t.t()), (a.view(), b_step), (a_t.view(), b.view())] {
                let mut c = c0.clone();
                gemm(0.5, &a, &b, -2.0, &mut c.view_mut());
                let want = naive(0.5, &a, &b, -2.0, &c0);
                let err = (&c - &want).iter().fold(0.0f64, |e, v| e.max(v.abs()));
                assert!(err < 1e-12, "{m}×{k}×{n}: max error {err}");

                let mut nan = Array2::from_elem((m, n).f(), f64::NAN);
                gemm(1.0, &a, &b, 0.0, &mut nan.view_mut());
                let want = naive(1.0, &a, &b, 0.0, &c0);
                let err = (&nan - &want).iter().fold(0.0f64, |e, v| e.max(v.abs()));
                assert!(err < 1e-12, "{m}×{k}×{n} with β = 0 into NaN: max error {err}");
            }
        }
    }

    /// f32 against the f64 product of the same values, and the same bits on every call.
    #[test]
    fn f32_is_close_to_f64_and_repeatable() {
        let (m, k, n) = (300, 784, 196);
        let a = filled(m, k, 1);
        let w = filled(n, k, 2);
        let (a32, w32) = (a.mapv(|v| v as f32), w.mapv(|v| v as f32));
        let mut c32 = Array2::<f32>::zeros((m, n));
        gemm(1.0, &a32.view(), &w32.t(), 0.0, &mut c32.view_mut());
        let first = c32.clone();
        for _ in 0..3 {
            gemm(1.0, &a32.view(), &w32.t(), 0.0, &mut c32.view_mut());
            assert!(first.iter().zip(&c32).all(|(x, y)| x.to_bits() == y.to_bits()), "gemm is not repeatable");
        }
        let want = a.dot(&w.t());
        let scale = want.iter().fold(0.0f64, |s, v| s.max(v.abs()));
        let err = c32.iter().zip(&want).fold(0.0f64, |e, (&x, &y)| e.max((x as f64 - y).abs()));
        assert!(err < 1e-5 * scale * (k as f64).sqrt(), "f32 error {err} against scale {scale}");
    }

    /// One thread, two, three and the crate's own threading give the same bits: the split of
    /// C never changes the order in which an element is summed.
    #[test]
    #[cfg(not(feature = "blas"))]
    fn the_bits_do_not_depend_on_the_number_of_threads() {
        // The autoencoder's forward, weight-gradient and input-delta forms, at a tenth of the
        // rows; and 64 × 196 and 64 × 192 weight gradients, whose parts at 3 threads must each
        // stay over 64 wide (a part of 64 is summed in another order).
        let shapes = [
            (1000, 784, 196, false, true),
            (196, 1000, 784, true, false),
            (784, 1000, 196, true, false),
            (64, 1500, 196, true, false),
            (64, 1500, 192, true, false),
        ];
        for (m, k, n, ta, tb) in shapes {
            let a = if ta { filled(k, m, 1).reversed_axes() } else { filled(m, k, 1) }.mapv(|v| v as f32);
            let b = if tb { filled(n, k, 2).reversed_axes() } else { filled(k, n, 2) }.mapv(|v| v as f32);
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut c = Array2::<f32>::from_elem((m, n), f32::NAN);
                pool.install(|| gemm(0.25, &a.view(), &b.view(), 0.0, &mut c.view_mut()));
                c
            };
            let one = run(1);
            for threads in [2, 3, 64] {
                let many = run(threads);
                let same = one.iter().zip(&many).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{m}×{k}×{n}: {threads} threads sum differently from one");
            }
        }
    }

    /// Empty depth gives β·C; an empty output is left alone.
    #[test]
    fn empty_shapes() {
        let a = Array2::<f64>::zeros((3, 0));
        let b = Array2::<f64>::zeros((0, 2));
        let mut c = Array2::from_elem((3, 2), 4.0);
        gemm(1.0, &a.view(), &b.view(), 0.5, &mut c.view_mut());
        assert!(c.iter().all(|&v| v == 2.0));
        gemm(1.0, &a.view(), &b.view(), 0.0, &mut c.view_mut());
        assert!(c.iter().all(|&v| v == 0.0));
    }
}
