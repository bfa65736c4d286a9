//! `wgnn train --resume RUN` alone restores the whole job from the run's checkpoint (DESIGN.md,
//! "Run folders and exit codes"): a run interrupted by a real SIGINT and resumed with nothing
//! but `--resume` ends with the same θ, bit for bit, as the same run left alone; a flag that
//! would change the job is refused in one line and changes nothing.

use std::io::BufRead;
use std::path::Path;

use assert_cmd::Command;
use wgnn::checkpoint::Checkpoint;

fn wgnn() -> Command {
    Command::cargo_bin("wgnn").unwrap()
}

/// Not the defaults, so a resume that forgot them would show: seed, count, hidden size,
/// sparsity and an explicit L-BFGS memory all come back from the checkpoint.
const JOB: [&str; 14] = [
    "train",
    "--backend",
    "cpu",
    "--count",
    "500",
    "--iterations",
    "200",
    "--seed",
    "3",
    "--hidden",
    "16",
    "--sparsity",
    "0.05",
    "--quiet",
];

fn theta_of(file: &Path) -> Vec<u64> {
    Checkpoint::load(file).unwrap().theta.iter().map(|v| v.to_bits()).collect()
}

/// Exactly one line on stderr, starting `error: ` and holding `needle`, and exit code 1.
fn refused(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("note: ")).collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].starts_with("error: ") && lines[0].contains(needle), "expected `{needle}` in: {stderr}");
}

#[test]
fn an_interrupted_run_resumed_with_only_resume_gives_the_uninterrupted_bits() {
    let dir = tempfile::tempdir().unwrap();
    let (straight, stopped) = (dir.path().join("straight"), dir.path().join("stopped"));
    let done = wgnn().args(JOB).arg("--out").arg(&straight).output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));

    // The same job, without --quiet (its progress lines say when training has begun), stopped
    // by SIGINT. The command line is run from another folder than the resume, with a relative
    // --out: what is stored must not depend on the folder it ran in.
    let job: Vec<&str> = JOB.iter().copied().filter(|a| *a != "--quiet").collect();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("wgnn"))
        .current_dir(dir.path())
        .args(&job)
        .args(["--out", "stopped"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    while !lines.next().expect("the child ended before training").unwrap().starts_with("iteration") {}
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(130), "the run ended before SIGINT reached it: {rest:?}");
    let last = rest.last().unwrap();
    assert!(last.ends_with("resume with: wgnn train --resume stopped"), "the printed resume line: {last}");
    let checkpoint = std::fs::read(stopped.join("checkpoint.safetensors")).unwrap();
    assert!(!stopped.join("model.safetensors").exists());

    // A flag that would change the job is refused, in one line, before anything is touched.
    for (flag, value, needle) in [
        ("--hidden", "50", "--hidden 50 conflicts with the run in"),
        ("--seed", "4", "--seed 4 conflicts with the run in"),
        ("--optimizer", "adam", "--optimizer adam conflicts"),
    ] {
        let out = wgnn().arg("train").arg("--resume").arg(&stopped).args([flag, value]).output().unwrap();
        refused(&out, needle);
        assert_eq!(std::fs::read(stopped.join("checkpoint.safetensors")).unwrap(), checkpoint, "{flag} touched it");
    }
    // Repeating the run's own values is no conflict (the old printed line named the kind).
    // Resumed as printed: `wgnn train --resume DIR`, from another folder.
    let resumed = wgnn().args(["train", "autoencoder", "--seed", "3", "--resume"]).arg(&stopped).output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert!(!stopped.join("checkpoint.safetensors").exists(), "a finished run keeps no checkpoint");
    assert_eq!(
        theta_of(&stopped.join("model.safetensors")),
        theta_of(&straight.join("model.safetensors")),
        "θ after interrupting and resuming differs from the uninterrupted run's"
    );

    // A finished run keeps no optimizer state in its model: continuing it is refused in one
    // line that names the way (--checkpoint-every), and the model is untouched.
    let model = stopped.join("model.safetensors");
    let before = std::fs::read(&model).unwrap();
    refused(
        &wgnn().args(["train", "--quiet", "--iterations", "203", "--resume"]).arg(&stopped).output().unwrap(),
        "--checkpoint-every",
    );
    assert_eq!(std::fs::read(&model).unwrap(), before, "the refusal touched the model");

    // A run trained with --checkpoint-every keeps its final optimizer state beside the model
    // and continues with a larger budget (tests/train.rs checks those bits); --iterations
    // beside --resume is allowed and counts.
    let kept = dir.path().join("kept");
    let done = wgnn().args(JOB).args(["--checkpoint-every", "100", "--out"]).arg(&kept).output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let more = wgnn().args(["train", "--quiet", "--iterations", "203", "--resume"]).arg(&kept).output().unwrap();
    assert!(more.status.success(), "{}", String::from_utf8_lossy(&more.stderr));
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(kept.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["iterations"], 203, "--iterations beside --resume extends the budget");
    assert_eq!(metrics["spec"]["layers"], serde_json::json!([64, 16, 64]));

    // A checkpoint written before runs stored their flags still resumes, given the flags again
    // (and without them says at once, before reading any data, which network it holds).
    let checkpoint = kept.join("checkpoint.safetensors");
    let mut old = Checkpoint::load(&checkpoint).unwrap();
    assert!(!old.metadata.command.is_null(), "the run stores its flags");
    old.metadata.command = serde_json::Value::Null;
    old.save(&checkpoint).unwrap();
    refused(
        &wgnn().args(["train", "--quiet", "--iterations", "205", "--resume"]).arg(&kept).output().unwrap(),
        "the checkpoint holds 64-16-64",
    );
    let mut again: Vec<&str> = JOB.to_vec();
    again[6] = "205";
    let out = wgnn().args(again).arg("--resume").arg(&kept).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A stacked pipeline interrupted in its second stage and resumed with only `--resume` keeps
/// the finished first stage, continues the second from its checkpoint and ends with the
/// uninterrupted pipeline's fine-tuned θ, bit for bit. One written before runs stored their
/// flags is refused in one line.
#[test]
fn an_interrupted_stacked_run_resumes_from_the_stage_it_stopped_in() {
    use ndarray::Array2;
    use ndarray_npy::WriteNpyExt;
    use rand::{RngExt, SeedableRng, rngs::StdRng};
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(5);
    let x = Array2::from_shape_fn((600, 64), |_| rng.random_range(0.0f32..1.0));
    let labels: ndarray::Array1<i64> =
        x.rows().into_iter().map(|r| wgnn::backend::argmax(r.iter().take(3).map(|&v| v as f64)) as i64).collect();
    let (x_path, labels_path) = (dir.path().join("x.npy"), dir.path().join("labels.npy"));
    x.write_npy(std::fs::File::create(&x_path).unwrap()).unwrap();
    labels.write_npy(std::fs::File::create(&labels_path).unwrap()).unwrap();
    let data = format!("npy:{}", x_path.display());
    let job = ["train", "stacked", "--backend", "cpu", "--data", &data, "--hidden", "24,12", "--iterations", "150"];
    let (straight, stopped) = (dir.path().join("straight"), dir.path().join("stopped"));
    let done =
        wgnn().args(job).arg("--labels").arg(&labels_path).arg("--quiet").arg("--out").arg(&straight).output().unwrap();
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));

    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("wgnn"))
        .args(job)
        .arg("--labels")
        .arg(&labels_path)
        .arg("--out")
        .arg(&stopped)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines.next().expect("the child ended before its second stage").unwrap();
        if line.starts_with("stage") && line.contains("layer2") {
            break;
        }
    }
    let kill = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(130), "the pipeline ended before SIGINT reached it: {rest:?}");
    let last = rest.last().unwrap();
    assert!(last.ends_with(&format!("resume with: wgnn train --resume {}", stopped.display())), "{last}");
    assert!(stopped.join("layer1/model.safetensors").exists() && !stopped.join("finetune/model.safetensors").exists());
    let layer1 = std::fs::read(stopped.join("layer1/model.safetensors")).unwrap();

    let resumed = wgnn().args(["train", "--quiet", "--resume"]).arg(&stopped).output().unwrap();
    assert!(resumed.status.success(), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert_eq!(std::fs::read(stopped.join("layer1/model.safetensors")).unwrap(), layer1, "the finished stage was kept");
    assert_eq!(
        theta_of(&stopped.join("finetune/model.safetensors")),
        theta_of(&straight.join("finetune/model.safetensors")),
        "the resumed pipeline's fine-tuned θ differs from the uninterrupted one's"
    );
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stopped.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["status"], "finished");

    // Written before runs stored their flags: refused in one line.
    let first = straight.join("layer1/model.safetensors");
    let mut old = Checkpoint::load(&first).unwrap();
    old.metadata.command = serde_json::Value::Null;
    old.save(&first).unwrap();
    refused(
        &wgnn().args(["train", "--resume"]).arg(&straight).output().unwrap(),
        "written before runs stored their flags",
    );
}

/// `--resume` edge cases (found by a tester): a run saved by the library (no stored flags) is
/// refused at once, before any data is read (one line on stderr even without --quiet: no
/// progress line came before it); temporary files left by a process killed mid-write go when
/// the run resumes, a live process's stay; and the budget only extends: `--iterations` below
/// what the run has done is refused and rewrites nothing, and a finished run already at its
/// budget says so, exits 0 and rewrites nothing.
#[test]
fn resume_refuses_at_once_cleans_stale_temporaries_and_only_extends_the_budget() {
    use std::sync::atomic::AtomicBool;
    use wgnn::data::{DataSource, LoadOptions};
    use wgnn::model::{NetSpec, Sparsity};
    use wgnn::train::{TrainJob, train};
    let dir = tempfile::tempdir().unwrap();
    let library = dir.path().join("library");
    let spec = NetSpec::sparse_autoencoder(64, 16, 1e-4, Sparsity { target: 0.01, weight: 3.0 }).unwrap();
    let x = DataSource::Synthetic.load(&LoadOptions { patch_count: 200, ..Default::default() }).unwrap().x;
    let mut backend = wgnn::CpuBackend::<f32>::new(spec.clone()).unwrap();
    let mut job = TrainJob::new(spec, wgnn::optim::Method::lbfgs(), 5, &library);
    job.checkpoint_every = Some(1);
    let never = AtomicBool::new(false);
    train(job, &mut backend, &x, wgnn::Targets::Inputs, &mut |_| {}, &never).unwrap();
    let files = |d: &Path| {
        let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
            .collect();
        v.sort();
        v
    };
    let before = files(&library);
    for extra in [&[][..], &["--iterations", "9"][..]] {
        let out = wgnn().args(["train", "--backend", "cpu", "--resume"]).arg(&library).args(extra).output().unwrap();
        refused(&out, "not the flags it was trained with");
        assert!(String::from_utf8_lossy(&out.stderr).contains("64-16-64"), "names what it holds");
        assert_eq!(files(&library), before, "the refusal touched the folder");
    }

    // A run that checkpoints, then a SIGKILL's leftovers: a dead process's temporary (a child
    // that has ended and been reaped), and one of a live process (this test's).
    let run = dir.path().join("run");
    let mut job = JOB.to_vec();
    job[6] = "20";
    let out = wgnn().args(job).args(["--checkpoint-every", "10", "--out"]).arg(&run).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale = run.join(format!(".checkpoint.safetensors.{dead}.0.tmp"));
    let live = run.join(format!(".checkpoint.safetensors.{}.0.tmp", std::process::id()));
    for f in [&stale, &live] {
        std::fs::write(f, b"half of a checkpoint").unwrap();
    }

    // Below the 20 iterations done: refused, nothing rewritten (nor cleaned: it never opened
    // the folder).
    let before = files(&run);
    let out = wgnn().args(["train", "--resume"]).arg(&run).args(["--iterations", "15"]).output().unwrap();
    refused(&out, "has done 20 iterations, more than --iterations 15");
    assert_eq!(files(&run), before, "the refusal touched the folder");
    // At the budget of a finished run (its own 20, given or not): said, exit 0, nothing rewritten.
    for extra in [&[][..], &["--iterations", "20"][..]] {
        let out = wgnn().args(["train", "--resume"]).arg(&run).args(extra).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("already finished its 20 iterations: nothing to do"), "{stdout}");
        assert_eq!(files(&run), before, "{extra:?} rewrote the finished run");
    }
    // Extended: it runs, and the dead process's temporary goes; the live one's stays.
    let out = wgnn().args(["train", "--quiet", "--resume"]).arg(&run).args(["--iterations", "22"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stale.exists(), "the dead process's temporary file was left");
    assert!(live.exists(), "a live process's temporary file was removed");
    let ck = Checkpoint::load(&run.join("checkpoint.safetensors")).unwrap();
    assert_eq!(ck.metadata.optimizer["counters"]["iteration"].as_u64(), Some(22));
}

/// Every file and folder under `root`, by path relative to it, with the file's bytes (`None`
/// for a folder).
fn snapshot(root: &Path) -> std::collections::BTreeMap<std::path::PathBuf, Option<Vec<u8>>> {
    let mut all = std::collections::BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let key = path.strip_prefix(root).unwrap().to_path_buf();
            if path.is_dir() {
                todo.push(path);
                all.insert(key, None);
            } else {
                all.insert(key, Some(std::fs::read(&path).unwrap()));
            }
        }
    }
    all
}

/// `--resume` on a stacked run (found by a tester): a stage's folder is refused at once in one
/// line naming the run's top folder, instead of running the whole pipeline again inside the
/// stage; a finished run resumed with another `--iterations` is refused in one line (its stages
/// cannot be extended), and with its own budget has nothing to do and exits 0. None of them
/// changes a byte under either run.
#[test]
fn a_stacked_run_refuses_a_stage_folder_and_another_budget_and_writes_nothing() {
    use ndarray::Array2;
    use ndarray_npy::WriteNpyExt;
    let dir = tempfile::tempdir().unwrap();
    let x = Array2::from_shape_fn((40, 6), |(i, j)| ((i * 7 + j * 3) % 11) as f32 / 11.0);
    let labels: ndarray::Array1<i64> = x.rows().into_iter().map(|r| i64::from(r[0] > 0.5)).collect();
    let (x_path, labels_path) = (dir.path().join("x.npy"), dir.path().join("labels.npy"));
    x.write_npy(std::fs::File::create(&x_path).unwrap()).unwrap();
    labels.write_npy(std::fs::File::create(&labels_path).unwrap()).unwrap();
    let data = format!("npy:{}", x_path.display());
    let job =
        ["train", "stacked", "--backend", "cpu", "--data", &data, "--hidden", "4,3", "--iterations", "2", "--quiet"];
    let runs = dir.path().join("k");
    let (kept, plain) = (runs.join("s3"), runs.join("s4"));
    for (out, every) in [(&kept, Some("1")), (&plain, None)] {
        let mut cmd = wgnn();
        cmd.args(job).arg("--labels").arg(&labels_path).arg("--out").arg(out);
        if let Some(n) = every {
            cmd.args(["--checkpoint-every", n]);
        }
        let done = cmd.output().unwrap();
        assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    }
    assert!(
        kept.join("finetune/checkpoint.safetensors").is_file() && plain.join("finetune/model.safetensors").is_file()
    );
    let before = snapshot(&runs);

    let stage = kept.join("finetune");
    refused(
        &wgnn().args(["train", "--resume"]).arg(&stage).args(["--iterations", "3"]).output().unwrap(),
        &format!(
            "{} is a stage of the stacked run {}: resume the whole run with wgnn train --resume {}",
            stage.display(),
            kept.display(),
            kept.display()
        ),
    );
    refused(
        &wgnn().args(["train", "--resume"]).arg(kept.join("layer2")).output().unwrap(),
        &format!("is a stage of the stacked run {}", kept.display()),
    );
    refused(
        &wgnn().args(["train", "--resume"]).arg(&plain).args(["--iterations", "3"]).output().unwrap(),
        "the stacked run has finished with --iterations 2 per stage and a stacked run's budget cannot change",
    );
    let same = wgnn().args(["train", "--resume"]).arg(&plain).output().unwrap();
    assert!(same.status.success(), "{}", String::from_utf8_lossy(&same.stderr));
    let said = String::from_utf8_lossy(&same.stdout);
    assert!(said.contains("already finished its 2 iterations per stage: nothing to do"), "{said}");
    assert!(snapshot(&runs) == before, "a refused or empty --resume changed the run folders");
}
