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
