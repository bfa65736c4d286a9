//! CSV files, plain or gzip, with the label column last, first, second or absent.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use wgnn::data::{LabelColumn, csv};

fuzz_target!(|data: &[u8]| {
    let path = common::scratch("csv", data);
    for column in [LabelColumn::Last, LabelColumn::First, LabelColumn::Number(2), LabelColumn::None] {
        common::one_line(csv::read_csv(&path, column));
    }
});
