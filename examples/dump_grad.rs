//! Writes the gradient graph harden builds for a model (default: the demo model's
//! cross-entropy graph at batch 128), for profiling it outside harden.
//! Usage: cargo run --example dump_grad -- [--model models/fmnist_cnn.onnx]
//!        [--batch 128] [--loss ce|margin|dlr] [--out /tmp/grad.onnx]
mod common;

use harden::autodiff::{gradient_graph, LossKind};
use harden::spec::{InputSpec, SpecArgs};

fn main() -> anyhow::Result<()> {
    let get = common::arg;
    let model_path = get("--model", "models/fmnist_cnn.onnx");
    let batch: usize = get("--batch", "128").parse()?;
    let kind = match get("--loss", "ce").as_str() {
        "margin" => LossKind::Margin,
        "dlr" => LossKind::Dlr,
        _ => LossKind::CrossEntropy,
    };
    let out = get("--out", "/tmp/grad.onnx");
    let model = harden::model::OnnxModel::load(std::path::Path::new(&model_path))?;
    let spec = InputSpec::resolve(&model.classifier_input()?, &SpecArgs::default())?;
    let proto = spec.wrap(&model)?;
    let example_shape: Vec<usize> = spec.model_shape[1..]
        .iter()
        .map(|d| {
            d.fixed()
                .ok_or_else(|| anyhow::anyhow!("dynamic input dimension"))
        })
        .collect::<anyhow::Result<_>>()?;
    let g = gradient_graph(&proto, &spec.input_name, &example_shape, batch, kind)?;
    std::fs::write(&out, prost::Message::encode_to_vec(&g.proto))?;
    println!(
        "{out}: {} nodes",
        g.proto.graph.as_ref().map_or(0, |g| g.node.len())
    );
    Ok(())
}
