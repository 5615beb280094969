//! FGSM (Goodfellow, Shlens & Szegedy 2015): one step of size eps along the sign of the
//! gradient of the cross-entropy, x_adv = clip(x + eps * sign(grad_x J(x, y))).

use anyhow::Result;

use super::{check_batch, record, Head, Oracle, Outcome, Threat};

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FgsmConfig {}

pub fn fgsm(
    oracle: &mut dyn Oracle,
    x0: &[f32],
    labels: &[usize],
    threat: &Threat,
) -> Result<Outcome> {
    let len = check_batch(oracle, x0, labels, 2)?;
    let n = labels.len();
    let lg = oracle.loss_grad(x0, Head::CrossEntropy { labels })?;
    let mut x = x0.to_vec();
    threat.ascend(&mut x, &lg.grad, &vec![threat.eps; n], len);
    threat.project(&mut x, x0, len);
    let logits = oracle.logits(&x)?;
    let mut out = Outcome::start(x.clone(), n);
    // The gradient and the re-check.
    out.spend_all();
    out.spend_all();
    let idx: Vec<usize> = (0..n).collect();
    record(&mut out, &logits, &x, &idx, labels, None, len);
    Ok(out)
}
