//! The main command, `harden MODEL --eps E`: export, determinism, checkpoints and resume,
//! kills at random moments, bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use harden::classifier::Classifier;
use harden::model::OnnxModel;
use harden::runtime::RuntimeChoice;
use harden::spec::{InputSpec, SpecArgs};

fn slice(split: &str) -> String {
    format!(
        "{}:{split}",
        root().join("data/fashion-mnist-slice").display()
    )
}

/// Fast settings on the bundled slice: a small run that still trains.
fn quick(model: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let train = slice("train");
    let out = out.display().to_string();
    let defaults = [
        ("--eps", "0.1"),
        ("--data", train.as_str()),
        ("--limit", "600"),
        ("--val-size", "100"),
        ("--audit-limit", "60"),
        ("--attacks", "fgsm"),
        ("--batch-size", "50"),
        ("--attack-steps", "2"),
        ("--val-steps", "3"),
        ("-o", out.as_str()),
    ];
    let mut v = vec![model.to_string()];
    for (k, val) in defaults {
        if !extra.contains(&k) {
            v.extend([k.to_string(), val.to_string()]);
        }
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn run_ok(args: &[String]) -> String {
    let out = harden().args(args).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "args {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn runtimes() -> Vec<RuntimeChoice> {
    let mut v = vec![RuntimeChoice::Tract];
    if ort_available() {
        v.push(RuntimeChoice::Ort);
    }
    v
}

/// Logits of `model` on `x` (raw input) on `rt`.
fn logits(model: &Path, rt: RuntimeChoice, x: &[f32]) -> Vec<f32> {
    let m = OnnxModel::load(model).unwrap();
    let spec = InputSpec::resolve(&m.classifier_input().unwrap(), &SpecArgs::default()).unwrap();
    let shape: Vec<usize> = spec.model_shape[1..]
        .iter()
        .map(|d| d.fixed().unwrap())
        .collect();
    let mut c = Classifier::open(&m, &spec, &shape, &options(rt)).unwrap();
    c.logits(x).unwrap().iter().copied().collect()
}

fn float_inits(m: &OnnxModel) -> Vec<(String, Vec<f32>)> {
    m.graph()
        .initializer
        .iter()
        .filter(|t| t.data_type == 1)
        .map(|t| (t.name.clone(), harden::model::float_values(t).unwrap()))
        .collect()
}

fn metadata(m: &OnnxModel) -> Vec<(String, String)> {
    m.proto
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect()
}

/// The exported model keeps the original's graph, interface, opset and IR version.
fn assert_same_interface(a: &OnnxModel, b: &OnnxModel) {
    assert_eq!(a.proto.ir_version, b.proto.ir_version);
    assert_eq!(a.proto.opset_import, b.proto.opset_import);
    let (ga, gb) = (a.graph(), b.graph());
    assert_eq!(ga.input, gb.input);
    assert_eq!(ga.output, gb.output);
    assert_eq!(ga.node, gb.node);
    let names = |g: &harden::model::pb::GraphProto| {
        g.initializer
            .iter()
            .map(|t| (t.name.clone(), t.dims.clone(), t.data_type))
            .collect::<Vec<_>>()
    };
    assert_eq!(names(ga), names(gb));
}

#[test]
fn zero_epochs_export_equals_the_original_bit_for_bit() {
    let d = tempfile::tempdir().unwrap();
    for (model, n) in [
        ("mlp.onnx", 784),
        ("cnn_bn.onnx", 784),
        ("cnn_fixed_batch.onnx", 784),
    ] {
        let out = d.path().join(format!("{model}.hardened.onnx"));
        run_ok(&quick(&f(model), &out, &["--epochs", "0"]));
        let a = OnnxModel::load(&fixture(model)).unwrap();
        let b = OnnxModel::load(&out).unwrap();
        assert_same_interface(&a, &b);
        assert_eq!(float_inits(&a), float_inits(&b), "{model}");
        let md = metadata(&b);
        for key in [
            "harden.version",
            "harden.method",
            "harden.eps",
            "harden.epochs",
            "harden.robust_accuracy",
        ] {
            assert!(
                md.iter().any(|(k, _)| k == key),
                "{model}: no {key} in {md:?}"
            );
        }
        assert!(md.contains(&("harden.epochs".into(), "0".into())));
        let x = lcg_vec(3 * n, 7, 0.0, 1.0);
        for rt in runtimes() {
            let (la, lb) = (logits(&fixture(model), rt, &x), logits(&out, rt, &x));
            assert!(
                la.iter().zip(&lb).all(|(p, q)| p.to_bits() == q.to_bits()),
                "{model} on {rt:?}: outputs differ"
            );
        }
    }
}

#[test]
fn hardening_raises_robust_accuracy_and_keeps_the_interface() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("mlp.hardened.onnx");
    let rep = d.path().join("report");
    let stdout = run_ok(&quick(
        &f("mlp.onnx"),
        &out,
        &[
            "--epochs",
            "3",
            "--limit",
            "2000",
            "--method",
            "pgd",
            "--report",
            &rep.display().to_string(),
        ],
    ));
    assert!(
        stdout.contains("before") && stdout.contains("after"),
        "{stdout}"
    );
    let a = OnnxModel::load(&fixture("mlp.onnx")).unwrap();
    let b = OnnxModel::load(&out).unwrap();
    assert_same_interface(&a, &b);
    assert_ne!(float_inits(&a), float_inits(&b));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(rep.join("report.json")).unwrap()).unwrap();
    let worst = |k: &str| {
        r[k]["robust"]["results"][0]["robust_accuracy"]
            .as_f64()
            .unwrap()
    };
    let (before, after) = (worst("before"), worst("after"));
    assert!(after > before + 0.1, "robust accuracy {before} -> {after}");
    assert_eq!(r["kind"], "hardening");
    let hist = r["training"]["rows"].as_array().unwrap();
    assert_eq!(hist.len(), 4, "epoch 0 plus 3 epochs");
    let best = r["training"]["details"]["best_epoch"].as_u64().unwrap() as usize;
    let best_val = hist[best]["val_robust_accuracy"].as_f64().unwrap();
    assert!(hist
        .iter()
        .all(|h| h["val_robust_accuracy"].as_f64().unwrap() <= best_val));
    assert_eq!(r["meta"]["epoch_seconds"].as_array().unwrap().len(), 4);
    // Markdown and HTML beside the JSON, before and after side by side.
    let md = std::fs::read_to_string(rep.join("report.md")).unwrap();
    assert!(md.contains("| fact | before | after |") && md.contains("## Training"));
    assert!(std::fs::read_to_string(rep.join("report.html"))
        .unwrap()
        .contains("<svg"));
    // Every exported model runs on both runtimes.
    let x = lcg_vec(5 * 784, 3, 0.0, 1.0);
    let per_rt: Vec<Vec<f32>> = runtimes()
        .into_iter()
        .map(|rt| logits(&out, rt, &x))
        .collect();
    for l in &per_rt[1..] {
        assert_close(&per_rt[0], l, 1e-4, "hardened model across runtimes");
    }
}

#[test]
fn every_method_trains() {
    let d = tempfile::tempdir().unwrap();
    for method in ["mixed", "pgd", "fast", "trades"] {
        let out = d.path().join(format!("{method}.onnx"));
        let stdout = run_ok(&quick(
            &f("mlp.onnx"),
            &out,
            &["--epochs", "1", "--method", method, "--optimizer", "sgd"],
        ));
        assert!(stdout.contains(&format!("{method} Linf")), "{stdout}");
        let b = OnnxModel::load(&out).unwrap();
        let md = metadata(&b);
        assert!(md.contains(&("harden.method".into(), method.into())));
    }
}

fn ckpt_args(out: &Path, ck: &Path, extra: &[&str]) -> Vec<String> {
    let mut e = vec![
        "--epochs",
        "2",
        "--limit",
        "2000",
        "--checkpoint-dir",
        ck.to_str().unwrap(),
        "--checkpoint-every",
        "2",
    ];
    e.extend_from_slice(extra);
    quick(&f("mlp.onnx"), out, &e)
}

/// The weights of a model file.
fn weights(p: &Path) -> Vec<(String, Vec<f32>)> {
    float_inits(&OnnxModel::load(p).unwrap())
}

#[test]
fn kills_leave_no_partial_output_and_resume_reaches_the_uninterrupted_result() {
    let d = tempfile::tempdir().unwrap();
    // Reference: one uninterrupted run (tract: deterministic on every machine).
    let reference = d.path().join("ref.onnx");
    run_ok(&ckpt_args(
        &reference,
        &d.path().join("ck_ref"),
        &["--runtime", "tract"],
    ));
    let want = weights(&reference);
    // Kill runs at several moments, then resume each to the end.
    let exe = assert_cmd::cargo::cargo_bin("harden");
    let t_full = {
        let t = Instant::now();
        run_ok(&ckpt_args(
            &d.path().join("timing.onnx"),
            &d.path().join("ck_timing"),
            &["--runtime", "tract"],
        ));
        t.elapsed()
    };
    for (i, frac) in [0.05f64, 0.3, 0.6, 0.9].iter().enumerate() {
        let out = d.path().join(format!("killed{i}.onnx"));
        let ck = d.path().join(format!("ck{i}"));
        let mut child = std::process::Command::new(&exe)
            .args(ckpt_args(&out, &ck, &["--runtime", "tract"]))
            .env("CI", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs_f64(t_full.as_secs_f64() * frac));
        let _ = child.kill();
        let _ = child.wait();
        let had_ckpt = ck.join("harden.ckpt").exists();
        eprintln!(
            "killed at {frac} of {t_full:?}: output {}, checkpoint {had_ckpt}",
            out.exists()
        );
        // Either no output or a complete, valid model.
        if out.exists() {
            let m = OnnxModel::load(&out).expect("a complete model");
            logits(&out, RuntimeChoice::Tract, &lcg_vec(784, 1, 0.0, 1.0));
            drop(m);
        }
        if ck.join("harden.ckpt").exists() {
            run_ok(&ckpt_args(&out, &ck, &["--runtime", "tract", "--resume"]));
        } else {
            run_ok(&ckpt_args(&out, &ck, &["--runtime", "tract"]));
        }
        assert_eq!(
            weights(&out),
            want,
            "kill at {frac} of the run, then resume"
        );
    }
}

#[test]
fn resume_refuses_another_runs_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("a.onnx");
    let ck = d.path().join("ck");
    run_ok(&ckpt_args(&out, &ck, &["--runtime", "tract"]));
    let args = ckpt_args(
        &out,
        &ck,
        &["--runtime", "tract", "--resume", "--lr", "0.5"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_with(&args, "another model or other settings");
    let args = quick(
        &f("mlp.onnx"),
        &out,
        &[
            "--resume",
            "--checkpoint-dir",
            d.path().join("none").to_str().unwrap(),
        ],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fails_with(&args, "no checkpoint");
}

/// A model with no weights at all: y = Relu(x) on [N, 784] sliced to 10 classes.
fn weightless_model(dir: &Path) -> PathBuf {
    use harden::model::{self, pb, Dim};
    let mut g = pb::GraphProto {
        name: "weightless".into(),
        ..Default::default()
    };
    g.input.push(model::float_value_info(
        "x",
        &[Dim::Symbolic("N".into()), Dim::Fixed(784)],
    ));
    g.output.push(model::float_value_info(
        "y",
        &[Dim::Symbolic("N".into()), Dim::Fixed(10)],
    ));
    g.node.push(model::node("Relu", "r", &["x"], &["h"]));
    g.initializer.push(pb::TensorProto {
        name: "starts".into(),
        dims: vec![1],
        data_type: 7,
        int64_data: vec![0],
        ..Default::default()
    });
    g.initializer.push(pb::TensorProto {
        name: "ends".into(),
        dims: vec![1],
        data_type: 7,
        int64_data: vec![10],
        ..Default::default()
    });
    g.initializer.push(pb::TensorProto {
        name: "axes".into(),
        dims: vec![1],
        data_type: 7,
        int64_data: vec![1],
        ..Default::default()
    });
    g.node.push(model::node(
        "Slice",
        "s",
        &["h", "starts", "ends", "axes"],
        &["y"],
    ));
    let m = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(g),
        ..Default::default()
    };
    let p = dir.join("weightless.onnx");
    std::fs::write(&p, prost::Message::encode_to_vec(&m)).unwrap();
    p
}

#[test]
fn bad_input_gets_one_line_and_exit_2() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("o.onnx");
    let o = out.to_str().unwrap();
    let mlp = f("mlp.onnx");
    let train = slice("train");
    let base = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [mlp.as_str(), "--data", &train, "--limit", "300", "-o", o]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let check = |args: Vec<String>, needle: &str| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&a, needle);
        assert!(!out.exists(), "{args:?} wrote an output");
    };
    check(base(&["--eps", "0.1", "--method", "bogus"]), "bogus");
    check(base(&["--eps", "1.5"]), "covers the whole input range");
    check(base(&["--eps", "0"]), "--eps");
    check(base(&["--eps", "0.1", "--adv-ratio", "2"]), "--adv-ratio");
    check(base(&["--eps", "0.1", "--lr", "-1"]), "--lr");
    check(base(&["--eps", "0.1", "--batch-size", "0"]), "--batch-size");
    check(
        base(&["--eps", "0.1", "--train-eps", "-0.1"]),
        "--train-eps",
    );
    check(base(&["--eps", "0.1", "--train-eps", "2"]), "--train-eps");
    check(
        base(&["--eps", "0.1", "--min-robust-accuracy", "1.5"]),
        "--min-robust-accuracy",
    );
    check(base(&[]), "--eps");
    // One class only: the first examples of the tiny set relabelled.
    let one = d.path().join("one.npz");
    let x = lcg_vec(30 * 784, 5, 0.0, 1.0);
    let y = vec![3i64; 30];
    std::fs::write(
        &one,
        harden::npz::write_npz(&[
            ("x", harden::npz::Array::F32(&[30, 784], &x)),
            ("y", harden::npz::Array::I64(&[30], &y)),
        ])
        .unwrap(),
    )
    .unwrap();
    check(
        vec![
            mlp.clone(),
            "--eps".into(),
            "0.1".into(),
            "--data".into(),
            one.display().to_string(),
            "-o".into(),
            o.into(),
        ],
        "at least two classes",
    );
    // No trainable weights.
    let wl = weightless_model(d.path());
    check(
        vec![
            wl.display().to_string(),
            "--eps".into(),
            "0.1".into(),
            "--data".into(),
            train.clone(),
            "--limit".into(),
            "300".into(),
            "--audit-limit".into(),
            "20".into(),
            "--attacks".into(),
            "fgsm".into(),
            "-o".into(),
            o.into(),
        ],
        "no trainable weights",
    );
    // An output path that cannot be written: refused before any training.
    let t = Instant::now();
    fails_with(
        &[
            &mlp,
            "--eps",
            "0.1",
            "--data",
            &train,
            "-o",
            "/proc/harden-out.onnx",
        ],
        "cannot write /proc/harden-out.onnx",
    );
    assert!(t.elapsed() < Duration::from_secs(30));
    let ro = d.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    fails_with(
        &[
            &mlp,
            "--eps",
            "0.1",
            "--data",
            &train,
            "-o",
            ro.to_str().unwrap(),
        ],
        "is a folder",
    );
}

#[test]
fn update_bn_recomputes_statistics_from_the_training_data() {
    // cnn_bn: Conv(1->4, 3x3, pad 1) then BatchNormalization; the statistics must become
    // the per-channel mean and variance of the Conv output over the training images.
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("bn.onnx");
    run_ok(&quick(
        &f("cnn_bn.onnx"),
        &out,
        &[
            "--epochs",
            "0",
            "--update-bn",
            "--limit",
            "300",
            "--val-size",
            "0",
        ],
    ));
    let m = OnnxModel::load(&fixture("cnn_bn.onnx")).unwrap();
    let g = m.graph();
    let conv = g.node.iter().find(|n| n.op_type == "Conv").unwrap();
    let bn = g
        .node
        .iter()
        .find(|n| n.op_type == "BatchNormalization")
        .unwrap();
    assert_eq!(bn.input[0], conv.output[0]);
    let init = |m: &OnnxModel, name: &str| {
        harden::model::float_values(
            m.graph()
                .initializer
                .iter()
                .find(|t| t.name == name)
                .unwrap(),
        )
        .unwrap()
    };
    let (w, b) = (init(&m, &conv.input[1]), init(&m, &conv.input[2]));
    // The first 300 training images of the slice, mapped to [0, 1].
    let mut src = harden::data::open(&slice("train"), None, None).unwrap();
    let (mut xs, mut ys) = (vec![], vec![]);
    src.next_batch(300, &mut xs, &mut ys).unwrap();
    let x: Vec<f32> = xs.iter().map(|v| v / 255.0).collect();
    let (mut sum, mut sq) = ([0f64; 4], [0f64; 4]);
    for img in x.chunks(784) {
        for c in 0..4 {
            for i in 0..28i64 {
                for j in 0..28i64 {
                    let mut acc = b[c];
                    for di in 0..3i64 {
                        for dj in 0..3i64 {
                            let (r, s) = (i + di - 1, j + dj - 1);
                            if (0..28).contains(&r) && (0..28).contains(&s) {
                                acc +=
                                    w[c * 9 + (di * 3 + dj) as usize] * img[(r * 28 + s) as usize];
                            }
                        }
                    }
                    sum[c] += acc as f64;
                    sq[c] += (acc as f64).powi(2);
                }
            }
        }
    }
    let n = 300.0 * 784.0;
    let h = OnnxModel::load(&out).unwrap();
    let (mean, var) = (init(&h, &bn.input[3]), init(&h, &bn.input[4]));
    assert_ne!(mean, init(&m, &bn.input[3]), "statistics unchanged");
    for c in 0..4 {
        let em = sum[c] / n;
        let ev = sq[c] / n - em * em;
        assert!(
            (mean[c] as f64 - em).abs() <= 1e-4 * em.abs().max(1.0),
            "mean {c}: {} vs {em}",
            mean[c]
        );
        assert!(
            (var[c] as f64 - ev).abs() <= 1e-3 * ev.abs().max(1e-3),
            "var {c}: {} vs {ev}",
            var[c]
        );
    }
    // Weights untouched (0 epochs).
    assert_eq!(init(&h, &conv.input[1]), w);
}

/// Python with the onnx package ($HARDEN_PYTHON or python3), if present.
fn python_with_onnx() -> Option<String> {
    let py = std::env::var("HARDEN_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = std::process::Command::new(&py)
        .args(["-c", "import onnx"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping onnx.checker: no Python with the onnx package ({py})");
    }
    ok.then_some(py)
}

#[test]
fn exported_models_pass_onnx_checker() {
    let Some(py) = python_with_onnx() else {
        return;
    };
    let d = tempfile::tempdir().unwrap();
    let mut outs = vec![];
    for (model, epochs) in [
        ("mlp.onnx", "1"),
        ("cnn_bn.onnx", "1"),
        ("cnn_fixed_batch.onnx", "1"),
        ("mlp_matmul.onnx", "0"),
    ] {
        let out = d.path().join(format!("{model}.h.onnx"));
        run_ok(&quick(
            &f(model),
            &out,
            &["--epochs", epochs, "--runtime", "tract"],
        ));
        outs.push(out.display().to_string());
    }
    let script = "import onnx, sys\nfor p in sys.argv[1:]:\n    m = onnx.load(p)\n    onnx.checker.check_model(m, full_check=True)\n    assert any(e.key == 'harden.method' for e in m.metadata_props), p\nprint('ok', len(sys.argv) - 1)";
    let out = std::process::Command::new(&py)
        .arg("-c")
        .arg(script)
        .args(&outs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "onnx.checker: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 4");
}

#[test]
fn fixed_batch_models_train_in_batches_and_keep_their_interface() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("fixed.onnx");
    let stdout = run_ok(&quick(&f("cnn_fixed_batch.onnx"), &out, &["--epochs", "1"]));
    assert!(stdout.contains("1 epochs run"), "{stdout}");
    let a = OnnxModel::load(&fixture("cnn_fixed_batch.onnx")).unwrap();
    let b = OnnxModel::load(&out).unwrap();
    assert_same_interface(&a, &b);
    assert!(
        float_inits(&a) != float_inits(&b),
        "weights not trained: {stdout}"
    );
    let x = lcg_vec(784, 9, 0.0, 1.0);
    for rt in runtimes() {
        assert_eq!(logits(&out, rt, &x).len(), 10);
    }
}

#[test]
fn gates_judge_the_hardened_model() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("gated.onnx");
    let junit = d.path().join("gates.xml");
    let run = |gate: &str| {
        harden()
            .args(quick(
                &f("mlp.onnx"),
                &out,
                &[
                    "--epochs",
                    "0",
                    "--min-clean-accuracy",
                    "0.01",
                    "--min-robust-accuracy",
                    gate,
                    "--junit",
                    junit.to_str().unwrap(),
                ],
            ))
            .output()
            .unwrap()
    };
    let failed = run("0.99");
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    // A missed gate still leaves the hardened model and the gate file.
    assert!(out.is_file());
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<testcase").count(), 2, "{xml}");
    assert_eq!(xml.matches("<failure").count(), 1, "{xml}");
    let stdout = String::from_utf8_lossy(&failed.stdout);
    assert!(stdout.contains("gate"), "{stdout}");
    let passed = run("0.0");
    assert_eq!(passed.status.code(), Some(0), "{passed:?}");
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert_eq!(xml.matches("<failure").count(), 0, "{xml}");
    // A bad threshold is an error before any work.
    let bad = run("1.5");
    assert_eq!(bad.status.code(), Some(2));
}

/// The main command on the MLP on ONNX Runtime, one thread, PGD, with `extra` flags (and
/// `HARDEN_SIMULATE_OOM_ABOVE=oom`), into `dir/name.onnx` and its report `dir/name`:
/// the hardened weights, stderr and report.json.
fn hardened_mlp(
    dir: &Path,
    name: &str,
    extra: &[&str],
    oom: Option<&str>,
) -> (Vec<(String, Vec<f32>)>, String, serde_json::Value) {
    let out = dir.join(format!("{name}.onnx"));
    let rep = dir.join(name);
    let rep_s = rep.display().to_string();
    let mut flags = vec![
        "--runtime",
        "ort",
        "--threads",
        "1",
        "--method",
        "pgd",
        "--report",
        &rep_s,
    ];
    flags.extend_from_slice(extra);
    let mut c = assert_cmd::Command::cargo_bin("harden").unwrap();
    c.args(quick(&f("mlp.onnx"), &out, &flags)).env("CI", "1");
    if let Some(n) = oom {
        c.env("HARDEN_SIMULATE_OOM_ABOVE", n);
    }
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "{name}: {err}");
    let r = serde_json::from_slice(&std::fs::read(rep.join("report.json")).unwrap()).unwrap();
    (weights(&out), err, r)
}

/// A provider that fails mid-run (simulated: `HARDEN_SIMULATE_RUN_FAILURE=K`, the K-th
/// ONNX Runtime run and all later ones fail as CUDA's illegal memory access does), at the
/// first run and at two later ones (of some 90 runs with the bound step loop, 190 with
/// the host loop), with either loop:
/// one line naming ONNX Runtime's failure, exit 2, and nothing written (no hardened
/// model, no report folder, no temporary file).
#[test]
fn a_runtime_failing_mid_run_leaves_nothing_written() {
    if !ort_available() {
        return;
    }
    for step_loop in ["host", "bound"] {
        for k in ["1", "30", "60"] {
            let d = tempfile::tempdir().unwrap();
            let out = d.path().join("h.onnx");
            let rep = d.path().join("report");
            let extra = [
                "--runtime",
                "ort",
                "--threads",
                "1",
                "--epochs",
                "1",
                "--step-loop",
                step_loop,
                "--report",
                rep.to_str().unwrap(),
            ];
            let o = assert_cmd::Command::cargo_bin("harden")
                .unwrap()
                .args(quick(&f("mlp.onnx"), &out, &extra))
                .env("CI", "1")
                .env("HARDEN_SIMULATE_RUN_FAILURE", k)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(2), "{step_loop} {k}: {err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(
                err.starts_with(
                    "harden: error: onnxruntime failed to run the model: CUDA failure 700"
                ),
                "{err}"
            );
            let left: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
            assert!(left.is_empty(), "{step_loop} {k}: left {left:?}");
        }
    }
}

/// The largest difference between two models' weights.
fn weight_gap(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|((_, x), (_, y))| x.iter().zip(y))
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max)
}

/// `--step-loop bound` on ONNX Runtime trains with the weights and the optimiser's state
/// in the runtime's memory (`meta.train_weights: bound`) and hardens the MLP to the same
/// weights as the host loop (one thread: the same sums in the same order).
#[test]
fn bound_training_holds_the_weights_in_the_runtime_and_trains_the_same_model() {
    if !ort_available() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let mut got = vec![];
    for mode in ["host", "bound"] {
        let extra = ["--epochs", "1", "--step-loop", mode];
        let (w, _, r) = hardened_mlp(d.path(), mode, &extra, None);
        assert_eq!(r["meta"]["train_weights"], mode, "{mode}");
        assert_eq!(r["meta"]["step_loop"], mode);
        got.push(w);
    }
    assert!(got[0] == got[1], "bound training gave other weights");
}

/// Hardening whose runs go out of memory (simulated above 20 examples) goes on in smaller
/// runs and says so: the first audit at half the batch size, then a quarter (the second
/// starting there); training's graph runs and validation in runs that fit; with
/// `--step-loop bound` the weights leave the runtime's memory for the host. The batches
/// stay those asked for, so the hardened weights are the unconstrained run's up to the
/// order of sums.
#[test]
fn out_of_memory_runs_shrink_and_training_goes_on() {
    if !ort_available() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (want, _, _) = hardened_mlp(d.path(), "free", &["--epochs", "1"], None);
    for step_loop in ["host", "bound"] {
        let extra = ["--epochs", "1", "--step-loop", step_loop];
        let (got, err, r) = hardened_mlp(d.path(), step_loop, &extra, Some("20"));
        for line in [
            "at --batch-size 50; auditing the original model again at --batch-size 25",
            "training goes on in runs of at most 12",
            "evaluating in runs of 12",
        ] {
            assert!(err.contains(line), "{step_loop}: no '{line}' in: {err}");
        }
        assert_eq!(
            err.contains("go back to the host"),
            step_loop == "bound",
            "{err}"
        );
        // The second audit starts at the batch size the first one ran at.
        assert!(!err.contains("auditing the hardened model again"), "{err}");
        assert_eq!(r["meta"]["train_weights"], "host");
        let worst = weight_gap(&want, &got);
        assert!(worst <= 1e-5, "{step_loop}: weights moved by {worst}");
    }
}

/// Bound training whose runs start running out of memory after a while (simulated: runs
/// above 20 examples fail after the first 24 of them, in the second epoch) moves the
/// weights and the SGD momenta it held in the runtime's memory back to the host and
/// trains on there, to the weights of a run that never ran out (up to the order of sums).
#[test]
fn resident_training_running_out_of_memory_goes_on_on_the_host() {
    if !ort_available() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    // Audits of 10 examples and no validation: the runs above 20 examples are the
    // training's, two a step (the attack's step loop, the weight-gradient graph).
    let extra = [
        "--optimizer",
        "sgd",
        "--epochs",
        "2",
        "--val-size",
        "0",
        "--audit-limit",
        "10",
        "--step-loop",
        "bound",
    ];
    let (want, _, _) = hardened_mlp(d.path(), "free", &extra, None);
    let (got, err, _) = hardened_mlp(d.path(), "late", &extra, Some("20@24"));
    assert!(err.contains("go back to the host"), "{err}");
    let worst = weight_gap(&want, &got);
    assert!(worst <= 1e-5, "weights moved by {worst}");
}
