//! `wgnn devices`: every adapter wgpu can see, and what `--backend auto` would pick.

use clap::Args;

use wgnn::gpu::{self, Api};

#[derive(Args, Debug)]
pub struct DevicesArgs {}

pub fn run(_args: DevicesArgs) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for api in [Api::Vulkan, Api::Metal, Api::Dx12, Api::Gl] {
        all.extend(gpu::adapters(api));
    }
    if all.is_empty() {
        anyhow::bail!(
            "no GPU adapter found: install a Vulkan driver (on Debian/Ubuntu: apt-get install mesa-vulkan-drivers); --backend cpu works without one"
        );
    }
    for (i, adapter) in all.iter().enumerate() {
        let info = adapter.get_info();
        let l = adapter.limits();
        println!("[{i}] {}", info.name);
        println!(
            "    api {:?}, {}, driver {} {}",
            info.backend,
            gpu::kind_name(info.device_type),
            info.driver,
            info.driver_info
        );
        println!(
            "    max buffer {} MiB, max storage binding {} MiB, workgroup storage {} KiB, invocations per workgroup {}, workgroups per dimension {}",
            l.max_buffer_size >> 20,
            l.max_storage_buffer_binding_size >> 20,
            l.max_compute_workgroup_storage_size >> 10,
            l.max_compute_invocations_per_workgroup,
            l.max_compute_workgroups_per_dimension
        );
    }
    let best = gpu::choose_adapter(&gpu::GpuOptions::default())?;
    let info = best.get_info();
    if gpu::is_real_gpu(&info) {
        println!("--backend auto uses the GPU backend on {}", info.name);
    } else {
        println!("--backend auto uses the CPU backend: {} is a software adapter (--backend gpu forces it)", info.name);
    }
    Ok(())
}
