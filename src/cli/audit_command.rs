//! `harden audit`: one pass over the data (clean metrics, attacks, sanity checks), the
//! report, gates, a baseline comparison, shards and checkpoints.

use super::*;

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// Data: fashion-mnist[:train|:test], mnist[:...], an IDX/.npz/.npy/.vnnlib file, or a
    /// folder (IDX files, one sub-folder of images per class, or .vnnlib files). Default: the
    /// Fashion-MNIST test set if installed, else the bundled slice (28x28 models only).
    #[arg(long)]
    pub data: Option<String>,
    /// Use only the first N examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write the report as JSON to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Attack at these radii (comma-separated, raw input units).
    #[arg(long, value_name = "E[,E...]", allow_hyphen_values = true)]
    pub eps: Option<String>,
    /// Attacks: names (fgsm, pgd, pgd-margin, apgd-ce, apgd-dlr, apgd-t, square) or
    /// `standard` (APGD-CE, APGD-T, Square in a cascade). Needs --eps.
    #[arg(long, value_name = "LIST", requires = "eps")]
    pub attacks: Option<String>,
    #[command(flatten)]
    pub attack_opts: AttackOpts,
    #[command(flatten)]
    pub report: ReportArgs,
    /// Skip the sanity checks (they attack a few examples again).
    #[arg(long)]
    pub no_sanity_checks: bool,
    /// Compare with this earlier report.json (same data, examples, threat model and
    /// attacks; the seed may differ): paired per example, McNemar's exact test; exit 1 on
    /// a significant drop larger than --max-drop.
    #[arg(long, value_name = "REPORT.json")]
    pub baseline: Option<PathBuf>,
    #[command(flatten)]
    pub compare: CompareArgs,
    /// Audit only shard K of N (K from 0: examples whose position % N == K) and write its
    /// part file to --json, for `harden report merge`; `auto` (or `auto/N`) takes K from
    /// JOB_COMPLETION_INDEX (Kubernetes Indexed Job) or SLURM_ARRAY_TASK_ID (Slurm array;
    /// N from SLURM_ARRAY_TASK_COUNT).
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Append every finished batch's outcomes to FILE (JSON Lines, synced), so that a
    /// killed audit can be resumed with --resume.
    #[arg(long, value_name = "FILE")]
    pub checkpoint: Option<PathBuf>,
    /// Resume the audit checkpointed in --checkpoint FILE: finished batches are not run
    /// again; the report equals an uninterrupted run's.
    #[arg(long, requires = "checkpoint")]
    pub resume: bool,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub rounding: RoundingArgs,
}

/// Runs the audit; where ONNX Runtime runs out of memory, again at half the batch size
/// (the outcomes do not depend on it), down to one example, saying so. Not with
/// `--checkpoint`, whose finished batches are counted at the batch size asked for.
pub(super) fn run(mut a: AuditArgs, env: &Env) -> Result<i32> {
    if a.checkpoint.is_some() {
        return audit(&a, env);
    }
    halving_batch(a.run.batch_size, "auditing", |b| {
        a.run.batch_size = b;
        audit(&a, env)
    })
}

fn audit(a: &AuditArgs, env: &Env) -> Result<i32> {
    let started = Instant::now();
    let started_unix = unix_now();
    let shard = shard_part::parse(a)?;
    a.report
        .validate_with(a.eps.is_some(), a.baseline.is_some())?;
    if let Some(p) = a.json.as_deref().filter(|p| *p != Path::new("-")) {
        a.report.check_output("--json", p)?;
    }
    // The baseline is read and checked as far as the flags allow before any work.
    let baseline = match &a.baseline {
        Some(p) => {
            crate::report::compare::check_settings(a.compare.max_drop, a.compare.alpha)?;
            Some(crate::report::compare::Side::read(p)?)
        }
        None => None,
    };
    let plan = match &a.eps {
        None => None,
        Some(e) => {
            let eps = parse_eps_list(e)?;
            let (attacks, cascade) = crate::robust::parse_attacks(
                a.attacks.as_deref().unwrap_or("standard"),
                &a.attack_opts.knobs(),
            )?;
            Some(audit::RobustPlan {
                norm: a.attack_opts.norm(),
                eps,
                attacks,
                cascade,
            })
        }
    };
    if let Some(b) = &baseline {
        crate::report::compare::check_plan(b, plan.as_ref())?;
    }
    // A clean audit and gradient attacks need every op supported; Square alone does not.
    let gradient_free = plan
        .as_ref()
        .is_some_and(|p| p.attacks.iter().all(|x| !x.needs_gradients()));
    let mut s = open_session(
        &a.model,
        !gradient_free,
        a.data.as_deref(),
        a.limit,
        &a.input,
        &a.run,
        &a.rounding,
        env,
    )?;
    if let Some(b) = &baseline {
        crate::report::compare::check_data(b, &s.data_spec)?;
    }
    if let Some(p) = &plan {
        for &eps in &p.eps {
            crate::attack::Threat::new(p.norm, eps, s.spec.range)?;
        }
        if p.attacks.iter().any(|x| x.needs_gradients()) {
            // Build the gradient graphs up front: a missing rule is an error now, not
            // after the first batches.
            s.oracle.prepare(LossKind::CrossEntropy)?;
        }
    }
    let mut log = shard_part::open_log(a, &mut s, plan.as_ref(), shard)?;
    let bar = progress_bar(s.source.len().map(|n| n as u64), "auditing");
    let mut report = audit::run_audit_logged(
        &s.model,
        &s.spec,
        &mut s.oracle,
        s.source.as_mut(),
        &s.data_spec,
        &s.mapping,
        plan.as_ref(),
        &audit::AuditOptions {
            sanity: !a.no_sanity_checks,
            // The baseline's robust examples: those that break now are shown with images.
            watch: baseline
                .as_ref()
                .map(|b| {
                    b.per_example
                        .iter()
                        .filter(|o| o.eps.iter().any(|e| e.robust))
                        .map(|o| o.example)
                        .collect()
                })
                .unwrap_or_default(),
            shard,
            ..Default::default()
        },
        log.as_mut(),
        &mut |n| bar.set_position(n),
    )?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    report.meta = audit::Meta::timed(report.data.examples, secs);
    if let Some(sh) = shard {
        let eps = plan.as_ref().map(|p| p.eps.clone()).unwrap_or_default();
        let device = s.ort.device.to_string();
        return shard_part::write(
            a,
            &report,
            sh,
            eps,
            started_unix,
            secs,
            device,
            env.command.clone(),
        );
    }
    let text = audit::render_text(&report);
    let mut report = crate::report::Report::audit(report);
    report.stamp(
        env!("CARGO_PKG_VERSION"),
        started_unix,
        &host_name(),
        started.elapsed().as_secs_f64(),
    );
    stamp_device(&mut report, &s.ort, s.oracle.step_mode());
    report.meta.command = env.command.clone();
    if let Some(b) = &baseline {
        let now = crate::report::compare::Side::of_report(&report)?;
        report.baseline = Some(crate::report::compare::compare(
            b,
            &now,
            a.compare.max_drop,
            a.compare.alpha,
        )?);
    }
    a.report
        .finish_and_print(&mut report, text, a.json.as_deref())
}

fn parse_eps_list(s: &str) -> Result<Vec<f32>> {
    let v = parse_floats("--eps", s)?;
    if let Some(bad) = v.iter().find(|e| !(e.is_finite() && **e > 0.0)) {
        bail!("--eps {bad}: every eps must be a positive number");
    }
    Ok(v)
}
