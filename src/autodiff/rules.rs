//! Backward rules, one per op: given the gradients of a node's outputs, emit nodes that
//! compute the gradients of its inputs. All shapes are static (fixed batch).

use anyhow::{anyhow, bail, Result};

use super::builder::{attr_int, attr_ints, Builder, PoolGrad};
use super::{Consts, Shapes};
use crate::model::pb;

type Grads = Vec<Option<String>>;

fn attr<'a>(n: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn int_attr(n: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map(|a| a.i).unwrap_or(default)
}

fn float_attr(n: &pb::NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map(|a| a.f).unwrap_or(default)
}

fn ints_attr(n: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

fn shape<'a>(shapes: &'a Shapes, name: &str) -> Result<&'a Vec<usize>> {
    shapes
        .get(name)
        .ok_or_else(|| anyhow!("no static shape known for tensor '{name}'"))
}

fn norm_axis(axis: i64, rank: usize) -> usize {
    if axis < 0 {
        (axis + rank as i64).max(0) as usize
    } else {
        axis as usize
    }
}

/// Gradients of `n`'s inputs (None where not needed or not differentiable).
pub fn backward(
    b: &mut Builder,
    n: &pb::NodeProto,
    dys: &[Option<String>],
    needs: &[bool],
    shapes: &Shapes,
    consts: &Consts,
) -> Result<Grads> {
    let Some(dy) = dys.first().cloned().flatten() else {
        return Ok(vec![None; n.input.len()]);
    };
    let dy = dy.as_str();
    let min_inputs = match n.op_type.as_str() {
        "Gemm" | "MatMul" | "Conv" | "Add" | "Sub" | "Mul" | "Div" | "PRelu" | "Gather" => 2,
        "BatchNormalization" => 5,
        _ => 1,
    };
    if n.input.len() < min_inputs || n.output.is_empty() {
        bail!(
            "has {} inputs and {} outputs; {} needs at least {min_inputs} inputs and an output",
            n.input.len(),
            n.output.len(),
            n.op_type
        );
    }
    let input = |i: usize| n.input.get(i).map(String::as_str).unwrap_or("");
    let out = n.output.first().map(String::as_str).unwrap_or("");
    let need = |i: usize| needs.get(i).copied().unwrap_or(false);
    let mut g: Grads = vec![None; n.input.len()];
    match n.op_type.as_str() {
        "Identity" | "Dropout" => g[0] = Some(dy.to_string()),
        "Cast" => {
            // Only float-to-float casts carry values that matter here.
            if int_attr(n, "to", 1) == 1 {
                g[0] = Some(dy.to_string());
            }
        }
        "Shape" | "Constant" | "ConstantOfShape" | "RandomUniformLike" | "RandomNormalLike" => {}
        // Piecewise constant: the derivative is zero wherever it exists. (This is the
        // gradient masking harden's sanity checks look for.)
        "Round" | "Floor" | "Ceil" => {}
        "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" => {
            g[0] = Some(b.reshape(dy, shape(shapes, input(0))?));
        }
        "Add" | "Sub" => {
            let ys = shape(shapes, out)?.clone();
            if need(0) {
                g[0] = Some(b.unbroadcast(dy, &ys, shape(shapes, input(0))?));
            }
            if need(1) {
                let d = if n.op_type == "Sub" {
                    b.neg(dy)
                } else {
                    dy.to_string()
                };
                g[1] = Some(b.unbroadcast(&d, &ys, shape(shapes, input(1))?));
            }
        }
        "Mul" => {
            let ys = shape(shapes, out)?.clone();
            if need(0) {
                let d = b.mul(dy, input(1));
                g[0] = Some(b.unbroadcast(&d, &ys, shape(shapes, input(0))?));
            }
            if need(1) {
                let d = b.mul(dy, input(0));
                g[1] = Some(b.unbroadcast(&d, &ys, shape(shapes, input(1))?));
            }
        }
        "Div" => {
            let ys = shape(shapes, out)?.clone();
            if need(0) {
                let d = b.div(dy, input(1));
                g[0] = Some(b.unbroadcast(&d, &ys, shape(shapes, input(0))?));
            }
            if need(1) {
                let q = b.div(out, input(1));
                let d = b.mul(dy, &q);
                let d = b.neg(&d);
                g[1] = Some(b.unbroadcast(&d, &ys, shape(shapes, input(1))?));
            }
        }
        "Relu" => {
            g[0] = Some(match relu_into_pool(b, out, dy, shapes)? {
                Some(dx) => dx,
                None => {
                    // The mask from the output (y > 0 exactly where x > 0), so that the
                    // runtime may fuse the Relu into the op before it.
                    let z = b.scalar(0.0);
                    let c = b.op("Greater", &[out, &z], vec![]);
                    b.select(&c, dy)
                }
            });
        }
        "LeakyRelu" | "PRelu" => {
            let z = b.scalar(0.0);
            let c = b.op("Greater", &[input(0), &z], vec![]);
            let slope = if n.op_type == "LeakyRelu" {
                b.scalar(float_attr(n, "alpha", 0.01))
            } else {
                input(1).to_string()
            };
            let mf = b.as_float(&c);
            // dy * (m + (1 - m) * slope)
            let one = b.scalar(1.0);
            let inv = b.sub(&one, &mf);
            let s = b.mul(&inv, &slope);
            let f = b.add(&mf, &s);
            g[0] = Some(b.mul(dy, &f));
            if n.op_type == "PRelu" && need(1) {
                let d = b.mul(dy, input(0));
                let d = b.mul(&d, &inv);
                let ys = shape(shapes, out)?.clone();
                g[1] = Some(b.unbroadcast(&d, &ys, shape(shapes, input(1))?));
            }
        }
        "Sigmoid" => {
            let one = b.scalar(1.0);
            let om = b.sub(&one, out);
            let d = b.mul(out, &om);
            g[0] = Some(b.mul(dy, &d));
        }
        "Tanh" => {
            let one = b.scalar(1.0);
            let y2 = b.mul(out, out);
            let d = b.sub(&one, &y2);
            g[0] = Some(b.mul(dy, &d));
        }
        "Clip" => {
            let (lo, hi) = if b.opset >= 11 {
                let read = |i: usize| -> Result<Option<f32>> {
                    match n.input.get(i).filter(|s| !s.is_empty()) {
                        None => Ok(None),
                        Some(name) => consts
                            .f32s(name)
                            .and_then(|v| v.first().copied())
                            .map(Some)
                            .ok_or_else(|| anyhow!("Clip bound '{name}' is not a constant")),
                    }
                };
                (read(1)?, read(2)?)
            } else {
                (attr(n, "min").map(|a| a.f), attr(n, "max").map(|a| a.f))
            };
            let mut mask: Option<String> = None;
            if let Some(lo) = lo {
                let c = b.scalar(lo);
                mask = Some(b.op("Greater", &[input(0), &c], vec![]));
            }
            if let Some(hi) = hi {
                let c = b.scalar(hi);
                let m = b.op("Less", &[input(0), &c], vec![]);
                mask = Some(match mask {
                    Some(prev) => b.op("And", &[&prev, &m], vec![]),
                    None => m,
                });
            }
            g[0] = Some(match mask {
                Some(m) => b.select(&m, dy),
                None => dy.to_string(),
            });
        }
        "Softmax" | "LogSoftmax" => {
            let rank = shape(shapes, out)?.len();
            let default_axis = if b.opset >= 13 { -1 } else { 1 };
            let axis = norm_axis(int_attr(n, "axis", default_axis), rank);
            // Before opset 13 the input is coerced to 2-D at `axis`.
            let axes: Vec<i64> = if b.opset >= 13 {
                vec![axis as i64]
            } else {
                (axis..rank).map(|a| a as i64).collect()
            };
            if n.op_type == "Softmax" {
                let p = b.mul(dy, out);
                let s = b.reduce_sum(&p, &axes, true);
                let d = b.sub(dy, &s);
                g[0] = Some(b.mul(out, &d));
            } else {
                let s = b.reduce_sum(dy, &axes, true);
                let e = b.op("Exp", &[out], vec![]);
                let t = b.mul(&e, &s);
                g[0] = Some(b.sub(dy, &t));
            }
        }
        "Gemm" => gemm(b, n, dy, &mut g, need(0), need(1), need(2), shapes)?,
        "MatMul" => matmul(b, n, dy, &mut g, need(0), need(1), shapes)?,
        "Conv" => conv(
            b,
            n,
            dy,
            &mut g,
            [need(0), need(1), need(2)],
            shapes,
            consts,
        )?,
        "MaxPool" => maxpool(b, n, dy, &mut g, shapes)?,
        "AveragePool" => avgpool(b, n, dy, &mut g, shapes)?,
        "GlobalAveragePool" => {
            let xs = shape(shapes, input(0))?.clone();
            let spatial: usize = xs[2..].iter().product();
            let mut ones_shape = vec![1, 1];
            ones_shape.extend_from_slice(&xs[2..]);
            let ones = b.const_f32(&ones_shape, vec![1.0 / spatial as f32; spatial]);
            g[0] = Some(b.mul(dy, &ones));
        }
        "BatchNormalization" => {
            if need(3) || need(4) {
                bail!("BatchNormalization mean and variance cannot be trained");
            }
            let eps = float_attr(n, "epsilon", 1e-5);
            let c = shape(shapes, input(1))?.iter().product::<usize>();
            let scale = consts.f32s(input(1)).unwrap_or_else(|| vec![1.0; c]);
            let var = consts
                .f32s(input(4))
                .ok_or_else(|| anyhow!("BatchNormalization variance is not a constant"))?;
            let xs = shape(shapes, input(0))?;
            let c = scale.len();
            let mut dims = vec![c];
            dims.extend(std::iter::repeat_n(1, xs.len().saturating_sub(2)));
            let f: Vec<f32> = scale
                .iter()
                .zip(&var)
                .map(|(s, v)| s / (v + eps).sqrt())
                .collect();
            let xs = xs.clone();
            let axes: Vec<i64> = std::iter::once(0).chain(2..xs.len() as i64).collect();
            // 1/sqrt(var + eps), and the scale (a graph input when it is trained).
            let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
            let fc = if consts.is_const(input(1)) {
                b.const_f32(&dims, f)
            } else {
                let sc = b.reshape(input(1), &dims);
                let ic = b.const_f32(&dims, inv.clone());
                b.mul(&sc, &ic)
            };
            if need(0) {
                g[0] = Some(b.mul(dy, &fc));
            }
            if need(1) {
                // dscale = sum over N and space of dy * x_hat.
                let mean = consts
                    .f32s(input(3))
                    .ok_or_else(|| anyhow!("BatchNormalization mean is not a constant"))?;
                let mc = b.const_f32(&dims, mean);
                let ic = b.const_f32(&dims, inv);
                let xc = b.sub(input(0), &mc);
                let xh = b.mul(&xc, &ic);
                let p = b.mul(dy, &xh);
                g[1] = Some(b.reduce_sum(&p, &axes, false));
            }
            if need(2) {
                g[2] = Some(b.reduce_sum(dy, &axes, false));
            }
        }
        "Transpose" => {
            let rank = shape(shapes, input(0))?.len();
            let perm: Vec<usize> = ints_attr(n, "perm")
                .map(|p| p.iter().map(|v| *v as usize).collect())
                .unwrap_or_else(|| (0..rank).rev().collect());
            let mut inv = vec![0; rank];
            for (i, p) in perm.iter().enumerate() {
                inv[*p] = i;
            }
            g[0] = Some(b.transpose(dy, &inv));
        }
        "Concat" => {
            let rank = shape(shapes, out)?.len();
            let axis = norm_axis(int_attr(n, "axis", 0), rank) as i64;
            let mut off = 0i64;
            for (i, gi) in g.iter_mut().enumerate() {
                let len = shape(shapes, input(i))?[axis as usize] as i64;
                if need(i) {
                    *gi = Some(b.slice(dy, &[off], &[off + len], &[axis]));
                }
                off += len;
            }
        }
        "Slice" => g[0] = Some(slice(b, n, dy, shapes, consts)?),
        "Pad" => {
            let mode = attr(n, "mode").map(|a| String::from_utf8_lossy(&a.s).to_string());
            if mode.as_deref().is_some_and(|m| m != "constant") {
                bail!("only constant-mode Pad is supported");
            }
            let pads = if b.opset >= 11 {
                consts
                    .i64s(input(1))
                    .ok_or_else(|| anyhow!("Pad pads are not a constant"))?
            } else {
                ints_attr(n, "pads").unwrap_or_default()
            };
            let xs = shape(shapes, input(0))?.clone();
            let r = xs.len();
            if pads.len() != 2 * r || pads.iter().any(|p| *p < 0) {
                bail!("Pad with pads {pads:?} is not supported");
            }
            let starts: Vec<i64> = pads[..r].to_vec();
            let ends: Vec<i64> = (0..r).map(|i| pads[i] + xs[i] as i64).collect();
            let axes: Vec<i64> = (0..r as i64).collect();
            g[0] = Some(b.slice(dy, &starts, &ends, &axes));
        }
        "ReduceMean" => {
            let xs = shape(shapes, input(0))?.clone();
            let r = xs.len();
            let axes = if b.opset >= 18 && n.input.len() > 1 {
                consts
                    .i64s(input(1))
                    .ok_or_else(|| anyhow!("ReduceMean axes are not a constant"))?
            } else {
                ints_attr(n, "axes").unwrap_or_else(|| (0..r as i64).collect())
            };
            let axes: Vec<usize> = axes.iter().map(|a| norm_axis(*a, r)).collect();
            let kshape: Vec<usize> = (0..r)
                .map(|i| if axes.contains(&i) { 1 } else { xs[i] })
                .collect();
            let count: usize = axes.iter().map(|a| xs[*a]).product();
            let dk = b.reshape(dy, &kshape);
            let ones = b.const_f32(&xs, vec![1.0 / count as f32; xs.iter().product()]);
            g[0] = Some(b.mul(&dk, &ones));
        }
        "Gather" => {
            let xs = shape(shapes, input(0))?.clone();
            let r = xs.len();
            let axis = norm_axis(int_attr(n, "axis", 0), r);
            let idx = consts
                .i64s(input(1))
                .ok_or_else(|| anyhow!("Gather on data needs constant indices"))?;
            let scalar = shape(shapes, input(1))
                .map(|s| s.is_empty())
                .unwrap_or(idx.len() == 1);
            let d = xs[axis] as i64;
            let norm = |i: i64| if i < 0 { i + d } else { i };
            if scalar {
                let i = norm(idx[0]);
                let mut ks = xs.clone();
                ks[axis] = 1;
                let dk = b.reshape(dy, &ks);
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
                let ys = shape(shapes, out)?.clone();
                if ys.len() != r {
                    bail!(
                        "Gather with {}-D indices is not supported",
                        ys.len() + 1 - r
                    );
                }
                let mut perm: Vec<usize> = (0..r).filter(|a| *a != axis).collect();
                perm.push(axis);
                let t = b.transpose(dy, &perm);
                let mm = b.op("MatMul", &[&t, &mc], vec![]);
                let mut inv = vec![0; r];
                for (i, p) in perm.iter().enumerate() {
                    inv[*p] = i;
                }
                g[0] = Some(b.transpose(&mm, &inv));
            }
        }
        other => bail!("no backward rule for op {other}"),
    }
    Ok(g)
}

#[allow(clippy::too_many_arguments)]
fn gemm(
    b: &mut Builder,
    n: &pb::NodeProto,
    dy: &str,
    g: &mut Grads,
    need_a: bool,
    need_b: bool,
    need_c: bool,
    shapes: &Shapes,
) -> Result<()> {
    let (a, w) = (n.input[0].as_str(), n.input[1].as_str());
    let alpha = float_attr(n, "alpha", 1.0);
    let beta = float_attr(n, "beta", 1.0);
    let ta = int_attr(n, "transA", 0) != 0;
    let tb = int_attr(n, "transB", 0) != 0;
    let scale = |b: &mut Builder, t: String, s: f32| {
        if s == 1.0 {
            t
        } else {
            let c = b.scalar(s);
            b.mul(&t, &c)
        }
    };
    if need_a {
        // A' = op(A); dA' = dY op(B)^T.
        let bt = if tb {
            w.to_string()
        } else {
            b.transpose(w, &[1, 0])
        };
        let da = b.op("MatMul", &[dy, &bt], vec![]);
        let da = if ta { b.transpose(&da, &[1, 0]) } else { da };
        g[0] = Some(scale(b, da, alpha));
    }
    if need_b {
        let at = if ta {
            a.to_string()
        } else {
            b.transpose(a, &[1, 0])
        };
        let db = b.op("MatMul", &[&at, dy], vec![]);
        let db = if tb { b.transpose(&db, &[1, 0]) } else { db };
        g[1] = Some(scale(b, db, alpha));
    }
    if need_c && n.input.len() > 2 {
        let ys = shape(shapes, &n.output[0])?.clone();
        let d = scale(b, dy.to_string(), beta);
        g[2] = Some(b.unbroadcast(&d, &ys, shape(shapes, &n.input[2])?));
    }
    Ok(())
}

fn swap_last2(b: &mut Builder, x: &str, rank: usize) -> String {
    let mut perm: Vec<usize> = (0..rank).collect();
    perm.swap(rank - 2, rank - 1);
    b.transpose(x, &perm)
}

fn matmul(
    b: &mut Builder,
    n: &pb::NodeProto,
    dy: &str,
    g: &mut Grads,
    need_a: bool,
    need_b: bool,
    shapes: &Shapes,
) -> Result<()> {
    let (a, w) = (n.input[0].as_str(), n.input[1].as_str());
    let (sa, sb) = (shape(shapes, a)?.clone(), shape(shapes, w)?.clone());
    let sy = shape(shapes, &n.output[0])?.clone();
    if sa.len() < 2 || sb.len() < 2 {
        bail!("MatMul with 1-D operands is not supported");
    }
    if need_a {
        let bt = swap_last2(b, w, sb.len());
        let da = b.op("MatMul", &[dy, &bt], vec![]);
        let mut full = sy.clone();
        let r = full.len();
        full[r - 1] = sa[sa.len() - 1];
        g[0] = Some(b.unbroadcast(&da, &full, &sa));
    }
    if need_b {
        let at = swap_last2(b, a, sa.len());
        let db = b.op("MatMul", &[&at, dy], vec![]);
        let mut full = sy.clone();
        let r = full.len();
        full[r - 2] = sb[sb.len() - 2];
        g[1] = Some(b.unbroadcast(&db, &full, &sb));
    }
    Ok(())
}

/// Explicit begin/end pads of a conv-like node for input spatial dims `xs`.
fn conv_pads(
    n: &pb::NodeProto,
    xs: &[usize],
    ys: &[usize],
    k: &[usize],
    s: &[usize],
    d: &[usize],
) -> Result<Vec<i64>> {
    let r = k.len();
    let auto = attr(n, "auto_pad")
        .map(|a| String::from_utf8_lossy(&a.s).to_string())
        .unwrap_or_default();
    match auto.as_str() {
        "" | "NOTSET" => Ok(ints_attr(n, "pads").unwrap_or_else(|| vec![0; 2 * r])),
        "VALID" => Ok(vec![0; 2 * r]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let mut p = vec![0i64; 2 * r];
            for i in 0..r {
                let total = ((ys[i] as i64 - 1) * s[i] as i64
                    + ((k[i] as i64 - 1) * d[i] as i64 + 1)
                    - xs[i] as i64)
                    .max(0);
                let small = total / 2;
                let (pb_, pe) = if auto == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
                p[i] = pb_;
                p[r + i] = pe;
            }
            Ok(p)
        }
        other => bail!("auto_pad {other} is not supported"),
    }
}

/// output_padding so that a ConvTranspose of `ys` gives exactly `xs`.
fn output_padding(
    xs: &[usize],
    ys: &[usize],
    k: &[usize],
    s: &[usize],
    d: &[usize],
    pads: &[i64],
) -> Result<Vec<i64>> {
    let r = k.len();
    (0..r)
        .map(|i| {
            let full = s[i] as i64 * (ys[i] as i64 - 1) + (k[i] as i64 - 1) * d[i] as i64 + 1
                - pads[i]
                - pads[r + i];
            let op = xs[i] as i64 - full;
            if op < 0 || (op >= s[i] as i64 && op >= d[i] as i64) {
                bail!("cannot invert the convolution's output size (output padding {op})");
            }
            Ok(op)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn conv(
    b: &mut Builder,
    n: &pb::NodeProto,
    dy: &str,
    g: &mut Grads,
    [need_x, need_w, need_b]: [bool; 3],
    shapes: &Shapes,
    consts: &Consts,
) -> Result<()> {
    let xs = shape(shapes, &n.input[0])?.clone();
    let ws = shape(shapes, &n.input[1])?.clone();
    let ys = shape(shapes, &n.output[0])?.clone();
    let r = xs.len() - 2;
    let k: Vec<usize> = ws[2..].to_vec();
    let s: Vec<usize> = ints_attr(n, "strides")
        .map(|v| v.iter().map(|x| *x as usize).collect())
        .unwrap_or(vec![1; r]);
    let d: Vec<usize> = ints_attr(n, "dilations")
        .map(|v| v.iter().map(|x| *x as usize).collect())
        .unwrap_or(vec![1; r]);
    let group = int_attr(n, "group", 1);
    let pads = conv_pads(n, &xs[2..], &ys[2..], &k, &s, &d)?;
    let unit = s.iter().all(|v| *v == 1) && d.iter().all(|v| *v == 1) && group == 1;
    let fits = (0..r).all(|i| pads[i] < k[i] as i64 && pads[r + i] < k[i] as i64);
    let weights = consts
        .f32s(&n.input[1])
        .filter(|w| w.len() == ws.iter().product::<usize>());
    // ONNX Runtime computes Conv in blocks of 8 output channels: with fewer than 16
    // (dX of a first layer on grey or RGB images), ConvTranspose is 2-3x faster; with
    // more, Conv is as fast or faster.
    let wide = ws[1] >= 16;
    if let (true, true, true, true, Some(w)) = (need_x, unit, fits, wide, weights) {
        // Stride 1: dX is a plain Conv of dy with the kernel flipped and its channel axes
        // swapped, padded to a "full" correlation.
        let (m, c) = (ws[0], ws[1]);
        let ksz: usize = k.iter().product();
        let mut wt = vec![0.0f32; w.len()];
        for mo in 0..m {
            for ci in 0..c {
                for q in 0..ksz {
                    wt[(ci * m + mo) * ksz + (ksz - 1 - q)] = w[(mo * c + ci) * ksz + q];
                }
            }
        }
        let mut wdims = vec![c, m];
        wdims.extend(&k);
        let wc = b.const_f32(&wdims, wt);
        let full: Vec<i64> = (0..2 * r).map(|i| k[i % r] as i64 - 1 - pads[i]).collect();
        g[0] = Some(b.op("Conv", &[dy, &wc], vec![attr_ints("pads", &full)]));
    } else if need_x {
        let op = output_padding(&xs[2..], &ys[2..], &k, &s, &d, &pads)?;
        let to_i = |v: &[usize]| v.iter().map(|x| *x as i64).collect::<Vec<_>>();
        let mut attrs = vec![
            attr_ints("strides", &to_i(&s)),
            attr_ints("dilations", &to_i(&d)),
            attr_ints("pads", &pads),
            attr_int("group", group),
            attr_ints("kernel_shape", &to_i(&k)),
        ];
        if op.iter().any(|v| *v != 0) {
            attrs.push(attr_ints("output_padding", &op));
        }
        g[0] = Some(b.op("ConvTranspose", &[dy, &n.input[1]], attrs));
    }
    if need_w {
        g[1] = Some(conv_weight_grad(
            b, n, dy, &xs, &ws, &ys, &s, &d, group, &pads,
        )?);
    }
    if need_b && n.input.len() > 2 {
        let axes: Vec<i64> = std::iter::once(0).chain(2..(r as i64 + 2)).collect();
        g[2] = Some(b.reduce_sum(dy, &axes, false));
    }
    Ok(())
}

/// dW of a Conv: a correlation of X with dY, batch and channel axes swapped so that the
/// batch is summed over (X^T [C, N, ..] with dY^T [M, N, ..] as kernel; the conv's
/// strides become the kernel's dilations and its dilations the strides), cropped to
/// the kernel size. Depthwise convs (C_in per group 1) run it as a grouped conv over
/// [1, C*N, ..]; other grouped convs are refused.
#[allow(clippy::too_many_arguments)]
fn conv_weight_grad(
    b: &mut Builder,
    n: &pb::NodeProto,
    dy: &str,
    xs: &[usize],
    ws: &[usize],
    ys: &[usize],
    s: &[usize],
    d: &[usize],
    group: i64,
    pads: &[i64],
) -> Result<String> {
    let r = xs.len() - 2;
    let (nb, c, m) = (xs[0], xs[1], ws[0]);
    let to_i = |v: &[usize]| v.iter().map(|x| *x as i64).collect::<Vec<_>>();
    let attrs = |g: i64| {
        vec![
            attr_ints("strides", &to_i(d)),
            attr_ints("dilations", &to_i(s)),
            attr_ints("pads", pads),
            attr_int("group", g),
        ]
    };
    let mut perm: Vec<usize> = vec![1, 0];
    perm.extend(2..r + 2);
    let dyt = b.transpose(dy, &perm);
    let full = if group == 1 {
        let xt = b.transpose(&n.input[0], &perm);
        b.op("Conv", &[&xt, &dyt], attrs(1))
    } else if group as usize == c && ws[1] == 1 {
        let xt = b.transpose(&n.input[0], &perm);
        let mut flat = vec![1, c * nb];
        flat.extend(&xs[2..]);
        let xt = b.reshape(&xt, &flat);
        b.op("Conv", &[&xt, &dyt], attrs(group))
    } else {
        bail!(
            "gradients with respect to weights of grouped Conv (group {group}, {} input channels per group) are only supported for group 1 and depthwise",
            ws[1]
        );
    };
    // Output spatial sizes of the correlation; crop to the kernel.
    let mut fshape = vec![if group == 1 { c } else { 1 }, m];
    for i in 0..r {
        let span =
            xs[2 + i] as i64 + pads[i] + pads[r + i] - ((ys[2 + i] as i64 - 1) * s[i] as i64 + 1);
        fshape.push((span / d[i] as i64 + 1) as usize);
    }
    let k = &ws[2..];
    let cropped = if (0..r).any(|i| fshape[2 + i] != k[i]) {
        let axes: Vec<i64> = (2..r as i64 + 2).collect();
        b.slice(&full, &vec![0; r], &to_i(k), &axes)
    } else {
        full
    };
    Ok(if group == 1 {
        b.transpose(&cropped, &perm)
    } else {
        b.reshape(&cropped, ws)
    })
}

struct PoolGeom {
    xs: Vec<usize>,
    ys: Vec<usize>,
    k: Vec<usize>,
    s: Vec<usize>,
    d: Vec<usize>,
    pads: Vec<i64>,
}

fn pool_geom(n: &pb::NodeProto, shapes: &Shapes) -> Result<PoolGeom> {
    let xs = shape(shapes, &n.input[0])?.clone();
    let ys = shape(shapes, &n.output[0])?.clone();
    if xs.len() != 4 {
        bail!("only 2-D pooling is supported");
    }
    let k: Vec<usize> = ints_attr(n, "kernel_shape")
        .ok_or_else(|| anyhow!("pooling without kernel_shape"))?
        .iter()
        .map(|v| *v as usize)
        .collect();
    let s: Vec<usize> = ints_attr(n, "strides")
        .map(|v| v.iter().map(|x| *x as usize).collect())
        .unwrap_or(vec![1; 2]);
    let d: Vec<usize> = ints_attr(n, "dilations")
        .map(|v| v.iter().map(|x| *x as usize).collect())
        .unwrap_or(vec![1; 2]);
    let mut pads = conv_pads(n, &xs[2..], &ys[2..], &k, &s, &d)?;
    // ceil_mode windows can run past the end: pad the end so a floor-mode conv matches.
    for i in 0..2 {
        let need = (ys[2 + i] as i64 - 1) * s[i] as i64 + ((k[i] as i64 - 1) * d[i] as i64 + 1)
            - xs[2 + i] as i64
            - pads[i];
        if need > pads[2 + i] {
            pads[2 + i] = need;
        }
    }
    Ok(PoolGeom {
        xs,
        ys,
        k,
        s,
        d,
        pads,
    })
}

fn pool_attrs(p: &PoolGeom, group: usize, with_op: bool) -> Result<Vec<pb::AttributeProto>> {
    let to_i = |v: &[usize]| v.iter().map(|x| *x as i64).collect::<Vec<_>>();
    let mut a = vec![
        attr_ints("strides", &to_i(&p.s)),
        attr_ints("dilations", &to_i(&p.d)),
        attr_ints("pads", &p.pads),
        attr_int("group", group as i64),
        attr_ints("kernel_shape", &to_i(&p.k)),
    ];
    if with_op {
        let op = output_padding(&p.xs[2..], &p.ys[2..], &p.k, &p.s, &p.d, &p.pads)?;
        if op.iter().any(|v| *v != 0) {
            a.push(attr_ints("output_padding", &op));
        }
    }
    Ok(a)
}

/// MaxPool: extract each window's entries with a one-hot depthwise Conv, compare them with
/// the pooled maximum, share dy among the entries equal to it, and put it back with the
/// transposed Conv.
fn maxpool(
    b: &mut Builder,
    n: &pb::NodeProto,
    dy: &str,
    g: &mut Grads,
    shapes: &Shapes,
) -> Result<()> {
    let p = pool_geom(n, shapes)?;
    let tiles = p.s == p.k && p.d == [1, 1] && p.pads.iter().all(|v| *v == 0);
    if tiles {
        let start = b.mark();
        maxpool_tiles(b, n, dy, g, &p, false)?;
        if let Some(dx) = g[0].clone() {
            b.last_pool = Some(PoolGrad {
                pool: n.clone(),
                dy: dy.to_string(),
                dx,
                start,
                end: b.mark(),
            });
        }
        return Ok(());
    }
    let (bn, c) = (p.xs[0], p.xs[1]);
    let (oh, ow) = (p.ys[2], p.ys[3]);
    let kk = p.k[0] * p.k[1];
    let mut e = vec![0.0f32; c * kk * kk];
    for ch in 0..c {
        for j in 0..kk {
            e[(ch * kk + j) * kk + j] = 1.0;
        }
    }
    let ew = b.const_f32(&[c * kk, 1, p.k[0], p.k[1]], e);
    let patches = b.op("Conv", &[&n.input[0], &ew], pool_attrs(&p, c, false)?);
    let p5 = b.reshape(&patches, &[bn, c, kk, oh, ow]);
    let y5 = b.reshape(&n.output[0], &[bn, c, 1, oh, ow]);
    let eq = b.equal(&p5, &y5);
    let mask = b.as_float(&eq);
    let cnt = b.reduce_sum(&mask, &[2], true);
    let share = b.div(&mask, &cnt);
    let dy5 = b.reshape(dy, &[bn, c, 1, oh, ow]);
    let gp = b.mul(&share, &dy5);
    let g4 = b.reshape(&gp, &[bn, c * kk, oh, ow]);
    g[0] = Some(b.op("ConvTranspose", &[&g4, &ew], pool_attrs(&p, c, true)?));
    Ok(())
}

/// A Relu whose output `relu_out` feeds only a tiling MaxPool whose gradient `dy` was the
/// last thing emitted: takes that gradient back and re-emits it with the ReLU's mask
/// applied to dy at the pooled resolution (dy where the window's max is positive), which
/// is then the Relu's input gradient. Exact: an entry equal to a positive maximum is
/// positive; where the maximum is 0 every entry is 0 and its ReLU gradient is 0.
fn relu_into_pool(
    b: &mut Builder,
    relu_out: &str,
    dy: &str,
    shapes: &Shapes,
) -> Result<Option<String>> {
    let Some(rec) = b.last_pool.take() else {
        return Ok(None);
    };
    if rec.dx != dy
        || rec.pool.input.first().map(String::as_str) != Some(relu_out)
        || b.mark() != rec.end
    {
        return Ok(None);
    }
    b.truncate(rec.start);
    let p = pool_geom(&rec.pool, shapes)?;
    let mut g: Grads = vec![None; rec.pool.input.len()];
    maxpool_tiles(b, &rec.pool, &rec.dy, &mut g, &p, true)?;
    Ok(g[0].take())
}

/// MaxPool with windows that tile the input (stride = kernel, no padding, the usual 2x2):
/// upsample the pooled maximum and dy to the windows, compare, share dy among the entries
/// equal to their window's maximum, and zero-pad the rows/columns the pooling dropped. No
/// convolutions. (Before opset 11, without Resize: reshape into windows and share dy
/// among tied entries.) With `relu_mask`, dy is first kept only where the maximum is
/// positive (see [`relu_into_pool`]).
fn maxpool_tiles(
    b: &mut Builder,
    n: &pb::NodeProto,
    dy: &str,
    g: &mut Grads,
    p: &PoolGeom,
    relu_mask: bool,
) -> Result<()> {
    let masked;
    let dy = if relu_mask {
        let z = b.scalar(0.0);
        let pos = b.op("Greater", &[&n.output[0], &z], vec![]);
        masked = b.select(&pos, dy);
        masked.as_str()
    } else {
        dy
    };
    let (bn, c, h, w) = (p.xs[0], p.xs[1], p.xs[2], p.xs[3]);
    let (oh, ow, kh, kw) = (p.ys[2], p.ys[3], p.k[0], p.k[1]);
    let (ch, cw) = (oh * kh, ow * kw);
    let x = if (ch, cw) == (h, w) {
        n.input[0].clone()
    } else {
        b.slice(&n.input[0], &[0, 0], &[ch as i64, cw as i64], &[2, 3])
    };
    let g4 = if b.opset >= 11 {
        // Upsample y to the windows with nearest-neighbour Resize (fast on ONNX Runtime),
        // compare, and share dy among a window's tied maxima (common on real images:
        // flat backgrounds give equal activations), counted by an AveragePool of the mask.
        let y_up = b.resize_nearest(&n.output[0], kh, kw);
        let eq = b.equal(&x, &y_up);
        let mask = b.as_float(&eq);
        let to_i = |v: &[usize]| v.iter().map(|x| *x as i64).collect::<Vec<_>>();
        let mean = b.op(
            "AveragePool",
            &[&mask],
            vec![
                attr_ints("kernel_shape", &to_i(&p.k)),
                attr_ints("strides", &to_i(&p.s)),
            ],
        );
        let kk = b.scalar((kh * kw) as f32);
        let cnt = b.mul(&mean, &kk);
        let share = b.div(dy, &cnt);
        let share_up = b.resize_nearest(&share, kh, kw);
        b.mul(&mask, &share_up)
    } else {
        let x6 = b.reshape(&x, &[bn, c, oh, kh, ow, kw]);
        let y6 = b.reshape(&n.output[0], &[bn, c, oh, 1, ow, 1]);
        let eq = b.equal(&x6, &y6);
        let mask = b.as_float(&eq);
        let cnt = b.reduce_sum(&mask, &[3, 5], true);
        let dy6 = b.reshape(dy, &[bn, c, oh, 1, ow, 1]);
        let share = b.div(&dy6, &cnt);
        let g6 = b.mul(&mask, &share);
        b.reshape(&g6, &[bn, c, ch, cw])
    };
    g[0] = Some(b.pad(&g4, &[0, 0, 0, 0, 0, 0, (h - ch) as i64, (w - cw) as i64]));
    Ok(())
}

/// AveragePool: dy divided by each window's count, spread back by a depthwise transposed
/// Conv with a ones kernel.
fn avgpool(
    b: &mut Builder,
    n: &pb::NodeProto,
    dy: &str,
    g: &mut Grads,
    shapes: &Shapes,
) -> Result<()> {
    let p = pool_geom(n, shapes)?;
    let c = p.xs[1];
    let (oh, ow) = (p.ys[2], p.ys[3]);
    let include_pad = int_attr(n, "count_include_pad", 0) != 0;
    let mut inv = vec![0.0f32; oh * ow];
    for i in 0..oh {
        for j in 0..ow {
            let count = if include_pad {
                // Windows clipped only by the explicit pads' far edge.
                let span = |o: usize, ax: usize| {
                    let start = (o * p.s[ax]) as i64 - p.pads[ax];
                    let end = (start + p.k[ax] as i64).min(p.xs[2 + ax] as i64 + p.pads[2 + ax]);
                    (end - start).max(1)
                };
                span(i, 0) * span(j, 1)
            } else {
                let span = |o: usize, ax: usize| {
                    let start = (o * p.s[ax]) as i64 - p.pads[ax];
                    let lo = start.max(0);
                    let hi = (start + p.k[ax] as i64).min(p.xs[2 + ax] as i64);
                    (hi - lo).max(1)
                };
                span(i, 0) * span(j, 1)
            };
            inv[i * ow + j] = 1.0 / count as f32;
        }
    }
    let invc = b.const_f32(&[1, 1, oh, ow], inv);
    let scaled = b.mul(dy, &invc);
    let ones = b.const_f32(&[c, 1, p.k[0], p.k[1]], vec![1.0; c * p.k[0] * p.k[1]]);
    g[0] = Some(b.op("ConvTranspose", &[&scaled, &ones], pool_attrs(&p, c, true)?));
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
