//! The report: golden JSON and Markdown on fixtures, reproducibility, the HTML file, the
//! sanity checks (each fires on a model made to trip it, none on the demo model), the
//! gates' exit codes and the JUnit file, and the before/after rendering.
//!
//! Golden files live in tests/golden/; `HARDEN_BLESS=1 cargo test --test report` rewrites
//! them (review the diff).

mod common;

use std::path::{Path, PathBuf};

use common::{f, fails_with, golden, harden, root, MLP_AUDIT};
use serde_json::Value;

/// Runs `harden audit ARGS --report DIR` from the repository root (so paths in the report
/// are relative and stable); returns (exit code, report.json, report.md, report.html).
fn report(args: &[&str]) -> (i32, Value, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = harden()
        .current_dir(root())
        .arg("audit")
        .args(args)
        .arg("--report")
        .arg(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{args:?}: {stderr}"
    );
    let read = |n: &str| std::fs::read_to_string(dir.path().join(n)).unwrap();
    (
        out.status.code().unwrap(),
        serde_json::from_str(&read("report.json")).unwrap(),
        read("report.md"),
        read("report.html"),
    )
}

fn without_meta(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("meta");
    v
}

fn markdown_body(md: &str) -> &str {
    md.split(harden::report::markdown::META_MARKER)
        .next()
        .unwrap()
}

#[test]
fn golden_json_and_markdown() {
    let (code, json, md, html) = report(MLP_AUDIT);
    assert_eq!(code, 0);
    assert_eq!(json["schema_version"], 3);
    assert_eq!(json["kind"], "audit");
    // Everything volatile is under meta, and only there.
    let meta = &json["meta"];
    assert!(meta["seconds"].as_f64().unwrap() > 0.0);
    assert!(!meta["harden_version"].as_str().unwrap().is_empty());
    assert!(meta["started"].as_str().unwrap().ends_with('Z'));
    golden(
        "audit_mlp.json",
        &(harden::report::json::to_string(&without_meta(json.clone())).unwrap() + "\n"),
    );
    golden("audit_mlp.md", markdown_body(&md));
    // The Markdown and HTML tell the same numbers as the JSON.
    let worst = json["audit"]["robust"]["results"][1]["robust_accuracy"]
        .as_f64()
        .unwrap();
    let s = format!("{:.2}%", 100.0 * worst);
    assert!(md.contains(&s) && html.contains(&s), "{s}");
}

#[test]
fn same_seed_same_report() {
    let mut runtimes = vec!["tract"];
    if common::ort_available() {
        runtimes.push("ort");
    }
    for rt in runtimes {
        let args: Vec<&str> = MLP_AUDIT
            .iter()
            .map(|a| if *a == "tract" { rt } else { a })
            .collect();
        let (_, a, md_a, _) = report(&args);
        let (_, b, md_b, _) = report(&args);
        assert_eq!(without_meta(a), without_meta(b), "{rt}");
        assert_eq!(markdown_body(&md_a), markdown_body(&md_b), "{rt}");
    }
}

#[test]
fn html_is_self_contained_with_plot_and_grid() {
    let (_, json, _, html) = report(MLP_AUDIT);
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("<svg") && html.contains("<polyline"), "plot");
    let kept: usize = json["audit"]["robust"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["examples"].as_array().unwrap().len())
        .sum();
    assert!(kept > 0);
    // Three images (clean, adversarial, perturbation) per kept example.
    assert_eq!(
        html.matches("src=\"data:image/png;base64,").count(),
        3 * kept
    );
    for bad in [
        "<script",
        "<link",
        "src=\"http",
        "href=\"http",
        "url(",
        "@import",
    ] {
        assert!(!html.contains(bad), "{bad}");
    }
}

/// The statuses of the sanity checks of a report's audit, by id.
fn statuses(json: &Value) -> Vec<(String, String)> {
    json["audit"]["sanity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["id"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn status(json: &Value, id: &str) -> String {
    statuses(json)
        .into_iter()
        .find(|(i, _)| i == id)
        .unwrap_or_else(|| panic!("no check {id}"))
        .1
}

fn runtimes() -> Vec<&'static str> {
    let mut v = vec!["tract"];
    if common::ort_available() {
        v.push("ort");
    }
    v
}

#[test]
fn softmax_output_is_flagged() {
    let (_, json, md, _) = report(&[
        "fixtures/mlp_matmul.onnx",
        "--data",
        "fixtures/data/tiny.npz",
        "--runtime",
        "tract",
    ]);
    assert_eq!(status(&json, "logits-output"), "flagged");
    let c = &json["audit"]["sanity"][0];
    assert!(c["meaning"].as_str().unwrap().contains("Softmax"));
    assert!(c["action"]
        .as_str()
        .unwrap()
        .contains("without its final Softmax"));
    assert!(md.contains("FLAGGED"));
    let (_, json, _, _) = report(&[
        "fixtures/mlp.onnx",
        "--data",
        "fixtures/data/tiny.npz",
        "--runtime",
        "tract",
    ]);
    assert_eq!(status(&json, "logits-output"), "passed");
    // Without attacks the attack checks say why they did not run.
    assert_eq!(status(&json, "budget-monotone"), "not_run");
}

#[test]
fn rounded_input_masks_gradients_and_is_flagged() {
    for rt in runtimes() {
        let (_, json, _, _) = report(&[
            "fixtures/masked_round.onnx",
            "--data",
            "fixtures/data/masked.npz",
            "--runtime",
            rt,
            "--eps",
            "0.45",
            "--attacks",
            "fgsm,pgd,square",
            "--square-queries",
            "300",
            // The exact derivative through Round (the default, ste, sees through it:
            // tests/quantized.rs).
            "--through-rounding",
            "zero",
        ]);
        assert_eq!(status(&json, "input-gradients"), "flagged", "{rt}");
        assert_eq!(status(&json, "large-eps-chance"), "flagged", "{rt}");
        assert_eq!(
            status(&json, "white-box-beats-black-box"),
            "flagged",
            "{rt}"
        );
        assert_eq!(status(&json, "logits-output"), "passed", "{rt}");
        assert_eq!(status(&json, "deterministic-forward"), "passed", "{rt}");
        // The gradient attacks report everything robust; Square shows it is not.
        let e = &json["audit"]["robust"]["results"][0];
        assert_eq!(e["attacks"][1]["robust_accuracy"], 1.0, "{rt}: pgd");
        assert!(e["robust_accuracy"].as_f64().unwrap() < 0.5, "{rt}");
    }
}

#[test]
fn trap_landscape_trips_the_attack_comparisons() {
    for rt in runtimes() {
        let base = [
            "fixtures/trap.onnx",
            "--data",
            "fixtures/data/trap.npz",
            "--runtime",
            rt,
            "--eps",
            "0.1",
            "--attacks",
            "fgsm,pgd",
        ];
        let (_, json, _, _) = report(&base);
        assert_eq!(
            status(&json, "iterative-beats-single-step"),
            "flagged",
            "{rt}"
        );
        assert_eq!(status(&json, "input-gradients"), "passed", "{rt}");
        let cross = &json["audit"]["robust"]["results"][0]["cross_checks"];
        assert_eq!(cross["single_step_beats_iterative"], 40, "{rt}");
        // With 2 steps PGD's big steps jump the trap; with 4 and a restart more they fall in.
        let mut two = base.to_vec();
        two.extend(["--steps", "2"]);
        let (_, json, _, _) = report(&two);
        assert_eq!(status(&json, "budget-monotone"), "flagged", "{rt}");
    }
}

#[test]
fn random_forward_pass_is_flagged() {
    for rt in runtimes() {
        let (_, json, _, _) = report(&[
            "fixtures/random_forward.onnx",
            "--data",
            "fixtures/data/tiny.npz",
            "--runtime",
            rt,
        ]);
        assert_eq!(status(&json, "deterministic-forward"), "flagged", "{rt}");
        let (_, json, _, _) = report(&[
            "fixtures/mlp.onnx",
            "--data",
            "fixtures/data/tiny.npz",
            "--runtime",
            rt,
        ]);
        assert_eq!(status(&json, "deterministic-forward"), "passed", "{rt}");
    }
}

/// The demo data: the installed test set, else the bundled slice.
fn demo_data() -> String {
    if Path::new("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file() {
        "fashion-mnist:test".into()
    } else {
        "data/fashion-mnist-slice".into()
    }
}

#[test]
fn demo_model_passes_every_check() {
    let data = demo_data();
    let rt = if common::ort_available() {
        "ort"
    } else {
        "tract"
    };
    let (code, json, _, _) = report(&[
        "models/fmnist_cnn.onnx",
        "--data",
        &data,
        "--limit",
        "200",
        "--runtime",
        rt,
        "--eps",
        "0.05",
        "--attacks",
        "fgsm,pgd,square",
        "--square-queries",
        "200",
    ]);
    assert_eq!(code, 0);
    for (id, st) in statuses(&json) {
        assert_eq!(st, "passed", "{id}: {}", json["audit"]["sanity"]);
    }
    assert_eq!(statuses(&json).len(), harden::sanity::ALL.len());
}

fn junit_cases(path: &Path) -> Vec<(String, bool)> {
    let text = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&text).expect("well-formed XML");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    let suites: Vec<_> = root.children().filter(|n| n.is_element()).collect();
    assert_eq!(suites.len(), 1);
    let suite = suites[0];
    assert_eq!(suite.tag_name().name(), "testsuite");
    // The attributes the JUnit schema requires, with the right counts.
    let num = |n: roxmltree::Node, a: &str| -> usize {
        n.attribute(a)
            .unwrap_or_else(|| panic!("{a} missing"))
            .parse()
            .unwrap()
    };
    assert!(suite.attribute("name").is_some());
    let cases: Vec<_> = suite
        .children()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    let failures = cases
        .iter()
        .filter(|c| c.children().any(|n| n.has_tag_name("failure")))
        .count();
    for n in [root, suite] {
        assert_eq!(num(n, "tests"), cases.len());
        assert_eq!(num(n, "failures"), failures);
        assert_eq!(num(n, "errors"), 0);
        n.attribute("time").unwrap().parse::<f64>().unwrap();
    }
    for n in suite.children().filter(|n| n.is_element()) {
        assert!(
            ["properties", "testcase", "system-out", "system-err"].contains(&n.tag_name().name()),
            "{:?}",
            n.tag_name()
        );
    }
    if let Some(ts) = suite.attribute("timestamp") {
        // ISO 8601 without a time zone, as the schema's xs:dateTime pattern wants.
        assert_eq!(ts.len(), 19, "{ts}");
    }
    cases
        .iter()
        .map(|c| {
            assert!(c.attribute("classname").is_some());
            c.attribute("time").unwrap().parse::<f64>().unwrap();
            let fail = c.children().find(|n| n.has_tag_name("failure"));
            if let Some(f) = fail {
                assert!(f.attribute("message").is_some() && f.attribute("type").is_some());
            }
            (c.attribute("name").unwrap().to_string(), fail.is_none())
        })
        .collect()
}

fn gate_run(extra: &[&str]) -> (i32, PathBuf, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let junit = dir.path().join("junit.xml");
    let out = harden()
        .args([
            "audit",
            &f("mlp.onnx"),
            "--data",
            &f("data/tiny.npz"),
            "--runtime",
            "tract",
            "--eps",
            "0.02,0.05",
            "--attacks",
            "fgsm,pgd",
            "--junit",
            junit.to_str().unwrap(),
            "--report",
            dir.path().join("r").to_str().unwrap(),
        ])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        junit,
        dir,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn gates_exit_codes_and_junit() {
    // The fixture: clean accuracy 65% on tiny.npz; robust accuracy lower.
    let (code, junit, dir, stdout) =
        gate_run(&["--min-clean-accuracy", "0.5", "--min-robust-accuracy", "0"]);
    assert_eq!(code, 0, "{stdout}");
    let cases = junit_cases(&junit);
    assert_eq!(
        cases,
        vec![
            ("clean-accuracy".to_string(), true),
            ("robust-accuracy@0.02".to_string(), true),
            ("robust-accuracy@0.05".to_string(), true),
        ]
    );
    assert!(dir.path().join("r/report.html").is_file());

    let (code, junit, dir, stdout) = gate_run(&["--min-robust-accuracy", "0.99"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("FAILED"), "{stdout}");
    let cases = junit_cases(&junit);
    assert_eq!(cases.len(), 2);
    assert!(cases.iter().all(|(_, ok)| !ok));
    // A missed gate still writes the report, and the report records it.
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("r/report.json")).unwrap())
            .unwrap();
    assert_eq!(r["gates"][0]["passed"], false);
    assert!(dir.path().join("r/report.md").is_file());

    let (code, _, _, _) = gate_run(&["--min-clean-accuracy", "0.99"]);
    assert_eq!(code, 1);
}

/// The --report folder is created only when the report is written, and the other
/// outputs may go into it: --json, --junit and --per-example inside a folder that does
/// not exist yet are all written there.
#[test]
fn outputs_go_into_a_report_folder_made_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let rep = dir.path().join("new/report");
    let at = |name: &str| rep.join(name).display().to_string();
    let rep_s = rep.display().to_string();
    let (json, junit, per) = (at("r.json"), at("gates.xml"), at("outcomes.jsonl"));
    common::succeeds(
        harden()
            .args(["audit", &f("mlp.onnx"), "--data", &f("data/tiny.npz")])
            .args(["--runtime", "tract", "--report", &rep_s, "--json", &json])
            .args(["--junit", &junit, "--per-example", &per])
            .args(["--min-clean-accuracy", "0"]),
    );
    for name in [
        "report.json",
        "report.html",
        "r.json",
        "gates.xml",
        "outcomes.jsonl",
    ] {
        assert!(rep.join(name).is_file(), "no {name}");
    }
}

#[test]
fn bad_report_flags_are_errors() {
    let mlp = f("mlp.onnx");
    let data = f("data/tiny.npz");
    let base = ["audit", &mlp, "--data", &data, "--runtime", "tract"];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run = |extra: &[&str], needle: &str| {
        let args = with(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, needle);
    };
    run(&["--min-clean-accuracy", "1.5"], "--min-clean-accuracy");
    run(&["--min-clean-accuracy", "-0.1"], "--min-clean-accuracy");
    run(&["--min-clean-accuracy", "abc"], "abc");
    run(
        &[
            "--eps",
            "0.1",
            "--attacks",
            "fgsm",
            "--min-robust-accuracy",
            "80",
        ],
        "--min-robust-accuracy",
    );
    run(&["--min-robust-accuracy", "0.5"], "needs attacks");
    run(
        &[
            "--min-clean-accuracy",
            "0.5",
            "--junit",
            "/nonexistent-dir/j.xml",
        ],
        "--junit",
    );
    run(&["--junit", "/tmp/j.xml"], "--junit writes the gates");
    let file = tempfile::NamedTempFile::new().unwrap();
    run(
        &["--report", file.path().to_str().unwrap()],
        "is a file, not a folder",
    );
    run(&["--report", "/proc/version/x"], "--report");
}

#[test]
fn before_and_after_side_by_side() {
    use harden::report::{EpochRow, Report, Training};
    let before = library_audit("mlp.onnx");
    let after = library_audit("mlp_matmul.onnx");
    let training = Training {
        method: "pgd-at".into(),
        eps: 0.05,
        epochs: 2,
        rows: vec![
            EpochRow {
                epoch: 1,
                lr: 1e-3,
                train_loss: Some(1.25),
                train_accuracy: Some(0.5),
                val_clean: Some(0.6),
                val_robust: Some(0.2),
                seconds: 3.5,
            },
            EpochRow {
                epoch: 2,
                lr: 1e-3,
                train_loss: Some(0.75),
                train_accuracy: Some(0.5),
                val_clean: Some(0.65),
                val_robust: Some(0.3),
                seconds: 3.25,
            },
        ],
        details: Value::Null,
    };
    let mut r = Report::hardening(before, after, training);
    r.stamp("0.0.0", 0, "host", 10.0);
    let json: Value = serde_json::from_str(&r.to_json().unwrap()).unwrap();
    assert_eq!(json["kind"], "hardening");
    assert!(json.get("audit").is_none());
    assert_eq!(
        json["meta"]["epoch_seconds"],
        serde_json::json!([3.5, 3.25])
    );
    assert!(json["training"]["rows"][0].get("seconds").is_none());
    let md = harden::report::markdown::render(&r);
    golden("hardening.md", markdown_body(&md));
    // The robustness card of a hardening: the hardened model's numbers, the original's.
    r.meta.command = vec![
        "harden".into(),
        "model.onnx".into(),
        "--eps".into(),
        "0.05".into(),
    ];
    r.add_card();
    golden("card_hardening.md", &harden::report::card::render(&r));
    // Side by side: one column per model in the facts, before → after in the metrics.
    assert!(md.contains("| fact | before | after |"), "{md}");
    assert!(md.contains(" → "), "{md}");
    assert!(md.contains("## Training"));
    let html = harden::report::html::render(&r);
    assert!(html.contains("<th>before</th><th>after</th>"));
    assert!(html.contains("before: worst case") && html.contains("after: worst case"));
    let dir = tempfile::tempdir().unwrap();
    harden::report::write_dir(&dir.path().join("out"), &r).unwrap();
    for n in ["report.json", "report.md", "report.html"] {
        assert!(dir.path().join("out").join(n).is_file());
    }
    assert!(harden::report::summary(&r).contains("after"));
}

/// An audit through the library, as the hardening command makes them (tract, fgsm+pgd).
fn library_audit(model: &str) -> harden::audit::AuditReport {
    use harden::audit::{run_audit, RobustPlan};
    use harden::oracle::ModelOracle;
    use harden::robust::{parse_attacks, AttackKnobs};
    use harden::spec::{DataMapping, InputSpec, SpecArgs};
    let path = format!("fixtures/{model}");
    let m = harden::model::OnnxModel::load(&root().join(&path)).unwrap();
    let mut m = m;
    m.path = PathBuf::from(&path);
    let spec = InputSpec::resolve(&m.classifier_input().unwrap(), &SpecArgs::default()).unwrap();
    let data = "fixtures/data/tiny.npz";
    let mut src = harden::data::open(root().join(data).to_str().unwrap(), None, None).unwrap();
    let mapping = DataMapping::new(&spec, src.example_shape(), src.kind()).unwrap();
    let opts = common::options(harden::runtime::RuntimeChoice::Tract);
    let c = harden::classifier::Classifier::open(&m, &spec, &mapping.example_shape, &opts).unwrap();
    let mut oracle = ModelOracle::new(&m, &spec, c, &opts).unwrap();
    let knobs = AttackKnobs {
        steps: None,
        restarts: 1,
        seed: 1,
        square_queries: None,
    };
    let (attacks, cascade) = parse_attacks("fgsm,pgd", &knobs).unwrap();
    let plan = RobustPlan {
        norm: harden::attack::Norm::Linf,
        eps: vec![0.02, 0.05],
        attacks,
        cascade,
    };
    let mut a = run_audit(
        &m,
        &spec,
        &mut oracle,
        src.as_mut(),
        data,
        &mapping,
        Some(&plan),
        &mut |_| {},
    )
    .unwrap();
    a.data.source = data.into();
    a
}
