//! Convolution and pooling of learned features (issue 8): the f64 reference against the
//! autoencoder's own activation of every patch (UFLDL's check, to 1e-9), pooling against a
//! direct loop, the CPU fast path and the GPU kernels against the reference (GPU: poisoned
//! outputs, ‖gpu − cpu‖/‖cpu‖ < 1e-4, awkward shapes, forced chunking), clear refusals, and
//! `wgnn convolve` writing the documented layout.

mod common;

use std::path::Path;

use assert_cmd::Command;
use ndarray::{Array1, Array2, Array4, ArrayView4, ShapeBuilder};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::checkpoint::{Checkpoint, Metadata};
use wgnn::data::{Components, Whitening};
use wgnn::features::{self, FeatureBank, GpuConvolution, PoolKind, Pooling, convolve_and_pool_cpu};
use wgnn::gpu::{Gpu, GpuOptions};
use wgnn::model::{Activation, Init, NetSpec, Output, ThetaLayout};
use wgnn::{Backend, CpuBackend};

const GPU_TOLERANCE: f64 = 1e-4;

fn open_gpu() -> Gpu {
    Gpu::open(&GpuOptions::default()).expect("a GPU adapter (lavapipe in CI: apt-get install mesa-vulkan-drivers)")
}

/// An autoencoder c·p² → hidden → c·p² (or whitened inputs → hidden → whitened inputs) with
/// random weights and, unlike a fresh initialisation, random biases too.
fn autoencoder(inputs: usize, hidden: usize, act: Activation, seed: u64) -> (NetSpec, Vec<f64>) {
    let spec = NetSpec::new(&[inputs, hidden, inputs], act, Output::SquaredError(Activation::Identity)).unwrap();
    let mut theta = Init::Uniform.theta(&spec, seed);
    let layout = ThetaLayout::new(&spec);
    let mut rng = StdRng::seed_from_u64(seed + 100);
    for l in 0..layout.num_layers() {
        layout.bias_mut(&mut theta, l).iter_mut().for_each(|b| *b = rng.random_range(-0.5..0.5));
    }
    (spec, theta)
}

fn random_bank(k: usize, p: usize, c: usize, act: Activation, rng: &mut StdRng) -> FeatureBank {
    let w = common::uniform(k, c * p * p, -0.5, 0.5, rng);
    let b = Array1::from_shape_simple_fn(k, || rng.random_range(-0.5..0.5));
    FeatureBank::new(w, b, act, p, c).unwrap()
}

/// The patch of image `i` (channel-major rows of c·n²) whose top-left corner is (y, x), in the
/// autoencoder's input layout.
fn extract_patch(images: &Array2<f64>, i: usize, (c, n, p): (usize, usize, usize), y: usize, x: usize) -> Vec<f64> {
    let mut patch = Vec::with_capacity(c * p * p);
    for ch in 0..c {
        for u in 0..p {
            for v in 0..p {
                patch.push(images[[i, ch * n * n + (y + u) * n + (x + v)]]);
            }
        }
    }
    patch
}

fn rel(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    assert!(got.iter().all(|v| v.is_finite()), "unwritten (NaN) or non-finite output");
    let d: f64 = got.iter().zip(want).map(|(g, w)| (g - w).powi(2)).sum();
    let n: f64 = want.iter().map(|w| w * w).sum();
    if n == 0.0 { d.sqrt() } else { (d / n).sqrt() }
}

fn flat<T: Copy + Into<f64>>(a: ArrayView4<'_, T>) -> Vec<f64> {
    a.iter().map(|&v| v.into()).collect()
}

#[test]
fn convolution_is_the_autoencoders_activation_of_each_patch() {
    let mut rng = StdRng::seed_from_u64(1);
    // (channels, patch, image size, hidden activation, whitening)
    let cases = [
        (1, 4, 9, Activation::Sigmoid, None),
        (3, 3, 7, Activation::Tanh, None),
        (1, 5, 8, Activation::LEAKY_RELU, Some("zca")),
        (3, 2, 6, Activation::Sigmoid, Some("pca")),
        (2, 3, 3, Activation::Relu, None),
    ];
    for (seed, (c, p, n, act, white)) in cases.into_iter().enumerate() {
        let patch_len = c * p * p;
        let whitening = white.map(|kind| {
            let sample = common::uniform(300, patch_len, 0.0, 1.0, &mut rng);
            match kind {
                "zca" => Whitening::fit_zca(sample.view(), 0.1).unwrap(),
                _ => Whitening::fit_pca(sample.view(), 0.01, Components::Count(patch_len - 3)).unwrap(),
            }
        });
        let inputs = whitening.as_ref().map_or(patch_len, |w| w.outputs);
        let hidden = 5;
        let (spec, theta) = autoencoder(inputs, hidden, act, seed as u64);
        let bank = FeatureBank::from_autoencoder(&spec, &theta, c, whitening.as_ref()).unwrap();
        assert_eq!((bank.count(), bank.patch, bank.channels), (hidden, p, c));

        let m = 3;
        let images = common::uniform(m, c * n * n, 0.0, 1.0, &mut rng);
        let conv = features::convolve(&bank, images.view(), n).unwrap();
        let d = n - p + 1;
        assert_eq!(conv.dim(), (m, hidden, d, d));

        // Every patch, as the autoencoder sees it, through the CPU reference's forward pass.
        let mut rows = Vec::new();
        for i in 0..m {
            for y in 0..d {
                for x in 0..d {
                    rows.extend(extract_patch(&images, i, (c, n, p), y, x));
                }
            }
        }
        let patches = Array2::from_shape_vec((m * d * d, patch_len), rows).unwrap();
        let patches = match &whitening {
            Some(w) => w.apply_f64(patches.view()).unwrap(),
            None => patches,
        };
        let mut ae = CpuBackend::<f64>::new(spec.clone()).unwrap();
        let hidden_act = ae.forward(&theta, (&patches).into()).unwrap().remove(0);
        let mut worst: f64 = 0.0;
        for i in 0..m {
            for y in 0..d {
                for x in 0..d {
                    for f in 0..hidden {
                        let a = hidden_act[[(i * d + y) * d + x, f]];
                        worst = worst.max((conv[[i, f, y, x]] - a).abs());
                    }
                }
            }
        }
        assert!(worst < 1e-9, "case {seed} (c={c}, p={p}, n={n}, {white:?}): max |conv − a⁽²⁾(patch)| = {worst:e}");
        // The check has teeth: the activations are not all alike.
        let spread = hidden_act.iter().fold(0.0f64, |s, v| s.max(v.abs()));
        assert!(spread > 1e-3, "case {seed}: activations are all ≈ 0");
    }
}

/// Pooling written as the plainest possible loop.
fn pool_by_loop(conv: &Array4<f64>, s: usize, kind: PoolKind) -> Array4<f64> {
    let (m, k, d, _) = conv.dim();
    let q = d / s;
    let mut out = Array4::zeros((m, k, q, q));
    for i in 0..m {
        for f in 0..k {
            for py in 0..q {
                for px in 0..q {
                    let mut sum = 0.0;
                    let mut best = f64::NEG_INFINITY;
                    for y in py * s..py * s + s {
                        for x in px * s..px * s + s {
                            sum += conv[[i, f, y, x]];
                            if conv[[i, f, y, x]] > best {
                                best = conv[[i, f, y, x]];
                            }
                        }
                    }
                    out[[i, f, py, px]] = match kind {
                        PoolKind::Mean => sum / (s * s) as f64,
                        PoolKind::Max => best,
                    };
                }
            }
        }
    }
    out
}

#[test]
fn pooling_matches_a_direct_loop_and_refuses_ragged_regions() {
    let mut rng = StdRng::seed_from_u64(2);
    let conv = Array4::from_shape_simple_fn((2, 3, 12, 12), || rng.random_range(-1.0..1.0));
    for s in [1, 2, 3, 4, 6, 12] {
        for kind in [PoolKind::Mean, PoolKind::Max] {
            let got = features::pool(conv.view(), Pooling { size: s, kind }).unwrap();
            let want = pool_by_loop(&conv, s, kind);
            assert_eq!(got.dim(), want.dim());
            let worst = got.iter().zip(&want).fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst < 1e-15, "pool {s} {kind:?}: {worst:e}");
        }
    }
    // Max pooling picks a value; mean pooling of a region of one is the value itself.
    let max = features::pool(conv.view(), Pooling { size: 12, kind: PoolKind::Max }).unwrap();
    assert!(conv.iter().any(|&v| v == max[[0, 0, 0, 0]]));
    for s in [0, 5, 7, 13] {
        let e = features::pool(conv.view(), Pooling { size: s, kind: PoolKind::Mean }).unwrap_err().to_string();
        assert!(e.contains("divides 12 (1, 2, 3, 4, 6, 12)"), "pool {s}: {e}");
    }
}

#[test]
fn cpu_fast_path_matches_the_reference() {
    let mut rng = StdRng::seed_from_u64(3);
    // (images, channels, n, p, k, activation, pool, kind)
    let cases = [
        (1, 1, 11, 4, 3, Activation::Sigmoid, 4, PoolKind::Mean),
        (7, 3, 13, 5, 65, Activation::Tanh, 3, PoolKind::Max),
        (2, 1, 9, 9, 4, Activation::Identity, 1, PoolKind::Mean),
        (3, 2, 10, 3, 5, Activation::LEAKY_RELU, 2, PoolKind::Max),
    ];
    for (m, c, n, p, k, act, s, kind) in cases {
        let bank = random_bank(k, p, c, act, &mut rng);
        let images = common::uniform(m, c * n * n, 0.0, 1.0, &mut rng);
        let pooling = Pooling { size: s, kind };
        let want = features::pool(features::convolve(&bank, images.view(), n).unwrap().view(), pooling).unwrap();
        let got64 = convolve_and_pool_cpu(&bank, images.view(), n, pooling).unwrap();
        let d64 = rel(&flat(got64.view()), &flat(want.view()));
        assert!(d64 < 1e-12, "f64 {m}×{c}×{n}² p={p} k={k}: {d64:e}");
        let got32 = convolve_and_pool_cpu(&bank, images.mapv(|v| v as f32).view(), n, pooling).unwrap();
        let d32 = rel(&flat(got32.view()), &flat(want.view()));
        assert!(d32 < 1e-5, "f32 {m}×{c}×{n}² p={p} k={k}: {d32:e}");
        // Chunks of one or two images give the same numbers.
        for chunk in [1, 2] {
            let chunked = features::convolve_and_pool_cpu_in_chunks(&bank, images.view(), n, pooling, chunk).unwrap();
            assert_eq!(chunked, got64, "chunks of {chunk}");
        }
    }
}

#[test]
fn gpu_matches_cpu_on_awkward_shapes_with_poisoned_outputs() {
    let gpu = open_gpu();
    let mut conv = GpuConvolution::new(&gpu);
    conv.set_poison(true);
    let mut rng = StdRng::seed_from_u64(4);
    // (images, channels, n, p, k, activation, pool, kind)
    let cases = [
        (1, 1, 11, 4, 3, Activation::Sigmoid, 4, PoolKind::Mean),
        (7, 3, 13, 5, 65, Activation::Tanh, 3, PoolKind::Max),
        (7, 1, 17, 6, 65, Activation::Relu, 4, PoolKind::Mean),
        (1, 3, 10, 3, 3, Activation::LEAKY_RELU, 1, PoolKind::Max),
        (7, 1, 9, 9, 3, Activation::Identity, 1, PoolKind::Mean),
        (7, 3, 8, 1, 65, Activation::Sigmoid, 8, PoolKind::Max),
    ];
    for (m, c, n, p, k, act, s, kind) in cases {
        let bank = random_bank(k, p, c, act, &mut rng);
        let images = common::uniform(m, c * n * n, -1.0, 1.0, &mut rng);
        let pooling = Pooling { size: s, kind };
        let want = features::pool(features::convolve(&bank, images.view(), n).unwrap().view(), pooling).unwrap();
        let got = conv.convolve_and_pool(&bank, images.mapv(|v| v as f32).view(), n, pooling).unwrap();
        assert_eq!(got.dim(), want.dim());
        let d = rel(&flat(got.view()), &flat(want.view()));
        assert!(d < GPU_TOLERANCE, "{m} images {c}×{n}², {k} features {p}×{p} {act:?}, pool {s} {kind:?}: {d:e}");
        assert_eq!(conv.last_run().chunks, 1);
    }
}

#[test]
fn gpu_chunks_batches_and_gives_the_same_features() {
    let gpu = open_gpu();
    let mut rng = StdRng::seed_from_u64(5);
    let (m, c, n, p, k) = (7, 2, 12, 5, 9);
    let bank = random_bank(k, p, c, Activation::Sigmoid, &mut rng);
    let images = common::uniform(m, c * n * n, 0.0, 1.0, &mut rng).mapv(|v| v as f32);
    let pooling = Pooling { size: 4, kind: PoolKind::Mean };
    let whole = GpuConvolution::new(&gpu).convolve_and_pool(&bank, images.view(), n, pooling).unwrap();
    let mut chunked = GpuConvolution::new(&gpu);
    chunked.set_max_chunk_images(2);
    chunked.set_poison(true);
    let got = chunked.convolve_and_pool(&bank, images.view(), n, pooling).unwrap();
    assert_eq!(chunked.last_run().chunks, 4, "7 images in chunks of 2");
    assert_eq!(chunked.last_run().images_per_chunk, 2);
    assert_eq!(got, whole, "chunking changes no value");
    let want = convolve_and_pool_cpu(&bank, images.mapv(f64::from).view(), n, pooling).unwrap();
    let d = rel(&flat(got.view()), &flat(want.view()));
    assert!(d < GPU_TOLERANCE, "{d:e}");
    // The chunk the device's own limits give holds the whole batch here.
    let g = bank.geometry(n).unwrap();
    assert!(GpuConvolution::new(&gpu).chunk_images(&g, k, 2).unwrap() >= m);
}

#[test]
fn bad_shapes_are_refused_with_clear_errors() {
    let mut rng = StdRng::seed_from_u64(6);
    let bank = random_bank(4, 5, 1, Activation::Sigmoid, &mut rng);
    let images = common::uniform(2, 100, 0.0, 1.0, &mut rng);
    let err = |r: wgnn::Result<Array4<f64>>| r.unwrap_err().to_string();
    let mean = |size| Pooling { size, kind: PoolKind::Mean };
    // 10×10 images, 5×5 features: 6×6 convolved maps.
    let e = err(convolve_and_pool_cpu(&bank, images.view(), 10, mean(4)));
    assert!(e.contains("do not tile the 6×6") && e.contains("(1, 2, 3, 6)"), "{e}");
    let e = err(features::convolve(&bank, common::uniform(2, 16, 0.0, 1.0, &mut rng).view(), 4));
    assert!(e.contains("smaller than the 5×5 features"), "{e}");
    let e = err(features::convolve(&bank, images.view(), 11));
    assert!(e.contains("has 100 values") && e.contains("need 121"), "{e}");
    let mut nan = images.clone();
    nan[[1, 7]] = f64::NAN;
    let e = err(features::convolve(&bank, nan.view(), 10));
    assert!(e.contains("image 1, value 7"), "{e}");
    let e = err(features::convolve(&bank, Array2::zeros((0, 100)).view(), 10));
    assert!(e.contains("no images"), "{e}");

    let (spec, theta) = autoencoder(64, 6, Activation::Sigmoid, 1);
    let e = FeatureBank::from_autoencoder(&spec, &theta, 3, None).unwrap_err().to_string();
    assert!(e.contains("not a whole number of 3 channel"), "{e}");
    let (spec48, theta48) = autoencoder(48, 6, Activation::Sigmoid, 1);
    let e = FeatureBank::from_autoencoder(&spec48, &theta48, 1, None).unwrap_err().to_string();
    assert!(e.contains("not a square patch"), "{e}");
    assert_eq!(FeatureBank::from_autoencoder(&spec48, &theta48, 3, None).unwrap().patch, 4);
    let e = FeatureBank::from_autoencoder(&spec, &theta[1..], 1, None).unwrap_err().to_string();
    assert!(e.contains("θ has"), "{e}");
    let softmax = NetSpec::softmax_regression(64, 10, 0.0).unwrap();
    let e = FeatureBank::from_autoencoder(&softmax, &vec![0.0; 650], 1, None).unwrap_err().to_string();
    assert!(e.contains("no hidden layer"), "{e}");
    let white = Whitening::fit_zca(common::uniform(100, 16, 0.0, 1.0, &mut rng).view(), 0.1).unwrap();
    let e = FeatureBank::from_autoencoder(&spec, &theta, 1, Some(&white)).unwrap_err().to_string();
    assert!(e.contains("maps 16 values to 16") && e.contains("takes 64 inputs"), "{e}");
}

// --- wgnn convolve -------------------------------------------------------------------------

fn wgnn() -> Command {
    Command::cargo_bin("wgnn").unwrap()
}

/// Saves an autoencoder for c channels of p×p and returns its features.
fn save_model(dir: &Path, c: usize, p: usize, hidden: usize, seed: u64) -> FeatureBank {
    let (spec, theta) = autoencoder(c * p * p, hidden, Activation::Sigmoid, seed);
    let bank = FeatureBank::from_autoencoder(&spec, &theta, c, None).unwrap();
    Checkpoint::new(spec, theta, Metadata::default()).unwrap().save(&dir.join("model.safetensors")).unwrap();
    bank
}

fn read_f32_4d(path: &Path) -> Array4<f32> {
    Array4::<f32>::read_npy(std::fs::File::open(path).unwrap()).unwrap()
}

#[test]
fn cli_convolve_writes_the_documented_layout_on_cpu_and_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let (m, c, n, p, k) = (5, 3, 11, 4, 6);
    let bank = save_model(dir.path(), c, p, k, 7);
    let mut rng = StdRng::seed_from_u64(7);
    let images = common::uniform(m, c * n * n, 0.0, 1.0, &mut rng);
    // Stored as images × c × n × n: the command reads the channels and size off the shape.
    let stored = images.mapv(|v| v as f32).into_shape_with_order((m, c, n, n)).unwrap();
    let images_path = dir.path().join("images.npy");
    stored.write_npy(std::fs::File::create(&images_path).unwrap()).unwrap();
    let pooling = Pooling { size: 2, kind: PoolKind::Max };
    let want = features::pool(features::convolve(&bank, images.view(), n).unwrap().view(), pooling).unwrap();
    for (backend, tolerance) in [("cpu", 1e-5), ("gpu", GPU_TOLERANCE)] {
        let out = dir.path().join(format!("pooled-{backend}.npy"));
        let run = wgnn()
            .args(["convolve", "--model"])
            .arg(dir.path())
            .arg("--images")
            .arg(format!("npy:{}", images_path.display()))
            .args(["--pool", "2", "--pool-kind", "max", "--backend", backend, "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "{backend}: {}", String::from_utf8_lossy(&run.stderr));
        assert!(stdout.contains("float32 5 × 6 × 4 × 4 (images × features × pooled rows × pooled columns"), "{stdout}");
        let got = read_f32_4d(&out);
        assert_eq!(got.dim(), (m, k, 4, 4));
        let d = rel(&flat(got.view()), &flat(want.view()));
        assert!(d < tolerance, "{backend}: {d:e}");
    }
    // The same images as rows of c·n² values with --channels (n inferred), stored in Fortran
    // order, give the same file.
    let rows_path = dir.path().join("rows.npy");
    let mut fortran = Array2::<f64>::zeros(images.raw_dim().f());
    fortran.assign(&images);
    assert!(!fortran.is_standard_layout());
    fortran.write_npy(std::fs::File::create(&rows_path).unwrap()).unwrap();
    let out = dir.path().join("pooled-rows.npy");
    wgnn()
        .args(["convolve", "--model"])
        .arg(dir.path().join("model.safetensors"))
        .arg("--images")
        .arg(format!("npy:{}", rows_path.display()))
        .args(["--channels", "3", "--pool", "2", "--pool-kind", "max", "--backend", "cpu", "--out"])
        .arg(&out)
        .assert()
        .success();
    assert_eq!(read_f32_4d(&out), read_f32_4d(&dir.path().join("pooled-cpu.npy")));
}

/// Runs and expects failure with one error line containing `needle`, and no output file.
fn fails_with(cmd: &mut Command, out: &Path, needle: &str) {
    let run = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "expected failure; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("note: ")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got: {stderr}");
    assert!(errors[0].starts_with("error: ") && errors[0].contains(needle), "expected `{needle}` in: {stderr}");
    assert!(!out.exists(), "{} was written despite the error", out.display());
}

#[test]
fn cli_convolve_refuses_bad_input_in_one_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    save_model(dir.path(), 1, 5, 4, 8);
    let mut rng = StdRng::seed_from_u64(8);
    let images_path = dir.path().join("x.npy");
    common::uniform(3, 144, 0.0, 1.0, &mut rng).write_npy(std::fs::File::create(&images_path).unwrap()).unwrap();
    let out = dir.path().join("f.npy");
    let convolve = |extra: &[&str]| {
        let mut cmd = wgnn();
        cmd.args(["convolve", "--backend", "cpu", "--model"])
            .arg(dir.path())
            .arg("--images")
            .arg(format!("npy:{}", images_path.display()))
            .arg("--out")
            .arg(&out)
            .args(extra);
        cmd
    };
    // 12×12 images, 5×5 features: 8×8 maps.
    fails_with(&mut convolve(&["--pool", "3"]), &out, "choose a pool size that divides 8 (1, 2, 4, 8)");
    fails_with(&mut convolve(&["--pool", "2", "--image-size", "10"]), &out, "check --image-size");
    fails_with(&mut convolve(&["--pool", "2", "--channels", "3"]), &out, "not 3 channel(s) of a square image");
    fails_with(&mut convolve(&["--pool", "2", "--limit", "0"]), &out, "--limit 0");
    let mut missing = wgnn();
    missing.args(["convolve", "--model", "/nonexistent/model", "--images", "npy:x.npy", "--pool", "1", "--out"]);
    fails_with(missing.arg(&out), &out, "no such file");
    // A model whose inputs are not this image's channels.
    let colour = tempfile::tempdir().unwrap();
    save_model(colour.path(), 3, 2, 4, 9);
    let mut cmd = convolve(&["--pool", "1"]);
    cmd.arg("--model").arg(colour.path());
    fails_with(&mut cmd, &out, "not a square patch");
    // And it works once the flags are right.
    convolve(&["--pool", "4"]).assert().success();
    assert_eq!(read_f32_4d(&out).dim(), (3, 4, 2, 2));
}

#[test]
fn cli_convolve_reads_mnist_digits() {
    let data = common::data_dir();
    let dir = tempfile::tempdir().unwrap();
    let bank = save_model(dir.path(), 1, 8, 5, 10);
    let out = dir.path().join("mnist.npy");
    wgnn()
        .args(["convolve", "--model"])
        .arg(dir.path())
        .arg("--images")
        .arg(format!("mnist:{}", data.join("mnist").display()))
        .args(["--split", "test", "--limit", "6", "--pool", "7", "--backend", "cpu", "--out"])
        .arg(&out)
        .assert()
        .success();
    let got = read_f32_4d(&out);
    assert_eq!(got.dim(), (6, 5, 3, 3), "28×28 digits, 8×8 features: 21×21 maps pooled 7×7");
    let mnist = wgnn::data::Mnist::load(&data.join("mnist"), wgnn::data::Split::Test).unwrap();
    let x = mnist.images.slice(ndarray::s![..6, ..]).mapv(f64::from);
    let pooling = Pooling { size: 7, kind: PoolKind::Mean };
    let want = features::pool(features::convolve(&bank, x.view(), 28).unwrap().view(), pooling).unwrap();
    let d = rel(&flat(got.view()), &flat(want.view()));
    assert!(d < 1e-5, "{d:e}");
}

#[test]
fn cli_convolve_folds_the_models_stored_whitening_into_the_features() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(11);
    let (m, n, p, k) = (4, 8, 3, 5);
    let white = Whitening::fit_zca(common::uniform(200, p * p, 0.0, 1.0, &mut rng).view(), 0.1).unwrap();
    let (spec, theta) = autoencoder(p * p, k, Activation::Sigmoid, 11);
    let bank = FeatureBank::from_autoencoder(&spec, &theta, 1, Some(&white)).unwrap();
    let metadata = Metadata {
        preprocessing: serde_json::json!({ "whitening": serde_json::to_value(&white).unwrap() }),
        ..Default::default()
    };
    Checkpoint::new(spec, theta, metadata).unwrap().save(&dir.path().join("model.safetensors")).unwrap();
    let images = common::uniform(m, n * n, 0.0, 1.0, &mut rng);
    let images_path = dir.path().join("images.npy");
    images.write_npy(std::fs::File::create(&images_path).unwrap()).unwrap();
    let out = dir.path().join("white.npy");
    wgnn()
        .args(["convolve", "--backend", "cpu", "--pool", "2", "--model"])
        .arg(dir.path())
        .arg("--images")
        .arg(format!("npy:{}", images_path.display()))
        .arg("--out")
        .arg(&out)
        .assert()
        .success();
    let pooling = Pooling { size: 2, kind: PoolKind::Mean };
    let want = features::pool(features::convolve(&bank, images.view(), n).unwrap().view(), pooling).unwrap();
    let got = read_f32_4d(&out);
    let d = rel(&flat(got.view()), &flat(want.view()));
    assert!(d < 1e-5, "{d:e}");
    // Without the whitening the features would differ: the fold matters.
    let (spec, theta) = autoencoder(p * p, k, Activation::Sigmoid, 11);
    let plain = FeatureBank::from_autoencoder(&spec, &theta, 1, None).unwrap();
    let unwhitened = features::pool(features::convolve(&plain, images.view(), n).unwrap().view(), pooling).unwrap();
    assert!(rel(&flat(got.view()), &flat(unwhitened.view())) > 1e-2);
}
