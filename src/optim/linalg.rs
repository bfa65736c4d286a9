//! The few vector operations the optimizers need, on plain slices.
//!
//! The full-batch optimizers (L-BFGS above all) run these on vectors of |θ| values between
//! evaluations, single-threaded while the backend's threads wait: a 784-196 autoencoder's θ
//! has 308,000 values, and L-BFGS's two-loop recursion reads 2m of them per iteration. So the
//! sums here are blocked and SIMD-friendly, and long vectors are split over the thread pool:
//!
//! - a sum runs over fixed blocks of [`BLOCK`] values; inside a block, [`LANES`] running sums
//!   (lane j takes the values at j, j + LANES, …), added at the end in a fixed tree; the blocks'
//!   sums are added in block order. The bits depend only on the length — never on the number
//!   of threads or on which thread took which block.
//! - element-wise updates (y ← y + αx) are split the same way and have no order to keep.
//!
//! Compared with a plain left-to-right sum, the blocked sum has a smaller rounding error
//! bound (each partial sum is shorter), so results move in their last bits only.

use rayon::prelude::*;

/// Values per block: long vectors are split into blocks of this many values, summed in
/// parallel and then in block order.
pub const BLOCK: usize = 1 << 15;

/// Running sums per block (a multiple of the widest SIMD register's f64 lanes, so the
/// compiler keeps them in registers).
pub const LANES: usize = 8;

/// Σ f(aᵢ, bᵢ) over one block, in LANES running sums added in a fixed tree.
#[inline]
fn block_sum(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (ha, ta) = a.split_at(a.len() - a.len() % LANES);
    let (hb, tb) = b.split_at(ha.len());
    for (ca, cb) in ha.chunks_exact(LANES).zip(hb.chunks_exact(LANES)) {
        for j in 0..LANES {
            acc[j] += f(ca[j], cb[j]);
        }
    }
    for (j, (&x, &y)) in ta.iter().zip(tb).enumerate() {
        acc[j] += f(x, y);
    }
    let quads = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
    (quads[0] + quads[2]) + (quads[1] + quads[3])
}

/// Σ f(aᵢ, bᵢ): blocks in parallel, block sums added in block order.
fn blocked_sum(a: &[f64], b: &[f64], f: impl Fn(f64, f64) -> f64 + Sync) -> f64 {
    assert_eq!(a.len(), b.len(), "vectors of different lengths");
    if a.len() <= BLOCK {
        return block_sum(a, b, f);
    }
    let sums: Vec<f64> = a.par_chunks(BLOCK).zip(b.par_chunks(BLOCK)).map(|(x, y)| block_sum(x, y, &f)).collect();
    sums.iter().sum()
}

/// aᵀb
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    blocked_sum(a, b, |x, y| x * y)
}

/// ‖a‖₂
pub fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// ‖a‖∞
pub fn norm_inf(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, x| m.max(x.abs()))
}

/// ‖a‖₁
pub fn norm_l1(a: &[f64]) -> f64 {
    blocked_sum(a, a, |x, _| x.abs())
}

/// y ← y + αx
pub fn axpy(alpha: f64, x: &[f64], y: &mut [f64]) {
    assert_eq!(x.len(), y.len(), "vectors of different lengths");
    let run = |y: &mut [f64], x: &[f64]| {
        for (yi, &xi) in y.iter_mut().zip(x) {
            *yi += alpha * xi;
        }
    };
    if y.len() <= BLOCK {
        run(y, x);
    } else {
        y.par_chunks_mut(BLOCK).zip(x.par_chunks(BLOCK)).for_each(|(y, x)| run(y, x));
    }
}

/// y ← y + αx, then gives (the new y)ᵀz — in one pass over the three vectors, with the bits
/// of `axpy` followed by `dot`.
pub fn axpy_dot(alpha: f64, x: &[f64], y: &mut [f64], z: &[f64]) -> f64 {
    assert!(x.len() == y.len() && y.len() == z.len(), "vectors of different lengths");
    let run = |x: &[f64], y: &mut [f64], z: &[f64]| {
        for (yi, &xi) in y.iter_mut().zip(x) {
            *yi += alpha * xi;
        }
        block_sum(y, z, |a, b| a * b)
    };
    if y.len() <= BLOCK {
        return run(x, y, z);
    }
    let sums: Vec<f64> = x
        .par_chunks(BLOCK)
        .zip(y.par_chunks_mut(BLOCK))
        .zip(z.par_chunks(BLOCK))
        .map(|((x, y), z)| run(x, y, z))
        .collect();
    sums.iter().sum()
}

/// True when a directional derivative says the direction goes downhill (false for NaN).
pub fn descends(slope: f64) -> bool {
    slope < 0.0
}

pub fn all_finite(a: &[f64]) -> bool {
    a.iter().all(|x| x.is_finite())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lengths around the lane and block boundaries, filled with values whose sums round.
    fn vectors(n: usize) -> (Vec<f64>, Vec<f64>) {
        let a = (0..n).map(|i| ((i * 7919) % 1009) as f64 / 97.0 - 5.0).collect();
        let b = (0..n).map(|i| ((i * 104_729) % 997) as f64 / 89.0 - 5.5).collect();
        (a, b)
    }

    #[test]
    fn dot_is_the_sum_of_products_to_rounding() {
        for n in [0, 1, 7, 8, 9, 1000, BLOCK - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 5] {
            let (a, b) = vectors(n);
            let exact: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let bound = 1e-12 * a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum::<f64>().max(1.0);
            assert!((dot(&a, &b) - exact).abs() <= bound, "n = {n}");
        }
    }

    #[test]
    fn sums_do_not_depend_on_the_thread_count() {
        let (a, b) = vectors(5 * BLOCK + 3);
        let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let three = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
        let d1 = one.install(|| dot(&a, &b));
        let d3 = three.install(|| dot(&a, &b));
        assert_eq!(d1.to_bits(), d3.to_bits());
        let (mut y1, mut y3) = (b.clone(), b.clone());
        let f1 = one.install(|| axpy_dot(-0.37, &a, &mut y1, &a));
        let f3 = three.install(|| axpy_dot(-0.37, &a, &mut y3, &a));
        assert_eq!(f1.to_bits(), f3.to_bits());
        assert_eq!(y1, y3);
    }

    #[test]
    fn axpy_dot_is_axpy_then_dot() {
        for n in [5, BLOCK + 9, 2 * BLOCK] {
            let (a, b) = vectors(n);
            let (mut y1, mut y2) = (b.clone(), b.clone());
            axpy(0.61, &a, &mut y1);
            let separate = dot(&y1, &a);
            let fused = axpy_dot(0.61, &a, &mut y2, &a);
            assert_eq!(y1, y2);
            assert_eq!(separate.to_bits(), fused.to_bits(), "n = {n}");
        }
    }

    #[test]
    fn norms() {
        let a = [3.0, -4.0];
        assert_eq!(norm(&a), 5.0);
        assert_eq!(norm_l1(&a), 7.0);
        assert_eq!(norm_inf(&a), 4.0);
    }
}
