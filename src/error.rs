//! The one error type of the library. Every message says what was wrong and, where there is
//! one, what to do about it; the CLI prints it as a single line.

use thiserror::Error;

use crate::model::SpecError;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Arrays whose sizes do not fit the network or each other.
    #[error("{0}")]
    Shape(String),
    /// Values that cannot be used: NaN, labels out of range, an empty set.
    #[error("{0}")]
    Data(String),
    /// No usable GPU, a device error, or work beyond the device's limits.
    #[error("GPU: {0}")]
    Gpu(String),
    /// Training diverged: a cost or gradient became NaN or infinite, or the cost exploded or
    /// rose without recovery ([`crate::optim::Divergence`]). θ was put back to the best point
    /// seen, which the report names: save it, then fail.
    #[error("{0}")]
    Diverged(Box<crate::optim::Diverged>),
    /// A file that could not be read or written, or is not in the expected format.
    #[error("{path}: {message}")]
    File { path: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn file(path: impl AsRef<std::path::Path>, message: impl Into<String>) -> Error {
        Error::File { path: path.as_ref().display().to_string(), message: message.into() }
    }
}
