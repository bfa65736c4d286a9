//! Checkpoints written in the background (`checkpoint::Writer`, issue 14 §3): the same bytes
//! as a synchronous write, one write in flight at most, hand-overs that never wait for the
//! disk (a newer one replaces the one waiting), the writes that land in the order asked and
//! the last always among them, a failed write
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

/// The writer's file is byte for byte the one `save_state` writes, and the last hand-over is
/// the one on disk: after three, the file holds the third.
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

/// A write that fails half-way is reported once, by the first hand-over after it ended (the
/// hand-over then writes nothing) or by `wait`, in one line naming the file; the previous
/// checkpoint stays whole, the write that waited behind the failed one is never started, and
/// no temporary file is left.
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
    // A fault: the disk fills half-way through the next file. It says when it has started
    // (so that what is handed over next waits behind it) and may be held by a gate.
    let faulty = |path: std::path::PathBuf, started: mpsc::Sender<()>, gate: Option<mpsc::Receiver<()>>| {
        move || {
            started.send(()).unwrap();
            if let Some(g) = gate {
                g.recv().unwrap();
            }
            wgnn::atomic::write_with(&path, |w| {
                std::io::Write::write_all(w, b"half of a checkpoint").map_err(|e| e.to_string())?;
                Err("no space left on device (a fault injected by the test)".into())
            })
        }
    };
    let (open, gate) = mpsc::channel();
    let (started, has_started) = mpsc::channel();
    writer.submit(faulty(path.clone(), started.clone(), Some(gate))).unwrap();
    has_started.recv().unwrap();
    // Handed over while the faulty write is in flight: it waits behind it, and is dropped.
    writer
        .save_state(spec.clone(), Init::Uniform.theta(&spec, 2), Metadata::default(), state(2), path.clone())
        .unwrap();
    open.send(()).unwrap();
    let e = writer.wait().unwrap_err().to_string();
    assert!(e.contains("no space left on device") && e.contains("checkpoint.safetensors"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    writer.wait().expect("the error was reported once");
    assert_eq!(std::fs::read(&path).unwrap(), previous, "the write behind the failed one was started");
    assert_eq!(names_in(dir.path()), ["checkpoint.safetensors"], "a temporary file was left");
    Checkpoint::load(&path).expect("the previous checkpoint is whole");

    // The same fault found by the next hand-overs: each either waits behind the faulty write
    // (and is dropped with it) or, once it has ended, returns its error, once.
    writer.submit(faulty(path.clone(), started, None)).unwrap();
    has_started.recv().unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let e = loop {
        let r = ran.clone();
        match writer.submit(move || {
            r.store(true, Ordering::SeqCst);
            Ok(())
        }) {
            Ok(()) => std::thread::yield_now(),
            Err(e) => break e.to_string(),
        }
    };
    assert!(e.contains("no space left on device"), "{e}");
    writer.wait().expect("the error was reported once");
    assert!(!ran.load(Ordering::SeqCst), "a write behind the failed one, or refused, ran");
    assert_eq!(std::fs::read(&path).unwrap(), previous);
}

/// Hand-overs coalesce: while a write is in flight (held by a gate) the next hand-overs
/// return at once (none waits for the disk), each replacing the one waiting; when the gate
/// opens only the newest runs. So the writes that run are in the order handed over, never
/// two at a time, and the last one handed over is always among them.
#[test]
fn hand_overs_never_wait_and_the_newest_state_wins() {
    let writer = Arc::new(Writer::new());
    let ran = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let write = |k: usize, gate: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>| {
        let (ran, running) = (ran.clone(), running.clone());
        move || {
            assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "two writes at a time");
            if let Some((started, g)) = gate {
                started.send(()).unwrap();
                g.recv().unwrap();
            }
            ran.lock().unwrap().push(k);
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
    };
    let (open, gate) = mpsc::channel::<()>();
    let (started, has_started) = mpsc::channel::<()>();
    writer.submit(write(1, Some((started, gate)))).unwrap();
    has_started.recv().unwrap();
    // Three more while the first is held: on another thread, so that a hand-over that waited
    // for the disk would show as a timeout here (a deadlock guard, not a speed test).
    let (done, handed) = mpsc::channel();
    let w = writer.clone();
    let later: Vec<_> = (2..=4).map(|k| write(k, None)).collect();
    std::thread::spawn(move || {
        for f in later {
            w.submit(f).unwrap();
        }
        done.send(()).unwrap();
    });
    handed.recv_timeout(std::time::Duration::from_secs(120)).expect("a hand-over waited for the write in flight");
    assert_eq!(writer.skipped(), 2, "{writer:?}");
    open.send(()).unwrap();
    writer.wait().unwrap();
    assert_eq!(*ran.lock().unwrap(), [1, 4]);

    // Many hand-overs with no gate: whatever is skipped, those that ran are increasing and
    // end with the last.
    ran.lock().unwrap().clear();
    for k in 1..=200 {
        writer.submit(write(k, None)).unwrap();
    }
    writer.wait().unwrap();
    let ran = ran.lock().unwrap();
    assert!(ran.windows(2).all(|p| p[0] < p[1]), "out of order: {ran:?}");
    assert_eq!(ran.last(), Some(&200), "the last state did not land: {ran:?}");
}

/// After a write the writer pauses four times as long as it took (busy at most 20% of the
/// time): a hand-over made then waits, unstarted, until the pause ends or `wait` asks for it.
/// (The first write is made long, a second, so that only a stall of the test of over four
/// seconds could make the check wrong; no speed is assumed.)
#[test]
fn the_writer_pauses_after_a_write_and_wait_ends_the_pause() {
    let writer = Writer::new();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let (ended, has_ended) = mpsc::channel::<()>();
    let r = ran.clone();
    writer
        .submit(move || {
            std::thread::sleep(std::time::Duration::from_secs(1));
            r.lock().unwrap().push(1);
            ended.send(()).unwrap();
            Ok(())
        })
        .unwrap();
    has_ended.recv().unwrap();
    let r = ran.clone();
    writer
        .submit(move || {
            r.lock().unwrap().push(2);
            Ok(())
        })
        .unwrap();
    assert_eq!(*ran.lock().unwrap(), [1], "the second write did not wait for the pause");
    writer.wait().unwrap();
    assert_eq!(*ran.lock().unwrap(), [1, 2], "wait returned before the waiting write ran");
}

/// `offer` hands a write over only when the writer would start it at once: a fresh writer
/// takes it; while a write is in flight it is skipped without even being built (no copy of
/// the state is made); an earlier write's error comes back from it, once.
#[test]
fn offer_builds_and_hands_over_only_when_the_writer_is_free() {
    let writer = Writer::new();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let (open, gate) = mpsc::channel::<()>();
    let (started, has_started) = mpsc::channel::<()>();
    let r = ran.clone();
    let handed = writer
        .offer(|| {
            move || {
                started.send(()).unwrap();
                gate.recv().unwrap();
                r.lock().unwrap().push(1);
                Ok(())
            }
        })
        .unwrap();
    assert!(handed, "a fresh writer takes the write");
    has_started.recv().unwrap();
    let built = AtomicBool::new(false);
    let handed = writer
        .offer(|| {
            built.store(true, Ordering::SeqCst);
            || Ok(())
        })
        .unwrap();
    assert!(!handed && !built.load(Ordering::SeqCst), "built or handed over while a write was in flight");
    assert_eq!(writer.skipped(), 1);
    open.send(()).unwrap();
    writer.wait().unwrap();
    assert_eq!(*ran.lock().unwrap(), [1]);
    // A failed write: the next offer reports it, once.
    writer.submit(|| Err(wgnn::Error::Data("a fault injected by the test".into()))).unwrap();
    let e = loop {
        match writer.offer(|| || Ok(())) {
            Ok(_) => std::thread::yield_now(),
            Err(e) => break e.to_string(),
        }
    };
    assert!(e.contains("a fault injected by the test"), "{e}");
    writer.wait().expect("reported once");
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
