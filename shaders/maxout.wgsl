// Maxout's max over pieces (MATH.md, "Layers beyond dense", Maxout; Goodfellow et al. 2013),
// the GPU twin of src/layers/maxout.rs. z = A Wᵀ + b comes from the matmul (m × units·k, the
// pieces of unit u in columns u·k … u·k + k − 1); out is m × units.
//
//   maxout_forward   out[n, u] = max_p z[n, u·k + p], winner = u·k + p (the first on ties; a
//                    NaN wins, so it reaches the cost), one invocation per output
//   maxout_backward  ∂L/∂z[n, u·k + p] = δ[n, u] at the winner, 0 elsewhere, one invocation
//                    per piece (every value written)
//
// Grids are flat over two dimensions: index gid.x + gid.y·(64·nwg.x).
// Mirrors MaxoutParams in src/gpu/layers/mod.rs.

struct MaxoutParams {
    rows: u32, units: u32, pieces: u32, _pad: u32,
}

@group(0) @binding(0) var<storage, read> z: array<f32>;
@group(0) @binding(1) var<storage, read> delta: array<f32>;         // ∂L/∂out (backward)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;     // out / ∂L/∂z
@group(0) @binding(3) var<storage, read_write> winners: array<u32>;
@group(0) @binding(4) var<uniform> mp: MaxoutParams;

fn is_nan(v: f32) -> bool {
    let b = bitcast<u32>(v);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}

@compute @workgroup_size(64, 1, 1)
fn maxout_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * 64u;
    if (o >= mp.rows * mp.units) { return; }
    let n = o / mp.units;
    let u = o % mp.units;
    let first = n * mp.units * mp.pieces + u * mp.pieces;
    var best = z[first];
    var at = 0u;
    for (var p = 1u; p < mp.pieces; p++) {
        let v = z[first + p];
        // Strictly greater: the first of equal pieces keeps the win.
        if (v > best || (is_nan(v) && !is_nan(best))) {
            best = v;
            at = p;
        }
    }
    out[o] = best;
    winners[o] = u * mp.pieces + at;
}

@compute @workgroup_size(64, 1, 1)
fn maxout_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * 64u;
    let width = mp.units * mp.pieces;
    if (o >= mp.rows * width) { return; }
    let n = o / width;
    let col = o % width;
    let at = n * mp.units + col / mp.pieces;
    out[o] = select(0.0, delta[at], winners[at] == col);
}
