//! The vocabulary both the dense spec (`spec.rs`) and the layer stack (`stack.rs`) are written
//! in: elementwise activations, the output layer with its loss, and the error of a spec that
//! cannot describe a network. It sits below both, so neither depends on the other through it.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// An elementwise activation f and, through [`crate::cpu::net::derivative_from_value`], its
/// derivative written with the stored value a = f(z) (MATH.md, "Activations").
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// σ(z) = 1 / (1 + e^(−z)).
    Sigmoid,
    /// tanh z.
    Tanh,
    /// max(z, 0).
    Relu,
    /// z, or α z below 0.
    LeakyRelu {
        /// The slope α below 0.
        alpha: f64,
    },
    /// z.
    Identity,
}

impl Activation {
    /// Leaky ReLU with the default slope α = 0.01.
    pub const LEAKY_RELU: Activation = Activation::LeakyRelu { alpha: 0.01 };

    /// Parses the names the CLI accepts: `sigmoid`, `tanh`, `relu`, `leaky-relu`
    /// (α = 0.01), `leaky-relu:ALPHA`, `identity` (also `linear`).
    pub fn parse(name: &str) -> Result<Activation, SpecError> {
        let lower = name.trim().to_ascii_lowercase();
        let (base, arg) = match lower.split_once(':') {
            Some((b, a)) => (b.to_string(), Some(a.to_string())),
            None => (lower.clone(), None),
        };
        let act = match (base.replace('_', "-").as_str(), arg) {
            ("sigmoid", None) => Activation::Sigmoid,
            ("tanh", None) => Activation::Tanh,
            ("relu", None) => Activation::Relu,
            ("identity" | "linear", None) => Activation::Identity,
            ("leaky-relu" | "leakyrelu", None) => Activation::LEAKY_RELU,
            ("leaky-relu" | "leakyrelu", Some(a)) => {
                let alpha =
                    a.parse::<f64>().map_err(|_| SpecError::new(format!("leaky ReLU slope `{a}` is not a number")))?;
                Activation::LeakyRelu { alpha }
            }
            _ => {
                return Err(SpecError::new(format!(
                    "unknown activation `{name}`: use sigmoid, tanh, relu, leaky-relu[:ALPHA] or identity"
                )));
            }
        };
        act.validate()?;
        Ok(act)
    }

    /// The open range of values f can take, used to check where sparsity makes sense.
    pub fn range(&self) -> (f64, f64) {
        match self {
            Activation::Sigmoid => (0.0, 1.0),
            Activation::Tanh => (-1.0, 1.0),
            Activation::Relu => (0.0, f64::INFINITY),
            Activation::LeakyRelu { .. } | Activation::Identity => (f64::NEG_INFINITY, f64::INFINITY),
        }
    }

    /// The name the CLI and spec JSON use.
    pub fn name(&self) -> String {
        match self {
            Activation::Sigmoid => "sigmoid".into(),
            Activation::Tanh => "tanh".into(),
            Activation::Relu => "relu".into(),
            Activation::LeakyRelu { alpha } => format!("leaky-relu:{alpha}"),
            Activation::Identity => "identity".into(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), SpecError> {
        if let Activation::LeakyRelu { alpha } = *self {
            // α ≥ 0 keeps sign(f(z)) = sign(z), which lets f′ be read off the stored value.
            if !(alpha.is_finite() && (0.0..1.0).contains(&alpha)) {
                return Err(SpecError::new(format!("leaky ReLU slope α = {alpha} must be in [0, 1)")));
            }
        }
        Ok(())
    }
}

/// The output layer and the loss that goes with it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// An elementwise activation with the squared-error loss ½‖h(x) − y‖².
    SquaredError(Activation),
    /// Softmax with the cross-entropy loss; targets are class labels 0..k.
    Softmax,
    /// k independent sigmoid outputs a = σ(z) with the binary cross-entropy
    /// J = −(1/m) Σᵢ Σⱼ [y log a + (1 − y) log(1 − a)] (PyTorch's `BCEWithLogitsLoss`; the
    /// logistic output scikit-learn's `MLPClassifier` uses for multi-label targets). Targets
    /// are an m × k matrix of 0s and 1s (k = 1: binary classification). δ = a − y; the cost is
    /// computed from z as max(z, 0) − z·y + log(1 + e^{−|z|}) (MATH.md, "Numerically safe
    /// forms"), never from a rounded a. JSON name `sigmoid_bce`.
    SigmoidBce,
}

impl Output {
    /// Parses `softmax`, `sigmoid-bce` (also `sigmoid_bce`, `bce`: [`Output::SigmoidBce`]) or
    /// any activation name (squared-error loss).
    pub fn parse(name: &str) -> Result<Output, SpecError> {
        let lower = name.trim().to_ascii_lowercase().replace('_', "-");
        if lower == "softmax" {
            Ok(Output::Softmax)
        } else if matches!(lower.as_str(), "sigmoid-bce" | "bce") {
            Ok(Output::SigmoidBce)
        } else {
            Activation::parse(name).map(Output::SquaredError)
        }
    }

    /// The name [`Output::parse`] reads back: an activation's name, `softmax` or `sigmoid-bce`.
    pub fn name(&self) -> String {
        match self {
            Output::SquaredError(a) => a.name(),
            Output::Softmax => "softmax".into(),
            Output::SigmoidBce => "sigmoid-bce".into(),
        }
    }

    /// The loss, for people: `squared error`, `cross-entropy` or `binary cross-entropy`.
    pub fn loss_name(&self) -> &'static str {
        match self {
            Output::SquaredError(_) => "squared error",
            Output::Softmax => "cross-entropy",
            Output::SigmoidBce => "binary cross-entropy",
        }
    }
}

/// A spec that cannot describe a network: the one-line reason.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("invalid network: {0}")]
pub struct SpecError(pub String);

impl SpecError {
    /// The error with the reason `msg`.
    pub(super) fn new(msg: impl Into<String>) -> SpecError {
        SpecError(msg.into())
    }
}
