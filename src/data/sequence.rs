//! Sequence data for recurrent networks (MATH.md, "Layers beyond dense": a batch of sequences
//! is m × T × n): m sequences of T steps of n features, kept as the m × (T·n) row-major matrix
//! whose row i holds step t's n features at columns t·n … t·n + n − 1 (NumPy's
//! `x.reshape(m, T * n)`), so a [`Dataset`] carries them unchanged.
//!
//! - `.npy` of shape m × T × n ([`load_npy_sequences`]) with one class label per sequence
//!   (`--labels`, a vector of m), one class label per step (`--labels`, a matrix m × T, kept
//!   flat as m·T labels, sequence i's step t at i·T + t, as the backends take them for a
//!   softmax at every step) or real targets per step (`--targets`, m × T × k, kept as
//!   m × (T·k) the same way).
//! - MNIST read row by row ([`mnist_rows`], `--data mnist:DIR --sequence rows`): each 28×28
//!   image is 28 steps of 28 pixels, which is its row-major pixel order already.
//! - Text as characters lives in [`super::text`].
//!
//! Refused in one line each: a 2-D (or 1-D, 4-D) array where m × T × n is needed, an array of
//! Python objects (NumPy's way of holding ragged sequences), targets whose m or T differ from
//! the data's, an empty axis, non-finite values. Sizes come from the `.npy` header, which
//! [`crate::npy`] checks against the file's length before anything is allocated.
//!
//! This module reads and checks data; it knows nothing of networks, backends or the CLI.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ndarray::{ArrayD, Dimension, Ix3};

use super::Dataset;
use crate::{Error, Result};

/// The shape of one sequence: T steps of n features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SequenceShape {
    /// T, the number of steps.
    pub steps: usize,
    /// n, the features at each step.
    pub features: usize,
}

impl SequenceShape {
    /// T·n, the values of one sequence (the columns of its row).
    pub fn len(&self) -> usize {
        self.steps.saturating_mul(self.features)
    }

    /// True when a sequence holds no values (T or n is 0).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// "T×n", as messages show it.
    pub fn describe(&self) -> String {
        format!("{}×{}", self.steps, self.features)
    }
}

/// Sequences ready for a recurrent network: `data.x` is m × (T·n) as the module header says;
/// `data.labels` holds one class per sequence, `data.targets` (m × (T·k)) k values per step.
#[derive(Clone, Debug)]
pub struct Sequences {
    /// The sequences as rows (m × (T·n)), with their labels or targets.
    pub data: Dataset,
    /// T and n of every sequence.
    pub shape: SequenceShape,
    /// k, the targets per step, when `data.targets` holds per-step targets.
    pub targets_per_step: Option<usize>,
    /// True when `data.labels` holds a class at every step: m·T labels, sequence i's step t
    /// at i·T + t (from an m × T labels file), for a softmax at every step.
    pub labels_per_step: bool,
}

/// How to read an image data set as sequences (`--sequence`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SequenceReading {
    /// One step per pixel row: an h × w image is h steps of w pixels.
    Rows,
}

impl FromStr for SequenceReading {
    type Err = Error;

    fn from_str(s: &str) -> Result<SequenceReading> {
        match s.trim().to_ascii_lowercase().as_str() {
            "rows" => Ok(SequenceReading::Rows),
            _ => Err(Error::Data(format!(
                "unknown sequence reading `{s}`: use rows (each image row is one step, e.g. MNIST's 28 steps of 28 pixels)"
            ))),
        }
    }
}

impl fmt::Display for SequenceReading {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rows")
    }
}

/// Images read row by row: each example of `data` (an image of h × w, `data.image_shape`)
/// becomes h steps of w values. The matrix is unchanged (row-major pixels are already step
/// after step); refused for data without an image shape.
pub fn mnist_rows(data: Dataset) -> Result<Sequences> {
    let Some((height, width)) = data.image_shape else {
        return Err(Error::Data(format!(
            "--sequence rows reads images row by row, but {} holds no images: give mnist:DIR, or npy:FILE of shape \
             examples × steps × features",
            data.description
        )));
    };
    if height * width != data.num_features() {
        return Err(Error::Shape(format!(
            "the images are {height}×{width} but the examples hold {} values: they cannot be read row by row",
            data.num_features()
        )));
    }
    let shape = SequenceShape { steps: height, features: width };
    let description = format!("{}, read row by row: {} steps of {} pixels", data.description, height, width);
    Ok(Sequences {
        data: Dataset { description, image_shape: None, ..data },
        shape,
        targets_per_step: None,
        labels_per_step: false,
    })
}

/// Python's spelling of a shape: `(20, 4)`, `(7,)`.
fn shape_text(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// A float `.npy` of three axes, as f64, or one line saying why not. `what` names the array in
/// the advice (`sequences`, `targets`) and `last` its last axis (`features`, `targets`).
fn read_3d(path: &Path, what: &str, last: &str) -> Result<ndarray::Array3<f64>> {
    let a: ArrayD<f64> = crate::npy::read_f64_dyn(path).map_err(|e| match e {
        // NumPy saves a list of sequences of different lengths as an array of objects.
        Error::File { message, .. } if message.contains("dtype |O") || message.contains("dtype '|O'") => Error::file(
            path,
            format!(
                "holds Python objects, as NumPy saves ragged sequences (of different lengths): pad or cut every \
                 sequence to the same T steps and save a float array of shape (examples, T, {last})"
            ),
        ),
        other => other,
    })?;
    let shape = a.shape().to_vec();
    if shape.len() != 3 {
        let advice = match shape.as_slice() {
            [m, t] => format!(
                "; for one {} per step save it as shape ({m}, {t}, 1) (x.reshape({m}, {t}, 1))",
                last.trim_end_matches('s')
            ),
            _ => String::new(),
        };
        return Err(Error::file(
            path,
            format!(
                "has shape {} ({} axes), but {what} need 3: (examples, steps, {last}){advice}",
                shape_text(&shape),
                shape.len()
            ),
        ));
    }
    if shape.contains(&0) {
        return Err(Error::file(
            path,
            format!("has shape {}: an axis of length 0 holds no {what}", shape_text(&shape)),
        ));
    }
    if let Some((at, v)) = a.indexed_iter().find(|(_, v)| !v.is_finite()) {
        return Err(Error::file(
            path,
            format!(
                "value {v} at [{}]: every value must be a finite number; remove or replace it",
                at.slice().iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    if let Some((at, v)) = a.indexed_iter().find(|(_, v)| v.abs() > f64::from(f32::MAX)) {
        return Err(Error::file(
            path,
            format!(
                "value {v:e} at [{}] is beyond float32's range (±3.4e38), in which wgnn keeps its data; rescale it",
                at.slice().iter().map(usize::to_string).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    Ok(a.into_dimensionality::<Ix3>().expect("checked 3 axes"))
}

/// m × T × n sequences from a float `.npy` (float32 or float64), with one class label per
/// sequence from `labels` (a `.npy` vector of m integers, [`crate::npy::read_labels`]) and/or
/// per-step real targets from `targets` (a float `.npy` of m × T × k). Refused as the module
/// header says, each in one line naming the file.
pub fn load_npy_sequences(path: &Path, labels: Option<&Path>, targets: Option<&Path>) -> Result<Sequences> {
    load_npy_sequences_limited(path, labels, targets, None)
}

/// As [`load_npy_sequences`], keeping the first `limit` sequences (`--limit`) and their
/// labels and targets alike: a labels or targets file holds one entry per sequence of the
/// file, or exactly `limit` (then those of the kept sequences), as for every other source.
pub fn load_npy_sequences_limited(
    path: &Path,
    labels: Option<&Path>,
    targets: Option<&Path>,
    limit: Option<usize>,
) -> Result<Sequences> {
    if limit == Some(0) {
        return Err(Error::Data("a limit of 0 examples leaves nothing to train on: give at least 1".into()));
    }
    let a = read_3d(path, "sequences", "features")?;
    let (all, steps, features) = a.dim();
    let limited = Kept { all, kept: limit.map_or(all, |n| n.min(all)) };
    let (kept, fits, or_kept) = (limited.kept, |count| limited.fits(count), limited.or_kept());
    let a = a.slice_move(ndarray::s![..kept, .., ..]);
    let m = kept;
    let shape = SequenceShape { steps, features };
    let (labels, labels_per_step) = match labels {
        Some(lp) => {
            // --limit keeps the first `kept` sequences: a file of every sequence's labels or of
            // the kept ones' only, per sequence or per step (row-major m × T).
            let (mut l, per_step) = read_sequence_labels(lp, limited, steps, path)?;
            l.truncate(if per_step { kept * steps } else { kept });
            (Some(l), per_step)
        }
        None => (None, false),
    };
    let (targets, targets_per_step) = match targets {
        Some(tp) => {
            let t = read_3d(tp, "per-step targets", "targets")?;
            let (tm, tt, k) = t.dim();
            if !fits(tm) || tt != steps {
                let m = all;
                return Err(Error::Shape(format!(
                    "{} holds targets for {tm} sequences of {tt} steps but {} has {m} sequences of {steps} steps: \
                     give one row of targets per step, shape ({m}, {steps}, k){or_kept}",
                    tp.display(),
                    path.display()
                )));
            }
            let t = t.slice_move(ndarray::s![..kept, .., ..]);
            // Row-major first: a Fortran-order file (`np.asfortranarray`) reads as another layout.
            let t =
                t.as_standard_layout().into_owned().into_shape_with_order((m, steps * k)).expect("row-major reshapes");
            (Some(t.mapv(|v| v as f32)), Some(k))
        }
        None => (None, None),
    };
    let x = a
        .as_standard_layout()
        .into_owned()
        .into_shape_with_order((m, steps * features))
        .expect("row-major reshapes")
        .mapv(|v| v as f32);
    let description = format!(
        "{}: {m} sequences of {steps} steps of {features} values{}{}",
        path.display(),
        match (&labels, labels_per_step) {
            (Some(_), true) => ", with labels at every step",
            (Some(_), false) => ", with labels",
            (None, _) => "",
        },
        targets_per_step.map_or_else(String::new, |k| format!(", {k} targets per step"))
    );
    Ok(Sequences {
        data: Dataset { x, labels, targets, description, image_shape: None, classes: None },
        shape,
        targets_per_step,
        labels_per_step,
    })
}

/// The sequences of a file (`all`) and those `--limit` keeps (`kept` ≤ `all`): a labels or
/// targets file holds an entry for every sequence of the file, or for the kept ones only.
#[derive(Clone, Copy)]
struct Kept {
    all: usize,
    kept: usize,
}

impl Kept {
    /// Whether a file of `count` entries (one per sequence) fits.
    fn fits(self, count: usize) -> bool {
        count == self.all || (count == self.kept && self.kept < self.all)
    }

    /// The end of a refusal naming the kept count, when --limit keeps fewer.
    fn or_kept(self) -> String {
        if self.kept < self.all {
            format!(", or one per sequence --limit keeps ({})", self.kept)
        } else {
            String::new()
        }
    }
}

/// The labels of m sequences of T steps (data file `data`) from the file `--labels` names
/// (`flag_text`: npy:F, csv:F or a bare file; every sequence's or the kept ones'): a vector of m (one
/// class per sequence; also an m × 1 column) or a matrix m × T (one class per step: returned
/// flat, sequence i's step t at i·T + t, with `true`). Refused in one line: another m or T,
/// 3 or more axes (real per-step targets are `--targets`), values that are not class numbers.
fn read_sequence_labels(flag_text: &Path, kept: Kept, steps: usize, data: &Path) -> Result<(Vec<usize>, bool)> {
    let file = super::FileArg::parse(&flag_text.to_string_lossy(), None)?;
    let path = file.path.as_path();
    let (fits, or_kept) = (|count| kept.fits(count), kept.or_kept());
    let m = kept.all;
    let shape = match file.format {
        super::FileFormat::Npy => header_shape(path),
        super::FileFormat::Csv => None,
    };
    match shape.as_deref() {
        Some(&[_, lt]) if lt != 1 => {
            let (lm, lt, l) = crate::npy::read_step_labels(path)?;
            if !fits(lm) || lt != steps {
                return Err(Error::Shape(format!(
                    "{} holds labels for {lm} sequences of {lt} steps but {} has {m} sequences of {steps} steps: \
                     give one label per sequence (a vector of {m}) or one per step (shape ({m}, {steps})){or_kept}",
                    path.display(),
                    data.display()
                )));
            }
            Ok((l, true))
        }
        Some(shape) if shape.len() > 2 => Err(Error::file(
            path,
            format!(
                "has shape {} ({} axes), but labels are one per sequence ({m},) or one per step ({m}, {steps}); \
                 real values at every step are --targets",
                shape_text(shape),
                shape.len()
            ),
        )),
        _ => {
            let l = super::read_class_numbers(flag_text)?;
            if !fits(l.len()) {
                return Err(Error::Data(format!(
                    "{} has {} labels but {} has {m} sequences: give one label per sequence (a vector of {m}) \
                     or one per step (shape ({m}, {steps})){or_kept}",
                    path.display(),
                    l.len(),
                    data.display()
                )));
            }
            Ok((l, false))
        }
    }
}

/// True when `path` is a `.npy` file whose header declares three axes (m × T × n): how
/// commands that read any `npy:` data tell sequences from a matrix before reading them. Reads
/// at most the first 64 KiB; anything unreadable is `false` (the matrix reader then says what
/// is wrong with the file).
pub fn is_sequence_npy(path: &Path) -> bool {
    header_shape(path).is_some_and(|shape| shape.len() == 3)
}

/// T and n of the sequences a `.npy` file of three axes (m × T × n) holds, from its header
/// alone; `None` for any other file (or one that cannot be read: its reader then says why).
/// Commands that read sequences for a trained model check T and n against the model's, not
/// only their product T·n, which the rows the networks read would hide.
pub fn npy_sequence_shape(path: &Path) -> Option<SequenceShape> {
    match header_shape(path).as_deref() {
        Some(&[_, steps, features]) => Some(SequenceShape { steps, features }),
        _ => None,
    }
}

/// The shape a `.npy` file's header declares, from at most its first 64 KiB; `None` when it
/// cannot be read (the reader that follows says why).
fn header_shape(path: &Path) -> Option<Vec<usize>> {
    use std::io::Read;
    let mut head = Vec::new();
    let file = std::fs::File::open(path).ok()?;
    if file.take(1 << 16).read_to_end(&mut head).is_err() || head.len() < 10 || &head[..6] != b"\x93NUMPY" {
        return None;
    }
    let (len_bytes, at): (usize, usize) = if head[6] == 1 { (2, 10) } else { (4, 12) };
    let field = head.get(8..8 + len_bytes)?;
    let header_len = field.iter().rev().fold(0usize, |n, &b| (n << 8) | usize::from(b));
    let header = head.get(at..at.saturating_add(header_len))?;
    let header = String::from_utf8_lossy(header);
    let shape = header.split("'shape':").nth(1).and_then(|r| r.split(')').next())?;
    shape
        .trim()
        .trim_start_matches('(')
        .split(',')
        .filter(|d| !d.trim().is_empty())
        .map(|d| d.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_parses() {
        assert_eq!("Rows".parse::<SequenceReading>().unwrap(), SequenceReading::Rows);
        assert!("columns".parse::<SequenceReading>().is_err());
        let s = SequenceShape { steps: 28, features: 28 };
        assert_eq!((s.len(), s.describe()), (784, "28×28".to_string()));
    }
}
