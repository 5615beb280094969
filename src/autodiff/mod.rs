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
//!
//! [`training_graph`] adds weight gradients: the chosen float initializers
//! ([`trainable_params`] lists the candidates) become graph inputs after the head's, and
//! each gets an output `harden_grad_<param>` after the three above, so updated weights
//! are fed in without a rebuild. The reverse pass starts from X and the parameters alike;
//! a trained BatchNormalization is first split into elementary ops (tract needs constant
//! BatchNormalization parameters); Conv weight gradients cover group 1 and depthwise.

use std::collections::{HashMap, HashSet};

use anyhow::{anyhow, bail, Result};

use crate::model::{self, pb, Dim};

pub(crate) mod builder;
mod heads;
mod rules;
mod shapes;
pub mod step;

pub use heads::LossKind;
pub use shapes::{largest_activation, FixedBatch, Shapes};

fn empty_graph() -> &'static pb::GraphProto {
    static EMPTY: std::sync::OnceLock<pb::GraphProto> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Default::default)
}

/// The ops with a registered backward rule, with their class (`crate::ops` reads this).
pub fn registered_ops() -> impl Iterator<Item = (&'static str, crate::ops::OpClass)> {
    rules::registry().map(|d| (d.op, d.class))
}

use builder::Builder;

/// Names of the gradient graph's tensors.
pub const LOGITS: &str = "harden_logits";
pub const LOSS: &str = "harden_loss";
pub const GRAD: &str = "harden_grad";
pub const HEAD_A: &str = "harden_a";
pub const HEAD_B: &str = "harden_b";

/// Constant tensors of the model, by name: initializers (shared ones too), Constant
/// nodes, and what is constant once the batch is fixed (`FixedBatch`: shape subgraphs
/// folded into initializers, float tensors computed from constants such as
/// BatchNormalization statistics reached through Identity or Cast).
pub struct Consts<'a> {
    tensors: HashMap<&'a str, &'a pb::TensorProto>,
}

impl<'a> Consts<'a> {
    /// The constants of a model at a fixed batch, `params` excepted (`fb.values` holds
    /// none derived from them when `fb` was made for the same `params`).
    fn of(fb: &'a FixedBatch, params: &[String]) -> Consts<'a> {
        let g = fb
            .proto
            .graph
            .as_ref()
            .map(|g| g as &pb::GraphProto)
            .unwrap_or_else(|| empty_graph());
        let mut tensors: HashMap<&str, &pb::TensorProto> =
            g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
        tensors.extend(fb.values.iter().map(|(k, t)| (k.as_str(), t)));
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
        // Trained parameters are graph inputs: their values may change after the build.
        for p in params {
            tensors.remove(p.as_str());
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
        model::float_values(self.tensors.get(name)?)
    }

    /// The constant tensor `name` itself (its type and raw values).
    pub fn tensor(&self, name: &str) -> Option<&'a pb::TensorProto> {
        self.tensors.get(name).copied()
    }
}

/// How gradients pass through rounding (`--through-rounding`): QuantizeLinear, Round,
/// Floor, Ceil and casts from float to integers (`rules/quant.rs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Rounding {
    /// The exact derivative where it exists: zero (gradient attacks are blind).
    #[default]
    Zero,
    /// Straight-through: identity through Round/Floor/Ceil/integer Casts (BPDA, Athalye
    /// et al. 2018); through QuantizeLinear, 1/scale masked to the integer range (the
    /// derivative of the clipping surrogate). An approximation.
    Ste,
}

impl Rounding {
    pub fn name(self) -> &'static str {
        match self {
            Rounding::Zero => "zero",
            Rounding::Ste => "ste",
        }
    }
}

/// The metadata key by which a model given to [`gradient_graph`] and
/// [`training_graph_wrt`] carries its [`Rounding`] (absent: `zero`). The CLI sets it
/// from `--through-rounding` on the model it loads, so every graph built for the run
/// (attacks, sanity probes, training) uses the same choice, and a hardened model keeps
/// it as a record.
pub const ROUNDING_KEY: &str = "harden.through_rounding";

/// The [`Rounding`] `proto` asks for ([`ROUNDING_KEY`]).
pub fn through_rounding(proto: &pb::ModelProto) -> Rounding {
    match proto
        .metadata_props
        .iter()
        .find(|p| p.key == ROUNDING_KEY)
        .map(|p| p.value.as_str())
    {
        Some("ste") => Rounding::Ste,
        _ => Rounding::Zero,
    }
}

/// Sets the [`Rounding`] gradient graphs of `proto` use.
pub fn set_through_rounding(proto: &mut pb::ModelProto, r: Rounding) {
    proto.metadata_props.retain(|p| p.key != ROUNDING_KEY);
    proto.metadata_props.push(pb::StringStringEntryProto {
        key: ROUNDING_KEY.to_string(),
        value: r.name().to_string(),
    });
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
    build(proto, input, example_shape, batch, kind, &[], Wrt::INPUT)
}

/// Which gradients a graph computes: w.r.t. the input X (attacks), w.r.t. the lifted
/// parameters (training), or both. A gradient not asked for is never built: the graph's
/// `harden_grad` output is then zeros, and no `harden_grad_<param>` outputs exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wrt {
    pub input: bool,
    pub params: bool,
}

impl Wrt {
    pub const INPUT: Wrt = Wrt {
        input: true,
        params: false,
    };
    pub const PARAMS: Wrt = Wrt {
        input: false,
        params: true,
    };
    pub const BOTH: Wrt = Wrt {
        input: true,
        params: true,
    };
}

/// The prefix of a parameter gradient's output name.
pub const GRAD_PARAM_PREFIX: &str = "harden_grad_";

/// The name of the output carrying d sum(loss) / d `param`.
pub fn param_grad_name(param: &str) -> String {
    format!("{GRAD_PARAM_PREFIX}{param}")
}

/// A training graph: a gradient graph whose trainable parameters are graph inputs.
///
/// Inputs: X, the loss head's inputs (`harden_a`, `harden_b`), then the parameters in
/// `params` order (float tensors shaped like the initializers they replace, which are
/// removed from the graph). Outputs: `harden_logits`, `harden_loss`, `harden_grad`
/// (d sum(loss) / dX, as in [`gradient_graph`]), then one `harden_grad_<param>`
/// (d sum(loss) / d param, shaped like the param) per parameter, in `params` order.
/// Updated weights are fed as inputs, so the graph never needs a rebuild.
pub struct TrainGraph {
    pub grad: GradGraph,
    pub params: Vec<String>,
    /// Shapes of `params`, in order.
    pub param_shapes: Vec<Vec<usize>>,
    /// Current values of `params` (from the initializers), in order.
    pub param_values: Vec<Vec<f32>>,
}

/// Builds the training graph of `proto` for the parameters `params` (see [`TrainGraph`];
/// [`trainable_params`] lists the candidates). Each param must be a float initializer.
pub fn training_graph(
    proto: &pb::ModelProto,
    input: &str,
    example_shape: &[usize],
    batch: usize,
    kind: LossKind,
    params: &[String],
) -> Result<TrainGraph> {
    training_graph_wrt(proto, input, example_shape, batch, kind, params, Wrt::BOTH)
}

/// [`training_graph`] computing only the gradients `wrt` asks for: with `Wrt::INPUT` the
/// parameters are still graph inputs (attacks on a model being trained), with
/// `Wrt::PARAMS` the input gradient is skipped (the weight update).
pub fn training_graph_wrt(
    proto: &pb::ModelProto,
    input: &str,
    example_shape: &[usize],
    batch: usize,
    kind: LossKind,
    params: &[String],
    wrt: Wrt,
) -> Result<TrainGraph> {
    let g0 = proto
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("the model has no graph"))?;
    let mut param_shapes = vec![];
    let mut param_values = vec![];
    for p in params {
        let t = g0
            .initializer
            .iter()
            .find(|t| &t.name == p)
            .ok_or_else(|| anyhow!("'{p}' is not an initializer of the model"))?;
        if t.data_type != 1 {
            bail!("'{p}' is not a float tensor and cannot be trained");
        }
        param_shapes.push(t.dims.iter().map(|d| *d as usize).collect::<Vec<_>>());
        param_values.push(
            model::float_values(t).ok_or_else(|| anyhow!("cannot read the values of '{p}'"))?,
        );
    }
    let grad = build(proto, input, example_shape, batch, kind, params, wrt)?;
    Ok(TrainGraph {
        grad,
        params: params.to_vec(),
        param_shapes,
        param_values,
    })
}

/// The model itself (logits out, no loss or gradients) with `params` lifted to graph
/// inputs after X, in `params` order, exactly as a [`training_graph`] takes them: the
/// forward pass of a model whose weights change between runs. X keeps its batch
/// dimension as the model declares it.
pub fn forward_graph(
    proto: &pb::ModelProto,
    input: &str,
    example_shape: &[usize],
    params: &[String],
) -> Result<pb::ModelProto> {
    let mut out = if has_trained_bn(proto, params) {
        let mut x_shape = vec![1];
        x_shape.extend_from_slice(example_shape);
        let fb = FixedBatch::of(proto, input, &x_shape, params)?;
        split_trained_bn(proto, &fb, params)?
    } else {
        proto.clone()
    };
    let g = out
        .graph
        .as_mut()
        .ok_or_else(|| anyhow!("the model has no graph"))?;
    let mut lifted = vec![];
    for p in params {
        let t = g
            .initializer
            .iter()
            .find(|t| &t.name == p)
            .ok_or_else(|| anyhow!("'{p}' is not an initializer of the model"))?;
        let dims: Vec<Dim> = t.dims.iter().map(|d| Dim::Fixed(*d as usize)).collect();
        lifted.push(model::float_value_info(p, &dims));
    }
    g.initializer.retain(|t| !params.contains(&t.name));
    g.input.retain(|v| !params.contains(&v.name));
    g.input.extend(lifted);
    g.value_info.clear();
    Ok(out)
}

/// The model at a fixed batch with the tensors `names` as its outputs (static shapes):
/// to read intermediate activations (BatchNormalization inputs for `--update-bn`).
pub fn tap_graph(
    proto: &pb::ModelProto,
    input: &str,
    example_shape: &[usize],
    batch: usize,
    names: &[String],
) -> Result<pb::ModelProto> {
    let mut x_shape = vec![batch];
    x_shape.extend_from_slice(example_shape);
    let fb = FixedBatch::of(proto, input, &x_shape, &[])?;
    let shapes = &fb.shapes;
    let mut out = fb.proto.clone();
    let g = out
        .graph
        .as_mut()
        .ok_or_else(|| anyhow!("the model has no graph"))?;
    g.output = names
        .iter()
        .map(|n| {
            let s = shapes
                .get(n)
                .ok_or_else(|| anyhow!("shape analysis gave no shape for '{n}'"))?;
            let dims: Vec<Dim> = s.iter().map(|d| Dim::Fixed(*d)).collect();
            Ok(model::float_value_info(n, &dims))
        })
        .collect::<Result<_>>()?;
    Ok(out)
}

/// Float initializers that feed differentiable inputs of ops: Conv W and B, Gemm B and
/// C, MatMul operands, Add/Sub/Mul/Div operands, BatchNormalization scale and bias,
/// PRelu slope; never integer tensors, shape constants, or BatchNormalization mean and
/// variance. In the order the nodes first use them.
pub fn trainable_params(proto: &pb::ModelProto) -> Vec<String> {
    let Some(g) = proto.graph.as_ref() else {
        return vec![];
    };
    let floats: HashSet<&str> = g
        .initializer
        .iter()
        .filter(|t| t.data_type == 1)
        .map(|t| t.name.as_str())
        .collect();
    // BatchNormalization's running statistics stay constants. Exporters share identical
    // initializers (a fresh layer's zero bias is also its zero running mean), directly or
    // through Identity/Cast nodes: such a tensor is not trained.
    let mut frozen: HashSet<&str> = g
        .node
        .iter()
        .filter(|n| n.op_type == "BatchNormalization")
        .flat_map(|n| n.input.iter().skip(3).take(2).map(String::as_str))
        .collect();
    for n in g.node.iter().rev() {
        if matches!(n.op_type.as_str(), "Identity" | "Cast")
            && n.output.iter().any(|o| frozen.contains(o.as_str()))
        {
            frozen.extend(n.input.iter().map(String::as_str));
        }
    }
    let mut out: Vec<String> = vec![];
    for n in &g.node {
        let slots: &[usize] = match n.op_type.as_str() {
            "Conv" | "ConvTranspose" | "Gemm" => &[1, 2],
            "MatMul" | "Add" | "Sub" | "Mul" | "Div" => &[0, 1],
            "BatchNormalization"
            | "LayerNormalization"
            | "InstanceNormalization"
            | "GroupNormalization" => &[1, 2],
            "PRelu" => &[1],
            // Fake-quantized weights (`train::qdq`): the float weight before its
            // QuantizeLinear.
            "QuantizeLinear" => &[0],
            _ => &[],
        };
        for &i in slots {
            if let Some(name) = n.input.get(i) {
                if floats.contains(name.as_str())
                    && !frozen.contains(name.as_str())
                    && !out.contains(name)
                {
                    out.push(name.clone());
                }
            }
        }
    }
    out
}

fn is_trained_bn(n: &pb::NodeProto, params: &[String]) -> bool {
    n.op_type == "BatchNormalization" && n.input.iter().skip(1).take(2).any(|i| params.contains(i))
}

/// Whether a BatchNormalization of `proto` has its scale or bias in `params`.
fn has_trained_bn(proto: &pb::ModelProto, params: &[String]) -> bool {
    proto
        .graph
        .as_ref()
        .is_some_and(|g| g.node.iter().any(|n| is_trained_bn(n, params)))
}

/// Rewrites each BatchNormalization of `proto` whose scale or bias is trained into
/// elementary ops (tract only runs BatchNormalization with constant parameters):
/// (x - mean) * inv * scale + bias, with `inv` = 1/sqrt(var + eps) a constant. Ranks,
/// means and variances are read from `fb`, `proto` at some fixed batch.
fn split_trained_bn(
    proto: &pb::ModelProto,
    fb: &FixedBatch,
    params: &[String],
) -> Result<pb::ModelProto> {
    let g0 = proto
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("the model has no graph"))?;
    let trained = |n: &pb::NodeProto| is_trained_bn(n, params);
    let shapes = &fb.shapes;
    let consts = Consts::of(fb, params);
    let mut out = proto.clone();
    let g = out.graph.as_mut().ok_or_else(|| anyhow!("no graph"))?;
    let mut nodes = vec![];
    let mut inits = vec![];
    for (idx, n) in g0.node.iter().enumerate() {
        if !trained(n) {
            nodes.push(n.clone());
            continue;
        }
        let label = node_label(n);
        if n.input.len() < 5 || n.output.len() != 1 {
            bail!("BatchNormalization '{label}': only the inference form can be trained");
        }
        let rank = shapes
            .get(&n.input[0])
            .ok_or_else(|| anyhow!("no shape for the input of '{label}'"))?
            .len();
        let mean = consts
            .f32s(&n.input[3])
            .ok_or_else(|| anyhow!("BatchNormalization '{label}': mean is not a constant"))?;
        let var = consts
            .f32s(&n.input[4])
            .ok_or_else(|| anyhow!("BatchNormalization '{label}': variance is not a constant"))?;
        let eps = n
            .attribute
            .iter()
            .find(|a| a.name == "epsilon")
            .map(|a| a.f)
            .unwrap_or(1e-5);
        let c = mean.len() as i64;
        let mut dims = vec![c];
        dims.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
        let t = |s: &str| format!("harden_bn{idx}_{s}");
        inits.push(model::float_tensor(&t("mean"), &dims, &mean));
        let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        inits.push(model::float_tensor(&t("inv"), &dims, &inv));
        inits.push(pb::TensorProto {
            name: t("shape"),
            dims: vec![dims.len() as i64],
            data_type: 7,
            int64_data: dims.clone(),
            ..Default::default()
        });
        let op = |op: &str, ins: &[&str], o: &str| model::node(op, o, ins, &[o]);
        nodes.push(op("Sub", &[&n.input[0], &t("mean")], &t("xc")));
        nodes.push(op("Mul", &[&t("xc"), &t("inv")], &t("xh")));
        nodes.push(op("Reshape", &[&n.input[1], &t("shape")], &t("scale")));
        nodes.push(op("Mul", &[&t("xh"), &t("scale")], &t("xs")));
        nodes.push(op("Reshape", &[&n.input[2], &t("shape")], &t("bias")));
        nodes.push(op("Add", &[&t("xs"), &t("bias")], &n.output[0]));
    }
    g.node = nodes;
    g.initializer.extend(inits);
    Ok(out)
}

fn build(
    proto: &pb::ModelProto,
    input: &str,
    example_shape: &[usize],
    batch: usize,
    kind: LossKind,
    params: &[String],
    wrt: Wrt,
) -> Result<GradGraph> {
    let mut x_shape = vec![batch];
    x_shape.extend_from_slice(example_shape);
    // The model at this batch: static shapes, shape subgraphs folded (see `shapes`).
    let mut fb = FixedBatch::of(proto, input, &x_shape, params)?;
    if has_trained_bn(proto, params) {
        let split = split_trained_bn(proto, &fb, params)?;
        fb = FixedBatch::of(&split, input, &x_shape, params)?;
    }
    let g0 = fb
        .proto
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("the model has no graph"))?;
    let opset = crate::model::opset_of(proto);
    // (Taken out of `fb`, whose graph and values `Consts` borrows below.)
    let shapes = std::mem::take(&mut fb.shapes);
    let logits = logits_name(g0)?;
    let lshape = shapes
        .get(&logits)
        .ok_or_else(|| anyhow!("shape analysis gave no shape for the logits '{logits}'"))?
        .clone();
    if lshape.first() != Some(&batch) || lshape.iter().product::<usize>() % batch != 0 {
        bail!("the logits '{logits}' have shape {lshape:?}, without the batch ({batch}) first");
    }
    let k = lshape.iter().product::<usize>() / batch;
    let consts = Consts::of(&fb, params);
    let rounding = through_rounding(proto);

    // Tensors that depend on X or a parameter, and nodes on a path from them to the
    // logits.
    let mut depends: HashSet<&str> = HashSet::new();
    if wrt.input {
        depends.insert(input);
    }
    if wrt.params {
        depends.extend(params.iter().map(String::as_str));
    }
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

    // Recognised subgraphs (GELU, SiLU, standardisations written out) are differentiated
    // as one node at their last node; their other nodes get no gradient of their own.
    let fused = rules::find_fused(g0, opset, &shapes, &consts);
    let mut grads: HashMap<String, Vec<String>> = HashMap::new();
    grads.insert(logits.clone(), vec![gz]);
    for &idx in &path {
        let n = &g0.node[idx];
        let mut dys: Vec<Option<String>> = vec![];
        for o in &n.output {
            let parts = grads.remove(o);
            dys.push(sum_grads(&mut b, parts, shapes.get(o), &grads));
        }
        if dys.iter().all(Option::is_none) {
            continue;
        }
        if let (Some(f), Some(dy)) = (fused.get(&idx), &dys[0]) {
            let needs: Vec<bool> = f
                .inputs
                .iter()
                .map(|i| depends.contains(i.as_str()) && needed.contains(i.as_str()))
                .collect();
            let dxs = (f.rule)(&mut b, f, dy, &needs, &shapes)
                .map_err(|e| anyhow!("node '{}' ({} subgraph): {e}", node_label(n), f.pattern))?;
            for ((i, dx), need) in f.inputs.iter().zip(dxs).zip(needs) {
                if let (Some(dx), true) = (dx, need) {
                    grads.entry(i.clone()).or_default().push(dx);
                }
            }
            continue;
        }
        let needs: Vec<bool> = n
            .input
            .iter()
            .map(|i| !i.is_empty() && depends.contains(i.as_str()) && needed.contains(i.as_str()))
            .collect();
        let dxs = rules::backward(&mut b, n, &dys, &needs, &shapes, &consts, rounding)
            .map_err(|e| anyhow!("node '{}' ({}): {e}", node_label(n), n.op_type))?;
        for (i, dx) in dxs.into_iter().enumerate() {
            if let (Some(dx), true) = (dx, needs.get(i).copied().unwrap_or(false)) {
                grads.entry(n.input[i].clone()).or_default().push(dx);
            }
        }
    }
    let parts = grads.remove(input);
    match sum_grads(&mut b, parts, Some(&x_shape), &grads) {
        Some(gx) => b.op_into("Identity", &[&gx], vec![], GRAD),
        None => {
            let zeros = b.const_f32(&x_shape, vec![0.0; x_shape.iter().product()]);
            b.op_into("Identity", &[&zeros], vec![], GRAD);
        }
    }
    let mut param_outputs = vec![];
    for p in params.iter().filter(|_| wrt.params) {
        let ps = shapes
            .get(p)
            .ok_or_else(|| anyhow!("no shape for the parameter '{p}'"))?
            .clone();
        let name = param_grad_name(p);
        let parts = grads.remove(p.as_str());
        match sum_grads(&mut b, parts, Some(&ps), &grads) {
            Some(gp) => b.op_into("Identity", &[&gp], vec![], &name),
            None => {
                let zeros = b.const_f32(&ps, vec![0.0; ps.iter().product()]);
                b.op_into("Identity", &[&zeros], vec![], &name);
            }
        }
        let dims: Vec<Dim> = ps.iter().map(|d| Dim::Fixed(*d)).collect();
        param_outputs.push(model::float_value_info(&name, &dims));
    }

    // Assemble: the forward graph with a fixed batch, then the backward nodes.
    let mut out = fb.proto.clone();
    let fixed: Vec<Dim> = x_shape.iter().map(|d| Dim::Fixed(*d)).collect();
    let g = out.graph.as_mut().ok_or_else(|| anyhow!("no graph"))?;
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
    g.output.extend(param_outputs);
    // Parameters become inputs after the head's (replacing any old-IR input entry).
    g.initializer.retain(|t| !params.contains(&t.name));
    g.input.retain(|v| !params.contains(&v.name));
    for p in params {
        let dims: Vec<Dim> = shapes[p].iter().map(|d| Dim::Fixed(*d)).collect();
        g.input.push(model::float_value_info(p, &dims));
    }
    Ok(GradGraph {
        proto: out,
        batch,
        num_classes: k,
        head_inputs,
    })
}

/// The subgraphs of `proto` (input `input`, examples of `example_shape`) that gradient
/// graphs differentiate as one node (`rules/fused.rs`): (pattern, the name of its last
/// node), in graph order.
pub fn recognised_subgraphs(
    proto: &pb::ModelProto,
    input: &str,
    example_shape: &[usize],
) -> Result<Vec<(&'static str, String)>> {
    let mut x_shape = vec![1];
    x_shape.extend_from_slice(example_shape);
    let mut fb = FixedBatch::of(proto, input, &x_shape, &[])?;
    let shapes = std::mem::take(&mut fb.shapes);
    let consts = Consts::of(&fb, &[]);
    let g = fb
        .proto
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("the model has no graph"))?;
    let opset = crate::model::opset_of(proto);
    let mut out: Vec<(usize, &'static str, String)> = rules::find_fused(g, opset, &shapes, &consts)
        .into_iter()
        .map(|(root, f)| (root, f.pattern, node_label(&g.node[root])))
        .collect();
    out.sort();
    Ok(out.into_iter().map(|(_, p, n)| (p, n)).collect())
}

/// The sum of gradient contributions (None when there are none); `grads`, the
/// contributions still to be summed for other tensors (which may share names with these).
fn sum_grads(
    b: &mut Builder,
    parts: Option<Vec<String>>,
    shape: Option<&Vec<usize>>,
    grads: &HashMap<String, Vec<String>>,
) -> Option<String> {
    let held = |name: &str| grads.values().any(|v| v.iter().any(|p| p == name));
    b.sum(parts?, shape.map(Vec::as_slice), &held)
}
