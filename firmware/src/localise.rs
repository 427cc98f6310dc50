//! The automatic lesion localiser's contract, shared by training (tirp-models) and the engine,
//! so the geometry can never drift between them: the model input (the whole radiograph,
//! letterboxed into a square), the graph's outputs, the training targets and their decoding.
//!
//! The model is CenterNet-style: on a grid of `side / STRIDE` cells it predicts the
//! probability that a lesion centre falls in each cell ([`HEATMAP`]), the sub-cell position of
//! that centre ([`OFFSET`], 0–1 in cells) and the box's width and height ([`SIZE`], in input
//! pixels). The box is read at the most confident cell.
//!
//! **Zoom pass.** On the whole radiograph a lesion spans only a few cells, too coarse for a
//! tight box. When the bundle asks for it (`zoom` in its localiser spec), the same graph runs a
//! second time on a square window around the first box ([`zoom_window`], `zoom ×` its longer
//! side), where the lesion fills a quarter or so of the input, and that box is kept. Whether a
//! lesion was found at all is still the first pass's confidence: the window always holds
//! something lesion-like.

use crate::preprocess::{GrayImage, PreprocessError, Roi, percentiles};
use image::{ImageBuffer, Luma, imageops};

/// Input pixels per output cell.
pub const STRIDE: u32 = 4;
/// Graph input `[N, 1, side, side]`.
pub const INPUT: &str = "x";
/// `[N, 1, cells, cells]`, sigmoid probability of a lesion centre in the cell.
pub const HEATMAP: &str = "heatmap";
/// `[N, 2, cells, cells]`, box width and height in input pixels.
pub const SIZE: &str = "size";
/// `[N, 2, cells, cells]`, centre position inside the cell (x, y), in cells.
pub const OFFSET: &str = "offset";

/// The whole radiograph scaled (aspect kept) into the top-left of a `side × side` square,
/// intensity-scaled like the members' crops, the rest 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Letterbox {
    pub side: u32,
    /// Input pixels per image pixel.
    pub scale: f32,
    pub pixels: Vec<f32>,
}

/// Builds the localiser's input (before standardisation with the localiser's mean/std).
pub fn letterbox(
    image: &GrayImage,
    side: u32,
    low_percentile: f32,
    high_percentile: f32,
) -> Result<Letterbox, PreprocessError> {
    if image.width < 16 || image.height < 16 {
        return Err(PreprocessError::ImageTooSmall {
            width: image.width,
            height: image.height,
        });
    }
    if image.pixels.iter().any(|v| !v.is_finite()) {
        return Err(PreprocessError::NonFinite);
    }
    let long = image.width.max(image.height);
    let scale = side as f32 / long as f32;
    let w = ((image.width as f32 * scale).round() as u32).clamp(1, side);
    let h = ((image.height as f32 * scale).round() as u32).clamp(1, side);
    // The resampler clamps f32 samples to [0, 1]: map into that range first.
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in &image.pixels {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let range = if hi > lo { hi - lo } else { 1.0 };
    let unit: Vec<f32> = image.pixels.iter().map(|v| (v - lo) / range).collect();
    let buf: ImageBuffer<Luma<f32>, Vec<f32>> =
        ImageBuffer::from_raw(image.width, image.height, unit).expect("pixel count checked");
    let resized = imageops::resize(&buf, w, h, imageops::FilterType::Triangle).into_raw();
    let (plo, phi) = percentiles(&resized, low_percentile, high_percentile);
    let prange = phi - plo;
    let mut pixels = vec![0.0f32; (side * side) as usize];
    for y in 0..h as usize {
        for x in 0..w as usize {
            let v = resized[y * w as usize + x];
            pixels[y * side as usize + x] = if prange > 0.0 {
                ((v - plo) / prange).clamp(0.0, 1.0)
            } else {
                0.0
            };
        }
    }
    Ok(Letterbox {
        side,
        scale,
        pixels,
    })
}

/// A square region of the image, in image pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Window {
    pub x: u32,
    pub y: u32,
    pub side: u32,
}

/// The smallest zoom window (image pixels): below it the graph would see mostly upsampling.
pub const MIN_WINDOW: u32 = 32;

/// The zoom pass's window for a box: a square of `zoom ×` the box's longer side centred on
/// the box, shifted to stay inside the image; at least [`MIN_WINDOW`] and at most the image's
/// shorter side.
pub fn zoom_window(roi: Roi, zoom: f32, image_width: u32, image_height: u32) -> Window {
    let short = image_width.min(image_height).max(1);
    let want = (roi.w.max(roi.h) as f32 * zoom).round() as u32;
    let side = want.clamp(MIN_WINDOW.min(short), short);
    let place = |start: u32, len: u32, extent: u32| {
        let centre = start as f32 + len as f32 / 2.0;
        ((centre - side as f32 / 2.0).round().max(0.0) as u32).min(extent - side)
    };
    Window {
        x: place(roi.x, roi.w, image_width),
        y: place(roi.y, roi.h, image_height),
        side,
    }
}

/// The zoom pass's input: the window cut from the image and letterboxed like the whole image
/// (so it fills the square; `scale` is input pixels per image pixel of the window).
pub fn zoom_input(
    image: &GrayImage,
    window: Window,
    side: u32,
    low_percentile: f32,
    high_percentile: f32,
) -> Result<Letterbox, PreprocessError> {
    letterbox(&crop(image, window)?, side, low_percentile, high_percentile)
}

/// The window's pixels as an image of their own.
pub fn crop(image: &GrayImage, window: Window) -> Result<GrayImage, PreprocessError> {
    let Window { x, y, side } = window;
    assert!(
        x + side <= image.width && y + side <= image.height,
        "window {window:?} outside a {}×{} image",
        image.width,
        image.height
    );
    let mut pixels = Vec::with_capacity((side * side) as usize);
    for row in y..y + side {
        let at = (row * image.width + x) as usize;
        pixels.extend_from_slice(&image.pixels[at..at + side as usize]);
    }
    GrayImage::new(side, side, pixels)
}

/// A box in window coordinates, back in the image's.
pub fn from_window(roi: Roi, window: Window) -> Roi {
    Roi {
        x: roi.x + window.x,
        y: roi.y + window.y,
        ..roi
    }
}

/// The part of an image box inside the window, in window coordinates (`None`: no overlap).
pub fn to_window(roi: Roi, window: Window) -> Option<Roi> {
    let x0 = roi.x.max(window.x);
    let y0 = roi.y.max(window.y);
    let x1 = (roi.x + roi.w).min(window.x + window.side);
    let y1 = (roi.y + roi.h).min(window.y + window.side);
    (x1 > x0 && y1 > y0).then(|| Roi {
        x: x0 - window.x,
        y: y0 - window.y,
        w: x1 - x0,
        h: y1 - y0,
    })
}

/// The zoom pass's mirror images, (horizontal, vertical): the window itself first. With
/// `zoom_flips` in the spec the zoom pass runs on all four and keeps their mean box
/// ([`mean_box`]); mirroring is part of training's augmentation, so each is an independent
/// look, and averaging them tightens the box (validation recall at IoU ≥ 0.5 +1.4 points for
/// the shipped localiser).
pub const MIRRORS: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

/// The mirror images the zoom pass looks at: all of [`MIRRORS`] with `zoom_flips`, else
/// the window alone.
pub fn mirrors(zoom_flips: bool) -> &'static [(bool, bool)] {
    if zoom_flips { &MIRRORS } else { &MIRRORS[..1] }
}

/// The input mirrored left–right and/or top–bottom. Meant for zoom-pass inputs, whose square
/// window fills the whole input (a letterbox of a non-square image would move its padding).
pub fn mirror(input: &Letterbox, horizontal: bool, vertical: bool) -> Letterbox {
    let n = input.side as usize;
    let mut pixels = Vec::with_capacity(n * n);
    for y in 0..n {
        let sy = if vertical { n - 1 - y } else { y };
        let row = &input.pixels[sy * n..(sy + 1) * n];
        if horizontal {
            pixels.extend(row.iter().rev());
        } else {
            pixels.extend_from_slice(row);
        }
    }
    Letterbox { pixels, ..*input }
}

/// A box found on a mirrored `width × height` image, in the unmirrored image's pixels.
pub fn unmirror(roi: Roi, horizontal: bool, vertical: bool, width: u32, height: u32) -> Roi {
    Roi {
        x: if horizontal {
            width.saturating_sub(roi.x + roi.w)
        } else {
            roi.x
        },
        y: if vertical {
            height.saturating_sub(roi.y + roi.h)
        } else {
            roi.y
        },
        ..roi
    }
}

/// The box whose edges are the means of the boxes' edges (at least one pixel wide and high).
pub fn mean_box(boxes: &[Roi]) -> Roi {
    assert!(!boxes.is_empty(), "the mean of no boxes");
    let k = boxes.len() as f64;
    let mean = |f: fn(&Roi) -> u32| boxes.iter().map(|r| f(r) as f64).sum::<f64>() / k;
    let x0 = mean(|r| r.x).round();
    let y0 = mean(|r| r.y).round();
    let x1 = mean(|r| r.x + r.w).round().max(x0 + 1.0);
    let y1 = mean(|r| r.y + r.h).round().max(y0 + 1.0);
    Roi {
        x: x0 as u32,
        y: y0 as u32,
        w: (x1 - x0) as u32,
        h: (y1 - y0) as u32,
    }
}

/// Cells per side of the output grid.
pub fn cells(side: u32) -> usize {
    (side / STRIDE) as usize
}

/// A lesion box found by the localiser.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Detection {
    pub roi: Roi,
    /// The heat-map's value at the chosen cell (0–1).
    pub confidence: f32,
}

/// Reads the box at the most confident cell, in image pixels (clamped to the image).
/// `heatmap` is `cells²`, `size` and `offset` are `2 × cells²` (channel-major).
pub fn decode(
    heatmap: &[f32],
    size: &[f32],
    offset: &[f32],
    cells: usize,
    scale: f32,
    image_width: u32,
    image_height: u32,
) -> Detection {
    let n = cells * cells;
    assert!(heatmap.len() == n && size.len() == 2 * n && offset.len() == 2 * n);
    let (best, confidence) =
        heatmap
            .iter()
            .copied()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |acc, (i, v)| if v > acc.1 { (i, v) } else { acc },
            );
    let (iy, ix) = (best / cells, best % cells);
    let s = STRIDE as f32;
    let cx = (ix as f32 + offset[best].clamp(0.0, 1.0)) * s / scale;
    let cy = (iy as f32 + offset[n + best].clamp(0.0, 1.0)) * s / scale;
    let bw = (size[best].max(1.0)) / scale;
    let bh = (size[n + best].max(1.0)) / scale;
    let x0 = (cx - bw / 2.0).round().clamp(0.0, image_width as f32 - 1.0);
    let y0 = (cy - bh / 2.0)
        .round()
        .clamp(0.0, image_height as f32 - 1.0);
    let x1 = (cx + bw / 2.0).round().clamp(x0 + 1.0, image_width as f32);
    let y1 = (cy + bh / 2.0).round().clamp(y0 + 1.0, image_height as f32);
    Detection {
        roi: Roi {
            x: x0 as u32,
            y: y0 as u32,
            w: (x1 - x0) as u32,
            h: (y1 - y0) as u32,
        },
        confidence,
    }
}

/// Intersection over union of two boxes.
pub fn iou(a: Roi, b: Roi) -> f32 {
    let ix = (a.x + a.w).min(b.x + b.w).saturating_sub(a.x.max(b.x)) as f64;
    let iy = (a.y + a.h).min(b.y + b.h).saturating_sub(a.y.max(b.y)) as f64;
    let inter = ix * iy;
    let union = a.w as f64 * a.h as f64 + b.w as f64 * b.h as f64 - inter;
    if union > 0.0 {
        (inter / union) as f32
    } else {
        0.0
    }
}

/// What the graph should output for a lesion box (training targets), the inverse of
/// [`decode`]: a Gaussian peak of 1 at the centre cell (σ from the box size, as CenterNet
/// does), and size/offset at that cell (its index is returned; other cells carry no loss).
#[derive(Debug, Clone, PartialEq)]
pub struct Targets {
    pub heatmap: Vec<f32>,
    pub size: [f32; 2],
    pub offset: [f32; 2],
    pub centre: usize,
}

pub fn targets(roi: Roi, scale: f32, cells: usize) -> Targets {
    let s = STRIDE as f32;
    let cx = (roi.x as f32 + roi.w as f32 / 2.0) * scale / s;
    let cy = (roi.y as f32 + roi.h as f32 / 2.0) * scale / s;
    let ix = (cx.floor() as usize).min(cells - 1);
    let iy = (cy.floor() as usize).min(cells - 1);
    let (bw, bh) = (roi.w as f32 * scale, roi.h as f32 * scale);
    // A third of the box's smaller side in cells, at least half a cell.
    let sigma = (bw.min(bh) / s / 6.0).max(0.5);
    let mut heatmap = vec![0.0f32; cells * cells];
    for y in 0..cells {
        for x in 0..cells {
            let d2 = (x as f32 - ix as f32).powi(2) + (y as f32 - iy as f32).powi(2);
            heatmap[y * cells + x] = (-d2 / (2.0 * sigma * sigma)).exp();
        }
    }
    Targets {
        heatmap,
        size: [bw, bh],
        offset: [cx - ix as f32, cy - iy as f32],
        centre: iy * cells + ix,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roi(x: u32, y: u32, w: u32, h: u32) -> Roi {
        Roi { x, y, w, h }
    }

    #[test]
    fn decoding_the_targets_gives_the_box_back() {
        let c = cells(128);
        for (b, w, h) in [
            (roi(191, 241, 31, 71), 512, 512),
            (roi(0, 0, 40, 40), 512, 512),
            (roi(600, 300, 120, 90), 800, 600),
        ] {
            let scale = 128.0 / w.max(h) as f32;
            let t = targets(b, scale, c);
            assert!((t.heatmap[t.centre] - 1.0).abs() < 1e-6);
            let n = c * c;
            let mut size = vec![0.0; 2 * n];
            let mut offset = vec![0.0; 2 * n];
            size[t.centre] = t.size[0];
            size[n + t.centre] = t.size[1];
            offset[t.centre] = t.offset[0];
            offset[n + t.centre] = t.offset[1];
            let d = decode(&t.heatmap, &size, &offset, c, scale, w, h);
            assert!(iou(d.roi, b) > 0.95, "{b:?} → {:?}", d.roi);
            assert!((d.confidence - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn a_box_found_on_a_mirror_image_maps_back_and_boxes_average() {
        // A 4×4 input whose pixel value is its index: mirroring reverses rows / columns.
        let lb = Letterbox {
            side: 4,
            scale: 1.0,
            pixels: (0..16).map(|v| v as f32).collect(),
        };
        assert_eq!(mirror(&lb, false, false), lb);
        let h = mirror(&lb, true, false);
        assert_eq!(&h.pixels[..4], &[3.0, 2.0, 1.0, 0.0]);
        let v = mirror(&lb, false, true);
        assert_eq!(&v.pixels[..4], &[12.0, 13.0, 14.0, 15.0]);
        let hv = mirror(&lb, true, true);
        assert_eq!(hv.pixels[0], 15.0);
        assert_eq!(mirror(&hv, true, true), lb);
        // A box at (10, 20) 30×40 in a 100×200 image is at (60, 140) after both mirrors.
        let b = roi(10, 20, 30, 40);
        let m = unmirror(b, true, true, 100, 200);
        assert_eq!(m, roi(60, 140, 30, 40));
        assert_eq!(unmirror(m, true, true, 100, 200), b);
        for (fh, fv) in MIRRORS {
            assert_eq!(unmirror(unmirror(b, fh, fv, 100, 200), fh, fv, 100, 200), b);
        }
        assert_eq!(mean_box(&[b]), b);
        assert_eq!(
            mean_box(&[roi(10, 20, 30, 40), roi(14, 24, 34, 44)]),
            roi(12, 22, 32, 42)
        );
    }

    #[test]
    fn zoom_windows_are_centred_inside_and_round_trip() {
        // Centred on the box, `zoom ×` its longer side.
        let w = zoom_window(roi(200, 180, 40, 60), 4.0, 512, 512);
        assert_eq!(
            w,
            Window {
                x: 100,
                y: 90,
                side: 240
            }
        );
        // Shifted in at the edges, capped at the shorter side, floored at MIN_WINDOW.
        assert_eq!(
            zoom_window(roi(0, 0, 30, 30), 4.0, 512, 512),
            Window {
                x: 0,
                y: 0,
                side: 120
            }
        );
        assert_eq!(
            zoom_window(roi(500, 290, 12, 10), 4.0, 512, 300),
            Window {
                x: 464,
                y: 252,
                side: 48
            }
        );
        assert_eq!(zoom_window(roi(10, 10, 200, 100), 4.0, 512, 300).side, 300);
        assert_eq!(
            zoom_window(roi(100, 100, 2, 2), 4.0, 512, 512).side,
            MIN_WINDOW
        );
        assert_eq!(zoom_window(roi(0, 0, 2, 2), 4.0, 20, 20).side, 20);
        let b = roi(210, 200, 20, 30);
        let inside = to_window(b, w).unwrap();
        assert_eq!(inside, roi(110, 110, 20, 30));
        assert_eq!(from_window(inside, w), b);
        assert_eq!(to_window(roi(0, 0, 10, 10), w), None);
        assert_eq!(to_window(roi(90, 80, 20, 20), w), Some(roi(0, 0, 10, 10)));
    }

    #[test]
    fn zoom_input_sees_the_window_only() {
        let (w, h) = (64u32, 48u32);
        // Bright square at (40..48, 20..28) on a ramp.
        let px: Vec<f32> = (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                if (40..48).contains(&x) && (20..28).contains(&y) {
                    10.0
                } else {
                    (x % 5) as f32
                }
            })
            .collect();
        let img = GrayImage::new(w, h, px).unwrap();
        let win = Window {
            x: 36,
            y: 16,
            side: 16,
        };
        let c = crop(&img, win).unwrap();
        assert_eq!((c.width, c.height), (16, 16));
        assert_eq!(c.pixels[4 * 16 + 4], 10.0);
        assert_eq!(c.pixels[0], (36 % 5) as f32);
        let lb = zoom_input(&img, win, 32, 0.0, 1.0).unwrap();
        assert_eq!(lb.scale, 2.0);
        // The square fills the middle half of the input.
        assert!(lb.pixels[16 * 32 + 16] > 0.9 && lb.pixels[2 * 32 + 2] < 0.6);
    }

    #[test]
    fn iou_of_known_boxes() {
        assert_eq!(iou(roi(0, 0, 10, 10), roi(0, 0, 10, 10)), 1.0);
        assert_eq!(iou(roi(0, 0, 10, 10), roi(10, 0, 10, 10)), 0.0);
        assert!((iou(roi(0, 0, 10, 10), roi(5, 0, 10, 10)) - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn letterbox_keeps_the_aspect_and_pads_with_zero() {
        let (w, h) = (200u32, 100u32);
        let px: Vec<f32> = (0..w * h).map(|i| (i % w) as f32).collect();
        let img = GrayImage::new(w, h, px).unwrap();
        let lb = letterbox(&img, 64, 0.0, 1.0).unwrap();
        assert_eq!(lb.scale, 64.0 / 200.0);
        // 64 × 32 of image, the bottom half padding.
        assert!(lb.pixels[..64 * 32].iter().any(|&v| v > 0.9));
        assert!(lb.pixels[64 * 32..].iter().all(|&v| v == 0.0));
        // Left dark, right bright, as in the image.
        assert!(lb.pixels[64 * 10 + 2] < 0.1 && lb.pixels[64 * 10 + 61] > 0.9);
        assert!(letterbox(&GrayImage::new(8, 8, vec![0.0; 64]).unwrap(), 64, 0.0, 1.0).is_err());
    }
}
