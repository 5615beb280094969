//! `--per-example FILE`: every example's outcome ([`ExampleOutcome`]) as JSON Lines
//! (`.jsonl`, one example per line, with the audit's role) or CSV (`.csv`, one row per
//! example, eps and attack that ran on it; one row per example without attacks).

use std::fmt::Write;
use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use super::Report;
use crate::robust::ExampleOutcome;

/// The formats, by the file's extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    JsonLines,
    Csv,
}

/// The format of `path` (`.jsonl` or `.csv`), or an error naming the flag.
pub fn format_of(path: &Path) -> Result<Format> {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("jsonl") => Ok(Format::JsonLines),
        Some("csv") => Ok(Format::Csv),
        _ => bail!(
            "--per-example {}: the file name must end in .jsonl (JSON Lines) or .csv",
            path.display()
        ),
    }
}

/// The CSV columns.
pub const CSV_HEAD: &str =
    "audit,example,label,clean_prediction,eps,robust,attack,broken,adversarial_prediction,distance,evaluations,budget";

#[derive(Serialize)]
struct Line<'a> {
    audit: &'a str,
    #[serde(flatten)]
    outcome: &'a ExampleOutcome,
}

/// The file's text: the examples of every audit of `r` (`audit`, or `before` and
/// `after`).
pub fn render(r: &Report, format: Format) -> Result<String> {
    let mut s = String::new();
    if format == Format::Csv {
        s.push_str(CSV_HEAD);
        s.push('\n');
    }
    let opt = |v: Option<usize>| v.map(|x| x.to_string()).unwrap_or_default();
    for (role, a) in r.audits() {
        for o in &a.per_example {
            match format {
                Format::JsonLines => {
                    s += &serde_json::to_string(&Line {
                        audit: role,
                        outcome: o,
                    })?;
                    s.push('\n');
                }
                Format::Csv => {
                    let head = format!(
                        "{role},{},{},{}",
                        o.example,
                        opt(o.label),
                        o.clean_prediction
                    );
                    if o.eps.is_empty() {
                        let _ = writeln!(s, "{head},,,,,,,,");
                    }
                    for e in &o.eps {
                        if e.attacks.is_empty() {
                            let _ = writeln!(s, "{head},{},{},,,,,,", e.eps, e.robust);
                        }
                        for t in &e.attacks {
                            let _ = writeln!(
                                s,
                                "{head},{},{},{},{},{},{},{},{}",
                                e.eps,
                                e.robust,
                                t.attack,
                                t.broken,
                                opt(t.adversarial_prediction),
                                t.distance.map(|d| d.to_string()).unwrap_or_default(),
                                t.evaluations,
                                t.budget
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(s)
}

/// Writes the per-example file (format by extension; atomically).
pub fn write(path: &Path, r: &Report) -> Result<()> {
    let text = render(r, format_of(path)?)?;
    crate::files::write_atomic(path, text.as_bytes())
}
