//! `harden audit --shard K/N`: the flags it takes and the part file it writes
//! (`report::merge`).

use std::path::Path;

use anyhow::{bail, Result};

use super::audit_command::AuditArgs;
use super::{host_name, print_stdout, write_atomic, EXIT_OK};
use crate::audit::AuditReport;
use crate::report::merge::{part_json, Settings};
use crate::report::{AuditMeta, Meta};
use crate::shard::Shard;

/// Parses `--shard` (reading `JOB_COMPLETION_INDEX`, `SLURM_ARRAY_*` for `auto`: the
/// CLI is the one place that reads the environment) and checks the flags a shard takes:
/// a part goes to `--json FILE`; the report, gates and comparisons come from
/// `harden report merge`.
pub fn parse(a: &AuditArgs) -> Result<Option<Shard>> {
    let Some(s) = a.shard.as_deref() else {
        return Ok(None);
    };
    let shard = Shard::parse(s, &|k| std::env::var(k).ok())?;
    let refused = [
        ("--report", a.report.report.is_some()),
        (
            "--min-clean-accuracy",
            a.report.min_clean_accuracy.is_some(),
        ),
        (
            "--min-robust-accuracy",
            a.report.min_robust_accuracy.is_some(),
        ),
        ("--junit", a.report.junit.is_some()),
        ("--per-example", a.report.per_example.is_some()),
        ("--baseline", a.baseline.is_some()),
    ];
    if let Some((flag, _)) = refused.iter().find(|(_, given)| *given) {
        bail!(
            "--shard writes a part file (--json FILE); {flag} belongs to `harden report merge`, which builds the report from all the parts"
        );
    }
    if a.json.is_none() {
        bail!("--shard {s}: give --json PART.json, where the shard's part is written (then `harden report merge PART.json...`)");
    }
    Ok(Some(shard))
}

/// Writes the shard's part file to `--json` and says so on stderr.
#[allow(clippy::too_many_arguments)]
pub fn write(
    a: &AuditArgs,
    report: &AuditReport,
    shard: Shard,
    eps: Vec<f32>,
    started_unix: u64,
    seconds: f64,
    device: String,
    command: Vec<String>,
) -> Result<i32> {
    let settings = Settings {
        model_sha256: report.model.sha256.clone(),
        data_spec: report.data.spec.clone(),
        data_examples: report.data.examples,
        runtime: report.runtime.clone(),
        batch: report.batch,
        eps,
        norm: a.attack_opts.norm(),
        attacks: a.attacks.clone().unwrap_or_else(|| "standard".into()),
        steps: a.attack_opts.steps,
        restarts: a.attack_opts.restarts,
        square_queries: a.attack_opts.square_queries,
        seed: a.attack_opts.seed,
        sanity: !a.no_sanity_checks,
        keep_examples: crate::audit::AuditOptions::default().keep_examples,
    };
    let meta = Meta {
        harden_version: env!("CARGO_PKG_VERSION").to_string(),
        started: crate::report::rfc3339(started_unix),
        host: host_name(),
        seconds,
        audits: vec![AuditMeta {
            role: format!("shard {shard}"),
            seconds: report.meta.seconds,
            examples_per_second: report.meta.examples_per_second,
        }],
        device,
        command,
        ..Default::default()
    };
    let json = part_json(report, shard, settings, &meta)?;
    match a.json.as_deref() {
        Some(p) if p == Path::new("-") => print_stdout(&json)?,
        Some(p) => {
            write_atomic(p, json.as_bytes())?;
            eprintln!(
                "shard {shard}: {} of {} examples, part written to {}",
                report.per_example.len(),
                report.data.examples,
                p.display()
            );
        }
        None => bail!("--shard needs --json PART.json"),
    }
    Ok(EXIT_OK)
}

/// Opens `--checkpoint` (started afresh, or resumed with `--resume`), its header naming
/// the run: model, data, flags, seed, runtime, batch and shard.
pub(super) fn open_log(
    a: &AuditArgs,
    s: &mut super::Session,
    plan: Option<&crate::audit::RobustPlan>,
    shard: Option<Shard>,
) -> Result<Option<crate::audit_log::AuditLog>> {
    let Some(path) = a.checkpoint.as_deref() else {
        return Ok(None);
    };
    let run = serde_json::json!({
        "model_sha256": s.model.sha256,
        "data_spec": s.data_spec,
        "data_examples": s.source.len(),
        "input_spec": s.spec,
        "runtime": s.oracle.classifier().runtime_name(),
        "batch": s.oracle.classifier().batch(),
        "eps": plan.map(|p| p.eps.clone()).unwrap_or_default(),
        "norm": a.attack_opts.norm(),
        "attacks": a.attacks.clone().unwrap_or_else(|| "standard".into()),
        "steps": a.attack_opts.steps,
        "restarts": a.attack_opts.restarts,
        "square_queries": a.attack_opts.square_queries,
        "seed": a.attack_opts.seed,
        "sanity": !a.no_sanity_checks,
        "shard": shard,
    });
    Ok(Some(if a.resume {
        let log = crate::audit_log::AuditLog::resume(path, run)?;
        eprintln!(
            "resume   {} finished batches from {}",
            log.finished(),
            path.display()
        );
        log
    } else {
        crate::audit_log::AuditLog::create(path, run)?
    }))
}
