//! Incremental log pulls against an in-process device over a pty pair: resumable from the
//! host cursor, idempotent, and explicit about records the device no longer holds.
#![cfg(unix)]

use serialport::{SerialPort, TTYPort};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tirp_firmware::devlog::{DevLog, EventRecord, LogEntry, LogOptions, SyncPolicy};
use tirp_firmware::link::client::{Client, ClientOptions, tty_link};
use tirp_firmware::provision::{Device, DeviceConfig};
use tirp_firmware::slots::FileIntegrityCheck;
use tirp_host::provision::{CursorStore, Gap, JsonlSink, pull_logs};

fn serve(device: Arc<Device>) -> (Client, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let (host, mut dev) = TTYPort::pair().unwrap();
    dev.set_timeout(Duration::from_millis(20)).unwrap();
    let mut w = dev.try_clone_native().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let t = std::thread::spawn(move || {
        device.serve(&mut dev, &mut w, &s).unwrap();
    });
    let client = Client::connect(tty_link(host).unwrap(), ClientOptions::default()).unwrap();
    (client, stop, t)
}

fn lines(p: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn pulls_resume_from_the_cursor_add_nothing_twice_and_report_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("device");
    // 300 events in small segments, then the oldest segment is lost (as retention on a
    // critically full disk would do).
    {
        let opts = LogOptions {
            segment_bytes: 4096,
            sync: SyncPolicy::Manual,
            ..Default::default()
        };
        let mut log = DevLog::open(&data.join("log"), opts).unwrap();
        for i in 0..300 {
            log.append_entry(&LogEntry::Event(EventRecord::now(
                "test",
                format!("event {i}"),
            )))
            .unwrap();
        }
        log.sync().unwrap();
    }
    let mut segs: Vec<_> = std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() > 3);
    std::fs::remove_file(&segs[0]).unwrap();
    let lost_to: u64 = segs[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse::<u64>()
        .unwrap()
        - 1;

    let device = Arc::new(
        Device::open(
            DeviceConfig::new(&data, "x86_64-dev"),
            Arc::new(FileIntegrityCheck),
        )
        .unwrap(),
    );
    let out = dir.path().join("pulled.jsonl");
    let cursors = CursorStore::new(&dir.path().join("host-state"));
    let (mut client, stop, t) = serve(device.clone());
    let mut sink = JsonlSink::open(&out).unwrap();
    let first = pull_logs(&mut client, &mut sink, &cursors, None, &mut |_, _| {}).unwrap();
    assert_eq!(
        first.gaps,
        vec![Gap {
            from_seq: 1,
            to_seq: lost_to
        }]
    );
    assert_eq!(first.first_seq, Some(lost_to + 1));
    // 300 seeded + the daemon's own start event.
    assert_eq!(first.last_seq, Some(301));
    assert_eq!(cursors.get(&first.device_id).unwrap(), Some(302));

    // New records arrive; the next pull takes exactly those.
    for i in 0..5 {
        device
            .log_entry(&LogEntry::Event(EventRecord::now(
                "test",
                format!("late {i}"),
            )))
            .unwrap();
    }
    let second = pull_logs(&mut client, &mut sink, &cursors, None, &mut |_, _| {}).unwrap();
    assert_eq!(
        (second.first_seq, second.last_seq, second.records),
        (Some(302), Some(306), 5)
    );
    assert!(second.gaps.is_empty());
    // A lost cursor file does not duplicate anything: the sink knows what it holds.
    std::fs::remove_dir_all(dir.path().join("host-state")).unwrap();
    let third = pull_logs(&mut client, &mut sink, &cursors, None, &mut |_, _| {}).unwrap();
    assert_eq!(third.records, 0);
    let all = lines(&out);
    let seqs: Vec<u64> = all.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, ((lost_to + 1)..=306).collect::<Vec<_>>());
    assert!(all.iter().all(|v| v["device_id"] == device.device_id()));
    drop(client);
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap();
}
