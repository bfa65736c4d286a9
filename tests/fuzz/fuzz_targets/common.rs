//! Shared by the targets: the readers take paths, so each input is written to a file of this
//! process first; every error must be one line.

use std::path::PathBuf;

/// Writes `data` to this process's scratch file named `name` and returns its path.
pub fn scratch(name: &str, data: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("wgnn-fuzz-{}-{name}", std::process::id()));
    std::fs::write(&path, data).expect("the temporary folder is writable");
    path
}

/// Panics (a finding) when a reader's error is not one line of bounded length.
pub fn one_line<T>(result: wgnn::Result<T>) {
    if let Err(e) = result {
        let message = e.to_string();
        assert!(!message.contains('\n') && !message.contains('\r'), "not one line: {message:?}");
        assert!(message.chars().count() <= 700, "{} characters: {message}", message.chars().count());
    }
}
