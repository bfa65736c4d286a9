//! The stacked autoencoder as an estimator (`wgnn train stacked`): sparse autoencoders
//! trained greedily layer by layer, a softmax on the last features, then the whole stack
//! fine-tuned by backpropagation ([`crate::stacked`], UFLDL's "Stacked Autoencoders"), in
//! memory ([`crate::stacked::train_stacked_in_memory`]: the pipeline `wgnn train stacked`
//! runs, without its folders, so the same settings give the same θ bit for bit). The result
//! is the fine-tuned network, a classifier ([`Trained<Classifier>`]).

use std::marker::PhantomData;
use std::sync::atomic::AtomicBool;

use ndarray::Array2;

use super::{BackendCache, BackendChoice, Classifier, Precision, Trained, build_backend, check_finite, check_rows};
use crate::checkpoint::{Checkpoint, Metadata};
use crate::gpu::GpuOptions;
use crate::model::{NetSpec, Sparsity};
use crate::predict::Model;
use crate::stacked::{StackedConfig, StageEvent, train_stacked_in_memory};
use crate::train::RunStatus;
use crate::{Error, Result};

/// The stacked autoencoder and its settings: UFLDL's exercise by default (sigmoid
/// autoencoders of the given sizes with ρ = 0.1, β = 3, λ = 3e-3, 400 L-BFGS iterations
/// each and for fine-tuning; the softmax stage λ = 1e-4, 100 iterations; the table's rows
/// for stacked and softmax, [`super::Kind::defaults`]).
///
/// ```
/// use ndarray::Array2;
/// use wgnn::{BackendChoice, StackedAutoencoder};
///
/// // Two classes of 8-value patterns: which half is bright.
/// let x = Array2::from_shape_fn((40, 8), |(i, j)| if (j < 4) == (i % 2 == 0) { 0.9 } else { 0.1 });
/// let y: Vec<usize> = (0..40).map(|i| i % 2).collect();
/// let model = StackedAutoencoder::new(&[4, 3]).iterations(30).backend(BackendChoice::Cpu).fit(&x, &y)?;
/// assert_eq!(model.spec().layers, vec![8, 4, 3, 2]);
/// assert_eq!(model.score(&x, &y)?, 1.0);
/// # Ok::<(), wgnn::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct StackedAutoencoder {
    config: StackedConfig,
    backend: BackendChoice,
    gpu: GpuOptions,
}

impl StackedAutoencoder {
    /// Autoencoders of these hidden sizes, bottom first (UFLDL: 200, 200), then a softmax.
    pub fn new(hidden: &[usize]) -> StackedAutoencoder {
        let config = StackedConfig { hidden: hidden.to_vec(), ..StackedConfig::default() };
        StackedAutoencoder { config, backend: BackendChoice::Auto, gpu: GpuOptions::default() }
    }

    /// Each autoencoder's sparsity target ρ (0 turns the penalty off) and weight β.
    pub fn sparsity(mut self, rho: f64, beta: f64) -> Self {
        self.config.sparsity = (rho != 0.0).then_some(Sparsity { target: rho, weight: beta });
        self
    }

    /// λ of the autoencoders (`--weight-decay`).
    pub fn weight_decay(mut self, lambda: f64) -> Self {
        self.config.weight_decay = lambda;
        self
    }

    /// L-BFGS iterations of each autoencoder and of fine-tuning (`--iterations`).
    pub fn iterations(mut self, n: usize) -> Self {
        self.config.iterations = n;
        self
    }

    /// λ of the softmax stage and of fine-tuning, and the softmax stage's iterations.
    pub fn softmax(mut self, lambda: f64, iterations: usize) -> Self {
        self.config.softmax_weight_decay = lambda;
        self.config.softmax_iterations = iterations;
        self
    }

    /// The seed of every stage's initial weights.
    pub fn seed(mut self, seed: u64) -> Self {
        self.config.seed = seed;
        self
    }

    /// Which backend computes each stage (f32; default: as `--backend auto`).
    pub fn backend(mut self, backend: BackendChoice) -> Self {
        self.backend = backend;
        self
    }

    /// How the GPU is found (API, adapter name).
    pub fn gpu_options(mut self, options: GpuOptions) -> Self {
        self.gpu = options;
        self
    }

    /// Trains the pipeline on examples `x` (m × n) with labels (m numbers 0..k−1, k ≥ 2) and
    /// returns the fine-tuned stack n-h₁-…-k (sigmoid hidden layers, softmax output).
    ///
    /// Errors: labels not one per example, fewer than 2 classes, NaN or infinite values,
    /// settings that make no network (a hidden size 0, 0 iterations); a stage that diverges.
    pub fn fit(&self, x: &Array2<f32>, labels: &[usize]) -> Result<Trained<Classifier>> {
        self.fit_with(x, labels, &mut |_| {}, &AtomicBool::new(false))
    }

    /// As [`StackedAutoencoder::fit`], calling `on_stage` before and after each stage (its
    /// network; the folder it names is a name only) and stopping the running stage when
    /// `interrupt` is set: stopped while fine-tuning, the model holds the stack's θ of the
    /// last step ([`RunStatus::Interrupted`]); stopped in an earlier stage, there is no stack
    /// yet and the result is an [`Error::Data`] naming the stage.
    pub fn fit_with(
        &self,
        x: &Array2<f32>,
        labels: &[usize],
        on_stage: &mut dyn FnMut(StageEvent<'_>),
        interrupt: &AtomicBool,
    ) -> Result<Trained<Classifier>> {
        check_finite(x, "the examples")?;
        check_rows(x, labels.len(), "labels")?;
        if labels.iter().all(|&c| c == labels[0]) {
            return Err(Error::Data(format!(
                "every label is {}: a classifier needs at least 2 classes",
                labels.first().copied().unwrap_or(0)
            )));
        }
        let preprocessing = serde_json::json!({ "source": "in memory", "targets": null, "classes": null });
        let config = StackedConfig {
            data_description: format!("{} in-memory examples (stacked autoencoder)", x.nrows()),
            preprocessing: preprocessing.clone(),
            ..self.config.clone()
        };
        let mut backend_name = String::new();
        let mut backend_note = None;
        let mut build = |spec: &NetSpec| -> Result<Box<dyn crate::Backend>> {
            let (b, note) = build_backend(self.backend, spec.clone(), Precision::F32, &self.gpu)?;
            backend_name = b.name();
            backend_note = backend_note.take().or(note);
            Ok(b)
        };
        let mut iterations = 0;
        let mut report = |event: StageEvent<'_>| {
            if let StageEvent::Done { outcome } = &event {
                iterations = outcome.summary.iterations;
            }
            on_stage(event);
        };
        let outcome = train_stacked_in_memory(&config, &mut build, x, labels, None, &mut report, interrupt)?;
        let finetuned = outcome.stage == std::path::Path::new("finetune");
        match &outcome.status {
            RunStatus::Finished => {}
            RunStatus::Interrupted if finetuned => {}
            RunStatus::Interrupted => {
                return Err(Error::Data(format!(
                    "interrupted in stage {} of the stacked autoencoder: there is no fine-tuned stack yet",
                    outcome.stage.display()
                )));
            }
            RunStatus::Diverged { reason } => {
                return Err(Error::Data(format!(
                    "stage {} of the stacked autoencoder diverged ({reason}): lower λ or the iterations",
                    outcome.stage.display()
                )));
            }
        }
        let ck = Checkpoint::new(
            outcome.spec,
            outcome.theta,
            Metadata { preprocessing: preprocessing.clone(), ..Default::default() },
        )?;
        Ok(Trained {
            model: Model::from_checkpoint(&ck)?,
            preprocessing,
            backend: self.backend,
            gpu: self.gpu.clone(),
            precision: Precision::F32,
            backend_name,
            backend_note,
            status: outcome.status,
            final_cost: outcome.final_cost,
            iterations,
            seed: self.config.seed,
            cache: BackendCache::default(),
            task: PhantomData,
        })
    }
}
