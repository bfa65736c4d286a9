//! Reading and writing `.npy` files (NumPy's format) for θ, data, labels and gradients, with
//! errors that name the file and say what was expected. Any float or integer dtype NumPy
//! writes by default is accepted where it makes sense; nothing else is guessed. A header's
//! declared size is checked against the file's length before anything is allocated from it.

use std::path::Path;

use ndarray::{Array1, Array2, ArrayD, Ix1, Ix2};
use ndarray_npy::npy::header::Header;
use ndarray_npy::{ReadNpyError, ReadableElement, WriteNpyExt};

use crate::{Error, Result};

/// A `.npy` file read whole (its own length bounds the read), with a header whose declared
/// size has been checked against that length: `ndarray-npy` allocates what the header
/// declares, so nothing reaches it before this check.
struct Npy {
    bytes: Vec<u8>,
    /// NumPy's type string, e.g. `<f8`, `|u1`.
    descr: String,
    shape: Vec<usize>,
}

/// Python's spelling of a shape: `(20, 4)`, `(7,)`, `()`.
fn shape_text(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ")),
    }
}

/// Reads `path` and checks its header: the magic bytes, a header length within the file, a
/// plain numeric dtype, and a data length equal to the shape's product times the item size
/// (NumPy's format, <https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html>).
fn open(path: &Path) -> Result<Npy> {
    let bytes = std::fs::read(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(Error::file(
            path,
            "is gzip-compressed: .npy files are read uncompressed (gunzip it, or save with numpy.save); only CSV is read through gzip",
        ));
    }
    if bytes.len() < 6 || &bytes[..6] != b"\x93NUMPY" {
        return Err(Error::file(
            path,
            "is not a .npy file (it lacks NumPy's magic bytes): save arrays with numpy.save",
        ));
    }
    let truncated =
        || Error::file(path, format!("holds {} bytes, too few for a .npy header: it is truncated", bytes.len()));
    let major = *bytes.get(6).ok_or_else(truncated)?;
    let length_bytes = match major {
        1 => 2,
        2 | 3 => 4,
        v => {
            return Err(Error::file(path, format!("is a .npy file of format version {v}; this reads versions 1 to 3")));
        }
    };
    let field = bytes.get(8..8 + length_bytes).ok_or_else(truncated)?;
    let header_len = field.iter().rev().fold(0usize, |n, &b| (n << 8) | usize::from(b));
    let data_at = 8 + length_bytes + header_len;
    if data_at > bytes.len() {
        return Err(Error::file(
            path,
            format!(
                "declares a header of {header_len} bytes but the file holds {}: it is truncated or not a .npy file",
                bytes.len()
            ),
        ));
    }
    let header = Header::from_reader(&mut &bytes[..])
        .map_err(|e| Error::file(path, format!("has an unreadable .npy header ({e}): save arrays with numpy.save")))?;
    let literal = header.type_descriptor.to_string();
    let descr = literal.trim_matches(|c| c == '\'' || c == '"').to_string();
    // A plain dtype is a byte order, a kind and an item size: `<f8`, `|u1`, `>i4`.
    let item_size = descr
        .get(2..)
        .filter(|_| descr.len() > 2 && !literal.starts_with('['))
        .and_then(|n| n.parse::<usize>().ok())
        .ok_or_else(|| {
            Error::file(
                path,
                format!(
                    "holds dtype {literal}, not plain numbers: save data as float32 or float64 (labels as integers)"
                ),
            )
        })?;
    let shape = header.shape;
    let values = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let held = bytes.len() - data_at;
    let needed = values.and_then(|n| n.checked_mul(item_size));
    if needed != Some(held) {
        let needed = needed.map_or_else(|| "more than can exist".to_string(), |n| format!("{n} bytes"));
        return Err(Error::file(
            path,
            format!(
                "its header declares shape {} of {descr}, which needs {needed} of data, but the file holds {held}: \
                 it is truncated or its header is damaged",
                shape_text(&shape)
            ),
        ));
    }
    Ok(Npy { bytes, descr, shape })
}

impl Npy {
    /// The array as `T`; `None` when the file holds another dtype.
    fn read<T: ReadableElement>(&self, path: &Path) -> Result<Option<ArrayD<T>>> {
        use ndarray_npy::ReadNpyExt;
        match ArrayD::<T>::read_npy(&self.bytes[..]) {
            Ok(a) => Ok(Some(a)),
            Err(ReadNpyError::WrongDescriptor(_)) => Ok(None),
            Err(e) => Err(npy_error(path, e)),
        }
    }

    /// Any float array as f64 (f32 converts exactly); `None` for other dtypes.
    fn floats(&self, path: &Path) -> Result<Option<ArrayD<f64>>> {
        if let Some(a) = self.read::<f64>(path)? {
            return Ok(Some(a));
        }
        Ok(self.read::<f32>(path)?.map(|a| a.mapv(f64::from)))
    }
}

fn npy_error(path: &Path, e: ReadNpyError) -> Error {
    let hint = match e {
        ReadNpyError::Io(_) | ReadNpyError::ParseHeader(_) | ReadNpyError::ParseData(_) => {
            "is it a .npy file written by numpy.save? It may be truncated or another format"
        }
        ReadNpyError::LengthOverflow | ReadNpyError::MissingData => {
            "the file is shorter than its header says: it is truncated"
        }
        ReadNpyError::ExtraBytes(_) => "the file is longer than its header says",
        _ => "not a readable .npy array",
    };
    Error::file(path, format!("{e}: {hint}"))
}

/// Any float array, as f64 (f32 converts exactly).
pub fn read_f64_dyn(path: &Path) -> Result<ArrayD<f64>> {
    let npy = open(path)?;
    npy.floats(path)?.ok_or_else(|| {
        Error::file(path, format!("holds {} values, neither float32 nor float64: save a float array", npy.descr))
    })
}

/// A matrix of float64 or float32 values; f32 stays f32 so the fast path converts nothing.
pub enum Matrix {
    /// A float32 array, rows × cols.
    F32(Array2<f32>),
    /// A float64 array, rows × cols.
    F64(Array2<f64>),
}

impl Matrix {
    /// A view of the values in their own precision, for a backend (nothing is copied).
    pub fn inputs(&self) -> crate::Inputs<'_> {
        match self {
            Matrix::F32(x) => x.into(),
            Matrix::F64(x) => x.into(),
        }
    }

    /// The values as f64 (f32 widens exactly), copied.
    pub fn to_f64(&self) -> Array2<f64> {
        match self {
            Matrix::F32(x) => x.mapv(|v| v as f64),
            Matrix::F64(x) => x.clone(),
        }
    }
}

fn into_2d<T>(path: &Path, a: ArrayD<T>) -> Result<Array2<T>> {
    let shape = a.shape().to_vec();
    match shape.len() {
        2 => Ok(a.into_dimensionality::<Ix2>().expect("checked 2-D")),
        1 => {
            // A vector is one example per entry only if it says so: refuse, the caller decides.
            Err(Error::file(
                path,
                format!("is a vector of {} values; expected a matrix (examples × features)", shape[0]),
            ))
        }
        _ => Err(Error::file(path, format!("has shape {shape:?}; expected a matrix (examples × features)"))),
    }
}

/// A 2-D float matrix (rows are examples), float32 or float64.
pub fn read_matrix(path: &Path) -> Result<Matrix> {
    let npy = open(path)?;
    if let Some(a) = npy.read::<f32>(path)? {
        return Ok(Matrix::F32(into_2d(path, a)?));
    }
    if let Some(a) = npy.read::<f64>(path)? {
        return Ok(Matrix::F64(into_2d(path, a)?));
    }
    Err(Error::file(
        path,
        format!("holds {} values, neither float32 nor float64: save the matrix as a float array", npy.descr),
    ))
}

/// A 1-D float vector (θ, a gradient), float32 or float64, as f64. A matrix is refused.
pub fn read_vector(path: &Path) -> Result<Array1<f64>> {
    let a = read_f64_dyn(path)?;
    let shape = a.shape().to_vec();
    a.into_dimensionality::<Ix1>().map_err(|_| Error::file(path, format!("has shape {shape:?}; expected a 1-D vector")))
}

/// Class labels: a 1-D array (or one column) of integers of any integer dtype, or of floats
/// that are exact whole numbers. Refused: negative, fractional or non-finite values, and label
/// sets that cannot be class numbers ([`crate::data::check_labels`]: a label above
/// [`crate::data::MAX_CLASSES`], a single class, more classes without examples than with).
pub fn read_labels(path: &Path) -> Result<Vec<usize>> {
    let npy = open(path)?;
    // The shape first: a matrix of labels is refused before its values are converted.
    if !(npy.shape.len() == 1 || (npy.shape.len() == 2 && npy.shape[1] == 1)) {
        return Err(Error::file(
            path,
            format!("has shape {}; expected a vector of labels, one per example", shape_text(&npy.shape)),
        ));
    }
    let labels = label_values(path, &npy, 1)?;
    crate::data::check_labels(&labels, &|i| format!("example {i}")).map_err(|m| Error::file(path, m))?;
    Ok(labels)
}

/// Class labels as users have them: a 1-D array (or one column) of integers of any integer
/// dtype, or of floats that are exact whole numbers, any values (`{3, 7}`, `{-1, 1}`), mapped
/// to classes 0..k−1 as scikit-learn's `LabelEncoder` maps them ([`crate::data::encode_labels`]).
///
/// Errors ([`Error::File`], one line): another shape, a fractional or non-finite float, an
/// unsigned integer beyond 2⁶³, a single class among several examples, more than
/// [`crate::data::MAX_CLASSES`] classes.
pub fn read_class_labels(path: &Path) -> Result<crate::data::ClassLabels> {
    use crate::data::RawLabel;
    let npy = open(path)?;
    if !(npy.shape.len() == 1 || (npy.shape.len() == 2 && npy.shape[1] == 1)) {
        return Err(Error::file(
            path,
            format!("has shape {}; expected a vector of labels, one per example", shape_text(&npy.shape)),
        ));
    }
    fn whole<T: Copy + TryInto<i64> + ToString>(path: &Path, a: ArrayD<T>) -> Result<Vec<RawLabel>> {
        a.iter()
            .enumerate()
            .map(|(i, &v)| {
                v.try_into().map(RawLabel::Whole).map_err(|_| {
                    Error::file(
                        path,
                        format!("label {} of example {i} is beyond 2⁶³: labels are classes", v.to_string()),
                    )
                })
            })
            .collect()
    }
    let raw = if let Some(a) = npy.read::<i64>(path)? {
        whole(path, a)?
    } else if let Some(a) = npy.read::<i32>(path)? {
        whole(path, a)?
    } else if let Some(a) = npy.read::<i16>(path)? {
        whole(path, a)?
    } else if let Some(a) = npy.read::<i8>(path)? {
        whole(path, a)?
    } else if let Some(a) = npy.read::<u64>(path)? {
        whole(path, a)?
    } else if let Some(a) = npy.read::<u32>(path)? {
        whole(path, a)?
    } else if let Some(a) = npy.read::<u16>(path)? {
        whole(path, a)?
    } else if let Some(a) = npy.read::<u8>(path)? {
        whole(path, a)?
    } else if let Some(a) = npy.floats(path)? {
        a.iter()
            .enumerate()
            .map(|(i, &v)| {
                // The value read is exact (binary), so a zero fraction means a whole number.
                if v.is_finite() && v.fract() == 0.0 && v.abs() <= 9.0e15 {
                    Ok(RawLabel::Whole(v as i64))
                } else {
                    Err(Error::file(
                        path,
                        format!("label {v} of example {i} is not a class number: labels are whole numbers (0, 3, -1)"),
                    ))
                }
            })
            .collect::<Result<_>>()?
    } else {
        return Err(Error::file(
            path,
            format!("holds {} values, neither integers nor floats: save labels as an integer vector", npy.descr),
        ));
    };
    let encoded = crate::data::encode_labels(raw);
    crate::data::check_classes(&encoded).map_err(|m| Error::file(path, m))?;
    Ok(encoded)
}

/// The values of a labels file whose shape was checked, as class numbers: integers of any
/// integer dtype, or floats that are exact whole numbers, each below
/// [`crate::data::MAX_CLASSES`] (row-major order; `steps` labels per example, for messages).
fn label_values(path: &Path, npy: &Npy, steps: usize) -> Result<Vec<usize>> {
    let labels: Vec<usize> = if let Some(a) = npy.read::<i64>(path)? {
        integer_labels(path, a, steps)?
    } else if let Some(a) = npy.read::<i32>(path)? {
        integer_labels(path, a, steps)?
    } else if let Some(a) = npy.read::<i16>(path)? {
        integer_labels(path, a, steps)?
    } else if let Some(a) = npy.read::<i8>(path)? {
        integer_labels(path, a, steps)?
    } else if let Some(a) = npy.read::<u64>(path)? {
        integer_labels(path, a, steps)?
    } else if let Some(a) = npy.read::<u32>(path)? {
        integer_labels(path, a, steps)?
    } else if let Some(a) = npy.read::<u16>(path)? {
        integer_labels(path, a, steps)?
    } else if let Some(a) = npy.read::<u8>(path)? {
        integer_labels(path, a, steps)?
    } else if let Some(a) = npy.floats(path)? {
        a.iter()
            .enumerate()
            .map(|(i, &v)| {
                // The value read is exact (binary), so a zero fraction means a whole number.
                if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= crate::data::MAX_CLASSES as f64 {
                    Ok(v as usize)
                } else {
                    Err(bad_label(path, i, steps, &v.to_string()))
                }
            })
            .collect::<Result<_>>()?
    } else {
        return Err(Error::file(
            path,
            format!("holds {} values, neither integers nor floats: save labels as an integer vector", npy.descr),
        ));
    };
    Ok(labels)
}

/// Per-step class labels of sequences: a 2-D array m × T of class numbers (one per step of
/// each sequence, as [`read_labels`] reads each: integers of any integer dtype or whole
/// floats), returned as (m, T, the m·T labels row-major: sequence i's step t at i·T + t).
///
/// Errors ([`Error::File`], one line): not 2 axes, an empty axis, a value that is not a class
/// number, label sets that cannot be class numbers ([`crate::data::check_labels`]).
pub fn read_step_labels(path: &Path) -> Result<(usize, usize, Vec<usize>)> {
    let npy = open(path)?;
    let [m, steps] = npy.shape[..] else {
        return Err(Error::file(
            path,
            format!(
                "has shape {} ({} axes); per-step labels are m × T: one class number per step of each sequence",
                shape_text(&npy.shape),
                npy.shape.len()
            ),
        ));
    };
    if m == 0 || steps == 0 {
        return Err(Error::file(path, format!("has shape {}: it holds no labels", shape_text(&npy.shape))));
    }
    let labels = label_values(path, &npy, steps)?;
    let at = |i: usize| format!("sequence {}, step {}", i / steps, i % steps);
    crate::data::check_labels(&labels, &at).map_err(|m| Error::file(path, m))?;
    Ok((m, steps, labels))
}

/// Label `i` (row-major; `steps` labels per example: 1, or T of a sequence's steps) is `v`,
/// not a class number.
fn bad_label(path: &Path, i: usize, steps: usize, v: &str) -> Error {
    let bound = crate::data::MAX_CLASSES - 1;
    let at = if steps > 1 { format!("sequence {}, step {}", i / steps, i % steps) } else { format!("example {i}") };
    Error::file(path, format!("label {v} of {at} is not a class number: labels are whole numbers 0 to {bound}"))
}

fn integer_labels<T: Copy + TryInto<usize> + ToString>(path: &Path, a: ArrayD<T>, steps: usize) -> Result<Vec<usize>> {
    a.iter()
        .enumerate()
        .map(|(i, &v)| {
            v.try_into()
                .ok()
                .filter(|&l| l < crate::data::MAX_CLASSES)
                .ok_or_else(|| bad_label(path, i, steps, &v.to_string()))
        })
        .collect()
}

/// Writes a vector atomically: a temporary file beside the target, then a rename, so an
/// interrupted run never leaves a half-written file.
pub fn write_vector(path: &Path, v: &Array1<f64>) -> Result<()> {
    crate::atomic::write_with(path, |file| v.write_npy(file).map_err(|e| e.to_string()))
}

/// Writes a matrix (rows × cols, float64, C order) atomically, as [`write_vector`] does.
/// Errors: `Error::File` when the file cannot be written.
pub fn write_matrix(path: &Path, m: &Array2<f64>) -> Result<()> {
    crate::atomic::write_with(path, |file| m.write_npy(file).map_err(|e| e.to_string()))
}
