// KL sparsity (MATH.md, "Sparsity"). From the column sums of the first hidden layer's
// activations over the whole batch: ρ̂_j = alpha · colsum_j (alpha = 1/m), then
//   dst[out_off + j]        = β(−ρ/ρ̂_j + (1−ρ)/(1−ρ̂_j))   (added to the hidden delta)
//   dst[out_off + cols + j] = β KL(ρ‖ρ̂_j)                  (summed into the cost)

@group(0) @binding(0) var<storage, read> colsum: array<f32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;

@compute @workgroup_size(64, 1, 1)
fn kl_terms(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    if (j >= p.cols) { return; }
    let rho_hat = p.alpha * colsum[p.in_off + j];
    let rho = p.rho;
    dst[p.out_off + j] = p.beta * (-rho / rho_hat + (1.0 - rho) / (1.0 - rho_hat));
    dst[p.out_off + p.cols + j] = p.beta * (rho * log(rho / rho_hat) + (1.0 - rho) * log((1.0 - rho) / (1.0 - rho_hat)));
}
