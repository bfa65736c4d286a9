//! Finding a GPU: enumerate adapters, pick one (a real GPU before a software one, or the one
//! the user named), and open a device with the adapter's own limits rather than WebGPU's
//! defaults (whose 128 MiB storage bindings are too small for MNIST).

use super::plumbing::{Op, read_back, staging, upload};
use crate::{Error, Result};

/// Which graphics API to look through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Api {
    /// Vulkan, Metal or DX12, whichever the platform has; GL only when none of those finds an adapter.
    #[default]
    Auto,
    /// Vulkan only.
    Vulkan,
    /// Metal only.
    Metal,
    /// DirectX 12 only.
    Dx12,
    /// OpenGL (ES) only.
    Gl,
}

impl Api {
    /// The wgpu backends this choice enumerates.
    pub fn backends(self) -> wgpu::Backends {
        match self {
            // GL is only a fallback (see `adapters`): probing it prints noise on headless machines.
            Api::Auto => wgpu::Backends::PRIMARY,
            Api::Vulkan => wgpu::Backends::VULKAN,
            Api::Metal => wgpu::Backends::METAL,
            Api::Dx12 => wgpu::Backends::DX12,
            Api::Gl => wgpu::Backends::GL,
        }
    }
}

/// How to choose an adapter.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Which graphics API to look through.
    pub api: Api,
    /// Case-insensitive substring of the adapter's name (also read from `WGNN_ADAPTER`).
    pub adapter: Option<String>,
    /// The matmul kernel; `None`: `WGNN_MATMUL` when set, else [`MatmulKernel::for_adapter`].
    pub matmul: Option<MatmulKernel>,
}

/// Which kernel computes the matrix products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// `shaders/matmul.wgsl`: tiles in workgroup memory, operands straight from storage
    /// buffers. The kernel for real GPUs.
    Tiled,
    /// `shaders/matmul_tex.wgsl`: operands packed into textures first. ~8× faster on software
    /// adapters such as lavapipe, where texel fetches are vectorised and buffer loads are not;
    /// products whose packed operands would exceed the texture size limit fall back to `Tiled`.
    Texture,
}

impl MatmulKernel {
    /// Textures on a software (CPU) adapter, the tiled kernel everywhere else.
    pub fn for_adapter(info: &wgpu::AdapterInfo) -> MatmulKernel {
        if info.device_type == wgpu::DeviceType::Cpu { MatmulKernel::Texture } else { MatmulKernel::Tiled }
    }

    /// The kernel the environment variable `WGNN_MATMUL` (`tex` or `tiled`) asks for, if any.
    pub fn from_env() -> Result<Option<MatmulKernel>> {
        match std::env::var("WGNN_MATMUL") {
            Err(_) => Ok(None),
            Ok(v) => match v.trim().to_lowercase().as_str() {
                "" => Ok(None),
                "tex" | "texture" => Ok(Some(MatmulKernel::Texture)),
                "tiled" => Ok(Some(MatmulKernel::Tiled)),
                other => Err(Error::Gpu(format!("WGNN_MATMUL={other}: expected `tex` or `tiled` (or leave it unset)"))),
            },
        }
    }

    /// The name `WGNN_MATMUL` and the benchmarks use: `tiled` or `texture`.
    pub fn name(self) -> &'static str {
        match self {
            MatmulKernel::Tiled => "tiled",
            MatmulKernel::Texture => "texture",
        }
    }
}

/// An open device and what it can do. A clone is a second handle on the same device (wgpu's
/// handles are reference-counted): backends built on clones share it and skip the adapter scan.
#[derive(Clone)]
pub struct Gpu {
    /// The open device.
    pub device: wgpu::Device,
    /// Its queue: uploads and submissions.
    pub queue: wgpu::Queue,
    /// The adapter: name, API, kind.
    pub info: wgpu::AdapterInfo,
    /// The adapter's own limits, with which the device was opened.
    pub limits: wgpu::Limits,
    /// The matmul kernel that `Kernels` built on this device will use.
    pub matmul: MatmulKernel,
}

/// On a headless machine (no XDG_RUNTIME_DIR) Mesa's Wayland probe prints "error:
/// XDG_RUNTIME_DIR is invalid" at every adapter scan, which reads as a failure in a test run
/// or a program that uses this library. Any existing directory silences it and nothing is
/// written there, so when the variable is unset it is pointed at the temporary directory,
/// once, before the first instance (the `wgnn` binary does the same at the top of `main`).
fn quiet_wayland_probe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
            // SAFETY: this runs before any graphics driver is loaded (every instance is made
            // here, after this), so no driver thread reads the environment; std's own readers
            // take std's environment lock.
            unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
        }
    });
}

fn instance(api: Api) -> wgpu::Instance {
    quiet_wayland_probe();
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = api.backends();
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see through `api`; for `Auto`, the primary APIs (Vulkan, Metal,
/// DX12) and GL only when those find nothing.
pub fn adapters(api: Api) -> Vec<wgpu::Adapter> {
    let found = pollster::block_on(instance(api).enumerate_adapters(api.backends()));
    if found.is_empty() && api == Api::Auto {
        return adapters(Api::Gl);
    }
    found
}

/// Higher is preferred: real GPUs first, software rasterisers last.
pub fn rank(kind: wgpu::DeviceType) -> u8 {
    match kind {
        wgpu::DeviceType::DiscreteGpu => 4,
        wgpu::DeviceType::IntegratedGpu => 3,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 1,
        wgpu::DeviceType::Cpu => 0,
    }
}

/// True for a hardware GPU (not a CPU rasteriser such as lavapipe or llvmpipe).
pub fn is_real_gpu(info: &wgpu::AdapterInfo) -> bool {
    rank(info.device_type) >= 2
}

/// A human name for an adapter kind, e.g. `discrete GPU`, `CPU (software)`.
pub fn kind_name(kind: wgpu::DeviceType) -> &'static str {
    match kind {
        wgpu::DeviceType::DiscreteGpu => "discrete GPU",
        wgpu::DeviceType::IntegratedGpu => "integrated GPU",
        wgpu::DeviceType::VirtualGpu => "virtual GPU",
        wgpu::DeviceType::Other => "other",
        wgpu::DeviceType::Cpu => "CPU (software)",
    }
}

const NO_ADAPTER_HINT: &str = "no GPU adapter found: install a Vulkan driver (on Debian/Ubuntu: apt-get install mesa-vulkan-drivers, which includes the lavapipe software driver), or use --backend cpu";

/// The adapter `options` select, best first; in a rank of an MPI job, the one its local rank
/// picks among the best kind ([`crate::dist::launcher_local_rank`] modulo their number).
pub fn choose_adapter(options: &GpuOptions) -> Result<wgpu::Adapter> {
    let wanted = options.adapter.clone().or_else(|| std::env::var("WGNN_ADAPTER").ok()).filter(|s| !s.is_empty());
    let mut found = adapters(options.api);
    if found.is_empty() {
        return Err(Error::Gpu(NO_ADAPTER_HINT.into()));
    }
    if let Some(name) = &wanted {
        let all: Vec<String> = found.iter().map(|a| a.get_info().name).collect();
        found.retain(|a| a.get_info().name.to_lowercase().contains(&name.to_lowercase()));
        if found.is_empty() {
            return Err(Error::Gpu(format!(
                "no adapter's name contains `{name}`; the adapters are: {} (see wgnn devices)",
                all.join(", ")
            )));
        }
    }
    found.sort_by_key(|a| std::cmp::Reverse(rank(a.get_info().device_type)));
    // One rank of an MPI job: its local rank picks among the adapters of the best kind, so
    // that the ranks on one machine spread over its GPUs (and share one when there is one).
    if let Some(local) = crate::dist::launcher_local_rank() {
        let best = rank(found[0].get_info().device_type);
        found.retain(|a| rank(a.get_info().device_type) == best);
        let i = local % found.len();
        return Ok(found.remove(i));
    }
    Ok(found.remove(0))
}

impl Gpu {
    /// Opens the adapter `options` select with its own limits.
    pub fn open(options: &GpuOptions) -> Result<Gpu> {
        let adapter = choose_adapter(options)?;
        let mut gpu = Gpu::from_adapter(&adapter)?;
        if let Some(kind) = options.matmul {
            gpu.matmul = kind;
        }
        Ok(gpu)
    }

    /// Opens `adapter` with its own limits; the matmul kernel is `WGNN_MATMUL`'s or the one
    /// [`MatmulKernel::for_adapter`] picks.
    pub fn from_adapter(adapter: &wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        let matmul = MatmulKernel::from_env()?.unwrap_or_else(|| MatmulKernel::for_adapter(&info));
        let limits = adapter.limits();
        let desc = wgpu::DeviceDescriptor {
            label: Some("wgnn"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&desc))
            .map_err(|e| Error::Gpu(format!("cannot open {} ({:?}): {e}", info.name, info.backend)))?;
        Ok(Gpu { device, queue, info, limits, matmul })
    }

    /// e.g. `NVIDIA H100 (Vulkan, discrete GPU)`.
    pub fn describe(&self) -> String {
        format!("{} ({:?}, {})", self.info.name, self.info.backend, kind_name(self.info.device_type))
    }
}

impl Gpu {
    /// A storage buffer holding `data` (also usable as a copy source and destination).
    pub fn upload_f32(&self, label: &str, data: &[f32]) -> wgpu::Buffer {
        upload(&self.device, label, bytemuck::cast_slice(data))
    }

    /// Records `ops` into one compute pass, submits, and waits for the device.
    pub fn run(&self, ops: &[Op]) -> Result<()> {
        let mut encoder = self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("run") });
        {
            let mut pass =
                encoder.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("run"), timestamp_writes: None });
            ops.iter().for_each(|op| op.record(&mut pass));
        }
        self.queue.submit([encoder.finish()]);
        self.device.poll(wgpu::PollType::wait_indefinitely()).map_err(|e| Error::Gpu(format!("waiting: {e}")))?;
        Ok(())
    }

    /// The first `len` floats of `buf`, copied back to the host.
    pub fn download_f32(&self, buf: &wgpu::Buffer, len: usize) -> Result<Vec<f32>> {
        let staging = staging(&self.device, "readback", len);
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
        encoder.copy_buffer_to_buffer(buf, 0, &staging, 0, (len * 4) as u64);
        self.queue.submit([encoder.finish()]);
        read_back(&self.device, &staging, len)
    }
}
