//! Training the lesion localiser ([`crate::nets::localiser`]) from a cohort's recorded
//! lesion boxes, exporting it, and evaluating the exported file in tract.
//!
//! Inputs are `tirp_firmware::localise::letterbox` of every radiograph, computed once and
//! standardised with the training split's mean/std; targets come from
//! `localise::targets` and evaluation decodes with `localise::decode` and scores with
//! `localise::iou`, so training, evaluation and the engine share one geometry.
//!
//! Loss: CenterNet's penalty-reduced focal loss on the heat-map (α = 2, β = 4), normalised
//! by the number of lesions, plus L1 on the offset (after σ) and on the log-size at the
//! centre cell.
//!
//! Training samples are drawn afresh every epoch from the full-resolution radiographs
//! ([`training_sample`]): the whole image or, for the zoom pass (`localise::zoom_window`),
//! a window around the lesion of jittered size and position; then a random contrast curve,
//! noise, collimation-like borders and flips, so the net sees other centres' acquisition
//! chains than the internal one. Evaluation runs both passes as the engine does.

use crate::nets::localiser::{self as net, Localiser, LocaliserConfig};
use crate::onnx::ExportError;
use crate::onnx::check::{CheckError, TractMember};
use crate::radiograph::{self, LoadError};
use crate::table::Record;
use crate::train::{self, TrainError};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::prelude::*;
use burn::tensor::activation::{log_sigmoid, sigmoid};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Instant;
use tirp_firmware::localise::{self, Detection};
use tirp_firmware::preprocess::{GrayImage, PreprocessError, Roi};

#[derive(Debug, thiserror::Error)]
pub enum LocaliserError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{path}: letterboxing: {source}")]
    Preprocess {
        path: PathBuf,
        source: PreprocessError,
    },
    #[error("{path}: the table has no lesion box for this radiograph")]
    NoBox { path: PathBuf },
    #[error("no radiographs in the {0} split")]
    Empty(&'static str),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error("exporting the localiser: {0}")]
    Export(#[from] ExportError),
    #[error("running the exported localiser: {0}")]
    Tract(#[from] CheckError),
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Full-resolution radiographs with their recorded boxes: training samples and the zoom
/// pass's windows are cut from these.
pub struct Radiographs {
    pub images: Vec<GrayImage>,
    pub roi: Vec<Roi>,
    pub paths: Vec<PathBuf>,
}

impl Radiographs {
    /// Loads every record in parallel; `progress()` after each one.
    pub fn load(records: &[&Record], progress: &(dyn Fn() + Sync)) -> Result<Self, LocaliserError> {
        let items: Vec<(GrayImage, Roi)> = records
            .par_iter()
            .map(|r| {
                let roi = r.roi.ok_or_else(|| LocaliserError::NoBox {
                    path: r.path.clone(),
                })?;
                let img = radiograph::load_record(r)?;
                progress();
                Ok((img, roi))
            })
            .collect::<Result<_, LocaliserError>>()?;
        let (images, roi) = items.into_iter().unzip();
        Ok(Radiographs {
            images,
            roi,
            paths: records.iter().map(|r| r.path.clone()).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }

    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }
}

/// Letterboxed radiographs with their boxes (image pixels) and geometry.
#[derive(Debug, Clone, PartialEq)]
pub struct LetterboxSet {
    pub side: usize,
    pub inputs: Vec<f32>,
    pub scale: Vec<f32>,
    pub width: Vec<u32>,
    pub height: Vec<u32>,
    pub roi: Vec<Roi>,
}

impl LetterboxSet {
    /// Letterboxes every radiograph (in parallel).
    pub fn from_images(
        images: &Radiographs,
        side: u32,
        low_percentile: f32,
        high_percentile: f32,
    ) -> Result<Self, LocaliserError> {
        let items: Vec<localise::Letterbox> = images
            .images
            .par_iter()
            .zip(&images.paths)
            .map(|(img, path)| {
                localise::letterbox(img, side, low_percentile, high_percentile).map_err(|source| {
                    LocaliserError::Preprocess {
                        path: path.clone(),
                        source,
                    }
                })
            })
            .collect::<Result<_, LocaliserError>>()?;
        let mut set = LetterboxSet::empty(side as usize);
        for (lb, (img, &roi)) in items.iter().zip(images.images.iter().zip(&images.roi)) {
            set.push(&lb.pixels, lb.scale, img.width, img.height, roi);
        }
        Ok(set)
    }

    pub fn empty(side: usize) -> Self {
        LetterboxSet {
            side,
            inputs: Vec::new(),
            scale: Vec::new(),
            width: Vec::new(),
            height: Vec::new(),
            roi: Vec::new(),
        }
    }

    pub fn push(&mut self, pixels: &[f32], scale: f32, width: u32, height: u32, roi: Roi) {
        assert_eq!(pixels.len(), self.side * self.side);
        self.inputs.extend_from_slice(pixels);
        self.scale.push(scale);
        self.width.push(width);
        self.height.push(height);
        self.roi.push(roi);
    }

    pub fn len(&self) -> usize {
        self.roi.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roi.is_empty()
    }

    fn pixels(&self) -> usize {
        self.side * self.side
    }

    pub fn image(&self, i: usize) -> &[f32] {
        &self.inputs[i * self.pixels()..(i + 1) * self.pixels()]
    }

    /// Mean and standard deviation over all pixels (padding included, as the engine sees it).
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

    pub fn standardise(&mut self, mean: f32, std: f32) {
        self.inputs.iter_mut().for_each(|v| *v = (*v - mean) / std);
    }

    /// Columns of the letterbox that hold image (the rest is padding), as `letterbox` computes.
    fn content_width(&self, i: usize) -> usize {
        ((self.width[i] as f32 * self.scale[i]).round() as usize).clamp(1, self.side)
    }

    /// Image `i`, mirrored left–right within its content when `flip`, and its box likewise.
    pub fn sample(&self, i: usize, flip: bool) -> (Vec<f32>, Roi) {
        let img = self.image(i);
        let roi = self.roi[i];
        if !flip {
            return (img.to_vec(), roi);
        }
        let (s, wc) = (self.side, self.content_width(i));
        let mut out = img.to_vec();
        mirror_columns(&mut out, s, s, wc);
        let x = self.width[i].saturating_sub(roi.x + roi.w);
        (out, Roi { x, ..roi })
    }
}

/// A batch's inputs and dense targets, laid out like the network's maps.
pub struct Batch {
    pub n: usize,
    pub x: Vec<f32>,
    /// Gaussian heat-map targets `[n, 1, c, c]`.
    pub heat: Vec<f32>,
    /// 1 at each lesion's centre cell, else 0 `[n, 1, c, c]`.
    pub pos: Vec<f32>,
    /// `(1 − y)^4` away from the centre cell, 0 at it `[n, 1, c, c]`.
    pub neg_weight: Vec<f32>,
    /// Offset targets at the centre cell, 0 elsewhere `[n, 2, c, c]`.
    pub offset: Vec<f32>,
    /// Log-size targets at the centre cell, 0 elsewhere `[n, 2, c, c]`.
    pub log_size: Vec<f32>,
    /// The centre-cell mask for the two-channel maps `[n, 2, c, c]`.
    pub mask2: Vec<f32>,
}

/// One training input: standardised pixels of the letterboxed frame, the lesion box in frame
/// pixels and the letterbox scale (input pixels per frame pixel).
pub struct Sample {
    pub x: Vec<f32>,
    pub roi: Roi,
    pub scale: f32,
}

impl Batch {
    /// A batch of images `idx` of `set` as they are (mirrored at random when `flips`).
    pub fn new<R: Rng>(set: &LetterboxSet, idx: &[usize], mut flips: Option<&mut R>) -> Self {
        let samples: Vec<Sample> = idx
            .iter()
            .map(|&i| {
                let flip = flips.as_deref_mut().is_some_and(|r| r.random_bool(0.5));
                let (x, roi) = set.sample(i, flip);
                Sample {
                    x,
                    roi,
                    scale: set.scale[i],
                }
            })
            .collect();
        Batch::from_samples(set.side, &samples)
    }

    pub fn from_samples(side: usize, samples: &[Sample]) -> Self {
        let c = side / localise::STRIDE as usize;
        let cc = c * c;
        let n = samples.len();
        let mut b = Batch {
            n,
            x: Vec::with_capacity(n * side * side),
            heat: Vec::with_capacity(n * cc),
            pos: vec![0.0; n * cc],
            neg_weight: Vec::with_capacity(n * cc),
            offset: vec![0.0; 2 * n * cc],
            log_size: vec![0.0; 2 * n * cc],
            mask2: vec![0.0; 2 * n * cc],
        };
        for (k, smp) in samples.iter().enumerate() {
            assert_eq!(smp.x.len(), side * side);
            b.x.extend_from_slice(&smp.x);
            let t = localise::targets(smp.roi, smp.scale, c);
            b.pos[k * cc + t.centre] = 1.0;
            for (j, &y) in t.heatmap.iter().enumerate() {
                b.neg_weight.push(if j == t.centre {
                    0.0
                } else {
                    (1.0 - y).powi(4)
                });
            }
            b.heat.extend_from_slice(&t.heatmap);
            for ch in 0..2 {
                let at = (2 * k + ch) * cc + t.centre;
                b.offset[at] = t.offset[ch];
                b.log_size[at] = t.size[ch].max(1e-3).ln();
                b.mask2[at] = 1.0;
            }
        }
        b
    }
}

/// Training-time augmentation (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Augment {
    /// Probability of a zoom-pass window instead of the whole image (when zooming at all).
    pub zoom_p: f64,
    /// The window's zoom factor is drawn from `zoom × [1 − spread, 1 + spread]`.
    pub zoom_spread: f32,
    /// The window's centre is moved by up to this fraction of its side (the first pass's error).
    pub zoom_jitter: f32,
    /// Contrast curve `v^γ` on the frame's range, γ log-uniform in this range.
    pub gamma: [f32; 2],
    /// Gaussian noise of up to this fraction of the frame's range.
    pub noise: f32,
    /// Probability that a whole-image sample gets collimation-like bands at its edges.
    pub borders_p: f64,
    pub hflip: bool,
    pub vflip: bool,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            zoom_p: 0.5,
            zoom_spread: 0.35,
            zoom_jitter: 0.15,
            gamma: [0.65, 1.5],
            noise: 0.03,
            borders_p: 0.5,
            hflip: true,
            vflip: true,
        }
    }
}

impl Augment {
    /// No augmentation at all.
    pub fn none() -> Self {
        Augment {
            zoom_p: 0.0,
            zoom_spread: 0.0,
            zoom_jitter: 0.0,
            gamma: [1.0, 1.0],
            noise: 0.0,
            borders_p: 0.0,
            hflip: false,
            vflip: false,
        }
    }
}

/// How a training sample is cut and letterboxed.
pub struct SampleSpec {
    pub side: u32,
    pub low_percentile: f32,
    pub high_percentile: f32,
    pub mean: f32,
    pub std: f32,
    /// The zoom pass's factor (`None`: whole images only).
    pub zoom: Option<f32>,
}

/// One augmented training sample of `img` with lesion `roi`.
pub fn training_sample<R: Rng>(
    img: &GrayImage,
    roi: Roi,
    spec: &SampleSpec,
    aug: &Augment,
    rng: &mut R,
) -> Result<Sample, PreprocessError> {
    // The frame: the whole image, or a zoom window around the lesion.
    let window = match spec.zoom {
        Some(zoom) if aug.zoom_p > 0.0 && rng.random_bool(aug.zoom_p.min(1.0)) => {
            let z = zoom * rng.random_range(1.0 - aug.zoom_spread..=1.0 + aug.zoom_spread);
            let long = roi.w.max(roi.h) as f32;
            let reach = aug.zoom_jitter * long * z;
            let cx = roi.x as f32 + roi.w as f32 / 2.0 + rng.random_range(-reach..=reach);
            let cy = roi.y as f32 + roi.h as f32 / 2.0 + rng.random_range(-reach..=reach);
            let around = Roi {
                x: (cx - long / 2.0).round().max(0.0) as u32,
                y: (cy - long / 2.0).round().max(0.0) as u32,
                w: long as u32,
                h: long as u32,
            };
            let w = localise::zoom_window(around, z, img.width, img.height);
            localise::to_window(roi, w).map(|r| (w, r))
        }
        _ => None,
    };
    let (mut frame, froi) = match window {
        Some((w, r)) => (localise::crop(img, w)?, r),
        None => (img.clone(), roi),
    };
    augment_intensity(&mut frame, froi, aug, window.is_none(), rng);
    let lb = localise::letterbox(&frame, spec.side, spec.low_percentile, spec.high_percentile)?;
    let side = spec.side as usize;
    let cw = ((frame.width as f32 * lb.scale).round() as usize).clamp(1, side);
    let ch = ((frame.height as f32 * lb.scale).round() as usize).clamp(1, side);
    let mut x = lb.pixels;
    let mut froi = froi;
    if aug.hflip && rng.random_bool(0.5) {
        mirror_columns(&mut x, side, ch, cw);
        froi.x = frame.width.saturating_sub(froi.x + froi.w);
    }
    if aug.vflip && rng.random_bool(0.5) {
        for row in 0..ch / 2 {
            let (top, bottom) = x.split_at_mut((ch - 1 - row) * side);
            top[row * side..row * side + cw].swap_with_slice(&mut bottom[..cw]);
        }
        froi.y = frame.height.saturating_sub(froi.y + froi.h);
    }
    x.iter_mut().for_each(|v| *v = (*v - spec.mean) / spec.std);
    Ok(Sample {
        x,
        roi: froi,
        scale: lb.scale,
    })
}

/// Mirrors the first `cols` columns of the first `rows` rows of a `side`-wide image left–right
/// (the letterbox's content; the padding stays where it is).
fn mirror_columns(x: &mut [f32], side: usize, rows: usize, cols: usize) {
    for row in 0..rows {
        x[row * side..row * side + cols].reverse();
    }
}

/// Random contrast curve, noise and (on whole images) collimation-like bands that stop short
/// of the lesion `roi`, in place.
fn augment_intensity<R: Rng>(
    img: &mut GrayImage,
    roi: Roi,
    aug: &Augment,
    borders: bool,
    rng: &mut R,
) {
    use rand_distr::{Distribution, StandardNormal};
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in &img.pixels {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let range = hi - lo;
    if range <= 0.0 {
        return;
    }
    let [g0, g1] = aug.gamma;
    if g1 > g0 {
        let g = rng.random_range(g0.ln()..=g1.ln()).exp();
        img.pixels
            .iter_mut()
            .for_each(|v| *v = lo + range * ((*v - lo) / range).powf(g));
    }
    if borders && aug.borders_p > 0.0 && rng.random_bool(aug.borders_p.min(1.0)) {
        let (w, h) = (img.width as usize, img.height as usize);
        let value = lo + range * if rng.random_bool(0.5) { 0.97 } else { 0.03 };
        for edge in 0..4 {
            if !rng.random_bool(0.5) {
                continue;
            }
            let (along, room) = match edge {
                0 => (h, roi.y as usize),
                1 => (h, h.saturating_sub((roi.y + roi.h) as usize)),
                2 => (w, roi.x as usize),
                _ => (w, w.saturating_sub((roi.x + roi.w) as usize)),
            };
            let depth = ((along as f32 * rng.random_range(0.02..0.12f32)) as usize).min(room);
            for y in 0..h {
                for x in 0..w {
                    let inside = match edge {
                        0 => y < depth,
                        1 => y >= h - depth,
                        2 => x < depth,
                        _ => x >= w - depth,
                    };
                    if inside {
                        img.pixels[y * w + x] = value;
                    }
                }
            }
        }
    }
    if aug.noise > 0.0 {
        let sigma = range * rng.random_range(0.0..=aug.noise);
        img.pixels.iter_mut().for_each(|v| {
            let n: f32 = StandardNormal.sample(rng);
            *v += sigma * n;
        });
    }
}

/// The loss's parts, each a scalar tensor.
pub struct LossParts {
    pub total: Tensor<1>,
    pub focal: Tensor<1>,
    pub offset: Tensor<1>,
    pub size: Tensor<1>,
}

/// CenterNet loss of raw maps against a batch's targets (see the module doc).
pub fn loss(maps: &net::RawMaps, b: &Batch, device: &Device) -> LossParts {
    let [n, _, c, _] = maps.heat.dims();
    let t1 = |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), [n, 1, c, c]), device);
    let t2 = |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), [n, 2, c, c]), device);
    let z = maps.heat.clone();
    let p = sigmoid(z.clone());
    let one_minus_p = p.clone().mul_scalar(-1.0).add_scalar(1.0);
    let pos_term = t1(&b.pos) * one_minus_p.powf_scalar(2.0) * log_sigmoid(z.clone());
    let neg_term = t1(&b.neg_weight) * p.powf_scalar(2.0) * log_sigmoid(z.neg());
    let lesions = b.pos.iter().sum::<f32>().max(1.0);
    let focal = (pos_term.sum() + neg_term.sum()).div_scalar(-lesions);
    let mask = t2(&b.mask2);
    let offset = (mask.clone() * (sigmoid(maps.offset.clone()) - t2(&b.offset)).abs())
        .sum()
        .div_scalar(lesions);
    let size = (mask * (maps.log_size.clone() - t2(&b.log_size)).abs())
        .sum()
        .div_scalar(lesions);
    LossParts {
        total: focal.clone() + offset.clone() + size.clone(),
        focal,
        offset,
        size,
    }
}

fn scalar(what: &'static str, t: Tensor<1>) -> Result<f32, TrainError> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map(|v| v[0])
        .map_err(|e| TrainError::Tensor {
            what,
            message: format!("{e:?}"),
        })
}

fn values<const D: usize>(what: &'static str, t: Tensor<D>) -> Result<Vec<f32>, TrainError> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| TrainError::Tensor {
            what,
            message: format!("{e:?}"),
        })
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocaliserTrainConfig {
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    /// Peak AdamW learning rate (linear warm-up over the first steps, then cosine to 5%).
    pub lr: f64,
    pub warmup_steps: usize,
    pub weight_decay: f32,
    /// The zoom pass's factor (`localise::zoom_window`); `None`: one pass on the whole image.
    pub zoom: Option<f32>,
    /// The final scoring and the spec average the zoom pass over the window's mirror images
    /// (`localise::MIRRORS`). Epoch selection scores the single zoom pass (4× cheaper).
    #[serde(default)]
    pub zoom_flips: bool,
    pub augment: Augment,
    pub net: LocaliserConfig,
}

impl Default for LocaliserTrainConfig {
    fn default() -> Self {
        LocaliserTrainConfig {
            seed: 17,
            epochs: 8,
            batch_size: 32,
            lr: 3e-3,
            warmup_steps: 30,
            weight_decay: 1e-4,
            zoom: Some(4.0),
            zoom_flips: true,
            augment: Augment::default(),
            net: LocaliserConfig::default(),
        }
    }
}

impl LocaliserTrainConfig {
    pub fn lr_at(&self, step: usize, total: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let t = (step - self.warmup_steps) as f64
            / (total.max(self.warmup_steps + 1) - self.warmup_steps) as f64;
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos());
        self.lr * (0.05 + 0.95 * cos)
    }
}

/// One optimisation step at a time.
pub struct LocaliserTrainer {
    model: Option<Localiser>,
    optim: ModuleOptimizer,
    device: Device,
}

impl LocaliserTrainer {
    pub fn new(model: Localiser, cfg: &LocaliserTrainConfig) -> Self {
        LocaliserTrainer {
            model: Some(model),
            optim: AdamWConfig::new()
                .with_weight_decay(cfg.weight_decay)
                .init(),
            device: train::device().autodiff(),
        }
    }

    pub fn model(&self) -> &Localiser {
        self.model
            .as_ref()
            .expect("model is put back after every step")
    }

    /// One step; returns (total, focal, offset, size) losses of the batch.
    pub fn step(&mut self, b: &Batch, lr: f64) -> Result<[f32; 4], TrainError> {
        let model = self
            .model
            .take()
            .expect("model is put back after every step");
        let s = model.input_size;
        let x = Tensor::<4>::from_data(TensorData::new(b.x.clone(), [b.n, 1, s, s]), &self.device);
        let parts = loss(&model.forward_raw(x), b, &self.device);
        let out = [
            scalar("loss", parts.total.clone())?,
            scalar("loss", parts.focal)?,
            scalar("loss", parts.offset)?,
            scalar("loss", parts.size)?,
        ];
        let grads = GradientsParams::from_grads(parts.total.backward(), &model);
        self.model = Some(self.optim.step(lr, model, grads));
        Ok(out)
    }
}

/// Output maps of a batch of `n` images, row-major like the graph's outputs.
pub struct Maps {
    pub heatmap: Vec<f32>,
    pub offset: Vec<f32>,
    pub size: Vec<f32>,
}

/// The eval-mode model's output maps (σ/σ/exp applied) on images `idx` of `set`.
pub fn burn_maps(model: &Localiser, set: &LetterboxSet, idx: &[usize]) -> Result<Maps, TrainError> {
    let dev = train::device();
    let s = set.side;
    let mut x = Vec::with_capacity(idx.len() * s * s);
    idx.iter().for_each(|&i| x.extend_from_slice(set.image(i)));
    let x = Tensor::<4>::from_data(TensorData::new(x, [idx.len(), 1, s, s]), &dev);
    let (h, o, z) = model.forward(x);
    Ok(Maps {
        heatmap: values("heatmap", h)?,
        offset: values("offset", o)?,
        size: values("size", z)?,
    })
}

/// The exported file's output maps from tract on images `idx` of `set`.
pub fn tract_maps(t: &TractMember, set: &LetterboxSet, idx: &[usize]) -> Result<Maps, CheckError> {
    let s = set.side;
    let mut x = Vec::with_capacity(idx.len() * s * s);
    idx.iter().for_each(|&i| x.extend_from_slice(set.image(i)));
    let mut out = t.run_all(&x, idx.len())?;
    let size = out.remove(2);
    let offset = out.remove(1);
    let heatmap = out.remove(0);
    Ok(Maps {
        heatmap,
        offset,
        size,
    })
}

/// Decodes the `k`-th image of a batch of maps (set index `i`).
pub fn decode_one(m: &Maps, k: usize, set: &LetterboxSet, i: usize) -> Detection {
    let c = set.side / localise::STRIDE as usize;
    let cc = c * c;
    localise::decode(
        &m.heatmap[k * cc..(k + 1) * cc],
        &m.size[2 * k * cc..2 * (k + 1) * cc],
        &m.offset[2 * k * cc..2 * (k + 1) * cc],
        c,
        set.scale[i],
        set.width[i],
        set.height[i],
    )
}

/// Detections and their IoU with the recorded boxes over a whole set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub confidence: Vec<f32>,
    /// The final box's (after the zoom pass, when it ran).
    pub iou: Vec<f32>,
    /// The first pass's box's.
    pub first_pass_iou: Vec<f32>,
}

impl Scored {
    pub fn n(&self) -> usize {
        self.iou.len()
    }

    pub fn recall(&self, at: f32) -> f64 {
        self.iou.iter().filter(|&&v| v >= at).count() as f64 / self.n().max(1) as f64
    }

    pub fn mean_iou(&self) -> f64 {
        self.iou.iter().map(|&v| v as f64).sum::<f64>() / self.n().max(1) as f64
    }

    pub fn below(&self, min_confidence: f32) -> f64 {
        self.confidence
            .iter()
            .filter(|&&c| c < min_confidence)
            .count() as f64
            / self.n().max(1) as f64
    }

    /// Recall at IoU ≥ 0.5 counting only detections at or above `min_confidence`.
    pub fn recall_confident(&self, at: f32, min_confidence: f32) -> f64 {
        self.iou
            .iter()
            .zip(&self.confidence)
            .filter(|&(&v, &c)| v >= at && c >= min_confidence)
            .count() as f64
            / self.n().max(1) as f64
    }
}

/// What the zoom pass needs to run in evaluation: the full-resolution radiographs of the
/// scored set, and how the engine builds the window's input.
pub struct ZoomEval<'a> {
    pub images: &'a Radiographs,
    pub zoom: f32,
    /// Average the zoom pass over the window's mirror images (`localise::MIRRORS`).
    pub flips: bool,
    pub low_percentile: f32,
    pub high_percentile: f32,
    pub mean: f32,
    pub std: f32,
}

/// Scores every image of `set` (standardised first-pass inputs) as the engine localises:
/// the first pass, then with `zoom` the zoom pass on the window around each first box.
/// `maps(set, idx)` runs the net on images `idx` of a set. Confidence is the first pass's.
/// (The engine skips the zoom pass below `min_confidence`; those are sent to review.)
pub fn score(
    set: &LetterboxSet,
    batch: usize,
    zoom: Option<&ZoomEval>,
    mut maps: impl FnMut(&LetterboxSet, &[usize]) -> Result<Maps, LocaliserError>,
) -> Result<Scored, LocaliserError> {
    let mut s = Scored::default();
    let idx: Vec<usize> = (0..set.len()).collect();
    let mut first = Vec::with_capacity(set.len());
    for chunk in idx.chunks(batch.max(1)) {
        let m = maps(set, chunk)?;
        for (k, &i) in chunk.iter().enumerate() {
            let d = decode_one(&m, k, set, i);
            s.confidence.push(d.confidence);
            s.first_pass_iou.push(localise::iou(d.roi, set.roi[i]));
            first.push(d.roi);
        }
    }
    let Some(z) = zoom else {
        s.iou = s.first_pass_iou.clone();
        return Ok(s);
    };
    assert_eq!(z.images.len(), set.len(), "zoom images match the set");
    let windows: Vec<localise::Window> = first
        .iter()
        .zip(&z.images.images)
        .map(|(&r, img)| localise::zoom_window(r, z.zoom, img.width, img.height))
        .collect();
    let inputs: Vec<localise::Letterbox> = windows
        .par_iter()
        .zip(&z.images.images)
        .zip(&z.images.paths)
        .map(|((&w, img), path)| {
            localise::zoom_input(img, w, set.side as u32, z.low_percentile, z.high_percentile)
                .map_err(|source| LocaliserError::Preprocess {
                    path: path.clone(),
                    source,
                })
        })
        .collect::<Result<_, _>>()?;
    let mirrors = localise::mirrors(z.flips);
    // Boxes per image, in window pixels, one per mirror image (as the engine does).
    let mut boxes: Vec<Vec<Roi>> = vec![Vec::with_capacity(mirrors.len()); set.len()];
    for &(h, v) in mirrors {
        let mut second = LetterboxSet::empty(set.side);
        for (lb, w) in inputs.iter().zip(&windows) {
            let x: Vec<f32> = localise::mirror(lb, h, v)
                .pixels
                .iter()
                .map(|p| (p - z.mean) / z.std)
                .collect();
            // The box is not used for decoding; keep the set's invariants.
            let dummy = Roi {
                x: 0,
                y: 0,
                w: 1,
                h: 1,
            };
            second.push(&x, lb.scale, w.side, w.side, dummy);
        }
        for chunk in idx.chunks(batch.max(1)) {
            let m = maps(&second, chunk)?;
            for (k, &i) in chunk.iter().enumerate() {
                let d = decode_one(&m, k, &second, i);
                let side = windows[i].side;
                boxes[i].push(localise::unmirror(d.roi, h, v, side, side));
            }
        }
    }
    for (i, b) in boxes.iter().enumerate() {
        let roi = localise::from_window(localise::mean_box(b), windows[i]);
        s.iou.push(localise::iou(roi, set.roi[i]));
    }
    Ok(s)
}

/// The lowest confidence that keeps 99% of validation's correct (IoU ≥ 0.5) detections
/// (their 1st percentile); 0 when validation has none.
pub fn choose_min_confidence(val: &Scored) -> f32 {
    let mut c: Vec<f32> = val
        .iou
        .iter()
        .zip(&val.confidence)
        .filter(|&(&v, _)| v >= 0.5)
        .map(|(_, &c)| c)
        .collect();
    if c.is_empty() {
        return 0.0;
    }
    c.sort_by(f32::total_cmp);
    c[(c.len() as f64 * 0.01).floor() as usize]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocEpoch {
    pub epoch: usize,
    pub lr_end: f64,
    pub train_loss: f64,
    pub train_focal: f64,
    pub train_offset: f64,
    pub train_size: f64,
    pub val_recall50: f64,
    pub val_mean_iou: f64,
    pub seconds: f64,
    pub seconds_per_step: f64,
}

pub enum LocEvent<'a> {
    Step {
        epoch: usize,
        step: usize,
        steps: usize,
        loss: f32,
    },
    Epoch(&'a LocEpoch),
}

pub struct TrainedLocaliser {
    /// Eval-mode snapshot of the best epoch (validation recall@0.5, then mean IoU).
    pub model: Localiser,
    pub best_epoch: usize,
    pub history: Vec<LocEpoch>,
}

/// Builds the batch of training images `idx` from an augmentation seed.
pub type MakeBatch<'a> = dyn Fn(&[usize], u64) -> Result<Batch, LocaliserError> + Sync + 'a;

/// Trains from `seed` on `n_train` images, selecting the epoch on validation.
/// `make_batch(idx, seed)` builds the batch of training images `idx` (augmented from
/// `seed`, drawn from the run's seeded generator: the run is reproducible);
/// `validate(model)` scores the eval-mode model on validation.
pub fn fit(
    n_train: usize,
    make_batch: &MakeBatch,
    validate: &dyn Fn(&Localiser) -> Result<Scored, LocaliserError>,
    cfg: &LocaliserTrainConfig,
    on: &mut dyn FnMut(LocEvent),
) -> Result<TrainedLocaliser, LocaliserError> {
    if cfg.epochs == 0 || cfg.batch_size < 2 {
        return Err(LocaliserError::Config(
            "need epochs ≥ 1 and batch_size ≥ 2 (BatchNorm)".into(),
        ));
    }
    if n_train == 0 {
        return Err(LocaliserError::Empty("train"));
    }
    let model = train::init_module(cfg.seed, |d| Localiser::new(&cfg.net, d));
    let mut trainer = LocaliserTrainer::new(model, cfg);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..n_train).collect();
    let per_epoch = n_train / cfg.batch_size + usize::from(n_train % cfg.batch_size >= 2);
    let total_steps = per_epoch * cfg.epochs;
    let mut global = 0usize;
    let mut best: Option<((f64, f64), usize, Localiser)> = None;
    let mut history = Vec::new();
    for epoch in 0..cfg.epochs {
        let start = Instant::now();
        order.shuffle(&mut rng);
        let batches: Vec<&[usize]> = order
            .chunks(cfg.batch_size)
            .filter(|b| b.len() >= 2)
            .collect();
        let mut sums = [0.0f64; 4];
        let mut seen = 0usize;
        let mut lr = cfg.lr;
        for (step, idx) in batches.iter().enumerate() {
            let b = make_batch(idx, rng.random())?;
            lr = cfg.lr_at(global, total_steps);
            let l = trainer.step(&b, lr)?;
            if !l[0].is_finite() {
                return Err(TrainError::Diverged {
                    epoch,
                    step,
                    loss: l[0],
                }
                .into());
            }
            for (s, v) in sums.iter_mut().zip(l) {
                *s += v as f64 * idx.len() as f64;
            }
            seen += idx.len();
            global += 1;
            on(LocEvent::Step {
                epoch,
                step,
                steps: batches.len(),
                loss: l[0],
            });
        }
        let train_seconds = start.elapsed().as_secs_f64();
        let eval = trainer.model().valid();
        let scored = validate(&eval)?;
        let n = seen.max(1) as f64;
        let stats = LocEpoch {
            epoch,
            lr_end: lr,
            train_loss: sums[0] / n,
            train_focal: sums[1] / n,
            train_offset: sums[2] / n,
            train_size: sums[3] / n,
            val_recall50: scored.recall(0.5),
            val_mean_iou: scored.mean_iou(),
            seconds: start.elapsed().as_secs_f64(),
            seconds_per_step: train_seconds / batches.len().max(1) as f64,
        };
        on(LocEvent::Epoch(&stats));
        let key = (stats.val_recall50, stats.val_mean_iou);
        if best.as_ref().is_none_or(|(k, _, _)| key > *k) {
            best = Some((key, epoch, eval));
        }
        history.push(stats);
    }
    let (_, best_epoch, model) = best.expect("at least one epoch ran");
    Ok(TrainedLocaliser {
        model,
        best_epoch,
        history,
    })
}

/// One split's evaluation of the exported file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitReport {
    pub n: usize,
    pub recall_iou50: f64,
    pub recall_iou30: f64,
    pub recall_iou70: f64,
    pub mean_iou: f64,
    /// Fraction of radiographs whose detection is below `min_confidence` (sent to review).
    pub below_min_confidence: f64,
    /// Recall at IoU ≥ 0.5 counting only detections at or above `min_confidence`.
    pub recall_iou50_confident: f64,
    /// The first pass alone (equal to the above without a zoom pass).
    pub first_pass_recall_iou50: f64,
    pub first_pass_mean_iou: f64,
}

impl SplitReport {
    pub fn new(s: &Scored, min_confidence: f32) -> Self {
        let first = Scored {
            iou: s.first_pass_iou.clone(),
            ..Scored::default()
        };
        SplitReport {
            first_pass_recall_iou50: first.recall(0.5),
            first_pass_mean_iou: first.mean_iou(),
            n: s.n(),
            recall_iou50: s.recall(0.5),
            recall_iou30: s.recall(0.3),
            recall_iou70: s.recall(0.7),
            mean_iou: s.mean_iou(),
            below_min_confidence: s.below(min_confidence),
            recall_iou50_confident: s.recall_confident(0.5, min_confidence),
        }
    }
}

/// Largest |burn eval − tract| over all three outputs on images `idx`.
pub fn parity(
    model: &Localiser,
    t: &TractMember,
    set: &LetterboxSet,
    idx: &[usize],
) -> Result<f32, LocaliserError> {
    let a = burn_maps(model, set, idx)?;
    let b = tract_maps(t, set, idx)?;
    let d = |x: &[f32], y: &[f32]| {
        assert_eq!(x.len(), y.len());
        x.iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max)
    };
    Ok(d(&a.heatmap, &b.heatmap)
        .max(d(&a.offset, &b.offset))
        .max(d(&a.size, &b.size)))
}

/// File names the localiser adds to a bundle directory.
pub const ONNX_FILE: &str = "localiser.onnx";
pub const REPORT_FILE: &str = "localiser.json";

/// What `tirp train-localiser` writes to `localiser.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocaliserReport {
    pub architecture: String,
    pub params: usize,
    pub file: String,
    pub bytes: u64,
    pub input_size: usize,
    pub mean: f32,
    pub std: f32,
    pub min_confidence: f32,
    /// The zoom pass's factor, as in the spec.
    pub zoom: Option<f32>,
    /// Whether the zoom pass averages over mirror images, as in the spec.
    #[serde(default)]
    pub zoom_flips: bool,
    pub seed: u64,
    pub epochs: usize,
    pub best_epoch: usize,
    pub train_seconds: f64,
    pub load_seconds: f64,
    pub counts: SplitCounts,
    /// Largest |burn eval − tract| over the three outputs on validation images.
    pub tract_parity: f32,
    pub validation: SplitReport,
    pub internal_test: SplitReport,
    pub external: SplitReport,
    pub config: LocaliserTrainConfig,
    pub history: Vec<LocEpoch>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitCounts {
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub external: usize,
}

pub enum RunEvent<'a> {
    Stage(&'a str),
    Letterbox { done: usize, total: usize },
    Train(LocEvent<'a>),
}

/// Loads the radiographs of each split, reporting progress over all of them.
fn load_splits(
    records: &[Vec<&Record>],
    on: &mut (dyn FnMut(RunEvent) + Send),
) -> Result<Vec<Radiographs>, LocaliserError> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    on(RunEvent::Stage("letterboxing radiographs"));
    let total: usize = records.iter().map(Vec::len).sum();
    let done = AtomicUsize::new(0);
    let progress = std::sync::Mutex::new(on);
    let tick = || {
        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
        if (d.is_multiple_of(32) || d == total)
            && let Ok(mut f) = progress.try_lock()
        {
            f(RunEvent::Letterbox { done: d, total });
        }
    };
    records
        .iter()
        .map(|r| Radiographs::load(r, &tick))
        .collect()
}

/// Trains on split train, selects on val, exports `localiser.onnx` into `dir`, evaluates the
/// file in tract on val/test/external and returns the report (the caller writes the spec).
pub fn train_into(
    table: &crate::table::LabelTable,
    dir: &std::path::Path,
    low_percentile: f32,
    high_percentile: f32,
    cfg: &LocaliserTrainConfig,
    on: &mut (dyn FnMut(RunEvent) + Send),
) -> Result<LocaliserReport, LocaliserError> {
    use crate::table::Split;
    let side = cfg.net.input_size as u32;
    let splits = [
        Split::Train,
        Split::Validation,
        Split::Test,
        Split::External,
    ];
    let records: Vec<Vec<&Record>> = splits.iter().map(|&s| table.split(s)).collect();
    for (r, name) in records.iter().zip(["train", "val", "test", "external"]) {
        if r.is_empty() {
            return Err(LocaliserError::Empty(name));
        }
    }
    let load_start = Instant::now();
    let images = load_splits(&records, on)?;
    let mut sets = Vec::new();
    for im in &images {
        sets.push(LetterboxSet::from_images(
            im,
            side,
            low_percentile,
            high_percentile,
        )?);
    }
    let load_seconds = load_start.elapsed().as_secs_f64();
    let (mean, std) = sets[0].mean_std();
    sets.iter_mut().for_each(|s| s.standardise(mean, std));
    let [train, val, test, external] = <[LetterboxSet; 4]>::try_from(sets).expect("four splits");
    let zoom_of = |im| {
        cfg.zoom.map(|zoom| ZoomEval {
            images: im,
            zoom,
            flips: false,
            low_percentile,
            high_percentile,
            mean,
            std,
        })
    };
    // Epoch selection: the single zoom pass.
    let zooms: Vec<Option<ZoomEval>> = images.iter().map(zoom_of).collect();
    let sample_spec = SampleSpec {
        side,
        low_percentile,
        high_percentile,
        mean,
        std,
        zoom: cfg.zoom,
    };
    let train_images = &images[0];
    let make_batch = |idx: &[usize], seed: u64| -> Result<Batch, LocaliserError> {
        let samples = idx
            .par_iter()
            .enumerate()
            .map(|(k, &i)| {
                let mut rng = ChaCha8Rng::seed_from_u64(
                    seed ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                );
                training_sample(
                    &train_images.images[i],
                    train_images.roi[i],
                    &sample_spec,
                    &cfg.augment,
                    &mut rng,
                )
                .map_err(|source| LocaliserError::Preprocess {
                    path: train_images.paths[i].clone(),
                    source,
                })
            })
            .collect::<Result<Vec<Sample>, _>>()?;
        Ok(Batch::from_samples(side as usize, &samples))
    };
    let validate = |m: &Localiser| {
        score(&val, 64, zooms[1].as_ref(), |set, idx| {
            Ok(burn_maps(m, set, idx)?)
        })
    };
    on(RunEvent::Stage("training"));
    let start = Instant::now();
    let trained = fit(train.len(), &make_batch, &validate, cfg, &mut |e| {
        on(RunEvent::Train(e))
    })?;
    let train_seconds = start.elapsed().as_secs_f64();
    on(RunEvent::Stage("exporting and evaluating in tract"));
    let model = net::export(&trained.model)?;
    let path = dir.join(ONNX_FILE);
    model.save(&path)?;
    let bytes = model.to_bytes();
    let t = TractMember::load(&bytes, cfg.net.input_size)?;
    let probe: Vec<usize> = (0..val.len().min(16)).collect();
    let tract_parity = parity(&trained.model, &t, &val, &probe)?;
    let held_out = [&val, &test, &external];
    let zoom = cfg.zoom.map(|zoom| (zoom, cfg.zoom_flips));
    let (min_confidence, [validation, internal_test, external_r]) = evaluate(
        &t,
        held_out,
        [&images[1], &images[2], &images[3]],
        zoom,
        (low_percentile, high_percentile),
        (mean, std),
    )?;
    Ok(LocaliserReport {
        architecture: cfg.net.describe(),
        params: trained.model.num_params(),
        file: ONNX_FILE.to_owned(),
        bytes: bytes.len() as u64,
        input_size: cfg.net.input_size,
        mean,
        std,
        min_confidence,
        zoom: cfg.zoom,
        zoom_flips: cfg.zoom.is_some() && cfg.zoom_flips,
        seed: cfg.seed,
        epochs: cfg.epochs,
        best_epoch: trained.best_epoch,
        train_seconds,
        load_seconds,
        counts: SplitCounts {
            train: train.len(),
            val: val.len(),
            test: test.len(),
            external: external.len(),
        },
        tract_parity,
        validation,
        internal_test,
        external: external_r,
        config: cfg.clone(),
        history: trained.history,
    })
}

/// Scores the exported localiser `t` as the engine runs it on the held-out splits
/// (validation, internal test, external; standardised letterboxed inputs and their
/// radiographs), with the zoom pass `(factor, flips)`; the minimum confidence is chosen on
/// validation.
fn evaluate(
    t: &TractMember,
    sets: [&LetterboxSet; 3],
    images: [&Radiographs; 3],
    zoom: Option<(f32, bool)>,
    (low_percentile, high_percentile): (f32, f32),
    (mean, std): (f32, f32),
) -> Result<(f32, [SplitReport; 3]), LocaliserError> {
    let mut scored = Vec::with_capacity(3);
    for (set, im) in sets.into_iter().zip(images) {
        let z = zoom.map(|(zoom, flips)| ZoomEval {
            images: im,
            zoom,
            flips,
            low_percentile,
            high_percentile,
            mean,
            std,
        });
        scored.push(score(set, 32, z.as_ref(), |s, idx| {
            Ok(tract_maps(t, s, idx)?)
        })?);
    }
    let min_confidence = choose_min_confidence(&scored[0]);
    Ok((
        min_confidence,
        [0, 1, 2].map(|k| SplitReport::new(&scored[k], min_confidence)),
    ))
}

/// Re-scores a bundle's trained localiser (`report`, its training report) on the held-out
/// splits with the zoom pass's mirror averaging on or off: the split figures, the minimum
/// confidence and `zoom_flips` change; what training recorded stays.
pub fn rescore(
    table: &crate::table::LabelTable,
    dir: &std::path::Path,
    (low_percentile, high_percentile): (f32, f32),
    report: &LocaliserReport,
    zoom_flips: bool,
    on: &mut (dyn FnMut(RunEvent) + Send),
) -> Result<LocaliserReport, LocaliserError> {
    use crate::table::Split;
    let path = dir.join(&report.file);
    let bytes = std::fs::read(&path).map_err(|source| LocaliserError::Io {
        path: path.clone(),
        source,
    })?;
    let t = TractMember::load(&bytes, report.input_size)?;
    let records: Vec<Vec<&Record>> = [Split::Validation, Split::Test, Split::External]
        .iter()
        .map(|&s| table.split(s))
        .collect();
    for (r, name) in records.iter().zip(["val", "test", "external"]) {
        if r.is_empty() {
            return Err(LocaliserError::Empty(name));
        }
    }
    let images = load_splits(&records, on)?;
    let mut sets = images
        .iter()
        .map(|im| {
            LetterboxSet::from_images(
                im,
                report.input_size as u32,
                low_percentile,
                high_percentile,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    sets.iter_mut()
        .for_each(|s| s.standardise(report.mean, report.std));
    on(RunEvent::Stage("scoring in tract"));
    let flips = report.zoom.is_some() && zoom_flips;
    let (min_confidence, [validation, internal_test, external]) = evaluate(
        &t,
        [&sets[0], &sets[1], &sets[2]],
        [&images[0], &images[1], &images[2]],
        report.zoom.map(|z| (z, flips)),
        (low_percentile, high_percentile),
        (report.mean, report.std),
    )?;
    Ok(LocaliserReport {
        min_confidence,
        zoom_flips: flips,
        validation,
        internal_test,
        external,
        config: LocaliserTrainConfig {
            zoom_flips: flips,
            ..report.config.clone()
        },
        ..report.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `side²` image of background noise with one bright rectangle, and its box.
    fn blob_set(side: usize, n: usize, seed: u64) -> LetterboxSet {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut set = LetterboxSet::empty(side);
        for _ in 0..n {
            let w = rng.random_range(6..14u32);
            let h = rng.random_range(6..14u32);
            let x = rng.random_range(2..side as u32 - w - 2);
            let y = rng.random_range(2..side as u32 - h - 2);
            let mut px = vec![0.0f32; side * side];
            for r in 0..side {
                for c in 0..side {
                    let inside =
                        (x..x + w).contains(&(c as u32)) && (y..y + h).contains(&(r as u32));
                    px[r * side + c] = if inside { 2.0 } else { 0.0 } + rng.random_range(-0.3..0.3);
                }
            }
            set.push(&px, 1.0, side as u32, side as u32, Roi { x, y, w, h });
        }
        set
    }

    fn tiny() -> LocaliserConfig {
        LocaliserConfig {
            input_size: 32,
            stem: 8,
            width: 12,
            dilations: vec![1, 2],
            head: 16,
        }
    }

    #[test]
    fn flipping_mirrors_the_box_and_the_pixels() {
        let mut set = LetterboxSet::empty(4);
        // A 2-pixel-wide image letterboxed into 4 columns: content columns 0–1 only.
        let px: Vec<f32> = (0..16).map(|i| i as f32).collect();
        set.push(
            &px,
            1.0,
            2,
            4,
            Roi {
                x: 0,
                y: 1,
                w: 1,
                h: 2,
            },
        );
        let (x, roi) = set.sample(0, true);
        assert_eq!(&x[..4], &[1.0, 0.0, 2.0, 3.0]);
        assert_eq!(
            roi,
            Roi {
                x: 1,
                y: 1,
                w: 1,
                h: 2
            }
        );
        assert_eq!(set.sample(0, false).0, px);
    }

    #[test]
    fn batch_targets_mark_one_centre_per_image() {
        let set = blob_set(32, 3, 1);
        let b = Batch::new::<ChaCha8Rng>(&set, &[0, 1, 2], None);
        let cc = 64;
        for k in 0..3 {
            assert_eq!(b.pos[k * cc..(k + 1) * cc].iter().sum::<f32>(), 1.0);
            assert_eq!(
                b.mask2[2 * k * cc..2 * (k + 1) * cc].iter().sum::<f32>(),
                2.0
            );
            let centre = b.pos[k * cc..(k + 1) * cc]
                .iter()
                .position(|&v| v == 1.0)
                .unwrap();
            assert_eq!(b.neg_weight[k * cc + centre], 0.0);
            assert!((b.heat[k * cc + centre] - 1.0).abs() < 1e-6);
        }
    }

    /// Loss falls over a few steps on a tiny set, and two seeded runs agree to the bit.
    #[test]
    fn loss_decreases_and_training_is_deterministic() {
        let set = blob_set(32, 8, 2);
        let cfg = LocaliserTrainConfig {
            net: tiny(),
            warmup_steps: 1,
            lr: 5e-3,
            ..Default::default()
        };
        let run = || {
            let model = train::init_module(5, |d| Localiser::new(&cfg.net, d));
            let mut t = LocaliserTrainer::new(model, &cfg);
            let b = Batch::new::<ChaCha8Rng>(&set, &(0..8).collect::<Vec<_>>(), None);
            (0..6)
                .map(|_| t.step(&b, cfg.lr).unwrap()[0])
                .collect::<Vec<f32>>()
        };
        let a = run();
        let b = run();
        assert_eq!(
            a.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            b.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(a[5] < a[0] * 0.8, "loss did not fall: {a:?}");
    }

    /// burn's eval forward and tract on the exported file agree on all three outputs, at
    /// init and after training steps (non-trivial BatchNorm statistics to fold).
    #[test]
    fn export_matches_burn_in_tract() {
        let mut set = blob_set(32, 8, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        set.inputs
            .iter_mut()
            .for_each(|v| *v += rng.random_range(-1.0..1.0));
        let cfg = LocaliserTrainConfig {
            net: tiny(),
            ..Default::default()
        };
        let model = train::init_module(3, |d| Localiser::new(&cfg.net, d));
        let mut t = LocaliserTrainer::new(model, &cfg);
        let idx: Vec<usize> = (0..8).collect();
        for k in 0..2 {
            if k == 1 {
                let b = Batch::new(&set, &idx, Some(&mut rng));
                for _ in 0..3 {
                    t.step(&b, 5e-3).unwrap();
                }
            }
            let eval = t.model().valid();
            let m = net::export(&eval).unwrap();
            let tract = TractMember::load(&m.to_bytes(), 32).unwrap();
            let names: Vec<&str> = m
                .proto
                .graph
                .as_ref()
                .unwrap()
                .output
                .iter()
                .map(|o| o.name.as_str())
                .collect();
            assert_eq!(names, [localise::HEATMAP, localise::OFFSET, localise::SIZE]);
            let d = parity(&eval, &tract, &set, &idx).unwrap();
            assert!(d <= 1e-4, "max |burn − tract| = {d}");
            let tm = tract_maps(&tract, &set, &idx).unwrap();
            assert_eq!(tm.heatmap.len(), 8 * 64);
            assert_eq!(tm.size.len(), 8 * 2 * 64);
            assert!(
                tm.heatmap
                    .iter()
                    .chain(&tm.offset)
                    .all(|&v| (0.0..=1.0).contains(&v))
            );
            assert!(tm.size.iter().all(|&v| v > 0.0));
        }
    }

    /// Targets and decoding agree: a few hundred steps on bright-rectangle images and the
    /// decoded box finds the rectangle.
    #[test]
    fn a_trained_tiny_localiser_finds_the_blob() {
        let set = blob_set(32, 16, 4);
        let cfg = LocaliserTrainConfig {
            net: tiny(),
            warmup_steps: 10,
            lr: 1e-2,
            ..Default::default()
        };
        let model = train::init_module(4, |d| Localiser::new(&cfg.net, d));
        let mut t = LocaliserTrainer::new(model, &cfg);
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let idx: Vec<usize> = (0..16).collect();
        let steps = 150;
        for s in 0..steps {
            let b = Batch::new(&set, &idx, Some(&mut rng));
            t.step(&b, cfg.lr_at(s, steps)).unwrap();
        }
        let eval = t.model().valid();
        let scored = score(&set, 16, None, |s, i| Ok(burn_maps(&eval, s, i)?)).unwrap();
        assert!(scored.recall(0.5) >= 0.75, "{scored:?}");
        assert!(scored.mean_iou() >= 0.5, "{scored:?}");
    }

    #[test]
    fn choose_min_confidence_keeps_99_percent_of_hits() {
        let s = Scored {
            confidence: (0..200).map(|i| i as f32 / 200.0).collect(),
            iou: (0..200)
                .map(|i| if i % 2 == 0 { 0.9 } else { 0.1 })
                .collect(),
            ..Scored::default()
        };
        let m = choose_min_confidence(&s);
        assert_eq!(m, 2.0 / 200.0);
        assert!(s.recall_confident(0.5, m) >= 0.99 * s.recall(0.5));
        assert_eq!(choose_min_confidence(&Scored::default()), 0.0);
    }

    /// A full-resolution radiograph-like image: noise with one bright box, as `Radiographs`.
    fn blob_image(w: u32, h: u32, b: Roi, seed: u64) -> GrayImage {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let px = (0..w * h)
            .map(|i| {
                let (x, y) = (i % w, i / w);
                let inside = (b.x..b.x + b.w).contains(&x) && (b.y..b.y + b.h).contains(&y);
                (if inside { 3000.0 } else { 1000.0 }) + rng.random_range(-100.0..100.0)
            })
            .collect();
        GrayImage::new(w, h, px).unwrap()
    }

    /// Whatever the frame, zoom, flips and contrast, the sample's box is where the bright
    /// blob landed in the sample's input.
    #[test]
    fn training_samples_keep_the_box_on_the_lesion() {
        let b = Roi {
            x: 300,
            y: 90,
            w: 40,
            h: 24,
        };
        let img = blob_image(480, 360, b, 1);
        let spec = SampleSpec {
            side: 64,
            low_percentile: 0.01,
            high_percentile: 0.99,
            mean: 0.0,
            std: 1.0,
            zoom: Some(4.0),
        };
        let aug = Augment {
            noise: 0.0,
            ..Augment::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let mut zoomed = 0;
        for _ in 0..40 {
            let smp = training_sample(&img, b, &spec, &aug, &mut rng).unwrap();
            assert_eq!(smp.x.len(), 64 * 64);
            let s = smp.scale;
            zoomed += usize::from(s > 64.0 / 480.0 + 1e-6);
            // The centre of the box is bright and a point well outside it is not.
            let cx = ((smp.roi.x as f32 + smp.roi.w as f32 / 2.0) * s) as usize;
            let cy = ((smp.roi.y as f32 + smp.roi.h as f32 / 2.0) * s) as usize;
            let at = |x: usize, y: usize| smp.x[y.min(63) * 64 + x.min(63)];
            assert!(at(cx, cy) > 0.8, "centre {cx},{cy} = {}", at(cx, cy));
            let off_x = if cx > 32 {
                cx - (smp.roi.w as f32 * s) as usize - 3
            } else {
                cx + (smp.roi.w as f32 * s) as usize + 3
            };
            assert!(
                at(off_x, cy) < 0.8,
                "outside {off_x},{cy} = {}",
                at(off_x, cy)
            );
        }
        // About half are zoom windows.
        assert!((10..=30).contains(&zoomed), "{zoomed} of 40 zoomed");
        // Seeded: the same draw twice.
        let a = training_sample(&img, b, &spec, &aug, &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
        let c = training_sample(&img, b, &spec, &aug, &mut ChaCha8Rng::seed_from_u64(9)).unwrap();
        assert_eq!((a.x, a.roi), (c.x, c.roi));
    }

    /// Collimation bands never cover the lesion.
    #[test]
    fn borders_stop_short_of_the_lesion() {
        let b = Roi {
            x: 2,
            y: 100,
            w: 30,
            h: 30,
        };
        let aug = Augment {
            borders_p: 1.0,
            noise: 0.0,
            gamma: [1.0, 1.0],
            ..Augment::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for seed in 0..20 {
            let mut img = blob_image(200, 200, b, seed);
            augment_intensity(&mut img, b, &aug, true, &mut rng);
            for y in b.y..b.y + b.h {
                for x in b.x..b.x + b.w {
                    assert!(img.pixels[(y * 200 + x) as usize] > 2800.0);
                }
            }
        }
    }

    /// The zoom pass in scoring: a net that always answers "a 4-pixel box at the middle cell"
    /// gives a 32-pixel first box on the 512² image (scale 1/8), then, on the 128-pixel
    /// window around it (zoom 4, scale 1/2), an 8-pixel box mapped back to the image centre.
    #[test]
    fn zoom_scoring_maps_the_window_box_back() {
        let b = Roi {
            x: 252,
            y: 252,
            w: 8,
            h: 8,
        };
        let images = Radiographs {
            images: vec![blob_image(512, 512, b, 4)],
            roi: vec![b],
            paths: vec![PathBuf::from("blob")],
        };
        let set = LetterboxSet::from_images(&images, 64, 0.01, 0.99).unwrap();
        let c = 16usize;
        // Peak at cell (8, 8), offset 0, size 4 input pixels.
        let fixed = |n: usize| {
            let mut heatmap = vec![0.0; n * c * c];
            for k in 0..n {
                heatmap[k * c * c + 8 * c + 8] = 0.9;
            }
            Maps {
                heatmap,
                offset: vec![0.0; n * 2 * c * c],
                size: vec![4.0; n * 2 * c * c],
            }
        };
        let z = ZoomEval {
            images: &images,
            zoom: 4.0,
            flips: false,
            low_percentile: 0.01,
            high_percentile: 0.99,
            mean: 0.0,
            std: 1.0,
        };
        let one = score(&set, 8, None, |_, idx| Ok(fixed(idx.len()))).unwrap();
        let two = score(&set, 8, Some(&z), |_, idx| Ok(fixed(idx.len()))).unwrap();
        // First box (240, 240, 32, 32): IoU 64 / 1024 with the 8-pixel truth.
        assert_eq!(one.iou, one.first_pass_iou);
        assert!((one.iou[0] - 0.0625).abs() < 1e-6, "{one:?}");
        // Window (192, 192, 128): the second box (60, 60, 8, 8) in it is the truth.
        assert_eq!(two.first_pass_iou, one.first_pass_iou);
        assert_eq!(two.iou, vec![1.0]);
        assert_eq!(two.confidence, vec![0.9]);
    }
}
