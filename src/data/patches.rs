//! Grayscale pictures and the square patches cut from them: reading PNG and JPEG files
//! (RGB becomes luma), sampling patches at random positions by seed, and the UFLDL
//! normalisation of MATH.md ("Natural image patches"). The one patch sampler and normaliser
//! for both photographs and the synthetic images of [`super::synthetic`].
//!
//! A patch is stored row-major: pixel (row r, column c) of a p×p patch is element r·p + c of
//! its row in the output matrix.

use std::path::{Path, PathBuf};

use ndarray::Array2;
use rand::{RngExt, SeedableRng, rngs::StdRng};

use crate::{Error, Result};

/// A grayscale picture: intensities in [0, 1], row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct GrayImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// height × width values, row after row.
    pub pixels: Vec<f32>,
}

impl GrayImage {
    /// Checks that `pixels` holds width × height values.
    pub fn new(width: usize, height: usize, pixels: Vec<f32>) -> Result<GrayImage> {
        if width.checked_mul(height) != Some(pixels.len()) {
            return Err(Error::Shape(format!(
                "a {width}×{height} image needs {} pixel values, got {}",
                width.saturating_mul(height),
                pixels.len()
            )));
        }
        Ok(GrayImage { width, height, pixels })
    }

    /// The intensity at column `x`, row `y`.
    pub fn get(&self, x: usize, y: usize) -> f32 {
        self.pixels[y * self.width + x]
    }
}

/// The most pixels a picture may have: 2²⁶ (67 million, e.g. 8192 × 8192), 256 MiB as f32
/// intensities. Photographs from a camera have 12 to 50 million.
pub const MAX_PIXELS: u64 = 1 << 26;

/// The most pixels a compressed picture file can hold per byte of file. A PNG's pixels are
/// deflate-compressed, which shrinks data at most about 1032 times, and a pixel takes at least
/// one bit (8 per byte); a JPEG needs at least two bits per 8 × 8 block and channel (256
/// pixels per byte). A header declaring more than this many pixels per byte belongs to a
/// truncated or forged file (a decompression bomb), refused before anything is decoded.
pub const MAX_PIXELS_PER_BYTE: u64 = 8 * 1032;

/// Reads a PNG or JPEG file (recognised by its contents) as grayscale: RGB is converted to
/// luma with the Rec. 709 weights, alpha is dropped, 16-bit depth is kept as precision.
///
/// The picture's size is read from its header and checked first: at most [`MAX_PIXELS`],
/// and at most [`MAX_PIXELS_PER_BYTE`] times the file's length; the decoder also runs under
/// `image`'s [`image::Limits`] (width, height, and 1 GiB of allocations).
pub fn read_image(path: &Path) -> Result<GrayImage> {
    let open = || {
        image::ImageReader::open(path)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| Error::file(path, format!("cannot open: {e}")))
    };
    let file_len = std::fs::metadata(path).map_err(|e| Error::file(path, format!("cannot read: {e}")))?.len();
    let not_decoded = |e: image::ImageError| {
        Error::file(path, format!("cannot decode as an image ({e}): only PNG and JPEG files are read; is it damaged?"))
    };
    let (w, h) = open()?.into_dimensions().map_err(not_decoded)?;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > MAX_PIXELS {
        return Err(Error::file(
            path,
            format!("is {w}×{h} pixels ({pixels}), more than the {MAX_PIXELS} wgnn reads: scale the picture down"),
        ));
    }
    if pixels > file_len.saturating_mul(MAX_PIXELS_PER_BYTE) {
        return Err(Error::file(
            path,
            format!(
                "declares {w}×{h} pixels, more than a picture file of {file_len} bytes can hold: it is truncated or forged"
            ),
        ));
    }
    let mut reader = open()?;
    let mut limits = image::Limits::default();
    let side = u32::try_from(MAX_PIXELS).unwrap_or(u32::MAX);
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    let picture = reader.decode().map_err(not_decoded)?;
    let luma = picture.to_luma32f();
    drop(picture);
    let (width, height) = (luma.width() as usize, luma.height() as usize);
    if width == 0 || height == 0 {
        return Err(Error::file(path, "is an empty picture (0 pixels)"));
    }
    // Luma of white RGB can round a hair above 1.
    let mut pixels = luma.into_raw();
    pixels.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    GrayImage::new(width, height, pixels)
}

/// The most values a set of patches may hold: 2²⁹ (2 GiB as f32), e.g. 8 million 8 × 8
/// patches.
pub const MAX_PATCH_VALUES: usize = 1 << 29;

/// Refuses `count` patches of `size` × `size` beyond [`MAX_PATCH_VALUES`], before any picture
/// is read or made.
pub fn check_patch_budget(size: usize, count: usize) -> Result<()> {
    let values = size.checked_mul(size).and_then(|p| p.checked_mul(count));
    if values.is_none_or(|v| v > MAX_PATCH_VALUES) {
        return Err(Error::Data(format!(
            "{count} patches of {size}×{size} would hold more than {MAX_PATCH_VALUES} values: \
             ask for fewer or smaller patches"
        )));
    }
    Ok(())
}

fn is_picture_name(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| ["png", "jpg", "jpeg"].contains(&e.to_ascii_lowercase().as_str()))
}

/// The PNG and JPEG files of a folder (by extension, not recursing), sorted by name so the
/// patches of a seed do not depend on the order the file system lists them in; or `path`
/// itself when it is a file.
pub fn image_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| Error::file(path, format!("cannot read the folder ({e}): give a folder of PNG or JPEG images")))?;
    let mut all = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::file(path, format!("cannot list the folder: {e}")))?;
        all.push(entry.path());
    }
    if all.is_empty() {
        return Err(Error::file(path, "is an empty folder: put PNG or JPEG images in it"));
    }
    let mut pictures: Vec<PathBuf> = all.iter().filter(|p| p.is_file() && is_picture_name(p)).cloned().collect();
    if pictures.is_empty() {
        let example = all[0].file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        return Err(Error::file(
            path,
            format!(
                "holds no PNG or JPEG images ({} other entries, e.g. `{example}`): give a folder with .png or .jpg files",
                all.len()
            ),
        ));
    }
    pictures.sort();
    Ok(pictures)
}

/// Reads every PNG and JPEG picture of a folder (see [`image_files`]) as grayscale.
pub fn read_image_folder(path: &Path) -> Result<Vec<(PathBuf, GrayImage)>> {
    image_files(path)?
        .into_iter()
        .map(|p| {
            let image = read_image(&p)?;
            Ok((p, image))
        })
        .collect()
}

/// `count` p×p patches (p = `size`), each from an image chosen uniformly at random and a
/// position chosen uniformly within it, as rows of a count × p² matrix. The same seed gives
/// the same patches. Values are the images' intensities, not yet normalised.
pub fn sample_patches(images: &[GrayImage], size: usize, count: usize, seed: u64) -> Result<Array2<f32>> {
    if size == 0 || count == 0 {
        return Err(Error::Data(format!(
            "cannot sample {count} patches of {size}×{size}: the patch size and the count must both be at least 1"
        )));
    }
    check_patch_budget(size, count)?;
    if images.is_empty() {
        return Err(Error::Data("there are no images to cut patches from".into()));
    }
    if let Some((i, small)) = images.iter().enumerate().find(|(_, im)| im.width < size || im.height < size) {
        return Err(Error::Data(format!(
            "image {i} is {}×{} pixels, smaller than the {size}×{size} patch: use a smaller patch or larger images",
            small.width, small.height
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut patches = Array2::zeros((count, size * size));
    for mut row in patches.rows_mut() {
        let image = &images[rng.random_range(0..images.len())];
        let top = rng.random_range(0..=image.height - size);
        let left = rng.random_range(0..=image.width - size);
        for r in 0..size {
            let start = (top + r) * image.width + left;
            for (c, &v) in image.pixels[start..start + size].iter().enumerate() {
                row[r * size + c] = v;
            }
        }
    }
    Ok(patches)
}

/// The UFLDL normalisation (MATH.md, "Natural image patches"), in place: subtract each
/// patch's (row's) mean; clip to ±3 standard deviations of all the values; rescale from
/// [−1, 1] to [0.1, 0.9], the range a sigmoid output can reconstruct. Statistics are taken
/// in f64. The standard deviation is the sample one (n − 1), as MATLAB's `std`.
pub fn normalize_ufldl(patches: &mut Array2<f32>) -> Result<()> {
    let n = patches.len();
    if n < 2 {
        return Err(Error::Data(format!("cannot normalise {n} value(s): there must be at least two")));
    }
    let width = patches.ncols() as f64;
    for mut row in patches.rows_mut() {
        let mean = row.iter().map(|&v| f64::from(v)).sum::<f64>() / width;
        row.mapv_inplace(|v| (f64::from(v) - mean) as f32);
    }
    let mean = patches.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
    let variance = patches.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let limit = 3.0 * variance.sqrt();
    if !(limit > 0.0 && limit.is_finite()) {
        return Err(Error::Data(
            "every patch is flat (no variation within any patch), so the patches cannot be normalised: \
             use images with contrast, larger patches or more of them"
                .into(),
        ));
    }
    patches.mapv_inplace(|v| ((f64::from(v).clamp(-limit, limit) / limit + 1.0) * 0.4 + 0.1) as f32);
    Ok(())
}

/// [`sample_patches`] followed by [`normalize_ufldl`]: values in [0.1, 0.9].
pub fn sample_normalized(images: &[GrayImage], size: usize, count: usize, seed: u64) -> Result<Array2<f32>> {
    let mut patches = sample_patches(images, size, count, seed)?;
    normalize_ufldl(&mut patches)?;
    Ok(patches)
}

/// Normalised patches from the pictures of a folder (or one picture file); also returns how
/// many pictures were read.
pub fn load_patches(path: &Path, size: usize, count: usize, seed: u64) -> Result<(Array2<f32>, usize)> {
    check_patch_budget(size, count)?;
    let images = read_image_folder(path)?;
    if let Some((p, small)) = images.iter().find(|(_, im)| im.width < size || im.height < size) {
        return Err(Error::file(
            p,
            format!(
                "is {}×{} pixels, smaller than the {size}×{size} patch: use a smaller patch or remove the image",
                small.width, small.height
            ),
        ));
    }
    let images: Vec<GrayImage> = images.into_iter().map(|(_, im)| im).collect();
    let patches = sample_normalized(&images, size, count, seed)?;
    Ok((patches, images.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(width: usize, height: usize) -> GrayImage {
        let pixels =
            (0..width * height).map(|i| ((i % width) * (i / width)) as f32 / (width * height) as f32).collect();
        GrayImage::new(width, height, pixels).unwrap()
    }

    #[test]
    fn patches_are_cut_from_the_image() {
        let image = ramp(20, 15);
        let patches = sample_patches(std::slice::from_ref(&image), 4, 50, 3).unwrap();
        assert_eq!(patches.dim(), (50, 16));
        for row in patches.rows() {
            // Find the patch's origin from its first pixel and check all 16 values come from there.
            let found = (0..=11)
                .flat_map(|y| (0..=16).map(move |x| (x, y)))
                .any(|(x, y)| (0..4).all(|r| (0..4).all(|c| row[r * 4 + c] == image.get(x + c, y + r))));
            assert!(found, "a patch is not a 4×4 window of the image");
        }
    }

    #[test]
    fn normalisation_matches_ufldl() {
        // A ramp, ten flat patches and one with an outlier: 12 patches of 4 values.
        let mut rows = vec![vec![0.0, 1.0, 2.0, 3.0]];
        rows.extend(std::iter::repeat_n(vec![5.0; 4], 10));
        rows.push(vec![0.0, 0.0, 0.0, 80.0]);
        let mut x = Array2::from_shape_vec((12, 4), rows.concat()).unwrap();
        normalize_ufldl(&mut x).unwrap();
        // Row means 1.5, 5, 20; the std is over all 48 centred values (n − 1).
        let mut centred = vec![-1.5, -0.5, 0.5, 1.5];
        centred.extend([0.0; 40]);
        centred.extend([-20.0, -20.0, -20.0, 60.0]);
        let var = centred.iter().map(|v: &f64| v * v).sum::<f64>() / 47.0;
        let limit = 3.0 * var.sqrt();
        assert!(limit < 60.0, "the test needs the outlier beyond 3σ");
        for (got, c) in x.iter().zip(centred) {
            let want = (c.clamp(-limit, limit) / limit + 1.0) * 0.4 + 0.1;
            assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
        }
        // Flat patches land exactly in the middle; the outlier is clipped to 0.9.
        assert!((x[[1, 0]] - 0.5).abs() < 1e-7);
        assert!((x[[11, 3]] - 0.9).abs() < 1e-7, "{}", x[[11, 3]]);
    }

    #[test]
    fn flat_patches_are_refused() {
        let mut x = Array2::from_elem((5, 4), 0.3f32);
        let e = normalize_ufldl(&mut x).unwrap_err().to_string();
        assert!(e.contains("flat"), "{e}");
    }

    #[test]
    fn small_images_and_zero_counts_are_refused() {
        let e = sample_patches(&[ramp(20, 15), ramp(7, 30)], 8, 10, 0).unwrap_err().to_string();
        assert!(e.contains("image 1 is 7×30") && e.contains("smaller than the 8×8 patch"), "{e}");
        assert!(sample_patches(&[ramp(20, 15)], 8, 0, 0).is_err());
        assert!(sample_patches(&[], 8, 10, 0).is_err());
    }
}
