//! One radiograph of one patient: place the anatomy and the lesion in the image, project
//! the attenuation, run the centre's acquisition chain, record the lesion's box.

use super::Patient;
use super::acquisition::Centre;
use super::anatomy::{BoneMods, FlatBone, Frame, Limb, LongBone, MU_SOFT};
use super::clinical::Site;
use super::lesion::{Lesion, LocalBox};
use super::signs::Location;
use crate::cohort::acquisition::gaussian_blur;
use rand::Rng;
use tirp_firmware::preprocess::Roi;

/// A rendered radiograph: stored pixels plus where the lesion is.
pub struct Radiograph {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u16>,
    pub roi: Roi,
    pub spacing_mm: f32,
}

enum Host {
    Long { bone: LongBone, limb: Limb },
    Flat { bone: FlatBone },
}

struct Extra {
    bone: LongBone,
    /// Offset across the main axis (side bone) or gap past the articular end (partner).
    offset: f32,
    partner: bool,
}

/// Trabecular texture: blurred noise, elongated along the image's vertical axis (long
/// bones lie roughly vertically).
fn texture<R: Rng>(rng: &mut R, w: usize, h: usize) -> Vec<f32> {
    // Uniform noise is cheaper to draw than Gaussian and is Gaussian enough once blurred.
    let mut t: Vec<f32> = (0..w * h).map(|_| rng.random::<f32>() - 0.5).collect();
    gaussian_blur(&mut t, w, h, 0.9, 1.6);
    let sd = (t.iter().map(|v| v * v).sum::<f32>() / t.len() as f32)
        .sqrt()
        .max(1e-6);
    t.iter()
        .map(|v| (1.0 + 0.28 * v / sd).clamp(0.4, 1.6))
        .collect()
}

/// Renders one view of `patient` (views differ through `rng`) with `size`×`size` pixels.
pub fn radiograph<R: Rng>(rng: &mut R, patient: &Patient, size: u32) -> Radiograph {
    let centre = Centre::get(patient.centre);
    let spacing = centre.spacing_mm * rng.random_range(0.96..1.04);
    let (w, h) = (size as usize, size as usize);
    let signs = &patient.signs;
    let flat = patient.site.is_flat_bone();
    // Patient-level anatomy is re-drawn from a patient-seeded stream so all views agree.
    let mut anat_rng = patient.anatomy_rng();
    let host = if flat {
        Host::Flat {
            bone: FlatBone::sample(&mut anat_rng, patient.age),
        }
    } else {
        let bone = LongBone::for_site(&mut anat_rng, patient.site, patient.age, false);
        let limb = Limb::for_site(&mut anat_rng, patient.site, &bone);
        Host::Long { bone, limb }
    };
    let mut extras = Vec::new();
    if let Host::Long { bone, .. } = &host {
        let side_site = match patient.site {
            Site::Tibia => Some(Site::Fibula),
            Site::Fibula => Some(Site::Tibia),
            Site::RadiusUlna => Some(Site::RadiusUlna),
            _ => None,
        };
        if let Some(s) = side_site {
            let b = LongBone::for_site(&mut anat_rng, s, patient.age, false);
            let sign = if anat_rng.random_bool(0.5) { 1.0 } else { -1.0 };
            let offset = sign
                * (bone.rs * (1.0 + bone.flare)
                    + b.rs * (1.0 + b.flare)
                    + anat_rng.random_range(3.0..9.0));
            extras.push(Extra {
                bone: b,
                offset,
                partner: false,
            });
        }
        let p = LongBone::for_site(&mut anat_rng, patient.site, patient.age, true);
        extras.push(Extra {
            bone: p,
            offset: anat_rng.random_range(3.0..6.0),
            partner: true,
        });
    }
    // Lesion position in the host frame.
    let (uc, host_radius) = match &host {
        Host::Long { bone, .. } => {
            let t = match signs.location {
                Location::Epiphyseal => bone.te * rng.random_range(0.35..0.6),
                Location::Metaphyseal => bone.lm * rng.random_range(0.7..1.5),
                _ => bone.lm * rng.random_range(2.4..4.2),
            };
            (t.max(signs.size_mm * 0.3), bone.radius(t.max(1.0)))
        }
        Host::Flat { bone } => (bone.a * rng.random_range(-0.35..0.35), bone.b),
    };
    let vc = match &host {
        Host::Long { .. } => host_radius * rng.random_range(-0.35..0.35f32),
        Host::Flat { bone } => bone.b * rng.random_range(-0.3..0.3),
    };
    let lesion = Lesion::layout(rng, signs, flat, uc, vc, host_radius);
    // Place the frame so the lesion centre lands in the middle part of the image.
    let angle = rng.random_range(-0.2..0.2f32)
        + if patient.end_down {
            std::f32::consts::PI
        } else {
            0.0
        };
    let target = (
        rng.random_range(0.35..0.65) * w as f32 * spacing,
        rng.random_range(0.35..0.65) * h as f32 * spacing,
    );
    let probe = Frame::new((0.0, 0.0), angle);
    let (lx, ly) = probe.global(lesion.uc, lesion.vc);
    let frame = Frame::new((target.0 - lx, target.1 - ly), angle);

    let tex = texture(rng, w, h);
    let influence = lesion.influence();
    let inside = |b: &LocalBox, u: f32, v: f32| u >= b.0 && u <= b.1 && v >= b.2 && v <= b.3;
    let mut att = vec![0.0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            let (u, v) = frame.local((x as f32 + 0.5) * spacing, (y as f32 + 0.5) * spacing);
            let t = tex[y * w + x];
            let near = inside(&influence, u, v);
            let mods = if near {
                lesion.bone_mods(u, v)
            } else {
                BoneMods::NONE
            };
            let (widen, soft_add) = if near {
                lesion.soft_tissue(u, v, MU_SOFT)
            } else {
                (0.0, 0.0)
            };
            let mut a = soft_add;
            match &host {
                Host::Long { bone, limb } => {
                    a += limb.attenuation(v, widen * limb.half_width);
                    a += bone.attenuation(u, v, t, &mods);
                    if near {
                        a += lesion.periosteal(u, v, bone.radius(u) + mods.bulge);
                    }
                    for e in &extras {
                        a += if e.partner {
                            e.bone.attenuation(-u - e.offset, v, t, &BoneMods::NONE)
                        } else {
                            e.bone.attenuation(
                                u + e.offset.abs() * 0.15,
                                v - e.offset,
                                t,
                                &BoneMods::NONE,
                            )
                        };
                    }
                }
                Host::Flat { bone } => {
                    // Trunk soft tissue: thick and nearly uniform, thinning to one side.
                    a += 0.55 + 0.1 * (u / 150.0) + 0.3 * widen;
                    a += bone.attenuation(u, v, t, &mods);
                    if near {
                        a += lesion.periosteal(u, v, 0.0);
                    }
                }
            }
            att[y * w + x] = a;
        }
    }
    let marker = if patient.right_side { 'R' } else { 'L' };
    let pixels = centre.acquire(rng, &mut att, w, h, marker);
    let roi = local_box_to_roi(&frame, lesion.roi_box(), spacing, size);
    Radiograph {
        width: size,
        height: size,
        pixels,
        roi,
        spacing_mm: spacing,
    }
}

/// Pixel bounding box of a local-frame box, clamped to the image.
fn local_box_to_roi(frame: &Frame, b: LocalBox, spacing: f32, size: u32) -> Roi {
    let corners = [(b.0, b.2), (b.0, b.3), (b.1, b.2), (b.1, b.3)].map(|(u, v)| frame.global(u, v));
    let px = |mm: f32| (mm / spacing).clamp(0.0, size as f32);
    let x0 = corners
        .iter()
        .map(|c| px(c.0))
        .fold(f32::INFINITY, f32::min)
        .floor() as u32;
    let x1 = corners.iter().map(|c| px(c.0)).fold(0.0, f32::max).ceil() as u32;
    let y0 = corners
        .iter()
        .map(|c| px(c.1))
        .fold(f32::INFINITY, f32::min)
        .floor() as u32;
    let y1 = corners.iter().map(|c| px(c.1)).fold(0.0, f32::max).ceil() as u32;
    Roi {
        x: x0,
        y: y0,
        w: (x1 - x0).max(1),
        h: (y1 - y0).max(1),
    }
}
