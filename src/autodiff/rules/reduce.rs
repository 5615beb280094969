//! Reductions. Each rule views the output and its gradient with the reduced axes kept
//! (size 1) and broadcasts them back over the input.

use anyhow::{bail, Result};

use super::{norm_axis, Grads, Node, OpDef};
use crate::autodiff::builder::Builder;

pub(super) const OPS: &[OpDef] = &[
    OpDef::diff("ReduceL1", 1, reduce_l1),
    OpDef::diff("ReduceL2", 1, reduce_l2),
    OpDef::diff("ReduceLogSum", 1, reduce_log_sum),
    OpDef::diff("ReduceLogSumExp", 1, reduce_log_sum_exp),
    OpDef::diff("ReduceMax", 1, reduce_max_min),
    OpDef::diff("ReduceMean", 1, reduce_sum_mean),
    OpDef::diff("ReduceMin", 1, reduce_max_min),
    OpDef::diff("ReduceProd", 1, reduce_prod),
    OpDef::diff("ReduceSum", 1, reduce_sum_mean),
    OpDef::diff("ReduceSumSquare", 1, reduce_sum_square),
];

/// The reduced axes of a Reduce* node, normalised and sorted: an input from opset 13 for
/// ReduceSum and from opset 18 for the others, an attribute before; all axes when none
/// are given, none (an empty list: y = x) when none are given and
/// `noop_with_empty_axes` is 1.
pub(super) fn reduce_axes(b: &Builder, c: &Node, rank: usize) -> Result<Vec<usize>> {
    let as_input = if c.n.op_type == "ReduceSum" { 13 } else { 18 };
    let axes = if b.opset >= as_input {
        if c.n.input.len() > 1 && !c.input(1).is_empty() {
            c.const_i64s(1, "axes")?
        } else {
            vec![]
        }
    } else {
        c.ints("axes").unwrap_or_default()
    };
    if axes.is_empty() {
        let noop = b.opset >= as_input && c.int("noop_with_empty_axes", 0) != 0;
        return Ok(if noop { vec![] } else { (0..rank).collect() });
    }
    let mut v: Vec<usize> = axes.iter().map(|a| norm_axis(*a, rank)).collect();
    v.sort_unstable();
    v.dedup();
    if let Some(a) = v.iter().find(|a| **a >= rank) {
        bail!("{} axis {a} out of range for rank {rank}", c.n.op_type);
    }
    Ok(v)
}

/// A reduction's shapes: the input's, the reduced axes, and the output's with the
/// reduced axes kept (size 1).
struct Reduction {
    xs: Vec<usize>,
    axes: Vec<usize>,
    kshape: Vec<usize>,
}

impl Reduction {
    fn of(b: &Builder, c: &Node) -> Result<Reduction> {
        let xs = c.shape(c.input(0))?.clone();
        let axes = reduce_axes(b, c, xs.len())?;
        let kshape = (0..xs.len())
            .map(|i| if axes.contains(&i) { 1 } else { xs[i] })
            .collect();
        Ok(Reduction { xs, axes, kshape })
    }

    /// The number of input elements reduced into each output element.
    fn count(&self) -> usize {
        self.axes.iter().map(|a| self.xs[*a]).product()
    }

    /// `t` (an output-shaped tensor) with the reduced axes kept.
    fn kept(&self, b: &mut Builder, c: &Node, t: &str) -> Result<String> {
        Ok(if c.shape(c.out())? == &self.kshape {
            t.to_string()
        } else {
            b.reshape(t, &self.kshape)
        })
    }

    /// `t` (with kept axes) broadcast to the input's shape (Expand from opset 8, a product
    /// with ones before).
    fn expand(&self, b: &mut Builder, t: &str) -> String {
        if b.opset < 8 {
            let ones = b.const_f32(&self.xs, vec![1.0; self.xs.iter().product()]);
            return b.mul(t, &ones);
        }
        let s = b.const_i64(&self.xs.iter().map(|d| *d as i64).collect::<Vec<_>>());
        b.op("Expand", &[t, &s], vec![])
    }

    fn axes_i64(&self) -> Vec<i64> {
        self.axes.iter().map(|a| *a as i64).collect()
    }
}

/// ReduceSum and ReduceMean: dy (over the count for the mean) broadcast back.
fn reduce_sum_mean(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let r = Reduction::of(b, c)?;
    if r.axes.is_empty() {
        g[0] = Some(c.dy.to_string());
        return Ok(());
    }
    let mut d = r.kept(b, c, c.dy)?;
    if c.n.op_type == "ReduceMean" {
        let k = b.scalar(1.0 / r.count() as f32);
        d = b.mul(&d, &k);
    }
    g[0] = Some(r.expand(b, &d));
    Ok(())
}

/// The noop form (no axes, `noop_with_empty_axes`) of reductions whose output is then a
/// function of x: refused rather than guessed.
fn refuse_noop(c: &Node, r: &Reduction) -> Result<()> {
    if r.axes.is_empty() {
        bail!(
            "{} with no axes and noop_with_empty_axes=1 has no backward rule",
            c.n.op_type
        );
    }
    Ok(())
}

/// ReduceMax and ReduceMin: the gradient goes to the entries equal to the output, shared
/// equally among ties (as MaxPool's rule does), so that it sums to dy.
fn reduce_max_min(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let r = Reduction::of(b, c)?;
    if r.axes.is_empty() {
        g[0] = Some(c.dy.to_string());
        return Ok(());
    }
    let yk = r.kept(b, c, c.out())?;
    let dk = r.kept(b, c, c.dy)?;
    let eq = b.equal(c.input(0), &yk);
    let m = b.as_float(&eq);
    let n = b.reduce_sum(&m, &r.axes_i64(), true);
    let share = b.div(&dk, &n);
    g[0] = Some(b.mul(&m, &share));
    Ok(())
}

/// ReduceSumSquare: 2 x dy.
fn reduce_sum_square(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let r = Reduction::of(b, c)?;
    refuse_noop(c, &r)?;
    let dk = r.kept(b, c, c.dy)?;
    let two = b.scalar(2.0);
    let d = b.mul(&dk, &two);
    g[0] = Some(b.mul(c.input(0), &d));
    Ok(())
}

/// ReduceL1: sign(x) dy.
fn reduce_l1(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let r = Reduction::of(b, c)?;
    refuse_noop(c, &r)?;
    let dk = r.kept(b, c, c.dy)?;
    let s = b.op("Sign", &[c.input(0)], vec![]);
    g[0] = Some(b.mul(&s, &dk));
    Ok(())
}

/// ReduceL2, from the output: x dy / y (0 where y = 0, where all of x is 0).
fn reduce_l2(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let r = Reduction::of(b, c)?;
    refuse_noop(c, &r)?;
    let yk = r.kept(b, c, c.out())?;
    let dk = r.kept(b, c, c.dy)?;
    let tiny = b.scalar(1e-30);
    let safe = b.op("Max", &[&yk, &tiny], vec![]);
    let q = b.div(&dk, &safe);
    g[0] = Some(b.mul(c.input(0), &q));
    Ok(())
}

/// ReduceLogSumExp, from the output: exp(x - y) dy (the softmax over the reduced axes).
fn reduce_log_sum_exp(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let r = Reduction::of(b, c)?;
    refuse_noop(c, &r)?;
    let yk = r.kept(b, c, c.out())?;
    let dk = r.kept(b, c, c.dy)?;
    let t = b.sub(c.input(0), &yk);
    let p = b.op("Exp", &[&t], vec![]);
    g[0] = Some(b.mul(&p, &dk));
    Ok(())
}

/// ReduceLogSum, from the output: dy / sum(x) = dy exp(-y), broadcast back.
fn reduce_log_sum(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let r = Reduction::of(b, c)?;
    refuse_noop(c, &r)?;
    let yk = r.kept(b, c, c.out())?;
    let dk = r.kept(b, c, c.dy)?;
    let ny = b.neg(&yk);
    let e = b.op("Exp", &[&ny], vec![]);
    let d = b.mul(&dk, &e);
    g[0] = Some(r.expand(b, &d));
    Ok(())
}

/// ReduceProd: the product of the other entries, dy prod_{j != i} x_j, exact where x has
/// zeros: with p the product of the non-zero entries and z the count of zeros (over the
/// reduced axes), the gradient is p / x_i where z = 0, p at the one zero where z = 1,
/// and 0 elsewhere (never y / x_i, which is 0/0 at a zero).
fn reduce_prod(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let r = Reduction::of(b, c)?;
    if r.axes.is_empty() {
        g[0] = Some(c.dy.to_string());
        return Ok(());
    }
    let x = c.input(0);
    let zero = b.scalar(0.0);
    let one = b.scalar(1.0);
    let is_zero = b.equal(x, &zero);
    let zf = b.as_float(&is_zero);
    // x with its zeros replaced by ones.
    let nonzero = b.add(x, &zf);
    let axes = r.axes_i64();
    let p = b.reduce("ReduceProd", &nonzero, &axes, true);
    let zeros = b.reduce_sum(&zf, &axes, true);
    let none = b.equal(&zeros, &zero);
    let single = b.equal(&zeros, &one);
    // [z = 0] / x  +  [z = 1] [x = 0]
    let inv = b.div(&one, &nonzero);
    let a = b.select(&none, &inv);
    let s = b.select(&single, &zf);
    let factor = b.add(&a, &s);
    let dk = r.kept(b, c, c.dy)?;
    let pd = b.mul(&p, &dk);
    g[0] = Some(b.mul(&factor, &pd));
    Ok(())
}
