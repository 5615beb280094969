//! Quantized models in the QDQ format (QuantizeLinear/DequantizeLinear pairs around float
//! ops, as ONNX Runtime's `quantize_static(..., quant_format=QuantFormat.QDQ)` and
//! TensorRT's workflow write them): what is quantized and how ([`describe`], shown by
//! `harden inspect`), and the checks that refuse what harden cannot run or differentiate
//! ([`validate`]: the other format's ops, bad scales and zero points, unsupported types,
//! activation DequantizeLinears without a QuantizeLinear).

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{bail, Result};
use serde::Serialize;

use super::{elem_type_name, float_values, node_label, pb};

/// Ops of the QOperator format (integer kernels): harden supports QDQ models only.
pub const QOPERATOR_OPS: &[&str] = &[
    "ConvInteger",
    "MatMulInteger",
    "QGemm",
    "QLinearAdd",
    "QLinearAveragePool",
    "QLinearConcat",
    "QLinearConv",
    "QLinearGlobalAveragePool",
    "QLinearLeakyRelu",
    "QLinearMatMul",
    "QLinearMul",
    "QLinearSigmoid",
    "QLinearSoftmax",
    "DynamicQuantizeLinear",
];

/// The quantized element types harden handles: (ONNX type, name, min, max).
const INT_TYPES: &[(i32, &str, i64, i64)] = &[
    (2, "uint8", 0, 255),
    (3, "int8", -128, 127),
    // DequantizeLinear of biases (ONNX Runtime quantizes Conv biases to int32).
    (6, "int32", i32::MIN as i64, i32::MAX as i64),
];

/// Whether ONNX type `t` is an integer type (the targets of float-to-int casts).
pub fn is_int_type(t: i64) -> bool {
    matches!(t, 2..=7 | 12 | 13 | 21 | 22)
}

/// The values of an integer tensor (uint8, int8, uint16, int16, int32, int64, uint32,
/// uint64) as i64, from the typed field or little-endian `raw_data`; `None` for other
/// types or when the count does not match the dims.
pub fn int_values(t: &pb::TensorProto) -> Option<Vec<i64>> {
    let v: Vec<i64> = if !t.raw_data.is_empty() {
        let r = &t.raw_data;
        match t.data_type {
            2 => r.iter().map(|b| *b as i64).collect(),
            3 => r.iter().map(|b| *b as i8 as i64).collect(),
            4 => r
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            5 => r
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            6 => r
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            12 => r
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
            7 | 13 => r
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
            _ => return None,
        }
    } else {
        match t.data_type {
            2..=6 => t.int32_data.iter().map(|v| *v as i64).collect(),
            7 => t.int64_data.clone(),
            12 | 13 => t.uint64_data.iter().map(|v| *v as i64).collect(),
            _ => return None,
        }
    };
    let count = t
        .dims
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(usize::try_from(*d).ok()?))?;
    (v.len() == count).then_some(v)
}

/// The integer range of ONNX type `t` among the types harden quantizes to.
pub fn int_range(t: i32) -> Option<(i64, i64)> {
    INT_TYPES
        .iter()
        .find(|(ty, ..)| *ty == t)
        .map(|(_, _, lo, hi)| (*lo, *hi))
}

/// One quantized tensor: a weight (an integer initializer read by DequantizeLinear) or an
/// activation (the input of a QuantizeLinear).
#[derive(Clone, Debug, Serialize)]
pub struct QuantTensor {
    /// The float tensor this stands for (the DequantizeLinear's output for weights, the
    /// QuantizeLinear's input for activations).
    pub tensor: String,
    /// `int8`, `uint8` or `int32`.
    pub int_type: String,
    /// `per-tensor`, or `per-channel` with its axis and channel count.
    pub granularity: String,
    pub scale_min: f32,
    pub scale_max: f32,
    pub zero_point_min: i64,
    pub zero_point_max: i64,
}

/// How a QDQ model is quantized.
#[derive(Clone, Debug, Serialize)]
pub struct Quantization {
    pub format: String,
    pub quantize_nodes: usize,
    pub dequantize_nodes: usize,
    pub weights: Vec<QuantTensor>,
    pub activations: Vec<QuantTensor>,
}

/// Constant tensors of `g`: initializers and Constant nodes.
fn constants(g: &pb::GraphProto) -> HashMap<&str, &pb::TensorProto> {
    let mut m: HashMap<&str, &pb::TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    for n in g.node.iter().filter(|n| n.op_type == "Constant") {
        if let (Some(o), Some(t)) = (
            n.output.first(),
            n.attribute.iter().find_map(|a| a.t.as_ref()),
        ) {
            m.insert(o.as_str(), t);
        }
    }
    m
}

fn is_q(n: &pb::NodeProto) -> bool {
    (n.domain.is_empty() || n.domain == "ai.onnx") && n.op_type == "QuantizeLinear"
}

fn is_dq(n: &pb::NodeProto) -> bool {
    (n.domain.is_empty() || n.domain == "ai.onnx") && n.op_type == "DequantizeLinear"
}

fn int_attr(n: &pb::NodeProto, name: &str, default: i64) -> i64 {
    n.attribute
        .iter()
        .find(|a| a.name == name)
        .map(|a| a.i)
        .unwrap_or(default)
}

/// A Q or DQ node's scale and zero point, read and checked.
struct Params {
    scales: Vec<f32>,
    zero_points: Vec<i64>,
    /// The quantized type (from the zero point, else from the DQ's integer input, else
    /// uint8 as the spec says).
    int_type: i32,
    axis: i64,
}

/// Reads and checks the scale, zero point and type of Q/DQ node `n`.
fn params(
    n: &pb::NodeProto,
    consts: &HashMap<&str, &pb::TensorProto>,
    input_type: Option<i32>,
) -> Result<Params> {
    let label = node_label(n);
    let op = &n.op_type;
    if n.input.len() < 2 || n.input[1].is_empty() {
        bail!("{op} '{label}' has no scale input");
    }
    if int_attr(n, "block_size", 0) != 0 {
        bail!("{op} '{label}' uses blocked quantization (block_size); harden supports per-tensor and per-channel scales");
    }
    let Some(st) = consts.get(n.input[1].as_str()) else {
        bail!(
            "{op} '{label}': the scale '{}' is not a constant; harden needs constant scales",
            n.input[1]
        );
    };
    if st.data_type != 1 {
        bail!(
            "{op} '{label}': the scale '{}' is {}; harden supports float scales",
            n.input[1],
            elem_type_name(st.data_type)
        );
    }
    let scales = float_values(st)
        .ok_or_else(|| anyhow::anyhow!("{op} '{label}': cannot read the scale '{}'", n.input[1]))?;
    if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        bail!(
            "{op} '{label}': the scale '{}' has the value {s}; quantization scales must be positive and finite",
            n.input[1]
        );
    }
    let zp = n.input.get(2).filter(|s| !s.is_empty());
    let (int_type, zero_points) = match zp {
        Some(name) => {
            let Some(t) = consts.get(name.as_str()) else {
                bail!("{op} '{label}': the zero point '{name}' is not a constant");
            };
            (t.data_type, Some((name, t)))
        }
        // Without a zero point: the DQ's input type, QuantizeLinear's `output_dtype`
        // (opset 21), else uint8.
        None => (
            input_type.unwrap_or(match int_attr(n, "output_dtype", 0) {
                0 => 2,
                t => t as i32,
            }),
            None,
        ),
    };
    let Some((lo, hi)) = int_range(int_type) else {
        bail!(
            "{op} '{label}' uses {}; harden supports int8 and uint8 quantization (and int32 for dequantized biases)",
            elem_type_name(int_type)
        );
    };
    if is_q(n) && int_type == 6 {
        bail!("{op} '{label}' quantizes to int32; harden supports int8 and uint8");
    }
    if let Some(t) = input_type.filter(|t| *t != int_type) {
        bail!(
            "{op} '{label}' reads {} data with a {} zero point",
            elem_type_name(t),
            elem_type_name(int_type)
        );
    }
    let zero_points = match zero_points {
        Some((name, t)) => {
            let v = int_values(t).ok_or_else(|| {
                anyhow::anyhow!("{op} '{label}': cannot read the zero point '{name}'")
            })?;
            if let Some(z) = v.iter().find(|z| **z < lo || **z > hi) {
                bail!(
                    "{op} '{label}': the zero point '{name}' has the value {z}, outside the {} range [{lo}, {hi}]",
                    elem_type_name(int_type)
                );
            }
            if v.len() != scales.len() && v.len() != 1 {
                bail!(
                    "{op} '{label}': {} zero points for {} scales",
                    v.len(),
                    scales.len()
                );
            }
            v
        }
        None => vec![0],
    };
    Ok(Params {
        scales,
        zero_points,
        int_type,
        axis: int_attr(n, "axis", 1),
    })
}

fn quant_tensor(tensor: &str, p: &Params) -> QuantTensor {
    let fold = |v: &[f32]| {
        v.iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), x| {
                (a.min(*x), b.max(*x))
            })
    };
    let (smin, smax) = fold(&p.scales);
    QuantTensor {
        tensor: tensor.to_string(),
        int_type: elem_type_name(p.int_type).to_string(),
        granularity: if p.scales.len() > 1 {
            format!("per-channel (axis {}, {} channels)", p.axis, p.scales.len())
        } else {
            "per-tensor".to_string()
        },
        scale_min: smin,
        scale_max: smax,
        zero_point_min: p.zero_points.iter().copied().min().unwrap_or(0),
        zero_point_max: p.zero_points.iter().copied().max().unwrap_or(0),
    }
}

/// Checks the quantization of `g` and describes it (None: no Q/DQ nodes). Errors name the
/// node and the problem: an op of the QOperator format, a zero, negative or non-finite
/// scale, a zero point outside its type's range, an unsupported type (int4, float8,
/// 16-bit), a DequantizeLinear of a computed tensor that no QuantizeLinear produced.
pub fn check(g: &pb::GraphProto) -> Result<Option<Quantization>> {
    if let Some(n) = g
        .node
        .iter()
        .find(|n| QOPERATOR_OPS.contains(&n.op_type.as_str()))
    {
        bail!(
            "node '{}' uses op {}, of the QOperator quantization format (integer kernels); harden supports the QDQ format (QuantizeLinear/DequantizeLinear around float ops): quantize with onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ)",
            node_label(n),
            n.op_type
        );
    }
    let (nq, ndq) = (
        g.node.iter().filter(|n| is_q(n)).count(),
        g.node.iter().filter(|n| is_dq(n)).count(),
    );
    if nq + ndq == 0 {
        return Ok(None);
    }
    let consts = constants(g);
    let producers: HashMap<&str, &pb::NodeProto> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let mut q_types: HashMap<&str, i32> = HashMap::new();
    let mut out = Quantization {
        format: "QDQ".to_string(),
        quantize_nodes: nq,
        dequantize_nodes: ndq,
        weights: vec![],
        activations: vec![],
    };
    for n in g.node.iter().filter(|n| is_q(n)) {
        let p = params(n, &consts, None)?;
        if let Some(o) = n.output.first() {
            q_types.insert(o.as_str(), p.int_type);
        }
        out.activations.push(quant_tensor(
            n.input.first().map(String::as_str).unwrap_or(""),
            &p,
        ));
    }
    let mut seen = HashSet::new();
    for n in g.node.iter().filter(|n| is_dq(n)) {
        let label = node_label(n);
        let x = n.input.first().map(String::as_str).unwrap_or("");
        if let Some(t) = consts.get(x) {
            // A weight: the integer initializer is read directly.
            let p = params(n, &consts, Some(t.data_type))?;
            if seen.insert(x) {
                out.weights.push(quant_tensor(
                    n.output.first().map(String::as_str).unwrap_or(x),
                    &p,
                ));
            }
            continue;
        }
        match producers.get(x) {
            Some(q) if is_q(q) => {
                params(n, &consts, q_types.get(x).copied())?;
            }
            other => bail!(
                "DequantizeLinear '{label}' reads '{x}', {}; in the QDQ format every DequantizeLinear of a computed tensor follows a QuantizeLinear",
                match other {
                    Some(p) => format!("which {} '{}' computes", p.op_type, node_label(p)),
                    None => "which is a graph input".to_string(),
                }
            ),
        }
    }
    Ok(Some(out))
}

/// The rounding ops on the path from `input` (QuantizeLinear, Round, Floor, Ceil, Cast to
/// an integer type), by op: the nodes whose gradient `--through-rounding` chooses.
pub fn rounding_ops(g: &pb::GraphProto, input: &str) -> BTreeMap<String, usize> {
    let mut depends: HashSet<&str> = HashSet::from([input]);
    let mut out = BTreeMap::new();
    for n in &g.node {
        if matches!(n.op_type.as_str(), "Shape" | "Size") {
            continue;
        }
        if !n.input.iter().any(|i| depends.contains(i.as_str())) {
            continue;
        }
        depends.extend(n.output.iter().map(String::as_str));
        let rounds = match n.op_type.as_str() {
            "QuantizeLinear" | "Round" | "Floor" | "Ceil" => true,
            "Cast" => is_int_type(int_attr(n, "to", 1)),
            _ => false,
        };
        if rounds {
            *out.entry(n.op_type.clone()).or_insert(0) += 1;
        }
    }
    out
}

/// How gradients pass through a model's rounding ops, for the report (absent when the
/// model has none on the input's path).
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct RoundingFacts {
    /// `ste` or `zero` (`--through-rounding`).
    pub through_rounding: crate::autodiff::Rounding,
    /// The rounding ops on the input's path, by op.
    pub ops: BTreeMap<String, usize>,
    /// Whether the gradients through them are an approximation (`ste`).
    pub approximated: bool,
}

impl RoundingFacts {
    /// The facts of `proto` (its rounding choice, `autodiff::through_rounding`) whose
    /// input is `input`; None when no rounding op depends on the input.
    pub fn of(proto: &pb::ModelProto, input: &str) -> Option<RoundingFacts> {
        let ops = rounding_ops(proto.graph.as_ref()?, input);
        if ops.is_empty() {
            return None;
        }
        let r = crate::autodiff::through_rounding(proto);
        Some(RoundingFacts {
            through_rounding: r,
            ops,
            approximated: r == crate::autodiff::Rounding::Ste,
        })
    }

    /// One line for the report's model facts.
    pub fn summary(&self) -> String {
        let ops: Vec<String> = self.ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
        format!(
            "{} ({}){}",
            self.through_rounding.name(),
            ops.join(", "),
            if self.approximated {
                ": straight-through approximation"
            } else {
                ": exact (zero)"
            }
        )
    }

    /// One line for the report's gradient check.
    pub fn describe(&self) -> String {
        let ops: Vec<String> = self.ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
        if self.approximated {
            format!(
                "gradients through the model's rounding ({}) are the straight-through approximation (--through-rounding ste); adversarial examples are re-checked on the real model",
                ops.join(", ")
            )
        } else {
            format!(
                "the model rounds ({}) and --through-rounding zero passes no gradient through it",
                ops.join(", ")
            )
        }
    }
}
