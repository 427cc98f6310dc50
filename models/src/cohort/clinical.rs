//! Clinical characteristics of the synthetic patients: label, age, sex and lesion site.
//!
//! Age and sex follow the DeepTIRP study's public training label table
//! (`shared/deeptirp/train.csv`, patient level): the age histograms below are its counts
//! in 5-year bins (681 tumour and 302 infection patients).

use rand::Rng;

pub use tirp_firmware::clinical::{Label, Sex, Site};
pub(crate) use tirp_firmware::text_enum;

/// Fraction of infections among patients (302 of 983 in the public table).
pub const INFECTION_FRACTION: f64 = 0.31;

/// Probability of male sex per class (public table: 56% of tumours, 64% of infections).
pub fn p_male(label: Label) -> f64 {
    match label {
        Label::Pbt => 0.56,
        Label::Infection => 0.64,
    }
}

/// Patient counts per 5-year age bin [0,5), [5,10), … [80,85) in the public table.
const AGE_BINS_PBT: [u32; 17] = [
    22, 61, 134, 99, 53, 53, 39, 36, 37, 33, 44, 24, 20, 17, 7, 1, 1,
];
const AGE_BINS_INFECTION: [u32; 17] = [
    2, 6, 19, 14, 14, 26, 11, 11, 23, 25, 41, 22, 39, 28, 16, 4, 1,
];

/// Site frequencies per class, in [`Site::ALL`] order. Tumours lean to the femur and
/// humerus (metaphyses of the fast-growing bones), infections to the tibia, pelvis and
/// forearm.
fn site_weights(label: Label) -> [f64; 6] {
    match label {
        Label::Pbt => [0.38, 0.22, 0.17, 0.05, 0.07, 0.11],
        Label::Infection => [0.25, 0.33, 0.08, 0.10, 0.06, 0.18],
    }
}

/// Samples an index from unnormalised weights.
pub fn categorical<R: Rng>(rng: &mut R, weights: &[f64]) -> usize {
    let total: f64 = weights.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (i, w) in weights.iter().enumerate() {
        if u < *w {
            return i;
        }
        u -= w;
    }
    weights.len() - 1
}

/// Age in whole years: a bin by its count in the public table, then uniform within it.
pub fn sample_age<R: Rng>(rng: &mut R, label: Label) -> u8 {
    let bins = match label {
        Label::Pbt => &AGE_BINS_PBT,
        Label::Infection => &AGE_BINS_INFECTION,
    };
    let weights: Vec<f64> = bins.iter().map(|&c| c as f64).collect();
    let bin = categorical(rng, &weights) as u8;
    // The youngest patients in the table are 1 year old.
    (bin * 5 + rng.random_range(0..5)).max(1)
}

pub fn sample_sex<R: Rng>(rng: &mut R, label: Label) -> Sex {
    if rng.random::<f64>() < p_male(label) {
        Sex::Male
    } else {
        Sex::Female
    }
}

pub fn sample_site<R: Rng>(rng: &mut R, label: Label) -> Site {
    Site::ALL[categorical(rng, &site_weights(label))]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn age_histograms_match_the_public_table_totals() {
        assert_eq!(AGE_BINS_PBT.iter().sum::<u32>(), 681);
        assert_eq!(AGE_BINS_INFECTION.iter().sum::<u32>(), 302);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let ages: Vec<u8> = (0..20000)
            .map(|_| sample_age(&mut rng, Label::Infection))
            .collect();
        let mean = ages.iter().map(|&a| a as f64).sum::<f64>() / ages.len() as f64;
        assert!((mean - 45.2).abs() < 1.5, "{mean}");
    }
}
