//! The audit report: one self-contained HTML file (inline SVG plots drawn with plotters, no
//! scripts, no external resources) for a hospital's QA committee.

use super::input::{CsvTable, InputError};
use crate::stats::calibration::{self, CalibrationFit, ReliabilityBin};
use crate::stats::confusion::{Confusion, Metrics, Proportion};
use crate::stats::roc::{self, AucCi, DeLongTest, RocPoint};
use crate::stats::{StatsError, drift, pr};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// One prediction joined with its truth label.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub case: String,
    pub model: String,
    pub score: f64,
    pub centre: String,
    pub model_version: String,
    pub device: String,
    /// ISO 8601 (may be empty when unknown).
    pub time: String,
    pub truth: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{what}: {source}")]
    Stats {
        what: String,
        #[source]
        source: StatsError,
    },
    #[error("no predictions with a truth label to report on")]
    Empty,
    #[error("drawing {what}: {message}")]
    Plot { what: &'static str, message: String },
}

type Result<T> = std::result::Result<T, ReportError>;

pub struct Options {
    pub threshold: f64,
    pub seed: u64,
    /// Where the data came from, printed in the header.
    pub source: String,
    pub positive: String,
}

pub struct Report {
    pub html: String,
    pub summary: Value,
    pub human: String,
}

/// The case key column: the device log's pseudonymous `study_key`, or a plain `case`.
pub fn key_column(t: &CsvTable) -> &'static str {
    if t.has_column("study_key") {
        "study_key"
    } else {
        "case"
    }
}

/// Predictions CSV (case or study_key, model, score [, centre, model_version, device, time]) joined with a
/// truth CSV (case, label). Every prediction needs a truth label.
pub fn load_csv(predictions: &Path, truth: &Path, positive: &str) -> Result<Vec<Scored>> {
    let tt = CsvTable::read(truth)?;
    let labels = tt.binary("label", positive, None)?;
    let truth_of = tt.unique_map(key_column(&tt), &labels)?;
    let t = CsvTable::read(predictions)?;
    let key = key_column(&t);
    let (cases, models, scores) = (t.strings(key)?, t.strings("model")?, t.floats("score")?);
    let optional = |c: &str, default: &str| -> Result<Vec<String>> {
        Ok(if t.has_column(c) {
            t.strings(c)?
        } else {
            vec![default.to_string(); t.len()]
        })
    };
    let (centres, versions) = (
        optional("centre", "all")?,
        optional("model_version", "unknown")?,
    );
    let (devices, times) = (optional("device", "unknown")?, optional("time", "")?);
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(t.len());
    for i in 0..t.len() {
        let truth = *truth_of.get(&cases[i]).ok_or_else(|| {
            t.bad(
                i,
                key,
                format!(
                    "case '{}' has no truth label in {}",
                    cases[i],
                    truth.display()
                ),
            )
        })?;
        if !seen.insert((&cases[i], &models[i], &versions[i])) {
            return Err(t
                .bad(
                    i,
                    key,
                    format!("case '{}' scored twice by model '{}'", cases[i], models[i]),
                )
                .into());
        }
        out.push(Scored {
            case: cases[i].clone(),
            model: models[i].clone(),
            score: scores[i],
            centre: centres[i].clone(),
            model_version: versions[i].clone(),
            device: devices[i].clone(),
            time: times[i].clone(),
            truth,
        });
    }
    Ok(out)
}

/// Adds the ensemble as the mean of the members' scores per case, unless it was logged.
fn with_ensemble(rows: &[Scored]) -> (Vec<Scored>, bool) {
    if rows.iter().any(|r| r.model == "ensemble") {
        return (rows.to_vec(), true);
    }
    let mut by_case: BTreeMap<(&str, &str), (f64, usize, &Scored)> = BTreeMap::new();
    for r in rows {
        let e = by_case
            .entry((&r.case, &r.model_version))
            .or_insert((0.0, 0, r));
        e.0 += r.score;
        e.1 += 1;
    }
    let mut all = rows.to_vec();
    all.extend(by_case.values().map(|(s, n, r)| Scored {
        model: "ensemble".into(),
        score: s / *n as f64,
        ..(*r).clone()
    }));
    (all, false)
}

struct ModelEval {
    name: String,
    n_pos: usize,
    n_neg: usize,
    ci: AucCi,
    ap: f64,
    pr: Vec<pr::PrPoint>,
    curve: Vec<RocPoint>,
    band: Vec<(f64, f64, f64)>,
    confusion: Confusion,
    metrics: Metrics,
    brier: Option<f64>,
    fit: Option<CalibrationFit>,
    bins: Vec<ReliabilityBin>,
    scores: Vec<f64>,
    labels: Vec<bool>,
}

fn stats_err(what: &str) -> impl FnOnce(StatsError) -> ReportError + '_ {
    move |source| ReportError::Stats {
        what: what.to_string(),
        source,
    }
}

fn evaluate(name: &str, rows: &[&Scored], opts: &Options) -> Result<ModelEval> {
    let scores: Vec<f64> = rows.iter().map(|r| r.score).collect();
    let labels: Vec<bool> = rows.iter().map(|r| r.truth).collect();
    let what = format!("model '{name}'");
    let d = roc::delong(&scores, &labels).map_err(stats_err(&what))?;
    let ci = d.ci(0.95).map_err(stats_err(&what))?;
    let specs: Vec<f64> = (0..=50).map(|i| i as f64 / 50.0).collect();
    let band = roc::sensitivity_band(&scores, &labels, &specs, 300, opts.seed, 0.95)
        .map_err(stats_err(&what))?;
    let confusion =
        Confusion::from_scores(&scores, &labels, opts.threshold).map_err(stats_err(&what))?;
    let probabilities = scores.iter().all(|s| (0.0..=1.0).contains(s));
    Ok(ModelEval {
        name: name.to_string(),
        n_pos: labels.iter().filter(|&&l| l).count(),
        n_neg: labels.iter().filter(|&&l| !l).count(),
        ci,
        ap: pr::average_precision(&scores, &labels).map_err(stats_err(&what))?,
        pr: pr::pr_curve(&scores, &labels).map_err(stats_err(&what))?,
        curve: roc::roc_curve(&scores, &labels).map_err(stats_err(&what))?,
        band,
        metrics: confusion.metrics(0.95),
        confusion,
        brier: probabilities
            .then(|| calibration::brier(&scores, &labels).ok())
            .flatten(),
        fit: probabilities
            .then(|| calibration::calibration_fit(&scores, &labels).ok())
            .flatten(),
        bins: if probabilities {
            calibration::reliability(&scores, &labels, 10).unwrap_or_default()
        } else {
            Vec::new()
        },
        scores,
        labels,
    })
}

/// DeLong's paired test of a member against the ensemble on the cases both scored.
fn vs_ensemble(by_model: &BTreeMap<&str, Vec<&Scored>>, name: &str) -> Option<DeLongTest> {
    if name == "ensemble" {
        return None;
    }
    let ens: BTreeMap<(&str, &str), f64> = by_model["ensemble"]
        .iter()
        .map(|r| ((r.case.as_str(), r.model_version.as_str()), r.score))
        .collect();
    let (mut a, mut b, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for r in &by_model[name] {
        if let Some(&e) = ens.get(&(r.case.as_str(), r.model_version.as_str())) {
            a.push(r.score);
            b.push(e);
            labels.push(r.truth);
        }
    }
    roc::delong_test(&a, &b, &labels).ok()
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];
const ENSEMBLE: RGBColor = RGBColor(200, 30, 45);

fn colour(i: usize, name: &str) -> RGBColor {
    if name == "ensemble" {
        ENSEMBLE
    } else {
        PALETTE[i % PALETTE.len()]
    }
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type PlotResult<T> = std::result::Result<T, DrawingAreaErrorKind<std::io::Error>>;

/// The frame every chart shares: white canvas, caption, light grid, axis titles.
fn frame<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    (x_desc, y_desc): (&str, &str),
) -> PlotResult<Chart<'a, 'b>> {
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(52)
        .build_cartesian_2d(x, y)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .light_line_style(RGBColor(246, 246, 246))
        .bold_line_style(RGBColor(220, 220, 220))
        .axis_desc_style(("sans-serif", 14))
        .label_style(("sans-serif", 12))
        .draw()?;
    Ok(chart)
}

fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>, at: SeriesLabelPosition) -> PlotResult<()> {
    chart
        .configure_series_labels()
        .position(at)
        .background_style(WHITE.mix(0.9))
        .border_style(RGBColor(180, 180, 180))
        .label_font(("sans-serif", 13))
        .draw()
}

/// The chance line of a ROC plot, the perfect-calibration line of a calibration plot.
fn diagonal(chart: &mut Chart) -> PlotResult<()> {
    chart.draw_series(LineSeries::new(
        vec![(0.0, 0.0), (1.0, 1.0)],
        RGBColor(170, 170, 170),
    ))?;
    Ok(())
}

/// Draws into a fresh SVG of `size` and returns it ready to inline.
fn svg(
    size: (u32, u32),
    what: &'static str,
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> PlotResult<()>,
) -> Result<String> {
    let mut buf = String::new();
    {
        let root = SVGBackend::with_string(&mut buf, size).into_drawing_area();
        draw(&root)
            .and_then(|()| root.present())
            .map_err(|e| ReportError::Plot {
                what,
                message: e.to_string(),
            })?;
    }
    // Strip the XML prolog so the SVG can be inlined in HTML.
    Ok(match buf.find("<svg") {
        Some(i) => buf[i..].to_string(),
        None => buf,
    })
}

fn roc_svg(evals: &[ModelEval]) -> Result<String> {
    svg((560, 520), "the ROC curves", |root| {
        let caption = "ROC curves (shaded: 95% bootstrap band of sensitivity)";
        let mut chart = frame(
            root,
            caption,
            0.0..1.0,
            0.0..1.0,
            ("1 − specificity", "sensitivity"),
        )?;
        diagonal(&mut chart)?;
        for (i, m) in evals.iter().enumerate() {
            let mut poly: Vec<(f64, f64)> =
                m.band.iter().map(|&(sp, _, hi)| (1.0 - sp, hi)).collect();
            poly.extend(m.band.iter().rev().map(|&(sp, lo, _)| (1.0 - sp, lo)));
            chart.draw_series(std::iter::once(Polygon::new(
                poly,
                colour(i, &m.name).mix(0.12),
            )))?;
        }
        for (i, m) in evals.iter().enumerate() {
            let c = colour(i, &m.name);
            let pts: Vec<(f64, f64)> = m
                .curve
                .iter()
                .rev()
                .map(|p| (1.0 - p.specificity, p.sensitivity))
                .collect();
            let width = if m.name == "ensemble" { 3 } else { 2 };
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(width)))?
                .label(format!(
                    "{}  AUC {:.3} ({:.3}–{:.3})",
                    m.name, m.ci.auc, m.ci.low, m.ci.high
                ))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3))
                });
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight)
    })
}

fn confusion_svg(m: &ModelEval, positive: &str) -> Result<String> {
    svg((300, 270), "a confusion matrix", |root| {
        root.fill(&WHITE)?;
        let c = &m.confusion;
        // Rows: truth positive / negative; columns: flagged / not flagged.
        let cells = [[c.tp, c.fn_], [c.fp, c.tn]];
        let row_totals = [c.tp + c.fn_, c.fp + c.tn];
        let font = ("sans-serif", 13).into_font();
        let (x0, y0, w) = (90, 50, 95);
        root.draw(&Text::new(
            m.name.clone(),
            (10, 8),
            ("sans-serif", 15).into_font().style(FontStyle::Bold),
        ))?;
        root.draw(&Text::new("flagged", (x0 + 20, y0 - 20), font.clone()))?;
        root.draw(&Text::new(
            "not flagged",
            (x0 + w + 10, y0 - 20),
            font.clone(),
        ))?;
        let row_names = [positive.to_string(), format!("not {positive}")];
        for (r, row) in cells.iter().enumerate() {
            root.draw(&Text::new(
                row_names[r].clone(),
                (6, y0 + r as i32 * w + w / 2 - 6),
                font.clone(),
            ))?;
            for (k, &v) in row.iter().enumerate() {
                let share = if row_totals[r] == 0 {
                    0.0
                } else {
                    v as f64 / row_totals[r] as f64
                };
                // Correct cells in blue, errors in red, intensity by row share.
                let base = if r == k {
                    RGBColor(33, 102, 172)
                } else {
                    RGBColor(178, 24, 43)
                };
                let (x, y) = (x0 + k as i32 * w, y0 + r as i32 * w);
                root.draw(&Rectangle::new(
                    [(x, y), (x + w - 2, y + w - 2)],
                    base.mix(0.08 + 0.8 * share).filled(),
                ))?;
                let ink = if share > 0.5 { WHITE } else { BLACK };
                root.draw(&Text::new(
                    v.to_string(),
                    (x + 30, y + 30),
                    ("sans-serif", 20).into_font().color(&ink),
                ))?;
                root.draw(&Text::new(
                    format!("{:.1}%", 100.0 * share),
                    (x + 30, y + 56),
                    ("sans-serif", 12).into_font().color(&ink),
                ))?;
            }
        }
        Ok(())
    })
}

fn calibration_svg(evals: &[ModelEval]) -> Result<String> {
    svg((560, 520), "the calibration plot", |root| {
        let caption = "Calibration (deciles of predicted probability)";
        let axes = ("mean predicted probability", "observed fraction positive");
        let mut chart = frame(root, caption, 0.0..1.0, 0.0..1.0, axes)?;
        diagonal(&mut chart)?;
        for (i, m) in evals.iter().enumerate().filter(|(_, m)| !m.bins.is_empty()) {
            let c = colour(i, &m.name);
            let pts: Vec<(f64, f64)> = m
                .bins
                .iter()
                .map(|b| (b.mean_predicted, b.observed))
                .collect();
            let label = match m.fit {
                Some(f) => format!(
                    "{}  slope {:.2}, intercept {:.2}",
                    m.name, f.slope, f.intercept
                ),
                None => m.name.clone(),
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3))
                });
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, c.filled())))?;
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// Precision–recall curves as steps (no interpolation, the curve average precision sums over),
/// with the prevalence as the no-skill line.
fn pr_svg(evals: &[ModelEval], prevalence: f64) -> Result<String> {
    svg((560, 360), "the precision–recall curves", |root| {
        let caption = "Precision–recall (AP = average precision)";
        let mut chart = frame(
            root,
            caption,
            0.0..1.0,
            0.0..1.02,
            ("recall (sensitivity)", "precision (PPV)"),
        )?;
        chart.draw_series(LineSeries::new(
            vec![(0.0, prevalence), (1.0, prevalence)],
            RGBColor(170, 170, 170),
        ))?;
        for (i, m) in evals.iter().enumerate() {
            let c = colour(i, &m.name);
            let mut pts = vec![(0.0, m.pr.first().map_or(1.0, |p| p.precision))];
            for w in m.pr.windows(2) {
                pts.push((w[0].recall, w[1].precision));
                pts.push((w[1].recall, w[1].precision));
            }
            if let Some(first) = m.pr.first() {
                pts.insert(1, (first.recall, first.precision));
            }
            chart
                .draw_series(LineSeries::new(
                    pts,
                    c.stroke_width(if m.name == "ensemble" { 3 } else { 2 }),
                ))?
                .label(format!("{}  AP {:.3}", m.name, m.ap))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3))
                });
        }
        legend(&mut chart, SeriesLabelPosition::LowerLeft)
    })
}

fn histogram_svg(m: &ModelEval, positive: &str, threshold: f64) -> Result<String> {
    const BINS: usize = 20;
    let (lo, hi) = m
        .scores
        .iter()
        .fold((0.0f64, 1.0f64), |(a, b), &s| (a.min(s), b.max(s)));
    let width = (hi - lo) / BINS as f64;
    let mut counts = [[0usize; BINS]; 2];
    for (&s, &l) in m.scores.iter().zip(&m.labels) {
        let b = (((s - lo) / width) as usize).min(BINS - 1);
        counts[usize::from(!l)][b] += 1;
    }
    let totals = [m.n_pos.max(1) as f64, m.n_neg.max(1) as f64];
    let ymax = (0..2)
        .flat_map(|c| counts[c].iter().map(move |&v| v as f64 / totals[c]))
        .fold(0.0, f64::max)
        * 1.1;
    svg((560, 360), "the score histogram", |root| {
        let caption = format!("{}: score distribution by true class", m.name);
        let mut chart = frame(
            root,
            &caption,
            lo..hi,
            0.0..ymax.max(0.01),
            ("score", "share of class"),
        )?;
        let names = [positive.to_string(), format!("not {positive}")];
        let colours = [RGBColor(178, 24, 43), RGBColor(33, 102, 172)];
        for c in 0..2 {
            let col = colours[c];
            chart
                .draw_series((0..BINS).map(|b| {
                    let x = lo + b as f64 * width;
                    Rectangle::new(
                        [(x, 0.0), (x + width, counts[c][b] as f64 / totals[c])],
                        col.mix(0.45).filled(),
                    )
                }))?
                .label(format!(
                    "{} (n = {})",
                    names[c],
                    counts[c].iter().sum::<usize>()
                ))
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 14, y + 5)], col.mix(0.6).filled())
                });
        }
        chart
            .draw_series(LineSeries::new(
                vec![(threshold, 0.0), (threshold, ymax)],
                BLACK.stroke_width(2),
            ))?
            .label(format!("operating threshold {threshold}"))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 14, y)], BLACK.stroke_width(2)));
        legend(&mut chart, SeriesLabelPosition::UpperMiddle)
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn prop(p: &Proportion) -> String {
    if p.n == 0 {
        return "–".into();
    }
    format!(
        "{:.1}%<br><span class=ci>{:.1}–{:.1} ({}/{})</span>",
        100.0 * p.value,
        100.0 * p.ci_low,
        100.0 * p.ci_high,
        p.k,
        p.n
    )
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.digits$}"))
}

/// One table row of subgroup results (AUC with DeLong CI, or a note when not estimable).
fn subgroup_rows(
    title: &str,
    groups: &BTreeMap<String, Vec<&Scored>>,
    threshold: f64,
) -> (String, Vec<Value>) {
    let mut html = format!(
        "<table><tr><th>{}</th><th>cases</th><th>positive</th><th>AUC (95% CI)</th><th>sensitivity</th><th>specificity</th><th>accuracy</th></tr>",
        esc(title)
    );
    let mut json_rows = Vec::new();
    for (name, rows) in groups {
        let scores: Vec<f64> = rows.iter().map(|r| r.score).collect();
        let labels: Vec<bool> = rows.iter().map(|r| r.truth).collect();
        let pos = labels.iter().filter(|&&l| l).count();
        let auc = roc::auc_delong_ci(&scores, &labels, 0.95);
        let m = Confusion::from_scores(&scores, &labels, threshold).map(|c| c.metrics(0.95));
        let auc_cell = match &auc {
            Ok(ci) => format!(
                "{:.3} <span class=ci>({:.3}–{:.3})</span>",
                ci.auc, ci.low, ci.high
            ),
            Err(e) => format!(
                "<span class=ci>not estimable: {}</span>",
                esc(&e.to_string())
            ),
        };
        let cells = match &m {
            Ok(m) => format!(
                "<td>{}</td><td>{}</td><td>{}</td>",
                prop(&m.sensitivity),
                prop(&m.specificity),
                prop(&m.accuracy)
            ),
            Err(_) => "<td>–</td><td>–</td><td>–</td>".into(),
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>{}</tr>",
            esc(name),
            rows.len(),
            pos,
            auc_cell,
            cells
        );
        json_rows.push(json!({
            "name": name, "n": rows.len(), "n_pos": pos,
            "auc": auc.as_ref().ok().map(|c| c.auc), "ci_low": auc.as_ref().ok().map(|c| c.low),
            "ci_high": auc.as_ref().ok().map(|c| c.high),
            "sensitivity": m.as_ref().ok().map(|m| m.sensitivity.value),
            "specificity": m.as_ref().ok().map(|m| m.specificity.value),
        }));
    }
    html.push_str("</table>");
    (html, json_rows)
}

const STYLE: &str = "body{font-family:'DejaVu Sans',Helvetica,Arial,sans-serif;color:#1d2733;margin:32px auto;max-width:1180px;line-height:1.4}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;border-bottom:2px solid #1d4f7a;padding-bottom:4px;margin-top:34px;color:#1d4f7a}
.meta{color:#4a5a6a;font-size:14px}.meta b{color:#1d2733}
table{border-collapse:collapse;font-size:13.5px;margin:10px 0;width:100%}th,td{border:1px solid #c9d3dd;padding:5px 8px;text-align:right;vertical-align:top}
th{background:#eef3f8;text-align:center}td:first-child,th:first-child{text-align:left}.ci{color:#5b6b7b;font-size:12px}
.plots{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}.plots svg{border:1px solid #dde4ea}
.note{font-size:12.5px;color:#4a5a6a;max-width:1100px}.stable{color:#1a7f37}.moderate{color:#b35900}.major{color:#b3001b;font-weight:bold}";

/// Builds the report over all predictions (each model, plus the ensemble).
pub fn build(rows: &[Scored], opts: &Options) -> Result<Report> {
    if rows.is_empty() {
        return Err(ReportError::Empty);
    }
    let (rows, logged_ensemble) = with_ensemble(rows);
    let mut by_model: BTreeMap<&str, Vec<&Scored>> = BTreeMap::new();
    for r in &rows {
        by_model.entry(&r.model).or_default().push(r);
    }
    // Members first, the ensemble last (drawn on top).
    let mut names: Vec<&str> = by_model
        .keys()
        .copied()
        .filter(|n| *n != "ensemble")
        .collect();
    names.push("ensemble");
    let evals = names
        .iter()
        .map(|n| evaluate(n, &by_model[n], opts))
        .collect::<Result<Vec<_>>>()?;
    let ens_rows = &by_model["ensemble"];
    let ens = evals.last().expect("ensemble evaluated");
    let cases: BTreeSet<&str> = rows.iter().map(|r| r.case.as_str()).collect();
    let times: BTreeSet<&str> = rows
        .iter()
        .map(|r| r.time.as_str())
        .filter(|t| !t.is_empty())
        .collect();
    let period = match (times.first(), times.last()) {
        (Some(a), Some(b)) => format!("{} to {}", &a[..a.len().min(10)], &b[..b.len().min(10)]),
        _ => "not recorded".into(),
    };

    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>DeepTIRP Edge performance audit</title><style>{STYLE}</style></head><body>
<h1>DeepTIRP Edge — performance audit</h1>
<p class=meta>Primary bone tumour vs bone infection; positive class: <b>{}</b>. Source: <b>{}</b>. Period: <b>{}</b>.<br>
<b>{}</b> cases ({} positive, {} negative), {} model(s) and the ensemble{}. Operating threshold: <b>{}</b> (score ≥ threshold is flagged).</p>",
        esc(&opts.positive),
        esc(&opts.source),
        esc(&period),
        cases.len(),
        ens.n_pos,
        ens.n_neg,
        names.len() - 1,
        if logged_ensemble { " (as logged by the device)" } else { " (mean of the members' scores)" },
        opts.threshold
    );

    h.push_str("<h2>1. Discrimination and accuracy at the operating threshold</h2><table><tr><th>model</th><th>AUC (95% DeLong CI)</th><th>average precision</th><th>accuracy</th><th>sensitivity</th><th>specificity</th><th>PPV</th><th>NPV</th><th>F1</th><th>Brier</th><th>AUC vs ensemble (DeLong paired)</th></tr>");
    let comparisons: Vec<Option<DeLongTest>> = evals
        .iter()
        .map(|m| vs_ensemble(&by_model, &m.name))
        .collect();
    for (m, c) in evals.iter().zip(&comparisons) {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{:.3} <span class=ci>({:.3}–{:.3})</span></td><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&m.name),
            m.ci.auc,
            m.ci.low,
            m.ci.high,
            m.ap,
            prop(&m.metrics.accuracy),
            prop(&m.metrics.sensitivity),
            prop(&m.metrics.specificity),
            prop(&m.metrics.ppv),
            prop(&m.metrics.npv),
            opt(Some(m.metrics.f1).filter(|f| f.is_finite()), 3),
            opt(m.brier, 4),
            c.map_or("–".into(), |c| format!(
                "Δ {:+.3}, z = {:.2}, {}",
                c.auc_a - c.auc_b,
                c.z,
                crate::stats::format_p(c.p)
            ))
        );
    }
    h.push_str("</table><p class=note>Proportions with Wilson 95% intervals (count/total). AUC intervals by DeLong's method; ROC bands from 300 stratified bootstrap replicates (seeded). Average precision as scikit-learn defines it.</p>");

    let _ = write!(
        h,
        "<h2>2. ROC curves and calibration</h2><div class=plots>{}{}</div>",
        roc_svg(&evals)?,
        calibration_svg(&evals)?
    );
    h.push_str("<p class=note>Calibration slope and intercept from the logistic regression of the outcome on logit(score); a well-calibrated model has slope 1 and intercept 0.</p>");

    h.push_str("<h2>3. Confusion matrices at the operating threshold</h2><div class=plots>");
    for m in &evals {
        h.push_str(&confusion_svg(m, &opts.positive)?);
    }
    h.push_str("</div>");

    let _ = write!(
        h,
        "<h2>4. Score distributions and precision–recall</h2><div class=plots>{}{}</div>",
        histogram_svg(ens, &opts.positive, opts.threshold)?,
        pr_svg(&evals, ens.n_pos as f64 / (ens.n_pos + ens.n_neg) as f64)?
    );

    let mut centres: BTreeMap<String, Vec<&Scored>> = BTreeMap::new();
    let mut versions: BTreeMap<String, Vec<&Scored>> = BTreeMap::new();
    let mut devices: BTreeMap<String, Vec<&Scored>> = BTreeMap::new();
    for r in ens_rows {
        centres.entry(r.centre.clone()).or_default().push(r);
        versions.entry(r.model_version.clone()).or_default().push(r);
        devices.entry(r.device.clone()).or_default().push(r);
    }
    let (centre_html, centre_json) = subgroup_rows("centre", &centres, opts.threshold);
    let (version_html, version_json) = subgroup_rows("model version", &versions, opts.threshold);
    let (device_html, _) = subgroup_rows("device", &devices, opts.threshold);
    let _ = write!(
        h,
        "<h2>5. Ensemble by centre, model version and device</h2>{centre_html}{version_html}{device_html}"
    );

    // Drift: each month's ensemble scores against the first month's.
    let mut months: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in ens_rows.iter().filter(|r| r.time.len() >= 7) {
        months
            .entry(r.time[..7].to_string())
            .or_default()
            .push(r.score);
    }
    h.push_str("<h2>6. Drift of the ensemble score</h2>");
    let mut drift_json = Vec::new();
    if months.len() < 2 {
        h.push_str("<p class=note>Fewer than two calendar months of dated predictions: no drift comparison.</p>");
    } else {
        let (ref_month, reference) = months.iter().next().expect("two months");
        let _ = write!(
            h,
            "<table><tr><th>month</th><th>cases</th><th>PSI vs {}</th><th>PSI from sampling alone</th><th>reading</th></tr>",
            esc(ref_month)
        );
        for (month, window) in &months {
            let p = drift::psi(reference, window, 10).map_err(stats_err("drift"))?;
            let noise = drift::sampling_level(reference.len(), window.len(), p.edges.len() + 1);
            let class = match p.rating() {
                "stable" => "stable",
                "moderate shift" => "moderate",
                _ => "major",
            };
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.3}</td><td class={class}>{}</td></tr>",
                esc(month),
                window.len(),
                p.psi,
                noise,
                p.rating()
            );
            drift_json.push(
                json!({"month": month, "n": window.len(), "psi": p.psi, "sampling_level": noise, "rating": p.rating()}),
            );
        }
        h.push_str("</table><p class=note>Population stability index over deciles of the reference month: &lt; 0.10 stable, 0.10–0.25 moderate shift, &gt; 0.25 major shift. Small windows inflate PSI: read it against the level that sampling alone gives, (bins − 1)(1/n<sub>ref</sub> + 1/n<sub>month</sub>).</p>");
    }
    let _ = write!(
        h,
        "<p class=note>Generated by <code>tirp audit report</code> (tirp-host {}). Statistics verified against R pROC, scikit-learn and statsmodels to 1e-6 (host/tests/fixtures).</p></body></html>",
        env!("CARGO_PKG_VERSION")
    );

    let summary = json!({
        "cases": cases.len(), "threshold": opts.threshold,
        "models": evals.iter().zip(&comparisons).map(|(m, c)| json!({
            "name": m.name, "auc": m.ci.auc, "ci_low": m.ci.low, "ci_high": m.ci.high,
            "average_precision": m.ap, "n_pos": m.n_pos, "n_neg": m.n_neg,
            "confusion": m.confusion, "accuracy": m.metrics.accuracy.value,
            "sensitivity": m.metrics.sensitivity.value, "specificity": m.metrics.specificity.value,
            "brier": m.brier, "calibration": m.fit, "vs_ensemble": c,
        })).collect::<Vec<_>>(),
        "centres": centre_json, "model_versions": version_json, "drift": drift_json,
    });
    let human = evals
        .iter()
        .map(|m| {
            format!(
                "{:<16} AUC {:.3} ({:.3}–{:.3})  sens {:.1}%  spec {:.1}%",
                m.name,
                m.ci.auc,
                m.ci.low,
                m.ci.high,
                100.0 * m.metrics.sensitivity.value,
                100.0 * m.metrics.specificity.value
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    Ok(Report {
        html: h,
        summary,
        human,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Scored> {
        let mut out = Vec::new();
        for i in 0..80 {
            let truth = i % 3 == 0;
            for (m, noise) in [("cnn", 0.13), ("vit", 0.29)] {
                let jitter = ((i * 37 + (noise * 100.0) as usize) % 17) as f64 / 17.0;
                out.push(Scored {
                    case: format!("s{i}"),
                    model: m.into(),
                    score: (if truth { 0.35 } else { 0.0 } + 0.6 * jitter).min(1.0),
                    centre: ["A", "B"][i % 2].into(),
                    model_version: "1.0".into(),
                    device: "box1".into(),
                    time: format!("2026-{:02}-10T09:00:00Z", 9 + i % 3),
                    truth,
                });
            }
        }
        out
    }

    #[test]
    fn report_is_self_contained_html_with_plots_and_tables() {
        let opts = Options {
            threshold: 0.5,
            seed: 1,
            source: "test".into(),
            positive: "infection".into(),
        };
        let r = build(&rows(), &opts).unwrap();
        assert!(r.html.starts_with("<!DOCTYPE html>"));
        // ROC, calibration, 3 confusion matrices, histogram, precision–recall.
        assert_eq!(r.html.matches("<svg").count(), 7);
        assert!(r.html.contains("<text"), "plot labels are SVG text");
        assert!(r.html.matches("<table>").count() >= 5);
        assert!(
            !r.html.contains("<script") && !r.html.contains("<link") && !r.html.contains("<img")
        );
        assert!(r.html.contains("ensemble") && r.html.contains("PSI vs 2026-09"));
        assert_eq!(r.summary["models"].as_array().unwrap().len(), 3);
        assert_eq!(r.summary["centres"].as_array().unwrap().len(), 2);
        assert!(matches!(build(&[], &opts), Err(ReportError::Empty)));
    }
}
