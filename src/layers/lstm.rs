//! The LSTM layer (MATH.md, "Layers beyond dense", LSTM and backpropagation through time;
//! PyTorch's `nn.LSTM`, its gate order i, f, g, o and weight layout, one bias per layer):
//!
//! [i; f; g; o] = W_ih x_t + W_hh h_{t−1} + b, i, f, o = σ(·), g = tanh(·),
//! c_t = f ⊙ c_{t−1} + i ⊙ g, h_t = o ⊙ tanh(c_t),
//!
//! from a given (h_0, c_0) (zero or carried from the previous window, truncated BPTT).
//! W_ih is 4h × n and W_hh 4h × h with the gates' rows in the order i, f, g, o, as
//! `torch.nn.LSTM`'s `weight_ih_l0` and `weight_hh_l0`; its `bias_ih_l0` is b and its
//! `bias_hh_l0` zero.
//!
//! Batches are time-major ((T·m) × n, see [`super::rnn`]). Forward: one GEMM for the input
//! projection of all steps, then per step a GEMM adding H_{t−1} W_hhᵀ and one fused sweep
//! (bias, the four gates, c_t, tanh c_t, h_t). Backward (t = T … 1), with δh_t the sum of the
//! output's δ and the next step's, and δc_t the next step's δc:
//! δo = δh ⊙ tanh c_t, δc = δc_t + δh ⊙ o ⊙ (1 − tanh² c_t), δi = δc ⊙ g, δg = δc ⊙ i,
//! δf = δc ⊙ c_{t−1}, δc_{t−1} = δc ⊙ f, each gate's δz its δ times its activation's derivative,
//! δh_{t−1} = δz_t W_hh — one fused sweep and one GEMM per step; then ∇W_ih, ∇W_hh, ∇b and ∇X
//! are one product each over all steps. The bits do not depend on the number of threads (the
//! products go through [`cpu::gemm`](crate::cpu::gemm), the sweeps are split over rows).

use ndarray::{Array2, ArrayView1, ArrayView2, Axis, Zip, s};

use super::rnn::{
    ParamGradients, StateGradients, batch_of, check_state, input_projection, parameter_gradients, rows_sweep,
};
use super::{check_dim, check_len, checked_len};
use crate::cpu::{Real, gemm};
use crate::{Error, Result};

/// An LSTM layer's geometry: `inputs` features per step, `hidden` units, `steps` steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lstm {
    /// n: features per step.
    pub inputs: usize,
    /// h: hidden units (and cells).
    pub hidden: usize,
    /// T: steps per sequence.
    pub steps: usize,
}

/// What the forward pass keeps for the backward pass, time-major, block t in rows t·m … t·m + m − 1.
#[derive(Clone, Debug)]
pub struct LstmForward<F> {
    /// The activated gates [i f g o] of steps 1 … T: (T·m) × 4h.
    pub gates: Array2<F>,
    /// c_0 … c_T: ((T+1)·m) × h (block 0 the initial cell state).
    pub cells: Array2<F>,
    /// tanh c_1 … tanh c_T: (T·m) × h.
    pub tanh_cells: Array2<F>,
    /// h_0 … h_T: ((T+1)·m) × h (block 0 the initial state).
    pub hidden: Array2<F>,
    /// m: sequences in the batch.
    pub batch: usize,
}

impl<F: Real> LstmForward<F> {
    /// h_1 … h_T: the layer's output, (T·m) × h time-major.
    pub fn outputs(&self) -> ArrayView2<'_, F> {
        self.hidden.slice(s![self.batch.., ..])
    }

    /// (h_T, c_T), each m × h: the state to carry into the next window.
    pub fn final_state(&self) -> (ArrayView2<'_, F>, ArrayView2<'_, F>) {
        let rows = self.hidden.nrows();
        (self.hidden.slice(s![rows - self.batch.., ..]), self.cells.slice(s![rows - self.batch.., ..]))
    }
}

/// True where the CPU runs AVX2 (x86-64): the row kernels below are then compiled for it too
/// (8 f32 lanes instead of SSE2's 4). Both builds do the same IEEE operations in the same order
/// (no fused multiply-add), so the bits are the same either way (as `cpu::net`'s sweeps).
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The fused gate pass of one example at one step: z = [z_i z_f z_g z_o] (the products, 4h)
/// becomes the activated gates [i f g o] (with b added), and c = f ⊙ c_prev + i ⊙ g,
/// tanh c, h = o ⊙ tanh c are written. Straight loops over contiguous slices, to vectorise.
#[inline(always)]
fn gate_row_plain<F: Real>(z: &mut [F], b: &[F], c_prev: &[F], c: &mut [F], h_out: &mut [F], tc: &mut [F]) {
    let h = c.len();
    assert!(z.len() == 4 * h && b.len() == 4 * h && c_prev.len() == h && h_out.len() == h && tc.len() == h);
    let (zif, zgo) = z.split_at_mut(2 * h);
    let (zg, zo) = zgo.split_at_mut(h);
    let (bif, bgo) = b.split_at(2 * h);
    let (bg, bo) = bgo.split_at(h);
    for (v, &bv) in zif.iter_mut().zip(bif) {
        *v = (*v + bv).sigmoid();
    }
    for (v, &bv) in zg.iter_mut().zip(bg) {
        *v = (*v + bv).tanh_act();
    }
    for (v, &bv) in zo.iter_mut().zip(bo) {
        *v = (*v + bv).sigmoid();
    }
    let (zi, zf) = zif.split_at(h);
    for j in 0..h {
        c[j] = zf[j] * c_prev[j] + zi[j] * zg[j];
    }
    for j in 0..h {
        tc[j] = c[j].tanh_act();
        h_out[j] = zo[j] * tc[j];
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gate_row_avx2<F: Real>(z: &mut [F], b: &[F], c_prev: &[F], c: &mut [F], h_out: &mut [F], tc: &mut [F]) {
    gate_row_plain(z, b, c_prev, c, h_out, tc)
}

fn gate_row<F: Real>(avx2: bool, z: &mut [F], b: &[F], c_prev: &[F], c: &mut [F], h_out: &mut [F], tc: &mut [F]) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is `has_avx2()`: the CPU has been checked for AVX2.
        return unsafe { gate_row_avx2(z, b, c_prev, c, h_out, tc) };
    }
    let _ = avx2;
    gate_row_plain(z, b, c_prev, c, h_out, tc)
}

/// One example's step of the backward gate pass: from δh (output's plus the next step's) and
/// δc_next (the next step's δc), writes the gates' pre-activation δz (4h) and replaces δc_next
/// by δc_{t−1} = δc ⊙ f (see the module notes for the formulas).
#[inline(always)]
fn gate_delta_row_plain<F: Real>(dz: &mut [F], dc_next: &mut [F], dh: &[F], gates: &[F], c_prev: &[F], tc: &[F]) {
    let h = dc_next.len();
    assert!(dz.len() == 4 * h && gates.len() == 4 * h && dh.len() == h && c_prev.len() == h && tc.len() == h);
    let (dzi, rest) = dz.split_at_mut(h);
    let (dzf, rest) = rest.split_at_mut(h);
    let (dzg, dzo) = rest.split_at_mut(h);
    let (gi, rest) = gates.split_at(h);
    let (gf, rest) = rest.split_at(h);
    let (gg, go) = rest.split_at(h);
    let one = F::one();
    for j in 0..h {
        let (i_gate, f_gate, g_gate, o_gate) = (gi[j], gf[j], gg[j], go[j]);
        let d_o = dh[j] * tc[j];
        let dc = dc_next[j] + dh[j] * o_gate * (one - tc[j] * tc[j]);
        let (d_i, d_g, d_f) = (dc * g_gate, dc * i_gate, dc * c_prev[j]);
        dc_next[j] = dc * f_gate;
        dzi[j] = d_i * i_gate * (one - i_gate);
        dzf[j] = d_f * f_gate * (one - f_gate);
        dzg[j] = d_g * (one - g_gate * g_gate);
        dzo[j] = d_o * o_gate * (one - o_gate);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn gate_delta_row_avx2<F: Real>(dz: &mut [F], dc_next: &mut [F], dh: &[F], gates: &[F], c_prev: &[F], tc: &[F]) {
    gate_delta_row_plain(dz, dc_next, dh, gates, c_prev, tc)
}

fn gate_delta_row<F: Real>(avx2: bool, dz: &mut [F], dc_next: &mut [F], dh: &[F], gates: &[F], c_prev: &[F], tc: &[F]) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: `avx2` is `has_avx2()`: the CPU has been checked for AVX2.
        return unsafe { gate_delta_row_avx2(dz, dc_next, dh, gates, c_prev, tc) };
    }
    let _ = avx2;
    gate_delta_row_plain(dz, dc_next, dh, gates, c_prev, tc)
}

fn slice<F>(row: ArrayView1<'_, F>) -> &[F] {
    row.to_slice().expect("rows of owned arrays are contiguous")
}

impl Lstm {
    /// An LSTM layer, or `Error::Shape` in one line when a size is zero or overflows. Nothing
    /// is allocated.
    pub fn new(inputs: usize, hidden: usize, steps: usize) -> Result<Lstm> {
        let layer = Lstm { inputs, hidden, steps };
        let name = layer.describe();
        if inputs == 0 || hidden == 0 || steps == 0 {
            return Err(Error::Shape(format!("{name}: features, units and steps must all be at least 1")));
        }
        checked_len(&name, "W_ih", &[4, hidden, inputs])?;
        checked_len(&name, "W_hh", &[4, hidden, hidden])?;
        Ok(layer)
    }

    /// "lstm (T steps of n → h)", as messages name the layer.
    pub fn describe(&self) -> String {
        format!("lstm ({} steps of {} → {})", self.steps, self.inputs, self.hidden)
    }

    fn check_weights(&self, name: &str, w_ih: (usize, usize), w_hh: (usize, usize)) -> Result<()> {
        let h4 = 4 * self.hidden;
        check_dim(name, "W_ih", w_ih, (h4, self.inputs))?;
        check_dim(name, "W_hh", w_hh, (h4, self.hidden))
    }

    /// The forward pass over T steps. `w_ih` is 4h × n, `w_hh` 4h × h, `b` has 4h values (gate
    /// order i, f, g, o), `x` is (T·m) × n time-major, `state` (h_0, c_0), each m × h (zero
    /// when `None`). Errors: `Error::Shape` when an array does not fit the layer.
    pub fn forward<F: Real>(
        &self,
        w_ih: ArrayView2<F>,
        w_hh: ArrayView2<F>,
        b: ArrayView1<F>,
        x: ArrayView2<F>,
        state: Option<(ArrayView2<F>, ArrayView2<F>)>,
    ) -> Result<LstmForward<F>> {
        let name = self.describe();
        let (h, steps) = (self.hidden, self.steps);
        self.check_weights(&name, w_ih.dim(), w_hh.dim())?;
        check_len(&name, "b", b.len(), 4 * h)?;
        let m = batch_of(&name, x.dim(), steps, self.inputs)?;
        check_state(&name, "h_0", state.map(|s| s.0), m, h)?;
        check_state(&name, "c_0", state.map(|s| s.1), m, h)?;
        checked_len(&name, "the gates", &[steps, m, 4 * h])?;
        let mut hidden = Array2::zeros(((steps + 1) * m, h));
        let mut cells = Array2::zeros(((steps + 1) * m, h));
        if let Some((h0, c0)) = state {
            hidden.slice_mut(s![..m, ..]).assign(&h0);
            cells.slice_mut(s![..m, ..]).assign(&c0);
        }
        let mut tanh_cells = Array2::zeros((steps * m, h));
        let mut gates = input_projection(w_ih, x);
        let b = b.as_standard_layout();
        let b = b.as_slice().expect("a standard-layout vector");
        let avx2 = has_avx2();
        // W_hhᵀ copied once, row-major: the per-step products then read it as it is, where the
        // transposed view was packed again at every step (a fifth of a char-LSTM step).
        let w_hh_t = w_hh.t().as_standard_layout().into_owned();
        for t in 0..steps {
            let rows = t * m..(t + 1) * m;
            let mut z = gates.slice_mut(s![rows.clone(), ..]);
            let (h_prev, mut h_next) = hidden.view_mut().split_at(Axis(0), (t + 1) * m);
            gemm(F::one(), &h_prev.slice(s![t * m.., ..]), &w_hh_t.view(), F::one(), &mut z);
            let (c_prev, mut c_next) = cells.view_mut().split_at(Axis(0), (t + 1) * m);
            let c_prev = c_prev.slice(s![t * m.., ..]);
            let (mut c_t, mut h_t) = (c_next.slice_mut(s![..m, ..]), h_next.slice_mut(s![..m, ..]));
            let mut tc_t = tanh_cells.slice_mut(s![rows, ..]);
            let zip =
                Zip::from(z.rows_mut()).and(c_prev.rows()).and(c_t.rows_mut()).and(h_t.rows_mut()).and(tc_t.rows_mut());
            rows_sweep!(m, zip, |mut z, c_prev, mut c, mut h_out, mut tc| {
                let z = z.as_slice_mut().expect("rows of owned arrays are contiguous");
                let (c, h_out, tc) = (
                    c.as_slice_mut().expect("contiguous"),
                    h_out.as_slice_mut().expect("contiguous"),
                    tc.as_slice_mut().expect("contiguous"),
                );
                gate_row(avx2, z, b, slice(c_prev), c, h_out, tc);
            });
        }
        Ok(LstmForward { gates, cells, tanh_cells, hidden, batch: m })
    }

    /// Backpropagation through time. `dh` is ∂L/∂h_t for t = 1 … T ((T·m) × h time-major;
    /// zero where a step's output is not used), `x` and `fwd` those of the forward pass.
    /// Writes ∇W_ih = α Σ_t δz_tᵀ x_t, ∇W_hh = α Σ_t δz_tᵀ h_{t−1} and ∇b = α Σ_t Σ_i δz_t
    /// (δz the gates' pre-activation δ, 4h wide) into `g`, and returns ∂L/∂X (when
    /// `want_input`), ∂L/∂h_0 and ∂L/∂c_0.
    #[allow(clippy::too_many_arguments)]
    pub fn backward<F: Real>(
        &self,
        w_ih: ArrayView2<F>,
        w_hh: ArrayView2<F>,
        x: ArrayView2<F>,
        fwd: &LstmForward<F>,
        dh: ArrayView2<F>,
        alpha: F,
        g: ParamGradients<'_, F>,
        want_input: bool,
    ) -> Result<StateGradients<F>> {
        let name = self.describe();
        let (h, steps) = (self.hidden, self.steps);
        self.check_weights(&name, w_ih.dim(), w_hh.dim())?;
        let m = batch_of(&name, x.dim(), steps, self.inputs)?;
        check_dim(&name, "the kept gates", fwd.gates.dim(), (steps * m, 4 * h))?;
        check_dim(&name, "the kept cells", fwd.cells.dim(), ((steps + 1) * m, h))?;
        check_dim(&name, "the kept states", fwd.hidden.dim(), ((steps + 1) * m, h))?;
        check_dim(&name, "the kept tanh c", fwd.tanh_cells.dim(), (steps * m, h))?;
        check_dim(&name, "δh", dh.dim(), (steps * m, h))?;
        self.check_weights(&name, g.w_ih.dim(), g.w_hh.dim())?;
        check_len(&name, "∇b", g.b.len(), 4 * h)?;
        let mut dz: Array2<F> = Array2::zeros((steps * m, 4 * h));
        let mut carry_h: Array2<F> = Array2::zeros((m, h));
        let mut carry_c: Array2<F> = Array2::zeros((m, h));
        let one = F::one();
        let avx2 = has_avx2();
        for t in (0..steps).rev() {
            let rows = t * m..(t + 1) * m;
            carry_h += &dh.slice(s![rows.clone(), ..]);
            let mut dz_t = dz.slice_mut(s![rows.clone(), ..]);
            let (gates, c_prev) = (fwd.gates.slice(s![rows.clone(), ..]), fwd.cells.slice(s![rows.clone(), ..]));
            let tc = fwd.tanh_cells.slice(s![rows, ..]);
            let zip = Zip::from(dz_t.rows_mut())
                .and(carry_c.rows_mut())
                .and(carry_h.rows())
                .and(gates.rows())
                .and(c_prev.rows())
                .and(tc.rows());
            rows_sweep!(m, zip, |mut dz, mut dc_next, dh, gates, c_prev, tc| {
                let dz = dz.as_slice_mut().expect("rows of owned arrays are contiguous");
                let dc_next = dc_next.as_slice_mut().expect("contiguous");
                gate_delta_row(avx2, dz, dc_next, slice(dh), slice(gates), slice(c_prev), slice(tc));
            });
            gemm(one, &dz_t.view(), &w_hh, F::zero(), &mut carry_h.view_mut());
        }
        let h_prev = fwd.hidden.slice(s![..steps * m, ..]);
        parameter_gradients(alpha, dz.view(), x, h_prev, g);
        let input = want_input.then(|| {
            let mut dx = Array2::zeros(x.dim());
            gemm(one, &dz.view(), &w_ih, F::zero(), &mut dx.view_mut());
            dx
        });
        Ok(StateGradients { input, h0: carry_h, c0: Some(carry_c) })
    }
}
