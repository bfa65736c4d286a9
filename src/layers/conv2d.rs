//! 2-D convolution with PyTorch's `nn.Conv2d` semantics (MATH.md, "Layers beyond dense",
//! Convolution): a cross-correlation of f filters of c × k × k over m images of c × h × w,
//! stride s, zero padding p, giving f × h′ × w′ with h′ = ⌊(h + 2p − k)/s⌋ + 1 (and w′ alike).
//!
//! Two implementations of the same maths, the second checked against the first
//! (tests/layers.rs):
//! - [`Conv2d::forward_reference`], [`Conv2d::backward_reference`]: f64 loops that read like
//!   MATH.md's formula, one output value (or one δ) at a time;
//! - [`Conv2d::forward`], [`Conv2d::backward`]: the fast path in f32 or f64. For each chunk of
//!   images, the patch matrix P (one row per output position (n, y, x), one column per
//!   (c, i, j); "im2col") is gathered and multiplied by the project's GEMM: Z = P Wᵀ,
//!   ∇W = α δᵀ P, ∇P = δ W, and ∇P is folded back onto the pixels that each entry read
//!   ("col2im"). Gathering, folding and the bias run split over images; ∇W and ∇b sum the
//!   chunks and images in order, so the bits do not depend on the number of threads.
//!
//! Layouts (see the [module notes](super)): images and outputs are m × (c·h·w) row-major
//! batches; W is f × (c·k·k), row f being PyTorch's `weight[f]` flattened, so W[f, c, i, j]
//! is at column (c·k + i)·k + j — θ can hold it as `torch.nn.Conv2d(c, f, k).weight.flatten()`.
//!
//! This module computes one layer; it does not own parameters, activations or θ.

use std::borrow::Cow;

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, s};
use rayon::prelude::*;

use super::{ImageShape, check_cols, check_dim, check_len, checked_len};
use crate::cpu::{Real, gemm};
use crate::{Error, Result};

/// Patch-matrix and product values gathered per chunk of images (4 MB in f32, as
/// `features::convolve_and_pool_cpu`: the patches stay near the caches between the gather and
/// the GEMM). The chunk depends on the geometry only, never on the number of threads.
const CHUNK_VALUES: usize = 1 << 20;

/// The geometry of one convolution layer, validated: every size ≥ 1, stride ≥ 1, and the
/// kernel no larger than the padded image, so the output has at least one position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// c × h × w of each input image.
    pub input: ImageShape,
    /// f: the number of filters (output channels).
    pub filters: usize,
    /// k: the kernel's side (k × k).
    pub kernel: usize,
    /// s: the step between neighbouring positions, in pixels.
    pub stride: usize,
    /// p: zeros added on every side of each image.
    pub padding: usize,
}

/// ∂L/∂W (f × c·k·k), ∂L/∂b (f) and ∂L/∂input (m × c·h·w) from the f64 reference, as sums
/// over the batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Gradients {
    pub weight: Array2<f64>,
    pub bias: Array1<f64>,
    pub input: Array2<f64>,
}

impl Conv2d {
    /// A convolution of `filters` k × k filters over `input` images, or `Error::Shape` with a
    /// one-line message when a size is zero, the stride is zero, the kernel is larger than
    /// the padded image, or a size overflows. Nothing is allocated.
    pub fn new(input: ImageShape, filters: usize, kernel: usize, stride: usize, padding: usize) -> Result<Conv2d> {
        let conv = Conv2d { input, filters, kernel, stride, padding };
        let name = conv.describe();
        let ImageShape { channels: c, height: h, width: w } = input;
        if c == 0 || h == 0 || w == 0 || filters == 0 || kernel == 0 {
            return Err(Error::Shape(format!(
                "{name}: channels, image sides, filters and kernel must all be at least 1"
            )));
        }
        if stride == 0 {
            return Err(Error::Shape(format!(
                "{name}: a stride of 0 never moves the kernel: use a stride of at least 1"
            )));
        }
        let padded = |side: usize| padding.checked_mul(2).and_then(|p2| side.checked_add(p2));
        let (Some(ph), Some(pw)) = (padded(h), padded(w)) else {
            return Err(Error::Shape(format!("{name}: the padding {padding} is too large")));
        };
        if kernel > ph || kernel > pw {
            return Err(Error::Shape(format!(
                "{name}: the {kernel}×{kernel} kernel is larger than the padded {ph}×{pw} image, so there is no output: \
                 use a kernel of at most {} or a padding of at least {}",
                ph.min(pw),
                (kernel - h.min(w)).div_ceil(2)
            )));
        }
        checked_len(&name, "an input image", &[c, h, w])?;
        checked_len(&name, "the weights", &[filters, c, kernel, kernel])?;
        let out = conv.output();
        checked_len(&name, "an output image", &[filters, out.height, out.width])?;
        // One row of the patch matrix per output position, for at least one image.
        checked_len(&name, "one image's patch matrix", &[out.height, out.width, c, kernel, kernel])?;
        Ok(conv)
    }

    /// f × h′ × w′ with h′ = ⌊(h + 2p − k)/s⌋ + 1, w′ = ⌊(w + 2p − k)/s⌋ + 1.
    pub fn output(&self) -> ImageShape {
        let side = |n: usize| (n + 2 * self.padding - self.kernel) / self.stride + 1;
        ImageShape::new(self.filters, side(self.input.height), side(self.input.width))
    }

    /// c·k·k: values per patch, columns of W and of the patch matrix.
    pub fn patch_len(&self) -> usize {
        self.input.channels * self.kernel * self.kernel
    }

    /// (f, c·k·k): the shape of W as a matrix.
    pub fn weight_shape(&self) -> (usize, usize) {
        (self.filters, self.patch_len())
    }

    /// Multiply-adds ×2 of the forward pass over m images: 2·m·h′·w′·f·c·k².
    pub fn forward_flops(&self, m: usize) -> u64 {
        2 * (m * self.output().plane()) as u64 * (self.filters * self.patch_len()) as u64
    }

    /// "conv2d (c×h×w → f filters of k×k, stride s, padding p)", as messages name the layer.
    pub fn describe(&self) -> String {
        format!(
            "conv2d ({} → {} filters of {k}×{k}, stride {}, padding {})",
            self.input.describe(),
            self.filters,
            self.stride,
            self.padding,
            k = self.kernel
        )
    }

    /// The row of the image that kernel row i reads at output row y (or column, with `side` =
    /// w), or None where it falls in the zero padding: y·s + i − p when inside [0, side).
    #[inline]
    fn source(&self, y: usize, i: usize, side: usize) -> Option<usize> {
        (y * self.stride + i).checked_sub(self.padding).filter(|&v| v < side)
    }

    fn check_forward(&self, w: (usize, usize), b: usize, x: (usize, usize)) -> Result<()> {
        let name = self.describe();
        check_dim(&name, "W", w, self.weight_shape())?;
        check_len(&name, "b", b, self.filters)?;
        check_cols(&name, "the input", x, self.input.len(), &format!("{} images", self.input.describe()))?;
        checked_len(&name, "the output batch", &[x.0, self.output().len()]).map(|_| ())
    }

    fn check_backward(&self, w: (usize, usize), x: (usize, usize), delta: (usize, usize)) -> Result<()> {
        self.check_forward(w, self.filters, x)?;
        let out = self.output();
        check_dim(&self.describe(), "δ", delta, (x.0, out.len()))
    }

    /// The f64 reference, MATH.md's formula as loops: out[n, f, y, x] = b_f +
    /// Σ_{c,i,j} W\[f,c,i,j\] · in[n, c, y·s+i−p, x·s+j−p], the terms in the padding being 0.
    /// `w` is f × c·k·k, `b` has f values, `x` is m × c·h·w; the result is m × f·h′·w′.
    pub fn forward_reference(&self, w: ArrayView2<f64>, b: ArrayView1<f64>, x: ArrayView2<f64>) -> Result<Array2<f64>> {
        self.check_forward(w.dim(), b.len(), x.dim())?;
        let (ImageShape { channels, height, width }, k) = (self.input, self.kernel);
        let out_shape = self.output();
        let (oh, ow) = (out_shape.height, out_shape.width);
        let mut out = Array2::zeros((x.nrows(), out_shape.len()));
        for n in 0..x.nrows() {
            for f in 0..self.filters {
                for y in 0..oh {
                    for xo in 0..ow {
                        let mut z = b[f];
                        for c in 0..channels {
                            for i in 0..k {
                                for j in 0..k {
                                    if let (Some(yy), Some(xx)) = (self.source(y, i, height), self.source(xo, j, width))
                                    {
                                        z += w[[f, (c * k + i) * k + j]] * x[[n, (c * height + yy) * width + xx]];
                                    }
                                }
                            }
                        }
                        out[[n, (f * oh + y) * ow + xo]] = z;
                    }
                }
            }
        }
        Ok(out)
    }

    /// The f64 reference of the backward pass, δ = ∂L/∂out being m × f·h′·w′: every output
    /// value's δ added to ∂L/∂b_f, and, for each term W\[f,c,i,j\]·in[…] of its sum, δ·in[…] to
    /// ∂L/∂W\[f,c,i,j\] and δ·W\[f,c,i,j\] to ∂L/∂in[…]. Sums over the batch (no 1/m).
    pub fn backward_reference(
        &self,
        w: ArrayView2<f64>,
        x: ArrayView2<f64>,
        delta: ArrayView2<f64>,
    ) -> Result<Gradients> {
        self.check_backward(w.dim(), x.dim(), delta.dim())?;
        let (ImageShape { channels, height, width }, k) = (self.input, self.kernel);
        let out_shape = self.output();
        let (oh, ow) = (out_shape.height, out_shape.width);
        let mut g = Gradients {
            weight: Array2::zeros(self.weight_shape()),
            bias: Array1::zeros(self.filters),
            input: Array2::zeros(x.dim()),
        };
        for n in 0..x.nrows() {
            for f in 0..self.filters {
                for y in 0..oh {
                    for xo in 0..ow {
                        let d = delta[[n, (f * oh + y) * ow + xo]];
                        g.bias[f] += d;
                        for c in 0..channels {
                            for i in 0..k {
                                for j in 0..k {
                                    if let (Some(yy), Some(xx)) = (self.source(y, i, height), self.source(xo, j, width))
                                    {
                                        let (col, pixel) = ((c * k + i) * k + j, (c * height + yy) * width + xx);
                                        g.weight[[f, col]] += d * x[[n, pixel]];
                                        g.input[[n, pixel]] += d * w[[f, col]];
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        Ok(g)
    }

    /// Images per chunk of the fast path: as many as keep the patch matrix and the product
    /// within `CHUNK_VALUES` (1 M) values, at least one.
    pub fn chunk_images(&self) -> usize {
        let per_image = self.output().plane() * (self.patch_len() + self.filters);
        (CHUNK_VALUES / per_image.max(1)).max(1)
    }

    /// The fast path's forward pass (f32 or f64): equal to [`Conv2d::forward_reference`] up
    /// to rounding. `w` is f × c·k·k, `b` has f values, `x` is m × c·h·w (any strides); the
    /// result is m × f·h′·w′. Errors: `Error::Shape` when an array does not fit the layer.
    pub fn forward<F: Real>(&self, w: ArrayView2<F>, b: ArrayView1<F>, x: ArrayView2<F>) -> Result<Array2<F>> {
        self.forward_in_chunks(w, b, x, self.chunk_images())
    }

    /// As [`Conv2d::forward`], gathering the patches of at most `chunk_images` images at a
    /// time (tests use it to exercise several chunks on small batches).
    pub fn forward_in_chunks<F: Real>(
        &self,
        w: ArrayView2<F>,
        b: ArrayView1<F>,
        x: ArrayView2<F>,
        chunk_images: usize,
    ) -> Result<Array2<F>> {
        self.check_forward(w.dim(), b.len(), x.dim())?;
        let (m, positions, out_len) = (x.nrows(), self.output().plane(), self.output().len());
        let mut out = Array2::zeros((m, out_len));
        if m == 0 {
            return Ok(out);
        }
        let chunk = chunk_images.clamp(1, m);
        let x = x.as_standard_layout();
        let pixels = x.as_slice().expect("standard layout");
        let mut patches = Array2::<F>::zeros((chunk * positions, self.patch_len()));
        let mut z = Array2::<F>::zeros((chunk * positions, self.filters));
        let b = b.to_vec();
        let out_values = out.as_slice_mut().expect("a new array is contiguous");
        for (start, out_chunk) in (0..m).step_by(chunk).zip(out_values.chunks_mut(chunk * out_len)) {
            let images = out_chunk.len() / out_len;
            let rows = images * positions;
            let image_pixels = &pixels[start * self.input.len()..(start + images) * self.input.len()];
            let mut p = patches.slice_mut(s![..rows, ..]);
            self.gather_patches(image_pixels, as_slice_mut(&mut p));
            let mut zc = z.slice_mut(s![..rows, ..]);
            gemm(F::one(), &p.view(), &w.t(), F::zero(), &mut zc);
            // out[n, f·h′w′ + pos] = Z[n·h′w′ + pos, f] + b_f
            let zc = zc.view();
            let z_values = zc.as_slice().expect("rows of a standard-layout matrix");
            out_chunk.par_chunks_mut(out_len).zip(z_values.par_chunks(positions * self.filters)).for_each(
                |(out_n, z_n)| {
                    for (f, (out_f, &b_f)) in out_n.chunks_mut(positions).zip(&b).enumerate() {
                        for (pos, o) in out_f.iter_mut().enumerate() {
                            *o = z_n[pos * self.filters + f] + b_f;
                        }
                    }
                },
            );
        }
        Ok(out)
    }

    /// The fast path's backward pass (f32 or f64), δ = ∂L/∂out being m × f·h′·w′:
    /// ∇W ← α·Σ_n δ_nᵀ P_n (f × c·k·k), ∇b ← α·Σ δ (f values), and, when asked,
    /// ∇x ← ∂L/∂x (m × c·h·w, no α). All three are overwritten. Equal to
    /// [`Conv2d::backward_reference`] (α = 1) up to rounding. Errors: `Error::Shape` when an
    /// array does not fit the layer.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<F: Real>(
        &self,
        w: ArrayView2<F>,
        x: ArrayView2<F>,
        delta: ArrayView2<F>,
        alpha: F,
        grad_w: ArrayViewMut2<F>,
        grad_b: ArrayViewMut1<F>,
        grad_x: Option<ArrayViewMut2<F>>,
    ) -> Result<()> {
        self.backward_in_chunks(w, x, delta, alpha, grad_w, grad_b, grad_x, self.chunk_images())
    }

    /// As [`Conv2d::backward`], at most `chunk_images` images at a time.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_in_chunks<F: Real>(
        &self,
        w: ArrayView2<F>,
        x: ArrayView2<F>,
        delta: ArrayView2<F>,
        alpha: F,
        mut grad_w: ArrayViewMut2<F>,
        mut grad_b: ArrayViewMut1<F>,
        mut grad_x: Option<ArrayViewMut2<F>>,
        chunk_images: usize,
    ) -> Result<()> {
        self.check_backward(w.dim(), x.dim(), delta.dim())?;
        let name = self.describe();
        check_dim(&name, "∇W", grad_w.dim(), self.weight_shape())?;
        check_len(&name, "∇b", grad_b.len(), self.filters)?;
        if let Some(gx) = &grad_x {
            check_dim(&name, "∇input", gx.dim(), x.dim())?;
        }
        let (m, positions, out_len, in_len) = (x.nrows(), self.output().plane(), self.output().len(), self.input.len());
        let (f_count, depth) = self.weight_shape();
        grad_w.fill(F::zero());
        grad_b.fill(F::zero());
        if m == 0 {
            return Ok(());
        }
        let delta: Cow<[F]> = match delta.as_slice() {
            Some(d) => Cow::Borrowed(d),
            None => Cow::Owned(delta.as_standard_layout().iter().copied().collect()),
        };

        // ∇b_f = α Σ_n (Σ_pos δ[n, f, pos]): per image in parallel, then the images in order.
        let per_image: Vec<Vec<F>> = delta
            .par_chunks(out_len)
            .map(|d_n| d_n.chunks(positions).map(|d_nf| d_nf.iter().fold(F::zero(), |s, &v| s + v)).collect())
            .collect();
        for sums in &per_image {
            grad_b.iter_mut().zip(sums).for_each(|(g, &v)| *g += v);
        }
        grad_b.mapv_inplace(|g| g * alpha);

        let chunk = chunk_images.clamp(1, m);
        let x = x.as_standard_layout();
        let pixels = x.as_slice().expect("standard layout");
        let mut patches = Array2::<F>::zeros((chunk * positions, depth));
        let mut delta_rows = Array2::<F>::zeros((chunk * positions, f_count));
        let mut grad_patches = Array2::<F>::zeros((if grad_x.is_some() { chunk * positions } else { 0 }, depth));
        let mut grad_pixels = vec![F::zero(); if grad_x.is_some() { chunk * in_len } else { 0 }];
        for start in (0..m).step_by(chunk) {
            let images = chunk.min(m - start);
            let rows = images * positions;
            let mut p = patches.slice_mut(s![..rows, ..]);
            self.gather_patches(&pixels[start * in_len..(start + images) * in_len], as_slice_mut(&mut p));
            // D[n·h′w′ + pos, f] = δ[n, f·h′w′ + pos]: δ with one row per output position.
            let mut d = delta_rows.slice_mut(s![..rows, ..]);
            let d_chunk = &delta[start * out_len..(start + images) * out_len];
            as_slice_mut(&mut d).par_chunks_mut(positions * f_count).zip(d_chunk.par_chunks(out_len)).for_each(
                |(rows_n, d_n)| {
                    for (f, d_nf) in d_n.chunks(positions).enumerate() {
                        for (pos, &v) in d_nf.iter().enumerate() {
                            rows_n[pos * f_count + f] = v;
                        }
                    }
                },
            );
            // ∇W (+)= α Dᵀ P, the chunks added in order.
            let beta = if start == 0 { F::zero() } else { F::one() };
            gemm(alpha, &d.t(), &p.view(), beta, &mut grad_w);
            if let Some(gx) = grad_x.as_mut() {
                // ∇P = D W, then each image's patch gradients folded onto its pixels.
                let mut gp = grad_patches.slice_mut(s![..rows, ..]);
                gemm(F::one(), &d.view(), &w, F::zero(), &mut gp);
                let gp = gp.view();
                let gp_values = gp.as_slice().expect("rows of a standard-layout matrix");
                let gpix = &mut grad_pixels[..images * in_len];
                gpix.par_chunks_mut(in_len)
                    .zip(gp_values.par_chunks(positions * depth))
                    .for_each(|(g_n, gp_n)| self.fold_patches(gp_n, g_n));
                let gpix = ArrayView2::from_shape((images, in_len), &*gpix).expect("sizes agree");
                gx.slice_mut(s![start..start + images, ..]).assign(&gpix);
            }
        }
        Ok(())
    }

    /// P[n·h′w′ + y·w′ + x, (c·k + i)·k + j] = in[n, c, y·s+i−p, x·s+j−p] (0 in the padding)
    /// for the images in `pixels` (c·h·w each), one image per thread.
    fn gather_patches<F: Real>(&self, pixels: &[F], patches: &mut [F]) {
        let per_image = self.output().plane() * self.patch_len();
        patches
            .par_chunks_mut(per_image)
            .zip(pixels.par_chunks(self.input.len()))
            .for_each(|(p_n, image)| self.patches_of(image, p_n));
    }

    fn patches_of<F: Real>(&self, image: &[F], p_n: &mut [F]) {
        let (ImageShape { channels, height, width }, k) = (self.input, self.kernel);
        let (ow, depth) = (self.output().width, self.patch_len());
        for (pos, row) in p_n.chunks_mut(depth).enumerate() {
            let (y, xo) = (pos / ow, pos % ow);
            // The k columns the patch reads, when all lie inside the image (the common case).
            let inside = (xo * self.stride).checked_sub(self.padding).filter(|&x0| x0 + k <= width);
            for c in 0..channels {
                for i in 0..k {
                    let dst = &mut row[(c * k + i) * k..(c * k + i + 1) * k];
                    let Some(yy) = self.source(y, i, height) else {
                        dst.fill(F::zero());
                        continue;
                    };
                    let line = &image[(c * height + yy) * width..(c * height + yy + 1) * width];
                    match inside {
                        Some(x0) => dst.copy_from_slice(&line[x0..x0 + k]),
                        None => {
                            for (j, v) in dst.iter_mut().enumerate() {
                                *v = self.source(xo, j, width).map_or(F::zero(), |xx| line[xx]);
                            }
                        }
                    }
                }
            }
        }
    }

    /// The adjoint of [`Conv2d::patches_of`]: each pixel of `grad_image` (c·h·w) becomes the
    /// sum of the patch-matrix entries that read it, added in patch order; entries in the
    /// padding are dropped.
    fn fold_patches<F: Real>(&self, gp_n: &[F], grad_image: &mut [F]) {
        let (ImageShape { channels, height, width }, k) = (self.input, self.kernel);
        let (ow, depth) = (self.output().width, self.patch_len());
        grad_image.fill(F::zero());
        for (pos, row) in gp_n.chunks(depth).enumerate() {
            let (y, xo) = (pos / ow, pos % ow);
            for c in 0..channels {
                for i in 0..k {
                    let Some(yy) = self.source(y, i, height) else { continue };
                    let line = &mut grad_image[(c * height + yy) * width..(c * height + yy + 1) * width];
                    let src = &row[(c * k + i) * k..(c * k + i + 1) * k];
                    for (j, &v) in src.iter().enumerate() {
                        if let Some(xx) = self.source(xo, j, width) {
                            line[xx] += v;
                        }
                    }
                }
            }
        }
    }
}

/// The values of a leading-rows slice of a standard-layout matrix.
fn as_slice_mut<'a, F>(a: &'a mut ArrayViewMut2<'_, F>) -> &'a mut [F] {
    a.as_slice_mut().expect("leading rows of a standard-layout matrix are contiguous")
}
