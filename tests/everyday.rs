//! The everyday path's side bugs (issue 14), each handed case as a test: every file flag takes
//! the same forms, `--limit` cuts data, labels and targets alike, a run that fails at its first
//! evaluation keeps no θ and prints short numbers, sequence models refuse whitening, and
//! messages name what is wrong in the model's own terms.

mod common;

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use ndarray::{Array1, Array2, Array3};
use ndarray_npy::WriteNpyExt;

fn wgnn() -> Command {
    Command::cargo_bin("wgnn").unwrap()
}

fn write_npy<T: WriteNpyExt>(dir: &Path, name: &str, a: &T) -> String {
    let p: PathBuf = dir.join(name);
    a.write_npy(std::fs::File::create(&p).unwrap()).unwrap();
    p.display().to_string()
}

fn write_text(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The error lines of a failed run (notes left out), checked to be exactly one.
fn one_error(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, got success; stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "expected one error line: {stderr}");
    errors[0].to_string()
}

/// The final cost of a finished `train` into `run` (its metrics.json), written out exactly.
fn final_cost(out: &std::process::Output, run: &str) -> String {
    assert!(out.status.success(), "train failed: {}", String::from_utf8_lossy(&out.stderr));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(run).join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["status"], "finished", "{metrics}");
    let cost = metrics["final_cost"].as_f64().unwrap_or_else(|| panic!("no final cost: {metrics}"));
    format!("{cost:e}")
}

/// 60 examples of 4 values, class labels written as 3 and 7 (not 0..k−1), and targets.
struct Files {
    dir: tempfile::TempDir,
    x: String,
    labels: Vec<i64>,
    targets: Array2<f32>,
}

fn files() -> Files {
    let dir = tempfile::tempdir().unwrap();
    let x = Array2::from_shape_fn((60, 4), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 10.0);
    let labels: Vec<i64> = (0..60).map(|i| if x[[i, 0]] + x[[i, 1]] > 1.0 { 7 } else { 3 }).collect();
    let targets = Array2::from_shape_fn((60, 2), |(i, j)| x[[i, j]] - 0.5 * x[[i, 3]]);
    let x = write_npy(dir.path(), "x.npy", &x);
    Files { dir, x, labels, targets }
}

impl Files {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The labels as npy:F, F.npy, csv:F and F.csv (the first `rows` of them).
    fn label_forms(&self, rows: usize) -> Vec<String> {
        let l = Array1::from(self.labels[..rows].to_vec());
        let npy = write_npy(self.path(), &format!("y{rows}.npy"), &l);
        let text: String = self.labels[..rows].iter().map(|v| format!("{v}\n")).collect();
        let csv = write_text(self.path(), &format!("y{rows}.csv"), &format!("label\n{text}"));
        vec![format!("npy:{npy}"), npy, format!("csv:{csv}"), csv]
    }

    /// The targets as npy:F, F.npy, csv:F and F.csv (the first `rows` of them).
    fn target_forms(&self, rows: usize) -> Vec<String> {
        let t = self.targets.slice(ndarray::s![..rows, ..]).to_owned();
        let npy = write_npy(self.path(), &format!("t{rows}.npy"), &t);
        let text: String = t.rows().into_iter().map(|r| format!("{},{}\n", r[0], r[1])).collect();
        let csv = write_text(self.path(), &format!("t{rows}.csv"), &text);
        vec![format!("npy:{npy}"), npy, format!("csv:{csv}"), csv]
    }

    fn run(&self, name: &str) -> String {
        self.path().join(name).display().to_string()
    }
}

fn train_softmax(f: &Files, labels: &str, out: &str, extra: &[&str]) -> std::process::Output {
    wgnn()
        .args(["train", "softmax", "--backend", "cpu", "--data", &f.x, "--labels", labels, "--iterations", "5"])
        .args(["--out", out])
        .args(extra)
        .output()
        .unwrap()
}

fn train_regressor(f: &Files, targets: &str, out: &str, extra: &[&str]) -> std::process::Output {
    wgnn()
        .args(["train", "mlp", "--backend", "cpu", "--data", &f.x, "--targets", targets, "--hidden", "3"])
        .args(["--iterations", "5", "--out", out])
        .args(extra)
        .output()
        .unwrap()
}

/// Issue 14's handed case: `--labels npy:FILE` said "cannot read" while `--targets npy:FILE`
/// worked. Every form of every file flag now reads the same file the same way: the same
/// labels give the same model (the same final cost, to the last digit), in train, eval and
/// cost; a bare file of another extension is refused in one line.
#[test]
fn labels_and_targets_take_the_same_file_forms_everywhere() {
    let f = files();
    let forms = f.label_forms(60);
    let forms_of_labels = forms.clone();
    let costs: Vec<String> = forms
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let run = f.run(&format!("s{i}"));
            final_cost(&train_softmax(&f, l, &run, &[]), &run)
        })
        .collect();
    assert!(costs.iter().all(|c| c == &costs[0]), "the label forms trained different models: {costs:?}");
    let accuracies: Vec<String> = forms
        .iter()
        .map(|l| {
            let out = wgnn()
                .args(["eval", "--backend", "cpu", "--model", &f.run("s0"), "--data", &f.x, "--labels", l])
                .output()
                .unwrap();
            assert!(out.status.success(), "eval --labels {l}: {}", String::from_utf8_lossy(&out.stderr));
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            stdout.lines().find(|l| l.starts_with("accuracy")).expect("an accuracy line").to_string()
        })
        .collect();
    assert!(accuracies.iter().all(|a| a == &accuracies[0]), "{accuracies:?}");

    let forms = f.target_forms(60);
    let costs: Vec<String> = forms
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let run = f.run(&format!("r{i}"));
            final_cost(&train_regressor(&f, t, &run, &[]), &run)
        })
        .collect();
    assert!(costs.iter().all(|c| c == &costs[0]), "the target forms trained different models: {costs:?}");

    // `cost` reads --data, --labels and --targets through the same parser.
    let theta = write_npy(f.path(), "theta.npy", &Array1::from_shape_fn(4 * 2 + 2, |i| (i as f64 - 4.0) / 10.0));
    let x_csv = {
        let x: Array2<f32> = ndarray_npy::read_npy(&f.x).unwrap();
        let text: String = x.rows().into_iter().map(|r| format!("{},{},{},{}\n", r[0], r[1], r[2], r[3])).collect();
        write_text(f.path(), "x.csv", &text)
    };
    let numbers: Vec<i64> = f.labels.iter().map(|&l| i64::from(l == 7)).collect();
    let y01 = write_npy(f.path(), "y01.npy", &Array1::from(numbers.clone()));
    let y01_csv = write_text(f.path(), "y01.csv", &numbers.iter().map(|v| format!("{v}\n")).collect::<String>());
    let cost_of = |data: &str, labels: &str| {
        let out = wgnn()
            .args(["cost", "--backend", "cpu", "--layers", "4,2", "--output", "softmax", "--theta", &theta])
            .args(["--data", data, "--labels", labels])
            .output()
            .unwrap();
        assert!(out.status.success(), "cost: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap().to_string()
    };
    let reference = cost_of(&f.x, &y01);
    assert!(reference.starts_with("cost "), "{reference}");
    for (data, labels) in [(format!("npy:{}", f.x), format!("csv:{y01_csv}")), (x_csv.clone(), y01_csv.clone())] {
        assert_eq!(cost_of(&data, &labels), reference, "cost --data {data} --labels {labels}");
    }

    // Test examples bring their own labels (--test-labels, any form), never --data's.
    let run = f.run("with-test");
    let out =
        train_softmax(&f, &forms_of_labels[1], &run, &["--test-data", &f.x, "--test-labels", &forms_of_labels[3]]);
    final_cost(&out, &run);
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&run).join("metrics.json")).unwrap()).unwrap();
    assert!(metrics["test_accuracy"].as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)), "{metrics}");
    let e = one_error(&train_softmax(&f, &forms_of_labels[0], &f.run("no-test-labels"), &["--test-data", &f.x]));
    assert!(e.contains("--test-labels"), "{e}");

    // One line, non-zero, for a file whose format its name does not say, and no run folder.
    let odd = write_text(f.path(), "y.txt", "3\n7\n");
    let e = one_error(&train_softmax(&f, &odd, &f.run("odd"), &[]));
    assert!(e.contains("npy:") && e.contains("csv:"), "{e}");
    assert!(!Path::new(&f.run("odd")).exists());
}

/// Issue 14's handed case: `--data mnist:DIR --limit N --targets npy:Y` refused. `--limit N`
/// keeps the first N rows of the data, the labels and the targets alike: a file of one row per
/// example of the data and a file of the first N rows train the same model; another count, or
/// N rows with --digits (ambiguous), is refused in one line before any folder is made.
#[test]
fn limit_cuts_data_labels_and_targets_alike() {
    let f = files();
    let full = f.target_forms(60);
    let first = f.target_forms(20);
    let limited = |targets: &str, name: &str| {
        let run = f.run(name);
        final_cost(&train_regressor(&f, targets, &run, &["--limit", "20"]), &run)
    };
    let (a, b, c) = (limited(&full[0], "full"), limited(&first[0], "first"), limited(&first[3], "first-csv"));
    assert_eq!(a, b);
    assert_eq!(a, c);
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(Path::new(&f.run("first")).join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(metrics["train_examples"], 20, "{metrics}");
    // Without the limit the 20-row file does not fit the 60 examples.
    let e = one_error(&train_regressor(&f, &first[0], &f.run("no-limit"), &[]));
    assert!(e.contains("20 rows") && e.contains("60 examples"), "{e}");
    let e = one_error(&train_regressor(&f, &first[0], &f.run("other"), &["--limit", "10"]));
    assert!(e.contains("(60)") && e.contains("(10)"), "{e}");
    for run in ["no-limit", "other"] {
        assert!(!Path::new(&f.run(run)).exists(), "{run} left a folder");
    }

    let labels_full = f.label_forms(60);
    let labels_first = f.label_forms(20);
    let a = final_cost(&train_softmax(&f, &labels_full[2], &f.run("lf"), &["--limit", "20"]), &f.run("lf"));
    let b = final_cost(&train_softmax(&f, &labels_first[2], &f.run("l20"), &["--limit", "20"]), &f.run("l20"));
    assert_eq!(a, b);

    // Sequences (m × T × n) alike: labels for all 12 sequences or for the 6 kept.
    let seq = write_npy(f.path(), "seq.npy", &Array3::from_shape_fn((12, 3, 2), |(i, t, j)| (i + t + j) as f32 / 10.0));
    let seq_labels: Vec<i64> = (0..12).map(|i| i64::from(i % 3 == 0)).collect();
    let all = write_npy(f.path(), "sl12.npy", &Array1::from(seq_labels.clone()));
    let six = write_npy(f.path(), "sl6.npy", &Array1::from(seq_labels[..6].to_vec()));
    let lstm = |labels: &str, name: &str, limit: &str| {
        let run = f.run(name);
        let out = wgnn()
            .args(["train", "lstm", "--backend", "cpu", "--data", &seq, "--labels", labels, "--hidden", "2"])
            .args(["--iterations", "2", "--limit", limit, "--out", &run])
            .output()
            .unwrap();
        (out, run)
    };
    let (out, run) = lstm(&all, "lstm-all", "6");
    let a = final_cost(&out, &run);
    let (out, run) = lstm(&six, "lstm-six", "6");
    assert_eq!(a, final_cost(&out, &run));
    let e = one_error(&lstm(&six, "lstm-five", "5").0);
    assert!(e.contains("6 labels") && e.contains("(5)"), "{e}");

    // The handed case itself, on MNIST: 200 targets for the first 200 images.
    let mnist = common::data_dir().join("mnist");
    let y = Array2::from_shape_fn((200, 1), |(i, _)| (i % 10) as f32 / 10.0);
    let y = write_npy(f.path(), "y200.npy", &y);
    let run = |extra: &[&str], out: &str| {
        wgnn()
            .args(["train", "mlp", "--backend", "cpu", "--data", &format!("mnist:{}", mnist.display())])
            .args(["--targets", &format!("npy:{y}"), "--hidden", "2", "--iterations", "1", "--out", &f.run(out)])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&["--limit", "200"], "mnist");
    final_cost(&out, &f.run("mnist"));
    let e = one_error(&run(&["--limit", "200", "--digits", "1-3"], "mnist-digits"));
    assert!(e.contains("--digits") && e.contains("ambiguous"), "{e}");
    assert!(!Path::new(&f.run("mnist-digits")).exists());
}

/// Issue 14's handed case: targets of 3e38 (finite in f32) overflow the cost at the first
/// evaluation. The refusal prints the cost in short form (no 77-digit number), exits non-zero
/// and leaves the run folder as DESIGN.md's contract says of a failed run: metrics.json saying
/// why and that no θ was kept, no checkpoint and no model (none had a finite cost) — for a
/// softmax and a regressor on the CPU and the GPU, and a per-step sequence regressor.
#[test]
fn a_run_that_fails_at_its_first_evaluation_keeps_no_theta() {
    let f = files();
    let huge = write_npy(f.path(), "huge.npy", &Array2::<f32>::from_elem((60, 1), 3e38));
    let seq = write_npy(f.path(), "seq.npy", &Array3::from_shape_fn((12, 3, 2), |(i, t, j)| (i + t + j) as f32 / 10.0));
    let seq_huge = write_npy(f.path(), "seq-huge.npy", &Array3::<f32>::from_elem((12, 3, 2), 3e38));
    // Inputs whose products overflow f32: a softmax's cost is NaN at the first evaluation.
    let x_huge = write_npy(f.path(), "x-huge.npy", &Array2::<f32>::from_elem((60, 40), 3e38));
    let labels = write_npy(f.path(), "labels.npy", &Array1::from(f.labels.clone()));
    let softmax: Vec<String> = ["softmax", "--data", &x_huge, "--labels", &labels].map(String::from).to_vec();
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("cpu", softmax.clone()),
        ("gpu", softmax),
        (
            "cpu",
            vec![
                "mlp".into(),
                "--data".into(),
                f.x.clone(),
                "--targets".into(),
                huge.clone(),
                "--hidden".into(),
                "3".into(),
            ],
        ),
        (
            "gpu",
            vec![
                "mlp".into(),
                "--data".into(),
                f.x.clone(),
                "--targets".into(),
                huge.clone(),
                "--hidden".into(),
                "3".into(),
            ],
        ),
        (
            "cpu",
            vec![
                "lstm".into(),
                "--data".into(),
                format!("npy:{seq}"),
                "--targets".into(),
                seq_huge,
                "--hidden".into(),
                "3".into(),
            ],
        ),
    ];
    for (i, (backend, args)) in cases.iter().enumerate() {
        let out_dir = f.run(&format!("huge{i}"));
        let out = wgnn()
            .arg("train")
            .args(args)
            .args(["--backend", backend, "--iterations", "3", "--out", &out_dir])
            .output()
            .unwrap();
        let e = one_error(&out);
        assert!(e.contains("initial θ") || e.contains("not finite"), "{backend} {args:?}: {e}");
        let longest_digits = e.split(|c: char| !c.is_ascii_digit()).map(str::len).max().unwrap_or(0);
        assert!(longest_digits < 12, "a long number in: {e}");
        let folder = Path::new(&out_dir);
        assert!(!folder.join("checkpoint.safetensors").exists(), "{backend} {args:?} kept a checkpoint");
        assert!(!folder.join("model.safetensors").exists(), "{backend} {args:?} wrote a model");
        let metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(folder.join("metrics.json")).unwrap()).unwrap();
        assert_eq!(metrics["status"], "failed", "{metrics}");
        assert!(metrics["kept"].is_null() && metrics["final_cost"].is_null(), "{metrics}");
    }
}

/// Issue 14's handed case: `--whiten` (and `--features-from`) were taken by sequence models,
/// where a whitening of the whole row mixes the steps. Refused in one line, for lstm and rnn,
/// before any folder is made; and `--bptt` on a per-step regressor no longer speaks of a
/// "sequence classifier" only.
#[test]
fn sequence_models_refuse_whole_row_preprocessing() {
    let f = files();
    let seq = write_npy(f.path(), "seq.npy", &Array3::from_shape_fn((12, 3, 2), |(i, t, j)| (i + t + j) as f32 / 10.0));
    let targets =
        write_npy(f.path(), "seq-t.npy", &Array3::from_shape_fn((12, 3, 1), |(i, t, _)| (i * t) as f32 / 30.0));
    for (kind, flag, value) in
        [("lstm", "--whiten", "zca"), ("rnn", "--whiten", "pca"), ("lstm", "--features-from", "x")]
    {
        let out_dir = f.run(&format!("{kind}-{value}"));
        let out = wgnn()
            .args(["train", kind, "--data", &seq, "--targets", &targets, flag, value, "--out", &out_dir])
            .output()
            .unwrap();
        let e = one_error(&out);
        assert!(e.contains(flag) && e.contains("steps"), "{e}");
        assert!(!Path::new(&out_dir).exists());
    }
    let out = wgnn()
        .args(["train", "lstm", "--data", &seq, "--targets", &targets, "--bptt", "2", "--out", &f.run("bptt")])
        .output()
        .unwrap();
    let e = one_error(&out);
    assert!(e.contains("--bptt") && e.contains("per-step regressor"), "{e}");
}

/// Issue 14's handed case: `eval` (and `predict`) of a sequence model on data of the wrong
/// width spoke of columns and input units; they name the model's T × n.
#[test]
fn wrong_width_for_a_sequence_model_names_its_steps() {
    let f = files();
    let seq = write_npy(f.path(), "seq.npy", &Array3::from_shape_fn((12, 3, 2), |(i, t, j)| (i + t + j) as f32 / 10.0));
    let targets =
        write_npy(f.path(), "seq-t.npy", &Array3::from_shape_fn((12, 3, 1), |(i, t, _)| (i * t) as f32 / 30.0));
    let run = f.run("seq");
    let out = wgnn()
        .args(["train", "lstm", "--backend", "cpu", "--data", &seq, "--targets", &targets, "--hidden", "2"])
        .args(["--iterations", "1", "--out", &run])
        .output()
        .unwrap();
    final_cost(&out, &run);
    let wrong = f.x.clone(); // 4 values per example, not 3 × 2
    let t = write_npy(f.path(), "t3.npy", &Array2::<f32>::zeros((60, 3)));
    for args in [
        vec!["eval", "--backend", "cpu", "--model", &run, "--data", &wrong, "--targets", &t],
        vec!["predict", "--backend", "cpu", "--model", &run, "--data", &wrong, "--out", &f.run("p.npy")],
    ] {
        let e = one_error(&wgnn().args(&args).output().unwrap());
        assert!(e.contains("sequences of 3 steps of 2 values") && !e.contains("columns"), "{args:?}: {e}");
    }
}

/// Issue 14's handed case: `Recurrent::fit_per_step` with k = 0 targets per step said "the
/// sequences are empty"; it names the targets.
#[test]
fn per_step_targets_of_width_zero_are_named() {
    let x = Array3::from_shape_fn((8, 3, 2), |(i, t, j)| (i + t + j) as f32 / 10.0);
    let y = Array3::<f32>::zeros((8, 3, 0));
    let e = wgnn::Recurrent::lstm(2).epochs(1).backend(wgnn::BackendChoice::Cpu).fit_per_step(&x, &y).err().unwrap();
    let e = e.to_string();
    assert!(e.contains("per-step targets") && e.contains("k ≥ 1") && !e.contains("sequences are empty"), "{e}");
}

/// Found by the session's tester from a clean build: sequences whose T × n has the model's
/// product but other T and n were read as the model's (predict wrote labels for 6 steps of 8-step
/// data, exit 0); per-step labels failed with --test-fraction and --test-data; --digits was
/// ignored on sequences; a character model ignored --limit and --labels; a gzipped .npy was
/// "not a .npy file".
#[test]
fn sequence_and_text_inputs_are_checked_as_the_model_reads_them() {
    let f = tempfile::tempdir().unwrap();
    let dir = f.path();
    let (m, steps, n) = (24, 6, 4);
    let x = Array3::from_shape_fn((m, steps, n), |(i, t, j)| ((i * 5 + t * 3 + j) % 7) as f32 / 7.0);
    let seq = write_npy(dir, "seq.npy", &x);
    let per_step = Array2::from_shape_fn((m, steps), |(i, t)| ((i + t) % 2) as i64);
    let labels = write_npy(dir, "steps.npy", &per_step);
    let run = |name: &str| dir.join(name).display().to_string();

    // Per-step labels with a test fraction and with a test set: trained, scored per step.
    for (name, extra) in [
        ("fraction", vec!["--test-fraction", "0.25"]),
        ("testset", vec!["--test-data", seq.as_str(), "--test-labels", labels.as_str()]),
    ] {
        let out = wgnn()
            .args(["train", "lstm", "--backend", "cpu", "--data", &seq, "--labels", &labels, "--hidden", "3"])
            .args(["--iterations", "2", "--out", &run(name)])
            .args(&extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(name).join("metrics.json")).unwrap()).unwrap();
        let a = metrics["test_accuracy"].as_f64().unwrap_or_else(|| panic!("{name}: no test accuracy: {metrics}"));
        assert!((0.0..=1.0).contains(&a), "{name}: {a}");
        // Scored per step: a multiple of 1/(rows · T), never a whole-sequence count alone.
        let rows = if name == "fraction" { 6 } else { m };
        let scaled = a * (rows * steps) as f64;
        assert!((scaled - scaled.round()).abs() < 1e-9, "{name}: {a} is not k/{}", rows * steps);
    }
    // The test set's score equals eval's on the same data.
    let out = wgnn().args(["eval", "--model", &run("testset"), "--data", &seq, "--labels", &labels]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The same product T·n = 24 in another shape: 8 steps of 3 values, 12 of 2.
    for (t, k) in [(8, 3), (12, 2)] {
        let other = write_npy(dir, &format!("s{t}x{k}.npy"), &Array3::<f32>::zeros((m, t, k)));
        let out_file = dir.join(format!("p{t}.npy")).display().to_string();
        let e = one_error(
            &wgnn()
                .args(["predict", "--model", &run("testset"), "--data", &other, "--out", &out_file])
                .output()
                .unwrap(),
        );
        assert!(e.contains(&format!("{t} steps of {k} values")) && e.contains("6 steps of 4 values"), "{e}");
        assert!(!Path::new(&out_file).exists(), "predict wrote {out_file}");
        let step_labels =
            write_npy(dir, &format!("l{t}.npy"), &Array2::from_shape_fn((m, t), |(i, s)| ((i + s) % 2) as i64));
        let e = one_error(
            &wgnn()
                .args(["eval", "--model", &run("testset"), "--data", &other, "--labels", &step_labels])
                .output()
                .unwrap(),
        );
        assert!(e.contains(&format!("{t} steps of {k} values")), "{e}");
    }

    // --digits filters 2-D data by class; on sequences it is refused, not ignored.
    let last = write_npy(dir, "last.npy", &Array1::from_shape_fn(m, |i| (i % 2) as i64));
    let e = one_error(
        &wgnn()
            .args(["train", "lstm", "--backend", "cpu", "--data", &seq, "--labels", &last, "--digits", "0"])
            .args(["--out", &run("digits")])
            .output()
            .unwrap(),
    );
    assert!(e.contains("--digits"), "{e}");
    assert!(!dir.join("digits").exists());

    // A character model refuses the data flags it would ignore.
    let text = write_text(dir, "t.txt", &"abc ba cab ".repeat(40));
    for flag in [["--limit", "10"], ["--labels", last.as_str()], ["--digits", "3"], ["--split", "test"]] {
        let e = one_error(
            &wgnn()
                .args(["train", "lstm", "--backend", "cpu", "--data", &format!("text:{text}"), "--out", &run("text")])
                .args(flag)
                .output()
                .unwrap(),
        );
        assert!(e.contains(flag[0]) && e.contains("character model"), "{e}");
        assert!(!dir.join("text").exists());
    }

    // A gzipped .npy is named as such.
    let raw = std::fs::read(&seq).unwrap();
    let gz = dir.join("seq.npy.gz");
    let mut enc = flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &raw).unwrap();
    enc.finish().unwrap();
    let e = one_error(
        &wgnn()
            .args(["train", "lstm", "--backend", "cpu", "--data", &gz.display().to_string(), "--labels", &last])
            .args(["--out", &run("gz")])
            .output()
            .unwrap(),
    );
    assert!(e.contains("gzip"), "{e}");
}
