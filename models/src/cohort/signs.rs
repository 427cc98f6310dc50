//! Latent radiographic signs of a lesion, drawn from class-conditional probabilities that
//! overlap so that no single sign decides (a logistic regression on all of them reaches an
//! internal-test AUC of about 0.93; see the README's difficulty table).

use super::clinical::{Label, categorical, text_enum};
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Lysis {
    /// One well-defined hole.
    Geographic,
    /// Clustered medium holes.
    MothEaten,
    /// Many tiny holes over a long segment.
    Permeative,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Matrix {
    None,
    /// Cloudy, fluffy mineralisation (bone-forming tumours).
    Osteoid,
    /// Rings and arcs (cartilage tumours).
    Chondroid,
}

/// Position along a long bone; flat bones have no such position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Location {
    Epiphyseal,
    Metaphyseal,
    Diaphyseal,
    Flat,
}

text_enum!(Lysis, "lysis pattern", {
    Lysis::Geographic => "geographic",
    Lysis::MothEaten => "moth_eaten",
    Lysis::Permeative => "permeative",
});
text_enum!(Matrix, "matrix", { Matrix::None => "none", Matrix::Osteoid => "osteoid", Matrix::Chondroid => "chondroid" });
text_enum!(Location, "location", {
    Location::Epiphyseal => "epiphyseal",
    Location::Metaphyseal => "metaphyseal",
    Location::Diaphyseal => "diaphyseal",
    Location::Flat => "flat",
});

/// Every latent sign of one lesion; all views of a patient show the same signs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signs {
    pub location: Location,
    pub lysis: Lysis,
    /// Narrow zone of transition (sharp margin) rather than wide.
    pub narrow_transition: bool,
    pub expansile: bool,
    pub matrix: Matrix,
    pub sunburst: bool,
    pub codman: bool,
    /// Lamellated ("onion-skin") periosteal reaction over a long segment.
    pub lamellated: bool,
    pub sequestrum: bool,
    pub cortical_destruction: bool,
    pub soft_tissue_mass: bool,
    pub soft_tissue_swelling: bool,
    pub sclerosis: bool,
    /// Longest diameter of the lytic area.
    pub size_mm: f32,
}

/// (P(sign | tumour), P(sign | infection)).
const NARROW: (f64, f64) = (0.58, 0.32);
const EXPANSILE: (f64, f64) = (0.30, 0.12);
const SUNBURST: (f64, f64) = (0.14, 0.04);
const CODMAN: (f64, f64) = (0.15, 0.05);
const LAMELLATED: (f64, f64) = (0.12, 0.38);
const SEQUESTRUM: (f64, f64) = (0.04, 0.25);
const CORTICAL_DESTRUCTION: (f64, f64) = (0.38, 0.52);
const SOFT_TISSUE_MASS: (f64, f64) = (0.38, 0.14);
const SOFT_TISSUE_SWELLING: (f64, f64) = (0.15, 0.52);
const SCLEROSIS: (f64, f64) = (0.20, 0.47);

fn pick(label: Label, tumour: [f64; 3], infection: [f64; 3]) -> [f64; 3] {
    if label == Label::Pbt {
        tumour
    } else {
        infection
    }
}

fn flip<R: Rng>(rng: &mut R, label: Label, (p_pbt, p_inf): (f64, f64)) -> bool {
    rng.random::<f64>() < if label == Label::Pbt { p_pbt } else { p_inf }
}

impl Signs {
    /// Draws the signs of one lesion; `flat` selects a flat bone (no long-bone location).
    pub fn sample<R: Rng>(rng: &mut R, label: Label, flat: bool) -> Signs {
        let location = if flat {
            Location::Flat
        } else {
            let w = pick(label, [0.15, 0.60, 0.25], [0.12, 0.35, 0.53]);
            [
                Location::Epiphyseal,
                Location::Metaphyseal,
                Location::Diaphyseal,
            ][categorical(rng, &w)]
        };
        let lysis = [Lysis::Geographic, Lysis::MothEaten, Lysis::Permeative]
            [categorical(rng, &pick(label, [0.55, 0.26, 0.19], [0.24, 0.40, 0.36]))];
        let matrix = [Matrix::None, Matrix::Osteoid, Matrix::Chondroid]
            [categorical(rng, &pick(label, [0.62, 0.22, 0.16], [0.90, 0.05, 0.05]))];
        Signs {
            location,
            lysis,
            narrow_transition: flip(rng, label, NARROW),
            expansile: flip(rng, label, EXPANSILE),
            matrix,
            sunburst: flip(rng, label, SUNBURST),
            codman: flip(rng, label, CODMAN),
            lamellated: flip(rng, label, LAMELLATED),
            sequestrum: flip(rng, label, SEQUESTRUM),
            cortical_destruction: flip(rng, label, CORTICAL_DESTRUCTION),
            soft_tissue_mass: flip(rng, label, SOFT_TISSUE_MASS),
            soft_tissue_swelling: flip(rng, label, SOFT_TISSUE_SWELLING),
            sclerosis: flip(rng, label, SCLEROSIS),
            // Same size distribution for both classes: size carries no label information.
            size_mm: rng.random_range(18.0..55.0f32),
        }
    }

    /// One-hot / binary encoding of the signs (reference level dropped for categoricals),
    /// used to measure how hard the cohort is. Size is left out: it carries no label.
    pub fn features(&self) -> Vec<f64> {
        let b = |v: bool| v as u8 as f64;
        vec![
            b(self.location == Location::Epiphyseal),
            b(self.location == Location::Metaphyseal),
            b(self.location == Location::Flat),
            b(self.lysis == Lysis::MothEaten),
            b(self.lysis == Lysis::Permeative),
            b(self.narrow_transition),
            b(self.expansile),
            b(self.matrix == Matrix::Osteoid),
            b(self.matrix == Matrix::Chondroid),
            b(self.sunburst),
            b(self.codman),
            b(self.lamellated),
            b(self.sequestrum),
            b(self.cortical_destruction),
            b(self.soft_tissue_mass),
            b(self.soft_tissue_swelling),
            b(self.sclerosis),
        ]
    }

    pub const FEATURE_NAMES: [&'static str; 17] = [
        "location=epiphyseal",
        "location=metaphyseal",
        "location=flat",
        "lysis=moth_eaten",
        "lysis=permeative",
        "narrow_transition",
        "expansile",
        "matrix=osteoid",
        "matrix=chondroid",
        "sunburst",
        "codman",
        "lamellated",
        "sequestrum",
        "cortical_destruction",
        "soft_tissue_mass",
        "soft_tissue_swelling",
        "sclerosis",
    ];
}
