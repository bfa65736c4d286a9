//! The CPU twins of the wave-2 layer kinds (issue 15, first step: `wgnn::layers`), each
//! proven on its own before the layer stack uses it:
//! - conv2d's fast path (patch matrix + GEMM, col2im) equals the plain f64 reference loops —
//!   f64 to 1e-12 and f32 to 1e-5 relative — forward and backward, on a grid of awkward
//!   shapes (sides 7, 28, 31, non-square, stride 1 and 2, padding 0–2, kernels 1, 3, 5, 1 and
//!   3 channels, batches 1–4, one or several chunks), with NaN-poisoned gradient buffers;
//! - gradient checks in f64 (central differences, ε = 1e-4, relative difference < 1e-9) of
//!   L = ½‖out − t‖² through conv2d (W, b, input), pool2d max and mean (input) and maxout
//!   behind its dense product (W, b, A), on tie-free inputs for the maxes;
//! - hand-computed pooling and maxout values, ties going to the first;
//! - the same bits for 1, 2 and 3 threads on the f32 fast path;
//! - one-line `Error::Shape` refusals naming the layer, for every impossible geometry or array;
//! - outside reference: values and gradients computed by JAX (`lax.conv_general_dilated`,
//!   `lax.reduce_window`, `jax.grad`) in tests/fixtures/layers (made by make_fixtures.py).

use std::path::Path;

use ndarray::{Array1, Array2};
use ndarray_npy::ReadNpyExt;
use rand::{RngExt, SeedableRng, rngs::StdRng, seq::SliceRandom};
use wgnn::Error;
use wgnn::cpu::Real;
use wgnn::gradcheck::{EPSILON, numerical_gradient, relative_difference};
use wgnn::layers::ImageShape;
use wgnn::layers::conv2d::Conv2d;
use wgnn::layers::maxout::Maxout;
use wgnn::layers::pool2d::{Pool2d, PoolKind};

/// (channels, height, width, filters, kernel, stride, padding, images).
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize);

const CONV_GRID: &[ConvCase] = &[
    (1, 7, 7, 2, 3, 1, 0, 1),
    (1, 7, 7, 1, 5, 2, 2, 4),
    (3, 7, 31, 4, 5, 2, 2, 3),
    (1, 28, 28, 3, 5, 1, 0, 2),
    (3, 31, 28, 2, 1, 2, 1, 3),
    (1, 31, 31, 2, 3, 2, 1, 2),
    (3, 28, 7, 3, 3, 1, 2, 1),
    (3, 31, 31, 5, 3, 1, 1, 2),
    (1, 7, 28, 2, 1, 1, 0, 3),
];

fn uniform(rows: usize, cols: usize, rng: &mut StdRng) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(-1.0..1.0))
}

fn conv_of(&(c, h, w, f, k, s, p, _): &ConvCase) -> Conv2d {
    Conv2d::new(ImageShape::new(c, h, w), f, k, s, p).unwrap()
}

/// ‖got − want‖ / ‖want‖ over all values.
fn relative_error<F: Real>(got: impl IntoIterator<Item = F>, want: &[f64]) -> f64 {
    let (mut diff, mut norm, mut count) = (0.0, 0.0, 0);
    for (g, &w) in got.into_iter().zip(want) {
        diff += (g.f64() - w).powi(2);
        norm += w * w;
        count += 1;
    }
    assert_eq!(count, want.len(), "arrays of different sizes");
    if norm == 0.0 { diff.sqrt() } else { (diff / norm).sqrt() }
}

fn values(a: &Array2<f64>) -> Vec<f64> {
    a.iter().copied().collect()
}

/// Parameters, input and δ of one conv case, and the reference's outputs.
struct ConvProblem {
    conv: Conv2d,
    w: Array2<f64>,
    b: Array1<f64>,
    x: Array2<f64>,
    delta: Array2<f64>,
}

impl ConvProblem {
    fn new(case: &ConvCase, seed: u64) -> ConvProblem {
        let conv = conv_of(case);
        let mut rng = StdRng::seed_from_u64(seed);
        let (f, depth) = conv.weight_shape();
        let m = case.7;
        ConvProblem {
            conv,
            w: uniform(f, depth, &mut rng),
            b: Array1::from_shape_simple_fn(f, || rng.random_range(-1.0..1.0)),
            x: uniform(m, conv.input.len(), &mut rng),
            delta: uniform(m, conv.output().len(), &mut rng),
        }
    }

    /// The fast path in `F` with gradient buffers poisoned with NaN: (out, ∇W, ∇b, ∇x).
    fn fast<F: Real>(&self, alpha: f64, chunk: usize) -> (Array2<F>, Array2<F>, Array1<F>, Array2<F>) {
        let cast = |a: &Array2<f64>| a.mapv(F::of);
        let (w, x, delta, b) = (cast(&self.w), cast(&self.x), cast(&self.delta), self.b.mapv(F::of));
        let out = self.conv.forward_in_chunks(w.view(), b.view(), x.view(), chunk).unwrap();
        let mut gw = Array2::from_elem(w.dim(), F::nan());
        let mut gb = Array1::from_elem(b.len(), F::nan());
        let mut gx = Array2::from_elem(x.dim(), F::nan());
        self.conv
            .backward_in_chunks(
                w.view(),
                x.view(),
                delta.view(),
                F::of(alpha),
                gw.view_mut(),
                gb.view_mut(),
                Some(gx.view_mut()),
                chunk,
            )
            .unwrap();
        (out, gw, gb, gx)
    }
}

/// The fast path equals the reference loops, forward and backward, in one chunk (the default
/// for these sizes) and in chunks of one and two images; α scales ∇W and ∇b only.
#[test]
fn conv2d_fast_path_equals_the_f64_reference() {
    let (mut worst64, mut worst32) = (0.0f64, 0.0f64);
    for (n, case) in CONV_GRID.iter().enumerate() {
        let pr = ConvProblem::new(case, n as u64);
        let want_out = pr.conv.forward_reference(pr.w.view(), pr.b.view(), pr.x.view()).unwrap();
        let want = pr.conv.backward_reference(pr.w.view(), pr.x.view(), pr.delta.view()).unwrap();
        let alpha = 1.0 / case.7 as f64;
        let (want_gw, want_gb) = (values(&(&want.weight * alpha)), (&want.bias * alpha).to_vec());
        let name = pr.conv.describe();
        for chunk in [pr.conv.chunk_images(), 1, 2] {
            let (out, gw, gb, gx) = pr.fast::<f64>(alpha, chunk);
            let errors = [
                relative_error(out, &values(&want_out)),
                relative_error(gw, &want_gw),
                relative_error(gb, &want_gb),
                relative_error(gx, &values(&want.input)),
            ];
            assert!(errors.iter().all(|&e| e < 1e-12), "{name}, chunks of {chunk}: f64 errors {errors:?}");
            worst64 = errors.iter().fold(worst64, |w, &e| w.max(e));
        }
        let (out, gw, gb, gx) = pr.fast::<f32>(alpha, 2);
        let errors = [
            relative_error(out, &values(&want_out)),
            relative_error(gw, &want_gw),
            relative_error(gb, &want_gb),
            relative_error(gx, &values(&want.input)),
        ];
        assert!(errors.iter().all(|&e| e < 1e-5), "{name}: f32 errors {errors:?}");
        worst32 = errors.iter().fold(worst32, |w, &e| w.max(e));
    }
    eprintln!("conv2d fast path against the reference: worst relative error f64 {worst64:.2e}, f32 {worst32:.2e}");
}

/// The analytic gradient at `sample` indices of `at` against central differences of `loss`
/// there (all indices when there are few): ‖g − ĝ‖/‖g + ĝ‖.
fn check_at(at: &Array2<f64>, analytic: &[f64], loss: impl Fn(&Array2<f64>) -> f64, rng: &mut StdRng) -> f64 {
    let mut sample: Vec<usize> = (0..at.len()).collect();
    sample.shuffle(rng);
    sample.truncate(60);
    let start: Vec<f64> = sample.iter().map(|&i| at.as_slice().unwrap()[i]).collect();
    let numerical = numerical_gradient(
        |probe: &[f64]| {
            let mut moved = at.clone();
            for (&i, &v) in sample.iter().zip(probe) {
                moved.as_slice_mut().unwrap()[i] = v;
            }
            Ok::<f64, ()>(loss(&moved))
        },
        &start,
        EPSILON,
    )
    .unwrap();
    let analytic: Vec<f64> = sample.iter().map(|&i| analytic[i]).collect();
    relative_difference(&analytic, &numerical)
}

/// ½‖out − t‖² and its δ = out − t.
fn half_squared_error(out: &Array2<f64>, t: &Array2<f64>) -> (f64, Array2<f64>) {
    let r = out - t;
    (0.5 * r.iter().map(|v| v * v).sum::<f64>(), r)
}

/// L = Σ r ⊙ conv(x; W, b) with random r, through the fast f64 path: ∂L/∂W, ∂L/∂b, ∂L/∂x
/// against central differences. (Not ½‖out − t‖²: on the 3×31×31 case that loss is ~10⁴, and
/// its rounding, ~10⁴·10⁻¹⁶ over 2ε, alone puts ∂L/∂x's numerical gradient 1.3e-9 away;
/// Σ r ⊙ out is a few units, and L is linear in each argument, so the central difference is
/// exact up to that rounding.)
#[test]
fn conv2d_gradients_match_central_differences() {
    let mut rng = StdRng::seed_from_u64(77);
    let mut worst = 0.0f64;
    for (n, case) in CONV_GRID.iter().enumerate() {
        let pr = ConvProblem::new(case, 100 + n as u64);
        let (conv, r) = (pr.conv, &pr.delta);
        let loss = |w: &Array2<f64>, b: &Array1<f64>, x: &Array2<f64>| {
            (conv.forward(w.view(), b.view(), x.view()).unwrap() * r).sum()
        };
        let mut gw = Array2::zeros(pr.w.dim());
        let mut gb = Array1::zeros(pr.b.len());
        let mut gx = Array2::zeros(pr.x.dim());
        conv.backward(pr.w.view(), pr.x.view(), r.view(), 1.0, gw.view_mut(), gb.view_mut(), Some(gx.view_mut()))
            .unwrap();
        let b_row = pr.b.clone().insert_axis(ndarray::Axis(0));
        let diffs = [
            check_at(&pr.w, &values(&gw), |w| loss(w, &pr.b, &pr.x), &mut rng),
            check_at(&b_row, &gb.to_vec(), |b| loss(&pr.w, &b.row(0).to_owned(), &pr.x), &mut rng),
            check_at(&pr.x, &values(&gx), |x| loss(&pr.w, &pr.b, x), &mut rng),
        ];
        assert!(diffs.iter().all(|&d| d < 1e-9), "{}: ‖g − ĝ‖/‖g + ĝ‖ for W, b, x = {diffs:?}", conv.describe());
        worst = diffs.iter().fold(worst, |w, &d| w.max(d));
    }
    eprintln!("conv2d: worst ‖g − ĝ‖/‖g + ĝ‖ = {worst:.2e}");
}

/// Distinct values, at least 1e-3 apart, in a random order: no max is within a step ε of a
/// tie.
fn tie_free(rows: usize, cols: usize, rng: &mut StdRng) -> Array2<f64> {
    let mut v: Vec<f64> = (0..rows * cols).map(|i| (i as f64 * 1e-3) - 0.5 * (rows * cols) as f64 * 1e-3).collect();
    v.shuffle(rng);
    Array2::from_shape_vec((rows, cols), v).unwrap()
}

/// (channels, height, width, kind, size, stride, images).
const POOL_GRID: &[(usize, usize, usize, PoolKind, usize, usize, usize)] = &[
    (1, 28, 28, PoolKind::Max, 2, 2, 2),
    (1, 28, 28, PoolKind::Mean, 2, 2, 2),
    (3, 7, 7, PoolKind::Mean, 3, 2, 2),
    (3, 7, 7, PoolKind::Max, 3, 2, 2),
    (3, 31, 31, PoolKind::Max, 3, 2, 1),
    (1, 7, 31, PoolKind::Mean, 1, 1, 3),
    (3, 28, 28, PoolKind::Max, 4, 4, 2),
    (1, 31, 7, PoolKind::Max, 7, 3, 2),
    (1, 31, 7, PoolKind::Mean, 7, 3, 2),
];

/// Max and mean pooling: ∂L/∂x against central differences (overlapping regions included),
/// and f32 against f64.
#[test]
fn pool2d_gradients_match_central_differences_and_f32_matches_f64() {
    let mut rng = StdRng::seed_from_u64(5);
    for &(c, h, w, kind, k, s, m) in POOL_GRID {
        let pool = Pool2d::with_stride(ImageShape::new(c, h, w), kind, k, s).unwrap();
        let x = tie_free(m, pool.input.len(), &mut rng);
        let t = uniform(m, pool.output().len(), &mut rng);
        let loss = |x: &Array2<f64>| half_squared_error(&pool.forward(x.view()).unwrap().out, &t);
        let fwd = pool.forward(x.view()).unwrap();
        assert_eq!(fwd.winners.is_some(), kind == PoolKind::Max, "{}: winners only for max", pool.describe());
        let (_, delta) = loss(&x);
        let gx = pool.backward(delta.view(), fwd.winners.as_ref().map(|w| w.view())).unwrap();
        let diff = check_at(&x, &values(&gx), |x| loss(x).0, &mut rng);
        assert!(diff < 1e-9, "{}: ‖g − ĝ‖/‖g + ĝ‖ = {diff}", pool.describe());
        eprintln!("{}: ‖g − ĝ‖/‖g + ĝ‖ = {diff:.2e}", pool.describe());

        let x32 = x.mapv(|v| v as f32);
        let fwd32 = pool.forward(x32.view()).unwrap();
        assert_eq!(fwd32.winners, fwd.winners, "{}: f32 and f64 pick different winners", pool.describe());
        let out_err = relative_error(fwd32.out.iter().copied(), &values(&fwd.out));
        let delta32 = delta.mapv(|v| v as f32);
        let gx32 = pool.backward(delta32.view(), fwd32.winners.as_ref().map(|w| w.view())).unwrap();
        let grad_err = relative_error(gx32.iter().copied(), &values(&gx));
        assert!(out_err < 1e-6 && grad_err < 1e-6, "{}: f32 errors {out_err}, {grad_err}", pool.describe());
    }
}

/// One 2-channel 4×4 image pooled 2×2 by hand: ties go to the first value in row-major order
/// (the winners say which), mean is Σ/4, and backward sends δ to the winner or δ/4 to all.
#[test]
fn pool2d_by_hand() {
    #[rustfmt::skip]
    let image = [
        1.0, 3.0,   2.0, 2.0,
        3.0, 0.0,   2.0, 2.0,
        -1.0, -2.0, 5.0, 4.0,
        -3.0, -1.0, 4.0, 5.0,
        // channel 1: a constant region and a NaN
        7.0, 7.0,   0.0, f64::NAN,
        7.0, 7.0,   1.0, 0.0,
        0.0, 0.0,   0.0, 0.0,
        0.0, 0.0,   0.0, 0.0,
    ];
    let x = Array2::from_shape_vec((1, 32), image.to_vec()).unwrap();
    let shape = ImageShape::new(2, 4, 4);
    let max = Pool2d::new(shape, PoolKind::Max, 2).unwrap();
    let fwd = max.forward(x.view()).unwrap();
    let out: Vec<f64> = fwd.out.iter().copied().collect();
    assert_eq!(out[0..5], [3.0, 2.0, -1.0, 5.0, 7.0]);
    assert!(out[5].is_nan(), "a NaN in a region must reach the output, got {}", out[5]);
    assert_eq!(out[6..8], [0.0, 0.0]);
    let winners: Vec<u32> = fwd.winners.as_ref().unwrap().iter().copied().collect();
    assert_eq!(winners, [1, 2, 8, 10, 16, 19, 24, 26]);
    let delta = Array2::from_shape_vec((1, 8), (1..=8).map(f64::from).collect()).unwrap();
    let gx = max.backward(delta.view(), fwd.winners.as_ref().map(|w| w.view())).unwrap();
    let mut want = [0.0; 32];
    for (d, &at) in (1..=8).zip(&winners) {
        want[at as usize] += d as f64;
    }
    assert_eq!(gx.as_slice().unwrap(), &want[..]);

    let mean = Pool2d::new(shape, PoolKind::Mean, 2).unwrap();
    let fwd = mean.forward(x.view()).unwrap();
    assert!(fwd.winners.is_none());
    assert_eq!(fwd.out[[0, 0]], 7.0 / 4.0);
    assert_eq!(fwd.out[[0, 3]], 18.0 / 4.0);
    assert_eq!(fwd.out[[0, 4]], 7.0);
    let gx = mean.backward(delta.view(), None).unwrap();
    assert_eq!(gx[[0, 0]], 0.25);
    assert_eq!(gx[[0, 5]], 0.25);
    assert_eq!(gx[[0, 15]], 1.0);
    assert_eq!(gx[[0, 31]], 2.0);
}

/// Units of 1, 2 and 4 pieces behind the dense product z = A Wᵀ + b: ∂L/∂W, ∂L/∂b and ∂L/∂A
/// (the dense layer's gradients of maxout's ∂L/∂z) against central differences.
#[test]
fn maxout_gradients_match_central_differences() {
    let mut rng = StdRng::seed_from_u64(9);
    for (inputs, units, pieces, m) in [(5, 3, 2, 4), (7, 2, 4, 3), (3, 4, 1, 2), (6, 1, 3, 5)] {
        let layer = Maxout::new(units, pieces).unwrap();
        // Tie-free pieces: W's rows far apart, so no two pieces of a unit are within ε.
        let w = tie_free(layer.piece_count(), inputs, &mut rng) * 10.0;
        let b_row = tie_free(1, layer.piece_count(), &mut rng);
        let a = uniform(m, inputs, &mut rng);
        let t = uniform(m, units, &mut rng);
        let z_of = |w: &Array2<f64>, b: &Array2<f64>, a: &Array2<f64>| a.dot(&w.t()) + b;
        let loss = |w: &Array2<f64>, b: &Array2<f64>, a: &Array2<f64>| {
            half_squared_error(&layer.forward(z_of(w, b, a).view()).unwrap().out, &t)
        };
        let z = z_of(&w, &b_row, &a);
        let margin = z.rows().into_iter().fold(f64::INFINITY, |margin, row| {
            let mut row = row.to_vec();
            row.chunks_mut(pieces).fold(margin, |margin, p| {
                p.sort_by(f64::total_cmp);
                p.windows(2).fold(margin, |margin, pair| margin.min(pair[1] - pair[0]))
            })
        });
        assert!(margin > 1e-3, "pieces within {margin} of a tie: the check would measure the kink");
        let fwd = layer.forward(z.view()).unwrap();
        let (_, delta) = half_squared_error(&fwd.out, &t);
        let grad_z = layer.backward(delta.view(), fwd.winners.view()).unwrap();
        let (gw, gb, ga) = (grad_z.t().dot(&a), grad_z.sum_axis(ndarray::Axis(0)), grad_z.dot(&w));
        let diffs = [
            check_at(&w, &values(&gw), |w| loss(w, &b_row, &a).0, &mut rng),
            check_at(&b_row, &gb.to_vec(), |b| loss(&w, b, &a).0, &mut rng),
            check_at(&a, &values(&ga), |a| loss(&w, &b_row, a).0, &mut rng),
        ];
        assert!(diffs.iter().all(|&d| d < 1e-9), "{}: ‖g − ĝ‖/‖g + ĝ‖ for W, b, A = {diffs:?}", layer.describe());
        eprintln!(
            "{}: ‖g − ĝ‖/‖g + ĝ‖ for W, b, A = {:.2e} {:.2e} {:.2e}",
            layer.describe(),
            diffs[0],
            diffs[1],
            diffs[2]
        );

        let fwd32 = layer.forward(z.mapv(|v| v as f32).view()).unwrap();
        assert_eq!(fwd32.winners, fwd.winners, "f32 and f64 pick different pieces");
    }
}

/// Maxout by hand: the first of equal pieces wins, a NaN wins, δ goes to the winner only.
#[test]
fn maxout_by_hand() {
    let layer = Maxout::new(3, 2).unwrap();
    let z = Array2::from_shape_vec((2, 6), vec![1.0, 2.0, 5.0, 5.0, -1.0, -3.0, 0.0, f64::NAN, 4.0, 9.0, -2.0, -2.0])
        .unwrap();
    let fwd = layer.forward(z.view()).unwrap();
    assert_eq!(fwd.winners.as_slice().unwrap(), &[1, 2, 4, 1, 3, 4]);
    assert_eq!(fwd.out.row(0).to_vec(), [2.0, 5.0, -1.0]);
    assert!(fwd.out[[1, 0]].is_nan());
    assert_eq!(fwd.out.row(1).slice(ndarray::s![1..]).to_vec(), [9.0, -2.0]);
    let delta = Array2::from_shape_vec((2, 3), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let gz = layer.backward(delta.view(), fwd.winners.view()).unwrap();
    assert_eq!(gz.as_slice().unwrap(), &[0.0, 1.0, 2.0, 0.0, 3.0, 0.0, 0.0, 4.0, 0.0, 5.0, 6.0, 0.0]);
}

/// A bit-for-bit comparison of two f32 arrays.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Everything the f32 fast paths compute on LeNet's two convolution layers (batches that
/// make the GEMM split its work), their pooling and a maxout layer, under one pool of
/// `threads` threads.
fn lenet_f32(threads: usize) -> Vec<Vec<f32>> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let mut rng = StdRng::seed_from_u64(3);
        let mut results = Vec::new();
        for (input, filters, m) in [(ImageShape::new(1, 28, 28), 20, 4), (ImageShape::new(20, 12, 12), 50, 6)] {
            let conv = Conv2d::new(input, filters, 5, 1, 0).unwrap();
            let (f, depth) = conv.weight_shape();
            let w = uniform(f, depth, &mut rng).mapv(|v| v as f32);
            let b = Array1::from_shape_simple_fn(f, || rng.random_range(-1.0f32..1.0));
            let x = uniform(m, input.len(), &mut rng).mapv(|v| v as f32);
            let delta = uniform(m, conv.output().len(), &mut rng).mapv(|v| v as f32);
            let out = conv.forward(w.view(), b.view(), x.view()).unwrap();
            let (mut gw, mut gb, mut gx) = (Array2::zeros(w.dim()), Array1::zeros(f), Array2::zeros(x.dim()));
            conv.backward(w.view(), x.view(), delta.view(), 0.25, gw.view_mut(), gb.view_mut(), Some(gx.view_mut()))
                .unwrap();
            for kind in [PoolKind::Max, PoolKind::Mean] {
                let pool = Pool2d::new(conv.output(), kind, 2).unwrap();
                let fwd = pool.forward(out.view()).unwrap();
                let d = uniform(m, pool.output().len(), &mut rng).mapv(|v| v as f32);
                let g = pool.backward(d.view(), fwd.winners.as_ref().map(|w| w.view())).unwrap();
                results.extend([fwd.out.into_raw_vec_and_offset().0, g.into_raw_vec_and_offset().0]);
            }
            results.extend([out, gw, gx].map(|a| a.into_raw_vec_and_offset().0));
            results.push(gb.to_vec());
        }
        let layer = Maxout::new(100, 4).unwrap();
        let z = uniform(300, 400, &mut rng).mapv(|v| v as f32);
        let fwd = layer.forward(z.view()).unwrap();
        let d = uniform(300, 100, &mut rng).mapv(|v| v as f32);
        results.push(layer.backward(d.view(), fwd.winners.view()).unwrap().into_raw_vec_and_offset().0);
        results.push(fwd.out.into_raw_vec_and_offset().0);
        results
    })
}

#[test]
fn the_bits_do_not_depend_on_the_number_of_threads() {
    let one = lenet_f32(1);
    for threads in [2, 3] {
        let many = lenet_f32(threads);
        for (i, (a, b)) in one.iter().zip(&many).enumerate() {
            assert!(same_bits(a, b), "result {i} differs between 1 and {threads} threads");
        }
    }
}

/// The error of `result`, which must be a one-line `Error::Shape` that starts with `layer`
/// and contains each of `words`.
fn assert_refused<T: std::fmt::Debug>(result: wgnn::Result<T>, layer: &str, words: &[&str]) {
    let message = match result {
        Err(Error::Shape(message)) => message,
        other => panic!("expected a shape error starting with {layer:?}, got {other:?}"),
    };
    assert!(!message.contains('\n'), "more than one line: {message}");
    assert!(message.starts_with(layer), "{message:?} does not name {layer}");
    for word in words {
        assert!(message.contains(word), "{message:?} does not say {word:?}");
    }
}

#[test]
fn impossible_geometries_and_arrays_are_refused_in_one_line() {
    let image = ImageShape::new(1, 4, 6);
    assert_refused(Conv2d::new(image, 2, 3, 0, 0), "conv2d", &["stride of 0", "at least 1"]);
    assert_refused(
        Conv2d::new(image, 2, 7, 1, 1),
        "conv2d",
        &["7×7 kernel", "padded 6×8", "at most 6", "padding of at least 2"],
    );
    assert_refused(Conv2d::new(ImageShape::new(0, 4, 4), 2, 3, 1, 0), "conv2d", &["at least 1"]);
    assert_refused(Conv2d::new(image, 0, 3, 1, 0), "conv2d", &["at least 1"]);
    assert_refused(Conv2d::new(image, 2, 3, 1, usize::MAX / 2 + 1), "conv2d", &["padding"]);
    assert_refused(Conv2d::new(ImageShape::new(1 << 40, 1 << 20, 1 << 20), 2, 3, 1, 0), "conv2d", &["too large"]);
    // A kernel that only fits thanks to the padding is fine: one output row.
    assert_eq!(Conv2d::new(image, 2, 5, 1, 1).unwrap().output(), ImageShape::new(2, 2, 4));
    assert_eq!(Conv2d::new(ImageShape::new(3, 7, 31), 4, 5, 2, 2).unwrap().output(), ImageShape::new(4, 4, 16));

    let conv = Conv2d::new(image, 2, 3, 1, 0).unwrap();
    let (w, b, x) = (Array2::<f64>::zeros((2, 9)), Array1::<f64>::zeros(2), Array2::<f64>::zeros((3, 24)));
    assert_refused(
        conv.forward(Array2::<f64>::zeros((2, 8)).view(), b.view(), x.view()),
        "conv2d",
        &["W is 2×8", "2×9"],
    );
    assert_refused(conv.forward(w.view(), Array1::zeros(3).view(), x.view()), "conv2d", &["b has 3 values"]);
    assert_refused(
        conv.forward(w.view(), b.view(), Array2::zeros((3, 25)).view()),
        "conv2d",
        &["25 columns", "1×4×6", "24"],
    );
    assert_refused(
        conv.forward_reference(w.view(), b.view(), Array2::zeros((3, 16)).view()),
        "conv2d",
        &["16 columns"],
    );
    let (mut gw, mut gb, mut gx) = (Array2::zeros((2, 9)), Array1::zeros(2), Array2::zeros((3, 24)));
    let bad_delta = Array2::zeros((3, 15));
    assert_refused(
        conv.backward(w.view(), x.view(), bad_delta.view(), 1.0, gw.view_mut(), gb.view_mut(), Some(gx.view_mut())),
        "conv2d",
        &["δ is 3×15", "3×16"],
    );
    let delta = Array2::zeros((3, 16));
    assert_refused(
        conv.backward(
            w.view(),
            x.view(),
            delta.view(),
            1.0,
            gw.view_mut(),
            gb.view_mut(),
            Some(Array2::zeros((2, 24)).view_mut()),
        ),
        "conv2d",
        &["∇input is 2×24"],
    );

    let map = ImageShape::new(3, 28, 28);
    assert_refused(Pool2d::new(map, PoolKind::Max, 0), "max pool2d", &["at least 1"]);
    assert_refused(Pool2d::with_stride(map, PoolKind::Mean, 2, 0), "mean pool2d", &["at least 1"]);
    assert_refused(
        Pool2d::new(ImageShape::new(1, 28, 5), PoolKind::Max, 6),
        "max pool2d",
        &["larger than the 28×5", "at most 5"],
    );
    assert_refused(Pool2d::new(map, PoolKind::Max, 3), "max pool2d", &["do not cover the 28×28", "25", "(1, 5, 25)"]);
    assert_refused(Pool2d::with_stride(map, PoolKind::Mean, 3, 2), "mean pool2d", &["every 2"]);
    let pool = Pool2d::new(map, PoolKind::Max, 2).unwrap();
    assert_eq!(pool.output(), ImageShape::new(3, 14, 14));
    assert_refused(pool.forward(Array2::<f32>::zeros((2, 100)).view()), "max pool2d", &["100 columns", "2352"]);
    let d = Array2::<f32>::zeros((2, 588));
    assert_refused(pool.backward(d.view(), None), "max pool2d", &["winners"]);
    let far = Array2::from_elem((2, 588), 2352u32);
    assert_refused(pool.backward(d.view(), Some(far.view())), "max pool2d", &["value 2352", "2352"]);
    assert_refused(
        pool.backward(d.view(), Some(Array2::zeros((1, 588)).view())),
        "max pool2d",
        &["winner array is 1×588"],
    );

    assert_refused(Maxout::new(3, 0), "maxout", &["at least 1"]);
    assert_refused(Maxout::new(0, 2), "maxout", &["at least 1"]);
    assert_refused(Maxout::new(1 << 20, 1 << 20), "maxout", &["32-bit"]);
    let layer = Maxout::new(3, 2).unwrap();
    assert_refused(layer.forward(Array2::<f64>::zeros((4, 5)).view()), "maxout", &["5 columns", "6"]);
    let d = Array2::<f64>::zeros((4, 3));
    let other_unit = Array2::from_shape_fn((4, 3), |(_, u)| if u == 2 { 1 } else { 2 * u as u32 });
    assert_refused(layer.backward(d.view(), other_unit.view()), "maxout", &["unit 2", "column 1", "4…5"]);
}

/// A fixture array from tests/fixtures/layers.
fn fixture(case: &str, name: &str) -> ndarray::ArrayD<f64> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/layers").join(case).join(format!("{name}.npy"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    ndarray::ArrayD::<f64>::read_npy(file).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixture2(case: &str, name: &str) -> Array2<f64> {
    let a = fixture(case, name);
    let rows = a.shape()[0];
    let cols = a.len() / rows.max(1);
    a.into_shape_with_order((rows, cols)).unwrap()
}

/// Conv2d against JAX's `lax.conv_general_dilated` (NCHW, OIHW: PyTorch's layouts) and
/// `jax.grad` of L = Σ r ⊙ out, in f64, for each geometry in tests/fixtures/layers/conv*.
#[test]
fn conv2d_matches_jax() {
    for case in ["conv_stride1_pad0", "conv_stride2_pad1", "conv_nonsquare_pad2"] {
        let geometry = fixture(case, "geometry");
        let g: Vec<usize> = geometry.iter().map(|&v| v as usize).collect();
        let conv = Conv2d::new(ImageShape::new(g[0], g[1], g[2]), g[3], g[4], g[5], g[6]).unwrap();
        let (w, x, r) = (fixture2(case, "w"), fixture2(case, "x"), fixture2(case, "r"));
        let b = Array1::from(fixture(case, "b").iter().copied().collect::<Vec<_>>());
        let out = conv.forward(w.view(), b.view(), x.view()).unwrap();
        let mut gw = Array2::zeros(w.dim());
        let mut gb = Array1::zeros(b.len());
        let mut gx = Array2::zeros(x.dim());
        conv.backward(w.view(), x.view(), r.view(), 1.0, gw.view_mut(), gb.view_mut(), Some(gx.view_mut())).unwrap();
        let errors = [
            relative_error(out, fixture(case, "out").as_slice().unwrap()),
            relative_error(gw, fixture(case, "grad_w").as_slice().unwrap()),
            relative_error(gb, fixture(case, "grad_b").as_slice().unwrap()),
            relative_error(gx, fixture(case, "grad_x").as_slice().unwrap()),
        ];
        assert!(errors.iter().all(|&e| e < 1e-12), "{case} ({}): errors against JAX {errors:?}", conv.describe());
    }
}

/// Pooling against JAX's `lax.reduce_window` (max, and sum / k²) and `jax.grad`.
#[test]
fn pool2d_matches_jax() {
    for (case, kind) in [("pool_max", PoolKind::Max), ("pool_mean_overlapping", PoolKind::Mean)] {
        let g: Vec<usize> = fixture(case, "geometry").iter().map(|&v| v as usize).collect();
        let pool = Pool2d::with_stride(ImageShape::new(g[0], g[1], g[2]), kind, g[3], g[4]).unwrap();
        let (x, r) = (fixture2(case, "x"), fixture2(case, "r"));
        let fwd = pool.forward(x.view()).unwrap();
        let gx = pool.backward(r.view(), fwd.winners.as_ref().map(|w| w.view())).unwrap();
        let errors = [
            relative_error(fwd.out, fixture(case, "out").as_slice().unwrap()),
            relative_error(gx, fixture(case, "grad_x").as_slice().unwrap()),
        ];
        assert!(errors.iter().all(|&e| e < 1e-12), "{case}: errors against JAX {errors:?}");
    }
}

/// A maxout layer (dense product, then the max over pieces) against JAX's `jax.grad`.
#[test]
fn maxout_matches_jax() {
    let case = "maxout";
    let g: Vec<usize> = fixture(case, "geometry").iter().map(|&v| v as usize).collect();
    let layer = Maxout::new(g[0], g[1]).unwrap();
    let (w, a, r) = (fixture2(case, "w"), fixture2(case, "a"), fixture2(case, "r"));
    let b: Array2<f64> =
        fixture(case, "b").into_shape_with_order((1, g[0] * g[1])).unwrap().into_dimensionality().unwrap();
    let z = a.dot(&w.t()) + &b;
    let fwd = layer.forward(z.view()).unwrap();
    let gz = layer.backward(r.view(), fwd.winners.view()).unwrap();
    let errors = [
        relative_error(fwd.out, fixture(case, "out").as_slice().unwrap()),
        relative_error(gz.t().dot(&a), fixture(case, "grad_w").as_slice().unwrap()),
        relative_error(gz.sum_axis(ndarray::Axis(0)), fixture(case, "grad_b").as_slice().unwrap()),
        relative_error(gz.dot(&w), fixture(case, "grad_a").as_slice().unwrap()),
    ];
    assert!(errors.iter().all(|&e| e < 1e-12), "maxout: errors against JAX {errors:?}");
}
