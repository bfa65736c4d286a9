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
