//! Wire framing: `COBS(postcard(version, id, message) ‖ CRC-32C le) 0x00`.
//!
//! The protocol version is the first postcard field, read before the message body, so a peer
//! speaking another version is reported as such instead of as a garbled frame.

use super::proto::{Envelope, Msg, PROTO_VERSION};
use crc::{CRC_32_ISCSI, Crc};

/// CRC-32C (Castagnoli), as used by iSCSI and ext4.
pub const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// Largest decoded frame the deframer accepts; bigger input is dropped up to the next 0x00.
pub const MAX_FRAME: usize = 64 * 1024;

/// A frame that arrived but cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame longer than {MAX_FRAME} bytes")]
    Overflow,
    #[error("bad COBS encoding")]
    Cobs,
    #[error("CRC mismatch")]
    Crc,
    #[error("peer speaks protocol version {peer}, this side speaks {PROTO_VERSION}")]
    Version { peer: u16 },
    #[error("undecodable message: {0}")]
    Decode(String),
}

/// Encodes one message into a complete frame, sentinel included.
pub fn encode(id: u32, msg: &Msg) -> Vec<u8> {
    let mut body = postcard::to_allocvec(&(PROTO_VERSION, id, msg)).expect("messages serialise");
    let crc = CRC32C.checksum(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    let mut out = cobs::encode_vec(&body);
    out.push(0);
    out
}

/// Decodes the bytes between two sentinels.
pub fn decode(encoded: &mut [u8]) -> Result<Envelope, FrameError> {
    let n = cobs::decode_in_place(encoded).map_err(|_| FrameError::Cobs)?;
    if n < 5 {
        return Err(FrameError::Crc);
    }
    let (body, crc) = encoded[..n].split_at(n - 4);
    let crc = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
    if CRC32C.checksum(body) != crc {
        return Err(FrameError::Crc);
    }
    let (version, rest): (u16, _) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Decode(e.to_string()))?;
    if version != PROTO_VERSION {
        return Err(FrameError::Version { peer: version });
    }
    let (id, msg): (u32, Msg) =
        postcard::from_bytes(rest).map_err(|e| FrameError::Decode(e.to_string()))?;
    Ok(Envelope { id, msg })
}

/// Counters of what the deframer saw, for diagnostics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeframeStats {
    pub frames: u64,
    pub crc_errors: u64,
    pub cobs_errors: u64,
    pub overflows: u64,
    pub decode_errors: u64,
}

/// Stream deframer: feed it bytes as they come, collect frames. Garbage and overflow are
/// dropped up to the next 0x00, so one corrupted frame never takes its neighbours with it.
#[derive(Debug, Default)]
pub struct Deframer {
    buf: Vec<u8>,
    overflowed: bool,
    pub stats: DeframeStats,
}

impl Deframer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes `bytes`, calling `out` for every complete frame (good or bad).
    pub fn push(&mut self, bytes: &[u8], mut out: impl FnMut(Result<Envelope, FrameError>)) {
        let mut rest = bytes;
        while !rest.is_empty() {
            match rest.iter().position(|&b| b == 0) {
                None => {
                    self.take(rest);
                    return;
                }
                Some(end) => {
                    self.take(&rest[..end]);
                    rest = &rest[end + 1..];
                    if let Some(result) = self.finish() {
                        out(result);
                    }
                }
            }
        }
    }

    fn take(&mut self, bytes: &[u8]) {
        if self.overflowed {
            return;
        }
        // COBS adds at most one byte per 254, plus the CRC.
        if self.buf.len() + bytes.len() > MAX_FRAME + MAX_FRAME / 254 + 8 {
            self.overflowed = true;
            self.buf.clear();
            return;
        }
        self.buf.extend_from_slice(bytes);
    }

    fn finish(&mut self) -> Option<Result<Envelope, FrameError>> {
        if std::mem::take(&mut self.overflowed) {
            self.stats.overflows += 1;
            return Some(Err(FrameError::Overflow));
        }
        if self.buf.is_empty() {
            // Back-to-back sentinels: senders may lead with one to flush line noise.
            return None;
        }
        let result = decode(&mut self.buf);
        self.buf.clear();
        match &result {
            Ok(_) => self.stats.frames += 1,
            Err(FrameError::Crc) => self.stats.crc_errors += 1,
            Err(FrameError::Cobs) => self.stats.cobs_errors += 1,
            Err(_) => self.stats.decode_errors += 1,
        }
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(d: &mut Deframer, bytes: &[u8]) -> Vec<Result<Envelope, FrameError>> {
        let mut v = Vec::new();
        d.push(bytes, |r| v.push(r));
        v
    }

    #[test]
    fn round_trip_split_at_every_byte() {
        let msg = Msg::Chunk {
            offset: 12345,
            data: (0..=255u8).cycle().take(3000).collect(),
        };
        let wire = encode(7, &msg);
        assert_eq!(wire.iter().filter(|&&b| b == 0).count(), 1);
        for split in 0..wire.len() {
            let mut d = Deframer::new();
            let mut got = frames(&mut d, &wire[..split]);
            got.extend(frames(&mut d, &wire[split..]));
            assert_eq!(got.len(), 1, "split {split}");
            let env = got.pop().unwrap().unwrap();
            assert_eq!((env.id, env.msg), (7, msg.clone()));
        }
    }

    #[test]
    fn bit_flip_is_a_crc_error_and_the_next_frame_survives() {
        let a = encode(1, &Msg::GetStatus);
        let b = encode(2, &Msg::GetStatus);
        for i in 0..a.len() - 1 {
            for bit in 0..8 {
                let mut bad = a.clone();
                bad[i] ^= 1 << bit;
                let mut wire = bad;
                wire.extend_from_slice(&b);
                let mut d = Deframer::new();
                let got = frames(&mut d, &wire);
                let good: Vec<_> = got.iter().filter_map(|r| r.as_ref().ok()).collect();
                // A flip can turn a byte into 0x00 and split the frame; never a false accept.
                assert_eq!(good.len(), 1, "byte {i} bit {bit}");
                assert_eq!(good[0].id, 2);
            }
        }
    }

    #[test]
    fn overflow_resyncs_at_next_sentinel() {
        let mut d = Deframer::new();
        let garbage = vec![0x55u8; MAX_FRAME * 2];
        let mut wire = garbage;
        wire.push(0);
        wire.extend_from_slice(&encode(9, &Msg::GetStatus));
        let got = frames(&mut d, &wire);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Err(FrameError::Overflow));
        assert_eq!(got[1].as_ref().unwrap().id, 9);
        assert_eq!(d.stats.overflows, 1);
    }

    #[test]
    fn other_protocol_version_is_named() {
        let mut body = postcard::to_allocvec(&(PROTO_VERSION + 1, 3u32, &Msg::GetStatus)).unwrap();
        let crc = CRC32C.checksum(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let mut wire = cobs::encode_vec(&body);
        wire.push(0);
        let mut d = Deframer::new();
        let got = frames(&mut d, &wire);
        assert_eq!(
            got,
            vec![Err(FrameError::Version {
                peer: PROTO_VERSION + 1
            })]
        );
    }
}
