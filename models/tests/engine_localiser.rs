//! The engine with a bundle localiser (`ensemble.json` `localiser`, the contract in
//! `tirp_firmware::localise`), on the fixture's hand-made localiser that finds the brightest
//! region (`tirp_models::fixture::bright_spot_localiser`): no ROI given → the localiser's box
//! feeds the ensemble exactly as a caller's box would; a caller's ROI always wins; a
//! confidence below the minimum gives "no lesion localised — review", unclassified.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tirp_firmware::engine::{
    ClinicalInput, Engine, EngineError, EngineOptions, Explain, FLAG_INFECTION, FLAG_NO_LESION,
    FLAG_PBT, RoiSource, overlay,
};
use tirp_firmware::ensemble::EnsembleSpec;
use tirp_firmware::preprocess::{GrayImage, Roi};
use tirp_models::fixture::{self, FixtureConfig, FixtureLocaliser};

fn opts() -> EngineOptions {
    EngineOptions {
        threads: 1,
        ..Default::default()
    }
}

fn bundle(dir: &std::path::Path, min_confidence: f32) -> Engine {
    let cfg = FixtureConfig {
        localiser: Some(FixtureLocaliser {
            min_confidence,
            ..Default::default()
        }),
        ..Default::default()
    };
    fixture::write_bundle(dir, &cfg).unwrap();
    Engine::load(dir, &opts()).unwrap()
}

/// A dark, noisy 320×240 radiograph with a bright square at `blob`.
fn blob_image(blob: Roi, seed: u64) -> GrayImage {
    let (w, h) = (320u32, 240u32);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let pixels = (0..w * h)
        .map(|i| {
            let (x, y) = (i % w, i / w);
            let inside =
                (blob.x..blob.x + blob.w).contains(&x) && (blob.y..blob.y + blob.h).contains(&y);
            let base = if inside {
                3000.0
            } else {
                400.0 + 0.5 * y as f32
            };
            base + rng.random_range(0.0..60.0)
        })
        .collect();
    GrayImage::new(w, h, pixels).unwrap()
}

fn contains(outer: Roi, inner: Roi) -> bool {
    outer.x <= inner.x
        && outer.y <= inner.y
        && outer.x + outer.w >= inner.x + inner.w
        && outer.y + outer.h >= inner.y + inner.h
}

const BLOB: Roi = Roi {
    x: 200,
    y: 130,
    w: 64,
    h: 64,
};

#[test]
fn the_localiser_finds_the_bright_lesion_and_feeds_the_ensemble() {
    let dir = tempfile::tempdir().unwrap();
    let engine = bundle(dir.path(), 0.5);
    assert!(engine.has_localiser());
    for (blob, seed) in [
        (BLOB, 1),
        (
            Roi {
                x: 20,
                y: 30,
                w: 64,
                h: 64,
            },
            2,
        ),
    ] {
        let img = blob_image(blob, seed);
        let p = engine
            .predict(&img, None, ClinicalInput::default(), Explain::GradCam)
            .unwrap();
        assert_eq!(p.roi_source, RoiSource::Localiser);
        assert!(!p.review);
        let l = p.localiser.expect("the localiser ran");
        assert_eq!(l.roi, p.roi);
        assert_eq!(l.min_confidence, 0.5);
        assert!(l.confidence > 0.9, "confidence {}", l.confidence);
        // The box covers the lesion and is lesion-sized (20 input px = 100 image px), not the
        // whole image.
        assert!(contains(p.roi, blob), "{:?} does not cover {blob:?}", p.roi);
        assert!(p.roi.w <= 101 && p.roi.h <= 101, "{:?}", p.roi);
        assert!(p.timings.localise_ms > 0.0 && l.ms > 0.0);
        assert!(p.timings.total_ms >= p.timings.localise_ms);
        assert_eq!(p.members.len(), 3);
        assert!([FLAG_PBT, FLAG_INFECTION].contains(&p.flag.as_str()));
        assert_eq!(p.pbt, p.probability >= p.threshold);

        // Exactly the ensemble path of a caller's box: same crop, same probability, same map.
        let q = engine
            .predict(
                &img,
                Some(p.roi),
                ClinicalInput::default(),
                Explain::GradCam,
            )
            .unwrap();
        assert_eq!(q.probability, p.probability);
        assert_eq!(q.heatmap.crop, p.heatmap.crop);
        assert_eq!(q.heatmap.values, p.heatmap.values);

        // In the JSON and on the overlay.
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["roi_source"], "localiser");
        assert_eq!(v["review"], false);
        assert!(
            (v["localiser"]["confidence"].as_f64().unwrap() - l.confidence as f64).abs() < 1e-6
        );
        assert_eq!(
            overlay::roi_label(&p).unwrap(),
            format!("AUTO ROI {:.2}", l.confidence)
        );
        assert_eq!(overlay::roi_label(&q).unwrap(), "ROI");
        let auto_png = overlay::render_png(&img, &p).unwrap();
        let caller_png = overlay::render_png(&img, &q).unwrap();
        assert_ne!(auto_png, caller_png, "the label tells the boxes apart");
    }
}

/// With `zoom` in the spec the engine looks again on a window around the first box: the
/// fixture's constant 20-input-pixel box is 100 image pixels on the whole 320-pixel image and
/// 75 on the 240-pixel window (zoom 3 × 100, capped at the image's height), so the final box
/// hugs the 64-pixel lesion closer; the window is reported, the confidence is the first pass's.
#[test]
fn the_zoom_pass_tightens_the_box_inside_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FixtureConfig {
        localiser: Some(FixtureLocaliser {
            zoom: Some(3.0),
            ..Default::default()
        }),
        ..Default::default()
    };
    fixture::write_bundle(dir.path(), &cfg).unwrap();
    let zoomed = Engine::load(dir.path(), &opts()).unwrap();
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = bundle(plain_dir.path(), 0.5);
    let img = blob_image(BLOB, 6);
    let first = plain.localise(&img).unwrap().unwrap();
    let l = zoomed.localise(&img).unwrap().unwrap();
    assert!(first.window.is_none());
    let w = l.window.expect("the zoom pass ran");
    assert_eq!(w.side, 240);
    assert!(
        contains(
            Roi {
                x: w.x,
                y: w.y,
                w: w.side,
                h: w.side
            },
            l.roi
        ),
        "{:?} outside {w:?}",
        l.roi
    );
    assert_eq!(l.confidence, first.confidence);
    assert!(
        first.roi.w >= 99 && (74..=76).contains(&l.roi.w),
        "{first:?} → {l:?}"
    );
    let iou = tirp_firmware::localise::iou;
    assert!(
        iou(l.roi, BLOB) > iou(first.roi, BLOB) + 0.2,
        "{first:?} → {l:?}"
    );
    assert!(iou(l.roi, BLOB) > 0.6, "{l:?}");
    // The prediction uses the zoomed box, and reports the window.
    let p = zoomed
        .predict(&img, None, ClinicalInput::default(), Explain::GradCam)
        .unwrap();
    assert_eq!(p.roi, l.roi);
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(v["localiser"]["window"]["side"], 240);
    // Below the minimum confidence the zoom pass does not run: the first box is shown.
    let flat = GrayImage::new(200, 160, vec![700.0; 200 * 160]).unwrap();
    let r = zoomed.localise(&flat).unwrap().unwrap();
    assert!(!r.localised() && r.window.is_none());
}

/// With `zoom_flips` the zoom pass also runs on the window's mirror images and keeps the mean
/// box: the fixture localiser follows the bright square into each mirror image, so every
/// look maps back onto the same lesion and the mean box is the single pass's, give or take
/// rounding. The lesion sits off the window's centre (the window is shifted to stay inside
/// the image), so a box left mirrored would land tens of pixels away.
#[test]
fn the_zoom_passes_on_mirror_images_map_back_onto_the_lesion() {
    let engine = |zoom_flips: bool, dir: &std::path::Path| {
        let cfg = FixtureConfig {
            localiser: Some(FixtureLocaliser {
                zoom: Some(3.0),
                zoom_flips,
                ..Default::default()
            }),
            ..Default::default()
        };
        fixture::write_bundle(dir, &cfg).unwrap();
        Engine::load(dir, &opts()).unwrap()
    };
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (single, flips) = (engine(false, d1.path()), engine(true, d2.path()));
    let img = blob_image(BLOB, 8);
    let a = single.localise(&img).unwrap().unwrap();
    let b = flips.localise(&img).unwrap().unwrap();
    assert_eq!(a.window, b.window);
    assert_eq!(a.confidence, b.confidence);
    let w = b.window.expect("the zoom pass ran");
    let centre = |start: u32, len: u32| start as f32 + len as f32 / 2.0;
    let off = (centre(BLOB.x, BLOB.w) - centre(w.x, w.side))
        .abs()
        .max((centre(BLOB.y, BLOB.h) - centre(w.y, w.side)).abs());
    assert!(off >= 15.0, "lesion {off} px off the window's centre");
    let near = |p: u32, q: u32| p.abs_diff(q) <= 2;
    assert!(
        near(a.roi.x, b.roi.x) && near(a.roi.y, b.roi.y) && near(a.roi.w, b.roi.w),
        "{a:?} vs {b:?}"
    );
    assert!(tirp_firmware::localise::iou(b.roi, BLOB) > 0.6, "{b:?}");
    let spec = EnsembleSpec::load(d2.path()).unwrap();
    assert!(spec.localiser.unwrap().zoom_flips);
}

#[test]
fn a_callers_roi_wins_and_the_localiser_does_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let engine = bundle(dir.path(), 0.5);
    let img = blob_image(BLOB, 3);
    let roi = Roi {
        x: 10,
        y: 10,
        w: 60,
        h: 50,
    };
    let p = engine
        .predict(&img, Some(roi), ClinicalInput::default(), Explain::GradCam)
        .unwrap();
    assert_eq!(p.roi, roi);
    assert_eq!(p.roi_source, RoiSource::Caller);
    assert!(p.localiser.is_none());
    assert_eq!(p.timings.localise_ms, 0.0);
    assert!(!p.review);
    let v = serde_json::to_value(&p).unwrap();
    assert_eq!(v["roi_source"], "caller");
    assert!(v["localiser"].is_null());
}

#[test]
fn below_the_minimum_confidence_nothing_is_classified() {
    let dir = tempfile::tempdir().unwrap();
    let engine = bundle(dir.path(), 0.5);
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let flat = GrayImage::new(200, 160, vec![700.0; 200 * 160]).unwrap();
    let noise = GrayImage::new(
        200,
        160,
        (0..200 * 160)
            .map(|_| rng.random_range(0.0..1000.0))
            .collect(),
    )
    .unwrap();
    for img in [flat, noise] {
        let p = engine
            .predict(&img, None, ClinicalInput::default(), Explain::GradCam)
            .unwrap();
        let l = p.localiser.expect("the localiser ran");
        assert!(l.confidence < 0.5, "confidence {}", l.confidence);
        assert!(p.review);
        assert_eq!(p.flag, FLAG_NO_LESION);
        assert_eq!(p.flag, "no lesion localised — review");
        assert!(!p.pbt);
        assert_eq!(p.probability, 0.0);
        assert!(p.members.is_empty());
        assert_eq!(p.roi_source, RoiSource::Localiser);
        assert_eq!(p.roi, l.roi);
        assert_eq!(p.timings.members_ms, 0.0);
        assert!(p.heatmap.values.iter().all(|&v| v == 0.0));
        // Valid JSON with no NaN anywhere; the overlay renders and shows the review flag.
        let text = serde_json::to_string(&p).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["review"], true);
        assert_eq!(v["probability"], 0.0);
        assert_eq!(v["flag"], FLAG_NO_LESION);
        assert!(!text.contains("NaN") && !text.contains("null,\"threshold"));
        let o = image::load_from_memory(&overlay::render_png(&img, &p).unwrap())
            .unwrap()
            .into_rgb8();
        let amber = o.pixels().filter(|px| px.0 == [255, 200, 60]).count();
        assert!(amber > 50, "{amber} review-flag pixels");
    }

    // The same bright lesion is "no lesion" when the bundle demands more confidence than the
    // localiser has: the threshold is applied, not just reported.
    let dir = tempfile::tempdir().unwrap();
    let strict = bundle(dir.path(), 0.99);
    let p = strict
        .predict(
            &blob_image(BLOB, 1),
            None,
            ClinicalInput::default(),
            Explain::GradCam,
        )
        .unwrap();
    assert!(p.review, "confidence {:?}", p.localiser);
    assert_eq!(p.flag, FLAG_NO_LESION);
    // …and a caller's box is still classified with that bundle.
    let q = strict
        .predict(
            &blob_image(BLOB, 1),
            Some(BLOB),
            ClinicalInput::default(),
            Explain::GradCam,
        )
        .unwrap();
    assert!(!q.review && q.members.len() == 3);
}

#[test]
fn a_bundle_without_a_localiser_still_uses_the_whole_image() {
    let dir = tempfile::tempdir().unwrap();
    fixture::write_bundle(dir.path(), &FixtureConfig::default()).unwrap();
    let engine = Engine::load(dir.path(), &opts()).unwrap();
    assert!(!engine.has_localiser());
    let img = blob_image(BLOB, 5);
    assert!(engine.localise(&img).unwrap().is_none());
    let p = engine
        .predict(&img, None, ClinicalInput::default(), Explain::GradCam)
        .unwrap();
    assert_eq!(p.roi_source, RoiSource::WholeImage);
    assert_eq!(p.roi, img.full_roi());
    assert!(p.localiser.is_none() && !p.review);
}

#[test]
fn bad_localiser_specs_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    bundle(dir.path(), 0.5);
    let good = EnsembleSpec::load(dir.path()).unwrap();
    for (what, edit) in [
        (
            "input_size",
            Box::new(|s: &mut EnsembleSpec| s.localiser.as_mut().unwrap().input_size = 30)
                as Box<dyn Fn(&mut EnsembleSpec)>,
        ),
        (
            "std",
            Box::new(|s: &mut EnsembleSpec| s.localiser.as_mut().unwrap().std = 0.0),
        ),
        (
            "min_confidence",
            Box::new(|s: &mut EnsembleSpec| s.localiser.as_mut().unwrap().min_confidence = 1.5),
        ),
        (
            "zoom",
            Box::new(|s: &mut EnsembleSpec| s.localiser.as_mut().unwrap().zoom = Some(0.5)),
        ),
    ] {
        let mut s = good.clone();
        edit(&mut s);
        s.save(dir.path()).unwrap();
        let e = Engine::load(dir.path(), &opts()).unwrap_err();
        assert!(matches!(e, EngineError::Bundle { .. }), "{what}: {e}");
        assert!(
            e.to_string().contains("localiser") || format!("{e:#}").contains(what),
            "{e}"
        );
    }
    // A localiser file that is not the contract's graph (a member has no `heatmap`).
    let mut s = good.clone();
    s.localiser.as_mut().unwrap().file = good.members[0].file.clone();
    s.save(dir.path()).unwrap();
    let e = Engine::load(dir.path(), &opts()).unwrap_err().to_string();
    assert!(e.contains("heatmap"), "{e}");
}
