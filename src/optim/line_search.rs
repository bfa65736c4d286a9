//! The strong-Wolfe line search L-BFGS and conjugate gradient share: along a descent
//! direction d from x, find α with
//!   J(x + αd) ≤ J(x) + c₁ α ∇J(x)ᵀd            (sufficient decrease, Armijo)
//!   |∇J(x + αd)ᵀd| ≤ c₂ |∇J(x)ᵀd|              (strong curvature condition)
//! by bracketing then zooming (Nocedal & Wright, *Numerical Optimization*, 2nd ed.,
//! Algorithms 3.5 and 3.6) with safeguarded cubic interpolation (their eq. 3.59), the scheme
//! of minFunc's `WolfeLineSearch`. It only moves along the direction it is given: choosing
//! directions and keeping memory belong to the methods.
//!
//! A trial point whose cost or gradient is NaN or infinite counts as "too far": the search
//! steps back ten-fold towards the last finite point instead of failing at once, so even a
//! first trial 10²⁰ times too long is recovered within the evaluation budget.

use serde::{Deserialize, Serialize};

use super::linalg::{axpy, copy, descends, dot, dot_if_finite, norm_inf, point_along};
use crate::{Error, Result};

/// J(x) returned and ∇J(x) written into the second argument.
pub type CostAndGrad<'a> = dyn FnMut(&[f64], &mut [f64]) -> Result<f64> + 'a;

/// A line search for the strong Wolfe conditions (Nocedal & Wright, Algorithms 3.5 and 3.6,
/// with cubic interpolation): sufficient decrease J(x + αd) ≤ J(x) + c₁ α ∇Jᵀd and curvature
/// |∇J(x + αd)ᵀd| ≤ c₂ |∇Jᵀd|.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LineSearch {
    /// Sufficient-decrease constant c₁.
    pub c1: f64,
    /// Curvature constant c₂ (c₁ < c₂ < 1).
    pub c2: f64,
    /// Most cost-and-gradient evaluations one search may spend.
    pub max_evaluations: usize,
}

impl LineSearch {
    /// For quasi-Newton methods (minFunc, scipy, Nocedal & Wright): c₁ = 1e-4, c₂ = 0.9, so
    /// the unit step is usually accepted; at most 25 evaluations (minFunc's limit).
    pub const QUASI_NEWTON: LineSearch = LineSearch { c1: 1e-4, c2: 0.9, max_evaluations: 25 };
    /// For nonlinear CG: c₂ = 0.1, a more exact search that keeps directions conjugate
    /// (Nocedal & Wright §5.2).
    pub const CONJUGATE_GRADIENT: LineSearch = LineSearch { c1: 1e-4, c2: 0.1, max_evaluations: 25 };

    /// Errors (`Error::Data`): not 0 < c₁ < c₂ < 1, or no evaluations allowed.
    pub fn validate(&self) -> Result<()> {
        if !(0.0 < self.c1 && self.c1 < self.c2 && self.c2 < 1.0) {
            return Err(Error::Data(format!(
                "line search constants c1 = {}, c2 = {} must satisfy 0 < c1 < c2 < 1 (usual: 1e-4 and 0.9, or 0.1 for CG)",
                self.c1, self.c2
            )));
        }
        if self.max_evaluations == 0 {
            return Err(Error::Data("the line search needs at least 1 evaluation".into()));
        }
        Ok(())
    }

    /// Searches along `d` from the point (`x`, `f`, `g`), trying `alpha0` first. On
    /// [`LineSearchOutcome::Accepted`] x, f and g hold the new point x + αd, its cost and
    /// gradient; otherwise they are unchanged. `objective` writes ∇J at its argument into its
    /// second argument and returns J. `d` must be a descent direction (gᵀd < 0).
    pub fn search(
        &self,
        objective: &mut CostAndGrad<'_>,
        x: &mut [f64],
        f: &mut f64,
        g: &mut [f64],
        d: &[f64],
        alpha0: f64,
    ) -> Result<LineSearchOutcome> {
        assert!(x.len() == g.len() && x.len() == d.len(), "x, g and d differ in length");
        let mut kept = g.to_vec();
        let outcome = self.search_in(&mut Workspace::default(), objective, x, f, &mut kept, d, alpha0, dot(g, d))?;
        g.copy_from_slice(&kept);
        Ok(outcome)
    }

    /// [`LineSearch::search`] with its vectors in `ws`, kept from one search to the next (no
    /// fresh |θ|-long buffers per iteration), the slope gᵀd given by the caller (who has it
    /// from forming d) and the new gradient swapped into `g` rather than copied. After an
    /// accepted step `ws.previous_grad()` holds the gradient `g` held before. `objective` must
    /// write every value of the gradient (the buffer it is given holds an earlier one).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn search_in(
        &self,
        ws: &mut Workspace,
        objective: &mut CostAndGrad<'_>,
        x: &mut [f64],
        f: &mut f64,
        g: &mut Vec<f64>,
        d: &[f64],
        alpha0: f64,
        slope0: f64,
    ) -> Result<LineSearchOutcome> {
        assert!(x.len() == g.len() && x.len() == d.len(), "x, g and d differ in length");
        if !descends(slope0) {
            return Err(Error::Data(format!("the search direction is not a descent direction (gᵀd = {slope0:e})")));
        }
        if !(alpha0 > 0.0 && alpha0.is_finite()) {
            return Err(Error::Data(format!("the initial step {alpha0} must be a positive number")));
        }
        let n = x.len();
        for v in [&mut ws.x, &mut ws.g, &mut ws.g_lo] {
            v.resize(n, 0.0);
        }
        let mut probe = Probe {
            objective,
            x0: x,
            d,
            x: &mut ws.x,
            g: &mut ws.g,
            g_lo: &mut ws.g_lo,
            evaluations: 0,
            non_finite: 0,
        };
        let start = Trial { alpha: 0.0, f: *f, slope: slope0 };
        let end = self.bracket_and_zoom(&mut probe, start, alpha0)?;
        let (evaluations, non_finite) = (probe.evaluations, probe.non_finite);
        let outcome = match end {
            End::Failed => return Ok(LineSearchOutcome::Failed { evaluations, non_finite }),
            End::Wolfe(t) => {
                copy(&ws.x, x);
                std::mem::swap(g, &mut ws.g);
                *f = t.f;
                LineSearchOutcome::Accepted { alpha: t.alpha, evaluations, strong_wolfe: true }
            }
            End::BestSoFar(t) => {
                // The lowest Armijo point seen, not the last one evaluated: rebuild x (x + αd, the
                // bits the trial had), take its saved gradient.
                axpy(t.alpha, d, x);
                std::mem::swap(g, &mut ws.g_lo);
                std::mem::swap(&mut ws.g, &mut ws.g_lo);
                *f = t.f;
                LineSearchOutcome::Accepted { alpha: t.alpha, evaluations, strong_wolfe: false }
            }
        };
        Ok(outcome)
    }

    /// Algorithm 3.5: grow α until the interval (previous, α) must contain a strong-Wolfe
    /// point, then zoom. `probe.g_lo` tracks the gradient at the best Armijo point so far.
    fn bracket_and_zoom(&self, probe: &mut Probe, start: Trial, alpha0: f64) -> Result<End> {
        let mut prev = start;
        let mut alpha = alpha0;
        loop {
            if probe.evaluations >= self.max_evaluations {
                return Ok(best_so_far(prev));
            }
            let Some(cur) = probe.at(alpha)? else {
                return self.zoom(probe, start, prev, Trial::non_finite(alpha));
            };
            if !self.armijo(start, cur) || (prev.alpha > 0.0 && cur.f >= prev.f) {
                return self.zoom(probe, start, prev, cur);
            }
            if self.curvature(start, cur) {
                return Ok(End::Wolfe(cur));
            }
            probe.keep_as_lo();
            if cur.slope >= 0.0 {
                return self.zoom(probe, start, cur, prev);
            }
            // Still descending: extrapolate, to the cubic's minimiser when it lies ahead, within
            // minFunc's bounds [α + 0.01(α − α_prev), 10α].
            let (lo, hi) = (cur.alpha + 0.01 * (cur.alpha - prev.alpha), 10.0 * cur.alpha);
            alpha = match cubic_minimizer(prev, cur) {
                Some(t) if t > cur.alpha => t.clamp(lo, hi),
                _ => hi,
            };
            prev = cur;
        }
    }

    /// Algorithm 3.6: `lo` satisfies Armijo and has the lowest cost seen; the interval between
    /// `lo` and `hi` contains a strong-Wolfe point. Interpolates inside it, safeguarded as
    /// minFunc does: a trial within 10% of an end is allowed once, then moved to 10% from it,
    /// so the interval keeps shrinking.
    fn zoom(&self, probe: &mut Probe, start: Trial, mut lo: Trial, mut hi: Trial) -> Result<End> {
        let d_max = norm_inf(probe.d);
        let x_scale = norm_inf(probe.x0).max(1.0);
        let mut insufficient_progress = false;
        loop {
            let width = hi.alpha - lo.alpha;
            // Points closer than a few ulps of x are the same point: nothing left to find.
            if probe.evaluations >= self.max_evaluations || width.abs() * d_max <= 4.0 * f64::EPSILON * x_scale {
                return Ok(best_so_far(lo));
            }
            let alpha = if hi.f.is_finite() {
                let (a, b) = (lo.alpha.min(hi.alpha), lo.alpha.max(hi.alpha));
                let t = cubic_minimizer(lo, hi).unwrap_or(lo.alpha + 0.5 * width);
                let near_an_end = (b - t).min(t - a) < 0.1 * (b - a);
                if near_an_end && (insufficient_progress || !(a < t && t < b)) {
                    insufficient_progress = false;
                    if b - t < t - a { b - 0.1 * (b - a) } else { a + 0.1 * (b - a) }
                } else {
                    insufficient_progress = near_an_end;
                    t
                }
            } else {
                lo.alpha + 0.1 * width
            };
            let Some(cur) = probe.at(alpha)? else {
                hi = Trial::non_finite(alpha);
                continue;
            };
            if !self.armijo(start, cur) || cur.f >= lo.f {
                hi = cur;
            } else {
                if self.curvature(start, cur) {
                    return Ok(End::Wolfe(cur));
                }
                if cur.slope * (hi.alpha - lo.alpha) >= 0.0 {
                    hi = lo;
                }
                lo = cur;
                probe.keep_as_lo();
            }
        }
    }

    fn armijo(&self, start: Trial, t: Trial) -> bool {
        t.f <= start.f + self.c1 * t.alpha * start.slope
    }

    fn curvature(&self, start: Trial, t: Trial) -> bool {
        t.slope.abs() <= -self.c2 * start.slope
    }
}

/// How a search ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LineSearchOutcome {
    /// x, f and g hold x + αd. `strong_wolfe` is false when the evaluation budget ran out
    /// (or the bracket became too narrow to split) and the lowest point satisfying the
    /// sufficient-decrease condition was taken instead.
    Accepted {
        /// The step length α taken.
        alpha: f64,
        /// Cost-and-gradient evaluations spent.
        evaluations: usize,
        /// Whether α satisfies the strong Wolfe conditions.
        strong_wolfe: bool,
    },
    /// No trial point lowered the cost; x, f and g are unchanged. `non_finite` counts the
    /// trial points whose cost or gradient was NaN or infinite.
    Failed {
        /// Cost-and-gradient evaluations spent.
        evaluations: usize,
        /// Trial points whose cost or gradient was not finite.
        non_finite: usize,
    },
}

/// φ(α) = J(x + αd) and φ′(α) = ∇J(x + αd)ᵀd at one step length.
#[derive(Clone, Copy, Debug)]
struct Trial {
    alpha: f64,
    f: f64,
    slope: f64,
}

impl Trial {
    /// A step whose cost or gradient was not finite: a bracket end known only to be too far.
    fn non_finite(alpha: f64) -> Trial {
        Trial { alpha, f: f64::INFINITY, slope: f64::NAN }
    }
}

enum End {
    /// The last point evaluated satisfies both conditions.
    Wolfe(Trial),
    /// The best point satisfying sufficient decrease, not the last evaluated.
    BestSoFar(Trial),
    Failed,
}

fn best_so_far(lo: Trial) -> End {
    if lo.alpha > 0.0 { End::BestSoFar(lo) } else { End::Failed }
}

/// The line search's |θ|-long vectors — the trial point, its gradient and the gradient at
/// the best Armijo point — kept by a method from one search to the next. Working memory
/// only: not saved in checkpoints (a resumed run starts with empty ones, which changes no
/// result since every value is written before it is read).
#[derive(Clone, Debug, Default)]
pub(super) struct Workspace {
    x: Vec<f64>,
    g: Vec<f64>,
    g_lo: Vec<f64>,
}

impl Workspace {
    /// After [`LineSearch::search_in`] accepted a step: the gradient at the point it started
    /// from.
    pub(super) fn previous_grad(&self) -> &[f64] {
        &self.g
    }
}

/// Evaluates the objective along the line, keeping the last trial's x and gradient.
struct Probe<'a, 'o> {
    objective: &'a mut CostAndGrad<'o>,
    x0: &'a [f64],
    d: &'a [f64],
    x: &'a mut Vec<f64>,
    g: &'a mut Vec<f64>,
    g_lo: &'a mut Vec<f64>,
    evaluations: usize,
    non_finite: usize,
}

impl Probe<'_, '_> {
    /// φ and φ′ at α, or `None` when the cost or gradient there is NaN or infinite.
    fn at(&mut self, alpha: f64) -> Result<Option<Trial>> {
        point_along(self.x, self.x0, alpha, self.d);
        let f = (self.objective)(self.x, self.g)?;
        self.evaluations += 1;
        let slope = if f.is_finite() { dot_if_finite(self.g, self.d) } else { None };
        let Some(slope) = slope else {
            self.non_finite += 1;
            return Ok(None);
        };
        Ok(Some(Trial { alpha, f, slope }))
    }

    /// The last trial becomes the best Armijo point: keeps its gradient.
    fn keep_as_lo(&mut self) {
        copy(self.g, self.g_lo);
    }
}

/// The minimiser of the cubic that matches φ and φ′ at both points (Nocedal & Wright eq.
/// 3.59), when it has a real one.
fn cubic_minimizer(a: Trial, b: Trial) -> Option<f64> {
    let d1 = a.slope + b.slope - 3.0 * (a.f - b.f) / (a.alpha - b.alpha);
    let disc = d1 * d1 - a.slope * b.slope;
    let real = disc >= 0.0;
    if !real {
        return None;
    }
    let d2 = (b.alpha - a.alpha).signum() * disc.sqrt();
    let t = b.alpha - (b.alpha - a.alpha) * (b.slope + d2 - d1) / (b.slope - a.slope + 2.0 * d2);
    t.is_finite().then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(alpha: f64, f: impl Fn(f64) -> (f64, f64)) -> Trial {
        let (v, s) = f(alpha);
        Trial { alpha, f: v, slope: s }
    }

    #[test]
    fn cubic_interpolation_is_exact_on_cubics_and_quadratics() {
        // φ(α) = (α − 2)²: the minimiser 2 from any two points.
        let q = |a: f64| ((a - 2.0).powi(2), 2.0 * (a - 2.0));
        assert_eq!(cubic_minimizer(trial(0.0, q), trial(1.0, q)), Some(2.0));
        assert_eq!(cubic_minimizer(trial(3.0, q), trial(0.5, q)), Some(2.0));
        // φ(α) = α³ − 3α: local minimiser 1.
        let c = |a: f64| (a.powi(3) - 3.0 * a, 3.0 * a * a - 3.0);
        let t = cubic_minimizer(trial(0.0, c), trial(2.0, c)).unwrap();
        assert!((t - 1.0).abs() < 1e-12, "{t}");
    }
}
