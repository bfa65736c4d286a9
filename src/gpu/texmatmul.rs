//! The texture-fed matmul for software adapters (lavapipe): each product packs its operands
//! into rgba32float textures (`shaders/pack_tex.wgsl`) and multiplies them with texel fetches
//! (`shaders/matmul_tex.wgsl`), three dispatches recorded as one [`Op`]. Why textures: on
//! llvmpipe buffer loads run lane by lane with a bounds check each while texel fetches are
//! vectorised (`../shared/notes/lavapipe.md`; the rates are in BENCHMARKS.md).
//!
//! It must not decide when it is used (`MatmulKernel` in device.rs does, and
//! [`super::kernels::Kernels::matmul`] falls back to the tiled kernel for products whose
//! textures would exceed the device's texture size limit), and it must not have epilogues of
//! its own: `shaders/matmul_epilogue.wgsl` is shared with the tiled kernel.
//!
//! Textures are pooled by (operand, size rounded up to [`POOL_GRAIN`] texels): operations
//! recorded later may overwrite a texture an earlier one used, which is safe because every
//! operation packs its operands right before its multiply and the device runs dispatches in
//! recorded order. So a cached plan allocates its textures once, when it is built, and the
//! chunks of a large batch share them. The pool only grows: batches of many different sizes
//! each add textures (sizes within 64 rows of each other share one).

use std::collections::HashMap;
use std::sync::Mutex;

use bytemuck::{Pod, Zeroable};

use super::params::MatmulParams;
use super::plumbing::{Op, buffer, entry, pipeline, uniform};

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const EPILOGUE: &str = include_str!("../../shaders/matmul_epilogue.wgsl");
const PACK: &str = include_str!("../../shaders/pack_tex.wgsl");
const MATMUL_TEX: &str = include_str!("../../shaders/matmul_tex.wgsl");

/// Invocations of a matmul workgroup, side by side along the columns (workgroup_size in
/// matmul_tex.wgsl); each covers 4 columns.
const GROUP: u32 = 8;
/// Rows of C per invocation (ROWS in matmul_tex.wgsl): 8 × 4 blocks measured faster than
/// 4 × 4 on lavapipe (BENCHMARKS.md).
const ROWS: u32 = 8;
/// Texture sides are rounded up to a multiple of this, so that products of nearly equal
/// shapes share pooled textures.
pub const POOL_GRAIN: u32 = 64;

/// The parameter block of pack_tex.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
struct PackParams {
    rows: u32,
    cols: u32,
    off: u32,
    rs: u32,
    cs: u32,
    width: u32,
    height: u32,
    _pad: u32,
}

/// A matrix operand as [`super::kernels::Operand`] addresses it, with its logical shape.
pub(super) struct Packed<'a> {
    pub buf: &'a wgpu::Buffer,
    pub off: u32,
    pub rs: u32,
    pub cs: u32,
    pub rows: u32,
    pub cols: u32,
}

pub(super) struct TexMatmul {
    pack_layout: wgpu::BindGroupLayout,
    matmul_layout: wgpu::BindGroupLayout,
    pack: wgpu::ComputePipeline,
    matmul: wgpu::ComputePipeline,
    max_side: u32,
    /// The largest texture, in bytes, this kernel will make (the device's largest buffer).
    max_bytes: u64,
    pool: Mutex<HashMap<(u8, u32, u32), wgpu::Texture>>,
}

impl TexMatmul {
    /// Compiles the pack and multiply kernels for a device with `limits`.
    pub fn new(device: &wgpu::Device, limits: &wgpu::Limits) -> TexMatmul {
        let (max_side, max_bytes) = (limits.max_texture_dimension_2d, limits.max_buffer_size);
        let texture = wgpu::BindingType::Texture {
            sample_type: wgpu::TextureSampleType::Float { filterable: false },
            view_dimension: wgpu::TextureViewDimension::D2,
            multisampled: false,
        };
        let storage_texture = wgpu::BindingType::StorageTexture {
            access: wgpu::StorageTextureAccess::WriteOnly,
            format: wgpu::TextureFormat::Rgba32Float,
            view_dimension: wgpu::TextureViewDimension::D2,
        };
        let pack_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("pack"),
            entries: &[entry(0, buffer(Some(true))), entry(1, storage_texture), entry(2, buffer(None))],
        });
        let matmul_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("matmul_tex"),
            entries: &[
                entry(0, texture),
                entry(1, texture),
                entry(2, buffer(Some(false))),
                entry(3, buffer(Some(true))),
                entry(4, buffer(Some(true))),
                entry(5, buffer(None)),
            ],
        });
        let pack = pipeline(device, &pack_layout, PACK, "pack");
        let source = format!("{COMMON}\n{EPILOGUE}\n{MATMUL_TEX}");
        let matmul = pipeline(device, &matmul_layout, &source, "matmul_tex");
        let pool = Mutex::new(HashMap::new());
        TexMatmul { pack_layout, matmul_layout, pack, matmul, max_side, max_bytes, pool }
    }

    /// The texel extents (width, height) of the packed A and B of an m × n × k product: A is m
    /// rows (padded to whole row blocks) of k/4 texels, B is k rows (padded to a multiple of 4)
    /// of n/4 texels (padded to whole workgroups).
    /// In u64, so that no shape overflows before [`TexMatmul::fits`] refuses it.
    fn extents((m, n, k): (u32, u32, u32)) -> ([u64; 2], [u64; 2]) {
        let (m, n, k, rows, group) = (m as u64, n as u64, k as u64, ROWS as u64, GROUP as u64);
        let depth = k.div_ceil(4);
        ([depth, m.div_ceil(rows) * rows], [n.div_ceil(4).div_ceil(group) * group, 4 * depth])
    }

    /// Whether both packed operands fit in textures of this device: sides within
    /// `max_texture_dimension_2d`, bytes within `max_buffer_size` (a 16384² rgba32float texture
    /// would be 4 GiB; the tiled kernel needs no copy at all).
    pub fn fits(&self, (m, n, k): (u32, u32, u32)) -> bool {
        if m == 0 || n == 0 || k == 0 {
            return false;
        }
        let (a, b) = Self::extents((m, n, k));
        let bytes = |e: [u64; 2]| e.iter().map(|side| side.next_multiple_of(POOL_GRAIN as u64)).product::<u64>() * 16;
        a.iter().chain(&b).all(|&side| side <= self.max_side as u64) && bytes(a).max(bytes(b)) <= self.max_bytes
    }

    /// A pooled texture of at least `extent` texels for operand `slot` (0: A, 1: B).
    fn texture(&self, device: &wgpu::Device, slot: u8, extent: [u32; 2]) -> wgpu::Texture {
        let [w, h] = extent.map(|side| side.next_multiple_of(POOL_GRAIN).min(self.max_side));
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.entry((slot, w, h))
            .or_insert_with(|| {
                device.create_texture(&wgpu::TextureDescriptor {
                    label: Some(if slot == 0 { "packed A" } else { "packed B" }),
                    size: wgpu::Extent3d { width: w, height: h, depth_or_array_layers: 1 },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: wgpu::TextureFormat::Rgba32Float,
                    usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::TEXTURE_BINDING,
                    view_formats: &[],
                })
            })
            .clone()
    }

    /// The dispatch packing `operand` into `texture`'s top-left `extent` texels.
    fn pack_step(
        &self,
        device: &wgpu::Device,
        operand: &Packed,
        view: &wgpu::TextureView,
        extent: [u32; 2],
    ) -> (wgpu::ComputePipeline, wgpu::BindGroup, [u32; 3]) {
        let p = PackParams {
            rows: operand.rows,
            cols: operand.cols,
            off: operand.off,
            rs: operand.rs,
            cs: operand.cs,
            width: extent[0],
            height: extent[1],
            _pad: 0,
        };
        let params = uniform(device, bytemuck::bytes_of(&p));
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("pack"),
            layout: &self.pack_layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: operand.buf.as_entire_binding() },
                wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::TextureView(view) },
                wgpu::BindGroupEntry { binding: 2, resource: params.as_entire_binding() },
            ],
        });
        (self.pack.clone(), bind_group, [extent[0].div_ceil(8), extent[1].div_ceil(8), 1])
    }

    /// C = A B then the epilogue `params` describes (its m, n, k and epilogue fields; the
    /// operand fields are unused): pack A, pack B, multiply. `buffers` are C, aux and aux2.
    pub fn matmul(
        &self,
        device: &wgpu::Device,
        a: Packed,
        b: Packed,
        buffers: [&wgpu::Buffer; 3],
        params: &MatmulParams,
    ) -> Op {
        let dims = (params.m, params.n, params.k);
        let (extent_a, extent_b) = Self::extents(dims);
        // fits() has checked that every side is within max_texture_dimension_2d (a u32).
        let (extent_a, extent_b) = (extent_a.map(|v| v as u32), extent_b.map(|v| v as u32));
        let (strips, blocks) = (extent_b[0] / GROUP, extent_a[1] / ROWS);
        let area = |e: [u32; 2]| e[0] as u64 * e[1] as u64;
        // Walk the grid so that the larger operand streams through the cache once and the
        // smaller one is reread: rows first (a strip of B stays hot while blocks of A stream
        // past) unless A is the larger. Measured on lavapipe (BENCHMARKS.md): rows first
        // speeds up the weight gradient (B = the data) by ~25% and 1024³ by ~35%, and slows
        // the forward and input-delta products (A = the data) by ~5%.
        let rows_first = area(extent_b) >= area(extent_a);
        let params = &MatmulParams { rows_first: rows_first as u32, ..*params };
        let view = |t: &wgpu::Texture| t.create_view(&wgpu::TextureViewDescriptor::default());
        let view_a = view(&self.texture(device, 0, extent_a));
        let view_b = view(&self.texture(device, 1, extent_b));
        let uniform = uniform(device, bytemuck::bytes_of(params));
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("matmul_tex"),
            layout: &self.matmul_layout,
            entries: &[
                wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::TextureView(&view_a) },
                wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::TextureView(&view_b) },
                wgpu::BindGroupEntry { binding: 2, resource: buffers[0].as_entire_binding() },
                wgpu::BindGroupEntry { binding: 3, resource: buffers[1].as_entire_binding() },
                wgpu::BindGroupEntry { binding: 4, resource: buffers[2].as_entire_binding() },
                wgpu::BindGroupEntry { binding: 5, resource: uniform.as_entire_binding() },
            ],
        });
        let groups = if rows_first { [blocks, strips, 1] } else { [strips, blocks, 1] };
        let multiply = (self.matmul.clone(), bind_group, groups);
        Op::steps(vec![
            self.pack_step(device, &a, &view_a, extent_a),
            self.pack_step(device, &b, &view_b, extent_b),
            multiply,
        ])
    }
}
