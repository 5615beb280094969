//! The gates as a JUnit XML file (the Jenkins/Ant schema most CI systems read): one
//! `<testsuite>` named `harden`, one `<testcase>` per gate, a `<failure>` for each miss.

use super::{esc, Report};

/// The JUnit XML of `r`'s gates.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let a = r.primary();
    let failures = r.gates.iter().filter(|g| !g.passed).count();
    let tests = r.gates.len();
    let time = format!("{:.3}", r.meta.seconds);
    let mut s = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        s,
        "<testsuites name=\"harden\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" time=\"{time}\">"
    );
    let _ = writeln!(
        s,
        "  <testsuite name=\"harden {}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{time}\"{}{}>",
        esc(&a.model.path),
        if r.meta.started.is_empty() {
            String::new()
        } else {
            format!(" timestamp=\"{}\"", esc(r.meta.started.trim_end_matches('Z')))
        },
        if r.meta.host.is_empty() {
            String::new()
        } else {
            format!(" hostname=\"{}\"", esc(&r.meta.host))
        }
    );
    let _ = writeln!(s, "    <properties>");
    for (k, v) in [
        ("model", a.model.path.as_str()),
        ("sha256", a.model.sha256.as_str()),
        ("runtime", a.runtime.as_str()),
        ("data", a.data.source.as_str()),
    ] {
        let _ = writeln!(s, "      <property name=\"{k}\" value=\"{}\"/>", esc(v));
    }
    let _ = writeln!(s, "    </properties>");
    for g in &r.gates {
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
    let _ = writeln!(s, "  </testsuite>");
    s.push_str("</testsuites>\n");
    s
}
