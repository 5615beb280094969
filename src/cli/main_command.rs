//! `harden MODEL.onnx --eps E`: audit the model, fine-tune it on adversarial batches,
//! export the hardened ONNX (atomically) and audit it again.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use super::{
    check_writable, default_data, open_spec, print_stdout, progress_bar, write_atomic, Env,
    HardenArgs, MethodArg, OptimizerArg, ScheduleArg,
};
use crate::attack::{Norm, Threat};
use crate::audit::{self, AuditReport, RobustPlan};
use crate::autodiff::{trainable_params, LossKind};
use crate::classifier::{Classifier, RunOptions};
use crate::data::{self, DataSource, MemorySource, ValueKind};
use crate::model::OnnxModel;
use crate::oracle::ModelOracle;
use crate::report::{Report, Training};
use crate::rng::Rng;
use crate::robust::AttackKnobs;
use crate::spec::{DataMapping, InputSpec};
use crate::train::{self, optim, EpochRow, Event, Examples, HardenConfig, Method, TrainNet};

/// Every example of `src`, as stored, with labels.
fn read_all(src: &mut dyn DataSource) -> Result<(Vec<f32>, Vec<Option<usize>>)> {
    let (mut xs, mut ys) = (vec![], vec![]);
    while src.next_batch(4096, &mut xs, &mut ys)? > 0 {}
    Ok((xs, ys))
}

fn config_of(a: &HardenArgs, eps: f32) -> HardenConfig {
    let method = match a.method {
        MethodArg::Mixed => Method::Mixed,
        MethodArg::Pgd => Method::Pgd,
        MethodArg::Fast => Method::Fast,
        MethodArg::Trades => Method::Trades,
    };
    let kind = match a.optimizer {
        OptimizerArg::Sgd => optim::OptimizerKind::Sgd,
        OptimizerArg::Adam => optim::OptimizerKind::Adam,
    };
    HardenConfig {
        method,
        norm: match a.norm {
            super::NormArg::Linf => Norm::Linf,
            super::NormArg::L2 => Norm::L2,
        },
        eps,
        train_eps: a.train_eps,
        epochs: a.epochs,
        batch_size: a.batch_size,
        adv_ratio: a.adv_ratio,
        attack_steps: a.attack_steps,
        step_size: a.step_size,
        beta: a.beta,
        optim: optim::OptimConfig {
            kind,
            lr: a.lr.unwrap_or(match kind {
                optim::OptimizerKind::Adam => 4e-3,
                optim::OptimizerKind::Sgd => 0.01,
            }),
            momentum: a.momentum,
            weight_decay: a.weight_decay,
            schedule: match a.schedule {
                ScheduleArg::Constant => optim::Schedule::Constant,
                ScheduleArg::Cosine => optim::Schedule::Cosine,
                ScheduleArg::Step => optim::Schedule::Step,
            },
            warmup_steps: 0,
            total_steps: 0,
        },
        warmup_epochs: a.warmup_epochs,
        seed: a.seed,
        val_steps: a.val_steps,
        patience: a.patience,
    }
}

/// Where the audits' data comes from.
enum AuditData {
    Spec(String),
    /// The held-out validation examples (stored values), with the training data's class
    /// names when it has them.
    Held(
        Vec<f32>,
        Vec<Option<usize>>,
        Vec<usize>,
        ValueKind,
        Option<Vec<String>>,
    ),
}

impl AuditData {
    fn open(&self, env: &Env, limit: usize) -> Result<(String, Box<dyn DataSource>)> {
        let (name, src): (String, Box<dyn DataSource>) = match self {
            AuditData::Spec(s) => (s.clone(), open_spec(s, env)?),
            AuditData::Held(x, y, shape, kind, names) => {
                let held: Box<dyn DataSource> = Box::new(MemorySource::new(
                    "validation examples held out from the training data".into(),
                    shape.clone(),
                    *kind,
                    x.clone(),
                    y.clone(),
                ));
                let held = match names {
                    Some(n) => data::with_names(
                        held,
                        data::ClassNames {
                            origin: "the training data".into(),
                            aliases: n.iter().map(|n| vec![n.clone()]).collect(),
                        },
                    ),
                    None => held,
                };
                ("validation split of the training data".into(), held)
            }
        };
        Ok((name, data::limit(src, limit)))
    }
}

/// The test split that goes with a training-data spec, if it has one.
fn test_split_of(spec: &str, env: &Env) -> Option<String> {
    let base = spec
        .strip_suffix(":train")
        .or_else(|| spec.strip_suffix(":test"))
        .unwrap_or(spec);
    let t = format!("{base}:test");
    open_spec(&t, env).ok().map(|_| t)
}

#[allow(clippy::too_many_arguments)]
fn run_one_audit(
    what: &str,
    model: &OnnxModel,
    spec: &InputSpec,
    audit_data: &AuditData,
    limit: usize,
    plan: &RobustPlan,
    opts: &RunOptions,
    sanity: bool,
    env: &Env,
) -> Result<AuditReport> {
    let t0 = Instant::now();
    let (name, mut src) = audit_data.open(env, limit)?;
    let mapping = DataMapping::new(spec, src.example_shape(), src.kind())?;
    let classifier = Classifier::open(model, spec, &mapping.example_shape, opts)?;
    let mut oracle = ModelOracle::new(model, spec, classifier, opts)?;
    if plan.attacks.iter().any(|x| x.needs_gradients()) {
        oracle.prepare(LossKind::CrossEntropy)?;
    }
    let bar = progress_bar(src.len().map(|n| n as u64), "auditing");
    bar.set_message(what.to_string());
    let mut r = audit::run_audit_with(
        model,
        spec,
        &mut oracle,
        src.as_mut(),
        &name,
        &mapping,
        Some(plan),
        &audit::AuditOptions {
            sanity,
            ..Default::default()
        },
        &mut |n| bar.set_position(n),
    )?;
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    r.meta = audit::Meta {
        harden_version: env!("CARGO_PKG_VERSION").to_string(),
        seconds: secs,
        examples_per_second: r.data.examples as f64 / secs.max(1e-9),
    };
    Ok(r)
}

fn worst_case(r: &AuditReport) -> Option<f64> {
    r.robust
        .as_ref()
        .and_then(|x| x.results.first())
        .map(|e| e.robust_accuracy)
}

fn fingerprint(model: &OnnxModel, cfg: &HardenConfig, data: &str, n: usize, val: usize) -> String {
    let mut h = Sha256::new();
    h.update(model.sha256.as_bytes());
    h.update(serde_json::to_vec(cfg).unwrap_or_default());
    h.update(format!("{data}|{n}|{val}").as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What the training data gives the main command: the mapping and threat model it
/// fixed, the train and validation examples (mapped, in memory), their labels, and the
/// audits' data.
struct TrainingData {
    mapping: DataMapping,
    threat: Threat,
    data_desc: String,
    train_set: Examples,
    val_set: Examples,
    ys: Vec<usize>,
    audit_data: AuditData,
}

/// Stage 2: the training data read into memory (stored values), checked (labels, at
/// least two classes), split into train and validation by the seed, and the audits'
/// data chosen (`--audit-data`, the set's test split, or the held-out validation split).
fn training_data(
    a: &HardenArgs,
    env: &Env,
    spec: &mut InputSpec,
    range_given: bool,
    model_example_len: Option<usize>,
    cfg: &HardenConfig,
    eps: f32,
) -> Result<TrainingData> {
    // Training data, held in memory (stored values), split into train and validation.
    let (data_spec, mut source) = match a.data.as_deref() {
        Some(s) => (s.to_string(), open_spec(s, env)?),
        None => default_data("train", model_example_len, env)?,
    };
    if let Some(n) = a.limit {
        source = data::limit(source, n);
    }
    if !range_given {
        if let Some(bounds) = source.value_bounds() {
            spec.range_from_data(bounds)?;
        }
    }
    let mapping = DataMapping::new(spec, source.example_shape(), source.kind())?;
    let threat = Threat::new(cfg.norm, eps, spec.range)?;
    // A bad --train-eps fails now, not after reading the data.
    cfg.train_threat(&threat)?;
    let data_desc = source.describe();
    let (raw, labels) = read_all(source.as_mut())?;
    let stored_len: usize = source.example_shape().iter().product();
    let mut ys = Vec::with_capacity(labels.len());
    for (i, l) in labels.iter().enumerate() {
        ys.push(l.ok_or_else(|| {
            anyhow!("training data example {i} has no label; hardening needs labelled data")
        })?);
    }
    let mut classes: Vec<usize> = ys.clone();
    classes.sort_unstable();
    classes.dedup();
    if classes.len() < 2 {
        bail!(
            "the training data holds {} class{} ({} examples); hardening needs examples of at least two classes",
            classes.len(),
            if classes.len() == 1 { "" } else { "es" },
            ys.len()
        );
    }
    let n = ys.len();
    let val_n = a.val_size.min(n / 5);
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::derive(a.seed, 0x5350_4C54);
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    let (val_idx, train_idx) = order.split_at(val_n);
    let take = |idx: &[usize]| -> Result<(Vec<f32>, Vec<usize>, Vec<f32>)> {
        let raw_sel = crate::attack::gather(&raw, idx, stored_len);
        let mut mapped = vec![];
        mapping.map_batch(&raw_sel, &mut mapped, 0)?;
        Ok((mapped, idx.iter().map(|i| ys[*i]).collect(), raw_sel))
    };
    let len = mapping.example_len();
    let (tx, ty, _) = take(train_idx)?;
    let (vx, vy, vraw) = take(val_idx)?;
    let train_set = Examples { x: tx, y: ty, len };
    let val_set = Examples {
        x: vx,
        y: vy.clone(),
        len,
    };
    drop(raw);

    let audit_data = match (&a.audit_data, a.data.is_none()) {
        (Some(s), _) => AuditData::Spec(s.clone()),
        (None, true) => AuditData::Spec(default_data("test", model_example_len, env)?.0),
        (None, false) => match test_split_of(&data_spec, env) {
            Some(t) => AuditData::Spec(t),
            None if val_n > 0 => AuditData::Held(
                vraw,
                vy.iter().map(|v| Some(*v)).collect(),
                source.example_shape().to_vec(),
                source.kind(),
                source.label_names(),
            ),
            None => bail!("too few training examples to hold out audit data; pass --audit-data"),
        },
    };
    Ok(TrainingData {
        mapping,
        threat,
        data_desc,
        train_set,
        val_set,
        ys,
        audit_data,
    })
}

/// The main command's settings, checked (and its output paths probed) before any work.
struct Flags {
    model_path: PathBuf,
    eps: f32,
    ort: crate::runtime::OrtLocator,
    cfg: HardenConfig,
    plan: RobustPlan,
    out_path: PathBuf,
    ckpt_path: Option<PathBuf>,
}

/// Stage 1: the flags checked, the device resolved, the output and checkpoint paths
/// probed, so that a bad flag fails before the model or the data is read.
fn check_flags(a: &HardenArgs, env: &Env) -> Result<Flags> {
    let model_path = a
        .model
        .clone()
        .ok_or_else(|| anyhow!("give a model: harden MODEL.onnx --eps E"))?;
    let eps = a.eps.ok_or_else(|| anyhow!("give --eps"))?;
    if !(eps.is_finite() && eps > 0.0) {
        bail!("--eps must be a positive number, got {eps}");
    }
    if a.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    if a.audit_limit == 0 {
        bail!("--audit-limit must be at least 1");
    }
    if a.threads == Some(0) {
        bail!("--threads must be at least 1");
    }
    let ort = super::resolve_device(env, &a.device, a.precision, a.runtime)?;
    let cfg = config_of(a, eps);
    cfg.check()?;
    let knobs = AttackKnobs {
        steps: None,
        restarts: 1,
        seed: a.seed,
        square_queries: None,
    };
    let (attacks, cascade) = crate::robust::parse_attacks(&a.attacks, &knobs)?;
    let plan = RobustPlan {
        norm: cfg.norm,
        eps: vec![eps],
        attacks,
        cascade,
    };
    let out_path = a.output.clone().unwrap_or_else(|| {
        let stem = model_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        model_path.with_file_name(format!("{stem}.hardened.onnx"))
    });
    check_writable("-o", &out_path)?;
    a.report.validate(true)?;
    let ckpt_path: Option<PathBuf> = match &a.checkpoint_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("cannot create the checkpoint folder {}", dir.display())
            })?;
            let p = dir.join("harden.ckpt");
            check_writable("--checkpoint-dir", &p)?;
            if a.resume && !p.is_file() {
                bail!("--resume: no checkpoint in {}", dir.display());
            }
            Some(p)
        }
        None => None,
    };
    Ok(Flags {
        model_path,
        eps,
        ort,
        cfg,
        plan,
        out_path,
        ckpt_path,
    })
}

pub(super) fn run(a: HardenArgs, env: &Env) -> Result<i32> {
    let started = Instant::now();
    let started_unix = super::unix_now();
    let Flags {
        model_path,
        eps,
        ort,
        cfg,
        plan,
        out_path,
        ckpt_path,
    } = check_flags(&a, env)?;

    // The model and its input space.
    let mut model = OnnxModel::load(&model_path)?;
    model.require_supported()?;
    a.rounding.apply(&mut model);
    // QDQ models train float copies of their integer weights (`train::qdq`).
    let fake_quant = train::qdq::FakeQuant::of(&model)?;
    if fake_quant.is_some() && a.rounding.rounding() == crate::autodiff::Rounding::Zero {
        bail!("hardening a QDQ model trains its weights through QuantizeLinear, which passes no gradient with --through-rounding zero; use --through-rounding ste");
    }
    if a.recalibrate && fake_quant.is_none() {
        bail!("--recalibrate: the model has no quantized weights (not a QDQ model)");
    }
    let train_model = fake_quant.as_ref().map(|f| &f.model).unwrap_or(&model);
    let params = trainable_params(&train_model.proto);
    if params.is_empty() {
        bail!("the model has no trainable weights (no float initializers feeding Conv, Gemm, MatMul, Add, BatchNormalization or PRelu); nothing to harden");
    }
    let info = model.classifier_input()?;
    let spec_args = a.input.to_spec_args()?;
    let mut spec = InputSpec::resolve(&info, &spec_args)?;
    let model_example_len: Option<usize> = spec.model_shape[1..]
        .iter()
        .map(|d| d.fixed())
        .product::<Option<usize>>();

    let TrainingData {
        mapping,
        threat,
        data_desc,
        train_set,
        val_set,
        ys,
        audit_data,
    } = training_data(
        &a,
        env,
        &mut spec,
        spec_args.range.is_some(),
        model_example_len,
        &cfg,
        eps,
    )?;
    let len = mapping.example_len();

    let opts = RunOptions {
        runtime: a.runtime,
        threads: a.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }),
        batch_size: a.batch_size,
        ort: ort.clone(),
    };

    // Before.
    let before = run_one_audit(
        "auditing the original model",
        &model,
        &spec,
        &audit_data,
        a.audit_limit,
        &plan,
        &opts,
        !a.no_sanity_checks,
        env,
    )?;
    let k = before.classes;
    if let Some(bad) = ys.iter().find(|y| **y >= k) {
        bail!("the training data has label {bad}, out of range for a model with {k} outputs");
    }

    // Train.
    let mut proto = spec.wrap(train_model)?;
    if let Some(b) = spec.fixed_batch() {
        if b != a.batch_size {
            proto = crate::model::free_batch(&proto, &spec.input_name).ok_or_else(|| {
                anyhow!("the model has a fixed batch of {b} that harden cannot make dynamic; pass --batch-size {b}")
            })?;
        }
    }
    let mut net = TrainNet::new(
        proto.clone(),
        &spec.input_name,
        &mapping.example_shape,
        k,
        params.clone(),
        &opts,
        a.batch_size.min(train_set.len()).max(1),
    )?;
    let runtime_name = net.runtime_name()?.to_string();
    let ck = ckpt_path.as_ref().map(|p| train::Checkpointing {
        path: p,
        fingerprint: fingerprint(&model, &cfg, &data_desc, train_set.len(), val_set.len()),
        every_batches: a.checkpoint_every,
    });
    let resume = match (&ckpt_path, a.resume) {
        (Some(p), true) => Some(train::checkpoint::load(p)?),
        _ => None,
    };
    let per_epoch = train_set.len() / a.batch_size.min(train_set.len()).max(1);
    let bar = progress_bar(Some(per_epoch as u64), "training");
    let t_train = Instant::now();
    let epochs = cfg.epochs;
    let mut on_event = |e: Event<'_>| match e {
        Event::Batch { epoch, done, of } => {
            bar.set_length(of as u64);
            bar.set_message(format!("epoch {epoch}/{epochs}"));
            bar.set_position(done as u64);
        }
        Event::Validating { epoch } => bar.set_message(format!("validating epoch {epoch}")),
        // One line per epoch: above the bar on a terminal, on stderr in logs (not in CI).
        Event::Epoch(row) if bar.is_hidden() => {
            if std::env::var_os("CI").is_none() {
                eprintln!("{}", epoch_line(row));
            }
        }
        Event::Epoch(row) => bar.println(epoch_line(row)),
    };
    let mut clock = || t_train.elapsed().as_secs_f64();
    let fit = train::fit(
        &mut net,
        &train_set,
        &val_set,
        &threat,
        &cfg,
        ck.as_ref(),
        resume,
        &mut on_event,
        &mut clock,
    )?;
    bar.finish_and_clear();
    let train_seconds = t_train.elapsed().as_secs_f64();

    // Export, audit, write.
    let mut updates: Vec<(String, Vec<f32>)> = params.iter().cloned().zip(fit.params).collect();
    let mut bn_updated = vec![];
    if a.update_bn {
        let mut trained = proto;
        crate::model::set_initializers(&mut trained, &updates)?;
        let m = train_set.len().min(10_000);
        let bn = train::bn::recompute(
            &trained,
            &spec.input_name,
            &mapping.example_shape,
            &train_set.x[..m * len],
            a.batch_size,
            &opts,
        )?;
        bn_updated = bn.iter().map(|(n, _)| n.clone()).collect();
        updates.extend(bn);
    }
    let mut metadata = vec![
        (
            "harden.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("harden.method".to_string(), cfg.method.name().to_string()),
        (
            "harden.norm".to_string(),
            match cfg.norm {
                Norm::Linf => "linf",
                Norm::L2 => "l2",
            }
            .to_string(),
        ),
        ("harden.eps".to_string(), eps.to_string()),
        (
            "harden.train_eps".to_string(),
            cfg.train_eps.unwrap_or(eps).to_string(),
        ),
        ("harden.epochs".to_string(), fit.epochs_run.to_string()),
        ("harden.best_epoch".to_string(), fit.best_epoch.to_string()),
        ("harden.update_bn".to_string(), a.update_bn.to_string()),
    ];
    let mut hardened = match &fake_quant {
        Some(f) => f.export(&model, &updates, &metadata)?,
        None => model.with_updates(&updates, &metadata)?,
    };
    hardened.path = out_path.clone();
    if a.recalibrate {
        let mut wrapped = spec.wrap(&hardened)?;
        if spec.fixed_batch().is_some_and(|b| b != a.batch_size) {
            if let Some(free) = crate::model::free_batch(&wrapped, &spec.input_name) {
                wrapped = free;
            }
        }
        let m = train_set.len().min(10_000);
        let (recal, _) = train::qdq::recalibrate(
            &hardened,
            &wrapped,
            &spec.input_name,
            &mapping.example_shape,
            &train_set.x[..m * len],
            a.batch_size,
            &opts,
        )?;
        metadata.push(("harden.recalibrated".to_string(), "min/max".to_string()));
        hardened = recal.with_updates(&[], &metadata)?;
        hardened.path = out_path.clone();
    }
    let after = run_one_audit(
        "auditing the hardened model",
        &hardened,
        &spec,
        &audit_data,
        a.audit_limit,
        &plan,
        &opts,
        !a.no_sanity_checks,
        env,
    )?;
    if let Some(r) = worst_case(&after) {
        metadata.push((
            "harden.robust_accuracy".to_string(),
            format!(
                "{r:.4} ({} at eps {eps}, {} examples)",
                a.attacks, after.data.examples
            ),
        ));
    }
    let hardened = hardened.with_updates(&[], &metadata)?;

    let trained_values: usize = updates
        .iter()
        .filter(|(n, _)| params.contains(n))
        .map(|(_, v)| v.len())
        .sum();
    let facts = RunFacts {
        input_model: model_path.display().to_string(),
        output_model: out_path.display().to_string(),
        // Set once the model is written (after its card).
        output_sha256: String::new(),
        config: cfg.clone(),
        data: data_desc,
        train_examples: train_set.len(),
        val_examples: val_set.len(),
        trained_tensors: params,
        trained_values,
        bn_statistics_updated: bn_updated,
        runtime: runtime_name,
        best_epoch: fit.best_epoch,
        best_val_clean_accuracy: Some(fit.best_val_clean).filter(|v| *v >= 0.0),
        best_val_robust_accuracy: Some(fit.best_val_robust).filter(|v| *v >= 0.0),
    };
    let training = Training {
        method: cfg.method.name().to_string(),
        eps,
        epochs: fit.epochs_run,
        rows: fit.history,
        details: serde_json::to_value(&facts)?,
    };
    let text = headline(&facts, &training, &before, train_seconds);
    let mut report = Report::hardening(before, after, training);
    super::stamp_device(&mut report, &ort);
    report.meta.command = env.command.clone();
    report.stamp(
        env!("CARGO_PKG_VERSION"),
        started_unix,
        &super::host_name(),
        started.elapsed().as_secs_f64(),
    );
    // The model is written once its card (--card-in-model) is known; the report then
    // records the written file's sha256.
    let hardened = if a.card_in_model {
        report.add_card();
        let card = crate::report::card::render(&report);
        hardened.with_updates(&[], &[(CARD_KEY.to_string(), card)])?
    } else {
        hardened
    };
    let bytes = hardened.to_bytes();
    write_atomic(&out_path, &bytes)?;
    let out_sha: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if let Some(t) = report.training.as_mut() {
        t.details["output_sha256"] = serde_json::Value::String(out_sha);
    }
    let code = a.report.finish(&mut report)?;
    let mut text = text + &crate::report::summary(&report);
    if let Some(d) = &a.report.report {
        text += &format!("report   {}\n", d.join("report.html").display());
    }
    print_stdout(&text)?;
    Ok(code)
}

/// The `metadata_props` key of the robustness card (`--card-in-model`).
pub const CARD_KEY: &str = "harden.robustness_card";

fn pct(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() && v >= 0.0 => format!("{:6.2}%", 100.0 * v),
        _ => "   -   ".into(),
    }
}

fn epoch_line(r: &EpochRow) -> String {
    if r.epoch == 0 {
        format!(
            "epoch 0 (original): validation clean {} PGD {} ({:.0} s)",
            pct(r.val_clean),
            pct(r.val_robust),
            r.seconds
        )
    } else {
        format!(
            "epoch {}: lr {:.2e} train loss {:.4} acc {} | validation clean {} PGD {} ({:.0} s)",
            r.epoch,
            r.lr,
            r.train_loss.unwrap_or(f64::NAN),
            pct(r.train_accuracy),
            pct(r.val_clean),
            pct(r.val_robust),
            r.seconds
        )
    }
}

/// The training's facts beyond the curve, kept in the report's `training.details`.
#[derive(serde::Serialize)]
struct RunFacts {
    input_model: String,
    output_model: String,
    output_sha256: String,
    config: HardenConfig,
    data: String,
    train_examples: usize,
    val_examples: usize,
    trained_tensors: Vec<String>,
    trained_values: usize,
    /// BatchNormalization mean/variance initializers recomputed (`--update-bn`).
    bn_statistics_updated: Vec<String>,
    runtime: String,
    best_epoch: usize,
    /// Validation accuracy of the kept epoch (none without validation examples).
    best_val_clean_accuracy: Option<f64>,
    best_val_robust_accuracy: Option<f64>,
}

/// The lines before the report's summary: what was hardened, and the training curve.
fn headline(f: &RunFacts, t: &Training, before: &AuditReport, train_seconds: f64) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "hardened {} -> {} ({} {}, eps {}, {} epochs run, best epoch {}, {train_seconds:.0} s on {})",
        f.input_model,
        f.output_model,
        t.method,
        match f.config.norm {
            Norm::Linf => "Linf",
            Norm::L2 => "L2",
        },
        t.eps,
        t.epochs,
        f.best_epoch,
        f.runtime,
    );
    let _ = writeln!(
        s,
        "training: {} examples ({} held out for validation) from {}",
        f.train_examples, f.val_examples, f.data
    );
    for row in &t.rows {
        let _ = writeln!(s, "  {}", epoch_line(row));
    }
    let attacks = before.robust.as_ref().map(|x| {
        x.attacks
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(", ")
    });
    let _ = writeln!(
        s,
        "audit on {} examples of {} ({}):",
        before.data.examples,
        before.data.spec,
        attacks.unwrap_or_default()
    );
    s
}
