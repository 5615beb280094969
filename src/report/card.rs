//! The robustness card: `card.md` in the report folder, in the conventions of a Hugging
//! Face model card (YAML front matter with `model-index` results, then Markdown), and
//! its facts as `model_card` in report.json. Threat model, data, clean and robust
//! accuracy with 95% Wilson intervals, attacks and budgets, sanity checks, the hardening
//! (main command: settings, before and after), the harden version and the command that
//! reproduces the run.

use std::fmt::Write;

use serde::Serialize;

use super::content::{attack_desc, pct};
use super::stats::{wilson, Z95};
use super::Report;
use crate::audit::AuditReport;
use crate::sanity::Status;

/// One accuracy with its interval.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CardResult {
    /// `clean accuracy`, or `robust accuracy` (worst case over the attacks) at `eps`.
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eps: Option<f32>,
    pub value: Option<f64>,
    /// Examples right (correct, or robust) of `examples` labelled ones.
    pub right: u64,
    pub examples: u64,
    /// 95% Wilson score interval.
    pub interval_95: (f64, f64),
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CardThreat {
    pub norm: String,
    pub eps: Vec<f32>,
    pub range: (f32, f32),
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CardData {
    pub spec: String,
    pub source: String,
    pub examples: u64,
    pub labelled: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct CardSanity {
    pub passed: Vec<String>,
    pub flagged: Vec<String>,
    pub not_run: Vec<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct CardHardening {
    pub method: String,
    pub eps: f32,
    pub epochs: usize,
    /// The training settings (`training.details.config`).
    pub settings: serde_json::Value,
    /// The original model's results (the card's `results` are the hardened model's).
    pub before: Vec<CardResult>,
}

/// The card's facts (report.json `model_card`); [`render`] writes them as `card.md`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ModelCard {
    /// The Markdown file in the report folder.
    pub file: String,
    pub model: String,
    pub sha256: String,
    /// Hugging Face task type: `image-classification` for image inputs, else
    /// `tabular-classification`.
    pub task: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threat_model: Option<CardThreat>,
    pub data: CardData,
    pub results: Vec<CardResult>,
    /// The attacks with their budgets, and whether they ran as a cascade.
    pub attacks: Vec<String>,
    pub cascade: bool,
    pub sanity: CardSanity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardening: Option<CardHardening>,
}

fn results(a: &AuditReport) -> Vec<CardResult> {
    let n = a.clean.labelled;
    let mut v = vec![CardResult {
        name: "clean accuracy".into(),
        eps: None,
        value: a.clean.accuracy,
        right: a.clean.correct,
        examples: n,
        interval_95: wilson(a.clean.correct, n, Z95),
    }];
    if let Some(rb) = &a.robust {
        for e in &rb.results {
            v.push(CardResult {
                name: "robust accuracy".into(),
                eps: Some(e.eps),
                value: Some(e.robust_accuracy),
                right: e.robust,
                examples: rb.examples,
                interval_95: wilson(e.robust, rb.examples, Z95),
            });
        }
    }
    v
}

impl ModelCard {
    /// The card of `r`'s primary audit (the hardened model for the main command).
    pub fn of(r: &Report) -> ModelCard {
        let a = r.primary();
        let mut sanity = CardSanity::default();
        for c in &a.sanity {
            match c.status {
                Status::Passed => sanity.passed.push(c.id.clone()),
                Status::Flagged => sanity.flagged.push(c.id.clone()),
                Status::NotRun => sanity.not_run.push(c.id.clone()),
            }
        }
        let hardening = match (&r.training, &r.before) {
            (Some(t), Some(b)) => Some(CardHardening {
                method: t.method.clone(),
                eps: t.eps,
                epochs: t.epochs,
                settings: t
                    .details
                    .get("config")
                    .cloned()
                    .unwrap_or(serde_json::Value::Null),
                before: results(b),
            }),
            _ => None,
        };
        ModelCard {
            file: "card.md".into(),
            model: a.model.path.clone(),
            sha256: a.model.sha256.clone(),
            task: if super::images::image_shape(a).is_some() {
                "image-classification"
            } else {
                "tabular-classification"
            }
            .into(),
            threat_model: a.robust.as_ref().map(|rb| CardThreat {
                norm: rb.norm.name().into(),
                eps: rb.results.iter().map(|e| e.eps).collect(),
                range: rb.range,
            }),
            data: CardData {
                spec: a.data.spec.clone(),
                source: a.data.source.clone(),
                examples: a.data.examples,
                labelled: a.clean.labelled,
            },
            results: results(a),
            attacks: a
                .robust
                .iter()
                .flat_map(|rb| rb.attacks.iter().map(attack_desc))
                .collect(),
            cascade: a.robust.as_ref().is_some_and(|rb| rb.cascade),
            sanity,
            hardening,
        }
    }
}

/// A YAML scalar: JSON's quoting (a JSON string is a YAML double-quoted scalar).
fn y(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `args` quoted for a POSIX shell where needed.
pub fn shell_line(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn result_name(r: &CardResult, threat: Option<&CardThreat>) -> String {
    match (r.eps, threat) {
        (Some(e), Some(t)) => format!(
            "{} ({} eps {e}, worst case over the attacks)",
            r.name, t.norm
        ),
        _ => r.name.clone(),
    }
}

fn interval(r: &CardResult) -> String {
    format!(
        "{} – {}",
        pct(Some(r.interval_95.0)),
        pct(Some(r.interval_95.1))
    )
}

/// `key: value` lines of a settings object, nested keys joined by dots; numbers that
/// were `f32` shown as written (`0.05`, not `0.05000000074505806`).
fn settings_lines(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value;
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                settings_lines(&key, x, out);
            }
        }
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            let short = f as f32;
            let shown = if short as f64 == f {
                short.to_string()
            } else {
                f.to_string()
            };
            out.push(format!("{prefix}: {shown}"));
        }
        Value::String(s) => out.push(format!("{prefix}: {s}")),
        other => out.push(format!("{prefix}: {other}")),
    }
}

/// `card.md`: the card of `r` (its `model_card`, or one made now).
pub fn render(r: &Report) -> String {
    let c = r.model_card.clone().unwrap_or_else(|| ModelCard::of(r));
    let t = c.threat_model.as_ref();
    let name = std::path::Path::new(&c.model)
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| c.model.clone());
    let mut s = String::from("---\ntags:\n- adversarial-robustness\n- onnx\n- harden\n");
    let _ = writeln!(s, "model-index:\n- name: {}\n  results:", y(&name));
    let _ = writeln!(
        s,
        "  - task:\n      type: {}\n    dataset:\n      name: {}\n      type: {}",
        c.task,
        y(&c.data.spec),
        y(&c.data.spec)
    );
    let _ = writeln!(s, "    metrics:");
    for m in &c.results {
        let ty = if m.eps.is_some() {
            "robust_accuracy"
        } else {
            "accuracy"
        };
        let _ = writeln!(
            s,
            "    - type: {ty}\n      name: {}\n      value: {}",
            y(&result_name(m, t)),
            m.value.map_or("null".into(), |v| format!("{v}"))
        );
        if let (Some(e), Some(t)) = (m.eps, t) {
            let _ = writeln!(
                s,
                "      args:\n        norm: {}\n        eps: {e}",
                t.norm.to_lowercase()
            );
        }
    }
    s.push_str("---\n\n");
    let _ = writeln!(s, "# Robustness card: {name}\n");
    let _ = writeln!(
        s,
        "Measured by harden {} on `{}` (sha256 `{}`).\n",
        r.meta.harden_version, c.model, c.sha256
    );

    s.push_str("## Threat model\n\n");
    match t {
        Some(t) => {
            let _ = writeln!(
                s,
                "An attacker changes each input by at most eps in the {} norm, staying inside the input range [{}, {}] (raw input units, before any normalisation in the graph); eps {}.\n",
                t.norm,
                t.range.0,
                t.range.1,
                t.eps.iter().map(f32::to_string).collect::<Vec<_>>().join(", ")
            );
        }
        None => s.push_str(
            "No attacks were run (no --eps): this card says nothing about robustness.\n\n",
        ),
    }

    s.push_str("## Data\n\n");
    let _ = writeln!(
        s,
        "`{}`: {}; {} examples, {} labelled.\n",
        c.data.spec, c.data.source, c.data.examples, c.data.labelled
    );

    s.push_str("## Results\n\n");
    let table = |s: &mut String, rows: &[CardResult]| {
        s.push_str("| metric | value | 95% interval (Wilson) | examples |\n|---|---|---|---|\n");
        for m in rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {}/{} |",
                result_name(m, t),
                pct(m.value),
                interval(m),
                m.right,
                m.examples
            );
        }
        s.push('\n');
    };
    table(&mut s, &c.results);
    s.push_str(
        "Robust accuracy is an upper bound: an example no attack broke is not proven robust.\n\n",
    );

    if !c.attacks.is_empty() {
        s.push_str("## Attacks\n\n");
        for a in &c.attacks {
            let _ = writeln!(s, "- {a}");
        }
        let _ = writeln!(
            s,
            "\n{}Every adversarial example was re-checked by a plain forward pass of the model.\n",
            if c.cascade {
                "Run as a cascade: each attack on the examples the earlier ones left robust. "
            } else {
                "Each attack ran on every correctly classified example. "
            }
        );
    }

    s.push_str("## Sanity checks\n\n");
    if c.sanity.passed.is_empty() && c.sanity.flagged.is_empty() && c.sanity.not_run.is_empty() {
        s.push_str("Not run (--no-sanity-checks).\n\n");
    } else {
        for (what, ids) in [
            ("flagged", &c.sanity.flagged),
            ("passed", &c.sanity.passed),
            ("not run", &c.sanity.not_run),
        ] {
            if !ids.is_empty() {
                let _ = writeln!(s, "- {what}: {}", ids.join(", "));
            }
        }
        s.push_str("\nDetails in the report (report.html, section Sanity checks).\n\n");
    }

    if let Some(h) = &c.hardening {
        s.push_str("## Hardening\n\n");
        let _ = writeln!(
            s,
            "Adversarially fine-tuned by harden: method {}, eps {}, {} epoch{}.\n",
            h.method,
            h.eps,
            h.epochs,
            if h.epochs == 1 { "" } else { "s" }
        );
        if !h.settings.is_null() {
            let mut lines = vec![];
            settings_lines("", &h.settings, &mut lines);
            s.push_str("Settings:\n\n");
            for l in &lines {
                let _ = writeln!(s, "- {l}");
            }
            s.push('\n');
        }
        s.push_str("Before hardening (the original model, same data and attacks):\n\n");
        table(&mut s, &h.before);
    }

    if let Some(cmp) = &r.baseline {
        let _ = writeln!(s, "## {}\n", super::compare::SECTION_TITLE);
        let _ = writeln!(
            s,
            "Baseline `{}` (model `{}`): {}.\n",
            cmp.baseline,
            cmp.baseline_model,
            if cmp.passed {
                "no significant drop"
            } else {
                "a significant drop"
            }
        );
        for m in &cmp.metrics {
            let _ = writeln!(
                s,
                "- {}: {} → {} (McNemar p = {})",
                m.name,
                pct(Some(m.before)),
                pct(Some(m.after)),
                super::compare::fmt_p(m.p_value)
            );
        }
        s.push('\n');
    }

    s.push_str("## Reproduce\n\n");
    let _ = writeln!(s, "harden {}:\n", r.meta.harden_version);
    if r.meta.command.is_empty() {
        s.push_str("(the command line was not recorded)\n");
    } else {
        let _ = writeln!(s, "```sh\n{}\n```", shell_line(&r.meta.command));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting() {
        let v: Vec<String> = ["harden", "audit", "a b.onnx", "--eps", "0.1,0.2", "it's"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            shell_line(&v),
            "harden audit 'a b.onnx' --eps 0.1,0.2 'it'\\''s'"
        );
    }
}
