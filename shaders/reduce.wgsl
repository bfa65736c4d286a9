// Deterministic reductions (no float atomics): column sums in two passes (blocks of rows, then
// the blocks in order), and a one-workgroup tree sum of a range. Used for bias gradients,
// ρ̂, the loss and the weight-decay term.

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

const BLOCK_ROWS: u32 = 256u;
// What sum_range sums (p.act; `SumOf` in src/gpu/params.rs).
const SUM_VALUES: u32 = 0u;
const SUM_SQUARES: u32 = 1u;

// dst[partial_off + blk*cols + j] = Σ_{i in block blk} src[in_off + i*in_rs + j]
@compute @workgroup_size(64, 1, 1)
fn column_partials(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let j = gid.x;
    if (j >= p.cols) { return; }
    let start = wid.y * BLOCK_ROWS;
    let end = min(p.rows, start + BLOCK_ROWS);
    var s = 0.0;
    for (var i = start; i < end; i++) { s += src[p.in_off + i * p.in_rs + j]; }
    dst[p.partial_off + wid.y * p.cols + j] = s;
}

// dst[out_off + j] = alpha * Σ_blk src[in_off + blk*cols + j] (+ dst[out_off + j] if flag 1)
// with len = number of blocks.
@compute @workgroup_size(64, 1, 1)
fn column_finish(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= p.cols) { return; }
    var s = 0.0;
    for (var blk = 0u; blk < p.len; blk++) { s += src[p.in_off + blk * p.cols + j]; }
    var out = p.alpha * s;
    if (p.flag == 1u) { out += dst[p.out_off + j]; }
    dst[p.out_off + j] = out;
}

var<workgroup> scratch: array<f32, 256>;

// dst[out_off] = Σ_{i < len} g(src[in_off + i]), g = identity (SUM_VALUES) or square (SUM_SQUARES);
// plus dst[out_off] if flag 1. One workgroup; each invocation strides through the range.
@compute @workgroup_size(256, 1, 1)
fn sum_range(@builtin(local_invocation_index) lix: u32) {
    var s = 0.0;
    for (var i = lix; i < p.len; i += 256u) {
        let v = src[p.in_off + i];
        s += select(v, v * v, p.act == SUM_SQUARES);
    }
    scratch[lix] = s;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w >>= 1u) {
        if (lix < w) { scratch[lix] += scratch[lix + w]; }
        workgroupBarrier();
    }
    if (lix == 0u) {
        var out = scratch[0];
        if (p.flag == 1u) { out += dst[p.out_off]; }
        dst[p.out_off] = out;
    }
}
