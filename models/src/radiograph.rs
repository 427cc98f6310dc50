//! Reading a label table's radiographs into the preprocessing's `GrayImage`, in
//! MONOCHROME2 orientation. Decoding itself (PNG 8/16-bit, JPEG, DICOM) lives in
//! `tirp_firmware::radiograph`, so training, previews and the box see the same pixels.

use crate::cohort::acquisition::Photometric;
use crate::table::Record;
use tirp_firmware::preprocess::GrayImage;
pub use tirp_firmware::radiograph::{LoadError, load_gray};

/// The record's radiograph in MONOCHROME2 (bone bright). DICOM files are brought to
/// MONOCHROME2 by their own PhotometricInterpretation; PNG/JPEG carry none, so a table
/// saying MONOCHROME1 inverts them. Tables without a photometric column are taken as
/// MONOCHROME2, as stored JPEG/PNG exports of radiographs are.
pub fn load_record(record: &Record) -> Result<GrayImage, LoadError> {
    let d = tirp_firmware::radiograph::load(&record.path)?;
    let mut img = d.image;
    if d.photometric.is_none() && record.photometric == Some(Photometric::Monochrome1) {
        img.invert();
    }
    Ok(img)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cohort::clinical::{Label, Site};
    use crate::cohort::{CohortConfig, dicom, encode_png16, plan, render};
    use rand::SeedableRng;
    use std::path::PathBuf;

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

    /// A centre-3 radiograph stored as PNG (table says MONOCHROME1) and as DICOM (the file
    /// says MONOCHROME1 too) loads to the same MONOCHROME2 pixels: inverted exactly once.
    #[test]
    fn dicom_and_png_of_a_monochrome1_centre_agree() {
        let cfg = CohortConfig {
            patients: 30,
            ..Default::default()
        };
        let patients = plan(&cfg).unwrap();
        let p = patients.iter().find(|p| p.centre == 3).unwrap();
        let img = render::radiograph(&mut rand_chacha::ChaCha8Rng::seed_from_u64(5), p, 64);
        let dir = tempfile::tempdir().unwrap();
        let png = dir.path().join("r.png");
        let dcm = dir.path().join("r.dcm");
        std::fs::write(
            &png,
            encode_png16(&img.pixels, img.width, img.height).unwrap(),
        )
        .unwrap();
        std::fs::write(&dcm, dicom::encode(p, 0, &img, cfg.seed).unwrap()).unwrap();
        let m1 = Some(Photometric::Monochrome1);
        let a = load_record(&record(png, m1)).unwrap();
        let b = load_record(&record(dcm.clone(), m1)).unwrap();
        assert_eq!(a, b);
        let raw = load_gray(&png_path(&dir)).unwrap();
        assert_ne!(raw, a, "the PNG as stored is MONOCHROME1");
        let header = tirp_firmware::radiograph::load(&dcm)
            .unwrap()
            .dicom
            .unwrap();
        assert_eq!(header.age, Some(p.age as f32));
        assert_eq!(header.site, Some(p.site));
    }

    fn png_path(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("r.png")
    }

    #[test]
    fn every_site_survives_the_dicom_body_part() {
        for s in Site::ALL {
            assert_eq!(
                tirp_firmware::radiograph::site_from_body_part(dicom::body_part(s)),
                Some(s)
            );
        }
    }
}
