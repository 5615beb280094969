//! Normalisation layers in inference form.

use anyhow::{anyhow, bail, Result};

use super::{Grads, Node, OpDef};
use crate::autodiff::builder::Builder;

pub(super) const OPS: &[OpDef] = &[OpDef::diff("BatchNormalization", 5, batch_norm)];

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
