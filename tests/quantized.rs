//! INT8 QDQ models (fixtures/qdq, `scripts/make_qdq_fixtures.py`): they run on both
//! runtimes as ONNX Runtime (Python) runs them, `inspect` describes their quantization,
//! bad quantization and the QOperator format are refused with one line, gradients pass
//! through rounding as `--through-rounding` says, and hardening keeps them INT8 QDQ.

mod common;

use std::path::Path;

use harden::data::npy::NpySource;
use harden::data::DataSource;
use harden::runtime::RuntimeChoice;

fn qdq(name: &str) -> String {
    common::f(&format!("qdq/{name}"))
}

/// Member `name` of an .npz: (shape after the first dim, values).
fn member(npz: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let mut s = NpySource::open_npz_members(npz, name, None).unwrap();
    let shape = s.example_shape().to_vec();
    let (mut xs, mut ys) = (vec![], vec![]);
    while s.next_batch(64, &mut xs, &mut ys).unwrap() > 0 {}
    (shape, xs)
}

fn runtimes() -> Vec<RuntimeChoice> {
    let mut v = vec![RuntimeChoice::Tract];
    if common::ort_available() {
        v.push(RuntimeChoice::Ort);
    }
    v
}

/// Largest |a - b| and the number of values that differ by more than `tol`.
fn diff(a: &[f32], b: &[f32], tol: f32) -> (f32, usize) {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold((0f32, 0), |(m, n), (x, y)| {
        let d = (x - y).abs();
        (m.max(d), n + (d > tol) as usize)
    })
}

/// ONNX Runtime (optimizations on, as deployed: its fused integer QDQ kernels) gives
/// ONNX Runtime's Python logits exactly; tract computes each op as the ONNX spec defines
/// it and gives ONNX Runtime's logits with its graph optimizations off (`NAME_spec`)
/// exactly. The two differ on the per-channel uint8-activation models (ONNX Runtime's
/// u8 x s8 kernels: see fixtures/qdq/README.md), so the test also pins that they do.
#[test]
fn qdq_fixtures_match_onnx_runtime_on_both_runtimes() {
    let refs = common::fixture("qdq/reference.npz");
    for (model, x, kernels_differ) in [
        ("fmnist_cnn_qdq", "demo_x", true),
        ("fmnist_cnn_qdq_tensor", "demo_x", false),
        ("resnet_basic_qdq", "resnet_x", true),
        ("tiny_qdq", "tiny_x", false),
    ] {
        let (_, input) = member(&refs, x);
        let (_, fused) = member(&refs, model);
        let (_, spec) = member(&refs, &format!("{model}_spec"));
        let (worst, _) = diff(&fused, &spec, 0.0);
        assert_eq!(
            worst > 1e-3,
            kernels_differ,
            "{model}: fused vs spec {worst}"
        );
        for rt in runtimes() {
            let (_, _, mut c) = common::classifier(Path::new(&qdq(&format!("{model}.onnx"))), rt);
            let got: Vec<f32> = c.logits(&input).unwrap().iter().copied().collect();
            let want = if rt == RuntimeChoice::Tract {
                &spec
            } else {
                &fused
            };
            let (worst, n) = diff(&got, want, 1e-5);
            assert_eq!(
                n, 0,
                "{model} on {rt:?}: {n} values differ, by up to {worst}"
            );
        }
    }
}

#[test]
fn bad_quantization_is_refused_with_one_line() {
    for (file, needle) in [
        ("bad_zero_scale", "the scale 'w_scale' has the value 0; quantization scales must be positive"),
        ("bad_negative_scale", "the scale 'x_scale' has the value -0.02"),
        ("bad_zero_point", "the zero point 'x_zp' has the value 300, outside the uint8 range [0, 255]"),
        ("bad_unpaired_dq", "reads 'x_q', which Cast 'Cast -> x_q' computes; in the QDQ format every DequantizeLinear of a computed tensor follows a QuantizeLinear"),
        ("bad_int4", "uses int4; harden supports int8 and uint8"),
    ] {
        let m = qdq(&format!("{file}.onnx"));
        let data = common::f("data/tiny.npz");
        common::fails_with(&["audit", &m, "--data", &data], needle);
        common::fails_with(
            &["audit", &m, "--data", &data, "--eps", "0.1", "--attacks", "square"],
            needle,
        );
        common::fails_with(&[&m, "--eps", "0.1", "--data", &data], needle);
    }
}

#[test]
fn qoperator_models_are_refused_naming_the_op_and_the_qdq_flag() {
    let m = qdq("fmnist_cnn_qop.onnx");
    let data = common::f("data/tiny.npz");
    for args in [
        vec!["audit", &m, "--data", &data],
        vec![&m, "--eps", "0.1", "--data", &data],
    ] {
        common::fails_with(
            &args,
            "uses op QLinearConv, of the QOperator quantization format (integer kernels); harden supports the QDQ format (QuantizeLinear/DequantizeLinear around float ops): quantize with onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ)",
        );
    }
}

#[test]
fn inspect_describes_the_quantization() {
    let out = common::harden()
        .args(["inspect", &qdq("fmnist_cnn_qdq.onnx"), "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let q = &j["quantization"];
    assert_eq!(q["format"], "QDQ");
    assert_eq!(q["quantize_nodes"], 11);
    assert_eq!(q["dequantize_nodes"], 19);
    let w = q["weights"].as_array().unwrap();
    assert_eq!(w.len(), 8);
    let conv = w
        .iter()
        .find(|t| {
            t["tensor"] == "sequential/conv2d/Conv2D/ReadVariableOp:0_DequantizeLinear_Output"
        })
        .unwrap();
    assert_eq!(conv["int_type"], "int8");
    assert_eq!(conv["granularity"], "per-channel (axis 0, 32 channels)");
    assert!(conv["scale_min"].as_f64().unwrap() > 0.0);
    let acts = q["activations"].as_array().unwrap();
    assert_eq!(acts.len(), 11);
    assert!(acts
        .iter()
        .all(|t| t["int_type"] == "uint8" && t["granularity"] == "per-tensor"));
    // The per-tensor variant: int8 activations, per-tensor weights.
    let out = common::harden()
        .args(["inspect", &qdq("fmnist_cnn_qdq_tensor.onnx")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("quantized   QDQ (11 QuantizeLinear, 19 DequantizeLinear)"),
        "{text}"
    );
    assert!(!text.contains("per-channel"), "{text}");
    assert!(
        text.contains("activation sequential/conv2d/Relu:0 int8 per-tensor"),
        "{text}"
    );
    // The QOperator model: inspect still describes it and says why it is refused.
    let out = common::harden()
        .args(["inspect", &qdq("fmnist_cnn_qop.onnx")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("quantized   refused: node"), "{text}");
}

/// Every adversarial example an attack reports on a QDQ model (through the STE gradient)
/// is misclassified by the real quantized model, inside the eps-ball and the range.
#[test]
fn adversarial_examples_fool_the_real_quantized_model() {
    let model = qdq("fmnist_cnn_qdq.onnx");
    let data = common::f("data/tiny.npz");
    let (_, x) = member(Path::new(&data), "x");
    for rt in runtimes() {
        let name = if rt == RuntimeChoice::Tract {
            "tract"
        } else {
            "ort"
        };
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("adv.npz");
        let o = common::harden()
            .args(["attack", &model, "--data", &data, "--attack", "pgd"])
            .args(["--eps", "0.1", "--runtime", name, "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let (_, adv) = member(&out, "x_adv");
        let (_, y) = member(&out, "y");
        let (_, y_adv) = member(&out, "y_adv");
        let (_, _, mut c) = common::classifier(Path::new(&model), rt);
        let logits = c.logits(&adv).unwrap();
        let k = 10;
        let flat: Vec<f32> = logits.iter().copied().collect();
        let mut broken = 0;
        for (i, row) in flat.chunks(k).enumerate() {
            if y_adv[i] == y[i] {
                continue;
            }
            broken += 1;
            let pred = (0..k).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            assert_eq!(pred as f32, y_adv[i], "{name}: example {i}");
            assert_ne!(pred as f32, y[i], "{name}: example {i}");
            let len = adv.len() / y.len();
            for j in i * len..(i + 1) * len {
                assert!((adv[j] - x[j]).abs() <= 0.1 + 1e-6 && (0.0..=1.0).contains(&adv[j]));
            }
        }
        assert!(broken >= 10, "{name}: PGD broke only {broken} of 20");
    }
}

/// The masked fixture (Round in front of a linear model): with `ste` (the default) the
/// gradient attacks see through the rounding and APGD alone is as strong as Square, and
/// the report says the gradients are an approximation; with `zero` the gradient check
/// still fires and says why.
#[test]
fn straight_through_rounding_unmasks_the_rounded_model() {
    for rt in runtimes() {
        let name = if rt == RuntimeChoice::Tract {
            "tract"
        } else {
            "ort"
        };
        let base = [
            "fixtures/masked_round.onnx",
            "--data",
            "fixtures/data/masked.npz",
            "--eps",
            "0.45",
            "--attacks",
            "apgd-ce,square",
            "--square-queries",
            "300",
            "--runtime",
            name,
        ];
        let run = |rounding: &str| {
            let mut args = base.to_vec();
            args.extend(["--through-rounding", rounding]);
            common::audit_json(&args)
        };
        let check = |j: &serde_json::Value, id: &str| {
            j["sanity"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["id"] == id)
                .unwrap()
                .clone()
        };
        let ste = run("ste");
        assert_eq!(ste["model"]["rounding"]["through_rounding"], "ste");
        assert_eq!(ste["model"]["rounding"]["ops"]["Round"], 1);
        let atk = &ste["robust"]["results"][0]["attacks"];
        let (apgd, square) = (
            atk[0]["robust_accuracy"].as_f64().unwrap(),
            atk[1]["robust_accuracy"].as_f64().unwrap(),
        );
        assert!(
            apgd <= square + 0.02,
            "{name}: apgd {apgd}, square {square}"
        );
        let g = check(&ste, "input-gradients");
        assert_eq!(g["status"], "passed");
        assert!(g["evidence"]
            .as_str()
            .unwrap()
            .contains("straight-through approximation (--through-rounding ste)"));
        let zero = run("zero");
        assert_eq!(zero["model"]["rounding"]["approximated"], false);
        let g = check(&zero, "input-gradients");
        assert_eq!(g["status"], "flagged");
        assert!(g["evidence"]
            .as_str()
            .unwrap()
            .contains("--through-rounding zero passes no gradient"));
        assert_eq!(
            check(&zero, "white-box-beats-black-box")["status"],
            "flagged"
        );
    }
}

/// The fake-quantized training form of a QDQ model computes the same logits (its float
/// weights sit on the grid), trains float copies of exactly the int8/uint8 weights, and
/// exporting its untouched weights gives back the original integers.
#[test]
fn fake_quantized_training_form_is_the_quantized_model() {
    use harden::train::qdq::FakeQuant;
    let path = qdq("fmnist_cnn_qdq.onnx");
    let m = harden::model::OnnxModel::load(Path::new(&path)).unwrap();
    let fq = FakeQuant::of(&m).unwrap().unwrap();
    let params = harden::autodiff::trainable_params(&fq.model.proto);
    let mut want = fq.float_weights();
    want.sort();
    let mut got = params.clone();
    got.sort();
    // Conv and dense weights, dense biases (uint8); the int32 Conv biases stay.
    assert_eq!(got, want);
    assert_eq!(got.len(), 6);
    let refs = common::fixture("qdq/reference.npz");
    let (_, x) = member(&refs, "demo_x");
    let dir = tempfile::tempdir().unwrap();
    let fq_path = dir.path().join("fq.onnx");
    std::fs::write(&fq_path, fq.model.to_bytes()).unwrap();
    for rt in runtimes() {
        let (_, _, mut a) = common::classifier(Path::new(&path), rt);
        let (_, _, mut b) = common::classifier(&fq_path, rt);
        let la: Vec<f32> = a.logits(&x).unwrap().iter().copied().collect();
        let lb: Vec<f32> = b.logits(&x).unwrap().iter().copied().collect();
        // (ONNX Runtime folds the constant QuantizeLinear of the float weights and
        // fuses as it does for the original.)
        assert_eq!(la, lb, "fake-quantized form on {rt:?}");
    }
    // Export of the untouched float weights: the original integers, byte for byte.
    let g = fq.model.proto.graph.as_ref().unwrap();
    let updates: Vec<(String, Vec<f32>)> = params
        .iter()
        .map(|p| {
            let t = g.initializer.iter().find(|t| &t.name == p).unwrap();
            (p.clone(), harden::model::float_values(t).unwrap())
        })
        .collect();
    let out = fq.export(&m, &updates, &[]).unwrap();
    let (ga, gb) = (
        m.proto.graph.as_ref().unwrap(),
        out.proto.graph.as_ref().unwrap(),
    );
    assert_eq!(ga.node, gb.node);
    for (a, b) in ga.initializer.iter().zip(&gb.initializer) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.data_type, b.data_type);
        assert_eq!(
            harden::model::quant::int_values(a),
            harden::model::quant::int_values(b),
            "{}",
            a.name
        );
    }
}

/// Hardening a QDQ model trains through the fake-quantized graph and exports a model
/// with the input's QDQ structure and types, with changed int8 weights, that both
/// runtimes run; `--through-rounding zero` is refused for it.
#[test]
fn hardening_a_qdq_model_exports_a_qdq_model() {
    let model = qdq("fmnist_cnn_qdq.onnx");
    let data = common::f("data/tiny.npz");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("h.onnx");
    let o = common::harden()
        .args([
            &model,
            "--eps",
            "0.1",
            "--data",
            &data,
            "--audit-data",
            &data,
        ])
        .args([
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--attacks",
            "fgsm",
            "--lr",
            "0.01",
        ])
        // No validation split: the last epoch's weights are kept.
        .args(["--val-size", "0", "--runtime", "tract", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let a = harden::model::OnnxModel::load(Path::new(&model)).unwrap();
    let b = harden::model::OnnxModel::load(&out).unwrap();
    let (ga, gb) = (a.graph(), b.graph());
    assert_eq!(ga.node, gb.node, "same nodes");
    assert_eq!(ga.input, gb.input);
    assert_eq!(ga.output, gb.output);
    let mut changed = 0;
    for (x, y) in ga.initializer.iter().zip(&gb.initializer) {
        assert_eq!(
            (&x.name, x.data_type, &x.dims),
            (&y.name, y.data_type, &y.dims)
        );
        if x.data_type == 3
            && harden::model::quant::int_values(x) != harden::model::quant::int_values(y)
        {
            changed += 1;
        }
        if x.data_type == 1 {
            // Scales (and every other float) kept.
            assert_eq!(
                harden::model::float_values(x),
                harden::model::float_values(y),
                "{}",
                x.name
            );
        }
    }
    assert!(changed >= 3, "only {changed} int8 weight tensors changed");
    let meta: Vec<(&str, &str)> = b
        .proto
        .metadata_props
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()))
        .collect();
    assert!(
        meta.contains(&("harden.through_rounding", "ste")),
        "{meta:?}"
    );
    assert!(b.require_supported().is_ok());
    for rt in runtimes() {
        let (_, _, mut c) = common::classifier(&out, rt);
        let (_, x) = member(Path::new(&data), "x");
        let l = c.logits(&x).unwrap();
        assert!(l.iter().all(|v| v.is_finite()));
    }
    common::fails_with(
        &[
            &model,
            "--eps",
            "0.1",
            "--data",
            &data,
            "--through-rounding",
            "zero",
        ],
        "hardening a QDQ model trains its weights through QuantizeLinear",
    );
    // --recalibrate: same structure, new activation scales, recorded.
    let out2 = dir.path().join("r.onnx");
    let o = common::harden()
        .args([
            &model,
            "--eps",
            "0.1",
            "--data",
            &data,
            "--audit-data",
            &data,
        ])
        .args([
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--attacks",
            "fgsm",
            "--lr",
            "0.01",
        ])
        .args([
            "--val-size",
            "0",
            "--runtime",
            "tract",
            "--recalibrate",
            "-o",
        ])
        .arg(&out2)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let c = harden::model::OnnxModel::load(&out2).unwrap();
    assert_eq!(ga.node, c.graph().node);
    let scale = |m: &harden::model::OnnxModel| {
        let t = m
            .graph()
            .initializer
            .iter()
            .find(|t| t.name == "sequential/conv2d_1/Relu:0_scale")
            .unwrap();
        harden::model::float_values(t).unwrap()
    };
    assert_ne!(scale(&b), scale(&c));
    assert!(c
        .proto
        .metadata_props
        .iter()
        .any(|p| p.key == "harden.recalibrated" && p.value == "min/max"));
    common::fails_with(
        &[
            "models/fmnist_cnn.onnx",
            "--eps",
            "0.1",
            "--data",
            &data,
            "--recalibrate",
        ],
        "--recalibrate: the model has no quantized weights (not a QDQ model)",
    );
}

/// The INT8 demo model classifies the bundled slice as the float model does (within one
/// example of 20; on the full test set: 90.29% against 90.60%, see the README).
#[test]
fn int8_demo_model_keeps_the_float_accuracy() {
    let data = common::f("data/tiny.npz");
    for rt in ["tract", "ort"] {
        if rt == "ort" && !common::ort_available() {
            continue;
        }
        let acc = |m: &str| {
            common::audit_json(&[m, "--data", &data, "--runtime", rt])["clean"]["accuracy"]
                .as_f64()
                .unwrap()
        };
        let (f, q) = (
            acc("models/fmnist_cnn.onnx"),
            acc(&qdq("fmnist_cnn_qdq.onnx")),
        );
        assert!((f - q).abs() <= 0.05 + 1e-9, "{rt}: float {f}, int8 {q}");
    }
}

/// `--recalibrate` (min/max): recalibrating the untrained INT8 demo model on 20 images
/// gives scales near ONNX Runtime's (calibrated on 300 others), keeps ranges that start at
/// 0 (removed Relus) starting at 0, requantizes the int32 Conv biases to the new input
/// scale times the weight scale, and keeps the accuracy.
#[test]
fn recalibration_recomputes_activation_scales() {
    use harden::model::{float_values, quant::int_values, OnnxModel};
    use harden::spec::{InputSpec, SpecArgs};
    let path = qdq("fmnist_cnn_qdq.onnx");
    let m = OnnxModel::load(Path::new(&path)).unwrap();
    let spec = InputSpec::resolve(&m.classifier_input().unwrap(), &SpecArgs::default()).unwrap();
    let wrapped = spec.wrap(&m).unwrap();
    let data = common::f("data/tiny.npz");
    let (_, x) = member(Path::new(&data), "x");
    let opts = common::options(RuntimeChoice::Tract);
    let (r, changed) =
        harden::train::qdq::recalibrate(&m, &wrapped, &spec.input_name, &[28, 28, 1], &x, 8, &opts)
            .unwrap();
    assert_eq!(changed.len(), 7, "{changed:?}");
    let get = |m: &OnnxModel, n: &str| {
        m.graph()
            .initializer
            .iter()
            .find(|t| t.name == n)
            .unwrap()
            .clone()
    };
    for s in &changed {
        let (a, b) = (
            float_values(&get(&m, s)).unwrap()[0],
            float_values(&get(&r, s)).unwrap()[0],
        );
        assert!(b > a / 2.0 && b < a * 2.0, "{s}: {a} -> {b}");
        let z = s.replace("_scale", "_zero_point");
        let (za, zb) = (
            int_values(&get(&m, &z)).unwrap()[0],
            int_values(&get(&r, &z)).unwrap()[0],
        );
        if za == 0 {
            assert_eq!(zb, 0, "{z}");
        }
    }
    // The second Conv's bias: scale = its input's new scale x its weight's scale.
    let sx = float_values(&get(&r, "sequential/conv2d/Relu:0_scale")).unwrap()[0];
    let sw = float_values(&get(
        &r,
        "sequential/conv2d_1/Conv2D/ReadVariableOp:0_scale",
    ))
    .unwrap();
    let bs = float_values(&get(
        &r,
        "sequential/conv2d_1/BiasAdd/ReadVariableOp:0_quantized_scale",
    ))
    .unwrap();
    for (b, w) in bs.iter().zip(&sw) {
        assert_eq!(*b, sx * w);
    }
    let bias = |m: &OnnxModel| {
        let q = int_values(&get(
            m,
            "sequential/conv2d_1/BiasAdd/ReadVariableOp:0_quantized",
        ))
        .unwrap();
        let s = float_values(&get(
            m,
            "sequential/conv2d_1/BiasAdd/ReadVariableOp:0_quantized_scale",
        ))
        .unwrap();
        q.iter()
            .zip(&s)
            .map(|(q, s)| *q as f32 * s)
            .collect::<Vec<f32>>()
    };
    for (a, b) in bias(&m).iter().zip(bias(&r)) {
        assert!((a - b).abs() <= 0.5 * sx * sw.iter().fold(0f32, |m, v| m.max(*v)) + 1e-9);
    }
    assert!(r.require_supported().is_ok());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.onnx");
    std::fs::write(&out, r.to_bytes()).unwrap();
    for rt in ["tract", "ort"] {
        if rt == "ort" && !common::ort_available() {
            continue;
        }
        let acc = |p: &str| {
            common::audit_json(&[p, "--data", &data, "--runtime", rt])["clean"]["accuracy"]
                .as_f64()
                .unwrap()
        };
        let (a, b) = (acc(&path), acc(out.to_str().unwrap()));
        assert!((a - b).abs() <= 0.05 + 1e-9, "{rt}: {a} -> {b}");
    }
}

/// The INT8 ResNet (residual Adds between QDQ pairs, opset 17): gradient attacks through
/// the STE and a one-epoch hardening that exports the same QDQ graph, on both runtimes.
#[test]
fn int8_resnet_is_attacked_and_hardened() {
    let model = qdq("resnet_basic_qdq.onnx");
    let data = common::f("arch/resnet_basic.npz");
    for rt in runtimes() {
        let name = if rt == RuntimeChoice::Tract {
            "tract"
        } else {
            "ort"
        };
        let j = common::audit_json(&[
            &model,
            "--data",
            &data,
            "--eps",
            "0.03",
            "--attacks",
            "pgd",
            "--runtime",
            name,
        ]);
        assert_eq!(
            j["model"]["rounding"]["ops"]["QuantizeLinear"], 21,
            "{name}"
        );
        let g = j["sanity"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == "input-gradients")
            .unwrap()
            .clone();
        assert_eq!(g["status"], "passed", "{name}: {g}");
        assert_eq!(
            j["robust"]["results"][0]["robust_accuracy"]
                .as_f64()
                .unwrap(),
            0.0,
            "{name}"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("h.onnx");
        let o = common::harden()
            .args([
                &model,
                "--eps",
                "0.03",
                "--data",
                &data,
                "--audit-data",
                &data,
            ])
            .args(["--epochs", "1", "--batch-size", "4", "--attacks", "fgsm"])
            .args(["--val-size", "0", "--runtime", name, "-o"])
            .arg(&out)
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let a = harden::model::OnnxModel::load(Path::new(&model)).unwrap();
        let b = harden::model::OnnxModel::load(&out).unwrap();
        assert_eq!(a.graph().node, b.graph().node, "{name}");
        assert!(b.require_supported().is_ok());
    }
}

/// The same QDQ model at opsets 13, 19 and 21: the same logits and STE gradients on both
/// runtimes.
#[test]
fn qdq_opsets_13_to_21() {
    use harden::autodiff::{gradient_graph, set_through_rounding, LossKind, Rounding};
    let m = harden::model::OnnxModel::load(Path::new(&qdq("tiny_qdq.onnx"))).unwrap();
    let refs = common::fixture("qdq/reference.npz");
    let (_, x) = member(&refs, "tiny_x");
    let mut results: Vec<(i64, RuntimeChoice, Vec<f32>, Vec<f32>)> = vec![];
    for opset in [13, 19, 21] {
        let mut p = m.proto.clone();
        p.opset_import[0].version = opset;
        p.ir_version = if opset >= 21 { 10 } else { 9 };
        set_through_rounding(&mut p, Rounding::Ste);
        let mut fixed = p.clone();
        let g = fixed.graph.as_mut().unwrap();
        harden::model::set_value_shape(
            &mut g.input[0],
            &[harden::model::Dim::Fixed(5), harden::model::Dim::Fixed(4)],
        );
        let plain = prost::Message::encode_to_vec(&fixed);
        let gg = gradient_graph(&p, "x", &[4], 5, LossKind::Linear).unwrap();
        let bytes = prost::Message::encode_to_vec(&gg.proto);
        for rt in runtimes() {
            let xa = ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[5, 4]), x.clone()).unwrap();
            let mut r = harden::runtime::open(rt, &plain, 1, &common::ort_locator()).unwrap();
            let logits: Vec<f32> = r.run(&[xa.view()]).unwrap()[0].iter().copied().collect();
            let head = ndarray::ArrayD::from_shape_vec(
                ndarray::IxDyn(&[5, 3]),
                (0..15).map(|i| (i % 4) as f32 - 1.5).collect(),
            )
            .unwrap();
            let mut r = harden::runtime::open(rt, &bytes, 1, &common::ort_locator()).unwrap();
            let out = r.run(&[xa.view(), head.view()]).unwrap();
            let grad: Vec<f32> = out[2].iter().copied().collect();
            assert!(grad.iter().any(|v| *v != 0.0), "opset {opset} {rt:?}");
            results.push((opset, rt, logits, grad));
        }
    }
    for (opset, rt, l, g) in &results[1..] {
        assert_eq!(l, &results[0].2, "logits at opset {opset} on {rt:?}");
        assert_eq!(g, &results[0].3, "gradient at opset {opset} on {rt:?}");
    }
}

/// The report's model facts say how gradients pass the rounding.
#[test]
fn report_names_the_rounding_choice() {
    let dir = tempfile::tempdir().unwrap();
    let o = common::harden()
        .args([
            "audit",
            "fixtures/masked_round.onnx",
            "--data",
            "fixtures/data/masked.npz",
        ])
        .args(["--runtime", "tract", "--report"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(
        md.contains(
            "| gradients through rounding | ste (Round x1): straight-through approximation |"
        ),
        "{md}"
    );
}
