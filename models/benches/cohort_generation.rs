//! Cohort generation speed: radiographs per second at 512×512 on this machine's cores.
//! `cargo bench -p tirp-models --bench cohort_generation [-- PATIENTS]`
//!
//! Prints wall-clock throughput and CPU time per radiograph: on a shared machine the CPU
//! time holds up under load, and cores / CPU-time is the throughput of a quiet machine.

use tirp_models::cohort::{CohortConfig, generate};

/// CPU seconds (user + system) this process has used, from /proc (Linux only).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() {
    let patients = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(300);
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = CohortConfig {
        patients,
        ..Default::default()
    };
    let threads = rayon::current_num_threads();
    let cpu0 = cpu_seconds();
    let s = generate(&cfg, dir.path(), &|_, _| {}).expect("generation");
    let cpu = cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
    println!(
        "cohort_generation: {} patients, {} radiographs {}x{} in {:.2} s = {:.1} radiographs/s ({} threads)",
        s.patients,
        s.images,
        cfg.image_size,
        cfg.image_size,
        s.seconds,
        s.images_per_second,
        threads
    );
    if let Some(cpu) = cpu {
        let per = cpu / s.images as f64;
        println!(
            "cohort_generation: {:.1} CPU-ms per radiograph -> {:.0} radiographs/s on {} idle cores",
            per * 1000.0,
            threads as f64 / per,
            threads
        );
    }
}
