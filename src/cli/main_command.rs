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
use crate::model::{pb, OnnxModel};
use crate::oracle::ModelOracle;
use crate::report::{Report, Training};
use crate::rng::Rng;
use crate::robust::AttackKnobs;
use crate::spec::{DataMapping, InputSpec};
use crate::train::{self, optim, EpochRow, Event, Examples, HardenConfig, Method, TrainNet};

/// The main command in eight stages: flags, model, data, audit before, training,
/// export, audit after, outputs. Every check that can fail on bad input runs
/// before the stage that spends time on it.
pub(super) fn run(a: HardenArgs, env: &Env) -> Result<i32> {
    let started = (Instant::now(), super::unix_now());
    let flags = check_flags(&a, env)?;
    let mut loaded = load_model(&a, &flags)?;
    let data = training_data(&a, env, &flags, &mut loaded)?;
    let opts = &flags.opts;
    let audits = Audits {
        spec: &loaded.spec,
        data: &data.audit_data,
        limit: a.audit_limit,
        plan: &flags.plan,
        opts,
        sanity: !a.no_sanity_checks,
        env,
        batch: std::cell::Cell::new(opts.batch_size),
    };

    let before = audits.run("auditing the original model", &loaded.model)?;
    let k = before.classes;
    if let Some(bad) = data.ys.iter().find(|y| **y >= k) {
        bail!("the training data has label {bad}, out of range for a model with {k} outputs");
    }
    let Trained {
        proto,
        weights,
        fit,
        runtime_name,
        seconds,
    } = train_stage(&a, &flags, &loaded, &data, k)?;
    let mut exported = export(&a, &flags, &loaded, &data, (proto, weights), &fit)?;
    let after = audits.run("auditing the hardened model", &exported.hardened)?;
    if let Some(r) = worst_case(&after) {
        exported.metadata.push((
            "harden.robust_accuracy".to_string(),
            format!(
                "{r:.4} ({} at eps {}, {} examples)",
                a.attacks, flags.eps, after.data.examples
            ),
        ));
        exported.hardened = exported.hardened.with_updates(&[], &exported.metadata)?;
    }
    write_outputs(
        &a,
        env,
        &flags,
        &loaded,
        &data,
        (fit, runtime_name, seconds),
        exported,
        (before, after),
        started,
    )
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

/// The main command's settings, checked (and its output paths probed) before any work.
struct Flags {
    model_path: PathBuf,
    eps: f32,
    /// The runtime, threads, run size and device the model runs with.
    opts: RunOptions,
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
    let ort = super::resolve_device(env, &a.device, a.runtime)?;
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
    a.report.validate(true)?;
    a.report.check_output("-o", &out_path)?;
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
    let opts = RunOptions {
        runtime: a.runtime,
        threads: super::threads_or_all(a.threads),
        batch_size: a.batch_size,
        ort,
        step_loop: a.step_loop,
    };
    Ok(Flags {
        model_path,
        eps,
        opts,
        cfg,
        plan,
        out_path,
        ckpt_path,
    })
}

/// The model to harden and its input space.
struct LoadedModel {
    model: OnnxModel,
    /// A QDQ model's fake-quantized float copy, trained in its place (`train::qdq`).
    fake_quant: Option<train::qdq::FakeQuant>,
    /// The trainable initializers, by name.
    params: Vec<String>,
    spec: InputSpec,
    /// `--range` was given (else the data's value bounds set it).
    range_given: bool,
    /// Values per example, when the model fixes them.
    model_example_len: Option<usize>,
}

impl LoadedModel {
    /// The model training runs on: the fake-quantized copy of a QDQ model, else itself.
    fn train_model(&self) -> &OnnxModel {
        self.fake_quant
            .as_ref()
            .map(|f| &f.model)
            .unwrap_or(&self.model)
    }
}

/// Stage 2: the model read and checked (supported ops, rounding rule, something to
/// train, QDQ flags), and its input space resolved from the model and the input flags.
fn load_model(a: &HardenArgs, f: &Flags) -> Result<LoadedModel> {
    let mut model = OnnxModel::load(&f.model_path)?;
    model.require_supported()?;
    a.rounding.apply(&mut model);
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
    let spec = InputSpec::resolve(&info, &spec_args)?;
    let model_example_len: Option<usize> = spec.model_shape[1..]
        .iter()
        .map(|d| d.fixed())
        .product::<Option<usize>>();
    Ok(LoadedModel {
        model,
        fake_quant,
        params,
        spec,
        range_given: spec_args.range.is_some(),
        model_example_len,
    })
}

/// Every example of `src`, as stored, with labels.
fn read_all(src: &mut dyn DataSource) -> Result<(Vec<f32>, Vec<Option<usize>>)> {
    let (mut xs, mut ys) = (vec![], vec![]);
    while src.next_batch(4096, &mut xs, &mut ys)? > 0 {}
    Ok((xs, ys))
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

/// Stage 3: the training data read into memory (stored values), checked (labels, at
/// least two classes), split into train and validation by the seed, and the audits'
/// data chosen (`--audit-data`, the set's test split, or the held-out validation split).
/// The model's input space takes its range from the data when `--range` is not given.
fn training_data(
    a: &HardenArgs,
    env: &Env,
    f: &Flags,
    m: &mut LoadedModel,
) -> Result<TrainingData> {
    let (cfg, eps, model_example_len) = (&f.cfg, f.eps, m.model_example_len);
    let spec = &mut m.spec;
    // Training data, held in memory (stored values), split into train and validation.
    let (data_spec, mut source) = match a.data.as_deref() {
        Some(s) => (s.to_string(), open_spec(s, env)?),
        None => default_data("train", model_example_len, env)?,
    };
    if let Some(n) = a.limit {
        source = data::limit(source, n);
    }
    if !m.range_given {
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

/// What both audits (before and after) share: the input space, the audits' data and
/// how many examples of it, the attack plan, the runtime, whether sanity checks run.
struct Audits<'a> {
    spec: &'a InputSpec,
    data: &'a AuditData,
    limit: usize,
    plan: &'a RobustPlan,
    opts: &'a RunOptions,
    sanity: bool,
    env: &'a Env,
    /// The batch size the audits run at: `--batch-size`, or less where an audit ran
    /// out of memory (the next one starts there).
    batch: std::cell::Cell<usize>,
}

impl Audits<'_> {
    /// Stages 4 and 7: one audit of `model`, `what` on the progress bar (again at half
    /// the batch size where it runs out of memory).
    fn run(&self, what: &str, model: &OnnxModel) -> Result<AuditReport> {
        super::halving_batch(self.batch.get(), what, |b| {
            let opts = RunOptions {
                batch_size: b,
                ..self.opts.clone()
            };
            let r = self.run_with(what, model, &opts)?;
            self.batch.set(b);
            Ok(r)
        })
    }

    fn run_with(&self, what: &str, model: &OnnxModel, opts: &RunOptions) -> Result<AuditReport> {
        let t0 = Instant::now();
        let (name, mut src) = self.data.open(self.env, self.limit)?;
        let mapping = DataMapping::new(self.spec, src.example_shape(), src.kind())?;
        let classifier = Classifier::open(model, self.spec, &mapping.example_shape, opts)?;
        let mut oracle = ModelOracle::new(model, self.spec, classifier, opts)?;
        if self.plan.attacks.iter().any(|x| x.needs_gradients()) {
            oracle.prepare(LossKind::CrossEntropy)?;
        }
        let bar = progress_bar(src.len().map(|n| n as u64), "auditing");
        bar.set_message(what.to_string());
        let mut r = audit::run_audit_with(
            model,
            self.spec,
            &mut oracle,
            src.as_mut(),
            &name,
            &mapping,
            Some(self.plan),
            &audit::AuditOptions {
                sanity: self.sanity,
                ..Default::default()
            },
            &mut |n| bar.set_position(n),
        )?;
        bar.finish_and_clear();
        r.meta = audit::Meta::timed(r.data.examples, t0.elapsed().as_secs_f64());
        Ok(r)
    }
}

fn worst_case(r: &AuditReport) -> Option<f64> {
    r.robust
        .as_ref()
        .and_then(|x| x.results.first())
        .map(|e| e.robust_accuracy)
}

/// What training gives the export (the graph and the kept weights) and the report
/// (the fit's curve and facts).
struct Trained {
    /// The graph trained (the user's preprocessing wrapped in, batch freed if need be).
    proto: pb::ModelProto,
    /// The kept weights (best epoch), in `LoadedModel::params` order.
    weights: Vec<Vec<f32>>,
    /// The fit, its weights moved to `weights`.
    fit: train::FitResult,
    runtime_name: String,
    seconds: f64,
}

/// Stage 5: adversarial fine-tuning (with checkpoints and `--resume`), progress on a
/// terminal, one line per epoch in logs.
fn train_stage(
    a: &HardenArgs,
    f: &Flags,
    m: &LoadedModel,
    d: &TrainingData,
    classes: usize,
) -> Result<Trained> {
    let (cfg, spec, opts) = (&f.cfg, &m.spec, &f.opts);
    let mut proto = spec.wrap(m.train_model())?;
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
        &d.mapping.example_shape,
        classes,
        m.params.clone(),
        opts,
        a.batch_size.min(d.train_set.len()).max(1),
    )?;
    let runtime_name = net.runtime_name()?.to_string();
    let ck = f.ckpt_path.as_ref().map(|p| train::Checkpointing {
        path: p,
        fingerprint: fingerprint(
            &m.model,
            cfg,
            &d.data_desc,
            d.train_set.len(),
            d.val_set.len(),
        ),
        every_batches: a.checkpoint_every,
    });
    let resume = match (&f.ckpt_path, a.resume) {
        (Some(p), true) => Some(train::checkpoint::load(p)?),
        _ => None,
    };
    let per_epoch = d.train_set.len() / a.batch_size.min(d.train_set.len()).max(1);
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
        Event::Note(n) if bar.is_hidden() => eprintln!("{n}"),
        Event::Note(n) => bar.println(n),
    };
    let mut clock = || t_train.elapsed().as_secs_f64();
    let mut fit = train::fit(
        &mut net,
        &d.train_set,
        &d.val_set,
        &d.threat,
        cfg,
        ck.as_ref(),
        resume,
        &mut on_event,
        &mut clock,
    )?;
    bar.finish_and_clear();
    Ok(Trained {
        proto,
        weights: std::mem::take(&mut fit.params),
        fit,
        runtime_name,
        seconds: t_train.elapsed().as_secs_f64(),
    })
}

fn fingerprint(model: &OnnxModel, cfg: &HardenConfig, data: &str, n: usize, val: usize) -> String {
    let mut h = Sha256::new();
    h.update(model.sha256.as_bytes());
    h.update(serde_json::to_vec(cfg).unwrap_or_default());
    h.update(format!("{data}|{n}|{val}").as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// What the export gives: the hardened model (not yet written), the metadata it
/// carries, and what changed.
struct Exported {
    hardened: OnnxModel,
    metadata: Vec<(String, String)>,
    /// Initializers replaced: the trained weights, then any recomputed BN statistics.
    updates: Vec<(String, Vec<f32>)>,
    bn_updated: Vec<String>,
}

/// Stage 6: the trained weights put back into the original graph (same inputs, outputs
/// and opset): BatchNormalization statistics recomputed (`--update-bn`), a QDQ model
/// re-quantized into its integer initializers and, with `--recalibrate`, its activation
/// scales recalibrated; the training facts recorded as metadata.
fn export(
    a: &HardenArgs,
    f: &Flags,
    m: &LoadedModel,
    d: &TrainingData,
    (proto, weights): (pb::ModelProto, Vec<Vec<f32>>),
    fit: &train::FitResult,
) -> Result<Exported> {
    let (cfg, spec, eps, opts) = (&f.cfg, &m.spec, f.eps, &f.opts);
    let len = d.mapping.example_len();
    // Statistics and calibration look at (at most) the first 10,000 training examples.
    let sample = &d.train_set.x[..d.train_set.len().min(10_000) * len];
    let mut updates: Vec<(String, Vec<f32>)> = m.params.iter().cloned().zip(weights).collect();
    let mut bn_updated = vec![];
    if a.update_bn {
        let mut trained = proto;
        crate::model::set_initializers(&mut trained, &updates)?;
        let bn = train::bn::recompute(
            &trained,
            &spec.input_name,
            &d.mapping.example_shape,
            sample,
            a.batch_size,
            opts,
        )?;
        bn_updated = bn.iter().map(|(n, _)| n.clone()).collect();
        updates.extend(bn);
    }
    let mut metadata: Vec<(String, String)> = [
        ("version", env!("CARGO_PKG_VERSION").to_string()),
        ("method", cfg.method.name().to_string()),
        ("norm", cfg.norm.name().to_ascii_lowercase()),
        ("eps", eps.to_string()),
        ("train_eps", cfg.train_eps.unwrap_or(eps).to_string()),
        ("epochs", fit.epochs_run.to_string()),
        ("best_epoch", fit.best_epoch.to_string()),
        ("update_bn", a.update_bn.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("harden.{k}"), v))
    .collect();
    let mut hardened = match &m.fake_quant {
        Some(fq) => fq.export(&m.model, &updates, &metadata)?,
        None => m.model.with_updates(&updates, &metadata)?,
    };
    if a.recalibrate {
        let mut wrapped = spec.wrap(&hardened)?;
        if spec.fixed_batch().is_some_and(|b| b != a.batch_size) {
            if let Some(free) = crate::model::free_batch(&wrapped, &spec.input_name) {
                wrapped = free;
            }
        }
        let (recal, _) = train::qdq::recalibrate(
            &hardened,
            &wrapped,
            &spec.input_name,
            &d.mapping.example_shape,
            sample,
            a.batch_size,
            opts,
        )?;
        metadata.push(("harden.recalibrated".to_string(), "min/max".to_string()));
        hardened = recal.with_updates(&[], &metadata)?;
    }
    hardened.path = f.out_path.clone();
    Ok(Exported {
        hardened,
        metadata,
        updates,
        bn_updated,
    })
}

/// Stage 8: the report assembled (before, after, training), the hardened model written
/// atomically (with its card under `--card-in-model`) and its sha256 recorded, the
/// report written and gated, the summary printed. Returns the exit code.
#[allow(clippy::too_many_arguments)]
fn write_outputs(
    a: &HardenArgs,
    env: &Env,
    f: &Flags,
    m: &LoadedModel,
    d: &TrainingData,
    (fit, runtime_name, train_seconds): (train::FitResult, String, f64),
    e: Exported,
    (before, after): (AuditReport, AuditReport),
    started: (Instant, u64),
) -> Result<i32> {
    let cfg = &f.cfg;
    let trained_values: usize = e
        .updates
        .iter()
        .filter(|(n, _)| m.params.contains(n))
        .map(|(_, v)| v.len())
        .sum();
    let facts = RunFacts {
        input_model: f.model_path.display().to_string(),
        output_model: f.out_path.display().to_string(),
        // Set once the model is written (after its card).
        output_sha256: String::new(),
        config: cfg.clone(),
        data: d.data_desc.clone(),
        train_examples: d.train_set.len(),
        val_examples: d.val_set.len(),
        trained_tensors: m.params.clone(),
        trained_values,
        bn_statistics_updated: e.bn_updated,
        runtime: runtime_name,
        best_epoch: fit.best_epoch,
        best_val_clean_accuracy: Some(fit.best_val_clean).filter(|v| *v >= 0.0),
        best_val_robust_accuracy: Some(fit.best_val_robust).filter(|v| *v >= 0.0),
    };
    let resident = fit.resident;
    let training = Training {
        method: cfg.method.name().to_string(),
        eps: f.eps,
        epochs: fit.epochs_run,
        rows: fit.history,
        details: serde_json::to_value(&facts)?,
    };
    let text = headline(&facts, &training, &before, train_seconds);
    let mut report = Report::hardening(before, after, training);
    super::stamp_device(&mut report, &f.opts.ort, f.opts.step_mode());
    report.meta.train_weights = if resident { "bound" } else { "host" }.to_string();
    report.meta.command = env.command.clone();
    report.stamp(
        env!("CARGO_PKG_VERSION"),
        started.1,
        &super::host_name(),
        started.0.elapsed().as_secs_f64(),
    );
    // The model is written once its card (--card-in-model) is known; the report then
    // records the written file's sha256.
    let hardened = if a.card_in_model {
        report.add_card();
        let card = crate::report::card::render(&report);
        e.hardened
            .with_updates(&[], &[(CARD_KEY.to_string(), card)])?
    } else {
        e.hardened
    };
    let bytes = hardened.to_bytes();
    a.report.prepare_for(&f.out_path)?;
    write_atomic(&f.out_path, &bytes)?;
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
        f.config.norm.name(),
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
