//! `wgnn train lstm|rnn` on text (`--data text:FILE`): a character-level language model
//! trained by truncated BPTT over consecutive text ([`wgnn::train::char_model`]), and `eval` of
//! such a model (bits per character). Thin: parses, calls the library, prints. Sequence
//! classifiers (MNIST row by row, `.npy` sequences) go through the ordinary `train` path; this
//! file only builds their data and network.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};

use wgnn::checkpoint::{Checkpoint, Metadata};
use wgnn::cpu::sequence::Recurrent;
use wgnn::data::sequence::{SequenceReading, SequenceShape};
use wgnn::data::text::{self, CharText, Vocabulary};
use wgnn::data::{DataSource, Dataset};
use wgnn::model::{Activation, InputShape, Layer, LayerStack, NetSpec, Output};
use wgnn::optim::{Control, UpdateRule};
use wgnn::train::char_model::{self, HeldOut, Job, Progress};
use wgnn::train::{CHECKPOINT_FILE, METRICS_FILE, MODEL_FILE, RunFolder};

use super::Exit;
use super::train::{Kind, TrainArgs};

/// The char-LM defaults (issue 16 §5: LSTM 256, T = 64, batch 32, Adam η = 2e-3, clipping at 5),
/// from the one table the estimators read too ([`wgnn::estimator::TEXT_DEFAULTS`]).
pub const TEXT_HIDDEN: usize = wgnn::estimator::TEXT_DEFAULTS.hidden;
pub const TEXT_BPTT: usize = wgnn::estimator::TEXT_DEFAULTS.bptt;
pub const TEXT_BATCH: usize = wgnn::estimator::TEXT_DEFAULTS.batch_size;
pub const TEXT_LEARNING_RATE: f64 = wgnn::estimator::TEXT_DEFAULTS.learning_rate;
pub const TEXT_CLIP_NORM: f64 = wgnn::estimator::TEXT_DEFAULTS.clip_norm;
pub const TEXT_STEPS: usize = wgnn::estimator::TEXT_DEFAULTS.steps;
pub const TEXT_HELD_OUT: f64 = wgnn::estimator::TEXT_DEFAULTS.held_out;
/// Row-MNIST and other sequence classifiers: LSTM 128 (issue 16 §5).
pub const SEQUENCE_HIDDEN: usize = wgnn::estimator::Kind::Lstm.defaults().hidden[0];

/// The file of `--data text:FILE`, if that is what --data says.
pub fn text_file(data: Option<&str>) -> Option<PathBuf> {
    let (kind, path) = data?.trim().split_once(':')?;
    (kind.eq_ignore_ascii_case("text") && !path.is_empty()).then(|| PathBuf::from(path))
}

/// The recurrent layers `train lstm|rnn` asks for: --net (rnn/lstm layers only, e.g.
/// "lstm 128, lstm 128"; a trailing output item is allowed and must be softmax), or one layer
/// per --hidden size of the kind's type (--activation tanh or relu for rnn).
fn recurrent_layers(args: &TrainArgs, default_hidden: usize) -> anyhow::Result<Vec<Layer>> {
    if let Some(text) = &args.net {
        // `--net "lstm 256"` (no output item) reads as the layers alone.
        let parsed = match wgnn::model::parse_net(&format!("{text}, softmax")) {
            Ok(p) => p,
            Err(_) => wgnn::model::parse_net(text).context("--net")?,
        };
        if parsed.output != Output::Softmax {
            bail!(
                "--net ends in {}: give the recurrent layers only (e.g. \"lstm 128, lstm 128\"); a sequence classifier ends in a softmax over its classes, a per-step regressor in --output over its targets' k values",
                parsed.output.name()
            );
        }
        if parsed.layers.is_empty() || !parsed.layers.iter().all(Layer::is_recurrent) {
            bail!("--net for `train {}`: give rnn/lstm layers only, e.g. \"lstm 128, lstm 128\"", kind_word(args.kind));
        }
        return Ok(parsed.layers);
    }
    let sizes = args.hidden.clone().unwrap_or(vec![default_hidden]);
    if sizes.is_empty() || sizes.contains(&0) {
        bail!("--hidden: a recurrent layer needs at least 1 unit");
    }
    let activation = match (args.kind, args.activation.as_deref()) {
        (Kind::Lstm, Some(a)) => bail!("--activation {a}: an lstm's gates are fixed (σ and tanh); it goes with rnn"),
        (_, a) => wgnn::model::Activation::parse(a.unwrap_or("tanh"))?,
    };
    let per_step_below = sizes.len() - 1;
    Ok(sizes
        .iter()
        .enumerate()
        .map(|(i, &units)| {
            let per_step = i < per_step_below;
            match args.kind {
                Kind::Rnn => Layer::Rnn { units, activation, per_step },
                _ => Layer::Lstm { units, per_step },
            }
        })
        .collect())
}

fn kind_word(kind: Kind) -> &'static str {
    if kind == Kind::Rnn { "rnn" } else { "lstm" }
}

/// Sequences for `train lstm|rnn` from `--data` other than text: MNIST (or any images) with
/// `--sequence rows`, or a `.npy` of m × T × n with --labels (one per sequence). Returns the
/// data (x as m × (T·n)) and its shape.
pub fn load_sequences(args: &TrainArgs) -> anyhow::Result<(DataSource, Dataset, SequenceShape)> {
    if let Some(flag) = text_only_flag(args) {
        bail!(
            "{flag} goes with a character model (--data text:FILE); a sequence model on npy: or mnist: data (classifier or per-step regressor) trains by epochs (--iterations)"
        );
    }
    // Whitening and an encoder's features act on a whole row, T·n values: they would mix the
    // steps of a sequence, which the recurrent layers read one step at a time.
    for (flag, given) in [("--whiten", args.whiten.is_some()), ("--features-from", args.features_from.is_some())] {
        if given {
            bail!(
                "{flag} does not go with `train {}`: it transforms a whole row of T × n values and would mix the steps a recurrent layer reads one at a time; leave it out (scale the values per step before saving them)",
                kind_word(args.kind)
            );
        }
    }
    let reading = args.data.sequence.as_deref().map(str::parse::<SequenceReading>).transpose().context("--sequence")?;
    let source: DataSource = args
        .data
        .data
        .as_deref()
        .context("a sequence model needs --data: text:FILE, mnist:DIR --sequence rows, or npy:FILE (m × T × n)")?
        .parse()
        .context("--data")?;
    match (&source, reading) {
        (DataSource::Npy(_), None) if args.data.digits.is_some() => bail!(
            "--digits keeps the examples of some classes of 2-D data; it does not filter sequences (m × T × n): \
             keep the sequences you want in the file, or use --limit"
        ),
        (DataSource::Npy(path), None) => {
            let targets = match args.data.targets.as_deref() {
                None => None,
                Some(_) if args.data.labels.is_some() => bail!(
                    "--labels and --targets both given: a sequence model learns one label per sequence (--labels) \
                     or real targets at every step (--targets, m × T × k), not both"
                ),
                Some(t) => match t.parse::<wgnn::data::TargetSource>().context("--targets")? {
                    wgnn::data::TargetSource::Npy(p) => Some(p),
                    _ => bail!("--targets {t}: per-step targets of sequences are a float .npy of m × T × k (npy:FILE)"),
                },
            };
            // --limit keeps the first N sequences and their labels or targets alike.
            let seq = wgnn::data::sequence::load_npy_sequences_limited(
                path,
                args.data.labels.as_deref(),
                targets.as_deref(),
                args.data.limit,
            )
            .with_context(|| format!("loading --data {source}"))?;
            Ok((source, seq.data, seq.shape))
        }
        (DataSource::Npy(_), Some(_)) => {
            bail!("--sequence rows reads images row by row: a .npy of sequences is already m × T × n; leave it out")
        }
        (_, Some(SequenceReading::Rows)) => {
            if args.data.targets.is_some() {
                bail!(
                    "--targets with --sequence rows: images read row by row take --labels (their digits); per-step targets come with --data npy:FILE (m × T × n)"
                );
            }
            let (source, data) = args.data.load(args.seed)?;
            let seq = wgnn::data::sequence::mnist_rows(data)?;
            Ok((source, seq.data, seq.shape))
        }
        (_, None) => bail!(
            "`train {}` reads sequences: give --data text:FILE, mnist:DIR with --sequence rows, or npy:FILE of shape m × T × n",
            kind_word(args.kind)
        ),
    }
}

/// The first flag given that only a character model takes, if any.
pub fn text_only_flag(args: &TrainArgs) -> Option<&'static str> {
    [
        ("--bptt", args.bptt.is_some()),
        ("--clip-norm", args.clip_norm.is_some()),
        ("--steps", args.steps.is_some()),
        ("--eval-every", args.eval_every.is_some()),
        ("--held-out", args.held_out.is_some()),
    ]
    .into_iter()
    .find_map(|(flag, given)| given.then_some(flag))
}

/// The sequence classifier for `train lstm|rnn` on `shape` sequences of `classes` classes:
/// the recurrent layers, then a softmax at the last step.
pub fn classifier_spec(args: &TrainArgs, shape: SequenceShape, classes: usize) -> anyhow::Result<NetSpec> {
    let mut layers = recurrent_layers(args, SEQUENCE_HIDDEN)?;
    if let Some(Layer::Rnn { per_step, .. } | Layer::Lstm { per_step, .. }) = layers.last_mut() {
        *per_step = false;
    }
    let stack = LayerStack { input: InputShape::sequence(shape.steps, shape.features), layers };
    Ok(NetSpec::stack(stack, classes, Output::Softmax)?.with_weight_decay(args.weight_decay.unwrap_or(0.0))?)
}

/// The per-step regressor for `train lstm|rnn --targets` on `shape` sequences with `k`
/// real targets at every step: the recurrent layers, each giving every step, then a
/// squared-error output of k values at every step (`--output`, identity by default), as
/// [`wgnn::estimator::Recurrent`]'s `fit_per_step` builds it.
pub fn per_step_regressor_spec(args: &TrainArgs, shape: SequenceShape, k: usize) -> anyhow::Result<NetSpec> {
    let mut layers = recurrent_layers(args, SEQUENCE_HIDDEN)?;
    for layer in &mut layers {
        if let Layer::Rnn { per_step, .. } | Layer::Lstm { per_step, .. } = layer {
            *per_step = true;
        }
    }
    let output =
        args.output.as_deref().map(Output::parse).transpose()?.unwrap_or(Output::SquaredError(Activation::Identity));
    if !matches!(output, Output::SquaredError(_)) {
        bail!(
            "--output {}: per-step targets are real values learnt with a squared-error output (identity, sigmoid, tanh or relu)",
            output.name()
        );
    }
    let stack = LayerStack { input: InputShape::sequence(shape.steps, shape.features), layers };
    Ok(NetSpec::stack(stack, k, output)?.with_weight_decay(args.weight_decay.unwrap_or(0.0))?)
}

/// The per-step classifier for `train lstm|rnn --labels Y.npy` with Y of m × T classes: the
/// recurrent layers, each giving every step, then a softmax of `classes` at every step (the
/// cost averaged over the m·T steps, MATH.md "Layers beyond dense"), as
/// [`wgnn::estimator::Recurrent`]'s `fit_per_step_labels` builds it.
pub fn per_step_classifier_spec(args: &TrainArgs, shape: SequenceShape, classes: usize) -> anyhow::Result<NetSpec> {
    let mut layers = recurrent_layers(args, SEQUENCE_HIDDEN)?;
    for layer in &mut layers {
        if let Layer::Rnn { per_step, .. } | Layer::Lstm { per_step, .. } = layer {
            *per_step = true;
        }
    }
    if let Some(output) = args.output.as_deref().map(Output::parse).transpose()?
        && output != Output::Softmax
    {
        bail!(
            "--output {}: labels at every step are learnt with a softmax at every step; leave --output out",
            output.name()
        );
    }
    let stack = LayerStack { input: InputShape::sequence(shape.steps, shape.features), layers };
    Ok(NetSpec::stack(stack, classes, Output::Softmax)?.with_weight_decay(args.weight_decay.unwrap_or(0.0))?)
}

/// Flags of other kinds that mean nothing for a character model, refused by name.
fn check_text_flags(args: &TrainArgs) -> anyhow::Result<()> {
    let ignored = [
        ("--iterations", args.iterations.is_some(), "give --steps (minibatch updates) instead"),
        ("--validation", args.validation != 0.0, "the held-out text is the last --held-out fraction"),
        ("--test-data", args.test_data.is_some(), "use `wgnn eval --model RUN --data text:FILE`"),
        ("--test-fraction", args.test_fraction.is_some(), "the held-out text is the last --held-out fraction"),
        ("--whiten", args.whiten.is_some(), "characters are one-hot"),
        ("--features-from", args.features_from.is_some(), "characters are one-hot"),
        ("--sequence", args.data.sequence.is_some(), "text is read as characters"),
        ("--init", args.init != "uniform", "character models start from the uniform initialisation"),
        (
            "--limit",
            args.data.limit.is_some(),
            "the text is read whole: cut the file, or hold more out with --held-out",
        ),
        ("--labels", args.data.labels.is_some(), "the next character is the label"),
        ("--targets", args.data.targets.is_some(), "the next character is the target"),
        ("--digits", args.data.digits.is_some(), "it filters labelled examples"),
        ("--split", args.data.split.is_some(), "it picks an MNIST split"),
        ("--label-column", args.data.label_column != "last", "it names a CSV column"),
        ("--count", args.data.count.is_some(), "it counts patches"),
    ];
    if let Some((flag, _, why)) = ignored.iter().find(|(_, given, _)| *given) {
        bail!("{flag} does not go with a character model (--data text:FILE): {why}");
    }
    if let Some(choice) = args.optimizer
        && !matches!(choice, super::train::OptimizerChoice::Adam | super::train::OptimizerChoice::Sgd)
    {
        bail!("a character model trains by minibatches over consecutive text: use --optimizer adam or sgd");
    }
    if let Some(f) = args.held_out
        && !(0.0..1.0).contains(&f)
    {
        bail!("--held-out {f}: the held-out fraction must lie in [0, 1) (0: hold nothing out)");
    }
    if let Some(tau) = args.clip_norm
        && !(tau.is_finite() && tau >= 0.0)
    {
        bail!("--clip-norm {tau}: give a finite norm > 0, or 0 to turn clipping off");
    }
    if args.bptt == Some(0) || args.steps == Some(0) || args.batch_size == Some(0) {
        bail!("--bptt, --steps and --batch-size must each be at least 1");
    }
    if matches!(args.backend.backend, super::BackendChoice::Gpu)
        && matches!(args.backend.precision, Some(super::Precision::F64))
    {
        bail!("the GPU computes in f32: leave out --precision f64, or use --backend cpu");
    }
    Ok(())
}

/// `train lstm|rnn --data text:FILE`: the character-level language model; over MPI
/// (`ranks`), each rank takes its block of every minibatch's streams
/// ([`char_model::train_from_on_ranks`]), after every rank agreed to start the job `job_fingerprint`.
pub fn train_text(
    args: &TrainArgs,
    path: &Path,
    folder: RunFolder,
    interrupt: &AtomicBool,
    ranks: Option<&super::ranks::Ranks>,
    job_fingerprint: u64,
) -> anyhow::Result<()> {
    let say = |s: String| {
        if !args.quiet {
            eprintln!("{s}");
        }
    };
    check_text_flags(args)?;
    let out_dir = folder.path().to_path_buf();
    let held_fraction = args.held_out.unwrap_or(TEXT_HELD_OUT);
    let corpus =
        CharText::load(path, held_fraction).with_context(|| format!("loading --data text:{}", path.display()))?;
    let steps = args.bptt.unwrap_or(TEXT_BPTT);
    let vocab = corpus.vocabulary.len();
    let spec = char_model::spec(vocab, steps, recurrent_layers(args, TEXT_HIDDEN)?)?
        .with_weight_decay(args.weight_decay.unwrap_or(0.0))?;
    let net = Recurrent::new(spec.clone())?;
    let params = wgnn::model::ThetaLayout::new(&spec).len();
    let rule = match args.optimizer {
        Some(super::train::OptimizerChoice::Sgd) => {
            let momentum = args.momentum.unwrap_or(0.9);
            if momentum == 0.0 {
                UpdateRule::Plain
            } else {
                UpdateRule::Momentum { momentum, nesterov: args.nesterov.unwrap_or(true) }
            }
        }
        _ => {
            let UpdateRule::Adam { beta1, beta2, epsilon } = UpdateRule::ADAM else { unreachable!() };
            UpdateRule::Adam {
                beta1: args.beta1.unwrap_or(beta1),
                beta2: args.beta2.unwrap_or(beta2),
                epsilon: args.adam_epsilon.unwrap_or(epsilon),
            }
        }
    };
    let clip = args.clip_norm.unwrap_or(TEXT_CLIP_NORM);
    let job = Job {
        batch: args.batch_size.unwrap_or(TEXT_BATCH),
        rule,
        learning_rate: args.learning_rate.unwrap_or(TEXT_LEARNING_RATE),
        clip_norm: (clip > 0.0).then_some(clip),
        steps: args.steps.unwrap_or(TEXT_STEPS),
        eval_every: args.eval_every.unwrap_or(wgnn::estimator::TEXT_DEFAULTS.eval_every),
    };
    // Checked now, before the weights are drawn or anything written.
    let streams = text::StreamBatches::new(corpus.train.len(), job.batch, steps)?;
    // A run to continue is checked before anything is printed or written.
    let (mut theta, from, mut history) = match &args.resume {
        Some(dir) => resume_text(dir, &spec, job.steps)?,
        None => (wgnn::model::Init::Uniform.theta(&spec, args.seed), None, Vec::new()),
    };
    if !corpus.validation.is_empty() {
        text::check_window(corpus.validation.len(), steps, "the held-out text")?;
    }
    let f64_path = matches!(args.backend.precision, Some(super::Precision::F64));
    // --backend gpu: the windows' cost and gradient on the device (auto keeps the CPU); over
    // MPI each rank's GPU (by local rank) takes its block of the streams.
    let mut gpu = match args.backend.backend {
        super::BackendChoice::Gpu => Some(wgnn::GpuBackend::new(spec.clone(), &args.backend.gpu_options())?),
        _ => None,
    };
    // Every check has passed: from here on the lines are progress, not errors.
    say(format!("data     {}", corpus.description));
    say(format!("network  {} ({params} parameters), windows of {steps} characters", spec.describe()));
    let over =
        ranks.map_or(String::new(), |r| format!(" × {} ranks, each with its block of the streams", r.comm().size()));
    match &gpu {
        Some(g) => say(format!("backend  {}{over}", wgnn::Backend::name(g))),
        None => say(format!("backend  cpu {}{over}", if f64_path { "f64" } else { "f32" })),
    }
    say(format!(
        "training {} η = {} for {} updates of {} streams × {steps} characters ({} updates per pass), clipping {}",
        rule.name(),
        job.learning_rate,
        job.steps,
        job.batch,
        streams.len(),
        job.clip_norm.map_or("off".to_string(), |t| format!("at norm {t}"))
    ));
    let unigram = (!corpus.validation.is_empty()).then(|| text::unigram_entropy_bits(&corpus.validation));
    let preprocessing = serde_json::json!({
        "source": format!("text:{}", std::path::absolute(path).unwrap_or(path.to_path_buf()).display()),
        text::VOCABULARY_KEY: corpus.vocabulary.to_json(),
        "held_out": held_fraction,
        "bptt": steps,
    });
    let mut metadata = Metadata {
        wgnn_version: env!("CARGO_PKG_VERSION").into(),
        seed: Some(args.seed),
        preprocessing,
        command: serde_json::to_value(super::train::stored_form(args))?,
        ..Default::default()
    };
    if let Some(p) = &from {
        say(format!("resuming after update {} of {}", p.updates, job.steps));
    }
    let checkpoint_path = out_dir.join(CHECKPOINT_FILE);
    // (0 was refused with the other flags.)
    let every = args.checkpoint_every.filter(|&e| e > 0);
    let mut save_error: Option<wgnn::Error> = None;
    // Checkpoints every N updates are written in the background (one in flight at most); the
    // one where the run stops, and every other file, wait for it first (checkpoint::Writer).
    let writer = wgnn::checkpoint::Writer::new();
    let started = std::time::Instant::now();
    let mut on_step = |s: &char_model::Step, snapshot: &char_model::Snapshot<'_>| {
        let seconds = started.elapsed().as_secs_f64();
        if s.stopping {
            // Another rank asked to stop after this update (over MPI): already reported.
        } else if let Some(h) = s.held_out {
            history.push(serde_json::json!({
                "step": s.step, "train_bits_per_character": s.train_bits,
                "held_out_bits_per_character": h.bits_per_character, "seconds": seconds,
            }));
            say(format!(
                "step {:>6}  train {:.4} bits/char  held-out {:.4} bits/char  ({seconds:.1} s)",
                s.step, s.train_bits, h.bits_per_character
            ));
        } else if s.step == 1 || s.step.is_multiple_of(100) {
            say(format!("step {:>6}  train {:.4} bits/char  ({seconds:.1} s)", s.step, s.train_bits));
        }
        let stop = interrupt.load(Ordering::SeqCst) || s.stopping;
        // A checkpoint every N updates and at the last, and where Ctrl-C stops the run: θ, the
        // optimizer's moments and the carried state, all --resume needs for the same bits.
        let due = every.is_some_and(|e| s.step.is_multiple_of(e) || s.step == job.steps);
        if stop || due {
            let (progress, theta) = snapshot();
            let mut m = metadata.clone();
            m.history = serde_json::Value::Array(history.clone());
            m.extra.insert("updates".into(), s.step.into());
            let saved = if stop {
                writer
                    .wait()
                    .and_then(|()| wgnn::checkpoint::save_state(&spec, &theta, &m, &progress, &checkpoint_path))
            } else {
                writer.save_state(spec.clone(), theta, m, progress, checkpoint_path.clone())
            };
            if let Err(e) = saved {
                save_error = Some(e);
                return Control::Stop;
            }
        }
        if stop { Control::Stop } else { Control::Continue }
    };
    if let Some(r) = ranks {
        r.start(job_fingerprint)?;
    }
    let comm = ranks.map_or(&wgnn::dist::Solo as &dyn wgnn::dist::Collective, |r| r.comm());
    let (train, held, from) = (&corpus.train, &corpus.validation, from.as_ref());
    let result = if let Some(g) = gpu.as_mut() {
        char_model::train_on_gpu_on_ranks(g, &net, &mut theta, train, held, &job, from, comm, &mut on_step)
    } else if f64_path {
        char_model::train_from_on_ranks::<f64>(&net, &mut theta, train, held, &job, from, comm, &mut on_step)
    } else {
        char_model::train_from_on_ranks::<f32>(&net, &mut theta, train, held, &job, from, comm, &mut on_step)
    };
    let seconds = started.elapsed().as_secs_f64();
    if let (None, Err(e)) = (&save_error, writer.wait()) {
        save_error = Some(e);
    }
    if let Some(e) = save_error {
        return Err(anyhow::Error::from(e).context(format!("saving {}", checkpoint_path.display())));
    }
    metadata.history = serde_json::Value::Array(history.clone());
    let (done, held) = match result {
        Ok(r) => r,
        Err(e) => {
            metadata.extra.insert("error".into(), e.to_string().into());
            Checkpoint::new(spec, theta, metadata)?.save(&checkpoint_path)?;
            write_metrics(&out_dir, "diverged", &history, None, seconds, 0)?;
            return Err(Exit::diverged(format!("{e}; θ kept in {}", checkpoint_path.display())).into());
        }
    };
    let finished = done == job.steps;
    if let Some(h) = held {
        metadata.extra.insert("held_out_bits_per_character".into(), h.bits_per_character.into());
    }
    metadata.extra.insert("updates".into(), done.into());
    write_metrics(&out_dir, if finished { "finished" } else { "interrupted" }, &history, held, seconds, done)?;
    if !finished {
        // The checkpoint was written by `on_step` when it stopped the run.
        return Err(Exit::interrupted(format!(
            "interrupted after {done} of {} updates; θ and the optimizer state saved in {}; resume with: wgnn train --resume {}",
            job.steps,
            checkpoint_path.display(),
            out_dir.display()
        ))
        .into());
    }
    Checkpoint::new(spec, theta, metadata)?.save(&out_dir.join(MODEL_FILE))?;
    // Without --checkpoint-every only the model stays (as other runs): a checkpoint left by
    // an interrupted start of this run goes.
    if every.is_none() {
        match std::fs::remove_file(&checkpoint_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                bail!("cannot remove {}: {e}", checkpoint_path.display())
            }
            _ => {}
        }
    }
    if !args.quiet {
        println!("{done} updates in {seconds:.1} s ({:.1} ms per update)", 1000.0 * seconds / done.max(1) as f64);
        if let (Some(h), Some(u)) = (held, unigram) {
            println!("unigram  {u:.4} bits per character on the held-out text (character frequencies alone)");
            println!("{}", held_out_line(&h, steps));
        }
        println!("model    {}", out_dir.join(MODEL_FILE).display());
    }
    Ok(())
}

/// The line that reports held-out bits per character, saying how they were measured.
/// θ, the [`Progress`] and the held-out history of the run in `dir` to continue (`--resume`):
/// its checkpoint (or a model written with one beside it). Refused in one line: another
/// network, a file without optimizer state (a finished run trained without
/// --checkpoint-every, or one that diverged), and more updates done than `--steps`.
fn resume_text(
    dir: &Path,
    spec: &NetSpec,
    steps: usize,
) -> anyhow::Result<(Vec<f64>, Option<Progress>, Vec<serde_json::Value>)> {
    let file = [CHECKPOINT_FILE, MODEL_FILE].into_iter().map(|f| dir.join(f)).find(|f| f.is_file());
    let Some(file) = file else {
        bail!("--resume {}: no {CHECKPOINT_FILE} or {MODEL_FILE} there to continue from", dir.display());
    };
    let ck = Checkpoint::load(&file)?;
    if &ck.spec != spec {
        bail!(
            "--resume {}: the checkpoint holds {} but this run asks for {}: resume with the same network",
            dir.display(),
            ck.spec.describe(),
            spec.describe()
        );
    }
    if ck.metadata.optimizer.is_null() {
        let why = match ck.metadata.extra.get("error").and_then(|e| e.as_str()) {
            Some(e) => format!("the run failed ({e})"),
            None => format!("only a run trained with --checkpoint-every keeps its {CHECKPOINT_FILE} beside the model"),
        };
        bail!(
            "--resume {}: {} keeps no optimizer state, so it cannot be continued: {why}",
            dir.display(),
            file.display()
        );
    }
    let progress: Progress = serde_json::from_value(ck.metadata.optimizer.clone()).with_context(|| {
        format!(
            "--resume {}: the checkpoint's training state is unreadable (written by another wgnn version?)",
            dir.display()
        )
    })?;
    if progress.updates > steps {
        bail!(
            "--resume {}: the run has done {} updates, more than --steps {steps}: give --steps of at least {}",
            dir.display(),
            progress.updates,
            progress.updates
        );
    }
    let history = ck.metadata.history.as_array().cloned().unwrap_or_default();
    Ok((ck.theta, Some(progress), history))
}

fn held_out_line(h: &HeldOut, steps: usize) -> String {
    format!(
        "held-out bits per character {:.4} ({} consecutive windows of {steps} characters, each from a zero state; \
         {} characters scored, the last {} left out)",
        h.bits_per_character, h.windows, h.scored, h.left_out
    )
}

fn write_metrics(
    dir: &Path,
    status: &str,
    history: &[serde_json::Value],
    held: Option<HeldOut>,
    seconds: f64,
    updates: usize,
) -> anyhow::Result<()> {
    let metrics = serde_json::json!({
        "status": status,
        "updates": updates,
        "seconds": seconds,
        "held_out_bits_per_character": held.map(|h| h.bits_per_character),
        "history": history,
    });
    wgnn::atomic::write_bytes(&dir.join(METRICS_FILE), serde_json::to_string_pretty(&metrics)?.as_bytes())?;
    Ok(())
}

/// The vocabulary of a character model, or `None` for any other model.
pub fn vocabulary_of(ck: &Checkpoint) -> anyhow::Result<Option<Vocabulary>> {
    Ok(Vocabulary::from_preprocessing(&ck.metadata.preprocessing)?)
}

/// `eval --model RUN --data text:FILE` of a character model: bits per character on the last
/// `fraction` of FILE (default: the fraction the model held out in training; the whole file
/// when that was 0), in consecutive windows of the model's T from a zero state each.
pub fn eval_text(
    ck: &Checkpoint,
    vocabulary: &Vocabulary,
    data: Option<&str>,
    fraction: Option<f64>,
    json: bool,
) -> anyhow::Result<()> {
    let Some(path) = text_file(data) else {
        bail!("this is a character model: give --data text:FILE to score its bits per character");
    };
    let net = Recurrent::new(ck.spec.clone())?;
    let text = text::read_text(&path)?;
    let stored = ck.metadata.preprocessing.get("held_out").and_then(serde_json::Value::as_f64).unwrap_or(0.0);
    let fraction = fraction.unwrap_or(stored);
    if !(0.0..1.0).contains(&fraction) {
        bail!("--test-fraction {fraction}: the held-out fraction must lie in [0, 1) (0: the whole file)");
    }
    let n = text.chars().count();
    let skip = n - (n as f64 * fraction).round() as usize;
    let part: String = if fraction > 0.0 { text.chars().skip(skip).collect() } else { text };
    let what = if fraction > 0.0 {
        format!("the last {} of {} ({} characters)", fraction, path.display(), n - skip)
    } else {
        format!("{} ({n} characters)", path.display())
    };
    let ids = vocabulary.encode(&part, &what)?;
    let theta: Vec<f32> = ck.theta.iter().map(|&v| v as f32).collect();
    let h = char_model::bits_per_character(&net, &theta, &ids)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "network": ck.spec.describe(), "data": what, "bits_per_character": h.bits_per_character,
                "windows": h.windows, "window": net.steps(), "scored": h.scored, "left_out": h.left_out,
                "zero_state_per_window": true,
            })
        );
    } else {
        println!("network  {}", ck.spec.describe());
        println!("data     {what}");
        println!("{}", held_out_line(&h, net.steps()));
        println!("bits per character {:.6}", h.bits_per_character);
    }
    Ok(())
}

/// A per-step classifier's predictions to `out` (`wgnn predict`): `labels` (m·T, sequence i's
/// step t at i·T + t) and `p` (m × (T·k), step t's k probabilities at columns t·k …). As
/// `.npy` (`npy`): the labels m × T (int64) to F.labels.npy first, then the probabilities
/// (float32) to F.npy, so the second file appears only once the first is there; as CSV, one
/// row per sequence: y0 … y{T−1}, then p{t}_{class}. Each file written atomically.
pub fn write_per_step_labels(
    out: &Path,
    npy: bool,
    labels: &[usize],
    steps: usize,
    p: ndarray::Array2<f64>,
) -> anyhow::Result<()> {
    use ndarray_npy::WriteNpyExt;
    use std::io::Write;
    let m = p.nrows();
    let k = p.ncols() / steps.max(1);
    let y = ndarray::Array2::from_shape_vec((m, steps), labels.iter().map(|&l| l as i64).collect())
        .context("one label per step of each sequence")?;
    let p = p.mapv(|v| v as f32);
    if npy {
        wgnn::atomic::write_with(&out.with_extension("labels.npy"), |w| y.write_npy(w).map_err(|e| e.to_string()))?;
        wgnn::atomic::write_with(out, |w| p.write_npy(w).map_err(|e| e.to_string()))?;
        return Ok(());
    }
    wgnn::atomic::write_with(out, |w| {
        let io = |e: std::io::Error| e.to_string();
        let mut header: Vec<String> = (0..steps).map(|t| format!("y{t}")).collect();
        header.extend((0..steps).flat_map(|t| (0..k).map(move |c| format!("p{t}_{c}"))));
        writeln!(w, "{}", header.join(",")).map_err(io)?;
        for (labels, probabilities) in y.rows().into_iter().zip(p.rows()) {
            let cells: Vec<String> =
                labels.iter().map(i64::to_string).chain(probabilities.iter().map(f32::to_string)).collect();
            writeln!(w, "{}", cells.join(",")).map_err(io)?;
        }
        Ok(())
    })?;
    Ok(())
}
