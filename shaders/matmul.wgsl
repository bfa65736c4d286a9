// C = alpha * op(A) op(B) (+ C) followed by a fused epilogue. Operands are addressed through
// (offset, row stride, column stride), so a transposed operand is a swap of strides — never a
// copy. Tiled for real GPUs: a 64×64 tile of C per workgroup of 16×16 invocations, each
// computing a 4×4 register block; A and B tiles of depth 16 staged in workgroup memory.
// Bounds are checked only when a tile is loaded, never in the multiply-add loop, which is
// tile_gemm.wgsl's (shared with the convolutions).
//
// The parameter block, the output bindings (2–5) and the epilogues live in
// matmul_epilogue.wgsl, shared with the texture-fed kernel.

@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;

@compute @workgroup_size(16, 16, 1)
fn matmul(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let row0 = wid.y * TILE;
    let col0 = wid.x * TILE;
    let tid = lid.y * 16u + lid.x;
    var acc: array<array<f32, 4>, 4>;
    for (var i = 0u; i < 4u; i++) { for (var j = 0u; j < 4u; j++) { acc[i][j] = 0.0; } }

    for (var k0 = 0u; k0 < p.k; k0 += DEPTH) {
        // 256 invocations load 64×16 values of each operand, 4 apiece.
        for (var e = 0u; e < 4u; e++) {
            let idx = tid + e * 256u;
            // A tile: row r, depth kk. Consecutive invocations take consecutive depths
            // when A is row-major (a_cs = 1) and consecutive rows otherwise.
            let r = idx / DEPTH;
            let kk = idx % DEPTH;
            let gr = row0 + r;
            let gk = k0 + kk;
            var va = 0.0;
            if (gr < p.m && gk < p.k) { va = a[p.a_off + gr * p.a_rs + gk * p.a_cs]; }
            tile_a[kk][r] = va;
            // B tile: depth kk2, column cc.
            let kk2 = idx / TILE;
            let cc = idx % TILE;
            let gk2 = k0 + kk2;
            let gc = col0 + cc;
            var vb = 0.0;
            if (gk2 < p.k && gc < p.n) { vb = b[p.b_off + gk2 * p.b_rs + gc * p.b_cs]; }
            tile_b[kk2][cc] = vb;
        }
        workgroupBarrier();
        tile_multiply_add(&acc, lid.y, lid.x);
        workgroupBarrier();
    }

    for (var i = 0u; i < 4u; i++) {
        let gr = row0 + lid.y + 16u * i;
        if (gr >= p.m) { continue; }
        for (var j = 0u; j < 4u; j++) {
            let gc = col0 + lid.x + 16u * j;
            if (gc >= p.n) { continue; }
            store_result(gr, gc, acc[i][j]);
        }
    }
}
