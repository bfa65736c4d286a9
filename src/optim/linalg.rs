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
    lane_tree(&acc)
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
    // One loop per block: each yᵢ is updated and multiplied by zᵢ while in a register, fed to
    // the LANES running sums in block_sum's order (the bits of axpy followed by dot).
    let run = |x: &[f64], y: &mut [f64], z: &[f64]| {
        let mut acc = [0.0f64; LANES];
        let full = n_full(y.len());
        for ((cx, cy), cz) in
            x[..full].chunks_exact(LANES).zip(y[..full].chunks_exact_mut(LANES)).zip(z[..full].chunks_exact(LANES))
        {
            for j in 0..LANES {
                cy[j] += alpha * cx[j];
                acc[j] += cy[j] * cz[j];
            }
        }
        for (j, ((yi, &xi), &zi)) in y[full..].iter_mut().zip(&x[full..]).zip(&z[full..]).enumerate() {
            *yi += alpha * xi;
            acc[j] += *yi * zi;
        }
        lane_tree(&acc)
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

/// Adds per-block sums in block order, as [`blocked_sum`] does.
fn in_block_order(sums: &[f64]) -> f64 {
    sums.iter().sum()
}

/// d ← −g, then gives zᵀd — one pass, with the bits of the negation followed by
/// [`dot`]`(z, d)`.
pub fn negate_dot(g: &[f64], d: &mut [f64], z: &[f64]) -> f64 {
    assert!(g.len() == d.len() && d.len() == z.len(), "vectors of different lengths");
    let run = |g: &[f64], d: &mut [f64], z: &[f64]| {
        for (di, &gi) in d.iter_mut().zip(g) {
            *di = -gi;
        }
        block_sum(z, d, |a, b| a * b)
    };
    if d.len() <= BLOCK {
        return run(g, d, z);
    }
    let sums: Vec<f64> = g
        .par_chunks(BLOCK)
        .zip(d.par_chunks_mut(BLOCK))
        .zip(z.par_chunks(BLOCK))
        .map(|((g, d), z)| run(g, d, z))
        .collect();
    in_block_order(&sums)
}

/// d ← γd, then gives zᵀd — one pass, with the bits of the scaling followed by
/// [`dot`]`(z, d)`.
pub fn scale_dot(gamma: f64, d: &mut [f64], z: &[f64]) -> f64 {
    assert_eq!(d.len(), z.len(), "vectors of different lengths");
    let run = |d: &mut [f64], z: &[f64]| {
        d.iter_mut().for_each(|di| *di *= gamma);
        block_sum(z, d, |a, b| a * b)
    };
    if d.len() <= BLOCK {
        return run(d, z);
    }
    let sums: Vec<f64> = d.par_chunks_mut(BLOCK).zip(z.par_chunks(BLOCK)).map(|(d, z)| run(d, z)).collect();
    in_block_order(&sums)
}

/// x ← x₀ + αd, element by element (split over the thread pool for long vectors).
pub fn point_along(x: &mut [f64], x0: &[f64], alpha: f64, d: &[f64]) {
    assert!(x.len() == x0.len() && x.len() == d.len(), "vectors of different lengths");
    let run = |x: &mut [f64], x0: &[f64], d: &[f64]| {
        for ((xi, &x0i), &di) in x.iter_mut().zip(x0).zip(d) {
            *xi = x0i + alpha * di;
        }
    };
    if x.len() <= BLOCK {
        return run(x, x0, d);
    }
    x.par_chunks_mut(BLOCK).zip(x0.par_chunks(BLOCK)).zip(d.par_chunks(BLOCK)).for_each(|((x, x0), d)| run(x, x0, d));
}

/// y ← x (split over the thread pool for long vectors).
pub fn copy(x: &[f64], y: &mut [f64]) {
    assert_eq!(x.len(), y.len(), "vectors of different lengths");
    if y.len() <= BLOCK {
        return y.copy_from_slice(x);
    }
    y.par_chunks_mut(BLOCK).zip(x.par_chunks(BLOCK)).for_each(|(y, x)| y.copy_from_slice(x));
}

/// gᵀd when every gᵢ is finite, else `None` — one pass, with the bits of [`all_finite`]
/// followed by [`dot`]`(g, d)`.
pub fn dot_if_finite(g: &[f64], d: &[f64]) -> Option<f64> {
    assert_eq!(g.len(), d.len(), "vectors of different lengths");
    let run = |g: &[f64], d: &[f64]| all_finite(g).then(|| block_sum(g, d, |a, b| a * b));
    if g.len() <= BLOCK {
        return run(g, d);
    }
    let sums: Option<Vec<f64>> = g.par_chunks(BLOCK).zip(d.par_chunks(BLOCK)).map(|(g, d)| run(g, d)).collect();
    sums.map(|s| in_block_order(&s))
}

/// s ← αd and y ← g − g_old, then gives (yᵀs, yᵀy) — one pass over the five vectors, with
/// the bits of the two element-wise formulas followed by [`dot`]`(y, s)` and [`dot`]`(y, y)`:
/// an L-BFGS correction pair and the two products its curvature test needs. The reference
/// for [`correction_pair_restart`], which L-BFGS runs.
#[cfg(test)]
pub fn correction_pair(alpha: f64, d: &[f64], g: &[f64], g_old: &[f64], s: &mut [f64], y: &mut [f64]) -> (f64, f64) {
    let n = d.len();
    assert!(g.len() == n && g_old.len() == n && s.len() == n && y.len() == n, "vectors of different lengths");
    let run = |d: &[f64], g: &[f64], g_old: &[f64], s: &mut [f64], y: &mut [f64]| {
        for (si, &di) in s.iter_mut().zip(d) {
            *si = alpha * di;
        }
        for ((yi, &a), &b) in y.iter_mut().zip(g).zip(g_old) {
            *yi = a - b;
        }
        (block_sum(y, s, |a, b| a * b), block_sum(y, y, |a, b| a * b))
    };
    if n <= BLOCK {
        return run(d, g, g_old, s, y);
    }
    let sums: Vec<(f64, f64)> = d
        .par_chunks(BLOCK)
        .zip(g.par_chunks(BLOCK))
        .zip(g_old.par_chunks(BLOCK))
        .zip(s.par_chunks_mut(BLOCK))
        .zip(y.par_chunks_mut(BLOCK))
        .map(|((((d, g), g_old), s), y)| run(d, g, g_old, s, y))
        .collect();
    let (ys, yy): (Vec<f64>, Vec<f64>) = sums.into_iter().unzip();
    (in_block_order(&ys), in_block_order(&yy))
}

/// What [`correction_pair_restart`] computes besides the vectors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairRestart {
    /// yᵀs, the new pair's curvature.
    pub ys: f64,
    /// yᵀy (the initial Hessian's scale γ = sᵀy/yᵀy needs it).
    pub yy: f64,
    /// sᵀd with d = −g: the first product of the next two-loop recursion, if the pair is kept.
    pub sd: f64,
    /// gᵀg = ‖g‖₂².
    pub gg: f64,
}

/// The end of an L-BFGS iteration and the start of the next in one pass over the six
/// vectors: the correction pair s ← αd and y ← g − g_old, then d ← −g (where the two-loop
/// recursion starts). Gives (yᵀs, yᵀy, sᵀd, gᵀg) with the bits of `correction_pair` (s, y, yᵀs, yᵀy),
/// then [`negate_dot`]`(g, d, s)` and [`dot`]`(g, g)`: every sum runs in the lanes and
/// blocks of [`blocked_sum`], element by element in the same order, so only the number of
/// passes changes (one instead of three).
pub fn correction_pair_restart(
    alpha: f64,
    d: &mut [f64],
    g: &[f64],
    g_old: &[f64],
    s: &mut [f64],
    y: &mut [f64],
) -> PairRestart {
    let n = d.len();
    assert!(g.len() == n && g_old.len() == n && s.len() == n && y.len() == n, "vectors of different lengths");
    let run = |d: &mut [f64], g: &[f64], g_old: &[f64], s: &mut [f64], y: &mut [f64]| -> [f64; 4] {
        // Four sets of LANES running sums, fed as block_sum feeds its one set.
        let mut acc = [[0.0f64; LANES]; 4];
        let mut step = |j: usize, d: &mut f64, g: f64, g_old: f64, s: &mut f64, y: &mut f64| {
            *s = alpha * *d;
            *y = g - g_old;
            *d = -g;
            acc[0][j] += *y * *s;
            acc[1][j] += *y * *y;
            acc[2][j] += *s * *d;
            acc[3][j] += g * g;
        };
        let full = n_full(d.len());
        for ((((cd, cg), cg_old), cs), cy) in d[..full]
            .chunks_exact_mut(LANES)
            .zip(g[..full].chunks_exact(LANES))
            .zip(g_old[..full].chunks_exact(LANES))
            .zip(s[..full].chunks_exact_mut(LANES))
            .zip(y[..full].chunks_exact_mut(LANES))
        {
            for j in 0..LANES {
                step(j, &mut cd[j], cg[j], cg_old[j], &mut cs[j], &mut cy[j]);
            }
        }
        for j in 0..d.len() - full {
            let i = full + j;
            step(j, &mut d[i], g[i], g_old[i], &mut s[i], &mut y[i]);
        }
        acc.map(|a| lane_tree(&a))
    };
    if n <= BLOCK {
        let [ys, yy, sd, gg] = run(d, g, g_old, s, y);
        return PairRestart { ys, yy, sd, gg };
    }
    let sums: Vec<[f64; 4]> = d
        .par_chunks_mut(BLOCK)
        .zip(g.par_chunks(BLOCK))
        .zip(g_old.par_chunks(BLOCK))
        .zip(s.par_chunks_mut(BLOCK))
        .zip(y.par_chunks_mut(BLOCK))
        .map(|((((d, g), g_old), s), y)| run(d, g, g_old, s, y))
        .collect();
    let total = |k: usize| in_block_order(&sums.iter().map(|b| b[k]).collect::<Vec<_>>());
    PairRestart { ys: total(0), yy: total(1), sd: total(2), gg: total(3) }
}

/// The values of a block that fill whole groups of [`LANES`].
fn n_full(len: usize) -> usize {
    len - len % LANES
}

/// The LANES running sums of a block added in [`block_sum`]'s fixed tree.
#[inline]
fn lane_tree(acc: &[f64; LANES]) -> f64 {
    let quads = [acc[0] + acc[4], acc[1] + acc[5], acc[2] + acc[6], acc[3] + acc[7]];
    (quads[0] + quads[2]) + (quads[1] + quads[3])
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

    /// Each fused pass gives the bits of the passes it replaces, at lengths around the block
    /// boundaries, on one thread and on three.
    #[test]
    fn fused_passes_are_the_separate_passes_bit_for_bit() {
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let pools = [1, 3].map(|t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap());
        for n in [1, 9, BLOCK, BLOCK + 1, 2 * BLOCK + 13] {
            let (a, b) = vectors(n);
            let (z, _) = vectors(n + 3);
            let z = &z[3..];
            for pool in &pools {
                pool.install(|| {
                    let mut d = vec![0.0; n];
                    let fused = negate_dot(&a, &mut d, z);
                    let negated: Vec<f64> = a.iter().map(|x| -x).collect();
                    assert_eq!(bits(&d), bits(&negated));
                    assert_eq!(fused.to_bits(), dot(z, &negated).to_bits(), "negate_dot, n = {n}");

                    let fused = scale_dot(0.37, &mut d, &b);
                    let scaled: Vec<f64> = negated.iter().map(|x| x * 0.37).collect();
                    assert_eq!(bits(&d), bits(&scaled));
                    assert_eq!(fused.to_bits(), dot(&b, &scaled).to_bits(), "scale_dot, n = {n}");

                    // The last step of the two-loop recursion: the slope ∇Jᵀd from axpy_dot.
                    let mut d2 = scaled.clone();
                    axpy(-1.3, &a, &mut d2);
                    assert_eq!(axpy_dot(-1.3, &a, &mut d, &b).to_bits(), dot(&b, &d2).to_bits());

                    let mut x = vec![0.0; n];
                    point_along(&mut x, &a, 1e-3, &b);
                    let along: Vec<f64> = a.iter().zip(&b).map(|(x0, d)| x0 + 1e-3 * d).collect();
                    assert_eq!(bits(&x), bits(&along));
                    let mut y = vec![0.0; n];
                    copy(&x, &mut y);
                    assert_eq!(bits(&y), bits(&x));

                    assert_eq!(dot_if_finite(&a, &b).map(f64::to_bits), Some(dot(&a, &b).to_bits()));
                    let mut bad = a.clone();
                    bad[n - 1] = f64::INFINITY;
                    assert_eq!(dot_if_finite(&bad, &b), None, "n = {n}");
                    bad[n - 1] = f64::NAN;
                    assert_eq!(dot_if_finite(&bad, &b), None, "n = {n}");

                    let (mut s, mut y) = (vec![0.0; n], vec![0.0; n]);
                    let (ys, yy) = correction_pair(0.5, &b, &a, z, &mut s, &mut y);
                    let s_ref: Vec<f64> = b.iter().map(|d| 0.5 * d).collect();
                    let y_ref: Vec<f64> = a.iter().zip(z).map(|(g, g0)| g - g0).collect();
                    assert_eq!((bits(&s), bits(&y)), (bits(&s_ref), bits(&y_ref)));
                    assert_eq!(ys.to_bits(), dot(&y_ref, &s_ref).to_bits(), "yᵀs, n = {n}");
                    assert_eq!(yy.to_bits(), dot(&y_ref, &y_ref).to_bits(), "yᵀy, n = {n}");
                });
            }
        }
    }

    /// The pass that ends an L-BFGS iteration gives the bits of the three passes it replaces
    /// (the correction pair with its two products, d ← −g with (s)ᵀd, ‖g‖²), at lengths
    /// around the lane and block boundaries, on one thread and on three.
    #[test]
    fn the_correction_pair_restart_pass_is_the_separate_passes_bit_for_bit() {
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let pools = [1, 3].map(|t| rayon::ThreadPoolBuilder::new().num_threads(t).build().unwrap());
        for n in [1, 7, 9, BLOCK - 3, BLOCK, BLOCK + 1, 3 * BLOCK + 13] {
            let (g, d0) = vectors(n);
            let (g_old, _) = vectors(n + 5);
            let g_old = &g_old[5..];
            for pool in &pools {
                pool.install(|| {
                    let alpha = 0.73;
                    let (mut s_ref, mut y_ref) = (vec![0.0; n], vec![0.0; n]);
                    let (ys, yy) = correction_pair(alpha, &d0, &g, g_old, &mut s_ref, &mut y_ref);
                    let mut d_ref = vec![f64::NAN; n];
                    let sd = negate_dot(&g, &mut d_ref, &s_ref);
                    let gg = dot(&g, &g);

                    let mut d = d0.clone();
                    let (mut s, mut y) = (vec![f64::NAN; n], vec![f64::NAN; n]);
                    let r = correction_pair_restart(alpha, &mut d, &g, g_old, &mut s, &mut y);
                    assert_eq!((bits(&s), bits(&y), bits(&d)), (bits(&s_ref), bits(&y_ref), bits(&d_ref)), "n = {n}");
                    let got = [r.ys, r.yy, r.sd, r.gg].map(f64::to_bits);
                    assert_eq!(got, [ys, yy, sd, gg].map(f64::to_bits), "yᵀs, yᵀy, sᵀd, gᵀg at n = {n}");
                    assert_eq!(r.gg.sqrt().to_bits(), norm(&g).to_bits());
                });
            }
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
