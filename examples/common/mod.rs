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
    let mut ort = OrtLocator::standard(
        std::env::var_os("ORT_DYLIB_PATH").map(Into::into),
        home.as_deref(),
        None,
    );
    // As the harden command: per-node profiles (scripts/ort-profile.py).
    ort.profile = std::env::var_os("HARDEN_ORT_PROFILE")
        .filter(|s| !s.is_empty())
        .map(Into::into);
    ort
}

/// The demo setup: `--model` (default the demo model) with its default input spec, run
/// options from `--runtime`, `--threads` (2) and `--batch` (128), and the first `n`
/// examples of the named data set `data` mapped into its input space.
pub struct Setup {
    pub model: harden::model::OnnxModel,
    pub spec: harden::spec::InputSpec,
    pub opts: harden::classifier::RunOptions,
    pub mapping: harden::spec::DataMapping,
    pub x: Vec<f32>,
    pub labels: Vec<usize>,
}

/// `--model` (default the demo model).
pub fn model_path() -> String {
    arg("--model", "models/fmnist_cnn.onnx")
}

pub fn setup(data: &str, n: usize) -> anyhow::Result<Setup> {
    use harden::spec::{DataMapping, InputSpec, SpecArgs};
    let model_path = model_path();
    let opts = harden::classifier::RunOptions {
        runtime: runtime(),
        threads: arg("--threads", "2").parse()?,
        batch_size: arg("--batch", "128").parse()?,
        ort: ort(),
        step_loop: None,
    };
    let model = harden::model::OnnxModel::load(std::path::Path::new(&model_path))?;
    let spec = InputSpec::resolve(&model.classifier_input()?, &SpecArgs::default())?;
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let mut src = harden::data::limit(harden::data::open(data, home.as_deref(), None)?, n);
    let mapping = DataMapping::new(&spec, src.example_shape(), src.kind())?;
    let (mut raw, mut ys) = (vec![], vec![]);
    while src.next_batch(4096, &mut raw, &mut ys)? > 0 {}
    let mut x = vec![];
    mapping.map_batch(&raw, &mut x, 0)?;
    let labels = ys.iter().map(|y| y.unwrap_or(0)).collect();
    Ok(Setup {
        model,
        spec,
        opts,
        mapping,
        x,
        labels,
    })
}
