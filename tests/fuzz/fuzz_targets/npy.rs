//! `.npy` files as every reader takes them: matrix, vector, labels, any float array.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("npy", data);
    common::one_line(wgnn::npy::read_matrix(&path).map(|_| ()));
    common::one_line(wgnn::npy::read_vector(&path));
    common::one_line(wgnn::npy::read_labels(&path));
    common::one_line(wgnn::npy::read_f64_dyn(&path));
});
