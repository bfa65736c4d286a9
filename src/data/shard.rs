//! One rank's shard of a data set for data-parallel training ([`crate::dist`]): only the rows
//! [`crate::dist::shard_rows`] gives the rank, read by row offset from formats that allow it
//! — MNIST's IDX files ([`super::Mnist::load_shard`]) and `.npy` matrices ([`npy_shard`]) —
//! plus the first row of the next shard, which the next rank holds, so that the ranks can
//! prove they read the same file ([`crate::dist::DistBackend::set_shard`]).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;

use ndarray::Array2;
use ndarray_npy::npy::header::Header;

use crate::{Error, Result};

/// Rows `rows` of a data set of `total` examples (f32, one example per row), their labels
/// when the set has them, and the row after them (with its label) unless they are the last.
#[derive(Clone, Debug)]
pub struct Shard {
    /// The shard's examples: `rows.len()` × values per example.
    pub x: Array2<f32>,
    /// The shard's labels (class numbers), when the set has them.
    pub labels: Option<Vec<usize>>,
    /// The labels of every example of the set (one byte each in MNIST's file, read whole), so
    /// that every rank counts the classes as one process does.
    pub all_labels: Option<Vec<usize>>,
    /// Which rows of the whole set the shard holds ([`crate::dist::shard_rows`]).
    pub rows: Range<usize>,
    /// Examples in the whole set.
    pub total: usize,
    /// The row after the shard (the next rank's first), `None` for the last rank.
    pub next_row: Option<Vec<f32>>,
    /// The label of `next_row`.
    pub next_label: Option<usize>,
}

impl Shard {
    /// Example rows this rank read from the file: its shard and the next rank's first row.
    pub fn rows_read(&self) -> usize {
        self.x.nrows() + usize::from(self.next_row.is_some())
    }

    /// Where the shard lies in the whole set, for [`crate::dist::DistBackend::expect_shard`].
    pub fn place(&self) -> crate::dist::ShardPlace {
        crate::dist::ShardPlace {
            rows: self.rows.clone(),
            total: self.total,
            next: self.next_row.clone().map(|row| (row, self.next_label)),
        }
    }
}

/// Rank `rank`'s shard of `source` for a job of `size` ranks, read by row offset where the
/// format allows it: `mnist:DIR` (IDX, the `split` asked for) and a 2-D `npy:FILE` of float32
/// or float64 (labels, when given, from the `.npy` file `labels`, read whole and checked to
/// hold one per example). `Ok(None)` for every other source, which is read whole.
/// `all_labels` holds every example's class (for `.npy`: numbered as scikit-learn's
/// LabelEncoder numbers them, with the names in the returned classes). Errors: those of
/// [`super::Mnist::load_shard`] and [`npy_shard`], and a labels file of another length.
pub fn load_shard(
    source: &super::DataSource,
    split: super::Split,
    labels: Option<&Path>,
    rank: usize,
    size: usize,
) -> Result<Option<(Shard, Option<Vec<String>>)>> {
    match source {
        super::DataSource::Mnist(dir) => Ok(Some((super::Mnist::load_shard(dir, split, rank, size)?, None))),
        super::DataSource::Npy(path) => {
            let mut shard = npy_shard(path, rank, size)?;
            let Some(lp) = labels else { return Ok(Some((shard, None))) };
            let l = super::read_label_file(lp)?;
            if l.len() != shard.total {
                return Err(Error::Data(format!(
                    "{} has {} labels but {} has {} rows: give one label per example",
                    lp.display(),
                    l.len(),
                    path.display(),
                    shard.total
                )));
            }
            shard.labels = Some(l.labels[shard.rows.clone()].to_vec());
            shard.next_label = shard.next_row.as_ref().map(|_| l.labels[shard.rows.end]);
            shard.all_labels = Some(l.labels);
            Ok(Some((shard, Some(l.classes))))
        }
        _ => Ok(None),
    }
}

/// [`crate::dist::shard_rows`], refusing a set with fewer examples than ranks.
pub(crate) fn rows_of(total: usize, rank: usize, size: usize) -> Result<Range<usize>> {
    if size == 0 || rank >= size {
        return Err(Error::Data(format!("rank {rank} of {size} ranks does not exist")));
    }
    if total < size {
        return Err(Error::Data(format!(
            "{total} examples cannot be shared by {size} ranks: start at most {total} ranks"
        )));
    }
    Ok(crate::dist::shard_rows(total, size, rank))
}

/// Counts the bytes a reader has given.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

/// Rank `rank`'s shard of a 2-D `.npy` matrix of float32 or float64 (either byte order, C
/// order), for a job of `size` ranks: the header is read and checked against the file's
/// length, then only the shard's rows (and the next one) are read, from their offset
/// (NumPy's format: <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>).
/// float64 values become f32; one beyond f32's range is refused, naming it. No labels: give
/// them from their own file. Errors: not a `.npy` file, another dtype or shape, Fortran
/// order, a length that does not fit the header, fewer rows than ranks.
pub fn npy_shard(path: &Path, rank: usize, size: usize) -> Result<Shard> {
    let file = File::open(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let file_len = file.metadata().map_err(|e| Error::file(path, format!("cannot read: {e}")))?.len();
    let mut reader = Counting { inner: BufReader::new(file), read: 0 };
    let header = Header::from_reader(&mut reader)
        .map_err(|e| Error::file(path, format!("is not a readable .npy file ({e}): save arrays with numpy.save")))?;
    let data_at = reader.read;
    let literal = header.type_descriptor.to_string();
    let descr = literal.trim_matches(|c| c == '\'' || c == '"');
    let (big_endian, item) = match descr {
        "<f4" | "=f4" => (false, 4),
        "<f8" | "=f8" => (false, 8),
        ">f4" => (true, 4),
        ">f8" => (true, 8),
        _ => {
            return Err(Error::file(
                path,
                format!("holds dtype {literal}: a shard is read from float32 or float64 data (save the matrix so)"),
            ));
        }
    };
    if header.layout.is_fortran() {
        return Err(Error::file(
            path,
            "is in Fortran order: save it in C order (numpy.ascontiguousarray) to read by rows",
        ));
    }
    let [total, cols] = header.shape[..] else {
        return Err(Error::file(
            path,
            format!("has shape {:?}; expected a matrix (examples × features)", header.shape),
        ));
    };
    let row_bytes = (cols as u64).checked_mul(item).filter(|_| cols > 0);
    let needed = row_bytes.and_then(|r| r.checked_mul(total as u64)).and_then(|n| n.checked_add(data_at));
    if needed != Some(file_len) {
        return Err(Error::file(
            path,
            format!(
                "its header declares shape ({total}, {cols}) of {descr}, but the file holds {file_len} bytes: it is truncated or damaged"
            ),
        ));
    }
    let row_bytes = row_bytes.expect("checked above");
    let rows = rows_of(total, rank, size)?;
    let wanted = rows.len() + usize::from(rows.end < total);
    let mut file = reader.inner.into_inner();
    file.seek(SeekFrom::Start(data_at + rows.start as u64 * row_bytes))
        .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let mut bytes = vec![0u8; wanted * row_bytes as usize];
    file.read_exact(&mut bytes).map_err(|e| Error::file(path, format!("cannot read its rows: {e}")))?;
    let mut values = Vec::with_capacity(wanted * cols);
    for (i, v) in bytes.chunks_exact(item as usize).enumerate() {
        let value = match (item, big_endian) {
            (4, false) => f32::from_le_bytes(v.try_into().expect("4 bytes")),
            (4, true) => f32::from_be_bytes(v.try_into().expect("4 bytes")),
            (_, e) => {
                let wide = if e {
                    f64::from_be_bytes(v.try_into().expect("8"))
                } else {
                    f64::from_le_bytes(v.try_into().expect("8"))
                };
                if wide.is_finite() && wide.abs() > f64::from(f32::MAX) {
                    let (r, c) = (rows.start + i / cols, i % cols);
                    return Err(Error::file(
                        path,
                        format!(
                            "value {wide:e} at row {r}, column {c} is beyond float32's range (±3.4e38): rescale the data"
                        ),
                    ));
                }
                wide as f32
            }
        };
        if !value.is_finite() {
            let (r, c) = (rows.start + i / cols, i % cols);
            return Err(Error::file(
                path,
                format!("row {r}, column {c} is {value}: every value must be a finite number; remove or replace it"),
            ));
        }
        values.push(value);
    }
    let next_row = (rows.end < total).then(|| values.split_off(rows.len() * cols));
    let x = Array2::from_shape_vec((rows.len(), cols), values).expect("the shard's rows × cols");
    Ok(Shard { x, labels: None, all_labels: None, rows, total, next_row, next_label: None })
}
