// Valid 2-D convolution of k learned features over a chunk of images, with the hidden layer's
// bias and activation fused (MATH.md, "Convolution and pooling of learned features"):
//
//   out[i, f, y, x] = act(b[f] + Σ_{ch,u,v} W[f, (ch·p + u)·p + v] · img[i, ch, y + u, x + v])
//
// This is a matmul over patches — rows are the B·d² patch positions (i, y, x), columns the k
// features, depth the c·p² patch values — without building the patch matrix (no im2col): a
// row starts at a fixed place in the image (i·c·n² + y·n + x) and a depth index adds a fixed
// offset (ch·n² + u·n + v), so A[row, depth] = img[start(row) + offset(depth)].
// Tiled like matmul.wgsl for real GPUs: a 64×64 tile per workgroup of 16×16 invocations, each
// with a 4×4 register block; depth steps of 16 staged in workgroup memory. Consecutive
// invocations take consecutive patch positions, so image loads and output stores (positions
// are contiguous in the output layout) are coalesced. Bounds are checked only at tile loads.
//
// Bindings: the images (B × c × n × n), the weights as Wᵀ (c·p² × k, row-major, so that a
// depth row of the tile is contiguous) followed by the k biases at bias_off, the output
// (B × k × d × d).

struct ConvParams {
    images: u32, image_size: u32, channels: u32, patch_size: u32,
    conv_size: u32, features: u32, depth: u32, act: u32,
    bias_off: u32, leaky_alpha: f32, _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<storage, read> img: array<f32>;
@group(0) @binding(1) var<storage, read> w: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> cp: ConvParams;

@compute @workgroup_size(16, 16, 1)
fn convolve(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let n = cp.image_size;
    let pp = cp.patch_size * cp.patch_size;
    let d = cp.conv_size;
    let dd = d * d;
    let rows = cp.images * dd;
    let row0 = wid.x * TILE;
    let col0 = wid.y * TILE;
    let tid = lid.y * 16u + lid.x;

    // Each invocation loads the same tile row (patch position) and tile column (feature) at
    // every depth step, at depths tid/64 + 4e: find where that patch starts once.
    let r = tid % TILE;
    let gr = row0 + r;
    let gi = gr / dd;
    let rem = gr % dd;
    let start = gi * cp.channels * n * n + (rem / d) * n + rem % d;
    let row_ok = gr < rows;
    let gf = col0 + r;
    let feature_ok = gf < cp.features;

    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) { for (var j = 0u; j < 4u; j++) { acc[i][j] = 0.0; } }

    for (var k0 = 0u; k0 < cp.depth; k0 += DEPTH) {
        for (var e = 0u; e < 4u; e++) {
            let kk = tid / TILE + 4u * e;
            let gk = k0 + kk;
            // depth gk = (ch·p + u)·p + v  →  offset ch·n² + u·n + v
            let ch = gk / pp;
            let uv = gk % pp;
            let offset = ch * n * n + (uv / cp.patch_size) * n + uv % cp.patch_size;
            var va = 0.0;
            if (row_ok && gk < cp.depth) { va = img[start + offset]; }
            tile_a[kk][r] = va;
            var vb = 0.0;
            if (feature_ok && gk < cp.depth) { vb = w[gk * cp.features + gf]; }
            tile_b[kk][r] = vb;
        }
        workgroupBarrier();
        tile_multiply_add(&acc, lid.x, lid.y);
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let row = row0 + lid.x + 16u * i;
        if (row >= rows) { continue; }
        let image = row / dd;
        let position = row % dd;
        for (var j = 0u; j < 4u; j++) {
            let f = col0 + lid.y + 16u * j;
            if (f >= cp.features) { continue; }
            let z = acc[i][j] + w[cp.bias_off + f];
            out[(image * cp.features + f) * dd + position] = activate(cp.act, z, cp.leaky_alpha);
        }
    }
}
