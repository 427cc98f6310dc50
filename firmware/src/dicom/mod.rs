//! DICOM objects and services of tirpd: the result objects sent back to the station and PACS.

pub mod results;
