//! `harden report merge PART.json... --report DIR`: the parts of a sharded audit
//! (`audit --shard K/N`) checked and merged into the report one unsharded run writes,
//! with the gates on the merged numbers.

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;

use super::{check_writable, host_name, unix_now, Env, ReportArgs};

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The part files (`harden audit --shard K/N --json PART.json`), one per shard, in
    /// any order.
    #[arg(required = true, value_name = "PART.json")]
    pub parts: Vec<PathBuf>,
    /// Write the merged report as JSON to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub report: ReportArgs,
}

pub fn run(a: MergeArgs, env: &Env) -> Result<i32> {
    let started = unix_now();
    let ra = &a.report;
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
    ra.finish_and_print(&mut report, text, a.json.as_deref())
}
