//! The CPU backend: ndarray, generic over f64 and f32. In f64 it is the reference every test
//! trusts; in f32 it is the fast path on machines without a GPU (threaded GEMM, [`gemm()`]).
//! The maths lives in [`net`] and reads like MATH.md; this file only holds the loaded data and
//! converts at the f64 interface.

mod gemm;
pub mod net;
mod real;
pub mod sequence;
pub mod stack;

pub use gemm::{gemm, gemm_serial};
pub use real::Real;

use std::any::Any;
use std::sync::Arc;

use ndarray::{Array2, ArrayView2, Axis};

use crate::backend::{Backend, Batch, Cost, Inputs, Targets};
use crate::model::{NetSpec, Output, ThetaLayout};
use crate::{Error, Result};
use net::TargetView;

/// Targets held by the backend, in its precision.
#[derive(Clone, Debug)]
enum OwnedTargets<F> {
    Inputs,
    Labels(Vec<usize>),
    Values(Arc<Array2<F>>),
}

/// The loaded examples and targets, in the backend's precision: shared with the caller when
/// it handed them over as [`Inputs::Shared`] in this precision (see [`real_rows`]).
struct Loaded<F> {
    x: Arc<Array2<F>>,
    targets: OwnedTargets<F>,
    /// Labels per example: T for a recurrent network with an output at every step, else 1.
    label_steps: usize,
}

impl<F: Real> Loaded<F> {
    fn empty() -> Loaded<F> {
        Loaded { x: Arc::new(Array2::zeros((0, 0))), targets: OwnedTargets::Inputs, label_steps: 1 }
    }
}

/// The CPU [`Backend`] in precision `F` (f64: the reference; f32: the fast path): holds a
/// network's spec, its θ layout and the loaded examples (m × inputs) in `F`, and computes
/// J(θ) and ∇J (MATH.md, "Forward", "Backpropagation", "Softmax output and cross-entropy")
/// through [`net`], or [`stack`] for conv2d, pooling and maxout layers. θ and ∇J cross the
/// [`Backend`] interface as f64 and are converted to `F` and back.
pub struct CpuBackend<F: Real> {
    spec: NetSpec,
    layout: ThetaLayout,
    data: Loaded<F>,
    /// Buffers reused from call to call (see [`net::Scratch`]).
    scratch: net::Scratch<F>,
    /// ∇J in the backend's precision, before it is widened to f64.
    grad: Vec<F>,
    /// θ in the backend's precision for [`Backend::cost_and_grad`], kept between calls.
    theta_real: Vec<F>,
    /// The layers of a stack spec (conv2d, pooling, maxout: [`stack`]); `None` for a dense
    /// network, which runs [`net`]'s path unchanged.
    plan: Option<stack::Plan>,
    /// ρ̂ and 1 − ρ̂ to use instead of each batch's own ([`CpuBackend::set_sparsity_means`]).
    sparsity_means: Option<net::Sparse<F>>,
}

/// Converts examples to the backend's precision.
pub fn to_real<F: Real>(x: Inputs<'_>) -> Array2<F> {
    match x {
        Inputs::F32(x) => x.mapv(F::of_f32),
        Inputs::F64(x) => x.mapv(F::of),
        Inputs::Shared(x) => x.mapv(F::of_f32),
    }
}

/// Examples in the backend's precision without copying them when they can be had so: the
/// caller's own array for [`Inputs::Shared`] data when `F` is f32, else a converted copy
/// ([`to_real`]).
fn real_rows<F: Real>(x: Inputs<'_>) -> Arc<Array2<F>> {
    if let Inputs::Shared(shared) = x
        && let Ok(same) = (Arc::clone(shared) as Arc<dyn Any + Send + Sync>).downcast::<Array2<F>>()
    {
        return same;
    }
    Arc::new(to_real(x))
}

/// Checks that `x` fits the network's input and holds only finite values; `what` names it in
/// the error.
pub fn check_inputs(spec: &NetSpec, x: &Inputs<'_>, what: &str) -> Result<()> {
    if x.ncols() != spec.inputs() {
        // A sequence or image network names its T × n or c × h × w, not "columns".
        return Err(Error::Shape(if spec.has_layer_stack() {
            format!(
                "{what} has {} values per example but the network reads {}: give examples shaped like its training data",
                x.ncols(),
                spec.input_text()
            )
        } else {
            format!(
                "{what} has {} columns but the network's input layer has {} units: each row must be one example of {} values",
                x.ncols(),
                spec.inputs(),
                spec.inputs()
            )
        }));
    }
    if let Some((r, c)) = x.first_non_finite() {
        return Err(Error::Data(format!(
            "{what} holds a NaN or infinite value at row {r}, column {c}: clean or drop that example"
        )));
    }
    Ok(())
}

impl<F: Real> CpuBackend<F> {
    /// A backend for `spec`, with no data loaded yet. Errors: the spec's own error
    /// ([`NetSpec::validate`]), or `Error::Shape` when its layer stack does not fit together.
    pub fn new(spec: NetSpec) -> Result<CpuBackend<F>> {
        spec.validate()?;
        let layout = ThetaLayout::new(&spec);
        let plan = stack::Plan::of(&spec)?;
        Ok(CpuBackend {
            spec,
            layout,
            plan,
            data: Loaded::empty(),
            scratch: net::Scratch::default(),
            grad: Vec::new(),
            theta_real: Vec::new(),
            sparsity_means: None,
        })
    }

    /// Where each layer's W⁽ˡ⁾ (s_{l+1} × s_l, row-major) and b⁽ˡ⁾ sit in θ.
    pub fn layout(&self) -> &ThetaLayout {
        &self.layout
    }

    /// Σᵢ σ(z⁽²⁾ᵢⱼ) and Σᵢ σ(−z⁽²⁾ᵢⱼ) of the first hidden layer over `batch` of the loaded
    /// examples, widened to f64 ([`net::sparsity_sums`]): the sums behind ρ̂ and 1 − ρ̂ that
    /// data-parallel training adds over all shards ([`crate::dist`]). Errors: a network
    /// without KL sparsity, θ or a batch that does not fit.
    pub fn sparsity_sums(&mut self, theta: &[f64], batch: Batch<'_>) -> Result<(Vec<f64>, Vec<f64>)> {
        if self.spec.sparsity.is_none() || self.plan.is_some() {
            return Err(Error::Data(format!("{} has no KL sparsity term to sum ρ̂ for", self.spec.describe())));
        }
        let theta = self.theta(theta)?;
        let (layout, scratch) = (&self.layout, &mut self.scratch);
        let (a, c) = self.data.with_batch(batch, |x, _| net::sparsity_sums(scratch, layout, &theta, x))?;
        Ok((a.iter().map(|v| v.f64()).collect(), c.iter().map(|v| v.f64()).collect()))
    }

    /// ρ̂ⱼ and 1 − ρ̂ⱼ (one per first-layer hidden unit, each in (0, 1)) for the KL sparsity
    /// term of the next evaluations, instead of each batch's own means; `None` goes back to
    /// the batch's own. Data-parallel training sets the means over all shards here
    /// ([`crate::dist`]). Errors: a network without KL sparsity, or means of the wrong length.
    pub fn set_sparsity_means(&mut self, means: Option<(Vec<f64>, Vec<f64>)>) -> Result<()> {
        let Some((rho_hat, complement)) = means else {
            self.sparsity_means = None;
            return Ok(());
        };
        let hidden = self.layout.shapes.first().map_or(0, |s| s.0);
        if self.spec.sparsity.is_none() || self.plan.is_some() {
            return Err(Error::Data(format!("{} has no KL sparsity term to take ρ̂ for", self.spec.describe())));
        }
        if rho_hat.len() != hidden || complement.len() != hidden {
            return Err(Error::Shape(format!(
                "ρ̂ has {} and 1 − ρ̂ {} values but the first hidden layer has {hidden} units",
                rho_hat.len(),
                complement.len()
            )));
        }
        let real = |v: Vec<f64>| ndarray::Array1::from_iter(v.into_iter().map(F::of));
        self.sparsity_means = Some(net::Sparse { rho_hat: real(rho_hat), rho_hat_complement: real(complement) });
        Ok(())
    }

    /// θ in the backend's precision, after checking its length and that every value is finite
    /// there.
    fn theta(&self, theta: &[f64]) -> Result<Vec<F>> {
        crate::backend::check_theta_len(&self.spec, theta.len())?;
        crate::backend::check_theta_values(theta, F::max_value().f64(), &self.name())?;
        Ok(theta.iter().map(|&v| F::of(v)).collect())
    }

    /// [`Backend::cost_and_grad`] at θ already in the backend's precision (and checked).
    fn cost_and_grad_real(&mut self, theta: &[F], batch: Batch<'_>, grad: &mut [f64]) -> Result<Cost> {
        if grad.len() != theta.len() {
            return Err(Error::Shape(format!("gradient buffer has {} values, θ has {}", grad.len(), theta.len())));
        }
        // Every value of g is written by the pass (∇W from λW and δᵀA, ∇b from the sums).
        let (spec, layout, scratch, g) = (&self.spec, &self.layout, &mut self.scratch, &mut self.grad);
        let given = self.sparsity_means.as_ref();
        g.resize(theta.len(), F::zero());
        let cost = match &self.plan {
            Some(plan) => self
                .data
                .with_batch(batch, |x, y| stack::cost_and_grad(plan, scratch, spec, layout, theta, x, y, Some(g)))?,
            None => self.data.with_batch(batch, |x, y| {
                net::cost_and_grad_given_sparsity(scratch, spec, layout, theta, x, y, Some(g), given)
            }),
        };
        real::widen_into(&self.grad, grad);
        cost
    }
}

impl<F: Real> Loaded<F> {
    /// Runs `f` on the selected rows of the loaded data: views for `All` and `Rows`, a gathered
    /// copy for `Indices`.
    fn with_batch<R>(&self, batch: Batch<'_>, f: impl FnOnce(ArrayView2<F>, TargetView<F>) -> R) -> Result<R> {
        // `set_data` refuses an empty data set, so no rows means nothing was loaded (the GPU
        // backend says the same).
        if self.x.nrows() == 0 {
            return Err(Error::Data("no data loaded: call set_data first".into()));
        }
        batch.len_checked(self.x.nrows())?;
        let out = match batch {
            Batch::All => f(self.x.view(), self.target_view(|v| v, |l| l)),
            Batch::Rows(r) => {
                let x = rows_of(self.x.view(), r.clone());
                let steps = self.label_steps;
                f(x, self.target_view(|v| rows_of(v, r.clone()), |l| &l[r.start * steps..r.end * steps]))
            }
            Batch::Indices(ix) => {
                let x = self.x.select(Axis(0), ix);
                let (values, labels);
                let y = match &self.targets {
                    OwnedTargets::Inputs => TargetView::Inputs,
                    OwnedTargets::Labels(l) => {
                        let steps = self.label_steps;
                        labels =
                            ix.iter().flat_map(|&i| l[i * steps..(i + 1) * steps].iter().copied()).collect::<Vec<_>>();
                        TargetView::Labels(&labels)
                    }
                    OwnedTargets::Values(v) => {
                        values = v.select(Axis(0), ix);
                        TargetView::Values(values.view())
                    }
                };
                f(x.view(), y)
            }
        };
        Ok(out)
    }

    fn target_view<'a>(
        &'a self,
        values: impl FnOnce(ArrayView2<'a, F>) -> ArrayView2<'a, F>,
        labels: impl FnOnce(&'a [usize]) -> &'a [usize],
    ) -> TargetView<'a, F> {
        match &self.targets {
            OwnedTargets::Inputs => TargetView::Inputs,
            OwnedTargets::Labels(l) => TargetView::Labels(labels(l)),
            OwnedTargets::Values(v) => TargetView::Values(values(v.view())),
        }
    }
}

impl<F: Real> Backend for CpuBackend<F> {
    fn name(&self) -> String {
        format!("cpu {}", F::NAME)
    }

    fn spec(&self) -> &NetSpec {
        &self.spec
    }

    fn set_data(&mut self, x: Inputs<'_>, targets: Targets<'_>) -> Result<()> {
        validate_data(&self.spec, &x, &targets)?;
        // The old data goes first, so that it never sits beside the new.
        self.data = Loaded::empty();
        self.data.label_steps = self.spec.output_steps();
        self.data.targets = match targets {
            Targets::Inputs => OwnedTargets::Inputs,
            Targets::Labels(labels) => OwnedTargets::Labels(labels.to_vec()),
            Targets::Values(y) => OwnedTargets::Values(real_rows(y)),
        };
        self.data.x = real_rows(x);
        Ok(())
    }

    fn num_examples(&self) -> usize {
        self.data.x.nrows()
    }

    fn cost_and_grad(&mut self, theta: &[f64], batch: Batch<'_>, grad: &mut [f64]) -> Result<Cost> {
        // θ converted (and checked) in one threaded pass into a kept buffer: the per-evaluation
        // work of an L-BFGS run besides the pass itself (BENCHMARKS.md).
        crate::backend::check_theta_len(&self.spec, theta.len())?;
        let mut theta_real = std::mem::take(&mut self.theta_real);
        if !real::narrow_checked(theta, F::max_value().f64(), &mut theta_real) {
            crate::backend::check_theta_values(theta, F::max_value().f64(), &self.name())?;
        }
        let result = self.cost_and_grad_real(&theta_real, batch, grad);
        self.theta_real = theta_real;
        result
    }

    fn cost(&mut self, theta: &[f64], batch: Batch<'_>) -> Result<Cost> {
        let theta = self.theta(theta)?;
        let (spec, layout, scratch) = (&self.spec, &self.layout, &mut self.scratch);
        let given = self.sparsity_means.as_ref();
        let cost = match &self.plan {
            Some(plan) => self
                .data
                .with_batch(batch, |x, y| stack::cost_and_grad(plan, scratch, spec, layout, &theta, x, y, None))??,
            None => self.data.with_batch(batch, |x, y| {
                net::cost_and_grad_given_sparsity(scratch, spec, layout, &theta, x, y, None, given)
            })?,
        };
        cost.finite(&self.name())
    }

    fn release_buffers(&mut self) {
        self.scratch = net::Scratch::default();
    }

    fn forward(&mut self, theta: &[f64], x: Inputs<'_>) -> Result<Vec<Array2<f64>>> {
        let theta = self.theta(theta)?;
        check_inputs(&self.spec, &x, "the input")?;
        let x = real_rows::<F>(x);
        if let Some(plan) = &self.plan {
            let acts = stack::forward(plan, &self.spec, &self.layout, &theta, x.view())?;
            return Ok(acts.iter().map(|a| a.mapv(F::f64)).collect());
        }
        let fwd = net::forward(&mut self.scratch, &self.spec, &self.layout, &theta, x.view());
        let activations = fwd.activations.iter().map(|a| a.mapv(F::f64)).collect();
        self.scratch.recycle_forward(fwd);
        Ok(activations)
    }

    /// As [`Backend::forward`], but only the output is widened to f64: the hidden layers'
    /// activations of 60,000 MNIST rows would be hundreds of MB in f64, for nothing. A layer
    /// stack predicts [`stack::CHUNK_ROWS`] rows at a time, keeping only the output.
    fn predict(&mut self, theta: &[f64], x: Inputs<'_>) -> Result<Array2<f64>> {
        let theta = self.theta(theta)?;
        check_inputs(&self.spec, &x, "the input")?;
        let x = real_rows::<F>(x);
        if let Some(plan) = &self.plan {
            return Ok(stack::predict(plan, &self.spec, &self.layout, &theta, x.view())?.mapv(F::f64));
        }
        let fwd = net::forward(&mut self.scratch, &self.spec, &self.layout, &theta, x.view());
        let out = fwd.activations.last().expect("a network has an output layer").mapv(F::f64);
        self.scratch.recycle_forward(fwd);
        Ok(out)
    }
}

/// The checks every backend makes before it accepts data: sizes against the spec, labels
/// against the classes, targets against the outputs, no NaN or infinity anywhere.
pub fn validate_data(spec: &NetSpec, x: &Inputs<'_>, targets: &Targets<'_>) -> Result<()> {
    check_inputs(spec, x, "the data")?;
    let m = x.nrows();
    if m == 0 {
        return Err(Error::Data("the data holds no examples".into()));
    }
    // A recurrent network with an output at every step takes S = T labels or target rows per
    // example (cpu::sequence).
    let steps = spec.output_steps();
    match (spec.output, targets) {
        (Output::Softmax, Targets::Labels(labels)) => {
            let k = spec.outputs();
            if labels.len() != m * steps {
                return Err(Error::Shape(match steps {
                    1 => format!("{} labels for {m} examples: give one label per row", labels.len()),
                    _ => format!("{} labels for {m} sequences: give {steps} per sequence, one per step", labels.len()),
                }));
            }
            if let Some((i, &l)) = labels.iter().enumerate().find(|&(_, &l)| l >= k) {
                return Err(Error::Data(format!(
                    "label {l} of example {i} is out of range: the softmax output has {k} classes (0..{})",
                    k - 1
                )));
            }
        }
        (Output::Softmax, _) => {
            return Err(Error::Data("a softmax output needs class labels: give --labels".into()));
        }
        (Output::SquaredError(_), Targets::Labels(_)) => {
            return Err(Error::Data(
                "class labels need a softmax output (--output softmax); a squared-error output takes real-valued targets"
                    .into(),
            ));
        }
        (Output::SquaredError(_), Targets::Inputs) => {
            if spec.outputs() * steps != spec.inputs() {
                return Err(Error::Shape(format!(
                    "without targets the network reconstructs its input, so its output ({}) must match its input ({})",
                    spec.outputs() * steps,
                    spec.inputs()
                )));
            }
        }
        (Output::SigmoidBce, Targets::Values(y)) => {
            check_values_shape(spec, y, m, steps)?;
            check_zero_one(y)?;
        }
        (Output::SigmoidBce, _) => {
            return Err(Error::Data(
                "a sigmoid-bce output needs 0/1 targets, one column per label: give --targets (or 0/1 labels for one output)"
                    .into(),
            ));
        }
        (Output::SquaredError(_), Targets::Values(y)) => {
            if y.nrows() != m || y.ncols() != spec.outputs() * steps {
                return Err(Error::Shape(format!(
                    "targets are {}×{} but need to be {m}×{} (one row per example, one column per output{})",
                    y.nrows(),
                    y.ncols(),
                    spec.outputs() * steps,
                    if steps == 1 { String::new() } else { format!(" and step: {steps} steps of {}", spec.outputs()) }
                )));
            }
            check_inputs_finite(y, "the targets")?;
        }
    }
    Ok(())
}

/// Targets of m rows and one column per output (and step), or the one-line refusal.
fn check_values_shape(spec: &NetSpec, y: &Inputs<'_>, m: usize, steps: usize) -> Result<()> {
    if y.nrows() != m || y.ncols() != spec.outputs() * steps {
        return Err(Error::Shape(format!(
            "targets are {}×{} but need to be {m}×{} (one row per example, one column per output{})",
            y.nrows(),
            y.ncols(),
            spec.outputs() * steps,
            if steps == 1 { String::new() } else { format!(" and step: {steps} steps of {}", spec.outputs()) }
        )));
    }
    Ok(())
}

/// Refuses, naming the first one, a target that is not exactly 0 or 1: the binary
/// cross-entropy of [`Output::SigmoidBce`] takes labels, not probabilities or scores.
pub fn check_zero_one(y: &Inputs<'_>) -> Result<()> {
    fn first<T: Copy + Into<f64>>(v: ndarray::ArrayView2<'_, T>) -> Option<(usize, usize, f64)> {
        v.indexed_iter().map(|((r, c), &t)| (r, c, t.into())).find(|&(_, _, t)| t != 0.0 && t != 1.0)
    }
    let bad = match y {
        Inputs::F32(v) => first(v.view()),
        Inputs::Shared(v) => first(v.view()),
        Inputs::F64(v) => first(v.view()),
    };
    match bad {
        Some((r, c, t)) => Err(Error::Data(format!(
            "target {t} at row {}, column {} is not 0 or 1: a sigmoid-bce output takes 0/1 targets (one column per label)",
            r + 1,
            c + 1
        ))),
        None => Ok(()),
    }
}

fn rows_of<F>(x: ArrayView2<'_, F>, rows: std::ops::Range<usize>) -> ArrayView2<'_, F> {
    x.slice_move(ndarray::s![rows, ..])
}

fn check_inputs_finite(y: &Inputs<'_>, what: &str) -> Result<()> {
    match y.first_non_finite() {
        Some((r, c)) => Err(Error::Data(format!("{what} hold a NaN or infinite value at row {r}, column {c}"))),
        None => Ok(()),
    }
}
