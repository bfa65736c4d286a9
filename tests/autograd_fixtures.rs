//! The CPU reference against an independent implementation: JAX autograd in float64
//! (tests/fixtures/make_fixtures.py, run by hand). Cost and gradient must agree to 1e-10.

mod common;

use common::relative_error;
use std::path::{Path, PathBuf};

use wgnn::model::NetSpec;
use wgnn::{Backend, Batch, CpuBackend, Targets, npy};

fn fixture_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/fixtures exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("spec.json").exists())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn cpu_reference_agrees_with_jax_autograd() {
    let dirs = fixture_dirs();
    let names: Vec<String> = dirs.iter().map(|d| d.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for expected in ["sparse_autoencoder", "softmax_regression", "deep_mlp", "regression", "sparse_tanh_regression"] {
        assert!(names.iter().any(|n| n == expected), "fixture {expected} is missing from {names:?}");
    }
    for dir in &dirs {
        let spec: NetSpec = serde_json::from_str(&std::fs::read_to_string(dir.join("spec.json")).unwrap()).unwrap();
        let theta = npy::read_vector(&dir.join("theta.npy")).unwrap();
        let x = npy::read_matrix(&dir.join("x.npy")).unwrap();
        let cost_ref = npy::read_vector(&dir.join("cost.npy")).unwrap()[0];
        let grad_ref = npy::read_vector(&dir.join("grad.npy")).unwrap();
        let labels = dir.join("labels.npy").exists().then(|| npy::read_labels(&dir.join("labels.npy")).unwrap());
        let values = dir.join("targets.npy").exists().then(|| npy::read_matrix(&dir.join("targets.npy")).unwrap());
        let targets = match (&labels, &values) {
            (Some(l), _) => Targets::Labels(l),
            (_, Some(v)) => Targets::Values(v.inputs()),
            _ => Targets::Inputs,
        };

        let mut backend = CpuBackend::<f64>::new(spec).unwrap();
        backend.set_data(x.inputs(), targets).unwrap();
        let mut grad = vec![0.0; theta.len()];
        let cost = backend.cost_and_grad(theta.as_slice().unwrap(), Batch::All, &mut grad).unwrap().total();

        let cost_err = ((cost - cost_ref) / cost_ref).abs();
        let grad_err = relative_error(&grad, grad_ref.as_slice().unwrap());
        println!(
            "{}: cost {cost} (jax {cost_ref}), relative errors: cost {cost_err:e}, gradient {grad_err:e}",
            dir.display()
        );
        assert!(cost_err < 1e-10, "{}: cost {cost} vs jax {cost_ref}", dir.display());
        assert!(grad_err < 1e-10, "{}: gradient relative error {grad_err:e}", dir.display());
    }
}
