//! Device commands over the serial link: `ports`, `info`, `status`, `flash`, `activate`,
//! `rollback`, `logs pull`, and the exit codes every `tirp` command shares.

use super::Output;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tirp_firmware::bundle::{self, BundleError, Header, SigningKey};
use tirp_firmware::link::client::{self, Client, ClientError, ClientOptions};
use tirp_firmware::link::proto::{DeviceInfo, ErrorCode};
use tirp_firmware::slots::{SlotId, SlotsReport};
use tirp_host::provision::{self, CursorStore, JsonlSink, USB_IDS_ENV};

/// Exit codes (also listed in `tirp --help`).
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    // 2: bad usage, returned by clap itself before any command runs.
    pub const DEVICE_NOT_FOUND: u8 = 3;
    pub const BUNDLE_REJECTED: u8 = 4;
    /// Re-running the same command resumes where it stopped.
    pub const TRANSFER_FAILED_RESUMABLE: u8 = 5;
    pub const INCOMPATIBLE_BOARD: u8 = 6;
    /// The device refused a state change (engineer key, health check, nothing to do).
    pub const REFUSED: u8 = 7;
}

pub const EXIT_CODES_HELP: &str = "Exit codes: 0 ok, 1 error, 2 usage, 3 device not found, \
4 bundle rejected, 5 transfer failed (re-run to resume), 6 incompatible board, \
7 state change refused by the device";

/// No device answered (or no port to try).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeviceNotFound(String);

/// Prints the error the way anyhow does and maps it to a distinct exit code.
pub fn finish(result: Result<()>) -> ExitCode {
    let Err(e) = result else {
        return ExitCode::from(exit::OK);
    };
    // anyhow's layout without the backtrace (RUST_BACKTRACE is often set on dev machines).
    eprintln!("Error: {e}");
    let causes: Vec<_> = e.chain().skip(1).collect();
    if !causes.is_empty() {
        eprintln!("\nCaused by:");
        for c in causes {
            eprintln!("    {c}");
        }
    }
    ExitCode::from(exit_code(&e))
}

pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<DeviceNotFound>() {
            return exit::DEVICE_NOT_FOUND;
        }
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return match c {
                ClientError::Rejected {
                    code: ErrorCode::WrongBoard,
                    ..
                } => exit::INCOMPATIBLE_BOARD,
                ClientError::Rejected { code, .. } if code.is_bundle_rejection() => {
                    exit::BUNDLE_REJECTED
                }
                c if c.resumable() => exit::TRANSFER_FAILED_RESUMABLE,
                ClientError::Rejected { .. } => exit::REFUSED,
                _ => exit::FAILURE,
            };
        }
        if let Some(b) = cause.downcast_ref::<BundleError>() {
            return match b {
                BundleError::WrongBoard { .. } => exit::INCOMPATIBLE_BOARD,
                BundleError::Io { .. } | BundleError::Key(_) => exit::FAILURE,
                _ => exit::BUNDLE_REJECTED,
            };
        }
    }
    exit::FAILURE
}

/// Global connection flags (on the `tirp` command line itself).
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// Serial port of the device (default: $TIRP_PORT, else the one recognised DeepTIRP
    /// port, see `tirp ports`).
    #[arg(long, global = true)]
    pub port: Option<String>,
    /// Baud rate (ignored by USB CDC-ACM and pseudo-terminals).
    #[arg(long, global = true, default_value_t = 921_600)]
    pub baud: u32,
    /// Never ask for confirmation (scripts, CI).
    #[arg(long, global = true)]
    pub non_interactive: bool,
}

#[derive(Args, Debug)]
pub struct KeyArg {
    /// Engineer private key (PKCS#8 PEM) the device trusts (default: $TIRP_KEY); state
    /// changes must be signed.
    #[arg(long)]
    pub key: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct FlashArgs {
    /// Signed bundle file (`tirp bundle build` + `tirp bundle sign`).
    pub bundle: PathBuf,
    /// Activate right after installing (needs --key).
    #[arg(long)]
    pub activate: bool,
    /// Engineer key for --activate (default: $TIRP_KEY).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Reconnect and resume this many times after a broken transfer.
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
}

#[derive(Subcommand, Debug)]
pub enum LogsCommand {
    /// Pull the device log incrementally (resumable, idempotent) into a JSONL file.
    Pull {
        /// First sequence number wanted (default: the cursor kept for this device).
        #[arg(long)]
        since: Option<u64>,
        /// JSONL output, appended to (default: <device-id>.jsonl).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Host state directory with the per-device cursors (default: $TIRP_STATE_DIR, else
        /// $XDG_STATE_HOME/tirp, else ~/.local/state/tirp).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Also import the pulled inference records into this SQLite audit store
        /// (`tirp audit`); re-imports are idempotent.
        #[arg(long)]
        db: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeviceCommand {
    /// List serial ports; DeepTIRP devices (Jetson USB gadget 0955:7020, $TIRP_USB_IDS) first.
    Ports,
    /// Handshake with the device and show its identity, board, slots and free space.
    Info,
    /// Slot states of the device (active, candidate, trial, security floor).
    Status,
    /// Transfer a signed bundle (resuming a broken transfer) and install it into the candidate
    /// slot; the running slot is never touched.
    Flash(FlashArgs),
    /// Activate the installed candidate: health check, then marked good (or reverted).
    Activate(KeyArg),
    /// Return to the previous good slot.
    Rollback(KeyArg),
    /// Device log.
    #[command(subcommand)]
    Logs(LogsCommand),
}

pub fn run(cmd: DeviceCommand, conn: &ConnArgs, out: &Output) -> Result<()> {
    match cmd {
        DeviceCommand::Ports => ports(out),
        DeviceCommand::Info => {
            let c = connect(conn)?;
            let info = c.info.clone();
            out.emit(&serde_json::to_value(&info)?, || describe(&info));
            Ok(())
        }
        DeviceCommand::Status => {
            let mut c = connect(conn)?;
            let info = c.status()?;
            out.emit(&serde_json::to_value(&info.slots)?, || {
                slots_text(&info.slots)
            });
            Ok(())
        }
        DeviceCommand::Flash(a) => flash(a, conn, out),
        DeviceCommand::Activate(k) => state_change(
            &k,
            conn,
            out,
            "activate",
            "Activate the candidate on",
            "activated and marked good",
            Client::activate,
        ),
        DeviceCommand::Rollback(k) => state_change(
            &k,
            conn,
            out,
            "rollback",
            "Roll back to the previous slot on",
            "rolled back",
            Client::rollback,
        ),
        DeviceCommand::Logs(LogsCommand::Pull {
            since,
            out: path,
            state_dir,
            db,
        }) => {
            let mut c = connect(conn)?;
            let path = path.unwrap_or_else(|| PathBuf::from(format!("{}.jsonl", c.info.device_id)));
            let mut sink =
                JsonlSink::open(&path).with_context(|| format!("open {}", path.display()))?;
            let cursors = CursorStore::new(&state_dir.unwrap_or_else(CursorStore::default_dir));
            let bar = bar(out, c.info.log_next_seq, "records");
            let summary =
                provision::pull_logs(&mut c, &mut sink, &cursors, since, &mut |n, total| {
                    bar.set_length(total.max(n));
                    bar.set_position(n);
                })?;
            bar.finish_and_clear();
            for g in &summary.gaps {
                eprintln!(
                    "warning: records {}..={} are gone from the device (deleted under a full disk)",
                    g.from_seq, g.to_seq
                );
            }
            let mut v = serde_json::to_value(&summary)?;
            v["out"] = path.display().to_string().into();
            // The JSONL file is the durable raw copy; the store takes its inference records.
            let imported = match &db {
                Some(db) => {
                    let rows = tirp_host::audit::store::read_predictions(&path)?;
                    let mut store = tirp_host::audit::store::AuditStore::open(db)?;
                    let new = store.import_predictions(&rows)?;
                    v["db"] = db.display().to_string().into();
                    v["db_new_predictions"] = new.into();
                    format!("; {new} new predictions into {}", db.display())
                }
                None => String::new(),
            };
            out.emit(&v, || {
                format!(
                    "{} records ({}) from {} into {}; next pull starts at {}{imported}{}",
                    summary.records,
                    match (summary.first_seq, summary.last_seq) {
                        (Some(a), Some(b)) => format!("seq {a}..={b}"),
                        _ => "none new".into(),
                    },
                    summary.device_id,
                    path.display(),
                    summary.next_seq,
                    if summary.gaps.is_empty() {
                        ""
                    } else {
                        "; GAPS reported above"
                    }
                )
            });
            Ok(())
        }
    }
}

/// A signed slot change: confirm, sign the device's challenge, show the new slots.
fn state_change(
    k: &KeyArg,
    conn: &ConnArgs,
    out: &Output,
    action: &str,
    question: &str,
    done: &str,
    change: fn(&mut Client, &SigningKey) -> Result<SlotsReport, ClientError>,
) -> Result<()> {
    let key = load_key(k.key.as_deref())?;
    let mut c = connect(conn)?;
    confirm(conn, &format!("{question} {}?", c.info.device_id))?;
    let slots = change(&mut c, &key).with_context(|| action.to_owned())?;
    out.emit(&serde_json::to_value(&slots)?, || {
        format!("{done}\n{}", slots_text(&slots))
    });
    Ok(())
}

fn ports(out: &Output) -> Result<()> {
    let extra = match std::env::var(USB_IDS_ENV) {
        Ok(s) => {
            provision::parse_usb_ids(&s).map_err(|e| anyhow::anyhow!("${USB_IDS_ENV}: {e}"))?
        }
        Err(_) => Vec::new(),
    };
    let ports = provision::list_ports(&extra).context("list serial ports")?;
    out.emit(&serde_json::to_value(&ports)?, || {
        if ports.is_empty() {
            return "no serial ports found".into();
        }
        ports
            .iter()
            .map(|p| {
                let usb = match (&p.vid, &p.pid) {
                    (Some(v), Some(pi)) => format!(" usb {v}:{pi}"),
                    _ => String::new(),
                };
                let what = [&p.manufacturer, &p.product, &p.serial_number]
                    .iter()
                    .filter_map(|s| s.as_deref())
                    .collect::<Vec<_>>()
                    .join(" ");
                let mark = p
                    .recognised
                    .as_deref()
                    .map_or(String::new(), |r| format!("  <- {r}"));
                format!("{} ({}{usb}) {what}{mark}", p.path, p.kind)
            })
            .collect::<Vec<_>>()
            .join("\n")
    });
    Ok(())
}

/// The port to use: `--port`, else the single recognised DeepTIRP port.
fn pick_port(conn: &ConnArgs) -> Result<String> {
    if let Some(p) = conn
        .port
        .clone()
        .or_else(|| std::env::var("TIRP_PORT").ok())
    {
        return Ok(p);
    }
    let extra = std::env::var(USB_IDS_ENV)
        .ok()
        .and_then(|s| provision::parse_usb_ids(&s).ok())
        .unwrap_or_default();
    let ports = provision::list_ports(&extra).unwrap_or_default();
    let found: Vec<_> = ports.iter().filter(|p| p.recognised.is_some()).collect();
    match found.as_slice() {
        [one] => Ok(one.path.clone()),
        [] => Err(DeviceNotFound(format!(
            "no DeepTIRP device port found ({} serial ports present); pass --port PATH \
             (a tirpd on a pseudo-terminal prints its path)",
            ports.len()
        ))
        .into()),
        many => Err(DeviceNotFound(format!(
            "several DeepTIRP ports: {}; choose one with --port",
            many.iter()
                .map(|p| p.path.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into()),
    }
}

pub fn connect(conn: &ConnArgs) -> Result<Client> {
    let port = pick_port(conn)?;
    let link = client::open_serial(&port, conn.baud)
        .map_err(|e| DeviceNotFound(format!("cannot open {port}: {e}")))?;
    match Client::connect(link, ClientOptions::default()) {
        Ok(c) => Ok(c),
        Err(e @ ClientError::Timeout { .. }) => {
            Err(DeviceNotFound(format!("no tirpd answered on {port}: {e}")).into())
        }
        Err(e) => Err(e).with_context(|| format!("handshake on {port}")),
    }
}

/// The engineer key: `--key`, else `$TIRP_KEY`.
pub fn load_key(path: Option<&Path>) -> Result<SigningKey> {
    let path = match path {
        Some(p) => p.to_owned(),
        None => std::env::var_os("TIRP_KEY")
            .map(PathBuf::from)
            .context("state changes need the engineer key: pass --key KEY.pem or set $TIRP_KEY")?,
    };
    bundle::read_private_key(&path).with_context(|| format!("engineer key {}", path.display()))
}

fn confirm(conn: &ConnArgs, question: &str) -> Result<()> {
    if conn.non_interactive {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!("{question} needs confirmation, but stdin is not a terminal: pass --non-interactive");
    }
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        bail!("cancelled")
    }
}

fn bar(out: &Output, len: u64, unit: &str) -> ProgressBar {
    if out.json || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    let tpl = format!("{{bar:40}} {{pos}}/{{len}} {unit} {{msg}}");
    b.set_style(ProgressStyle::with_template(&tpl).expect("valid template"));
    b
}

fn flash(a: FlashArgs, conn: &ConnArgs, out: &Output) -> Result<()> {
    let bytes = std::fs::read(&a.bundle).with_context(|| format!("read {}", a.bundle.display()))?;
    let (header, _) = Header::parse_prefix(&bytes)
        .with_context(|| a.bundle.display().to_string())?
        .ok_or(BundleError::Malformed(
            "file shorter than its header".into(),
        ))?;
    let manifest = header.manifest()?;
    if header.signature.is_none() {
        return Err(BundleError::Unsigned).context("sign it first with `tirp bundle sign`");
    }
    // A bundle corrupted on this laptop is caught here, not after a long transfer.
    let (_, payload_at) = Header::parse_prefix(&bytes)?.expect("parsed above");
    bundle::check_payload(&manifest, &mut &bytes[payload_at..], |_, _| Ok(()))
        .with_context(|| format!("{} is damaged", a.bundle.display()))?;
    let key = if a.activate {
        Some(load_key(a.key.as_deref())?)
    } else {
        None
    };
    let mut c = connect(conn)?;
    // Refuse a bundle for another board before sending a byte.
    if !manifest.compatible.contains(&c.info.board) {
        return Err(BundleError::WrongBoard {
            board: c.info.board.clone(),
            compatible: manifest.compatible.clone(),
        })
        .context("bundle does not fit this device");
    }
    eprintln!("{}", describe(&c.info));
    eprintln!(
        "bundle {} {} (security_version {}, {} bytes, boards {})",
        manifest.name,
        manifest.version,
        manifest.security_version,
        bytes.len(),
        manifest.compatible.join(",")
    );
    confirm(
        conn,
        &format!(
            "Install {} {} into slot {} of {}?",
            manifest.name,
            manifest.version,
            c.info.slots.candidate().name(),
            c.info.device_id
        ),
    )?;
    let bar = bar(out, bytes.len() as u64, "bytes");
    let mut attempt = 0;
    let report = loop {
        match c.flash(&bytes, &mut |at, size| {
            bar.set_position(at);
            if at == size {
                bar.set_message("verifying and installing on the device…");
            }
        }) {
            Ok(r) => break r,
            Err(e) if e.resumable() && attempt < a.retries => {
                attempt += 1;
                bar.println(format!(
                    "link broke ({e}); reconnecting to resume ({attempt}/{})",
                    a.retries
                ));
                std::thread::sleep(std::time::Duration::from_secs(1));
                c = connect(conn)?;
            }
            Err(e) => {
                bar.abandon();
                return Err(e).context("flash");
            }
        }
    };
    bar.finish_and_clear();
    let mut v = serde_json::to_value(&report)?;
    let mut text = format!(
        "installed {} {} into the candidate slot ({:.2} MB/s, resumed from byte {}, {} bytes resent)",
        manifest.name,
        manifest.version,
        report.transfer.goodput() / 1e6,
        report.transfer.resumed_from,
        report.transfer.retransmitted_bytes
    );
    if let Some(key) = key.filter(|_| a.activate) {
        let slots = c.activate(&key).context("activate")?;
        text.push_str(&format!(
            "\nactivated and marked good\n{}",
            slots_text(&slots)
        ));
        v["slots"] = serde_json::to_value(&slots)?;
        v["activated"] = true.into();
    } else {
        text.push_str(&format!(
            "\n{}\nrun `tirp activate` to switch to it",
            slots_text(&report.slots)
        ));
    }
    out.emit(&v, || text);
    Ok(())
}

fn describe(info: &DeviceInfo) -> String {
    format!(
        "device {} board {} tirpd {} (link v{}), {:.1} GB free, {} trusted keys, log at seq {}\n{}",
        info.device_id,
        info.board,
        info.firmware_version,
        info.proto,
        info.free_space as f64 / 1e9,
        info.keyring.len(),
        info.log_next_seq,
        slots_text(&info.slots)
    )
}

fn slots_text(s: &SlotsReport) -> String {
    let line = |id: SlotId| {
        let r = s.slot(id);
        let b = r.bundle.as_ref().map_or("-".to_owned(), |b| {
            format!(
                "{} {} (sv {}, key {}, sha256 {}…)",
                b.name,
                b.version,
                b.security_version,
                b.key_id,
                &b.sha256[..12]
            )
        });
        let mark = if s.active == Some(id) { "*" } else { " " };
        format!(
            "{mark} slot {}: {:<9} {b}",
            id.name(),
            format!("{:?}", r.state).to_lowercase()
        )
    };
    format!(
        "{}\n{}\n  security floor {}{}",
        line(SlotId::A),
        line(SlotId::B),
        s.security_floor,
        if s.trial_boots > 0 {
            format!(", trial boots {}", s.trial_boots)
        } else {
            String::new()
        }
    )
}
