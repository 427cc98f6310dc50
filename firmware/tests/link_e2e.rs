//! Host ↔ device over pseudo-terminal pairs, through the deterministic fault proxy.
#![cfg(unix)]

use serialport::{SerialPort, TTYPort};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tirp_firmware::bundle::testkit::{key, make_bundle};
use tirp_firmware::bundle::{self, public_key_pem};
use tirp_firmware::link::client::{Client, ClientError, ClientOptions, tty_link};
use tirp_firmware::link::fault::{FaultConfig, Faults, FaultyLink};
use tirp_firmware::link::proto::ErrorCode;
use tirp_firmware::provision::{Device, DeviceConfig, DeviceError};
use tirp_firmware::slots::{FileIntegrityCheck, HealthCheck, SlotId, SlotState};

const BOARD: &str = "x86_64-dev";

fn code<T>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Rejected { code, .. }) => code,
        Err(e) => panic!("expected a rejection, got {e}"),
        Ok(_) => panic!("expected a rejection, got success"),
    }
}

struct Served {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<(), DeviceError>>>,
}

impl Served {
    fn start(device: Arc<Device>, mut port: TTYPort) -> Self {
        port.set_timeout(Duration::from_millis(20)).unwrap();
        let mut writer = port.try_clone_native().unwrap();
        writer.set_timeout(Duration::from_secs(2)).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (d, s) = (device.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut reader = port;
            d.serve(&mut reader, &mut writer, &s)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Result<(), DeviceError> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

fn trust(data_dir: &Path, k: &ed25519_dalek::SigningKey) {
    let ring = data_dir.join("keyring");
    std::fs::create_dir_all(&ring).unwrap();
    let pem = public_key_pem(&k.verifying_key()).unwrap();
    let id = hex::encode(bundle::key_id(&k.verifying_key()));
    std::fs::write(ring.join(format!("{id}.pem")), pem).unwrap();
}

fn open_device(data_dir: &Path, crash_at: Option<usize>) -> Result<Arc<Device>, DeviceError> {
    let mut cfg = DeviceConfig::new(data_dir, BOARD);
    cfg.crash_at = crash_at;
    cfg.log.sync = tirp_firmware::devlog::SyncPolicy::Manual;
    Device::open(cfg, Arc::new(FileIntegrityCheck)).map(Arc::new)
}

fn fast_opts() -> ClientOptions {
    let mut o = ClientOptions {
        request_timeout: Duration::from_millis(500),
        retries: 2,
        commit_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    o.send.rto = Duration::from_millis(300);
    o
}

fn direct(device: &Arc<Device>) -> (Served, Client) {
    let (host, dev) = TTYPort::pair().unwrap();
    let served = Served::start(device.clone(), dev);
    let client = Client::connect(tty_link(host).unwrap(), fast_opts()).unwrap();
    (served, client)
}

fn slot_sha(device: &Device, slot: SlotId) -> Option<String> {
    device
        .info()
        .slots
        .slot(slot)
        .bundle
        .as_ref()
        .map(|b| b.sha256.clone())
}

fn sha_hex(p: &Path) -> String {
    hex::encode(bundle::file_sha256(p).unwrap())
}

fn setup(
    model_len: usize,
) -> (
    tempfile::TempDir,
    PathBuf,
    PathBuf,
    ed25519_dalek::SigningKey,
) {
    let dir = tempfile::tempdir().unwrap();
    let k = key(11);
    let data = dir.path().join("data");
    trust(&data, &k);
    let b = make_bundle(
        dir.path(),
        "b1.tirpb",
        model_len,
        1,
        BOARD,
        "1.0.0",
        1,
        Some(&k),
    );
    (dir, data, b, k)
}

#[test]
fn bundle_arrives_intact_at_1e5_byte_error_rate() {
    let (_dir, data, b, k) = setup(2 * 1024 * 1024);
    let device = open_device(&data, None).unwrap();
    let noisy = Faults {
        drop_rate: 1e-5,
        flip_rate: 1e-5,
        ..Default::default()
    };
    let (proxy, host, dev) = FaultyLink::new(FaultConfig {
        host_to_device: noisy.clone(),
        device_to_host: noisy,
        cut_after: None,
        seed: 42,
    })
    .unwrap();
    let served = Served::start(device.clone(), dev);
    let mut client = Client::connect(tty_link(host).unwrap(), fast_opts()).unwrap();
    let bytes = std::fs::read(&b).unwrap();
    let report = client.flash(&bytes, &mut |_, _| {}).unwrap();
    let faults = proxy.counters.dropped.load(Ordering::Relaxed)
        + proxy.counters.flipped.load(Ordering::Relaxed);
    eprintln!("faults injected {faults}, transfer {:?}", report.transfer);
    assert!(faults > 0, "the proxy injected no fault");
    assert!(report.transfer.naks + report.transfer.timeouts > 0);
    assert_eq!(report.sha256, sha_hex(&b));
    let slots = client.activate(&k).unwrap();
    assert_eq!(slots.active, Some(SlotId::A));
    assert_eq!(slots.a.state, SlotState::Good);
    // The slot's files are the bundle's, byte for byte.
    let (dir, manifest) = device.active_bundle().unwrap().unwrap();
    FileIntegrityCheck.check(&dir, &manifest).unwrap();
    drop(client);
    served.stop().unwrap();
}

#[test]
fn cut_link_resumes_exactly_where_it_stopped() {
    let (_dir, data, b, _k) = setup(1024 * 1024);
    let bytes = std::fs::read(&b).unwrap();
    let sha: [u8; 32] = bundle::file_sha256(&b).unwrap();
    let device = open_device(&data, None).unwrap();
    let (proxy, host, dev) = FaultyLink::new(FaultConfig {
        cut_after: Some(400_000),
        seed: 1,
        ..Default::default()
    })
    .unwrap();
    let served = Served::start(device.clone(), dev);
    let mut opts = fast_opts();
    opts.send.max_timeouts = 2;
    let mut client = Client::connect(tty_link(host).unwrap(), opts).unwrap();
    let err = client.flash(&bytes, &mut |_, _| {}).unwrap_err();
    assert!(proxy.is_cut());
    assert!(err.resumable(), "{err}");
    drop(client);
    served.stop().unwrap();
    drop(proxy);
    let partial = data
        .join("incoming")
        .join(format!("{}.partial", hex::encode(sha)));
    let staged = std::fs::metadata(&partial).unwrap().len();
    assert!(staged > 0 && staged <= 400_000, "staged {staged}");

    // A new session (the cable plugged back in) sends exactly the rest.
    let (served, mut client) = direct(&device);
    let report = client.flash(&bytes, &mut |_, _| {}).unwrap();
    assert_eq!(report.transfer.resumed_from, staged);
    assert_eq!(report.transfer.bytes_sent, bytes.len() as u64 - staged);
    assert_eq!(slot_sha(&device, SlotId::A).unwrap(), sha_hex(&b));
    assert!(!partial.exists());
    // Flashing it again sends nothing: it is already installed.
    let again = client.flash(&bytes, &mut |_, _| {}).unwrap();
    assert_eq!(again.transfer.bytes_sent, 0);
    assert_eq!(again.slots, report.slots);
    drop(client);
    served.stop().unwrap();
}

#[test]
fn resume_discards_a_corrupted_staged_chunk() {
    let (_dir, data, b, _k) = setup(600 * 1024);
    let bytes = std::fs::read(&b).unwrap();
    let sha = bundle::file_sha256(&b).unwrap();
    // A staging file whose second payload chunk was torn by a power cut.
    let incoming = data.join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    let (_, payload_at) = bundle::Header::parse_prefix(&bytes).unwrap().unwrap();
    let cs = bundle::CHUNK_HASH_SIZE as usize;
    let mut partial = bytes[..payload_at + 3 * cs + 100].to_vec();
    partial[payload_at + cs + 7] ^= 0xff;
    std::fs::write(
        incoming.join(format!("{}.partial", hex::encode(sha))),
        &partial,
    )
    .unwrap();
    let device = open_device(&data, None).unwrap();
    let (served, mut client) = direct(&device);
    let report = client.flash(&bytes, &mut |_, _| {}).unwrap();
    assert_eq!(report.transfer.resumed_from, (payload_at + cs) as u64);
    drop(client);
    served.stop().unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// The device dies at a durable step of install or activation (every step, for several
/// bundles: over 100 runs). After a restart exactly one good slot is active, and a retry
/// of the same commands completes the update.
#[test]
fn killing_the_device_during_install_or_activation_leaves_one_good_slot() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(12);
    let template = dir.path().join("template");
    trust(&template, &k);
    let b1 = make_bundle(
        dir.path(),
        "b1.tirpb",
        48 * 1024,
        1,
        BOARD,
        "1.0.0",
        1,
        Some(&k),
    );
    {
        let device = open_device(&template, None).unwrap();
        let (served, mut client) = direct(&device);
        client
            .flash(&std::fs::read(&b1).unwrap(), &mut |_, _| {})
            .unwrap();
        client.activate(&k).unwrap();
        drop(client);
        served.stop().unwrap();
    }
    let mut runs = 0;
    let mut crashes = 0;
    for variant in 0u64.. {
        if runs >= 110 {
            break;
        }
        let len = 20 * 1024 + (variant as usize * 37_111) % (200 * 1024);
        let b2 = make_bundle(
            dir.path(),
            &format!("v{variant}.tirpb"),
            len,
            100 + variant,
            BOARD,
            "2.0.0",
            1,
            Some(&k),
        );
        let bytes = std::fs::read(&b2).unwrap();
        for at in 0.. {
            runs += 1;
            let data = dir.path().join(format!("run-{variant}-{at}"));
            copy_dir(&template, &data);
            let device = open_device(&data, Some(at)).unwrap();
            let (served, mut client) = direct(&device);
            let result = client
                .flash(&bytes, &mut |_, _| {})
                .and_then(|_| client.activate(&k));
            drop(client);
            let crashed = matches!(served.stop(), Err(DeviceError::Crashed(_)));
            drop(device);
            // Restart: one consistent good slot is active.
            let device = open_device(&data, None).unwrap();
            let (id, slot_dir, manifest) = {
                let info = device.info();
                let id = info.slots.active.expect("a slot is active");
                assert_eq!(
                    info.slots.slot(id).state,
                    SlotState::Good,
                    "run {variant}/{at}"
                );
                let (d, m) = device.active_bundle().unwrap().unwrap();
                (id, d, m)
            };
            FileIntegrityCheck.check(&slot_dir, &manifest).unwrap();
            if !crashed {
                result.unwrap();
                assert_eq!(manifest.version, "2.0.0");
                std::fs::remove_dir_all(&data).unwrap();
                break;
            }
            crashes += 1;
            assert!(result.is_err());
            // The engineer simply runs the commands again.
            let (served, mut client) = direct(&device);
            client.flash(&bytes, &mut |_, _| {}).unwrap();
            let slots = match client.activate(&k) {
                Ok(s) => s,
                // The crash came after activation completed: it is already active.
                Err(ClientError::Rejected {
                    code: ErrorCode::NothingToActivate,
                    ..
                }) => client.status().unwrap().slots,
                Err(e) => panic!("run {variant}/{at}: {e} (active was {id:?})"),
            };
            let active = slots.active.unwrap();
            assert_eq!(slots.slot(active).state, SlotState::Good);
            assert_eq!(
                slots.slot(active).bundle.as_ref().unwrap().sha256,
                sha_hex(&b2)
            );
            drop(client);
            served.stop().unwrap();
            std::fs::remove_dir_all(&data).unwrap();
        }
    }
    eprintln!("{runs} runs, {crashes} simulated crashes");
    assert!(runs >= 100 && crashes >= 90);
}

#[test]
fn every_rejection_path_is_distinct_over_the_link() {
    let dir = tempfile::tempdir().unwrap();
    let k = key(13);
    let data = dir.path().join("data");
    trust(&data, &k);
    let device = open_device(&data, None).unwrap();
    let (served, mut client) = direct(&device);
    let flash =
        |client: &mut Client, p: &Path| client.flash(&std::fs::read(p).unwrap(), &mut |_, _| {});

    let d = dir.path();
    let unsigned = make_bundle(d, "u.tirpb", 30_000, 1, BOARD, "1.0.0", 1, None);
    assert_eq!(code(flash(&mut client, &unsigned)), ErrorCode::Unsigned);
    let foreign = make_bundle(d, "f.tirpb", 30_000, 1, BOARD, "1.0.0", 1, Some(&key(99)));
    assert_eq!(code(flash(&mut client, &foreign)), ErrorCode::UnknownKey);
    // Wrong board: refused as soon as the header has arrived, long before the payload ends.
    let wrong = make_bundle(
        d,
        "w.tirpb",
        1024 * 1024,
        1,
        "jetson-orin-nano-8gb",
        "1.0.0",
        1,
        Some(&k),
    );
    assert_eq!(code(flash(&mut client, &wrong)), ErrorCode::WrongBoard);
    assert!(!data.join("incoming").read_dir().unwrap().any(|_| true));

    let good = make_bundle(d, "g.tirpb", 30_000, 1, BOARD, "1.0.0", 5, Some(&k));
    let bytes = std::fs::read(&good).unwrap();
    let (header, end) = bundle::Header::parse_prefix(&bytes).unwrap().unwrap();
    // Payload tampered after signing: caught at commit by the chunk hashes.
    let mut t = bytes.clone();
    t[end + 20_000] ^= 0x40;
    std::fs::write(d.join("t.tirpb"), &t).unwrap();
    assert_eq!(
        code(flash(&mut client, &d.join("t.tirpb"))),
        ErrorCode::Tampered
    );
    // Manifest tampered: the signature fails.
    let mut h = header.clone();
    let at = h.manifest.windows(5).position(|w| w == b"1.0.0").unwrap();
    h.manifest[at] = b'9';
    let mut t = h.encode();
    t.extend_from_slice(&bytes[end..]);
    std::fs::write(d.join("m.tirpb"), &t).unwrap();
    assert_eq!(
        code(flash(&mut client, &d.join("m.tirpb"))),
        ErrorCode::BadSignature
    );
    // A manifest format this device does not know.
    let mut h = header.clone();
    h.manifest[0] = 9;
    let mut t = h.encode();
    t.extend_from_slice(&bytes[end..]);
    std::fs::write(d.join("v.tirpb"), &t).unwrap();
    assert_eq!(
        code(flash(&mut client, &d.join("v.tirpb"))),
        ErrorCode::VersionMismatch
    );

    // Downgrade: install and activate security_version 5, then offer 4.
    flash(&mut client, &good).unwrap();
    client.activate(&k).unwrap();
    let old = make_bundle(d, "o.tirpb", 30_000, 2, BOARD, "0.9.0", 4, Some(&k));
    assert_eq!(code(flash(&mut client, &old)), ErrorCode::Downgrade);

    // State changes need a trusted engineer key.
    let again = make_bundle(d, "a.tirpb", 30_000, 3, BOARD, "1.1.0", 5, Some(&k));
    flash(&mut client, &again).unwrap();
    assert_eq!(code(client.activate(&key(98))), ErrorCode::AuthFailed);
    assert_eq!(code(client.rollback(&key(98))), ErrorCode::AuthFailed);
    client.activate(&k).unwrap();
    let slots = client.rollback(&k).unwrap();
    assert_eq!(slots.active, Some(SlotId::A));
    assert_eq!(code(client.rollback(&k)), ErrorCode::NothingToRollBack);

    // Key rotation: trust a new key (signed by the old one), then bundles by either verify.
    let new_key = key(14);
    let pem = public_key_pem(&new_key.verifying_key()).unwrap();
    client.trust_key(&pem, &k).unwrap();
    let by_new = make_bundle(d, "n.tirpb", 30_000, 4, BOARD, "1.2.0", 5, Some(&new_key));
    flash(&mut client, &by_new).unwrap();
    client.activate(&new_key).unwrap();
    client
        .distrust_key(bundle::key_id(&k.verifying_key()), &new_key)
        .unwrap();
    let by_old = make_bundle(d, "x.tirpb", 30_000, 5, BOARD, "1.3.0", 5, Some(&k));
    assert_eq!(code(flash(&mut client, &by_old)), ErrorCode::UnknownKey);
    assert_eq!(
        code(client.distrust_key(bundle::key_id(&new_key.verifying_key()), &new_key)),
        ErrorCode::Protocol
    );

    // Every event reached the device log, and pages resume from the cursor.
    let mut since = 1;
    let mut events = Vec::new();
    let mut last_request;
    loop {
        last_request = since;
        let page = client.logs_page(since, 3, 1 << 20, true).unwrap();
        assert_eq!(page.first_seq, since);
        for r in &page.records {
            assert_eq!(r.seq, since);
            since += 1;
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap();
            events.push(v["event"].as_str().unwrap_or("").to_owned());
        }
        if !page.more {
            break;
        }
    }
    // Cursor pages acknowledged everything pulled; a look from a later seq acks nothing.
    let pulled = || std::fs::read_to_string(data.join("log/pulled")).unwrap();
    assert_eq!(pulled(), last_request.to_string());
    client.logs_page(since + 100, 10, 1 << 20, false).unwrap();
    assert_eq!(pulled(), last_request.to_string());
    client.logs_page(since, 1, 1, true).unwrap();
    assert_eq!(pulled(), since.to_string());
    for e in [
        "start",
        "install",
        "activate",
        "health_check",
        "rollback",
        "keyring",
        "install_rejected",
        "auth_failed",
    ] {
        assert!(events.iter().any(|x| x == e), "no {e} event in {events:?}");
    }
    drop(client);
    served.stop().unwrap();
    // The study-key salt survives restarts (truth labels keep joining) and hides the UID.
    let uid = "1.2.826.0.1.3680043.8.498.1";
    let before = device.study_key(uid);
    drop(device);
    let device = open_device(&data, None).unwrap();
    assert_eq!(device.study_key(uid), before);
    assert!(!before.contains("1.2.826"));
}

#[test]
fn protocol_version_mismatch_is_refused_by_name_on_both_sides() {
    let dir = tempfile::tempdir().unwrap();
    let device = open_device(&dir.path().join("data"), None).unwrap();
    let (mut host, dev) = TTYPort::pair().unwrap();
    let served = Served::start(device, dev);
    // A frame from a future host: version 99.
    use std::io::{Read, Write};
    let mut body = postcard::to_allocvec(&(99u16, 5u32, 0u8)).unwrap();
    let crc = tirp_firmware::link::frame::CRC32C.checksum(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    let mut wire = cobs::encode_vec(&body);
    wire.push(0);
    host.write_all(&wire).unwrap();
    host.set_timeout(Duration::from_millis(500)).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while !got.contains(&0) {
        let n = host.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
    }
    let end = got.iter().position(|&b| b == 0).unwrap();
    let env = tirp_firmware::link::frame::decode(&mut got[..end]).unwrap();
    match env.msg {
        tirp_firmware::link::proto::Msg::Error { code, message } => {
            assert_eq!(code, ErrorCode::VersionMismatch);
            assert!(message.contains("v99"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    served.stop().unwrap();
}

#[test]
fn a_half_frame_left_by_a_vanished_host_costs_the_next_session_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let device = open_device(&dir.path().join("data"), None).unwrap();
    let (mut host, dev) = TTYPort::pair().unwrap();
    let served = Served::start(device, dev);
    // The first half of a frame, then the host is gone.
    use std::io::Write;
    let frame = tirp_firmware::link::frame::encode(7, &tirp_firmware::link::proto::Msg::GetStatus);
    host.write_all(&frame[..frame.len() / 2]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let opts = fast_opts();
    let timeout = opts.request_timeout;
    let client = Client::connect(tty_link(host).unwrap(), opts).unwrap();
    // Answered at the first attempt: no retry after a request timeout was needed.
    assert!(client.rtt < timeout, "handshake took {:?}", client.rtt);
    drop(client);
    served.stop().unwrap();
}

/// A slow, high-latency UART (921,600 baud, 16 ms each way) with no faults: the transfer
/// needs no retransmission at all, so the retransmit timer never fires spuriously while
/// the window drains at line rate. (Throughput itself is measured by `tirp-link-bench`.)
#[test]
fn emulated_uart_with_adapter_latency_needs_no_retransmission() {
    let (_dir, data, b, _k) = setup(256 * 1024);
    let device = open_device(&data, None).unwrap();
    let uart = Faults {
        bytes_per_s: Some(92_160.0),
        latency: Duration::from_millis(16),
        ..Default::default()
    };
    let (_proxy, host, dev) = FaultyLink::new(FaultConfig {
        host_to_device: uart.clone(),
        device_to_host: uart,
        cut_after: None,
        seed: 5,
    })
    .unwrap();
    let served = Served::start(device.clone(), dev);
    let mut client = Client::connect(tty_link(host).unwrap(), ClientOptions::default()).unwrap();
    let bytes = std::fs::read(&b).unwrap();
    let report = client.flash(&bytes, &mut |_, _| {}).unwrap();
    let t = &report.transfer;
    assert_eq!(
        (t.timeouts, t.naks, t.retransmitted_bytes),
        (0, 0, 0),
        "{t:?}"
    );
    assert_eq!(slot_sha(&device, SlotId::A).unwrap(), sha_hex(&b));
    drop(client);
    served.stop().unwrap();
}
