//! Linear maps and convolutions: Gemm, MatMul, Conv.

use anyhow::{anyhow, bail, Result};

use super::{attr, float_attr, int_attr, ints_attr, shape, Grads, Node, OpDef};
use crate::autodiff::builder::{attr_int, attr_ints, Builder};
use crate::model::pb;

pub(super) const OPS: &[OpDef] = &[
    OpDef::diff("Conv", 2, conv),
    OpDef::diff("ConvTranspose", 2, conv_transpose),
    OpDef::diff("Einsum", 1, einsum),
    OpDef::diff("Gemm", 2, gemm),
    OpDef::diff("MatMul", 2, matmul),
];

fn gemm(b: &mut Builder, node: &Node, g: &mut Grads) -> Result<()> {
    let (n, dy, shapes) = (node.n, node.dy, node.shapes);
    let (need_a, need_b, need_c) = (node.need(0), node.need(1), node.need(2));
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

fn matmul(b: &mut Builder, node: &Node, g: &mut Grads) -> Result<()> {
    let (n, dy, shapes) = (node.n, node.dy, node.shapes);
    let (need_a, need_b) = (node.need(0), node.need(1));
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
        if sb.len() == 2 && sa.len() > 2 {
            // A weight shared by every row of a batched A (a Linear on [N, tokens, C]):
            // one MatMul over all rows, A^T [K, rows] times dY [rows, N], rather than a
            // [N, K, N'] product per example summed afterwards.
            let rows: usize = sa[..sa.len() - 1].iter().product();
            let a2 = b.reshape(a, &[rows, sa[sa.len() - 1]]);
            let d2 = b.reshape(dy, &[rows, sy[sy.len() - 1]]);
            let at = b.transpose(&a2, &[1, 0]);
            g[1] = Some(b.op("MatMul", &[&at, &d2], vec![]));
        } else {
            let at = swap_last2(b, a, sa.len());
            let db = b.op("MatMul", &[&at, dy], vec![]);
            let mut full = sy.clone();
            let r = full.len();
            full[r - 2] = sb[sb.len() - 2];
            g[1] = Some(b.unbroadcast(&db, &full, &sb));
        }
    }
    Ok(())
}

/// Explicit begin/end pads of a conv-like node for input spatial dims `xs`.
pub(super) fn conv_pads(
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
pub(super) fn output_padding(
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

fn conv(b: &mut Builder, node: &Node, g: &mut Grads) -> Result<()> {
    let (n, dy, shapes, consts) = (node.n, node.dy, node.shapes, node.consts);
    let (need_x, need_w, need_b) = (node.need(0), node.need(1), node.need(2));
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
    let stride1 = s.iter().all(|v| *v == 1) && d.iter().all(|v| *v == 1);
    // Depthwise with one output per channel (ConvNeXt's 7x7, MobileNets' 3x3): dX is the
    // same depthwise Conv of dy with each kernel flipped, which ONNX Runtime runs with
    // its depthwise kernels (ConvTranspose with group C runs 1 channel at a time).
    let depthwise = group > 1 && group as usize == xs[1] && ws[0] == xs[1] && ws[1] == 1;
    let fits = (0..r).all(|i| pads[i] < k[i] as i64 && pads[r + i] < k[i] as i64);
    let weights = consts
        .f32s(&n.input[1])
        .filter(|w| w.len() == ws.iter().product::<usize>());
    // ONNX Runtime computes Conv in blocks of 8 output channels: with fewer than 16
    // (dX of a first layer on grey or RGB images), ConvTranspose is 2-3x faster; with
    // more, Conv is as fast or faster.
    let wide = ws[1] >= 16;
    if let (true, true, true, true, Some(w)) = (need_x, stride1, depthwise, fits, &weights) {
        let ksz: usize = k.iter().product();
        let mut wt = vec![0.0f32; w.len()];
        for (ch, kernel) in w.chunks_exact(ksz).enumerate() {
            for (q, v) in kernel.iter().enumerate() {
                wt[ch * ksz + (ksz - 1 - q)] = *v;
            }
        }
        let wc = b.const_f32(&ws, wt);
        let full: Vec<i64> = (0..2 * r).map(|i| k[i % r] as i64 - 1 - pads[i]).collect();
        g[0] = Some(b.op(
            "Conv",
            &[dy, &wc],
            vec![attr_ints("pads", &full), attr_int("group", group)],
        ));
    } else if let (true, true, true, true, true, Some(w)) =
        (need_x, stride1, group == 1, fits, wide, &weights)
    {
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
            b,
            &n.input[0],
            dy,
            [&xs, &ws, &ys],
            &s,
            &d,
            group,
            &pads,
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
/// [1, C*N, ..]; other grouped convs (ResNeXt, RegNet) as one group-1 gradient per group.
#[allow(clippy::too_many_arguments)]
fn conv_weight_grad(
    b: &mut Builder,
    x: &str,
    dy: &str,
    [xs, ws, ys]: [&[usize]; 3],
    s: &[usize],
    d: &[usize],
    group: i64,
    pads: &[i64],
) -> Result<String> {
    let r = xs.len() - 2;
    let (nb, c, m) = (xs[0], xs[1], ws[0]);
    if group == 1 && gemm_pays(b, ws, ys, pads) {
        return Ok(conv_weight_grad_gemm(b, x, dy, [xs, ws, ys], s, d, pads));
    }
    let pads: Vec<i64> = pads.iter().map(|p| (*p).max(0)).collect();
    let pads = pads.as_slice();
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
        let xt = b.transpose(x, &perm);
        b.op("Conv", &[&xt, &dyt], attrs(1))
    } else if group as usize == c && ws[1] == 1 {
        let xt = b.transpose(x, &perm);
        let mut flat = vec![1, c * nb];
        flat.extend(&xs[2..]);
        let xt = b.reshape(&xt, &flat);
        b.op("Conv", &[&xt, &dyt], attrs(group))
    } else {
        // Other grouped convs: one group-1 weight gradient per group (its input and
        // output channels sliced out), stacked along the output channels.
        let g = group as usize;
        if g == 0 || c % g != 0 || m % g != 0 || ws[1] * g != c {
            bail!(
                "Conv with group {group}, {c} input and {m} output channels and weight {ws:?} is not a valid grouped convolution"
            );
        }
        let (cg, mg) = (c / g, m / g);
        let mut xs_g = xs.to_vec();
        xs_g[1] = cg;
        let mut ys_g = ys.to_vec();
        ys_g[1] = mg;
        let mut ws_g = ws.to_vec();
        ws_g[0] = mg;
        let mut parts = Vec::with_capacity(g);
        for i in 0..g {
            let xi = b.slice(x, &[(i * cg) as i64], &[((i + 1) * cg) as i64], &[1]);
            let di = b.slice(dy, &[(i * mg) as i64], &[((i + 1) * mg) as i64], &[1]);
            parts.push(conv_weight_grad(
                b,
                &xi,
                &di,
                [&xs_g, &ws_g, &ys_g],
                s,
                d,
                1,
                pads,
            )?);
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        return Ok(b.op("Concat", &refs, vec![attr_int("axis", 0)]));
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

/// Whether a group-1 Conv's weight gradient runs faster as one matrix product over the
/// kernel's shifted views of X ([`conv_weight_grad_gemm`]) than as the correlation of X
/// with dY: always for 1x1 kernels (ResNet bottlenecks, MobileNets' pointwise convs:
/// 5-17x on ONNX Runtime, where the correlation is a matrix-vector product per input
/// channel), for kernels of up to 9 taps on outputs of at least 14x14 (1.2-1.8x); not
/// for larger kernels or small outputs, whose copies of X cost more than they save.
/// Needs Slice with steps (opset 10) and no negative pads.
/// Measured on ONNX Runtime's CPU kernels; `HARDEN_CONV_WEIGHT_GRAD=gemm|correlation`
/// forces one form wherever both apply, to measure them elsewhere (on CUDA:
/// scripts/device-check.sh times a Fast-AT epoch with each).
fn gemm_pays(b: &Builder, ws: &[usize], ys: &[usize], pads: &[i64]) -> bool {
    static FORCED: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    let forced =
        *FORCED.get_or_init(
            || match std::env::var("HARDEN_CONV_WEIGHT_GRAD").ok()?.as_str() {
                "gemm" => Some(true),
                "correlation" => Some(false),
                _ => None,
            },
        );
    let taps: usize = ws[2..].iter().product();
    let positions: usize = ys[2..].iter().product();
    let possible = b.opset >= 10 && pads.iter().all(|p| *p >= 0);
    possible && forced.unwrap_or(taps == 1 || (taps <= 9 && positions >= 196))
}

/// dW of a group-1 Conv as a matrix product: the kernel's shifted, strided views of
/// (padded) X stacked into columns [N, C*K, P] (K taps, P output positions), times dY as
/// [N, P, M], summed over the batch: [C*K, M], transposed to W's [M, C, k...].
fn conv_weight_grad_gemm(
    b: &mut Builder,
    x: &str,
    dy: &str,
    [xs, ws, ys]: [&[usize]; 3],
    s: &[usize],
    d: &[usize],
    pads: &[i64],
) -> String {
    let r = xs.len() - 2;
    let (nb, c, m) = (xs[0], xs[1], ws[0]);
    let k = &ws[2..];
    let taps: usize = k.iter().product();
    let positions: usize = ys[2..].iter().product();
    let xp = b.pad(x, &[&[0, 0], &pads[..r], &[0, 0], &pads[r..]].concat());
    let axes: Vec<i64> = (2..r as i64 + 2).collect();
    let steps: Vec<i64> = s.iter().map(|v| *v as i64).collect();
    let unit_steps = steps.iter().all(|v| *v == 1);
    let mut views = Vec::with_capacity(taps);
    for t in 0..taps {
        // The tap's offsets along each spatial axis (row-major over the kernel).
        let mut rest = t;
        let mut offset = vec![0usize; r];
        for i in (0..r).rev() {
            offset[i] = rest % k[i];
            rest /= k[i];
        }
        let starts: Vec<i64> = (0..r).map(|i| (offset[i] * d[i]) as i64).collect();
        let ends: Vec<i64> = (0..r)
            .map(|i| starts[i] + ((ys[2 + i] - 1) * s[i]) as i64 + 1)
            .collect();
        let whole = (0..r).all(|i| starts[i] == 0 && ends[i] as usize == xs[2 + i]);
        let view = if whole && unit_steps && pads.iter().all(|p| *p == 0) {
            x.to_string()
        } else if unit_steps {
            b.slice(&xp, &starts, &ends, &axes)
        } else {
            let (st, en, ax, sp) = (
                b.const_i64(&starts),
                b.const_i64(&ends),
                b.const_i64(&axes),
                b.const_i64(&steps),
            );
            b.op("Slice", &[&xp, &st, &en, &ax, &sp], vec![])
        };
        views.push(if taps == 1 {
            b.reshape(&view, &[nb, c, positions])
        } else {
            b.reshape(&view, &[nb, c, 1, positions])
        });
    }
    let cols = if taps == 1 {
        views.pop().unwrap_or_default()
    } else {
        let refs: Vec<&str> = views.iter().map(String::as_str).collect();
        let cat = b.op("Concat", &refs, vec![attr_int("axis", 2)]);
        b.reshape(&cat, &[nb, c * taps, positions])
    };
    if nb == 1 {
        // One example (a run cut small for the cache): dY [M, P] times the columns
        // [C*K, P] transposed, as one Gemm, with no copies.
        let dyr = b.reshape(dy, &[m, positions]);
        let cols = b.reshape(&cols, &[c * taps, positions]);
        let w = b.op("Gemm", &[&dyr, &cols], vec![attr_int("transB", 1)]);
        return b.reshape(&w, ws);
    }
    let dyr = b.reshape(dy, &[nb, m, positions]);
    let dyt = b.transpose(&dyr, &[0, 2, 1]);
    let per_example = b.op("MatMul", &[&cols, &dyt], vec![]);
    let summed = b.reduce_sum(&per_example, &[0], false);
    let wt = b.transpose(&summed, &[1, 0]);
    b.reshape(&wt, ws)
}

/// ConvTranspose is the adjoint of a Conv with the same weight, strides, dilations, pads
/// and groups: dX is that Conv of dY (end pads set so that it gives X's size, the rows
/// output_padding added cropped), and dW the Conv weight gradient with X and dY in each
/// other's roles.
fn conv_transpose(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let xs = c.shape(c.input(0))?.clone();
    let ws = c.shape(c.input(1))?.clone();
    let ys = c.shape(c.out())?.clone();
    let r = xs.len() - 2;
    let k: Vec<usize> = ws[2..].to_vec();
    let ones = vec![1i64; r];
    let s: Vec<i64> = c.ints("strides").unwrap_or_else(|| ones.clone());
    let d: Vec<i64> = c.ints("dilations").unwrap_or_else(|| ones.clone());
    let group = c.int("group", 1);
    let auto = c.string("auto_pad").unwrap_or_default();
    let pads = match auto.as_str() {
        "" | "NOTSET" => c.ints("pads").unwrap_or_else(|| vec![0; 2 * r]),
        "VALID" => vec![0; 2 * r],
        other => bail!("ConvTranspose with auto_pad {other} is not supported"),
    };
    if c.ints("output_shape").is_some() && c.ints("pads").is_none() {
        bail!("ConvTranspose with output_shape and no explicit pads is not supported");
    }
    // Conv of dY back to X's size: begin pads as given, end pads to reach xs exactly
    // (negative: dY's extra rows are never read, cropped from the result).
    let mut cpads = pads[..r].to_vec();
    let mut crop = false;
    for i in 0..r {
        let end = (xs[2 + i] as i64 - 1) * s[i] + (k[i] as i64 - 1) * d[i] + 1
            - ys[2 + i] as i64
            - pads[i];
        crop |= end < 0;
        cpads.push(end.max(0));
    }
    let usz = |v: &[i64]| v.iter().map(|x| *x as usize).collect::<Vec<_>>();
    if c.need(0) {
        let attrs = vec![
            attr_ints("strides", &s),
            attr_ints("dilations", &d),
            attr_ints("pads", &cpads),
            attr_int("group", group),
            attr_ints(
                "kernel_shape",
                &k.iter().map(|v| *v as i64).collect::<Vec<_>>(),
            ),
        ];
        let dx = b.op("Conv", &[c.dy, c.input(1)], attrs);
        g[0] = Some(if crop {
            let axes: Vec<i64> = (2..r as i64 + 2).collect();
            let ends: Vec<i64> = xs[2..].iter().map(|v| *v as i64).collect();
            b.slice(&dx, &vec![0; r], &ends, &axes)
        } else {
            dx
        });
    }
    if c.need(1) {
        g[1] = Some(conv_weight_grad(
            b,
            c.dy,
            c.input(0),
            [&ys, &ws, &xs],
            &usz(&s),
            &usz(&d),
            group,
            &cpads,
        )?);
    }
    if c.need(2) && !c.input(2).is_empty() {
        let axes: Vec<i64> = std::iter::once(0).chain(2..(r as i64 + 2)).collect();
        g[2] = Some(b.reduce_sum(c.dy, &axes, false));
    }
    Ok(())
}

/// An Einsum equation split into its operands' and output's axis letters, with `...`
/// replaced by capital letters (right-aligned across operands).
fn parse_einsum(eq: &str, ranks: &[usize]) -> Result<(Vec<Vec<char>>, Vec<char>)> {
    let eq: String = eq.chars().filter(|ch| !ch.is_whitespace()).collect();
    let unsupported = |why: &str| anyhow!("Einsum equation '{eq}' is not supported ({why})");
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq.clone(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ranks.len() {
        return Err(unsupported("operand count"));
    }
    let ell_rank = terms
        .iter()
        .zip(ranks)
        .map(|(t, r)| {
            if t.contains("...") {
                r.saturating_sub(t.replace("...", "").chars().count())
            } else {
                0
            }
        })
        .max()
        .unwrap_or(0);
    let ell: Vec<char> = (0..ell_rank).map(|i| (b'A' + i as u8) as char).collect();
    let expand = |t: &str, rank: usize| -> Result<Vec<char>> {
        let mut out = vec![];
        if let Some((a, z)) = t.split_once("...") {
            let n = rank.saturating_sub(a.chars().count() + z.chars().count());
            out.extend(a.chars());
            out.extend(&ell[ell_rank - n..]);
            out.extend(z.chars());
        } else {
            out.extend(t.chars());
        }
        if out.len() != rank || out.iter().any(|ch| !ch.is_ascii_alphabetic()) {
            return Err(unsupported("operand ranks"));
        }
        Ok(out)
    };
    let ops: Vec<Vec<char>> = terms
        .iter()
        .zip(ranks)
        .map(|(t, r)| expand(t, *r))
        .collect::<Result<_>>()?;
    let out: Vec<char> = match rhs {
        Some(r) => {
            let mut o = vec![];
            if let Some((a, z)) = r.split_once("...") {
                o.extend(a.chars());
                o.extend(&ell);
                o.extend(z.chars());
            } else {
                o.extend(r.chars());
            }
            o
        }
        None => {
            // Implicit output: the ellipsis, then letters used once, sorted.
            let mut o = ell.clone();
            let mut once: Vec<char> = ops
                .iter()
                .flatten()
                .filter(|ch| ch.is_ascii_lowercase())
                .copied()
                .filter(|ch| ops.iter().flatten().filter(|x| *x == ch).count() == 1)
                .collect();
            once.sort();
            o.extend(once);
            o
        }
    };
    for t in ops.iter().chain(std::iter::once(&out)) {
        let mut seen = t.clone();
        seen.sort();
        seen.dedup();
        if seen.len() != t.len() {
            return Err(unsupported("repeated axis in one term (diagonal)"));
        }
    }
    Ok((ops, out))
}

/// Einsum: the gradient of each operand is the Einsum of dY with the other operands into
/// that operand's axes. Refused: diagonals, axes summed within one operand only, and
/// broadcasting (size-1) axes.
fn einsum(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let eq = c
        .string("equation")
        .ok_or_else(|| anyhow!("Einsum without an equation"))?;
    let shapes: Vec<Vec<usize>> = (0..c.n.input.len())
        .map(|i| c.shape(c.input(i)).cloned())
        .collect::<Result<_>>()?;
    let ranks: Vec<usize> = shapes.iter().map(Vec::len).collect();
    let (ops, out) = parse_einsum(&eq, &ranks)?;
    // Sizes by letter must agree (no broadcasting).
    let mut size: std::collections::HashMap<char, usize> = Default::default();
    for (t, sh) in ops.iter().zip(&shapes) {
        for (ch, d) in t.iter().zip(sh) {
            if *size.entry(*ch).or_insert(*d) != *d {
                bail!("Einsum equation '{eq}' broadcasts axis '{ch}', which is not supported");
            }
        }
    }
    let term = |t: &[char]| -> String { t.iter().collect() };
    for k in 0..ops.len() {
        if !c.need(k) {
            continue;
        }
        let others: Vec<usize> = (0..ops.len()).filter(|j| *j != k).collect();
        for ch in &ops[k] {
            let elsewhere = out.contains(ch) || others.iter().any(|j| ops[*j].contains(ch));
            if !elsewhere {
                bail!(
                    "Einsum equation '{eq}' sums axis '{ch}' of operand {k} alone, which is not supported"
                );
            }
        }
        let mut terms = vec![term(&out)];
        terms.extend(others.iter().map(|j| term(&ops[*j])));
        let geq = format!("{}->{}", terms.join(","), term(&ops[k]));
        let mut ins = vec![c.dy];
        ins.extend(others.iter().map(|j| c.input(*j)));
        let attr = pb::AttributeProto {
            name: "equation".into(),
            r#type: 3,
            s: geq.into_bytes(),
            ..Default::default()
        };
        g[k] = Some(b.op("Einsum", &ins, vec![attr]));
    }
    Ok(())
}
