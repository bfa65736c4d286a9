// The recurrent layers' per-step kernels (MATH.md, "Layers beyond dense": Elman RNN, LSTM in
// PyTorch's gate order i, f, g, o, backpropagation through time). The products (the input
// projection of all T steps, h_{t-1} W_hh^T per step, their backward) go through the matmul
// kernels; these kernels are the fused passes between them. Compiled after common.wgsl
// (activate, derivative_from_value). Mirrors RecurrentParams in src/gpu/layers/recurrent.rs.
//
// Layouts, batch-major like the network's data (m sequences, T steps, h units):
//   z / gates / dz  m × T × G    (G = h for the RNN, 4h for the LSTM), row i·T + t
//   out             m × T × h    h_1 … h_T
//   cells           m × (T+1) × h  c_0 … c_T (block 0 the initial cell state)
//   carry_h/_c      m × h        δ passed from step t+1 to step t
// One invocation per (sequence i, unit j); no atomics, every value written by one invocation.

struct RecurrentParams {
    rows: u32, hidden: u32, steps: u32, step: u32,
    act: u32, first: u32, has_dh: u32, b_off: u32,
    dh_off: u32, dh_rs: u32, src_off: u32, src_rs: u32,
    dst_off: u32, dst_rs: u32, leaky_alpha: f32, _pad: u32,
}

@group(0) @binding(0) var<storage, read> r0: array<f32>;
@group(0) @binding(1) var<storage, read> r1: array<f32>;
@group(0) @binding(2) var<storage, read> r2: array<f32>;
@group(0) @binding(3) var<storage, read> r3: array<f32>;
@group(0) @binding(4) var<storage, read_write> w0: array<f32>;
@group(0) @binding(5) var<storage, read_write> w1: array<f32>;
@group(0) @binding(6) var<storage, read_write> w2: array<f32>;
@group(0) @binding(7) var<uniform> p: RecurrentParams;

// (i, j, in range) of this invocation over rows × hidden (flat, folded into y past the
// workgroup limit as layers/mod.rs's flat_grid dispatches it).
fn cell(gid: vec3<u32>, nwg: vec3<u32>) -> vec3<u32> {
    let flat = gid.x + gid.y * 64u * nwg.x;
    let i = flat / p.hidden;
    let j = flat % p.hidden;
    return vec3<u32>(i, j, select(0u, 1u, flat < p.rows * p.hidden));
}

// RNN forward, step t: out[i,t,j] = f(z[i,t,j] + b[j]), where z holds
// x_t W_ih^T + h_{t-1} W_hh^T. r0 = θ (b at b_off), r1 = z, w0 = out.
@compute @workgroup_size(64)
fn rnn_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = cell(gid, nwg);
    if (c.z == 0u) { return; }
    let at = (c.x * p.steps + p.step) * p.hidden + c.y;
    w0[at] = activate(p.act, r1[at] + r0[p.b_off + c.y], p.leaky_alpha);
}

// LSTM forward, step t: the four gates (with b) in place in `gates`, c_t into cells block
// t+1, h_t = o ⊙ tanh c_t into out. r0 = θ, w0 = gates, w1 = cells, w2 = out.
@compute @workgroup_size(64)
fn lstm_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = cell(gid, nwg);
    if (c.z == 0u) { return; }
    let h = p.hidden;
    let i = c.x;
    let j = c.y;
    let zb = (i * p.steps + p.step) * 4u * h;
    let ig = activate(0u, w0[zb + j] + r0[p.b_off + j], 0.0);
    let fg = activate(0u, w0[zb + h + j] + r0[p.b_off + h + j], 0.0);
    let gg = activate(1u, w0[zb + 2u * h + j] + r0[p.b_off + 2u * h + j], 0.0);
    let og = activate(0u, w0[zb + 3u * h + j] + r0[p.b_off + 3u * h + j], 0.0);
    w0[zb + j] = ig;
    w0[zb + h + j] = fg;
    w0[zb + 2u * h + j] = gg;
    w0[zb + 3u * h + j] = og;
    let cb = i * (p.steps + 1u) * h + p.step * h + j;
    let ct = fg * w1[cb] + ig * gg;
    w1[cb + h] = ct;
    w2[(i * p.steps + p.step) * h + j] = og * activate(1u, ct, 0.0);
}

// δh at step t: the layer above's (when has_dh: r0 at dh_off + i·dh_rs + j) plus the next
// step's (r1 = carry_h, unless this is the first step of the backward walk).
fn delta_h(i: u32, j: u32) -> f32 {
    var d = 0.0;
    if (p.has_dh == 1u) { d = r0[p.dh_off + i * p.dh_rs + j]; }
    if (p.first == 0u) { d += r1[i * p.hidden + j]; }
    return d;
}

// RNN backward, step t: dz[i,t,j] = δh ⊙ f′(h_t). r0 = δh from above, r1 = carry_h,
// r2 = out (h_t), w0 = dz.
@compute @workgroup_size(64)
fn rnn_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = cell(gid, nwg);
    if (c.z == 0u) { return; }
    let at = (c.x * p.steps + p.step) * p.hidden + c.y;
    w0[at] = delta_h(c.x, c.y) * derivative_from_value(p.act, r2[at], p.leaky_alpha);
}

// LSTM backward, step t (the CPU's gate_delta_row): δo = δh tanh c_t,
// δc = δc_next + δh o (1 − tanh² c_t), δi = δc g, δg = δc i, δf = δc c_{t−1},
// δc_{t−1} = δc f, each gate's dz its δ times its activation's derivative.
// r0 = δh from above, r1 = carry_h, r2 = gates, r3 = cells, w0 = dz, w1 = carry_c.
@compute @workgroup_size(64)
fn lstm_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = cell(gid, nwg);
    if (c.z == 0u) { return; }
    let h = p.hidden;
    let i = c.x;
    let j = c.y;
    let zb = (i * p.steps + p.step) * 4u * h;
    let ig = r2[zb + j];
    let fg = r2[zb + h + j];
    let gg = r2[zb + 2u * h + j];
    let og = r2[zb + 3u * h + j];
    let cb = i * (p.steps + 1u) * h + p.step * h + j;
    let c_prev = r3[cb];
    let tc = activate(1u, r3[cb + h], 0.0);
    let dh = delta_h(i, j);
    var dc_next = 0.0;
    if (p.first == 0u) { dc_next = w1[i * h + j]; }
    let d_o = dh * tc;
    let dc = dc_next + dh * og * (1.0 - tc * tc);
    let d_i = dc * gg;
    let d_g = dc * ig;
    let d_f = dc * c_prev;
    w1[i * h + j] = dc * fg;
    w0[zb + j] = d_i * ig * (1.0 - ig);
    w0[zb + h + j] = d_f * fg * (1.0 - fg);
    w0[zb + 2u * h + j] = d_g * (1.0 - gg * gg);
    w0[zb + 3u * h + j] = d_o * og * (1.0 - og);
}

// Copies rows × hidden values: w0[dst_off + i·dst_rs + j] = r0[src_off + i·src_rs + j]
// (a carried state into cells block 0; a final state out of the layer's buffers).
@compute @workgroup_size(64)
fn copy_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let c = cell(gid, nwg);
    if (c.z == 0u) { return; }
    w0[p.dst_off + c.x * p.dst_rs + c.y] = r0[p.src_off + c.x * p.src_rs + c.y];
}
