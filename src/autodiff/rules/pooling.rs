//! Pooling: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.

use anyhow::{anyhow, bail, Result};

use super::linear::{conv_pads, output_padding};
use super::{int_attr, ints_attr, shape, Grads, Node, OpDef};
use crate::autodiff::builder::{attr_int, attr_ints, Builder, PoolGrad};
use crate::autodiff::Shapes;
use crate::model::pb;

pub(super) const OPS: &[OpDef] = &[
    OpDef::diff("AveragePool", 1, avgpool),
    OpDef::diff("GlobalAveragePool", 1, global_avgpool),
    OpDef::diff("GlobalMaxPool", 1, global_maxpool),
    OpDef::diff("MaxPool", 1, maxpool),
];

fn global_avgpool(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let xs = c.shape(c.input(0))?;
    let spatial: usize = xs[2..].iter().product();
    let mut ones_shape = vec![1, 1];
    ones_shape.extend_from_slice(&xs[2..]);
    let ones = b.const_f32(&ones_shape, vec![1.0 / spatial as f32; spatial]);
    g[0] = Some(b.mul(c.dy, &ones));
    Ok(())
}

/// GlobalMaxPool: dy shared among each channel's entries equal to its maximum.
fn global_maxpool(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let r = c.shape(c.input(0))?.len();
    let eq = b.equal(c.input(0), c.out());
    let mask = b.as_float(&eq);
    let axes: Vec<i64> = (2..r as i64).collect();
    let cnt = b.reduce_sum(&mask, &axes, true);
    let share = b.div(c.dy, &cnt);
    g[0] = Some(b.mul(&mask, &share));
    Ok(())
}

struct PoolGeom {
    xs: Vec<usize>,
    ys: Vec<usize>,
    k: Vec<usize>,
    s: Vec<usize>,
    d: Vec<usize>,
    pads: Vec<i64>,
    /// The pads as given (`pads` adds the end padding of ceil_mode windows).
    given: Vec<i64>,
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
    let given = pads.clone();
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
        given,
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
fn maxpool(b: &mut Builder, node: &Node, g: &mut Grads) -> Result<()> {
    let (n, dy, shapes) = (node.n, node.dy, node.shapes);
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
pub(super) fn relu_into_pool(
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
fn avgpool(b: &mut Builder, node: &Node, g: &mut Grads) -> Result<()> {
    let (n, dy, shapes) = (node.n, node.dy, node.shapes);
    let p = pool_geom(n, shapes)?;
    let c = p.xs[1];
    let (oh, ow) = (p.ys[2], p.ys[3]);
    let include_pad = int_attr(n, "count_include_pad", 0) != 0;
    let mut inv = vec![0.0f32; oh * ow];
    for i in 0..oh {
        for j in 0..ow {
            let count = if include_pad {
                // Windows clipped only by the given pads' far edge (ceil_mode windows
                // running past it count only up to it).
                let span = |o: usize, ax: usize| {
                    let start = (o * p.s[ax]) as i64 - p.pads[ax];
                    let end = (start + p.k[ax] as i64).min(p.xs[2 + ax] as i64 + p.given[2 + ax]);
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
