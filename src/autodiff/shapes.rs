//! A model at a fixed batch: static shapes of every tensor, and the values that are
//! constant once the batch is fixed, folded.
//!
//! Gradient graphs are built for a fixed batch (harden pads every call to one batch
//! anyway), so every shape is a concrete list of numbers. [`FixedBatch::of`] is the one
//! place that turns a model into its fixed-batch form:
//!
//! - the input gets the static shape and the model's `value_info` is dropped (exporters,
//!   the dynamo one in particular, annotate intermediate tensors with the symbolic batch,
//!   which no longer unifies with the fixed one);
//! - tract's type analysis at that batch gives the shape of every node output, found by
//!   the ONNX tensor names that tract keeps as outlet labels (initializers give their own
//!   dims), and the value of every tensor it can compute without the input's values;
//! - integer and boolean tensors that nodes compute and that are constant at this batch
//!   (shape subgraphs: Shape, Gather, arithmetic, Concat, Unsqueeze feeding Slice,
//!   Reshape or Expand parameters) become initializers, and the nodes no longer needed
//!   are dropped;
//! - float tensors that nodes compute from constants alone (BatchNormalization
//!   statistics reached through Identity or Cast) are kept as values beside the graph,
//!   for the backward rules (`Consts`), unless they derive from a trained parameter.

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, Result};
use tract_onnx::prelude::*;

use crate::model::{self, pb, Dim};

pub type Shapes = HashMap<String, Vec<usize>>;

/// A model at a fixed batch (see the module's documentation).
pub struct FixedBatch {
    /// The model with its input at the fixed shape, no `value_info`, and the integer
    /// tensors that are constant at this batch folded into initializers.
    pub proto: pb::ModelProto,
    /// The shape of every tensor (node outputs, initializers, the input).
    pub shapes: Shapes,
    /// Float tensors computed by nodes from constants alone (not folded into the graph),
    /// none derived from the trained parameters.
    pub values: HashMap<String, pb::TensorProto>,
}

impl FixedBatch {
    /// `proto` with `input` of shape `input_shape`; `params` are the initializers that
    /// will be trained (values derived from them are not constants).
    pub fn of(
        proto: &pb::ModelProto,
        input: &str,
        input_shape: &[usize],
        params: &[String],
    ) -> Result<FixedBatch> {
        let mut fixed = proto.clone();
        {
            let g = fixed
                .graph
                .as_mut()
                .ok_or_else(|| anyhow!("the model has no graph"))?;
            let dims: Vec<Dim> = input_shape.iter().map(|d| Dim::Fixed(*d)).collect();
            let vi = g
                .input
                .iter_mut()
                .find(|v| v.name == input)
                .ok_or_else(|| anyhow!("the model has no input '{input}'"))?;
            model::set_value_shape(vi, &dims);
            g.value_info.clear();
        }
        let (mut shapes, konst) = analyse(&fixed, input, input_shape)?;
        let g = fixed
            .graph
            .as_mut()
            .ok_or_else(|| anyhow!("the model has no graph"))?;

        // Tensors computed from the trained parameters.
        let mut trained: HashSet<&str> = params.iter().map(String::as_str).collect();
        let g0 = proto.graph.as_ref().ok_or_else(|| anyhow!("no graph"))?;
        for n in &g0.node {
            if n.input.iter().any(|i| trained.contains(i.as_str())) {
                trained.extend(n.output.iter().map(String::as_str));
            }
        }
        let mut values = HashMap::new();
        let mut folded: Vec<pb::TensorProto> = vec![];
        let mut keep = vec![];
        for n in std::mem::take(&mut g.node) {
            let all_known = n.op_type != "Constant"
                && !n.output.is_empty()
                && n.output.iter().all(|o| konst.contains_key(o));
            if !all_known {
                keep.push(n);
                continue;
            }
            let ts: Vec<&pb::TensorProto> = n.output.iter().map(|o| &konst[o]).collect();
            if ts.iter().all(|t| matches!(t.data_type, 6 | 7 | 9)) {
                folded.extend(ts.into_iter().cloned());
            } else {
                for t in ts {
                    if !trained.contains(t.name.as_str()) && t.data_type == 1 {
                        values.insert(t.name.clone(), t.clone());
                    }
                }
                keep.push(n);
            }
        }
        g.node = keep;
        let live = drop_dead_nodes(g);
        // Folded tensors only read by other folded nodes are not kept.
        folded.retain(|t| live.contains(&t.name));
        g.initializer.extend(folded);
        for t in &g.initializer {
            shapes
                .entry(t.name.clone())
                .or_insert_with(|| t.dims.iter().map(|d| *d as usize).collect());
        }
        Ok(FixedBatch {
            proto: fixed,
            shapes,
            values,
        })
    }
}

/// Removes the nodes none of whose outputs is read (by a later node, a subgraph, or as
/// a graph output); returns the names the remaining graph reads.
fn drop_dead_nodes(g: &mut pb::GraphProto) -> HashSet<String> {
    let mut live: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    let mut kept = vec![];
    for n in std::mem::take(&mut g.node).into_iter().rev() {
        if n.output.iter().any(|o| live.contains(o)) {
            model::node_reads(&n, &mut live);
            kept.push(n);
        }
    }
    kept.reverse();
    g.node = kept;
    live
}

/// The most elements of a constant tensor kept as a value: statistics, bounds and shapes
/// are small; a large computed constant (a weight behind a Transpose) is not copied.
const MAX_VALUE_LEN: usize = 1 << 22;

/// tract's analysis of `proto` (whose input already has its fixed shape): the shapes of
/// the input and every node output, and the values tract knows of node outputs.
fn analyse(
    proto: &pb::ModelProto,
    input: &str,
    input_shape: &[usize],
) -> Result<(Shapes, HashMap<String, pb::TensorProto>)> {
    // Every node output becomes a graph output, so that tract keeps it (and its name)
    // through translation; outputs are read back in order.
    let mut probe = proto.clone();
    let g = probe
        .graph
        .as_mut()
        .ok_or_else(|| anyhow!("the model has no graph"))?;
    g.value_info.clear();
    let mut names: Vec<String> = g.output.iter().map(|o| o.name.clone()).collect();
    let mut seen: HashSet<String> = names.iter().cloned().collect();
    let extra: Vec<String> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter())
        .filter(|o| !o.is_empty() && seen.insert((*o).clone()))
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
    let mut konst = HashMap::new();
    shapes.insert(input.to_string(), input_shape.to_vec());
    for (name, outlet) in names.iter().zip(typed.output_outlets().map_err(err)?) {
        let fact = typed.outlet_fact(*outlet).map_err(err)?;
        if let Some(dims) = fact.shape.as_concrete() {
            shapes.insert(name.clone(), dims.to_vec());
        }
        if let Some(t) = fact
            .konst
            .as_ref()
            .filter(|t| t.len() <= MAX_VALUE_LEN)
            .and_then(|t| to_proto(name, t))
        {
            konst.insert(name.clone(), t);
        }
    }
    if let Some(g) = proto.graph.as_ref() {
        for t in &g.initializer {
            shapes
                .entry(t.name.clone())
                .or_insert_with(|| t.dims.iter().map(|d| *d as usize).collect());
        }
    }
    Ok((shapes, konst))
}

/// A tract tensor as an ONNX tensor named `name` (float, int64, int32 and bool; shape
/// values, which tract keeps as symbolic dims, as int64); `None` for other types.
fn to_proto(name: &str, t: &Tensor) -> Option<pb::TensorProto> {
    let mut p = pb::TensorProto {
        name: name.to_string(),
        dims: t.shape().iter().map(|d| *d as i64).collect(),
        ..Default::default()
    };
    let dt = t.datum_type();
    if dt == DatumType::F32 {
        p.data_type = 1;
        p.float_data = t
            .to_plain_array_view::<f32>()
            .ok()?
            .iter()
            .copied()
            .collect();
    } else if dt == DatumType::I64 || dt == DatumType::TDim {
        p.data_type = 7;
        let c = t.cast_to::<i64>().ok()?;
        p.int64_data = c
            .to_plain_array_view::<i64>()
            .ok()?
            .iter()
            .copied()
            .collect();
    } else if dt == DatumType::I32 {
        p.data_type = 6;
        p.int32_data = t
            .to_plain_array_view::<i32>()
            .ok()?
            .iter()
            .copied()
            .collect();
    } else if dt == DatumType::Bool {
        p.data_type = 9;
        p.int32_data = t
            .to_plain_array_view::<bool>()
            .ok()?
            .iter()
            .map(|b| *b as i32)
            .collect();
    } else {
        return None;
    }
    Some(p)
}

/// Shapes of the tensors of `proto` when `input` has shape `input_shape`.
pub fn infer(proto: &pb::ModelProto, input: &str, input_shape: &[usize]) -> Result<Shapes> {
    Ok(FixedBatch::of(proto, input, input_shape, &[])?.shapes)
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

    fn fixture(name: &str) -> pb::ModelProto {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/exporters")
            .join(name);
        crate::model::OnnxModel::load(&path).unwrap().proto
    }

    #[test]
    fn shape_subgraphs_fold_into_initializers() {
        // The legacy exporter computes ShuffleNet's Reshape targets and chunk bounds
        // from Shape at run time.
        let m = fixture("shuffle_legacy_dyn.onnx");
        let count = |p: &pb::ModelProto, op: &str| {
            p.graph
                .as_ref()
                .unwrap()
                .node
                .iter()
                .filter(|n| n.op_type == op)
                .count()
        };
        assert!(count(&m, "Shape") > 0);
        let fb = FixedBatch::of(&m, "input", &[2, 3, 16, 16], &[]).unwrap();
        let g = fb.proto.graph.as_ref().unwrap();
        for op in [
            "Shape",
            "Gather",
            "Unsqueeze",
            "Concat",
            "Cast",
            "Div",
            "Mul",
        ] {
            let left: Vec<_> = g.node.iter().filter(|n| n.op_type == op).collect();
            // Concat of the two branches stays (it carries data); nothing else does.
            assert!(
                left.iter().all(|n| op == "Concat" && n.input.len() == 2),
                "{op} left: {left:?}"
            );
        }
        let mut init: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
        init.extend(
            g.node
                .iter()
                .filter(|n| n.op_type == "Constant")
                .map(|n| n.output[0].as_str()),
        );
        for n in g
            .node
            .iter()
            .filter(|n| n.op_type == "Slice" || n.op_type == "Reshape")
        {
            assert!(
                n.input[1..].iter().all(|i| init.contains(i.as_str())),
                "{n:?}"
            );
        }
        // Every initializer the folding added is read by a node.
        let read: HashSet<&str> = g
            .node
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .collect();
        let original: HashSet<&str> = m
            .graph
            .as_ref()
            .unwrap()
            .initializer
            .iter()
            .map(|t| t.name.as_str())
            .collect();
        for t in &g.initializer {
            assert!(original.contains(t.name.as_str()) || read.contains(t.name.as_str()));
        }
        assert!(g.value_info.is_empty());
    }

    #[test]
    fn constants_behind_identity_are_values_unless_trained() {
        // The legacy exporter shares equal BatchNormalization variances through Identity.
        let m = fixture("dense_legacy_dyn.onnx");
        let g = m.graph.as_ref().unwrap();
        let id = g.node.iter().find(|n| n.op_type == "Identity").unwrap();
        let fb = FixedBatch::of(&m, "input", &[2, 3, 16, 16], &[]).unwrap();
        let v = &fb.values[&id.output[0]];
        let src = g
            .initializer
            .iter()
            .find(|t| t.name == id.input[0])
            .unwrap();
        assert_eq!(
            crate::model::float_values(v),
            crate::model::float_values(src)
        );
        let trained = [id.input[0].clone()];
        let fb = FixedBatch::of(&m, "input", &[2, 3, 16, 16], &trained).unwrap();
        assert!(!fb.values.contains_key(&id.output[0]));
    }

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
