//! Data-parallel training over real MPI ranks (issue 17): `mpirun --allow-run-as-root
//! --oversubscribe -np N` on loopback, N = 1, 2 and 3 (uneven shards). Built only with
//! `--features mpi` (Debian: libopenmpi-dev openmpi-bin libclang-dev); `.ci/test` runs it
//! after `cargo test` when mpirun is there.
//!
//! - At the same θ, J and ∇J over N ranks equal one process's to 1e-12 (f64) and 1e-6 (f32)
//!   relative, every rank holds the same bits, and the same N twice gives the same bits (this
//!   test binary itself is the MPI program: [`rank_of_an_mpirun_job`]).
//! - `mpirun -np N wgnn train`: 50 L-BFGS iterations end at the single-process cost within
//!   1e-6; Adam minibatches follow the single-process run to f32 rounding; a checkpoint
//!   written by 2 ranks resumes on 3; rank 0 alone writes.
//! - Faults: a rank that cannot read its data, ranks started with other flags, a killed rank
//!   and a stopped rank all end the job with one clear line, in bounded time, and leave no
//!   model behind.
#![cfg(feature = "mpi")]

mod mpi_common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::rc::Rc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mpi_common::{problems, relative_error, single};
use wgnn::checkpoint::Checkpoint;
use wgnn::cpu::Real;
use wgnn::dist::{Collective, DistBackend, ShardBackend, local_spec};
use wgnn::{Backend, Batch, CpuBackend};

/// One mpirun at a time: each rank computes with two threads on a 2-core machine.
static MPIRUN: Mutex<()> = Mutex::new(());

const WORKER_OUT: &str = "WGNN_MPI_TEST_OUT";

/// `mpirun -np n PROGRAM ARGS…` on loopback, with the test's environment variables passed on.
fn mpirun(n: usize, program: &Path, args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Output {
    mpirun_command(n, program, args, env, cwd).output().expect("mpirun runs (apt-get install openmpi-bin)")
}

fn mpirun_command(n: usize, program: &Path, args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--allow-run-as-root", "--oversubscribe", "-np", &n.to_string()]);
    for (k, v) in env {
        c.env(k, v).args(["-x", k]);
    }
    c.arg(program).args(args).current_dir(cwd);
    c
}

fn wgnn() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_wgnn"))
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The batches each problem is evaluated on, by name.
fn batches() -> Vec<(&'static str, Batch<'static>)> {
    static MINIBATCH: [usize; 10] = [30, 2, 17, 5, 11, 29, 0, 16, 8, 21];
    vec![("full batch", Batch::All), ("minibatch", Batch::Indices(&MINIBATCH))]
}

/// One rank of `mpirun -np N <this test binary> --ignored --exact rank_of_an_mpirun_job`: J
/// and ∇J of every problem at its θ, in f64 and f32, over MPI_COMM_WORLD, written by each rank
/// to `$WGNN_MPI_TEST_OUT/rank{r}.json`. Not a test of its own (it needs mpirun).
#[test]
#[ignore = "one rank of an mpirun job: started by the tests of this file"]
fn rank_of_an_mpirun_job() {
    let out = PathBuf::from(std::env::var(WORKER_OUT).expect("run by the tests of this file, under mpirun"));
    let world = Rc::new(wgnn::dist::mpi::MpiWorld::init().unwrap());
    let mut results = Vec::new();
    fn eval<F: Real>(
        p: &mpi_common::Problem,
        world: &Rc<wgnn::dist::mpi::MpiWorld>,
        batch: Batch<'_>,
    ) -> (f64, Vec<f64>) {
        let inner: Box<dyn ShardBackend> = Box::new(CpuBackend::<F>::new(local_spec(&p.spec)).unwrap());
        let mut b = DistBackend::new(p.spec.clone(), inner, world.clone()).unwrap();
        b.set_data((&p.x).into(), p.targets()).unwrap();
        let mut g = vec![0.0; p.theta.len()];
        let c = b.cost_and_grad(&p.theta, batch, &mut g).unwrap();
        (c.total(), g)
    }
    for p in problems(31) {
        for (what, batch) in batches() {
            let (c64, g64) = eval::<f64>(&p, &world, batch.clone());
            let (c32, g32) = eval::<f32>(&p, &world, batch);
            results.push(
                serde_json::json!({"problem": p.name, "batch": what, "precision": "f64", "cost": c64, "grad": g64}),
            );
            results.push(
                serde_json::json!({"problem": p.name, "batch": what, "precision": "f32", "cost": c32, "grad": g32}),
            );
        }
    }
    let file = out.join(format!("rank{}.json", world.rank()));
    std::fs::write(file, serde_json::to_vec(&results).unwrap()).unwrap();
}

/// One evaluation of a rank: problem, batch, precision, J, ∇J.
type Evaluation = (String, String, String, f64, Vec<f64>);

/// Every rank's results of one `mpirun -np n` of [`rank_of_an_mpirun_job`].
fn worker_results(n: usize) -> Vec<Vec<Evaluation>> {
    let dir = tempfile::tempdir().unwrap();
    let me = std::env::current_exe().unwrap();
    let o = mpirun(
        n,
        &me,
        &["--ignored", "--exact", "rank_of_an_mpirun_job", "--test-threads", "1"],
        &[(WORKER_OUT, dir.path().to_str().unwrap())],
        dir.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    (0..n)
        .map(|r| {
            let json: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.path().join(format!("rank{r}.json"))).unwrap()).unwrap();
            json.as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    let s = |k: &str| v[k].as_str().unwrap().to_string();
                    let grad = v["grad"].as_array().unwrap().iter().map(|g| g.as_f64().unwrap()).collect();
                    (s("problem"), s("batch"), s("precision"), v["cost"].as_f64().unwrap(), grad)
                })
                .collect()
        })
        .collect()
}

#[test]
fn cost_and_gradient_over_1_2_3_mpi_ranks_equal_one_process() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let problems = problems(31);
    for n in 1..=3 {
        let ranks = worker_results(n);
        for (r, results) in ranks.iter().enumerate() {
            assert_eq!(results.len(), problems.len() * 4);
            for (i, (name, what, precision, cost, grad)) in results.iter().enumerate() {
                let p = &problems[i / 4];
                assert_eq!(name, p.name);
                let batch = batches().into_iter().find(|(w, _)| w == what).unwrap().1;
                let (tol, (c1, g1)) = match precision.as_str() {
                    "f64" => (1e-12, single::<f64>(p, batch)),
                    _ => (1e-6, single::<f32>(p, batch)),
                };
                let (dc, dg) = ((cost - c1).abs() / c1.abs(), relative_error(grad, &g1));
                assert!(
                    dc < tol && dg < tol,
                    "{name} {what} {precision}, N = {n}, rank {r}: J {cost} vs {c1}, ∇J off by {dg:e}"
                );
                // Same bits on every rank.
                assert_eq!(
                    cost.to_bits(),
                    ranks[0][i].3.to_bits(),
                    "{name} {what} {precision}: rank {r} differs from rank 0"
                );
                assert_eq!(
                    grad, &ranks[0][i].4,
                    "{name} {what} {precision}: rank {r}'s gradient differs from rank 0's"
                );
            }
        }
        if n == 3 {
            let again = worker_results(3);
            for (a, b) in again[0].iter().zip(&ranks[0]) {
                assert_eq!(
                    (a.3.to_bits(), &a.4),
                    (b.3.to_bits(), &b.4),
                    "{} {} {}: two runs over 3 ranks differ",
                    a.0,
                    a.1,
                    a.2
                );
            }
        }
    }
}

/// `wgnn train ARGS --out DIR --quiet` on `n` ranks (0: alone, no mpirun) in `cwd`.
fn train(n: usize, args: &[&str], out: &str, cwd: &Path, env: &[(&str, &str)]) -> Output {
    let mut all: Vec<&str> = vec!["train"];
    all.extend(args);
    all.extend(["--out", out, "--quiet"]);
    let o = if n == 0 {
        Command::new(wgnn()).args(&all).current_dir(cwd).output().unwrap()
    } else {
        mpirun(n, &wgnn(), &all, env, cwd)
    };
    assert!(o.status.success(), "{n} ranks, wgnn {all:?}: {}", text(&o));
    o
}

fn final_cost(dir: &Path) -> f64 {
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap();
    m["final_cost"].as_f64().unwrap()
}

fn model_theta(dir: &Path) -> Vec<f64> {
    Checkpoint::load(&dir.join("model.safetensors")).unwrap().theta
}

#[test]
fn fifty_lbfgs_iterations_over_2_and_3_ranks_end_at_the_single_process_cost() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let tmp = [("TMPDIR", scratch.path().to_str().unwrap())];
    let args = ["autoencoder", "--count", "1000", "--iterations", "50", "--backend", "cpu", "--precision", "f64"];
    train(0, &args, "one", dir.path(), &[]);
    let one = final_cost(&dir.path().join("one"));
    for n in [2, 3] {
        train(n, &args, &format!("n{n}"), dir.path(), &tmp);
        let c = final_cost(&dir.path().join(format!("n{n}")));
        assert!((c - one).abs() <= 1e-6 * one, "N = {n}: final J {c}, one process {one}");
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join(format!("n{n}/metrics.json"))).unwrap()).unwrap();
        assert_eq!(m["backend"], format!("cpu f64 × {n} ranks"));
        assert_eq!(m["train_examples"], 1000);
    }
    // The same N twice: the same bits.
    train(2, &args, "n2-again", dir.path(), &tmp);
    assert_eq!(model_theta(&dir.path().join("n2")), model_theta(&dir.path().join("n2-again")));
    // Rank 0 alone wrote: the other ranks' scratch folders are gone, and no rank wrote
    // anything into the working folder but the run folders asked for.
    let left: Vec<_> =
        std::fs::read_dir(scratch.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "ranks left {left:?} in TMPDIR");
    let mut runs: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    runs.sort();
    assert_eq!(runs, ["n2", "n2-again", "n3", "one"]);
}

#[test]
fn minibatch_adam_over_ranks_follows_the_single_process_run_and_a_checkpoint_resumes_on_other_ranks() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let data = std::env::var("WGNN_DATA_DIR").map(PathBuf::from).expect("WGNN_DATA_DIR=../shared/data");
    let data = format!("csv:{}", std::fs::canonicalize(data).unwrap().join("digits8x8/digits.csv.gz").display());
    let args =
        ["mlp", "--data", &data, "--hidden", "32", "--optimizer", "adam", "--iterations", "3", "--batch-size", "64"];
    let args: Vec<&str> = args.iter().copied().chain(["--backend", "cpu"]).collect();
    train(0, &args, "one", dir.path(), &[]);
    let one = model_theta(&dir.path().join("one"));
    for n in [2, 3] {
        train(n, &args, &format!("n{n}"), dir.path(), &[]);
        let theta = model_theta(&dir.path().join(format!("n{n}")));
        let d = relative_error(&theta, &one);
        // f32 sums over other groupings of the same global batches, through 3 epochs of Adam.
        assert!(d < 1e-5, "N = {n}: θ after 3 epochs of Adam differs from one process's by {d:e}");
    }

    // L-BFGS, f64: 10 iterations on 2 ranks, then the checkpoint continued to 20 on 3 ranks,
    // ends where 20 iterations in one process end.
    let args = ["softmax", "--data", &data, "--backend", "cpu", "--precision", "f64"];
    let mut twenty: Vec<&str> = args.to_vec();
    twenty.extend(["--iterations", "20"]);
    train(0, &twenty, "lbfgs-one", dir.path(), &[]);
    let mut ten: Vec<&str> = args.to_vec();
    ten.extend(["--iterations", "10", "--checkpoint-every", "10"]);
    train(2, &ten, "lbfgs-resumed", dir.path(), &[]);
    let o =
        mpirun(3, &wgnn(), &["train", "--resume", "lbfgs-resumed", "--iterations", "20", "--quiet"], &[], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let (a, b) = (final_cost(&dir.path().join("lbfgs-one")), final_cost(&dir.path().join("lbfgs-resumed")));
    assert!((a - b).abs() <= 1e-6 * a, "20 iterations: one process {a}, 10 on 2 ranks + 10 on 3 ranks {b}");
}

#[test]
fn a_rank_that_cannot_read_its_data_or_runs_other_flags_stops_every_rank_in_one_line() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let run = |second: &[&str]| {
        let mut c = Command::new("mpirun");
        c.args(["--allow-run-as-root", "--oversubscribe", "-np", "1"]).arg(wgnn());
        c.args(["train", "autoencoder", "--count", "500", "--out", "r", "--iterations", "3", "--backend", "cpu"]);
        c.args([":", "-np", "1"]).arg(wgnn()).args(second).current_dir(dir.path());
        let o = c.output().unwrap();
        assert!(!o.status.success(), "{}", text(&o));
        assert!(!dir.path().join("r").exists(), "a refused job left its run folder");
        let errors: Vec<String> =
            String::from_utf8_lossy(&o.stderr).lines().filter(|l| l.starts_with("error:")).map(str::to_owned).collect();
        assert_eq!(errors.len(), 1, "{}", text(&o));
        errors[0].clone()
    };
    let e =
        run(&["train", "softmax", "--data", "npy:missing.npy", "--out", "r", "--iterations", "3", "--backend", "cpu"]);
    assert!(e.starts_with("error: rank 1: ") && e.contains("missing.npy"), "{e}");
    let e = run(&["train", "autoencoder", "--count", "500", "--out", "r", "--iterations", "4", "--backend", "cpu"]);
    assert!(e.contains("rank 1 was started with other flags than rank 0"), "{e}");
}

/// Pids of the processes whose parent is `parent` (Linux /proc).
fn children(parent: u32) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid …: comm may hold spaces, so read after the last ')'.
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(parent)
        })
        .collect();
    pids.sort();
    pids
}

/// Starts a 2-rank training that runs for long, waits until it trains, sends rank 1's
/// process `signal`, and returns mpirun's output and how long it took to end.
fn signal_a_rank(signal: &str, env: &[(&str, &str)]) -> (Output, Duration, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "train",
        "autoencoder",
        "--count",
        "20000",
        "--hidden",
        "100",
        "--iterations",
        "100000",
        "--backend",
        "cpu",
        "--out",
        "run",
    ];
    let mut child = mpirun_command(2, &wgnn(), &args, env, dir.path())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    // Rank 0 reports iteration 0 once the ranks have agreed and evaluated together.
    while !seen.contains("iteration     0") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "the job ended before training: {seen}");
        seen.push_str(&line);
    }
    let ranks = children(child.id());
    assert_eq!(ranks.len(), 2, "mpirun's children: {ranks:?}");
    let start = Instant::now();
    assert!(Command::new("kill").args([signal, &ranks[1].to_string()]).status().unwrap().success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    let took = start.elapsed();
    if signal == "-STOP" {
        let _ = Command::new("kill").args(["-KILL", &ranks[1].to_string()]).status();
    }
    let out = dir.path().join("run");
    (Output { status, stdout: Vec::new(), stderr: (seen + &rest).into_bytes() }, took, out, dir)
}

#[test]
fn a_killed_rank_ends_the_job_with_a_clear_error_in_bounded_time() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let (o, took, run, _dir) = signal_a_rank("-KILL", &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(took < Duration::from_secs(30), "the job took {took:?} to end after a rank died");
    assert!(String::from_utf8_lossy(&o.stderr).contains("exited on signal 9"), "{}", text(&o));
    assert!(!run.join("model.safetensors").exists());
}

#[test]
fn a_rank_that_stops_answering_ends_the_job_after_the_timeout() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let (o, took, run, _dir) = signal_a_rank("-STOP", &[("WGNN_MPI_TIMEOUT", "3")]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(took < Duration::from_secs(30), "the job took {took:?} to end after a rank stopped answering");
    let stderr = String::from_utf8_lossy(&o.stderr);
    let ours: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(ours.len(), 1, "{}", text(&o));
    assert!(ours[0].starts_with("error: rank 0: no answer from the other ranks for 3 s"), "{}", ours[0]);
    assert!(!run.join("model.safetensors").exists());
}

// ---- What runs under mpirun besides full-batch and minibatch dense networks (issue 17) ----

/// A tiny MNIST in IDX files (`train-images-idx3-ubyte`, `train-labels-idx1-ubyte`): `m`
/// images of side × side pixels, labels 0..4, in `dir`.
fn write_idx(dir: &Path, m: usize, side: usize) {
    let mut images = vec![0, 0, 8, 3];
    for d in [m, side, side] {
        images.extend((d as u32).to_be_bytes());
    }
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((m as u32).to_be_bytes());
    let mut state = 12345u32;
    for i in 0..m {
        let label = (i * 7 % 4) as u8;
        labels.push(label);
        for p in 0..side * side {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12345);
            // A pattern that depends on the label, plus noise: learnable, not trivial.
            let base = if p % 4 == label as usize { 160 } else { 40 };
            images.push(base + (state >> 24) as u8 % 80);
        }
    }
    std::fs::write(dir.join("train-images-idx3-ubyte"), images).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), labels).unwrap();
}

fn metrics(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).unwrap()).unwrap()
}

fn ranks_json(dir: &Path) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("ranks.json")).unwrap()).unwrap();
    v.as_array().unwrap().clone()
}

#[test]
fn each_rank_reads_only_its_shard_of_idx_and_npy_and_the_run_equals_one_process() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let m = 47;
    write_idx(dir.path(), m, 4);
    let mnist = format!("mnist:{}", dir.path().display());
    // A .npy of the same images (float64) and its labels (int64), read by row offset too.
    let x = ndarray::Array2::from_shape_fn((m, 6), |(i, j)| ((i * 13 + j * 7) % 17) as f64 / 17.0);
    let y = ndarray::Array1::from_shape_fn(m, |i| (i % 3) as i64);
    ndarray_npy::write_npy(dir.path().join("x.npy"), &x).unwrap();
    ndarray_npy::write_npy(dir.path().join("y.npy"), &y).unwrap();
    let cases: [(&str, Vec<&str>); 2] = [
        ("idx", vec!["softmax", "--data", &mnist, "--iterations", "15"]),
        ("npy", vec!["mlp", "--data", "npy:x.npy", "--labels", "y.npy", "--hidden", "5", "--optimizer", "lbfgs"]),
    ];
    for (name, args) in cases {
        let mut args = args.clone();
        args.extend(["--iterations", "15", "--backend", "cpu", "--precision", "f64"]);
        train(0, &args, &format!("{name}-one"), dir.path(), &[]);
        let one = dir.path().join(format!("{name}-one"));
        for n in [2, 3] {
            let run = dir.path().join(format!("{name}-n{n}"));
            train(n, &args, run.to_str().unwrap(), dir.path(), &[]);
            let d = relative_error(&model_theta(&run), &model_theta(&one));
            assert!(d < 1e-9, "{name}, N = {n}: θ differs from one process's by {d:e}");
            let (a, b) = (metrics(&run), metrics(&one));
            assert_eq!(a["train_examples"], m, "{name}, N = {n}");
            let (ta, tb) = (a["train_accuracy"].as_f64().unwrap(), b["train_accuracy"].as_f64().unwrap());
            assert!((ta - tb).abs() < 1e-12, "{name}, N = {n}: train accuracy {ta} vs one process {tb}");
            // Each rank read its rows alone (and the next rank's first, to check the boundary).
            let ranks = ranks_json(&run);
            assert_eq!(ranks.len(), n);
            for (r, line) in ranks.iter().enumerate() {
                let rows = wgnn::dist::shard_rows(m, n, r);
                let expected = rows.len() + usize::from(r + 1 < n);
                assert_eq!(line["rows_read"], expected, "{name}, N = {n}, rank {r}: {line}");
                let read = line["read"].as_str().unwrap();
                assert_eq!(read, format!("rows {rows:?} of {m} by row offset"), "{name}, N = {n}, rank {r}");
            }
        }
    }
    // Formats read whole say so.
    let csv = dir.path().join("x.csv");
    let text: String = (0..m).map(|i| format!("{},{},{}\n", i % 5, (i * 3) % 7, i % 2)).collect();
    std::fs::write(&csv, text).unwrap();
    let args = ["softmax", "--data", "csv:x.csv", "--iterations", "3", "--backend", "cpu"];
    train(2, &args, "csv-n2", dir.path(), &[]);
    for line in ranks_json(&dir.path().join("csv-n2")) {
        assert_eq!((line["read"].as_str().unwrap(), line["rows_read"].as_u64().unwrap()), ("whole", m as u64));
    }
}

#[test]
fn stacked_autoencoders_over_ranks_end_at_the_single_process_theta() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    write_idx(dir.path(), 121, 6);
    let mnist = format!("mnist:{}", dir.path().display());
    let args = [
        "stacked",
        "--data",
        &mnist,
        "--hidden",
        "10,6",
        "--iterations",
        "15",
        "--backend",
        "cpu",
        "--precision",
        "f64",
    ];
    train(0, &args, "one", dir.path(), &[]);
    let one = dir.path().join("one");
    // N = 3: uneven shards of 121 rows (41, 40, 40); one CI run of a few seconds.
    let n = 3;
    let run = dir.path().join("n3");
    train(n, &args, run.to_str().unwrap(), dir.path(), &[]);
    for stage in ["layer1", "layer2", "softmax", "finetune"] {
        let d = relative_error(&model_theta(&run.join(stage)), &model_theta(&one.join(stage)));
        assert!(d < 1e-6, "N = {n}, stage {stage}: θ differs from one process's by {d:e}");
        let (a, b) = (metrics(&run.join(stage)), metrics(&one.join(stage)));
        let (ca, cb) = (a["final_cost"].as_f64().unwrap(), b["final_cost"].as_f64().unwrap());
        assert!((ca - cb).abs() <= 1e-6 * cb, "N = {n}, stage {stage}: final J {ca}, one process {cb}");
        assert_eq!(a["backend"], format!("cpu f64 × {n} ranks"));
    }
}

#[test]
fn character_and_sequence_models_over_ranks_follow_the_single_process_run() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let words = ["the ", "quick ", "brown ", "fox ", "jumps ", "over ", "a ", "lazy ", "dog. "];
    let text: String = (0..700).map(|i| words[(i * 5 + i / 9) % words.len()]).collect();
    std::fs::write(dir.path().join("t.txt"), text).unwrap();
    let args = [
        "lstm",
        "--data",
        "text:t.txt",
        "--hidden",
        "12",
        "--bptt",
        "8",
        "--batch-size",
        "6",
        "--steps",
        "12",
        "--eval-every",
        "6",
    ];
    let bpc = |run: &Path| metrics(run)["held_out_bits_per_character"].as_f64().unwrap();
    train(0, &args, "text-one", dir.path(), &[]);
    let one = dir.path().join("text-one");
    // 6 streams over 3 ranks (tests/mpi_threads.rs runs 2 and 3 ranks on 5 streams: uneven).
    let run = dir.path().join("text-n3");
    train(3, &args, run.to_str().unwrap(), dir.path(), &[]);
    let (a, b) = (bpc(&run), bpc(&one));
    // f32 gradients summed in other groupings: f32 rounding (ε ≈ 1.2e-7), not more.
    assert!((a - b).abs() <= 1e-6 * b, "N = 3: held-out {a} bits/char, one process {b}");
    let d = relative_error(&model_theta(&run), &model_theta(&one));
    assert!(d < 1e-6, "N = 3: θ after 12 updates differs by {d:e}");

    // A sequence classifier (rnn on a .npy of m × T × n) and a CNN (on IDX images), by
    // minibatches of Adam in f64: the same global batches for any N.
    let (m, t, f) = (30, 5, 3);
    let x = ndarray::Array3::from_shape_fn((m, t, f), |(i, s, j)| (((i + 1) * (s + 2) * (j + 3)) % 11) as f32 / 11.0);
    let y = ndarray::Array1::from_shape_fn(m, |i| (i % 3) as i64);
    ndarray_npy::write_npy(dir.path().join("seq.npy"), &x).unwrap();
    ndarray_npy::write_npy(dir.path().join("seq-labels.npy"), &y).unwrap();
    write_idx(dir.path(), 40, 6);
    let mnist = format!("mnist:{}", dir.path().display());
    let cases: [(&str, Vec<&str>); 2] = [
        ("rnn", vec!["rnn", "--data", "npy:seq.npy", "--labels", "seq-labels.npy", "--hidden", "6"]),
        ("cnn", vec!["cnn", "--data", &mnist, "--net", "conv 2x3x3 tanh, maxpool 2, softmax"]),
    ];
    for (name, args) in cases {
        let mut args = args.clone();
        args.extend(["--iterations", "3", "--batch-size", "8", "--backend", "cpu", "--precision", "f64"]);
        train(0, &args, &format!("{name}-one"), dir.path(), &[]);
        let run = format!("{name}-n2");
        train(2, &args, &run, dir.path(), &[]);
        let d =
            relative_error(&model_theta(&dir.path().join(&run)), &model_theta(&dir.path().join(format!("{name}-one"))));
        assert!(d < 1e-9, "{name}, N = 2: θ after 3 epochs of Adam differs by {d:e}");
    }
}

#[test]
fn commands_that_do_not_run_over_mpi_are_refused_in_one_line() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let refused = |args: &[&str], says: &str| {
        let o = mpirun(2, &wgnn(), args, &[], dir.path());
        assert!(!o.status.success(), "{}", text(&o));
        let stderr = String::from_utf8_lossy(&o.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{}", text(&o));
        assert!(errors[0].contains(says), "{}", errors[0]);
    };
    refused(
        &["train", "autoencoder", "--compare-sparsity", "--count", "100", "--iterations", "2", "--out", "c"],
        "--compare-sparsity does not run over MPI",
    );
    assert!(!dir.path().join("c").exists(), "a refused --compare-sparsity left its folder");
    refused(&["gradcheck"], "`wgnn gradcheck` does not run over MPI");
}

#[test]
fn gpu_ranks_pick_their_adapter_by_local_rank_and_equal_one_gpu_process() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    if wgnn::gpu::choose_adapter(&wgnn::gpu::GpuOptions { api: wgnn::gpu::Api::Auto, adapter: None, matmul: None })
        .is_err()
    {
        eprintln!("no GPU adapter (install mesa-vulkan-drivers for lavapipe): skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (m, n) = (60, 12);
    let x = ndarray::Array2::from_shape_fn((m, n), |(i, j)| ((i * 7 + j * 5) % 13) as f32 / 13.0);
    let y = ndarray::Array1::from_shape_fn(m, |i| (i % 4) as i64);
    ndarray_npy::write_npy(dir.path().join("x.npy"), &x).unwrap();
    ndarray_npy::write_npy(dir.path().join("y.npy"), &y).unwrap();
    let args = ["softmax", "--data", "npy:x.npy", "--labels", "y.npy", "--iterations", "8", "--backend", "gpu"];
    train(0, &args, "one", dir.path(), &[]);
    let mut all: Vec<&str> = vec!["train"];
    all.extend(args);
    all.extend(["--out", "n2"]);
    let o = mpirun(2, &wgnn(), &all, &[], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let d = relative_error(&model_theta(&dir.path().join("n2")), &model_theta(&dir.path().join("one")));
    // f32 sums in other groupings (ε ≈ 1.2e-7), through 8 L-BFGS iterations (measured: 1.1e-6).
    assert!(d < 1e-5, "N = 2 on the GPU: θ after 8 L-BFGS iterations differs from one GPU process's by {d:e}");
    // Adam on GPU ranks keeps θ on each rank's device (tests/mpi_gpu.rs proves the path with
    // the transfer counters): 5 epochs of batches of 16 equal one GPU process to f32 rounding
    // (measured: θ 2.3e-8 relative).
    let adam: Vec<&str> =
        args[..5].iter().copied().chain(["--backend", "gpu", "--optimizer", "adam", "--batch-size", "16"]).collect();
    let adam: Vec<&str> = adam.into_iter().chain(["--iterations", "5"]).collect();
    train(0, &adam, "one-adam", dir.path(), &[]);
    train(2, &adam, "n2-adam", dir.path(), &[]);
    let d = relative_error(&model_theta(&dir.path().join("n2-adam")), &model_theta(&dir.path().join("one-adam")));
    println!("N = 2 on the GPU, 5 Adam epochs: θ {d:.2e} from one GPU process");
    assert!(d < 1e-6, "N = 2 on the GPU: θ after 5 Adam epochs differs from one GPU process's by {d:e}");
    // Rank 0's progress says which adapter each rank uses; ranks.json keeps it.
    let stderr = String::from_utf8_lossy(&o.stderr);
    let ranks = ranks_json(&dir.path().join("n2"));
    for (r, line) in ranks.iter().enumerate() {
        assert_eq!(line["local_rank"], r, "{line}");
        let backend = line["backend"].as_str().unwrap();
        assert!(backend.starts_with("gpu f32: "), "{line}");
        assert!(stderr.lines().any(|l| l.starts_with(&format!("rank {r}")) && l.contains(backend)), "{stderr}");
    }
}

/// Whether a GPU adapter is there (lavapipe counts); says so when not.
fn have_gpu() -> bool {
    let options = wgnn::gpu::GpuOptions { api: wgnn::gpu::Api::Auto, adapter: None, matmul: None };
    let found = wgnn::gpu::choose_adapter(&options).is_ok();
    if !found {
        eprintln!("no GPU adapter (install mesa-vulkan-drivers for lavapipe): skipped");
    }
    found
}

#[test]
fn a_sparse_autoencoder_and_a_character_model_train_on_gpu_ranks_as_one_gpu_process() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    if !have_gpu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The sparse autoencoder: ρ̂ summed over the ranks between the passes of each GPU.
    // Few iterations: the claim is that the ranks compute the one process's steps, and f32's
    // own rounding spread grows along an L-BFGS path (at 20 iterations it was 5e-6 of the
    // 1e-5 bound); at the same θ the evaluations agree to 1e-6 (tests/mpi_gpu.rs).
    let args = ["autoencoder", "--count", "90", "--hidden", "10", "--iterations", "6", "--backend", "gpu"];
    train(0, &args, "sae-one", dir.path(), &[]);
    let one = final_cost(&dir.path().join("sae-one"));
    for n in [2, 3] {
        let run = dir.path().join(format!("sae-n{n}"));
        train(n, &args, run.to_str().unwrap(), dir.path(), &[]);
        let c = final_cost(&run);
        // f32 sums in other groupings (ε ≈ 1.2e-7), through 6 L-BFGS iterations
        // (measured on lavapipe: 5.5e-7 at N = 2, 4.9e-7 at N = 3).
        assert!((c - one).abs() <= 1e-5 * one, "N = {n} on the GPU: final J {c}, one GPU process {one}");
        let backend = metrics(&run)["backend"].as_str().unwrap().to_string();
        assert!(backend.starts_with("gpu f32: ") && backend.ends_with(&format!(" × {n} ranks")), "{backend}");
    }

    // A character model: each rank's GPU takes its block of the streams; a checkpoint written
    // by 2 ranks resumes on 3.
    let words = ["the ", "quick ", "brown ", "fox ", "jumps ", "over ", "a ", "lazy ", "dog. "];
    let corpus: String = (0..400).map(|i| words[(i * 5 + i / 9) % words.len()]).collect();
    std::fs::write(dir.path().join("t.txt"), corpus).unwrap();
    let base =
        ["lstm", "--data", "text:t.txt", "--hidden", "8", "--bptt", "6", "--batch-size", "5", "--backend", "gpu"];
    let with = |more: &[&'static str]| base.iter().chain(more).copied().collect::<Vec<&str>>();
    train(0, &with(&["--steps", "8", "--eval-every", "4"]), "text-one", dir.path(), &[]);
    let one = dir.path().join("text-one");
    let bpc = |run: &Path| metrics(run)["held_out_bits_per_character"].as_f64().unwrap();
    let run = dir.path().join("text-n2");
    train(2, &with(&["--steps", "8", "--eval-every", "4"]), run.to_str().unwrap(), dir.path(), &[]);
    let (a, b) = (bpc(&run), bpc(&one));
    // f32 gradients summed in other groupings: f32 rounding (ε ≈ 1.2e-7), not more.
    assert!((a - b).abs() <= 1e-6 * b, "N = 2 on the GPU: held-out {a} bits/char, one GPU process {b}");
    let d = relative_error(&model_theta(&run), &model_theta(&one));
    assert!(d < 1e-6, "N = 2 on the GPU: θ after 8 updates differs from one GPU process's by {d:e}");
    let half = dir.path().join("text-half");
    train(2, &with(&["--steps", "4", "--checkpoint-every", "4"]), half.to_str().unwrap(), dir.path(), &[]);
    let o = mpirun(3, &wgnn(), &["train", "--resume", "text-half", "--steps", "8", "--quiet"], &[], dir.path());
    assert!(o.status.success(), "{}", text(&o));
    let d = relative_error(&model_theta(&half), &model_theta(&one));
    assert!(d < 1e-6, "4 updates on 2 GPU ranks + 4 on 3: θ differs from one GPU run's by {d:e}");
}

/// A bad `WGNN_MPI_TIMEOUT` is refused by every rank together: one line, rank 0's, every run
/// (each rank printed and exited on its own before, and mpirun's end of the job at the first
/// non-zero exit could cut rank 0's line: 1 or 2 lines of 3, varying run to run).
#[test]
fn a_bad_mpi_timeout_is_refused_in_one_line_by_every_rank() {
    let _one = MPIRUN.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let args = ["train", "autoencoder", "--count", "50", "--iterations", "2", "--out", "r", "--backend", "cpu"];
    let o = mpirun(3, &wgnn(), &args, &[("WGNN_MPI_TIMEOUT", "abc")], dir.path());
    assert!(!o.status.success(), "{}", text(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors,
        ["error: WGNN_MPI_TIMEOUT=abc is not a number of seconds above 0 (the longest wait for the other ranks)"],
        "{}",
        text(&o)
    );
    assert!(!dir.path().join("r").exists(), "a refused job left its run folder");
}
