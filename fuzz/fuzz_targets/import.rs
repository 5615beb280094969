//! Arbitrary bytes into the ONNX importer: every input must give a model or an error,
//! never a panic, abort, hang or runaway allocation. Accepted models are also inspected,
//! re-encoded and decoded again.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// An empty folder, so that external-data references resolve to missing files.
fn model_path() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join("harden-fuzz-models");
        let _ = std::fs::create_dir_all(&d);
        d.join("fuzz.onnx")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(model) = harden::model::OnnxModel::from_bytes(data, model_path()) {
        let _ = harden::inspect::inspect(&model);
        let _ = model.unsupported_nodes();
        let _ = model.classifier_input();
        let bytes = model.to_bytes();
        let again = harden::model::OnnxModel::from_bytes(&bytes, model_path());
        assert!(again.is_ok(), "a model harden accepted did not decode again after re-encoding");
    }
});
