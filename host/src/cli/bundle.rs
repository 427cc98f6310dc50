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
    /// Build an unsigned bundle from model files and the golden input/output pair.
    Build {
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        /// Anti-rollback counter; devices refuse bundles below the highest they ran.
        #[arg(long, default_value_t = 0)]
        security_version: u32,
        /// Compatible board id (boards/*.toml `id`); repeat for several.
        #[arg(long = "board", required = true)]
        boards: Vec<String>,
        /// Model file (ONNX); repeat for each ensemble member. Stored under its file name.
        #[arg(long = "model", required = true)]
        models: Vec<PathBuf>,
        /// Golden input image of the health check.
        #[arg(long)]
        golden_input: PathBuf,
        /// Expected output of the golden input (JSON: probability, flag, tolerance, member_scores).
        #[arg(long)]
        golden_output: PathBuf,
        /// Operating threshold on the ensemble probability.
        #[arg(long)]
        threshold: f32,
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
            let spec = match preprocess {
                Some(p) => serde_json::from_slice(
                    &std::fs::read(&p).with_context(|| format!("read {}", p.display()))?,
                )
                .with_context(|| format!("{}: not a preprocessing spec", p.display()))?,
                None => PreprocessSpec::default(),
            };
            let mut files = Vec::new();
            let mut add = |p: &Path, role| -> Result<()> {
                let name = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("{}: no file name", p.display()))?;
                files.push(BuildFile {
                    name: name.to_owned(),
                    role,
                    path: p.to_owned(),
                });
                Ok(())
            };
            for m in &models {
                add(m, FileRole::Model)?;
            }
            add(&golden_input, FileRole::GoldenInput)?;
            add(&golden_output, FileRole::GoldenOutput)?;
            for e in &extra {
                add(e, FileRole::Other)?;
            }
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
