//! The golden-inference health check: after activation (and at every start of a good slot)
//! the daemon loads the slot's bundle into the engine, predicts its golden input exactly as
//! `tirp train` (or `tirp train-localiser`) did when it wrote the golden output (no ROI given:
//! the bundle's localiser finds it, else the whole image; no clinical inputs; Grad-CAM), and
//! marks the slot good only when the answer matches.
//!
//! A bundle the engine cannot run is never marked good by this check: no golden pair (the
//! manifest format already refuses such bundles at build and install; this is the last
//! line), no `ensemble.json` (a bundle of bare model files, as built before the engine
//! existed), an engine load failure, or a manifest whose preprocessing or threshold is not
//! the one `ensemble.json` runs. `tirpd --health-check integrity` is the explicit
//! development escape for such bundles (link tests with synthetic payloads); it is never
//! implied.

use crate::bundle::{self, FileRole, GoldenOutput, Manifest};
use crate::engine::{ClinicalInput, Engine, EngineOptions, Explain};
use crate::ensemble::ENSEMBLE_FILE;
use crate::slots::HealthCheck;
use std::path::Path;

/// Runs the golden inference of the activated bundle (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct GoldenInferenceCheck {
    /// How the engine runs: the board's options, so the check exercises the runtime
    /// (CPU or GPU, int8 variant) that will serve the studies.
    pub options: EngineOptions,
}

impl GoldenInferenceCheck {
    pub fn new(options: EngineOptions) -> Self {
        Self { options }
    }
}

impl HealthCheck for GoldenInferenceCheck {
    fn check(&self, dir: &Path, manifest: &Manifest) -> Result<(), String> {
        let golden = |role: FileRole| {
            let f = manifest.file(role).ok_or_else(|| {
                format!(
                    "golden inference: the bundle has no {role:?} file, so it cannot prove it \
                     computes what it was trained to; never marked good"
                )
            })?;
            std::fs::read(dir.join(&f.name))
                .map_err(|e| format!("golden inference: {}: {e}", f.name))
        };
        let input = golden(FileRole::GoldenInput)?;
        let expected_bytes = golden(FileRole::GoldenOutput)?;
        if !manifest.files.iter().any(|f| f.name == ENSEMBLE_FILE) {
            return Err(format!(
                "golden inference: the bundle has no {ENSEMBLE_FILE}, so the engine cannot run \
                 it (a bundle of bare model files?); rebuild it from a trained bundle \
                 directory with `tirp bundle build --from-dir`"
            ));
        }
        let expected = bundle::check_golden(&input, &expected_bytes)
            .map_err(|e| format!("golden inference: {e}"))?;
        let engine = Engine::load(dir, &self.options)
            .map_err(|e| format!("golden inference: the engine cannot load the bundle: {e}"))?;
        let spec = engine.spec();
        if spec.preprocess != manifest.preprocess {
            return Err(format!(
                "golden inference: the manifest's preprocessing {:?} is not {ENSEMBLE_FILE}'s {:?}",
                manifest.preprocess, spec.preprocess
            ));
        }
        if spec.threshold != manifest.threshold {
            return Err(format!(
                "golden inference: the manifest's threshold {} is not {ENSEMBLE_FILE}'s {}",
                manifest.threshold, spec.threshold
            ));
        }
        let image = crate::radiograph::decode(&input)
            .map_err(|e| format!("golden inference: golden input: {e}"))?
            .image;
        let p = engine
            .predict(&image, None, ClinicalInput::default(), Explain::GradCam)
            .map_err(|e| format!("golden inference: prediction failed: {e}"))?;
        let members: Vec<f64> = p.members.iter().map(|m| m.probability as f64).collect();
        compare(&expected, p.probability as f64, p.pbt, &members)
    }
}

/// Compares the engine's answer with the golden output: probability within the tolerance,
/// the same flag, and (when the golden output lists them) every member's probability within
/// the tolerance.
pub fn compare(
    expected: &GoldenOutput,
    probability: f64,
    flag: bool,
    member_scores: &[f64],
) -> Result<(), String> {
    let tol = expected.tolerance;
    // Written so that NaN fails.
    let within = |got: f64, want: f64| (got - want).abs() <= tol;
    if !within(probability, expected.probability) {
        return Err(format!(
            "golden inference mismatch: probability {probability:.6}, golden output {:.6} \
             (difference {:.2e} > tolerance {tol:.1e})",
            expected.probability,
            (probability - expected.probability).abs()
        ));
    }
    if flag != expected.flag {
        return Err(format!(
            "golden inference mismatch: flag {flag}, golden output {}",
            expected.flag
        ));
    }
    if !expected.member_scores.is_empty() {
        if expected.member_scores.len() != member_scores.len() {
            return Err(format!(
                "golden inference mismatch: {} member scores, golden output lists {}",
                member_scores.len(),
                expected.member_scores.len()
            ));
        }
        for (i, (&got, &want)) in member_scores
            .iter()
            .zip(&expected.member_scores)
            .enumerate()
        {
            if !within(got, want) {
                return Err(format!(
                    "golden inference mismatch: member {i} score {got:.6}, golden output \
                     {want:.6} (tolerance {tol:.1e})"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::testkit::*;
    use crate::bundle::{Header, Keyring, Policy};
    use crate::slots::{FileIntegrityCheck, SlotError, SlotManager, SlotState};

    fn golden(p: f64, flag: bool, members: &[f64]) -> GoldenOutput {
        GoldenOutput {
            probability: p,
            flag,
            tolerance: 1e-4,
            member_scores: members.to_vec(),
        }
    }

    #[test]
    fn compare_checks_probability_flag_and_member_scores() {
        let g = golden(0.7, true, &[0.6, 0.8]);
        compare(&g, 0.70005, true, &[0.60009, 0.8]).unwrap();
        let e = compare(&g, 0.7002, true, &[0.6, 0.8]).unwrap_err();
        assert!(
            e.contains("probability 0.700200") && e.contains("0.700000"),
            "{e}"
        );
        let e = compare(&g, 0.7, false, &[0.6, 0.8]).unwrap_err();
        assert!(e.contains("flag false"), "{e}");
        let e = compare(&g, 0.7, true, &[0.6, 0.81]).unwrap_err();
        assert!(e.contains("member 1"), "{e}");
        let e = compare(&g, 0.7, true, &[0.6]).unwrap_err();
        assert!(e.contains("1 member scores"), "{e}");
        assert!(compare(&g, f64::NAN, true, &[0.6, 0.8]).is_err());
        // Member scores are optional in the golden output.
        compare(&golden(0.7, true, &[]), 0.7, true, &[0.1, 0.2, 0.3]).unwrap();
    }

    fn manifest_of(bundle: &Path) -> Manifest {
        let mut f = std::fs::File::open(bundle).unwrap();
        Header::read_from(&mut f).unwrap().0.manifest().unwrap()
    }

    /// A bundle of bare model files (no ensemble.json: what `tirp bundle build --model` made
    /// before the engine) passes the integrity check but is never marked good by the golden
    /// check; activation reverts with the reason.
    #[test]
    fn bundle_without_ensemble_spec_is_refused_and_reverted() {
        let dir = tempfile::tempdir().unwrap();
        let k = key(4);
        let ring = Keyring::new([k.verifying_key()]);
        let b = make_bundle(
            dir.path(),
            "legacy.tirpb",
            5_000,
            1,
            "x86_64-dev",
            "1.0.0",
            1,
            Some(&k),
        );
        let check = GoldenInferenceCheck::new(EngineOptions::default());
        let root = dir.path().join("slots");
        let mut m = SlotManager::open(&root, &check, 3).unwrap();
        let sha = hex::encode(bundle::file_sha256(&b).unwrap());
        let policy = Policy {
            keyring: &ring,
            board: "x86_64-dev",
            security_floor: 0,
        };
        m.install(&b, &policy, &sha).unwrap();
        FileIntegrityCheck
            .check(&m.slot_dir(crate::slots::SlotId::A), &manifest_of(&b))
            .unwrap();
        match m.activate(&check) {
            Err(SlotError::HealthCheck { message, .. }) => {
                assert!(message.contains("no ensemble.json"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.report().a.state, SlotState::Bad);
        assert_eq!(m.report().active, None);
    }

    /// No golden pair: refused by the manifest format at build (and install), and by the
    /// check itself should such a manifest ever reach it.
    #[test]
    fn bundle_without_golden_pair_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let b = make_bundle(
            dir.path(),
            "g.tirpb",
            100,
            1,
            "x86_64-dev",
            "1.0.0",
            1,
            None,
        );
        let mut manifest = manifest_of(&b);
        manifest.files.retain(|f| f.role != FileRole::GoldenOutput);
        let e = GoldenInferenceCheck::new(EngineOptions::default())
            .check(&dir.path().join("g.tirpb.src"), &manifest)
            .unwrap_err();
        assert!(e.contains("no GoldenOutput file"), "{e}");
        let model = dir.path().join("g.tirpb.src/member0.onnx");
        let e = bundle::build(
            bundle::BuildSpec {
                name: "x".into(),
                version: "1".into(),
                security_version: 0,
                compatible: vec!["x86_64-dev".into()],
                preprocess: Default::default(),
                threshold: 0.5,
                created_unix: 0,
            },
            &[bundle::BuildFile {
                name: "member0.onnx".into(),
                role: FileRole::Model,
                path: model,
            }],
            &dir.path().join("no-golden.tirpb"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("GoldenInput"), "{e}");
    }
}
