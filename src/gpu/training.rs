//! Minibatch training with θ on the device: the GPU backend's [`DeviceTraining`] — θ and the
//! rule's moments loaded once, then per step the plan's forward and backward pass, ‖∇J‖² and
//! the update (`update.rs`) in one submission, 16 bytes read back. This module strings those
//! together; the update's formulas and buffers are `update.rs`'s, the passes are the plan's.
//!
//! For data-parallel ranks ([`crate::dist::DistBackend`]) the same step comes in two halves
//! cut at the gradient: [`DeviceTraining::gradient_step`] (forward and backward, one
//! submission, J's terms and ∇J read back: 4·|θ| + 16 bytes) and, once the ranks have summed
//! their gradients on the host (no GPU-aware MPI), [`DeviceTraining::apply_update`] (the sum
//! written back as ∇J: 4·|θ| + 16 bytes; λW, Σ W², ‖∇J‖² and the update in one submission; 16
//! bytes back). θ stays on the device throughout.

use super::backend::{GpuBackend, refused};
use super::kernels::Small;
use super::params::{CostSlot, SmallParams, SumOf};
use super::plan;
use super::plumbing::{read_back, write_f64};
use super::update::{DeviceUpdate, Transfers, UpdateKernels};
use crate::backend::{AppliedUpdate, Batch, DeviceStep, DeviceTraining};
use crate::optim::{UpdateScalars, UpdateState};
use crate::{Error, Result};

impl GpuBackend {
    /// Bytes that crossed the bus so far, by kind.
    pub fn transfers(&self) -> Transfers {
        self.resident.transfers
    }

    /// Whether minibatch training keeps θ on the device ([`DeviceTraining`], the default) or
    /// reads the gradient and updates θ on the host each step (for comparisons).
    pub fn set_device_training(&mut self, on: bool) {
        self.resident.disabled = !on;
    }

    fn device_update(&mut self) -> Result<&mut DeviceUpdate> {
        match (&mut self.resident.update, self.resident.uploads_at_load) {
            (Some(u), Some(at)) if at == self.resident.transfers.theta_uploads => Ok(u),
            _ => Err(Error::Gpu("θ on the device was replaced or never loaded: load it before stepping".into())),
        }
    }
}

impl DeviceTraining for GpuBackend {
    fn load(&mut self, theta: &[f64], update: &UpdateState) -> Result<()> {
        self.check_theta(theta)?;
        let device = &self.gpu.device;
        let kernels = self.resident.kernels.get_or_insert_with(|| UpdateKernels::new(device));
        let fits = self.resident.update.as_ref().is_some_and(|u| u.rule == update.rule);
        if !fits {
            let sparsity = self.spec.sparsity.is_some();
            let len = theta.len();
            let u =
                DeviceUpdate::new(device, kernels, update.rule, len, &self.theta, &self.grad, &self.scalars, sparsity)?;
            self.resident.update = Some(u);
        }
        write_f64(&self.gpu.queue, &self.theta, theta);
        self.resident.transfers.theta_uploads += 1;
        self.resident.uploads_at_load = Some(self.resident.transfers.theta_uploads);
        self.resident.update.as_mut().expect("made above").load(&self.gpu.queue, update)
    }

    fn step(&mut self, batch: Batch<'_>, scalars: &UpdateScalars) -> Result<DeviceStep> {
        self.device_update()?;
        let visit = self.visit(&batch)?;
        let key = self.plan_for(&visit, true)?;
        self.start_recurrent_state(&key)?;
        let gpu = &self.gpu;
        let kernels = self.resident.kernels.as_ref().expect("compiled by load");
        let update = self.resident.update.as_ref().expect("checked above");
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        self.poison_plan(&key);
        if self.poison {
            update.poison(&gpu.queue);
        }
        // The plan adds λW itself: the kernels take ∇J as it is.
        let update = self.resident.update.as_mut().expect("checked above");
        update.set_decay(0.0, 0);
        let update = self.resident.update.as_ref().expect("checked above");
        update.set_scalars(&gpu.queue, scalars);
        // With streamed data the update goes into the last chunk's submission.
        let bytes = plan::submit(
            gpu,
            &self.data,
            &self.plans[&key],
            &visit,
            |pass| update.record(kernels, pass),
            |encoder| encoder.copy_buffer_to_buffer(&self.scalars, 0, &self.scalar_staging, 0, 16),
        );
        self.data.data_bytes += bytes;
        let gpu = &self.gpu;
        let terms = read_back(&gpu.device, &self.scalar_staging, 4)?;
        for s in [oom, scope] {
            if let Some(e) = pollster::block_on(s.pop()) {
                return Err(refused(gpu, e));
            }
        }
        let cost = self.cost_terms(&terms, self.plans[&key].examples).total();
        let grad_norm = (terms[CostSlot::GradNormSquared as usize] as f64).sqrt();
        if cost.is_finite() && grad_norm.is_finite() {
            self.resident.update.as_mut().expect("checked above").stepped();
        }
        Ok(DeviceStep { cost, grad_norm })
    }

    fn roll_back(&mut self) -> Result<bool> {
        self.device_update()?;
        let update = self.resident.update.as_mut().expect("checked above");
        let mut encoder =
            self.gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("roll back") });
        let rolled = update.record_roll_back(&mut encoder, &self.theta);
        self.gpu.queue.submit([encoder.finish()]);
        Ok(rolled)
    }

    fn read(&mut self, theta: &mut [f64], update: &mut UpdateState) -> Result<()> {
        // Only the length: `theta` is where the device's θ goes, whatever it holds now.
        crate::backend::check_theta_len(&self.spec, theta.len())?;
        self.device_update()?;
        let u = self.resident.update.as_ref().expect("checked above");
        u.read(&self.gpu, &self.theta, theta, update)?;
        self.resident.transfers.theta_readbacks += 1;
        Ok(())
    }

    fn splits_at_gradient(&self) -> bool {
        true
    }

    /// The plan's forward and backward pass at the device's θ in one submission (as
    /// [`DeviceTraining::step`], without the update), J's terms and ∇J read back (counted in
    /// [`Transfers::grad_readbacks`]).
    fn gradient_step(&mut self, batch: Batch<'_>, grad: &mut [f64]) -> Result<crate::Cost> {
        if grad.len() != self.layout.len() {
            return Err(Error::Shape(format!(
                "gradient buffer has {} values, θ has {}",
                grad.len(),
                self.layout.len()
            )));
        }
        self.device_update()?;
        let visit = self.visit(&batch)?;
        let key = self.plan_for(&visit, true)?;
        self.start_recurrent_state(&key)?;
        let gpu = &self.gpu;
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        self.poison_plan(&key);
        let bytes = (grad.len() * 4) as u64;
        let sent = plan::submit(
            gpu,
            &self.data,
            &self.plans[&key],
            &visit,
            |_| {},
            |encoder| {
                encoder.copy_buffer_to_buffer(&self.scalars, 0, &self.scalar_staging, 0, 16);
                encoder.copy_buffer_to_buffer(&self.grad, 0, &self.grad_staging, 0, bytes);
            },
        );
        self.data.data_bytes += sent;
        let gpu = &self.gpu;
        let terms = read_back(&gpu.device, &self.scalar_staging, 4);
        let g = read_back(&gpu.device, &self.grad_staging, grad.len());
        for s in [oom, scope] {
            if let Some(e) = pollster::block_on(s.pop()) {
                return Err(refused(gpu, e));
            }
        }
        let (terms, g) = (terms?, g?);
        grad.iter_mut().zip(&g).for_each(|(o, &v)| *o = v as f64);
        self.resident.transfers.grad_readbacks += 1;
        Ok(self.cost_terms(&terms, self.plans[&key].examples))
    }

    /// `grad` written into the device's ∇J, the cost terms set to [0 or NaN (by
    /// `data_cost_finite`), Σ W² (when λ ≠ 0), 0, ‖∇J + λW‖²], then the update kernels with λW
    /// added over the weights (`update.wgsl`): one submission, 16 bytes back.
    fn apply_update(
        &mut self,
        grad: &[f64],
        weight_decay: f64,
        data_cost_finite: bool,
        scalars: &UpdateScalars,
    ) -> Result<AppliedUpdate> {
        if grad.len() != self.layout.len() {
            return Err(Error::Shape(format!("gradient of {} values for θ of {}", grad.len(), self.layout.len())));
        }
        self.device_update()?;
        let weights = if weight_decay != 0.0 { self.layout.all_weights().len() } else { 0 };
        let weights = u32::try_from(weights).map_err(|_| Error::Shape(format!("{weights} weights overflow u32")))?;
        if weights > 0 && self.resident.weight_squares.is_none() {
            // Σ W² over θ's weight prefix into the cost terms, as the plan's weight squares.
            let p = SmallParams {
                act: SumOf::Squares as u32,
                out_off: CostSlot::WeightSquares as u32,
                len: weights,
                ..Default::default()
            };
            let (k, device) = (&self.kernels, &self.gpu.device);
            let op = k.small(device, Small::SumRange, Some(&self.theta), None, Some(&self.scalars), None, p, [1, 1, 1]);
            self.resident.weight_squares = Some(op);
        }
        let gpu = &self.gpu;
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        write_f64(&gpu.queue, &self.grad, grad);
        let data = if data_cost_finite { 0.0 } else { f32::NAN };
        gpu.queue.write_buffer(&self.scalars, 0, bytemuck::cast_slice(&[data, 0.0, 0.0, f32::NAN]));
        let update = self.resident.update.as_mut().expect("checked above");
        update.set_decay(weight_decay as f32, weights);
        update.poison(&gpu.queue);
        update.set_scalars(&gpu.queue, scalars);
        let kernels = self.resident.kernels.as_ref().expect("compiled by load");
        let mut encoder =
            gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("apply update") });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("apply update"),
                timestamp_writes: None,
            });
            if weights > 0 {
                self.resident.weight_squares.as_ref().expect("made above").record(&mut pass);
            }
            update.record(kernels, &mut pass);
        }
        encoder.copy_buffer_to_buffer(&self.scalars, 0, &self.scalar_staging, 0, 16);
        gpu.queue.submit([encoder.finish()]);
        let terms = read_back(&gpu.device, &self.scalar_staging, 4);
        for s in [oom, scope] {
            if let Some(e) = pollster::block_on(s.pop()) {
                return Err(refused(gpu, e));
            }
        }
        let terms = terms?;
        let weight_squares = terms[CostSlot::WeightSquares as usize] as f64;
        let grad_norm = (terms[CostSlot::GradNormSquared as usize] as f64).sqrt();
        // The condition update.wgsl checked.
        let stepped = data_cost_finite && weight_squares.is_finite() && grad_norm.is_finite();
        if stepped {
            update.stepped();
        }
        Ok(AppliedUpdate { grad_norm, weight_squares, stepped })
    }
}

/// The GPU backend as one rank's backend of a data-parallel job ([`crate::dist::DistBackend`]):
/// a sparse autoencoder's ρ̂ is taken from every rank between its two passes
/// ([`GpuBackend::evaluate_sharing_sparsity`]: two submissions, the column sums read back and
/// written again, 16 · hidden bytes across the bus); every other network as
/// [`crate::Backend`] evaluates it (one submission, ∇J read back for the sum over ranks).
impl crate::dist::ShardBackend for GpuBackend {
    fn backend(&mut self) -> &mut dyn crate::Backend {
        self
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn shares_sparsity(&self) -> bool {
        true
    }

    fn evaluate_sharing_sparsity(
        &mut self,
        theta: &[f64],
        batch: Batch<'_>,
        grad: Option<&mut [f64]>,
        share: &mut dyn FnMut(Vec<f64>) -> Result<Vec<f64>>,
    ) -> Result<crate::Cost> {
        GpuBackend::evaluate_sharing_sparsity(self, theta, batch, grad, share)
    }
}
