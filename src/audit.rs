//! `harden audit`: clean accuracy, per-class precision/recall/F1 and the confusion
//! matrix, streamed over the data in batches; with a plan, robust accuracy under attacks
//! (`robust.rs`); and the sanity checks of `report::sanity`, which probe the model on the
//! first examples.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::attack::square::Geometry;
use crate::data::DataSource;
use crate::metrics::{argmax, CleanMetrics, Confusion};
use crate::model::{OnnxModel, OutputKind, TensorInfo};
use crate::oracle::ModelOracle;
use crate::robust::{ExampleOutcome, RobustTally};
pub use crate::robust::{RobustPlan, RobustReport};
use crate::spec::{DataMapping, InputSpec, Layout};

/// The version of the report's JSON (`report::Report`), which holds `AuditReport`s.
/// 3: `per_example` (one line per example) and `model_card`.
pub const SCHEMA_VERSION: u32 = 3;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelFacts {
    pub path: String,
    pub sha256: String,
    pub opset: i64,
    pub ir_version: i64,
    pub producer: String,
    pub input: TensorInfo,
    pub outputs: Vec<TensorInfo>,
    /// Judged from the graph: does the first output come from a Softmax?
    pub output_kind: OutputKind,
    pub parameters: u64,
    /// Rounding ops on the input's path and how gradients pass them (absent without).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rounding: Option<crate::model::quant::RoundingFacts>,
}

impl ModelFacts {
    pub fn of(model: &OnnxModel, input: TensorInfo) -> ModelFacts {
        let rounding = crate::model::quant::RoundingFacts::of(&model.proto, &input.name);
        ModelFacts {
            path: model.path.display().to_string(),
            sha256: model.sha256.clone(),
            opset: model.opset(),
            ir_version: model.proto.ir_version,
            producer: model.producer(),
            input,
            outputs: model.outputs(),
            output_kind: model.output_kind(),
            parameters: model.parameter_count(),
            rounding,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DataFacts {
    pub spec: String,
    pub source: String,
    pub examples: u64,
    pub stored_example_shape: Vec<usize>,
}

/// Volatile facts, kept apart so that the rest of a report reproduces exactly.
#[derive(Clone, Debug, Serialize, Default)]
pub struct Meta {
    pub harden_version: String,
    pub seconds: f64,
    pub examples_per_second: f64,
}

impl Meta {
    /// This build of harden, `seconds` spent on `examples` examples.
    pub fn timed(examples: u64, seconds: f64) -> Meta {
        Meta {
            harden_version: env!("CARGO_PKG_VERSION").to_string(),
            seconds,
            examples_per_second: examples as f64 / seconds.max(1e-9),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditReport {
    /// The report's (`report::Report` carries it at the top).
    #[serde(skip)]
    pub schema_version: u32,
    pub model: ModelFacts,
    pub input_spec: InputSpec,
    pub runtime: String,
    /// Examples per runtime call, and whether a fixed batch of 1 was made dynamic
    /// (checked to give the same outputs).
    pub batch: usize,
    pub batch_freed: bool,
    pub data: DataFacts,
    pub classes: usize,
    /// Class names by label (from the data or `--class-names`); empty when unknown.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
    /// Examples whose outputs all lie in [0,1] and sum to 1 (a sign of a softmax output).
    pub rows_like_probabilities: u64,
    pub clean: CleanMetrics,
    /// Attacks, when asked for (`--eps`).
    pub robust: Option<RobustReport>,
    /// Sanity checks (empty when turned off).
    pub sanity: Vec<crate::sanity::Check>,
    /// The shape of one example as the model sees it (for the image grid).
    pub example_shape: Vec<usize>,
    /// Every example's outcome, in data order (`report::Report::to_json` writes one line
    /// per example).
    pub per_example: Vec<ExampleOutcome>,
    #[serde(skip)]
    pub predictions: Vec<usize>,
    /// What the sanity probes measured (`None` with the checks off, or in a shard other
    /// than 0); a part file carries it for `report merge`.
    #[serde(skip)]
    pub probe: Option<crate::sanity::ProbeFacts>,
    /// Volatile facts; a `report::Report` gathers them under its one `meta` key.
    #[serde(skip)]
    pub meta: Meta,
}

/// How much of the report to compute besides the metrics.
#[derive(Clone, Debug)]
pub struct AuditOptions {
    /// Run the sanity checks (`report::sanity`).
    pub sanity: bool,
    /// Adversarial examples kept per eps for the image grid.
    pub keep_examples: usize,
    /// Examples (data positions) whose adversarial examples are kept too, for the images
    /// of a comparison with a baseline (`EpsResult::watched`).
    pub watch: Vec<u64>,
    /// Audit only this shard's examples (`--shard`): the data is still read in full (the
    /// positions are counted), the model runs on the shard's examples only, except that
    /// shard 0 also takes the sanity probes from the first examples of the data. The
    /// report's numbers are then the shard's (`report::merge` adds the parts up).
    pub shard: Option<crate::shard::Shard>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            sanity: true,
            keep_examples: 8,
            watch: vec![],
            shard: None,
        }
    }
}

/// How the attacks see an example's values (for Square's windows).
pub fn geometry(layout: Layout, example_shape: &[usize]) -> Geometry {
    match (layout, example_shape) {
        (Layout::Nchw, &[c, h, w]) => Geometry::Chw { c, h, w },
        (Layout::Nhwc, &[h, w, c]) => Geometry::Hwc { c, h, w },
        _ => Geometry::Flat {
            len: example_shape.iter().product(),
        },
    }
}

/// Scores every example of `data` (as mapped by `mapping`) and returns the report, with
/// the default options (sanity checks on). `progress` is called with the number of
/// examples done so far.
#[allow(clippy::too_many_arguments)]
pub fn run_audit(
    model: &OnnxModel,
    spec: &InputSpec,
    oracle: &mut ModelOracle,
    data: &mut dyn DataSource,
    data_spec: &str,
    mapping: &DataMapping,
    plan: Option<&RobustPlan>,
    progress: &mut dyn FnMut(u64),
) -> Result<AuditReport> {
    run_audit_with(
        model,
        spec,
        oracle,
        data,
        data_spec,
        mapping,
        plan,
        &AuditOptions::default(),
        progress,
    )
}

/// [`run_audit`] with options.
#[allow(clippy::too_many_arguments)]
pub fn run_audit_with(
    model: &OnnxModel,
    spec: &InputSpec,
    oracle: &mut ModelOracle,
    data: &mut dyn DataSource,
    data_spec: &str,
    mapping: &DataMapping,
    plan: Option<&RobustPlan>,
    opts: &AuditOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<AuditReport> {
    run_audit_logged(
        model, spec, oracle, data, data_spec, mapping, plan, opts, None, progress,
    )
}

/// [`run_audit_with`] keeping a checkpoint (`--checkpoint`): the batches `log` holds
/// from a run resumed are replayed, not run again; every batch finished is appended to
/// it. The report is the same as an uninterrupted run's.
#[allow(clippy::too_many_arguments)]
pub fn run_audit_logged(
    model: &OnnxModel,
    spec: &InputSpec,
    oracle: &mut ModelOracle,
    data: &mut dyn DataSource,
    data_spec: &str,
    mapping: &DataMapping,
    plan: Option<&RobustPlan>,
    opts: &AuditOptions,
    mut log: Option<&mut crate::audit_log::AuditLog>,
    progress: &mut dyn FnMut(u64),
) -> Result<AuditReport> {
    if log.is_some() && !opts.watch.is_empty() {
        bail!("--checkpoint does not keep the images a --baseline comparison shows; run the comparison without --checkpoint (or `harden report diff` on the finished report)");
    }
    let k = crate::attack::Oracle::num_classes(oracle);
    let class_names = match data.label_names() {
        Some(n) if n.len() != k => {
            let shown: Vec<&str> = n.iter().take(5).map(String::as_str).collect();
            bail!(
                "the data names {} classes ({}{}) but the model has {k} classes; an image folder needs one class folder per model class (or folders named by class index: 0, 1, ...), --class-names one name per class",
                n.len(),
                shown.join(", "),
                if n.len() > 5 { ", ..." } else { "" }
            );
        }
        Some(n) => n,
        None => vec![],
    };
    let shard = opts.shard;
    let mut probe = crate::sanity::Probe::new(opts.sanity && shard.is_none_or(|s| s.index == 0));
    let mut confusion = Confusion::new(k);
    let mut predictions = vec![];
    let mut all_labels: Vec<Option<usize>> = vec![];
    let mut positions: Vec<u64> = vec![];
    let mut like_probs = 0u64;
    let chunk = oracle.classifier().batch().max(64);
    let geo = geometry(spec.layout, &mapping.example_shape);
    let len = mapping.example_len();
    let mut tally = plan.map(|p| {
        let mut t = RobustTally::new(k, &p.eps, p.attacks.clone(), p.cascade);
        t.keep_examples(opts.keep_examples);
        t.watch_examples(opts.watch.clone());
        t
    });
    let (mut raw, mut labels, mut mapped) = (vec![], vec![], vec![]);
    let mut seen = 0usize;
    loop {
        raw.clear();
        labels.clear();
        let n = data.next_batch(chunk, &mut raw, &mut labels)?;
        if n == 0 {
            break;
        }
        mapping.map_batch(&raw, &mut mapped, seen)?;
        // The batch's examples this audit scores (all of them without a shard).
        let mine: Vec<usize> = (0..n)
            .filter(|i| shard.is_none_or(|s| s.holds((seen + i) as u64)))
            .collect();
        let done = match log.as_deref_mut() {
            Some(l) => l.take(seen as u64, n as u64)?,
            None => None,
        };
        if let Some(rec) = done {
            // A batch the resumed run finished: its outcomes as recorded; the model runs
            // only for the probes (the data's first examples).
            if probe.wants_more() {
                let l = oracle.classifier().logits(&mapped[..n * len])?;
                probe.add_batch(&mapped[..n * len], &l, &labels[..n], len, seen as u64)?;
            }
            like_probs += rec.rows_like_probabilities;
            let mut rows = vec![];
            for o in rec.examples {
                if let Some(y) = o.label {
                    if y >= k || o.clean_prediction >= k {
                        bail!("--resume: the checkpoint's example {} has a class outside the model's {k}", o.example);
                    }
                    confusion.add(y, o.clean_prediction);
                    if tally.is_some() {
                        rows.push((o.example, y, o.eps.clone()));
                    }
                }
                predictions.push(o.clean_prediction);
                positions.push(o.example);
                all_labels.push(o.label);
            }
            if let Some(t) = tally.as_mut() {
                let pairs = rec
                    .pairs
                    .iter()
                    .map(|v| v.iter().map(crate::report::merge::PartPair::pair).collect())
                    .collect();
                t.add_done(rows, pairs);
            }
            seen += n;
            progress(seen as u64);
            continue;
        }
        let whole = mine.len() == n || probe.wants_more();
        if mine.is_empty() && !whole {
            if let Some(l) = log.as_deref_mut() {
                l.append(&crate::audit_log::BatchRecord {
                    first: seen as u64,
                    n: n as u64,
                    examples: vec![],
                    pairs: vec![],
                    rows_like_probabilities: 0,
                })?;
            }
            seen += n;
            progress(seen as u64);
            continue;
        }
        // Logits of the whole batch (the probes take the data's first examples), or of
        // the shard's examples only.
        let (logits, x_mine) = if whole {
            let l = oracle.classifier().logits(&mapped[..n * len])?;
            crate::classifier::check_finite(&l, seen)?;
            (l, None)
        } else {
            let x = crate::attack::gather(&mapped, &mine, len);
            let l = oracle.classifier().logits(&x)?;
            for (r, row) in l.rows().into_iter().enumerate() {
                if row.iter().any(|v| !v.is_finite()) {
                    crate::classifier::check_finite(
                        &l.slice(ndarray::s![r..r + 1, ..]).to_owned(),
                        seen + mine[r],
                    )?;
                }
            }
            (l, Some(x))
        };
        let row_of = |j: usize| if x_mine.is_some() { j } else { mine[j] };
        let mut batch_preds = vec![0usize; n];
        let like_before = like_probs;
        for (j, &i) in mine.iter().enumerate() {
            let row: Vec<f32> = logits.row(row_of(j)).iter().copied().collect();
            let p = argmax(&row);
            predictions.push(p);
            positions.push((seen + i) as u64);
            all_labels.push(labels[i]);
            batch_preds[i] = p;
            let sum: f32 = row.iter().sum();
            if row.iter().all(|v| (0.0..=1.0).contains(v)) && (sum - 1.0).abs() < 1e-3 {
                like_probs += 1;
            }
            if let Some(y) = labels[i] {
                if y >= k {
                    bail!(
                        "data example {} has label {y}, out of range for a model with {k} outputs",
                        seen + i
                    );
                }
                confusion.add(y, p);
            }
        }
        if x_mine.is_none() && probe.wants_more() {
            probe.add_batch(&mapped[..n * len], &logits, &labels[..n], len, seen as u64)?;
        }
        let mut attacked = false;
        if let (Some(t), Some(p)) = (tally.as_mut(), plan) {
            let idx: Vec<usize> = mine
                .iter()
                .copied()
                .filter(|i| labels[*i].is_some())
                .collect();
            if !idx.is_empty() {
                let x = crate::attack::gather(&mapped, &idx, len);
                let y: Vec<usize> = idx.iter().filter_map(|i| labels[*i]).collect();
                let pr: Vec<usize> = idx.iter().map(|i| batch_preds[*i]).collect();
                let ids: Vec<u64> = idx.iter().map(|i| (seen + i) as u64).collect();
                t.add_batch(oracle, &x, &ids, &y, &pr, p.norm, spec.range, geo)?;
                attacked = true;
            }
        }
        if let Some(l) = log.as_deref_mut() {
            let mut eps: std::collections::HashMap<u64, &Vec<crate::robust::EpsOutcome>> =
                Default::default();
            if let Some(t) = tally.as_ref() {
                eps.extend(t.outcomes_from(seen as u64));
            }
            let examples = mine
                .iter()
                .map(|&i| {
                    let id = (seen + i) as u64;
                    ExampleOutcome {
                        example: id,
                        label: labels[i],
                        clean_prediction: batch_preds[i],
                        eps: eps.get(&id).map(|v| (*v).clone()).unwrap_or_default(),
                    }
                })
                .collect();
            let pairs = match (tally.as_ref(), attacked) {
                (Some(t), true) => t
                    .last_pairs()
                    .iter()
                    .map(|v| v.iter().map(crate::report::merge::PartPair::of).collect())
                    .collect(),
                _ => vec![],
            };
            l.append(&crate::audit_log::BatchRecord {
                first: seen as u64,
                n: n as u64,
                examples,
                pairs,
                rows_like_probabilities: like_probs - like_before,
            })?;
        }
        seen += n;
        progress(seen as u64);
    }
    if seen == 0 {
        bail!("the data holds no examples");
    }
    let clean = confusion.metrics();
    let results = tally.as_ref().map(|t| t.results(clean.correct));
    let mut attacked = tally
        .as_mut()
        .map(|t| t.take_outcomes())
        .unwrap_or_default()
        .into_iter()
        .peekable();
    let per_example: Vec<ExampleOutcome> = predictions
        .iter()
        .zip(&all_labels)
        .zip(&positions)
        .map(|((&p, &label), &i)| {
            let eps = match attacked.peek() {
                Some((id, _)) if *id == i => attacked.next().map(|x| x.1).unwrap_or_default(),
                _ => vec![],
            };
            ExampleOutcome {
                example: i,
                label,
                clean_prediction: p,
                eps,
            }
        })
        .collect();
    let robust = match (results, plan) {
        (Some(results), Some(p)) => {
            if clean.labelled == 0 && shard.is_none() {
                bail!("attacks need labelled data, and the data has no labels");
            }
            Some(RobustReport {
                norm: p.norm,
                range: spec.range,
                cascade: p.cascade,
                attacks: p.attacks.clone(),
                examples: clean.labelled,
                results,
            })
        }
        _ => None,
    };
    let facts = crate::sanity::Facts {
        output_kind: model.output_kind(),
        rows_like_probabilities: like_probs,
        examples: predictions.len() as u64,
        classes: k,
        range: spec.range,
        geometry: geo,
        example_len: len,
        labelled: clean.labelled,
        correct: clean.correct,
        rounding: crate::model::quant::RoundingFacts::of(&model.proto, &spec.input_name),
    };
    let probe_facts = if opts.sanity && shard.is_none_or(|s| s.index == 0) {
        Some(probe.measure(oracle, &facts, plan)?)
    } else {
        None
    };
    // A shard's checks are built by `report merge`, from the merged numbers.
    let sanity = match (&probe_facts, shard) {
        (Some(m), None) => crate::sanity::checks(m, &facts, plan, robust.as_ref()),
        _ => vec![],
    };
    Ok(AuditReport {
        schema_version: SCHEMA_VERSION,
        model: ModelFacts::of(model, model.classifier_input()?),
        input_spec: spec.clone(),
        runtime: oracle.classifier().runtime_name().to_string(),
        batch: oracle.classifier().batch(),
        batch_freed: oracle.classifier().batch_freed(),
        data: DataFacts {
            spec: data_spec.to_string(),
            source: data.describe(),
            examples: seen as u64,
            stored_example_shape: data.example_shape().to_vec(),
        },
        classes: k,
        class_names,
        rows_like_probabilities: like_probs,
        clean,
        robust,
        sanity,
        example_shape: mapping.example_shape.clone(),
        per_example,
        predictions,
        probe: probe_facts,
        meta: Meta::default(),
    })
}

/// The report as a terminal table.
pub fn render_text(r: &AuditReport) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let pct = |v: Option<f64>| {
        v.map(|v| format!("{:6.2}%", 100.0 * v))
            .unwrap_or_else(|| "    n/a".into())
    };
    let _ = writeln!(
        s,
        "model    {} (sha256 {}…)",
        r.model.path,
        &r.model.sha256[..12.min(r.model.sha256.len())]
    );
    let _ = writeln!(
        s,
        "input    {} {} layout={:?} range=[{}, {}]{}{}",
        r.input_spec.input_name,
        crate::model::shape_string(&r.input_spec.model_shape),
        r.input_spec.layout,
        r.input_spec.range.0,
        r.input_spec.range.1,
        if r.input_spec.mean.is_empty() {
            String::new()
        } else {
            format!(" mean={:?} std={:?}", r.input_spec.mean, r.input_spec.std)
        },
        if r.input_spec.guessed.is_empty() {
            String::new()
        } else {
            format!(" (guessed: {})", r.input_spec.guessed.join(", "))
        }
    );
    let _ = writeln!(
        s,
        "runtime  {} (batch {}{})",
        r.runtime,
        r.batch,
        if r.batch_freed {
            ", the model's fixed batch made dynamic after an equality check"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "data     {} ({} examples)",
        r.data.source, r.data.examples
    );
    if r.model.output_kind == OutputKind::Probabilities
        || r.rows_like_probabilities == r.data.examples
    {
        let _ = writeln!(
            s,
            "warning  the model outputs probabilities (softmax), not logits; attacks will use log-probabilities"
        );
    }
    let _ = writeln!(
        s,
        "clean accuracy {} ({}/{} labelled)",
        pct(r.clean.accuracy),
        r.clean.correct,
        r.clean.labelled
    );
    if r.clean.labelled > 0 {
        let names = &r.class_names;
        let name = |c: usize| names.get(c).map(|n| format!("  {n}")).unwrap_or_default();
        let many = r.classes > crate::metrics::MANY_CLASSES;
        let rows: Vec<&crate::metrics::ClassMetrics> = if many {
            r.clean.worst_classes(SUMMARY_ROWS)
        } else {
            r.clean.per_class.iter().collect()
        };
        if many {
            let _ = writeln!(
                s,
                "\n{} classes, {} with examples; the {} with the lowest recall:",
                r.classes,
                r.clean.per_class.iter().filter(|c| c.support > 0).count(),
                rows.len()
            );
        }
        let _ = writeln!(s, "\nclass  support  precision   recall       F1");
        for c in rows {
            let _ = writeln!(
                s,
                "{:>5} {:>8}    {}  {}  {}{}",
                c.class,
                c.support,
                pct(c.precision),
                pct(c.recall),
                pct(c.f1),
                name(c.class)
            );
        }
        if many {
            let top = r.clean.top_confusions(SUMMARY_ROWS);
            if top.is_empty() {
                let _ = writeln!(
                    s,
                    "\nno confusions: every labelled example was classified correctly"
                );
            } else {
                let _ = writeln!(
                    s,
                    "\nmost frequent confusions (true -> predicted: examples)"
                );
                for (t, p, n) in top {
                    let named = if names.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "   {} -> {}",
                            crate::data::classes::label(t, names),
                            crate::data::classes::label(p, names)
                        )
                    };
                    let _ = writeln!(s, "{t:>5} -> {p:<5} {n:>6}{named}");
                }
            }
        } else {
            let _ = writeln!(s, "\nconfusion (rows: true class, columns: predicted)");
            let _ = write!(s, "     ");
            for p in 0..r.classes {
                let _ = write!(s, "{p:>6}");
            }
            let _ = writeln!(s);
            for (t, row) in r.clean.confusion.iter().enumerate() {
                let _ = write!(s, "{t:>5}");
                for v in row {
                    let _ = write!(s, "{v:>6}");
                }
                let _ = writeln!(s);
            }
        }
    }
    if let Some(rb) = &r.robust {
        let _ = writeln!(
            s,
            "\nrobust accuracy ({:?}, range [{}, {}], {} labelled examples{})",
            rb.norm,
            rb.range.0,
            rb.range.1,
            rb.examples,
            if rb.cascade {
                ", attacks in cascade"
            } else {
                ""
            }
        );
        let _ = write!(s, "{:>8}", "eps");
        for a in &rb.attacks {
            let _ = write!(s, "{:>10}", a.name());
        }
        let _ = writeln!(s, "{:>12}", "worst case");
        for e in &rb.results {
            let _ = write!(s, "{:>8}", e.eps);
            for a in &e.attacks {
                let _ = write!(s, "{:>9.2}%", 100.0 * a.robust_accuracy);
            }
            let _ = writeln!(s, "{:>11.2}%", 100.0 * e.robust_accuracy);
        }
        let refused: u64 = rb
            .results
            .iter()
            .flat_map(|e| e.attacks.iter())
            .map(|a| a.refused)
            .sum();
        if refused > 0 {
            let _ = writeln!(
                s,
                "note     {refused} adversarial example(s) reported by attacks failed the plain forward re-check and were not counted"
            );
        }
    }
    s
}

/// Rows of the per-class summaries (worst classes, top confusions) when there are more
/// than [`crate::metrics::MANY_CLASSES`] classes.
pub const SUMMARY_ROWS: usize = 10;

/// When attacks were asked for but no example was attacked (none classified correctly):
/// a sentence saying so; the robust accuracy is then vacuous.
pub fn nothing_attacked(r: &AuditReport) -> Option<String> {
    let rb = r.robust.as_ref()?;
    (rb.examples > 0 && r.clean.correct == 0).then(|| {
        format!(
            "NO EXAMPLE WAS ATTACKED: none of the {} labelled examples is classified correctly, so the robust accuracy (0%) is vacuous and says nothing about robustness; check the labels and class order, the input range and normalisation (--input-range, --mean/--std, --preset) and the image size (--resize, --crop)",
            rb.examples
        )
    })
}
