//! The inference engine: a model bundle (`ensemble.json` + ONNX files, see
//! [`crate::ensemble`]) loaded once into tract plans, and the prediction for one radiograph.
//!
//! Flow of [`Engine::predict`]: ROI (the caller's; else the bundle's localiser's, see
//! [`crate::localise`]; else the whole image) → the shared preprocessing → every image member (in parallel threads when allowed) → member
//! probabilities σ(logit) and the clinical features → the stacker → `probability ≥
//! threshold` flags a suspected primary bone tumour → the heat-map (Grad-CAM from the
//! members' `cam` outputs, or Score-CAM by masked re-runs).
//!
//! **No lesion localised.** When the localiser's confidence is below the bundle's
//! `min_confidence`, nothing is classified: the [`Prediction`] has `review: true`, the flag
//! [`FLAG_NO_LESION`], `pbt: false`, `probability: 0` (not a score: no member ran, so read
//! `review` before `probability`), no members, and an all-zero heat-map over the whole image;
//! `localiser` holds the box it would have used and its confidence. A caller's ROI always
//! wins: the localiser is not run.
//!
//! ```no_run
//! # use tirp_firmware::engine::*;
//! # fn main() -> Result<(), EngineError> {
//! let engine = Engine::load("models/bundle".as_ref(), &EngineOptions::default())?;
//! let input = load_input("x.dcm".as_ref(), None)?;
//! let p = engine.predict_input(&input, None, ClinicalInput::default(), Explain::GradCam)?;
//! println!("{} (p = {:.2})", p.flag, p.probability);
//! # Ok(()) }
//! ```

pub mod cam;
pub mod overlay;
mod plan;

pub use plan::{OpTime, Output, Outputs, Plan};

use crate::board::BoardProfile;
use crate::clinical::{Sex, Site, clinical};
use crate::ensemble::{
    EnsembleSpec, MEMBER_CAM, MEMBER_LOGIT, MemberSpec, STACKER_OUTPUT, SpecError,
};
use crate::localise;
use crate::preprocess::{GrayImage, PreprocessError, PreprocessSpec, Roi};
use crate::radiograph::{self, DicomHeader, Format, LoadError, Photometric};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Name of the members' optional last-feature-map output (Score-CAM needs it).
pub const MEMBER_FMAP: &str = "fmap";
/// Flag texts.
pub const FLAG_PBT: &str = "suspected primary bone tumour";
pub const FLAG_INFECTION: &str = "suspected bone infection";
/// The flag when the localiser found nothing confident enough to classify.
pub const FLAG_NO_LESION: &str = "no lesion localised — review";
pub const NOTICE: &str = "NOT FOR DIAGNOSTIC USE";
/// Ages the engine accepts, in years.
pub const AGE_RANGE: std::ops::RangeInclusive<f32> = 0.0..=120.0;
/// Masked inputs per Score-CAM batch.
pub const SCORE_CAM_BATCH: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no model bundle in {dir}: {source}")]
    Bundle {
        dir: PathBuf,
        #[source]
        source: SpecError,
    },
    #[error("{file}: {message}")]
    Model { file: String, message: String },
    #[error("{file}: output `{output}` has shape {got:?}, expected {expected:?}")]
    Shape {
        file: String,
        output: String,
        got: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("age {0} is outside [0, 120] years")]
    Age(f32),
    #[error(
        "Score-CAM needs each member's last feature map, but member `{member}` ({file}) has no \
         `fmap` output; use Grad-CAM, or re-export the member"
    )]
    NoFeatureMap { member: String, file: String },
    #[error("a thread running the members panicked")]
    Panic,
}

type Result<T, E = EngineError> = std::result::Result<T, E>;

/// How the heat-map is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Explain {
    /// The members' `cam` outputs (free: computed with the logit).
    GradCam,
    /// Score-CAM (Wang et al. 2020): one masked re-run per feature channel.
    ScoreCam,
}

crate::text_enum!(Explain, "explanation", {
    Explain::GradCam => "gradcam",
    Explain::ScoreCam => "scorecam",
});

/// The clinical characteristics given with a radiograph; any may be missing (encoded as in
/// training: an indicator plus a neutral value).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClinicalInput {
    pub age: Option<f32>,
    pub sex: Option<Sex>,
    pub site: Option<Site>,
}

impl ClinicalInput {
    pub fn validate(&self) -> Result<()> {
        match self.age {
            Some(a) if !(a.is_finite() && AGE_RANGE.contains(&a)) => Err(EngineError::Age(a)),
            _ => Ok(()),
        }
    }

    /// Fills the missing values from a DICOM header; returns the names of those it took.
    pub fn fill_from(&mut self, header: &DicomHeader) -> Vec<String> {
        let mut taken = Vec::new();
        if self.age.is_none() && header.age.is_some() {
            self.age = header.age;
            taken.push("age".to_owned());
        }
        if self.sex.is_none() && header.sex.is_some() {
            self.sex = header.sex;
            taken.push("sex".to_owned());
        }
        if self.site.is_none() && header.site.is_some() {
            self.site = header.site;
            taken.push("site".to_owned());
        }
        taken
    }
}

/// Where the ROI came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RoiSource {
    /// Given with the request (the radiographer's box, a table's `roi_*` columns).
    Caller,
    /// None given, no localiser: the whole image.
    WholeImage,
    /// None given: found by the bundle's localiser (see [`Prediction::localiser`]).
    Localiser,
}

/// What the localiser found (present whenever it ran, i.e. no ROI was given and the bundle
/// has one).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LocaliserReport {
    /// The heat-map's value at the chosen cell (0–1).
    pub confidence: f32,
    /// The box it found, in image pixels (the prediction's ROI unless `review`).
    pub roi: Roi,
    /// The zoom pass's window, when it ran (see [`localise`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<localise::Window>,
    /// The bundle's threshold: below it the result is [`FLAG_NO_LESION`].
    pub min_confidence: f32,
    /// Letterbox, graph and decoding (both passes).
    pub ms: f64,
}

impl LocaliserReport {
    /// Whether the box is confident enough to classify.
    pub fn localised(&self) -> bool {
        self.confidence >= self.min_confidence
    }
}

/// How the engine runs.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineOptions {
    /// Threads for the members (1 = sequential).
    pub threads: usize,
    /// tract intra-op workers for every graph's matrix products, one pool shared by the
    /// engine's plans (1 = tract's single thread per graph).
    pub intra_op_threads: usize,
    /// Ask for a GPU runtime (only with the `cuda` feature; falls back to the CPU).
    pub gpu: bool,
    /// Run the members' full-int8 files where the bundle has them.
    pub full_int8: bool,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            threads: 1,
            intra_op_threads: 1,
            gpu: true,
            full_int8: false,
        }
    }
}

impl EngineOptions {
    pub fn for_board(board: &BoardProfile) -> Self {
        EngineOptions {
            threads: board.cpu.inference_threads.max(1) as usize,
            intra_op_threads: board.cpu.intra_op_threads.max(1) as usize,
            gpu: board.cuda.use_cuda,
            full_int8: board.quantization.full_int8_measured_faster,
        }
    }
}

#[derive(Debug)]
struct LoadedMember {
    spec: MemberSpec,
    plan: Plan,
}

/// A loaded bundle. `Send + Sync`: share it (`Arc<Engine>`) between request threads.
#[derive(Debug)]
pub struct Engine {
    spec: EnsembleSpec,
    dir: PathBuf,
    members: Vec<LoadedMember>,
    stacker: Plan,
    localiser: Option<Plan>,
    threads: usize,
    intra_op_threads: usize,
    backend: String,
    load_ms: f64,
}

/// One member's raw outputs for one image.
#[derive(Debug, Clone)]
struct MemberRun {
    logit: f32,
    /// `cam_side²` values.
    cam: Vec<f32>,
    /// `[C, side, side]` when the member exports it.
    fmap: Option<(Vec<f32>, usize, usize)>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberResult {
    pub name: String,
    pub logit: f32,
    pub probability: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClinicalReport {
    pub age: Option<f32>,
    pub sex: Option<String>,
    pub site: Option<String>,
    /// Inputs that were missing (encoded as missing for the stacker).
    pub missing: Vec<String>,
    /// Inputs taken from the DICOM header rather than the caller.
    pub from_dicom: Vec<String>,
}

/// The square window the members saw, in image pixels (it may reach past the borders).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CropBox {
    pub x: i64,
    pub y: i64,
    pub side: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Peak {
    /// Image coordinates of the hottest point.
    pub x: f32,
    pub y: f32,
    pub value: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberMap {
    pub name: String,
    /// `side²` values over the crop (Grad-CAM: signed contributions; Score-CAM: ≥ 0).
    pub values: Vec<f32>,
}

/// The ensemble heat-map over the crop, `side × side` row-major at the model-input
/// resolution. `values` is the shown, non-negative PBT-evidence map (see [`cam`] for the
/// sign convention).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HeatMap {
    pub method: Explain,
    pub side: u32,
    pub crop: CropBox,
    pub max: f32,
    pub peak: Peak,
    pub values: Vec<f32>,
    /// Grad-CAM's signed ensemble map (negative = infection evidence); `None` for Score-CAM.
    #[serde(skip)]
    pub signed: Option<Vec<f32>>,
    #[serde(skip)]
    pub members: Vec<MemberMap>,
}

#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Timings {
    pub decode_ms: f64,
    /// The localiser (0 when it did not run).
    pub localise_ms: f64,
    pub preprocess_ms: f64,
    pub members_ms: f64,
    pub stacker_ms: f64,
    pub explain_ms: f64,
    pub total_ms: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BundleId {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    pub flag: String,
    /// Whether the flag is "suspected primary bone tumour".
    pub pbt: bool,
    /// No lesion localised (the localiser's confidence was below its minimum): nothing was
    /// classified, the flag is [`FLAG_NO_LESION`], `pbt` false, `probability` 0, no members.
    pub review: bool,
    /// The stacker's probability of a primary bone tumour (0, and meaningless, when
    /// `review`).
    pub probability: f32,
    pub threshold: f32,
    pub members: Vec<MemberResult>,
    pub clinical: ClinicalReport,
    pub roi: Roi,
    pub roi_source: RoiSource,
    /// What the localiser found, when it ran (`None`: a caller's ROI, or no localiser).
    pub localiser: Option<LocaliserReport>,
    pub backend: String,
    pub bundle: BundleId,
    pub timings: Timings,
    pub heatmap: HeatMap,
    pub notice: &'static str,
}

/// A decoded input radiograph, ready for [`Engine::predict_input`].
#[derive(Debug, Clone)]
pub struct Input {
    /// MONOCHROME2.
    pub image: GrayImage,
    pub format: Format,
    pub header: Option<DicomHeader>,
    pub decode_ms: f64,
}

/// Decodes `path` (PNG, JPEG or DICOM) to MONOCHROME2. `photometric` says how a PNG/JPEG
/// was stored (they carry no such tag; default MONOCHROME2); DICOM's own tag always wins.
pub fn load_input(path: &Path, photometric: Option<Photometric>) -> Result<Input> {
    let t = Instant::now();
    let d = radiograph::load(path)?;
    let mut image = d.image;
    if d.photometric.is_none() && photometric == Some(Photometric::Monochrome1) {
        image.invert();
    }
    Ok(Input {
        image,
        format: d.format,
        header: d.dicom,
        decode_ms: ms(t),
    })
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl Engine {
    /// Reads `dir/ensemble.json` and loads every graph it names (once).
    pub fn load(dir: &Path, options: &EngineOptions) -> Result<Engine> {
        let t = Instant::now();
        let spec = EnsembleSpec::load(dir).map_err(|source| EngineError::Bundle {
            dir: dir.to_owned(),
            source,
        })?;
        spec.preprocess.validate()?;
        let s = spec.preprocess.input_size as usize;
        let intra_op_threads = options.intra_op_threads.max(1);
        let pool = plan::intra_op_executor(intra_op_threads);
        let mut members = Vec::with_capacity(spec.members.len());
        for m in &spec.members {
            let file = match (&m.full_int8_file, options.full_int8) {
                (Some(f), true) => f,
                _ => &m.file,
            };
            let plan = Plan::load(
                &dir.join(file),
                &[1, s, s],
                &[MEMBER_LOGIT, MEMBER_CAM],
                &[MEMBER_FMAP],
                options.gpu,
            )?
            .with_executor(pool.clone());
            let c = m.cam_side as usize;
            check_dims(&plan, 0, MEMBER_LOGIT, &[1])?;
            check_dims(&plan, 1, MEMBER_CAM, &[1, c, c])?;
            members.push(LoadedMember {
                spec: m.clone(),
                plan,
            });
        }
        let features = spec.stacker.features.len();
        let stacker = Plan::load(
            &dir.join(&spec.stacker.file),
            &[features],
            &[STACKER_OUTPUT],
            &[],
            options.gpu,
        )?;
        check_dims(&stacker, 0, STACKER_OUTPUT, &[1])?;
        let localiser = match &spec.localiser {
            None => None,
            Some(l) => {
                let bad = |m: String| EngineError::Bundle {
                    dir: dir.to_owned(),
                    source: SpecError::Invalid(format!("localiser: {m}")),
                };
                if l.input_size < localise::STRIDE || l.input_size % localise::STRIDE != 0 {
                    return Err(bad(format!(
                        "input_size {} is not a positive multiple of {}",
                        l.input_size,
                        localise::STRIDE
                    )));
                }
                if !(l.std > 0.0 && l.std.is_finite() && l.mean.is_finite()) {
                    return Err(bad(format!("mean {} / std {}", l.mean, l.std)));
                }
                if let Some(z) = l.zoom
                    && !(z.is_finite() && z >= 1.0)
                {
                    return Err(bad(format!("zoom {z} is not at least 1")));
                }
                if !(0.0..=1.0).contains(&l.min_confidence) {
                    return Err(bad(format!(
                        "min_confidence {} outside [0, 1]",
                        l.min_confidence
                    )));
                }
                let side = l.input_size as usize;
                let plan = Plan::load(
                    &dir.join(&l.file),
                    &[1, side, side],
                    &[localise::HEATMAP, localise::OFFSET, localise::SIZE],
                    &[],
                    options.gpu,
                )?
                .with_executor(pool.clone());
                let c = localise::cells(l.input_size);
                check_dims(&plan, 0, localise::HEATMAP, &[1, c, c])?;
                check_dims(&plan, 1, localise::OFFSET, &[2, c, c])?;
                check_dims(&plan, 2, localise::SIZE, &[2, c, c])?;
                Some(plan)
            }
        };
        let mut backends: Vec<&str> = members
            .iter()
            .map(|m| m.plan.backend.as_str())
            .chain([stacker.backend.as_str()])
            .chain(localiser.iter().map(|p| p.backend.as_str()))
            .collect();
        backends.dedup();
        let backend = backends.join("+");
        Ok(Engine {
            spec,
            dir: dir.to_owned(),
            members,
            stacker,
            localiser,
            threads: options.threads.max(1),
            intra_op_threads,
            backend,
            load_ms: ms(t),
        })
    }

    pub fn spec(&self) -> &EnsembleSpec {
        &self.spec
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// "cpu", or the runtime the `cuda` build chose.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// Cold start: reading the spec and loading, optimising and planning every graph.
    pub fn load_ms(&self) -> f64 {
        self.load_ms
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// tract intra-op workers per graph (1: single-threaded graphs).
    pub fn intra_op_threads(&self) -> usize {
        self.intra_op_threads
    }

    /// Whether the bundle has a lesion localiser (used when no ROI is given).
    pub fn has_localiser(&self) -> bool {
        self.localiser.is_some()
    }

    /// Runs the bundle's localiser on the whole radiograph (`None`: the bundle has none):
    /// [`localise::letterbox`] with the members' percentiles → the localiser's mean/std →
    /// the graph → [`localise::decode`]; then, when the spec asks for it and the first box is
    /// confident, the zoom pass on [`localise::zoom_window`] of that box.
    pub fn localise(&self, image: &GrayImage) -> Result<Option<LocaliserReport>> {
        let (Some(plan), Some(spec)) = (&self.localiser, &self.spec.localiser) else {
            return Ok(None);
        };
        let t = Instant::now();
        let pp = &self.spec.preprocess;
        let (lo, hi) = (pp.low_percentile, pp.high_percentile);
        let lb = localise::letterbox(image, spec.input_size, lo, hi)?;
        let first = self.run_localiser(plan, spec, &lb, image.width, image.height)?;
        // A graph giving NaN everywhere decodes to −∞: not a lesion, and JSON-safe.
        let confidence = if first.confidence.is_finite() {
            first.confidence
        } else {
            0.0
        };
        let mut roi = first.roi;
        let mut window = None;
        if let Some(zoom) = spec.zoom
            && confidence >= spec.min_confidence
        {
            let w = localise::zoom_window(first.roi, zoom, image.width, image.height);
            let zl = localise::zoom_input(image, w, spec.input_size, lo, hi)?;
            let boxes = localise::mirrors(spec.zoom_flips)
                .iter()
                .map(|&(h, v)| {
                    let d = self.run_localiser(
                        plan,
                        spec,
                        &localise::mirror(&zl, h, v),
                        w.side,
                        w.side,
                    )?;
                    Ok(localise::unmirror(d.roi, h, v, w.side, w.side))
                })
                .collect::<Result<Vec<_>>>()?;
            roi = localise::from_window(localise::mean_box(&boxes), w);
            window = Some(w);
        }
        Ok(Some(LocaliserReport {
            confidence,
            roi,
            window,
            min_confidence: spec.min_confidence,
            ms: ms(t),
        }))
    }

    /// One pass of the localiser graph on a letterboxed input, decoded into the pixels of the
    /// `width × height` image the letterbox was made from.
    fn run_localiser(
        &self,
        plan: &Plan,
        spec: &crate::ensemble::LocaliserSpec,
        lb: &localise::Letterbox,
        width: u32,
        height: u32,
    ) -> Result<localise::Detection> {
        let x: Vec<f32> = lb
            .pixels
            .iter()
            .map(|v| (v - spec.mean) / spec.std)
            .collect();
        let side = spec.input_size as usize;
        let c = localise::cells(spec.input_size);
        let out = plan.run(&x, 1, &[1, side, side])?;
        for (o, name, ch) in [
            (&out[0], localise::HEATMAP, 1),
            (&out[1], localise::OFFSET, 2),
            (&out[2], localise::SIZE, 2),
        ] {
            if o.shape != [1, ch, c, c] {
                return Err(EngineError::Shape {
                    file: plan.file.clone(),
                    output: name.to_owned(),
                    got: o.shape.clone(),
                    expected: vec![1, ch, c, c],
                });
            }
        }
        Ok(localise::decode(
            &out[0].values,
            &out[2].values,
            &out[1].values,
            c,
            lb.scale,
            width,
            height,
        ))
    }

    /// Whether every member exports its feature map (Score-CAM possible).
    pub fn has_feature_maps(&self) -> bool {
        self.members.iter().all(|m| m.plan.has_output(MEMBER_FMAP))
    }

    /// Decoded input → prediction, with the DICOM header filling missing clinical inputs.
    pub fn predict_input(
        &self,
        input: &Input,
        roi: Option<Roi>,
        mut clinical: ClinicalInput,
        explain: Explain,
    ) -> Result<Prediction> {
        let from_dicom = match &input.header {
            Some(h) => clinical.fill_from(h),
            None => Vec::new(),
        };
        let mut p = self.predict(&input.image, roi, clinical, explain)?;
        p.clinical.from_dicom = from_dicom;
        p.timings.decode_ms = input.decode_ms;
        p.timings.total_ms += input.decode_ms;
        Ok(p)
    }

    /// The prediction for `image` (MONOCHROME2) and its lesion box (`None`: the bundle's
    /// localiser finds it, or the whole image without one). A localiser confidence below its
    /// minimum gives a `review` prediction ([`FLAG_NO_LESION`], see the module docs).
    pub fn predict(
        &self,
        image: &GrayImage,
        roi: Option<Roi>,
        clinical_input: ClinicalInput,
        explain: Explain,
    ) -> Result<Prediction> {
        let start = Instant::now();
        clinical_input.validate()?;
        let mut timings = Timings::default();
        let (roi, roi_source, localiser) = match roi {
            Some(r) => (r, RoiSource::Caller, None),
            None => match self.localise(image)? {
                Some(rep) => {
                    timings.localise_ms = rep.ms;
                    (rep.roi, RoiSource::Localiser, Some(rep))
                }
                None => (image.full_roi(), RoiSource::WholeImage, None),
            },
        };
        if let Some(rep) = localiser
            && !rep.localised()
        {
            return self.no_lesion(image, rep, clinical_input, explain, timings, start);
        }
        let t = Instant::now();
        let pp = &self.spec.preprocess;
        let square = pp.crop_box(image, roi)?;
        let scaled = pp.scaled_crop(image, roi)?;
        let x = standardise(&scaled, pp);
        timings.preprocess_ms = ms(t);

        let t = Instant::now();
        let runs = self.map_members(|_, m| self.run_member(m, &x, 1).map(|mut v| v.remove(0)))?;
        timings.members_ms = ms(t);

        let t = Instant::now();
        let member_probs: Vec<f32> = runs.iter().map(|r| cam::sigmoid(r.logit)).collect();
        let ClinicalInput { age, sex, site } = clinical_input;
        let mut features = member_probs.clone();
        features.extend(clinical(age, sex, site));
        let probability = self.run_stacker(&features)?;
        timings.stacker_ms = ms(t);

        let t = Instant::now();
        let crop = CropBox {
            x: square.x,
            y: square.y,
            side: square.w,
        };
        let heatmap = match explain {
            Explain::GradCam => self.grad_cam(&runs, crop),
            Explain::ScoreCam => self.score_cam(&runs, &scaled, crop)?,
        };
        timings.explain_ms = ms(t);
        timings.total_ms = ms(start);

        let threshold = self.spec.threshold;
        let pbt = probability >= threshold;
        Ok(Prediction {
            flag: if pbt { FLAG_PBT } else { FLAG_INFECTION }.to_owned(),
            pbt,
            review: false,
            probability,
            threshold,
            members: self
                .members
                .iter()
                .zip(&runs)
                .zip(&member_probs)
                .map(|((m, r), &p)| MemberResult {
                    name: m.spec.name.clone(),
                    logit: r.logit,
                    probability: p,
                })
                .collect(),
            clinical: clinical_report(clinical_input),
            roi,
            roi_source,
            localiser,
            backend: self.backend.clone(),
            bundle: self.bundle_id(),
            timings,
            heatmap,
            notice: NOTICE,
        })
    }

    fn bundle_id(&self) -> BundleId {
        BundleId {
            name: self.spec.name.clone(),
            version: self.spec.version.clone(),
        }
    }

    /// The `review` prediction: nothing classified, the localiser's box kept for display,
    /// an all-zero heat-map over the whole image (the overlay shows the whole radiograph).
    fn no_lesion(
        &self,
        image: &GrayImage,
        rep: LocaliserReport,
        clinical_input: ClinicalInput,
        explain: Explain,
        mut timings: Timings,
        start: Instant,
    ) -> Result<Prediction> {
        let square = self.spec.preprocess.crop_box(image, image.full_roi())?;
        let side = self.spec.preprocess.input_size as usize;
        let crop = CropBox {
            x: square.x,
            y: square.y,
            side: square.w,
        };
        let heatmap = self.heat_map(explain, crop, vec![0.0; side * side], None, Vec::new());
        timings.total_ms = ms(start);
        Ok(Prediction {
            flag: FLAG_NO_LESION.to_owned(),
            pbt: false,
            review: true,
            probability: 0.0,
            threshold: self.spec.threshold,
            members: Vec::new(),
            clinical: clinical_report(clinical_input),
            roi: rep.roi,
            roi_source: RoiSource::Localiser,
            localiser: Some(rep),
            backend: self.backend.clone(),
            bundle: self.bundle_id(),
            timings,
            heatmap,
            notice: NOTICE,
        })
    }

    /// `f` over the members, in member order, on up to `threads` threads.
    fn map_members<T: Send>(
        &self,
        f: impl Fn(usize, &LoadedMember) -> Result<T> + Sync,
    ) -> Result<Vec<T>> {
        let n = self.members.len();
        let workers = self.threads.min(n);
        if workers <= 1 {
            return self
                .members
                .iter()
                .enumerate()
                .map(|(i, m)| f(i, m))
                .collect();
        }
        let f = &f;
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    s.spawn(move || {
                        self.members
                            .iter()
                            .enumerate()
                            .skip(w)
                            .step_by(workers)
                            .map(|(i, m)| (i, f(i, m)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let mut slots: Vec<Option<Result<T>>> = (0..n).map(|_| None).collect();
            for h in handles {
                for (i, r) in h.join().map_err(|_| EngineError::Panic)? {
                    slots[i] = Some(r);
                }
            }
            slots
                .into_iter()
                .map(|s| s.expect("every member ran"))
                .collect()
        })
    }

    /// Runs a member on `n` standardised inputs.
    fn run_member(&self, m: &LoadedMember, x: &[f32], n: usize) -> Result<Vec<MemberRun>> {
        let s = self.spec.preprocess.input_size as usize;
        let c = m.spec.cam_side as usize;
        let out = m.plan.run(x, n, &[1, s, s])?;
        let shape_err = |output: &str, got: &[usize], expected: Vec<usize>| EngineError::Shape {
            file: m.plan.file.clone(),
            output: output.to_owned(),
            got: got.to_vec(),
            expected,
        };
        if out[0].values.len() != n {
            return Err(shape_err(MEMBER_LOGIT, &out[0].shape, vec![n, 1]));
        }
        if out[1].shape != [n, 1, c, c] {
            return Err(shape_err(MEMBER_CAM, &out[1].shape, vec![n, 1, c, c]));
        }
        let fmap = out.get(2);
        if let Some(f) = fmap
            && (f.shape.len() != 4 || f.shape[0] != n || f.shape[2] != f.shape[3])
        {
            return Err(shape_err(MEMBER_FMAP, &f.shape, vec![n, 0, c, c]));
        }
        Ok((0..n)
            .map(|i| MemberRun {
                logit: out[0].values[i],
                cam: out[1].values[i * c * c..(i + 1) * c * c].to_vec(),
                fmap: fmap.map(|f| {
                    let (ch, side) = (f.shape[1], f.shape[2]);
                    let len = ch * side * side;
                    (f.values[i * len..(i + 1) * len].to_vec(), ch, side)
                }),
            })
            .collect())
    }

    fn run_stacker(&self, features: &[f32]) -> Result<f32> {
        let out = self.stacker.run(features, 1, &[features.len()])?;
        match out[0].values.as_slice() {
            [p] if p.is_finite() => Ok(*p),
            _ => Err(EngineError::Shape {
                file: self.stacker.file.clone(),
                output: STACKER_OUTPUT.to_owned(),
                got: out[0].shape.clone(),
                expected: vec![1, 1],
            }),
        }
    }

    fn heat_map(
        &self,
        method: Explain,
        crop: CropBox,
        values: Vec<f32>,
        signed: Option<Vec<f32>>,
        members: Vec<MemberMap>,
    ) -> HeatMap {
        let side = self.spec.preprocess.input_size;
        let (imax, max) =
            values
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv { (i, v) } else { (bi, bv) }
                });
        let scale = crop.side as f32 / side as f32;
        let (px, py) = ((imax as u32 % side) as f32, (imax as u32 / side) as f32);
        HeatMap {
            method,
            side,
            crop,
            max: max.max(0.0),
            peak: Peak {
                x: crop.x as f32 + (px + 0.5) * scale,
                y: crop.y as f32 + (py + 0.5) * scale,
                value: max.max(0.0),
            },
            values,
            signed,
            members,
        }
    }

    /// Σ_m cam_weight_m · upsample(cam_m); the positive part is shown.
    fn grad_cam(&self, runs: &[MemberRun], crop: CropBox) -> HeatMap {
        let s = self.spec.preprocess.input_size as usize;
        let maps: Vec<Vec<f32>> = self
            .members
            .iter()
            .zip(runs)
            .map(|(m, r)| {
                let c = m.spec.cam_side as usize;
                cam::upsample(&r.cam, c, c, s)
            })
            .collect();
        let (signed, members) = self.combine(maps);
        self.heat_map(
            Explain::GradCam,
            crop,
            cam::relu(&signed),
            Some(signed),
            members,
        )
    }

    /// Score-CAM per member, then Σ_m cam_weight_m · map_m.
    ///
    /// For channel k of the member's last feature map A (`fmap`): M_k = min-max normalised
    /// upsample(A_k) over the crop; the member runs on the crop masked *before*
    /// standardisation, `(crop · M_k − mean)/std` (masking a standardised input would not
    /// blank anything); s_k = σ(f(masked_k)) − σ(f(baseline)), the increase in PBT
    /// confidence over the fully masked (black) crop `(0 − mean)/std`; map = ReLU(Σ_k s_k A_k)
    /// at feature-map resolution, upsampled to the crop. Masked inputs run in batches of
    /// [`SCORE_CAM_BATCH`].
    fn score_cam(&self, runs: &[MemberRun], scaled: &[f32], crop: CropBox) -> Result<HeatMap> {
        for m in &self.members {
            if !m.plan.has_output(MEMBER_FMAP) {
                return Err(EngineError::NoFeatureMap {
                    member: m.spec.name.clone(),
                    file: m.plan.file.clone(),
                });
            }
        }
        let pp = &self.spec.preprocess;
        let s = pp.input_size as usize;
        let maps = self.map_members(|i, m| {
            let (fmap, c, side) = runs[i].fmap.as_ref().expect("fmap output checked");
            let hw = side * side;
            // Inputs: the baseline first, then one masked crop per channel. A constant
            // channel (a dead ReLU map, often) normalises to an all-zero mask, so its masked
            // crop *is* the baseline and s_k = 0 exactly: it is not run.
            let baseline = vec![(0.0 - pp.mean) / pp.std; s * s];
            let live: Vec<usize> = (0..*c)
                .filter(|&k| {
                    let a = &fmap[k * hw..(k + 1) * hw];
                    a.iter().any(|&v| v != a[0])
                })
                .collect();
            let masked = live.iter().map(|&k| {
                let mut mask = cam::upsample(&fmap[k * hw..(k + 1) * hw], *side, *side, s);
                cam::min_max_normalise(&mut mask);
                mask.iter()
                    .zip(scaled)
                    .map(|(mk, v)| (v * mk - pp.mean) / pp.std)
                    .collect::<Vec<f32>>()
            });
            let inputs: Vec<Vec<f32>> = std::iter::once(baseline).chain(masked).collect();
            let mut probs = Vec::with_capacity(inputs.len());
            for chunk in inputs.chunks(SCORE_CAM_BATCH) {
                let x: Vec<f32> = chunk.concat();
                for r in self.run_member(m, &x, chunk.len())? {
                    probs.push(cam::sigmoid(r.logit));
                }
            }
            let mut scores = vec![0.0f32; *c];
            for (&k, p) in live.iter().zip(&probs[1..]) {
                scores[k] = p - probs[0];
            }
            let small = cam::score_cam_map(fmap, *c, hw, &scores);
            Ok(cam::upsample(&small, *side, *side, s))
        })?;
        let (values, members) = self.combine(maps);
        Ok(self.heat_map(Explain::ScoreCam, crop, values, None, members))
    }

    /// The ensemble map (members weighted by the bundle's `cam_weight`) and the members' own.
    fn combine(&self, maps: Vec<Vec<f32>>) -> (Vec<f32>, Vec<MemberMap>) {
        let weights: Vec<f32> = self.members.iter().map(|m| m.spec.cam_weight).collect();
        let ensemble = cam::weighted_sum(&maps, &weights);
        let members = self
            .members
            .iter()
            .zip(maps)
            .map(|(m, values)| MemberMap {
                name: m.spec.name.clone(),
                values,
            })
            .collect();
        (ensemble, members)
    }
}

fn clinical_report(c: ClinicalInput) -> ClinicalReport {
    let missing = [
        ("age", c.age.is_none()),
        ("sex", c.sex.is_none()),
        ("site", c.site.is_none()),
    ]
    .into_iter()
    .filter(|(_, absent)| *absent)
    .map(|(name, _)| name.to_owned())
    .collect();
    ClinicalReport {
        age: c.age,
        sex: c.sex.map(|s| s.to_string()),
        site: c.site.map(|s| s.to_string()),
        missing,
        from_dicom: Vec::new(),
    }
}

fn standardise(scaled: &[f32], pp: &PreprocessSpec) -> Vec<f32> {
    scaled.iter().map(|v| (v - pp.mean) / pp.std).collect()
}

fn check_dims(plan: &Plan, ix: usize, name: &str, expected: &[usize]) -> Result<()> {
    match plan.output_dims(ix) {
        Some(d) if d != expected => Err(EngineError::Shape {
            file: plan.file.clone(),
            output: name.to_owned(),
            got: d,
            expected: expected.to_vec(),
        }),
        _ => Ok(()),
    }
}
