//! CPU backend benchmarks, kernel family by kernel family, then whole training steps: the
//! matrix products in each transpose form (1024³, 2048³, the MNIST autoencoder's
//! 10,000×784×196 and 60,000×784×196 layer, a 256-row minibatch), the elementwise passes
//! (bias + activation, × f′, squared error), the reductions (column sums, ρ̂, weight decay),
//! the sparsity term, softmax, the optimizer updates, convolution + pooling of learned features,
//! the layer stack's conv2d (forward, backward) and pool2d on LeNet's shapes, and one full
//! step — cost, gradient and update — for the sparse autoencoder, softmax regression and a
//! 784-256-128-10 MLP, in f32 (the fast path) and f64 (the reference).
//!
//! Throughput is counted in floating-point operations for the products and steps (2mnk per
//! matmul), so criterion's "elem/s" reads as FLOP/s there, and in values touched for the
//! other families. Run: `cargo bench --bench cpu` (a few minutes; pick rows with a filter,
//! e.g. `cargo bench --bench cpu -- matmul_f32`). `cargo test` runs every row once on tiny
//! shapes (criterion's test mode, debug build), so the benches cannot rot.

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main, measurement::WallTime};
use ndarray::{Array1, Array2};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use std::hint::black_box;
use std::time::Duration;
use wgnn::cpu::{Real, gemm, net};
use wgnn::features::{FeatureBank, PoolKind, Pooling, convolve_and_pool_cpu};
use wgnn::layers::{ImageShape, conv2d::Conv2d, pool2d};
use wgnn::model::{Activation, Init, NetSpec, Output, Sparsity, ThetaLayout};
use wgnn::optim::{UpdateRule, UpdateState};
use wgnn::{Backend, Batch, CpuBackend, Targets};

/// Under `cargo test` (a debug build) every row runs once on shapes divided by this.
fn shrink() -> usize {
    if cfg!(debug_assertions) { 64 } else { 1 }
}

/// Rows of a batch at full size `m`.
fn rows(m: usize) -> usize {
    (m / shrink()).max(3)
}

fn random<F: Real>(rows: usize, cols: usize, seed: u64) -> Array2<F> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((rows, cols), || F::of(rng.random_range(0.0..1.0)))
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    g
}

/// C = op(A) op(B) for the transpose form `form` ("NN", "NT", "TN"), C being m×n, depth k:
/// the three products of a dense layer (forward X·Wᵀ, weight gradient δᵀ·X, input delta δ·W).
fn matmul_form<F: Real>(g: &mut BenchmarkGroup<WallTime>, (m, n, k): (usize, usize, usize), form: &str) {
    let (m, n, k) = (m / shrink().min(m), n / shrink().min(n), k / shrink().min(k));
    let a: Array2<F> = if form.starts_with('T') { random(k, m, 1) } else { random(m, k, 1) };
    let b: Array2<F> = if form.ends_with('T') { random(n, k, 2) } else { random(k, n, 2) };
    let mut out = Array2::<F>::zeros((m, n));
    g.throughput(Throughput::Elements(2 * (m * n * k) as u64));
    g.bench_function(format!("{m}x{n}x{k}_{form}"), |bench| {
        bench.iter(|| match form {
            "NN" => gemm(F::one(), &a.view(), &b.view(), F::zero(), &mut out.view_mut()),
            "NT" => gemm(F::one(), &a.view(), &b.t(), F::zero(), &mut out.view_mut()),
            _ => gemm(F::one(), &a.t(), &b.view(), F::zero(), &mut out.view_mut()),
        });
    });
}

fn matmul(c: &mut Criterion) {
    let layer = |m| [((m, 196, 784), "NT"), ((196, 784, m), "TN"), ((m, 784, 196), "NN")];
    let mut g = group(c, "matmul_f32");
    for (shape, form) in [((1024, 1024, 1024), "NN"), ((2048, 2048, 2048), "NN")] {
        matmul_form::<f32>(&mut g, shape, form);
    }
    for (shape, form) in layer(10_000).into_iter().chain(layer(60_000)) {
        matmul_form::<f32>(&mut g, shape, form);
    }
    // A 256-row minibatch through the MLP's first layer: forward, weight gradient.
    matmul_form::<f32>(&mut g, (256, 256, 784), "NT");
    matmul_form::<f32>(&mut g, (256, 784, 256), "TN");
    g.finish();

    let mut g = group(c, "matmul_f64");
    matmul_form::<f64>(&mut g, (1024, 1024, 1024), "NN");
    for (shape, form) in layer(10_000) {
        matmul_form::<f64>(&mut g, shape, form);
    }
    g.finish();
}

/// The passes between the products, on the autoencoder's 10,000-row activations.
fn elementwise_family<F: Real>(c: &mut Criterion) {
    let (m, h, n) = (rows(10_000), 196, 784);
    let mut g = group(c, &format!("elementwise_{}", F::NAME));
    let b = Array1::from_shape_fn(h, |j| F::of(j as f64 / h as f64 - 0.5));
    let z0: Array2<F> = random(m, h, 3);
    g.throughput(Throughput::Elements((m * h) as u64));
    for act in [Activation::Sigmoid, Activation::Tanh, Activation::Relu] {
        g.bench_function(format!("bias_{}_{m}x{h}", act.name()), |bench| {
            bench.iter_batched_ref(
                || z0.clone(),
                |z| net::bias_activate(z, b.view(), act),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    let a: Array2<F> = random(m, h, 4);
    let kl = net::kl_delta(0.1, 3.0, &net::mean_activation(&a), &net::mean_activation(&a.mapv(|v| F::one() - v)));
    g.bench_function(format!("times_sigmoid_derivative_kl_{m}x{h}"), |bench| {
        bench.iter_batched_ref(
            || z0.clone(),
            |d| net::times_derivative(d, a.view(), Activation::Sigmoid, Some(&kl)),
            criterion::BatchSize::LargeInput,
        )
    });
    let (out, y): (Array2<F>, Array2<F>) = (random(m, n, 5), random(m, n, 6));
    g.throughput(Throughput::Elements((m * n) as u64));
    g.bench_function(format!("squared_error_and_delta_{m}x{n}"), |bench| {
        // δ is written over the activations: each run gets a fresh copy of them, not timed.
        bench.iter_batched(
            || out.clone(),
            |a| black_box(net::squared_error_delta(a, y.view(), Activation::Sigmoid)),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();

    let mut g = group(c, &format!("reduce_{}", F::NAME));
    g.throughput(Throughput::Elements((m * n) as u64));
    g.bench_function(format!("column_sums_{m}x{n}"), |bench| bench.iter(|| black_box(net::column_sums(out.view()))));
    g.throughput(Throughput::Elements((m * h) as u64));
    g.bench_function(format!("rho_hat_{m}x{h}"), |bench| bench.iter(|| black_box(net::mean_activation(&a))));
    let sae = NetSpec::sparse_autoencoder(784, 196, 3e-3, Sparsity { target: 0.1, weight: 3.0 }).unwrap();
    let layout = ThetaLayout::new(&sae);
    let theta: Vec<F> = Init::Uniform.theta(&sae, 0).into_iter().map(F::of).collect();
    g.throughput(Throughput::Elements(layout.all_weights().len() as u64));
    g.bench_function("weight_decay_784_196_784", |bench| {
        bench.iter(|| black_box(net::weight_decay_cost(&sae, &layout, &theta)))
    });
    g.finish();

    let mut g = group(c, &format!("sparsity_{}", F::NAME));
    let (rho_hat, rho_hat_c) = (net::mean_activation(&a), net::mean_activation(&a.mapv(|v| F::one() - v)));
    g.throughput(Throughput::Elements(h as u64));
    g.bench_function(format!("kl_cost_and_delta_{h}"), |bench| {
        bench.iter(|| {
            (
                black_box(net::kl_sparsity(0.1, 3.0, &rho_hat, &rho_hat_c)),
                black_box(net::kl_delta(0.1, 3.0, &rho_hat, &rho_hat_c)),
            )
        })
    });
    g.finish();

    let mut g = group(c, &format!("softmax_{}", F::NAME));
    for m in [rows(10_000), 256] {
        let logits: Array2<F> = random(m, 10, 7);
        g.throughput(Throughput::Elements((m * 10) as u64));
        g.bench_function(format!("rows_{m}x10"), |bench| {
            bench.iter_batched_ref(|| logits.clone(), |z| net::softmax_rows(z), criterion::BatchSize::SmallInput)
        });
    }
    g.finish();
}

fn elementwise(c: &mut Criterion) {
    elementwise_family::<f32>(c);
    elementwise_family::<f64>(c);
}

/// One optimizer step on θ of the sparse autoencoder (308,308 values) and the MLP (235,146).
fn updates(c: &mut Criterion) {
    let mut g = group(c, "update_f64");
    for (name, dim) in [("sae_784_196_784", 308_308), ("mlp_784_256_128_10", 235_146)] {
        let dim = dim / shrink();
        let mut rng = StdRng::seed_from_u64(8);
        let grad: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
        g.throughput(Throughput::Elements(dim as u64));
        for rule in [
            UpdateRule::Plain,
            UpdateRule::Momentum { momentum: 0.9, nesterov: false },
            UpdateRule::NESTEROV,
            UpdateRule::ADAM,
        ] {
            let mut state = UpdateState::new(rule, dim);
            let mut theta = vec![0.0; dim];
            g.bench_function(format!("{}_{name}", rule.name()), |bench| {
                bench.iter(|| state.apply(&mut theta, &grad, 1e-3))
            });
        }
    }
    g.finish();
}

/// 196 learned 8×8 features convolved over 28×28 images and mean-pooled 3×3 (the MNIST
/// convolution pipeline), per 100 images.
fn convolution(c: &mut Criterion) {
    let images = (100 / shrink()).max(2);
    let mut rng = StdRng::seed_from_u64(9);
    let weights = Array2::from_shape_simple_fn((196, 64), || rng.random_range(-0.1..0.1));
    let bank = FeatureBank::new(weights, Array1::zeros(196), Activation::Sigmoid, 8, 1).unwrap();
    let pooling = Pooling { size: 3, kind: PoolKind::Mean };
    let mut g = group(c, "convolve_pool");
    // 2·k·p² per convolved value: 21² positions, 196 features, 64 weights.
    g.throughput(Throughput::Elements((images * 21 * 21 * 196 * 64 * 2) as u64));
    for_precision::<f32>(&mut g, &bank, images, pooling);
    for_precision::<f64>(&mut g, &bank, images, pooling);
    g.finish();
}

fn for_precision<F: Real>(g: &mut BenchmarkGroup<WallTime>, bank: &FeatureBank, images: usize, pooling: Pooling) {
    let x: Array2<F> = random(images, 28 * 28, 10);
    g.bench_function(format!("{images}x28x28_196x8x8_pool3_{}", F::NAME), |bench| {
        bench.iter(|| black_box(convolve_and_pool_cpu(bank, x.view(), 28, pooling).unwrap()))
    });
}

/// The layer stack's conv2d on LeNet's two convolutions (batch 64: 1×28×28 → 20 filters of
/// 5×5, then 20×12×12 → 50 filters of 5×5), forward and backward: counted in FLOPs (2 per
/// multiply-add of the products; the backward pass is ∇W plus, for the second layer, ∇input —
/// the first layer's input needs no gradient), so "elem/s" reads as FLOP/s.
fn conv_layers(c: &mut Criterion) {
    conv_layers_in::<f32>(c);
    conv_layers_in::<f64>(c);
}

fn conv_layers_in<F: Real>(c: &mut Criterion) {
    let m = rows(64);
    let mut g = group(c, &format!("conv2d_{}", F::NAME));
    for (name, input, filters, input_grad) in
        [("lenet1", ImageShape::new(1, 28, 28), 20, false), ("lenet2", ImageShape::new(20, 12, 12), 50, true)]
    {
        let conv = Conv2d::new(input, filters, 5, 1, 0).unwrap();
        let (f, depth) = conv.weight_shape();
        let w: Array2<F> = random(f, depth, 11);
        let b = Array1::from_elem(f, F::of(0.1));
        let x: Array2<F> = random(m, input.len(), 12);
        let delta: Array2<F> = random(m, conv.output().len(), 13);
        let shape = format!("{m}x{}_{f}x{}x5x5", input.describe().replace('×', "x"), input.channels);
        g.throughput(Throughput::Elements(conv.forward_flops(m)));
        g.bench_function(format!("{name}_forward_{shape}"), |bench| {
            bench.iter(|| black_box(conv.forward(w.view(), b.view(), x.view()).unwrap()))
        });
        let (mut gw, mut gb, mut gx) = (Array2::zeros(w.dim()), Array1::zeros(f), Array2::zeros(x.dim()));
        g.throughput(Throughput::Elements(conv.forward_flops(m) * if input_grad { 2 } else { 1 }));
        let which = if input_grad { "dW_db_dx" } else { "dW_db" };
        g.bench_function(format!("{name}_backward_{which}_{shape}"), |bench| {
            bench.iter(|| {
                let gx = input_grad.then(|| gx.view_mut());
                conv.backward(w.view(), x.view(), delta.view(), F::one(), gw.view_mut(), gb.view_mut(), gx).unwrap()
            })
        });
    }
    g.finish();

    // LeNet's pooling: 2×2 max and mean over the first convolution's 64×20×24×24 maps,
    // counted in input values.
    let mut g = group(c, &format!("pool2d_{}", F::NAME));
    let maps = ImageShape::new(20, 24, 24);
    let x: Array2<F> = random(m, maps.len(), 14);
    g.throughput(Throughput::Elements((m * maps.len()) as u64));
    for kind in [pool2d::PoolKind::Max, pool2d::PoolKind::Mean] {
        let pool = pool2d::Pool2d::new(maps, kind, 2).unwrap();
        let fwd = pool.forward(x.view()).unwrap();
        let delta: Array2<F> = random(m, pool.output().len(), 15);
        g.bench_function(format!("{}_forward_{m}x20x24x24_2x2", kind.name()), |bench| {
            bench.iter(|| black_box(pool.forward(x.view()).unwrap()))
        });
        g.bench_function(format!("{}_backward_{m}x20x24x24_2x2", kind.name()), |bench| {
            bench.iter(|| black_box(pool.backward(delta.view(), fwd.winners.as_ref().map(|w| w.view())).unwrap()))
        });
    }
    g.finish();
}

/// FLOPs of one cost-and-gradient: forward (2mnk per layer) and backward (two products per
/// layer, minus the input delta of the first layer).
fn step_flops(spec: &NetSpec, m: usize) -> u64 {
    let per_layer: Vec<u64> = spec.layers.windows(2).map(|w| 2 * (m * w[0] * w[1]) as u64).collect();
    3 * per_layer.iter().sum::<u64>() - per_layer[0]
}

/// One training step: cost and gradient on the batch, then the update (the optimizer's
/// vectors are f64 on every backend).
fn step<F: Real>(c: &mut Criterion, name: &str, spec: NetSpec, m: usize, labels: bool, rule: UpdateRule) {
    let m = rows(m);
    let x: Array2<f32> = random(m, spec.inputs(), 3);
    let y: Vec<usize> = (0..m).map(|i| i % spec.outputs()).collect();
    let mut theta = Init::Uniform.theta(&spec, 0);
    let mut backend = CpuBackend::<F>::new(spec.clone()).unwrap();
    let targets = if labels { Targets::Labels(&y) } else { Targets::Inputs };
    backend.set_data((&x).into(), targets).unwrap();
    let mut grad = vec![0.0; theta.len()];
    let mut state = UpdateState::new(rule, theta.len());
    let mut g = group(c, "training_step");
    g.throughput(Throughput::Elements(step_flops(&spec, m)));
    g.bench_function(format!("{name}_{}_m{m}_{}", F::NAME, rule.name()), |bench| {
        bench.iter(|| {
            black_box(backend.cost_and_grad(&theta, Batch::All, &mut grad).unwrap());
            // A tiny rate keeps θ (and so the work) the same from step to step.
            state.apply(&mut theta, &grad, 1e-9);
        });
    });
    g.finish();
}

fn steps(c: &mut Criterion) {
    let sae = NetSpec::sparse_autoencoder(784, 196, 3e-3, Sparsity { target: 0.1, weight: 3.0 }).unwrap();
    let softmax = NetSpec::softmax_regression(784, 10, 1e-4).unwrap();
    let mlp = NetSpec::new(&[784, 256, 128, 10], Activation::Relu, Output::Softmax).unwrap();
    let gd = UpdateRule::Plain;
    step::<f32>(c, "sparse_autoencoder_784_196", sae.clone(), 10_000, false, gd);
    step::<f64>(c, "sparse_autoencoder_784_196", sae, 10_000, false, gd);
    step::<f32>(c, "softmax_784_10", softmax.clone(), 10_000, true, gd);
    step::<f64>(c, "softmax_784_10", softmax, 10_000, true, gd);
    step::<f32>(c, "mlp_784_256_128_10", mlp.clone(), 256, true, UpdateRule::ADAM);
    step::<f64>(c, "mlp_784_256_128_10", mlp.clone(), 256, true, UpdateRule::ADAM);
    step::<f32>(c, "mlp_784_256_128_10", mlp, 10_000, true, UpdateRule::ADAM);
}

criterion_group!(benches, matmul, elementwise, updates, convolution, conv_layers, steps);
criterion_main!(benches);
