//! A small ONNX graph writer on the protobuf types that tract itself parses
//! (`tract_onnx::pb`), so what we write is exactly what the engine reads.
//!
//! Opset 13, IR version 8, f32 initializers as raw little-endian bytes, one image input
//! `x: [N, 1, S, S]` with a symbolic batch dimension. Opset 13 has no LayerNormalization or
//! Gelu, so [`Graph::layer_norm`] and [`Graph::gelu`] are composed from primitive ops: any
//! opset-13 runtime (tract, onnxruntime) can then run the members.

pub mod check;
pub mod quant;

use prost::Message;
use std::path::Path;
use tract_onnx::pb;

pub const OPSET: i64 = 13;
const IR_VERSION: i64 = 8;
/// Name of the symbolic batch dimension.
pub const BATCH: &str = "N";

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("reading weights of `{what}`: {message}")]
    Weights { what: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// An f32 tensor in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct Weights {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

impl Weights {
    pub fn new(dims: Vec<usize>, data: Vec<f32>) -> Self {
        assert_eq!(
            dims.iter().product::<usize>(),
            data.len(),
            "weights {dims:?} need as many values"
        );
        Weights { dims, data }
    }
}

/// Stride, padding (each side) and groups of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub stride: usize,
    pub pad: usize,
    pub groups: usize,
}

enum Attr {
    Int(i64),
    Ints(Vec<i64>),
}

/// A graph under construction. Every op returns the name of its single output, so graphs
/// read like the forward pass they mirror.
#[derive(Default)]
pub struct Graph {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    next: usize,
}

/// Declared shape of a graph output: `None` stands for the batch dimension.
pub type OutputShape = Vec<Option<usize>>;

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    pub fn constant(&mut self, hint: &str, w: &Weights) -> String {
        let name = self.fresh(hint);
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: w.dims.iter().map(|&d| d as i64).collect(),
            data_type: pb::tensor_proto::DataType::Float as i32,
            raw_data: w.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    pub fn scalar(&mut self, hint: &str, v: f32) -> String {
        self.constant(hint, &Weights::new(vec![], vec![v]))
    }

    fn int64s(&mut self, hint: &str, v: &[i64]) -> String {
        let name = self.fresh(hint);
        self.initializers.push(pb::TensorProto {
            name: name.clone(),
            dims: vec![v.len() as i64],
            data_type: pb::tensor_proto::DataType::Int64 as i32,
            raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ..Default::default()
        });
        name
    }

    fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let out = self.fresh(&op.to_ascii_lowercase());
        let attribute = attrs
            .into_iter()
            .map(|(name, a)| {
                use pb::attribute_proto::AttributeType as T;
                let mut p = pb::AttributeProto {
                    name: name.to_owned(),
                    ..Default::default()
                };
                match a {
                    Attr::Int(i) => {
                        p.i = i;
                        p.r#type = T::Int as i32;
                    }
                    Attr::Ints(v) => {
                        p.ints = v;
                        p.r#type = T::Ints as i32;
                    }
                }
                p
            })
            .collect();
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![out.clone()],
            name: out.clone(),
            op_type: op.to_owned(),
            attribute,
            ..Default::default()
        });
        out
    }

    /// 2-D convolution, square kernel, symmetric padding `pad`.
    pub fn conv(&mut self, x: &str, w: &Weights, b: &Weights, c: ConvSpec) -> String {
        let k = w.dims[2];
        let (stride, p, groups) = (c.stride, c.pad as i64, c.groups);
        let w = self.constant("w", w);
        let b = self.constant("b", b);
        self.node(
            "Conv",
            &[x, &w, &b],
            vec![
                ("kernel_shape", Attr::Ints(vec![k as i64, k as i64])),
                ("strides", Attr::Ints(vec![stride as i64, stride as i64])),
                ("pads", Attr::Ints(vec![p, p, p, p])),
                ("group", Attr::Int(groups as i64)),
            ],
        )
    }

    pub fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], vec![])
    }

    pub fn sigmoid(&mut self, x: &str) -> String {
        self.node("Sigmoid", &[x], vec![])
    }

    /// SiLU (swish) `x·σ(x)`: opset 13 has no fused op for it.
    pub fn silu(&mut self, x: &str) -> String {
        let s = self.sigmoid(x);
        self.mul(x, &s)
    }

    /// Exact (erf) GELU, `x·½·(1 + erf(x/√2))`, as burn computes it.
    pub fn gelu(&mut self, x: &str) -> String {
        let inv_sqrt2 = self.scalar("c", std::f32::consts::FRAC_1_SQRT_2);
        let half = self.scalar("c", 0.5);
        let one = self.scalar("c", 1.0);
        let s = self.mul(x, &inv_sqrt2);
        let e = self.node("Erf", &[&s], vec![]);
        let e1 = self.add(&e, &one);
        let h = self.mul(x, &half);
        self.mul(&h, &e1)
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.node("Add", &[a, b], vec![])
    }

    pub fn sub(&mut self, a: &str, b: &str) -> String {
        self.node("Sub", &[a, b], vec![])
    }

    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.node("Mul", &[a, b], vec![])
    }

    pub fn div(&mut self, a: &str, b: &str) -> String {
        self.node("Div", &[a, b], vec![])
    }

    pub fn matmul(&mut self, a: &str, b: &str) -> String {
        self.node("MatMul", &[a, b], vec![])
    }

    pub fn global_average_pool(&mut self, x: &str) -> String {
        self.node("GlobalAveragePool", &[x], vec![])
    }

    pub fn reduce_mean(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        self.node(
            "ReduceMean",
            &[x],
            vec![
                ("axes", Attr::Ints(axes.to_vec())),
                ("keepdims", Attr::Int(keepdims as i64)),
            ],
        )
    }

    pub fn softmax(&mut self, x: &str, axis: i64) -> String {
        self.node("Softmax", &[x], vec![("axis", Attr::Int(axis))])
    }

    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.node("Transpose", &[x], vec![("perm", Attr::Ints(perm.to_vec()))])
    }

    /// Reshape to `shape`; `-1` (once) stands for the batch dimension.
    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.int64s("shape", shape);
        self.node("Reshape", &[x, &s], vec![])
    }

    pub fn flatten(&mut self, x: &str) -> String {
        self.node("Flatten", &[x], vec![("axis", Attr::Int(1))])
    }

    /// `x·W + b` with `w` stored as `[in, out]` (burn's `Linear` layout) on a 2-D input.
    pub fn gemm(&mut self, x: &str, w: &Weights, b: &Weights) -> String {
        let w = self.constant("w", w);
        let b = self.constant("b", b);
        self.node("Gemm", &[x, &w, &b], vec![])
    }

    /// `x·W + b` on an input of any rank, `w` as `[in, out]`.
    pub fn linear(&mut self, x: &str, w: &Weights, b: &Weights) -> String {
        let w = self.constant("w", w);
        let b = self.constant("b", b);
        let y = self.matmul(x, &w);
        self.add(&y, &b)
    }

    /// Layer normalisation over the last axis with biased variance (burn's definition).
    pub fn layer_norm(&mut self, x: &str, gamma: &Weights, beta: &Weights, eps: f32) -> String {
        let mean = self.reduce_mean(x, &[-1], true);
        let d = self.sub(x, &mean);
        let sq = self.mul(&d, &d);
        let var = self.reduce_mean(&sq, &[-1], true);
        let eps = self.scalar("eps", eps);
        let ve = self.add(&var, &eps);
        let sd = self.node("Sqrt", &[&ve], vec![]);
        let n = self.div(&d, &sd);
        let g = self.constant("gamma", gamma);
        let b = self.constant("beta", beta);
        let y = self.mul(&n, &g);
        self.add(&y, &b)
    }

    /// Finishes the model: input `x: [N, channels, size, size]` and the named outputs.
    pub fn finish(
        mut self,
        input: &str,
        input_shape: [usize; 3],
        outputs: &[(&str, &str, OutputShape)],
        doc: &str,
    ) -> Model {
        let float = pb::tensor_proto::DataType::Float as i32;
        let value_info = |name: &str, dims: Vec<Option<usize>>| {
            use pb::tensor_shape_proto::{Dimension, dimension::Value};
            pb::ValueInfoProto {
                name: name.to_owned(),
                r#type: Some(pb::TypeProto {
                    value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                        elem_type: float,
                        shape: Some(pb::TensorShapeProto {
                            dim: dims
                                .into_iter()
                                .map(|d| Dimension {
                                    value: Some(match d {
                                        Some(v) => Value::DimValue(v as i64),
                                        None => Value::DimParam(BATCH.to_owned()),
                                    }),
                                    ..Default::default()
                                })
                                .collect(),
                        }),
                    })),
                    ..Default::default()
                }),
                ..Default::default()
            }
        };
        let mut graph_outputs = Vec::new();
        for (tensor, name, shape) in outputs {
            // Identity gives outputs stable names whatever node produced them.
            self.nodes.push(pb::NodeProto {
                input: vec![(*tensor).to_owned()],
                output: vec![(*name).to_owned()],
                name: format!("out_{name}"),
                op_type: "Identity".into(),
                ..Default::default()
            });
            graph_outputs.push(value_info(name, shape.clone()));
        }
        let [c, h, w] = input_shape;
        let proto = pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: OPSET,
            }],
            producer_name: "tirp-models".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.to_owned(),
            graph: Some(pb::GraphProto {
                node: self.nodes,
                name: "member".into(),
                initializer: self.initializers,
                input: vec![value_info(input, vec![None, Some(c), Some(h), Some(w)])],
                output: graph_outputs,
                ..Default::default()
            }),
            ..Default::default()
        };
        Model { proto }
    }
}

/// An encoded-ready ONNX model.
#[derive(Debug, Clone)]
pub struct Model {
    pub proto: pb::ModelProto,
}

impl Model {
    pub fn to_bytes(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }

    /// Writes via a temporary file and rename: a bundle never holds half a model.
    pub fn save(&self, path: &Path) -> Result<(), ExportError> {
        let io = |source| ExportError::Io {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension("onnx.tmp");
        std::fs::write(&tmp, self.to_bytes()).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}
