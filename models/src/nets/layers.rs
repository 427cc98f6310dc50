//! Building blocks shared by the members, each with its burn forward and its ONNX export
//! side by side, so the two cannot drift apart.

use crate::onnx::{ConvSpec, ExportError, Graph, Weights};
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d,
};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid, silu};

/// burn's LayerNorm keeps its epsilon private; every LayerNorm here is built with this one.
pub const LN_EPS: f64 = 1e-5;

/// Reads a parameter out of burn as row-major f32 values.
pub fn weights<const D: usize>(what: &str, t: Tensor<D>) -> Result<Weights, ExportError> {
    let dims = t.dims().to_vec();
    let data = t
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| ExportError::Weights {
            what: what.to_owned(),
            message: format!("{e:?}"),
        })?;
    Ok(Weights::new(dims, data))
}

pub fn param<const D: usize>(what: &str, p: &Param<Tensor<D>>) -> Result<Weights, ExportError> {
    weights(what, p.val())
}

/// Activation after a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Silu,
}

impl Act {
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Act::None => x,
            Act::Relu => relu(x),
            Act::Silu => silu(x),
        }
    }

    pub fn export(self, g: &mut Graph, x: &str) -> String {
        match self {
            Act::None => x.to_owned(),
            Act::Relu => g.relu(x),
            Act::Silu => g.silu(x),
        }
    }
}

/// Convolution (no bias) + BatchNorm; exported as one Conv with the BatchNorm folded in.
#[derive(Module, Debug)]
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm,
    pub stride: usize,
    pub groups: usize,
}

impl ConvBn {
    pub fn new(
        device: &Device,
        cin: usize,
        cout: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
    ) -> Self {
        let p = kernel / 2;
        let conv = Conv2dConfig::new([cin, cout], [kernel, kernel])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .with_groups(groups)
            .with_bias(false)
            .init(device);
        ConvBn {
            conv,
            bn: BatchNormConfig::new(cout).init(device),
            stride,
            groups,
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.bn.forward(self.conv.forward(x))
    }

    /// `W·γ/√(σ²+ε)` and `β − μ·γ/√(σ²+ε)`: the eval-mode BatchNorm is an affine map per
    /// output channel, so it folds exactly into the convolution.
    pub fn folded(&self) -> Result<(Weights, Weights), ExportError> {
        let mut w = param("conv.weight", &self.conv.weight)?;
        let gamma = param("bn.gamma", &self.bn.gamma)?.data;
        let beta = param("bn.beta", &self.bn.beta)?.data;
        let mean = weights("bn.running_mean", self.bn.running_mean.value())?.data;
        let var = weights("bn.running_var", self.bn.running_var.value())?.data;
        let eps = self.bn.epsilon as f32;
        let per_out = w.data.len() / gamma.len();
        let mut bias = Vec::with_capacity(gamma.len());
        for o in 0..gamma.len() {
            let s = gamma[o] / (var[o] + eps).sqrt();
            w.data[o * per_out..(o + 1) * per_out]
                .iter_mut()
                .for_each(|v| *v *= s);
            bias.push(beta[o] - mean[o] * s);
        }
        Ok((w, Weights::new(vec![gamma.len()], bias)))
    }

    pub fn export(&self, g: &mut Graph, x: &str) -> Result<String, ExportError> {
        let (w, b) = self.folded()?;
        let pad = w.dims[2] / 2;
        Ok(g.conv(
            x,
            &w,
            &b,
            ConvSpec {
                stride: self.stride,
                pad,
                groups: self.groups,
            },
        ))
    }
}

/// 1×1 convolution with bias (squeeze-excitation gates, patch embedding).
pub fn conv_with_bias(
    device: &Device,
    cin: usize,
    cout: usize,
    kernel: usize,
    stride: usize,
) -> Conv2d {
    Conv2dConfig::new([cin, cout], [kernel, kernel])
        .with_stride([stride, stride])
        .with_bias(true)
        .init(device)
}

pub fn export_conv(
    g: &mut Graph,
    conv: &Conv2d,
    x: &str,
    stride: usize,
) -> Result<String, ExportError> {
    let w = param("conv.weight", &conv.weight)?;
    let b = match &conv.bias {
        Some(b) => param("conv.bias", b)?,
        None => Weights::new(vec![w.dims[0]], vec![0.0; w.dims[0]]),
    };
    Ok(g.conv(
        x,
        &w,
        &b,
        ConvSpec {
            stride,
            pad: 0,
            groups: 1,
        },
    ))
}

pub fn linear(device: &Device, din: usize, dout: usize) -> Linear {
    LinearConfig::new(din, dout).init(device)
}

pub fn linear_weights(l: &Linear) -> Result<(Weights, Weights), ExportError> {
    let w = param("linear.weight", &l.weight)?;
    let b = match &l.bias {
        Some(b) => param("linear.bias", b)?,
        None => Weights::new(vec![w.dims[1]], vec![0.0; w.dims[1]]),
    };
    Ok((w, b))
}

pub fn export_linear(g: &mut Graph, l: &Linear, x: &str) -> Result<String, ExportError> {
    let (w, b) = linear_weights(l)?;
    Ok(g.linear(x, &w, &b))
}

pub fn layer_norm(device: &Device, d: usize) -> LayerNorm {
    LayerNormConfig::new(d).with_epsilon(LN_EPS).init(device)
}

pub fn export_layer_norm(g: &mut Graph, ln: &LayerNorm, x: &str) -> Result<String, ExportError> {
    let gamma = param("ln.gamma", &ln.gamma)?;
    let beta = match &ln.beta {
        Some(b) => param("ln.beta", b)?,
        None => Weights::new(gamma.dims.clone(), vec![0.0; gamma.data.len()]),
    };
    Ok(g.layer_norm(x, &gamma, &beta, LN_EPS as f32))
}

/// Squeeze-excitation: a per-channel gate from the globally pooled features.
#[derive(Module, Debug)]
pub struct SqueezeExcite {
    pub reduce: Conv2d,
    pub expand: Conv2d,
}

impl SqueezeExcite {
    pub fn new(device: &Device, channels: usize, squeezed: usize) -> Self {
        SqueezeExcite {
            reduce: conv_with_bias(device, channels, squeezed, 1, 1),
            expand: conv_with_bias(device, squeezed, channels, 1, 1),
        }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let s = x.clone().mean_dim(2).mean_dim(3);
        let s = sigmoid(self.expand.forward(silu(self.reduce.forward(s))));
        x * s
    }

    pub fn export(&self, g: &mut Graph, x: &str) -> Result<String, ExportError> {
        let s = g.global_average_pool(x);
        let s = export_conv(g, &self.reduce, &s, 1)?;
        let s = g.silu(&s);
        let s = export_conv(g, &self.expand, &s, 1)?;
        let s = g.sigmoid(&s);
        Ok(g.mul(x, &s))
    }
}

/// Global pooling + linear → one logit, and the class-activation map: each location's
/// contribution `(W·f(x,y) + b)/HW`, which sums over the map to exactly the logit.
#[derive(Module, Debug)]
pub struct CamHead {
    pub linear: Linear,
}

/// Names of a member graph's output tensors: `logit [N, 1]`, `cam [N, 1, h, w]` and the
/// last feature map `fmap [N, C, h, w]` that feeds the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphOutputs {
    pub logit: String,
    pub cam: String,
    pub fmap: String,
}

/// A member's outputs: `logit [N, 1]` and `cam [N, 1, h, w]`.
#[derive(Debug, Clone)]
pub struct MemberOutput {
    pub logit: Tensor<2>,
    pub cam: Tensor<4>,
}

impl CamHead {
    pub fn new(device: &Device, channels: usize) -> Self {
        CamHead {
            linear: linear(device, channels, 1),
        }
    }

    /// Channels of the feature map (or token width) the head reads.
    pub fn channels(&self) -> usize {
        self.linear.weight.dims()[0]
    }

    /// Logit only (training): `[N, C, H, W]` → `[N, 1]`.
    pub fn logit_of_map(&self, f: Tensor<4>) -> Tensor<2> {
        let [n, c, _, _] = f.dims();
        self.linear
            .forward(f.mean_dim(2).mean_dim(3).reshape([n, c]))
    }

    /// Logit and class-activation map of a CNN's last feature map `[N, C, H, W]`.
    pub fn output_of_map(&self, f: Tensor<4>) -> MemberOutput {
        MemberOutput {
            logit: self.logit_of_map(f.clone()),
            cam: self.cam_of_map(f),
        }
    }

    /// Per-location contributions of a feature map `[N, C, H, W]`.
    pub fn cam_of_map(&self, f: Tensor<4>) -> Tensor<4> {
        let [n, c, h, w] = f.dims();
        let tokens = f.reshape([n, c, h * w]).swap_dims(1, 2);
        self.cam_of_tokens(tokens).reshape([n, 1, h, w])
    }

    /// Per-token contributions `[N, T, D]` → `[N, 1, T]`.
    pub fn cam_of_tokens(&self, tokens: Tensor<3>) -> Tensor<3> {
        let t = tokens.dims()[1];
        self.linear
            .forward(tokens)
            .div_scalar(t as f32)
            .swap_dims(1, 2)
    }

    /// Exports the head on a CNN's last feature map `f` `[N, C, H, W]`; that map is also
    /// the graph's `fmap` output (Score-CAM masks with it).
    pub fn export_map(
        &self,
        g: &mut Graph,
        f: &str,
        hw: usize,
    ) -> Result<GraphOutputs, ExportError> {
        let (w, b) = linear_weights(&self.linear)?;
        let pooled = g.global_average_pool(f);
        let flat = g.flatten(&pooled);
        let logit = g.gemm(&flat, &w, &b);
        // The same linear map as a 1×1 convolution scaled by 1/HW.
        let c = w.dims[0];
        let scale = 1.0 / hw as f32;
        let cw = Weights::new(vec![1, c, 1, 1], w.data.iter().map(|v| v * scale).collect());
        let cb = Weights::new(vec![1], vec![b.data[0] * scale]);
        let cam = g.conv(
            f,
            &cw,
            &cb,
            ConvSpec {
                stride: 1,
                pad: 0,
                groups: 1,
            },
        );
        Ok(GraphOutputs {
            logit,
            cam,
            fmap: f.to_owned(),
        })
    }

    /// Tokens `[N, T, D]` on a `grid`×`grid` patch grid; `fmap` is the tokens laid out as a
    /// feature map `[N, D, grid, grid]`.
    pub fn export_tokens(
        &self,
        g: &mut Graph,
        tokens: &str,
        grid: usize,
    ) -> Result<GraphOutputs, ExportError> {
        let (w, b) = linear_weights(&self.linear)?;
        let pooled = g.reduce_mean(tokens, &[1], false);
        let logit = g.gemm(&pooled, &w, &b);
        let t = grid * grid;
        let scale = 1.0 / t as f32;
        let sw = Weights::new(w.dims.clone(), w.data.iter().map(|v| v * scale).collect());
        let sb = Weights::new(vec![1], vec![b.data[0] * scale]);
        let per_token = g.linear(tokens, &sw, &sb);
        let per_token = g.transpose(&per_token, &[0, 2, 1]);
        let cam = g.reshape(&per_token, &[-1, 1, grid as i64, grid as i64]);
        let d = w.dims[0] as i64;
        let channels_first = g.transpose(tokens, &[0, 2, 1]);
        let fmap = g.reshape(&channels_first, &[-1, d, grid as i64, grid as i64]);
        Ok(GraphOutputs { logit, cam, fmap })
    }
}
