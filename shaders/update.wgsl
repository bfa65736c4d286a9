// First-order updates on θ in device memory (src/optim/update.rs is the specification, in
// f64; these are the same formulas in f32), and the squared gradient norm that decides
// whether a step may be taken. Three dispatches over the same grid, one submission:
//   norm_partials: partials[w] = Σ g² over workgroup w's block of BLOCK elements
//   norm_finish:   scalars[3]  = Σ partials, in a fixed tree order (no float atomics)
//   update:        if the cost terms and Σ g² are finite, before = θ, then θ (and the
//                  moments) move by the rule; otherwise nothing is written, so θ stays at
//                  the point evaluated and `before` at the point before the last update.

struct UpdateParams {
    len: u32,          // |θ|
    rule: u32,         // 0 plain, 1 momentum, 2 Nesterov, 3 Adam
    blocks: u32,       // number of partial sums
    check_sparsity: u32, // 1: scalars[2] (the KL term) is part of the cost
    learning_rate: f32,
    momentum: f32,
    beta1: f32,
    beta2: f32,
    epsilon: f32,
    bias_correction1: f32,
    bias_correction2: f32,
    // 1 − β₁ and 1 − β₂, rounded once from f64: 1 − f32(0.999) is 1.3e-5 off 0.001.
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> grad: array<f32>;
@group(0) @binding(1) var<storage, read_write> theta: array<f32>;
@group(0) @binding(2) var<storage, read_write> first_moment: array<f32>;
@group(0) @binding(3) var<storage, read_write> second_moment: array<f32>;
@group(0) @binding(4) var<storage, read_write> before: array<f32>;
@group(0) @binding(5) var<storage, read_write> partials: array<f32>;
// [data sum, Σ W², Σ β KL, Σ g²]: the cost terms the backward pass left, plus the norm.
@group(0) @binding(6) var<storage, read_write> scalars: array<f32>;
@group(0) @binding(7) var<uniform> u: UpdateParams;

const GROUP: u32 = 256u;
// Elements per workgroup: each invocation takes PER_INVOCATION of them, GROUP apart.
const PER_INVOCATION: u32 = 8u;
const BLOCK: u32 = 2048u;

var<workgroup> scratch: array<f32, 256>;

// NaN or ±∞: all exponent bits set. (WGSL has no isnan; x != x may be optimised away.)
fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(256, 1, 1)
fn norm_partials(@builtin(local_invocation_index) lix: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    var s = 0.0;
    for (var k = 0u; k < PER_INVOCATION; k++) {
        let i = wid.x * BLOCK + k * GROUP + lix;
        if (i < u.len) {
            let g = grad[i];
            s += g * g;
        }
    }
    scratch[lix] = s;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (lix < w) { scratch[lix] += scratch[lix + w]; }
        workgroupBarrier();
    }
    if (lix == 0u) { partials[wid.x] = scratch[0]; }
}

// One workgroup: each invocation sums the partials lix, lix + 256, … in order, then a tree.
@compute @workgroup_size(256, 1, 1)
fn norm_finish(@builtin(local_invocation_index) lix: u32) {
    var s = 0.0;
    for (var i = lix; i < u.blocks; i += GROUP) { s += partials[i]; }
    scratch[lix] = s;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (lix < w) { scratch[lix] += scratch[lix + w]; }
        workgroupBarrier();
    }
    if (lix == 0u) { scalars[3] = scratch[0]; }
}

@compute @workgroup_size(256, 1, 1)
fn update(@builtin(local_invocation_index) lix: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let finite = is_finite(scalars[0]) && is_finite(scalars[1]) && is_finite(scalars[3])
        && (u.check_sparsity == 0u || is_finite(scalars[2]));
    if (!finite) { return; }
    for (var k = 0u; k < PER_INVOCATION; k++) {
        let i = wid.x * BLOCK + k * GROUP + lix;
        if (i < u.len) { step(i); }
    }
}

// θᵢ (and its moments) by the rule; θᵢ's old value kept in `before`.
fn step(i: u32) {
    let eta = u.learning_rate;
    let g = grad[i];
    let t = theta[i];
    before[i] = t;
    switch u.rule {
        case 0u: {
            theta[i] = t - eta * g;
        }
        case 1u, 2u: {
            let mu = u.momentum;
            let v = mu * first_moment[i] - eta * g;
            first_moment[i] = v;
            theta[i] = t + select(v, mu * v - eta * g, u.rule == 2u);
        }
        default: {
            let m = u.beta1 * first_moment[i] + u.one_minus_beta1 * g;
            let v = u.beta2 * second_moment[i] + u.one_minus_beta2 * g * g;
            first_moment[i] = m;
            second_moment[i] = v;
            theta[i] = t - eta * (m / u.bias_correction1) / (sqrt(v / u.bias_correction2) + u.epsilon);
        }
    }
}
