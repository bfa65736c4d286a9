// Squared-error output: δ = (a − y) ⊙ f'(a), and per-workgroup partial sums of (a − y)² for
// the cost ½(1/m)Σ‖a − y‖² (MATH.md). The partials are summed later in a fixed order, so the
// cost is deterministic (no float atomics).

@group(0) @binding(0) var<storage, read> a: array<f32>;    // output activations, rows × cols
@group(0) @binding(1) var<storage, read> y: array<f32>;    // targets at in_off, row stride in_rs
@group(0) @binding(2) var<storage, read_write> delta: array<f32>;
@group(0) @binding(3) var<storage, read_write> partials: array<f32>;

var<workgroup> scratch: array<f32, 256>;

// flag 1: also write δ; flag 0: cost only.
@compute @workgroup_size(16, 16, 1)
fn squared_error(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_index) lix: u32,
                 @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y;
    let j = gid.x;
    var sq = 0.0;
    if (i < p.rows && j < p.cols) {
        let av = a[i * p.cols + j];
        let e = av - y[p.in_off + i * p.in_rs + j];
        sq = e * e;
        if (p.flag == 1u) { delta[i * p.cols + j] = e * derivative_from_value(p.act, av, p.leaky_alpha); }
    }
    scratch[lix] = sq;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lix < s) { scratch[lix] += scratch[lix + s]; }
        workgroupBarrier();
    }
    if (lix == 0u) { partials[p.partial_off + wid.y * nwg.x + wid.x] = scratch[0]; }
}

// Sigmoid output with the binary cross-entropy, read from the logits z (the output layer's
// pre-activation, bias added; MATH.md, "Numerically safe forms"): δ = σ(z) − y, and
// per-workgroup partial sums of the loss in the form max(z, 0) − z·y + log(1 + e^{−|z|}), which
// never takes the logarithm of a σ(z) rounded to 0 or 1 (z = ±100 gives a finite, exact loss).
// flag 1: also write δ; flag 0: cost only.
@compute @workgroup_size(16, 16, 1)
fn sigmoid_bce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(local_invocation_index) lix: u32,
               @builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.y;
    let j = gid.x;
    var loss = 0.0;
    if (i < p.rows && j < p.cols) {
        let z = a[i * p.cols + j];
        let t = y[p.in_off + i * p.in_rs + j];
        let e = exp(-abs(z));
        // log(1 + e) keeps a small e (WGSL has no log1p): log(1 + e) = e − e²/2 + O(e³).
        let softplus = select(log(1.0 + e), e * (1.0 - 0.5 * e), e < 1e-4);
        loss = max(z, 0.0) - z * t + softplus;
        if (p.flag == 1u) { delta[i * p.cols + j] = activate(0u, z, 0.0) - t; }
    }
    scratch[lix] = loss;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (lix < s) { scratch[lix] += scratch[lix + s]; }
        workgroupBarrier();
    }
    if (lix == 0u) { partials[p.partial_off + wid.y * nwg.x + wid.x] = scratch[0]; }
}

// delta[i, j] ← σ(delta[i, j]) over rows × cols, in place: a sigmoid-BCE output's
// probabilities from its logits, for the forward pass.
@compute @workgroup_size(16, 16, 1)
fn sigmoid_in_place(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y;
    let j = gid.x;
    if (i >= p.rows || j >= p.cols) { return; }
    delta[i * p.cols + j] = activate(0u, delta[i * p.cols + j], 0.0);
}
