//! Training data: every radiograph's preprocessed ROI crop, computed once and kept in
//! memory (a 128² crop is 64 KiB, so the whole study-sized cohort fits in ~250 MiB).

use crate::cohort::clinical::Label;
use crate::radiograph::{self, LoadError};
use crate::table::Record;
use rand::Rng;
use rayon::prelude::*;
use std::path::PathBuf;
use tirp_firmware::preprocess::{PreprocessError, PreprocessSpec};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{path}: preprocessing: {source}")]
    Preprocess {
        path: PathBuf,
        source: PreprocessError,
    },
    #[error("no radiographs to build a data set from")]
    Empty,
}

/// Scaled crops (before standardisation) and labels (1 = primary bone tumour).
#[derive(Debug, Clone, PartialEq)]
pub struct CropSet {
    pub size: usize,
    pub inputs: Vec<f32>,
    pub labels: Vec<f32>,
}

pub fn target(label: Label) -> f32 {
    match label {
        Label::Pbt => 1.0,
        Label::Infection => 0.0,
    }
}

impl CropSet {
    /// Loads and crops every record in parallel; `progress(done)` after each one. A record
    /// without a lesion box (the study's table) uses the whole image.
    pub fn load(
        records: &[&Record],
        spec: &PreprocessSpec,
        progress: &(dyn Fn() + Sync),
    ) -> Result<Self, DataError> {
        if records.is_empty() {
            return Err(DataError::Empty);
        }
        let crops: Vec<Vec<f32>> = records
            .par_iter()
            .map(|r| {
                let img = radiograph::load_record(r)?;
                let roi = r.roi.unwrap_or_else(|| img.full_roi());
                let crop = spec
                    .scaled_crop(&img, roi)
                    .map_err(|source| DataError::Preprocess {
                        path: r.path.clone(),
                        source,
                    })?;
                progress();
                Ok(crop)
            })
            .collect::<Result<_, DataError>>()?;
        Ok(CropSet {
            size: spec.input_size as usize,
            inputs: crops.concat(),
            labels: records.iter().map(|r| target(r.label)).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn pixels(&self) -> usize {
        self.size * self.size
    }

    /// Mean and standard deviation over all pixels, for the spec's standardisation.
    pub fn mean_std(&self) -> (f32, f32) {
        let n = self.inputs.len() as f64;
        let mean = self.inputs.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = self
            .inputs
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean as f32, var.sqrt().max(1e-6) as f32)
    }

    /// Applies `(v − mean)/std` in place: the same map as `PreprocessSpec::model_input`.
    pub fn standardise(&mut self, mean: f32, std: f32) {
        self.inputs.iter_mut().for_each(|v| *v = (*v - mean) / std);
    }

    /// The inputs and targets of `idx`, each crop flipped horizontally and vertically
    /// with probability ½ when `flips` is given (the study's augmentation).
    pub fn batch<R: Rng>(&self, idx: &[usize], mut flips: Option<&mut R>) -> (Vec<f32>, Vec<f32>) {
        let (s, p) = (self.size, self.pixels());
        let mut x = Vec::with_capacity(idx.len() * p);
        for &i in idx {
            let crop = &self.inputs[i * p..(i + 1) * p];
            let (h, v) = match flips.as_deref_mut() {
                Some(rng) => (rng.random_bool(0.5), rng.random_bool(0.5)),
                None => (false, false),
            };
            for row in 0..s {
                let src = if v { s - 1 - row } else { row };
                let line = &crop[src * s..(src + 1) * s];
                if h {
                    x.extend(line.iter().rev());
                } else {
                    x.extend_from_slice(line);
                }
            }
        }
        (x, idx.iter().map(|&i| self.labels[i]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn flips_permute_pixels_and_keep_labels() {
        let set = CropSet {
            size: 2,
            inputs: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            labels: vec![1.0, 0.0],
        };
        let (x, y) = set.batch::<ChaCha8Rng>(&[1, 0], None);
        assert_eq!(x, vec![5.0, 6.0, 7.0, 8.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(y, vec![0.0, 1.0]);
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            let (x, _) = set.batch(&[0], Some(&mut rng));
            let mut sorted = x.clone();
            sorted.sort_by(f32::total_cmp);
            assert_eq!(sorted, vec![1.0, 2.0, 3.0, 4.0]);
            seen.insert(x.iter().map(|v| *v as u8).collect::<Vec<_>>());
        }
        // Identity, horizontal, vertical and both: all four arrangements occur.
        let expect: std::collections::HashSet<Vec<u8>> = [
            vec![1, 2, 3, 4],
            vec![2, 1, 4, 3],
            vec![3, 4, 1, 2],
            vec![4, 3, 2, 1],
        ]
        .into();
        assert_eq!(seen, expect);
    }

    #[test]
    fn standardisation_matches_the_spec_map() {
        let mut set = CropSet {
            size: 1,
            inputs: vec![0.0, 1.0, 2.0, 3.0],
            labels: vec![0.0; 4],
        };
        let (m, s) = set.mean_std();
        assert!((m - 1.5).abs() < 1e-6 && (s - 1.25f32.sqrt()).abs() < 1e-6);
        set.standardise(m, s);
        let (m2, s2) = set.mean_std();
        assert!(m2.abs() < 1e-6 && (s2 - 1.0).abs() < 1e-5);
    }
}
