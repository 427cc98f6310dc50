//! An EfficientNet-style net: stem, MBConv blocks (1×1 expand, depthwise 3×3,
//! squeeze-excitation, 1×1 project, residual where shapes allow), a 1×1 head conv.

use super::layers::{Act, CamHead, ConvBn, GraphOutputs, MemberOutput, SqueezeExcite};
use super::{Member, MemberKind};
use crate::onnx::{ExportError, Graph};
use burn::prelude::*;
use serde::{Deserialize, Serialize};

/// One stage: `repeats` MBConv blocks of `channels` outputs; the first has `stride`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub expand: usize,
    pub channels: usize,
    pub stride: usize,
    pub repeats: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EffNetConfig {
    pub input_size: usize,
    pub stem: usize,
    pub stages: Vec<Stage>,
    pub head: usize,
}

impl Default for EffNetConfig {
    fn default() -> Self {
        let s = |expand, channels, stride, repeats| Stage {
            expand,
            channels,
            stride,
            repeats,
        };
        EffNetConfig {
            input_size: 128,
            stem: 16,
            stages: vec![
                s(1, 16, 1, 1),
                s(4, 24, 2, 2),
                s(4, 40, 2, 2),
                s(4, 80, 2, 2),
                s(4, 112, 1, 1),
            ],
            head: 256,
        }
    }
}

#[derive(Module, Debug)]
pub struct MbConv {
    pub expand: Option<ConvBn>,
    pub depthwise: ConvBn,
    pub se: SqueezeExcite,
    pub project: ConvBn,
    pub residual: usize,
}

impl MbConv {
    fn new(device: &Device, cin: usize, cout: usize, expand: usize, stride: usize) -> Self {
        let mid = cin * expand;
        MbConv {
            expand: (expand != 1).then(|| ConvBn::new(device, cin, mid, 1, 1, 1)),
            depthwise: ConvBn::new(device, mid, mid, 3, stride, mid),
            // EfficientNet squeezes to a quarter of the block's input channels.
            se: SqueezeExcite::new(device, mid, (cin / 4).max(1)),
            project: ConvBn::new(device, mid, cout, 1, 1, 1),
            residual: (stride == 1 && cin == cout) as usize,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut y = x.clone();
        if let Some(e) = &self.expand {
            y = Act::Silu.forward(e.forward(y));
        }
        let y = Act::Silu.forward(self.depthwise.forward(y));
        let y = self.project.forward(self.se.forward(y));
        if self.residual == 1 { y + x } else { y }
    }

    fn export(&self, g: &mut Graph, x: &str) -> Result<String, ExportError> {
        let mut y = x.to_owned();
        if let Some(e) = &self.expand {
            let z = e.export(g, &y)?;
            y = g.silu(&z);
        }
        let z = self.depthwise.export(g, &y)?;
        let y = g.silu(&z);
        let y = self.se.export(g, &y)?;
        let y = self.project.export(g, &y)?;
        Ok(if self.residual == 1 { g.add(&y, x) } else { y })
    }
}

#[derive(Module, Debug)]
pub struct EffNet {
    pub stem: ConvBn,
    pub blocks: Vec<MbConv>,
    pub head_conv: ConvBn,
    pub head: CamHead,
    pub input_size: usize,
    pub cam_side: usize,
}

impl EffNet {
    pub fn new(cfg: &EffNetConfig, device: &Device) -> Self {
        let stem = ConvBn::new(device, 1, cfg.stem, 3, 2, 1);
        let mut side = cfg.input_size.div_ceil(2);
        let mut cin = cfg.stem;
        let mut blocks = Vec::new();
        for st in &cfg.stages {
            for r in 0..st.repeats {
                let stride = if r == 0 { st.stride } else { 1 };
                if stride == 2 {
                    side = side.div_ceil(2);
                }
                blocks.push(MbConv::new(device, cin, st.channels, st.expand, stride));
                cin = st.channels;
            }
        }
        EffNet {
            stem,
            blocks,
            head_conv: ConvBn::new(device, cin, cfg.head, 1, 1, 1),
            head: CamHead::new(device, cfg.head),
            input_size: cfg.input_size,
            cam_side: side,
        }
    }

    fn features(&self, x: Tensor<4>) -> Tensor<4> {
        let x = Act::Silu.forward(self.stem.forward(x));
        let x = self.blocks.iter().fold(x, |x, b| b.forward(x));
        Act::Silu.forward(self.head_conv.forward(x))
    }
}

impl Member for EffNet {
    const KIND: MemberKind = MemberKind::EffNet;

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
        let mut y = g.silu(&y);
        for b in &self.blocks {
            y = b.export(g, &y)?;
        }
        let y = self.head_conv.export(g, &y)?;
        let y = g.silu(&y);
        self.head.export_map(g, &y, self.cam_side * self.cam_side)
    }
}
