// Activations and their derivatives from stored values (MATH.md, "Activations"), shared by
// every kernel through string concatenation at pipeline creation. Codes match
// src/gpu/kernels.rs: 0 sigmoid, 1 tanh, 2 relu, 3 leaky relu, 4 identity; and, for
// derivative_from_value only, 5 FPRIME_GIVEN: the stored value is f′ itself (a sigmoid layer
// under KL sparsity, whose f′ = σ(z)σ(−z) is computed from z: see elementwise.wgsl).

fn activate(code: u32, z: f32, leaky_alpha: f32) -> f32 {
    switch code {
        case 0u: {
            // e^{-|z|} never overflows; divide by a number >= 1.
            let e = exp(-abs(z));
            return select(e / (1.0 + e), 1.0 / (1.0 + e), z >= 0.0);
        }
        case 1u: {
            // tanh z = sign(z) (1 - e^{-2|z|}) / (1 + e^{-2|z|}): finite for every z, unlike
            // implementations that divide e^{2z} by itself.
            let e = exp(-2.0 * abs(z));
            return sign(z) * (1.0 - e) / (1.0 + e);
        }
        case 2u: { return max(z, 0.0); }
        case 3u: { return select(leaky_alpha * z, z, z >= 0.0); }
        default: { return z; }
    }
}

fn derivative_from_value(code: u32, a: f32, leaky_alpha: f32) -> f32 {
    switch code {
        case 0u: { return a * (1.0 - a); }
        case 1u: { return 1.0 - a * a; }
        case 2u: { return select(0.0, 1.0, a > 0.0); }
        case 3u: { return select(leaky_alpha, 1.0, a > 0.0); }
        case 5u: { return a; }
        default: { return 1.0; }
    }
}
