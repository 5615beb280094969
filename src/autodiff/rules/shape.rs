//! Shape and indexing ops: reshapes, Transpose, Concat, Slice, Pad, Gather, and the ops
//! that only compute shapes or constants.

use anyhow::{anyhow, bail, Result};

use super::{ints_attr, norm_axis, shape, Grads, Node, OpDef};
use crate::autodiff::builder::{attr_int, Builder};
use crate::autodiff::{Consts, Shapes};
use crate::model::pb;

pub(super) const OPS: &[OpDef] = &[
    OpDef::shape_only("And"),
    OpDef::shape_only("ArgMax"),
    OpDef::shape_only("ArgMin"),
    OpDef::diff("Concat", 1, concat),
    OpDef::shape_only("Constant"),
    OpDef::shape_only("ConstantOfShape"),
    OpDef::diff("CumSum", 2, cumsum),
    OpDef::diff("DepthToSpace", 1, depth_to_space),
    OpDef::shape_only("Equal"),
    OpDef::diff("Expand", 1, expand),
    OpDef::diff("Flatten", 1, reshape),
    OpDef::shape_only_with("Gather", 2, gather),
    OpDef::diff("GatherND", 2, gather_nd),
    OpDef::shape_only("Greater"),
    OpDef::shape_only("GreaterOrEqual"),
    OpDef::shape_only("IsInf"),
    OpDef::shape_only("IsNaN"),
    OpDef::shape_only("Less"),
    OpDef::shape_only("LessOrEqual"),
    OpDef::shape_only_with("Mod", 2, modulo),
    OpDef::shape_only("NonZero"),
    OpDef::shape_only("Not"),
    OpDef::shape_only("Or"),
    OpDef::diff("Pad", 1, pad),
    OpDef::shape_only("RandomNormalLike"),
    OpDef::shape_only("RandomUniformLike"),
    OpDef::shape_only("Range"),
    OpDef::diff("Reshape", 1, reshape),
    OpDef::diff("Resize", 1, resize),
    OpDef::diff("ScatterND", 3, scatter_nd),
    OpDef::shape_only("Shape"),
    OpDef::shape_only("Size"),
    OpDef::diff("Slice", 1, slice_rule),
    OpDef::diff("SpaceToDepth", 1, space_to_depth),
    OpDef::diff("Split", 1, split).multi_output(),
    OpDef::diff("Squeeze", 1, reshape),
    OpDef::diff("Tile", 2, tile),
    OpDef::diff("Transpose", 1, transpose),
    OpDef::diff("Trilu", 1, trilu),
    OpDef::diff("Unsqueeze", 1, reshape),
    OpDef::diff("Where", 3, where_rule),
    OpDef::shape_only("Xor"),
];

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
        // dx = dy (axis moved last) times a one-hot [len, D] matrix; multi-dimensional
        // indices are first flattened to one axis.
        let len = idx.len();
        let ys = c.shape(c.out())?;
        let mut flat = xs.clone();
        flat[axis] = len;
        let dy = if *ys != flat {
            b.reshape(c.dy, &flat)
        } else {
            c.dy.to_string()
        };
        let idx: Vec<i64> = idx.iter().map(|i| norm(*i)).collect();
        g[0] = Some(scatter_axis(b, &dy, &flat, axis, &idx, d as usize));
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
    let steps = get(4, "")?.unwrap_or_else(|| vec![1; starts.len()]);
    if steps.len() != starts.len() || steps.contains(&0) {
        bail!("Slice with steps {steps:?} is not supported");
    }
    // Axes with step 1 are put back by a zero Pad; the others (strided, reversed) by a
    // one-hot matrix scattering each kept index back to its place.
    let mut pads = vec![0i64; 2 * r];
    let mut g = dy.to_string();
    let mut gs = shape(shapes, &n.output[0])?.clone();
    for (j, &a) in axes.iter().enumerate() {
        let ax = norm_axis(a, r);
        let dim = xs[ax] as i64;
        let idx = slice_indices(starts[j], ends[j], steps[j], dim);
        if steps[j] == 1 {
            let (s0, e0) = match (idx.first(), idx.last()) {
                (Some(f), Some(l)) => (*f, l + 1),
                _ => (0, 0),
            };
            pads[ax] = s0;
            pads[r + ax] = dim - e0;
        } else {
            g = scatter_axis(b, &g, &gs, ax, &idx, dim as usize);
            gs[ax] = dim as usize;
        }
    }
    Ok(b.pad(&g, &pads))
}

/// The indices an ONNX Slice keeps on an axis of length `dim`.
fn slice_indices(start: i64, end: i64, step: i64, dim: i64) -> Vec<i64> {
    let fix = |v: i64| if v < 0 { v.saturating_add(dim) } else { v };
    let (mut s, mut e) = (fix(start), fix(end));
    if step > 0 {
        s = s.clamp(0, dim);
        e = e.clamp(0, dim);
    } else {
        s = s.clamp(0, dim - 1);
        e = e.clamp(-1, dim - 1);
    }
    let mut out = vec![];
    let mut i = s;
    while (step > 0 && i < e) || (step < 0 && i > e) {
        out.push(i);
        i += step;
    }
    out
}

/// The gradient of taking indices `idx` of axis `axis` (length `dim`) of a tensor: `g`
/// (shape `gs`, `idx.len()` on that axis) times a one-hot [len, dim] matrix on that axis
/// (repeated indices add up).
fn scatter_axis(
    b: &mut Builder,
    g: &str,
    gs: &[usize],
    axis: usize,
    idx: &[i64],
    dim: usize,
) -> String {
    let r = gs.len();
    let len = idx.len();
    let mut m = vec![0.0f32; len * dim];
    for (j, &i) in idx.iter().enumerate() {
        m[j * dim + i as usize] += 1.0;
    }
    let mc = b.const_f32(&[len, dim], m);
    axis_matmul(b, g, r, axis, &mc)
}

/// `g` (rank `r`) times the matrix `m` on axis `axis`.
fn axis_matmul(b: &mut Builder, g: &str, r: usize, axis: usize, mc: &str) -> String {
    if axis + 1 == r {
        return b.op("MatMul", &[g, mc], vec![]);
    }
    let mut perm: Vec<usize> = (0..r).filter(|a| *a != axis).collect();
    perm.push(axis);
    let t = b.transpose(g, &perm);
    let mm = b.op("MatMul", &[&t, mc], vec![]);
    let mut inv = vec![0; r];
    for (i, p) in perm.iter().enumerate() {
        inv[*p] = i;
    }
    b.transpose(&mm, &inv)
}

/// Split: the outputs' gradients concatenated back (zeros for outputs without one).
fn split(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let xs = c.shape(c.input(0))?;
    let axis = norm_axis(c.int("axis", 0), xs.len());
    let mut parts = vec![];
    for (k, out) in c.n.output.iter().enumerate() {
        match c.dys.get(k).cloned().flatten() {
            Some(d) => parts.push(d),
            None => {
                let os = c.shape(out)?;
                parts.push(b.const_f32(os, vec![0.0; os.iter().product()]));
            }
        }
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    g[0] = Some(if refs.len() == 1 {
        parts[0].clone()
    } else {
        b.op("Concat", &refs, vec![attr_int("axis", axis as i64)])
    });
    Ok(())
}

/// Expand: the gradient summed over the broadcast axes.
fn expand(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let (xs, ys) = (c.shape(c.input(0))?, c.shape(c.out())?);
    g[0] = Some(b.unbroadcast(c.dy, ys, xs));
    Ok(())
}

/// Tile: each repeated axis split into (repeats, size) and the repeats summed.
fn tile(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let xs = c.shape(c.input(0))?.clone();
    let reps = if b.opset >= 6 {
        c.const_i64s(1, "repeats")?
    } else {
        bail!("Tile before opset 6 is not supported");
    };
    if reps.len() != xs.len() || reps.iter().any(|v| *v < 1) {
        bail!("Tile with repeats {reps:?} is not supported");
    }
    let mut split = vec![];
    let mut axes = vec![];
    for (&d, &rp) in xs.iter().zip(&reps) {
        if rp > 1 {
            axes.push(split.len() as i64);
            split.push(rp as usize);
        }
        split.push(d);
    }
    if axes.is_empty() {
        g[0] = Some(c.dy.to_string());
        return Ok(());
    }
    let t = b.reshape(c.dy, &split);
    let s = b.reduce_sum(&t, &axes, false);
    g[0] = Some(b.reshape(&s, &xs));
    Ok(())
}

/// Where: the gradient goes to X where the condition holds and to Y elsewhere (the
/// condition is a tensor of the forward graph, constant or not; it gets no gradient).
fn where_rule(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let ys = c.shape(c.out())?.clone();
    let zero = b.scalar(0.0);
    if c.need(1) {
        let d = b.op("Where", &[c.input(0), c.dy, &zero], vec![]);
        g[1] = Some(b.unbroadcast(&d, &ys, c.shape(c.input(1))?));
    }
    if c.need(2) {
        let d = b.op("Where", &[c.input(0), &zero, c.dy], vec![]);
        g[2] = Some(b.unbroadcast(&d, &ys, c.shape(c.input(2))?));
    }
    Ok(())
}

/// CumSum: the gradient is the cumulative sum in the other direction (same axis and
/// exclusivity).
fn cumsum(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let attrs = vec![
        attr_int("exclusive", c.int("exclusive", 0)),
        attr_int("reverse", 1 - c.int("reverse", 0)),
    ];
    g[0] = Some(b.op("CumSum", &[c.dy, c.input(1)], attrs));
    Ok(())
}

/// Trilu: the gradient keeps the same triangle.
fn trilu(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let attrs = vec![attr_int("upper", c.int("upper", 1))];
    let mut ins = vec![c.dy];
    if !c.input(1).is_empty() {
        ins.push(c.input(1));
    }
    g[0] = Some(b.op("Trilu", &ins, attrs));
    Ok(())
}

/// Mod: on integers (fmod 0) a shape computation, no gradient; on floats (fmod 1, C
/// fmod: r = x - y trunc(x / y)) the dividend's gradient is dy and the divisor's
/// -trunc(x / y) dy = -(x - r) / y dy (between the jumps, where x / y crosses an integer).
fn modulo(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    if c.int("fmod", 0) == 0 {
        return Ok(());
    }
    let ys = c.shape(c.out())?.clone();
    if c.need(0) {
        g[0] = Some(b.unbroadcast(c.dy, &ys, c.shape(c.input(0))?));
    }
    if c.need(1) {
        let taken = b.sub(c.input(0), c.out());
        let q = b.div(&taken, c.input(1));
        let d = b.mul(&q, c.dy);
        let d = b.neg(&d);
        g[1] = Some(b.unbroadcast(&d, &ys, c.shape(c.input(1))?));
    }
    Ok(())
}

/// ScatterND (reduction none or add): data's gradient is dy with the scattered positions
/// zeroed (none) or dy itself (add); the updates' gradient gathers dy at the indices.
/// The indices are read from the forward graph at run time.
fn scatter_nd(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let red = c.string("reduction").unwrap_or_else(|| "none".into());
    if red != "none" && red != "add" {
        bail!("ScatterND with reduction {red} is not supported");
    }
    if c.need(0) {
        g[0] = Some(if red == "add" {
            c.dy.to_string()
        } else {
            let us = c.shape(c.input(2))?;
            let zeros = b.const_f32(us, vec![0.0; us.iter().product()]);
            b.op("ScatterND", &[c.dy, c.input(1), &zeros], vec![])
        });
    }
    if c.need(2) {
        g[2] = Some(b.op("GatherND", &[c.dy, c.input(1)], vec![]));
    }
    Ok(())
}

/// GatherND (batch_dims 0): the gradient scattered back into zeros of the data's shape
/// with ScatterND at the same indices, read from the forward graph. Repeated indices
/// must add up: that needs ScatterND's reduction "add" (opset 16); with constant indices
/// that do not repeat, the plain ScatterND serves at any opset.
fn gather_nd(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    if c.int("batch_dims", 0) != 0 {
        bail!("GatherND with batch_dims is not supported");
    }
    let xs = c.shape(c.input(0))?;
    let zeros = b.const_f32(xs, vec![0.0; xs.iter().product()]);
    let unique = c.consts.i64s(c.input(1)).and_then(|idx| {
        let is = c.shape(c.input(1)).ok()?;
        let k = *is.last()?;
        let mut rows: Vec<Vec<i64>> = idx.chunks(k.max(1)).map(<[i64]>::to_vec).collect();
        let n = rows.len();
        rows.sort();
        rows.dedup();
        Some(rows.len() == n)
    });
    let attrs = if unique == Some(true) {
        vec![]
    } else if b.opset >= 16 {
        vec![attr_str("reduction", "add")]
    } else {
        bail!("GatherND with indices that are not constant and distinct needs opset 16");
    };
    g[0] = Some(b.op("ScatterND", &[&zeros, c.input(1), c.dy], attrs));
    Ok(())
}

fn attr_str(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 3,
        s: v.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// DepthToSpace as reshape, transpose, reshape: the gradient undoes the three.
fn depth_to_space(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let xs = c.shape(c.input(0))?.clone();
    let bs = c.int("blocksize", 0) as usize;
    if xs.len() != 4 || bs == 0 || xs[1] % (bs * bs) != 0 {
        bail!("DepthToSpace of shape {xs:?} with blocksize {bs} is not supported");
    }
    let (n, ch, h, w) = (xs[0], xs[1] / (bs * bs), xs[2], xs[3]);
    let crd = c.string("mode").is_some_and(|m| m == "CRD");
    // The forward's 6-D view of x and its permutation.
    let (perm, six): ([usize; 6], [usize; 6]) = if crd {
        ([0, 1, 4, 2, 5, 3], [n, ch, bs, bs, h, w])
    } else {
        ([0, 3, 4, 1, 5, 2], [n, bs, bs, ch, h, w])
    };
    g[0] = Some(unpermute(b, c.dy, &six, &perm, &xs));
    Ok(())
}

/// SpaceToDepth as reshape, transpose, reshape: the gradient undoes the three.
fn space_to_depth(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let xs = c.shape(c.input(0))?.clone();
    let bs = c.int("blocksize", 0) as usize;
    if xs.len() != 4 || bs == 0 || xs[2] % bs != 0 || xs[3] % bs != 0 {
        bail!("SpaceToDepth of shape {xs:?} with blocksize {bs} is not supported");
    }
    let (n, ch, h, w) = (xs[0], xs[1], xs[2] / bs, xs[3] / bs);
    let six = [n, ch, h, bs, w, bs];
    g[0] = Some(unpermute(b, c.dy, &six, &[0, 3, 5, 1, 2, 4], &xs));
    Ok(())
}

/// The gradient of `reshape(transpose(reshape(x, six), perm), ..)`: dy viewed as the
/// transposed 6-D tensor, transposed back, reshaped to x's shape `xs`.
fn unpermute(b: &mut Builder, dy: &str, six: &[usize], perm: &[usize], xs: &[usize]) -> String {
    let tshape: Vec<usize> = perm.iter().map(|p| six[*p]).collect();
    let t = b.reshape(dy, &tshape);
    let mut inv = vec![0; perm.len()];
    for (i, p) in perm.iter().enumerate() {
        inv[*p] = i;
    }
    let u = b.transpose(&t, &inv);
    b.reshape(&u, xs)
}

/// Resize (and the old Upsample, which tract cannot run, so not registered), nearest or linear: separable linear maps, so the gradient applies
/// on each resized axis the transposed interpolation matrix ([out, in], built here from
/// the coordinate transformation) with a MatMul. The scales are the constant ones given,
/// else output size over input size.
fn resize(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let xs = c.shape(c.input(0))?.clone();
    let ys = c.shape(c.out())?.clone();
    let r = xs.len();
    let upsample = c.n.op_type == "Upsample";
    let mode = c.string("mode").unwrap_or_else(|| "nearest".into());
    if mode != "nearest" && mode != "linear" {
        bail!(
            "{} mode {mode} is not supported (nearest and linear are)",
            c.n.op_type
        );
    }
    let legacy = upsample || b.opset < 11;
    let coord = if legacy {
        "asymmetric".to_string()
    } else {
        c.string("coordinate_transformation_mode")
            .unwrap_or_else(|| "half_pixel".into())
    };
    let nearest = if legacy {
        "simple".to_string()
    } else {
        c.string("nearest_mode")
            .unwrap_or_else(|| "round_prefer_floor".into())
    };
    let scales_in = if upsample && b.opset < 9 {
        c.n.attribute
            .iter()
            .find(|a| a.name == "scales")
            .map(|a| a.floats.clone())
    } else {
        let i = if legacy { 1 } else { 2 };
        c.consts.f32s(c.input(i)).filter(|v| !v.is_empty())
    };
    // Scales per axis (the opset-18 `axes` attribute names the axes they are for).
    let mut scales: Vec<f32> = (0..r).map(|i| ys[i] as f32 / xs[i] as f32).collect();
    if let Some(sc) = scales_in {
        let axes: Vec<usize> = c
            .ints("axes")
            .map(|a| a.iter().map(|v| norm_axis(*v, r)).collect())
            .unwrap_or_else(|| (0..r).collect());
        if sc.len() == axes.len() {
            for (a, v) in axes.iter().zip(sc) {
                scales[*a] = v;
            }
        }
    }
    let mut cur = c.dy.to_string();
    for ax in 0..r {
        let (l, o) = (xs[ax], ys[ax]);
        let s = scales[ax];
        if c.int("antialias", 0) != 0 && s < 1.0 {
            bail!(
                "{} with antialias when downsampling is not supported",
                c.n.op_type
            );
        }
        let m = interpolation_matrix(&mode, &coord, &nearest, l, o, s)?;
        let identity =
            l == o && (0..o).all(|i| (0..l).all(|j| m[i * l + j] == (i == j) as u8 as f32));
        if identity {
            continue;
        }
        let mc = b.const_f32(&[o, l], m);
        cur = axis_matmul(b, &cur, r, ax, &mc);
    }
    g[0] = Some(cur);
    Ok(())
}

/// The [out, in] matrix of a 1-D nearest or linear resize from `l` to `o` values.
fn interpolation_matrix(
    mode: &str,
    coord: &str,
    nearest: &str,
    l: usize,
    o: usize,
    scale: f32,
) -> Result<Vec<f32>> {
    let (lf, of, s) = (l as f64, o as f64, scale as f64);
    let mut m = vec![0.0f32; o * l];
    for i in 0..o {
        let fi = i as f64;
        let x = match coord {
            "half_pixel" => (fi + 0.5) / s - 0.5,
            "pytorch_half_pixel" => {
                if o > 1 {
                    (fi + 0.5) / s - 0.5
                } else {
                    0.0
                }
            }
            "align_corners" => {
                if o == 1 {
                    0.0
                } else {
                    fi * (lf - 1.0) / (of - 1.0)
                }
            }
            "asymmetric" => fi / s,
            "tf_half_pixel_for_nn" => (fi + 0.5) / s,
            other => bail!("Resize coordinate_transformation_mode {other} is not supported"),
        };
        let last = l as i64 - 1;
        if mode == "nearest" {
            let j = match nearest {
                "round_prefer_floor" => {
                    if x.fract().abs() == 0.5 {
                        x.floor()
                    } else {
                        x.round()
                    }
                }
                "round_prefer_ceil" => {
                    if x.fract().abs() == 0.5 {
                        x.ceil()
                    } else {
                        x.round()
                    }
                }
                "floor" => x.floor(),
                "ceil" => x.ceil(),
                // Before opset 11 (ONNX Runtime's rule): truncate when upsampling, ceil
                // when downsampling.
                "simple" => {
                    if s < 1.0 {
                        x.ceil()
                    } else {
                        x.trunc()
                    }
                }
                other => bail!("Resize nearest_mode {other} is not supported"),
            };
            let j = (j as i64).clamp(0, last) as usize;
            m[i * l + j] += 1.0;
        } else {
            let x = x.clamp(0.0, last as f64);
            let j0 = x.floor() as usize;
            let j1 = (j0 + 1).min(l - 1);
            let w1 = (x - j0 as f64) as f32;
            m[i * l + j0] += 1.0 - w1;
            m[i * l + j1] += w1;
        }
    }
    Ok(m)
}
