//! A small vision transformer: patch-embedding convolution plus learned position
//! embeddings, pre-LayerNorm encoder layers (multi-head self-attention, GELU MLP), a final
//! LayerNorm and mean-pooled tokens. No class token: the head pools tokens, so each
//! token's contribution to the logit is the class-activation map.

use super::layers::{
    self, CamHead, GraphOutputs, MemberOutput, export_conv, export_layer_norm, export_linear,
};
use super::{Member, MemberKind};
use crate::onnx::{ExportError, Graph, Weights};
use burn::module::Param;
use burn::nn::conv::Conv2d;
use burn::nn::{Initializer, LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation::{gelu, softmax};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    pub input_size: usize,
    pub patch: usize,
    pub dim: usize,
    pub depth: usize,
    pub heads: usize,
    /// Hidden width of the MLP as a multiple of `dim`.
    pub mlp_ratio: usize,
}

impl Default for VitConfig {
    fn default() -> Self {
        VitConfig {
            input_size: 128,
            patch: 16,
            dim: 96,
            depth: 4,
            heads: 4,
            mlp_ratio: 2,
        }
    }
}

#[derive(Module, Debug)]
pub struct EncoderLayer {
    pub ln1: LayerNorm,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub proj: Linear,
    pub ln2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub heads: usize,
}

impl EncoderLayer {
    fn new(device: &Device, dim: usize, heads: usize, hidden: usize) -> Self {
        EncoderLayer {
            ln1: layers::layer_norm(device, dim),
            q: layers::linear(device, dim, dim),
            k: layers::linear(device, dim, dim),
            v: layers::linear(device, dim, dim),
            proj: layers::linear(device, dim, dim),
            ln2: layers::layer_norm(device, dim),
            fc1: layers::linear(device, dim, hidden),
            fc2: layers::linear(device, hidden, dim),
            heads,
        }
    }

    fn attention(&self, x: Tensor<3>) -> Tensor<3> {
        let [n, t, d] = x.dims();
        let (h, dh) = (self.heads, d / self.heads);
        let split = |y: Tensor<3>| y.reshape([n, t, h, dh]).swap_dims(1, 2);
        let q = split(self.q.forward(x.clone()));
        let k = split(self.k.forward(x.clone()));
        let v = split(self.v.forward(x));
        let scores = q
            .matmul(k.swap_dims(2, 3))
            .mul_scalar(1.0 / (dh as f32).sqrt());
        let y = softmax(scores, 3).matmul(v);
        self.proj.forward(y.swap_dims(1, 2).reshape([n, t, d]))
    }

    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let x = x.clone() + self.attention(self.ln1.forward(x));
        let m = self
            .fc2
            .forward(gelu(self.fc1.forward(self.ln2.forward(x.clone()))));
        x + m
    }

    fn export(&self, g: &mut Graph, x: &str, tokens: usize) -> Result<String, ExportError> {
        let d = self.q.weight.dims()[0];
        let (h, dh) = (self.heads as i64, (d / self.heads) as i64);
        let (t, d) = (tokens as i64, d as i64);
        let a = export_layer_norm(g, &self.ln1, x)?;
        let split = |g: &mut Graph, l: &Linear| -> Result<String, ExportError> {
            let y = export_linear(g, l, &a)?;
            let y = g.reshape(&y, &[-1, t, h, dh]);
            Ok(g.transpose(&y, &[0, 2, 1, 3]))
        };
        let q = split(g, &self.q)?;
        let k = split(g, &self.k)?;
        let v = split(g, &self.v)?;
        let kt = g.transpose(&k, &[0, 1, 3, 2]);
        let s = g.matmul(&q, &kt);
        let scale = g.scalar("scale", 1.0 / (dh as f32).sqrt());
        let s = g.mul(&s, &scale);
        let p = g.softmax(&s, -1);
        let y = g.matmul(&p, &v);
        let y = g.transpose(&y, &[0, 2, 1, 3]);
        let y = g.reshape(&y, &[-1, t, d]);
        let y = export_linear(g, &self.proj, &y)?;
        let x = g.add(x, &y);
        let m = export_layer_norm(g, &self.ln2, &x)?;
        let m = export_linear(g, &self.fc1, &m)?;
        let m = g.gelu(&m);
        let m = export_linear(g, &self.fc2, &m)?;
        Ok(g.add(&x, &m))
    }
}

#[derive(Module, Debug)]
pub struct Vit {
    pub patch_embed: Conv2d,
    pub pos: Param<Tensor<3>>,
    pub layers: Vec<EncoderLayer>,
    pub norm: LayerNorm,
    pub head: CamHead,
    pub input_size: usize,
    pub patch: usize,
}

impl Vit {
    pub fn new(cfg: &VitConfig, device: &Device) -> Self {
        assert!(
            cfg.input_size.is_multiple_of(cfg.patch) && cfg.dim.is_multiple_of(cfg.heads),
            "input must tile into patches and dim split into heads: {cfg:?}"
        );
        let grid = cfg.input_size / cfg.patch;
        Vit {
            patch_embed: layers::conv_with_bias(device, 1, cfg.dim, cfg.patch, cfg.patch),
            pos: Initializer::Normal {
                mean: 0.0,
                std: 0.02,
            }
            .init([1, grid * grid, cfg.dim], device),
            layers: (0..cfg.depth)
                .map(|_| EncoderLayer::new(device, cfg.dim, cfg.heads, cfg.dim * cfg.mlp_ratio))
                .collect(),
            norm: layers::layer_norm(device, cfg.dim),
            head: CamHead::new(device, cfg.dim),
            input_size: cfg.input_size,
            patch: cfg.patch,
        }
    }

    fn grid(&self) -> usize {
        self.input_size / self.patch
    }

    fn tokens(&self, x: Tensor<4>) -> Tensor<3> {
        let e = self.patch_embed.forward(x);
        let [n, d, gh, gw] = e.dims();
        let t = e.reshape([n, d, gh * gw]).swap_dims(1, 2) + self.pos.val();
        let t = self.layers.iter().fold(t, |t, l| l.forward(t));
        self.norm.forward(t)
    }
}

impl Member for Vit {
    const KIND: MemberKind = MemberKind::Vit;

    fn input_size(&self) -> usize {
        self.input_size
    }

    fn cam_side(&self) -> usize {
        self.grid()
    }

    fn fmap_channels(&self) -> usize {
        self.head.channels()
    }

    fn forward_logit(&self, x: Tensor<4>) -> Tensor<2> {
        let t = self.tokens(x);
        let [n, _, d] = t.dims();
        self.head.linear.forward(t.mean_dim(1).reshape([n, d]))
    }

    fn forward(&self, x: Tensor<4>) -> MemberOutput {
        let t = self.tokens(x);
        let [n, _, d] = t.dims();
        let grid = self.grid();
        MemberOutput {
            logit: self
                .head
                .linear
                .forward(t.clone().mean_dim(1).reshape([n, d])),
            cam: self.head.cam_of_tokens(t).reshape([n, 1, grid, grid]),
        }
    }

    fn export_graph(&self, g: &mut Graph, x: &str) -> Result<GraphOutputs, ExportError> {
        let grid = self.grid() as i64;
        let tokens = (grid * grid) as usize;
        let d = self.pos.dims()[2] as i64;
        let e = export_conv(g, &self.patch_embed, x, self.patch)?;
        let e = g.reshape(&e, &[-1, d, grid * grid]);
        let e = g.transpose(&e, &[0, 2, 1]);
        let pos: Weights = layers::param("pos", &self.pos)?;
        let pos = g.constant("pos", &pos);
        let mut t = g.add(&e, &pos);
        for l in &self.layers {
            t = l.export(g, &t, tokens)?;
        }
        let t = export_layer_norm(g, &self.norm, &t)?;
        self.head.export_tokens(g, &t, grid as usize)
    }
}
