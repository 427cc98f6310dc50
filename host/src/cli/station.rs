//! `tirp station`: act as a DR station towards a box — send studies by C-STORE, and measure
//! the station's view of the box: first byte of the C-STORE to the flag on the dashboard.

use super::Output;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tirp_firmware::daemon::spool::instance_id;
use tirp_firmware::dicom::scu::{self, Destination};
use tirp_models::cohort::{self, CohortConfig, ImageFormat};

#[derive(Subcommand)]
pub enum StationCommand {
    /// Send DICOM files (or every .dcm under a directory) to a box by C-STORE.
    Send {
        /// The box: AE@host:port.
        #[arg(long)]
        to: String,
        /// Our calling AE title.
        #[arg(long, default_value = "DRSTATION")]
        ae_title: String,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Latency and throughput of a running box, as stations see them (a bench, not a test).
    Bench(BenchArgs),
}

#[derive(Args)]
pub struct BenchArgs {
    /// The box's DICOM node: AE@host:port.
    #[arg(long)]
    to: String,
    /// The box's dashboard, e.g. http://127.0.0.1:8080 (the flag is seen there).
    #[arg(long)]
    dashboard: String,
    /// Dashboard token.
    #[arg(long)]
    token: String,
    #[arg(long, default_value = "DRSTATION")]
    ae_title: String,
    /// Studies sent one at a time (each after the previous flag): the latency at one station.
    #[arg(long, default_value_t = 30)]
    single: usize,
    /// Concurrent stations for the throughput phase.
    #[arg(long, default_value_t = 8)]
    stations: usize,
    /// Studies per station in the throughput phase.
    #[arg(long, default_value_t = 20)]
    per_station: usize,
    /// Cohort seed (fresh UIDs per seed: a box never processes an instance twice).
    #[arg(long)]
    seed: Option<u64>,
}

pub fn run(cmd: StationCommand, out: &Output) -> Result<()> {
    match cmd {
        StationCommand::Send {
            to,
            ae_title,
            files,
        } => send(&to, &ae_title, &files, out),
        StationCommand::Bench(a) => bench(a, out),
    }
}

fn destination(to: &str) -> Result<Destination> {
    to.parse::<Destination>()
        .map_err(|e| anyhow::anyhow!("--to {to}: {e}"))
}

fn dicom_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    tirp_firmware::dicom::dicom_files(paths).context("listing the DICOM files")
}

fn send(to: &str, ae: &str, paths: &[PathBuf], out: &Output) -> Result<()> {
    let dest = destination(to)?;
    let files = dicom_files(paths)?;
    let mut failed = Vec::new();
    for f in &files {
        if let Err(e) = scu::store_file(ae, &dest, f, Duration::from_secs(30)) {
            eprintln!("{}: {e}", f.display());
            failed.push(f.display().to_string());
        }
    }
    out.emit(
        &serde_json::json!({"sent": files.len() - failed.len(), "failed": failed}),
        || {
            format!(
                "sent {} of {} files to {dest}",
                files.len() - failed.len(),
                files.len()
            )
        },
    );
    if !failed.is_empty() {
        bail!("{} files were not stored", failed.len());
    }
    Ok(())
}

/// Follows the dashboard's event stream; sends (study id, time seen) for every done study.
fn follow_events(base: &str, token: &str, tx: mpsc::Sender<(String, Instant)>) -> Result<()> {
    let hostport = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let mut s = TcpStream::connect(&hostport).with_context(|| format!("connect {hostport}"))?;
    write!(
        s,
        "GET /api/events HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status)?;
    if !status.contains(" 200") {
        bail!("dashboard events: {}", status.trim());
    }
    std::thread::spawn(move || {
        let mut line = String::new();
        while r.read_line(&mut line).is_ok_and(|n| n > 0) {
            if let Some(data) = line.trim().strip_prefix("data:")
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(data.trim())
                && (v["state"] == "done" || v["state"] == "failed")
                && let Some(id) = v["id"].as_str()
                && tx.send((id.to_owned(), Instant::now())).is_err()
            {
                return;
            }
            line.clear();
        }
    });
    Ok(())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn sop_instance_uid(path: &Path) -> Result<String> {
    use dicom_dictionary_std::tags;
    let obj = dicom_object::OpenFileOptions::new()
        .read_until(tags::PIXEL_DATA)
        .open_file(path)
        .with_context(|| format!("open {}", path.display()))?;
    Ok(obj
        .element(tags::SOP_INSTANCE_UID)?
        .to_str()?
        .trim_end_matches('\0')
        .trim()
        .to_owned())
}

fn bench(a: BenchArgs, out: &Output) -> Result<()> {
    let dest = destination(&a.to)?;
    let wanted = a.single + a.stations * a.per_station;
    let seed = a.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let tmp = tempfile::tempdir()?;
    // ~2 views per patient.
    let cfg = CohortConfig {
        seed,
        patients: wanted.div_ceil(2) + 2,
        format: ImageFormat::Dicom,
        ..CohortConfig::default()
    };
    eprintln!(
        "rendering {} synthetic DX patients (seed {seed})",
        cfg.patients
    );
    cohort::generate(&cfg, tmp.path(), &|_, _| {})?;
    let files = dicom_files(&[tmp.path().join("images")])?;
    if files.len() < wanted {
        bail!("the cohort has {} images, {wanted} wanted", files.len());
    }
    let ids: Vec<String> = files[..wanted]
        .iter()
        .map(|f| sop_instance_uid(f).map(|u| instance_id(&u)))
        .collect::<Result<_>>()?;
    let (tx, rx) = mpsc::channel();
    follow_events(&a.dashboard, &a.token, tx)?;
    let bar = ProgressBar::new(wanted as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} studies")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let timeout = Duration::from_secs(120);

    // One station: send, wait for the flag, next.
    bar.set_message("one station");
    let mut single = Vec::new();
    for (f, id) in files.iter().zip(&ids).take(a.single) {
        let t0 = Instant::now();
        scu::store_file(&a.ae_title, &dest, f, Duration::from_secs(30))
            .with_context(|| format!("C-STORE {}", f.display()))?;
        loop {
            let (got, at) = rx.recv_timeout(timeout).context("no flag within 120 s")?;
            if &got == id {
                single.push((at - t0).as_secs_f64() * 1e3);
                break;
            }
        }
        bar.inc(1);
    }
    single.sort_by(f64::total_cmp);

    // Eight stations at once.
    bar.set_message(format!("{} stations", a.stations));
    let rest: Vec<(PathBuf, String)> = files[a.single..wanted]
        .iter()
        .cloned()
        .zip(ids[a.single..].iter().cloned())
        .collect();
    let t0 = Instant::now();
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let (stx, srx) = mpsc::channel::<(String, Instant, Option<String>)>();
    let senders: Vec<_> = rest
        .chunks(a.per_station)
        .map(|chunk| {
            let (chunk, stx, dest, ae) = (
                chunk.to_vec(),
                stx.clone(),
                dest.clone(),
                a.ae_title.clone(),
            );
            std::thread::spawn(move || {
                for (f, id) in chunk {
                    let t = Instant::now();
                    let err = scu::store_file(&ae, &dest, &f, Duration::from_secs(60))
                        .err()
                        .map(|e| e.to_string());
                    let _ = stx.send((id, t, err));
                }
            })
        })
        .collect();
    drop(stx);
    let mut latencies = Vec::new();
    let mut done_at = HashMap::new();
    let mut last = t0;
    while done_at.len() < rest.len() {
        while let Ok((id, t, err)) = srx.try_recv() {
            if let Some(e) = err {
                bail!("C-STORE failed under load: {e}");
            }
            sent_at.insert(id, t);
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((id, at)) => {
                if rest.iter().any(|(_, r)| *r == id) {
                    done_at.insert(id, at);
                    last = at;
                    bar.inc(1);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if last.elapsed() > timeout {
                    bail!(
                        "no flag for 120 s: {} of {} done",
                        done_at.len(),
                        rest.len()
                    );
                }
            }
            Err(e) => bail!("dashboard events ended: {e}"),
        }
    }
    for s in senders {
        let _ = s.join();
    }
    while let Ok((id, t, _)) = srx.try_recv() {
        sent_at.insert(id, t);
    }
    for (id, at) in &done_at {
        if let Some(t) = sent_at.get(id) {
            latencies.push((*at - *t).as_secs_f64() * 1e3);
        }
    }
    latencies.sort_by(f64::total_cmp);
    bar.finish_and_clear();
    let elapsed = (last - t0).as_secs_f64();
    let per_min = rest.len() as f64 / elapsed * 60.0;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    out.emit(
        &serde_json::json!({
            "to": dest.to_string(),
            "cores": cores,
            "one_station": {"studies": single.len(), "p50_ms": percentile(&single, 0.5),
                "p95_ms": percentile(&single, 0.95), "max_ms": single.last()},
            "stations": {"stations": a.stations, "studies": rest.len(), "seconds": elapsed,
                "studies_per_minute": per_min, "p50_ms": percentile(&latencies, 0.5),
                "p95_ms": percentile(&latencies, 0.95)},
        }),
        || {
            format!(
                "C-STORE first byte → flag on the dashboard ({cores} cores)\n\
                 one station, {} studies one at a time: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms\n\
                 {} stations, {} studies at once: {:.1} studies/min sustained ({:.1} s), \
                 latency p50 {:.0} ms, p95 {:.0} ms",
                single.len(),
                percentile(&single, 0.5),
                percentile(&single, 0.95),
                single.last().copied().unwrap_or(f64::NAN),
                a.stations,
                rest.len(),
                per_min,
                elapsed,
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.95),
            )
        },
    );
    Ok(())
}
