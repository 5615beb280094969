//! Reductions.

use anyhow::Result;

use super::{norm_axis, Grads, Node, OpDef};
use crate::autodiff::builder::Builder;

pub(super) const OPS: &[OpDef] = &[OpDef::diff("ReduceMean", 1, reduce_mean)];

/// The reduced axes of a Reduce* node (an input from opset 18, an attribute before),
/// normalised; all axes when none are given.
pub(super) fn reduce_axes(b: &Builder, c: &Node, rank: usize) -> anyhow::Result<Vec<usize>> {
    let axes = if b.opset >= 18 && c.n.input.len() > 1 && !c.input(1).is_empty() {
        c.const_i64s(1, "axes")?
    } else {
        c.ints("axes").unwrap_or_else(|| (0..rank as i64).collect())
    };
    Ok(axes.iter().map(|a| norm_axis(*a, rank)).collect())
}

fn reduce_mean(b: &mut Builder, c: &Node, g: &mut Grads) -> Result<()> {
    let xs = c.shape(c.input(0))?;
    let r = xs.len();
    let axes = reduce_axes(b, c, r)?;
    let kshape: Vec<usize> = (0..r)
        .map(|i| if axes.contains(&i) { 1 } else { xs[i] })
        .collect();
    let count: usize = axes.iter().map(|a| xs[*a]).product();
    let dk = b.reshape(c.dy, &kshape);
    let ones = b.const_f32(xs, vec![1.0 / count as f32; xs.iter().product()]);
    g[0] = Some(b.mul(&dk, &ones));
    Ok(())
}
