//! Loss heads: the per-example loss on logits z [B,K] and dLoss/dz in closed form, built
//! as graph nodes. `harden_a` is the label one-hot (or target one-hot, probabilities,
//! coefficients), `harden_b` the target one-hot of targeted DLR. All losses are
//! maximised by attacks.

use anyhow::Result;

use super::builder::{attr_int, Builder};
use super::{HEAD_A, HEAD_B};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// -log softmax(z)_y.
    CrossEntropy,
    /// log softmax(z)_t (targeted: climb towards the target).
    TargetedCrossEntropy,
    /// C&W margin max_{j!=y} z_j - z_y.
    Margin,
    /// DLR: -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3).
    Dlr,
    /// Targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).
    DlrTargeted,
    /// KL(q || softmax(z)) to given probabilities q.
    Kl,
    /// sum_j c_j z_j with given coefficients.
    Linear,
}

impl LossKind {
    /// How many [B,K] inputs the head takes.
    pub fn head_inputs(self) -> usize {
        match self {
            LossKind::DlrTargeted => 2,
            _ => 1,
        }
    }

    pub fn min_classes(self) -> usize {
        match self {
            LossKind::Dlr => 3,
            LossKind::DlrTargeted => 4,
            _ => 2,
        }
    }
}

/// Emits the head on `z`; returns (loss [B], dLoss/dz [B,K]).
pub fn seed(
    b: &mut Builder,
    kind: LossKind,
    z: &str,
    batch: usize,
    k: usize,
) -> Result<(String, String)> {
    if k < kind.min_classes() {
        anyhow::bail!(
            "the {kind:?} loss needs at least {} classes; the model has {k}",
            kind.min_classes()
        );
    }
    let a = HEAD_A;
    let axis1 = || vec![attr_int("axis", 1)];
    let per_example = |b: &mut Builder, t: &str| b.reshape(t, &[batch]);
    Ok(match kind {
        LossKind::CrossEntropy | LossKind::TargetedCrossEntropy | LossKind::Kl => {
            let lsm = b.op("LogSoftmax", &[z], axis1());
            let p = b.op("Softmax", &[z], axis1());
            let ql = b.mul(a, &lsm);
            let s = b.reduce_sum(&ql, &[1], false);
            match kind {
                LossKind::CrossEntropy => (b.neg(&s), b.sub(&p, a)),
                LossKind::TargetedCrossEntropy => (s, b.sub(a, &p)),
                _ => {
                    // KL = sum q log q - sum q log p (0 log 0 = 0).
                    let tiny = b.scalar(1e-30);
                    let qt = b.add(a, &tiny);
                    let lq = b.op("Log", &[&qt], vec![]);
                    let qlq = b.mul(a, &lq);
                    let ent = b.reduce_sum(&qlq, &[1], false);
                    (b.sub(&ent, &s), b.sub(&p, a))
                }
            }
        }
        LossKind::Linear => {
            let az = b.mul(a, z);
            (b.reduce_sum(&az, &[1], false), a.to_string())
        }
        LossKind::Margin | LossKind::Dlr | LossKind::DlrTargeted => {
            // Best other class: max of z with the label pushed far down.
            let big = b.scalar(1e9);
            let shift = b.mul(a, &big);
            let other = b.sub(z, &shift);
            let m = b.reduce_max(&other, &[1], true);
            let za = b.mul(z, a);
            let zy = b.reduce_sum(&za, &[1], true);
            let lt = b.op("Less", &[&other, &m], vec![]);
            let ge = b.op("Not", &[&lt], vec![]);
            let oh_j = b.as_float(&ge);
            match kind {
                LossKind::Margin => {
                    let l = b.sub(&m, &zy);
                    (per_example(b, &l), b.sub(&oh_j, a))
                }
                LossKind::Dlr => {
                    let top = b.topk_values(z, 3)?;
                    let v1 = b.slice(&top, &[0], &[1], &[1]);
                    let v3 = b.slice(&top, &[2], &[3], &[1]);
                    let oh1 = onehot_ge(b, z, &v1);
                    let oh3 = b.equal(z, &v3);
                    let oh3 = b.as_float(&oh3);
                    let num = b.sub(&zy, &m);
                    dlr(b, batch, &num, &v1, &v3, None, a, &oh_j, &oh1, &oh3, None)
                }
                _ => {
                    let t = HEAD_B;
                    let top = b.topk_values(z, 4)?;
                    let v1 = b.slice(&top, &[0], &[1], &[1]);
                    let v3 = b.slice(&top, &[2], &[3], &[1]);
                    let v4 = b.slice(&top, &[3], &[4], &[1]);
                    let oh1 = onehot_ge(b, z, &v1);
                    let e3 = b.equal(z, &v3);
                    let oh3 = b.as_float(&e3);
                    let e4 = b.equal(z, &v4);
                    let oh4 = b.as_float(&e4);
                    let zt_ = b.mul(z, t);
                    let zt = b.reduce_sum(&zt_, &[1], true);
                    let num = b.sub(&zy, &zt);
                    dlr(
                        b,
                        batch,
                        &num,
                        &v1,
                        &v3,
                        Some(&v4),
                        a,
                        t,
                        &oh1,
                        &oh3,
                        Some(&oh4),
                    )
                }
            }
        }
    })
}

/// One-hot (as float) of the entries of z at least `v` (the arg-max for v = max).
fn onehot_ge(b: &mut Builder, z: &str, v: &str) -> String {
    let lt = b.op("Less", &[z, v], vec![]);
    let ge = b.op("Not", &[&lt], vec![]);
    b.as_float(&ge)
}

/// loss = -num/den with den = v1 - v3 (+ v4 averaging for the targeted form), and
/// dloss/dz = -(oh_y - oh_o)/den + num/den^2 * d(den)/dz.
#[allow(clippy::too_many_arguments)]
fn dlr(
    b: &mut Builder,
    batch: usize,
    num: &str,
    v1: &str,
    v3: &str,
    v4: Option<&str>,
    oh_y: &str,
    oh_o: &str,
    oh1: &str,
    oh3: &str,
    oh4: Option<&str>,
) -> (String, String) {
    let eps = b.scalar(1e-12);
    let half = b.scalar(0.5);
    let (low, dlow) = match (v4, oh4) {
        (Some(v4), Some(oh4)) => {
            let s = b.add(v3, v4);
            let ds = b.add(oh3, oh4);
            (b.mul(&s, &half), b.mul(&ds, &half))
        }
        _ => (v3.to_string(), oh3.to_string()),
    };
    let d0 = b.sub(v1, &low);
    let den = b.add(&d0, &eps);
    let q = b.div(num, &den);
    let loss = b.neg(&q);
    let loss = b.reshape(&loss, &[batch]);
    let dnum = b.sub(oh_y, oh_o);
    let t1 = b.div(&dnum, &den);
    let dden = b.sub(oh1, &dlow);
    let den2 = b.mul(&den, &den);
    let r = b.div(num, &den2);
    let t2 = b.mul(&r, &dden);
    let gz = b.sub(&t2, &t1);
    (loss, gz)
}
