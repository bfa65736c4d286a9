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

/// A picture of filters: grey, or colour for filters over 3 channels.
#[derive(Clone, Debug)]
pub enum FilterPicture {
    /// Filters over one channel, in grey.
    Gray(GrayImage),
    /// Filters over 3 channels, drawn as red, green and blue.
    Rgb(RgbImage),
}

impl FilterPicture {
    /// Writes it as PNG, atomically ([`save_png`]).
    pub fn save(&self, path: &Path) -> Result<()> {
        match self {
            FilterPicture::Gray(img) => save_png(img, path),
            FilterPicture::Rgb(img) => save_png(img, path),
        }
    }

    /// (width, height) in pixels.
    pub fn dimensions(&self) -> (u32, u32) {
        match self {
            FilterPicture::Gray(img) => img.dimensions(),
            FilterPicture::Rgb(img) => img.dimensions(),
        }
    }
}

/// One tile per filter of W (f × c·k·k in PyTorch's layout: filter, channel, row, column),
/// each the input of norm 1 that most activates it, x = W_f/‖W_f‖ (MATH.md, "Seeing what a
/// hidden unit learned"), mapped to [0, 1] around grey = 0 by its largest magnitude. One
/// channel: a grey tile of k × k; three: a colour tile, channels 0, 1, 2 as red, green, blue;
/// any other count: one grey tile per channel, each filter's channels side by side in a row.
/// Errors: `Error::Shape` when W's columns are not `channels`·k² for a whole k.
pub fn conv_filter_grid(weights: ArrayView2<f64>, channels: usize) -> Result<FilterPicture> {
    let per_channel = weights.ncols().checked_div(channels).unwrap_or(0);
    let side = (per_channel as f64).sqrt().round() as usize;
    if channels == 0 || side == 0 || side * side * channels != weights.ncols() {
        return Err(Error::Shape(format!(
            "filters of {} values are not {channels} channel(s) of k × k: a convolution's W has channels·k² columns",
            weights.ncols()
        )));
    }
    let tiles: Vec<Vec<f64>> = weights
        .rows()
        .into_iter()
        .map(|w| {
            let norm = w.dot(&w).sqrt();
            let x: Vec<f64> = w.iter().map(|v| if norm > 0.0 { v / norm } else { 0.0 }).collect();
            contrast_symmetric(&x)
        })
        .collect();
    let scale = upscale(side);
    match channels {
        1 => {
            let columns = (tiles.len() as f64).sqrt().ceil() as usize;
            Ok(FilterPicture::Gray(grid(&tiles, side, side, columns, scale)))
        }
        3 => {
            let columns = (tiles.len() as f64).sqrt().ceil() as usize;
            Ok(FilterPicture::Rgb(colour_grid(&tiles, side, columns, scale)))
        }
        c => {
            // Row f holds filter f's c channels, each its own tile (same normalisation).
            let split: Vec<Vec<f64>> =
                tiles.iter().flat_map(|t| t.chunks(side * side).map(<[f64]>::to_vec).collect::<Vec<_>>()).collect();
            Ok(FilterPicture::Gray(grid(&split, side, side, c, scale)))
        }
    }
}

/// [`grid`] in colour: each tile holds 3 planes of side × side (red, green, blue).
fn colour_grid(tiles: &[Vec<f64>], side: usize, columns: usize, scale: usize) -> RgbImage {
    let rows = tiles.len().div_ceil(columns);
    let cell = side * scale + 1;
    let mut img = RgbImage::from_pixel((columns * cell + 1) as u32, (rows * cell + 1) as u32, Rgb([40, 40, 40]));
    let plane = side * side;
    for (t, tile) in tiles.iter().enumerate() {
        let (gx, gy) = ((t % columns) * cell + 1, (t / columns) * cell + 1);
        for p in 0..plane {
            let level = |c: usize| (tile[c * plane + p].clamp(0.0, 1.0) * 255.0).round() as u8;
            let colour = Rgb([level(0), level(1), level(2)]);
            let (px, py) = (p % side, p / side);
            for dy in 0..scale {
                for dx in 0..scale {
                    img.put_pixel((gx + px * scale + dx) as u32, (gy + py * scale + dy) as u32, colour);
                }
            }
        }
    }
    img
}

/// The filters a trained network's first layer applies to its input, as `filters.png` and
/// `wgnn visualize` draw them: for a layer stack, the first convolution's W
/// ([`conv_filter_grid`]; grey for 1 channel, colour for 3), or, when the stack starts with a
/// dense or maxout layer, its W over the input image; for a dense network, W⁽¹⁾ over square
/// inputs ([`filters_in_pixels`], unwhitened with `whitening`). Returns the picture and a
/// description ("20 filters of 1×5×5"). Errors: `Error::Shape` when the network has no such
/// layer (a stack with no convolution that does not start with a dense or maxout layer) or
/// its inputs are not square images.
pub fn first_layer_filters(
    spec: &crate::model::NetSpec,
    theta: &[f64],
    whitening: Option<&Whitening>,
) -> Result<(FilterPicture, String)> {
    use crate::model::{Layer, ThetaLayout};
    let layout = ThetaLayout::new(spec);
    if theta.len() != layout.len() {
        return Err(Error::Shape(format!("θ has {} values but the network needs {}", theta.len(), layout.len())));
    }
    let Some(stack) = &spec.net else {
        let w = layout.weight(theta, 0);
        let picture = FilterPicture::Gray(filters_in_pixels(w, whitening)?);
        return Ok((picture, format!("{} filters of {} inputs", w.nrows(), w.ncols())));
    };
    let shapes = stack.shapes()?;
    let mut l = 0;
    for (i, layer) in stack.layers.iter().enumerate() {
        if let Layer::Conv2d { kernel, .. } = *layer {
            let input = if i == 0 { stack.input } else { shapes[i - 1] };
            let w = layout.weight(theta, l);
            let what = format!("{} filters of {}×{kernel}×{kernel}", w.nrows(), input.channels);
            return Ok((conv_filter_grid(w, input.channels)?, what));
        }
        if layer.has_parameters() {
            l += 1;
        }
    }
    let input = stack.input;
    match stack.layers.first() {
        Some(Layer::Dense { .. } | Layer::Maxout { .. }) if input.height == input.width && input.height > 1 => {
            let w = layout.weight(theta, 0);
            let what = format!("{} filters of {}", w.nrows(), input.describe());
            Ok((conv_filter_grid(w, input.channels)?, what))
        }
        _ => Err(Error::Shape(format!(
            "{}: no convolution, and no dense or maxout layer reading square images first, so no filters over pixels to draw",
            spec.describe()
        ))),
    }
}

/// Originals (top row, labelled "original") above their reconstructions (bottom row,
/// labelled "reconstruction"), each image scaled by the range of its original so the two
/// are comparable.
pub fn reconstructions(originals: ArrayView2<f64>, reconstructed: ArrayView2<f64>) -> Result<GrayImage> {
    if originals.dim() != reconstructed.dim() {
        return Err(Error::Shape("originals and reconstructions differ in shape".into()));
    }
    if originals.nrows() == 0 {
        return Err(Error::Data("no examples to draw: give at least one (--count 1 or more)".into()));
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
    let tiles = grid(&tiles, side, side, originals.nrows(), upscale(side));
    // Each row named at its left, in the border's colour scheme: light text on dark grey.
    let labels = ["original", "reconstruction"];
    let margin = ROW_LABEL_MARGIN;
    let mut img = GrayImage::from_pixel(tiles.width() + margin, tiles.height().max(20), Luma([40]));
    image::imageops::replace(&mut img, &tiles, margin as i64, 0);
    let row_h = (tiles.height() - 1) / 2;
    for (r, label) in labels.iter().enumerate() {
        let y = (1 + r as u32 * row_h + row_h / 2).saturating_sub(4);
        draw_text(&mut img, label, 4, y, Luma([235]));
    }
    Ok(img)
}

/// The width in pixels of the row labels left of [`reconstructions`]' tiles: "reconstruction"
/// (14 characters of 8 pixels) and 8 pixels of space.
pub const ROW_LABEL_MARGIN: u32 = 14 * 8 + 8;

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

/// Pictures side by side, each under its title (one line of the 8×8 font), light text on the
/// dark grey of the tiles' borders: the lecture's comparison of filters learned with weight
/// decay alone and with the sparsity constraint added (`wgnn train autoencoder
/// --compare-sparsity`).
pub fn side_by_side(panels: &[(&GrayImage, &str)]) -> GrayImage {
    const TITLE: u32 = 20;
    const GAP: u32 = 16;
    let width = panels.iter().map(|(img, title)| img.width().max(text_width(title))).collect::<Vec<_>>();
    let height = panels.iter().map(|(img, _)| img.height()).max().unwrap_or(0) + TITLE;
    let total = width.iter().sum::<u32>() + GAP * (panels.len() as u32 + 1);
    let mut out = GrayImage::from_pixel(total, height + GAP / 2, Luma([40]));
    let mut x = GAP;
    for ((img, title), w) in panels.iter().zip(&width) {
        draw_text(&mut out, title, x + (w - text_width(title)) / 2, 6, Luma([235]));
        image::imageops::replace(&mut out, *img, (x + (w - img.width()) / 2) as i64, TITLE as i64);
        x += w + GAP;
    }
    out
}

/// Text colour for labels and titles.
const INK: Rgb<u8> = Rgb([40, 40, 40]);
/// The training cost's colour in loss.png.
pub const TRAINING_COLOUR: Rgb<u8> = Rgb([200, 40, 40]);
/// The validation metric's colour in loss.png.
pub const VALIDATION_COLOUR: Rgb<u8> = Rgb([30, 90, 200]);

/// Width in pixels of `text` in the 8×8 font.
fn text_width(text: &str) -> u32 {
    text.chars().count() as u32 * 8
}

/// Draws `text` in the embedded 8×8 bitmap font (font8x8: Basic Latin and Greek; other
/// characters are left blank) with its top-left corner at (x, y), clipped to the image.
fn draw_text<P: image::Pixel>(img: &mut image::ImageBuffer<P, Vec<P::Subpixel>>, text: &str, x: u32, y: u32, ink: P) {
    use font8x8::UnicodeFonts;
    for (i, c) in text.chars().enumerate() {
        let Some(rows) = font8x8::BASIC_FONTS.get(c).or_else(|| font8x8::GREEK_FONTS.get(c)) else { continue };
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..8u32 {
                // font8x8 stores each row with its leftmost pixel in bit 0.
                if bits & (1 << col) == 0 {
                    continue;
                }
                let (px, py) = (x + i as u32 * 8 + col, y + r as u32);
                if px < img.width() && py < img.height() {
                    img.put_pixel(px, py, ink);
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

/// What loss.png's axes say: the x axis counts iterations or epochs; the validation curve
/// (drawn when the history holds validation values) is named by `validation`.
#[derive(Clone, Debug, PartialEq)]
pub struct LossAxes {
    /// The x axis title: "iteration" or "epoch".
    pub steps: &'static str,
    /// The left axis title, for the training cost.
    pub cost: &'static str,
    /// The right axis title, for the held-out validation metric.
    pub validation: &'static str,
}

impl LossAxes {
    /// The axes of a run: minibatch methods (SGD, Adam) record one value per epoch, the
    /// others one per iteration; the validation metric is the classification error rate for
    /// a softmax output, else the squared-error data term (as `train` computes it).
    pub fn of(method: &crate::optim::Method, spec: &crate::model::NetSpec) -> LossAxes {
        let minibatch = matches!(method, crate::optim::Method::Minibatch(_));
        LossAxes {
            steps: if minibatch { "epoch" } else { "iteration" },
            cost: if minibatch { "training cost J(θ), epoch mean" } else { "training cost J(θ)" },
            validation: if spec.output == crate::model::Output::Softmax {
                "validation error rate"
            } else {
                "validation squared error"
            },
        }
    }
}

/// A thick polyline through the finite points of `values` (NaN and ∞ leave gaps).
fn polyline(img: &mut RgbImage, points: &[(f64, f64)], colour: Rgb<u8>) {
    let (w, h) = (img.width(), img.height());
    for pair in points.windows(2) {
        let ((x0, y0), (x, y)) = (pair[0], pair[1]);
        if !(x0.is_finite() && y0.is_finite() && x.is_finite() && y.is_finite()) {
            continue;
        }
        let steps = ((x - x0).abs().max((y - y0).abs()).ceil() as usize).max(1);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let (px, py) = ((x0 + t * (x - x0)).round() as u32, (y0 + t * (y - y0)).round() as u32);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                img.put_pixel((px + dx).min(w - 1), (py + dy).min(h - 1), colour);
            }
        }
    }
}

/// A step for about `target` ticks over `range`: 1, 2 or 5 times a power of ten.
fn nice_step(range: f64, target: f64) -> f64 {
    let raw = (range / target).max(f64::MIN_POSITIVE);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|&s| s >= raw).unwrap_or(10.0 * p)
}

/// loss.png: the training cost of each record of `history` against its iteration (or epoch,
/// [`LossAxes::steps`]), in red against the left axis; when the records hold validation
/// values, the validation metric in blue against its own right axis (its units differ: an
/// error rate, or the data term without the penalties). Titled axes and a legend. The cost
/// axis is logarithmic, with a grid line at each power of ten, when the cost spans more than
/// a factor of 10; otherwise it has five evenly spaced ticks.
pub fn loss_curve(history: &crate::optim::History, axes: &LossAxes) -> RgbImage {
    let records = &history.records;
    let validation: Vec<f64> = records.iter().map(|r| r.validation.unwrap_or(f64::NAN)).collect();
    let has_validation = validation.iter().filter(|v| v.is_finite()).count() >= 2;
    let (w, h) = (720u32, 400u32);
    let (left, right, top, bottom) = (72u32, if has_validation { 64 } else { 20 }, 36u32, 44u32);
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    let costs: Vec<f64> = records.iter().map(|r| r.cost).collect();
    let finite: Vec<f64> = costs.iter().copied().filter(|c| c.is_finite()).collect();
    if finite.len() < 2 {
        draw_text(&mut img, "fewer than 2 finite costs: no curve to draw", left, h / 2, INK);
        return img;
    }
    let (lo, hi) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &c| (a.min(c), b.max(c)));
    let log = lo > 0.0 && hi / lo > 10.0;
    let f = |c: f64| if log { c.log10() } else { c };
    let (flo, fhi) = (f(lo), f(hi).max(f(lo) + 1e-12));
    let (pw, ph) = ((w - left - right) as f64, (h - top - bottom) as f64);
    let y_of = |c: f64| top as f64 + ph * (1.0 - (f(c) - flo) / (fhi - flo));
    let (first, last) = (records[0].iteration as f64, records[records.len() - 1].iteration as f64);
    let span = (last - first).max(1.0);
    let x_of = |i: f64| left as f64 + pw * (i - first) / span;
    let ticks: Vec<f64> = if log {
        (flo.ceil() as i32..=fhi.floor() as i32).map(|p| 10f64.powi(p)).collect()
    } else {
        (0..5).map(|i| lo + (hi - lo) * i as f64 / 4.0).collect()
    };
    for t in ticks {
        let y = (y_of(t).round() as u32).min(h - 1);
        for x in left..w - right {
            img.put_pixel(x, y, Rgb([225, 225, 225]));
        }
        let label = tick_label(t);
        draw_text(&mut img, &label, left.saturating_sub(text_width(&label) + 6), y.saturating_sub(4), INK);
    }
    for x in left..w - right {
        img.put_pixel(x, h - bottom, Rgb([0, 0, 0]));
    }
    for y in top..=h - bottom {
        img.put_pixel(left, y, Rgb([0, 0, 0]));
    }
    // x ticks at whole multiples of a 1-2-5 step.
    let step = nice_step(span, 6.0).max(1.0);
    let mut t = (first / step).ceil() * step;
    while t <= last + 1e-9 {
        let x = (x_of(t).round() as u32).min(w - 1);
        for y in h - bottom..h - bottom + 4 {
            img.put_pixel(x, y, Rgb([0, 0, 0]));
        }
        let label = tick_label(t);
        let lx = x.saturating_sub(text_width(&label) / 2).min(w - text_width(&label) - 2);
        draw_text(&mut img, &label, lx, h - bottom + 7, INK);
        t += step;
    }
    let x_title = axes.steps;
    draw_text(&mut img, x_title, left + (pw as u32).saturating_sub(text_width(x_title)) / 2, h - 16, INK);
    // The legend doubles as the axis titles: a colour swatch, then the title.
    // One line each, above the plot.
    let mut legend_y = 4;
    let mut legend = |img: &mut RgbImage, text: &str, colour: Rgb<u8>| {
        for y in legend_y + 2..legend_y + 6 {
            for x in left..left + 16 {
                img.put_pixel(x, y, colour);
            }
        }
        draw_text(img, text, left + 22, legend_y, INK);
        legend_y += 14;
    };
    // "left" and "right" only when there are two axes.
    let cost_title = match (has_validation, log) {
        (true, true) => format!("{} (left, log scale)", axes.cost),
        (true, false) => format!("{} (left)", axes.cost),
        (false, true) => format!("{} (log scale)", axes.cost),
        (false, false) => axes.cost.to_string(),
    };
    legend(&mut img, &cost_title, TRAINING_COLOUR);
    if has_validation {
        legend(&mut img, &format!("{} (right)", axes.validation), VALIDATION_COLOUR);
        let finite: Vec<f64> = validation.iter().copied().filter(|v| v.is_finite()).collect();
        let (vlo, vhi) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let vhi = vhi.max(vlo + 1e-12);
        let vy_of = |v: f64| top as f64 + ph * (1.0 - (v - vlo) / (vhi - vlo));
        let axis_x = w - right;
        for y in top..=h - bottom {
            img.put_pixel(axis_x, y, VALIDATION_COLOUR);
        }
        for i in 0..5 {
            let v = vlo + (vhi - vlo) * i as f64 / 4.0;
            let y = (vy_of(v).round() as u32).min(h - 1);
            for x in axis_x..axis_x + 4 {
                img.put_pixel(x, y, VALIDATION_COLOUR);
            }
            draw_text(&mut img, &tick_label(v), axis_x + 6, y.saturating_sub(4), VALIDATION_COLOUR);
        }
        let points: Vec<(f64, f64)> =
            records.iter().zip(&validation).map(|(r, &v)| (x_of(r.iteration as f64), vy_of(v))).collect();
        polyline(&mut img, &points, VALIDATION_COLOUR);
    }
    let points: Vec<(f64, f64)> = records
        .iter()
        .map(|r| (x_of(r.iteration as f64), if r.cost.is_finite() { y_of(r.cost) } else { f64::NAN }))
        .collect();
    polyline(&mut img, &points, TRAINING_COLOUR);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{History, Record};

    fn history(validation: bool) -> History {
        let records = (1..=20)
            .map(|i| Record {
                iteration: i,
                cost: 10.0 / i as f64,
                grad_norm: 1.0,
                step_size: 0.1,
                evaluations: i,
                seconds: 0.0,
                validation: validation.then_some(0.5 - 0.01 * i as f64),
            })
            .collect();
        History { records }
    }

    fn count(img: &RgbImage, colour: Rgb<u8>) -> usize {
        img.pixels().filter(|p| **p == colour).count()
    }

    #[test]
    fn the_validation_curve_is_drawn_only_when_the_history_has_one() {
        let axes = LossAxes { steps: "epoch", cost: "training cost", validation: "validation error rate" };
        let with = loss_curve(&history(true), &axes);
        let without = loss_curve(&history(false), &axes);
        // Its line and right axis: hundreds of pixels; none without validation values.
        assert!(count(&with, VALIDATION_COLOUR) > 300, "{}", count(&with, VALIDATION_COLOUR));
        assert_eq!(count(&without, VALIDATION_COLOUR), 0);
        assert!(count(&without, TRAINING_COLOUR) > 300);
        // The titles are drawn: ink in the legend band and under the x axis.
        let ink_rows = |img: &RgbImage, ys: std::ops::Range<u32>| {
            ys.flat_map(|y| (0..img.width()).map(move |x| (x, y))).filter(|&(x, y)| *img.get_pixel(x, y) == INK).count()
        };
        assert!(ink_rows(&without, 0..14) > 50, "no legend text");
        assert!(ink_rows(&without, without.height() - 16..without.height()) > 20, "no x axis title");
    }

    #[test]
    fn reconstructions_label_their_two_rows() {
        let x = ndarray::Array2::from_shape_fn((3, 16), |(i, j)| (i + j) as f64 / 20.0);
        let img = reconstructions(x.view(), x.view()).unwrap();
        let light = |ys: std::ops::Range<u32>| {
            ys.flat_map(|y| (0..ROW_LABEL_MARGIN).map(move |x| (x, y)))
                .filter(|&(x, y)| img.get_pixel(x, y)[0] > 200)
                .count()
        };
        let half = img.height() / 2;
        // Text in the margin beside each row: "original" above, the longer "reconstruction" below.
        let (top, bottom) = (light(0..half), light(half..img.height()));
        assert!(top > 30 && bottom > top, "label pixels: top {top}, bottom {bottom}");
    }
}
