//! What a model bundle holds for the engine: `ensemble.json`, written by the model pipeline
//! (`tirp train`) beside the ONNX files it names, and read by the engine. One definition,
//! so the writer and the reader cannot drift.
//!
//! The flow it describes: ROI crop → [`PreprocessSpec::model_input`] → every member
//! (`x [N,1,S,S]` → `logit [N,1]`, `cam [N,1,h,w]`) → member probabilities σ(logit) in
//! member order, then the clinical features of [`crate::clinical::clinical`] → stacker
//! (`features [N, members + 10]` → `probability [N,1]`) → `probability ≥ threshold` flags a
//! primary bone tumour.

use crate::clinical::CLINICAL_NAMES;
use crate::preprocess::PreprocessSpec;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name of the spec inside a bundle directory.
pub const ENSEMBLE_FILE: &str = "ensemble.json";
/// Version of the spec's layout; the engine refuses others.
pub const ENSEMBLE_FORMAT: u16 = 1;

/// Graph names every member and the stacker use.
pub const MEMBER_INPUT: &str = "x";
pub const MEMBER_LOGIT: &str = "logit";
pub const MEMBER_CAM: &str = "cam";
pub const STACKER_INPUT: &str = "features";
pub const STACKER_OUTPUT: &str = "probability";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleSpec {
    pub format: u16,
    pub name: String,
    pub version: String,
    /// How the members' input is made from a radiograph and its ROI (training's statistics).
    pub preprocess: PreprocessSpec,
    pub members: Vec<MemberSpec>,
    pub stacker: StackerSpec,
    /// Operating point on the stacker's probability, chosen on validation.
    pub threshold: f32,
    /// The automatic lesion localiser, when the bundle has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub localiser: Option<LocaliserSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// `resnet`, `effnet`, `vit`, …; also the stacker's feature name `p_<name>`.
    pub name: String,
    /// The ONNX file the engine runs (weight-only int8 in shipped bundles).
    pub file: String,
    /// A full-int8 (QDQ) variant, used only on boards whose profile says it is faster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_int8_file: Option<String>,
    /// Side of the square class-activation map.
    pub cam_side: u32,
    /// Weight of this member's map in the ensemble heat-map (non-negative, summing to 1
    /// over the members): how much the stacker relies on the member.
    pub cam_weight: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StackerKind {
    /// Logistic regression.
    Lr,
    /// Random forest.
    Rf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StackerSpec {
    pub kind: StackerKind,
    pub file: String,
    /// Names of the stacker's input columns, in order (see [`EnsembleSpec::feature_names`]).
    pub features: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocaliserSpec {
    pub file: String,
    /// Side of the square, letterboxed whole-image input (see [`crate::localise`]).
    pub input_size: u32,
    /// Training-set mean and standard deviation of the letterboxed inputs.
    pub mean: f32,
    pub std: f32,
    /// Below this confidence the result is "no lesion localised — review".
    pub min_confidence: f32,
    /// Run the zoom pass on a window this many times the first box's longer side
    /// ([`crate::localise::zoom_window`]); absent: the first pass's box is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zoom: Option<f32>,
    /// The zoom pass averages its box over the window and its mirror images
    /// ([`crate::localise::MIRRORS`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zoom_flips: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a valid ensemble spec: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("ensemble spec: {0}")]
    Invalid(String),
}

impl EnsembleSpec {
    /// The stacker's input columns for these members: `p_<member>` then the clinical ones.
    pub fn feature_names(members: &[MemberSpec]) -> Vec<String> {
        members
            .iter()
            .map(|m| format!("p_{}", m.name))
            .chain(CLINICAL_NAMES.iter().map(|s| s.to_string()))
            .collect()
    }

    /// Reads and checks `dir/ensemble.json`.
    pub fn load(dir: &Path) -> Result<Self, SpecError> {
        let path = dir.join(ENSEMBLE_FILE);
        let shown = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|source| SpecError::Io {
            path: shown.clone(),
            source,
        })?;
        let spec: EnsembleSpec =
            serde_json::from_slice(&bytes).map_err(|source| SpecError::Parse {
                path: shown,
                source,
            })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Writes `dir/ensemble.json` (after checking it).
    pub fn save(&self, dir: &Path) -> Result<(), SpecError> {
        self.validate()?;
        let path = dir.join(ENSEMBLE_FILE);
        let json = serde_json::to_vec_pretty(self).expect("spec serialises");
        std::fs::write(&path, json).map_err(|source| SpecError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |m: String| Err(SpecError::Invalid(m));
        if self.format != ENSEMBLE_FORMAT {
            return bad(format!(
                "format {} is not supported (this build reads format {ENSEMBLE_FORMAT})",
                self.format
            ));
        }
        if self.members.is_empty() {
            return bad("no image members".into());
        }
        if !(0.0..=1.0).contains(&self.threshold) {
            return bad(format!("threshold {} outside [0, 1]", self.threshold));
        }
        let mut names = std::collections::HashSet::new();
        for m in &self.members {
            if !names.insert(m.name.as_str()) {
                return bad(format!("member `{}` appears twice", m.name));
            }
            if m.cam_side == 0 {
                return bad(format!("member `{}`: cam_side 0", m.name));
            }
            if !(m.cam_weight >= 0.0 && m.cam_weight.is_finite()) {
                return bad(format!("member `{}`: cam_weight {}", m.name, m.cam_weight));
            }
        }
        let sum: f32 = self.members.iter().map(|m| m.cam_weight).sum();
        if (sum - 1.0).abs() > 1e-3 {
            return bad(format!("cam weights sum to {sum}, not 1"));
        }
        let expected = Self::feature_names(&self.members);
        if self.stacker.features != expected {
            return bad(format!(
                "stacker features {:?} do not match the members and clinical features {:?}",
                self.stacker.features, expected
            ));
        }
        let files = self
            .members
            .iter()
            .flat_map(|m| std::iter::once(&m.file).chain(m.full_int8_file.as_ref()))
            .chain(std::iter::once(&self.stacker.file))
            .chain(self.localiser.as_ref().map(|l| &l.file));
        for f in files {
            crate::bundle::check_file_name(f).map_err(SpecError::Invalid)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> EnsembleSpec {
        let members: Vec<MemberSpec> = ["resnet", "vit"]
            .iter()
            .map(|n| MemberSpec {
                name: n.to_string(),
                file: format!("{n}.onnx"),
                full_int8_file: None,
                cam_side: 8,
                cam_weight: 0.5,
            })
            .collect();
        EnsembleSpec {
            format: ENSEMBLE_FORMAT,
            name: "t".into(),
            version: "0.1.0".into(),
            preprocess: PreprocessSpec::default(),
            stacker: StackerSpec {
                kind: StackerKind::Rf,
                file: "stacker.onnx".into(),
                features: EnsembleSpec::feature_names(&members),
            },
            members,
            threshold: 0.5,
            localiser: None,
        }
    }

    #[test]
    fn roundtrips_and_rejects_inconsistent_specs() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec();
        s.save(dir.path()).unwrap();
        assert_eq!(EnsembleSpec::load(dir.path()).unwrap(), s);
        assert_eq!(s.stacker.features[0], "p_resnet");
        assert_eq!(s.stacker.features.len(), 12);

        let mut t = spec();
        t.members[1].cam_weight = 0.9;
        assert!(t.validate().unwrap_err().to_string().contains("sum to"));
        let mut t = spec();
        t.stacker.features.pop();
        assert!(
            t.validate()
                .unwrap_err()
                .to_string()
                .contains("stacker features")
        );
        let mut t = spec();
        t.members[0].file = "../x.onnx".into();
        assert!(t.validate().is_err());
        let mut t = spec();
        t.format = 9;
        assert!(t.validate().unwrap_err().to_string().contains("format 9"));
        std::fs::write(dir.path().join(ENSEMBLE_FILE), b"{").unwrap();
        let e = EnsembleSpec::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("ensemble.json"), "{e}");
    }
}
