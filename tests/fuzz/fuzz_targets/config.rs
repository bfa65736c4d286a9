//! `--config` files: the binary's reader (src/cli/config.rs) parses them with toml and
//! serde_json into a JSON value and makes their errors one line (wgnn::one_line); this target
//! runs the same parsers on the same text, where a stack overflow or a panic would come from.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for message in [
        toml::from_str::<serde_json::Value>(text).err().map(|e| e.message().to_string()),
        serde_json::from_str::<serde_json::Value>(text).err().map(|e| e.to_string()),
    ]
    .into_iter()
    .flatten()
    {
        let line = wgnn::one_line(&message);
        assert!(!line.contains('\n') && line.chars().count() <= 300);
    }
});
