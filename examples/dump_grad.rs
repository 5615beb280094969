//! Writes the gradient graph harden builds for a model (default: the demo model's
//! cross-entropy graph at batch 128), for profiling it outside harden.
//! Usage: cargo run --example dump_grad -- [--model models/fmnist_cnn.onnx]
//!        [--batch 128] [--loss ce|margin|dlr] [--out /tmp/grad.onnx]
//!        [--wrt input|params|both]  (with --wrt: the training graph, trainable weights
//!        lifted to graph inputs, as hardening runs it)
mod common;

use harden::autodiff::{gradient_graph, trainable_params, training_graph_wrt, LossKind, Wrt};
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
    let g = match get("--wrt", "").as_str() {
        "" => gradient_graph(&proto, &spec.input_name, &example_shape, batch, kind)?.proto,
        w => {
            let wrt = match w {
                "input" => Wrt::INPUT,
                "params" => Wrt::PARAMS,
                "both" => Wrt::BOTH,
                _ => anyhow::bail!("--wrt takes input, params or both"),
            };
            let params = trainable_params(&model.proto);
            training_graph_wrt(
                &proto,
                &spec.input_name,
                &example_shape,
                batch,
                kind,
                &params,
                wrt,
            )?
            .grad
            .proto
        }
    };
    std::fs::write(&out, prost::Message::encode_to_vec(&g))?;
    println!(
        "{out}: {} nodes",
        g.graph.as_ref().map_or(0, |g| g.node.len())
    );
    Ok(())
}
