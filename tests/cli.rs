//! The binary: exit codes and one-line messages for bad input, and the happy paths.

mod common;

use common::{f, fails_with, harden};

#[test]
fn malformed_models_are_refused() {
    fails_with(&["inspect", &f("truncated.onnx")], "not a valid ONNX file");
    fails_with(&["inspect", &f("not_onnx.onnx")], "not a valid ONNX file");
    fails_with(&["inspect", &f("does_not_exist.onnx")], "cannot read model");
    fails_with(
        &["inspect", &f("external_missing.onnx")],
        "not found next to the model",
    );
    fails_with(
        &["inspect", &f("external_escape.onnx")],
        "outside the model's folder",
    );
}

#[test]
fn unsupported_op_is_named() {
    let out = harden()
        .args(["inspect", &f("unsupported_op.onnx")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("unsupported")).unwrap();
    assert!(!line.contains("none"), "{text}");
    fails_with(
        &[
            "audit",
            &f("unsupported_op.onnx"),
            "--data",
            &f("data/tiny.npz"),
        ],
        "which harden does not support",
    );
}

#[test]
fn bad_data_is_refused() {
    let mlp = f("mlp.onnx");
    fails_with(
        &["audit", &mlp, "--data", &f("data/wrong_shape.npz")],
        "data examples have shape",
    );
    fails_with(
        &["audit", &mlp, "--data", &f("data/bad_labels.npz")],
        "out of range",
    );
    fails_with(&["audit", &mlp, "--data", &f("data/nan.npz")], "non-finite");
    fails_with(
        &["audit", &mlp, "--data", "no-such-dataset"],
        "no-such-dataset",
    );
    fails_with(
        &["audit", &mlp, "--data", "fashion-mnist:validation"],
        "validation",
    );
}

#[test]
fn bad_flags_are_refused() {
    let mlp = f("mlp.onnx");
    let cnn = f("cnn_bn.onnx");
    let data = f("data/tiny.npz");
    fails_with(
        &["audit", &mlp, "--data", &data, "--input-range", "1,0"],
        "--input-range",
    );
    fails_with(
        &["audit", &mlp, "--data", &data, "--input-range", "0"],
        "--input-range",
    );
    fails_with(
        &["audit", &mlp, "--data", &data, "--layout", "nchw"],
        "--layout",
    );
    fails_with(
        &["audit", &cnn, "--data", &data, "--mean", "0.1,0.2"],
        "--mean has 2 values",
    );
    fails_with(&["audit", &cnn, "--data", &data, "--std", "0"], "--std");
    fails_with(&["audit", &mlp, "--data", &data, "--limit", "0"], "--limit");
    fails_with(
        &["audit", &mlp, "--data", &data, "--batch-size", "0"],
        "--batch-size",
    );
    fails_with(&["audit", &mlp, "--data", &data, "--runtime", "gpu"], "gpu");
    fails_with(&["audit", &mlp, "--frobnicate"], "--frobnicate");
}

#[test]
fn audit_json_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("report.json");
    let o = harden()
        .args([
            "audit",
            &f("mlp.onnx"),
            "--data",
            &f("data/tiny.npz"),
            "--runtime",
            "tract",
        ])
        .args(["--json", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    // The report: schema_version and kind at the top, the audit under `audit`, timings
    // only under `meta`.
    assert_eq!(report["schema_version"], 3);
    assert_eq!(report["kind"], "audit");
    assert!(report["meta"]["seconds"].as_f64().unwrap() > 0.0);
    let r = &report["audit"];
    assert!(r.get("meta").is_none());
    assert_eq!(r["runtime"], "tract");
    assert_eq!(r["data"]["examples"], 20);
    let correct = r["clean"]["correct"].as_u64().unwrap();
    let acc = r["clean"]["accuracy"].as_f64().unwrap();
    assert!((acc - correct as f64 / 20.0).abs() < 1e-12);
    let confusion: u64 = r["clean"]["confusion"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()))
        .sum();
    assert_eq!(confusion, 20);
    assert!(r["input_spec"]["guessed"].as_array().unwrap().len() >= 2);
    // Only temp-free output: the folder holds just the report.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn inspect_json_names_everything() {
    let o = harden()
        .args(["inspect", "--json", &f("mlp_matmul.onnx")])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["output_kind"], "probabilities");
    assert!(r["ops"]["MatMul"].as_u64().unwrap() >= 1);
    assert!(r["parameters"].as_u64().unwrap() > 7840);
    let o = harden()
        .args(["inspect", "--json", &f("mlp.onnx")])
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["output_kind"], "logits");
    assert_eq!(r["opset"], 13);
}

#[test]
fn unwritable_json_path_is_an_error() {
    fails_with(
        &[
            "audit",
            &f("mlp.onnx"),
            "--data",
            &f("data/tiny.npz"),
            "--runtime",
            "tract",
            "--json",
            "/nonexistent-dir/r.json",
        ],
        "cannot write",
    );
}

/// An audit whose runs go out of memory (simulated: `HARDEN_SIMULATE_OOM_ABOVE`) runs
/// again at half the batch size until they fit, says so, and reports what the audit
/// without the limit reports (its batch size apart); at one example it stops saying the model does not fit, and
/// with `--checkpoint` (whose batches are counted at the size asked for) it stops naming
/// `--batch-size` (exit 2, no report written).
#[test]
fn out_of_memory_audits_halve_the_batch() {
    if !common::ort_available() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mlp = f("mlp.onnx");
    let data = format!(
        "{}:test",
        common::root().join("data/fashion-mnist-slice").display()
    );
    let audit = |batch: &str, json: &std::path::Path, oom: Option<&str>, extra: &[&str]| {
        let mut c = harden();
        c.args([
            "audit", &mlp, "--data", &data, "--limit", "100", "--eps", "0.05",
        ])
        .args([
            "--attacks",
            "fgsm,pgd",
            "--runtime",
            "ort",
            "--threads",
            "1",
        ])
        .args(["--batch-size", batch, "--json", json.to_str().unwrap()])
        .args(extra);
        if let Some(n) = oom {
            c.env("HARDEN_SIMULATE_OOM_ABOVE", n);
        }
        c.output().unwrap()
    };
    let strip = |p: &std::path::Path| {
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        v["meta"] = serde_json::Value::Null;
        v["audit"]["meta"] = serde_json::Value::Null;
        v["audit"]["batch"] = serde_json::Value::Null;
        v
    };
    let want = d.path().join("want.json");
    let out = audit("64", &want, None, &[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let got = d.path().join("got.json");
    let out = audit("64", &got, Some("20"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    for line in [
        "ran out of memory at --batch-size 64;",
        "auditing again at --batch-size 32",
        "auditing again at --batch-size 16",
    ] {
        assert!(err.contains(line), "no '{line}' in: {err}");
    }
    assert!(!err.contains("--batch-size 8"), "{err}");
    assert_eq!(batch_of(&got), 16, "the batch size the audit ran at");
    assert_eq!(strip(&got), strip(&want), "the halved audit's report");
    // Where halving cannot help, or is not done: one line naming --batch-size.
    let never = d.path().join("never.json");
    let out = audit("4", &never, Some("0"), &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("running one example") && err.contains("do not fit"),
        "{err}"
    );
    assert!(!never.exists());
    let ck = d.path().join("audit.ckpt");
    let out = audit(
        "64",
        &never,
        Some("20"),
        &["--checkpoint", ck.to_str().unwrap()],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ran out of memory running 64 examples at once") && !err.contains("again"),
        "{err}"
    );
    assert!(!never.exists());
}

/// `harden attack` draws an example's random start from its position in the data, so
/// its adversarial examples do not depend on the batch size (128, 16); where its runs go
/// out of memory (simulated above 20 examples) it attacks again at half the batch size,
/// says so and writes the same file.
#[test]
fn attacks_do_not_depend_on_the_batch_and_halve_it_out_of_memory() {
    if !common::ort_available() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let data = format!(
        "{}:test",
        common::root().join("data/fashion-mnist-slice").display()
    );
    let attack = |batch: &str, oom: Option<&str>| {
        let out = d
            .path()
            .join(format!("b{batch}-{}.npz", oom.unwrap_or("free")));
        let mut c = harden();
        c.args(["attack", &f("mlp.onnx"), "--data", &data, "--limit", "150"])
            .args(["--attack", "pgd", "--eps", "0.05", "--runtime", "ort"])
            .args(["--threads", "1", "--batch-size", batch])
            .args(["--out", out.to_str().unwrap()]);
        if let Some(n) = oom {
            c.env("HARDEN_SIMULATE_OOM_ABOVE", n);
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(0), "{err}");
        (std::fs::read(&out).unwrap(), err)
    };
    let (want, _) = attack("128", None);
    let (small, _) = attack("16", None);
    assert!(
        small == want,
        "the batch size changed the adversarial examples"
    );
    let (halved, err) = attack("64", Some("20"));
    for line in [
        "ran out of memory at --batch-size 64; attacking again at --batch-size 32",
        "attacking again at --batch-size 16",
    ] {
        assert!(err.contains(line), "no '{line}' in: {err}");
    }
    assert!(halved == want, "the halved attack wrote other examples");
}

/// The batch size a report's audit ran at.
fn batch_of(p: &std::path::Path) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    v["audit"]["batch"].as_u64().unwrap()
}
