//! First-order update rules — plain gradient step, momentum, Nesterov momentum, Adam — as one
//! piece apart from the training loop: given θ, a gradient and a learning rate, move θ and
//! the rule's moment vectors. The GPU backend runs exactly these formulas as WGSL kernels on
//! θ in device memory and tests them against [`UpdateState::apply`], so each formula below
//! is the specification: change one only together with its kernel.
//!
//! Scalars that depend on the step count (Adam's bias corrections) are computed once per
//! step on the host, in f64, by [`UpdateRule::scalars`]; a kernel receives them as uniforms.
//!
//! This module sits below both the backends (whose `DeviceTraining` takes an [`UpdateState`])
//! and the optimizers (which re-export it as `wgnn::optim::Update*`), so neither depends on
//! the other through it; it imports nothing of ours but the error type.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How a gradient becomes a step. Per element i, with learning rate η:
/// - `Plain`: θᵢ ← θᵢ − η gᵢ
/// - `Momentum` (scikit-learn's form, velocity in parameter units): vᵢ ← μ vᵢ − η gᵢ, then
///   θᵢ ← θᵢ + vᵢ, or with Nesterov θᵢ ← θᵢ + μ vᵢ − η gᵢ (Sutskever et al. 2013).
/// - `Adam` (Kingma & Ba 2015, Algorithm 1): t ← t + 1, mᵢ ← β₁ mᵢ + (1 − β₁) gᵢ,
///   vᵢ ← β₂ vᵢ + (1 − β₂) gᵢ², θᵢ ← θᵢ − η (mᵢ / c₁) / (√(vᵢ / c₂) + ε) with
///   c₁ = 1 − β₁ᵗ, c₂ = 1 − β₂ᵗ.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum UpdateRule {
    /// θ ← θ − η g.
    Plain,
    /// Heavy-ball or Nesterov momentum.
    Momentum {
        /// μ in [0, 1).
        momentum: f64,
        /// Nesterov's look-ahead form.
        nesterov: bool,
    },
    /// Adam.
    Adam {
        /// β₁ in [0, 1): decay of the first moment.
        beta1: f64,
        /// β₂ in [0, 1): decay of the second moment.
        beta2: f64,
        /// ε > 0 in the denominator.
        epsilon: f64,
    },
}

impl UpdateRule {
    /// scikit-learn's defaults: μ = 0.9 with Nesterov momentum.
    pub const NESTEROV: UpdateRule = UpdateRule::Momentum { momentum: 0.9, nesterov: true };
    /// The paper's (and scikit-learn's, PyTorch's) defaults: β₁ = 0.9, β₂ = 0.999, ε = 1e-8.
    pub const ADAM: UpdateRule = UpdateRule::Adam { beta1: 0.9, beta2: 0.999, epsilon: 1e-8 };

    /// The rule's name as the CLI spells it: `sgd`, `sgd+momentum`, `sgd+nesterov`, `adam`.
    pub fn name(&self) -> &'static str {
        match self {
            UpdateRule::Plain => "sgd",
            UpdateRule::Momentum { nesterov: false, .. } => "sgd+momentum",
            UpdateRule::Momentum { nesterov: true, .. } => "sgd+nesterov",
            UpdateRule::Adam { .. } => "adam",
        }
    }

    /// Errors (`Error::Data`, one line naming the value): μ, β₁ or β₂ outside [0, 1), or ε not
    /// positive and finite.
    pub fn validate(&self) -> Result<()> {
        let unit = |name: &str, v: f64| {
            if (0.0..1.0).contains(&v) { Ok(()) } else { Err(Error::Data(format!("{name} = {v} must lie in [0, 1)"))) }
        };
        match *self {
            UpdateRule::Plain => Ok(()),
            UpdateRule::Momentum { momentum, .. } => unit("momentum μ", momentum),
            UpdateRule::Adam { beta1, beta2, epsilon } => {
                unit("Adam β₁", beta1)?;
                unit("Adam β₂", beta2)?;
                if epsilon > 0.0 && epsilon.is_finite() {
                    Ok(())
                } else {
                    Err(Error::Data(format!("Adam ε = {epsilon} must be a positive number (the usual value is 1e-8)")))
                }
            }
        }
    }

    /// Moment vectors the rule keeps: 0, 1 (velocity) or 2 (m and v).
    pub fn num_moments(&self) -> usize {
        match self {
            UpdateRule::Plain => 0,
            UpdateRule::Momentum { .. } => 1,
            UpdateRule::Adam { .. } => 2,
        }
    }

    /// The scalars of update number `t` (1 for the first) with learning rate η.
    pub fn scalars(&self, t: u64, learning_rate: f64) -> UpdateScalars {
        let mut s = UpdateScalars {
            learning_rate,
            momentum: 0.0,
            beta1: 0.0,
            beta2: 0.0,
            epsilon: 0.0,
            bias_correction1: 1.0,
            bias_correction2: 1.0,
        };
        match *self {
            UpdateRule::Plain => {}
            UpdateRule::Momentum { momentum, .. } => s.momentum = momentum,
            UpdateRule::Adam { beta1, beta2, epsilon } => {
                s.beta1 = beta1;
                s.beta2 = beta2;
                s.epsilon = epsilon;
                s.bias_correction1 = 1.0 - beta1.powf(t as f64);
                s.bias_correction2 = 1.0 - beta2.powf(t as f64);
            }
        }
        s
    }
}

/// Everything one update step needs besides θ, g and the moments (a kernel's uniforms).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UpdateScalars {
    /// η.
    pub learning_rate: f64,
    /// μ (0 for rules without it).
    pub momentum: f64,
    /// Adam's β₁ (0 otherwise).
    pub beta1: f64,
    /// Adam's β₂ (0 otherwise).
    pub beta2: f64,
    /// Adam's ε (0 otherwise).
    pub epsilon: f64,
    /// c₁ = 1 − β₁ᵗ (1 for rules without it).
    pub bias_correction1: f64,
    /// c₂ = 1 − β₂ᵗ (1 for rules without it).
    pub bias_correction2: f64,
}

/// A rule with its state: the step count t and the moment vectors, all that a checkpoint
/// must keep to resume bit for bit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateState {
    /// The rule these moments belong to.
    pub rule: UpdateRule,
    /// Updates applied so far (Adam's t).
    pub steps: u64,
    /// Momentum: the velocity v. Adam: the first moment m. Empty for `Plain`.
    pub first_moment: Vec<f64>,
    /// Adam: the second moment v. Empty otherwise.
    pub second_moment: Vec<f64>,
}

impl UpdateState {
    /// Zero moments for θ of length `dim`.
    pub fn new(rule: UpdateRule, dim: usize) -> UpdateState {
        let moments = rule.num_moments();
        UpdateState {
            rule,
            steps: 0,
            first_moment: if moments >= 1 { vec![0.0; dim] } else { Vec::new() },
            second_moment: if moments >= 2 { vec![0.0; dim] } else { Vec::new() },
        }
    }

    /// Length of θ this state was made for, when it holds vectors.
    pub fn dim(&self) -> Option<usize> {
        (self.rule.num_moments() > 0).then_some(self.first_moment.len())
    }

    /// One step: moves θ (and the moments) by the rule's formula with learning rate η.
    pub fn apply(&mut self, theta: &mut [f64], grad: &[f64], learning_rate: f64) {
        assert_eq!(theta.len(), grad.len(), "θ and gradient differ in length");
        self.steps += 1;
        let s = self.rule.scalars(self.steps, learning_rate);
        let eta = s.learning_rate;
        match self.rule {
            UpdateRule::Plain => {
                for (t, &g) in theta.iter_mut().zip(grad) {
                    *t -= eta * g;
                }
            }
            UpdateRule::Momentum { nesterov, .. } => {
                let mu = s.momentum;
                for ((t, v), &g) in theta.iter_mut().zip(&mut self.first_moment).zip(grad) {
                    *v = mu * *v - eta * g;
                    *t += if nesterov { mu * *v - eta * g } else { *v };
                }
            }
            UpdateRule::Adam { .. } => {
                // Element by element, so blocks run in parallel with the same bits for any
                // number of threads.
                use rayon::prelude::*;
                const BLOCK: usize = 1 << 14;
                let moments = self.first_moment.par_chunks_mut(BLOCK).zip(self.second_moment.par_chunks_mut(BLOCK));
                theta.par_chunks_mut(BLOCK).zip(moments).zip(grad.par_chunks(BLOCK)).for_each(|((t, (m, v)), g)| {
                    adam_block(&s, t, m, v, g);
                });
            }
        }
    }
}

/// Adam's formula over one block of θ (see [`UpdateRule`]). Built for the baseline and, on
/// x86-64, with AVX2 (4 f64 lanes instead of 2), picked at run time: the same IEEE operations
/// in the same order (no fused multiply-add), so the same bits from both. The scalar loop
/// over 431,080 CNN parameters took 1.4 ms, 6% of a LeNet step (BENCHMARKS.md).
fn adam_block(s: &UpdateScalars, theta: &mut [f64], m: &mut [f64], v: &mut [f64], grad: &[f64]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has just been checked for AVX2.
        return unsafe { adam_block_avx2(s, theta, m, v, grad) };
    }
    adam_block_plain(s, theta, m, v, grad)
}

#[inline(always)]
fn adam_block_plain(s: &UpdateScalars, theta: &mut [f64], m: &mut [f64], v: &mut [f64], grad: &[f64]) {
    let (b1, b2, eta) = (s.beta1, s.beta2, s.learning_rate);
    for ((t, (m, v)), &g) in theta.iter_mut().zip(m.iter_mut().zip(v.iter_mut())).zip(grad) {
        *m = b1 * *m + (1.0 - b1) * g;
        *v = b2 * *v + (1.0 - b2) * g * g;
        *t -= eta * (*m / s.bias_correction1) / ((*v / s.bias_correction2).sqrt() + s.epsilon);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn adam_block_avx2(s: &UpdateScalars, theta: &mut [f64], m: &mut [f64], v: &mut [f64], grad: &[f64]) {
    adam_block_plain(s, theta, m, v, grad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_by_hand() {
        let g = [2.0, -4.0];
        let mut plain = UpdateState::new(UpdateRule::Plain, 2);
        let mut theta = [1.0, 1.0];
        plain.apply(&mut theta, &g, 0.5);
        assert_eq!(theta, [0.0, 3.0]);

        // Two momentum steps with μ = 0.5, η = 1: v = −g, then v = −1.5 g.
        let mut heavy = UpdateState::new(UpdateRule::Momentum { momentum: 0.5, nesterov: false }, 2);
        let mut theta = [0.0, 0.0];
        heavy.apply(&mut theta, &g, 1.0);
        heavy.apply(&mut theta, &g, 1.0);
        assert_eq!(theta, [-5.0, 10.0]);
        // Nesterov: step μv − ηg: first −1.5g, then μ(−1.5g) − g = −1.75g.
        let mut nag = UpdateState::new(UpdateRule::Momentum { momentum: 0.5, nesterov: true }, 2);
        let mut theta = [0.0, 0.0];
        nag.apply(&mut theta, &g, 1.0);
        assert_eq!(theta, [-3.0, 6.0]);
        nag.apply(&mut theta, &g, 1.0);
        assert_eq!(theta, [-6.5, 13.0]);

        // Adam's first step is −η sign(g) (up to ε): m̂ = g, v̂ = g².
        let mut adam = UpdateState::new(UpdateRule::ADAM, 2);
        let mut theta = [0.0, 0.0];
        adam.apply(&mut theta, &g, 0.1);
        assert!((theta[0] + 0.1).abs() < 1e-8 && (theta[1] - 0.1).abs() < 1e-8, "{theta:?}");
        assert_eq!(adam.steps, 1);
    }

    /// Adam over blocks in parallel, built for AVX2, gives the bits of the plain loop, at 1
    /// and 3 threads, over several blocks and a ragged tail.
    #[test]
    fn adam_blocks_equal_the_plain_loop_bit_for_bit() {
        let n = 3 * (1 << 14) + 77;
        let wave = |k: usize| (0..n).map(move |i| ((i * k) % 1009) as f64 / 97.0 - 5.0);
        let (g0, g1): (Vec<f64>, Vec<f64>) = (wave(31).collect(), wave(53).map(|v| v * 1e-3).collect());
        let mut want = UpdateState::new(UpdateRule::ADAM, n);
        let mut theta_want: Vec<f64> = wave(7).collect();
        let s1 = want.rule.scalars(1, 0.01);
        let s2 = want.rule.scalars(2, 0.01);
        for (s, g) in [(s1, &g0), (s2, &g1)] {
            adam_block_plain(&s, &mut theta_want, &mut want.first_moment, &mut want.second_moment, g);
        }
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let mut adam = UpdateState::new(UpdateRule::ADAM, n);
            let mut theta: Vec<f64> = wave(7).collect();
            pool.install(|| {
                adam.apply(&mut theta, &g0, 0.01);
                adam.apply(&mut theta, &g1, 0.01);
            });
            let same = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same(&theta, &theta_want), "{threads} threads: θ differs from the plain loop");
            assert!(same(&adam.first_moment, &want.first_moment) && same(&adam.second_moment, &want.second_moment));
        }
    }
}
