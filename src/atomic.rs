//! Files written atomically: into a temporary file beside the target, synced, then renamed
//! over it, so an interrupted or failed write never leaves a half-written file and never
//! loses the previous one (checkpoints, metrics, pictures, `.npy` outputs).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::{Error, Result};

/// Writes through `write` into `.NAME.tmp` beside `path`, syncs, and renames over `path`.
/// On any failure the temporary file is removed and `path` is left as it was.
pub fn write_with(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::result::Result<(), String>,
) -> Result<()> {
    let file_name = path.file_name().ok_or_else(|| Error::file(path, "is not a file name"))?;
    let tmp = path.with_file_name(format!(".{}.tmp", file_name.to_string_lossy()));
    let result = (|| {
        let file = File::create(&tmp).map_err(|e| format!("cannot create: {e}"))?;
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
}
