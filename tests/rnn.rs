//! Recurrent networks (issue 16): Elman RNN and LSTM layers trained by backpropagation through
//! time on the CPU. Gradient checks of the f64 reference against central differences through
//! T = 1, 2 and 7 steps with a carried (non-zero) initial state; the f32 fast path against f64;
//! bits independent of the thread count; carried state = one long window; the `--net` grammar
//! and its refusals; PyTorch's `nn.RNN`/`nn.LSTM` on the same θ (tests/fixtures/recurrent); and
//! an LSTM that must learn to remember.

mod common;

use common::sequence::{Problem, net};

use ndarray::{Array2, s};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::cpu::net::TargetView;
use wgnn::cpu::sequence::{Recurrent, State};
use wgnn::gradcheck::{numerical_gradient, relative_difference};
use wgnn::model::{InputShape, Layer, LayerStack, NetSpec, Output, ThetaLayout, parse_net};
use wgnn::optim::clip_by_global_norm;
use wgnn::{Backend, Batch, CpuBackend, Targets};

/// A recurrent network from the `--net` grammar on sequences of `steps` steps of `n` features.
/// The networks checked (steps, features, --net, outputs): each layer kind, stacked, with
/// last-step and per-step outputs, softmax and squared error.
fn cases(steps: usize) -> Vec<(String, NetSpec)> {
    let specs = [
        (3, "rnn 4 tanh, softmax", 3),
        (2, "rnn 3 relu, per-step identity", 2),
        (3, "lstm 4, softmax", 3),
        (2, "lstm 3, per-step softmax", 3),
        (3, "rnn 3 tanh, lstm 3, per-step softmax", 4),
        (3, "lstm 3, lstm 4, softmax", 2),
        (2, "lstm 2, lstm 3, per-step sigmoid", 2),
        (3, "rnn 3 relu, lstm 3, rnn 2 tanh, softmax", 3),
    ];
    specs.into_iter().map(|(n, text, k)| (format!("T = {steps}: {text}"), net(steps, n, text, k, 1e-2))).collect()
}

/// The step of these central differences (as tests/cnn.rs): ε = 1e-5, near ∛(ε_mach) for θ of
/// order 1; ε = 1e-4 leaves an O(ε²) truncation error near 1e-9 on these curved costs.
const STEP: f64 = 1e-5;

#[test]
fn f64_gradients_through_time_match_central_differences_with_a_carried_state() {
    for steps in [1, 2, 7] {
        for (name, spec) in cases(steps) {
            let p = Problem::new(&spec, 3, 11);
            let rec = Recurrent::new(spec.clone()).unwrap();
            let y = p.targets(&spec);
            let mut analytic = vec![0.0; p.theta.len()];
            let (cost, _) = rec.cost_and_grad(&p.theta, p.x.view(), y, Some(&p.state), Some(&mut analytic)).unwrap();
            assert!(cost.total().is_finite() && cost.weight_decay > 0.0, "{name}: {cost:?}");
            let j = |t: &[f64]| rec.cost_and_grad(t, p.x.view(), y, Some(&p.state), None).map(|(c, _)| c.total());
            let numerical = numerical_gradient(j, &p.theta, STEP).unwrap();
            let norm = analytic.iter().map(|g| g * g).sum::<f64>().sqrt();
            assert!(norm > 1e-3, "{name}: the gradient is (nearly) zero, the check would prove nothing");
            let d = relative_difference(&analytic, &numerical);
            eprintln!("{name}: relative difference {d:.2e}");
            assert!(d < 1e-9, "{name}: relative difference {d:e}");
            // W_hh must matter: its gradient is zero at T = 1 from a zero state only.
            let layout = ThetaLayout::new(&spec);
            let w = &analytic[layout.weight_range(0)];
            assert!(w.iter().skip(w.len() / 2).any(|&g| g != 0.0), "{name}: ∇W_hh is zero");
        }
    }
}

/// ‖a − b‖ / ‖b‖.

#[test]
fn f32_fast_path_equals_f64_and_its_bits_do_not_depend_on_threads() {
    for (name, spec) in cases(5) {
        // 300 sequences: more than one chunk of 256.
        let p = Problem::new(&spec, 300, 3);
        common::f32_matches_f64_with_the_same_bits_on_any_threads(
            &name,
            &spec,
            &p.theta,
            &|b: &mut dyn Backend| p.load(&spec, b),
            1e-4,
        );
    }
}

/// Carrying the state is running the sequence on: two windows of T steps, the second started
/// from the first's final state, give the outputs of one window of 2T steps.
#[test]
fn a_carried_state_continues_the_sequence() {
    for text in ["lstm 3, lstm 4, per-step identity", "rnn 4 tanh, rnn 3 relu, per-step identity"] {
        let (steps, n, k) = (4, 2, 2);
        let long = net(2 * steps, n, text, k, 0.0);
        let short = net(steps, n, text, k, 0.0);
        let p = Problem::new(&long, 5, 2);
        let (rec_long, rec_short) = (Recurrent::new(long).unwrap(), Recurrent::new(short).unwrap());
        let (whole, end) = rec_long.predict(&p.theta, p.x.view(), None).unwrap();
        let half = steps * n;
        let (first, mid) = rec_short.predict(&p.theta, p.x.slice(s![.., ..half]), None).unwrap();
        let (second, end2) = rec_short.predict(&p.theta, p.x.slice(s![.., half..]), Some(&mid)).unwrap();
        let joined = ndarray::concatenate(ndarray::Axis(1), &[first.view(), second.view()]).unwrap();
        let gap = (&joined - &whole).mapv(f64::abs).fold(0.0f64, |a, &b| a.max(b));
        assert!(gap < 1e-14, "{text}: windows differ from the whole by {gap:e}");
        for (a, b) in end.layers.iter().zip(&end2.layers) {
            assert!((&a.h - &b.h).mapv(f64::abs).sum() < 1e-13, "{text}: final h");
        }
        // The zero state is the default, and a state changes the output.
        let (from_zero, _) = rec_short.predict(&p.theta, p.x.slice(s![.., half..]), None).unwrap();
        let zero = rec_short.zero_state::<f64>(5);
        assert_eq!(rec_short.predict(&p.theta, p.x.slice(s![.., half..]), Some(&zero)).unwrap().0, from_zero);
        assert!((&from_zero - &second).mapv(f64::abs).sum() > 1e-3, "{text}: the state is used");
    }
}

#[test]
fn shapes_and_theta_layout_follow_pytorch() {
    let spec = net(28, 28, "lstm 128, softmax", 10, 0.0);
    let layout = ThetaLayout::new(&spec);
    // W_ih 512×28 then W_hh 512×128 as one block, the output's W, then b (512), b_out.
    assert_eq!(layout.shapes, vec![(512, 28 + 128), (10, 128)]);
    // PyTorch: 4·128·(28 + 128) + 2·4·128 biases (one of them zero here) + 10·128 + 10.
    assert_eq!(layout.len(), 512 * 156 + 512 + 1290);
    assert_eq!(spec.inputs(), 784);
    assert_eq!(spec.output_steps(), 1);
    let per_step = net(64, 73, "lstm 256, lstm 256, per-step softmax", 73, 0.0);
    assert_eq!(per_step.output_steps(), 64);
    let stack = per_step.net.as_ref().unwrap();
    assert_eq!(
        stack.layers,
        vec![Layer::Lstm { units: 256, per_step: true }, Layer::Lstm { units: 256, per_step: true }]
    );
    assert_eq!(stack.describe(), "lstm 256 per-step, lstm 256 per-step");
    // The spec round-trips through JSON.
    let json = serde_json::to_string(&per_step).unwrap();
    assert_eq!(serde_json::from_str::<NetSpec>(&json).unwrap(), per_step);

    // forward: each layer's outputs batch-major; predict = the output.
    let spec = net(3, 2, "rnn 4 tanh, lstm 3, per-step softmax", 5, 0.0);
    let p = Problem::new(&spec, 7, 1);
    let mut cpu = CpuBackend::<f64>::new(spec.clone()).unwrap();
    let acts = cpu.forward(&p.theta, (&p.x).into()).unwrap();
    let widths: Vec<usize> = acts.iter().map(|a| a.ncols()).collect();
    assert_eq!(widths, vec![12, 9, 15]);
    let out = cpu.predict(&p.theta, (&p.x).into()).unwrap();
    assert_eq!(&out, acts.last().unwrap());
    for row in out.rows() {
        for t in 0..3 {
            let sum: f64 = row.slice(s![t * 5..(t + 1) * 5]).sum();
            assert!((sum - 1.0).abs() < 1e-12, "each step's softmax sums to 1");
        }
    }
}

/// Per step, the cost is the mean over every (sequence, step): the same as the mean of the
/// per-step costs of T networks that share θ would be, checked here by splitting into
/// batches — and a minibatch of rows selects each sequence's T labels.
#[test]
fn per_step_labels_follow_their_sequences_in_minibatches() {
    let spec = net(4, 3, "lstm 5, per-step softmax", 3, 0.0);
    let p = Problem::new(&spec, 6, 4);
    let mut cpu = CpuBackend::<f64>::new(spec.clone()).unwrap();
    p.load(&spec, &mut cpu);
    let all = cpu.cost(&p.theta, Batch::All).unwrap().data;
    let a = cpu.cost(&p.theta, Batch::Rows(0..2)).unwrap().data;
    let b = cpu.cost(&p.theta, Batch::Indices(&[2, 3, 4, 5])).unwrap().data;
    assert!(((2.0 * a + 4.0 * b) / 6.0 - all).abs() < 1e-13, "mean over steps and sequences");
    // Reordering sequences (with their labels) changes nothing.
    let c = cpu.cost(&p.theta, Batch::Indices(&[5, 4, 3, 2])).unwrap().data;
    assert!((c - b).abs() < 1e-13);
    // classify gives a class per (sequence, step), in the labels' order.
    let classes = cpu.classify(&p.theta, (&p.x).into()).unwrap();
    let out = cpu.predict(&p.theta, (&p.x).into()).unwrap();
    assert_eq!(classes.len(), 6 * 4);
    for (i, &c) in classes.iter().enumerate() {
        let step = out.slice(s![i / 4, (i % 4) * 3..(i % 4 + 1) * 3]);
        assert!(step.iter().all(|&v| v <= step[c]), "class of sequence {}, step {}", i / 4, i % 4);
    }
    // Labels must be T per sequence.
    let err = cpu.set_data((&p.x).into(), Targets::Labels(&p.labels[..6])).unwrap_err().to_string();
    assert!(err.contains("6 labels for 6 sequences: give 4 per sequence"), "{err}");
}

fn refused(steps: usize, text: &str, words: &[&str]) {
    let err = match parse_net(text) {
        Err(e) => e.to_string(),
        Ok(parsed) => {
            let stack = LayerStack { input: InputShape::sequence(steps, 3), layers: parsed.layers };
            NetSpec::stack(stack, 4, parsed.output).expect_err(text).to_string()
        }
    };
    assert!(!err.contains('\n'), "{text}: one line: {err}");
    for w in words {
        assert!(err.contains(w), "{text}: `{w}` not in: {err}");
    }
}

#[test]
fn recurrent_specs_that_cannot_work_are_refused_in_one_line() {
    refused(5, "dense 4 tanh, lstm 3, softmax", &["layer 2 (lstm 3)", "reads a sequence", "put rnn/lstm layers first"]);
    refused(5, "lstm 3, dense 4 relu, softmax", &["layer 2 (dense 4 relu)", "after a recurrent layer"]);
    refused(5, "dense 4 relu, per-step softmax", &["per-step", "needs a recurrent layer"]);
    refused(5, "rnn 4 sigmoid, softmax", &["rnn layer's activation is tanh or relu"]);
    refused(5, "lstm 0, softmax", &["layer 1 (lstm 0)", "at least 1 unit"]);
    refused(5, "lstm, softmax", &["lstm UNITS"]);
    refused(5, "lstm 4 relu, softmax", &["write lstm UNITS [per-step]"]);
    refused(5, "rnn 4 tanh per-step extra, softmax", &["write rnn UNITS"]);
    refused(5, "gru 4, softmax", &["unknown layer", "rnn or lstm"]);
    // A stack built by hand: an lstm reading another's last step only.
    let stack = LayerStack {
        input: InputShape::sequence(5, 3),
        layers: vec![Layer::Lstm { units: 3, per_step: false }, Layer::Lstm { units: 3, per_step: false }],
    };
    let err = NetSpec::stack(stack, 2, Output::Softmax).unwrap_err().to_string();
    assert!(err.contains("write `lstm 3 per-step`"), "{err}");
    // An image of several channels is not a sequence.
    let stack =
        LayerStack { input: InputShape::image(3, 5, 5), layers: vec![Layer::Lstm { units: 3, per_step: false }] };
    let err = NetSpec::stack(stack, 2, Output::Softmax).unwrap_err().to_string();
    assert!(err.contains("not a 3×5×5 image"), "{err}");
    // The library refuses a state or targets that do not fit.
    let spec = net(4, 3, "lstm 5, rnn 2 tanh, per-step identity", 2, 0.0);
    let p = Problem::new(&spec, 3, 1);
    let rec = Recurrent::new(spec.clone()).unwrap();
    let mut bad = p.state.clone();
    bad.layers[0].c = None;
    let err = rec.predict(&p.theta, p.x.view(), Some(&bad)).unwrap_err().to_string();
    assert!(
        err.contains("the carried state of layer 1 is 3×5, but 3 sequences of that layer need 3×5 with a cell"),
        "{err}"
    );
    let err = rec.predict(&p.theta, p.x.slice(s![..2, ..]), Some(&p.state)).unwrap_err().to_string();
    assert!(err.contains("need 2×5"), "{err}");
    let wrong = p.values.slice(s![.., ..2]);
    let err = rec.cost_and_grad(&p.theta, p.x.view(), TargetView::Values(wrong), None, None).unwrap_err().to_string();
    assert!(err.contains("targets are 3×2 but need to be 3×8 (4 steps of 2 outputs"), "{err}");
    let err = rec.predict(&p.theta, p.x.slice(s![.., ..5]), None).unwrap_err().to_string();
    assert!(err.contains("5 columns, but the network reads 4 steps of 3 features (12 columns"), "{err}");
    let dense = NetSpec::new(&[3, 2], wgnn::model::Activation::Tanh, Output::Softmax).unwrap();
    assert!(Recurrent::new(dense).unwrap_err().to_string().contains("not a recurrent network"));
    // The GPU backend runs stacks of rnn/lstm layers (issue 16 §3).
    assert!(wgnn::gpu::GpuBackend::supports(&spec).is_ok());
}

#[test]
fn clipping_by_global_norm_scales_to_tau_and_keeps_direction() {
    let mut g: Vec<f64> = vec![3.0, -4.0, 0.0];
    assert_eq!(clip_by_global_norm(&mut g, 10.0).unwrap(), 5.0);
    assert_eq!(g, vec![3.0, -4.0, 0.0], "a norm under τ is left alone");
    assert_eq!(clip_by_global_norm(&mut g, 1.0).unwrap(), 5.0);
    assert!((g[0] - 0.6).abs() < 1e-15 && (g[1] + 0.8).abs() < 1e-15 && g[2] == 0.0, "{g:?}");
    // No overflow of the sum of squares, in f64 or f32.
    let mut big = vec![1e300, 1e300];
    assert!((clip_by_global_norm(&mut big, 1.0).unwrap() / (1e300 * 2f64.sqrt()) - 1.0).abs() < 1e-15);
    assert!((big[0] - 0.5f64.sqrt()).abs() < 1e-15);
    let mut tiny = vec![3e-310, 4e-310];
    assert!((clip_by_global_norm(&mut tiny, 1.0).unwrap() / 5e-310 - 1.0).abs() < 1e-9, "no underflow to 0");
    let mut nan = vec![1.0, f64::NAN];
    assert!(clip_by_global_norm(&mut nan, 1.0).unwrap().is_nan());
    for tau in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let err = clip_by_global_norm(&mut g, tau).unwrap_err().to_string();
        assert!(err.contains("must be a finite number > 0"), "{err}");
    }
}

/// The layers alone: ∂L/∂X, ∂L/∂h_0 and ∂L/∂c_0 (what BPTT passes back to the layer below and
/// to the previous window) against central differences, for L = Σ R ⊙ (h_1 … h_T).
#[test]
fn layer_gradients_of_input_and_initial_state_match_central_differences() {
    use wgnn::layers::lstm::Lstm;
    use wgnn::layers::rnn::{ParamGradients, Rnn};
    let (n, h, m, steps) = (3, 4, 2, 5);
    let mut rng = StdRng::seed_from_u64(8);
    let mut uniform = |r: usize, c: usize| Array2::from_shape_simple_fn((r, c), || rng.random_range(-0.6..0.6));
    for gates in [1, 4] {
        let (w_ih, w_hh, b) = (uniform(gates * h, n), uniform(gates * h, h), uniform(1, gates * h).row(0).to_owned());
        let (x, h0, c0, r) = (uniform(steps * m, n), uniform(m, h), uniform(m, h), uniform(steps * m, h));
        let (rnn, lstm) =
            (Rnn::new(n, h, steps, wgnn::model::Activation::Tanh).unwrap(), Lstm::new(n, h, steps).unwrap());
        // L and its gradients at (x, h0, c0).
        let loss = |x: &Array2<f64>, h0: &Array2<f64>, c0: &Array2<f64>| -> f64 {
            let out = if gates == 1 {
                rnn.forward(w_ih.view(), w_hh.view(), b.view(), x.view(), Some(h0.view())).unwrap().outputs().to_owned()
            } else {
                let f = lstm.forward(w_ih.view(), w_hh.view(), b.view(), x.view(), Some((h0.view(), c0.view())));
                f.unwrap().outputs().to_owned()
            };
            (&out * &r).sum()
        };
        let (mut gw_ih, mut gw_hh, mut gb) = (Array2::zeros(w_ih.dim()), Array2::zeros(w_hh.dim()), b.clone());
        let g = ParamGradients { w_ih: gw_ih.view_mut(), w_hh: gw_hh.view_mut(), b: gb.view_mut() };
        let back = if gates == 1 {
            let f = rnn.forward(w_ih.view(), w_hh.view(), b.view(), x.view(), Some(h0.view())).unwrap();
            rnn.backward(w_ih.view(), w_hh.view(), x.view(), &f, r.view(), 1.0, g, true).unwrap()
        } else {
            let f = lstm.forward(w_ih.view(), w_hh.view(), b.view(), x.view(), Some((h0.view(), c0.view()))).unwrap();
            lstm.backward(w_ih.view(), w_hh.view(), x.view(), &f, r.view(), 1.0, g, true).unwrap()
        };
        let numeric = |a: &Array2<f64>, j: &dyn Fn(&Array2<f64>) -> f64| {
            let flat: Vec<f64> = a.iter().copied().collect();
            numerical_gradient(
                |t: &[f64]| Ok::<f64, ()>(j(&Array2::from_shape_vec(a.dim(), t.to_vec()).unwrap())),
                &flat,
                STEP,
            )
            .unwrap()
        };
        let flat = |a: &Array2<f64>| a.iter().copied().collect::<Vec<f64>>();
        let dx = numeric(&x, &|x| loss(x, &h0, &c0));
        let dh0 = numeric(&h0, &|h| loss(&x, h, &c0));
        let d = relative_difference(&flat(back.input.as_ref().unwrap()), &dx);
        assert!(d < 1e-9, "gates {gates}: ∂L/∂X relative difference {d:e}");
        let d = relative_difference(&flat(&back.h0), &dh0);
        assert!(d < 1e-9, "gates {gates}: ∂L/∂h_0 relative difference {d:e}");
        if gates == 4 {
            let dc0 = numeric(&c0, &|c| loss(&x, &h0, c));
            let d = relative_difference(&flat(back.c0.as_ref().unwrap()), &dc0);
            assert!(d < 1e-9, "∂L/∂c_0 relative difference {d:e}");
        } else {
            assert!(back.c0.is_none());
        }
    }
}

fn fixture(case: &str, name: &str) -> ndarray::ArrayD<f64> {
    use ndarray_npy::ReadNpyExt;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recurrent").join(case).join(name);
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if name == "labels.npy" {
        return ndarray::ArrayD::<i64>::read_npy(file).unwrap().mapv(|v| v as f64);
    }
    ndarray::ArrayD::<f64>::read_npy(file).unwrap()
}

/// PyTorch's `nn.RNN` / `nn.LSTM` (float64, tests/fixtures/make_fixtures.py `recurrent`) on the
/// θ wgnn reads (b_ih = b, b_hh = 0), from a carried non-zero state: the same outputs and final
/// state, and the same cost and gradient < 1e-10.
#[test]
fn recurrent_networks_match_pytorch() {
    for case in ["rnn_tanh_last_step", "rnn_relu_per_step", "lstm_last_step", "lstm2_per_step"] {
        let g: Vec<usize> = fixture(case, "geometry.npy").iter().map(|&v| v as usize).collect();
        let [steps, n, h, k, layers, m] = g[..] else { panic!("{case}: geometry") };
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recurrent").join(case);
        let text = std::fs::read_to_string(dir.join("net.txt")).unwrap();
        let spec = net(steps, n, text.trim(), k, fixture(case, "decay.npy")[0]);
        let rec = Recurrent::new(spec.clone()).unwrap();
        let theta: Vec<f64> = fixture(case, "theta.npy").iter().copied().collect();
        let x = fixture(case, "x.npy").into_dimensionality::<ndarray::Ix2>().unwrap();
        let (h0, lstm) = (fixture(case, "h0.npy"), text.starts_with("lstm"));
        let c0 = lstm.then(|| fixture(case, "c0.npy"));
        let layer = |a: &ndarray::ArrayD<f64>, l: usize| {
            a.index_axis(ndarray::Axis(0), l).to_owned().into_dimensionality::<ndarray::Ix2>().unwrap()
        };
        let state = State {
            layers: (0..layers)
                .map(|l| wgnn::cpu::sequence::LayerState { h: layer(&h0, l), c: c0.as_ref().map(|c| layer(c, l)) })
                .collect(),
        };
        assert_eq!(state.layers[0].h.dim(), (m, h));
        let (labels, targets): (Vec<usize>, Option<Array2<f64>>) = match spec.output {
            Output::Softmax => (fixture(case, "labels.npy").iter().map(|&v| v as usize).collect(), None),
            Output::SquaredError(_) => {
                (Vec::new(), Some(fixture(case, "targets.npy").into_dimensionality::<ndarray::Ix2>().unwrap()))
            }
            Output::SigmoidBce => unreachable!("no sigmoid-bce fixture (tests/bce.rs)"),
        };
        let y = match &targets {
            Some(t) => TargetView::Values(t.view()),
            None => TargetView::Labels(&labels),
        };
        let mut grad = vec![0.0; theta.len()];
        let (cost, end) = rec.cost_and_grad(&theta, x.view(), y, Some(&state), Some(&mut grad)).unwrap();
        let want_cost = fixture(case, "cost.npy")[0];
        let cost_gap = (cost.total() - want_cost).abs() / want_cost.abs();
        let want_grad: Vec<f64> = fixture(case, "grad.npy").iter().copied().collect();
        let grad_gap = relative_difference(&grad, &want_grad);
        eprintln!("{case}: cost {cost_gap:.1e}, gradient {grad_gap:.1e} from PyTorch");
        assert!(cost_gap < 1e-10, "{case}: J = {} vs PyTorch {want_cost}", cost.total());
        assert!(grad_gap < 1e-10, "{case}: gradient differs from PyTorch's by {grad_gap:e}");
        let (out, _) = rec.predict(&theta, x.view(), Some(&state)).unwrap();
        let want_out = fixture(case, "out.npy").into_dimensionality::<ndarray::Ix2>().unwrap();
        let out_gap = (&out - &want_out).mapv(f64::abs).fold(0.0f64, |a, &b| a.max(b));
        assert!(out_gap < 1e-12, "{case}: outputs differ from PyTorch's by {out_gap:e}");
        let (h_final, c_final) = (fixture(case, "h_final.npy"), lstm.then(|| fixture(case, "c_final.npy")));
        for (l, st) in end.layers.iter().enumerate() {
            assert!((&st.h - &layer(&h_final, l)).mapv(f64::abs).sum() < 1e-12, "{case}: final h of layer {l}");
            if let Some(c) = &c_final {
                assert!((st.c.as_ref().unwrap() - &layer(c, l)).mapv(f64::abs).sum() < 1e-12, "{case}: final c");
            }
        }
    }
}

/// Sequences of `steps` random ±1 values whose label is the sign of the first: the network must
/// carry one bit across steps − 1 steps of noise.
fn first_bit_task(m: usize, steps: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = Array2::from_shape_simple_fn((m, steps), || if rng.random_bool(0.5) { 1.0f32 } else { -1.0 });
    let labels = x.column(0).iter().map(|&v| usize::from(v > 0.0)).collect();
    (x, labels)
}

/// An LSTM learns to remember the first of 12 values (chance: 50%): the library's Adam with
/// clipping by global norm (τ = 1), minibatches of 32, f32. Only the gradient that flows back
/// through 11 steps of W_hh and the cell can teach it, so a broken BPTT stays near chance.
#[test]
fn an_lstm_learns_to_remember_the_first_step() {
    use wgnn::optim::{BackendObjective, Hooks, Method, Minibatch, Optimizer, Stop};
    let steps = 12;
    let spec = net(steps, 1, "lstm 8, softmax", 2, 0.0);
    let (x, labels) = first_bit_task(512, steps, 1);
    let (test_x, test_labels) = first_bit_task(500, steps, 2);
    let mut cpu = CpuBackend::<f32>::new(spec.clone()).unwrap();
    cpu.set_data((&x).into(), Targets::Labels(&labels)).unwrap();
    let mut theta = wgnn::model::Init::Uniform.theta(&spec, 0);
    let method = Method::Minibatch(Minibatch::adam(2e-2).with_batch_size(32).with_clip_norm(1.0).with_seed(5));
    let stop = Stop { cost_tol: 0.0, ..Stop::MINIBATCH.with_max_iterations(8) };
    let mut opt = Optimizer::new(method).unwrap();
    opt.run(&mut BackendObjective::new(&mut cpu), &mut theta, &stop, &mut Hooks::new()).unwrap();
    let predicted = cpu.classify(&theta, (&test_x).into()).unwrap();
    let accuracy = predicted.iter().zip(&test_labels).filter(|(p, l)| p == l).count() as f64 / 500.0;
    eprintln!("held-out accuracy {accuracy:.3} after 8 epochs of 16 steps");
    assert!(accuracy > 0.95, "held-out accuracy {accuracy} (chance is 0.5)");
}

/// Clipping inside the minibatch optimizer: with τ tiny every step has length η·(Adam's unit
/// step) either way, so compare SGD, whose step is η·g: clipped to τ, θ moves by exactly η·τ
/// per step.
#[test]
fn the_minibatch_optimizer_clips_each_gradient_to_tau() {
    use wgnn::optim::{BackendObjective, Hooks, Method, Minibatch, Optimizer, Stop, UpdateRule};
    let spec = net(4, 2, "lstm 3, softmax", 2, 0.0);
    let p = Problem::new(&spec, 8, 3);
    let mut cpu = CpuBackend::<f64>::new(spec.clone()).unwrap();
    p.load(&spec, &mut cpu);
    let (eta, tau) = (0.5, 1e-3);
    let sgd = Minibatch::sgd(eta).with_rule(UpdateRule::Plain).with_batch_size(8).with_clip_norm(tau);
    let mut theta = p.theta.clone();
    let stop = Stop { cost_tol: 0.0, ..Stop::MINIBATCH.with_max_iterations(1) };
    let mut opt = Optimizer::new(Method::Minibatch(sgd)).unwrap();
    opt.run(&mut BackendObjective::new(&mut cpu), &mut theta, &stop, &mut Hooks::new()).unwrap();
    let moved = theta.iter().zip(&p.theta).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
    assert!((moved - eta * tau).abs() < 1e-12, "θ moved {moved}, not η·τ = {}", eta * tau);
    let err = Optimizer::new(Method::Minibatch(sgd.with_clip_norm(0.0))).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("clipping norm τ = 0 must be a finite number > 0"), "{err}");
}

/// The binary, with its output and exit code.
fn wgnn(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wgnn")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// `wgnn gradcheck --net` takes recurrent networks (per-step labels made for it) and refuses
/// impossible ones in one line, exit 1, no panic.
#[test]
fn cli_gradcheck_takes_recurrent_nets_and_refuses_impossible_ones_in_one_line() {
    for net in ["lstm 4, lstm 3, per-step softmax 5", "rnn 4 relu, softmax 3", "rnn 3 tanh, per-step tanh 2"] {
        let (ok, stdout, stderr) =
            wgnn(&["gradcheck", "--net", net, "--input-shape", "1x6x3", "--examples", "4", "--backend", "cpu"]);
        assert!(ok, "{net}: {stderr}");
        assert!(stdout.contains("backend  cpu f64"), "{stdout}");
        let last = stdout.lines().last().unwrap();
        let d: f64 = last.strip_prefix("relative difference ").unwrap().parse().unwrap();
        assert!(d < 1e-8, "{net}: {last}");
    }
    for (net, shape, needle) in [
        ("dense 4 relu, lstm 3, softmax 5", "1x6x3", "put rnn/lstm layers first"),
        ("lstm 4, softmax 5", "3x6x3", "not a 3×6×3 image: give the input shape as 1xTxN"),
        ("lstm 4, gru 3, softmax 5", "1x6x3", "unknown layer"),
    ] {
        let mut args = vec!["gradcheck", "--net", net, "--input-shape"];
        args.extend(shape.split(' '));
        let (ok, _, stderr) = wgnn(&args);
        assert!(!ok && !stderr.contains("panicked"), "{net}: {stderr}");
        let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("note: ")).collect();
        assert_eq!(errors.len(), 1, "one line: {stderr}");
        assert!(errors[0].contains(needle), "`{}` should say `{needle}`", errors[0]);
    }
    // The GPU computes recurrent networks too (issue 16 §3): its f32 gradient within
    // gradcheck's f32 tolerance of the f64 cost's central differences.
    let (ok, stdout, stderr) = wgnn(&[
        "gradcheck",
        "--net",
        "lstm 4, softmax 5",
        "--input-shape",
        "1x6x3",
        "--examples",
        "4",
        "--backend",
        "gpu",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("backend  gpu f32") && stdout.contains("ok: its gradient"), "{stdout}{stderr}");
}

/// `wgnn train cnn` trains an LSTM on MNIST read row by row (1×28×28 = 28 steps of 28 pixels)
/// and finishes cleanly (no filter picture of a recurrent weight block).
#[test]
fn cli_trains_an_lstm_on_mnist_rows() {
    let dir = std::env::var("WGNN_DATA_DIR").unwrap_or_else(|_| "../shared/data".into());
    let mnist = std::path::Path::new(&dir).join("mnist");
    if !mnist.exists() {
        eprintln!("skipped: no MNIST at {} (set WGNN_DATA_DIR)", mnist.display());
        return;
    }
    let out = std::env::temp_dir().join(format!("wgnn-rnn-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let (data, out_s) = (format!("mnist:{}", mnist.display()), out.display().to_string());
    let args = [
        "train",
        "cnn",
        "--data",
        &data,
        "--limit",
        "300",
        "--net",
        "lstm 8, softmax",
        "--input-shape",
        "1x28x28",
        "--optimizer",
        "adam",
        "--iterations",
        "2",
        "--batch-size",
        "50",
        "--learning-rate",
        "0.01",
        "--quiet",
        "--out",
        &out_s,
    ];
    let (ok, _, stderr) = wgnn(&args);
    assert!(ok, "{stderr}");
    assert!(out.join("model.safetensors").exists() && !out.join("filters.png").exists());
    let _ = std::fs::remove_dir_all(&out);
}

/// m one-hot sequences (a character model's input: T steps, one 1 among n per step) and
/// per-step labels, with the spec's θ uniform in ±0.5 and a random carried state.
fn one_hot_problem(spec: &NetSpec, m: usize, seed: u64) -> Problem {
    let mut p = Problem::new(spec, m, seed);
    let n = spec.net.as_ref().unwrap().input.width;
    let mut rng = StdRng::seed_from_u64(seed + 100);
    p.x.fill(0.0);
    for mut row in p.x.rows_mut() {
        for t in 0..row.len() / n {
            row[t * n + rng.random_range(0..n)] = 1.0;
        }
    }
    p
}

/// One-hot inputs take another path (issue 16 §6: W_ih's columns gathered instead of the
/// input product, ∇W_ih scattered from δZ's rows): its gradient through time must pass the
/// same f64 check < 1e-9, its forward must be the product to the bit (2x with W_ih / 2 goes
/// through the GEMM — no longer one-hot — and gives the same values exactly, both scalings
/// being exact), its ∇W_ih the product's (×2) to rounding, and its f32 bits must not depend on
/// the number of threads.
#[test]
fn one_hot_inputs_gather_w_ih_with_the_products_values() {
    for (text, k) in
        [("lstm 4, per-step softmax", 5), ("rnn 3 tanh, per-step softmax", 5), ("lstm 3, lstm 4, softmax", 3)]
    {
        for steps in [1, 2, 7] {
            let spec = net(steps, 5, text, k, 1e-2);
            let name = format!("T = {steps}: {text}");
            let p = one_hot_problem(&spec, 3, 17);
            let rec = Recurrent::new(spec.clone()).unwrap();
            let y = p.targets(&spec);
            let mut analytic = vec![0.0; p.theta.len()];
            rec.cost_and_grad(&p.theta, p.x.view(), y, Some(&p.state), Some(&mut analytic)).unwrap();
            let j = |t: &[f64]| rec.cost_and_grad(t, p.x.view(), y, Some(&p.state), None).map(|(c, _)| c.total());
            let d = relative_difference(&analytic, &numerical_gradient(j, &p.theta, STEP).unwrap());
            assert!(d < 1e-9, "{name}: one-hot gradient, relative difference {d:e}");

            // The same network through the product: x doubled, W_ih (the first rows·n values
            // of layer 0's block) halved.
            let layout = ThetaLayout::new(&spec);
            // Layer 0's block is rows × (n + h), W_ih (rows × n) first; n = 5.
            let w_ih_len = layout.shapes[0].0 * 5;
            let mut theta2 = p.theta.clone();
            let start = layout.weight_range(0).start;
            theta2[start..start + w_ih_len].iter_mut().for_each(|v| *v *= 0.5);
            let x2 = &p.x * 2.0;
            let (out1, _) = rec.predict(&p.theta, p.x.view(), Some(&p.state)).unwrap();
            let (out2, _) = rec.predict(&theta2, x2.view(), Some(&p.state)).unwrap();
            assert!(out1.iter().zip(&out2).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: gather ≠ product");
            // Without weight decay (which would see W_ih / 2): ∇ through 2x is 2 ∇W_ih.
            let rec0 = Recurrent::new(net(steps, 5, text, k, 0.0)).unwrap();
            let (mut g1, mut g2) = (vec![0.0; p.theta.len()], vec![0.0; p.theta.len()]);
            rec0.cost_and_grad(&p.theta, p.x.view(), y, Some(&p.state), Some(&mut g1)).unwrap();
            rec0.cost_and_grad(&theta2, x2.view(), y, Some(&p.state), Some(&mut g2)).unwrap();
            let w = start..start + w_ih_len;
            let halved: Vec<f64> = g2[w.clone()].iter().map(|g| g * 0.5).collect();
            let d = relative_difference(&g1[w.clone()], &halved);
            assert!(d < 1e-13, "{name}: scattered ∇W_ih vs the product's: {d:e}");
            assert!(g1[w].iter().any(|&g| g != 0.0), "{name}: ∇W_ih is zero");
        }
        // f32 against f64, and the same bits on 1, 2 and 3 threads (300 sequences: 2 chunks).
        let spec = net(5, 5, text, k, 1e-2);
        let p = one_hot_problem(&spec, 300, 5);
        common::f32_matches_f64_with_the_same_bits_on_any_threads(
            &format!("one-hot {text}"),
            &spec,
            &p.theta,
            &|b: &mut dyn Backend| p.load(&spec, b),
            1e-4,
        );
    }
}

/// The LSTM of MATH.md in plain f64 loops, θ's gate order (i, f, g, o rows of W_ih, W_hh, b),
/// time-major x ((T·m) × n) from (h_0, c_0): h_1 … h_T time-major. The reference for the
/// blocked recurrence below, which regroups the gate rows per block of 32 units.
fn naive_lstm(
    w_ih: &Array2<f64>,
    w_hh: &Array2<f64>,
    b: &[f64],
    x: &Array2<f64>,
    h0: &Array2<f64>,
    c0: &Array2<f64>,
) -> Array2<f64> {
    let (m, h) = h0.dim();
    let steps = x.nrows() / m;
    let sigmoid = |v: f64| 1.0 / (1.0 + (-v).exp());
    let (mut hs, mut cs) = (h0.clone(), c0.clone());
    let mut out = Array2::zeros((steps * m, h));
    for t in 0..steps {
        let (prev_h, prev_c) = (hs.clone(), cs.clone());
        for i in 0..m {
            let z = |q: usize, u: usize| {
                let r = q * h + u;
                b[r] + (0..x.ncols()).map(|k| w_ih[[r, k]] * x[[t * m + i, k]]).sum::<f64>()
                    + (0..h).map(|k| w_hh[[r, k]] * prev_h[[i, k]]).sum::<f64>()
            };
            for u in 0..h {
                let (ig, fg, gg, og) = (sigmoid(z(0, u)), sigmoid(z(1, u)), z(2, u).tanh(), sigmoid(z(3, u)));
                cs[[i, u]] = fg * prev_c[[i, u]] + ig * gg;
                hs[[i, u]] = og * cs[[i, u]].tanh();
                out[[t * m + i, u]] = hs[[i, u]];
            }
        }
    }
    out
}

/// The lock-step recurrence (issue 16 §6: hidden units in fixed blocks of 32, a team of threads
/// meeting once per step) on awkward sizes — hidden 1 and 7 (one block), 65 (32 + 32 + 1) and
/// 129, batch 1 and 5:
/// - the LSTM layer's outputs equal the plain-loop LSTM in θ's gate order (< 1e-12), so the
///   regrouped gate rows land back where PyTorch's layout has them;
/// - the f64 gradient of an rnn and an lstm network agrees with central differences along ∇J
///   itself restricted to W_hh and to the biases (< 1e-7 relative: ∇J·v against a difference
///   quotient with ε = 1e-5, whose error is O(ε²) ≈ 1e-10 here);
/// - the f32 cost and gradient are close to f64's and have the same bits on 1, 2 and 3 threads.
#[test]
fn lockstep_recurrence_on_awkward_sizes_matches_plain_loops_and_keeps_its_bits() {
    use wgnn::layers::lstm::Lstm;
    let (steps, n) = (3, 4);
    for h in [1, 7, 65, 129] {
        for m in [1, 5] {
            let mut rng = StdRng::seed_from_u64((h * 10 + m) as u64);
            let scale = 1.0 / (h as f64).sqrt();
            let mut uniform =
                |r: usize, c: usize| Array2::from_shape_simple_fn((r, c), || rng.random_range(-1.0..1.0) * scale);
            let (w_ih, w_hh, b) = (uniform(4 * h, n), uniform(4 * h, h), uniform(1, 4 * h).row(0).to_vec());
            let (x, h0, c0) = (uniform(steps * m, n), uniform(m, h), uniform(m, h));
            let fwd = Lstm::new(n, h, steps)
                .unwrap()
                .forward(
                    w_ih.view(),
                    w_hh.view(),
                    ndarray::ArrayView1::from(&b),
                    x.view(),
                    Some((h0.view(), c0.view())),
                )
                .unwrap();
            let want = naive_lstm(&w_ih, &w_hh, &b, &x, &h0, &c0);
            let gap = (&fwd.outputs() - &want).mapv(f64::abs).fold(0.0f64, |a, &v| a.max(v));
            assert!(gap < 1e-12, "lstm {h}, batch {m}: outputs differ from the plain loops by {gap:e}");

            for text in [format!("lstm {h}, per-step softmax"), format!("rnn {h} tanh, softmax")] {
                let name = format!("{text}, batch {m}");
                let spec = net(steps, n, &text, 3, 1e-2);
                let mut p = Problem::new(&spec, m, 7);
                p.theta.iter_mut().for_each(|v| *v *= 2.0 * scale);
                let rec = Recurrent::new(spec.clone()).unwrap();
                let y = p.targets(&spec);
                let mut g = vec![0.0; p.theta.len()];
                rec.cost_and_grad(&p.theta, p.x.view(), y, Some(&p.state), Some(&mut g)).unwrap();
                let layout = ThetaLayout::new(&spec);
                let w = layout.weight_range(0);
                let rows = layout.shapes[0].0;
                let w_hh = w.start + rows * n..w.end;
                for (part, range) in [("W_hh", w_hh), ("biases", layout.all_weights().end..p.theta.len())] {
                    let v: Vec<f64> = (0..g.len()).map(|i| if range.contains(&i) { g[i] } else { 0.0 }).collect();
                    let dot: f64 = v.iter().map(|a| a * a).sum();
                    assert!(dot > 1e-12, "{name}: ∇J on the {part} is (nearly) zero");
                    let eps = 1e-5 / dot.sqrt();
                    let at = |s: f64| {
                        let t: Vec<f64> = p.theta.iter().zip(&v).map(|(t, d)| t + s * d).collect();
                        rec.cost_and_grad(&t, p.x.view(), y, Some(&p.state), None).unwrap().0.total()
                    };
                    let quotient = (at(eps) - at(-eps)) / (2.0 * eps);
                    let d = (quotient - dot).abs() / dot;
                    assert!(d < 1e-7, "{name}: ∇J·v on the {part} {dot:e}, difference quotient {quotient:e} ({d:e})");
                }
                common::f32_matches_f64_with_the_same_bits_on_any_threads(
                    &name,
                    &spec,
                    &p.theta,
                    &|b: &mut dyn Backend| p.load(&spec, b),
                    1e-4,
                );
            }
        }
    }
}
