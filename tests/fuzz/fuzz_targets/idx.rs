//! MNIST's IDX files, plain or gzip (by their first bytes): images, labels, and both together.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use wgnn::data::{Mnist, mnist};

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("idx", data);
    common::one_line(mnist::read_images(&path));
    common::one_line(mnist::read_labels(&path));
    let labels = common::scratch("idx-labels", &[0, 0, 8, 1, 0, 0, 0, 1, 7]);
    common::one_line(Mnist::from_files_selected(&path, &labels, None, Some(1)));
});
