//! Pictures for `patches:`: PNG or JPEG, recognised by their contents.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("image", data);
    common::one_line(wgnn::data::patches::read_image(&path));
});
