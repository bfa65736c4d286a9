// C = op(A) op(B) and the fused epilogue of matmul_epilogue.wgsl, with A and B read from
// rgba32float textures packed by pack_tex.wgsl. For software adapters (Mesa's lavapipe /
// llvmpipe), where storage-buffer and workgroup-memory loads run lane by lane with a bounds
// check each while texel fetches are vectorised (../shared/notes/lavapipe.md, BENCHMARKS.md):
// there this kernel is ~8× the tiled one. On real GPUs the tiled kernel stays.
//
// A texture: texel (q, i) = A[i, 4q .. 4q+3]; B texture: texel (j, kk) = B[kk, 4j .. 4j+3].
// Both are zero-padded (depth to a multiple of 4, rows of A to a whole row block, columns of
// B to whole workgroups), so the loop has no bounds checks. Each invocation computes a block
// of 8 rows × 4 columns (ROWS in src/gpu/texmatmul.rs; 8 × 4 beat 4 × 4 on lavapipe, see
// BENCHMARKS.md); the 8 invocations of a workgroup take consecutive column groups, so the
// lanes of llvmpipe's SIMD vector fetch neighbouring texels.

@group(0) @binding(0) var ta: texture_2d<f32>;
@group(0) @binding(1) var tb: texture_2d<f32>;

// The sum a·[b0 b1 b2 b3] added to acc, for one row and a depth of 4.
fn step4(acc: vec4<f32>, a: vec4<f32>, b0: vec4<f32>, b1: vec4<f32>, b2: vec4<f32>, b3: vec4<f32>) -> vec4<f32> {
    return fma(vec4<f32>(a.w), b3, fma(vec4<f32>(a.z), b2, fma(vec4<f32>(a.y), b1, fma(vec4<f32>(a.x), b0, acc))));
}

fn store_row(gr: u32, col4: u32, v: vec4<f32>) {
    if (gr >= p.m) { return; }
    for (var t = 0u; t < 4u; t++) {
        let gc = 4u * col4 + t;
        if (gc < p.n) { store_result(gr, gc, v[t]); }
    }
}

@compute @workgroup_size(8, 1, 1)
fn matmul_tex(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    // Workgroup x runs fastest. With rows_first, x counts row blocks, so consecutive
    // workgroups share one strip of B and each block of A is read once per strip.
    let strip = select(wid.x, wid.y, p.rows_first == 1u);
    let block = select(wid.y, wid.x, p.rows_first == 1u);
    let col4 = strip * 8u + lid.x;
    let row0 = block * 8u;
    let depth = (p.k + 3u) / 4u;
    var c0 = vec4<f32>(0.0);
    var c1 = vec4<f32>(0.0);
    var c2 = vec4<f32>(0.0);
    var c3 = vec4<f32>(0.0);
    var c4 = vec4<f32>(0.0);
    var c5 = vec4<f32>(0.0);
    var c6 = vec4<f32>(0.0);
    var c7 = vec4<f32>(0.0);
    for (var q = 0u; q < depth; q++) {
        let kb = 4u * q;
        let b0 = textureLoad(tb, vec2<u32>(col4, kb), 0);
        let b1 = textureLoad(tb, vec2<u32>(col4, kb + 1u), 0);
        let b2 = textureLoad(tb, vec2<u32>(col4, kb + 2u), 0);
        let b3 = textureLoad(tb, vec2<u32>(col4, kb + 3u), 0);
        c0 = step4(c0, textureLoad(ta, vec2<u32>(q, row0), 0), b0, b1, b2, b3);
        c1 = step4(c1, textureLoad(ta, vec2<u32>(q, row0 + 1u), 0), b0, b1, b2, b3);
        c2 = step4(c2, textureLoad(ta, vec2<u32>(q, row0 + 2u), 0), b0, b1, b2, b3);
        c3 = step4(c3, textureLoad(ta, vec2<u32>(q, row0 + 3u), 0), b0, b1, b2, b3);
        c4 = step4(c4, textureLoad(ta, vec2<u32>(q, row0 + 4u), 0), b0, b1, b2, b3);
        c5 = step4(c5, textureLoad(ta, vec2<u32>(q, row0 + 5u), 0), b0, b1, b2, b3);
        c6 = step4(c6, textureLoad(ta, vec2<u32>(q, row0 + 6u), 0), b0, b1, b2, b3);
        c7 = step4(c7, textureLoad(ta, vec2<u32>(q, row0 + 7u), 0), b0, b1, b2, b3);
    }
    store_row(row0, col4, c0);
    store_row(row0 + 1u, col4, c1);
    store_row(row0 + 2u, col4, c2);
    store_row(row0 + 3u, col4, c3);
    store_row(row0 + 4u, col4, c4);
    store_row(row0 + 5u, col4, c5);
    store_row(row0 + 6u, col4, c6);
    store_row(row0 + 7u, col4, c7);
}
