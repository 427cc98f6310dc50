//! The SQLite audit store: predictions pulled from devices accumulate here, keyed by
//! (device, study key, model, model version) so that a re-import is idempotent; truth labels
//! join on the study key, a salted hash that carries no patient identity.

use super::input::{CsvTable, InputError};
use super::report::Scored;
use rusqlite::{Connection, OptionalExtension, params};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("audit store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{path}: line {line}: {problem}")]
    Jsonl {
        path: String,
        line: usize,
        problem: String,
    },
    #[error(
        "conflicting re-import: device '{device}', study '{study_key}', model '{model}' version '{model_version}' is stored with score {stored}, the import says {new}"
    )]
    Conflict {
        device: String,
        study_key: String,
        model: String,
        model_version: String,
        stored: f64,
        new: f64,
    },
    #[error(
        "{path}: audit store schema {version} is newer than this tirp understands (upgrade tirp)"
    )]
    NewerSchema { path: String, version: i64 },
    #[error("study '{study_key}' is stored with truth {stored}, the import says {new}")]
    TruthConflict {
        study_key: String,
        stored: bool,
        new: bool,
    },
}

type Result<T> = std::result::Result<T, StoreError>;

/// One stored prediction.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub device: String,
    pub study_key: String,
    /// The radiograph within the study (a box flags each image of a study on its own);
    /// empty when a table has one prediction per study.
    pub instance: String,
    pub model: String,
    pub model_version: String,
    /// ISO 8601 UTC, e.g. 2026-11-30T08:15:00Z (dates compare as text).
    pub time: String,
    pub centre: Option<String>,
    pub score: f64,
}

/// Which predictions a report covers; `None` means no restriction.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub device: Option<String>,
    pub model_version: Option<String>,
    /// Inclusive dates, YYYY-MM-DD.
    pub since: Option<String>,
    pub until: Option<String>,
}

impl Filter {
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = &self.device {
            parts.push(format!("device {d}"));
        }
        if let Some(v) = &self.model_version {
            parts.push(format!("model version {v}"));
        }
        if let Some(s) = &self.since {
            parts.push(format!("from {s}"));
        }
        if let Some(u) = &self.until {
            parts.push(format!("to {u}"));
        }
        if parts.is_empty() {
            "all predictions".into()
        } else {
            parts.join(", ")
        }
    }
}

/// Bumped with every schema change, so that an older `tirp` refuses a newer store.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS predictions (
    device TEXT NOT NULL,
    study_key TEXT NOT NULL,
    instance TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL,
    model_version TEXT NOT NULL,
    time TEXT NOT NULL,
    centre TEXT,
    score REAL NOT NULL,
    PRIMARY KEY (device, study_key, instance, model, model_version)
);
CREATE INDEX IF NOT EXISTS predictions_time ON predictions (time);
CREATE TABLE IF NOT EXISTS truth (
    study_key TEXT PRIMARY KEY,
    label INTEGER NOT NULL CHECK (label IN (0, 1))
);
";

pub struct AuditStore {
    conn: Connection,
}

impl AuditStore {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                path: path.display().to_string(),
                version,
            });
        }
        if version == 1 {
            // Version 1 keyed predictions by study only: rebuild with the instance column.
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE predictions RENAME TO predictions_v1;
                 DROP INDEX IF EXISTS predictions_time;",
            )?;
            conn.execute_batch(SCHEMA)?;
            conn.execute_batch(
                "INSERT INTO predictions (device, study_key, instance, model, model_version, time, centre, score)
                   SELECT device, study_key, '', model, model_version, time, centre, score FROM predictions_v1;
                 DROP TABLE predictions_v1;
                 COMMIT;",
            )?;
        }
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(Self { conn })
    }

    /// Inserts new predictions in one transaction; returns how many were new. A row already
    /// stored with the same score is skipped; one with a different score is an error (and
    /// nothing of this import is kept).
    pub fn import_predictions(&mut self, rows: &[Prediction]) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let mut new = 0;
        {
            let mut get = tx.prepare(
                "SELECT score FROM predictions WHERE device = ?1 AND study_key = ?2 AND instance = ?3 AND model = ?4 AND model_version = ?5",
            )?;
            let mut put = tx.prepare(
                "INSERT INTO predictions (device, study_key, instance, model, model_version, time, centre, score) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?;
            for p in rows {
                let key = params![p.device, p.study_key, p.instance, p.model, p.model_version];
                match get.query_row(key, |r| r.get::<_, f64>(0)).optional()? {
                    Some(stored) if stored == p.score => {}
                    Some(stored) => {
                        return Err(StoreError::Conflict {
                            device: p.device.clone(),
                            study_key: p.study_key.clone(),
                            model: p.model.clone(),
                            model_version: p.model_version.clone(),
                            stored,
                            new: p.score,
                        });
                    }
                    None => {
                        put.execute(params![
                            p.device,
                            p.study_key,
                            p.instance,
                            p.model,
                            p.model_version,
                            p.time,
                            p.centre,
                            p.score
                        ])?;
                        new += 1;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(new)
    }

    /// Inserts truth labels (study key, positive?); returns how many were new.
    pub fn import_truth(&mut self, rows: &[(String, bool)]) -> Result<usize> {
        let tx = self.conn.transaction()?;
        let mut new = 0;
        for (key, label) in rows {
            let stored: Option<bool> = tx
                .query_row("SELECT label FROM truth WHERE study_key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()?;
            match stored {
                Some(s) if s == *label => {}
                Some(s) => {
                    return Err(StoreError::TruthConflict {
                        study_key: key.clone(),
                        stored: s,
                        new: *label,
                    });
                }
                None => {
                    tx.execute(
                        "INSERT INTO truth (study_key, label) VALUES (?1, ?2)",
                        params![key, label],
                    )?;
                    new += 1;
                }
            }
        }
        tx.commit()?;
        Ok(new)
    }

    pub fn count_predictions(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT COUNT(*) FROM predictions", [], |r| r.get(0))?)
    }

    /// Predictions with a truth label, filtered; predictions without truth are left out.
    pub fn joined(&self, f: &Filter) -> Result<Vec<Scored>> {
        let mut stmt = self.conn.prepare(
            // A case is one radiograph: the study, and the image within it when the box said.
            "SELECT CASE WHEN p.instance = '' THEN p.study_key ELSE p.study_key || '/' || p.instance END,
                    p.model, p.score, COALESCE(p.centre, p.device), p.model_version, p.device, p.time, t.label
             FROM predictions p JOIN truth t ON t.study_key = p.study_key
             WHERE (?1 IS NULL OR p.device = ?1) AND (?2 IS NULL OR p.model_version = ?2)
               AND (?3 IS NULL OR substr(p.time, 1, 10) >= ?3) AND (?4 IS NULL OR substr(p.time, 1, 10) <= ?4)
             ORDER BY p.time, p.device, p.study_key, p.instance, p.model",
        )?;
        let rows = stmt.query_map(params![f.device, f.model_version, f.since, f.until], |r| {
            Ok(Scored {
                case: r.get(0)?,
                model: r.get(1)?,
                score: r.get(2)?,
                centre: r.get(3)?,
                model_version: r.get(4)?,
                device: r.get(5)?,
                time: r.get(6)?,
                truth: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }
}

/// YYYY-MM-DDTHH:MM:SSZ of a Unix time in milliseconds (proleptic Gregorian, UTC).
pub fn iso_utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Predictions from a CSV (columns study_key or case, model, score, model_version, device,
/// time [, centre]) or from a device log pulled as JSONL (`tirp logs pull --out F.jsonl`): each
/// inference record gives one row per ensemble member and one for the ensemble probability.
pub fn read_predictions(path: &Path) -> Result<Vec<Prediction>> {
    if path.extension().is_some_and(|e| e == "jsonl") {
        return read_jsonl(path);
    }
    let t = CsvTable::read(path)?;
    let key = if t.has_column("study_key") {
        "study_key"
    } else {
        "case"
    };
    let (keys, models, scores) = (t.strings(key)?, t.strings("model")?, t.floats("score")?);
    let (versions, devices, times) = (
        t.strings("model_version")?,
        t.strings("device")?,
        t.strings("time")?,
    );
    let centres = if t.has_column("centre") {
        Some(t.strings("centre")?)
    } else {
        None
    };
    let instances = if t.has_column("instance") {
        Some(t.strings("instance")?)
    } else {
        None
    };
    Ok((0..t.len())
        .map(|i| Prediction {
            device: devices[i].clone(),
            study_key: keys[i].clone(),
            instance: instances
                .as_ref()
                .map_or_else(String::new, |c| c[i].clone()),
            model: models[i].clone(),
            model_version: versions[i].clone(),
            time: times[i].clone(),
            centre: centres.as_ref().map(|c| c[i].clone()),
            score: scores[i],
        })
        .collect())
}

fn read_jsonl(path: &Path) -> Result<Vec<Prediction>> {
    let text = std::fs::read_to_string(path).map_err(|e| StoreError::Jsonl {
        path: path.display().to_string(),
        line: 0,
        problem: e.to_string(),
    })?;
    let mut out = Vec::new();
    let last = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .last()
        .map(|(i, _)| i);
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |problem: String| StoreError::Jsonl {
            path: path.display().to_string(),
            line: i + 1,
            problem,
        };
        let v: serde_json::Value = match serde_json::from_str(line) {
            Ok(v) => v,
            // A torn last line (the puller crashed mid-write) is pulled again next time.
            Err(_) if Some(i) == last && !text.ends_with('\n') => continue,
            Err(e) => return Err(bad(e.to_string())),
        };
        if v["type"] != "inference" {
            continue;
        }
        let text = |k: &str| {
            v[k].as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(format!("no text field '{k}'")))
        };
        let num = |x: &serde_json::Value, k: &str| {
            x[k].as_f64()
                .filter(|s| s.is_finite())
                .ok_or_else(|| bad(format!("no finite number '{k}'")))
        };
        let time = iso_utc(
            v["time_unix_ms"]
                .as_u64()
                .ok_or_else(|| bad("no 'time_unix_ms'".into()))?,
        );
        let (device, key, version) = (text("device_id")?, text("study_key")?, text("bundle_id")?);
        let instance = v["instance_key"].as_str().unwrap_or_default().to_owned();
        let row = |model: String, score: f64| Prediction {
            device: device.clone(),
            study_key: key.clone(),
            instance: instance.clone(),
            model,
            model_version: version.clone(),
            time: time.clone(),
            centre: None,
            score,
        };
        for m in v["member_scores"].as_array().into_iter().flatten() {
            let name = m["member"]
                .as_str()
                .ok_or_else(|| bad("member without a name".into()))?;
            out.push(row(name.to_string(), num(m, "score")?));
        }
        out.push(row("ensemble".into(), num(&v, "probability")?));
    }
    Ok(out)
}

/// Truth labels from a CSV with columns study_key (or case) and label.
pub fn read_truth_csv(path: &Path, positive: &str) -> Result<Vec<(String, bool)>> {
    let t = CsvTable::read(path)?;
    let key = if t.has_column("study_key") {
        "study_key"
    } else {
        "case"
    };
    let labels = t.binary("label", positive, None)?;
    let keys = t.strings(key)?;
    Ok(keys.into_iter().zip(labels).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(
        device: &str,
        key: &str,
        model: &str,
        version: &str,
        time: &str,
        score: f64,
    ) -> Prediction {
        Prediction {
            device: device.into(),
            study_key: key.into(),
            instance: String::new(),
            model: model.into(),
            model_version: version.into(),
            time: time.into(),
            centre: None,
            score,
        }
    }

    #[test]
    fn a_version_1_store_is_migrated_and_images_of_one_study_are_kept_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.sqlite");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE predictions (device TEXT NOT NULL, study_key TEXT NOT NULL,
                   model TEXT NOT NULL, model_version TEXT NOT NULL, time TEXT NOT NULL,
                   centre TEXT, score REAL NOT NULL,
                   PRIMARY KEY (device, study_key, model, model_version));
                 CREATE INDEX predictions_time ON predictions (time);
                 CREATE TABLE truth (study_key TEXT PRIMARY KEY, label INTEGER NOT NULL);
                 INSERT INTO predictions VALUES ('box1', 'k1', 'ensemble', 'v1', '2026-11-01T10:00:00Z', NULL, 0.9);
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let mut s = AuditStore::open(&path).unwrap();
        assert_eq!(
            s.count_predictions().unwrap(),
            1,
            "kept through the migration"
        );
        let mut a = p("box1", "k2", "ensemble", "v1", "2026-11-02T10:00:00Z", 0.3);
        a.instance = "i1".into();
        let mut b = a.clone();
        b.instance = "i2".into();
        b.score = 0.8;
        assert_eq!(s.import_predictions(&[a.clone(), b]).unwrap(), 2);
        a.score = 0.31;
        assert!(
            s.import_predictions(&[a]).is_err(),
            "same image, other score"
        );
        drop(s);
        let mut s = AuditStore::open(&path).unwrap();
        assert_eq!(s.count_predictions().unwrap(), 3);
        s.import_truth(&[("k2".into(), true)]).unwrap();
        let mut cases: Vec<String> = s
            .joined(&Filter::default())
            .unwrap()
            .into_iter()
            .map(|r| r.case)
            .collect();
        cases.sort();
        assert_eq!(
            cases,
            ["k2/i1", "k2/i2"],
            "each image a case, truth from its study"
        );
    }

    #[test]
    fn reimport_is_idempotent_and_filters_apply() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = AuditStore::open(&dir.path().join("a.sqlite")).unwrap();
        let rows = vec![
            p("box1", "k1", "ensemble", "v1", "2026-11-01T10:00:00Z", 0.9),
            p("box1", "k2", "ensemble", "v1", "2026-11-15T10:00:00Z", 0.2),
            p("box2", "k3", "ensemble", "v2", "2026-12-01T10:00:00Z", 0.7),
        ];
        assert_eq!(s.import_predictions(&rows).unwrap(), 3);
        assert_eq!(s.import_predictions(&rows).unwrap(), 0);
        assert_eq!(s.count_predictions().unwrap(), 3);
        let truth = vec![
            ("k1".to_string(), true),
            ("k2".to_string(), false),
            ("k3".to_string(), true),
        ];
        assert_eq!(s.import_truth(&truth).unwrap(), 3);
        assert_eq!(s.import_truth(&truth).unwrap(), 0);
        let all = s.joined(&Filter::default()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].centre, "box1");
        let f = Filter {
            device: Some("box1".into()),
            since: Some("2026-11-10".into()),
            ..Default::default()
        };
        let some = s.joined(&f).unwrap();
        assert_eq!(some.len(), 1);
        assert_eq!(some[0].case, "k2");
        let v2 = Filter {
            model_version: Some("v2".into()),
            until: Some("2026-12-01".into()),
            ..Default::default()
        };
        assert_eq!(s.joined(&v2).unwrap().len(), 1);

        let mut changed = rows.clone();
        changed[1].score = 0.3;
        assert!(matches!(
            s.import_predictions(&changed),
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            s.import_truth(&[("k1".to_string(), false)]),
            Err(StoreError::TruthConflict { .. })
        ));
        drop(s);
        let path = dir.path().join("a.sqlite");
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
        drop(c);
        assert!(matches!(
            AuditStore::open(&path),
            Err(StoreError::NewerSchema { version: 99, .. })
        ));
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00Z");
        // 2024-02-29T12:34:56Z = 1709210096 s
        assert_eq!(iso_utc(1_709_210_096_000), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn device_log_jsonl_gives_member_and_ensemble_rows() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("log.jsonl");
        std::fs::write(
            &f,
            r#"{"type":"event","time_unix_ms":1,"event":"install","detail":"x"}
{"type":"inference","time_unix_ms":1709210096000,"device_id":"box1","board":"orin","bundle_id":"tirp-1.2.0","bundle_sha256":"ab","member_scores":[{"member":"cnn","score":0.8},{"member":"vit","score":0.6}],"probability":0.75,"flag":true,"threshold":0.5,"latency":{"decode_ms":1,"preprocess_ms":1,"inference_ms":1,"total_ms":3},"study_key":"abc"}
"#,
        )
        .unwrap();
        let rows = read_predictions(&f).unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].model, "ensemble");
        assert_eq!(rows[2].time, "2024-02-29T12:34:56Z");
        let good = std::fs::read_to_string(&f).unwrap();
        std::fs::write(&f, format!("{good}{{\"type\":\"infer")).unwrap();
        assert_eq!(
            read_predictions(&f).unwrap().len(),
            3,
            "torn last line skipped"
        );
        std::fs::write(&f, format!("{{\"type\":\"infer\n{good}")).unwrap();
        assert!(
            read_predictions(&f)
                .unwrap_err()
                .to_string()
                .contains("line 1")
        );
        std::fs::write(&f, "{\"type\":\"inference\"}\n").unwrap();
        let e = read_predictions(&f).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
