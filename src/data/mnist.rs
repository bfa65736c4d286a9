//! MNIST in its original IDX format, plain or gzip-compressed: images (magic 0x00000803:
//! count, rows, columns, then one unsigned byte per pixel) and labels (magic 0x00000801:
//! count, then one byte per label), big-endian. Every header is checked against the file's
//! length (or, for gzip, against what the file may inflate to) before anything is allocated
//! from it, and inflation stops where the header says the data ends, so a corrupt file or a
//! decompression bomb gives an error, not a panic or a huge allocation.

use std::io::Read;
use std::path::{Path, PathBuf};

use ndarray::Array2;

use super::{Digits, Split, select_labels};
use crate::{Error, Result};

/// The magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// The magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// The raw contents of an IDX image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    /// Number of images (the header's first dimension).
    pub count: usize,
    /// Height of each image in pixels (the header's second dimension).
    pub rows: usize,
    /// Width of each image in pixels (the header's third dimension).
    pub cols: usize,
    /// count × rows × cols bytes, image after image, each row-major.
    pub pixels: Vec<u8>,
}

/// MNIST images with their labels.
#[derive(Clone, Debug)]
pub struct Mnist {
    /// One image per row, rows × cols pixels (784 for MNIST), scaled to [0, 1].
    pub images: Array2<f32>,
    /// The digit 0–9 of each image, one per row of `images`.
    pub labels: Vec<usize>,
    /// Height of each image in pixels.
    pub rows: usize,
    /// Width of each image in pixels.
    pub cols: usize,
}

/// An IDX file opened for streaming, its header read and checked: against the file's
/// length for a plain file, against [`super::gz_cap`] for a gzip one (whose inflated length
/// shows only at its end). Nothing is allocated from the header before these checks.
struct Idx {
    reader: Box<dyn Read>,
    gz: bool,
    /// The dimensions the header declares: [count] for labels, [count, rows, cols] for images.
    dims: Vec<usize>,
    /// What the header declares, for people: `60000 images of 28×28`.
    what: String,
    /// Payload bytes the header declares, and how many have been read.
    payload: usize,
    read: usize,
    header_len: usize,
}

impl Idx {
    fn open(path: &Path, magic: u32) -> Result<Idx> {
        let mut source = super::open_maybe_gz(path)?;
        let (kind, ndims) = if magic == IMAGES_MAGIC { ("image", 3) } else { ("label", 1) };
        let header_len = 4 + 4 * ndims;
        let mut header = [0u8; 16];
        let got = read_up_to(&mut source.reader, &mut header[..header_len]).map_err(|e| super::gz_error(path, &e))?;
        if got < 4 {
            return Err(Error::file(path, format!("holds {got} bytes, too few for an IDX {kind} file")));
        }
        let found = be_u32(&header, 0);
        if found != magic {
            let (want, other, other_magic) = if magic == IMAGES_MAGIC {
                ("images", "labels", LABELS_MAGIC)
            } else {
                ("labels", "images", IMAGES_MAGIC)
            };
            let hint = if found == other_magic {
                format!("that is the magic number of IDX {other}: are the image and label files swapped?")
            } else {
                "it is not an MNIST IDX file (or is damaged)".to_string()
            };
            return Err(Error::file(
                path,
                format!("wrong magic number 0x{found:08x}, expected 0x{magic:08x} for IDX {want}: {hint}"),
            ));
        }
        if got < header_len {
            return Err(Error::file(
                path,
                format!("is truncated: an IDX {kind} header needs {header_len} bytes, the file holds {got}"),
            ));
        }
        let dims: Vec<usize> = (0..ndims).map(|d| be_u32(&header, 4 + 4 * d) as usize).collect();
        let what = if ndims == 3 {
            let (count, rows, cols) = (dims[0], dims[1], dims[2]);
            if rows == 0 || cols == 0 {
                return Err(Error::file(path, format!("declares images of {rows}×{cols} pixels: the file is corrupt")));
            }
            if count == 0 {
                return Err(Error::file(path, "holds no images (its count is 0): the set is empty"));
            }
            format!("{count} images of {rows}×{cols}")
        } else {
            if dims[0] == 0 {
                return Err(Error::file(path, "holds no labels (its count is 0): the set is empty"));
            }
            format!("{} labels", dims[0])
        };
        let payload = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).ok_or_else(|| {
            Error::file(path, format!("the header declares {what}, more than can exist: the file is corrupt"))
        })?;
        if source.gz {
            let cap = super::gz_cap(source.file_len);
            if payload as u64 > cap {
                return Err(Error::file(
                    path,
                    format!(
                        "the header declares {what} ({payload} bytes), more than a gzip file of {} bytes may inflate to \
                         ({cap}): the header is corrupt, or decompress the file and give it plain",
                        source.file_len
                    ),
                ));
            }
        } else {
            let expected = header_len as u64 + payload as u64;
            if source.file_len < expected {
                return Err(Error::file(
                    path,
                    format!(
                        "is truncated: the header declares {what}, which needs {expected} bytes, but the file holds {}",
                        source.file_len
                    ),
                ));
            }
            if source.file_len > expected {
                return Err(Error::file(
                    path,
                    format!(
                        "has {} bytes after the {what} its header declares ({expected} bytes): the header or the file is corrupt",
                        source.file_len - expected
                    ),
                ));
            }
        }
        Ok(Idx { reader: source.reader, gz: source.gz, dims, what, payload, read: 0, header_len })
    }

    /// Fills `buf` with the next bytes of the payload.
    fn next(&mut self, path: &Path, buf: &mut [u8]) -> Result<()> {
        let got = read_up_to(&mut self.reader, buf).map_err(|e| super::gz_error(path, &e))?;
        self.read += got;
        if got < buf.len() {
            return Err(Error::file(
                path,
                format!(
                    "is truncated: the header declares {}, which needs {} bytes, but the {} holds {}",
                    self.what,
                    self.header_len + self.payload,
                    if self.gz { "decompressed file" } else { "file" },
                    self.header_len + self.read
                ),
            ));
        }
        Ok(())
    }

    /// Checks, when the payload has not all been read, that the rest is there (by inflating it
    /// into nothing: a gzip file's length shows only at its end), and that nothing follows it.
    fn finish(mut self, path: &Path) -> Result<()> {
        if !self.gz {
            return Ok(()); // The plain file's length was checked when it was opened.
        }
        let rest = (self.payload - self.read) as u64;
        let skipped = std::io::copy(&mut (&mut self.reader).take(rest), &mut std::io::sink())
            .map_err(|e| super::gz_error(path, &e))?;
        self.read += skipped as usize;
        if skipped < rest {
            return self.next(path, &mut [0u8]); // Reports the truncation.
        }
        let mut extra = [0u8; 1];
        if read_up_to(&mut self.reader, &mut extra).map_err(|e| super::gz_error(path, &e))? > 0 {
            return Err(Error::file(
                path,
                format!(
                    "holds more data after the {} its header declares ({} bytes): the header or the file is corrupt",
                    self.what, self.payload
                ),
            ));
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the stream ends; returns how many bytes were read.
fn read_up_to(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// Bytes to reserve for `want` bytes of a payload: all of them for a plain file (its length
/// was checked), and for gzip no more than have been seen to exist, so a header that lies
/// costs nothing; the vector grows as data arrives.
fn reserve_for(idx: &Idx, want: usize) -> usize {
    if idx.gz { want.min(1 << 20) } else { want }
}

/// The whole payload of `idx`, read in chunks, then [`Idx::finish`].
fn read_payload(path: &Path, mut idx: Idx) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(reserve_for(&idx, idx.payload));
    let mut chunk = vec![0u8; idx.payload.min(1 << 16)];
    while idx.read < idx.payload {
        let n = chunk.len().min(idx.payload - idx.read);
        idx.next(path, &mut chunk[..n])?;
        out.extend_from_slice(&chunk[..n]);
    }
    idx.finish(path)?;
    Ok(out)
}

/// Reads an IDX image file (plain or `.gz`).
pub fn read_images(path: &Path) -> Result<IdxImages> {
    let idx = Idx::open(path, IMAGES_MAGIC)?;
    let (count, rows, cols) = (idx.dims[0], idx.dims[1], idx.dims[2]);
    let pixels = read_payload(path, idx)?;
    Ok(IdxImages { count, rows, cols, pixels })
}

/// Reads an IDX label file (plain or `.gz`). MNIST's labels are the digits 0–9: any other
/// byte is refused, naming the example.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let labels = read_payload(path, Idx::open(path, LABELS_MAGIC)?)?;
    if let Some((i, &l)) = labels.iter().enumerate().find(|(_, l)| **l > 9) {
        return Err(Error::file(path, format!("label {l} of example {i} is not a digit: MNIST labels are 0 to 9")));
    }
    Ok(labels)
}

/// `dir/name`, or `dir/name.gz`, or the same with the `-idx` dash written as a dot (a common
/// re-distribution's spelling); the plain file first.
fn find_file(dir: &Path, name: &str) -> Result<PathBuf> {
    let dotted = name.replacen("-idx", ".idx", 1);
    let candidates = [name.to_string(), format!("{name}.gz"), dotted.clone(), format!("{dotted}.gz")];
    if let Some(found) = candidates.iter().map(|c| dir.join(c)).find(|p| p.is_file()) {
        return Ok(found);
    }
    if !dir.is_dir() {
        return Err(Error::file(
            dir,
            format!("is not a directory: point mnist: at the folder holding the four MNIST files ({name}[.gz], …)"),
        ));
    }
    Err(Error::file(
        dir,
        format!("holds neither {name} nor {name}.gz: point mnist: at the folder with the four MNIST files"),
    ))
}

impl Mnist {
    /// The standard file names of a split: (images, labels).
    pub fn file_names(split: Split) -> (&'static str, &'static str) {
        match split {
            Split::Train => ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            Split::Test => ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        }
    }

    /// Reads `split` from `dir`, which holds the standard MNIST files, plain or `.gz`.
    pub fn load(dir: &Path, split: Split) -> Result<Mnist> {
        Mnist::load_selected(dir, split, None, None)
    }

    /// As [`Mnist::load`], keeping only the images whose label is in `digits` (all when
    /// `None`) and of those the first `limit`: the images are decoded one by one and only
    /// the kept ones are stored, so `limit` 1000 holds 1000 images in memory, not 60,000.
    /// Every file is still read to its end and checked.
    pub fn load_selected(dir: &Path, split: Split, digits: Option<&Digits>, limit: Option<usize>) -> Result<Mnist> {
        let (images, labels) = Mnist::file_names(split);
        let images = find_file(dir, images)?;
        let labels = find_file(dir, labels)?;
        Mnist::from_files_selected(&images, &labels, digits, limit)
    }

    /// Reads an image file and its label file, which must hold the same number of examples.
    pub fn from_files(images_path: &Path, labels_path: &Path) -> Result<Mnist> {
        Mnist::from_files_selected(images_path, labels_path, None, None)
    }

    /// [`Mnist::from_files`] with the selection of [`Mnist::load_selected`]. An empty
    /// selection is an error.
    pub fn from_files_selected(
        images_path: &Path,
        labels_path: &Path,
        digits: Option<&Digits>,
        limit: Option<usize>,
    ) -> Result<Mnist> {
        let all_labels = read_labels(labels_path)?;
        let mut idx = Idx::open(images_path, IMAGES_MAGIC)?;
        let (count, rows, cols) = (idx.dims[0], idx.dims[1], idx.dims[2]);
        if all_labels.len() != count {
            return Err(Error::Data(format!(
                "{} holds {count} images but {} holds {} labels: the two files do not belong together",
                images_path.display(),
                labels_path.display(),
                all_labels.len()
            )));
        }
        let keep = |l: u8| digits.is_none_or(|d| d.contains(usize::from(l)));
        let selected = all_labels.iter().filter(|&&l| keep(l)).count().min(limit.unwrap_or(usize::MAX));
        let n = rows * cols;
        let mut x: Vec<f32> = Vec::with_capacity(reserve_for(&idx, selected.saturating_mul(n)));
        let mut labels = Vec::with_capacity(selected);
        // In chunks, not one image at a time: a gzip header may declare images of 2³² pixels.
        let mut chunk = vec![0u8; n.min(1 << 16)];
        for &label in &all_labels {
            if labels.len() == selected {
                break;
            }
            let kept = keep(label);
            let mut left = n;
            while left > 0 {
                let k = left.min(chunk.len());
                idx.next(images_path, &mut chunk[..k])?;
                if kept {
                    x.extend(chunk[..k].iter().map(|&b| f32::from(b) / 255.0));
                }
                left -= k;
            }
            if kept {
                labels.push(usize::from(label));
            }
        }
        idx.finish(images_path)?;
        if labels.is_empty() {
            let digits = digits.map_or_else(String::new, |d| d.to_string());
            return Err(Error::Data(format!(
                "no example of {} has a label in {digits}: the filter leaves an empty set; check the digits asked for",
                labels_path.display()
            )));
        }
        let images = Array2::from_shape_vec((labels.len(), n), x).expect("one row of rows × cols per label");
        Ok(Mnist { images, labels, rows, cols })
    }

    /// Rank `rank`'s shard of `split` in `dir` for a data-parallel job of `size` ranks
    /// ([`crate::dist::shard_rows`] of all the images), reading only those images (and the
    /// next one, to check the boundary with the next rank: [`crate::dist::DistBackend::set_shard`]):
    /// the images before the shard are streamed past, never stored; the labels (one byte each)
    /// are read whole. Errors as [`Mnist::load`], and fewer images than ranks.
    pub fn load_shard(dir: &Path, split: Split, rank: usize, size: usize) -> Result<super::shard::Shard> {
        let (images, labels) = Mnist::file_names(split);
        let (images_path, labels_path) = (find_file(dir, images)?, find_file(dir, labels)?);
        let all_labels = read_labels(&labels_path)?;
        let mut idx = Idx::open(&images_path, IMAGES_MAGIC)?;
        let (count, rows, cols) = (idx.dims[0], idx.dims[1], idx.dims[2]);
        if all_labels.len() != count {
            return Err(Error::Data(format!(
                "{} holds {count} images but {} holds {} labels: the two files do not belong together",
                images_path.display(),
                labels_path.display(),
                all_labels.len()
            )));
        }
        let shard = super::shard::rows_of(count, rank, size)?;
        let n = rows * cols;
        let wanted = (shard.len() + usize::from(shard.end < count)).saturating_mul(n);
        let mut chunk = vec![0u8; n.min(1 << 16)];
        let mut skip = shard.start.saturating_mul(n);
        while skip > 0 {
            let k = skip.min(chunk.len());
            idx.next(&images_path, &mut chunk[..k])?;
            skip -= k;
        }
        let mut x: Vec<f32> = Vec::with_capacity(reserve_for(&idx, wanted));
        let mut left = wanted;
        while left > 0 {
            let k = left.min(chunk.len());
            idx.next(&images_path, &mut chunk[..k])?;
            x.extend(chunk[..k].iter().map(|&b| f32::from(b) / 255.0));
            left -= k;
        }
        idx.finish(&images_path)?;
        let next_row = (shard.end < count).then(|| x.split_off(shard.len() * n));
        let labels: Vec<usize> = all_labels[shard.clone()].iter().map(|&l| usize::from(l)).collect();
        let next_label = next_row.as_ref().map(|_| usize::from(all_labels[shard.end]));
        let x = Array2::from_shape_vec((shard.len(), n), x).expect("the shard's rows of rows × cols");
        let all_labels = Some(all_labels.iter().map(|&l| usize::from(l)).collect());
        Ok(super::shard::Shard { x, labels: Some(labels), all_labels, rows: shard, total: count, next_row, next_label })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// How many images carry each label 0, 1, …, up to the largest.
    pub fn label_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.labels.iter().max().map_or(0, |&m| m + 1)];
        self.labels.iter().for_each(|&l| counts[l] += 1);
        counts
    }

    /// Only the images of `digits`, in their original order; an error when none is left.
    pub fn keep_digits(&self, digits: &Digits) -> Result<Mnist> {
        let (images, labels) = select_labels(&self.images, &self.labels, digits)?;
        Ok(Mnist { images, labels, rows: self.rows, cols: self.cols })
    }

    /// The first `n` images (all of them when there are fewer).
    pub fn take(mut self, n: usize) -> Mnist {
        if n < self.len() {
            self.images = self.images.slice(ndarray::s![..n, ..]).to_owned();
            self.labels.truncate(n);
        }
        self
    }
}
