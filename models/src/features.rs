//! Clinical feature encoding, shared by every model that takes age, sex and site (the
//! clinical models, the stacker, the cohort difficulty check) and by inference, so that a
//! missing value is encoded at inference exactly as in training.

use crate::cohort::clinical::{Sex, Site};

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
