//! Comparison with a baseline report (`harden audit --baseline`, `harden report diff`):
//! the same examples, data, threat model and attacks, compared per example (paired):
//! the examples classified (or robust) before and not now, and the reverse, the change
//! in clean and worst-case robust accuracy per eps, and McNemar's exact test on the
//! discordant pairs. A drop above `max_drop` that is significant at `alpha` fails.
//!
//! Both sides are read from report JSON by the one reader, [`Side::parse`] (the current
//! run's report goes through its own JSON), so the two are compared alike.

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;
use serde_json::Value;

use super::content::{pct, Block, Section};
use super::stats::mcnemar_exact;
use crate::data::classes::label;
use crate::robust::ExampleOutcome;

/// `--max-drop` and `--alpha` defaults.
pub const MAX_DROP: f64 = 0.02;
pub const ALPHA: f64 = 0.05;

/// Rows of flipped examples listed per metric in the Markdown and HTML.
pub const FLIPS_SHOWN: usize = 20;

/// What a comparison reads from one report.
#[derive(Clone, Debug)]
pub struct Side {
    /// Where it was read from (a file, or `this run`).
    pub file: String,
    /// The key of the compared audit: `audit`, or `after` in a hardening report.
    pub role: String,
    pub model_path: String,
    pub sha256: String,
    pub data_spec: String,
    pub examples: u64,
    pub class_names: Vec<String>,
    pub norm: Option<String>,
    pub range: Option<Value>,
    pub cascade: Option<bool>,
    /// The attacks' settings without their seeds.
    pub attacks: Vec<Value>,
    pub seed: Option<u64>,
    pub eps: Vec<f32>,
    pub per_example: Vec<ExampleOutcome>,
}

/// The field at `path` (dots; `[i]` not needed) of `v`, or an error naming it.
fn field<'a>(file: &str, v: &'a Value, path: &str) -> Result<&'a Value> {
    let mut cur = v;
    for part in path.split('.') {
        cur = cur.get(part).ok_or_else(|| {
            anyhow!("{file}: field `{path}` is missing (a truncated or hand-edited report?)")
        })?;
    }
    Ok(cur)
}

fn str_field(file: &str, v: &Value, path: &str) -> Result<String> {
    field(file, v, path)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("{file}: field `{path}` is not a string"))
}

fn u64_field(file: &str, v: &Value, path: &str) -> Result<u64> {
    field(file, v, path)?
        .as_u64()
        .ok_or_else(|| anyhow!("{file}: field `{path}` is not a whole number"))
}

impl Side {
    /// Reads the compared audit of report JSON `text` (from `file`, for messages).
    pub fn parse(file: &str, text: &str) -> Result<Side> {
        let v: Value = serde_json::from_str(text).map_err(|e| {
            anyhow!("{file}: not a complete report JSON ({e}; a truncated or hand-edited file?)")
        })?;
        if !v.is_object() {
            bail!("{file}: not a harden report (a JSON object with `schema_version`)");
        }
        let version = u64_field(file, &v, "schema_version")?;
        let want = crate::audit::SCHEMA_VERSION as u64;
        if version != want {
            bail!(
                "{file}: field `schema_version` is {version}, this harden reads {want} (per-example outcomes came with version 3); re-run the baseline with this harden"
            );
        }
        let kind = str_field(file, &v, "kind")?;
        let role = match kind.as_str() {
            "audit" => "audit",
            "hardening" => "after",
            other => bail!("{file}: field `kind` is '{other}', not audit or hardening"),
        };
        let a = field(file, &v, role)?;
        let p = |s: &str| format!("{role}.{s}");
        let per_example: Vec<ExampleOutcome> =
            serde_json::from_value(field(file, &v, &p("per_example"))?.clone()).map_err(|e| {
                anyhow!(
                    "{file}: field `{}` is not a list of example outcomes ({e})",
                    p("per_example")
                )
            })?;
        let examples = u64_field(file, &v, &p("data.examples"))?;
        if per_example.len() as u64 != examples {
            bail!(
                "{file}: field `{}` holds {} examples but `{}` says {examples} (a truncated or hand-edited report?)",
                p("per_example"),
                per_example.len(),
                p("data.examples")
            );
        }
        if let Some((i, o)) = per_example
            .iter()
            .enumerate()
            .find(|(i, o)| o.example != *i as u64)
        {
            bail!(
                "{file}: field `{}`: example {} is at position {i} (examples are listed in data order)",
                p("per_example"),
                o.example
            );
        }
        let robust = a.get("robust").filter(|r| !r.is_null());
        let mut side = Side {
            file: file.to_string(),
            role: role.to_string(),
            model_path: str_field(file, &v, &p("model.path"))?,
            sha256: str_field(file, &v, &p("model.sha256"))?,
            data_spec: str_field(file, &v, &p("data.spec"))?,
            examples,
            class_names: a
                .get("class_names")
                .and_then(|n| serde_json::from_value(n.clone()).ok())
                .unwrap_or_default(),
            norm: None,
            range: None,
            cascade: None,
            attacks: vec![],
            seed: None,
            eps: vec![],
            per_example,
        };
        if let Some(rb) = robust {
            side.norm = Some(str_field(file, &v, &p("robust.norm"))?);
            side.range = rb.get("range").cloned();
            side.cascade = rb.get("cascade").and_then(Value::as_bool);
            let attacks = field(file, &v, &p("robust.attacks"))?
                .as_array()
                .ok_or_else(|| anyhow!("{file}: field `{}` is not a list", p("robust.attacks")))?;
            let (attacks, seed) = without_seeds(attacks);
            side.attacks = attacks;
            side.seed = seed;
            let results = field(file, &v, &p("robust.results"))?
                .as_array()
                .ok_or_else(|| anyhow!("{file}: field `{}` is not a list", p("robust.results")))?;
            for (e, r) in results.iter().enumerate() {
                let what = p(&format!("robust.results[{e}]"));
                let eps = r
                    .get("eps")
                    .and_then(Value::as_f64)
                    .ok_or_else(|| anyhow!("{file}: field `{what}.eps` is missing"))?
                    as f32;
                let count = r
                    .get("robust")
                    .and_then(Value::as_u64)
                    .ok_or_else(|| anyhow!("{file}: field `{what}.robust` is missing"))?;
                // The per-example records must add up to the tallies.
                let mut robust_here = 0u64;
                for o in &side.per_example {
                    match (o.label.is_some(), o.at(eps)) {
                        (true, Some(x)) => robust_here += x.robust as u64,
                        (true, None) => bail!(
                            "{file}: field `{}`: example {} has no outcome at eps {eps}",
                            p("per_example"),
                            o.example
                        ),
                        (false, _) => {}
                    }
                }
                if robust_here != count {
                    bail!(
                        "{file}: field `{what}.robust` says {count} robust examples but `{}` has {robust_here} (a hand-edited report?)",
                        p("per_example")
                    );
                }
                side.eps.push(eps);
            }
        }
        let correct = side.per_example.iter().filter(|o| o.correct()).count() as u64;
        let c = u64_field(file, &v, &p("clean.correct"))?;
        if c != correct {
            bail!(
                "{file}: field `{}` says {c} correct but `{}` has {correct} (a hand-edited report?)",
                p("clean.correct"),
                p("per_example")
            );
        }
        Ok(side)
    }

    /// Reads a report file.
    pub fn read(path: &std::path::Path) -> Result<Side> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the report {}", path.display()))?;
        Side::parse(&path.display().to_string(), &text)
    }

    /// The compared audit of a report of this run.
    pub fn of_report(r: &super::Report) -> Result<Side> {
        Side::parse("this run", &r.to_json()?)
    }

    fn labelled(&self) -> u64 {
        self.per_example
            .iter()
            .filter(|o| o.label.is_some())
            .count() as u64
    }
}

/// The attacks' settings without their `seed`s, and the first seed.
fn without_seeds(attacks: &[Value]) -> (Vec<Value>, Option<u64>) {
    let mut seed = None;
    let v = attacks
        .iter()
        .map(|at| {
            let mut at = at.clone();
            if let Some(o) = at.as_object_mut() {
                if let Some(s) = o.remove("seed").and_then(|s| s.as_u64()) {
                    seed.get_or_insert(s);
                }
            }
            at
        })
        .collect();
    (v, seed)
}

/// Checks, before a run, what the flags already say against the baseline: the norm,
/// eps, attacks and their settings (the seed may differ). The error names the field.
pub fn check_plan(before: &Side, plan: Option<&crate::audit::RobustPlan>) -> Result<()> {
    let mut probe = before.clone();
    match plan {
        None => {
            probe.norm = None;
            probe.eps = vec![];
            probe.attacks = vec![];
            probe.cascade = None;
        }
        Some(p) => {
            // Through JSON text, as the report will hold them.
            let text = serde_json::to_string(&(&p.norm, &p.attacks))?;
            let (norm, attacks): (Value, Vec<Value>) = serde_json::from_str(&text)?;
            probe.norm = norm.as_str().map(str::to_string);
            probe.eps = p.eps.clone();
            probe.attacks = without_seeds(&attacks).0;
            probe.cascade = Some(p.cascade);
        }
    }
    check_compatible(before, &probe)
}

/// Checks, once the data is open and before the run, the data against the baseline's.
pub fn check_data(before: &Side, data_spec: &str) -> Result<()> {
    let mut probe = before.clone();
    probe.data_spec = data_spec.to_string();
    check_compatible(before, &probe)
}

/// Checks that `after` was measured like `before`: same data and examples (labels),
/// threat model, eps and attacks (the seed may differ). The error names the field.
pub fn check_compatible(before: &Side, after: &Side) -> Result<()> {
    let differ = |what: &str, a: &dyn std::fmt::Display, b: &dyn std::fmt::Display| {
        anyhow!(
            "the baseline {} was measured differently: field `{what}` is {a} there and {b} here; a comparison needs the same data, examples, threat model, eps and attacks",
            before.file
        )
    };
    if before.data_spec != after.data_spec {
        return Err(differ("data.spec", &before.data_spec, &after.data_spec));
    }
    if before.examples != after.examples {
        return Err(differ("data.examples", &before.examples, &after.examples));
    }
    if let Some((a, b)) = before
        .per_example
        .iter()
        .zip(&after.per_example)
        .find(|(a, b)| a.label != b.label)
    {
        let l = |o: &ExampleOutcome| o.label.map_or("none".to_string(), |v| v.to_string());
        return Err(differ(
            &format!("per_example[{}].label", a.example),
            &l(a),
            &l(b),
        ));
    }
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "absent (no --eps)".into());
    if before.norm != after.norm {
        return Err(differ(
            "robust.norm",
            &show(&before.norm),
            &show(&after.norm),
        ));
    }
    let js = |v: &Option<Value>| v.as_ref().map(Value::to_string).unwrap_or_default();
    if before.range != after.range {
        return Err(differ(
            "robust.range",
            &js(&before.range),
            &js(&after.range),
        ));
    }
    if before.eps != after.eps {
        let l = |v: &[f32]| {
            format!(
                "[{}]",
                v.iter().map(f32::to_string).collect::<Vec<_>>().join(", ")
            )
        };
        return Err(differ(
            "robust.results[].eps",
            &l(&before.eps),
            &l(&after.eps),
        ));
    }
    if before.cascade != after.cascade {
        return Err(differ(
            "robust.cascade",
            &format!("{:?}", before.cascade),
            &format!("{:?}", after.cascade),
        ));
    }
    if before.attacks != after.attacks {
        let l = |v: &[Value]| Value::Array(v.to_vec()).to_string();
        return Err(differ(
            "robust.attacks",
            &l(&before.attacks),
            &l(&after.attacks),
        ));
    }
    Ok(())
}

/// One example that changed between the baseline and now.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Flip {
    pub example: u64,
    pub label: Option<usize>,
    /// Now: the clean prediction, or the adversarial one of the first attack that broke
    /// it (with that attack and the perturbation's norm).
    pub prediction: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attack: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance: Option<f32>,
}

/// One compared metric: clean accuracy, or worst-case robust accuracy at one eps.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MetricChange {
    /// `clean-accuracy` or `robust-accuracy@EPS`.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps: Option<f32>,
    pub before: f64,
    pub after: f64,
    /// after - before.
    pub change: f64,
    /// Examples right (correct, or robust) in the baseline and wrong now...
    pub lost: Vec<Flip>,
    /// ...and the reverse (example positions).
    pub gained: Vec<u64>,
    /// McNemar's exact test on (lost, gained), two-sided.
    pub p_value: f64,
    /// The drop (before - after) exceeds `max_drop` and p < `alpha`.
    pub failed: bool,
}

impl MetricChange {
    /// One line for the terminal.
    pub fn line(&self) -> String {
        format!(
            "baseline {} {} -> {} ({:+.2} points, {} lost, {} gained, McNemar p = {}) {}",
            self.name,
            pct(Some(self.before)),
            pct(Some(self.after)),
            100.0 * self.change,
            self.lost.len(),
            self.gained.len(),
            fmt_p(self.p_value),
            if self.failed { "FAILED" } else { "passed" }
        )
    }
}

/// A p-value for people: 4 significant digits, scientific below 1e-4.
pub fn fmt_p(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.2e}")
    } else {
        format!("{p:.4}")
    }
}

/// The comparison of a report with its baseline (in report.json as `baseline`).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Comparison {
    /// The baseline report file.
    pub baseline: String,
    pub baseline_model: String,
    pub baseline_sha256: String,
    /// The attacks' seeds of the baseline and of this run (they may differ).
    pub baseline_seed: Option<u64>,
    pub seed: Option<u64>,
    pub max_drop: f64,
    pub alpha: f64,
    /// Labelled examples compared.
    pub examples: u64,
    pub metrics: Vec<MetricChange>,
    pub passed: bool,
    #[serde(skip)]
    pub class_names: Vec<String>,
}

/// Checks `--max-drop` and `--alpha`.
pub fn check_settings(max_drop: f64, alpha: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&max_drop) {
        bail!("--max-drop {max_drop}: a drop is a fraction between 0 and 1 (0.02 for 2 points)");
    }
    if !(alpha > 0.0 && alpha < 1.0) {
        bail!("--alpha {alpha}: a significance level is between 0 and 1 (0.05)");
    }
    Ok(())
}

/// Compares `after` with `before` (checked compatible first).
pub fn compare(before: &Side, after: &Side, max_drop: f64, alpha: f64) -> Result<Comparison> {
    check_settings(max_drop, alpha)?;
    check_compatible(before, after)?;
    let n = after.labelled();
    let mut metrics = vec![];
    let mut metric = |name: String, eps: Option<f32>, ok: &dyn Fn(&ExampleOutcome) -> bool| {
        let (mut lost, mut gained) = (vec![], vec![]);
        let (mut right_before, mut right_after) = (0u64, 0u64);
        for (a, b) in before.per_example.iter().zip(&after.per_example) {
            if b.label.is_none() {
                continue;
            }
            let (x, y) = (ok(a), ok(b));
            right_before += x as u64;
            right_after += y as u64;
            if x && !y {
                let broke = eps
                    .and_then(|e| b.at(e))
                    .and_then(|o| o.attacks.iter().find(|t| t.broken));
                lost.push(Flip {
                    example: b.example,
                    label: b.label,
                    prediction: broke
                        .and_then(|t| t.adversarial_prediction)
                        .unwrap_or(b.clean_prediction),
                    attack: broke.map(|t| t.attack.clone()),
                    distance: broke.and_then(|t| t.distance),
                });
            } else if !x && y {
                gained.push(b.example);
            }
        }
        let frac = |k: u64| if n > 0 { k as f64 / n as f64 } else { 0.0 };
        let (bf, af) = (frac(right_before), frac(right_after));
        let p_value = mcnemar_exact(lost.len() as u64, gained.len() as u64);
        // A drop counts in whole examples: compare counts so that rounding cannot tip it.
        let drop = bf - af;
        let failed = drop > max_drop + 1e-12 && p_value < alpha;
        metrics.push(MetricChange {
            name,
            eps,
            before: bf,
            after: af,
            change: af - bf,
            lost,
            gained,
            p_value,
            failed,
        });
    };
    metric("clean-accuracy".into(), None, &|o| o.correct());
    for &e in &after.eps {
        metric(format!("robust-accuracy@{e}"), Some(e), &|o| {
            o.correct() && o.at(e).is_some_and(|x| x.robust)
        });
    }
    Ok(Comparison {
        baseline: before.file.clone(),
        baseline_model: before.model_path.clone(),
        baseline_sha256: before.sha256.clone(),
        baseline_seed: before.seed,
        seed: after.seed,
        max_drop,
        alpha,
        examples: n,
        passed: metrics.iter().all(|m| !m.failed),
        metrics,
        class_names: after.class_names.clone(),
    })
}

/// The report section "Compared with the baseline"; `audit` the index (in
/// `Report::audits`) of the compared audit, for the images of the lost examples.
pub fn section(c: &Comparison, model_now: &str, audit: Option<usize>) -> Section {
    let mut blocks = vec![Block::Para(format!(
        "Baseline {} (model {}, sha256 {}…) against this model ({}), on the same {} labelled examples, data, threat model, eps and attacks; attack seed {} there, {} here. Paired per example: lost = right in the baseline and wrong now, gained = the reverse; McNemar's exact test on them (two-sided). A metric fails when it drops by more than {:.2} points and p < {}.",
        c.baseline,
        c.baseline_model,
        &c.baseline_sha256[..12.min(c.baseline_sha256.len())],
        model_now,
        c.examples,
        c.baseline_seed.map_or("none".into(), |s| s.to_string()),
        c.seed.map_or("none".into(), |s| s.to_string()),
        100.0 * c.max_drop,
        c.alpha
    ))];
    blocks.push(Block::Table {
        head: vec![
            "metric".into(),
            "baseline → now".into(),
            "change".into(),
            "lost".into(),
            "gained".into(),
            "McNemar p".into(),
            "result".into(),
        ],
        rows: c
            .metrics
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    format!("{} → {}", pct(Some(m.before)), pct(Some(m.after))),
                    format!("{:+.2} points", 100.0 * m.change),
                    m.lost.len().to_string(),
                    m.gained.len().to_string(),
                    fmt_p(m.p_value),
                    if m.failed { "FAILED" } else { "passed" }.into(),
                ]
            })
            .collect(),
    });
    blocks.push(Block::Para(format!(
        "Compared with the baseline: {}.",
        if c.passed {
            "no significant drop".to_string()
        } else {
            let f: Vec<&str> = c
                .metrics
                .iter()
                .filter(|m| m.failed)
                .map(|m| m.name.as_str())
                .collect();
            format!("FAILED ({})", f.join(", "))
        }
    )));
    let rows: Vec<Vec<String>> = c
        .metrics
        .iter()
        .flat_map(|m| {
            m.lost.iter().take(FLIPS_SHOWN).map(move |f| {
                vec![
                    m.name.clone(),
                    f.example.to_string(),
                    f.label
                        .map(|l| label(l, &c.class_names))
                        .unwrap_or_default(),
                    label(f.prediction, &c.class_names),
                    f.attack.clone().unwrap_or_else(|| "clean".into()),
                    f.distance
                        .map(crate::sanity::fmt_g)
                        .unwrap_or_else(|| "–".into()),
                ]
            })
        })
        .collect();
    if !rows.is_empty() {
        blocks.push(Block::Para(format!(
            "Examples lost since the baseline (at most {FLIPS_SHOWN} per metric; all in report.json under `baseline`):"
        )));
        blocks.push(Block::Table {
            head: vec![
                "metric".into(),
                "example".into(),
                "label".into(),
                "now predicted".into(),
                "by".into(),
                "distance".into(),
            ],
            rows,
        });
        if let Some(audit) = audit {
            for m in &c.metrics {
                if let (Some(eps), false) = (m.eps, m.lost.is_empty()) {
                    blocks.push(Block::Pairs {
                        audit,
                        eps,
                        examples: m.lost.iter().take(FLIPS_SHOWN).map(|f| f.example).collect(),
                    });
                }
            }
        }
    }
    Section {
        title: SECTION_TITLE.into(),
        blocks,
    }
}

/// The title of the comparison's section.
pub const SECTION_TITLE: &str = "Compared with the baseline";

/// The comparison alone as Markdown (`harden report diff`).
pub fn markdown(c: &Comparison, model_now: &str) -> String {
    let mut s = String::new();
    super::markdown::render_section(&mut s, &section(c, model_now, None));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::robust::{AttackOutcome, EpsOutcome};

    fn side(robust: &[bool], correct: &[bool], seed: u64) -> Side {
        Side {
            file: "x.json".into(),
            role: "audit".into(),
            model_path: "m.onnx".into(),
            sha256: "abc".into(),
            data_spec: "d".into(),
            examples: robust.len() as u64,
            class_names: vec![],
            norm: Some("linf".into()),
            range: None,
            cascade: Some(false),
            attacks: vec![serde_json::json!({"attack": "fgsm"})],
            seed: Some(seed),
            eps: vec![0.1],
            per_example: robust
                .iter()
                .zip(correct)
                .enumerate()
                .map(|(i, (&r, &c))| ExampleOutcome {
                    example: i as u64,
                    label: Some(1),
                    clean_prediction: if c { 1 } else { 2 },
                    eps: vec![EpsOutcome {
                        eps: 0.1,
                        robust: r && c,
                        attacks: vec![AttackOutcome {
                            attack: "fgsm".into(),
                            broken: !r,
                            adversarial_prediction: (!r).then_some(3),
                            distance: (!r).then_some(0.1),
                            evaluations: 2,
                            budget: 2,
                            refused: false,
                        }],
                    }],
                })
                .collect(),
        }
    }

    #[test]
    fn paired_counts_and_decision() {
        // 40 examples; robust before: the first 20; now: 1 of those lost... 10 lost, 1 gained.
        let before: Vec<bool> = (0..40).map(|i| i < 20).collect();
        let now: Vec<bool> = (0..40).map(|i| (10..21).contains(&i)).collect();
        let all = vec![true; 40];
        let c = compare(&side(&before, &all, 0), &side(&now, &all, 1), 0.02, 0.05).unwrap();
        let m = &c.metrics[1];
        assert_eq!(m.name, "robust-accuracy@0.1");
        assert_eq!((m.lost.len(), m.gained.len()), (10, 1));
        // 2 (C(11,0) + C(11,1)) / 2^11 = 24/2048.
        assert!((m.p_value - 24.0 / 2048.0).abs() < 1e-15);
        assert!((m.change - (-9.0 / 40.0)).abs() < 1e-12);
        assert!(m.failed && !c.passed);
        assert_eq!(m.lost[0].prediction, 3);
        assert_eq!(m.lost[0].attack.as_deref(), Some("fgsm"));
        assert_eq!((c.baseline_seed, c.seed), (Some(0), Some(1)));
        // A large drop that is not significant (few discordant pairs) passes...
        let c = compare(&side(&before, &all, 0), &side(&now, &all, 1), 0.02, 0.001).unwrap();
        assert!(c.passed);
        // ...and so does a significant one within --max-drop.
        let c = compare(&side(&before, &all, 0), &side(&now, &all, 1), 0.3, 0.05).unwrap();
        assert!(c.passed);
        // The same outcomes: nothing changes.
        let c = compare(&side(&before, &all, 0), &side(&before, &all, 0), 0.0, 0.05).unwrap();
        assert!(c.passed && c.metrics.iter().all(|m| m.p_value == 1.0));
    }

    #[test]
    fn incompatible_sides_name_the_field() {
        let r: Vec<bool> = vec![true; 4];
        let a = side(&r, &r, 0);
        let mut b = side(&r, &r, 0);
        b.eps = vec![0.2];
        let e = compare(&a, &b, 0.02, 0.05).unwrap_err().to_string();
        assert!(
            e.contains("robust.results[].eps") && e.contains("[0.1]"),
            "{e}"
        );
        let mut b = side(&r, &r, 0);
        b.per_example[2].label = Some(4);
        let e = compare(&a, &b, 0.02, 0.05).unwrap_err().to_string();
        assert!(e.contains("per_example[2].label"), "{e}");
        let mut b = side(&r, &r, 0);
        b.attacks = vec![serde_json::json!({"attack": "pgd"})];
        let e = compare(&a, &b, 0.02, 0.05).unwrap_err().to_string();
        assert!(e.contains("robust.attacks"), "{e}");
        assert!(compare(&a, &a, 2.0, 0.05).is_err());
        assert!(compare(&a, &a, 0.02, 0.0).is_err());
    }
}
