//! The `wgnn` binary as a user meets it: the first commands work, their last lines are
//! machine-readable, and bad input ends with one clear line and a non-zero exit — never a panic.

mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use ndarray::{Array1, Array2};
use ndarray_npy::WriteNpyExt;

fn wgnn() -> Command {
    Command::cargo_bin("wgnn").unwrap()
}

fn fixture(case: &str, file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(case).join(file).display().to_string()
}

fn last_line(out: &[u8]) -> String {
    String::from_utf8_lossy(out).lines().last().unwrap_or_default().to_string()
}

/// Runs and expects failure with a single-line error containing `needle` (notes such as the
/// backend choice may come before it).
fn fails_with(cmd: &mut Command, needle: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("note: ")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got: {stderr}");
    assert!(errors[0].starts_with("error: ") && errors[0].contains(needle), "expected `{needle}` in: {stderr}");
}

fn write_npy<T: WriteNpyExt>(dir: &Path, name: &str, a: &T) -> String {
    let p: PathBuf = dir.join(name);
    a.write_npy(std::fs::File::create(&p).unwrap()).unwrap();
    p.display().to_string()
}

fn sparse_autoencoder_cost() -> Command {
    let mut cmd = wgnn();
    cmd.args([
        "cost",
        "--layers",
        "64,25,64",
        "--weight-decay",
        "1e-4",
        "--sparsity",
        "0.01",
        "--sparsity-weight",
        "3",
    ]);
    cmd
}

#[test]
fn cost_matches_the_jax_fixture_and_writes_the_gradient() {
    let dir = tempfile::tempdir().unwrap();
    let grad_path = dir.path().join("g.npy");
    let out = sparse_autoencoder_cost()
        .args(["--theta", &fixture("sparse_autoencoder", "theta.npy")])
        .args(["--data", &format!("npy:{}", fixture("sparse_autoencoder", "x.npy"))])
        .args(["--backend", "cpu", "--grad-out", grad_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let line = last_line(&out.stdout);
    let cost: f64 = line.strip_prefix("cost ").expect("last line is `cost <value>`").parse().unwrap();
    let reference = wgnn::npy::read_vector(Path::new(&fixture("sparse_autoencoder", "cost.npy"))).unwrap()[0];
    assert!(((cost - reference) / reference).abs() < 1e-12, "{cost} vs {reference}");
    let grad = wgnn::npy::read_vector(&grad_path).unwrap();
    let grad_ref = wgnn::npy::read_vector(Path::new(&fixture("sparse_autoencoder", "grad.npy"))).unwrap();
    let err = (&grad - &grad_ref).mapv(|v| v * v).sum().sqrt() / grad_ref.mapv(|v| v * v).sum().sqrt();
    assert!(err < 1e-12, "gradient differs from JAX by {err:e}");
}

#[test]
fn cost_of_softmax_regression_with_labels_in_f32() {
    let out = wgnn()
        .args(["cost", "--layers", "20,5", "--output", "softmax", "--weight-decay", "1e-4", "--precision", "f32"])
        .args(["--theta", &fixture("softmax_regression", "theta.npy")])
        .args(["--data", &fixture("softmax_regression", "x.npy")])
        .args(["--labels", &fixture("softmax_regression", "labels.npy")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cost: f64 = last_line(&out.stdout).strip_prefix("cost ").unwrap().parse().unwrap();
    let reference = wgnn::npy::read_vector(Path::new(&fixture("softmax_regression", "cost.npy"))).unwrap()[0];
    assert!(((cost - reference) / reference).abs() < 1e-6, "{cost} vs {reference}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("cpu f32"));
}

#[test]
fn gradcheck_with_no_arguments_passes_and_ends_with_the_difference() {
    let out = wgnn().arg("gradcheck").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d: f64 = last_line(&out.stdout).strip_prefix("relative difference ").unwrap().parse().unwrap();
    assert!(d < 1e-8, "relative difference {d:e}");
}

#[test]
fn gradcheck_of_a_deep_softmax_mlp() {
    let out = wgnn()
        .args(["gradcheck", "--layers", "10,12,9,7,4", "--activation", "tanh,leaky-relu,leaky-relu"])
        .args(["--output", "softmax", "--weight-decay", "1e-3", "--examples", "9", "--seed", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d: f64 = last_line(&out.stdout).strip_prefix("relative difference ").unwrap().parse().unwrap();
    assert!(d < 1e-8, "relative difference {d:e}");
}

#[test]
fn bad_input_ends_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let theta = fixture("sparse_autoencoder", "theta.npy");
    let x = fixture("sparse_autoencoder", "x.npy");

    // A file that is not .npy.
    let text = d.join("notes.npy");
    std::fs::write(&text, "this is not numpy").unwrap();
    fails_with(sparse_autoencoder_cost().args(["--theta", text.to_str().unwrap(), "--data", &x]), "notes.npy");
    // A truncated .npy.
    let bytes = std::fs::read(&x).unwrap();
    let cut = d.join("cut.npy");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    fails_with(sparse_autoencoder_cost().args(["--theta", &theta, "--data", cut.to_str().unwrap()]), "cut.npy");
    // A missing file.
    fails_with(sparse_autoencoder_cost().args(["--theta", &theta, "--data", "/no/such.npy"]), "no such file");
    // θ of the wrong length.
    let short = write_npy(d, "short.npy", &Array1::<f64>::zeros(10));
    fails_with(sparse_autoencoder_cost().args(["--theta", &short, "--data", &x]), "θ has 10 values");
    // Data whose width does not match the first layer.
    let wide = write_npy(d, "wide.npy", &Array2::<f32>::zeros((4, 65)));
    fails_with(sparse_autoencoder_cost().args(["--theta", &theta, "--data", &wide]), "65 columns");
    // NaN in the data.
    let mut nan = Array2::<f64>::zeros((3, 64));
    nan[[1, 7]] = f64::NAN;
    let nan = write_npy(d, "nan.npy", &nan);
    fails_with(sparse_autoencoder_cost().args(["--theta", &theta, "--data", &nan]), "row 1, column 7");
    // Labels out of range.
    let labels =
        write_npy(d, "labels.npy", &ndarray::Array1::from(vec![0i64, 1, 2, 9, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    fails_with(
        wgnn()
            .args(["cost", "--layers", "20,5", "--output", "softmax"])
            .args(["--theta", &fixture("softmax_regression", "theta.npy")])
            .args(["--data", &fixture("softmax_regression", "x.npy"), "--labels", &labels]),
        "label 9 of example 3",
    );
    // A network the maths cannot do.
    fails_with(wgnn().args(["gradcheck", "--activation", "relu", "--sparsity", "0.05"]), "KL sparsity");
    fails_with(wgnn().args(["gradcheck", "--activation", "swish"]), "unknown activation");
    fails_with(wgnn().args(["gradcheck", "--layers", "5,4,3,2", "--activation", "tanh,relu,tanh"]), "3 activations");
}

#[test]
fn help_explains_the_options_and_their_defaults() {
    let out = wgnn().args(["cost", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in ["--theta", "--labels", "--grad-out", "--sparsity-weight", "[default: 64,25,64]", "row-major"] {
        assert!(help.contains(needle), "`{needle}` missing from cost --help:\n{help}");
    }
}

#[test]
fn devices_lists_the_adapters_and_what_auto_picks() {
    let out = wgnn().arg("devices").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wgnn devices failed (is mesa-vulkan-drivers installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("[0] ") && stdout.contains("max storage binding"), "{stdout}");
    assert!(stdout.contains("--backend auto uses the"), "{stdout}");
}

#[test]
fn gpu_cost_and_gradcheck_agree_with_the_reference() {
    let out = wgnn()
        .args(["cost", "--backend", "gpu", "--layers", "20,5", "--output", "softmax", "--weight-decay", "1e-4"])
        .args(["--theta", &fixture("softmax_regression", "theta.npy")])
        .args(["--data", &fixture("softmax_regression", "x.npy")])
        .args(["--labels", &fixture("softmax_regression", "labels.npy")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("backend  gpu f32"));
    let cost: f64 = last_line(&out.stdout).strip_prefix("cost ").unwrap().parse().unwrap();
    let reference = wgnn::npy::read_vector(Path::new(&fixture("softmax_regression", "cost.npy"))).unwrap()[0];
    assert!(((cost - reference) / reference).abs() < 1e-6, "{cost} vs {reference}");

    let out = wgnn()
        .args(["gradcheck", "--backend", "gpu", "--sparsity", "0.05", "--weight-decay", "1e-3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let d: f64 = last_line(&out.stdout).strip_prefix("relative difference ").unwrap().parse().unwrap();
    assert!(d < 1e-5, "GPU gradient vs central differences: {d:e}");
}

#[test]
fn train_writes_a_run_folder_and_refuses_what_it_cannot_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let result = wgnn()
        .args(["train", "--iterations", "15", "--count", "500", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(stdout.contains("final cost") && stdout.contains("filters.png"), "{stdout}");
    for f in ["model.safetensors", "metrics.json", "loss.png", "filters.png", "reconstructions.png"] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    // Quiet means quiet.
    let quiet = wgnn()
        .args([
            "train",
            "--iterations",
            "2",
            "--count",
            "200",
            "--quiet",
            "--out",
            dir.path().join("q").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(quiet.status.success() && quiet.stderr.is_empty() && quiet.stdout.is_empty());
    fails_with(wgnn().args(["train", "softmax"]), "needs labelled data");
    fails_with(wgnn().args(["train", "--data", "mnist:/no/such/dir", "--iterations", "1"]), "/no/such/dir");
    fails_with(wgnn().args(["train", "--schedule", "plateau"]), "use it with --optimizer sgd or adam");
    fails_with(wgnn().args(["train", "mlp", "--schedule", "cosine"]), "unknown schedule `cosine`");
}

#[test]
fn visualize_reconstruct_and_eval_a_trained_model() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let ok = wgnn()
        .args(["train", "--iterations", "10", "--count", "300", "--quiet", "--out", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));

    let filters = dir.path().join("f.png");
    let out = wgnn()
        .args(["visualize", "--model", run.to_str().unwrap(), "--out", filters.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let img = image::open(&filters).unwrap();
    assert_eq!((img.width(), img.height()), (5 * 49 + 1, 5 * 49 + 1), "25 tiles of 8×8 at 6×");

    let recon = dir.path().join("r.png");
    let out = wgnn()
        .args(["reconstruct", "--model", run.join("model.safetensors").to_str().unwrap(), "--count", "7"])
        .args(["--out", recon.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let img = image::open(&recon).unwrap();
    let size = (wgnn::viz::ROW_LABEL_MARGIN + 7 * 49 + 1, 2 * 49 + 1);
    assert_eq!((img.width(), img.height()), size, "7 originals above 7 reconstructions, right of their labels");

    let out = wgnn().args(["eval", "--model", run.to_str().unwrap(), "--count", "500", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["examples"], 500);
    let (cost, recon_err) = (v["cost"].as_f64().unwrap(), v["reconstruction_error"].as_f64().unwrap());
    assert!(recon_err > 0.0 && recon_err < cost, "{v}");

    fails_with(wgnn().args(["visualize", "--model", "/no/such/model"]), "--model /no/such/model");
    fails_with(wgnn().args(["eval", "--model", run.to_str().unwrap(), "--patch", "9", "--count", "50"]), "81 columns");
}

#[test]
fn bad_data_is_refused_with_one_line_and_no_output_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, bytes: &[u8]| {
        let p = d.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
    };
    let idx_images = |count: u32, magic: u32| {
        let mut b = magic.to_be_bytes().to_vec();
        for v in [count, 28, 28] {
            b.extend(v.to_be_bytes());
        }
        b.extend(vec![7u8; count as usize * 784]);
        b
    };
    let idx_labels = |count: u32| {
        let mut b = 0x801u32.to_be_bytes().to_vec();
        b.extend(count.to_be_bytes());
        b.extend(vec![3u8; count as usize]);
        b
    };
    // Truncated images.
    let mut cut = idx_images(10, 0x803);
    cut.truncate(3000);
    write("truncated/train-images-idx3-ubyte", &cut);
    write("truncated/train-labels-idx1-ubyte", &idx_labels(10));
    // Wrong magic.
    write("magic/train-images-idx3-ubyte", &idx_images(10, 0x1234));
    write("magic/train-labels-idx1-ubyte", &idx_labels(10));
    // Mismatched labels.
    write("mismatch/train-images-idx3-ubyte", &idx_images(10, 0x803));
    write("mismatch/train-labels-idx1-ubyte", &idx_labels(9));
    // An unreadable image among photographs.
    write("photos/broken.png", b"\x89PNG\r\n\x1a\nnot really");
    // NaN in a .npy matrix.
    let mut nan = Array2::<f32>::zeros((4, 64));
    nan[[2, 5]] = f32::NAN;
    let nan_path = write_npy(d, "nan.npy", &nan);

    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--data".into(), format!("mnist:{}", d.join("truncated").display())], "truncated"),
        (vec!["--data".into(), format!("mnist:{}", d.join("magic").display())], "magic"),
        (vec!["--data".into(), format!("mnist:{}", d.join("mismatch").display())], "9"),
        (vec!["--data".into(), format!("patches:{}", d.join("photos").display())], "broken.png"),
        (vec!["--count".into(), "0".into()], "0"),
        (vec!["--data".into(), format!("npy:{nan_path}")], "row 2, column 5"),
    ];
    for (i, (args, needle)) in cases.iter().enumerate() {
        let out = d.join(format!("out{i}"));
        fails_with(wgnn().arg("train").args(args).args(["--iterations", "1", "--out", out.to_str().unwrap()]), needle);
        assert!(!out.exists(), "case {i} ({args:?}) left {}", out.display());
    }
}

#[test]
fn config_files_set_flags_and_the_command_line_overrides_them() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let json = dir.path().join("c.json");
    let settings =
        format!(r#"{{"iterations": 3, "count": 300, "hidden": [16], "quiet": true, "out": "{}"}}"#, run.display());
    std::fs::write(&json, settings).unwrap();
    let out = wgnn().args(["train", "--config", json.to_str().unwrap(), "--iterations", "5"]).output().unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["iterations"], 5, "the command line's --iterations wins");
    assert_eq!(m["spec"]["layers"], serde_json::json!([64, 16, 64]), "the file's hidden size is used");

    let toml = dir.path().join("c.toml");
    std::fs::write(&toml, "iterations = 2\nweight_decay = 0.003\n").unwrap();
    let run2 = dir.path().join("run2");
    let out = wgnn()
        .args([
            "train",
            "--config",
            toml.to_str().unwrap(),
            "--count",
            "200",
            "--quiet",
            "--out",
            run2.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(run2.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["spec"]["weight_decay"], 0.003);

    std::fs::write(&json, "[1, 2]").unwrap();
    fails_with(wgnn().args(["train", "--config", json.to_str().unwrap()]), "expected an object");
    fails_with(wgnn().args(["train", "--init", "/no/theta.npy"]), "--init");
}

#[test]
fn a_whitened_linear_decoder_is_stored_with_its_whitening_and_evaluated_alike() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("ld");
    let out = wgnn()
        .args(["train", "--whiten", "zca", "--output", "identity", "--sparsity", "0.035", "--sparsity-weight", "5"])
        .args(["--iterations", "10", "--count", "500", "--quiet", "--out", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ck = wgnn::checkpoint::Checkpoint::load(&run.join("model.safetensors")).unwrap();
    assert!(ck.metadata.preprocessing["whitening"].is_object(), "the whitening is stored with the model");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    // eval on the same examples (same seed and count) whitens them the same way: same cost.
    let out = wgnn()
        .args(["eval", "--model", run.to_str().unwrap(), "--count", "500", "--seed", "0", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (a, b) = (v["cost"].as_f64().unwrap(), m["final_cost"].as_f64().unwrap());
    assert!(((a - b) / b).abs() < 1e-5, "eval {a} vs training's final cost {b}");
    // reconstruct draws the originals in pixels (ZCA inverts exactly): the top row is the raw
    // patches, within a grey level of f32 rounding, not their whitened values.
    let recon = dir.path().join("r.png");
    let out = wgnn()
        .args(["reconstruct", "--model", run.to_str().unwrap(), "--count", "6", "--seed", "0"])
        .args(["--out", recon.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("in pixels") && said.contains("on the whitened values"), "{said}");
    let options = wgnn::data::LoadOptions { patch_count: 6, seed: 0, ..Default::default() };
    let raw = wgnn::data::DataSource::Synthetic.load(&options).unwrap().x.mapv(f64::from);
    let want = wgnn::viz::reconstructions(raw.view(), raw.view()).unwrap();
    let got = image::open(&recon).unwrap().to_luma8();
    assert_eq!(got.dimensions(), want.dimensions());
    let top_row = |img: &image::GrayImage| img.rows().take(49).flat_map(|r| r.map(|p| p[0])).collect::<Vec<u8>>();
    let worst = top_row(&got).iter().zip(&top_row(&want)).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
    assert!(worst <= 1, "the drawn originals differ from the raw patches by {worst} grey levels");
    let out = wgnn().args(["train", "--whiten", "pcx"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("[possible values: zca, pca]"));
}

/// A small regression problem: 4 inputs in [−1, 1], 2 smooth targets of them.
fn regression_data(m: usize, seed: u64) -> (Array2<f64>, Array2<f64>) {
    use rand::{RngExt, SeedableRng, rngs::StdRng};
    let mut rng = StdRng::seed_from_u64(seed);
    let x: Array2<f64> = Array2::from_shape_simple_fn((m, 4), || rng.random_range(-1.0..1.0));
    let y = Array2::from_shape_fn((m, 2), |(i, j)| {
        let r = x.row(i);
        if j == 0 { r[0] * r[1] + (2.0 * r[2]).sin() } else { r[3].powi(2) - 0.5 * r[0] }
    });
    (x, y)
}

#[test]
fn train_mlp_regressor_from_npy_and_csv_targets_and_eval_reports_r2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (x, y) = regression_data(200, 1);
    let (xp, yp) = (write_npy(d, "x.npy", &x), write_npy(d, "y.npy", &y));
    let run = d.join("reg");
    let out = wgnn()
        .args(["train", "mlp", "--data", &format!("npy:{xp}"), "--targets", &format!("npy:{yp}")])
        .args(["--test-fraction", "0.25", "--hidden", "16", "--optimizer", "lbfgs", "--iterations", "100"])
        .args(["--backend", "cpu", "--out", run.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("test R²"), "{stderr}");
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["spec"]["layers"], serde_json::json!([4, 16, 2]));
    assert_eq!(m["spec"]["output"], serde_json::json!({"squared_error": "identity"}), "identity output by default");
    assert_eq!((m["train_examples"].as_u64(), m["test_examples"].as_u64()), (Some(150), Some(50)));
    let r2 = m["r2"].as_f64().expect("metrics.json has r2");
    // A smooth function of 4 inputs: 100 L-BFGS iterations explain most of its variance.
    assert!(r2 > 0.8, "test R² {r2}");
    assert!(m["train_r2"].as_f64().unwrap() >= r2 - 0.05 && m["seconds"].as_f64().unwrap() > 0.0, "{m}");

    // eval on all 200 examples reports R² too.
    let out = wgnn()
        .args(["eval", "--model", run.to_str().unwrap(), "--data", &format!("npy:{xp}")])
        .args(["--targets", &format!("npy:{yp}"), "--backend", "cpu", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["r2"].as_f64().unwrap() > 0.8, "{v}");
    assert!(v.get("reconstruction_error").is_none(), "a regressor reconstructs nothing: {v}");
    // Its targets came from another file: without --targets there is nothing to score.
    fails_with(
        wgnn().args(["eval", "--model", run.to_str().unwrap(), "--data", &format!("npy:{xp}"), "--backend", "cpu"]),
        "is a regressor: give --targets",
    );

    // The CSV form: targets are columns of the data file (here the last two, no label column).
    let csv = d.join("xy.csv");
    let lines: Vec<String> = (0..x.nrows())
        .map(|i| x.row(i).iter().chain(y.row(i)).map(|v| v.to_string()).collect::<Vec<_>>().join(","))
        .collect();
    std::fs::write(&csv, format!("a,b,c,d,y1,y2\n{}\n", lines.join("\n"))).unwrap();
    let run_csv = d.join("reg-csv");
    let out = wgnn()
        .args(["train", "mlp", "--data", &format!("csv:{}", csv.display()), "--label-column", "none"])
        .args(["--targets", "columns:5-6", "--test-fraction", "0.25", "--hidden", "16", "--optimizer", "lbfgs"])
        .args(["--iterations", "100", "--backend", "cpu", "--quiet", "--out", run_csv.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let m2: serde_json::Value = serde_json::from_slice(&std::fs::read(run_csv.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m2["spec"]["layers"], serde_json::json!([4, 16, 2]));
    // Same rows, same seed, same split: the CSV run learns what the .npy run learned (the
    // CSV's decimal text is f32-exact here only up to rounding).
    assert!((m2["r2"].as_f64().unwrap() - r2).abs() < 0.02, "csv {} vs npy {r2}", m2["r2"]);

    // eval without --targets takes the columns the model was trained on (as predict does),
    // and scores exactly what it scores with them named.
    let eval = |targets: &[&str]| {
        let out = wgnn()
            .args(["eval", "--model", run_csv.to_str().unwrap(), "--data", &format!("csv:{}", csv.display())])
            .args(["--label-column", "none", "--backend", "cpu", "--json"])
            .args(targets)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let (stored, named) = (eval(&[]), eval(&["--targets", "columns:5-6"]));
    assert!(stored["r2"].as_f64().is_some(), "{stored}");
    assert_eq!(stored["r2"], named["r2"]);
}

#[test]
fn bad_targets_are_refused_with_one_line_and_no_output_files() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (x, y) = regression_data(20, 2);
    let xp = write_npy(d, "x.npy", &x);
    let short = write_npy(d, "short.npy", &y.slice(ndarray::s![..19, ..]).to_owned());
    let mut with_nan = y.clone();
    with_nan[[3, 1]] = f64::NAN;
    let nan = write_npy(d, "nan.npy", &with_nan);
    let yp = write_npy(d, "y.npy", &y);
    let wide = write_npy(d, "wide.npy", &Array2::<f64>::zeros((20, 3)));
    let text = d.join("y.csv");
    std::fs::write(&text, "1,2\n3,oops\n").unwrap();
    let npy = |p: &str| format!("npy:{p}");

    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["mlp".into(), "--targets".into(), npy(&short)], "19 rows"),
        (vec!["mlp".into(), "--targets".into(), npy(&nan)], "row 3, column 1"),
        (vec!["mlp".into(), "--targets".into(), format!("csv:{}", text.display())], "`oops` is not a number"),
        (vec!["mlp".into(), "--targets".into(), "columns:9".into()], "beyond the 4 columns"),
        (vec!["mlp".into(), "--targets".into(), "columns:1-4".into()], "leave some as inputs"),
        (vec!["mlp".into(), "--targets".into(), "parquet:y.pq".into()], "unknown target source"),
        (vec!["mlp".into(), "--targets".into(), "npy:/no/such.npy".into()], "/no/such.npy"),
        // Test targets narrower or wider than the training targets.
        (
            vec![
                "mlp".into(),
                "--targets".into(),
                npy(&yp),
                "--test-data".into(),
                npy(&xp),
                "--test-targets".into(),
                npy(&wide),
            ],
            "3 values per example but the training targets 2",
        ),
        (vec!["mlp".into(), "--targets".into(), npy(&yp), "--test-data".into(), npy(&xp)], "--test-targets"),
        (vec!["softmax".into(), "--targets".into(), npy(&yp)], "go with `train mlp`"),
        (vec!["autoencoder".into(), "--targets".into(), npy(&yp)], "go with `train mlp`"),
        (vec!["mlp".into(), "--targets".into(), npy(&yp), "--output".into(), "softmax".into()], "squared-error output"),
        (vec!["mlp".into(), "--output".into(), "identity".into()], "needs real-valued targets"),
    ];
    for (i, (args, needle)) in cases.iter().enumerate() {
        let out = d.join(format!("out{i}"));
        fails_with(
            wgnn().arg("train").args(args).args([
                "--data",
                &npy(&xp),
                "--iterations",
                "2",
                "--backend",
                "cpu",
                "--out",
                out.to_str().unwrap(),
            ]),
            needle,
        );
        assert!(!out.exists(), "case {i} ({args:?}) left {}", out.display());
    }
}

// ---- Run folders and exit codes (DESIGN.md "Run folders and exit codes"; README "Exit codes") ----

/// `wgnn train` writing `out`, started as a child whose stderr is read line by line; returns
/// once training has begun (its first progress line), so the lock is held and SIGINT lands
/// mid-training.
fn training_child(out: &Path) -> (std::process::Child, std::io::Lines<std::io::BufReader<std::process::ChildStderr>>) {
    use std::io::BufRead;
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("wgnn"))
        .args(["train", "--backend", "cpu", "--count", "2000", "--iterations", "100000", "--out"])
        .arg(out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("the child ended before training").unwrap();
        if line.starts_with("iteration") {
            break;
        }
    }
    (child, lines)
}

/// A second run on a busy folder is refused at once; Ctrl-C (a real SIGINT) exits 130 after
/// saving a checkpoint, not a model; eval refuses the unfinished run; a new run there needs
/// --resume or --force.
#[test]
fn sigint_exits_130_and_a_busy_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (mut child, lines) = training_child(&out);
    let started = std::time::Instant::now();
    let second = wgnn()
        .args(["train", "--backend", "cpu", "--count", "200", "--iterations", "2", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another wgnn process is writing this run folder"), "{stderr}");
    assert!(!stderr.contains("iteration"), "the second run trained before refusing: {stderr}");
    assert!(started.elapsed().as_secs() < 30, "the refusal was not at once");

    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let code = child.wait().unwrap().code();
    assert_eq!(code, Some(130), "after SIGINT: {rest:?}");
    let last = rest.last().unwrap();
    assert!(last.starts_with("error: interrupted after") && last.contains("checkpoint.safetensors"), "{rest:?}");
    assert!(last.contains("--resume"), "{last}");
    assert!(out.join("checkpoint.safetensors").exists() && !out.join("model.safetensors").exists());

    fails_with(wgnn().args(["eval", "--count", "50", "--model"]).arg(&out), "this run did not finish");
    fails_with(wgnn().args(["visualize", "--model"]).arg(&out), "this run did not finish");
    fails_with(
        wgnn().args(["train", "--backend", "cpu", "--count", "200", "--iterations", "2", "--out"]).arg(&out),
        "holds an unfinished run",
    );
}

/// A folder that cannot be written (here a path under a file: true for root as for anyone) is
/// refused before any data is read or any training, and nothing there is touched.
#[test]
fn an_unwritable_run_folder_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, "keep me").unwrap();
    for out in [file.join("run"), file.clone()] {
        let result = wgnn()
            .args(["train", "--backend", "cpu", "--count", "200", "--iterations", "2", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line, before any data or training: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(&out.display().to_string()), "{stderr}");
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}

/// A finished run is not replaced without --force; with it, it is.
#[test]
fn a_finished_run_is_replaced_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let train = |seed: &str, force: bool| {
        let mut cmd = wgnn();
        cmd.args(["train", "--backend", "cpu", "--quiet", "--count", "200", "--iterations", "2", "--seed", seed]);
        if force {
            cmd.arg("--force");
        }
        cmd.arg("--out").arg(&out).output().unwrap()
    };
    assert_eq!(train("1", false).status.code(), Some(0));
    let first = std::fs::read(out.join("model.safetensors")).unwrap();
    let refused = train("2", false);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("holds a finished run") && stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), first, "the refused run changed the model");
    assert_eq!(train("2", true).status.code(), Some(0));
    assert_ne!(std::fs::read(out.join("model.safetensors")).unwrap(), first, "--force did not replace the run");
}

/// A run that diverges exits 3, keeps its θ in checkpoint.safetensors and writes no model;
/// eval refuses it; default numbering gives the next run the next number.
#[test]
fn a_diverged_run_exits_3_and_leaves_no_model() {
    let dir = tempfile::tempdir().unwrap();
    let sgd = ["train", "--backend", "cpu", "--count", "200", "--optimizer", "sgd", "--batch-size", "50"];
    let result = wgnn()
        .current_dir(dir.path())
        .args(sgd)
        .args(["--learning-rate", "1e4", "--iterations", "20"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(3), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(last.starts_with("error: training diverged") && last.contains("checkpoint.safetensors"), "{stderr}");
    let run1 = dir.path().join("runs/autoencoder-1");
    assert!(run1.join("checkpoint.safetensors").exists() && !run1.join("model.safetensors").exists());
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run1.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["status"], "diverged");
    fails_with(wgnn().args(["eval", "--count", "50", "--model"]).arg(&run1), "this run did not finish: it diverged");
    fails_with(
        wgnn().args(["train", "--backend", "cpu", "--count", "200", "--iterations", "2", "--out"]).arg(&run1),
        "holds a run that diverged",
    );
    let next = wgnn().current_dir(dir.path()).args(sgd).args(["--iterations", "2", "--quiet"]).output().unwrap();
    assert_eq!(next.status.code(), Some(0), "{}", String::from_utf8_lossy(&next.stderr));
    assert!(dir.path().join("runs/autoencoder-2/model.safetensors").exists(), "the failed folder keeps its number");
}

/// Zeros and negatives reach the real checks — from the command line and from a config file —
/// with one line, exit 1, and no run folder.
#[test]
fn zeros_and_negatives_are_refused_up_front_from_flags_and_config_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let config = |json: &str| {
        let path = dir.path().join(format!("c{}.json", json.len()));
        std::fs::write(&path, json).unwrap();
        path.display().to_string()
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--checkpoint-every".into(), "0".into()], "checkpoint every 0"),
        (vec!["--config".into(), config(r#"{"checkpoint-every": 0}"#)], "checkpoint every 0"),
        (vec!["--iterations".into(), "0".into()], "0 iterations"),
        (vec!["--validation".into(), "0.2".into(), "--patience".into(), "0".into()], "patience of 0"),
        (vec!["--validation".into(), "NaN".into()], "validation fraction of NaN"),
        (vec!["--validation".into(), "-0.1".into()], "validation fraction of -0.1"),
        (vec!["--weight-decay".into(), "-1".into()], "--weight-decay -1: the weight decay λ must be"),
        (vec!["--config".into(), config(r#"{"weight-decay": -1}"#)], "--weight-decay -1: the weight decay λ must be"),
        (vec!["--learning-rate=-0.1".into(), "--optimizer".into(), "gd".into()], "--learning-rate -0.1"),
        (vec!["--test-fraction".into(), "-0.5".into()], "--test-fraction -0.5"),
        (vec!["--sparsity".into(), "-0.5".into()], "--sparsity -0.5"),
        (vec!["--optimizer".into(), "sgd".into(), "--batch-size".into(), "0".into()], "--batch-size 0"),
        (vec!["--lbfgs-memory".into(), "0".into()], "--lbfgs-memory 0"),
    ];
    for (args, needle) in cases {
        fails_with(
            wgnn()
                .args(["train", "--backend", "cpu", "--count", "200", "--iterations", "2"])
                .args(&args)
                .arg("--out")
                .arg(&out),
            needle,
        );
        assert!(!out.exists(), "{args:?} left {}", out.display());
    }
    // The other commands take negative values too, and check them.
    fails_with(wgnn().args(["gradcheck", "--weight-decay", "-1"]), "weight decay λ = -1 must be");
}

// ---------------------------------------------------------------------------------------
// Numerics (issue 13, helper B): numerically safe losses and non-finite values refused.

/// `cost <value>` from a successful run's last line.
fn printed_cost(cmd: &mut Command) -> f64 {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    let line = last_line(&out.stdout);
    line.strip_prefix("cost ").unwrap_or_else(|| panic!("last line: {line}")).parse().unwrap()
}

/// The handed 4-3-4 sparse autoencoder with hidden biases `bias`: (data path, θ path).
fn saturated_autoencoder_files(d: &Path, bias: f64) -> (String, String) {
    use rand::{RngExt, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let x = Array2::from_shape_simple_fn((20, 4), || rng.random_range(0.1..0.9));
    let mut theta = Array1::from_shape_simple_fn(31, || rng.random_range(-0.02..0.02));
    theta.slice_mut(ndarray::s![24..27]).fill(bias);
    theta.slice_mut(ndarray::s![27..]).fill(0.0);
    (write_npy(d, "x.npy", &x), write_npy(d, &format!("theta{bias}.npy"), &theta))
}

#[test]
fn cost_of_huge_softmax_logits_is_ln_2_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // W = [[1e8, 0], [1e8, 0]], b = 0, x = [1, 0], label 1: equal logits of 1e8.
    let theta = write_npy(d, "theta.npy", &Array1::from(vec![1e8, 0.0, 1e8, 0.0, 0.0, 0.0]));
    let x = write_npy(d, "x.npy", &Array2::from_shape_vec((1, 2), vec![1.0, 0.0]).unwrap());
    let labels = write_npy(d, "labels.npy", &Array1::from(vec![1i64]));
    for backend in [
        &["--backend", "cpu", "--precision", "f32"][..],
        &["--backend", "cpu", "--precision", "f64"],
        &["--backend", "gpu"],
    ] {
        let cost = printed_cost(
            wgnn()
                .args(["cost", "--layers", "2,2", "--output", "softmax", "--theta", &theta, "--data", &x])
                .args(["--labels", &labels])
                .args(backend),
        );
        assert!((cost - std::f64::consts::LN_2).abs() < 1e-6, "{backend:?}: cost {cost}, want ln 2");
    }
}

#[test]
fn cost_with_saturated_sparsity_is_finite_and_writes_a_finite_gradient() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (x, theta) = saturated_autoencoder_files(d, 20.0);
    let cost = |extra: &[&str]| {
        let grad = d.join(format!("g{}.npy", extra.join("")));
        let c = printed_cost(
            wgnn()
                .args(["cost", "--layers", "4,3,4", "--sparsity", "0.01", "--theta", &theta, "--data", &x])
                .args(["--grad-out", grad.to_str().unwrap()])
                .args(extra),
        );
        let g: Array1<f64> = ndarray_npy::read_npy(&grad).unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{extra:?}: gradient {g}");
        (c, g)
    };
    let (c64, g64) = cost(&["--backend", "cpu", "--precision", "f64"]);
    // β Σ KL with 1 − ρ̂ ≈ e^{−20}: about 3 · 3 · 0.99 · 20.
    assert!(c64 > 150.0 && c64 < 200.0, "f64 cost {c64}");
    for extra in [&["--backend", "cpu", "--precision", "f32"][..], &["--backend", "gpu"]] {
        let (c, g) = cost(extra);
        assert!(((c - c64) / c64).abs() < 1e-5, "{extra:?}: cost {c} vs f64 {c64}");
        let err = (&g - &g64).mapv(|v| v * v).sum().sqrt() / g64.mapv(|v| v * v).sum().sqrt();
        assert!(err < 1e-4, "{extra:?}: gradient {err:e} from f64");
    }
}

#[test]
fn costs_and_theta_that_are_not_finite_exit_non_zero_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (x, _) = saturated_autoencoder_files(d, 0.0);
    let mut theta: Array1<f64> = Array1::zeros(31);
    theta[0] = -1e300;
    let theta = write_npy(d, "big.npy", &theta);
    let run = |extra: &[&str]| {
        let mut c = wgnn();
        c.args(["cost", "--layers", "4,3,4", "--theta", &theta, "--data", &x]).args(extra);
        c
    };
    // λ = 0: the decay term is exactly 0 (it printed NaN), in f64 where θ is representable.
    let out = run(&["--backend", "cpu", "--precision", "f64"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("weight decay 0 "), "{text}");
    // Not representable in f32: refused on the f32 CPU and on the GPU.
    fails_with(&mut run(&["--backend", "cpu", "--precision", "f32"]), "θ[0]");
    fails_with(&mut run(&["--backend", "gpu"]), "θ[0]");
    // λ > 0: (λ/2) Σ W² overflows; no gradient file is written.
    let grad = d.join("g.npy");
    fails_with(
        &mut run(&[
            "--backend",
            "cpu",
            "--precision",
            "f64",
            "--weight-decay",
            "1e-4",
            "--grad-out",
            grad.to_str().unwrap(),
        ]),
        "weight decay inf",
    );
    assert!(!grad.exists(), "a failed cost left {}", grad.display());
    // A checkpoint holding ±1e300 is refused by eval (f32 by default), and in f64 its
    // overflowing decay term is an error, not `cost inf`.
    let spec = wgnn::model::NetSpec::new(
        &[4, 3, 4],
        wgnn::model::Activation::Sigmoid,
        wgnn::model::Output::SquaredError(wgnn::model::Activation::Sigmoid),
    )
    .unwrap()
    .with_weight_decay(1e-4)
    .unwrap();
    let mut big = vec![0.01; 31];
    big[0] = 1e300;
    let model = d.join("model.safetensors");
    wgnn::checkpoint::Checkpoint::new(spec, big, Default::default()).unwrap().save(&model).unwrap();
    let data = format!("npy:{x}");
    fails_with(wgnn().args(["eval", "--model", model.to_str().unwrap(), "--data", &data]), "θ[0]");
    fails_with(
        wgnn().args([
            "eval",
            "--model",
            model.to_str().unwrap(),
            "--data",
            &data,
            "--backend",
            "cpu",
            "--precision",
            "f64",
        ]),
        "not finite",
    );
}

#[test]
fn invalid_sparsity_values_are_refused_not_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (x, theta) = saturated_autoencoder_files(d, 0.0);
    for rho in ["nan", "-0.1", "1", "1.5"] {
        let flag = format!("--sparsity={rho}");
        fails_with(
            wgnn().args(["cost", "--layers", "4,3,4", "--theta", &theta, "--data", &x, &flag, "--backend", "cpu"]),
            "sparsity target ρ",
        );
        // train prints its progress on stderr: its one error line comes last.
        let out = d.join(format!("run{rho}"));
        let run = wgnn()
            .args(["train", &flag, "--iterations", "1", "--count", "200", "--out", out.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!run.status.success() && !stderr.contains("panicked"), "--sparsity={rho}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
        assert_eq!(errors.len(), 1, "{stderr}");
        assert!(last_line(&run.stderr).contains("sparsity target ρ"), "--sparsity={rho}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------------
// Issue 13, readers: sizes from headers and values are refused in one line with exit code 1,
// never an abort (134) or a panic (101).

/// A version-1 `.npy` of little-endian f64 `values` under a header declaring `shape`.
fn forged_npy(dir: &Path, name: &str, shape: &str, values: usize) -> String {
    let data: Vec<u8> = (0..values).flat_map(|i| (i as f64 / 100.0).to_le_bytes()).collect();
    let b = common::npy_bytes("<f8", shape, &data);
    let p = dir.join(name);
    std::fs::write(&p, b).unwrap();
    p.display().to_string()
}

#[test]
fn forged_npy_headers_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = write_npy(d, "X.npy", &Array2::<f64>::from_elem((20, 4), 0.5));
    // θ of a 4-3 network: 4·3 weights and 3 biases.
    let theta = forged_npy(d, "theta.npy", "(15,)", 15);
    let cost = || {
        let mut c = wgnn();
        c.args(["cost", "--layers", "4,3", "--output", "identity", "--backend", "cpu"]);
        c
    };
    // The issue's recipe: `(20, 4)` replaced by `(2147483648, 4)` in numpy's file.
    let bytes = std::fs::read(&x).unwrap();
    let at = bytes.windows(7).position(|w| w == b"(20, 4)").unwrap();
    let mut edited = bytes[..at].to_vec();
    edited.extend(b"(2147483648, 4)");
    edited.extend(&bytes[at + 7..]);
    let edited_path = d.join("edited.npy");
    std::fs::write(&edited_path, edited).unwrap();
    let out = cost().args(["--theta", &theta, "--data", edited_path.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    fails_with(cost().args(["--theta", &theta, "--data", edited_path.to_str().unwrap()]), "edited.npy");
    // The same shape under a well-formed header: the size is named.
    let big = forged_npy(d, "big.npy", "(2147483648, 4)", 80);
    fails_with(
        cost().args(["--theta", &theta, "--data", &big]),
        "(2147483648, 4) of <f8, which needs 68719476736 bytes",
    );
    let big_theta = forged_npy(d, "bigtheta.npy", "(2147483648,)", 15);
    fails_with(
        cost().args(["--theta", &big_theta, "--data", &x]),
        "bigtheta.npy: its header declares shape (2147483648,)",
    );
    // A label of 1e9 in a .npy of float labels.
    let labels = write_npy(
        d,
        "labels.npy",
        &Array1::from(vec![
            0.0f64, 1.0, 1e9, 2.0, 1.0, 0.0, 2.0, 1.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0,
        ]),
    );
    fails_with(
        wgnn()
            .args(["cost", "--layers", "4,3", "--output", "softmax", "--backend", "cpu"])
            .args(["--theta", &theta, "--data", &x, "--labels", &labels]),
        "label 1000000000 of example 2",
    );
}

#[test]
fn sizes_on_the_command_line_are_bounded_where_they_are_parsed() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value) in [
        ("--hidden", "3000000000"),
        ("--hidden", "9223372036854775808"),
        ("--count", "4000000000"),
        ("--patch", "100000"),
    ] {
        let out_dir = dir.path().join("run");
        let out = wgnn()
            .args(["train", flag, value, "--iterations", "1", "--backend", "cpu", "--out", out_dir.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // clap's usage error (exit code 2), not an abort (134) or a panic (101).
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(first.contains(value) && first.contains("out of range"), "{flag} {value}: {stderr}");
        assert!(!out_dir.exists());
    }
}

#[test]
fn csv_labels_and_configs_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = |data: &Path, extra: &[&str]| {
        let mut c = wgnn();
        c.args(["train", "softmax", "--iterations", "1", "--backend", "cpu"])
            .args(["--data", &format!("csv:{}", data.display())])
            .args(["--out", d.join("run").to_str().unwrap()])
            .args(extra);
        c
    };
    let csv = |name: &str, stray: &str| {
        let mut text: String = (0..30).map(|i| format!("{},{},{}\n", i, i % 7, i % 10)).collect();
        text.push_str(&format!("1,2,{stray}\n"));
        let p = d.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    // (1e9 and a stray 27 are classes of their own now, named as written: tests/labels.rs.)
    fails_with(&mut train(&csv("half.csv", "2.5"), &[]), "line 31, column 3: the label `2.5` is not a class number");
    fails_with(&mut train(&csv("tiny.csv", "1e-400"), &[]), "the label `1e-400` is not a class number");
    // A digits filter is a set of class numbers: a range to 4e9 is not spelled out.
    fails_with(
        &mut train(&csv("ok.csv", "3"), &["--digits", "0-4000000000"]),
        "the label 4000000000 in the digits filter",
    );
    let digits = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/digits8x8/digits.csv.gz");
    if digits.exists() {
        fails_with(&mut train(&digits, &["--label-column", "first"]), "every one of the 1797 labels is 0");
    }
    assert!(!d.join("run").exists());
    // A deeply nested TOML config: one short line, not the 200 KB line echoed back.
    let deep = d.join("deep.toml");
    std::fs::write(&deep, format!("a = {}\n", "[".repeat(200_000))).unwrap();
    let out = wgnn().args(["train", "--config", deep.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.len() < 400 && stderr.contains("deep.toml") && stderr.contains("not valid TOML"), "{stderr}");
}

/// clap's usage errors (an unknown flag, a value out of range, a misspelt command) are one line
/// with exit code 2, like every other refusal; help and version still print whole and exit 0.
#[test]
fn usage_errors_are_one_line_with_exit_code_2() {
    for args in [
        &["train", "--hidden", "3000000000"][..],
        &["train", "--hidde", "5"],
        &["trian"],
        &["train", "--whiten", "pcx"],
        &["cost", "--layers", "4,x"],
    ] {
        let out = wgnn().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("error: ") && !err.contains("Usage:"), "{args:?}: {err}");
    }
    let out = wgnn().args(["train", "--whiten", "pcx"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("[possible values: zca, pca]"));
    for args in [&["--help"][..], &["train", "--help"], &["--version"]] {
        let out = wgnn().args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
    }
}

// ---------------------------------------------------------------- scikit-learn's flags, epochs, streams

/// 150 labelled examples in 4-D (three separated clouds, no randomness), as a CSV file with
/// the label last.
fn three_clouds_csv(d: &Path) -> String {
    let text: String = (0..150)
        .map(|i| {
            let (class, t) = (i % 3, i as f64);
            let x: Vec<String> =
                (0..4).map(|k| format!("{:.4}", 3.0 * class as f64 + (t * (k as f64 + 1.3)).sin())).collect();
            format!("{},{class}\n", x.join(","))
        })
        .collect();
    let p = d.join("clouds.csv");
    std::fs::write(&p, text).unwrap();
    format!("csv:{}", p.display())
}

/// `wgnn train mlp` on `data` into `d/name` with `extra` flags; returns the output and the
/// run's metrics.json (Null when none was written).
fn train_clouds(d: &Path, data: &str, name: &str, extra: &[&str]) -> (std::process::Output, serde_json::Value) {
    let out = wgnn()
        .args(["train", "mlp", "--hidden", "8", "--backend", "cpu", "--data", data])
        .args(["--out", d.join(name).to_str().unwrap()])
        .args(extra)
        .output()
        .unwrap();
    let metrics = std::fs::read(d.join(name).join("metrics.json"))
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap_or(serde_json::Value::Null);
    (out, metrics)
}

#[test]
fn scikit_learn_flags_reach_the_optimizer() {
    let dir = tempfile::tempdir().unwrap();
    let (d, data) = (dir.path(), three_clouds_csv(dir.path()));
    let ok = |name: &str, extra: &[&str]| {
        let (out, m) = train_clouds(d, &data, name, extra);
        assert!(out.status.success(), "{extra:?}: {}", String::from_utf8_lossy(&out.stderr));
        m
    };
    // SGD's momentum; --batch-size auto is min(200, n): one batch of all 150 per epoch.
    let m = ok("sgd", &["--optimizer", "sgd", "--momentum", "0.5", "--nesterov", "false", "--iterations", "2"]);
    assert_eq!(m["method"]["rule"], serde_json::json!({"kind": "momentum", "momentum": 0.5, "nesterov": false}));
    let m = ok("sgd0", &["--optimizer", "sgd", "--momentum", "0", "--batch-size", "auto", "--iterations", "2"]);
    assert_eq!(m["method"]["rule"], serde_json::json!({"kind": "plain"}), "μ = 0 is plain SGD");
    assert_eq!((m["method"]["batch_size"].as_u64(), m["evaluations"].as_u64()), (Some(200), Some(2)));
    // Adam's β₁, β₂, ε and the adaptive schedule with --tol.
    let m = ok(
        "adam",
        &["--beta1", "0.8", "--beta2", "0.99", "--epsilon", "1e-7", "--schedule", "adaptive", "--tol", "1e-3"],
    );
    assert_eq!(m["method"]["rule"], serde_json::json!({"kind": "adam", "beta1": 0.8, "beta2": 0.99, "epsilon": 1e-7}));
    assert_eq!(m["method"]["schedule"], serde_json::json!({"kind": "adaptive", "tol": 1e-3}));
    // --tol and --n-iter-no-change: with tol 10 every epoch after the first stalls, so the
    // run converges after 1 + n_iter_no_change epochs.
    let m = ok("tol", &["--tol", "10", "--n-iter-no-change", "2", "--iterations", "50"]);
    assert_eq!(m["iterations"], 3, "{}", m["stop_reason"]);
    assert!(m["stop_reason"].as_str().unwrap().contains("cost stopped decreasing"), "{}", m["stop_reason"]);
    // --max-fun: L-BFGS stops at the evaluation limit, checked between iterations.
    let m = ok("maxfun", &["--optimizer", "lbfgs", "--max-fun", "5", "--iterations", "100"]);
    assert!(m["stop_reason"].as_str().unwrap().contains("evaluation limit"), "{}", m["stop_reason"]);
    assert!(m["evaluations"].as_u64().unwrap() >= 5 && m["iterations"].as_u64().unwrap() < 100);
    // --alpha α: λ = α/n, n the examples of each gradient — all 150 for L-BFGS; for Adam the
    // batch, min(200, 120) after a validation split of 30.
    // --checkpoint-every keeps the finished run's optimizer state, so --resume can extend it.
    let m = ok("alpha", &["--optimizer", "lbfgs", "--alpha", "1e-2", "--iterations", "2", "--checkpoint-every", "100"]);
    assert_eq!(m["spec"]["weight_decay"].as_f64(), Some(1e-2 / 150.0));
    let m = ok("alpha-adam", &["--alpha", "1e-2", "--validation", "0.2", "--iterations", "1"]);
    assert_eq!(m["spec"]["weight_decay"].as_f64(), Some(1e-2 / 120.0));
    assert_eq!(m["train_examples"], 120);

    // Refused in one line, before anything is written.
    let refused = |name: &str, extra: &[&str], needle: &str| {
        let (out, m) = train_clouds(d, &data, name, extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{extra:?}: {stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(needle), "{extra:?}: {stderr}");
        assert!(m.is_null() && !d.join(name).join("model.safetensors").exists());
    };
    refused("r1", &["--alpha", "1e-2", "--weight-decay", "1e-3"], "--alpha and --weight-decay both");
    refused("r2", &["--momentum", "0.5"], "--momentum sets sgd's momentum: use it with --optimizer sgd");
    refused("r3", &["--optimizer", "sgd", "--beta2", "0.9"], "--beta2 is Adam's");
    refused("r4", &["--optimizer", "sgd", "--momentum", "1"], "--momentum 1: the momentum μ must lie in [0, 1)");
    refused("r5", &["--adam-epsilon", "0"], "--adam-epsilon 0: Adam's ε must be a finite number > 0");
    refused("r6", &["--alpha", "-1"], "--alpha -1");
    refused("r7", &["--n-iter-no-change", "0"], "--n-iter-no-change 0");
    refused("r8", &["--max-fun", "0"], "--max-fun 0");
    refused("r9", &["--tol", "nan"], "--tol NaN");
    let (out, _) = train_clouds(d, &data, "r10", &["--batch-size", "many"]);
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`many` is not a batch size"));

    // The new flags are part of the job: --resume refuses another value.
    let run = d.join("alpha").display().to_string();
    for (flag, value) in [("--alpha", "0.02"), ("--weight-decay", "0.001"), ("--max-fun", "9")] {
        let out = wgnn().args(["train", "--resume", &run, "--iterations", "3", flag, value]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&format!("{flag} {value} conflicts with the run")), "{stderr}");
    }
    let out = wgnn().args(["train", "--resume", &run, "--iterations", "3", "--alpha", "1e-2"]).output().unwrap();
    assert!(out.status.success(), "the run's own --alpha repeats: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn minibatch_runs_report_epochs_and_the_kept_epoch_and_results_go_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let (d, data) = (dir.path(), three_clouds_csv(dir.path()));
    // `wgnn train … > file`: the summary lands in the file, the progress on stderr.
    let log = d.join("log.txt");
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("wgnn"))
        .args(["train", "mlp", "--hidden", "8", "--backend", "cpu", "--data", &data, "--iterations", "20"])
        .args(["--learning-rate", "0.05", "--validation", "0.2", "--patience", "2", "--schedule", "adaptive"])
        .args(["--out", d.join("run").to_str().unwrap()])
        .stdout(std::fs::File::create(&log).unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = std::fs::read_to_string(&log).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("run/metrics.json")).unwrap()).unwrap();
    let epochs = m["iterations"].as_u64().unwrap() as usize;

    // One line per epoch (20 epochs at most: every one is shown), named so, with the
    // validation error and η that drive early stopping and the schedule.
    assert!(stderr.contains("training adam for up to 20 epochs"), "{stderr}");
    assert!(!stderr.contains("iteration"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("epoch")).collect();
    assert_eq!(lines.len(), epochs, "{stderr}");
    for (k, line) in lines.iter().enumerate() {
        assert!(line.starts_with(&format!("epoch {:>5}  mean J = ", k + 1)), "{line}");
        assert!(line.contains("validation error ") && line.contains("η = "), "{line}");
    }
    // The summary is on stdout only, and names the epoch whose θ was kept: with early
    // stopping the first with the lowest validation error, else the last.
    for said in ["done     ", "kept     θ of epoch ", "final cost ", "wrote    "] {
        assert!(stdout.contains(said), "{said} missing from stdout: {stdout}");
        assert!(!stderr.contains(said), "{said} on stderr: {stderr}");
    }
    let history = m["history"].as_array().unwrap();
    let validation: Vec<f64> = history.iter().filter_map(|r| r["validation"].as_f64()).collect();
    assert_eq!(validation.len(), epochs);
    // This run (η = 0.05, patience 2) stops early, two epochs after its best.
    assert!(m["stop_reason"].as_str().unwrap().contains("stopped early"), "{stdout}");
    let best = validation.iter().cloned().fold(f64::INFINITY, f64::min);
    let kept = validation.iter().position(|&v| v == best).unwrap() + 1;
    assert!(kept < epochs, "{stdout}");
    assert!(stdout.contains(&format!("kept     θ of epoch {kept}, the best validation error")), "{stdout}");
    let final_cost: f64 = stdout.lines().find_map(|l| l.strip_prefix("final cost ")).unwrap().parse().unwrap();
    assert_eq!(Some(final_cost), m["final_cost"].as_f64());

    // cost: its whole report (what was computed, the terms, the cost) on stdout; nothing on
    // stderr, where an error would be its one line.
    let out = sparse_autoencoder_cost()
        .args(["--theta", &fixture("sparse_autoencoder", "theta.npy")])
        .args(["--data", &format!("npy:{}", fixture("sparse_autoencoder", "x.npy"))])
        .args(["--backend", "cpu"])
        .output()
        .unwrap();
    assert!(out.status.success() && out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("network  64-25-64") && stdout.lines().last().unwrap().starts_with("cost "), "{stdout}");
}

#[test]
fn adaptive_schedule_sets_eta_from_the_epoch_costs_on_cpu_and_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let (d, data) = (dir.path(), three_clouds_csv(dir.path()));
    for backend in ["cpu", "gpu"] {
        let run = d.join(backend);
        let out = wgnn()
            .args(["train", "mlp", "--hidden", "8", "--data", &data, "--backend", backend])
            .args(["--optimizer", "sgd", "--learning-rate", "0.3", "--batch-size", "50", "--iterations", "12"])
            .args(["--schedule", "adaptive", "--tol", "0.05", "--n-iter-no-change", "100"])
            .args(["--out", run.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{backend}: {}", String::from_utf8_lossy(&out.stderr));
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
        assert!(m["backend"].as_str().unwrap().contains(backend), "{}", m["backend"]);
        // Replaying scikit-learn's rule on the run's own epoch costs gives every epoch's η.
        let adaptive = wgnn::optim::Schedule::Adaptive { tol: 0.05 };
        let mut state = wgnn::optim::ScheduleState::default();
        let mut eta = 0.3;
        let history = m["history"].as_array().unwrap();
        assert_eq!(history.len(), 12, "{backend}");
        for r in history {
            assert_eq!(r["step_size"].as_f64(), Some(eta), "{backend}: epoch {}", r["iteration"]);
            eta = adaptive.next(0.3, eta, 0, r["cost"].as_f64().unwrap(), &mut state);
        }
        assert!(history.last().unwrap()["step_size"].as_f64().unwrap() < 0.3, "{backend}: η was never cut");
    }
}

// ---- What the user sees (issue 14 §6): pictures, notes, help texts, config kind, eval ----

/// csv:FILE of 160 rows: 4 values in [0, 1] and a class label 0–2 in the last column.
fn small_csv(dir: &Path) -> String {
    let text: String = (0..160)
        .map(|i| {
            let v: Vec<String> =
                (0..4).map(|j| format!("{:.4}", ((i * 7 + j * 13 + i * j) % 17) as f64 / 17.0)).collect();
            format!("{},{}\n", v.join(","), i % 3)
        })
        .collect();
    let p = dir.join("small.csv");
    std::fs::write(&p, text).unwrap();
    format!("csv:{}", p.display())
}

fn metrics(run: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap()
}

#[test]
fn loss_png_draws_the_validation_curve_when_there_is_validation() {
    let d = tempfile::tempdir().unwrap();
    let data = small_csv(d.path());
    let blue = |run: &Path| {
        let img = image::open(run.join("loss.png")).unwrap().to_rgb8();
        img.pixels().filter(|p| p.0 == wgnn::viz::VALIDATION_COLOUR.0).count()
    };
    for (name, extra) in [("with", &["--validation", "0.25"][..]), ("without", &[][..])] {
        let run = d.path().join(name);
        let out = wgnn()
            .args(["train", "mlp", "--data", &data, "--hidden", "8", "--iterations", "6", "--quiet"])
            .args(extra)
            .args(["--out", run.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let drawn = blue(&run);
        if name == "with" {
            assert!(drawn > 200, "only {drawn} pixels of the validation colour");
        } else {
            assert_eq!(drawn, 0, "a validation colour without validation");
        }
    }
}

#[test]
fn eval_of_a_regressor_takes_its_training_columns_and_scores_the_rows_training_held_out() {
    let d = tempfile::tempdir().unwrap();
    let data = small_csv(d.path());
    let regressor = d.path().join("reg");
    let targets = ["--targets", "columns:3-4", "--test-fraction", "0.25"];
    let out = wgnn()
        .args(["train", "mlp", "--data", &data, "--hidden", "6", "--optimizer", "lbfgs", "--iterations", "8"])
        .args(targets)
        .args(["--seed", "7", "--quiet", "--out", regressor.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let trained_r2 = metrics(&regressor)["r2"].as_f64().unwrap();
    let eval = |seed: &str, with_targets: bool| {
        let mut cmd = wgnn();
        cmd.args(["eval", "--model", regressor.to_str().unwrap(), "--data", &data, "--json"]);
        if !seed.is_empty() {
            cmd.args(["--seed", seed]);
        }
        if with_targets {
            cmd.args(targets);
        }
        cmd
    };
    let out = eval("7", true).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let scored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(scored["examples"], 40, "a quarter of 160 rows");
    let r2 = scored["r2"].as_f64().unwrap();
    assert!((r2 - trained_r2).abs() <= 1e-9 * trained_r2.abs().max(1.0), "eval R² {r2} vs training's {trained_r2}");
    // Without --seed, the model's own seed: the same rows.
    let out = eval("", true).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let default_seed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(default_seed["r2"], scored["r2"], "eval without --seed scores the rows training held out");
    // Another seed holds out other rows (and says the seeds differ).
    let out = eval("8", true).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("trained with --seed 7"));
    let other: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(other["r2"].as_f64().unwrap(), trained_r2);
    // Without --targets it takes the columns it was trained on, and scores the same rows.
    let out = eval("7", false).args(["--test-fraction", "0.25"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((&stored["r2"], &stored["examples"]), (&scored["r2"], &scored["examples"]));

    // A classifier: eval's accuracy on the held-out rows is training's test accuracy.
    let classifier = d.path().join("cls");
    let out = wgnn()
        .args(["train", "softmax", "--data", &data, "--iterations", "5", "--test-fraction", "0.3", "--seed", "4"])
        .args(["--quiet", "--out", classifier.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = wgnn()
        .args(["eval", "--model", classifier.to_str().unwrap(), "--data", &data, "--json"])
        .args(["--test-fraction", "0.3", "--seed", "4"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let scored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(scored["accuracy"], metrics(&classifier)["test_accuracy"]);
    assert_eq!(scored["examples"], 48);
}

#[test]
fn the_backend_note_comes_at_most_once_and_never_with_quiet() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let train = |quiet: bool, out: &Path| {
        let mut cmd = wgnn();
        cmd.args(["train", "--iterations", "2", "--count", "200", "--out", out.to_str().unwrap()]);
        if quiet {
            cmd.arg("--quiet");
        }
        cmd.output().unwrap()
    };
    let notes = |stderr: &[u8]| String::from_utf8_lossy(stderr).lines().filter(|l| l.starts_with("note:")).count();
    let out = train(false, &run);
    assert!(out.status.success());
    assert!(notes(&out.stderr) <= 1, "{}", String::from_utf8_lossy(&out.stderr));
    let out = train(true, &d.path().join("quiet"));
    assert!(out.status.success());
    assert_eq!(notes(&out.stderr), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let out = wgnn().args(["eval", "--model", run.to_str().unwrap(), "--count", "100"]).output().unwrap();
    assert!(out.status.success());
    assert!(notes(&out.stderr) <= 1, "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("XDG_RUNTIME_DIR"));
}

#[test]
fn help_texts_describe_their_own_command() {
    let help = |cmd: &str| {
        let out = wgnn().args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let eval = help("eval");
    // Its --model and --count are its own, not reconstruct's.
    assert!(!eval.contains("`reconstruct`") && !eval.contains("for reconstruct"), "{eval}");
    assert!(!eval.contains("autoencoder: a model"), "{eval}");
    assert!(eval.contains("--test-fraction"));
    assert!(help("reconstruct").contains("The trained autoencoder"));
    let gradcheck = help("gradcheck");
    assert!(!gradcheck.contains("--labels"), "{gradcheck}");
    let bench = help("bench");
    assert!(!bench.to_lowercase().contains("issue"), "{bench}");
    // gradcheck names the number it checks and the tolerance it checks it against.
    let out = wgnn().args(["gradcheck", "--backend", "cpu", "--precision", "f32"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    let verdict = said.lines().find(|l| l.starts_with("ok: ")).unwrap_or_default();
    assert!(
        verdict.contains("vs central differences of the f64 cost") && verdict.contains("≤ tolerance 1e-4"),
        "{said}"
    );
    assert!(said.contains("(for information, not checked)"), "{said}");
}

#[test]
fn a_config_file_sets_the_kind_train_trains() {
    let d = tempfile::tempdir().unwrap();
    let data = small_csv(d.path());
    let config = d.path().join("c.toml");
    std::fs::write(&config, format!("kind = \"softmax\"\niterations = 2\nquiet = true\ndata = \"{data}\"\n")).unwrap();
    let layers = |run: &Path| metrics(run)["spec"]["layers"].as_array().unwrap().len();
    let from_file = d.path().join("from-file");
    let out = wgnn()
        .args(["train", "--config", config.to_str().unwrap(), "--out", from_file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(metrics(&from_file)["spec"]["output"], "softmax");
    assert_eq!(layers(&from_file), 2, "softmax regression: inputs and classes");
    // The command line's kind wins over the file's.
    let mlp = d.path().join("mlp");
    let out = wgnn()
        .args(["train", "mlp", "--hidden", "4", "--config", config.to_str().unwrap(), "--out", mlp.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(layers(&mlp), 3);
    fails_with(
        wgnn().args(["eval", "--config", config.to_str().unwrap(), "--model", from_file.to_str().unwrap()]),
        "only train takes it",
    );
}

#[test]
fn whitening_for_a_sigmoid_output_is_warned_about() {
    let d = tempfile::tempdir().unwrap();
    let warned = |output: &str| {
        let run = d.path().join(output);
        let out = wgnn()
            .args(["train", "--whiten", "zca", "--output", output, "--iterations", "1", "--count", "200", "--quiet"])
            .args(["--out", run.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        stderr.lines().any(|l| l.starts_with("warning: --whiten") && l.contains("--output identity"))
    };
    assert!(warned("sigmoid"));
    assert!(!warned("identity"));
}

/// Found by attacking the reliability pass: an output that names one of the command's inputs
/// overwrote it (predict, cost --grad-out, convolve), `reconstruct --count 0` panicked
/// dividing by zero, and `gradcheck --tolerance nan` printed FAILED with exit 0.
#[test]
fn outputs_never_overwrite_inputs_and_degenerate_counts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let x = Array2::from_shape_fn((20, 4), |(i, j)| 0.1 + 0.8 * (((i * 7 + j * 3) % 11) as f64) / 11.0);
    let x_path = write_npy(d, "X.npy", &x);
    let theta = write_npy(d, "T.npy", &Array1::from_shape_fn(31, |i| 0.01 * (i as f64 - 15.0)));
    let before = std::fs::read(&x_path).unwrap();
    for out in [&x_path, &theta] {
        fails_with(
            wgnn().args(["cost", "--layers", "4,3,4", "--theta", &theta, "--data", &x_path, "--grad-out", out]),
            "is also an input",
        );
    }
    let run = d.join("m");
    let out = wgnn()
        .args(["train", "autoencoder", "--data", &format!("npy:{x_path}"), "--hidden", "3", "--iterations", "3"])
        .args(["--quiet", "--out", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let model = run.to_str().unwrap();
    fails_with(
        wgnn().args(["predict", "--model", model, "--data", &format!("npy:{x_path}"), "--out", &x_path]),
        "is also an input",
    );
    assert_eq!(std::fs::read(&x_path).unwrap(), before, "the data file is untouched");
    let png = d.join("r.png");
    fails_with(
        wgnn()
            .args(["reconstruct", "--model", model, "--data", &format!("npy:{x_path}"), "--count", "0"])
            .args(["--out", png.to_str().unwrap()]),
        "no examples to draw",
    );
    for t in ["nan", "-1", "0", "inf"] {
        fails_with(wgnn().args(["gradcheck", &format!("--tolerance={t}")]), "the tolerance must be");
    }
}

/// Found by attacking the reliability pass: a config key that is no flag got clap's "use
/// '-- --key'" tip, which a file cannot follow; a float64 value beyond float32's range was
/// reported as "inf" (the value after narrowing), in .npy data and CSV alike.
#[test]
fn unknown_config_keys_and_values_beyond_f32_are_named_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("c.json");
    std::fs::write(&config, r#"{"nosuchkey": 1}"#).unwrap();
    fails_with(
        wgnn().args(["train", "--config", config.to_str().unwrap()]),
        "`nosuchkey` is not a setting of `wgnn train`",
    );
    let mut x = Array2::from_elem((6, 4), 0.5);
    x[[3, 2]] = 1e300;
    let npy = write_npy(d, "X.npy", &x);
    fails_with(
        wgnn().args(["train", "--data", &format!("npy:{npy}"), "--out", d.join("r").to_str().unwrap()]),
        "1e300",
    );
    let csv = d.join("d.csv");
    std::fs::write(&csv, "0.5,1,0\n0.5,1e300,1\n0.2,0.3,0\n").unwrap();
    fails_with(
        wgnn().args([
            "train",
            "softmax",
            "--data",
            &format!("csv:{}", csv.display()),
            "--out",
            d.join("s").to_str().unwrap(),
        ]),
        "line 2, column 2: `1e300` is beyond float32's range",
    );
    assert!(!d.join("r").join("model.safetensors").exists() && !d.join("s").join("model.safetensors").exists());
}

/// The same job stopped one epoch before the end (kept by --checkpoint-every) and extended
/// with --resume names the kept epoch from the epochs of both invocations and ends on the
/// uninterrupted run's θ. (It named the last epoch once the checkpoint stopped carrying a
/// second copy of the history: the records are read from the optimizer's state.)
#[test]
fn an_extended_run_keeps_the_best_validated_epoch_of_both_invocations() {
    let dir = tempfile::tempdir().unwrap();
    let (d, data) = (dir.path(), three_clouds_csv(dir.path()));
    let job = |iterations: &str| {
        let mut c = wgnn();
        c.args(["train", "mlp", "--hidden", "8", "--backend", "cpu", "--data", &data, "--iterations", iterations])
            .args(["--learning-rate", "0.05", "--validation", "0.2", "--patience", "2", "--schedule", "adaptive"]);
        c
    };
    let out = job("20").args(["--out", d.join("run").to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("run/metrics.json")).unwrap()).unwrap();
    let epochs = m["iterations"].as_u64().unwrap() as usize;
    let validation: Vec<f64> =
        m["history"].as_array().unwrap().iter().filter_map(|r| r["validation"].as_f64()).collect();
    let best = validation.iter().cloned().fold(f64::INFINITY, f64::min);
    let kept = validation.iter().position(|&v| v == best).unwrap() + 1;
    let final_cost: f64 = stdout.lines().find_map(|l| l.strip_prefix("final cost ")).unwrap().parse().unwrap();
    let split = d.join("split");
    let first = (epochs - 1).to_string();
    // --checkpoint-every keeps the finished run's optimizer state, so --resume can extend it.
    let out = job(&first).args(["--checkpoint-every", "100", "--out", split.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = wgnn().args(["train", "--resume", split.to_str().unwrap(), "--iterations", "20"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let resumed = String::from_utf8_lossy(&out.stdout);
    assert!(resumed.contains(&format!("kept     θ of epoch {kept}, the best validation error")), "{resumed}");
    assert!(resumed.contains(&format!("final cost {final_cost}\n")), "the same θ as uninterrupted: {resumed}");
}

// ---- Labels as users have them (issue 14 §4) ----

/// Three separable clouds labelled `setosa`, `versicolor`, `virginica`, with a header.
fn named_clouds_csv(dir: &Path, name: &str, extra: &str) -> String {
    let names = ["virginica", "setosa", "versicolor"];
    let mut text = String::from("a,b,species\n");
    for i in 0..45 {
        let c = i % 3;
        let jitter = (i / 3) as f64 * 0.01;
        text.push_str(&format!("{},{},{}\n", c as f64 * 3.0 + jitter, 1.0 - c as f64 * 2.0 + jitter, names[c]));
    }
    text.push_str(extra);
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    format!("csv:{}", p.display())
}

/// String labels: trained on, given back by predict (the label column and the probability
/// columns are named by them), the headings of eval's confusion matrix; a label unseen in
/// training is one line. Integer labels {3, 7} in .npy come back as 3 and 7.
#[test]
fn named_and_sparse_labels_are_given_back_by_predict_and_eval() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = named_clouds_csv(d, "train.csv", "");
    let run = d.join("run");
    let out = wgnn()
        .args(["train", "softmax", "--backend", "cpu", "--iterations", "60", "--quiet", "--data", &data])
        .args(["--out", run.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run_s = run.to_str().unwrap();
    let csv_out = d.join("p.csv");
    let out = wgnn()
        .args(["predict", "--backend", "cpu", "--model", run_s, "--data", &data, "--out", csv_out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&csv_out).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("label,p_setosa,p_versicolor,p_virginica"));
    // The clouds are separable: each row's label is its cloud's name, as written.
    let expected = ["virginica", "setosa", "versicolor"];
    for (i, line) in lines.enumerate() {
        assert_eq!(line.split(',').next(), Some(expected[i % 3]), "row {i}: {line}");
    }
    let out = wgnn().args(["eval", "--backend", "cpu", "--model", run_s, "--data", &data]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let heading = stdout.lines().skip_while(|l| !l.starts_with("confusion")).nth(1).unwrap_or_default();
    let heads: Vec<&str> = heading.split_whitespace().collect();
    assert_eq!(heads, ["setosa", "versicolor", "virginica"], "{stdout}");
    assert!(stdout.contains("accuracy 1\n"), "{stdout}");
    let unseen = named_clouds_csv(d, "unseen.csv", "1,1,rose\n");
    fails_with(
        wgnn().args(["eval", "--backend", "cpu", "--model", run_s, "--data", &unseen]),
        "the label `rose` (example 46) is not one the model was trained on (its classes: setosa, versicolor, virginica)",
    );
    // .npy labels {3, 7}: two classes, given back as 3 and 7.
    let x = Array2::from_shape_fn((40, 2), |(i, j)| if (i % 2 == 0) == (j == 0) { 1.0f32 } else { -1.0 });
    let y = Array1::from_iter((0..40).map(|i| if i % 2 == 0 { 7i64 } else { 3 }));
    let (x, y) = (write_npy(d, "x.npy", &x), write_npy(d, "y.npy", &y));
    let run37 = d.join("run37");
    let out = wgnn()
        .args(["train", "softmax", "--backend", "cpu", "--iterations", "30", "--quiet"])
        .args(["--data", &format!("npy:{x}"), "--labels", &y, "--out", run37.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = d.join("p.npy");
    let out = wgnn()
        .args(["predict", "--backend", "cpu", "--model", run37.to_str().unwrap(), "--data", &format!("npy:{x}")])
        .args(["--out", p.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let labels: Array1<i64> = ndarray_npy::read_npy(d.join("p.labels.npy")).unwrap();
    assert_eq!(labels.to_vec(), (0..40).map(|i| if i % 2 == 0 { 7 } else { 3 }).collect::<Vec<i64>>());
    let probabilities: Array2<f32> = ndarray_npy::read_npy(&p).unwrap();
    assert_eq!(probabilities.dim(), (40, 2));
    // Named classes in .npy: a NumPy unicode vector of the names.
    let named = d.join("named.npy");
    let out = wgnn()
        .args(["predict", "--backend", "cpu", "--model", run_s, "--data", &data, "--out", named.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(d.join("named.labels.npy")).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = String::from_utf8_lossy(&bytes[10..10 + header_len]);
    assert!(header.contains("'descr': '<U10'") && header.contains("'shape': (45,)"), "{header}");
    assert_eq!((10 + header_len) % 64, 0, "NumPy aligns the data to 64 bytes");
    let first: String = bytes[10 + header_len..10 + header_len + 40]
        .chunks(4)
        .map(|c| char::from_u32(u32::from_le_bytes(c.try_into().unwrap())).unwrap())
        .filter(|&c| c != '\0')
        .collect();
    assert_eq!(first, "virginica");
}

// ---- The lecture's comparison figure (issue 14 §7) ----

/// `--compare-sparsity` trains the same job with β = 0 and with β into two run folders (same
/// data, seed and settings otherwise) and draws both filter grids side by side; it is refused
/// for other kinds and for β = 0.
#[test]
fn compare_sparsity_trains_both_and_draws_them_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let run = wgnn()
        .args(["train", "autoencoder", "--compare-sparsity", "--iterations", "5", "--count", "500", "--quiet"])
        .args(["--backend", "cpu", "--seed", "4", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("compare.png"), "{stdout}");
    let load = |name: &str| wgnn::checkpoint::Checkpoint::load(&out.join(name).join("model.safetensors")).unwrap();
    let (plain, sparse) = (load("weight-decay"), load("sparse"));
    let beta = |ck: &wgnn::checkpoint::Checkpoint| ck.spec.sparsity.map_or(0.0, |s| s.weight);
    assert_eq!((beta(&plain), beta(&sparse)), (0.0, 3.0));
    assert_eq!(plain.spec.layers, sparse.spec.layers);
    assert_eq!(plain.metadata.seed, sparse.metadata.seed);
    assert_ne!(plain.theta, sparse.theta, "β changes what is learned");
    // Two 5×5 grids of 8×8 tiles (each ~241 px wide) side by side, under their titles.
    let picture = image::open(out.join("compare.png")).unwrap();
    let grid = image::open(out.join("sparse/filters.png")).unwrap();
    assert!(
        picture.width() > 2 * grid.width() && picture.height() > grid.height(),
        "{}×{}",
        picture.width(),
        picture.height()
    );
    for (args, needle) in [
        (vec!["softmax", "--data", "synthetic"], "use it with `train autoencoder`"),
        (vec!["autoencoder", "--sparsity-weight", "0"], "give a β above 0"),
    ] {
        fails_with(
            wgnn().args(["train", "--compare-sparsity", "--out", dir.path().join("x").to_str().unwrap()]).args(&args),
            needle,
        );
    }
    assert!(!dir.path().join("x").exists());
}

// ---- layer stacks (issue 15): a CNN and a maxout net through every command ----

/// MNIST's folder as the tests find it (`WGNN_DATA_DIR`, default ../shared/data), or None.
fn mnist_dir() -> Option<String> {
    let dir = std::env::var("WGNN_DATA_DIR").unwrap_or_else(|_| "../shared/data".into());
    let path = Path::new(&dir).join("mnist");
    path.exists().then(|| format!("mnist:{}", path.display()))
}

/// θ of a run folder's model.safetensors.
fn trained_theta(run: &Path) -> Vec<f64> {
    wgnn::checkpoint::Checkpoint::load(&run.join("model.safetensors")).expect("a model").theta
}

/// A small CNN and a maxout net, trained from the CLI on 200 MNIST images: a run stopped
/// after one of two epochs and resumed ends on the uninterrupted run's θ, to the bit; `eval` prints an accuracy that `predict`'s probabilities reproduce on the
/// same images; `visualize` draws the filters (the conv's, or maxout's over the pixels).
#[test]
fn a_cnn_and_a_maxout_net_checkpoint_resume_eval_predict_and_visualize() {
    let Some(mnist) = mnist_dir() else {
        eprintln!("skipped: no MNIST (set WGNN_DATA_DIR)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, net, drawn) in [
        ("cnn", "conv 4x5x5 relu stride 2, maxpool 2, dense 16 relu, softmax", "4 filters of 1×5×5"),
        ("maxout", "maxout 8x2, softmax", "16 filters of 1×28×28"),
    ] {
        let run = |out: &str, epochs: &str| {
            let out = dir.path().join(out);
            let mut c = wgnn();
            c.args(["train", "cnn", "--data", &mnist, "--limit", "200", "--net", net, "--batch-size", "20"])
                .args(["--learning-rate", "3e-3"])
                .args(["--iterations", epochs, "--checkpoint-every", "1", "--quiet", "--out", out.to_str().unwrap()]);
            c
        };
        let whole = run(&format!("{name}-whole"), "2").output().unwrap();
        assert!(whole.status.success(), "{name}: {}", String::from_utf8_lossy(&whole.stderr));
        let first = run(&format!("{name}-split"), "1").output().unwrap();
        assert!(first.status.success(), "{name}: {}", String::from_utf8_lossy(&first.stderr));
        let split = dir.path().join(format!("{name}-split"));
        let resumed =
            wgnn().args(["train", "--resume", split.to_str().unwrap(), "--iterations", "2"]).output().unwrap();
        assert!(resumed.status.success(), "{name}: {}", String::from_utf8_lossy(&resumed.stderr));
        let (resumed, whole) = (trained_theta(&split), trained_theta(&dir.path().join(format!("{name}-whole"))));
        let same = resumed.len() == whole.len() && resumed.iter().zip(&whole).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(same, "{name}: the resumed run's θ differs from the uninterrupted run's");

        let model = dir.path().join(format!("{name}-whole"));
        let model = model.to_str().unwrap();
        let data = ["--data", &mnist, "--split", "test", "--limit", "100"];
        let eval = wgnn().args(["eval", "--model", model, "--json"]).args(data).output().unwrap();
        assert!(eval.status.success(), "{name}: {}", String::from_utf8_lossy(&eval.stderr));
        let report: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
        let accuracy = report["accuracy"].as_f64().expect("an accuracy");
        let probs = dir.path().join(format!("{name}.npy"));
        let predict =
            wgnn().args(["predict", "--model", model, "--out", probs.to_str().unwrap()]).args(data).output().unwrap();
        assert!(predict.status.success(), "{name}: {}", String::from_utf8_lossy(&predict.stderr));
        let p: Array2<f32> = ndarray_npy::read_npy(&probs).unwrap();
        let predicted: Array1<i64> = ndarray_npy::read_npy(dir.path().join(format!("{name}.labels.npy"))).unwrap();
        assert_eq!(p.dim(), (100, 10), "{name}");
        assert!(p.rows().into_iter().all(|r| (r.sum() - 1.0).abs() < 1e-4), "{name}: rows are probabilities");
        let argmax =
            |r: ndarray::ArrayView1<f32>| r.iter().enumerate().fold(0, |b, (i, &v)| if v > r[b] { i } else { b });
        let classes: Vec<usize> = p.rows().into_iter().map(argmax).collect();
        assert!(classes.iter().zip(&predicted).all(|(&c, &l)| c as i64 == l), "{name}: labels are the argmax");
        let folder = Path::new(mnist.strip_prefix("mnist:").unwrap());
        let truth = wgnn::data::Mnist::load(folder, wgnn::data::Split::Test).unwrap().take(100).labels;
        let right = classes.iter().zip(&truth).filter(|(c, t)| c == t).count();
        assert!((right as f64 / 100.0 - accuracy).abs() < 1e-12, "{name}: predict {right}/100, eval {accuracy}");

        let png = dir.path().join(format!("{name}.png"));
        let vis = wgnn().args(["visualize", "--model", model, "--out", png.to_str().unwrap()]).output().unwrap();
        assert!(vis.status.success(), "{name}: {}", String::from_utf8_lossy(&vis.stderr));
        assert!(
            String::from_utf8_lossy(&vis.stdout).contains(drawn),
            "{name}: {}",
            String::from_utf8_lossy(&vis.stdout)
        );
        assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
        assert!(dir.path().join(format!("{name}-whole/filters.png")).exists(), "{name}: the run draws filters.png");
    }
}

/// `wgnn train cnn` (LeNet's shape at a quarter of the filters) on 480 MNIST images for one
/// epoch (Adam η = 3e-3, batch 16: 30 steps) reaches a held-out accuracy far above chance
/// (71.7% on 120 images when written): the bar fails if learning breaks.
#[test]
fn train_cnn_learns_mnist_in_one_epoch_from_the_cli() {
    let Some(mnist) = mnist_dir() else {
        eprintln!("skipped: no MNIST (set WGNN_DATA_DIR)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let net = "conv 5x5x5 relu, maxpool 2, conv 12x5x5 relu, maxpool 2, dense 64 relu, softmax";
    let run = wgnn()
        .args(["train", "cnn", "--data", &mnist, "--limit", "600", "--test-fraction", "0.2", "--net", net])
        .args(["--batch-size", "16", "--learning-rate", "3e-3", "--iterations", "1", "--quiet"])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
    let accuracy = m["test_accuracy"].as_f64().expect("a test accuracy");
    assert!(accuracy > 0.6, "test accuracy {accuracy} after one epoch on 480 images (chance 0.1)");
}

// ---------------------------------------------------------------------------------------------
// Sequence models (issue 16): character models on text, sampling, sequence data refusals.

/// A text of a small made-up language (seeded): sentences of words from a short list, so that
/// a character model can learn spelling and word order well below the characters' unigram
/// entropy within a few hundred updates.
fn toy_language(sentences: usize) -> String {
    use rand::{RngExt, SeedableRng, rngs::StdRng};
    let subjects = ["the cat", "a dog", "my bird", "the old fox", "her hen"];
    let verbs = ["sat on", "ran to", "looked at", "jumped over"];
    let objects = ["the mat.", "a log.", "the red barn.", "my hat."];
    let mut rng = StdRng::seed_from_u64(16);
    let mut text = String::new();
    for _ in 0..sentences {
        let pick = |rng: &mut StdRng, words: &[&str]| words[rng.random_range(0..words.len())].to_string();
        text += &format!("{} {} {}\n", pick(&mut rng, &subjects), pick(&mut rng, &verbs), pick(&mut rng, &objects));
    }
    text
}

/// −Σ p log₂ p over the characters of `text`.
fn unigram_bits(text: &str) -> f64 {
    let mut counts = std::collections::HashMap::<char, f64>::new();
    text.chars().for_each(|c| *counts.entry(c).or_default() += 1.0);
    let n = text.chars().count() as f64;
    -counts.values().map(|k| k / n * (k / n).log2()).sum::<f64>()
}

fn number_after(text: &str, prefix: &str) -> f64 {
    let line = text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no `{prefix}` in {text}"));
    line[prefix.len()..].split_whitespace().next().unwrap().parse().unwrap()
}

/// A tiny LSTM character model trained from the CLI: its held-out bits per character fall
/// below the held-out text's unigram entropy; `eval` scores the same held-out text to the same
/// value; `sample` gives the same text for the same seed, only characters of the vocabulary.
#[test]
fn a_tiny_character_model_beats_the_unigram_entropy_and_samples_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let text = toy_language(700);
    let path = dir.path().join("toy.txt");
    std::fs::write(&path, &text).unwrap();
    let data = format!("text:{}", path.display());
    let run = dir.path().join("lm");
    let out = wgnn()
        .args(["train", "lstm", "--data", &data, "--hidden", "32", "--bptt", "16", "--batch-size", "16"])
        .args(["--steps", "150", "--learning-rate", "0.01", "--eval-every", "0", "--out", run.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(run.join("model.safetensors").is_file());
    let chars: Vec<char> = text.chars().collect();
    let held_out: String = chars[chars.len() - (chars.len() as f64 * 0.1).round() as usize..].iter().collect();
    let unigram = unigram_bits(&held_out);
    assert!((number_after(&stdout, "unigram ") - unigram).abs() < 1e-4, "{stdout}");
    let bits = number_after(&stdout, "held-out bits per character ");
    assert!(bits < unigram - 0.5, "held-out {bits} bits/char, unigram {unigram}: {stdout}");
    assert!(stdout.contains("each from a zero state"), "{stdout}");

    // eval: the same held-out text, the same windows, the same number.
    let out = wgnn().args(["eval", "--model", run.to_str().unwrap(), "--data", &data]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let eval = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(eval.contains("each from a zero state"), "{eval}");
    assert!((number_after(&eval, "bits per character ") - bits).abs() < 1e-4, "{eval} vs {bits}");

    // sample: same seed, same text; another seed, another text; vocabulary characters only.
    let sample = |seed: &str| {
        let out = wgnn()
            .args(["sample", "--model", run.to_str().unwrap(), "--length", "200", "--seed", seed])
            .args(["--temperature", "0.8", "--prime", "the cat "])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let (a, b, c) = (sample("3"), sample("3"), sample("4"));
    assert_eq!(a, b, "the same seed gives the same text");
    assert_ne!(a, c, "another seed, another text");
    assert!(a.starts_with("the cat "), "{a}");
    assert_eq!(a.trim_end_matches('\n').chars().count(), "the cat ".len() + 200, "{a:?}");
    let vocabulary: std::collections::HashSet<char> = text.chars().collect();
    assert!(a.trim_end_matches('\n').chars().all(|ch| vocabulary.contains(&ch)), "{a:?}");

    // Characters the model never saw: in the prime, and in the text to evaluate.
    fails_with(
        wgnn().args(["sample", "--model", run.to_str().unwrap(), "--prime", "the CAT"]),
        "--prime has the character 'C' at position 4, which the model never saw",
    );
    let other = dir.path().join("other.txt");
    std::fs::write(&other, "the cat sat on the mat.\n".repeat(20) + "the cat sat on the mät.\n").unwrap();
    fails_with(
        wgnn().args(["eval", "--model", run.to_str().unwrap(), "--data", &format!("text:{}", other.display())]),
        "'ä' (U+00E4)",
    );
    fails_with(
        wgnn().args(["eval", "--model", run.to_str().unwrap(), "--data", "synthetic"]),
        "this is a character model: give --data text:FILE to score its bits per character",
    );
    fails_with(
        wgnn().args(["sample", "--model", run.to_str().unwrap(), "--temperature", "0"]),
        "--temperature 0: the temperature τ must be a finite number > 0",
    );
}

#[test]
fn sequence_data_refusals_are_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = |name: &str| d.join(name).display().to_string();
    let empty = d.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    fails_with(
        wgnn().args(["train", "lstm", "--data", &format!("text:{}", empty.display()), "--out", &out("a")]),
        "empty.txt: is empty",
    );
    let short = d.join("short.txt");
    std::fs::write(&short, "in the beginning was the word\n".repeat(4)).unwrap();
    fails_with(
        wgnn().args(["train", "lstm", "--data", &format!("text:{}", short.display()), "--out", &out("b")]),
        "too few for 32 streams of at least one window of 64 characters (--bptt 64)",
    );
    fails_with(
        wgnn().args(["train", "lstm", "--data", &format!("text:{}", short.display()), "--out", &out("c")]).args([
            "--bptt",
            "200",
            "--batch-size",
            "1",
        ]),
        "too few for one window of 200 (--bptt 200)",
    );
    // A 2-D array where m × T × n is needed, and ragged sequences.
    let flat = write_npy(d, "flat.npy", &Array2::<f32>::ones((6, 10)));
    let labels = write_npy(d, "labels.npy", &Array1::from(vec![0i64, 1, 0, 1, 0, 1]));
    fails_with(
        wgnn().args(["train", "lstm", "--data", &format!("npy:{flat}"), "--labels", &labels, "--out", &out("d")]),
        "has shape (6, 10) (2 axes), but sequences need 3: (examples, steps, features); for one feature per step save it as shape (6, 10, 1)",
    );
    let ragged = d.join("ragged.npy");
    std::fs::write(&ragged, common::npy_bytes("|O", "(2,)", &[0x80, 0x02, b'.'])).unwrap();
    fails_with(
        wgnn().args(["train", "lstm", "--data", &format!("npy:{}", ragged.display()), "--out", &out("e")]),
        "ragged sequences",
    );
    // Images need --sequence rows; a model without a vocabulary cannot sample.
    fails_with(
        wgnn().args(["train", "lstm", "--data", &format!("npy:{flat}"), "--sequence", "columns", "--out", &out("f")]),
        "unknown sequence reading `columns`",
    );
    // Per-step targets (m × T × k): labels and targets together, targets that are not a 3-D
    // .npy, a softmax over real targets, targets with images read by rows; the same T needed.
    let seq = write_npy(d, "seq.npy", &ndarray::Array3::<f32>::ones((6, 4, 2)));
    let per_step = write_npy(d, "per-step.npy", &ndarray::Array3::<f32>::ones((6, 4, 1)));
    let other_t = write_npy(d, "other-t.npy", &ndarray::Array3::<f32>::ones((6, 3, 1)));
    let train = |extra: &[&str], name: &str| {
        let mut cmd = wgnn();
        cmd.args(["train", "lstm", "--backend", "cpu", "--data", &format!("npy:{seq}"), "--out", &out(name)]);
        cmd.args(extra);
        cmd
    };
    let npy = |p: &str| format!("npy:{p}");
    fails_with(
        &mut train(&["--targets", &npy(&per_step), "--labels", &labels], "g"),
        "--labels and --targets both given",
    );
    fails_with(
        &mut train(&["--targets", &format!("csv:{flat}")], "h"),
        "per-step targets of sequences are a float .npy",
    );
    fails_with(&mut train(&["--targets", &npy(&per_step), "--output", "softmax"], "i"), "a squared-error output");
    fails_with(&mut train(&["--targets", &npy(&flat)], "j"), "(2 axes)");
    fails_with(&mut train(&["--targets", &npy(&other_t)], "k"), "give one row of targets per step, shape (6, 4, k)");
    fails_with(
        wgnn().args(["train", "lstm", "--data", "mnist:nowhere", "--sequence", "rows", "--targets", &npy(&per_step)]),
        "--targets with --sequence rows",
    );
    assert!(!d.join("a/model.safetensors").exists() && !d.join("d/model.safetensors").exists());
}

/// Sequence classifiers go through the ordinary training path: a `.npy` of m × T × n with one
/// label per sequence trains, predicts and evaluates (the 3-D file is recognised by every
/// command that reads `npy:` data), and MNIST read row by row is 28 steps of 28 pixels.
#[test]
fn sequence_classifiers_train_predict_and_eval_from_npy_and_mnist_rows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The label is the sign of the first feature at the first step: an LSTM must carry it
    // through the later steps.
    let x = ndarray::Array3::<f32>::from_shape_fn((60, 5, 3), |(i, t, j)| {
        (((i * 7 + t * 3 + j * 5) % 11) as f32 - 5.0) / 5.0 * if (i + t + j) % 2 == 0 { 1.0 } else { -1.0 }
    });
    let labels: Vec<i64> = (0..60).map(|i| i64::from(x[[i, 0, 0]] > 0.0)).collect();
    let x_path = write_npy(d, "x.npy", &x);
    let l_path = write_npy(d, "l.npy", &Array1::from(labels.clone()));
    let run = d.join("seq");
    let out = wgnn()
        .args(["train", "lstm", "--data", &format!("npy:{x_path}"), "--labels", &l_path, "--hidden", "6"])
        .args(["--iterations", "2", "--backend", "cpu", "--out", run.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("60 sequences of 5 steps of 3 values, with labels"), "{stderr}");
    assert!(stderr.contains("1×5×3 → lstm 6, softmax 2"), "{stderr}");
    let predictions = d.join("p.npy");
    let out = wgnn()
        .args(["predict", "--model", run.to_str().unwrap(), "--data", &format!("npy:{x_path}")])
        .args(["--out", predictions.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p: Array2<f32> = ndarray_npy::read_npy(&predictions).unwrap();
    assert_eq!(p.dim(), (60, 2), "2 class probabilities per sequence");
    assert!(p.rows().into_iter().all(|r| (r.sum() - 1.0).abs() < 1e-5), "probabilities sum to 1");
    let out = wgnn()
        .args(["eval", "--model", run.to_str().unwrap(), "--data", &format!("npy:{x_path}"), "--labels", &l_path])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let accuracy = number_after(&String::from_utf8_lossy(&out.stdout), "accuracy ");
    let agree = (0..60).filter(|&i| i64::from(p[[i, 1]] > p[[i, 0]]) == labels[i]).count() as f64 / 60.0;
    assert!((accuracy - agree).abs() < 1e-9, "eval's accuracy {accuracy} is predict's {agree}");
    fails_with(
        wgnn().args(["sample", "--model", run.to_str().unwrap()]),
        "1×5×3 → lstm 6, softmax 2 (cross-entropy), λ=0 is not a character model (it stores no vocabulary)",
    );

    // MNIST row by row: 28 steps of 28 pixels, the ordinary minibatch path.
    let mnist = common::data_dir().join("mnist");
    let out = wgnn()
        .args(["train", "rnn", "--data", &format!("mnist:{}", mnist.display()), "--sequence", "rows"])
        .args(["--limit", "100", "--hidden", "4", "--iterations", "1", "--backend", "cpu"])
        .args(["--out", d.join("rows").to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("read row by row: 28 steps of 28 pixels"), "{stderr}");
    assert!(stderr.contains("1×28×28 → rnn 4 tanh, softmax 10"), "{stderr}");
    fails_with(
        wgnn().args([
            "train",
            "lstm",
            "--data",
            &format!("mnist:{}", mnist.display()),
            "--out",
            d.join("no").to_str().unwrap(),
        ]),
        "give --data text:FILE, mnist:DIR with --sequence rows, or npy:FILE of shape m × T × n",
    );
}

/// Flags of character models are refused where they would be ignored: on other kinds, and on
/// sequence classifiers (which train by epochs without clipping for now).
#[test]
fn sequence_flags_are_refused_where_they_mean_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r").display().to_string();
    let mnist = format!("mnist:{}", common::data_dir().join("mnist").display());
    fails_with(
        wgnn().args(["train", "mlp", "--data", &mnist, "--bptt", "8", "--out", &out]),
        "--bptt goes with a sequence model: `train lstm` or `train rnn`",
    );
    fails_with(
        wgnn().args(["train", "mlp", "--data", &mnist, "--sequence", "rows", "--out", &out]),
        "--sequence goes with a sequence model",
    );
    fails_with(
        wgnn().args(["train", "lstm", "--data", &mnist, "--sequence", "rows", "--clip-norm", "5", "--out", &out]),
        "--clip-norm goes with a character model (--data text:FILE)",
    );
    let text = dir.path().join("t.txt");
    std::fs::write(&text, "abc ".repeat(100)).unwrap();
    fails_with(
        wgnn().args([
            "train",
            "lstm",
            "--data",
            &format!("text:{}", text.display()),
            "--iterations",
            "3",
            "--out",
            &out,
        ]),
        "--iterations does not go with a character model (--data text:FILE): give --steps",
    );
    assert!(!dir.path().join("r").exists(), "a refused run leaves no folder");
}

/// `wgnn train lstm --sequence rows --backend gpu` (issue 16 §3): one epoch of an LSTM on 128
/// MNIST images row by row, θ and Adam on the device, ends at the CPU f32 run's final cost
/// (the same seed, batches and steps); `--backend auto` says why it takes the CPU when the
/// only adapter is a software one.
#[test]
fn train_lstm_on_mnist_rows_runs_on_the_gpu() {
    let Some(mnist) = mnist_dir() else {
        eprintln!("skipped: no MNIST (set WGNN_DATA_DIR)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let run = |backend: &str| {
        let out = dir.path().join(backend);
        let run = wgnn()
            .args(["train", "lstm", "--data", &mnist, "--sequence", "rows", "--limit", "128", "--hidden", "6"])
            .args(["--batch-size", "32", "--iterations", "1", "--backend", backend])
            .args(["--out", out.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(run.status.success(), "--backend {backend}: {stderr}");
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
        (m["final_cost"].as_f64().expect("a final cost"), m["initial_cost"].as_f64().unwrap(), stderr)
    };
    let (gpu, gpu0, stderr) = run("gpu");
    assert!(stderr.contains("backend  gpu f32"), "{stderr}");
    let (cpu, cpu0, _) = run("cpu");
    assert!(((gpu0 - cpu0) / cpu0).abs() < 1e-5, "initial cost: GPU {gpu0}, CPU {cpu0}");
    assert!(((gpu - cpu) / cpu).abs() < 1e-3, "after one epoch: GPU {gpu}, CPU {cpu}");
    assert!(gpu < gpu0, "the cost did not fall: {gpu0} → {gpu}");
    let (_, _, stderr) = run("auto");
    if stderr.contains("(software)") {
        assert!(stderr.contains("using the CPU") && stderr.contains("backend  cpu"), "{stderr}");
    }
}

/// `wgnn train lstm --data text:FILE --backend gpu`: the character model's windows on the
/// device, the state carried there, end at the CPU f32 run's held-out bits per character (the
/// same windows, seed and updates); `--precision f64` with the GPU is refused in one line.
#[test]
fn train_lstm_char_model_runs_on_the_gpu() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("toy.txt");
    std::fs::write(&text, toy_language(120)).unwrap();
    let data = format!("text:{}", text.display());
    let run = |backend: &str| {
        let out = dir.path().join(backend);
        let run = wgnn()
            .args(["train", "lstm", "--data", &data, "--hidden", "8", "--bptt", "8", "--batch-size", "4"])
            .args(["--steps", "12", "--eval-every", "0", "--seed", "1", "--backend", backend])
            .args(["--out", out.to_str().unwrap()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(run.status.success(), "--backend {backend}: {stderr}");
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
        (m["held_out_bits_per_character"].as_f64().expect("held-out bits"), stderr)
    };
    let (gpu, stderr) = run("gpu");
    assert!(stderr.contains("backend  gpu f32"), "{stderr}");
    let (cpu, _) = run("cpu");
    assert!((gpu - cpu).abs() < 1e-3, "held-out bits per character: GPU {gpu}, CPU {cpu}");
    fails_with(
        wgnn().args(["train", "lstm", "--data", &data, "--backend", "gpu", "--precision", "f64"]),
        "the GPU computes in f32: leave out --precision f64, or use --backend cpu",
    );
}

/// Per-step targets (m × T × k) from the CLI: a held-out test fraction is scored (its targets
/// are T·k values per example, as the training ones), and column-major `.npy` files
/// (`np.asfortranarray`) read as the same numbers as row-major ones.
#[test]
fn per_step_targets_take_a_test_fraction_and_column_major_files() {
    use ndarray::ShapeBuilder;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (m, steps, n) = (40, 5, 3);
    let x =
        ndarray::Array3::<f32>::from_shape_fn((m, steps, n), |(i, t, j)| ((i * 7 + t * 3 + j * 5) % 11) as f32 / 11.0);
    let y = ndarray::Array3::<f32>::from_shape_fn((m, steps, 2), |(i, t, j)| x[[i, t, 0]] + j as f32 * x[[i, t, 1]]);
    let mut x_f = ndarray::Array3::<f32>::zeros((m, steps, n).f());
    x_f.assign(&x);
    let mut y_f = ndarray::Array3::<f32>::zeros((m, steps, 2).f());
    y_f.assign(&y);
    let npy = |name: &str, a: &ndarray::Array3<f32>| format!("npy:{}", write_npy(d, name, a));
    let (x_c, y_c, x_f, y_f) = (npy("x.npy", &x), npy("y.npy", &y), npy("xf.npy", &x_f), npy("yf.npy", &y_f));
    let train = |data: &str, targets: &str, out: &str| {
        let run = d.join(out);
        let o = wgnn()
            .args(["train", "lstm", "--backend", "cpu", "--quiet", "--hidden", "4", "--iterations", "3"])
            .args(["--test-fraction", "0.2", "--data", data, "--targets", targets, "--out"])
            .arg(&run)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
        let model = std::fs::read(run.join("model.safetensors")).unwrap();
        (metrics, model)
    };
    let (metrics, model) = train(&x_c, &y_c, "c");
    assert_eq!(metrics["test_examples"], 8, "{metrics}");
    assert!(metrics["r2"].as_f64().is_some_and(f64::is_finite), "no test R² in {metrics}");
    let (metrics_f, model_f) = train(&x_f, &y_f, "f");
    assert_eq!(metrics_f["final_cost"], metrics["final_cost"], "column-major files train the same run");
    assert_eq!(model_f.len(), model.len());
    // predict reads a column-major file as the row-major one.
    let predict = |data: &str, out: &str| {
        let path = d.join(out);
        let o = wgnn()
            .args(["predict", "--backend", "cpu", "--model"])
            .arg(d.join("c"))
            .args(["--data", data, "--out"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(path).unwrap()
    };
    assert_eq!(predict(&x_f, "pf.npy"), predict(&x_c, "pc.npy"));
}
