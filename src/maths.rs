//! # The maths wgnn implements
//!
//! The formulas the backends, optimizers and pictures compute, in one place; module docs
//! elsewhere cite these sections by name ("Sparsity", "Numerically safe forms", …). Sources:
//! Andrew Ng's CS294A lecture notes *Sparse autoencoder* and the UFLDL tutorial (forward,
//! backpropagation, sparsity, softmax, gradient checking, visualisation, patches, convolution
//! and pooling); PyTorch's `Conv2d` documentation for the layers beyond dense;
//! scikit-learn's `r2_score` for R² (see [`crate::train::r2_of`]).
//!
//! ## Notation
//!
//! ```text
//! m examples, layer sizes s_1 … s_L, W⁽ˡ⁾ is s_{l+1} × s_l, b⁽ˡ⁾ has s_{l+1} entries, f is the
//! layer's activation, ⊙ is the elementwise product. Examples are rows in the code (X is
//! m × s_1), so a layer computes Z = A Wᵀ + 1 bᵀ.
//! ```
//!
//! ## Forward
//!
//! ```text
//! a⁽¹⁾ = x;  z⁽ˡ⁺¹⁾ = W⁽ˡ⁾ a⁽ˡ⁾ + b⁽ˡ⁾;  a⁽ˡ⁺¹⁾ = f(z⁽ˡ⁺¹⁾);  h_{W,b}(x) = a⁽ᴸ⁾.
//! ```
//!
//! ## Activations (value, derivative written with stored values)
//!
//! ```text
//! - sigmoid f = 1/(1+e^{−z}),  f′ = a(1−a)
//! - tanh f = tanh z,  f′ = 1 − a²   (tanh z = 2σ(2z) − 1)
//! - ReLU f = max(0, z),  f′ = 1 if z > 0 else 0
//! - leaky ReLU f = z if z ≥ 0 else αz (α = 0.01 default),  f′ = 1 if z > 0 else α
//! - identity (linear output for regression / linear decoders), f′ = 1
//! - maxout max(w₁ᵀx + b₁, w₂ᵀx + b₂): twice the parameters per unit ("Layers beyond dense").
//! Compute sigmoid without overflow for large |z|.
//! ```
//!
//! ## Squared-error cost with weight decay
//!
//! ```text
//! J(W,b) = (1/m) Σᵢ ½‖h(x⁽ⁱ⁾) − y⁽ⁱ⁾‖² + (λ/2) Σ_l Σ_{i,j} (W⁽ˡ⁾_{ji})²
//! Biases are not decayed. An autoencoder has y = x.
//! ```
//!
//! ## Sparsity (sparse autoencoder)
//!
//! ```text
//! ρ̂_j = (1/m) Σᵢ a⁽²⁾_j(x⁽ⁱ⁾) over the whole batch the cost is taken on (so it needs a
//! forward pass over all of it before the backward pass).
//! J_sparse = J + β Σ_{j=1}^{s_2} KL(ρ‖ρ̂_j),  KL(ρ‖ρ̂) = ρ log(ρ/ρ̂) + (1−ρ) log((1−ρ)/(1−ρ̂)).
//! Hidden delta: δ⁽²⁾_i = ((Σ_{j=1}^{s_3} W⁽²⁾_{ji} δ⁽³⁾_j) + β(−ρ/ρ̂_i + (1−ρ)/(1−ρ̂_i))) f′(z⁽²⁾_i).
//! (The inner sum runs over the s_3 units of the next layer; one widely copied text writes s_2.)
//! The sparsity term needs activations in (0,1) (sigmoid); with other activations report a
//! clear error (wgnn refuses --sparsity unless the first hidden layer is sigmoid).
//! ```
//!
//! ## Backpropagation (per example; the code does it for the batch at once)
//!
//! ```text
//! δ⁽ᴸ⁾ = −(y − a⁽ᴸ⁾) ⊙ f′(z⁽ᴸ⁾)
//! δ⁽ˡ⁾ = ((W⁽ˡ⁾)ᵀ δ⁽ˡ⁺¹⁾) ⊙ f′(z⁽ˡ⁾)  for l = L−1 … 2
//! ∇_{W⁽ˡ⁾} J = (1/m) Σᵢ δ⁽ˡ⁺¹⁾ (a⁽ˡ⁾)ᵀ + λ W⁽ˡ⁾;   ∇_{b⁽ˡ⁾} J = (1/m) Σᵢ δ⁽ˡ⁺¹⁾
//! ```
//!
//! ## Softmax output and cross-entropy
//!
//! ```text
//! P(y = k | x) = exp(θ_kᵀ a) / Σ_j exp(θ_jᵀ a)  (subtract the row maximum before exp).
//! J = −(1/m) Σᵢ Σ_k 1{yᵢ = k} log P(yᵢ = k | xᵢ) + (λ/2)‖θ‖²
//! Output delta: δ⁽ᴸ⁾ = P − onehot(y)  (then divided by m in the gradient).
//! (Some lecture slides write exp(−θᵀx) in one line and exp(θᵀx) in the next; the sign
//! must be the same in numerator and denominator — use +.)
//! Softmax regression is the single-layer case a = x. The same softmax layer can top any
//! stack of hidden layers (MLP classifier, fine-tuned stacked autoencoder).
//! ```
//!
//! ## Sigmoid output and binary cross-entropy
//!
//! [`crate::model::Output::SigmoidBce`]: k independent sigmoid outputs for binary (k = 1)
//! and multi-label targets y ∈ {0,1}^k (PyTorch's `BCEWithLogitsLoss`; the logistic output
//! of scikit-learn's `MLPClassifier` for multi-label targets).
//!
//! ```text
//! a = σ(z) = 1/(1 + e^{−z}), one per label
//! J = −(1/m) Σᵢ Σⱼ [y log a + (1 − y) log(1 − a)] + (λ/2)‖W‖²
//! Output delta: δ⁽ᴸ⁾ = a − y  (then divided by m in the gradient).
//! Computed from z (see "Numerically safe forms"):
//!   −[y log σ(z) + (1 − y) log(1 − σ(z))] = max(z, 0) − z·y + log(1 + e^{−|z|})
//! since log σ(z) = −softplus(−z) and log(1 − σ(z)) = −softplus(z).
//! Decisions: label j is 1 when a ≥ 0.5 (z ≥ 0). Scores: subset (exact-match) accuracy,
//! Hamming loss (fraction of label decisions wrong), per-label accuracy.
//! ```
//!
//! ## Labels and targets
//!
//! ```text
//! Binary classification: y ∈ {0,1} with sigmoid, y ∈ {−1,1} with tanh. Regression: scale
//! targets into the output activation's range ([0,1] sigmoid, [−1,1] tanh) or use an
//! identity output.
//! ```
//!
//! ## Initialisation
//!
//! ```text
//! Random, never all equal (symmetry). N(0, ε²) with ε = 0.01, or uniform
//! [−r, r] with r = √(6/(n_in + n_out + 1)). Biases 0.
//! ```
//!
//! ## Optimisation
//!
//! ```text
//! Gradient descent: θ ← θ − α ∇J. Improvements the notes name: adapting α automatically
//! (line search), Newton-type methods, L-BFGS, conjugate gradient. The optimiser needs only
//! a function returning (J(θ), ∇J(θ)) and an initial θ.
//! ```
//!
//! ## Gradient checking
//!
//! ```text
//! g_i ≈ (J(θ + ε e_i) − J(θ − ε e_i)) / (2ε), ε = 1e-4. Report
//! ‖g − ĝ‖ / ‖g + ĝ‖; in f64 a correct implementation gives < 1e-9. Check it first on
//! J(x) = x₁² + 3x₁x₂ at (4, 10) (gradient (38, 12)).
//! ```
//!
//! ## Seeing what a hidden unit learned
//!
//! ```text
//! The input of norm ≤ 1 that most activates hidden unit i is x_j = W_{ij} / √(Σ_j W_{ij}²).
//! Draw each as a small image, in a grid (e.g. 25 units of 8×8, 196 of 28×28).
//! ```
//!
//! ## Natural image patches (UFLDL normalisation)
//!
//! ```text
//! Sample square patches at random positions; subtract each patch's mean; clip to ±3
//! standard deviations of all the patch values; rescale from [−1,1] to [0.1, 0.9].
//! ```
//!
//! ## Convolution and pooling of learned features
//!
//! ```text
//! For a feature learned on p×p patches: convolve over a larger image (valid convolution,
//! output (n−p+1)²), apply the hidden activation with its bias (and the same preprocessing
//! as training, e.g. ZCA whitening, folded into W and b). Pool over disjoint regions
//! (mean or max); contiguous regions give small-translation invariance.
//! ```
//!
//! ## Numerically safe forms (what every backend and precision must use)
//!
//! ```text
//! - Cross-entropy: log P(y|x) = (z_y − max_j z_j) − log Σ_j exp(z_j − max_j z_j). Never form
//!   `max + log Σ` and subtract z_y afterwards: in f32 the two large numbers cancel (logits of
//!   1e8 give a cost of 0 instead of ln 2).
//! - Sparsity: ρ̂ and 1 − ρ̂ are both means over the batch; when ρ̂ rounds to 0 or 1 in the working
//!   precision, compute 1 − ρ̂ as the mean of σ(−z) (or of 1 − a accumulated in f64) and keep
//!   KL finite, or refuse with a clear error; never report inf or NaN as a cost with success.
//! - Weight decay with λ = 0 contributes exactly 0 (do not multiply 0 by an infinite sum).
//! - Binary cross-entropy with a sigmoid output: compute it from z as
//!   max(z, 0) − z·y + log(1 + e^{−|z|}), never from a rounded a (σ(40) is 1 in f32, and
//!   log(1 − 1) is −∞; z = ±100 must give the finite, exact cost).
//! ```
//!
//! ## Layers beyond dense
//!
//! The CPU layer kinds of [`crate::layers`]: maxout, 2-D convolution and pooling.
//!
//! ```text
//! Shapes: a batch of images is m × c × h × w (row-major, "NCHW").
//! - Maxout (k pieces): z = A Wᵀ + b with W of (units·k) × in; output unit u is
//!   max over its k pieces (pieces of unit u are rows u·k … u·k+k−1); backward sends δ_u to the
//!   winning piece only (the first on ties).
//! - Convolution (PyTorch's Conv2d, cross-correlation): out[n,f,y,x] = b_f +
//!   Σ_{c,i,j} W[f,c,i,j] · in[n,c, y·s+i−p, x·s+j−p] (stride s, zero padding p), output side
//!   ⌊(h + 2p − k)/s⌋ + 1. With the patch matrix P (one row per output position, one column per
//!   (c,i,j)): forward Z = P Wᵀ; ∇W = δᵀ P / m; ∇b = column sums of δ / m; ∇input = the patch
//!   matrix of δ·W folded back (each input pixel sums the patch entries that read it).
//! - Pooling over k×k regions with stride s: mean — backward spreads δ/k² evenly; max —
//!   backward sends δ to the position that won in the forward pass (the first on ties).
//! ```
