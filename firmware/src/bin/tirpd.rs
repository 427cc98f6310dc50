//! `tirpd`: the DeepTIRP Edge device daemon. Serves the provisioning link (install, activate,
//! roll back model bundles; pull the device log). Stops cleanly on SIGTERM or SIGINT.

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
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use tirp_firmware::board::BoardProfile;
    use tirp_firmware::daemon::serial_service;
    use tirp_firmware::engine::EngineOptions;
    use tirp_firmware::health::GoldenInferenceCheck;
    use tirp_firmware::provision::{Device, DeviceConfig};
    use tirp_firmware::slots::{AllChecks, FileIntegrityCheck, HealthCheck};

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
    #[command(name = "tirpd", version, about = "DeepTIRP Edge device daemon")]
    struct Args {
        /// Board profile (boards/*.toml).
        #[arg(long)]
        board: PathBuf,
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
        #[arg(long, default_value_t = 3)]
        max_trial_boots: u32,
        /// Health check of an activated bundle.
        #[arg(long, value_enum, default_value = "golden")]
        health_check: HealthMode,
    }

    pub fn main() -> Result<()> {
        let args = Args::parse();
        let board = BoardProfile::load(&args.board)?;
        let data_dir = args
            .data_dir
            .unwrap_or_else(|| board.storage.data_dir.clone());
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
            eprintln!("tirpd: trusting key {id}");
        }
        let mut cfg = DeviceConfig::new(&data_dir, &board.id);
        cfg.max_trial_boots = args.max_trial_boots;
        let mut checks: Vec<Arc<dyn HealthCheck>> = vec![Arc::new(FileIntegrityCheck)];
        match args.health_check {
            HealthMode::Golden => checks.push(Arc::new(GoldenInferenceCheck::new(
                EngineOptions::for_board(&board),
            ))),
            HealthMode::Integrity => eprintln!(
                "tirpd: warning: --health-check integrity: bundles are marked good without \
                 the golden inference (development only)"
            ),
        }
        let device = Arc::new(
            Device::open(cfg, Arc::new(AllChecks(checks)))
                .with_context(|| format!("open data directory {}", data_dir.display()))?,
        );
        if tirp_firmware::bundle::Keyring::load_dir(&keyring_dir)?.is_empty() {
            eprintln!(
                "tirpd: warning: keyring {} is empty; every bundle will be refused (use --trust)",
                keyring_dir.display()
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            signal_hook::flag::register(sig, stop.clone()).context("install signal handler")?;
        }
        let path = args.serial.unwrap_or_else(|| board.serial.device.clone());
        let baud = args.baud.unwrap_or(board.serial.baud);
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
            slots.active.map_or("none", |s| s.name())
        );
        // Scripts and tests find the port here (renamed into place: never seen half-written).
        let tmp = data_dir.join("serial-port.tmp");
        std::fs::write(&tmp, &port.host_path).context("write serial-port")?;
        std::fs::rename(&tmp, data_dir.join("serial-port")).context("write serial-port")?;
        let serial = serial_service::spawn(device.clone(), port, path, baud, stop.clone());
        match serial.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("serial service: {e}"),
            Err(_) => bail!("serial service panicked"),
        }
        eprintln!("tirpd: stopped");
        Ok(())
    }
}
