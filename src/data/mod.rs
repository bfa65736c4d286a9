//! Data sources: MNIST IDX files, folders of images cut into patches, `.npy` matrices, CSV
//! files with a label column, and an embedded synthetic image generator; real-valued targets
//! for regression; plus ZCA / PCA whitening. Everything arrives as a [`Dataset`] of f32 rows
//! (one example per row). This module reads and checks data; it knows nothing of networks,
//! backends or the CLI.
//!
//! [`DataSource`] parses the strings the CLI accepts (`mnist:DIR`, `patches:DIR`, `npy:FILE`,
//! `csv:FILE`, `synthetic`) and [`DataSource::load`] turns one into a [`Dataset`];
//! [`TargetSource`] does the same for `--targets` (`npy:FILE`, `csv:FILE`, `columns:SPEC`).
//! Every flag that names a file (data, labels, targets, test targets, θ) reads it through one
//! parser, [`FileArg`]: `npy:FILE`, `csv:FILE`, or a bare FILE whose extension (`.npy`,
//! `.csv`, either with `.gz`) says which.

pub mod csv;
pub mod mnist;
pub mod patches;
pub mod sequence;
pub mod shard;
pub mod synthetic;
pub mod text;
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
    /// One class label per row, when the source has them: the class's index, 0..k−1.
    pub labels: Option<Vec<usize>>,
    /// The class names of a source whose labels are names or numbers as the user wrote them
    /// (CSV, `.npy`): `classes[l]` is the label written for class `l`, sorted as
    /// scikit-learn's `LabelEncoder` sorts them ([`encode_labels`]). `None` for sources whose
    /// labels are class numbers themselves (MNIST's digits).
    pub classes: Option<Vec<String>>,
    /// Real-valued targets (m × outputs, one row per example) for regression, when asked for.
    pub targets: Option<Array2<f32>>,
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

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.x.nrows() == 0
    }

    /// Number of values per example (columns).
    pub fn num_features(&self) -> usize {
        self.x.ncols()
    }

    /// The number of classes a softmax output needs: the number of class names, or one more
    /// than the largest label when the labels are class numbers.
    pub fn num_classes(&self) -> Option<usize> {
        let largest = self.labels.as_ref().map(|l| l.iter().max().map_or(0, |&m| m + 1))?;
        Some(self.classes.as_ref().map_or(largest, |c| c.len().max(largest)))
    }

    /// Labels per example: T when `labels` holds a class at every step of m sequences (m·T
    /// labels, [`sequence::Sequences::labels_per_step`]), else 1.
    pub fn labels_per_example(&self) -> usize {
        match &self.labels {
            Some(l) if !self.is_empty() && l.len() > self.len() && l.len().is_multiple_of(self.len()) => {
                l.len() / self.len()
            }
            _ => 1,
        }
    }

    /// The name of each class: the stored names, or `0`, `1`, … for class numbers.
    pub fn class_names(&self) -> Option<Vec<String>> {
        match &self.classes {
            Some(c) => Some(c.clone()),
            None => self.num_classes().map(|k| (0..k).map(|l| l.to_string()).collect()),
        }
    }

    /// The labels as the classes `classes` (a model's, in its order) number them: each label
    /// is matched by its name (for class numbers, their decimal text). With `classes` `None`
    /// (a model that stores no names: its classes are the numbers 0..`k`−1) the names must be
    /// those numbers. `None` when the data has no labels.
    ///
    /// Errors ([`Error::Data`], one line): a label that is not one of `classes` (or not a
    /// class number below `k`), naming it, its example (counted from 1) and the classes.
    pub fn labels_for(&self, classes: Option<&[String]>, k: usize) -> Result<Option<Vec<usize>>> {
        let Some(labels) = &self.labels else { return Ok(None) };
        let name = |l: usize| -> String {
            match &self.classes {
                Some(c) => c[l].clone(),
                None => l.to_string(),
            }
        };
        let listed = |names: &mut dyn Iterator<Item = String>| -> String {
            let names: Vec<String> = names.collect();
            if names.len() > 12 {
                format!("{}, … {}", names[..10].join(", "), names[names.len() - 1])
            } else {
                names.join(", ")
            }
        };
        match classes {
            Some(classes) => {
                let index: std::collections::HashMap<&str, usize> =
                    classes.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
                labels
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| {
                        let n = name(l);
                        index.get(n.as_str()).copied().ok_or_else(|| {
                            Error::Data(format!(
                                "the label `{n}` (example {}) is not one the model was trained on (its classes: {}): evaluate on data of the same classes",
                                i + 1,
                                listed(&mut classes.iter().cloned())
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(Some)
            }
            None if self.classes.is_none() => Ok(Some(labels.clone())),
            None => labels
                .iter()
                .enumerate()
                .map(|(i, &l)| {
                    let n = name(l);
                    n.parse::<usize>().ok().filter(|&c| c < k).ok_or_else(|| {
                        Error::Data(format!(
                            "the label `{n}` (example {}) is not one the model was trained on (its classes: {}): evaluate on data of the same classes",
                            i + 1,
                            listed(&mut (0..k).map(|c| c.to_string()))
                        ))
                    })
                })
                .collect::<Result<Vec<_>>>()
                .map(Some),
        }
    }

    /// Keeps only the examples whose label is in `digits`, in their original order. Class
    /// numbers are not renumbered (digits 5-9 stay 5…9); labels with names (CSV, `.npy`) are
    /// matched by their written number and encoded again over the classes kept, as
    /// [`encode_labels`] would encode the kept rows. Refuses a set without labels, and an
    /// empty result.
    pub fn keep_labels(self, digits: &Digits) -> Result<Dataset> {
        let Some(labels) = &self.labels else {
            return Err(Error::Data(format!(
                "cannot keep digits {digits}: {} has no labels to filter by",
                self.description
            )));
        };
        let written: Vec<usize> = match &self.classes {
            // A class named by no number matches no digit.
            Some(c) => labels.iter().map(|&l| c[l].parse::<usize>().unwrap_or(usize::MAX)).collect(),
            None => labels.clone(),
        };
        let keep = rows_with_labels(&written, digits)?;
        let description = format!("{}, digits {digits} ({} kept)", self.description, keep.len());
        let mut kept = Dataset { description, ..self.rows(&keep) };
        if let (Some(classes), Some(labels)) = (&kept.classes, &kept.labels) {
            let raw: Vec<RawLabel> = labels.iter().map(|&l| RawLabel::Name(classes[l].clone())).collect();
            let numbers: Option<Vec<RawLabel>> =
                raw.iter().map(|r| r.text().parse::<i64>().ok().map(RawLabel::Whole)).collect();
            let encoded = encode_labels(numbers.unwrap_or(raw));
            kept.labels = Some(encoded.labels);
            kept.classes = Some(encoded.classes);
        }
        Ok(kept)
    }

    /// The examples at `rows`, in that order, with their labels and targets.
    pub fn rows(&self, rows: &[usize]) -> Dataset {
        Dataset {
            x: self.x.select(Axis(0), rows),
            // s labels per example: 1, or T for labels at every step of a sequence.
            labels: self.labels.as_ref().map(|l| {
                let s = self.labels_per_example();
                rows.iter().flat_map(|&i| l[i * s..(i + 1) * s].iter().copied()).collect()
            }),
            classes: self.classes.clone(),
            targets: self.targets.as_ref().map(|t| t.select(Axis(0), rows)),
            description: self.description.clone(),
            image_shape: self.image_shape,
        }
    }

    /// Splits off a held-out test set: a `fraction` of the examples, drawn by `seed`
    /// (a seeded shuffle, as scikit-learn's `train_test_split(test_size=fraction,
    /// random_state=seed)` does, though not its generator). Returns (train, test), each in
    /// the shuffled order. Refuses a split that leaves either side empty.
    pub fn split_test(&self, fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
        if fraction == 0.0 {
            return Err(Error::Data("a test fraction of 0 holds out nothing: give e.g. 0.2".into()));
        }
        // Its own stream, so the split does not repeat the validation split's or the weights' draws.
        let (order, test_rows) = hold_out(self.len(), fraction, seed ^ TEST_SPLIT_STREAM, "test")?;
        let mut train = self.rows(&order);
        let mut test = self.rows(&test_rows);
        train.description = format!("{}, {} for training", self.description, order.len());
        test.description = format!("{}, {} held out for testing (seed {seed})", self.description, test_rows.len());
        Ok((train, test))
    }

    /// The first `n` examples (all of them when there are fewer).
    pub fn take(mut self, n: usize) -> Dataset {
        if n < self.len() {
            // Before x shrinks: labels per example counts against the rows held now.
            let s = self.labels_per_example();
            self.x = self.x.slice(ndarray::s![..n, ..]).to_owned();
            if let Some(labels) = &mut self.labels {
                labels.truncate(n * s);
            }
            if let Some(t) = &mut self.targets {
                *t = t.slice(ndarray::s![..n, ..]).to_owned();
            }
            self.description = format!("{}, first {n}", self.description);
        }
        self
    }
}

const TEST_SPLIT_STREAM: u64 = 0x7465_7374_7370_6c74;

/// Row indices 0..m shuffled by `seed`, split into (kept, held out) with the last
/// round(m · fraction) held out. A fraction of 0 holds out nothing and keeps the order.
/// `what` names the split in errors (`validation`, `test`).
pub fn hold_out(m: usize, fraction: f64, seed: u64, what: &str) -> Result<(Vec<usize>, Vec<usize>)> {
    use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
    if !(0.0..1.0).contains(&fraction) {
        return Err(Error::Data(format!("a {what} fraction of {fraction} must be in [0, 1)")));
    }
    let mut order: Vec<usize> = (0..m).collect();
    if fraction == 0.0 {
        return Ok((order, Vec::new()));
    }
    let n_held = (m as f64 * fraction).round() as usize;
    if n_held == 0 || n_held == m {
        return Err(Error::Data(format!(
            "a {what} fraction of {fraction} of {m} examples leaves no examples on one side"
        )));
    }
    order.shuffle(&mut StdRng::seed_from_u64(seed));
    let held = order.split_off(m - n_held);
    Ok((order, held))
}

/// Rows of `x` whose label is in `digits`; an error when none is.
pub(crate) fn select_labels(x: &Array2<f32>, labels: &[usize], digits: &Digits) -> Result<(Array2<f32>, Vec<usize>)> {
    let keep = rows_with_labels(labels, digits)?;
    Ok((x.select(Axis(0), &keep), keep.iter().map(|&i| labels[i]).collect()))
}

/// Indices of the labels in `digits`; an error when there are none.
fn rows_with_labels(labels: &[usize], digits: &Digits) -> Result<Vec<usize>> {
    let keep: Vec<usize> = (0..labels.len()).filter(|&i| digits.contains(labels[i])).collect();
    if keep.is_empty() {
        return Err(Error::Data(format!(
            "no example has a label in {digits}: the filter leaves an empty set; check the digits asked for"
        )));
    }
    Ok(keep)
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

    /// Whether `label` is one of the labels kept.
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
            // A label is a class number: above MAX_CLASSES − 1 it is refused before a range
            // such as 0-4000000000 is spelled out.
            let number = |t: &str| {
                let n = t.trim().parse::<usize>().map_err(|_| bad(part))?;
                if n >= MAX_CLASSES {
                    return Err(Error::Data(format!(
                        "the label {n} in the digits filter `{s}` is above {}, the largest class number",
                        MAX_CLASSES - 1
                    )));
                }
                Ok(n)
            };
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
            if labels.len() > MAX_CLASSES {
                // Repeated ranges: keep at most MAX_CLASSES distinct labels (and their copies).
                labels.sort_unstable();
                labels.dedup();
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
    /// Real-valued targets for regression, one row per example. Default: none.
    pub targets: Option<TargetSource>,
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
            targets: None,
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
        let known = |k: &str| ["mnist", "patches", "npy", "csv"].contains(&k.to_ascii_lowercase().as_str());
        let Some((kind, path)) = s.split_once(':').filter(|(k, _)| known(k)) else {
            // A bare file: its extension says npy or csv, as for every other file flag.
            return match FileArg::parse(s, None) {
                Ok(FileArg { format: FileFormat::Npy, path }) => Ok(DataSource::Npy(path)),
                Ok(FileArg { format: FileFormat::Csv, path }) => Ok(DataSource::Csv(path)),
                Err(_) => Err(Error::Data(format!("unknown data source `{s}`: use {FORMS}"))),
            };
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
            _ => Ok(DataSource::Csv(path)),
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
        if let (Some(TargetSource::Columns(_)), DataSource::Mnist(_) | DataSource::Patches(_) | DataSource::Synthetic) =
            (&options.targets, self)
        {
            return Err(Error::Data(format!(
                "targets taken from columns apply to csv: and npy: data, not {self}: give --targets npy:FILE or csv:FILE"
            )));
        }
        let data = match self {
            DataSource::Mnist(dir) => {
                let split = options.split.unwrap_or_default();
                // Without targets (one row per image of the whole file) the digits and the
                // limit are applied while reading, so only the kept images are decoded.
                let mnist = if options.targets.is_none() {
                    Mnist::load_selected(dir, split, options.digits.as_ref(), options.limit)?
                } else {
                    Mnist::load(dir, split)?
                };
                let first = match (options.limit, &options.targets) {
                    (Some(n), None) if n == mnist.len() => "first ",
                    _ => "",
                };
                let description = format!(
                    "MNIST {split} ({}): {first}{} images of {}×{}",
                    dir.display(),
                    mnist.len(),
                    mnist.rows,
                    mnist.cols
                );
                let image_shape = Some((mnist.rows, mnist.cols));
                Dataset {
                    x: mnist.images,
                    labels: Some(mnist.labels),
                    classes: None,
                    targets: None,
                    description,
                    image_shape,
                }
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
                Dataset { x, labels: None, classes: None, targets: None, description, image_shape: Some((p, p)) }
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
                Dataset { x, labels: None, classes: None, targets: None, description, image_shape: Some((p, p)) }
            }
            DataSource::Npy(path) => load_npy(path, options)?,
            DataSource::Csv(path) => {
                let (x, labels) = csv::read_csv(path, options.label_column)?;
                let description = format!(
                    "{}: {} rows of {} values{}",
                    path.display(),
                    x.nrows(),
                    x.ncols(),
                    labels.as_ref().map_or_else(String::new, |l| format!(" and a label ({})", l.describe()))
                );
                let image_shape = square_shape(x.ncols());
                let (labels, classes) = labels.map(|l| (l.labels, l.classes)).unzip();
                Dataset { x, labels, classes, targets: None, description, image_shape }
            }
        };
        let data = match &options.targets {
            Some(t) => self.attach_targets(data, t, options)?,
            None => data,
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

impl DataSource {
    /// Adds the targets `source` names to `data` (just loaded from `self`, before any filter):
    /// checks one row per example and finite values; `columns:` moves columns of the data
    /// file from the inputs to the targets.
    /// A file of the first `--limit` rows only is taken for those rows ([`rows_for_limit`]).
    fn attach_targets(&self, mut data: Dataset, source: &TargetSource, options: &LoadOptions) -> Result<Dataset> {
        let label = options.label_column;
        let m = data.len();
        let (targets, what) = match source {
            TargetSource::Npy(path) => (read_npy_targets(path)?, path.display().to_string()),
            TargetSource::Csv(path) => (csv::read_csv(path, LabelColumn::None)?.0, path.display().to_string()),
            TargetSource::Columns(columns) => {
                // Columns are numbered as in the file; a CSV's label column is not a feature.
                let label_at = match self {
                    DataSource::Csv(_) if data.labels.is_some() => csv::label_index(label, data.num_features() + 1),
                    _ => None,
                };
                let file_columns = data.num_features() + usize::from(label_at.is_some());
                let mut take = Vec::with_capacity(columns.len());
                for &c in columns {
                    if c >= file_columns {
                        return Err(Error::Data(format!(
                            "target column {} is beyond the {file_columns} columns of {self}",
                            c + 1
                        )));
                    }
                    if Some(c) == label_at {
                        return Err(Error::Data(format!(
                            "target column {} of {self} is its label column: pick value columns",
                            c + 1
                        )));
                    }
                    take.push(if label_at.is_some_and(|l| c > l) { c - 1 } else { c });
                }
                let keep: Vec<usize> = (0..data.num_features()).filter(|c| !take.contains(c)).collect();
                if keep.is_empty() {
                    return Err(Error::Data(format!(
                        "target columns {} take every value column of {self}: leave some as inputs",
                        source.columns_text()
                    )));
                }
                let t = data.x.select(Axis(1), &take);
                data.x = data.x.select(Axis(1), &keep);
                data.image_shape = square_shape(data.num_features());
                (t, format!("columns {} of {self}", source.columns_text()))
            }
        };
        if let Some(n) = rows_for_limit(
            &format!("the targets file {what}"),
            (targets.nrows(), "rows"),
            m,
            &self.to_string(),
            options,
        )? {
            data = data.take(n);
        }
        if targets.ncols() == 0 {
            return Err(Error::Shape(format!("the targets ({what}) have no columns: give at least one value per row")));
        }
        if let Some(((r, c), v)) = targets.indexed_iter().find(|(_, v)| !v.is_finite()) {
            return Err(Error::Data(format!(
                "the targets ({what}) hold {} at row {r}, column {c}: every target must be a finite number",
                crate::short_number(f64::from(*v))
            )));
        }
        data.description = format!("{}, {} targets per example from {what}", data.description, targets.ncols());
        data.targets = Some(targets);
        Ok(data)
    }
}

/// A `.npy` of targets: a float matrix (rows × outputs), or a vector (one output per row).
fn read_npy_targets(path: &Path) -> Result<Array2<f32>> {
    let a = crate::npy::read_f64_dyn(path)?;
    let shape = a.shape().to_vec();
    let a = match shape.len() {
        1 => a.into_shape_with_order((shape[0], 1)).expect("a vector is one column"),
        2 => a.into_dimensionality::<ndarray::Ix2>().expect("checked 2-D"),
        _ => {
            return Err(Error::file(
                path,
                format!("has shape {shape:?}; expected targets as a matrix (examples × outputs) or a vector"),
            ));
        }
    };
    narrow_to_f32(path, a)
}

/// float64 values as the float32 wgnn keeps its data in, refusing (one line, naming the file
/// and the place) a finite value beyond float32's range, which would become an infinity that
/// later checks could only call "inf".
fn narrow_to_f32(path: &Path, a: Array2<f64>) -> Result<Array2<f32>> {
    if let Some(((r, c), v)) = a.indexed_iter().find(|(_, v)| v.is_finite() && v.abs() > f64::from(f32::MAX)) {
        return Err(Error::file(
            path,
            format!(
                "row {r}, column {c} is {v:e}: beyond float32's range (±3.4e38), in which wgnn keeps its data; rescale it"
            ),
        ));
    }
    Ok(a.mapv(|v| v as f32))
}

/// Where real-valued targets (regression) come from, as the CLI's `--targets` names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetSource {
    /// `npy:FILE`: a float matrix (one row per example, one column per output) or a vector.
    Npy(PathBuf),
    /// `csv:FILE`: numbers only, no label column (plain or `.gz`), one line per example.
    Csv(PathBuf),
    /// `columns:SPEC`: these columns of the `csv:` or `npy:` data file itself, e.g. `33-64`
    /// or `2,5-7`, counted from 1 as in the file (a CSV's label column included in the
    /// count, though it cannot be a target). They leave the inputs. Stored 0-based.
    Columns(Vec<usize>),
}

impl TargetSource {
    /// The column list as written: 1-based, runs as ranges.
    fn columns_text(&self) -> String {
        match self {
            TargetSource::Columns(c) => {
                Digits::new(c.iter().map(|&i| i + 1)).map(|d| d.to_string()).unwrap_or_default()
            }
            _ => String::new(),
        }
    }
}

impl FromStr for TargetSource {
    type Err = Error;

    fn from_str(s: &str) -> Result<TargetSource> {
        const FORMS: &str = "npy:FILE, csv:FILE, a .npy or .csv file, or columns:SPEC (e.g. columns:33-64)";
        let s = s.trim();
        match s.split_once(':') {
            Some((kind, rest)) if ["columns", "cols"].contains(&kind.to_ascii_lowercase().as_str()) => {
                if rest.is_empty() {
                    return Err(Error::Data(format!(
                        "target source `{s}` is missing what follows the colon: use {FORMS}"
                    )));
                }
                // The same syntax as the digits filter: numbers and ranges, no repeats.
                let bad = || {
                    Error::Data(format!(
                        "cannot read the target columns `{rest}`: write column numbers counted from 1 and ranges, e.g. 33-64 or 2,5-7"
                    ))
                };
                let set: Digits = rest.parse().map_err(|_| bad())?;
                if set.contains(0) {
                    return Err(bad());
                }
                Ok(TargetSource::Columns(set.labels().iter().map(|&c| c - 1).collect()))
            }
            _ => match FileArg::parse(s, None) {
                Ok(FileArg { format: FileFormat::Npy, path }) => Ok(TargetSource::Npy(path)),
                Ok(FileArg { format: FileFormat::Csv, path }) => Ok(TargetSource::Csv(path)),
                Err(_) => Err(Error::Data(format!("unknown target source `{s}`: use {FORMS}"))),
            },
        }
    }
}

impl fmt::Display for TargetSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetSource::Npy(p) => write!(f, "npy:{}", p.display()),
            TargetSource::Csv(p) => write!(f, "csv:{}", p.display()),
            TargetSource::Columns(_) => write!(f, "columns:{}", self.columns_text()),
        }
    }
}

/// The format of a file a flag names ([`FileArg`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// A NumPy `.npy` array (plain or gzip).
    Npy,
    /// Numbers (or labels) as comma-separated text (plain or gzip).
    Csv,
}

/// A file as every file-taking flag names it (`--data`, `--labels`, `--targets`,
/// `--test-targets`, `cost --theta`, …), so that each takes the same forms: `npy:FILE`,
/// `csv:FILE` (the prefix in any case), or a bare `FILE` whose extension says which (`.npy`,
/// `.csv`, either followed by `.gz`; a gzip-compressed `.npy` is then refused by the
/// reader, which reads `.npy` uncompressed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileArg {
    /// How to read the file.
    pub format: FileFormat,
    /// The file, as given (relative paths stay relative).
    pub path: PathBuf,
}

impl FileArg {
    /// Reads `text` as `npy:FILE`, `csv:FILE` or a bare FILE. A bare FILE whose extension is
    /// neither `.npy` nor `.csv` (with or without `.gz`) takes `default` when given (a flag
    /// that only reads one format), else is refused.
    ///
    /// Errors ([`Error::Data`], one line): an empty path, an unknown `kind:` prefix (two or
    /// more letters before the colon; a single letter is a Windows drive), a bare file of
    /// unknown extension without a default.
    pub fn parse(text: &str, default: Option<FileFormat>) -> Result<FileArg> {
        let text = text.trim();
        if let Some((kind, rest)) = text.split_once(':') {
            let format = match kind.to_ascii_lowercase().as_str() {
                "npy" => Some(FileFormat::Npy),
                "csv" => Some(FileFormat::Csv),
                k if k.len() >= 2 && k.bytes().all(|b| b.is_ascii_alphabetic()) => {
                    return Err(Error::Data(format!(
                        "unknown file form `{kind}:` in `{text}`: write npy:FILE, csv:FILE or a .npy or .csv file"
                    )));
                }
                _ => None,
            };
            if let Some(format) = format {
                if rest.is_empty() {
                    return Err(Error::Data(format!(
                        "`{text}` names no file: write it after the colon, e.g. {kind}:PATH"
                    )));
                }
                return Ok(FileArg { format, path: PathBuf::from(rest) });
            }
        }
        if text.is_empty() {
            return Err(Error::Data("an empty file name: name a .npy or .csv file".into()));
        }
        let lower = text.to_ascii_lowercase();
        let stem = lower.strip_suffix(".gz").unwrap_or(&lower);
        let format = if stem.ends_with(".npy") {
            FileFormat::Npy
        } else if stem.ends_with(".csv") {
            FileFormat::Csv
        } else if let Some(d) = default {
            d
        } else {
            return Err(Error::Data(format!(
                "cannot tell the format of `{text}` from its name: write npy:{text} or csv:{text}"
            )));
        };
        Ok(FileArg { format, path: PathBuf::from(text) })
    }

    /// The same file with its path made absolute (a run stores its flags so for `--resume`).
    pub fn absolute(&self) -> FileArg {
        FileArg { format: self.format, path: std::path::absolute(&self.path).unwrap_or_else(|_| self.path.clone()) }
    }
}

impl FromStr for FileArg {
    type Err = Error;

    fn from_str(s: &str) -> Result<FileArg> {
        FileArg::parse(s, None)
    }
}

impl fmt::Display for FileArg {
    /// `npy:PATH` or `csv:PATH`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.format == FileFormat::Npy { "npy" } else { "csv" };
        write!(f, "{kind}:{}", self.path.display())
    }
}

/// A source or file flag's text with any file or folder in it made absolute, for a run that
/// stores its flags (`--resume` from another folder): `mnist:DIR`, `patches:DIR`, `text:FILE`
/// and every [`FileArg`] form (a bare file becomes `npy:/abs/FILE` or `csv:/abs/FILE`);
/// `synthetic`, `columns:SPEC` and anything unreadable as given.
pub fn absolute_source(text: &str) -> String {
    let absolute = |p: &str| std::path::absolute(p).map_or_else(|_| p.to_string(), |a| a.display().to_string());
    if let Some((kind, path)) = text.split_once(':')
        && ["mnist", "patches", "text"].contains(&kind.to_ascii_lowercase().as_str())
    {
        return format!("{kind}:{}", absolute(path));
    }
    if text.trim().eq_ignore_ascii_case("synthetic") {
        return text.to_string();
    }
    match FileArg::parse(text, None) {
        Ok(f) => f.absolute().to_string(),
        Err(_) => text.to_string(),
    }
}

/// The class labels in the file `flag_text` names as `--labels` takes it ([`FileArg`]: a
/// `.npy` vector, or a CSV of one label per line), mapped to classes as
/// [`encode_labels`] maps them. A CSV of labels has no header unless its labels are numbers
/// (a first line with no number is then skipped).
///
/// Errors: as [`crate::npy::read_class_labels`] and [`csv::read_labels`]; an unknown form.
pub fn read_label_file(flag_text: &Path) -> Result<ClassLabels> {
    let file = FileArg::parse(&flag_text.to_string_lossy(), None)?;
    match file.format {
        FileFormat::Npy => crate::npy::read_class_labels(&file.path),
        FileFormat::Csv => csv::read_labels(&file.path),
    }
}

/// Class numbers 0..k−1 (not renamed: the label is the class) from the file `flag_text`
/// names ([`FileArg`]), checked as [`crate::npy::read_labels`] checks them: for readers
/// whose network's classes are the numbers themselves (`cost`, sequences).
///
/// Errors: as [`crate::npy::read_labels`]; a CSV label that is a name or below 0.
pub fn read_class_numbers(flag_text: &Path) -> Result<Vec<usize>> {
    let file = FileArg::parse(&flag_text.to_string_lossy(), None)?;
    match file.format {
        FileFormat::Npy => crate::npy::read_labels(&file.path),
        FileFormat::Csv => {
            let encoded = csv::read_labels(&file.path)?;
            let numbers: Vec<usize> = encoded
                .labels
                .iter()
                .map(|&l| {
                    let name = &encoded.classes[l];
                    name.parse::<usize>().ok().filter(|&n| n < MAX_CLASSES).ok_or_else(|| {
                        Error::file(
                            &file.path,
                            format!("holds the label `{name}`: this command takes class numbers 0, 1, 2, … as labels"),
                        )
                    })
                })
                .collect::<Result<_>>()?;
            check_labels(&numbers, &|i| format!("example {}", i + 1)).map_err(|m| Error::file(&file.path, m))?;
            Ok(numbers)
        }
    }
}

/// The row count a per-example file (labels, targets) of `rows` rows must match: the source's
/// `m` examples, or, with `--limit n` (and no digits filter, which would make the rows
/// ambiguous), the `n` kept. Returns how many of the source's examples to keep before
/// attaching the file: `Some(n)` when the file holds the first n only.
///
/// Errors ([`Error::Shape`], one line): any other count, naming `what` (the file) and both
/// counts that would do.
/// `unit` names a row of the file (`rows`, `labels`).
fn rows_for_limit(
    what: &str,
    (rows, unit): (usize, &str),
    m: usize,
    source: &str,
    options: &LoadOptions,
) -> Result<Option<usize>> {
    let limit = options.limit.filter(|_| options.digits.is_none());
    match limit {
        _ if rows == m => Ok(None),
        None if options.limit.is_some() => Err(Error::Shape(format!(
            "{what} has {rows} {unit} but {source} has {m} examples: give one row per example of the file; with --digits, --limit counts the examples kept by the filter, so a file of only the kept rows would be ambiguous"
        ))),
        Some(n) if n < m && rows == n => Ok(Some(n)),
        Some(n) if n < m => Err(Error::Shape(format!(
            "{what} has {rows} {unit} but {source} has {m} examples and --limit keeps {n}: give one row per example of the file ({m}) or per kept example ({n})"
        ))),
        _ => Err(Error::Shape(format!(
            "{what} has {rows} {unit} but {source} has {m} examples: give one row per example"
        ))),
    }
}

/// (s, s) when n = s²: a guess that a row of n values is a square picture.
fn square_shape(n: usize) -> Option<(usize, usize)> {
    let s = (n as f64).sqrt().round() as usize;
    (s > 1 && s * s == n).then_some((s, s))
}

fn load_npy(path: &Path, options: &LoadOptions) -> Result<Dataset> {
    let labels_path = options.labels.as_deref();
    let mut x = match crate::npy::read_matrix(path)? {
        crate::npy::Matrix::F32(x) => x,
        crate::npy::Matrix::F64(x) => narrow_to_f32(path, x)?,
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
            let labels = read_label_file(lp)?;
            let what = format!("the labels file {}", lp.display());
            let source = format!("npy:{}", path.display());
            if let Some(n) = rows_for_limit(&what, (labels.len(), "labels"), x.nrows(), &source, options)? {
                x = x.slice(ndarray::s![..n, ..]).to_owned();
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
        labels.as_ref().map_or_else(String::new, |l| format!(", with labels ({})", l.describe()))
    );
    let image_shape = square_shape(x.ncols());
    let (labels, classes) = labels.map(|l| (l.labels, l.classes)).unzip();
    Ok(Dataset { x, labels, classes, targets: None, description, image_shape })
}

/// A `.gz` file may inflate to at most this many bytes, or [`GZ_RATIO`] times its own size
/// when that is more. Numbers compress 3 to 10 times (MNIST's images: 4.7); deflate's most is
/// about 1032 times, reached by long runs of one byte, which is how decompression bombs are
/// made. The bound keeps a few megabytes of gzip from filling the memory; a real file beyond
/// it can be decompressed by hand and given plain, whose length is then its own bound.
pub const GZ_MIN_CAP: u64 = 1 << 28;
/// See [`GZ_MIN_CAP`].
pub const GZ_RATIO: u64 = 64;

/// The most bytes a gzip file of `compressed` bytes may inflate to ([`GZ_MIN_CAP`]).
pub(crate) fn gz_cap(compressed: u64) -> u64 {
    GZ_MIN_CAP.max(compressed.saturating_mul(GZ_RATIO))
}

/// A file opened for reading, through a gzip decoder when it is gzip (by its first two
/// bytes, whatever its name).
pub(crate) struct MaybeGz {
    pub reader: Box<dyn Read>,
    /// The length of the file on disk (compressed, for gzip).
    pub file_len: u64,
    pub gz: bool,
}

pub(crate) fn open_maybe_gz(path: &Path) -> Result<MaybeGz> {
    use std::io::BufRead;
    let file = std::fs::File::open(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let file_len = file.metadata().map_err(|e| Error::file(path, format!("cannot read: {e}")))?.len();
    let mut buffered = std::io::BufReader::new(file);
    let head = buffered.fill_buf().map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let gz = head.len() >= 2 && head[..2] == [0x1f, 0x8b];
    let reader: Box<dyn Read> =
        if gz { Box::new(flate2::bufread::MultiGzDecoder::new(buffered)) } else { Box::new(buffered) };
    Ok(MaybeGz { reader, file_len, gz })
}

/// The error for a gzip stream that fails to inflate.
pub(crate) fn gz_error(path: &Path, e: &std::io::Error) -> Error {
    Error::file(path, format!("cannot decompress ({e}): the gzip file is truncated or corrupt; fetch it again"))
}

/// The whole file, gunzipped when it is gzip; a `.gz` that inflates beyond [`gz_cap`] is
/// refused as soon as it passes the bound, before more is inflated.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let source = open_maybe_gz(path)?;
    if !source.gz {
        return std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")));
    }
    let cap = gz_cap(source.file_len);
    let mut out = Vec::new();
    source.reader.take(cap + 1).read_to_end(&mut out).map_err(|e| gz_error(path, &e))?;
    if out.len() as u64 > cap {
        return Err(Error::file(
            path,
            format!(
                "inflates to more than {cap} bytes ({GZ_RATIO} times its {} bytes, at least {GZ_MIN_CAP}): \
                 it looks like a decompression bomb; if it is real data, decompress it and give the plain file",
                source.file_len
            ),
        ));
    }
    Ok(out)
}

/// A class label as a file writes it: a whole number (`3`, `-1`, `7.0`) or a name (`setosa`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RawLabel {
    /// A number that is exactly whole (`3`, `-1`, `7.0`, `0.3e1`), within ±2⁶³.
    Whole(i64),
    /// Text that is no number at all (`setosa`), as written.
    Name(String),
}

impl RawLabel {
    /// The label's text: a whole number in decimal, a name as written.
    pub fn text(&self) -> String {
        match self {
            RawLabel::Whole(n) => n.to_string(),
            RawLabel::Name(s) => s.clone(),
        }
    }
}

/// Labels mapped to classes: `labels[i]` (0..k−1) is example i's class, `classes[l]` the label
/// written for class `l`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassLabels {
    /// Each example's class, 0..k−1, in file order.
    pub labels: Vec<usize>,
    /// The k distinct labels as written ([`RawLabel::text`]), sorted as [`encode_labels`]
    /// sorts them: `classes[l]` is class l's label.
    pub classes: Vec<String>,
}

impl ClassLabels {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// `3 classes: setosa, versicolor, virginica` (at most 10 names, then `…`), for the data's
    /// description.
    pub fn describe(&self) -> String {
        let k = self.classes.len();
        let names = if k > 10 {
            format!("{}, …, {}", self.classes[..8].join(", "), self.classes[k - 1])
        } else {
            self.classes.join(", ")
        };
        format!("{k} classes: {names}")
    }
}

/// Checks that encoded labels can be one classifier's: more than one class among two or more
/// examples (else nothing is told apart, and usually the wrong column was taken as the labels),
/// at most [`MAX_CLASSES`] classes. Messages name the label as written, not the file.
pub(crate) fn check_classes(encoded: &ClassLabels) -> std::result::Result<(), String> {
    let k = encoded.classes.len();
    if k == 1 && encoded.labels.len() > 1 {
        return Err(format!(
            "every one of the {} labels is {}: a single class leaves nothing to tell apart; is this the label column?",
            encoded.labels.len(),
            encoded.classes[0]
        ));
    }
    if k > MAX_CLASSES {
        return Err(format!(
            "{k} different labels, more than the {MAX_CLASSES} classes wgnn takes: is this the label column?"
        ));
    }
    Ok(())
}

/// Maps labels as users write them to classes 0..k−1, as scikit-learn's
/// `sklearn.preprocessing.LabelEncoder` does: the classes are the distinct labels, sorted
/// (numerically when every label is a whole number, `{3, 7}` ↦ 0, 1; else as text, by code
/// point, as NumPy sorts strings, whole numbers then written in decimal), and each label
/// becomes its class's index.
pub fn encode_labels(raw: Vec<RawLabel>) -> ClassLabels {
    if raw.iter().all(|l| matches!(l, RawLabel::Whole(_))) {
        let numbers: Vec<i64> = raw.iter().map(|l| if let RawLabel::Whole(n) = l { *n } else { 0 }).collect();
        let mut classes = numbers.clone();
        classes.sort_unstable();
        classes.dedup();
        let labels = numbers.iter().map(|n| classes.binary_search(n).expect("a class")).collect();
        return ClassLabels { labels, classes: classes.iter().map(i64::to_string).collect() };
    }
    let texts: Vec<String> = raw.iter().map(RawLabel::text).collect();
    let mut classes = texts.clone();
    classes.sort_unstable();
    classes.dedup();
    let labels = texts.iter().map(|t| classes.binary_search(t).expect("a class")).collect();
    ClassLabels { labels, classes }
}

/// The most classes a label set may name: labels run from 0 to `MAX_CLASSES − 1`. The bound
/// keeps a stray huge label (`1e9`) from sizing a one-hot matrix (examples × classes) that
/// cannot be allocated; a softmax over more classes is beyond what wgnn is for.
pub const MAX_CLASSES: usize = 1 << 16;

/// Label sets of at most this many classes (the ten digits) may have more empty classes
/// than full ones: see [`check_labels`].
pub const SMALL_CLASS_SET: usize = 10;

/// Checks that `labels` (one per example) can be the class numbers of one classifier, and
/// returns a note naming the classes below the largest label that have no example (`None`
/// when every class has one), for the data's description. `row` names example `i` in
/// messages (`line 7`, `example 6`). Refused, with a message that does not name the file:
/// - a label of [`MAX_CLASSES`] or more;
/// - a single class among two or more examples: nothing to tell apart, and usually the wrong
///   column was taken as the labels;
/// - more than [`SMALL_CLASS_SET`] classes, and more of them without examples than with: a
///   stray label (27 among 0–9) would silently make a model of mostly empty classes. (Up to
///   ten classes, a subset such as the digits 7 and 8 alone is let through, with the note.)
///
/// Works in O(m log m) time and O(m) memory, whatever the labels' values.
pub fn check_labels(labels: &[usize], row: &dyn Fn(usize) -> String) -> Result<Option<String>, String> {
    let Some((at_max, &max)) = labels.iter().enumerate().max_by_key(|&(i, l)| (l, std::cmp::Reverse(i))) else {
        return Ok(None);
    };
    if max >= MAX_CLASSES {
        return Err(format!(
            "the label {max} ({}) is above {}, the largest class number wgnn takes: labels are classes 0, 1, 2, …",
            row(at_max),
            MAX_CLASSES - 1
        ));
    }
    let mut present = labels.to_vec();
    present.sort_unstable();
    present.dedup();
    if present.len() == 1 && labels.len() > 1 {
        return Err(format!(
            "every one of the {} labels is {max}: a single class leaves nothing to tell apart; is this the label column?",
            labels.len()
        ));
    }
    let classes = max + 1;
    if classes == present.len() {
        return Ok(None);
    }
    let mut empty = Vec::with_capacity(classes - present.len());
    let mut next = present.iter().peekable();
    for c in 0..classes {
        if next.peek() == Some(&&c) {
            next.next();
        } else {
            empty.push(c);
        }
    }
    let empty_text = Digits::new(empty.iter().copied()).map(|d| d.to_string()).unwrap_or_default();
    if classes > SMALL_CLASS_SET && empty.len() > present.len() {
        return Err(format!(
            "the labels run up to {max} ({}) but only {} classes have examples; classes {empty_text} have none: \
             is label {max} a mistake? Labels are class numbers 0, 1, 2, …",
            row(at_max),
            present.len()
        ));
    }
    Ok(Some(format!("no examples of class {empty_text}")))
}

impl Dataset {
    /// The targets of a sigmoid output with the binary cross-entropy
    /// ([`crate::model::Output::SigmoidBce`]): the 0/1 target matrix (m × k, one column per
    /// label) as it is, or — for binary classification — the labels, which must be 0 and 1,
    /// as one target column (m × 1).
    ///
    /// Errors ([`Error::Data`], one line): a target that is not exactly 0 or 1 (naming its
    /// row and column, counted from 1); labels that are not 0 and 1 (naming them); no targets
    /// and no labels.
    pub fn zero_one_targets(&self) -> Result<Array2<f32>> {
        if let Some(t) = &self.targets {
            crate::cpu::check_zero_one(&t.view().into())?;
            return Ok(t.clone());
        }
        let Some(labels) = &self.labels else {
            return Err(Error::Data(
                "a sigmoid-bce output needs 0/1 targets: give --targets (one 0/1 column per label) or 0/1 labels (--label-column, --labels)".into(),
            ));
        };
        let names = self.class_names().unwrap_or_default();
        // The value each class stands for: its written label, which must read 0 or 1.
        let value = |name: &str| match name.trim().parse::<f64>() {
            Ok(v) if v == 0.0 || v == 1.0 => Some(v as f32),
            _ => None,
        };
        let Some(values) = names.iter().map(|n| value(n)).collect::<Option<Vec<f32>>>() else {
            return Err(Error::Data(format!(
                "the labels are {} but a sigmoid-bce output takes 0/1 labels (binary) or a 0/1 target matrix (--targets, one column per label): use --output softmax for {} classes",
                names.join(", "),
                names.len()
            )));
        };
        let column: Vec<f32> = labels.iter().map(|&l| values[l]).collect();
        Ok(Array2::from_shape_vec((column.len(), 1), column).expect("one value per label"))
    }
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
        for bad in ["", "9-5", "a", "1-", "1,,2", "-3", "0-4000000000", "65536"] {
            assert!(bad.parse::<Digits>().is_err(), "{bad:?} should be refused");
        }
        let many: Digits = ["0-65535"; 4].join(",").parse().unwrap();
        assert_eq!(many.labels().len(), 65536);
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
        // A bare file: its extension says the format, as for every file flag (FileArg).
        assert_eq!("data.csv".parse::<DataSource>().unwrap(), DataSource::Csv("data.csv".into()));
        assert_eq!("d/x.NPY.gz".parse::<DataSource>().unwrap(), DataSource::Npy("d/x.NPY.gz".into()));
        assert!("data.txt".parse::<DataSource>().is_err());
        assert!("text:a.csv".parse::<DataSource>().is_err());
    }

    #[test]
    fn target_sources_parse_and_print() {
        let t: TargetSource = "columns:33-64".parse().unwrap();
        assert_eq!(t, TargetSource::Columns((32..64).collect()));
        assert_eq!(t.to_string(), "columns:33-64");
        assert_eq!("columns:2,5-7".parse::<TargetSource>().unwrap(), TargetSource::Columns(vec![1, 4, 5, 6]));
        assert_eq!("npy:y.npy".parse::<TargetSource>().unwrap(), TargetSource::Npy("y.npy".into()));
        assert_eq!("CSV:y.csv".parse::<TargetSource>().unwrap().to_string(), "csv:y.csv");
        assert_eq!("y.npy".parse::<TargetSource>().unwrap(), TargetSource::Npy("y.npy".into()));
        assert_eq!("y.csv.gz".parse::<TargetSource>().unwrap(), TargetSource::Csv("y.csv.gz".into()));
        for bad in ["columns:0", "columns:", "columns:a-b", "y", "y.txt", "parquet:y.pq", "npy:"] {
            assert!(bad.parse::<TargetSource>().is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn file_args_parse_one_way() {
        let npy = |p: &str| FileArg { format: FileFormat::Npy, path: p.into() };
        let csv = |p: &str| FileArg { format: FileFormat::Csv, path: p.into() };
        assert_eq!("npy:y.npy".parse::<FileArg>().unwrap(), npy("y.npy"));
        assert_eq!("NPY:y".parse::<FileArg>().unwrap(), npy("y"));
        assert_eq!("y.npy".parse::<FileArg>().unwrap(), npy("y.npy"));
        assert_eq!("csv:C:/y.txt".parse::<FileArg>().unwrap(), csv("C:/y.txt"));
        assert_eq!("C:/y.csv".parse::<FileArg>().unwrap(), csv("C:/y.csv"));
        assert_eq!("y.CSV.gz".parse::<FileArg>().unwrap(), csv("y.CSV.gz"));
        assert_eq!(FileArg::parse("theta", Some(FileFormat::Npy)).unwrap(), npy("theta"));
        for bad in ["y", "y.txt", "npy:", "parquet:y.pq", ""] {
            assert!(bad.parse::<FileArg>().is_err(), "{bad:?} should be refused");
        }
        assert_eq!(npy("y.npy").to_string(), "npy:y.npy");
        // Stored forms are absolute and parse back to the same file.
        let stored = absolute_source("y.csv");
        assert!(stored.starts_with("csv:/") && stored.ends_with("/y.csv"), "{stored}");
        assert_eq!(absolute_source("columns:2-3"), "columns:2-3");
        assert_eq!(absolute_source("synthetic"), "synthetic");
        assert!(absolute_source("mnist:d").starts_with("mnist:/"));
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
        let data = Dataset {
            x,
            labels: Some(vec![0, 5, 7, 1, 9, 5]),
            classes: None,
            targets: None,
            description: "toy".into(),
            image_shape: None,
        };
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
