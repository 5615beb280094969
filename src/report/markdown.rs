//! The report as Markdown (GitHub-flavoured tables). Images and the plot live in the HTML
//! report; the Markdown lists the adversarial examples instead.

use std::fmt::Write;

use super::content::{self, Block};
use super::Report;
use crate::data::classes::label;

/// Marks the start of the volatile last lines (tests and diffs drop what follows).
pub const META_MARKER: &str = "<!-- meta: volatile -->";

fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn table(s: &mut String, head: &[String], rows: &[Vec<String>]) {
    let h: Vec<String> = head.iter().map(|c| cell(c)).collect();
    let _ = writeln!(s, "| {} |", h.join(" | "));
    let _ = writeln!(s, "|{}", "---|".repeat(head.len()));
    for r in rows {
        let r: Vec<String> = r.iter().map(|c| cell(c)).collect();
        let _ = writeln!(s, "| {} |", r.join(" | "));
    }
    s.push('\n');
}

/// The Markdown report.
pub fn render(r: &Report) -> String {
    let mut s = format!("# {}\n\n", content::title(r));
    let audits = r.audits();
    for sec in content::sections(r) {
        let _ = writeln!(s, "## {}\n", sec.title);
        for b in &sec.blocks {
            match b {
                Block::Grid(i) => grid(&mut s, audits[*i].1),
                b => block(&mut s, b),
            }
        }
    }
    let _ = writeln!(s, "{META_MARKER}\n_{}_", content::meta_line(r));
    s
}

/// One section without images (the comparison of `harden report diff`).
pub fn render_section(s: &mut String, sec: &content::Section) {
    let _ = writeln!(s, "## {}\n", sec.title);
    for b in &sec.blocks {
        block(s, b);
    }
}

fn block(s: &mut String, b: &Block) {
    match b {
        Block::Para(p) => {
            let _ = writeln!(s, "{p}\n");
        }
        Block::List(items) => {
            for i in items {
                let _ = writeln!(s, "- {i}");
            }
            s.push('\n');
        }
        Block::Table { head, rows } => table(s, head, rows),
        Block::Plot => {
            s.push_str("The plot of robust accuracy against eps is in report.html.\n\n");
        }
        // The images are in the HTML; the table above lists the examples.
        Block::Grid(_) | Block::Pairs { .. } => {}
    }
}

/// The kept adversarial examples of `a` as a table (the images are in the HTML).
fn grid(s: &mut String, a: &crate::audit::AuditReport) {
    let rows: Vec<Vec<String>> = a
        .robust
        .iter()
        .flat_map(|rb| rb.results.iter())
        .flat_map(|e| {
            e.examples.iter().map(move |p| {
                vec![
                    e.eps.to_string(),
                    p.example.to_string(),
                    label(p.label, &a.class_names),
                    label(p.adversarial_prediction, &a.class_names),
                    p.attack.clone(),
                    crate::sanity::fmt_g(p.distance),
                ]
            })
        })
        .collect();
    if rows.is_empty() {
        s.push_str("No adversarial example was found.\n\n");
    } else {
        s.push_str("The first adversarial examples found at each eps (images in report.html):\n\n");
        table(
            s,
            &[
                "eps".into(),
                "example".into(),
                "label".into(),
                "adversarial prediction".into(),
                "attack".into(),
                "distance".into(),
            ],
            &rows,
        );
    }
}
