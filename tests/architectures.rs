//! Small random-weight versions of the architectures users bring (fixtures/arch/, made by
//! scripts/make_arch_fixtures.py), each from both PyTorch exporters and one from tf2onnx:
//! inspect finds every op, the input gradient matches PyTorch autograd (float64) to 1e-4
//! relative, and an audit and a one-epoch hardening run finish, on tract and ONNX Runtime.
//!
//! What does not work yet is listed in `KNOWN_GAPS` with the error it gives: those stages
//! must still fail with that error (so a fix makes this test fail until its entry is
//! removed), and every other stage must pass.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use harden::data::npy::NpySource;
use harden::data::DataSource;
use harden::model::OnnxModel;
use harden::runtime::{self, RuntimeChoice};
use ndarray::{ArrayD, IxDyn};

/// One row per fixture file: (model file in fixtures/arch, its data and reference npz).
const FIXTURES: &[(&str, &str)] = &[
    ("resnet_basic.legacy.onnx", "resnet_basic.npz"),
    ("resnet_basic.dynamo.onnx", "resnet_basic.npz"),
    ("resnet_basic.onnxpkg.onnx", "resnet_basic.npz"),
    ("resnet_bottleneck.legacy.onnx", "resnet_bottleneck.npz"),
    ("resnet_bottleneck.dynamo.onnx", "resnet_bottleneck.npz"),
    ("mobilenet_v2.legacy.onnx", "mobilenet_v2.npz"),
    ("mobilenet_v2.dynamo.onnx", "mobilenet_v2.npz"),
    ("mobilenet_v3.legacy.onnx", "mobilenet_v3.npz"),
    ("mobilenet_v3.dynamo.onnx", "mobilenet_v3.npz"),
    ("efficientnet.legacy.onnx", "efficientnet.npz"),
    ("efficientnet.dynamo.onnx", "efficientnet.npz"),
    ("densenet.legacy.onnx", "densenet.npz"),
    ("densenet.dynamo.onnx", "densenet.npz"),
    ("densenet_fresh.legacy.onnx", "densenet_fresh.npz"),
    ("densenet_fresh.dynamo.onnx", "densenet_fresh.npz"),
    ("shufflenet_v2.legacy.onnx", "shufflenet_v2.npz"),
    ("shufflenet_v2.dynamo.onnx", "shufflenet_v2.npz"),
    ("regnet.legacy.onnx", "regnet.npz"),
    ("regnet.dynamo.onnx", "regnet.npz"),
    ("googlenet.legacy.onnx", "googlenet.npz"),
    ("googlenet.dynamo.onnx", "googlenet.npz"),
    ("convnext.legacy.onnx", "convnext.npz"),
    ("convnext.dynamo.onnx", "convnext.npz"),
    ("vit.legacy.onnx", "vit.npz"),
    ("vit.dynamo.onnx", "vit.npz"),
    ("deit.legacy.onnx", "deit.npz"),
    ("deit.dynamo.onnx", "deit.npz"),
    ("swin.legacy.onnx", "swin.npz"),
    ("swin.dynamo.onnx", "swin.npz"),
    ("keras_mobilenet_v2.tf2onnx.onnx", "keras_mobilenet_v2.npz"),
];

/// (file, stage, a substring of the error it fails with today). Stages: `inspect`,
/// `grad:tract`, `grad:ort`, `audit:tract`, `audit:ort`, `harden:tract`, `harden:ort`.
/// Empty since the rules registry, the exporter clean-up and grouped Conv weight
/// gradients (2026-12-04: every stage of every file passes on both runtimes); a fixture
/// added for an architecture that does not work yet gets its entries here, with the
/// substring of the error that names the kind of gap (e.g. "no backward rule for op").
const KNOWN_GAPS: &[(&str, &str, &str)] = &[];

/// Relative error (L2 over the whole tensor) allowed between harden and the reference.
const REL_TOL: f64 = 1e-4;

fn arch(name: &str) -> PathBuf {
    common::fixture("arch").join(name)
}

fn runtimes() -> Vec<RuntimeChoice> {
    let mut r = vec![RuntimeChoice::Tract];
    if common::ort_available() {
        r.push(RuntimeChoice::Ort);
    }
    r
}

fn rt_name(rt: RuntimeChoice) -> &'static str {
    match rt {
        RuntimeChoice::Ort => "ort",
        _ => "tract",
    }
}

/// The fixtures present (a missing file is skipped, saying so).
fn present() -> Vec<(&'static str, &'static str)> {
    FIXTURES
        .iter()
        .filter(|(m, d)| {
            let ok = arch(m).is_file() && arch(d).is_file();
            if !ok {
                eprintln!("skipping {m}: it or {d} is absent");
            }
            ok
        })
        .copied()
        .collect()
}

/// Checks each (file, stage) outcome against `KNOWN_GAPS`; panics listing every mismatch.
fn check(outcomes: &BTreeMap<(String, String), Result<(), String>>) {
    let mut wrong = vec![];
    for ((file, stage), r) in outcomes {
        let gap = KNOWN_GAPS
            .iter()
            .find(|(f, s, _)| f == file && s == stage)
            .map(|g| g.2);
        match (gap, r) {
            (None, Ok(())) => eprintln!("ok    {file} {stage}"),
            (None, Err(e)) => wrong.push(format!("{file} {stage}: fails: {e}")),
            (Some(want), Err(e)) if e.contains(want) => {
                eprintln!("gap   {file} {stage}: {e}")
            }
            (Some(want), Err(e)) => wrong.push(format!(
                "{file} {stage}: a known gap expected to fail with '{want}', fails with: {e}"
            )),
            (Some(_), Ok(())) => wrong.push(format!(
                "{file} {stage}: now passes: remove its KNOWN_GAPS entry"
            )),
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

/// The last non-empty line of a command's stderr (harden's one-line error).
fn error_line(out: &std::process::Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "harden panicked (exit {:?}): {stderr}",
        out.status.code()
    );
    let line = stderr
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string();
    format!("exit {:?}: {line}", out.status.code())
}

/// All of an npz member, flattened, with the example shape.
fn member(npz: &Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let mut s = NpySource::open_npz_members(npz, name, None).unwrap();
    let shape = s.example_shape().to_vec();
    let (mut xs, mut ys) = (vec![], vec![]);
    while s.next_batch(64, &mut xs, &mut ys).unwrap() > 0 {}
    (shape, xs)
}

struct Reference {
    example: Vec<usize>,
    x: Vec<f32>,
    labels: Vec<usize>,
    logits: Vec<f32>,
    grad: Vec<f32>,
}

fn reference(npz: &Path) -> Reference {
    let mut s = NpySource::open_npz(npz).unwrap();
    let example = s.example_shape().to_vec();
    let (mut x, mut ys) = (vec![], vec![]);
    while s.next_batch(64, &mut x, &mut ys).unwrap() > 0 {}
    let labels = ys.into_iter().map(|y| y.unwrap()).collect();
    let (_, logits) = member(npz, "logits");
    let (_, grad) = member(npz, "grad");
    Reference {
        example,
        x,
        labels,
        logits,
        grad,
    }
}

/// ||a - b|| / ||b||.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n.max(1e-30)).sqrt()
}

#[test]
fn known_gaps_name_fixtures_and_stages() {
    let stages = [
        "inspect",
        "grad:tract",
        "grad:ort",
        "audit:tract",
        "audit:ort",
        "harden:tract",
        "harden:ort",
    ];
    for (file, stage, _) in KNOWN_GAPS {
        assert!(
            FIXTURES.iter().any(|(f, _)| f == file),
            "KNOWN_GAPS names {file}, not in FIXTURES"
        );
        assert!(stages.contains(stage), "KNOWN_GAPS: unknown stage {stage}");
    }
}

#[test]
fn inspect_finds_every_op() {
    let mut outcomes = BTreeMap::new();
    for (file, _) in present() {
        let r = OnnxModel::load(&arch(file))
            .map_err(|e| format!("{e:#}"))
            .and_then(|m| {
                let i = harden::inspect::inspect(&m);
                if i.unsupported.is_empty() {
                    Ok(())
                } else {
                    let ops: std::collections::BTreeSet<&str> =
                        i.unsupported.iter().map(|u| u.op.as_str()).collect();
                    Err(format!(
                        "unsupported {}",
                        ops.into_iter().collect::<Vec<_>>().join(", ")
                    ))
                }
            });
        outcomes.insert((file.to_string(), "inspect".to_string()), r);
    }
    check(&outcomes);
}

/// `harden grad --batch B` (the graph as a user gets it), run on each runtime with the
/// reference inputs and labels: logits and d sum(CE) / dx against PyTorch's.
#[test]
fn input_gradients_match_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let mut outcomes = BTreeMap::new();
    for (file, npz) in present() {
        let r = reference(&arch(npz));
        let b = r.labels.len();
        let k = r.logits.len() / b;
        let graph = dir.path().join(file);
        let out = common::harden()
            .arg("grad")
            .arg(arch(file))
            .arg("-o")
            .arg(&graph)
            .args(["--batch", &b.to_string()])
            .output()
            .unwrap();
        let built = if out.status.success() {
            Ok(std::fs::read(&graph).unwrap())
        } else {
            Err(format!("harden grad: {}", error_line(&out)))
        };
        for rt in runtimes() {
            let res = built.clone().and_then(|bytes| {
                let mut session = runtime::open(rt, &bytes, 1, &common::ort_locator())
                    .map_err(|e| format!("open: {e:#}"))?;
                let mut shape = vec![b];
                shape.extend(&r.example);
                let x = ArrayD::from_shape_vec(IxDyn(&shape), r.x.clone()).unwrap();
                let mut onehot = vec![0f32; b * k];
                for (i, y) in r.labels.iter().enumerate() {
                    onehot[i * k + y] = 1.0;
                }
                let a = ArrayD::from_shape_vec(IxDyn(&[b, k]), onehot).unwrap();
                let outs = session
                    .run(&[x.view(), a.view()])
                    .map_err(|e| format!("run: {e:#}"))?;
                let logits: Vec<f32> = outs[0].iter().copied().collect();
                let grad: Vec<f32> = outs[2].iter().copied().collect();
                if logits.len() != r.logits.len() || grad.len() != r.grad.len() {
                    return Err(format!(
                        "output sizes {} and {}, want {} and {}",
                        logits.len(),
                        grad.len(),
                        r.logits.len(),
                        r.grad.len()
                    ));
                }
                let (el, eg) = (rel_err(&logits, &r.logits), rel_err(&grad, &r.grad));
                eprintln!("{file} {}: logits {el:.2e}, gradient {eg:.2e}", rt_name(rt));
                if el > REL_TOL || eg > REL_TOL {
                    return Err(format!(
                        "relative error: logits {el:.2e}, gradient {eg:.2e} (allowed {REL_TOL:.0e})"
                    ));
                }
                Ok(())
            });
            outcomes.insert((file.to_string(), format!("grad:{}", rt_name(rt))), res);
        }
    }
    check(&outcomes);
}

/// Runs harden with `args`; Ok on exit 0 or 1 (finished; 1 is a failed gate), else the
/// error line.
fn finishes(args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = common::harden().args(args).output().unwrap();
    match out.status.code() {
        Some(0) | Some(1) => Ok(()),
        _ => Err(error_line(&out)),
    }
}

/// `harden audit` with a small eps and FGSM on the four examples.
#[test]
fn audits_finish() {
    let mut outcomes = BTreeMap::new();
    for (file, npz) in present() {
        for rt in runtimes() {
            let (m, d) = (arch(file), arch(npz));
            let args: Vec<&std::ffi::OsStr> = vec![
                "audit".as_ref(),
                m.as_os_str(),
                "--data".as_ref(),
                d.as_os_str(),
                "--eps".as_ref(),
                "0.004".as_ref(),
                "--attacks".as_ref(),
                "fgsm".as_ref(),
                "--runtime".as_ref(),
                rt_name(rt).as_ref(),
                "--threads".as_ref(),
                "1".as_ref(),
            ];
            outcomes.insert(
                (file.to_string(), format!("audit:{}", rt_name(rt))),
                finishes(&args),
            );
        }
    }
    check(&outcomes);
}

/// `harden MODEL --eps E --epochs 1` on the four examples (one held out for validation),
/// audited with FGSM; the hardened model must be written and load with the same input.
#[test]
fn one_epoch_hardening_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let mut outcomes = BTreeMap::new();
    for (file, npz) in present() {
        for rt in runtimes() {
            let (m, d) = (arch(file), arch(npz));
            let out = dir.path().join(format!("{}.{file}", rt_name(rt)));
            let args: Vec<&std::ffi::OsStr> = vec![
                m.as_os_str(),
                "--eps".as_ref(),
                "0.004".as_ref(),
                "--epochs".as_ref(),
                "1".as_ref(),
                "--data".as_ref(),
                d.as_os_str(),
                "--audit-data".as_ref(),
                d.as_os_str(),
                "--val-size".as_ref(),
                "1".as_ref(),
                "--val-steps".as_ref(),
                "1".as_ref(),
                "--batch-size".as_ref(),
                "4".as_ref(),
                "--audit-limit".as_ref(),
                "4".as_ref(),
                "--attacks".as_ref(),
                "fgsm".as_ref(),
                "--runtime".as_ref(),
                rt_name(rt).as_ref(),
                "--threads".as_ref(),
                "1".as_ref(),
                "-o".as_ref(),
                out.as_os_str(),
            ];
            let r = finishes(&args).and_then(|()| {
                let before = OnnxModel::load(&m).map_err(|e| format!("{e:#}"))?;
                let after = OnnxModel::load(&out)
                    .map_err(|e| format!("the hardened model does not load: {e:#}"))?;
                let (i0, i1) = (
                    before.classifier_input().map_err(|e| format!("{e:#}"))?,
                    after.classifier_input().map_err(|e| format!("{e:#}"))?,
                );
                if i0.name != i1.name || i0.shape != i1.shape {
                    return Err(format!(
                        "the hardened model's input changed: {i0:?} -> {i1:?}"
                    ));
                }
                Ok(())
            });
            outcomes.insert((file.to_string(), format!("harden:{}", rt_name(rt))), r);
        }
    }
    check(&outcomes);
}
