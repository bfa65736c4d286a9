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
//! (bias, the four gates, c_t, tanh c_t, h_t). The recurrence runs in lock step
//! ([`super::rnn`], "Threads"): the hidden units fall into fixed blocks of 32, the gate rows
//! are regrouped so that a block's four gates are adjacent ([`gate_order`]), and each task
//! computes its block's share of a step's product and that block's gate pass in one go, one
//! synchronisation per step. Backward (t = T … 1), with δh_t the sum of the output's δ and the
//! next step's, and δc_t the next step's δc:
//! δo = δh ⊙ tanh c_t, δc = δc_t + δh ⊙ o ⊙ (1 − tanh² c_t), δi = δc ⊙ g, δg = δc ⊙ i,
//! δf = δc ⊙ c_{t−1}, δc_{t−1} = δc ⊙ f, each gate's δz its δ times its activation's derivative,
//! δh_{t−1} = δz_t W_hh — one fused sweep and one GEMM per step; then ∇W_ih, ∇W_hh, ∇b and ∇X
//! are one product each over all steps. The bits do not depend on the number of threads (the
//! products go through [`cpu::gemm`](crate::cpu::gemm) or, per block, through
//! [`cpu::gemm_serial`](crate::cpu::gemm_serial) on blocks fixed by h alone).

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, s};

use super::rnn::{
    ParamGradients, Scratch, SharedRows, StateGradients, batch_of, check_state, gathered_rows, gathered_transpose,
    input_projection, lockstep, lockstep_threads, one_hot_columns, parameter_gradients, unit_blocks,
};
use super::{check_dim, check_len, checked_len};
use crate::cpu::{Real, gemm, gemm_serial};
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
    /// The activated gates of steps 1 … T: (T·m) × 4h, the columns grouped per block of units
    /// (column r holds θ's gate row [`gate_order`]`(h)[r]`: per block, its i, f, g, o).
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

    /// Gives the kept arrays' buffers back to `scratch`.
    pub(crate) fn recycle(self, scratch: &mut Scratch<F>) {
        [self.gates, self.cells, self.tanh_cells, self.hidden].into_iter().for_each(|a| scratch.recycle(a));
    }
}

/// The widest vector unit the row kernels below are compiled for on this CPU: AVX-512 (16 f32
/// lanes), AVX2 (8) or the baseline (SSE2's 4 on x86-64). Every build does the same IEEE
/// operations in the same order (no fused multiply-add), so the bits are the same either way
/// (as `cpu::net`'s sweeps); a block's rows are 32 units, two AVX-512 vectors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Simd {
    Avx512,
    Avx2,
    Plain,
}

fn simd() -> Simd {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return Simd::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return Simd::Avx2;
        }
    }
    Simd::Plain
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gate_row_avx512<F: Real>(z: &mut [F], b: &[F], c_prev: &[F], c: &mut [F], h_out: &mut [F], tc: &mut [F]) {
    gate_row_plain(z, b, c_prev, c, h_out, tc)
}

fn gate_row<F: Real>(simd: Simd, z: &mut [F], b: &[F], c_prev: &[F], c: &mut [F], h_out: &mut [F], tc: &mut [F]) {
    #[cfg(target_arch = "x86_64")]
    match simd {
        // SAFETY: `simd` is `simd()`: the CPU has been checked for AVX-512F.
        Simd::Avx512 => return unsafe { gate_row_avx512(z, b, c_prev, c, h_out, tc) },
        // SAFETY: as above, for AVX2.
        Simd::Avx2 => return unsafe { gate_row_avx2(z, b, c_prev, c, h_out, tc) },
        Simd::Plain => {}
    }
    let _ = simd;
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn gate_delta_row_avx512<F: Real>(dz: &mut [F], dc_next: &mut [F], dh: &[F], gates: &[F], c_prev: &[F], tc: &[F]) {
    gate_delta_row_plain(dz, dc_next, dh, gates, c_prev, tc)
}

fn gate_delta_row<F: Real>(simd: Simd, dz: &mut [F], dc_next: &mut [F], dh: &[F], gates: &[F], c_prev: &[F], tc: &[F]) {
    #[cfg(target_arch = "x86_64")]
    match simd {
        // SAFETY: `simd` is `simd()`: the CPU has been checked for AVX-512F.
        Simd::Avx512 => return unsafe { gate_delta_row_avx512(dz, dc_next, dh, gates, c_prev, tc) },
        // SAFETY: as above, for AVX2.
        Simd::Avx2 => return unsafe { gate_delta_row_avx2(dz, dc_next, dh, gates, c_prev, tc) },
        Simd::Plain => {}
    }
    let _ = simd;
    gate_delta_row_plain(dz, dc_next, dh, gates, c_prev, tc)
}

/// The gate rows of W_ih, W_hh and b (θ's order i, f, g, o, each h rows) regrouped per block of
/// units ([`unit_blocks`]): entry r is the θ row that the kept gates' column r holds. Block j of
/// units [u₀, u₁) takes columns [4u₀, 4u₁): its i rows, then f, g and o, each u₁ − u₀ wide. A
/// block's product and gate pass then touch one contiguous range of columns.
pub fn gate_order(hidden: usize) -> Vec<usize> {
    unit_blocks(hidden)
        .into_iter()
        .flat_map(|units| (0..4).flat_map(move |q| units.clone().map(move |u| q * hidden + u)))
        .collect()
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
        self.forward_in(&mut Scratch::default(), w_ih, w_hh, b, x, one_hot_columns(x).as_deref(), state)
    }

    /// [`Lstm::forward`] with its arrays from `scratch` (their old values unread) and the
    /// one-hot columns of `x` given (`None`: x is not one-hot).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward_in<F: Real>(
        &self,
        scratch: &mut Scratch<F>,
        w_ih: ArrayView2<F>,
        w_hh: ArrayView2<F>,
        b: ArrayView1<F>,
        x: ArrayView2<F>,
        one_hot: Option<&[usize]>,
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
        // Every value below is written before it is read: block 0 of `hidden` and `cells` here,
        // the rest by the steps.
        let mut hidden = scratch.array((steps + 1) * m, h);
        let mut cells = scratch.array((steps + 1) * m, h);
        match state {
            Some((h0, c0)) => {
                hidden.slice_mut(s![..m, ..]).assign(&h0);
                cells.slice_mut(s![..m, ..]).assign(&c0);
            }
            None => {
                hidden.slice_mut(s![..m, ..]).fill(F::zero());
                cells.slice_mut(s![..m, ..]).fill(F::zero());
            }
        }
        let mut tanh_cells = scratch.array(steps * m, h);
        // The gate rows regrouped per block of units ([`gate_order`]): the input projection
        // lands in that order, and W_hhᵀ is copied once, row-major, so that block j's product
        // reads its 4·|block| contiguous columns as they are.
        let blocks = unit_blocks(h);
        let order = gate_order(h);
        let mut gates = scratch.array(steps * m, 4 * h);
        let w_ih_t = gathered_transpose(scratch, w_ih, &order);
        input_projection(w_ih_t.view(), x, one_hot, gates.view_mut());
        scratch.recycle(w_ih_t);
        let w_hh_t = gathered_transpose(scratch, w_hh, &order);
        let b: Vec<F> = order.iter().map(|&r| b[r]).collect();
        let simd = simd();
        let threads = lockstep_threads(blocks.len(), m * 4 * h * h);
        let (mut gates_v, mut hidden_v, mut cells_v, mut tanh_v) =
            (gates.view_mut(), hidden.view_mut(), cells.view_mut(), tanh_cells.view_mut());
        let (z_all, h_all, c_all, tc_all) = (
            SharedRows::new(&mut gates_v),
            SharedRows::new(&mut hidden_v),
            SharedRows::new(&mut cells_v),
            SharedRows::new(&mut tanh_v),
        );
        // Task (t, j): block j's gate columns of step t = its input projection + h_{t−1} times
        // its columns of W_hhᵀ, then the gate pass of its units.
        lockstep(steps, blocks.len(), threads, &|t, j| {
            let units = blocks[j].clone();
            let cols = 4 * units.start..4 * units.end;
            let (rows, next) = (t * m..(t + 1) * m, (t + 1) * m..(t + 2) * m);
            // SAFETY: task (t, j) alone writes step t's gate columns of block j and block j's
            // units of c_t, h_t and tanh c_t (rows t + 1 of `cells` and `hidden`, t of
            // `tanh_cells`). It reads h_{t−1} whole and c_{t−1}'s units of block j (rows t), which
            // every task of step t − 1 finished writing before any task of step t began
            // (`lockstep`), and which no task of step t writes.
            let (mut z, h_prev, c_prev, mut c_t, mut h_t, mut tc_t) = unsafe {
                (
                    z_all.part_mut(rows.clone(), cols.clone()),
                    h_all.part(rows.clone(), 0..h),
                    c_all.part(rows.clone(), units.clone()),
                    c_all.part_mut(next.clone(), units.clone()),
                    h_all.part_mut(next, units.clone()),
                    tc_all.part_mut(rows, units),
                )
            };
            gemm_serial(F::one(), &h_prev, &w_hh_t.slice(s![.., cols.clone()]), F::one(), &mut z);
            let b = &b[cols];
            for i in 0..m {
                let z = z.row_mut(i).into_slice().expect("contiguous rows");
                let (c, h_out, tc) = (
                    c_t.row_mut(i).into_slice().expect("contiguous rows"),
                    h_t.row_mut(i).into_slice().expect("contiguous rows"),
                    tc_t.row_mut(i).into_slice().expect("contiguous rows"),
                );
                gate_row(simd, z, b, slice(c_prev.row(i)), c, h_out, tc);
            }
        });
        scratch.recycle(w_hh_t);
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
        let one_hot = one_hot_columns(x);
        self.backward_in(&mut Scratch::default(), w_ih, w_hh, x, one_hot.as_deref(), fwd, dh, alpha, g, want_input)
    }

    /// [`Lstm::backward`] with its arrays from `scratch` and the one-hot columns of `x` given
    /// (`None`: x is not one-hot).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward_in<F: Real>(
        &self,
        scratch: &mut Scratch<F>,
        w_ih: ArrayView2<F>,
        w_hh: ArrayView2<F>,
        x: ArrayView2<F>,
        one_hot: Option<&[usize]>,
        fwd: &LstmForward<F>,
        dh: ArrayView2<F>,
        alpha: F,
        g: ParamGradients<'_, F>,
        want_input: bool,
    ) -> Result<StateGradients<F>> {
        let name = self.describe();
        let (n, h, steps) = (self.inputs, self.hidden, self.steps);
        self.check_weights(&name, w_ih.dim(), w_hh.dim())?;
        let m = batch_of(&name, x.dim(), steps, self.inputs)?;
        check_dim(&name, "the kept gates", fwd.gates.dim(), (steps * m, 4 * h))?;
        check_dim(&name, "the kept cells", fwd.cells.dim(), ((steps + 1) * m, h))?;
        check_dim(&name, "the kept states", fwd.hidden.dim(), ((steps + 1) * m, h))?;
        check_dim(&name, "the kept tanh c", fwd.tanh_cells.dim(), (steps * m, h))?;
        check_dim(&name, "δh", dh.dim(), (steps * m, h))?;
        self.check_weights(&name, g.w_ih.dim(), g.w_hh.dim())?;
        check_len(&name, "∇b", g.b.len(), 4 * h)?;
        let blocks = unit_blocks(h);
        let order = gate_order(h);
        // W_hh's rows and W_ih's in the kept gates' block order (δz's columns).
        let w_hh = gathered_rows(scratch, w_hh, &order);
        // δz is written whole by the steps; the carried δh and δc start at zero.
        let mut dz = scratch.array(steps * m, 4 * h);
        let mut carry_h = scratch.array(m, h);
        let mut carry_c = scratch.array(m, h);
        carry_h.fill(F::zero());
        carry_c.fill(F::zero());
        let one = F::one();
        let simd = simd();
        let threads = lockstep_threads(blocks.len(), m * 4 * h * h);
        {
            let (mut dz_v, mut dh_v, mut dc_v) = (dz.view_mut(), carry_h.view_mut(), carry_c.view_mut());
            let (dz_all, dh_all, dc_all) =
                (SharedRows::new(&mut dz_v), SharedRows::new(&mut dh_v), SharedRows::new(&mut dc_v));
            // Task (s, j), s = 0 … T: block j's units of δh_t (t = T − 1 − s) = δz_{t+1} W_hh's
            // columns of those units (s > 0) + the output's δh_t, then their gate pass, writing
            // block j's columns of δz_t and its units of δc. Step T only forms δh_0 = δz_1 W_hh.
            lockstep(steps + 1, blocks.len(), threads, &|s, j| {
                let units = blocks[j].clone();
                let cols = 4 * units.start..4 * units.end;
                // SAFETY: task (s, j) alone writes block j's units of the carried δh and δc and
                // block j's columns of δz_t; it reads δz_{t+1} whole, which every task of step
                // s − 1 finished writing before any task of step s began (`lockstep`), and
                // which no task of step s writes.
                let mut d_h = unsafe { dh_all.part_mut(0..m, units.clone()) };
                if s > 0 {
                    let after = steps - s;
                    let dz_next = unsafe { dz_all.part(after * m..(after + 1) * m, 0..4 * h) };
                    gemm_serial(one, &dz_next, &w_hh.slice(s![.., units.clone()]), F::zero(), &mut d_h);
                }
                if s == steps {
                    return;
                }
                let t = steps - 1 - s;
                let rows = t * m..(t + 1) * m;
                d_h += &dh.slice(s![rows.clone(), units.clone()]);
                // SAFETY: as above.
                let (mut dz_t, mut d_c) =
                    unsafe { (dz_all.part_mut(rows.clone(), cols.clone()), dc_all.part_mut(0..m, units.clone())) };
                let gates = fwd.gates.slice(s![rows.clone(), cols]);
                let c_prev = fwd.cells.slice(s![rows.clone(), units.clone()]);
                let tc = fwd.tanh_cells.slice(s![rows, units]);
                for i in 0..m {
                    let dz = dz_t.row_mut(i).into_slice().expect("contiguous rows");
                    let dc_next = d_c.row_mut(i).into_slice().expect("contiguous rows");
                    gate_delta_row(
                        simd,
                        dz,
                        dc_next,
                        slice(d_h.row(i)),
                        slice(gates.row(i)),
                        slice(c_prev.row(i)),
                        slice(tc.row(i)),
                    );
                }
            });
        }
        // The parameter gradients in block order, then each row to its place in θ's order.
        let h_prev = fwd.hidden.slice(s![..steps * m, ..]);
        let (mut g_ih, mut g_hh, mut g_b) = (scratch.array(4 * h, n), scratch.array(4 * h, h), Array1::zeros(4 * h));
        let blocked = ParamGradients { w_ih: g_ih.view_mut(), w_hh: g_hh.view_mut(), b: g_b.view_mut() };
        parameter_gradients(alpha, dz.view(), x, one_hot, h_prev, blocked);
        let ParamGradients { w_ih: mut gw_ih, w_hh: mut gw_hh, b: mut gb } = g;
        for (r, &to) in order.iter().enumerate() {
            gw_ih.row_mut(to).assign(&g_ih.row(r));
            gw_hh.row_mut(to).assign(&g_hh.row(r));
            gb[to] = g_b[r];
        }
        let input = want_input.then(|| {
            let mut dx = scratch.array(x.nrows(), x.ncols());
            let w_ih = gathered_rows(scratch, w_ih, &order);
            gemm(one, &dz.view(), &w_ih.view(), F::zero(), &mut dx.view_mut());
            scratch.recycle(w_ih);
            dx
        });
        [w_hh, dz, g_ih, g_hh].into_iter().for_each(|a| scratch.recycle(a));
        Ok(StateGradients { input, h0: carry_h, c0: Some(carry_c) })
    }
}

#[cfg(test)]
mod tests {
    use rand::{RngExt, SeedableRng, rngs::StdRng};

    use super::*;

    /// The vector widths this CPU runs.
    fn widths() -> Vec<Simd> {
        let mut w = vec![Simd::Plain];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                w.push(Simd::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                w.push(Simd::Avx512);
            }
        }
        w
    }

    /// Pre-activations over the whole range the gates meet, with ±0, tiny and saturating ones.
    fn values<F: Real>(rng: &mut StdRng, len: usize) -> Vec<F> {
        const SPECIAL: [f64; 8] = [0.0, -0.0, 1e-30, -1e-7, 0.6249, 30.0, -90.0, 100.0];
        (0..len)
            .map(|i| F::of(if i % 5 == 4 { SPECIAL[(i / 5) % SPECIAL.len()] } else { rng.random_range(-12.0..12.0) }))
            .collect()
    }

    fn bits<F: Real>(v: &[F]) -> Vec<u64> {
        v.iter().map(|x| x.f64().to_bits()).collect()
    }

    /// The gate pass and its backward give the same bits on every vector width this CPU has
    /// (plain, AVX2, AVX-512) — the same IEEE operations in the same order — at widths that
    /// leave remainders (1, 5, 37) and a full block (32), in f32 and f64.
    fn same_bits_on_every_width<F: Real>() {
        let mut rng = StdRng::seed_from_u64(7);
        for h in [1, 5, 32, 37] {
            let (z0, b, c_prev) =
                (values::<F>(&mut rng, 4 * h), values::<F>(&mut rng, 4 * h), values::<F>(&mut rng, h));
            let (dh, dc0) = (values::<F>(&mut rng, h), values::<F>(&mut rng, h));
            let run = |simd: Simd| {
                let (mut z, mut c, mut h_out, mut tc) =
                    (z0.clone(), vec![F::zero(); h], vec![F::zero(); h], vec![F::zero(); h]);
                gate_row(simd, &mut z, &b, &c_prev, &mut c, &mut h_out, &mut tc);
                let (mut dz, mut dc) = (vec![F::zero(); 4 * h], dc0.clone());
                gate_delta_row(simd, &mut dz, &mut dc, &dh, &z, &c_prev, &tc);
                [z, c, h_out, tc, dz, dc].iter().flat_map(|v| bits(v)).collect::<Vec<u64>>()
            };
            let plain = run(Simd::Plain);
            for simd in widths() {
                assert_eq!(run(simd), plain, "{} h = {h}: {simd:?} differs from the plain loops", F::NAME);
            }
        }
    }

    #[test]
    fn gate_kernels_give_the_same_bits_on_every_vector_width() {
        assert!(widths().contains(&Simd::Plain));
        same_bits_on_every_width::<f32>();
        same_bits_on_every_width::<f64>();
    }
}
