//! Arbitrary bytes into the ONNX importer: every input must give a model or an error,
//! never a panic, abort, hang or runaway allocation. Accepted models are also inspected,
//! re-encoded and decoded again; the re-encoding must be accepted and stable.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use harden::model::OnnxModel;
use libfuzzer_sys::fuzz_target;

/// `<tmp>/harden-fuzz-models/<pid>/fuzz.onnx`, in a fresh empty folder made once per
/// process and kept for the whole run, so that external-data references resolve to
/// missing files rather than to real ones.
fn model_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir()
            .join("harden-fuzz-models")
            .join(std::process::id().to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cannot create the fuzzing folder");
        dir.join("fuzz.onnx")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = model_path();
    let Ok(model) = OnnxModel::from_bytes(data, path) else {
        return;
    };
    let inspection = harden::inspect::inspect(&model);
    let _ = harden::inspect::render_text(&inspection);
    let _ = model.classifier_input();
    let _ = model.require_supported();

    // External data is inlined on import, so the re-encoded model is self-contained:
    // it must be accepted again and re-encode to the same bytes.
    let bytes = model.to_bytes();
    let again = match OnnxModel::from_bytes(&bytes, path) {
        Ok(m) => m,
        Err(e) => panic!("an accepted model was refused after re-encoding: {e:#}"),
    };
    assert!(
        again.to_bytes() == bytes,
        "re-encoding an accepted model is not stable"
    );
    let again = harden::inspect::inspect(&again);
    assert_eq!(again.opset, inspection.opset);
    assert_eq!(again.nodes, inspection.nodes);
    assert_eq!(again.parameters, inspection.parameters);
});
