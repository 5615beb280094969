//! What the Markdown and HTML reports say, built once as sections of blocks; the two
//! renderers only format them. With two audits (before and after hardening) every table
//! has one column per audit, or cells `before → after`.

use super::{Report, ReportKind};
use crate::audit::AuditReport;
use crate::data::classes::label;
use crate::metrics::MANY_CLASSES;
use crate::model::{shape_string, OutputKind};
use crate::sanity::Status;

/// Rows of the per-class summaries when there are more than [`MANY_CLASSES`] classes.
pub const REPORT_ROWS: usize = 20;

pub enum Block {
    Para(String),
    List(Vec<String>),
    Table {
        head: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    /// Robust accuracy versus eps (HTML: SVG; Markdown: a pointer to the HTML).
    Plot,
    /// The clean/adversarial image grid of audit `.0` (index into `Report::audits`).
    Grid(usize),
    /// The images of `examples` at `eps` that audit `audit` kept (the examples a
    /// comparison with a baseline lost; HTML only).
    Pairs {
        audit: usize,
        eps: f32,
        examples: Vec<u64>,
    },
}

pub struct Section {
    pub title: String,
    pub blocks: Vec<Block>,
}

pub fn pct(v: Option<f64>) -> String {
    v.map(|v| format!("{:.2}%", 100.0 * v))
        .unwrap_or_else(|| "n/a".into())
}

/// `a` alone, or `a → b`.
fn cells(v: &[String]) -> String {
    if v.windows(2).all(|w| w[0] == w[1]) && v.len() > 1 {
        return v[0].clone();
    }
    v.join(" → ")
}

fn status_word(s: Status) -> &'static str {
    match s {
        Status::Passed => "passed",
        Status::Flagged => "FLAGGED",
        Status::NotRun => "not run",
    }
}

pub fn title(r: &Report) -> String {
    match r.kind {
        ReportKind::Audit => format!("harden audit: {}", r.primary().model.path),
        ReportKind::Hardening => {
            let a = r.audits();
            format!(
                "harden: {} hardened into {}",
                a[0].1.model.path,
                a.last().map(|x| x.1.model.path.as_str()).unwrap_or("")
            )
        }
    }
}

pub fn sections(r: &Report) -> Vec<Section> {
    let audits = r.audits();
    let two = audits.len() > 1;
    let roles: Vec<String> = audits.iter().map(|(role, _)| role.to_string()).collect();
    let each = |f: &dyn Fn(&AuditReport) -> String| -> Vec<String> {
        audits.iter().map(|(_, a)| f(a)).collect()
    };
    let facts_head = |first: &str| -> Vec<String> {
        let mut h = vec![first.to_string()];
        if two {
            h.extend(roles.iter().cloned());
        } else {
            h.push("value".into());
        }
        h
    };
    let mut out = vec![];

    // Summary.
    let mut rows = vec![];
    let mut row = vec!["clean accuracy".to_string()];
    row.extend(each(&|a| pct(a.clean.accuracy)));
    rows.push(row);
    for eps in all_eps(&audits) {
        let mut row = vec![format!("robust accuracy, worst case, eps {eps}")];
        row.extend(each(&|a| pct(worst(a, eps))));
        rows.push(row);
    }
    let mut row = vec!["sanity checks flagged".to_string()];
    row.extend(each(&|a| {
        let f: Vec<&str> = a
            .sanity
            .iter()
            .filter(|c| c.status == Status::Flagged)
            .map(|c| c.id.as_str())
            .collect();
        if a.sanity.is_empty() {
            "not run".into()
        } else if f.is_empty() {
            "none".into()
        } else {
            f.join(", ")
        }
    }));
    rows.push(row);
    let mut blocks = vec![Block::Table {
        head: facts_head(""),
        rows,
    }];
    for (role, a) in &audits {
        if let Some(w) = crate::audit::nothing_attacked(a) {
            blocks.push(Block::List(vec![format!(
                "FLAGGED{}: {w}.",
                if two {
                    format!(" ({role})")
                } else {
                    String::new()
                }
            )]));
        }
    }
    if !r.gates.is_empty() {
        blocks.push(Block::Para(format!(
            "Gates: {}.",
            if r.gates_passed() {
                "all passed".to_string()
            } else {
                format!(
                    "{} of {} FAILED",
                    r.gates.iter().filter(|g| !g.passed).count(),
                    r.gates.len()
                )
            }
        )));
    }
    out.push(Section {
        title: "Summary".into(),
        blocks,
    });
    if let Some(c) = &r.baseline {
        out.push(super::compare::section(
            c,
            &r.primary().model.path,
            Some(audits.len() - 1),
        ));
    }

    // Model.
    let fact = |name: &str, f: &dyn Fn(&AuditReport) -> String| {
        let mut row = vec![name.to_string()];
        row.extend(each(f));
        row
    };
    let rows = vec![
        fact("file", &|a| a.model.path.clone()),
        fact("sha256", &|a| a.model.sha256.clone()),
        fact("opset, IR version", &|a| {
            format!("{}, {}", a.model.opset, a.model.ir_version)
        }),
        fact("producer", &|a| a.model.producer.clone()),
        fact("parameters", &|a| a.model.parameters.to_string()),
        fact("input", &|a| {
            format!(
                "{} {} {}",
                a.model.input.name,
                a.model.input.elem_type,
                shape_string(&a.model.input.shape)
            )
        }),
        fact("outputs", &|a| {
            a.model
                .outputs
                .iter()
                .map(|o| format!("{} {}", o.name, shape_string(&o.shape)))
                .collect::<Vec<_>>()
                .join(", ")
        }),
        fact("output kind", &|a| {
            match a.model.output_kind {
                OutputKind::Probabilities => "probabilities (ends in Softmax)",
                _ => "logits",
            }
            .into()
        }),
        fact("input space", &|a| {
            let s = &a.input_spec;
            let mut t = format!(
                "layout {:?}, range [{}, {}]",
                s.layout, s.range.0, s.range.1
            )
            .to_lowercase();
            if !s.mean.is_empty() {
                t += &format!(", mean {:?}, std {:?}", s.mean, s.std);
            }
            if !s.guessed.is_empty() {
                t += &format!(" (guessed: {})", s.guessed.join(", "));
            }
            t
        }),
        fact("runtime", &|a| {
            format!(
                "{}, batch {}{}",
                a.runtime,
                a.batch,
                if a.batch_freed {
                    " (fixed batch made dynamic, outputs checked equal)"
                } else {
                    ""
                }
            )
        }),
    ];
    // Models that round: how gradients pass the rounding (`--through-rounding`).
    let mut rows = rows;
    if audits.iter().any(|(_, a)| a.model.rounding.is_some()) {
        rows.push(fact("gradients through rounding", &|a| {
            a.model
                .rounding
                .as_ref()
                .map(|r| r.summary())
                .unwrap_or_else(|| "no rounding".into())
        }));
    }
    out.push(Section {
        title: "Model".into(),
        blocks: vec![Block::Table {
            head: facts_head("fact"),
            rows,
        }],
    });

    // Data.
    let rows = vec![
        fact("data", &|a| a.data.spec.clone()),
        fact("source", &|a| a.data.source.clone()),
        fact("examples (labelled)", &|a| {
            format!("{} ({})", a.data.examples, a.clean.labelled)
        }),
        fact("stored example shape", &|a| {
            format!("{:?}", a.data.stored_example_shape)
        }),
        fact("model example shape", &|a| format!("{:?}", a.example_shape)),
        fact("classes", &|a| a.classes.to_string()),
    ];
    out.push(Section {
        title: "Data".into(),
        blocks: vec![Block::Table {
            head: facts_head("fact"),
            rows,
        }],
    });

    // Training.
    if let Some(t) = &r.training {
        let rows = t
            .rows
            .iter()
            .map(|e| {
                vec![
                    if e.epoch == 0 {
                        "0 (original)".into()
                    } else {
                        e.epoch.to_string()
                    },
                    e.train_loss
                        .map(|l| format!("{l:.4}"))
                        .unwrap_or_else(|| "-".into()),
                    e.train_accuracy
                        .map_or_else(|| "-".into(), |v| pct(Some(v))),
                    pct(e.val_clean),
                    pct(e.val_robust),
                ]
            })
            .collect();
        out.push(Section {
            title: "Training".into(),
            blocks: vec![
                Block::Para(format!(
                    "Method {}, eps {}, {} epochs.",
                    t.method, t.eps, t.epochs
                )),
                Block::Table {
                    head: vec![
                        "epoch".into(),
                        "train loss".into(),
                        "train accuracy".into(),
                        "val clean accuracy".into(),
                        "val robust accuracy".into(),
                    ],
                    rows,
                },
            ],
        });
    }

    // Clean accuracy.
    let mut blocks = vec![Block::Para(format!(
        "Clean accuracy {}{}.",
        cells(&each(&|a| format!(
            "{} ({}/{})",
            pct(a.clean.accuracy),
            a.clean.correct,
            a.clean.labelled
        ))),
        if two {
            format!(" ({})", roles.join(" → "))
        } else {
            String::new()
        }
    ))];
    let k = audits.iter().map(|(_, a)| a.classes).max().unwrap_or(0);
    let many = k > MANY_CLASSES;
    let names: &[String] = audits
        .iter()
        .map(|(_, a)| a.class_names.as_slice())
        .find(|n| !n.is_empty())
        .unwrap_or(&[]);
    let name = |c: usize| label(c, names);
    let per = |a: &AuditReport, c: usize| a.clean.class(c).cloned();
    // Many classes: the primary audit's worst classes by recall, else every class.
    let listed: Vec<usize> = if many {
        r.primary()
            .clean
            .worst_classes(REPORT_ROWS)
            .iter()
            .map(|m| m.class)
            .collect()
    } else {
        (0..k).collect()
    };
    let rows: Vec<Vec<String>> = listed
        .iter()
        .copied()
        .filter(|c| {
            audits
                .iter()
                .any(|(_, a)| per(a, *c).is_some_and(|m| m.support > 0))
        })
        .map(|c| {
            vec![
                name(c),
                cells(&each(&|a| {
                    per(a, c).map(|m| m.support.to_string()).unwrap_or_default()
                })),
                cells(&each(&|a| pct(per(a, c).and_then(|m| m.precision)))),
                cells(&each(&|a| pct(per(a, c).and_then(|m| m.recall)))),
                cells(&each(&|a| pct(per(a, c).and_then(|m| m.f1)))),
            ]
        })
        .collect();
    if !rows.is_empty() {
        if many {
            blocks.push(Block::Para(format!(
                "{k} classes, {} with examples; the {} with the lowest recall{}:",
                r.primary()
                    .clean
                    .per_class
                    .iter()
                    .filter(|c| c.support > 0)
                    .count(),
                rows.len(),
                if two { " after hardening" } else { "" }
            )));
        }
        blocks.push(Block::Table {
            head: vec![
                "class".into(),
                "support".into(),
                "precision".into(),
                "recall".into(),
                "F1".into(),
            ],
            rows,
        });
        let a = r.primary();
        if many {
            let top = a.clean.top_confusions(REPORT_ROWS);
            if top.is_empty() {
                blocks.push(Block::Para(format!(
                    "No confusions{}: every labelled example was classified correctly.",
                    if two { " of the hardened model" } else { "" }
                )));
            } else {
                blocks.push(Block::Para(format!(
                    "The {} most frequent confusions{} (the full matrix is in report.json as its nonzero entries, `confusion_nonzero`):",
                    top.len(),
                    if two { " of the hardened model" } else { "" }
                )));
                blocks.push(Block::Table {
                    head: vec!["true class".into(), "predicted".into(), "examples".into()],
                    rows: top
                        .iter()
                        .map(|(t, p, n)| vec![name(*t), name(*p), n.to_string()])
                        .collect(),
                });
            }
        } else {
            let mut head = vec!["true \\ predicted".to_string()];
            head.extend((0..a.classes).map(|c| c.to_string()));
            let rows = a
                .clean
                .confusion
                .iter()
                .enumerate()
                .map(|(t, row)| {
                    let mut v = vec![name(t)];
                    v.extend(row.iter().map(|c| c.to_string()));
                    v
                })
                .collect();
            blocks.push(Block::Para(format!(
                "Confusion matrix{} (rows: true class, columns: predicted class):",
                if two { " of the hardened model" } else { "" }
            )));
            blocks.push(Block::Table { head, rows });
        }
    }
    out.push(Section {
        title: "Clean accuracy".into(),
        blocks,
    });

    // Robust accuracy.
    let eps_all = all_eps(&audits);
    if !eps_all.is_empty() {
        let mut blocks = vec![];
        for (role, a) in &audits {
            let Some(rb) = &a.robust else { continue };
            let attacks: Vec<String> = rb.attacks.iter().map(attack_desc).collect();
            blocks.push(Block::Para(format!(
                "{}Threat model: {:?} ball of radius eps intersected with the input range [{}, {}]; attacks {}{}. Every clean-correct labelled example is attacked ({} labelled); misclassified ones count as not robust. Every adversarial example was re-checked by a plain forward pass of the original model.",
                if two { format!("{role}: ") } else { String::new() },
                rb.norm,
                rb.range.0,
                rb.range.1,
                attacks.join(", "),
                if rb.cascade { ", run as a cascade (each on what the previous left robust)" } else { "" },
                rb.examples
            ).replace("Linf", "L∞")));
            let refused: u64 = rb
                .results
                .iter()
                .flat_map(|e| e.attacks.iter())
                .map(|x| x.refused)
                .sum();
            if refused > 0 {
                blocks.push(Block::Para(format!(
                    "{}{refused} adversarial example(s) reported by attacks failed the re-check and were not counted.",
                    if two { format!("{role}: ") } else { String::new() }
                )));
            }
        }
        let names = attack_names(&audits);
        let mut head = vec!["eps".to_string()];
        head.extend(names.iter().cloned());
        head.push("worst case".into());
        let rows = eps_all
            .iter()
            .map(|&eps| {
                let mut row = vec![eps.to_string()];
                for n in &names {
                    row.push(cells(&each(&|a| {
                        attack_acc(a, eps, n)
                            .map(|v| pct(Some(v)))
                            .unwrap_or("–".into())
                    })));
                }
                row.push(cells(&each(&|a| pct(worst(a, eps)))));
                row
            })
            .collect();
        blocks.push(Block::Table { head, rows });
        blocks.push(Block::Plot);
        let mut head = vec!["class".to_string()];
        head.extend(eps_all.iter().map(|e| format!("eps {e}")));
        // Many classes: the classes with the lowest robust accuracy at the largest eps.
        let robust_rows: Vec<usize> = if many {
            let a = r.primary();
            let last = eps_all.last().copied().unwrap_or(0.0);
            let acc = |c: usize| {
                eps_result(a, last)
                    .and_then(|e| e.per_class_robust_accuracy.get(c).copied().flatten())
            };
            let mut v: Vec<usize> = (0..k).filter(|c| acc(*c).is_some()).collect();
            v.sort_by(|x, y| {
                acc(*x)
                    .unwrap_or(0.0)
                    .total_cmp(&acc(*y).unwrap_or(0.0))
                    .then(x.cmp(y))
            });
            v.truncate(REPORT_ROWS);
            v
        } else {
            (0..k).collect()
        };
        let rows = robust_rows
            .iter()
            .copied()
            .map(|c| {
                let mut row = vec![name(c)];
                for &eps in &eps_all {
                    row.push(cells(&each(&|a| {
                        pct(eps_result(a, eps)
                            .and_then(|e| e.per_class_robust_accuracy.get(c).copied().flatten()))
                    })));
                }
                row
            })
            .collect();
        blocks.push(Block::Para(if many {
            format!(
                "Robust accuracy per class (worst case), the {} classes with the lowest at eps {}:",
                robust_rows.len(),
                eps_all.last().copied().unwrap_or(0.0)
            )
        } else {
            "Robust accuracy per class (worst case):".into()
        }));
        blocks.push(Block::Table { head, rows });
        out.push(Section {
            title: "Robust accuracy".into(),
            blocks,
        });

        let mut blocks = vec![];
        for (i, (role, a)) in audits.iter().enumerate() {
            if a.robust.is_some() {
                if two {
                    blocks.push(Block::Para(format!("{role}:")));
                }
                blocks.push(Block::Grid(i));
            }
        }
        out.push(Section {
            title: "Adversarial examples".into(),
            blocks,
        });
    }

    // Sanity checks.
    if audits.iter().any(|(_, a)| !a.sanity.is_empty()) {
        let first = audits
            .iter()
            .find(|(_, a)| !a.sanity.is_empty())
            .map(|x| x.1);
        let mut blocks = vec![];
        let mut head = vec!["check".to_string()];
        if two {
            head.extend(roles.iter().cloned());
        } else {
            head.push("status".into());
            head.push("evidence".into());
        }
        let rows = first
            .map(|f| {
                f.sanity
                    .iter()
                    .map(|c| {
                        let mut row = vec![c.title.clone()];
                        for (_, a) in &audits {
                            row.push(
                                a.sanity
                                    .iter()
                                    .find(|x| x.id == c.id)
                                    .map(|x| status_word(x.status).to_string())
                                    .unwrap_or_else(|| "not run".into()),
                            );
                        }
                        if !two {
                            row.push(c.evidence.clone());
                        }
                        row
                    })
                    .collect()
            })
            .unwrap_or_default();
        blocks.push(Block::Table { head, rows });
        for (role, a) in &audits {
            if two {
                blocks.push(Block::Para(format!("Evidence, {role}:")));
                blocks.push(Block::List(
                    a.sanity
                        .iter()
                        .map(|c| format!("{}: {}", c.id, c.evidence))
                        .collect(),
                ));
            }
            let flagged: Vec<String> = a
                .sanity
                .iter()
                .filter(|c| c.status == Status::Flagged)
                .map(|c| {
                    format!(
                        "FLAGGED{}: {}. What it means: {} What to do: {}",
                        if two {
                            format!(" ({role})")
                        } else {
                            String::new()
                        },
                        c.title,
                        c.meaning.as_deref().unwrap_or(""),
                        c.action.as_deref().unwrap_or("")
                    )
                })
                .collect();
            if !flagged.is_empty() {
                blocks.push(Block::List(flagged));
            }
        }
        out.push(Section {
            title: "Sanity checks".into(),
            blocks,
        });
    }

    // Gates.
    if !r.gates.is_empty() {
        let rows = r
            .gates
            .iter()
            .map(|g| {
                vec![
                    g.name.clone(),
                    format!("{:.2}%", 100.0 * g.threshold),
                    pct(g.value),
                    if g.passed { "passed" } else { "FAILED" }.into(),
                ]
            })
            .collect();
        out.push(Section {
            title: "Gates".into(),
            blocks: vec![Block::Table {
                head: vec![
                    "gate".into(),
                    "threshold".into(),
                    "value".into(),
                    "result".into(),
                ],
                rows,
            }],
        });
    }

    // Limits.
    let a = r.primary();
    let mut limits = vec![
        "Robust accuracy is an upper bound: attacks can only show that an example is breakable. An example no attack broke is not proven robust; nothing here is a certificate.".to_string(),
        "Only the threat model stated above (norm, eps, input range) is covered; other changes (rotations, noise, patches, distribution shift) are not.".to_string(),
        "The sanity checks catch common ways an evaluation goes wrong (gradient masking, randomness, saturated outputs); passing them does not prove the attacks were strong enough.".to_string(),
    ];
    if let Some(rb) = &a.robust {
        if let Some(e) = rb.results.last() {
            let n = rb.examples.max(1) as f64;
            let p = e.robust_accuracy;
            limits.push(format!(
                "Sampling error: the numbers come from {} labelled examples; at eps {} the worst case {} has a 95% interval of about ±{:.1} points (normal approximation).",
                rb.examples,
                e.eps,
                pct(Some(p)),
                100.0 * 1.96 * (p * (1.0 - p) / n).sqrt()
            ));
        }
    } else {
        limits.push(
            "No attacks were run (no --eps): this report says nothing about robustness.".into(),
        );
    }
    out.push(Section {
        title: "Limits".into(),
        blocks: vec![Block::List(limits)],
    });
    // What a reviewer reads first comes first; the facts behind it follow.
    const ORDER: [&str; 11] = [
        "Summary",
        super::compare::SECTION_TITLE,
        "Training",
        "Robust accuracy",
        "Adversarial examples",
        "Sanity checks",
        "Gates",
        "Clean accuracy",
        "Model",
        "Data",
        "Limits",
    ];
    out.sort_by_key(|s| {
        ORDER
            .iter()
            .position(|t| *t == s.title)
            .unwrap_or(ORDER.len())
    });
    out
}

/// An attack with its budget: `pgd (10 steps, 1 restart)`, `square (5000 queries)`.
pub fn attack_desc(s: &crate::robust::AttackSpec) -> String {
    match (s.budget(), s) {
        (Some((st, re)), _) => format!(
            "{} ({st} steps, {re} restart{})",
            s.name(),
            if re == 1 { "" } else { "s" }
        ),
        (None, crate::robust::AttackSpec::Square(c)) => format!("square ({} queries)", c.queries),
        _ => s.name().to_string(),
    }
}

/// The run's volatile facts as one line (kept last, apart, so comparisons can drop it).
pub fn meta_line(r: &Report) -> String {
    let mut s = format!("harden {}", r.meta.harden_version);
    if !r.meta.started.is_empty() {
        s += &format!(", started {}", r.meta.started);
    }
    if !r.meta.host.is_empty() {
        s += &format!(" on {}", r.meta.host);
    }
    s += &format!(", {:.1} s", r.meta.seconds);
    for m in &r.meta.audits {
        s += &format!(
            "; {} {:.1} s ({:.0} examples/s)",
            m.role, m.seconds, m.examples_per_second
        );
    }
    if !r.meta.epoch_seconds.is_empty() {
        let e: Vec<String> = r
            .meta
            .epoch_seconds
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect();
        s += &format!("; epoch seconds {}", e.join(", "));
    }
    s
}

fn all_eps(audits: &[(&str, &AuditReport)]) -> Vec<f32> {
    let mut v: Vec<f32> = vec![];
    for (_, a) in audits {
        for e in a.robust.iter().flat_map(|r| r.results.iter()) {
            if !v.contains(&e.eps) {
                v.push(e.eps);
            }
        }
    }
    v.sort_by(f32::total_cmp);
    v
}

fn attack_names(audits: &[(&str, &AuditReport)]) -> Vec<String> {
    let mut v: Vec<String> = vec![];
    for (_, a) in audits {
        for s in a.robust.iter().flat_map(|r| r.attacks.iter()) {
            if !v.iter().any(|n| n == s.name()) {
                v.push(s.name().to_string());
            }
        }
    }
    v
}

fn eps_result(a: &AuditReport, eps: f32) -> Option<&crate::robust::EpsResult> {
    a.robust
        .as_ref()
        .and_then(|r| r.results.iter().find(|e| e.eps == eps))
}

fn worst(a: &AuditReport, eps: f32) -> Option<f64> {
    eps_result(a, eps).map(|e| e.robust_accuracy)
}

fn attack_acc(a: &AuditReport, eps: f32, name: &str) -> Option<f64> {
    eps_result(a, eps).and_then(|e| {
        e.attacks
            .iter()
            .find(|x| x.attack == name)
            .map(|x| x.robust_accuracy)
    })
}
