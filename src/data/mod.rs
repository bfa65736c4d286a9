//! Data sources: MNIST IDX files, folders of images cut into patches, `.npy` matrices, CSV
//! files with a label column, and an embedded synthetic image generator; plus ZCA / PCA
//! whitening. Everything arrives as a [`Dataset`] of f32 rows (one example per row).
//! This module reads and checks data; it knows nothing of networks, backends or the CLI.
//!
//! [`DataSource`] parses the strings the CLI accepts (`mnist:DIR`, `patches:DIR`, `npy:FILE`,
//! `csv:FILE`, `synthetic`) and [`DataSource::load`] turns one into a [`Dataset`].

pub mod csv;
pub mod mnist;
pub mod patches;
pub mod synthetic;
pub mod whiten;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ndarray::{Array2, Axis};

use crate::{Error, Result};

pub use csv::LabelColumn;
pub use mnist::Mnist;
pub use patches::GrayImage;
pub use whiten::{Components, Whitening};

/// Examples ready for training: rows of `x` are examples.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// m × n, one example per row.
    pub x: Array2<f32>,
    /// One class label per row, when the source has them.
    pub labels: Option<Vec<usize>>,
    /// What was loaded, for people: source, counts, preprocessing.
    pub description: String,
    /// (height, width) when each row is a picture (MNIST 28×28, p×p patches), for drawing.
    pub image_shape: Option<(usize, usize)>,
}

impl Dataset {
    /// Number of examples (rows).
    pub fn len(&self) -> usize {
        self.x.nrows()
    }

    pub fn is_empty(&self) -> bool {
        self.x.nrows() == 0
    }

    /// Number of values per example (columns).
    pub fn num_features(&self) -> usize {
        self.x.ncols()
    }

    /// One more than the largest label: the number of classes a softmax output needs.
    pub fn num_classes(&self) -> Option<usize> {
        self.labels.as_ref().map(|l| l.iter().max().map_or(0, |&m| m + 1))
    }

    /// Keeps only the examples whose label is in `digits`, in their original order. Labels
    /// are not renumbered (digits 5-9 stay 5…9). Refuses a set without labels, and an
    /// empty result.
    pub fn keep_labels(self, digits: &Digits) -> Result<Dataset> {
        let Some(labels) = &self.labels else {
            return Err(Error::Data(format!(
                "cannot keep digits {digits}: {} has no labels to filter by",
                self.description
            )));
        };
        let (x, labels) = select_labels(&self.x, labels, digits)?;
        let description = format!("{}, digits {digits} ({} kept)", self.description, labels.len());
        Ok(Dataset { x, labels: Some(labels), description, image_shape: self.image_shape })
    }

    /// The first `n` examples (all of them when there are fewer).
    pub fn take(mut self, n: usize) -> Dataset {
        if n < self.len() {
            self.x = self.x.slice(ndarray::s![..n, ..]).to_owned();
            if let Some(labels) = &mut self.labels {
                labels.truncate(n);
            }
            self.description = format!("{}, first {n}", self.description);
        }
        self
    }
}

/// Rows of `x` whose label is in `digits`; an error when none is.
pub(crate) fn select_labels(x: &Array2<f32>, labels: &[usize], digits: &Digits) -> Result<(Array2<f32>, Vec<usize>)> {
    let keep: Vec<usize> = (0..labels.len()).filter(|&i| digits.contains(labels[i])).collect();
    if keep.is_empty() {
        return Err(Error::Data(format!(
            "no example has a label in {digits}: the filter leaves an empty set; check the digits asked for"
        )));
    }
    Ok((x.select(Axis(0), &keep), keep.iter().map(|&i| labels[i]).collect()))
}

/// A set of class labels to keep, written as the CLI takes it: `5-9`, `0,2,4`, `0-4,7`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digits(Vec<usize>);

impl Digits {
    /// The given labels, sorted, without repeats; refuses an empty set.
    pub fn new(labels: impl IntoIterator<Item = usize>) -> Result<Digits> {
        let mut v: Vec<usize> = labels.into_iter().collect();
        v.sort_unstable();
        v.dedup();
        if v.is_empty() {
            return Err(Error::Data("the digits filter is empty: give at least one label, e.g. 5-9".into()));
        }
        Ok(Digits(v))
    }

    pub fn contains(&self, label: usize) -> bool {
        self.0.binary_search(&label).is_ok()
    }

    /// The labels kept, ascending.
    pub fn labels(&self) -> &[usize] {
        &self.0
    }
}

impl FromStr for Digits {
    type Err = Error;

    fn from_str(s: &str) -> Result<Digits> {
        let bad = |part: &str| {
            Error::Data(format!(
                "cannot read `{part}` in the digits filter `{s}`: write labels and ranges like 5-9 or 0,2,4-6"
            ))
        };
        let mut labels = Vec::new();
        for part in s.split(',').map(str::trim) {
            let number = |t: &str| t.trim().parse::<usize>().map_err(|_| bad(part));
            match part.split_once('-') {
                Some((lo, hi)) => {
                    let (lo, hi) = (number(lo)?, number(hi)?);
                    if lo > hi {
                        return Err(bad(part));
                    }
                    labels.extend(lo..=hi);
                }
                None => labels.push(number(part)?),
            }
        }
        Digits::new(labels)
    }
}

impl fmt::Display for Digits {
    /// Runs of consecutive labels as ranges: `5-9`, `0,2,4-6`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        let mut i = 0;
        while i < self.0.len() {
            let mut j = i;
            while j + 1 < self.0.len() && self.0[j + 1] == self.0[j] + 1 {
                j += 1;
            }
            parts.push(if j > i { format!("{}-{}", self.0[i], self.0[j]) } else { self.0[i].to_string() });
            i = j + 1;
        }
        write!(f, "{}", parts.join(","))
    }
}

/// Which part of a data set with a fixed split (MNIST) to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Split {
    /// MNIST's 60,000 training images.
    #[default]
    Train,
    /// MNIST's 10,000 test images (the `t10k` files).
    Test,
}

impl FromStr for Split {
    type Err = Error;

    fn from_str(s: &str) -> Result<Split> {
        match s.trim().to_ascii_lowercase().as_str() {
            "train" | "training" => Ok(Split::Train),
            "test" | "t10k" => Ok(Split::Test),
            _ => Err(Error::Data(format!("unknown split `{s}`: use train or test"))),
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Split::Train => "train",
            Split::Test => "test",
        })
    }
}

/// How to load a [`DataSource`]. Options that do not apply to a source are refused when set
/// (split, labels), or ignored when they only have defaults (patch size and count, seed).
#[derive(Clone, Debug, PartialEq)]
pub struct LoadOptions {
    /// Side p of the square patches cut from `patches:` and `synthetic` images. Default 8.
    pub patch_size: usize,
    /// Number of patches to sample. Default 10,000.
    pub patch_count: usize,
    /// Seed for patch sampling and the synthetic images. Default 0.
    pub seed: u64,
    /// Keep only examples with these labels (sources with labels). Default: all.
    pub digits: Option<Digits>,
    /// MNIST only: train or test. Default (`None`): train.
    pub split: Option<Split>,
    /// Keep the first N examples (after the digits filter). Default: all.
    pub limit: Option<usize>,
    /// `npy:` only: a `.npy` vector of class labels, one per row. Default: none.
    pub labels: Option<PathBuf>,
    /// `csv:` only: which column holds the label. Default: the last.
    pub label_column: LabelColumn,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            patch_size: 8,
            patch_count: 10_000,
            seed: 0,
            digits: None,
            split: None,
            limit: None,
            labels: None,
            label_column: LabelColumn::Last,
        }
    }
}

/// Where examples come from, as the CLI's `--data` names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataSource {
    /// `mnist:DIR`: the four standard IDX files (plain or `.gz`) in DIR.
    Mnist(PathBuf),
    /// `patches:DIR`: PNG and JPEG images in DIR (or one image file), cut into normalised patches.
    Patches(PathBuf),
    /// `npy:FILE`: a float matrix, one example per row; labels from [`LoadOptions::labels`].
    Npy(PathBuf),
    /// `csv:FILE`: numbers, one example per line, with a label column (plain or `.gz`).
    Csv(PathBuf),
    /// `synthetic`: dead-leaves images made on the spot, cut into normalised patches.
    Synthetic,
}

impl FromStr for DataSource {
    type Err = Error;

    fn from_str(s: &str) -> Result<DataSource> {
        const FORMS: &str = "mnist:DIR, patches:DIR, npy:FILE, csv:FILE or synthetic";
        let s = s.trim();
        if s.eq_ignore_ascii_case("synthetic") {
            return Ok(DataSource::Synthetic);
        }
        let Some((kind, path)) = s.split_once(':') else {
            return Err(Error::Data(format!("unknown data source `{s}`: use {FORMS}")));
        };
        let kind = kind.to_ascii_lowercase();
        if path.is_empty() {
            let what = if kind == "mnist" || kind == "patches" { "directory" } else { "file" };
            return Err(Error::Data(format!(
                "data source `{s}` names no {what}: write it after the colon, e.g. {kind}:PATH"
            )));
        }
        let path = PathBuf::from(path);
        match kind.as_str() {
            "mnist" => Ok(DataSource::Mnist(path)),
            "patches" => Ok(DataSource::Patches(path)),
            "npy" => Ok(DataSource::Npy(path)),
            "csv" => Ok(DataSource::Csv(path)),
            _ => Err(Error::Data(format!("unknown data source `{kind}:` in `{s}`: use {FORMS}"))),
        }
    }
}

impl fmt::Display for DataSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataSource::Mnist(p) => write!(f, "mnist:{}", p.display()),
            DataSource::Patches(p) => write!(f, "patches:{}", p.display()),
            DataSource::Npy(p) => write!(f, "npy:{}", p.display()),
            DataSource::Csv(p) => write!(f, "csv:{}", p.display()),
            DataSource::Synthetic => f.write_str("synthetic"),
        }
    }
}

impl DataSource {
    /// Reads the source, then applies the digits filter and the limit.
    pub fn load(&self, options: &LoadOptions) -> Result<Dataset> {
        if options.split.is_some() && !matches!(self, DataSource::Mnist(_)) {
            return Err(Error::Data(format!("a train/test split applies to mnist: sources only, not {self}")));
        }
        if options.labels.is_some() && !matches!(self, DataSource::Npy(_)) {
            return Err(Error::Data(format!(
                "a separate labels file applies to npy: sources only; {self} brings its own labels or has none"
            )));
        }
        if options.limit == Some(0) {
            return Err(Error::Data("a limit of 0 examples leaves nothing to train on: give at least 1".into()));
        }
        let data = match self {
            DataSource::Mnist(dir) => {
                let split = options.split.unwrap_or_default();
                let mnist = Mnist::load(dir, split)?;
                let description = format!(
                    "MNIST {split} ({}): {} images of {}×{}",
                    dir.display(),
                    mnist.len(),
                    mnist.rows,
                    mnist.cols
                );
                let image_shape = Some((mnist.rows, mnist.cols));
                Dataset { x: mnist.images, labels: Some(mnist.labels), description, image_shape }
            }
            DataSource::Patches(dir) => {
                let (x, n_images) = patches::load_patches(dir, options.patch_size, options.patch_count, options.seed)?;
                let p = options.patch_size;
                let description = format!(
                    "{} patches of {p}×{p} from {n_images} image(s) in {} (seed {}), UFLDL-normalised to [0.1, 0.9]",
                    x.nrows(),
                    dir.display(),
                    options.seed
                );
                Dataset { x, labels: None, description, image_shape: Some((p, p)) }
            }
            DataSource::Synthetic => {
                let x = synthetic::patches(options.patch_size, options.patch_count, options.seed)?;
                let p = options.patch_size;
                let config = synthetic::DeadLeaves::default();
                let description = format!(
                    "{} patches of {p}×{p} from {} synthetic dead-leaves images of {}×{} (seed {}), UFLDL-normalised to [0.1, 0.9]",
                    x.nrows(),
                    config.images,
                    config.size,
                    config.size,
                    options.seed
                );
                Dataset { x, labels: None, description, image_shape: Some((p, p)) }
            }
            DataSource::Npy(path) => load_npy(path, options.labels.as_deref())?,
            DataSource::Csv(path) => {
                let (x, labels) = csv::read_csv(path, options.label_column)?;
                let description = format!(
                    "{}: {} rows of {} values{}",
                    path.display(),
                    x.nrows(),
                    x.ncols(),
                    if labels.is_some() { " and a label" } else { "" }
                );
                let image_shape = square_shape(x.ncols());
                Dataset { x, labels, description, image_shape }
            }
        };
        let data = match &options.digits {
            Some(digits) => data.keep_labels(digits)?,
            None => data,
        };
        Ok(match options.limit {
            Some(n) => data.take(n),
            None => data,
        })
    }
}

/// (s, s) when n = s²: a guess that a row of n values is a square picture.
fn square_shape(n: usize) -> Option<(usize, usize)> {
    let s = (n as f64).sqrt().round() as usize;
    (s > 1 && s * s == n).then_some((s, s))
}

fn load_npy(path: &Path, labels_path: Option<&Path>) -> Result<Dataset> {
    let x = match crate::npy::read_matrix(path)? {
        crate::npy::Matrix::F32(x) => x,
        crate::npy::Matrix::F64(x) => x.mapv(|v| v as f32),
    };
    if x.nrows() == 0 || x.ncols() == 0 {
        return Err(Error::file(path, format!("has shape {:?}: there are no examples in it", x.shape())));
    }
    if let Some(((r, c), v)) = x.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::file(
            path,
            format!("row {r}, column {c} is {v}: every value must be a finite number; remove or replace it"),
        ));
    }
    let labels = match labels_path {
        Some(lp) => {
            let labels = crate::npy::read_labels(lp)?;
            if labels.len() != x.nrows() {
                return Err(Error::Data(format!(
                    "{} has {} labels but {} has {} rows: give one label per example",
                    lp.display(),
                    labels.len(),
                    path.display(),
                    x.nrows()
                )));
            }
            Some(labels)
        }
        None => None,
    };
    let description = format!(
        "{}: {} rows of {} values{}",
        path.display(),
        x.nrows(),
        x.ncols(),
        if labels.is_some() { ", with labels" } else { "" }
    );
    let image_shape = square_shape(x.ncols());
    Ok(Dataset { x, labels, description, image_shape })
}

/// The whole file, gunzipped when it is gzip (by its first two bytes, whatever its name).
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    if raw.len() < 2 || raw[..2] != [0x1f, 0x8b] {
        return Ok(raw);
    }
    let mut out = Vec::with_capacity(raw.len() * 4);
    flate2::read::MultiGzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| {
        Error::file(path, format!("cannot decompress ({e}): the gzip file is truncated or corrupt; fetch it again"))
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_parse_and_print() {
        let d: Digits = "5-9".parse().unwrap();
        assert_eq!(d.labels(), &[5, 6, 7, 8, 9]);
        assert_eq!(d.to_string(), "5-9");
        let d: Digits = " 0, 2 ,4-6,2".parse().unwrap();
        assert_eq!(d.labels(), &[0, 2, 4, 5, 6]);
        assert_eq!(d.to_string(), "0,2,4-6");
        assert!(d.contains(5) && !d.contains(3));
        for bad in ["", "9-5", "a", "1-", "1,,2", "-3"] {
            assert!(bad.parse::<Digits>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn sources_parse() {
        assert_eq!("mnist:/a/b".parse::<DataSource>().unwrap(), DataSource::Mnist("/a/b".into()));
        assert_eq!("patches:d".parse::<DataSource>().unwrap(), DataSource::Patches("d".into()));
        assert_eq!("npy:x.npy".parse::<DataSource>().unwrap(), DataSource::Npy("x.npy".into()));
        assert_eq!("csv:C:/x.csv".parse::<DataSource>().unwrap(), DataSource::Csv("C:/x.csv".into()));
        assert_eq!("Synthetic".parse::<DataSource>().unwrap(), DataSource::Synthetic);
        assert_eq!("mnist:/a/b".parse::<DataSource>().unwrap().to_string(), "mnist:/a/b");
        let e = "mnist:".parse::<DataSource>().unwrap_err().to_string();
        assert!(e.contains("names no directory"), "{e}");
        let e = "foo:bar".parse::<DataSource>().unwrap_err().to_string();
        assert!(e.contains("unknown data source") && e.contains("synthetic"), "{e}");
        assert!("data.csv".parse::<DataSource>().is_err());
    }

    #[test]
    fn split_parse() {
        assert_eq!("TEST".parse::<Split>().unwrap(), Split::Test);
        assert_eq!("train".parse::<Split>().unwrap(), Split::Train);
        assert!("valid".parse::<Split>().is_err());
    }

    #[test]
    fn filter_and_take() {
        let x = Array2::from_shape_fn((6, 2), |(i, j)| (i * 2 + j) as f32);
        let data = Dataset { x, labels: Some(vec![0, 5, 7, 1, 9, 5]), description: "toy".into(), image_shape: None };
        let kept = data.clone().keep_labels(&"5-9".parse().unwrap()).unwrap();
        assert_eq!(kept.labels.as_deref(), Some(&[5, 7, 9, 5][..]));
        assert_eq!(kept.x.column(0).to_vec(), vec![2.0, 4.0, 8.0, 10.0]);
        let first = kept.take(2);
        assert_eq!(first.len(), 2);
        assert_eq!(first.labels.as_deref(), Some(&[5, 7][..]));
        assert_eq!(data.num_classes(), Some(10));
        let e = data.keep_labels(&"2-4".parse().unwrap()).unwrap_err().to_string();
        assert!(e.contains("empty set"), "{e}");
    }

    #[test]
    fn square_shapes() {
        assert_eq!(square_shape(784), Some((28, 28)));
        assert_eq!(square_shape(64), Some((8, 8)));
        assert_eq!(square_shape(65), None);
        assert_eq!(square_shape(1), None);
    }
}
