//! The WGSL kernels of `shaders/`, compiled once per device, and the recorded operations
//! ([`Op`]: pipeline + bind group + grid) that the backend strings together. Parameter blocks
//! mirror the WGSL `Params` structs field for field.

use bytemuck::{Pod, Zeroable};
use wgpu::util::DeviceExt;

use super::device::{Gpu, MatmulKernel};
use super::texmatmul::{Packed, TexMatmul};
use crate::model::Activation;

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const SMALL_PARAMS: &str = include_str!("../../shaders/small_params.wgsl");
const MATMUL_EPILOGUE: &str = include_str!("../../shaders/matmul_epilogue.wgsl");
const MATMUL: &str = include_str!("../../shaders/matmul.wgsl");
const ELEMENTWISE: &str = include_str!("../../shaders/elementwise.wgsl");
const LOSS: &str = include_str!("../../shaders/loss.wgsl");
const SOFTMAX: &str = include_str!("../../shaders/softmax.wgsl");
const REDUCE: &str = include_str!("../../shaders/reduce.wgsl");
const SPARSITY: &str = include_str!("../../shaders/sparsity.wgsl");
const CONV: &str = include_str!("../../shaders/conv.wgsl");
const POOL: &str = include_str!("../../shaders/pool.wgsl");

/// Rows of a column-sum block (BLOCK_ROWS in reduce.wgsl).
pub const BLOCK_ROWS: u32 = 256;
/// Edge of the output tile one matmul workgroup computes.
pub const MATMUL_TILE: u32 = 64;

/// The derivative code of common.wgsl meaning "the stored value is f′ itself"
/// ([`Epilogue::DeltaGiven`]).
pub const FPRIME_GIVEN: u32 = 5;

/// Activation codes of common.wgsl, and the leaky slope.
pub fn act_code(act: Activation) -> (u32, f32) {
    match act {
        Activation::Sigmoid => (0, 0.0),
        Activation::Tanh => (1, 0.0),
        Activation::Relu => (2, 0.0),
        Activation::LeakyRelu { alpha } => (3, alpha as f32),
        Activation::Identity => (4, 0.0),
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct MatmulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub epilogue: u32,
    pub a_off: u32,
    pub a_rs: u32,
    pub a_cs: u32,
    pub act: u32,
    pub b_off: u32,
    pub b_rs: u32,
    pub b_cs: u32,
    pub accumulate: u32,
    pub c_off: u32,
    pub c_rs: u32,
    pub aux_off: u32,
    pub has_kl: u32,
    pub aux2_off: u32,
    pub aux2_rs: u32,
    pub alpha: f32,
    pub decay: f32,
    pub leaky_alpha: f32,
    /// The texture-fed kernel only: 1 when consecutive workgroups go down the rows of C
    /// rather than along its columns (see texmatmul.rs).
    pub rows_first: u32,
    pub _pad: [u32; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct SmallParams {
    pub rows: u32,
    pub cols: u32,
    pub in_off: u32,
    pub in_rs: u32,
    pub out_off: u32,
    pub aux_off: u32,
    pub act: u32,
    pub flag: u32,
    pub alpha: f32,
    pub leaky_alpha: f32,
    pub rho: f32,
    pub beta: f32,
    pub partial_off: u32,
    pub aux_rs: u32,
    pub len: u32,
    pub _pad: u32,
}

/// The small kernels, all sharing one bind-group layout (two inputs, two outputs, params).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Small {
    Elementwise,
    SquaredError,
    Softmax,
    ColumnPartials,
    ColumnFinish,
    SumRange,
    KlTerms,
    /// σ(z) and σ(−z) (or f′ = σ(z)σ(−z)) of a sigmoid layer under KL sparsity.
    SigmoidComplement,
    /// The binary cross-entropy of a sigmoid output from its logits, and δ = σ(z) − y.
    SigmoidBce,
    /// σ(z) in place: a sigmoid-BCE output's probabilities for the forward pass.
    SigmoidInPlace,
}

/// A matrix operand: element offset, row stride and column stride into a buffer. A transpose
/// swaps the strides.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    pub buf: &'a wgpu::Buffer,
    pub off: u32,
    pub rs: u32,
    pub cs: u32,
}

impl<'a> Operand<'a> {
    pub fn row_major(buf: &'a wgpu::Buffer, off: u32, cols: u32) -> Self {
        Operand { buf, off, rs: cols, cs: 1 }
    }

    pub fn t(self) -> Self {
        Operand { rs: self.cs, cs: self.rs, ..self }
    }
}

/// What a matmul does with each result before storing it (see matmul.wgsl).
pub enum Epilogue<'a> {
    /// c = alpha·acc (+ c) (+ decay·w), w read at the same (row, col) from `weights`.
    Plain { alpha: f32, accumulate: bool, decay: Option<(f32, &'a wgpu::Buffer, u32)> },
    /// `c = f(acc + bias[col])`.
    BiasAct { bias: (&'a wgpu::Buffer, u32), act: Activation },
    /// `c = (acc + kl[col]) · f′(a_prev[row, col])`.
    Delta { kl: Option<(&'a wgpu::Buffer, u32)>, a_prev: Operand<'a>, act: Activation },
    /// `c = (acc + kl[col]) · fprime[row, col]`: f′ given, for the sigmoid layer under KL
    /// sparsity (from `Small::SigmoidComplement`, flag 1).
    DeltaGiven { kl: Option<(&'a wgpu::Buffer, u32)>, fprime: Operand<'a> },
}

/// One recorded operation: one dispatch, or (the texture-fed matmul) a few in order.
pub struct Op {
    steps: Vec<(wgpu::ComputePipeline, wgpu::BindGroup, [u32; 3])>,
}

impl Op {
    pub(super) fn one(pipeline: wgpu::ComputePipeline, bind_group: wgpu::BindGroup, groups: [u32; 3]) -> Op {
        Op { steps: vec![(pipeline, bind_group, groups)] }
    }

    pub(super) fn steps(steps: Vec<(wgpu::ComputePipeline, wgpu::BindGroup, [u32; 3])>) -> Op {
        Op { steps }
    }

    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        for (pipeline, bind_group, groups) in &self.steps {
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(groups[0], groups[1], groups[2]);
        }
    }
}

pub struct Kernels {
    matmul_layout: wgpu::BindGroupLayout,
    small_layout: wgpu::BindGroupLayout,
    matmul: wgpu::ComputePipeline,
    /// The texture-fed matmul, when the device's [`MatmulKernel`] is `Texture`.
    tex: Option<TexMatmul>,
    small: Vec<(Small, wgpu::ComputePipeline)>,
    /// Bound where a kernel has no use for a slot (storage bindings may not be left empty).
    dummy_read: wgpu::Buffer,
    dummy_write: [wgpu::Buffer; 2],
}

/// The layout entry of a compute binding of type `ty`.
pub(crate) fn entry(binding: u32, ty: wgpu::BindingType) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry { binding, visibility: wgpu::ShaderStages::COMPUTE, ty, count: None }
}

/// A buffer binding: Some(read_only) for a storage buffer, None for the uniform block.
pub(crate) fn buffer(kind: Option<bool>) -> wgpu::BindingType {
    wgpu::BindingType::Buffer {
        ty: match kind {
            Some(read_only) => wgpu::BufferBindingType::Storage { read_only },
            None => wgpu::BufferBindingType::Uniform,
        },
        has_dynamic_offset: false,
        min_binding_size: None,
    }
}

/// A layout of buffer bindings 0, 1, … of the kinds [`buffer`] takes.
pub(crate) fn layout(device: &wgpu::Device, label: &str, kinds: &[Option<bool>]) -> wgpu::BindGroupLayout {
    let entries: Vec<wgpu::BindGroupLayoutEntry> =
        kinds.iter().enumerate().map(|(i, &kind)| entry(i as u32, buffer(kind))).collect();
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(label), entries: &entries })
}

/// A uniform buffer holding a kernel's parameter block.
pub(crate) fn uniform(device: &wgpu::Device, bytes: &[u8]) -> wgpu::Buffer {
    device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("params"),
        contents: bytes,
        usage: wgpu::BufferUsages::UNIFORM,
    })
}

pub(crate) fn pipeline(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    source: &str,
    entry: &str,
) -> wgpu::ComputePipeline {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(entry),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(entry),
        bind_group_layouts: &[Some(layout)],
        immediate_size: 0,
    });
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    })
}

impl Kernels {
    /// Compiles every kernel for `gpu`, with the matmul kernel `gpu.matmul` names.
    pub fn new(gpu: &Gpu) -> Kernels {
        let device = &gpu.device;
        let matmul_layout =
            layout(device, "matmul", &[Some(true), Some(true), Some(false), Some(true), Some(true), None]);
        let small_layout = layout(device, "small", &[Some(true), Some(true), Some(false), Some(false), None]);
        let matmul = pipeline(device, &matmul_layout, &format!("{COMMON}\n{MATMUL_EPILOGUE}\n{MATMUL}"), "matmul");
        let tex = (gpu.matmul == MatmulKernel::Texture).then(|| TexMatmul::new(device, &gpu.limits));
        let with_params = |body: &str| format!("{COMMON}\n{SMALL_PARAMS}\n{body}");
        let small = [
            (Small::Elementwise, ELEMENTWISE, "elementwise"),
            (Small::SquaredError, LOSS, "squared_error"),
            (Small::Softmax, SOFTMAX, "softmax"),
            (Small::ColumnPartials, REDUCE, "column_partials"),
            (Small::ColumnFinish, REDUCE, "column_finish"),
            (Small::SumRange, REDUCE, "sum_range"),
            (Small::KlTerms, SPARSITY, "kl_terms"),
            (Small::SigmoidComplement, ELEMENTWISE, "sigmoid_complement"),
            (Small::SigmoidBce, LOSS, "sigmoid_bce"),
            (Small::SigmoidInPlace, LOSS, "sigmoid_in_place"),
        ]
        .into_iter()
        .map(|(kind, body, entry)| (kind, pipeline(device, &small_layout, &with_params(body), entry)))
        .collect();
        let dummy = |label| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: 16,
                usage: wgpu::BufferUsages::STORAGE,
                mapped_at_creation: false,
            })
        };
        Kernels {
            matmul_layout,
            small_layout,
            matmul,
            tex,
            small,
            dummy_read: dummy("unused input"),
            dummy_write: [dummy("unused output 0"), dummy("unused output 1")],
        }
    }

    /// The kernel [`Kernels::matmul`] uses for an m × n × k product: the device's, except that
    /// the texture-fed kernel hands products whose packed operands exceed the texture size
    /// limit to the tiled one.
    pub fn matmul_kernel(&self, (m, n, k): (u32, u32, u32)) -> MatmulKernel {
        match &self.tex {
            Some(tex) if tex.fits((m, n, k)) => MatmulKernel::Texture,
            _ => MatmulKernel::Tiled,
        }
    }

    /// C (m × n, row-major with row stride `c.2`, at element offset `c.1`) = op(A) op(B) then
    /// the epilogue; A is m × k and B is k × n as addressed by their operands.
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        device: &wgpu::Device,
        a: Operand,
        b: Operand,
        c: (&wgpu::Buffer, u32, u32),
        (m, n, k): (u32, u32, u32),
        epilogue: Epilogue,
    ) -> Op {
        let mut p = MatmulParams {
            m,
            n,
            k,
            a_off: a.off,
            a_rs: a.rs,
            a_cs: a.cs,
            b_off: b.off,
            b_rs: b.rs,
            b_cs: b.cs,
            c_off: c.1,
            c_rs: c.2,
            alpha: 1.0,
            ..Default::default()
        };
        let (mut aux, mut aux2) = (&self.dummy_read, &self.dummy_read);
        match epilogue {
            Epilogue::Plain { alpha, accumulate, decay } => {
                p.epilogue = 0;
                p.alpha = alpha;
                p.accumulate = accumulate as u32;
                if let Some((lambda, weights, off)) = decay {
                    p.decay = lambda;
                    p.aux_off = off;
                    aux = weights;
                }
            }
            Epilogue::BiasAct { bias, act } => {
                p.epilogue = 1;
                (p.act, p.leaky_alpha) = act_code(act);
                aux = bias.0;
                p.aux_off = bias.1;
            }
            Epilogue::Delta { kl, a_prev, act } => {
                p.epilogue = 2;
                (p.act, p.leaky_alpha) = act_code(act);
                if let Some((buf, off)) = kl {
                    p.has_kl = 1;
                    aux = buf;
                    p.aux_off = off;
                }
                aux2 = a_prev.buf;
                p.aux2_off = a_prev.off;
                p.aux2_rs = a_prev.rs;
            }
            Epilogue::DeltaGiven { kl, fprime } => {
                p.epilogue = 2;
                p.act = FPRIME_GIVEN;
                if let Some((buf, off)) = kl {
                    p.has_kl = 1;
                    aux = buf;
                    p.aux_off = off;
                }
                aux2 = fprime.buf;
                p.aux2_off = fprime.off;
                p.aux2_rs = fprime.rs;
            }
        }
        if let (Some(tex), MatmulKernel::Texture) = (&self.tex, self.matmul_kernel((m, n, k))) {
            let a = Packed { buf: a.buf, off: a.off, rs: a.rs, cs: a.cs, rows: m, cols: k };
            let b = Packed { buf: b.buf, off: b.off, rs: b.rs, cs: b.cs, rows: k, cols: n };
            return tex.matmul(device, a, b, [c.0, aux, aux2], &p);
        }
        let params = uniform(device, bytemuck::bytes_of(&p));
        let buffers = [a.buf, b.buf, c.0, aux, aux2, &params];
        let bind_group = bind_all(device, &self.matmul_layout, &buffers);
        Op::one(self.matmul.clone(), bind_group, [n.div_ceil(MATMUL_TILE), m.div_ceil(MATMUL_TILE), 1])
    }

    /// A small kernel over inputs (`src`, `src2`) and outputs (`dst`, `dst2`); `None` slots are
    /// bound to placeholders.
    #[allow(clippy::too_many_arguments)]
    pub fn small(
        &self,
        device: &wgpu::Device,
        kind: Small,
        src: Option<&wgpu::Buffer>,
        src2: Option<&wgpu::Buffer>,
        dst: Option<&wgpu::Buffer>,
        dst2: Option<&wgpu::Buffer>,
        params: SmallParams,
        groups: [u32; 3],
    ) -> Op {
        let uniform = uniform(device, bytemuck::bytes_of(&params));
        let buffers = [
            src.unwrap_or(&self.dummy_read),
            src2.unwrap_or(&self.dummy_read),
            dst.unwrap_or(&self.dummy_write[0]),
            dst2.unwrap_or(&self.dummy_write[1]),
            &uniform,
        ];
        let pipeline = self.small.iter().find(|(k, _)| *k == kind).expect("every small kernel is compiled").1.clone();
        Op::one(pipeline, bind_all(device, &self.small_layout, &buffers), groups)
    }
}

/// Edge of the tile of (patch positions × features) one convolution workgroup computes.
pub const CONV_TILE: u32 = 64;
/// Invocations per pooling workgroup.
pub const POOL_GROUP: u32 = 64;

/// The parameter block of conv.wgsl: a chunk of `images` images of `channels` × n × n
/// (n = `image_size`), p × p features (p = `patch`), d = n − p + 1 (`conv_size`), k =
/// `features`, depth c·p²; the biases sit at `bias_off` in the weights buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConvParams {
    pub images: u32,
    pub image_size: u32,
    pub channels: u32,
    pub patch: u32,
    pub conv_size: u32,
    pub features: u32,
    pub depth: u32,
    pub act: u32,
    pub bias_off: u32,
    pub leaky_alpha: f32,
    pub _pad: [u32; 2],
}

/// The parameter block of pool.wgsl: `maps` feature maps of d × d (d = `conv_size`) pooled
/// over disjoint `pool` × `pool` regions into `pooled` × `pooled`; `kind` 0 mean, 1 max.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct PoolParams {
    pub maps: u32,
    pub conv_size: u32,
    pub pool: u32,
    pub pooled: u32,
    pub kind: u32,
    pub _pad: [u32; 3],
}

/// The convolution and pooling kernels (`shaders/conv.wgsl`, `shaders/pool.wgsl`), compiled
/// apart from [`Kernels`] so that training pays nothing for them. Both share one bind-group
/// layout: input, second input, output, parameters.
pub struct FeatureKernels {
    layout: wgpu::BindGroupLayout,
    convolve: wgpu::ComputePipeline,
    pool: wgpu::ComputePipeline,
    /// Bound where the pooling kernel has no use for the second input.
    dummy_read: wgpu::Buffer,
}

impl FeatureKernels {
    pub fn new(device: &wgpu::Device) -> FeatureKernels {
        let layout = layout(device, "features", &[Some(true), Some(true), Some(false), None]);
        let convolve = pipeline(device, &layout, &format!("{COMMON}\n{CONV}"), "convolve");
        let pool = pipeline(device, &layout, &format!("{COMMON}\n{POOL}"), "pool");
        let dummy_read = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("unused input"),
            size: 16,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        FeatureKernels { layout, convolve, pool, dummy_read }
    }

    /// The workgroups `convolve` dispatches for `p`: patch-position tiles along x, feature
    /// tiles along y.
    pub fn convolve_groups(p: &ConvParams) -> [u32; 3] {
        let rows = p.images * p.conv_size * p.conv_size;
        [rows.div_ceil(CONV_TILE), p.features.div_ceil(CONV_TILE), 1]
    }

    /// The workgroups `pool` dispatches for `p`, at most `max_per_dimension` along x.
    pub fn pool_groups(p: &PoolParams, max_per_dimension: u32) -> [u32; 3] {
        let groups = (p.maps * p.pooled * p.pooled).div_ceil(POOL_GROUP).max(1);
        let x = groups.min(max_per_dimension.max(1));
        [x, groups.div_ceil(x), 1]
    }

    /// out (B × k × d × d) = f(patches of `images` · W + b); `weights` holds Wᵀ (c·p² × k,
    /// row-major) and then b at `p.bias_off`.
    pub fn convolve(
        &self,
        device: &wgpu::Device,
        images: &wgpu::Buffer,
        weights: &wgpu::Buffer,
        out: &wgpu::Buffer,
        p: ConvParams,
    ) -> Op {
        let params = uniform(device, bytemuck::bytes_of(&p));
        let bind_group = bind_all(device, &self.layout, &[images, weights, out, &params]);
        Op::one(self.convolve.clone(), bind_group, Self::convolve_groups(&p))
    }

    /// out (maps × q × q) = mean or max of `conv` (maps × d × d) over disjoint regions.
    pub fn pool(
        &self,
        device: &wgpu::Device,
        conv: &wgpu::Buffer,
        out: &wgpu::Buffer,
        p: PoolParams,
        max_per_dimension: u32,
    ) -> Op {
        let params = uniform(device, bytemuck::bytes_of(&p));
        let bind_group = bind_all(device, &self.layout, &[conv, &self.dummy_read, out, &params]);
        Op::one(self.pool.clone(), bind_group, Self::pool_groups(&p, max_per_dimension))
    }
}

/// A bind group binding `buffers` in order, each whole.
pub(crate) fn bind_all(
    device: &wgpu::Device,
    layout: &wgpu::BindGroupLayout,
    buffers: &[&wgpu::Buffer],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = buffers
        .iter()
        .enumerate()
        .map(|(i, buf)| wgpu::BindGroupEntry { binding: i as u32, resource: buf.as_entire_binding() })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor { label: None, layout, entries: &entries })
}
