//! The reader study of DeepTIRP: accuracy, sensitivity and specificity per reader and per
//! seniority group (Wilson CIs), Fleiss' κ within each group and among the models, and McNemar's
//! exact test of the model ensemble against each group's majority call.

use crate::stats::StatsError;
use crate::stats::agreement::{self, FleissKappa, McNemar};
use crate::stats::confusion::{Confusion, Metrics};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

/// One binary call of a reader (or a model) on a case; `positive` = called the positive class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub reader: String,
    pub group: String,
    pub case: String,
    pub positive: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    #[error("case '{case}' (reader '{reader}') has no truth label")]
    NoTruth { case: String, reader: String },
    #[error("reader '{reader}' reads case '{case}' twice")]
    Duplicate { case: String, reader: String },
    #[error(
        "group '{group}': case '{case}' has {got} reads, other cases {expected}; Fleiss' κ needs every case read by the same number of readers"
    )]
    UnequalReads {
        group: String,
        case: String,
        got: usize,
        expected: usize,
    },
    #[error("group '{group}': {source}")]
    Stats {
        group: String,
        #[source]
        source: StatsError,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct ReaderResult {
    pub reader: String,
    pub group: String,
    pub confusion: Confusion,
    #[serde(flatten)]
    pub metrics: Metrics,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupResult {
    pub group: String,
    pub readers: usize,
    /// Pooled over all reads of the group's readers.
    pub confusion: Confusion,
    #[serde(flatten)]
    pub metrics: Metrics,
    pub fleiss: Option<FleissKappa>,
    /// Ensemble against the group's majority call (cases with a tied vote left out).
    pub mcnemar_vs_ensemble: Option<McNemar>,
    pub tied_cases: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReaderStudy {
    pub n_cases: usize,
    pub readers: Vec<ReaderResult>,
    pub groups: Vec<GroupResult>,
    /// The ensemble's members (every model but `ensemble`).
    pub models: Vec<ReaderResult>,
    /// The ensemble: the model named `ensemble` if present, else the members' majority vote.
    pub ensemble: Option<ReaderResult>,
    pub models_fleiss: Option<FleissKappa>,
    /// Fleiss' κ among all readers of all groups (the study's "agreement among radiologists").
    pub readers_fleiss: Option<FleissKappa>,
}

const LEVEL: f64 = 0.95;

fn check(reads: &[Read], truth: &HashMap<String, bool>) -> Result<(), ReaderError> {
    let mut seen = std::collections::HashSet::new();
    for r in reads {
        if !truth.contains_key(&r.case) {
            return Err(ReaderError::NoTruth {
                case: r.case.clone(),
                reader: r.reader.clone(),
            });
        }
        if !seen.insert((&r.reader, &r.case)) {
            return Err(ReaderError::Duplicate {
                case: r.case.clone(),
                reader: r.reader.clone(),
            });
        }
    }
    Ok(())
}

fn result(name: &str, group: &str, reads: &[&Read], truth: &HashMap<String, bool>) -> ReaderResult {
    let calls: Vec<bool> = reads.iter().map(|r| r.positive).collect();
    let t: Vec<bool> = reads.iter().map(|r| truth[&r.case]).collect();
    let confusion = Confusion::from_calls(&calls, &t).expect("same length");
    ReaderResult {
        reader: name.to_string(),
        group: group.to_string(),
        confusion,
        metrics: confusion.metrics(LEVEL),
    }
}

fn per_reader(reads: &[Read], truth: &HashMap<String, bool>) -> Vec<ReaderResult> {
    let mut by: BTreeMap<(&str, &str), Vec<&Read>> = BTreeMap::new();
    for r in reads {
        by.entry((&r.group, &r.reader)).or_default().push(r);
    }
    by.into_iter()
        .map(|((g, name), rs)| result(name, g, &rs, truth))
        .collect()
}

/// Positive and negative calls per case.
type Votes = BTreeMap<String, (u64, u64)>;

/// Fleiss' κ of the reads, with the case → votes map it was computed from.
fn fleiss(group: &str, reads: &[&Read]) -> Result<(Option<FleissKappa>, Votes), ReaderError> {
    let mut votes = Votes::new();
    for r in reads {
        let v = votes.entry(r.case.clone()).or_default();
        if r.positive {
            v.0 += 1;
        } else {
            v.1 += 1;
        }
    }
    let raters: std::collections::HashSet<&str> = reads.iter().map(|r| r.reader.as_str()).collect();
    if raters.len() < 2 {
        return Ok((None, votes));
    }
    let expected = votes.values().next().map_or(0, |v| v.0 + v.1) as usize;
    if let Some((case, v)) = votes.iter().find(|(_, v)| (v.0 + v.1) as usize != expected) {
        return Err(ReaderError::UnequalReads {
            group: group.to_string(),
            case: case.clone(),
            got: (v.0 + v.1) as usize,
            expected,
        });
    }
    let table: Vec<Vec<u64>> = votes.values().map(|v| vec![v.0, v.1]).collect();
    let k = agreement::fleiss_kappa(&table).map_err(|source| ReaderError::Stats {
        group: group.to_string(),
        source,
    })?;
    Ok((Some(k), votes))
}

/// Majority call per case; `None` on a tie.
fn majority(votes: &Votes) -> HashMap<String, Option<bool>> {
    votes
        .iter()
        .map(|(c, &(p, n))| (c.clone(), if p == n { None } else { Some(p > n) }))
        .collect()
}

/// The whole reader study. `models` may be empty.
pub fn analyse(
    reads: &[Read],
    models: &[Read],
    truth: &HashMap<String, bool>,
) -> Result<ReaderStudy, ReaderError> {
    check(reads, truth)?;
    check(models, truth)?;
    // The members are the raters among the models; a logged ensemble is their output, not a rater.
    let members: Vec<Read> = models
        .iter()
        .filter(|r| r.reader != "ensemble")
        .cloned()
        .collect();
    let model_results = per_reader(&members, truth);
    let model_refs: Vec<&Read> = members.iter().collect();
    let (models_fleiss, model_votes) = if members.is_empty() {
        (None, Votes::new())
    } else {
        fleiss("models", &model_refs)?
    };
    // The ensemble's call per case: its own row when logged, else the models' majority
    // (a tie flags the case, the safe side for a screening aid).
    let named: Vec<&Read> = models.iter().filter(|r| r.reader == "ensemble").collect();
    let ensemble_calls: HashMap<String, bool> = if !named.is_empty() {
        named.iter().map(|r| (r.case.clone(), r.positive)).collect()
    } else {
        model_votes
            .iter()
            .map(|(c, &(p, n))| (c.clone(), p >= n))
            .collect()
    };
    let ensemble = (!ensemble_calls.is_empty()).then(|| {
        let reads: Vec<Read> = ensemble_calls
            .iter()
            .map(|(c, &p)| Read {
                reader: "ensemble".into(),
                group: "models".into(),
                case: c.clone(),
                positive: p,
            })
            .collect();
        result(
            "ensemble",
            "models",
            &reads.iter().collect::<Vec<_>>(),
            truth,
        )
    });

    let mut by_group: BTreeMap<&str, Vec<&Read>> = BTreeMap::new();
    for r in reads {
        by_group.entry(&r.group).or_default().push(r);
    }
    let mut groups = Vec::new();
    for (g, rs) in by_group {
        let base = result(g, g, &rs, truth);
        let readers = rs
            .iter()
            .map(|r| &r.reader)
            .collect::<std::collections::HashSet<_>>()
            .len();
        let (fk, votes) = fleiss(g, &rs)?;
        let maj = majority(&votes);
        let tied_cases = maj.values().filter(|m| m.is_none()).count();
        let mcnemar = (!ensemble_calls.is_empty()).then(|| {
            let (mut ens_right, mut grp_right) = (Vec::new(), Vec::new());
            for (case, m) in &maj {
                if let (Some(m), Some(&e)) = (m, ensemble_calls.get(case)) {
                    ens_right.push(e == truth[case]);
                    grp_right.push(*m == truth[case]);
                }
            }
            agreement::mcnemar_paired(&ens_right, &grp_right).expect("same length")
        });
        groups.push(GroupResult {
            group: g.to_string(),
            readers,
            confusion: base.confusion,
            metrics: base.metrics,
            fleiss: fk,
            mcnemar_vs_ensemble: mcnemar,
            tied_cases,
        });
    }
    let all: Vec<&Read> = reads.iter().collect();
    let (readers_fleiss, _) = fleiss("all readers", &all)?;
    let cases: std::collections::HashSet<&str> = reads
        .iter()
        .chain(models)
        .map(|r| r.case.as_str())
        .collect();
    Ok(ReaderStudy {
        n_cases: cases.len(),
        readers: per_reader(reads, truth),
        groups,
        models: model_results,
        ensemble,
        models_fleiss,
        readers_fleiss,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(reader: &str, group: &str, case: &str, positive: bool) -> Read {
        Read {
            reader: reader.into(),
            group: group.into(),
            case: case.into(),
            positive,
        }
    }

    #[test]
    fn small_study() {
        let truth: HashMap<String, bool> = [("a", true), ("b", false), ("c", true), ("d", false)]
            .iter()
            .map(|(c, t)| (c.to_string(), *t))
            .collect();
        let mut reads = Vec::new();
        for (reader, calls) in [
            ("j1", [true, true, false, false]),
            ("j2", [true, false, false, false]),
            ("j3", [true, true, true, false]),
        ] {
            for (case, call) in ["a", "b", "c", "d"].iter().zip(calls) {
                reads.push(read(reader, "junior", case, call));
            }
        }
        let models: Vec<Read> = ["a", "b", "c", "d"]
            .iter()
            .zip([true, false, true, false])
            .map(|(c, p)| read("ensemble", "models", c, p))
            .collect();
        let s = analyse(&reads, &models, &truth).unwrap();
        assert_eq!(s.readers.len(), 3);
        let g = &s.groups[0];
        assert_eq!(g.metrics.accuracy.k, 8);
        assert_eq!(g.metrics.accuracy.n, 12);
        // Majority: a+, b+, c−, d− → right on a, d; the ensemble is right on all four.
        let m = g.mcnemar_vs_ensemble.unwrap();
        assert_eq!((m.only_a, m.only_b), (2, 0));
        assert_eq!(s.ensemble.as_ref().unwrap().metrics.accuracy.k, 4);
        assert!(
            s.models.is_empty() && s.models_fleiss.is_none(),
            "the ensemble is no member"
        );

        reads.pop();
        let e = analyse(&reads, &models, &truth).unwrap_err().to_string();
        assert!(e.contains("case 'd' has 2 reads"), "{e}");
        reads.push(read("j9", "junior", "zz", true));
        assert!(matches!(
            analyse(&reads, &models, &truth),
            Err(ReaderError::NoTruth { .. })
        ));
    }
}
