//! Serves the provisioning link on the board's serial port, or on a pseudo-terminal when that
//! port does not exist (development PCs, CI).

use crate::provision::{Device, DeviceError};
use serialport::{SerialPort, TTYPort};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::warn;

/// An opened link port.
pub struct SerialPortHandle {
    reader: TTYPort,
    writer: TTYPort,
    /// For a pty: our handle on the far end, kept open so the host may close and reopen it
    /// without the pty hanging up.
    _pty_far_end: Option<TTYPort>,
    /// What the host opens.
    pub host_path: String,
    pub is_pty: bool,
}

/// Opens `path` at `baud`, or a pty pair when `path` does not exist.
pub fn open(path: &str, baud: u32) -> Result<SerialPortHandle, DeviceError> {
    let io = |context: String| {
        move |e: serialport::Error| DeviceError::Io {
            context,
            source: e.into(),
        }
    };
    let (mut reader, far, host_path, is_pty) = if std::path::Path::new(path).exists() {
        let port = serialport::new(path, baud)
            .open_native()
            .map_err(io(format!("open serial port {path}")))?;
        (port, None, path.to_owned(), false)
    } else {
        let (master, slave) = TTYPort::pair().map_err(io("open a pseudo-terminal".into()))?;
        let name = slave.name().ok_or_else(|| DeviceError::Io {
            context: "pseudo-terminal has no name".into(),
            source: std::io::Error::other("pty"),
        })?;
        (master, Some(slave), name, true)
    };
    reader
        .set_timeout(Duration::from_millis(50))
        .map_err(io("set port timeout".into()))?;
    let mut writer = reader
        .try_clone_native()
        .map_err(io("clone serial port".into()))?;
    // A host that stops reading must not wedge the daemon: replies are dropped after this.
    writer
        .set_timeout(Duration::from_secs(2))
        .map_err(io("set port timeout".into()))?;
    Ok(SerialPortHandle {
        reader,
        writer,
        _pty_far_end: far,
        host_path,
        is_pty,
    })
}

/// Runs the service on its own thread until `stop` is set. Port errors (a USB gadget
/// re-enumerating) are logged and the port is reopened after a pause.
pub fn spawn(
    device: Arc<Device>,
    mut port: SerialPortHandle,
    path: String,
    baud: u32,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<(), DeviceError>> {
    std::thread::Builder::new()
        .name("serial-service".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match device.serve(&mut port.reader, &mut port.writer, &stop) {
                    Ok(()) if stop.load(Ordering::Relaxed) => {}
                    Ok(()) => {
                        // Hung up: wait for the host (or the USB gadget) to come back.
                        std::thread::sleep(Duration::from_millis(200));
                        if !port.is_pty
                            && let Ok(p) = open(&path, baud)
                        {
                            port = p;
                        }
                    }
                    Err(DeviceError::Crashed(k)) => return Err(DeviceError::Crashed(k)),
                    Err(e) => {
                        warn!(
                            port = path.as_str(),
                            error = e.to_string(),
                            "serial link failed; reopening"
                        );
                        std::thread::sleep(Duration::from_secs(1));
                        if !port.is_pty {
                            match open(&path, baud) {
                                Ok(p) => port = p,
                                Err(e) => {
                                    warn!(
                                        port = path.as_str(),
                                        error = e.to_string(),
                                        "cannot reopen the serial port"
                                    )
                                }
                            }
                        }
                    }
                }
            }
            Ok(())
        })
        .expect("spawn serial service")
}
