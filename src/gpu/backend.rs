//! The GPU backend itself: [`GpuBackend`], its device state (θ, ∇J, the cost terms, the
//! kernels), its settings, and [`Backend`] — each evaluation is a visit (`data.rs`), a plan
//! (`plan.rs`, `layers/plan.rs`) and one submission, then a read-back of the cost terms and,
//! when asked, ∇J. It must not record kernels itself (the plans do) nor hold row data beyond
//! what `data.rs` keeps.

use std::collections::HashMap;
use std::sync::Arc;

use ndarray::Array2;

use super::data::{self, Residency, Segment, Source, Visit};
use super::device::{Gpu, GpuOptions, MatmulKernel};
use super::kernels::Kernels;
use super::layers;
use super::layers::plan::StackRecorder;
use super::params::CostSlot;
use super::plan::{self, Plan, Recorder};
use super::plumbing::{poison, read_back, staging, storage, u32_of, write_f64};
use super::update;
use crate::backend::{Backend, Batch, Cost, DeviceTraining, Inputs, Targets};
use crate::cpu::{check_inputs, to_real, validate_data};
use crate::model::{NetSpec, Output, ThetaLayout};
use crate::{Error, Result};

/// How many times the backend built device state that should be built once per shape and
/// then reused: gathered-batch buffer sets (with their device gather) and evaluation plans
/// (workspace, bind groups, parameter blocks). For tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Builds {
    /// Gathered-batch buffer sets made (each with its device gather).
    pub gather_sets: u64,
    /// Evaluation plans built.
    pub plans: u64,
}

/// The wgpu backend: the cost, gradient and forward pass of [`Backend`] in f32 WGSL kernels
/// (see the module docs of `gpu` for chunks, streaming and gathering). θ, ∇J and the cost
/// terms live in device buffers of `layout.len()` f32 values; results are read back as f64.
pub struct GpuBackend {
    pub(super) spec: NetSpec,
    pub(super) layout: ThetaLayout,
    pub(super) gpu: Gpu,
    pub(super) kernels: Kernels,
    pub(super) theta: wgpu::Buffer,
    pub(super) grad: wgpu::Buffer,
    /// [data sum, Σ W², Σ β KL, ‖∇J‖²] of the last evaluation (slots: `params::CostSlot`).
    pub(super) scalars: wgpu::Buffer,
    pub(super) grad_staging: wgpu::Buffer,
    pub(super) scalar_staging: wgpu::Buffer,
    /// The loaded data: resident chunks or the streaming ring, and the gathered batches.
    pub(super) data: Residency,
    /// The plans built so far, by the segments they visit and whether they compute ∇J.
    pub(super) plans: HashMap<(Vec<Segment>, bool), Plan>,
    /// Plans built since the backend was made.
    pub(super) plans_built: u64,
    /// Fill workspace and outputs with NaN before every evaluation (`set_poison`).
    pub(super) poison: bool,
    /// Minibatch training with θ kept on the device (`update.rs`), and the transfer counts.
    pub(super) resident: update::Resident,
    /// The conv2d, pooling and maxout kernels, compiled for a layer-stack spec only.
    pub(super) layer_kernels: Option<layers::LayerKernels>,
    /// Where a recurrent network's evaluations start (`layers/recurrent.rs`).
    pub(super) recurrent: layers::recurrent::Carry,
}

impl GpuBackend {
    /// A GPU backend for `spec` on the adapter `options` select. Errors: a spec with layers
    /// beyond dense ([`GpuBackend::supports`]) before any adapter is opened.
    pub fn new(spec: NetSpec, options: &GpuOptions) -> Result<GpuBackend> {
        GpuBackend::supports(&spec)?;
        GpuBackend::on(spec, Gpu::open(options)?)
    }

    /// Whether this backend computes `spec`: every dense network, every layer stack of
    /// conv2d, max/mean pooling, maxout and dense layers (`layers/`), and every stack of rnn/lstm
    /// layers (`layers/recurrent.rs`). A recurrent layer inside another kind of stack is refused
    /// in one line before an adapter is opened.
    pub fn supports(spec: &NetSpec) -> Result<()> {
        match &spec.net {
            Some(stack)
                if stack.layers.iter().any(|l| l.is_recurrent()) && !stack.layers.iter().all(|l| l.is_recurrent()) =>
            {
                Err(Error::Gpu(format!(
                    "the GPU runs recurrent networks made of rnn/lstm layers only: use --backend cpu (the network: {})",
                    stack.describe()
                )))
            }
            _ => Ok(()),
        }
    }

    /// A GPU backend for `spec` on an opened device. Errors: an invalid or unsupported spec, or
    /// θ larger than one storage binding of `gpu`.
    pub fn on(spec: NetSpec, gpu: Gpu) -> Result<GpuBackend> {
        spec.validate()?;
        GpuBackend::supports(&spec)?;
        let layout = ThetaLayout::new(&spec);
        let device = &gpu.device;
        let kernels = Kernels::new(&gpu);
        let params = layout.len();
        let binding = data::max_buffer_bytes(&gpu.limits);
        if (params as u64) * 4 > binding {
            return Err(Error::Gpu(format!(
                "θ has {params} values ({} MB), more than one storage binding of this device holds ({} MB): use a smaller network or --backend cpu",
                params * 4 / 1_000_000,
                binding / 1_000_000
            )));
        }
        let stack = layers::plan::StackLayers::of(&spec)?;
        let widest = match &stack {
            Some(stack) => stack.widest(&spec),
            None => spec.layers.iter().copied().max().unwrap_or(1),
        } as u64;
        let mut max_chunk_rows = ((binding / 4 / widest) as usize).clamp(1, 1 << 20);
        if gpu.matmul == MatmulKernel::Texture {
            // Chunks no taller than a texture, so that every product of a chunk (the data as A
            // in the forward pass, as B in the weight gradient) takes the texture-fed kernel.
            max_chunk_rows = max_chunk_rows.min(gpu.limits.max_texture_dimension_2d as usize);
        }
        Ok(GpuBackend {
            data: {
                // Per step, T target rows (T·k values) and T labels per example.
                let mut data = Residency::new(
                    spec.inputs(),
                    spec.outputs() * spec.output_steps(),
                    max_chunk_rows,
                    data::default_max_resident_bytes(&gpu.limits),
                );
                data.label_steps = spec.output_steps();
                data
            },
            theta: storage(device, "θ", params),
            grad: storage(device, "∇J", params),
            scalars: storage(device, "cost terms", 4),
            grad_staging: staging(device, "∇J readback", params),
            scalar_staging: staging(device, "cost readback", 4),
            kernels,
            spec,
            layout,
            plans: HashMap::new(),
            plans_built: 0,
            poison: false,
            resident: update::Resident::default(),
            layer_kernels: stack.map(|_| layers::LayerKernels::new(device)),
            recurrent: Default::default(),
            gpu,
        })
    }

    /// Caps the rows per chunk (tests use this to exercise chunking on small data). Takes
    /// effect at the next `set_data`.
    pub fn set_max_chunk_rows(&mut self, rows: usize) {
        self.data.max_chunk_rows = rows.max(1);
        self.plans.clear();
    }

    /// Loaded data needing more than `bytes` of device memory (examples, targets and labels)
    /// stay on the host and are streamed through two chunk buffers, one submission per
    /// chunk, instead of being uploaded once. Default: [`super::default_max_resident_bytes`]; tests
    /// set it low to stream small data. Takes effect at the next `set_data`.
    pub fn set_max_resident_bytes(&mut self, bytes: u64) {
        self.data.max_resident_bytes = bytes;
    }

    /// Whether the loaded data are streamed from the host (see `set_max_resident_bytes`).
    pub fn is_streaming(&self) -> bool {
        self.data.is_streaming()
    }

    /// Whether shuffled minibatches of resident data are gathered on the device from an
    /// uploaded index list (the default) or on the host and uploaded row by row (for
    /// comparisons). Streamed data are always gathered on the host.
    pub fn set_device_gather(&mut self, on: bool) {
        self.data.device_gather = on;
    }

    /// Bytes of examples, targets, labels and batch row indices written to the device since
    /// the backend was made (θ is counted by [`GpuBackend::transfers`]).
    pub fn data_uploaded_bytes(&self) -> u64 {
        self.data.data_bytes
    }

    /// Gathered-batch buffer sets and evaluation plans built since the backend was made. For
    /// tests and diagnostics: a run that rebuilds them each step or epoch shows here.
    pub fn builds(&self) -> Builds {
        Builds { gather_sets: self.data.sets_built, plans: self.plans_built }
    }

    /// Before every evaluation, fill the gradient, the cost terms and every workspace buffer
    /// with NaN, so that an element a kernel forgot to write shows up in the result. For tests.
    pub fn set_poison(&mut self, on: bool) {
        self.poison = on;
    }

    /// The device this backend runs on.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// θ's length, and that every value is finite in f32.
    pub(super) fn check_theta(&self, theta: &[f64]) -> Result<()> {
        crate::backend::check_theta_len(&self.spec, theta.len())?;
        crate::backend::check_theta_values(theta, f32::MAX as f64, "gpu f32")
    }

    /// The plan for `visit`'s segments (built on first use); its key.
    pub(super) fn plan_for(&mut self, visit: &Visit, want_grad: bool) -> Result<(Vec<Segment>, bool)> {
        if self.data.chunk_rows.is_empty() {
            return Err(Error::Data("no data loaded: call set_data first".into()));
        }
        let key = (visit.segments.clone(), want_grad);
        if !self.plans.contains_key(&key) {
            let rec = self.recorder();
            let plan = match self.stack_recorder(&rec)? {
                Some(stack) => stack.build_stack_plan(&visit.segments, want_grad)?,
                None => rec.build_plan(&visit.segments, want_grad)?,
            };
            self.plans.insert(key.clone(), plan);
            self.plans_built += 1;
        }
        Ok(key)
    }

    /// Fills the plan's workspace, the gradient and the cost terms with NaN (`set_poison`).
    pub(super) fn poison_plan(&self, key: &(Vec<Segment>, bool)) {
        if self.poison {
            for buf in self.plans[key].workspace.iter().chain([&self.grad, &self.scalars]) {
                poison(&self.gpu.queue, buf);
            }
        }
    }

    /// The segments `batch` visits (see [`Residency::visit`]); plans built on a gathered set
    /// the visit dropped go with it. Errors: no data loaded, or rows out of range.
    pub(super) fn visit(&mut self, batch: &Batch) -> Result<Visit> {
        if self.data.chunk_rows.is_empty() {
            return Err(Error::Data("no data loaded: call set_data first".into()));
        }
        let visit = self.data.visit(&self.gpu, batch, self.poison)?;
        if let Some(old) = self.data.evicted.take() {
            self.plans.retain(|(segs, _), _| {
                !segs.iter().any(|s| matches!(s.chunk, Source::Gathered { set, .. } if set == old))
            });
        }
        Ok(visit)
    }

    /// What recording a plan or a forward pass reads.
    pub(super) fn recorder(&self) -> Recorder<'_> {
        Recorder {
            gpu: &self.gpu,
            kernels: &self.kernels,
            spec: &self.spec,
            layout: &self.layout,
            theta: &self.theta,
            grad: &self.grad,
            scalars: &self.scalars,
            data: &self.data,
        }
    }

    /// `rec` with the layer kernels when the spec is a layer stack; `None` for a dense network.
    fn stack_recorder<'a>(&'a self, rec: &'a Recorder<'a>) -> Result<Option<StackRecorder<'a>>> {
        if self.spec.net.is_none() {
            return Ok(None);
        }
        let kernels = self
            .layer_kernels
            .as_ref()
            .ok_or_else(|| Error::Gpu("the layer kernels were not compiled for this spec".into()))?;
        Ok(Some(StackRecorder { rec, kernels }))
    }

    /// Runs one evaluation: uploads θ, records the plan, submits it (once, or once per
    /// streamed chunk), reads back the cost terms and, when `grad` is given, the gradient.
    pub(super) fn evaluate(&mut self, theta: &[f64], batch: Batch<'_>, grad: Option<&mut [f64]>) -> Result<Cost> {
        self.check_theta(theta)?;
        let visit = self.visit(&batch)?;
        let want_grad = grad.is_some();
        let key = self.plan_for(&visit, want_grad)?;
        self.start_recurrent_state(&key)?;
        self.resident.transfers.theta_uploads += 1;
        self.resident.transfers.grad_readbacks += want_grad as u64;
        let gpu = &self.gpu;
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let oom = gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        write_f64(&gpu.queue, &self.theta, theta);
        self.poison_plan(&key);
        let bytes = plan::submit(
            &self.gpu,
            &self.data,
            &self.plans[&key],
            &visit,
            |_| {},
            |encoder| {
                encoder.copy_buffer_to_buffer(&self.scalars, 0, &self.scalar_staging, 0, 16);
                if want_grad {
                    encoder.copy_buffer_to_buffer(&self.grad, 0, &self.grad_staging, 0, (theta.len() * 4) as u64);
                }
            },
        );
        self.data.data_bytes += bytes;
        let gpu = &self.gpu;
        let scalars = read_back(&gpu.device, &self.scalar_staging, 4)?;
        if let Some(grad) = grad {
            let g = read_back(&gpu.device, &self.grad_staging, theta.len())?;
            grad.iter_mut().zip(&g).for_each(|(o, &v)| *o = v as f64);
        }
        for s in [oom, scope] {
            if let Some(e) = pollster::block_on(s.pop()) {
                return Err(refused(gpu, e));
            }
        }
        Ok(self.cost_terms(&scalars, self.plans[&key].examples))
    }

    /// One evaluation of a sparse autoencoder whose ρ̂ comes from the column sums of every
    /// rank of a data-parallel job (`dist::DistBackend`; MATH.md "Sparse autoencoder", DESIGN.md
    /// "Wave 2"): pass 1 on `batch` (one submission), then the column sums Σᵢ σ(z⁽²⁾ᵢⱼ) and
    /// Σᵢ σ(−z⁽²⁾ᵢⱼ) of this batch, 2 × hidden values (8 · hidden bytes), read back and handed
    /// to `share`, which returns ρ̂ and 1 − ρ̂ of the whole batch over every rank (2 × hidden);
    /// those are written back and pass 2 (the KL terms, forward, loss, backward) runs in a second
    /// submission. The data term and ∇J are this batch's means, as [`Backend::cost_and_grad`]
    /// gives them; the sparsity term β Σⱼ KL(ρ‖ρ̂ⱼ) is the whole batch's. The single-process
    /// evaluation ([`GpuBackend::evaluate`]) stays one submission. Errors: a spec without KL
    /// sparsity, θ or the batch refused as [`Backend::cost`] refuses them, a device error in
    /// either pass, or `share`'s error (returned as it is, pass 2 not run).
    pub fn evaluate_sharing_sparsity(
        &mut self,
        theta: &[f64],
        batch: Batch<'_>,
        grad: Option<&mut [f64]>,
        share: &mut dyn FnMut(Vec<f64>) -> Result<Vec<f64>>,
    ) -> Result<Cost> {
        self.check_theta(theta)?;
        if let Some(g) = &grad
            && g.len() != self.layout.len()
        {
            return Err(Error::Shape(format!("gradient buffer has {} values, θ has {}", g.len(), self.layout.len())));
        }
        let visit = self.visit(&batch)?;
        let want_grad = grad.is_some();
        let key = self.plan_for(&visit, want_grad)?;
        let Some(cut) = self.plans[&key].shared_sparsity.as_ref().map(|s| s.cut) else {
            return Err(Error::Data(format!("{} has no KL sparsity to share", self.spec.describe())));
        };
        self.resident.transfers.theta_uploads += 1;
        self.resident.transfers.grad_readbacks += want_grad as u64;
        let gpu = &self.gpu;
        let scopes = || {
            (
                gpu.device.push_error_scope(wgpu::ErrorFilter::Validation),
                gpu.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory),
            )
        };
        let check = |(scope, oom): (wgpu::ErrorScopeGuard, wgpu::ErrorScopeGuard)| -> Result<()> {
            for s in [oom, scope] {
                if let Some(e) = pollster::block_on(s.pop()) {
                    return Err(refused(gpu, e));
                }
            }
            Ok(())
        };
        // Pass 1: the column sums, read back.
        let guards = scopes();
        write_f64(&gpu.queue, &self.theta, theta);
        self.poison_plan(&key);
        let (plan, shared) = (&self.plans[&key], self.plans[&key].shared_sparsity.as_ref().expect("checked above"));
        let values = 2 * shared.hidden;
        let mut bytes = plan::submit_part(
            gpu,
            &self.data,
            plan,
            &visit,
            0..cut,
            &[],
            |_| {},
            |encoder| encoder.copy_buffer_to_buffer(&shared.colsum, 0, &shared.staging, 0, (values * 4) as u64),
        );
        let sums = read_back(&gpu.device, &shared.staging, values);
        check(guards)?;
        let sums: Vec<f64> = sums?.into_iter().map(f64::from).collect();
        let means = share(sums)?;
        if means.len() != values {
            return Err(Error::Shape(format!("ρ̂ and 1 − ρ̂ have {} values, the hidden layer {}", means.len(), values)));
        }
        // Pass 2: the KL terms from the whole batch's ρ̂, then forward, loss and backward.
        let guards = scopes();
        write_f64(&gpu.queue, &shared.colsum, &means);
        let prefix = [&shared.kl_from_means, &plan.ops[cut + 1]];
        bytes += plan::submit_part(
            gpu,
            &self.data,
            plan,
            &visit,
            cut + 2..plan.ops.len(),
            &prefix,
            |_| {},
            |encoder| {
                encoder.copy_buffer_to_buffer(&self.scalars, 0, &self.scalar_staging, 0, 16);
                if want_grad {
                    encoder.copy_buffer_to_buffer(&self.grad, 0, &self.grad_staging, 0, (theta.len() * 4) as u64);
                }
            },
        );
        let scalars = read_back(&gpu.device, &self.scalar_staging, 4);
        let g = if want_grad { Some(read_back(&gpu.device, &self.grad_staging, theta.len())) } else { None };
        check(guards)?;
        let scalars = scalars?;
        if let (Some(grad), Some(g)) = (grad, g) {
            grad.iter_mut().zip(&g?).for_each(|(o, &v)| *o = v as f64);
        }
        let examples = self.plans[&key].examples;
        self.data.data_bytes += bytes;
        Ok(self.cost_terms(&scalars, examples))
    }

    /// J's terms from the cost-terms buffer ([`CostSlot`]: data sum, Σ W², Σ β KL, …) of `examples` examples.
    pub(super) fn cost_terms(&self, scalars: &[f32], examples: usize) -> Cost {
        let m = examples as f64;
        let data = match self.spec.output {
            Output::Softmax | Output::SigmoidBce => scalars[CostSlot::Data as usize] as f64 / m,
            Output::SquaredError(_) => 0.5 * scalars[CostSlot::Data as usize] as f64 / m,
        };
        let sparsity = if self.spec.sparsity.is_some() { scalars[CostSlot::Sparsity as usize] as f64 } else { 0.0 };
        // λ = 0: exactly 0 (the plan sums no W² then).
        let lambda = self.spec.weight_decay;
        let weight_decay =
            if lambda == 0.0 { 0.0 } else { 0.5 * lambda * scalars[CostSlot::WeightSquares as usize] as f64 };
        Cost { data, weight_decay, sparsity }
    }
}

/// The error for work the device refused (a validation or out-of-memory error scope).
pub(super) fn refused(gpu: &Gpu, e: wgpu::Error) -> Error {
    Error::Gpu(format!(
        "the device refused the work ({e}): it may be out of memory or over a limit ({} MiB per storage binding, {} MiB per buffer); try a smaller --batch-size, fewer examples (--limit), or --backend cpu",
        gpu.limits.max_storage_buffer_binding_size >> 20,
        gpu.limits.max_buffer_size >> 20
    ))
}

impl Backend for GpuBackend {
    fn name(&self) -> String {
        format!("gpu f32: {}", self.gpu.describe())
    }

    fn spec(&self) -> &NetSpec {
        &self.spec
    }

    fn set_data(&mut self, x: Inputs<'_>, targets: Targets<'_>) -> Result<()> {
        // The same checks as the CPU backend, so both refuse alike.
        validate_data(&self.spec, &x, &targets)?;
        // Row indices travel to the gather kernel as u32.
        u32_of(x.nrows(), "the number of examples")?;
        let x = match x {
            Inputs::Shared(x) => Arc::clone(x),
            x => Arc::new(to_real::<f32>(x)),
        };
        let y = match targets {
            Targets::Values(v) => Some(to_real::<f32>(v)),
            _ => None,
        };
        let labels = match targets {
            Targets::Labels(l) => Some(l.iter().map(|&v| v as u32).collect::<Vec<u32>>()),
            _ => None,
        };
        self.plans.clear();
        self.data.load(&self.gpu, x, y, labels)
    }

    fn num_examples(&self) -> usize {
        self.data.num_examples()
    }

    fn cost_and_grad(&mut self, theta: &[f64], batch: Batch<'_>, grad: &mut [f64]) -> Result<Cost> {
        if grad.len() != self.layout.len() {
            return Err(Error::Shape(format!(
                "gradient buffer has {} values, θ has {}",
                grad.len(),
                self.layout.len()
            )));
        }
        self.evaluate(theta, batch, Some(grad))
    }

    fn cost(&mut self, theta: &[f64], batch: Batch<'_>) -> Result<Cost> {
        self.evaluate(theta, batch, None)?.finite("gpu f32")
    }

    fn device_training(&mut self) -> Option<&mut dyn DeviceTraining> {
        if self.resident.disabled { None } else { Some(self) }
    }

    fn forward(&mut self, theta: &[f64], x: Inputs<'_>) -> Result<Vec<Array2<f64>>> {
        self.check_theta(theta)?;
        check_inputs(&self.spec, &x, "the input")?;
        let x = to_real::<f32>(x);
        write_f64(&self.gpu.queue, &self.theta, theta);
        self.resident.transfers.theta_uploads += 1;
        // One array per layer after the input: the stack's hidden layers (pooling too), or the
        // dense layers, then the output.
        let widths: Vec<usize> = match layers::plan::StackLayers::of(&self.spec)? {
            Some(stack) => {
                stack.widths.iter().copied().chain([self.spec.outputs() * self.spec.output_steps()]).collect()
            }
            None => self.spec.layers[1..].to_vec(),
        };
        let mut outputs: Vec<Array2<f64>> = widths.iter().map(|&w| Array2::zeros((0, w))).collect();
        let mut start = 0;
        while start < x.nrows() {
            let end = (start + self.data.max_chunk_rows).min(x.nrows());
            let chunk = Residency::upload_chunk(&self.gpu, x.slice(ndarray::s![start..end, ..]), None, None)?;
            let rec = self.recorder();
            let acts = match self.stack_recorder(&rec)? {
                Some(stack) => stack.forward_stack_chunk(&chunk.x, chunk.rows)?,
                None => rec.forward_chunk(&chunk)?,
            };
            for (o, a) in outputs.iter_mut().zip(acts) {
                o.append(ndarray::Axis(0), a.view()).expect("same width");
            }
            start = end;
        }
        Ok(outputs)
    }
}
