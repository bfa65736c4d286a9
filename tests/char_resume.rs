//! Character models stopped and continued (issue 16, `--checkpoint-every` and `--resume` for
//! `train lstm|rnn --data text:FILE`): a run interrupted and resumed ends on the bits of an
//! uninterrupted one, in the library (f32 and f64, across a new pass over the text) and from
//! the CLI (a real SIGINT, then `--resume DIR` alone); the refusals are one line each.

use std::io::BufRead;
use std::path::Path;

use assert_cmd::Command;
use wgnn::checkpoint::{Checkpoint, Metadata, save_state};
use wgnn::cpu::Real;
use wgnn::cpu::sequence::Recurrent;
use wgnn::data::text::CharText;
use wgnn::model::{Init, parse_net};
use wgnn::optim::{Control, UpdateRule};
use wgnn::train::char_model::{self, Job, Progress};

const TEXT: &str = "the quick brown fox jumps over the lazy dog; ";

fn job(steps: usize) -> Job {
    Job { batch: 4, rule: UpdateRule::ADAM, learning_rate: 1e-2, clip_norm: Some(1.0), steps, eval_every: 4 }
}

/// θ after `steps` updates, uninterrupted; and the same run stopped after `stop` updates, its
/// progress written to a checkpoint file and read back, then continued to `steps`.
fn both<F: Real>(steps: usize, stop: usize) -> (Vec<f64>, Vec<f64>, usize) {
    let corpus = CharText::from_text(&TEXT.repeat(5), 0.1, "test text").unwrap();
    let layers = parse_net("lstm 6, lstm 5, softmax").unwrap().layers;
    let spec = char_model::spec(corpus.vocabulary.len(), 8, layers).unwrap();
    let net = Recurrent::new(spec.clone()).unwrap();
    let theta0 = Init::Uniform.theta(&spec, 7);
    let per_epoch = wgnn::data::text::StreamBatches::new(corpus.train.len(), 4, 8).unwrap().len();

    let mut whole = theta0.clone();
    let (done, _) =
        char_model::train::<F>(&net, &mut whole, &corpus.train, &corpus.validation, &job(steps), &mut |_| {
            Control::Continue
        })
        .unwrap();
    assert_eq!(done, steps);

    let mut first = theta0.clone();
    let mut saved = None;
    let (done, _) = char_model::train_from::<F>(
        &net,
        &mut first,
        &corpus.train,
        &corpus.validation,
        &job(steps),
        None,
        &mut |s, snapshot| {
            if s.step < stop {
                return Control::Continue;
            }
            saved = Some(snapshot());
            Control::Stop
        },
    )
    .unwrap();
    assert_eq!(done, stop);
    let (progress, theta) = saved.unwrap();
    assert_eq!(progress.updates, stop);
    assert_eq!(theta, first, "the snapshot's θ is the run's");
    // Through a file, as --resume reads it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checkpoint.safetensors");
    save_state(&spec, &theta, &Metadata::default(), &progress, &file).unwrap();
    let ck = Checkpoint::load(&file).unwrap();
    let back: Progress = serde_json::from_value(ck.metadata.optimizer).unwrap();
    assert_eq!(back, progress, "the progress survives the file");
    let mut rest = ck.theta;
    let (done, _) = char_model::train_from::<F>(
        &net,
        &mut rest,
        &corpus.train,
        &corpus.validation,
        &job(steps),
        Some(&back),
        &mut |s, _| {
            assert!(s.step > stop, "update {} ran again", s.step);
            Control::Continue
        },
    )
    .unwrap();
    assert_eq!(done, steps);
    (whole, rest, per_epoch)
}

#[test]
fn stopped_and_continued_ends_on_the_uninterrupted_bits() {
    for (stop, steps) in [(3, 7), (7, 12)] {
        let (whole, rest, per_epoch) = both::<f32>(steps, stop);
        assert!(per_epoch < steps, "the runs must cross a new pass over the text ({per_epoch} per pass)");
        assert!(whole.iter().zip(&rest).all(|(a, b)| a.to_bits() == b.to_bits()), "f32, stopped at {stop}");
        let (whole, rest, _) = both::<f64>(steps, stop);
        assert!(whole.iter().zip(&rest).all(|(a, b)| a.to_bits() == b.to_bits()), "f64, stopped at {stop}");
    }
}

/// A progress for another batch, rule or beyond the budget is refused in one line.
#[test]
fn a_progress_that_does_not_fit_is_refused() {
    let corpus = CharText::from_text(&TEXT.repeat(5), 0.1, "test text").unwrap();
    let spec = char_model::spec(corpus.vocabulary.len(), 8, parse_net("lstm 4, softmax").unwrap().layers).unwrap();
    let net = Recurrent::new(spec.clone()).unwrap();
    let mut theta = Init::Uniform.theta(&spec, 1);
    let mut saved = None;
    char_model::train_from::<f32>(&net, &mut theta, &corpus.train, &[], &job(3), None, &mut |_, snap| {
        saved = Some(snap().0);
        Control::Continue
    })
    .unwrap();
    let progress = saved.unwrap();
    let run = |job: Job| {
        let mut t = theta.clone();
        let e = char_model::train_from::<f32>(&net, &mut t, &corpus.train, &[], &job, Some(&progress), &mut |_, _| {
            Control::Continue
        })
        .unwrap_err()
        .to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        e
    };
    assert!(run(Job { batch: 2, ..job(5) }).contains("carried state does not fit"));
    assert!(run(Job { rule: UpdateRule::Plain, ..job(5) }).contains("optimizer state"));
    assert!(run(job(2)).contains("more than the 2 asked for"));
}

fn wgnn() -> Command {
    Command::cargo_bin("wgnn").unwrap()
}

fn theta_of(run: &Path) -> Vec<f64> {
    Checkpoint::load(&run.join("model.safetensors")).unwrap().theta
}

/// From the CLI: Ctrl-C (a real SIGINT) mid-run exits 130 with a checkpoint; `--resume DIR`
/// alone finishes the job on the uninterrupted run's θ, to the bit; `--checkpoint-every`
/// leaves a checkpoint that continues further (`--steps` more); a model kept without one is
/// refused in one line.
#[test]
fn cli_interrupt_then_resume_alone_gives_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, TEXT.repeat(60)).unwrap();
    let data = format!("text:{}", text.display());
    let args = |out: &Path| {
        let mut a: Vec<String> =
            ["train", "lstm", "--data", &data, "--hidden", "8", "--bptt", "8", "--batch-size", "4"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        a.extend(["--steps", "4000", "--eval-every", "2000", "--out"].map(String::from));
        a.push(out.display().to_string());
        a
    };
    let whole = dir.path().join("whole");
    wgnn().args(args(&whole)).assert().success();

    let cut = dir.path().join("cut");
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("wgnn"))
        .args(args(&cut))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("the child ended before training").unwrap();
        if line.starts_with("step") {
            break;
        }
    }
    let status = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(130), "after SIGINT: {rest:?}");
    let last = rest.last().unwrap();
    assert!(last.starts_with("error: interrupted after") && last.contains("--resume"), "{rest:?}");
    assert!(cut.join("checkpoint.safetensors").exists() && !cut.join("model.safetensors").exists());

    let out = wgnn().args(["train", "--resume"]).arg(&cut).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("resuming after update"), "{stderr}");
    let (a, b) = (theta_of(&whole), theta_of(&cut));
    assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "the resumed θ differs from the uninterrupted");
    assert!(
        !cut.join("checkpoint.safetensors").exists(),
        "a finished run without --checkpoint-every keeps only its model"
    );
    let (held_a, held_b) =
        (String::from_utf8_lossy(&out.stdout), std::fs::read_to_string(whole.join("metrics.json")).unwrap());
    let bits = |s: &str| s.lines().find(|l| l.starts_with("held-out bits")).map(str::to_string);
    assert!(bits(&held_a).is_some(), "{held_a}");
    let whole_bits: serde_json::Value = serde_json::from_str(&held_b).unwrap();
    let resumed_bits: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cut.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(whole_bits["held_out_bits_per_character"], resumed_bits["held_out_bits_per_character"]);
    assert_eq!(whole_bits["history"].as_array().unwrap().len(), resumed_bits["history"].as_array().unwrap().len());

    // A finished model without a checkpoint cannot be continued.
    let e = wgnn().args(["train", "--resume"]).arg(&whole).args(["--steps", "4100"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && stderr.lines().count() == 1, "{stderr}");
    assert!(stderr.contains("keeps no optimizer state") && stderr.contains("--checkpoint-every"), "{stderr}");

    // --checkpoint-every: 3000 updates then 1000 more equal 4000 at once.
    let every = dir.path().join("every");
    let mut a = args(&every);
    let at = a.iter().position(|s| s == "4000").unwrap();
    a[at] = "3000".into();
    a.extend(["--checkpoint-every", "1200"].map(String::from));
    wgnn().args(&a).assert().success();
    assert!(every.join("checkpoint.safetensors").exists() && every.join("model.safetensors").exists());
    wgnn().args(["train", "--resume"]).arg(&every).args(["--steps", "4000"]).assert().success();
    let c = theta_of(&every);
    assert!(a_eq(&theta_of(&whole), &c), "3000 + 1000 updates differ from 4000");

    let zero = dir.path().join("zero");
    let e = wgnn().args(args(&zero)).args(["--checkpoint-every", "0"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&e.stderr);
    assert!(!e.status.success() && stderr.lines().count() == 1, "{stderr}");
    assert!(stderr.contains("a checkpoint every 0 iterations is no period"), "{stderr}");
    assert!(!zero.join("metrics.json").exists(), "a refused run wrote nothing");
}

fn a_eq(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// On the GPU (lavapipe here): 3 updates with a checkpoint, then `--resume` to 7, end on the
/// bits of 7 straight — the carried state read back from the device and written back, Adam's
/// moments from the checkpoint (the update runs on the host for char models).
#[test]
fn gpu_char_model_resumes_on_the_uninterrupted_bits() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(&text, TEXT.repeat(20)).unwrap();
    let data = format!("text:{}", text.display());
    let args = |out: &Path, steps: &str| {
        let mut a: Vec<String> = [
            "train",
            "lstm",
            "--data",
            &data,
            "--hidden",
            "8",
            "--bptt",
            "8",
            "--batch-size",
            "4",
            "--backend",
            "gpu",
            "--quiet",
            "--steps",
            steps,
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(out.display().to_string());
        a
    };
    let whole = dir.path().join("whole");
    wgnn().args(args(&whole, "7")).assert().success();
    let part = dir.path().join("part");
    wgnn().args(args(&part, "3")).args(["--checkpoint-every", "3"]).assert().success();
    wgnn().args(["train", "--resume"]).arg(&part).args(["--steps", "7", "--quiet"]).assert().success();
    assert!(a_eq(&theta_of(&whole), &theta_of(&part)), "3 + 4 updates on the GPU differ from 7");
}
