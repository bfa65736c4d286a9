//! Where the time of one CPU f32 training step of `wgnn train cnn`'s LeNet goes (issue 15 §5):
//! 1×28×28 → conv 20×5×5 relu, max pool 2, conv 50×5×5 relu, max pool 2, dense 500 relu,
//! softmax 10; batch 64, cost + gradient + Adam, as `wgnn bench --cnn` times it.
//!
//! Prints the whole step (the backend's `cost_and_grad` and the Adam update), then its parts:
//! θ's f64 → f32 conversion and check, the layer stack's cost and gradient in f32
//! (`cpu::stack::cost_and_grad`), the gradient's widening to f64, Adam; then each layer's
//! forward and backward alone through the `layers` API on the same shapes. Times are the
//! minimum and the median of `WGNN_STEP_REPEATS` runs (default 100) after a warm-up.
//! `WGNN_STEP_SECONDS=S` instead loops the whole step for S seconds (for `perf record`).
//!
//! Run: `WGNN_DATA_DIR=../shared/data cargo run --release --example cnn_step` (the first 64
//! MNIST training images; without `WGNN_DATA_DIR`, random pixels).

use std::time::Instant;

use ndarray::{Array1, Array2};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use wgnn::cpu::net::{Scratch, TargetView};
use wgnn::cpu::{gemm, stack};
use wgnn::data::{Mnist, Split};
use wgnn::layers::ImageShape;
use wgnn::layers::conv2d::Conv2d;
use wgnn::layers::pool2d::{Pool2d, PoolKind};
use wgnn::model::{Init, InputShape, LayerStack, NetSpec, ThetaLayout, parse_net};
use wgnn::optim::{UpdateRule, UpdateState};
use wgnn::{Backend, Batch, CpuBackend, Result, Targets};

const LENET: &str = "conv 20x5x5 relu, maxpool 2, conv 50x5x5 relu, maxpool 2, dense 500 relu, softmax";
const M: usize = 64;

/// (min, median) seconds of `repeats` calls of `f` after one warm-up call.
fn time(repeats: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut t: Vec<f64> = (0..repeats)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[0], t[t.len() / 2])
}

fn row(name: &str, (min, median): (f64, f64)) {
    println!("{name:<44} {:>8.3} ms {:>8.3} ms", min * 1e3, median * 1e3);
}

fn random(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((rows, cols), || rng.random_range(0.0..1.0))
}

fn main() -> Result<()> {
    let env = |name| std::env::var(name).ok();
    let repeats: usize = env("WGNN_STEP_REPEATS").and_then(|s| s.parse().ok()).unwrap_or(100);
    let seconds: f64 = env("WGNN_STEP_SECONDS").and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let (x, labels) = match std::env::var_os("WGNN_DATA_DIR") {
        Some(dir) => {
            let mnist = Mnist::load(&std::path::Path::new(&dir).join("mnist"), Split::Train)?.take(M);
            (mnist.images, mnist.labels)
        }
        None => (random(M, 784, 3), (0..M).map(|i| i % 10).collect()),
    };
    let parsed = parse_net(LENET)?;
    let spec =
        NetSpec::stack(LayerStack { input: InputShape::image(1, 28, 28), layers: parsed.layers }, 10, parsed.output)?;
    let layout = ThetaLayout::new(&spec);
    let mut backend = CpuBackend::<f32>::new(spec.clone())?;
    backend.set_data((&x).into(), Targets::Labels(&labels))?;
    let mut theta = Init::Uniform.theta(&spec, 0);
    let mut grad = vec![0.0; theta.len()];
    let mut adam = UpdateState::new(UpdateRule::ADAM, theta.len());
    let mut step = || {
        backend.cost_and_grad(&theta, Batch::All, &mut grad).expect("a step");
        // A tiny rate keeps θ (and so the work) the same from step to step.
        adam.apply(&mut theta, &grad, 1e-9);
    };
    if seconds > 0.0 {
        let start = Instant::now();
        let mut steps = 0;
        while start.elapsed().as_secs_f64() < seconds {
            step();
            steps += 1;
        }
        println!(
            "{steps} steps in {:.2} s: {:.3} ms a step",
            seconds,
            start.elapsed().as_secs_f64() / steps as f64 * 1e3
        );
        return Ok(());
    }
    println!("{:<44} {:>11} {:>11}", "LeNet, batch 64, f32", "min", "median");
    row("whole step (cost_and_grad + Adam)", time(repeats, &mut step));

    let theta64 = Init::Uniform.theta(&spec, 0);
    row(
        "θ f64 → f32 with the finiteness check",
        time(repeats, || {
            let t: Vec<f32> = theta64.iter().map(|&v| v as f32).collect();
            assert!(theta64.iter().all(|v| v.is_finite()));
            std::hint::black_box(t);
        }),
    );
    let theta32: Vec<f32> = theta64.iter().map(|&v| v as f32).collect();
    let plan = stack::Plan::of(&spec)?.expect("a stack");
    let mut scratch = Scratch::default();
    let mut g32 = vec![0.0f32; theta32.len()];
    row(
        "stack::cost_and_grad (f32)",
        time(repeats, || {
            stack::cost_and_grad(
                &plan,
                &mut scratch,
                &spec,
                &layout,
                &theta32,
                x.view(),
                TargetView::Labels(&labels),
                Some(&mut g32),
            )
            .expect("a pass");
        }),
    );
    row(
        "stack::cost_and_grad, cost only",
        time(repeats, || {
            stack::cost_and_grad(
                &plan,
                &mut scratch,
                &spec,
                &layout,
                &theta32,
                x.view(),
                TargetView::Labels(&labels),
                None,
            )
            .expect("a pass");
        }),
    );
    let mut g64 = vec![0.0f64; g32.len()];
    row("∇J f32 → f64", time(repeats, || g64.iter_mut().zip(&g32).for_each(|(o, &v)| *o = v as f64)));
    let mut adam = UpdateState::new(UpdateRule::ADAM, theta64.len());
    let mut t = theta64.clone();
    row("Adam over 431,080 values (f64)", time(repeats, || adam.apply(&mut t, &g64, 1e-9)));

    // The layers alone, on the step's shapes.
    let conv1 = Conv2d::new(ImageShape::new(1, 28, 28), 20, 5, 1, 0)?;
    let pool1 = Pool2d::new(conv1.output(), PoolKind::Max, 2)?;
    let conv2 = Conv2d::new(pool1.output(), 50, 5, 1, 0)?;
    let pool2 = Pool2d::new(conv2.output(), PoolKind::Max, 2)?;
    let relu = |z: &mut [f32]| z.iter_mut().for_each(|v| *v = v.max(0.0));
    for (name, conv, input, dx) in
        [("conv1", conv1, x.clone(), false), ("conv2", conv2, random(M, conv2.input.len(), 5), true)]
    {
        let (f, depth) = conv.weight_shape();
        let w = random(f, depth, 11).mapv(|v| v - 0.5);
        let b = Array1::from_elem(f, 0.01f32);
        let mut patches = vec![0.0f32; M * conv.patches_per_image()];
        let mut out = vec![0.0f32; M * conv.output().len()];
        row(
            &format!("{name} forward_into (+ relu)"),
            time(repeats, || {
                conv.forward_into(w.view(), b.view(), input.view(), &mut patches, &mut out, relu).expect("fits");
            }),
        );
        let delta = random(M, conv.output().len(), 13);
        let (mut gw, mut gb) = (Array2::<f32>::zeros((f, depth)), Array1::<f32>::zeros(f));
        let mut gx = vec![0.0f32; if dx { M * conv.input.len() } else { 0 }];
        let mut by_filter = vec![0.0f32; M * conv.output().len()];
        let mut p = patches.clone();
        row(
            &format!("{name} backward_from_patches (× relu′)"),
            time(repeats, || {
                p.copy_from_slice(&patches);
                let times_derivative = |at: usize, d: &[f32], to: &mut [f32]| {
                    to.iter_mut()
                        .zip(d)
                        .zip(&out[at..at + d.len()])
                        .for_each(|((t, &d), &a)| *t = if a > 0.0 { d } else { 0.0 })
                };
                let gx = dx.then_some(&mut gx[..]);
                conv.backward_from_patches(
                    w.view(),
                    &mut p,
                    delta.as_slice().expect("contiguous"),
                    times_derivative,
                    1.0 / M as f32,
                    gw.view_mut(),
                    gb.view_mut(),
                    gx,
                    &mut by_filter,
                )
                .expect("fits");
            }),
        );
        row(
            &format!("  (copy of the patch matrix, {} values)", patches.len()),
            time(repeats, || p.copy_from_slice(&patches)),
        );
    }
    for (name, pool) in [("pool1", pool1), ("pool2", pool2)] {
        let a = random(M, pool.input.len(), 7);
        let a = a.as_slice().expect("contiguous");
        let mut out = vec![0.0f32; M * pool.output().len()];
        row(&format!("{name} forward_into"), time(repeats, || pool.forward_into(a, &mut out).expect("fits")));
        let delta = random(M, pool.output().len(), 8);
        let mut g = vec![0.0f32; a.len()];
        row(
            &format!("{name} backward_into"),
            time(repeats, || pool.backward_into(a, delta.as_slice().expect("contiguous"), &mut g).expect("fits")),
        );
    }
    let (a, w1, w2) = (random(M, 800, 1), random(500, 800, 2), random(10, 500, 3));
    let mut z1 = Array2::<f32>::zeros((M, 500));
    let mut z2 = Array2::<f32>::zeros((M, 10));
    row("dense 800→500 forward product", time(repeats, || gemm(1.0, &a.view(), &w1.t(), 0.0, &mut z1.view_mut())));
    row("output 500→10 forward product", time(repeats, || gemm(1.0, &z1.view(), &w2.t(), 0.0, &mut z2.view_mut())));
    let mut gw1 = Array2::<f32>::zeros((500, 800));
    row("dense ∇W = δᵀA (500×64 by 64×800)", time(repeats, || gemm(1.0, &z1.t(), &a.view(), 0.0, &mut gw1.view_mut())));
    let mut da = Array2::<f32>::zeros((M, 800));
    row("dense δW (64×500 by 500×800)", time(repeats, || gemm(1.0, &z1.view(), &w1.view(), 0.0, &mut da.view_mut())));
    Ok(())
}
