//! Weight-only int8: each large Conv/MatMul/Gemm weight is stored as int8 with one
//! symmetric scale per output channel, and a DequantizeLinear restores f32 weights. The
//! runtime folds that back into constants at load, so the file is ~4× smaller while
//! inference stays f32 (full int8 was measured slower than f32 with tract on x86).

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
    let mut axis_of: HashMap<String, usize> = HashMap::new();
    for n in &graph.node {
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
}
