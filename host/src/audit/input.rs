//! CSV input of the audit: every error names the file, the line and the column.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{path}: {source}")]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },
    #[error("{path}: no column '{column}' (columns: {available})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        available: String,
    },
    #[error("{path}: line {line}, column '{column}': {problem}")]
    BadValue {
        path: PathBuf,
        line: u64,
        column: String,
        problem: String,
    },
    #[error("{path}: {problem}")]
    Content { path: PathBuf, problem: String },
}

type Result<T> = std::result::Result<T, InputError>;

/// A CSV file held in memory with its header.
pub struct CsvTable {
    pub path: PathBuf,
    headers: Vec<String>,
    rows: Vec<csv::StringRecord>,
}

impl CsvTable {
    pub fn read(path: &Path) -> Result<Self> {
        let csv_err = |source| InputError::Csv {
            path: path.to_path_buf(),
            source,
        };
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_path(path)
            .map_err(csv_err)?;
        let headers = reader
            .headers()
            .map_err(csv_err)?
            .iter()
            .map(str::to_string)
            .collect();
        let rows = reader
            .records()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(csv_err)?;
        Ok(Self {
            path: path.to_path_buf(),
            headers,
            rows,
        })
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn has_column(&self, name: &str) -> bool {
        self.headers.iter().any(|h| h == name)
    }

    /// The file line of data row `row` (1 is the header).
    pub fn line(&self, row: usize) -> u64 {
        self.rows[row]
            .position()
            .map_or(row as u64 + 2, |p| p.line())
    }

    fn index(&self, column: &str) -> Result<usize> {
        self.headers
            .iter()
            .position(|h| h == column)
            .ok_or_else(|| InputError::MissingColumn {
                path: self.path.clone(),
                column: column.to_string(),
                available: self.headers.join(", "),
            })
    }

    pub fn bad(&self, row: usize, column: &str, problem: impl Into<String>) -> InputError {
        InputError::BadValue {
            path: self.path.clone(),
            line: self.line(row),
            column: column.to_string(),
            problem: problem.into(),
        }
    }

    pub fn content(&self, problem: impl Into<String>) -> InputError {
        InputError::Content {
            path: self.path.clone(),
            problem: problem.into(),
        }
    }

    /// Non-empty strings of a column.
    pub fn strings(&self, column: &str) -> Result<Vec<String>> {
        let i = self.index(column)?;
        self.rows
            .iter()
            .enumerate()
            .map(|(r, rec)| match rec.get(i) {
                Some(v) if !v.is_empty() => Ok(v.to_string()),
                _ => Err(self.bad(r, column, "empty value")),
            })
            .collect()
    }

    /// Finite numbers of a column (NaN, infinities and text are errors).
    pub fn floats(&self, column: &str) -> Result<Vec<f64>> {
        let values = self.strings(column)?;
        values
            .iter()
            .enumerate()
            .map(|(r, v)| match v.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(x),
                Ok(x) => Err(self.bad(r, column, format!("score {x} is not a finite number"))),
                Err(_) => Err(self.bad(r, column, format!("'{v}' is not a number"))),
            })
            .collect()
    }

    /// A two-class column: true where the value is `positive`. The negative class is `negative`
    /// when given, else the one other value present; a third value is an error, and so is a
    /// column with only one class.
    pub fn binary(
        &self,
        column: &str,
        positive: &str,
        negative: Option<&str>,
    ) -> Result<Vec<bool>> {
        let values = self.strings(column)?;
        let mut neg = negative.map(str::to_string);
        let mut labels = Vec::with_capacity(values.len());
        for (r, v) in values.iter().enumerate() {
            if v == positive {
                labels.push(true);
                continue;
            }
            match &neg {
                Some(n) if n == v => labels.push(false),
                Some(n) => {
                    return Err(self.bad(
                        r,
                        column,
                        format!("label '{v}' is neither the positive class '{positive}' nor the negative class '{n}'"),
                    ));
                }
                None => {
                    neg = Some(v.clone());
                    labels.push(false);
                }
            }
        }
        if !labels.iter().any(|&l| l) {
            return Err(self.content(format!(
                "column '{column}' has no case of the positive class '{positive}'"
            )));
        }
        if labels.iter().all(|&l| l) {
            return Err(self.content(format!(
                "column '{column}' has no case of the negative class (only '{positive}')"
            )));
        }
        Ok(labels)
    }

    /// Maps `key` column → `value` column, refusing duplicate keys.
    pub fn unique_map<T: Clone>(&self, key: &str, values: &[T]) -> Result<HashMap<String, T>> {
        let keys = self.strings(key)?;
        let mut map = HashMap::with_capacity(keys.len());
        for (r, (k, v)) in keys.iter().zip(values).enumerate() {
            if map.insert(k.clone(), v.clone()).is_some() {
                return Err(self.bad(r, key, format!("duplicate key '{k}'")));
            }
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn table(text: &str) -> (tempfile::NamedTempFile, CsvTable) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        let t = CsvTable::read(f.path()).unwrap();
        (f, t)
    }

    #[test]
    fn errors_name_line_and_column() {
        let (_f, t) = table("label,score\ninf,0.2\ntum,NaN\nfoo,0.4\n");
        let e = t.floats("score").unwrap_err().to_string();
        assert!(
            e.contains("line 3") && e.contains("'score'") && e.contains("not a finite"),
            "{e}"
        );
        let e = t.binary("label", "inf", None).unwrap_err().to_string();
        assert!(e.contains("line 4") && e.contains("'foo'"), "{e}");
        let e = t.floats("age").unwrap_err().to_string();
        assert!(
            e.contains("no column 'age'") && e.contains("label, score"),
            "{e}"
        );
        let e = t
            .binary("label", "xyz", Some("inf"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn one_class_only_is_an_error() {
        let (_f, t) = table("label\ninf\ninf\n");
        assert!(
            t.binary("label", "inf", None)
                .unwrap_err()
                .to_string()
                .contains("no case of the negative")
        );
        assert!(
            t.binary("label", "tum", None)
                .unwrap_err()
                .to_string()
                .contains("no case of the positive")
        );
    }
}
