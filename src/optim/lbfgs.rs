//! Limited-memory BFGS (Nocedal & Wright, Algorithms 7.4 and 7.5), as minFunc runs it for the
//! UFLDL exercises: the two-loop recursion over the last m correction pairs (s, y) with the
//! initial Hessian γI, γ = sᵀy/yᵀy; a strong-Wolfe line search from α = 1 (the first step,
//! along −∇J, from min(1, 1/‖∇J‖₁)); pairs with too little curvature are skipped. Full batch
//! only: L-BFGS needs the same J at every evaluation.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::control::StopReason;
use super::linalg::{
    PairRestart, axpy, axpy_dot, correction_pair_restart, descends, dot, negate_dot, norm_l1, scale_dot,
};
use super::line_search::{LineSearch, LineSearchOutcome, Workspace};
use super::{Iterated, Outcome, Point, Run};
use crate::{Error, Result};

/// L-BFGS settings. Defaults: memory m = 100 (minFunc's `Corr`, which the UFLDL exercises
/// run with; scipy uses 10, and large networks should too: memory costs 2m|θ| f64) and the
/// quasi-Newton line search (c₁ = 1e-4, c₂ = 0.9, at most 25 evaluations).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lbfgs {
    /// Correction pairs kept.
    pub memory: usize,
    /// The Wolfe line search each iteration runs.
    pub line_search: LineSearch,
}

impl Lbfgs {
    /// Correction pairs kept: minFunc's default, 100.
    pub const DEFAULT_MEMORY: usize = 100;

    /// The memory `wgnn train` uses for a network of `parameters` values: minFunc's 100 up to
    /// 50,000 parameters, 10 above (where 100 pairs would cost 200|θ| f64 and little gain).
    pub fn memory_for(parameters: usize) -> usize {
        if parameters <= 50_000 { Lbfgs::DEFAULT_MEMORY } else { 10 }
    }

    /// This method keeping `memory` correction pairs.
    pub fn with_memory(self, memory: usize) -> Lbfgs {
        Lbfgs { memory, ..self }
    }

    /// Errors (`Error::Data`): memory 0, or an invalid line search.
    pub fn validate(&self) -> Result<()> {
        if self.memory == 0 {
            return Err(Error::Data("L-BFGS memory must be at least 1 correction pair (usual: 10 to 100)".into()));
        }
        self.line_search.validate()
    }
}

impl Default for Lbfgs {
    fn default() -> Lbfgs {
        Lbfgs { memory: Lbfgs::DEFAULT_MEMORY, line_search: LineSearch::QUASI_NEWTON }
    }
}

/// s = θₖ₊₁ − θₖ, y = ∇Jₖ₊₁ − ∇Jₖ and ρ = 1/yᵀs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Pair {
    s: Vec<f64>,
    y: Vec<f64>,
    rho: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) point: Point,
    /// Oldest first.
    pairs: VecDeque<Pair>,
    /// Buffers reused from iteration to iteration; never saved.
    #[serde(skip)]
    work: Work,
}

/// The |θ|-long vectors an iteration needs besides the pairs — the direction, the line
/// search's trial point and gradients, and a spare pair (the one dropped, or one whose
/// curvature was refused) — kept so that no iteration asks the allocator for fresh ones
/// (on a 308,000-value θ each is 2.4 MB, a page fault every 4 kB when fresh), and the
/// products the pass that ends an iteration computed for the next one. Working memory
/// only: not saved, and equal to any other (see [`State`]'s `PartialEq`); a state without
/// it (a resumed run) computes the same products again, with the same bits.
#[derive(Clone, Debug, Default)]
struct Work {
    d: Vec<f64>,
    line_search: Workspace,
    spare: Option<Pair>,
    /// Set by the pass that ended the last iteration: `d` holds −∇J already.
    started: Option<Started>,
    /// yᵀy of the newest pair, from the pass that made it (`None`: not known, e.g. after
    /// resuming).
    newest_yy: Option<f64>,
}

/// What the pass that ended an iteration ([`correction_pair_restart`]) left for the next
/// direction: `d` = −∇J, and (newest s)ᵀd when the newest pair is the one it made.
#[derive(Clone, Copy, Debug)]
struct Started {
    s_dot_d: Option<f64>,
}

impl PartialEq for Work {
    fn eq(&self, _: &Work) -> bool {
        true
    }
}

impl State {
    pub(super) fn dim(&self) -> Option<usize> {
        (!self.point.grad.is_empty()).then_some(self.point.grad.len())
    }

    /// One iteration with its line search. Its vectors live on the host, so every evaluation
    /// sends θ to the backend and takes ∇J back: on a GPU, 2·|θ|·4 bytes (f32) per evaluation.
    pub(super) fn iterate(&mut self, m: &Lbfgs, run: &mut Run, theta: &mut [f64]) -> Result<Outcome> {
        let Work { d, line_search, spare, started, newest_yy } = &mut self.work;
        if d.len() != theta.len() {
            d.resize(theta.len(), 0.0);
            *started = None;
        }
        loop {
            let steepest = self.pairs.is_empty();
            let start = started.take();
            let slope = direction(&self.pairs, &self.point.grad, d, start, *newest_yy);
            if !descends(slope) {
                // Rounding can spoil H's positive definiteness: forget it and use −∇J.
                if steepest {
                    return Ok(Outcome::Stopped(StopReason::LineSearchFailed));
                }
                self.pairs.clear();
                continue;
            }
            let alpha0 = if steepest { (1.0 / norm_l1(&self.point.grad)).min(1.0) } else { 1.0 };
            let mut cost = self.point.cost();
            let outcome = m.line_search.search_in(
                line_search,
                &mut run.full_batch(),
                theta,
                &mut cost,
                &mut self.point.grad,
                d,
                alpha0,
                slope,
            )?;
            match outcome {
                LineSearchOutcome::Accepted { alpha, .. } => {
                    self.point.cost = Some(cost);
                    let g_old = line_search.previous_grad();
                    let (kept, r) = remember(&mut self.pairs, spare, m.memory, alpha, d, g_old, &self.point.grad);
                    // d = −∇J now: the next iteration's direction starts from there.
                    *started = Some(Started { s_dot_d: kept.then_some(r.sd) });
                    if kept {
                        *newest_yy = Some(r.yy);
                    }
                    let it = Iterated { cost, grad_norm: r.gg.sqrt(), step_size: alpha };
                    return Ok(Outcome::Iterated(it));
                }
                LineSearchOutcome::Failed { .. } if !steepest => self.pairs.clear(),
                LineSearchOutcome::Failed { evaluations, non_finite } => {
                    return run.line_search_failed(theta, evaluations, non_finite);
                }
            }
        }
    }
}

/// d = −H∇J by the two-loop recursion (Nocedal & Wright Algorithm 7.4); −∇J without pairs.
/// Returns the slope ∇Jᵀd. Each step's update of d and the next step's dot product share one
/// pass over d ([`axpy_dot`], [`negate_dot`], [`scale_dot`]), the last update computing the
/// slope: 2m + 1 passes over |θ|-long vectors instead of 4m + 3, with the bits of the
/// separate passes. With `start`, d already holds −∇J and the first product may be known
/// (the pass that ended the last iteration computed them); `newest_yy`, when known, is the
/// newest pair's yᵀy. Either way the bits are those of the passes they replace.
fn direction(
    pairs: &VecDeque<Pair>,
    grad: &[f64],
    d: &mut [f64],
    start: Option<Started>,
    newest_yy: Option<f64>,
) -> f64 {
    let n = pairs.len();
    let Some(newest) = pairs.back() else {
        return match start {
            Some(_) => dot(grad, d),
            None => negate_dot(grad, d, grad),
        };
    };
    let mut alphas = vec![0.0; n];
    // Newest to oldest: αᵢ = ρᵢ sᵢᵀd, d ← d − αᵢ yᵢ.
    let mut s_dot_d = match start {
        Some(Started { s_dot_d: Some(sd) }) => sd,
        Some(Started { s_dot_d: None }) => dot(&newest.s, d),
        None => negate_dot(grad, d, &newest.s),
    };
    for i in (0..n).rev() {
        let p = &pairs[i];
        alphas[i] = p.rho * s_dot_d;
        if i > 0 {
            s_dot_d = axpy_dot(-alphas[i], &p.y, d, &pairs[i - 1].s);
        } else {
            axpy(-alphas[i], &p.y, d);
        }
    }
    let yy = newest_yy.unwrap_or_else(|| dot(&newest.y, &newest.y));
    let gamma = 1.0 / (newest.rho * yy);
    // Oldest to newest: βᵢ = ρᵢ yᵢᵀd, d ← d + (αᵢ − βᵢ) sᵢ.
    let mut y_dot_d = scale_dot(gamma, d, &pairs[0].y);
    for i in 0..n {
        let p = &pairs[i];
        let beta = p.rho * y_dot_d;
        let next = if i + 1 < n { &pairs[i + 1].y } else { grad };
        y_dot_d = axpy_dot(alphas[i] - beta, &p.s, d, next);
    }
    // After the last pair, the product taken was ∇Jᵀd.
    y_dot_d
}

/// Adds the pair of the step just taken, dropping the oldest beyond `memory`; skips it
/// when yᵀs ≤ ε yᵀy (no usable curvature, e.g. after a step accepted without the curvature
/// condition), as scipy's L-BFGS-B does. The new pair is written into `spare`'s vectors when
/// there is one, and the pair dropped (or refused) becomes the next spare. In the same pass
/// d becomes −∇J (g_new), where the next two-loop recursion starts
/// ([`correction_pair_restart`]). Returns whether the pair was kept, and the pass's products.
fn remember(
    pairs: &mut VecDeque<Pair>,
    spare: &mut Option<Pair>,
    memory: usize,
    alpha: f64,
    d: &mut [f64],
    g_old: &[f64],
    g_new: &[f64],
) -> (bool, PairRestart) {
    let mut pair = spare.take().unwrap_or_else(|| Pair { s: Vec::new(), y: Vec::new(), rho: 0.0 });
    pair.s.resize(d.len(), 0.0);
    pair.y.resize(d.len(), 0.0);
    let r = correction_pair_restart(alpha, d, g_new, g_old, &mut pair.s, &mut pair.y);
    let enough_curvature = r.ys > f64::EPSILON * r.yy;
    if !enough_curvature {
        *spare = Some(pair);
        return (false, r);
    }
    pair.rho = 1.0 / r.ys;
    while pairs.len() >= memory {
        *spare = pairs.pop_front();
    }
    pairs.push_back(pair);
    (true, r)
}

#[cfg(test)]
mod tests {
    use super::super::linalg::BLOCK;
    use super::*;

    /// The two-loop recursion as Algorithm 7.4 writes it, one pass per operation (the form
    /// before the passes were fused), and the slope taken afterwards.
    fn reference(pairs: &VecDeque<Pair>, grad: &[f64]) -> (Vec<f64>, f64) {
        let mut d: Vec<f64> = grad.iter().map(|g| -g).collect();
        let n = pairs.len();
        if let Some(newest) = pairs.back() {
            let mut alphas = vec![0.0; n];
            for i in (0..n).rev() {
                alphas[i] = pairs[i].rho * dot(&pairs[i].s, &d);
                axpy(-alphas[i], &pairs[i].y, &mut d);
            }
            let gamma = 1.0 / (newest.rho * dot(&newest.y, &newest.y));
            d.iter_mut().for_each(|di| *di *= gamma);
            for i in 0..n {
                let beta = pairs[i].rho * dot(&pairs[i].y, &d);
                axpy(alphas[i] - beta, &pairs[i].s, &mut d);
            }
        }
        let slope = dot(grad, &d);
        (d, slope)
    }

    fn wave(n: usize, k: usize) -> Vec<f64> {
        (0..n).map(|i| (((i * (2 * k + 7919)) % 1013) as f64 / 101.0 - 5.0) * (1.0 + k as f64 / 3.0)).collect()
    }

    #[test]
    fn the_fused_two_loop_recursion_gives_the_reference_bits() {
        for n in [11, 2 * BLOCK + 5] {
            let grad = wave(n, 0);
            for m in 0..4 {
                let pairs: VecDeque<Pair> = (0..m)
                    .map(|k| {
                        let s = wave(n, 2 * k + 1);
                        // y close to s (positive curvature), but not a multiple of it.
                        let y: Vec<f64> = s.iter().zip(wave(n, 2 * k + 2)).map(|(s, w)| s + 0.1 * w).collect();
                        let rho = 1.0 / dot(&y, &s);
                        assert!(rho > 0.0);
                        Pair { s, y, rho }
                    })
                    .collect();
                let (d_ref, slope_ref) = reference(&pairs, &grad);
                // From scratch, and from d = −∇J with the first product and the newest yᵀy
                // given (as the pass ending an iteration leaves them) or not (a refused pair).
                let negated: Vec<f64> = grad.iter().map(|g| -g).collect();
                let first = pairs.back().map(|p| dot(&p.s, &negated));
                let yy = pairs.back().map(|p| dot(&p.y, &p.y));
                let starts = [
                    (vec![f64::NAN; n], None, None),
                    (negated.clone(), Some(Started { s_dot_d: first }), yy),
                    (negated.clone(), Some(Started { s_dot_d: None }), None),
                ];
                for (k, (mut d, start, yy)) in starts.into_iter().enumerate() {
                    let slope = direction(&pairs, &grad, &mut d, start, yy);
                    let same = d.iter().zip(&d_ref).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "d, n = {n}, m = {m}, start {k}");
                    assert_eq!(slope.to_bits(), slope_ref.to_bits(), "∇Jᵀd, n = {n}, m = {m}, start {k}");
                    assert!(slope < 0.0, "a descent direction");
                }
            }
        }
    }

    /// The products one iteration hands the next (d = −∇J, sᵀd, yᵀy, ‖∇J‖) change no bit:
    /// a run of one-iteration runs, each from the optimizer saved as JSON and read back
    /// (which forgets them), ends on the θ and records of the uninterrupted run — on a θ
    /// longer than a block (the threaded passes), on one thread and on three.
    #[test]
    fn handing_products_to_the_next_iteration_changes_no_bit() {
        use crate::optim::{FnObjective, Hooks, Method, Optimizer, Stop};
        let n = BLOCK + 5;
        let (c, t) = (wave(n, 3), wave(n, 4));
        // J = Σ (1 + cᵢ²/25)(xᵢ − tᵢ)² + (Σ xᵢ/n)⁴: a curved, coupled, bounded-below function.
        let f = |x: &[f64], g: &mut [f64]| {
            let mean = x.iter().sum::<f64>() / n as f64;
            let mut j = mean.powi(4);
            for i in 0..n {
                let w = 1.0 + c[i] * c[i] / 25.0;
                j += w * (x[i] - t[i]).powi(2);
                g[i] = 2.0 * w * (x[i] - t[i]) + 4.0 * mean.powi(3) / n as f64;
            }
            j
        };
        let iterations = 8;
        let stop =
            |k| Stop { max_iterations: k, max_evaluations: None, grad_tol: 0.0, cost_tol: 0.0, ..Stop::FULL_BATCH };
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let method = Method::Lbfgs(Lbfgs::default().with_memory(3));
                let mut straight = vec![0.5; n];
                let mut whole = Optimizer::new(method.clone()).unwrap();
                whole.run(&mut FnObjective::new(n, f), &mut straight, &stop(iterations), &mut Hooks::new()).unwrap();
                let mut stepped = vec![0.5; n];
                let mut opt = Optimizer::new(method).unwrap();
                for k in 1..=iterations {
                    opt.run(&mut FnObjective::new(n, f), &mut stepped, &stop(k), &mut Hooks::new()).unwrap();
                    opt = serde_json::from_str(&serde_json::to_string(&opt).unwrap()).unwrap();
                }
                assert_eq!(whole.iterations(), iterations);
                assert!(straight.iter().zip(&stepped).all(|(a, b)| a.to_bits() == b.to_bits()), "θ, {threads} threads");
                let key = |o: &Optimizer| {
                    let r = &o.history().records;
                    r.iter()
                        .map(|r| (r.cost.to_bits(), r.grad_norm.to_bits(), r.step_size.to_bits(), r.evaluations))
                        .collect::<Vec<_>>()
                };
                assert_eq!(key(&whole), key(&opt), "records, {threads} threads");
            });
        }
    }

    #[test]
    fn pairs_reuse_the_vectors_of_the_pair_they_replace() {
        let n = 100;
        let (mut pairs, mut spare) = (VecDeque::new(), None);
        let d = wave(n, 1);
        let g_old = wave(n, 2);
        let g_new: Vec<f64> = g_old.iter().zip(&d).map(|(g, d)| g + 0.5 * d).collect();
        for k in 0..5 {
            let mut d_k = d.clone();
            let (kept, r) = remember(&mut pairs, &mut spare, 2, 1.0 + k as f64, &mut d_k, &g_old, &g_new);
            assert!(kept);
            assert!(d_k.iter().zip(&g_new).all(|(d, g)| d.to_bits() == (-g).to_bits()), "d ← −∇J");
            let newest = pairs.back().unwrap();
            assert_eq!(r.sd.to_bits(), dot(&newest.s, &d_k).to_bits());
            assert_eq!(r.yy.to_bits(), dot(&newest.y, &newest.y).to_bits());
        }
        assert_eq!(pairs.len(), 2);
        let newest = pairs.back().unwrap();
        assert!(newest.s.iter().zip(&d).all(|(s, d)| s.to_bits() == (5.0 * d).to_bits()));
        assert_eq!(newest.rho.to_bits(), (1.0 / dot(&newest.y, &newest.s)).to_bits());
        assert!(spare.is_some(), "the dropped pair is kept for the next one");
        // No curvature (y = 0): refused, its vectors kept as the spare, the pairs unchanged.
        let before = pairs.clone();
        let (kept, _) = remember(&mut pairs, &mut spare, 2, 1.0, &mut d.clone(), &g_old, &g_old);
        assert!(!kept);
        assert_eq!(pairs, before);
        assert!(spare.is_some());
    }
}
