//! The network specification: layer sizes, activations, output and loss, weight decay and
//! sparsity. It describes a network; it holds no parameters and computes nothing.
//! Serialised as JSON (checkpoints, fixtures, `--config`), so field names are part of the
//! file format.

use serde::{Deserialize, Serialize};

use super::activation::{Activation, Output, SpecError};
use super::stack::{Layer, LayerStack};

/// KL sparsity on the first hidden layer (MATH.md, "Sparsity"): target mean activation ρ and
/// weight β.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sparsity {
    /// The target mean activation ρ of each hidden unit.
    pub target: f64,
    /// β, the weight of the KL penalty.
    pub weight: f64,
}

/// The most parameters (length of θ) a network may have: 2^31, ~8.6 GB of f32 and twice that
/// in f64 for θ alone, beyond any network this crate trains (and beyond the GPU's 32-bit
/// indexing).
pub const MAX_PARAMETERS: usize = 1 << 31;

/// A feedforward network: `layers[0]` inputs, `layers[L-1]` outputs, one activation per hidden
/// layer. Weight decay λ applies to weights only, never biases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetSpec {
    /// Layer sizes, input first, output last (a dense network).
    pub layers: Vec<usize>,
    /// f of each hidden layer.
    pub hidden_activations: Vec<Activation>,
    /// The output layer and its loss.
    pub output: Output,
    /// λ of (λ/2) Σ W².
    #[serde(default)]
    pub weight_decay: f64,
    /// The sparse-autoencoder penalty on the first hidden layer, if any.
    #[serde(default)]
    pub sparsity: Option<Sparsity>,
    /// A stack of layers beyond dense (conv2d, pooling, maxout; [`LayerStack`]): then
    /// `layers` holds the input size, the output width of each layer with parameters and the
    /// outputs, and `hidden_activations` one activation per hidden layer with parameters
    /// (identity for maxout), both derived by [`NetSpec::stack`]. `None` for a dense network,
    /// whose JSON then reads exactly as before this field existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<LayerStack>,
}

impl NetSpec {
    /// A network with the same activation on every hidden layer. Validated.
    pub fn new(layers: &[usize], hidden: Activation, output: Output) -> Result<NetSpec, SpecError> {
        let spec = NetSpec {
            layers: layers.to_vec(),
            hidden_activations: vec![hidden; layers.len().saturating_sub(2)],
            output,
            weight_decay: 0.0,
            sparsity: None,
            net: None,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// A network of the hidden layers of `stack` and a dense output layer of `outputs` units
    /// (softmax or squared error). Validated: a layer that does not fit its input is refused
    /// in one line naming it and the shapes. A stack of dense layers only gives today's dense
    /// spec (no `net` field: same JSON, θ layout and backends as [`NetSpec::new`]).
    pub fn stack(stack: LayerStack, outputs: usize, output: Output) -> Result<NetSpec, SpecError> {
        let (layers, hidden_activations) = derived_widths(&stack, outputs)?;
        let net = (!stack.is_dense()).then_some(stack);
        let spec = NetSpec { layers, hidden_activations, output, weight_decay: 0.0, sparsity: None, net };
        spec.validate()?;
        Ok(spec)
    }

    /// Steps at which the output layer is applied: T for a recurrent network with an output at
    /// every step ([`LayerStack::output_steps`]; its outputs, labels and targets are T per
    /// example, step-major within the example's row), else 1.
    pub fn output_steps(&self) -> usize {
        self.net.as_ref().map_or(1, LayerStack::output_steps)
    }

    /// What one example is, for messages about data of the wrong width: `12 values`, or for a
    /// recurrent network `sequences of 4 steps of 3 values (T × n = 12 per example)`, or for a
    /// network of images `1×28×28 images (784 values)`.
    pub fn input_text(&self) -> String {
        let n = self.inputs();
        match &self.net {
            Some(stack) if stack.layers.first().is_some_and(|l| l.is_recurrent()) => format!(
                "sequences of {} steps of {} values (T × n = {n} per example)",
                stack.input.height, stack.input.width
            ),
            Some(stack) if stack.input.height > 1 => {
                let i = stack.input;
                format!("{}×{}×{} images ({n} values)", i.channels, i.height, i.width)
            }
            _ => format!("{n} values"),
        }
    }

    /// True when the network has layers beyond dense (conv2d, pooling, maxout).
    pub fn has_layer_stack(&self) -> bool {
        self.net.is_some()
    }

    /// The UFLDL sparse autoencoder n → hidden → n, sigmoid throughout, squared error.
    pub fn sparse_autoencoder(
        visible: usize,
        hidden: usize,
        weight_decay: f64,
        sparsity: Sparsity,
    ) -> Result<NetSpec, SpecError> {
        NetSpec::new(&[visible, hidden, visible], Activation::Sigmoid, Output::SquaredError(Activation::Sigmoid))?
            .with_weight_decay(weight_decay)?
            .with_sparsity(Some(sparsity))
    }

    /// Softmax regression: a single softmax layer on the raw inputs.
    pub fn softmax_regression(inputs: usize, classes: usize, weight_decay: f64) -> Result<NetSpec, SpecError> {
        NetSpec::new(&[inputs, classes], Activation::Identity, Output::Softmax)?.with_weight_decay(weight_decay)
    }

    /// This spec with λ = `lambda`. Errors: λ negative or not finite (or the rest of the spec
    /// invalid: the same checks as [`NetSpec::validate`]).
    pub fn with_weight_decay(mut self, lambda: f64) -> Result<NetSpec, SpecError> {
        self.weight_decay = lambda;
        self.validate()?;
        Ok(self)
    }

    /// This spec with the sparsity penalty `sparsity`. Errors ([`NetSpec::validate`]): the
    /// network has no hidden layer or is a layer stack, ρ out of range, or β negative or not
    /// finite.
    pub fn with_sparsity(mut self, sparsity: Option<Sparsity>) -> Result<NetSpec, SpecError> {
        self.sparsity = sparsity;
        self.validate()?;
        Ok(self)
    }

    /// Number of weight layers (L − 1 in MATH.md's notation).
    pub fn num_weight_layers(&self) -> usize {
        self.layers.len() - 1
    }

    /// Values per example.
    pub fn inputs(&self) -> usize {
        self.layers[0]
    }

    /// Output units (classes for softmax).
    pub fn outputs(&self) -> usize {
        *self.layers.last().expect("validated spec has layers")
    }

    /// Number of classes for a softmax output.
    pub fn classes(&self) -> Option<usize> {
        matches!(self.output, Output::Softmax).then(|| self.outputs())
    }

    /// The activation applied after weight layer `l` (0-based), hidden or output.
    /// For a softmax output this returns `None` for the last layer.
    pub fn activation_after(&self, l: usize) -> Option<Activation> {
        if l + 1 < self.num_weight_layers() {
            Some(self.hidden_activations[l])
        } else {
            match self.output {
                Output::SquaredError(a) => Some(a),
                Output::Softmax | Output::SigmoidBce => None,
            }
        }
    }

    /// The length of θ, Σ_l (s_{l+1}·s_l + s_{l+1}), in checked arithmetic: an error when it
    /// exceeds [`MAX_PARAMETERS`] (or overflows `usize` on the way), so that sizes from a flag,
    /// a config file or a checkpoint are refused before anything is allocated.
    pub fn parameter_count(&self) -> Result<usize, SpecError> {
        let too_many = || {
            SpecError::new(format!(
                "layer sizes {:?} need more than {MAX_PARAMETERS} (2^31) parameters: use smaller layers",
                self.layers
            ))
        };
        let mut total: usize = 0;
        let shapes: Vec<(usize, usize)> = match &self.net {
            Some(stack) => stack.weight_shapes(self.outputs())?,
            None => self.layers.windows(2).map(|w| (w[1], w[0])).collect(),
        };
        for (outputs, inputs) in shapes {
            let layer = outputs.checked_mul(inputs).and_then(|w| w.checked_add(outputs)).ok_or_else(too_many)?;
            total = total.checked_add(layer).filter(|&t| t <= MAX_PARAMETERS).ok_or_else(too_many)?;
        }
        Ok(total)
    }

    /// Checks every rule a spec must obey; each error says what to change.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.layers.len() < 2 {
            return Err(SpecError::new(format!(
                "need at least an input and an output layer, got layers {:?}",
                self.layers
            )));
        }
        if let Some(i) = self.layers.iter().position(|&s| s == 0) {
            return Err(SpecError::new(format!("layer {i} has size 0 in {:?}", self.layers)));
        }
        if let Some(stack) = &self.net {
            let (layers, acts) = derived_widths(stack, self.outputs())?;
            if layers != self.layers || acts != self.hidden_activations {
                return Err(SpecError::new(format!(
                    "the layer sizes {:?} do not match the layer stack {} on {} inputs (they give {:?}): \
                     build the spec with NetSpec::stack",
                    self.layers,
                    stack.describe(),
                    stack.input.describe(),
                    layers
                )));
            }
            if self.sparsity.is_some() {
                return Err(SpecError::new("KL sparsity is for dense autoencoders, not for layer stacks"));
            }
        }
        self.parameter_count()?;
        if self.hidden_activations.len() != self.layers.len() - 2 {
            return Err(SpecError::new(format!(
                "{} hidden layers but {} hidden activations",
                self.layers.len() - 2,
                self.hidden_activations.len()
            )));
        }
        for a in &self.hidden_activations {
            a.validate()?;
        }
        match self.output {
            Output::SquaredError(a) => a.validate()?,
            Output::Softmax if self.outputs() < 2 => {
                return Err(SpecError::new("a softmax output needs at least 2 classes"));
            }
            Output::Softmax | Output::SigmoidBce => {}
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(SpecError::new(format!("weight decay λ = {} must be a finite number ≥ 0", self.weight_decay)));
        }
        if let Some(s) = self.sparsity {
            if self.layers.len() < 3 {
                return Err(SpecError::new("sparsity acts on the first hidden layer, and this network has none"));
            }
            if !(s.target > 0.0 && s.target < 1.0) {
                return Err(SpecError::new(format!(
                    "sparsity target ρ = {} must lie strictly between 0 and 1",
                    s.target
                )));
            }
            if !(s.weight.is_finite() && s.weight >= 0.0) {
                return Err(SpecError::new(format!("sparsity weight β = {} must be a finite number ≥ 0", s.weight)));
            }
            let act = self.hidden_activations[0];
            if act.range() != (0.0, 1.0) {
                return Err(SpecError::new(format!(
                    "KL sparsity needs hidden activations in (0,1), but the first hidden layer is {}: use --activation sigmoid or drop --sparsity",
                    act.name()
                )));
            }
        }
        Ok(())
    }

    /// A one-line description, e.g. `64-25-64 sigmoid→sigmoid (squared error), λ=0.0001, ρ=0.01 β=3`.
    pub fn describe(&self) -> String {
        if let Some(stack) = &self.net {
            let loss = match self.output {
                Output::Softmax => format!("softmax {} (cross-entropy)", self.outputs()),
                Output::SquaredError(a) => format!("{} {} (squared error)", a.name(), self.outputs()),
                Output::SigmoidBce => format!("sigmoid {} (binary cross-entropy)", self.outputs()),
            };
            return format!("{} → {}, {loss}, λ={}", stack.input.describe(), stack.describe(), self.weight_decay);
        }
        let sizes: Vec<String> = self.layers.iter().map(|s| s.to_string()).collect();
        let mut acts: Vec<String> = self.hidden_activations.iter().map(|a| a.name()).collect();
        acts.push(self.output.name());
        let loss = self.output.loss_name();
        let mut s = format!("{} {} ({loss}), λ={}", sizes.join("-"), acts.join("→"), self.weight_decay);
        if let Some(sp) = self.sparsity {
            s.push_str(&format!(", ρ={} β={}", sp.target, sp.weight));
        }
        s
    }
}

/// `layers` and `hidden_activations` for a stack: the input size, the output width of each
/// layer with parameters, the outputs; one activation per hidden layer with parameters.
fn derived_widths(stack: &LayerStack, outputs: usize) -> Result<(Vec<usize>, Vec<Activation>), SpecError> {
    let shapes = stack.shapes()?;
    let mut layers = vec![stack.input.len()];
    let mut acts = Vec::new();
    for (layer, shape) in stack.layers.iter().zip(&shapes) {
        match *layer {
            Layer::Dense { activation, .. } | Layer::Conv2d { activation, .. } => {
                layers.push(shape.len());
                acts.push(activation);
            }
            Layer::Maxout { .. } => {
                layers.push(shape.len());
                acts.push(Activation::Identity);
            }
            Layer::MaxPool { .. } | Layer::MeanPool { .. } => {}
            Layer::Rnn { activation, .. } => {
                layers.push(shape.len());
                acts.push(activation);
            }
            Layer::Lstm { .. } => {
                layers.push(shape.len());
                acts.push(Activation::Tanh);
            }
        }
    }
    layers.push(outputs);
    Ok((layers, acts))
}
