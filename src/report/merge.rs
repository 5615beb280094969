//! Sharded audits: the part file one shard writes (`harden audit --shard K/N --json
//! PART.json`, `kind: "audit-part"`) and `harden report merge`, which checks that parts
//! belong together and rebuilds the report one unsharded run writes.
//!
//! A part is the report's JSON layout (`schema_version`, `kind`, `audit`, `meta`) with the
//! shard's audit (its examples' `per_example` rows and numbers over them) and a `part`
//! key holding what merging needs besides: the shard, the settings every part must share
//! (model sha256, data, flags, seed, runtime), the adversarial pairs the shard keeps for
//! the report's images (with their values) and, from shard 0, what the sanity probes
//! measured on the data's first examples. Every number of the merged report is rebuilt
//! from the per-example rows (`robust::results_of`, the confusion matrix), the same
//! functions an unsharded audit uses, so the merged JSON equals one run's apart from
//! `meta`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::attack::Norm;
use crate::audit::{self, AuditReport, DataFacts, ModelFacts, RobustPlan, RobustReport};
use crate::audit_log::first_difference;
use crate::metrics::Confusion;
use crate::robust::{self, AdvPair, AttackKnobs, EpsOutcome, ExampleOutcome};
use crate::sanity::{self, ProbeFacts};
use crate::shard::Shard;
use crate::spec::InputSpec;

/// The `kind` of a part file.
pub const PART_KIND: &str = "audit-part";

/// The settings every part of one audit shares (compared field by field on merge).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub model_sha256: String,
    /// `--data` as given, and the examples it holds (after `--limit`).
    pub data_spec: String,
    pub data_examples: u64,
    pub runtime: String,
    pub batch: usize,
    /// `--eps` (parsed), `--norm`, `--attacks` (default `standard`) and its knobs;
    /// `eps` empty without attacks.
    pub eps: Vec<f32>,
    pub norm: Norm,
    pub attacks: String,
    pub steps: Option<usize>,
    pub restarts: usize,
    pub square_queries: Option<usize>,
    pub seed: u64,
    /// Sanity checks on (not `--no-sanity-checks`).
    pub sanity: bool,
    /// Adversarial examples kept per eps for the images.
    pub keep_examples: usize,
}

impl Settings {
    /// The attack plan these settings describe (`None` without `--eps`).
    pub fn plan(&self) -> Result<Option<RobustPlan>> {
        if self.eps.is_empty() {
            return Ok(None);
        }
        let (attacks, cascade) = robust::parse_attacks(
            &self.attacks,
            &AttackKnobs {
                steps: self.steps,
                restarts: self.restarts,
                seed: self.seed,
                square_queries: self.square_queries,
            },
        )?;
        Ok(Some(RobustPlan {
            norm: self.norm,
            eps: self.eps.clone(),
            attacks,
            cascade,
        }))
    }
}

/// An adversarial pair kept for the report's images, with its values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartPair {
    pub example: u64,
    pub label: usize,
    pub adversarial_prediction: usize,
    pub attack: String,
    pub distance: f32,
    pub clean: Vec<f32>,
    pub adversarial: Vec<f32>,
}

impl PartPair {
    pub fn of(p: &AdvPair) -> PartPair {
        PartPair {
            example: p.example,
            label: p.label,
            adversarial_prediction: p.adversarial_prediction,
            attack: p.attack.clone(),
            distance: p.distance,
            clean: p.clean.clone(),
            adversarial: p.adversarial.clone(),
        }
    }

    pub fn pair(&self) -> AdvPair {
        AdvPair {
            example: self.example,
            label: self.label,
            adversarial_prediction: self.adversarial_prediction,
            attack: self.attack.clone(),
            distance: self.distance,
            clean: self.clean.clone(),
            adversarial: self.adversarial.clone(),
        }
    }
}

/// What a part carries besides its audit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartFacts {
    pub shard: Shard,
    /// The shard's examples (its `per_example` rows).
    pub examples: u64,
    pub settings: Settings,
    /// Per eps, the first adversarial pairs the shard found (at most `keep_examples`).
    pub pairs: Vec<Vec<PartPair>>,
    /// What the sanity probes measured (shard 0 only, with the checks on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeFacts>,
}

#[derive(Serialize)]
struct PartOut<'a> {
    schema_version: u32,
    kind: &'static str,
    audit: &'a AuditReport,
    part: PartFacts,
    meta: &'a super::Meta,
}

/// The part file of a shard's audit (JSON, newline at the end).
pub fn part_json(
    audit: &AuditReport,
    shard: Shard,
    settings: Settings,
    meta: &super::Meta,
) -> Result<String> {
    let pairs = audit
        .robust
        .as_ref()
        .map(|r| {
            r.results
                .iter()
                .map(|e| e.examples.iter().map(PartPair::of).collect())
                .collect()
        })
        .unwrap_or_default();
    let part = PartOut {
        schema_version: audit::SCHEMA_VERSION,
        kind: PART_KIND,
        audit,
        part: PartFacts {
            shard,
            examples: audit.per_example.len() as u64,
            settings,
            pairs,
            probe: audit.probe.clone(),
        },
        meta,
    };
    Ok(super::json::to_string(&part)? + "\n")
}

/// The facts of the audit every part repeats (compared as JSON, field by field).
const SHARED: [&str; 9] = [
    "model",
    "input_spec",
    "runtime",
    "batch",
    "batch_freed",
    "data",
    "classes",
    "class_names",
    "example_shape",
];

#[derive(Deserialize)]
struct AuditIn {
    model: ModelFacts,
    input_spec: InputSpec,
    runtime: String,
    batch: usize,
    batch_freed: bool,
    data: DataFacts,
    classes: usize,
    #[serde(default)]
    class_names: Vec<String>,
    example_shape: Vec<usize>,
    rows_like_probabilities: u64,
    per_example: Vec<ExampleOutcome>,
}

/// One part file, read and checked on its own.
struct PartIn {
    file: String,
    audit: AuditIn,
    facts: PartFacts,
    shared: Value,
    seconds: f64,
    harden_version: String,
}

fn read_part(path: &Path) -> Result<PartIn> {
    let file = path.display().to_string();
    let text =
        std::fs::read_to_string(path).with_context(|| format!("part {file}: cannot read"))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| {
        anyhow!("part {file}: not a complete JSON file ({e}); a truncated part (a shard killed while writing?) must be run again")
    })?;
    if v.get("kind").and_then(Value::as_str) != Some(PART_KIND) {
        bail!(
            "part {file}: kind is {}, not \"{PART_KIND}\" (write parts with `harden audit --shard K/N --json FILE`)",
            v.get("kind").map(|k| k.to_string()).unwrap_or_else(|| "missing".into())
        );
    }
    let version = v.get("schema_version").and_then(Value::as_u64);
    if version != Some(audit::SCHEMA_VERSION as u64) {
        bail!(
            "part {file}: schema_version {} is not this harden's {}",
            version
                .map(|n| n.to_string())
                .unwrap_or_else(|| "missing".into()),
            audit::SCHEMA_VERSION
        );
    }
    let field = |key: &str| -> Result<&Value> {
        v.get(key)
            .ok_or_else(|| anyhow!("part {file}: has no `{key}`"))
    };
    let audit: AuditIn = serde_json::from_value(field("audit")?.clone())
        .map_err(|e| anyhow!("part {file}: audit: {e}"))?;
    let facts: PartFacts = serde_json::from_value(field("part")?.clone())
        .map_err(|e| anyhow!("part {file}: part: {e}"))?;
    let a = field("audit")?;
    let shared = Value::Object(
        SHARED
            .iter()
            .map(|k| (k.to_string(), a.get(*k).cloned().unwrap_or(Value::Null)))
            .collect(),
    );
    let meta = v.get("meta");
    let s = &facts.shard;
    if s.count == 0 || s.index >= s.count {
        bail!("part {file}: shard {s} is not a shard (K from 0 to N-1)");
    }
    if audit.per_example.len() as u64 != facts.examples {
        bail!(
            "part {file}: holds {} example rows but says {}",
            audit.per_example.len(),
            facts.examples
        );
    }
    let total = facts.settings.data_examples;
    if facts.examples != s.size(total) {
        bail!(
            "part {file}: shard {s} of {total} examples should hold {} examples, it holds {}",
            s.size(total),
            facts.examples
        );
    }
    if let Some(o) = audit.per_example.iter().find(|o| !s.holds(o.example)) {
        bail!(
            "part {file}: example {} does not belong to shard {s}",
            o.example
        );
    }
    Ok(PartIn {
        file,
        audit,
        facts,
        shared,
        seconds: meta
            .and_then(|m| m.get("seconds"))
            .and_then(Value::as_f64)
            .unwrap_or(0.0),
        harden_version: meta
            .and_then(|m| m.get("harden_version"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
    })
}

/// Reads the parts, checks that they are the shards of one audit (same settings and
/// facts, each shard once, none missing) and rebuilds the audit one unsharded run gives.
/// Returns it with the parts' total seconds and harden version.
pub fn merge_files(paths: &[PathBuf]) -> Result<(AuditReport, f64, String)> {
    if paths.is_empty() {
        bail!("report merge: give the part files (PART.json...)");
    }
    let parts: Vec<PartIn> = paths.iter().map(|p| read_part(p)).collect::<Result<_>>()?;
    let first = &parts[0];
    let s0 = serde_json::to_value(&first.facts.settings)?;
    for p in &parts[1..] {
        let s = serde_json::to_value(&p.facts.settings)?;
        if let Some((key, a, b)) = first_difference("", &s0, &s) {
            bail!(
                "part {}: {key} is {b}, but {} has {a}: parts of different audits do not merge",
                p.file,
                first.file
            );
        }
        if let Some((key, a, b)) = first_difference("", &first.shared, &p.shared) {
            bail!(
                "part {}: audit.{key} is {b}, but {} has {a}: parts of different audits do not merge",
                p.file,
                first.file
            );
        }
        if p.facts.shard.count != first.facts.shard.count {
            bail!(
                "part {}: shard {} is one of {}, but {} is shard {} of {}",
                p.file,
                p.facts.shard,
                p.facts.shard.count,
                first.file,
                first.facts.shard,
                first.facts.shard.count
            );
        }
    }
    let n = first.facts.shard.count;
    let mut by_index: BTreeMap<u64, &PartIn> = BTreeMap::new();
    for p in &parts {
        if let Some(q) = by_index.insert(p.facts.shard.index, p) {
            bail!(
                "part {}: shard {} is given twice (also {})",
                p.file,
                p.facts.shard,
                q.file
            );
        }
    }
    let missing: Vec<String> = (0..n)
        .filter(|k| !by_index.contains_key(k))
        .map(|k| format!("{k}/{n}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "report merge: shard{} {} {} missing (have {} of {n} parts)",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", "),
            if missing.len() == 1 { "is" } else { "are" },
            parts.len()
        );
    }
    let settings = &first.facts.settings;
    let total = settings.data_examples;
    let mut rows: Vec<ExampleOutcome> = parts
        .iter()
        .flat_map(|p| p.audit.per_example.iter().cloned())
        .collect();
    rows.sort_by_key(|o| o.example);
    for (i, o) in rows.iter().enumerate() {
        if o.example != i as u64 {
            bail!(
                "report merge: the parts' examples are not 0..{total} (example {} where {i} was expected)",
                o.example
            );
        }
    }
    if rows.len() as u64 != total {
        bail!(
            "report merge: the parts hold {} examples, the data {total}",
            rows.len()
        );
    }
    let a = &first.audit;
    let k = a.classes;
    let plan = settings.plan()?;
    let mut confusion = Confusion::new(k);
    for o in &rows {
        if let Some(y) = o.label {
            if y >= k || o.clean_prediction >= k {
                bail!(
                    "report merge: example {} has label {y} or prediction {} outside the model's {k} classes",
                    o.example,
                    o.clean_prediction
                );
            }
            confusion.add(y, o.clean_prediction);
        }
    }
    let clean = confusion.metrics();
    let like_probs: u64 = parts.iter().map(|p| p.audit.rows_like_probabilities).sum();
    let robust = match &plan {
        None => None,
        Some(plan) => {
            if clean.labelled == 0 {
                bail!("attacks need labelled data, and the data has no labels");
            }
            let labelled: Vec<(usize, &[EpsOutcome])> = rows
                .iter()
                .filter_map(|o| o.label.map(|y| (y, o.eps.as_slice())))
                .collect();
            if let Some((_, e)) = labelled.iter().find(|(_, e)| e.len() != plan.eps.len()) {
                bail!(
                    "report merge: a labelled example has outcomes at {} eps, the audit attacks at {}",
                    e.len(),
                    plan.eps.len()
                );
            }
            let mut results = robust::results_of(
                k,
                &plan.eps,
                &plan.attacks,
                plan.cascade,
                &labelled,
                clean.correct,
            );
            for (e, r) in results.iter_mut().enumerate() {
                let mut kept = vec![];
                for p in &parts {
                    let pairs = p.facts.pairs.get(e).map(Vec::as_slice).unwrap_or(&[]);
                    robust::keep_first(
                        &mut kept,
                        pairs.iter().map(PartPair::pair).collect(),
                        settings.keep_examples,
                    );
                }
                r.examples = kept;
            }
            Some(RobustReport {
                norm: plan.norm,
                range: a.input_spec.range,
                cascade: plan.cascade,
                attacks: plan.attacks.clone(),
                examples: clean.labelled,
                results,
            })
        }
    };
    let facts = sanity::Facts {
        output_kind: a.model.output_kind,
        rows_like_probabilities: like_probs,
        examples: total,
        classes: k,
        range: a.input_spec.range,
        geometry: audit::geometry(a.input_spec.layout, &a.example_shape),
        example_len: a.example_shape.iter().product(),
        labelled: clean.labelled,
        correct: clean.correct,
        rounding: a.model.rounding.clone(),
    };
    let sanity = if settings.sanity {
        let p0 = by_index[&0];
        let probe = p0.facts.probe.as_ref().ok_or_else(|| {
            anyhow!(
                "part {}: shard 0 carries no sanity probes, but the audit ran the sanity checks",
                p0.file
            )
        })?;
        sanity::checks(probe, &facts, plan.as_ref(), robust.as_ref())
    } else {
        vec![]
    };
    let seconds: f64 = parts.iter().map(|p| p.seconds).sum();
    let report = AuditReport {
        schema_version: audit::SCHEMA_VERSION,
        model: a.model.clone(),
        input_spec: a.input_spec.clone(),
        runtime: a.runtime.clone(),
        batch: a.batch,
        batch_freed: a.batch_freed,
        data: a.data.clone(),
        classes: k,
        class_names: a.class_names.clone(),
        rows_like_probabilities: like_probs,
        clean,
        robust,
        sanity,
        example_shape: a.example_shape.clone(),
        predictions: rows.iter().map(|o| o.clean_prediction).collect(),
        per_example: rows,
        probe: by_index[&0].facts.probe.clone(),
        // The parts' version, not this build's.
        meta: audit::Meta {
            harden_version: first.harden_version.clone(),
            ..audit::Meta::timed(total, seconds)
        },
    };
    Ok((report, seconds, first.harden_version.clone()))
}
