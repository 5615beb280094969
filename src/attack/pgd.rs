//! PGD (Madry et al. 2018): projected gradient ascent on the loss from an optional random
//! start in the eps-ball, x_{t+1} = P(x_t + alpha * step(grad_x L(x_t))), with restarts.
//! Linf steps along sign(grad); L2 steps along grad/||grad||. Targeted attacks descend the
//! cross-entropy of the target class.

use anyhow::{bail, Result};

use super::{check_batch, gather, is_success, record, Head, Oracle, Outcome, Threat};
use crate::autodiff::step::{StepJob, StepRule};

#[derive(Clone, Debug, serde::Serialize)]
pub struct PgdConfig {
    pub steps: usize,
    /// Step size; `None` means 2.5 * eps / steps (Madry et al.).
    pub step_size: Option<f32>,
    pub random_start: bool,
    /// Independent runs; later runs attack only the examples still not broken.
    pub restarts: usize,
    /// Use the C&W margin instead of cross-entropy (untargeted only).
    pub margin_loss: bool,
    pub seed: u64,
    /// Keep attacking examples already broken, every step on the whole batch: the work of
    /// a plain PGD loop (benchmarks compare it with other tools'). The outcome is the same
    /// either way (an example's first adversarial iterate is the one kept), so reports
    /// leave it out.
    #[serde(skip)]
    pub every_step: bool,
}

impl Default for PgdConfig {
    fn default() -> Self {
        PgdConfig {
            steps: 10,
            step_size: None,
            random_start: true,
            restarts: 1,
            margin_loss: false,
            seed: 0,
            every_step: false,
        }
    }
}

impl PgdConfig {
    pub fn check(&self) -> Result<()> {
        if self.steps == 0 {
            bail!("PGD needs at least 1 step");
        }
        if self.restarts == 0 {
            bail!("PGD needs at least 1 restart");
        }
        if let Some(a) = self.step_size {
            if !(a.is_finite() && a > 0.0) {
                bail!("PGD step size must be positive, got {a}");
            }
        }
        Ok(())
    }
}

/// Runs PGD on the batch; `targets` makes it targeted. Example i's random start comes
/// from its own stream, numbered by its place in the batch ([`pgd_at`] with positions).
pub fn pgd(
    oracle: &mut dyn Oracle,
    x0: &[f32],
    labels: &[usize],
    targets: Option<&[usize]>,
    threat: &Threat,
    cfg: &PgdConfig,
) -> Result<Outcome> {
    pgd_at(
        oracle,
        x0,
        labels,
        targets,
        threat,
        cfg,
        &super::local_ids(labels.len()),
    )
}

/// [`pgd`] with the examples' positions in the data (`ids`): example i's random starts
/// come from [`super::example_rng`]`(seed, restart, ids[i])`.
pub fn pgd_at(
    oracle: &mut dyn Oracle,
    x0: &[f32],
    labels: &[usize],
    targets: Option<&[usize]>,
    threat: &Threat,
    cfg: &PgdConfig,
    ids: &[u64],
) -> Result<Outcome> {
    cfg.check()?;
    if ids.len() != labels.len() {
        bail!("{} example ids for {} labels", ids.len(), labels.len());
    }
    let len = check_batch(oracle, x0, labels, 2)?;
    let n = labels.len();
    let alpha = cfg.step_size.unwrap_or(2.5 * threat.eps / cfg.steps as f32);
    let mut out = Outcome::start(x0.to_vec(), n);
    for restart in 0..cfg.restarts {
        let mut idx: Vec<usize> = (0..n).filter(|i| !out.success[*i]).collect();
        if idx.is_empty() {
            break;
        }
        let mut c0 = gather(x0, &idx, len);
        let mut x = if cfg.random_start {
            let at: Vec<u64> = idx.iter().map(|i| ids[*i]).collect();
            threat.random_starts(&c0, len, cfg.seed, restart as u64, &at)
        } else {
            c0.clone()
        };
        let in_graph = {
            let y: Vec<usize> = idx.iter().map(|i| labels[*i]).collect();
            let t: Option<Vec<usize>> = targets.map(|t| idx.iter().map(|i| t[*i]).collect());
            let head = loss_head(&y, t.as_deref(), cfg.margin_loss);
            let judge = |j: usize, row: &[f32]| {
                let i = idx[j];
                is_success(row, labels[i], targets.map(|t| t[i]))
            };
            let job = StepJob {
                steps: cfg.steps,
                judge_from: usize::from(!cfg.random_start),
                stop_early: !cfg.every_step,
                judge: &judge,
            };
            let rule = StepRule {
                threat: *threat,
                alpha,
            };
            oracle.run_steps(&x, &c0, head, &rule, &job)?
        };
        let in_graph_ran = in_graph.is_some();
        if let Some(done) = in_graph {
            // The same outcome as the loop below: an example's first adversarial
            // iterate is kept, and it counts the evaluations the loop would have spent
            // on it (up to that step; every step with `every_step`), though the runtime
            // may have run it along with the others.
            for (j, &i) in idx.iter().enumerate() {
                let spent = match done.first[j] {
                    Some(t) if !cfg.every_step => t + 1,
                    _ => cfg.steps,
                } as u64;
                out.spent[i] += spent;
                out.evaluations += spent;
                if done.first[j].is_some() {
                    out.success[i] = true;
                    out.x_adv[i * len..(i + 1) * len]
                        .copy_from_slice(&done.kept[j * len..(j + 1) * len]);
                }
            }
            let keep: Vec<usize> = (0..idx.len())
                .filter(|j| cfg.every_step || !out.success[idx[*j]])
                .collect();
            x = gather(&done.last, &keep, len);
            idx = keep.iter().map(|j| idx[*j]).collect();
        }
        // The host loop, unless the runtime ran the steps.
        let steps = if in_graph_ran { 0 } else { cfg.steps };
        for step in 0..steps {
            let y: Vec<usize> = idx.iter().map(|i| labels[*i]).collect();
            let t: Option<Vec<usize>> = targets.map(|t| idx.iter().map(|i| t[*i]).collect());
            let head = loss_head(&y, t.as_deref(), cfg.margin_loss);
            let lg = oracle.loss_grad(&x, head)?;
            out.spend(&idx);
            // The logits belong to the current iterate: a random start, or the last step.
            if step > 0 || cfg.random_start {
                record(&mut out, &lg.logits, &x, &idx, labels, targets, len);
            }
            let mut grad = lg.grad;
            // An example leaves the batch once broken: its first adversarial iterate is
            // recorded and later steps could not change the outcome, only cost runs.
            let keep: Vec<usize> = (0..idx.len())
                .filter(|j| cfg.every_step || !out.success[idx[*j]])
                .collect();
            if keep.len() < idx.len() {
                if keep.is_empty() {
                    break;
                }
                x = gather(&x, &keep, len);
                c0 = gather(&c0, &keep, len);
                grad = gather(&grad, &keep, len);
                idx = keep.iter().map(|j| idx[*j]).collect();
            }
            threat.ascend(&mut x, &grad, &vec![alpha; idx.len()], len);
            threat.project(&mut x, &c0, len);
        }
        if !cfg.every_step && idx.iter().all(|i| out.success[*i]) {
            continue;
        }
        let logits = oracle.logits(&x)?;
        out.spend(&idx);
        record(&mut out, &logits, &x, &idx, labels, targets, len);
        // Examples not broken keep the last iterate of the last restart.
        for (j, &i) in idx.iter().enumerate() {
            if !out.success[i] {
                out.x_adv[i * len..(i + 1) * len].copy_from_slice(&x[j * len..(j + 1) * len]);
            }
        }
    }
    Ok(out)
}

/// PGD's loss: the target's cross-entropy when targeted, else the margin or the
/// cross-entropy of the labels.
fn loss_head<'a>(labels: &'a [usize], targets: Option<&'a [usize]>, margin: bool) -> Head<'a> {
    match (targets, margin) {
        (Some(t), _) => Head::TargetedCrossEntropy { targets: t },
        (None, true) => Head::Margin { labels },
        (None, false) => Head::CrossEntropy { labels },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::testing::{dataset, TinyNet};
    use crate::attack::{fgsm::fgsm, Norm};

    fn robust(o: &Outcome) -> usize {
        o.success.iter().filter(|s| !**s).count()
    }

    #[test]
    fn one_step_pgd_without_random_start_is_fgsm() {
        let mut net = TinyNet::new(20, 16, 4, 1);
        let (x, y) = dataset(&mut net, 64, 2);
        let threat = Threat::new(Norm::Linf, 0.05, (0.0, 1.0)).unwrap();
        let f = fgsm(&mut net, &x, &y, &threat).unwrap();
        let cfg = PgdConfig {
            steps: 1,
            step_size: Some(0.05),
            random_start: false,
            ..Default::default()
        };
        let p = pgd(&mut net, &x, &y, None, &threat, &cfg).unwrap();
        assert_eq!(f.x_adv, p.x_adv);
        assert_eq!(f.success, p.success);
        assert!(f.success.iter().any(|s| *s) && f.success.iter().any(|s| !*s));
    }

    /// Dropping broken examples from the batch changes the cost, not the outcome.
    #[test]
    fn stopping_at_broken_examples_keeps_the_outcome() {
        let mut net = TinyNet::new(20, 16, 4, 9);
        let (x, y) = dataset(&mut net, 96, 10);
        let threat = Threat::new(Norm::Linf, 0.05, (0.0, 1.0)).unwrap();
        for restarts in [1, 2] {
            let base = PgdConfig {
                steps: 8,
                restarts,
                ..Default::default()
            };
            let plain = PgdConfig {
                every_step: true,
                ..base.clone()
            };
            let stop = pgd(&mut net, &x, &y, None, &threat, &base).unwrap();
            let every = pgd(&mut net, &x, &y, None, &threat, &plain).unwrap();
            assert_eq!(stop.success, every.success);
            assert_eq!(stop.x_adv, every.x_adv);
            let broken = stop.success.iter().filter(|s| **s).count();
            assert!(broken > 10 && broken < y.len() - 10, "{broken} broken");
            assert!(stop.evaluations < every.evaluations);
        }
    }

    /// A [`TinyNet`] that runs the K steps itself, as a step graph would: every example
    /// every step (no example leaves the batch), the step taken by `Threat::ascend` and
    /// `Threat::project` on the whole batch.
    struct Stepping(TinyNet);

    impl Oracle for Stepping {
        fn num_classes(&self) -> usize {
            self.0.num_classes()
        }
        fn example_len(&self) -> usize {
            self.0.example_len()
        }
        fn logits(&mut self, x: &[f32]) -> Result<ndarray::Array2<f32>> {
            self.0.logits(x)
        }
        fn loss_grad(&mut self, _x: &[f32], _head: Head<'_>) -> Result<crate::attack::LossGrad> {
            anyhow::bail!("the stepping oracle runs whole attacks only")
        }
        fn run_steps(
            &mut self,
            x: &[f32],
            x0: &[f32],
            head: Head<'_>,
            rule: &StepRule,
            job: &StepJob<'_>,
        ) -> Result<Option<crate::autodiff::step::StepsDone>> {
            let (len, k) = (self.0.example_len(), self.0.num_classes());
            let n = x.len() / len;
            let mut x = x.to_vec();
            let mut done = crate::autodiff::step::StepsDone {
                first: vec![None; n],
                kept: vec![0.0; x.len()],
                ..Default::default()
            };
            for t in 0..job.steps {
                let lg = self.0.loss_grad(&x, head)?;
                let l = lg.logits.as_slice().unwrap();
                for j in 0..n {
                    if t >= job.judge_from
                        && done.first[j].is_none()
                        && (job.judge)(j, &l[j * k..(j + 1) * k])
                    {
                        done.first[j] = Some(t);
                        done.kept[j * len..(j + 1) * len]
                            .copy_from_slice(&x[j * len..(j + 1) * len]);
                    }
                }
                rule.threat
                    .ascend(&mut x, &lg.grad, &vec![rule.alpha; n], len);
                rule.threat.project(&mut x, x0, len);
            }
            done.last = x;
            Ok(Some(done))
        }
    }

    /// PGD through an oracle that runs the steps itself keeps the host loop's outcome:
    /// the same adversarial points, successes and evaluations per example, for every
    /// kind of run (random start or not, stopping at broken examples or not, targeted,
    /// margin, restarts, both norms).
    #[test]
    fn steps_run_by_the_oracle_keep_the_outcome() {
        for norm in [Norm::Linf, Norm::L2] {
            let eps = if norm == Norm::Linf { 0.05 } else { 0.4 };
            let threat = Threat::new(norm, eps, (0.0, 1.0)).unwrap();
            let mut net = TinyNet::new(20, 16, 4, 13);
            let (x, y) = dataset(&mut net, 96, 14);
            let t: Vec<usize> = y.iter().map(|v| (v + 1) % 4).collect();
            let mut stepping = Stepping(TinyNet::new(20, 16, 4, 13));
            for (random_start, every_step, restarts, margin, targeted) in [
                (true, false, 1, false, false),
                (true, true, 1, false, false),
                (false, false, 1, false, false),
                (false, true, 2, true, false),
                (true, false, 2, false, true),
            ] {
                let cfg = PgdConfig {
                    steps: 6,
                    random_start,
                    every_step,
                    restarts,
                    margin_loss: margin,
                    ..Default::default()
                };
                let targets = targeted.then_some(t.as_slice());
                let host = pgd(&mut net, &x, &y, targets, &threat, &cfg).unwrap();
                let steps = pgd(&mut stepping, &x, &y, targets, &threat, &cfg).unwrap();
                let what = format!("{norm:?} {cfg:?} targeted {targeted}");
                assert_eq!(host.success, steps.success, "{what}");
                assert_eq!(host.x_adv, steps.x_adv, "{what}");
                assert_eq!(host.spent, steps.spent, "{what}");
                assert_eq!(host.evaluations, steps.evaluations, "{what}");
                let broken = host.success.iter().filter(|s| **s).count();
                assert!(broken > 5 && broken < 91, "{what}: {broken} broken");
            }
        }
    }

    #[test]
    fn iterates_stay_in_ball_and_range() {
        for norm in [Norm::Linf, Norm::L2] {
            let mut net = TinyNet::new(20, 16, 4, 5);
            let (x, y) = dataset(&mut net, 32, 6);
            let eps = if norm == Norm::Linf { 0.1 } else { 0.5 };
            let threat = Threat::new(norm, eps, (0.0, 1.0)).unwrap();
            let p = pgd(&mut net, &x, &y, None, &threat, &PgdConfig::default()).unwrap();
            for i in 0..y.len() {
                let a = &p.x_adv[i * 20..(i + 1) * 20];
                assert!(
                    threat.contains(a, &x[i * 20..(i + 1) * 20]),
                    "{norm:?} example {i}"
                );
                if p.success[i] {
                    let l = net.logits(a).unwrap();
                    assert_ne!(crate::metrics::argmax(l.row(0).as_slice().unwrap()), y[i]);
                }
            }
        }
    }

    #[test]
    fn more_steps_and_restarts_never_raise_robustness() {
        let mut net = TinyNet::new(20, 16, 4, 7);
        let (x, y) = dataset(&mut net, 128, 8);
        let threat = Threat::new(Norm::Linf, 0.04, (0.0, 1.0)).unwrap();
        let base = PgdConfig {
            steps: 5,
            step_size: Some(0.01),
            ..Default::default()
        };
        let r5 = robust(&pgd(&mut net, &x, &y, None, &threat, &base).unwrap());
        let r20 = robust(
            &pgd(
                &mut net,
                &x,
                &y,
                None,
                &threat,
                &PgdConfig {
                    steps: 20,
                    ..base.clone()
                },
            )
            .unwrap(),
        );
        let r5x3 = robust(
            &pgd(
                &mut net,
                &x,
                &y,
                None,
                &threat,
                &PgdConfig {
                    restarts: 3,
                    ..base.clone()
                },
            )
            .unwrap(),
        );
        assert!(r20 <= r5, "20 steps {r20} vs 5 steps {r5}");
        assert!(r5x3 <= r5, "3 restarts {r5x3} vs 1 {r5}");
        assert!(r5 < 128, "the attack breaks something");
    }

    #[test]
    fn targeted_pgd_hits_its_target() {
        let mut net = TinyNet::new(20, 16, 4, 11);
        let (x, y) = dataset(&mut net, 32, 12);
        let t: Vec<usize> = y.iter().map(|v| (v + 1) % 4).collect();
        let threat = Threat::new(Norm::Linf, 0.3, (0.0, 1.0)).unwrap();
        let p = pgd(
            &mut net,
            &x,
            &y,
            Some(&t),
            &threat,
            &PgdConfig {
                steps: 30,
                ..Default::default()
            },
        )
        .unwrap();
        let mut hits = 0;
        for (i, ti) in t.iter().enumerate() {
            if p.success[i] {
                let l = net.logits(&p.x_adv[i * 20..(i + 1) * 20]).unwrap();
                assert_eq!(crate::metrics::argmax(l.row(0).as_slice().unwrap()), *ti);
                hits += 1;
            }
        }
        assert!(hits > 0);
    }

    #[test]
    fn bad_configs_are_refused() {
        let mut net = TinyNet::new(4, 4, 3, 1);
        let (x, y) = dataset(&mut net, 2, 1);
        let threat = Threat::new(Norm::Linf, 0.1, (0.0, 1.0)).unwrap();
        let e = pgd(
            &mut net,
            &x,
            &y,
            None,
            &threat,
            &PgdConfig {
                steps: 0,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("at least 1 step"));
        assert!(Threat::new(Norm::Linf, 0.0, (0.0, 1.0)).is_err());
        assert!(Threat::new(Norm::Linf, 1.5, (0.0, 1.0)).is_err());
    }
}
