// Elementwise activations and derivatives over a rows × cols block. The training path and
// `forward()` fuse these into the matmul epilogues, so `elementwise` serves only the parity
// tests of the activation maths (tests/gpu_kernels.rs); `sigmoid_complement` is the sparse
// autoencoder's hidden layer in the dense plan.

@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<storage, read_write> dst2: array<f32>;

// dst[i, j] = f(src[i, j])           (flag 0)
// dst[i, j] = f'(a = src[i, j])      (flag 1)
@compute @workgroup_size(16, 16, 1)
fn elementwise(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y;
    let j = gid.x;
    if (i >= p.rows || j >= p.cols) { return; }
    let v = src[p.in_off + i * p.in_rs + j];
    var out: f32;
    if (p.flag == 0u) { out = activate(p.act, v, p.leaky_alpha); } else { out = derivative_from_value(p.act, v, p.leaky_alpha); }
    dst[p.out_off + i * p.cols + j] = out;
}

// A sigmoid layer under KL sparsity (MATH.md, "Numerically safe forms"), from z = src[i, j]:
//   dst[i, j]  = σ(z)
//   dst2[i, j] = σ(−z) = 1 − σ(z)      (flag 0: summed into 1 − ρ̂)
//   dst2[i, j] = σ(z)·σ(−z) = f′(z)    (flag 1: the derivative the hidden delta uses)
// Both from z: where σ(z) rounds to 1 (z ≳ 17), 1 − σ(z) and σ(z)(1 − σ(z)) are 0, while σ(−z)
// keeps e^{−z}.
@compute @workgroup_size(16, 16, 1)
fn sigmoid_complement(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.y;
    let j = gid.x;
    if (i >= p.rows || j >= p.cols) { return; }
    let z = src[p.in_off + i * p.in_rs + j];
    let a = activate(ACT_SIGMOID, z, 0.0);
    let c = activate(ACT_SIGMOID, -z, 0.0);
    dst[i * p.cols + j] = a;
    dst2[i * p.cols + j] = select(c, a * c, p.flag == 1u);
}
