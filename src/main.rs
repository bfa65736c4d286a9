//! The `wgnn` binary: see `wgnn --help`.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    // On a headless machine Mesa's Wayland probe prints "error: XDG_RUNTIME_DIR is invalid"
    // on every adapter scan, which users would read as wgnn's own error. Any existing
    // directory silences it; nothing is written there.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir()) };
    }
    match cli::parse().and_then(cli::run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, outermost first. The code: README.md,
            // "Exit codes".
            eprintln!("error: {e:#}");
            ExitCode::from(cli::code_of(&e))
        }
    }
}
