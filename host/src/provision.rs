//! Host side of provisioning: finding the device's serial port, and pulling the device log
//! incrementally into a sink (JSONL here; the audit store plugs in through [`LogSink`]).

use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use tirp_firmware::link::client::{Client, ClientError};

/// USB ids recognised as a DeepTIRP device without configuration: the Jetson L4T USB
/// device-mode gadget (CDC-ACM serial), which `tirpd` serves on Orin boards.
pub const BUILTIN_USB_IDS: &[(u16, u16, &str)] =
    &[(0x0955, 0x7020, "NVIDIA Jetson USB device mode")];

/// Environment variable with extra `VID:PID[,VID:PID...]` to recognise (custom gadgets).
pub const USB_IDS_ENV: &str = "TIRP_USB_IDS";

#[derive(Debug, Clone, Serialize)]
pub struct PortInfo {
    pub path: String,
    /// `usb`, `pci`, `bluetooth` or `unknown`.
    pub kind: &'static str,
    pub vid: Option<String>,
    pub pid: Option<String>,
    pub serial_number: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    /// Why this port looks like a DeepTIRP device, if it does.
    pub recognised: Option<String>,
}

/// Parses `VID:PID` lists such as `0955:7020,1d6b:0104`.
pub fn parse_usb_ids(s: &str) -> Result<Vec<(u16, u16)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            tirp_firmware::board::parse_usb_id(p)
                .ok_or_else(|| format!("{p:?} is not VID:PID in hex (e.g. 0955:7020)"))
        })
        .collect()
}

/// Every serial port of this machine, with recognised DeepTIRP devices marked.
pub fn list_ports(extra_ids: &[(u16, u16)]) -> Result<Vec<PortInfo>, serialport::Error> {
    let mut out: Vec<PortInfo> = serialport::available_ports()?
        .into_iter()
        .map(|p| describe(p, extra_ids))
        .collect();
    // DeepTIRP devices first.
    out.sort_by(|a, b| (a.recognised.is_none(), &a.path).cmp(&(b.recognised.is_none(), &b.path)));
    Ok(out)
}

/// One enumerated port, recognised as a DeepTIRP device by its USB id (built-in or `extra_ids`).
pub fn describe(p: serialport::SerialPortInfo, extra_ids: &[(u16, u16)]) -> PortInfo {
    let mut info = PortInfo {
        path: p.port_name.clone(),
        kind: "unknown",
        vid: None,
        pid: None,
        serial_number: None,
        manufacturer: None,
        product: None,
        recognised: None,
    };
    match p.port_type {
        serialport::SerialPortType::UsbPort(u) => {
            info.kind = "usb";
            info.vid = Some(format!("{:04x}", u.vid));
            info.pid = Some(format!("{:04x}", u.pid));
            info.recognised = BUILTIN_USB_IDS
                .iter()
                .find(|(v, p, _)| (*v, *p) == (u.vid, u.pid))
                .map(|(_, _, name)| (*name).to_owned())
                .or_else(|| {
                    extra_ids
                        .contains(&(u.vid, u.pid))
                        .then(|| format!("configured USB id {:04x}:{:04x}", u.vid, u.pid))
                });
            info.serial_number = u.serial_number;
            info.manufacturer = u.manufacturer;
            info.product = u.product;
        }
        serialport::SerialPortType::PciPort => info.kind = "pci",
        serialport::SerialPortType::BluetoothPort => info.kind = "bluetooth",
        serialport::SerialPortType::Unknown => {}
    }
    info
}

/// One pulled log record: its sequence number and the parsed entry.
#[derive(Debug, Clone)]
pub struct PulledRecord {
    pub seq: u64,
    pub entry: serde_json::Value,
}

/// Where pulled records go. Implementations must store a page durably before returning, so
/// the cursor saved afterwards never runs ahead of the data.
pub trait LogSink {
    /// Highest sequence number already stored for `device_id` (makes re-pulls idempotent).
    fn last_seq(&mut self, device_id: &str) -> std::io::Result<Option<u64>>;
    fn append(&mut self, device_id: &str, records: &[PulledRecord]) -> std::io::Result<()>;
}

/// Appends records as JSON lines (`device_id`, `seq`, then the entry's fields).
pub struct JsonlSink {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonlSink {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            path: path.to_owned(),
            file,
        })
    }
}

impl LogSink for JsonlSink {
    fn last_seq(&mut self, device_id: &str) -> std::io::Result<Option<u64>> {
        let text = std::fs::read_to_string(&self.path)?;
        let mut last = None;
        for line in text.lines() {
            // A torn last line (crash mid-write) is ignored; its record is pulled again.
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["device_id"] == device_id
                && let Some(seq) = v["seq"].as_u64()
            {
                last = last.max(Some(seq));
            }
        }
        Ok(last)
    }

    fn append(&mut self, device_id: &str, records: &[PulledRecord]) -> std::io::Result<()> {
        let mut buf = Vec::new();
        for r in records {
            let mut obj = match &r.entry {
                serde_json::Value::Object(m) => m.clone(),
                other => serde_json::Map::from_iter([("payload".to_owned(), other.clone())]),
            };
            // The pulled device and position are authoritative over the record's own fields.
            obj.insert("device_id".into(), device_id.into());
            obj.insert("seq".into(), r.seq.into());
            serde_json::to_writer(&mut buf, &obj)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()
    }
}

/// Per-device log cursors kept on the host (`cursors.json` in the state directory).
pub struct CursorStore {
    path: PathBuf,
}

impl CursorStore {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            path: state_dir.join("log-cursors.json"),
        }
    }

    /// The host's state directory: `$TIRP_STATE_DIR`, else `$XDG_STATE_HOME/tirp`, else
    /// `~/.local/state/tirp`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("TIRP_STATE_DIR") {
            return d.into();
        }
        if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
            return PathBuf::from(d).join("tirp");
        }
        std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".local/state/tirp"))
            .unwrap_or_else(|| PathBuf::from(".tirp-state"))
    }

    fn load(&self) -> std::io::Result<serde_json::Map<String, serde_json::Value>> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b).map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
            Err(e) => Err(e),
        }
    }

    pub fn get(&self, device_id: &str) -> std::io::Result<Option<u64>> {
        Ok(self.load()?.get(device_id).and_then(|v| v.as_u64()))
    }

    pub fn set(&self, device_id: &str, next_seq: u64) -> std::io::Result<()> {
        let mut all = self.load()?;
        all.insert(device_id.into(), next_seq.into());
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&all)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(transparent)]
    Link(#[from] ClientError),
    #[error("log sink: {0}")]
    Sink(std::io::Error),
    #[error("log cursor: {0}")]
    Cursor(std::io::Error),
    #[error("record {seq} is not JSON: {message}")]
    BadRecord { seq: u64, message: String },
}

/// A range of records the device no longer held (retention under a full disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub from_seq: u64,
    pub to_seq: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PullSummary {
    pub device_id: String,
    pub since_seq: u64,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub next_seq: u64,
    pub gaps: Vec<Gap>,
}

/// Pulls every record from the cursor on: `since` if given, else the saved cursor, never
/// below what the sink already holds. The cursor is saved after each durably stored page,
/// so an interrupted pull resumes and a repeated one adds nothing twice. Only cursor pulls
/// acknowledge records to the device (which then may reclaim them).
pub fn pull_logs(
    client: &mut Client,
    sink: &mut dyn LogSink,
    cursors: &CursorStore,
    since: Option<u64>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PullSummary, PullError> {
    let device_id = client.info.device_id.clone();
    let stored = sink.last_seq(&device_id).map_err(PullError::Sink)?;
    let start = match since {
        Some(s) => s.max(1),
        None => cursors
            .get(&device_id)
            .map_err(PullError::Cursor)?
            .unwrap_or(1)
            .max(stored.map_or(1, |s| s + 1)),
    };
    // An explicit --since below what the sink holds re-pulls nothing already stored.
    let mut at = start.max(stored.map_or(1, |s| s + 1));
    // Only a pull that continues the host's own cursor acknowledges records to the device: a
    // look from an explicit --since may have skipped records no host has stored yet.
    let ack = since.is_none();
    let mut summary = PullSummary {
        device_id: device_id.clone(),
        since_seq: start,
        records: 0,
        first_seq: None,
        last_seq: None,
        next_seq: at,
        gaps: Vec::new(),
    };
    loop {
        let page = client.logs_page(at, 500, 40 * 1024, ack)?;
        let mut batch = Vec::with_capacity(page.records.len());
        // Any jump in sequence numbers is a gap: records lost to retention on a full disk,
        // or unreadable on the device.
        let mut expect = at;
        for r in &page.records {
            if r.seq > expect {
                summary.gaps.push(Gap {
                    from_seq: expect,
                    to_seq: r.seq - 1,
                });
            }
            expect = r.seq + 1;
            let entry = serde_json::from_slice(&r.payload).map_err(|e| PullError::BadRecord {
                seq: r.seq,
                message: e.to_string(),
            })?;
            batch.push(PulledRecord { seq: r.seq, entry });
        }
        sink.append(&device_id, &batch).map_err(PullError::Sink)?;
        if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
            summary.first_seq.get_or_insert(first.seq);
            summary.last_seq = Some(last.seq);
            summary.records += batch.len() as u64;
        }
        at = page.next_seq.max(at);
        cursors.set(&device_id, at).map_err(PullError::Cursor)?;
        summary.next_seq = at;
        progress(
            summary.records,
            client.info.log_next_seq.saturating_sub(start),
        );
        if !page.more {
            break;
        }
    }
    // Acknowledge the final cursor so the device may reclaim everything pulled.
    if ack {
        client.logs_page(at, 1, 1, true)?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serialport::{SerialPortInfo, SerialPortType, UsbPortInfo};

    fn usb(path: &str, vid: u16, pid: u16) -> SerialPortInfo {
        SerialPortInfo {
            port_name: path.into(),
            port_type: SerialPortType::UsbPort(UsbPortInfo {
                vid,
                pid,
                serial_number: Some("1421922054123".into()),
                manufacturer: Some("NVIDIA".into()),
                product: Some("Linux for Tegra".into()),
            }),
        }
    }

    #[test]
    fn the_jetson_gadget_and_configured_ids_are_recognised() {
        let j = describe(usb("/dev/ttyACM0", 0x0955, 0x7020), &[]);
        assert_eq!(
            (j.kind, j.vid.as_deref(), j.pid.as_deref()),
            ("usb", Some("0955"), Some("7020"))
        );
        assert_eq!(
            j.recognised.as_deref(),
            Some("NVIDIA Jetson USB device mode")
        );
        assert_eq!(j.product.as_deref(), Some("Linux for Tegra"));
        let ftdi = describe(usb("/dev/ttyUSB0", 0x0403, 0x6001), &[]);
        assert_eq!(
            ftdi.recognised, None,
            "a plain USB-UART adapter is listed, not claimed"
        );
        let ids = parse_usb_ids("0403:6001, 1d6b:0104").unwrap();
        let ftdi = describe(usb("/dev/ttyUSB0", 0x0403, 0x6001), &ids);
        assert_eq!(
            ftdi.recognised.as_deref(),
            Some("configured USB id 0403:6001")
        );
        let uart = describe(
            SerialPortInfo {
                port_name: "/dev/ttyTHS0".into(),
                port_type: SerialPortType::Unknown,
            },
            &ids,
        );
        assert_eq!((uart.kind, uart.recognised), ("unknown", None));
        assert!(parse_usb_ids("0955-7020").is_err());
    }
}
