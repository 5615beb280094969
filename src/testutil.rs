//! Helpers shared by the unit tests.

/// Asserts that `got` equals `want` entry by entry within `rel` of the larger of `want`'s
/// largest magnitude and 1e-3; `what` names the values in the failure message.
pub fn assert_close(want: &[f32], got: &[f32], rel: f32, what: &str) {
    assert_eq!(want.len(), got.len(), "{what}: lengths differ");
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (u, v)) in want.iter().zip(got).enumerate() {
        assert!((u - v).abs() <= rel * scale, "{what}[{i}]: {u} vs {v}");
    }
}

/// The ONNX Runtime locator of the environment (`ORT_DYLIB_PATH`, then harden's cache).
pub fn ort_locator() -> crate::runtime::OrtLocator {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    crate::runtime::OrtLocator::standard(
        std::env::var_os("ORT_DYLIB_PATH").map(Into::into),
        home.as_deref(),
        None,
    )
}

/// tract, and ONNX Runtime where its library loads (`HARDEN_REQUIRE_ORT` makes its
/// absence a failure instead of a skip).
pub fn runtimes() -> Vec<crate::runtime::RuntimeChoice> {
    use crate::runtime::{ort_status, RuntimeChoice};
    let mut r = vec![RuntimeChoice::Tract];
    match ort_status(&ort_locator()) {
        Ok(_) => r.push(RuntimeChoice::Ort),
        Err(e) if std::env::var_os("HARDEN_REQUIRE_ORT").is_some() => {
            panic!("HARDEN_REQUIRE_ORT is set but ONNX Runtime does not load: {e}")
        }
        Err(_) => eprintln!("ONNX Runtime not loaded: tract only"),
    }
    r
}
