//! The ensemble's image members, in burn, each exportable to ONNX.
//!
//! Every member maps a `[N, 1, S, S]` model input (from
//! `tirp_firmware::preprocess::PreprocessSpec::model_input`) to
//! - `logit [N, 1]`: global pooling + linear, the log-odds of a primary bone tumour;
//! - `cam [N, 1, h, w]`: each location's (token's) additive contribution to that logit,
//!   `(W·f(x,y) + b)/hw`, so the map sums exactly to the logit. The engine shows it as the
//!   Grad-CAM heat-map (for a linear head on pooled features the two coincide);
//! - `fmap [N, C, h, w]`: the last feature map `f` that feeds the head (a ViT's tokens laid
//!   out on the patch grid), which the engine's Score-CAM masks with.

pub mod effnet;
pub mod layers;
pub mod localiser;
pub mod resnet;
pub mod vit;

pub use effnet::{EffNet, EffNetConfig};
pub use layers::{GraphOutputs, MemberOutput};
pub use resnet::{ResNet, ResNetConfig};
pub use vit::{Vit, VitConfig};

use crate::onnx::{ExportError, Graph, Model};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberKind {
    ResNet,
    EffNet,
    Vit,
}

impl MemberKind {
    pub const ALL: [MemberKind; 3] = [MemberKind::ResNet, MemberKind::EffNet, MemberKind::Vit];

    pub fn as_str(self) -> &'static str {
        match self {
            MemberKind::ResNet => "resnet",
            MemberKind::EffNet => "effnet",
            MemberKind::Vit => "vit",
        }
    }
}

impl std::fmt::Display for MemberKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names of the graph's input and outputs, fixed for the engine.
pub const INPUT: &str = "x";
pub const LOGIT: &str = "logit";
pub const CAM: &str = "cam";
pub const FMAP: &str = "fmap";

pub trait Member: Module + 'static {
    const KIND: MemberKind;

    /// Side of the square model input.
    fn input_size(&self) -> usize;

    /// Side of the square class-activation map.
    fn cam_side(&self) -> usize;

    /// Logit only; what training needs.
    fn forward_logit(&self, x: Tensor<4>) -> Tensor<2>;

    fn forward(&self, x: Tensor<4>) -> MemberOutput;

    /// Channels of the last feature map (`fmap [N, C, h, w]`, h = w = `cam_side`).
    fn fmap_channels(&self) -> usize;

    /// Writes the eval-mode forward into `g`, returning its output tensors' names.
    fn export_graph(&self, g: &mut Graph, x: &str) -> Result<GraphOutputs, ExportError>;
}

/// The member's eval-mode forward as an ONNX model with outputs `logit`, `cam` and `fmap`.
pub fn export<M: Member>(m: &M) -> Result<Model, ExportError> {
    let mut g = Graph::new();
    let GraphOutputs { logit, cam, fmap } = m.export_graph(&mut g, INPUT)?;
    let s = m.input_size();
    let c = m.cam_side();
    let k = m.fmap_channels();
    Ok(g.finish(
        INPUT,
        [1, s, s],
        &[
            (&logit, LOGIT, vec![None, Some(1)]),
            (&cam, CAM, vec![None, Some(1), Some(c), Some(c)]),
            (&fmap, FMAP, vec![None, Some(k), Some(c), Some(c)]),
        ],
        &format!("DeepTIRP Edge image member `{}`", M::KIND),
    ))
}
