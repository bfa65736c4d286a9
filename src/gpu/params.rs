//! The parameter blocks of the WGSL kernels (`#[repr(C)]`, field for field the WGSL `Params`
//! structs) and the named codes and constants both sides share. It records nothing and
//! imports no other GPU module, so launchers, the texture-fed matmul and tests can all use it.

use bytemuck::{Pod, Zeroable};

use crate::model::Activation;

/// Rows of a column-sum block (BLOCK_ROWS in reduce.wgsl).
pub const BLOCK_ROWS: u32 = 256;
/// Edge of the output tile one matmul workgroup computes.
pub const MATMUL_TILE: u32 = 64;

/// The activation codes of common.wgsl (`ACT_*`; MATH.md, "Activations"): which f an
/// `activate` applies and which f′ a `derivative_from_value` takes from a stored value.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActCode {
    /// σ(z) = 1 / (1 + e^(−z)); f′ = a(1 − a).
    Sigmoid = 0,
    /// tanh z; f′ = 1 − a².
    Tanh = 1,
    /// max(z, 0); f′ = 1 where a > 0.
    Relu = 2,
    /// z, or α z below 0; f′ = 1 or α.
    LeakyRelu = 3,
    /// z; f′ = 1.
    Identity = 4,
    /// Derivatives only: the stored value is f′ itself (`FPRIME_GIVEN`).
    FprimeGiven = 5,
}

/// The derivative code of common.wgsl meaning "the stored value is f′ itself"
/// ([`super::kernels::Epilogue::DeltaGiven`]).
pub const FPRIME_GIVEN: u32 = ActCode::FprimeGiven as u32;

/// The activation code of `act` as common.wgsl numbers it ([`ActCode`]), and the leaky slope
/// α (0 for the others).
pub fn act_code(act: Activation) -> (u32, f32) {
    let (code, alpha) = match act {
        Activation::Sigmoid => (ActCode::Sigmoid, 0.0),
        Activation::Tanh => (ActCode::Tanh, 0.0),
        Activation::Relu => (ActCode::Relu, 0.0),
        Activation::LeakyRelu { alpha } => (ActCode::LeakyRelu, alpha as f32),
        Activation::Identity => (ActCode::Identity, 0.0),
    };
    (code as u32, alpha)
}

/// What a matmul does with each finished sum (`EPILOGUE_*` in matmul_epilogue.wgsl).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpilogueCode {
    /// c = α·acc (+ c) (+ λ·w): weight gradients.
    Plain = 0,
    /// c = f(acc + b): a forward layer.
    BiasAct = 1,
    /// c = (acc + kl) · f′: a hidden layer's δ.
    Delta = 2,
}

/// The update rules of update.wgsl (`RULE_*`), in `UpdateParams::rule`.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleCode {
    /// θ ← θ − η g.
    Plain = 0,
    /// v ← μ v − η g, θ ← θ + v.
    Momentum = 1,
    /// v ← μ v − η g, θ ← θ + μ v − η g.
    Nesterov = 2,
    /// Adam (Kingma & Ba 2015, Algorithm 1).
    Adam = 3,
}

/// The parameter block of the matmul kernels (`Params` in matmul_epilogue.wgsl, shared by
/// matmul.wgsl and matmul_tex.wgsl): C (m × n) = op(A) (m × k) · op(B) (k × n), each operand
/// addressed by element offset, row stride and column stride, then the epilogue. Offsets and
/// strides count f32 elements.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct MatmulParams {
    /// Rows of C and of op(A).
    pub m: u32,
    /// Columns of C and of op(B).
    pub n: u32,
    /// The inner dimension: columns of op(A), rows of op(B).
    pub k: u32,
    /// What is done with each finished sum ([`EpilogueCode`]).
    pub epilogue: u32,
    /// A's first element.
    pub a_off: u32,
    /// A's row stride.
    pub a_rs: u32,
    /// A's column stride (a transpose swaps the two).
    pub a_cs: u32,
    /// The activation code ([`ActCode`]) of a bias-activation or delta epilogue.
    pub act: u32,
    /// B's first element.
    pub b_off: u32,
    /// B's row stride.
    pub b_rs: u32,
    /// B's column stride.
    pub b_cs: u32,
    /// 1: add to the C already there (plain epilogue).
    pub accumulate: u32,
    /// C's first element.
    pub c_off: u32,
    /// C's row stride (its column stride is 1).
    pub c_rs: u32,
    /// Offset into `aux`: the bias (bias-activation), the weights for λW (plain), or the KL terms (delta).
    pub aux_off: u32,
    /// 1: the delta epilogue adds the sparsity term `kl[col]`.
    pub has_kl: u32,
    /// Offset into `aux2`: the stored activations whose f′ the delta epilogue takes (or f′ itself).
    pub aux2_off: u32,
    /// `aux2`'s row stride.
    pub aux2_rs: u32,
    /// The plain epilogue's factor α (1/m for gradients).
    pub alpha: f32,
    /// λ: the plain epilogue adds λ·w (weight decay on the first chunk).
    pub decay: f32,
    /// The leaky ReLU slope.
    pub leaky_alpha: f32,
    /// The texture-fed kernel only: 1 when consecutive workgroups go down the rows of C
    /// rather than along its columns (see texmatmul.rs).
    pub rows_first: u32,
    /// Padding to the WGSL struct's 16-byte size.
    pub _pad: [u32; 2],
}

/// The parameter block shared by the small kernels (`Params` in small_params.wgsl): each
/// kernel reads the fields it needs (see its WGSL file for their meaning there); offsets and
/// strides count f32 elements.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct SmallParams {
    /// Rows of the block a kernel covers.
    pub rows: u32,
    /// Columns of the block.
    pub cols: u32,
    /// The first input's first element.
    pub in_off: u32,
    /// The first input's row stride.
    pub in_rs: u32,
    /// The output's first element (a [`CostSlot`] for `sum_range` into the cost terms).
    pub out_off: u32,
    /// Offset into the second input (softmax: the first label).
    pub aux_off: u32,
    /// An activation code ([`ActCode`]) or, for `sum_range`, what is summed ([`SumOf`]).
    pub act: u32,
    /// A per-kernel switch: accumulate, write δ, or which output (see the WGSL).
    pub flag: u32,
    /// A factor (1/m for ∇b and ρ̂).
    pub alpha: f32,
    /// The leaky ReLU slope.
    pub leaky_alpha: f32,
    /// The sparsity target ρ.
    pub rho: f32,
    /// The sparsity weight β.
    pub beta: f32,
    /// Where a kernel's partial sums start.
    pub partial_off: u32,
    /// The second input's row stride.
    pub aux_rs: u32,
    /// A length: values summed, or blocks of partials.
    pub len: u32,
    /// Padding to 16-byte alignment.
    pub _pad: u32,
}

/// Slots of the four-value cost-terms buffer that the plans write and update.wgsl checks
/// (`COST_*` in update.wgsl): the data term's raw sum, Σ W², Σ β KL, ‖∇J‖².
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CostSlot {
    /// Σ of the per-example losses (before the 1/m, and the ½ of squared error).
    Data = 0,
    /// Σ W² over every weight (0 when λ = 0), for (λ/2)‖W‖².
    WeightSquares = 1,
    /// β Σⱼ KL(ρ ‖ ρ̂ⱼ), the sparsity penalty.
    Sparsity = 2,
    /// ‖∇J‖², written by the device update (norm_finish).
    GradNormSquared = 3,
}

/// What `sum_range` (reduce.wgsl) sums, in its `act` field (`SUM_*` in reduce.wgsl).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SumOf {
    /// Σ xᵢ.
    Values = 0,
    /// Σ xᵢ².
    Squares = 1,
}

/// Every named code shared with the WGSL, as (WGSL constant, value): tests parse the shaders
/// and check each constant there has this value, so neither side can drift alone.
pub const WGSL_CODES: &[(&str, u32)] = &[
    ("ACT_SIGMOID", ActCode::Sigmoid as u32),
    ("ACT_TANH", ActCode::Tanh as u32),
    ("ACT_RELU", ActCode::Relu as u32),
    ("ACT_LEAKY_RELU", ActCode::LeakyRelu as u32),
    ("ACT_IDENTITY", ActCode::Identity as u32),
    ("FPRIME_GIVEN", ActCode::FprimeGiven as u32),
    ("EPILOGUE_PLAIN", EpilogueCode::Plain as u32),
    ("EPILOGUE_BIAS_ACT", EpilogueCode::BiasAct as u32),
    ("EPILOGUE_DELTA", EpilogueCode::Delta as u32),
    ("SUM_VALUES", SumOf::Values as u32),
    ("SUM_SQUARES", SumOf::Squares as u32),
    ("BLOCK_ROWS", BLOCK_ROWS),
    ("COST_DATA", CostSlot::Data as u32),
    ("COST_WEIGHT_SQUARES", CostSlot::WeightSquares as u32),
    ("COST_SPARSITY", CostSlot::Sparsity as u32),
    ("COST_GRAD_NORM_SQUARED", CostSlot::GradNormSquared as u32),
    ("RULE_PLAIN", RuleCode::Plain as u32),
    ("RULE_MOMENTUM", RuleCode::Momentum as u32),
    ("RULE_NESTEROV", RuleCode::Nesterov as u32),
    ("RULE_ADAM", RuleCode::Adam as u32),
];
