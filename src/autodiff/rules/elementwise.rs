//! Elementwise arithmetic and activations.

use anyhow::{anyhow, Result};

use super::{norm_axis, Grads, Node, OpDef};
use crate::autodiff::builder::Builder;

pub(super) const OPS: &[OpDef] = &[
    OpDef::diff("Add", 2, add_sub),
    OpDef::diff("Ceil", 1, piecewise_constant),
    OpDef::diff("Clip", 1, clip),
    OpDef::diff("Div", 2, div),
    OpDef::diff("Dropout", 1, identity),
    OpDef::diff("Floor", 1, piecewise_constant),
    OpDef::diff("Identity", 1, identity),
    OpDef::diff("LeakyRelu", 1, leaky_relu),
    OpDef::diff("LogSoftmax", 1, softmax),
    OpDef::diff("Mul", 2, mul),
    OpDef::diff("PRelu", 2, leaky_relu),
    OpDef::diff("Relu", 1, relu),
    OpDef::diff("Round", 1, piecewise_constant),
    OpDef::diff("Sigmoid", 1, sigmoid),
    OpDef::diff("Softmax", 1, softmax),
    OpDef::diff("Sub", 2, add_sub),
    OpDef::diff("Tanh", 1, tanh),
];

/// Identity, Dropout (inference): the gradient passes unchanged.
pub(super) fn identity(_: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    g[0] = Some(c.dy.to_string());
    Ok(())
}

/// Round, Floor, Ceil: piecewise constant, so the derivative is zero wherever it exists.
/// (This is the gradient masking harden's sanity checks look for.)
fn piecewise_constant(_: &mut Builder, _: &Node, _: &mut Grads) -> Result<()> {
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
