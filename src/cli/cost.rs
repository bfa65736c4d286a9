//! `wgnn cost`: J(θ) on data from .npy files, optionally writing ∇J(θ).

use anyhow::Context;
use clap::Args;

use wgnn::{Batch, Targets, npy};

use super::{BackendArgs, NetArgs, read_theta};

#[derive(Args, Debug)]
pub struct CostArgs {
    #[command(flatten)]
    pub net: NetArgs,
    /// Parameters θ as a .npy vector (float64 or float32): all weights (each out × in,
    /// row-major) in layer order, then all biases.
    #[arg(long)]
    pub theta: String,
    /// Examples, one per row: npy:FILE (float32 or float64), csv:FILE (numbers only), or a
    /// bare .npy or .csv file.
    #[arg(long)]
    pub data: String,
    /// Class labels 0..k−1, one per row (for --output softmax): npy:FILE (an integer
    /// vector), csv:FILE (one per line), or a bare .npy or .csv file.
    #[arg(long, conflicts_with = "targets")]
    pub labels: Option<String>,
    /// Real-valued targets (rows × outputs), in the same forms as --data. Without --labels or
    /// --targets the network is an autoencoder: the target is the input.
    #[arg(long)]
    pub targets: Option<String>,
    /// Also compute the gradient ∇J(θ) and write it here as a float64 .npy vector.
    #[arg(long)]
    pub grad_out: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub backend: BackendArgs,
}

pub fn run(args: CostArgs) -> anyhow::Result<()> {
    let spec = args.net.spec()?;
    if let Some(g) = &args.grad_out {
        let inputs = [Some(&args.theta), Some(&args.data), args.labels.as_ref(), args.targets.as_ref()];
        super::refuse_overwriting_inputs("--grad-out", g, inputs.into_iter().flatten().map(String::as_str))?;
    }
    let theta = read_theta(&args.theta).context("--theta")?;
    let x = matrix(&args.data).context("--data")?;
    let labels = args
        .labels
        .as_deref()
        .map(|p| wgnn::data::read_class_numbers(std::path::Path::new(p)).context("--labels"))
        .transpose()?;
    let values = args.targets.as_deref().map(|p| matrix(p).context("--targets")).transpose()?;
    let targets = match (&labels, &values) {
        (Some(l), _) => Targets::Labels(l),
        (_, Some(v)) => Targets::Values(v.inputs()),
        _ => Targets::Inputs,
    };

    let mut backend = args.backend.build(spec.clone(), super::Precision::F64)?;
    backend.set_data(x.inputs(), targets)?;
    println!("network  {}", spec.describe());
    println!("backend  {}", backend.name());
    println!("examples {}", backend.num_examples());
    let cost = match &args.grad_out {
        Some(path) => {
            let mut grad = vec![0.0; theta.len()];
            // Checked before anything is written: a cost or gradient that overflowed is an
            // error, never a file of NaN beside a printed `cost inf`.
            let cost = backend.cost_and_grad(&theta, Batch::All, &mut grad)?.finite(&backend.name())?;
            wgnn::backend::check_gradient_finite(&grad, &backend.name())?;
            npy::write_vector(path, &grad.into()).context("writing the gradient")?;
            println!("gradient written to {}", path.display());
            cost
        }
        // `cost` refuses a J that is not finite (Cost::finite).
        None => backend.cost(&theta, Batch::All)?,
    };
    println!("terms    data {}  weight decay {}  sparsity {}", cost.data, cost.weight_decay, cost.sparsity);
    println!("cost {}", cost.total());
    Ok(())
}

/// A matrix from the file `arg` names ([`wgnn::data::FileArg`]): a `.npy` as it is, a CSV of
/// numbers only (no label column) as float32.
fn matrix(arg: &str) -> anyhow::Result<npy::Matrix> {
    let file = wgnn::data::FileArg::parse(arg, Some(wgnn::data::FileFormat::Npy))?;
    if !file.path.exists() {
        anyhow::bail!("{}: no such file", file.path.display());
    }
    Ok(match file.format {
        wgnn::data::FileFormat::Npy => npy::read_matrix(&file.path)?,
        wgnn::data::FileFormat::Csv => {
            npy::Matrix::F32(wgnn::data::csv::read_csv(&file.path, wgnn::data::LabelColumn::None)?.0)
        }
    })
}
