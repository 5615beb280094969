//! Gradient graphs: reverse-mode differentiation of an ONNX classifier into an ONNX
//! graph, built from standard `ai.onnx` ops only (so ONNX Runtime's standard build and
//! tract both run it).
//!
//! [`gradient_graph`] takes a model (one float input X, logits as its first output) and
//! returns a graph with inputs `X`, then the loss head's inputs (`harden_a`, and
//! `harden_b` for targeted DLR), and outputs `harden_logits` [B,K], `harden_loss` [B]
//! (per example) and `harden_grad` (d sum(loss) / dX, shaped like X). Graphs are built for
//! a fixed batch B, so every shape is static (see `shapes`). The loss head seeds the
//! backward pass with dLoss/dlogits in closed form (`heads`); each op's backward rule
//! lives in `rules`, and `crate::ops` lists the ops. A model ending in Softmax is
//! differentiated from the Softmax's input (its logits, up to a constant).

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, bail, Result};

use crate::model::{self, pb, Dim};

mod builder;
mod heads;
mod rules;
mod shapes;

pub use heads::LossKind;
pub use shapes::Shapes;

use builder::Builder;

/// Names of the gradient graph's tensors.
pub const LOGITS: &str = "harden_logits";
pub const LOSS: &str = "harden_loss";
pub const GRAD: &str = "harden_grad";
pub const HEAD_A: &str = "harden_a";
pub const HEAD_B: &str = "harden_b";

/// Constant tensors of the model (initializers and Constant nodes), by name.
pub struct Consts<'a> {
    tensors: HashMap<&'a str, &'a pb::TensorProto>,
}

impl<'a> Consts<'a> {
    fn of(g: &'a pb::GraphProto) -> Consts<'a> {
        let mut tensors: HashMap<&str, &pb::TensorProto> =
            g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        for n in &g.node {
            if n.op_type == "Constant" {
                if let (Some(out), Some(t)) = (
                    n.output.first(),
                    n.attribute.iter().find_map(|a| a.t.as_ref()),
                ) {
                    tensors.insert(out.as_str(), t);
                }
            }
        }
        Consts { tensors }
    }

    pub fn is_const(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn i64s(&self, name: &str) -> Option<Vec<i64>> {
        let t = self.tensors.get(name)?;
        match t.data_type {
            7 => model::int64_values(t),
            6 => {
                if !t.int32_data.is_empty() {
                    Some(t.int32_data.iter().map(|v| *v as i64).collect())
                } else {
                    Some(
                        t.raw_data
                            .chunks_exact(4)
                            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                            .collect(),
                    )
                }
            }
            _ => None,
        }
    }

    pub fn f32s(&self, name: &str) -> Option<Vec<f32>> {
        let t = self.tensors.get(name)?;
        match t.data_type {
            1 if !t.float_data.is_empty() => Some(t.float_data.clone()),
            1 => Some(
                t.raw_data
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            11 if !t.double_data.is_empty() => {
                Some(t.double_data.iter().map(|v| *v as f32).collect())
            }
            11 => Some(
                t.raw_data
                    .chunks_exact(8)
                    .map(|c| {
                        f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                    })
                    .collect(),
            ),
            _ => None,
        }
    }
}

/// The name a node's output may be known by in messages.
pub fn node_label(n: &pb::NodeProto) -> String {
    if n.name.is_empty() {
        format!(
            "{} -> {}",
            n.op_type,
            n.output.first().map(String::as_str).unwrap_or("?")
        )
    } else {
        n.name.clone()
    }
}

/// A gradient graph and what it expects.
pub struct GradGraph {
    pub proto: pb::ModelProto,
    pub batch: usize,
    pub num_classes: usize,
    /// Inputs after X: 0, 1 or 2 tensors of shape [B, K].
    pub head_inputs: usize,
}

/// The logits tensor: the first output, or the input of a final Softmax.
fn logits_name(g: &pb::GraphProto) -> Result<String> {
    let out = g
        .output
        .first()
        .ok_or_else(|| anyhow!("the model has no output"))?;
    if let Some(n) = g.node.iter().find(|n| n.output.first() == Some(&out.name)) {
        if n.op_type == "Softmax" {
            if let Some(i) = n.input.first() {
                return Ok(i.clone());
            }
        }
    }
    Ok(out.name.clone())
}

/// Builds the gradient graph of `proto` (input `input`, examples of `example_shape`) for
/// `batch` examples per run and the loss `kind`.
pub fn gradient_graph(
    proto: &pb::ModelProto,
    input: &str,
    example_shape: &[usize],
    batch: usize,
    kind: LossKind,
) -> Result<GradGraph> {
    let g0 = proto
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("the model has no graph"))?;
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0);
    let mut x_shape = vec![batch];
    x_shape.extend_from_slice(example_shape);
    let shapes = shapes::infer(proto, input, &x_shape)?;
    let logits = logits_name(g0)?;
    let lshape = shapes
        .get(&logits)
        .ok_or_else(|| anyhow!("shape analysis gave no shape for the logits '{logits}'"))?
        .clone();
    if lshape.first() != Some(&batch) || lshape.iter().product::<usize>() % batch != 0 {
        bail!("the logits '{logits}' have shape {lshape:?}, without the batch ({batch}) first");
    }
    let k = lshape.iter().product::<usize>() / batch;
    let consts = Consts::of(g0);

    // Tensors that depend on X, and nodes on a path from X to the logits.
    let mut depends: HashSet<&str> = HashSet::from([input]);
    for n in &g0.node {
        if n.input.iter().any(|i| depends.contains(i.as_str())) {
            depends.extend(n.output.iter().map(String::as_str));
        }
    }
    let mut needed: HashSet<&str> = HashSet::from([logits.as_str()]);
    let mut path = vec![];
    for (idx, n) in g0.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o.as_str()))
            && n.input.iter().any(|i| depends.contains(i.as_str()))
        {
            path.push(idx);
            for i in &n.input {
                if depends.contains(i.as_str()) {
                    needed.insert(i.as_str());
                }
            }
        }
    }

    let mut b = Builder::new(opset, "harden_g_");
    let logits2d = b.reshape(&logits, &[batch, k]);
    b.op_into("Identity", &[&logits2d], vec![], LOGITS);
    let (loss, gz) = heads::seed(&mut b, kind, LOGITS, batch, k)?;
    b.op_into("Identity", &[&loss], vec![], LOSS);
    let gz = b.reshape(&gz, &lshape);

    let mut grads: HashMap<String, Vec<String>> = HashMap::new();
    grads.insert(logits.clone(), vec![gz]);
    for &idx in &path {
        let n = &g0.node[idx];
        let dys: Vec<Option<String>> = n
            .output
            .iter()
            .map(|o| sum_grads(&mut b, grads.remove(o)))
            .collect();
        if dys.iter().all(Option::is_none) {
            continue;
        }
        let needs: Vec<bool> = n
            .input
            .iter()
            .map(|i| !i.is_empty() && depends.contains(i.as_str()) && needed.contains(i.as_str()))
            .collect();
        let dxs = rules::backward(&mut b, n, &dys, &needs, &shapes, &consts)
            .map_err(|e| anyhow!("node '{}' ({}): {e}", node_label(n), n.op_type))?;
        for (i, dx) in dxs.into_iter().enumerate() {
            if let (Some(dx), true) = (dx, needs.get(i).copied().unwrap_or(false)) {
                grads.entry(n.input[i].clone()).or_default().push(dx);
            }
        }
    }
    match sum_grads(&mut b, grads.remove(input)) {
        Some(gx) => b.op_into("Identity", &[&gx], vec![], GRAD),
        None => {
            let zeros = b.const_f32(&x_shape, vec![0.0; x_shape.iter().product()]);
            b.op_into("Identity", &[&zeros], vec![], GRAD);
        }
    }

    // Assemble: the forward graph with a fixed batch, then the backward nodes.
    let mut out = proto.clone();
    let g = out.graph.as_mut().ok_or_else(|| anyhow!("no graph"))?;
    let fixed: Vec<Dim> = x_shape.iter().map(|d| Dim::Fixed(*d)).collect();
    let vi = g
        .input
        .iter_mut()
        .find(|v| v.name == input)
        .ok_or_else(|| anyhow!("the model has no input '{input}'"))?;
    model::set_value_shape(vi, &fixed);
    g.value_info.clear();
    g.node.extend(b.nodes);
    g.initializer.extend(b.inits);
    let head_inputs = kind.head_inputs();
    for name in [HEAD_A, HEAD_B].iter().take(head_inputs) {
        g.input.push(model::float_value_info(
            name,
            &[Dim::Fixed(batch), Dim::Fixed(k)],
        ));
    }
    g.output = vec![
        model::float_value_info(LOGITS, &[Dim::Fixed(batch), Dim::Fixed(k)]),
        model::float_value_info(LOSS, &[Dim::Fixed(batch)]),
        model::float_value_info(GRAD, &fixed),
    ];
    Ok(GradGraph {
        proto: out,
        batch,
        num_classes: k,
        head_inputs,
    })
}

/// The sum of gradient contributions (None when there are none).
fn sum_grads(b: &mut Builder, parts: Option<Vec<String>>) -> Option<String> {
    let parts = parts?;
    let mut it = parts.into_iter();
    let first = it.next()?;
    Some(it.fold(first, |acc, p| b.add(&acc, &p)))
}
