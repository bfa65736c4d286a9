// Pooling of convolved features over disjoint s×s regions (MATH.md, "Convolution and pooling
// of learned features"): for each feature map (image, feature) of d×d values, q = d / s
// (the host refuses sizes that do not divide),
//
//   out[map, py, px] = mean or max of conv[map, py·s + u, px·s + v], 0 ≤ u, v < s.
//
// One invocation per pooled value; consecutive invocations take consecutive px. The grid is
// two-dimensional because a large chunk has more outputs than one dimension of workgroups
// covers: the flat index is gid.x + gid.y · (64 · num_workgroups.x).

struct PoolParams {
    maps: u32, conv_size: u32, pool: u32, pooled: u32,
    kind: u32, _pad0: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(0) var<storage, read> conv: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> pp: PoolParams;

// kind 0: mean, 1: max.
@compute @workgroup_size(64, 1, 1)
fn pool(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * 64u;
    let q = pp.pooled;
    if (o >= pp.maps * q * q) { return; }
    let map = o / (q * q);
    let py = (o % (q * q)) / q;
    let px = o % q;
    let d = pp.conv_size;
    let s = pp.pool;
    var base = map * d * d + py * s * d + px * s;
    var sum = 0.0;
    var best = conv[base];
    for (var u = 0u; u < s; u++) {
        for (var v = 0u; v < s; v++) {
            let value = conv[base + v];
            sum += value;
            best = max(best, value);
        }
        base += d;
    }
    out[o] = select(sum / f32(s * s), best, pp.kind == 1u);
}
