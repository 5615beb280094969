//! Rounding and quantization: QuantizeLinear, DequantizeLinear, Round, Floor, Ceil, Cast.
//!
//! Rounding is piecewise constant: its derivative is zero wherever it exists, which
//! blinds gradient attacks (gradient masking) and stops training. `Node::rounding`
//! (`--through-rounding`) chooses:
//! - `zero`: the exact derivative, zero (nothing flows back);
//! - `ste`: the straight-through estimator. Round, Floor, Ceil and casts from float to
//!   an integer type pass the gradient unchanged (BPDA with the identity, Athalye et al.
//!   2018). QuantizeLinear passes `dy / scale` where the pre-quantization value
//!   `x / scale + zero_point` lies inside the integer range `[qmin, qmax]` and nothing
//!   where it saturates: with DequantizeLinear's exact `dy * scale`, a Q->DQ pair passes
//!   `dy * mask`, the derivative of its clipping surrogate
//!   `clip(x, (qmin - zp) * scale, (qmax - zp) * scale)` (the standard STE of
//!   quantization-aware training).
//!
//! DequantizeLinear is linear in its integer input, so its rule is exact in both modes.
//! Scales and zero points must be constants (`model::quant::check` refuses others);
//! per-channel ones broadcast along the node's `axis`.

use anyhow::{anyhow, bail, Result};

use super::{norm_axis, Grads, Node, OpDef};
use crate::autodiff::builder::Builder;
use crate::autodiff::Rounding;
use crate::model::quant::{int_range, int_values, is_int_type};

pub(super) const OPS: &[OpDef] = &[
    OpDef::shape_only_with("Cast", 1, cast),
    OpDef::diff("Ceil", 1, rounding),
    OpDef::diff("DequantizeLinear", 2, dequantize),
    OpDef::diff("Floor", 1, rounding),
    OpDef::diff("QuantizeLinear", 2, quantize),
    OpDef::diff("Round", 1, rounding),
];

/// Round, Floor, Ceil: zero, or the identity under `ste`.
fn rounding(_: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    if c.rounding == Rounding::Ste {
        g[0] = Some(c.dy.to_string());
    }
    Ok(())
}

/// Cast: float-to-float casts pass the gradient (as do casts of integers back to float,
/// which are exact on integers); casts to an integer type round, so they pass it only
/// under `ste`.
fn cast(_: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let to = c.int("to", 1);
    if to == 1 || (is_int_type(to) && c.rounding == Rounding::Ste) {
        g[0] = Some(c.dy.to_string());
    }
    Ok(())
}

/// A Q/DQ node's constant scale and zero point, and its integer range.
struct QParams {
    scales: Vec<f32>,
    zero_points: Vec<f32>,
    qmin: f32,
    qmax: f32,
}

fn qparams(c: &Node) -> Result<QParams> {
    let op = &c.n.op_type;
    let scales = c
        .consts
        .f32s(c.input(1))
        .ok_or_else(|| anyhow!("{op} scale '{}' is not a float constant", c.input(1)))?;
    let zp = c.input(2);
    let (ty, zero_points) = if zp.is_empty() {
        // QuantizeLinear's `output_dtype` (opset 21), else uint8.
        let ty = match c.int("output_dtype", 0) {
            0 => 2,
            t => t as i32,
        };
        (ty, vec![0.0])
    } else {
        let t = c
            .consts
            .tensor(zp)
            .ok_or_else(|| anyhow!("{op} zero point '{zp}' is not a constant"))?;
        let v = int_values(t)
            .ok_or_else(|| anyhow!("{op} zero point '{zp}' is not an integer tensor"))?;
        (t.data_type, v.into_iter().map(|z| z as f32).collect())
    };
    let (qmin, qmax) = int_range(ty)
        .ok_or_else(|| anyhow!("{op}: unsupported quantized type (data type {ty})"))?;
    Ok(QParams {
        scales,
        zero_points,
        qmin: qmin as f32,
        qmax: qmax as f32,
    })
}

/// `values` (one per channel, or one) as a constant that broadcasts along `axis` of a
/// tensor shaped `shape`.
fn along_axis(b: &mut Builder, c: &Node, values: Vec<f32>, shape: &[usize]) -> Result<String> {
    if values.len() == 1 {
        return Ok(b.scalar(values[0]));
    }
    let axis = norm_axis(c.int("axis", 1), shape.len());
    if shape.get(axis) != Some(&values.len()) {
        bail!(
            "{} has {} per-channel values for axis {axis} of a tensor shaped {shape:?}",
            c.n.op_type,
            values.len()
        );
    }
    let mut dims = vec![1; shape.len()];
    dims[axis] = values.len();
    Ok(b.const_f32(&dims, values))
}

/// Per channel `f(scale, zero point)`, broadcasting a single zero point.
fn per_channel(p: &QParams, f: impl Fn(f32, f32) -> f32) -> Vec<f32> {
    let n = p.scales.len().max(p.zero_points.len());
    (0..n)
        .map(|i| {
            let s = p.scales[i.min(p.scales.len() - 1)];
            let z = p.zero_points[i.min(p.zero_points.len() - 1)];
            f(s, z)
        })
        .collect()
}

/// DequantizeLinear: y = (q - zp) * scale, so dq = dy * scale (exact).
fn dequantize(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    if !c.need(0) {
        return Ok(());
    }
    let p = qparams(c)?;
    let shape = c.shape(c.out())?.clone();
    let s = along_axis(b, c, per_channel(&p, |s, _| s), &shape)?;
    g[0] = Some(b.mul(c.dy, &s));
    Ok(())
}

/// QuantizeLinear: zero, or under `ste` dx = dq / scale inside the integer range
/// (`lo <= x <= hi` with `lo = (qmin - zp) * scale`, `hi = (qmax - zp) * scale`), 0 where
/// it saturates.
fn quantize(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    if c.rounding == Rounding::Zero || !c.need(0) {
        return Ok(());
    }
    let p = qparams(c)?;
    let shape = c.shape(c.input(0))?.clone();
    let lo = per_channel(&p, |s, z| (p.qmin - z) * s);
    let hi = per_channel(&p, |s, z| (p.qmax - z) * s);
    let inv = per_channel(&p, |s, _| 1.0 / s);
    let lo = along_axis(b, c, lo, &shape)?;
    let hi = along_axis(b, c, hi, &shape)?;
    let inv = along_axis(b, c, inv, &shape)?;
    let below = b.op("Less", &[c.input(0), &lo], vec![]);
    let above = b.op("Greater", &[c.input(0), &hi], vec![]);
    let out = b.op("Or", &[&below, &above], vec![]);
    let inside = b.op("Not", &[&out], vec![]);
    let d = b.mul(c.dy, &inv);
    g[0] = Some(b.select(&inside, &d));
    Ok(())
}
