//! The inference engine (`tirp_firmware::engine`) against independent computations:
//! - a fixture bundle of real members (random init, 32×32): member logits and cams equal
//!   burn's eval forward, the stacker probability equals σ(w·features + b) by hand, the
//!   flag follows the threshold, threads change nothing, `fmap` feeds the head;
//! - Grad-CAM and Score-CAM on tiny hand-built members (conv + ReLU + GAP + linear) against
//!   loops written here from the definitions;
//! - bundles without `fmap`, bad inputs, DICOM input with its header, the overlay PNG.

use burn::prelude::{Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use tirp_firmware::clinical::{Sex, Site, clinical};
use tirp_firmware::engine::{
    ClinicalInput, Engine, EngineError, EngineOptions, Explain, Plan, Prediction, RoiSource,
};
use tirp_firmware::ensemble::{
    ENSEMBLE_FORMAT, EnsembleSpec, MEMBER_CAM, MEMBER_LOGIT, MemberSpec, StackerKind, StackerSpec,
};
use tirp_firmware::preprocess::{GrayImage, PreprocessSpec, Roi};
use tirp_models::fixture::{self, FixtureConfig};
use tirp_models::nets::{self, Member, MemberKind};
use tirp_models::onnx::{ConvSpec, Graph, Weights};
use tirp_models::train;

/// A radiograph-like test image: a ramp, a bright bar ("bone") and a dark spot.
fn image(w: u32, h: u32, seed: u64) -> GrayImage {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let pixels = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| {
            let bar = if (30..50).contains(&x) { 900.0 } else { 0.0 };
            let d2 = (x as f32 - 45.0).powi(2) + (y as f32 - 40.0).powi(2);
            let spot = -600.0 * (-d2 / 40.0).exp();
            500.0 + 3.0 * y as f32 + bar + spot + rng.random_range(0.0..50.0)
        })
        .collect();
    GrayImage::new(w, h, pixels).unwrap()
}

const ROI: Roi = Roi {
    x: 20,
    y: 18,
    w: 44,
    h: 40,
};

fn opts(threads: usize) -> EngineOptions {
    EngineOptions {
        threads,
        ..Default::default()
    }
}

fn burn_forward<M: Member>(m: &M, x: &[f32]) -> (f32, Vec<f32>) {
    let s = m.input_size();
    let t = Tensor::<4>::from_data(TensorData::new(x.to_vec(), [1, 1, s, s]), &train::device());
    let out = m.forward(t);
    let logit = out.logit.into_data().try_into_vec_as::<f32>().unwrap()[0];
    (logit, out.cam.into_data().try_into_vec_as::<f32>().unwrap())
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0, f32::max)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn fixture_bundle_matches_burn_and_the_hand_stacker() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FixtureConfig::default();
    let fx = fixture::write_bundle(dir.path(), &cfg).unwrap();
    let engine = Engine::load(dir.path(), &opts(1)).unwrap();
    assert_eq!(engine.backend(), "cpu");
    assert!(engine.has_feature_maps());
    let img = image(96, 80, 3);
    let input = ClinicalInput {
        age: Some(17.0),
        sex: Some(Sex::Male),
        site: Some(Site::Femur),
    };
    let p = engine
        .predict(&img, Some(ROI), input, Explain::GradCam)
        .unwrap();

    // Members: burn's eval forward on the same preprocessed input.
    let x = fx.spec.preprocess.model_input(&img, ROI).unwrap();
    let s = cfg.input_size;
    let mut burn_cams = Vec::new();
    for (i, (&kind, r)) in cfg.members.iter().zip(&p.members).enumerate() {
        let seed = fixture::member_seed(cfg.seed, i);
        let (logit, cam) = match kind {
            MemberKind::ResNet => burn_forward(&fixture::resnet(s, seed), &x),
            MemberKind::EffNet => burn_forward(&fixture::effnet(s, seed), &x),
            MemberKind::Vit => burn_forward(&fixture::vit(s, seed), &x),
        };
        assert_eq!(r.name, kind.as_str());
        assert!(
            (r.logit - logit).abs() <= 1e-4,
            "{kind}: {} vs {logit}",
            r.logit
        );
        assert!((r.probability - sigmoid(logit)).abs() <= 1e-5);
        let c = fx.spec.members[i].cam_side as usize;
        let up = tirp_firmware::engine::cam::upsample(&cam, c, c, s);
        let d = max_diff(&p.heatmap.members[i].values, &up);
        assert!(d <= 1e-4, "{kind} cam differs by {d}");
        burn_cams.push(up);
    }
    let logits: Vec<f32> = p.members.iter().map(|m| m.logit).collect();
    let spread = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
        - logits.iter().cloned().fold(f32::INFINITY, f32::min);
    assert!(spread > 1e-4, "members should differ: {logits:?}");

    // Stacker: σ(w · [σ(logit_m)…, clinical…] + b) by hand.
    let mut features: Vec<f32> = logits.iter().map(|&l| sigmoid(l)).collect();
    features.extend(clinical(Some(17.0), Some(Sex::Male), Some(Site::Femur)));
    let z: f32 = features
        .iter()
        .zip(&fx.stacker_weights)
        .map(|(f, w)| f * w)
        .sum::<f32>()
        + fx.stacker_bias;
    assert!(
        (p.probability - sigmoid(z)).abs() <= 1e-5,
        "{} vs {}",
        p.probability,
        sigmoid(z)
    );
    assert_eq!(p.pbt, p.probability >= cfg.threshold);

    // Grad-CAM ensemble: Σ w_m cam_m, positive part shown.
    let w = 1.0 / 3.0;
    let signed: Vec<f32> = (0..s * s)
        .map(|j| burn_cams.iter().map(|c| w * c[j]).sum())
        .collect();
    assert!(max_diff(p.heatmap.signed.as_ref().unwrap(), &signed) <= 1e-4);
    let shown: Vec<f32> = signed.iter().map(|v| v.max(0.0)).collect();
    assert!(max_diff(&p.heatmap.values, &shown) <= 1e-4);

    // Report fields.
    assert_eq!(p.roi, ROI);
    assert_eq!(p.roi_source, RoiSource::Caller);
    assert_eq!(p.bundle.name, "tirp-fixture");
    assert!(p.clinical.missing.is_empty());
    assert_eq!(p.clinical.sex.as_deref(), Some("m"));
    let crop = fx.spec.preprocess.crop_box(&img, ROI).unwrap();
    assert_eq!(
        (p.heatmap.crop.x, p.heatmap.crop.y, p.heatmap.crop.side),
        (crop.x, crop.y, crop.w)
    );

    // Two threads: the same numbers.
    let par = Engine::load(dir.path(), &opts(2))
        .unwrap()
        .predict(&img, Some(ROI), input, Explain::GradCam)
        .unwrap();
    assert_eq!(par.members, p.members);
    assert_eq!(par.probability, p.probability);
    assert_eq!(par.heatmap.values, p.heatmap.values);

    // The flag follows the threshold (rewrite it just either side of p).
    for (t, pbt) in [(p.probability - 1e-3, true), (p.probability + 1e-3, false)] {
        let mut spec = fx.spec.clone();
        spec.threshold = t.clamp(0.0, 1.0);
        spec.save(dir.path()).unwrap();
        let q = Engine::load(dir.path(), &opts(1))
            .unwrap()
            .predict(&img, Some(ROI), input, Explain::GradCam)
            .unwrap();
        assert_eq!(q.pbt, pbt, "threshold {t}, p {}", q.probability);
        let text = if pbt {
            "suspected primary bone tumour"
        } else {
            "suspected bone infection"
        };
        assert_eq!(q.flag, text);
        assert_eq!(q.threshold, spec.threshold);
    }
}

/// With intra-op workers (a board's `cpu.intra_op_threads`) every graph's matrix products
/// run on one shared pool of tract workers; the numbers are the single thread's, bit for bit,
/// on the shipped architectures at the shipped input size, with the localiser.
#[test]
fn intra_op_threads_change_no_number() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FixtureConfig {
        full_size: true,
        input_size: 128,
        localiser: Some(tirp_models::fixture::FixtureLocaliser {
            input_size: 128,
            zoom: Some(3.0),
            zoom_flips: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    fixture::write_bundle(dir.path(), &cfg).unwrap();
    let with = |threads: usize, intra_op_threads: usize| {
        Engine::load(
            dir.path(),
            &EngineOptions {
                threads,
                intra_op_threads,
                ..opts(1)
            },
        )
        .unwrap()
    };
    let one = with(1, 1);
    let pooled = [with(1, 4), with(2, 3)];
    assert_eq!(one.intra_op_threads(), 1);
    assert_eq!(pooled[0].intra_op_threads(), 4);
    // The pools' workers exist (Linux names them after the pool).
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        let names: Vec<String> = tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
            .collect();
        assert!(
            names
                .iter()
                .filter(|n| n.starts_with("tirp-intra-op"))
                .count()
                >= 7,
            "{names:?}"
        );
    }
    let img = image(400, 320, 9);
    let input = ClinicalInput::default();
    let a = one.predict(&img, None, input, Explain::GradCam).unwrap();
    for e in &pooled {
        let b = e.predict(&img, None, input, Explain::GradCam).unwrap();
        assert_eq!(b.members, a.members);
        assert_eq!(b.probability, a.probability);
        assert_eq!(b.heatmap.values, a.heatmap.values);
        assert_eq!(b.roi, a.roi);
        let (la, lb) = (a.localiser.as_ref().unwrap(), b.localiser.as_ref().unwrap());
        assert_eq!(
            (lb.roi, lb.confidence, lb.window),
            (la.roi, la.confidence, la.window)
        );
    }
}

/// Plans are built for a batch of one; a batch runs input by input and is assembled in order,
/// so its answers are the single inputs' bit for bit (on the shipped architectures), and
/// inputs that do not fill the batch are refused with the file's name.
#[test]
fn batches_answer_as_single_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FixtureConfig {
        full_size: true,
        input_size: 128,
        ..Default::default()
    };
    let fx = fixture::write_bundle(dir.path(), &cfg).unwrap();
    let s = cfg.input_size;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x: Vec<f32> = (0..3 * s * s)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    for m in &fx.spec.members {
        let plan = Plan::load(
            &dir.path().join(&m.file),
            &[1, s, s],
            &[MEMBER_LOGIT, MEMBER_CAM],
            &[],
            false,
        )
        .unwrap();
        let batch = plan.run(&x, 3, &[1, s, s]).unwrap();
        assert_eq!(batch[0].shape, [3, 1], "{}", m.name);
        let c = m.cam_side as usize;
        assert_eq!(batch[1].shape, [3, 1, c, c], "{}", m.name);
        for (i, one) in x.chunks(s * s).enumerate() {
            let single = plan.run(one, 1, &[1, s, s]).unwrap();
            assert_eq!(
                single[0].values,
                batch[0].values[i..i + 1],
                "{} logit {i}",
                m.name
            );
            assert_eq!(
                single[1].values,
                batch[1].values[i * c * c..(i + 1) * c * c],
                "{} cam {i}",
                m.name
            );
        }
        // The inputs must fill the batch.
        let err = plan.run(&x[1..], 3, &[1, s, s]).unwrap_err().to_string();
        assert!(err.contains(&m.file) && err.contains("batch of 3"), "{err}");
        assert!(plan.run(&[], 0, &[1, s, s]).is_err());
    }
}

/// The per-op profile of a plan: every operator kind the plan runs, slowest first; the
/// shipped effnet architecture runs its depthwise convolutions on tract's direct kernel (it
/// took im2col + a matrix product when plans had a symbolic batch).
#[test]
fn profile_names_where_a_plan_spends_its_time() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = FixtureConfig {
        full_size: true,
        input_size: 128,
        ..Default::default()
    };
    let fx = fixture::write_bundle(dir.path(), &cfg).unwrap();
    let s = cfg.input_size;
    let x = vec![0.25f32; s * s];
    for m in &fx.spec.members {
        let plan = Plan::load(
            &dir.path().join(&m.file),
            &[1, s, s],
            &[MEMBER_LOGIT, MEMBER_CAM],
            &[],
            false,
        )
        .unwrap();
        let ops = plan.profile(&x, &[1, s, s], 2).unwrap();
        assert!(!ops.is_empty(), "{}", m.name);
        assert!(ops.windows(2).all(|w| w[0].ms >= w[1].ms), "{ops:?}");
        assert!(ops.iter().all(|o| o.nodes >= 1 && o.ms >= 0.0), "{ops:?}");
        assert!(
            ops.iter().any(|o| o.op.contains("MatMul")),
            "{}: {ops:?}",
            m.name
        );
        if m.name == "effnet" {
            let dw = ops.iter().find(|o| o.op == "DepthWiseConv");
            // Eight MBConv blocks, eight depthwise convolutions.
            assert_eq!(dw.map(|o| o.nodes), Some(8), "{ops:?}");
            assert!(!ops.iter().any(|o| o.op == "Im2col"), "{ops:?}");
        }
        let err = plan
            .profile(&x[1..], &[1, s, s], 2)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&m.file), "{err}");
        assert!(plan.profile(&x, &[1, s, s], 0).is_err());
    }
}

/// The exported `fmap` is the map the head reads: for the CNN head, cam = (W·fmap + b)/hw
/// at every location.
#[test]
fn fmap_feeds_the_head() {
    use tract_onnx::prelude::*;
    let s = 32;
    let m = fixture::resnet(s, 9);
    let bytes = nets::export(&m).unwrap().to_bytes();
    let plan = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    let x: Vec<f32> = (0..s * s)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let out = plan
        .run(tvec!(Tensor::from_shape(&[1, 1, s, s], &x).unwrap().into()))
        .unwrap();
    assert_eq!(out.len(), 3);
    let cam: Vec<f32> = out[1]
        .to_plain_array_view::<f32>()
        .unwrap()
        .iter()
        .copied()
        .collect();
    let fmap = out[2].to_plain_array_view::<f32>().unwrap();
    let (c, h, w) = (fmap.shape()[1], fmap.shape()[2], fmap.shape()[3]);
    assert_eq!((c, h, w), (m.fmap_channels(), m.cam_side(), m.cam_side()));
    let wts = m
        .head
        .linear
        .weight
        .val()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap();
    let b = m
        .head
        .linear
        .bias
        .as_ref()
        .unwrap()
        .val()
        .into_data()
        .try_into_vec_as::<f32>()
        .unwrap()[0];
    let fmap: Vec<f32> = fmap.iter().copied().collect();
    let hw = (h * w) as f32;
    for loc in 0..h * w {
        let z: f32 = (0..c).map(|k| wts[k] * fmap[k * h * w + loc]).sum::<f32>() + b;
        assert!((cam[loc] - z / hw).abs() < 1e-5, "location {loc}");
    }
}

// ---------------------------------------------------------------------------------------
// Tiny hand-built members: conv 3×3 stride 2 (1 → K channels) + ReLU = fmap [K, S/2, S/2];
// GAP + linear = logit; cam = the linear map per location / hw.

const S: usize = 16;
const K: usize = 3;

struct Tiny {
    conv_w: Vec<f32>, // [K, 1, 3, 3]
    conv_b: Vec<f32>, // [K]
    lin_w: Vec<f32>,  // [K]
    lin_b: f32,
}

impl Tiny {
    fn random(seed: u64) -> Tiny {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut v = |n: usize, a: f32| {
            (0..n)
                .map(|_| rng.random_range(-a..a))
                .collect::<Vec<f32>>()
        };
        Tiny {
            conv_w: v(K * 9, 0.8),
            conv_b: v(K, 0.3),
            lin_w: v(K, 2.0),
            lin_b: v(1, 0.5)[0],
        }
    }

    fn onnx(&self, with_fmap: bool) -> tirp_models::onnx::Model {
        let mut g = Graph::new();
        let conv = ConvSpec {
            stride: 2,
            pad: 1,
            groups: 1,
        };
        let f = g.conv(
            "x",
            &Weights::new(vec![K, 1, 3, 3], self.conv_w.clone()),
            &Weights::new(vec![K], self.conv_b.clone()),
            conv,
        );
        let f = g.relu(&f);
        let pooled = g.global_average_pool(&f);
        let flat = g.flatten(&pooled);
        let logit = g.gemm(
            &flat,
            &Weights::new(vec![K, 1], self.lin_w.clone()),
            &Weights::new(vec![1], vec![self.lin_b]),
        );
        let hw = ((S / 2) * (S / 2)) as f32;
        let cam = g.conv(
            &f,
            &Weights::new(
                vec![1, K, 1, 1],
                self.lin_w.iter().map(|w| w / hw).collect(),
            ),
            &Weights::new(vec![1], vec![self.lin_b / hw]),
            ConvSpec {
                stride: 1,
                pad: 0,
                groups: 1,
            },
        );
        let c = S / 2;
        let mut outputs = vec![
            (logit.as_str(), "logit", vec![None, Some(1)]),
            (cam.as_str(), "cam", vec![None, Some(1), Some(c), Some(c)]),
        ];
        if with_fmap {
            outputs.push((f.as_str(), "fmap", vec![None, Some(K), Some(c), Some(c)]));
        }
        g.finish("x", [1, S, S], &outputs, "tiny test member")
    }

    /// fmap [K, S/2, S/2] by direct loops (zero padding 1, stride 2).
    fn fmap(&self, x: &[f32]) -> Vec<f32> {
        let c = S / 2;
        let mut out = vec![0.0; K * c * c];
        for k in 0..K {
            for oy in 0..c {
                for ox in 0..c {
                    let mut acc = self.conv_b[k];
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let iy = (2 * oy + ky) as i64 - 1;
                            let ix = (2 * ox + kx) as i64 - 1;
                            if (0..S as i64).contains(&iy) && (0..S as i64).contains(&ix) {
                                acc += self.conv_w[k * 9 + ky * 3 + kx]
                                    * x[iy as usize * S + ix as usize];
                            }
                        }
                    }
                    out[(k * c + oy) * c + ox] = acc.max(0.0);
                }
            }
        }
        out
    }

    fn logit(&self, x: &[f32]) -> f32 {
        let f = self.fmap(x);
        let hw = (S / 2) * (S / 2);
        (0..K)
            .map(|k| self.lin_w[k] * f[k * hw..(k + 1) * hw].iter().sum::<f32>() / hw as f32)
            .sum::<f32>()
            + self.lin_b
    }

    fn cam(&self, x: &[f32]) -> Vec<f32> {
        let f = self.fmap(x);
        let hw = (S / 2) * (S / 2);
        (0..hw)
            .map(|l| {
                ((0..K).map(|k| self.lin_w[k] * f[k * hw + l]).sum::<f32>() + self.lin_b)
                    / hw as f32
            })
            .collect()
    }
}

/// Bilinear, half-pixel centres, edge clamp: written out again for the hand computation.
fn bilinear(src: &[f32], n: usize, out: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(out * out);
    for oy in 0..out {
        for ox in 0..out {
            let sy = ((oy as f32 + 0.5) * n as f32 / out as f32 - 0.5).clamp(0.0, (n - 1) as f32);
            let sx = ((ox as f32 + 0.5) * n as f32 / out as f32 - 0.5).clamp(0.0, (n - 1) as f32);
            let (y0, x0) = (sy.floor() as usize, sx.floor() as usize);
            let (y1, x1) = ((y0 + 1).min(n - 1), (x0 + 1).min(n - 1));
            let (fy, fx) = (sy - y0 as f32, sx - x0 as f32);
            let at = |y: usize, x: usize| src[y * n + x];
            v.push(
                at(y0, x0) * (1.0 - fy) * (1.0 - fx)
                    + at(y0, x1) * (1.0 - fy) * fx
                    + at(y1, x0) * fy * (1.0 - fx)
                    + at(y1, x1) * fy * fx,
            );
        }
    }
    v
}

/// A bundle of tiny members with the given heat-map weights and an identity-like stacker.
fn tiny_bundle(dir: &Path, members: &[(&Tiny, f32)], with_fmap: bool) -> EnsembleSpec {
    let mut specs = Vec::new();
    for (i, (t, w)) in members.iter().enumerate() {
        let file = format!("tiny{i}.onnx");
        t.onnx(with_fmap).save(&dir.join(&file)).unwrap();
        specs.push(MemberSpec {
            name: format!("tiny{i}"),
            file,
            full_int8_file: None,
            cam_side: (S / 2) as u32,
            cam_weight: *w,
        });
    }
    let features = EnsembleSpec::feature_names(&specs);
    let mut wts = vec![0.0; features.len()];
    wts[0] = 4.0;
    let stacker = fixture::logistic_stacker(&wts, -2.0);
    std::fs::write(dir.join("stacker.onnx"), stacker.to_bytes()).unwrap();
    let spec = EnsembleSpec {
        format: ENSEMBLE_FORMAT,
        name: "tiny".into(),
        version: "1.0.0".into(),
        preprocess: PreprocessSpec {
            input_size: S as u32,
            mean: 0.4,
            std: 0.3,
            margin: 0.1,
            ..Default::default()
        },
        members: specs,
        stacker: StackerSpec {
            kind: StackerKind::Lr,
            file: "stacker.onnx".into(),
            features,
        },
        threshold: 0.5,
        localiser: None,
    };
    spec.save(dir).unwrap();
    spec
}

#[test]
fn grad_cam_equals_the_hand_computation() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Tiny::random(1), Tiny::random(2));
    let spec = tiny_bundle(dir.path(), &[(&a, 0.25), (&b, 0.75)], true);
    let engine = Engine::load(dir.path(), &opts(2)).unwrap();
    let img = image(80, 72, 5);
    let p = engine
        .predict(&img, Some(ROI), ClinicalInput::default(), Explain::GradCam)
        .unwrap();
    let x = spec.preprocess.model_input(&img, ROI).unwrap();
    assert!((p.members[0].logit - a.logit(&x)).abs() < 1e-4);
    assert!((p.members[1].logit - b.logit(&x)).abs() < 1e-4);
    let (ua, ub) = (
        bilinear(&a.cam(&x), S / 2, S),
        bilinear(&b.cam(&x), S / 2, S),
    );
    let signed: Vec<f32> = ua
        .iter()
        .zip(&ub)
        .map(|(p, q)| 0.25 * p + 0.75 * q)
        .collect();
    assert!(max_diff(p.heatmap.signed.as_ref().unwrap(), &signed) < 1e-5);
    let shown: Vec<f32> = signed.iter().map(|v| v.max(0.0)).collect();
    assert!(max_diff(&p.heatmap.values, &shown) < 1e-5);
    assert!(
        shown.iter().any(|&v| v > 0.0),
        "a vacuous (all-zero) map proves nothing"
    );
    // The stacker here reads only the first member: σ(4·σ(logit_0) − 2).
    let hand = sigmoid(4.0 * sigmoid(a.logit(&x)) - 2.0);
    assert!((p.probability - hand).abs() < 1e-5);
    assert_eq!(
        p.clinical.missing,
        vec!["age".to_string(), "sex".into(), "site".into()]
    );
}

#[test]
fn score_cam_equals_its_definition() {
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b) = (Tiny::random(3), Tiny::random(4));
    // A dead channel (ReLU of a very negative bias: constant 0): the engine skips its
    // masked run, the definition gives it s_k = 0 via a mask of zeros; they must agree.
    b.conv_b[K - 1] = -100.0;
    let spec = tiny_bundle(dir.path(), &[(&a, 0.5), (&b, 0.5)], true);
    let engine = Engine::load(dir.path(), &opts(1)).unwrap();
    let img = image(80, 72, 6);
    let p = engine
        .predict(&img, Some(ROI), ClinicalInput::default(), Explain::ScoreCam)
        .unwrap();
    let pp = &spec.preprocess;
    let scaled = pp.scaled_crop(&img, ROI).unwrap();
    let x: Vec<f32> = scaled.iter().map(|v| (v - pp.mean) / pp.std).collect();
    let c = S / 2;
    let hand_map = |t: &Tiny| -> Vec<f32> {
        let f = t.fmap(&x);
        let baseline = vec![(0.0 - pp.mean) / pp.std; S * S];
        let p_base = sigmoid(t.logit(&baseline));
        let mut acc = vec![0.0f32; c * c];
        for k in 0..K {
            let a_k = &f[k * c * c..(k + 1) * c * c];
            let up = bilinear(a_k, c, S);
            let (lo, hi) = up
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            let mask: Vec<f32> = up
                .iter()
                .map(|v| if hi > lo { (v - lo) / (hi - lo) } else { 0.0 })
                .collect();
            let masked: Vec<f32> = scaled
                .iter()
                .zip(&mask)
                .map(|(s, m)| (s * m - pp.mean) / pp.std)
                .collect();
            let s_k = sigmoid(t.logit(&masked)) - p_base;
            for (o, v) in acc.iter_mut().zip(a_k) {
                *o += s_k * v;
            }
        }
        bilinear(&acc.iter().map(|v| v.max(0.0)).collect::<Vec<_>>(), c, S)
    };
    let (ma, mb) = (hand_map(&a), hand_map(&b));
    let hand: Vec<f32> = ma.iter().zip(&mb).map(|(p, q)| 0.5 * p + 0.5 * q).collect();
    let d = max_diff(&p.heatmap.values, &hand);
    assert!(d < 1e-5, "Score-CAM differs from its definition by {d}");
    assert!(
        hand.iter().any(|&v| v > 0.0),
        "a vacuous (all-zero) map proves nothing"
    );
    assert!(p.heatmap.signed.is_none());
    assert_eq!(p.heatmap.method, Explain::ScoreCam);
    // Score-CAM differs from Grad-CAM (it is not the same map renamed).
    let g = engine
        .predict(&img, Some(ROI), ClinicalInput::default(), Explain::GradCam)
        .unwrap();
    assert!(max_diff(&g.heatmap.values, &p.heatmap.values) > 1e-6);
    // Heat-map peak lies inside the crop.
    let crop = p.heatmap.crop;
    assert!((crop.x as f32..(crop.x + crop.side as i64) as f32).contains(&p.heatmap.peak.x));
}

#[test]
fn bundles_without_fmap_load_but_refuse_score_cam() {
    let dir = tempfile::tempdir().unwrap();
    let a = Tiny::random(5);
    tiny_bundle(dir.path(), &[(&a, 1.0)], false);
    let engine = Engine::load(dir.path(), &opts(1)).unwrap();
    assert!(!engine.has_feature_maps());
    let img = image(64, 64, 1);
    engine
        .predict(&img, None, ClinicalInput::default(), Explain::GradCam)
        .unwrap();
    let e = engine
        .predict(&img, None, ClinicalInput::default(), Explain::ScoreCam)
        .unwrap_err();
    assert!(matches!(e, EngineError::NoFeatureMap { .. }), "{e}");
    assert!(e.to_string().contains("fmap"), "{e}");

    // The fixture's real members without fmap too.
    let dir = tempfile::tempdir().unwrap();
    let cfg = FixtureConfig {
        with_fmap: false,
        members: vec![MemberKind::Vit],
        ..Default::default()
    };
    fixture::write_bundle(dir.path(), &cfg).unwrap();
    let engine = Engine::load(dir.path(), &opts(1)).unwrap();
    assert!(!engine.has_feature_maps());
}

#[test]
fn score_cam_runs_on_every_real_member() {
    let dir = tempfile::tempdir().unwrap();
    fixture::write_bundle(dir.path(), &FixtureConfig::default()).unwrap();
    let engine = Engine::load(dir.path(), &opts(2)).unwrap();
    let p = engine
        .predict(
            &image(96, 80, 8),
            Some(ROI),
            ClinicalInput::default(),
            Explain::ScoreCam,
        )
        .unwrap();
    assert_eq!(p.heatmap.values.len(), 32 * 32);
    assert!(p.heatmap.values.iter().all(|v| v.is_finite() && *v >= 0.0));
    assert_eq!(p.heatmap.members.len(), 3);
}

#[test]
fn bad_requests_and_bundles_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let a = Tiny::random(6);
    let spec = tiny_bundle(dir.path(), &[(&a, 1.0)], true);
    let engine = Engine::load(dir.path(), &opts(1)).unwrap();
    let img = image(64, 64, 2);
    let age = |a| ClinicalInput {
        age: Some(a),
        ..Default::default()
    };
    for bad in [-3.0, 121.0, f32::NAN] {
        let e = engine
            .predict(&img, None, age(bad), Explain::GradCam)
            .unwrap_err();
        assert!(matches!(e, EngineError::Age(_)), "{e}");
        assert!(e.to_string().contains("age"), "{e}");
    }
    engine
        .predict(&img, None, age(0.0), Explain::GradCam)
        .unwrap();
    engine
        .predict(&img, None, age(120.0), Explain::GradCam)
        .unwrap();
    let outside = Roi {
        x: 50,
        y: 10,
        w: 30,
        h: 10,
    };
    let e = engine
        .predict(
            &img,
            Some(outside),
            ClinicalInput::default(),
            Explain::GradCam,
        )
        .unwrap_err();
    assert!(e.to_string().contains("outside the 64x64 image"), "{e}");

    // Whole image when no ROI.
    let p = engine
        .predict(&img, None, ClinicalInput::default(), Explain::GradCam)
        .unwrap();
    assert_eq!(p.roi_source, RoiSource::WholeImage);
    assert_eq!(p.roi, img.full_roi());

    // Missing bundle, missing member file, wrong member shape.
    let e = Engine::load(&dir.path().join("nope"), &opts(1)).unwrap_err();
    assert!(e.to_string().contains("ensemble.json"), "{e}");
    std::fs::remove_file(dir.path().join("tiny0.onnx")).unwrap();
    let e = Engine::load(dir.path(), &opts(1)).unwrap_err();
    assert!(e.to_string().contains("tiny0.onnx"), "{e}");
    a.onnx(true).save(&dir.path().join("tiny0.onnx")).unwrap();
    let mut wrong = spec.clone();
    wrong.members[0].cam_side = 5;
    wrong.save(dir.path()).unwrap();
    let e = Engine::load(dir.path(), &opts(1)).unwrap_err();
    assert!(e.to_string().contains("cam"), "{e}");
}

#[test]
fn dicom_input_fills_clinical_inputs_from_its_header() {
    use tirp_models::cohort::{CohortConfig, dicom, plan, render};
    let cfg = CohortConfig {
        patients: 30,
        ..Default::default()
    };
    let patients = plan(&cfg).unwrap();
    let p = patients.iter().find(|p| p.centre == 3).unwrap();
    let img = render::radiograph(&mut ChaCha8Rng::seed_from_u64(11), p, 128);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.dcm");
    std::fs::write(&path, dicom::encode(p, 0, &img, cfg.seed).unwrap()).unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir(&bundle).unwrap();
    tiny_bundle(&bundle, &[(&Tiny::random(7), 1.0)], true);
    let engine = Engine::load(&bundle, &opts(1)).unwrap();
    let input = tirp_firmware::engine::load_input(&path, None).unwrap();
    let given = ClinicalInput {
        sex: Some(Sex::Female),
        ..Default::default()
    };
    let roi = img.roi;
    let pred = engine
        .predict_input(&input, Some(roi), given, Explain::GradCam)
        .unwrap();
    assert_eq!(
        pred.clinical.from_dicom,
        vec!["age".to_string(), "site".into()]
    );
    assert_eq!(pred.clinical.age, Some(p.age as f32));
    assert_eq!(
        pred.clinical.sex.as_deref(),
        Some("f"),
        "the caller's value wins"
    );
    assert_eq!(pred.clinical.site.as_deref(), Some(p.site.as_str()));
    assert!(pred.clinical.missing.is_empty());
    assert!(pred.timings.decode_ms > 0.0);
}

fn overlay_of(p: &Prediction, img: &GrayImage) -> image::RgbImage {
    let png = tirp_firmware::engine::overlay::render_png(img, p).unwrap();
    image::load_from_memory(&png).unwrap().into_rgb8()
}

#[test]
fn overlay_shows_the_map_the_box_and_the_notice() {
    let img = image(96, 80, 4);
    // The first tiny member (by seed) with some PBT evidence in this image.
    let (_dir, p) = (8..40)
        .find_map(|seed| {
            let dir = tempfile::tempdir().unwrap();
            tiny_bundle(dir.path(), &[(&Tiny::random(seed), 1.0)], true);
            let engine = Engine::load(dir.path(), &opts(1)).unwrap();
            let p = engine
                .predict(&img, Some(ROI), ClinicalInput::default(), Explain::GradCam)
                .unwrap();
            (p.heatmap.max > 0.0).then_some((dir, p))
        })
        .expect("a member with a positive map");
    let o = overlay_of(&p, &img);
    let panel = tirp_firmware::engine::overlay::PANEL;
    assert!(o.width() > panel && o.height() > panel + 40);
    let coloured = |px: &image::Rgb<u8>| {
        let [r, g, b] = px.0;
        r.max(g).max(b) - r.min(g).min(b) > 40
    };
    // Inside the panel: some pixels tinted by the map.
    let tinted = (8..8 + panel)
        .flat_map(|y| (8..8 + panel).map(move |x| (x, y)))
        .filter(|&(x, y)| coloured(o.get_pixel(x, y)))
        .count();
    assert!(tinted > 100, "{tinted} tinted pixels");
    // The yellow notice line in the text band.
    let yellow = (panel + 16..o.height())
        .flat_map(|y| (0..o.width()).map(move |x| (x, y)))
        .filter(|&(x, y)| o.get_pixel(x, y).0 == [255, 220, 0])
        .count();
    assert!(yellow > 50, "{yellow} notice pixels");

    // A map of zeros tints nothing.
    let mut flat = p.clone();
    flat.heatmap.values.iter_mut().for_each(|v| *v = 0.0);
    flat.heatmap.max = 0.0;
    let o = overlay_of(&flat, &img);
    let tinted = (8..8 + panel)
        .flat_map(|y| (8..8 + panel).map(move |x| (x, y)))
        .filter(|&(x, y)| {
            let px = o.get_pixel(x, y);
            coloured(px) && px.0 != [255, 255, 0]
        })
        .count();
    assert_eq!(tinted, 0);
}

/// The stackers `tirp_models::stack` fits (logistic regression, random forest as an ONNX-ML
/// TreeEnsembleClassifier) run in the engine and give what the Rust model predicts.
#[test]
fn fitted_stackers_run_in_the_engine() {
    use tirp_models::stack::{Tabular, TabularConfig};
    let img = image(96, 80, 9);
    let clin = ClinicalInput {
        age: Some(44.0),
        sex: Some(Sex::Female),
        site: Some(Site::Pelvis),
    };
    for kind in [StackerKind::Lr, StackerKind::Rf] {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (Tiny::random(11), Tiny::random(12));
        let mut spec = tiny_bundle(dir.path(), &[(&a, 0.5), (&b, 0.5)], true);
        // Training rows: member probabilities and clinical features with a learnable label.
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for _ in 0..300 {
            let (p0, p1): (f32, f32) = (rng.random(), rng.random());
            let age = rng.random_range(5.0..80.0);
            let mut row = vec![p0, p1];
            row.extend(clinical(Some(age), Some(Sex::Male), Some(Site::Tibia)));
            y.push(((p0 + p1) / 2.0 + rng.random_range(-0.2..0.2) > 0.5) as u8 as f32);
            x.push(row);
        }
        let model = Tabular::fit(kind, &x, &y, &TabularConfig::default()).unwrap();
        model
            .to_onnx()
            .save(&dir.path().join("stacker.onnx"))
            .unwrap();
        spec.stacker.kind = kind;
        spec.save(dir.path()).unwrap();
        let engine = Engine::load(dir.path(), &opts(1)).unwrap();
        let p = engine
            .predict(&img, Some(ROI), clin, Explain::GradCam)
            .unwrap();
        let mut features: Vec<f32> = p.members.iter().map(|m| m.probability).collect();
        features.extend(clinical(clin.age, clin.sex, clin.site));
        let want = model.predict(&[features]).unwrap()[0];
        assert!(
            (p.probability - want).abs() < 1e-5,
            "{kind:?}: engine {} vs model {want}",
            p.probability
        );
    }
}
