//! Saving and loading a trained network: the weights as safetensors (one f64 tensor per W and
//! b, named `layers.{l}.weight` (out × in) and `layers.{l}.bias`, readable by any safetensors
//! tool), and the spec plus free-form training metadata (history, optimizer state,
//! preprocessing, seed) as JSON in the safetensors header under the key `wgnn`.
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
const FORMAT: &str = "wgnn-checkpoint-1";
/// The byte tensor holding the optimizer state as JSON.
const OPTIMIZER: &str = "optimizer_state_json";

/// Everything a checkpoint holds besides the weights. The values are JSON so that the
/// optimizer, data and training code own their own formats.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The wgnn version that wrote the file.
    #[serde(default)]
    pub wgnn_version: String,
    #[serde(default)]
    pub seed: Option<u64>,
    /// The training history (cost per iteration and so on).
    #[serde(default)]
    pub history: serde_json::Value,
    /// Optimizer state, for resuming.
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
        let mut metadata = self.metadata.clone();
        metadata.wgnn_version = env!("CARGO_PKG_VERSION").to_string();
        // The optimizer state (L-BFGS history pairs, Adam moments) can be far larger than the
        // 100 MB a safetensors header may hold: it travels as a byte tensor of JSON instead.
        let optimizer = std::mem::take(&mut metadata.optimizer);
        let optimizer_json = if optimizer.is_null() {
            None
        } else {
            Some(serde_json::to_vec(&optimizer).map_err(|e| Error::Data(format!("optimizer state: {e}")))?)
        };
        if let Some(json) = &optimizer_json {
            tensors.push((
                OPTIMIZER.to_string(),
                TensorView::new(Dtype::U8, vec![json.len()], json).expect("sizes match"),
            ));
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
        if header.format != FORMAT {
            return Err(Error::Data(format!("checkpoint format `{}`; this wgnn reads `{FORMAT}`", header.format)));
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
        if let Ok(t) = tensors.tensor(OPTIMIZER) {
            metadata.optimizer = serde_json::from_slice(t.data()).map_err(|e| {
                Error::Data(crate::one_line(&format!("the checkpoint's optimizer state is unreadable: {e}")))
            })?;
        }
        if let Some(i) = theta.iter().position(|v| !v.is_finite()) {
            return Err(Error::Data(format!("θ[{i}] is {}: the checkpoint holds non-finite weights", theta[i])));
        }
        Ok(Checkpoint { spec: header.spec, theta, metadata })
    }
}
