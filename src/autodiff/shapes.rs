//! Static shapes of every tensor of a model at a given batch size.
//!
//! Gradient graphs are built for a fixed batch (harden pads every call to one batch
//! anyway), so every shape is a concrete list of numbers. tract's type analysis at that
//! batch gives the shape of every node output, found by the ONNX tensor names that
//! tract keeps as outlet labels; initializers give their own dims.

use std::collections::HashMap;

use anyhow::{anyhow, Result};
use tract_onnx::prelude::*;

use crate::model::pb;

pub type Shapes = HashMap<String, Vec<usize>>;

/// Shapes of the tensors of `proto` when `input` has shape `input_shape`.
pub fn infer(proto: &pb::ModelProto, input: &str, input_shape: &[usize]) -> Result<Shapes> {
    // Every node output becomes a graph output, so that tract keeps it (and its name)
    // through translation; outputs are read back in order.
    let mut probe = proto.clone();
    let g = probe
        .graph
        .as_mut()
        .ok_or_else(|| anyhow!("the model has no graph"))?;
    let mut names: Vec<String> = g.output.iter().map(|o| o.name.clone()).collect();
    let extra: Vec<String> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter())
        .filter(|o| !o.is_empty() && !names.contains(o))
        .cloned()
        .collect();
    for o in &extra {
        g.output.push(pb::ValueInfoProto {
            name: o.clone(),
            ..Default::default()
        });
    }
    names.extend(extra);
    let bytes = prost::Message::encode_to_vec(&probe);
    let err = |e: anyhow::Error| {
        anyhow!(
            "shape analysis (tract): {}",
            format!("{e:#}").replace('\n', " ")
        )
    };
    let model = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_output_types(true)
        .model_for_read(&mut &bytes[..])
        .map_err(err)?;
    let slot = model
        .input_outlets()
        .map_err(err)?
        .iter()
        .position(|o| model.node(o.node).name == input)
        .ok_or_else(|| anyhow!("shape analysis: no input named '{input}'"))?;
    let model = model
        .with_input_fact(slot, f32::fact(input_shape).into())
        .map_err(err)?;
    let typed = model.into_typed().map_err(err)?;
    let mut shapes = Shapes::new();
    shapes.insert(input.to_string(), input_shape.to_vec());
    for (name, outlet) in names.iter().zip(typed.output_outlets().map_err(err)?) {
        if let Some(dims) = typed.outlet_fact(*outlet).map_err(err)?.shape.as_concrete() {
            shapes.insert(name.clone(), dims.to_vec());
        }
    }
    if let Some(g) = proto.graph.as_ref() {
        for t in &g.initializer {
            shapes
                .entry(t.name.clone())
                .or_insert_with(|| t.dims.iter().map(|d| *d as usize).collect());
        }
    }
    Ok(shapes)
}

/// Values per example of the largest tensor of `proto` that grows with the batch (its
/// largest activation), from the shapes at batch 1 and 2.
pub fn largest_activation(
    proto: &pb::ModelProto,
    input: &str,
    example_shape: &[usize],
) -> Result<usize> {
    let at = |b: usize| {
        let mut s = vec![b];
        s.extend(example_shape);
        infer(proto, input, &s)
    };
    let (one, two) = (at(1)?, at(2)?);
    let size = |d: &Vec<usize>| d.iter().product::<usize>();
    Ok(one
        .iter()
        .filter_map(|(name, d)| {
            let n = size(d);
            (two.get(name).map(size) == Some(2 * n)).then_some(n)
        })
        .max()
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_activation_is_the_biggest_per_example_tensor() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fmnist_cnn.onnx");
        let m = crate::model::OnnxModel::load(&path).unwrap();
        // The demo CNN (NHWC 28x28x1 in): its first 3x3 conv gives 32 x 26 x 26 per
        // example; its dense weights (1,600 x 128 values) do not grow with the batch and
        // do not count.
        assert_eq!(
            largest_activation(&m.proto, "input", &[28, 28, 1]).unwrap(),
            32 * 26 * 26
        );
    }
}
