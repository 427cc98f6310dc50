//! Training the image members with burn on its flex CPU backend: seeded, deterministic,
//! BCE-with-logits, SGD or AdamW with step decay, validation AUC per epoch, best epoch kept.

pub mod data;

pub use data::{CropSet, DataError};

use crate::nets::Member;
use burn::module::{ModuleVisitor, Param};
use burn::nn::loss::{BinaryCrossEntropyLoss, BinaryCrossEntropyLossConfig};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with momentum (the study's optimiser for fine-tuning).
    Sgd {
        momentum: f64,
    },
    AdamW,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// The learning rate is multiplied by `lr_gamma` every `lr_step_epochs` epochs.
    pub lr_step_epochs: usize,
    pub lr_gamma: f64,
    pub weight_decay: f32,
    pub optimizer: OptimizerKind,
    pub flips: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seed: 17,
            epochs: 12,
            batch_size: 32,
            lr: 2e-3,
            lr_step_epochs: 5,
            lr_gamma: 0.3,
            weight_decay: 1e-4,
            optimizer: OptimizerKind::AdamW,
            flips: true,
        }
    }
}

impl TrainConfig {
    pub fn lr_at(&self, epoch: usize) -> f64 {
        self.lr
            * self
                .lr_gamma
                .powi((epoch / self.lr_step_epochs.max(1)) as i32)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training configuration: {0}")]
    Config(String),
    #[error("data set `{0}` is empty")]
    Empty(&'static str),
    #[error("input size {data} of the data does not match the member's {model}")]
    InputSize { data: usize, model: usize },
    #[error("reading {what} from burn: {message}")]
    Tensor { what: &'static str, message: String },
    #[error("training diverged: loss {loss} at epoch {epoch}, step {step}")]
    Diverged {
        epoch: usize,
        step: usize,
        loss: f32,
    },
}

/// The CPU device members are evaluated on.
pub fn device() -> Device {
    Device::flex()
}

/// burn seeds its initialisers from one global generator, so concurrent initialisations
/// (parallel tests, several members) would interleave draws. All of ours go through here.
static INIT: Mutex<()> = Mutex::new(());

/// burn draws parameters lazily, at first use; touching each one under the lock fixes
/// the order and the generator state of the draws.
struct Materialize;

impl ModuleVisitor for Materialize {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let _ = param.val();
    }
}

/// Builds a member on the training (autodiff) device with weights drawn from `seed`.
pub fn init<M: Member>(seed: u64, build: impl FnOnce(&Device) -> M) -> M {
    init_module(seed, build)
}

/// [`init`] for any module (the lesion localiser is not an ensemble member).
pub fn init_module<M: Module>(seed: u64, build: impl FnOnce(&Device) -> M) -> M {
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    let dev = device();
    dev.seed(seed);
    let model = build(&dev.autodiff());
    model.visit(&mut Materialize);
    model
}

/// One optimisation step at a time; [`fit`] drives it over epochs.
pub struct Trainer<M: Member> {
    model: Option<M>,
    optim: ModuleOptimizer,
    loss: BinaryCrossEntropyLoss,
    device: Device,
}

impl<M: Member> Trainer<M> {
    pub fn new(model: M, cfg: &TrainConfig) -> Self {
        let optim = match cfg.optimizer {
            OptimizerKind::AdamW => AdamWConfig::new()
                .with_weight_decay(cfg.weight_decay)
                .init(),
            OptimizerKind::Sgd { momentum } => SgdConfig::new()
                .with_momentum(Some(MomentumConfig {
                    momentum,
                    dampening: 0.0,
                    nesterov: false,
                }))
                .with_weight_decay(Some(WeightDecayConfig {
                    penalty: cfg.weight_decay,
                }))
                .init(),
        };
        let device = device().autodiff();
        Trainer {
            model: Some(model),
            optim,
            loss: BinaryCrossEntropyLossConfig::new()
                .with_logits(true)
                .init(&device),
            device,
        }
    }

    pub fn model(&self) -> &M {
        self.model
            .as_ref()
            .expect("model is put back after every step")
    }

    pub fn into_model(mut self) -> M {
        self.model
            .take()
            .expect("model is put back after every step")
    }

    /// One step on a batch (`x`: `n·s²` values, `y`: `n` targets); returns the batch loss.
    pub fn step(&mut self, x: Vec<f32>, y: &[f32], lr: f64) -> Result<f32, TrainError> {
        let n = y.len();
        let s = self.model().input_size();
        let x = Tensor::<4>::from_data(TensorData::new(x, [n, 1, s, s]), &self.device);
        let targets: Vec<i64> = y.iter().map(|&v| v as i64).collect();
        let t = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), &self.device);
        let model = self
            .model
            .take()
            .expect("model is put back after every step");
        let logit = model.forward_logit(x).reshape([n]);
        let loss = self.loss.forward(logit, t);
        let value = scalar(loss.clone())?;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        self.model = Some(self.optim.step(lr, model, grads));
        Ok(value)
    }
}

fn scalar(t: Tensor<1>) -> Result<f32, TrainError> {
    t.into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| TrainError::Tensor {
            what: "loss",
            message: format!("{e:?}"),
        })
        .map(|v| v[0])
}

/// Logits of an evaluation-mode member (`model.valid()`) for every crop of `set`.
pub fn predict<M: Member>(
    model: &M,
    set: &CropSet,
    batch_size: usize,
) -> Result<Vec<f32>, TrainError> {
    let dev = device();
    let s = set.size;
    let mut out = Vec::with_capacity(set.len());
    let idx: Vec<usize> = (0..set.len()).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let (x, _) = set.batch::<ChaCha8Rng>(chunk, None);
        let x = Tensor::<4>::from_data(TensorData::new(x, [chunk.len(), 1, s, s]), &dev);
        let logit = model.forward_logit(x).reshape([chunk.len()]);
        out.extend(
            logit
                .into_data()
                .try_into_vec_as::<f32>()
                .map_err(|e| TrainError::Tensor {
                    what: "logits",
                    message: format!("{e:?}"),
                })?,
        );
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    pub lr: f64,
    pub train_loss: f64,
    pub val_loss: f64,
    pub val_auc: f64,
    pub seconds: f64,
    pub seconds_per_step: f64,
}

pub enum TrainEvent<'a> {
    Step {
        epoch: usize,
        step: usize,
        steps: usize,
        loss: f32,
    },
    Epoch(&'a EpochStats),
}

pub struct Trained<M> {
    /// Evaluation-mode snapshot of the best epoch (highest validation AUC).
    pub model: M,
    pub best_epoch: usize,
    pub history: Vec<EpochStats>,
}

/// Trains `model` on `train`, keeping the epoch with the best validation AUC.
pub fn fit<M: Member>(
    model: M,
    train: &CropSet,
    val: &CropSet,
    cfg: &TrainConfig,
    on: &mut dyn FnMut(TrainEvent),
) -> Result<Trained<M>, TrainError> {
    if cfg.epochs == 0 || cfg.batch_size < 2 {
        return Err(TrainError::Config(
            "need epochs ≥ 1 and batch_size ≥ 2 (BatchNorm)".into(),
        ));
    }
    if train.is_empty() {
        return Err(TrainError::Empty("train"));
    }
    if val.is_empty() {
        return Err(TrainError::Empty("validation"));
    }
    for set in [train, val] {
        if set.size != model.input_size() {
            return Err(TrainError::InputSize {
                data: set.size,
                model: model.input_size(),
            });
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut trainer = Trainer::new(model, cfg);
    let mut best: Option<(f64, usize, M)> = None;
    let mut history = Vec::new();
    let mut order: Vec<usize> = (0..train.len()).collect();
    for epoch in 0..cfg.epochs {
        let start = Instant::now();
        let lr = cfg.lr_at(epoch);
        order.shuffle(&mut rng);
        // A trailing batch of one would break BatchNorm's batch statistics.
        let batches: Vec<&[usize]> = order
            .chunks(cfg.batch_size)
            .filter(|b| b.len() >= 2)
            .collect();
        let mut total = 0.0f64;
        for (step, idx) in batches.iter().enumerate() {
            let (x, y) = train.batch(idx, cfg.flips.then_some(&mut rng));
            let loss = trainer.step(x, &y, lr)?;
            if !loss.is_finite() {
                return Err(TrainError::Diverged { epoch, step, loss });
            }
            total += loss as f64 * idx.len() as f64;
            on(TrainEvent::Step {
                epoch,
                step,
                steps: batches.len(),
                loss,
            });
        }
        let train_seconds = start.elapsed().as_secs_f64();
        let eval = trainer.model().valid();
        let logits = predict(&eval, val, 64)?;
        let stats = EpochStats {
            epoch,
            lr,
            train_loss: total / batches.iter().map(|b| b.len()).sum::<usize>() as f64,
            val_loss: bce(&logits, &val.labels),
            val_auc: auc(&logits, &val.labels),
            seconds: start.elapsed().as_secs_f64(),
            seconds_per_step: train_seconds / batches.len() as f64,
        };
        on(TrainEvent::Epoch(&stats));
        if best.as_ref().is_none_or(|(a, _, _)| stats.val_auc > *a) {
            best = Some((stats.val_auc, epoch, eval));
        }
        history.push(stats);
    }
    let (_, best_epoch, model) = best.expect("at least one epoch ran");
    Ok(Trained {
        model,
        best_epoch,
        history,
    })
}

/// Mean binary cross-entropy of logits, computed stably.
pub fn bce(logits: &[f32], labels: &[f32]) -> f64 {
    let n = logits.len().max(1) as f64;
    logits
        .iter()
        .zip(labels)
        .map(|(&z, &y)| {
            let z = z as f64;
            z.max(0.0) - z * y as f64 + (-z.abs()).exp().ln_1p()
        })
        .sum::<f64>()
        / n
}

/// ROC AUC as the Mann–Whitney statistic with mid-ranks for ties. Kept private to
/// training (epoch selection): the audited statistics are `tirp_host::stats::roc`, which
/// this crate cannot depend on.
pub fn auc(scores: &[f32], labels: &[f32]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut ranks = vec![0.0f64; scores.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            ranks[k] = mid;
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|&&y| y > 0.5).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    let rank_sum: f64 = ranks
        .iter()
        .zip(labels)
        .filter(|(_, y)| **y > 0.5)
        .map(|(r, _)| r)
        .sum();
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_counts_pairs_and_ties() {
        assert_eq!(auc(&[0.1, 0.4, 0.35, 0.8], &[0.0, 0.0, 1.0, 1.0]), 0.75);
        assert_eq!(auc(&[1.0, 1.0], &[0.0, 1.0]), 0.5);
        assert_eq!(auc(&[3.0, 1.0, 2.0], &[1.0, 0.0, 0.0]), 1.0);
        assert!(auc(&[1.0, 2.0], &[1.0, 1.0]).is_nan());
    }

    #[test]
    fn bce_is_stable_for_large_logits() {
        let l = bce(&[100.0, -100.0, 0.0], &[1.0, 0.0, 1.0]);
        assert!((l - std::f64::consts::LN_2 / 3.0).abs() < 1e-12, "{l}");
        assert!(bce(&[-1000.0], &[1.0]).is_finite());
    }

    #[test]
    fn learning_rate_steps_down() {
        let cfg = TrainConfig {
            lr: 0.1,
            lr_step_epochs: 30,
            lr_gamma: 0.1,
            ..Default::default()
        };
        assert_eq!(cfg.lr_at(0), 0.1);
        assert_eq!(cfg.lr_at(29), 0.1);
        assert!((cfg.lr_at(30) - 0.01).abs() < 1e-15);
        assert!((cfg.lr_at(65) - 0.001).abs() < 1e-15);
    }
}
