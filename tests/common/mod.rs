//! Networks and data shared by the test suites, so every backend is tested on the same cases.
#![allow(dead_code, unused_macros)]

use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};
use rand_distr::{Distribution, StandardNormal};
use wgnn::model::{Activation, Init, NetSpec, Output, Sparsity};
use wgnn::{Backend, Targets};

pub mod sequence;

/// One test per matmul kernel for each function named: `tiled::f` and `texture::f` call
/// `f(MatmulKernel::Tiled)` and `f(MatmulKernel::Texture)`.
macro_rules! for_each_matmul_kernel {
    ($($name:ident),* $(,)?) => {
        mod tiled {
            $(#[test] fn $name() { super::$name(wgnn::gpu::MatmulKernel::Tiled) })*
        }
        mod texture {
            $(#[test] fn $name() { super::$name(wgnn::gpu::MatmulKernel::Texture) })*
        }
    };
}

/// A network, a θ and a batch to evaluate it on.
pub struct Case {
    pub name: &'static str,
    pub spec: NetSpec,
    pub theta: Vec<f64>,
    pub x: Array2<f64>,
    pub labels: Option<Vec<usize>>,
    pub values: Option<Array2<f64>>,
}

impl Case {
    pub fn targets(&self) -> Targets<'_> {
        match (&self.labels, &self.values) {
            (Some(l), _) => Targets::Labels(l),
            (_, Some(v)) => Targets::Values(v.into()),
            _ => Targets::Inputs,
        }
    }

    pub fn load(&self, backend: &mut dyn Backend) {
        backend.set_data((&self.x).into(), self.targets()).expect("case data fits its network");
    }
}

pub fn uniform(rows: usize, cols: usize, lo: f64, hi: f64, rng: &mut StdRng) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(lo..hi))
}

pub fn normal(rows: usize, cols: usize, rng: &mut StdRng) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || StandardNormal.sample(rng))
}

/// Labels 0..k with every class present (k ≤ m).
pub fn labels(m: usize, k: usize, rng: &mut StdRng) -> Vec<usize> {
    (0..m).map(|i| if i < k { i } else { rng.random_range(0..k) }).collect()
}

/// The networks the gradient is checked on (issue 2): a sparse autoencoder 64-25-64, softmax
/// regression, a 3-hidden-layer MLP with tanh and leaky ReLU and a softmax output, and a
/// regression net with an identity output.
pub fn gradcheck_cases() -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(2);
    let sae = NetSpec::sparse_autoencoder(64, 25, 1e-4, Sparsity { target: 0.01, weight: 3.0 }).unwrap();
    let softmax = NetSpec::softmax_regression(20, 5, 1e-4).unwrap();
    let mlp = NetSpec {
        layers: vec![10, 12, 9, 7, 4],
        hidden_activations: vec![Activation::Tanh, Activation::LEAKY_RELU, Activation::LEAKY_RELU],
        output: Output::Softmax,
        weight_decay: 1e-3,
        sparsity: None,
        net: None,
    };
    // The linear decoder (UFLDL): sigmoid hidden units with sparsity, identity output, for
    // real-valued inputs such as whitened colour patches.
    let linear_decoder = NetSpec::new(&[48, 20, 48], Activation::Sigmoid, Output::SquaredError(Activation::Identity))
        .unwrap()
        .with_weight_decay(3e-3)
        .unwrap()
        .with_sparsity(Some(Sparsity { target: 0.035, weight: 5.0 }))
        .unwrap();
    let regression = NetSpec::new(&[6, 8, 3], Activation::Sigmoid, Output::SquaredError(Activation::Identity))
        .unwrap()
        .with_weight_decay(3e-3)
        .unwrap();
    vec![
        Case {
            name: "sparse autoencoder 64-25-64",
            theta: Init::Uniform.theta(&sae, 1),
            spec: sae,
            x: uniform(10, 64, 0.0, 1.0, &mut rng),
            labels: None,
            values: None,
        },
        Case {
            name: "softmax regression 20→5",
            theta: Init::Normal { epsilon: 0.1 }.theta(&softmax, 2),
            spec: softmax,
            x: uniform(12, 20, 0.0, 1.0, &mut rng),
            labels: Some(labels(12, 5, &mut rng)),
            values: None,
        },
        Case {
            name: "MLP 10-12-9-7-4 tanh/leaky-ReLU/leaky-ReLU → softmax",
            theta: Init::Uniform.theta(&mlp, 3),
            spec: mlp,
            x: uniform(9, 10, -1.0, 1.0, &mut rng),
            labels: Some(labels(9, 4, &mut rng)),
            values: None,
        },
        Case {
            name: "linear decoder 48-20-48 sigmoid → identity, sparsity",
            theta: Init::Uniform.theta(&linear_decoder, 5),
            spec: linear_decoder,
            // As UFLDL's own check of the linear decoder: rand(visible, m).
            x: uniform(12, 48, 0.0, 1.0, &mut rng),
            labels: None,
            values: None,
        },
        Case {
            name: "regression 6-8-3 sigmoid → identity",
            theta: Init::Uniform.theta(&regression, 4),
            spec: regression,
            x: normal(7, 6, &mut rng),
            labels: None,
            values: Some(normal(7, 3, &mut rng)),
        },
    ]
}

/// The real data sets (`../shared/data`), from `WGNN_DATA_DIR`. Unset, the test says so
/// loudly and fails: a test that needs data never passes silently without it.
pub fn data_dir() -> std::path::PathBuf {
    let Some(dir) = std::env::var_os("WGNN_DATA_DIR") else {
        let message = "WGNN_DATA_DIR is not set: this test reads the real data sets; \
                       run it as `WGNN_DATA_DIR=../shared/data cargo test` from the project's root";
        eprintln!("\n*** {message} ***\n");
        panic!("{message}");
    };
    let dir = std::path::PathBuf::from(dir);
    if !dir.is_dir() {
        let message = format!(
            "WGNN_DATA_DIR={} is not a folder: set WGNN_DATA_DIR=../shared/data (relative to the project's root)",
            dir.display()
        );
        eprintln!("\n*** {message} ***\n");
        panic!("{message}");
    }
    dir
}

/// ‖got − reference‖ / ‖reference‖ (the absolute norm when the reference is zero).
pub fn relative_error(got: &[f64], reference: &[f64]) -> f64 {
    assert_eq!(got.len(), reference.len());
    let diff: f64 = got.iter().zip(reference).map(|(x, y)| (x - y).powi(2)).sum();
    let norm: f64 = reference.iter().map(|y| y * y).sum();
    if norm == 0.0 { diff.sqrt() } else { (diff / norm).sqrt() }
}

/// A version-1 `.npy` file: `descr` (e.g. `<f8`), the shape as Python writes it, then `data`
/// as given (which need not match the shape: that is the point).
pub fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((header.len() as u16).to_le_bytes());
    b.extend(header.as_bytes());
    b.extend(data);
    b
}

/// The backends every contract test runs on: the CPU in f64 (the reference) and f32 (the fast
/// path), and the GPU with each matmul kernel (outputs poisoned with NaN before every run).
#[derive(Clone, Copy, Debug)]
pub enum BackendKind {
    CpuF64,
    CpuF32,
    GpuTiled,
    GpuTexture,
}

impl BackendKind {
    pub fn make(self, spec: &NetSpec) -> Box<dyn Backend> {
        use wgnn::gpu::{GpuBackend, GpuOptions, MatmulKernel};
        let gpu = |kernel| {
            let options = GpuOptions { matmul: Some(kernel), ..Default::default() };
            let mut g = GpuBackend::new(spec.clone(), &options)
                .expect("a GPU adapter (lavapipe in CI: apt-get install mesa-vulkan-drivers)");
            g.set_poison(true);
            Box::new(g) as Box<dyn Backend>
        };
        match self {
            BackendKind::CpuF64 => Box::new(wgnn::CpuBackend::<f64>::new(spec.clone()).unwrap()),
            BackendKind::CpuF32 => Box::new(wgnn::CpuBackend::<f32>::new(spec.clone()).unwrap()),
            BackendKind::GpuTiled => gpu(MatmulKernel::Tiled),
            BackendKind::GpuTexture => gpu(MatmulKernel::Texture),
        }
    }
}

/// One test per backend for each function named (DESIGN.md's `for_each_backend!`):
/// `cpu_f64::f`, `cpu_f32::f`, `gpu_tiled::f` and `gpu_texture::f` call `f(BackendKind::…)`.
macro_rules! for_each_backend {
    ($($name:ident),* $(,)?) => {
        mod cpu_f64 {
            $(#[test] fn $name() { super::$name(crate::common::BackendKind::CpuF64) })*
        }
        mod cpu_f32 {
            $(#[test] fn $name() { super::$name(crate::common::BackendKind::CpuF32) })*
        }
        mod gpu_tiled {
            $(#[test] fn $name() { super::$name(crate::common::BackendKind::GpuTiled) })*
        }
        mod gpu_texture {
            $(#[test] fn $name() { super::$name(crate::common::BackendKind::GpuTexture) })*
        }
    };
}

/// The CPU backend's f32 fast path against its f64 reference on one network: `load` gives a
/// backend its data; the f64 cost alone equals its cost with gradient; f32's cost is within
/// 1e-5 and its gradient within `grad_tolerance` (relative) of f64's; and f32's bits are the
/// same with 1, 2 and 3 threads.
pub fn f32_matches_f64_with_the_same_bits_on_any_threads(
    name: &str,
    spec: &NetSpec,
    theta: &[f64],
    load: &(dyn Fn(&mut dyn Backend) + Sync),
    grad_tolerance: f64,
) {
    use wgnn::{Batch, CpuBackend};
    let mut f64_cpu = CpuBackend::<f64>::new(spec.clone()).unwrap();
    load(&mut f64_cpu);
    let mut g64 = vec![0.0; theta.len()];
    let c64 = f64_cpu.cost_and_grad(theta, Batch::All, &mut g64).unwrap();
    assert_eq!(f64_cpu.cost(theta, Batch::All).unwrap(), c64, "{name}: cost = cost-with-gradient");

    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut cpu = CpuBackend::<f32>::new(spec.clone()).unwrap();
            load(&mut cpu);
            let mut g = vec![0.0; theta.len()];
            let c = cpu.cost_and_grad(theta, Batch::All, &mut g).unwrap();
            (c, g)
        })
    };
    let (c32, g32) = run(1);
    let cost_gap = (c32.total() - c64.total()).abs() / c64.total().abs();
    assert!(cost_gap < 1e-5, "{name}: f32 cost {} vs f64 {} ({cost_gap:e})", c32.total(), c64.total());
    let grad_gap = relative_error(&g32, &g64);
    assert!(grad_gap < grad_tolerance, "{name}: f32 gradient differs from f64 by {grad_gap:e}");
    for threads in [2, 3] {
        let (c, g) = run(threads);
        assert_eq!(c.total().to_bits(), c32.total().to_bits(), "{name}: cost bits with {threads} threads");
        assert!(
            g.iter().zip(&g32).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name}: gradient bits, {threads} threads"
        );
    }
}
