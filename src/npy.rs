//! Reading and writing `.npy` files (NumPy's format) for θ, data, labels and gradients, with
//! errors that name the file and say what was expected. Any float or integer dtype NumPy
//! writes by default is accepted where it makes sense; nothing else is guessed.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use ndarray::{Array1, Array2, ArrayD, Ix1, Ix2};
use ndarray_npy::{ReadNpyError, ReadNpyExt, ReadableElement, WriteNpyExt};

use crate::{Error, Result};

/// Reads `path` as an array of `T`; `None` when the file holds another dtype.
fn try_read<T: ReadableElement>(path: &Path) -> Result<Option<ArrayD<T>>> {
    let mut file = File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    let mut magic = [0u8; 6];
    if file.read_exact(&mut magic).is_err() || &magic != b"\x93NUMPY" {
        return Err(Error::file(
            path,
            "is not a .npy file (it lacks NumPy's magic bytes): save arrays with numpy.save",
        ));
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| Error::file(path, e.to_string()))?;
    match ArrayD::<T>::read_npy(BufReader::new(file)) {
        Ok(a) => Ok(Some(a)),
        Err(ReadNpyError::WrongDescriptor(_)) => Ok(None),
        Err(e) => Err(npy_error(path, e)),
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
    if let Some(a) = try_read::<f64>(path)? {
        return Ok(a);
    }
    if let Some(a) = try_read::<f32>(path)? {
        return Ok(a.mapv(f64::from));
    }
    Err(Error::file(path, "holds neither float32 nor float64 values"))
}

/// A matrix of float64 or float32 values; f32 stays f32 so the fast path converts nothing.
pub enum Matrix {
    F32(Array2<f32>),
    F64(Array2<f64>),
}

impl Matrix {
    pub fn inputs(&self) -> crate::Inputs<'_> {
        match self {
            Matrix::F32(x) => x.into(),
            Matrix::F64(x) => x.into(),
        }
    }

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
    if let Some(a) = try_read::<f32>(path)? {
        return Ok(Matrix::F32(into_2d(path, a)?));
    }
    if let Some(a) = try_read::<f64>(path)? {
        return Ok(Matrix::F64(into_2d(path, a)?));
    }
    Err(Error::file(path, "holds neither float32 nor float64 values: save the matrix as a float array"))
}

/// A 1-D float vector (θ, a gradient), float32 or float64, as f64. A matrix is refused.
pub fn read_vector(path: &Path) -> Result<Array1<f64>> {
    let a = read_f64_dyn(path)?;
    let shape = a.shape().to_vec();
    a.into_dimensionality::<Ix1>().map_err(|_| Error::file(path, format!("has shape {shape:?}; expected a 1-D vector")))
}

/// Class labels: a 1-D array of integers (any integer dtype), or of floats that are whole
/// numbers. Negative or fractional values are refused.
pub fn read_labels(path: &Path) -> Result<Vec<usize>> {
    let ints: ArrayD<i128> = if let Some(a) = try_read::<i64>(path)? {
        a.mapv(i128::from)
    } else if let Some(a) = try_read::<i32>(path)? {
        a.mapv(i128::from)
    } else if let Some(a) = try_read::<u8>(path)? {
        a.mapv(i128::from)
    } else if let Some(a) = try_read::<u64>(path)? {
        a.mapv(i128::from)
    } else if let Some(a) = try_read::<u32>(path)? {
        a.mapv(i128::from)
    } else if let Some(a) = try_read::<i16>(path)? {
        a.mapv(i128::from)
    } else {
        let floats = read_f64_dyn(path)
            .map_err(|_| Error::file(path, "holds neither integers nor floats: save labels as an integer vector"))?;
        if let Some(v) = floats.iter().find(|v| v.fract() != 0.0 || !v.is_finite()) {
            return Err(Error::file(path, format!("holds the value {v}; labels must be whole numbers 0, 1, 2, …")));
        }
        floats.mapv(|v| v as i128)
    };
    labels_from(path, ints)
}

fn labels_from(path: &Path, a: ArrayD<i128>) -> Result<Vec<usize>> {
    if a.ndim() != 1 && !(a.ndim() == 2 && a.shape()[1] == 1) {
        return Err(Error::file(
            path,
            format!("has shape {:?}; expected a vector of labels, one per example", a.shape()),
        ));
    }
    a.iter()
        .enumerate()
        .map(|(i, &v)| {
            usize::try_from(v)
                .map_err(|_| Error::file(path, format!("label {v} of example {i} is negative; labels are 0, 1, 2, …")))
        })
        .collect()
}

/// Writes a vector atomically: a temporary file beside the target, then a rename, so an
/// interrupted run never leaves a half-written file.
pub fn write_vector(path: &Path, v: &Array1<f64>) -> Result<()> {
    crate::atomic::write_with(path, |file| v.write_npy(file).map_err(|e| e.to_string()))
}

pub fn write_matrix(path: &Path, m: &Array2<f64>) -> Result<()> {
    crate::atomic::write_with(path, |file| m.write_npy(file).map_err(|e| e.to_string()))
}
