//! Data-parallel training (issue 17) proven without MPI: ranks as threads of one process
//! ([`ThreadGroup`]), each with its own CPU backend and shard, summing in rank order as the
//! MPI ranks do. At the same θ, J and ∇J over N = 1, 2, 3 ranks (3: uneven shards) equal one
//! process's to 1e-12 (f64) and 1e-6 (f32) relative, for a sparse autoencoder, softmax, an
//! MLP and a CNN, full batch and minibatch; L-BFGS and Adam runs end where one process ends;
//! the same N twice gives the same bits; ranks that disagree on the data or the network are
//! refused, and a failure on one rank is every rank's error. `tests/mpi.rs` runs the same
//! over real MPI ranks (`mpirun`).

mod mpi_common;

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mpi_common::{Problem, problems, relative_error, single};
use wgnn::cpu::Real;
use wgnn::dist::{DistBackend, ShardBackend, ThreadGroup, local_spec, shard_rows};
use wgnn::optim::{BackendObjective, Hooks, Lbfgs, Method, Minibatch, Optimizer, UpdateRule};
use wgnn::{Backend, Batch, CpuBackend, Targets};

/// Runs `f` on `n` ranks (threads), each with its group handle; results in rank order.
fn on_ranks<T: Send>(n: usize, f: impl Fn(ThreadGroup) -> T + Sync) -> Vec<T> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = ThreadGroup::new(n).into_iter().map(|g| scope.spawn(|| f(g))).collect();
        handles.into_iter().map(|h| h.join().expect("a rank panicked")).collect()
    })
}

/// A rank's backend in precision F over the group, loaded with all of `p`'s examples.
fn dist_backend<F: Real>(p: &Problem, group: ThreadGroup) -> DistBackend {
    let inner: Box<dyn ShardBackend> = Box::new(CpuBackend::<F>::new(local_spec(&p.spec)).unwrap());
    let mut b = DistBackend::new(p.spec.clone(), inner, Rc::new(group)).unwrap();
    b.set_data((&p.x).into(), p.targets()).unwrap();
    b
}

fn check_agreement<F: Real>(tol: f64) {
    let m = 31; // 31 = 16 + 15 = 11 + 10 + 10: uneven shards
    let minibatch: Vec<usize> = vec![30, 2, 17, 5, 11, 29, 0, 16, 8, 21];
    for p in problems(m) {
        for (what, batch) in
            [("full batch", Batch::All), ("rows 3..27", Batch::Rows(3..27)), ("minibatch", Batch::Indices(&minibatch))]
        {
            let (cost, grad) = single::<F>(&p, batch.clone());
            for n in 1..=3 {
                let results = on_ranks(n, |g| {
                    let mut b = dist_backend::<F>(&p, g);
                    let mut grad = vec![0.0; p.theta.len()];
                    let c = b.cost_and_grad(&p.theta, batch.clone(), &mut grad).unwrap();
                    let cost_only = b.cost(&p.theta, batch.clone()).unwrap();
                    (c.total(), grad, cost_only.total())
                });
                for (r, (c, g, c_only)) in results.iter().enumerate() {
                    let dc = (c - cost).abs() / cost.abs();
                    let dg = relative_error(g, &grad);
                    assert!(dc < tol, "{} {} {what}, N = {n}, rank {r}: J {c} vs {cost} (rel {dc:e})", F::NAME, p.name);
                    assert!(dg < tol, "{} {} {what}, N = {n}, rank {r}: ∇J differs by {dg:e}", F::NAME, p.name);
                    assert_eq!(
                        c.to_bits(),
                        c_only.to_bits(),
                        "{} {what}: cost alone differs from cost with gradient",
                        p.name
                    );
                    // Every rank holds the same bits: they take the same optimizer steps.
                    assert_eq!(
                        g, &results[0].1,
                        "{} {what}, N = {n}: rank {r}'s gradient differs from rank 0's",
                        p.name
                    );
                    assert_eq!(c.to_bits(), results[0].0.to_bits());
                }
            }
        }
    }
}

#[test]
fn cost_and_gradient_over_1_2_3_ranks_equal_one_process_f64() {
    check_agreement::<f64>(1e-12);
}

#[test]
fn cost_and_gradient_over_1_2_3_ranks_equal_one_process_f32() {
    check_agreement::<f32>(1e-6);
}

#[test]
fn shards_cover_every_row_once_in_order() {
    for (m, n) in [(10, 3), (31, 2), (7, 7), (60_000, 3), (5, 1)] {
        let shards: Vec<_> = (0..n).map(|r| shard_rows(m, n, r)).collect();
        assert_eq!(shards[0].start, 0);
        assert_eq!(shards[n - 1].end, m);
        assert!(shards.windows(2).all(|w| w[0].end == w[1].start), "{m} over {n}: {shards:?}");
        let (lo, hi) = (shards.iter().map(|s| s.len()).min().unwrap(), shards.iter().map(|s| s.len()).max().unwrap());
        assert!(hi - lo <= 1, "{m} over {n}: shards of {lo} to {hi} rows");
    }
    assert_eq!(shard_rows(10, 3, 0), 0..4);
    assert_eq!(shard_rows(10, 3, 2), 7..10);
}

/// θ after `iterations` of `method` on `n` ranks (0: one process, no DistBackend), f64.
fn train(p: &Problem, method: &Method, iterations: usize, n: usize) -> Vec<f64> {
    let run = |backend: &mut dyn Backend| {
        let mut theta = p.theta.clone();
        let mut opt = Optimizer::new(method.clone()).unwrap();
        let stop = method.default_stop().with_max_iterations(iterations);
        opt.run(&mut BackendObjective::new(backend), &mut theta, &stop, &mut Hooks::new()).unwrap();
        theta
    };
    if n == 0 {
        let mut b = CpuBackend::<f64>::new(p.spec.clone()).unwrap();
        b.set_data((&p.x).into(), p.targets()).unwrap();
        return run(&mut b);
    }
    let thetas = on_ranks(n, |g| run(&mut dist_backend::<f64>(p, g)));
    assert!(thetas.iter().all(|t| t == &thetas[0]), "{}: the ranks ended at different θ", p.name);
    thetas.into_iter().next().unwrap()
}

fn cost_at(p: &Problem, theta: &[f64]) -> f64 {
    let mut b = CpuBackend::<f64>::new(p.spec.clone()).unwrap();
    b.set_data((&p.x).into(), p.targets()).unwrap();
    b.cost(theta, Batch::All).unwrap().total()
}

#[test]
fn fifty_lbfgs_iterations_end_at_the_single_process_cost_and_repeat_bit_for_bit() {
    let problems = problems(40);
    for p in [&problems[0], &problems[2]] {
        let method = Method::Lbfgs(Lbfgs::default());
        let one = cost_at(p, &train(p, &method, 50, 0));
        assert!(one < cost_at(p, &p.theta), "{}: L-BFGS did not lower J", p.name);
        for n in [2, 3] {
            let theta = train(p, &method, 50, n);
            let c = cost_at(p, &theta);
            assert!((c - one).abs() <= 1e-6 * one.abs(), "{}: N = {n} ends at J = {c}, one process at {one}", p.name);
            assert_eq!(theta, train(p, &method, 50, n), "{}: two runs over {n} ranks differ", p.name);
        }
    }
}

#[test]
fn minibatch_adam_over_ranks_follows_the_single_process_run() {
    let p = &problems(50)[2];
    let adam = Minibatch::sgd(0.01).with_rule(UpdateRule::ADAM).with_batch_size(8).with_seed(5);
    let method = Method::Minibatch(adam);
    let one = train(p, &method, 4, 0);
    assert!(relative_error(&one, &p.theta) > 1e-3, "Adam did not move θ");
    for n in [1, 2, 3] {
        let theta = train(p, &method, 4, n);
        // f64 throughout: the same global batches, summed in another order.
        let d = relative_error(&theta, &one);
        assert!(d < 1e-12, "N = {n}: θ after 4 epochs differs from one process's by {d:e}");
    }
}

#[test]
fn ranks_with_other_data_or_another_network_are_refused_on_every_rank() {
    let p = &problems(12)[1];
    let errors = on_ranks(3, |g| {
        let rank = wgnn::dist::Collective::rank(&g);
        let mut x = p.x.clone();
        if rank == 2 {
            x[[8, 3]] += 0.5; // row 8: the first of rank 2's shard 8..12
        }
        let inner: Box<dyn ShardBackend> = Box::new(CpuBackend::<f64>::new(local_spec(&p.spec)).unwrap());
        let mut b = DistBackend::new(p.spec.clone(), inner, Rc::new(g)).unwrap();
        b.set_data((&x).into(), p.targets()).unwrap_err().to_string()
    });
    for e in &errors {
        assert!(e.contains("rank 2's examples differ from rank 0's at the shard boundaries"), "{e}");
    }
    let errors = on_ranks(2, |g| {
        let rank = wgnn::dist::Collective::rank(&g);
        let x = if rank == 1 { p.x.slice(ndarray::s![..11, ..]).to_owned() } else { p.x.clone() };
        let l = p.labels.clone().unwrap();
        let inner: Box<dyn ShardBackend> = Box::new(CpuBackend::<f64>::new(local_spec(&p.spec)).unwrap());
        let mut b = DistBackend::new(p.spec.clone(), inner, Rc::new(g)).unwrap();
        b.set_data((&x).into(), Targets::Labels(&l[..x.nrows()])).unwrap_err().to_string()
    });
    for e in &errors {
        assert!(e.contains("rank 1 has 11 examples of 20 values but rank 0 has 12 of 20"), "{e}");
    }
    let errors = on_ranks(2, |g| {
        let rank = wgnn::dist::Collective::rank(&g);
        let spec = if rank == 1 { p.spec.clone().with_weight_decay(0.5).unwrap() } else { p.spec.clone() };
        let inner: Box<dyn ShardBackend> = Box::new(CpuBackend::<f64>::new(local_spec(&spec)).unwrap());
        let mut b = DistBackend::new(spec, inner, Rc::new(g)).unwrap();
        b.set_data((&p.x).into(), p.targets()).unwrap_err().to_string()
    });
    for e in &errors {
        assert!(e.contains("rank 1 builds another network than rank 0"), "{e}");
    }
}

#[test]
fn a_failure_on_one_rank_is_every_ranks_error_and_a_stop_on_one_stops_all() {
    let p = &problems(12)[1];
    let results = on_ranks(2, |g| {
        let mut b = dist_backend::<f32>(p, g);
        let raw = Arc::new(AtomicBool::new(false));
        let agreed = b.agree_on_interrupt(raw.clone());
        // θ beyond f32 on rank 1 only: its backend refuses it.
        let mut theta = p.theta.clone();
        if b.shard().start > 0 {
            theta[0] = 1e300;
            raw.store(true, Ordering::SeqCst);
        }
        let mut grad = vec![0.0; theta.len()];
        let failed = b.cost_and_grad(&theta, Batch::All, &mut grad).unwrap_err().to_string();
        let failed_together = b.failed_together().get();
        b.cost_and_grad(&p.theta, Batch::All, &mut grad).unwrap();
        (failed, failed_together, agreed.load(Ordering::SeqCst))
    });
    for (failed, together, agreed) in results {
        assert!(failed.starts_with("rank 1: θ[0] = 1e300 is beyond"), "{failed}");
        assert!(together);
        assert!(agreed, "rank 1's stop did not reach every rank");
    }
}

/// Each rank's shard read by row offset from a `.npy` file: exactly its rows of the whole
/// matrix, and J and ∇J over the shards read so equal those over all rows given to every rank,
/// bit for bit. A rank whose file differs at its first row is refused on every rank.
#[test]
fn npy_shards_read_by_offset_give_the_same_bits_as_the_whole_file() {
    use ndarray_npy::WriteNpyExt;
    let p = &problems(31)[1];
    let dir = tempfile::tempdir().unwrap();
    let x32 = p.x.mapv(|v| v as f32);
    let path = dir.path().join("x.npy");
    x32.write_npy(std::fs::File::create(&path).unwrap()).unwrap();
    let labels = p.labels.clone().unwrap();
    for n in 1..=3 {
        let results = on_ranks(n, |g| {
            let rank = wgnn::dist::Collective::rank(&g);
            let shard = wgnn::data::shard::npy_shard(&path, rank, n).unwrap();
            assert_eq!(shard.rows, shard_rows(31, n, rank));
            assert_eq!(shard.x, x32.slice(ndarray::s![shard.rows.clone(), ..]));
            let next = shard.next_row.clone();
            assert_eq!(next.as_deref(), (shard.rows.end < 31).then(|| x32.row(shard.rows.end).to_vec()).as_deref());
            let inner: Box<dyn ShardBackend> = Box::new(CpuBackend::<f32>::new(local_spec(&p.spec)).unwrap());
            let mut b = DistBackend::new(p.spec.clone(), inner, Rc::new(g)).unwrap();
            let l = &labels[shard.rows.clone()];
            let next_label = next.as_ref().map(|_| labels[shard.rows.end]);
            b.set_shard(
                (&shard.x).into(),
                Targets::Labels(l),
                shard.rows.clone(),
                31,
                next.as_deref().map(|r| (r, next_label)),
            )
            .unwrap();
            let mut grad = vec![0.0; p.theta.len()];
            let c = b.cost_and_grad(&p.theta, Batch::All, &mut grad).unwrap();
            (c.total(), grad)
        });
        let whole = on_ranks(n, |g| {
            let inner: Box<dyn ShardBackend> = Box::new(CpuBackend::<f32>::new(local_spec(&p.spec)).unwrap());
            let mut b = DistBackend::new(p.spec.clone(), inner, Rc::new(g)).unwrap();
            b.set_data((&x32).into(), Targets::Labels(&labels)).unwrap();
            let mut grad = vec![0.0; p.theta.len()];
            let c = b.cost_and_grad(&p.theta, Batch::All, &mut grad).unwrap();
            (c.total(), grad)
        });
        assert_eq!(results[0].0.to_bits(), whole[0].0.to_bits(), "N = {n}");
        assert_eq!(results[0].1, whole[0].1, "N = {n}");
    }
    // Rank 2 reads a file whose row 21 (its first) differs.
    let mut other = x32.clone();
    other[[21, 0]] += 0.25;
    let other_path = dir.path().join("other.npy");
    other.write_npy(std::fs::File::create(&other_path).unwrap()).unwrap();
    let errors = on_ranks(3, |g| {
        let rank = wgnn::dist::Collective::rank(&g);
        let shard = wgnn::data::shard::npy_shard(if rank == 2 { &other_path } else { &path }, rank, 3).unwrap();
        let inner: Box<dyn ShardBackend> = Box::new(CpuBackend::<f32>::new(local_spec(&p.spec)).unwrap());
        let mut b = DistBackend::new(p.spec.clone(), inner, Rc::new(g)).unwrap();
        let next_label = shard.next_row.as_ref().map(|_| labels[shard.rows.end]);
        let l = &labels[shard.rows.clone()];
        b.set_shard(
            (&shard.x).into(),
            Targets::Labels(l),
            shard.rows.clone(),
            31,
            shard.next_row.as_deref().map(|r| (r, next_label)),
        )
        .unwrap_err()
        .to_string()
    });
    for e in errors {
        assert!(e.starts_with("rank 2's first example (row 21) differs from the one rank 1 reads there"), "{e}");
    }
}

/// MNIST's IDX files read by shard: each rank's images and labels are exactly its rows of the
/// whole set (the 10,000 test images over 3 ranks: 3,334 + 3,333 + 3,333).
#[test]
fn mnist_shards_are_the_rows_of_the_whole_set() {
    let dir = std::env::var_os("WGNN_DATA_DIR").expect("WGNN_DATA_DIR=../shared/data (the real data sets)");
    let dir = std::path::PathBuf::from(dir).join("mnist");
    let whole = wgnn::data::Mnist::load(&dir, wgnn::data::Split::Test).unwrap();
    for rank in 0..3 {
        let shard = wgnn::data::Mnist::load_shard(&dir, wgnn::data::Split::Test, rank, 3).unwrap();
        assert_eq!((shard.total, shard.rows.clone()), (10_000, shard_rows(10_000, 3, rank)));
        assert_eq!(shard.x, whole.images.slice(ndarray::s![shard.rows.clone(), ..]));
        assert_eq!(shard.labels.as_deref(), Some(&whole.labels[shard.rows.clone()]));
        match shard.next_row {
            Some(row) => {
                assert_eq!(row, whole.images.row(shard.rows.end).to_vec());
                assert_eq!(shard.next_label, Some(whole.labels[shard.rows.end]));
            }
            None => assert_eq!(shard.rows.end, 10_000),
        }
    }
}

/// A character model trained with its minibatch streams split over N = 2, 3 thread ranks
/// follows one process (f64: to rounding; N = 1 through `train_on_ranks` is `train` bit for
/// bit), and held-out bits per character agree on every rank.
#[test]
fn a_character_model_over_ranks_follows_one_process() {
    use wgnn::cpu::sequence::Recurrent;
    use wgnn::model::Layer;
    use wgnn::optim::{Control, UpdateRule};
    use wgnn::train::char_model::{self, Job};
    let vocab = 5;
    let ids: Vec<u32> = (0..900u32).map(|i| (i * 7 + i / 5) % vocab as u32).collect();
    let (train_ids, held) = ids.split_at(800);
    let spec = char_model::spec(vocab, 6, vec![Layer::Lstm { units: 7, per_step: true }]).unwrap();
    let net = Recurrent::new(spec.clone()).unwrap();
    let job =
        Job { batch: 5, rule: UpdateRule::ADAM, learning_rate: 1e-2, clip_norm: Some(1.0), steps: 8, eval_every: 4 };
    let theta0 = wgnn::model::Init::Uniform.theta(&spec, 3);
    let run = |comm: &dyn wgnn::dist::Collective| {
        let mut theta = theta0.clone();
        let mut bits = Vec::new();
        let (done, last) = char_model::train_on_ranks::<f64>(&net, &mut theta, train_ids, held, &job, comm, &mut |s| {
            bits.push(s.train_bits);
            Control::Continue
        })
        .unwrap();
        (done, last.unwrap().bits_per_character, theta, bits)
    };
    let mut theta = theta0.clone();
    let (_, alone) =
        char_model::train::<f64>(&net, &mut theta, train_ids, held, &job, &mut |_| Control::Continue).unwrap();
    let one = run(&wgnn::dist::Solo);
    assert_eq!(one.2, theta, "N = 1 through train_on_ranks is train, bit for bit");
    assert_eq!(one.1.to_bits(), alone.unwrap().bits_per_character.to_bits());
    for n in [2, 3] {
        let results = on_ranks(n, |g| run(&g));
        for (r, (done, bpc, theta, bits)) in results.iter().enumerate() {
            assert_eq!(*done, 8);
            let d = relative_error(theta, &one.2);
            assert!(d < 1e-12, "N = {n}, rank {r}: θ after 8 updates differs by {d:e}");
            assert!((bpc - one.1).abs() < 1e-12 * one.1, "N = {n}, rank {r}: held-out {bpc} vs {}", one.1);
            assert!(bits.iter().zip(&one.3).all(|(a, b)| (a - b).abs() < 1e-12 * b), "N = {n}: train bits {bits:?}");
            assert_eq!(theta, &results[0].2, "N = {n}: rank {r}'s θ differs from rank 0's");
        }
    }
    // Fewer streams than ranks: refused on every rank, before any sum.
    let errors = on_ranks(6, |g| {
        let mut theta = theta0.clone();
        char_model::train_on_ranks::<f64>(&net, &mut theta, train_ids, held, &job, &g, &mut |_| Control::Continue)
            .unwrap_err()
            .to_string()
    });
    assert!(errors.iter().all(|e| e.contains("5 streams cannot be shared by 6 ranks")), "{errors:?}");
}

/// A rank given its shard alone (`expect_shard`, as when it read it by offset) computes what
/// a rank given every example computes, and `sum_over_shards` totals tallies over the ranks
/// only then.
#[test]
fn a_shard_read_alone_gives_the_same_sums_and_totals_tallies_over_ranks() {
    use wgnn::dist::Collective;
    let p = &problems(31)[1];
    let labels = p.labels.as_ref().unwrap();
    // The examples as a reader gives them (f32), and one process's J and ∇J on them.
    let x32 = p.x.mapv(|v| v as f32);
    let mut alone = CpuBackend::<f64>::new(p.spec.clone()).unwrap();
    alone.set_data((&x32).into(), Targets::Labels(labels)).unwrap();
    let mut grad = vec![0.0; p.theta.len()];
    let cost = alone.cost_and_grad(&p.theta, Batch::All, &mut grad).unwrap().total();
    for n in [2, 3] {
        let results = on_ranks(n, |g| {
            let (rank, size) = (g.rank(), g.size());
            let rows = shard_rows(31, size, rank);
            let inner: Box<dyn ShardBackend> = Box::new(CpuBackend::<f64>::new(local_spec(&p.spec)).unwrap());
            let mut b = DistBackend::new(p.spec.clone(), inner, Rc::new(g)).unwrap();
            let next = (rows.end < 31).then(|| (x32.row(rows.end).to_vec(), Some(labels[rows.end])));
            b.expect_shard(wgnn::dist::ShardPlace { rows: rows.clone(), total: 31, next });
            let x = x32.slice(ndarray::s![rows.clone(), ..]).to_owned();
            b.set_data((&x).into(), Targets::Labels(&labels[rows.clone()])).unwrap();
            let mut grad = vec![0.0; p.theta.len()];
            let c = b.cost_and_grad(&p.theta, Batch::All, &mut grad).unwrap().total();
            let tally = b.sum_over_shards(&[rows.len() as f64]).unwrap();
            (c, grad, tally[0], b.num_examples())
        });
        for (r, (c, g, tally, m)) in results.iter().enumerate() {
            assert!((c - cost).abs() < 1e-12 * cost.abs(), "N = {n}, rank {r}: J {c} vs {cost}");
            assert!(relative_error(g, &grad) < 1e-12, "N = {n}, rank {r}");
            assert_eq!((*tally, *m), (31.0, 31), "N = {n}, rank {r}: the shards' rows add up to every example");
        }
    }
    // Given every example, a rank's tallies are already totals.
    let totals = on_ranks(2, |g| dist_backend::<f64>(p, g).sum_over_shards(&[31.0]).unwrap()[0]);
    assert_eq!(totals, [31.0, 31.0]);
}

/// Under an MPI launcher of several ranks (its variables set by hand here), a build without
/// the `mpi` feature refuses `train` and every build refuses other commands: rank 0 in one
/// line and a non-zero code, the other ranks quietly — never N copies writing the same files.
#[cfg(not(feature = "mpi"))]
#[test]
fn under_a_launcher_what_cannot_run_as_ranks_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |rank: &str, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_wgnn"))
            .args(args)
            .env("OMPI_COMM_WORLD_RANK", rank)
            .env("OMPI_COMM_WORLD_SIZE", "2")
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let train = ["train", "autoencoder", "--count", "100", "--iterations", "2", "--out", "r"];
    for (args, says) in
        [(&train[..], "built without MPI"), (&["gradcheck"][..], "`wgnn gradcheck` does not run over MPI")]
    {
        let o = run("0", args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("error: ") && stderr.contains(says), "{stderr}");
        let o = run("1", args);
        assert!(o.status.success() && o.stderr.is_empty() && o.stdout.is_empty(), "rank 1: {o:?}");
    }
    assert!(!dir.path().join("r").exists(), "a refused train wrote its run folder");
    // One rank (-np 1) runs as one process.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_wgnn"))
        .args(["devices"])
        .env("OMPI_COMM_WORLD_RANK", "0")
        .env("OMPI_COMM_WORLD_SIZE", "1")
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&o.stderr).contains("MPI"), "{o:?}");
}

/// A character model's rank that fails alone mid-run — its streams of update 3 hold a
/// character outside the vocabulary (a corrupt stretch of text only it reads), or its part of
/// the held-out text does — makes every rank stop at that same update with one line naming
/// it, through the sum every rank reaches anyway (no rank waits for a sum that never comes:
/// with threads as ranks that wait would hang this test). Alone, the same text gives the
/// error as it is.
#[test]
fn a_character_model_rank_failing_alone_stops_every_rank_at_the_same_update() {
    use wgnn::cpu::sequence::Recurrent;
    use wgnn::data::text::StreamBatches;
    use wgnn::model::Layer;
    use wgnn::optim::{Control, UpdateRule};
    use wgnn::train::char_model::{self, Job};
    let vocab = 5;
    let ids: Vec<u32> = (0..900u32).map(|i| (i * 7 + i / 5) % vocab as u32).collect();
    let (train_ids, held) = ids.split_at(800);
    let spec = char_model::spec(vocab, 6, vec![Layer::Lstm { units: 7, per_step: true }]).unwrap();
    let net = Recurrent::new(spec.clone()).unwrap();
    let job =
        Job { batch: 5, rule: UpdateRule::ADAM, learning_rate: 1e-2, clip_norm: Some(1.0), steps: 8, eval_every: 4 };
    let theta0 = wgnn::model::Init::Uniform.theta(&spec, 3);
    // Stream 4 (the last rank's, for N = 2 and 3) reads position s + 1 in update 3 alone.
    let s = StreamBatches::new(train_ids.len(), job.batch, 6).unwrap().starts(2)[4];
    let mut bad_train = train_ids.to_vec();
    bad_train[s + 1] = 99;
    // The last held-out window (90..96) is the last rank's.
    let mut bad_held = held.to_vec();
    bad_held[95] = 99;
    // (error, updates this rank's on_step saw) on every rank.
    let run = |comm: &dyn wgnn::dist::Collective, train: &[u32], held: &[u32]| {
        let mut theta = theta0.clone();
        let mut seen = Vec::new();
        let e = char_model::train_on_ranks::<f64>(&net, &mut theta, train, held, &job, comm, &mut |s| {
            seen.push(s.step);
            Control::Continue
        })
        .unwrap_err()
        .to_string();
        (e, seen)
    };
    let (alone, seen) = run(&wgnn::dist::Solo, &bad_train, held);
    assert_eq!(alone, "character id 99 is outside a vocabulary of 5", "alone");
    assert_eq!(seen, [1, 2], "alone: two updates before the bad window");
    for n in [2, 3] {
        let last = n - 1;
        for (train, held, doing, before) in [
            (&bad_train[..], held, "update 3".to_string(), vec![1, 2]),
            (train_ids, &bad_held[..], "scoring the held-out text".to_string(), vec![1, 2, 3]),
        ] {
            let results = on_ranks(n, |g| run(&g, train, held));
            for (r, (e, seen)) in results.iter().enumerate() {
                let want = format!("rank {last}, {doing}: character id 99 is outside a vocabulary of 5");
                assert_eq!(e, &want, "N = {n}, rank {r}");
                assert_eq!(seen, &before, "N = {n}, rank {r}: the updates completed before the stop");
            }
        }
    }
}
