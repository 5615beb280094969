//! Attacks: each a small config plus one file that reads like its paper.
//!
//! Attacks see an [`Oracle`] (logits, and loss gradients from a gradient graph), never a
//! runtime. They work on a batch of examples flattened into one `&[f32]`, in the model's
//! raw input space, and every iterate is projected onto the eps-ball and the valid range
//! ([`Threat::project`]). An attack reports, per example, whether it found an
//! adversarial point and which point; the caller re-checks those points with a plain
//! forward pass of the original model.

use anyhow::{bail, Result};
use ndarray::Array2;

use crate::autodiff::step::{StepJob, StepRule, StepsDone};
use crate::metrics::argmax;

pub mod apgd;
pub mod fgsm;
pub mod pgd;
pub mod square;

#[cfg(test)]
pub(crate) mod testing;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Norm {
    Linf,
    L2,
}

impl Norm {
    /// `Linf` or `L2`, as reports and the card write it.
    pub fn name(self) -> &'static str {
        match self {
            Norm::Linf => "Linf",
            Norm::L2 => "L2",
        }
    }
}

/// The threat model: a norm ball of radius `eps` around each clean example, intersected
/// with the valid input range.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Threat {
    pub norm: Norm,
    pub eps: f32,
    pub range: (f32, f32),
}

impl Threat {
    pub fn new(norm: Norm, eps: f32, range: (f32, f32)) -> Result<Threat> {
        if !(eps.is_finite() && eps > 0.0) {
            bail!("eps must be a positive number, got {eps}");
        }
        if norm == Norm::Linf && eps >= range.1 - range.0 {
            bail!(
                "eps {eps} covers the whole input range [{}, {}]; every input would be allowed",
                range.0,
                range.1
            );
        }
        Ok(Threat { norm, eps, range })
    }

    /// Projects every example of `x` onto the ball around the matching example of `x0`,
    /// then into the valid range (which keeps it inside the ball, since `x0` is inside).
    pub fn project(&self, x: &mut [f32], x0: &[f32], len: usize) {
        let (lo, hi) = self.range;
        match self.norm {
            Norm::Linf => {
                for (v, c) in x.iter_mut().zip(x0) {
                    *v = v.clamp(c - self.eps, c + self.eps).clamp(lo, hi);
                }
            }
            Norm::L2 => {
                for (ex, ex0) in x.chunks_mut(len).zip(x0.chunks(len)) {
                    let n2: f32 = ex.iter().zip(ex0).map(|(a, b)| (a - b) * (a - b)).sum();
                    let n = n2.sqrt();
                    if n > self.eps {
                        let s = self.eps / n;
                        for (a, b) in ex.iter_mut().zip(ex0) {
                            *a = b + (*a - b) * s;
                        }
                    }
                    for a in ex.iter_mut() {
                        *a = a.clamp(lo, hi);
                    }
                }
            }
        }
    }

    /// Whether `x` lies in the ball around `x0` and in the range (with a float tolerance).
    pub fn contains(&self, x: &[f32], x0: &[f32]) -> bool {
        let (lo, hi) = self.range;
        let tol = 1e-5 * self.eps.max(1e-3);
        if x.iter()
            .any(|v| !v.is_finite() || *v < lo - tol || *v > hi + tol)
        {
            return false;
        }
        match self.norm {
            Norm::Linf => x
                .iter()
                .zip(x0)
                .all(|(a, b)| (a - b).abs() <= self.eps + tol),
            Norm::L2 => {
                let n2: f32 = x.iter().zip(x0).map(|(a, b)| (a - b) * (a - b)).sum();
                n2.sqrt() <= self.eps * (1.0 + 1e-5) + tol
            }
        }
    }

    /// A step of size `alpha` along the steepest-ascent direction of `g` for this norm:
    /// sign(g) for Linf, g/||g|| for L2 (per example).
    pub fn ascend(&self, x: &mut [f32], g: &[f32], alpha: &[f32], len: usize) {
        for (i, (ex, gx)) in x.chunks_mut(len).zip(g.chunks(len)).enumerate() {
            let a = alpha[i];
            match self.norm {
                Norm::Linf => {
                    for (v, d) in ex.iter_mut().zip(gx) {
                        *v += a * sign(*d);
                    }
                }
                Norm::L2 => {
                    let n = gx.iter().map(|d| d * d).sum::<f32>().sqrt().max(1e-12);
                    for (v, d) in ex.iter_mut().zip(gx) {
                        *v += a * d / n;
                    }
                }
            }
        }
    }

    /// [`Threat::random_start`] per example, each from its own stream
    /// ([`example_rng`]`(seed, stream, ids[i])`), so an example's start does not depend on
    /// the batch it is in.
    pub fn random_starts(
        &self,
        x0: &[f32],
        len: usize,
        seed: u64,
        stream: u64,
        ids: &[u64],
    ) -> Vec<f32> {
        let mut x = Vec::with_capacity(x0.len());
        for (ex, &id) in x0.chunks(len).zip(ids) {
            x.extend(self.random_start(ex, len, &mut example_rng(seed, stream, id)));
        }
        x
    }

    /// A uniformly random point of the ball (Linf) or of its surface scaled by U^(1/d)
    /// (L2), around each example of `x0`, clipped to the range.
    pub fn random_start(&self, x0: &[f32], len: usize, rng: &mut crate::rng::Rng) -> Vec<f32> {
        let mut x = x0.to_vec();
        match self.norm {
            Norm::Linf => {
                for v in x.iter_mut() {
                    *v += rng.range(-self.eps, self.eps);
                }
            }
            Norm::L2 => {
                for ex in x.chunks_mut(len) {
                    let d: Vec<f32> = (0..len).map(|_| rng.normal()).collect();
                    let n = d.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                    let r = self.eps * rng.uniform().powf(1.0 / len as f32);
                    for (v, dv) in ex.iter_mut().zip(&d) {
                        *v += r * dv / n;
                    }
                }
            }
        }
        self.project(&mut x, x0, len);
        x
    }
}

/// sign with sign(0) = 0, as in the FGSM paper.
pub fn sign(v: f32) -> f32 {
    if v > 0.0 {
        1.0
    } else if v < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// The loss an attack maximises, with the data it needs. Losses are per example and
/// written so that larger means closer to (or further into) misclassification.
#[derive(Clone, Copy, Debug)]
pub enum Head<'a> {
    /// Cross-entropy of the true labels.
    CrossEntropy { labels: &'a [usize] },
    /// Negative cross-entropy of the target labels (targeted attacks).
    TargetedCrossEntropy { targets: &'a [usize] },
    /// C&W margin: max over j != y of z_j, minus z_y.
    Margin { labels: &'a [usize] },
    /// DLR (Croce & Hein 2020): -(z_y - max_{j!=y} z_j) / (z_pi1 - z_pi3).
    Dlr { labels: &'a [usize] },
    /// Targeted DLR: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2).
    DlrTargeted {
        labels: &'a [usize],
        targets: &'a [usize],
    },
    /// KL(p || softmax(z)) to given probabilities, `n * k` values (TRADES).
    Kl { probs: &'a [f32] },
    /// sum_j c_j z_j with given coefficients, `n * k` values: the gradient is J^T c, so
    /// any objective's gradient can be taken one step behind its logits (falsification).
    Linear { coeffs: &'a [f32] },
}

impl Head<'_> {
    /// Smallest number of classes the head is defined for.
    pub fn min_classes(&self) -> usize {
        match self {
            Head::Dlr { .. } => 3,
            Head::DlrTargeted { .. } => 4,
            _ => 2,
        }
    }
}

/// Logits, per-example loss and the gradient of the summed loss w.r.t. the input.
#[derive(Clone, Debug)]
pub struct LossGrad {
    pub logits: Array2<f32>,
    pub loss: Vec<f32>,
    pub grad: Vec<f32>,
}

/// What attacks may ask of a model.
pub trait Oracle {
    fn num_classes(&self) -> usize;
    /// Values per example.
    fn example_len(&self) -> usize;
    /// Logits for `x` (`n * example_len` values).
    fn logits(&mut self, x: &[f32]) -> Result<Array2<f32>>;
    /// Loss and input gradient for `x` under `head`.
    fn loss_grad(&mut self, x: &[f32], head: Head<'_>) -> Result<LossGrad>;
    /// `job.steps` PGD steps from `x` (around `x0`) under `head`, each taking the
    /// iterate along the steepest-ascent direction and projecting it as `rule` says
    /// ([`Threat::ascend`], [`Threat::project`]), run by the model's runtime as a step
    /// graph ([`crate::autodiff::step`]); `None` when this oracle steps on the host only
    /// (the caller then runs its own loop on [`Oracle::loss_grad`]).
    fn run_steps(
        &mut self,
        _x: &[f32],
        _x0: &[f32],
        _head: Head<'_>,
        _rule: &StepRule,
        _job: &StepJob<'_>,
    ) -> Result<Option<StepsDone>> {
        Ok(None)
    }
}

/// What an attack found, per example.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// An adversarial point where `success[i]`, otherwise the attack's last point.
    pub x_adv: Vec<f32>,
    pub success: Vec<bool>,
    /// Forward (or forward+gradient) evaluations per example, summed.
    pub evaluations: u64,
    /// Per example: the evaluations spent on it (they add up to `evaluations`).
    pub spent: Vec<u64>,
}

impl Outcome {
    /// An attack's start on `n` examples at `x_adv`: nothing found, nothing spent.
    pub fn start(x_adv: Vec<f32>, n: usize) -> Outcome {
        Outcome {
            x_adv,
            success: vec![false; n],
            evaluations: 0,
            spent: vec![0; n],
        }
    }

    /// Counts one evaluation of each example of `idx`.
    pub fn spend(&mut self, idx: &[usize]) {
        for &i in idx {
            self.spent[i] += 1;
        }
        self.evaluations += idx.len() as u64;
    }

    /// Counts one evaluation of every example.
    pub fn spend_all(&mut self) {
        for s in &mut self.spent {
            *s += 1;
        }
        self.evaluations += self.spent.len() as u64;
    }
}

/// Whether logits row `row` counts as a success for the example's label (or target).
pub fn is_success(row: &[f32], label: usize, target: Option<usize>) -> bool {
    let p = argmax(row);
    match target {
        Some(t) => p == t,
        None => p != label,
    }
}

/// Records, for every example not yet successful, whether `logits` (evaluated at `x`)
/// are a success, and keeps that point.
pub(crate) fn record(
    out: &mut Outcome,
    logits: &Array2<f32>,
    x: &[f32],
    idx: &[usize],
    labels: &[usize],
    targets: Option<&[usize]>,
    len: usize,
) {
    for (j, row) in logits.rows().into_iter().enumerate() {
        let i = idx[j];
        if out.success[i] {
            continue;
        }
        let row: Vec<f32> = row.iter().copied().collect();
        if is_success(&row, labels[i], targets.map(|t| t[i])) {
            out.success[i] = true;
            out.x_adv[i * len..(i + 1) * len].copy_from_slice(&x[j * len..(j + 1) * len]);
        }
    }
}

/// Gathers the examples `idx` of `x` (each `len` values).
pub(crate) fn gather(x: &[f32], idx: &[usize], len: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(idx.len() * len);
    for &i in idx {
        out.extend_from_slice(&x[i * len..(i + 1) * len]);
    }
    out
}

/// Checks the common arguments of an attack call.
/// The random stream of one example in one run of an attack: derived from the attack's
/// seed, the run (`stream`: restart, target) and the example's position in the data
/// (`example`), never from its batch, so an example's outcome does not depend on its batch
/// neighbours, on batch boundaries or on how the data is sharded.
pub fn example_rng(seed: u64, stream: u64, example: u64) -> crate::rng::Rng {
    let base = crate::rng::Rng::derive(seed, stream).next_u64();
    crate::rng::Rng::derive(base, example)
}

/// Positions 0..n, for callers without data positions (each example of the batch its own
/// stream, numbered by its place in the batch).
pub fn local_ids(n: usize) -> Vec<u64> {
    (0..n as u64).collect()
}

pub(crate) fn check_batch(
    oracle: &dyn Oracle,
    x0: &[f32],
    labels: &[usize],
    head_min: usize,
) -> Result<usize> {
    let len = oracle.example_len();
    let k = oracle.num_classes();
    if len == 0 || x0.len() != labels.len() * len {
        bail!(
            "attack input holds {} values for {} labels of {} values each",
            x0.len(),
            labels.len(),
            len
        );
    }
    if k < head_min {
        bail!("this loss needs at least {head_min} classes; the model has {k}");
    }
    if let Some(y) = labels.iter().find(|y| **y >= k) {
        bail!("label {y} is out of range for a model with {k} classes");
    }
    Ok(len)
}
