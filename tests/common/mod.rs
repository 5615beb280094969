//! Shared helpers for integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use harden::classifier::{Classifier, RunOptions};
use harden::model::OnnxModel;
use harden::runtime::{OrtLocator, RuntimeChoice};
use harden::spec::{InputSpec, SpecArgs};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("fixtures").join(name)
}

/// `../shared/corpus`, or None (tests then skip, saying so).
pub fn corpus() -> Option<PathBuf> {
    let p = root().join("../shared/corpus");
    if p.join("MANIFEST.json").is_file() {
        Some(p)
    } else {
        eprintln!("skipping: ../shared/corpus is absent");
        None
    }
}

pub fn ort_locator() -> OrtLocator {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let explicit = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from);
    OrtLocator::standard(explicit, home.as_deref(), None)
}

/// Whether ONNX Runtime can be used. With HARDEN_REQUIRE_ORT set (CI), its absence fails.
pub fn ort_available() -> bool {
    match harden::runtime::ort_status(&ort_locator()) {
        Ok(_) => true,
        Err(e) => {
            if std::env::var_os("HARDEN_REQUIRE_ORT").is_some() {
                panic!("HARDEN_REQUIRE_ORT is set but ONNX Runtime is unusable: {e}");
            }
            eprintln!("skipping the ONNX Runtime part: {e}");
            false
        }
    }
}

pub fn options(runtime: RuntimeChoice) -> RunOptions {
    RunOptions {
        runtime,
        threads: 2,
        batch_size: 32,
        ort: ort_locator(),
        step_loop: None,
    }
}

/// Opens `model` for examples of `example_shape` with default input spec.
pub fn classifier(model: &Path, runtime: RuntimeChoice) -> (OnnxModel, InputSpec, Classifier) {
    let m = OnnxModel::load(model).unwrap();
    let spec = InputSpec::resolve(&m.classifier_input().unwrap(), &SpecArgs::default()).unwrap();
    let shape: Vec<usize> = spec.model_shape[1..]
        .iter()
        .map(|d| d.fixed().expect("fixed example dims"))
        .collect();
    let c = Classifier::open(&m, &spec, &shape, &options(runtime)).unwrap();
    (m, spec, c)
}

/// Asserts two logit tables agree to `rel` relative tolerance (scaled by the row's size).
pub fn assert_close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    let scale = a.iter().chain(b).fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= rel * scale.max(x.abs().max(y.abs())) + 1e-6,
            "{what}: value {i} differs: {x} vs {y} (scale {scale})"
        );
    }
}

/// A deterministic pseudo-random vector in [lo, hi].
pub fn lcg_vec(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * u
        })
        .collect()
}

/// The harden binary, quiet (CI set).
pub fn harden() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::cargo_bin("harden").unwrap();
    c.env("CI", "1");
    c
}

/// A fixture's path as a string.
pub fn f(name: &str) -> String {
    fixture(name).display().to_string()
}

/// Runs harden expecting exit code 2 with one stderr line containing `needle`, no panic.
pub fn fails_with(args: &[&str], needle: &str) {
    let out = harden().args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "args {args:?}: stderr {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "args {args:?}: want one line, got {stderr}");
    assert!(
        lines[0].contains(needle),
        "args {args:?}: '{}' does not mention '{needle}'",
        lines[0]
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Runs `c`, which must exit with 0 (else its stderr is shown); its output.
pub fn succeeds(c: &mut assert_cmd::Command) -> std::process::Output {
    let out = c.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `harden audit ARGS --json -`: the report's audit section (exit code 0 required).
pub fn audit_json(args: &[&str]) -> serde_json::Value {
    let out = succeeds(harden().arg("audit").args(args).args(["--json", "-"]));
    let mut report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["kind"], "audit");
    report["audit"].take()
}

/// A classifier model: graph input `x` of shape `input` (batch first), `nodes` ending in
/// `logits` `[batch, K]`, the default domain at `opset`, IR version 8.
pub fn classifier_proto(
    input: &[harden::model::Dim],
    nodes: Vec<harden::model::pb::NodeProto>,
    inits: Vec<harden::model::pb::TensorProto>,
    opset: i64,
) -> harden::model::pb::ModelProto {
    use harden::model::{float_value_info, pb, Dim};
    let batch = input.first().cloned().unwrap_or(Dim::Symbolic("N".into()));
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: opset,
        }],
        graph: Some(pb::GraphProto {
            name: "t".into(),
            node: nodes,
            initializer: inits,
            input: vec![float_value_info("x", input)],
            output: vec![float_value_info(
                "logits",
                &[batch, Dim::Symbolic("K".into())],
            )],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `harden audit` arguments of the golden MLP audit: the MLP fixture on the 20 tiny
/// examples, FGSM, PGD and Square at two eps, on tract (about a second); the model first.
pub const MLP_AUDIT: &[&str] = &[
    "fixtures/mlp.onnx",
    "--data",
    "fixtures/data/tiny.npz",
    "--runtime",
    "tract",
    "--threads",
    "1",
    "--eps",
    "0.02,0.05",
    "--attacks",
    "fgsm,pgd,square",
    "--square-queries",
    "100",
    "--seed",
    "3",
];

/// Compares `got` with tests/golden/NAME (or writes it with HARDEN_BLESS set).
pub fn golden(name: &str, got: &str) {
    let path = root().join("tests/golden").join(name);
    if std::env::var_os("HARDEN_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (HARDEN_BLESS=1 writes it)", path.display()));
    if want != got {
        let line = want
            .lines()
            .zip(got.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(want.lines().count().min(got.lines().count()));
        panic!(
            "{name} differs from the golden file at line {}:\nwant: {:?}\n got: {:?}\n(HARDEN_BLESS=1 rewrites it)",
            line + 1,
            want.lines().nth(line),
            got.lines().nth(line)
        );
    }
}
