// The parameter block, output bindings and fused epilogues shared by every matmul kernel
// (matmul.wgsl, the tiled kernel for real GPUs; matmul_tex.wgsl, the texture-fed kernel for
// software adapters), so that both apply exactly the same arithmetic to a finished sum.
// Mirrors MatmulParams in src/gpu/kernels.rs. Each kernel binds its A and B at 0 and 1.
//
// Epilogues (params.epilogue; `EpilogueCode` in src/gpu/params.rs):
//   0 PLAIN:   c = alpha*acc + accumulate*c + decay*aux[aux_off + i*c_rs + j]
//              (weight gradient: (1/m) δᵀA, plus λW on the first chunk)
//   1 BIAS_ACT: c = f(acc + aux[aux_off + j])              (forward layer)
//   2 DELTA:   c = (acc + kl[j]) * f'(aux2[i, j])           (hidden delta; kl from aux
//              when has_kl = 1, else 0; with act = 5, FPRIME_GIVEN, aux2 holds f' itself)

const EPILOGUE_PLAIN: u32 = 0u;
const EPILOGUE_BIAS_ACT: u32 = 1u;
const EPILOGUE_DELTA: u32 = 2u;

struct Params {
    m: u32, n: u32, k: u32, epilogue: u32,
    a_off: u32, a_rs: u32, a_cs: u32, act: u32,
    b_off: u32, b_rs: u32, b_cs: u32, accumulate: u32,
    c_off: u32, c_rs: u32, aux_off: u32, has_kl: u32,
    aux2_off: u32, aux2_rs: u32, alpha: f32, decay: f32,
    leaky_alpha: f32, rows_first: u32, _pad1: u32, _pad2: u32,
}

@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<storage, read> aux: array<f32>;
@group(0) @binding(4) var<storage, read> aux2: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

// Applies the epilogue to the finished sum `v` of element (gr, gc), which must be in range.
fn store_result(gr: u32, gc: u32, v: f32) {
    let ci = p.c_off + gr * p.c_rs + gc;
    switch p.epilogue {
        case EPILOGUE_PLAIN: {
            var out = p.alpha * v;
            if (p.accumulate == 1u) { out += c[ci]; }
            if (p.decay != 0.0) { out += p.decay * aux[p.aux_off + gr * p.c_rs + gc]; }
            c[ci] = out;
        }
        case EPILOGUE_BIAS_ACT: {
            c[ci] = activate(p.act, v + aux[p.aux_off + gc], p.leaky_alpha);
        }
        case EPILOGUE_DELTA, default: {
            var d = v;
            if (p.has_kl == 1u) { d += aux[p.aux_off + gc]; }
            c[ci] = d * derivative_from_value(p.act, aux2[p.aux2_off + gr * p.aux2_rs + gc], p.leaky_alpha);
        }
    }
}
