//! Elementwise arithmetic and activations.

use anyhow::{anyhow, bail, Result};

use super::fused::{Fused, View};
use super::{norm_axis, Grads, Node, OpDef};
use crate::autodiff::builder::{attr_int, Builder};
use crate::autodiff::Shapes;

pub(super) const OPS: &[OpDef] = &[
    OpDef::diff("Abs", 1, abs),
    OpDef::diff("Add", 2, add_sub),
    OpDef::diff("Celu", 1, celu),
    OpDef::diff("Clip", 1, clip),
    OpDef::diff("Cos", 1, cos),
    OpDef::diff("Div", 2, div),
    OpDef::diff("Dropout", 1, identity),
    OpDef::diff("Elu", 1, elu_selu),
    OpDef::diff("Erf", 1, erf),
    OpDef::diff("Exp", 1, exp),
    OpDef::diff("Gelu", 1, gelu),
    OpDef::diff("HardSigmoid", 1, hard_sigmoid),
    OpDef::diff("HardSwish", 1, hard_swish),
    OpDef::diff("Identity", 1, identity),
    OpDef::diff("LeakyRelu", 1, leaky_relu),
    OpDef::diff("Log", 1, log),
    OpDef::diff("LogSoftmax", 1, softmax),
    OpDef::diff("Max", 1, min_max),
    OpDef::diff("Mean", 1, sum_mean),
    OpDef::diff("Min", 1, min_max),
    OpDef::diff("Mish", 1, mish),
    OpDef::diff("Mul", 2, mul),
    OpDef::diff("Neg", 1, neg),
    OpDef::diff("Pow", 2, pow),
    OpDef::diff("PRelu", 2, leaky_relu),
    OpDef::diff("Reciprocal", 1, reciprocal),
    OpDef::diff("Relu", 1, relu),
    OpDef::diff("Selu", 1, elu_selu),
    OpDef::diff("Sigmoid", 1, sigmoid),
    OpDef::diff("Sin", 1, sin),
    OpDef::diff("Softmax", 1, softmax),
    OpDef::diff("Softplus", 1, softplus),
    OpDef::diff("Softsign", 1, softsign),
    OpDef::diff("Sqrt", 1, sqrt),
    OpDef::diff("Sub", 2, add_sub),
    OpDef::diff("Sum", 1, sum_mean),
    OpDef::diff("Tanh", 1, tanh),
];

/// Identity, Dropout (inference): the gradient passes unchanged.
pub(super) fn identity(_: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    g[0] = Some(c.dy.to_string());
    Ok(())
}

fn add_sub(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let ys = c.shape(c.out())?;
    if c.need(0) {
        g[0] = Some(b.unbroadcast(c.dy, ys, c.shape(c.input(0))?));
    }
    if c.need(1) {
        let d = if c.n.op_type == "Sub" {
            b.neg(c.dy)
        } else {
            c.dy.to_string()
        };
        g[1] = Some(b.unbroadcast(&d, ys, c.shape(c.input(1))?));
    }
    Ok(())
}

fn mul(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let ys = c.shape(c.out())?;
    if c.need(0) {
        let d = b.mul(c.dy, c.input(1));
        g[0] = Some(b.unbroadcast(&d, ys, c.shape(c.input(0))?));
    }
    if c.need(1) {
        let d = b.mul(c.dy, c.input(0));
        g[1] = Some(b.unbroadcast(&d, ys, c.shape(c.input(1))?));
    }
    Ok(())
}

fn div(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let ys = c.shape(c.out())?;
    if c.need(0) {
        let d = b.div(c.dy, c.input(1));
        g[0] = Some(b.unbroadcast(&d, ys, c.shape(c.input(0))?));
    }
    if c.need(1) {
        let q = b.div(c.out(), c.input(1));
        let d = b.mul(c.dy, &q);
        let d = b.neg(&d);
        g[1] = Some(b.unbroadcast(&d, ys, c.shape(c.input(1))?));
    }
    Ok(())
}

fn relu(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    g[0] = Some(
        match super::pooling::relu_into_pool(b, c.out(), c.dy, c.shapes)? {
            Some(dx) => dx,
            None => {
                // The mask from the output (y > 0 exactly where x > 0), so that the
                // runtime may fuse the Relu into the op before it.
                let z = b.scalar(0.0);
                let m = b.op("Greater", &[c.out(), &z], vec![]);
                b.select(&m, c.dy)
            }
        },
    );
    Ok(())
}

/// LeakyRelu and PRelu (whose slope, input 1, may be trained).
fn leaky_relu(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let z = b.scalar(0.0);
    let m = b.op("Greater", &[c.input(0), &z], vec![]);
    let slope = if c.n.op_type == "LeakyRelu" {
        b.scalar(c.float("alpha", 0.01))
    } else {
        c.input(1).to_string()
    };
    let mf = b.as_float(&m);
    // dy * (m + (1 - m) * slope)
    let one = b.scalar(1.0);
    let inv = b.sub(&one, &mf);
    let s = b.mul(&inv, &slope);
    let f = b.add(&mf, &s);
    g[0] = Some(b.mul(c.dy, &f));
    if c.n.op_type == "PRelu" && c.need(1) {
        let d = b.mul(c.dy, c.input(0));
        let d = b.mul(&d, &inv);
        g[1] = Some(b.unbroadcast(&d, c.shape(c.out())?, c.shape(c.input(1))?));
    }
    Ok(())
}

fn sigmoid(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let one = b.scalar(1.0);
    let om = b.sub(&one, c.out());
    let d = b.mul(c.out(), &om);
    g[0] = Some(b.mul(c.dy, &d));
    Ok(())
}

fn tanh(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let one = b.scalar(1.0);
    let y2 = b.mul(c.out(), c.out());
    let d = b.sub(&one, &y2);
    g[0] = Some(b.mul(c.dy, &d));
    Ok(())
}

fn clip(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let (lo, hi) = if b.opset >= 11 {
        let read = |i: usize| -> Result<Option<f32>> {
            match c.n.input.get(i).filter(|s| !s.is_empty()) {
                None => Ok(None),
                Some(name) => c
                    .consts
                    .f32s(name)
                    .and_then(|v| v.first().copied())
                    .map(Some)
                    .ok_or_else(|| anyhow!("Clip bound '{name}' is not a constant")),
            }
        };
        (read(1)?, read(2)?)
    } else {
        let f = |name: &str| super::attr(c.n, name).map(|a| a.f);
        (f("min"), f("max"))
    };
    let mut mask: Option<String> = None;
    if let Some(lo) = lo {
        let k = b.scalar(lo);
        mask = Some(b.op("Greater", &[c.input(0), &k], vec![]));
    }
    if let Some(hi) = hi {
        let k = b.scalar(hi);
        let m = b.op("Less", &[c.input(0), &k], vec![]);
        mask = Some(match mask {
            Some(prev) => b.op("And", &[&prev, &m], vec![]),
            None => m,
        });
    }
    g[0] = Some(match mask {
        Some(m) => b.select(&m, c.dy),
        None => c.dy.to_string(),
    });
    Ok(())
}

/// Softmax and LogSoftmax.
fn softmax(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let rank = c.shape(c.out())?.len();
    let default_axis = if b.opset >= 13 { -1 } else { 1 };
    let axis = norm_axis(c.int("axis", default_axis), rank);
    // Before opset 13 the input is coerced to 2-D at `axis`.
    let axes: Vec<i64> = if b.opset >= 13 {
        vec![axis as i64]
    } else {
        (axis..rank).map(|a| a as i64).collect()
    };
    let (dy, out) = (c.dy, c.out());
    if c.n.op_type == "Softmax" {
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
    Ok(())
}

/// `dy * d`, the chain rule of a unary op whose derivative is `d`.
fn chain(b: &mut Builder, c: &Node, d: &str, g: &mut Grads) {
    g[0] = Some(b.mul(c.dy, d));
}

/// `x * k` for a constant `k`.
fn times(b: &mut Builder, x: &str, k: f32) -> String {
    let s = b.scalar(k);
    b.mul(x, &s)
}

/// `x + k` for a constant `k`.
fn plus(b: &mut Builder, x: &str, k: f32) -> String {
    let s = b.scalar(k);
    b.add(x, &s)
}

/// `x > k` for a constant `k` (boolean).
fn above(b: &mut Builder, x: &str, k: f32) -> String {
    let s = b.scalar(k);
    b.op("Greater", &[x, &s], vec![])
}

fn neg(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    g[0] = Some(b.neg(c.dy));
    Ok(())
}

/// Abs: `dy * sign(x)` (0 at x = 0, a subgradient).
fn abs(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let s = b.op("Sign", &[c.input(0)], vec![]);
    chain(b, c, &s, g);
    Ok(())
}

/// Exp: `dy * y`.
fn exp(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    chain(b, c, c.out(), g);
    Ok(())
}

/// Log: `dy / x`.
fn log(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    g[0] = Some(b.div(c.dy, c.input(0)));
    Ok(())
}

/// Sqrt, from the output: `dy * 0.5 / y`.
fn sqrt(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let d = b.div(c.dy, c.out());
    g[0] = Some(times(b, &d, 0.5));
    Ok(())
}

/// Reciprocal, from the output: `-dy * y^2`.
fn reciprocal(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let y2 = b.mul(c.out(), c.out());
    let d = b.mul(c.dy, &y2);
    g[0] = Some(b.neg(&d));
    Ok(())
}

fn sin(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let d = b.op("Cos", &[c.input(0)], vec![]);
    chain(b, c, &d, g);
    Ok(())
}

fn cos(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let s = b.op("Sin", &[c.input(0)], vec![]);
    let d = b.mul(c.dy, &s);
    g[0] = Some(b.neg(&d));
    Ok(())
}

/// Erf: `dy * 2/sqrt(pi) * exp(-x^2)`.
fn erf(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let x = c.input(0);
    let x2 = b.mul(x, x);
    let t = times(b, &x2, -1.0);
    let e = b.op("Exp", &[&t], vec![]);
    let d = times(b, &e, std::f32::consts::FRAC_2_SQRT_PI);
    chain(b, c, &d, g);
    Ok(())
}

/// Gelu (opset 20). `approximate="none"`: y = x Phi(x), y' = Phi(x) + x phi(x) with
/// Phi(x) = (1 + erf(x / sqrt 2)) / 2 and phi(x) = exp(-x^2 / 2) / sqrt(2 pi), computed as
/// for the exporters' chain (`gelu_erf_backward`).
/// `approximate="tanh"`: y = x (1 + t) / 2 with t = tanh(u), u = sqrt(2/pi) (x + 0.044715 x^3),
/// y' = (1 + t) / 2 + x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2) / 2.
fn gelu(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let x = c.input(0);
    let d = match c.string("approximate").as_deref().unwrap_or("none") {
        "none" => {
            let a = times(b, x, std::f32::consts::FRAC_1_SQRT_2);
            let e = b.op("Erf", &[&a], vec![]);
            let e1 = plus(b, &e, 1.0);
            let dx = gelu_erf_backward(b, c.dy, x, &a, &e1, 0.5, std::f32::consts::FRAC_1_SQRT_2);
            g[0] = Some(dx);
            return Ok(());
        }
        "tanh" => {
            const K: f32 = 0.797_884_6; // sqrt(2 / pi)
            const A: f32 = 0.044_715;
            let x2 = b.mul(x, x);
            let poly = times(b, &x2, A);
            let poly = plus(b, &poly, 1.0);
            let xp = b.mul(x, &poly);
            let u = times(b, &xp, K);
            let t = b.op("Tanh", &[&u], vec![]);
            let t1 = plus(b, &t, 1.0);
            let first = times(b, &t1, 0.5);
            let t2 = b.mul(&t, &t);
            let one = b.scalar(1.0);
            let sech2 = b.sub(&one, &t2);
            let du = times(b, &x2, 3.0 * A);
            let du = plus(b, &du, 1.0);
            let du = times(b, &du, 0.5 * K);
            let s = b.mul(&sech2, &du);
            let second = b.mul(x, &s);
            b.add(&first, &second)
        }
        other => bail!("Gelu approximate=\"{other}\" is not an ONNX mode (none or tanh)"),
    };
    chain(b, c, &d, g);
    Ok(())
}

/// The gradient through y = m x e1 with e1 = k + erf(a), a = x * inv_c (the erf GELU as
/// exporters write it: m = 1/2, k = 1, inv_c = 1/sqrt 2), from the forward's own a and
/// e1: dx = dy (e1 + x C exp(-a^2)) m with C = inv_c 2/sqrt(pi), C exp(-a^2) as
/// exp(ln C - a^2). The factor m comes last, on its own: ONNX Runtime folds a scalar
/// factor into the MatMul that takes the gradient next (the Linear before the GELU).
fn gelu_erf_backward(
    b: &mut Builder,
    dy: &str,
    x: &str,
    a: &str,
    e1: &str,
    m: f32,
    inv_c: f32,
) -> String {
    let coef = inv_c * std::f32::consts::FRAC_2_SQRT_PI;
    let s = b.mul(a, a);
    let t = if coef > 0.0 {
        let ln = b.scalar(coef.ln());
        let u = b.sub(&ln, &s);
        let p = b.op("Exp", &[&u], vec![]);
        b.mul(x, &p)
    } else {
        let u = b.neg(&s);
        let p = b.op("Exp", &[&u], vec![]);
        let t = b.mul(x, &p);
        times(b, &t, coef)
    };
    let d = b.add(e1, &t);
    let g = b.mul(dy, &d);
    if m == 1.0 {
        g
    } else {
        times(b, &g, m)
    }
}

/// The erf GELU as exporters write it, anchored at its Erf: a = x / c (or x * c'),
/// e = Erf(a), e1 = e + k, then y = (x e1) m, (x m) e1, or x e1 (m = 1), with scalar
/// constants c, k, m (see `fused.rs`). Its rule: `gelu_erf_fused`.
pub(super) fn match_gelu_erf(v: &View, i: usize) -> Option<Fused> {
    let erf = v.node(i);
    if erf.op_type != "Erf" || erf.input.len() != 1 || erf.output.len() != 1 {
        return None;
    }
    let (a, e) = (erf.input[0].as_str(), erf.output[0].as_str());
    if v.uses(a) != 1 {
        return None;
    }
    let ia = v.made_by(a, "Div").or_else(|| v.made_by(a, "Mul"))?;
    let na = v.node(ia);
    if na.input.len() != 2 {
        return None;
    }
    let (x, inv_c) = if na.op_type == "Div" {
        (na.input[0].as_str(), 1.0 / v.scalar(&na.input[1])?)
    } else if let Some(k) = v.scalar(&na.input[1]) {
        (na.input[0].as_str(), k)
    } else {
        (na.input[1].as_str(), v.scalar(&na.input[0])?)
    };
    if v.consts.is_const(x) || !inv_c.is_finite() {
        return None;
    }
    let ie1 = v.sole_reader(e).filter(|&j| v.node(j).op_type == "Add")?;
    v.scalar(v.other(ie1, e)?)?;
    let e1 = v.node(ie1).output.first()?.as_str();
    let im = v.sole_reader(e1).filter(|&j| v.node(j).op_type == "Mul")?;
    let other = v.other(im, e1)?;
    let m_out = v.node(im).output.first()?.as_str();
    let (mut nodes, m) = if other == x {
        // (x e1) m, or x e1.
        match v.sole_reader(m_out).filter(|&j| v.node(j).op_type == "Mul") {
            Some(j) => match v.other(j, m_out).and_then(|h| v.scalar(h)) {
                Some(m) => (vec![ia, i, ie1, im, j], m),
                None => (vec![ia, i, ie1, im], 1.0),
            },
            None => (vec![ia, i, ie1, im], 1.0),
        }
    } else {
        // (x m) e1.
        let ih = v.made_by(other, "Mul")?;
        if v.uses(other) != 1 || v.other(ih, x).is_none() {
            return None;
        }
        let m = v.scalar(v.other(ih, x)?)?;
        (vec![ia, ih, i, ie1, im], m)
    };
    nodes.sort_unstable();
    Some(Fused {
        pattern: "gelu",
        nodes,
        inputs: vec![x.to_string()],
        tensors: vec![x.to_string(), a.to_string(), e1.to_string()],
        values: vec![m, inv_c],
        axes: vec![],
        rule: gelu_erf_fused,
    })
}

fn gelu_erf_fused(
    b: &mut Builder,
    f: &Fused,
    dy: &str,
    needs: &[bool],
    _: &Shapes,
) -> Result<Vec<Option<String>>> {
    if !needs.first().copied().unwrap_or(false) {
        return Ok(vec![None]);
    }
    let [x, a, e1] = &f.tensors[..] else {
        bail!("malformed GELU subgraph");
    };
    Ok(vec![Some(gelu_erf_backward(
        b,
        dy,
        x,
        a,
        e1,
        f.values[0],
        f.values[1],
    ))])
}

/// SiLU (Swish) as exporters write it: s = Sigmoid(x), y = x s (either order). Its rule,
/// from the forward's s and y: dx = dy (s + y (1 - s)).
pub(super) fn match_silu(v: &View, i: usize) -> Option<Fused> {
    let n = v.node(i);
    if n.op_type != "Sigmoid" || n.input.len() != 1 || n.output.len() != 1 {
        return None;
    }
    let (x, s) = (n.input[0].as_str(), n.output[0].as_str());
    let im = v.sole_reader(s).filter(|&j| v.node(j).op_type == "Mul")?;
    if v.other(im, s)? != x {
        return None;
    }
    let y = v.node(im).output.first()?;
    Some(Fused {
        pattern: "silu",
        nodes: vec![i, im],
        inputs: vec![x.to_string()],
        tensors: vec![s.to_string(), y.clone()],
        values: vec![],
        axes: vec![],
        rule: silu_fused,
    })
}

fn silu_fused(
    b: &mut Builder,
    f: &Fused,
    dy: &str,
    needs: &[bool],
    _: &Shapes,
) -> Result<Vec<Option<String>>> {
    if !needs.first().copied().unwrap_or(false) {
        return Ok(vec![None]);
    }
    let [s, y] = &f.tensors[..] else {
        bail!("malformed SiLU subgraph");
    };
    let one = b.scalar(1.0);
    let om = b.sub(&one, s);
    let t = b.mul(y, &om);
    let d = b.add(s, &t);
    Ok(vec![Some(b.mul(dy, &d))])
}

/// HardSigmoid: y = max(0, min(1, alpha x + beta)); y' = alpha where 0 < y < 1, else 0
/// (the mask from the output).
fn hard_sigmoid(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let alpha = c.float("alpha", 0.2);
    let y = c.out();
    let lo = above(b, y, 0.0);
    let one = b.scalar(1.0);
    let hi = b.op("Less", &[y, &one], vec![]);
    let m = b.op("And", &[&lo, &hi], vec![]);
    let d = times(b, c.dy, alpha);
    g[0] = Some(b.select(&m, &d));
    Ok(())
}

/// HardSwish: y = x max(0, min(1, x / 6 + 1/2)); y' = 0 for x <= -3, x / 3 + 1/2 for
/// -3 < x < 3, 1 for x >= 3 (opset 14).
fn hard_swish(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let x = c.input(0);
    let lin = times(b, x, 1.0 / 3.0);
    let lin = plus(b, &lin, 0.5);
    let lo = above(b, x, -3.0);
    let mid = b.select(&lo, &lin);
    let three = b.scalar(3.0);
    let hi = b.op("Less", &[x, &three], vec![]);
    let one = b.scalar(1.0);
    let d = b.op("Where", &[&hi, &mid, &one], vec![]);
    chain(b, c, &d, g);
    Ok(())
}

/// Softplus: y = ln(1 + e^x), y' = sigmoid(x).
fn softplus(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let s = b.op("Sigmoid", &[c.input(0)], vec![]);
    chain(b, c, &s, g);
    Ok(())
}

/// Softsign: y = x / (1 + |x|), y' = 1 / (1 + |x|)^2.
fn softsign(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let a = b.op("Abs", &[c.input(0)], vec![]);
    let a1 = plus(b, &a, 1.0);
    let a2 = b.mul(&a1, &a1);
    g[0] = Some(b.div(c.dy, &a2));
    Ok(())
}

/// Elu (y = alpha (e^x - 1) for x <= 0) and Selu (y = gamma alpha (e^x - 1) for x <= 0,
/// gamma x above): y' = gamma above 0, y + gamma alpha below (gamma = 1 for Elu).
fn elu_selu(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let (alpha, gamma) = if c.n.op_type == "Selu" {
        (c.float("alpha", 1.673_263_2), c.float("gamma", 1.050_701))
    } else {
        (c.float("alpha", 1.0), 1.0)
    };
    let below = plus(b, c.out(), gamma * alpha);
    let d = above_or(b, c.input(0), gamma, &below);
    chain(b, c, &d, g);
    Ok(())
}

/// `k` where x > 0, else `below`, as below + [x > 0] (k - below): Where needs opset 9,
/// Elu and Selu are older.
fn above_or(b: &mut Builder, x: &str, k: f32, below: &str) -> String {
    let pos = above(b, x, 0.0);
    let m = b.as_float(&pos);
    let kk = b.scalar(k);
    let diff = b.sub(&kk, below);
    let t = b.mul(&m, &diff);
    b.add(below, &t)
}

/// Celu: y = max(0, x) + min(0, alpha (e^(x / alpha) - 1)); y' = 1 above 0,
/// e^(x / alpha) = y / alpha + 1 below (opset 12).
fn celu(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let alpha = c.float("alpha", 1.0);
    let below = times(b, c.out(), 1.0 / alpha);
    let below = plus(b, &below, 1.0);
    let d = above_or(b, c.input(0), 1.0, &below);
    chain(b, c, &d, g);
    Ok(())
}

/// Mish: y = x tanh(softplus(x)); y' = t + x (1 - t^2) sigmoid(x), t = tanh(softplus(x))
/// (recomputed: y / x fails at 0) (opset 18).
fn mish(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let x = c.input(0);
    let sp = b.op("Softplus", &[x], vec![]);
    let t = b.op("Tanh", &[&sp], vec![]);
    let t2 = b.mul(&t, &t);
    let one = b.scalar(1.0);
    let sech2 = b.sub(&one, &t2);
    let s = b.op("Sigmoid", &[x], vec![]);
    let xs = b.mul(x, &s);
    let second = b.mul(&xs, &sech2);
    let d = b.add(&t, &second);
    chain(b, c, &d, g);
    Ok(())
}

/// The values of constant input `i` as floats (float or integer tensors).
fn const_floats(c: &Node, i: usize) -> Option<Vec<f32>> {
    let name = c.input(i);
    c.consts.f32s(name).or_else(|| {
        c.consts
            .i64s(name)
            .map(|v| v.iter().map(|x| *x as f32).collect())
    })
}

/// Pow: y = a^e. Base: dy * e * a^(e - 1), with e - 1 folded when the exponent is a
/// constant (`e = 2`, the hand-written normalisations' square, is `2 a`; `e = 1` is dy).
/// Exponent: dy * y * ln(a) (defined for a > 0). Broadcasting either way is summed back.
fn pow(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let (a, e) = (c.input(0), c.input(1));
    let ys = c.shape(c.out())?;
    if c.need(0) {
        let d = match const_floats(c, 1) {
            Some(v) if v.len() == 1 && v[0] == 1.0 => c.dy.to_string(),
            Some(v) if v.len() == 1 && v[0] == 2.0 => {
                let t = times(b, a, 2.0);
                b.mul(c.dy, &t)
            }
            Some(v) => {
                let es = c.shape(e)?.clone();
                let em1 = b.const_f32(&es, v.iter().map(|x| x - 1.0).collect());
                let p = b.op("Pow", &[a, &em1], vec![]);
                let ec = b.const_f32(&es, v);
                let d = b.mul(&p, &ec);
                b.mul(c.dy, &d)
            }
            None => {
                // The exponent may be an integer tensor (opset 12+): as floats.
                let ef = b.op("Cast", &[e], vec![attr_int("to", 1)]);
                let em1 = plus(b, &ef, -1.0);
                let p = b.op("Pow", &[a, &em1], vec![]);
                let d = b.mul(&p, &ef);
                b.mul(c.dy, &d)
            }
        };
        g[0] = Some(b.unbroadcast(&d, ys, c.shape(a)?));
    }
    if c.need(1) {
        let l = b.op("Log", &[a], vec![]);
        let d = b.mul(c.out(), &l);
        let d = b.mul(c.dy, &d);
        g[1] = Some(b.unbroadcast(&d, ys, c.shape(e)?));
    }
    Ok(())
}

/// Sum and Mean (variadic, broadcasting): each input gets dy (over n for Mean), summed
/// back over the axes it was broadcast along.
fn sum_mean(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let ys = c.shape(c.out())?;
    let n = c.n.input.len();
    let d = if c.n.op_type == "Mean" && n > 1 {
        times(b, c.dy, 1.0 / n as f32)
    } else {
        c.dy.to_string()
    };
    for (i, gi) in g.iter_mut().enumerate().take(n) {
        if c.need(i) {
            *gi = Some(b.unbroadcast(&d, ys, c.shape(c.input(i))?));
        }
    }
    Ok(())
}

/// Min and Max (variadic, broadcasting): the gradient goes to the input equal to the
/// output; among tied inputs, to the first one only (the masks of all inputs sum to
/// exactly 1, so a tie neither doubles nor loses the gradient).
fn min_max(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let ys = c.shape(c.out())?;
    let n = c.n.input.len();
    let last_needed = (0..n).rev().find(|&i| c.need(i));
    let Some(last_needed) = last_needed else {
        return Ok(());
    };
    // Inputs before i that equal the output (taken).
    let mut taken: Option<String> = None;
    for (i, gi) in g.iter_mut().enumerate().take(last_needed + 1) {
        let x = c.input(i);
        let mask = if i + 1 == n {
            // The last input gets what no earlier one took.
            taken.as_ref().map(|t| b.op("Not", &[t], vec![]))
        } else {
            let eq = b.equal(x, c.out());
            let m = match &taken {
                Some(t) => {
                    let nt = b.op("Not", &[t], vec![]);
                    b.op("And", &[&eq, &nt], vec![])
                }
                None => eq.clone(),
            };
            if i < last_needed {
                taken = Some(match &taken {
                    Some(t) => b.op("Or", &[t, &eq], vec![]),
                    None => eq,
                });
            }
            Some(m)
        };
        if c.need(i) {
            let d = match mask {
                Some(m) => b.select(&m, c.dy),
                None => c.dy.to_string(),
            };
            *gi = Some(b.unbroadcast(&d, ys, c.shape(x)?));
        }
    }
    Ok(())
}
