//! 2-D pooling, max or mean, over k × k regions every s pixels (MATH.md, "Layers beyond
//! dense", Pooling): each channel of each image pooled on its own, no padding, output side
//! (h − k)/s + 1 — PyTorch's `MaxPool2d(k, s)` / `AvgPool2d(k, s)` on the sizes accepted here.
//!
//! Forward: mean = Σ/k²; max = the largest value, whose position (the first in row-major
//! order on ties; a NaN wins, so it reaches the cost) is kept as the winner. Backward: mean
//! spreads δ/k² over the region; max sends δ to the winner. Regions may overlap (s < k): then
//! a pixel's gradient sums the regions that hold it.
//!
//! One implementation, generic over f32 and f64 (f64 is the reference; it is a direct loop),
//! split over images, so the bits do not depend on the number of threads. Layouts as in the
//! [module notes](super): batches are m × (c·h·w) row-major.
//!
//! Regions must cover the map exactly: sizes that would leave the last rows or columns out of
//! every region ((h − k) or (w − k) not a multiple of s) are refused rather than silently
//! dropping those pixels, as `features` does for its pooling.
//!
//! This module pools; it has no parameters and knows nothing of θ.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use super::{ImageShape, check_cols, check_dim, check_len, checked_len};
use crate::cpu::Real;
use crate::{Error, Result};

/// How a region is summarised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKind {
    /// The mean of each region.
    Mean,
    /// The max of each region (the winner kept for the backward pass).
    Max,
}

impl PoolKind {
    /// The name `--net` uses: `meanpool` or `maxpool`.
    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Mean => "mean",
            PoolKind::Max => "max",
        }
    }
}

/// The geometry of one pooling layer, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2d {
    /// c × h × w of each input image.
    pub input: ImageShape,
    /// Mean or max.
    pub kind: PoolKind,
    /// k: the region's side.
    pub size: usize,
    /// s: the step between neighbouring regions.
    pub stride: usize,
}

/// A pooled batch (m × c·h′·w′) and, for max pooling, the winner of each output value: the
/// column of the example's input row (c·h·w) whose value it is.
#[derive(Clone, Debug, PartialEq)]
pub struct Pooled<F> {
    /// The pooled batch (m × c·h′·w′).
    pub out: Array2<F>,
    /// Max pooling: the input column each output came from.
    pub winners: Option<Array2<u32>>,
}

impl Pool2d {
    /// Disjoint k × k regions (stride s = k), the usual pooling.
    pub fn new(input: ImageShape, kind: PoolKind, size: usize) -> Result<Pool2d> {
        Pool2d::with_stride(input, kind, size, size)
    }

    /// k × k regions every s pixels, or `Error::Shape` with a one-line message when a size is
    /// zero, the region is larger than the image, or the regions do not cover the image
    /// exactly. Nothing is allocated.
    pub fn with_stride(input: ImageShape, kind: PoolKind, size: usize, stride: usize) -> Result<Pool2d> {
        let pool = Pool2d { input, kind, size, stride };
        let name = pool.describe();
        let ImageShape { channels: c, height: h, width: w } = input;
        if c == 0 || h == 0 || w == 0 || size == 0 || stride == 0 {
            return Err(Error::Shape(format!(
                "{name}: channels, image sides, region size and stride must all be at least 1"
            )));
        }
        if size > h || size > w {
            return Err(Error::Shape(format!(
                "{name}: the {size}×{size} region is larger than the {h}×{w} image: use a region of at most {}",
                h.min(w)
            )));
        }
        if !(h - size).is_multiple_of(stride) || !(w - size).is_multiple_of(stride) {
            let fits: Vec<String> = (1..=(h - size).max(w - size))
                .filter(|&s| (h - size).is_multiple_of(s) && (w - size).is_multiple_of(s))
                .map(|s| s.to_string())
                .collect();
            return Err(Error::Shape(format!(
                "{name}: {size}×{size} regions every {stride} do not cover the {h}×{w} image (the last rows or columns \
                 would be dropped): with this size use a stride that divides both {} and {} ({}), or another size",
                h - size,
                w - size,
                fits.join(", ")
            )));
        }
        let len = checked_len(&name, "an input image", &[c, h, w])?;
        if u32::try_from(len).is_err() {
            return Err(Error::Shape(format!("{name}: images of {len} values are beyond 32-bit winner indices")));
        }
        Ok(pool)
    }

    /// c × h′ × w′ with h′ = (h − k)/s + 1, w′ = (w − k)/s + 1.
    pub fn output(&self) -> ImageShape {
        let side = |n: usize| (n - self.size) / self.stride + 1;
        ImageShape::new(self.input.channels, side(self.input.height), side(self.input.width))
    }

    /// "max pool2d (c×h×w, k×k regions every s)", as messages name the layer.
    pub fn describe(&self) -> String {
        format!(
            "{} pool2d ({}, {k}×{k} regions every {})",
            self.kind.name(),
            self.input.describe(),
            self.stride,
            k = self.size
        )
    }

    /// Pools every image of `x` (m × c·h·w, any strides): the output is m × c·h′·w′, with the
    /// winners for max pooling. Errors: `Error::Shape` when `x` does not fit the layer.
    pub fn forward<F: Real>(&self, x: ArrayView2<F>) -> Result<Pooled<F>> {
        let name = self.describe();
        check_cols(&name, "the input", x.dim(), self.input.len(), &format!("{} images", self.input.describe()))?;
        let (m, out_len) = (x.nrows(), self.output().len());
        checked_len(&name, "the output batch", &[m, out_len])?;
        let x = x.as_standard_layout();
        let mut out = Array2::zeros((m, out_len));
        let rows = x.as_slice().expect("standard layout").par_chunks(self.input.len().max(1));
        let out_rows = out.as_slice_mut().expect("a new array is contiguous").par_chunks_mut(out_len);
        let winners = match self.kind {
            PoolKind::Mean => {
                out_rows.zip(rows).for_each(|(o, image)| self.mean_of(image, o));
                None
            }
            PoolKind::Max => {
                let mut winners = Array2::<u32>::zeros((m, out_len));
                let win_rows = winners.as_slice_mut().expect("a new array is contiguous").par_chunks_mut(out_len);
                out_rows.zip(win_rows).zip(rows).for_each(|((o, win), image)| self.max_of(image, o, win));
                Some(winners)
            }
        };
        Ok(Pooled { out, winners })
    }

    /// ∂L/∂x (m × c·h·w) from δ = ∂L/∂out (m × c·h′·w′): mean spreads δ/k² over each
    /// region, max sends δ to the winner (`winners` as [`Pool2d::forward`] gave them; required
    /// for max, ignored for mean). Errors: `Error::Shape` when an array does not fit the layer
    /// or a winner lies outside the image.
    pub fn backward<F: Real>(&self, delta: ArrayView2<F>, winners: Option<ArrayView2<u32>>) -> Result<Array2<F>> {
        let name = self.describe();
        let (m, out_len, in_len) = (delta.nrows(), self.output().len(), self.input.len());
        check_cols(&name, "δ", delta.dim(), out_len, &format!("{} outputs", self.output().describe()))?;
        checked_len(&name, "the input gradient", &[m, in_len])?;
        let delta = delta.as_standard_layout();
        let d_rows = delta.as_slice().expect("standard layout").par_chunks(out_len);
        let mut grad = Array2::zeros((m, in_len));
        let g_rows = grad.as_slice_mut().expect("a new array is contiguous").par_chunks_mut(in_len);
        match self.kind {
            PoolKind::Mean => g_rows.zip(d_rows).for_each(|(g, d)| self.spread_mean(d, g)),
            PoolKind::Max => {
                let Some(winners) = winners else {
                    return Err(Error::Shape(format!("{name}: the backward pass needs the forward pass's winners")));
                };
                check_dim(&name, "the winner array", winners.dim(), (m, out_len))?;
                if let Some(&bad) = winners.iter().find(|&&i| i as usize >= in_len) {
                    return Err(Error::Shape(format!(
                        "{name}: a winner points at value {bad} of images that have {in_len}: pass the winners of this layer's forward pass"
                    )));
                }
                let winners = winners.as_standard_layout();
                let w_rows = winners.as_slice().expect("standard layout").par_chunks(out_len);
                g_rows.zip(d_rows).zip(w_rows).for_each(|((g, d), win)| {
                    for (&d, &at) in d.iter().zip(win) {
                        g[at as usize] += d;
                    }
                });
            }
        }
        Ok(grad)
    }

    /// Pools the images of `x` (m × c·h·w values, row-major) into `out` (m × c·h′·w′), as
    /// [`Pool2d::forward`] does but without the winners: [`Pool2d::backward_into`] finds
    /// them again in `x`. For the layer stack, which keeps each layer's input and output in
    /// reused buffers. Errors: `Error::Shape` when a buffer does not hold whole images.
    pub fn forward_into<F: Real>(&self, x: &[F], out: &mut [F]) -> Result<()> {
        let m = self.images_in(x.len(), "the input", self.input.len())?;
        check_len(&self.describe(), "the output buffer", out.len(), m * self.output().len())?;
        if m == 0 {
            return Ok(());
        }
        let (in_len, out_len) = (self.input.len(), self.output().len());
        let pairs = out.par_chunks_mut(out_len).zip(x.par_chunks(in_len));
        match self.kind {
            PoolKind::Mean => pairs.for_each(|(o, image)| self.mean_of(image, o)),
            PoolKind::Max => pairs.for_each(|(o, image)| match (self.size, self.stride) {
                (2, 2) => self.max_only::<F, 2>(image, o),
                (3, 3) => self.max_only::<F, 3>(image, o),
                _ => self.each_output(|o_at, c, py, px| o[o_at] = self.region_max(image, c, py, px).0),
            }),
        }
        Ok(())
    }

    /// ∂L/∂x (m × c·h·w, every value written) from δ = ∂L/∂out (m × c·h′·w′) and the layer's
    /// input `x` (the values [`Pool2d::forward_into`] pooled): mean spreads δ/k² over each
    /// region; max finds each region's winner again in `x`, by the same comparisons as the
    /// forward pass (so the same winner, ties and NaN included), and sends δ to it — the
    /// same values as [`Pool2d::backward`] given the forward pass's winners. `x` is read only
    /// for max pooling. Errors: `Error::Shape` when a buffer does not hold the m images.
    pub fn backward_into<F: Real>(&self, x: &[F], delta: &[F], grad: &mut [F]) -> Result<()> {
        let name = self.describe();
        let (in_len, out_len) = (self.input.len(), self.output().len());
        let m = self.images_in(delta.len(), "δ", out_len)?;
        check_len(&name, "the input gradient", grad.len(), m * in_len)?;
        if m == 0 {
            return Ok(());
        }
        let g_rows = grad.par_chunks_mut(in_len).zip(delta.par_chunks(out_len));
        match self.kind {
            PoolKind::Mean => g_rows.for_each(|(g, d)| {
                g.fill(F::zero());
                self.spread_mean(d, g)
            }),
            PoolKind::Max => {
                check_len(&name, "the input", x.len(), m * in_len)?;
                g_rows.zip(x.par_chunks(in_len)).for_each(|((g, d), image)| match (self.size, self.stride) {
                    (2, 2) => self.route_max::<F, 2>(image, d, g),
                    (3, 3) => self.route_max::<F, 3>(image, d, g),
                    _ => {
                        g.fill(F::zero());
                        self.each_output(|o, c, py, px| g[self.region_max(image, c, py, px).1] += d[o]);
                    }
                });
            }
        }
        Ok(())
    }

    /// The number of whole images of `per_image` values in `len` values, or an error naming
    /// `what`.
    fn images_in(&self, len: usize, what: &str, per_image: usize) -> Result<usize> {
        if per_image == 0 || !len.is_multiple_of(per_image) {
            return Err(Error::Shape(format!(
                "{}: {what} has {len} values, not a whole number of images of {per_image}",
                self.describe()
            )));
        }
        Ok(len / per_image)
    }

    /// The largest value of output (c, py, px)'s region and its column in the image: the
    /// first in row-major order on ties, a NaN winning (and the first NaN). Selects, not
    /// branches: on activations which value wins is a coin toss. Every max-pooling path
    /// goes through these comparisons, so all agree on the winner.
    #[inline(always)]
    fn region_max<F: Real>(&self, image: &[F], c: usize, py: usize, px: usize) -> (F, usize) {
        let (k, w) = (self.size, self.input.width);
        let first = (c * self.input.height + py * self.stride) * w + px * self.stride;
        let (mut best, mut at) = (image[first], first);
        for i in 0..k {
            let r = first + i * w;
            for (col, &v) in image[r..r + k].iter().enumerate() {
                (best, at) = keep_larger(best, at, v, r + col);
            }
        }
        (best, at)
    }

    /// Disjoint K × K regions (stride K): one output row at a time, the region's K input
    /// rows read side by side; the same comparisons, in the same order, as
    /// [`Pool2d::region_max`].
    #[inline(always)]
    fn max_only<F: Real, const K: usize>(&self, image: &[F], out: &mut [F]) {
        let (w, shape) = (self.input.width, self.output());
        for (row, o) in out.chunks_exact_mut(shape.width).enumerate() {
            let (c, py) = (row / shape.height, row % shape.height);
            let top = (c * self.input.height + py * K) * w;
            let rows: [&[F]; K] = std::array::from_fn(|i| &image[top + i * w..top + i * w + shape.width * K]);
            for (px, o) in o.iter_mut().enumerate() {
                let mut best = rows[0][px * K];
                for (i, r) in rows.iter().enumerate() {
                    for j in 0..K {
                        best = keep_larger(best, 0, r[px * K + j], i * K + j).0;
                    }
                }
                *o = best;
            }
        }
    }

    /// Disjoint K × K regions: each region's pixels written once, δ at the winner (as
    /// 0 + δ, the value a sum into a zeroed gradient gives) and 0 elsewhere. The winner is
    /// the first pixel equal to the region's maximum (found by [`Pool2d::max_only`]'s
    /// comparisons), or the first NaN when the maximum is a NaN: the pixel that
    /// [`Pool2d::region_max`]'s running comparison keeps. Its index is picked with integer
    /// masks: selects on the comparisons compiled to branches, which mispredict on
    /// activations (the backward took 3× as long with them; BENCHMARKS.md, "CNN step: pooling
    /// and Adam").
    #[inline(always)]
    fn route_max<F: Real, const K: usize>(&self, image: &[F], delta: &[F], grad: &mut [F]) {
        let (w, shape) = (self.input.width, self.output());
        for (row, d) in delta.chunks_exact(shape.width).enumerate() {
            let (c, py) = (row / shape.height, row % shape.height);
            let top = (c * self.input.height + py * K) * w;
            for (px, &d) in d.iter().enumerate() {
                let first = top + px * K;
                let v: [[F; K]; K] = std::array::from_fn(|i| std::array::from_fn(|j| image[first + i * w + j]));
                let mut best = v[0][0];
                for v_i in &v {
                    for &v_ij in v_i {
                        best = keep_larger(best, 0, v_ij, 0).0;
                    }
                }
                // The last hit seen going backwards is the first; a NaN pixel exists only
                // when the maximum is a NaN.
                let mut at = 0usize;
                for p in (0..K * K).rev() {
                    let v_p = v[p / K][p % K];
                    let hit = ((v_p == best) | v_p.is_nan()) as usize;
                    at ^= (at ^ p) & hit.wrapping_neg();
                }
                for i in 0..K {
                    grad[first + i * w..first + i * w + K].fill(F::zero());
                }
                grad[first + at / K * w + at % K] = F::zero() + d;
            }
        }
    }

    /// The input columns of output (c, py, px)'s region, row by row: for each of its k rows,
    /// the index of the row's first value.
    fn region_rows(&self, c: usize, py: usize, px: usize) -> impl Iterator<Item = usize> + use<> {
        let (h, w) = (self.input.height, self.input.width);
        let (y0, x0) = (py * self.stride, px * self.stride);
        (0..self.size).map(move |i| (c * h + y0 + i) * w + x0)
    }

    /// Calls `f(output index, c, py, px)` for every output value of one image, in order.
    fn each_output(&self, mut f: impl FnMut(usize, usize, usize, usize)) {
        let out = self.output();
        for c in 0..out.channels {
            for py in 0..out.height {
                for px in 0..out.width {
                    f((c * out.height + py) * out.width + px, c, py, px);
                }
            }
        }
    }

    fn mean_of<F: Real>(&self, image: &[F], out: &mut [F]) {
        let (k, area) = (self.size, F::of((self.size * self.size) as f64));
        self.each_output(|o, c, py, px| {
            let sum = self.region_rows(c, py, px).fold(F::zero(), |s, r| image[r..r + k].iter().fold(s, |s, &v| s + v));
            out[o] = sum / area;
        });
    }

    /// The region maxima of one image and their winners ([`Pool2d::region_max`]).
    fn max_of<F: Real>(&self, image: &[F], out: &mut [F], winners: &mut [u32]) {
        self.each_output(|o, c, py, px| {
            let (best, at) = self.region_max(image, c, py, px);
            out[o] = best;
            winners[o] = at as u32;
        });
    }

    fn spread_mean<F: Real>(&self, delta: &[F], grad: &mut [F]) {
        let (k, area) = (self.size, F::of((self.size * self.size) as f64));
        self.each_output(|o, c, py, px| {
            let share = delta[o] / area;
            for r in self.region_rows(c, py, px) {
                grad[r..r + k].iter_mut().for_each(|g| *g += share);
            }
        });
    }
}

/// (best, at) after looking at value v at position `here`: v takes over when it is strictly
/// larger (so the first of equal values keeps the win) or a NaN where best is not (so a NaN
/// reaches the output).
#[inline(always)]
fn keep_larger<F: Real>(best: F, at: usize, v: F, here: usize) -> (F, usize) {
    let take = (v > best) | (v.is_nan() & !best.is_nan());
    (if take { v } else { best }, if take { here } else { at })
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;

    /// Small integers (many ties, ±0 among them) and a few NaNs: the cases where a winner
    /// could differ.
    fn awkward<F: Real>(rows: usize, cols: usize) -> Array2<F> {
        Array2::from_shape_fn((rows, cols), |(r, c)| {
            let k = (r * 7919 + c * 104_729) % 23;
            match k {
                0 => F::of(f64::NAN),
                1 => F::of(-0.0),
                _ => F::of((k % 5) as f64 - 2.0),
            }
        })
    }

    fn same_bits<F: Real>(a: &[F], b: &[F]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.f64().to_bits() == y.f64().to_bits())
    }

    /// `forward_into` gives the bits of `forward`, and `backward_into` (which finds the
    /// winners again) the bits of `backward` given the forward pass's winners: disjoint 2×2
    /// and 3×3 regions (the fast paths), overlapping and gapped strides, both precisions.
    #[test]
    fn the_buffer_forms_equal_the_array_forms_bit_for_bit() {
        fn check<F: Real>() {
            let shapes = [(3, 8, 8, 2, 2), (2, 9, 9, 3, 3), (2, 7, 7, 3, 2), (1, 6, 6, 2, 1), (2, 9, 9, 2, 7)];
            for (c, h, w, k, s) in shapes {
                for kind in [PoolKind::Max, PoolKind::Mean] {
                    let pool = Pool2d::with_stride(ImageShape::new(c, h, w), kind, k, s).unwrap();
                    let m = 3;
                    let x = awkward::<F>(m, pool.input.len());
                    let fwd = pool.forward(x.view()).unwrap();
                    let mut out = vec![F::of(7.0); m * pool.output().len()];
                    pool.forward_into(x.as_slice().unwrap(), &mut out).unwrap();
                    let name = pool.describe();
                    assert!(same_bits(fwd.out.as_slice().unwrap(), &out), "{name} {}: forward", F::NAME);
                    let delta = awkward::<F>(m, pool.output().len()).mapv(|v| if v.is_nan() { F::of(3.5) } else { v });
                    let want = pool.backward(delta.view(), fwd.winners.as_ref().map(|w| w.view())).unwrap();
                    let mut grad = vec![F::of(f64::NAN); m * pool.input.len()];
                    pool.backward_into(x.as_slice().unwrap(), delta.as_slice().unwrap(), &mut grad).unwrap();
                    assert!(same_bits(want.as_slice().unwrap(), &grad), "{name} {}: backward", F::NAME);
                }
            }
        }
        check::<f32>();
        check::<f64>();
    }

    /// Buffers that do not hold whole images are refused in one line, before any work.
    #[test]
    fn buffers_of_the_wrong_size_are_refused() {
        let pool = Pool2d::new(ImageShape::new(1, 4, 4), PoolKind::Max, 2).unwrap();
        let x = vec![0.0f32; 32];
        let err = pool.forward_into(&x[..31], &mut [0.0; 8]).unwrap_err().to_string();
        assert!(err.contains("not a whole number of images of 16"), "{err}");
        let err = pool.forward_into(&x, &mut [0.0; 7]).unwrap_err().to_string();
        assert!(err.contains("output buffer has 7 values, but it must have 8"), "{err}");
        let err = pool.backward_into(&x[..16], &[0.0; 8], &mut [0.0; 32]).unwrap_err().to_string();
        assert!(err.contains("input has 16 values, but it must have 32"), "{err}");
    }
}
