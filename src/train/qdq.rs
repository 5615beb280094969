//! Quantization-aware hardening of QDQ models (fake quantization).
//!
//! In a QDQ model from ONNX Runtime's quantizer the weights are stored quantized: an
//! int8 (or uint8) initializer read by a DequantizeLinear. Integers cannot be trained by
//! gradient steps, so for training each such weight becomes a float initializer (its
//! dequantized values) feeding QuantizeLinear -> DequantizeLinear with the same scale,
//! zero point and axis: the forward pass is the quantized model's exactly (the floats sit
//! on the quantization grid, so the QuantizeLinear gives back the stored integers), and
//! the straight-through rule of `autodiff::rules::quant` (`--through-rounding ste`)
//! carries weight gradients to the floats, masked to the integer range. On export the
//! trained floats are quantized again with the kept scales and zero points
//! (round half to even, saturated, as QuantizeLinear does) into the original integer
//! initializers: the exported model has the input's structure, types and scales.
//! int32 initializers (Conv biases, whose scale is the input's times the weight's) have
//! no QuantizeLinear at opsets below 21 and stay as they are.

use anyhow::{anyhow, bail, Result};

use crate::model::quant::{int_range, int_values};
use crate::model::{self, pb, OnnxModel};

/// One weight trained in float in place of its integer initializer.
#[derive(Clone, Debug)]
struct FqWeight {
    /// The float initializer trained (`<int>__harden_float`).
    float: String,
    /// The integer initializer it replaces, its type and dims.
    int: String,
    int_type: i32,
    dims: Vec<i64>,
    /// Per channel (or one) scale and zero point, and the channel axis.
    scales: Vec<f32>,
    zero_points: Vec<i64>,
    axis: usize,
}

/// The training form of a QDQ model and how to export its trained weights.
pub struct FakeQuant {
    /// The model with fake-quantized float weights (see the module doc).
    pub model: OnnxModel,
    weights: Vec<FqWeight>,
}

fn attr_int(n: &pb::NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

impl FakeQuant {
    /// The fake-quantized form of `m`, or None when it has no int8/uint8 weight behind a
    /// DequantizeLinear. Scales and zero points must be constants (`model::quant::check`).
    pub fn of(m: &OnnxModel) -> Result<Option<FakeQuant>> {
        let mut out = m.clone();
        let g = out
            .proto
            .graph
            .as_mut()
            .ok_or_else(|| anyhow!("the model has no graph"))?;
        let mut weights: Vec<FqWeight> = vec![];
        let mut new_nodes = Vec::with_capacity(g.node.len());
        let mut new_inits = vec![];
        let find =
            |g: &pb::GraphProto, name: &str| g.initializer.iter().position(|t| t.name == name);
        for n in &g.node {
            let is_dq =
                n.op_type == "DequantizeLinear" && (n.domain.is_empty() || n.domain == "ai.onnx");
            let w = n.input.first().map(String::as_str).unwrap_or("");
            let wi = if is_dq { find(g, w) } else { None };
            let Some(wi) = wi.filter(|i| matches!(g.initializer[*i].data_type, 2 | 3)) else {
                new_nodes.push(n.clone());
                continue;
            };
            let t = &g.initializer[wi];
            let q = int_values(t).ok_or_else(|| anyhow!("cannot read the weights '{w}'"))?;
            let scales = g
                .initializer
                .iter()
                .find(|s| Some(&s.name) == n.input.get(1))
                .and_then(model::float_values)
                .ok_or_else(|| {
                    anyhow!("DequantizeLinear of '{w}': the scale is not a float initializer")
                })?;
            let zero_points = match n.input.get(2).filter(|s| !s.is_empty()) {
                Some(z) => g
                    .initializer
                    .iter()
                    .find(|s| &s.name == z)
                    .and_then(int_values)
                    .ok_or_else(|| {
                        anyhow!("DequantizeLinear of '{w}': the zero point is not an initializer")
                    })?,
                None => vec![0],
            };
            let rank = t.dims.len();
            let axis = attr_int(n, "axis").unwrap_or(1);
            let axis = if axis < 0 { axis + rank as i64 } else { axis }.max(0) as usize;
            let fq = FqWeight {
                float: format!("{w}__harden_float"),
                int: w.to_string(),
                int_type: t.data_type,
                dims: t.dims.clone(),
                scales,
                zero_points,
                axis,
            };
            // The dequantized values: exactly on the grid.
            let per = |i: usize| fq.channel(i);
            let values: Vec<f32> = q
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let (s, z) = per(i);
                    (*v - z) as f32 * s
                })
                .collect();
            if !weights.iter().any(|x| x.int == fq.int) {
                new_inits.push(model::float_tensor(&fq.float, &t.dims, &values));
            }
            let qo = format!(
                "{}__harden_fq",
                n.output.first().cloned().unwrap_or_default()
            );
            let mut qn = n.clone();
            qn.op_type = "QuantizeLinear".into();
            qn.name = format!("{}__harden_quantize", n.name);
            qn.input[0] = fq.float.clone();
            qn.output = vec![qo.clone()];
            let mut dq = n.clone();
            dq.input[0] = qo;
            new_nodes.push(qn);
            new_nodes.push(dq);
            if !weights.iter().any(|x| x.int == fq.int) {
                weights.push(fq);
            }
        }
        if weights.is_empty() {
            return Ok(None);
        }
        g.node = new_nodes;
        g.initializer
            .retain(|t| !weights.iter().any(|w| w.int == t.name));
        g.initializer.extend(new_inits);
        Ok(Some(FakeQuant {
            model: out,
            weights,
        }))
    }

    /// The names of the float weights trained in place of integer ones.
    pub fn float_weights(&self) -> Vec<String> {
        self.weights.iter().map(|w| w.float.clone()).collect()
    }

    /// `original` with the trained values in `updates` (by training parameter name):
    /// fake-quantized weights quantized back into their integer initializers, other
    /// float parameters set as they are; `metadata` as for [`OnnxModel::with_updates`].
    pub fn export(
        &self,
        original: &OnnxModel,
        updates: &[(String, Vec<f32>)],
        metadata: &[(String, String)],
    ) -> Result<OnnxModel> {
        let mut m = original.clone();
        let g = m
            .proto
            .graph
            .as_mut()
            .ok_or_else(|| anyhow!("the model has no graph"))?;
        let mut plain = vec![];
        for (name, values) in updates {
            let Some(w) = self.weights.iter().find(|w| &w.float == name) else {
                plain.push((name.clone(), values.clone()));
                continue;
            };
            let t = g
                .initializer
                .iter_mut()
                .find(|t| t.name == w.int)
                .ok_or_else(|| anyhow!("the model has no initializer '{}'", w.int))?;
            if t.dims != w.dims {
                bail!("'{}' changed shape", w.int);
            }
            let (lo, hi) =
                int_range(w.int_type).ok_or_else(|| anyhow!("'{}': not int8/uint8", w.int))?;
            let q: Vec<i64> = values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let (s, z) = w.channel(i);
                    ((v / s).round_ties_even() as i64 + z).clamp(lo, hi)
                })
                .collect();
            t.int32_data.clear();
            t.raw_data = match w.int_type {
                3 => q.iter().map(|v| *v as i8 as u8).collect(),
                _ => q.iter().map(|v| *v as u8).collect(),
            };
        }
        m.with_updates(&plain, metadata)
    }
}

impl FqWeight {
    /// The scale and zero point of flat element `i`.
    fn channel(&self, i: usize) -> (f32, i64) {
        if self.scales.len() <= 1 && self.zero_points.len() <= 1 {
            return (self.scales[0], self.zero_points[0]);
        }
        let inner: i64 = self.dims[self.axis + 1..].iter().product();
        let c = (i as i64 / inner.max(1)) as usize % (self.dims[self.axis].max(1) as usize);
        (
            self.scales[c.min(self.scales.len() - 1)],
            self.zero_points[c.min(self.zero_points.len() - 1)],
        )
    }
}
