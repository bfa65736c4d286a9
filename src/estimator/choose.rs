//! Which backend computes a network: the one choice `wgnn --backend auto|cpu|gpu` and the
//! estimators ([`crate::estimator`]) share ([`build_backend`]). It prints nothing: a note
//! about `auto`'s choice comes back for the caller to show.

use serde::{Deserialize, Serialize};

use crate::gpu::GpuOptions;
use crate::model::NetSpec;
use crate::{Backend, CpuBackend, GpuBackend, Result};

/// Which backend computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// A hardware GPU when wgpu finds one and the GPU backend supports the network, otherwise
    /// the CPU backend (a software adapter such as lavapipe is slower than the CPU backend,
    /// so auto never picks it).
    #[default]
    Auto,
    /// The CPU backend (ndarray).
    Cpu,
    /// The GPU backend on the best adapter, even a software one.
    Gpu,
}

/// The precision of the CPU backend: f64 is the reference, f32 the fast path (the GPU
/// computes in f32 whatever this says).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// f32: what `wgnn train` and the estimators use.
    #[default]
    F32,
    /// f64: the reference.
    F64,
}

/// The CPU backend in `precision`.
pub fn cpu_backend(spec: NetSpec, precision: Precision) -> Result<Box<dyn Backend>> {
    Ok(sendable_cpu_backend(spec, precision)?)
}

/// [`cpu_backend`], as a backend that may move to another thread (what a trained
/// estimator keeps between predictions).
fn sendable_cpu_backend(spec: NetSpec, precision: Precision) -> Result<Box<dyn Backend + Send>> {
    Ok(match precision {
        Precision::F64 => Box::new(CpuBackend::<f64>::new(spec)?),
        Precision::F32 => Box::new(CpuBackend::<f32>::new(spec)?),
    })
}

/// The backend `choice` asks for, for `spec`, with the CPU in `precision` and the GPU found
/// through `gpu` (API, adapter name), and, for [`BackendChoice::Auto`], a note saying why it
/// chose the CPU (no adapter, only a software one, a network the GPU backend does not
/// support).
///
/// Errors: the network's own checks; for [`BackendChoice::Gpu`], no adapter or a network the
/// GPU backend refuses ([`crate::Error::Gpu`]).
pub fn build_backend(
    choice: BackendChoice,
    spec: NetSpec,
    precision: Precision,
    gpu: &GpuOptions,
) -> Result<(Box<dyn Backend>, Option<String>)> {
    let (backend, note) = build_sendable_backend(choice, spec, precision, gpu)?;
    Ok((backend, note))
}

/// [`build_backend`], as a backend that may move to another thread: a trained estimator
/// keeps the one it predicts with ([`crate::estimator::Trained`]) and stays `Send + Sync`.
///
/// Errors: as [`build_backend`].
pub fn build_sendable_backend(
    choice: BackendChoice,
    spec: NetSpec,
    precision: Precision,
    gpu: &GpuOptions,
) -> Result<(Box<dyn Backend + Send>, Option<String>)> {
    let cpu_backend = sendable_cpu_backend;
    match choice {
        BackendChoice::Cpu => Ok((cpu_backend(spec, precision)?, None)),
        BackendChoice::Gpu => Ok((Box::new(GpuBackend::new(spec, gpu)?), None)),
        BackendChoice::Auto if let Err(e) = GpuBackend::supports(&spec) => {
            // The refusal's own words without its advice (`--backend auto` follows it).
            let why = match e {
                crate::Error::Gpu(why) => why,
                other => other.to_string(),
            };
            let why = why.split_once(": use --backend cpu").map_or(why.as_str(), |(w, _)| w).to_string();
            Ok((cpu_backend(spec, precision)?, Some(format!("{why}: using the CPU backend"))))
        }
        BackendChoice::Auto => match crate::gpu::choose_adapter(gpu) {
            Ok(adapter) if crate::gpu::is_real_gpu(&adapter.get_info()) => {
                let device = crate::gpu::Gpu::from_adapter(&adapter)?;
                Ok((Box::new(GpuBackend::on(spec, device)?), None))
            }
            Ok(adapter) => {
                let note = format!(
                    "the only GPU adapter is {} (software), slower than the CPU backend: using the CPU (--backend gpu forces it)",
                    adapter.get_info().name
                );
                Ok((cpu_backend(spec, precision)?, Some(note)))
            }
            Err(_) => Ok((cpu_backend(spec, precision)?, Some("no GPU adapter found: using the CPU backend".into()))),
        },
    }
}
