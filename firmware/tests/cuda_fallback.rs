//! The `cuda` build on a machine without an NVIDIA GPU: the engine asks tract for
//! "gpu-or-cpu", gets the CPU, says so, and answers exactly as the CPU build does (the
//! shipped bundle's golden pair). Run with `cargo test -p tirp-firmware --features cuda`.
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};
use tirp_firmware::bundle::check_golden;
use tirp_firmware::engine::{ClinicalInput, Engine, EngineOptions, Explain, load_input};

fn bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/bundle")
}

#[test]
fn gpu_or_cpu_falls_back_to_the_cpu_and_matches_the_golden_answer() {
    let golden = check_golden(
        &std::fs::read(bundle().join("golden.png")).unwrap(),
        &std::fs::read(bundle().join("golden.json")).unwrap(),
    )
    .unwrap();
    let input = load_input(&bundle().join("golden.png"), None).unwrap();
    let mut probabilities = Vec::new();
    for gpu in [true, false] {
        let options = EngineOptions {
            gpu,
            ..Default::default()
        };
        let engine = Engine::load(&bundle(), &options).expect("the cuda build loads without a GPU");
        let has_gpu = Path::new("/dev/nvidia0").exists();
        if !has_gpu || !gpu {
            assert_eq!(engine.backend(), "cpu", "gpu requested: {gpu}");
        }
        let p = engine
            .predict(
                &input.image,
                None,
                ClinicalInput::default(),
                Explain::GradCam,
            )
            .unwrap();
        assert_eq!(p.backend, engine.backend());
        assert!(
            (p.probability as f64 - golden.probability).abs() <= golden.tolerance,
            "backend {}: {} vs golden {}",
            p.backend,
            p.probability,
            golden.probability
        );
        probabilities.push(p.probability);
    }
    if !Path::new("/dev/nvidia0").exists() {
        assert_eq!(
            probabilities[0], probabilities[1],
            "the fallback is the CPU path"
        );
    }
}
