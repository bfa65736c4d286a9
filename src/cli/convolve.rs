//! `wgnn convolve`: the features a trained autoencoder learned on p×p patches, convolved over
//! whole images and pooled (self-taught learning), written as a float32 .npy of shape
//! images × features × pooled rows × pooled columns (C order) for any other tool to read.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use ndarray::{Array2, Array4};
use ndarray_npy::WriteNpyExt;

use wgnn::data::{DataSource, Mnist, Split};
use wgnn::features::{FeatureBank, GpuConvolution, PoolKind, Pooling, convolve_and_pool_cpu};

use super::inspect::{load_model, stored_whitening};
use super::{BackendArgs, BackendChoice, Precision};

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolKindArg {
    /// The mean of each region.
    Mean,
    /// The largest value of each region.
    Max,
}

#[derive(Args, Debug)]
pub struct ConvolveArgs {
    /// The trained autoencoder: a model.safetensors file or its run folder. The units of its
    /// first hidden layer are the features (with its bias and activation); a whitening stored
    /// in the model's metadata (preprocessing.whitening) is folded into them.
    #[arg(long)]
    pub model: PathBuf,
    /// The images: npy:FILE (float, images × c·n² channel-major, images × n × n, or
    /// images × c × n × n) or mnist:DIR (28×28 digits scaled to [0, 1]).
    #[arg(long)]
    pub images: String,
    /// Side n of the square images. Default: from the .npy's shape, or 28 for MNIST.
    #[arg(long)]
    pub image_size: Option<usize>,
    /// Channels per image (colour: 3), stored one after another. Default: from a 4-D .npy, else 1.
    #[arg(long)]
    pub channels: Option<usize>,
    /// Side s of the disjoint pooling regions; it must divide n − p + 1 (1: no pooling).
    #[arg(long)]
    pub pool: usize,
    /// How each region is pooled.
    #[arg(long, value_enum, default_value_t = PoolKindArg::Mean)]
    pub pool_kind: PoolKindArg,
    /// Where to write the pooled features (.npy, float32).
    #[arg(long)]
    pub out: PathBuf,
    /// MNIST split: train or test.
    #[arg(long)]
    pub split: Option<String>,
    /// Convolve only the first N images.
    #[arg(long, value_parser = super::limit)]
    pub limit: Option<usize>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

/// Images as rows (m × c·n²), with n and c.
struct Images {
    x: Array2<f32>,
    size: usize,
    channels: usize,
    description: String,
}

fn read_images(args: &ConvolveArgs) -> anyhow::Result<Images> {
    let source: DataSource = args.images.parse().context("--images")?;
    if args.split.is_some() && !matches!(source, DataSource::Mnist(_)) {
        bail!("--split applies to mnist: images only");
    }
    let mut images = match &source {
        DataSource::Mnist(dir) => {
            let split: Split =
                args.split.as_deref().map(str::parse).transpose().context("--split")?.unwrap_or_default();
            // Only the images --limit keeps are decoded.
            let mnist = Mnist::load_selected(dir, split, None, args.limit)?;
            if mnist.rows != mnist.cols {
                bail!("{}: the images are {}×{}, not square", dir.display(), mnist.rows, mnist.cols);
            }
            if args.channels.is_some_and(|c| c != 1) {
                bail!("MNIST images have 1 channel, not --channels {}", args.channels.unwrap_or(1));
            }
            let description = format!("MNIST {split} ({})", dir.display());
            Images { x: mnist.images, size: mnist.rows, channels: 1, description }
        }
        DataSource::Npy(path) => read_npy_images(path, args.image_size, args.channels)?,
        other => bail!("--images {other}: use npy:FILE or mnist:DIR"),
    };
    if let Some(n) = args.image_size
        && n != images.size
    {
        bail!("--image-size {n}, but {} holds images of {}×{}", args.images, images.size, images.size);
    }
    match args.limit {
        Some(0) => bail!("--limit 0 leaves no images to convolve: give at least 1"),
        Some(n) if n < images.x.nrows() => {
            images.x = images.x.slice(ndarray::s![..n, ..]).to_owned();
            images.description = format!("{}, first {n}", images.description);
        }
        _ => {}
    }
    Ok(images)
}

fn read_npy_images(path: &Path, size: Option<usize>, channels: Option<usize>) -> anyhow::Result<Images> {
    let a = wgnn::npy::read_f64_dyn(path)?;
    let shape = a.shape().to_vec();
    let (m, c, n) = match shape[..] {
        [m, c, n1, n2] if n1 == n2 => {
            if channels.is_some_and(|given| given != c) {
                bail!(
                    "{}: has shape {shape:?}, {c} channel(s), not --channels {}",
                    path.display(),
                    channels.unwrap_or(c)
                );
            }
            (m, c, n1)
        }
        [m, n1, n2] if n1 == n2 => {
            if channels.is_some_and(|c| c != 1) {
                bail!(
                    "{}: has shape {shape:?}, images of one channel; store {} channels as images × c × n × n",
                    path.display(),
                    channels.unwrap_or(1)
                );
            }
            (m, 1, n1)
        }
        [m, values] => {
            let c = channels.unwrap_or(1);
            if c == 0 {
                bail!("--channels 0: images have at least one channel");
            }
            let n = match size {
                Some(n) => n,
                None => {
                    let n = ((values / c) as f64).sqrt().round() as usize;
                    if n * n * c != values {
                        bail!(
                            "{}: rows of {values} values are not {c} channel(s) of a square image: give --image-size and --channels",
                            path.display()
                        );
                    }
                    n
                }
            };
            if n * n * c != values {
                bail!(
                    "{}: rows of {values} values, but {c} channel(s) of {n}×{n} need {}: check --image-size and --channels",
                    path.display(),
                    n * n * c
                );
            }
            (m, c, n)
        }
        _ => bail!(
            "{}: has shape {shape:?}; expected images × c·n², images × n × n or images × c × n × n (square images)",
            path.display()
        ),
    };
    if m == 0 {
        bail!("{}: holds no images", path.display());
    }
    // Logical (C) order whatever the file's memory order: channel-major rows.
    let x =
        Array2::from_shape_vec((m, c * n * n), a.iter().map(|&v| v as f32).collect()).expect("the sizes were checked");
    Ok(Images { x, size: n, channels: c, description: path.display().to_string() })
}

/// Which device computes: `None` for the CPU, with a note on `auto`'s choice.
fn choose_gpu(backend: &BackendArgs) -> anyhow::Result<(Option<wgnn::gpu::Gpu>, Option<String>)> {
    match backend.backend {
        BackendChoice::Cpu => Ok((None, None)),
        BackendChoice::Gpu => Ok((Some(wgnn::gpu::Gpu::open(&backend.gpu_options())?), None)),
        BackendChoice::Auto => match wgnn::gpu::choose_adapter(&backend.gpu_options()) {
            Ok(adapter) if wgnn::gpu::is_real_gpu(&adapter.get_info()) => {
                Ok((Some(wgnn::gpu::Gpu::from_adapter(&adapter)?), None))
            }
            Ok(adapter) => Ok((
                None,
                Some(format!(
                    "the only GPU adapter is {} (software), slower than the CPU: using the CPU (--backend gpu forces it)",
                    adapter.get_info().name
                )),
            )),
            Err(_) => Ok((None, Some("no GPU adapter found: using the CPU".into()))),
        },
    }
}

pub fn run(args: ConvolveArgs) -> anyhow::Result<()> {
    if args.out.extension().is_none_or(|e| e != "npy") {
        bail!("--out {}: the pooled features are written as .npy; name the file F.npy", args.out.display());
    }
    super::refuse_overwriting_inputs("--out", &args.out, [args.images.as_str()])?;
    let ck = load_model(&args.model)?;
    // Its first layer reads another encoder's features, not pixels: no filters to slide.
    if ck.metadata.preprocessing.get("features_from").is_some_and(|f| !f.is_null()) {
        bail!(
            "--model {}: it was trained on another encoder's features (--features-from), so its weights are not filters over pixels: give an autoencoder trained on patches",
            args.model.display()
        );
    }
    let whitening = stored_whitening(&ck)?;
    let images = read_images(&args)?;
    let features = FeatureBank::from_autoencoder(&ck.spec, &ck.theta, images.channels, whitening.as_ref())
        .with_context(|| format!("--model {}", args.model.display()))?;
    let kind = match args.pool_kind {
        PoolKindArg::Mean => PoolKind::Mean,
        PoolKindArg::Max => PoolKind::Max,
    };
    let pooling = Pooling { size: args.pool, kind };
    // Refuse a bad geometry before opening a device or touching the output.
    let geometry = features.geometry(images.size)?;
    geometry.pooled_size(pooling.size).context("--pool")?;

    let (gpu, note) = choose_gpu(&args.backend)?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    let started = Instant::now();
    let (pooled, device): (Array4<f32>, String) = match &gpu {
        Some(gpu) => {
            let conv = GpuConvolution::new(gpu);
            (conv.convolve_and_pool(&features, images.x.view(), images.size, pooling)?, gpu.describe())
        }
        None => match args.backend.precision.unwrap_or(Precision::F32) {
            Precision::F32 => {
                (convolve_and_pool_cpu(&features, images.x.view(), images.size, pooling)?, "cpu f32".into())
            }
            Precision::F64 => {
                let x = images.x.mapv(f64::from);
                let pooled = convolve_and_pool_cpu(&features, x.view(), images.size, pooling)?;
                (pooled.mapv(|v| v as f32), "cpu f64".into())
            }
        },
    };
    let seconds = started.elapsed().as_secs_f64();
    wgnn::atomic::write_with(&args.out, |w| pooled.write_npy(w).map_err(|e| e.to_string()))?;
    let (m, k, q, _) = pooled.dim();
    let (n, c, p) = (images.size, images.channels, features.patch);
    println!(
        "{m} images of {c}×{n}×{n} ({}) convolved with {k} features of {p}×{p} ({}), {}-pooled over {s}×{s} in {seconds:.3} s on {device}",
        images.description,
        features.activation.name(),
        kind.name(),
        s = pooling.size
    );
    println!(
        "wrote {}: float32 {m} × {k} × {q} × {q} (images × features × pooled rows × pooled columns, C order)",
        args.out.display()
    );
    Ok(())
}
