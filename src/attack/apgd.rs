//! APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
//! ensemble of diverse parameter-free attacks"), Algorithm 1.
//!
//! Gradient ascent with momentum and a per-example step size that starts at 2*eps and is
//! halved at checkpoints w_j when (1) fewer than rho = 0.75 of the steps since the last
//! checkpoint increased the loss, or (2) the step size was not reduced at the last
//! checkpoint and the best loss has not improved since; after a halving the iterate
//! restarts from the best point so far. Checkpoints: p_0 = 0, p_1 = 0.22,
//! p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), w_j = ceil(p_j * N_iter).
//! APGD-CE maximises cross-entropy; APGD-DLR the DLR loss; APGD-T the targeted DLR loss
//! for each of the top `n_targets` other classes in turn.

use anyhow::{bail, Result};

use super::{check_batch, gather, record, Head, Oracle, Outcome, Threat};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ApgdLoss {
    CrossEntropy,
    Dlr,
    /// Targeted DLR over the top `n_targets` classes other than the label.
    DlrTargeted {
        n_targets: usize,
    },
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ApgdConfig {
    pub loss: ApgdLoss,
    pub steps: usize,
    pub restarts: usize,
    pub seed: u64,
    /// Momentum weight alpha (0.75 in the paper).
    pub momentum: f32,
    /// Fraction of increasing steps required between checkpoints (0.75 in the paper).
    pub rho: f32,
}

impl ApgdConfig {
    pub fn new(loss: ApgdLoss, steps: usize) -> ApgdConfig {
        ApgdConfig {
            loss,
            steps,
            restarts: 1,
            seed: 0,
            momentum: 0.75,
            rho: 0.75,
        }
    }

    pub fn check(&self, num_classes: usize) -> Result<()> {
        if self.steps == 0 {
            bail!("APGD needs at least 1 step");
        }
        if self.restarts == 0 {
            bail!("APGD needs at least 1 restart");
        }
        match self.loss {
            ApgdLoss::Dlr if num_classes < 3 => {
                bail!("the DLR loss needs at least 3 classes; the model has {num_classes}")
            }
            ApgdLoss::DlrTargeted { .. } if num_classes < 4 => {
                bail!("APGD-T (targeted DLR) needs at least 4 classes; the model has {num_classes}")
            }
            ApgdLoss::DlrTargeted { n_targets: 0 } => bail!("APGD-T needs at least 1 target class"),
            _ => Ok(()),
        }
    }
}

/// The checkpoints w_j (iteration indices) for `n` iterations.
pub fn checkpoints(n: usize) -> Vec<usize> {
    let mut p = vec![0.0f64, 0.22];
    loop {
        let j = p.len() - 1;
        let next = p[j] + (p[j] - p[j - 1] - 0.03).max(0.06);
        if next > 1.0 {
            break;
        }
        p.push(next);
    }
    let mut w: Vec<usize> = p.iter().map(|v| (v * n as f64).ceil() as usize).collect();
    w.dedup();
    w
}

/// Runs APGD on the batch (example i's random streams numbered by its place in the
/// batch; [`apgd_at`] with positions in the data).
pub fn apgd(
    oracle: &mut dyn Oracle,
    x0: &[f32],
    labels: &[usize],
    threat: &Threat,
    cfg: &ApgdConfig,
) -> Result<Outcome> {
    apgd_at(
        oracle,
        x0,
        labels,
        threat,
        cfg,
        &super::local_ids(labels.len()),
    )
}

/// [`apgd`] with the examples' positions in the data (`ids`): example i's random start in
/// run r (restart, target) comes from [`super::example_rng`]`(seed, r, ids[i])`.
pub fn apgd_at(
    oracle: &mut dyn Oracle,
    x0: &[f32],
    labels: &[usize],
    threat: &Threat,
    cfg: &ApgdConfig,
    ids: &[u64],
) -> Result<Outcome> {
    cfg.check(oracle.num_classes())?;
    if ids.len() != labels.len() {
        bail!("{} example ids for {} labels", ids.len(), labels.len());
    }
    check_batch(oracle, x0, labels, 2)?;
    let n = labels.len();
    let mut out = Outcome::start(x0.to_vec(), n);
    match cfg.loss {
        ApgdLoss::DlrTargeted { n_targets } => {
            // Targets: the classes ranked 2nd, 3rd, ... by the clean logits.
            let clean = oracle.logits(x0)?;
            out.spend_all();
            let k = oracle.num_classes();
            let ranked: Vec<Vec<usize>> = clean
                .rows()
                .into_iter()
                .zip(labels)
                .map(|(row, y)| {
                    let mut o: Vec<usize> = (0..k).filter(|j| j != y).collect();
                    o.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
                    o
                })
                .collect();
            for t in 0..n_targets.min(k - 1) {
                let targets: Vec<usize> = ranked.iter().map(|o| o[t]).collect();
                for r in 0..cfg.restarts {
                    run_once(
                        oracle,
                        x0,
                        labels,
                        Some(&targets),
                        threat,
                        cfg,
                        (t * cfg.restarts + r) as u64,
                        ids,
                        &mut out,
                    )?;
                }
            }
        }
        _ => {
            for r in 0..cfg.restarts {
                run_once(
                    oracle, x0, labels, None, threat, cfg, r as u64, ids, &mut out,
                )?;
            }
        }
    }
    Ok(out)
}

/// One APGD run on the examples not yet broken. A success is any misclassification
/// (targets only steer the loss).
#[allow(clippy::too_many_arguments)]
fn run_once(
    oracle: &mut dyn Oracle,
    x0: &[f32],
    labels: &[usize],
    targets: Option<&[usize]>,
    threat: &Threat,
    cfg: &ApgdConfig,
    stream: u64,
    ids: &[u64],
    out: &mut Outcome,
) -> Result<()> {
    let len = oracle.example_len();
    let idx: Vec<usize> = (0..labels.len()).filter(|i| !out.success[*i]).collect();
    if idx.is_empty() {
        return Ok(());
    }
    let m = idx.len();
    let c0 = gather(x0, &idx, len);
    let y: Vec<usize> = idx.iter().map(|i| labels[*i]).collect();
    let t: Option<Vec<usize>> = targets.map(|t| idx.iter().map(|i| t[*i]).collect());
    // Examples still not broken (local indices). Examples are independent, so dropping
    // broken ones from later steps changes no result, only the cost.
    let mut act: Vec<usize> = (0..m).collect();
    let mut f = vec![0.0f32; m];
    let mut g = vec![0.0f32; m * len];
    let mut eval = |x: &[f32],
                    act: &mut Vec<usize>,
                    f: &mut [f32],
                    g: &mut [f32],
                    out: &mut Outcome|
     -> Result<()> {
        let xa = gather(x, act, len);
        let ya: Vec<usize> = act.iter().map(|j| y[*j]).collect();
        let ta: Option<Vec<usize>> = t.as_ref().map(|t| act.iter().map(|j| t[*j]).collect());
        let head = match (cfg.loss, &ta) {
            (ApgdLoss::CrossEntropy, _) => Head::CrossEntropy { labels: &ya },
            (ApgdLoss::Dlr, _) => Head::Dlr { labels: &ya },
            (ApgdLoss::DlrTargeted { .. }, Some(t)) => Head::DlrTargeted {
                labels: &ya,
                targets: t,
            },
            (ApgdLoss::DlrTargeted { .. }, None) => bail!("APGD-T needs targets"),
        };
        let lg = oracle.loss_grad(&xa, head)?;
        let ia: Vec<usize> = act.iter().map(|j| idx[*j]).collect();
        out.spend(&ia);
        record(out, &lg.logits, &xa, &ia, labels, None, len);
        for (r, &j) in act.iter().enumerate() {
            f[j] = lg.loss[r];
            g[j * len..(j + 1) * len].copy_from_slice(&lg.grad[r * len..(r + 1) * len]);
        }
        act.retain(|j| !out.success[idx[*j]]);
        Ok(())
    };

    let at: Vec<u64> = idx.iter().map(|i| ids[*i]).collect();
    let mut x = threat.random_starts(&c0, len, cfg.seed, stream, &at);
    eval(&x, &mut act, &mut f, &mut g, out)?;
    let mut x_prev = x.clone();
    let mut x_best = x.clone();
    let mut f_best = f.clone();
    let mut g_best = g.clone();
    let mut eta = vec![2.0 * threat.eps; m];
    let w = checkpoints(cfg.steps);
    let mut next_ckpt = 1; // index into w; w[0] = 0
    let mut increases = vec![0usize; m];
    let mut f_best_at_ckpt = f_best.clone();
    let mut reduced_at_ckpt = vec![false; m];

    for k in 0..cfg.steps {
        if act.is_empty() {
            break;
        }
        // z = P(x + eta * step(grad)); x_next = P(x + a (z - x) + (1 - a)(x - x_prev)).
        let mut z = x.clone();
        threat.ascend(&mut z, &g, &eta, len);
        threat.project(&mut z, &c0, len);
        let a = if k == 0 { 1.0 } else { cfg.momentum };
        let mut xn: Vec<f32> = x
            .iter()
            .zip(&z)
            .zip(&x_prev)
            .map(|((xv, zv), pv)| xv + a * (zv - xv) + (1.0 - a) * (xv - pv))
            .collect();
        threat.project(&mut xn, &c0, len);
        let mut fn_ = f.clone();
        let mut gn = g.clone();
        let stepped = act.clone();
        eval(&xn, &mut act, &mut fn_, &mut gn, out)?;
        for &j in &stepped {
            if fn_[j] > f[j] {
                increases[j] += 1;
            }
            if fn_[j] > f_best[j] {
                f_best[j] = fn_[j];
                x_best[j * len..(j + 1) * len].copy_from_slice(&xn[j * len..(j + 1) * len]);
                g_best[j * len..(j + 1) * len].copy_from_slice(&gn[j * len..(j + 1) * len]);
            }
        }
        x_prev = std::mem::replace(&mut x, xn);
        f = fn_;
        g = gn;

        if next_ckpt < w.len() && k + 1 == w[next_ckpt] {
            let interval = (w[next_ckpt] - w[next_ckpt - 1]) as f32;
            for &j in &act {
                let oscillating = (increases[j] as f32) < cfg.rho * interval;
                let stalled = !reduced_at_ckpt[j] && f_best_at_ckpt[j] >= f_best[j];
                let reduce = oscillating || stalled;
                if reduce {
                    eta[j] /= 2.0;
                    let r = j * len..(j + 1) * len;
                    x[r.clone()].copy_from_slice(&x_best[r.clone()]);
                    x_prev[r.clone()].copy_from_slice(&x_best[r.clone()]);
                    g[r.clone()].copy_from_slice(&g_best[r]);
                    f[j] = f_best[j];
                }
                reduced_at_ckpt[j] = reduce;
                f_best_at_ckpt[j] = f_best[j];
                increases[j] = 0;
            }
            next_ckpt += 1;
        }
    }
    for (j, &i) in idx.iter().enumerate() {
        if !out.success[i] {
            out.x_adv[i * len..(i + 1) * len].copy_from_slice(&x_best[j * len..(j + 1) * len]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::pgd::{pgd, PgdConfig};
    use crate::attack::testing::{dataset, TinyNet};
    use crate::attack::Norm;

    #[test]
    fn checkpoints_follow_the_paper() {
        // p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99; ceil in f64 as in the
        // reference implementation (0.57 * 100 rounds up to 58 there too).
        assert_eq!(checkpoints(100), vec![0, 22, 41, 58, 70, 80, 87, 93, 99]);
    }

    #[test]
    fn apgd_is_at_least_as_strong_as_pgd_and_stays_in_the_ball() {
        let mut net = TinyNet::new(20, 16, 5, 21);
        let (x, y) = dataset(&mut net, 128, 22);
        let threat = Threat::new(Norm::Linf, 0.04, (0.0, 1.0)).unwrap();
        let p = pgd(
            &mut net,
            &x,
            &y,
            None,
            &threat,
            &PgdConfig {
                steps: 20,
                ..Default::default()
            },
        )
        .unwrap();
        let rp = p.success.iter().filter(|s| !**s).count();
        for loss in [
            ApgdLoss::CrossEntropy,
            ApgdLoss::Dlr,
            ApgdLoss::DlrTargeted { n_targets: 3 },
        ] {
            let a = apgd(&mut net, &x, &y, &threat, &ApgdConfig::new(loss, 20)).unwrap();
            let ra = a.success.iter().filter(|s| !**s).count();
            assert!(ra <= rp + 2, "{loss:?}: APGD leaves {ra} robust, PGD {rp}");
            for i in 0..128 {
                let adv = &a.x_adv[i * 20..(i + 1) * 20];
                assert!(threat.contains(adv, &x[i * 20..(i + 1) * 20]));
                if a.success[i] {
                    let l = net.logits(adv).unwrap();
                    assert_ne!(crate::metrics::argmax(l.row(0).as_slice().unwrap()), y[i]);
                }
            }
        }
    }

    #[test]
    fn dlr_needs_enough_classes() {
        let mut net = TinyNet::new(4, 4, 3, 1);
        let (x, y) = dataset(&mut net, 2, 1);
        let threat = Threat::new(Norm::Linf, 0.1, (0.0, 1.0)).unwrap();
        let e = apgd(
            &mut net,
            &x,
            &y,
            &threat,
            &ApgdConfig::new(ApgdLoss::DlrTargeted { n_targets: 2 }, 5),
        )
        .unwrap_err();
        assert!(e.to_string().contains("at least 4 classes"), "{e}");
        let mut net2 = TinyNet::new(4, 4, 2, 1);
        let (x2, y2) = dataset(&mut net2, 2, 1);
        let e = apgd(
            &mut net2,
            &x2,
            &y2,
            &threat,
            &ApgdConfig::new(ApgdLoss::Dlr, 5),
        )
        .unwrap_err();
        assert!(e.to_string().contains("at least 3 classes"), "{e}");
    }
}
