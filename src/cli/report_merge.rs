//! `harden report merge PART.json... --report DIR`: the parts of a sharded audit
//! (`audit --shard K/N`) checked and merged into the report one unsharded run writes,
//! with the gates on the merged numbers.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use super::{check_writable, host_name, print_stdout, unix_now, write_atomic, Env, ReportArgs};

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The part files (`harden audit --shard K/N --json PART.json`), one per shard, in
    /// any order.
    #[arg(required = true, value_name = "PART.json")]
    pub parts: Vec<PathBuf>,
    /// Write report.json, report.md and report.html into DIR (created if missing).
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Write the merged report as JSON to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Gate: exit with 1 when clean accuracy is below X (a fraction, 0.9 for 90%).
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    pub min_clean_accuracy: Option<f64>,
    /// Gate: exit with 1 when the worst-case robust accuracy at any eps is below X.
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    pub min_robust_accuracy: Option<f64>,
    /// Write the gates as a JUnit XML file (one test case per gate).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write every example's outcome to FILE: .jsonl (JSON Lines) or .csv.
    #[arg(long, value_name = "FILE")]
    pub per_example: Option<PathBuf>,
}

pub fn run(a: MergeArgs, env: &Env) -> Result<i32> {
    let started = unix_now();
    let ra = ReportArgs {
        report: a.report.clone(),
        min_clean_accuracy: a.min_clean_accuracy,
        min_robust_accuracy: a.min_robust_accuracy,
        junit: a.junit.clone(),
        no_sanity_checks: false,
        per_example: a.per_example.clone(),
    };
    if let Some(p) = a.json.as_deref().filter(|p| *p != Path::new("-")) {
        check_writable("--json", p)?;
    }
    // Every part is read and checked before anything is written.
    let (audit, seconds, _) = crate::report::merge::merge_files(&a.parts)?;
    ra.validate(audit.robust.is_some())?;
    let text = crate::audit::render_text(&audit);
    let mut report = crate::report::Report::audit(audit);
    report.stamp(env!("CARGO_PKG_VERSION"), started, &host_name(), seconds);
    report.meta.command = env.command.clone();
    let code = ra.finish(&mut report)?;
    let json = report.to_json()?;
    let summary = crate::report::summary(&report);
    match a.json.as_deref() {
        Some(p) if p == Path::new("-") => print_stdout(&json)?,
        Some(p) => {
            write_atomic(p, json.as_bytes())?;
            print_stdout(&(text + "\n" + &summary))?;
        }
        None if a.report.is_some() => print_stdout(&summary)?,
        None => print_stdout(&(text + "\n" + &summary))?,
    }
    if let (Some(d), false) = (&a.report, a.json.as_deref() == Some(Path::new("-"))) {
        print_stdout(&format!("report   {}\n", d.join("report.html").display()))?;
    }
    Ok(code)
}
