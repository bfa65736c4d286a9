//! `wgnn train stacked`: the UFLDL stacked autoencoder. Sparse autoencoders are trained
//! greedily, each on the previous one's hidden activations; a softmax layer is trained on the
//! last features; then the whole network (sigmoid hidden layers, softmax output) is fine-tuned
//! by backpropagation from those weights. Each stage writes its own run folder under the
//! output folder, and `metrics.json` there compares accuracy before and after fine-tuning.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use ndarray::Array2;
use serde_json::json;

use wgnn::data::Dataset;
use wgnn::model::{Activation, Init, NetSpec, Output, Sparsity, ThetaLayout};
use wgnn::optim::{Lbfgs, Method};
use wgnn::train::{TrainJob, TrainOutcome, accuracy, hidden_features, train};
use wgnn::{Backend, Targets};

use super::train::TrainArgs;

/// One stage: trains `spec` on (x, labels) with L-BFGS and returns the outcome.
#[allow(clippy::too_many_arguments)]
fn stage(
    args: &TrainArgs,
    spec: NetSpec,
    iterations: usize,
    x: &Array2<f32>,
    labels: Option<&[usize]>,
    test: Option<(Array2<f32>, Vec<usize>)>,
    initial_theta: Option<Vec<f64>>,
    dir: &Path,
) -> anyhow::Result<(TrainOutcome, Box<dyn Backend>)> {
    let params = ThetaLayout::new(&spec).len();
    let method = Method::Lbfgs(Lbfgs::default().with_memory(if params <= 50_000 { 100 } else { 10 }));
    if !args.quiet {
        eprintln!("stage    {} → {}", spec.describe(), dir.display());
    }
    let (mut backend, _) = args.backend.build_quietly(spec.clone(), super::Precision::F32)?;
    let job = TrainJob {
        stop: method.default_stop().with_max_iterations(iterations),
        spec,
        method,
        init: Init::Uniform,
        seed: args.seed,
        initial_theta,
        resume: None,
        validation_fraction: 0.0,
        patience: None,
        checkpoint_every: args.checkpoint_every,
        out_dir: dir.to_path_buf(),
        data_description: "stacked autoencoder stage".into(),
        image_shape: None,
        preprocessing: serde_json::Value::Null,
        test_set: test.map(|(x, l)| (x, l.into())),
    };
    let never = AtomicBool::new(false);
    let y = labels.map_or(Targets::Inputs, Targets::Labels);
    let outcome = train(job, backend.as_mut(), x, y, &mut |_| {}, &never)?;
    if !args.quiet {
        eprintln!("         final cost {} after {} iterations", outcome.final_cost, outcome.summary.iterations);
    }
    Ok((outcome, backend))
}

pub fn run(
    args: &TrainArgs,
    data: &Dataset,
    test: Option<(Array2<f32>, Vec<usize>)>,
    out: &Path,
) -> anyhow::Result<()> {
    let labels = data.labels.as_deref().context("a stacked autoencoder ends in a softmax: it needs labelled data")?;
    let classes = data.num_classes().context("labels")?;
    let hidden = args.hidden.clone().unwrap_or(vec![200, 200]);
    let rho = args.sparsity.unwrap_or(0.1);
    let lambda = args.weight_decay.unwrap_or(3e-3);
    let iterations = args.iterations.unwrap_or(400);
    let sparsity = (rho > 0.0).then_some(Sparsity { target: rho, weight: args.sparsity_weight });
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    // Greedy layer-wise pretraining.
    let mut features = data.x.clone();
    let mut test_features = test.as_ref().map(|t| t.0.clone());
    let mut layers_theta = Vec::new();
    for (i, &h) in hidden.iter().enumerate() {
        let n = features.ncols();
        let spec = NetSpec::new(&[n, h, n], Activation::Sigmoid, Output::SquaredError(Activation::Sigmoid))?
            .with_weight_decay(lambda)?
            .with_sparsity(sparsity)?;
        let (outcome, mut backend) =
            stage(args, spec.clone(), iterations, &features, None, None, None, &out.join(format!("layer{}", i + 1)))?;
        features = hidden_features(backend.as_mut(), &outcome.theta, &features)?;
        if let Some(t) = test_features.as_mut() {
            *t = hidden_features(backend.as_mut(), &outcome.theta, t)?;
        }
        layers_theta.push((spec, outcome.theta));
    }

    // Softmax on the last features (λ = 1e-4, 100 iterations as in the exercise).
    let softmax_spec = NetSpec::softmax_regression(features.ncols(), classes, 1e-4)?;
    let test_on_features = test.as_ref().zip(test_features.as_ref()).map(|(t, f)| (f.clone(), t.1.clone()));
    let (softmax, _) =
        stage(args, softmax_spec.clone(), 100, &features, Some(labels), test_on_features, None, &out.join("softmax"))?;

    // The whole stack as one network, its θ assembled from the stages.
    let mut sizes = vec![data.num_features()];
    sizes.extend(&hidden);
    sizes.push(classes);
    let stack = NetSpec::new(&sizes, Activation::Sigmoid, Output::Softmax)?.with_weight_decay(1e-4)?;
    let layout = ThetaLayout::new(&stack);
    let mut theta = vec![0.0; layout.len()];
    let parts = layers_theta
        .iter()
        .map(|(s, t)| (ThetaLayout::new(s), t))
        .chain([(ThetaLayout::new(&softmax_spec), &softmax.theta)]);
    for (l, (part, t)) in parts.enumerate() {
        theta[layout.weight_range(l)].copy_from_slice(&t[part.weight_range(0)]);
        theta[layout.bias_range(l)].copy_from_slice(&t[part.bias_range(0)]);
    }
    let mut before = None;
    if let Some((x_test, y_test)) = &test {
        let mut cpu = wgnn::CpuBackend::<f32>::new(stack.clone())?;
        before = Some(accuracy(&cpu.classify(&theta, x_test.into())?, y_test));
    }
    let (finetuned, _) = stage(
        args,
        stack.clone(),
        iterations,
        &data.x,
        Some(labels),
        test.clone(),
        Some(theta),
        &out.join("finetune"),
    )?;

    let summary = json!({
        "network": stack.describe(),
        "data": data.description,
        "train_examples": data.len(),
        "test_examples": test.as_ref().map(|t| t.1.len()),
        "hidden": hidden,
        "sparsity": rho,
        "weight_decay_pretraining": lambda,
        "weight_decay_finetuning": 1e-4,
        "iterations": iterations,
        "test_accuracy_before_finetuning": before,
        "test_accuracy": finetuned.test_accuracy,
        "final_cost": finetuned.final_cost,
    });
    let path = out.join("metrics.json");
    let text = serde_json::to_string_pretty(&summary)?;
    wgnn::npy::write_atomic(&path, |w| std::io::Write::write_all(w, text.as_bytes()).map_err(|e| e.to_string()))?;
    if !args.quiet {
        if let (Some(b), Some(a)) = (before, finetuned.test_accuracy) {
            eprintln!("test accuracy before fine-tuning {:.2}%, after {:.2}%", 100.0 * b, 100.0 * a);
        }
        eprintln!("wrote    {}", path.display());
    }
    Ok(())
}
