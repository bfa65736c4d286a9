//! What an optimizer minimises: J(θ) and ∇J(θ) on a batch of examples. Optimizers see only
//! this trait, so the same code trains on the CPU and GPU backends (through
//! [`BackendObjective`]) and minimises test functions such as Rosenbrock (through
//! [`FnObjective`]). It must not hold optimizer state.

use crate::backend::{Backend, Batch, DeviceTraining};
use crate::model::ThetaLayout;
use crate::{Error, Result};

/// A differentiable cost over `num_examples()` examples. Full-batch methods ask for
/// [`Batch::All`]; minibatch methods for [`Batch::Indices`] (or `All` when one batch holds
/// every example).
pub trait Objective {
    /// Length of θ and of the gradient.
    fn dim(&self) -> usize;

    /// Number of examples that batches select from (1 for a plain function).
    fn num_examples(&self) -> usize;

    /// J(θ) on `batch`, with ∇J(θ) written into `grad`. NaN and infinities are returned as
    /// they are: the optimizer decides what they mean.
    fn eval(&mut self, theta: &[f64], batch: Batch<'_>, grad: &mut [f64]) -> Result<f64>;

    /// Minibatch training with θ kept where the cost is computed (GPU memory), when offered:
    /// the minibatch methods then call [`Objective::eval`] not at all.
    fn device_training(&mut self) -> Option<&mut dyn DeviceTraining> {
        None
    }
}

/// A backend's total cost (data term + weight decay + sparsity) as an objective. On a GPU
/// each [`Objective::eval`] uploads θ and reads back the gradient and the scalar cost:
/// 2·|θ|·4 bytes across the bus per evaluation (f32), the price L-BFGS, CG and full-batch
/// gradient descent pay, since they keep their vectors on the host. Minibatch SGD and Adam
/// avoid it through [`Objective::device_training`], which this forwards from the backend.
pub struct BackendObjective<'a> {
    backend: &'a mut dyn Backend,
    dim: usize,
}

impl<'a> BackendObjective<'a> {
    /// The backend must already hold its data ([`Backend::set_data`]).
    pub fn new(backend: &'a mut dyn Backend) -> BackendObjective<'a> {
        let dim = ThetaLayout::new(backend.spec()).len();
        BackendObjective { backend, dim }
    }

    /// The backend it evaluates on.
    pub fn backend(&mut self) -> &mut dyn Backend {
        self.backend
    }
}

impl Objective for BackendObjective<'_> {
    fn dim(&self) -> usize {
        self.dim
    }

    fn num_examples(&self) -> usize {
        self.backend.num_examples()
    }

    fn eval(&mut self, theta: &[f64], batch: Batch<'_>, grad: &mut [f64]) -> Result<f64> {
        Ok(self.backend.cost_and_grad(theta, batch, grad)?.total())
    }

    fn device_training(&mut self) -> Option<&mut dyn DeviceTraining> {
        self.backend.device_training()
    }
}

/// A plain function `f(θ, ∇f) -> f(θ)` that writes its gradient, as one "example": full
/// batch only.
pub struct FnObjective<F> {
    dim: usize,
    f: F,
}

impl<F: FnMut(&[f64], &mut [f64]) -> f64> FnObjective<F> {
    /// An objective over x of `dim` values: `f(x, grad)` returns J(x) and writes ∇J(x).
    pub fn new(dim: usize, f: F) -> FnObjective<F> {
        FnObjective { dim, f }
    }
}

impl<F: FnMut(&[f64], &mut [f64]) -> f64> Objective for FnObjective<F> {
    fn dim(&self) -> usize {
        self.dim
    }

    fn num_examples(&self) -> usize {
        1
    }

    fn eval(&mut self, theta: &[f64], batch: Batch<'_>, grad: &mut [f64]) -> Result<f64> {
        batch.len_checked(1)?;
        if theta.len() != self.dim || grad.len() != self.dim {
            return Err(Error::Shape(format!(
                "the function takes {} parameters but got θ of {} and a gradient buffer of {}",
                self.dim,
                theta.len(),
                grad.len()
            )));
        }
        Ok((self.f)(theta, grad))
    }
}
