//! Cohort generation speed: radiographs per second at 512×512 on this machine's cores.
//! `cargo bench -p tirp-models --bench cohort_generation [-- PATIENTS]`

use tirp_models::cohort::{CohortConfig, generate};

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
    let s = generate(&cfg, dir.path(), &|_, _| {}).expect("generation");
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
}
