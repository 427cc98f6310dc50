//! `tirpd`: the DeepTIRP Edge device daemon. A DICOM node for the DR stations (C-ECHO,
//! C-STORE in; flag, heat-map, Secondary Capture and SRs out through a persistent outbox), a
//! hot folder, the station dashboard, and the provisioning link (install, activate, roll
//! back model bundles; pull the device log). Stops cleanly on SIGTERM or SIGINT: ingest
//! stops, the study in hand is finished, queued studies and results wait on disk.

#[cfg(unix)]
fn main() -> anyhow::Result<()> {
    imp::main()
}

#[cfg(not(unix))]
fn main() {
    eprintln!("tirpd needs a Unix serial stack (pseudo-terminals, termios); the boards run Linux");
    std::process::exit(1);
}

#[cfg(unix)]
mod imp {
    use anyhow::{Context, Result, bail};
    use clap::Parser;
    use std::net::{IpAddr, SocketAddr};
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    use tirp_firmware::board::BoardProfile;
    use tirp_firmware::daemon::dashboard::{self, Dashboard, DashboardConfig, StatusView};
    use tirp_firmware::daemon::hotfolder::HotFolder;
    use tirp_firmware::daemon::outbox::{Outbox, SendEvent};
    use tirp_firmware::daemon::serial_service;
    use tirp_firmware::daemon::station::{Station, StationConfig};
    use tirp_firmware::dicom::scp::{Scp, ScpConfig, ScpStatsHandle};
    use tirp_firmware::dicom::scu::{self, Destination};
    use tirp_firmware::engine::EngineOptions;
    use tirp_firmware::health::GoldenInferenceCheck;
    use tirp_firmware::provision::{Device, DeviceConfig};
    use tirp_firmware::slots::{AllChecks, FileIntegrityCheck, HealthCheck};
    use tracing::{error, info, warn};
    use tracing_subscriber::EnvFilter;

    /// How tirpd writes its log to stderr.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    pub(crate) enum LogFormat {
        /// One line per event: time, level, target, message, `key=value` fields.
        Text,
        /// One JSON object per line (`timestamp`, `level`, `target`, `fields`), for journald
        /// and log shippers.
        Json,
    }

    /// The filter from `RUST_LOG` (unset or empty: `info`); a malformed value is an error
    /// rather than a silently different log.
    pub(crate) fn log_filter(rust_log: Option<&str>) -> Result<EnvFilter> {
        match rust_log.map(str::trim) {
            None | Some("") => Ok(EnvFilter::new("info")),
            Some(v) => EnvFilter::try_new(v).map_err(|e| anyhow::anyhow!("RUST_LOG={v:?}: {e}")),
        }
    }

    /// tirpd's subscriber: events at or above `filter`, as `format`, to `writer`.
    pub(crate) fn log_subscriber<W>(
        format: LogFormat,
        filter: EnvFilter,
        writer: W,
        ansi: bool,
    ) -> Box<dyn tracing::Subscriber + Send + Sync>
    where
        W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
    {
        let b = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(writer);
        match format {
            LogFormat::Text => Box::new(b.with_ansi(ansi).finish()),
            LogFormat::Json => Box::new(
                b.json()
                    .with_current_span(false)
                    .with_span_list(false)
                    .finish(),
            ),
        }
    }

    /// Installs the log subscriber (stderr; colours only on a terminal). The global default
    /// only: records of the `log` crate (tract) are not bridged.
    fn init_logs(format: LogFormat) -> Result<()> {
        use std::io::IsTerminal;
        let filter = log_filter(std::env::var("RUST_LOG").ok().as_deref())?;
        let ansi = std::io::stderr().is_terminal();
        tracing::subscriber::set_global_default(log_subscriber(
            format,
            filter,
            std::io::stderr,
            ansi,
        ))
        .context("install the log subscriber")
    }

    /// What must pass before an activated bundle is marked good.
    #[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
    enum HealthMode {
        /// File sizes and hashes, then the golden inference on the engine (the default).
        Golden,
        /// File sizes and hashes only: development and link tests with payloads the engine
        /// cannot run. Never for a box that serves studies.
        Integrity,
    }

    #[derive(Parser)]
    #[command(
        name = "tirpd",
        version,
        about = "DeepTIRP Edge device daemon: DICOM node, dashboard, provisioning link"
    )]
    struct Args {
        /// Board profile (boards/*.toml).
        #[arg(long)]
        board: PathBuf,
        /// Settings file (TOML; the long option names with `_`, e.g. `ae_title`, `dest = [..]`).
        /// Command-line options override it.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory (default: the profile's storage.data_dir).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Serial device of the provisioning link (default: the profile's serial.device). When it
        /// does not exist a pseudo-terminal is opened and its path printed.
        #[arg(long)]
        serial: Option<String>,
        #[arg(long)]
        baud: Option<u32>,
        /// Public key (SPKI PEM) to add to the device keyring at start (first enrolment).
        #[arg(long = "trust")]
        trust: Vec<PathBuf>,
        /// Restarts a newly activated bundle may take without passing its health check.
        #[arg(long)]
        max_trial_boots: Option<u32>,
        /// Health check of an activated bundle.
        #[arg(long, value_enum)]
        health_check: Option<HealthMode>,
        /// Our DICOM AE title.
        #[arg(long)]
        ae_title: Option<String>,
        /// DICOM port (0: any free port, printed).
        #[arg(long)]
        dicom_port: Option<u16>,
        /// Address the DICOM node listens on.
        #[arg(long)]
        dicom_addr: Option<IpAddr>,
        /// Calling AE titles allowed to connect (repeatable; none = any).
        #[arg(long = "allow-ae")]
        allow_ae: Vec<String>,
        /// Where results go: `AE@host:port` (repeatable).
        #[arg(long = "dest")]
        dest: Vec<String>,
        /// Concurrent DICOM associations.
        #[arg(long)]
        max_associations: Option<usize>,
        /// Dashboard address (port 0: any free port).
        #[arg(long)]
        http_addr: Option<SocketAddr>,
        /// Dashboard access token (default: one kept in DATA_DIR/dashboard-token).
        #[arg(long)]
        token: Option<String>,
        /// The bundle used while no slot is active (default: the shipped models/bundle).
        #[arg(long)]
        bundle: Option<PathBuf>,
        /// Hot folder for stations that export files (default: none).
        #[arg(long)]
        hot_folder: Option<PathBuf>,
        /// Refuse new studies when the data disk has less free space than this (MiB).
        #[arg(long)]
        min_free_mb: Option<u64>,
        /// Demo without a station: push every DICOM file in DIR to this daemon by C-STORE
        /// (calling AE TIRPDEMO) once it is up.
        #[arg(long)]
        demo: Option<PathBuf>,
        /// Log format on stderr (default: text). RUST_LOG filters (default: info).
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    }

    /// The settings file: the same settings as the options.
    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct FileConfig {
        data_dir: Option<PathBuf>,
        serial: Option<String>,
        baud: Option<u32>,
        max_trial_boots: Option<u32>,
        health_check: Option<String>,
        ae_title: Option<String>,
        dicom_port: Option<u16>,
        dicom_addr: Option<IpAddr>,
        #[serde(default)]
        allow_ae: Vec<String>,
        #[serde(default)]
        dest: Vec<String>,
        max_associations: Option<usize>,
        http_addr: Option<SocketAddr>,
        token: Option<String>,
        bundle: Option<PathBuf>,
        hot_folder: Option<PathBuf>,
        min_free_mb: Option<u64>,
        log_format: Option<LogFormat>,
    }

    const DEMO_AE: &str = "TIRPDEMO";

    /// The dashboard token: given, or created once (random) and kept in the data directory.
    fn dashboard_token(data_dir: &std::path::Path, given: Option<String>) -> Result<String> {
        if let Some(t) = given {
            if t.len() < 16 {
                bail!("--token: use at least 16 characters");
            }
            return Ok(t);
        }
        let path = data_dir.join("dashboard-token");
        if let Ok(t) = std::fs::read_to_string(&path) {
            return Ok(t.trim().to_owned());
        }
        use rand::TryRngCore;
        let mut b = [0u8; 16];
        rand::rngs::OsRng
            .try_fill_bytes(&mut b)
            .map_err(|e| anyhow::anyhow!("random token: {e}"))?;
        let t = hex::encode(b);
        std::fs::write(&path, &t).with_context(|| format!("write {}", path.display()))?;
        Ok(t)
    }

    pub fn main() -> Result<()> {
        let started = Instant::now();
        let mut args = Args::parse();
        let board = BoardProfile::load(&args.board)?;
        let file: FileConfig = match &args.config {
            Some(p) => toml::from_str(
                &std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
            )
            .with_context(|| format!("settings file {}", p.display()))?,
            None => FileConfig::default(),
        };
        init_logs(
            args.log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
        )?;
        let health_check = match (args.health_check, file.health_check.as_deref()) {
            (Some(h), _) => h,
            (None, None | Some("golden")) => HealthMode::Golden,
            (None, Some("integrity")) => HealthMode::Integrity,
            (None, Some(other)) => {
                bail!("settings file: health_check {other:?}: use \"golden\" or \"integrity\"")
            }
        };
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| board.storage.data_dir.clone());
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("create data directory {}", data_dir.display()))?;
        let keyring_dir = data_dir.join("keyring");
        for pem_path in &args.trust {
            let pem = std::fs::read_to_string(pem_path)
                .with_context(|| format!("read {}", pem_path.display()))?;
            let key = tirp_firmware::bundle::parse_public_key(&pem)
                .with_context(|| pem_path.display().to_string())?;
            std::fs::create_dir_all(&keyring_dir)?;
            let id = hex::encode(tirp_firmware::bundle::key_id(&key));
            std::fs::write(keyring_dir.join(format!("{id}.pem")), pem.trim())
                .context("write keyring")?;
            info!(key = %id, "trusting key");
        }
        let mut cfg = DeviceConfig::new(&data_dir, &board.id);
        cfg.max_trial_boots = args.max_trial_boots.or(file.max_trial_boots).unwrap_or(3);
        let mut checks: Vec<Arc<dyn HealthCheck>> = vec![Arc::new(FileIntegrityCheck)];
        match health_check {
            HealthMode::Golden => checks.push(Arc::new(GoldenInferenceCheck::new(
                EngineOptions::for_board(&board),
            ))),
            HealthMode::Integrity => warn!(
                health_check = "integrity",
                "bundles are marked good without the golden inference (development only)"
            ),
        }
        let device = Arc::new(
            Device::open(cfg, Arc::new(AllChecks(checks)))
                .with_context(|| format!("open data directory {}", data_dir.display()))?,
        );
        if tirp_firmware::bundle::Keyring::load_dir(&keyring_dir)?.is_empty() {
            warn!(
                keyring = keyring_dir.display().to_string(),
                "keyring is empty; every bundle will be refused (use --trust)"
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, stop.clone()).context("install signal handler")?;
        }
        let mut threads: Vec<(&str, std::thread::JoinHandle<()>)> = Vec::new();

        // Results go back through the persistent outbox.
        let ae_title = args
            .ae_title
            .take()
            .or(file.ae_title)
            .unwrap_or_else(|| ScpConfig::default().ae_title);
        let mut dests = Vec::new();
        for d in args.dest.iter().chain(&file.dest) {
            dests.push(
                d.parse::<Destination>()
                    .map_err(|e| anyhow::anyhow!("--dest {d}: {e}"))?,
            );
        }
        let outbox = Arc::new(
            Outbox::open(
                &data_dir.join("outbox"),
                &ae_title,
                &dests,
                Duration::from_secs(30),
            )
            .context("open the outbox")?,
        );
        threads.extend(
            outbox
                .spawn(
                    stop.clone(),
                    Arc::new(|ev| match ev {
                        // `name`: <study>-<sc|sr|csr>, the study's hashed id.
                        SendEvent::Sent { dest, name } => {
                            info!(dest = %dest, object = %name, "result sent")
                        }
                        SendEvent::Retrying {
                            dest,
                            name,
                            error,
                            after,
                        } => warn!(
                            dest = %dest,
                            object = %name,
                            error = error.as_str(),
                            retry_in_s = after.as_secs(),
                            "result not sent; retrying"
                        ),
                        SendEvent::Refused { dest, name, error } => error!(
                            dest = %dest,
                            object = %name,
                            error = error.as_str(),
                            "result refused by the destination; kept in failed/"
                        ),
                    }),
                )
                .into_iter()
                .map(|h| ("outbox", h)),
        );

        // The dashboard; its status page reads the live counters of every service.
        let history = 200;
        let station_cell: Arc<std::sync::OnceLock<Arc<Station>>> = Arc::default();
        let scp_stats: Arc<std::sync::OnceLock<ScpStatsHandle>> = Arc::default();
        let dicom_label: Arc<std::sync::OnceLock<String>> = Arc::default();
        let status = {
            let (device, outbox, station_cell, scp_stats, dicom_label) = (
                device.clone(),
                outbox.clone(),
                station_cell.clone(),
                scp_stats.clone(),
                dicom_label.clone(),
            );
            let board_id = board.id.clone();
            Box::new(move || {
                let mut v = StatusView {
                    device_id: device.device_id().to_owned(),
                    board: board_id.clone(),
                    firmware_version: env!("CARGO_PKG_VERSION").to_owned(),
                    dicom: dicom_label.get().cloned(),
                    outbox_depth: outbox.depth(),
                    uptime_s: started.elapsed().as_secs(),
                    ..Default::default()
                };
                if let Some(st) = station_cell.get() {
                    let (bundle, slot, backend) = st.engine_summary();
                    (v.bundle, v.slot, v.backend) = (bundle, slot, backend);
                    v.queue_depth = st.queue_depth();
                    let (processed, failed, refused) = st.counters();
                    v.extra.insert("processed".into(), processed.into());
                    v.extra.insert("failed".into(), failed.into());
                    v.extra.insert("refused_at_ingest".into(), refused.into());
                }
                v.extra
                    .insert("outbox_failed".into(), outbox.failed().into());
                if let Some(s) = scp_stats.get()
                    && let Ok(j) = serde_json::to_value(s.snapshot())
                {
                    v.extra.insert("dicom".into(), j);
                }
                v
            })
        };
        let dashboard = Arc::new(Dashboard::new(history, status));
        let token = dashboard_token(&data_dir, args.token.take().or(file.token))?;
        let http_addr = args
            .http_addr
            .or(file.http_addr)
            .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("valid address"));
        let (http_bound, h) = dashboard::serve(
            dashboard.clone(),
            DashboardConfig {
                addr: http_addr,
                token: token.clone(),
                history,
            },
            stop.clone(),
        )
        .with_context(|| format!("dashboard on {http_addr}"))?;
        threads.push(("dashboard", h));

        // The station: spool, worker, DICOM node, hot folder.
        let default_bundle = args.bundle.take().or(file.bundle).or_else(|| {
            let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/bundle");
            shipped.join("ensemble.json").exists().then_some(shipped)
        });
        let station = Station::open(
            StationConfig {
                default_bundle,
                engine: EngineOptions::for_board(&board),
                min_free_bytes: args.min_free_mb.or(file.min_free_mb).unwrap_or(512) << 20,
                software_version: format!("tirpd {}", env!("CARGO_PKG_VERSION")),
            },
            device.clone(),
            outbox.clone(),
            dashboard.clone(),
            history,
        )
        .context("open the study spool")?;
        let _ = station_cell.set(station.clone());
        threads.push(("worker", station.spawn_worker(stop.clone())));
        {
            // Load the engine now rather than on the first study (it is ready before a
            // station connects; the daemon is serving meanwhile).
            let st = station.clone();
            std::thread::spawn(move || {
                if let Err(e) = st.load_engine() {
                    error!(error = format!("{e:#}"), "cannot load the engine");
                }
            });
        }
        let mut allow_ae: Vec<String> = args
            .allow_ae
            .iter()
            .chain(&file.allow_ae)
            .cloned()
            .collect();
        if args.demo.is_some() && !allow_ae.is_empty() {
            allow_ae.push(DEMO_AE.into());
        }
        let scp_cfg = ScpConfig {
            ae_title: ae_title.clone(),
            allow_ae,
            max_associations: args
                .max_associations
                .or(file.max_associations)
                .unwrap_or(ScpConfig::default().max_associations),
            ..ScpConfig::default()
        };
        let dicom_addr = SocketAddr::new(
            args.dicom_addr
                .or(file.dicom_addr)
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
            args.dicom_port.or(file.dicom_port).unwrap_or(11112),
        );
        let scp = Scp::bind(dicom_addr, scp_cfg, station.clone())
            .with_context(|| format!("DICOM node on {dicom_addr}"))?;
        let dicom_bound = scp.local_addr();
        let _ = scp_stats.set(scp.stats_handle());
        let _ = dicom_label.set(format!("{ae_title}@{dicom_bound}"));
        threads.push(("dicom", scp.spawn(stop.clone())));
        let hot_folder = args.hot_folder.take().or(file.hot_folder);
        if let Some(dir) = &hot_folder {
            let hf =
                HotFolder::open(dir).with_context(|| format!("hot folder {}", dir.display()))?;
            threads.push(("hot folder", hf.spawn(station.clone(), stop.clone())));
            println!("tirpd: hot folder {}", dir.display());
        }

        // The provisioning link.
        let path = args
            .serial
            .take()
            .or(file.serial)
            .unwrap_or_else(|| board.serial.device.clone());
        let baud = args.baud.or(file.baud).unwrap_or(board.serial.baud);
        let port = serial_service::open(&path, baud)?;
        let slots = device.info().slots;
        println!(
            "tirpd: device {} board {} serving provisioning link on {}{}",
            device.device_id(),
            board.id,
            port.host_path,
            if port.is_pty {
                " (pseudo-terminal)"
            } else {
                ""
            }
        );
        println!(
            "tirpd: active slot {}",
            slots.active.map_or("none (default bundle)", |s| s.name())
        );
        println!("tirpd: DICOM {ae_title}@{dicom_bound}");
        for d in &dests {
            println!("tirpd: results to {d}");
        }
        let host = if http_bound.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            http_bound.ip().to_string()
        };
        println!(
            "tirpd: dashboard http://{host}:{}/?token={token}",
            http_bound.port()
        );
        // Scripts and tests find the ports here (renamed into place: never seen half-written).
        for (name, value) in [
            ("serial-port", port.host_path.clone()),
            ("dicom-port", dicom_bound.port().to_string()),
            ("http-port", http_bound.port().to_string()),
        ] {
            let tmp = data_dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, &value).with_context(|| format!("write {name}"))?;
            std::fs::rename(&tmp, data_dir.join(name)).with_context(|| format!("write {name}"))?;
        }
        let serial_path = port.host_path.clone();
        let serial_pty = port.is_pty;
        let serial = serial_service::spawn(device.clone(), port, path, baud, stop.clone());
        let ready_ms = (started.elapsed().as_secs_f64() * 1e3).round();
        println!("tirpd: ready in {ready_ms:.0} ms");
        // The banner's facts as one event (the dashboard URL without its token).
        info!(
            device = %device.device_id(),
            board = %board.id,
            version = env!("CARGO_PKG_VERSION"),
            dicom = %format_args!("{ae_title}@{dicom_bound}"),
            dashboard = %format_args!("http://{host}:{}/", http_bound.port()),
            serial = %serial_path,
            serial_pty,
            active_slot = slots.active.map_or("none", |s| s.name()),
            dests = (!dests.is_empty())
                .then(|| dests.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")),
            hot_folder = hot_folder.as_ref().map(|d| d.display().to_string()),
            ready_ms,
            "tirpd ready"
        );
        if let Some(dir) = args.demo.take() {
            let target = Destination {
                ae_title: ae_title.clone(),
                host: "127.0.0.1".into(),
                port: dicom_bound.port(),
            };
            std::thread::spawn(move || demo(&dir, &target));
        }
        let serial_result = serial.join();
        stop.store(true, Ordering::Relaxed);
        for (name, h) in threads {
            if h.join().is_err() {
                error!(thread = name, "thread panicked");
            }
        }
        match serial_result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("serial service: {e}"),
            Err(_) => bail!("serial service panicked"),
        }
        info!("tirpd stopped");
        Ok(())
    }

    /// Sends every DICOM file under `dir` to this daemon, as a station would.
    fn demo(dir: &std::path::Path, target: &Destination) {
        let files = match tirp_firmware::dicom::dicom_files(&[dir.to_owned()]) {
            Ok(f) => f,
            Err(e) => {
                error!(
                    dir = dir.display().to_string(),
                    error = e.to_string(),
                    "demo: cannot list the files"
                );
                return;
            }
        };
        println!(
            "tirpd: demo: sending {} studies from {}",
            files.len(),
            dir.display()
        );
        for f in files {
            if let Err(e) = scu::store_file(DEMO_AE, target, &f, Duration::from_secs(30)) {
                // Not the path: exported files are often named after the patient.
                let error = match e {
                    scu::ScuError::ReadFile { source, .. } => format!("cannot read: {source}"),
                    scu::ScuError::InvalidFile { reason, .. } => reason,
                    e => e.to_string(),
                };
                warn!(error = error.as_str(), "demo: a file was not sent");
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use tirp_firmware::testlog::Buf;

        /// What tirpd's subscriber writes for a few events.
        fn logged(format: LogFormat, rust_log: Option<&str>, ansi: bool) -> String {
            let buf = Buf::default();
            let sub = log_subscriber(format, log_filter(rust_log).unwrap(), buf.clone(), ansi);
            tracing::subscriber::with_default(sub, || {
                info!(
                    study = "ab12cd34",
                    source = "dicom:DRSTATION",
                    "study stored, queued"
                );
                warn!(status = %format_args!("{:#06x}", 0xA900u16), "dicom-scp: C-STORE refused");
                tracing::debug!(detail = 1, "a debug event");
            });
            buf.contents()
        }

        #[test]
        fn json_is_one_object_per_line_with_fields() {
            let out = logged(LogFormat::Json, None, false);
            let lines: Vec<serde_json::Value> = out
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                .collect();
            assert_eq!(lines.len(), 2, "debug is filtered out by default: {out}");
            let e = &lines[0];
            assert!(e["timestamp"].is_string(), "{e}");
            assert_eq!(e["level"], "INFO");
            assert_eq!(e["target"], "tirpd::imp::tests");
            assert_eq!(e["fields"]["message"], "study stored, queued");
            assert_eq!(e["fields"]["study"], "ab12cd34");
            assert_eq!(e["fields"]["source"], "dicom:DRSTATION");
            assert_eq!(lines[1]["level"], "WARN");
            assert_eq!(lines[1]["fields"]["status"], "0xa900");
            assert!(e.get("span").is_none() && e.get("spans").is_none(), "{e}");
        }

        #[test]
        fn text_has_level_message_and_key_values_without_colours_off_a_terminal() {
            let out = logged(LogFormat::Text, None, false);
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), 2, "{out}");
            assert!(
                lines[0].contains(" INFO ")
                    && lines[0].contains("study stored, queued")
                    && lines[0].contains("study=\"ab12cd34\""),
                "{out}"
            );
            assert!(
                lines[1].contains(" WARN ") && lines[1].contains("status=0xa900"),
                "{out}"
            );
            assert!(!out.contains('\x1b'), "ANSI escapes: {out:?}");
            assert!(logged(LogFormat::Text, None, true).contains('\x1b'));
        }

        #[test]
        fn rust_log_filters_and_a_malformed_one_is_refused() {
            assert_eq!(logged(LogFormat::Json, Some(""), false).lines().count(), 2);
            assert_eq!(
                logged(LogFormat::Json, Some("warn"), false).lines().count(),
                1
            );
            assert_eq!(
                logged(LogFormat::Json, Some("debug"), false)
                    .lines()
                    .count(),
                3
            );
            assert_eq!(
                logged(LogFormat::Json, Some("info,tirpd=error"), false)
                    .lines()
                    .count(),
                0
            );
            let e = log_filter(Some("tirpd=loudest")).unwrap_err();
            assert!(e.to_string().contains("RUST_LOG"), "{e}");
        }

        #[test]
        fn log_format_from_options_and_the_settings_file() {
            let a = Args::try_parse_from(["tirpd", "--board", "b.toml", "--log-format", "json"])
                .unwrap();
            assert_eq!(a.log_format, Some(LogFormat::Json));
            let a = Args::try_parse_from(["tirpd", "--board", "b.toml"]).unwrap();
            assert_eq!(a.log_format, None);
            assert!(
                Args::try_parse_from(["tirpd", "--board", "b.toml", "--log-format", "xml"])
                    .is_err()
            );
            let f: FileConfig = toml::from_str("log_format = \"json\"").unwrap();
            assert_eq!(f.log_format, Some(LogFormat::Json));
            let f: FileConfig = toml::from_str("log_format = \"text\"").unwrap();
            assert_eq!(f.log_format, Some(LogFormat::Text));
            assert!(toml::from_str::<FileConfig>("log_format = \"xml\"").is_err());
        }
    }
}
