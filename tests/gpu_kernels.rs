//! Each WGSL kernel against its CPU twin (llm.c style): fresh random inputs, shapes that are
//! not multiples of the tile, every transpose and epilogue, outputs poisoned with NaN so an
//! unwritten element fails. ‖gpu − cpu‖/‖cpu‖ < 1e-4 (f32), never NaN. The matmul tests run
//! once per matmul kernel (tiled and texture-fed), whatever the adapter.

#[macro_use]
mod common;

use ndarray::{Array1, Array2};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::cpu::net::{activate, derivative_from_value};
use wgnn::gpu::kernels::{Epilogue, Kernels, Operand, Small, SmallParams, act_code};
use wgnn::gpu::{Gpu, GpuOptions, MatmulKernel};
use wgnn::model::Activation;

const TOLERANCE: f64 = 1e-4;

fn open_with(matmul: Option<MatmulKernel>) -> (Gpu, Kernels) {
    let options = GpuOptions { matmul, ..Default::default() };
    let gpu = Gpu::open(&options).expect("a GPU adapter (lavapipe in CI: apt-get install mesa-vulkan-drivers)");
    let k = Kernels::new(&gpu);
    (gpu, k)
}

fn open() -> (Gpu, Kernels) {
    open_with(None)
}

for_each_matmul_kernel!(
    matmul_every_transpose_and_awkward_shape,
    matmul_epilogues_apply_bias_activation_and_derivative,
    matmul_reads_offset_and_strided_operands_and_writes_only_its_block,
    matmul_ops_recorded_together_do_not_disturb_each_other,
    matmul_beyond_the_texture_limit_still_agrees,
);

/// Uploads `a` (m × k) and `b` (k × n), each stored as given or transposed, and returns them
/// with operands that read them back as `a` and `b`.
fn operands(gpu: &Gpu, a: &Array2<f64>, b: &Array2<f64>, ta: bool, tb: bool) -> (wgpu::Buffer, wgpu::Buffer, [u32; 2]) {
    let (a_stored, a_cols) = if ta { (a.t().to_owned(), a.nrows()) } else { (a.clone(), a.ncols()) };
    let (b_stored, b_cols) = if tb { (b.t().to_owned(), b.nrows()) } else { (b.clone(), b.ncols()) };
    let a_buf = gpu.upload_f32("a", &f32s(&a_stored.as_standard_layout().to_owned()));
    let b_buf = gpu.upload_f32("b", &f32s(&b_stored.as_standard_layout().to_owned()));
    (a_buf, b_buf, [a_cols as u32, b_cols as u32])
}

fn operand(buf: &wgpu::Buffer, cols: u32, transposed: bool) -> Operand<'_> {
    let op = Operand::row_major(buf, 0, cols);
    if transposed { op.t() } else { op }
}

fn random(rows: usize, cols: usize, lo: f64, hi: f64, rng: &mut StdRng) -> Array2<f64> {
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(lo..hi))
}

fn f32s(a: &Array2<f64>) -> Vec<f32> {
    a.iter().map(|&v| v as f32).collect()
}

fn rel(gpu: &[f32], cpu: &[f64]) -> f64 {
    assert_eq!(gpu.len(), cpu.len());
    assert!(gpu.iter().all(|v| v.is_finite()), "unwritten (NaN) or non-finite GPU output");
    let d: f64 = gpu.iter().zip(cpu).map(|(&g, &c)| (g as f64 - c).powi(2)).sum();
    let n: f64 = cpu.iter().map(|c| c * c).sum();
    if n == 0.0 { d.sqrt() } else { (d / n).sqrt() }
}

fn poisoned(gpu: &Gpu, len: usize) -> wgpu::Buffer {
    gpu.upload_f32("poisoned output", &vec![f32::NAN; len])
}

const ACTIVATIONS: [Activation; 5] = [
    Activation::Sigmoid,
    Activation::Tanh,
    Activation::Relu,
    Activation::LeakyRelu { alpha: 0.1 },
    Activation::Identity,
];

fn matmul_every_transpose_and_awkward_shape(kernel: MatmulKernel) {
    let (gpu, k) = open_with(Some(kernel));
    let mut rng = StdRng::seed_from_u64(1);
    let shapes = [
        (1, 1, 1),
        (7, 3, 65),
        (65, 63, 64),
        (64, 257, 7),
        (130, 1, 129),
        (1, 65, 300),
        (3, 784, 63),
        (257, 7, 784),
        (784, 65, 3),
        (9, 33, 5),
    ];
    for (m, n, kk) in shapes {
        assert_eq!(k.matmul_kernel((m as u32, n as u32, kk as u32)), kernel, "{m}×{n}×{kk} took the other kernel");
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = random(m, kk, -1.0, 1.0, &mut rng);
            let b = random(kk, n, -1.0, 1.0, &mut rng);
            // Store each operand as given or transposed; the kernel reads it through strides.
            let (a_buf, b_buf, [a_cols, b_cols]) = operands(&gpu, &a, &b, ta, tb);
            let (op_a, op_b) = (operand(&a_buf, a_cols, ta), operand(&b_buf, b_cols, tb));
            let c0 = random(m, n, -1.0, 1.0, &mut rng);
            let w = random(m, n, -1.0, 1.0, &mut rng);
            let w_buf = gpu.upload_f32("w", &f32s(&w));

            // Plain: c = 0.5·AB + c0 + 0.3·w (the weight-gradient epilogue).
            let c_buf = gpu.upload_f32("c", &f32s(&c0));
            let epi = Epilogue::Plain { alpha: 0.5, accumulate: true, decay: Some((0.3, &w_buf, 0)) };
            let op = k.matmul(&gpu.device, op_a, op_b, (&c_buf, 0, n as u32), (m as u32, n as u32, kk as u32), epi);
            gpu.run(&[op]).unwrap();
            let expected = a.dot(&b) * 0.5 + &c0 + &(&w * 0.3);
            let d = rel(&gpu.download_f32(&c_buf, m * n).unwrap(), expected.as_slice().unwrap());
            assert!(d < TOLERANCE, "plain {m}×{n}×{kk} ta={ta} tb={tb}: {d:e}");

            // Plain without accumulation into a poisoned output.
            let c_buf = poisoned(&gpu, m * n);
            let epi = Epilogue::Plain { alpha: 1.0, accumulate: false, decay: None };
            let op = k.matmul(&gpu.device, op_a, op_b, (&c_buf, 0, n as u32), (m as u32, n as u32, kk as u32), epi);
            gpu.run(&[op]).unwrap();
            let d = rel(&gpu.download_f32(&c_buf, m * n).unwrap(), a.dot(&b).as_slice().unwrap());
            assert!(d < TOLERANCE, "product {m}×{n}×{kk} ta={ta} tb={tb}: {d:e}");
        }
    }
}

fn matmul_epilogues_apply_bias_activation_and_derivative(kernel: MatmulKernel) {
    let (gpu, k) = open_with(Some(kernel));
    let mut rng = StdRng::seed_from_u64(2);
    let (m, n, kk) = (33, 65, 17);
    let a = random(m, kk, -1.0, 1.0, &mut rng);
    let b = random(kk, n, -1.0, 1.0, &mut rng);
    let bias = random(1, n, -0.5, 0.5, &mut rng);
    let kl = random(1, n, -0.5, 0.5, &mut rng);
    let a_prev = random(m, n, 0.05, 0.95, &mut rng);
    let (a_buf, b_buf) = (gpu.upload_f32("a", &f32s(&a)), gpu.upload_f32("b", &f32s(&b)));
    // Offsets inside a larger buffer, as the bias sits inside θ.
    let mut packed = vec![9.0f32; 5];
    packed.extend(f32s(&bias));
    packed.extend(f32s(&kl));
    let packed_buf = gpu.upload_f32("bias and kl", &packed);
    let prev_buf = gpu.upload_f32("a_prev", &f32s(&a_prev));
    let z = a.dot(&b);
    // A·B with the epilogue `epi`, into a poisoned output, read back.
    let product_with = |epi: Epilogue| -> Vec<f32> {
        let c_buf = poisoned(&gpu, m * n);
        let op = k.matmul(
            &gpu.device,
            Operand::row_major(&a_buf, 0, kk as u32),
            Operand::row_major(&b_buf, 0, n as u32),
            (&c_buf, 0, n as u32),
            (m as u32, n as u32, kk as u32),
            epi,
        );
        gpu.run(&[op]).unwrap();
        gpu.download_f32(&c_buf, m * n).unwrap()
    };
    for act in ACTIVATIONS {
        let got = product_with(Epilogue::BiasAct { bias: (&packed_buf, 5), act });
        let expected = Array2::from_shape_fn((m, n), |(i, j)| activate(act, z[[i, j]] + bias[[0, j]]));
        let d = rel(&got, expected.as_slice().unwrap());
        assert!(d < TOLERANCE, "bias+{act:?}: {d:e}");

        for with_kl in [false, true] {
            let kl_arg = with_kl.then_some((&packed_buf, 5 + n as u32));
            let got =
                product_with(Epilogue::Delta { kl: kl_arg, a_prev: Operand::row_major(&prev_buf, 0, n as u32), act });
            let expected = Array2::from_shape_fn((m, n), |(i, j)| {
                let extra = if with_kl { kl[[0, j]] } else { 0.0 };
                (z[[i, j]] + extra) * derivative_from_value(act, a_prev[[i, j]])
            });
            let d = rel(&got, expected.as_slice().unwrap());
            assert!(d < TOLERANCE, "delta {act:?} kl={with_kl}: {d:e}");
        }
    }
    // f′ given (a sigmoid layer under sparsity): c = (acc + kl) · f′, with f′ read as it is.
    let got = product_with(Epilogue::DeltaGiven {
        kl: Some((&packed_buf, 5 + n as u32)),
        fprime: Operand::row_major(&prev_buf, 0, n as u32),
    });
    let expected = Array2::from_shape_fn((m, n), |(i, j)| (z[[i, j]] + kl[[0, j]]) * a_prev[[i, j]]);
    let d = rel(&got, expected.as_slice().unwrap());
    assert!(d < TOLERANCE, "delta with f′ given: {d:e}");
}

fn matmul_reads_offset_and_strided_operands_and_writes_only_its_block(kernel: MatmulKernel) {
    // A, B and C are blocks inside larger matrices (element offsets, row strides wider than
    // the block), as the weights sit inside θ; the elements around C's block must survive.
    let (gpu, k) = open_with(Some(kernel));
    let mut rng = StdRng::seed_from_u64(6);
    let (m, n, kk) = (13, 10, 9);
    let big_a = random(m + 4, kk + 5, -1.0, 1.0, &mut rng);
    let big_b = random(kk + 2, n + 7, -1.0, 1.0, &mut rng);
    let big_c = random(m + 3, n + 6, -1.0, 1.0, &mut rng);
    let w = random(m, n, -1.0, 1.0, &mut rng);
    let (a_buf, b_buf) = (gpu.upload_f32("a", &f32s(&big_a)), gpu.upload_f32("b", &f32s(&big_b)));
    let c_buf = gpu.upload_f32("c", &f32s(&big_c));
    // A = big_a[2.., 3..], B = big_b[1.., 4..], C = big_c[1.., 2..].
    let a_op = Operand { buf: &a_buf, off: (2 * (kk + 5) + 3) as u32, rs: (kk + 5) as u32, cs: 1 };
    let b_op = Operand { buf: &b_buf, off: (n + 7 + 4) as u32, rs: (n + 7) as u32, cs: 1 };
    let c_off = (n + 6 + 2) as u32;
    let a = big_a.slice(ndarray::s![2..2 + m, 3..3 + kk]).to_owned();
    let b = big_b.slice(ndarray::s![1..1 + kk, 4..4 + n]).to_owned();
    // The decay term reads w at (row, col) with C's row stride, so lay w out that way.
    let mut w_strided = vec![0.0f32; m * (n + 6)];
    for i in 0..m {
        for j in 0..n {
            w_strided[i * (n + 6) + j] = w[[i, j]] as f32;
        }
    }
    let w_buf = gpu.upload_f32("w strided", &w_strided);
    let epi = Epilogue::Plain { alpha: 2.0, accumulate: true, decay: Some((0.5, &w_buf, 0)) };
    let op = k.matmul(&gpu.device, a_op, b_op, (&c_buf, c_off, (n + 6) as u32), (m as u32, n as u32, kk as u32), epi);
    gpu.run(&[op]).unwrap();
    let got = gpu.download_f32(&c_buf, (m + 3) * (n + 6)).unwrap();
    let got = Array2::from_shape_vec((m + 3, n + 6), got.iter().map(|&v| v as f64).collect()).unwrap();
    let mut expected = big_c.mapv(|v| v as f32 as f64);
    let block = a.dot(&b) * 2.0 + expected.slice(ndarray::s![1..1 + m, 2..2 + n]) + &w * 0.5;
    expected.slice_mut(ndarray::s![1..1 + m, 2..2 + n]).assign(&block);
    let d = rel(&f32s(&got), expected.as_slice().unwrap());
    assert!(d < TOLERANCE, "strided block: {d:e}");
    let outside = got.indexed_iter().filter(|((i, j), _)| !(1..1 + m).contains(i) || !(2..2 + n).contains(j));
    for ((i, j), &v) in outside {
        assert_eq!(v as f32, big_c[[i, j]] as f32, "element ({i}, {j}) outside C's block was written");
    }
}

fn matmul_ops_recorded_together_do_not_disturb_each_other(kernel: MatmulKernel) {
    // Products of one shape share pooled textures in the texture-fed kernel: recorded into one
    // pass, each must still see its own operands.
    let (gpu, k) = open_with(Some(kernel));
    let mut rng = StdRng::seed_from_u64(7);
    let (m, n, kk) = (37, 21, 45);
    let mut ops = Vec::new();
    let mut expected = Vec::new();
    let mut outputs = Vec::new();
    let mut keep = Vec::new();
    for t in 0..3 {
        let a = random(m, kk, -1.0, 1.0, &mut rng);
        let b = random(kk, n, -1.0, 1.0, &mut rng);
        let (a_buf, b_buf, [a_cols, b_cols]) = operands(&gpu, &a, &b, t == 1, t == 2);
        let c_buf = poisoned(&gpu, m * n);
        let epi = Epilogue::Plain { alpha: 1.0, accumulate: false, decay: None };
        let (op_a, op_b) = (operand(&a_buf, a_cols, t == 1), operand(&b_buf, b_cols, t == 2));
        ops.push(k.matmul(&gpu.device, op_a, op_b, (&c_buf, 0, n as u32), (m as u32, n as u32, kk as u32), epi));
        expected.push(a.dot(&b));
        outputs.push(c_buf);
        keep.push((a_buf, b_buf));
    }
    gpu.run(&ops).unwrap();
    for (t, (c_buf, e)) in outputs.iter().zip(&expected).enumerate() {
        let d = rel(&gpu.download_f32(c_buf, m * n).unwrap(), e.as_slice().unwrap());
        assert!(d < TOLERANCE, "product {t} of 3 recorded together: {d:e}");
    }
}

fn matmul_beyond_the_texture_limit_still_agrees(kernel: MatmulKernel) {
    // An operand taller or deeper than the largest texture: the texture-fed kernel hands the
    // product to the tiled one, with the same result.
    let (gpu, k) = open_with(Some(kernel));
    let side = gpu.limits.max_texture_dimension_2d as usize;
    let mut rng = StdRng::seed_from_u64(8);
    let fits = (side as u32, 5, 3);
    assert_eq!(k.matmul_kernel(fits), kernel, "{fits:?} fits a texture");
    // B as a side × side texture: 16 side² bytes, 4 GiB on lavapipe, over its largest buffer.
    let widest = (1, 4 * side as u32, side as u32);
    let too_big = 16 * (side as u64).pow(2) > gpu.limits.max_buffer_size;
    let expected = if too_big { MatmulKernel::Tiled } else { kernel };
    assert_eq!(k.matmul_kernel(widest), expected, "{widest:?}: {} bytes per buffer", gpu.limits.max_buffer_size);
    for (m, n, kk) in [(side + 1, 5, 3), (3, 6, side + 1)] {
        assert_eq!(k.matmul_kernel((m as u32, n as u32, kk as u32)), MatmulKernel::Tiled, "{m}×{n}×{kk}");
        let a = random(m, kk, -1.0, 1.0, &mut rng);
        let b = random(kk, n, -1.0, 1.0, &mut rng);
        let (a_buf, b_buf, [a_cols, b_cols]) = operands(&gpu, &a, &b, false, true);
        let c_buf = poisoned(&gpu, m * n);
        let epi = Epilogue::Plain { alpha: 1.0, accumulate: false, decay: None };
        let (op_a, op_b) = (operand(&a_buf, a_cols, false), operand(&b_buf, b_cols, true));
        let op = k.matmul(&gpu.device, op_a, op_b, (&c_buf, 0, n as u32), (m as u32, n as u32, kk as u32), epi);
        gpu.run(&[op]).unwrap();
        let d = rel(&gpu.download_f32(&c_buf, m * n).unwrap(), a.dot(&b).as_slice().unwrap());
        assert!(d < TOLERANCE, "{m}×{n}×{kk}: {d:e}");
    }
}

#[test]
fn software_adapters_default_to_the_texture_kernel() {
    let (gpu, _) = open();
    if std::env::var("WGNN_MATMUL").is_ok_and(|v| !v.is_empty()) {
        return;
    }
    let expected =
        if gpu.info.device_type == wgpu::DeviceType::Cpu { MatmulKernel::Texture } else { MatmulKernel::Tiled };
    assert_eq!(gpu.matmul, expected, "{}", gpu.describe());
}

#[test]
fn activations_match_at_ordinary_and_extreme_inputs() {
    let (gpu, k) = open();
    let mut rng = StdRng::seed_from_u64(3);
    let (rows, cols) = (7, 65);
    let mut z = random(rows, cols, -30.0, 30.0, &mut rng);
    for (j, v) in [-1000.0, -89.0, -1e-30, 0.0, 1e-30, 89.0, 1000.0].into_iter().enumerate() {
        z[[0, j]] = v;
    }
    let z_buf = gpu.upload_f32("z", &f32s(&z));
    for act in ACTIVATIONS {
        let (code, leaky) = act_code(act);
        for derivative in [false, true] {
            let src = if derivative { z.mapv(|v| activate(act, v)) } else { z.clone() };
            let src_buf = if derivative { gpu.upload_f32("a", &f32s(&src)) } else { z_buf.clone() };
            let out = poisoned(&gpu, rows * cols);
            let p = SmallParams {
                rows: rows as u32,
                cols: cols as u32,
                in_rs: cols as u32,
                act: code,
                leaky_alpha: leaky,
                flag: derivative as u32,
                ..Default::default()
            };
            let op = k.small(
                &gpu.device,
                Small::Elementwise,
                Some(&src_buf),
                None,
                Some(&out),
                None,
                p,
                [(cols as u32).div_ceil(16), (rows as u32).div_ceil(16), 1],
            );
            gpu.run(&[op]).unwrap();
            let expected =
                if derivative { src.mapv(|a| derivative_from_value(act, a)) } else { z.mapv(|v| activate(act, v)) };
            let got = gpu.download_f32(&out, rows * cols).unwrap();
            let d = rel(&got, expected.as_slice().unwrap());
            assert!(d < TOLERANCE, "{act:?} derivative={derivative}: {d:e}");
            // Saturation must be exact at the extremes, not NaN.
            if !derivative && act == Activation::Sigmoid {
                assert_eq!((got[0], got[6]), (0.0, 1.0));
            }
            if !derivative && act == Activation::Tanh {
                assert_eq!((got[0], got[6]), (-1.0, 1.0));
            }
        }
    }
}

#[test]
fn reductions_are_right_and_deterministic() {
    let (gpu, k) = open();
    let mut rng = StdRng::seed_from_u64(4);
    // Column sums over 1000 rows: four blocks of 256, the last ragged.
    let (rows, cols) = (1000, 63);
    let x = random(rows, cols, -1.0, 1.0, &mut rng);
    let x_buf = gpu.upload_f32("x", &f32s(&x));
    let partials = poisoned(&gpu, rows.div_ceil(256) * cols);
    let out0 = random(1, 3 + cols, -1.0, 1.0, &mut rng);
    let out = gpu.upload_f32("out", &f32s(&out0));
    let blocks = rows.div_ceil(256) as u32;
    let p = SmallParams { rows: rows as u32, cols: cols as u32, in_rs: cols as u32, ..Default::default() };
    let op1 = k.small(
        &gpu.device,
        Small::ColumnPartials,
        Some(&x_buf),
        None,
        Some(&partials),
        None,
        p,
        [(cols as u32).div_ceil(64), blocks, 1],
    );
    let p = SmallParams { cols: cols as u32, out_off: 3, alpha: 0.25, flag: 1, len: blocks, ..Default::default() };
    let op2 = k.small(
        &gpu.device,
        Small::ColumnFinish,
        Some(&partials),
        None,
        Some(&out),
        None,
        p,
        [(cols as u32).div_ceil(64), 1, 1],
    );
    gpu.run(&[op1, op2]).unwrap();
    let sums = x.sum_axis(ndarray::Axis(0));
    let expected: Vec<f64> = (0..cols).map(|j| 0.25 * sums[j] + out0[[0, 3 + j]]).collect();
    let got = gpu.download_f32(&out, 3 + cols).unwrap();
    assert_eq!(&got[..3], &f32s(&out0)[..3], "elements before the offset were touched");
    assert!(rel(&got[3..], &expected) < TOLERANCE);

    // One-workgroup sums of a range, plain and of squares.
    let len = 100_003;
    let v: Array1<f64> = Array1::from_shape_simple_fn(len + 5, || rng.random_range(-1.0..1.0));
    let v_buf = gpu.upload_f32("v", &v.iter().map(|&x| x as f32).collect::<Vec<_>>());
    let mut results = Vec::new();
    for _ in 0..2 {
        let dst = poisoned(&gpu, 4);
        let p0 = SmallParams { in_off: 5, len: len as u32, out_off: 0, ..Default::default() };
        let p1 = SmallParams { in_off: 5, len: len as u32, out_off: 1, act: 1, ..Default::default() };
        let ops =
            [p0, p1].map(|p| k.small(&gpu.device, Small::SumRange, Some(&v_buf), None, Some(&dst), None, p, [1, 1, 1]));
        gpu.run(&ops).unwrap();
        results.push(gpu.download_f32(&dst, 2).unwrap());
    }
    let tail = v.slice(ndarray::s![5..]);
    let (sum, sumsq) = (tail.sum(), tail.mapv(|x| x * x).sum());
    assert!(((results[0][0] as f64 - sum) / sumsq).abs() < 1e-5, "{} vs {sum}", results[0][0]);
    assert!(((results[0][1] as f64 - sumsq) / sumsq).abs() < 1e-5, "{} vs {sumsq}", results[0][1]);
    assert_eq!(results[0], results[1], "reductions must be deterministic");
}

#[test]
fn softmax_and_kl_terms_match_the_cpu() {
    let (gpu, k) = open();
    let mut rng = StdRng::seed_from_u64(5);
    let (rows, cols) = (65, 10);
    let mut z = random(rows, cols, -5.0, 5.0, &mut rng);
    z[[0, 3]] = 500.0; // would overflow exp without the row maximum
    let labels: Vec<u32> = (0..rows).map(|i| (i % cols) as u32).collect();
    let labels_buf = gpu.upload_f32("labels", bytemuck::cast_slice(&labels));
    let z_buf = gpu.upload_f32("z", &f32s(&z));
    let loss = poisoned(&gpu, rows);
    let p = SmallParams { rows: rows as u32, cols: cols as u32, flag: 1, ..Default::default() };
    let op = k.small(&gpu.device, Small::Softmax, None, Some(&labels_buf), Some(&z_buf), Some(&loss), p, [2, 1, 1]);
    gpu.run(&[op]).unwrap();
    let mut delta = Array2::<f64>::zeros((rows, cols));
    let mut nll = vec![0.0; rows];
    for i in 0..rows {
        let mx = z.row(i).fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let s: f64 = z.row(i).iter().map(|v| (v - mx).exp()).sum();
        for j in 0..cols {
            delta[[i, j]] = (z[[i, j]] - mx).exp() / s - if j == labels[i] as usize { 1.0 } else { 0.0 };
        }
        nll[i] = s.ln() + mx - z[[i, labels[i] as usize]];
    }
    assert!(rel(&gpu.download_f32(&z_buf, rows * cols).unwrap(), delta.as_slice().unwrap()) < TOLERANCE);
    assert!(rel(&gpu.download_f32(&loss, rows).unwrap(), &nll) < TOLERANCE);

    // KL terms from the column sums of σ(z) and of σ(−z): ρ̂ = colsum/m, 1 − ρ̂ = colsum'/m,
    // each its own sum (MATH.md, "Numerically safe forms"). The last two units are saturated:
    // 1 − ρ̂ = 2e-9 (ρ̂ rounds to 1 in f32) and ρ̂ = 2e-9.
    let m = 40.0;
    let mut rho_hat: Vec<f64> = (0..63).map(|_| rng.random_range(0.01..0.99)).collect();
    let mut rho_hat_c: Vec<f64> = rho_hat.iter().map(|r| 1.0 - r).collect();
    (rho_hat[61], rho_hat_c[61]) = (1.0 - 2e-9, 2e-9);
    (rho_hat[62], rho_hat_c[62]) = (2e-9, 1.0 - 2e-9);
    let colsum: Vec<f32> = rho_hat.iter().chain(&rho_hat_c).map(|r| (r * m) as f32).collect();
    let colsum_buf = gpu.upload_f32("colsum", &colsum);
    let out = poisoned(&gpu, 2 * 63);
    let (rho, beta) = (0.05, 3.0);
    let p = SmallParams { cols: 63, alpha: 1.0 / m as f32, rho: rho as f32, beta: beta as f32, ..Default::default() };
    let op = k.small(&gpu.device, Small::KlTerms, Some(&colsum_buf), None, Some(&out), None, p, [1, 1, 1]);
    gpu.run(&[op]).unwrap();
    let pairs = || rho_hat.iter().zip(&rho_hat_c);
    let mut expected: Vec<f64> = pairs().map(|(&r, &c)| beta * (-rho / r + (1.0 - rho) / c)).collect();
    expected.extend(pairs().map(|(&r, &c)| beta * (rho * (rho / r).ln() + (1.0 - rho) * ((1.0 - rho) / c).ln())));
    let got = gpu.download_f32(&out, 2 * 63).unwrap();
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert!(((*g as f64 - e) / e).abs() < TOLERANCE, "KL term {i}: {g} vs {e}");
    }
}

/// σ(z) and σ(−z) (flag 0) or f′ = σ(z)σ(−z) (flag 1), each from z: where σ(z) rounds to 1 in
/// f32 (z = 20, 40) the second output keeps e^{−z} instead of 0.
#[test]
fn sigmoid_complement_keeps_what_one_minus_a_loses() {
    let (gpu, k) = open();
    let mut rng = StdRng::seed_from_u64(6);
    let (rows, cols) = (17, 5);
    let mut z = random(rows, cols, -8.0, 8.0, &mut rng);
    (z[[0, 0]], z[[1, 1]], z[[2, 2]], z[[3, 3]]) = (20.0, 40.0, -20.0, -40.0);
    let z_buf = gpu.upload_f32("z", &f32s(&z));
    let sig = |v: f64| if v >= 0.0 { 1.0 / (1.0 + (-v).exp()) } else { v.exp() / (1.0 + v.exp()) };
    for flag in [0u32, 1] {
        let (a, second) = (poisoned(&gpu, rows * cols), poisoned(&gpu, rows * cols));
        let p = SmallParams { rows: rows as u32, cols: cols as u32, in_rs: cols as u32, flag, ..Default::default() };
        let op =
            k.small(&gpu.device, Small::SigmoidComplement, Some(&z_buf), None, Some(&a), Some(&second), p, [1, 2, 1]);
        gpu.run(&[op]).unwrap();
        let want_a: Vec<f64> = z.iter().map(|&v| sig(v)).collect();
        let want: Vec<f64> = z.iter().map(|&v| if flag == 0 { sig(-v) } else { sig(v) * sig(-v) }).collect();
        let (got_a, got) =
            (gpu.download_f32(&a, rows * cols).unwrap(), gpu.download_f32(&second, rows * cols).unwrap());
        for i in 0..rows * cols {
            assert!(
                ((got_a[i] as f64 - want_a[i]) / want_a[i]).abs() < TOLERANCE,
                "flag {flag} σ at {i}: {} vs {}",
                got_a[i],
                want_a[i]
            );
            assert!(
                ((got[i] as f64 - want[i]) / want[i]).abs() < TOLERANCE,
                "flag {flag} second at {i}: {} vs {}",
                got[i],
                want[i]
            );
        }
    }
}

/// loss.wgsl (`squared_error`) against its CPU twin: δ = (a − y) ⊙ f′(a) and one partial sum
/// of (a − y)² per 16 × 16 tile, on a shape that is not a multiple of the tile, targets read
/// at an offset with a row stride wider than the output, and partials written at an offset.
/// Everything is poisoned first: the slots before `partial_off` must stay NaN, and with
/// flag 0 (cost only) δ must stay unwritten.
#[test]
fn squared_error_loss_matches_the_cpu_on_awkward_shapes() {
    let (gpu, k) = open();
    let mut rng = StdRng::seed_from_u64(17);
    let (rows, cols, y_rs, y_off, partial_off) = (37usize, 19usize, 23usize, 5usize, 3usize);
    let (tiles_x, tiles_y) = (cols.div_ceil(16), rows.div_ceil(16));
    let y_store = random(rows + 1, y_rs, -1.0, 1.0, &mut rng);
    let y_flat: Vec<f64> = y_store.iter().copied().collect();
    let y = Array2::from_shape_fn((rows, cols), |(i, j)| y_flat[y_off + i * y_rs + j]);
    let y_buf = gpu.upload_f32("targets", &f32s(&y_store));
    for act in ACTIVATIONS {
        // Output activations inside f's range, so f′ from the value is meaningful.
        let (lo, hi) = match act {
            Activation::Sigmoid => (0.01, 0.99),
            Activation::Tanh => (-0.99, 0.99),
            _ => (-2.0, 2.0),
        };
        let a = random(rows, cols, lo, hi, &mut rng);
        let a_buf = gpu.upload_f32("a", &f32s(&a));
        let (code, leaky) = act_code(act);
        for want_delta in [true, false] {
            let delta = poisoned(&gpu, rows * cols);
            let partials = poisoned(&gpu, partial_off + tiles_x * tiles_y);
            let p = SmallParams {
                rows: rows as u32,
                cols: cols as u32,
                in_off: y_off as u32,
                in_rs: y_rs as u32,
                act: code,
                leaky_alpha: leaky,
                flag: want_delta as u32,
                partial_off: partial_off as u32,
                ..Default::default()
            };
            let groups = [tiles_x as u32, tiles_y as u32, 1];
            let op = k.small(
                &gpu.device,
                Small::SquaredError,
                Some(&a_buf),
                Some(&y_buf),
                Some(&delta),
                Some(&partials),
                p,
                groups,
            );
            gpu.run(&[op]).unwrap();

            let e = &a - &y;
            let mut tile_sums = vec![0.0; tiles_x * tiles_y];
            for ((i, j), v) in e.indexed_iter() {
                tile_sums[(i / 16) * tiles_x + j / 16] += v * v;
            }
            let got = gpu.download_f32(&partials, partial_off + tiles_x * tiles_y).unwrap();
            assert!(got[..partial_off].iter().all(|v| v.is_nan()), "{act:?}: wrote before partial_off");
            let d = rel(&got[partial_off..], &tile_sums);
            assert!(d < TOLERANCE, "{act:?} partials: {d:e}");
            let got_delta = gpu.download_f32(&delta, rows * cols).unwrap();
            if want_delta {
                let expected =
                    Array2::from_shape_fn((rows, cols), |(i, j)| e[[i, j]] * derivative_from_value(act, a[[i, j]]));
                let d = rel(&got_delta, expected.as_slice().unwrap());
                assert!(d < TOLERANCE, "{act:?} δ: {d:e}");
            } else {
                assert!(got_delta.iter().all(|v| v.is_nan()), "{act:?}: flag 0 must not write δ");
            }
        }
    }
}

/// Every named code the Rust launchers pass (activation codes, epilogues, sum kinds, cost
/// slots, update rules) has the same value as the WGSL constant of that name, read from the
/// shaders parsed by naga; and every one of them is declared in some shader.
#[test]
fn named_codes_match_the_wgsl_constants() {
    use wgpu::naga::{Expression, Literal};
    let shaders = [
        ("common.wgsl", include_str!("../shaders/common.wgsl")),
        ("reduce.wgsl", concat!(include_str!("../shaders/small_params.wgsl"), include_str!("../shaders/reduce.wgsl"))),
        ("update.wgsl", include_str!("../shaders/update.wgsl")),
    ];
    let epilogue = concat!(include_str!("../shaders/common.wgsl"), include_str!("../shaders/matmul_epilogue.wgsl"));
    let mut found = std::collections::HashMap::new();
    for (name, source) in shaders.into_iter().chain([("matmul_epilogue.wgsl", epilogue)]) {
        let module = wgpu::naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (_, c) in module.constants.iter() {
            if let (Some(n), Expression::Literal(Literal::U32(v))) = (&c.name, &module.global_expressions[c.init]) {
                found.insert(n.clone(), (*v, name));
            }
        }
    }
    for &(constant, value) in wgnn::gpu::kernels::WGSL_CODES {
        let (wgsl, file) = found.get(constant).unwrap_or_else(|| panic!("{constant} is declared in no shader"));
        assert_eq!(*wgsl, value, "{constant}: {value} in Rust, {wgsl} in {file}");
    }
}
