//! A character-level language model on the King James Bible through the estimator API
//! ([`wgnn::CharModel`]): an LSTM of 256 units over windows of 64 characters, Adam η = 2e-3,
//! gradients clipped at norm 5 (the defaults of `wgnn train lstm --data text:FILE`), held-out
//! bits per character on the last 10% of the text, then 300 characters sampled at τ = 0.8
//! after "And God said". In memory: the model is saved only to the folder named by the
//! second argument, which `wgnn sample --model DIR` and `wgnn eval` then read.
//!
//! Run: `WGNN_DATA_DIR=../shared/data cargo run --release --example char_model [-- STEPS
//! [OUT] [CHARACTERS]]` (STEPS minibatch updates, default 2000; CHARACTERS: train on the first
//! this many characters of the text, default all 4.2 million).

mod common;

use wgnn::{CharModel, Result};

fn main() {
    common::main(run)
}

fn run() -> Result<()> {
    let arg = |i: usize| std::env::args().nth(i);
    let number = |i: usize, default: usize| {
        arg(i)
            .map_or(Ok(default), |a| a.parse())
            .map_err(|_| wgnn::Error::Data(format!("argument {i} is a count (updates, characters), not {:?}", arg(i))))
    };
    let steps = number(1, 2000)?;
    let text = wgnn::data::text::read_text(&common::data_dir()?.join("text/kjv.txt.gz"))?;
    let text: String = match arg(3) {
        Some(_) => text.chars().take(number(3, 0)?).collect(),
        None => text,
    };
    let model = CharModel::lstm(256).steps(steps).eval_every(steps.div_ceil(4)).seed(1);
    let started = std::time::Instant::now();
    let model = model.fit_text_with(
        &text,
        &mut |s| {
            if let Some(h) = s.held_out {
                eprintln!("update {:>5}: held-out {:.4} bits per character", s.step, h.bits_per_character);
            }
        },
        &std::sync::atomic::AtomicBool::new(false),
    )?;
    let held = model.held_out().expect("the last 10% is held out");
    println!(
        "{} updates in {:.0} s on {}: held-out {:.4} bits per character ({} characters scored)",
        model.updates(),
        started.elapsed().as_secs_f64(),
        model.backend_used(),
        held.bits_per_character,
        held.scored
    );
    let prime = "And God said";
    println!("{prime}{}", model.sample(300, 0.8, 7, prime)?);
    if let Some(out) = arg(2) {
        println!("wrote {}", model.save(out)?.display());
    }
    Ok(())
}
