//! Synthetic radiographs as DX DICOM files (Digital X-Ray Image Storage – For
//! Presentation), with the patient's age, sex and body part in the header, so that the
//! whole DR-station flow can be exercised without real data. Every UID is derived from the
//! cohort seed: the same seed gives the same bytes.

use super::Patient;
use super::acquisition::{Centre, Photometric};
use super::clinical::{Sex, Site};
use super::render::Radiograph;
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

/// The cohort's acquisition date; fixed so that files are reproducible.
const STUDY_DATE: &str = "20260101";

pub use tirp_firmware::dicom::results::uid;

/// DICOM Body Part Examined for a lesion site.
pub fn body_part(site: Site) -> &'static str {
    match site {
        Site::Femur => "FEMUR",
        Site::Tibia => "TIBIA",
        Site::Humerus => "HUMERUS",
        Site::RadiusUlna => "FOREARM",
        Site::Fibula => "FIBULA",
        Site::Pelvis => "PELVIS",
    }
}

/// SNOMED CT code and meaning of a site, for the Anatomic Region Sequence.
fn anatomic_region(site: Site) -> (&'static str, &'static str) {
    match site {
        Site::Femur => ("71341001", "Femur"),
        Site::Tibia => ("12611008", "Tibia"),
        Site::Humerus => ("85050009", "Humerus"),
        Site::RadiusUlna => ("14975008", "Forearm"),
        Site::Fibula => ("87342007", "Fibula"),
        Site::Pelvis => ("12921003", "Pelvis"),
    }
}

fn view_position(view: u8) -> &'static str {
    match view {
        0 => "AP",
        1 => "LL",
        _ => "",
    }
}

/// Encodes one radiograph as a DX DICOM Part 10 file (explicit VR little endian).
pub fn encode(p: &Patient, view: u8, img: &Radiograph, seed: u64) -> Result<Vec<u8>, String> {
    let centre = Centre::get(p.centre);
    let seed = seed.to_string();
    let study = uid(&["study", &seed, &p.id]);
    let series = uid(&["series", &seed, &p.id, &view.to_string()]);
    let instance = uid(&["instance", &seed, &p.id, &view.to_string()]);
    let spacing = format!("{:.3}\\{:.3}", img.spacing_mm, img.spacing_mm);
    let birth_year = 2026 - p.age as i32;
    let mut obj = InMemDicomObject::new_empty();
    let mut put = |tag, vr, value: PrimitiveValue| {
        obj.put(DataElement::new(tag, vr, value));
    };
    let s = |v: &str| PrimitiveValue::from(v);
    put(tags::SPECIFIC_CHARACTER_SET, VR::CS, s("ISO_IR 100"));
    put(
        tags::IMAGE_TYPE,
        VR::CS,
        PrimitiveValue::Strs(["ORIGINAL", "PRIMARY"].map(String::from).into()),
    );
    put(
        tags::SOP_CLASS_UID,
        VR::UI,
        s(uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION),
    );
    put(tags::SOP_INSTANCE_UID, VR::UI, s(&instance));
    put(tags::STUDY_DATE, VR::DA, s(STUDY_DATE));
    put(tags::CONTENT_DATE, VR::DA, s(STUDY_DATE));
    put(tags::STUDY_TIME, VR::TM, s("120000"));
    put(tags::CONTENT_TIME, VR::TM, s("120000"));
    put(
        tags::ACCESSION_NUMBER,
        VR::SH,
        s(&format!("SYN{}", &p.id[1..])),
    );
    put(tags::MODALITY, VR::CS, s("DX"));
    put(
        tags::MANUFACTURER,
        VR::LO,
        s("DeepTIRP Edge synthetic cohort"),
    );
    put(
        tags::INSTITUTION_NAME,
        VR::LO,
        s(&format!("Synthetic Centre {}", p.centre)),
    );
    put(tags::REFERRING_PHYSICIAN_NAME, VR::PN, s(""));
    put(
        tags::STUDY_DESCRIPTION,
        VR::LO,
        s("Synthetic radiograph - not for diagnostic use"),
    );
    put(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        s(&format!("{} {}", body_part(p.site), view_position(view))),
    );
    put(
        tags::PATIENT_NAME,
        VR::PN,
        s(&format!("SYNTHETIC^{}", p.id)),
    );
    put(tags::PATIENT_ID, VR::LO, s(&p.id));
    put(
        tags::PATIENT_BIRTH_DATE,
        VR::DA,
        s(&format!("{birth_year:04}0101")),
    );
    put(
        tags::PATIENT_SEX,
        VR::CS,
        s(if p.sex == Sex::Male { "M" } else { "F" }),
    );
    put(tags::PATIENT_AGE, VR::AS, s(&format!("{:03}Y", p.age)));
    put(tags::BODY_PART_EXAMINED, VR::CS, s(body_part(p.site)));
    let (code, meaning) = anatomic_region(p.site);
    let region = InMemDicomObject::from_element_iter([
        DataElement::new(tags::CODE_VALUE, VR::SH, s(code)),
        DataElement::new(tags::CODING_SCHEME_DESIGNATOR, VR::SH, s("SCT")),
        DataElement::new(tags::CODE_MEANING, VR::LO, s(meaning)),
    ]);
    obj.put(DataElement::new(
        tags::ANATOMIC_REGION_SEQUENCE,
        VR::SQ,
        DataSetSequence::from(vec![region]),
    ));
    obj.put(DataElement::new(
        tags::ACQUISITION_CONTEXT_SEQUENCE,
        VR::SQ,
        DataSetSequence::<InMemDicomObject>::empty(),
    ));
    let mut put = |tag, vr, value: PrimitiveValue| {
        obj.put(DataElement::new(tag, vr, value));
    };
    put(tags::DETECTOR_TYPE, VR::CS, s("SCINTILLATOR"));
    put(tags::POSITIONER_TYPE, VR::CS, s("COLUMN"));
    // DX: INVERSE for MONOCHROME1, IDENTITY for MONOCHROME2.
    let lut_shape = if centre.photometric == Photometric::Monochrome1 {
        "INVERSE"
    } else {
        "IDENTITY"
    };
    put(tags::PRESENTATION_LUT_SHAPE, VR::CS, s(lut_shape));
    put(tags::VIEW_POSITION, VR::CS, s(view_position(view)));
    put(tags::STUDY_INSTANCE_UID, VR::UI, s(&study));
    put(tags::SERIES_INSTANCE_UID, VR::UI, s(&series));
    put(tags::STUDY_ID, VR::SH, s("1"));
    put(
        tags::SERIES_NUMBER,
        VR::IS,
        s(&(view as u32 + 1).to_string()),
    );
    put(tags::INSTANCE_NUMBER, VR::IS, s("1"));
    put(
        tags::PATIENT_ORIENTATION,
        VR::CS,
        PrimitiveValue::Strs(["L", "F"].map(String::from).into()),
    );
    put(
        tags::IMAGE_LATERALITY,
        VR::CS,
        s(if p.right_side { "R" } else { "L" }),
    );
    put(tags::BURNED_IN_ANNOTATION, VR::CS, s("YES"));
    put(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, s("00"));
    put(
        tags::PRESENTATION_INTENT_TYPE,
        VR::CS,
        s("FOR PRESENTATION"),
    );
    put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
    put(
        tags::PHOTOMETRIC_INTERPRETATION,
        VR::CS,
        s(centre.photometric.as_str()),
    );
    put(tags::ROWS, VR::US, PrimitiveValue::from(img.height as u16));
    put(
        tags::COLUMNS,
        VR::US,
        PrimitiveValue::from(img.width as u16),
    );
    put(tags::IMAGER_PIXEL_SPACING, VR::DS, s(&spacing));
    put(tags::PIXEL_SPACING, VR::DS, s(&spacing));
    put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
    put(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16));
    put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11u16));
    put(
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(0u16),
    );
    put(tags::PIXEL_INTENSITY_RELATIONSHIP, VR::CS, s("LOG"));
    // -1: higher stored values mean less X-ray intensity (more attenuation).
    let sign: i16 = if centre.photometric == Photometric::Monochrome2 {
        -1
    } else {
        1
    };
    put(
        tags::PIXEL_INTENSITY_RELATIONSHIP_SIGN,
        VR::SS,
        PrimitiveValue::from(sign),
    );
    put(tags::WINDOW_CENTER, VR::DS, s("2048"));
    put(tags::WINDOW_WIDTH, VR::DS, s("4096"));
    put(tags::RESCALE_INTERCEPT, VR::DS, s("0"));
    put(tags::RESCALE_SLOPE, VR::DS, s("1"));
    put(tags::RESCALE_TYPE, VR::LO, s("US"));
    put(
        tags::PIXEL_DATA,
        VR::OW,
        PrimitiveValue::U16(img.pixels.iter().copied().collect()),
    );
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .map_err(|e| e.to_string())?;
    let mut bytes = Vec::with_capacity(img.pixels.len() * 2 + 4096);
    file.write_all(&mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cohort::{CohortConfig, plan, render};
    use dicom_object::OpenFileOptions;

    #[test]
    fn writes_a_readable_dx_with_clinical_header() {
        let cfg = CohortConfig {
            patients: 30,
            ..Default::default()
        };
        let patients = plan(&cfg).unwrap();
        // A centre-3 patient: MONOCHROME1.
        let p = patients.iter().find(|p| p.centre == 3).unwrap();
        let img = render::radiograph(&mut p.view_rng(0), p, 512);
        let bytes = encode(p, 0, &img, cfg.seed).unwrap();
        assert_eq!(
            bytes,
            encode(p, 0, &img, cfg.seed).unwrap(),
            "deterministic"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.dcm");
        std::fs::write(&path, &bytes).unwrap();
        let obj = OpenFileOptions::new().open_file(&path).unwrap();
        let text = |t| obj.element(t).unwrap().to_str().unwrap().trim().to_string();
        assert_eq!(text(tags::MODALITY), "DX");
        assert_eq!(text(tags::PHOTOMETRIC_INTERPRETATION), "MONOCHROME1");
        assert_eq!(text(tags::PATIENT_AGE), format!("{:03}Y", p.age));
        assert_eq!(text(tags::BODY_PART_EXAMINED), body_part(p.site));
        assert_eq!(
            text(tags::PATIENT_SEX),
            if p.sex == Sex::Male { "M" } else { "F" }
        );
        let px: Vec<u16> = obj
            .element(tags::PIXEL_DATA)
            .unwrap()
            .uint16_slice()
            .unwrap()
            .to_vec();
        assert_eq!(px, img.pixels);
        assert!(uid(&["a"]).len() <= 64 && uid(&["a"]) != uid(&["b"]));
    }
}
