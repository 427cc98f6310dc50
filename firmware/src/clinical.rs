//! Clinical characteristics (label, sex, lesion site) and their feature encoding: one
//! definition for the cohort, training, the stacker and inference, so that a missing value
//! is encoded at inference exactly as in training.

use serde::{Deserialize, Serialize};

/// The question the product answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Label {
    /// Primary bone tumour.
    Pbt,
    /// Bone infection (osteomyelitis).
    Infection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Sex {
    Male,
    Female,
}

/// Lesion site: five long bones and one flat bone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Site {
    Femur,
    Tibia,
    Humerus,
    RadiusUlna,
    Fibula,
    Pelvis,
}

impl Site {
    pub const ALL: [Site; 6] = [
        Site::Femur,
        Site::Tibia,
        Site::Humerus,
        Site::RadiusUlna,
        Site::Fibula,
        Site::Pelvis,
    ];

    pub fn is_flat_bone(self) -> bool {
        self == Site::Pelvis
    }
}

/// Implements `as_str`, `Display` and a case-insensitive `FromStr` whose error lists the
/// accepted words, for a fieldless enum.
#[macro_export]
macro_rules! text_enum {
    ($ty:ty, $what:literal, { $($variant:path => $text:literal),+ $(,)? }) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                match self { $($variant => $text),+ }
            }
        }
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl ::std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($text => Ok($variant),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " {:?} (expected one of: {})"),
                        other,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

text_enum!(Label, "label", { Label::Pbt => "pbt", Label::Infection => "infection" });
text_enum!(Sex, "sex", { Sex::Male => "m", Sex::Female => "f" });
text_enum!(Site, "site", {
    Site::Femur => "femur",
    Site::Tibia => "tibia",
    Site::Humerus => "humerus",
    Site::RadiusUlna => "radius_ulna",
    Site::Fibula => "fibula",
    Site::Pelvis => "pelvis",
});

/// Age is imputed with this value (the study's overall median, years) when missing, and
/// scaled by [`AGE_SCALE`] so that all features are of order one.
pub const AGE_IMPUTE: f32 = 28.0;
pub const AGE_SCALE: f32 = 50.0;

/// Names of the entries of [`clinical`], in order.
pub const CLINICAL_NAMES: [&str; 10] = [
    "age/50",
    "age_missing",
    "male",
    "sex_missing",
    "site=tibia",
    "site=humerus",
    "site=radius_ulna",
    "site=fibula",
    "site=pelvis",
    "site_missing",
];

/// Encodes age, sex and site; femur is the reference site. Missing values get an
/// indicator and a neutral value.
pub fn clinical(age: Option<f32>, sex: Option<Sex>, site: Option<Site>) -> [f32; 10] {
    let mut f = [0.0f32; 10];
    f[0] = age.unwrap_or(AGE_IMPUTE) / AGE_SCALE;
    f[1] = age.is_none() as u8 as f32;
    f[2] = (sex == Some(Sex::Male)) as u8 as f32;
    f[3] = sex.is_none() as u8 as f32;
    match site {
        None => f[9] = 1.0,
        Some(Site::Femur) => {}
        Some(s) => f[3 + Site::ALL.iter().position(|&x| x == s).expect("site in ALL")] = 1.0,
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_roundtrip_and_errors() {
        for s in Site::ALL {
            assert_eq!(s.as_str().parse::<Site>().unwrap(), s);
        }
        assert_eq!("Infection".parse::<Label>().unwrap(), Label::Infection);
        let e = "tumor".parse::<Label>().unwrap_err();
        assert!(e.contains("pbt, infection"), "{e}");
    }
    #[test]
    fn encodes_sites_and_missing_values() {
        let f = clinical(Some(25.0), Some(Sex::Male), Some(Site::Pelvis));
        assert_eq!(f, [0.5, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        let f = clinical(None, None, None);
        assert_eq!(
            f,
            [
                AGE_IMPUTE / AGE_SCALE,
                1.0,
                0.0,
                1.0,
                0.0,
                0.0,
                0.0,
                0.0,
                0.0,
                1.0
            ]
        );
        for (i, s) in Site::ALL.iter().enumerate().skip(1) {
            let f = clinical(Some(1.0), Some(Sex::Female), Some(*s));
            assert_eq!(f[4..9].iter().sum::<f32>(), 1.0);
            assert_eq!(CLINICAL_NAMES[3 + i], format!("site={s}"));
        }
    }
}
