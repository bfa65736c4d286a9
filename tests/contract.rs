//! The contract every backend keeps (DESIGN.md, "The contract tests run on every backend"),
//! run on the CPU in f64 and f32 and on the GPU with each matmul kernel by one macro,
//! `for_each_backend!`: the same bits twice, `cost` equal to the cost of `cost_and_grad`,
//! batches that select exactly their rows, reused and released buffers that change no result,
//! and bad input refused with the same clear error on every backend. How close each backend
//! comes to the f64 reference is for the parity suites (`cpu_backend.rs`, `gpu_parity.rs`).

#[macro_use]
mod common;

use common::{BackendKind, Case};
use ndarray::Array2;
use wgnn::model::{Activation, Init, NetSpec, Output};
use wgnn::{Backend, Batch, Targets};

for_each_backend!(
    results_are_deterministic_bit_for_bit,
    cost_alone_equals_cost_with_gradient,
    batches_select_exactly_their_rows,
    reused_and_released_buffers_change_no_result,
    bad_input_is_refused_with_a_clear_error,
);

fn eval(backend: &mut dyn Backend, theta: &[f64], batch: Batch) -> (f64, Vec<f64>) {
    let mut g = vec![f64::NAN; theta.len()];
    let c = backend.cost_and_grad(theta, batch, &mut g).unwrap();
    (c.total(), g)
}

fn loaded(kind: BackendKind, case: &Case) -> Box<dyn Backend> {
    let mut b = kind.make(&case.spec);
    case.load(b.as_mut());
    b
}

fn same_bits(a: &(f64, Vec<f64>), b: &(f64, Vec<f64>)) -> bool {
    a.0.to_bits() == b.0.to_bits()
        && a.1.len() == b.1.len()
        && a.1.iter().zip(&b.1).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn results_are_deterministic_bit_for_bit(kind: BackendKind) {
    for case in common::gradcheck_cases() {
        let first = eval(loaded(kind, &case).as_mut(), &case.theta, Batch::All);
        let mut b = loaded(kind, &case);
        let second = eval(b.as_mut(), &case.theta, Batch::All);
        let third = eval(b.as_mut(), &case.theta, Batch::All);
        assert!(first.0.is_finite(), "{kind:?} {}: cost {}", case.name, first.0);
        assert!(same_bits(&first, &second), "{kind:?} {}: a second backend gives other bits", case.name);
        assert!(same_bits(&second, &third), "{kind:?} {}: a second call gives other bits", case.name);
    }
}

fn cost_alone_equals_cost_with_gradient(kind: BackendKind) {
    for case in common::gradcheck_cases() {
        let mut b = loaded(kind, &case);
        let m = case.x.nrows();
        for batch in [Batch::All, Batch::Rows(1..m), Batch::Indices(&[m - 1, 0, 0])] {
            let with_grad = eval(b.as_mut(), &case.theta, batch.clone()).0;
            let alone = b.cost(&case.theta, batch.clone()).unwrap().total();
            assert_eq!(with_grad.to_bits(), alone.to_bits(), "{kind:?} {}: {batch:?}", case.name);
        }
    }
}

/// `Batch::Indices` and `Batch::Rows` give the bits of the same rows loaded on their own, and
/// a different batch gives a different cost (the selection is not ignored).
fn batches_select_exactly_their_rows(kind: BackendKind) {
    for case in common::gradcheck_cases() {
        let m = case.x.nrows();
        let mut full = loaded(kind, &case);
        let subset = |ix: &[usize]| {
            let x = case.x.select(ndarray::Axis(0), ix);
            let labels = case.labels.as_ref().map(|l| ix.iter().map(|&i| l[i]).collect::<Vec<_>>());
            let values = case.values.as_ref().map(|v| v.select(ndarray::Axis(0), ix));
            let targets = match (&labels, &values) {
                (Some(l), _) => Targets::Labels(l),
                (_, Some(v)) => Targets::Values(v.into()),
                _ => Targets::Inputs,
            };
            let mut b = kind.make(&case.spec);
            b.set_data((&x).into(), targets).unwrap();
            eval(b.as_mut(), &case.theta, Batch::All)
        };
        let rows = [m - 1, 0, 2, 2];
        let picked = eval(full.as_mut(), &case.theta, Batch::Indices(&rows));
        assert!(same_bits(&picked, &subset(&rows)), "{kind:?} {}: Batch::Indices", case.name);
        let middle = eval(full.as_mut(), &case.theta, Batch::Rows(1..m - 1));
        assert!(same_bits(&middle, &subset(&(1..m - 1).collect::<Vec<_>>())), "{kind:?} {}: Batch::Rows", case.name);
        assert_ne!(eval(full.as_mut(), &case.theta, Batch::All).0, middle.0, "{kind:?} {}", case.name);
    }
}

/// A backend keeps its buffers from call to call, with stale values in them: every result of a
/// backend that has run other batches and another θ is the bits of a fresh backend's, and so
/// is every result after `release_buffers`.
fn reused_and_released_buffers_change_no_result(kind: BackendKind) {
    for case in common::gradcheck_cases() {
        let m = case.x.nrows();
        let ix: Vec<usize> = (0..m).rev().step_by(2).collect();
        let other: Vec<f64> = case.theta.iter().map(|t| 0.5 - 2.0 * t).collect();
        let mut used = loaded(kind, &case);
        for batch in [Batch::All, Batch::Rows(1..m), Batch::Indices(&ix), Batch::Rows(0..1), Batch::All] {
            let fresh = eval(loaded(kind, &case).as_mut(), &case.theta, batch.clone());
            let reused = eval(used.as_mut(), &case.theta, batch.clone());
            assert!(same_bits(&fresh, &reused), "{kind:?} {}: after reuse on {batch:?}", case.name);
            used.release_buffers();
            let released = eval(used.as_mut(), &case.theta, batch.clone());
            assert!(same_bits(&fresh, &released), "{kind:?} {}: after release on {batch:?}", case.name);
            // Leave the buffers full of another θ's values before the next batch.
            eval(used.as_mut(), &other, batch);
        }
        let out = |b: &mut dyn Backend| b.forward(&case.theta, (&case.x).into()).unwrap();
        assert_eq!(
            out(loaded(kind, &case).as_mut()),
            out(used.as_mut()),
            "{kind:?} {}: forward after reuse",
            case.name
        );
    }
}

fn bad_input_is_refused_with_a_clear_error(kind: BackendKind) {
    let spec = NetSpec::new(&[3, 2, 4], Activation::Sigmoid, Output::Softmax).unwrap();
    let theta = Init::Uniform.theta(&spec, 0);
    let mut b = kind.make(&spec);
    let x = Array2::<f64>::zeros((5, 3));
    let refusal = |r: wgnn::Result<()>| r.unwrap_err().to_string();

    let e = b.cost(&theta, Batch::All).unwrap_err().to_string();
    assert!(e.contains("no data loaded"), "{kind:?}: {e}");
    let wide = Array2::<f64>::zeros((5, 4));
    let e = refusal(b.set_data((&wide).into(), Targets::Labels(&[0; 5])));
    assert!(e.contains("4 columns") && e.contains("3 units"), "{kind:?}: {e}");
    let e = refusal(b.set_data((&x).into(), Targets::Labels(&[0, 1, 2, 4, 0])));
    assert!(e.contains("label 4 of example 3") && e.contains("4 classes"), "{kind:?}: {e}");
    let e = refusal(b.set_data((&x).into(), Targets::Labels(&[0, 1])));
    assert!(e.contains("2 labels for 5 examples"), "{kind:?}: {e}");
    let e = refusal(b.set_data((&x).into(), Targets::Inputs));
    assert!(e.contains("needs class labels"), "{kind:?}: {e}");
    let mut nan = x.clone();
    nan[[2, 1]] = f64::NAN;
    let e = refusal(b.set_data((&nan).into(), Targets::Labels(&[0; 5])));
    assert!(e.contains("row 2, column 1"), "{kind:?}: {e}");
    let empty = Array2::<f64>::zeros((0, 3));
    assert!(b.set_data((&empty).into(), Targets::Labels(&[])).is_err(), "{kind:?}: no examples");

    b.set_data((&x).into(), Targets::Labels(&[0; 5])).unwrap();
    let mut g = vec![0.0; theta.len()];
    let e = b.cost_and_grad(&theta[1..], Batch::All, &mut g).unwrap_err().to_string();
    assert!(e.contains(&format!("θ has {} values", theta.len() - 1)), "{kind:?}: {e}");
    let e = b.cost_and_grad(&theta, Batch::Indices(&[0, 5]), &mut g).unwrap_err().to_string();
    assert!(e.contains("example 5") && e.contains("only 5"), "{kind:?}: {e}");
    assert!(b.cost(&theta, Batch::Rows(2..2)).is_err(), "{kind:?}: an empty batch");
    let mut bad = theta.clone();
    bad[1] = f64::INFINITY;
    assert!(b.cost(&bad, Batch::All).is_err(), "{kind:?}: θ holding ∞");
    // Nothing was lost: the loaded data still works after the refusals.
    assert!(b.cost(&theta, Batch::All).unwrap().total().is_finite(), "{kind:?}: the data after refusals");
}
