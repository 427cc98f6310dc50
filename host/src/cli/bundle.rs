//! `tirp bundle build|sign|verify|inspect` and `tirp keys gen|trust|distrust`.

use super::Output;
use super::device::{self, ConnArgs, KeyArg};
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use tirp_firmware::bundle::{self, BuildFile, BuildSpec, FileRole, Header, Keyring, Policy};
use tirp_firmware::preprocess::PreprocessSpec;

#[derive(Subcommand, Debug)]
pub enum BundleCommand {
    /// Build an unsigned bundle from model files and the golden input/output pair, or from
    /// a trained bundle directory (`--from-dir`, what `tirp train` writes).
    Build {
        /// A trained bundle directory: every file in it is shipped (`*.onnx` as models,
        /// golden.png / golden.json as the golden pair, the rest, ensemble.json and the
        /// model card included, as other files); name, version, preprocessing and threshold
        /// default to ensemble.json's, which the manifest must then match.
        #[arg(long, conflicts_with_all = ["models", "golden_input", "golden_output", "threshold", "preprocess", "extra"])]
        from_dir: Option<PathBuf>,
        /// Bundle name (default with --from-dir: ensemble.json's).
        #[arg(long, required_unless_present = "from_dir")]
        name: Option<String>,
        /// Bundle version (default with --from-dir: ensemble.json's).
        #[arg(long, required_unless_present = "from_dir")]
        version: Option<String>,
        /// Anti-rollback counter; devices refuse bundles below the highest they ran.
        #[arg(long, default_value_t = 0)]
        security_version: u32,
        /// Compatible board id (boards/*.toml `id`); repeat for several.
        #[arg(long = "board", required = true)]
        boards: Vec<String>,
        /// Model file (ONNX); repeat for each ensemble member. Stored under its file name.
        #[arg(long = "model", required_unless_present = "from_dir")]
        models: Vec<PathBuf>,
        /// Golden input image of the health check.
        #[arg(long, required_unless_present = "from_dir")]
        golden_input: Option<PathBuf>,
        /// Expected output of the golden input (JSON: probability, flag, tolerance, member_scores).
        #[arg(long, required_unless_present = "from_dir")]
        golden_output: Option<PathBuf>,
        /// Operating threshold on the ensemble probability.
        #[arg(long, required_unless_present = "from_dir")]
        threshold: Option<f32>,
        /// Preprocessing spec as JSON (default: the built-in PreprocessSpec).
        #[arg(long)]
        preprocess: Option<PathBuf>,
        /// Extra file shipped in the bundle (model card, stacker); repeatable.
        #[arg(long = "extra")]
        extra: Vec<PathBuf>,
        /// Sign with this private key right away.
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Sign (or re-sign) a bundle's manifest with a PKCS#8 PEM private key.
    Sign {
        bundle: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Output file (default: in place).
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Verify signature, payload hashes, and optionally board and security floor, as a
    /// device would.
    Verify {
        bundle: PathBuf,
        /// Trusted public key (SPKI PEM); repeatable.
        #[arg(long = "pub")]
        pubs: Vec<PathBuf>,
        /// Directory of trusted public keys (a device keyring).
        #[arg(long)]
        keyring: Option<PathBuf>,
        /// Board id to check compatibility against.
        #[arg(long)]
        board: Option<String>,
        #[arg(long, default_value_t = 0)]
        security_floor: u32,
    },
    /// Show the manifest (no trust decision).
    Inspect { bundle: PathBuf },
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Generate an ed25519 key pair: NAME.key.pem (PKCS#8, keep secret) and NAME.pub.pem.
    Gen {
        /// Output path prefix.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Add a public key to the device keyring (signed with a key it already trusts).
    Trust {
        /// Public key to add (SPKI PEM).
        public_key: PathBuf,
        #[command(flatten)]
        key: KeyArg,
    },
    /// Remove a key (by 16-hex-digit id) from the device keyring; never the last one.
    Distrust {
        key_id: String,
        #[command(flatten)]
        key: KeyArg,
    },
}

pub fn run_bundle(cmd: BundleCommand, out: &Output) -> Result<()> {
    match cmd {
        BundleCommand::Build {
            from_dir,
            name,
            version,
            security_version,
            boards,
            models,
            golden_input,
            golden_output,
            threshold,
            preprocess,
            extra,
            key,
            out: path,
        } => {
            let (name, version, spec, threshold, files) = match from_dir {
                Some(dir) => {
                    let d = from_bundle_dir(&dir)?;
                    (
                        name.unwrap_or(d.name),
                        version.unwrap_or(d.version),
                        d.preprocess,
                        d.threshold,
                        d.files,
                    )
                }
                None => {
                    let spec = match preprocess {
                        Some(p) => serde_json::from_slice(
                            &std::fs::read(&p).with_context(|| format!("read {}", p.display()))?,
                        )
                        .with_context(|| format!("{}: not a preprocessing spec", p.display()))?,
                        None => PreprocessSpec::default(),
                    };
                    let mut files = Vec::new();
                    for m in &models {
                        files.push(build_file(m, FileRole::Model)?);
                    }
                    files.push(build_file(
                        &required(golden_input, "--golden-input")?,
                        FileRole::GoldenInput,
                    )?);
                    files.push(build_file(
                        &required(golden_output, "--golden-output")?,
                        FileRole::GoldenOutput,
                    )?);
                    for e in &extra {
                        files.push(build_file(e, FileRole::Other)?);
                    }
                    (
                        required(name, "--name")?,
                        required(version, "--version")?,
                        spec,
                        required(threshold, "--threshold")?,
                        files,
                    )
                }
            };
            let created_unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let manifest = bundle::build(
                BuildSpec {
                    name,
                    version,
                    security_version,
                    compatible: boards,
                    preprocess: spec,
                    threshold,
                    created_unix,
                },
                &files,
                &path,
            )
            .context("build bundle")?;
            let signed = match key {
                Some(k) => Some(sign(&path, &k, &path)?),
                None => None,
            };
            let v = serde_json::json!({
                "bundle": path.display().to_string(),
                "manifest": manifest,
                "sha256": hex::encode(bundle::file_sha256(&path)?),
                "signed_by": signed,
            });
            out.emit(&v, || {
                format!(
                    "built {} ({} {}, {} files, {} payload bytes){}",
                    path.display(),
                    manifest.name,
                    manifest.version,
                    manifest.files.len(),
                    manifest.payload_len(),
                    signed.as_ref().map_or(
                        "; unsigned: run `tirp bundle sign`".to_owned(),
                        |k| format!(", signed by key {k}")
                    )
                )
            });
            Ok(())
        }
        BundleCommand::Sign {
            bundle: b,
            key,
            out: o,
        } => {
            let dest = o.unwrap_or_else(|| b.clone());
            let kid = sign(&b, &key, &dest)?;
            out.emit(
                &serde_json::json!({"bundle": dest.display().to_string(), "key_id": kid}),
                || format!("signed {} with key {kid}", dest.display()),
            );
            Ok(())
        }
        BundleCommand::Verify {
            bundle: b,
            pubs,
            keyring,
            board,
            security_floor,
        } => {
            let mut ring = match &keyring {
                Some(d) => Keyring::load_dir(d)?,
                None => Keyring::default(),
            };
            for p in &pubs {
                let pem =
                    std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
                ring.add(bundle::parse_public_key(&pem).with_context(|| p.display().to_string())?);
            }
            if ring.is_empty() {
                bail!("no trusted key given: pass --pub KEY.pub.pem or --keyring DIR");
            }
            // Without --board, any listed board passes the board check.
            let mut f = std::fs::File::open(&b).with_context(|| format!("open {}", b.display()))?;
            let (header, _) = Header::read_from(&mut f)?;
            let m = header.manifest()?;
            let board = board.unwrap_or_else(|| m.compatible.first().cloned().unwrap_or_default());
            let policy = Policy {
                keyring: &ring,
                board: &board,
                security_floor,
            };
            let (header, manifest) = bundle::verify_file(&b, &policy)
                .with_context(|| format!("{} failed verification", b.display()))?;
            let kid = header.signature.as_ref().map(|s| hex::encode(s.key_id));
            out.emit(
                &serde_json::json!({"ok": true, "key_id": kid, "board": board, "manifest": manifest}),
                || {
                    format!(
                        "OK: {} {} signed by {}, every file and chunk hash matches, fits {board}",
                        manifest.name,
                        manifest.version,
                        kid.as_deref().unwrap_or("?")
                    )
                },
            );
            Ok(())
        }
        BundleCommand::Inspect { bundle: b } => {
            let mut f = std::fs::File::open(&b).with_context(|| format!("open {}", b.display()))?;
            let (header, payload_at) = Header::read_from(&mut f)?;
            let m = header.manifest()?;
            let kid = header.signature.as_ref().map(|s| hex::encode(s.key_id));
            let v = serde_json::json!({
                "sha256": hex::encode(bundle::file_sha256(&b)?),
                "payload_offset": payload_at,
                "signed_by": kid,
                "manifest": m,
            });
            out.emit(&v, || {
                let files = m
                    .files
                    .iter()
                    .map(|f| format!("  {:<13} {:>12} B  {}  {}", format!("{:?}", f.role).to_lowercase(), f.size, hex::encode(f.sha256), f.name))
                    .collect::<Vec<_>>()
                    .join("\n");
                format!(
                    "{} {}  security_version {}  boards {}  threshold {}\nsigned by: {}\n{} chunk hashes of {} B\n{files}",
                    m.name,
                    m.version,
                    m.security_version,
                    m.compatible.join(","),
                    m.threshold,
                    kid.as_deref().unwrap_or("UNSIGNED"),
                    m.chunk_hashes.len(),
                    m.chunk_size
                )
            });
            Ok(())
        }
    }
}

/// A flag clap requires unless `--from-dir` is given.
fn required<T>(v: Option<T>, flag: &str) -> Result<T> {
    v.with_context(|| format!("{flag} is required without --from-dir"))
}

/// One file of a bundle, stored under its file name.
fn build_file(p: &Path, role: FileRole) -> Result<BuildFile> {
    let name = p
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: no file name", p.display()))?;
    Ok(BuildFile {
        name: name.to_owned(),
        role,
        path: p.to_owned(),
    })
}

/// What a trained bundle directory gives `bundle build`.
struct BundleDir {
    name: String,
    version: String,
    preprocess: PreprocessSpec,
    threshold: f32,
    files: Vec<BuildFile>,
}

/// Reads a trained bundle directory (`tirp train --out`): ensemble.json decides name,
/// version, preprocessing and threshold; every plain file is shipped, in name order, with
/// its role from its name, except ONNX files ensemble.json does not name (the f32
/// references `tirp train` keeps beside the shipped int8 members: 4× the bytes over the
/// serial link, and the box never runs them). Refuses a directory without the golden pair, with a
/// subdirectory, or missing a file ensemble.json names.
fn from_bundle_dir(dir: &Path) -> Result<BundleDir> {
    use tirp_firmware::ensemble::{ENSEMBLE_FILE, EnsembleSpec};
    let spec = EnsembleSpec::load(dir)
        .with_context(|| format!("{}: not a trained bundle directory", dir.display()))?;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("read {}", dir.display()))?;
    paths.sort();
    let used: std::collections::HashSet<&str> = spec
        .members
        .iter()
        .flat_map(|m| std::iter::once(&m.file).chain(&m.full_int8_file))
        .chain([&spec.stacker.file])
        .chain(spec.localiser.as_ref().map(|l| &l.file))
        .map(String::as_str)
        .collect();
    let mut files = Vec::new();
    for p in paths {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with('.') {
            continue;
        }
        if !p.is_file() {
            bail!("{}: bundles are flat; move or remove {name}", dir.display());
        }
        if name.ends_with(".onnx") && !used.contains(name) {
            eprintln!("not shipping {name}: {ENSEMBLE_FILE} does not use it");
            continue;
        }
        let role = if name == super::train::GOLDEN_INPUT {
            FileRole::GoldenInput
        } else if name == super::train::GOLDEN_OUTPUT {
            FileRole::GoldenOutput
        } else if name.ends_with(".onnx") {
            FileRole::Model
        } else {
            FileRole::Other
        };
        files.push(build_file(&p, role)?);
    }
    for golden in [super::train::GOLDEN_INPUT, super::train::GOLDEN_OUTPUT] {
        if !files.iter().any(|f| f.name == golden) {
            bail!(
                "{}: no {golden}: the box's health check needs the golden pair `tirp train` writes",
                dir.display()
            );
        }
    }
    for n in used.iter().copied().chain([ENSEMBLE_FILE]) {
        if !files.iter().any(|f| f.name == n) {
            bail!(
                "{}: {ENSEMBLE_FILE} names {n}, which is missing",
                dir.display()
            );
        }
    }
    Ok(BundleDir {
        name: spec.name,
        version: spec.version,
        preprocess: spec.preprocess,
        threshold: spec.threshold,
        files,
    })
}

fn sign(input: &Path, key: &Path, dest: &Path) -> Result<String> {
    let k = bundle::read_private_key(key)?;
    let mut f = std::fs::File::open(input).with_context(|| format!("open {}", input.display()))?;
    let (mut header, _) = Header::read_from(&mut f)?;
    header.manifest()?; // refuse to sign something this build cannot read
    bundle::sign_header(&mut header, &k);
    let tmp = dest.with_extension("signing");
    bundle::rewrite_header(input, &header, &tmp)?;
    std::fs::rename(&tmp, dest).with_context(|| format!("rename to {}", dest.display()))?;
    Ok(hex::encode(bundle::key_id(&k.verifying_key())))
}

pub fn run_keys(cmd: KeysCommand, conn: &ConnArgs, out: &Output) -> Result<()> {
    match cmd {
        KeysCommand::Gen { out: prefix } => {
            let secret = PathBuf::from(format!("{}.key.pem", prefix.display()));
            let public = PathBuf::from(format!("{}.pub.pem", prefix.display()));
            for p in [&secret, &public] {
                if p.exists() {
                    bail!("{} exists; refusing to overwrite a key", p.display());
                }
            }
            let k = bundle::generate_key()?;
            write_secret(&secret, bundle::private_key_pem(&k)?.as_bytes())?;
            std::fs::write(&public, bundle::public_key_pem(&k.verifying_key())?)
                .with_context(|| format!("write {}", public.display()))?;
            let kid = hex::encode(bundle::key_id(&k.verifying_key()));
            out.emit(
                &serde_json::json!({"key_id": kid, "private": secret.display().to_string(), "public": public.display().to_string()}),
                || format!("key {kid}: private {} (keep secret), public {}", secret.display(), public.display()),
            );
            Ok(())
        }
        KeysCommand::Trust { public_key, key } => {
            let pem = std::fs::read_to_string(&public_key)
                .with_context(|| format!("read {}", public_key.display()))?;
            let new =
                bundle::parse_public_key(&pem).with_context(|| public_key.display().to_string())?;
            let signer = device::load_key(key.key.as_deref())?;
            let mut c = device::connect(conn)?;
            c.trust_key(&pem, &signer).context("trust key")?;
            let info = c.status()?;
            let kid = hex::encode(bundle::key_id(&new));
            out.emit(
                &serde_json::json!({"trusted": kid, "keyring": info.keyring}),
                || {
                    format!(
                        "{} now trusts key {kid} (keyring: {})",
                        info.device_id,
                        info.keyring.join(", ")
                    )
                },
            );
            Ok(())
        }
        KeysCommand::Distrust { key_id, key } => {
            let id: [u8; 8] = hex::decode(&key_id)
                .ok()
                .and_then(|v| v.try_into().ok())
                .with_context(|| format!("{key_id:?} is not a 16-hex-digit key id"))?;
            let signer = device::load_key(key.key.as_deref())?;
            let mut c = device::connect(conn)?;
            c.distrust_key(id, &signer).context("distrust key")?;
            let info = c.status()?;
            out.emit(
                &serde_json::json!({"removed": key_id, "keyring": info.keyring}),
                || {
                    format!(
                        "{} no longer trusts {key_id} (keyring: {})",
                        info.device_id,
                        info.keyring.join(", ")
                    )
                },
            );
            Ok(())
        }
    }
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}
