//! Clinical feature encoding: defined once in `tirp_firmware::clinical` (inference uses
//! it on the box); re-exported here for the training code.

pub use tirp_firmware::clinical::{AGE_IMPUTE, AGE_SCALE, CLINICAL_NAMES, clinical};
