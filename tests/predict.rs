//! `wgnn predict` and `wgnn export` as a user meets them: predictions of every kind of model on
//! unlabelled data equal what the library's backends give for the same θ, with every stage
//! stored with the model applied (whitening, `--features-from`, a stacked pipeline); the
//! output files are laid out as documented; an exported θ and spec reproduce the model's cost.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use ndarray::{Array1, Array2, Axis};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use rand::{RngExt, SeedableRng, rngs::StdRng};

use wgnn::checkpoint::Checkpoint;
use wgnn::model::NetSpec;
use wgnn::{Backend, CpuBackend};

fn wgnn() -> Command {
    Command::cargo_bin("wgnn").unwrap()
}

fn gpu_skipped() -> bool {
    std::env::var_os("WGNN_SKIP_GPU").is_some_and(|v| v == "1")
}

/// Runs `args` and expects success; returns stdout.
fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Expects exit 1 with one `error: ` line holding `needle`.
fn refused(cmd: &mut Command, needle: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("note: ")).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "expected `{needle}` in: {stderr}");
}

/// Examples as float32 (so the .npy and the .csv hold the same numbers), labels of 3 classes
/// (the largest of the first three values), and 2 real-valued targets.
struct Data {
    x: Array2<f32>,
    labels: Vec<usize>,
    dir: tempfile::TempDir,
}

impl Data {
    fn new(m: usize, n: usize) -> Data {
        let mut rng = StdRng::seed_from_u64(14);
        let x = Array2::from_shape_fn((m, n), |_| rng.random_range(0.0f32..1.0));
        let labels = x.rows().into_iter().map(|r| wgnn::backend::argmax(r.iter().take(3).map(|&v| v as f64))).collect();
        let data = Data { x, labels, dir: tempfile::tempdir().unwrap() };
        data.x.write_npy(std::fs::File::create(data.path("x.npy")).unwrap()).unwrap();
        let labels = Array1::from_iter(data.labels.iter().map(|&l| l as i64));
        labels.write_npy(std::fs::File::create(data.path("labels.npy")).unwrap()).unwrap();
        let targets = data.x.map_axis(Axis(1), |r| r.sum()).insert_axis(Axis(1));
        let targets = ndarray::concatenate![Axis(1), targets, data.x.column(0).insert_axis(Axis(1))];
        targets.write_npy(std::fs::File::create(data.path("targets.npy")).unwrap()).unwrap();
        let rows: Vec<String> =
            data.x.rows().into_iter().map(|r| r.iter().map(f32::to_string).collect::<Vec<_>>().join(",")).collect();
        std::fs::write(data.path("x.csv"), rows.join("\n") + "\n").unwrap();
        data
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn npy(&self) -> String {
        format!("npy:{}", self.path("x.npy").display())
    }

    /// `wgnn train KIND` on these examples, on the CPU, into `name`.
    fn train(&self, kind: &str, name: &str, extra: &[&str]) -> PathBuf {
        let out = self.path(name);
        ok(wgnn()
            .args(["train", kind, "--backend", "cpu", "--quiet", "--iterations", "10", "--data", &self.npy()])
            .args(extra)
            .arg("--out")
            .arg(&out));
        out
    }

    /// `wgnn predict` of `model` on the unlabelled examples into `file`; returns its path.
    fn predict(&self, model: &Path, file: &str, extra: &[&str]) -> PathBuf {
        let out = self.path(file);
        ok(wgnn().args(["predict", "--data", &self.npy(), "--model"]).arg(model).args(extra).arg("--out").arg(&out));
        out
    }
}

fn read_f32(path: &Path) -> Array2<f32> {
    Array2::<f32>::read_npy(std::fs::File::open(path).unwrap()).unwrap()
}

/// A CSV's header and its rows of numbers.
fn read_csv(path: &Path) -> (String, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header = lines.next().unwrap().to_string();
    (header, lines.map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect())
}

fn model(run: &Path) -> Checkpoint {
    Checkpoint::load(&wgnn::predict::model_file(run).unwrap()).unwrap()
}

fn cpu(spec: &NetSpec) -> CpuBackend<f32> {
    CpuBackend::<f32>::new(spec.clone()).unwrap()
}

fn relative(a: &Array2<f32>, b: &Array2<f32>) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (diff / norm).sqrt()
}

#[test]
fn a_classifier_writes_labels_and_probabilities_as_eval_and_the_backend_see_them() {
    let data = Data::new(60, 6);
    let labels = data.path("labels.npy").display().to_string();
    let run = data.train("softmax", "softmax", &["--labels", &labels]);
    // eval on unlabelled data points to predict (the first handed case).
    refused(
        wgnn().args(["eval", "--backend", "cpu", "--data", &data.npy(), "--model"]).arg(&run),
        &format!("wgnn predict --model {}", run.display()),
    );

    // .npy: probabilities m × k float32, labels beside them; no labels given to predict.
    let p = read_f32(&data.predict(&run, "p.npy", &[]));
    let predicted: Vec<usize> = Array1::<i64>::read_npy(std::fs::File::open(data.path("p.labels.npy")).unwrap())
        .unwrap()
        .iter()
        .map(|&l| l as usize)
        .collect();
    let ck = model(&run);
    let mut backend = cpu(&ck.spec);
    assert_eq!(p, backend.predict(&ck.theta, (&data.x).into()).unwrap().mapv(|v| v as f32));
    assert_eq!(predicted, backend.classify(&ck.theta, (&data.x).into()).unwrap());
    for (i, row) in p.rows().into_iter().enumerate() {
        assert!((row.sum() - 1.0).abs() < 1e-5, "row {i} sums to {}", row.sum());
    }
    // eval (which needs the labels) counts the same predictions right.
    let eval = ok(wgnn()
        .args(["eval", "--json", "--backend", "cpu", "--data", &data.npy(), "--labels", &labels, "--model"])
        .arg(&run));
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    let correct = predicted.iter().zip(&data.labels).filter(|(p, l)| p == l).count();
    assert_eq!(eval["accuracy"].as_f64().unwrap(), correct as f64 / data.labels.len() as f64);

    // .csv from unlabelled CSV data: `label,p0,p1,p2`, the same numbers.
    let csv = data.path("p.csv");
    ok(wgnn()
        .args(["predict", "--backend", "cpu", "--label-column", "none", "--data"])
        .arg(format!("csv:{}", data.path("x.csv").display()))
        .arg("--model")
        .arg(&run)
        .arg("--out")
        .arg(&csv));
    let (header, rows) = read_csv(&csv);
    assert_eq!(header, "label,p0,p1,p2");
    assert_eq!(rows.len(), 60);
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row[0] as usize, predicted[i], "row {i}");
        let probabilities: Vec<f32> = row[1..].iter().map(|&v| v as f32).collect();
        assert_eq!(probabilities, p.row(i).to_vec(), "row {i}");
    }

    // The GPU (lavapipe in CI) predicts the same, to f32 accuracy.
    if !gpu_skipped() {
        let gpu = read_f32(&data.predict(&run, "gpu.npy", &["--backend", "gpu"]));
        assert!(relative(&gpu, &p) < 1e-4, "GPU vs CPU: {:e}", relative(&gpu, &p));
    }
}

#[test]
fn a_regressor_and_an_autoencoder_write_what_their_backend_computes() {
    let data = Data::new(60, 6);
    let targets = format!("npy:{}", data.path("targets.npy").display());
    let run = data.train("mlp", "mlp", &["--targets", &targets, "--hidden", "4", "--optimizer", "lbfgs"]);
    let ck = model(&run);
    let expected = cpu(&ck.spec).predict(&ck.theta, (&data.x).into()).unwrap().mapv(|v| v as f32);
    let (header, rows) = read_csv(&data.predict(&run, "y.csv", &["--backend", "cpu"]));
    assert_eq!(header, "y0,y1");
    let got = Array2::from_shape_fn((60, 2), |(i, j)| rows[i][j] as f32);
    assert_eq!(got, expected);

    // Trained on target columns of the data file itself: predict takes the same kind of
    // file, target columns and all, and leaves them out as training did.
    let csv = format!("csv:{}", data.path("x.csv").display());
    let run = data.path("columns");
    ok(wgnn()
        .args(["train", "mlp", "--backend", "cpu", "--quiet", "--iterations", "5", "--hidden", "3"])
        .args(["--optimizer", "lbfgs", "--label-column", "none", "--targets", "columns:5-6", "--data", &csv, "--out"])
        .arg(&run));
    let ck = model(&run);
    let inputs = data.x.slice(ndarray::s![.., ..4]).to_owned();
    let expected = cpu(&ck.spec).predict(&ck.theta, (&inputs).into()).unwrap().mapv(|v| v as f32);
    let out = data.path("columns.npy");
    ok(wgnn().args(["predict", "--label-column", "none", "--data", &csv, "--model"]).arg(&run).arg("--out").arg(&out));
    assert_eq!(read_f32(&out), expected);

    let run = data.train("autoencoder", "ae", &["--hidden", "3"]);
    let ck = model(&run);
    let mut backend = cpu(&ck.spec);
    let features = read_f32(&data.predict(&run, "h.npy", &["--features"]));
    assert_eq!(features, wgnn::train::hidden_features(&mut backend, &ck.theta, &data.x).unwrap());
    let (header, _) = read_csv(&data.predict(&run, "h.csv", &["--features"]));
    assert_eq!(header, "h0,h1,h2");
    let reconstructions = read_f32(&data.predict(&run, "r.npy", &[]));
    assert_eq!(reconstructions, backend.predict(&ck.theta, (&data.x).into()).unwrap().mapv(|v| v as f32));

    // Refused in one line, nothing written: another format, data of another width, a run
    // that did not finish, --features of a network without a hidden layer.
    refused(
        wgnn().args(["predict", "--data", &data.npy(), "--out", "p.txt", "--model"]).arg(&run),
        "name a .npy or .csv",
    );
    let narrow = data.path("narrow.npy");
    data.x.slice(ndarray::s![.., ..5]).to_owned().write_npy(std::fs::File::create(&narrow).unwrap()).unwrap();
    let out = data.path("never.npy");
    refused(
        wgnn()
            .args(["predict", "--data", &format!("npy:{}", narrow.display()), "--model"])
            .arg(&run)
            .arg("--out")
            .arg(&out),
        "the data has 5 values per example but the model takes 6",
    );
    std::fs::rename(run.join("model.safetensors"), run.join("checkpoint.safetensors")).unwrap();
    refused(
        wgnn().args(["predict", "--data", &data.npy(), "--model"]).arg(&run).arg("--out").arg(&out),
        "did not finish",
    );
    let labels = data.path("labels.npy").display().to_string();
    let softmax = data.train("softmax", "softmax", &["--labels", &labels]);
    refused(
        wgnn().args(["predict", "--features", "--data", &data.npy(), "--model"]).arg(&softmax).arg("--out").arg(&out),
        "has no hidden layer",
    );
    assert!(!out.exists());
}

#[test]
fn a_whitened_model_predicts_through_its_stored_whitening() {
    let data = Data::new(80, 6);
    let run = data.train("autoencoder", "white", &["--hidden", "3", "--whiten", "zca", "--output", "identity"]);
    let ck = model(&run);
    let w = &ck.metadata.preprocessing["whitening"];
    let mean: Vec<f64> = serde_json::from_value(w["mean"].clone()).unwrap();
    let matrix: Vec<f64> = serde_json::from_value(w["matrix"].clone()).unwrap();
    // By hand, in f64: x_white = M (x − μ).
    let m = Array2::from_shape_vec((6, 6), matrix).unwrap();
    let centred = Array2::from_shape_fn((80, 6), |(i, j)| data.x[[i, j]] as f64 - mean[j]);
    let white = centred.dot(&m.t());
    let expected = CpuBackend::<f64>::new(ck.spec.clone())
        .unwrap()
        .predict(&ck.theta, (&white).into())
        .unwrap()
        .mapv(|v| v as f32);
    let got = read_f32(&data.predict(&run, "w.npy", &["--backend", "cpu"]));
    assert!(relative(&got, &expected) < 1e-5, "CPU vs whitening by hand: {:e}", relative(&got, &expected));
    // Without the whitening the answer would be far off: the check can fail.
    let raw = CpuBackend::<f64>::new(ck.spec.clone()).unwrap().predict(&ck.theta, (&data.x).into()).unwrap();
    assert!(relative(&raw.mapv(|v| v as f32), &expected) > 1e-2);
    if !gpu_skipped() {
        let gpu = read_f32(&data.predict(&run, "wg.npy", &["--backend", "gpu"]));
        assert!(relative(&gpu, &expected) < 1e-4, "GPU vs whitening by hand: {:e}", relative(&gpu, &expected));
    }
}

#[test]
fn a_features_from_model_holds_its_encoder_and_older_ones_still_load() {
    let data = Data::new(60, 6);
    let labels = data.path("labels.npy").display().to_string();
    let encoder = data.train("autoencoder", "encoder", &["--hidden", "4"]);
    let encoder_path = encoder.display().to_string();
    let run = data.train("softmax", "selftaught", &["--labels", &labels, "--features-from", &encoder_path]);
    // By hand: the encoder's hidden activations, then the softmax.
    let (enc, ck) = (model(&encoder), model(&run));
    let h = wgnn::train::hidden_features(&mut cpu(&enc.spec), &enc.theta, &data.x).unwrap();
    let expected = cpu(&ck.spec).predict(&ck.theta, (&h).into()).unwrap().mapv(|v| v as f32);
    let first = data.predict(&run, "p1.npy", &[]);
    assert_eq!(read_f32(&first), expected);

    // A model from before the encoder was stored names only its path: it works while the
    // path exists, and says what is wrong in one line once it is gone.
    let mut old = ck.clone();
    old.metadata.preprocessing["encoder"] = serde_json::Value::Null;
    let old_run = data.path("old");
    std::fs::create_dir(&old_run).unwrap();
    old.save(&old_run.join("model.safetensors")).unwrap();
    assert_eq!(read_f32(&data.predict(&old_run, "old.npy", &[])), expected);

    std::fs::remove_dir_all(&encoder).unwrap();
    let second = data.predict(&run, "p2.npy", &[]);
    assert_eq!(std::fs::read(&first).unwrap(), std::fs::read(&second).unwrap(), "the model needs its encoder's folder");
    // eval prepares the data the same way (it once applied only the whitening).
    let eval = ok(wgnn()
        .args(["eval", "--json", "--backend", "cpu", "--data", &data.npy(), "--labels", &labels, "--model"])
        .arg(&run));
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    let predicted =
        expected.rows().into_iter().map(|r| wgnn::backend::argmax(r.iter().map(|&v| v as f64))).collect::<Vec<_>>();
    let correct = predicted.iter().zip(&data.labels).filter(|(p, l)| p == l).count();
    assert_eq!(eval["accuracy"].as_f64().unwrap(), correct as f64 / 60.0);
    // convolve would slide its first layer over pixels, which it never saw: refused.
    let pooled = data.path("pooled.npy");
    refused(
        wgnn()
            .args(["convolve", "--pool", "2", "--images", &data.npy(), "--model"])
            .arg(&run)
            .arg("--out")
            .arg(&pooled),
        "trained on another encoder's features",
    );
    assert!(!pooled.exists());
    refused(
        wgnn().args(["predict", "--data", &data.npy(), "--out", "never.npy", "--model"]).arg(&old_run),
        "which it does not hold",
    );
}

#[test]
fn a_stacked_run_predicts_with_its_fine_tuned_stack() {
    let data = Data::new(60, 6);
    let labels = data.path("labels.npy").display().to_string();
    let run = data.train("stacked", "stacked", &["--labels", &labels, "--hidden", "4,3", "--iterations", "3"]);
    let ck = Checkpoint::load(&run.join("finetune/model.safetensors")).unwrap();
    assert_eq!(ck.spec.layers, vec![6, 4, 3, 3]);
    let expected = cpu(&ck.spec).predict(&ck.theta, (&data.x).into()).unwrap().mapv(|v| v as f32);
    assert_eq!(read_f32(&data.predict(&run, "s.npy", &[])), expected);
    // eval takes the stacked folder too.
    let eval = ok(wgnn()
        .args(["eval", "--json", "--backend", "cpu", "--data", &data.npy(), "--labels", &labels, "--model"])
        .arg(&run));
    let eval: serde_json::Value = serde_json::from_str(&eval).unwrap();
    assert_eq!(eval["network"].as_str().unwrap(), ck.spec.describe());
}

#[test]
fn an_exported_theta_and_spec_reproduce_the_models_cost() {
    let data = Data::new(60, 6);
    let targets = format!("npy:{}", data.path("targets.npy").display());
    // Each kind of model, and what its printed cost command must be given beside X.npy.
    let cases: [(&str, &str, Vec<&str>, Option<&str>); 3] = [
        ("autoencoder", "ae", vec!["--hidden", "3", "--weight-decay", "0.001"], None),
        ("softmax", "sm", vec!["--labels", "labels.npy"], Some("LABELS.npy")),
        ("mlp", "reg", vec!["--targets", &targets, "--hidden", "4", "--optimizer", "lbfgs"], Some("TARGETS.npy")),
    ];
    for (kind, name, flags, placeholder) in cases {
        let flags: Vec<String> = flags
            .iter()
            .map(|f| if *f == "labels.npy" { data.path(f).display().to_string() } else { f.to_string() })
            .collect();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let run = data.train(kind, name, &flags);
        let out = data.path(&format!("{name}-exported"));
        let stdout = ok(wgnn().args(["export", "--model"]).arg(&run).arg("--out").arg(&out));
        let ck = model(&run);
        let spec: NetSpec = serde_json::from_slice(&std::fs::read(out.join("spec.json")).unwrap()).unwrap();
        assert_eq!(spec, ck.spec);
        let theta = Array1::<f64>::read_npy(std::fs::File::open(out.join("theta.npy")).unwrap()).unwrap();
        assert_eq!(theta.to_vec(), ck.theta);

        // The cost command export prints, on the training data, gives the cost training
        // recorded: it names the targets the model's task needs, and no others.
        let line =
            stdout.lines().find_map(|l| l.strip_prefix("its cost: wgnn ")).expect("export prints the cost command");
        for other in ["LABELS.npy", "TARGETS.npy"] {
            assert_eq!(line.contains(other), placeholder == Some(other), "{kind}: {line}");
        }
        let args: Vec<String> = line
            .split_whitespace()
            .map(|a| match a {
                "X.npy" => data.path("x.npy").display().to_string(),
                "LABELS.npy" => data.path("labels.npy").display().to_string(),
                "TARGETS.npy" => data.path("targets.npy").display().to_string(),
                a => a.to_string(),
            })
            .collect();
        let cost = ok(wgnn().args(&args).args(["--backend", "cpu", "--precision", "f32"]));
        let cost: f64 = cost.lines().last().unwrap().strip_prefix("cost ").unwrap().parse().unwrap();
        let metrics: serde_json::Value =
            serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
        let recorded = metrics["final_cost"].as_f64().unwrap();
        assert!(((cost - recorded) / recorded).abs() < 1e-12, "{kind}: cost {cost} vs the model's {recorded}");
        if kind == "autoencoder" {
            // Given the run folder itself, cost says how to get θ out of it.
            let theta_at = args.iter().position(|a| a == "--theta").unwrap() + 1;
            let mut from_run = args.clone();
            from_run[theta_at] = run.display().to_string();
            refused(wgnn().args(&from_run), "wgnn export --model");
        }
    }
}
