//! A deterministic faulty serial cable for tests and benches: two pseudo-terminal pairs
//! joined by a proxy that drops and flips bytes (seeded), caps the line rate, adds one-way
//! latency, and can be cut after N bytes like a pulled cable. Needs no privileges.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serialport::{SerialPort, TTYPort};
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Faults of one direction.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Probability that a byte is lost.
    pub drop_rate: f64,
    /// Probability that a byte has one bit flipped.
    pub flip_rate: f64,
    /// Line rate in bytes per second (921,600 baud 8N1 = 92,160 B/s); `None` = as fast as
    /// the pty goes.
    pub bytes_per_s: Option<f64>,
    /// One-way latency (e.g. a USB-serial adapter's latency timer).
    pub latency: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct FaultConfig {
    pub host_to_device: Faults,
    pub device_to_host: Faults,
    /// Cut both directions after this many host→device bytes have been forwarded.
    pub cut_after: Option<u64>,
    pub seed: u64,
}

/// What the proxy did.
#[derive(Debug, Default)]
pub struct FaultCounters {
    pub forwarded_h2d: AtomicU64,
    pub forwarded_d2h: AtomicU64,
    pub dropped: AtomicU64,
    pub flipped: AtomicU64,
    pub cut: AtomicBool,
}

pub struct FaultyLink {
    pub counters: Arc<FaultCounters>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl FaultyLink {
    /// Returns the proxy and the two cable ends: (proxy, host end, device end).
    pub fn new(cfg: FaultConfig) -> std::io::Result<(Self, TTYPort, TTYPort)> {
        let (mut host_side, host_end) = TTYPort::pair().map_err(std::io::Error::from)?;
        let (mut dev_side, dev_end) = TTYPort::pair().map_err(std::io::Error::from)?;
        for p in [&mut host_side, &mut dev_side] {
            p.set_timeout(Duration::from_millis(5))
                .map_err(std::io::Error::from)?;
        }
        let host_w = host_side.try_clone_native().map_err(std::io::Error::from)?;
        let dev_w = dev_side.try_clone_native().map_err(std::io::Error::from)?;
        let counters = Arc::new(FaultCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for (dir, src, dst, faults, seed) in [
            (
                Dir::H2d,
                host_side,
                dev_w,
                cfg.host_to_device.clone(),
                cfg.seed,
            ),
            (
                Dir::D2h,
                dev_side,
                host_w,
                cfg.device_to_host.clone(),
                cfg.seed ^ 0x9e37_79b9,
            ),
        ] {
            let (tx, rx) = mpsc::sync_channel::<(Instant, Vec<u8>)>(8);
            let (c, s) = (counters.clone(), stop.clone());
            let cut_after = cfg.cut_after;
            let faults_in = faults.clone();
            threads.push(std::thread::spawn(move || {
                pump_in(dir, src, tx, faults_in, seed, cut_after, c, s)
            }));
            let (c, s) = (counters.clone(), stop.clone());
            threads.push(std::thread::spawn(move || pump_out(dst, rx, faults, c, s)));
        }
        Ok((
            Self {
                counters,
                stop,
                threads,
            },
            host_end,
            dev_end,
        ))
    }

    /// Pulls the cable now.
    pub fn cut(&self) {
        self.counters.cut.store(true, Ordering::Relaxed);
    }

    pub fn is_cut(&self) -> bool {
        self.counters.cut.load(Ordering::Relaxed)
    }
}

impl Drop for FaultyLink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy)]
enum Dir {
    H2d,
    D2h,
}

/// Bytes until the next event of probability `p` per byte (geometric), so the proxy does not
/// draw a random number per byte at 20 MB/s.
fn gap(rng: &mut ChaCha8Rng, p: f64) -> u64 {
    if p <= 0.0 {
        return u64::MAX;
    }
    let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    (u.ln() / (1.0 - p).ln()).floor().min(u64::MAX as f64 / 2.0) as u64
}

#[allow(clippy::too_many_arguments)]
fn pump_in(
    dir: Dir,
    mut src: TTYPort,
    tx: mpsc::SyncSender<(Instant, Vec<u8>)>,
    faults: Faults,
    seed: u64,
    cut_after: Option<u64>,
    counters: Arc<FaultCounters>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut to_drop = gap(&mut rng, faults.drop_rate);
    let mut to_flip = gap(&mut rng, faults.flip_rate);
    // Rate-limited links read small blocks so pacing (and backpressure) stays fine-grained.
    let mut buf = vec![
        0u8;
        if faults.bytes_per_s.is_some() {
            512
        } else {
            16 * 1024
        }
    ];
    while !stop.load(Ordering::Relaxed) {
        let n = match src.read(&mut buf) {
            Ok(0) => continue,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => continue,
            Err(_) => return,
        };
        let arrived = Instant::now();
        if counters.cut.load(Ordering::Relaxed) {
            continue;
        }
        let mut out = Vec::with_capacity(n);
        for &b in &buf[..n] {
            if let (Dir::H2d, Some(limit)) = (dir, cut_after)
                && counters.forwarded_h2d.load(Ordering::Relaxed) + out.len() as u64 >= limit
            {
                counters.cut.store(true, Ordering::Relaxed);
                break;
            }
            let mut b = b;
            if to_drop == 0 {
                to_drop = gap(&mut rng, faults.drop_rate);
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            to_drop -= 1;
            if to_flip == 0 {
                to_flip = gap(&mut rng, faults.flip_rate);
                b ^= 1 << rng.random_range(0..8);
                counters.flipped.fetch_add(1, Ordering::Relaxed);
            } else {
                to_flip -= 1;
            }
            out.push(b);
        }
        let counter = match dir {
            Dir::H2d => &counters.forwarded_h2d,
            Dir::D2h => &counters.forwarded_d2h,
        };
        counter.fetch_add(out.len() as u64, Ordering::Relaxed);
        if tx.send((arrived, out)).is_err() {
            return;
        }
    }
}

fn pump_out(
    mut dst: TTYPort,
    rx: mpsc::Receiver<(Instant, Vec<u8>)>,
    faults: Faults,
    counters: Arc<FaultCounters>,
    stop: Arc<AtomicBool>,
) {
    let _ = dst.set_timeout(Duration::from_millis(200));
    let mut wire_free = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let Ok((arrived, block)) = rx.recv_timeout(Duration::from_millis(20)) else {
            continue;
        };
        // The byte leaves the sender's UART at the line rate, and arrives `latency` later.
        let start = wire_free.max(arrived);
        let on_wire = faults.bytes_per_s.map_or(Duration::ZERO, |r| {
            Duration::from_secs_f64(block.len() as f64 / r)
        });
        wire_free = start + on_wire;
        let deliver = wire_free + faults.latency;
        if let Some(wait) = deliver.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if counters.cut.load(Ordering::Relaxed) {
            continue;
        }
        let mut rest = &block[..];
        while !rest.is_empty() && !stop.load(Ordering::Relaxed) {
            match dst.write(rest) {
                Ok(n) => rest = &rest[n..],
                Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {}
                Err(_) => return,
            }
        }
    }
}
