// First-order updates on θ in device memory (src/update.rs is the specification, in
// f64; these are the same formulas in f32), and the squared gradient norm that decides
// whether a step may be taken. Three dispatches over the same grid, one submission:
//   norm_partials: partials[w] = Σ g² over workgroup w's block of BLOCK elements
//   norm_finish:   scalars[COST_GRAD_NORM_SQUARED] = Σ partials, in a fixed tree order (no float atomics)
//   update:        if the cost terms and Σ g² are finite, before = θ, then θ (and the
//                  moments) move by the rule; otherwise nothing is written, so θ stays at
//                  the point evaluated and `before` at the point before the last update.
//                  With clip_norm = τ > 0 the rule sees g·min(1, τ/‖g‖) (clipping by global
//                  norm, MATH.md; ‖g‖ from the sum above, so every element gets the same scale).

struct UpdateParams {
    len: u32,          // |θ|
    rule: u32,         // RULE_*
    blocks: u32,       // number of partial sums
    check_sparsity: u32, // 1: scalars[COST_SPARSITY] (the KL term) is part of the cost
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
    // λW is added to ∇J over θ's first decay_len values (the weights): the split step of
    // data-parallel training, whose ranks sum gradients without it. 0 in the one-process
    // step, whose plan adds λW itself.
    decay_len: u32,
    decay: f32,
    clip_norm: f32,    // τ of clipping by global norm; 0: no clipping
    _pad0: u32,
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

// Slots of the cost terms (`CostSlot` in src/gpu/params.rs) and the update rules
// (`RuleCode` there); tests/gpu_kernels.rs checks both sides agree.
const COST_DATA: u32 = 0u;
const COST_WEIGHT_SQUARES: u32 = 1u;
const COST_SPARSITY: u32 = 2u;
const COST_GRAD_NORM_SQUARED: u32 = 3u;
const RULE_PLAIN: u32 = 0u;
const RULE_MOMENTUM: u32 = 1u;
const RULE_NESTEROV: u32 = 2u;
const RULE_ADAM: u32 = 3u;

const GROUP: u32 = 256u;
// Elements per workgroup: each invocation takes PER_INVOCATION of them, GROUP apart.
const PER_INVOCATION: u32 = 8u;
const BLOCK: u32 = 2048u;

var<workgroup> scratch: array<f32, 256>;

// ∇Jᵢ as the update sees it: + λθᵢ over the first decay_len values (exactly grad[i] when 0).
fn gradient(i: u32) -> f32 {
    var g = grad[i];
    if (i < u.decay_len) { g += u.decay * theta[i]; }
    return g;
}

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
            let g = gradient(i);
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
    if (lix == 0u) { scalars[COST_GRAD_NORM_SQUARED] = scratch[0]; }
}

@compute @workgroup_size(256, 1, 1)
fn update(@builtin(local_invocation_index) lix: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let finite = is_finite(scalars[COST_DATA]) && is_finite(scalars[COST_WEIGHT_SQUARES])
        && is_finite(scalars[COST_GRAD_NORM_SQUARED])
        && (u.check_sparsity == 0u || is_finite(scalars[COST_SPARSITY]));
    if (!finite) { return; }
    // g·min(1, τ/‖g‖): the scale is exactly 1 (g unchanged) unless clipping engages.
    let norm = sqrt(scalars[COST_GRAD_NORM_SQUARED]);
    var scale = 1.0;
    if (u.clip_norm > 0.0 && norm > u.clip_norm) { scale = u.clip_norm / norm; }
    for (var k = 0u; k < PER_INVOCATION; k++) {
        let i = wid.x * BLOCK + k * GROUP + lix;
        if (i < u.len) { step(i, scale); }
    }
}

// θᵢ (and its moments) by the rule on the gradient scaled by `scale`; θᵢ's old value kept
// in `before`.
fn step(i: u32, scale: f32) {
    let eta = u.learning_rate;
    let g = gradient(i) * scale;
    let t = theta[i];
    before[i] = t;
    switch u.rule {
        case RULE_PLAIN: {
            theta[i] = t - eta * g;
        }
        case RULE_MOMENTUM, RULE_NESTEROV: {
            let mu = u.momentum;
            let v = mu * first_moment[i] - eta * g;
            first_moment[i] = v;
            theta[i] = t + select(v, mu * v - eta * g, u.rule == RULE_NESTEROV);
        }
        case RULE_ADAM, default: {
            let m = u.beta1 * first_moment[i] + u.one_minus_beta1 * g;
            let v = u.beta2 * second_moment[i] + u.one_minus_beta2 * g * g;
            first_moment[i] = m;
            second_moment[i] = v;
            theta[i] = t - eta * (m / u.bias_correction1) / (sqrt(v / u.bias_correction2) + u.epsilon);
        }
    }
}
