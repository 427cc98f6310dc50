use crate::{backend::scalar::Fallback, x86, Simd};

use super::WithSimd;

#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
#[repr(u8)]
pub enum Arch {
    Scalar,
    V2,
    V3,
    #[cfg(avx512)]
    V4,
    #[cfg(avx512_fp16)]
    V4FP16,
}

impl Arch {
    #[inline]
    pub fn detect() -> Self {
        // DeepTIRP Edge: never auto-select the AVX-512 levels (V4, V4FP16). Their 16-lane
        // reductions round differently from AVX2's 8 lanes, so burn-flex trained different
        // members from the same seed on AVX-512 and AVX2 machines. Capped at V3, training is
        // bit-reproducible across x86-64-v3 and v4 CPUs. (The only change to macerator 0.5.2.)
        #[cfg(avx512)]
        let _explicit_only = x86::V4::is_available;
        if x86::V3::is_available() {
            Self::V3
        } else if x86::V2::is_available() {
            Self::V2
        } else {
            Self::Scalar
        }
    }

    /// Dispatch a function on this [`Arch`]
    ///
    /// # Safety
    /// Required features for the [`Arch`] must be available.
    pub unsafe fn dispatch<Op: WithSimd>(self, op: Op) -> Op::Output {
        match self {
            Arch::Scalar => <Fallback as Simd>::vectorize(op),
            Arch::V2 => <x86::V2 as Simd>::vectorize(op),
            Arch::V3 => <x86::V3 as Simd>::vectorize(op),
            #[cfg(avx512)]
            Arch::V4 => <x86::V4 as Simd>::vectorize(op),
            #[cfg(avx512_fp16)]
            Arch::V4FP16 => <x86::V4FP16 as Simd>::vectorize(op),
        }
    }
}

impl Default for Arch {
    #[inline]
    fn default() -> Self {
        Self::detect()
    }
}
