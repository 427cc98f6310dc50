//! The one preprocessing implementation, shared by training (models crate) and inference.
//!
//! Radiograph (greyscale, MONOCHROME2: brighter = more attenuation) + lesion box →
//! square crop around the box with a margin → resize to the model's input size →
//! per-crop robust intensity scaling → standardisation with the training set's mean/std.
//!
//! The per-crop percentile scaling makes the input invariant to any increasing affine
//! map of grey levels (exposure, detector gain, bit depth), which differ between centres.

use image::{ImageBuffer, Luma, imageops};
use serde::{Deserialize, Serialize};

/// A greyscale radiograph in MONOCHROME2 orientation, values in detector units.
#[derive(Debug, Clone, PartialEq)]
pub struct GrayImage {
    pub width: u32,
    pub height: u32,
    /// Row-major, `width * height` values.
    pub pixels: Vec<f32>,
}

/// A box in pixel coordinates of the full image.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Roi {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// How model inputs are made; stored in every bundle and model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessSpec {
    /// Side of the square model input, in pixels.
    pub input_size: u32,
    /// Margin added on each side of the lesion box, as a fraction of its longer side.
    pub margin: f32,
    /// Training-set mean and standard deviation of the scaled crops.
    pub mean: f32,
    pub std: f32,
    /// Percentiles mapped to 0 and 1 by the per-crop intensity scaling.
    pub low_percentile: f32,
    pub high_percentile: f32,
}

impl Default for PreprocessSpec {
    fn default() -> Self {
        Self {
            input_size: 128,
            margin: 0.15,
            mean: 0.0,
            std: 1.0,
            low_percentile: 0.005,
            high_percentile: 0.995,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PreprocessError {
    #[error("image is {width}x{height}; at least 16x16 pixels are needed")]
    ImageTooSmall { width: u32, height: u32 },
    #[error("image has {got} pixel values, expected {width}x{height} = {}", width * height)]
    PixelCount { width: u32, height: u32, got: usize },
    #[error("ROI {roi:?} is empty")]
    EmptyRoi { roi: Roi },
    #[error("ROI {roi:?} lies outside the {width}x{height} image")]
    RoiOutside { roi: Roi, width: u32, height: u32 },
    #[error("image contains non-finite pixel values")]
    NonFinite,
    #[error("invalid preprocessing spec: {0}")]
    Spec(String),
}

impl GrayImage {
    pub fn new(width: u32, height: u32, pixels: Vec<f32>) -> Result<Self, PreprocessError> {
        if pixels.len() != width as usize * height as usize {
            return Err(PreprocessError::PixelCount {
                width,
                height,
                got: pixels.len(),
            });
        }
        Ok(Self {
            width,
            height,
            pixels,
        })
    }

    /// The whole image as a box.
    pub fn full_roi(&self) -> Roi {
        Roi {
            x: 0,
            y: 0,
            w: self.width,
            h: self.height,
        }
    }

    /// Turns MONOCHROME1 (brighter = less attenuation) into MONOCHROME2 in place.
    pub fn invert(&mut self) {
        let (lo, hi) = min_max(&self.pixels);
        for v in &mut self.pixels {
            *v = hi + lo - *v;
        }
    }
}

impl PreprocessSpec {
    pub fn validate(&self) -> Result<(), PreprocessError> {
        let bad = |m: &str| Err(PreprocessError::Spec(m.to_owned()));
        if !(8..=1024).contains(&self.input_size) {
            return bad("input_size must be in 8..=1024");
        }
        if !(0.0..=2.0).contains(&self.margin) {
            return bad("margin must be in 0..=2");
        }
        if !(self.std.is_finite() && self.std > 0.0 && self.mean.is_finite()) {
            return bad("std must be positive and mean finite");
        }
        if !(0.0 <= self.low_percentile
            && self.low_percentile < self.high_percentile
            && self.high_percentile <= 1.0)
        {
            return bad("percentiles must satisfy 0 <= low < high <= 1");
        }
        Ok(())
    }

    /// Full preprocessing: the model input for `roi` of `image`, `input_size²` values.
    pub fn model_input(&self, image: &GrayImage, roi: Roi) -> Result<Vec<f32>, PreprocessError> {
        let mut x = self.scaled_crop(image, roi)?;
        for v in &mut x {
            *v = (*v - self.mean) / self.std;
        }
        Ok(x)
    }

    /// Crop, resize and per-crop intensity scaling, before standardisation. Training uses
    /// this to compute `mean` and `std`.
    pub fn scaled_crop(&self, image: &GrayImage, roi: Roi) -> Result<Vec<f32>, PreprocessError> {
        self.validate()?;
        check_image(image)?;
        let square = self.crop_box(image, roi)?;
        let mut crop = crop_padded(image, square);
        // image's resampler clamps f32 samples to [0, 1]: bring the crop into that range
        // first (an affine map, which the percentile scaling below undoes anyway).
        let (lo, hi) = min_max(&crop);
        let range = if hi > lo { hi - lo } else { 1.0 };
        for v in &mut crop {
            *v = (*v - lo) / range;
        }
        let side = square.w;
        let buf: ImageBuffer<Luma<f32>, Vec<f32>> =
            ImageBuffer::from_raw(side, side, crop).expect("crop buffer has side² values");
        let resized = if side == self.input_size {
            buf
        } else {
            imageops::resize(
                &buf,
                self.input_size,
                self.input_size,
                imageops::FilterType::Triangle,
            )
        };
        let mut x = resized.into_raw();
        let (lo, hi) = percentiles(&x, self.low_percentile, self.high_percentile);
        let range = hi - lo;
        for v in &mut x {
            // A flat crop carries no contrast: map it to 0 rather than dividing by zero.
            *v = if range > 0.0 {
                ((*v - lo) / range).clamp(0.0, 1.0)
            } else {
                0.0
            };
        }
        Ok(x)
    }

    /// The square box (in image coordinates, possibly reaching past the borders) that is
    /// cropped for `roi`: centred on it, side = longer side × (1 + 2·margin).
    pub fn crop_box(&self, image: &GrayImage, roi: Roi) -> Result<SquareBox, PreprocessError> {
        if roi.w == 0 || roi.h == 0 {
            return Err(PreprocessError::EmptyRoi { roi });
        }
        let (w, h) = (image.width, image.height);
        if roi.x >= w
            || roi.y >= h
            || roi.x as u64 + roi.w as u64 > w as u64
            || roi.y as u64 + roi.h as u64 > h as u64
        {
            return Err(PreprocessError::RoiOutside {
                roi,
                width: w,
                height: h,
            });
        }
        let long = roi.w.max(roi.h) as f32;
        let side = ((long * (1.0 + 2.0 * self.margin)).round() as u32).max(2);
        let cx = roi.x as f32 + roi.w as f32 / 2.0;
        let cy = roi.y as f32 + roi.h as f32 / 2.0;
        let x0 = (cx - side as f32 / 2.0).round() as i64;
        let y0 = (cy - side as f32 / 2.0).round() as i64;
        Ok(SquareBox {
            x: x0,
            y: y0,
            w: side,
        })
    }
}

/// A square crop window; may extend past the image (padded by edge replication).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SquareBox {
    pub x: i64,
    pub y: i64,
    pub w: u32,
}

fn check_image(image: &GrayImage) -> Result<(), PreprocessError> {
    if image.width < 16 || image.height < 16 {
        return Err(PreprocessError::ImageTooSmall {
            width: image.width,
            height: image.height,
        });
    }
    if image.pixels.len() != image.width as usize * image.height as usize {
        return Err(PreprocessError::PixelCount {
            width: image.width,
            height: image.height,
            got: image.pixels.len(),
        });
    }
    if image.pixels.iter().any(|v| !v.is_finite()) {
        return Err(PreprocessError::NonFinite);
    }
    Ok(())
}

/// Copies the window out of the image, replicating edge pixels where it reaches past.
fn crop_padded(image: &GrayImage, b: SquareBox) -> Vec<f32> {
    let (w, h) = (image.width as i64, image.height as i64);
    let side = b.w as i64;
    let mut out = Vec::with_capacity((side * side) as usize);
    for dy in 0..side {
        let y = (b.y + dy).clamp(0, h - 1);
        let row = &image.pixels[(y * w) as usize..((y + 1) * w) as usize];
        for dx in 0..side {
            out.push(row[(b.x + dx).clamp(0, w - 1) as usize]);
        }
    }
    out
}

fn min_max(v: &[f32]) -> (f32, f32) {
    v.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

/// Nearest-rank percentiles `p_lo`, `p_hi` (fractions) of `v`.
pub fn percentiles(v: &[f32], p_lo: f32, p_hi: f32) -> (f32, f32) {
    let mut s = v.to_vec();
    let n = s.len();
    let rank = |p: f32| ((p * (n - 1) as f32).round() as usize).min(n - 1);
    let (i_lo, i_hi) = (rank(p_lo), rank(p_hi));
    let (_, &mut hi, _) = s.select_nth_unstable_by(i_hi, f32::total_cmp);
    let (_, &mut lo, _) = s[..=i_hi].select_nth_unstable_by(i_lo, f32::total_cmp);
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: u32, h: u32) -> GrayImage {
        let pixels = (0..h)
            .flat_map(|y| (0..w).map(move |x| (x + 3 * y) as f32))
            .collect();
        GrayImage::new(w, h, pixels).unwrap()
    }

    #[test]
    fn output_has_input_size_and_unit_range() {
        let img = ramp(300, 200);
        let spec = PreprocessSpec::default();
        let x = spec
            .scaled_crop(
                &img,
                Roi {
                    x: 50,
                    y: 40,
                    w: 80,
                    h: 60,
                },
            )
            .unwrap();
        assert_eq!(x.len(), 128 * 128);
        assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(x.contains(&0.0) && x.contains(&1.0));
    }

    #[test]
    fn invariant_to_affine_grey_maps_and_inversion_roundtrip() {
        let img = ramp(256, 256);
        let roi = Roi {
            x: 30,
            y: 30,
            w: 100,
            h: 120,
        };
        let spec = PreprocessSpec::default();
        let a = spec.scaled_crop(&img, roi).unwrap();
        let mut scaled = img.clone();
        for v in &mut scaled.pixels {
            *v = 7.5 * *v + 300.0;
        }
        let b = spec.scaled_crop(&scaled, roi).unwrap();
        let max_diff = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(max_diff < 1e-5, "{max_diff}");
        let mut inv = img.clone();
        inv.invert();
        inv.invert();
        assert_eq!(inv, img);
    }

    #[test]
    fn crop_box_is_square_centred_with_margin() {
        let img = ramp(512, 512);
        let spec = PreprocessSpec {
            margin: 0.25,
            ..Default::default()
        };
        let b = spec
            .crop_box(
                &img,
                Roi {
                    x: 100,
                    y: 200,
                    w: 40,
                    h: 80,
                },
            )
            .unwrap();
        assert_eq!(
            b,
            SquareBox {
                x: 60,
                y: 180,
                w: 120
            }
        );
        // Near the border the window reaches past the image and is padded.
        let b = spec
            .crop_box(
                &img,
                Roi {
                    x: 0,
                    y: 0,
                    w: 20,
                    h: 20,
                },
            )
            .unwrap();
        assert_eq!(
            b,
            SquareBox {
                x: -5,
                y: -5,
                w: 30
            }
        );
        assert_eq!(
            spec.scaled_crop(
                &img,
                Roi {
                    x: 0,
                    y: 0,
                    w: 20,
                    h: 20
                }
            )
            .unwrap()
            .len(),
            128 * 128
        );
    }

    #[test]
    fn standardisation_uses_spec_statistics() {
        let img = ramp(64, 64);
        let spec = PreprocessSpec {
            input_size: 32,
            mean: 0.5,
            std: 0.25,
            ..Default::default()
        };
        let roi = img.full_roi();
        let raw = spec.scaled_crop(&img, roi).unwrap();
        let std = spec.model_input(&img, roi).unwrap();
        for (r, s) in raw.iter().zip(&std) {
            assert!((s - (r - 0.5) / 0.25).abs() < 1e-6);
        }
    }

    #[test]
    fn bad_inputs_are_named() {
        let spec = PreprocessSpec::default();
        let tiny = GrayImage::new(1, 1, vec![0.0]).unwrap();
        assert!(matches!(
            spec.scaled_crop(&tiny, tiny.full_roi()),
            Err(PreprocessError::ImageTooSmall { .. })
        ));
        let img = ramp(100, 100);
        let e = spec
            .scaled_crop(
                &img,
                Roi {
                    x: 90,
                    y: 10,
                    w: 20,
                    h: 20,
                },
            )
            .unwrap_err();
        assert!(e.to_string().contains("outside"), "{e}");
        let e = spec
            .scaled_crop(
                &img,
                Roi {
                    x: 10,
                    y: 10,
                    w: 0,
                    h: 20,
                },
            )
            .unwrap_err();
        assert!(matches!(e, PreprocessError::EmptyRoi { .. }));
        assert!(GrayImage::new(4, 4, vec![0.0; 3]).is_err());
        let mut nan = img.clone();
        nan.pixels[5] = f32::NAN;
        assert_eq!(
            spec.scaled_crop(&nan, nan.full_roi()).unwrap_err(),
            PreprocessError::NonFinite
        );
        let bad = PreprocessSpec {
            std: 0.0,
            ..Default::default()
        };
        assert!(matches!(
            bad.scaled_crop(&img, img.full_roi()),
            Err(PreprocessError::Spec(_))
        ));
    }
}
