//! Contact sheet of a cohort for people to look at: examples per class and centre, each
//! radiograph displayed (MONOCHROME1 inverted, windowed) with its lesion box drawn.

use crate::cohort::clinical::Label;
use crate::radiograph;
use crate::table::{LabelTable, Record, TableError};
use image::{Rgb, RgbImage, imageops};
use std::path::{Path, PathBuf};
use tirp_firmware::glyphs;

#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("{path}: {source}")]
    Image {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error(transparent)]
    Load(#[from] radiograph::LoadError),
    #[error("the table has no radiograph of {0}")]
    Empty(String),
}

const TILE: u32 = 224;
const GAP: u32 = 6;
const LABEL_W: u32 = 150;
const TEXT: Rgb<u8> = Rgb([235, 235, 235]);

/// Reads a stored radiograph as displayed grey levels 0..1 (bone bright).
pub fn load_display(
    record: &Record,
) -> Result<image::ImageBuffer<image::Luma<f32>, Vec<f32>>, PreviewError> {
    let img = radiograph::load_record(record)?;
    let (w, h) = (img.width, img.height);
    let mut v = img.pixels;
    let mut sorted: Vec<f32> = v.iter().step_by(5).copied().collect();
    sorted.sort_by(f32::total_cmp);
    let lo = sorted[sorted.len() / 100];
    let hi = sorted[sorted.len() * 995 / 1000].max(lo + 1.0);
    v.iter_mut()
        .for_each(|x| *x = ((*x - lo) / (hi - lo)).clamp(0.0, 1.0));
    Ok(image::ImageBuffer::from_raw(w, h, v).expect("dimensions match"))
}

fn draw_rect(img: &mut RgbImage, x0: u32, y0: u32, x1: u32, y1: u32, c: Rgb<u8>, thick: u32) {
    let (w, h) = img.dimensions();
    for t in 0..thick {
        for x in x0..=x1.min(w - 1) {
            for y in [y0 + t, y1.saturating_sub(t)] {
                if y < h {
                    img.put_pixel(x, y, c);
                }
            }
        }
        for y in y0..=y1.min(h - 1) {
            for x in [x0 + t, x1.saturating_sub(t)] {
                if x < w {
                    img.put_pixel(x, y, c);
                }
            }
        }
    }
}

fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str, scale: u32, c: Rgb<u8>) {
    let (w, h) = img.dimensions();
    glyphs::render(text, scale, |gx, gy| {
        if x + gx < w && y + gy < h {
            img.put_pixel(x + gx, y + gy, c);
        }
    });
}

/// Writes a contact sheet of `per_row` examples for each (class, centre) found in the table.
pub fn contact_sheet(
    labels: &Path,
    out: &Path,
    per_row: usize,
) -> Result<(usize, usize), PreviewError> {
    let table = LabelTable::load(labels)?;
    let mut rows: Vec<(String, Vec<&Record>)> = Vec::new();
    for label in [Label::Pbt, Label::Infection] {
        let mut centres: Vec<u8> = table.records.iter().filter_map(|r| r.centre).collect();
        centres.sort();
        centres.dedup();
        if centres.is_empty() {
            centres.push(0);
        }
        for c in centres {
            // First view of distinct patients, in table order: deterministic.
            let mut seen = std::collections::HashSet::new();
            let picks: Vec<&Record> = table
                .records
                .iter()
                .filter(|r| {
                    r.label == label
                        && r.centre.unwrap_or(0) == c
                        && seen.insert(r.patient_id.clone())
                })
                .take(per_row)
                .collect();
            if !picks.is_empty() {
                let name = if label == Label::Pbt {
                    "TUMOUR"
                } else {
                    "INFECTION"
                };
                rows.push((
                    if c > 0 {
                        format!("{name} C{c}")
                    } else {
                        name.to_owned()
                    },
                    picks,
                ));
            }
        }
    }
    if rows.is_empty() {
        return Err(PreviewError::Empty(labels.display().to_string()));
    }
    let header = 40;
    let width = LABEL_W + per_row as u32 * (TILE + GAP) + GAP;
    let height = header + rows.len() as u32 * (TILE + GAP) + GAP;
    let mut sheet = RgbImage::from_pixel(width, height, Rgb([24, 26, 30]));
    draw_text(
        &mut sheet,
        GAP,
        12,
        "SYNTHETIC COHORT - NOT PATIENT DATA - YELLOW: LESION BOX",
        2,
        TEXT,
    );
    let mut tiles = 0;
    for (ri, (name, picks)) in rows.iter().enumerate() {
        let y0 = header + ri as u32 * (TILE + GAP);
        draw_text(&mut sheet, GAP, y0 + TILE / 2 - 8, name, 2, TEXT);
        for (ci, rec) in picks.iter().enumerate() {
            let x0 = LABEL_W + ci as u32 * (TILE + GAP);
            let disp = load_display(rec)?;
            let (w, h) = disp.dimensions();
            let small = imageops::resize(&disp, TILE, TILE, imageops::FilterType::Triangle);
            for (x, y, p) in small.enumerate_pixels() {
                let g = (p.0[0] * 255.0).round() as u8;
                sheet.put_pixel(x0 + x, y0 + y, Rgb([g, g, g]));
            }
            if let Some(roi) = rec.roi {
                let sx = |v: u32| x0 + (v as u64 * TILE as u64 / w as u64) as u32;
                let sy = |v: u32| y0 + (v as u64 * TILE as u64 / h as u64) as u32;
                let (bx1, by1) = (
                    sx(roi.x + roi.w).min(x0 + TILE - 1),
                    sy(roi.y + roi.h).min(y0 + TILE - 1),
                );
                draw_rect(
                    &mut sheet,
                    sx(roi.x),
                    sy(roi.y),
                    bx1,
                    by1,
                    Rgb([255, 210, 0]),
                    2,
                );
            }
            let site = rec
                .site
                .map(|s| s.to_string().to_uppercase())
                .unwrap_or_default();
            let age = rec.age.map(|a| format!(" {a:.0}Y")).unwrap_or_default();
            draw_text(
                &mut sheet,
                x0 + 4,
                y0 + TILE - 12,
                &format!("{} {site}{age}", rec.patient_id),
                1,
                Rgb([120, 220, 255]),
            );
            tiles += 1;
        }
    }
    sheet.save(out).map_err(|source| PreviewError::Image {
        path: out.to_owned(),
        source,
    })?;
    Ok((rows.len(), tiles))
}
