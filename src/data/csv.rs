//! Numbers in CSV form, plain or gzip-compressed: one example per line, one column of which is
//! its class label (the last by default). The separator is a comma, or else a semicolon, tab
//! or spaces, judged from the first line. A first line with no number in it is a header and is
//! skipped. Blank lines and lines starting with `#` are skipped. Errors name the line and
//! column (both counted from 1, as an editor shows them). No quoting in values: the feature
//! columns hold numbers only.
//!
//! Class labels are whole numbers (`3`, `-1`, `7.0`) or names (`setosa`, also `"setosa"` as R
//! writes it), mapped to classes 0..k−1 sorted as scikit-learn's `LabelEncoder` sorts them
//! ([`super::encode_labels`]); the names are kept with the data, and with a model trained on it.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ndarray::Array2;

use super::{ClassLabels, RawLabel, check_classes, encode_labels, read_maybe_gz};
use crate::{Error, Result};

/// Which column of a CSV file holds the class label.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LabelColumn {
    /// The last column (the default).
    #[default]
    Last,
    /// The first column.
    First,
    /// Column number n, counted from 1.
    Number(usize),
    /// No labels: every column is a feature.
    None,
}

impl FromStr for LabelColumn {
    type Err = Error;

    fn from_str(s: &str) -> Result<LabelColumn> {
        match s.trim().to_ascii_lowercase().as_str() {
            "last" => Ok(LabelColumn::Last),
            "first" => Ok(LabelColumn::First),
            "none" => Ok(LabelColumn::None),
            other => match other.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(LabelColumn::Number(n)),
                _ => Err(Error::Data(format!(
                    "unknown label column `{s}`: use last, first, none or a column number counted from 1"
                ))),
            },
        }
    }
}

impl fmt::Display for LabelColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelColumn::Last => f.write_str("last"),
            LabelColumn::First => f.write_str("first"),
            LabelColumn::Number(n) => write!(f, "{n}"),
            LabelColumn::None => f.write_str("none"),
        }
    }
}

#[derive(Clone, Copy)]
enum Separator {
    Char(char),
    Whitespace,
}

impl Separator {
    fn of(line: &str) -> Separator {
        [',', ';', '\t'].into_iter().find(|&c| line.contains(c)).map_or(Separator::Whitespace, Separator::Char)
    }

    fn split<'a>(&self, line: &'a str) -> Vec<&'a str> {
        match *self {
            Separator::Char(c) => line.split(c).map(str::trim).collect(),
            Separator::Whitespace => line.split_whitespace().collect(),
        }
    }
}

/// Reads a CSV file (plain or `.gz`): the feature columns as an m × n matrix and, unless
/// `label` is [`LabelColumn::None`], the labels mapped to classes ([`super::encode_labels`]).
pub fn read_csv(path: &Path, label: LabelColumn) -> Result<(Array2<f32>, Option<ClassLabels>)> {
    let bytes = read_maybe_gz(path)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| Error::file(path, format!("is not a text file ({e}): expected numbers separated by commas")))?;
    parse_csv(text, label).map_err(|message| Error::file(path, message))
}

/// Reads a file of class labels (plain or `.gz`), as `--labels csv:FILE` names it: one label
/// per line (a single column; blank lines and `#` lines skipped), whole numbers or names,
/// mapped to classes as [`super::encode_labels`] maps them. When every label but the first
/// line's is a number, that first line is a header and is skipped (a column name such as
/// `label`); labels that are names take no header.
///
/// Errors ([`Error::File`], one line naming the line): a line of more than one column, an
/// empty file, labels that cannot be one classifier's ([`super::check_classes`]).
pub fn read_labels(path: &Path) -> Result<ClassLabels> {
    let bytes = read_maybe_gz(path)?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| Error::file(path, format!("is not a text file ({e}): expected one label per line")))?;
    parse_labels(text).map_err(|message| Error::file(path, message))
}

/// The parser behind [`read_labels`]; errors are messages without the file name.
pub fn parse_labels(text: &str) -> Result<ClassLabels, String> {
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if lines.is_empty() {
        return Err("holds no labels: expected one label per line".into());
    }
    let mut raw = Vec::with_capacity(lines.len());
    for &(line_no, line) in &lines {
        let fields = Separator::of(line).split(line);
        if fields.len() != 1 {
            return Err(format!(
                "line {line_no} has {} columns: a labels file holds one label per line (for a label column of a data file, use --data csv:FILE --label-column)",
                fields.len()
            ));
        }
        raw.push(raw_label(fields[0]).map_err(|m| format!("line {line_no}: {m}"))?);
    }
    let is_number = |r: &RawLabel| matches!(r, RawLabel::Whole(_));
    if raw.len() > 1 && !is_number(&raw[0]) && raw[1..].iter().all(is_number) {
        // A header such as `label` above class numbers.
        raw.remove(0);
    }
    let encoded = encode_labels(raw);
    check_classes(&encoded)?;
    Ok(encoded)
}

/// The parser behind [`read_csv`]; errors are messages without the file name.
pub fn parse_csv(text: &str, label: LabelColumn) -> Result<(Array2<f32>, Option<ClassLabels>), String> {
    let mut lines =
        text.lines().enumerate().map(|(i, l)| (i + 1, l.trim())).filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let Some((first_no, first)) = lines.next() else {
        return Err("holds no data: expected one example per line".into());
    };
    let separator = Separator::of(first);
    let first_fields = separator.split(first);
    let is_header = first_fields.iter().all(|f| f.parse::<f64>().is_err());
    let mut data_lines: Box<dyn Iterator<Item = (usize, &str)>> =
        if is_header { Box::new(lines) } else { Box::new(std::iter::once((first_no, first)).chain(lines)) };

    let mut values = Vec::new();
    let mut labels = Vec::new();
    let mut shape: Option<(usize, usize)> = None; // (columns, first data line)
    let mut rows = 0;
    for (line_no, line) in &mut data_lines {
        let fields = separator.split(line);
        let (columns, label_at) = match shape {
            Some((columns, first_line)) => {
                if fields.len() != columns {
                    return Err(format!(
                        "line {line_no} has {} columns but line {first_line} has {columns}: every row needs the same number of values",
                        fields.len()
                    ));
                }
                (columns, label_index(label, columns))
            }
            None => {
                let columns = fields.len();
                let label_at = label_index(label, columns);
                if let Some(at) = label_at.filter(|&a| a >= columns) {
                    return Err(format!(
                        "the label column is {} but line {line_no} has only {columns} columns",
                        at + 1
                    ));
                }
                if label_at.is_some() && columns < 2 {
                    return Err(format!(
                        "line {line_no} has {columns} column: with a label column there must be at least one value besides it"
                    ));
                }
                shape = Some((columns, line_no));
                (columns, label_at)
            }
        };
        debug_assert_eq!(fields.len(), columns);
        for (c, field) in fields.iter().enumerate() {
            let at = || format!("line {line_no}, column {}", c + 1);
            if Some(c) == label_at {
                labels.push(raw_label(field).map_err(|m| format!("{}: {m}", at()))?);
                continue;
            }
            let v: f64 = field.parse().map_err(|_| {
                if field.is_empty() {
                    format!("{}: the value is missing", at())
                } else {
                    format!("{}: `{field}` is not a number", at())
                }
            })?;
            if !v.is_finite() {
                return Err(format!("{}: `{field}` is not a finite number; remove or replace it", at()));
            }
            if v.abs() > f64::from(f32::MAX) {
                return Err(format!(
                    "{}: `{field}` is beyond float32's range (±3.4e38), in which wgnn keeps its data; rescale the column",
                    at()
                ));
            }
            values.push(v as f32);
        }
        rows += 1;
    }
    let Some((columns, _)) = shape else {
        return Err("holds a header line but no data rows".into());
    };
    let labels = match label_index(label, columns) {
        Some(at) => {
            let encoded = encode_labels(labels);
            check_classes(&encoded).map_err(|m| format!("the labels (column {}): {m}", at + 1))?;
            Some(encoded)
        }
        None => None,
    };
    let features = columns - usize::from(label_index(label, columns).is_some());
    let x = Array2::from_shape_vec((rows, features), values).expect("every row has the same width");
    Ok((x, labels))
}

/// A label field: a whole number (exactly: `3`, `-1`, `7.0`, `0.3e1`), or a name when it is
/// no number at all (`setosa`). A number with a fraction (`1.5`, `1e-400`) or beyond ±2⁶³ is
/// refused: it is a value, not a class.
fn raw_label(field: &str) -> Result<RawLabel, String> {
    if field.is_empty() {
        return Err("the label is missing".into());
    }
    if field.parse::<f64>().is_err() {
        let unquoted = field.strip_prefix('"').and_then(|f| f.strip_suffix('"')).map(|f| f.replace("\"\"", "\""));
        return Ok(RawLabel::Name(unquoted.unwrap_or_else(|| field.to_string())));
    }
    let (negative, digits) = match field.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, field),
    };
    // `-+2` and `--2` are no numbers; `+2` is.
    let whole =
        if negative { exact_whole(digits).filter(|_| !digits.starts_with(['-', '+'])) } else { exact_whole(field) };
    match whole {
        Some(n) if n <= i64::MAX as u128 => Ok(RawLabel::Whole(if negative { -(n as i64) } else { n as i64 })),
        Some(_) => {
            Err(format!("the label `{field}` is beyond ±2⁶³: labels are classes, written as whole numbers or names"))
        }
        None => Err(format!(
            "the label `{field}` is not a class number: labels are whole numbers (0, 3, -1) or names (setosa); for real-valued targets use --targets"
        )),
    }
}

/// The whole number a decimal `text` denotes exactly (`3`, `+3`, `3.0`, `3e0`, `0.3e1`,
/// `-0`), saturating at `u128::MAX`; `None` when it denotes no whole number ≥ 0 (`3.5`,
/// `-1`, `1e-400`, `nan`). Parsing as f64 first would round: `1e-400` would become 0 and
/// `2.0000000000000000001` would become 2.
pub(crate) fn exact_whole(text: &str) -> Option<u128> {
    let (negative, text) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(e) => (&text[..e], text[e + 1..].parse::<i64>().ok()?),
        None => (text, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all_digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if whole.len() + fraction.len() == 0 || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    // value = digits × 10^scale
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return Some(0);
    }
    if negative {
        return None;
    }
    let scale = exponent.checked_sub(i64::try_from(fraction.len()).ok()?)?;
    let digits = if scale < 0 {
        let cut = usize::try_from(scale.unsigned_abs()).ok()?;
        let kept = digits.len().checked_sub(cut)?;
        if !digits[kept..].bytes().all(|b| b == b'0') {
            return None;
        }
        &digits[..kept]
    } else {
        digits
    };
    let zeros = usize::try_from(scale.max(0)).ok()?;
    if digits.len().saturating_add(zeros) > 38 {
        return Some(u128::MAX);
    }
    let value: u128 = digits.parse().ok()?;
    Some(value * 10u128.pow(zeros as u32))
}

/// The 0-based label column for rows of `columns` values; out of range is left for the caller.
pub(crate) fn label_index(label: LabelColumn, columns: usize) -> Option<usize> {
    match label {
        LabelColumn::Last => Some(columns.saturating_sub(1)),
        LabelColumn::First => Some(0),
        LabelColumn::Number(n) => Some(n.saturating_sub(1)),
        LabelColumn::None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values_labels_and_header() {
        let text = "a,b,label\n1, 2 ,3\n\n# comment\n4.5,-6,0\n";
        let (x, labels) = parse_csv(text, LabelColumn::Last).unwrap();
        assert_eq!(x, ndarray::array![[1.0, 2.0], [4.5, -6.0]]);
        // Labels are mapped to classes, sorted: 0 is class 0, 3 class 1.
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(labels, Some(ClassLabels { labels: vec![1, 0], classes: names(&["0", "3"]) }));
        let (x, labels) = parse_csv("7 1 2\n8 3 4\n", LabelColumn::First).unwrap();
        assert_eq!(x, ndarray::array![[1.0, 2.0], [3.0, 4.0]]);
        assert_eq!(labels.unwrap().classes, names(&["7", "8"]));
        let (x, labels) = parse_csv("1;2\n3;4\n", LabelColumn::None).unwrap();
        assert_eq!(x.dim(), (2, 2));
        assert_eq!(labels, None);
        let (x, labels) = parse_csv("1,9,2\n3,8,4\n", LabelColumn::Number(2)).unwrap();
        assert_eq!(x, ndarray::array![[1.0, 2.0], [3.0, 4.0]]);
        assert_eq!(labels, Some(ClassLabels { labels: vec![1, 0], classes: names(&["8", "9"]) }));
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse_csv("1,2,3\n4,x,6\n", LabelColumn::Last).unwrap_err();
        assert!(e.contains("line 2, column 2") && e.contains("`x` is not a number"), "{e}");
        let e = parse_csv("1,2,3\n4,5\n", LabelColumn::Last).unwrap_err();
        assert!(e.contains("line 2 has 2 columns but line 1 has 3"), "{e}");
        let e = parse_csv("1,2,3.5\n", LabelColumn::Last).unwrap_err();
        assert!(e.contains("line 1, column 3") && e.contains("label"), "{e}");
        let e = parse_csv("1,2,3\n1,nan,3\n", LabelColumn::Last).unwrap_err();
        assert!(e.contains("line 2, column 2") && e.contains("finite"), "{e}");
        let e = parse_csv("1,,3\n", LabelColumn::Last).unwrap_err();
        assert!(e.contains("line 1, column 2: the value is missing"), "{e}");
        assert!(parse_csv("a,b\n", LabelColumn::Last).unwrap_err().contains("no data rows"));
        assert!(parse_csv("\n\n", LabelColumn::Last).unwrap_err().contains("no data"));
        assert!(parse_csv("1,2\n", LabelColumn::Number(5)).unwrap_err().contains("label column is 5"));
    }

    #[test]
    fn label_column_parses() {
        assert_eq!("LAST".parse::<LabelColumn>().unwrap(), LabelColumn::Last);
        assert_eq!("3".parse::<LabelColumn>().unwrap(), LabelColumn::Number(3));
        assert!("0".parse::<LabelColumn>().is_err());
        assert!("middle".parse::<LabelColumn>().is_err());
    }
}
