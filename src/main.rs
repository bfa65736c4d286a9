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
    keep_freed_memory();
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

/// Training allocates and frees the same large arrays at every step (tens of MB for a
/// recurrent net); glibc's default returns freed blocks to the kernel (munmap, heap trimming)
/// and page-faults fresh zeroed pages back at the next step: a quarter of an LSTM step on two
/// cores (BENCHMARKS.md, "LSTM recurrence in lock step"). Blocks up to 32 MiB now come from the
/// heap and up to 1 GiB of freed heap stays mapped for reuse; the peak is unchanged.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two of glibc's thresholds, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}
