//! Label tables: the cohort's own `labels.csv`, and the DeepTIRP study's format
//! (`path,age,gender,liu,peng,gold,number,ganran`) so that a hospital with the study's data
//! layout can use the pipeline directly.
//!
//! In the study's table `liu`, `peng` and `gold` are subtype codes derived from the
//! diagnosis: they leak the label, so the loader drops them and no record carries them.

use crate::cohort::Patient;
use crate::cohort::acquisition::Photometric;
use crate::cohort::clinical::{Label, Sex, Site, text_enum};
use crate::cohort::render::Radiograph;
use crate::cohort::signs::{Location, Lysis, Matrix, Signs};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tirp_firmware::preprocess::Roi;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Split {
    Train,
    Validation,
    Test,
    External,
}

text_enum!(Split, "split", {
    Split::Train => "train",
    Split::Validation => "val",
    Split::Test => "test",
    Split::External => "external",
});

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: row {row}, column `{column}`: {message}")]
    Value {
        path: PathBuf,
        row: usize,
        column: String,
        message: String,
    },
    #[error("writing CSV: {0}")]
    Write(#[from] csv::Error),
}

/// One row of the cohort's `labels.csv`: one radiograph.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CohortRow {
    pub path: String,
    pub patient_id: String,
    pub view: u8,
    pub age: u8,
    pub sex: String,
    pub site: String,
    pub centre: u8,
    pub split: String,
    pub label: String,
    pub roi_x: u32,
    pub roi_y: u32,
    pub roi_w: u32,
    pub roi_h: u32,
    pub width: u32,
    pub height: u32,
    pub photometric: String,
    pub pixel_spacing_mm: f32,
    pub location: String,
    pub lysis: String,
    pub narrow_transition: u8,
    pub expansile: u8,
    pub matrix: String,
    pub sunburst: u8,
    pub codman: u8,
    pub lamellated: u8,
    pub sequestrum: u8,
    pub cortical_destruction: u8,
    pub soft_tissue_mass: u8,
    pub soft_tissue_swelling: u8,
    pub sclerosis: u8,
    pub lesion_size_mm: f32,
}

impl CohortRow {
    pub fn new(p: &Patient, view: u8, img: &Radiograph, photometric: Photometric) -> Self {
        let s = &p.signs;
        let b = |v: bool| v as u8;
        CohortRow {
            path: p.image_path(view),
            patient_id: p.id.clone(),
            view: view + 1,
            age: p.age,
            sex: p.sex.to_string(),
            site: p.site.to_string(),
            centre: p.centre,
            split: p.split.to_string(),
            label: p.label.to_string(),
            roi_x: img.roi.x,
            roi_y: img.roi.y,
            roi_w: img.roi.w,
            roi_h: img.roi.h,
            width: img.width,
            height: img.height,
            photometric: photometric.as_str().to_owned(),
            pixel_spacing_mm: (img.spacing_mm * 1000.0).round() / 1000.0,
            location: s.location.to_string(),
            lysis: s.lysis.to_string(),
            narrow_transition: b(s.narrow_transition),
            expansile: b(s.expansile),
            matrix: s.matrix.to_string(),
            sunburst: b(s.sunburst),
            codman: b(s.codman),
            lamellated: b(s.lamellated),
            sequestrum: b(s.sequestrum),
            cortical_destruction: b(s.cortical_destruction),
            soft_tissue_mass: b(s.soft_tissue_mass),
            soft_tissue_swelling: b(s.soft_tissue_swelling),
            sclerosis: b(s.sclerosis),
            lesion_size_mm: (s.size_mm * 10.0).round() / 10.0,
        }
    }
}

pub fn write_cohort_csv(rows: &[CohortRow]) -> Result<Vec<u8>, TableError> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    w.into_inner()
        .map_err(|e| TableError::Write(e.into_error().into()))
}

/// One labelled radiograph, whatever table it came from. Optional fields are absent in
/// tables that do not carry them (the study's table has no site, box or split).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Image path, resolved against the table's directory.
    pub path: PathBuf,
    pub patient_id: String,
    pub label: Label,
    pub age: Option<f32>,
    pub sex: Option<Sex>,
    pub site: Option<Site>,
    pub centre: Option<u8>,
    pub split: Option<Split>,
    pub roi: Option<Roi>,
    pub photometric: Option<Photometric>,
    pub signs: Option<Signs>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    Cohort,
    DeepTirp,
}

#[derive(Debug, Clone)]
pub struct LabelTable {
    pub format: TableFormat,
    pub records: Vec<Record>,
}

const DEEPTIRP_HEADER: [&str; 8] = [
    "path", "age", "gender", "liu", "peng", "gold", "number", "ganran",
];

impl LabelTable {
    /// Reads a label table, recognising its format by the header.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, TableError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| TableError::Io {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&bytes, path, base)
    }

    /// Parses table bytes; `path` names the table in errors, `base` resolves image paths.
    pub fn parse(bytes: &[u8], path: &Path, base: &Path) -> Result<Self, TableError> {
        let mut rdr = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_reader(bytes);
        let format_err = |message: String| TableError::Format {
            path: path.to_owned(),
            message,
        };
        let header: Vec<String> = rdr
            .headers()
            .map_err(|e| format_err(e.to_string()))?
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let has = |c: &str| header.iter().any(|h| h == c);
        let (format, records) = if DEEPTIRP_HEADER.iter().all(|c| has(c)) {
            (
                TableFormat::DeepTirp,
                parse_rows(&mut rdr, &header, path, base, deeptirp_record)?,
            )
        } else if ["path", "patient_id", "label"].iter().all(|c| has(c)) {
            (
                TableFormat::Cohort,
                parse_rows(&mut rdr, &header, path, base, cohort_record)?,
            )
        } else {
            return Err(format_err(format!(
                "unrecognised header {header:?}: expected the cohort's labels.csv (path,patient_id,label,…) \
                 or the DeepTIRP format ({})",
                DEEPTIRP_HEADER.join(",")
            )));
        };
        if records.is_empty() {
            return Err(format_err("the table has no rows".into()));
        }
        Ok(LabelTable { format, records })
    }

    /// Records of one split (all records when the table has no splits and `split` is Train).
    pub fn split(&self, split: Split) -> Vec<&Record> {
        self.records
            .iter()
            .filter(|r| r.split.unwrap_or(Split::Train) == split)
            .collect()
    }
}

/// Reads each CSV row as (row number, column name → value) with typed accessors.
struct Row<'a> {
    path: &'a Path,
    row: usize,
    header: &'a [String],
    rec: csv::StringRecord,
}

impl Row<'_> {
    fn err(&self, column: &str, message: impl Into<String>) -> TableError {
        TableError::Value {
            path: self.path.to_owned(),
            row: self.row,
            column: column.to_owned(),
            message: message.into(),
        }
    }

    /// The raw text of `column`, or None when the column is absent or the cell empty.
    fn get(&self, column: &str) -> Option<&str> {
        let i = self.header.iter().position(|h| h == column)?;
        self.rec.get(i).filter(|v| !v.is_empty())
    }

    fn required(&self, column: &str) -> Result<&str, TableError> {
        self.get(column)
            .ok_or_else(|| self.err(column, "missing value"))
    }

    fn parse<T: FromStr>(&self, column: &str) -> Result<Option<T>, TableError>
    where
        T::Err: fmt::Display,
    {
        self.get(column)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| self.err(column, format!("{v:?}: {e}")))
            })
            .transpose()
    }

    fn flag(&self, column: &str) -> Result<bool, TableError> {
        match self.required(column)? {
            "0" => Ok(false),
            "1" => Ok(true),
            v => Err(self.err(column, format!("{v:?} is not 0 or 1"))),
        }
    }
}

fn rows<'a>(
    rdr: &'a mut csv::Reader<&[u8]>,
    header: &'a [String],
    path: &'a Path,
) -> impl Iterator<Item = Result<Row<'a>, TableError>> + 'a {
    rdr.records().enumerate().map(move |(i, rec)| {
        // Row numbers count the header as row 1, as a spreadsheet shows them.
        let row = i + 2;
        rec.map(|rec| Row {
            path,
            row,
            header,
            rec,
        })
        .map_err(|e| TableError::Value {
            path: path.to_owned(),
            row,
            column: "-".into(),
            message: e.to_string(),
        })
    })
}

/// Parses every row with `record`, stopping at the first error.
fn parse_rows(
    rdr: &mut csv::Reader<&[u8]>,
    header: &[String],
    path: &Path,
    base: &Path,
    record: fn(&Row, &Path) -> Result<Record, TableError>,
) -> Result<Vec<Record>, TableError> {
    rows(rdr, header, path)
        .map(|row| record(&row?, base))
        .collect()
}

fn check_age(row: &Row, age: Option<f32>) -> Result<Option<f32>, TableError> {
    match age {
        Some(a) if !(0.0..=120.0).contains(&a) || !a.is_finite() => {
            Err(row.err("age", format!("{a} is outside 0..=120 years")))
        }
        a => Ok(a),
    }
}

fn cohort_record(row: &Row, base: &Path) -> Result<Record, TableError> {
    let roi = match (
        row.parse("roi_x")?,
        row.parse("roi_y")?,
        row.parse("roi_w")?,
        row.parse("roi_h")?,
    ) {
        (Some(x), Some(y), Some(w), Some(h)) => Some(Roi { x, y, w, h }),
        (None, None, None, None) => None,
        _ => {
            return Err(row.err(
                "roi_x",
                "roi_x, roi_y, roi_w and roi_h must be given together",
            ));
        }
    };
    let photometric = row
        .get("photometric")
        .map(|v| Photometric::parse(v).map_err(|e| row.err("photometric", e)))
        .transpose()?;
    let signs = if row.get("lysis").is_some() {
        Some(Signs {
            location: row
                .parse::<Location>("location")?
                .ok_or_else(|| row.err("location", "missing value"))?,
            lysis: row.parse::<Lysis>("lysis")?.expect("checked above"),
            narrow_transition: row.flag("narrow_transition")?,
            expansile: row.flag("expansile")?,
            matrix: row
                .parse::<Matrix>("matrix")?
                .ok_or_else(|| row.err("matrix", "missing value"))?,
            sunburst: row.flag("sunburst")?,
            codman: row.flag("codman")?,
            lamellated: row.flag("lamellated")?,
            sequestrum: row.flag("sequestrum")?,
            cortical_destruction: row.flag("cortical_destruction")?,
            soft_tissue_mass: row.flag("soft_tissue_mass")?,
            soft_tissue_swelling: row.flag("soft_tissue_swelling")?,
            sclerosis: row.flag("sclerosis")?,
            size_mm: row.parse("lesion_size_mm")?.unwrap_or(0.0),
        })
    } else {
        None
    };
    Ok(Record {
        path: base.join(row.required("path")?),
        patient_id: row.required("patient_id")?.to_owned(),
        label: row
            .parse::<Label>("label")?
            .ok_or_else(|| row.err("label", "missing value"))?,
        age: check_age(row, row.parse("age")?)?,
        sex: row.parse("sex")?,
        site: row.parse("site")?,
        centre: row.parse("centre")?,
        split: row.parse("split")?,
        roi,
        photometric,
        signs,
    })
}

fn deeptirp_record(row: &Row, base: &Path) -> Result<Record, TableError> {
    let label = match row.required("ganran")? {
        "0" => Label::Pbt,
        "1" => Label::Infection,
        v => {
            return Err(row.err(
                "ganran",
                format!("{v:?} is not 0 (tumour) or 1 (infection)"),
            ));
        }
    };
    let sex = match row.get("gender") {
        None => None,
        Some("1") => Some(Sex::Male),
        Some("0") => Some(Sex::Female),
        Some(v) => {
            return Err(row.err("gender", format!("{v:?} is not 1 (male) or 0 (female)")));
        }
    };
    Ok(Record {
        path: base.join(row.required("path")?),
        patient_id: row.required("number")?.to_owned(),
        label,
        age: check_age(row, row.parse("age")?)?,
        sex,
        site: None,
        centre: None,
        split: None,
        roi: None,
        photometric: None,
        signs: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LabelTable, TableError> {
        LabelTable::parse(text.as_bytes(), Path::new("t.csv"), Path::new("/data"))
    }

    #[test]
    fn reads_the_deeptirp_format_without_leaking_codes() {
        let t = parse(
            "path,age,gender,liu,peng,gold,number,ganran\nall_image/0098-1.jpg,47,0,3,2,4,98,1\n",
        )
        .unwrap();
        assert_eq!(t.format, TableFormat::DeepTirp);
        let r = &t.records[0];
        assert_eq!(r.path, Path::new("/data/all_image/0098-1.jpg"));
        assert_eq!(
            (r.label, r.age, r.sex, r.patient_id.as_str()),
            (Label::Infection, Some(47.0), Some(Sex::Female), "98")
        );
        assert_eq!((r.site, r.roi, r.split), (None, None, None));
    }

    #[test]
    fn errors_name_row_and_column() {
        let e = parse("path,age,gender,liu,peng,gold,number,ganran\na.jpg,47,0,0,0,0,1,0\nb.jpg,-3,1,0,0,0,2,0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 3") && e.contains("`age`"), "{e}");
        let e = parse("path,age,gender,liu,peng,gold,number,ganran\na.jpg,47,0,0,0,0,1,2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`ganran`"), "{e}");
        let e = parse("path,patient_id,label\na.png,P1,tumour\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("row 2") && e.contains("`label`") && e.contains("pbt, infection"),
            "{e}"
        );
        let e = parse("path,patient_id,label,roi_x\na.png,P1,pbt,3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("roi_x"), "{e}");
        let e = parse("foo,bar\n1,2\n").unwrap_err().to_string();
        assert!(e.contains("unrecognised header"), "{e}");
        let e = parse("path,patient_id,label\n").unwrap_err().to_string();
        assert!(e.contains("no rows"), "{e}");
    }

    #[test]
    fn reads_the_public_study_table() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/deeptirp/train.csv");
        if !path.exists() && std::env::var_os("CI").is_none() {
            // The shared reference data lives beside the checkout; CI always lays it out.
            eprintln!("skipping: {} not present", path.display());
            return;
        }
        let t = LabelTable::load(&path).unwrap();
        // The file holds 2,084 rows (its README says 2,083) of 983 patients.
        assert_eq!(t.records.len(), 2084);
        let patients: std::collections::HashSet<_> =
            t.records.iter().map(|r| &r.patient_id).collect();
        assert_eq!(patients.len(), 983);
    }
}
