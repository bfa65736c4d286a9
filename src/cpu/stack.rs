//! Forward and backward passes of a layer stack (conv2d, pooling, maxout and dense layers,
//! then the dense output layer; [`crate::model::LayerStack`]) on a batch, through the
//! [`crate::layers`] modules (MATH.md, "Layers beyond dense" and "Backpropagation"). Dense
//! networks never come here: they keep [`super::net`]'s path and bits.
//!
//! θ holds every W in layer order, then every b ([`ThetaLayout`]); the output layer is last.
//! Gradients are MATH.md's: ∇W = (1/m) Σ δᵀ A + λW, ∇b = (1/m) Σ δ, summed over the batch in
//! a fixed order of row chunks ([`CHUNK_ROWS`], fixed, never the number of threads), so the
//! bits are the same for any number of threads; chunking also bounds the memory a full-batch
//! evaluation of a large training set needs.

use ndarray::{Array2, ArrayView2, Axis, Zip, s};

use super::net::{self, Forward, Scratch, TargetView, activate, column_sums, derivative_from_value};
use super::{Real, gemm};
use crate::backend::Cost;
use crate::layers::ImageShape;
use crate::layers::conv2d::Conv2d;
use crate::layers::maxout::Maxout;
use crate::layers::pool2d::{Pool2d, PoolKind};
use crate::model::{Activation, Layer, NetSpec, ThetaLayout};
use crate::{Error, Result};

/// Rows evaluated at once: the examples of a batch are taken this many at a time and the
/// chunks' sums added in order.
pub const CHUNK_ROWS: usize = 256;

/// One hidden layer, its geometry checked, with the index `l` of its W and b in θ.
#[derive(Clone, Debug)]
enum Op {
    Dense { l: usize, act: Activation },
    Maxout { l: usize, max: Maxout },
    Conv { l: usize, conv: Conv2d, act: Activation },
    Pool(Pool2d),
}

/// The layers of a stack spec, ready to run.
#[derive(Clone, Debug)]
pub struct Plan {
    ops: Vec<Op>,
    /// θ index of the output layer.
    out_l: usize,
    /// A recurrent stack (rnn/lstm layers first) runs in [`super::sequence`] instead.
    sequence: Option<super::sequence::Plan>,
}

impl Plan {
    /// The plan of a validated stack spec; `None` for a dense spec (no stack).
    pub fn of(spec: &NetSpec) -> Result<Option<Plan>> {
        let Some(stack) = &spec.net else { return Ok(None) };
        if let Some(sequence) = super::sequence::Plan::of(spec)? {
            return Ok(Some(Plan { ops: Vec::new(), out_l: 0, sequence: Some(sequence) }));
        }
        let shapes = stack.shapes()?;
        let mut ops = Vec::with_capacity(stack.layers.len());
        let mut shape = stack.input;
        let mut l = 0;
        for (layer, &next) in stack.layers.iter().zip(&shapes) {
            let image = ImageShape::new(shape.channels, shape.height, shape.width);
            let op = match *layer {
                Layer::Dense { activation, .. } => Op::Dense { l, act: activation },
                Layer::Maxout { units, pieces } => Op::Maxout { l, max: Maxout::new(units, pieces)? },
                Layer::Conv2d { filters, kernel, stride, padding, activation } => {
                    Op::Conv { l, conv: Conv2d::new(image, filters, kernel, stride, padding)?, act: activation }
                }
                Layer::MaxPool { size, stride } => Op::Pool(Pool2d::with_stride(image, PoolKind::Max, size, stride)?),
                Layer::MeanPool { size, stride } => Op::Pool(Pool2d::with_stride(image, PoolKind::Mean, size, stride)?),
                Layer::Rnn { .. } | Layer::Lstm { .. } => {
                    return Err(Error::Shape(format!("{}: a recurrent layer must come first", layer.describe())));
                }
            };
            if layer.has_parameters() {
                l += 1;
            }
            ops.push(op);
            shape = next;
        }
        Ok(Some(Plan { ops, out_l: l, sequence: None }))
    }
}

/// What a hidden layer's forward pass keeps: its output A, for max pooling and maxout the
/// winners, and for a convolution its patch matrices (spent by its backward pass).
struct Kept<F> {
    a: Array2<F>,
    winners: Option<Array2<u32>>,
    patches: Option<Array2<F>>,
}

impl<F: Real> Kept<F> {
    fn of(a: Array2<F>, winners: Option<Array2<u32>>) -> Kept<F> {
        Kept { a, winners, patches: None }
    }
}

/// Hands every buffer of a forward pass back to `scratch`.
fn recycle<F: Real>(scratch: &mut Scratch<F>, kept: Vec<Kept<F>>, fwd: Option<Forward<F>>) {
    for k in kept {
        scratch.recycle(k.a);
        if let Some(p) = k.patches {
            scratch.recycle(p);
        }
    }
    if let Some(fwd) = fwd {
        scratch.recycle_forward(fwd);
    }
}

/// Z = A Wᵀ (no bias) for weight layer `l`, in a buffer from `scratch`.
fn times_weights_t<F: Real>(
    scratch: &mut Scratch<F>,
    layout: &ThetaLayout,
    theta: &[F],
    a: ArrayView2<F>,
    l: usize,
) -> Array2<F> {
    let w = layout.weight(theta, l);
    let mut z = scratch.array(a.nrows(), w.nrows());
    gemm(F::one(), &a, &w.t(), F::zero(), &mut z.view_mut());
    z
}

/// The values of an array that `Scratch` or ndarray made (standard layout).
fn values_mut<F>(a: &mut Array2<F>) -> &mut [F] {
    a.as_slice_mut().expect("a new array is contiguous")
}

/// The hidden layers' outputs on `x`, then the output layer as a [`Forward`] (its
/// activations hold the output alone; softmax keeps its logits). Buffers come from `scratch`
/// ([`recycle`] gives them back).
fn forward_chunk<F: Real>(
    plan: &Plan,
    scratch: &mut Scratch<F>,
    spec: &NetSpec,
    layout: &ThetaLayout,
    theta: &[F],
    x: ArrayView2<F>,
) -> Result<(Vec<Kept<F>>, Forward<F>)> {
    let mut kept: Vec<Kept<F>> = Vec::with_capacity(plan.ops.len());
    for op in &plan.ops {
        let input = kept.last().map_or(x, |k| k.a.view());
        let k = match op {
            Op::Dense { l, act } => {
                let mut z = times_weights_t(scratch, layout, theta, input, *l);
                net::bias_activate(&mut z, layout.bias(theta, *l), *act);
                Kept::of(z, None)
            }
            Op::Maxout { l, max } => {
                let mut z = times_weights_t(scratch, layout, theta, input, *l);
                net::bias_activate(&mut z, layout.bias(theta, *l), Activation::Identity);
                let out = max.forward(z.view())?;
                scratch.recycle(z);
                Kept::of(out.out, Some(out.winners))
            }
            Op::Conv { l, conv, act } => {
                let m = input.nrows();
                let mut a = scratch.array(m, conv.output().len());
                let mut patches = scratch.array(m, conv.patches_per_image());
                let act = *act;
                // The activation runs on each image's output while it is in cache.
                let epilogue = |z: &mut [F]| {
                    if act != Activation::Identity {
                        z.iter_mut().for_each(|v| *v = activate(act, *v));
                    }
                };
                let (w, b) = (layout.weight(theta, *l), layout.bias(theta, *l));
                conv.forward_into(w, b, input, values_mut(&mut patches), values_mut(&mut a), epilogue)?;
                Kept { a, winners: None, patches: Some(patches) }
            }
            Op::Pool(pool) => {
                // Max pooling keeps no winners: the backward pass finds them again in its input.
                let mut out = scratch.array(input.nrows(), pool.output().len());
                let input = input.as_standard_layout();
                pool.forward_into(input.as_slice().expect("standard layout"), values_mut(&mut out))?;
                Kept::of(out, None)
            }
        };
        kept.push(k);
    }
    let input = kept.last().map_or(x, |k| k.a.view());
    let z = times_weights_t(scratch, layout, theta, input, plan.out_l);
    Ok((kept, net::output_forward(scratch, spec, z, layout.bias(theta, plan.out_l))))
}

/// The activations of every layer after the input (hidden layers in order, then the output),
/// as [`crate::Backend::forward`] returns them; rows taken [`CHUNK_ROWS`] at a time.
pub fn forward<F: Real>(
    plan: &Plan,
    spec: &NetSpec,
    layout: &ThetaLayout,
    theta: &[F],
    x: ArrayView2<F>,
) -> Result<Vec<Array2<F>>> {
    if let Some(seq) = &plan.sequence {
        return super::sequence::forward(seq, spec, layout, theta, x, None);
    }
    let mut parts: Vec<Vec<Array2<F>>> = Vec::new();
    let mut scratch = Scratch::default();
    for chunk in x.axis_chunks_iter(Axis(0), CHUNK_ROWS) {
        let (kept, mut fwd) = forward_chunk(plan, &mut scratch, spec, layout, theta, chunk)?;
        let mut acts: Vec<Array2<F>> = kept.into_iter().map(|k| k.a).collect();
        acts.append(&mut fwd.activations);
        parts.push(acts);
    }
    stack_chunks(&parts, plan.ops.len() + 1)
}

/// Every layer's activations of a batch from those of its chunks, in row order: `parts[c][i]`
/// is layer `i`'s output for chunk `c`; no chunks give empty (0 × 0) layers.
pub(super) fn stack_chunks<F: Real>(parts: &[Vec<Array2<F>>], layers: usize) -> Result<Vec<Array2<F>>> {
    (0..layers)
        .map(|i| {
            let views: Vec<ArrayView2<F>> = parts.iter().map(|p| p[i].view()).collect();
            if views.is_empty() {
                return Ok(Array2::zeros((0, 0)));
            }
            ndarray::concatenate(Axis(0), &views).map_err(|e| Error::Shape(e.to_string()))
        })
        .collect()
}

/// The network's output h(x) alone (m × outputs), rows [`CHUNK_ROWS`] at a time, so a
/// large test set never holds every hidden layer at once.
pub fn predict<F: Real>(
    plan: &Plan,
    spec: &NetSpec,
    layout: &ThetaLayout,
    theta: &[F],
    x: ArrayView2<F>,
) -> Result<Array2<F>> {
    if let Some(seq) = &plan.sequence {
        return Ok(super::sequence::predict(seq, spec, layout, theta, x, None)?.0);
    }
    let mut out = Array2::zeros((x.nrows(), spec.outputs()));
    let mut scratch = Scratch::default();
    for (chunk, mut o) in x.axis_chunks_iter(Axis(0), CHUNK_ROWS).zip(out.axis_chunks_iter_mut(Axis(0), CHUNK_ROWS)) {
        let (kept, fwd) = forward_chunk(plan, &mut scratch, spec, layout, theta, chunk)?;
        o.assign(&fwd.activations[0]);
        recycle(&mut scratch, kept, Some(fwd));
    }
    Ok(out)
}

/// The rows `r` of a target view.
fn target_rows<'a, F>(y: TargetView<'a, F>, r: std::ops::Range<usize>) -> TargetView<'a, F> {
    match y {
        TargetView::Inputs => TargetView::Inputs,
        TargetView::Labels(l) => TargetView::Labels(&l[r]),
        TargetView::Values(v) => TargetView::Values(v.slice_move(s![r, ..])),
    }
}

/// J(θ) on the batch (x, y) and, when `grad` is given, ∇J(θ) written into it (every value).
/// The data term is the mean over the batch; weight decay (λ/2)‖W‖² covers every weight
/// tensor (conv, maxout, dense, output), never a bias.
#[allow(clippy::too_many_arguments)]
pub fn cost_and_grad<F: Real>(
    plan: &Plan,
    scratch: &mut Scratch<F>,
    spec: &NetSpec,
    layout: &ThetaLayout,
    theta: &[F],
    x: ArrayView2<F>,
    y: TargetView<F>,
    mut grad: Option<&mut [F]>,
) -> Result<Cost> {
    if let Some(seq) = &plan.sequence {
        return Ok(super::sequence::cost_and_grad(seq, spec, layout, theta, x, y, None, grad)?.0);
    }
    let m = x.nrows();
    let inv_m = F::of(1.0 / m as f64);
    let mut data_sum = 0.0;
    // The first chunk's gradient is written into `grad`; later chunks' are added in order.
    let mut chunk_grad = Vec::new();
    for start in (0..m).step_by(CHUNK_ROWS) {
        let r = start..(start + CHUNK_ROWS).min(m);
        let (xc, yc) = (x.slice(s![r.clone(), ..]), target_rows(y, r.clone()));
        let (mut kept, mut fwd) = forward_chunk(plan, scratch, spec, layout, theta, xc)?;
        let want = grad.is_some();
        // With a gradient, δ is written over the output activations (taken out of fwd).
        let (data, delta) = net::output_cost_and_delta(spec, &mut fwd, xc, yc, want);
        data_sum += data * r.len() as f64;
        if let (Some(g), Some(delta)) = (grad.as_deref_mut(), delta) {
            if start == 0 {
                backward_chunk(plan, scratch, layout, theta, xc, &mut kept, delta, inv_m, g)?;
            } else {
                chunk_grad.resize(g.len(), F::zero());
                backward_chunk(plan, scratch, layout, theta, xc, &mut kept, delta, inv_m, &mut chunk_grad)?;
                g.iter_mut().zip(&chunk_grad).for_each(|(g, &c)| *g += c);
            }
        }
        recycle(scratch, kept, Some(fwd));
    }
    let weight_decay = net::weight_decay_cost(spec, layout, theta);
    if let Some(g) = grad {
        let lambda = F::of(spec.weight_decay);
        let weights = layout.all_weights();
        g[weights.clone()].iter_mut().zip(&theta[weights]).for_each(|(g, &w)| *g += lambda * w);
    }
    Ok(Cost { data: data_sum / m as f64, weight_decay, sparsity: 0.0 })
}

/// The gradient of one chunk's data term, scaled by α = 1/m of the whole batch, written
/// into `g` (every value). Spends the convolutions' kept patch matrices.
#[allow(clippy::too_many_arguments)]
fn backward_chunk<F: Real>(
    plan: &Plan,
    scratch: &mut Scratch<F>,
    layout: &ThetaLayout,
    theta: &[F],
    x: ArrayView2<F>,
    kept: &mut [Kept<F>],
    mut delta: Array2<F>,
    alpha: F,
    g: &mut [F],
) -> Result<()> {
    // ∇W = α δᵀ A;  ∇b = α Σ δ;  δ_prev = δ W  (dense product layers: output, dense, maxout)
    let dense_grads = |g: &mut [F], delta: &Array2<F>, a_prev: ArrayView2<F>, l: usize| {
        let mut gw = layout.weight_mut(g, l);
        gemm(alpha, &delta.t(), &a_prev, F::zero(), &mut gw);
        let sums = column_sums(delta.view());
        Zip::from(layout.bias_mut(g, l)).and(&sums).for_each(|gb, &s| *gb = s * alpha);
    };
    let times_w = |scratch: &mut Scratch<F>, delta: &Array2<F>, l: usize| {
        let w = layout.weight(theta, l);
        let mut d = scratch.array(delta.nrows(), w.ncols());
        gemm(F::one(), &delta.view(), &w, F::zero(), &mut d.view_mut());
        d
    };
    let n = plan.ops.len();
    {
        let a_last = if n == 0 { x } else { kept[n - 1].a.view() };
        dense_grads(g, &delta, a_last, plan.out_l);
    }
    if n == 0 {
        return Ok(());
    }
    let mut next = times_w(scratch, &delta, plan.out_l);
    scratch.recycle(std::mem::replace(&mut delta, next));
    for i in (0..n).rev() {
        let (before, rest) = kept.split_at_mut(i);
        let a_prev = before.last().map_or(x, |k| k.a.view());
        let k = &mut rest[0];
        next = match &plan.ops[i] {
            Op::Dense { l, act } => {
                times_derivative(&mut delta, k.a.view(), *act);
                dense_grads(g, &delta, a_prev, *l);
                if i == 0 {
                    break;
                }
                times_w(scratch, &delta, *l)
            }
            Op::Maxout { l, max } => {
                let winners = k.winners.as_ref().expect("maxout keeps its winners");
                let dz = max.backward(delta.view(), winners.view())?;
                dense_grads(g, &dz, a_prev, *l);
                if i == 0 {
                    break;
                }
                times_w(scratch, &dz, *l)
            }
            Op::Conv { l, conv, act } => {
                let w = layout.weight(theta, *l);
                let mut grad_x = (i > 0).then(|| scratch.array(a_prev.nrows(), a_prev.ncols()));
                let mut by_filter = scratch.array(1, delta.len());
                let (gw_range, gb_range) = (layout.weight_range(*l), layout.bias_range(*l));
                let (lo, hi) = g.split_at_mut(gb_range.start);
                let gw = ndarray::ArrayViewMut2::from_shape(conv.weight_shape(), &mut lo[gw_range])
                    .expect("layout matches the conv's W");
                let gb = ndarray::ArrayViewMut1::from(&mut hi[..gb_range.len()]);
                let patches = k.patches.as_mut().expect("a convolution keeps its patches");
                let (act, a) = (*act, k.a.as_slice().expect("a kept output is contiguous"));
                // δ ⊙ f′(A) as the layer rearranges δ, in one pass.
                let times_derivative = |at: usize, d: &[F], to: &mut [F]| {
                    let a = &a[at..at + d.len()];
                    // One loop per activation, so each is a plain vector loop.
                    let run = |to: &mut [F], f: fn(F) -> F| {
                        to.iter_mut().zip(d).zip(a).for_each(|((t, &d), &a)| *t = d * f(a));
                    };
                    match act {
                        Activation::Identity => to.copy_from_slice(d),
                        Activation::Relu => run(to, |a| derivative_from_value(Activation::Relu, a)),
                        Activation::Sigmoid => run(to, |a| derivative_from_value(Activation::Sigmoid, a)),
                        Activation::Tanh => run(to, |a| derivative_from_value(Activation::Tanh, a)),
                        Activation::LeakyRelu { .. } => {
                            to.iter_mut().zip(d).zip(a).for_each(|((t, &d), &a)| *t = d * derivative_from_value(act, a))
                        }
                    }
                };
                conv.backward_from_patches(
                    w,
                    values_mut(patches),
                    values_mut(&mut delta),
                    times_derivative,
                    alpha,
                    gw,
                    gb,
                    grad_x.as_mut().map(values_mut),
                    values_mut(&mut by_filter),
                )?;
                scratch.recycle(by_filter);
                match grad_x {
                    Some(d) => d,
                    None => break,
                }
            }
            Op::Pool(pool) => {
                if i == 0 {
                    break;
                }
                let mut grad_x = scratch.array(a_prev.nrows(), a_prev.ncols());
                let a_prev = a_prev.as_standard_layout();
                let a_prev = a_prev.as_slice().expect("standard layout");
                pool.backward_into(a_prev, values_mut(&mut delta), values_mut(&mut grad_x))?;
                grad_x
            }
        };
        scratch.recycle(std::mem::replace(&mut delta, next));
    }
    scratch.recycle(delta);
    Ok(())
}

/// δ ← δ ⊙ f′(A), f′ written through the stored activations (identity: nothing to do).
fn times_derivative<F: Real>(delta: &mut Array2<F>, a: ArrayView2<F>, act: Activation) {
    if act != Activation::Identity {
        Zip::from(delta).and(&a).par_for_each(|d, &a| *d *= derivative_from_value(act, a));
    }
}
