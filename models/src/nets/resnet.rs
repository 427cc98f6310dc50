//! A small residual CNN: stem, then stages of basic blocks (two 3×3 conv+BN with an
//! identity or projected shortcut), each later stage halving the resolution.

use super::layers::{CamHead, ConvBn, GraphOutputs, MemberOutput};
use super::{Member, MemberKind};
use crate::onnx::{ExportError, Graph};
use burn::prelude::*;
use burn::tensor::activation::relu;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResNetConfig {
    pub input_size: usize,
    /// Channels of each stage; the stem has the first stage's width.
    pub widths: Vec<usize>,
    /// Basic blocks per stage.
    pub blocks: Vec<usize>,
}

impl Default for ResNetConfig {
    fn default() -> Self {
        ResNetConfig {
            input_size: 128,
            widths: vec![16, 32, 64, 128],
            blocks: vec![1, 1, 1, 1],
        }
    }
}

#[derive(Module, Debug)]
pub struct BasicBlock {
    pub conv1: ConvBn,
    pub conv2: ConvBn,
    pub shortcut: Option<ConvBn>,
}

impl BasicBlock {
    fn new(device: &Device, cin: usize, cout: usize, stride: usize) -> Self {
        BasicBlock {
            conv1: ConvBn::new(device, cin, cout, 3, stride, 1),
            conv2: ConvBn::new(device, cout, cout, 3, 1, 1),
            shortcut: (stride != 1 || cin != cout)
                .then(|| ConvBn::new(device, cin, cout, 1, stride, 1)),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.conv2.forward(relu(self.conv1.forward(x.clone())));
        let s = match &self.shortcut {
            Some(p) => p.forward(x),
            None => x,
        };
        relu(y + s)
    }

    fn export(&self, g: &mut Graph, x: &str) -> Result<String, ExportError> {
        let y = self.conv1.export(g, x)?;
        let y = g.relu(&y);
        let y = self.conv2.export(g, &y)?;
        let s = match &self.shortcut {
            Some(p) => p.export(g, x)?,
            None => x.to_owned(),
        };
        let sum = g.add(&y, &s);
        Ok(g.relu(&sum))
    }
}

#[derive(Module, Debug)]
pub struct ResNet {
    pub stem: ConvBn,
    pub blocks: Vec<BasicBlock>,
    pub head: CamHead,
    pub input_size: usize,
    pub cam_side: usize,
}

impl ResNet {
    pub fn new(cfg: &ResNetConfig, device: &Device) -> Self {
        assert_eq!(
            cfg.widths.len(),
            cfg.blocks.len(),
            "one block count per stage"
        );
        let stem = ConvBn::new(device, 1, cfg.widths[0], 3, 2, 1);
        let mut blocks = Vec::new();
        let mut cin = cfg.widths[0];
        let mut side = cfg.input_size.div_ceil(2);
        for (i, (&w, &n)) in cfg.widths.iter().zip(&cfg.blocks).enumerate() {
            for b in 0..n {
                let stride = if i > 0 && b == 0 { 2 } else { 1 };
                if stride == 2 {
                    side = side.div_ceil(2);
                }
                blocks.push(BasicBlock::new(device, cin, w, stride));
                cin = w;
            }
        }
        ResNet {
            stem,
            blocks,
            head: CamHead::new(device, cin),
            input_size: cfg.input_size,
            cam_side: side,
        }
    }

    fn features(&self, x: Tensor<4>) -> Tensor<4> {
        let x = relu(self.stem.forward(x));
        self.blocks.iter().fold(x, |x, b| b.forward(x))
    }
}

impl Member for ResNet {
    const KIND: MemberKind = MemberKind::ResNet;

    fn input_size(&self) -> usize {
        self.input_size
    }

    fn cam_side(&self) -> usize {
        self.cam_side
    }

    fn fmap_channels(&self) -> usize {
        self.head.channels()
    }

    fn forward_logit(&self, x: Tensor<4>) -> Tensor<2> {
        self.head.logit_of_map(self.features(x))
    }

    fn forward(&self, x: Tensor<4>) -> MemberOutput {
        self.head.output_of_map(self.features(x))
    }

    fn export_graph(&self, g: &mut Graph, x: &str) -> Result<GraphOutputs, ExportError> {
        let y = self.stem.export(g, x)?;
        let mut y = g.relu(&y);
        for b in &self.blocks {
            y = b.export(g, &y)?;
        }
        self.head.export_map(g, &y, self.cam_side * self.cam_side)
    }
}
