//! Checkpoints written in the background (`checkpoint::Writer`, issue 14 §3): the same bytes
//! as a synchronous write, one write in flight at most and in the order asked, a failed write
//! reported once and in one line with the previous file whole, nothing half written when the
//! writer is dropped or the run is stopped by Ctrl-C, and a resumed run still on the bits of
//! an uninterrupted one. No test here depends on timing: where a write must still be running,
//! a gate (a channel) holds it.

use std::io::BufRead;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use assert_cmd::Command;
use wgnn::checkpoint::{Checkpoint, Metadata, Writer};
use wgnn::model::{Init, NetSpec, Sparsity};

fn spec() -> NetSpec {
    NetSpec::sparse_autoencoder(8, 3, 1e-4, Sparsity { target: 0.01, weight: 3.0 }).unwrap()
}

/// An optimizer-like state with a long vector (a tensor in the file) and a short one (JSON).
#[derive(serde::Serialize)]
struct State {
    pairs: Vec<Vec<f64>>,
    iteration: usize,
}

fn state(seed: u64) -> State {
    let v = |k: u64| (0..40).map(|i| (i as f64 + 0.25) * (seed + k) as f64 / 3.0).collect();
    State { pairs: vec![v(0), v(1)], iteration: seed as usize }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

/// The writer's file is byte for byte the one `save_state` writes, and writes land in the
/// order handed over: after three, the file holds the third.
#[test]
fn a_background_write_gives_the_bytes_of_save_state_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (sync_path, path) = (dir.path().join("sync.safetensors"), dir.path().join("checkpoint.safetensors"));
    let spec = spec();
    let mut metadata = Metadata { seed: Some(7), ..Default::default() };
    metadata.extra.insert("updates".into(), 3.into());
    let writer = Writer::new();
    for seed in 1..=3 {
        let theta = Init::Uniform.theta(&spec, seed);
        writer.save_state(spec.clone(), theta, metadata.clone(), state(seed), path.clone()).unwrap();
    }
    writer.wait().unwrap();
    let theta = Init::Uniform.theta(&spec, 3);
    wgnn::checkpoint::save_state(&spec, &theta, &metadata, &state(3), &sync_path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&sync_path).unwrap(), "not the synchronous file");
    assert_eq!(names_in(dir.path()), ["checkpoint.safetensors", "sync.safetensors"], "a temporary file was left");
    // A θ that does not fit is refused before anything is handed over.
    let e = writer.save_state(spec.clone(), vec![0.0; 5], metadata, state(4), path.clone()).unwrap_err();
    assert!(e.to_string().contains("θ has 5 values"), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&sync_path).unwrap());
}

/// A write that fails half-way is reported once, by the next hand-over (which then writes
/// nothing) or by `wait`, in one line naming the file; the previous checkpoint stays whole
/// and no temporary file is left.
#[test]
fn a_failed_write_is_reported_once_and_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let spec = spec();
    let writer = Writer::new();
    writer
        .save_state(spec.clone(), Init::Uniform.theta(&spec, 1), Metadata::default(), state(1), path.clone())
        .unwrap();
    writer.wait().unwrap();
    let previous = std::fs::read(&path).unwrap();
    // A fault: the disk fills half-way through the next file.
    let faulty = |path: std::path::PathBuf| {
        move || {
            wgnn::atomic::write_with(&path, |w| {
                std::io::Write::write_all(w, b"half of a checkpoint").map_err(|e| e.to_string())?;
                Err("no space left on device (a fault injected by the test)".into())
            })
        }
    };
    writer.submit(faulty(path.clone())).unwrap();
    let next =
        writer.save_state(spec.clone(), Init::Uniform.theta(&spec, 2), Metadata::default(), state(2), path.clone());
    let e = next.unwrap_err().to_string();
    assert!(e.contains("no space left on device") && e.contains("checkpoint.safetensors"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    writer.wait().expect("the error was reported once, and the next write was not started");
    assert_eq!(std::fs::read(&path).unwrap(), previous, "the previous checkpoint was touched");
    assert_eq!(names_in(dir.path()), ["checkpoint.safetensors"], "a temporary file was left");
    Checkpoint::load(&path).expect("the previous checkpoint is whole");

    // The same fault found by wait, at the end of a run.
    writer.submit(faulty(path.clone())).unwrap();
    assert!(writer.wait().unwrap_err().to_string().contains("no space left on device"));
    assert_eq!(std::fs::read(&path).unwrap(), previous);
}

/// A second hand-over waits for the write in flight: held by a gate, the first write ends
/// before the second begins, whichever thread runs first.
#[test]
fn one_write_in_flight_at_most() {
    let writer = Arc::new(Writer::new());
    let order = Arc::new(Mutex::new(Vec::new()));
    let (open, gate) = mpsc::channel::<()>();
    let first = order.clone();
    writer
        .submit(move || {
            gate.recv().unwrap();
            first.lock().unwrap().push(1);
            Ok(())
        })
        .unwrap();
    let (w, second) = (writer.clone(), order.clone());
    let other = std::thread::spawn(move || {
        w.submit(move || {
            second.lock().unwrap().push(2);
            Ok(())
        })
        .unwrap()
    });
    open.send(()).unwrap();
    other.join().unwrap();
    writer.wait().unwrap();
    assert_eq!(*order.lock().unwrap(), [1, 2]);
}

/// Dropping the writer waits for the write in flight; a panic in the writer is an error.
#[test]
fn dropping_the_writer_waits_for_the_write_in_flight() {
    let done = Arc::new(AtomicBool::new(false));
    let (open, gate) = mpsc::channel::<()>();
    let writer = Writer::new();
    let d = done.clone();
    writer
        .submit(move || {
            gate.recv().unwrap();
            d.store(true, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
    open.send(()).unwrap();
    drop(writer);
    assert!(done.load(Ordering::SeqCst), "the drop returned before the write ended");

    let writer = Writer::new();
    writer.submit(|| panic!("a bug in the writer")).unwrap();
    let e = writer.wait().unwrap_err().to_string();
    assert!(e.contains("checkpoint writer thread stopped") && e.contains("a bug in the writer"), "{e}");
}

fn wgnn() -> Command {
    Command::cargo_bin("wgnn").unwrap()
}

/// A small L-BFGS autoencoder job (built-in patches) that checkpoints after every iteration.
const JOB: [&str; 10] =
    ["train", "--backend", "cpu", "--count", "500", "--seed", "3", "--hidden", "16", "--checkpoint-every"];

fn theta_bits(file: &Path) -> Vec<u64> {
    Checkpoint::load(file).unwrap().theta.iter().map(|v| v.to_bits()).collect()
}

/// The child's stderr after its `n`th progress line (training has begun).
fn spawn_until(
    args: &[&str],
    n: usize,
) -> (std::process::Child, std::io::Lines<std::io::BufReader<std::process::ChildStderr>>) {
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("wgnn"))
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = 0;
    while seen < n {
        let line = lines.next().expect("the child ended before training").unwrap();
        seen += usize::from(line.starts_with("iteration"));
    }
    (child, lines)
}

/// A run that checkpoints every iteration: a checkpoint written in the background, taken
/// aside mid-run, is whole; Ctrl-C amid those writes exits 130 with a whole checkpoint and no
/// temporary file; both, resumed with `--resume` alone (and a budget), end on the bits of a
/// run never interrupted, and the finished runs keep the final state (no older background
/// write lands after it).
#[test]
fn sigint_amid_background_checkpoints_leaves_a_whole_one_that_resumes_on_the_same_bits() {
    let dir = tempfile::tempdir().unwrap();
    let (stopped, straight) = (dir.path().join("stopped"), dir.path().join("straight"));
    let stopped_s = stopped.to_str().unwrap();
    let mut args = JOB.to_vec();
    args.extend(["1", "--iterations", "100000", "--out", stopped_s]);
    let (mut child, lines) = spawn_until(&args, 1);
    // A checkpoint written in the background while the run goes on, taken aside to resume too.
    let (periodic, copy) = (stopped.join("checkpoint.safetensors"), dir.path().join("copy"));
    while !periodic.exists() {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before its first checkpoint");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::fs::create_dir(&copy).unwrap();
    std::fs::copy(&periodic, copy.join("checkpoint.safetensors")).unwrap();
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(130), "{rest:?}");
    assert!(rest.last().unwrap().contains("resume with: wgnn train --resume"), "{rest:?}");
    assert_eq!(names_in(&stopped).iter().filter(|n| n.ends_with(".tmp")).count(), 0, "{:?}", names_in(&stopped));
    let ck = Checkpoint::load(&stopped.join("checkpoint.safetensors")).expect("a whole checkpoint");
    let iterations = |ck: &Checkpoint| ck.metadata.optimizer["counters"]["iteration"].as_u64().expect("iterations");
    let copied = Checkpoint::load(&copy.join("checkpoint.safetensors")).expect("a whole checkpoint");
    let done = iterations(&ck).max(iterations(&copied)) as usize;

    // The same budget both ways: the uninterrupted run, and the resumed one.
    let budget = (done + 3).to_string();
    let mut args = JOB.to_vec();
    args.extend(["1", "--iterations", &budget, "--quiet", "--out", straight.to_str().unwrap()]);
    wgnn().args(&args).assert().success();
    let model = theta_bits(&straight.join("model.safetensors"));
    for run in [&stopped, &copy] {
        wgnn().args(["train", "--quiet", "--resume"]).arg(run).args(["--iterations", &budget]).assert().success();
        assert_eq!(theta_bits(&run.join("model.safetensors")), model, "{} resumed to another θ", run.display());
    }
    // With --checkpoint-every the finished run keeps its last state: the final θ, not an older one.
    for run in [&straight, &stopped, &copy] {
        assert_eq!(theta_bits(&run.join("checkpoint.safetensors")), model, "{}", run.display());
        let ck = Checkpoint::load(&run.join("checkpoint.safetensors")).unwrap();
        assert_eq!(ck.metadata.optimizer["counters"]["iteration"].as_u64(), Some(done as u64 + 3));
    }
}

/// The run folder removed mid-run: the next checkpoint fails, and the run ends at once with
/// one error line naming the checkpoint, exit code 1, and no panic.
#[test]
fn a_checkpoint_that_cannot_be_written_ends_the_run_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut args = JOB.to_vec();
    args.extend(["1", "--iterations", "100000", "--out", out.to_str().unwrap()]);
    let (mut child, lines) = spawn_until(&args, 1);
    // The writer may be creating a temporary file meanwhile: try until the folder is gone.
    while out.exists() {
        let _ = std::fs::remove_dir_all(&out);
    }
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(1), "{rest:?}");
    let errors: Vec<&String> = rest.iter().filter(|l| !l.starts_with("iteration")).collect();
    assert_eq!(errors.len(), 1, "one line: {rest:?}");
    assert!(errors[0].starts_with("error: ") && errors[0].contains("checkpoint.safetensors"), "{rest:?}");
}
