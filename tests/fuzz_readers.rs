//! A seeded mutation suite over every reader (issue 13): IDX files (plain and gzip), `.npy`,
//! `.npy` sequences with their labels and per-step targets, text as characters (plain and
//! gzip), CSV (plain and gzip), checkpoints (safetensors and their metadata), pictures for `patches:`
//! (PNG and JPEG), and `--config` files (JSON and TOML, through the binary).
//!
//! Each case starts from a valid file, applies a few edits that proptest draws (bits flipped,
//! bytes set, inserted or deleted, the file cut, header fields set to hostile numbers) and
//! asserts: no panic; no single allocation and no peak of live memory above 64 × the input's
//! size + 64 MiB, measured by the counting global allocator below; and either a value or an
//! error of one line. The random seed is fixed, so every run checks the same cases; set
//! `PROPTEST_CASES` for more of them and `PROPTEST_RNG_SEED` for others. The `cargo fuzz` targets under `tests/fuzz/` search the
//! same readers without end, on nightly.

mod common;

use common::npy_bytes;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use wgnn::checkpoint::{Checkpoint, Metadata};
use wgnn::data::{LabelColumn, csv, mnist, patches};
use wgnn::model::{Init, NetSpec, Sparsity};

// ---------------------------------------------------------------------------------------------
// Counting allocator

/// Counts live bytes, their peak and the largest single request of this process.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
/// Requests above this are refused (the test binary then aborts, printing the size) instead
/// of taking the machine's memory: a regression fails loudly either way.
const REFUSE_ABOVE: usize = 4 << 30;

fn note(size: usize) -> bool {
    LARGEST.fetch_max(size, Relaxed);
    if size > REFUSE_ABOVE {
        return false;
    }
    let live = LIVE.fetch_add(size, Relaxed) + size;
    PEAK.fetch_max(live, Relaxed);
    true
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Relaxed);
        if new_size > REFUSE_ABOVE {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let live = LIVE.fetch_add(new_size - layout.size(), Relaxed) + new_size - layout.size();
                PEAK.fetch_max(live, Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One test at a time: the counters are global.
static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `f`; returns its value, the largest single allocation and the peak of live bytes above
/// what was live before.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    LARGEST.store(0, Relaxed);
    let before = LIVE.load(Relaxed);
    PEAK.store(before, Relaxed);
    let value = f();
    (value, LARGEST.load(Relaxed), PEAK.load(Relaxed).saturating_sub(before))
}

/// The allocation bound of a case whose input is `input_len` bytes.
fn bound(input_len: usize) -> usize {
    64 * input_len + (64 << 20)
}

// ---------------------------------------------------------------------------------------------
// Edits

#[derive(Clone, Debug)]
enum Edit {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Cut(Index),
    /// A 4-byte number written big- or little-endian over the bytes at the index.
    Number(Index, u32, bool),
}

/// Numbers that break size arithmetic: zero, one, powers of two near the type limits, and
/// any other.
fn hostile_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(255),
        Just(1 << 16),
        Just(1 << 24),
        Just(0x7fff_ffff),
        Just(1 << 31),
        Just(u32::MAX),
        0..100u32,
        any::<u32>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), 0..8u8).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(i, v)| Edit::Insert(i, v)),
        (any::<Index>(), 1..32usize).prop_map(|(i, n)| Edit::Delete(i, n)),
        any::<Index>().prop_map(Edit::Cut),
        (any::<Index>(), hostile_u32(), any::<bool>()).prop_map(|(i, v, be)| Edit::Number(i, v, be)),
    ]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(edit(), 0..4)
}

fn apply(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for e in edits {
        if b.is_empty() {
            break;
        }
        match e {
            Edit::Flip(i, bit) => {
                let i = i.index(b.len());
                b[i] ^= 1 << bit;
            }
            Edit::Set(i, v) => {
                let i = i.index(b.len());
                b[i] = *v;
            }
            Edit::Insert(i, v) => {
                let i = i.index(b.len() + 1);
                b.splice(i..i, v.iter().copied());
            }
            Edit::Delete(i, n) => {
                let i = i.index(b.len());
                let end = (i + n).min(b.len());
                b.drain(i..end);
            }
            Edit::Cut(i) => b.truncate(i.index(b.len())),
            Edit::Number(i, v, big_endian) => {
                let i = i.index(b.len());
                let bytes = if *big_endian { v.to_be_bytes() } else { v.to_le_bytes() };
                for (k, x) in bytes.into_iter().enumerate() {
                    if let Some(slot) = b.get_mut(i + k) {
                        *slot = x;
                    }
                }
            }
        }
    }
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

// ---------------------------------------------------------------------------------------------
// The runner

/// Cases per reader: `PROPTEST_CASES`, or `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `case` on `cases` inputs drawn from `strategy` with a fixed seed; a failing input is
/// shrunk and reported.
fn run<S: Strategy>(name: &str, cases: u32, strategy: S, case: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let config = Config {
        cases,
        failure_persistence: None,
        // PROPTEST_RNG_SEED=N draws other cases.
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            Config::default().rng_seed
        } else {
            RngSeed::Fixed(13)
        },
        max_shrink_iters: 256,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    if let Err(e) = runner.run(&strategy, case) {
        panic!("{name}: {e}");
    }
}

/// Writes `input` to `path`, runs `read` on it under the allocation counter, and checks the
/// bound and that an error is one line naming the file.
fn check<T>(path: &Path, input: &[u8], read: impl FnOnce(&Path) -> wgnn::Result<T>) -> Result<(), TestCaseError> {
    std::fs::write(path, input).unwrap();
    let (result, largest, peak) = measure(|| read(path));
    let limit = bound(input.len());
    prop_assert!(largest <= limit, "one allocation of {largest} bytes for an input of {} bytes", input.len());
    prop_assert!(peak <= limit, "a peak of {peak} bytes for an input of {} bytes", input.len());
    if let Err(e) = result {
        let message = e.to_string();
        prop_assert!(!message.contains('\n') && !message.contains('\r'), "not one line: {message:?}");
        prop_assert!(message.chars().count() <= 700, "{} characters: {message}", message.chars().count());
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        prop_assert!(message.contains(&name) || matches!(e, wgnn::Error::Data(_)), "does not name {name}: {message}");
    }
    Ok(())
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ---------------------------------------------------------------------------------------------
// IDX

fn idx_images(count: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [mnist::IMAGES_MAGIC, count, rows, cols] {
        b.extend(v.to_be_bytes());
    }
    b.extend((0..count * rows * cols).map(|i| (i * 7) as u8));
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = mnist::LABELS_MAGIC.to_be_bytes().to_vec();
    b.extend((labels.len() as u32).to_be_bytes());
    b.extend(labels);
    b
}

/// The header fields of an IDX file (after the magic number) set to hostile values.
fn header_fields() -> impl Strategy<Value = Vec<Option<u32>>> {
    prop::collection::vec(prop::option::of(hostile_u32()), 3)
}

fn set_fields(mut b: Vec<u8>, fields: &[Option<u32>]) -> Vec<u8> {
    for (k, f) in fields.iter().enumerate() {
        if let (Some(v), Some(slot)) = (f, b.get_mut(4 + 4 * k..8 + 4 * k)) {
            slot.copy_from_slice(&v.to_be_bytes());
        }
    }
    b
}

#[test]
fn idx_images_and_labels() {
    let dir = tempdir();
    let images_path = dir.path().join("images");
    let labels_path = dir.path().join("labels");
    let good_images = idx_images(3, 4, 5);
    let good_labels = idx_labels(&[1, 7, 9]);
    std::fs::write(&labels_path, &good_labels).unwrap();
    let strategy = (header_fields(), edits(), any::<bool>(), any::<bool>());
    run("IDX images", cases(160), strategy, |(fields, edits, gz, images)| {
        let seed = if images { good_images.clone() } else { good_labels.clone() };
        let plain = apply(&set_fields(seed, &fields), &edits);
        let input = if gz { gzip(&plain) } else { plain };
        if images {
            check(&images_path, &input, mnist::read_images)?;
            check(&images_path, &input, |p| wgnn::data::Mnist::from_files_selected(p, &labels_path, None, Some(2)))
        } else {
            std::fs::write(&images_path, &good_images).unwrap();
            check(&labels_path, &input, |p| wgnn::data::Mnist::from_files(&images_path, p))?;
            let result = check(&labels_path, &input, mnist::read_labels);
            std::fs::write(&labels_path, &good_labels).unwrap();
            result
        }
    });
}

// ---------------------------------------------------------------------------------------------
// .npy

fn hostile_dim() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1..6u64, Just(1 << 31), Just(1 << 32), Just(u64::MAX / 2), Just(u64::MAX), any::<u64>()]
}

#[test]
fn npy_matrices_vectors_and_labels() {
    let dir = tempdir();
    let path = dir.path().join("a.npy");
    let descr = prop::sample::select(vec!["<f8", "<f4", "<i8", "<i4", "|u1", "|b1", "<c16", ">f8", "<U3", "|O"]);
    let shape = prop::collection::vec(hostile_dim(), 0..4);
    let strategy = (descr, prop::option::of(shape), edits(), 0..4u8);
    run(".npy", cases(200), strategy, |(descr, shape, edits, reader)| {
        let data: Vec<u8> = (0..12u64).flat_map(|i| (i as f64 % 3.0).to_le_bytes()).collect();
        let shape = shape.map_or("(3, 4)".to_string(), |s| match s.as_slice() {
            [n] => format!("({n},)"),
            _ => format!("({})", s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")),
        });
        let input = apply(&npy_bytes(descr, &shape, &data), &edits);
        match reader {
            0 => check(&path, &input, |p| wgnn::npy::read_matrix(p).map(|_| ())),
            1 => check(&path, &input, wgnn::npy::read_vector),
            2 => check(&path, &input, wgnn::npy::read_labels),
            _ => check(&path, &input, wgnn::npy::read_f64_dyn),
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Sequences: .npy of m × T × n with labels and per-step targets (issue 16)

#[test]
fn npy_sequences_with_labels_and_targets() {
    let dir = tempdir();
    let path = dir.path().join("s.npy");
    let labels_path = dir.path().join("l.npy");
    let targets_path = dir.path().join("t.npy");
    let descr = prop::sample::select(vec!["<f8", "<f4", "<i8", "|O", ">f4"]);
    let shape = prop::collection::vec(hostile_dim(), 0..5);
    let strategy = (descr, prop::option::of(shape), edits(), 0..3u8);
    run(".npy sequences", cases(160), strategy, |(descr, shape, edits, with)| {
        // 2 sequences × 3 steps × 2 features of float64 (descr and shape may say otherwise).
        let data: Vec<u8> = (0..12u64).flat_map(|i| (i as f64 / 4.0).to_le_bytes()).collect();
        let shape = shape.map_or("(2, 3, 2)".to_string(), |s| match s.as_slice() {
            [n] => format!("({n},)"),
            _ => format!("({})", s.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")),
        });
        let input = apply(&npy_bytes(descr, &shape, &data), &edits);
        let labels: Vec<u8> = [0i64, 1].iter().flat_map(|l| l.to_le_bytes()).collect();
        std::fs::write(&labels_path, npy_bytes("<i8", "(2,)", &labels)).unwrap();
        let targets: Vec<u8> = (0..6u64).flat_map(|i| (i as f32).to_le_bytes()).collect();
        std::fs::write(&targets_path, npy_bytes("<f4", "(2, 3, 1)", &targets)).unwrap();
        let (l, t) = (labels_path.as_path(), targets_path.as_path());
        match with {
            0 => check(&path, &input, |p| wgnn::data::sequence::load_npy_sequences(p, None, None).map(|_| ())),
            1 => check(&path, &input, |p| wgnn::data::sequence::load_npy_sequences(p, Some(l), Some(t)).map(|_| ())),
            // The targets file mutated instead, beside good sequences.
            _ => {
                std::fs::write(&path, npy_bytes("<f8", "(2, 3, 2)", &data)).unwrap();
                let good = path.clone();
                check(&targets_path, &input, |p| {
                    wgnn::data::sequence::load_npy_sequences(&good, None, Some(p)).map(|_| ())
                })
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Text as characters (plain and gzip): UTF-8, the vocabulary, the held-out split

#[test]
fn text_plain_and_gzip() {
    let dir = tempdir();
    let path = dir.path().join("t.txt");
    let seed = "1 In the beginning God created the heaven and the earth.\n2 Naïve café — 中文.\n".repeat(3);
    let token = prop::sample::select(vec!["\u{0}", "\u{feff}", "\r\n", "é", "\u{10FFFF}", "\u{1F600}", "\t"]);
    let tokens = prop::collection::vec((any::<Index>(), token), 0..3);
    let holdout = prop::sample::select(vec![0.0, 0.1, 0.5, 0.99]);
    run("text", cases(160), (tokens, edits(), any::<bool>(), holdout), |(tokens, edits, gz, holdout)| {
        let mut text = seed.clone();
        for (at, token) in tokens {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            text.insert_str(i, token);
        }
        let plain = apply(text.as_bytes(), &edits);
        let input = if gz { gzip(&plain) } else { plain };
        check(&path, &input, |p| wgnn::data::text::CharText::load(p, holdout))
    });
}

// ---------------------------------------------------------------------------------------------
// CSV

#[test]
fn csv_plain_and_gzip() {
    let dir = tempdir();
    let path = dir.path().join("d.csv");
    let seed: String = std::iter::once("a,b,c,label\n".to_string())
        .chain((0..12).map(|i| format!("{}.5,{},-{}e-1,{}\n", i, i * 3, i, i % 4)))
        .collect();
    let token = prop::sample::select(vec![
        "1e9", "1e-400", "27", "-1", "nan", "inf", "", ",", "\n", ";", "\t", " ", "#", "3.0", "1e99999", "\u{feff}",
    ]);
    let tokens = prop::collection::vec((any::<Index>(), token), 0..3);
    let column =
        prop::sample::select(vec![LabelColumn::Last, LabelColumn::First, LabelColumn::None, LabelColumn::Number(2)]);
    run("CSV", cases(200), (tokens, edits(), any::<bool>(), column), |(tokens, edits, gz, column)| {
        let mut text = seed.clone();
        for (at, token) in tokens {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            text.insert_str(i, token);
        }
        let plain = apply(text.as_bytes(), &edits);
        let input = if gz { gzip(&plain) } else { plain };
        check(&path, &input, |p| csv::read_csv(p, column))
    });
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

fn checkpoint_bytes() -> Vec<u8> {
    let spec = NetSpec::sparse_autoencoder(4, 3, 1e-4, Sparsity { target: 0.05, weight: 3.0 }).unwrap();
    let theta = Init::Uniform.theta(&spec, 1);
    let metadata = Metadata {
        seed: Some(1),
        history: serde_json::json!([{"cost": 1.5}]),
        optimizer: serde_json::json!({"kind": "lbfgs", "s": [[1.0, 2.0]], "y": [[0.5, 0.25]]}),
        ..Default::default()
    };
    Checkpoint::new(spec, theta, metadata).unwrap().to_bytes().unwrap()
}

/// The checkpoint with the `layers` of its spec replaced (the safetensors header rewritten
/// with a consistent length), or `None` when the header cannot be rewritten.
fn with_layers(bytes: &[u8], layers: &[u64]) -> Option<Vec<u8>> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(bytes.get(8..8 + n)?).ok()?;
    let wgnn = header.get_mut("__metadata__")?.get_mut("wgnn")?;
    let mut inner: serde_json::Value = serde_json::from_str(wgnn.as_str()?).ok()?;
    *inner.get_mut("spec")?.get_mut("layers")? = serde_json::json!(layers);
    *wgnn = serde_json::Value::String(inner.to_string());
    let mut text = header.to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend(text);
    out.extend(&bytes[8 + n..]);
    Some(out)
}

#[test]
fn checkpoints() {
    let dir = tempdir();
    let path = dir.path().join("model.safetensors");
    let seed = checkpoint_bytes();
    let layers = prop::option::of(prop::collection::vec(hostile_dim(), 0..5));
    run("checkpoint", cases(160), (layers, edits()), |(layers, edits)| {
        let base = match &layers {
            Some(l) => with_layers(&seed, l).expect("the seed's header rewrites"),
            None => seed.clone(),
        };
        check(&path, &apply(&base, &edits), Checkpoint::load)
    });
}

// ---------------------------------------------------------------------------------------------
// Pictures

fn picture_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let encode = |image: image::DynamicImage, format| {
        let mut out = Vec::new();
        image.write_to(&mut std::io::Cursor::new(&mut out), format).unwrap();
        out
    };
    let gray = image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 30 + y * 3) as u8]));
    let rgb = image::RgbImage::from_fn(6, 5, |x, y| image::Rgb([(x * 40) as u8, (y * 50) as u8, 9]));
    let wide = image::GrayImage::from_fn(16, 16, |x, y| image::Luma([(x * y) as u8]));
    vec![
        ("a.png", encode(gray.into(), image::ImageFormat::Png)),
        ("b.png", encode(rgb.into(), image::ImageFormat::Png)),
        ("c.jpg", encode(wide.into(), image::ImageFormat::Jpeg)),
    ]
}

/// A PNG's IHDR width and height set, its checksum recomputed so the decoder believes them.
fn png_size(mut png: Vec<u8>, width: u32, height: u32) -> Vec<u8> {
    if png.len() < 33 || &png[12..16] != b"IHDR" {
        return png;
    }
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&png[12..29]);
    png[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    png
}

#[test]
fn pictures_png_and_jpeg() {
    let dir = tempdir();
    let seeds = picture_seeds();
    let size = prop::option::of((hostile_u32(), hostile_u32()));
    run("pictures", cases(120), (0..seeds.len(), size, edits()), |(which, size, edits)| {
        let (name, seed) = &seeds[which];
        let seed = match size {
            Some((w, h)) if name.ends_with(".png") => png_size(seed.clone(), w, h),
            _ => seed.clone(),
        };
        check(&dir.path().join(name), &apply(&seed, &edits), patches::read_image)
    });
}

// ---------------------------------------------------------------------------------------------
// --config files, through the binary: exit 1 with one line for a bad file, or clap's usage
// error (2) for a good file whose settings do not fit the command; never a panic (101) or an
// abort (134). The memory of another process is not counted here.

#[test]
fn config_files_json_and_toml() {
    let dir = tempdir();
    let wgnn = PathBuf::from(env!("CARGO_BIN_EXE_wgnn"));
    let seeds = [
        (
            "c.json",
            r#"{"iterations": 10, "hidden": [25, 9], "weight_decay": 1e-4, "quiet": true, "data": "synthetic"}"#,
        ),
        ("c.toml", "iterations = 10\nhidden = [25, 9]\nweight_decay = 1e-4\nquiet = true\ndata = \"synthetic\"\n"),
    ];
    let token = prop::sample::select(vec!["[", "{", "\"", "=", ",", "\n", "]", "}", "-", "1e999", "\\u0000", "[[a]]"]);
    let tokens = prop::collection::vec((any::<Index>(), token, 1..400usize), 0..3);
    run("config", cases(48), (0..2usize, tokens, edits()), |(which, tokens, edits)| {
        let (name, seed) = seeds[which];
        let mut text = seed.to_string();
        for (at, token, times) in tokens {
            let mut i = at.index(text.len() + 1);
            while !text.is_char_boundary(i) {
                i -= 1;
            }
            text.insert_str(i, &token.repeat(times));
        }
        let path = dir.path().join(name);
        std::fs::write(&path, apply(text.as_bytes(), &edits)).unwrap();
        // `cost` needs flags a config of training settings does not give: it stops early.
        let out = std::process::Command::new(&wgnn)
            .args(["cost", "--config", path.to_str().unwrap()])
            .env("WGNN_SKIP_GPU", "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        prop_assert!(code == Some(1) || code == Some(2), "exit {code:?}: {stderr}");
        if code == Some(1) {
            prop_assert_eq!(stderr.lines().count(), 1, "{}", stderr);
            prop_assert!(stderr.len() <= 700 && stderr.contains(name), "{}", stderr);
        }
        Ok(())
    });
}
