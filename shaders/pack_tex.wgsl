// Copies a matrix operand, addressed like every matmul operand through (offset, row stride,
// column stride) — so a transpose costs nothing here either — into an rgba32float texture for
// matmul_tex.wgsl: texel (x, y) holds elements (y, 4x .. 4x+3). Texels of the written region
// that fall outside the rows × cols matrix get zeros, so the matmul needs no bounds checks.

struct PackParams {
    rows: u32, cols: u32, off: u32, rs: u32,
    cs: u32, width: u32, height: u32, _pad: u32,
}

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var dst: texture_storage_2d<rgba32float, write>;
@group(0) @binding(2) var<uniform> pp: PackParams;

@compute @workgroup_size(8, 8, 1)
fn pack(@builtin(global_invocation_id) gid: vec3<u32>) {
    let x = gid.x;
    let y = gid.y;
    if (x >= pp.width || y >= pp.height) { return; }
    var v = vec4<f32>(0.0);
    if (y < pp.rows) {
        let base = pp.off + y * pp.rs;
        let col0 = 4u * x;
        for (var t = 0u; t < 4u; t++) {
            if (col0 + t < pp.cols) { v[t] = src[base + (col0 + t) * pp.cs]; }
        }
    }
    textureStore(dst, vec2<u32>(x, y), v);
}
