//! Whole networks made of layer stacks (conv2d, pooling, maxout, dense) on the CPU backend
//! (issue 15): gradient checks of the f64 reference against central differences, the f32
//! fast path against f64, bits independent of the thread count, dense specs unchanged (JSON,
//! θ layout, cost and gradient bits, checkpoints), refusals of stacks that do not fit their
//! input, and a short MNIST run that must learn.

mod common;

use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::cpu::net::{Scratch, TargetView};
use wgnn::gradcheck::{numerical_gradient, relative_difference};
use wgnn::model::{Activation, InputShape, Layer, LayerStack, NetSpec, Output, ThetaLayout, parse_net};
use wgnn::{Backend, Batch, CpuBackend, Targets};

/// A stack network from the `--net` grammar on `input`.
fn net(input: InputShape, text: &str, outputs: usize, lambda: f64) -> NetSpec {
    let parsed = parse_net(text).expect("the test's --net parses");
    NetSpec::stack(LayerStack { input, layers: parsed.layers }, outputs, parsed.output)
        .and_then(|s| s.with_weight_decay(lambda))
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Random examples in [0, 1), targets for the spec's output, and a θ with every entry
/// (biases too) uniform in ±0.5.
struct Problem {
    x: Array2<f64>,
    labels: Vec<usize>,
    values: Array2<f64>,
    theta: Vec<f64>,
}

impl Problem {
    fn new(spec: &NetSpec, m: usize, seed: u64) -> Problem {
        let mut rng = StdRng::seed_from_u64(seed);
        let x = Array2::from_shape_simple_fn((m, spec.inputs()), || rng.random_range(0.0..1.0));
        let labels = (0..m).map(|i| (i + seed as usize) % spec.outputs()).collect();
        let values = Array2::from_shape_simple_fn((m, spec.outputs()), || rng.random_range(0.1..0.9));
        let theta = (0..ThetaLayout::new(spec).len()).map(|_| rng.random_range(-0.5..0.5)).collect();
        Problem { x, labels, values, theta }
    }

    fn load(&self, spec: &NetSpec, backend: &mut dyn Backend) {
        let targets = match spec.output {
            Output::Softmax => Targets::Labels(&self.labels),
            Output::SquaredError(_) => Targets::Values((&self.values).into()),
            Output::SigmoidBce => unreachable!("no sigmoid-bce case here (tests/bce.rs)"),
        };
        backend.set_data((&self.x).into(), targets).expect("the problem fits its network");
    }
}

/// The networks checked: every layer kind and geometry the issue names.
fn cases() -> Vec<(&'static str, NetSpec)> {
    vec![
        (
            "1×7×7, conv k3 s1 p1, max pool 3/2, dense, softmax",
            net(
                InputShape::image(1, 7, 7),
                "conv 3x3x3 tanh pad 1, maxpool 3 stride 2, dense 5 sigmoid, softmax",
                3,
                1e-2,
            ),
        ),
        (
            "3×9×9, conv k5 s2 p2, mean pool 3/2, maxout k2, squared error",
            net(
                InputShape::image(3, 9, 9),
                "conv 4x5x5 sigmoid stride 2 pad 2, meanpool 3 stride 2, maxout 3x2, identity",
                2,
                1e-2,
            ),
        ),
        (
            "1×9×9, conv k1, mean pool 3, maxout k3, softmax",
            net(InputShape::image(1, 9, 9), "conv 2x1x1 tanh, meanpool 3, maxout 4x3, softmax", 3, 1e-3),
        ),
        (
            "3×7×7, conv k3 s1 p0, two convs, dense, sigmoid squared error",
            net(
                InputShape::image(3, 7, 7),
                "conv 2x3x3 tanh, conv 3x3x3 sigmoid stride 2 pad 1, dense 4 tanh, sigmoid",
                3,
                1e-2,
            ),
        ),
        (
            "1×28×28, conv k5 s2, max pool 2, softmax",
            net(InputShape::image(1, 28, 28), "conv 2x5x5 tanh stride 2, maxpool 2, softmax", 10, 1e-3),
        ),
        ("maxout on features, k2 then k3", net(InputShape::features(6), "maxout 4x2, maxout 3x3, softmax", 3, 1e-2)),
    ]
}

/// The step of these central differences: ε = 1e-5, near the textbook optimum ∛(ε_mach) for
/// θ of order 1, rather than UFLDL's 1e-4. A conv layer's bias feeds every output position,
/// so these costs curve more than a dense net's and the O(ε²) truncation error of ε = 1e-4
/// alone reaches ~1e-9 — measured on the 28×28 case: 1.29e-7 at ε = 1e-3, 1.29e-9 at 1e-4,
/// 1.1e-10 at 1e-5 (the ε² law exactly: truncation, not a wrong gradient).
const STEP: f64 = 1e-5;

#[test]
fn f64_gradients_of_whole_stacks_match_central_differences() {
    for (name, spec) in cases() {
        assert!(spec.has_layer_stack(), "{name}: a stack spec");
        let p = Problem::new(&spec, 4, 7);
        let mut cpu = CpuBackend::<f64>::new(spec.clone()).unwrap();
        p.load(&spec, &mut cpu);
        let mut analytic = vec![0.0; p.theta.len()];
        cpu.cost_and_grad(&p.theta, Batch::All, &mut analytic).unwrap();
        let numerical = numerical_gradient(|t| cpu.cost(t, Batch::All).map(|c| c.total()), &p.theta, STEP).unwrap();
        let norm = analytic.iter().map(|g| g * g).sum::<f64>().sqrt();
        assert!(norm > 1e-3, "{name}: the gradient is (nearly) zero, the check would prove nothing");
        let d = relative_difference(&analytic, &numerical);
        assert!(d < 1e-9, "{name}: relative difference {d:e}");
    }
}

/// ‖a − b‖ / ‖b‖.

#[test]
fn f32_fast_path_equals_f64_and_its_bits_do_not_depend_on_threads() {
    for (name, spec) in cases() {
        // 300 rows: more than one chunk of the stack's row chunking.
        let p = Problem::new(&spec, 300, 3);
        common::f32_matches_f64_with_the_same_bits_on_any_threads(
            name,
            &spec,
            &p.theta,
            &|b: &mut dyn Backend| p.load(&spec, b),
            1e-5,
        );
    }
}

#[test]
fn a_stack_predicts_its_forward_output_and_every_shape_is_the_specs() {
    let (_, spec) = cases().swap_remove(0);
    let p = Problem::new(&spec, 300, 5);
    let mut cpu = CpuBackend::<f64>::new(spec.clone()).unwrap();
    let acts = cpu.forward(&p.theta, (&p.x).into()).unwrap();
    // conv 3×7×7, pool 3×3×3, dense 5, output 3.
    let widths: Vec<usize> = acts.iter().map(|a| a.ncols()).collect();
    assert_eq!(widths, vec![147, 27, 5, 3]);
    assert!(acts.iter().all(|a| a.nrows() == 300));
    let out = cpu.predict(&p.theta, (&p.x).into()).unwrap();
    assert_eq!(&out, acts.last().unwrap());
    assert!(out.rows().into_iter().all(|r| (r.sum() - 1.0).abs() < 1e-12), "softmax rows sum to 1");
}

#[test]
fn theta_layout_is_all_weights_then_all_biases_with_conv_weights_in_pytorch_layout() {
    let spec = net(
        InputShape::image(1, 28, 28),
        "conv 20x5x5 relu, maxpool 2, conv 50x5x5 relu, maxpool 2, dense 500 relu, softmax",
        10,
        0.0,
    );
    let layout = ThetaLayout::new(&spec);
    assert_eq!(layout.shapes, vec![(20, 25), (50, 500), (500, 800), (10, 500)]);
    // PyTorch's LeNet: 20·25+20 + 50·500+50 + 500·800+500 + 10·500+10 = 431,080.
    assert_eq!(layout.len(), 431_080);
    assert_eq!(spec.parameter_count().unwrap(), 431_080);
    assert_eq!(layout.all_weights(), 0..430_500);
    assert_eq!(layout.bias_range(0), 430_500..430_520);
    assert_eq!(spec.layers, vec![784, 20 * 24 * 24, 50 * 8 * 8, 500, 10]);
}

#[test]
fn weight_decay_covers_every_weight_tensor_and_no_bias() {
    let (_, spec) = cases().swap_remove(1);
    let p = Problem::new(&spec, 5, 1);
    let lambda = spec.weight_decay;
    let layout = ThetaLayout::new(&spec);
    let mut with = CpuBackend::<f64>::new(spec.clone()).unwrap();
    p.load(&spec, &mut with);
    let plain = spec.clone().with_weight_decay(0.0).unwrap();
    let mut without = CpuBackend::<f64>::new(plain.clone()).unwrap();
    p.load(&plain, &mut without);
    let (mut g1, mut g0) = (vec![0.0; layout.len()], vec![0.0; layout.len()]);
    let c1 = with.cost_and_grad(&p.theta, Batch::All, &mut g1).unwrap();
    let c0 = without.cost_and_grad(&p.theta, Batch::All, &mut g0).unwrap();
    let sum_sq: f64 = p.theta[layout.all_weights()].iter().map(|w| w * w).sum();
    assert!((c1.weight_decay - 0.5 * lambda * sum_sq).abs() < 1e-12 * c1.weight_decay);
    assert_eq!(c0.data, c1.data);
    for i in 0..layout.len() {
        let want = if layout.all_weights().contains(&i) { g0[i] + lambda * p.theta[i] } else { g0[i] };
        assert!((g1[i] - want).abs() < 1e-12, "θ[{i}]: {} vs {want}", g1[i]);
    }
}

/// The JSON of a dense spec as the crate wrote it before layer stacks existed.
const DENSE_JSON: &str =
    r#"{"layers":[4,3,2],"hidden_activations":["tanh"],"output":"softmax","weight_decay":0.001,"sparsity":null}"#;

#[test]
fn dense_specs_keep_their_json_layout_bits_and_checkpoints() {
    let spec = NetSpec::new(&[4, 3, 2], Activation::Tanh, Output::Softmax).unwrap().with_weight_decay(1e-3).unwrap();
    assert_eq!(serde_json::to_string(&spec).unwrap(), DENSE_JSON);
    let old: NetSpec = serde_json::from_str(DENSE_JSON).unwrap();
    assert_eq!(old, spec);
    // A stack of dense layers only is today's dense network.
    let stacked = NetSpec::stack(
        LayerStack {
            input: InputShape::features(4),
            layers: vec![Layer::Dense { units: 3, activation: Activation::Tanh }],
        },
        2,
        Output::Softmax,
    )
    .unwrap()
    .with_weight_decay(1e-3)
    .unwrap();
    assert_eq!(stacked, spec);
    assert!(!spec.has_layer_stack());

    // Cost and gradient bits: the backend equals the dense path called directly.
    let p = Problem::new(&spec, 7, 2);
    let layout = ThetaLayout::new(&spec);
    let mut cpu = CpuBackend::<f64>::new(spec.clone()).unwrap();
    p.load(&spec, &mut cpu);
    let mut g = vec![0.0; layout.len()];
    let c = cpu.cost_and_grad(&p.theta, Batch::All, &mut g).unwrap();
    let mut g_ref = vec![0.0; layout.len()];
    let c_ref = wgnn::cpu::net::cost_and_grad(
        &mut Scratch::default(),
        &spec,
        &layout,
        &p.theta,
        p.x.view(),
        TargetView::Labels(&p.labels),
        Some(&mut g_ref),
    );
    assert_eq!(c.total().to_bits(), c_ref.total().to_bits());
    assert!(g.iter().zip(&g_ref).all(|(a, b)| a.to_bits() == b.to_bits()));

    // A checkpoint's header holds the old JSON, and such a file loads.
    let ck = wgnn::checkpoint::Checkpoint::new(spec.clone(), p.theta.clone(), Default::default()).unwrap();
    let bytes = ck.to_bytes().unwrap();
    let text = String::from_utf8_lossy(&bytes);
    // The header is JSON inside a JSON string: its quotes are escaped.
    let escaped = DENSE_JSON.replace('"', "\\\"");
    assert!(text.contains(&escaped), "the checkpoint header holds the dense spec as before: {text}");
    assert!(!text.contains("net\\\""));
    let back = wgnn::checkpoint::Checkpoint::from_bytes(&bytes).unwrap();
    assert_eq!(back.spec, spec);
    assert_eq!(back.theta, p.theta);
}

#[test]
fn a_stack_spec_round_trips_through_json_and_checkpoints() {
    let (_, spec) = cases().swap_remove(1);
    let json = serde_json::to_string(&spec).unwrap();
    assert!(json.contains("\"kind\":\"conv2d\""), "{json}");
    let back: NetSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
    let theta = Problem::new(&spec, 1, 0).theta;
    let ck = wgnn::checkpoint::Checkpoint::new(spec.clone(), theta.clone(), Default::default()).unwrap();
    let loaded = wgnn::checkpoint::Checkpoint::from_bytes(&ck.to_bytes().unwrap()).unwrap();
    assert_eq!((loaded.spec, loaded.theta), (spec, theta));
}

#[test]
fn stacks_that_do_not_fit_their_input_are_refused_in_one_line() {
    let refused = |input: InputShape, text: &str, words: &[&str]| {
        let parsed = parse_net(text).unwrap();
        let err =
            NetSpec::stack(LayerStack { input, layers: parsed.layers }, 10, parsed.output).unwrap_err().to_string();
        assert!(!err.contains('\n'), "one line: {err}");
        for w in words {
            assert!(err.contains(w), "`{text}` on {}: `{err}` should name `{w}`", input.describe());
        }
    };
    refused(InputShape::image(1, 4, 4), "conv 2x5x5 relu, softmax", &["layer 1", "conv 2x5x5", "5×5 kernel", "1×4×4"]);
    refused(InputShape::image(1, 28, 28), "conv 2x5x5 relu, maxpool 5, softmax", &["layer 2", "maxpool 5", "2×24×24"]);
    refused(InputShape::image(1, 8, 8), "maxpool 3 stride 2, softmax", &["layer 1", "do not cover"]);
    refused(InputShape::image(1, 8, 8), "conv 0x3x3 relu, softmax", &["layer 1", "at least 1"]);
    refused(InputShape::image(1, 8, 8), "maxout 0x2, softmax", &["layer 1", "at least 1"]);
    refused(InputShape::image(0, 8, 8), "maxpool 2, softmax", &["input shape", "0×8×8"]);
    refused(InputShape::image(1, 1 << 20, 1 << 20), "conv 4096x5x5 relu, softmax", &["too many"]);
    for bad in [
        "conv 20x5 relu, softmax",
        "conv 20x5x3 relu, softmax",
        "pool 2, softmax",
        "dense 5, softmax",
        "maxout 5, softmax",
        "conv 2x3x3 relu stride, softmax",
        "dense 5 relu, softmax 3 4",
    ] {
        let err = parse_net(bad).unwrap_err().to_string();
        assert!(err.contains("--net"), "`{bad}`: {err}");
    }
    // Descriptions read back as the same layers.
    let text = "conv 20x5x5 relu stride 2 pad 1, maxpool 2, meanpool 3 stride 1, maxout 240x5, dense 10 tanh, softmax";
    let parsed = parse_net(text).unwrap();
    let again = parse_net(&format!(
        "{}, softmax",
        LayerStack { input: InputShape::features(1), layers: parsed.layers.clone() }.describe()
    ))
    .unwrap();
    assert_eq!(again.layers, parsed.layers);
}

/// A small CNN on 500 MNIST training images, 2 epochs of Adam: training accuracy well above
/// chance (10%) — it fails when learning breaks.
#[test]
fn a_small_cnn_learns_mnist() {
    let dir = std::env::var("WGNN_DATA_DIR").unwrap_or_else(|_| "../shared/data".into());
    let path = std::path::Path::new(&dir).join("mnist");
    if !path.exists() {
        eprintln!("skipped: no MNIST at {} (set WGNN_DATA_DIR)", path.display());
        return;
    }
    let source: wgnn::data::DataSource = format!("mnist:{}", path.display()).parse().unwrap();
    let options = wgnn::data::LoadOptions { limit: Some(500), ..Default::default() };
    let data = source.load(&options).unwrap();
    let labels = data.labels.clone().unwrap();
    let spec =
        net(InputShape::image(1, 28, 28), "conv 6x5x5 relu stride 2, maxpool 2, dense 32 relu, softmax", 10, 0.0);
    let mut cpu = CpuBackend::<f32>::new(spec.clone()).unwrap();
    cpu.set_data((&data.x).into(), Targets::Labels(&labels)).unwrap();
    let mut theta = wgnn::model::Init::Uniform.theta(&spec, 0);
    let before = accuracy(&mut cpu, &theta, &data.x, &labels);
    // Adam (η = 1e-3·3, β₁ 0.9, β₂ 0.999), batch 25, 2 epochs, in example order.
    let (mut m1, mut m2) = (vec![0.0; theta.len()], vec![0.0; theta.len()]);
    let mut g = vec![0.0; theta.len()];
    let mut t = 0;
    let first = cpu.cost(&theta, Batch::All).unwrap().total();
    for _ in 0..2 {
        for start in (0..500).step_by(25) {
            cpu.cost_and_grad(&theta, Batch::Rows(start..start + 25), &mut g).unwrap();
            t += 1;
            for i in 0..theta.len() {
                m1[i] = 0.9 * m1[i] + 0.1 * g[i];
                m2[i] = 0.999 * m2[i] + 0.001 * g[i] * g[i];
                let (mh, vh) = (m1[i] / (1.0 - 0.9f64.powi(t)), m2[i] / (1.0 - 0.999f64.powi(t)));
                theta[i] -= 3e-3 * mh / (vh.sqrt() + 1e-8);
            }
        }
    }
    let last = cpu.cost(&theta, Batch::All).unwrap().total();
    let after = accuracy(&mut cpu, &theta, &data.x, &labels);
    eprintln!("cost {first:.3} → {last:.3}, training accuracy {before:.3} → {after:.3}");
    assert!(last < 0.6 * first, "the cost fell from {first} only to {last}");
    assert!(after > 0.7, "training accuracy {after} after 2 epochs (chance is 0.1)");
}

fn accuracy(cpu: &mut CpuBackend<f32>, theta: &[f64], x: &Array2<f32>, labels: &[usize]) -> f64 {
    let predicted = cpu.classify(theta, x.into()).unwrap();
    predicted.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / labels.len() as f64
}

#[test]
fn the_gpu_backend_takes_every_layer_stack() {
    // The GPU runs conv2d, pooling and maxout (tests/gpu_layers.rs checks its numbers), so
    // `--backend auto` no longer sends stacks to the CPU for want of kernels.
    for (name, spec) in cases() {
        assert!(wgnn::GpuBackend::supports(&spec).is_ok(), "{name}");
    }
    assert!(wgnn::GpuBackend::supports(&NetSpec::new(&[4, 3, 2], Activation::Tanh, Output::Softmax).unwrap()).is_ok());
}

/// The binary, with its output and exit code.
fn wgnn(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wgnn")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Expects exit 1 and one error line (after any `note:` lines) holding `needle`.
fn refused_by_cli(args: &[&str], needle: &str) {
    let (ok, _, stderr) = wgnn(args);
    assert!(!ok, "{args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("note: ")).collect();
    assert_eq!(errors.len(), 1, "one line: {stderr}");
    assert!(errors[0].contains(needle), "`{}` should say `{needle}`", errors[0]);
}

#[test]
fn cli_gradcheck_takes_a_net_and_refuses_stacks_that_do_not_fit() {
    let net = "conv 3x3x3 tanh pad 1, maxpool 3 stride 2, maxout 4x2, softmax 3";
    let (ok, stdout, stderr) = wgnn(&["gradcheck", "--net", net, "--input-shape", "1x7x7", "--examples", "4"]);
    assert!(ok, "{stderr}");
    let last = stdout.lines().last().unwrap();
    let d: f64 = last.strip_prefix("relative difference ").unwrap().parse().unwrap();
    assert!(d < 1e-8, "{last}");
    refused_by_cli(&["gradcheck", "--net", "conv 3x9x9 tanh, softmax 3", "--input-shape", "1x7x7"], "layer 1");
    refused_by_cli(&["gradcheck", "--net", net], "--input-shape");
    // The GPU backend computes stacks too (tests/gpu_layers.rs checks its kernels): its f32
    // gradient passes the CLI's f32 tolerance.
    let (ok, stdout, stderr) = wgnn(&["gradcheck", "--net", net, "--input-shape", "1x7x7", "--backend", "gpu"]);
    assert!(ok, "{stderr}");
    let last = stdout.lines().last().unwrap();
    let d: f64 = last.strip_prefix("relative difference ").unwrap().parse().unwrap();
    assert!(d < 1e-4, "{last}");
}

#[test]
fn cli_train_cnn_runs_and_refuses_bad_shapes_before_writing_anything() {
    let dir = std::env::var("WGNN_DATA_DIR").unwrap_or_else(|_| "../shared/data".into());
    let mnist = format!("mnist:{dir}/mnist");
    if !std::path::Path::new(&dir).join("mnist").exists() {
        eprintln!("skipped: no MNIST under {dir}");
        return;
    }
    let tmp = std::env::temp_dir().join(format!("wgnn-cnn-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = tmp.join("run");
    let out_s = out.to_str().unwrap();
    let base = ["train", "cnn", "--data", &mnist, "--limit", "64", "--quiet", "--out", out_s];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        base.iter().chain(extra).copied().collect()
    }
    refused_by_cli(&with(&base, &["--net", "conv 6x5x5 relu, maxpool 5, softmax"]), "layer 2 (maxpool 5)");
    refused_by_cli(&with(&base, &["--input-shape", "2x28x28"]), "784");
    refused_by_cli(&with(&base, &["--net", "conv 6x5x5 relu, softmax 5"]), "10 classes");
    refused_by_cli(&with(&base, &["--hidden", "30"]), "--net");
    assert!(!out.join("model.safetensors").exists(), "a refused run writes no model");
    // The GPU backend trains a stack from the CLI (one step of 64 images; tests/gpu_layers.rs
    // checks its numbers and that it learns).
    let out_gpu = tmp.join("gpu");
    let net = "conv 4x5x5 relu stride 2, maxpool 2, softmax";
    let gpu_args = ["train", "cnn", "--data", &mnist, "--limit", "64", "--quiet", "--net", net, "--iterations", "1"];
    let (ok, _, stderr) = wgnn(&with(&gpu_args, &["--backend", "gpu", "--out", out_gpu.to_str().unwrap()]));
    assert!(ok, "{stderr}");
    assert!(out_gpu.join("model.safetensors").exists(), "the GPU run wrote no model");
    let (ok, _, stderr) =
        wgnn(&with(&base, &["--net", "conv 4x5x5 relu stride 2, maxpool 2, softmax", "--iterations", "1"]));
    assert!(ok, "{stderr}");
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["spec"]["net"]["layers"][0]["kind"], "conv2d");
    let ck = wgnn::checkpoint::Checkpoint::load(&out.join("model.safetensors")).unwrap();
    assert!(ck.spec.has_layer_stack());
    let _ = std::fs::remove_dir_all(&tmp);
}

/// A CNN (or any layer stack) is not an autoencoder whose first layer is a bank of patch
/// features: `FeatureBank::from_autoencoder` refuses it in one line instead of sliding the
/// conv's 5×5 filters over images as if they were features.
#[test]
fn a_feature_bank_refuses_a_layer_stack_in_one_line() {
    for text in ["conv 4x5x5 relu, maxpool 2, softmax", "maxout 6x2, softmax"] {
        let spec = net(InputShape::image(1, 12, 12), text, 10, 0.0);
        let theta = vec![0.1; ThetaLayout::new(&spec).len()];
        let err = wgnn::features::FeatureBank::from_autoencoder(&spec, &theta, 1, None).expect_err("refused");
        let err = err.to_string();
        assert!(err.contains("is a layer stack") && err.contains("wgnn train autoencoder"), "{text}: {err}");
        assert!(!err.contains('\n'), "{err}");
    }
}

/// `filters.png` and `wgnn visualize` of a stack draw its first convolution: grey tiles of
/// k × k for one channel, colour tiles for three (channel 0 red, 1 green, 2 blue), one tile
/// per filter; a stack that starts with maxout draws its W over the input image; one with no
/// filters over pixels is refused by name.
#[test]
fn first_layer_filters_draw_the_first_convolution_grey_or_in_colour() {
    use wgnn::viz::{FilterPicture, first_layer_filters};
    // 1 channel, 6 filters of 5×5 after a pooling layer: 3 columns × 2 rows of 5·8+1-pixel cells.
    let spec = net(InputShape::image(1, 12, 12), "meanpool 2, conv 6x5x5 relu, softmax", 3, 0.0);
    let theta: Vec<f64> = (0..ThetaLayout::new(&spec).len()).map(|i| (i as f64 * 0.37).sin()).collect();
    let (picture, what) = first_layer_filters(&spec, &theta, None).unwrap();
    assert_eq!(what, "6 filters of 1×5×5");
    assert!(matches!(picture, FilterPicture::Gray(_)));
    assert_eq!(picture.dimensions(), (3 * 41 + 1, 2 * 41 + 1));

    // 3 channels: filter 0 is all red (channel 0 positive, the others 0), filter 1 all blue.
    let spec = net(InputShape::image(3, 8, 8), "conv 2x3x3 relu, maxpool 2, softmax", 3, 0.0);
    let mut theta = vec![0.0; ThetaLayout::new(&spec).len()];
    theta[..9].fill(1.0); // W[0, 0, ·, ·]
    theta[27 + 18..27 + 27].fill(1.0); // W[1, 2, ·, ·]
    let (picture, what) = first_layer_filters(&spec, &theta, None).unwrap();
    assert_eq!(what, "2 filters of 3×3×3");
    let FilterPicture::Rgb(img) = picture else { panic!("3 channels are drawn in colour") };
    // side 3 is drawn 8×: cells of 25 pixels, two columns.
    assert_eq!(img.dimensions(), (2 * 25 + 1, 25 + 1));
    assert_eq!(img.get_pixel(5, 5).0, [255, 128, 128], "filter 0 is red");
    assert_eq!(img.get_pixel(25 + 5, 5).0, [128, 128, 255], "filter 1 is blue");

    // Maxout first: its W over the 1×6×6 input, one tile per piece.
    let spec = net(InputShape::image(1, 6, 6), "maxout 3x2, softmax", 2, 0.0);
    let theta = vec![0.5; ThetaLayout::new(&spec).len()];
    let (_, what) = first_layer_filters(&spec, &theta, None).unwrap();
    assert_eq!(what, "6 filters of 1×6×6");

    let spec = net(InputShape::image(1, 6, 6), "maxpool 2, dense 4 relu, softmax", 2, 0.0);
    let theta = vec![0.5; ThetaLayout::new(&spec).len()];
    let err = first_layer_filters(&spec, &theta, None).expect_err("no filters over pixels").to_string();
    assert!(err.contains("no filters over pixels to draw") && !err.contains('\n'), "{err}");
}
