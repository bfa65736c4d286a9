// The register-blocked inner loop of the tiled GEMMs (matmul.wgsl, conv.wgsl, conv2d.wgsl),
// prepended to each at pipeline creation. A workgroup of 16 × 16 invocations computes a
// TILE × TILE block of the output; per DEPTH-long slice of the inner dimension it loads both
// operands' tiles into workgroup memory (each kernel its own way: strided matrices, implicit
// patch matrices), then every invocation adds the slice's products to its 4 × 4 block.

const TILE: u32 = 64u;
const DEPTH: u32 = 16u;

var<workgroup> tile_a: array<array<f32, 64>, 16>; // [depth][row of the output tile]
var<workgroup> tile_b: array<array<f32, 64>, 16>; // [depth][column of the output tile]

// acc[i][j] += Σ_kk tile_a[kk][a_lane + 16i] · tile_b[kk][b_lane + 16j], one fma per term in
// kk order (so every kernel sums in the same fixed order).
fn tile_multiply_add(acc: ptr<function, array<array<f32, 4>, 4>>, a_lane: u32, b_lane: u32) {
    for (var kk = 0u; kk < DEPTH; kk++) {
        var ra: array<f32, 4>;
        var rb: array<f32, 4>;
        for (var i = 0u; i < 4u; i++) { ra[i] = tile_a[kk][a_lane + 16u * i]; }
        for (var j = 0u; j < 4u; j++) { rb[j] = tile_b[kk][b_lane + 16u * j]; }
        for (var i = 0u; i < 4u; i++) {
            for (var j = 0u; j < 4u; j++) { (*acc)[i][j] = fma(ra[i], rb[j], (*acc)[i][j]); }
        }
    }
}
