//! Self-taught learning with convolution and pooling (UFLDL's last exercise, on MNIST):
//! 1. learn features: a sparse autoencoder on 8×8 patches cut from MNIST training digits;
//! 2. convolve them over whole 28×28 digits (21×21 maps per feature) and pool them;
//! 3. train softmax regression on the pooled features, and on raw pixels for comparison;
//! 4. report test accuracies and the time of the convolution step on the CPU and on the GPU
//!    (the GPU over every image when the adapter is a real GPU, over a few hundred on a
//!    software one such as lavapipe, where it is only a correctness check).
//!
//! Run: `cargo run --release --example conv_pool_mnist -- [DATA_DIR] [--train N] [--test N]
//! [--hidden K] [--pool S] [--pool-kind mean|max] [--gpu-images N]`; DATA_DIR holds `mnist/`
//! (default: $WGNN_DATA_DIR, else ../shared/data).
//!
//! Measured (10,000 training and 10,000 test digits, 64 features of 8×8, 2-core machine under
//! load, lavapipe as the only GPU): softmax on raw pixels 90.50% test accuracy; on mean-pooled
//! features 96.59% (pool 7: 3×3 per feature, 576 values) and 97.60% (`--pool 3`: 7×7, 3,136
//! values). Convolution + pooling of the 20,000 digits: CPU f32 6.4–11.5 s; lavapipe 0.3–0.5
//! GFLOP/s, ~15× slower than the CPU on the same 300 digits, equal to 1e-7.

use std::time::Instant;

use ndarray::{Array2, Axis, s};
use wgnn::data::{GrayImage, Mnist, Split, patches};
use wgnn::features::{FeatureBank, GpuConvolution, PoolKind, Pooling, convolve_and_pool_cpu};
use wgnn::gpu::{Gpu, GpuOptions, is_real_gpu};
use wgnn::model::{Init, NetSpec, Sparsity};
use wgnn::optim::{BackendObjective, Hooks, Method, Optimizer, Stop};
use wgnn::{Backend, CpuBackend, Error, Result, Targets};

struct Options {
    data: std::path::PathBuf,
    train: usize,
    test: usize,
    hidden: usize,
    patch: usize,
    patches: usize,
    pool: usize,
    kind: PoolKind,
    gpu_images: usize,
}

fn options() -> Result<Options> {
    let default_dir = std::env::var_os("WGNN_DATA_DIR").map_or_else(|| "../shared/data".into(), Into::into);
    let mut o = Options {
        data: default_dir,
        train: 10_000,
        test: 10_000,
        hidden: 64,
        patch: 8,
        patches: 20_000,
        pool: 7,
        kind: PoolKind::Mean,
        gpu_images: 500,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let bad = |what: &str| Error::Data(format!("{what}: see the usage at the top of examples/conv_pool_mnist.rs"));
    while i < args.len() {
        let value = || args.get(i + 1).ok_or_else(|| bad(&args[i]));
        let number = || value()?.parse::<usize>().map_err(|_| bad(&args[i]));
        match args[i].as_str() {
            "--train" => o.train = number()?,
            "--test" => o.test = number()?,
            "--hidden" => o.hidden = number()?,
            "--patches" => o.patches = number()?,
            "--pool" => o.pool = number()?,
            "--gpu-images" => o.gpu_images = number()?,
            "--pool-kind" => {
                o.kind = match value()?.as_str() {
                    "mean" => PoolKind::Mean,
                    "max" => PoolKind::Max,
                    other => return Err(bad(other)),
                }
            }
            dir if !dir.starts_with("--") => {
                o.data = dir.into();
                i += 1;
                continue;
            }
            other => return Err(bad(other)),
        }
        i += 2;
    }
    Ok(o)
}

/// Minimises the backend's cost from θ with L-BFGS.
fn lbfgs(backend: &mut dyn Backend, theta: &mut [f64], iterations: usize) -> Result<f64> {
    let mut objective = BackendObjective::new(backend);
    let mut optimizer = Optimizer::new(Method::lbfgs())?;
    let summary =
        optimizer.run(&mut objective, theta, &Stop::FULL_BATCH.with_max_iterations(iterations), &mut Hooks::new())?;
    Ok(summary.cost.unwrap_or(f64::NAN))
}

/// Trains softmax regression on (x, labels) and returns its accuracy on (x_test, labels_test).
fn softmax_accuracy(
    x: &Array2<f32>,
    labels: &[usize],
    x_test: &Array2<f32>,
    labels_test: &[usize],
    weight_decay: f64,
) -> Result<(f64, f64)> {
    let started = Instant::now();
    let spec = NetSpec::softmax_regression(x.ncols(), 10, weight_decay)?;
    let mut backend = CpuBackend::<f32>::new(spec.clone())?;
    backend.set_data(x.into(), Targets::Labels(labels))?;
    let mut theta = Init::Normal { epsilon: 0.005 }.theta(&spec, 1);
    lbfgs(&mut backend, &mut theta, 300)?;
    let predicted = backend.classify(&theta, x_test.into())?;
    let correct = predicted.iter().zip(labels_test).filter(|(p, l)| p == l).count();
    Ok((correct as f64 / labels_test.len() as f64, started.elapsed().as_secs_f64()))
}

/// Pooled features as rows (images × k·q²), the layout a classifier takes.
fn rows(pooled: ndarray::Array4<f32>) -> Array2<f32> {
    let m = pooled.dim().0;
    let per = pooled.len() / m;
    pooled.into_shape_with_order((m, per)).expect("C order")
}

fn main() -> Result<()> {
    // Mesa's Wayland probe complains on headless machines unless this names a folder (as in
    // src/main.rs); nothing is written there.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    let o = options()?;
    let dir = o.data.join("mnist");
    let train = Mnist::load(&dir, Split::Train)?.take(o.train);
    let test = Mnist::load(&dir, Split::Test)?.take(o.test);
    let n = train.rows;
    println!("MNIST: {} training and {} test digits of {n}×{n}", train.len(), test.len());

    // 1. Features from patches of the training digits (raw pixels in [0, 1]).
    let started = Instant::now();
    let images: Vec<GrayImage> =
        train.images.axis_iter(Axis(0)).map(|row| GrayImage::new(n, n, row.to_vec())).collect::<Result<_>>()?;
    let patch_rows = patches::sample_patches(&images, o.patch, o.patches, 7)?;
    let inputs = o.patch * o.patch;
    let spec = NetSpec::sparse_autoencoder(inputs, o.hidden, 3e-3, Sparsity { target: 0.1, weight: 3.0 })?;
    let mut ae = CpuBackend::<f32>::new(spec.clone())?;
    ae.set_data((&patch_rows).into(), Targets::Inputs)?;
    let mut theta = Init::Uniform.theta(&spec, 7);
    let cost = lbfgs(&mut ae, &mut theta, 400)?;
    println!(
        "autoencoder {}: J = {cost:.5} after L-BFGS on {} patches ({:.1} s)",
        spec.describe(),
        o.patches,
        started.elapsed().as_secs_f64()
    );
    let features = FeatureBank::from_autoencoder(&spec, &theta, 1, None)?;

    // 2. Convolution and pooling: the CPU fast path over every digit.
    let pooling = Pooling { size: o.pool, kind: o.kind };
    let q = features.geometry(n)?.pooled_size(o.pool)?;
    let d = n - o.patch + 1;
    let started = Instant::now();
    let pooled_train = convolve_and_pool_cpu(&features, train.images.view(), n, pooling)?;
    let pooled_test = convolve_and_pool_cpu(&features, test.images.view(), n, pooling)?;
    let cpu_seconds = started.elapsed().as_secs_f64();
    let total = train.len() + test.len();
    let gflop = |images: usize| (images * d * d * o.hidden * inputs * 2) as f64 / 1e9;
    println!(
        "convolve + {}-pool {total} digits ({} features, {d}×{d} maps → {q}×{q}): CPU f32 {cpu_seconds:.2} s ({:.1} GFLOP/s)",
        o.kind.name(),
        o.hidden,
        gflop(total) / cpu_seconds
    );

    // The GPU on the same work: all of it on a real GPU, a slice of it on a software adapter.
    match Gpu::open(&GpuOptions::default()) {
        Ok(gpu) => {
            let real = is_real_gpu(&gpu.info);
            let count = if real { test.len() } else { o.gpu_images.min(test.len()) };
            let x = test.images.slice(s![..count, ..]);
            let conv = GpuConvolution::new(&gpu);
            conv.convolve_and_pool(&features, x, n, pooling)?; // warm-up: pipelines, buffers
            let gpu_out = conv.convolve_and_pool(&features, x, n, pooling)?;
            let gpu_seconds = conv.last_run().seconds;
            let started = Instant::now();
            let cpu_out = convolve_and_pool_cpu(&features, x, n, pooling)?;
            let cpu_seconds = started.elapsed().as_secs_f64();
            let diff = (&gpu_out - &cpu_out).mapv(|v| (v as f64).powi(2)).sum().sqrt()
                / cpu_out.mapv(|v| (v as f64).powi(2)).sum().sqrt();
            println!(
                "GPU {} on {count} test digits: {gpu_seconds:.3} s ({:.1} GFLOP/s, {} chunk(s)); CPU f32 on the same: {cpu_seconds:.3} s; ‖gpu − cpu‖/‖cpu‖ = {diff:.1e}",
                gpu.describe(),
                gflop(count) / gpu_seconds,
                conv.last_run().chunks
            );
        }
        Err(e) => println!("no GPU timing: {e}"),
    }

    // 3. Softmax on pooled features against softmax on raw pixels.
    let (pooled_acc, pooled_s) =
        softmax_accuracy(&rows(pooled_train), &train.labels, &rows(pooled_test), &test.labels, 1e-4)?;
    let (raw_acc, raw_s) = softmax_accuracy(&train.images, &train.labels, &test.images, &test.labels, 1e-4)?;
    println!(
        "softmax test accuracy: pooled features ({} per digit) {:.2}% ({pooled_s:.1} s), raw pixels ({}) {:.2}% ({raw_s:.1} s)",
        o.hidden * q * q,
        100.0 * pooled_acc,
        n * n,
        100.0 * raw_acc
    );
    Ok(())
}
