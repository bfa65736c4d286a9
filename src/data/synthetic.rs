//! Natural-image-like pictures made on the spot, so the first run needs no files: a
//! dead-leaves model. Opaque shapes — discs, ellipses and rectangles, some rotated, each of one
//! grey level with a faint shading — fall on the picture one after another, each landing
//! *under* those already there (rendering front to back), until every pixel is covered.
//! Shape sizes follow a power law p(r) ∝ r⁻³ between 6 pixels and half the picture: with
//! that exponent every octave of sizes covers about the same area, the picture looks the same
//! at every scale, and its power spectrum falls roughly as 1/f² (amplitude 1/f), as
//! photographs do; the shapes' borders are the sharp edges (occlusions) that make a sparse
//! autoencoder learn localised, oriented edge filters. A 3-tap blur stands in for a lens and
//! a little Gaussian noise for a sensor. The same seed gives the same pictures bit for bit.
//!
//! Patches are cut and normalised by [`super::patches`], exactly as from photographs.

use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, StandardNormal};

use super::patches::{GrayImage, sample_normalized};
use crate::{Error, Result};

/// The dead-leaves model's settings; [`Default`] is what `synthetic` uses.
#[derive(Clone, Debug, PartialEq)]
pub struct DeadLeaves {
    /// Number of pictures. Default 10.
    pub images: usize,
    /// Side of each square picture in pixels. Default 256.
    pub size: usize,
    /// Smallest shape radius in pixels. Default 6: most borders are then nearly straight
    /// across an 8×8 patch (with 2, the learned filters were blobs and arcs, not edges).
    pub min_radius: f64,
    /// Largest shape radius in pixels. Default 128 (half the default picture).
    pub max_radius: f64,
    /// Exponent α of the size density r^−α. Default 3 (scale invariance).
    pub exponent: f64,
    /// Standard deviation of the added Gaussian noise. Default 0.01.
    pub noise: f64,
}

impl Default for DeadLeaves {
    fn default() -> DeadLeaves {
        DeadLeaves { images: 10, size: 256, min_radius: 6.0, max_radius: 128.0, exponent: 3.0, noise: 0.01 }
    }
}

/// Enough shapes to cover any picture many times over; a bound, not a target.
const MAX_SHAPES: usize = 2_000_000;
/// Shapes are drawn as: 0 a disc, 1 a rotated ellipse, 2 an axis-aligned rectangle, 3…5 a
/// rotated rectangle: straight edges at every orientation dominate, as in photographs of
/// the built world (with equal shares, arcs of discs showed up among the learned filters).
const SHAPE_MIX: u8 = 6;

#[derive(Clone, Copy)]
enum Shape {
    /// An ellipse with half-axes a (along the rotated u axis) and b; a disc when a = b.
    Ellipse,
    Rectangle,
}

impl DeadLeaves {
    fn validate(&self) -> Result<()> {
        let ok = self.images >= 1
            && self.size >= 1
            && self.min_radius.is_finite()
            && self.min_radius > 0.0
            && self.max_radius.is_finite()
            && self.max_radius >= self.min_radius
            && self.exponent.is_finite()
            && self.noise.is_finite()
            && self.noise >= 0.0;
        if ok {
            Ok(())
        } else {
            Err(Error::Data(format!(
                "invalid dead-leaves settings {self:?}: need at least one picture of at least 1 pixel, \
                 0 < min_radius ≤ max_radius, a finite exponent and noise ≥ 0"
            )))
        }
    }

    /// Draws a radius from the density ∝ r^−α on [min_radius, max_radius] (inverse CDF).
    fn radius(&self, rng: &mut StdRng) -> f64 {
        let (lo, hi, alpha) = (self.min_radius, self.max_radius, self.exponent);
        let u: f64 = rng.random();
        if (alpha - 1.0).abs() < 1e-12 {
            lo * (hi / lo).powf(u)
        } else {
            let k = 1.0 - alpha;
            (lo.powf(k) + u * (hi.powf(k) - lo.powf(k))).powf(1.0 / k)
        }
    }

    /// The pictures for `seed`, intensities in [0, 1].
    pub fn generate(&self, seed: u64) -> Result<Vec<GrayImage>> {
        self.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        Ok((0..self.images).map(|_| self.picture(&mut rng)).collect())
    }

    fn picture(&self, rng: &mut StdRng) -> GrayImage {
        let n = self.size;
        let mut value = vec![0.5f32; n * n];
        let mut covered = vec![false; n * n];
        let mut uncovered = n * n;
        for _ in 0..MAX_SHAPES {
            if uncovered == 0 {
                break;
            }
            let r = self.radius(rng);
            // Centres may lie off the picture, so big shapes' edges cross it anywhere.
            let cx = rng.random_range(-r..n as f64 + r);
            let cy = rng.random_range(-r..n as f64 + r);
            let (shape, a, b, angle) = match rng.random_range(0..SHAPE_MIX) {
                0 => (Shape::Ellipse, r, r, 0.0),
                1 => (Shape::Ellipse, r, r * rng.random_range(0.3..1.0), rng.random_range(0.0..std::f64::consts::PI)),
                2 => (Shape::Rectangle, r, r * rng.random_range(0.3..1.0), 0.0),
                _ => (Shape::Rectangle, r, r * rng.random_range(0.3..1.0), rng.random_range(0.0..std::f64::consts::PI)),
            };
            let grey = rng.random_range(0.05..0.95);
            // Faint linear shading across the shape, up to ±0.05 from its grey level.
            let shade_angle: f64 = rng.random_range(0.0..std::f64::consts::TAU);
            let shade = rng.random_range(-0.05..0.05) / r;
            let (shade_x, shade_y) = (shade * shade_angle.cos(), shade * shade_angle.sin());
            let (cos, sin) = (angle.cos(), angle.sin());
            let reach = a.hypot(b);
            let x0 = (cx - reach).floor().max(0.0) as usize;
            let x1 = ((cx + reach).ceil().max(0.0) as usize).min(n);
            let y0 = (cy - reach).floor().max(0.0) as usize;
            let y1 = ((cy + reach).ceil().max(0.0) as usize).min(n);
            for y in y0..y1 {
                let dy = y as f64 + 0.5 - cy;
                for x in x0..x1 {
                    let i = y * n + x;
                    if covered[i] {
                        continue;
                    }
                    let dx = x as f64 + 0.5 - cx;
                    let u = dx * cos + dy * sin;
                    let v = dy * cos - dx * sin;
                    let inside = match shape {
                        Shape::Ellipse => (u / a).powi(2) + (v / b).powi(2) <= 1.0,
                        Shape::Rectangle => u.abs() <= a && v.abs() <= b,
                    };
                    if inside {
                        value[i] = (grey + shade_x * dx + shade_y * dy) as f32;
                        covered[i] = true;
                        uncovered -= 1;
                    }
                }
            }
        }
        let mut pixels = blur_121(&value, n);
        for p in &mut pixels {
            let noise: f64 = StandardNormal.sample(rng);
            *p = (f64::from(*p) + self.noise * noise).clamp(0.0, 1.0) as f32;
        }
        GrayImage { width: n, height: n, pixels }
    }
}

/// Separable [1 2 1]/4 blur of an n×n picture, edges clamped.
fn blur_121(src: &[f32], n: usize) -> Vec<f32> {
    let at = |i: usize, d: isize| (i as isize + d).clamp(0, n as isize - 1) as usize;
    let mut rows = vec![0.0f32; n * n];
    for y in 0..n {
        for x in 0..n {
            rows[y * n + x] = 0.25 * src[y * n + at(x, -1)] + 0.5 * src[y * n + x] + 0.25 * src[y * n + at(x, 1)];
        }
    }
    let mut out = vec![0.0f32; n * n];
    for y in 0..n {
        for x in 0..n {
            out[y * n + x] = 0.25 * rows[at(y, -1) * n + x] + 0.5 * rows[y * n + x] + 0.25 * rows[at(y, 1) * n + x];
        }
    }
    out
}

/// The default pictures ([`DeadLeaves::default`]: 10 of 256×256) for `seed`.
pub fn images(seed: u64) -> Vec<GrayImage> {
    DeadLeaves::default().generate(seed).expect("the default settings are valid")
}

/// `count` UFLDL-normalised p×p patches (p = `size`) of the default pictures for `seed`:
/// the `synthetic` data source.
pub fn patches(size: usize, count: usize, seed: u64) -> Result<Array2<f32>> {
    super::patches::check_patch_budget(size, count)?;
    // A different stream for the positions than for the pictures, so they are not correlated.
    sample_normalized(&images(seed), size, count, seed ^ 0x9e37_79b9_7f4a_7c15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radii_follow_the_power_law() {
        let config = DeadLeaves::default();
        let mut rng = StdRng::seed_from_u64(1);
        let radii: Vec<f64> = (0..100_000).map(|_| config.radius(&mut rng)).collect();
        assert!(radii.iter().all(|&r| (6.0..=128.0).contains(&r)));
        // With p(r) ∝ r⁻³ on [6, 128], P(r > 12) = (12⁻² − 128⁻²)/(6⁻² − 128⁻²) ≈ 0.2483.
        let above = radii.iter().filter(|&&r| r > 12.0).count() as f64 / radii.len() as f64;
        assert!((above - 0.2483).abs() < 0.01, "P(r > 12) = {above}");
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = DeadLeaves { min_radius: 5.0, max_radius: 1.0, ..DeadLeaves::default() };
        assert!(bad.generate(0).is_err());
        let bad = DeadLeaves { images: 0, ..DeadLeaves::default() };
        assert!(bad.generate(0).is_err());
    }

    #[test]
    fn blur_keeps_constant_pictures_and_spreads_a_point() {
        assert!(blur_121(&[0.3; 9], 3).iter().all(|&v| (v - 0.3).abs() < 1e-7));
        let mut point = vec![0.0; 9];
        point[4] = 1.0;
        let b = blur_121(&point, 3);
        assert_eq!(b, vec![0.0625, 0.125, 0.0625, 0.125, 0.25, 0.125, 0.0625, 0.125, 0.0625]);
    }
}
