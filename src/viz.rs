//! Pictures people look at: learned filters as a grid of tiles (MATH.md, "Seeing what a
//! hidden unit learned": x_j = W_ij/‖W_i‖, each tile contrast-normalised), originals above
//! their reconstructions, and the loss curve. PNG, written atomically.

use std::path::Path;

use image::{GrayImage, Luma, Rgb, RgbImage};
use ndarray::ArrayView2;

use crate::{Error, Result};

/// Tiles laid out in a near-square grid with a 1-pixel border, each pixel drawn `scale`×`scale`.
fn grid(tiles: &[Vec<f64>], width: usize, height: usize, columns: usize, scale: usize) -> GrayImage {
    let rows = tiles.len().div_ceil(columns);
    let cell_w = width * scale + 1;
    let cell_h = height * scale + 1;
    let mut img = GrayImage::from_pixel((columns * cell_w + 1) as u32, (rows * cell_h + 1) as u32, Luma([40]));
    for (t, tile) in tiles.iter().enumerate() {
        let (gx, gy) = ((t % columns) * cell_w + 1, (t / columns) * cell_h + 1);
        for (p, &v) in tile.iter().enumerate() {
            let level = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
            let (px, py) = (p % width, p / width);
            for dy in 0..scale {
                for dx in 0..scale {
                    img.put_pixel((gx + px * scale + dx) as u32, (gy + py * scale + dy) as u32, Luma([level]));
                }
            }
        }
    }
    img
}

/// Maps a tile to [0, 1] with 0.5 at zero, scaled by its largest magnitude (grey = 0).
fn contrast_symmetric(v: &[f64]) -> Vec<f64> {
    let max = v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    if max == 0.0 { vec![0.5; v.len()] } else { v.iter().map(|x| 0.5 + 0.5 * x / max).collect() }
}

/// A side (in pixels) for a tile, from the number of inputs: square images only.
pub fn square_side(inputs: usize) -> Result<usize> {
    let side = (inputs as f64).sqrt().round() as usize;
    if side * side != inputs {
        return Err(Error::Shape(format!(
            "{inputs} inputs do not form a square image: pictures need inputs of side × side pixels"
        )));
    }
    Ok(side)
}

fn upscale(side: usize) -> usize {
    (48 / side).clamp(1, 8)
}

/// One tile per hidden unit (row of `weights`, hidden × inputs): the input of norm 1 that
/// most activates it, x_j = W_ij/‖W_i‖, contrast-normalised per tile.
pub fn filter_grid(weights: ArrayView2<f64>) -> Result<GrayImage> {
    let side = square_side(weights.ncols())?;
    let tiles: Vec<Vec<f64>> = weights
        .rows()
        .into_iter()
        .map(|w| {
            let norm = w.dot(&w).sqrt();
            let x: Vec<f64> = w.iter().map(|v| if norm > 0.0 { v / norm } else { 0.0 }).collect();
            contrast_symmetric(&x)
        })
        .collect();
    let columns = (tiles.len() as f64).sqrt().ceil() as usize;
    Ok(grid(&tiles, side, side, columns, upscale(side)))
}

/// Originals (top row) above their reconstructions (bottom row), each image scaled by the
/// range of its original so the two are comparable.
pub fn reconstructions(originals: ArrayView2<f64>, reconstructed: ArrayView2<f64>) -> Result<GrayImage> {
    if originals.dim() != reconstructed.dim() {
        return Err(Error::Shape("originals and reconstructions differ in shape".into()));
    }
    let side = square_side(originals.ncols())?;
    let mut tiles = Vec::new();
    let scaled = |row: ndarray::ArrayView1<f64>, lo: f64, hi: f64| -> Vec<f64> {
        row.iter().map(|v| if hi > lo { (v - lo) / (hi - lo) } else { 0.5 }).collect()
    };
    let ranges: Vec<(f64, f64)> = originals
        .rows()
        .into_iter()
        .map(|r| r.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v))))
        .collect();
    for (r, &(lo, hi)) in originals.rows().into_iter().zip(&ranges) {
        tiles.push(scaled(r, lo, hi));
    }
    for (r, &(lo, hi)) in reconstructed.rows().into_iter().zip(&ranges) {
        tiles.push(scaled(r, lo, hi));
    }
    Ok(grid(&tiles, side, side, originals.nrows(), upscale(side)))
}

/// The cost per iteration, on a log scale when it spans more than a factor of 10, with light
/// grid lines at each power of ten.
pub fn loss_curve(costs: &[f64]) -> RgbImage {
    let (w, h, margin) = (640u32, 360u32, 20u32);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let finite: Vec<f64> = costs.iter().copied().filter(|c| c.is_finite()).collect();
    if finite.len() < 2 {
        return img;
    }
    let (lo, hi) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &c| (a.min(c), b.max(c)));
    let log = lo > 0.0 && hi / lo > 10.0;
    let f = |c: f64| if log { c.log10() } else { c };
    let (flo, fhi) = (f(lo), f(hi).max(f(lo) + 1e-12));
    let (pw, ph) = ((w - 2 * margin) as f64, (h - 2 * margin) as f64);
    let y_of = |c: f64| margin as f64 + ph * (1.0 - (f(c) - flo) / (fhi - flo));
    if log {
        for p in flo.floor() as i32..=fhi.ceil() as i32 {
            let y = y_of(10f64.powi(p));
            if (margin as f64..(h - margin) as f64).contains(&y) {
                for x in margin..w - margin {
                    img.put_pixel(x, y as u32, Rgb([225, 225, 225]));
                }
            }
        }
    }
    for x in margin..w - margin {
        img.put_pixel(x, h - margin, Rgb([0, 0, 0]));
    }
    for y in margin..=h - margin {
        img.put_pixel(margin, y, Rgb([0, 0, 0]));
    }
    let n = costs.len();
    let mut last: Option<(f64, f64)> = None;
    for (i, &c) in costs.iter().enumerate() {
        if !c.is_finite() {
            continue;
        }
        let x = margin as f64 + pw * i as f64 / (n - 1) as f64;
        let y = y_of(c);
        if let Some((x0, y0)) = last {
            let steps = ((x - x0).abs().max((y - y0).abs()) as usize).max(1);
            for s in 0..=steps {
                let t = s as f64 / steps as f64;
                let (px, py) = (x0 + t * (x - x0), y0 + t * (y - y0));
                for d in 0..2u32 {
                    img.put_pixel((px as u32).min(w - 1), (py as u32 + d).min(h - 1), Rgb([200, 40, 40]));
                }
            }
        }
        last = Some((x, y));
    }
    img
}

/// Encodes a picture as PNG and writes it atomically.
pub fn save_png<P, C>(img: &image::ImageBuffer<P, C>, path: &Path) -> Result<()>
where
    P: image::Pixel + image::PixelWithColorType,
    [P::Subpixel]: image::EncodableLayout,
    C: std::ops::Deref<Target = [P::Subpixel]>,
{
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .map_err(|e| Error::file(path, format!("cannot encode PNG: {e}")))?;
    crate::npy::write_atomic(path, |w| std::io::Write::write_all(w, &bytes).map_err(|e| e.to_string()))
}
