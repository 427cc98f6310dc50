//! Edge sizing of the image members at the default input: parameters, ONNX size (f32 and
//! weight-only int8), tract inference time at batch 1, burn eval forward and training
//! step time at batch 32. `cargo bench -p tirp-models --bench members [-- SIZE]`

use burn::prelude::*;
use std::time::Instant;
use tirp_models::nets::{self, EffNet, EffNetConfig, Member, ResNet, ResNetConfig, Vit, VitConfig};
use tirp_models::onnx::check::TractMember;
use tirp_models::onnx::quant::weight_only_int8;
use tirp_models::train::{self, TrainConfig, Trainer};

const BATCH: usize = 32;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn bench<M: Member>(model: M) {
    let s = model.input_size();
    let params = model.num_params();
    let eval = model.valid();
    let f32_model = nets::export(&eval).expect("export");
    let q = weight_only_int8(&f32_model);
    let tract = TractMember::load(&f32_model.to_bytes(), s).expect("tract load");
    let x1: Vec<f32> = (0..s * s)
        .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
        .collect();
    let tract_ms = time(20, || {
        tract.run(&x1, 1).expect("tract run");
    }) * 1e3;
    let xb: Vec<f32> = x1.iter().cycle().take(BATCH * s * s).copied().collect();
    let dev = train::device();
    let burn_fwd = time(3, || {
        let x = Tensor::<4>::from_data(TensorData::new(xb.clone(), [BATCH, 1, s, s]), &dev);
        let _ = eval.forward(x).logit.into_data();
    });
    let y: Vec<f32> = (0..BATCH).map(|i| (i % 2) as f32).collect();
    let mut trainer = Trainer::new(model, &TrainConfig::default());
    let step = time(3, || {
        trainer.step(xb.clone(), &y, 1e-3).expect("step");
    });
    println!(
        "{:>6}: {params:>7} params | onnx {:>7} B f32, {:>7} B int8 | tract b1 {tract_ms:6.2} ms | burn eval b{BATCH} {:.3} s | train step b{BATCH} {step:.3} s | cam {}x{}",
        M::KIND,
        f32_model.to_bytes().len(),
        q.to_bytes().len(),
        burn_fwd,
        eval.cam_side(),
        eval.cam_side(),
    );
}

fn main() {
    let s = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(128);
    println!(
        "members at {s}x{s}, {} rayon threads",
        rayon::current_num_threads()
    );
    bench(train::init(1, |d| {
        ResNet::new(
            &ResNetConfig {
                input_size: s,
                ..Default::default()
            },
            d,
        )
    }));
    bench(train::init(1, |d| {
        EffNet::new(
            &EffNetConfig {
                input_size: s,
                ..Default::default()
            },
            d,
        )
    }));
    bench(train::init(1, |d| {
        Vit::new(
            &VitConfig {
                input_size: s,
                ..Default::default()
            },
            d,
        )
    }));
}
