//! Minibatch training of a recurrent network with θ, the rule's moments and the carried
//! state on the device, one window after another (the character model,
//! `train::char_model`): each window written over the last in place so its plan is kept,
//! and one submission per update with the clipping by global norm inside the update kernel
//! (`update.wgsl`). The passes are the plan's (`layers/recurrent.rs`), the update's formulas
//! `update.rs`'s; this module strings them together as `training.rs` does for
//! [`crate::backend::DeviceTraining`].

use super::GpuBackend;
use super::plumbing::u32_of;
use crate::{Error, Result};

impl GpuBackend {
    /// As [`crate::Backend::set_data`], but data with the rows and widths of those loaded (and
    /// resident on the device) are written over them in place, so the plans recorded on their
    /// buffers are kept: a run that loads a new minibatch of one shape every step builds its
    /// plan once ([`GpuBackend::builds`]). Any other data (another shape, or streamed) are
    /// loaded as `set_data` loads them. Neither touches θ on the device nor the carried
    /// state. Errors as `set_data`.
    pub fn replace_data(&mut self, x: crate::backend::Inputs<'_>, targets: crate::backend::Targets<'_>) -> Result<()> {
        use crate::backend::{Inputs, Targets};
        crate::cpu::validate_data(&self.spec, &x, &targets)?;
        u32_of(x.nrows(), "the number of examples")?;
        let x = match x {
            Inputs::Shared(x) => std::sync::Arc::clone(x),
            x => std::sync::Arc::new(crate::cpu::to_real::<f32>(x)),
        };
        let y = match targets {
            Targets::Values(v) => Some(crate::cpu::to_real::<f32>(v)),
            _ => None,
        };
        let labels = match targets {
            Targets::Labels(l) => Some(l.iter().map(|&v| v as u32).collect::<Vec<u32>>()),
            _ => None,
        };
        match self.data.rewrite(&self.gpu, (x, y, labels)) {
            Ok(()) => Ok(()),
            Err((x, y, labels)) => {
                self.plans.clear();
                self.data.load(&self.gpu, x, y, labels)
            }
        }
    }

    /// One update with θ on the device ([`crate::backend::DeviceTraining::step`] on all the
    /// loaded rows, from the carried state as [`GpuBackend::set_recurrent_state`] says), the
    /// gradient clipped by global norm on the device first when `clip_norm` is `Some(τ)`:
    /// g·min(1, τ/‖g‖₂), ‖g‖₂ a fixed-order sum (no float atomics), the scale applied inside
    /// the update kernel ([`super::update::DeviceUpdate::set_scalars_clipped`]). One
    /// submission; 16 bytes read back. Returns J's terms at θ before the update and ‖∇J‖₂
    /// before clipping; when either is not finite nothing was updated (θ stays at the point
    /// evaluated). Errors: θ not loaded (`DeviceTraining::load`) or replaced since, no data,
    /// τ not a finite number > 0, a device error.
    pub fn step_clipped(
        &mut self,
        scalars: &crate::optim::UpdateScalars,
        clip_norm: Option<f64>,
    ) -> Result<(crate::backend::Cost, f64)> {
        use super::params::CostSlot;
        let loaded = self.resident.uploads_at_load == Some(self.resident.transfers.theta_uploads);
        if self.resident.update.is_none() || !loaded {
            return Err(Error::Gpu("θ on the device was replaced or never loaded: load it before stepping".into()));
        }
        let visit = self.visit(&crate::backend::Batch::All)?;
        let key = self.plan_for(&visit, true)?;
        self.start_recurrent_state(&key)?;
        let gpu = &self.gpu;
        let kernels = self.resident.kernels.as_ref().expect("compiled by load");
        let update = self.resident.update.as_ref().expect("checked above");
        update.set_scalars_clipped(&gpu.queue, scalars, clip_norm)?;
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        self.poison_plan(&key);
        if self.poison {
            update.poison(&gpu.queue);
        }
        let bytes = super::plan::submit(
            gpu,
            &self.data,
            &self.plans[&key],
            &visit,
            |pass| update.record(kernels, pass),
            |encoder| encoder.copy_buffer_to_buffer(&self.scalars, 0, &self.scalar_staging, 0, 16),
        );
        self.data.data_bytes += bytes;
        let gpu = &self.gpu;
        let terms = super::plumbing::read_back(&gpu.device, &self.scalar_staging, 4)?;
        for s in [oom, scope] {
            if let Some(e) = pollster::block_on(s.pop()) {
                return Err(super::backend::refused(gpu, e));
            }
        }
        let cost = self.cost_terms(&terms, self.plans[&key].examples);
        let grad_norm = (terms[CostSlot::GradNormSquared as usize] as f64).sqrt();
        if cost.total().is_finite() && grad_norm.is_finite() {
            self.resident.update.as_mut().expect("checked above").stepped();
        }
        Ok((cost, grad_norm))
    }
}
