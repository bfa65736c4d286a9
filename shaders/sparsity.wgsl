// KL sparsity (MATH.md, "Sparsity" and "Numerically safe forms"). From the column sums over
// the whole batch of the first hidden layer's σ(z) (at in_off) and σ(−z) (at in_off + cols):
// ρ̂_j = alpha · colsum_j and 1 − ρ̂_j = alpha · colsum_{cols+j} (alpha = 1/m), each a mean of
// its own — 1 − ρ̂ formed by subtraction is 0 once ρ̂ rounds to 1 — then
//   dst[out_off + j]        = β(−ρ/ρ̂_j + (1−ρ)/(1−ρ̂_j))                     (hidden delta)
//   dst[out_off + cols + j] = β[ρ(ln ρ − ln ρ̂_j) + (1−ρ)(ln(1−ρ) − ln(1−ρ̂_j))]  (the cost)

@group(0) @binding(0) var<storage, read> colsum: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn kl_terms(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= p.cols) { return; }
    let rho_hat = p.alpha * colsum[p.in_off + j];
    let rho_hat_c = p.alpha * colsum[p.in_off + p.cols + j];
    let rho = p.rho;
    let rho_c = 1.0 - rho;
    dst[p.out_off + j] = p.beta * (-rho / rho_hat + rho_c / rho_hat_c);
    dst[p.out_off + p.cols + j] = p.beta * (rho * (log(rho) - log(rho_hat)) + rho_c * (log(rho_c) - log(rho_hat_c)));
}
