//! Maxout's max over pieces (MATH.md, "Layers beyond dense", Maxout; Goodfellow et al. 2013,
//! "Maxout Networks", eq. 1): with z = A Wᵀ + b (the dense layer's product, W being
//! (units·k) × in), output unit u is max over z's columns u·k … u·k + k − 1 (the pieces of a
//! unit are adjacent: piece-major per unit). Backward sends δ_u to the winning piece only —
//! the first on ties; a NaN wins, so it reaches the cost.
//!
//! One implementation, generic over f32 and f64, split over rows, so the bits do not depend
//! on the number of threads. This module is the max step only: the product and its gradients
//! (∇W = α ∇zᵀ A, ∇b = α Σ ∇z, ∇A = ∇z W) are the dense layer's.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;

use super::{check_cols, check_dim, checked_len};
use crate::cpu::Real;
use crate::{Error, Result};

/// The max step of a maxout layer: `units` outputs, each the max of `pieces` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Maxout {
    /// Output units.
    pub units: usize,
    /// k: pieces per unit.
    pub pieces: usize,
}

/// Maxout's output (m × units) and the winner of each unit: the column of z (u·k + piece)
/// whose value it is.
#[derive(Clone, Debug, PartialEq)]
pub struct MaxoutForward<F> {
    /// The output (m × units).
    pub out: Array2<F>,
    /// For each output, the column of z (u·k + piece) it came from.
    pub winners: Array2<u32>,
}

impl Maxout {
    /// `units` outputs of `pieces` pieces each, or `Error::Shape` in one line when either is
    /// zero or units·pieces does not fit 32-bit winner indices.
    pub fn new(units: usize, pieces: usize) -> Result<Maxout> {
        let layer = Maxout { units, pieces };
        let name = layer.describe();
        if units == 0 || pieces == 0 {
            return Err(Error::Shape(format!("{name}: units and pieces must both be at least 1")));
        }
        let len = checked_len(&name, "z", &[units, pieces])?;
        if u32::try_from(len).is_err() {
            return Err(Error::Shape(format!("{name}: {len} pieces are beyond 32-bit winner indices")));
        }
        Ok(layer)
    }

    /// units·k: the columns of z (the rows of W).
    pub fn piece_count(&self) -> usize {
        self.units * self.pieces
    }

    /// "maxout (u units of k pieces)", as messages name the layer.
    pub fn describe(&self) -> String {
        format!("maxout ({} units of {} pieces)", self.units, self.pieces)
    }

    /// out[n, u] = max_{0 ≤ p < k} z[n, u·k + p] for z of m × units·k (any strides), with
    /// each winner's column. Errors: `Error::Shape` when z does not have units·k columns.
    pub fn forward<F: Real>(&self, z: ArrayView2<F>) -> Result<MaxoutForward<F>> {
        let name = self.describe();
        check_cols(
            &name,
            "z",
            z.dim(),
            self.piece_count(),
            &format!("{} units of {} pieces", self.units, self.pieces),
        )?;
        checked_len(&name, "the output", &[z.nrows(), self.units])?;
        let z = z.as_standard_layout();
        let mut out = Array2::zeros((z.nrows(), self.units));
        let mut winners = Array2::<u32>::zeros((z.nrows(), self.units));
        let k = self.pieces;
        out.as_slice_mut()
            .expect("a new array is contiguous")
            .par_chunks_mut(self.units)
            .zip(winners.as_slice_mut().expect("a new array is contiguous").par_chunks_mut(self.units))
            .zip(z.as_slice().expect("standard layout").par_chunks(self.piece_count()))
            .for_each(|((out, win), z)| {
                for (u, (o, w)) in out.iter_mut().zip(win.iter_mut()).enumerate() {
                    let pieces = &z[u * k..(u + 1) * k];
                    let (mut best, mut at) = (pieces[0], 0);
                    for (p, &v) in pieces.iter().enumerate().skip(1) {
                        // Strictly greater: the first of equal pieces keeps the win.
                        if v > best || (v.is_nan() && !best.is_nan()) {
                            (best, at) = (v, p);
                        }
                    }
                    *o = best;
                    *w = (u * k + at) as u32;
                }
            });
        Ok(MaxoutForward { out, winners })
    }

    /// ∂L/∂z (m × units·k) from δ = ∂L/∂out (m × units): δ_u at the winning piece's column,
    /// 0 at the others. Errors: `Error::Shape` when δ or the winners do not fit the layer or a
    /// winner is not one of its unit's pieces.
    pub fn backward<F: Real>(&self, delta: ArrayView2<F>, winners: ArrayView2<u32>) -> Result<Array2<F>> {
        let name = self.describe();
        check_cols(&name, "δ", delta.dim(), self.units, &format!("{} units", self.units))?;
        check_dim(&name, "the winner array", winners.dim(), delta.dim())?;
        let k = self.pieces;
        if let Some(((_, u), &bad)) = winners.indexed_iter().find(|&((_, u), &i)| (i as usize) / k != u) {
            return Err(Error::Shape(format!(
                "{name}: unit {u}'s winner is column {bad}, not one of its pieces {}…{}: pass the winners of this layer's forward pass",
                u * k,
                u * k + k - 1
            )));
        }
        checked_len(&name, "∂L/∂z", &[delta.nrows(), self.piece_count()])?;
        let (delta, winners) = (delta.as_standard_layout(), winners.as_standard_layout());
        let mut grad = Array2::zeros((delta.nrows(), self.piece_count()));
        grad.as_slice_mut()
            .expect("a new array is contiguous")
            .par_chunks_mut(self.piece_count())
            .zip(delta.as_slice().expect("standard layout").par_chunks(self.units))
            .zip(winners.as_slice().expect("standard layout").par_chunks(self.units))
            .for_each(|((g, d), win)| {
                for (&d, &at) in d.iter().zip(win) {
                    g[at as usize] = d;
                }
            });
        Ok(grad)
    }
}
