//! PCA and ZCA whitening (UFLDL, "PCA and whitening"): fitted once on training data, stored
//! with the model (serde), and applied the same way to every later input, so features
//! learned on whitened data meet whitened data.
//!
//! With the feature means μ and the covariance Σ = (1/m) Σᵢ (x⁽ⁱ⁾ − μ)(x⁽ⁱ⁾ − μ)ᵀ = U Λ Uᵀ
//! (eigenvalues λ₁ ≥ λ₂ ≥ …):
//! - PCA whitening keeps k components: y = diag(1/√(λᵢ + ε)) U_kᵀ (x − μ)  (k values);
//! - ZCA whitening rotates back: y = U diag(1/√(λᵢ + ε)) Uᵀ (x − μ)  (n values, a symmetric
//!   transform, the whitened data closest to the original).
//!
//! ε regularises the small eigenvalues (UFLDL uses 0.1 for natural image patches scaled to
//! [0, 1], 1e-5 for data with unit variances); with ε ≪ λ the whitened data has covariance ≈ I.
//!
//! The eigendecomposition is nalgebra's `symmetric_eigen` (Householder tridiagonalisation and
//! implicit QR): O(n³) once, a fraction of a second for MNIST's 784×784 covariance in release,
//! where a cyclic Jacobi solver needs about ten O(n³) sweeps; nalgebra is well kept and pure
//! Rust, so it costs no system library.

use ndarray::{Array1, Array2, ArrayView2, Axis, LinalgScalar, s};
use num_traits::Float;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which whitening a [`Whitening`] applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhiteningKind {
    /// k values per example: the coordinates on the top k principal components, each scaled
    /// to unit variance.
    Pca,
    /// n values per example: PCA whitening rotated back into the input space.
    Zca,
}

/// How many principal components PCA whitening keeps.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Components {
    /// Every one (n).
    All,
    /// The top k (1 ≤ k ≤ n).
    Count(usize),
    /// The fewest whose eigenvalues sum to at least this fraction (in (0, 1]) of the total
    /// variance; UFLDL suggests 0.99.
    Variance(f64),
}

/// A fitted whitening transform y = M (x − μ).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Whitening {
    /// PCA or ZCA.
    pub kind: WhiteningKind,
    /// ε, added to each eigenvalue λ before scaling by 1/√(λ + ε) (UFLDL's regularisation,
    /// ≥ 0), which keeps directions of almost no variance from being blown up.
    pub epsilon: f64,
    /// μ, one mean per input feature (n).
    pub mean: Vec<f64>,
    /// n: values per example going in.
    pub inputs: usize,
    /// k (PCA) or n (ZCA): values per example coming out.
    pub outputs: usize,
    /// M, outputs × inputs, row-major.
    pub matrix: Vec<f64>,
    /// All n eigenvalues of the covariance, largest first (≥ 0).
    pub eigenvalues: Vec<f64>,
}

/// The most values per example whitening is fitted on: the covariance is n × n f64 (128 MiB
/// at this bound) and its eigendecomposition takes O(n³) time, so a wide file (a CSV line of
/// 100,000 values) is refused instead of asking for 80 GB.
pub const MAX_INPUTS: usize = 4096;

/// Rows of data per block when accumulating the covariance, to bound the f64 copy.
const BLOCK: usize = 4096;

/// μ, and the eigenvalues (descending, clamped at 0) and unit eigenvectors (columns) of Σ.
fn eigen_of_covariance<T: Copy + Into<f64>>(x: ArrayView2<'_, T>) -> Result<(Array1<f64>, Vec<f64>, Array2<f64>)> {
    let (m, n) = x.dim();
    if n > MAX_INPUTS {
        return Err(Error::Data(format!(
            "cannot fit whitening on examples of {n} values: its covariance would be {n}×{n}; \
             whitening takes at most {MAX_INPUTS} values per example"
        )));
    }
    if m < 2 || n == 0 {
        return Err(Error::Data(format!(
            "cannot fit whitening on {m} example(s) of {n} values: it needs at least 2 examples of at least 1 value"
        )));
    }
    if let Some(((r, c), _)) = x.indexed_iter().find(|(_, v)| !(**v).into().is_finite()) {
        return Err(Error::Data(format!("cannot fit whitening: row {r}, column {c} is not a finite number")));
    }
    let mut mean = Array1::<f64>::zeros(n);
    for row in x.rows() {
        mean.iter_mut().zip(row).for_each(|(s, &v)| *s += v.into());
    }
    mean /= m as f64;
    let mut cov = Array2::<f64>::zeros((n, n));
    for start in (0..m).step_by(BLOCK) {
        let block = x.slice(s![start..(start + BLOCK).min(m), ..]);
        let centred = block.mapv(|v| v.into()) - &mean;
        cov += &centred.t().dot(&centred);
    }
    cov /= m as f64;
    // Σ is symmetric up to rounding; make it exactly so for the symmetric solver.
    let cov = (&cov + &cov.t()) * 0.5;
    let eigen = nalgebra::DMatrix::from_row_slice(n, n, cov.as_slice().expect("standard layout")).symmetric_eigen();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| eigen.eigenvalues[j].total_cmp(&eigen.eigenvalues[i]));
    let values = order.iter().map(|&i| eigen.eigenvalues[i].max(0.0)).collect();
    let vectors = Array2::from_shape_fn((n, n), |(r, c)| eigen.eigenvectors[(r, order[c])]);
    Ok((mean, values, vectors))
}

impl Whitening {
    /// Fits ZCA whitening on the rows of `x`.
    pub fn fit_zca<T: Copy + Into<f64>>(x: ArrayView2<'_, T>, epsilon: f64) -> Result<Whitening> {
        Whitening::fit(x, WhiteningKind::Zca, epsilon, Components::All)
    }

    /// Fits PCA whitening on the rows of `x`, keeping `components`.
    pub fn fit_pca<T: Copy + Into<f64>>(
        x: ArrayView2<'_, T>,
        epsilon: f64,
        components: Components,
    ) -> Result<Whitening> {
        Whitening::fit(x, WhiteningKind::Pca, epsilon, components)
    }

    /// Fits `kind` on the rows of `x`. ZCA always keeps every component.
    pub fn fit<T: Copy + Into<f64>>(
        x: ArrayView2<'_, T>,
        kind: WhiteningKind,
        epsilon: f64,
        components: Components,
    ) -> Result<Whitening> {
        if !(epsilon.is_finite() && epsilon >= 0.0) {
            return Err(Error::Data(format!("whitening ε = {epsilon} must be a number ≥ 0 (UFLDL uses 0.1 to 1e-5)")));
        }
        let n = x.ncols();
        let k = match (kind, components) {
            (WhiteningKind::Zca, _) | (_, Components::All) => n,
            (_, Components::Count(k)) if (1..=n).contains(&k) => k,
            (_, Components::Count(k)) => {
                return Err(Error::Data(format!("cannot keep {k} principal components of {n}: choose 1 to {n}")));
            }
            (_, Components::Variance(f)) if f > 0.0 && f <= 1.0 => 0, // decided once λ is known
            (_, Components::Variance(f)) => {
                return Err(Error::Data(format!("retained variance {f} must be a fraction in (0, 1], e.g. 0.99")));
            }
        };
        let (mean, eigenvalues, vectors) = eigen_of_covariance(x)?;
        let k = match components {
            Components::Variance(f) if kind == WhiteningKind::Pca => {
                let total: f64 = eigenvalues.iter().sum();
                let mut running = 0.0;
                eigenvalues
                    .iter()
                    .position(|&l| {
                        running += l;
                        running >= f * total
                    })
                    .map_or(n, |i| i + 1)
            }
            _ => k,
        };
        let largest = eigenvalues[0];
        if let Some(i) = (0..k).find(|&i| eigenvalues[i] + epsilon <= 1e-12 * largest.max(f64::MIN_POSITIVE)) {
            return Err(Error::Data(format!(
                "the covariance is singular (eigenvalue {} of {n} is {:e}): whitening would divide by zero; \
                 use ε > 0 or keep fewer components",
                i + 1,
                eigenvalues[i]
            )));
        }
        let scale: Vec<f64> = eigenvalues.iter().map(|&l| 1.0 / (l + epsilon).sqrt()).collect();
        let top = vectors.slice(s![.., ..k]);
        // Rows of the PCA matrix are u_iᵀ / √(λᵢ + ε).
        let pca = Array2::from_shape_fn((k, n), |(i, j)| top[[j, i]] * scale[i]);
        let matrix = match kind {
            WhiteningKind::Pca => pca,
            WhiteningKind::Zca => top.dot(&pca),
        };
        Ok(Whitening {
            kind,
            epsilon,
            mean: mean.to_vec(),
            inputs: n,
            outputs: matrix.nrows(),
            matrix: matrix.into_raw_vec_and_offset().0,
            eigenvalues,
        })
    }

    /// M as an outputs × inputs matrix.
    pub fn matrix(&self) -> Array2<f64> {
        Array2::from_shape_vec((self.outputs, self.inputs), self.matrix.clone()).expect("sizes kept consistent")
    }

    /// The whitening a model stored under `preprocessing.whitening`, if any.
    pub fn from_preprocessing(preprocessing: &serde_json::Value) -> Result<Option<Whitening>> {
        match preprocessing.get("whitening") {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => {
                let w: Whitening = serde_json::from_value(v.clone()).map_err(|e| {
                    Error::Data(crate::one_line(&format!("the model's preprocessing.whitening is unreadable: {e}")))
                })?;
                // Sizes that disagree with the stored values are refused here, once, rather
                // than met later by code that sizes arrays from them.
                w.check_sizes()?;
                Ok(Some(w))
            }
        }
    }

    /// First-layer weights W (k × outputs) seen from the pixels: W M (k × inputs), since
    /// W (M (x − μ)) = (W M) x − W M μ. These are the filters to draw (UFLDL shows
    /// W·ZCAWhite); W itself lives in the whitened space and looks like noise.
    pub fn filters_in_pixels(&self, w: ArrayView2<'_, f64>) -> Result<Array2<f64>> {
        self.check_sizes()?;
        if w.ncols() != self.outputs {
            return Err(Error::Shape(format!(
                "the weights take {} inputs, the whitening gives {}",
                w.ncols(),
                self.outputs
            )));
        }
        Ok(w.dot(&self.matrix()))
    }

    /// Whitened rows `y` (m × outputs) mapped back to the input space (m × inputs):
    /// x̂ = μ + M⁺ y, with M⁺ the pseudo-inverse of M. For ZCA M is invertible and x̂ = x; for
    /// PCA with k < n components x̂ is x projected onto the top k principal components (UFLDL's
    /// "recovering an approximation of the data"). This is how whitened inputs and their
    /// reconstructions are drawn: a person recognises image patches, not whitened values.
    pub fn unwhiten(&self, y: ArrayView2<'_, f64>) -> Result<Array2<f64>> {
        let [x] = self.unwhiten_each([y])?;
        Ok(x)
    }

    /// [`Whitening::unwhiten`] of several arrays, with one pseudo-inverse (an SVD of M) for all.
    pub fn unwhiten_each<const N: usize>(&self, ys: [ArrayView2<'_, f64>; N]) -> Result<[Array2<f64>; N]> {
        self.check_sizes()?;
        if let Some(y) = ys.iter().find(|y| y.ncols() != self.outputs) {
            return Err(Error::Shape(format!(
                "the whitening gives {} values per example, these have {}: only whitened data unwhitens",
                self.outputs,
                y.ncols()
            )));
        }
        if self.matrix.iter().chain(&self.mean).any(|v| !v.is_finite()) {
            return Err(Error::Data(
                "the stored whitening holds a non-finite number: the model file is damaged".into(),
            ));
        }
        // An SVD rather than Mᵀ(M Mᵀ)⁻¹: the condition number of M is √((λ₁ + ε)/(λₖ + ε)),
        // up to 10⁶ with ε = 0, and forming M Mᵀ would square it.
        let svd = nalgebra::DMatrix::from_row_slice(self.outputs, self.inputs, &self.matrix)
            .try_svd(true, true, f64::EPSILON, 10_000)
            .ok_or_else(|| Error::Data("the stored whitening matrix has no SVD: the model file is damaged".into()))?;
        let largest = svd.singular_values.max();
        if largest == 0.0 {
            return Err(Error::Data("the stored whitening matrix is zero: the model file is damaged".into()));
        }
        // NumPy's default cut-off for pinv: singular values below this are rounding noise.
        let tolerance = largest * self.inputs.max(self.outputs) as f64 * f64::EPSILON;
        let inverse = svd.pseudo_inverse(tolerance).map_err(|e| Error::Data(e.into()))?;
        let inverse = Array2::from_shape_fn((self.inputs, self.outputs), |(r, c)| inverse[(r, c)]);
        let mean = Array1::from(self.mean.clone());
        Ok(ys.map(|y| y.dot(&inverse.t()) + &mean))
    }

    /// The fraction of the total variance in the kept components (1 for ZCA).
    pub fn retained_variance(&self) -> f64 {
        let total: f64 = self.eigenvalues.iter().sum();
        if total == 0.0 { 1.0 } else { self.eigenvalues[..self.outputs].iter().sum::<f64>() / total }
    }

    /// The stored values agree with the stored sizes.
    fn check_sizes(&self) -> Result<()> {
        if self.outputs.checked_mul(self.inputs) != Some(self.matrix.len()) || self.mean.len() != self.inputs {
            return Err(Error::Data(format!(
                "the stored whitening is inconsistent ({} means, a {}-value matrix for {}→{}): the model file is damaged",
                self.mean.len(),
                self.matrix.len(),
                self.inputs,
                self.outputs
            )));
        }
        Ok(())
    }

    fn check<T>(&self, x: &ArrayView2<'_, T>) -> Result<()> {
        self.check_sizes()?;
        if x.ncols() != self.inputs {
            return Err(Error::Shape(format!(
                "the whitening was fitted on examples of {} values, these have {}",
                self.inputs,
                x.ncols()
            )));
        }
        Ok(())
    }

    fn apply_as<T: LinalgScalar + Float>(&self, x: ArrayView2<'_, T>) -> Result<Array2<T>> {
        self.check(&x)?;
        let cast = |v: f64| T::from(v).expect("f64 converts to any float");
        let mean = Array1::from_iter(self.mean.iter().map(|&v| cast(v)));
        let matrix = self.matrix().mapv(cast);
        Ok((&x - &mean).dot(&matrix.t()))
    }

    /// The whitened rows of `x` (m × outputs), computed in f32.
    pub fn apply(&self, x: ArrayView2<'_, f32>) -> Result<Array2<f32>> {
        self.apply_as(x)
    }

    /// The whitened rows of `x` (m × outputs), computed in f64.
    pub fn apply_f64(&self, x: ArrayView2<'_, f64>) -> Result<Array2<f64>> {
        self.apply_as(x)
    }
}

/// (1/m) Yᵀ Y − ȳ ȳᵀ: the covariance of the rows of `y`, for checks.
pub fn covariance(y: ArrayView2<'_, f64>) -> Array2<f64> {
    let m = y.nrows() as f64;
    let mean = y.mean_axis(Axis(0)).expect("at least one row");
    let centred = &y - &mean;
    centred.t().dot(&centred) / m
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{SeedableRng, rngs::StdRng};
    use rand_distr::{Distribution, StandardNormal};

    /// m correlated examples: independent normals with variances 9, 4, 1, 0.25, 0.04, mixed by
    /// a fixed rotation-and-shear, plus an offset.
    fn correlated(m: usize, seed: u64) -> Array2<f64> {
        let mut rng = StdRng::seed_from_u64(seed);
        let sd = [3.0, 2.0, 1.0, 0.5, 0.2];
        let z = Array2::from_shape_fn((m, 5), |(_, j)| {
            let z: f64 = StandardNormal.sample(&mut rng);
            sd[j] * z
        });
        let mix = Array2::from_shape_fn((5, 5), |(i, j)| if i == j { 1.0 } else { 0.3 * ((i * 5 + j) as f64).sin() });
        z.dot(&mix) + 7.0
    }

    fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
        (a - b).iter().fold(0.0, |m, v| m.max(v.abs()))
    }

    #[test]
    fn filters_in_pixels_act_on_centred_pixels_as_w_on_whitened_values() {
        let x = correlated(200, 3);
        for white in [
            Whitening::fit_zca(x.view(), 1e-3).unwrap(),
            Whitening::fit(x.view(), WhiteningKind::Pca, 1e-3, Components::Count(3)).unwrap(),
        ] {
            let w = Array2::from_shape_fn((4, white.outputs), |(i, j)| ((i * 7 + j) as f64).cos());
            let seen_through_whitening = white.apply_f64(x.view()).unwrap().dot(&w.t());
            let folded = white.filters_in_pixels(w.view()).unwrap();
            assert_eq!(folded.dim(), (4, 5));
            let centred = &x - &Array1::from(white.mean.clone());
            let diff = max_abs_diff(&centred.dot(&folded.t()), &seen_through_whitening);
            assert!(diff < 1e-9, "{:?}: W M (x − μ) differs from W white(x) by {diff}", white.kind);
        }
        let white = Whitening::fit_zca(x.view(), 1e-3).unwrap();
        let err = white.filters_in_pixels(Array2::zeros((4, 6)).view()).unwrap_err().to_string();
        assert!(err.contains("6 inputs") && err.contains("gives 5"), "{err}");
        let stored = serde_json::json!({ "whitening": white });
        assert_eq!(Whitening::from_preprocessing(&stored).unwrap(), Some(white));
        assert_eq!(Whitening::from_preprocessing(&serde_json::json!({})).unwrap(), None);
        assert!(Whitening::from_preprocessing(&serde_json::json!({ "whitening": 3 })).is_err());
    }

    fn relative_diff(got: &Array2<f64>, want: &Array2<f64>) -> f64 {
        let norm = |a: &Array2<f64>| a.iter().map(|v| v * v).sum::<f64>().sqrt();
        norm(&(got - want)) / norm(want)
    }

    #[test]
    fn unwhitening_zca_or_every_pca_component_gives_the_data_back() {
        let x = correlated(300, 6);
        for white in [
            Whitening::fit_zca(x.view(), 1e-3).unwrap(),
            Whitening::fit_zca(x.view(), 0.0).unwrap(),
            Whitening::fit_pca(x.view(), 0.0, Components::All).unwrap(),
            Whitening::fit_pca(x.view(), 0.1, Components::All).unwrap(),
        ] {
            let back = white.unwhiten(white.apply_f64(x.view()).unwrap().view()).unwrap();
            let diff = relative_diff(&back, &x);
            assert!(diff < 1e-9, "{:?} ε = {}: unwhiten(white(x)) is {diff} from x", white.kind, white.epsilon);
        }
    }

    #[test]
    fn unwhitening_k_pca_components_projects_onto_the_top_k_eigenvectors() {
        let x = correlated(300, 7);
        let mean = x.mean_axis(Axis(0)).unwrap();
        let centred = &x - &mean;
        // The reference: eigenvectors of the covariance from a separate eigendecomposition.
        let cov = covariance(x.view());
        let eigen = nalgebra::DMatrix::from_row_slice(5, 5, cov.as_slice().unwrap()).symmetric_eigen();
        let mut order: Vec<usize> = (0..5).collect();
        order.sort_by(|&i, &j| eigen.eigenvalues[j].total_cmp(&eigen.eigenvalues[i]));
        for k in 1..5 {
            let u_k = Array2::from_shape_fn((5, k), |(r, c)| eigen.eigenvectors[(r, order[c])]);
            let projected = centred.dot(&u_k).dot(&u_k.t()) + &mean;
            let white = Whitening::fit_pca(x.view(), 0.01, Components::Count(k)).unwrap();
            let y = white.apply_f64(x.view()).unwrap();
            let back = white.unwhiten(y.view()).unwrap();
            assert_eq!(back.dim(), (300, 5));
            let diff = relative_diff(&back, &projected);
            assert!(diff < 1e-9, "k = {k}: unwhiten(white(x)) is {diff} from x projected on U_k");
            // It is a real approximation, not x itself, and whitening it again gives y back.
            assert!(relative_diff(&back, &x) > 1e-4, "k = {k}: nothing was dropped");
            let again = white.apply_f64(back.view()).unwrap();
            assert!(relative_diff(&again, &y) < 1e-9, "k = {k}: white(unwhiten(y)) ≠ y");
        }
    }

    #[test]
    fn whitening_refuses_examples_too_wide_for_a_covariance() {
        let wide = Array2::<f32>::zeros((2, MAX_INPUTS + 1));
        let e = Whitening::fit_zca(wide.view(), 0.1).unwrap_err().to_string();
        assert!(e.contains("4097 values") && e.contains("at most 4096"), "{e}");
    }

    #[test]
    fn a_stored_whitening_with_sizes_that_disagree_is_refused_on_reading() {
        let x = correlated(100, 4);
        let white = Whitening::fit_zca(x.view(), 0.1).unwrap();
        let stored = serde_json::json!({ "whitening": white });
        assert_eq!(Whitening::from_preprocessing(&stored).unwrap(), Some(white.clone()));
        // Sizes whose product overflows, or disagrees with the values: an error, not a panic.
        for (inputs, outputs) in [(usize::MAX, 2), (1usize << 40, 1usize << 40), (5, 4)] {
            let mut forged = stored.clone();
            forged["whitening"]["inputs"] = serde_json::json!(inputs);
            forged["whitening"]["outputs"] = serde_json::json!(outputs);
            let e = Whitening::from_preprocessing(&forged).unwrap_err().to_string();
            assert!(e.contains("inconsistent") && !e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn unwhitening_refuses_the_wrong_width_and_a_damaged_whitening() {
        let x = correlated(100, 8);
        let white = Whitening::fit_pca(x.view(), 0.1, Components::Count(3)).unwrap();
        let err = white.unwhiten(x.view()).unwrap_err();
        assert!(matches!(err, Error::Shape(_)), "{err}");
        assert!(err.to_string().contains("gives 3 values") && err.to_string().contains("these have 5"), "{err}");
        let mut damaged = white.clone();
        damaged.matrix.pop();
        assert!(matches!(damaged.unwhiten(Array2::zeros((2, 3)).view()), Err(Error::Data(_))));
        let mut damaged = white.clone();
        damaged.matrix[4] = f64::NAN;
        assert!(matches!(damaged.unwhiten(Array2::zeros((2, 3)).view()), Err(Error::Data(_))));
        let mut damaged = white;
        damaged.matrix.fill(0.0);
        assert!(matches!(damaged.unwhiten(Array2::zeros((2, 3)).view()), Err(Error::Data(_))));
    }

    #[test]
    fn zca_whitened_covariance_is_identity_and_transform_symmetric() {
        let x = correlated(4000, 1);
        let w = Whitening::fit_zca(x.view(), 1e-9).unwrap();
        let y = w.apply_f64(x.view()).unwrap();
        let cov = covariance(y.view());
        assert!(max_abs_diff(&cov, &Array2::eye(5)) < 1e-6, "cov = {cov:.4}");
        let m = w.matrix();
        assert!(max_abs_diff(&m, &m.t().to_owned()) < 1e-9, "ZCA matrix is not symmetric");
        assert!((w.retained_variance() - 1.0).abs() < 1e-12);
        // Eigenvalues are sorted and roughly the generating variances' scale.
        assert!(w.eigenvalues.windows(2).all(|p| p[0] >= p[1]));
    }

    #[test]
    fn epsilon_shrinks_small_directions() {
        let x = correlated(4000, 2);
        let w = Whitening::fit_zca(x.view(), 0.1).unwrap();
        let cov = covariance(w.apply_f64(x.view()).unwrap().view());
        // Along eigenvector i the variance becomes λᵢ/(λᵢ + ε) < 1: the trace says so.
        let want: f64 = w.eigenvalues.iter().map(|l| l / (l + 0.1)).sum();
        assert!((cov.diag().sum() - want).abs() < 1e-6, "{} vs {want}", cov.diag().sum());
        assert!(want < 4.9);
    }

    #[test]
    fn pca_keeps_k_components_with_unit_variance() {
        let x = correlated(4000, 3);
        let w = Whitening::fit_pca(x.view(), 0.0, Components::Count(3)).unwrap();
        assert_eq!((w.inputs, w.outputs), (5, 3));
        let y = w.apply_f64(x.view()).unwrap();
        assert_eq!(y.dim(), (4000, 3));
        assert!(max_abs_diff(&covariance(y.view()), &Array2::eye(3)) < 1e-9);
        // Retained variance picks the fewest components reaching the fraction.
        let all = Whitening::fit_pca(x.view(), 0.0, Components::All).unwrap();
        let total: f64 = all.eigenvalues.iter().sum();
        let two = (all.eigenvalues[0] + all.eigenvalues[1]) / total;
        let v = Whitening::fit_pca(x.view(), 0.0, Components::Variance(two - 1e-9)).unwrap();
        assert_eq!(v.outputs, 2);
        let v = Whitening::fit_pca(x.view(), 0.0, Components::Variance(two + 1e-9)).unwrap();
        assert_eq!(v.outputs, 3);
        assert!((v.retained_variance() - (two + all.eigenvalues[2] / total)).abs() < 1e-12);
    }

    #[test]
    fn f32_application_matches_f64() {
        let x = correlated(500, 4);
        let w = Whitening::fit_zca(x.mapv(|v| v as f32).view(), 1e-5).unwrap();
        let y64 = w.apply_f64(x.view()).unwrap();
        let y32 = w.apply(x.mapv(|v| v as f32).view()).unwrap().mapv(f64::from);
        assert!(max_abs_diff(&y64, &y32) < 1e-4);
    }

    #[test]
    fn bad_fits_are_refused() {
        let x = correlated(100, 5);
        assert!(Whitening::fit_pca(x.view(), 0.0, Components::Count(6)).is_err());
        assert!(Whitening::fit_pca(x.view(), 0.0, Components::Count(0)).is_err());
        assert!(Whitening::fit_pca(x.view(), 0.0, Components::Variance(1.5)).is_err());
        assert!(Whitening::fit_zca(x.view(), -1.0).is_err());
        assert!(Whitening::fit_zca(x.slice(s![..1, ..]), 0.1).is_err());
        // A constant column makes Σ singular: refused without ε, fine with it.
        let mut singular = x.clone();
        singular.column_mut(2).fill(1.0);
        let e = Whitening::fit_zca(singular.view(), 0.0).unwrap_err().to_string();
        assert!(e.contains("singular"), "{e}");
        assert!(Whitening::fit_zca(singular.view(), 1e-3).is_ok());
        let mut nan = x.clone();
        nan[[3, 1]] = f64::NAN;
        assert!(Whitening::fit_zca(nan.view(), 0.1).unwrap_err().to_string().contains("row 3, column 1"));
        let w = Whitening::fit_zca(x.view(), 0.1).unwrap();
        assert!(w.apply_f64(Array2::zeros((2, 4)).view()).is_err());
    }
}
