//! Models as PyTorch's two exporters write them (fixtures/exporters/, made by
//! scripts/make_exporter_fixtures.py): each is inspected, opened as a classifier (batch-1
//! exports get their batch freed), and its `harden grad` gradient graph is run on tract
//! and ONNX Runtime; logits and the input gradient of the summed cross-entropy must match
//! torch autograd's (committed references) to 1e-4 relative.

mod common;

use common::harden;
use harden::classifier::Classifier;
use harden::model::OnnxModel;
use harden::runtime::{self, RuntimeChoice};
use harden::spec::{InputSpec, SpecArgs};
use ndarray::{ArrayD, IxDyn};

/// Every fixture and the network whose reference it shares.
const FIXTURES: &[(&str, &str)] = &[
    ("cnn_legacy_b1", "cnn"),
    ("cnn_legacy_dyn", "cnn"),
    ("cnn_dynamo_b1", "cnn"),
    ("cnn_dynamo_dyn", "cnn"),
    ("cnn_ir14", "cnn"),
    ("cnn_unused_inputs", "cnn"),
    ("shuffle_legacy_b1", "shuffle"),
    ("shuffle_legacy_dyn", "shuffle"),
    ("shuffle_dynamo_b1", "shuffle"),
    ("shuffle_dynamo_dyn", "shuffle"),
    ("dense_legacy_b1", "dense"),
    ("dense_legacy_dyn", "dense"),
    ("dense_dynamo_b1", "dense"),
    ("dense_dynamo_dyn", "dense"),
];

fn path(name: &str) -> String {
    common::f(&format!("exporters/{name}.onnx"))
}

/// torch's input, labels, logits and input gradient (see the script).
struct Reference {
    x: Vec<f32>,
    x_shape: Vec<usize>,
    y: Vec<usize>,
    logits: Vec<f32>,
    grad: Vec<f32>,
}

fn reference(net: &str) -> Reference {
    let text = std::fs::read_to_string(common::fixture(&format!("exporters/{net}.json"))).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let floats = |k: &str| -> Vec<f32> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let ints = |k: &str| -> Vec<usize> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect()
    };
    Reference {
        x: floats("x"),
        x_shape: ints("x_shape"),
        y: ints("y"),
        logits: floats("logits"),
        grad: floats("grad"),
    }
}

fn runtimes() -> Vec<RuntimeChoice> {
    let mut r = vec![RuntimeChoice::Tract];
    if common::ort_available() {
        r.push(RuntimeChoice::Ort);
    }
    r
}

/// Largest |a - b| over the largest |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-12f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn inspect_finds_nothing_missing() {
    for (name, _) in FIXTURES {
        let out = harden().args(["inspect", &path(name)]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{name}: {text}");
        if name.starts_with("shuffle_dynamo") {
            // Split (the dynamo exporter's `chunk`) gets its backward rule with the rules
            // registry (issue 18); until then it is the one op missing.
            assert!(
                text.contains("unsupported none") || text.contains("unsupported Split "),
                "{name}: {text}"
            );
        } else {
            assert!(text.contains("unsupported none"), "{name}: {text}");
        }
        let inputs = text.lines().filter(|l| l.starts_with("input ")).count();
        assert_eq!(inputs, 1, "{name}: {text}");
        let notes: Vec<&str> = text.lines().filter(|l| l.starts_with("note")).collect();
        match *name {
            "cnn_unused_inputs" => {
                assert_eq!(notes.len(), 1, "{text}");
                assert!(
                    notes[0].contains("input_2, input_3") && notes[0].contains("removed"),
                    "{text}"
                );
            }
            "cnn_ir14" => {
                assert_eq!(notes.len(), 1, "{text}");
                assert!(notes[0].contains("IR version 14 lowered to 8"), "{text}");
                assert!(text.contains("ir_version  8"), "{text}");
            }
            _ => assert!(notes.is_empty(), "{name}: {text}"),
        }
    }
}

#[test]
fn classifiers_open_and_batch_1_exports_are_freed() {
    for (name, net) in FIXTURES {
        let r = reference(net);
        let m = OnnxModel::load(std::path::Path::new(&path(name))).unwrap();
        let spec =
            InputSpec::resolve(&m.classifier_input().unwrap(), &SpecArgs::default()).unwrap();
        for choice in runtimes() {
            let mut c = Classifier::open(&m, &spec, &r.x_shape[1..], &common::options(choice))
                .unwrap_or_else(|e| panic!("{name} on {choice:?}: {e:#}"));
            assert_eq!(
                c.batch(),
                32,
                "{name} on {choice:?}: batch not freed (freed: {})",
                c.batch_freed()
            );
            assert_eq!(c.batch_freed(), name.ends_with("_b1"), "{name}");
            let logits = c.logits(&r.x).unwrap();
            let err = rel_err(logits.as_slice().unwrap(), &r.logits);
            assert!(err <= 1e-4, "{name} on {choice:?}: logits off by {err}");
        }
    }
}

#[test]
fn gradient_graphs_match_torch_autograd() {
    let dir = tempfile::tempdir().unwrap();
    for (name, net) in FIXTURES {
        let r = reference(net);
        let b = r.x_shape[0];
        let out = dir.path().join(format!("{name}_grad.onnx"));
        let run = harden()
            .args(["grad", &path(name), "--batch", &b.to_string(), "-o"])
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        if name.starts_with("shuffle_dynamo") && run.status.code() == Some(2) {
            // The dynamo exporter writes `chunk` as Split, whose backward rule comes with
            // the rules registry (issue 18); until then, that and only that is missing.
            assert!(
                stderr.contains("no backward rule for op Split"),
                "{name}: {stderr}"
            );
            eprintln!("{name}: {}", stderr.trim());
            continue;
        }
        assert_eq!(run.status.code(), Some(0), "{name}: {stderr}");
        let bytes = std::fs::read(&out).unwrap();
        let k = r.logits.len() / b;
        let mut onehot = vec![0f32; b * k];
        for (i, y) in r.y.iter().enumerate() {
            onehot[i * k + y] = 1.0;
        }
        let x = ArrayD::from_shape_vec(IxDyn(&r.x_shape), r.x.clone()).unwrap();
        let a = ArrayD::from_shape_vec(IxDyn(&[b, k]), onehot).unwrap();
        for choice in runtimes() {
            let mut rt = runtime::open(choice, &bytes, 1, &common::ort_locator())
                .unwrap_or_else(|e| panic!("{name} on {choice:?}: {e:#}"));
            let outs = rt
                .run(&[x.view(), a.view()])
                .unwrap_or_else(|e| panic!("{name} on {choice:?}: {e:#}"));
            let logits: Vec<f32> = outs[0].iter().copied().collect();
            let grad: Vec<f32> = outs[2].iter().copied().collect();
            let (el, eg) = (rel_err(&logits, &r.logits), rel_err(&grad, &r.grad));
            eprintln!("{name} on {choice:?}: logits {el:.2e}, gradient {eg:.2e}");
            assert!(el <= 1e-4, "{name} on {choice:?}: logits off by {el}");
            assert!(eg <= 1e-4, "{name} on {choice:?}: gradient off by {eg}");
        }
    }
}

#[test]
fn a_symbolic_example_dimension_is_named() {
    use harden::model::{self, pb, Dim};
    let dims = [
        Dim::Symbolic("batch".into()),
        Dim::Fixed(3),
        Dim::Symbolic("height".into()),
        Dim::Fixed(8),
    ];
    let mut flat = model::node("Flatten", "f", &["x"], &["logits"]);
    flat.attribute.push(pb::AttributeProto {
        name: "axis".into(),
        r#type: 2,
        i: 1,
        ..Default::default()
    });
    let m = common::classifier_proto(&dims, vec![flat], vec![], 13);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("symbolic.onnx");
    std::fs::write(&p, prost::Message::encode_to_vec(&m)).unwrap();
    let out = dir.path().join("g.onnx");
    common::fails_with(
        &["grad", p.to_str().unwrap(), "-o", out.to_str().unwrap()],
        "dimension 2 ('height') is symbolic",
    );
    assert!(!out.exists());
}

#[test]
fn training_graphs_build_with_shared_statistics() {
    // Hardening lifts the weights to graph inputs and splits trained BatchNormalizations;
    // their variances behind Identity (legacy DenseNet) must still be read as constants.
    use harden::autodiff::{trainable_params, training_graph, LossKind};
    for name in ["dense_legacy_dyn", "dense_dynamo_dyn", "cnn_dynamo_dyn"] {
        let r = reference(if name.starts_with("cnn") {
            "cnn"
        } else {
            "dense"
        });
        let m = OnnxModel::load(std::path::Path::new(&path(name))).unwrap();
        let params = trainable_params(&m.proto);
        assert!(!params.is_empty(), "{name}");
        let b = r.x_shape[0];
        let tg = training_graph(
            &m.proto,
            "input",
            &r.x_shape[1..],
            b,
            LossKind::CrossEntropy,
            &params,
        )
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let bytes = prost::Message::encode_to_vec(&tg.grad.proto);
        let k = r.logits.len() / b;
        let mut onehot = vec![0f32; b * k];
        for (i, y) in r.y.iter().enumerate() {
            onehot[i * k + y] = 1.0;
        }
        let x = ArrayD::from_shape_vec(IxDyn(&r.x_shape), r.x.clone()).unwrap();
        let a = ArrayD::from_shape_vec(IxDyn(&[b, k]), onehot).unwrap();
        let ps: Vec<ArrayD<f32>> = tg
            .param_shapes
            .iter()
            .zip(&tg.param_values)
            .map(|(s, v)| ArrayD::from_shape_vec(IxDyn(s), v.clone()).unwrap())
            .collect();
        for choice in runtimes() {
            let mut rt = runtime::open(choice, &bytes, 1, &common::ort_locator())
                .unwrap_or_else(|e| panic!("{name} on {choice:?}: {e:#}"));
            let mut views = vec![x.view(), a.view()];
            views.extend(ps.iter().map(|p| p.view()));
            let outs = rt
                .run(&views)
                .unwrap_or_else(|e| panic!("{name} on {choice:?}: {e:#}"));
            let grad: Vec<f32> = outs[2].iter().copied().collect();
            let eg = rel_err(&grad, &r.grad);
            assert!(eg <= 1e-4, "{name} on {choice:?}: gradient off by {eg}");
            assert_eq!(outs.len(), 3 + params.len());
        }
    }
}
