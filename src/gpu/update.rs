//! First-order updates on θ in device memory (`shaders/update.wgsl`): the kernels and device
//! state behind the GPU backend's `DeviceTraining` (`training.rs`). θ and the rule's moments are uploaded once per run;
//! each step records the forward and backward pass, ‖∇J‖² (a deterministic two-level sum) and
//! the update into one submission, and reads back 16 bytes: the three cost terms and ‖∇J‖².
//! The update is skipped on the device when any of those is not finite, and the θ before the
//! latest update is kept there, so a diverging run goes back to the last finite point without
//! a host copy of θ.
//!
//! The formulas are those of [`crate::optim::UpdateState::apply`], in f32; tests compare the
//! two. This module must not change how a cost or gradient is computed (that is the plan, `plan.rs`).

use bytemuck::{Pod, Zeroable};

use super::device::Gpu;
use super::params::{CostSlot, RuleCode};
use super::plumbing::{bind_all, layout, pipeline, poison, read_back, staging, storage, write_f64};
use crate::optim::{UpdateRule, UpdateScalars, UpdateState};
use crate::{Error, Result};

const UPDATE: &str = include_str!("../../shaders/update.wgsl");

/// Elements of θ one workgroup updates (BLOCK in update.wgsl): 256 invocations × 8.
pub const UPDATE_BLOCK: usize = 2048;

/// How often θ and ∇J crossed the bus, counted by the GPU backend: θ uploads (one per
/// evaluation on the host path, one per run on the device path), θ read-backs (device path:
/// one per epoch and at a stop) and gradient read-backs (host path: one per evaluation; the
/// device path of data-parallel ranks, `DeviceTraining::gradient_step`: one per step).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transfers {
    /// Times θ was written to the device.
    pub theta_uploads: u64,
    /// Times θ was read back (device training).
    pub theta_readbacks: u64,
    /// Times ∇J was read back (host path, and each rank's split step).
    pub grad_readbacks: u64,
}

/// The parameter block of update.wgsl, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct UpdateParams {
    len: u32,
    rule: u32,
    blocks: u32,
    check_sparsity: u32,
    learning_rate: f32,
    momentum: f32,
    beta1: f32,
    beta2: f32,
    epsilon: f32,
    bias_correction1: f32,
    bias_correction2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    /// λW is added to ∇J over θ's first `decay_len` values (the weights): the split step
    /// of data-parallel training (`training.rs`); 0 in the one-process step, whose plan
    /// adds λW itself.
    decay_len: u32,
    decay: f32,
    /// τ of clipping by global norm (0: none): the rule sees g·min(1, τ/‖g‖).
    clip_norm: f32,
    _pad: u32,
}

/// `rule`'s code in update.wgsl.
fn rule_code(rule: UpdateRule) -> u32 {
    (match rule {
        UpdateRule::Plain => RuleCode::Plain,
        UpdateRule::Momentum { nesterov: false, .. } => RuleCode::Momentum,
        UpdateRule::Momentum { nesterov: true, .. } => RuleCode::Nesterov,
        UpdateRule::Adam { .. } => RuleCode::Adam,
    }) as u32
}

/// The three pipelines of update.wgsl and their bind-group layout, compiled once per device.
pub struct UpdateKernels {
    layout: wgpu::BindGroupLayout,
    norm_partials: wgpu::ComputePipeline,
    norm_finish: wgpu::ComputePipeline,
    update: wgpu::ComputePipeline,
}

impl UpdateKernels {
    pub fn new(device: &wgpu::Device) -> UpdateKernels {
        // ∇J (read), θ, m, v, θ before, partial sums, cost terms, parameters.
        let rw = Some(false);
        let layout = layout(device, "update", &[Some(true), rw, rw, rw, rw, rw, rw, None]);
        let make = |entry| pipeline(device, &layout, UPDATE, entry);
        UpdateKernels {
            norm_partials: make("norm_partials"),
            norm_finish: make("norm_finish"),
            update: make("update"),
            layout,
        }
    }
}

/// The device state of one update rule for θ of `len` values: the moment vectors, θ before
/// the latest update, the partial sums of ‖∇J‖², the parameter block, and a bind group tying
/// them to the θ, ∇J and cost-term buffers they serve.
pub struct DeviceUpdate {
    /// The rule whose moments this state holds.
    pub(super) rule: UpdateRule,
    len: usize,
    first_moment: wgpu::Buffer,
    second_moment: wgpu::Buffer,
    before: wgpu::Buffer,
    partials: wgpu::Buffer,
    params: wgpu::Buffer,
    bind_group: wgpu::BindGroup,
    blocks: u32,
    check_sparsity: bool,
    /// (λ, weights): λW added to ∇J in the kernels ([`DeviceUpdate::set_decay`]).
    decay: (f32, u32),
    /// `before` holds θ before the latest update (none since the last load).
    has_before: bool,
}

impl DeviceUpdate {
    /// State for `rule` over `theta`, `grad` (|θ| values each) and `scalars` ([data, Σ W²,
    /// sparsity, ‖∇J‖²]); `check_sparsity` when scalars[2] is part of the cost.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        device: &wgpu::Device,
        kernels: &UpdateKernels,
        rule: UpdateRule,
        len: usize,
        theta: &wgpu::Buffer,
        grad: &wgpu::Buffer,
        scalars: &wgpu::Buffer,
        check_sparsity: bool,
    ) -> Result<DeviceUpdate> {
        let blocks = len.div_ceil(UPDATE_BLOCK).max(1);
        let max_groups = device.limits().max_compute_workgroups_per_dimension;
        let blocks = u32::try_from(blocks).ok().filter(|&b| b <= max_groups).ok_or_else(|| {
            Error::Gpu(format!(
                "θ of {len} values needs {blocks} update workgroups, more than this device dispatches ({max_groups}): use a smaller network or --backend cpu"
            ))
        })?;
        // Rules without moments bind 4-value placeholders.
        let moment = |i: usize, label| storage(device, label, if rule.num_moments() > i { len } else { 4 });
        let (first_moment, second_moment) = (moment(0, "first moment"), moment(1, "second moment"));
        let before = storage(device, "θ before the update", len);
        let partials = storage(device, "‖∇J‖² partials", blocks as usize);
        let params = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("update parameters"),
            size: std::mem::size_of::<UpdateParams>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let buffers = [grad, theta, &first_moment, &second_moment, &before, &partials, scalars, &params];
        let bind_group = bind_all(device, &kernels.layout, &buffers);
        Ok(DeviceUpdate {
            rule,
            len,
            first_moment,
            second_moment,
            before,
            partials,
            params,
            bind_group,
            blocks,
            check_sparsity,
            decay: (0.0, 0),
            has_before: false,
        })
    }

    /// Uploads the rule's moment vectors (as f32) and forgets the θ before the last update.
    pub fn load(&mut self, queue: &wgpu::Queue, update: &UpdateState) -> Result<()> {
        if update.rule != self.rule || update.dim().is_some_and(|d| d != self.len) {
            return Err(Error::Shape(format!(
                "the update state ({}, θ of {:?}) does not fit this device state ({}, θ of {})",
                update.rule.name(),
                update.dim(),
                self.rule.name(),
                self.len
            )));
        }
        for (moment, buf) in [(&update.first_moment, &self.first_moment), (&update.second_moment, &self.second_moment)]
        {
            if !moment.is_empty() {
                write_f64(queue, buf, moment);
            }
        }
        self.has_before = false;
        Ok(())
    }

    /// Sets the step's learning rate, momentum and bias corrections (written before the
    /// submission that uses them).
    pub fn set_scalars(&self, queue: &wgpu::Queue, s: &UpdateScalars) {
        self.write_params(queue, s, 0.0);
    }

    /// [`DeviceUpdate::set_scalars`] with clipping by global norm for that step (MATH.md,
    /// "Backpropagation through time"): with `Some(τ)` the rule sees g·min(1, τ/‖g‖₂), ‖g‖₂
    /// from the device's fixed-order sum of g² — [`crate::optim::clip_by_global_norm`]'s
    /// formula in f32; `None`: g as it is. Refused ([`Error::Data`]): τ not a finite number
    /// > 0 in f32.
    pub fn set_scalars_clipped(&self, queue: &wgpu::Queue, s: &UpdateScalars, tau: Option<f64>) -> Result<()> {
        let clip_norm = match tau {
            None => 0.0,
            Some(t) if t > 0.0 && (t as f32).is_finite() && t as f32 > 0.0 => t as f32,
            Some(t) => return Err(Error::Data(format!("the clipping norm τ = {t} must be a finite number > 0"))),
        };
        self.write_params(queue, s, clip_norm);
        Ok(())
    }

    fn write_params(&self, queue: &wgpu::Queue, s: &UpdateScalars, clip_norm: f32) {
        let p = UpdateParams {
            len: self.len as u32,
            rule: rule_code(self.rule),
            blocks: self.blocks,
            check_sparsity: self.check_sparsity as u32,
            learning_rate: s.learning_rate as f32,
            momentum: s.momentum as f32,
            beta1: s.beta1 as f32,
            beta2: s.beta2 as f32,
            epsilon: s.epsilon as f32,
            bias_correction1: s.bias_correction1 as f32,
            bias_correction2: s.bias_correction2 as f32,
            one_minus_beta1: (1.0 - s.beta1) as f32,
            one_minus_beta2: (1.0 - s.beta2) as f32,
            decay_len: self.decay.1,
            decay: self.decay.0,
            clip_norm,
            _pad: 0,
        };
        queue.write_buffer(&self.params, 0, bytemuck::bytes_of(&p));
    }

    /// From the next [`DeviceUpdate::set_scalars`] on, the kernels take ∇J + λW over θ's first
    /// `weights` values instead of ∇J: for a gradient summed over ranks without weight decay
    /// (`GpuBackend`'s `apply_update`). (0, 0), the default, leaves ∇J as it is.
    pub fn set_decay(&mut self, lambda: f32, weights: u32) {
        self.decay = (lambda, weights.min(self.len as u32));
    }

    /// Records ‖∇J‖² and the (conditional) update into `pass`, after the gradient's passes.
    pub fn record(&self, kernels: &UpdateKernels, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_bind_group(0, &self.bind_group, &[]);
        pass.set_pipeline(&kernels.norm_partials);
        pass.dispatch_workgroups(self.blocks, 1, 1);
        pass.set_pipeline(&kernels.norm_finish);
        pass.dispatch_workgroups(1, 1, 1);
        pass.set_pipeline(&kernels.update);
        pass.dispatch_workgroups(self.blocks, 1, 1);
    }

    /// The step just submitted was finite, so the update ran and `before` is valid.
    pub fn stepped(&mut self) {
        self.has_before = true;
    }

    /// Records the copy of θ before the latest update over `theta`; false when there is none.
    pub fn record_roll_back(&mut self, encoder: &mut wgpu::CommandEncoder, theta: &wgpu::Buffer) -> bool {
        if !self.has_before {
            return false;
        }
        encoder.copy_buffer_to_buffer(&self.before, 0, theta, 0, (self.len * 4) as u64);
        self.has_before = false;
        true
    }

    /// Fills the unwritten outputs (partial sums) with NaN: for tests.
    pub fn poison(&self, queue: &wgpu::Queue) {
        poison(queue, &self.partials);
    }

    /// Reads θ from `theta` and the moments back into `update` (as f64).
    pub fn read(&self, gpu: &Gpu, theta_buf: &wgpu::Buffer, theta: &mut [f64], update: &mut UpdateState) -> Result<()> {
        let mut sources = vec![theta_buf];
        if self.rule.num_moments() >= 1 {
            sources.push(&self.first_moment);
        }
        if self.rule.num_moments() >= 2 {
            sources.push(&self.second_moment);
        }
        let values = read_buffers(gpu, &sources, self.len)?;
        let targets = [Some(theta), Some(&mut update.first_moment[..]), Some(&mut update.second_moment[..])];
        for (v, t) in values.iter().zip(targets.into_iter().flatten()) {
            t.iter_mut().zip(v).for_each(|(o, &x)| *o = x as f64);
        }
        Ok(())
    }
}

/// The first `len` floats of each buffer, through one staging buffer and one submission.
fn read_buffers(gpu: &Gpu, sources: &[&wgpu::Buffer], len: usize) -> Result<Vec<Vec<f32>>> {
    let bytes = (len * 4) as u64;
    let staging = staging(&gpu.device, "θ and moments readback", len.max(4) * sources.len());
    let mut encoder = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("read θ") });
    for (i, src) in sources.iter().enumerate() {
        encoder.copy_buffer_to_buffer(src, 0, &staging, i as u64 * bytes, bytes);
    }
    gpu.queue.submit([encoder.finish()]);
    let flat = read_back(&gpu.device, &staging, len * sources.len())?;
    Ok(flat.chunks(len.max(1)).map(<[f32]>::to_vec).collect())
}

/// The GPU backend's side of [`DeviceTraining`]: the update kernels (compiled on first use),
/// the device state of the current rule, and the transfer counters.
#[derive(Default)]
pub struct Resident {
    /// The update kernels, compiled at the first load.
    pub(super) kernels: Option<UpdateKernels>,
    /// The loaded rule's device state.
    pub(super) update: Option<DeviceUpdate>,
    /// `transfers.theta_uploads` when θ was loaded: any upload since replaced it.
    pub(super) uploads_at_load: Option<u64>,
    pub(super) transfers: Transfers,
    /// Off: the backend offers no device training (the host path, for comparisons).
    pub(super) disabled: bool,
    /// Σ W² of θ into the cost terms, for the split step's weight decay (`training.rs`).
    pub(super) weight_squares: Option<super::plumbing::Op>,
}

/// The update kernel alone, on θ and gradients the caller gives: the parity tests' and
/// benchmarks' way in. The cost terms it checks are zeros, so every finite gradient steps.
pub struct StandaloneUpdate {
    kernels: UpdateKernels,
    update: DeviceUpdate,
    theta: wgpu::Buffer,
    grad: wgpu::Buffer,
    scalars: wgpu::Buffer,
    staging: wgpu::Buffer,
    len: usize,
    /// τ for the step being taken ([`StandaloneUpdate::step_clipped`]).
    clip: Option<f64>,
}

impl StandaloneUpdate {
    /// Uploads θ and `state`'s moments, after filling every device buffer with NaN.
    pub fn new(gpu: &Gpu, theta: &[f64], state: &UpdateState) -> Result<StandaloneUpdate> {
        let device = &gpu.device;
        let kernels = UpdateKernels::new(device);
        let len = theta.len();
        let (t, g, s) = (storage(device, "θ", len), storage(device, "∇J", len), storage(device, "cost terms", 4));
        let mut update = DeviceUpdate::new(device, &kernels, state.rule, len, &t, &g, &s, false)?;
        for buf in [&t, &g, &update.first_moment, &update.second_moment, &update.before] {
            poison(&gpu.queue, buf);
        }
        write_f64(&gpu.queue, &t, theta);
        update.load(&gpu.queue, state)?;
        let staging = staging(device, "‖∇J‖² readback", 4);
        Ok(StandaloneUpdate { kernels, update, theta: t, grad: g, scalars: s, staging, len, clip: None })
    }

    /// One update with gradient `grad`; returns ‖∇J‖₂ as the device summed it. Poisons the
    /// partial sums and the norm's slot first.
    pub fn step(&mut self, gpu: &Gpu, grad: &[f64], scalars: &UpdateScalars) -> Result<f64> {
        if grad.len() != self.len {
            return Err(Error::Shape(format!("gradient of {} values for θ of {}", grad.len(), self.len)));
        }
        write_f64(&gpu.queue, &self.grad, grad);
        gpu.queue.write_buffer(&self.scalars, 0, bytemuck::cast_slice(&[0.0f32, 0.0, 0.0, f32::NAN]));
        self.update.poison(&gpu.queue);
        self.update.set_scalars_clipped(&gpu.queue, scalars, self.clip)?;
        let mut encoder = gpu.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("update") });
        {
            let mut pass = encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("update"), timestamp_writes: None });
            self.update.record(&self.kernels, &mut pass);
        }
        encoder.copy_buffer_to_buffer(&self.scalars, 0, &self.staging, 0, 16);
        gpu.queue.submit([encoder.finish()]);
        let terms = read_back(&gpu.device, &self.staging, 4)?;
        self.update.stepped();
        Ok((terms[CostSlot::GradNormSquared as usize] as f64).sqrt())
    }

    /// [`StandaloneUpdate::step`] with the gradient clipped to norm `tau` on the device
    /// ([`DeviceUpdate::set_scalars_clipped`]); returns ‖∇J‖₂ before clipping.
    pub fn step_clipped(&mut self, gpu: &Gpu, grad: &[f64], scalars: &UpdateScalars, tau: f64) -> Result<f64> {
        self.clip = Some(tau);
        let norm = self.step(gpu, grad, scalars);
        self.clip = None;
        norm
    }

    /// θ and the moments as they stand on the device.
    pub fn read(&self, gpu: &Gpu, theta: &mut [f64], state: &mut UpdateState) -> Result<()> {
        self.update.read(gpu, &self.theta, theta, state)
    }
}
