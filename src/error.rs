//! The one error type of the library. Every message says what was wrong and, where there is
//! one, what to do about it; the CLI prints it as a single line.

use thiserror::Error;

use crate::model::SpecError;

/// Every error the library returns: one line that says what is wrong and what to do.
#[derive(Debug, Error)]
pub enum Error {
    /// A network spec that cannot describe a network.
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
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A file's error. The path and the message are each made [`one_line`]: underlying errors
    /// (parsers, decoders) may span lines or echo whole inputs, and a person reads one line.
    pub fn file(path: impl AsRef<std::path::Path>, message: impl Into<String>) -> Error {
        Error::File { path: one_line(&path.as_ref().display().to_string()), message: one_line(&message.into()) }
    }
}

/// The longest message [`one_line`] keeps, in characters, before cutting it with "…".
pub const MAX_LINE: usize = 300;

/// `text` as a single line of at most 300 characters (`MAX_LINE`): every run of whitespace
/// (newlines and tabs included) becomes one space, control characters are dropped, and a
/// longer text is cut, ending in "…". For errors of other crates (a TOML parser echoing the
/// offending line, a JPEG decoder's message with a newline in it) before they reach a person.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_LINE * 4));
    let mut chars = 0;
    for word in text.split_whitespace() {
        let word: String = word.chars().filter(|c| !c.is_control()).collect();
        if word.is_empty() {
            continue;
        }
        let sep = usize::from(!out.is_empty());
        let len = word.chars().count();
        if chars + sep + len > MAX_LINE {
            let room = MAX_LINE.saturating_sub(chars + sep + 1);
            if sep == 1 && room > 0 {
                out.push(' ');
            }
            out.extend(word.chars().take(room));
            out.push('…');
            return out;
        }
        if sep == 1 {
            out.push(' ');
        }
        out.push_str(&word);
        chars += sep + len;
    }
    out
}

/// `v` as a message shows a number: at most 5 significant digits, in scientific notation
/// (`4.5e76`, `1.2346e-7`) outside [1e-4, 1e6), trailing zeros dropped; NaN, ±inf and 0 as
/// Rust writes them. Messages that print a cost, a target or a gradient use it, so that a
/// finite number of 77 digits never fills a line.
pub fn short_number(v: f64) -> String {
    if !v.is_finite() || v == 0.0 {
        return format!("{v}");
    }
    let trim = |s: String| -> String {
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
    };
    let a = v.abs();
    if (1e-4..1e6).contains(&a) {
        let decimals = (4 - a.log10().floor() as i32).max(0) as usize;
        return trim(format!("{v:.decimals$}"));
    }
    let s = format!("{v:.4e}");
    let (mantissa, exponent) = s.split_once('e').expect("scientific notation has an e");
    format!("{}e{exponent}", trim(mantissa.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_numbers() {
        use super::short_number;
        assert_eq!(short_number(4.500000016493267e76), "4.5e76");
        assert_eq!(short_number(-3e38), "-3e38");
        assert_eq!(short_number(0.061797985227634696), "0.061798");
        assert_eq!(short_number(1234.5678), "1234.6");
        assert_eq!(short_number(1.23456789e-7), "1.2346e-7");
        assert_eq!(short_number(2.0), "2");
        assert_eq!(short_number(f64::INFINITY), "inf");
        assert!(short_number(f64::NAN).contains("NaN"));
    }

    use super::*;

    #[test]
    fn one_line_collapses_and_cuts() {
        assert_eq!(one_line("  a\n\tb  c\r\n"), "a b c");
        assert_eq!(one_line("x\u{7}y"), "xy");
        let long = "word ".repeat(200);
        let cut = one_line(&long);
        assert_eq!(cut.chars().count(), MAX_LINE, "{cut}");
        assert!(cut.ends_with('…') && !cut.contains('\n'));
        let one_word = "z".repeat(1000);
        assert_eq!(one_line(&one_word).chars().count(), MAX_LINE);
        assert_eq!(one_line(""), "");
    }
}
