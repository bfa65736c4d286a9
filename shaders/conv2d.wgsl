// 2-D convolution layer with PyTorch's Conv2d semantics (MATH.md, "Layers beyond dense",
// Convolution), the GPU twin of src/layers/conv2d.rs. Images are NCHW rows (m × c·h·w); W is
// f × c·k·k row-major in θ (PyTorch's weight flattened), b has f values; outputs are
// m × f·h′·w′ with h′ = ⌊(h + 2p − k)/s⌋ + 1.
//
// The patch matrix P (one row per output position (n, y, x), one column per (c, i, j)) is
// implicit: P[(n, y, x), (c, i, j)] = in[n, c, y·s + i − p, x·s + j − p], 0 in the padding,
// read straight from the images, never built.
//
//   conv2d_forward            out = f(P Wᵀ + b), tiled like matmul.wgsl (64×64 tile, 4×4 per
//                             invocation, depth 16 in workgroup memory)
//   conv2d_weight_grad        partial sums of δᵀ[P | 1] over contiguous slices of the rows of P
//                             (the extra column of ones gives ∇b)
//   conv2d_weight_grad_finish ∇W = α Σ_slices (+ ∇W) (+ λW), ∇b = α Σ_slices (+ ∇b): the
//                             slices summed in order, so the bits are fixed (no float atomics)
//   conv2d_input_grad         ∂L/∂in[n, c, y, x] = Σ_{f,i,j that read it} δ[n, f, ·, ·] W[f, c, i, j],
//                             one invocation per input pixel gathering its terms (deterministic),
//                             times f′ of the layer below read from the stored input (act)
//
// Mirrors Conv2dParams in src/gpu/layers/mod.rs.

struct Conv2dParams {
    images: u32, channels: u32, height: u32, width: u32,
    filters: u32, kernel: u32, stride: u32, padding: u32,
    out_height: u32, out_width: u32, x_off: u32, w_off: u32,
    b_off: u32, act: u32, leaky_alpha: f32, alpha: f32,
    grad_w_off: u32, grad_b_off: u32, accumulate: u32, weight_decay: f32,
    slices: u32, slice_rows: u32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<storage, read> x: array<f32>;          // the layer's input (at x_off)
@group(0) @binding(1) var<storage, read> theta: array<f32>;      // W at w_off, b at b_off
@group(0) @binding(2) var<storage, read_write> out: array<f32>;  // output / partials / ∇θ / ∂L/∂in
@group(0) @binding(3) var<storage, read> delta: array<f32>;      // δ = ∂L/∂z (m × f·h′·w′) / partials
@group(0) @binding(4) var<uniform> cp: Conv2dParams;

// P[row, depth] for row = (n·h′ + y)·w′ + x and depth = (c·k + i)·k + j; 0 outside the image.
fn patch_value(row: u32, depth: u32) -> f32 {
    let positions = cp.out_height * cp.out_width;
    let n = row / positions;
    let pos = row % positions;
    let kk = cp.kernel * cp.kernel;
    let c = depth / kk;
    let ij = depth % kk;
    let yy = i32((pos / cp.out_width) * cp.stride + ij / cp.kernel) - i32(cp.padding);
    let xx = i32((pos % cp.out_width) * cp.stride + ij % cp.kernel) - i32(cp.padding);
    if (yy < 0 || xx < 0 || yy >= i32(cp.height) || xx >= i32(cp.width)) { return 0.0; }
    return x[cp.x_off + ((n * cp.channels + c) * cp.height + u32(yy)) * cp.width + u32(xx)];
}

// Workgroups: position tiles along x (folded into z past the per-dimension limit: tile
// wid.x + wid.z·nwg.x), filter tiles along y.
@compute @workgroup_size(16, 16, 1)
fn conv2d_forward(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                  @builtin(num_workgroups) nwg: vec3<u32>) {
    let positions = cp.out_height * cp.out_width;
    let rows = cp.images * positions;
    let depth = cp.channels * cp.kernel * cp.kernel;
    let row0 = (wid.x + wid.z * nwg.x) * TILE;
    let col0 = wid.y * TILE;
    let tid = lid.y * 16u + lid.x;
    let r = tid % TILE;
    let gr = row0 + r;
    let gf = col0 + r;

    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) { for (var j = 0u; j < 4u; j++) { acc[i][j] = 0.0; } }

    for (var k0 = 0u; k0 < depth; k0 += DEPTH) {
        for (var e = 0u; e < 4u; e++) {
            let kk = tid / TILE + 4u * e;
            let gk = k0 + kk;
            var va = 0.0;
            if (gr < rows && gk < depth) { va = patch_value(gr, gk); }
            tile_a[kk][r] = va;
            var vb = 0.0;
            if (gf < cp.filters && gk < depth) { vb = theta[cp.w_off + gf * depth + gk]; }
            tile_b[kk][r] = vb;
        }
        workgroupBarrier();
        tile_multiply_add(&acc, lid.x, lid.y);
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.x + 16u * i;
        if (row >= rows) { continue; }
        let n = row / positions;
        let pos = row % positions;
        for (var j = 0u; j < 4u; j++) {
            let f = col0 + lid.y + 16u * j;
            if (f >= cp.filters) { continue; }
            let z = acc[i][j] + theta[cp.b_off + f];
            out[(n * cp.filters + f) * positions + pos] = activate(cp.act, z, cp.leaky_alpha);
        }
    }
}

var<workgroup> tile_d: array<array<f32, 16>, 64>; // [row of P][filter]
var<workgroup> tile_p: array<array<f32, 16>, 64>; // [row of P][column of [P | 1]]

// partials[(slice·f + filter)·(c·k·k + 1) + col] = Σ_{rows of the slice, in order} δ[row, filter]·[P | 1][row, col].
// Workgroups: column tiles of 16 along x, filter tiles of 16 along y, slices along z. Rows are
// staged 64 at a time (4 per invocation), so that a barrier pair serves 64 multiply-adds.
@compute @workgroup_size(16, 16, 1)
fn conv2d_weight_grad(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let positions = cp.out_height * cp.out_width;
    let rows = cp.images * positions;
    let depth = cp.channels * cp.kernel * cp.kernel;
    let cols = depth + 1u;
    let col = wid.x * 16u + lid.x;
    let fo = wid.y * 16u + lid.y;
    let first = wid.z * cp.slice_rows;
    let last = min(rows, first + cp.slice_rows);
    let gf = wid.y * 16u + lid.x;
    var acc = 0.0;
    for (var k0 = first; k0 < last; k0 += 64u) {
        // Invocation (lx, ly) loads δ[k0 + r, filter tile + lx] and [P | 1][k0 + r, col] for
        // r = ly, ly + 16, ly + 32, ly + 48.
        for (var e = 0u; e < 4u; e++) {
            let r = lid.y + 16u * e;
            let gk = k0 + r;
            var vd = 0.0;
            if (gk < last && gf < cp.filters) {
                vd = delta[((gk / positions) * cp.filters + gf) * positions + gk % positions];
            }
            tile_d[r][lid.x] = vd;
            var vp = 0.0;
            if (gk < last && col < cols) { vp = select(patch_value(gk, col), 1.0, col == depth); }
            tile_p[r][lid.x] = vp;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 64u; kk++) { acc = fma(tile_d[kk][lid.y], tile_p[kk][lid.x], acc); }
        workgroupBarrier();
    }
    if (fo < cp.filters && col < cols) { out[(wid.z * cp.filters + fo) * cols + col] = acc; }
}

// ∇W[filter, col] at grad_w_off (col < c·k·k) or ∇b[filter] at grad_b_off (col = c·k·k):
// α · Σ_slices partials (the slices in order) (+ the old value when accumulate = 1) (+ λW,
// weights only, when weight_decay ≠ 0). One invocation per (filter, col), flat over a 2-D grid.
@compute @workgroup_size(64, 1, 1)
fn conv2d_weight_grad_finish(@builtin(global_invocation_id) gid: vec3<u32>,
                             @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * 64u;
    let depth = cp.channels * cp.kernel * cp.kernel;
    let cols = depth + 1u;
    if (o >= cp.filters * cols) { return; }
    let fo = o / cols;
    let col = o % cols;
    var s = 0.0;
    for (var slice = 0u; slice < cp.slices; slice++) { s += delta[slice * cp.filters * cols + o]; }
    var v = cp.alpha * s;
    if (col < depth) {
        let at = cp.grad_w_off + fo * depth + col;
        if (cp.accumulate == 1u) { v += out[at]; }
        if (cp.weight_decay != 0.0) { v += cp.weight_decay * theta[cp.w_off + fo * depth + col]; }
        out[at] = v;
    } else {
        let at = cp.grad_b_off + fo;
        if (cp.accumulate == 1u) { v += out[at]; }
        out[at] = v;
    }
}

// out[n, c, y, x] = f′(in[n, c, y, x]) · Σ_{f, i, j} δ[n, f, (y + p − i)/s, (x + p − j)/s] W[f, c, i, j]
// over the (i, j) whose division is exact and lands inside h′ × w′, in the order f, i, j.
// One invocation per input pixel, flat over a 2-D grid. The kernel rows that read the pixel
// are i ≡ y + p (mod s) between max(0, y + p − (h′ − 1)·s) and min(k − 1, y + p): the loops
// visit only those (a stride-2 layer's loop is a quarter of k², a border pixel's shorter).
@compute @workgroup_size(64, 1, 1)
fn conv2d_input_grad(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let o = gid.x + gid.y * nwg.x * 64u;
    let plane = cp.height * cp.width;
    let image = cp.channels * plane;
    if (o >= cp.images * image) { return; }
    let n = o / image;
    let c = (o % image) / plane;
    let ty = (o % plane) / cp.width + cp.padding;  // y + p
    let tx = o % cp.width + cp.padding;            // x + p
    let s = cp.stride;
    let i_lo = first_tap(ty, cp.out_height, s);
    let i_end = min(cp.kernel, ty + 1u);
    let j_lo = first_tap(tx, cp.out_width, s);
    let j_end = min(cp.kernel, tx + 1u);
    let positions = cp.out_height * cp.out_width;
    let depth = cp.channels * cp.kernel * cp.kernel;
    var acc = 0.0;
    for (var f = 0u; f < cp.filters; f++) {
        let d_base = (n * cp.filters + f) * positions;
        let w_base = cp.w_off + f * depth + c * cp.kernel * cp.kernel;
        for (var i = i_lo; i < i_end; i += s) {
            let d_row = d_base + ((ty - i) / s) * cp.out_width;
            let w_row = w_base + i * cp.kernel;
            for (var j = j_lo; j < j_end; j += s) {
                acc = fma(delta[d_row + (tx - j) / s], theta[w_row + j], acc);
            }
        }
    }
    out[o] = acc * derivative_from_value(cp.act, x[cp.x_off + o], cp.leaky_alpha);
}

// The smallest kernel index i with i ≡ t (mod s) and (t − i)/s ≤ out_side − 1, i.e.
// i ≥ t − (out_side − 1)·s: the first kernel row (or column) that reads padded row t.
fn first_tap(t: u32, out_side: u32, s: u32) -> u32 {
    let reach = (out_side - 1u) * s;
    let lo = select(0u, t - reach, t > reach);
    return lo + (t - lo) % s;
}
