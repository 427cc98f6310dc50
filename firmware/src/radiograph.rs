//! Decoding stored radiographs into the preprocessing's [`GrayImage`], in MONOCHROME2
//! orientation (bone bright). One decoder for the box, training, previews and the CLI, so
//! they all see the same pixels.
//!
//! Accepted inputs:
//! - **PNG**, 8- or 16-bit, greyscale (with or without alpha), or RGB(A) whose channels are
//!   equal within [`GREY_TOLERANCE`] (greyscale saved as colour);
//! - **JPEG**, greyscale or RGB-encoded greyscale (same tolerance: chroma subsampling and
//!   quantisation leave the channels a few levels apart);
//! - **DICOM** (Part 10, with or without the 128-byte preamble) through dicom-rs: one
//!   frame, MONOCHROME1 or MONOCHROME2, 8 to 16 bits stored; the Modality LUT (Rescale
//!   Slope/Intercept) is applied and MONOCHROME1 is inverted, so the result is MONOCHROME2.
//!   Uncompressed, RLE and JPEG (baseline, lossless) transfer syntaxes decode; others are
//!   refused by name.
//!
//! PNG and JPEG carry no photometric interpretation: they are returned as stored
//! ([`Decoded::photometric`] is `None`), and the caller applies what it knows (a label
//! table's `photometric` column, the CLI's `--photometric`).
//!
//! Every failure is a typed [`DecodeError`] naming the problem: truncated file, colour
//! photograph, image too small, non-greyscale DICOM (naming its PhotometricInterpretation).

use crate::clinical::{Sex, Site};
use crate::preprocess::{GrayImage, PreprocessError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The smallest side the preprocessing accepts.
pub const MIN_SIDE: u32 = 16;

/// Largest mean channel spread (max − min of R, G, B, in 8-bit grey levels) of an RGB image
/// that is still taken as greyscale. JPEG's chroma quantisation of a grey image leaves about
/// one level; a colour photograph has tens.
pub const GREY_TOLERANCE: f32 = 3.0;
/// Largest spread of any one pixel of such an image (ringing at sharp edges).
pub const GREY_TOLERANCE_MAX: f32 = 48.0;

/// How grey levels relate to attenuation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Photometric {
    /// Brighter = more attenuation (bone white).
    Monochrome2,
    /// Inverted: brighter = less attenuation.
    Monochrome1,
}

impl Photometric {
    pub fn as_str(self) -> &'static str {
        match self {
            Photometric::Monochrome2 => "MONOCHROME2",
            Photometric::Monochrome1 => "MONOCHROME1",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "MONOCHROME2" => Ok(Photometric::Monochrome2),
            "MONOCHROME1" => Ok(Photometric::Monochrome1),
            other => Err(format!(
                "unknown photometric interpretation {other:?} (expected MONOCHROME1 or MONOCHROME2)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Png,
    Jpeg,
    Dicom,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Png => "PNG",
            Format::Jpeg => "JPEG",
            Format::Dicom => "DICOM",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// (No `source`: the message already carries the reason, shown once.)
    #[error("cannot read the file: {0}")]
    Io(std::io::Error),
    #[error("not a PNG, JPEG or DICOM file (it starts with {head})")]
    UnknownFormat { head: String },
    #[error("truncated {format} file: {detail}")]
    Truncated { format: Format, detail: String },
    #[error("corrupt or unsupported {format} file: {message}")]
    Corrupt { format: Format, message: String },
    #[error(
        "colour image (its R, G, B channels differ by {mean_spread:.1} grey levels on average, \
         {max_spread:.0} at most): a radiograph must be greyscale"
    )]
    Colour { mean_spread: f32, max_spread: f32 },
    #[error("image is {width}x{height}; at least {MIN_SIDE}x{MIN_SIDE} pixels are needed")]
    TooSmall { width: u32, height: u32 },
    #[error(
        "DICOM PhotometricInterpretation is {photometric} ({samples} sample(s) per pixel): \
         only greyscale MONOCHROME1 or MONOCHROME2 radiographs are accepted"
    )]
    DicomNotGrey { photometric: String, samples: u16 },
    #[error(
        "DICOM BitsAllocated {allocated} / BitsStored {stored} is not supported (8 to 16 bits stored)"
    )]
    DicomBits { allocated: u16, stored: u16 },
    #[error("DICOM: {0}")]
    Dicom(String),
    #[error(transparent)]
    Pixels(#[from] PreprocessError),
}

/// A decoding failure with the file it happened to. Its message is complete on one line
/// (the decode error is a field, not a `source`, so error chains do not repeat it).
#[derive(Debug, thiserror::Error)]
#[error("{}: {error}", path.display())]
pub struct LoadError {
    pub path: PathBuf,
    pub error: DecodeError,
}

/// What a DICOM header says about the patient (absent values stay `None`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DicomHeader {
    /// PatientAge in years (`045Y`, `006M`, `010W`, `003D` are all understood).
    pub age: Option<f32>,
    pub sex: Option<Sex>,
    /// BodyPartExamined as written.
    pub body_part: Option<String>,
    /// The lesion site the body part names, when it names one of ours.
    pub site: Option<Site>,
}

/// A decoded radiograph.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// MONOCHROME2 for DICOM; as stored for PNG/JPEG (see [`Decoded::photometric`]).
    pub image: GrayImage,
    pub format: Format,
    /// The photometric interpretation the file declared (DICOM only). When `Some`, the
    /// image has already been brought to MONOCHROME2.
    pub photometric: Option<Photometric>,
    /// Bits per stored sample (8 or 16 for PNG/JPEG; BitsStored for DICOM).
    pub bits: u16,
    pub dicom: Option<DicomHeader>,
}

/// Reads and decodes the radiograph at `path`.
pub fn load(path: &Path) -> Result<Decoded, LoadError> {
    let err = |error| LoadError {
        path: path.to_owned(),
        error,
    };
    let bytes = std::fs::read(path).map_err(|e| err(DecodeError::Io(e)))?;
    decode(&bytes).map_err(err)
}

/// The radiograph at `path` as decoded (PNG/JPEG as stored; DICOM in MONOCHROME2).
pub fn load_gray(path: &Path) -> Result<GrayImage, LoadError> {
    load(path).map(|d| d.image)
}

/// Decodes a radiograph from its bytes, recognising the format by its magic bytes.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let decoded = match sniff(bytes) {
        Some(Format::Png) => decode_raster(bytes, Format::Png)?,
        Some(Format::Jpeg) => decode_raster(bytes, Format::Jpeg)?,
        Some(Format::Dicom) => decode_dicom(bytes)?,
        None => {
            let head = bytes
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" ");
            return Err(DecodeError::UnknownFormat {
                head: if head.is_empty() {
                    "nothing: the file is empty".into()
                } else {
                    format!("bytes {head}")
                },
            });
        }
    };
    let img = &decoded.image;
    if img.width < MIN_SIDE || img.height < MIN_SIDE {
        return Err(DecodeError::TooSmall {
            width: img.width,
            height: img.height,
        });
    }
    if img.pixels.iter().any(|v| !v.is_finite()) {
        return Err(PreprocessError::NonFinite.into());
    }
    Ok(decoded)
}

fn sniff(bytes: &[u8]) -> Option<Format> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Format::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Format::Jpeg)
    } else if bytes.len() >= 132 && &bytes[128..132] == b"DICM" || bytes.starts_with(b"DICM") {
        Some(Format::Dicom)
    } else {
        None
    }
}

/// Decoders differ in how they treat a missing tail (some fill it with grey), so the end
/// markers are checked first: PNG ends with its IEND chunk, JPEG with EOI (FF D9).
fn check_complete(bytes: &[u8], format: Format) -> Result<(), DecodeError> {
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    let complete = match format {
        Format::Png => tail.windows(4).any(|w| w == b"IEND"),
        Format::Jpeg => tail.windows(2).any(|w| w == [0xFF, 0xD9]),
        Format::Dicom => true,
    };
    if complete {
        Ok(())
    } else {
        Err(DecodeError::Truncated {
            format,
            detail: format!(
                "{} bytes, no {} marker at the end",
                bytes.len(),
                if format == Format::Png {
                    "IEND"
                } else {
                    "end-of-image"
                }
            ),
        })
    }
}

fn decode_raster(bytes: &[u8], format: Format) -> Result<Decoded, DecodeError> {
    use image::{DynamicImage, ImageError, ImageFormat};
    check_complete(bytes, format)?;
    let fmt = match format {
        Format::Png => ImageFormat::Png,
        _ => ImageFormat::Jpeg,
    };
    let img = image::load_from_memory_with_format(bytes, fmt).map_err(|e| {
        let message = e.to_string();
        let eof = matches!(&e, ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
            || message.to_ascii_lowercase().contains("end of");
        if eof {
            DecodeError::Truncated {
                format,
                detail: message,
            }
        } else {
            DecodeError::Corrupt { format, message }
        }
    })?;
    let (width, height) = (img.width(), img.height());
    if width < MIN_SIDE || height < MIN_SIDE {
        return Err(DecodeError::TooSmall { width, height });
    }
    let (pixels, bits): (Vec<f32>, u16) = match img {
        DynamicImage::ImageLuma8(b) => (b.into_raw().into_iter().map(f32::from).collect(), 8),
        DynamicImage::ImageLumaA8(b) => (b.into_raw().chunks(2).map(|p| p[0] as f32).collect(), 8),
        DynamicImage::ImageLuma16(b) => (b.into_raw().into_iter().map(f32::from).collect(), 16),
        DynamicImage::ImageLumaA16(b) => {
            (b.into_raw().chunks(2).map(|p| p[0] as f32).collect(), 16)
        }
        DynamicImage::ImageRgb8(b) => (grey_of_rgb(&b.into_raw(), 3, 1.0)?, 8),
        DynamicImage::ImageRgba8(b) => (grey_of_rgb(&b.into_raw(), 4, 1.0)?, 8),
        DynamicImage::ImageRgb16(b) => (grey_of_rgb(&b.into_raw(), 3, 1.0 / 257.0)?, 16),
        DynamicImage::ImageRgba16(b) => (grey_of_rgb(&b.into_raw(), 4, 1.0 / 257.0)?, 16),
        other => {
            return Err(DecodeError::Corrupt {
                format,
                message: format!("unsupported pixel type {:?}", other.color()),
            });
        }
    };
    Ok(Decoded {
        image: GrayImage::new(width, height, pixels)?,
        format,
        photometric: None,
        bits,
        dicom: None,
    })
}

/// The mean of R, G, B per pixel, after checking the channels agree (`to8` brings a sample
/// to 8-bit grey levels for the tolerance).
fn grey_of_rgb<T: Copy + Into<f32>>(
    raw: &[T],
    stride: usize,
    to8: f32,
) -> Result<Vec<f32>, DecodeError> {
    let mut sum_spread = 0.0f64;
    let mut max_spread = 0.0f32;
    let grey: Vec<f32> = raw
        .chunks_exact(stride)
        .map(|p| {
            let (r, g, b) = (p[0].into(), p[1].into(), p[2].into());
            let spread = (r.max(g).max(b) - r.min(g).min(b)) * to8;
            sum_spread += spread as f64;
            max_spread = max_spread.max(spread);
            (r + g + b) / 3.0
        })
        .collect();
    let mean_spread = (sum_spread / grey.len().max(1) as f64) as f32;
    if mean_spread > GREY_TOLERANCE || max_spread > GREY_TOLERANCE_MAX {
        return Err(DecodeError::Colour {
            mean_spread,
            max_spread,
        });
    }
    Ok(grey)
}

fn decode_dicom(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    decode_dicom_object(&parse_dicom(bytes)?)
}

/// Parses a DICOM Part-10 file (with or without its 128-byte preamble).
pub fn parse_dicom(bytes: &[u8]) -> Result<dicom_object::DefaultDicomObject, DecodeError> {
    use dicom_object::OpenFileOptions;
    let body = if bytes.starts_with(b"DICM") || bytes.len() < 132 {
        bytes
    } else {
        &bytes[128..]
    };
    OpenFileOptions::new().from_reader(body).map_err(|e| {
        let message = error_chain(&e);
        if is_eof(&message) {
            DecodeError::Truncated {
                format: Format::Dicom,
                detail: message,
            }
        } else {
            DecodeError::Dicom(message)
        }
    })
}

/// The checks a DICOM radiograph must pass before its pixels are decoded (greyscale, 8 or
/// 16 bits allocated), and what its header says about the patient. Cheap: ingest runs it
/// to refuse an unusable image while the sender is still connected.
pub fn check_dicom_header(
    obj: &dicom_object::InMemDicomObject,
) -> Result<(Photometric, u16, DicomHeader), DecodeError> {
    use dicom_dictionary_std::tags;
    let text = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim().trim_end_matches('\0').trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let int = |tag| {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_int::<u16>().ok())
    };
    let photometric_text =
        text(tags::PHOTOMETRIC_INTERPRETATION).unwrap_or_else(|| "(missing)".into());
    let samples = int(tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let photometric = match Photometric::parse(&photometric_text) {
        Ok(p) if samples == 1 => p,
        _ => {
            return Err(DecodeError::DicomNotGrey {
                photometric: photometric_text,
                samples,
            });
        }
    };
    let allocated = int(tags::BITS_ALLOCATED).unwrap_or(0);
    let stored = int(tags::BITS_STORED).unwrap_or(allocated);
    if !matches!(allocated, 8 | 16) || !(1..=16).contains(&stored) || stored > allocated {
        return Err(DecodeError::DicomBits { allocated, stored });
    }
    let header = DicomHeader {
        // Patient's Age, else birth date against the acquisition (or study) date.
        age: text(tags::PATIENT_AGE)
            .and_then(|a| parse_age(&a))
            .or_else(|| {
                let birth = text(tags::PATIENT_BIRTH_DATE)?;
                let at = text(tags::ACQUISITION_DATE)
                    .or_else(|| text(tags::CONTENT_DATE))
                    .or_else(|| text(tags::STUDY_DATE))?;
                age_between(&birth, &at)
            }),
        sex: text(tags::PATIENT_SEX).and_then(|s| match s.as_str() {
            "M" => Some(Sex::Male),
            "F" => Some(Sex::Female),
            _ => None,
        }),
        site: text(tags::BODY_PART_EXAMINED).and_then(|b| site_from_body_part(&b)),
        body_part: text(tags::BODY_PART_EXAMINED),
    };
    Ok((photometric, stored, header))
}

/// Decodes a parsed DICOM radiograph to MONOCHROME2 (Modality LUT applied).
pub fn decode_dicom_object(obj: &dicom_object::DefaultDicomObject) -> Result<Decoded, DecodeError> {
    use dicom_pixeldata::PixelDecoder;
    let (photometric, stored, header) = check_dicom_header(obj)?;
    let pd = obj.decode_pixel_data().map_err(|e| {
        let message = error_chain(&e);
        if is_eof(&message) || message.contains("out of range") {
            DecodeError::Truncated {
                format: Format::Dicom,
                detail: message,
            }
        } else {
            DecodeError::Dicom(message)
        }
    })?;
    let (width, height) = (pd.columns(), pd.rows());
    if width < MIN_SIDE || height < MIN_SIDE {
        return Err(DecodeError::TooSmall { width, height });
    }
    let expected = width as usize * height as usize;
    // Modality LUT (Rescale Slope/Intercept) applied; VOI is for display, not the model.
    let pixels: Vec<f32> = pd.to_vec_frame(0).map_err(|e| {
        let message = error_chain(&e);
        if message.contains("out of range") || is_eof(&message) {
            DecodeError::Truncated {
                format: Format::Dicom,
                detail: message,
            }
        } else {
            DecodeError::Dicom(message)
        }
    })?;
    if pixels.len() < expected {
        return Err(DecodeError::Truncated {
            format: Format::Dicom,
            detail: format!(
                "pixel data holds {} of {width}x{height} = {expected} samples",
                pixels.len()
            ),
        });
    }
    let mut image = GrayImage::new(width, height, pixels[..expected].to_vec())?;
    if photometric == Photometric::Monochrome1 {
        image.invert();
    }
    Ok(Decoded {
        image,
        format: Format::Dicom,
        photometric: Some(photometric),
        bits: stored,
        dicom: Some(header),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn is_eof(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("fill whole buffer") || m.contains("end of file") || m.contains("unexpectedeof")
}

/// DICOM PatientAge (`nnnD|W|M|Y`) in years.
pub fn parse_age(s: &str) -> Option<f32> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: f32 = num.parse().ok()?;
    let years = match unit {
        "Y" => n,
        "M" => n / 12.0,
        "W" => n * 7.0 / 365.25,
        "D" => n / 365.25,
        _ => return None,
    };
    Some(years)
}

/// Age in years (whole years, as Patient's Age would say) from a DICOM birth date to a
/// DICOM date (`YYYYMMDD`); `None` when either is malformed or the age would be negative.
pub fn age_between(birth: &str, at: &str) -> Option<f32> {
    let ymd = |s: &str| -> Option<(i32, u32, u32)> {
        let s = s.trim();
        if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let (y, m, d) = (
            s[..4].parse().ok()?,
            s[4..6].parse().ok()?,
            s[6..].parse().ok()?,
        );
        ((1..=12).contains(&m) && (1..=31).contains(&d)).then_some((y, m, d))
    };
    let (by, bm, bd) = ymd(birth)?;
    let (ay, am, ad) = ymd(at)?;
    let mut years = ay - by;
    if (am, ad) < (bm, bd) {
        years -= 1;
    }
    (years >= 0).then_some(years as f32)
}

/// Our lesion site for a DICOM BodyPartExamined value (CID 4031 terms), when it names one.
pub fn site_from_body_part(body_part: &str) -> Option<Site> {
    match body_part.trim().to_ascii_uppercase().as_str() {
        "FEMUR" | "THIGH" => Some(Site::Femur),
        "TIBIA" | "LEG" => Some(Site::Tibia),
        "HUMERUS" | "ARM" | "UPPER ARM" => Some(Site::Humerus),
        "FOREARM" | "RADIUS" | "ULNA" => Some(Site::RadiusUlna),
        "FIBULA" => Some(Site::Fibula),
        "PELVIS" | "HIP" | "ILIUM" => Some(Site::Pelvis),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{ImageBuffer, Luma, Rgb};
    use std::io::Cursor;

    /// A radiograph-like 8-bit ramp with a bright disc.
    fn grey8(w: u32, h: u32) -> ImageBuffer<Luma<u8>, Vec<u8>> {
        ImageBuffer::from_fn(w, h, |x, y| {
            let d =
                ((x as f32 - w as f32 / 2.0).powi(2) + (y as f32 - h as f32 / 2.0).powi(2)).sqrt();
            Luma([(40.0 + x as f32 + if d < 10.0 { 120.0 } else { 0.0 }) as u8])
        })
    }

    fn encode(img: image::DynamicImage, fmt: image::ImageFormat) -> Vec<u8> {
        let mut c = Cursor::new(Vec::new());
        img.write_to(&mut c, fmt).unwrap();
        c.into_inner()
    }

    #[test]
    fn png_8_and_16_bit_decode_as_stored() {
        let g = grey8(40, 30);
        let d = decode(&encode(g.clone().into(), image::ImageFormat::Png)).unwrap();
        assert_eq!((d.format, d.bits, d.photometric), (Format::Png, 8, None));
        assert_eq!((d.image.width, d.image.height), (40, 30));
        assert_eq!(d.image.pixels[41], g.get_pixel(1, 1).0[0] as f32);

        let g16: ImageBuffer<Luma<u16>, Vec<u16>> =
            ImageBuffer::from_fn(32, 20, |x, y| Luma([(x * 100 + y * 7) as u16 + 1000]));
        let d = decode(&encode(g16.into(), image::ImageFormat::Png)).unwrap();
        assert_eq!(d.bits, 16);
        assert_eq!(d.image.pixels[32 + 3], (300 + 7 + 1000) as f32);
    }

    #[test]
    fn jpeg_grey_and_rgb_grey_accepted_colour_refused() {
        let g = grey8(64, 48);
        let d = decode(&encode(g.clone().into(), image::ImageFormat::Jpeg)).unwrap();
        assert_eq!((d.format, d.bits), (Format::Jpeg, 8));
        let err = d
            .image
            .pixels
            .iter()
            .zip(g.as_raw())
            .map(|(a, &b)| (a - b as f32).abs())
            .sum::<f32>()
            / d.image.pixels.len() as f32;
        assert!(err < 4.0, "lossy but close: {err}");

        // The same grey picture saved as an RGB JPEG.
        let rgb: ImageBuffer<Rgb<u8>, Vec<u8>> = ImageBuffer::from_fn(64, 48, |x, y| {
            let v = g.get_pixel(x, y).0[0];
            Rgb([v, v, v])
        });
        let d = decode(&encode(rgb.into(), image::ImageFormat::Jpeg)).unwrap();
        assert_eq!((d.image.width, d.image.height), (64, 48));

        // A colour photograph: hues across the frame.
        let photo: ImageBuffer<Rgb<u8>, Vec<u8>> = ImageBuffer::from_fn(64, 48, |x, y| {
            Rgb([(x * 4) as u8, (y * 5) as u8, 255 - (x * 3) as u8])
        });
        for fmt in [image::ImageFormat::Jpeg, image::ImageFormat::Png] {
            let e = decode(&encode(photo.clone().into(), fmt)).unwrap_err();
            assert!(matches!(e, DecodeError::Colour { .. }), "{e}");
            assert!(e.to_string().contains("greyscale"), "{e}");
        }
    }

    #[test]
    fn truncated_tiny_and_unknown_files_are_named() {
        let g = grey8(64, 48);
        for fmt in [image::ImageFormat::Png, image::ImageFormat::Jpeg] {
            let bytes = encode(g.clone().into(), fmt);
            let e = decode(&bytes[..bytes.len() / 2]).unwrap_err();
            assert!(matches!(e, DecodeError::Truncated { .. }), "{fmt:?}: {e}");
            assert!(e.to_string().contains("truncated"), "{e}");
        }
        let one: ImageBuffer<Luma<u8>, Vec<u8>> = ImageBuffer::from_pixel(1, 1, Luma([7]));
        let e = decode(&encode(one.into(), image::ImageFormat::Png)).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::TooSmall {
                    width: 1,
                    height: 1
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("1x1"), "{e}");
        let e = decode(b"hello world").unwrap_err();
        assert!(e.to_string().contains("not a PNG, JPEG or DICOM"), "{e}");
        assert!(decode(b"").unwrap_err().to_string().contains("empty"));
    }

    /// A small DICOM file: `photometric`, `samples` per pixel, 16 bits allocated / 12
    /// stored, Rescale Slope 2 and Intercept −100, pixel value `v(x, y) = 10x + y`.
    fn dicom(photometric: &str, samples: u16, w: u16, h: u16, preamble: bool) -> Vec<u8> {
        use dicom_core::{DataElement, PrimitiveValue, VR};
        use dicom_dictionary_std::{tags, uids};
        use dicom_object::{FileMetaTableBuilder, InMemDicomObject};
        let mut obj = InMemDicomObject::new_empty();
        let mut put = |tag, vr, v: PrimitiveValue| obj.put(DataElement::new(tag, vr, v));
        put(
            tags::SOP_CLASS_UID,
            VR::UI,
            uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION.into(),
        );
        put(tags::SOP_INSTANCE_UID, VR::UI, "2.25.1234".into());
        put(tags::PATIENT_AGE, VR::AS, "034Y".into());
        put(tags::PATIENT_SEX, VR::CS, "F".into());
        put(tags::BODY_PART_EXAMINED, VR::CS, "TIBIA".into());
        put(tags::SAMPLES_PER_PIXEL, VR::US, samples.into());
        put(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric.into());
        put(tags::ROWS, VR::US, h.into());
        put(tags::COLUMNS, VR::US, w.into());
        put(tags::BITS_ALLOCATED, VR::US, 16u16.into());
        put(tags::BITS_STORED, VR::US, 12u16.into());
        put(tags::HIGH_BIT, VR::US, 11u16.into());
        put(tags::PIXEL_REPRESENTATION, VR::US, 0u16.into());
        if samples > 1 {
            put(tags::PLANAR_CONFIGURATION, VR::US, 0u16.into());
        }
        put(tags::RESCALE_INTERCEPT, VR::DS, "-100".into());
        put(tags::RESCALE_SLOPE, VR::DS, "2".into());
        let px: Vec<u16> = (0..h as u32)
            .flat_map(|y| (0..w as u32).map(move |x| (10 * x + y) as u16))
            .flat_map(|v| std::iter::repeat_n(v, samples as usize))
            .collect();
        put(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(px.into()));
        let file = obj
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
            .unwrap();
        let mut bytes = Vec::new();
        file.write_all(&mut bytes).unwrap();
        if !preamble {
            bytes.drain(..128);
        }
        bytes
    }

    #[test]
    fn dicom_modality_lut_monochrome1_and_header() {
        let (w, h) = (40u16, 24u16);
        let modality = |x: u32, y: u32| 2.0 * (10 * x + y) as f32 - 100.0;
        let m2 = decode(&dicom("MONOCHROME2", 1, w, h, true)).unwrap();
        assert_eq!(m2.format, Format::Dicom);
        assert_eq!(m2.photometric, Some(Photometric::Monochrome2));
        assert_eq!(m2.bits, 12);
        assert_eq!(m2.image.pixels[3 * w as usize + 5], modality(5, 3));
        let hd = m2.dicom.as_ref().unwrap();
        assert_eq!(
            (hd.age, hd.sex, hd.site),
            (Some(34.0), Some(Sex::Female), Some(Site::Tibia))
        );

        // MONOCHROME1: the same stored values come back inverted over their range.
        let m1 = decode(&dicom("MONOCHROME1", 1, w, h, false)).unwrap();
        assert_eq!(m1.photometric, Some(Photometric::Monochrome1));
        let (lo, hi) = (modality(0, 0), modality(w as u32 - 1, h as u32 - 1));
        for (y, x) in [(0u32, 0u32), (3, 5), (23, 39)] {
            let i = (y * w as u32 + x) as usize;
            assert_eq!(m1.image.pixels[i], hi + lo - modality(x, y), "({x}, {y})");
        }
    }

    #[test]
    fn dicom_colour_truncated_and_tiny_are_refused() {
        let e = decode(&dicom("RGB", 3, 32, 32, true)).unwrap_err();
        assert!(matches!(e, DecodeError::DicomNotGrey { .. }), "{e}");
        assert!(
            e.to_string().contains("PhotometricInterpretation is RGB"),
            "{e}"
        );
        let e = decode(&dicom("PALETTE COLOR", 1, 32, 32, true)).unwrap_err();
        assert!(e.to_string().contains("PALETTE COLOR"), "{e}");

        let full = dicom("MONOCHROME2", 1, 64, 64, true);
        let e = decode(&full[..full.len() - 3000]).unwrap_err();
        assert!(matches!(e, DecodeError::Truncated { .. }), "{e}");
        let e = decode(&full[..400]).unwrap_err();
        assert!(
            matches!(e, DecodeError::Truncated { .. } | DecodeError::Dicom(_)),
            "{e}"
        );

        let e = decode(&dicom("MONOCHROME2", 1, 1, 1, true)).unwrap_err();
        assert!(
            matches!(
                e,
                DecodeError::TooSmall {
                    width: 1,
                    height: 1
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn ages_and_body_parts() {
        assert_eq!(parse_age("045Y"), Some(45.0));
        assert_eq!(age_between("19800615", "20260101"), Some(45.0));
        assert_eq!(age_between("19800615", "20260615"), Some(46.0));
        assert_eq!(age_between("20260102", "20260101"), None);
        assert_eq!(age_between("1980-06-15", "20260101"), None);
        assert_eq!(age_between("19801315", "20260101"), None);
        assert_eq!(parse_age("006M"), Some(0.5));
        assert_eq!(parse_age("45"), None);
        assert_eq!(parse_age(""), None);
        assert_eq!(site_from_body_part("forearm"), Some(Site::RadiusUlna));
        assert_eq!(site_from_body_part("CHEST"), None);
    }
}
