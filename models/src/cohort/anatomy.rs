//! Bones and soft tissue as projected attenuation (line integrals, in mm-weighted units).
//!
//! Long bones are cylinders of varying radius with a cortical shell: the projected path
//! length through the shell peaks at the bone's edges, which gives the bright cortical
//! lines of a radiograph. The metaphysis flares and fills with trabecular bone; children
//! have a growth plate; the elderly have thinner, less dense bone.

use super::clinical::Site;
use rand::Rng;

/// Linear attenuation of cortical bone and soft tissue, per mm (arbitrary but fixed units).
pub const MU_CORTEX: f32 = 0.055;
pub const MU_SOFT: f32 = 0.008;

/// A bone's local frame in the image plane (mm): `u` along the axis from the articular
/// end into the shaft, `v` across it.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    /// Articular end (long bone) or plate centre (flat bone), in image mm.
    pub origin: (f32, f32),
    /// Unit vector along the axis.
    pub d: (f32, f32),
}

impl Frame {
    pub fn new(origin: (f32, f32), angle: f32) -> Self {
        Frame {
            origin,
            d: (angle.sin(), angle.cos()),
        }
    }

    #[inline]
    pub fn local(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.origin.0, y - self.origin.1);
        (dx * self.d.0 + dy * self.d.1, dx * self.d.1 - dy * self.d.0)
    }

    #[inline]
    pub fn global(&self, u: f32, v: f32) -> (f32, f32) {
        (
            self.origin.0 + u * self.d.0 + v * self.d.1,
            self.origin.1 + u * self.d.1 - v * self.d.0,
        )
    }
}

/// Geometry of one long bone, in mm.
#[derive(Debug, Clone)]
pub struct LongBone {
    /// Shaft radius.
    pub rs: f32,
    /// Relative widening of the metaphysis.
    pub flare: f32,
    /// Length scale of the flare from the articular end.
    pub lm: f32,
    /// Cortical thickness in the diaphysis.
    pub tc: f32,
    /// Distance of the growth plate from the articular end.
    pub te: f32,
    pub growth_plate: bool,
    /// Mineral density factor (1 young adult, lower with age).
    pub density: f32,
}

/// Modifications a lesion makes to its host bone at one point.
#[derive(Debug, Clone, Copy)]
pub struct BoneMods {
    /// Added to the outer radius (expansile lesions).
    pub bulge: f32,
    /// Multiplies cortical thickness.
    pub cortex_thin: f32,
    /// Multiplies the cortical path (cortical destruction).
    pub cortex_keep: f32,
    /// Multiplies all bone attenuation (lysis < 1, sclerosis > 1).
    pub bone_factor: f32,
    /// Added bone attenuation (matrix, sequestrum).
    pub bone_add: f32,
}

impl BoneMods {
    pub const NONE: BoneMods = BoneMods {
        bulge: 0.0,
        cortex_thin: 1.0,
        cortex_keep: 1.0,
        bone_factor: 1.0,
        bone_add: 0.0,
    };
}

impl LongBone {
    /// A bone of `site` (or the partner bone across the joint when `partner`).
    pub fn for_site<R: Rng>(rng: &mut R, site: Site, age: u8, partner: bool) -> LongBone {
        // Shaft radius and flare of an adult, mm.
        let (rs, flare) = match site {
            Site::Femur => (13.0, 0.85),
            Site::Tibia => (12.0, 0.8),
            Site::Humerus => (10.5, 0.75),
            Site::RadiusUlna => (6.5, 0.7),
            Site::Fibula => (5.5, 0.55),
            Site::Pelvis => (12.0, 0.8),
        };
        let rs = if partner { rs * 0.9 } else { rs };
        // Children's bones are smaller; density falls after 50 (osteopenia).
        let growth = if age < 16 {
            0.6 + 0.4 * age as f32 / 16.0
        } else {
            1.0
        };
        let rs = rs * growth * rng.random_range(0.9..1.1);
        let density = if age > 50 {
            1.0 - 0.008 * (age as f32 - 50.0)
        } else {
            1.0
        } * rng.random_range(0.92..1.05);
        let thin = if age > 60 { 0.75 } else { 1.0 };
        LongBone {
            rs,
            flare: flare * rng.random_range(0.85..1.15),
            lm: 2.2 * rs,
            tc: rs * rng.random_range(0.22..0.3) * thin,
            te: rs * rng.random_range(0.8..1.0),
            growth_plate: age < 17,
            density,
        }
    }

    #[inline]
    pub fn radius(&self, t: f32) -> f32 {
        if t <= 0.0 {
            return 0.0;
        }
        let flare = (-(t / self.lm).powi(2)).exp();
        let r = self.rs * (1.0 + self.flare * flare);
        // Rounded articular end.
        let rc = 0.45 * self.rs * (1.0 + self.flare);
        if t < rc {
            let k = (rc - t) / rc;
            r * (1.0 - k * k).sqrt()
        } else {
            r
        }
    }

    /// Projected attenuation at axial position `t` and transverse offset `v`.
    #[inline]
    pub fn attenuation(&self, t: f32, v: f32, texture: f32, m: &BoneMods) -> f32 {
        // Most of the image lies beside the bone: leave before any transcendental.
        if t <= 0.0 || v.abs() >= self.rs * (1.0 + self.flare) + m.bulge {
            return m.bone_add;
        }
        let r = self.radius(t) + m.bulge;
        let v2 = v * v;
        if v2 >= r * r {
            return m.bone_add;
        }
        let end = (-(t / self.lm).powi(2)).exp();
        let tc = self.tc * (1.0 - 0.8 * end) * m.cortex_thin;
        let ri = (r - tc).max(0.0);
        let outer = (r * r - v2).sqrt();
        let inner = (ri * ri - v2).max(0.0).sqrt();
        let cortical = 2.0 * (outer - inner) * m.cortex_keep;
        // Trabecular bone fills the ends; the diaphysis holds marrow.
        let trabecular = (0.1 + 0.4 * (-(t / (1.3 * self.lm)).powi(2)).exp()) * texture;
        let mut a = MU_CORTEX * self.density * (cortical + trabecular * 2.0 * inner);
        if self.growth_plate && (t - self.te).abs() < 1.7 {
            let wave = 0.8 * wavy(v * 0.35);
            if (t - self.te - wave).abs() < 0.9 {
                a *= 0.3;
            }
        }
        a * m.bone_factor + m.bone_add
    }
}

/// A cheap smooth periodic wiggle in [-1, 1] (a parabolic sine): per-pixel `sin` calls
/// cost a tenth of the whole render.
#[inline]
fn wavy(x: f32) -> f32 {
    use std::f32::consts::PI;
    let r = x - (2.0 * PI) * ((x + PI) / (2.0 * PI)).floor();
    let y = (4.0 / PI) * r - (4.0 / (PI * PI)) * r * r.abs();
    y.clamp(-1.0, 1.0)
}

/// The limb (or trunk) around the bone: a soft-tissue cylinder.
#[derive(Debug, Clone)]
pub struct Limb {
    pub half_width: f32,
    /// Offset of the limb's axis from the bone's, across it.
    pub offset: f32,
}

impl Limb {
    pub fn for_site<R: Rng>(rng: &mut R, site: Site, bone: &LongBone) -> Limb {
        let k = match site {
            Site::Femur => 3.3,
            Site::Humerus => 3.0,
            Site::Tibia => 2.9,
            Site::Fibula => 5.6,
            Site::RadiusUlna => 3.6,
            Site::Pelvis => 8.0,
        };
        Limb {
            half_width: bone.rs * k * rng.random_range(0.85..1.2),
            offset: bone.rs * rng.random_range(-0.4..0.4),
        }
    }

    /// Projected soft tissue; `extra` widens the limb locally (swelling).
    #[inline]
    pub fn attenuation(&self, v: f32, extra: f32) -> f32 {
        let w = self.half_width + extra;
        let dv = v - self.offset;
        if dv.abs() >= w {
            0.0
        } else {
            MU_SOFT * 2.0 * (w * w - dv * dv).sqrt()
        }
    }
}

/// A flat bone (iliac wing): a superellipse plate with a dense rim.
#[derive(Debug, Clone)]
pub struct FlatBone {
    pub a: f32,
    pub b: f32,
    pub thickness: f32,
    pub density: f32,
}

impl FlatBone {
    pub fn sample<R: Rng>(rng: &mut R, age: u8) -> FlatBone {
        let growth = if age < 16 {
            0.6 + 0.4 * age as f32 / 16.0
        } else {
            1.0
        };
        let density = if age > 50 {
            1.0 - 0.008 * (age as f32 - 50.0)
        } else {
            1.0
        } * rng.random_range(0.92..1.05);
        FlatBone {
            a: 75.0 * growth * rng.random_range(0.9..1.1),
            b: 58.0 * growth * rng.random_range(0.9..1.1),
            thickness: rng.random_range(7.0..10.0),
            density,
        }
    }

    /// Superellipse radius to the power 2.5 (x^2.5 = x²·√x, far cheaper than `powf`).
    #[inline]
    fn rho_pow(&self, u: f32, v: f32) -> f32 {
        let p = |x: f32| x * x * x.sqrt();
        p((u / self.a).abs()) + p((v / self.b).abs())
    }

    /// Normalised superellipse radius: < 1 inside the plate.
    #[inline]
    pub fn rho(&self, u: f32, v: f32) -> f32 {
        self.rho_pow(u, v).powf(0.4)
    }

    #[inline]
    pub fn attenuation(&self, u: f32, v: f32, texture: f32, m: &BoneMods) -> f32 {
        let rp = self.rho_pow(u, v);
        if rp >= 1.0 {
            return m.bone_add;
        }
        let r = rp.powf(0.4);
        // The rim is seen tangentially: a bright band along the edge.
        let rim = (-((1.0 - r) / 0.035).powi(2)).exp() * 1.6 * m.cortex_keep;
        let plate = self.thickness * (0.45 + 0.35 * texture);
        let edge = ((1.0 - r) / 0.02).min(1.0);
        MU_CORTEX * self.density * (plate * edge + self.thickness * rim) * m.bone_factor
            + m.bone_add
    }
}
