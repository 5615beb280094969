//! Attacks through the binary: robust accuracy is measured and re-checked, bad attack
//! settings are refused, Square works where gradients do not, falsify answers correctly.

mod common;

use common::{audit_json, f, fails_with, harden};

fn demo() -> String {
    common::root()
        .join("models/fmnist_cnn.onnx")
        .display()
        .to_string()
}

fn slice() -> String {
    common::root()
        .join("data/fashion-mnist-slice")
        .display()
        .to_string()
}

#[test]
fn robust_accuracy_falls_with_eps_and_never_exceeds_clean() {
    let r = audit_json(&[
        &demo(),
        "--data",
        &slice(),
        "--limit",
        "128",
        "--eps",
        "0.02,0.1",
        "--attacks",
        "fgsm,pgd",
        "--runtime",
        "tract",
    ]);
    let clean = r["clean"]["accuracy"].as_f64().unwrap();
    let res = r["robust"]["results"].as_array().unwrap();
    assert_eq!(res.len(), 2);
    let mut last = 1.0;
    for e in res {
        let worst = e["robust_accuracy"].as_f64().unwrap();
        for a in e["attacks"].as_array().unwrap() {
            let ra = a["robust_accuracy"].as_f64().unwrap();
            assert!(ra <= clean + 1e-12 && worst <= ra + 1e-12, "{e}");
            assert_eq!(
                a["refused"], 0,
                "every reported adversarial example passes the re-check"
            );
        }
        assert!(worst <= last);
        last = worst;
    }
    // The demo model is not robust: PGD at 0.1 breaks almost everything.
    assert!(last < 0.2, "robust accuracy at eps 0.1 is {last}");
}

#[test]
fn more_pgd_steps_never_help_the_model() {
    // Unlabelled data cannot be attacked.
    let out = harden()
        .args([
            "audit",
            &f("cnn_bn.onnx"),
            "--data",
            &f("data/tiny_images.npy"),
            "--eps",
            "0.05",
            "--attacks",
            "pgd",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let run = |steps: &str, restarts: &str| {
        let r = audit_json(&[
            &f("mlp.onnx"),
            "--data",
            &f("data/tiny.npz"),
            "--eps",
            "0.03",
            "--attacks",
            "pgd",
            "--steps",
            steps,
            "--restarts",
            restarts,
            "--runtime",
            "tract",
        ]);
        r["robust"]["results"][0]["robust_accuracy"]
            .as_f64()
            .unwrap()
    };
    let base = run("3", "1");
    assert!(run("20", "1") <= base);
    assert!(run("3", "4") <= base);
}

#[test]
fn attack_saves_checked_adversarial_examples() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("adv.npz");
    let o = harden()
        .args([
            "attack",
            &demo(),
            "--data",
            &slice(),
            "--limit",
            "64",
            "--attack",
            "pgd",
            "--eps",
            "0.1",
            "--runtime",
            "tract",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut src =
        harden::data::npy::NpySource::open_npz_members(&out, "x_adv", Some("y_adv")).unwrap();
    use harden::data::DataSource;
    assert_eq!(src.example_shape(), &[28, 28, 1]);
    let (mut xs, mut ys) = (vec![], vec![]);
    assert_eq!(src.next_batch(100, &mut xs, &mut ys).unwrap(), 64);
    assert!(xs.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn bad_attack_settings_are_refused() {
    let d = slice();
    let m = demo();
    fails_with(&["audit", &m, "--data", &d, "--eps", "0"], "eps");
    fails_with(&["audit", &m, "--data", &d, "--eps", "-0.1"], "eps");
    fails_with(
        &[
            "audit",
            &m,
            "--data",
            &d,
            "--eps",
            "0.1",
            "--attacks",
            "pgd",
            "--steps",
            "0",
        ],
        "--steps",
    );
    fails_with(
        &[
            "audit",
            &m,
            "--data",
            &d,
            "--eps",
            "0.1",
            "--attacks",
            "deepfool",
        ],
        "unknown attack 'deepfool'",
    );
    fails_with(
        &["audit", &m, "--data", &d, "--eps", "1.5"],
        "covers the whole input range",
    );
    fails_with(&["audit", &m, "--data", &d, "--attacks", "pgd"], "--eps");
    fails_with(
        &[
            "attack",
            &m,
            "--data",
            &d,
            "--attack",
            "pgd",
            "--eps",
            "0.1",
            "--restarts",
            "0",
        ],
        "--restarts",
    );
    // DLR needs 3 classes, APGD-T 4: vector3.onnx has 3.
    let v3 = f("vector3.onnx");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("v.npz");
    let x: Vec<f32> = common::lcg_vec(12, 3, 0.0, 1.0);
    std::fs::write(
        &data,
        harden::npz::write_npz(&[
            ("x", harden::npz::Array::F32(&[4, 3], &x)),
            ("y", harden::npz::Array::I64(&[4], &[0, 1, 2, 1])),
        ])
        .unwrap(),
    )
    .unwrap();
    let dp = data.to_str().unwrap();
    fails_with(
        &[
            "audit",
            &v3,
            "--data",
            dp,
            "--eps",
            "0.1",
            "--attacks",
            "apgd-t",
        ],
        "at least 4 classes",
    );
    let ok = harden()
        .args([
            "audit",
            &v3,
            "--data",
            dp,
            "--eps",
            "0.1",
            "--attacks",
            "apgd-dlr",
            "--runtime",
            "tract",
        ])
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn unsupported_ops_block_gradients_but_not_square() {
    let m = f("unsupported_op.onnx");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("u.npz");
    let x: Vec<f32> = common::lcg_vec(16, 9, 0.0, 1.0);
    std::fs::write(
        &data,
        harden::npz::write_npz(&[
            ("x", harden::npz::Array::F32(&[4, 4], &x)),
            ("y", harden::npz::Array::I64(&[4], &[0, 1, 2, 1])),
        ])
        .unwrap(),
    )
    .unwrap();
    let dp = data.to_str().unwrap();
    fails_with(
        &[
            "audit",
            &m,
            "--data",
            dp,
            "--eps",
            "0.1",
            "--attacks",
            "pgd",
        ],
        "node 'the_hardmax' uses op Hardmax",
    );
    let ok = harden()
        .args([
            "audit",
            &m,
            "--data",
            dp,
            "--eps",
            "0.1",
            "--attacks",
            "square",
            "--square-queries",
            "50",
            "--runtime",
            "tract",
        ])
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn grad_writes_a_graph_both_runtimes_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("g.onnx");
    let o = harden()
        .args(["grad", &demo(), "-o", out.to_str().unwrap(), "--batch", "4"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let bytes = std::fs::read(&out).unwrap();
    let x = ndarray::ArrayD::from_shape_vec(
        ndarray::IxDyn(&[4, 28, 28, 1]),
        common::lcg_vec(4 * 784, 1, 0.0, 1.0),
    )
    .unwrap();
    let mut y = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[4, 10]));
    for i in 0..4 {
        y[[i, i]] = 1.0;
    }
    let mut results = vec![];
    for rt in [
        harden::runtime::RuntimeChoice::Tract,
        harden::runtime::RuntimeChoice::Ort,
    ] {
        if rt == harden::runtime::RuntimeChoice::Ort && !common::ort_available() {
            continue;
        }
        let mut r = harden::runtime::open(rt, &bytes, 1, &common::ort_locator()).unwrap();
        let o = r.run(&[x.view(), y.view()]).unwrap();
        assert_eq!(o.len(), 3);
        assert_eq!(o[2].shape(), &[4, 28, 28, 1]);
        results.push(o[2].iter().copied().collect::<Vec<f32>>());
    }
    if results.len() == 2 {
        common::assert_close(
            &results[0],
            &results[1],
            1e-3,
            "input gradient, tract vs onnxruntime",
        );
    }
}

#[test]
fn falsify_answers_sat_with_a_checked_point_and_never_on_unsat() {
    let Some(corpus) = common::corpus() else {
        return;
    };
    let text = std::fs::read_to_string(corpus.join("MANIFEST.json")).unwrap();
    let manifest: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let mut sat_checked = 0;
    let mut unsat_checked = 0;
    for e in manifest
        .iter()
        .filter(|e| e["id"] == "zoo/mnist-8" || e["id"] == "vnncomp2022/mnist_fc/mnist-net_256x2")
    {
        for p in e["properties"].as_array().unwrap().iter().take(6) {
            let expected = p["expected"].as_str().unwrap();
            let out = harden()
                .args([
                    "falsify",
                    corpus.join(e["file"].as_str().unwrap()).to_str().unwrap(),
                    corpus.join(p["vnnlib"].as_str().unwrap()).to_str().unwrap(),
                    "--timeout",
                    "3",
                ])
                .output()
                .unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let answer = text.lines().next().unwrap();
            match expected {
                "unsat" => {
                    assert_eq!(answer, "unknown", "a sat answer on a proven-unsat property");
                    unsat_checked += 1;
                }
                "sat" if answer == "sat" => {
                    // Re-check the printed point: inside the box and unsafe.
                    let props = harden::data::vnnlib::parse_vnnlib_file(
                        &corpus.join(p["vnnlib"].as_str().unwrap()),
                    )
                    .unwrap();
                    let xs: Vec<f64> = text
                        .lines()
                        .skip(1)
                        .filter(|l| l.contains("(X_"))
                        .map(|l| {
                            l.trim()
                                .trim_start_matches('(')
                                .trim_end_matches(')')
                                .split_whitespace()
                                .nth(1)
                                .unwrap()
                                .trim_end_matches(')')
                                .parse()
                                .unwrap()
                        })
                        .collect();
                    assert!(props.iter().any(|pr| xs
                        .iter()
                        .enumerate()
                        .all(|(i, v)| *v >= pr.input_lo[i] && *v <= pr.input_hi[i])));
                    sat_checked += 1;
                }
                _ => {}
            }
        }
    }
    assert!(
        sat_checked > 0 && unsat_checked > 0,
        "sat {sat_checked}, unsat {unsat_checked}"
    );
}

/// `harden falsify` on a model exported with batch 1, whose runs go out of memory
/// (simulated above 10 examples) when the batch is freed: it falsifies again at half the
/// batch size, saying so, instead of quietly running one point at a time, and prints the
/// point the unconstrained run prints.
#[test]
fn falsify_halves_the_batch_out_of_memory() {
    let Some(corpus) = common::corpus() else {
        return;
    };
    if !common::ort_available() {
        return;
    }
    let dir = corpus.join("vnncomp2022/mnist_fc");
    let run = |oom: Option<&str>| {
        let mut c = harden();
        c.arg("falsify")
            .arg(dir.join("onnx/mnist-net_256x2.onnx"))
            .arg(dir.join("vnnlib/prop_2_0.03.vnnlib"))
            .args(["--timeout", "60", "--runtime", "ort", "--threads", "1"]);
        if let Some(n) = oom {
            c.env("HARDEN_SIMULATE_OOM_ABOVE", n);
        }
        let o = c.output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(0), "{err}");
        (String::from_utf8_lossy(&o.stdout).into_owned(), err)
    };
    let (want, _) = run(None);
    assert!(want.starts_with("sat\n"), "{want}");
    let (got, err) = run(Some("10"));
    for line in [
        "ran out of memory at --batch-size 128; falsifying again at --batch-size 64",
        "falsifying again at --batch-size 8",
    ] {
        assert!(err.contains(line), "no '{line}' in: {err}");
    }
    assert!(!err.contains("--batch-size 4"), "{err}");
    assert_eq!(got, want);
}
