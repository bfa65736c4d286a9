// Activations and their derivatives from stored values (MATH.md, "Activations"), shared by
// every kernel through string concatenation at pipeline creation. The codes are `ActCode` in
// src/gpu/params.rs (tests/gpu_kernels.rs checks both sides agree); FPRIME_GIVEN, for
// derivative_from_value only, means the stored value is f′ itself (a sigmoid layer under KL
// sparsity, whose f′ = σ(z)σ(−z) is computed from z: see elementwise.wgsl).

const ACT_SIGMOID: u32 = 0u;
const ACT_TANH: u32 = 1u;
const ACT_RELU: u32 = 2u;
const ACT_LEAKY_RELU: u32 = 3u;
const ACT_IDENTITY: u32 = 4u;
const FPRIME_GIVEN: u32 = 5u;

fn activate(code: u32, z: f32, leaky_alpha: f32) -> f32 {
    switch code {
        case ACT_SIGMOID: {
            // e^{-|z|} never overflows; divide by a number >= 1.
            let e = exp(-abs(z));
            return select(e / (1.0 + e), 1.0 / (1.0 + e), z >= 0.0);
        }
        case ACT_TANH: {
            // tanh z = sign(z) (1 - e^{-2|z|}) / (1 + e^{-2|z|}): finite for every z, unlike
            // implementations that divide e^{2z} by itself.
            let e = exp(-2.0 * abs(z));
            return sign(z) * (1.0 - e) / (1.0 + e);
        }
        case ACT_RELU: { return max(z, 0.0); }
        case ACT_LEAKY_RELU: { return select(leaky_alpha * z, z, z >= 0.0); }
        default: { return z; }
    }
}

fn derivative_from_value(code: u32, a: f32, leaky_alpha: f32) -> f32 {
    switch code {
        case ACT_SIGMOID: { return a * (1.0 - a); }
        case ACT_TANH: { return 1.0 - a * a; }
        case ACT_RELU: { return select(0.0, 1.0, a > 0.0); }
        case ACT_LEAKY_RELU: { return select(leaky_alpha, 1.0, a > 0.0); }
        case FPRIME_GIVEN: { return a; }
        default: { return 1.0; }
    }
}
