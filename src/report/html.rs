//! The report as one self-contained HTML file: inline CSS, the plot as inline SVG, images
//! as PNG data URIs; no script, no network.

use std::fmt::Write;

use super::content::{self, Block};
use super::{esc, images, plot, Report};
use crate::audit::AuditReport;

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.5em;border-bottom:2px solid #333;padding-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f0f0f0}td.flagged{background:#fde2e1;font-weight:bold}td.passed{background:#e3f5e1}td.failed{background:#fde2e1;font-weight:bold}
li.flagged{background:#fff4e5;margin:.3em 0;padding:.2em .4em}
.grid{display:flex;flex-wrap:wrap;gap:10px;margin:.5em 0}.pair{border:1px solid #ccc;padding:6px;font-size:.8em;text-align:center}
.pair img{width:84px;height:84px;image-rendering:pixelated;border:1px solid #888;margin:2px}.eps{font-weight:bold;margin-top:.6em}
footer{margin-top:2em;color:#777;font-size:.85em}";

/// The HTML report.
pub fn render(r: &Report) -> String {
    let audits = r.audits();
    let title = content::title(r);
    let mut s = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{}</title>\n<style>\n{CSS}\n</style>\n</head>\n<body>\n<h1>{}</h1>\n",
        esc(&title),
        esc(&title)
    );
    for sec in content::sections(r) {
        let _ = writeln!(s, "<h2>{}</h2>", esc(&sec.title));
        for b in &sec.blocks {
            match b {
                Block::Para(p) => {
                    let _ = writeln!(s, "<p>{}</p>", esc(p));
                }
                Block::List(items) => {
                    s.push_str("<ul>\n");
                    for i in items {
                        let class = if i.starts_with("FLAGGED") {
                            " class=\"flagged\""
                        } else {
                            ""
                        };
                        let _ = writeln!(s, "<li{class}>{}</li>", esc(i));
                    }
                    s.push_str("</ul>\n");
                }
                Block::Table { head, rows } => {
                    s.push_str("<table>\n<tr>");
                    for h in head {
                        let _ = write!(s, "<th>{}</th>", esc(h));
                    }
                    s.push_str("</tr>\n");
                    for row in rows {
                        s.push_str("<tr>");
                        for c in row {
                            let class = match c.as_str() {
                                "FLAGGED" => " class=\"flagged\"",
                                "FAILED" => " class=\"failed\"",
                                "passed" => " class=\"passed\"",
                                _ => "",
                            };
                            let _ = write!(s, "<td{class}>{}</td>", esc(c));
                        }
                        s.push_str("</tr>\n");
                    }
                    s.push_str("</table>\n");
                }
                Block::Plot => {
                    if let Some(svg) = plot::robust_vs_eps(&audits) {
                        let _ = writeln!(s, "<figure>{svg}<figcaption>Robust accuracy against eps: clean accuracy at 0, each attack, and the per-example worst case over all attacks.</figcaption></figure>");
                    }
                }
                Block::Grid(i) => grid(&mut s, audits[*i].1),
                Block::Pairs {
                    audit,
                    eps,
                    examples,
                } => pairs(&mut s, audits[*audit].1, *eps, examples),
            }
        }
    }
    let _ = writeln!(
        s,
        "<footer>{}</footer>\n</body>\n</html>",
        esc(&content::meta_line(r))
    );
    s
}

/// Clean image, adversarial image and perturbation for the kept examples of each eps.
fn grid(s: &mut String, a: &AuditReport) {
    let Some(rb) = &a.robust else { return };
    let Some(shape) = images::image_shape(a) else {
        s.push_str("<p>The inputs are not images; the Markdown report lists the examples.</p>\n");
        return;
    };
    let mut any = false;
    for e in &rb.results {
        if e.examples.is_empty() {
            continue;
        }
        any = true;
        let _ = writeln!(
            s,
            "<div class=\"eps\">eps {} (clean | adversarial | perturbation, scaled to ±eps)</div>\n<div class=\"grid\">",
            e.eps
        );
        for p in &e.examples {
            pair(s, a, rb.norm, e.eps, shape, p);
        }
        s.push_str("</div>\n");
    }
    if !any {
        s.push_str("<p>No adversarial example was found.</p>\n");
    }
}

/// One kept example: clean image, adversarial image, perturbation and caption.
fn pair(
    s: &mut String,
    a: &AuditReport,
    norm: crate::attack::Norm,
    eps: f32,
    shape: images::ImageShape,
    p: &crate::robust::AdvPair,
) {
    let (lo, hi) = a.input_spec.range;
    let clean = images::png_uri(&p.clean, shape, lo, hi).unwrap_or_default();
    let adv = images::png_uri(&p.adversarial, shape, lo, hi).unwrap_or_default();
    let scale = match norm {
        crate::attack::Norm::Linf => eps,
        crate::attack::Norm::L2 => p
            .adversarial
            .iter()
            .zip(&p.clean)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs())),
    };
    let diff = images::perturbation_uri(&p.adversarial, &p.clean, shape, scale).unwrap_or_default();
    let _ = writeln!(
        s,
        "<div class=\"pair\"><img src=\"{clean}\" alt=\"clean example {}\"><img src=\"{adv}\" alt=\"adversarial example {}\"><img src=\"{diff}\" alt=\"perturbation\"><br>#{}: label {} → {} ({}, {})</div>",
        p.example,
        p.example,
        p.example,
        esc(&crate::data::classes::label(p.label, &a.class_names)),
        esc(&crate::data::classes::label(
            p.adversarial_prediction,
            &a.class_names
        )),
        esc(&p.attack),
        crate::sanity::fmt_g(p.distance)
    );
}

/// The images of `examples` at `eps` that `a` kept (watched or in the grid).
fn pairs(s: &mut String, a: &AuditReport, eps: f32, examples: &[u64]) {
    let Some(rb) = &a.robust else { return };
    let Some(shape) = images::image_shape(a) else {
        return;
    };
    let Some(e) = rb.results.iter().find(|e| e.eps == eps) else {
        return;
    };
    let found: Vec<&crate::robust::AdvPair> = examples
        .iter()
        .filter_map(|id| {
            e.watched
                .iter()
                .chain(&e.examples)
                .find(|p| p.example == *id)
        })
        .collect();
    if found.is_empty() {
        return;
    }
    let _ = writeln!(
        s,
        "<div class=\"eps\">Robust in the baseline, broken now at eps {eps} (clean | adversarial | perturbation)</div>\n<div class=\"grid\">"
    );
    for p in found {
        pair(s, a, rb.norm, eps, shape, p);
    }
    s.push_str("</div>\n");
}
