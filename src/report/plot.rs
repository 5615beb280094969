//! Robust accuracy versus eps as an inline SVG: clean accuracy at eps 0, one thin line per
//! attack, a thick line for the per-example worst case, and chance as a dashed line. With
//! two audits (before and after hardening) both worst cases are drawn.

use std::fmt::Write;

use super::esc;
use crate::audit::AuditReport;

const W: f64 = 640.0;
const H: f64 = 360.0;
const L: f64 = 56.0;
const R: f64 = 170.0;
const T: f64 = 20.0;
const B: f64 = 44.0;
const COLOURS: [&str; 6] = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
];

struct Series {
    label: String,
    colour: &'static str,
    width: f64,
    dash: bool,
    points: Vec<(f64, f64)>,
}

/// The plot of the given audits (role, audit), or `None` when none has robust results.
pub fn robust_vs_eps(audits: &[(&str, &AuditReport)]) -> Option<String> {
    let with: Vec<_> = audits.iter().filter(|(_, a)| a.robust.is_some()).collect();
    let first = with.first()?.1;
    let max_eps = with
        .iter()
        .flat_map(|(_, a)| {
            a.robust
                .iter()
                .flat_map(|r| r.results.iter().map(|e| e.eps))
        })
        .fold(0f32, f32::max) as f64;
    if max_eps <= 0.0 {
        return None;
    }
    let mut series = vec![];
    let two = with.len() > 1;
    for (role, a) in &with {
        let Some(rb) = &a.robust else { continue };
        let clean = a.clean.accuracy.unwrap_or(0.0);
        let prefix = if two {
            format!("{role}: ")
        } else {
            String::new()
        };
        if !two {
            for (i, name) in rb.attacks.iter().map(|s| s.name()).enumerate() {
                let mut pts = vec![(0.0, clean)];
                pts.extend(
                    rb.results
                        .iter()
                        .map(|e| (e.eps as f64, e.attacks[i].robust_accuracy)),
                );
                series.push(Series {
                    label: name.to_string(),
                    colour: COLOURS[i % COLOURS.len()],
                    width: 1.5,
                    dash: false,
                    points: pts,
                });
            }
        }
        let mut pts = vec![(0.0, clean)];
        pts.extend(rb.results.iter().map(|e| (e.eps as f64, e.robust_accuracy)));
        series.push(Series {
            label: format!("{prefix}worst case"),
            colour: if two && *role == "before" {
                "#7f7f7f"
            } else {
                "#d62728"
            },
            width: 3.0,
            dash: false,
            points: pts,
        });
    }
    let chance = 1.0 / first.classes.max(1) as f64;
    series.push(Series {
        label: "chance".into(),
        colour: "#555555",
        width: 1.0,
        dash: true,
        points: vec![(0.0, chance), (max_eps, chance)],
    });
    let x = |e: f64| L + (W - L - R) * e / max_eps;
    let y = |v: f64| T + (H - T - B) * (1.0 - v);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"plot\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"robust accuracy versus eps\">"
    );
    let _ = write!(
        s,
        "<rect x=\"{L}\" y=\"{T}\" width=\"{}\" height=\"{}\" fill=\"#fafafa\" stroke=\"#999\"/>",
        W - L - R,
        H - T - B
    );
    for i in 0..=5 {
        let v = i as f64 / 5.0;
        let _ = write!(
            s,
            "<line x1=\"{L}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#e0e0e0\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"end\">{:.0}%</text>",
            W - R,
            y(v),
            y(v),
            L - 6.0,
            y(v) + 4.0,
            100.0 * v
        );
    }
    let mut ticks: Vec<f64> = vec![0.0];
    for (_, a) in &with {
        for e in a.robust.iter().flat_map(|r| r.results.iter()) {
            if !ticks.iter().any(|t| (t - e.eps as f64).abs() < 1e-9) {
                ticks.push(e.eps as f64);
            }
        }
    }
    for t in ticks {
        let _ = write!(
            s,
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" text-anchor=\"middle\">{}</text>",
            x(t),
            x(t),
            H - B,
            H - B + 4.0,
            x(t),
            H - B + 17.0,
            t as f32
        );
    }
    let _ = write!(
        s,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\">eps ({:?})</text>",
        L + (W - L - R) / 2.0,
        H - 8.0,
        first.robust.as_ref().map(|r| r.norm)?
    );
    let _ = write!(
        s,
        "<text transform=\"translate(14 {:.1}) rotate(-90)\" font-size=\"12\" text-anchor=\"middle\">robust accuracy</text>",
        T + (H - T - B) / 2.0
    );
    for (i, ser) in series.iter().enumerate() {
        let pts: Vec<String> = ser
            .points
            .iter()
            .map(|(e, v)| format!("{:.1},{:.1}", x(*e), y(*v)))
            .collect();
        let dash = if ser.dash {
            " stroke-dasharray=\"5 4\""
        } else {
            ""
        };
        let _ = write!(
            s,
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"{}\"{dash} points=\"{}\"/>",
            ser.colour,
            ser.width,
            pts.join(" ")
        );
        if !ser.dash {
            for (e, v) in &ser.points {
                let _ = write!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"{}\" fill=\"{}\"/>",
                    x(*e),
                    y(*v),
                    ser.width + 1.0,
                    ser.colour
                );
            }
        }
        let ly = T + 10.0 + 18.0 * i as f64;
        let _ = write!(
            s,
            "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{}\" stroke-width=\"{}\"{dash}/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">{}</text>",
            W - R + 12.0,
            W - R + 36.0,
            ser.colour,
            ser.width,
            W - R + 42.0,
            ly + 4.0,
            esc(&ser.label)
        );
    }
    s.push_str("</svg>");
    Some(s)
}
