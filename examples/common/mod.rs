//! Shared by the examples: flag values and the ONNX Runtime locator.
#![allow(dead_code)]

use harden::runtime::{OrtLocator, RuntimeChoice};

/// The value after flag `k` on the command line, or `d`.
pub fn arg(k: &str, d: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == k)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or(d.to_string())
}

/// `--runtime ort|tract` (default ort).
pub fn runtime() -> RuntimeChoice {
    match arg("--runtime", "ort").as_str() {
        "tract" => RuntimeChoice::Tract,
        _ => RuntimeChoice::Ort,
    }
}

/// ONNX Runtime from $ORT_DYLIB_PATH or ~/.cache/harden/onnxruntime.
pub fn ort() -> OrtLocator {
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    OrtLocator::standard(
        std::env::var_os("ORT_DYLIB_PATH").map(Into::into),
        home.as_deref(),
        None,
    )
}
