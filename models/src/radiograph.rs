//! Reading stored radiographs (PNG, 8- or 16-bit, or JPEG) into the preprocessing's
//! `GrayImage`, in MONOCHROME2 orientation. Training, previews and any offline tool load
//! images through here so they all see the pixels inference sees.

use crate::cohort::acquisition::Photometric;
use crate::table::Record;
use std::path::{Path, PathBuf};
use tirp_firmware::preprocess::{GrayImage, PreprocessError};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Decode {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("{path}: {source}")]
    Pixels {
        path: PathBuf,
        source: PreprocessError,
    },
}

/// Decodes the image at `path` as grey levels in detector units (as stored).
pub fn load_gray(path: &Path) -> Result<GrayImage, LoadError> {
    let img = image::open(path)
        .map_err(|source| LoadError::Decode {
            path: path.to_owned(),
            source,
        })?
        .into_luma16();
    let (w, h) = img.dimensions();
    let pixels = img.into_raw().into_iter().map(f32::from).collect();
    GrayImage::new(w, h, pixels).map_err(|source| LoadError::Pixels {
        path: path.to_owned(),
        source,
    })
}

/// The record's radiograph in MONOCHROME2 (bone bright): MONOCHROME1 images are inverted.
/// Tables without a photometric column are taken as MONOCHROME2, as stored JPEG/PNG
/// exports of radiographs are.
pub fn load_record(record: &Record) -> Result<GrayImage, LoadError> {
    let mut img = load_gray(&record.path)?;
    if record.photometric == Some(Photometric::Monochrome1) {
        img.invert();
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cohort::clinical::Label;

    fn record(path: PathBuf, photometric: Option<Photometric>) -> Record {
        Record {
            path,
            patient_id: "P1".into(),
            label: Label::Pbt,
            age: None,
            sex: None,
            site: None,
            centre: None,
            split: None,
            roi: None,
            photometric,
            signs: None,
        }
    }

    #[test]
    fn sixteen_bit_png_loads_and_monochrome1_is_inverted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.png");
        let pixels: Vec<u16> = (0..32 * 16).map(|i| (i * 100) as u16).collect();
        let bytes = crate::cohort::encode_png16(&pixels, 32, 16).unwrap();
        std::fs::write(&path, bytes).unwrap();
        let m2 = load_record(&record(path.clone(), None)).unwrap();
        assert_eq!((m2.width, m2.height), (32, 16));
        assert_eq!(m2.pixels[5], 500.0);
        let m1 = load_record(&record(path.clone(), Some(Photometric::Monochrome1))).unwrap();
        // Inversion maps the range onto itself, brightest ↔ darkest.
        assert_eq!(m1.pixels[0], m2.pixels[32 * 16 - 1]);
        assert_eq!(m1.pixels[32 * 16 - 1], 0.0);
        let e = load_record(&record(dir.path().join("missing.png"), None)).unwrap_err();
        assert!(e.to_string().contains("missing.png"), "{e}");
    }
}
