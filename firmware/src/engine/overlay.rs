//! The heat-map overlay a radiographer sees: the crop the members looked at (with the ROI
//! box drawn and labelled by where it came from: "AUTO ROI 0.93" for the localiser's, with
//! its confidence, "ROI" for the caller's), the PBT-evidence map blended in the turbo colour map, a legend bar, and a
//! text band with the flag, the probability and "NOT FOR DIAGNOSTIC USE".

use super::{Prediction, RoiSource, cam};
use crate::glyphs;
use crate::preprocess::GrayImage;
use image::{ImageBuffer, Rgb, RgbImage};

/// Side of the displayed crop, pixels.
pub const PANEL: u32 = 384;
const LEGEND_W: u32 = 18;
pub(crate) const MARGIN: u32 = 8;
const TEXT_SCALE: u32 = 2;
pub(crate) const LINE_H: u32 = (glyphs::GLYPH_H + 3) * TEXT_SCALE;
/// Largest opacity of the colour map (at the map's maximum).
const MAX_ALPHA: f32 = 0.6;
/// Background of the panels and the text band.
pub(crate) const BACKGROUND: Rgb<u8> = Rgb([16, 16, 16]);
/// Colour of the ROI box.
pub(crate) const ROI_COLOUR: Rgb<u8> = Rgb([255, 255, 0]);
/// Colour of a localiser box below its minimum confidence (not classified).
pub(crate) const WEAK_ROI_COLOUR: Rgb<u8> = Rgb([150, 150, 150]);
/// Colour of the flag line of a "no lesion localised" result.
const REVIEW_COLOUR: Rgb<u8> = Rgb([255, 200, 60]);

/// Turbo (Mikhailov 2019), the published degree-5 polynomial fit: perceptually ordered,
/// near-black (0) → blue → green → red → dark red (1).
pub fn turbo(t: f32) -> [u8; 3] {
    let x = t.clamp(0.0, 1.0) as f64;
    let poly = |c: [f64; 6]| {
        let v = c[0] + x * (c[1] + x * (c[2] + x * (c[3] + x * (c[4] + x * c[5]))));
        (v.clamp(0.0, 1.0) * 255.0).round() as u8
    };
    [
        poly([
            0.13572138,
            4.61539260,
            -42.66032258,
            132.13108234,
            -152.94239396,
            59.28637943,
        ]),
        poly([
            0.09140261,
            2.19418839,
            4.84296658,
            -14.18503333,
            4.27729857,
            2.82956604,
        ]),
        poly([
            0.10667330,
            12.64194608,
            -60.58204836,
            110.36276771,
            -89.90310912,
            27.34824973,
        ]),
    ]
}

/// The overlay as an RGB image.
pub fn render(image: &GrayImage, p: &Prediction) -> RgbImage {
    let hm = &p.heatmap;
    let lines = text_lines(p);
    let width = MARGIN * 3 + PANEL + LEGEND_W + glyphs::text_width("MAX", TEXT_SCALE) + MARGIN;
    let width = width.max(text_band_width(&lines));
    let height = MARGIN * 2 + PANEL + MARGIN + LINE_H * lines.len() as u32 + MARGIN;
    let mut out: RgbImage = ImageBuffer::from_pixel(width, height, BACKGROUND);

    // The crop, windowed between its 1st and 99th percentile grey levels.
    let crop = hm.crop;
    let sample = |u: f32, v: f32| -> f32 {
        let x = (crop.x as f32 + u * crop.side as f32).floor() as i64;
        let y = (crop.y as f32 + v * crop.side as f32).floor() as i64;
        let x = x.clamp(0, image.width as i64 - 1) as usize;
        let y = y.clamp(0, image.height as i64 - 1) as usize;
        image.pixels[y * image.width as usize + x]
    };
    let mut grey: Vec<f32> = (0..PANEL * PANEL)
        .map(|i| {
            let (px, py) = (i % PANEL, i / PANEL);
            sample(
                (px as f32 + 0.5) / PANEL as f32,
                (py as f32 + 0.5) / PANEL as f32,
            )
        })
        .collect();
    window(&mut grey);
    let heat = cam::upsample(
        &hm.values,
        hm.side as usize,
        hm.side as usize,
        PANEL as usize,
    );
    let scale = if hm.max > 0.0 { 1.0 / hm.max } else { 0.0 };
    let (ox, oy) = (MARGIN, MARGIN);
    for py in 0..PANEL {
        for px in 0..PANEL {
            let i = (py * PANEL + px) as usize;
            out.put_pixel(ox + px, oy + py, blend(grey[i], heat[i] * scale));
        }
    }

    // The ROI box inside the crop.
    let to_panel = |v: f32, origin: i64| {
        ((v - origin as f32) / crop.side as f32 * PANEL as f32).round() as i64
    };
    let (x0, y0) = (
        to_panel(p.roi.x as f32, crop.x),
        to_panel(p.roi.y as f32, crop.y),
    );
    let (x1, y1) = (
        to_panel((p.roi.x + p.roi.w) as f32, crop.x) - 1,
        to_panel((p.roi.y + p.roi.h) as f32, crop.y) - 1,
    );
    draw_box(
        &mut out,
        (x0, y0, x1, y1),
        (ox, oy, PANEL, PANEL),
        roi_colour(p),
    );
    if let Some(label) = roi_label(p) {
        draw_roi_label(
            &mut out,
            &label,
            (x0, y0, x1),
            (ox, oy, PANEL, PANEL),
            roi_colour(p),
        );
    }

    // Legend: the colour bar, 0 at the bottom, the map's maximum at the top.
    let lx = ox + PANEL + MARGIN;
    for y in 0..PANEL {
        let c = turbo(1.0 - y as f32 / (PANEL - 1) as f32);
        for x in 0..LEGEND_W {
            out.put_pixel(lx + x, oy + y, Rgb(c));
        }
    }
    let white = Rgb([240, 240, 240]);
    let tx = lx + LEGEND_W + 4;
    draw_text(&mut out, "MAX", tx, oy, white);
    draw_text(
        &mut out,
        "0",
        tx,
        oy + PANEL - glyphs::GLYPH_H * TEXT_SCALE,
        white,
    );

    draw_text_band(&mut out, p, &lines, MARGIN, oy + PANEL + MARGIN * 2);
    out
}

/// Windows grey levels in place to [0, 1] between their 1st and 99th percentiles (robust
/// to a few saturated or dead pixels).
pub(crate) fn window(grey: &mut [f32]) {
    if grey.is_empty() {
        return;
    }
    let mut sorted = grey.to_vec();
    sorted.sort_by(f32::total_cmp);
    let lo = sorted[sorted.len() / 100];
    let hi = sorted[sorted.len() * 99 / 100];
    let range = if hi > lo { hi - lo } else { 1.0 };
    for g in grey {
        *g = ((*g - lo) / range).clamp(0.0, 1.0);
    }
}

/// A windowed grey level (`grey` in [0, 1]) with the map value `heat` (0 = none, 1 = the
/// map's maximum) blended in turbo colours; opacity grows with the value, so a cold map
/// leaves the radiograph untouched (pure grey).
pub(crate) fn blend(grey: f32, heat: f32) -> Rgb<u8> {
    let g = grey * 255.0;
    let h = heat.clamp(0.0, 1.0);
    let c = turbo(h);
    let a = MAX_ALPHA * h;
    let mix = |k: usize| (g * (1.0 - a) + c[k] as f32 * a).round() as u8;
    Rgb([mix(0), mix(1), mix(2)])
}

/// Outline of the box `(x0, y0, x1, y1)` (inclusive, coordinates relative to `clip`'s
/// origin), drawn only where it falls inside `clip = (x, y, w, h)`.
pub(crate) fn draw_box(
    img: &mut RgbImage,
    (x0, y0, x1, y1): (i64, i64, i64, i64),
    (ox, oy, w, h): (u32, u32, u32, u32),
    colour: Rgb<u8>,
) {
    let mut dot = |x: i64, y: i64| {
        if (0..w as i64).contains(&x) && (0..h as i64).contains(&y) {
            img.put_pixel(ox + x as u32, oy + y as u32, colour);
        }
    };
    for x in x0..=x1 {
        dot(x, y0);
        dot(x, y1);
    }
    for y in y0..=y1 {
        dot(x0, y);
        dot(x1, y);
    }
}

/// The ROI box's label: `AUTO ROI 0.93` (the localiser's, with its confidence), `ROI` (the
/// caller's), none for the whole image.
pub fn roi_label(p: &Prediction) -> Option<String> {
    match (p.roi_source, &p.localiser) {
        (RoiSource::Localiser, Some(l)) => Some(format!("AUTO ROI {:.2}", l.confidence)),
        (RoiSource::Caller, _) => Some("ROI".to_owned()),
        _ => None,
    }
}

pub(crate) fn roi_colour(p: &Prediction) -> Rgb<u8> {
    if p.review {
        WEAK_ROI_COLOUR
    } else {
        ROI_COLOUR
    }
}

/// Draws `label` just above the box whose top-left is `(x0, y0)` and right edge `x1`
/// (inside its top edge when there is no room above), kept within `clip = (x, y, w, h)`.
pub(crate) fn draw_roi_label(
    img: &mut RgbImage,
    label: &str,
    (x0, y0, _x1): (i64, i64, i64),
    (ox, oy, w, h): (u32, u32, u32, u32),
    colour: Rgb<u8>,
) {
    let tw = glyphs::text_width(label, TEXT_SCALE) as i64;
    let th = (glyphs::GLYPH_H * TEXT_SCALE) as i64;
    let x = x0.clamp(0, (w as i64 - tw).max(0));
    let y = if y0 - th - 2 >= 0 {
        y0 - th - 2
    } else {
        y0.max(0) + 3
    };
    let y = y.clamp(0, (h as i64 - th).max(0));
    // A dark backing so the label reads over bright bone.
    for dy in -1..=th {
        for dx in -1..=tw {
            let (px, py) = (x + dx, y + dy);
            if (0..w as i64).contains(&px) && (0..h as i64).contains(&py) {
                img.put_pixel(ox + px as u32, oy + py as u32, BACKGROUND);
            }
        }
    }
    let (iw, ih) = img.dimensions();
    glyphs::render(label, TEXT_SCALE, |dx, dy| {
        let (px, py) = (x + dx as i64, y + dy as i64);
        if px < w as i64 && py < h as i64 && ox + (px as u32) < iw && oy + (py as u32) < ih {
            img.put_pixel(ox + px as u32, oy + py as u32, colour);
        }
    });
}

/// Width of the text band for `lines`, margins included.
pub(crate) fn text_band_width(lines: &[String]) -> u32 {
    lines
        .iter()
        .map(|l| glyphs::text_width(l, TEXT_SCALE))
        .max()
        .unwrap_or(0)
        + 2 * MARGIN
}

/// Draws `lines` (from [`text_lines`]) top-down from `(x, y)`: the flag coloured by class,
/// the notice in yellow, the rest white.
pub(crate) fn draw_text_band(img: &mut RgbImage, p: &Prediction, lines: &[String], x: u32, y: u32) {
    let white = Rgb([240, 240, 240]);
    let mut ty = y;
    for (i, line) in lines.iter().enumerate() {
        let colour = match i {
            0 if p.review => REVIEW_COLOUR,
            0 if p.pbt => Rgb([255, 110, 90]),
            0 => Rgb([120, 200, 255]),
            _ if line == super::NOTICE => Rgb([255, 220, 0]),
            _ => white,
        };
        draw_text(img, line, x, ty, colour);
        ty += LINE_H;
    }
}

/// The text band's lines: flag, probability and threshold (for a "no lesion localised"
/// result: the localiser's confidence and minimum instead), bundle, notice.
pub(crate) fn text_lines(p: &Prediction) -> Vec<String> {
    // The glyph set is ASCII: the flag's dash is drawn as '-'.
    let flag = p.flag.to_uppercase().replace('—', "-");
    if p.review {
        let (c, min) = p
            .localiser
            .map_or((0.0, 0.0), |l| (l.confidence, l.min_confidence));
        return vec![
            flag,
            format!("LOCALISER CONFIDENCE {c:.2} BELOW {min:.2}: NOT CLASSIFIED"),
            format!("{} {}", p.bundle.name, p.bundle.version),
            super::NOTICE.to_owned(),
        ];
    }
    vec![
        flag,
        format!(
            "P(PBT) = {:.3}   THRESHOLD {:.3}   {}",
            p.probability,
            p.threshold,
            p.heatmap.method.as_str().to_uppercase()
        ),
        format!("{} {}", p.bundle.name, p.bundle.version),
        super::NOTICE.to_owned(),
    ]
}

fn draw_text(img: &mut RgbImage, text: &str, x: u32, y: u32, colour: Rgb<u8>) {
    let (w, h) = img.dimensions();
    glyphs::render(text, TEXT_SCALE, |dx, dy| {
        let (px, py) = (x + dx, y + dy);
        if px < w && py < h {
            img.put_pixel(px, py, colour);
        }
    });
}

/// The overlay encoded as PNG.
pub fn render_png(image: &GrayImage, p: &Prediction) -> Result<Vec<u8>, image::ImageError> {
    let img = render(image, p);
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png)?;
    Ok(bytes.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turbo_runs_dark_blue_to_dark_red() {
        let [r0, g0, b0] = turbo(0.0);
        assert!((r0 as u32 + g0 as u32 + b0 as u32) < 120, "starts dark");
        let [r, _, b] = turbo(0.25);
        assert!(b > 2 * r, "then blue");
        let [r1, g1, b1] = turbo(1.0);
        assert!(r1 > g1 && r1 > b1, "ends red");
        let [_, g, _] = turbo(0.5);
        assert!(g > 180, "green in the middle");
    }
}
