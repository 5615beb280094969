//! Hardening: adversarial fine-tuning of a model's ONNX weights.
//!
//! Each batch is attacked on the current weights through an input-gradient graph, then a
//! parameter-gradient graph gives the weight update (`net`); the optimiser and schedule
//! live in `optim`, run state in `checkpoint`. The methods:
//! - `mixed`: a fraction `adv_ratio` of each batch replaced by its PGD examples (the
//!   classic clean + adversarial recipe);
//! - `pgd`: PGD examples only (Madry et al. 2018);
//! - `fast`: one FGSM step of 1.25 eps from a uniform random start (Wong et al. 2020);
//! - `trades`: CE(clean) + beta * KL(p_clean || p_adv), the attack maximising the KL
//!   (Zhang et al. 2019); the gradient flows through both the clean and the adversarial
//!   branch (the clean one through a `Linear` head seeded with the closed-form dL/dz).
//!
//! Training attacks return their last iterate (no early stop on success). After each
//! epoch the held-out validation examples are scored clean and under PGD (the audit's
//! attack), and the weights with the best robust accuracy (ties: best clean accuracy) are
//! kept.

use anyhow::{bail, Result};

use crate::attack::{pgd, Norm, Oracle, Threat};
use crate::autodiff::LossKind;
use crate::metrics::argmax;
use crate::oracle::onehot;
use crate::rng::Rng;

pub mod bn;
pub mod checkpoint;
pub mod net;
pub mod optim;
pub mod optim_graph;
pub mod qdq;
pub mod resident;

pub use net::TrainNet;
use optim::{OptimConfig, Optimizer};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Mixed,
    Pgd,
    Fast,
    Trades,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Mixed => "mixed",
            Method::Pgd => "pgd",
            Method::Fast => "fast",
            Method::Trades => "trades",
        }
    }
}

/// Everything that decides a training run's result (a checkpoint of another
/// configuration is refused on resume).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HardenConfig {
    pub method: Method,
    pub norm: Norm,
    pub eps: f32,
    /// The radius the training attack uses (default `eps`); validation always attacks at
    /// `eps`. Training a little above the audited radius buys robustness at it.
    pub train_eps: Option<f32>,
    pub epochs: usize,
    pub batch_size: usize,
    /// `mixed`: the fraction of each batch replaced by adversarial examples.
    pub adv_ratio: f32,
    /// Attack steps of `mixed`, `pgd` and `trades` (`fast` takes one).
    pub attack_steps: usize,
    /// Attack step size; default 2.5 * eps / steps (1.25 * eps for `fast`).
    pub step_size: Option<f32>,
    /// `trades`: weight of the KL term.
    pub beta: f32,
    /// Optimiser; its `total_steps` and `warmup_steps` are set from the epochs.
    pub optim: OptimConfig,
    pub warmup_epochs: f32,
    pub seed: u64,
    /// PGD steps of the validation attack.
    pub val_steps: usize,
    /// Stop after this many epochs without a better validation robust accuracy.
    pub patience: Option<usize>,
}

impl HardenConfig {
    /// The training attack's threat: `threat` (the audited one) at `train_eps` when set.
    pub fn train_threat(&self, threat: &Threat) -> Result<Threat> {
        match self.train_eps {
            Some(e) => Threat::new(threat.norm, e, threat.range)
                .map_err(|err| anyhow::anyhow!("--train-eps: {err}")),
            None => Ok(*threat),
        }
    }

    pub fn check(&self) -> Result<()> {
        self.optim.check()?;
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.adv_ratio) {
            bail!("--adv-ratio must lie in [0, 1], got {}", self.adv_ratio);
        }
        if self.attack_steps == 0 {
            bail!("--attack-steps must be at least 1");
        }
        if self.val_steps == 0 {
            bail!("--val-steps must be at least 1");
        }
        if !(self.beta.is_finite() && self.beta >= 0.0) {
            bail!("--beta must be a number >= 0, got {}", self.beta);
        }
        if !(self.warmup_epochs.is_finite() && self.warmup_epochs >= 0.0) {
            bail!("--warmup-epochs must be a number >= 0");
        }
        if let Some(a) = self.step_size {
            if !(a.is_finite() && a > 0.0) {
                bail!("--step-size must be positive, got {a}");
            }
        }
        if self.patience == Some(0) {
            bail!("--patience must be at least 1");
        }
        Ok(())
    }
}

/// Labelled examples in the model's raw input space, `len` values each.
#[derive(Clone, Debug, Default)]
pub struct Examples {
    pub x: Vec<f32>,
    pub y: Vec<usize>,
    pub len: usize,
}

impl Examples {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// The first `n` examples (all of them when there are fewer).
    pub fn first(&self, n: usize) -> Examples {
        let n = n.min(self.len());
        Examples {
            x: self.x[..n * self.len].to_vec(),
            y: self.y[..n].to_vec(),
            len: self.len,
        }
    }

    pub fn gather(&self, idx: &[usize]) -> (Vec<f32>, Vec<usize>) {
        let x = crate::attack::gather(&self.x, idx, self.len);
        (x, idx.iter().map(|i| self.y[*i]).collect())
    }
}

/// One row of the training curve.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRow {
    /// 0 is the model before training.
    pub epoch: usize,
    pub lr: f32,
    /// Mean training loss and accuracy on the (partly adversarial) training batches
    /// (none for epoch 0).
    pub train_loss: Option<f64>,
    pub train_accuracy: Option<f64>,
    /// Validation accuracy, clean and under PGD (none without validation examples).
    pub val_clean: Option<f64>,
    pub val_robust: Option<f64>,
    pub seconds: f64,
}

/// What a run produced.
pub struct FitResult {
    pub best_epoch: usize,
    pub best_val_robust: f64,
    pub best_val_clean: f64,
    /// The kept weights (best epoch), in `net.params` order.
    pub params: Vec<Vec<f32>>,
    pub history: Vec<EpochRow>,
    /// Epochs run in total (fewer than asked when early stopping fired).
    pub epochs_run: usize,
    /// Whether the steps ran with the weights and the optimiser state in the runtime's
    /// memory (see `resident`; TRADES steps on the host).
    pub resident: bool,
}

/// Progress reports.
pub enum Event<'a> {
    Batch {
        epoch: usize,
        done: usize,
        of: usize,
    },
    Validating {
        epoch: usize,
    },
    Epoch(&'a EpochRow),
    /// Something the user should know (runs made smaller after running out of memory).
    Note(&'a str),
}

/// Where to keep checkpoints.
pub struct Checkpointing<'a> {
    pub path: &'a std::path::Path,
    /// Identifies the model and configuration.
    pub fingerprint: String,
    /// Also checkpoint every this many batches (0: only at epoch ends).
    pub every_batches: usize,
}

/// Seeded streams: one per purpose, so adding one never shifts another.
const STREAM_SHUFFLE: u64 = 0x5348_5546;
const STREAM_ATTACK: u64 = 0x4154_4B00;
const STREAM_VAL: u64 = 0x5641_4C00;

/// The gradient-free part of a training step's loss and accuracy.
struct StepStats {
    loss_sum: f64,
    correct: u64,
}

fn softmax_rows(z: &[f32], k: usize) -> Vec<f32> {
    let mut p = Vec::with_capacity(z.len());
    for row in z.chunks(k) {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
        let s: f32 = e.iter().sum();
        p.extend(e.iter().map(|v| v / s));
    }
    p
}

fn correct_count(logits: &ndarray::Array2<f32>, y: &[usize]) -> u64 {
    logits
        .rows()
        .into_iter()
        .zip(y)
        .filter(|(r, y)| r.as_slice().map(argmax) == Some(**y))
        .count() as u64
}

/// The training attack: `steps` of projected steepest ascent on the loss `kind` (head
/// inputs `heads`) from `start`, returning the last iterate.
#[allow(clippy::too_many_arguments)]
fn perturb(
    net: &mut TrainNet,
    kind: LossKind,
    heads: &[Vec<f32>],
    x0: &[f32],
    mut x: Vec<f32>,
    threat: &Threat,
    steps: usize,
    alpha: f32,
) -> Result<Vec<f32>> {
    let rule = crate::autodiff::step::StepRule {
        threat: *threat,
        alpha,
    };
    let never = |_: usize, _: &[f32]| false;
    let job = crate::autodiff::step::StepJob {
        steps,
        judge_from: steps,
        stop_early: false,
        judge: &never,
    };
    if let Some(done) = net.steps_of(kind, heads, x0, &x, &rule, &job)? {
        return Ok(done.last);
    }
    let len = net.example_len();
    let n = x0.len() / len;
    let alphas = vec![alpha; n];
    for _ in 0..steps {
        let out = net.run_graph(kind, false, n, &x, heads)?;
        threat.ascend(&mut x, &out.grad, &alphas, len);
        threat.project(&mut x, x0, len);
    }
    Ok(x)
}

/// TRADES: the weight gradients of sum_i CE(z_c, y) + beta * KL(p_c || softmax(z_a)),
/// z_c the logits at the clean `x0` (`pc` = softmax(z_c), given), z_a at the adversarial
/// `xa`; both branches depend on the weights. The adversarial branch comes from the KL
/// head with `pc` fixed; the clean branch from a `Linear` head seeded with the closed-form
/// derivative of the whole loss with respect to z_c. Returns the gradients and the loss.
fn trades_grads(
    net: &mut TrainNet,
    x0: &[f32],
    xa: &[f32],
    y: &[usize],
    pc: &[f32],
    beta: f32,
) -> Result<(Vec<Vec<f32>>, f64)> {
    let k = net.num_classes();
    let b = y.len();
    let y1 = onehot(y, k);
    let heads = [pc.to_vec()];
    let adv = net.run_graph(LossKind::Kl, true, b, xa, &heads)?;
    let za: Vec<f32> = adv.logits.iter().copied().collect();
    let q = softmax_rows(&za, k);
    // dL/dz_c: CE's p - y, plus beta * p * (d - KL) with d = log p - log q.
    let mut coeffs = vec![0.0f32; b * k];
    let mut loss_sum = 0.0f64;
    for i in 0..b {
        let p = &pc[i * k..(i + 1) * k];
        let qi = &q[i * k..(i + 1) * k];
        let d: Vec<f32> = p
            .iter()
            .zip(qi)
            .map(|(a, c)| a.max(1e-30).ln() - c.max(1e-30).ln())
            .collect();
        let kl: f32 = p.iter().zip(&d).map(|(a, dv)| a * dv).sum();
        for j in 0..k {
            coeffs[i * k + j] = p[j] - y1[i * k + j] + beta * p[j] * (d[j] - kl);
        }
        loss_sum += (-(p[y[i]].max(1e-30)).ln() + beta * kl) as f64;
    }
    let clean = net.run_graph(LossKind::Linear, true, b, x0, &[coeffs])?;
    let grads = clean
        .param_grads
        .into_iter()
        .zip(adv.param_grads)
        .map(|(gc, ga)| gc.iter().zip(&ga).map(|(c, a)| c + beta * a).collect())
        .collect();
    Ok((grads, loss_sum))
}

/// The error of a step whose weight gradients are not finite.
pub(crate) const DIVERGED: &str =
    "a weight gradient is NaN or infinite (the loss diverged; try a smaller --lr)";

/// One optimisation step on the batch (`x0`, `y`); returns its loss and accuracy.
fn train_step(
    net: &mut TrainNet,
    opt: &mut Optimizer,
    cfg: &HardenConfig,
    threat: &Threat,
    x0: &[f32],
    y: &[usize],
    rng: &mut Rng,
) -> Result<StepStats> {
    let k = net.num_classes();
    let len = net.example_len();
    let b = y.len();
    let y1 = onehot(y, k);
    let steps = cfg.attack_steps;
    let pgd_alpha = cfg.step_size.unwrap_or(2.5 * threat.eps / steps as f32);
    let (grads, stats) = match cfg.method {
        Method::Mixed | Method::Pgd | Method::Fast => {
            let na = match cfg.method {
                Method::Mixed => ((cfg.adv_ratio * b as f32).round() as usize).min(b),
                _ => b,
            };
            let mut x = x0.to_vec();
            if na > 0 {
                let c0 = &x0[..na * len];
                let start = threat.random_start(c0, len, rng);
                let heads = [y1[..na * k].to_vec()];
                // FGSM-RS: one step of 1.25 eps; PGD: `steps` of 2.5 eps / steps.
                let (n_steps, alpha) = match cfg.method {
                    Method::Fast => (1, cfg.step_size.unwrap_or(1.25 * threat.eps)),
                    _ => (steps, pgd_alpha),
                };
                let ce = LossKind::CrossEntropy;
                let adv = perturb(net, ce, &heads, c0, start, threat, n_steps, alpha)?;
                x[..na * len].copy_from_slice(&adv);
            }
            if net.resident() {
                let ce = LossKind::CrossEntropy;
                match net.resident_step(opt, ce, &x, std::slice::from_ref(&y1)) {
                    Ok((logits, loss)) => {
                        return Ok(StepStats {
                            loss_sum: loss.iter().map(|v| *v as f64).sum(),
                            correct: correct_count(&logits, y),
                        })
                    }
                    // The step undone (the weights and the step count as they were),
                    // then run on the host.
                    Err(e) if crate::runtime::is_out_of_memory(&e) => {
                        net.leave_runtime_memory(opt, &e)?
                    }
                    Err(e) => return Err(e),
                }
            }
            let out = net.run_graph(LossKind::CrossEntropy, true, b, &x, &[y1])?;
            let stats = StepStats {
                loss_sum: out.loss.iter().map(|v| *v as f64).sum(),
                correct: correct_count(&out.logits, y),
            };
            (out.param_grads, stats)
        }
        Method::Trades => {
            let zc = net.logits(x0)?;
            let zc: Vec<f32> = zc.iter().copied().collect();
            let pc = softmax_rows(&zc, k);
            // Start next to the clean point, as in the paper (0.001 * N(0, 1)).
            let mut start: Vec<f32> = x0.iter().map(|v| v + 0.001 * rng.normal()).collect();
            threat.project(&mut start, x0, len);
            let heads = [pc.clone()];
            let xa = perturb(
                net,
                LossKind::Kl,
                &heads,
                x0,
                start,
                threat,
                steps,
                pgd_alpha,
            )?;
            let (grads, loss_sum) = trades_grads(net, x0, &xa, y, &pc, cfg.beta)?;
            let zc = ndarray::Array2::from_shape_vec((b, k), zc)?;
            let stats = StepStats {
                loss_sum,
                correct: correct_count(&zc, y),
            };
            (grads, stats)
        }
    };
    if grads.iter().any(|g| g.iter().any(|v| !v.is_finite())) {
        bail!(DIVERGED);
    }
    let scale = 1.0 / b as f32;
    let grads: Vec<Vec<f32>> = grads
        .into_iter()
        .map(|g| g.into_iter().map(|v| v * scale).collect())
        .collect();
    let threads = net.threads();
    net.sync_optimizer(opt, true)?;
    let mut views: Vec<&mut [f32]> = net
        .weights_mut()?
        .iter_mut()
        .map(|v| {
            v.as_slice_mut()
                .ok_or_else(|| anyhow::anyhow!("weights are not contiguous"))
        })
        .collect::<Result<_>>()?;
    let gviews: Vec<&[f32]> = grads.iter().map(Vec::as_slice).collect();
    opt.step_on(&mut views, &gviews, threads);
    Ok(stats)
}

/// Clean and PGD accuracy on the validation examples with the current weights.
fn validate(
    net: &mut TrainNet,
    val: &Examples,
    threat: &Threat,
    cfg: &HardenConfig,
    epoch: usize,
) -> Result<Option<(f64, f64)>> {
    if val.is_empty() {
        return Ok(None);
    }
    let logits = net.logits(&val.x)?;
    let clean: Vec<bool> = logits
        .rows()
        .into_iter()
        .zip(&val.y)
        .map(|(r, y)| r.as_slice().map(argmax) == Some(*y))
        .collect();
    let pcfg = pgd::PgdConfig {
        steps: cfg.val_steps,
        seed: cfg.seed ^ STREAM_VAL ^ epoch as u64,
        ..Default::default()
    };
    let out = pgd::pgd(net, &val.x, &val.y, None, threat, &pcfg)?;
    let n = val.len() as f64;
    let c = clean.iter().filter(|v| **v).count() as f64;
    let r = clean
        .iter()
        .zip(&out.success)
        .filter(|(c, s)| **c && !**s)
        .count() as f64;
    Ok(Some((c / n, r / n)))
}

fn values_of(net: &mut TrainNet) -> Result<Vec<Vec<f32>>> {
    Ok(net
        .weights()?
        .iter()
        .map(|v| v.iter().copied().collect())
        .collect())
}

fn set_values(net: &mut TrainNet, params: &[Vec<f32>]) -> Result<()> {
    let values = net.weights_mut()?;
    if params.len() != values.len() {
        bail!(
            "the checkpoint holds {} weight tensors, the model {}",
            params.len(),
            values.len()
        );
    }
    for (v, p) in values.iter_mut().zip(params) {
        if v.len() != p.len() {
            bail!("the checkpoint's weights do not fit the model");
        }
        v.iter_mut().zip(p).for_each(|(a, b)| *a = *b);
    }
    Ok(())
}

/// Fine-tunes `net` on `train` against `threat`, keeping the weights with the best
/// validation robust accuracy (epoch 0, the original, included). With `resume`, continues
/// from a checkpoint of the same run.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    net: &mut TrainNet,
    train: &Examples,
    val: &Examples,
    threat: &Threat,
    cfg: &HardenConfig,
    ckpt: Option<&Checkpointing<'_>>,
    resume: Option<checkpoint::State>,
    progress: &mut dyn FnMut(Event<'_>),
    clock: &mut dyn FnMut() -> f64,
) -> Result<FitResult> {
    cfg.check()?;
    if train.is_empty() {
        bail!("no training examples");
    }
    let b = cfg.batch_size.min(train.len());
    let per_epoch = train.len() / b;
    let mut ocfg = cfg.optim.clone();
    ocfg.total_steps = (per_epoch * cfg.epochs) as u64;
    ocfg.warmup_steps = (cfg.warmup_epochs * per_epoch as f32).round() as u64;
    let mut opt = Optimizer::new(ocfg, &net.shapes());
    let fingerprint = ckpt.map(|c| c.fingerprint.clone()).unwrap_or_default();
    let train_threat = cfg.train_threat(threat)?;

    let mut state = match resume {
        Some(s) => {
            if s.fingerprint != fingerprint {
                bail!("the checkpoint belongs to another model or other settings; remove it or drop --resume");
            }
            set_values(net, &s.params)?;
            if s.opt_m.len() != opt.m.len() || s.opt_v.len() != opt.v.len() {
                bail!("the checkpoint's optimiser state does not fit the model");
            }
            opt.m = s.opt_m.clone();
            opt.v = s.opt_v.clone();
            opt.t = s.opt_t;
            s
        }
        None => {
            progress(Event::Validating { epoch: 0 });
            let t0 = clock();
            let v = validate(net, val, threat, cfg, 0)?;
            let row = EpochRow {
                epoch: 0,
                lr: 0.0,
                train_loss: None,
                train_accuracy: None,
                val_clean: v.map(|v| v.0),
                val_robust: v.map(|v| v.1),
                seconds: clock() - t0,
            };
            progress(Event::Epoch(&row));
            checkpoint::State {
                fingerprint: fingerprint.clone(),
                epoch: 0,
                batch: 0,
                params: values_of(net)?,
                opt_m: opt.m.clone(),
                opt_v: opt.v.clone(),
                opt_t: 0,
                best: checkpoint::Best {
                    epoch: 0,
                    robust: v.map_or(-1.0, |v| v.1),
                    clean: v.map_or(-1.0, |v| v.0),
                    params: values_of(net)?,
                },
                history: vec![row],
                stale: 0,
                running: (0.0, 0, 0),
                seconds: 0.0,
            }
        }
    };
    net.start_optimizer(&opt)?;
    let t_start = clock() - state.seconds;
    let save = |state: &mut checkpoint::State,
                net: &mut TrainNet,
                opt: &mut Optimizer,
                now: f64|
     -> Result<()> {
        if let Some(c) = ckpt {
            state.params = values_of(net)?;
            net.sync_optimizer(opt, false)?;
            state.opt_m = opt.m.clone();
            state.opt_v = opt.v.clone();
            state.opt_t = opt.t;
            state.seconds = now - t_start;
            checkpoint::save(c.path, state)?;
        }
        Ok(())
    };
    let stopped_early = |s: &checkpoint::State| cfg.patience.is_some_and(|p| s.stale >= p);

    while state.epoch < cfg.epochs && !stopped_early(&state) {
        let epoch = state.epoch + 1;
        let t_epoch = clock();
        let mut order: Vec<usize> = (0..train.len()).collect();
        let mut rng = Rng::derive(cfg.seed ^ STREAM_SHUFFLE, epoch as u64);
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let lr = opt.cfg.lr_at(opt.t);
        for bi in state.batch..per_epoch {
            let (x, y) = train.gather(&order[bi * b..(bi + 1) * b]);
            let mut rng = Rng::derive(cfg.seed ^ STREAM_ATTACK, ((epoch as u64) << 32) | bi as u64);
            let s = train_step(net, &mut opt, cfg, &train_threat, &x, &y, &mut rng)?;
            for n in net.take_notes() {
                progress(Event::Note(&n));
            }
            state.running.0 += s.loss_sum;
            state.running.1 += s.correct;
            state.running.2 += y.len() as u64;
            state.batch = bi + 1;
            progress(Event::Batch {
                epoch,
                done: bi + 1,
                of: per_epoch,
            });
            if let Some(c) = ckpt {
                if c.every_batches > 0 && (bi + 1) % c.every_batches == 0 && bi + 1 < per_epoch {
                    save(&mut state, net, &mut opt, clock())?;
                }
            }
        }
        progress(Event::Validating { epoch });
        let v = validate(net, val, threat, cfg, epoch)?;
        for n in net.take_notes() {
            progress(Event::Note(&n));
        }
        let (loss, correct, seen) = state.running;
        let row = EpochRow {
            epoch,
            lr,
            train_loss: Some(loss / seen.max(1) as f64),
            train_accuracy: Some(correct as f64 / seen.max(1) as f64),
            val_clean: v.map(|v| v.0),
            val_robust: v.map(|v| v.1),
            seconds: clock() - t_epoch,
        };
        progress(Event::Epoch(&row));
        state.history.push(row);
        // Without validation examples the last epoch is kept.
        // Ties on robust accuracy go to the better clean accuracy.
        let better = |(c, r): (f64, f64)| {
            r > state.best.robust || (r == state.best.robust && c > state.best.clean)
        };
        if v.is_none_or(better) {
            state.best = checkpoint::Best {
                epoch,
                robust: v.map_or(-1.0, |v| v.1),
                clean: v.map_or(-1.0, |v| v.0),
                params: values_of(net)?,
            };
            state.stale = 0;
        } else {
            state.stale += 1;
        }
        state.epoch = epoch;
        state.batch = 0;
        state.running = (0.0, 0, 0);
        save(&mut state, net, &mut opt, clock())?;
    }
    Ok(FitResult {
        best_epoch: state.best.epoch,
        best_val_robust: state.best.robust,
        best_val_clean: state.best.clean,
        params: state.best.params,
        history: state.history,
        epochs_run: state.epoch,
        resident: net.resident() && cfg.method != Method::Trades,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classifier::RunOptions;
    use crate::runtime::{OrtLocator, RuntimeChoice};
    use crate::testutil::assert_close;

    fn mlp_net() -> TrainNet {
        mlp_net_on(1, 6)
    }

    fn mlp_net_on(threads: usize, batch: usize) -> TrainNet {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mlp.onnx");
        let m = crate::model::OnnxModel::load(&path).unwrap();
        let params = crate::autodiff::trainable_params(&m.proto);
        let opts = RunOptions {
            runtime: RuntimeChoice::Tract,
            threads,
            batch_size: batch,
            ort: OrtLocator::standard(None, None, None),
            step_loop: None,
        };
        TrainNet::new(m.proto, "x", &[784], 10, params, &opts, batch).unwrap()
    }

    /// A batch cut into parts over threads, and parts into runs (runtime::Split), gives
    /// the whole batch's outputs: per-example ones in order, weight gradients summed over
    /// the runs.
    #[test]
    fn split_batch_gives_the_whole_batch_outputs() {
        // Parts of 19 and 18 on two threads, 13/12/12 on three; with runs of at most 8
        // (MIN_PART) examples, 10+9 and 9+9 on two threads (two run sizes on the first),
        // 10+9+9+9 on one.
        let b = 37;
        let mut rng = Rng::new(5);
        let x: Vec<f32> = (0..b * 784).map(|_| rng.range(0.0, 1.0)).collect();
        let y: Vec<usize> = (0..b).map(|i| (i * 7) % 10).collect();
        let heads = [onehot(&y, 10)];
        let whole = mlp_net_on(1, b)
            .run_graph(LossKind::CrossEntropy, true, b, &x, &heads)
            .unwrap();
        for (threads, chunk) in [(2, None), (3, None), (2, Some(8)), (1, Some(8))] {
            let mut net = mlp_net_on(threads, b);
            net.chunk = chunk;
            let parts = net
                .run_graph(LossKind::CrossEntropy, true, b, &x, &heads)
                .unwrap();
            let close = |a: &[f32], c: &[f32], what: &str| {
                let what = format!("{what} ({threads} threads, runs of {chunk:?})");
                assert_close(a, c, 1e-4, &what)
            };
            close(
                whole.logits.as_slice().unwrap(),
                parts.logits.as_slice().unwrap(),
                "logits",
            );
            close(&whole.loss, &parts.loss, "loss");
            close(&whole.grad, &parts.grad, "input gradient");
            assert_eq!(whole.param_grads.len(), parts.param_grads.len());
            for (w, p) in whole.param_grads.iter().zip(&parts.param_grads) {
                close(w, p, "weight gradient");
            }
        }
    }

    fn trades_loss(net: &mut TrainNet, x0: &[f32], xa: &[f32], y: &[usize], beta: f32) -> f64 {
        let k = 10;
        let pc = softmax_rows(
            &net.logits(x0).unwrap().iter().copied().collect::<Vec<_>>(),
            k,
        );
        let q = softmax_rows(
            &net.logits(xa).unwrap().iter().copied().collect::<Vec<_>>(),
            k,
        );
        let mut l = 0.0f64;
        for i in 0..y.len() {
            let (p, qi) = (&pc[i * k..(i + 1) * k], &q[i * k..(i + 1) * k]);
            let kl: f64 = p
                .iter()
                .zip(qi)
                .map(|(a, c)| *a as f64 * ((*a as f64).ln() - (*c as f64).ln()))
                .sum();
            l += -(p[y[i]] as f64).ln() + beta as f64 * kl;
        }
        l
    }

    /// The assembled TRADES gradient (both branches) against central differences of the
    /// loss along random directions in weight space.
    #[test]
    fn trades_gradient_matches_finite_differences() {
        let mut net = mlp_net();
        let mut rng = Rng::new(3);
        let b = 6;
        let x0: Vec<f32> = (0..b * 784).map(|_| rng.range(0.0, 1.0)).collect();
        let xa: Vec<f32> = x0
            .iter()
            .map(|v| (v + rng.range(-0.1, 0.1)).clamp(0.0, 1.0))
            .collect();
        let y: Vec<usize> = (0..b).map(|i| (i * 3) % 10).collect();
        let beta = 6.0;
        let pc = softmax_rows(
            &net.logits(&x0).unwrap().iter().copied().collect::<Vec<_>>(),
            10,
        );
        let (grads, loss) = trades_grads(&mut net, &x0, &xa, &y, &pc, beta).unwrap();
        let l0 = trades_loss(&mut net, &x0, &xa, &y, beta);
        assert!(
            (loss - l0).abs() < 1e-3 * l0.abs().max(1.0),
            "{loss} vs {l0}"
        );
        let theta = values_of(&mut net).unwrap();
        for dir in 0..3 {
            let v: Vec<Vec<f32>> = theta
                .iter()
                .map(|t| t.iter().map(|_| rng.normal()).collect())
                .collect();
            let norm = v.iter().flatten().map(|a| a * a).sum::<f32>().sqrt();
            let h = 1e-2f32;
            let shifted = |s: f32| -> Vec<Vec<f32>> {
                theta
                    .iter()
                    .zip(&v)
                    .map(|(t, d)| t.iter().zip(d).map(|(a, b)| a + s * h * b / norm).collect())
                    .collect()
            };
            set_values(&mut net, &shifted(1.0)).unwrap();
            let lp = trades_loss(&mut net, &x0, &xa, &y, beta);
            set_values(&mut net, &shifted(-1.0)).unwrap();
            let lm = trades_loss(&mut net, &x0, &xa, &y, beta);
            set_values(&mut net, &theta).unwrap();
            let fd = (lp - lm) / (2.0 * h as f64);
            let an: f64 = grads
                .iter()
                .flatten()
                .zip(v.iter().flatten())
                .map(|(g, d)| *g as f64 * *d as f64 / norm as f64)
                .sum();
            assert!(
                (fd - an).abs() <= 2e-2 * fd.abs().max(an.abs()).max(1e-2),
                "direction {dir}: finite difference {fd} vs gradient {an}"
            );
        }
    }
}
