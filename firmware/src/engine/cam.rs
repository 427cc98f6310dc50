//! Heat-map arithmetic: bilinear upsampling of class-activation maps to the crop, the
//! weighted ensemble map, and the pieces of Score-CAM.
//!
//! **Sign convention.** A member's `cam` holds each location's additive contribution to the
//! logit of a *primary bone tumour* (the map sums to the logit). Positive values push towards
//! PBT, negative values towards infection. The ensemble map is Σ_m w_m · cam_m; what is shown
//! is its positive part, a map of **PBT evidence**. An infection call therefore usually shows
//! a faint map: the evidence for infection is the negative part, which
//! [`HeatMap::signed`](super::HeatMap) keeps for callers that want it.

/// Bilinear resampling of a `h × w` map to `out × out`, with half-pixel centres
/// (`align_corners = false`) and edge clamping, so a constant map stays constant and the
/// sampling grid of the map maps onto the crop's pixel centres.
pub fn upsample(src: &[f32], h: usize, w: usize, out: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w, "map has h·w values");
    let mut dst = Vec::with_capacity(out * out);
    let coord = |i: usize, n: usize| -> (usize, usize, f32) {
        let f = ((i as f32 + 0.5) * n as f32 / out as f32 - 0.5).clamp(0.0, (n - 1) as f32);
        let i0 = f.floor() as usize;
        let i1 = (i0 + 1).min(n - 1);
        (i0, i1, f - i0 as f32)
    };
    let cols: Vec<(usize, usize, f32)> = (0..out).map(|x| coord(x, w)).collect();
    for y in 0..out {
        let (y0, y1, fy) = coord(y, h);
        let (r0, r1) = (&src[y0 * w..(y0 + 1) * w], &src[y1 * w..(y1 + 1) * w]);
        for &(x0, x1, fx) in &cols {
            let top = r0[x0] + (r0[x1] - r0[x0]) * fx;
            let bottom = r1[x0] + (r1[x1] - r1[x0]) * fx;
            dst.push(top + (bottom - top) * fy);
        }
    }
    dst
}

/// Min-max normalisation to [0, 1]; a constant map becomes all zeros (it carries no
/// location, so its Score-CAM mask removes everything).
pub fn min_max_normalise(v: &mut [f32]) {
    let (lo, hi) = v
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), &x| {
            (l.min(x), h.max(x))
        });
    let range = hi - lo;
    for x in v.iter_mut() {
        *x = if range > 0.0 { (*x - lo) / range } else { 0.0 };
    }
}

/// Σ_m w_m · maps_m over maps of equal length.
pub fn weighted_sum(maps: &[Vec<f32>], weights: &[f32]) -> Vec<f32> {
    let n = maps.first().map_or(0, Vec::len);
    let mut out = vec![0.0f32; n];
    for (m, &w) in maps.iter().zip(weights) {
        assert_eq!(m.len(), n, "maps of equal size");
        for (o, v) in out.iter_mut().zip(m) {
            *o += w * v;
        }
    }
    out
}

pub fn relu(v: &[f32]) -> Vec<f32> {
    v.iter().map(|x| x.max(0.0)).collect()
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The Score-CAM map of one member at feature-map resolution: ReLU(Σ_k s_k · A_k) with
/// `fmap` = A as `[C, h, w]` and `scores` = s (one per channel).
pub fn score_cam_map(fmap: &[f32], c: usize, hw: usize, scores: &[f32]) -> Vec<f32> {
    assert_eq!(fmap.len(), c * hw);
    assert_eq!(scores.len(), c);
    let mut out = vec![0.0f32; hw];
    for (k, &s) in scores.iter().enumerate() {
        for (o, a) in out.iter_mut().zip(&fmap[k * hw..(k + 1) * hw]) {
            *o += s * a;
        }
    }
    relu(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsampling_is_exact_on_constants_and_ramps() {
        let c = upsample(&[2.5; 4], 2, 2, 7);
        assert!(c.iter().all(|&v| (v - 2.5).abs() < 1e-6));
        // A 2-wide horizontal ramp 0 → 1 upsampled ×4: half-pixel centres put the source
        // samples at x = 1.5 and 5.5; outside them the edge is clamped.
        let r = upsample(&[0.0, 1.0, 0.0, 1.0], 2, 2, 8);
        let row: Vec<f32> = r[..8].to_vec();
        let expect = [0.0, 0.0, 0.125, 0.375, 0.625, 0.875, 1.0, 1.0];
        for (a, b) in row.iter().zip(expect) {
            assert!((a - b).abs() < 1e-6, "{row:?}");
        }
        // Same size: identity.
        let v: Vec<f32> = (0..9).map(|i| i as f32).collect();
        assert_eq!(upsample(&v, 3, 3, 3), v);
    }

    #[test]
    fn normalise_weight_and_score_cam() {
        let mut v = vec![2.0, 4.0, 3.0];
        min_max_normalise(&mut v);
        assert_eq!(v, vec![0.0, 1.0, 0.5]);
        let mut flat = vec![3.0; 4];
        min_max_normalise(&mut flat);
        assert_eq!(flat, vec![0.0; 4]);
        let s = weighted_sum(&[vec![1.0, -2.0], vec![3.0, 2.0]], &[0.25, 0.75]);
        assert_eq!(s, vec![2.5, 1.0]);
        // Two channels of a 2-location map: 0.5·[1, 0] − 1·[0, 2] → ReLU([0.5, −2]).
        let m = score_cam_map(&[1.0, 0.0, 0.0, 2.0], 2, 2, &[0.5, -1.0]);
        assert_eq!(m, vec![0.5, 0.0]);
    }
}
