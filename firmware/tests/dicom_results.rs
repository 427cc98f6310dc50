//! The result objects for a synthetic DX radiograph run through the shipped bundle: valid
//! for `dciodvfy` (dicom3tools), deterministic, in the source's study, carrying the flag and
//! probability, and with the heat-map blended only inside the crop.

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::{DefaultDicomObject, FileMetaTableBuilder, InMemDicomObject, open_file};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tirp_firmware::dicom::results::{
    self, Kind, ResultContext, ResultError, ResultObjects, finding_code, heatmap_image,
};
use tirp_firmware::engine::{
    ClinicalInput, Engine, EngineOptions, Explain, Prediction, load_input,
};
use tirp_firmware::preprocess::{GrayImage, Roi};

const SIDE: u32 = 512;
const ROI: Roi = Roi {
    x: 190,
    y: 200,
    w: 110,
    h: 100,
};

fn bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/bundle")
}

/// A DX For Presentation file: MONOCHROME2, 16 bits allocated / 12 stored, 512×512, a bright
/// bone shaft with a darker lytic blob in it, plus deterministic noise.
fn synthetic_dx(with_optional: bool) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    let mut put = |tag, vr, v: PrimitiveValue| {
        obj.put(DataElement::new(tag, vr, v));
    };
    let s = |v: &str| PrimitiveValue::from(v);
    put(tags::SPECIFIC_CHARACTER_SET, VR::CS, s("ISO_IR 100"));
    put(
        tags::SOP_CLASS_UID,
        VR::UI,
        s(uids::DIGITAL_X_RAY_IMAGE_STORAGE_FOR_PRESENTATION),
    );
    put(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        s(&results::uid(&["src-sop"])),
    );
    put(
        tags::STUDY_INSTANCE_UID,
        VR::UI,
        s(&results::uid(&["src-study"])),
    );
    put(
        tags::SERIES_INSTANCE_UID,
        VR::UI,
        s(&results::uid(&["src-series"])),
    );
    put(tags::MODALITY, VR::CS, s("DX"));
    put(tags::PATIENT_NAME, VR::PN, s("TEST^SYNTHETIC"));
    put(tags::PATIENT_ID, VR::LO, s("SYN0001"));
    put(tags::PATIENT_SEX, VR::CS, s("F"));
    put(tags::STUDY_DATE, VR::DA, s("20260101"));
    put(tags::STUDY_TIME, VR::TM, s("120000"));
    put(tags::STUDY_ID, VR::SH, s("1"));
    put(tags::SERIES_NUMBER, VR::IS, s("1"));
    put(tags::INSTANCE_NUMBER, VR::IS, s("1"));
    put(tags::BODY_PART_EXAMINED, VR::CS, s("TIBIA"));
    put(tags::IMAGE_LATERALITY, VR::CS, s("R"));
    if with_optional {
        put(tags::PATIENT_BIRTH_DATE, VR::DA, s("20010101"));
        put(tags::PATIENT_AGE, VR::AS, s("025Y"));
        put(tags::ACCESSION_NUMBER, VR::SH, s("ACC123"));
        put(tags::REFERRING_PHYSICIAN_NAME, VR::PN, s("REFERRER^TEST"));
        put(
            tags::PATIENT_ORIENTATION,
            VR::CS,
            PrimitiveValue::Strs(["L", "F"].map(String::from).into()),
        );
    }
    put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
    put(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, s("MONOCHROME2"));
    put(tags::ROWS, VR::US, PrimitiveValue::from(SIDE as u16));
    put(tags::COLUMNS, VR::US, PrimitiveValue::from(SIDE as u16));
    put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
    put(tags::BITS_STORED, VR::US, PrimitiveValue::from(12u16));
    put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(11u16));
    put(
        tags::PIXEL_REPRESENTATION,
        VR::US,
        PrimitiveValue::from(0u16),
    );
    let mut state = 0x2545_f491_u32;
    let px: Vec<u16> = (0..SIDE * SIDE)
        .map(|i| {
            let (x, y) = ((i % SIDE) as f32, (i / SIDE) as f32);
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state % 120) as f32;
            let bone = if (180.0..330.0).contains(&x) {
                2200.0
            } else {
                0.0
            };
            let r2 = (x - 245.0).powi(2) + (y - 250.0).powi(2);
            let lesion = if r2 < 40.0f32.powi(2) { -900.0 } else { 0.0 };
            (400.0 + bone + lesion + noise).clamp(0.0, 4095.0) as u16
        })
        .collect();
    put(tags::PIXEL_DATA, VR::OW, PrimitiveValue::U16(px.into()));
    obj
}

fn write(obj: InMemDicomObject, path: &Path) {
    obj.with_meta(FileMetaTableBuilder::new().transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN))
        .unwrap()
        .write_to_file(path)
        .unwrap();
}

/// The source as tirpd sees it (re-read from its file), the decoded image, the prediction.
struct Case {
    _dir: tempfile::TempDir,
    source: DefaultDicomObject,
    image: GrayImage,
    prediction: Prediction,
}

fn case() -> &'static Case {
    static CASE: OnceLock<Case> = OnceLock::new();
    CASE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dx.dcm");
        write(synthetic_dx(true), &path);
        let engine = Engine::load(&bundle(), &EngineOptions::default()).unwrap();
        let input = load_input(&path, None).unwrap();
        let prediction = engine
            .predict_input(
                &input,
                Some(ROI),
                ClinicalInput::default(),
                Explain::GradCam,
            )
            .unwrap();
        Case {
            source: open_file(&path).unwrap(),
            image: input.image,
            prediction,
            _dir: dir,
        }
    })
}

fn time() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_796_350_488)
}

fn context<'a>(source: &'a InMemDicomObject, c: &'a Case, t: SystemTime) -> ResultContext<'a> {
    ResultContext {
        source,
        image: &c.image,
        prediction: &c.prediction,
        software_version: "tirpd 0.1.0".into(),
        device_id: "EDGE-TEST-01".into(),
        time: t,
    }
}

fn built() -> ResultObjects {
    let c = case();
    results::build(&context(&c.source, c, time())).unwrap()
}

fn all(r: &ResultObjects) -> [(&'static str, &DefaultDicomObject); 3] {
    [
        ("sc", &r.secondary_capture),
        ("sr", &r.basic_text_sr),
        ("csr", &r.comprehensive_sr),
    ]
}

fn text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> String {
    obj.element(tag)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches(['\0', ' '])
        .to_owned()
}

fn bytes(obj: &DefaultDicomObject) -> Vec<u8> {
    let mut v = Vec::new();
    obj.write_all(&mut v).unwrap();
    v
}

/// dciodvfy's verdict on `path`, or `None` without dicom3tools.
fn dciodvfy(path: &Path) -> Option<String> {
    match Command::new("dciodvfy").arg(path).output() {
        Ok(out) => Some(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("running dciodvfy: {e}"),
    }
}

/// Set `TIRP_RESULTS_DIR` to keep the three files (to look at them with dcmdump, dsrdump,
/// dcmj2pnm).
#[test]
fn dciodvfy_finds_no_errors_in_any_object() {
    let r = built();
    let dir = tempfile::tempdir().unwrap();
    let keep = std::env::var_os("TIRP_RESULTS_DIR").map(PathBuf::from);
    for (name, obj) in all(&r) {
        let path = dir.path().join(format!("{name}.dcm"));
        obj.write_to_file(&path).unwrap();
        if let Some(keep) = &keep {
            std::fs::create_dir_all(keep).unwrap();
            std::fs::copy(&path, keep.join(format!("{name}.dcm"))).unwrap();
        }
        let Some(report) = dciodvfy(&path) else {
            eprintln!("dciodvfy not installed (Debian package dicom3tools): validation skipped");
            return;
        };
        println!("--- dciodvfy {name}.dcm\n{report}");
        let errors: Vec<&str> = report.lines().filter(|l| l.contains("Error")).collect();
        assert!(errors.is_empty(), "dciodvfy {name}.dcm:\n{report}");
        // It names the IOD it checked against: the right one.
        let iod = match name {
            "sc" => "SCImage",
            "sr" => "BasicTextSR",
            _ => "ComprehensiveSR",
        };
        assert!(report.contains(iod), "dciodvfy {name}.dcm:\n{report}");
    }
}

#[test]
fn same_input_same_bytes_and_uids_and_time_only_changes_dates() {
    let c = case();
    let a = built();
    let b = built();
    for ((name, x), (_, y)) in all(&a).into_iter().zip(all(&b)) {
        assert!(bytes(x) == bytes(y), "{name}: not byte-identical");
    }
    let later = results::build(&context(&c.source, c, time() + Duration::from_secs(3600))).unwrap();
    for ((name, x), (_, y)) in all(&a).into_iter().zip(all(&later)) {
        for tag in [tags::SOP_INSTANCE_UID, tags::SERIES_INSTANCE_UID] {
            assert_eq!(text(x, tag), text(y, tag), "{name}: UIDs follow the time");
        }
        assert_ne!(text(x, tags::CONTENT_TIME), text(y, tags::CONTENT_TIME));
    }
    assert_eq!(text(&a.basic_text_sr, tags::CONTENT_DATE), "20261204");
    assert_eq!(text(&a.basic_text_sr, tags::CONTENT_TIME), "021448");
}

#[test]
fn results_join_the_source_study_in_new_series() {
    let c = case();
    let r = built();
    let src_series = text(&c.source, tags::SERIES_INSTANCE_UID);
    let mut series = Vec::new();
    let mut instances = Vec::new();
    for ((name, obj), kind) in all(&r).into_iter().zip([
        Kind::SecondaryCapture,
        Kind::BasicTextSr,
        Kind::ComprehensiveSr,
    ]) {
        for tag in [
            tags::STUDY_INSTANCE_UID,
            tags::PATIENT_NAME,
            tags::PATIENT_ID,
            tags::PATIENT_BIRTH_DATE,
            tags::PATIENT_SEX,
            tags::PATIENT_AGE,
            tags::STUDY_DATE,
            tags::STUDY_TIME,
            tags::STUDY_ID,
            tags::ACCESSION_NUMBER,
            tags::REFERRING_PHYSICIAN_NAME,
        ] {
            assert_eq!(text(obj, tag), text(&c.source, tag), "{name}: {tag}");
        }
        assert_eq!(text(obj, tags::PATIENT_NAME), "TEST^SYNTHETIC");
        assert_eq!(text(obj, tags::SOP_CLASS_UID), kind.sop_class_uid());
        assert_eq!(text(obj, tags::MODALITY), kind.modality());
        assert_eq!(
            text(obj, tags::SERIES_NUMBER),
            kind.series_number().to_string()
        );
        assert_eq!(text(obj, tags::MANUFACTURER), "DeepTIRP Edge");
        assert_eq!(
            obj.meta()
                .media_storage_sop_instance_uid
                .trim_end_matches('\0'),
            text(obj, tags::SOP_INSTANCE_UID)
        );
        assert_ne!(text(obj, tags::SERIES_INSTANCE_UID), src_series, "{name}");
        series.push(text(obj, tags::SERIES_INSTANCE_UID));
        instances.push(text(obj, tags::SOP_INSTANCE_UID));
    }
    series.dedup();
    instances.dedup();
    assert_eq!((series.len(), instances.len()), (3, 3));

    // The SC references the source image as its Source Image Sequence.
    let sc = &r.secondary_capture;
    let item = &sc
        .element(tags::SOURCE_IMAGE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    assert_eq!(
        text(item, tags::REFERENCED_SOP_INSTANCE_UID),
        text(&c.source, tags::SOP_INSTANCE_UID)
    );
    assert_eq!(text(sc, tags::BURNED_IN_ANNOTATION), "YES");
    assert_eq!(text(sc, tags::CONVERSION_TYPE), "WSD");
}

/// Every content item below `obj`, depth first.
fn content_items(obj: &InMemDicomObject, out: &mut Vec<InMemDicomObject>) {
    if let Ok(Some(e)) = obj.element_opt(tags::CONTENT_SEQUENCE) {
        for it in e.items().unwrap() {
            out.push(it.clone());
            content_items(it, out);
        }
    }
}

fn concept_value(it: &InMemDicomObject, seq: dicom_core::Tag) -> String {
    text(
        &it.element(seq).unwrap().items().unwrap()[0],
        tags::CODE_VALUE,
    )
}

#[test]
fn srs_carry_flag_probability_and_the_image_reference() {
    let c = case();
    let p = &c.prediction;
    let r = built();
    let src_sop = text(&c.source, tags::SOP_INSTANCE_UID);
    let image_refs = |items: &[InMemDicomObject]| {
        items
            .iter()
            .filter(|it| text(it, tags::VALUE_TYPE) == "IMAGE")
            .map(|it| {
                text(
                    &it.element(tags::REFERENCED_SOP_SEQUENCE)
                        .unwrap()
                        .items()
                        .unwrap()[0],
                    tags::REFERENCED_SOP_INSTANCE_UID,
                )
            })
            .collect::<Vec<_>>()
    };

    let sr = &r.basic_text_sr;
    assert_eq!(text(sr, tags::VERIFICATION_FLAG), "UNVERIFIED");
    assert_eq!(text(sr, tags::COMPLETION_FLAG), "COMPLETE");
    assert_eq!(
        concept_value(sr, tags::CONCEPT_NAME_CODE_SEQUENCE),
        "18748-4"
    );
    let mut items = Vec::new();
    content_items(sr, &mut items);
    let texts: Vec<String> = items
        .iter()
        .filter(|it| text(it, tags::VALUE_TYPE) == "TEXT")
        .map(|it| text(it, tags::TEXT_VALUE))
        .collect();
    for wanted in [
        p.flag.clone(),
        format!("{:.3}", p.probability),
        format!("{:.3}", p.threshold),
        p.bundle.version.clone(),
        "NOT FOR DIAGNOSTIC USE".to_owned(),
    ] {
        assert!(texts.contains(&wanted), "{wanted:?} not in {texts:?}");
    }
    assert_eq!(image_refs(&items), vec![src_sop.clone()]);
    let evidence = &sr
        .element(tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE)
        .unwrap()
        .items()
        .unwrap()[0];
    assert_eq!(
        text(evidence, tags::STUDY_INSTANCE_UID),
        text(&c.source, tags::STUDY_INSTANCE_UID)
    );

    let csr = &r.comprehensive_sr;
    let mut items = Vec::new();
    content_items(csr, &mut items);
    let code = items
        .iter()
        .find(|it| {
            text(it, tags::VALUE_TYPE) == "CODE" && text(it, tags::RELATIONSHIP_TYPE) == "CONTAINS"
        })
        .expect("a coded finding");
    assert_eq!(
        concept_value(code, tags::CONCEPT_NAME_CODE_SEQUENCE),
        "121071"
    );
    assert_eq!(
        concept_value(code, tags::CONCEPT_CODE_SEQUENCE),
        finding_code(p.pbt).0
    );
    let nums: Vec<f64> = items
        .iter()
        .filter(|it| text(it, tags::VALUE_TYPE) == "NUM")
        .map(|it| {
            let mv = &it
                .element(tags::MEASURED_VALUE_SEQUENCE)
                .unwrap()
                .items()
                .unwrap()[0];
            assert_eq!(
                concept_value(mv, tags::MEASUREMENT_UNITS_CODE_SEQUENCE),
                "1"
            );
            text(mv, tags::NUMERIC_VALUE).trim().parse().unwrap()
        })
        .collect();
    assert_eq!(nums.len(), 2, "probability and threshold");
    assert!((nums[0] - p.probability as f64).abs() < 1e-5, "{nums:?}");
    assert!((nums[1] - p.threshold as f64).abs() < 1e-5, "{nums:?}");
    assert_eq!(image_refs(&items), vec![src_sop]);
}

#[test]
fn sc_blends_the_map_inside_the_crop_only() {
    let c = case();
    let hm = &c.prediction.heatmap;
    assert!(hm.max > 0.0, "a map to show");
    let crop = hm.crop;
    assert!(
        crop.x > 0 && crop.y > 0 && crop.x + (crop.side as i64) < SIDE as i64,
        "{crop:?}"
    );
    let sc = &built().secondary_capture;
    assert_eq!(text(sc, tags::PHOTOMETRIC_INTERPRETATION), "RGB");
    let rows = sc.element(tags::ROWS).unwrap().to_int::<u32>().unwrap();
    let cols = sc.element(tags::COLUMNS).unwrap().to_int::<u32>().unwrap();
    assert!(
        rows > SIDE,
        "radiograph (512 rows, not shrunk) + text band: {rows}"
    );
    let px = sc.element(tags::PIXEL_DATA).unwrap().to_bytes().unwrap();
    assert!(px.len() >= (rows * cols * 3) as usize);
    let (mut coloured_inside, mut coloured_outside, mut inside) = (0, 0, 0);
    for y in 0..SIDE as i64 {
        for x in 0..SIDE as i64 {
            let i = ((y * cols as i64 + x) * 3) as usize;
            let grey = px[i] == px[i + 1] && px[i + 1] == px[i + 2];
            let in_crop = (crop.x..crop.x + crop.side as i64).contains(&x)
                && (crop.y..crop.y + crop.side as i64).contains(&y);
            if in_crop {
                inside += 1;
                coloured_inside += usize::from(!grey);
            } else {
                coloured_outside += usize::from(!grey);
            }
        }
    }
    assert_eq!(
        coloured_outside, 0,
        "outside the crop the radiograph stays grey"
    );
    assert!(
        coloured_inside > inside / 10,
        "the map is blended in: {coloured_inside} of {inside} crop pixels coloured"
    );
}

#[test]
fn large_images_are_shrunk_to_1024_on_the_long_side() {
    let c = case();
    let big = GrayImage::new(2048, 1536, vec![0.5; 2048 * 1536]).unwrap();
    let img = heatmap_image(&big, &c.prediction).unwrap();
    // 1024×768 radiograph plus the text band below it.
    assert!(
        img.width() >= 1024 && img.width() <= 1100,
        "{}",
        img.width()
    );
    assert!(
        img.height() > 768 && img.height() < 768 + 200,
        "{}",
        img.height()
    );
}

#[test]
fn missing_type2_attributes_are_written_empty_and_type1_is_required() {
    let c = case();
    let source = synthetic_dx(false);
    let r = results::build(&context(&source, c, time())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, obj) in all(&r) {
        let path = dir.path().join(format!("{name}.dcm"));
        obj.write_to_file(&path).unwrap();
        if let Some(report) = dciodvfy(&path) {
            assert!(
                !report.lines().any(|l| l.contains("Error")),
                "dciodvfy {name}.dcm (sparse source):\n{report}"
            );
        }
        for tag in [
            tags::PATIENT_BIRTH_DATE,
            tags::ACCESSION_NUMBER,
            tags::REFERRING_PHYSICIAN_NAME,
        ] {
            assert_eq!(text(obj, tag), "", "{name}: {tag} present and empty");
        }
        assert!(
            obj.element_opt(tags::PATIENT_AGE).unwrap().is_none(),
            "{name}: age not invented"
        );
    }
    let mut bad = synthetic_dx(true);
    bad.remove_element(tags::STUDY_INSTANCE_UID);
    let e = results::build(&context(&bad, c, time())).err().unwrap();
    assert!(matches!(e, ResultError::MissingSource(_)), "{e}");
    assert!(e.to_string().contains("Study Instance UID"), "{e}");
}

#[test]
fn an_infection_call_is_coded_as_osteomyelitis() {
    let c = case();
    let mut p = c.prediction.clone();
    p.pbt = false;
    p.flag = tirp_firmware::engine::FLAG_INFECTION.to_owned();
    let ctx = ResultContext {
        prediction: &p,
        ..context(&c.source, c, time())
    };
    let csr = results::comprehensive_sr(&ctx).unwrap();
    let mut items = Vec::new();
    content_items(&csr, &mut items);
    let codes: Vec<String> = items
        .iter()
        .filter(|it| text(it, tags::VALUE_TYPE) == "CODE")
        .filter(|it| concept_value(it, tags::CONCEPT_NAME_CODE_SEQUENCE) == "121071")
        .map(|it| concept_value(it, tags::CONCEPT_CODE_SEQUENCE))
        .collect();
    assert_eq!(codes, vec!["60168000".to_owned()]);
    let sr = results::basic_text_sr(&ctx).unwrap();
    let mut items = Vec::new();
    content_items(&sr, &mut items);
    assert!(items.iter().any(|it| text(it, tags::VALUE_TYPE) == "TEXT"
        && text(it, tags::TEXT_VALUE) == "suspected bone infection"));
}
