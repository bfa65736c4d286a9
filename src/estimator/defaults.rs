//! The one table of per-kind defaults (iterations or epochs, optimizer, batch, η, λ, hidden
//! layers, activations, sparsity, network) and the steps that turn settings into a network
//! ([`Kind::dense_spec`]), an optimizer ([`OptimizerSettings::method`],
//! [`OptimizerSettings::stop`]) and λ from scikit-learn's α ([`weight_decay_of_alpha`]).
//! `wgnn train`, `--help` (a test keeps the help text and this table in step) and the
//! estimators ([`crate::estimator`]) all read them here. It does no I/O.

use serde::{Deserialize, Serialize};

use crate::model::{Activation, NetSpec, Output, Sparsity};
use crate::optim::{Lbfgs, Method, Minibatch, Schedule, Stop, UpdateRule};
use crate::stacked::StackedConfig;
use crate::{Error, Result};

/// What is trained: the kinds of `wgnn train KIND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A sparse autoencoder n-h-n (sigmoid, KL sparsity).
    Autoencoder,
    /// Softmax regression: one softmax layer on the raw inputs.
    Softmax,
    /// A multilayer perceptron: a classifier (softmax output) or a regressor (squared error).
    Mlp,
    /// UFLDL's stacked autoencoder ([`crate::stacked`]).
    Stacked,
    /// A layer stack (convolution, pooling, maxout, dense) ending in a softmax.
    Cnn,
    /// An LSTM sequence model.
    Lstm,
    /// An Elman RNN sequence model.
    Rnn,
}

/// The optimizers `wgnn train --optimizer` names (MATH.md, "Optimizers", cites each one's
/// textbook algorithm).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Solver {
    /// L-BFGS with a strong-Wolfe line search (full batch; Nocedal & Wright, Algorithm 7.5).
    Lbfgs,
    /// Nonlinear conjugate gradient, Polak–Ribière+ (full batch).
    Cg,
    /// Gradient descent with a fixed learning rate (full batch).
    Gd,
    /// Minibatch SGD with Nesterov momentum 0.9 by default.
    Sgd,
    /// Minibatch Adam (Kingma & Ba 2015; β₁ 0.9, β₂ 0.999, ε 1e-8).
    Adam,
}

impl Solver {
    /// The default learning rate η of a first-order solver: 0.1 (gd), 0.01 (sgd), 0.001
    /// (adam, scikit-learn's `learning_rate_init`); `None` for lbfgs and cg (line searches).
    pub const fn learning_rate(self) -> Option<f64> {
        match self {
            Solver::Gd => Some(0.1),
            Solver::Sgd => Some(0.01),
            Solver::Adam => Some(0.001),
            Solver::Lbfgs | Solver::Cg => None,
        }
    }

    /// True for the minibatch solvers (sgd, adam): their iterations are epochs.
    pub const fn is_minibatch(self) -> bool {
        matches!(self, Solver::Sgd | Solver::Adam)
    }
}

/// One row of the table: what a kind uses when a setting is not given.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KindDefaults {
    /// Iterations (epochs for sgd and adam).
    pub iterations: usize,
    /// The optimizer.
    pub solver: Solver,
    /// Minibatch size for sgd and adam (never more than the training examples).
    pub batch_size: usize,
    /// L2 weight decay λ (the cost gets + (λ/2)·‖W‖², MATH.md "Cost").
    pub weight_decay: f64,
    /// Hidden layer sizes of a dense kind (for lstm/rnn: the recurrent layer's units).
    pub hidden: &'static [usize],
    /// Hidden activation of a dense kind.
    pub activation: Activation,
    /// The output of a squared-error network of this kind: sigmoid (an autoencoder),
    /// identity (an mlp regressor).
    pub squared_error_output: Output,
    /// The sparsity target ρ (KL penalty, MATH.md "Sparsity"); `None`: no penalty.
    pub sparsity: Option<f64>,
    /// The sparsity penalty's weight β.
    pub sparsity_weight: f64,
    /// The network of a layer-stack kind, as `--net` writes it.
    pub net: Option<&'static str>,
}

/// `train cnn`'s default network: LeNet-5 as Caffe's MNIST example builds it.
pub const LENET: &str = "conv 20x5x5 relu, maxpool 2, conv 50x5x5 relu, maxpool 2, dense 500 relu, softmax";

impl Kind {
    /// Every kind, in `wgnn train --help`'s order.
    pub const ALL: [Kind; 7] =
        [Kind::Autoencoder, Kind::Softmax, Kind::Mlp, Kind::Stacked, Kind::Cnn, Kind::Lstm, Kind::Rnn];

    /// The kind's name on the command line (`autoencoder`, `mlp`, …).
    pub const fn name(self) -> &'static str {
        match self {
            Kind::Autoencoder => "autoencoder",
            Kind::Softmax => "softmax",
            Kind::Mlp => "mlp",
            Kind::Stacked => "stacked",
            Kind::Cnn => "cnn",
            Kind::Lstm => "lstm",
            Kind::Rnn => "rnn",
        }
    }

    /// The table (UFLDL's exercises for autoencoder, softmax and stacked; scikit-learn's
    /// `MLPClassifier` for mlp; Caffe's LeNet for cnn).
    pub const fn defaults(self) -> KindDefaults {
        const BASE: KindDefaults = KindDefaults {
            iterations: 30,
            solver: Solver::Adam,
            batch_size: Minibatch::DEFAULT_BATCH_SIZE,
            weight_decay: 1e-5,
            hidden: &[256, 128],
            activation: Activation::Relu,
            squared_error_output: Output::SquaredError(Activation::Identity),
            sparsity: None,
            sparsity_weight: 3.0,
            net: None,
        };
        match self {
            Kind::Autoencoder => KindDefaults {
                iterations: 400,
                solver: Solver::Lbfgs,
                weight_decay: 1e-4,
                hidden: &[25],
                activation: Activation::Sigmoid,
                squared_error_output: Output::SquaredError(Activation::Sigmoid),
                sparsity: Some(0.01),
                ..BASE
            },
            Kind::Softmax => {
                KindDefaults { iterations: 100, solver: Solver::Lbfgs, weight_decay: 1e-4, hidden: &[], ..BASE }
            }
            Kind::Mlp => BASE,
            Kind::Stacked => KindDefaults {
                iterations: 400,
                solver: Solver::Lbfgs,
                weight_decay: 3e-3,
                hidden: &[200, 200],
                activation: Activation::Sigmoid,
                sparsity: Some(0.1),
                ..BASE
            },
            Kind::Cnn => KindDefaults {
                iterations: 10,
                batch_size: 64,
                weight_decay: 0.0,
                hidden: &[],
                net: Some(LENET),
                ..BASE
            },
            Kind::Lstm | Kind::Rnn => {
                KindDefaults { iterations: 10, batch_size: 128, weight_decay: 0.0, hidden: &[128], ..BASE }
            }
        }
    }

    /// Step "network" of a dense kind (autoencoder, softmax, mlp): `inputs` values per example
    /// to `outputs` (the classes of a classifier, the targets' width of a regressor; an
    /// autoencoder reconstructs its `inputs`), the settings not given taken from the table.
    /// A squared-error network is a regressor when `regression` (mlp only).
    ///
    /// Errors ([`Error::Data`]): a kind that is not dense, a regressor of another kind than
    /// mlp, a classifier given a squared-error output, and the network's own checks
    /// ([`NetSpec::new`]).
    pub fn dense_spec(self, inputs: usize, outputs: usize, regression: bool, s: &DenseSettings) -> Result<NetSpec> {
        let d = self.defaults();
        let activation = s.activation.unwrap_or(d.activation);
        let mut layers = vec![inputs];
        layers.extend(s.hidden.as_deref().unwrap_or(d.hidden));
        let spec = match self {
            Kind::Autoencoder => {
                layers.push(inputs);
                let rho = s.sparsity.or(d.sparsity).unwrap_or(0.0);
                let sparsity = (rho != 0.0).then_some(Sparsity { target: rho, weight: s.sparsity_weight });
                NetSpec::new(&layers, activation, s.output.unwrap_or(d.squared_error_output))?
                    .with_weight_decay(s.weight_decay.unwrap_or(d.weight_decay))?
                    .with_sparsity(sparsity)?
            }
            Kind::Mlp if regression => {
                layers.push(outputs);
                let output = s.output.unwrap_or(d.squared_error_output);
                if output == Output::Softmax {
                    return Err(Error::Data(
                        "a regressor needs a squared-error output: identity, sigmoid, tanh or relu".into(),
                    ));
                }
                NetSpec::new(&layers, activation, output)?
                    .with_weight_decay(s.weight_decay.unwrap_or(d.weight_decay))?
            }
            Kind::Softmax | Kind::Mlp => {
                if let Some(o) = s.output.filter(|&o| o != Output::Softmax) {
                    return Err(Error::Data(format!(
                        "output {} needs real-valued targets: a classifier ends in softmax",
                        o.name()
                    )));
                }
                layers.push(outputs);
                NetSpec::new(&layers, activation, Output::Softmax)?
                    .with_weight_decay(s.weight_decay.unwrap_or(d.weight_decay))?
            }
            other => {
                return Err(Error::Data(format!(
                    "{} is not a dense kind: its network comes from its own settings",
                    other.name()
                )));
            }
        };
        Ok(spec)
    }
}

/// The settings of a dense network; `None` takes the kind's default ([`Kind::defaults`]).
#[derive(Clone, Debug, PartialEq)]
pub struct DenseSettings {
    /// Hidden layer sizes.
    pub hidden: Option<Vec<usize>>,
    /// Hidden activation.
    pub activation: Option<Activation>,
    /// The output (squared-error kinds: an autoencoder, a regressor).
    pub output: Option<Output>,
    /// L2 weight decay λ.
    pub weight_decay: Option<f64>,
    /// The autoencoder's sparsity target ρ (0: no penalty).
    pub sparsity: Option<f64>,
    /// The sparsity penalty's weight β.
    pub sparsity_weight: f64,
}

impl Default for DenseSettings {
    fn default() -> DenseSettings {
        DenseSettings {
            hidden: None,
            activation: None,
            output: None,
            weight_decay: None,
            sparsity: None,
            sparsity_weight: Kind::Autoencoder.defaults().sparsity_weight,
        }
    }
}

/// scikit-learn's L2 penalty α as wgnn's λ: its loss adds α/(2 n)·‖W‖² with n the examples
/// of each gradient, so λ = α/n, n = min(batch, training examples) for sgd and adam and the
/// training examples (after the validation split) for the full-batch solvers
/// (scikit-learn's `_multilayer_perceptron.py`, `_backprop`). Returns (λ, n).
pub fn weight_decay_of_alpha(alpha: f64, solver: Solver, batch_size: usize, train_examples: usize) -> (f64, usize) {
    let n = if solver.is_minibatch() { batch_size.min(train_examples) } else { train_examples };
    (alpha / n as f64, n)
}

/// Step "optimizer": the solver and its settings; `None` takes the solver's default.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerSettings {
    /// The optimizer.
    pub solver: Solver,
    /// Iterations (epochs for sgd and adam).
    pub iterations: usize,
    /// η of gd, sgd and adam ([`Solver::learning_rate`] by default).
    pub learning_rate: Option<f64>,
    /// Minibatch size of sgd and adam.
    pub batch_size: usize,
    /// Learning-rate schedule of sgd and adam.
    pub schedule: Schedule,
    /// sgd's momentum μ (0.9 by default; 0: plain SGD) and whether it is Nesterov's (true).
    pub momentum: Option<f64>,
    /// sgd: Nesterov's momentum (true by default) or the heavy ball.
    pub nesterov: Option<bool>,
    /// Adam's β₁, β₂, ε ([`UpdateRule::ADAM`] by default).
    pub beta1: Option<f64>,
    /// Adam's β₂ (0.999 by default).
    pub beta2: Option<f64>,
    /// Adam's ε (1e-8 by default).
    pub adam_epsilon: Option<f64>,
    /// L-BFGS's history ([`Lbfgs::memory_for`] the parameters by default).
    pub lbfgs_memory: Option<usize>,
    /// The minibatch order's seed.
    pub seed: u64,
    /// Cost tolerance and the iterations without a decrease by it ([`Stop`]); evaluations
    /// allowed (scikit-learn's `tol`, `n_iter_no_change`, `max_fun`).
    pub tol: Option<f64>,
    /// Iterations (epochs) without a decrease by `tol` before the run counts as converged.
    pub n_iter_no_change: Option<usize>,
    /// Cost-and-gradient evaluations allowed (`None`: no limit).
    pub max_fun: Option<usize>,
}

impl OptimizerSettings {
    /// `kind`'s solver, iterations and batch from the table, everything else the solver's own
    /// default.
    pub fn of(kind: Kind) -> OptimizerSettings {
        let d = kind.defaults();
        OptimizerSettings {
            solver: d.solver,
            iterations: d.iterations,
            learning_rate: None,
            batch_size: d.batch_size,
            schedule: Schedule::Constant,
            momentum: None,
            nesterov: None,
            beta1: None,
            beta2: None,
            adam_epsilon: None,
            lbfgs_memory: None,
            seed: 0,
            tol: None,
            n_iter_no_change: None,
            max_fun: None,
        }
    }

    /// The optimizer for a network of `parameters` values.
    ///
    /// Errors: the method's own checks ([`Method::validate`]).
    pub fn method(&self, parameters: usize) -> Result<Method> {
        let eta = self.learning_rate.or(self.solver.learning_rate()).unwrap_or(0.0);
        let minibatch = |rule: UpdateRule| {
            Method::Minibatch(
                Minibatch::sgd(eta)
                    .with_rule(rule)
                    .with_schedule(self.schedule)
                    .with_batch_size(self.batch_size)
                    .with_seed(self.seed),
            )
        };
        let method = match self.solver {
            Solver::Lbfgs => {
                Method::Lbfgs(Lbfgs::default().with_memory(self.lbfgs_memory.unwrap_or(Lbfgs::memory_for(parameters))))
            }
            Solver::Cg => Method::cg(),
            Solver::Gd => Method::gradient_descent(eta),
            Solver::Sgd => {
                // UpdateRule::NESTEROV's μ = 0.9, Nesterov, unless given; μ = 0 keeps no velocity.
                let momentum = self.momentum.unwrap_or(0.9);
                minibatch(if momentum == 0.0 {
                    UpdateRule::Plain
                } else {
                    UpdateRule::Momentum { momentum, nesterov: self.nesterov.unwrap_or(true) }
                })
            }
            Solver::Adam => {
                let UpdateRule::Adam { beta1, beta2, epsilon } = UpdateRule::ADAM else { unreachable!() };
                minibatch(UpdateRule::Adam {
                    beta1: self.beta1.unwrap_or(beta1),
                    beta2: self.beta2.unwrap_or(beta2),
                    epsilon: self.adam_epsilon.unwrap_or(epsilon),
                })
            }
        };
        method.validate()?;
        Ok(method)
    }

    /// The stopping rules of `method` ([`Method::default_stop`]) with these iterations,
    /// tolerance, patience and evaluations.
    pub fn stop(&self, method: &Method) -> Stop {
        let mut stop = method.default_stop().with_max_iterations(self.iterations);
        stop.cost_tol = self.tol.unwrap_or(stop.cost_tol);
        stop.cost_patience = self.n_iter_no_change.unwrap_or(stop.cost_patience);
        stop.max_evaluations = self.max_fun.or(stop.max_evaluations);
        stop
    }
}

impl Default for StackedConfig {
    fn default() -> StackedConfig {
        // This table's row for stacked, and softmax's for the softmax stage.
        let (stacked, softmax) = (Kind::Stacked.defaults(), Kind::Softmax.defaults());
        StackedConfig {
            hidden: stacked.hidden.to_vec(),
            sparsity: stacked.sparsity.map(|target| Sparsity { target, weight: stacked.sparsity_weight }),
            weight_decay: stacked.weight_decay,
            iterations: stacked.iterations,
            softmax_weight_decay: softmax.weight_decay,
            softmax_iterations: softmax.iterations,
            seed: 0,
            checkpoint_every: None,
            data_description: String::new(),
            preprocessing: serde_json::Value::Null,
            resume: false,
            command: serde_json::Value::Null,
        }
    }
}

/// The character-level language model's defaults (`wgnn train lstm|rnn --data text:FILE`,
/// [`crate::estimator::CharModel`]; issue 16 §5, after Karpathy's char-rnn): LSTM 256,
/// windows of T = 64 characters, 32 streams per minibatch, Adam η = 2e-3, gradients clipped
/// to global norm 5, 2000 updates, held-out bits per character every 500 updates on the
/// last 10% of the text.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TextDefaults {
    /// Units of the recurrent layer.
    pub hidden: usize,
    /// T, characters per window (truncated BPTT).
    pub bptt: usize,
    /// Streams per minibatch.
    pub batch_size: usize,
    /// Adam's (or sgd's) η.
    pub learning_rate: f64,
    /// τ of clipping by global norm.
    pub clip_norm: f64,
    /// Minibatch updates.
    pub steps: usize,
    /// Held-out bits per character every this many updates (and after the last).
    pub eval_every: usize,
    /// The fraction of the text held out at its end.
    pub held_out: f64,
}

/// The table's row for character models ([`TextDefaults`]).
pub const TEXT_DEFAULTS: TextDefaults = TextDefaults {
    hidden: 256,
    bptt: 64,
    batch_size: 32,
    learning_rate: 2e-3,
    clip_norm: 5.0,
    steps: 2000,
    eval_every: 500,
    held_out: 0.1,
};
