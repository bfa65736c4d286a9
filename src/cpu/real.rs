//! The float types the CPU backend computes in: f64 (the reference) and f32 (the fast path).

use std::fmt::{Debug, Display};

use ndarray::{LinalgScalar, ScalarOperand};
use num_traits::{Float, FromPrimitive, NumAssign};

pub trait Real:
    Float + NumAssign + FromPrimitive + LinalgScalar + ScalarOperand + Send + Sync + Debug + Display + 'static
{
    /// Short name shown to users: `f32` or `f64`.
    const NAME: &'static str;
    fn of(v: f64) -> Self;
    fn of_f32(v: f32) -> Self;
    fn f64(self) -> f64;
}

impl Real for f64 {
    const NAME: &'static str = "f64";
    fn of(v: f64) -> f64 {
        v
    }
    fn of_f32(v: f32) -> f64 {
        v as f64
    }
    fn f64(self) -> f64 {
        self
    }
}

impl Real for f32 {
    const NAME: &'static str = "f32";
    fn of(v: f64) -> f32 {
        v as f32
    }
    fn of_f32(v: f32) -> f32 {
        v
    }
    fn f64(self) -> f64 {
        self as f64
    }
}
