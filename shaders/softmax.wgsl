// Softmax over each row of logits (row maximum subtracted) with the cross-entropy gradient
// P − onehot(y) and the per-row loss log Σ exp(z) − z_y (MATH.md). One invocation per row:
// class counts are small (10 for MNIST) and rows are many.

@group(0) @binding(1) var<storage, read> labels: array<u32>;       // at aux_off
@group(0) @binding(2) var<storage, read_write> z: array<f32>;       // rows × cols, in place
@group(0) @binding(3) var<storage, read_write> row_loss: array<f32>; // at partial_off

// flag 1: z ← P − onehot(label), row_loss ← −log P(label); flag 0: z ← P.
@compute @workgroup_size(64, 1, 1)
fn softmax(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i >= p.rows) { return; }
    let base = i * p.cols;
    var mx = z[base];
    for (var j = 1u; j < p.cols; j++) { mx = max(mx, z[base + j]); }
    var sum = 0.0;
    for (var j = 0u; j < p.cols; j++) { sum += exp(z[base + j] - mx); }
    let inv = 1.0 / sum;
    if (p.flag == 1u) {
        let label = labels[p.aux_off + i];
        row_loss[p.partial_off + i] = log(sum) - (z[base + label] - mx);
        for (var j = 0u; j < p.cols; j++) {
            z[base + j] = exp(z[base + j] - mx) * inv - select(0.0, 1.0, j == label);
        }
    } else {
        for (var j = 0u; j < p.cols; j++) { z[base + j] = exp(z[base + j] - mx) * inv; }
    }
}
