//! Standard normal and binomial tail functions (libm's erfc/lgamma underneath, ~1e-15 relative).

/// Φ(x), the standard normal CDF (R's `pnorm`).
pub fn cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// Φ⁻¹(p) (R's `qnorm`): Acklam's rational approximation polished by two Newton steps on the
/// exact CDF, so the result is accurate to machine precision.
pub fn quantile(p: f64) -> f64 {
    if p <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if p >= 1.0 {
        return f64::INFINITY;
    }
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let plow = 0.02425;
    let mut x = if p < plow {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - plow {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    for _ in 0..2 {
        let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
        x -= (cdf(x) - p) / pdf;
    }
    x
}

/// Two-sided p-value of a standard normal statistic: 2 Φ(−|z|).
pub fn two_sided_p(z: f64) -> f64 {
    2.0 * cdf(-z.abs())
}

/// P(X ≤ k) for X ~ Binomial(n, 1/2), summed exactly in log space.
pub fn binom_half_cdf(k: u64, n: u64) -> f64 {
    let ln_half_n = n as f64 * std::f64::consts::LN_2;
    let lnf = |x: u64| libm::lgamma(x as f64 + 1.0);
    let mut terms: Vec<f64> = (0..=k.min(n))
        .map(|i| lnf(n) - lnf(i) - lnf(n - i) - ln_half_n)
        .collect();
    let max = terms.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    terms.iter_mut().for_each(|t| *t = (*t - max).exp());
    (max.exp() * terms.iter().sum::<f64>()).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_matches_r() {
        // R: qnorm(0.975), pnorm(-1.5), qnorm(1e-5)
        assert!((quantile(0.975) - 1.959_963_984_540_054).abs() < 1e-14);
        assert!((cdf(-1.5) - 0.066_807_201_268_858_06).abs() < 1e-15);
        assert!((quantile(1e-5) - -4.264_890_793_922_825).abs() < 1e-12);
        assert!((two_sided_p(1.959_963_984_540_054) - 0.05).abs() < 1e-14);
    }

    #[test]
    fn binomial_half_cdf_small_cases() {
        // P(X ≤ 1), n = 5: (1 + 5) / 32
        assert!((binom_half_cdf(1, 5) - 6.0 / 32.0).abs() < 1e-14);
        assert!((binom_half_cdf(5, 5) - 1.0).abs() < 1e-14);
        assert!((binom_half_cdf(0, 10) - 1.0 / 1024.0).abs() < 1e-16);
    }
}
