//! `wgnn gradcheck`: a random network and random data, the analytic gradient against central
//! differences of the cost.

use anyhow::bail;
use clap::Args;
use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};

use wgnn::gradcheck::{self, EPSILON};
use wgnn::model::{Activation, Init, Output};
use wgnn::{Backend, Batch, Targets};

use super::{BackendArgs, NetArgs};

#[derive(Args, Debug)]
pub struct GradcheckArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// Number of random examples.
    #[arg(long, default_value_t = 10)]
    pub examples: usize,
    /// Seed for θ (uniform ±√(6/(n_in+n_out+1))) and the data.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Exit with an error when the relative difference (the backend's gradient against central
    /// differences of the f64 reference) is above this. Default: 1e-8 for the f64 reference,
    /// where a correct gradient gives about 1e-10 to 1e-9 (the O(ε²) error of central
    /// differences); 1e-4 for f32 backends (CPU f32, GPU), whose rounding dominates.
    #[arg(long)]
    pub tolerance: Option<f64>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

pub fn run(args: GradcheckArgs) -> anyhow::Result<()> {
    let spec = args.net.spec()?;
    if args.examples == 0 {
        bail!("--examples must be at least 1");
    }
    if let Some(t) = args.tolerance
        && !(t > 0.0 && t.is_finite())
    {
        bail!("--tolerance {t}: the tolerance must be a finite number > 0 (usual: 1e-8 in f64, 1e-4 in f32)");
    }
    let params = wgnn::model::ThetaLayout::new(&spec).len();
    if params > 200_000 {
        bail!(
            "this network has {params} parameters; a gradient check costs two cost evaluations per parameter: use a smaller network"
        );
    }
    let mut rng = StdRng::seed_from_u64(args.seed);
    let m = args.examples;
    let theta = Init::Uniform.theta(&spec, args.seed);
    let x = Array2::from_shape_simple_fn((m, spec.inputs()), || rng.random_range(0.0..1.0));
    let (labels, values);
    // A recurrent network with an output at every step takes a label (or target row) per step.
    let steps = spec.output_steps();
    let targets = match spec.output {
        Output::Softmax => {
            labels = (0..m * steps).map(|_| rng.random_range(0..spec.outputs())).collect::<Vec<_>>();
            Targets::Labels(&labels)
        }
        Output::SquaredError(_) if spec.outputs() * steps == spec.inputs() => Targets::Inputs,
        Output::SquaredError(act) => {
            // Targets inside the output's range, as MATH.md asks of regression targets.
            let (lo, hi) = match act {
                Activation::Sigmoid => (0.05, 0.95),
                Activation::Tanh => (-0.95, 0.95),
                _ => (-1.0, 1.0),
            };
            values = Array2::from_shape_simple_fn((m, spec.outputs() * steps), || rng.random_range(lo..hi));
            Targets::Values((&values).into())
        }
        Output::SigmoidBce => {
            // Random 0/1 targets, one column per label.
            values = Array2::from_shape_simple_fn((m, spec.outputs() * steps), || f64::from(rng.random_bool(0.5)));
            Targets::Values((&values).into())
        }
    };

    let mut backend = args.backend.build(spec.clone(), super::Precision::F64)?;
    backend.set_data((&x).into(), targets)?;
    println!("network  {} ({params} parameters)", spec.describe());
    println!("backend  {}", backend.name());
    println!("examples {m} random, seed {}", args.seed);

    // Central differences are taken on the f64 reference: in f32 the rounding of J would
    // swamp a step of 1e-4. A lower-precision backend's analytic gradient is compared with both.
    let mut reference = wgnn::CpuBackend::<f64>::new(spec.clone())?;
    reference.set_data((&x).into(), targets)?;
    let report = gradcheck::check_backend(&mut reference, &theta, Batch::All)?;
    let is_reference = args.backend.is_reference(backend.as_ref());
    let analytic = if is_reference {
        report.analytic.clone()
    } else {
        let mut g = vec![0.0; theta.len()];
        backend.cost_and_grad(&theta, Batch::All, &mut g)?;
        let d = gradcheck::relative_difference(&g, &report.analytic);
        println!("its gradient vs the f64 CPU gradient: relative difference {d:e} (for information, not checked)");
        // Central differences of this backend's own f32 cost: a step of 1e-4 would drown in
        // f32 rounding, so this uses ε = 1e-2 and is a coarse check (expect ~1e-4 to 1e-3).
        let own = gradcheck::numerical_gradient(|t| backend.cost(t, Batch::All).map(|c| c.total()), &theta, 1e-2)?;
        let d_own = gradcheck::relative_difference(&g, &own);
        println!(
            "its gradient vs central differences of its own cost (ε = 1e-2): relative difference {d_own:e} (coarse check: at most 1e-2)"
        );
        if d_own > 1e-2 {
            bail!("the gradient disagrees with central differences of the backend's own cost ({d_own:e} > 1e-2)");
        }
        g
    };
    let worst = analytic
        .iter()
        .zip(&report.numerical)
        .enumerate()
        .max_by(|a, b| (a.1.0 - a.1.1).abs().total_cmp(&(b.1.0 - b.1.1).abs()))
        .map(|(i, (g, n))| (i, *g, *n));
    if let Some((i, g, n)) = worst {
        println!("largest gap at θ[{i}]: analytic {g:e}, numerical {n:e} (ε = {EPSILON:e})");
    }
    // The kink margin recomputes z = A Wᵀ + b layer by layer: dense networks only (a layer
    // stack's ReLU kinks and max-pooling ties are not measured).
    let margin = if spec.has_layer_stack() {
        f64::INFINITY
    } else {
        gradcheck::kink_margin(&mut reference, &theta, (&x).into())?
    };
    if margin < 10.0 * EPSILON {
        // A diagnostic: on stderr, apart from the results.
        eprintln!(
            "warning: a (leaky) ReLU unit has |z| = {margin:e}, within reach of the step ε: its kink can spoil the check; try another --seed"
        );
    }
    let tolerance = args.tolerance.unwrap_or(if is_reference { 1e-8 } else { 1e-4 });
    let d = gradcheck::relative_difference(&analytic, &report.numerical);
    let (verdict, relation) = if d <= tolerance { ("ok", "≤") } else { ("FAILED", ">") };
    let whose = if is_reference { "the f64 gradient" } else { "its gradient" };
    println!(
        "{verdict}: {whose} vs central differences of the f64 cost (ε = {EPSILON:e}): relative difference {d:e} {relation} tolerance {tolerance:e}"
    );
    println!("relative difference {d:e}");
    if d > tolerance || !d.is_finite() {
        bail!("the analytic gradient disagrees with central differences ({d:e} > {tolerance:e})");
    }
    Ok(())
}
