//! The audit statistics against the field's reference tools, to 1e-6: pROC (R), scikit-learn and
//! statsmodels. Fixtures and reference values: `tests/fixtures/` (regenerate with its scripts).

use serde_json::Value;
use std::path::PathBuf;
use tirp_host::stats::{agreement, calibration, confusion, pr, roc};

const TOL: f64 = 1e-6;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

/// The columns of a fixture CSV, as strings.
fn columns(name: &str, cols: &[&str]) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(fixture(name)).unwrap();
    let headers = r.headers().unwrap().clone();
    let idx: Vec<usize> = cols
        .iter()
        .map(|c| headers.iter().position(|h| h == *c).unwrap())
        .collect();
    let mut out = vec![Vec::new(); cols.len()];
    for rec in r.records() {
        let rec = rec.unwrap();
        for (o, &i) in out.iter_mut().zip(&idx) {
            o.push(rec[i].to_string());
        }
    }
    out
}

fn floats(v: &[String]) -> Vec<f64> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

fn close(what: &str, got: f64, want: &Value) {
    let want = want
        .as_f64()
        .unwrap_or_else(|| panic!("{what}: reference missing"));
    // Shown with `--nocapture`: how far from the reference each value is.
    eprintln!("{what}: |Δ| = {:.1e}", (got - want).abs());
    assert!(
        (got - want).abs() < TOL,
        "{what}: got {got}, reference {want}"
    );
}

fn paired() -> (Vec<f64>, Vec<f64>, Vec<bool>) {
    let c = columns("roc_paired.csv", &["label", "model_a", "model_b"]);
    let labels = c[0].iter().map(|l| l == "infection").collect();
    (floats(&c[1]), floats(&c[2]), labels)
}

fn ties() -> (Vec<f64>, Vec<bool>) {
    let c = columns("roc_ties.csv", &["truth", "rating"]);
    (floats(&c[1]), c[0].iter().map(|t| t == "1").collect())
}

fn check_proc(what: &str, scores: &[f64], labels: &[bool], r: &Value) {
    let d = roc::delong(scores, labels).unwrap();
    let ci = d.ci(0.95).unwrap();
    close(&format!("{what} auc"), d.auc, &r["auc"]);
    close(
        &format!("{what} var"),
        d.variance().unwrap(),
        &r["var_delong"],
    );
    close(&format!("{what} ci_low"), ci.low, &r["ci_low"]);
    close(&format!("{what} ci_high"), ci.high, &r["ci_high"]);
    let curve = roc::roc_curve(scores, labels).unwrap();
    assert_eq!(
        curve.len() as u64,
        r["n_thresholds"].as_u64().unwrap(),
        "{what} thresholds"
    );
    let y = roc::youden(&curve).unwrap();
    let best = &r["youden"][0];
    close(
        &format!("{what} youden threshold"),
        y.threshold,
        &best["threshold"],
    );
    close(
        &format!("{what} youden sens"),
        y.sensitivity,
        &best["sensitivity"],
    );
    close(
        &format!("{what} youden spec"),
        y.specificity,
        &best["specificity"],
    );
}

#[test]
fn roc_matches_proc() {
    let r = json("reference_proc.json");
    let (a, b, l) = paired();
    check_proc("model_a", &a, &l, &r["roc_paired"]["model_a"]);
    check_proc("model_b", &b, &l, &r["roc_paired"]["model_b"]);
    let (s, tl) = ties();
    check_proc("ties", &s, &tl, &r["roc_ties"]);
}

#[test]
fn delong_test_matches_proc() {
    let r = json("reference_proc.json");
    let (a, b, l) = paired();
    let t = roc::delong_test(&a, &b, &l).unwrap();
    close("z", t.z, &r["roc_paired"]["delong_test"]["z"]);
    close("p", t.p, &r["roc_paired"]["delong_test"]["p"]);
}

#[test]
fn auc_and_average_precision_match_sklearn() {
    let r = json("reference_python.json");
    let (a, b, l) = paired();
    for (name, s) in [("model_a", &a), ("model_b", &b)] {
        close(
            name,
            roc::auc(s, &l).unwrap(),
            &r["roc_paired"][name]["auc"],
        );
        close(
            name,
            pr::average_precision(s, &l).unwrap(),
            &r["roc_paired"][name]["average_precision"],
        );
    }
    let (s, tl) = ties();
    close(
        "ties auc",
        roc::auc(&s, &tl).unwrap(),
        &r["roc_ties"]["auc"],
    );
    close(
        "ties ap",
        pr::average_precision(&s, &tl).unwrap(),
        &r["roc_ties"]["average_precision"],
    );
}

#[test]
fn fleiss_matches_statsmodels() {
    let r = &json("reference_python.json")["kappa_long"];
    let c = columns("kappa_long.csv", &["case", "call"]);
    let cats = ["tumour", "infection", "indeterminate"];
    let mut table: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
    for (case, call) in c[0].iter().zip(&c[1]) {
        table.entry(case).or_insert(vec![0; 3])[cats.iter().position(|k| k == call).unwrap()] += 1;
    }
    let rows: Vec<Vec<u64>> = table.into_values().collect();
    let f = agreement::fleiss_kappa(&rows).unwrap();
    close("fleiss kappa", f.kappa, &r["fleiss_kappa"]);
    close("fleiss se", f.se, &r["se_fnl1979_numpy"]);
    assert_eq!(f.n_cases as u64, r["n_cases"].as_u64().unwrap());
    assert_eq!(f.n_raters, r["n_raters"].as_u64().unwrap());
}

#[test]
fn cohen_and_mcnemar_match_statsmodels() {
    let r = &json("reference_python.json")["two_raters"];
    let c = columns("two_raters.csv", &["truth", "rater1", "rater2"]);
    let idx = |v: &Vec<String>| {
        v.iter()
            .map(|s| s.parse::<usize>().unwrap())
            .collect::<Vec<_>>()
    };
    let (t, r1, r2) = (idx(&c[0]), idx(&c[1]), idx(&c[2]));
    let k = agreement::cohen_kappa_calls(&r1, &r2, 2).unwrap();
    close("cohen kappa", k.kappa, &r["cohen_kappa"]);
    close("cohen se", k.se, &r["cohen_se"]);
    close("cohen se0", k.se0, &r["cohen_se0"]);
    let right = |rs: &[usize]| rs.iter().zip(&t).map(|(a, b)| a == b).collect::<Vec<_>>();
    let m = agreement::mcnemar_paired(&right(&r1), &right(&r2)).unwrap();
    assert_eq!(m.only_a, r["only_rater1_right"].as_u64().unwrap());
    assert_eq!(m.only_b, r["only_rater2_right"].as_u64().unwrap());
    close(
        "mcnemar statistic",
        m.statistic as f64,
        &r["mcnemar_statistic"],
    );
    close("mcnemar p", m.p, &r["mcnemar_p"]);
}

#[test]
fn calibration_matches_statsmodels_logit() {
    let r = &json("reference_python.json")["calibration"];
    let c = columns("calibration.csv", &["p", "y"]);
    let (p, y): (Vec<f64>, Vec<bool>) = (floats(&c[0]), c[1].iter().map(|v| v == "1").collect());
    close("brier", calibration::brier(&p, &y).unwrap(), &r["brier"]);
    let fit = calibration::calibration_fit(&p, &y).unwrap();
    close("slope", fit.slope, &r["slope"]);
    close("intercept", fit.intercept, &r["intercept"]);
}

#[test]
fn wilson_matches_statsmodels() {
    for w in json("reference_python.json")["wilson"].as_array().unwrap() {
        let (k, n) = (w["k"].as_u64().unwrap(), w["n"].as_u64().unwrap());
        let p = confusion::wilson(k, n, 0.95);
        close(&format!("wilson {k}/{n} low"), p.ci_low, &w["low"]);
        close(&format!("wilson {k}/{n} high"), p.ci_high, &w["high"]);
    }
}

/// Our stratified bootstrap and pROC's use different random numbers, so the two percentile
/// intervals agree only to Monte Carlo error: ~0.0008 (SE of the difference) at 20,000
/// replicates; 0.004 is five of those.
#[test]
fn stratified_bootstrap_agrees_with_proc_to_monte_carlo_error() {
    let r = &json("reference_proc.json")["roc_paired"]["model_a_bootstrap"];
    let (a, _, l) = paired();
    let n = r["boot_n"].as_u64().unwrap() as usize;
    let ci = roc::auc_bootstrap_ci(&a, &l, n, 1, 0.95).unwrap();
    for (got, want) in [(ci.low, &r["ci_low"]), (ci.high, &r["ci_high"])] {
        let want = want.as_f64().unwrap();
        assert!(
            (got - want).abs() < 0.004,
            "bootstrap bound {got} vs pROC {want}"
        );
    }
}
