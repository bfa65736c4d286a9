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

/// Numbers whose bits a text round trip could lose: 0.1 + 0.2, −0, a subnormal, the extremes.
fn awkward(n: usize) -> Vec<f64> {
    let special = [0.1 + 0.2, -0.0, 5e-324, f64::MAX / 4.0, f64::MIN_POSITIVE, -1.0 / 3.0];
    (0..n).map(|i| special[i % special.len()] * (1.0 + i as f64 * 1e-7)).collect()
}

/// Long arrays of the optimizer state and the preprocessing leave the JSON header: each is a
/// tensor with the exact bits, and loading gives back the same JSON.
#[test]
fn long_metadata_arrays_are_tensors_with_their_exact_bits() {
    let (s, m) = (awkward(5000), awkward(20));
    let optimizer = serde_json::json!({
        "method": {"method": "lbfgs", "memory": 10},
        "state": {"pairs": [{"s": s, "y": s}], "short": [1.5, 2.5], "mixed": [1.0, null, 2.0],
                  "order": (0u64..100).collect::<Vec<_>>()},
        "history": {"records": [{"cost": 0.1 + 0.2}]},
    });
    let preprocessing = serde_json::json!({"whitening": {"matrix": m, "inputs": 4, "outputs": 5}});
    let mut ck = sample();
    ck.metadata.optimizer = optimizer.clone();
    ck.metadata.preprocessing = preprocessing.clone();
    let bytes = ck.to_bytes().unwrap();
    let back = Checkpoint::from_bytes(&bytes).unwrap();
    assert_eq!(back.metadata.optimizer, optimizer);
    assert_eq!(back.metadata.preprocessing, preprocessing);
    let bits = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap().to_bits()).collect()
    };
    let s_back = &back.metadata.optimizer["state"]["pairs"][0]["s"];
    assert_eq!(bits(s_back), s.iter().map(|x| x.to_bits()).collect::<Vec<_>>());

    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let pair = st.tensor("metadata/optimizer/state/pairs/0/s").unwrap();
    assert_eq!((pair.dtype(), pair.shape()), (Dtype::F64, &[5000][..]));
    assert_eq!(st.tensor("metadata/optimizer/state/order").unwrap().dtype(), Dtype::U64);
    assert_eq!(st.tensor("metadata/preprocessing/whitening/matrix").unwrap().shape(), &[20]);
    // Short and mixed arrays stay JSON; the header holds no long list of numbers.
    assert!(
        st.tensor("metadata/optimizer/state/short").is_err() && st.tensor("metadata/optimizer/state/mixed").is_err()
    );
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let header = &meta.metadata().as_ref().unwrap()["wgnn"];
    assert!(header.len() < 2000, "the header is {} bytes", header.len());
    // 2 × 5000 + 20 f64 and 100 u64 as 8 bytes each, θ (3289 f64), and headers: not ~20 bytes a number.
    let numbers = 2 * 5000 + 20 + 100 + 3289;
    assert!(bytes.len() < numbers * 8 + 8000, "{} bytes for {numbers} numbers", bytes.len());

    // A reference to a tensor the file lacks is refused, not read as something else.
    let mut forged: serde_json::Value = serde_json::from_str(header).unwrap();
    forged["metadata"]["optimizer"]["state"]["pairs"][0]["s"] = serde_json::json!({"$tensor": "metadata/nowhere"});
    let st_tensors: Vec<(String, TensorView<'_>)> = st.tensors();
    let bad = safetensors::serialize(st_tensors, Some(HashMap::from([("wgnn".into(), forged.to_string())]))).unwrap();
    let e = Checkpoint::from_bytes(&bad).unwrap_err().to_string();
    assert!(e.contains("metadata/nowhere") && e.contains("lacks"), "{e}");
}

/// A file of the first format (optimizer state as a byte tensor of JSON text) still loads,
/// its optimizer state included, so older run folders can be evaluated and resumed.
#[test]
fn files_of_the_first_format_still_load() {
    let optimizer = serde_json::json!({"method": {"method": "cg"}, "state": {"direction": awkward(40)}});
    let ck = sample();
    let bytes = ck.to_bytes().unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut header: serde_json::Value = serde_json::from_str(&meta.metadata().as_ref().unwrap()["wgnn"]).unwrap();
    assert_eq!(header["format"], "wgnn-checkpoint-2");
    header["format"] = "wgnn-checkpoint-1".into();
    let json = serde_json::to_vec(&optimizer).unwrap();
    let mut tensors = st.tensors();
    tensors.push(("optimizer_state_json".into(), TensorView::new(Dtype::U8, vec![json.len()], &json).unwrap()));
    let old = safetensors::serialize(tensors, Some(HashMap::from([("wgnn".into(), header.to_string())]))).unwrap();
    let back = Checkpoint::from_bytes(&old).unwrap();
    assert_eq!(back.metadata.optimizer, optimizer);
    assert_eq!(back.theta, ck.theta);
    header["format"] = "wgnn-checkpoint-9".into();
    let newer =
        safetensors::serialize(st.tensors(), Some(HashMap::from([("wgnn".into(), header.to_string())]))).unwrap();
    let e = Checkpoint::from_bytes(&newer).unwrap_err().to_string();
    assert!(e.contains("wgnn-checkpoint-9") && e.contains("another wgnn version"), "{e}");
}

/// A finished run's model holds θ, the spec and a summary, no optimizer state: the size of the
/// model. Without --checkpoint-every no checkpoint is kept and continuing it is refused in one
/// line; with it the checkpoint beside the model holds the final optimizer state.
#[test]
fn a_finished_model_is_the_size_of_the_model() {
    use std::sync::atomic::AtomicBool;
    use wgnn::data::{DataSource, LoadOptions};
    use wgnn::optim::{Lbfgs, Method};
    use wgnn::train::{TrainJob, train};
    let spec = NetSpec::sparse_autoencoder(64, 16, 1e-4, Sparsity { target: 0.01, weight: 3.0 }).unwrap();
    let x = DataSource::Synthetic.load(&LoadOptions { patch_count: 200, ..Default::default() }).unwrap().x;
    let method = Method::Lbfgs(Lbfgs::default().with_memory(20));
    let never = AtomicBool::new(false);
    for every in [None, Some(4)] {
        let dir = tempfile::tempdir().unwrap();
        let mut job = TrainJob { seed: 1, ..TrainJob::new(spec.clone(), method.clone(), 25, dir.path()) };
        job.checkpoint_every = every;
        let mut backend = wgnn::CpuBackend::<f32>::new(spec.clone()).unwrap();
        let outcome = train(job, &mut backend, &x, wgnn::Targets::Inputs, &mut |_| {}, &never).unwrap();
        let model_path = dir.path().join("model.safetensors");
        let size = std::fs::metadata(&model_path).unwrap().len() as usize;
        // θ is 2128 f64 (17,024 bytes); the rest is the spec, flags and summary.
        assert!(size < 2128 * 8 + 4096, "model.safetensors is {size} bytes");
        let model = Checkpoint::load(&model_path).unwrap();
        assert!(model.metadata.optimizer.is_null() && model.metadata.history.is_null());
        assert_eq!(model.metadata.extra["iterations"], outcome.summary.iterations);
        assert_eq!(model.metadata.extra["stop_reason"], outcome.summary.reason.to_string());
        let checkpoint = dir.path().join("checkpoint.safetensors");
        assert_eq!(checkpoint.exists(), every.is_some());
        let more = |from: Checkpoint| {
            let dir2 = tempfile::tempdir().unwrap();
            let mut job = TrainJob { seed: 1, ..TrainJob::new(spec.clone(), method.clone(), 30, dir2.path()) };
            job.resume = Some(from);
            let mut backend = wgnn::CpuBackend::<f32>::new(spec.clone()).unwrap();
            train(job, &mut backend, &x, wgnn::Targets::Inputs, &mut |_| {}, &never)
        };
        if every.is_some() {
            let kept = Checkpoint::load(&checkpoint).unwrap();
            assert_eq!(kept.theta, outcome.theta);
            assert_eq!(
                kept.metadata.optimizer["counters"]["iteration"], 25,
                "the final state, not the last periodic one"
            );
            assert_eq!(more(kept).unwrap().summary.iterations, 30);
        } else {
            let e = more(model).err().expect("a finished model is not continued").to_string();
            assert!(e.contains("finished") && e.contains("--checkpoint-every") && !e.contains('\n'), "{e}");
        }
    }
}

/// Every serde shape an optimizer state may take, with arrays long and short, of f64, whole
/// numbers, mixed numbers and non-finite values.
#[derive(serde::Serialize)]
struct State {
    direction: Vec<f64>,
    short: Vec<f64>,
    order: Vec<u32>,
    signed: Vec<i64>,
    with_nan: Vec<f64>,
    narrow: Vec<f32>,
    pairs: Vec<Pair>,
    tagged: Tagged,
    newtype: Variant,
    tuple: Variant,
    unit: Variant,
    by_epoch: std::collections::BTreeMap<u32, Vec<f64>>,
    maybe: Option<Vec<f64>>,
    nothing: Option<f64>,
    words: Vec<String>,
}

#[derive(serde::Serialize)]
struct Pair {
    s: Vec<f64>,
    y: Vec<f64>,
    rho: f64,
}

#[derive(serde::Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
enum Tagged {
    Lbfgs { memory: usize, moments: Vec<f64> },
}

#[derive(serde::Serialize)]
enum Variant {
    Newtype(Vec<f64>),
    Tuple(f64, u64),
    Unit,
}

/// `save_state` serialises the optimizer's state straight into tensor bytes; the file is the
/// same, byte for byte, as the one written through `serde_json::to_value` (the slow route it
/// replaces), and it loads back to that JSON.
#[test]
fn state_written_directly_is_the_file_written_through_json() {
    let long = awkward(300);
    let mut with_nan = awkward(20);
    with_nan[7] = f64::NAN;
    let state = State {
        direction: long.clone(),
        short: vec![1.5, 2.5],
        order: (0..40).collect(),
        signed: (-20..20).collect(),
        with_nan,
        narrow: (0..30).map(|i| i as f32 / 3.0).collect(),
        pairs: (0..3).map(|k| Pair { s: awkward(50 + k), y: awkward(17), rho: 0.5 }).collect(),
        tagged: Tagged::Lbfgs { memory: 10, moments: awkward(33) },
        newtype: Variant::Newtype(awkward(18)),
        tuple: Variant::Tuple(0.25, 7),
        unit: Variant::Unit,
        by_epoch: [(3, awkward(16)), (10, awkward(2))].into_iter().collect(),
        maybe: Some(awkward(21)),
        nothing: None,
        words: vec!["a".into(); 20],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let ck = sample();
    wgnn::checkpoint::save_state(&ck.spec, &ck.theta, &ck.metadata, &state, &path).unwrap();
    let direct = std::fs::read(&path).unwrap();
    let mut through_json = ck.clone();
    through_json.metadata.optimizer = serde_json::to_value(&state).unwrap();
    assert_eq!(direct, through_json.to_bytes().unwrap(), "the two routes wrote different files");
    let back = Checkpoint::load(&path).unwrap();
    assert_eq!(back.metadata.optimizer, through_json.metadata.optimizer);
    let st = safetensors::SafeTensors::deserialize(&direct).unwrap();
    for name in ["direction", "pairs/2/s", "tagged/moments", "newtype/Newtype", "by_epoch/3", "maybe", "narrow"] {
        assert_eq!(st.tensor(&format!("metadata/optimizer/{name}")).unwrap().dtype(), Dtype::F64, "{name}");
    }
    assert_eq!(st.tensor("metadata/optimizer/order").unwrap().dtype(), Dtype::U64);
    for json in ["short", "signed", "with_nan", "by_epoch/10", "words"] {
        assert!(st.tensor(&format!("metadata/optimizer/{json}")).is_err(), "{json} should stay JSON");
    }
    // θ of the wrong length is refused before anything is written.
    let e = wgnn::checkpoint::save_state(&ck.spec, &ck.theta[1..], &ck.metadata, &state, &dir.path().join("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("θ has 3288 values"), "{e}");
    assert!(!dir.path().join("x").exists());
}
