//! Sequence data (issue 16 §1): `.npy` sequences m × T × n with labels or per-step targets,
//! MNIST read row by row, and text as characters — shapes, the layout a recurrent layer reads
//! (row i, step t, feature j at column t·n + j), the vocabulary's round trip through a saved
//! model, the held-out split, and one clear refusal for each kind of bad input.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::npy_bytes;
use ndarray::{Array1, Array3};
use ndarray_npy::WriteNpyExt;
use wgnn::checkpoint::{Checkpoint, Metadata};
use wgnn::data::sequence::{self, SequenceShape};
use wgnn::data::text::{self, CharText, StreamBatches, Vocabulary};

fn write_npy<A: WriteNpyExt>(dir: &Path, name: &str, a: &A) -> PathBuf {
    let path = dir.join(name);
    a.write_npy(std::fs::File::create(&path).unwrap()).unwrap();
    path
}

fn gzip_to(path: &Path, bytes: &[u8]) {
    let mut e = flate2::write::GzEncoder::new(std::fs::File::create(path).unwrap(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap();
}

fn err_line(e: wgnn::Error) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "not one line: {s}");
    s
}

// ---------------------------------------------------------------------------------------------
// .npy sequences

#[test]
fn npy_sequences_keep_step_after_step_with_labels_and_targets() {
    let dir = tempfile::tempdir().unwrap();
    let (m, t, n, k) = (4, 3, 2, 5);
    let a = Array3::<f64>::from_shape_fn((m, t, n), |(i, s, j)| (100 * i + 10 * s + j) as f64);
    let y = Array3::<f32>::from_shape_fn((m, t, k), |(i, s, j)| (i * 1000 + s * 10 + j) as f32 / 7.0);
    let x_path = write_npy(dir.path(), "x.npy", &a);
    let l_path = write_npy(dir.path(), "l.npy", &Array1::from(vec![0i64, 2, 1, 2]));
    let y_path = write_npy(dir.path(), "y.npy", &y);
    let seq = sequence::load_npy_sequences(&x_path, Some(&l_path), Some(&y_path)).unwrap();
    assert_eq!(seq.shape, SequenceShape { steps: t, features: n });
    assert_eq!(seq.data.x.dim(), (m, t * n));
    for i in 0..m {
        for s in 0..t {
            for j in 0..n {
                assert_eq!(seq.data.x[[i, s * n + j]], a[[i, s, j]] as f32, "x[{i}, {s}, {j}]");
            }
            for j in 0..k {
                assert_eq!(seq.data.targets.as_ref().unwrap()[[i, s * k + j]], y[[i, s, j]], "y[{i}, {s}, {j}]");
            }
        }
    }
    assert_eq!(seq.data.labels.as_deref(), Some(&[0, 2, 1, 2][..]));
    assert_eq!(seq.targets_per_step, Some(k));
    assert!(seq.data.description.contains("4 sequences of 3 steps of 2 values"), "{}", seq.data.description);
}

/// Labels m × T (uint8 here): kept flat, sequence i's step t at i·T + t, and flagged per
/// step; the rows a split or `--limit` takes keep their T labels each; an m × 1 column stays
/// one label per sequence.
#[test]
fn npy_sequences_take_a_label_at_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let (m, t) = (4, 3);
    let x_path = write_npy(dir.path(), "x.npy", &Array3::<f32>::ones((m, t, 2)));
    let labels = ndarray::Array2::<u8>::from_shape_fn((m, t), |(i, s)| ((i + s) % 3) as u8);
    let l_path = write_npy(dir.path(), "l.npy", &labels);
    let seq = sequence::load_npy_sequences(&x_path, Some(&l_path), None).unwrap();
    assert!(seq.labels_per_step);
    let flat: Vec<usize> = labels.iter().map(|&v| usize::from(v)).collect();
    assert_eq!(seq.data.labels.as_deref(), Some(&flat[..]));
    assert_eq!(seq.data.labels_per_example(), t);
    assert!(seq.data.description.contains("with labels at every step"), "{}", seq.data.description);
    let picked = seq.data.rows(&[2, 0]);
    assert_eq!(picked.labels.unwrap(), [&flat[6..9], &flat[0..3]].concat());
    assert_eq!(seq.data.clone().take(3).labels.unwrap(), flat[..9].to_vec());
    let column =
        write_npy(dir.path(), "c.npy", &ndarray::Array2::<i64>::from_shape_fn((m, 1), |(i, _)| (i % 2) as i64));
    let seq = sequence::load_npy_sequences(&x_path, Some(&column), None).unwrap();
    assert!(!seq.labels_per_step && seq.data.labels_per_example() == 1);
    assert_eq!(seq.data.labels.as_deref(), Some(&[0, 1, 0, 1][..]));
}

#[test]
fn npy_sequences_refuse_bad_input_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_npy(dir.path(), "x.npy", &Array3::<f32>::ones((4, 3, 2)));
    // A 2-D array where m × T × n is needed: the advice names the reshape.
    let flat = write_npy(dir.path(), "flat.npy", &ndarray::Array2::<f32>::ones((4, 6)));
    let e = err_line(sequence::load_npy_sequences(&flat, None, None).unwrap_err());
    assert!(e.contains("flat.npy") && e.contains("(4, 6)") && e.contains("need 3") && e.contains("(4, 6, 1)"), "{e}");
    // Ragged sequences: NumPy saves them as an array of Python objects.
    let ragged = dir.path().join("ragged.npy");
    std::fs::write(&ragged, npy_bytes("|O", "(2,)", &[0x80, 0x02, b'.'])).unwrap();
    let e = err_line(sequence::load_npy_sequences(&ragged, None, None).unwrap_err());
    assert!(e.contains("ragged.npy") && e.contains("ragged") && e.contains("same T steps"), "{e}");
    // Per-step targets of another T.
    let y = write_npy(dir.path(), "y.npy", &Array3::<f32>::ones((4, 2, 1)));
    let e = err_line(sequence::load_npy_sequences(&good, None, Some(&y)).unwrap_err());
    assert!(e.contains("4 sequences of 2 steps") && e.contains("4 sequences of 3 steps"), "{e}");
    // Labels of another m.
    let l = write_npy(dir.path(), "l.npy", &Array1::from(vec![0u8, 1, 1]));
    let e = err_line(sequence::load_npy_sequences(&good, Some(&l), None).unwrap_err());
    assert!(e.contains("3 labels") && e.contains("4 sequences"), "{e}");
    // An empty axis and a NaN.
    let empty = write_npy(dir.path(), "e.npy", &Array3::<f32>::ones((4, 0, 2)));
    let e = err_line(sequence::load_npy_sequences(&empty, None, None).unwrap_err());
    assert!(e.contains("(4, 0, 2)") && e.contains("length 0"), "{e}");
    let mut nan = Array3::<f64>::ones((2, 2, 2));
    nan[[1, 0, 1]] = f64::NAN;
    let nan = write_npy(dir.path(), "nan.npy", &nan);
    let e = err_line(sequence::load_npy_sequences(&nan, None, None).unwrap_err());
    assert!(e.contains("[1, 0, 1]") && e.contains("finite"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// MNIST row by row

#[test]
fn mnist_rows_are_28_steps_of_28_pixels() {
    use wgnn::data::{DataSource, LoadOptions};
    let dir = common::data_dir().join("mnist");
    let options = LoadOptions { limit: Some(3), ..LoadOptions::default() };
    let images = DataSource::Mnist(dir).load(&options).unwrap();
    let seq = sequence::mnist_rows(images.clone()).unwrap();
    assert_eq!(seq.shape, SequenceShape { steps: 28, features: 28 });
    assert_eq!(seq.data.x, images.x, "row-major pixels are step after step");
    assert_eq!(seq.data.labels, images.labels);
    // Step 14 of image 0 is its 15th pixel row.
    let (h, w) = images.image_shape.unwrap();
    assert_eq!((h, w), (28, 28));
    assert_eq!(seq.data.x.row(0).slice(ndarray::s![14 * 28..15 * 28]), images.x.row(0).slice(ndarray::s![392..420]));
    // Data without pictures cannot be read row by row.
    let mut flat = images;
    flat.image_shape = None;
    let e = err_line(sequence::mnist_rows(flat).unwrap_err());
    assert!(e.contains("--sequence rows") && e.contains("holds no images"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Text

#[test]
fn text_gz_split_and_vocabulary_of_scalar_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.txt.gz");
    // 20 characters, 3 of them beyond ASCII (2 bytes each in UTF-8).
    let body = "naïve café, ñ abcabc";
    assert_eq!(body.chars().count(), 20);
    gzip_to(&path, body.as_bytes());
    let t = CharText::load(&path, 0.1).unwrap();
    assert_eq!((t.train.len(), t.validation.len()), (18, 2), "the last round(20 · 0.1) = 2 held out");
    assert_eq!(t.vocabulary.decode(&t.validation), "bc");
    assert_eq!(t.vocabulary.decode(&t.train), "naïve café, ñ abca");
    let chars = t.vocabulary.chars();
    assert_eq!(chars.len(), 12, "space , a b c e f n v é ï ñ");
    assert!(chars.windows(2).all(|w| w[0] < w[1]) && chars.contains(&'ï') && chars.contains(&'ñ'));
    assert_eq!(t.vocabulary.id(' '), Some(0));
    assert_eq!(t.vocabulary.id('ñ'), Some(11), "sorted by scalar value: ñ (U+00F1) is last");
    // No hold-out: everything trains.
    let all = CharText::load(&path, 0.0).unwrap();
    assert_eq!((all.train.len(), all.validation.len()), (20, 0));
}

#[test]
fn vocabulary_round_trips_through_a_saved_model() {
    let dir = tempfile::tempdir().unwrap();
    let v = Vocabulary::from_text("Ab\n\t\"\\ é—中\u{1F600}\u{0}").unwrap();
    let spec =
        wgnn::model::NetSpec::new(&[v.len(), v.len()], wgnn::model::Activation::Sigmoid, wgnn::model::Output::Softmax)
            .unwrap();
    let theta = wgnn::model::Init::Uniform.theta(&spec, 3);
    let preprocessing = serde_json::json!({ text::VOCABULARY_KEY: v.to_json() });
    let metadata = Metadata { preprocessing, ..Default::default() };
    let path = dir.path().join("model.safetensors");
    Checkpoint::new(spec, theta, metadata).unwrap().save(&path).unwrap();
    let loaded = Checkpoint::load(&path).unwrap();
    let back = Vocabulary::from_preprocessing(&loaded.metadata.preprocessing).unwrap().expect("stored");
    assert_eq!(back, v);
    assert_eq!(back.decode(&back.encode("中é\u{1F600}", "t").unwrap()), "中é\u{1F600}");
    // A model without one, and a damaged one.
    assert_eq!(Vocabulary::from_preprocessing(&serde_json::json!({"whitening": null})).unwrap(), None);
    let e = err_line(Vocabulary::from_preprocessing(&serde_json::json!({"vocabulary": "ba"})).unwrap_err());
    assert!(e.contains("not sorted"), "{e}");
}

#[test]
fn text_refusals_are_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, b"").unwrap();
    let e = err_line(CharText::load(&empty, 0.1).unwrap_err());
    assert!(e.contains("empty.txt") && e.contains("is empty"), "{e}");
    let empty_gz = dir.path().join("empty.txt.gz");
    gzip_to(&empty_gz, b"");
    let e = err_line(CharText::load(&empty_gz, 0.1).unwrap_err());
    assert!(e.contains("empty.txt.gz") && e.contains("is empty"), "{e}");
    let latin1 = dir.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait").unwrap();
    let e = err_line(CharText::load(&latin1, 0.1).unwrap_err());
    assert!(e.contains("latin1.txt") && e.contains("byte 3") && e.contains("UTF-8"), "{e}");
    let one = dir.path().join("one.txt");
    std::fs::write(&one, "aaaaaaaaaaaa").unwrap();
    let e = err_line(CharText::load(&one, 0.1).unwrap_err());
    assert!(e.contains("one distinct character"), "{e}");
    // Characters unseen at training time, when sampling (a prime) or evaluating.
    let v = Vocabulary::from_text("abc \n").unwrap();
    let e = err_line(v.encode("ab\u{e9}", "--prime").unwrap_err());
    assert!(e.contains("--prime") && e.contains("U+00E9") && e.contains("position 2"), "{e}");
    let e = err_line(v.encode("a\tb", "the evaluation text").unwrap_err());
    assert!(e.contains("U+0009") && e.contains("never saw"), "{e}");
    // T larger than the text, for evaluation and for training streams.
    let e = err_line(text::eval_starts(10, 64, "the held-out text").unwrap_err());
    assert!(e.contains("held-out text has 10 characters") && e.contains("--bptt 64"), "{e}");
    let e = err_line(StreamBatches::new(1000, 32, 64).unwrap_err());
    assert!(e.contains("1000 characters") && e.contains("32 streams") && e.contains("--batch-size"), "{e}");
    assert!(StreamBatches::new(32 * 64 + 1, 32, 64).is_ok(), "exactly one window per stream fits");
    // A hold-out that leaves one side empty.
    let short = dir.path().join("short.txt");
    std::fs::write(&short, "ab").unwrap();
    let e = err_line(CharText::load(&short, 0.1).unwrap_err());
    assert!(e.contains("one side empty"), "{e}");
}

#[test]
fn kjv_has_73_characters_and_the_last_tenth_held_out() {
    let path = common::data_dir().join("text/kjv.txt.gz");
    let t = CharText::load(&path, 0.1).unwrap();
    let n = 4_236_034; // plain ASCII: one character per byte (data README)
    assert_eq!(t.vocabulary.len(), 73);
    assert_eq!(t.train.len() + t.validation.len(), n);
    assert_eq!(t.validation.len(), (n as f64 * 0.1).round() as usize);
    // The held-out text is the end of the New Testament.
    let tail = t.vocabulary.decode(&t.validation[t.validation.len() - 40..]);
    assert!(tail.contains("Amen."), "{tail:?}");
    // A unigram model's bits per character is what a language model must beat: between
    // 4 and log2(73) = 6.19 for English text.
    let h = text::unigram_entropy_bits(&t.validation);
    assert!(h > 4.0 && h < 73f64.log2(), "{h}");
    // One epoch of the char-LM setup: 32 streams of 64-character windows.
    let s = StreamBatches::new(t.train.len(), 32, 64).unwrap();
    assert_eq!(s.len(), (t.train.len() - 1) / 32 / 64);
    let (x, next) = text::one_hot_windows(&t.train, &s.starts(5), 64, 73).unwrap();
    assert_eq!(x.dim(), (32, 64 * 73));
    assert_eq!(x.sum(), (32 * 64) as f32, "one 1 per step");
    assert_eq!(next[64], t.train[s.stream_len + 5 * 64 + 1] as usize, "row 1, step 0 predicts stream 1's next");
}

#[test]
fn three_axes_are_told_from_a_matrix_by_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let seq = write_npy(dir.path(), "s.npy", &Array3::<f32>::zeros((2, 3, 4)));
    let mat = write_npy(dir.path(), "m.npy", &ndarray::Array2::<f32>::zeros((2, 12)));
    let vec = write_npy(dir.path(), "v.npy", &Array1::<f32>::zeros(3));
    assert!(sequence::is_sequence_npy(&seq));
    assert!(!sequence::is_sequence_npy(&mat) && !sequence::is_sequence_npy(&vec));
    let text = dir.path().join("t.npy");
    std::fs::write(&text, "not a .npy file").unwrap();
    assert!(!sequence::is_sequence_npy(&text) && !sequence::is_sequence_npy(&dir.path().join("missing.npy")));
}
