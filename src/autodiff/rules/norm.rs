//! Normalisation layers: BatchNormalization in inference form (running statistics), and
//! the layers that normalise with statistics of their own input (LayerNormalization,
//! InstanceNormalization, GroupNormalization), whose gradients flow through the mean and
//! the variance.

use anyhow::{anyhow, bail, Result};

use super::fused::{Fused, View};
use super::reduce::reduce_axes;
use super::{int_attr, norm_axis, Grads, Node, OpDef};
use crate::autodiff::builder::{attr_int, Builder};
use crate::autodiff::Shapes;
use crate::model::pb;

pub(super) const OPS: &[OpDef] = &[
    OpDef::diff("BatchNormalization", 5, batch_norm),
    OpDef::diff("GroupNormalization", 3, group_norm),
    OpDef::diff("InstanceNormalization", 3, instance_norm),
    OpDef::diff("LayerNormalization", 2, layer_norm).multi_output(),
];

/// BatchNormalization with its running statistics (constants): an affine map per channel.
fn batch_norm(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    if c.need(3) || c.need(4) {
        bail!("BatchNormalization mean and variance cannot be trained");
    }
    let eps = c.float("epsilon", 1e-5);
    let channels = c.shape(c.input(1))?.iter().product::<usize>();
    let scale = c
        .consts
        .f32s(c.input(1))
        .unwrap_or_else(|| vec![1.0; channels]);
    let var = c
        .consts
        .f32s(c.input(4))
        .ok_or_else(|| anyhow!("BatchNormalization variance is not a constant"))?;
    let xs = c.shape(c.input(0))?;
    let mut dims = vec![scale.len()];
    dims.extend(std::iter::repeat_n(1, xs.len().saturating_sub(2)));
    let f: Vec<f32> = scale
        .iter()
        .zip(&var)
        .map(|(s, v)| s / (v + eps).sqrt())
        .collect();
    let axes: Vec<i64> = std::iter::once(0).chain(2..xs.len() as i64).collect();
    // 1/sqrt(var + eps), and the scale (a graph input when it is trained).
    let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let fc = if c.consts.is_const(c.input(1)) {
        b.const_f32(&dims, f)
    } else {
        let sc = b.reshape(c.input(1), &dims);
        let ic = b.const_f32(&dims, inv.clone());
        b.mul(&sc, &ic)
    };
    if c.need(0) {
        g[0] = Some(b.mul(c.dy, &fc));
    }
    if c.need(1) {
        // dscale = sum over N and space of dy * x_hat.
        let mean = c
            .consts
            .f32s(c.input(3))
            .ok_or_else(|| anyhow!("BatchNormalization mean is not a constant"))?;
        let mc = b.const_f32(&dims, mean);
        let ic = b.const_f32(&dims, inv);
        let xc = b.sub(c.input(0), &mc);
        let xh = b.mul(&xc, &ic);
        let p = b.mul(c.dy, &xh);
        g[1] = Some(b.reduce_sum(&p, &axes, false));
    }
    if c.need(2) {
        g[2] = Some(b.reduce_sum(c.dy, &axes, false));
    }
    Ok(())
}

/// `x` standardised over `axes` (`count` elements each): (x_hat, r) with
/// x_hat = (x - mean) r and r = 1 / sqrt(var + eps) (kept dims), as the forward op
/// computes them (biased variance).
fn standardize(b: &mut Builder, x: &str, axes: &[i64], count: usize, eps: f32) -> (String, String) {
    let inv_n = b.scalar(1.0 / count as f32);
    let s = b.reduce_sum(x, axes, true);
    let mean = b.mul(&s, &inv_n);
    let xc = b.sub(x, &mean);
    let sq = b.mul(&xc, &xc);
    let ss = b.reduce_sum(&sq, axes, true);
    let var = b.mul(&ss, &inv_n);
    let e = b.scalar(eps);
    let ve = b.add(&var, &e);
    let sd = b.op("Sqrt", &[&ve], vec![]);
    let r = b.op("Reciprocal", &[&sd], vec![]);
    let xh = b.mul(&xc, &r);
    (xh, r)
}

/// `x` standardised over its axes from `axis` on (`inner`: their sizes) with one
/// LayerNormalization node (opset 17+; scale 1, no bias) that also outputs r
/// (InvStdDev): one fused op on both runtimes instead of about ten.
fn layer_standardize(
    b: &mut Builder,
    x: &str,
    inner: &[usize],
    axis: usize,
    eps: f32,
) -> (String, String) {
    let ones = b.const_f32(inner, vec![1.0; inner.iter().product()]);
    let xh = b.fresh("ln_xhat");
    let r = b.fresh("ln_invstd");
    let name = b.fresh("LayerNormalization");
    b.nodes.push(pb::NodeProto {
        op_type: "LayerNormalization".into(),
        name,
        input: vec![x.to_string(), ones],
        output: vec![xh.clone(), String::new(), r.clone()],
        attribute: vec![attr_int("axis", axis as i64), attr_float("epsilon", eps)],
        ..Default::default()
    });
    (xh, r)
}

/// A float attribute.
fn attr_float(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 1,
        f: v,
        ..Default::default()
    }
}

/// The input gradient of a standardisation over `axes`, given `gy` = dL/dx_hat:
/// r (gy - mean(gy) - x_hat mean(gy x_hat)).
fn standardize_backward(
    b: &mut Builder,
    gy: &str,
    xh: &str,
    r: &str,
    axes: &[i64],
    count: usize,
) -> String {
    let inv_n = b.scalar(1.0 / count as f32);
    let s1 = b.reduce_sum(gy, axes, true);
    let m1 = b.mul(&s1, &inv_n);
    let p = b.mul(gy, xh);
    let s2 = b.reduce_sum(&p, axes, true);
    let m2 = b.mul(&s2, &inv_n);
    let t = b.mul(xh, &m2);
    let d = b.sub(gy, &m1);
    let d = b.sub(&d, &t);
    b.mul(&d, r)
}

/// LayerNormalization (opset 17): y = x_hat * scale + bias, x standardised over the axes
/// from `axis` on. Scale and bias gradients are summed over the axes they broadcast
/// along. A model differentiated through the optional Mean or InvStdDev outputs is
/// refused (no exporter writes one).
fn layer_norm(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    if c.dys.iter().skip(1).any(Option::is_some) {
        bail!(
            "LayerNormalization: gradients through its Mean or InvStdDev outputs are not supported"
        );
    }
    if c.dy.is_empty() {
        return Ok(());
    }
    let xs = c.shape(c.input(0))?;
    let rank = xs.len();
    let axis = norm_axis(c.int("axis", -1), rank);
    if axis >= rank {
        bail!(
            "LayerNormalization axis {} out of range for rank {rank}",
            c.int("axis", -1)
        );
    }
    let axes: Vec<i64> = (axis as i64..rank as i64).collect();
    let count: usize = xs[axis..].iter().product();
    let (xh, r) = layer_standardize(b, c.input(0), &xs[axis..], axis, c.float("epsilon", 1e-5));
    if c.need(0) {
        let gy = b.mul(c.dy, c.input(1));
        g[0] = Some(standardize_backward(b, &gy, &xh, &r, &axes, count));
    }
    if c.need(1) {
        let p = b.mul(c.dy, &xh);
        g[1] = Some(b.unbroadcast(&p, xs, c.shape(c.input(1))?));
    }
    if c.need(2) && !c.input(2).is_empty() {
        g[2] = Some(b.unbroadcast(c.dy, xs, c.shape(c.input(2))?));
    }
    Ok(())
}

/// InstanceNormalization: each channel of each example standardised over its spatial
/// axes, then y = x_hat * scale[c] + bias[c].
fn instance_norm(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let xs = c.shape(c.input(0))?;
    let rank = xs.len();
    if rank < 3 {
        bail!("InstanceNormalization needs an input of rank 3 or more, not {rank}");
    }
    let axes: Vec<i64> = (2..rank as i64).collect();
    let count: usize = xs[2..].iter().product();
    let eps = c.float("epsilon", 1e-5);
    let (xh, r) = if b.opset >= 17 {
        layer_standardize(b, c.input(0), &xs[2..], 2, eps)
    } else {
        standardize(b, c.input(0), &axes, count, eps)
    };
    let mut cdims = vec![xs[1]];
    cdims.extend(std::iter::repeat_n(1, rank - 2));
    let outer: Vec<i64> = std::iter::once(0).chain(2..rank as i64).collect();
    if c.need(0) {
        let s = b.reshape(c.input(1), &cdims);
        let gy = b.mul(c.dy, &s);
        g[0] = Some(standardize_backward(b, &gy, &xh, &r, &axes, count));
    }
    if c.need(1) {
        let p = b.mul(c.dy, &xh);
        g[1] = Some(b.reduce_sum(&p, &outer, false));
    }
    if c.need(2) {
        g[2] = Some(b.reduce_sum(c.dy, &outer, false));
    }
    Ok(())
}

/// GroupNormalization: the channels split into `num_groups` groups, each group of each
/// example standardised over its channels and spatial axes, then scaled and shifted:
/// per group (scale and bias of shape [num_groups]) at opset 18, per channel (shape [C])
/// from opset 21, as the spec changed (tract and ONNX Runtime follow the model's opset).
/// Computed on x viewed as [N, G, C/G, spatial].
fn group_norm(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let xs = c.shape(c.input(0))?;
    let rank = xs.len();
    let groups = c.int("num_groups", 0);
    if rank < 2 || groups <= 0 || xs[1] % groups as usize != 0 {
        bail!(
            "GroupNormalization num_groups {groups} does not divide the {} channels of {xs:?}",
            xs.get(1).copied().unwrap_or(0)
        );
    }
    let groups = groups as usize;
    let per = xs[1] / groups;
    let spatial: usize = xs[2..].iter().product();
    let view = [xs[0], groups, per, spatial];
    let per_channel = b.opset >= 21;
    let axes = [2i64, 3];
    let count = per * spatial;
    let xg = b.reshape(c.input(0), &view);
    // GroupNormalization is opset 18+: LayerNormalization (17) is there.
    let (xh, r) = layer_standardize(b, &xg, &view[2..], 2, c.float("epsilon", 1e-5));
    let dyg = b.reshape(c.dy, &view);
    if c.need(0) {
        let sdims: &[usize] = if per_channel {
            &[groups, per, 1]
        } else {
            &[groups, 1, 1]
        };
        let s = b.reshape(c.input(1), sdims);
        let gy = b.mul(&dyg, &s);
        let dx = standardize_backward(b, &gy, &xh, &r, &axes, count);
        g[0] = Some(b.reshape(&dx, xs));
    }
    // Parameter gradients: summed over examples and space (and the group's channels
    // when per group).
    let outer: &[i64] = if per_channel { &[0, 3] } else { &[0, 2, 3] };
    let pshape = [if per_channel { xs[1] } else { groups }];
    if c.need(1) {
        let p = b.mul(&dyg, &xh);
        let s = b.reduce_sum(&p, outer, false);
        g[1] = Some(b.reshape(&s, &pshape));
    }
    if c.need(2) {
        let s = b.reduce_sum(&dyg, outer, false);
        g[2] = Some(b.reshape(&s, &pshape));
    }
    Ok(())
}

/// A standardisation written out (LayerNorm from exporters before opset 17, timm's
/// LayerNorm2d): mu = ReduceMean(x, axes), xc = x - mu, var = ReduceMean(xc^2, axes)
/// (Pow 2 or xc * xc), sd = Sqrt(var + eps), x_hat = xc / sd (or xc * Reciprocal(sd)),
/// both means with kept dims over the same axes, anchored at the first ReduceMean. Its
/// rule: `standardize_fused`, the closed form of `standardize_backward` from the forward's
/// own x_hat and sd.
pub(super) fn match_standardize(v: &View, i: usize) -> Option<Fused> {
    let mean_axes = |j: usize| -> Option<Vec<usize>> {
        let n = v.node(j);
        if n.op_type != "ReduceMean" || int_attr(n, "keepdims", 1) != 1 {
            return None;
        }
        let rank = v.shapes.get(n.input.first()?)?.len();
        let b = Builder::new(v.opset, "");
        reduce_axes(&b, &v.rule_node(j), rank).ok()
    };
    let axes = mean_axes(i)?;
    let x = v.node(i).input[0].as_str();
    let mu = v.node(i).output.first()?.as_str();
    let isub = v.sole_reader(mu).filter(|&j| v.node(j).op_type == "Sub")?;
    if v.node(isub).input.as_slice() != [x, mu] {
        return None;
    }
    let xc = v.node(isub).output.first()?.as_str();
    // xc is read by the square (Pow(xc, 2): once; xc * xc: twice) and the division.
    let readers = v.readers(xc);
    let isq = *readers.iter().find(|&&j| {
        let n = v.node(j);
        (n.op_type == "Pow" && n.input.len() == 2 && n.input[0] == xc && {
            let e = &n.input[1];
            v.scalar(e).map(|p| p == 2.0).unwrap_or(false)
                || v.consts.i64s(e).map(|p| p == [2]).unwrap_or(false)
        }) || (n.op_type == "Mul" && n.input.len() == 2 && n.input[0] == xc && n.input[1] == xc)
    })?;
    let sq_reads = if v.node(isq).op_type == "Mul" { 2 } else { 1 };
    if v.uses(xc) != sq_reads + 1 || readers.len() != sq_reads + 1 {
        return None;
    }
    let sq = v.node(isq).output.first()?.as_str();
    let ivar = v.sole_reader(sq)?;
    if mean_axes(ivar)? != axes {
        return None;
    }
    let var = v.node(ivar).output.first()?.as_str();
    let ieps = v.sole_reader(var).filter(|&j| v.node(j).op_type == "Add")?;
    v.scalar(v.other(ieps, var)?)?;
    let ve = v.node(ieps).output.first()?.as_str();
    let isqrt = v.sole_reader(ve).filter(|&j| v.node(j).op_type == "Sqrt")?;
    let sd = v.node(isqrt).output.first()?.as_str();
    let inext = v.sole_reader(sd)?;
    let (mut nodes, root, recip) = match v.node(inext).op_type.as_str() {
        "Div" if v.node(inext).input.as_slice() == [xc, sd] => {
            (vec![i, isub, isq, ivar, ieps, isqrt, inext], inext, false)
        }
        "Reciprocal" => {
            let r = v.node(inext).output.first()?.as_str();
            let imul = v.sole_reader(r).filter(|&j| v.node(j).op_type == "Mul")?;
            if v.other(imul, r)? != xc {
                return None;
            }
            (
                vec![i, isub, isq, ivar, ieps, isqrt, inext, imul],
                imul,
                true,
            )
        }
        _ => return None,
    };
    // The remaining read of xc is the division's.
    if !readers.contains(&root) {
        return None;
    }
    let xh = v.node(root).output.first()?.as_str();
    let scale = if recip {
        v.node(inext).output[0].as_str()
    } else {
        sd
    };
    let xs = v.shapes.get(x)?;
    let count: usize = axes.iter().map(|a| xs[*a]).product();
    nodes.sort_unstable();
    Some(Fused {
        pattern: "standardize",
        nodes,
        inputs: vec![x.to_string()],
        tensors: vec![xh.to_string(), scale.to_string()],
        values: vec![if recip { 1.0 } else { 0.0 }, 1.0 / count as f32],
        axes: axes.iter().map(|a| *a as i64).collect(),
        rule: standardize_fused,
    })
}

/// dx = (g - mean(g) - x_hat mean(g x_hat)) / sd, g the gradient of x_hat (times r =
/// 1/sd when the subgraph computed r).
fn standardize_fused(
    b: &mut Builder,
    f: &Fused,
    dy: &str,
    needs: &[bool],
    _: &Shapes,
) -> Result<Vec<Option<String>>> {
    if !needs.first().copied().unwrap_or(false) {
        return Ok(vec![None]);
    }
    let [xh, scale] = &f.tensors[..] else {
        bail!("malformed standardisation subgraph");
    };
    let inv_n = b.scalar(f.values[1]);
    let s1 = b.reduce_sum(dy, &f.axes, true);
    let m1 = b.mul(&s1, &inv_n);
    let p = b.mul(dy, xh);
    let s2 = b.reduce_sum(&p, &f.axes, true);
    let m2 = b.mul(&s2, &inv_n);
    let t = b.mul(xh, &m2);
    let u = b.sub(dy, &t);
    let w = b.sub(&u, &m1);
    Ok(vec![Some(if f.values[0] != 0.0 {
        b.mul(&w, scale)
    } else {
        b.div(&w, scale)
    })])
}
