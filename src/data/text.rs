//! Text as characters, for character-level language models (MATH.md, "Layers beyond dense":
//! one-hot input per character, a softmax over the vocabulary at every step, bits per
//! character = cost / ln 2).
//!
//! - [`read_text`] reads a UTF-8 file, plain or gzip (inflated under the readers' cap:
//!   [`super::GZ_RATIO`] times the file's size, at least [`super::GZ_MIN_CAP`] bytes); an
//!   empty file, one that is not UTF-8, or one of more distinct characters than a softmax may
//!   have classes is refused in one line.
//! - [`Vocabulary`]: the sorted distinct characters (Unicode scalar values, not bytes) of the
//!   text a model was trained on; stored with the model under `preprocessing.vocabulary` and
//!   read back by [`Vocabulary::from_preprocessing`]. Text with a character outside it is
//!   refused by [`Vocabulary::encode`], naming the character and where it is.
//! - [`CharText::load`]: a file as character ids, the last fraction held out for validation.
//! - Windows of T characters: [`one_hot_windows`] turns windows into an m × (T·V) one-hot
//!   batch (example i, step t, character c at column t·V + c: the sequence layout m × T × n
//!   with n = V) and the m·T next characters to predict (example i, step t at i·T + t).
//!   [`StreamBatches`] cuts training text into `batch` consecutive streams so that minibatch
//!   k + 1 continues minibatch k row by row (truncated BPTT carries the state across);
//!   [`eval_starts`] gives consecutive windows for evaluation.
//!
//! This module reads and encodes text; it knows nothing of networks, backends or the CLI.
//! Sizes are checked before anything is allocated from them.

use std::path::Path;

use ndarray::Array2;

use crate::{Error, Result};

/// The most values a one-hot batch may hold (2³⁰ f32 = 4 GiB): larger requests are refused
/// before allocation. A batch of 32 windows of 64 characters over 73 characters is 149,504.
pub const MAX_ONE_HOT_VALUES: usize = 1 << 30;

/// Reads `path` (plain or gzip, by its first two bytes) as UTF-8 text. Refused, one line
/// naming the file: bytes that are not UTF-8 (with the offset of the first bad one), an empty
/// text, and a `.gz` that inflates beyond the readers' cap.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = super::read_maybe_gz(path)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        Error::file(path, format!("is not UTF-8 text (byte {at} is not valid UTF-8): save the text as UTF-8"))
    })?;
    if text.is_empty() {
        return Err(Error::file(path, "is empty: a character model needs text to learn from"));
    }
    Ok(text)
}

/// The characters a character model knows: sorted, distinct Unicode scalar values; the
/// position of a character is its id (its one-hot column and its softmax class).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocabulary {
    chars: Vec<char>,
}

/// The key of the vocabulary in a model's `preprocessing` metadata.
pub const VOCABULARY_KEY: &str = "vocabulary";

impl Vocabulary {
    /// The distinct characters of `text`, sorted. Refused: an empty text, a text of one
    /// distinct character (nothing to predict), and more than [`super::MAX_CLASSES`] distinct
    /// characters (the most classes a softmax may have).
    pub fn from_text(text: &str) -> Result<Vocabulary> {
        let mut seen = std::collections::BTreeSet::new();
        for c in text.chars() {
            seen.insert(c);
            if seen.len() > super::MAX_CLASSES {
                return Err(Error::Data(format!(
                    "the text has more than {} distinct characters, the most classes a softmax may have: \
                     a character model is for texts of a modest alphabet",
                    super::MAX_CLASSES
                )));
            }
        }
        Vocabulary::new(seen.into_iter().collect())
    }

    /// A vocabulary of exactly these characters, which must be sorted, distinct, and at least
    /// two (a stored vocabulary is checked this way when a model is loaded).
    pub fn new(chars: Vec<char>) -> Result<Vocabulary> {
        match chars.len() {
            0 => return Err(Error::Data("the text holds no characters: a character model needs text".into())),
            1 => {
                return Err(Error::Data(format!(
                    "the text has one distinct character ({}): a language model needs at least two to tell apart",
                    show(chars[0])
                )));
            }
            n if n > super::MAX_CLASSES => {
                return Err(Error::Data(format!(
                    "a vocabulary of {n} characters is more than {}, the most classes a softmax may have",
                    super::MAX_CLASSES
                )));
            }
            _ => {}
        }
        if let Some(w) = chars.windows(2).find(|w| w[0] >= w[1]) {
            return Err(Error::Data(format!(
                "the vocabulary is not sorted and distinct ({} before {}): it is damaged",
                show(w[0]),
                show(w[1])
            )));
        }
        Ok(Vocabulary { chars })
    }

    /// V, the number of characters (one-hot width and softmax classes).
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Always false: a vocabulary has at least two characters.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters, in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The id of `c`, if the vocabulary has it.
    pub fn id(&self, c: char) -> Option<u32> {
        self.chars.binary_search(&c).ok().map(|i| i as u32)
    }

    /// The ids of the characters of `text`. A character outside the vocabulary is refused in
    /// one line naming it, its position (counted in characters from 0) and `what` the text is
    /// (`the held-out text`, `--prime`).
    pub fn encode(&self, text: &str, what: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len());
        for (i, c) in text.chars().enumerate() {
            match self.id(c) {
                Some(id) => ids.push(id),
                None => {
                    return Err(Error::Data(format!(
                        "{what} has the character {} at position {i}, which the model never saw in training \
                         (its vocabulary has {} characters): use only characters of the training text",
                        show(c),
                        self.len()
                    )));
                }
            }
        }
        Ok(ids)
    }

    /// The text of `ids`; ids beyond the vocabulary are a caller's bug and panic.
    pub fn decode(&self, ids: &[u32]) -> String {
        ids.iter().map(|&i| self.chars[i as usize]).collect()
    }

    /// The vocabulary as stored in a model's metadata: a JSON string of its characters in id
    /// order (exact for every scalar value; JSON escapes the control characters).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::String(self.chars.iter().collect())
    }

    /// The vocabulary stored under `preprocessing.vocabulary` ([`VOCABULARY_KEY`]), if any;
    /// a stored value that is not a sorted string of distinct characters is refused.
    pub fn from_preprocessing(preprocessing: &serde_json::Value) -> Result<Option<Vocabulary>> {
        match preprocessing.get(VOCABULARY_KEY) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Vocabulary::new(s.chars().collect())
                .map(Some)
                .map_err(|e| Error::Data(format!("the model's stored vocabulary is unusable: {e}"))),
            Some(_) => Err(Error::Data(
                "the model's stored vocabulary is not a string of characters: the checkpoint is damaged".into(),
            )),
        }
    }
}

/// A character as messages show it: `'a'`, or its code point for the invisible ones
/// (`U+000A`), both for the rest (`'é' (U+00E9)`).
pub fn show(c: char) -> String {
    if c.is_control() || c.is_whitespace() {
        format!("U+{:04X}", c as u32)
    } else if c.is_ascii() {
        format!("'{c}'")
    } else {
        format!("'{c}' (U+{:04X})", c as u32)
    }
}

/// A text file as character ids: the vocabulary of the whole file (so the held-out part never
/// meets an unseen character), the first part for training and the last `holdout` fraction
/// for validation (MATH.md: report bits per character on held-out text).
#[derive(Clone, Debug)]
pub struct CharText {
    /// The distinct characters of the whole file and their ids.
    pub vocabulary: Vocabulary,
    /// Ids of the training text (the first 1 − holdout of the characters).
    pub train: Vec<u32>,
    /// Ids of the held-out text (the last round(N · holdout) characters; empty for 0).
    pub validation: Vec<u32>,
    /// What was loaded, for people.
    pub description: String,
}

impl CharText {
    /// Reads `path` ([`read_text`]) and holds out its last `holdout` fraction (0 ≤ holdout
    /// < 1; the default of the CLI is 0.1). Refused: a fraction out of range, and a split
    /// that leaves either side without a character.
    pub fn load(path: &Path, holdout: f64) -> Result<CharText> {
        let text = read_text(path)?;
        CharText::from_text(&text, holdout, &path.display().to_string())
    }

    /// As [`CharText::load`], for text in memory; `name` says where it came from.
    pub fn from_text(text: &str, holdout: f64, name: &str) -> Result<CharText> {
        if !(0.0..1.0).contains(&holdout) {
            return Err(Error::Data(format!("a held-out fraction of {holdout} must be in [0, 1)")));
        }
        let vocabulary = Vocabulary::from_text(text).map_err(|e| Error::Data(format!("{name}: {e}")))?;
        let mut ids = vocabulary.encode(text, name)?;
        let n = ids.len();
        let held = (n as f64 * holdout).round() as usize;
        if holdout > 0.0 && (held == 0 || held == n) {
            return Err(Error::Data(format!(
                "{name}: holding out {holdout} of its {n} characters leaves one side empty: give a longer text"
            )));
        }
        let validation = ids.split_off(n - held);
        let description = format!(
            "{name}: {n} characters, {} distinct; the first {} for training, the last {} held out",
            vocabulary.len(),
            ids.len(),
            validation.len()
        );
        Ok(CharText { vocabulary, train: ids, validation, description })
    }
}

/// Checks that `ids` (a text of N characters) holds at least one window of `steps`
/// characters and the one after it (N ≥ T + 1); `what` names the text in the message.
pub fn check_window(len: usize, steps: usize, what: &str) -> Result<()> {
    if steps == 0 {
        return Err(Error::Data("a window of 0 characters (--bptt 0) holds nothing: give T ≥ 1".into()));
    }
    if len < steps.saturating_add(1) {
        return Err(Error::Data(format!(
            "{what} has {len} characters, too few for one window of {steps} (--bptt {steps}) and the character \
             after it: give a longer text or a smaller --bptt"
        )));
    }
    Ok(())
}

/// The windows at `starts` of `steps` characters each, one-hot over `vocab` characters:
/// (x, next) with x of m × (T·V) (row i, step t, character c at column t·V + c) and `next`
/// the m·T characters that follow each input character (row i, step t at i·T + t), the
/// classes a per-step softmax predicts. Every start must leave T + 1 characters
/// (`start + T < ids.len()`). The size m·T·V is checked against [`MAX_ONE_HOT_VALUES`]
/// before anything is allocated.
pub fn one_hot_windows(ids: &[u32], starts: &[usize], steps: usize, vocab: usize) -> Result<(Array2<f32>, Vec<usize>)> {
    let m = starts.len();
    let values = m.checked_mul(steps).and_then(|v| v.checked_mul(vocab));
    if values.is_none_or(|v| v > MAX_ONE_HOT_VALUES) {
        return Err(Error::Data(format!(
            "{m} windows of {steps} characters over {vocab} characters is more than {MAX_ONE_HOT_VALUES} one-hot \
             values: use a smaller batch or --bptt"
        )));
    }
    if let Some(&s) = starts.iter().find(|&&s| s.checked_add(steps).is_none_or(|end| end >= ids.len())) {
        return Err(Error::Data(format!(
            "a window of {steps} characters at {s} runs past the text's {} characters",
            ids.len()
        )));
    }
    let mut x = Array2::<f32>::zeros((m, steps * vocab));
    let mut next = Vec::with_capacity(m * steps);
    for (i, &s) in starts.iter().enumerate() {
        let mut row = x.row_mut(i);
        for t in 0..steps {
            let (c, after) = (ids[s + t] as usize, ids[s + t + 1] as usize);
            if let Some(bad) = [c, after].into_iter().find(|&id| id >= vocab) {
                return Err(Error::Data(format!("character id {bad} is outside a vocabulary of {vocab}")));
            }
            row[t * vocab + c] = 1.0;
            next.push(after);
        }
    }
    Ok((x, next))
}

/// The starts of consecutive windows of `steps` characters for evaluation: 0, T, 2T, … as
/// long as a whole window and the character after it fit (the last N − 1 − W·T characters,
/// fewer than T, are left out; [`eval_starts`]' caller says so). Each window is meant to be
/// run from a zero state.
pub fn eval_starts(len: usize, steps: usize, what: &str) -> Result<Vec<usize>> {
    check_window(len, steps, what)?;
    Ok((0..(len - 1) / steps).map(|w| w * steps).collect())
}

/// Training text cut for truncated BPTT with carried state (as PyTorch's word-language-model
/// example batchifies): `batch` streams of L = ⌊(N − 1)/batch⌋ consecutive characters, stream
/// j starting at j·L; minibatch k holds window k (characters j·L + k·T … j·L + k·T + T − 1) of
/// every stream, so row j of minibatch k + 1 continues row j of minibatch k. An epoch is
/// ⌊L/T⌋ minibatches; the last L mod T characters of each stream are not seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamBatches {
    /// Rows per minibatch (streams).
    pub batch: usize,
    /// Characters per window, T.
    pub steps: usize,
    /// Characters per stream, L.
    pub stream_len: usize,
}

impl StreamBatches {
    /// Streams over a text of `len` characters. Refused: a batch or T of 0, and a text too
    /// short for one window per stream (N − 1 < batch·T).
    pub fn new(len: usize, batch: usize, steps: usize) -> Result<StreamBatches> {
        if batch == 0 {
            return Err(Error::Data("a batch of 0 streams holds nothing: give --batch-size ≥ 1".into()));
        }
        check_window(len, steps, "the training text")?;
        let stream_len = (len - 1) / batch;
        if stream_len < steps {
            return Err(Error::Data(format!(
                "the training text has {len} characters, too few for {batch} streams of at least one window of \
                 {steps} characters (--bptt {steps}): give a smaller --batch-size or --bptt"
            )));
        }
        Ok(StreamBatches { batch, steps, stream_len })
    }

    /// Minibatches per epoch, ⌊L/T⌋.
    pub fn len(&self) -> usize {
        self.stream_len / self.steps
    }

    /// Always false: [`StreamBatches::new`] refuses texts without a window per stream.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The window starts of minibatch `k` (< [`StreamBatches::len`]), one per stream.
    pub fn starts(&self, k: usize) -> Vec<usize> {
        (0..self.batch).map(|j| j * self.stream_len + k * self.steps).collect()
    }
}

/// The empirical entropy of the characters `ids` in bits per character, −Σ p log₂ p over
/// their frequencies: what a model that knows only how often each character occurs (a
/// unigram model) achieves on the same text; a language model should do better.
pub fn unigram_entropy_bits(ids: &[u32]) -> f64 {
    let mut counts = std::collections::HashMap::<u32, usize>::new();
    for &c in ids {
        *counts.entry(c).or_default() += 1;
    }
    let n = ids.len() as f64;
    -counts.values().map(|&k| k as f64 / n).map(|p| p * p.log2()).sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_sorted_by_scalar_value() {
        let v = Vocabulary::from_text("héllo\nwörld").unwrap();
        assert_eq!(v.chars(), &['\n', 'd', 'h', 'l', 'o', 'r', 'w', 'é', 'ö']);
        let ids = v.encode("hé\n", "t").unwrap();
        assert_eq!(ids, vec![2, 7, 0]);
        assert_eq!(v.decode(&ids), "hé\n");
        let e = v.encode("hx", "--prime").unwrap_err().to_string();
        assert!(e.contains("'x'") && e.contains("position 1") && e.contains("--prime"), "{e}");
    }

    #[test]
    fn windows_one_hot_and_next() {
        let ids = [0u32, 1, 2, 0, 1];
        let (x, next) = one_hot_windows(&ids, &[0, 2], 2, 3).unwrap();
        assert_eq!(x.shape(), &[2, 6]);
        assert_eq!(x.row(0).to_vec(), vec![1., 0., 0., 0., 1., 0.]);
        assert_eq!(x.row(1).to_vec(), vec![0., 0., 1., 1., 0., 0.]);
        assert_eq!(next, vec![1, 2, 0, 1]);
        assert!(one_hot_windows(&ids, &[3], 2, 3).is_err());
        assert!(one_hot_windows(&ids, &[0], 2, 2).is_err());
    }

    #[test]
    fn streams_continue_row_by_row() {
        let s = StreamBatches::new(21, 2, 3).unwrap();
        assert_eq!((s.stream_len, s.len()), (10, 3));
        assert_eq!(s.starts(0), vec![0, 10]);
        assert_eq!(s.starts(1), vec![3, 13]);
        assert_eq!(s.starts(2), vec![6, 16]);
        assert!(StreamBatches::new(7, 2, 4).is_err());
        assert_eq!(eval_starts(10, 3, "t").unwrap(), vec![0, 3, 6]);
        assert_eq!(eval_starts(9, 3, "t").unwrap(), vec![0, 3]);
        assert!(eval_starts(3, 3, "t").is_err());
    }
}
