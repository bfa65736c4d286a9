//! Layer kinds beyond dense (MATH.md, "Layers beyond dense"; DESIGN.md, "Wave 2: a network is
//! a stack of layers"): the CPU twins of convolution ([`conv2d`]), pooling ([`pool2d`]),
//! maxout's max over pieces ([`maxout`]), and the recurrent layers ([`rnn`], [`lstm`]: time-major
//! batches, backpropagation through time), each one family per module, forward and backward,
//! generic over [`Real`](crate::cpu::Real) (f64 = the reference, f32 = the fast path).
//!
//! This module computes layers; it knows nothing of θ's layout, `NetSpec`, the backends or
//! the GPU, and it allocates only what a call returns and its own scratch.
//!
//! ## Layout
//! A batch is a row-major matrix with one example per row — the same m × n matrices the dense
//! layers pass between them, so a dense layer reads a conv or pool output unchanged. An image
//! batch of shape m × c × h × w ("NCHW") is the m × (c·h·w) matrix whose row n holds image n
//! with value (ch, y, x) at column (ch·h + y)·w + x: PyTorch's `x.flatten(1)`.
//!
//! ## Gradients
//! Backward passes take δ = ∂L/∂out (same shape as the output) and give ∂L/∂input as is;
//! parameter gradients are α·(the sum over the batch), α chosen by the caller — α = 1/m gives
//! MATH.md's ∇W = δᵀP/m when δ carries no 1/m, as the dense layer does in `cpu::net`.
//!
//! ## Determinism
//! Every loop here is split over examples (each writes only its own rows) and every sum over
//! examples runs in example order, so the bits do not depend on the number of threads; the
//! products go through [`cpu::gemm`](crate::cpu::gemm), which has the same property.

pub mod conv2d;
pub mod lstm;
pub mod maxout;
pub mod pool2d;
pub mod rnn;

use crate::{Error, Result};

/// The shape of one image: c channels of h rows × w columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageShape {
    /// Channels c.
    pub channels: usize,
    /// Height h.
    pub height: usize,
    /// Width w.
    pub width: usize,
}

impl ImageShape {
    /// c × h × w, channel-major.
    pub fn new(channels: usize, height: usize, width: usize) -> ImageShape {
        ImageShape { channels, height, width }
    }

    /// c·h·w: values per image (columns of a batch). Saturates instead of overflowing; the
    /// layers' constructors refuse a shape whose size does not fit.
    pub fn len(&self) -> usize {
        self.channels.saturating_mul(self.height).saturating_mul(self.width)
    }

    /// True when any side is zero.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// h·w: values per channel.
    pub fn plane(&self) -> usize {
        self.height * self.width
    }

    /// "c×h×w", as messages show it.
    pub fn describe(&self) -> String {
        format!("{}×{}×{}", self.channels, self.height, self.width)
    }
}

/// The product of `sizes`, or an error naming `layer` and `what` when it does not fit in memory
/// indices (so that no later allocation or index overflows).
pub(crate) fn checked_len(layer: &str, what: &str, sizes: &[usize]) -> Result<usize> {
    sizes.iter().try_fold(1usize, |acc, &s| acc.checked_mul(s)).filter(|&n| n <= isize::MAX as usize / 8).ok_or_else(
        || {
            let shown: Vec<String> = sizes.iter().map(|s| s.to_string()).collect();
            Error::Shape(format!("{layer}: {what} of {} values is too large to hold in memory", shown.join("×")))
        },
    )
}

/// Checks that a batch has `cols` columns; the message names the layer, the array and what the
/// columns should hold (`shape`, a plural: "1×28×28 images").
pub(crate) fn check_cols(layer: &str, what: &str, got: (usize, usize), cols: usize, shape: &str) -> Result<()> {
    if got.1 != cols {
        return Err(Error::Shape(format!(
            "{layer}: {what} has {} columns per example, but {shape} have {cols}: pass one example per row, {cols} values each",
            got.1
        )));
    }
    Ok(())
}

/// Checks that a vector has exactly `want` values.
pub(crate) fn check_len(layer: &str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::Shape(format!("{layer}: {what} has {got} values, but it must have {want}")));
    }
    Ok(())
}

/// Checks that an array is exactly `want` (rows, columns).
pub(crate) fn check_dim(layer: &str, what: &str, got: (usize, usize), want: (usize, usize)) -> Result<()> {
    if got != want {
        return Err(Error::Shape(format!(
            "{layer}: {what} is {}×{}, but it must be {}×{}",
            got.0, got.1, want.0, want.1
        )));
    }
    Ok(())
}
