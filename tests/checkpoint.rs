//! Checkpoints: exact round trips, and corrupt or mismatched files refused clearly.

mod common;

use std::collections::HashMap;

use safetensors::{Dtype, tensor::TensorView};
use wgnn::checkpoint::{Checkpoint, Metadata};
use wgnn::model::{Init, NetSpec, Sparsity};

fn sample() -> Checkpoint {
    let spec = NetSpec::sparse_autoencoder(64, 25, 1e-4, Sparsity { target: 0.01, weight: 3.0 }).unwrap();
    let mut theta = Init::Uniform.theta(&spec, 5);
    theta[3200] = 0.123_456_789_012_345_68; // a bias with full f64 precision
    let mut metadata =
        Metadata { seed: Some(5), history: serde_json::json!([{"cost": 1.5}, {"cost": 0.5}]), ..Default::default() };
    metadata.extra.insert("final_cost".into(), serde_json::json!(0.5));
    Checkpoint::new(spec, theta, metadata).unwrap()
}

#[test]
fn round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let ck = sample();
    ck.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert_eq!(back.spec, ck.spec);
    assert!(back.theta.iter().zip(&ck.theta).all(|(a, b)| a.to_bits() == b.to_bits()));
    assert_eq!(back.metadata.history, ck.metadata.history);
    assert_eq!(back.metadata.seed, Some(5));
    assert_eq!(back.metadata.wgnn_version, env!("CARGO_PKG_VERSION"));
    // Nothing but the file itself is left in the folder.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("model.safetensors")]);
    // The weights are ordinary safetensors: W⁽¹⁾ is 25×64.
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("layers.0.weight").unwrap().shape(), &[25, 64]);
}

#[test]
fn corrupt_and_mismatched_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ck = sample();
    let bytes = ck.to_bytes().unwrap();

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let e = Checkpoint::load(&truncated).unwrap_err().to_string();
    assert!(e.contains("truncated.safetensors") && e.contains("corrupt or truncated"), "{e}");

    let text = dir.path().join("text.safetensors");
    std::fs::write(&text, "hello").unwrap();
    assert!(Checkpoint::load(&text).unwrap_err().to_string().contains("corrupt or truncated"));

    // A safetensors file from elsewhere, without wgnn's metadata.
    let data = vec![0u8; 8 * 4];
    let foreign = safetensors::serialize([("w", TensorView::new(Dtype::F64, vec![4], &data).unwrap())], None).unwrap();
    let e = Checkpoint::from_bytes(&foreign).unwrap_err().to_string();
    assert!(e.contains("not a wgnn checkpoint"), "{e}");

    // The header's spec says 64-25-64 but a tensor has another shape.
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (name, t) in st.tensors() {
        let shape = if name == "layers.1.bias" { vec![63] } else { t.shape().to_vec() };
        let data = t.data()[..shape.iter().product::<usize>() * 8].to_vec();
        tensors.push((name, shape, data));
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let header: HashMap<String, String> = meta.metadata().clone().unwrap();
    let views = tensors.iter().map(|(n, s, d)| (n.clone(), TensorView::new(Dtype::F64, s.clone(), d).unwrap()));
    let bad = safetensors::serialize(views, Some(header)).unwrap();
    let e = Checkpoint::from_bytes(&bad).unwrap_err().to_string();
    assert!(e.contains("layers.1.bias") && e.contains("[63]") && e.contains("[64]"), "{e}");

    // θ of the wrong length never makes a checkpoint.
    assert!(Checkpoint::new(ck.spec.clone(), vec![0.0; 3], Metadata::default()).is_err());
}

#[test]
fn a_failed_save_leaves_the_old_file_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let ck = sample();
    ck.save(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    // Saving into a folder that does not exist fails and touches nothing.
    assert!(ck.save(&dir.path().join("missing/model.safetensors")).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
}
