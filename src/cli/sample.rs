//! `wgnn sample`: text drawn from a character-level language model
//! ([`wgnn::train::char_model::sample`]), printed on stdout: the prime, then the characters
//! drawn. The same model, seed, temperature and prime give the same text.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use rand::{RngExt, SeedableRng, rngs::StdRng};

use wgnn::cpu::sequence::Recurrent;
use wgnn::train::char_model;

#[derive(Args, Debug)]
pub struct SampleArgs {
    /// The character model: a model.safetensors file or its run folder (`train lstm --data
    /// text:FILE`).
    #[arg(long)]
    pub model: PathBuf,
    /// Characters to draw after the prime.
    #[arg(long, default_value_t = 500, value_parser = length)]
    pub length: usize,
    /// Temperature τ > 0: the next character is drawn with probability ∝ p^(1/τ); below 1
    /// favours likely characters, 1 is the model's own distribution.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Seed of the draws: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Text the model reads first (every character must be in its vocabulary); the sample
    /// continues it. Default: none (the first character is drawn uniformly).
    #[arg(long)]
    pub prime: Option<String>,
}

/// --length: at most 10⁷ characters.
fn length(text: &str) -> Result<usize, String> {
    super::bounded(text, 0, 10_000_000, "the length in characters")
}

pub fn run(args: SampleArgs) -> anyhow::Result<()> {
    if !(args.temperature.is_finite() && args.temperature > 0.0) {
        bail!(
            "--temperature {}: the temperature τ must be a finite number > 0 (1 is the model's own)",
            args.temperature
        );
    }
    let ck = super::inspect::load_model(&args.model)?;
    let Some(vocabulary) = super::sequence::vocabulary_of(&ck)? else {
        bail!(
            "--model {}: {} is not a character model (it stores no vocabulary): train one with `wgnn train lstm --data text:FILE`",
            args.model.display(),
            ck.spec.describe()
        );
    };
    let net = Recurrent::new(ck.spec.clone()).with_context(|| format!("--model {}", args.model.display()))?;
    let prime = args.prime.as_deref().unwrap_or("");
    let prime_ids = vocabulary.encode(prime, "--prime")?;
    let theta: Vec<f32> = ck.theta.iter().map(|&v| v as f32).collect();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut uniform = || rng.random::<f64>();
    let drawn = char_model::sample(&net, &theta, &prime_ids, args.length, args.temperature, &mut uniform)?;
    println!("{prime}{}", vocabulary.decode(&drawn));
    Ok(())
}
