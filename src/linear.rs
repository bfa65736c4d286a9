//! Ridge regression in closed form — linear least squares with an intercept that is not
//! penalised, as scikit-learn's `Ridge(alpha)` — the baseline a regression network has to
//! beat. CPU, f64, nalgebra; it is not a backend and trains nothing iteratively, so its answer
//! does not depend on how long an optimizer ran.

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::{Error, Result};

/// ŷ = x W + b, fitted to minimise ‖Y − X W − 1bᵀ‖² + α‖W‖².
#[derive(Clone, Debug)]
pub struct Ridge {
    /// inputs × outputs.
    pub weights: Array2<f64>,
    /// One per output.
    pub intercept: Array1<f64>,
}

impl Ridge {
    /// Centres X and Y by their column means, solves (XcᵀXc + αI) W = XcᵀYc (through the
    /// SVD, so α = 0 — plain least squares — gives the minimum-norm solution even when
    /// columns are constant or collinear), and sets b = ȳ − x̄ W.
    pub fn fit(x: ArrayView2<'_, f32>, y: ArrayView2<'_, f32>, alpha: f64) -> Result<Ridge> {
        let (m, n) = x.dim();
        if y.nrows() != m {
            return Err(Error::Shape(format!("{} rows of targets for {m} examples", y.nrows())));
        }
        if m == 0 || n == 0 || y.ncols() == 0 {
            return Err(Error::Data("ridge regression needs examples, inputs and outputs".into()));
        }
        if !(alpha >= 0.0 && alpha.is_finite()) {
            return Err(Error::Data(format!("the ridge penalty α = {alpha} must be a finite number ≥ 0")));
        }
        let (x, y) = (x.mapv(f64::from), y.mapv(f64::from));
        let (x_mean, y_mean) = (x.mean_axis(Axis(0)).expect("m > 0"), y.mean_axis(Axis(0)).expect("m > 0"));
        let (xc, yc) = (&x - &x_mean, &y - &y_mean);
        let mut gram = xc.t().dot(&xc);
        gram.diag_mut().mapv_inplace(|v| v + alpha);
        let rhs = xc.t().dot(&yc);
        let to_na = |a: &Array2<f64>| nalgebra::DMatrix::from_fn(a.nrows(), a.ncols(), |i, j| a[[i, j]]);
        let solution = to_na(&gram)
            .svd(true, true)
            .solve(&to_na(&rhs), 1e-12 * gram.diag().iter().fold(0.0f64, |a, &v| a.max(v)).max(f64::MIN_POSITIVE))
            .map_err(|e| Error::Data(format!("ridge regression: {e}")))?;
        let weights = Array2::from_shape_fn((n, y.ncols()), |(i, j)| solution[(i, j)]);
        let intercept = &y_mean - &x_mean.dot(&weights);
        Ok(Ridge { weights, intercept })
    }

    /// ŷ for each row of `x`.
    pub fn predict(&self, x: ArrayView2<'_, f32>) -> Array2<f64> {
        x.mapv(f64::from).dot(&self.weights) + &self.intercept
    }
}

/// The prediction that scores R² = 0 on data with the same means: each output's mean over
/// `y_train`, for every one of `rows` examples.
pub fn mean_prediction(y_train: ArrayView2<'_, f32>, rows: usize) -> Array2<f64> {
    let mean = y_train.mapv(f64::from).mean_axis(Axis(0)).expect("targets have rows");
    Array2::from_shape_fn((rows, mean.len()), |(_, j)| mean[j])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovers_an_exact_linear_map_and_its_intercept() {
        // y₀ = 2x₀ − x₁ + 3, y₁ = 0.5x₁ − 1, with a constant input column (singular XᵀX).
        let x = ndarray::array![[0.0f32, 1.0, 7.0], [1.0, 0.0, 7.0], [2.0, 3.0, 7.0], [4.0, -1.0, 7.0]];
        let y = x.map_axis(Axis(1), |r| [2.0 * r[0] - r[1] + 3.0, 0.5 * r[1] - 1.0]);
        let y = Array2::from_shape_fn((4, 2), |(i, j)| y[i][j]);
        let fit = Ridge::fit(x.view(), y.view(), 0.0).unwrap();
        let err = (fit.predict(x.view()) - y.mapv(f64::from)).mapv(f64::abs).fold(0.0f64, |a, &v| a.max(v));
        assert!(err < 1e-9, "max error {err}");
        assert!((fit.weights[[0, 0]] - 2.0).abs() < 1e-9 && (fit.intercept[1] + 1.0).abs() < 1e-9, "{fit:?}");
        assert!(fit.weights[[2, 0]].abs() < 1e-9, "the constant column gets no weight (minimum norm)");
        // A large α shrinks the weights towards 0 and the prediction towards the mean.
        let shrunk = Ridge::fit(x.view(), y.view(), 1e9).unwrap();
        assert!(shrunk.weights.iter().all(|w| w.abs() < 1e-6));
    }
}
