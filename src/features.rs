//! Convolution of learned features over larger images, and pooling (MATH.md, "Convolution and
//! pooling of learned features"; UFLDL's self-taught learning with cnnConvolve / cnnPool):
//! the first hidden layer of an autoencoder trained on p×p patches, applied at every p×p
//! window of an n×n image, then summarised over disjoint regions.
//!
//! Three implementations of the same maths, each checked against the one before:
//! - [`convolve`] and [`pool`]: the f64 reference, loops that read like the formula;
//! - [`convolve_and_pool_cpu`]: the CPU fast path (f32 or f64) — patches gathered a chunk of
//!   images at a time and multiplied by the features with ndarray's threaded GEMM;
//! - [`GpuConvolution`]: `shaders/conv.wgsl` (a tiled matmul over patches that never builds
//!   the patch matrix) and `shaders/pool.wgsl`, in chunks of images that fit the device.
//!
//! This module computes features; it reads no files and trains nothing.
//!
//! ## Layouts
//! - **Images**: one per row of an m × (c·n²) matrix, channel-major: value (ch, y, x) of an
//!   image is at column (ch·n + y)·n + x. An MNIST row (c = 1, n = 28) is already this.
//! - **Features** (the autoencoder's input layout): W is k × (c·p²), row f is feature f and
//!   its value (ch, u, v) is at column (ch·p + u)·p + v — each channel's p×p patch row-major,
//!   the channels one after another, as the patches the autoencoder was trained on must be.
//! - **Convolved features**: (images, features, d, d) with d = n − p + 1, C order; entry
//!   (i, f, y, x) = f(b_f + Σ_{ch,u,v} W_f[ch, u, v] · image_i[ch, y + u, x + v]), i.e. the
//!   hidden unit's activation of the patch whose top-left corner is (y, x) (a cross-
//!   correlation, which is what UFLDL's flipped `conv2` computes).
//! - **Pooled features**: (images, features, q, q) with q = d / s for pool size s, C order;
//!   entry (i, f, py, px) is the mean or max of the convolved features over rows
//!   py·s … py·s + s − 1 and columns px·s … px·s + s − 1.
//!
//! Pooling regions must tile the convolved map exactly: a pool size that does not divide d is
//! refused (the message lists the sizes that do) rather than silently dropping the edge.
//!
//! Whitening (ZCA or PCA) the autoencoder was trained behind is folded into the features:
//! with y = M(x − μ) the hidden layer computes W y + b = (W M) x + (b − W M μ), so
//! W' = W M and b' = b − W' μ act on raw pixels.

use std::time::Instant;

use ndarray::{Array1, Array2, Array4, ArrayView2, ArrayView4, Axis, s};

use crate::cpu::net::activate;
use crate::cpu::{Real, gemm};
use crate::data::Whitening;
use crate::gpu::kernels::{ConvParams, FeatureKernels, PoolParams, act_code};
use crate::gpu::{Gpu, max_buffer_bytes, poison, staging, storage};
use crate::model::{Activation, NetSpec, ThetaLayout};
use crate::{Error, Result};

/// How a pooling region is summarised: the same kind as the pooling layers'.
pub use crate::layers::pool2d::PoolKind;

/// Pooling over disjoint `size` × `size` regions. Size 1 keeps every convolved feature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pooling {
    /// Side of a pooling region, in convolved features.
    pub size: usize,
    /// Mean or max over a region.
    pub kind: PoolKind,
}

/// The sizes of one convolution: n×n images with c channels, p×p features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Side n of the square images, in pixels.
    pub image_size: usize,
    /// Channels c of the images (1 grey, 3 colour).
    pub channels: usize,
    /// Side p of the square features (patches), in pixels.
    pub patch: usize,
}

impl Geometry {
    /// d = n − p + 1: the side of a convolved feature map (valid convolution).
    pub fn conv_size(&self) -> usize {
        self.image_size - self.patch + 1
    }

    /// c·n²: values per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.image_size * self.image_size
    }

    /// c·p²: values per patch (the autoencoder's inputs).
    pub fn patch_len(&self) -> usize {
        self.channels * self.patch * self.patch
    }

    /// q = d / s, or an error saying which pool sizes tile the d × d map.
    pub fn pooled_size(&self, pool: usize) -> Result<usize> {
        let (n, p) = (self.image_size, self.patch);
        pooled_side(self.conv_size(), pool, &format!(" ({n}×{n} images, {p}×{p} features)"))
    }

    /// Checks that `images` holds at least one image of c·n² values, all finite.
    fn check_images<T: Copy>(&self, images: &ArrayView2<'_, T>, to_f64: impl Fn(T) -> f64) -> Result<()> {
        let (n, c) = (self.image_size, self.channels);
        if images.ncols() != self.image_len() {
            return Err(Error::Shape(format!(
                "each image row has {} values, but {c} channel(s) of {n}×{n} need {}: check the image size and channels",
                images.ncols(),
                self.image_len()
            )));
        }
        if images.nrows() == 0 {
            return Err(Error::Data("there are no images to convolve".into()));
        }
        if let Some(((r, col), &v)) = images.indexed_iter().find(|(_, v)| !to_f64(**v).is_finite()) {
            return Err(Error::Data(format!(
                "image {r}, value {col} is {}: every pixel must be a finite number",
                to_f64(v)
            )));
        }
        Ok(())
    }
}

/// q = d / s for d × d maps pooled over s × s regions, or an error listing the sizes that
/// tile the map; `context` follows the map's size in the message.
fn pooled_side(d: usize, pool: usize, context: &str) -> Result<usize> {
    if pool == 0 || !d.is_multiple_of(pool) {
        let fits: Vec<String> = (1..=d).filter(|&s| d.is_multiple_of(s)).map(|s| s.to_string()).collect();
        return Err(Error::Shape(format!(
            "pooling regions of {pool}×{pool} do not tile the {d}×{d} convolved features{context}: \
             choose a pool size that divides {d} ({})",
            fits.join(", ")
        )));
    }
    Ok(d / pool)
}

/// k learned features of p×p pixels and c channels, with their biases and activation: the
/// first hidden layer of an autoencoder, with any whitening folded in (see the module notes
/// for the layout).
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureBank {
    /// k × (c·p²), channel-major rows.
    pub weights: Array2<f64>,
    /// k.
    pub biases: Array1<f64>,
    /// The hidden activation f of the encoder (a = f(W x + b)).
    pub activation: Activation,
    /// Side p of the square patches the features were learned on, in pixels.
    pub patch: usize,
    /// Channels c of those patches.
    pub channels: usize,
}

impl FeatureBank {
    /// Features from their parts; checks that the sizes agree and the values are finite.
    pub fn new(
        weights: Array2<f64>,
        biases: Array1<f64>,
        activation: Activation,
        patch: usize,
        channels: usize,
    ) -> Result<FeatureBank> {
        if patch == 0 || channels == 0 {
            return Err(Error::Shape(format!(
                "features of {patch}×{patch} pixels and {channels} channel(s) are empty"
            )));
        }
        if weights.ncols() != channels * patch * patch || weights.nrows() != biases.len() || weights.nrows() == 0 {
            return Err(Error::Shape(format!(
                "{}×{} feature weights and {} biases do not make features of {channels} channel(s) of {patch}×{patch}",
                weights.nrows(),
                weights.ncols(),
                biases.len()
            )));
        }
        if weights.iter().chain(&biases).any(|v| !v.is_finite()) {
            return Err(Error::Data("the features hold a NaN or infinite weight".into()));
        }
        Ok(FeatureBank { weights, biases, activation, patch, channels })
    }

    /// The first hidden layer of a trained network (`spec`, θ): W⁽¹⁾'s rows are the features,
    /// b⁽¹⁾ their biases, the first hidden activation theirs. The network's inputs must be
    /// `channels` channels of p×p (channel-major) — or, with `whitening`, the whitening's
    /// outputs, and its inputs the c·p² pixels; the whitening is folded into W and b.
    pub fn from_autoencoder(
        spec: &NetSpec,
        theta: &[f64],
        channels: usize,
        whitening: Option<&Whitening>,
    ) -> Result<FeatureBank> {
        spec.validate()?;
        // A stack's first W is a conv filter bank, maxout pieces or a dense layer over an image
        // the features are not slid over as patches: taking it as p×p features would convolve
        // the wrong thing without a word.
        if spec.has_layer_stack() {
            return Err(Error::Shape(format!(
                "{} is a layer stack (conv2d, pooling or maxout), not an autoencoder: features come from the first \
                 hidden layer of a dense autoencoder trained on patches (`wgnn train autoencoder`)",
                spec.describe()
            )));
        }
        if spec.layers.len() < 3 {
            return Err(Error::Shape(format!(
                "{} has no hidden layer: features come from the first hidden layer of an autoencoder",
                spec.describe()
            )));
        }
        let layout = ThetaLayout::new(spec);
        if theta.len() != layout.len() {
            return Err(Error::Shape(format!(
                "θ has {} values but the network {} needs {}",
                theta.len(),
                spec.describe(),
                layout.len()
            )));
        }
        let w = layout.weight(theta, 0);
        let b = layout.bias(theta, 0).to_owned();
        let (weights, biases) = match whitening {
            None => (w.to_owned(), b),
            Some(white) => {
                if white.outputs != spec.inputs() || white.matrix.len() != white.outputs * white.inputs {
                    return Err(Error::Shape(format!(
                        "the whitening maps {} values to {}, but the network takes {} inputs",
                        white.inputs,
                        white.outputs,
                        spec.inputs()
                    )));
                }
                // W' = W M, b' = b − W' μ
                let folded = w.dot(&white.matrix());
                let shift = folded.dot(&Array1::from(white.mean.clone()));
                (folded, b - shift)
            }
        };
        let patch_len = weights.ncols();
        if channels == 0 || patch_len % channels != 0 {
            return Err(Error::Shape(format!(
                "the features have {patch_len} values, which is not a whole number of {channels} channel(s)"
            )));
        }
        let per_channel = patch_len / channels;
        let patch = (per_channel as f64).sqrt().round() as usize;
        if patch * patch != per_channel {
            return Err(Error::Shape(format!(
                "the features have {per_channel} values per channel, not a square patch: \
                 check --channels ({channels}) against the network's {patch_len} inputs"
            )));
        }
        FeatureBank::new(weights, biases, spec.hidden_activations[0], patch, channels)
    }

    /// k: the number of features.
    pub fn count(&self) -> usize {
        self.weights.nrows()
    }

    /// The geometry of convolving these features over n×n images; refuses images smaller
    /// than a feature.
    pub fn geometry(&self, image_size: usize) -> Result<Geometry> {
        let g = Geometry { image_size, channels: self.channels, patch: self.patch };
        if image_size < self.patch {
            return Err(Error::Shape(format!(
                "{image_size}×{image_size} images are smaller than the {p}×{p} features: a valid convolution needs images of at least {p}×{p}",
                p = self.patch
            )));
        }
        Ok(g)
    }
}

/// The convolved features (images × k × d × d) of every image: the f64 reference, written as
/// the formula in the module notes.
pub fn convolve(features: &FeatureBank, images: ArrayView2<'_, f64>, image_size: usize) -> Result<Array4<f64>> {
    let g = features.geometry(image_size)?;
    g.check_images(&images, |v| v)?;
    let (n, p, c, d) = (g.image_size, g.patch, g.channels, g.conv_size());
    let (w, b) = (&features.weights, &features.biases);
    let mut out = Array4::zeros((images.nrows(), features.count(), d, d));
    for ((i, f, y, x), a) in out.indexed_iter_mut() {
        let mut z = b[f];
        for ch in 0..c {
            for u in 0..p {
                for v in 0..p {
                    z += w[[f, (ch * p + u) * p + v]] * images[[i, (ch * n + y + u) * n + x + v]];
                }
            }
        }
        *a = activate(features.activation, z);
    }
    Ok(out)
}

/// Pools convolved features (images × k × d × d) over disjoint regions: the f64 reference.
/// Refuses a pool size that does not divide d.
pub fn pool(conv: ArrayView4<'_, f64>, pooling: Pooling) -> Result<Array4<f64>> {
    let (m, k, d, d2) = conv.dim();
    if d != d2 {
        return Err(Error::Shape(format!("convolved features of {d}×{d2} are not square")));
    }
    let q = pooled_side(d, pooling.size, "")?;
    let sz = pooling.size;
    Ok(Array4::from_shape_fn((m, k, q, q), |(i, f, py, px)| {
        let region = conv.slice(s![i, f, py * sz..(py + 1) * sz, px * sz..(px + 1) * sz]);
        match pooling.kind {
            PoolKind::Mean => region.sum() / (sz * sz) as f64,
            PoolKind::Max => region.fold(f64::NEG_INFINITY, |best, &v| best.max(v)),
        }
    }))
}

/// Patch-matrix values gathered per chunk of the CPU fast path (4 MB in f32: the patches and
/// their products stay near the caches between the GEMM and the pooling sweep).
const CPU_CHUNK_VALUES: usize = 1 << 20;

/// The pooled features (images × k × q × q) of every image, computed in `F`: for each chunk
/// of images, the patch matrix P (one row per patch position, as the autoencoder's input) times
/// Wᵀ by GEMM, then bias, activation and pooling in one sweep. The CPU fast path; equal to
/// [`pool`] ∘ [`convolve`] up to rounding.
pub fn convolve_and_pool_cpu<F: Real>(
    features: &FeatureBank,
    images: ArrayView2<'_, F>,
    image_size: usize,
    pooling: Pooling,
) -> Result<Array4<F>> {
    let g = features.geometry(image_size)?;
    let chunk = CPU_CHUNK_VALUES / (g.conv_size().pow(2) * g.patch_len());
    convolve_and_pool_cpu_in_chunks(features, images, image_size, pooling, chunk)
}

/// As [`convolve_and_pool_cpu`], gathering the patches of at most `chunk_images` images at a
/// time (tests use it to exercise the chunking on small batches).
pub fn convolve_and_pool_cpu_in_chunks<F: Real>(
    features: &FeatureBank,
    images: ArrayView2<'_, F>,
    image_size: usize,
    pooling: Pooling,
    chunk_images: usize,
) -> Result<Array4<F>> {
    let g = features.geometry(image_size)?;
    g.check_images(&images, F::f64)?;
    let q = g.pooled_size(pooling.size)?;
    let (m, k, d, depth) = (images.nrows(), features.count(), g.conv_size(), g.patch_len());
    let w: Array2<F> = features.weights.mapv(F::of);
    let b: Vec<F> = features.biases.iter().map(|&v| F::of(v)).collect();
    let act = features.activation;
    let start_value = match pooling.kind {
        PoolKind::Mean => F::zero(),
        PoolKind::Max => F::neg_infinity(),
    };
    let mut out = Array4::from_elem((m, k, q, q), start_value);
    let chunk = chunk_images.clamp(1, m);
    let mut patches = Array2::<F>::zeros((chunk * d * d, depth));
    let mut z = Array2::<F>::zeros((chunk * d * d, k));
    // The GEMM is threaded by ndarray; gathering patches and the activation-and-pooling sweep
    // are split over threads by image here, or they would dominate on many cores.
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    for start in (0..m).step_by(chunk) {
        let end = (start + chunk).min(m);
        let (count, rows) = (end - start, (end - start) * d * d);
        let per_thread = count.div_ceil(threads);
        let block = images.slice(s![start..end, ..]);
        let block = block.as_standard_layout();
        let pixels = block.as_slice().expect("standard layout");
        std::thread::scope(|scope| {
            let groups = patches.slice_mut(s![..rows, ..]).into_axis_chunks_iter_mut(Axis(0), per_thread * d * d);
            for (group, part) in groups.enumerate() {
                let from = group * per_thread * g.image_len();
                let to = (from + per_thread * g.image_len()).min(pixels.len());
                scope.spawn(move || gather_patches(&pixels[from..to], &g, part));
            }
        });
        let mut zs = z.slice_mut(s![..rows, ..]);
        gemm(F::one(), &patches.slice(s![..rows, ..]), &w.t(), F::zero(), &mut zs);
        std::thread::scope(|scope| {
            let outs = out.slice_mut(s![start..end, .., .., ..]).into_axis_chunks_iter_mut(Axis(0), per_thread);
            let zs = zs.view().into_axis_chunks_iter(Axis(0), per_thread * d * d);
            for (z_part, out_part) in zs.zip(outs) {
                let b = &b;
                scope.spawn(move || activate_and_pool(z_part, b, act, d, pooling, out_part));
            }
        });
    }
    Ok(out)
}

/// P[(i·d + y)·d + x, (ch·p + u)·p + v] = image_i[ch, y + u, x + v] for the images in `pixels`
/// (row-major, c·n² each): each row of P is the patch at (y, x) in the autoencoder's layout.
fn gather_patches<F: Real>(pixels: &[F], g: &Geometry, mut patches: ndarray::ArrayViewMut2<'_, F>) {
    let (n, p, c, d) = (g.image_size, g.patch, g.channels, g.conv_size());
    for (row, mut patch) in patches.rows_mut().into_iter().enumerate() {
        let (i, y, x) = (row / (d * d), row / d % d, row % d);
        let patch = patch.as_slice_mut().expect("rows of a standard-layout matrix are contiguous");
        for ch in 0..c {
            for u in 0..p {
                let from = i * g.image_len() + (ch * n + y + u) * n + x;
                let to = (ch * p + u) * p;
                patch[to..to + p].copy_from_slice(&pixels[from..from + p]);
            }
        }
    }
}

/// Adds f(z + b) of every patch position (rows of `z`, i, y, x order) into its pooling region
/// of `out` (images × k × q × q, filled beforehand with 0 for mean or −∞ for max).
fn activate_and_pool<F: Real>(
    z: ArrayView2<'_, F>,
    b: &[F],
    act: Activation,
    d: usize,
    pooling: Pooling,
    mut out: ndarray::ArrayViewMut4<'_, F>,
) {
    let sz = pooling.size;
    let q = d / sz;
    let scale = F::of(1.0 / (sz * sz) as f64);
    let out = out.as_slice_mut().expect("an image range of a standard-layout array is contiguous");
    let k = b.len();
    let mut a = vec![F::zero(); k];
    for (row, zrow) in z.rows().into_iter().enumerate() {
        a.iter_mut().zip(zrow).zip(b).for_each(|((a, &z), &b)| *a = z + b);
        activate_in_place(act, &mut a);
        let (i, y, x) = (row / (d * d), row / d % d, row % d);
        let region = &mut out[i * k * q * q + (y / sz) * q + x / sz..];
        // The decisions are taken once per row, not once per value.
        match pooling.kind {
            PoolKind::Mean => a.iter().enumerate().for_each(|(f, &v)| region[f * q * q] += v * scale),
            PoolKind::Max => a.iter().enumerate().for_each(|(f, &v)| region[f * q * q] = region[f * q * q].max(v)),
        }
    }
}

/// a ← f(a) for every value. The sigmoid here picks between its two overflow-safe forms without
/// a branch (a data-dependent branch mispredicts on half the values); it equals
/// [`activate`]'s to within an ulp.
fn activate_in_place<F: Real>(act: Activation, a: &mut [F]) {
    match act {
        Activation::Sigmoid => a.iter_mut().for_each(|v| {
            let e = (-v.abs()).exp();
            let r = F::one() / (F::one() + e);
            *v = if *v >= F::zero() { r } else { e * r };
        }),
        _ => a.iter_mut().for_each(|v| *v = activate(act, *v)),
    }
}

/// Bytes of device memory one chunk may use for its images, convolved and pooled features
/// (beyond the per-binding limit), so that a large batch does not claim the whole device.
const GPU_CHUNK_BYTES: u64 = 512 << 20;

/// What one GPU run did, for reports and benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct GpuRunStats {
    /// Chunks the images were sent to the device in.
    pub chunks: usize,
    /// Images per chunk (the last may hold fewer).
    pub images_per_chunk: usize,
    /// Wall time of the run, uploads and read-backs included.
    pub seconds: f64,
}

/// Convolution and pooling on a GPU (f32): `shaders/conv.wgsl` then `shaders/pool.wgsl` for
/// each chunk of images, in one submission per chunk; only the pooled features come back.
/// Chunks are as large as the device's storage-binding limit, its dispatch limit and
/// `GPU_CHUNK_BYTES` (512 MiB) allow, and the buffers are allocated once per call and reused.
pub struct GpuConvolution<'g> {
    gpu: &'g Gpu,
    kernels: FeatureKernels,
    max_chunk_images: Option<usize>,
    poison: bool,
    last: std::cell::Cell<GpuRunStats>,
}

fn u32_of(v: usize, what: &str) -> Result<u32> {
    u32::try_from(v).map_err(|_| Error::Gpu(format!("{what} = {v} is beyond 32-bit indexing")))
}

impl<'g> GpuConvolution<'g> {
    /// Compiles the two kernels for `gpu`.
    pub fn new(gpu: &'g Gpu) -> GpuConvolution<'g> {
        GpuConvolution {
            gpu,
            kernels: FeatureKernels::new(&gpu.device),
            max_chunk_images: None,
            poison: false,
            last: Default::default(),
        }
    }

    /// Caps the images per chunk (tests use this to exercise chunking on small batches).
    pub fn set_max_chunk_images(&mut self, images: usize) {
        self.max_chunk_images = Some(images.max(1));
    }

    /// Before every chunk, fill the convolved and pooled buffers with NaN, so that an element
    /// a kernel forgot to write shows up in the result. For tests.
    pub fn set_poison(&mut self, on: bool) {
        self.poison = on;
    }

    /// Chunks, images per chunk and time of the last [`GpuConvolution::convolve_and_pool`].
    pub fn last_run(&self) -> GpuRunStats {
        self.last.get()
    }

    /// The most images one chunk holds for `g`, k features and q×q pooled maps on this device.
    pub fn chunk_images(&self, g: &Geometry, k: usize, q: usize) -> Result<usize> {
        let limits = &self.gpu.limits;
        let binding = max_buffer_bytes(limits) / 4;
        let (image, conv, pooled) = (g.image_len() as u64, (k * g.conv_size().pow(2)) as u64, (k * q * q) as u64);
        let by_binding = binding / image.max(conv).max(pooled);
        let by_budget = GPU_CHUNK_BYTES / 4 / (image + conv + 2 * pooled);
        let tiles = limits.max_compute_workgroups_per_dimension as u64 * kernel_tile();
        let by_dispatch = tiles / (g.conv_size().pow(2) as u64);
        let most = by_binding.min(by_dispatch);
        if most == 0 {
            return Err(Error::Gpu(format!(
                "one image's {conv} convolved features are more than one storage binding of this device holds \
                 ({} MB): use fewer features or smaller images, or --backend cpu",
                binding * 4 / 1_000_000
            )));
        }
        let chosen = most.min(by_budget.max(1)) as usize;
        Ok(self.max_chunk_images.map_or(chosen, |cap| cap.min(chosen)))
    }

    /// The pooled features (images × k × q × q) of every image (see the module notes for
    /// the layouts). Equal to [`convolve_and_pool_cpu`] up to f32 rounding.
    pub fn convolve_and_pool(
        &self,
        features: &FeatureBank,
        images: ArrayView2<'_, f32>,
        image_size: usize,
        pooling: Pooling,
    ) -> Result<Array4<f32>> {
        let started = Instant::now();
        let g = features.geometry(image_size)?;
        g.check_images(&images, f64::from)?;
        let q = g.pooled_size(pooling.size)?;
        let (m, k, d, depth) = (images.nrows(), features.count(), g.conv_size(), g.patch_len());
        let chunk = self.chunk_images(&g, k, q)?.min(m);
        let gpu = self.gpu;
        let device = &gpu.device;
        let weight_values = (depth + 1) * k;
        if weight_values as u64 > gpu.limits.max_storage_buffer_binding_size / 4 {
            return Err(Error::Gpu(format!(
                "{k} features of {depth} values are more than one storage binding of this device holds: use --backend cpu"
            )));
        }
        // Wᵀ (c·p² × k) then b: the layout conv.wgsl reads.
        let mut packed: Vec<f32> = features.weights.t().iter().map(|&v| v as f32).collect();
        packed.extend(features.biases.iter().map(|&v| v as f32));
        let (oom, scope) = (
            device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
            device.push_error_scope(wgpu::ErrorFilter::Validation),
        );
        let weights = gpu.upload_f32("features", &packed);
        let image_buf = storage(device, "images", chunk * g.image_len());
        let conv_buf = storage(device, "convolved features", chunk * k * d * d);
        let pooled_buf = storage(device, "pooled features", chunk * k * q * q);
        let staging = staging(device, "pooled features readback", chunk * k * q * q);
        let (act, leaky_alpha) = act_code(features.activation);
        let mut out: Vec<f32> = Vec::with_capacity(m * k * q * q);
        let mut chunks = 0;
        for start in (0..m).step_by(chunk) {
            let end = (start + chunk).min(m);
            let count = end - start;
            let block = images.slice(s![start..end, ..]);
            let block = block.as_standard_layout();
            gpu.queue.write_buffer(&image_buf, 0, bytemuck::cast_slice(block.as_slice().expect("standard layout")));
            if self.poison {
                for buf in [&conv_buf, &pooled_buf] {
                    poison(&gpu.queue, buf);
                }
            }
            let conv_params = ConvParams {
                images: u32_of(count, "images in a chunk")?,
                image_size: u32_of(g.image_size, "the image size")?,
                channels: u32_of(g.channels, "channels")?,
                patch: u32_of(g.patch, "the patch size")?,
                conv_size: u32_of(d, "the convolved size")?,
                features: u32_of(k, "features")?,
                depth: u32_of(depth, "values per patch")?,
                act,
                bias_off: u32_of(depth * k, "the bias offset")?,
                leaky_alpha,
                _pad: [0; 2],
            };
            let pool_params = PoolParams {
                maps: u32_of(count * k, "feature maps")?,
                conv_size: conv_params.conv_size,
                pool: u32_of(pooling.size, "the pool size")?,
                pooled: u32_of(q, "the pooled size")?,
                kind: (pooling.kind == PoolKind::Max) as u32,
                _pad: [0; 3],
            };
            let ops = [
                self.kernels.convolve(device, &image_buf, &weights, &conv_buf, conv_params),
                self.kernels.pool(
                    device,
                    &conv_buf,
                    &pooled_buf,
                    pool_params,
                    gpu.limits.max_compute_workgroups_per_dimension,
                ),
            ];
            let values = count * k * q * q;
            let mut encoder =
                device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("convolve and pool") });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("convolve and pool"),
                    timestamp_writes: None,
                });
                ops.iter().for_each(|op| op.record(&mut pass));
            }
            encoder.copy_buffer_to_buffer(&pooled_buf, 0, &staging, 0, (values * 4) as u64);
            gpu.queue.submit([encoder.finish()]);
            out.extend(crate::gpu::read_back(gpu, &staging, values)?);
            chunks += 1;
        }
        for s in [scope, oom] {
            if let Some(e) = pollster::block_on(s.pop()) {
                return Err(Error::Gpu(format!("the device refused the convolution: {e}")));
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        self.last.set(GpuRunStats { chunks, images_per_chunk: chunk, seconds });
        Ok(Array4::from_shape_vec((m, k, q, q), out).expect("one pooled map per image and feature"))
    }
}

/// Patch positions one convolution workgroup covers (its dispatch is limited per dimension).
fn kernel_tile() -> u64 {
    crate::gpu::kernels::CONV_TILE as u64
}
