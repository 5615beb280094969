//! The report of one run: one audit (`harden audit`), or the audits of a model before and
//! after hardening with the training between them (`harden MODEL --eps`). One model,
//! rendered as JSON (the contract: `schema_version`, keys in a fixed order, everything
//! volatile under `meta`), Markdown and one self-contained HTML file; the gates and their
//! JUnit file; a short terminal summary.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::audit::{self, AuditReport};
pub use crate::train::EpochRow;

pub mod card;
pub mod compare;
pub mod content;
pub mod gate;
pub mod html;
pub mod images;
pub mod json;
pub mod junit;
pub mod markdown;
pub mod merge;
pub mod outcomes;
pub mod plot;
pub mod stats;

pub use gate::Gate;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportKind {
    /// One audit (`harden audit`).
    Audit,
    /// An audit before and after hardening, with the training (`harden MODEL --eps`).
    Hardening,
}

/// What the hardening did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Training {
    pub method: String,
    pub eps: f32,
    pub epochs: usize,
    /// The curve, epoch 0 being the model before training. Wall times are volatile: the
    /// JSON has them under `meta.epoch_seconds`, not here.
    #[serde(serialize_with = "rows_without_seconds")]
    pub rows: Vec<EpochRow>,
    /// Anything else worth keeping (settings, data), reproducible values only.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

fn rows_without_seconds<S: serde::Serializer>(rows: &[EpochRow], s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Row {
        epoch: usize,
        lr: f32,
        train_loss: Option<f64>,
        train_accuracy: Option<f64>,
        val_clean_accuracy: Option<f64>,
        val_robust_accuracy: Option<f64>,
    }
    s.collect_seq(rows.iter().map(|r| Row {
        epoch: r.epoch,
        lr: r.lr,
        train_loss: r.train_loss,
        train_accuracy: r.train_accuracy,
        val_clean_accuracy: r.val_clean,
        val_robust_accuracy: r.val_robust,
    }))
}

/// Everything volatile: the JSON keeps it under one key so the rest reproduces.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Meta {
    pub harden_version: String,
    /// When the run started (UTC, RFC 3339) and on which host.
    pub started: String,
    pub host: String,
    pub seconds: f64,
    /// Per audit (`audit`, or `before` and `after`): seconds and examples per second.
    pub audits: Vec<AuditMeta>,
    /// Per hardening epoch.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub epoch_seconds: Vec<f64>,
    /// Where the graphs ran: `cpu`, `cuda:N` or `cuda:N,M,...` (`--device`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub device: String,
    /// Why `--device auto` ran on the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_note: Option<String>,
    /// On CUDA, `fp32` or `tf32` (`--precision`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub precision: String,
    /// How PGD's steps ran: `host`, `graph` or `bound` (`--step-loop`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub step_loop: String,
    /// Where a hardening run's weights and optimiser state lived between steps: `bound`
    /// (held in the runtime's memory, the GPU's on CUDA: bound step loops on ONNX Runtime,
    /// one device) or `host`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub train_weights: String,
    /// The command line of the run (the CLI passes its arguments in), to reproduce it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AuditMeta {
    pub role: String,
    pub seconds: f64,
    pub examples_per_second: f64,
}

/// The report of one run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub kind: ReportKind,
    /// `kind: audit`: the audit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditReport>,
    /// `kind: hardening`: the original model, the hardened one, and the training.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<AuditReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<AuditReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub training: Option<Training>,
    /// The gates asked for (`--min-clean-accuracy`, `--min-robust-accuracy`), evaluated
    /// on the audit (or on the hardened model).
    pub gates: Vec<Gate>,
    /// The comparison with a baseline report (`--baseline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<compare::Comparison>,
    /// The robustness card's facts (`card.md` renders them), set by [`Report::add_card`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_card: Option<card::ModelCard>,
    pub meta: Meta,
}

fn audit_meta(role: &str, a: &AuditReport) -> AuditMeta {
    AuditMeta {
        role: role.into(),
        seconds: a.meta.seconds,
        examples_per_second: a.meta.examples_per_second,
    }
}

impl Report {
    /// The report of one audit. Its timings move into the report's `meta`.
    pub fn audit(a: AuditReport) -> Report {
        Report {
            schema_version: audit::SCHEMA_VERSION,
            kind: ReportKind::Audit,
            meta: Meta {
                harden_version: a.meta.harden_version.clone(),
                seconds: a.meta.seconds,
                audits: vec![audit_meta("audit", &a)],
                ..Default::default()
            },
            audit: Some(a),
            before: None,
            after: None,
            training: None,
            gates: vec![],
            baseline: None,
            model_card: None,
        }
    }

    /// The report of a hardening run: the original model's audit, the hardened model's
    /// (same data and attacks), and the training. Timings move into `meta`.
    pub fn hardening(before: AuditReport, after: AuditReport, training: Training) -> Report {
        Report {
            schema_version: audit::SCHEMA_VERSION,
            kind: ReportKind::Hardening,
            meta: Meta {
                harden_version: after.meta.harden_version.clone(),
                seconds: before.meta.seconds
                    + after.meta.seconds
                    + training.rows.iter().map(|r| r.seconds).sum::<f64>(),
                audits: vec![audit_meta("before", &before), audit_meta("after", &after)],
                epoch_seconds: training.rows.iter().map(|r| r.seconds).collect(),
                ..Default::default()
            },
            audit: None,
            before: Some(before),
            after: Some(after),
            training: Some(training),
            gates: vec![],
            baseline: None,
            model_card: None,
        }
    }

    /// The audit the gates judge: the audit, or the hardened model's.
    pub fn primary(&self) -> &AuditReport {
        match (&self.audit, &self.after, &self.before) {
            (Some(a), _, _) | (None, Some(a), _) | (None, None, Some(a)) => a,
            (None, None, None) => unreachable!("a Report is built with at least one audit"),
        }
    }

    /// The audits with their roles: `[("audit", a)]` or `[("before", b), ("after", a)]`.
    pub fn audits(&self) -> Vec<(&'static str, &AuditReport)> {
        let mut v = vec![];
        if let Some(a) = &self.audit {
            v.push(("audit", a));
        }
        if let Some(a) = &self.before {
            v.push(("before", a));
        }
        if let Some(a) = &self.after {
            v.push(("after", a));
        }
        v
    }

    /// Records the run's volatile facts (the library reads no clock or environment).
    pub fn stamp(&mut self, harden_version: &str, started_unix: u64, host: &str, seconds: f64) {
        self.meta.harden_version = harden_version.into();
        self.meta.started = rfc3339(started_unix);
        self.meta.host = host.into();
        self.meta.seconds = seconds;
    }

    /// Whether every gate passed (true when there are none).
    pub fn gates_passed(&self) -> bool {
        self.gates.iter().all(|g| g.passed)
    }

    /// Whether every gate passed and the comparison with the baseline (if any) too.
    pub fn passed(&self) -> bool {
        self.gates_passed() && self.baseline.as_ref().is_none_or(|c| c.passed)
    }

    /// Sets `model_card` from the rest of the report (call after the gates and the
    /// baseline comparison are in).
    pub fn add_card(&mut self) {
        self.model_card = Some(card::ModelCard::of(self));
    }

    /// The JSON (pretty, keys in declaration order, one line per example in
    /// `per_example`, newline at the end).
    pub fn to_json(&self) -> Result<String> {
        Ok(json::to_string(self)? + "\n")
    }
}

/// Writes `report.json`, `report.md`, `report.html` and, when the report has its card,
/// `card.md` into `dir` (created if missing), each through a temporary file renamed
/// into place.
pub fn write_dir(dir: &Path, report: &Report) -> Result<()> {
    prepare_dir(dir)?;
    crate::files::write_atomic(&dir.join("report.json"), report.to_json()?.as_bytes())?;
    crate::files::write_atomic(&dir.join("report.md"), markdown::render(report).as_bytes())?;
    crate::files::write_atomic(&dir.join("report.html"), html::render(report).as_bytes())?;
    if report.model_card.is_some() {
        crate::files::write_atomic(&dir.join("card.md"), card::render(report).as_bytes())?;
    }
    Ok(())
}

/// Creates `dir` if needed; an existing file there is an error.
pub fn prepare_dir(dir: &Path) -> Result<()> {
    not_a_file(dir)?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--report {}: cannot create the folder", dir.display()))
}

/// Checks, before any work, that the report can be written to `dir` without creating it
/// yet (a run that fails leaves no empty folder behind): an existing folder that takes a
/// new file, or a missing one whose nearest existing ancestor is such a folder.
pub fn check_dir(dir: &Path) -> Result<()> {
    not_a_file(dir)?;
    let mut base = dir;
    while !base.exists() {
        base = match base.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
    }
    if !base.is_dir() {
        anyhow::bail!(
            "--report {}: cannot create the folder: {} is a file",
            dir.display(),
            base.display()
        );
    }
    tempfile::NamedTempFile::new_in(base)
        .map(drop)
        .map_err(|e| {
            anyhow::anyhow!(
                "--report {}: cannot write there: cannot create a file in {}: {e}",
                dir.display(),
                base.display()
            )
        })
}

fn not_a_file(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        anyhow::bail!(
            "--report {}: is a file, not a folder (the report writes report.json, report.md and report.html into a folder)",
            dir.display()
        );
    }
    Ok(())
}

fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}%", 100.0 * v))
        .unwrap_or_else(|| "n/a".into())
}

/// A few lines for the terminal: accuracy, worst-case robust accuracy per eps, flagged
/// checks, gates.
pub fn summary(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    for (role, a) in r.audits() {
        let who = if role == "audit" {
            String::new()
        } else {
            format!("{role:<7}")
        };
        let _ = write!(
            s,
            "{who}{}: clean {} ({}/{})",
            a.model.path,
            pct(a.clean.accuracy),
            a.clean.correct,
            a.clean.labelled
        );
        if let Some(rb) = &a.robust {
            for e in &rb.results {
                let _ = write!(s, ", robust@{} {}", e.eps, pct(Some(e.robust_accuracy)));
            }
        }
        let _ = writeln!(s);
        if let Some(w) = audit::nothing_attacked(a) {
            let _ = writeln!(s, "{who}WARNING: {w}");
        }
        let flagged: Vec<&str> = a
            .sanity
            .iter()
            .filter(|c| c.status == crate::sanity::Status::Flagged)
            .map(|c| c.id.as_str())
            .collect();
        if !a.sanity.is_empty() {
            let passed = a
                .sanity
                .iter()
                .filter(|c| c.status == crate::sanity::Status::Passed)
                .count();
            if flagged.is_empty() {
                let _ = writeln!(s, "{who}sanity: {passed} checks passed, none flagged");
            } else {
                let _ = writeln!(
                    s,
                    "{who}sanity: FLAGGED {} (see the report); {passed} passed",
                    flagged.join(", ")
                );
            }
        }
    }
    for g in &r.gates {
        let _ = writeln!(s, "gate {}", g.line());
    }
    if let Some(c) = &r.baseline {
        for m in &c.metrics {
            let _ = writeln!(s, "{}", m.line());
        }
    }
    s
}

/// Seconds since 1970 as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86400) as i64;
    let rem = unix % 86400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Escapes text for HTML (and for Markdown table cells, `|`).
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_by_hand() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
