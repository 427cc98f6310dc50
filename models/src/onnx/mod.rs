//! A small ONNX graph writer on the protobuf types that tract itself parses
//! (`tract_onnx::pb`), so what we write is exactly what the engine reads.
//!
//! Opset 13, IR version 8, f32 initializers as raw little-endian bytes, one image input
//! `x: [N, 1, S, S]` with a symbolic batch dimension. Opset 13 has no LayerNormalization or
//! Gelu, so [`Graph::layer_norm`] and [`Graph::gelu`] are composed from primitive ops: any
//! opset-13 runtime (tract, onnxruntime) can then run the members.
//!
//! Tabular models (the clinical model, the stacker) use [`Graph::finish_rows`] for a
//! `[N, k]` input; forests use the ONNX-ML `TreeEnsembleClassifier`
//! ([`Graph::tree_ensemble_classifier`]), which adds the `ai.onnx.ml` opset import.

pub mod check;
pub mod quant;

use prost::Message;
use std::path::Path;
use tract_onnx::pb;

pub const OPSET: i64 = 13;
/// `ai.onnx.ml` opset released with ONNX 1.8, alongside opset 13.
pub const ML_OPSET: i64 = 2;
const ML_DOMAIN: &str = "ai.onnx.ml";
const IR_VERSION: i64 = 8;
/// Name of the symbolic batch dimension.
pub const BATCH: &str = "N";
/// `doc_string` of initializers that are part of a graph's arithmetic, not trained weights
/// (the layer norm's centring matrix): [`quant`] leaves them, and the ops reading them, in f32.
pub const EXACT_CONSTANT: &str = "exact: structural constant, kept in f32";

/// Names of a graph's [`EXACT_CONSTANT`] initializers.
pub fn exact_constants(graph: &pb::GraphProto) -> std::collections::HashSet<String> {
    graph
        .initializer
        .iter()
        .filter(|i| i.doc_string == EXACT_CONSTANT)
        .map(|i| i.name.clone())
        .collect()
}

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
    Floats(Vec<f32>),
    Str(String),
    Strs(Vec<String>),
}

/// Split rule of a [`TreeEnsembleClassifier`] node: the true branch is taken when
/// `x[feature] < value` (`BRANCH_LT`) or `<=` (`BRANCH_LEQ`); leaves have no rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeMode {
    BranchLt,
    BranchLeq,
    Leaf,
}

impl NodeMode {
    fn as_str(self) -> &'static str {
        match self {
            NodeMode::BranchLt => "BRANCH_LT",
            NodeMode::BranchLeq => "BRANCH_LEQ",
            NodeMode::Leaf => "LEAF",
        }
    }
}

/// The attributes of an ONNX-ML `TreeEnsembleClassifier`, one entry per node (`nodes_*`)
/// and one per leaf weight (`class_*`), exactly as the operator spells them. Node ids
/// count from 0 within each tree; tree ids count from 0 and never decrease.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TreeEnsembleClassifier {
    pub classlabels_int64s: Vec<i64>,
    pub nodes_treeids: Vec<i64>,
    pub nodes_nodeids: Vec<i64>,
    pub nodes_featureids: Vec<i64>,
    pub nodes_modes: Vec<NodeMode>,
    pub nodes_values: Vec<f32>,
    pub nodes_truenodeids: Vec<i64>,
    pub nodes_falsenodeids: Vec<i64>,
    pub class_treeids: Vec<i64>,
    pub class_nodeids: Vec<i64>,
    pub class_ids: Vec<i64>,
    pub class_weights: Vec<f32>,
}

/// A graph under construction. Every op returns the name of its single output, so graphs
/// read like the forward pass they mirror.
#[derive(Default)]
pub struct Graph {
    nodes: Vec<pb::NodeProto>,
    initializers: Vec<pb::TensorProto>,
    next: usize,
    /// Whether an `ai.onnx.ml` op was used, so [`Graph::finish`] imports that domain.
    uses_ml: bool,
    /// The layer norms' centring matrices by width: one initializer each, shared.
    centring: std::collections::HashMap<usize, String>,
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

    /// A constant of the graph's structure rather than a trained weight, marked
    /// ([`EXACT_CONSTANT`]) so that quantisation keeps it in f32.
    pub fn exact_constant(&mut self, hint: &str, w: &Weights) -> String {
        let name = self.constant(hint, w);
        let init = self.initializers.last_mut().expect("just pushed");
        init.doc_string = EXACT_CONSTANT.to_owned();
        name
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
        self.push_node("", op, inputs, vec![out.clone()], attrs);
        out
    }

    fn push_node(
        &mut self,
        domain: &str,
        op: &str,
        inputs: &[&str],
        output: Vec<String>,
        attrs: Vec<(&str, Attr)>,
    ) {
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
                    Attr::Floats(v) => {
                        p.floats = v;
                        p.r#type = T::Floats as i32;
                    }
                    Attr::Str(v) => {
                        p.s = v.into_bytes();
                        p.r#type = T::String as i32;
                    }
                    Attr::Strs(v) => {
                        p.strings = v.into_iter().map(String::into_bytes).collect();
                        p.r#type = T::Strings as i32;
                    }
                }
                p
            })
            .collect();
        self.nodes.push(pb::NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            name: output[0].clone(),
            output,
            op_type: op.to_owned(),
            domain: domain.to_owned(),
            attribute,
            ..Default::default()
        });
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

    /// [`Graph::conv`] with dilation `dilation` (both axes); pad `c.pad` each side.
    pub fn conv_dilated(
        &mut self,
        x: &str,
        w: &Weights,
        b: &Weights,
        c: ConvSpec,
        dilation: usize,
    ) -> String {
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
                (
                    "dilations",
                    Attr::Ints(vec![dilation as i64, dilation as i64]),
                ),
                ("group", Attr::Int(groups as i64)),
            ],
        )
    }

    /// Element-wise `e^x`.
    pub fn exp(&mut self, x: &str) -> String {
        self.node("Exp", &[x], vec![])
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

    /// `x[:, start..end]` of a 2-D input.
    pub fn slice_columns(&mut self, x: &str, start: i64, end: i64) -> String {
        let starts = self.int64s("starts", &[start]);
        let ends = self.int64s("ends", &[end]);
        let axes = self.int64s("axes", &[1]);
        self.node("Slice", &[x, &starts, &ends, &axes], vec![])
    }

    /// ONNX-ML `TreeEnsembleClassifier` (no post-transform) on a `[N, k]` input; returns
    /// its `probabilities [N, classes]` output (the `label [N]` output is left unused).
    pub fn tree_ensemble_classifier(&mut self, x: &str, e: &TreeEnsembleClassifier) -> String {
        self.uses_ml = true;
        let label = self.fresh("label");
        let probabilities = self.fresh("probabilities");
        let ints = |v: &[i64]| Attr::Ints(v.to_vec());
        let attrs = vec![
            ("classlabels_int64s", ints(&e.classlabels_int64s)),
            ("nodes_treeids", ints(&e.nodes_treeids)),
            ("nodes_nodeids", ints(&e.nodes_nodeids)),
            ("nodes_featureids", ints(&e.nodes_featureids)),
            (
                "nodes_modes",
                Attr::Strs(
                    e.nodes_modes
                        .iter()
                        .map(|m| m.as_str().to_owned())
                        .collect(),
                ),
            ),
            ("nodes_values", Attr::Floats(e.nodes_values.clone())),
            ("nodes_truenodeids", ints(&e.nodes_truenodeids)),
            ("nodes_falsenodeids", ints(&e.nodes_falsenodeids)),
            ("class_treeids", ints(&e.class_treeids)),
            ("class_nodeids", ints(&e.class_nodeids)),
            ("class_ids", ints(&e.class_ids)),
            ("class_weights", Attr::Floats(e.class_weights.clone())),
            ("post_transform", Attr::Str("NONE".into())),
        ];
        self.push_node(
            ML_DOMAIN,
            "TreeEnsembleClassifier",
            &[x],
            vec![label, probabilities.clone()],
            attrs,
        );
        probabilities
    }

    /// Layer normalisation over the last axis (of size `gamma.len()`) with biased variance
    /// (burn's definition). The mean is removed by a matrix product with the centring matrix
    /// `I - 11ᵀ/d` (one per width, shared by the graph's layer norms) rather than ReduceMean +
    /// Sub: tract 0.23.9 then runs a matrix product and its fused RmsNorm. (ReduceMean, the
    /// broadcast Sub and a slower RmsNorm after them had taken a third of the ViT's time; the
    /// re-shipped ViT's layer norms now cost `RmsNorm` 0.04 ms + the affine 0.21 ms of 1.50 ms,
    /// firmware/ENGINE.md.)
    pub fn layer_norm(&mut self, x: &str, gamma: &Weights, beta: &Weights, eps: f32) -> String {
        let n = gamma.data.len();
        let centre = match self.centring.get(&n) {
            Some(name) => name.clone(),
            None => {
                let c = (0..n * n).map(|i| f32::from(i / n == i % n) - 1.0 / n as f32);
                let w = Weights::new(vec![n, n], c.collect());
                let name = self.exact_constant("centre", &w);
                self.centring.insert(n, name.clone());
                name
            }
        };
        let d = self.matmul(x, &centre);
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
        self,
        input: &str,
        input_shape: [usize; 3],
        outputs: &[(&str, &str, OutputShape)],
        doc: &str,
    ) -> Model {
        let [c, h, w] = input_shape;
        self.finish_graph(
            "member",
            input,
            vec![None, Some(c), Some(h), Some(w)],
            outputs,
            doc,
        )
    }

    /// Finishes a tabular model: input `[N, columns]` and the named outputs.
    pub fn finish_rows(
        self,
        name: &str,
        input: &str,
        columns: usize,
        outputs: &[(&str, &str, OutputShape)],
        doc: &str,
    ) -> Model {
        self.finish_graph(name, input, vec![None, Some(columns)], outputs, doc)
    }

    fn finish_graph(
        mut self,
        graph_name: &str,
        input: &str,
        input_shape: OutputShape,
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
        let mut opset_import = vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }];
        if self.uses_ml {
            opset_import.push(pb::OperatorSetIdProto {
                domain: ML_DOMAIN.into(),
                version: ML_OPSET,
            });
        }
        let proto = pb::ModelProto {
            ir_version: IR_VERSION,
            opset_import,
            producer_name: "tirp-models".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.to_owned(),
            graph: Some(pb::GraphProto {
                node: self.nodes,
                name: graph_name.into(),
                initializer: self.initializers,
                input: vec![value_info(input, input_shape)],
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::check::TractRows;

    /// One stump `x[1] (<|<=) 0.5`: true → P = (0.7, 0.3), false → (0.2, 0.8).
    fn stump(mode: NodeMode) -> Model {
        let e = TreeEnsembleClassifier {
            classlabels_int64s: vec![0, 1],
            nodes_treeids: vec![0, 0, 0],
            nodes_nodeids: vec![0, 1, 2],
            nodes_featureids: vec![1, 0, 0],
            nodes_modes: vec![mode, NodeMode::Leaf, NodeMode::Leaf],
            nodes_values: vec![0.5, 0.0, 0.0],
            nodes_truenodeids: vec![1, 0, 0],
            nodes_falsenodeids: vec![2, 0, 0],
            class_treeids: vec![0; 4],
            class_nodeids: vec![1, 1, 2, 2],
            class_ids: vec![0, 1, 0, 1],
            class_weights: vec![0.7, 0.3, 0.2, 0.8],
        };
        let mut g = Graph::new();
        let p = g.tree_ensemble_classifier("features", &e);
        let p1 = g.slice_columns(&p, 1, 2);
        g.finish_rows("t", "features", 2, &[(&p1, "p", vec![None, Some(1)])], "")
    }

    /// A dilated 3×3 convolution (one input and output channel, all-ones kernel, bias ½)
    /// followed by Exp: each output is `exp(½ + Σ x at offsets {−d, 0, d}²)`.
    #[test]
    fn dilated_conv_and_exp_run_in_tract() {
        let (s, d) = (7usize, 2usize);
        let mut g = Graph::new();
        let w = Weights::new(vec![1, 1, 3, 3], vec![1.0; 9]);
        let b = Weights::new(vec![1], vec![0.5]);
        let spec = ConvSpec {
            stride: 1,
            pad: d,
            groups: 1,
        };
        let y = g.conv_dilated("x", &w, &b, spec, d);
        let y = g.exp(&y);
        let m = g.finish(
            "x",
            [1, s, s],
            &[(&y, "y", vec![None, Some(1), Some(s), Some(s)])],
            "",
        );
        let x: Vec<f32> = (0..s * s).map(|i| (i % 5) as f32 * 0.1).collect();
        let got = crate::onnx::check::TractMember::load(&m.to_bytes(), s)
            .unwrap()
            .run_all(&x, 1)
            .unwrap()
            .remove(0);
        assert_eq!(got.len(), s * s);
        for r in 0..s as i64 {
            for c in 0..s as i64 {
                let mut acc = 0.5f32;
                for dy in [-1i64, 0, 1] {
                    for dx in [-1i64, 0, 1] {
                        let (rr, cc) = (r + dy * d as i64, c + dx * d as i64);
                        if (0..s as i64).contains(&rr) && (0..s as i64).contains(&cc) {
                            acc += x[(rr * s as i64 + cc) as usize];
                        }
                    }
                }
                let v = got[(r * s as i64 + c) as usize];
                assert!(
                    (v - acc.exp()).abs() < 1e-4 * acc.exp(),
                    "({r},{c}): {v} vs {}",
                    acc.exp()
                );
            }
        }
    }

    #[test]
    fn tree_ensemble_runs_in_tract_with_the_ml_domain() {
        let rows = [9.0, 0.1, 9.0, 0.5, 9.0, 0.9];
        let lt = stump(NodeMode::BranchLt);
        let domains: Vec<&str> = lt
            .proto
            .opset_import
            .iter()
            .map(|o| o.domain.as_str())
            .collect();
        assert_eq!(domains, ["", ML_DOMAIN]);
        let run = |m: &Model| {
            TractRows::load(&m.to_bytes(), 2)
                .unwrap()
                .run(&rows, 3)
                .unwrap()
        };
        assert_eq!(run(&lt), [0.3, 0.8, 0.8]);
        assert_eq!(run(&stump(NodeMode::BranchLeq)), [0.3, 0.3, 0.8]);

        // A graph without ONNX-ML ops imports only the default domain.
        let mut g = Graph::new();
        let s = g.sigmoid("features");
        let m = g.finish_rows("t", "features", 2, &[(&s, "p", vec![None, Some(2)])], "");
        assert_eq!(m.proto.opset_import.len(), 1);
    }
}
