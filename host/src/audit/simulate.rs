//! A seeded, simulated reader panel over a cohort's test cases, so that the DeepTIRP reader
//! comparison can be shown end to end without real reads. Real reads are the hospital's.
//!
//! Model: reader r of group g calls case c correctly with probability
//! σ(s_g + δ_r − d_c), where d_c ~ N(0, τ²) is the case's difficulty, shared by all readers
//! (that sharing is what makes readers agree beyond the truth), and δ_r spreads the readers of a
//! group. s_g is solved so the group's expected accuracy on these very cases equals its target,
//! and τ so the expected Fleiss κ of the whole panel equals the target κ.

use super::readers::Read;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use std::collections::BTreeMap;
use tirp_models::cohort::clinical::Label;
use tirp_models::table::{LabelTable, Split};

/// One group of the panel: its name, how many readers, and the accuracy it should land near.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub name: String,
    pub readers: usize,
    pub accuracy: f64,
}

/// The DeepTIRP study's radiologists: junior 75.8%, mid-level 80.2%, senior 83.6% accuracy,
/// Fleiss κ 0.401 among them.
pub fn deeptirp_radiologists() -> (Vec<GroupSpec>, f64) {
    let g = |name: &str, accuracy| GroupSpec {
        name: name.into(),
        readers: 3,
        accuracy,
    };
    (
        vec![
            g("junior", 0.758),
            g("mid-level", 0.802),
            g("senior", 0.836),
        ],
        0.401,
    )
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Reader offsets within a group: evenly spread in [−0.3, 0.3].
fn offsets(n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![0.0];
    }
    (0..n)
        .map(|i| -0.3 + 0.6 * i as f64 / (n - 1) as f64)
        .collect()
}

/// Bisection of an increasing function for f(x) = target on [lo, hi].
fn solve(mut lo: f64, mut hi: f64, target: f64, f: impl Fn(f64) -> f64) -> f64 {
    for _ in 0..80 {
        let mid = 0.5 * (lo + hi);
        if f(mid) < target {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Per-group skills s_g for difficulties `d`.
fn skills(groups: &[GroupSpec], d: &[f64]) -> Vec<f64> {
    groups
        .iter()
        .map(|g| {
            let off = offsets(g.readers);
            solve(-10.0, 10.0, g.accuracy, |s| {
                let total: f64 = d
                    .iter()
                    .flat_map(|&dc| off.iter().map(move |&o| sigmoid(s + o - dc)))
                    .sum();
                total / (d.len() * off.len()) as f64
            })
        })
        .collect()
}

/// Expected Fleiss κ of the panel given correctness probabilities q[case][reader].
fn expected_kappa(q: &[Vec<f64>], truth: &[bool]) -> f64 {
    let n = q[0].len() as f64;
    let mut p_bar = 0.0;
    let mut p_pos = 0.0;
    for (qc, &t) in q.iter().zip(truth) {
        // Expected share of agreeing ordered pairs of distinct readers.
        let mut agree = 0.0;
        for (i, &a) in qc.iter().enumerate() {
            for (j, &b) in qc.iter().enumerate() {
                if i != j {
                    agree += a * b + (1.0 - a) * (1.0 - b);
                }
            }
        }
        p_bar += agree / (n * (n - 1.0));
        p_pos += qc.iter().map(|&a| if t { a } else { 1.0 - a }).sum::<f64>() / n;
    }
    let (p_bar, p_pos) = (p_bar / q.len() as f64, p_pos / q.len() as f64);
    let pe = p_pos * p_pos + (1.0 - p_pos) * (1.0 - p_pos);
    (p_bar - pe) / (1.0 - pe)
}

fn probabilities(groups: &[GroupSpec], d: &[f64]) -> Vec<Vec<f64>> {
    let s = skills(groups, d);
    d.iter()
        .map(|&dc| {
            groups
                .iter()
                .zip(&s)
                .flat_map(|(g, &sg)| {
                    offsets(g.readers)
                        .into_iter()
                        .map(move |o| sigmoid(sg + o - dc))
                })
                .collect()
        })
        .collect()
}

/// Simulates the panel's calls on `cases` (case key, truth = positive class?).
pub fn simulate_panel(
    cases: &[(String, bool)],
    groups: &[GroupSpec],
    kappa: f64,
    seed: u64,
) -> Vec<Read> {
    if cases.is_empty() || groups.is_empty() {
        return Vec::new();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let z: Vec<f64> = (0..cases.len())
        .map(|_| Normal::new(0.0, 1.0).expect("unit normal").sample(&mut rng))
        .collect();
    let truth: Vec<bool> = cases.iter().map(|c| c.1).collect();
    let scaled = |tau: f64| z.iter().map(|v| v * tau).collect::<Vec<_>>();
    let tau = solve(0.0, 6.0, kappa, |tau| {
        expected_kappa(&probabilities(groups, &scaled(tau)), &truth)
    });
    let q = probabilities(groups, &scaled(tau));
    let names: Vec<(String, String)> = groups
        .iter()
        .flat_map(|g| (1..=g.readers).map(move |i| (g.name.clone(), format!("{}-{i}", g.name))))
        .collect();
    let mut reads = Vec::with_capacity(cases.len() * names.len());
    use rand::Rng;
    for ((case, t), qc) in cases.iter().zip(&q) {
        for ((group, reader), &p) in names.iter().zip(qc) {
            let correct = rng.random_bool(p);
            reads.push(Read {
                reader: reader.clone(),
                group: group.clone(),
                case: case.clone(),
                positive: if correct { *t } else { !*t },
            });
        }
    }
    reads
}

/// The reader-study cases of a cohort split: one per patient (case key = patient id, sorted),
/// truth = infection. A patient whose radiographs carry different labels is an error.
pub fn cohort_cases(table: &LabelTable, split: Split) -> Result<Vec<(String, bool)>, String> {
    let mut cases: BTreeMap<&str, Label> = BTreeMap::new();
    for r in table.records.iter().filter(|r| r.split == Some(split)) {
        if let Some(prev) = cases.insert(&r.patient_id, r.label)
            && prev != r.label
        {
            return Err(format!(
                "patient {} has radiographs labelled {prev} and {}",
                r.patient_id, r.label
            ));
        }
    }
    if cases.is_empty() {
        return Err(format!("the table has no patients in the {split} split"));
    }
    Ok(cases
        .into_iter()
        .map(|(k, l)| (k.to_string(), l == Label::Infection))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::readers::analyse;
    use std::collections::HashMap;

    #[test]
    fn panel_lands_near_the_study() {
        let cases: Vec<(String, bool)> = (0..600).map(|i| (format!("c{i}"), i % 3 == 0)).collect();
        let (groups, kappa) = deeptirp_radiologists();
        let reads = simulate_panel(&cases, &groups, kappa, 7);
        assert_eq!(reads.len(), 600 * 9);
        assert_eq!(reads, simulate_panel(&cases, &groups, kappa, 7), "seeded");
        let truth: HashMap<String, bool> = cases.iter().cloned().collect();
        let s = analyse(&reads, &[], &truth).unwrap();
        for (g, spec) in s.groups.iter().zip(["junior", "mid-level", "senior"]) {
            let target = groups.iter().find(|x| x.name == spec).unwrap().accuracy;
            let got = s
                .groups
                .iter()
                .find(|x| x.group == spec)
                .unwrap()
                .metrics
                .accuracy
                .value;
            assert!(
                (got - target).abs() < 0.03,
                "{}: {got} vs {target}",
                g.group
            );
        }
        // κ over all nine radiologists.
        let all: Vec<Read> = reads
            .iter()
            .map(|r| Read {
                group: "all".into(),
                ..r.clone()
            })
            .collect();
        let k = analyse(&all, &[], &truth).unwrap().groups[0]
            .fleiss
            .unwrap()
            .kappa;
        assert!((k - kappa).abs() < 0.05, "κ {k}");
    }

    #[test]
    fn cases_are_patients_of_the_split() {
        use tirp_models::table::{Record, TableFormat};
        let rec = |patient: &str, label, split| Record {
            path: format!("{patient}.png").into(),
            patient_id: patient.into(),
            label,
            age: None,
            sex: None,
            site: None,
            centre: None,
            split: Some(split),
            roi: None,
            photometric: None,
            signs: None,
        };
        let mut table = LabelTable {
            format: TableFormat::Cohort,
            records: vec![
                rec("p2", Label::Infection, Split::Test),
                rec("p1", Label::Pbt, Split::Test),
                rec("p2", Label::Infection, Split::Test),
                rec("p3", Label::Pbt, Split::Train),
            ],
        };
        let cases = cohort_cases(&table, Split::Test).unwrap();
        assert_eq!(
            cases,
            vec![("p1".to_string(), false), ("p2".to_string(), true)]
        );
        assert!(
            cohort_cases(&table, Split::External)
                .unwrap_err()
                .contains("no patients")
        );
        table.records.push(rec("p1", Label::Infection, Split::Test));
        assert!(
            cohort_cases(&table, Split::Test)
                .unwrap_err()
                .contains("patient p1")
        );
    }
}
