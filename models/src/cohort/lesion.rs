//! A lesion drawn from its latent signs, in the host bone's local frame (mm).
//!
//! Each sign has its own radiographic form: lysis patterns and margins, expansion,
//! matrix, periosteal reactions, sequestrum, cortical breaks, soft tissue and sclerosis.

use super::anatomy::BoneMods;
use super::signs::{Lysis, Matrix, Signs};
use rand::Rng;
use std::f32::consts::PI;

#[derive(Debug, Clone, Copy)]
struct Spot {
    u: f32,
    v: f32,
    r: f32,
    amp: f32,
}

#[derive(Debug, Clone, Copy)]
struct Ray {
    u0: f32,
    v0: f32,
    du: f32,
    dv: f32,
    len: f32,
}

/// Box in the local frame: (u0, u1, v0, v1).
pub type LocalBox = (f32, f32, f32, f32);

#[derive(Debug, Clone)]
pub struct Lesion {
    pub flat: bool,
    /// Centre and semi-axes of the lytic area.
    pub uc: f32,
    pub vc: f32,
    pub au: f32,
    pub av: f32,
    /// Side of the bone (+1 / -1 in v) where cortex and periosteum react.
    pub side: f32,
    /// Host bone's outer radius at the lesion (long bones).
    pub host_radius: f32,
    lysis: Lysis,
    depth: f32,
    margin: f32,
    holes: Vec<Spot>,
    clouds: Vec<Spot>,
    rings: Vec<Spot>,
    rays: Vec<Ray>,
    /// Bounding box of all spicules (plus their width), to skip the ray loop elsewhere.
    ray_box: LocalBox,
    bulge: f32,
    cortical_destruction: bool,
    codman: Option<f32>,
    lamellated: bool,
    sequestrum: Option<Spot>,
    mass: Option<Spot>,
    swelling: f32,
    sclerosis: bool,
}

impl Lesion {
    /// Lays out a lesion for one view. `t_c`/`v_c` place its centre in the host frame and
    /// `host_radius` is the host bone's radius there (for flat bones, a plate-size scale).
    pub fn layout<R: Rng>(
        rng: &mut R,
        s: &Signs,
        flat: bool,
        uc: f32,
        vc: f32,
        host_radius: f32,
    ) -> Lesion {
        let size = s.size_mm * rng.random_range(0.9..1.1);
        let au = size / 2.0;
        let av = if flat {
            au * rng.random_range(0.6..0.9)
        } else {
            (au * 0.7).min(host_radius * 0.85)
        };
        let side = if vc >= 0.0 { 1.0 } else { -1.0 };
        let margin = if s.narrow_transition {
            rng.random_range(0.03..0.07)
        } else {
            rng.random_range(0.2..0.35)
        };
        let mut holes = Vec::new();
        let spot_in = |rng: &mut R, scale: f32, r: (f32, f32)| {
            let (a, rad) = (
                rng.random_range(0.0..2.0 * PI),
                scale * rng.random::<f32>().sqrt(),
            );
            Spot {
                u: uc + au * rad * a.cos(),
                v: vc + av * rad * a.sin(),
                r: rng.random_range(r.0..r.1),
                amp: 1.0,
            }
        };
        match s.lysis {
            Lysis::Geographic => {}
            Lysis::MothEaten => {
                for _ in 0..rng.random_range(8..16) {
                    holes.push(spot_in(rng, 1.0, (1.5, 4.0)));
                }
            }
            Lysis::Permeative => {
                for _ in 0..rng.random_range(60..120) {
                    holes.push(spot_in(rng, 1.35, (0.5, 1.3)));
                }
            }
        }
        let mut clouds = Vec::new();
        let mut rings = Vec::new();
        match s.matrix {
            Matrix::None => {}
            Matrix::Osteoid => {
                for _ in 0..rng.random_range(5..10) {
                    let mut c = spot_in(rng, 0.8, (2.0, 5.0));
                    c.amp = rng.random_range(0.25..0.55);
                    clouds.push(c);
                }
            }
            Matrix::Chondroid => {
                for _ in 0..rng.random_range(8..15) {
                    let mut c = spot_in(rng, 0.8, (1.0, 2.5));
                    c.amp = rng.random_range(0.35..0.6);
                    rings.push(c);
                }
            }
        }
        let mut rays = Vec::new();
        if s.sunburst {
            let n = rng.random_range(12..22);
            let reach = rng.random_range(8.0..20.0);
            for i in 0..n {
                // Spicules fan out from the lesion through the cortex.
                let spread = (i as f32 / (n - 1) as f32 - 0.5) * rng.random_range(1.6..2.2);
                let (base_u, base_v, dir) = if flat {
                    let a = i as f32 / n as f32 * 2.0 * PI;
                    (uc + au * 0.8 * a.cos(), vc + av * 0.8 * a.sin(), a)
                } else {
                    (
                        uc + spread * au * 0.5,
                        side * host_radius * 0.7,
                        if side > 0.0 { PI / 2.0 } else { -PI / 2.0 } + spread * 0.6,
                    )
                };
                rays.push(Ray {
                    u0: base_u,
                    v0: base_v,
                    du: dir.cos(),
                    dv: dir.sin(),
                    len: reach * rng.random_range(0.7..1.0),
                });
            }
        }
        let sequestrum = s.sequestrum.then(|| Spot {
            u: uc + au * rng.random_range(-0.3..0.3),
            v: vc + av * rng.random_range(-0.3..0.3),
            r: rng.random_range(2.5..5.0),
            amp: rng.random_range(0.7..1.0),
        });
        let mass = s.soft_tissue_mass.then(|| {
            let r = au * rng.random_range(0.8..1.2);
            let v = if flat {
                vc + side * (av + r * 0.3)
            } else {
                side * (host_radius + r * 0.45)
            };
            Spot {
                u: uc + au * rng.random_range(-0.2..0.2),
                v,
                r,
                amp: rng.random_range(0.3..0.55),
            }
        });
        let ray_box = rays
            .iter()
            .fold((f32::MAX, f32::MIN, f32::MAX, f32::MIN), |b, r| {
                let (u1, v1) = (r.u0 + r.du * r.len, r.v0 + r.dv * r.len);
                (
                    b.0.min(r.u0.min(u1) - 1.5),
                    b.1.max(r.u0.max(u1) + 1.5),
                    b.2.min(r.v0.min(v1) - 1.5),
                    b.3.max(r.v0.max(v1) + 1.5),
                )
            });
        Lesion {
            flat,
            ray_box,
            uc,
            vc,
            au,
            av,
            side,
            host_radius,
            lysis: s.lysis,
            depth: rng.random_range(0.7..0.92),
            margin,
            holes,
            clouds,
            rings,
            rays,
            bulge: if s.expansile {
                host_radius * rng.random_range(0.25..0.45)
            } else {
                0.0
            },
            cortical_destruction: s.cortical_destruction,
            codman: s.codman.then(|| rng.random_range(3.0..6.0)),
            lamellated: s.lamellated,
            sequestrum,
            mass,
            swelling: if s.soft_tissue_swelling {
                rng.random_range(0.15..0.28)
            } else {
                0.0
            },
            sclerosis: s.sclerosis,
        }
    }

    /// Normalised elliptic radius around the lesion centre.
    #[inline]
    fn rho(&self, u: f32, v: f32) -> f32 {
        (((u - self.uc) / self.au).powi(2) + ((v - self.vc) / self.av).powi(2)).sqrt()
    }

    /// Everything the lesion touches lies in this local box.
    pub fn influence(&self) -> LocalBox {
        let reach_u = if self.lamellated || self.swelling > 0.0 {
            3.0
        } else {
            2.0
        };
        let r = self.host_radius * 3.0 + self.au;
        (
            self.uc - reach_u * self.au - 12.0,
            self.uc + reach_u * self.au + 12.0,
            self.vc - r - 25.0,
            self.vc + r + 25.0,
        )
    }

    /// The box a radiologist would draw: the lytic area with its cortical and periosteal
    /// changes, the sunburst spicules and a soft-tissue mass; not the long-segment reactions.
    pub fn roi_box(&self) -> LocalBox {
        let (mut u0, mut u1) = (self.uc - 1.1 * self.au, self.uc + 1.1 * self.au);
        let (mut v0, mut v1) = (self.vc - 1.1 * self.av, self.vc + 1.1 * self.av);
        let mut include_v = |v: f32| {
            v0 = v0.min(v);
            v1 = v1.max(v);
        };
        if !self.flat && (self.cortical_destruction || self.bulge > 0.0 || self.codman.is_some()) {
            include_v(
                self.side * (self.host_radius + self.bulge + self.codman.unwrap_or(0.0) + 1.0),
            );
        }
        for r in &self.rays {
            include_v(r.v0 + r.dv * r.len);
            u0 = u0.min(r.u0 + r.du * r.len);
            u1 = u1.max(r.u0 + r.du * r.len);
        }
        if let Some(m) = self.mass {
            include_v(m.v - m.r);
            include_v(m.v + m.r);
            u0 = u0.min(m.u - m.r);
            u1 = u1.max(m.u + m.r);
        }
        (u0, u1, v0, v1)
    }

    /// How the lesion changes its host bone at (u, v).
    #[inline]
    pub fn bone_mods(&self, u: f32, v: f32) -> BoneMods {
        let mut m = BoneMods::NONE;
        let rho = self.rho(u, v);
        let along = ((u - self.uc) / self.au).powi(2);
        if self.bulge > 0.0 {
            let b = (-along).exp();
            m.bulge = self.bulge * b;
            m.cortex_thin = 1.0 - 0.6 * b;
        }
        if self.cortical_destruction && v * self.side > 0.0 {
            m.cortex_keep = 1.0 - 0.92 * (-(along * 1.6).powi(2)).exp();
        }
        // Lysis: a soft-edged hole (geographic) or clustered holes over a fainter area.
        let area = 1.0 / (1.0 + ((rho - 1.0) / self.margin).exp());
        let lysis = match self.lysis {
            Lysis::Geographic => area,
            // Holes lie within rho ≈ 1.35 plus their radius: skip the loop outside.
            Lysis::MothEaten | Lysis::Permeative if rho > 1.8 => 0.0,
            Lysis::MothEaten | Lysis::Permeative => {
                let mut holes = 0.0f32;
                for h in &self.holes {
                    let d2 = (u - h.u).powi(2) + (v - h.v).powi(2);
                    if d2 < 4.0 * h.r * h.r {
                        holes = holes.max(1.0 / (1.0 + ((d2.sqrt() / h.r - 1.0) / 0.15).exp()));
                    }
                }
                let faint = if self.lysis == Lysis::MothEaten {
                    0.35
                } else {
                    0.2
                };
                holes.max(faint * area)
            }
        };
        m.bone_factor = 1.0 - self.depth * lysis;
        if self.sclerosis {
            m.bone_factor *= 1.0 + 0.5 * (-((rho - 1.3) / 0.5).powi(2)).exp();
        } else if self.lysis == Lysis::Geographic && self.margin < 0.08 {
            // A narrow margin often comes with a thin sclerotic rim.
            m.bone_factor *= 1.0 + 0.35 * (-((rho - 1.02) / 0.06).powi(2)).exp();
        }
        if rho < 1.2 {
            for c in &self.clouds {
                let d2 = (u - c.u).powi(2) + (v - c.v).powi(2);
                m.bone_add += c.amp * 0.5 * (-d2 / (c.r * c.r)).exp();
            }
            for c in &self.rings {
                let d = ((u - c.u).powi(2) + (v - c.v).powi(2)).sqrt();
                m.bone_add += c.amp * 0.5 * (-((d - c.r) / 0.45).powi(2)).exp();
            }
            if let Some(s) = self.sequestrum {
                let d2 = ((u - s.u) / s.r).powi(2) + ((v - s.v) / (0.4 * s.r)).powi(2);
                m.bone_add += s.amp * 0.6 * (-(d2 * d2)).exp();
            }
        }
        m
    }

    /// Periosteal new bone outside the cortex at (u, v); `radius` is the host bone's outer
    /// radius at `u` (including expansion).
    #[inline]
    pub fn periosteal(&self, u: f32, v: f32, radius: f32) -> f32 {
        let mut a = 0.0;
        let rb = self.ray_box;
        let near_rays = u >= rb.0 && u <= rb.1 && v >= rb.2 && v <= rb.3;
        for r in self.rays.iter().filter(|_| near_rays) {
            // Distance from the spicule segment.
            let (pu, pv) = (u - r.u0, v - r.v0);
            let along = pu * r.du + pv * r.dv;
            if along > 0.0 && along < r.len {
                let across = (pu * r.dv - pv * r.du).abs();
                if across < 1.2 {
                    a += 0.14 * (1.0 - along / r.len * 0.5) * (-(across / 0.35).powi(2)).exp();
                }
            }
        }
        if self.flat {
            // Flat bones: reactions arc around the lesion.
            let rho = self.rho(u, v);
            if self.lamellated {
                for k in 1..=3 {
                    a += 0.1 * (-((rho - 1.0 - 0.12 * k as f32) / 0.02).powi(2)).exp();
                }
            }
            return a;
        }
        let outside = v * self.side - radius;
        if self.lamellated && v * self.side > 0.0 {
            let window = (-((u - self.uc) / (2.4 * self.au)).powi(6)).exp();
            for k in 1..=3 {
                a += 0.12 * window * (-((outside - 1.4 * k as f32) / 0.35).powi(2)).exp();
            }
        }
        if let Some(h) = self.codman {
            // Elevated periosteum at both ends of the lesion, tapering back to the cortex.
            for end in [-1.0f32, 1.0] {
                let ue = self.uc + end * self.au;
                let s = (u - ue) * end;
                let len = 2.0 * h;
                if (0.0..len).contains(&s) && outside > -0.5 {
                    let top = h * (1.0 - s / len);
                    a += 0.22 * (-((outside - top) / 0.45).powi(2)).exp();
                    if outside < top {
                        a += 0.05;
                    }
                }
            }
        }
        a
    }

    /// Soft tissue: (widening of the limb at this level, added soft-tissue attenuation).
    #[inline]
    pub fn soft_tissue(&self, u: f32, v: f32, mu_soft: f32) -> (f32, f32) {
        let mut add = 0.0;
        if let Some(m) = self.mass {
            let d2 = (u - m.u).powi(2) + (v - m.v).powi(2);
            if d2 < m.r * m.r {
                // A tumour mass is denser than fat but blends into the muscle at its edge.
                let edge = ((1.0 - d2 / (m.r * m.r)) * 4.0).min(1.0);
                add += m.amp * edge * mu_soft * 2.0 * (m.r * m.r - d2).sqrt();
            }
        }
        let mut widen = 0.0;
        if self.swelling > 0.0 && v * self.side > 0.0 {
            let w = (-((u - self.uc) / (2.5 * self.au)).powi(2)).exp();
            widen = self.swelling * w;
            add += mu_soft * 6.0 * w * self.swelling;
        }
        (widen, add)
    }
}
