//! Goodput of the provisioning link (a bench, not a test): a signed bundle flashed from the
//! host client to the device server over (1) a direct pseudo-terminal pair and (2) an emulated
//! 921,600-baud UART with 16 ms one-way adapter latency. Targets: ≥ 10 MB/s and ≥ 95 % of
//! the line rate.

#[cfg(unix)]
fn main() -> anyhow::Result<()> {
    imp::main()
}

#[cfg(not(unix))]
fn main() {
    eprintln!(
        "tirp-link-bench needs a Unix serial stack (pseudo-terminals, termios); the boards run Linux"
    );
    std::process::exit(1);
}

#[cfg(unix)]
mod imp {
    use anyhow::{Context, Result};
    use clap::Parser;
    use serialport::{SerialPort, TTYPort};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};
    use tirp_firmware::bundle::testkit::{key, make_bundle};
    use tirp_firmware::bundle::{self, public_key_pem};
    use tirp_firmware::link::client::{Client, ClientOptions, tty_link};
    use tirp_firmware::link::fault::{FaultConfig, Faults, FaultyLink};
    use tirp_firmware::provision::{Device, DeviceConfig};
    use tirp_firmware::slots::FileIntegrityCheck;

    #[derive(Parser)]
    #[command(name = "tirp-link-bench", about = "Provisioning link goodput")]
    struct Args {
        /// Model bytes in the pty bundle, MiB.
        #[arg(long, default_value_t = 32)]
        pty_mib: usize,
        /// Model bytes in the UART bundle, KiB.
        #[arg(long, default_value_t = 1024)]
        uart_kib: usize,
        /// UART rate in baud (8N1: 10 bits per byte).
        #[arg(long, default_value_t = 921_600)]
        baud: u32,
        /// One-way adapter latency, ms.
        #[arg(long, default_value_t = 16)]
        latency_ms: u64,
        /// Byte drop and flip rate on the UART (each).
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        #[arg(long, default_value_t = 16384)]
        max_chunk: u32,
        #[arg(long, default_value_t = 8)]
        window: u16,
    }

    fn serve(
        device: Arc<Device>,
        mut port: TTYPort,
    ) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            port.set_timeout(Duration::from_millis(20))
                .expect("timeout");
            let mut w = port.try_clone_native().expect("clone");
            w.set_timeout(Duration::from_secs(5)).expect("timeout");
            if let Err(e) = device.serve(&mut port, &mut w, &s) {
                eprintln!("device: {e}");
            }
        });
        (stop, t)
    }

    fn run(
        args: &Args,
        label: &str,
        model_len: usize,
        host: TTYPort,
        dev: TTYPort,
        line_rate: Option<f64>,
    ) -> Result<()> {
        let dir = std::env::temp_dir().join(format!("tirp-link-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let k = key(1);
        let data = dir.join("data");
        std::fs::create_dir_all(data.join("keyring"))?;
        std::fs::write(
            data.join("keyring/k.pem"),
            public_key_pem(&k.verifying_key())?,
        )?;
        let b = make_bundle(
            &dir,
            "b.tirpb",
            model_len,
            7,
            "x86_64-dev",
            "1.0.0",
            0,
            Some(&k),
        );
        let bytes = std::fs::read(&b)?;
        let device = Arc::new(Device::open(
            DeviceConfig::new(&data, "x86_64-dev"),
            Arc::new(FileIntegrityCheck),
        )?);
        let (stop, t) = serve(device, dev);
        let mut opts = ClientOptions::default();
        opts.send.max_chunk = args.max_chunk;
        opts.send.window = args.window;
        let mut client = Client::connect(tty_link(host)?, opts).context("handshake")?;
        let t0 = Instant::now();
        let report = client.flash(&bytes, &mut |_, _| {})?;
        let total = t0.elapsed().as_secs_f64();
        let s = &report.transfer;
        let goodput = s.goodput();
        print!(
            "{label}: {} bytes, transfer {:.3} s, goodput {:.2} MB/s",
            s.size,
            s.seconds,
            goodput / 1e6
        );
        if let Some(rate) = line_rate {
            print!(
                " = {:.1}% of the {:.0} B/s line rate",
                100.0 * goodput / rate,
                rate
            );
        }
        println!(
            "; incl. verify+install {:.3} s; retransmitted {} B, NAKs {}, timeouts {}, final chunk {}",
            total, s.retransmitted_bytes, s.naks, s.timeouts, s.final_chunk
        );
        assert_eq!(report.sha256, hex::encode(bundle::file_sha256(&b)?));
        drop(client);
        stop.store(true, Ordering::Relaxed);
        t.join().ok();
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    pub fn main() -> Result<()> {
        let args = Args::parse();
        let (host, dev) = TTYPort::pair()?;
        run(&args, "pty pair", args.pty_mib << 20, host, dev, None)?;

        let rate = f64::from(args.baud) / 10.0;
        let uart = Faults {
            bytes_per_s: Some(rate),
            latency: Duration::from_millis(args.latency_ms),
            drop_rate: args.error_rate,
            flip_rate: args.error_rate,
        };
        let (_proxy, host, dev) = FaultyLink::new(FaultConfig {
            host_to_device: uart.clone(),
            device_to_host: uart,
            cut_after: None,
            seed: 3,
        })?;
        let label = format!("UART {} baud, {} ms latency", args.baud, args.latency_ms);
        run(&args, &label, args.uart_kib << 10, host, dev, Some(rate))
    }
}
