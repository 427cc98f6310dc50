//! Synthetic multi-centre radiograph cohort.
//!
//! Real radiographs of bone tumours and infections are private, so the pipeline trains,
//! tests and demonstrates on this cohort. It is deterministic from a seed (same seed, same
//! bytes), follows the DeepTIRP study's clinical figures and splits, and is hard in the
//! way the real task is: lesion signs overlap between classes, and the external centres
//! acquire differently from the internal one.

pub mod acquisition;
pub mod anatomy;
pub mod clinical;
pub mod dicom;
pub mod lesion;
pub mod render;
pub mod signs;

use crate::table::{self, CohortRow, Split};
use acquisition::Centre;
use clinical::{Label, Sex, Site};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Serialize;
use signs::Signs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Patients per split in the DeepTIRP study: centre 1 train / validation / test, and the
/// external centres 2–3.
pub const STUDY_SPLITS: [usize; 4] = [1044, 171, 354, 423];

/// How radiographs are stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    /// 16-bit greyscale PNG; the photometric interpretation is in the label table.
    Png,
    /// DX DICOM (explicit VR little endian) with the clinical header filled in.
    Dicom,
}

impl ImageFormat {
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Dicom => "dcm",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CohortConfig {
    pub seed: u64,
    pub patients: usize,
    /// Side of the square radiographs, pixels (at least 512).
    pub image_size: u32,
    pub format: ImageFormat,
}

impl Default for CohortConfig {
    fn default() -> Self {
        CohortConfig {
            seed: 7,
            patients: STUDY_SPLITS.iter().sum(),
            image_size: 512,
            format: ImageFormat::Png,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CohortError {
    #[error("invalid cohort configuration: {0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("encoding {path}: {source}")]
    Image {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error("encoding DICOM {path}: {message}")]
    Dicom { path: PathBuf, message: String },
    #[error(transparent)]
    Table(#[from] table::TableError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CohortError + '_ {
    move |source| CohortError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One synthetic patient.
#[derive(Debug, Clone, Serialize)]
pub struct Patient {
    pub index: usize,
    pub id: String,
    pub label: Label,
    pub age: u8,
    pub sex: Sex,
    pub site: Site,
    pub centre: u8,
    pub split: Split,
    pub signs: Signs,
    pub views: u8,
    /// Whether the articular end of the bone points down in the image.
    pub end_down: bool,
    /// Side of the body (burned-in marker R or L).
    pub right_side: bool,
    seed: u64,
    format: ImageFormat,
}

// Independent random streams, so adding a draw in one place never shifts another.
const STREAM_PLAN: u64 = 1;
const STREAM_PATIENT: u64 = 2;
const STREAM_ANATOMY: u64 = 3;
const STREAM_VIEW: u64 = 4;

fn rng_for(seed: u64, domain: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ domain.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.set_stream(index);
    rng
}

impl Patient {
    /// The stream that draws this patient's anatomy; the same for every view.
    pub fn anatomy_rng(&self) -> ChaCha8Rng {
        rng_for(self.seed, STREAM_ANATOMY, self.index as u64)
    }

    fn view_rng(&self, view: u8) -> ChaCha8Rng {
        rng_for(self.seed, STREAM_VIEW, self.index as u64 * 4 + view as u64)
    }

    /// The patient as a label-table record (no image): for analyses of the plan alone.
    pub fn record(&self) -> table::Record {
        table::Record {
            path: PathBuf::new(),
            patient_id: self.id.clone(),
            label: self.label,
            age: Some(self.age as f32),
            sex: Some(self.sex),
            site: Some(self.site),
            centre: Some(self.centre),
            split: Some(self.split),
            roi: None,
            photometric: Some(Centre::get(self.centre).photometric),
            signs: Some(self.signs.clone()),
        }
    }

    /// File of view `view`, relative to the cohort directory.
    pub fn image_path(&self, view: u8) -> String {
        format!(
            "images/c{}/{}_v{}.{}",
            self.centre,
            self.id,
            view + 1,
            self.format.extension()
        )
    }
}

/// Patients per split for a cohort of `n`, in the study's proportions.
pub fn split_sizes(n: usize) -> [usize; 4] {
    let total: usize = STUDY_SPLITS.iter().sum();
    let internal = (n as f64 * (total - STUDY_SPLITS[3]) as f64 / total as f64).round() as usize;
    let internal_total = (total - STUDY_SPLITS[3]) as f64;
    let train = (internal as f64 * STUDY_SPLITS[0] as f64 / internal_total).round() as usize;
    let val = (internal as f64 * STUDY_SPLITS[1] as f64 / internal_total).round() as usize;
    [train, val, internal - train - val, n - internal]
}

/// Draws every patient (labels, clinical data, signs, views) without rendering images.
pub fn plan(cfg: &CohortConfig) -> Result<Vec<Patient>, CohortError> {
    if cfg.patients < 20 {
        return Err(CohortError::Config(format!(
            "--patients {} is too small (at least 20)",
            cfg.patients
        )));
    }
    if !(512..=2048).contains(&cfg.image_size) {
        return Err(CohortError::Config(format!(
            "image size {} is outside 512..=2048",
            cfg.image_size
        )));
    }
    let mut rng = rng_for(cfg.seed, STREAM_PLAN, 0);
    let sizes = split_sizes(cfg.patients);
    // External patients: centre 2 and 3 in the proportion 240:183.
    let ext_c2 = (sizes[3] as f64 * 240.0 / 423.0).round() as usize;
    let groups = [
        (1u8, Split::Train, sizes[0]),
        (1, Split::Validation, sizes[1]),
        (1, Split::Test, sizes[2]),
        (2, Split::External, ext_c2),
        (3, Split::External, sizes[3] - ext_c2),
    ];
    // Exact class proportions in every group, then one shuffle so ids reveal nothing.
    let mut slots = Vec::with_capacity(cfg.patients);
    for (centre, split, n) in groups {
        let n_inf = (n as f64 * clinical::INFECTION_FRACTION).round() as usize;
        for i in 0..n {
            slots.push((
                centre,
                split,
                if i < n_inf {
                    Label::Infection
                } else {
                    Label::Pbt
                },
            ));
        }
    }
    slots.shuffle(&mut rng);
    let width = cfg.patients.to_string().len().max(4);
    Ok(slots
        .into_iter()
        .enumerate()
        .map(|(index, (centre, split, label))| {
            let mut r = rng_for(cfg.seed, STREAM_PATIENT, index as u64);
            let site = clinical::sample_site(&mut r, label);
            Patient {
                index,
                id: format!("P{:0width$}", index + 1),
                label,
                age: clinical::sample_age(&mut r, label),
                sex: clinical::sample_sex(&mut r, label),
                site,
                centre,
                split,
                signs: Signs::sample(&mut r, label, site.is_flat_bone()),
                views: 1 + clinical::categorical(&mut r, &[0.2, 0.5, 0.3]) as u8,
                end_down: r.random_bool(0.5),
                right_side: r.random_bool(0.5),
                seed: cfg.seed,
                format: cfg.format,
            }
        })
        .collect())
}

/// What a generation run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub patients: usize,
    pub images: usize,
    pub seconds: f64,
    pub images_per_second: f64,
    pub labels: PathBuf,
    /// SHA-256 of `labels.csv`; images are covered by per-file hashes in `cohort.json`.
    pub labels_sha256: String,
}

/// Renders every radiograph of `patients` as 16-bit PNG under `out` and writes
/// `labels.csv` and `cohort.json`. `progress(done, total)` is called as images finish.
pub fn generate(
    cfg: &CohortConfig,
    out: &Path,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<Summary, CohortError> {
    let start = std::time::Instant::now();
    let patients = plan(cfg)?;
    for c in 1..=3 {
        let dir = out.join(format!("images/c{c}"));
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    }
    let jobs: Vec<(usize, u8)> = patients
        .iter()
        .flat_map(|p| (0..p.views).map(move |v| (p.index, v)))
        .collect();
    let done = AtomicUsize::new(0);
    let total = jobs.len();
    let rendered: Vec<(render::Radiograph, String)> = jobs
        .par_iter()
        .map(|&(pi, view)| {
            let p = &patients[pi];
            let img = render::radiograph(&mut p.view_rng(view), p, cfg.image_size);
            let rel = p.image_path(view);
            let path = out.join(&rel);
            let bytes = match cfg.format {
                ImageFormat::Png => {
                    encode_png16(&img.pixels, img.width, img.height).map_err(|source| {
                        CohortError::Image {
                            path: path.clone(),
                            source,
                        }
                    })?
                }
                ImageFormat::Dicom => {
                    dicom::encode(p, view, &img, cfg.seed).map_err(|e| CohortError::Dicom {
                        path: path.clone(),
                        message: e,
                    })?
                }
            };
            write_atomic(&path, &bytes)?;
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, total);
            Ok((img, hex::encode(sha2::Sha256::digest(&bytes))))
        })
        .collect::<Result<_, CohortError>>()?;
    let mut rows = Vec::with_capacity(total);
    let mut hashes = Vec::with_capacity(total);
    for (&(pi, view), (img, hash)) in jobs.iter().zip(&rendered) {
        let p = &patients[pi];
        rows.push(CohortRow::new(
            p,
            view,
            img,
            Centre::get(p.centre).photometric,
        ));
        hashes.push(serde_json::json!({ "path": p.image_path(view), "sha256": hash }));
    }
    let labels = out.join("labels.csv");
    let csv_bytes = table::write_cohort_csv(&rows)?;
    write_atomic(&labels, &csv_bytes)?;
    let labels_sha256 = hex::encode(sha2::Sha256::digest(&csv_bytes));
    let manifest = serde_json::json!({
        "generator": concat!("tirp-models ", env!("CARGO_PKG_VERSION")),
        "config": cfg,
        "splits": { "train": split_sizes(cfg.patients)[0], "validation": split_sizes(cfg.patients)[1],
                    "test": split_sizes(cfg.patients)[2], "external": split_sizes(cfg.patients)[3] },
        "images": total,
        "labels_sha256": labels_sha256,
        "files": hashes,
        "note": "Synthetic radiographs for development and testing — not patient data, not for diagnostic use.",
    });
    let manifest_path = out.join("cohort.json");
    write_atomic(
        &manifest_path,
        serde_json::to_string_pretty(&manifest)
            .expect("json")
            .as_bytes(),
    )?;
    let seconds = start.elapsed().as_secs_f64();
    Ok(Summary {
        patients: patients.len(),
        images: total,
        seconds,
        images_per_second: total as f64 / seconds,
        labels,
        labels_sha256,
    })
}

use sha2::Digest;

/// Encodes 16-bit greyscale pixels as PNG (fast deflate: generation speed matters more
/// than a few percent of disk).
pub fn encode_png16(pixels: &[u16], w: u32, h: u32) -> Result<Vec<u8>, image::ImageError> {
    use image::codecs::png::{CompressionType, FilterType, PngEncoder};
    let buf: image::ImageBuffer<image::Luma<u16>, &[u16]> =
        image::ImageBuffer::from_raw(w, h, pixels).expect("pixel count matches dimensions");
    let mut bytes = Vec::new();
    buf.write_with_encoder(PngEncoder::new_with_quality(
        &mut bytes,
        CompressionType::Fast,
        FilterType::Sub,
    ))?;
    Ok(bytes)
}

/// Writes via a temporary file and rename, so a crash never leaves a truncated file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CohortError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clinical::Sex;

    #[test]
    fn split_sizes_follow_the_study() {
        assert_eq!(split_sizes(1992), [1044, 171, 354, 423]);
        let s = split_sizes(100);
        assert_eq!(s.iter().sum::<usize>(), 100);
        assert_eq!(s, [53, 9, 17, 21]);
    }

    #[test]
    fn plan_is_deterministic_and_seed_dependent() {
        let cfg = CohortConfig {
            patients: 200,
            ..Default::default()
        };
        let a = serde_json::to_string(&plan(&cfg).unwrap()).unwrap();
        let b = serde_json::to_string(&plan(&cfg).unwrap()).unwrap();
        assert_eq!(a, b);
        let c = serde_json::to_string(&plan(&CohortConfig { seed: 8, ..cfg }).unwrap()).unwrap();
        assert_ne!(a, c);
    }

    /// Class, age and sex figures of the default cohort against the public DeepTIRP table
    /// (patient level: 31% infections; tumours median age 22, mean 27.5, 56% male;
    /// infections median 49.5, mean 45.2, 64% male).
    #[test]
    fn clinical_statistics_follow_the_study() {
        let patients = plan(&CohortConfig::default()).unwrap();
        let n = patients.len() as f64;
        let inf = patients
            .iter()
            .filter(|p| p.label == Label::Infection)
            .count() as f64;
        assert!(
            (inf / n - 0.31).abs() < 0.005,
            "infection fraction {}",
            inf / n
        );
        for (label, median, mean, male) in [
            (Label::Pbt, 22.0, 27.5, 0.56),
            (Label::Infection, 49.5, 45.2, 0.64),
        ] {
            let mut ages: Vec<f64> = patients
                .iter()
                .filter(|p| p.label == label)
                .map(|p| p.age as f64)
                .collect();
            ages.sort_by(f64::total_cmp);
            let m = ages.len();
            let med = if m.is_multiple_of(2) {
                (ages[m / 2 - 1] + ages[m / 2]) / 2.0
            } else {
                ages[m / 2]
            };
            let avg = ages.iter().sum::<f64>() / m as f64;
            let males = patients
                .iter()
                .filter(|p| p.label == label && p.sex == Sex::Male)
                .count() as f64
                / m as f64;
            assert!(
                (med - median).abs() <= 3.0,
                "{label} median age {med} vs {median}"
            );
            assert!(
                (avg - mean).abs() <= 2.0,
                "{label} mean age {avg} vs {mean}"
            );
            assert!(
                (males - male).abs() <= 0.05,
                "{label} male fraction {males} vs {male}"
            );
        }
        // Every split keeps the class balance.
        for split in [
            Split::Train,
            Split::Validation,
            Split::Test,
            Split::External,
        ] {
            let s: Vec<_> = patients.iter().filter(|p| p.split == split).collect();
            let f =
                s.iter().filter(|p| p.label == Label::Infection).count() as f64 / s.len() as f64;
            assert!((f - 0.31).abs() < 0.01, "{split}: {f}");
        }
        let external: Vec<u8> = patients
            .iter()
            .filter(|p| p.split == Split::External)
            .map(|p| p.centre)
            .collect();
        assert!(
            external.iter().all(|&c| c == 2 || c == 3)
                && external.contains(&2)
                && external.contains(&3)
        );
        assert!(
            patients
                .iter()
                .filter(|p| p.split != Split::External)
                .all(|p| p.centre == 1)
        );
        let views: usize = patients.iter().map(|p| p.views as usize).sum();
        assert!(
            (1.9..2.3).contains(&(views as f64 / n)),
            "views per patient {}",
            views as f64 / n
        );
    }

    #[test]
    fn rendering_is_deterministic_and_the_box_holds_the_lesion() {
        let cfg = CohortConfig {
            patients: 20,
            ..Default::default()
        };
        let patients = plan(&cfg).unwrap();
        for p in patients.iter().take(6) {
            let a = render::radiograph(&mut p.view_rng(0), p, 512);
            let b = render::radiograph(&mut p.view_rng(0), p, 512);
            assert_eq!(a.pixels, b.pixels);
            assert_eq!(a.roi, b.roi);
            assert!(a.pixels.iter().all(|&v| v <= acquisition::MAX_VALUE));
            let r = a.roi;
            assert!(
                r.w >= 8 && r.h >= 8 && r.x + r.w <= 512 && r.y + r.h <= 512,
                "{}: {r:?}",
                p.id
            );
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(
            plan(&CohortConfig {
                patients: 3,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            plan(&CohortConfig {
                image_size: 64,
                ..Default::default()
            })
            .is_err()
        );
    }
}
