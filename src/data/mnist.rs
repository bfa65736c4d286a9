//! MNIST in its original IDX format, plain or gzip-compressed: images (magic 0x00000803:
//! count, rows, columns, then one unsigned byte per pixel) and labels (magic 0x00000801:
//! count, then one byte per label), big-endian. Every header is checked against the file's
//! length before anything is allocated from it, so a corrupt file gives an error, not a panic
//! or a huge allocation.

use std::path::{Path, PathBuf};

use ndarray::Array2;

use super::{Digits, Split, read_maybe_gz, select_labels};
use crate::{Error, Result};

/// The magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// The magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// The raw contents of an IDX image file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxImages {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    /// count × rows × cols bytes, image after image, each row-major.
    pub pixels: Vec<u8>,
}

/// MNIST images with their labels.
#[derive(Clone, Debug)]
pub struct Mnist {
    /// One image per row, rows × cols pixels (784 for MNIST), scaled to [0, 1].
    pub images: Array2<f32>,
    pub labels: Vec<usize>,
    /// Height of each image in pixels.
    pub rows: usize,
    /// Width of each image in pixels.
    pub cols: usize,
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(bytes[at..at + 4].try_into().expect("four bytes"))
}

/// Checks the magic number and the header length; returns the file's bytes.
fn read_idx(path: &Path, magic: u32, header_len: usize) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    let kind = if magic == IMAGES_MAGIC { "image" } else { "label" };
    if bytes.len() < 4 {
        return Err(Error::file(path, format!("holds {} bytes, too few for an IDX {kind} file", bytes.len())));
    }
    let found = be_u32(&bytes, 0);
    if found != magic {
        let (want, other, other_magic) =
            if magic == IMAGES_MAGIC { ("images", "labels", LABELS_MAGIC) } else { ("labels", "images", IMAGES_MAGIC) };
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
    if bytes.len() < header_len {
        return Err(Error::file(
            path,
            format!("is truncated: an IDX {kind} header needs {header_len} bytes, the file holds {}", bytes.len()),
        ));
    }
    Ok(bytes)
}

/// The count and payload length declared by a header, checked against the actual length.
fn check_length(path: &Path, bytes: &[u8], header_len: usize, payload: Option<usize>, what: &str) -> Result<()> {
    let expected = payload.and_then(|p| p.checked_add(header_len)).ok_or_else(|| {
        Error::file(path, format!("the header declares {what}, more than can exist: the file is corrupt"))
    })?;
    if bytes.len() < expected {
        return Err(Error::file(
            path,
            format!(
                "is truncated: the header declares {what}, which needs {expected} bytes, but the file holds {}",
                bytes.len()
            ),
        ));
    }
    if bytes.len() > expected {
        return Err(Error::file(
            path,
            format!(
                "has {} bytes after the {what} its header declares ({expected} bytes): the header or the file is corrupt",
                bytes.len() - expected
            ),
        ));
    }
    Ok(())
}

/// Reads an IDX image file (plain or `.gz`).
pub fn read_images(path: &Path) -> Result<IdxImages> {
    let bytes = read_idx(path, IMAGES_MAGIC, 16)?;
    let (count, rows, cols) = (be_u32(&bytes, 4) as usize, be_u32(&bytes, 8) as usize, be_u32(&bytes, 12) as usize);
    if rows == 0 || cols == 0 {
        return Err(Error::file(path, format!("declares images of {rows}×{cols} pixels: the file is corrupt")));
    }
    if count == 0 {
        return Err(Error::file(path, "holds no images (its count is 0): the set is empty"));
    }
    let what = format!("{count} images of {rows}×{cols}");
    check_length(path, &bytes, 16, count.checked_mul(rows).and_then(|n| n.checked_mul(cols)), &what)?;
    let mut pixels = bytes;
    pixels.drain(..16);
    Ok(IdxImages { count, rows, cols, pixels })
}

/// Reads an IDX label file (plain or `.gz`).
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_idx(path, LABELS_MAGIC, 8)?;
    let count = be_u32(&bytes, 4) as usize;
    if count == 0 {
        return Err(Error::file(path, "holds no labels (its count is 0): the set is empty"));
    }
    check_length(path, &bytes, 8, Some(count), &format!("{count} labels"))?;
    Ok(bytes[8..].to_vec())
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
        let (images, labels) = Mnist::file_names(split);
        let images = find_file(dir, images)?;
        let labels = find_file(dir, labels)?;
        Mnist::from_files(&images, &labels)
    }

    /// Reads an image file and its label file, which must hold the same number of examples.
    pub fn from_files(images_path: &Path, labels_path: &Path) -> Result<Mnist> {
        let images = read_images(images_path)?;
        let labels = read_labels(labels_path)?;
        if labels.len() != images.count {
            return Err(Error::Data(format!(
                "{} holds {} images but {} holds {} labels: the two files do not belong together",
                images_path.display(),
                images.count,
                labels_path.display(),
                labels.len()
            )));
        }
        let n = images.rows * images.cols;
        let scaled: Vec<f32> = images.pixels.iter().map(|&b| f32::from(b) / 255.0).collect();
        let x = Array2::from_shape_vec((images.count, n), scaled).expect("length checked against the header");
        Ok(Mnist {
            images: x,
            labels: labels.into_iter().map(usize::from).collect(),
            rows: images.rows,
            cols: images.cols,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

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
