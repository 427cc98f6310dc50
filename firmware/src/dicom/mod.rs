//! DICOM on the box: the C-ECHO / C-STORE SCP that receives radiographs from DR stations
//! ([`scp`]), the C-STORE SCU that sends results back ([`scu`]), and the result objects
//! themselves ([`results`]).
//!
//! Built on dicom-ul 0.10 (sync API, one thread per association). The node only negotiates
//! what this build can decode ([`TRANSFER_SYNTAXES`]), so a station that would send a
//! compression we cannot read falls back to Explicit/Implicit VR Little Endian instead of
//! being told "stored" for an image we cannot process.
//!
//! Logs never carry patient data: AE titles, peer IP, SOP class, transfer syntax, byte count
//! and [`uid_hash`] of the instance UID (UIDs can be traced back to a patient, so they are
//! hashed too).

use sha2::{Digest, Sha256};

pub mod results;
pub mod scp;
pub mod scu;

/// Every `.dcm` file under `paths` (directories walked recursively, files taken as given),
/// sorted: what a station would send (`tirp station`, `tirpd --demo`).
pub fn dicom_files(paths: &[std::path::PathBuf]) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut v = Vec::new();
    let mut stack = Vec::new();
    for p in paths {
        if p.is_dir() {
            stack.push(p.clone());
        } else if p.exists() {
            v.push(p.clone());
        } else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{}: no such file", p.display()),
            ));
        }
    }
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let path = e?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("dcm"))
            {
                v.push(path);
            }
        }
    }
    v.sort();
    Ok(v)
}

/// Verification SOP Class (C-ECHO); accepted in addition to [`STORAGE_SOP_CLASSES`].
pub const VERIFICATION_SOP_CLASS: &str = "1.2.840.10008.1.1";

/// Digital X-Ray Image Storage – For Presentation.
pub const DX_FOR_PRESENTATION: &str = "1.2.840.10008.5.1.4.1.1.1.1";
/// Digital X-Ray Image Storage – For Processing.
pub const DX_FOR_PROCESSING: &str = "1.2.840.10008.5.1.4.1.1.1.1.1";
/// Computed Radiography Image Storage.
pub const CR_IMAGE: &str = "1.2.840.10008.5.1.4.1.1.1";
/// Secondary Capture Image Storage.
pub const SECONDARY_CAPTURE: &str = "1.2.840.10008.5.1.4.1.1.7";

/// Storage SOP classes the node accepts: DX for presentation + for processing, CR, Secondary
/// Capture. Verification ([`VERIFICATION_SOP_CLASS`]) is accepted as well but is not a storage
/// class, so it is not in this list.
pub const STORAGE_SOP_CLASSES: &[&str] = &[
    DX_FOR_PRESENTATION,
    DX_FOR_PROCESSING,
    CR_IMAGE,
    SECONDARY_CAPTURE,
];

/// Implicit VR Little Endian, the DICOM default every SCP must accept.
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";
/// Explicit VR Little Endian.
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
/// Deflated Explicit VR Little Endian.
pub const DEFLATED_EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1.99";
/// RLE Lossless.
pub const RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
/// JPEG Baseline (Process 1), 8-bit lossy.
pub const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";
/// JPEG Lossless, Non-Hierarchical (Process 14).
pub const JPEG_LOSSLESS_P14: &str = "1.2.840.10008.1.2.4.57";
/// JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1]).
pub const JPEG_LOSSLESS_SV1: &str = "1.2.840.10008.1.2.4.70";
/// JPEG 2000 Image Compression (Lossless Only).
pub const JPEG_2000_LOSSLESS: &str = "1.2.840.10008.1.2.4.90";
/// JPEG 2000 Image Compression (lossless or lossy).
pub const JPEG_2000: &str = "1.2.840.10008.1.2.4.91";

/// Transfer syntaxes offered: only what this build decodes (pure-Rust codecs: jpeg, rle,
/// deflate, openjp2). Never 12-bit JPEG Extended (.4.51: jpeg-decoder rejects 12-bit lossy)
/// and never JPEG-LS (needs the C++ CharLS build).
pub const TRANSFER_SYNTAXES: &[&str] = &[
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    DEFLATED_EXPLICIT_VR_LE,
    RLE_LOSSLESS,
    JPEG_BASELINE,
    JPEG_LOSSLESS_P14,
    JPEG_LOSSLESS_SV1,
    JPEG_2000_LOSSLESS,
    JPEG_2000,
];

/// Our Implementation Class UID (a fixed UUID-derived 2.25 root), written into the file meta
/// group of every received instance. dicom-ul 0.10 puts its own implementation UID into
/// A-ASSOCIATE-RQ/AC PDUs and offers no way to override it.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.277760546659246390290828963287558142161";
/// Our Implementation Version Name (SH, at most 16 characters).
pub const IMPLEMENTATION_VERSION_NAME: &str = concat!("TIRPD_", env!("CARGO_PKG_VERSION"));

/// Largest AE title (AE VR: 16 characters).
pub const MAX_AE_TITLE_LEN: usize = 16;

/// Non-reversible 8-hex-digit tag of a UID for logs (first 4 bytes of SHA-256), so log
/// lines about one instance can be correlated without writing the UID itself.
pub fn uid_hash(uid: &str) -> String {
    let digest = Sha256::digest(trim_uid(uid).as_bytes());
    hex::encode(&digest[..4])
}

/// UIDs arrive padded to even length with NUL (and sometimes spaces); compare them trimmed.
pub(crate) fn trim_uid(uid: &str) -> &str {
    uid.trim_end_matches(['\0', ' '])
}

/// Checks an AE title: 1–16 characters of printable ASCII without backslash, not all spaces.
pub fn validate_ae_title(ae: &str) -> Result<(), String> {
    if ae.trim().is_empty() {
        return Err("AE title is empty".into());
    }
    if ae.len() > MAX_AE_TITLE_LEN {
        return Err(format!(
            "AE title {ae:?} has {} characters, at most {MAX_AE_TITLE_LEN} allowed",
            ae.len()
        ));
    }
    if let Some(c) = ae
        .chars()
        .find(|c| !c.is_ascii_graphic() && *c != ' ' || *c == '\\')
    {
        return Err(format!(
            "AE title {ae:?} contains the invalid character {c:?}"
        ));
    }
    Ok(())
}

/// A dicom-ul error as text fit for a log: its `Display` of an unexpected PDU is the PDU's
/// `Debug`, which for P-DATA would dump data set bytes (patient data), so PDUs are shown by
/// their short description (type and byte counts) instead.
pub(crate) fn describe_ul_error(e: &dicom_ul::association::Error) -> String {
    use dicom_ul::association::Error as E;
    match e {
        E::UnexpectedPdu { pdu, .. } => format!("unexpected PDU {}", pdu.short_description()),
        E::UnknownPdu { pdu, .. } => format!("unknown PDU {}", pdu.short_description()),
        e => error_chain(e),
    }
}

/// An error and its sources, `a: b: c`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_encoding::TransferSyntaxIndex;
    use dicom_transfer_syntax_registry::TransferSyntaxRegistry;

    #[test]
    fn every_offered_transfer_syntax_is_readable_and_decodable() {
        for uid in TRANSFER_SYNTAXES {
            let ts = TransferSyntaxRegistry
                .get(uid)
                .unwrap_or_else(|| panic!("{uid} not in the registry"));
            assert!(!ts.is_unsupported(), "{uid} data sets not readable");
            assert!(ts.can_decode_all(), "{uid} pixel data not decodable");
        }
        assert!(!TRANSFER_SYNTAXES.contains(&"1.2.840.10008.1.2.4.51"));
        assert!(
            !TRANSFER_SYNTAXES
                .iter()
                .any(|t| t.starts_with("1.2.840.10008.1.2.4.8"))
        );
    }

    #[test]
    fn implementation_identity_is_valid() {
        assert!(IMPLEMENTATION_CLASS_UID.starts_with("2.25."));
        assert!(IMPLEMENTATION_CLASS_UID.len() <= 64);
        assert!(
            IMPLEMENTATION_CLASS_UID
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.')
        );
        assert!(IMPLEMENTATION_VERSION_NAME.len() <= 16);
    }

    #[test]
    fn uid_hash_is_short_stable_and_ignores_padding() {
        let h = uid_hash("1.2.3.4");
        assert_eq!(h.len(), 8);
        assert_eq!(h, uid_hash("1.2.3.4\0"));
        assert_ne!(h, uid_hash("1.2.3.5"));
        assert!(!h.contains("1.2.3"));
    }

    #[test]
    fn ae_title_validation() {
        assert!(validate_ae_title("TIRPD").is_ok());
        assert!(validate_ae_title("A B").is_ok());
        assert!(validate_ae_title("").is_err());
        assert!(validate_ae_title("   ").is_err());
        assert!(validate_ae_title("SEVENTEEN_CHARS_X").is_err());
        assert!(validate_ae_title("A\\B").is_err());
        assert!(validate_ae_title("A\tB").is_err());
    }
}
