//! Every fixture model gives onnxruntime's (Python) logits on both of harden's runtimes,
//! to 1e-4 relative; external data loads; image-folder and IDX fixtures read.

mod common;

use harden::runtime::RuntimeChoice;

fn expected() -> serde_json::Map<String, serde_json::Value> {
    let text = std::fs::read_to_string(common::fixture("expected.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn fixtures_match_reference_logits_on_both_runtimes() {
    let mut runtimes = vec![RuntimeChoice::Tract];
    if common::ort_available() {
        runtimes.push(RuntimeChoice::Ort);
    }
    let exp = expected();
    assert!(exp.len() >= 8);
    for (name, e) in &exp {
        let input = floats(&e["input"]);
        let want = floats(&e["output"]);
        for rt in &runtimes {
            let (_, _, mut c) = common::classifier(&common::fixture(name), *rt);
            let got = c.logits(&input).unwrap();
            let got: Vec<f32> = got.iter().copied().collect();
            common::assert_close(&got, &want, 1e-4, &format!("{name} on {rt:?}"));
        }
    }
}

/// A batch of any size gives each example's logits alone, on both runtimes (ONNX Runtime
/// runs a free batch at its own size, tract pads it to a bucket).
#[test]
fn any_batch_size_gives_the_examples_own_logits() {
    let mut runtimes = vec![RuntimeChoice::Tract];
    if common::ort_available() {
        runtimes.push(RuntimeChoice::Ort);
    }
    let x = common::lcg_vec(784 * 37, 9, 0.0, 1.0);
    for rt in runtimes {
        let (_, _, mut c) = common::classifier(&common::fixture("mlp.onnx"), rt);
        assert_eq!(c.batch(), 32);
        let all: Vec<f32> = c.logits(&x).unwrap().iter().copied().collect();
        assert_eq!(all.len(), 37 * 10);
        for (i, n) in [(0, 1), (5, 3), (8, 29)] {
            let part: Vec<f32> = c
                .logits(&x[i * 784..(i + n) * 784])
                .unwrap()
                .iter()
                .copied()
                .collect();
            common::assert_close(
                &part,
                &all[i * 10..(i + n) * 10],
                1e-5,
                &format!("{n} from {i} on {rt:?}"),
            );
        }
    }
}

#[test]
fn fixed_batch_model_runs_in_large_batches() {
    let (_, _, c) = common::classifier(
        &common::fixture("cnn_fixed_batch.onnx"),
        RuntimeChoice::Tract,
    );
    assert!(c.batch_freed());
    assert_eq!(c.batch(), 32);
}

#[test]
fn external_data_equals_inline() {
    let a = harden::model::OnnxModel::load(&common::fixture("mlp.onnx")).unwrap();
    let b = harden::model::OnnxModel::load(&common::fixture("external_data.onnx")).unwrap();
    assert_eq!(a.parameter_count(), b.parameter_count());
    let (_, _, mut ca) = common::classifier(&common::fixture("mlp.onnx"), RuntimeChoice::Tract);
    let (_, _, mut cb) =
        common::classifier(&common::fixture("external_data.onnx"), RuntimeChoice::Tract);
    let x = common::lcg_vec(784 * 2, 5, 0.0, 1.0);
    assert_eq!(ca.logits(&x).unwrap(), cb.logits(&x).unwrap());
}

#[test]
fn data_formats_agree() {
    // The same 20 images as npz floats, IDX bytes and a .npy of images give the same accuracy.
    let mlp = common::fixture("mlp.onnx");
    let run = |data: &str| {
        let out = assert_cmd::Command::cargo_bin("harden")
            .unwrap()
            .env("CI", "1")
            .args([
                "audit",
                mlp.to_str().unwrap(),
                "--data",
                data,
                "--runtime",
                "tract",
                "--json",
                "-",
            ])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{data}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The report; its audit section.
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["audit"].take()
    };
    let npz = run(common::fixture("data/tiny.npz").to_str().unwrap());
    let idx = run(common::fixture("data/tiny-images-idx3-ubyte")
        .to_str()
        .unwrap());
    assert_eq!(npz["clean"]["correct"], idx["clean"]["correct"]);
    assert_eq!(npz["clean"]["labelled"], 20);
    let unlabelled = run(common::fixture("data/tiny_images.npy").to_str().unwrap());
    assert_eq!(unlabelled["clean"]["labelled"], 0);
    assert_eq!(unlabelled["data"]["examples"], 20);
    let imgs = run(common::fixture("data/imgs").to_str().unwrap());
    assert_eq!(imgs["data"]["examples"], 9);
    let limited = run(&format!("{}", common::fixture("data/tiny.npz").display()));
    assert_eq!(limited["data"]["examples"], 20);
}
