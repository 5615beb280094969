//! CI gates: minimum clean accuracy, and minimum worst-case robust accuracy at every eps.
//! A missed gate makes the command exit with 1 (the report is still written).

use anyhow::{bail, Result};
use serde::Serialize;

use crate::audit::AuditReport;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Gate {
    /// `clean-accuracy` or `robust-accuracy@EPS`.
    pub name: String,
    pub threshold: f64,
    /// The measured value (`None`: nothing to measure, e.g. no labels; the gate fails).
    pub value: Option<f64>,
    pub passed: bool,
}

impl Gate {
    fn new(name: String, threshold: f64, value: Option<f64>) -> Gate {
        Gate {
            passed: value.is_some_and(|v| v >= threshold),
            name,
            threshold,
            value,
        }
    }

    /// One line: `robust-accuracy@0.1 62.50% >= 60.00% passed`.
    pub fn line(&self) -> String {
        format!(
            "{} {} {} {:.2}% {}",
            self.name,
            self.value
                .map(|v| format!("{:.2}%", 100.0 * v))
                .unwrap_or_else(|| "n/a".into()),
            if self.passed { ">=" } else { "<" },
            100.0 * self.threshold,
            if self.passed { "passed" } else { "FAILED" }
        )
    }
}

/// Checks that a threshold is a fraction in [0, 1].
pub fn check_threshold(flag: &str, v: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&v) {
        bail!("{flag} {v}: a threshold is a fraction between 0 and 1 (0.8 for 80%)");
    }
    Ok(v)
}

/// The gates on `a`: clean accuracy, and worst-case robust accuracy at each eps.
pub fn evaluate(
    a: &AuditReport,
    min_clean: Option<f64>,
    min_robust: Option<f64>,
) -> Result<Vec<Gate>> {
    let mut out = vec![];
    if let Some(t) = min_clean {
        check_threshold("--min-clean-accuracy", t)?;
        out.push(Gate::new("clean-accuracy".into(), t, a.clean.accuracy));
    }
    if let Some(t) = min_robust {
        check_threshold("--min-robust-accuracy", t)?;
        let Some(rb) = &a.robust else {
            bail!("--min-robust-accuracy needs attacks (--eps)");
        };
        for e in &rb.results {
            out.push(Gate::new(
                format!("robust-accuracy@{}", e.eps),
                t,
                Some(e.robust_accuracy),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_are_inclusive_and_missing_values_fail() {
        assert!(Gate::new("a".into(), 0.5, Some(0.5)).passed);
        assert!(!Gate::new("a".into(), 0.5, Some(0.4999)).passed);
        assert!(!Gate::new("a".into(), 0.0, None).passed);
        assert!(check_threshold("--x", 1.5).is_err());
        assert!(check_threshold("--x", -0.1).is_err());
        assert!(check_threshold("--x", f64::NAN).is_err());
        assert_eq!(
            Gate::new("clean-accuracy".into(), 0.8, Some(0.7)).line(),
            "clean-accuracy 70.00% < 80.00% FAILED"
        );
    }
}
