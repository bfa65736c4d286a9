//! The parameter blocks of the WGSL kernels (`#[repr(C)]`, field for field the WGSL `Params`
//! structs) and the named codes and constants both sides share. It records nothing and
//! imports no other GPU module, so launchers, the texture-fed matmul and tests can all use it.

use bytemuck::{Pod, Zeroable};

use crate::model::Activation;

/// Rows of a column-sum block (BLOCK_ROWS in reduce.wgsl).
pub const BLOCK_ROWS: u32 = 256;
/// Edge of the output tile one matmul workgroup computes.
pub const MATMUL_TILE: u32 = 64;

/// The derivative code of common.wgsl meaning "the stored value is f′ itself"
/// ([`super::kernels::Epilogue::DeltaGiven`]).
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
