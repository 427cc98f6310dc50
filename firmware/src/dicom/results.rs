//! The result objects tirpd sends back to the DR station and the PACS for one radiograph:
//!
//! - a **Secondary Capture** image (RGB): the radiograph, at most [`MAX_SIDE`] pixels on its
//!   long side, with the ensemble heat-map blended in over the crop the members looked at, the
//!   ROI box, and a text band (flag, probability, threshold, bundle, "NOT FOR DIAGNOSTIC
//!   USE"). Every viewer can show it; nothing can parse it.
//! - a **Basic Text SR**: the same facts as TEXT items, for consoles that render SR as text.
//! - a **Comprehensive SR**: the finding as a SNOMED CT code and the probability as a NUM,
//!   for a PACS/RIS that reads SR content.
//!
//! All three join the source's study (Patient and General Study modules copied, missing
//! type-2 attributes written empty, never invented) in new series, and reference the source
//! image. UIDs are derived from the source SOP Instance UID, the bundle and the object kind
//! only, so reprocessing an image after a crash gives the same instances (the PACS sees a
//! resend, not a duplicate). Codes in the private scheme [`PRIVATE_SCHEME`] are declared in
//! the Coding Scheme Identification Sequence.

use crate::engine::overlay::{self, BACKGROUND, LINE_H, MARGIN};
use crate::engine::{NOTICE, Prediction, cam};
use crate::preprocess::GrayImage;
use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, Tag, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::mem::InMemElement;
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject};
use image::{ImageBuffer, Luma, RgbImage, imageops};
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

/// Manufacturer (0008,0070) of every result object.
pub const MANUFACTURER: &str = "DeepTIRP Edge";
/// Manufacturer's Model Name (0008,1090).
pub const MODEL_NAME: &str = "DeepTIRP Edge tirpd";
/// Longest side of the Secondary Capture's radiograph, pixels (larger images are shrunk).
pub const MAX_SIDE: u32 = 1024;
/// Series numbers of the result series: high, so they sort after the station's own.
pub const SERIES_NUMBER_SC: u32 = 9901;
pub const SERIES_NUMBER_BASIC_SR: u32 = 9902;
pub const SERIES_NUMBER_COMPREHENSIVE_SR: u32 = 9903;
/// Private coding scheme for concepts DICOM and SNOMED CT have no code for.
pub const PRIVATE_SCHEME: &str = "99TIRP";

#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("the source data set has no {0} (type 1, needed to reference it)")]
    MissingSource(&'static str),
    #[error("the image is {width}x{height} but holds {got} pixel values")]
    Image { width: u32, height: u32, got: usize },
    #[error("the heat-map is {side}x{side} but holds {got} values")]
    HeatMap { side: u32, got: usize },
    #[error("building the file meta group of the {kind}: {message}")]
    Meta { kind: &'static str, message: String },
}

type Result<T, E = ResultError> = std::result::Result<T, E>;

/// What a result is built from.
pub struct ResultContext<'a> {
    /// The received image's data set (patient, study, series, instance modules are read from it).
    pub source: &'a InMemDicomObject,
    /// The radiograph as decoded for the engine (MONOCHROME2), and the engine's answer for it.
    pub image: &'a GrayImage,
    pub prediction: &'a Prediction,
    /// tirpd's own version ("tirpd 0.1.0"); the bundle's name and version are added to
    /// Software Versions next to it.
    pub software_version: String,
    /// The box's identity: Device Serial Number, SC Device ID, the SR device observer.
    pub device_id: String,
    /// Wall clock of the result (content date/time); passed in so output is reproducible.
    pub time: SystemTime,
}

/// The three objects for one radiograph, ready for C-STORE or `write_to_file`.
pub struct ResultObjects {
    pub secondary_capture: DefaultDicomObject,
    pub basic_text_sr: DefaultDicomObject,
    pub comprehensive_sr: DefaultDicomObject,
}

/// The kinds of result object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SecondaryCapture,
    BasicTextSr,
    ComprehensiveSr,
}

impl Kind {
    pub fn sop_class_uid(self) -> &'static str {
        match self {
            Kind::SecondaryCapture => uids::SECONDARY_CAPTURE_IMAGE_STORAGE,
            Kind::BasicTextSr => uids::BASIC_TEXT_SR_STORAGE,
            Kind::ComprehensiveSr => uids::COMPREHENSIVE_SR_STORAGE,
        }
    }

    pub fn series_number(self) -> u32 {
        match self {
            Kind::SecondaryCapture => SERIES_NUMBER_SC,
            Kind::BasicTextSr => SERIES_NUMBER_BASIC_SR,
            Kind::ComprehensiveSr => SERIES_NUMBER_COMPREHENSIVE_SR,
        }
    }

    pub fn modality(self) -> &'static str {
        match self {
            Kind::SecondaryCapture => "OT",
            _ => "SR",
        }
    }

    /// Stable name: part of the UID derivation, so never change it.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SecondaryCapture => "secondary-capture",
            Kind::BasicTextSr => "basic-text-sr",
            Kind::ComprehensiveSr => "comprehensive-sr",
        }
    }

    fn series_description(self) -> &'static str {
        match self {
            Kind::SecondaryCapture => "DeepTIRP heat-map - NOT FOR DIAGNOSTIC USE",
            Kind::BasicTextSr => "DeepTIRP report - NOT FOR DIAGNOSTIC USE",
            Kind::ComprehensiveSr => "DeepTIRP coded report - NOT FOR DIAGNOSTIC USE",
        }
    }
}

/// A `2.25.<decimal>` UID (ISO/IEC 9834-8, UUID-derived form) from a hash of `parts`; the
/// same derivation as the synthetic cohort's files.
pub fn uid(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    format!("2.25.{}", u128::from_be_bytes(b))
}

/// The (Series Instance UID, SOP Instance UID) of the `kind` result for a source instance
/// and bundle.
pub fn result_uids(
    source_sop_instance_uid: &str,
    bundle_name: &str,
    bundle_version: &str,
    kind: Kind,
) -> (String, String) {
    let parts = |what| {
        uid(&[
            "deeptirp-result",
            what,
            kind.as_str(),
            source_sop_instance_uid,
            bundle_name,
            bundle_version,
        ])
    };
    (parts("series"), parts("instance"))
}

/// All three objects.
pub fn build(ctx: &ResultContext) -> Result<ResultObjects> {
    Ok(ResultObjects {
        secondary_capture: secondary_capture(ctx)?,
        basic_text_sr: basic_text_sr(ctx)?,
        comprehensive_sr: comprehensive_sr(ctx)?,
    })
}

/// The heat-map picture of the Secondary Capture: the whole radiograph (shrunk to at most
/// [`MAX_SIDE`] on its long side), windowed like the overlay, the map blended over the
/// crop, the ROI box, and the overlay's text band underneath.
pub fn heatmap_image(image: &GrayImage, p: &Prediction) -> Result<RgbImage> {
    let (w, h) = (image.width, image.height);
    if w == 0 || h == 0 || image.pixels.len() != w as usize * h as usize {
        return Err(ResultError::Image {
            width: w,
            height: h,
            got: image.pixels.len(),
        });
    }
    let hm = &p.heatmap;
    if hm.side == 0 || hm.values.len() != hm.side as usize * hm.side as usize {
        return Err(ResultError::HeatMap {
            side: hm.side,
            got: hm.values.len(),
        });
    }
    let scale = (MAX_SIDE as f64 / w.max(h) as f64).min(1.0);
    let (ow, oh) = (
        ((w as f64 * scale).round() as u32).max(1),
        ((h as f64 * scale).round() as u32).max(1),
    );
    // image's resampler clamps f32 samples to [0, 1]: bring them there first (affine, so
    // the percentile window below is unchanged by it).
    let (lo, hi) = image
        .pixels
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let range = if hi > lo { hi - lo } else { 1.0 };
    let unit: Vec<f32> = image.pixels.iter().map(|v| (v - lo) / range).collect();
    let mut grey = if (ow, oh) == (w, h) {
        unit
    } else {
        let buf: ImageBuffer<Luma<f32>, Vec<f32>> =
            ImageBuffer::from_raw(w, h, unit).expect("w·h values checked above");
        imageops::resize(&buf, ow, oh, imageops::FilterType::Triangle).into_raw()
    };
    overlay::window(&mut grey);

    let lines = overlay::text_lines(p);
    let width = ow.max(overlay::text_band_width(&lines));
    let height = oh + MARGIN + LINE_H * lines.len() as u32 + MARGIN;
    let mut out: RgbImage = ImageBuffer::from_pixel(width, height, BACKGROUND);

    // The map covers the crop (which may reach past the borders) at output scale.
    let crop = hm.crop;
    let n = ((crop.side as f64 * scale).round() as usize).max(1);
    let heat = cam::upsample(&hm.values, hm.side as usize, hm.side as usize, n);
    let (cx, cy) = (
        (crop.x as f64 * scale).round() as i64,
        (crop.y as f64 * scale).round() as i64,
    );
    let norm = if hm.max > 0.0 { 1.0 / hm.max } else { 0.0 };
    for y in 0..oh {
        for x in 0..ow {
            let (gx, gy) = (x as i64 - cx, y as i64 - cy);
            let v = if (0..n as i64).contains(&gx) && (0..n as i64).contains(&gy) {
                heat[gy as usize * n + gx as usize] * norm
            } else {
                0.0
            };
            out.put_pixel(x, y, overlay::blend(grey[(y * ow + x) as usize], v));
        }
    }
    let to_out = |v: u32| (v as f64 * scale).round() as i64;
    let roi = p.roi;
    overlay::draw_box(
        &mut out,
        (
            to_out(roi.x),
            to_out(roi.y),
            to_out(roi.x + roi.w) - 1,
            to_out(roi.y + roi.h) - 1,
        ),
        (0, 0, ow, oh),
        overlay::roi_colour(p),
    );
    if let Some(label) = overlay::roi_label(p) {
        overlay::draw_roi_label(
            &mut out,
            &label,
            (to_out(roi.x), to_out(roi.y), to_out(roi.x + roi.w) - 1),
            (0, 0, ow, oh),
            overlay::roi_colour(p),
        );
    }
    overlay::draw_text_band(&mut out, p, &lines, MARGIN, oh + MARGIN);
    Ok(out)
}

/// The Secondary Capture Image Storage object (RGB, explicit VR little endian).
pub fn secondary_capture(ctx: &ResultContext) -> Result<DefaultDicomObject> {
    let kind = Kind::SecondaryCapture;
    let src = Source::read(ctx.source)?;
    let img = heatmap_image(ctx.image, ctx.prediction)?;
    let mut obj = common(ctx, &src, kind);
    let p = ctx.prediction;
    let (date, time) = date_time(ctx.time);

    // General Series: a paired body part needs Laterality (2C); take the source's, or its
    // Image Laterality, else leave it empty.
    let laterality = src
        .text(tags::LATERALITY)
        .or_else(|| {
            src.text(tags::IMAGE_LATERALITY)
                .filter(|l| l == "R" || l == "L")
        })
        .unwrap_or_default();
    obj.put(str_el(tags::LATERALITY, VR::CS, &laterality));
    src.copy_optional(&mut obj, &[tags::BODY_PART_EXAMINED]);

    // SC Equipment.
    obj.put(str_el(tags::CONVERSION_TYPE, VR::CS, "WSD"));
    obj.put(str_el(
        tags::SECONDARY_CAPTURE_DEVICE_ID,
        VR::LO,
        &ctx.device_id,
    ));
    obj.put(str_el(
        tags::SECONDARY_CAPTURE_DEVICE_MANUFACTURER,
        VR::LO,
        MANUFACTURER,
    ));
    obj.put(str_el(
        tags::SECONDARY_CAPTURE_DEVICE_MANUFACTURER_MODEL_NAME,
        VR::LO,
        MODEL_NAME,
    ));
    obj.put(strs_el(
        tags::SECONDARY_CAPTURE_DEVICE_SOFTWARE_VERSIONS,
        VR::LO,
        &software_versions(ctx),
    ));

    // General Image / SC Image.
    obj.put(strs_el(tags::IMAGE_TYPE, VR::CS, &["DERIVED", "SECONDARY"]));
    src.copy_type2(&mut obj, &[(tags::PATIENT_ORIENTATION, VR::CS)]);
    obj.put(str_el(tags::CONTENT_DATE, VR::DA, &date));
    obj.put(str_el(tags::CONTENT_TIME, VR::TM, &time));
    obj.put(str_el(tags::DATE_OF_SECONDARY_CAPTURE, VR::DA, &date));
    obj.put(str_el(tags::TIME_OF_SECONDARY_CAPTURE, VR::TM, &time));
    // YES: the pixels are the source's (which may carry burned-in identifiers) plus text.
    obj.put(str_el(tags::BURNED_IN_ANNOTATION, VR::CS, "YES"));
    obj.put(str_el(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"));
    obj.put(str_el(
        tags::IMAGE_COMMENTS,
        VR::LT,
        &format!(
            "{}; P(PBT) {:.3}, threshold {:.3}; {} {}; {}",
            p.flag, p.probability, p.threshold, p.bundle.name, p.bundle.version, NOTICE
        ),
    ));
    obj.put(str_el(
        tags::DERIVATION_DESCRIPTION,
        VR::ST,
        &format!(
            "Source radiograph with the {} heat-map of model bundle {} {} blended in",
            p.heatmap.method.as_str(),
            p.bundle.name,
            p.bundle.version
        ),
    ));
    let mut reference = src.image_reference();
    reference.put(seq_el(
        tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
        vec![code(
            "121322",
            "DCM",
            "Source image for image processing operation",
        )],
    ));
    obj.put(seq_el(tags::SOURCE_IMAGE_SEQUENCE, vec![reference]));

    // Image Pixel: 8-bit RGB, colour-by-pixel.
    let (w, h) = img.dimensions();
    obj.put(us_el(tags::SAMPLES_PER_PIXEL, 3));
    obj.put(str_el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "RGB"));
    obj.put(us_el(tags::PLANAR_CONFIGURATION, 0));
    obj.put(us_el(tags::ROWS, h as u16));
    obj.put(us_el(tags::COLUMNS, w as u16));
    obj.put(us_el(tags::BITS_ALLOCATED, 8));
    obj.put(us_el(tags::BITS_STORED, 8));
    obj.put(us_el(tags::HIGH_BIT, 7));
    obj.put(us_el(tags::PIXEL_REPRESENTATION, 0));
    let mut px = img.into_raw();
    if px.len() % 2 == 1 {
        px.push(0); // values have even length
    }
    obj.put(DataElement::new(
        tags::PIXEL_DATA,
        VR::OB,
        PrimitiveValue::U8(px.into()),
    ));
    finish(obj, kind)
}

/// The Basic Text SR: finding, probability, threshold, model and notice as TEXT items, the
/// finding inferred from the source image.
pub fn basic_text_sr(ctx: &ResultContext) -> Result<DefaultDicomObject> {
    let kind = Kind::BasicTextSr;
    let src = Source::read(ctx.source)?;
    let p = ctx.prediction;
    let mut items = observer_context(ctx);
    let mut finding = text_item("CONTAINS", FINDING, &p.flag);
    finding.put(seq_el(
        tags::CONTENT_SEQUENCE,
        vec![image_item(&src, "INFERRED FROM")],
    ));
    items.push(finding);
    items.push(text_item(
        "CONTAINS",
        PROBABILITY,
        &format!("{:.3}", p.probability),
    ));
    items.push(text_item(
        "CONTAINS",
        THRESHOLD,
        &format!("{:.3}", p.threshold),
    ));
    items.extend(model_items(p));
    sr(ctx, &src, kind, items)
}

/// The Comprehensive SR: the finding as a SNOMED CT code (inferred from the source image),
/// the probability and threshold as NUMs, model and notice as TEXT.
pub fn comprehensive_sr(ctx: &ResultContext) -> Result<DefaultDicomObject> {
    let kind = Kind::ComprehensiveSr;
    let src = Source::read(ctx.source)?;
    let p = ctx.prediction;
    let mut items = observer_context(ctx);
    let mut finding = item("CONTAINS", "CODE", FINDING);
    finding.put(seq_el(
        tags::CONCEPT_CODE_SEQUENCE,
        vec![finding_code(p.pbt).to_item()],
    ));
    finding.put(seq_el(
        tags::CONTENT_SEQUENCE,
        vec![image_item(&src, "INFERRED FROM")],
    ));
    items.push(finding);
    items.push(text_item("CONTAINS", IMPRESSION, &p.flag));
    items.push(num_item(PROBABILITY, p.probability));
    items.push(num_item(THRESHOLD, p.threshold));
    items.extend(model_items(p));
    sr(ctx, &src, kind, items)
}

/// A coded concept (code value, coding scheme designator, code meaning).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub &'static str, pub &'static str, pub &'static str);

impl Code {
    fn to_item(self) -> InMemDicomObject {
        code(self.0, self.1, self.2)
    }
}

const REPORT: Code = Code("18748-4", "LN", "Diagnostic Imaging Report");
const FINDING: Code = Code("121071", "DCM", "Finding");
const IMPRESSION: Code = Code("121073", "DCM", "Impression");
const COMMENT: Code = Code("121106", "DCM", "Comment");
const ALGORITHM_NAME: Code = Code("111001", "DCM", "Algorithm Name");
const ALGORITHM_VERSION: Code = Code("111003", "DCM", "Algorithm Version");
const OBSERVER_TYPE: Code = Code("121005", "DCM", "Observer Type");
const DEVICE: Code = Code("121007", "DCM", "Device");
const DEVICE_UID: Code = Code("121012", "DCM", "Device Observer UID");
const DEVICE_NAME: Code = Code("121013", "DCM", "Device Observer Name");
const DEVICE_MANUFACTURER: Code = Code("121014", "DCM", "Device Observer Manufacturer");
const DEVICE_MODEL: Code = Code("121015", "DCM", "Device Observer Model Name");
/// DICOM's (111012, DCM, "Certainty of Finding") is defined in percent for CAD templates;
/// the stacker's P(PBT) is a probability of one class, not a certainty of the shown
/// finding (for an infection call it is low), so it gets a private concept.
pub const PROBABILITY: Code = Code(
    "TIRP001",
    PRIVATE_SCHEME,
    "Probability of primary bone tumour",
);
pub const THRESHOLD: Code = Code(
    "TIRP002",
    PRIVATE_SCHEME,
    "Primary bone tumour decision threshold",
);
/// SNOMED CT: 126537000 |Neoplasm of bone (disorder)| (benign or malignant, as the PBT class).
pub const NEOPLASM_OF_BONE: Code = Code("126537000", "SCT", "Neoplasm of bone");
/// SNOMED CT: 60168000 |Osteomyelitis (disorder)|.
pub const OSTEOMYELITIS: Code = Code("60168000", "SCT", "Osteomyelitis");
/// UCUM "1": a dimensionless ratio.
const NO_UNITS: Code = Code("1", "UCUM", "no units");

/// The coded finding for the flag.
pub fn finding_code(pbt: bool) -> Code {
    if pbt { NEOPLASM_OF_BONE } else { OSTEOMYELITIS }
}

/// The type-1 identifiers of the source, and the source for copying.
struct Source<'a> {
    obj: &'a InMemDicomObject,
    sop_class: String,
    sop_instance: String,
    study: String,
    series: String,
}

impl<'a> Source<'a> {
    fn read(obj: &'a InMemDicomObject) -> Result<Self> {
        let required = |tag, name| {
            text_of(obj, tag)
                .filter(|s| !s.is_empty())
                .ok_or(ResultError::MissingSource(name))
        };
        Ok(Source {
            obj,
            sop_class: required(tags::SOP_CLASS_UID, "SOP Class UID")?,
            sop_instance: required(tags::SOP_INSTANCE_UID, "SOP Instance UID")?,
            study: required(tags::STUDY_INSTANCE_UID, "Study Instance UID")?,
            series: required(tags::SERIES_INSTANCE_UID, "Series Instance UID")?,
        })
    }

    fn text(&self, tag: Tag) -> Option<String> {
        text_of(self.obj, tag).filter(|s| !s.is_empty())
    }

    /// Copies type-2 attributes, writing an empty element where the source has none.
    fn copy_type2(&self, obj: &mut InMemDicomObject, list: &[(Tag, VR)]) {
        for &(tag, vr) in list {
            match self.obj.get(tag) {
                Some(e) => obj.put(e.clone()),
                None => obj.put(DataElement::new(tag, vr, PrimitiveValue::Empty)),
            };
        }
    }

    /// Copies type-3 attributes the source has.
    fn copy_optional(&self, obj: &mut InMemDicomObject, list: &[Tag]) {
        for &tag in list {
            if let Some(e) = self.obj.get(tag) {
                obj.put(e.clone());
            }
        }
    }

    /// Referenced SOP Class / Instance UID of the source image.
    fn image_reference(&self) -> InMemDicomObject {
        InMemDicomObject::from_element_iter([
            str_el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, &self.sop_class),
            str_el(
                tags::REFERENCED_SOP_INSTANCE_UID,
                VR::UI,
                &self.sop_instance,
            ),
        ])
    }
}

fn text_of(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim_start().to_owned())
}

/// Modules every result shares: SOP Common, Patient, General Study, Patient Study, the new
/// series, General Equipment.
fn common(ctx: &ResultContext, src: &Source, kind: Kind) -> InMemDicomObject {
    let (series_uid, instance_uid) = result_uids(
        &src.sop_instance,
        &ctx.prediction.bundle.name,
        &ctx.prediction.bundle.version,
        kind,
    );
    let (date, time) = date_time(ctx.time);
    let mut obj = InMemDicomObject::new_empty();
    // The copied names are encoded in the source's character set.
    src.copy_optional(&mut obj, &[tags::SPECIFIC_CHARACTER_SET]);
    obj.put(str_el(tags::SOP_CLASS_UID, VR::UI, kind.sop_class_uid()));
    obj.put(str_el(tags::SOP_INSTANCE_UID, VR::UI, &instance_uid));
    obj.put(str_el(tags::INSTANCE_CREATION_DATE, VR::DA, &date));
    obj.put(str_el(tags::INSTANCE_CREATION_TIME, VR::TM, &time));
    obj.put(str_el(tags::TIMEZONE_OFFSET_FROM_UTC, VR::SH, "+0000"));
    if kind != Kind::SecondaryCapture {
        obj.put(seq_el(
            tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                str_el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, PRIVATE_SCHEME),
                str_el(
                    tags::CODING_SCHEME_NAME,
                    VR::ST,
                    "DeepTIRP Edge result concepts",
                ),
                str_el(
                    tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
                    VR::ST,
                    MANUFACTURER,
                ),
            ])],
        ));
    }

    // Patient, General Study (type 2: empty when the source lacks them), Patient Study.
    src.copy_type2(
        &mut obj,
        &[
            (tags::PATIENT_NAME, VR::PN),
            (tags::PATIENT_ID, VR::LO),
            (tags::PATIENT_BIRTH_DATE, VR::DA),
            (tags::PATIENT_SEX, VR::CS),
            (tags::STUDY_DATE, VR::DA),
            (tags::STUDY_TIME, VR::TM),
            (tags::REFERRING_PHYSICIAN_NAME, VR::PN),
            (tags::STUDY_ID, VR::SH),
            (tags::ACCESSION_NUMBER, VR::SH),
        ],
    );
    src.copy_optional(
        &mut obj,
        &[
            tags::ISSUER_OF_PATIENT_ID,
            tags::PATIENT_AGE,
            tags::STUDY_DESCRIPTION,
        ],
    );
    obj.put(str_el(tags::STUDY_INSTANCE_UID, VR::UI, &src.study));

    // The new series.
    obj.put(str_el(tags::MODALITY, VR::CS, kind.modality()));
    obj.put(str_el(tags::SERIES_INSTANCE_UID, VR::UI, &series_uid));
    obj.put(str_el(
        tags::SERIES_NUMBER,
        VR::IS,
        &kind.series_number().to_string(),
    ));
    obj.put(str_el(tags::SERIES_DATE, VR::DA, &date));
    obj.put(str_el(tags::SERIES_TIME, VR::TM, &time));
    obj.put(str_el(
        tags::SERIES_DESCRIPTION,
        VR::LO,
        kind.series_description(),
    ));
    obj.put(str_el(tags::INSTANCE_NUMBER, VR::IS, "1"));

    // General Equipment.
    obj.put(str_el(tags::MANUFACTURER, VR::LO, MANUFACTURER));
    obj.put(str_el(tags::MANUFACTURER_MODEL_NAME, VR::LO, MODEL_NAME));
    obj.put(str_el(tags::DEVICE_SERIAL_NUMBER, VR::LO, &ctx.device_id));
    obj.put(strs_el(
        tags::SOFTWARE_VERSIONS,
        VR::LO,
        &software_versions(ctx),
    ));
    obj
}

fn software_versions(ctx: &ResultContext) -> Vec<String> {
    let b = &ctx.prediction.bundle;
    vec![
        ctx.software_version.clone(),
        format!("{} {}", b.name, b.version),
    ]
}

/// SR Document Series / General / Content around `items` (the root container's children).
fn sr(
    ctx: &ResultContext,
    src: &Source,
    kind: Kind,
    items: Vec<InMemDicomObject>,
) -> Result<DefaultDicomObject> {
    let mut obj = common(ctx, src, kind);
    let (date, time) = date_time(ctx.time);
    obj.put(seq_el(
        tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE,
        vec![],
    ));
    obj.put(str_el(tags::CONTENT_DATE, VR::DA, &date));
    obj.put(str_el(tags::CONTENT_TIME, VR::TM, &time));
    // A machine's answer: complete, but nobody has verified it.
    obj.put(str_el(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"));
    obj.put(str_el(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"));
    obj.put(seq_el(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]));
    let series = InMemDicomObject::from_element_iter([
        str_el(tags::SERIES_INSTANCE_UID, VR::UI, &src.series),
        seq_el(tags::REFERENCED_SOP_SEQUENCE, vec![src.image_reference()]),
    ]);
    obj.put(seq_el(
        tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            str_el(tags::STUDY_INSTANCE_UID, VR::UI, &src.study),
            seq_el(tags::REFERENCED_SERIES_SEQUENCE, vec![series]),
        ])],
    ));
    // The root content item lives in the data set itself.
    obj.put(str_el(tags::VALUE_TYPE, VR::CS, "CONTAINER"));
    obj.put(seq_el(
        tags::CONCEPT_NAME_CODE_SEQUENCE,
        vec![REPORT.to_item()],
    ));
    obj.put(str_el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
    obj.put(seq_el(tags::CONTENT_SEQUENCE, items));
    finish(obj, kind)
}

/// The device observer (TID 1002/1004): who made the observations.
fn observer_context(ctx: &ResultContext) -> Vec<InMemDicomObject> {
    let mut observer = item("HAS OBS CONTEXT", "CODE", OBSERVER_TYPE);
    observer.put(seq_el(tags::CONCEPT_CODE_SEQUENCE, vec![DEVICE.to_item()]));
    let mut device_uid = item("HAS OBS CONTEXT", "UIDREF", DEVICE_UID);
    device_uid.put(str_el(
        tags::UID,
        VR::UI,
        &uid(&["deeptirp-device", &ctx.device_id]),
    ));
    vec![
        observer,
        device_uid,
        text_item("HAS OBS CONTEXT", DEVICE_NAME, &ctx.device_id),
        text_item("HAS OBS CONTEXT", DEVICE_MANUFACTURER, MANUFACTURER),
        text_item("HAS OBS CONTEXT", DEVICE_MODEL, MODEL_NAME),
    ]
}

fn model_items(p: &Prediction) -> [InMemDicomObject; 3] {
    [
        text_item("CONTAINS", ALGORITHM_NAME, &p.bundle.name),
        text_item("CONTAINS", ALGORITHM_VERSION, &p.bundle.version),
        text_item("CONTAINS", COMMENT, NOTICE),
    ]
}

fn item(relationship: &str, value_type: &str, concept: Code) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        str_el(tags::RELATIONSHIP_TYPE, VR::CS, relationship),
        str_el(tags::VALUE_TYPE, VR::CS, value_type),
        seq_el(tags::CONCEPT_NAME_CODE_SEQUENCE, vec![concept.to_item()]),
    ])
}

fn text_item(relationship: &str, concept: Code, text: &str) -> InMemDicomObject {
    let mut it = item(relationship, "TEXT", concept);
    it.put(str_el(tags::TEXT_VALUE, VR::UT, text));
    it
}

fn num_item(concept: Code, value: f32) -> InMemDicomObject {
    let mut it = item("CONTAINS", "NUM", concept);
    let measured = InMemDicomObject::from_element_iter([
        seq_el(
            tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
            vec![NO_UNITS.to_item()],
        ),
        // DS holds 16 characters; the FD keeps the exact value.
        str_el(tags::NUMERIC_VALUE, VR::DS, &format!("{value:.6}")),
        DataElement::new(
            tags::FLOATING_POINT_VALUE,
            VR::FD,
            PrimitiveValue::from(value as f64),
        ),
    ]);
    it.put(seq_el(tags::MEASURED_VALUE_SEQUENCE, vec![measured]));
    it
}

/// An IMAGE item by reference to the source (no concept name: by-reference relationship).
fn image_item(src: &Source, relationship: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        str_el(tags::RELATIONSHIP_TYPE, VR::CS, relationship),
        str_el(tags::VALUE_TYPE, VR::CS, "IMAGE"),
        seq_el(tags::REFERENCED_SOP_SEQUENCE, vec![src.image_reference()]),
    ])
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        str_el(tags::CODE_VALUE, VR::SH, value),
        str_el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        str_el(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

fn str_el(tag: Tag, vr: VR, value: &str) -> InMemElement {
    DataElement::new(tag, vr, PrimitiveValue::from(value))
}

fn strs_el<S: AsRef<str>>(tag: Tag, vr: VR, values: &[S]) -> InMemElement {
    DataElement::new(
        tag,
        vr,
        PrimitiveValue::Strs(values.iter().map(|s| s.as_ref().to_owned()).collect()),
    )
}

fn us_el(tag: Tag, value: u16) -> InMemElement {
    DataElement::new(tag, VR::US, PrimitiveValue::from(value))
}

fn seq_el(tag: Tag, items: Vec<InMemDicomObject>) -> InMemElement {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn finish(obj: InMemDicomObject, kind: Kind) -> Result<DefaultDicomObject> {
    obj.with_meta(
        FileMetaTableBuilder::new()
            .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
            .implementation_class_uid(uid(&["deeptirp-edge", "tirpd"]))
            .implementation_version_name("TIRPD"),
    )
    .map_err(|e| ResultError::Meta {
        kind: kind.as_str(),
        message: e.to_string(),
    })
}

/// UTC DA and TM (`YYYYMMDD`, `HHMMSS`) of `t`; times before 1970 read as the epoch.
fn date_time(t: SystemTime) -> (String, String) {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, sod) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 → civil date (H. Hinnant's algorithm, proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", sod / 3600, sod / 60 % 60, sod % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_utc_civil() {
        let at = |s| date_time(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), ("19700101".into(), "000000".into()));
        // 2026-12-04 02:14:48 UTC.
        assert_eq!(at(1_796_350_488), ("20261204".into(), "021448".into()));
        // 2024-02-29 23:59:59 UTC (leap day).
        assert_eq!(at(1_709_251_199), ("20240229".into(), "235959".into()));
    }

    #[test]
    fn uids_are_deterministic_per_kind_and_valid() {
        let a = result_uids("1.2.3", "b", "0.1.0", Kind::SecondaryCapture);
        assert_eq!(
            a,
            result_uids("1.2.3", "b", "0.1.0", Kind::SecondaryCapture)
        );
        assert_ne!(a, result_uids("1.2.3", "b", "0.1.0", Kind::BasicTextSr));
        assert_ne!(
            a,
            result_uids("1.2.3", "b", "0.2.0", Kind::SecondaryCapture)
        );
        assert_ne!(
            a,
            result_uids("1.2.4", "b", "0.1.0", Kind::SecondaryCapture)
        );
        for u in [&a.0, &a.1] {
            assert!(u.len() <= 64 && u.starts_with("2.25."), "{u}");
            assert!(u[5..].bytes().all(|c| c.is_ascii_digit()), "{u}");
        }
    }
}
