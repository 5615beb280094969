//! `harden inspect`: what a model is, and what harden can do with it.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::{self, OnnxModel, OutputKind, TensorInfo};
use crate::spec::{guess_layout, Layout};

#[derive(Clone, Debug, Serialize)]
pub struct UnsupportedNode {
    pub node: String,
    pub op: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Inspection {
    pub path: String,
    pub sha256: String,
    pub bytes: u64,
    pub ir_version: i64,
    pub opset: i64,
    pub producer: String,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    pub guessed_layout: Option<Layout>,
    pub parameters: u64,
    pub nodes: usize,
    pub ops: BTreeMap<String, usize>,
    pub output_kind: OutputKind,
    pub unsupported: Vec<UnsupportedNode>,
    /// What loading changed so that runtimes take the model (unused inputs removed, IR
    /// version lowered), one line each.
    pub notes: Vec<String>,
    /// QDQ models: what is quantized and how (`model::quant`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<model::quant::Quantization>,
    /// Why harden refuses the model's quantization (a bad scale, the QOperator format).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization_error: Option<String>,
}

pub fn inspect(m: &OnnxModel) -> Inspection {
    let inputs = m.inputs();
    let (quantization, quantization_error) = match model::quant::check(m.graph()) {
        Ok(q) => (q, None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    Inspection {
        quantization,
        quantization_error,
        path: m.path.display().to_string(),
        sha256: m.sha256.clone(),
        bytes: m.file_bytes,
        ir_version: m.proto.ir_version,
        opset: m.opset(),
        producer: m.producer(),
        guessed_layout: (inputs.len() == 1).then(|| guess_layout(&inputs[0].shape)),
        inputs,
        outputs: m.outputs(),
        parameters: m.parameter_count(),
        nodes: m.graph().node.len(),
        ops: m.op_histogram(),
        output_kind: m.output_kind(),
        unsupported: m
            .unsupported_nodes()
            .into_iter()
            .map(|(node, op)| UnsupportedNode { node, op })
            .collect(),
        notes: m.load_notes.lines(m.proto.ir_version),
    }
}

pub fn render_text(i: &Inspection) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let tensor = |t: &TensorInfo| {
        format!(
            "{} {} {}",
            t.name,
            t.elem_type,
            model::shape_string(&t.shape)
        )
    };
    let _ = writeln!(
        s,
        "model       {} ({} bytes, sha256 {})",
        i.path, i.bytes, i.sha256
    );
    let _ = writeln!(
        s,
        "producer    {}",
        if i.producer.is_empty() {
            "(none)"
        } else {
            &i.producer
        }
    );
    let _ = writeln!(s, "ir_version  {}   opset {}", i.ir_version, i.opset);
    for n in &i.notes {
        let _ = writeln!(s, "note        {n}");
    }
    for t in &i.inputs {
        let _ = writeln!(s, "input       {}", tensor(t));
    }
    if let Some(l) = i.guessed_layout {
        let _ = writeln!(s, "layout      {l:?} (guessed; override with --layout)");
    }
    for t in &i.outputs {
        let _ = writeln!(s, "output      {}", tensor(t));
    }
    let _ = writeln!(
        s,
        "output kind {}",
        match i.output_kind {
            OutputKind::Logits => "logits",
            OutputKind::Probabilities => "probabilities (ends in Softmax; harden attacks its log)",
        }
    );
    let _ = writeln!(s, "parameters  {}", i.parameters);
    let ops: Vec<String> = i.ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    let _ = writeln!(s, "ops         {} nodes: {}", i.nodes, ops.join(", "));
    if let Some(q) = &i.quantization {
        let _ = writeln!(
            s,
            "quantized   {} ({} QuantizeLinear, {} DequantizeLinear): {} weight tensor(s), {} quantized activation(s)",
            q.format,
            q.quantize_nodes,
            q.dequantize_nodes,
            q.weights.len(),
            q.activations.len()
        );
        let row = |kind: &str, t: &model::quant::QuantTensor| {
            let zp = if t.zero_point_min == t.zero_point_max {
                format!("zero point {}", t.zero_point_min)
            } else {
                format!("zero points {}..{}", t.zero_point_min, t.zero_point_max)
            };
            let scale = if t.scale_min == t.scale_max {
                format!("scale {:.3e}", t.scale_min)
            } else {
                format!("scales {:.3e}..{:.3e}", t.scale_min, t.scale_max)
            };
            format!(
                "  {kind:<9} {} {} {}, {scale}, {zp}",
                t.tensor, t.int_type, t.granularity
            )
        };
        for t in &q.weights {
            let _ = writeln!(s, "{}", row("weight", t));
        }
        for t in &q.activations {
            let _ = writeln!(s, "{}", row("activation", t));
        }
    }
    if let Some(e) = &i.quantization_error {
        let _ = writeln!(s, "quantized   refused: {e}");
    }
    if i.unsupported.is_empty() {
        let _ = writeln!(s, "unsupported none");
    } else {
        // Every missing op, the nodes that use it, and where such an op usually comes from.
        let mut by_op: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for u in &i.unsupported {
            by_op.entry(&u.op).or_default().push(&u.node);
        }
        let names: Vec<&str> = by_op.keys().copied().collect();
        let _ = writeln!(
            s,
            "unsupported {} ({} node(s); harden cannot differentiate these)",
            names.join(", "),
            i.unsupported.len()
        );
        for (op, nodes) in &by_op {
            const SHOWN: usize = 5;
            let mut list = nodes
                .iter()
                .take(SHOWN)
                .map(|n| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(", ");
            if nodes.len() > SHOWN {
                list.push_str(&format!(" and {} more", nodes.len() - SHOWN));
            }
            let usual = crate::ops::usual_architectures(op.split(':').next_back().unwrap_or(op))
                .map(|a| format!("; usual in {a}"))
                .unwrap_or_default();
            let _ = writeln!(s, "  missing   {op} x{}: {list}{usual}", nodes.len());
        }
    }
    s
}
