//! 2-D convolution with PyTorch's `nn.Conv2d` semantics (MATH.md, "Layers beyond dense",
//! Convolution): a cross-correlation of f filters of c × k × k over m images of c × h × w,
//! stride s, zero padding p, giving f × h′ × w′ with h′ = ⌊(h + 2p − k)/s⌋ + 1 (and w′ alike).
//!
//! Two implementations of the same maths, the second checked against the first
//! (tests/layers.rs):
//! - [`Conv2d::forward_reference`], [`Conv2d::backward_reference`]: f64 loops that read like
//!   MATH.md's formula, one output value (or one δ) at a time;
//! - [`Conv2d::forward`], [`Conv2d::backward`] (and [`Conv2d::forward_into`],
//!   [`Conv2d::backward_from_patches`], which keep the patch matrix from one to the other in
//!   the caller's buffers): the fast path in f32 or f64, with the patch matrix P (one row per
//!   output position (n, y, x), one column per (c, i, j); "im2col") and the project's GEMM.
//!   Forward, one image per task: P_n gathered, out_n = W P_nᵀ + b (f × h′w′, already the
//!   image's NCHW output), the activation applied while it is in cache. Backward: δ
//!   rearranged to D (f × m·h′w′, one row per filter; the activation's derivative applied on
//!   the way), ∇W = α D P as one product over the batch, ∇b = α Σ D; per image
//!   ∇P_nᵀ = Wᵀ D_n, written over the spent P_n and folded back onto the pixels that each
//!   entry read ("col2im"). These forms are the fastest of those measured with the `gemm`
//!   crate on LeNet's shapes (BENCHMARKS.md: ∇W against a transposed P ran at a fifth of the
//!   rate). Each sum runs in an order fixed by the shapes, so the bits do not depend on the
//!   number of threads.
//!
//! Layouts (see the [module notes](super)): images and outputs are m × (c·h·w) row-major
//! batches; W is f × (c·k·k), row f being PyTorch's `weight[f]` flattened, so W[f, c, i, j]
//! is at column (c·k + i)·k + j — θ can hold it as `torch.nn.Conv2d(c, f, k).weight.flatten()`.
//!
//! This module computes one layer; it does not own parameters, activations or θ.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2, Axis, s};
use rayon::prelude::*;

use super::{ImageShape, check_cols, check_dim, check_len, checked_len};
use crate::cpu::{Real, gemm, gemm_serial};
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
    /// ∂L/∂W (f × c·k·k).
    pub weight: Array2<f64>,
    /// ∂L/∂b (f).
    pub bias: Array1<f64>,
    /// ∂L/∂input (m × c·h·w).
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

    /// Images per chunk of [`Conv2d::forward`] and [`Conv2d::backward`]: as many as keep
    /// the patch matrix within `CHUNK_VALUES` (1 M) values, at least one.
    pub fn chunk_images(&self) -> usize {
        (CHUNK_VALUES / self.patches_per_image().max(1)).max(1)
    }

    /// c·k²·h′w′: values of one image's patch matrix.
    pub fn patches_per_image(&self) -> usize {
        self.output().plane() * self.patch_len()
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
        let (m, out_len) = (x.nrows(), self.output().len());
        let mut out = Array2::zeros((m, out_len));
        if m == 0 {
            return Ok(out);
        }
        let chunk = chunk_images.clamp(1, m);
        let mut patches = vec![F::zero(); chunk * self.patches_per_image()];
        let out_values = out.as_slice_mut().expect("a new array is contiguous");
        for (start, out_chunk) in (0..m).step_by(chunk).zip(out_values.chunks_mut(chunk * out_len)) {
            let images = out_chunk.len() / out_len;
            let p = &mut patches[..images * self.patches_per_image()];
            self.forward_into(w, b, x.slice(s![start..start + images, ..]), p, out_chunk, |_| {})?;
        }
        Ok(out)
    }

    /// The fast path's forward pass into the caller's buffers. The patch matrix of the batch
    /// is kept in `patches`: m·h′w′ rows (n·h′w′ + y·w′ + x) × c·k² columns ((c·k + i)·k + j)
    /// holding in[n, c, y·s+i−p, x·s+j−p] (0 in the padding), image n's rows P_n
    /// contiguous. One image per task: P_n is gathered, then out_n = W P_nᵀ + b (f × h′w′:
    /// the image's output, already in NCHW order), then `epilogue(out_n)` (e.g. the
    /// activation, while the values are in cache). `patches` (m·h′w′·c·k² values) is what
    /// [`Conv2d::backward_from_patches`] reads; `out` is m × f·h′·w′ row-major. Errors:
    /// `Error::Shape` when an array does not fit the layer.
    pub fn forward_into<F: Real>(
        &self,
        w: ArrayView2<F>,
        b: ArrayView1<F>,
        x: ArrayView2<F>,
        patches: &mut [F],
        out: &mut [F],
        epilogue: impl Fn(&mut [F]) + Sync,
    ) -> Result<()> {
        self.check_forward(w.dim(), b.len(), x.dim())?;
        let name = self.describe();
        let (m, positions, out_len) = (x.nrows(), self.output().plane(), self.output().len());
        check_len(&name, "the patch buffer", patches.len(), m * self.patches_per_image())?;
        check_len(&name, "the output buffer", out.len(), m * out_len)?;
        if m == 0 {
            return Ok(());
        }
        let x = x.as_standard_layout();
        let pixels = x.as_slice().expect("standard layout");
        let b = b.as_standard_layout();
        let b = b.as_slice().expect("standard layout");
        patches
            .par_chunks_mut(self.patches_per_image())
            .zip(out.par_chunks_mut(out_len))
            .zip(pixels.par_chunks(self.input.len()))
            .for_each(|((p_n, out_n), image)| {
                self.patches_of(image, p_n);
                let p_n = ArrayView2::from_shape((positions, self.patch_len()), &*p_n).expect("sizes agree");
                let mut z_n = ArrayViewMut2::from_shape((self.filters, positions), &mut *out_n).expect("sizes agree");
                gemm_serial(F::one(), &w, &p_n.t(), F::zero(), &mut z_n);
                for (z_f, &b_f) in out_n.chunks_mut(positions).zip(b) {
                    z_f.iter_mut().for_each(|z| *z += b_f);
                }
                epilogue(out_n);
            });
        Ok(())
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

    /// As [`Conv2d::backward`], at most `chunk_images` images at a time (∇W and ∇b add the
    /// chunks in order).
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
        let (m, in_len, out_len) = (x.nrows(), self.input.len(), self.output().len());
        grad_w.fill(F::zero());
        grad_b.fill(F::zero());
        if m == 0 {
            return Ok(());
        }
        let chunk = chunk_images.clamp(1, m);
        let x = x.as_standard_layout();
        let pixels = x.as_slice().expect("standard layout");
        let delta = delta.as_standard_layout();
        let delta = delta.as_slice().expect("standard layout");
        let mut patches = vec![F::zero(); chunk * self.patches_per_image()];
        let mut by_filter = vec![F::zero(); chunk * out_len];
        let mut grad_pixels = vec![F::zero(); if grad_x.is_some() { chunk * in_len } else { 0 }];
        for start in (0..m).step_by(chunk) {
            let images = chunk.min(m - start);
            let p = &mut patches[..images * self.patches_per_image()];
            self.gather_patches(&pixels[start * in_len..(start + images) * in_len], p);
            let d = &delta[start * out_len..(start + images) * out_len];
            let gpix = grad_x.is_some().then(|| &mut grad_pixels[..images * in_len]);
            let by_filter = &mut by_filter[..images * out_len];
            let (gw, gb) = (grad_w.view_mut(), grad_b.view_mut());
            self.backward_chunk(w, p, d, |_, d, to| to.copy_from_slice(d), alpha, gw, gb, gpix, by_filter, start > 0);
            if let Some(gx) = grad_x.as_mut() {
                let gpix =
                    ArrayView2::from_shape((images, in_len), &grad_pixels[..images * in_len]).expect("sizes agree");
                gx.slice_mut(s![start..start + images, ..]).assign(&gpix);
            }
        }
        Ok(())
    }

    /// The fast path's backward pass from the patch matrix that [`Conv2d::forward_into`]
    /// kept (`patches`, P of m images), with δ = δ_out ⊙ f′ written by
    /// `times_derivative(i, run of δ_out from value i, destination)` for runs of δ_out
    /// (m × f·h′·w′ row-major; the layer's activation derivative, or
    /// `|_, d, to| to.copy_from_slice(d)` when δ_out is already δ):
    /// - D = δ with one row per filter (f × m·h′w′, built in `by_filter`, f·m·h′w′ values of
    ///   scratch), ∇b ← α·Σ δ, the images added in order;
    /// - ∇W ← α·D P, one product over the whole batch;
    /// - when `grad_x` (m × c·h·w) is given, per image ∇P_nᵀ = Wᵀ D_n (written over P_nᵀ,
    ///   which is spent), folded back onto the pixels that each entry read ("col2im").
    ///
    /// ∇W and ∇b are overwritten. Every sum runs in an order fixed by the shapes, so the bits
    /// do not depend on the number of threads. Errors: `Error::Shape` when a buffer does not
    /// fit the layer.
    #[allow(clippy::too_many_arguments)]
    pub fn backward_from_patches<F: Real>(
        &self,
        w: ArrayView2<F>,
        patches: &mut [F],
        delta_out: &[F],
        times_derivative: impl Fn(usize, &[F], &mut [F]) + Sync,
        alpha: F,
        grad_w: ArrayViewMut2<F>,
        grad_b: ArrayViewMut1<F>,
        grad_x: Option<&mut [F]>,
        by_filter: &mut [F],
    ) -> Result<()> {
        let name = self.describe();
        let m = patches.len() / self.patches_per_image().max(1);
        check_dim(&name, "W", w.dim(), self.weight_shape())?;
        check_len(&name, "the patch buffer", patches.len(), m * self.patches_per_image())?;
        check_len(&name, "δ", delta_out.len(), m * self.output().len())?;
        check_dim(&name, "∇W", grad_w.dim(), self.weight_shape())?;
        check_len(&name, "∇b", grad_b.len(), self.filters)?;
        check_len(&name, "the scratch buffer", by_filter.len(), m * self.output().len())?;
        if let Some(gx) = &grad_x {
            check_len(&name, "∇input", gx.len(), m * self.input.len())?;
        }
        let (gw, gb) = (grad_w, grad_b);
        self.backward_chunk(w, patches, delta_out, times_derivative, alpha, gw, gb, grad_x, by_filter, false);
        Ok(())
    }

    /// [`Conv2d::backward_from_patches`] on checked buffers; with `accumulate`, ∇W and ∇b
    /// are added to instead of overwritten (the chunks of [`Conv2d::backward_in_chunks`]).
    #[allow(clippy::too_many_arguments)]
    fn backward_chunk<F: Real>(
        &self,
        w: ArrayView2<F>,
        patches: &mut [F],
        delta_out: &[F],
        times_derivative: impl Fn(usize, &[F], &mut [F]) + Sync,
        alpha: F,
        mut grad_w: ArrayViewMut2<F>,
        mut grad_b: ArrayViewMut1<F>,
        grad_x: Option<&mut [F]>,
        by_filter: &mut [F],
        accumulate: bool,
    ) {
        let (positions, out_len, depth) = (self.output().plane(), self.output().len(), self.patch_len());
        let m = delta_out.len() / out_len;
        if m == 0 {
            if !accumulate {
                grad_w.fill(F::zero());
                grad_b.fill(F::zero());
            }
            return;
        }
        let cols = m * positions;
        // D[f, n·h′w′ + pos] = δ[n, f·h′w′ + pos], and ∇b_f = α Σ_n (Σ_pos δ[n, f, pos]), the
        // images added in order: one filter per task.
        let sums: Vec<F> = by_filter
            .par_chunks_mut(cols)
            .enumerate()
            .map(|(f, d_f)| {
                let mut sum = F::zero();
                for (n, d_fn) in d_f.chunks_mut(positions).enumerate() {
                    let at = n * out_len + f * positions;
                    times_derivative(at, &delta_out[at..at + positions], d_fn);
                    sum += lane_sum(d_fn);
                }
                sum
            })
            .collect();
        for (g, &s) in grad_b.iter_mut().zip(&sums) {
            *g = if accumulate { *g + alpha * s } else { alpha * s };
        }
        // ∇W = α D P + β ∇W: one product over the batch.
        let d = ArrayView2::from_shape((self.filters, cols), &*by_filter).expect("sizes agree");
        let p = ArrayView2::from_shape((cols, depth), &*patches).expect("sizes agree");
        let beta = if accumulate { F::one() } else { F::zero() };
        gemm(alpha, &d, &p, beta, &mut grad_w);
        if let Some(grad_x) = grad_x {
            // ∇P_nᵀ = Wᵀ D_n (c·k² × h′w′) over the spent P_n, then folded onto image n's pixels.
            patches
                .par_chunks_mut(self.patches_per_image())
                .zip(d.axis_chunks_iter(Axis(1), positions).into_par_iter())
                .zip(grad_x.par_chunks_mut(self.input.len()))
                .for_each(|((gp_n, d_n), g_n)| {
                    let mut gp_n = ArrayViewMut2::from_shape((depth, positions), gp_n).expect("sizes agree");
                    gemm_serial(F::one(), &w.t(), &d_n, F::zero(), &mut gp_n);
                    self.fold_columns(gp_n.view(), g_n);
                });
        }
    }

    /// P[n·h′w′ + y·w′ + x, (c·k + i)·k + j] = in[n, c, y·s+i−p, x·s+j−p] (0 in the padding)
    /// for the images in `pixels` (c·h·w each), one image per task.
    fn gather_patches<F: Real>(&self, pixels: &[F], patches: &mut [F]) {
        patches
            .par_chunks_mut(self.patches_per_image())
            .zip(pixels.par_chunks(self.input.len()))
            .for_each(|(p_n, image)| self.patches_of(image, p_n));
    }

    /// One image's P_n (h′w′ × c·k²): each row one patch, copied as runs of k pixels.
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
                        Some(x0) => copy_run(dst, &line[x0..x0 + k]),
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

    /// The columns [x_lo, x_hi) of an output row whose kernel column j reads inside the
    /// image at stride 1 (x + j − p in [0, w)); the others read the zero padding.
    #[inline]
    fn inside_columns(&self, j: usize) -> (usize, usize) {
        let ow = self.output().width;
        let lo = self.padding.saturating_sub(j).min(ow);
        let hi = (self.input.width + self.padding).saturating_sub(j).min(ow).max(lo);
        (lo, hi)
    }

    /// The adjoint of [`Conv2d::patches_of`] ("col2im"), from ∇P_nᵀ (c·k² × h′w′): each pixel
    /// of `grad_image` (c·h·w) becomes the sum of the entries that read it, added in row order
    /// (c, i, j), then y; entries in the padding are dropped. At stride 1 each (row, y) adds
    /// one run of values to one run of pixels.
    fn fold_columns<F: Real>(&self, gp_n: ArrayView2<F>, grad_image: &mut [F]) {
        let (ImageShape { channels, height, width }, k) = (self.input, self.kernel);
        let ow = self.output().width;
        grad_image.fill(F::zero());
        for c in 0..channels {
            for i in 0..k {
                for j in 0..k {
                    let row = gp_n.row((c * k + i) * k + j);
                    let row = row.as_slice().expect("rows of a row-major block are contiguous");
                    let (lo, hi) = self.inside_columns(j);
                    for (y, src) in row.chunks(ow).enumerate() {
                        let Some(yy) = self.source(y, i, height) else { continue };
                        let line = &mut grad_image[(c * height + yy) * width..(c * height + yy + 1) * width];
                        if self.stride == 1 && hi > lo {
                            let x0 = lo + j - self.padding;
                            line[x0..x0 + hi - lo].iter_mut().zip(&src[lo..hi]).for_each(|(g, &v)| *g += v);
                        } else if self.stride > 1 {
                            for (x, &v) in src.iter().enumerate() {
                                if let Some(xx) = self.source(x, j, width) {
                                    line[xx] += v;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Σ v in 8 interleaved partial sums added at the end (a fixed order, so the same bits on
/// every call; 8 independent chains instead of one, so the sum vectorises).
fn lane_sum<F: Real>(v: &[F]) -> F {
    let mut lanes = [F::zero(); 8];
    let mut chunks = v.chunks_exact(8);
    for c in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(c) {
            *l += x;
        }
    }
    let tail = chunks.remainder().iter().fold(F::zero(), |s, &x| s + x);
    lanes.iter().fold(tail, |s, &l| s + l)
}

/// dst ← src for the short runs of a patch row: inline moves for the common kernel sides (a
/// `copy_from_slice` of 5 values is a call to memmove, which was most of the gather).
#[inline]
fn copy_run<F: Copy>(dst: &mut [F], src: &[F]) {
    fn fixed<F: Copy, const N: usize>(dst: &mut [F], src: &[F]) {
        let d: &mut [F; N] = dst.try_into().expect("runs of N");
        *d = src.try_into().expect("runs of N");
    }
    match dst.len() {
        3 => fixed::<F, 3>(dst, src),
        5 => fixed::<F, 5>(dst, src),
        7 => fixed::<F, 7>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}
