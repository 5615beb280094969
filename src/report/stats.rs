//! The statistics of the reports: Wilson score intervals for accuracies, and McNemar's
//! exact test for paired comparisons (the same examples before and after).

/// The Wilson score interval of `k` successes in `n` trials at normal quantile `z`
/// (1.96 for 95%); `(0, 1)` when `n` is 0.
pub fn wilson(k: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = k as f64 / n;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// The normal quantile of a 95% two-sided interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// McNemar's exact test: the two-sided p-value of `b` and `c` discordant pairs (changed
/// one way, changed the other) under the null that both directions are equally likely,
/// `min(1, 2 P(X <= min(b, c)))` for `X ~ Binomial(b + c, 1/2)`. 1 without discordant
/// pairs.
pub fn mcnemar_exact(b: u64, c: u64) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // Terms C(n, i) / 2^n in logs (n may be large), summed from the largest.
    let mut ln_t = -(n as f64) * std::f64::consts::LN_2;
    let mut terms = Vec::with_capacity(k as usize + 1);
    for i in 0..=k {
        terms.push(ln_t);
        ln_t += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tail = max.exp() * terms.iter().map(|t| (t - max).exp()).sum::<f64>();
    (2.0 * tail).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_by_hand() {
        // b = 1, c = 9: 2 (C(10,0) + C(10,1)) / 2^10 = 22/1024.
        assert!((mcnemar_exact(1, 9) - 22.0 / 1024.0).abs() < 1e-15);
        assert_eq!(mcnemar_exact(9, 1), mcnemar_exact(1, 9));
        // b = 0, c = 5: 2 / 32.
        assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-15);
        // b = 2, c = 8: 2 (1 + 10 + 45) / 1024 = 112/1024.
        assert!((mcnemar_exact(2, 8) - 112.0 / 1024.0).abs() < 1e-15);
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(5, 5), 1.0);
        // Large n stays finite: 2000 pairs split 900/1100 is significant.
        let p = mcnemar_exact(900, 1100);
        assert!(p > 0.0 && p < 1e-5, "{p}");
    }

    #[test]
    fn wilson_by_hand() {
        // 8 of 10 at z = 1.96: (0.4902, 0.9433) (Wilson 1927; Newcombe 1998, table I).
        let (lo, hi) = wilson(8, 10, 1.96);
        assert!(
            (lo - 0.4902).abs() < 1e-4 && (hi - 0.9433).abs() < 1e-4,
            "{lo} {hi}"
        );
        let (lo, hi) = wilson(0, 10, 1.96);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.2775).abs() < 1e-4, "{hi}");
        assert_eq!(wilson(0, 0, 1.96), (0.0, 1.0));
    }
}
