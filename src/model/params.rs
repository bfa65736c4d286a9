//! θ: all parameters of a network in one flat vector, and where each W and b lives in it.
//!
//! Layout (UFLDL's order, relied on by checkpoints, `.npy` files and the GPU backend):
//! every weight matrix first, in layer order, each row-major with shape (out × in); then
//! every bias vector, in layer order. For 64-25-64 that is W⁽¹⁾ (25×64), W⁽²⁾ (64×25),
//! b⁽¹⁾ (25), b⁽²⁾ (64): 3,289 numbers. A layer stack ([`super::LayerStack`]) follows the
//! same rule over its layers with parameters: a conv2d W is filters × (channels·k·k)
//! (PyTorch's `Conv2d.weight` flattened), a maxout W is (units·pieces) × in; pooling holds
//! none.

use std::ops::Range;

use ndarray::{ArrayView1, ArrayView2, ArrayViewMut1, ArrayViewMut2};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, Normal};

use super::NetSpec;

/// Offsets of each weight matrix and bias vector inside θ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThetaLayout {
    /// (out, in) of each weight layer.
    pub shapes: Vec<(usize, usize)>,
    weights: Vec<Range<usize>>,
    biases: Vec<Range<usize>>,
    len: usize,
}

impl ThetaLayout {
    /// The layout of θ for `spec`: every weight matrix in layer order, then every bias.
    pub fn new(spec: &NetSpec) -> ThetaLayout {
        let dense = || spec.layers.windows(2).map(|w| (w[1], w[0])).collect();
        // A layer stack's W shapes (conv: filters × c·k·k; maxout: units·k × in); a stack that
        // does not fit its input is refused by validation before any layout is made.
        let shapes: Vec<(usize, usize)> = match &spec.net {
            Some(stack) => stack.weight_shapes(spec.outputs()).unwrap_or_else(|_| dense()),
            None => dense(),
        };
        let mut offset = 0;
        let weights = shapes
            .iter()
            .map(|&(o, i)| {
                offset += o * i;
                offset - o * i..offset
            })
            .collect();
        let biases = shapes
            .iter()
            .map(|&(o, _)| {
                offset += o;
                offset - o..offset
            })
            .collect();
        ThetaLayout { shapes, weights, biases, len: offset }
    }

    /// Total number of parameters.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether θ has no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layers with parameters (W, b).
    pub fn num_layers(&self) -> usize {
        self.shapes.len()
    }

    /// Where W of weight layer `l` (0-based) lies in θ.
    pub fn weight_range(&self, l: usize) -> Range<usize> {
        self.weights[l].clone()
    }

    /// Where b of weight layer `l` lies in θ.
    pub fn bias_range(&self, l: usize) -> Range<usize> {
        self.biases[l].clone()
    }

    /// All weights (the part weight decay acts on) — a prefix of θ.
    pub fn all_weights(&self) -> Range<usize> {
        0..self.biases.first().map_or(self.len, |b| b.start)
    }

    /// W of layer `l` as an (out × in) view into θ.
    pub fn weight<'a, T>(&self, theta: &'a [T], l: usize) -> ArrayView2<'a, T> {
        ArrayView2::from_shape(self.shapes[l], &theta[self.weight_range(l)]).expect("layout matches θ")
    }

    /// Layer `l`'s W (out × in), mutable.
    pub fn weight_mut<'a, T>(&self, theta: &'a mut [T], l: usize) -> ArrayViewMut2<'a, T> {
        ArrayViewMut2::from_shape(self.shapes[l], &mut theta[self.weight_range(l)]).expect("layout matches θ")
    }

    /// Layer `l`'s b (out).
    pub fn bias<'a, T>(&self, theta: &'a [T], l: usize) -> ArrayView1<'a, T> {
        ArrayView1::from(&theta[self.bias_range(l)])
    }

    /// Layer `l`'s b (out), mutable.
    pub fn bias_mut<'a, T>(&self, theta: &'a mut [T], l: usize) -> ArrayViewMut1<'a, T> {
        ArrayViewMut1::from(&mut theta[self.bias_range(l)])
    }
}

/// How to draw the initial weights (MATH.md, "Initialisation"). Biases start at 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// N(0, ε²) with the given ε (UFLDL: 0.01).
    Normal {
        /// The standard deviation ε.
        epsilon: f64,
    },
    /// Uniform in [−r, r] with r = √(6/(n_in + n_out + 1)), per layer.
    Uniform,
}

impl Init {
    /// UFLDL's N(0, 0.01²).
    pub const DEFAULT_NORMAL: Init = Init::Normal { epsilon: 0.01 };

    /// A fresh θ for `spec`, the same for the same seed on every machine.
    pub fn theta(&self, spec: &NetSpec, seed: u64) -> Vec<f64> {
        let layout = ThetaLayout::new(spec);
        let mut theta = vec![0.0; layout.len()];
        let mut rng = StdRng::seed_from_u64(seed);
        for (l, &(out, inp)) in layout.shapes.iter().enumerate() {
            let w = &mut theta[layout.weight_range(l)];
            match *self {
                Init::Normal { epsilon } => {
                    let normal = Normal::new(0.0, epsilon).expect("ε is finite and ≥ 0");
                    w.iter_mut().for_each(|v| *v = normal.sample(&mut rng));
                }
                Init::Uniform => {
                    let r = (6.0 / (inp + out + 1) as f64).sqrt();
                    w.iter_mut().for_each(|v| *v = rng.random_range(-r..=r));
                }
            }
        }
        theta
    }
}
