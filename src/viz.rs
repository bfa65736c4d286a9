//! Pictures people look at: learned filters as a grid of tiles (MATH.md, "Seeing what a
//! hidden unit learned": x_j = W_ij/‖W_i‖, each tile contrast-normalised), originals above
//! their reconstructions, and the loss curve. PNG, written atomically.

use std::path::Path;

use image::{GrayImage, Luma, Rgb, RgbImage};
use ndarray::ArrayView2;

use crate::data::whiten::Whitening;
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

/// [`filter_grid`] of first-layer weights as the pixels see them: W·M for a model trained on
/// whitened data (W itself lives in the whitened space and looks like noise).
pub fn filters_in_pixels(weights: ArrayView2<f64>, whitening: Option<&Whitening>) -> Result<GrayImage> {
    match whitening {
        Some(white) => filter_grid(white.filters_in_pixels(weights)?.view()),
        None => filter_grid(weights),
    }
}

/// [`reconstructions`] drawn in pixels: for a model trained on whitened data both rows are
/// unwhitened first (whitened values look like edge noise).
pub fn reconstructions_in_pixels(
    originals: ArrayView2<f64>,
    reconstructed: ArrayView2<f64>,
    whitening: Option<&Whitening>,
) -> Result<GrayImage> {
    match whitening {
        Some(white) => {
            let [originals, reconstructed] = white.unwhiten_each([originals, reconstructed])?;
            reconstructions(originals.view(), reconstructed.view())
        }
        None => reconstructions(originals, reconstructed),
    }
}

/// 3×5 pixel glyphs for tick labels, row by row from the top, 3 bits a row.
fn glyph(c: char) -> Option<[u8; 5]> {
    Some(match c {
        '0' => [0b111, 0b101, 0b101, 0b101, 0b111],
        '1' => [0b010, 0b110, 0b010, 0b010, 0b111],
        '2' => [0b111, 0b001, 0b111, 0b100, 0b111],
        '3' => [0b111, 0b001, 0b111, 0b001, 0b111],
        '4' => [0b101, 0b101, 0b111, 0b001, 0b001],
        '5' => [0b111, 0b100, 0b111, 0b001, 0b111],
        '6' => [0b111, 0b100, 0b111, 0b101, 0b111],
        '7' => [0b111, 0b001, 0b010, 0b010, 0b010],
        '8' => [0b111, 0b101, 0b111, 0b101, 0b111],
        '9' => [0b111, 0b101, 0b111, 0b001, 0b111],
        '.' => [0b000, 0b000, 0b000, 0b000, 0b010],
        '-' => [0b000, 0b000, 0b111, 0b000, 0b000],
        'e' => [0b000, 0b111, 0b111, 0b100, 0b111],
        _ => return None,
    })
}

const GLYPH_SCALE: u32 = 2;

fn text_width(text: &str) -> u32 {
    text.chars().count() as u32 * 4 * GLYPH_SCALE
}

/// Draws `text` with its top-left corner at (x, y).
fn draw_text(img: &mut RgbImage, text: &str, x: u32, y: u32) {
    for (i, c) in text.chars().enumerate() {
        let Some(rows) = glyph(c) else { continue };
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..3u32 {
                if bits & (0b100 >> col) == 0 {
                    continue;
                }
                for dy in 0..GLYPH_SCALE {
                    for dx in 0..GLYPH_SCALE {
                        let px = x + (i as u32 * 4 + col) * GLYPH_SCALE + dx;
                        let py = y + r as u32 * GLYPH_SCALE + dy;
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, Rgb([60, 60, 60]));
                        }
                    }
                }
            }
        }
    }
}

/// A short label for a tick value: 3 significant digits, exponent form when far from 1.
fn tick_label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        let p = a.log10().floor() as i32;
        let m = v / 10f64.powi(p);
        return if (m - m.round()).abs() < 1e-9 { format!("{}e{p}", m.round()) } else { format!("{m:.1}e{p}") };
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

/// The cost per iteration against the iteration, with labelled axes: a log scale with a
/// grid line and label at each power of ten when the cost spans more than a factor of 10,
/// otherwise five evenly spaced ticks.
pub fn loss_curve(costs: &[f64]) -> RgbImage {
    let (w, h) = (640u32, 360u32);
    let (left, right, top, bottom) = (64u32, 16u32, 12u32, 28u32);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let finite: Vec<f64> = costs.iter().copied().filter(|c| c.is_finite()).collect();
    if finite.len() < 2 {
        return img;
    }
    let (lo, hi) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &c| (a.min(c), b.max(c)));
    let log = lo > 0.0 && hi / lo > 10.0;
    let f = |c: f64| if log { c.log10() } else { c };
    let (flo, fhi) = (f(lo), f(hi).max(f(lo) + 1e-12));
    let (pw, ph) = ((w - left - right) as f64, (h - top - bottom) as f64);
    let y_of = |c: f64| top as f64 + ph * (1.0 - (f(c) - flo) / (fhi - flo));
    let x_of = |i: f64| left as f64 + pw * i / (costs.len() - 1) as f64;
    let ticks: Vec<f64> = if log {
        (flo.ceil() as i32..=fhi.floor() as i32).map(|p| 10f64.powi(p)).collect()
    } else {
        (0..5).map(|i| lo + (hi - lo) * i as f64 / 4.0).collect()
    };
    for t in ticks {
        let y = y_of(t).round() as u32;
        for x in left..w - right {
            img.put_pixel(x, y.min(h - 1), Rgb([225, 225, 225]));
        }
        let label = tick_label(t);
        draw_text(&mut img, &label, left.saturating_sub(text_width(&label) + 6), y.saturating_sub(5));
    }
    for x in left..w - right {
        img.put_pixel(x, h - bottom, Rgb([0, 0, 0]));
    }
    for y in top..=h - bottom {
        img.put_pixel(left, y, Rgb([0, 0, 0]));
    }
    let n = costs.len() - 1;
    for i in [0, n / 2, n] {
        let x = x_of(i as f64).round() as u32;
        for y in h - bottom..h - bottom + 4 {
            img.put_pixel(x.min(w - 1), y, Rgb([0, 0, 0]));
        }
        let label = i.to_string();
        let lx = x.saturating_sub(text_width(&label) / 2).min(w - text_width(&label) - 4);
        draw_text(&mut img, &label, lx, h - bottom + 8);
    }
    let mut last: Option<(f64, f64)> = None;
    for (i, &c) in costs.iter().enumerate() {
        if !c.is_finite() {
            continue;
        }
        let (x, y) = (x_of(i as f64), y_of(c));
        if let Some((x0, y0)) = last {
            let steps = ((x - x0).abs().max((y - y0).abs()).ceil() as usize).max(1);
            for s in 0..=steps {
                let t = s as f64 / steps as f64;
                let (px, py) = ((x0 + t * (x - x0)).round() as u32, (y0 + t * (y - y0)).round() as u32);
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    img.put_pixel((px + dx).min(w - 1), (py + dy).min(h - 1), Rgb([200, 40, 40]));
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
    crate::atomic::write_bytes(path, &bytes)
}
