//! The three centres' acquisition chains: from projected attenuation to stored 12-bit
//! pixels. Centres differ in exposure (quantum noise), blur, contrast curve, pixel spacing,
//! edge enhancement, collimation, burned-in side markers and photometric interpretation.

use rand::Rng;
use rand_distr::{Distribution, StandardNormal};

/// Stored values are 12-bit.
pub const MAX_VALUE: u16 = 4095;

/// Defined with the decoder on the device side; re-exported for the cohort.
pub use tirp_firmware::radiograph::Photometric;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Curve {
    Gamma(f32),
    /// Logistic S-curve of the given steepness.
    Sigmoid(f32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Centre {
    pub id: u8,
    /// Pixel spacing, mm.
    pub spacing_mm: f32,
    /// Photons per pixel behind no attenuation: lower = noisier.
    pub photons: f32,
    pub electronic_noise: f32,
    /// Gaussian blur (detector PSF + scatter), pixels.
    pub blur_px: f32,
    pub curve: Curve,
    /// Unsharp-mask amount and radius (pixels).
    pub edge_amount: f32,
    pub edge_radius: f32,
    /// Probability that an image has collimation borders, their depth range (pixels) and
    /// the value the detector stores there (0..1 of the display range).
    pub collimation_p: f64,
    pub collimation_px: (u32, u32),
    pub collimation_value: f32,
    /// Side marker: scale of the 5×7 glyph and corner (0 top-left, 1 top-right, 2 bottom-right).
    pub marker_scale: u32,
    pub marker_corner: u8,
    pub photometric: Photometric,
}

impl Centre {
    /// Centre 1 is internal (train/validation/test); centres 2 and 3 are the external test.
    pub fn get(id: u8) -> Centre {
        match id {
            1 => Centre {
                id,
                spacing_mm: 0.6,
                photons: 3000.0,
                electronic_noise: 0.004,
                blur_px: 0.7,
                curve: Curve::Gamma(0.9),
                edge_amount: 0.4,
                edge_radius: 2.5,
                collimation_p: 0.6,
                collimation_px: (8, 40),
                collimation_value: 0.04,
                marker_scale: 2,
                marker_corner: 0,
                photometric: Photometric::Monochrome2,
            },
            2 => Centre {
                id,
                spacing_mm: 0.7,
                photons: 1200.0,
                electronic_noise: 0.008,
                blur_px: 1.3,
                curve: Curve::Sigmoid(5.0),
                edge_amount: 0.0,
                edge_radius: 1.0,
                collimation_p: 0.9,
                collimation_px: (20, 60),
                collimation_value: 0.96,
                marker_scale: 3,
                marker_corner: 2,
                photometric: Photometric::Monochrome2,
            },
            3 => Centre {
                id,
                spacing_mm: 0.52,
                photons: 2000.0,
                electronic_noise: 0.005,
                blur_px: 1.0,
                curve: Curve::Gamma(1.25),
                edge_amount: 1.0,
                edge_radius: 4.0,
                collimation_p: 0.4,
                collimation_px: (10, 30),
                collimation_value: 0.02,
                marker_scale: 2,
                marker_corner: 1,
                photometric: Photometric::Monochrome1,
            },
            _ => panic!("centre {id} does not exist (1..=3)"),
        }
    }

    fn curve(&self, x: f32) -> f32 {
        match self.curve {
            Curve::Gamma(g) => x.powf(g),
            Curve::Sigmoid(k) => {
                let s = |t: f32| 1.0 / (1.0 + (-k * (t - 0.5)).exp());
                (s(x) - s(0.0)) / (s(1.0) - s(0.0))
            }
        }
    }

    /// Turns an attenuation map into stored 12-bit pixels (in this centre's photometric
    /// interpretation). `marker` is the side letter burned in.
    pub fn acquire<R: Rng>(
        &self,
        rng: &mut R,
        att: &mut [f32],
        w: usize,
        h: usize,
        marker: char,
    ) -> Vec<u16> {
        gaussian_blur(att, w, h, self.blur_px, self.blur_px);
        // Quantum noise in the log domain: fewer photons behind more attenuation.
        let exposure = rng.random_range(0.8..1.25f32);
        let photons = self.photons * exposure;
        // Quantum and electronic noise are independent Gaussians: one draw of their sum.
        let electronic = self.electronic_noise * self.electronic_noise;
        for a in att.iter_mut() {
            let n: f32 = StandardNormal.sample(rng);
            *a += n * (a.exp() / photons + electronic).sqrt();
        }
        // Automatic exposure control: window the signal between robust extremes.
        let (lo, hi) = robust_range(att);
        let hi = hi * rng.random_range(1.0..1.15);
        let mut x: Vec<f32> = att
            .iter()
            .map(|a| ((a - lo) / (hi - lo)).clamp(0.0, 1.0))
            .collect();
        if self.edge_amount > 0.0 {
            let mut low = x.clone();
            gaussian_blur(&mut low, w, h, self.edge_radius, self.edge_radius);
            for (v, l) in x.iter_mut().zip(&low) {
                *v += self.edge_amount * (*v - l);
            }
        }
        // The contrast curve through a table: one entry per stored grey level.
        let lut: Vec<f32> = (0..=MAX_VALUE)
            .map(|i| self.curve(i as f32 / MAX_VALUE as f32))
            .collect();
        for v in x.iter_mut() {
            *v = lut[(v.clamp(0.0, 1.0) * MAX_VALUE as f32 + 0.5) as usize];
        }
        if rng.random_bool(self.collimation_p) {
            let (a, b) = self.collimation_px;
            let mut depth = || rng.random_range(a..=b) as usize;
            let (l, r, t, btm) = (depth(), depth(), depth(), depth());
            for y in 0..h {
                for xx in 0..w {
                    if xx < l || xx >= w - r || y < t || y >= h - btm {
                        let n: f32 = StandardNormal.sample(rng);
                        x[y * w + xx] = (self.collimation_value + 0.01 * n).clamp(0.0, 1.0);
                    }
                }
            }
        }
        self.burn_marker(&mut x, w, h, marker);
        x.iter()
            .map(|v| {
                let q = (v * MAX_VALUE as f32 + 0.5) as u16;
                match self.photometric {
                    Photometric::Monochrome2 => q,
                    Photometric::Monochrome1 => MAX_VALUE - q,
                }
            })
            .collect()
    }

    fn burn_marker(&self, x: &mut [f32], w: usize, h: usize, marker: char) {
        let s = self.marker_scale;
        let text = marker.to_string();
        let (mw, mh) = (
            tirp_firmware::glyphs::text_width(&text, s) as usize,
            (tirp_firmware::glyphs::GLYPH_H * s) as usize,
        );
        let pad = 12;
        let (x0, y0) = match self.marker_corner {
            0 => (pad, pad),
            1 => (w - pad - mw, pad),
            _ => (w - pad - mw, h - pad - mh),
        };
        tirp_firmware::glyphs::render(&text, s, |gx, gy| {
            x[(y0 + gy as usize) * w + x0 + gx as usize] = 1.0;
        });
    }
}

/// 0.5th and 99.8th percentiles: the exposure window of the detector's auto-ranging.
fn robust_range(v: &[f32]) -> (f32, f32) {
    let mut s: Vec<f32> = v.iter().step_by(7).copied().collect();
    let n = s.len();
    let lo_i = n / 200;
    let hi_i = n - 1 - n / 500;
    let (_, &mut hi, _) = s.select_nth_unstable_by(hi_i, f32::total_cmp);
    let (_, &mut lo, _) = s[..hi_i].select_nth_unstable_by(lo_i, f32::total_cmp);
    (lo, hi.max(lo + 1e-3))
}

/// Separable Gaussian blur in place, edges clamped.
pub fn gaussian_blur(img: &mut [f32], w: usize, h: usize, sx: f32, sy: f32) {
    let kernel = |s: f32| -> Vec<f32> {
        // 2.5 sigma holds 99% of the weight; the tails are not worth their cost here.
        let r = (2.5 * s).ceil().max(1.0) as i32;
        let k: Vec<f32> = (-r..=r)
            .map(|i| (-(i * i) as f32 / (2.0 * s * s)).exp())
            .collect();
        let sum: f32 = k.iter().sum();
        k.into_iter().map(|v| v / sum).collect()
    };
    if sx > 0.0 {
        let k = kernel(sx);
        let r = k.len() / 2;
        // Pad each row once so the inner loop has no bounds clamping (and vectorises).
        let mut padded = vec![0.0f32; w + 2 * r];
        for y in 0..h {
            let row = &mut img[y * w..(y + 1) * w];
            padded[..r].fill(row[0]);
            padded[r..r + w].copy_from_slice(row);
            padded[r + w..].fill(row[w - 1]);
            row.fill(0.0);
            for (i, kv) in k.iter().enumerate() {
                for (o, s) in row.iter_mut().zip(&padded[i..i + w]) {
                    *o += kv * s;
                }
            }
        }
    }
    if sy > 0.0 {
        let k = kernel(sy);
        let r = (k.len() / 2) as isize;
        let src = img.to_vec();
        for y in 0..h {
            let out = &mut img[y * w..(y + 1) * w];
            out.fill(0.0);
            for (i, kv) in k.iter().enumerate() {
                let yy = (y as isize + i as isize - r).clamp(0, h as isize - 1) as usize;
                for (o, s) in out.iter_mut().zip(&src[yy * w..(yy + 1) * w]) {
                    *o += kv * s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blur_preserves_constants_and_mass() {
        let (w, h) = (40, 30);
        let mut flat = vec![2.5f32; w * h];
        gaussian_blur(&mut flat, w, h, 1.5, 2.5);
        assert!(flat.iter().all(|v| (v - 2.5).abs() < 1e-5));
        let mut dot = vec![0.0f32; w * h];
        dot[15 * w + 20] = 1.0;
        gaussian_blur(&mut dot, w, h, 1.0, 1.0);
        let sum: f32 = dot.iter().sum();
        assert!((sum - 1.0).abs() < 1e-4, "{sum}");
        // Symmetric around the impulse.
        assert!((dot[15 * w + 19] - dot[15 * w + 21]).abs() < 1e-7);
        assert!((dot[14 * w + 20] - dot[16 * w + 20]).abs() < 1e-7);
    }
}
