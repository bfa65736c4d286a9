//! The WGSL kernels of `shaders/`, compiled once per device, and the recorded operations
//! ([`Op`]: pipeline + bind group + grid) that the backend strings together. Parameter blocks
//! mirror the WGSL `Params` structs field for field.

use bytemuck::{Pod, Zeroable};

use super::device::{Gpu, MatmulKernel};
pub use super::params::{
    ActCode, BLOCK_ROWS, CostSlot, EpilogueCode, FPRIME_GIVEN, MATMUL_TILE, MatmulParams, RuleCode, SmallParams, SumOf,
    WGSL_CODES, act_code,
};
pub use super::plumbing::Op;
use super::plumbing::{bind_all, layout, pipeline, uniform};
use super::texmatmul::{Packed, TexMatmul};
use crate::model::Activation;

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const SMALL_PARAMS: &str = include_str!("../../shaders/small_params.wgsl");
const MATMUL_EPILOGUE: &str = include_str!("../../shaders/matmul_epilogue.wgsl");
/// matmul.wgsl with the shared tile loop (tile_gemm.wgsl).
const MATMUL: &str = concat!(include_str!("../../shaders/tile_gemm.wgsl"), include_str!("../../shaders/matmul.wgsl"));
const ELEMENTWISE: &str = include_str!("../../shaders/elementwise.wgsl");
const LOSS: &str = include_str!("../../shaders/loss.wgsl");
const SOFTMAX: &str = include_str!("../../shaders/softmax.wgsl");
const REDUCE: &str = include_str!("../../shaders/reduce.wgsl");
const SPARSITY: &str = include_str!("../../shaders/sparsity.wgsl");
/// conv.wgsl with the shared tile loop (tile_gemm.wgsl).
const CONV: &str = concat!(include_str!("../../shaders/tile_gemm.wgsl"), include_str!("../../shaders/conv.wgsl"));
const POOL: &str = include_str!("../../shaders/pool.wgsl");

/// The small kernels, all sharing one bind-group layout (two inputs, two outputs, params).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Small {
    /// f or f′ over a block (elementwise.wgsl; parity tests only).
    Elementwise,
    /// δ and the partial sums of ½‖a − y‖² (loss.wgsl).
    SquaredError,
    /// Softmax probabilities, and with labels −log p_y and δ = p − onehot(y) (softmax.wgsl).
    Softmax,
    /// Column sums of blocks of rows (reduce.wgsl).
    ColumnPartials,
    /// The blocks' column sums summed in order, times α (reduce.wgsl).
    ColumnFinish,
    /// Σ xᵢ or Σ xᵢ² of a range, in one workgroup (reduce.wgsl).
    SumRange,
    /// The sparsity penalty's per-unit terms and δ terms from ρ̂ (sparsity.wgsl).
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
    /// The buffer holding the matrix.
    pub buf: &'a wgpu::Buffer,
    /// The element at (0, 0).
    pub off: u32,
    /// Elements between rows.
    pub rs: u32,
    /// Elements between columns.
    pub cs: u32,
}

impl<'a> Operand<'a> {
    /// A row-major matrix of `cols` columns starting at element `off` of `buf`.
    pub fn row_major(buf: &'a wgpu::Buffer, off: u32, cols: u32) -> Self {
        Operand { buf, off, rs: cols, cs: 1 }
    }

    /// The transpose: the same elements with the strides swapped.
    pub fn t(self) -> Self {
        Operand { rs: self.cs, cs: self.rs, ..self }
    }
}

/// What a matmul does with each result before storing it (see matmul.wgsl).
pub enum Epilogue<'a> {
    /// c = alpha·acc (+ c) (+ decay·w), w read at the same (row, col) from `weights`.
    Plain {
        /// α (1/m for a gradient).
        alpha: f32,
        /// Add to the c already there (later chunks of a batch).
        accumulate: bool,
        /// (λ, the weights' buffer, W's offset there): adds λ·w.
        decay: Option<(f32, &'a wgpu::Buffer, u32)>,
    },
    /// `c = f(acc + bias[col])`.
    BiasAct {
        /// (buffer, offset) of b.
        bias: (&'a wgpu::Buffer, u32),
        /// f.
        act: Activation,
    },
    /// `c = (acc + kl[col]) · f′(a_prev[row, col])`.
    Delta {
        /// (buffer, offset) of the sparsity term, when there is one.
        kl: Option<(&'a wgpu::Buffer, u32)>,
        /// The layer's stored activations a, whose f′ is taken from the value.
        a_prev: Operand<'a>,
        /// f.
        act: Activation,
    },
    /// `c = (acc + kl[col]) · fprime[row, col]`: f′ given, for the sigmoid layer under KL
    /// sparsity (from `Small::SigmoidComplement`, flag 1).
    DeltaGiven {
        /// (buffer, offset) of the sparsity term, when there is one.
        kl: Option<(&'a wgpu::Buffer, u32)>,
        /// f′ itself.
        fprime: Operand<'a>,
    },
}

/// The dense network's kernels compiled for one device: the matmul (tiled, or texture-fed on
/// software adapters) and the small kernels, with placeholder buffers for unused bindings.
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
                p.epilogue = EpilogueCode::Plain as u32;
                p.alpha = alpha;
                p.accumulate = accumulate as u32;
                if let Some((lambda, weights, off)) = decay {
                    p.decay = lambda;
                    p.aux_off = off;
                    aux = weights;
                }
            }
            Epilogue::BiasAct { bias, act } => {
                p.epilogue = EpilogueCode::BiasAct as u32;
                (p.act, p.leaky_alpha) = act_code(act);
                aux = bias.0;
                p.aux_off = bias.1;
            }
            Epilogue::Delta { kl, a_prev, act } => {
                p.epilogue = EpilogueCode::Delta as u32;
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
                p.epilogue = EpilogueCode::Delta as u32;
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
    /// Images in the chunk (B).
    pub images: u32,
    /// Side n of the square input images.
    pub image_size: u32,
    /// Channels c.
    pub channels: u32,
    /// Side p of the square features.
    pub patch: u32,
    /// Side d = n − p + 1 of the output maps.
    pub conv_size: u32,
    /// Features k.
    pub features: u32,
    /// c·p², the length of one patch.
    pub depth: u32,
    /// The activation code ([`ActCode`]).
    pub act: u32,
    /// b's offset in the weights buffer.
    pub bias_off: u32,
    /// The leaky ReLU slope.
    pub leaky_alpha: f32,
    /// Padding to 16-byte alignment.
    pub _pad: [u32; 2],
}

/// The parameter block of pool.wgsl: `maps` feature maps of d × d (d = `conv_size`) pooled
/// over disjoint `pool` × `pool` regions into `pooled` × `pooled`; `kind` 0 mean, 1 max.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct PoolParams {
    /// Feature maps pooled (images × features).
    pub maps: u32,
    /// Side d of each map.
    pub conv_size: u32,
    /// Side of the disjoint pooling regions.
    pub pool: u32,
    /// Side ⌊d / pool⌋ of the pooled maps.
    pub pooled: u32,
    /// 0 mean, 1 max.
    pub kind: u32,
    /// Padding to 16-byte alignment.
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
    /// Compiles conv.wgsl and pool.wgsl for `device`.
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
