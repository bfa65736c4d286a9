//! The data sources on real data (MNIST, the natural photographs, scikit-learn's 8×8 digits,
//! found through WGNN_DATA_DIR), on small corrupt files written into a temporary folder, and
//! the synthetic images' statistics; whitening on real patches.

mod common;

use common::{data_dir, npy_bytes};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{Array2, Axis};
use wgnn::data::patches::{self, GrayImage};
use wgnn::data::whiten::{Components, Whitening, covariance};
use wgnn::data::{DataSource, Digits, LabelColumn, LoadOptions, Mnist, Split, csv, mnist, synthetic};

const TRAIN_COUNTS: [usize; 10] = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949];
const TEST_COUNTS: [usize; 10] = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009];

/// The MNIST training set, read once per test binary (about a second in a debug build).
fn mnist_train() -> &'static Mnist {
    static TRAIN: OnceLock<Mnist> = OnceLock::new();
    TRAIN.get_or_init(|| Mnist::load(&data_dir().join("mnist"), Split::Train).expect("MNIST training set loads"))
}

// ---------------------------------------------------------------------------------------------
// MNIST, real files

#[test]
fn mnist_train_has_the_canonical_label_counts_and_pixel_range() {
    let train = mnist_train();
    assert_eq!(train.images.dim(), (60_000, 784));
    assert_eq!((train.rows, train.cols), (28, 28));
    assert_eq!(train.label_counts(), TRAIN_COUNTS);
    let (lo, hi) = train.images.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert_eq!((lo, hi), (0.0, 1.0));
    // MNIST's well-known mean intensity, 33.32/255 = 0.1307.
    let mean = train.images.iter().map(|&v| f64::from(v)).sum::<f64>() / train.images.len() as f64;
    assert!((mean - 0.1307).abs() < 5e-4, "mean pixel {mean}");
    // The canonical order: the training set starts 5, 0, 4, 1, 9.
    assert_eq!(train.labels[..5], [5, 0, 4, 1, 9]);
}

#[test]
fn mnist_digit_filter_and_first_n() {
    let train = mnist_train();
    let high = train.keep_digits(&"5-9".parse().unwrap()).unwrap();
    assert_eq!(high.len(), TRAIN_COUNTS[5..].iter().sum::<usize>());
    assert!(high.labels.iter().all(|&l| (5..=9).contains(&l)));
    assert_eq!(high.label_counts()[5..], TRAIN_COUNTS[5..]);
    // Order is kept: the first kept image is the training set's first 5-9 image (index 0).
    assert_eq!(high.images.row(0), train.images.row(0));
    let first = high.take(100);
    assert_eq!(first.images.dim(), (100, 784));
    assert_eq!(first.labels.len(), 100);
}

#[test]
fn mnist_test_split_through_the_data_source() {
    let dir = data_dir().join("mnist");
    let source: DataSource = format!("mnist:{}", dir.display()).parse().unwrap();
    let all = source.load(&LoadOptions { split: Some(Split::Test), ..LoadOptions::default() }).unwrap();
    assert_eq!(all.x.dim(), (10_000, 784));
    assert_eq!(all.image_shape, Some((28, 28)));
    let mut counts = [0; 10];
    all.labels.as_ref().unwrap().iter().for_each(|&l| counts[l] += 1);
    assert_eq!(counts, TEST_COUNTS);
    assert!(all.description.contains("MNIST test"), "{}", all.description);

    let options = LoadOptions {
        split: Some(Split::Test),
        digits: Some("0-4".parse().unwrap()),
        limit: Some(250),
        ..LoadOptions::default()
    };
    let low = source.load(&options).unwrap();
    assert_eq!(low.len(), 250);
    assert!(low.labels.as_ref().unwrap().iter().all(|&l| l <= 4));
    assert_eq!(low.num_classes(), Some(5));
}

// ---------------------------------------------------------------------------------------------
// MNIST, small files written here: every way an IDX file can be wrong

fn idx_images(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [mnist::IMAGES_MAGIC, count, rows, cols] {
        b.extend(v.to_be_bytes());
    }
    b.extend(pixels);
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(mnist::LABELS_MAGIC.to_be_bytes());
    b.extend((labels.len() as u32).to_be_bytes());
    b.extend(labels);
    b
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Three 2×3 images and their labels.
fn tiny_mnist() -> (Vec<u8>, Vec<u8>) {
    let pixels: Vec<u8> = (0..18).map(|i| (i * 15) as u8).collect();
    (idx_images(3, 2, 3, &pixels), idx_labels(&[7, 0, 7]))
}

#[test]
fn mnist_reads_plain_and_gz_files_by_their_standard_names() {
    let (images, labels) = tiny_mnist();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "train-images-idx3-ubyte", &images);
    write(dir.path(), "train-labels-idx1-ubyte.gz", &gzip(&labels));
    let m = Mnist::load(dir.path(), Split::Train).unwrap();
    assert_eq!(m.images.dim(), (3, 6));
    assert_eq!((m.rows, m.cols), (2, 3));
    assert_eq!(m.labels, [7, 0, 7]);
    assert_eq!(m.images[[0, 1]], 15.0 / 255.0);
    assert_eq!(m.images[[2, 5]], 1.0); // byte 255
    assert_eq!(m.label_counts(), [1, 0, 0, 0, 0, 0, 0, 2]);
    // The test split is not there: the error names the file it looked for.
    let e = Mnist::load(dir.path(), Split::Test).unwrap_err().to_string();
    assert!(e.contains("t10k-images-idx3-ubyte") && e.contains(".gz"), "{e}");
    let e = Mnist::load(&dir.path().join("nowhere"), Split::Train).unwrap_err().to_string();
    assert!(e.contains("nowhere") && e.contains("is not a directory"), "{e}");
}

fn mnist_error(images: &[u8], labels: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let i = write(dir.path(), "images", images);
    let l = write(dir.path(), "labels", labels);
    Mnist::from_files(&i, &l).unwrap_err().to_string()
}

#[test]
fn mnist_wrong_magic_is_refused() {
    let (mut images, labels) = tiny_mnist();
    images[3] = 0x04;
    let e = mnist_error(&images, &labels);
    assert!(e.contains("wrong magic number 0x00000804") && e.contains("expected 0x00000803"), "{e}");
    // Labels where images belong: the error says the files look swapped.
    let (images, labels) = tiny_mnist();
    let e = mnist_error(&labels, &images);
    assert!(e.contains("swapped"), "{e}");
    // Not an IDX file at all.
    let e = mnist_error(b"P5\n28 28\n255\nxxxxxxxxxxxxxxxx", &labels);
    assert!(e.contains("wrong magic number"), "{e}");
}

#[test]
fn mnist_truncated_files_say_how_many_bytes_were_expected() {
    // The header declares 10 images of 28×28, the file holds 1,000 pixels.
    let images = idx_images(10, 28, 28, &[0; 1000]);
    let labels = idx_labels(&[0; 10]);
    let e = mnist_error(&images, &labels);
    assert!(e.contains("truncated") && e.contains("7856 bytes") && e.contains("holds 1016"), "{e}");
    // The same inside a gzip file.
    let e = mnist_error(&gzip(&images), &labels);
    assert!(e.contains("truncated") && e.contains("7856 bytes"), "{e}");
    // A label file cut short, and one cut inside its header.
    let (images, labels) = tiny_mnist();
    let e = mnist_error(&images, &labels[..10]);
    assert!(e.contains("truncated") && e.contains("11 bytes") && e.contains("holds 10"), "{e}");
    let e = mnist_error(&images, &labels[..5]);
    assert!(e.contains("truncated") && e.contains("header"), "{e}");
    // A gzip stream cut in half.
    let gz = gzip(&images);
    let e = mnist_error(&gz[..gz.len() / 2], &labels);
    assert!(e.contains("gzip") && e.contains("truncated or corrupt"), "{e}");
}

#[test]
fn mnist_count_mismatch_and_empty_sets_are_refused() {
    let (images, _) = tiny_mnist();
    let e = mnist_error(&images, &idx_labels(&[1, 2]));
    assert!(e.contains("3 images") && e.contains("2 labels") && e.contains("do not belong together"), "{e}");
    let e = mnist_error(&idx_images(0, 28, 28, &[]), &idx_labels(&[]));
    assert!(e.contains("empty"), "{e}");
    let e = mnist_error(&idx_images(2, 0, 28, &[]), &idx_labels(&[1, 2]));
    assert!(e.contains("0×28"), "{e}");
    let mut long = images.clone();
    long.push(0);
    let e = mnist_error(&long, &idx_labels(&[1, 2, 3]));
    assert!(e.contains("1 bytes after"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// CSV

#[test]
fn digits8x8_csv_has_1797_labelled_rows() {
    let path = data_dir().join("digits8x8/digits.csv.gz");
    let source: DataSource = format!("csv:{}", path.display()).parse().unwrap();
    let data = source.load(&LoadOptions::default()).unwrap();
    assert_eq!(data.x.dim(), (1797, 64));
    assert_eq!(data.image_shape, Some((8, 8)));
    assert!(data.x.iter().all(|&v| (0.0..=16.0).contains(&v) && v.fract() == 0.0));
    let mut counts = [0; 10];
    data.labels.as_ref().unwrap().iter().for_each(|&l| counts[l] += 1);
    assert_eq!(counts, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]);
    // The first row of scikit-learn's digits is a 0 starting 0, 0, 5, 13, 9, 1.
    assert_eq!(data.x.row(0).iter().take(6).copied().collect::<Vec<_>>(), [0.0, 0.0, 5.0, 13.0, 9.0, 1.0]);
    assert_eq!(data.labels.as_ref().unwrap()[0], 0);
    let odd = source.load(&LoadOptions { digits: Some("1,3,5,7,9".parse().unwrap()), ..LoadOptions::default() });
    assert_eq!(odd.unwrap().len(), 182 + 183 + 182 + 179 + 180);
}

#[test]
fn csv_errors_name_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let ragged = write(dir.path(), "ragged.csv", b"x1,x2,label\n1,2,0\n3,4,1\n5,6\n");
    let e = csv::read_csv(&ragged, LabelColumn::Last).unwrap_err().to_string();
    assert!(e.contains("ragged.csv") && e.contains("line 4 has 2 columns but line 2 has 3"), "{e}");
    let text = write(dir.path(), "text.csv.gz", &gzip(b"1,2,0\n3,four,1\n"));
    let e = csv::read_csv(&text, LabelColumn::Last).unwrap_err().to_string();
    assert!(e.contains("line 2, column 2") && e.contains("`four` is not a number"), "{e}");
    let empty = write(dir.path(), "empty.csv", b"");
    let e = csv::read_csv(&empty, LabelColumn::Last).unwrap_err().to_string();
    assert!(e.contains("no data"), "{e}");
    let binary = write(dir.path(), "binary.csv", &[0xff, 0xfe, 0x00, 0x81]);
    let e = csv::read_csv(&binary, LabelColumn::Last).unwrap_err().to_string();
    assert!(e.contains("not a text file"), "{e}");
    let e = DataSource::Csv(dir.path().join("missing.csv")).load(&LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("missing.csv") && e.contains("cannot read"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// .npy

#[test]
fn npy_matrix_with_labels_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let x = Array2::from_shape_fn((6, 4), |(i, j)| (i * 4 + j) as f64 / 10.0);
    let x_path = dir.path().join("x.npy");
    wgnn::npy::write_matrix(&x_path, &x).unwrap();
    let y_path = dir.path().join("y.npy");
    ndarray_npy::write_npy(&y_path, &ndarray::arr1(&[0i64, 1, 2, 1, 0, 2])).unwrap();
    let source = DataSource::Npy(x_path.clone());
    let options = LoadOptions { labels: Some(y_path.clone()), ..LoadOptions::default() };
    let data = source.load(&options).unwrap();
    assert_eq!(data.x, x.mapv(|v| v as f32));
    assert_eq!(data.labels.as_deref(), Some(&[0, 1, 2, 1, 0, 2][..]));
    assert_eq!(data.image_shape, Some((2, 2)));
    let ones = source.load(&LoadOptions { digits: Some(Digits::new([1]).unwrap()), ..options.clone() }).unwrap();
    assert_eq!(ones.x.column(0).to_vec(), [0.4, 1.2]);

    // Labels that do not match the rows, a split that does not apply, a NaN, no labels to filter.
    let short = dir.path().join("short.npy");
    ndarray_npy::write_npy(&short, &ndarray::arr1(&[0i64, 1])).unwrap();
    let e = source.load(&LoadOptions { labels: Some(short), ..LoadOptions::default() }).unwrap_err().to_string();
    assert!(e.contains("2 labels") && e.contains("6 examples"), "{e}");
    let e = source.load(&LoadOptions { split: Some(Split::Test), ..LoadOptions::default() }).unwrap_err().to_string();
    assert!(e.contains("mnist: sources only"), "{e}");
    let mut bad = x.clone();
    bad[[1, 2]] = f64::NAN;
    let nan_path = dir.path().join("nan.npy");
    wgnn::npy::write_matrix(&nan_path, &bad).unwrap();
    let e = DataSource::Npy(nan_path).load(&LoadOptions::default()).unwrap_err().to_string();
    assert!(e.contains("row 1, column 2 is NaN"), "{e}");
    let e = source
        .load(&LoadOptions { digits: Some("0-4".parse().unwrap()), ..LoadOptions::default() })
        .unwrap_err()
        .to_string();
    assert!(e.contains("no labels"), "{e}");
    let e = source.load(&LoadOptions { limit: Some(0), ..LoadOptions::default() }).unwrap_err().to_string();
    assert!(e.contains("limit of 0"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Image folders and patches

#[test]
fn natural_patches_have_the_ufldl_range_and_are_deterministic() {
    let dir = data_dir().join("natural");
    let images = patches::read_image_folder(&dir).unwrap();
    assert_eq!(images.len(), 10, "the natural/ folder holds ten pictures");
    assert!(images.iter().any(|(p, _)| p.extension().unwrap() == "jpg"), "a JPEG is among them");
    for (path, image) in &images {
        assert!((300..=640).contains(&image.width.max(image.height)), "{}", path.display());
        assert!(image.pixels.iter().all(|v| (0.0..=1.0).contains(v)), "{}", path.display());
    }
    let pictures: Vec<GrayImage> = images.into_iter().map(|(_, im)| im).collect();
    let x = patches::sample_normalized(&pictures, 8, 10_000, 1).unwrap();
    assert_eq!(x.dim(), (10_000, 64));
    let (lo, hi) = x.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(lo >= 0.1 - 1e-6 && hi <= 0.9 + 1e-6, "range [{lo}, {hi}]");
    // Photographs have outliers beyond 3σ: both clip limits are reached.
    assert!(lo < 0.1 + 1e-6 && hi > 0.9 - 1e-6, "range [{lo}, {hi}] was not clipped");
    let mean = x.mean().unwrap();
    assert!((mean - 0.5).abs() < 0.01, "mean {mean}");
    // Each patch's own mean is near 0.5 too (its mean was subtracted before clipping).
    let row_means = x.mean_axis(Axis(1)).unwrap();
    assert!(row_means.iter().filter(|m| (*m - 0.5).abs() > 0.05).count() < 200);
    assert_eq!(x, patches::sample_normalized(&pictures, 8, 10_000, 1).unwrap(), "same seed, same patches");
    assert_ne!(x, patches::sample_normalized(&pictures, 8, 10_000, 2).unwrap(), "another seed, other patches");
}

#[test]
fn patches_source_reads_a_folder_and_one_file() {
    let dir = data_dir().join("natural");
    let source: DataSource = format!("patches:{}", dir.display()).parse().unwrap();
    let options = LoadOptions { patch_size: 10, patch_count: 500, seed: 3, ..LoadOptions::default() };
    let data = source.load(&options).unwrap();
    assert_eq!(data.x.dim(), (500, 100));
    assert_eq!(data.image_shape, Some((10, 10)));
    assert!(data.labels.is_none());
    assert!(data.description.contains("10 image(s)"), "{}", data.description);
    let one = DataSource::Patches(dir.join("rocket.jpg")).load(&options).unwrap();
    assert_eq!(one.x.dim(), (500, 100));
}

fn png(dir: &Path, name: &str, image: image::DynamicImage) -> PathBuf {
    let path = dir.join(name);
    image.save(&path).unwrap();
    path
}

#[test]
fn rgb_becomes_luma() {
    let dir = tempfile::tempdir().unwrap();
    let red = image::RgbImage::from_pixel(12, 9, image::Rgb([255, 0, 0]));
    let path = png(dir.path(), "red.png", red.into());
    let gray = patches::read_image(&path).unwrap();
    assert_eq!((gray.width, gray.height), (12, 9));
    // Rec. 709 luma of pure red.
    assert!(gray.pixels.iter().all(|&v| (v - 0.2126).abs() < 0.005), "{}", gray.pixels[0]);
    let rgb = image::RgbImage::from_fn(12, 9, |x, _| image::Rgb([0, if x < 6 { 0 } else { 255 }, 0]));
    let gray = patches::read_image(&png(dir.path(), "green.png", rgb.into())).unwrap();
    assert!(gray.get(2, 4) < 0.01 && (gray.get(9, 4) - 0.7152).abs() < 0.005);
}

#[test]
fn bad_image_folders_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let options = LoadOptions { patch_count: 10, ..LoadOptions::default() };
    let load = |p: &Path| DataSource::Patches(p.to_path_buf()).load(&options).unwrap_err().to_string();

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    assert!(load(&empty).contains("empty folder"));

    let text = dir.path().join("text");
    std::fs::create_dir(&text).unwrap();
    write(&text, "notes.txt", b"no pictures here");
    let e = load(&text);
    assert!(e.contains("no PNG or JPEG") && e.contains("notes.txt"), "{e}");

    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    png(&small, "big.png", image::GrayImage::from_fn(40, 40, |x, y| image::Luma([(x * y) as u8])).into());
    png(&small, "tiny.png", image::GrayImage::new(5, 30).into());
    let e = load(&small);
    assert!(e.contains("tiny.png") && e.contains("5×30") && e.contains("smaller than the 8×8 patch"), "{e}");

    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    write(&broken, "broken.png", b"\x89PNG\r\n\x1a\nthis is not the rest of a PNG");
    let e = load(&broken);
    assert!(e.contains("broken.png") && e.contains("cannot decode"), "{e}");

    let flat = dir.path().join("flat");
    std::fs::create_dir(&flat).unwrap();
    png(&flat, "grey.png", image::GrayImage::from_pixel(30, 30, image::Luma([128])).into());
    assert!(load(&flat).contains("flat"));

    let e = load(&dir.path().join("nowhere"));
    assert!(e.contains("nowhere") && e.contains("cannot read the folder"), "{e}");

    let good = dir.path().join("good");
    std::fs::create_dir(&good).unwrap();
    png(&good, "big.png", image::GrayImage::from_fn(40, 40, |x, y| image::Luma([(x * y) as u8])).into());
    let zero = DataSource::Patches(good).load(&LoadOptions { patch_count: 0, ..LoadOptions::default() });
    let e = zero.unwrap_err().to_string();
    assert!(e.contains("cannot sample 0 patches") && e.contains("at least 1"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Synthetic dead-leaves images

/// The default pictures for seed 7, made once per test binary.
fn dead_leaves() -> &'static [GrayImage] {
    static IMAGES: OnceLock<Vec<GrayImage>> = OnceLock::new();
    IMAGES.get_or_init(|| synthetic::images(7))
}

#[test]
fn synthetic_images_are_deterministic_and_in_range() {
    let images = dead_leaves();
    assert_eq!(images.len(), 10);
    for im in images {
        assert_eq!((im.width, im.height), (256, 256));
        assert!(im.pixels.iter().all(|v| (0.0..=1.0).contains(v)));
        // Shapes of many grey levels, not one flat picture.
        let mean = im.pixels.iter().sum::<f32>() / im.pixels.len() as f32;
        let sd = (im.pixels.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / im.pixels.len() as f32).sqrt();
        assert!(sd > 0.1, "standard deviation {sd}");
    }
    let config = synthetic::DeadLeaves { images: 2, size: 64, ..Default::default() };
    assert_eq!(config.generate(7).unwrap(), config.generate(7).unwrap());
    assert_ne!(config.generate(7).unwrap(), config.generate(8).unwrap());
}

/// Mean squared difference between pixels `d` apart (horizontally and vertically).
fn structure_function(im: &GrayImage, d: usize) -> f64 {
    let (w, h) = (im.width, im.height);
    let mut sum = 0.0;
    let mut n = 0;
    for y in 0..h - d {
        for x in 0..w - d {
            let v = f64::from(im.get(x, y));
            sum += (f64::from(im.get(x + d, y)) - v).powi(2) + (f64::from(im.get(x, y + d)) - v).powi(2);
            n += 2;
        }
    }
    sum / n as f64
}

#[test]
fn synthetic_images_have_sharp_edges() {
    // Neighbouring pixels mostly agree (flat insides of shapes) but a real share differ a lot
    // (occluding borders): white noise would have most pairs differ, a smooth picture none.
    let mut large = 0usize;
    let mut pairs = 0usize;
    for im in dead_leaves() {
        for y in 0..im.height {
            for x in 0..im.width - 1 {
                large += usize::from((im.get(x + 1, y) - im.get(x, y)).abs() > 0.1);
                pairs += 1;
            }
        }
    }
    let fraction = large as f64 / pairs as f64;
    assert!((0.03..0.3).contains(&fraction), "fraction of neighbour differences > 0.1: {fraction}");
}

#[test]
fn synthetic_images_vary_at_every_scale() {
    // The structure function E[(I(x + d) − I(x))²] keeps growing from 1 to 64 pixels (shapes
    // of every size), where white noise would be flat from d = 1 and a picture of few large
    // shapes would saturate early; beyond the blur's reach it grows sub-linearly in d (edges,
    // not smooth ramps, which would give d²).
    let im = &dead_leaves()[0];
    let d: Vec<f64> = [1, 2, 4, 8, 16, 32, 64].iter().map(|&d| structure_function(im, d)).collect();
    for w in d.windows(2) {
        assert!(w[1] > w[0] * 1.05, "structure function does not grow with distance: {d:?}");
    }
    for w in d[2..].windows(2) {
        assert!(w[1] < 2.0 * w[0], "grows faster than linearly beyond 4 pixels: {d:?}");
    }
}

#[test]
fn synthetic_row_spectrum_falls_like_a_power_law() {
    // Power of the rows' Fourier transform at frequencies 2…64 cycles per 256 pixels, averaged
    // over rows; the slope of log power against log frequency is about −2 for pictures made
    // of steps (amplitude 1/f), 0 for white noise.
    let im = &dead_leaves()[1];
    let n = im.width;
    let freqs: Vec<usize> = (1..=6).map(|e| 1 << e).collect();
    let mut power = vec![0.0f64; freqs.len()];
    for y in (0..im.height).step_by(4) {
        let row: Vec<f64> = (0..n).map(|x| f64::from(im.get(x, y))).collect();
        for (p, &k) in power.iter_mut().zip(&freqs) {
            let (mut re, mut imag) = (0.0, 0.0);
            for (x, v) in row.iter().enumerate() {
                let phase = std::f64::consts::TAU * (k * x) as f64 / n as f64;
                re += v * phase.cos();
                imag -= v * phase.sin();
            }
            *p += re * re + imag * imag;
        }
    }
    let xs: Vec<f64> = freqs.iter().map(|&k| (k as f64).ln()).collect();
    let ys: Vec<f64> = power.iter().map(|p| p.ln()).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / 6.0, ys.iter().sum::<f64>() / 6.0);
    let slope = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum::<f64>()
        / xs.iter().map(|x| (x - mx).powi(2)).sum::<f64>();
    assert!((-2.8..-1.3).contains(&slope), "log-log slope of the row power spectrum: {slope}");
}

#[test]
fn synthetic_source_gives_normalised_patches() {
    let options = LoadOptions { patch_count: 2_000, seed: 7, ..LoadOptions::default() };
    let data = DataSource::Synthetic.load(&options).unwrap();
    assert_eq!(data.x.dim(), (2_000, 64));
    assert_eq!(data.image_shape, Some((8, 8)));
    let (lo, hi) = data.x.iter().fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    assert!(lo >= 0.1 - 1e-6 && hi <= 0.9 + 1e-6, "range [{lo}, {hi}]");
    assert!((data.x.mean().unwrap() - 0.5).abs() < 0.01);
    // The same patches as the shared sampler gives on the same pictures: one code path.
    assert_eq!(data.x, synthetic::patches(8, 2_000, 7).unwrap());
}

// ---------------------------------------------------------------------------------------------
// Whitening on real patches

fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    (a - b).iter().fold(0.0, |m, v| m.max(v.abs()))
}

#[test]
fn zca_whitened_patches_have_identity_covariance() {
    // Raw (not mean-subtracted) 8×8 patches: full rank, strongly correlated neighbours.
    let x = patches::sample_patches(dead_leaves(), 8, 5_000, 11).unwrap();
    let raw_cov = covariance(x.mapv(f64::from).view());
    assert!(raw_cov[[0, 1]] / raw_cov[[0, 0]] > 0.8, "neighbouring pixels should be correlated");
    let w = Whitening::fit_zca(x.view(), 1e-9).unwrap();
    let y = w.apply_f64(x.mapv(f64::from).view()).unwrap();
    let cov = covariance(y.view());
    assert!(max_abs_diff(&cov, &Array2::eye(64)) < 1e-3, "max |cov − I| = {}", max_abs_diff(&cov, &Array2::eye(64)));
    let m = w.matrix();
    assert!(max_abs_diff(&m, &m.t().to_owned()) < 1e-8, "the ZCA transform is symmetric");

    // Stored and read back (as with a model), it whitens new data identically.
    let json = serde_json::to_string(&w).unwrap();
    let back: Whitening = serde_json::from_str(&json).unwrap();
    let fresh = patches::sample_patches(dead_leaves(), 8, 100, 12).unwrap();
    assert_eq!(back.apply(fresh.view()).unwrap(), w.apply(fresh.view()).unwrap());
}

#[test]
fn pca_on_digits_keeps_99_percent_of_the_variance() {
    let path = data_dir().join("digits8x8/digits.csv.gz");
    let (x, _) = csv::read_csv(&path, LabelColumn::Last).unwrap();
    let w = Whitening::fit_pca(x.view(), 0.0, Components::Variance(0.99)).unwrap();
    // Some border pixels are always 0, and most variance lies in few directions.
    assert!((35..=45).contains(&w.outputs), "{} components", w.outputs);
    assert!(w.retained_variance() >= 0.99);
    let fewer = Whitening::fit_pca(x.view(), 0.0, Components::Count(w.outputs - 1)).unwrap();
    assert!(fewer.retained_variance() < 0.99);
    let y = w.apply_f64(x.mapv(f64::from).view()).unwrap();
    assert_eq!(y.ncols(), w.outputs);
    assert!(max_abs_diff(&covariance(y.view()), &Array2::eye(w.outputs)) < 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Hostile inputs (issue 13): sizes from headers and values are checked before anything is
// allocated from them, labels are class numbers, and every refusal is one line naming the
// file and the number.

/// Asserts `e` is one line that contains every one of `needles`.
fn one_line_with(e: &str, needles: &[&str]) {
    assert!(!e.contains('\n') && !e.contains('\r'), "not one line: {e:?}");
    assert!(e.chars().count() <= 700, "{} characters: {e}", e.chars().count());
    for n in needles {
        assert!(e.contains(n), "expected `{n}` in: {e}");
    }
}

fn f64_bytes(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn npy_headers_declaring_more_than_the_file_holds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = f64_bytes(&[0.5; 80]);
    // The file: 20 × 4 values under a header that says 2³¹ × 4 (34 GB as f32 rows).
    let big = write(d, "big.npy", &npy_bytes("<f8", "(2147483648, 4)", &data));
    let e = wgnn::npy::read_matrix(&big).err().unwrap().to_string();
    one_line_with(&e, &["big.npy", "(2147483648, 4)", "68719476736 bytes", "holds 640"]);
    // θ as a vector of 2³¹ values.
    let theta = write(d, "theta.npy", &npy_bytes("<f8", "(2147483648,)", &data[..160]));
    let e = wgnn::npy::read_vector(&theta).unwrap_err().to_string();
    one_line_with(&e, &["theta.npy", "(2147483648,)", "17179869184 bytes"]);
    // A shape whose product overflows, and labels under a forged header.
    let e = wgnn::npy::read_f64_dyn(&write(d, "o.npy", &npy_bytes("<f8", "(4294967296, 4294967296, 2)", &data)))
        .unwrap_err()
        .to_string();
    one_line_with(&e, &["o.npy", "more than can exist"]);
    let e = wgnn::npy::read_labels(&write(d, "l.npy", &npy_bytes("<i8", "(1000000000,)", &data))).unwrap_err();
    one_line_with(&e.to_string(), &["l.npy", "(1000000000,)", "8000000000 bytes"]);
    // A version-2 header whose length field says 4 GiB.
    let mut v2 = npy_bytes("<f8", "(20, 4)", &data);
    v2[6] = 2;
    v2.splice(8..10, [0xff, 0xff, 0xff, 0xff]);
    let e = wgnn::npy::read_matrix(&write(d, "v2.npy", &v2)).err().unwrap().to_string();
    one_line_with(&e, &["v2.npy", "4294967295 bytes"]);
    // A header that is not a Python dict: ndarray-npy's error, as one line.
    let mut broken = npy_bytes("<f8", "(20, 4)", &data);
    broken[20] = b'\n';
    let e = wgnn::npy::read_matrix(&write(d, "broken.npy", &broken)).err().unwrap().to_string();
    one_line_with(&e, &["broken.npy", "header"]);
    // The honest file still reads.
    let ok = wgnn::npy::read_matrix(&write(d, "ok.npy", &npy_bytes("<f8", "(20, 4)", &data))).unwrap();
    assert_eq!(ok.to_f64(), Array2::from_elem((20, 4), 0.5));
}

#[test]
fn npy_labels_must_be_exact_class_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let floats = |name: &str, v: &[f64]| write(d, name, &npy_bytes("<f8", &format!("({},)", v.len()), &f64_bytes(v)));
    let ints = |name: &str, v: &[i64]| {
        let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        write(d, name, &npy_bytes("<i8", &format!("({},)", v.len()), &data))
    };
    let err = |p: &Path| wgnn::npy::read_labels(p).unwrap_err().to_string();
    // 1e9 would be a one-hot of a billion classes: refused before any is built.
    one_line_with(&err(&floats("f.npy", &[0.0, 1.0, 1e9, 2.0])), &["f.npy", "label 1000000000 of example 2", "65535"]);
    one_line_with(&err(&ints("i.npy", &[0, 1, 1_000_000_000, 2])), &["i.npy", "label 1000000000 of example 2"]);
    one_line_with(&err(&floats("half.npy", &[0.0, 1.5])), &["label 1.5 of example 1"]);
    one_line_with(&err(&floats("nan.npy", &[0.0, f64::NAN])), &["label NaN of example 1"]);
    one_line_with(&err(&ints("neg.npy", &[0, -1])), &["label -1 of example 1"]);
    // A stray 27 among forty labels 0–9: 17 empty classes against 11 with examples.
    let mut stray: Vec<i64> = (0..40).map(|i| i % 10).collect();
    stray[13] = 27;
    one_line_with(&err(&ints("stray.npy", &stray)), &["up to 27 (example 13)", "classes 10-26 have none"]);
    one_line_with(&err(&ints("one.npy", &[4; 6])), &["every one of the 6 labels is 4"]);
    // Exact whole floats are labels (as class numbers for `cost`: class 0 without examples).
    assert_eq!(wgnn::npy::read_labels(&floats("ok.npy", &[1.0, 2.0, 3.0, 1.0])).unwrap(), vec![1, 2, 3, 1]);
    // As a data set's labels they are mapped to classes, as scikit-learn's LabelEncoder does:
    // 1, 2, 3 are three classes named by the labels (tests/labels.rs has more).
    let x = write(d, "x.npy", &npy_bytes("<f8", "(4, 2)", &f64_bytes(&[0.25; 8])));
    let options = LoadOptions { labels: Some(d.join("ok.npy")), ..LoadOptions::default() };
    let data = DataSource::Npy(x).load(&options).unwrap();
    assert!(data.description.contains("3 classes: 1, 2, 3"), "{}", data.description);
    assert_eq!(data.num_classes(), Some(3));
    assert_eq!(data.labels, Some(vec![0, 1, 2, 0]));
}

#[test]
fn csv_labels_must_be_exact_class_numbers() {
    let rows = |labels: &[&str]| -> String {
        labels.iter().enumerate().map(|(i, l)| format!("{i},{},{l}\n", i * 2)).collect()
    };
    let err = |labels: &[&str]| csv::parse_csv(&rows(labels), LabelColumn::Last).unwrap_err();
    // 1e-400 is not 0, though it parses as 0.0; 2.0000000000000000001 is not 2.
    one_line_with(&err(&["0", "1", "1e-400", "1"]), &["line 3, column 3", "`1e-400` is not a class number"]);
    one_line_with(&err(&["0", "2.0000000000000000001"]), &["line 2, column 3"]);
    // Labels are mapped to classes (LabelEncoder): 1e9, −1 and a stray 27 are classes of
    // their own, named as written (no one-hot of a billion classes is built).
    let classes = |labels: &[&str]| csv::parse_csv(&rows(labels), LabelColumn::Last).unwrap().1.unwrap().classes;
    assert_eq!(classes(&["0", "1e9", "0"]), ["0", "1000000000"]);
    assert_eq!(classes(&["0", "-1"]), ["-1", "0"]);
    let mut labels: Vec<String> = (0..30).map(|i| (i % 10).to_string()).collect();
    labels[21] = "27".into();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    assert_eq!(classes(&labels).len(), 11);
    one_line_with(&err(&["0", "1", "99999999999999999999"]), &["line 3, column 3", "beyond ±2⁶³"]);
    // Whole numbers written as decimals are the classes they name.
    let (_, got) = csv::parse_csv(&rows(&["0", "3.0", "+2", "0.1e1", "20e-1", "-0"]), LabelColumn::Last).unwrap();
    assert_eq!(got.unwrap().labels, vec![0, 3, 2, 1, 2, 0]);
}

#[test]
fn a_label_column_of_one_value_is_named() {
    let path = data_dir().join("digits8x8/digits.csv.gz");
    let e = csv::read_csv(&path, LabelColumn::First).unwrap_err().to_string();
    one_line_with(&e, &["digits.csv.gz", "column 1", "every one of the 1797 labels is 0", "label column"]);
}

#[test]
fn mnist_labels_are_digits() {
    let dir = tempfile::tempdir().unwrap();
    let (images, _) = tiny_mnist();
    let images = write(dir.path(), "i", &images);
    let labels = write(dir.path(), "l", &idx_labels(&[7, 0, 128]));
    let e = Mnist::from_files(&images, &labels).unwrap_err().to_string();
    one_line_with(&e, &["l:", "label 128 of example 2", "0 to 9"]);
}

/// `n` bytes of zeros as a gzip file of several members (MultiGzDecoder reads them all),
/// quick to build: one member of 16 MiB, compressed once, repeated.
fn gzip_of_zeros(head: &[u8], n: usize) -> Vec<u8> {
    let block = 1 << 24;
    let member = gzip(&vec![0u8; block]);
    let mut out = gzip(head);
    for _ in 0..n / block {
        out.extend_from_slice(&member);
    }
    out
}

#[test]
fn gzip_bombs_are_refused_without_inflating_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A header that declares 200 images of 28×28, then 512 MiB of zeros (500 KB of gzip):
    // reading stops one byte past what the header declares.
    let head = idx_images(200, 28, 28, &vec![0; 200 * 784]);
    let bomb = write(d, "bomb-images.gz", &gzip_of_zeros(&head, 1 << 29));
    let labels = write(d, "labels", &idx_labels(&[1; 200]));
    let start = std::time::Instant::now();
    let e = Mnist::from_files(&bomb, &labels).unwrap_err().to_string();
    one_line_with(&e, &["bomb-images.gz", "more data after the 200 images of 28×28", "156800 bytes"]);
    assert!(start.elapsed().as_secs_f64() < 5.0, "took {:?}: was the bomb inflated?", start.elapsed());
    // A header declaring more than a gzip file of this size may inflate to.
    let liar = write(d, "liar.gz", &gzip(&idx_images(1_000_000, 28, 28, &[0; 784])));
    let e = mnist::read_images(&liar).unwrap_err().to_string();
    one_line_with(&e, &["liar.gz", "1000000 images of 28×28", "784000000 bytes", "may inflate to"]);
    // A CSV that inflates past max(256 MiB, 64 × its size).
    let csv_bomb = write(d, "bomb.csv.gz", &gzip_of_zeros(b"1,2,3\n", (1 << 28) + (1 << 24)));
    let e = csv::read_csv(&csv_bomb, LabelColumn::Last).unwrap_err().to_string();
    one_line_with(&e, &["bomb.csv.gz", "inflates to more than 268435456 bytes", "decompression bomb"]);
}

#[test]
fn mnist_limit_and_digits_decode_only_the_kept_images() {
    let dir = data_dir().join("mnist");
    let full = mnist_train();
    let first = Mnist::load_selected(&dir, Split::Train, None, Some(5)).unwrap();
    assert_eq!(first.labels, full.labels[..5]);
    assert_eq!(first.images, full.images.slice(ndarray::s![..5, ..]));
    let sevens = Mnist::load_selected(&dir, Split::Train, Some(&"7".parse().unwrap()), Some(3)).unwrap();
    let rows: Vec<usize> = (0..full.len()).filter(|&i| full.labels[i] == 7).take(3).collect();
    assert_eq!(sevens.labels, vec![7, 7, 7]);
    assert_eq!(sevens.images, full.images.select(Axis(0), &rows));
    // Through the data source: the description says what was kept.
    let options = LoadOptions { limit: Some(1000), ..LoadOptions::default() };
    let data = DataSource::Mnist(dir.clone()).load(&options).unwrap();
    assert_eq!(data.len(), 1000);
    assert!(data.description.contains("first 1000 images"), "{}", data.description);
    // A file damaged after the kept images is still refused.
    let tmp = tempfile::tempdir().unwrap();
    let (images, labels) = tiny_mnist();
    let mut long = images.clone();
    long.push(0);
    let (i, l) = (write(tmp.path(), "i", &long), write(tmp.path(), "l", &labels));
    let e = Mnist::from_files_selected(&i, &l, None, Some(1)).unwrap_err().to_string();
    one_line_with(&e, &["1 bytes after the 3 images of 2×3"]);
    let gz = write(tmp.path(), "i.gz", &gzip(&long));
    let e = Mnist::from_files_selected(&gz, &l, None, Some(1)).unwrap_err().to_string();
    one_line_with(&e, &["more data after the 3 images of 2×3"]);
}

/// A PNG of `width` × `height` 8-bit gray pixels whose IDAT holds `idat` (not necessarily
/// enough for the pixels), with correct chunk checksums.
fn forged_png(width: u32, height: u32, idat: &[u8]) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend(kind);
        out.extend(data);
        out.extend(crc.sum().to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 0, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", idat);
    chunk(&mut out, b"IEND", &[]);
    out
}

#[test]
fn picture_sizes_are_checked_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let idat = {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![0u8; 1 << 16]).unwrap();
        e.finish().unwrap()
    };
    // The 23000 × 23000 picture (2.1 GB as f32), refused from its header.
    let huge = write(d, "huge.png", &forged_png(23000, 23000, &idat));
    let e = patches::read_image(&huge).unwrap_err().to_string();
    one_line_with(&e, &["huge.png", "23000×23000", "529000000", "67108864"]);
    // Within the bound, but far more pixels than 200 bytes can hold.
    let liar = write(d, "liar.png", &forged_png(4000, 4000, &idat));
    let e = patches::read_image(&liar).unwrap_err().to_string();
    one_line_with(&e, &["liar.png", "4000×4000", "truncated or forged"]);
    // A folder of them is refused at the first, and nothing is trained.
    let options = LoadOptions { patch_size: 8, patch_count: 100, ..LoadOptions::default() };
    let e = DataSource::Patches(d.to_path_buf()).load(&options).unwrap_err().to_string();
    one_line_with(&e, &["huge.png"]);
    // A truncated JPEG: the decoder's message, in one line.
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(32, 32, |x, y| image::Luma([(x * y) as u8])))
        .write_to(&mut std::io::Cursor::new(&mut jpeg), image::ImageFormat::Jpeg)
        .unwrap();
    let cut = write(d, "cut.jpg", &jpeg[..jpeg.len() / 3]);
    if let Err(e) = patches::read_image(&cut) {
        one_line_with(&e.to_string(), &["cut.jpg"]);
    }
    // Patch counts are bounded before any picture is read or made.
    let e = synthetic::patches(8, 4_000_000_000, 0).unwrap_err().to_string();
    one_line_with(&e, &["4000000000 patches of 8×8", "536870912"]);
}
