//! The lesion localiser: a tiny CenterNet-style CNN on the whole letterboxed radiograph
//! (`tirp_firmware::localise`). Stem (3×3, stride 2) → 3×3 stride-2 conv to the output
//! grid (stride 4) → residual blocks of two dilated 3×3 convs (dilations 1, 2, 4, 8 by
//! default: a receptive field over the whole 128² input without leaving stride 4) → a shared
//! 3×3 head conv → three 1×1 convs: heat-map logit, offset logits, log-size.
//!
//! The exported graph applies the output maps of the contract in the graph: `heatmap =
//! σ(logit)`, `offset = σ(offset logits)`, `size = exp(log-size)` (input pixels). BatchNorm
//! folds into the convolutions.

use super::layers::{ConvBn, param};
use crate::onnx::{ConvSpec, ExportError, Graph, Model, Weights};
use burn::module::Param;
use burn::nn::BatchNormConfig;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};
use serde::{Deserialize, Serialize};
use tirp_firmware::localise::{HEATMAP, INPUT, OFFSET, SIZE, STRIDE};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocaliserConfig {
    pub input_size: usize,
    /// Channels of the stride-2 stem.
    pub stem: usize,
    /// Channels at stride 4 (the residual blocks).
    pub width: usize,
    /// One residual block per entry, with this dilation.
    pub dilations: Vec<usize>,
    /// Channels of the shared head conv.
    pub head: usize,
}

impl Default for LocaliserConfig {
    fn default() -> Self {
        LocaliserConfig {
            input_size: 128,
            stem: 16,
            width: 24,
            dilations: vec![1, 2, 4, 8],
            head: 32,
        }
    }
}

impl LocaliserConfig {
    pub fn describe(&self) -> String {
        format!(
            "stem 3x3/2 ({}ch) -> 3x3/2 ({}ch) -> {} residual dilated blocks (dilations {:?}) -> 3x3 head ({}ch) -> 1x1 heatmap/offset/log-size; stride {}",
            self.stem,
            self.width,
            self.dilations.len(),
            self.dilations,
            self.head,
            STRIDE
        )
    }
}

/// Initial heat-map bias: σ(b) = 0.1, CenterNet's prior.
pub const HEAT_PRIOR_BIAS: f32 = -2.19;
/// Initial log-size bias: boxes of about 16 input pixels.
pub const LOG_SIZE_BIAS: f32 = 2.77;

/// 3×3 conv (dilation `d`, padding `d`) + BatchNorm.
fn dilated(device: &Device, cin: usize, cout: usize, d: usize) -> ConvBn {
    let conv = Conv2dConfig::new([cin, cout], [3, 3])
        .with_dilation([d, d])
        .with_padding(PaddingConfig2d::Explicit(d, d, d, d))
        .with_bias(false)
        .init(device);
    ConvBn {
        conv,
        bn: BatchNormConfig::new(cout).init(device),
        stride: 1,
        groups: 1,
    }
}

fn export_dilated(g: &mut Graph, c: &ConvBn, x: &str, d: usize) -> Result<String, ExportError> {
    let (w, b) = c.folded()?;
    Ok(g.conv_dilated(
        x,
        &w,
        &b,
        ConvSpec {
            stride: 1,
            pad: d,
            groups: 1,
        },
        d,
    ))
}

/// Two dilated 3×3 conv+BN with an identity shortcut.
#[derive(Module, Debug)]
pub struct DilatedBlock {
    pub conv1: ConvBn,
    pub conv2: ConvBn,
    pub dilation: usize,
}

impl DilatedBlock {
    fn new(device: &Device, c: usize, d: usize) -> Self {
        DilatedBlock {
            conv1: dilated(device, c, c, d),
            conv2: dilated(device, c, c, d),
            dilation: d,
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.conv2.forward(relu(self.conv1.forward(x.clone())));
        relu(y + x)
    }

    fn export(&self, g: &mut Graph, x: &str) -> Result<String, ExportError> {
        let y = export_dilated(g, &self.conv1, x, self.dilation)?;
        let y = g.relu(&y);
        let y = export_dilated(g, &self.conv2, &y, self.dilation)?;
        let s = g.add(&y, x);
        Ok(g.relu(&s))
    }
}

fn head_conv(device: &Device, cin: usize, cout: usize, bias: f32) -> Conv2d {
    let mut c = Conv2dConfig::new([cin, cout], [1, 1])
        .with_bias(true)
        .init(device);
    c.bias = Some(Param::from_tensor(Tensor::full([cout], bias, device)));
    c
}

fn export_head(g: &mut Graph, c: &Conv2d, x: &str) -> Result<String, ExportError> {
    let w = param("head.weight", &c.weight)?;
    let b = match &c.bias {
        Some(b) => param("head.bias", b)?,
        None => Weights::new(vec![w.dims[0]], vec![0.0; w.dims[0]]),
    };
    Ok(g.conv(
        x,
        &w,
        &b,
        ConvSpec {
            stride: 1,
            pad: 0,
            groups: 1,
        },
    ))
}

/// The raw maps training works on, each `[N, k, S/4, S/4]`.
#[derive(Debug, Clone)]
pub struct RawMaps {
    /// Heat-map logit (k = 1).
    pub heat: Tensor<4>,
    /// Offset logits (k = 2; σ gives the in-cell position).
    pub offset: Tensor<4>,
    /// Natural log of the box width and height in input pixels (k = 2).
    pub log_size: Tensor<4>,
}

#[derive(Module, Debug)]
pub struct Localiser {
    pub stem: ConvBn,
    pub down: ConvBn,
    pub blocks: Vec<DilatedBlock>,
    pub head: ConvBn,
    pub heat: Conv2d,
    pub offset: Conv2d,
    pub size: Conv2d,
    pub input_size: usize,
}

impl Localiser {
    pub fn new(cfg: &LocaliserConfig, device: &Device) -> Self {
        assert!(
            cfg.input_size.is_multiple_of(STRIDE as usize),
            "input side must be a multiple of the stride"
        );
        Localiser {
            stem: ConvBn::new(device, 1, cfg.stem, 3, 2, 1),
            down: ConvBn::new(device, cfg.stem, cfg.width, 3, 2, 1),
            blocks: cfg
                .dilations
                .iter()
                .map(|&d| DilatedBlock::new(device, cfg.width, d))
                .collect(),
            head: ConvBn::new(device, cfg.width, cfg.head, 3, 1, 1),
            heat: head_conv(device, cfg.head, 1, HEAT_PRIOR_BIAS),
            offset: head_conv(device, cfg.head, 2, 0.0),
            size: head_conv(device, cfg.head, 2, LOG_SIZE_BIAS),
            input_size: cfg.input_size,
        }
    }

    /// Cells per side of the output grid.
    pub fn cells(&self) -> usize {
        self.input_size / STRIDE as usize
    }

    pub fn forward_raw(&self, x: Tensor<4>) -> RawMaps {
        let y = relu(self.stem.forward(x));
        let y = relu(self.down.forward(y));
        let y = self.blocks.iter().fold(y, |y, b| b.forward(y));
        let f = relu(self.head.forward(y));
        RawMaps {
            heat: self.heat.forward(f.clone()),
            offset: self.offset.forward(f.clone()),
            log_size: self.size.forward(f),
        }
    }

    /// What the exported graph outputs: `(heatmap, offset, size)` after σ, σ and exp.
    pub fn forward(&self, x: Tensor<4>) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let r = self.forward_raw(x);
        (sigmoid(r.heat), sigmoid(r.offset), r.log_size.exp())
    }
}

/// The eval-mode localiser (`model.valid()`) as an ONNX model: input `x [N,1,S,S]`,
/// outputs `heatmap [N,1,c,c]`, `offset [N,2,c,c]`, `size [N,2,c,c]` (c = S/4).
pub fn export(m: &Localiser) -> Result<Model, ExportError> {
    let mut g = Graph::new();
    let y = m.stem.export(&mut g, INPUT)?;
    let y = g.relu(&y);
    let y = m.down.export(&mut g, &y)?;
    let mut y = g.relu(&y);
    for b in &m.blocks {
        y = b.export(&mut g, &y)?;
    }
    let f = m.head.export(&mut g, &y)?;
    let f = g.relu(&f);
    let heat = export_head(&mut g, &m.heat, &f)?;
    let heat = g.sigmoid(&heat);
    let offset = export_head(&mut g, &m.offset, &f)?;
    let offset = g.sigmoid(&offset);
    let size = export_head(&mut g, &m.size, &f)?;
    let size = g.exp(&size);
    let s = m.input_size;
    let c = m.cells();
    Ok(g.finish(
        INPUT,
        [1, s, s],
        &[
            (&heat, HEATMAP, vec![None, Some(1), Some(c), Some(c)]),
            (&offset, OFFSET, vec![None, Some(2), Some(c), Some(c)]),
            (&size, SIZE, vec![None, Some(2), Some(c), Some(c)]),
        ],
        "DeepTIRP Edge lesion localiser (CenterNet-style, stride 4)",
    ))
}
