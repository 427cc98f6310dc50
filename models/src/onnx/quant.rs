//! Weight-only int8: each large Conv/MatMul/Gemm weight is stored as int8 with one
//! symmetric scale per output channel, and a DequantizeLinear restores f32 weights. The
//! runtime folds that back into constants at load, so the file is ~4× smaller while
//! inference stays f32 (full int8 was measured slower than f32 with tract on x86).
//!
//! Full int8 (QDQ, as onnxruntime's `quantize_static` writes it): the same int8 weights, and
//! every activation entering a Conv/MatMul/Gemm passes through QuantizeLinear →
//! DequantizeLinear (per-tensor uint8) with a range calibrated on training images
//! ([`activation_inputs`], [`with_outputs`] to observe them, [`full_int8`]). A runtime with
//! int8 kernels fuses each DQ → op → Q into integer arithmetic; tract 0.23 runs it as f32 plus
//! the extra passes.

use super::Model;
use std::collections::HashMap;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;

/// Weights with fewer values than this stay f32: their scales would cost more than they save.
pub const MIN_ELEMENTS: usize = 256;

/// Per-channel quantisation of one weight tensor along `axis`.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedWeight {
    pub values: Vec<i8>,
    pub scales: Vec<f32>,
}

/// Symmetric int8 along `axis` of a row-major tensor with `dims`: `w ≈ q·scale[c]`.
pub fn quantize_per_channel(data: &[f32], dims: &[usize], axis: usize) -> QuantizedWeight {
    let channels = dims[axis];
    let inner: usize = dims[axis + 1..].iter().product();
    let channel = |i: usize| (i / inner) % channels;
    let mut max_abs = vec![0f32; channels];
    for (i, v) in data.iter().enumerate() {
        let c = channel(i);
        max_abs[c] = max_abs[c].max(v.abs());
    }
    // An all-zero channel keeps scale 1 so dequantisation never divides by zero.
    let scales: Vec<f32> = max_abs
        .iter()
        .map(|&m| if m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let values = data
        .iter()
        .enumerate()
        .map(|(i, v)| (v / scales[channel(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    QuantizedWeight { values, scales }
}

/// The weight-only int8 version of an f32 model written by [`super::Graph`].
pub fn weight_only_int8(model: &Model) -> Model {
    let mut proto = model.proto.clone();
    let graph = proto
        .graph
        .as_mut()
        .expect("models written by Graph have a graph");
    // Which initializers are weights, and which axis holds their output channels.
    let exact = super::exact_constants(graph);
    let mut axis_of: HashMap<String, usize> = HashMap::new();
    for n in graph.node.iter().filter(|n| !reads_exact(n, &exact)) {
        let axis = match n.op_type.as_str() {
            "Conv" => 0,
            // Our MatMul/Gemm weights are `[in, out]`.
            "MatMul" | "Gemm" => 1,
            _ => continue,
        };
        if let Some(w) = n.input.get(1) {
            axis_of.insert(w.clone(), axis);
        }
    }
    let mut dq_nodes = Vec::new();
    let mut extra = Vec::new();
    for init in &mut graph.initializer {
        let Some(&axis) = axis_of.get(&init.name) else {
            continue;
        };
        let dims: Vec<usize> = init.dims.iter().map(|&d| d as usize).collect();
        let n: usize = dims.iter().product();
        if init.data_type != DataType::Float as i32 || dims.len() < 2 || n < MIN_ELEMENTS {
            continue;
        }
        let data: Vec<f32> = init
            .raw_data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let q = quantize_per_channel(&data, &dims, axis);
        let name = std::mem::take(&mut init.name);
        let (qn, sn, zn) = (
            format!("{name}_q"),
            format!("{name}_scale"),
            format!("{name}_zp"),
        );
        init.name = qn.clone();
        init.data_type = DataType::Int8 as i32;
        init.raw_data = q.values.iter().map(|&v| v as u8).collect();
        let c = q.scales.len() as i64;
        extra.push(pb::TensorProto {
            name: sn.clone(),
            dims: vec![c],
            data_type: DataType::Float as i32,
            raw_data: q.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            ..Default::default()
        });
        extra.push(pb::TensorProto {
            name: zn.clone(),
            dims: vec![c],
            data_type: DataType::Int8 as i32,
            raw_data: vec![0; c as usize],
            ..Default::default()
        });
        dq_nodes.push(pb::NodeProto {
            input: vec![qn, sn, zn],
            output: vec![name.clone()],
            name: format!("dq_{name}"),
            op_type: "DequantizeLinear".into(),
            attribute: vec![pb::AttributeProto {
                name: "axis".into(),
                i: axis as i64,
                r#type: pb::attribute_proto::AttributeType::Int as i32,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    graph.initializer.extend(extra);
    dq_nodes.append(&mut graph.node);
    graph.node = dq_nodes;
    proto.doc_string.push_str(" (weight-only int8)");
    Model { proto }
}

/// Whether node `n` reads one of the graph's exact constants (`exact`): such an op is part
/// of a composed operator (the layer norm's centring), not a layer to quantise.
fn reads_exact(n: &pb::NodeProto, exact: &std::collections::HashSet<String>) -> bool {
    n.input.iter().any(|i| exact.contains(i))
}

/// The tensors a full-int8 model quantises: every input of a Conv/MatMul/Gemm that is not
/// an initializer (the activations; weights are quantised per channel instead), in graph
/// order, each once. Ops reading an exact constant stay f32.
pub fn activation_inputs(model: &Model) -> Vec<String> {
    let graph = model.proto.graph.as_ref().expect("models have a graph");
    let weights: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|i| i.name.as_str()).collect();
    let exact = super::exact_constants(graph);
    let mut out: Vec<String> = Vec::new();
    for n in &graph.node {
        if !matches!(n.op_type.as_str(), "Conv" | "MatMul" | "Gemm") || reads_exact(n, &exact) {
            continue;
        }
        // Conv/Gemm bias (input 2) stays f32, as in QDQ models.
        for name in n.input.iter().take(2) {
            if !weights.contains(name.as_str()) && !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    out
}

/// `model` with `names` as extra float outputs after its own (shapes left to the runtime),
/// to observe intermediate activations during calibration.
pub fn with_outputs(model: &Model, names: &[String]) -> Model {
    let mut proto = model.proto.clone();
    let graph = proto.graph.as_mut().expect("models have a graph");
    for name in names {
        graph.output.push(pb::ValueInfoProto {
            name: name.clone(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: DataType::Float as i32,
                    shape: None,
                })),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    Model { proto }
}

/// The observed value range of one activation over the calibration images.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActRange {
    pub lo: f32,
    pub hi: f32,
}

impl ActRange {
    pub const EMPTY: ActRange = ActRange {
        lo: f32::INFINITY,
        hi: f32::NEG_INFINITY,
    };

    pub fn include(&mut self, values: &[f32]) {
        for &v in values.iter().filter(|v| v.is_finite()) {
            self.lo = self.lo.min(v);
            self.hi = self.hi.max(v);
        }
    }

    /// Asymmetric uint8 parameters `(scale, zero_point)`: the range widened to hold 0 (so
    /// zero padding is exact), `x ≈ (q − zp)·scale`.
    pub fn uint8(&self) -> (f32, u8) {
        let lo = self.lo.min(0.0);
        let hi = self.hi.max(0.0);
        if !lo.is_finite() || !hi.is_finite() || hi <= lo {
            return (1.0, 0);
        }
        let scale = (hi - lo) / 255.0;
        let zp = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        (scale, zp)
    }
}

/// The full-int8 (QDQ) version of an f32 model: [`weight_only_int8`]'s weights, and a
/// QuantizeLinear → DequantizeLinear pair (per-tensor uint8, from `ranges`) on each of
/// [`activation_inputs`], feeding the Conv/MatMul/Gemm nodes in its place. Panics if an
/// activation has no range (calibration observes all of them).
pub fn full_int8(model: &Model, ranges: &HashMap<String, ActRange>) -> Model {
    let acts = activation_inputs(model);
    let mut m = weight_only_int8(model);
    let graph = m.proto.graph.as_mut().expect("models have a graph");
    let scalar = |name: String, dt: DataType, raw: Vec<u8>| pb::TensorProto {
        name,
        dims: vec![],
        data_type: dt as i32,
        raw_data: raw,
        ..Default::default()
    };
    let mut nodes = Vec::with_capacity(graph.node.len() + 2 * acts.len());
    let mut done: std::collections::HashSet<String> = std::collections::HashSet::new();
    let exact = super::exact_constants(graph);
    for mut n in std::mem::take(&mut graph.node) {
        if matches!(n.op_type.as_str(), "Conv" | "MatMul" | "Gemm") && !reads_exact(&n, &exact) {
            for input in n.input.iter_mut().take(2) {
                if !acts.contains(input) {
                    continue;
                }
                let a = input.clone();
                let dq = format!("{a}_dq");
                // The pair goes right before the first consumer: `a` exists by then.
                if done.insert(a.clone()) {
                    let r = ranges
                        .get(&a)
                        .unwrap_or_else(|| panic!("no calibrated range for {a}"));
                    let (scale, zp) = r.uint8();
                    let (sn, zn, qn) =
                        (format!("{a}_qscale"), format!("{a}_qzp"), format!("{a}_q"));
                    graph.initializer.push(scalar(
                        sn.clone(),
                        DataType::Float,
                        scale.to_le_bytes().to_vec(),
                    ));
                    graph
                        .initializer
                        .push(scalar(zn.clone(), DataType::Uint8, vec![zp]));
                    nodes.push(pb::NodeProto {
                        input: vec![a.clone(), sn.clone(), zn.clone()],
                        output: vec![qn.clone()],
                        name: format!("q_{a}"),
                        op_type: "QuantizeLinear".into(),
                        ..Default::default()
                    });
                    nodes.push(pb::NodeProto {
                        input: vec![qn, sn, zn],
                        output: vec![dq.clone()],
                        name: format!("dq_{a}"),
                        op_type: "DequantizeLinear".into(),
                        ..Default::default()
                    });
                }
                *input = dq;
            }
        }
        nodes.push(n);
    }
    graph.node = nodes;
    m.proto.doc_string = model.proto.doc_string.clone() + " (full int8, QDQ)";
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_scales_follow_the_axis() {
        // dims [2, 3]: axis 1 has 3 channels, each spanning both rows.
        let data = [1.0, -1.0, 0.0, -0.25, 4.0, 0.0];
        let q = quantize_per_channel(&data, &[2, 3], 1);
        assert_eq!(q.scales, vec![1.0 / 127.0, 4.0 / 127.0, 1.0]);
        assert_eq!(q.values, vec![127, -32, 0, -32, 127, 0]);
        let q0 = quantize_per_channel(&data, &[2, 3], 0);
        assert_eq!(q0.scales, vec![1.0 / 127.0, 4.0 / 127.0]);
        for (i, v) in data.iter().enumerate() {
            let back = q0.values[i] as f32 * q0.scales[i / 3];
            assert!((back - v).abs() <= q0.scales[i / 3] / 2.0 + 1e-7);
        }
    }

    /// A layer norm's centring matrix stays f32 through both quantisations, and the ops
    /// reading it get no QDQ pair; the linear layer beside it is quantised.
    #[test]
    fn exact_constants_stay_f32() {
        use super::super::{Graph, Weights};
        let d = 32;
        let mut g = Graph::new();
        let w = Weights::new(
            vec![d, d],
            (0..d * d).map(|i| (i % 7) as f32 - 3.0).collect(),
        );
        let b = Weights::new(vec![d], vec![0.0; d]);
        let y = g.linear("x", &w, &b);
        let ones = Weights::new(vec![d], vec![1.0; d]);
        let z = g.layer_norm(&y, &ones, &b, 1e-5);
        let z = g.layer_norm(&z, &ones, &b, 1e-5);
        let model = g.finish_rows("t", "x", d, &[("z", &z, vec![None, Some(d)])], "");
        let exact = super::super::exact_constants(model.proto.graph.as_ref().unwrap());
        assert_eq!(
            exact.len(),
            1,
            "two layer norms of one width share their matrix"
        );
        let q = weight_only_int8(&model);
        let graph = q.proto.graph.as_ref().unwrap();
        let dtype = |name: &str| {
            let init = graph.initializer.iter().find(|i| i.name == name);
            init.map(|i| i.data_type)
        };
        let centre = exact.iter().next().unwrap();
        assert_eq!(dtype(centre), Some(DataType::Float as i32));
        let dq = graph
            .node
            .iter()
            .filter(|n| n.op_type == "DequantizeLinear");
        assert_eq!(dq.count(), 1, "only the linear weight is quantised");
        assert_eq!(activation_inputs(&model), vec!["x".to_owned()]);
    }
}
