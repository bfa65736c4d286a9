//! A trained model ready for new data: the network (spec and θ) bundled with every stage its
//! training data went through, applied in the order training applied them:
//!
//! 1. `--features-from`: the hidden activations a⁽²⁾ = f(W⁽¹⁾x + b⁽¹⁾) of an encoder
//!    (UFLDL, "Self-Taught Learning"), stored in the model as `preprocessing.encoder`
//!    (`{"spec": …, "theta": […], "preprocessing": …}`: the encoder's own stages come first,
//!    recursively); models from before it was stored name only the encoder's path
//!    (`preprocessing.features_from`), which is then read when it still exists;
//! 2. whitening (`preprocessing.whitening`: x ↦ M (x − μ), ZCA or PCA; UFLDL, "Whitening").
//!
//! Nothing here needs labels or targets. A [`Model`] runs through any [`Backend`]: the caller
//! says how to build one for a network ([`BackendFor`]), so every layer kind a backend knows
//! is predicted the same way.

use std::path::{Path, PathBuf};

use ndarray::Array2;

use crate::checkpoint::Checkpoint;
use crate::data::whiten::Whitening;
use crate::model::{NetSpec, Output};
use crate::train::{MODEL_FILE, hidden_features, unfinished_reason};
use crate::{Backend, CpuBackend, Error, Result};

/// Builds the backend that computes a network (the model's own, or a stage's encoder).
pub type BackendFor<'a> = dyn FnMut(&NetSpec) -> Result<Box<dyn Backend>> + 'a;

/// The f32 CPU backend for any network: a [`BackendFor`] for callers with no preference.
pub fn cpu_f32(spec: &NetSpec) -> Result<Box<dyn Backend>> {
    Ok(Box::new(CpuBackend::<f32>::new(spec.clone())?))
}

/// One step between the raw examples and the network's inputs.
#[derive(Clone, Debug, PartialEq)]
pub enum Stage {
    /// The first hidden layer's activations of an encoder network (m × n ↦ m × h).
    Encoder {
        /// The encoder's network (its first hidden layer gives the features).
        spec: NetSpec,
        /// The encoder's θ.
        theta: Vec<f64>,
    },
    /// x ↦ M (x − μ) (m × n ↦ m × outputs).
    Whitening(Whitening),
}

impl Stage {
    /// Values per example this stage takes.
    pub fn inputs(&self) -> usize {
        match self {
            Stage::Encoder { spec, .. } => spec.inputs(),
            Stage::Whitening(w) => w.inputs,
        }
    }
}

/// What a model's output means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// A softmax output: the probabilities of `classes` classes.
    Classifier {
        /// k.
        classes: usize,
    },
    /// A squared-error output trained against targets: `outputs` predicted values.
    Regressor {
        /// Values per example.
        outputs: usize,
    },
    /// A squared-error output trained to reconstruct its input (n-…-n), with a hidden layer
    /// of `hidden` units to take features from.
    Autoencoder {
        /// Units of the first hidden layer.
        hidden: usize,
    },
    /// A sigmoid output with the binary cross-entropy ([`Output::SigmoidBce`]): for each of
    /// `labels` labels the probability P(yⱼ = 1 | x), decided 1 at ≥ 0.5 ([`decide`]).
    MultiLabel {
        /// k.
        labels: usize,
    },
}

pub use crate::train::{DECISION_THRESHOLD, MultiLabelScores, decide, multilabel_scores};

/// A trained network with the stages its inputs go through: see the module docs.
#[derive(Clone, Debug)]
pub struct Model {
    /// The network.
    pub spec: NetSpec,
    /// θ in wgnn's layout ([`crate::model::ThetaLayout`]).
    pub theta: Vec<f64>,
    /// In the order they are applied to raw examples.
    pub stages: Vec<Stage>,
    /// What its output means.
    pub task: Task,
    /// A classifier's labels as its training data wrote them, class by class (`setosa`, `7`),
    /// stored as `preprocessing.classes`; `None` when the classes are the numbers 0..k−1
    /// (MNIST, models from before names were stored).
    pub classes: Option<Vec<String>>,
}

/// The `preprocessing.encoder` a model stores for `--features-from`: the encoder's network,
/// θ, and its own preprocessing (its inputs' stages, e.g. whitening), recursively.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredEncoder {
    spec: NetSpec,
    theta: Vec<f64>,
    #[serde(default)]
    preprocessing: serde_json::Value,
}

/// `preprocessing.encoder`: what [`Model`] needs to apply `--features-from` with `encoder`
/// without the encoder's run folder (its spec, θ and stages).
pub fn encoder_json(encoder: &Checkpoint) -> serde_json::Value {
    let stored = StoredEncoder {
        spec: encoder.spec.clone(),
        theta: encoder.theta.clone(),
        preprocessing: encoder.metadata.preprocessing.clone(),
    };
    serde_json::to_value(stored).unwrap_or_default()
}

/// The stages `preprocessing` describes, in the order they apply (module docs).
fn stages_of(pre: &serde_json::Value, depth: usize) -> Result<Vec<Stage>> {
    if depth > 16 {
        return Err(Error::Data("the model's encoders nest more than 16 deep: the file is corrupt".into()));
    }
    let mut stages = Vec::new();
    let mut encoder = |spec: NetSpec, theta: Vec<f64>, pre: &serde_json::Value| -> Result<()> {
        crate::backend::check_theta_len(&spec, theta.len())?;
        stages.extend(stages_of(pre, depth + 1)?);
        stages.push(Stage::Encoder { spec, theta });
        Ok(())
    };
    match (pre.get("encoder").filter(|e| !e.is_null()), pre.get("features_from").and_then(|p| p.as_str())) {
        (Some(e), _) => {
            let e: StoredEncoder = serde_json::from_value(e.clone())
                .map_err(|e| Error::Data(format!("the model's preprocessing.encoder is unreadable: {e}")))?;
            encoder(e.spec, e.theta, &e.preprocessing)?;
        }
        (None, Some(path)) => {
            // Written before the encoder was stored in the model: its run must still exist.
            let ck = model_file(Path::new(path)).and_then(|f| Checkpoint::load(&f)).map_err(|e| {
                Error::Data(format!(
                    "the model was trained on the features of the encoder {path}, which it does not hold (an older wgnn wrote it), and that encoder cannot be read ({e}): restore it there, or train the model again"
                ))
            })?;
            encoder(ck.spec, ck.theta, &ck.metadata.preprocessing)?;
        }
        (None, None) => {}
    }
    if let Some(w) = Whitening::from_preprocessing(pre)? {
        stages.push(Stage::Whitening(w));
    }
    Ok(stages)
}

/// The finished model file of `path`: a `model.safetensors` file itself, a run folder holding
/// one, or a `train stacked` folder (its fine-tuned whole stack, `finetune/model.safetensors`).
///
/// Errors ([`Error::File`]): no such file, a run that did not finish (what
/// [`unfinished_reason`] says).
pub fn model_file(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        if !path.is_file() {
            return Err(Error::file(path, "no such file (give a model.safetensors or the run folder holding one)"));
        }
        return Ok(path.to_path_buf());
    }
    let stacked = path.join("finetune");
    if !path.join(MODEL_FILE).exists() && path.join("layer1").is_dir() {
        return match unfinished_reason(&stacked) {
            None if crate::train::recorded_status(path).as_deref() == Some("finished") => Ok(stacked.join(MODEL_FILE)),
            _ => Err(Error::file(path, "this stacked autoencoder did not finish: its fine-tuned model is missing")),
        };
    }
    match unfinished_reason(path) {
        Some(why) => Err(Error::file(path, format!("this run did not finish: {why}"))),
        None => Ok(path.join(MODEL_FILE)),
    }
}

impl Model {
    /// Loads a model ([`model_file`] says which file) with its stages.
    ///
    /// Errors: as [`model_file`] and [`Checkpoint::load`]; a stored stage that is unreadable;
    /// an old model naming an encoder's path that no longer exists.
    pub fn load(path: &Path) -> Result<Model> {
        let file = model_file(path)?;
        let ck = Checkpoint::load(&file)?;
        Model::from_checkpoint(&ck)
    }

    /// The model a checkpoint holds, its stages read from `metadata.preprocessing`.
    pub fn from_checkpoint(ck: &Checkpoint) -> Result<Model> {
        let pre = &ck.metadata.preprocessing;
        let stages = stages_of(pre, 0)?;
        let spec = ck.spec.clone();
        let trained_on_targets = pre.get("targets").is_some_and(|t| !t.is_null());
        let task = match spec.output {
            Output::Softmax => Task::Classifier { classes: spec.outputs() },
            Output::SigmoidBce => Task::MultiLabel { labels: spec.outputs() },
            _ if !trained_on_targets && spec.layers.len() >= 3 && spec.outputs() == spec.inputs() => {
                Task::Autoencoder { hidden: spec.layers[1] }
            }
            _ => Task::Regressor { outputs: spec.outputs() },
        };
        // Only a classifier's classes name its outputs (a regressor trained on a CSV with a
        // label column has none).
        let classes = match pre.get("classes").filter(|c| !c.is_null() && spec.classes().is_some()) {
            Some(c) => {
                let names: Vec<String> = serde_json::from_value(c.clone())
                    .map_err(|e| Error::Data(format!("the model's preprocessing.classes is unreadable: {e}")))?;
                if Some(names.len()) != spec.classes() {
                    return Err(Error::Data(format!(
                        "the model names {} classes but {} has {:?} outputs: the file is corrupt",
                        names.len(),
                        spec.describe(),
                        spec.classes()
                    )));
                }
                Some(names)
            }
            None => None,
        };
        Ok(Model { spec, theta: ck.theta.clone(), stages, task, classes })
    }

    /// The name of each class of a classifier: the stored labels, or `0`, `1`, … (`None` for
    /// a model that is no classifier).
    pub fn class_names(&self) -> Option<Vec<String>> {
        match (&self.classes, self.task) {
            (Some(c), _) => Some(c.clone()),
            (None, Task::Classifier { classes }) => Some((0..classes).map(|l| l.to_string()).collect()),
            _ => None,
        }
    }

    /// Values per raw example the model takes (before its stages).
    pub fn inputs(&self) -> usize {
        self.stages.first().map_or(self.spec.inputs(), Stage::inputs)
    }

    /// The raw examples `x` (m × [`Model::inputs`]) through every stage: the network's inputs.
    ///
    /// Errors: `x` of another width ([`Error::Shape`]); non-finite values; a backend error.
    pub fn prepare(&self, x: &Array2<f32>, backends: &mut BackendFor<'_>) -> Result<Array2<f32>> {
        self.prepare_on(x, &mut Fresh::new(backends))
    }

    /// As [`Model::prepare`], with the backends `backends` keeps ([`BackendSource`]).
    pub fn prepare_on(&self, x: &Array2<f32>, backends: &mut dyn BackendSource) -> Result<Array2<f32>> {
        if x.ncols() != self.inputs() {
            return Err(Error::Shape(format!(
                "the data has {} values per example but the model takes {}: give data like its training data",
                x.ncols(),
                match self.stages.first() {
                    Some(_) => format!("{} values", self.inputs()),
                    None => self.spec.input_text(),
                }
            )));
        }
        // Row-major, whatever layout the reader produced (taking columns out gives a
        // column-major array): the CPU products' bits depend on the layout, predictions must not.
        let mut x = x.as_standard_layout().into_owned();
        for stage in &self.stages {
            x = match stage {
                Stage::Encoder { spec, theta } => hidden_features(backends.backend(spec)?, theta, &x)?,
                Stage::Whitening(w) => w.apply(x.view())?,
            };
        }
        Ok(x)
    }

    /// The network's output h(x) for each raw example (m × outputs): class probabilities of a
    /// classifier, predicted values of a regressor, reconstructions of an autoencoder (in the
    /// space the network was trained in, whitened when the model whitens).
    pub fn predict(&self, x: &Array2<f32>, backends: &mut BackendFor<'_>) -> Result<Array2<f64>> {
        self.predict_on(x, &mut Fresh::new(backends))
    }

    /// As [`Model::predict`], with the backends `backends` keeps ([`BackendSource`]).
    pub fn predict_on(&self, x: &Array2<f32>, backends: &mut dyn BackendSource) -> Result<Array2<f64>> {
        let x = self.prepare_on(x, backends)?;
        backends.backend(&self.spec)?.predict(&self.theta, (&x).into())
    }

    /// The class probabilities P(y = j | x) (m × classes, rows summing to 1) and the most
    /// probable class of each example (the first of equals, as [`Backend::classify`]). A
    /// recurrent model with a softmax at every step gives m × (T·classes), step t's
    /// probabilities at columns t·classes …, and m·T labels (sequence i's step t at i·T + t).
    ///
    /// Errors: the model is not a classifier, and as [`Model::predict`].
    pub fn predict_proba(&self, x: &Array2<f32>, backends: &mut BackendFor<'_>) -> Result<(Array2<f64>, Vec<usize>)> {
        if !matches!(self.task, Task::Classifier { .. }) {
            return Err(Error::Data(format!(
                "{} is not a classifier: it gives no class probabilities",
                self.spec.describe()
            )));
        }
        let p = self.predict(x, backends)?;
        // A softmax at every step: T groups of k per row, one label each (as Backend::classify).
        let k = self.spec.outputs();
        let labels = p
            .rows()
            .into_iter()
            .flat_map(|row| {
                row.exact_chunks(k).into_iter().map(|c| crate::backend::argmax(c.iter().copied())).collect::<Vec<_>>()
            })
            .collect();
        Ok((p, labels))
    }

    /// The first hidden layer's activations for each raw example (m × hidden): the features
    /// the model extracts ([`hidden_features`]).
    ///
    /// Errors: a network without a hidden layer, and as [`Model::predict`].
    pub fn transform(&self, x: &Array2<f32>, backends: &mut BackendFor<'_>) -> Result<Array2<f32>> {
        self.transform_on(x, &mut Fresh::new(backends))
    }

    /// As [`Model::transform`], with the backends `backends` keeps ([`BackendSource`]).
    pub fn transform_on(&self, x: &Array2<f32>, backends: &mut dyn BackendSource) -> Result<Array2<f32>> {
        let x = self.prepare_on(x, backends)?;
        hidden_features(backends.backend(&self.spec)?, &self.theta, &x)
    }
}

/// Where a [`Model`] finds the backend that computes each of its networks (its own, a stage's
/// encoder): one built afresh for every use ([`Model::predict`] with a [`BackendFor`]), or
/// one kept from call to call (a trained estimator's, [`crate::estimator::Trained`]).
pub trait BackendSource {
    /// The backend that computes `spec`.
    ///
    /// Errors: the backend cannot be built for `spec` (the network's own checks, no GPU).
    fn backend(&mut self, spec: &NetSpec) -> Result<&mut dyn Backend>;
}

/// A [`BackendSource`] that builds a backend on every call, through a [`BackendFor`].
struct Fresh<'a, 'b> {
    build: &'a mut BackendFor<'b>,
    slot: Option<Box<dyn Backend>>,
}

impl<'a, 'b> Fresh<'a, 'b> {
    fn new(build: &'a mut BackendFor<'b>) -> Fresh<'a, 'b> {
        Fresh { build, slot: None }
    }
}

impl BackendSource for Fresh<'_, '_> {
    fn backend(&mut self, spec: &NetSpec) -> Result<&mut dyn Backend> {
        let built = (self.build)(spec)?;
        Ok(self.slot.insert(built).as_mut())
    }
}
