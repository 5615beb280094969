//! Comparison with a baseline (`audit --baseline`, `report diff`), per-example files and
//! the robustness card: a real drop (the demo model with one weight perturbed) must fail,
//! the same model with another seed must pass, bad baselines are errors naming the field;
//! golden files for the card and the comparison section.
//!
//! `HARDEN_BLESS=1 cargo test --test compare` rewrites the golden files (review the diff).

mod common;

use std::path::{Path, PathBuf};

use common::{f, fails_with, golden, harden, root, MLP_AUDIT};
use serde_json::Value;

/// The demo run: the demo model on the first 200 examples of the bundled slice, FGSM and
/// a 5-step PGD at eps 0.05 on tract (about a second).
const DEMO: &[&str] = &[
    "--data",
    "data/fashion-mnist-slice",
    "--limit",
    "200",
    "--runtime",
    "tract",
    "--threads",
    "1",
    "--eps",
    "0.05",
    "--attacks",
    "fgsm,pgd",
    "--steps",
    "5",
    "--no-sanity-checks",
];

/// DEMO with `over` (pairs of flag and value) replacing its values or added.
fn demo_with(over: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = DEMO.iter().map(|a| a.to_string()).collect();
    for pair in over.chunks(2) {
        match args.iter().position(|a| a == pair[0]) {
            Some(i) => args[i + 1] = pair[1].to_string(),
            None => args.extend(pair.iter().map(|a| a.to_string())),
        }
    }
    args
}

/// `harden audit MODEL DEMO` with `over` (see [`demo_with`]) from the repository root:
/// (exit code, stdout, stderr).
fn audit(model: &str, over: &[&str]) -> (i32, String, String) {
    let out = harden()
        .current_dir(root())
        .arg("audit")
        .arg(model)
        .args(demo_with(over))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// The demo model with one weight changed: the final layer's bias of class 6 raised by 4.
fn perturbed_demo(dir: &Path) -> PathBuf {
    let m = harden::model::OnnxModel::load(&root().join("models/fmnist_cnn.onnx")).unwrap();
    let name = "sequential/dense_1/BiasAdd/ReadVariableOp:0";
    let t = m
        .graph()
        .initializer
        .iter()
        .find(|t| t.name == name)
        .expect("the demo model's last bias");
    let mut v = harden::model::float_values(t).unwrap();
    assert_eq!(v.len(), 10);
    v[6] += 4.0;
    let p = m.with_updates(&[(name.to_string(), v)], &[]).unwrap();
    let path = dir.join("perturbed.onnx");
    std::fs::write(&path, p.to_bytes()).unwrap();
    path
}

fn metric<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["baseline"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
fn perturbed_weight_fails_other_seed_passes() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let (code, _, err) = audit("models/fmnist_cnn.onnx", &["--report", &s(&base)]);
    assert_eq!(code, 0, "{err}");
    let baseline = base.join("report.json");
    let b = read_json(&baseline);
    assert_eq!(b["schema_version"], 3);
    let per = b["audit"]["per_example"].as_array().unwrap();
    assert_eq!(per.len(), 200);

    // One weight perturbed: clean and robust accuracy drop, significantly.
    let model = perturbed_demo(dir.path());
    let new = dir.path().join("new");
    let junit = dir.path().join("junit.xml");
    let (code, out, err) = audit(
        &s(&model),
        &[
            "--baseline",
            &s(&baseline),
            "--report",
            &s(&new),
            "--junit",
            &s(&junit),
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("FAILED"), "{out}");
    let r = read_json(&new.join("report.json"));
    assert_eq!(r["baseline"]["passed"], false);
    for name in ["clean-accuracy", "robust-accuracy@0.05"] {
        let m = metric(&r, name);
        assert_eq!(m["failed"], true, "{m}");
        let lost = m["lost"].as_array().unwrap().len() as f64;
        let gained = m["gained"].as_array().unwrap().len() as f64;
        // The change is the paired difference over the 200 examples.
        let change = m["change"].as_f64().unwrap();
        assert!((change - (gained - lost) / 200.0).abs() < 1e-12, "{m}");
        assert!(
            change < -0.02 && m["p_value"].as_f64().unwrap() < 0.05,
            "{m}"
        );
    }
    // The lost examples now go to class 6 (the raised bias), cleanly or under attack.
    let lost = metric(&r, "clean-accuracy")["lost"].as_array().unwrap();
    assert!(lost.iter().all(|x| x["prediction"] == 6), "{lost:?}");
    let md = std::fs::read_to_string(new.join("report.md")).unwrap();
    assert!(md.contains("## Compared with the baseline"), "{md}");
    assert!(md.contains("90.00% → "), "{md}");
    let html = std::fs::read_to_string(new.join("report.html")).unwrap();
    assert!(html.contains("<h2>Compared with the baseline</h2>"));
    // The lost robust examples with their images (clean, adversarial, perturbation).
    let robust_lost = metric(&r, "robust-accuracy@0.05")["lost"]
        .as_array()
        .unwrap();
    let grid = html
        .split("Robust in the baseline, broken now at eps 0.05")
        .nth(1)
        .expect("the lost examples' images")
        .split("</div>\n</div>")
        .next()
        .unwrap();
    for x in robust_lost
        .iter()
        .take(harden::report::compare::FLIPS_SHOWN)
    {
        if x["attack"].is_string() {
            let alt = format!("alt=\"adversarial example {}\"", x["example"]);
            assert!(grid.contains(&alt), "{alt}");
        }
    }
    let xml = std::fs::read_to_string(&junit).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 2);
    assert!(cases
        .iter()
        .all(|c| c.attribute("classname") == Some("harden.baseline")
            && c.children().any(|n| n.has_tag_name("failure"))));
    // The card records the comparison too.
    let card = std::fs::read_to_string(new.join("card.md")).unwrap();
    assert!(card.contains("a significant drop"), "{card}");

    // `report diff` says the same from the two files.
    let out = harden()
        .args([
            "report",
            "diff",
            &s(&baseline),
            &s(&new.join("report.json")),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("## Compared with the baseline") && text.contains("FAILED"));
    // A lenient --max-drop passes the same drop.
    let out = harden()
        .args([
            "report",
            "diff",
            &s(&baseline),
            &s(&new.join("report.json")),
        ])
        .args(["--max-drop", "0.5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    // The same model with another attack seed: no significant drop.
    let other = dir.path().join("other");
    let (code, out, err) = audit(
        "models/fmnist_cnn.onnx",
        &[
            "--seed",
            "7",
            "--baseline",
            &s(&baseline),
            "--report",
            &s(&other),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    let r = read_json(&other.join("report.json"));
    assert_eq!(r["baseline"]["passed"], true);
    assert_eq!(r["baseline"]["baseline_seed"], 0);
    assert_eq!(r["baseline"]["seed"], 7);
    assert_eq!(metric(&r, "clean-accuracy")["p_value"], 1.0);
    let out = harden()
        .args([
            "report",
            "diff",
            &s(&baseline),
            &s(&other.join("report.json")),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    // Bad baselines: one line naming the field, exit 2, before any work.
    let with = |over: &[&str], needle: &str| {
        let (code, _, err) = audit("models/fmnist_cnn.onnx", over);
        assert_eq!(code, 2, "{over:?}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(lines[0].contains(needle), "{over:?}: {err}");
        assert!(!err.contains("panicked"));
    };
    let bl = s(&baseline);
    with(
        &["--baseline", &bl, "--eps", "0.03"],
        "robust.results[].eps",
    );
    with(&["--baseline", &bl, "--attacks", "fgsm"], "robust.attacks");
    with(&["--baseline", &bl, "--steps", "6"], "robust.attacks");
    with(&["--baseline", &bl, "--limit", "100"], "data.examples");
    with(&["--baseline", &bl, "--norm", "l2"], "robust.norm");
    with(
        &["--baseline", &bl, "--data", "data/fashion-mnist-slice:test"],
        "data.spec",
    );
    with(&["--baseline", &bl, "--max-drop", "2"], "--max-drop");
    with(&["--baseline", &bl, "--alpha", "0"], "--alpha");
    with(
        &["--baseline", &s(&dir.path().join("missing.json"))],
        "cannot read the report",
    );
    let text = std::fs::read_to_string(&baseline).unwrap();
    let edit = |name: &str, body: String| -> String {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        s(&p)
    };
    let old = edit(
        "old.json",
        text.replacen("\"schema_version\": 3", "\"schema_version\": 2", 1),
    );
    with(&["--baseline", &old], "`schema_version` is 2");
    let cut = edit("cut.json", text[..text.len() / 2].to_string());
    with(&["--baseline", &cut], "not a complete report JSON");
    let robust = b["audit"]["robust"]["results"][0]["robust"]
        .as_u64()
        .unwrap();
    let edited = edit(
        "edited.json",
        text.replacen(
            &format!("\"robust\": {robust},"),
            &format!("\"robust\": {},", robust + 1),
            1,
        ),
    );
    with(&["--baseline", &edited], "audit.robust.results[0].robust");
    let labels = edit(
        "labels.json",
        text.replacen(
            "{\"example\":3,\"label\":1,\"clean_prediction\":1,",
            "{\"example\":3,\"label\":2,\"clean_prediction\":2,",
            1,
        ),
    );
    assert_ne!(std::fs::read_to_string(&labels).unwrap(), text);
    with(&["--baseline", &labels], "per_example[3].label");
    let no_rows = edit(
        "no_rows.json",
        text.replacen("\"per_example\"", "\"per_examples\"", 1),
    );
    with(&["--baseline", &no_rows], "audit.per_example");
    fails_with(
        &["report", "diff", &cut, &s(&new.join("report.json"))],
        "not a complete report JSON",
    );
    fails_with(
        &["report", "diff", &bl, &s(&dir.path().join("nope.json"))],
        "cannot read the report",
    );
}

#[test]
fn per_example_files_agree_with_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("o.jsonl");
    let csv = dir.path().join("o.csv");
    let rep = dir.path().join("r");
    for file in [&jsonl, &csv] {
        let (code, _, err) = audit(
            "models/fmnist_cnn.onnx",
            &[
                "--limit",
                "40",
                "--per-example",
                &s(file),
                "--report",
                &s(&rep),
            ],
        );
        assert_eq!(code, 0, "{err}");
    }
    let r = read_json(&rep.join("report.json"));
    let per = r["audit"]["per_example"].as_array().unwrap();
    assert_eq!(per.len(), 40);
    let lines: Vec<Value> = std::fs::read_to_string(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 40);
    for (i, (line, row)) in lines.iter().zip(per).enumerate() {
        assert_eq!(line["audit"], "audit");
        assert_eq!(line["example"], i);
        let mut l = line.clone();
        l.as_object_mut().unwrap().remove("audit");
        assert_eq!(&l, row);
    }
    // The per-example records add up to the report's numbers.
    let correct = per
        .iter()
        .filter(|o| o["label"] == o["clean_prediction"])
        .count() as u64;
    assert_eq!(r["audit"]["clean"]["correct"], correct);
    let robust = per.iter().filter(|o| o["eps"][0]["robust"] == true).count() as u64;
    assert_eq!(r["audit"]["robust"]["results"][0]["robust"], robust);
    let pgd_broken = per
        .iter()
        .flat_map(|o| o["eps"][0]["attacks"].as_array().into_iter().flatten())
        .filter(|a| a["attack"] == "pgd" && a["broken"] == true)
        .count() as u64;
    assert_eq!(
        r["audit"]["robust"]["results"][0]["attacks"][1]["broken"],
        pgd_broken
    );
    // CSV: one row per example and attack that ran on it.
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut rows = text.lines();
    assert_eq!(rows.next(), Some(harden::report::outcomes::CSV_HEAD));
    let attacked: usize = per
        .iter()
        .map(|o| o["eps"][0]["attacks"].as_array().map_or(0, Vec::len).max(1))
        .sum();
    let rows: Vec<Vec<&str>> = rows.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), attacked);
    assert!(rows.iter().all(|r| r.len() == 12));
    let broken: Vec<&Vec<&str>> = rows.iter().filter(|r| r[7] == "true").collect();
    assert!(!broken.is_empty());
    for r in broken {
        let d: f32 = r[9].parse().unwrap();
        assert!(d > 0.0 && d <= 0.05 * 1.0001, "{r:?}");
        assert_ne!(r[8], r[2], "{r:?}");
    }
    // Evaluations spent within the budget: FGSM 2 (gradient, check); 5-step PGD at most 6,
    // fewer when it broke the example early.
    for r in rows.iter().filter(|r| !r[6].is_empty()) {
        let (spent, budget): (u64, u64) = (r[10].parse().unwrap(), r[11].parse().unwrap());
        assert!(spent >= 1 && spent <= budget, "{r:?}");
        match r[6] {
            "fgsm" => assert_eq!((spent, budget), (2, 2)),
            "pgd" => assert_eq!(budget, 6),
            other => panic!("{other}"),
        }
    }
    assert!(rows
        .iter()
        .any(|r| r[6] == "pgd" && r[7] == "true" && r[10].parse::<u64>().unwrap() < 6));
    fails_with(
        &[
            "audit",
            &f("mlp.onnx"),
            "--data",
            &f("data/tiny.npz"),
            "--per-example",
            &s(&dir.path().join("o.txt")),
        ],
        ".jsonl (JSON Lines) or .csv",
    );
}

/// `harden audit MODEL` with the golden MLP audit's flags and `--report DIR`, from the
/// repository root; the JSON.
fn mlp_report(model: &str, dir: &Path) -> String {
    let out = harden()
        .current_dir(root())
        .args(["audit", model])
        .args(&MLP_AUDIT[1..])
        .args(["--report", &s(dir)])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_to_string(dir.join("report.json")).unwrap()
}

#[test]
fn golden_card_and_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let a = mlp_report("fixtures/mlp.onnx", &dir.path().join("a"));
    // The card: the command line and version are the run's; the rest reproduces.
    let card = std::fs::read_to_string(dir.path().join("a/card.md"))
        .unwrap()
        .replace(&s(&dir.path().join("a")), "DIR")
        .replace(env!("CARGO_PKG_VERSION"), "VERSION");
    assert!(card.starts_with("---\n") && card.contains("model-index:"));
    assert!(card.contains("harden audit fixtures/mlp.onnx --data fixtures/data/tiny.npz"));
    golden("card_mlp.md", &card);
    let json: Value = serde_json::from_str(&a).unwrap();
    let mc = &json["model_card"];
    assert_eq!(mc["file"], "card.md");
    assert_eq!(mc["results"][0]["right"], json["audit"]["clean"]["correct"]);
    // The demo model and its perturbed copy on 60 examples: the comparison section.
    use harden::report::compare::{compare, markdown, Side};
    let model = perturbed_demo(dir.path());
    let mut texts = vec![];
    for (m, d) in [
        ("models/fmnist_cnn.onnx".to_string(), "c"),
        (s(&model), "d"),
    ] {
        let rep = dir.path().join(d);
        let (code, _, err) = audit(&m, &["--limit", "60", "--report", &s(&rep)]);
        assert!(code == 0 || code == 1, "{err}");
        texts.push(std::fs::read_to_string(rep.join("report.json")).unwrap());
    }
    let before = Side::parse("baseline/report.json", &texts[0]).unwrap();
    let after = Side::parse("report.json", &texts[1]).unwrap();
    let c = compare(&before, &after, 0.02, 0.05).unwrap();
    assert!(!c.passed);
    golden("diff_demo.md", &markdown(&c, "perturbed.onnx"));
    let before = Side::parse("baseline/report.json", &a).unwrap();
    // A report compared with itself: nothing lost or gained.
    let c = compare(&before, &before, 0.0, 0.05).unwrap();
    assert!(c.passed);
    assert!(c
        .metrics
        .iter()
        .all(|m| m.lost.is_empty() && m.gained.is_empty() && m.p_value == 1.0));
}

#[test]
fn card_in_the_hardened_model_and_files_follow_the_umask() {
    use sha2::Digest;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("h.onnx");
    let rep = dir.path().join("r");
    let per = dir.path().join("h.csv");
    let o = harden()
        .current_dir(root())
        .args([
            "fixtures/mlp.onnx",
            "--eps",
            "0.1",
            "--data",
            "data/fashion-mnist-slice:train",
            "--limit",
            "300",
            "--val-size",
            "50",
            "--audit-limit",
            "40",
            "--attacks",
            "fgsm",
            "--epochs",
            "1",
            "--batch-size",
            "50",
            "--runtime",
            "tract",
            "--card-in-model",
            "-o",
            &s(&out),
            "--report",
            &s(&rep),
            "--per-example",
            &s(&per),
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let m = harden::model::OnnxModel::load(&out).unwrap();
    let card = m
        .proto
        .metadata_props
        .iter()
        .find(|p| p.key == "harden.robustness_card")
        .map(|p| p.value.clone())
        .expect("the card in metadata_props");
    // The card in the model is the report folder's card.md.
    let file = std::fs::read_to_string(rep.join("card.md")).unwrap();
    assert_eq!(card, file);
    assert!(card.contains("## Hardening") && card.contains("Before hardening"));
    // The settings, nested keys by dots, f32 values as written.
    assert!(card.contains("\n- optim.kind: adam\n"), "{card}");
    assert!(card.contains("\n- eps: 0.1\n"), "{card}");
    assert!(card.contains("--card-in-model"), "the command line: {card}");
    // The report records the sha256 of the file as written (with its card).
    let r = read_json(&rep.join("report.json"));
    let sha: String = sha2::Sha256::digest(std::fs::read(&out).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(r["training"]["details"]["output_sha256"], sha.as_str());
    assert_eq!(r["model_card"]["hardening"]["method"], "fast");
    // Per-example rows of both audits.
    let text = std::fs::read_to_string(&per).unwrap();
    assert!(text.lines().any(|l| l.starts_with("before,")));
    assert!(text.lines().any(|l| l.starts_with("after,")));
    // Every file written has the permissions a plain File::create gives here.
    let plain = dir.path().join("plain");
    std::fs::File::create(&plain).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for p in [
        out.clone(),
        per.clone(),
        rep.join("report.json"),
        rep.join("report.html"),
        rep.join("card.md"),
    ] {
        assert_eq!(mode(&p), mode(&plain), "{}", p.display());
    }
}
