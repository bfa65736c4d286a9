// Parameters and bindings shared by the small kernels (everything but matmul): two inputs,
// two outputs, one uniform block. Field meanings are per kernel; see src/gpu/kernels.rs.

struct Params {
    rows: u32, cols: u32, in_off: u32, in_rs: u32,
    out_off: u32, aux_off: u32, act: u32, flag: u32,
    alpha: f32, leaky_alpha: f32, rho: f32, beta: f32,
    partial_off: u32, aux_rs: u32, len: u32, _pad: u32,
}

@group(0) @binding(4) var<uniform> p: Params;
