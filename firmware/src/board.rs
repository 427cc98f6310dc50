//! Board profiles: one TOML file per supported board under `boards/`.
//!
//! Parsing is strict (unknown fields are errors, so a typo never silently falls back to a
//! default) and every semantic check names the offending field.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Why a board profile could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BoardError {
    #[error("cannot read board profile {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("board profile {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("board profile {path}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoardProfile {
    /// Stable identifier; bundles list the board ids they are compatible with.
    pub id: String,
    pub name: String,
    pub soc: String,
    /// Rust target architecture (`aarch64`, `x86_64`).
    pub arch: String,
    pub cpu: Cpu,
    pub cuda: Cuda,
    pub memory: Memory,
    pub quantization: Quantization,
    pub serial: Serial,
    pub storage: Storage,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    pub cores: u32,
    /// Threads the engine may use per prediction (the members in parallel).
    pub inference_threads: u32,
    /// tract intra-op workers (matrix products split into tiles) shared by the members and
    /// the localiser; 1 (the default) keeps tract single-threaded per graph. Set above 1 only
    /// where measured faster: on the 2-core x86 box 2 made the localiser slower.
    #[serde(default = "one")]
    pub intra_op_threads: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cuda {
    /// Whether the engine asks tract for the CUDA runtime on this board.
    pub use_cuda: bool,
    /// CUDA compute capability, e.g. "8.7" for Orin.
    pub compute_capability: Option<String>,
    pub jetpack: Option<String>,
    pub cuda_version: Option<String>,
    /// The `tract-cuda` feature gate this board's CUDA needs (e.g. `cuda-12060`).
    pub tract_cuda_gate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    pub total_mb: u32,
    /// Memory the loaded bundle (all models, plans and states) may take.
    pub model_budget_mb: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantization {
    /// Use the full-int8 (QDQ) models only where they were measured faster on this board.
    pub full_int8_measured_faster: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Serial {
    /// Device-side serial port of the provisioning link.
    pub device: String,
    pub baud: u32,
    /// USB `VID:PID` the host sees for this board's serial gadget, if it has one.
    pub usb_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    /// Where the daemon keeps studies, queues, slots and logs (relative paths are taken
    /// relative to the daemon's working directory).
    pub data_dir: PathBuf,
}

impl BoardProfile {
    /// Reads and validates a profile file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, BoardError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| BoardError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates profile text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, BoardError> {
        let profile: BoardProfile = toml::from_str(text).map_err(|e| BoardError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        profile.validate(path)?;
        Ok(profile)
    }

    /// Loads every `*.toml` profile of a directory, sorted by id.
    pub fn load_dir(dir: impl AsRef<Path>) -> Result<Vec<Self>, BoardError> {
        let dir = dir.as_ref();
        let entries = std::fs::read_dir(dir).map_err(|source| BoardError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut profiles = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| BoardError::Io {
                path: dir.to_owned(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "toml") {
                profiles.push(Self::load(&path)?);
            }
        }
        profiles.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(profiles)
    }

    fn validate(&self, path: &Path) -> Result<(), BoardError> {
        let invalid = |field: &'static str, message: String| BoardError::Invalid {
            path: path.to_owned(),
            field,
            message,
        };
        if self.id.is_empty()
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(invalid(
                "id",
                format!("{:?} must be non-empty lowercase [a-z0-9_-]", self.id),
            ));
        }
        if !matches!(self.arch.as_str(), "aarch64" | "x86_64") {
            return Err(invalid(
                "arch",
                format!("{:?} is not one of aarch64, x86_64", self.arch),
            ));
        }
        if self.cpu.cores == 0 {
            return Err(invalid("cpu.cores", "must be at least 1".into()));
        }
        if self.cpu.inference_threads == 0 || self.cpu.inference_threads > self.cpu.cores {
            return Err(invalid(
                "cpu.inference_threads",
                format!(
                    "{} must be between 1 and cpu.cores ({})",
                    self.cpu.inference_threads, self.cpu.cores
                ),
            ));
        }
        if self.cpu.intra_op_threads == 0 || self.cpu.intra_op_threads > self.cpu.cores {
            return Err(invalid(
                "cpu.intra_op_threads",
                format!(
                    "{} must be between 1 and cpu.cores ({})",
                    self.cpu.intra_op_threads, self.cpu.cores
                ),
            ));
        }
        if let Some(cc) = &self.cuda.compute_capability {
            let ok = cc.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.chars().chain(b.chars()).all(|c| c.is_ascii_digit())
            });
            if !ok {
                return Err(invalid(
                    "cuda.compute_capability",
                    format!("{cc:?} is not MAJOR.MINOR"),
                ));
            }
        }
        if self.cuda.use_cuda {
            if self.cuda.compute_capability.is_none() {
                return Err(invalid(
                    "cuda.compute_capability",
                    "required when cuda.use_cuda = true".into(),
                ));
            }
            match &self.cuda.tract_cuda_gate {
                Some(g) if g.starts_with("cuda-") && g[5..].chars().all(|c| c.is_ascii_digit()) => {
                }
                Some(g) => {
                    return Err(invalid(
                        "cuda.tract_cuda_gate",
                        format!("{g:?} is not cuda-NNNNN"),
                    ));
                }
                None => {
                    return Err(invalid(
                        "cuda.tract_cuda_gate",
                        "required when cuda.use_cuda = true".into(),
                    ));
                }
            }
        }
        if self.memory.model_budget_mb == 0 || self.memory.model_budget_mb > self.memory.total_mb {
            return Err(invalid(
                "memory.model_budget_mb",
                format!(
                    "{} must be between 1 and memory.total_mb ({})",
                    self.memory.model_budget_mb, self.memory.total_mb
                ),
            ));
        }
        if self.serial.device.is_empty() {
            return Err(invalid("serial.device", "must not be empty".into()));
        }
        if !(1200..=12_000_000).contains(&self.serial.baud) {
            return Err(invalid(
                "serial.baud",
                format!("{} is outside 1200..=12000000", self.serial.baud),
            ));
        }
        if let Some(usb) = &self.serial.usb_id
            && parse_usb_id(usb).is_none()
        {
            return Err(invalid(
                "serial.usb_id",
                format!("{usb:?} is not VID:PID in hex (e.g. 0955:7020)"),
            ));
        }
        if self.storage.data_dir.as_os_str().is_empty() {
            return Err(invalid("storage.data_dir", "must not be empty".into()));
        }
        Ok(())
    }
}

/// Parses a `VID:PID` pair written in hex, e.g. `0955:7020`.
pub fn parse_usb_id(s: &str) -> Option<(u16, u16)> {
    let (v, p) = s.split_once(':')?;
    if v.len() != 4 || p.len() != 4 {
        return None;
    }
    Some((
        u16::from_str_radix(v, 16).ok()?,
        u16::from_str_radix(p, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boards_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards")
    }

    #[test]
    fn every_shipped_profile_parses() {
        let profiles = BoardProfile::load_dir(boards_dir()).unwrap();
        let ids: Vec<_> = profiles.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "jetson-agx-orin-64gb",
                "jetson-orin-nano-8gb",
                "jetson-orin-nx-16gb",
                "jetson-xavier-nx",
                "x86_64-dev"
            ]
        );
        for p in &profiles {
            if p.id.contains("orin") {
                assert_eq!(
                    p.cuda.compute_capability.as_deref(),
                    Some("8.7"),
                    "{}",
                    p.id
                );
                assert_eq!(p.cuda.cuda_version.as_deref(), Some("12.6"), "{}", p.id);
                assert!(p.cuda.use_cuda);
                assert_eq!(
                    p.serial.usb_id.as_deref().and_then(parse_usb_id),
                    Some((0x0955, 0x7020))
                );
            }
        }
        let xavier = profiles
            .iter()
            .find(|p| p.id == "jetson-xavier-nx")
            .unwrap();
        assert_eq!(xavier.cuda.compute_capability.as_deref(), Some("7.2"));
        assert_eq!(xavier.cuda.cuda_version.as_deref(), Some("11.4"));
        let dev = profiles.iter().find(|p| p.id == "x86_64-dev").unwrap();
        assert!(!dev.cuda.use_cuda);
        assert_eq!(dev.arch, "x86_64");
    }

    fn dev_text() -> String {
        std::fs::read_to_string(boards_dir().join("x86_64-dev.toml")).unwrap()
    }

    fn err_of(text: &str) -> String {
        BoardProfile::parse(text, Path::new("bad.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn malformed_profiles_are_rejected_naming_the_field() {
        let text = dev_text();
        let e = err_of(&text.replace("inference_threads = 2", "inference_threads = 3"));
        assert!(e.contains("cpu.inference_threads"), "{e}");
        let e = err_of(&text.replace("intra_op_threads = 1", "intra_op_threads = 0"));
        assert!(e.contains("cpu.intra_op_threads"), "{e}");
        let e = err_of(&text.replace("baud = 921600", "baud = \"fast\""));
        assert!(e.contains("baud"), "{e}");
        let e = err_of(&text.replace("soc = \"generic x86_64\"\n", ""));
        assert!(e.contains("soc"), "{e}");
        let e = err_of(&text.replace("[memory]", "[memory]\nswap_mb = 3"));
        assert!(e.contains("swap_mb"), "{e}");
        let e = err_of(&text.replace("use_cuda = false", "use_cuda = true"));
        assert!(e.contains("cuda.compute_capability"), "{e}");
        let e = err_of(&text.replace("arch = \"x86_64\"", "arch = \"mips\""));
        assert!(e.contains("`arch`"), "{e}");
        let e = err_of(&text.replace("baud = 921600", "baud = 921600\nusb_id = \"0955-7020\""));
        assert!(e.contains("serial.usb_id"), "{e}");
        let e = err_of(&text.replace("model_budget_mb = 1024", "model_budget_mb = 99999"));
        assert!(e.contains("memory.model_budget_mb"), "{e}");
    }

    #[test]
    fn missing_file_error_names_the_path() {
        let e = BoardProfile::load("/nonexistent/board.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/board.toml"), "{e}");
    }
}
