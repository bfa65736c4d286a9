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

/// Removes the temporary files that writes of this module left in `dir` when their process
/// was killed before it could remove them (SIGKILL, the OOM killer, a power cut): names of
/// the form `.NAME.PID.N.tmp` ([`write_with`]'s) whose PID is neither this process nor a live
/// one. Another pattern, or a live process's write, is never touched; a PID reused by a new
/// process keeps its file (kept, never wrongly removed). Best effort: what cannot be read or
/// removed stays. Returns the files removed.
///
/// A run folder calls it once locked (`crate::train::RunFolder::open`), when a run starts or
/// resumes there.
pub fn remove_stale_temporaries(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut removed = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(temporary_pid) else { continue };
        if pid == std::process::id() || process_alive(pid) || !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        if std::fs::remove_file(entry.path()).is_ok() {
            removed.push(entry.path());
        }
    }
    removed
}

/// The PID in a temporary name of this module (`.NAME.PID.N.tmp`, NAME not empty), or `None`.
fn temporary_pid(name: &str) -> Option<u32> {
    let stem = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    let mut parts = stem.rsplitn(3, '.');
    let (n, pid, target) = (parts.next()?, parts.next()?, parts.next()?);
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(n) && digits(pid) && !target.is_empty()).then(|| pid.parse().ok()).flatten()
}

/// Whether a process `pid` exists (signal 0: nothing is sent). Elsewhere than Unix every
/// process counts as alive, so nothing is removed.
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return true };
        if pid <= 0 {
            return true;
        }
        // SAFETY: kill with signal 0 only checks that the process exists and may be signalled.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
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

    /// Temporaries of dead processes go; a live process's (this one's, and PID 1's), another
    /// pattern's and the real files stay.
    #[test]
    fn stale_temporaries_of_dead_processes_are_removed_and_no_other_file() {
        let dir = tempfile::tempdir().unwrap();
        // A PID that is surely dead: a child that has ended and been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let me = std::process::id();
        let names = [
            format!(".checkpoint.safetensors.{dead}.0.tmp"),
            format!(".metrics.json.{dead}.17.tmp"),
            format!(".checkpoint.safetensors.{me}.3.tmp"),
            ".checkpoint.safetensors.1.0.tmp".to_string(),
            format!(".notes.{dead}.tmp"),
            format!("checkpoint.safetensors.{dead}.0.tmp"),
            format!(".checkpoint.safetensors.{dead}.x.tmp"),
            "checkpoint.safetensors".to_string(),
        ];
        for n in &names {
            std::fs::write(dir.path().join(n), b"x").unwrap();
        }
        let mut removed: Vec<String> = remove_stale_temporaries(dir.path())
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        assert_eq!(removed, [names[0].clone(), names[1].clone()]);
        for n in &names[2..] {
            assert!(dir.path().join(n).exists(), "{n} was removed");
        }
        assert_eq!(temporary_pid(".model.safetensors.123.4.tmp"), Some(123));
        assert_eq!(temporary_pid(".123.4.tmp"), None);
    }
}
