//! Checkpoints: safetensors with the spec and metadata as JSON in its header.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("checkpoint", data);
    common::one_line(wgnn::checkpoint::Checkpoint::load(&path));
});
