//! The demo model: harden's clean accuracy on the Fashion-MNIST test set equals what the
//! exporting framework measured (to 0.1 point), on both runtimes; the bundled slice runs.

mod common;

fn fashion_mnist_installed() -> bool {
    let ok = std::path::Path::new("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
        .is_file();
    if !ok {
        if std::env::var_os("HARDEN_REQUIRE_DATA").is_some() {
            panic!("HARDEN_REQUIRE_DATA is set but Fashion-MNIST is not installed");
        }
        eprintln!(
            "skipping: Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"
        );
    }
    ok
}

fn meta() -> serde_json::Value {
    let text = std::fs::read_to_string(common::root().join("models/fmnist_cnn.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn demo_accuracy_matches_the_framework() {
    if !fashion_mnist_installed() {
        return;
    }
    let want = meta()["framework_test_correct"].as_u64().unwrap() as i64;
    let mut runtimes = vec!["tract"];
    if common::ort_available() {
        runtimes.push("ort");
    }
    for rt in runtimes {
        let r = audit(&["--data", "fashion-mnist:test", "--runtime", rt]);
        assert_eq!(r["data"]["examples"], 10000);
        let got = r["clean"]["correct"].as_i64().unwrap();
        assert!(
            (got - want).abs() <= 10,
            "{rt}: harden counts {got}/10000, the framework {want}/10000"
        );
        assert!(got >= 8900, "{rt}: demo accuracy {got}/10000 is below 89%");
        assert_eq!(r["input_spec"]["layout"], "nhwc");
    }
}

#[test]
fn demo_checksum_matches_provenance() {
    use sha2::Digest;
    let bytes = std::fs::read(common::root().join("models/fmnist_cnn.onnx")).unwrap();
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(sha, meta()["sha256"].as_str().unwrap());
}

#[test]
fn bundled_slice_runs_without_installed_data() {
    let slice = common::root().join("data/fashion-mnist-slice");
    let r = audit(&["--data", slice.to_str().unwrap(), "--runtime", "tract"]);
    assert_eq!(r["data"]["examples"], 1000);
    assert!(r["clean"]["accuracy"].as_f64().unwrap() > 0.85);
}

/// `harden audit` of the demo model with `args`, as JSON.
fn audit(args: &[&str]) -> serde_json::Value {
    let model = common::root().join("models/fmnist_cnn.onnx");
    let mut all = vec![model.to_str().unwrap()];
    all.extend_from_slice(args);
    common::audit_json(&all)
}
