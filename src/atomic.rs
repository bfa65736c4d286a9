//! Files written atomically: into a temporary file beside the target, synced, then renamed
//! over it, so an interrupted or failed write never leaves a half-written file and never
//! loses the previous one (checkpoints, metrics, pictures, `.npy` outputs).
//!
//! Each write has its own temporary file (`.NAME.PID.N.tmp`, created exclusively), so two
//! writers of one target — two processes, or two threads — never share or remove each
//! other's temporary file: the last rename wins and every rename succeeds.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// Writes made by this process so far: with the process id, it makes each temporary name unique.
static WRITES: AtomicU64 = AtomicU64::new(0);

/// A temporary name beside `path` that no other write, in this process or another, uses.
fn temporary_beside(path: &Path, file_name: &std::ffi::OsStr) -> PathBuf {
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{}.{}.{n}.tmp", file_name.to_string_lossy(), std::process::id()))
}

/// Writes through `write` into a temporary file beside `path` (`.NAME.PID.N.tmp`), syncs, and
/// renames it over `path`. On any failure the temporary file is removed and `path` is left as
/// it was.
pub fn write_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::result::Result<(), String>,
) -> Result<()> {
    let file_name = path.file_name().ok_or_else(|| Error::file(path, "is not a file name"))?;
    let tmp = temporary_beside(path, file_name);
    let result = (|| {
        // create_new: never truncate a file someone else is writing, whatever its name.
        let file =
            OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(|e| format!("cannot create: {e}"))?;
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.to_string())?;
        file.sync_all().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| format!("cannot rename into place: {e}"))
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file(path, e)
    })
}

/// Writes `bytes` (text, PNG, safetensors…) to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |w| w.write_all(bytes).map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A write that fails half-way leaves the old file as it was and no temporary file.
    #[test]
    fn a_failed_write_keeps_the_old_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.json");
        write_bytes(&path, b"old").unwrap();
        let err = write_with(&path, |w| {
            w.write_all(b"half of the new").map_err(|e| e.to_string())?;
            Err("the disk is full".into())
        })
        .unwrap_err();
        assert!(err.to_string().contains("the disk is full") && err.to_string().contains("metrics.json"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["metrics.json"], "a temporary file was left behind");
        write_bytes(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    /// Writers of one target at the same time: every write succeeds, the file ends as one of
    /// them wrote it (never a mixture), and no temporary file is left.
    #[test]
    fn concurrent_writers_of_one_file_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let contents: Vec<Vec<u8>> = (0..4u8).map(|w| vec![w; 64 * 1024]).collect();
        std::thread::scope(|s| {
            for bytes in &contents {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..25 {
                        write_bytes(path, bytes).expect("a concurrent write failed");
                    }
                });
            }
        });
        let last = std::fs::read(&path).unwrap();
        assert!(contents.contains(&last), "the file mixes two writes");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["model.safetensors"], "a temporary file was left behind");
    }
}
