//! Saving and loading a trained network: the weights as safetensors (one f64 tensor per W and
//! b, named `layers.{l}.weight` (out × in) and `layers.{l}.bias`, readable by any safetensors
//! tool), and the spec plus free-form training metadata (optimizer state, preprocessing,
//! seed, a summary) as JSON in the safetensors header under the key `wgnn`.
//!
//! Long numeric arrays in the metadata (L-BFGS pairs, Adam moments, the best θ kept, a
//! whitening matrix: anything of at least [`MIN_TENSOR`] numbers) do not go into that JSON:
//! each becomes its own tensor, f64 with its exact bits (u64 for arrays of whole numbers),
//! named `metadata/` plus its JSON path (e.g. `metadata/optimizer/state/pairs/0/s`), and the
//! JSON keeps `{"$tensor": NAME}` in its place. Loading puts the arrays back, so the
//! [`Metadata`] a caller sees is the same JSON either way and a new optimizer's vectors need no
//! new code. As text those numbers took ~20 bytes each; as tensors 8.
//!
//! Files written before (`wgnn-checkpoint-1`, the optimizer state as a byte tensor of JSON
//! text) still load.
//!
//! Writes are atomic (temporary file, fsync, rename): a crash never leaves a broken file.
//! Loading checks every shape against the spec and refuses a corrupt or mismatched file with
//! a message that says what is wrong.

use std::collections::HashMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use serde::{Deserialize, Serialize};

use crate::model::{NetSpec, ThetaLayout};
use crate::{Error, Result};

/// The header key holding the JSON metadata.
const KEY: &str = "wgnn";
const FORMAT: &str = "wgnn-checkpoint-2";
/// The format before long arrays became tensors; still read.
const FORMAT_1: &str = "wgnn-checkpoint-1";
/// The byte tensor holding the optimizer state as JSON in [`FORMAT_1`] files.
const OPTIMIZER: &str = "optimizer_state_json";
/// Numeric arrays in the metadata at least this long are stored as tensors, shorter ones stay
/// JSON (a tensor's header entry costs about as much as 16 numbers as text).
pub const MIN_TENSOR: usize = 16;
/// The JSON key that stands for an array stored as a tensor.
const TENSOR_REF: &str = "$tensor";
/// The prefix of the names of tensors holding metadata arrays.
const TENSOR_PREFIX: &str = "metadata/";

/// Everything a checkpoint holds besides the weights. The values are JSON so that the
/// optimizer, data and training code own their own formats.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The wgnn version that wrote the file.
    #[serde(default)]
    pub wgnn_version: String,
    #[serde(default)]
    pub seed: Option<u64>,
    /// The training history (cost per iteration and so on). Files written now leave it null
    /// (the optimizer state holds the history, metrics.json too); older files may hold it.
    #[serde(default)]
    pub history: serde_json::Value,
    /// Optimizer state, for resuming: in `checkpoint.safetensors`, null in a finished run's
    /// `model.safetensors` (weights, spec, preprocessing and a summary in `extra` only).
    #[serde(default)]
    pub optimizer: serde_json::Value,
    /// How inputs were preprocessed (scaling, whitening), so new data can be treated alike.
    #[serde(default)]
    pub preprocessing: serde_json::Value,
    /// The command that started the run (the CLI's `train` flags as JSON), so `--resume DIR`
    /// alone can restore the whole job; null in files written before it was recorded.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub command: serde_json::Value,
    /// Anything else (e.g. final metrics).
    #[serde(default)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    spec: NetSpec,
    metadata: Metadata,
}

/// A network's spec, its parameters θ and its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    pub spec: NetSpec,
    pub theta: Vec<f64>,
    pub metadata: Metadata,
}

fn weight_name(l: usize) -> String {
    format!("layers.{l}.weight")
}

fn bias_name(l: usize) -> String {
    format!("layers.{l}.bias")
}

impl Checkpoint {
    pub fn new(spec: NetSpec, theta: Vec<f64>, metadata: Metadata) -> Result<Checkpoint> {
        spec.validate()?;
        let len = ThetaLayout::new(&spec).len();
        if theta.len() != len {
            return Err(Error::Shape(format!("θ has {} values but the network needs {len}", theta.len())));
        }
        Ok(Checkpoint { spec, theta, metadata })
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let layout = ThetaLayout::new(&self.spec);
        let bytes: &[u8] = bytemuck::cast_slice(&self.theta);
        let mut tensors = Vec::new();
        for l in 0..layout.num_layers() {
            let (out, inp) = layout.shapes[l];
            let w = layout.weight_range(l);
            let b = layout.bias_range(l);
            let view = |range: std::ops::Range<usize>, shape| {
                TensorView::new(Dtype::F64, shape, &bytes[range.start * 8..range.end * 8]).expect("sizes match")
            };
            tensors.push((weight_name(l), view(w, vec![out, inp])));
            tensors.push((bias_name(l), view(b, vec![out])));
        }
        // Long numeric arrays leave the JSON: their bytes are kept here until serialised. The
        // skeleton is built from borrowed values: the big arrays are never cloned as JSON.
        let mut arrays: Vec<(String, Dtype, Vec<u8>)> = Vec::new();
        let mut out =
            |key: &str, value: &serde_json::Value| skeleton(value, &mut format!("{TENSOR_PREFIX}{key}"), &mut arrays);
        let m = &self.metadata;
        let metadata = Metadata {
            wgnn_version: env!("CARGO_PKG_VERSION").to_string(),
            seed: m.seed,
            history: out("history", &m.history),
            optimizer: out("optimizer", &m.optimizer),
            preprocessing: out("preprocessing", &m.preprocessing),
            command: m.command.clone(),
            extra: m.extra.iter().map(|(k, v)| (k.clone(), out(&format!("extra/{k}"), v))).collect(),
        };
        for (name, dtype, data) in &arrays {
            tensors.push((name.clone(), TensorView::new(*dtype, vec![data.len() / 8], data).expect("sizes match")));
        }
        let header = Header { format: FORMAT.into(), spec: self.spec.clone(), metadata };
        let json = serde_json::to_string(&header).map_err(|e| Error::Data(format!("metadata: {e}")))?;
        safetensors::serialize(tensors, Some(HashMap::from([(KEY.to_string(), json)])))
            .map_err(|e| Error::Data(format!("cannot serialise the checkpoint: {e}")))
    }

    /// Writes atomically to `path`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = self.to_bytes()?;
        crate::atomic::write_bytes(path, &bytes)
    }

    pub fn load(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        Checkpoint::from_bytes(&bytes).map_err(|e| match e {
            Error::Data(m) | Error::Shape(m) => Error::file(path, m),
            Error::Spec(e) => Error::file(path, format!("the checkpoint's network is invalid: {e}")),
            other => other,
        })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Checkpoint> {
        let corrupt = |e: safetensors::SafeTensorError| {
            Error::Data(crate::one_line(&format!(
                "not a readable safetensors checkpoint ({e}): the file is corrupt or truncated"
            )))
        };
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
        let json =
            meta.metadata().as_ref().and_then(|m| m.get(KEY)).ok_or_else(|| {
                Error::Data("a safetensors file, but not a wgnn checkpoint (no `wgnn` metadata)".into())
            })?;
        let header: Header = serde_json::from_str(json)
            .map_err(|e| Error::Data(crate::one_line(&format!("the checkpoint's metadata is unreadable: {e}"))))?;
        if header.format != FORMAT && header.format != FORMAT_1 {
            return Err(Error::Data(format!(
                "checkpoint format `{}`; this wgnn reads `{FORMAT}` and `{FORMAT_1}`: it was written by another wgnn version",
                header.format
            )));
        }
        header.spec.validate()?;
        let tensors = SafeTensors::deserialize(bytes).map_err(corrupt)?;
        let layout = ThetaLayout::new(&header.spec);
        // θ is sized from the spec: its tensors (4 bytes a value at least) must be in the file.
        if layout.len().saturating_mul(4) > bytes.len() {
            return Err(Error::Data(format!(
                "the network {} has {} parameters, more than the file's {} bytes can hold: it is truncated or corrupt",
                header.spec.describe(),
                layout.len(),
                bytes.len()
            )));
        }
        let mut theta = vec![0.0; layout.len()];
        for l in 0..layout.num_layers() {
            let (out, inp) = layout.shapes[l];
            for (name, shape, range) in [
                (weight_name(l), vec![out, inp], layout.weight_range(l)),
                (bias_name(l), vec![out], layout.bias_range(l)),
            ] {
                let t = tensors
                    .tensor(&name)
                    .map_err(|_| Error::Data(format!("tensor `{name}` is missing for {}", header.spec.describe())))?;
                if t.shape() != shape.as_slice() {
                    return Err(Error::Shape(format!(
                        "tensor `{name}` has shape {:?}, but the network {} needs {shape:?}",
                        t.shape(),
                        header.spec.describe()
                    )));
                }
                let dst = &mut theta[range];
                match t.dtype() {
                    Dtype::F64 => dst.iter_mut().zip(t.data().chunks_exact(8)).for_each(|(d, c)| {
                        *d = f64::from_le_bytes(c.try_into().expect("8 bytes"));
                    }),
                    Dtype::F32 => dst.iter_mut().zip(t.data().chunks_exact(4)).for_each(|(d, c)| {
                        *d = f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64;
                    }),
                    other => {
                        return Err(Error::Data(format!("tensor `{name}` holds {other:?}; expected F64 or F32")));
                    }
                }
            }
        }
        let mut metadata = header.metadata;
        if header.format == FORMAT_1 {
            if let Ok(t) = tensors.tensor(OPTIMIZER) {
                metadata.optimizer = serde_json::from_slice(t.data()).map_err(|e| {
                    Error::Data(crate::one_line(&format!("the checkpoint's optimizer state is unreadable: {e}")))
                })?;
            }
        } else {
            for value in [&mut metadata.history, &mut metadata.optimizer, &mut metadata.preprocessing] {
                restore_arrays(value, &tensors)?;
            }
            for value in metadata.extra.values_mut() {
                restore_arrays(value, &tensors)?;
            }
        }
        if let Some(i) = theta.iter().position(|v| !v.is_finite()) {
            return Err(Error::Data(format!("θ[{i}] is {}: the checkpoint holds non-finite weights", theta[i])));
        }
        Ok(Checkpoint { spec: header.spec, theta, metadata })
    }
}

/// `value` with every array of at least [`MIN_TENSOR`] numbers, all f64 (or all whole numbers
/// ≥ 0), replaced by `{"$tensor": NAME}`; (NAME, dtype, little-endian bytes) go to `out`. NAME
/// is `path` plus the JSON path, `/`-separated; `path` is left as it was.
fn skeleton(
    value: &serde_json::Value,
    path: &mut String,
    out: &mut Vec<(String, Dtype, Vec<u8>)>,
) -> serde_json::Value {
    use serde_json::Value;
    let len = path.len();
    let mut inner = |path: &mut String, key: &dyn std::fmt::Display, item: &Value| {
        path.push_str(&format!("/{key}"));
        let v = skeleton(item, path, out);
        path.truncate(len);
        v
    };
    match value {
        Value::Array(items) if items.len() >= MIN_TENSOR => {
            let bytes = if items.iter().all(|v| v.as_number().is_some_and(|n| n.is_f64())) {
                Some((Dtype::F64, items.iter().flat_map(|v| v.as_f64().expect("f64").to_le_bytes()).collect()))
            } else if items.iter().all(|v| v.is_u64()) {
                Some((Dtype::U64, items.iter().flat_map(|v| v.as_u64().expect("u64").to_le_bytes()).collect()))
            } else {
                None
            };
            match bytes {
                Some((dtype, data)) => {
                    let mut name = path.clone();
                    // Keys holding `/` could make two paths alike: keep names unique.
                    if out.iter().any(|(n, ..)| *n == name) {
                        name = format!("{name}#{}", out.len());
                    }
                    out.push((name.clone(), dtype, data));
                    serde_json::json!({ TENSOR_REF: name })
                }
                None => Value::Array(items.iter().enumerate().map(|(i, item)| inner(path, &i, item)).collect()),
            }
        }
        Value::Array(items) => Value::Array(items.iter().enumerate().map(|(i, item)| inner(path, &i, item)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, item)| (k.clone(), inner(path, k, item))).collect()),
        other => other.clone(),
    }
}

/// Puts back the arrays [`skeleton`] took out: each `{"$tensor": NAME}` becomes the
/// numbers of tensor NAME. A missing tensor, another dtype or a non-finite f64 is refused.
fn restore_arrays(value: &mut serde_json::Value, tensors: &SafeTensors<'_>) -> Result<()> {
    use serde_json::Value;
    match value {
        Value::Object(map) if map.len() == 1 && map.get(TENSOR_REF).is_some_and(Value::is_string) => {
            let name = map[TENSOR_REF].as_str().expect("a string").to_string();
            let t = tensors.tensor(&name).map_err(|_| {
                Error::Data(format!("the metadata names tensor `{name}`, which the file lacks: it is corrupt"))
            })?;
            if t.shape().len() != 1 {
                return Err(Error::Data(format!("tensor `{name}` has shape {:?}; expected one dimension", t.shape())));
            }
            let chunks = t.data().chunks_exact(8).map(|c| <[u8; 8]>::try_from(c).expect("8 bytes"));
            let items: Vec<Value> = match t.dtype() {
                Dtype::F64 => chunks
                    .map(|c| {
                        let v = f64::from_le_bytes(c);
                        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| {
                            Error::Data(format!("tensor `{name}` holds {v}: the metadata's numbers are finite"))
                        })
                    })
                    .collect::<Result<_>>()?,
                Dtype::U64 => chunks.map(|c| Value::from(u64::from_le_bytes(c))).collect(),
                other => {
                    return Err(Error::Data(format!("tensor `{name}` holds {other:?}; expected F64 or U64")));
                }
            };
            *value = Value::Array(items);
        }
        Value::Object(map) => map.values_mut().try_for_each(|v| restore_arrays(v, tensors))?,
        Value::Array(items) => items.iter_mut().try_for_each(|v| restore_arrays(v, tensors))?,
        _ => {}
    }
    Ok(())
}
