// 2-D pooling layer, max or mean over k × k regions every s pixels, no padding (MATH.md,
// "Layers beyond dense", Pooling), the GPU twin of src/layers/pool2d.rs. Batches are m × c·h·w
// rows in; m × c·h′·w′ out, h′ = (h − k)/s + 1 (the host refuses regions that do not cover).
//
//   pool2d_forward   one invocation per output value: the mean, or the max and its winner —
//                    the column of the example's input row it came from, the first in
//                    row-major order on ties; a NaN wins, so it reaches the cost
//   pool2d_backward  one invocation per input pixel, gathering the outputs whose region holds
//                    it (in output order, no float atomics): mean adds δ/k², max adds δ where
//                    the pixel won; then times f′ of the layer below, read from the input (act)
//
// Grids are flat over two dimensions: index gid.x + gid.y·(64·nwg.x).
// Mirrors Pool2dParams in src/gpu/layers/mod.rs.

struct Pool2dParams {
    images: u32, channels: u32, height: u32, width: u32,
    size: u32, stride: u32, out_height: u32, out_width: u32,
    kind: u32, x_off: u32, act: u32, leaky_alpha: f32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;             // the layer's input (at x_off)
@group(0) @binding(1) var<storage, read> delta: array<f32>;         // ∂L/∂out (backward)
@group(0) @binding(2) var<storage, read_write> out: array<f32>;     // pooled / ∂L/∂in
@group(0) @binding(3) var<storage, read_write> winners: array<u32>; // max: per output value
@group(0) @binding(4) var<uniform> pp: Pool2dParams;

const MEAN: u32 = 0u;

fn is_nan(v: f32) -> bool {
    let b = bitcast<u32>(v);
    return (b & 0x7f800000u) == 0x7f800000u && (b & 0x007fffffu) != 0u;
}

@compute @workgroup_size(64, 1, 1)
fn pool2d_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * 64u;
    let out_plane = pp.out_height * pp.out_width;
    let out_image = pp.channels * out_plane;
    if (o >= pp.images * out_image) { return; }
    let n = o / out_image;
    let c = (o % out_image) / out_plane;
    let py = (o % out_plane) / pp.out_width;
    let px = o % pp.out_width;
    let image = n * pp.channels * pp.height * pp.width;
    let first = (c * pp.height + py * pp.stride) * pp.width + px * pp.stride;
    var sum = 0.0;
    var best = x[pp.x_off + image + first];
    var at = first;
    for (var i = 0u; i < pp.size; i++) {
        for (var j = 0u; j < pp.size; j++) {
            let col = first + i * pp.width + j;
            let v = x[pp.x_off + image + col];
            sum += v;
            // Strictly greater: the first of equal values keeps the win.
            if (v > best || (is_nan(v) && !is_nan(best))) {
                best = v;
                at = col;
            }
        }
    }
    if (pp.kind == MEAN) {
        out[o] = sum / f32(pp.size * pp.size);
    } else {
        out[o] = best;
        winners[o] = at;
    }
}

@compute @workgroup_size(64, 1, 1)
fn pool2d_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * 64u;
    let plane = pp.height * pp.width;
    let image = pp.channels * plane;
    if (o >= pp.images * image) { return; }
    let n = o / image;
    let col = o % image;
    let c = col / plane;
    let yy = (col % plane) / pp.width;
    let xx = col % pp.width;
    // Regions py with py·s ≤ yy < py·s + k, inside 0 ≤ py < h′ (and px alike).
    let py_lo = select(0u, (yy + 1u - pp.size + pp.stride - 1u) / pp.stride, yy + 1u >= pp.size);
    let py_hi = min(yy / pp.stride, pp.out_height - 1u);
    let px_lo = select(0u, (xx + 1u - pp.size + pp.stride - 1u) / pp.stride, xx + 1u >= pp.size);
    let px_hi = min(xx / pp.stride, pp.out_width - 1u);
    let out_plane = pp.out_height * pp.out_width;
    let base = (n * pp.channels + c) * out_plane;
    let area = f32(pp.size * pp.size);
    var acc = 0.0;
    for (var py = py_lo; py <= py_hi; py++) {
        for (var px = px_lo; px <= px_hi; px++) {
            let at = base + py * pp.out_width + px;
            if (pp.kind == MEAN) {
                acc += delta[at] / area;
            } else if (winners[at] == col) {
                acc += delta[at];
            }
        }
    }
    out[o] = acc * derivative_from_value(pp.act, x[pp.x_off + o], pp.leaky_alpha);
}
