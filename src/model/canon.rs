//! Load-time canonicalization: the changes a model gets once, in memory, so that both
//! runtimes take what exporters write (see [`LoadNotes`] for what is reported).
//!
//! - Graph inputs that no node reads (tf2onnx leaves two on Keras EfficientNetB0) are
//!   removed: a runtime would otherwise demand values for them, and harden feeds one
//!   input. Inputs that are also initializers (IR < 4 exporters) stay as they are.
//! - `value_info` (optional shape annotations of intermediate tensors) is dropped: the
//!   dynamo exporter annotates them with its own batch symbol, which no longer unifies
//!   once harden names or fixes the batch (tract: "Impossible to unify Sym(batch) with
//!   Val(16)"); both runtimes infer them again.
//! - An IR version newer than the model needs is lowered to the one its opsets and types
//!   need: the current `onnx` package saves IR 14, which ONNX Runtime 1.31 refuses
//!   ("max supported IR version: 13") although nothing in such a model is new.
//! - A ConstantOfShape without `value` gets the default written out (a float32 zero, as
//!   the standard says): tract 0.23 types it F64 (the dynamo exporter's Swin attention
//!   mask then fails "Impossible to unify F64 with F32"). Same model, nothing reported.

use std::collections::HashSet;

use super::{pb, LoadNotes};

/// Applies the load-time rewrites to `proto`; returns what changed.
pub fn canonicalize(proto: &mut pb::ModelProto) -> LoadNotes {
    let mut notes = LoadNotes::default();
    if let Some(g) = proto.graph.as_mut() {
        notes.pruned_inputs = prune_unused_inputs(g);
        g.value_info.clear();
        explicit_constant_of_shape_value(g);
    }
    match needed_ir_version(proto) {
        Ok(need) if proto.ir_version > need && proto.ir_version > LOWER_ABOVE => {
            notes.ir_lowered_from = Some(proto.ir_version);
            proto.ir_version = need.max(LOWER_TO_AT_LEAST);
        }
        Err(why) if proto.ir_version > LOWER_ABOVE => notes.ir_kept_because = Some(why),
        _ => {}
    }
    notes
}

/// Writes out the default `value` (float32 zero, one element) of ConstantOfShape nodes
/// that have none, in `g` and its subgraphs.
fn explicit_constant_of_shape_value(g: &mut pb::GraphProto) {
    for n in &mut g.node {
        for a in &mut n.attribute {
            if let Some(sub) = a.g.as_mut() {
                explicit_constant_of_shape_value(sub);
            }
            for sub in &mut a.graphs {
                explicit_constant_of_shape_value(sub);
            }
        }
        if n.op_type == "ConstantOfShape"
            && (n.domain.is_empty() || n.domain == "ai.onnx")
            && !n.attribute.iter().any(|a| a.name == "value")
        {
            n.attribute.push(pb::AttributeProto {
                name: "value".into(),
                r#type: 4,
                t: Some(super::float_tensor("value", &[1], &[0.0])),
                ..Default::default()
            });
        }
    }
}

/// IR versions up to this one are left alone (IR 10 is the one of opset 21, the newest
/// opset harden accepts; every ONNX Runtime since 1.17 reads it).
const LOWER_ABOVE: i64 = 10;
/// Never lower below IR 7: below 4 initializers had to be graph inputs.
const LOWER_TO_AT_LEAST: i64 = 7;

/// Removes graph inputs that are neither initializers, read by a node (subgraphs
/// included), nor graph outputs; returns their names. Nothing is removed when no input
/// would be left.
fn prune_unused_inputs(g: &mut pb::GraphProto) -> Vec<String> {
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut read: HashSet<String> = HashSet::new();
    names_read(g, &mut read);
    let unused: Vec<String> = g
        .input
        .iter()
        .filter(|v| !inits.contains(v.name.as_str()) && !read.contains(&v.name))
        .map(|v| v.name.clone())
        .collect();
    let real = g
        .input
        .iter()
        .filter(|v| !inits.contains(v.name.as_str()))
        .count();
    if unused.is_empty() || unused.len() == real {
        return vec![];
    }
    g.input.retain(|v| !unused.contains(&v.name));
    unused
}

/// Every tensor name read in `g`: node inputs (of subgraphs too, which may read outer
/// names) and graph outputs.
fn names_read(g: &pb::GraphProto, out: &mut HashSet<String>) {
    for n in &g.node {
        super::node_reads(n, out);
    }
    out.extend(g.output.iter().map(|o| o.name.clone()));
}

/// The IR version the default opset needs (onnx's VERSION_TABLE).
fn ir_for_opset(opset: i64) -> i64 {
    match opset {
        ..=8 => 3,
        9 => 4,
        10 => 5,
        11 => 6,
        12..=14 => 7,
        15..=18 => 8,
        19..=20 => 9,
        21 => 10,
        22 => 10,
        23 => 11,
        24 => 12,
        _ => i64::MAX,
    }
}

/// The IR version an element type needs (float8: 9, 4-bit ints: 10); an error for types
/// newer than that, which harden does not lower.
fn ir_for_type(t: i32) -> Result<i64, String> {
    match t {
        0..=16 => Ok(3),
        17..=20 => Ok(9),
        21..=22 => Ok(10),
        _ => Err(format!("it uses tensor element type {t}")),
    }
}

/// The lowest IR version that holds everything `proto` uses: its opsets, element types
/// and local functions; an error naming what keeps it newer.
fn needed_ir_version(proto: &pb::ModelProto) -> Result<i64, String> {
    let mut need = 3;
    for o in &proto.opset_import {
        if o.domain.is_empty() || o.domain == "ai.onnx" {
            let v = ir_for_opset(o.version);
            if v == i64::MAX {
                return Err(format!("it imports ai.onnx opset {}", o.version));
            }
            need = need.max(v);
        }
    }
    if !proto.functions.is_empty() {
        need = need.max(8);
    }
    let mut types = vec![];
    if let Some(g) = proto.graph.as_ref() {
        graph_types(g, &mut types);
    }
    for t in types {
        need = need.max(ir_for_type(t)?);
    }
    Ok(need)
}

/// Element types of the tensors, value infos and attributes of `g` and its subgraphs.
fn graph_types(g: &pb::GraphProto, out: &mut Vec<i32>) {
    out.extend(g.initializer.iter().map(|t| t.data_type));
    for v in g.input.iter().chain(&g.output).chain(&g.value_info) {
        if let Some(pb::type_proto::Value::TensorType(t)) =
            v.r#type.as_ref().and_then(|t| t.value.as_ref())
        {
            out.push(t.elem_type);
        }
    }
    for n in &g.node {
        for a in &n.attribute {
            out.extend(a.t.iter().chain(a.tensors.iter()).map(|t| t.data_type));
            // Cast's `to` and similar attributes name element types.
            if a.name == "to" || a.name == "dtype" {
                out.push(a.i as i32);
            }
            for sub in a.g.iter().chain(a.graphs.iter()) {
                graph_types(sub, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{float_value_info, node, Dim};

    fn model(ir: i64, opset: i64, inputs: &[&str]) -> pb::ModelProto {
        let mut g = pb::GraphProto {
            node: vec![node("Relu", "r", &["x"], &["y"])],
            output: vec![float_value_info("y", &[Dim::Fixed(1), Dim::Fixed(2)])],
            ..Default::default()
        };
        for i in inputs {
            g.input
                .push(float_value_info(i, &[Dim::Fixed(1), Dim::Fixed(2)]));
        }
        pb::ModelProto {
            ir_version: ir,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: opset,
            }],
            graph: Some(g),
            ..Default::default()
        }
    }

    #[test]
    fn unused_inputs_are_pruned_and_named() {
        let mut m = model(8, 13, &["x", "extra1", "extra2"]);
        let notes = canonicalize(&mut m);
        assert_eq!(notes.pruned_inputs, vec!["extra1", "extra2"]);
        let names: Vec<&str> = m
            .graph
            .as_ref()
            .unwrap()
            .input
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, vec!["x"]);
        // A model whose only inputs are all unused keeps them (nothing would be left).
        let mut m = model(8, 13, &["a"]);
        assert!(canonicalize(&mut m).pruned_inputs.is_empty());
    }

    #[test]
    fn constant_of_shape_gets_its_default_value_written_out() {
        let mut m = model(8, 17, &["x"]);
        let g = m.graph.as_mut().unwrap();
        g.node.push(node("ConstantOfShape", "c", &["s"], &["z"]));
        canonicalize(&mut m);
        let n = &m.graph.unwrap().node[1];
        let v = n.attribute.iter().find(|a| a.name == "value").unwrap();
        let t = v.t.as_ref().unwrap();
        assert_eq!(
            (t.data_type, crate::model::float_values(t)),
            (1, Some(vec![0.0]))
        );
    }

    #[test]
    fn ir_14_is_lowered_to_what_the_opset_needs() {
        let mut m = model(14, 18, &["x"]);
        let notes = canonicalize(&mut m);
        assert_eq!(notes.ir_lowered_from, Some(14));
        assert_eq!(m.ir_version, 8);
        let mut m = model(14, 13, &["x"]);
        canonicalize(&mut m);
        assert_eq!(m.ir_version, 7);
        // IR 10 and below stay as saved.
        let mut m = model(9, 13, &["x"]);
        assert_eq!(canonicalize(&mut m), LoadNotes::default());
        assert_eq!(m.ir_version, 9);
    }

    #[test]
    fn new_types_keep_the_ir_version() {
        let mut m = model(14, 21, &["x"]);
        m.graph.as_mut().unwrap().initializer.push(pb::TensorProto {
            name: "w".into(),
            data_type: 23, // FLOAT4E2M1 (IR 11)
            ..Default::default()
        });
        let notes = canonicalize(&mut m);
        assert_eq!(m.ir_version, 14);
        assert!(notes.ir_kept_because.unwrap().contains("element type 23"));
    }
}
