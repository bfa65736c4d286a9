//! The float types the CPU backend computes in: f64 (the reference) and f32 (the fast path).

use std::fmt::{Debug, Display};

use ndarray::{LinalgScalar, ScalarOperand};
use num_traits::{Float, FromPrimitive, NumAssign};

/// A float the CPU backend computes in (implemented for f64 and f32), with the conversions to
/// and from the f64 interface and the activations in their overflow-safe forms (MATH.md,
/// "Numerically safe forms").
pub trait Real:
    Float + NumAssign + FromPrimitive + LinalgScalar + ScalarOperand + Send + Sync + Debug + Display + 'static
{
    /// Short name shown to users: `f32` or `f64`.
    const NAME: &'static str;
    /// The smallest value [`Real::sigmoid`] returns for a finite z: 0 in f64 (libm's exp
    /// underflows gradually), e^{−87.3} ≈ 1.2e-38 in f32 (the fast exp's floor). A mean of
    /// σ(z) that close to it says only "below the precision", not how far below.
    const SIGMOID_FLOOR: f64;
    /// `v` in this precision (f64 → f32 rounds to nearest).
    fn of(v: f64) -> Self;
    /// `v` in this precision (exact for both).
    fn of_f32(v: f32) -> Self;
    /// This value widened to f64 (exact for both).
    fn f64(self) -> f64;
    /// σ(z) = 1/(1 + e^{−z}), overflow-safe.
    fn sigmoid(self) -> Self;
    /// tanh(z).
    fn tanh_act(self) -> Self;
    /// (σ(z), σ(−z)) from one exponential, each with the same bits as [`Real::sigmoid`] of z
    /// and of −z: σ(−z) = 1 − σ(z) without the subtraction, which is 0 where σ(z) rounds to 1.
    fn sigmoid_pair(self) -> (Self, Self);
}

impl Real for f64 {
    const NAME: &'static str = "f64";
    const SIGMOID_FLOOR: f64 = 0.0;
    fn of(v: f64) -> f64 {
        v
    }
    fn of_f32(v: f32) -> f64 {
        v as f64
    }
    fn f64(self) -> f64 {
        self
    }
    /// The reference: libm's exp.
    #[inline]
    fn sigmoid(self) -> f64 {
        // e^{−|z|} never overflows; pick the form that divides by a number ≥ 1.
        let e = (-self.abs()).exp();
        if self >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) }
    }
    #[inline]
    fn tanh_act(self) -> f64 {
        self.tanh()
    }
    #[inline]
    fn sigmoid_pair(self) -> (f64, f64) {
        let e = (-self.abs()).exp();
        let (one, tail) = (1.0 / (1.0 + e), e / (1.0 + e));
        // −z ≥ 0 exactly when z ≤ 0 (σ(±0) are both 1/(1 + 1)).
        (if self >= 0.0 { one } else { tail }, if self <= 0.0 { one } else { tail })
    }
}

impl Real for f32 {
    const NAME: &'static str = "f32";
    const SIGMOID_FLOOR: f64 = 1.2e-38;
    fn of(v: f64) -> f32 {
        v as f32
    }
    fn of_f32(v: f32) -> f32 {
        v
    }
    fn f64(self) -> f64 {
        self as f64
    }
    /// The fast path: branch-free, so a sweep over a row compiles to vector code (libm's
    /// `expf` is a call per element, and was most of the elementwise time).
    #[inline]
    fn sigmoid(self) -> f32 {
        let e = exp_nonpositive(-self.abs());
        let s = 1.0 / (1.0 + e);
        if self >= 0.0 { s } else { e * s }
    }
    #[inline]
    fn tanh_act(self) -> f32 {
        let x = self.abs();
        // Near 0: Cephes' odd polynomial (1 − e over 1 + e would cancel).
        let z = x * x;
        let p =
            ((((-5.704_988_7e-3 * z + 2.063_909e-2) * z - 5.373_971_6e-2) * z + 1.333_144_2e-1) * z - 3.333_328e-1) * z;
        let small = x + x * p;
        // Elsewhere: (1 − e)/(1 + e) with e = e^{−2|z|} ≤ 1, which never overflows.
        let e = exp_nonpositive(-2.0 * x);
        let large = (1.0 - e) / (1.0 + e);
        let t = if x < 0.625 { small } else { large };
        t.copysign(self)
    }
    #[inline]
    fn sigmoid_pair(self) -> (f32, f32) {
        let e = exp_nonpositive(-self.abs());
        let s = 1.0 / (1.0 + e);
        (if self >= 0.0 { s } else { e * s }, if self <= 0.0 { s } else { e * s })
    }
}

/// e^x for x ≤ 0 in f32 without branches or calls (Cephes' expf: x = n ln 2 + r, |r| ≤ ½ ln 2,
/// a degree-6 polynomial for e^r, 2ⁿ built in the exponent bits); within 2 ulp of e^x down to
/// x = −87.3, below which it returns e^{−87.3} ≈ 1.2e-38 instead of a subnormal (or 0).
/// NaN stays NaN.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2²³: adding it rounds to an integer, kept in the low mantissa bits.
    const SHIFTER: f32 = 12_582_912.0;
    let x = if x < -87.3 { -87.3 } else { x }; // (not max: NaN must stay NaN)
    let t = x * LOG2E + SHIFTER;
    let n = t - SHIFTER;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = (((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5)
        * r
        * r
        + r
        + 1.0;
    // t's bits are SHIFTER's plus n: move n into the exponent field of 1.0.
    let two_n = f32::from_bits((t.to_bits().wrapping_sub(SHIFTER.to_bits()) << 23).wrapping_add(1.0f32.to_bits()));
    p * two_n
}

/// Values per block of the threaded conversions below: long vectors are split into blocks of
/// this many values, converted in parallel (element by element: the bits do not depend on the
/// split).
const CONVERT_BLOCK: usize = 1 << 15;

/// `out` ← θ in precision `F` (resized to θ's length; f64 → f32 rounds to nearest), in one
/// pass split over the thread pool, which also checks every value: true when none is NaN or
/// beyond ±`max` (the caller then names the first one, e.g. with
/// [`crate::backend::check_theta_values`]). An evaluation converts θ here instead of in a
/// fresh, single-threaded vector: on a 308,000-value θ that saved a page fault every 4 kB.
pub fn narrow_checked<F: Real>(theta: &[f64], max: f64, out: &mut Vec<F>) -> bool {
    use rayon::prelude::*;
    out.resize(theta.len(), F::zero());
    let run = |src: &[f64], dst: &mut [F]| {
        let mut fits = true;
        for (d, &v) in dst.iter_mut().zip(src) {
            fits &= !(v.is_nan() || v.abs() > max);
            *d = F::of(v);
        }
        fits
    };
    if theta.len() <= CONVERT_BLOCK {
        return run(theta, out);
    }
    theta
        .par_chunks(CONVERT_BLOCK)
        .zip(out.par_chunks_mut(CONVERT_BLOCK))
        .map(|(s, d)| run(s, d))
        .reduce(|| true, |a, b| a && b)
}

/// `out` ← `v` widened to f64 (exact), split over the thread pool for long vectors.
pub fn widen_into<F: Real>(v: &[F], out: &mut [f64]) {
    use rayon::prelude::*;
    assert_eq!(v.len(), out.len(), "vectors of different lengths");
    let run = |src: &[F], dst: &mut [f64]| dst.iter_mut().zip(src).for_each(|(d, &s)| *d = s.f64());
    if v.len() <= CONVERT_BLOCK {
        return run(v, out);
    }
    v.par_chunks(CONVERT_BLOCK).zip(out.par_chunks_mut(CONVERT_BLOCK)).for_each(|(s, d)| run(s, d));
}

#[cfg(test)]
mod tests {
    use super::Real;

    /// Units in the last place between an f32 result and the f64 reference.
    fn ulps(got: f32, want: f64) -> f64 {
        let want32 = want as f32;
        let ulp = (f32::from_bits(want32.abs().to_bits() + 1) - want32.abs()) as f64;
        (got as f64 - want).abs() / ulp
    }

    #[test]
    fn fast_f32_activations_are_within_a_few_ulp_of_libm() {
        let (mut worst_sigmoid, mut worst_tanh) = (0.0f64, 0.0f64);
        // Dense sweep over [−90, 90] plus the switch points and tiny arguments.
        let mut zs: Vec<f32> = (-900_000..=900_000).map(|i| i as f32 * 1e-4).collect();
        zs.extend([0.625, -0.625, 0.624_999_94, 1e-30, -1e-30, 1e-8, 0.0, -0.0, 87.3, -87.3]);
        for z in zs {
            let zd = z as f64;
            let s_ref = 1.0 / (1.0 + (-zd).exp());
            if z >= -87.0 {
                worst_sigmoid = worst_sigmoid.max(ulps(z.sigmoid(), s_ref));
            }
            worst_tanh = worst_tanh.max(ulps(z.tanh_act(), zd.tanh()));
        }
        eprintln!("worst: sigmoid {worst_sigmoid} ulp, tanh {worst_tanh} ulp");
        assert!(worst_sigmoid <= 4.0, "sigmoid is {worst_sigmoid} ulp from the f64 reference");
        assert!(worst_tanh <= 4.0, "tanh is {worst_tanh} ulp from the f64 reference");
    }

    /// σ(z) and σ(−z) from one exponential have the bits of two calls of `sigmoid`, and the
    /// complement keeps e^{−z} where σ(z) rounds to 1.
    #[test]
    fn sigmoid_pair_is_two_sigmoids_bit_for_bit() {
        fn check<F: Real>(zs: impl Iterator<Item = f64>) {
            for z in zs.map(F::of) {
                let (a, c) = z.sigmoid_pair();
                assert_eq!(a.f64().to_bits(), z.sigmoid().f64().to_bits(), "{} σ({z})", F::NAME);
                assert_eq!(c.f64().to_bits(), (-z).sigmoid().f64().to_bits(), "{} σ(−{z})", F::NAME);
            }
        }
        let zs = || (-2000..=2000).map(|i| i as f64 * 0.05).chain([0.0, -0.0, 20.0, 50.0, 1e30, -1e30]);
        check::<f32>(zs());
        check::<f64>(zs());
        assert_eq!(20.0f32.sigmoid(), 1.0);
        assert!((20.0f32.sigmoid_pair().1 as f64 / (-20.0f64).exp() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn fast_f32_activations_saturate_cleanly() {
        for z in [88.0f32, 100.0, 1e30, f32::INFINITY] {
            assert_eq!(z.sigmoid(), 1.0);
            assert_eq!(z.tanh_act(), 1.0);
            assert_eq!((-z).tanh_act(), -1.0);
            let s = (-z).sigmoid();
            assert!((0.0..=1.3e-38).contains(&s), "σ({}) = {s}", -z);
        }
        assert!(f32::NAN.sigmoid().is_nan() && f32::NAN.tanh_act().is_nan());
        assert_eq!(0.0f32.sigmoid(), 0.5);
        assert_eq!(0.0f32.tanh_act(), 0.0);
    }
}
