//! The gates as a JUnit XML file (the Jenkins/Ant schema most CI systems read): one
//! `<testsuite>` named `harden`, one `<testcase>` per gate and per metric compared with a
//! baseline (`--baseline`), a `<failure>` for each miss.

use super::compare::Comparison;
use super::{esc, Gate, Report};

/// The JUnit XML of `r`'s gates and comparison with its baseline.
pub fn render(r: &Report) -> String {
    let a = r.primary();
    render_parts(
        &[
            ("model", a.model.path.as_str()),
            ("sha256", a.model.sha256.as_str()),
            ("runtime", a.runtime.as_str()),
            ("data", a.data.source.as_str()),
        ],
        &r.gates,
        r.baseline.as_ref(),
        &r.meta,
    )
}

/// The JUnit XML of gates and a comparison; `props` the suite's properties (`model`
/// first, which also names the suite).
pub fn render_parts(
    props: &[(&str, &str)],
    gates: &[Gate],
    baseline: Option<&Comparison>,
    meta: &super::Meta,
) -> String {
    use std::fmt::Write;
    let model = props.first().map(|p| p.1).unwrap_or_default();
    let compared = baseline.map(|c| c.metrics.as_slice()).unwrap_or(&[]);
    let failures =
        gates.iter().filter(|g| !g.passed).count() + compared.iter().filter(|m| m.failed).count();
    let tests = gates.len() + compared.len();
    let time = format!("{:.3}", meta.seconds);
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"harden\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" time=\"{time}\">"
    );
    let _ = writeln!(
        s,
        "  <testsuite name=\"harden {}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{time}\"{}{}>",
        esc(model),
        if meta.started.is_empty() {
            String::new()
        } else {
            format!(" timestamp=\"{}\"", esc(meta.started.trim_end_matches('Z')))
        },
        if meta.host.is_empty() {
            String::new()
        } else {
            format!(" hostname=\"{}\"", esc(&meta.host))
        }
    );
    let _ = writeln!(s, "    <properties>");
    for &(k, v) in props {
        let _ = writeln!(s, "      <property name=\"{k}\" value=\"{}\"/>", esc(v));
    }
    let _ = writeln!(s, "    </properties>");
    for g in gates {
        let open = format!(
            "    <testcase name=\"{}\" classname=\"harden.gate\" time=\"0\"",
            esc(&g.name)
        );
        if g.passed {
            let _ = writeln!(s, "{open}/>");
        } else {
            let _ = writeln!(s, "{open}>");
            let _ = writeln!(
                s,
                "      <failure message=\"{}\" type=\"threshold\">{}</failure>",
                esc(&g.line()),
                esc(&format!(
                    "{} is below the threshold {:.2}%",
                    g.name,
                    100.0 * g.threshold
                ))
            );
            let _ = writeln!(s, "    </testcase>");
        }
    }
    for m in compared {
        let open = format!(
            "    <testcase name=\"baseline {}\" classname=\"harden.baseline\" time=\"0\"",
            esc(&m.name)
        );
        if m.failed {
            let _ = writeln!(s, "{open}>");
            let _ = writeln!(
                s,
                "      <failure message=\"{}\" type=\"regression\">{}</failure>",
                esc(&m.line()),
                esc(&format!(
                    "{} dropped by {:.2} points (more than {:.2}) with McNemar p = {} (below {})",
                    m.name,
                    -100.0 * m.change,
                    100.0 * baseline.map_or(0.0, |c| c.max_drop),
                    super::compare::fmt_p(m.p_value),
                    baseline.map_or(0.0, |c| c.alpha)
                ))
            );
            let _ = writeln!(s, "    </testcase>");
        } else {
            let _ = writeln!(s, "{open}/>");
        }
    }
    let _ = writeln!(s, "  </testsuite>");
    s.push_str("</testsuites>\n");
    s
}
