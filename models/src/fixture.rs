//! Small random-initialised model bundles for tests, benches and demos of the engine
//! (`tirp_firmware::engine`) before or without a trained bundle. **Untrained: their
//! predictions mean nothing.** Same seed, same bytes.
//!
//! A fixture bundle has the real layout (`ensemble.json` + one ONNX file per member +
//! `stacker.onnx`): the members are our real architectures at a small size exported by
//! [`crate::nets::export`], the stacker a logistic regression (`Gemm` + `Sigmoid`) with
//! seeded weights. With [`FixtureConfig::localiser`] it also holds a hand-made lesion
//! localiser ([`bright_spot_localiser`]) that finds the brightest region.

use crate::nets::{
    self, EffNet, EffNetConfig, Member, MemberKind, ResNet, ResNetConfig, Vit, VitConfig,
    effnet::Stage,
};
use crate::onnx::{BATCH, ConvSpec, ExportError, Graph, Model, OPSET, Weights};
use crate::train;
use burn::module::Module;
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use tirp_firmware::ensemble::{
    ENSEMBLE_FORMAT, EnsembleSpec, LocaliserSpec, MemberSpec, STACKER_INPUT, STACKER_OUTPUT,
    SpecError, StackerKind, StackerSpec,
};
use tirp_firmware::localise;
use tirp_firmware::preprocess::PreprocessSpec;
use tract_onnx::pb;

#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct FixtureConfig {
    pub name: String,
    pub version: String,
    /// Side of the members' input.
    pub input_size: usize,
    pub seed: u64,
    pub members: Vec<MemberKind>,
    pub threshold: f32,
    /// Export the members' `fmap` output (Score-CAM); `false` makes an older-style bundle.
    pub with_fmap: bool,
    /// Standardisation statistics written into the preprocessing spec.
    pub mean: f32,
    pub std: f32,
    /// The members' default (shipped) architectures instead of the small test ones, for
    /// timing the engine on realistic graphs.
    pub full_size: bool,
    /// Also write a localiser (`localiser.onnx`, [`bright_spot_localiser`]) into the spec.
    pub localiser: Option<FixtureLocaliser>,
}

/// The fixture localiser's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixtureLocaliser {
    /// Side of its letterboxed input (a multiple of [`localise::STRIDE`]).
    pub input_size: u32,
    /// The constant box side it outputs, in input pixels.
    pub box_side: f32,
    pub min_confidence: f32,
    /// The spec's zoom pass factor (`None`: first pass only).
    pub zoom: Option<f32>,
    /// The spec's `zoom_flips`.
    pub zoom_flips: bool,
}

impl Default for FixtureLocaliser {
    fn default() -> Self {
        FixtureLocaliser {
            input_size: 64,
            box_side: 20.0,
            min_confidence: 0.5,
            zoom: None,
            zoom_flips: false,
        }
    }
}

/// Standardisation of the fixture localiser's input: letterboxed 0–1 → about ±2.
pub const LOCALISER_MEAN: f32 = 0.5;
pub const LOCALISER_STD: f32 = 0.25;
/// File name of the fixture localiser in a bundle.
pub const LOCALISER_FILE: &str = "localiser.onnx";

/// A hand-made localiser with the contract's names and shapes ([`localise`]): the heat-map
/// is σ(3·m − 3), m the mean of the standardised input over a 2×2-cell window centred on each
/// cell's centre (an 8×8 average, stride 4, zero padding 2), so it peaks (≈ 0.95) where a
/// bright region fills the window and is ≈ 0 on a dark or flat image (≈ 0.05 on noise); offset is 0.5 (the cell
/// centre) and size `box_side × box_side` everywhere.
pub fn bright_spot_localiser(input_size: u32, box_side: f32) -> Model {
    let side = input_size as usize;
    let c = localise::cells(input_size);
    let k = 2 * localise::STRIDE as usize;
    let mut g = Graph::new();
    let avg = g.conv(
        localise::INPUT,
        &Weights::new(vec![1, 1, k, k], vec![1.0 / (k * k) as f32; k * k]),
        &Weights::new(vec![1], vec![0.0]),
        ConvSpec {
            stride: localise::STRIDE as usize,
            pad: localise::STRIDE as usize / 2,
            groups: 1,
        },
    );
    let gain = g.scalar("gain", 3.0);
    let bias = g.scalar("bias", -3.0);
    let z = g.mul(&avg, &gain);
    let z = g.add(&z, &bias);
    let heat = g.sigmoid(&z);
    // [N, 1, c, c] zeros, so the constant outputs carry the batch dimension.
    let zero = g.scalar("zero", 0.0);
    let zeros = g.mul(&avg, &zero);
    let offset = g.constant(
        "offset",
        &Weights::new(vec![1, 2, c, c], vec![0.5; 2 * c * c]),
    );
    let offset = g.add(&zeros, &offset);
    let size = g.constant(
        "size",
        &Weights::new(vec![1, 2, c, c], vec![box_side; 2 * c * c]),
    );
    let size = g.add(&zeros, &size);
    g.finish(
        localise::INPUT,
        [1, side, side],
        &[
            (
                &heat,
                localise::HEATMAP,
                vec![None, Some(1), Some(c), Some(c)],
            ),
            (
                &offset,
                localise::OFFSET,
                vec![None, Some(2), Some(c), Some(c)],
            ),
            (&size, localise::SIZE, vec![None, Some(2), Some(c), Some(c)]),
        ],
        "DeepTIRP Edge fixture localiser (brightest region; untrained)",
    )
}

impl Default for FixtureConfig {
    fn default() -> Self {
        FixtureConfig {
            name: "tirp-fixture".into(),
            version: "0.0.1".into(),
            input_size: 32,
            seed: 1,
            members: MemberKind::ALL.to_vec(),
            threshold: 0.5,
            with_fmap: true,
            mean: 0.45,
            std: 0.25,
            full_size: false,
            localiser: None,
        }
    }
}

/// What was written: the spec and the stacker's coefficients (for hand computations).
#[derive(Debug, Clone)]
pub struct Fixture {
    pub spec: EnsembleSpec,
    pub stacker_weights: Vec<f32>,
    pub stacker_bias: f32,
}

/// A small residual CNN (two stages).
pub fn resnet(input_size: usize, seed: u64) -> ResNet {
    let cfg = ResNetConfig {
        input_size,
        widths: vec![8, 16],
        blocks: vec![1, 1],
    };
    train::init(seed, |d| ResNet::new(&cfg, d)).valid()
}

/// A small EfficientNet-style net (two MBConv stages).
pub fn effnet(input_size: usize, seed: u64) -> EffNet {
    let stage = |expand, channels, stride| Stage {
        expand,
        channels,
        stride,
        repeats: 1,
    };
    let cfg = EffNetConfig {
        input_size,
        stem: 8,
        stages: vec![stage(1, 8, 1), stage(4, 16, 2)],
        head: 32,
    };
    train::init(seed, |d| EffNet::new(&cfg, d)).valid()
}

/// A small ViT (patch 8, two blocks).
pub fn vit(input_size: usize, seed: u64) -> Vit {
    let cfg = VitConfig {
        input_size,
        patch: 8,
        dim: 32,
        depth: 2,
        heads: 2,
        mlp_ratio: 2,
    };
    train::init(seed, |d| Vit::new(&cfg, d)).valid()
}

/// Seed of member `i` of a fixture with seed `seed`.
pub fn member_seed(seed: u64, i: usize) -> u64 {
    seed.wrapping_mul(1000).wrapping_add(i as u64 + 1)
}

fn export_member<M: Member>(m: &M, with_fmap: bool) -> Result<(Model, u32), ExportError> {
    let mut model = nets::export(m)?;
    if !with_fmap {
        drop_output(&mut model, nets::FMAP);
    }
    Ok((model, m.cam_side() as u32))
}

/// Removes a graph output (and the Identity that names it).
pub fn drop_output(model: &mut Model, name: &str) {
    if let Some(g) = model.proto.graph.as_mut() {
        g.output.retain(|o| o.name != name);
        g.node.retain(|n| !n.output.iter().any(|o| o == name));
    }
}

/// A logistic-regression stacker, `features [N, k]` → `probability [N, 1]` =
/// σ(features · w + b), as ONNX `Gemm` + `Sigmoid`.
pub fn logistic_stacker(weights: &[f32], bias: f32) -> Model {
    let float = pb::tensor_proto::DataType::Float as i32;
    let k = weights.len();
    let tensor = |name: &str, dims: Vec<i64>, data: &[f32]| pb::TensorProto {
        name: name.into(),
        dims,
        data_type: float,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    };
    let value_info = |name: &str, cols: usize| {
        use pb::tensor_shape_proto::{Dimension, dimension::Value};
        let dim = |v| Dimension {
            value: Some(v),
            ..Default::default()
        };
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: float,
                    shape: Some(pb::TensorShapeProto {
                        dim: vec![
                            dim(Value::DimParam(BATCH.into())),
                            dim(Value::DimValue(cols as i64)),
                        ],
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    let node = |op: &str, inputs: &[&str], output: &str| pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: output.into(),
        op_type: op.into(),
        ..Default::default()
    };
    let proto = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "tirp-models".into(),
        doc_string: "DeepTIRP Edge fixture stacker (logistic regression)".into(),
        graph: Some(pb::GraphProto {
            name: "stacker".into(),
            node: vec![
                node("Gemm", &[STACKER_INPUT, "w", "b"], "z"),
                node("Sigmoid", &["z"], "p"),
                node("Identity", &["p"], STACKER_OUTPUT),
            ],
            initializer: vec![
                tensor("w", vec![k as i64, 1], weights),
                tensor("b", vec![1], &[bias]),
            ],
            input: vec![value_info(STACKER_INPUT, k)],
            output: vec![value_info(STACKER_OUTPUT, 1)],
            ..Default::default()
        }),
        ..Default::default()
    };
    Model { proto }
}

/// Writes a fixture bundle into `dir` (created if missing).
pub fn write_bundle(dir: &Path, cfg: &FixtureConfig) -> Result<Fixture, FixtureError> {
    std::fs::create_dir_all(dir).map_err(|source| FixtureError::Io {
        path: dir.to_owned(),
        source,
    })?;
    let s = cfg.input_size;
    let mut members = Vec::new();
    let weight = 1.0 / cfg.members.len() as f32;
    for (i, &kind) in cfg.members.iter().enumerate() {
        let seed = member_seed(cfg.seed, i);
        let fmap = cfg.with_fmap;
        let (model, cam_side) = match (kind, cfg.full_size) {
            (MemberKind::ResNet, false) => export_member(&resnet(s, seed), fmap)?,
            (MemberKind::EffNet, false) => export_member(&effnet(s, seed), fmap)?,
            (MemberKind::Vit, false) => export_member(&vit(s, seed), fmap)?,
            (MemberKind::ResNet, true) => {
                let cfg = ResNetConfig {
                    input_size: s,
                    ..Default::default()
                };
                export_member(&train::init(seed, |d| ResNet::new(&cfg, d)).valid(), fmap)?
            }
            (MemberKind::EffNet, true) => {
                let cfg = EffNetConfig {
                    input_size: s,
                    ..Default::default()
                };
                export_member(&train::init(seed, |d| EffNet::new(&cfg, d)).valid(), fmap)?
            }
            (MemberKind::Vit, true) => {
                let cfg = VitConfig {
                    input_size: s,
                    ..Default::default()
                };
                export_member(&train::init(seed, |d| Vit::new(&cfg, d)).valid(), fmap)?
            }
        };
        let file = format!("{kind}.onnx");
        model.save(&dir.join(&file))?;
        members.push(MemberSpec {
            name: kind.to_string(),
            file,
            full_int8_file: None,
            cam_side,
            cam_weight: weight,
        });
    }
    let features = EnsembleSpec::feature_names(&members);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5157_4C4B);
    let weights: Vec<f32> = (0..features.len())
        .map(|i| {
            // Member probabilities matter most, as in a fitted stacker.
            let scale = if i < members.len() { 3.0 } else { 0.5 };
            rng.random_range(-scale..scale)
        })
        .collect();
    let bias: f32 = rng.random_range(-0.5..0.5);
    let stacker = logistic_stacker(&weights, bias);
    let stacker_path = dir.join("stacker.onnx");
    std::fs::write(&stacker_path, stacker.proto.encode_to_vec()).map_err(|source| {
        FixtureError::Io {
            path: stacker_path,
            source,
        }
    })?;
    let spec = EnsembleSpec {
        format: ENSEMBLE_FORMAT,
        name: cfg.name.clone(),
        version: cfg.version.clone(),
        preprocess: PreprocessSpec {
            input_size: s as u32,
            mean: cfg.mean,
            std: cfg.std,
            ..Default::default()
        },
        members,
        stacker: StackerSpec {
            kind: StackerKind::Lr,
            file: "stacker.onnx".into(),
            features,
        },
        threshold: cfg.threshold,
        localiser: match cfg.localiser {
            None => None,
            Some(l) => {
                bright_spot_localiser(l.input_size, l.box_side).save(&dir.join(LOCALISER_FILE))?;
                Some(LocaliserSpec {
                    file: LOCALISER_FILE.into(),
                    input_size: l.input_size,
                    mean: LOCALISER_MEAN,
                    std: LOCALISER_STD,
                    min_confidence: l.min_confidence,
                    zoom: l.zoom,
                    zoom_flips: l.zoom_flips,
                })
            }
        },
    };
    spec.save(dir)?;
    Ok(Fixture {
        spec,
        stacker_weights: weights,
        stacker_bias: bias,
    })
}
