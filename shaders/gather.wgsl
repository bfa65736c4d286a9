// Gathers the rows of a shuffled minibatch on the device: dst row r = src row
// (indices[idx_off + r] − first), for the r whose index falls in this chunk's rows
// [first, first + rows); other rows of dst are left for the dispatch of the chunk that holds
// them. Values are copied as bits (u32), so f32 examples and u32 labels use the same kernel
// and a gathered batch is bit for bit the host's gather.

struct Params {
    count: u32,   // rows of dst (batch positions)
    width: u32,   // values per row
    first: u32,   // global index of src's first row
    rows: u32,    // rows in src
    idx_off: u32, // first batch position in `indices`
    stride: u32,  // invocations in the grid (groups × 256)
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read> indices: array<u32>;
@group(0) @binding(1) var<storage, read> src: array<u32>;
@group(0) @binding(2) var<storage, read_write> dst: array<u32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>) {
    let total = p.count * p.width;
    for (var e = gid.x; e < total; e += p.stride) {
        let r = e / p.width;
        let c = e - r * p.width;
        let g = indices[p.idx_off + r];
        if g >= p.first && g - p.first < p.rows {
            dst[e] = src[(g - p.first) * p.width + c];
        }
    }
}
