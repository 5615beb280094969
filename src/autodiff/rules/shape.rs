//! Shape and indexing ops: reshapes, Transpose, Concat, Slice, Pad, Gather, and the ops
//! that only compute shapes or constants.

use anyhow::{anyhow, bail, Result};

use super::{ints_attr, norm_axis, shape, Grads, Node, OpDef};
use crate::autodiff::builder::Builder;
use crate::autodiff::{Consts, Shapes};
use crate::model::pb;

pub(super) const OPS: &[OpDef] = &[
    OpDef::shape_only_with("Cast", 1, cast),
    OpDef::diff("Concat", 1, concat),
    OpDef::shape_only("Constant"),
    OpDef::shape_only("ConstantOfShape"),
    OpDef::diff("Flatten", 1, reshape),
    OpDef::shape_only_with("Gather", 2, gather),
    OpDef::diff("Pad", 1, pad),
    OpDef::shape_only("RandomNormalLike"),
    OpDef::shape_only("RandomUniformLike"),
    OpDef::diff("Reshape", 1, reshape),
    OpDef::shape_only("Shape"),
    OpDef::diff("Slice", 1, slice_rule),
    OpDef::diff("Squeeze", 1, reshape),
    OpDef::diff("Transpose", 1, transpose),
    OpDef::diff("Unsqueeze", 1, reshape),
];

/// Cast: only float-to-float casts carry values that matter here.
fn cast(_: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    if c.int("to", 1) == 1 {
        g[0] = Some(c.dy.to_string());
    }
    Ok(())
}

/// Flatten, Reshape, Squeeze, Unsqueeze: the gradient takes the input's shape back.
fn reshape(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    g[0] = Some(b.reshape(c.dy, c.shape(c.input(0))?));
    Ok(())
}

fn transpose(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let rank = c.shape(c.input(0))?.len();
    let perm: Vec<usize> = c
        .ints("perm")
        .map(|p| p.iter().map(|v| *v as usize).collect())
        .unwrap_or_else(|| (0..rank).rev().collect());
    let mut inv = vec![0; rank];
    for (i, p) in perm.iter().enumerate() {
        inv[*p] = i;
    }
    g[0] = Some(b.transpose(c.dy, &inv));
    Ok(())
}

fn concat(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let rank = c.shape(c.out())?.len();
    let axis = norm_axis(c.int("axis", 0), rank) as i64;
    let mut off = 0i64;
    for (i, gi) in g.iter_mut().enumerate() {
        let len = c.shape(c.input(i))?[axis as usize] as i64;
        if c.need(i) {
            *gi = Some(b.slice(c.dy, &[off], &[off + len], &[axis]));
        }
        off += len;
    }
    Ok(())
}

fn slice_rule(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    g[0] = Some(slice(b, c.n, c.dy, c.shapes, c.consts)?);
    Ok(())
}

fn pad(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    if c.string("mode").is_some_and(|m| m != "constant") {
        bail!("only constant-mode Pad is supported");
    }
    let pads = if b.opset >= 11 {
        c.const_i64s(1, "pads")?
    } else {
        c.ints("pads").unwrap_or_default()
    };
    let xs = c.shape(c.input(0))?;
    let r = xs.len();
    if pads.len() != 2 * r || pads.iter().any(|p| *p < 0) {
        bail!("Pad with pads {pads:?} is not supported");
    }
    let starts: Vec<i64> = pads[..r].to_vec();
    let ends: Vec<i64> = (0..r).map(|i| pads[i] + xs[i] as i64).collect();
    let axes: Vec<i64> = (0..r as i64).collect();
    g[0] = Some(b.slice(c.dy, &starts, &ends, &axes));
    Ok(())
}

/// Gather on data (constant indices): the gradient scattered back by a one-hot matrix or,
/// for a scalar index, a Pad.
fn gather(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let xs = c.shape(c.input(0))?;
    let r = xs.len();
    let axis = norm_axis(c.int("axis", 0), r);
    let idx = c
        .consts
        .i64s(c.input(1))
        .ok_or_else(|| anyhow!("Gather on data needs constant indices"))?;
    let scalar = c
        .shape(c.input(1))
        .map(|s| s.is_empty())
        .unwrap_or(idx.len() == 1);
    let d = xs[axis] as i64;
    let norm = |i: i64| if i < 0 { i + d } else { i };
    if scalar {
        let i = norm(idx[0]);
        let mut ks = xs.clone();
        ks[axis] = 1;
        let dk = b.reshape(c.dy, &ks);
        let mut pads = vec![0i64; 2 * r];
        pads[axis] = i;
        pads[r + axis] = d - i - 1;
        g[0] = Some(b.pad(&dk, &pads));
    } else {
        // dx = dy (axis moved last) times a one-hot [len, D] matrix.
        let len = idx.len();
        let mut m = vec![0.0f32; len * d as usize];
        for (j, &i) in idx.iter().enumerate() {
            m[j * d as usize + norm(i) as usize] = 1.0;
        }
        let mc = b.const_f32(&[len, d as usize], m);
        let ys = c.shape(c.out())?;
        if ys.len() != r {
            bail!(
                "Gather with {}-D indices is not supported",
                ys.len() + 1 - r
            );
        }
        let mut perm: Vec<usize> = (0..r).filter(|a| *a != axis).collect();
        perm.push(axis);
        let t = b.transpose(c.dy, &perm);
        let mm = b.op("MatMul", &[&t, &mc], vec![]);
        let mut inv = vec![0; r];
        for (i, p) in perm.iter().enumerate() {
            inv[*p] = i;
        }
        g[0] = Some(b.transpose(&mm, &inv));
    }
    Ok(())
}

fn slice(
    b: &mut Builder,
    n: &pb::NodeProto,
    dy: &str,
    shapes: &Shapes,
    consts: &Consts,
) -> Result<String> {
    let xs = shape(shapes, &n.input[0])?.clone();
    let r = xs.len();
    let get = |i: usize, attr_name: &str| -> Result<Option<Vec<i64>>> {
        if b.opset >= 10 {
            match n.input.get(i).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(name) => consts
                    .i64s(name)
                    .map(Some)
                    .ok_or_else(|| anyhow!("Slice parameter '{name}' is not a constant")),
            }
        } else {
            Ok(ints_attr(n, attr_name))
        }
    };
    let starts = get(1, "starts")?.ok_or_else(|| anyhow!("Slice without starts"))?;
    let ends = get(2, "ends")?.ok_or_else(|| anyhow!("Slice without ends"))?;
    let axes = get(3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    if let Some(steps) = get(4, "")? {
        if steps.iter().any(|s| *s != 1) {
            bail!("Slice with steps other than 1 is not supported");
        }
    }
    let mut pads = vec![0i64; 2 * r];
    for (j, &a) in axes.iter().enumerate() {
        let ax = norm_axis(a, r);
        let dim = xs[ax] as i64;
        let clamp = |v: i64| if v < 0 { (v + dim).max(0) } else { v.min(dim) };
        let (s0, e0) = (clamp(starts[j]), clamp(ends[j]));
        pads[ax] = s0;
        pads[r + ax] = dim - e0.max(s0);
    }
    Ok(b.pad(dy, &pads))
}
