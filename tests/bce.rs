//! The sigmoid output with the binary cross-entropy (`Output::SigmoidBce`, issue 14 §4):
//! J = −(1/m) Σᵢ Σⱼ [y log a + (1 − y) log(1 − a)] + (λ/2)‖W‖², δ = a − y, computed from z.
//! Checked against a direct f64 evaluation of the handed formula, by central differences
//! (a dense net and a small layer stack), on the GPU (lavapipe in CI) against the f64
//! reference on awkward shapes with its outputs poisoned (whole batch, chunked, streamed and
//! minibatches gathered on the device), at extreme logits, and from the CLI (a multi-label
//! problem learns; predict and eval; refusals in one line).

#[macro_use]
mod common;

use std::path::Path;
use std::process::Command;

use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::gpu::{GpuBackend, GpuOptions, MatmulKernel};
use wgnn::gradcheck::{numerical_gradient, relative_difference};
use wgnn::model::{Activation, Init, InputShape, LayerStack, NetSpec, Output, ThetaLayout, parse_net};
use wgnn::{Backend, Batch, CpuBackend, Targets};

use common::relative_error as rel;

/// Random 0/1 targets with both values in every column.
fn zero_one(m: usize, k: usize, rng: &mut StdRng) -> Array2<f64> {
    Array2::from_shape_fn((m, k), |(i, j)| if i < 2 { ((i + j) % 2) as f64 } else { f64::from(rng.random_bool(0.5)) })
}

fn dense_bce(layers: &[usize], hidden: Activation, lambda: f64) -> NetSpec {
    NetSpec::new(layers, hidden, Output::SigmoidBce).unwrap().with_weight_decay(lambda).unwrap()
}

/// conv 2×3×3 tanh, mean pool 2, dense 5 sigmoid, then 3 sigmoid-BCE outputs, on 1×6×6 images.
fn stack_bce() -> NetSpec {
    let parsed = parse_net("conv 2x3x3 tanh, meanpool 2, dense 5 sigmoid, softmax").unwrap();
    let input = InputShape { channels: 1, height: 6, width: 6 };
    NetSpec::stack(LayerStack { input, layers: parsed.layers }, 3, Output::SigmoidBce)
        .unwrap()
        .with_weight_decay(1e-3)
        .unwrap()
}

/// The handed formula, evaluated as written in f64 for a single-layer network (z = x Wᵀ + b),
/// and its gradient from δ = a − y: the backend's J and ∇J must match both.
#[test]
fn cost_and_gradient_match_the_handed_formula_in_f64() {
    let mut rng = StdRng::seed_from_u64(1);
    let (m, n, k, lambda) = (9, 5, 4, 1e-2);
    let spec = dense_bce(&[n, k], Activation::Identity, lambda);
    let theta = Init::Normal { epsilon: 0.7 }.theta(&spec, 3);
    let x = common::uniform(m, n, -1.0, 1.0, &mut rng);
    let y = zero_one(m, k, &mut rng);
    let layout = ThetaLayout::new(&spec);
    let (w, b) = (layout.weight(&theta, 0), layout.bias(&theta, 0));
    let z = x.dot(&w.t()) + b;
    let a = z.mapv(|z| 1.0 / (1.0 + (-z).exp()));
    let data: f64 = -a.iter().zip(&y).map(|(&a, &y)| y * a.ln() + (1.0 - y) * (1.0 - a).ln()).sum::<f64>() / m as f64;
    let decay = 0.5 * lambda * w.iter().map(|w| w * w).sum::<f64>();
    let delta = &a - &y;
    let grad_w = delta.t().dot(&x) / m as f64 + &w * lambda;
    let grad_b = delta.sum_axis(ndarray::Axis(0)) / m as f64;
    let want: Vec<f64> = grad_w.iter().chain(&grad_b).copied().collect();

    let mut cpu = CpuBackend::<f64>::new(spec.clone()).unwrap();
    cpu.set_data((&x).into(), Targets::Values((&y).into())).unwrap();
    let mut grad = vec![0.0; theta.len()];
    let cost = cpu.cost_and_grad(&theta, Batch::All, &mut grad).unwrap();
    assert!((cost.data - data).abs() < 1e-13 * data, "data term {} vs the formula's {data}", cost.data);
    assert!((cost.weight_decay - decay).abs() < 1e-13 * decay, "weight decay {} vs {decay}", cost.weight_decay);
    assert!(rel(&grad, &want) < 1e-13, "gradient differs from (a − y)ᵀx/m + λW by {:e}", rel(&grad, &want));
    // The output the backend predicts is σ(z).
    let p = cpu.predict(&theta, (&x).into()).unwrap();
    assert!(p.iter().zip(&a).all(|(p, a)| (p - a).abs() < 1e-15));
}

/// Central differences of J against backpropagation, f64: a dense net (UFLDL's ε = 1e-4) and
/// a layer stack (ε = 1e-5, as tests/cnn.rs: a conv bias feeds every output position, so the
/// O(ε²) truncation error of 1e-4 alone is ~1e-9: measured 1.5e-9 at 1e-4 and 5.3e-10 at 1e-5
/// here, and on another draw 2.3e-8, 2.8e-10, 1.2e-10 at 1e-3, 1e-4, 1e-5, the ε² law).
#[test]
fn gradient_checks_in_f64_for_a_dense_net_and_a_layer_stack() {
    let mut rng = StdRng::seed_from_u64(2);
    let dense = NetSpec {
        hidden_activations: vec![Activation::Tanh, Activation::Sigmoid],
        ..dense_bce(&[6, 7, 5, 3], Activation::Tanh, 1e-3)
    };
    let stack = stack_bce();
    for (name, spec, m, step) in [("dense 6-7-5-3", dense, 8, 1e-4), ("conv/meanpool/dense stack", stack, 5, 1e-5)] {
        let x = common::uniform(m, spec.inputs(), 0.0, 1.0, &mut rng);
        let y = zero_one(m, spec.outputs(), &mut rng);
        let theta = Init::Uniform.theta(&spec, 4);
        let mut cpu = CpuBackend::<f64>::new(spec.clone()).unwrap();
        cpu.set_data((&x).into(), Targets::Values((&y).into())).unwrap();
        let mut analytic = vec![0.0; theta.len()];
        cpu.cost_and_grad(&theta, Batch::All, &mut analytic).unwrap();
        let numerical = numerical_gradient(|t| cpu.cost(t, Batch::All).map(|c| c.total()), &theta, step).unwrap();
        let d = relative_difference(&analytic, &numerical);
        eprintln!("{name}: relative difference {d:e} at ε = {step:e}, checked against 1e-9");
        assert!(d < 1e-9, "{name}: {d:e}");
        assert!(analytic.iter().any(|&g| g.abs() > 1e-3), "{name}: a vanishing gradient checks nothing");
    }
}

/// The f32 path within 1e-5 (cost) and 1e-5 (gradient) of f64, with the same bits on 1, 2
/// and 3 threads.
#[test]
fn f32_matches_f64_with_the_same_bits_on_any_threads() {
    let mut rng = StdRng::seed_from_u64(3);
    for (name, spec, m) in [("dense", dense_bce(&[6, 9, 3], Activation::Relu, 1e-3), 600), ("stack", stack_bce(), 300)]
    {
        let x = common::uniform(m, spec.inputs(), 0.0, 1.0, &mut rng);
        let y = zero_one(m, spec.outputs(), &mut rng);
        let theta = Init::Uniform.theta(&spec, 5);
        let load = |b: &mut dyn Backend| b.set_data((&x).into(), Targets::Values((&y).into())).unwrap();
        common::f32_matches_f64_with_the_same_bits_on_any_threads(name, &spec, &theta, &load, 1e-5);
    }
}

/// Logits of ±40 and ±100 against both targets: every backend gives a finite cost equal to
/// the exact one (max(z, 0) − z·y + ln(1 + e^{−|z|}) in f64) and a finite gradient, where
/// log σ(z) of a rounded σ would be −∞ or NaN.
fn extreme_logits_give_the_exact_finite_cost(kind: common::BackendKind) {
    let zs: [f64; 5] = [40.0, -40.0, 100.0, -100.0, 0.5];
    let spec = dense_bce(&[1, zs.len()], Activation::Identity, 0.0);
    let layout = ThetaLayout::new(&spec);
    let mut theta = vec![0.0; layout.len()];
    layout.weight_range(0).zip(zs).for_each(|(i, z)| theta[i] = z);
    // Row 0 has x = 1 (z as given), row 1 has x = −1 (z negated); targets all 1 then all 0.
    let x = Array2::from_shape_vec((4, 1), vec![1.0, -1.0, 1.0, -1.0]).unwrap();
    let y = Array2::from_shape_fn((4, zs.len()), |(i, _)| if i < 2 { 1.0 } else { 0.0 });
    let exact: f64 = (0..4)
        .flat_map(|i| zs.iter().map(move |&z| (i, z)))
        .map(|(i, z)| {
            let (z, t) = (z * x[[i, 0]], y[[i, 0]]);
            z.max(0.0) - z * t + (-z.abs()).exp().ln_1p()
        })
        .sum::<f64>()
        / 4.0;
    let mut backend = kind.make(&spec);
    backend.set_data((&x).into(), Targets::Values((&y).into())).unwrap();
    let mut grad = vec![f64::NAN; theta.len()];
    let cost = backend.cost_and_grad(&theta, Batch::All, &mut grad).unwrap().total();
    let alone = backend.cost(&theta, Batch::All).unwrap().total();
    let tolerance = if matches!(kind, common::BackendKind::CpuF64) { 1e-15 } else { 1e-6 };
    assert!(cost.is_finite() && ((cost - exact) / exact).abs() < tolerance, "{kind:?}: J = {cost}, exact {exact}");
    assert!(((alone - cost) / cost).abs() < 1e-6, "{kind:?}: cost alone {alone} vs {cost}");
    assert!(grad.iter().all(|g| g.is_finite()), "{kind:?}: gradient {grad:?}");
    // ∂J/∂w_j = (1/m) Σᵢ (σ(zᵢⱼ) − yᵢⱼ) xᵢ: rows 0 and 3 give σ(z) − 1 and −σ(−z), rows 1 and 2
    // −(σ(−z) − 1) and σ(z); all together (2σ(z) − 2σ(−z))/4 ... computed directly:
    let sigma = |z: f64| 1.0 / (1.0 + (-z).exp());
    for (j, &z) in zs.iter().enumerate() {
        let want: f64 = (0..4).map(|i| (sigma(z * x[[i, 0]]) - y[[i, j]]) * x[[i, 0]]).sum::<f64>() / 4.0;
        let got = grad[layout.weight_range(0).start + j];
        assert!((got - want).abs() < 1e-6, "{kind:?}: ∂J/∂w{j} = {got}, want {want}");
    }
}

for_each_backend!(extreme_logits_give_the_exact_finite_cost);

fn gpu(spec: &NetSpec, kernel: MatmulKernel) -> GpuBackend {
    let options = GpuOptions { matmul: Some(kernel), ..Default::default() };
    let mut g = GpuBackend::new(spec.clone(), &options)
        .expect("a GPU adapter (lavapipe in CI: apt-get install mesa-vulkan-drivers)");
    g.set_poison(true);
    g
}

/// GPU cost, gradient and forward pass against the f64 CPU reference (< 1e-4) on awkward
/// shapes (batches 1, 7, 65; 1, 3 and 17 labels), dense and stack: whole batch, in chunks of
/// 16 rows, streamed from the host, and on shuffled minibatches gathered on the device.
fn gpu_agrees_with_the_f64_reference(kernel: MatmulKernel) {
    let mut rng = StdRng::seed_from_u64(6);
    let mut cases = vec![];
    for (m, k) in [(1, 1), (7, 3), (65, 17)] {
        cases.push((format!("dense 5-9-{k}, m = {m}"), dense_bce(&[5, 9, k], Activation::Tanh, 1e-3), m));
    }
    cases.push(("stack, m = 33".into(), stack_bce(), 33));
    for (name, spec, m) in cases {
        let x = common::uniform(m, spec.inputs(), 0.0, 1.0, &mut rng);
        let y = zero_one(m, spec.outputs(), &mut rng);
        let theta = Init::Normal { epsilon: 0.5 }.theta(&spec, 7);
        let mut cpu = CpuBackend::<f64>::new(spec.clone()).unwrap();
        cpu.set_data((&x).into(), Targets::Values((&y).into())).unwrap();
        let minibatch: Vec<usize> = (0..m).rev().step_by(2).collect();
        for mode in ["whole", "chunks of 16", "streamed", "minibatch on the device"] {
            let mut g = gpu(&spec, kernel);
            match mode {
                "chunks of 16" => g.set_max_chunk_rows(16),
                "streamed" => {
                    g.set_max_chunk_rows(16);
                    g.set_max_resident_bytes(0);
                }
                _ => {}
            }
            g.set_data((&x).into(), Targets::Values((&y).into())).unwrap();
            assert_eq!(g.is_streaming(), mode == "streamed", "{name} {mode}");
            let batch = if mode == "minibatch on the device" { Batch::Indices(&minibatch) } else { Batch::All };
            let mut g_cpu = vec![0.0; theta.len()];
            let mut g_gpu = vec![f64::NAN; theta.len()];
            let c_cpu = cpu.cost_and_grad(&theta, batch.clone(), &mut g_cpu).unwrap().total();
            let c_gpu = g.cost_and_grad(&theta, batch.clone(), &mut g_gpu).unwrap().total();
            let alone = g.cost(&theta, batch).unwrap().total();
            let (dc, dg) = (((c_gpu - c_cpu) / c_cpu).abs(), rel(&g_gpu, &g_cpu));
            assert!(dc < 1e-4 && dg < 1e-4, "{name} {mode}: cost error {dc:e}, gradient error {dg:e}");
            assert!(((alone - c_gpu) / c_gpu).abs() < 1e-6, "{name} {mode}: cost alone {alone} vs {c_gpu}");
            let (p_cpu, p_gpu) = (cpu.predict(&theta, (&x).into()).unwrap(), g.predict(&theta, (&x).into()).unwrap());
            let dp = p_cpu.iter().zip(&p_gpu).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(dp < 1e-5, "{name} {mode}: probabilities differ by {dp:e}");
        }
    }
}

for_each_matmul_kernel!(gpu_agrees_with_the_f64_reference);

/// A dense spec's JSON and θ layout are as before the new output: `sigmoid_bce` is a new name
/// beside the old ones, which read and write exactly as they did.
#[test]
fn older_specs_are_unchanged_and_the_new_output_round_trips() {
    let softmax = NetSpec::new(&[4, 3, 2], Activation::Relu, Output::Softmax).unwrap();
    assert_eq!(
        serde_json::to_string(&softmax).unwrap(),
        r#"{"layers":[4,3,2],"hidden_activations":["relu"],"output":"softmax","weight_decay":0.0,"sparsity":null}"#
    );
    let sq = NetSpec::new(&[4, 3, 4], Activation::Sigmoid, Output::SquaredError(Activation::Sigmoid)).unwrap();
    assert!(serde_json::to_string(&sq).unwrap().contains(r#""output":{"squared_error":"sigmoid"}"#));
    let bce = NetSpec::new(&[4, 3, 2], Activation::Relu, Output::SigmoidBce).unwrap();
    let json = serde_json::to_string(&bce).unwrap();
    assert!(json.contains(r#""output":"sigmoid_bce""#), "{json}");
    assert_eq!(serde_json::from_str::<NetSpec>(&json).unwrap(), bce);
    assert_eq!(ThetaLayout::new(&bce).len(), ThetaLayout::new(&softmax).len());
    assert_eq!(ThetaLayout::new(&bce).weight_range(1), ThetaLayout::new(&softmax).weight_range(1));
    for name in ["sigmoid-bce", "sigmoid_bce", "BCE"] {
        assert_eq!(Output::parse(name).unwrap(), Output::SigmoidBce, "{name}");
    }
    assert_eq!(Output::parse(&Output::SigmoidBce.name()).unwrap(), Output::SigmoidBce);
}

/// The backend refuses targets outside {0, 1} and labels, in one line naming the value.
#[test]
fn backends_refuse_targets_that_are_not_zero_or_one() {
    let spec = dense_bce(&[2, 3, 2], Activation::Tanh, 0.0);
    let x = Array2::<f64>::zeros((3, 2));
    let mut y = Array2::<f64>::zeros((3, 2));
    y[[2, 1]] = 0.7;
    let mut cpu = CpuBackend::<f32>::new(spec.clone()).unwrap();
    let err = cpu.set_data((&x).into(), Targets::Values((&y).into())).unwrap_err().to_string();
    assert!(err.contains("0.7") && err.contains("row 3, column 2") && !err.contains('\n'), "{err}");
    let err = cpu.set_data((&x).into(), Targets::Labels(&[0, 1, 1])).unwrap_err().to_string();
    assert!(err.contains("0/1 targets"), "{err}");
}

fn wgnn(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_wgnn")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Exit non-zero and one error line holding `needle`.
fn refused(args: &[&str], needle: &str) {
    let (ok, _, stderr) = wgnn(args);
    assert!(!ok, "{args:?} succeeded");
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("note: ")).collect();
    assert_eq!(errors.len(), 1, "one line: {stderr}");
    assert!(errors[0].contains(needle), "`{}` should say `{needle}`", errors[0]);
}

/// A CSV of m rows: 4 features in [−1, 1], then 3 labels y0 = [x0 > 0], y1 = [x1 + x2 > 0],
/// y2 = [x3 > 0.3], then a class column c = y0 (the binary case; dropped with --targets).
fn write_multilabel_csv(path: &Path, m: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut text = String::from("x0,x1,x2,x3,y0,y1,y2,c\n");
    for _ in 0..m {
        let x: Vec<f64> = (0..4).map(|_| rng.random_range(-1.0..1.0)).collect();
        let y = [x[0] > 0.0, x[1] + x[2] > 0.0, x[3] > 0.3].map(u8::from);
        text += &format!("{:.4},{:.4},{:.4},{:.4},{},{},{},{}\n", x[0], x[1], x[2], x[3], y[0], y[1], y[2], y[0]);
    }
    std::fs::write(path, text).unwrap();
}

/// From the CLI: a tiny multi-label problem learns (exact-match accuracy on held-out rows
/// above 0.85; chance is about 1/8, and an untrained net scores far lower); predict writes
/// probabilities and 0/1 decisions with a header; eval prints subset accuracy, Hamming loss and
/// per-label accuracy; the binary case from a 0/1 label column.
#[test]
fn a_multilabel_problem_learns_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (train, test) = (dir.path().join("train.csv"), dir.path().join("test.csv"));
    write_multilabel_csv(&train, 400, 1);
    write_multilabel_csv(&test, 200, 2);
    let run = dir.path().join("run");
    let (d, t, r) = (format!("csv:{}", train.display()), format!("csv:{}", test.display()), run.to_str().unwrap());
    let bce_flags = ["--targets", "columns:5-7", "--output", "sigmoid-bce"];
    let mut args = vec!["train", "mlp", "--data", &d, "--test-data", &t, "--hidden", "16", "--activation", "tanh"];
    args.extend(bce_flags);
    args.extend(["--optimizer", "lbfgs", "--iterations", "200", "--backend", "cpu", "--quiet", "--out", r]);
    let (ok, _, stderr) = wgnn(&args);
    assert!(ok, "{stderr}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    let test_accuracy = metrics["test_accuracy"].as_f64().unwrap();
    assert!(test_accuracy > 0.85, "exact-match test accuracy {test_accuracy}");

    // eval: the same held-out rows scored by subset accuracy, Hamming loss, per-label accuracy.
    let mut args = vec!["eval", "--model", r, "--data", &t, "--json", "--backend", "cpu"];
    args.extend(["--targets", "columns:5-7"]);
    let (ok, stdout, stderr) = wgnn(&args);
    assert!(ok, "{stderr}");
    let e: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert!((e["subset_accuracy"].as_f64().unwrap() - test_accuracy).abs() < 1e-12, "{e}");
    let hamming = e["hamming_loss"].as_f64().unwrap();
    let per_label: Vec<f64> = e["per_label_accuracy"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(per_label.len(), 3);
    let mean_right = per_label.iter().sum::<f64>() / 3.0;
    assert!((1.0 - hamming - mean_right).abs() < 1e-12, "Hamming loss {hamming} vs per-label {per_label:?}");
    assert!(hamming < 0.1 && hamming > 0.0, "{hamming}");
    // Without --targets, eval takes the columns the model was trained on.
    let (ok, stdout, stderr) = wgnn(&["eval", "--model", r, "--data", &t, "--json", "--backend", "cpu"]);
    assert!(ok, "{stderr}");
    let stored: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(stored["subset_accuracy"], e["subset_accuracy"]);
    assert_eq!(stored["hamming_loss"], e["hamming_loss"]);

    // predict: probabilities then decisions, named in the header; decisions = [p ≥ 0.5].
    let out = dir.path().join("p.csv");
    let o = out.to_str().unwrap();
    let (ok, _, stderr) = wgnn(&["predict", "--model", r, "--data", &t, "--out", o]);
    assert!(ok, "{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("p0,p1,p2,y0,y1,y2"));
    let rows: Vec<Vec<f64>> = lines.map(|l| l.split(',').map(|v| v.parse().unwrap()).collect()).collect();
    assert_eq!(rows.len(), 200);
    for row in &rows {
        for j in 0..3 {
            assert!((0.0..=1.0).contains(&row[j]));
            assert_eq!(row[3 + j], f64::from(u8::from(row[j] >= 0.5)), "{row:?}");
        }
    }

    // Binary: the class column (0/1 labels) as the one target.
    let bin = dir.path().join("bin");
    let b = bin.to_str().unwrap();
    let args = [
        "train",
        "mlp",
        "--data",
        &d,
        "--test-data",
        &t,
        "--label-column",
        "last",
        "--output",
        "sigmoid-bce",
        "--hidden",
        "8",
        "--optimizer",
        "lbfgs",
        "--iterations",
        "100",
        "--backend",
        "cpu",
        "--quiet",
        "--out",
        b,
    ];
    let (ok, _, stderr) = wgnn(&args);
    assert!(ok, "{stderr}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bin.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["spec"]["layers"].as_array().unwrap().last().unwrap(), 1);
    assert!(metrics["test_accuracy"].as_f64().unwrap() > 0.9, "{}", metrics["test_accuracy"]);
}

/// Targets outside {0, 1}, labels of more than two classes, and the output on another kind
/// are refused in one line, exit non-zero, nothing trained.
#[test]
fn the_cli_refuses_what_binary_cross_entropy_cannot_take() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    std::fs::write(&path, "a,b,y0,y1,c\n0.1,0.2,0,1,0\n0.3,0.4,2,0,1\n0.5,0.6,1,1,2\n").unwrap();
    let d = format!("csv:{}", path.display());
    let run = dir.path().join("run");
    let r = run.to_str().unwrap();
    let base = ["train", "mlp", "--data", d.as_str(), "--output", "sigmoid-bce", "--backend", "cpu", "--out", r];
    let with = |extra: &[&'static str]| -> Vec<String> { base.iter().chain(extra).map(|s| s.to_string()).collect() };
    let args = with(&["--label-column", "none", "--targets", "columns:3-4"]);
    refused(&args.iter().map(String::as_str).collect::<Vec<_>>(), "target 2 at row 2, column 1 is not 0 or 1");
    let args = with(&["--label-column", "last"]);
    refused(&args.iter().map(String::as_str).collect::<Vec<_>>(), "the labels are 0, 1, 2");
    refused(&["train", "softmax", "--data", &d, "--output", "sigmoid-bce", "--out", r], "goes with `train mlp`");
    assert!(!run.join("model.safetensors").exists());
}
