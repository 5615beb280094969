//! The third-party corpus (../shared/corpus): every model imports and inspects, and its
//! vnnlib properties run on ONNX Runtime and tract with matching logits and predictions.

mod common;

use harden::classifier::Classifier;
use harden::data;
use harden::model::OnnxModel;
use harden::runtime::RuntimeChoice;
use harden::spec::{DataMapping, InputSpec, SpecArgs};

fn manifest(corpus: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(corpus.join("MANIFEST.json")).unwrap();
    serde_json::from_str::<Vec<serde_json::Value>>(&text).unwrap()
}

#[test]
fn every_corpus_model_inspects() {
    let Some(corpus) = common::corpus() else {
        return;
    };
    for entry in manifest(&corpus) {
        let file = entry["file"].as_str().unwrap();
        let m = OnnxModel::load(&corpus.join(file)).unwrap_or_else(|e| panic!("{file}: {e:#}"));
        let i = harden::inspect::inspect(&m);
        assert_eq!(i.inputs.len(), 1, "{file}");
        assert_eq!(
            i.inputs[0].name,
            entry["input_name"].as_str().unwrap(),
            "{file}"
        );
        // The manifest also counts integer initializers (shape constants); harden counts
        // floating-point weights only.
        let listed = entry["num_parameters"].as_u64().unwrap();
        assert!(
            i.parameters <= listed && listed - i.parameters < 64,
            "{file}: harden counts {} parameters, the manifest {listed}",
            i.parameters
        );
        assert!(i.unsupported.is_empty(), "{file}: {:?}", i.unsupported);
        let ops: Vec<&str> = entry["ops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        let got: Vec<&str> = i.ops.keys().map(String::as_str).collect();
        assert_eq!(got, ops, "{file}");
    }
}

/// Runs the model's benchmark vnnlib folder on one runtime; returns logits row by row.
fn vnnlib_logits(
    corpus: &std::path::Path,
    entry: &serde_json::Value,
    runtime: RuntimeChoice,
) -> (String, Vec<Vec<f32>>) {
    let file = entry["file"].as_str().unwrap();
    let model = OnnxModel::load(&corpus.join(file)).unwrap();
    // The folder holding the model's properties (MANIFEST paths), as a user would pass it.
    let first = entry["properties"][0]["vnnlib"].as_str().unwrap();
    let props = corpus.join(first).parent().unwrap().to_path_buf();
    let mut src = data::open(props.to_str().unwrap(), None, None).unwrap();
    let input = model.classifier_input().unwrap();
    let mut spec = InputSpec::resolve(&input, &SpecArgs::default()).unwrap();
    // vnnlib boxes declare the valid range themselves.
    spec.range = src.value_bounds().expect("vnnlib bounds");
    let mapping = DataMapping::new(&spec, src.example_shape(), src.kind())
        .unwrap_or_else(|e| panic!("{file}: {e:#}"));
    let mut c = Classifier::open(
        &model,
        &spec,
        &mapping.example_shape,
        &common::options(runtime),
    )
    .unwrap_or_else(|e| panic!("{file} on {runtime:?}: {e:#}"));
    let (mut raw, mut labels, mut mapped) = (vec![], vec![], vec![]);
    let mut rows = vec![];
    loop {
        raw.clear();
        labels.clear();
        let n = src.next_batch(16, &mut raw, &mut labels).unwrap();
        if n == 0 {
            break;
        }
        mapping.map_batch(&raw, &mut mapped, rows.len()).unwrap();
        let l = c.logits(&mapped).unwrap();
        rows.extend(l.rows().into_iter().map(|r| r.to_vec()));
    }
    (c.runtime_name().to_string(), rows)
}

#[test]
fn corpus_vnnlib_predictions_match_across_runtimes() {
    let Some(corpus) = common::corpus() else {
        return;
    };
    if !common::ort_available() {
        return;
    }
    let mut checked = 0;
    for entry in manifest(&corpus) {
        let file = entry["file"].as_str().unwrap();
        let (rt, ort_rows) = vnnlib_logits(&corpus, &entry, RuntimeChoice::Ort);
        assert_eq!(rt, "onnxruntime");
        let (rt, tract_rows) = vnnlib_logits(&corpus, &entry, RuntimeChoice::Tract);
        assert_eq!(rt, "tract");
        assert!(!ort_rows.is_empty(), "{file}: no properties");
        assert_eq!(ort_rows.len(), tract_rows.len());
        for (i, (a, b)) in ort_rows.iter().zip(&tract_rows).enumerate() {
            common::assert_close(a, b, 1e-4, &format!("{file} property {i}"));
            assert_eq!(
                harden::metrics::argmax(a),
                harden::metrics::argmax(b),
                "{file} property {i}: predictions differ"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, manifest(&corpus).len());
}
