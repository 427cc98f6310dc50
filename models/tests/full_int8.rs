//! Full-int8 (QDQ) members (`onnx::quant::full_int8` with ranges from `quantize::calibrate`)
//! on the fixture's real member architectures (random init, 32×32): every activation
//! entering a Conv/MatMul/Gemm gets exactly one QuantizeLinear → DequantizeLinear pair, the
//! calibrated ranges are the observed ones, and tract's logits stay close to the f32
//! original's on unseen inputs, while ranges that do not fit the data visibly hurt.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use tirp_models::fixture;
use tirp_models::nets::{self, MemberKind};
use tirp_models::onnx::Model;
use tirp_models::onnx::check::TractMember;
use tirp_models::onnx::quant::{self, ActRange};
use tirp_models::quantize::calibrate;
use tirp_models::train::data::CropSet;

const S: usize = 32;

/// `n` standardised-looking crops: a smooth random blob pattern plus noise.
fn crops(n: usize, seed: u64) -> CropSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut inputs = Vec::with_capacity(n * S * S);
    for _ in 0..n {
        let (cx, cy) = (
            rng.random_range(8.0..24.0f32),
            rng.random_range(8.0..24.0f32),
        );
        let a = rng.random_range(0.5..2.0f32);
        for y in 0..S {
            for x in 0..S {
                let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
                inputs.push(a * (-d2 / 40.0).exp() - 0.5 + rng.random_range(-0.3..0.3f32));
            }
        }
    }
    CropSet {
        size: S,
        inputs,
        labels: vec![0.0; n],
    }
}

fn member(kind: MemberKind) -> Model {
    let seed = 11;
    match kind {
        MemberKind::ResNet => nets::export(&fixture::resnet(S, seed)),
        MemberKind::EffNet => nets::export(&fixture::effnet(S, seed)),
        MemberKind::Vit => nets::export(&fixture::vit(S, seed)),
    }
    .unwrap()
}

fn logits(m: &Model, set: &CropSet) -> Vec<f32> {
    TractMember::load(&m.to_bytes(), S)
        .unwrap()
        .run(&set.inputs, set.len())
        .unwrap()
        .logits
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn qdq_members_quantise_every_activation_and_stay_close_to_f32() {
    let calibration = crops(48, 1);
    let unseen = crops(24, 2);
    for kind in [MemberKind::ResNet, MemberKind::EffNet, MemberKind::Vit] {
        let f32_model = member(kind);
        let names = quant::activation_inputs(&f32_model);
        assert!(names.len() >= 3, "{kind}: {names:?}");
        let ranges = calibrate(&f32_model, &calibration).unwrap();
        assert_eq!(ranges.len(), names.len(), "{kind}");
        // The graph input is an activation too: its range is the crops' own.
        let x = ranges.get("x").expect("the input is quantised");
        let lo = calibration
            .inputs
            .iter()
            .copied()
            .fold(f32::INFINITY, f32::min);
        let hi = calibration
            .inputs
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, f32::max);
        assert_eq!((x.lo, x.hi), (lo, hi), "{kind}");
        assert!(ranges.values().all(|r| r.lo.is_finite() && r.lo <= r.hi));

        let q = quant::full_int8(&f32_model, &ranges);
        let g = q.proto.graph.as_ref().unwrap();
        let count = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
        assert_eq!(count("QuantizeLinear"), names.len(), "{kind}");
        let inits: std::collections::HashSet<&str> =
            g.initializer.iter().map(|i| i.name.as_str()).collect();
        let weight_dq: std::collections::HashSet<&str> = g
            .node
            .iter()
            .filter(|n| n.op_type == "DequantizeLinear" && inits.contains(n.input[0].as_str()))
            .map(|n| n.output[0].as_str())
            .collect();
        // The layer norm's centring matmul reads an exact constant and stays f32.
        let exact = tirp_models::onnx::exact_constants(g);
        for n in g.node.iter().filter(|n| {
            matches!(n.op_type.as_str(), "Conv" | "MatMul" | "Gemm")
                && !n.input.iter().any(|i| exact.contains(i))
        }) {
            for i in n.input.iter().take(2) {
                assert!(
                    i.ends_with("_dq")
                        || inits.contains(i.as_str())
                        || weight_dq.contains(i.as_str()),
                    "{kind}: {} reads {i} unquantised",
                    n.name
                );
            }
        }

        let a = logits(&f32_model, &unseen);
        let b = logits(&q, &unseen);
        let spread = a.iter().copied().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = max_diff(&a, &b);
        // Random-init logits are small: compare with their scale.
        assert!(spread > 0.0, "{kind}");
        assert!(
            err <= 0.05 * spread,
            "{kind}: max |Δlogit| {err} (logits up to {spread})"
        );
        // Ranges a sixteenth of the observed ones clip nearly everything.
        let narrow: HashMap<String, ActRange> = ranges
            .iter()
            .map(|(k, r)| {
                (
                    k.clone(),
                    ActRange {
                        lo: r.lo / 16.0,
                        hi: r.hi / 16.0,
                    },
                )
            })
            .collect();
        let bad = max_diff(&a, &logits(&quant::full_int8(&f32_model, &narrow), &unseen));
        assert!(
            bad > 4.0 * err && bad > 0.02 * spread,
            "{kind}: narrow ranges {bad} vs calibrated {err} (logits up to {spread})"
        );
        eprintln!("{kind}: calibrated {err:.4}, narrow {bad:.4}, logits up to {spread:.3}");
    }
}
