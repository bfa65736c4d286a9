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

use super::{ImageShape, check_cols, check_dim, checked_len};
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

    /// Plain loops over (c, py, px), then the region's rows: the max pool runs after every
    /// ReLU convolution of a CNN, so it is kept free of iterator and closure plumbing.
    fn max_of<F: Real>(&self, image: &[F], out: &mut [F], winners: &mut [u32]) {
        let (k, s) = (self.size, self.stride);
        let (h, w) = (self.input.height, self.input.width);
        let shape = self.output();
        let mut o = 0;
        for c in 0..shape.channels {
            for py in 0..shape.height {
                for px in 0..shape.width {
                    let first = (c * h + py * s) * w + px * s;
                    let (mut best, mut at) = (image[first], first);
                    for i in 0..k {
                        let r = first + i * w;
                        for (col, &v) in image[r..r + k].iter().enumerate() {
                            // Strictly greater: the first of equal values keeps the win. Selects,
                            // not a branch: on activations which value wins is a coin toss.
                            let take = (v > best) | (v.is_nan() & !best.is_nan());
                            best = if take { v } else { best };
                            at = if take { r + col } else { at };
                        }
                    }
                    out[o] = best;
                    winners[o] = at as u32;
                    o += 1;
                }
            }
        }
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
