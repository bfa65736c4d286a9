//! Sequence networks and problems shared by the CPU (`tests/rnn.rs`) and GPU
//! (`tests/gpu_rnn.rs`) recurrent suites, so both check the same cases.

use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::cpu::net::TargetView;
use wgnn::cpu::sequence::{Recurrent, State};
use wgnn::model::{InputShape, LayerStack, NetSpec, Output, ThetaLayout, parse_net};
use wgnn::{Backend, Targets};

/// `--net text` on sequences of `steps` steps of `n` features, `outputs` outputs, λ = `lambda`.
pub fn net(steps: usize, n: usize, text: &str, outputs: usize, lambda: f64) -> NetSpec {
    let parsed = parse_net(text).expect("the test's --net parses");
    NetSpec::stack(LayerStack { input: InputShape::sequence(steps, n), layers: parsed.layers }, outputs, parsed.output)
        .and_then(|s| s.with_weight_decay(lambda))
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// Sequences in [−1, 1), targets for the spec's output (S per sequence: labels, values in
/// [0.1, 0.9) and those values thresholded at 0.5 as 0/1 bits), a θ with every entry uniform in
/// ±0.5, and a random initial state (uniform ±0.5).
pub struct Problem {
    pub x: Array2<f64>,
    pub labels: Vec<usize>,
    pub values: Array2<f64>,
    pub bits: Array2<f64>,
    pub theta: Vec<f64>,
    pub state: State<f64>,
}

impl Problem {
    pub fn new(spec: &NetSpec, m: usize, seed: u64) -> Problem {
        let mut rng = StdRng::seed_from_u64(seed);
        let steps = spec.output_steps();
        let k = spec.outputs();
        let x = Array2::from_shape_simple_fn((m, spec.inputs()), || rng.random_range(-1.0..1.0));
        let labels = (0..m * steps).map(|_| rng.random_range(0..k)).collect();
        let values = Array2::from_shape_simple_fn((m, k * steps), || rng.random_range(0.1..0.9));
        let theta = (0..ThetaLayout::new(spec).len()).map(|_| rng.random_range(-0.5..0.5)).collect();
        let mut state = Recurrent::new(spec.clone()).unwrap().zero_state::<f64>(m);
        for l in &mut state.layers {
            l.h.mapv_inplace(|_| rng.random_range(-0.5..0.5));
            if let Some(c) = &mut l.c {
                c.mapv_inplace(|_| rng.random_range(-0.5..0.5));
            }
        }
        let bits = values.mapv(|v: f64| if v > 0.5 { 1.0 } else { 0.0 });
        Problem { x, labels, values, bits, theta, state }
    }

    /// The targets as `cpu::sequence` takes them.
    pub fn targets(&self, spec: &NetSpec) -> TargetView<'_, f64> {
        match spec.output {
            Output::Softmax => TargetView::Labels(&self.labels),
            Output::SquaredError(_) => TargetView::Values(self.values.view()),
            Output::SigmoidBce => TargetView::Values(self.bits.view()),
        }
    }

    /// The targets as a [`Backend`] takes them.
    pub fn backend_targets(&self, spec: &NetSpec) -> Targets<'_> {
        match spec.output {
            Output::Softmax => Targets::Labels(&self.labels),
            Output::SquaredError(_) => Targets::Values((&self.values).into()),
            Output::SigmoidBce => Targets::Values((&self.bits).into()),
        }
    }

    /// Hands the sequences and their targets to `backend`.
    pub fn load(&self, spec: &NetSpec, backend: &mut dyn Backend) {
        backend.set_data((&self.x).into(), self.backend_targets(spec)).expect("the problem fits its network");
    }
}
