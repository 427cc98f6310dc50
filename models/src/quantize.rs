//! Full-int8 (QDQ) members for a trained bundle: each member's f32 original
//! (`<name>.f32.onnx`, written by the pipeline) is calibrated on training-split crops made
//! with the bundle's own preprocessing, rewritten by [`onnx::quant::full_int8`] and saved as
//! `<name>.qdq.onnx`, and the spec's `full_int8_file` points at it. The engine runs those
//! files only on boards whose profile says full int8 was measured faster there
//! (`full_int8_measured_faster`); elsewhere the weight-only int8 files stay in use.

use crate::onnx::check::{CheckError, TractMember};
use crate::onnx::quant::{self, ActRange};
use crate::onnx::{ExportError, Model};
use crate::table::{LabelTable, Split};
use crate::train::data::{CropSet, DataError};
use prost::Message;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tirp_firmware::ensemble::{EnsembleSpec, SpecError};
use tract_onnx::pb;

/// Training radiographs the activation ranges are observed on (evenly spaced over the split).
pub const CALIBRATION_IMAGES: usize = 128;
/// Validation radiographs the QDQ files are compared with their f32 originals on.
pub const PARITY_IMAGES: usize = 64;

/// A member's f32 original in a bundle, as the pipeline names it.
pub fn f32_file(member: &str) -> String {
    format!("{member}.f32.onnx")
}

/// A member's full-int8 (QDQ) file in a bundle.
pub fn qdq_file(member: &str) -> String {
    format!("{member}.qdq.onnx")
}

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an ONNX model: {source}")]
    Decode {
        path: PathBuf,
        source: prost::DecodeError,
    },
    #[error("{path}: the f32 original of member {member} is missing (tirp train writes it)")]
    NoOriginal { member: String, path: PathBuf },
    #[error("{what}: {source}")]
    Tract { what: String, source: CheckError },
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("the table has no radiographs in its {0} split")]
    Empty(&'static str),
}

/// What [`write_full_int8`] did, per member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FullInt8Member {
    pub name: String,
    pub file: String,
    pub bytes: u64,
    /// Activations given a QuantizeLinear → DequantizeLinear pair.
    pub activations: usize,
    /// Largest |logit(QDQ) − logit(f32)| in tract on [`PARITY_IMAGES`] validation crops.
    pub max_logit_diff: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FullInt8Report {
    pub calibration_images: usize,
    pub parity_images: usize,
    pub members: Vec<FullInt8Member>,
}

/// `n` records spread evenly over `records` (all of them when there are fewer).
fn spread<T: Copy>(records: &[T], n: usize) -> Vec<T> {
    if records.len() <= n {
        return records.to_vec();
    }
    (0..n).map(|k| records[k * records.len() / n]).collect()
}

/// The value range of every [`quant::activation_inputs`] tensor of `model` over `crops`
/// (standardised, as the engine feeds the member), observed in tract.
pub fn calibrate(model: &Model, crops: &CropSet) -> Result<HashMap<String, ActRange>, CheckError> {
    let names = quant::activation_inputs(model);
    let own = model.proto.graph.as_ref().map_or(0, |g| g.output.len());
    let probe = TractMember::load(&quant::with_outputs(model, &names).to_bytes(), crops.size)?;
    let mut ranges: HashMap<String, ActRange> =
        names.iter().map(|n| (n.clone(), ActRange::EMPTY)).collect();
    let p = crops.size * crops.size;
    for chunk in crops.inputs.chunks(16 * p) {
        let out = probe.run_all(chunk, chunk.len() / p)?;
        for (name, values) in names.iter().zip(&out[own..]) {
            ranges.get_mut(name).expect("named above").include(values);
        }
    }
    Ok(ranges)
}

fn read(path: &Path) -> Result<Vec<u8>, QuantizeError> {
    std::fs::read(path).map_err(|source| QuantizeError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Writes every member's QDQ file into the bundle `dir` and points its spec at them;
/// calibration crops come from `table`'s training split, parity crops from its validation
/// split, both through the bundle's preprocessing.
pub fn write_full_int8(
    dir: &Path,
    table: &LabelTable,
    progress: &(dyn Fn() + Sync),
) -> Result<FullInt8Report, QuantizeError> {
    let mut spec = EnsembleSpec::load(dir)?;
    let pp = &spec.preprocess;
    let crops = |split: Split, name: &'static str, n: usize| -> Result<CropSet, QuantizeError> {
        let records = spread(&table.split(split), n);
        if records.is_empty() {
            return Err(QuantizeError::Empty(name));
        }
        let mut set = CropSet::load(&records, pp, progress)?;
        set.standardise(pp.mean, pp.std);
        Ok(set)
    };
    let calibration = crops(Split::Train, "train", CALIBRATION_IMAGES)?;
    let parity = crops(Split::Validation, "validation", PARITY_IMAGES)?;
    let tract = |what: &str| {
        let what = what.to_owned();
        move |source| QuantizeError::Tract { what, source }
    };
    let mut members = Vec::new();
    for m in &mut spec.members {
        let path = dir.join(f32_file(&m.name));
        if !path.is_file() {
            return Err(QuantizeError::NoOriginal {
                member: m.name.clone(),
                path,
            });
        }
        let proto =
            pb::ModelProto::decode(&read(&path)?[..]).map_err(|source| QuantizeError::Decode {
                path: path.clone(),
                source,
            })?;
        let f32_model = Model { proto };
        let ranges = calibrate(&f32_model, &calibration)
            .map_err(tract(&format!("calibrating {}", path.display())))?;
        let qdq = quant::full_int8(&f32_model, &ranges);
        let file = qdq_file(&m.name);
        let bytes = qdq.to_bytes();
        let size = calibration.size;
        let a = TractMember::load(&f32_model.to_bytes(), size)
            .map_err(tract(&path.display().to_string()))?;
        let b = TractMember::load(&bytes, size).map_err(tract(&file))?;
        let p = size * size;
        let mut max_logit_diff = 0f32;
        for chunk in parity.inputs.chunks(16 * p) {
            let n = chunk.len() / p;
            let la = a
                .run(chunk, n)
                .map_err(tract(&path.display().to_string()))?
                .logits;
            let lb = b.run(chunk, n).map_err(tract(&file))?.logits;
            for (x, y) in la.iter().zip(&lb) {
                max_logit_diff = max_logit_diff.max((x - y).abs());
            }
        }
        qdq.save(&dir.join(&file))?;
        members.push(FullInt8Member {
            name: m.name.clone(),
            file: file.clone(),
            bytes: bytes.len() as u64,
            activations: ranges.len(),
            max_logit_diff,
        });
        m.full_int8_file = Some(file);
    }
    spec.save(dir)?;
    Ok(FullInt8Report {
        calibration_images: calibration.len(),
        parity_images: parity.len(),
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_picks_evenly_and_keeps_short_lists() {
        let v: Vec<usize> = (0..10).collect();
        assert_eq!(spread(&v, 4), vec![0, 2, 5, 7]);
        assert_eq!(spread(&v, 20), v);
    }
}
