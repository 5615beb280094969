//! Sanity checks: signs that an audit's robust accuracy cannot be trusted (Carlini et al.
//! 2019, "On Evaluating Adversarial Robustness"; Croce & Hein 2020). Each check passes,
//! is flagged (saying what it means and what to do) or did not run (saying why).
//!
//! They run on small probes taken during the audit: the first batch (run twice more for
//! randomness), the first labelled examples (input gradients) and the first clean-correct
//! examples (attacked again with FGSM, with more budget, and at a large eps), plus the
//! per-example cross checks between attack kinds that `robust.rs` counts over the whole
//! run. Every adversarial example a probe counts is re-checked by a plain forward pass.

use anyhow::Result;
use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::attack::pgd::PgdConfig;
use crate::attack::square::Geometry;
use crate::attack::{gather, Head, Norm, Oracle, Threat};

use crate::model::OutputKind;
use crate::oracle::ModelOracle;
use crate::robust::{predictions, run_attack_at, AttackKind, AttackSpec, RobustPlan, RobustReport};

/// Labelled examples whose input gradient is checked.
pub const GRADIENT_PROBE: usize = 64;
/// Clean-correct examples attacked again by the attack checks.
pub const ATTACK_PROBE: usize = 32;
/// Examples of the first batch run twice more for the randomness check.
pub const REPEAT_PROBE: usize = 64;
/// Share of probed points with a zero input gradient above which the check is flagged.
pub const ZERO_GRADIENT_SHARE: f64 = 0.05;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Passed,
    Flagged,
    NotRun,
}

/// The outcome of one check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub id: String,
    /// What a passing model shows.
    pub title: String,
    pub status: Status,
    /// What was measured (or why the check did not run).
    pub evidence: String,
    /// When flagged: what it means and what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub meaning: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
}

pub struct Def {
    pub id: &'static str,
    pub title: &'static str,
    pub meaning: &'static str,
    pub action: &'static str,
}

const MASKING_ACTION: &str = "Do not trust robust accuracy from gradient attacks on this \
model. Run the gradient-free Square attack (--attacks standard includes it), more restarts \
and APGD (its step size adapts); for non-differentiable or random parts, attack through a \
differentiable stand-in (BPDA) or average gradients over samples (EOT). Report the lowest \
robust accuracy found.";

pub const LOGITS: Def = Def {
    id: "logits-output",
    title: "The model outputs logits, not probabilities",
    meaning: "The model ends in a Softmax. Probabilities saturate: on confidently classified \
points the loss and its gradient underflow, so gradient attacks stall and robust accuracy is \
overstated. (Accuracy itself is unaffected.)",
    action: "Export the model without its final Softmax (the argmax is unchanged) and audit \
that; meanwhile read gradient-attack results as upper bounds.",
};

pub const GRADIENTS: Def = Def {
    id: "input-gradients",
    title: "Input gradients are finite and non-zero",
    meaning: "The loss has a zero, NaN or infinite input gradient on many points: the model is \
flat around them (rounding, quantisation, thresholds, saturated activations) or numerically \
broken. Gradient attacks cannot move from such points, so their robust accuracy is an \
overestimate (gradient masking).",
    action: MASKING_ACTION,
};

pub const SINGLE_STEP: Def = Def {
    id: "iterative-beats-single-step",
    title: "Iterative attacks are at least as strong as single-step ones",
    meaning: "One large step (FGSM) found adversarial examples that the iterative attack, \
which can take the same step, missed: the loss is non-monotone or misleading along the \
attack path (gradient obfuscation), or the iterative attack's step size is wrong for this \
model.",
    action: MASKING_ACTION,
};

pub const BUDGET: Def = Def {
    id: "budget-monotone",
    title: "More steps and restarts do not raise robust accuracy",
    meaning: "The iterative attack with twice the steps and one more restart broke fewer \
examples than with the run's budget. A stronger attack should never find less; this happens \
when gradients mislead the attack (obfuscated gradients) or its step size shrinks with the \
number of steps into a trap.",
    action: MASKING_ACTION,
};

pub const LARGE_EPS: Def = Def {
    id: "large-eps-chance",
    title: "Robust accuracy falls towards chance at a large eps",
    meaning: "At an eps this large every input can be moved to the same mid-range input, so \
a working attack leaves at most about one class robust. A robust accuracy well above chance \
here means the attack does not work on this model, and every robust accuracy in this report \
is suspect.",
    action: MASKING_ACTION,
};

pub const BLACK_BOX: Def = Def {
    id: "white-box-beats-black-box",
    title: "The gradient-free Square attack does not beat the white-box attacks",
    meaning: "Square, which sees only the model's outputs, broke examples that the gradient \
attacks tried and missed. With working gradients white-box attacks are stronger; this is the \
classic sign of gradient masking.",
    action: MASKING_ACTION,
};

pub const RANDOMNESS: Def = Def {
    id: "deterministic-forward",
    title: "The forward pass is deterministic",
    meaning: "The same inputs gave different outputs on repeated runs: the model draws random \
numbers at inference (random ops, dropout left in training mode). Attacks see a moving \
target, a robust accuracy measured once is not what users get, and the randomness can hide \
gradients.",
    action: "Export the model in inference mode (no random ops, dropout off). To evaluate a \
randomised defence on purpose, average gradients over many samples (EOT) and report the \
accuracy of repeated predictions.",
};

pub const ATTACKED: Def = Def {
    id: "examples-attacked",
    title: "Some examples were attacked",
    meaning: "No labelled example is classified correctly, so no example was attacked: the \
robust accuracy is 0% by construction and says nothing about robustness. Usually the data \
does not match the model: labels or class order, value range, normalisation, channel order \
or image size differ from what the model was trained on.",
    action: "Fix clean accuracy first: compare the labels and their order with the model's \
classes (--class-names shows names), the input range and normalisation (--input-range, \
--mean/--std, --preset imagenet) and the image size (--resize, --crop).",
};

/// Every check, in report order.
pub const ALL: [&Def; 8] = [
    &LOGITS,
    &GRADIENTS,
    &RANDOMNESS,
    &ATTACKED,
    &SINGLE_STEP,
    &BUDGET,
    &LARGE_EPS,
    &BLACK_BOX,
];

impl Def {
    fn check(&self, flagged: bool, evidence: String) -> Check {
        Check {
            id: self.id.into(),
            title: self.title.into(),
            status: if flagged {
                Status::Flagged
            } else {
                Status::Passed
            },
            evidence,
            meaning: flagged.then(|| self.meaning.into()),
            action: flagged.then(|| self.action.into()),
        }
    }

    fn not_run(&self, why: impl Into<String>) -> Check {
        Check {
            id: self.id.into(),
            title: self.title.into(),
            status: Status::NotRun,
            evidence: why.into(),
            meaning: None,
            action: None,
        }
    }
}

/// How many of `n` compared examples may disagree before a check is flagged:
/// more than 2 and more than 5% of them.
pub fn tolerance(n: u64) -> u64 {
    2.max((n as f64 * 0.05).floor() as u64)
}

/// Facts about the audit the checks need.
pub struct Facts {
    pub output_kind: OutputKind,
    pub rows_like_probabilities: u64,
    pub examples: u64,
    pub classes: usize,
    pub range: (f32, f32),
    pub geometry: Geometry,
    /// Values per example (the model's input).
    pub example_len: usize,
    /// Labelled examples, and those classified correctly (the ones attacks run on).
    pub labelled: u64,
    pub correct: u64,
    /// The model's rounding ops and `--through-rounding` (said by the gradient check).
    pub rounding: Option<crate::model::quant::RoundingFacts>,
}

/// The probes, filled during the audit's pass over the data.
pub struct Probe {
    enabled: bool,
    len: usize,
    repeat_x: Vec<f32>,
    repeat_logits: Vec<f32>,
    grad_x: Vec<f32>,
    grad_y: Vec<usize>,
    atk_x: Vec<f32>,
    atk_y: Vec<usize>,
    /// The attack probe's data positions (its examples' random streams).
    atk_ids: Vec<u64>,
}

/// What the probes measured (the model runs of the checks), kept apart from the checks
/// built on them so that an audit in shards (`--shard`) can carry them in its part and
/// `report merge` can build the same checks from the merged numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeFacts {
    pub gradients: Check,
    pub randomness: Check,
    /// The attack probe: why it did not run, or what it measured (`None` without
    /// attacks).
    pub attack: Option<AttackProbe>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttackProbe {
    NotRun(String),
    Ran {
        /// Clean-correct probe examples.
        n: u64,
        /// Per eps of the plan.
        per_eps: Vec<EpsProbe>,
        /// Probe examples the iterative attack leaves robust at the large eps.
        robust_at_large_eps: u64,
    },
}

/// The attack probe at one eps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpsProbe {
    /// Broken by FGSM and not by the iterative attack, and the other way round.
    pub fgsm_only: u64,
    pub iterative_only: u64,
    /// Left robust by the iterative attack, and by the stronger one.
    pub robust_base: u64,
    pub robust_more: u64,
}

impl Probe {
    pub fn new(enabled: bool) -> Probe {
        Probe {
            enabled,
            len: 0,
            repeat_x: vec![],
            repeat_logits: vec![],
            grad_x: vec![],
            grad_y: vec![],
            atk_x: vec![],
            atk_y: vec![],
            atk_ids: vec![],
        }
    }

    /// Whether the probes still take examples (the caller must then hand them every
    /// example of the data in order, not only its shard's).
    pub fn wants_more(&self) -> bool {
        self.enabled
            && (self.repeat_x.is_empty()
                || self.grad_y.len() < GRADIENT_PROBE
                || self.atk_y.len() < ATTACK_PROBE)
    }

    /// Takes what the probes need from one batch (`x` mapped, `logits` its outputs).
    /// `first`: the data position of the batch's first example.
    pub fn add_batch(
        &mut self,
        x: &[f32],
        logits: &Array2<f32>,
        labels: &[Option<usize>],
        len: usize,
        first: u64,
    ) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let preds: Vec<usize> = logits
            .rows()
            .into_iter()
            .map(|r| crate::metrics::argmax(&r.iter().copied().collect::<Vec<_>>()))
            .collect();
        self.len = len;
        if self.repeat_x.is_empty() {
            let n = labels.len().min(REPEAT_PROBE);
            self.repeat_x = x[..n * len].to_vec();
            self.repeat_logits = logits
                .rows()
                .into_iter()
                .take(n)
                .flatten()
                .copied()
                .collect();
        }
        for (i, l) in labels.iter().enumerate() {
            let Some(y) = *l else { continue };
            if self.grad_y.len() < GRADIENT_PROBE {
                self.grad_x.extend_from_slice(&x[i * len..(i + 1) * len]);
                self.grad_y.push(y);
            }
            if preds[i] == y && self.atk_y.len() < ATTACK_PROBE {
                self.atk_x.extend_from_slice(&x[i * len..(i + 1) * len]);
                self.atk_y.push(y);
                self.atk_ids.push(first + i as u64);
            }
        }
        Ok(())
    }

    /// Runs the checks.
    pub fn finish(
        &self,
        oracle: &mut ModelOracle,
        facts: &Facts,
        plan: Option<&RobustPlan>,
        robust: Option<&RobustReport>,
    ) -> Result<Vec<Check>> {
        let measured = self.measure(oracle, facts, plan)?;
        Ok(checks(&measured, facts, plan, robust))
    }

    /// Runs the probes on the model: everything the checks need besides the audit's
    /// numbers.
    pub fn measure(
        &self,
        oracle: &mut ModelOracle,
        facts: &Facts,
        plan: Option<&RobustPlan>,
    ) -> Result<ProbeFacts> {
        let prepared = oracle.prepare(crate::autodiff::LossKind::CrossEntropy);
        let grads_ok = crate::runtime::unless_out_of_memory(prepared)?
            .map_err(|e| format!("no gradient graph for this model: {e:#}"));
        let gradients = match &grads_ok {
            Err(why) => GRADIENTS.not_run(why.clone()),
            Ok(()) if self.grad_y.is_empty() => GRADIENTS.not_run("the data has no labels"),
            Ok(()) => self.gradient_check(oracle, facts)?,
        };
        let randomness = self.randomness_check(oracle)?;
        let attack = match (plan, &grads_ok, self.atk_y.is_empty()) {
            (None, _, _) => None,
            (Some(_), Err(why), _) => Some(AttackProbe::NotRun(why.clone())),
            (Some(_), Ok(()), true) => Some(AttackProbe::NotRun(
                "no clean-correct labelled example to attack".into(),
            )),
            (Some(plan), Ok(()), false) => Some(self.attack_probe(oracle, facts, plan)?),
        };
        Ok(ProbeFacts {
            gradients,
            randomness,
            attack,
        })
    }

    fn gradient_check(&self, oracle: &mut ModelOracle, facts: &Facts) -> Result<Check> {
        let head = Head::CrossEntropy {
            labels: &self.grad_y,
        };
        let lg = match crate::runtime::unless_out_of_memory(oracle.loss_grad(&self.grad_x, head))? {
            Ok(lg) => lg,
            Err(e) => return Ok(GRADIENTS.not_run(format!("the gradient graph failed: {e:#}"))),
        };
        let n = self.grad_y.len();
        let (mut zero, mut bad) = (0u64, 0u64);
        for g in lg.grad.chunks(self.len) {
            if g.iter().any(|v| !v.is_finite()) {
                bad += 1;
            } else if g.iter().all(|v| *v == 0.0) {
                zero += 1;
            }
        }
        let flagged = bad > 0 || zero as f64 > ZERO_GRADIENT_SHARE * n as f64;
        let mut detail = format!(
            "cross-entropy input gradient at the first {n} labelled examples: {zero} all zero, \
             {bad} NaN or infinite (flagged above {:.0}% zero or any non-finite)",
            100.0 * ZERO_GRADIENT_SHARE
        );
        if let Some(r) = &facts.rounding {
            detail.push_str("; ");
            detail.push_str(&r.describe());
        }
        Ok(GRADIENTS.check(flagged, detail))
    }

    fn randomness_check(&self, oracle: &mut ModelOracle) -> Result<Check> {
        let n = self.repeat_logits.len();
        if self.repeat_x.is_empty() || n == 0 {
            return Ok(RANDOMNESS.not_run("no examples"));
        }
        let scale = self
            .repeat_logits
            .iter()
            .fold(0f32, |m, v| m.max(v.abs()))
            .max(1e-6);
        let mut worst = 0f32;
        for _ in 0..2 {
            let again = oracle.logits(&self.repeat_x)?;
            for (a, b) in again.iter().zip(&self.repeat_logits) {
                let d = (a - b).abs();
                worst = if d.is_nan() {
                    f32::INFINITY
                } else {
                    worst.max(d)
                };
            }
        }
        let examples = self.repeat_x.len() / self.len.max(1);
        Ok(RANDOMNESS.check(
            worst > 1e-5 * scale,
            format!(
                "the first {examples} examples run 3 times: largest output difference {} (outputs up to {}; flagged above 1e-5 of that)",
                fmt_g(worst),
                fmt_g(scale)
            ),
        ))
    }

    /// FGSM versus the iterative attack, the iterative attack with more budget, and the
    /// iterative attack at a large eps, on the attack probe.
    fn attack_probe(
        &self,
        oracle: &mut ModelOracle,
        facts: &Facts,
        plan: &RobustPlan,
    ) -> Result<AttackProbe> {
        let iterative = probe_attack(plan);
        let stronger = iterative.stronger().unwrap_or_else(|| iterative.clone());
        let mut per_eps = vec![];
        for &eps in &plan.eps {
            let threat = Threat::new(plan.norm, eps, facts.range)?;
            let base = self.confirmed(oracle, &iterative, &threat, facts.geometry)?;
            let fgsm = self.confirmed(oracle, &AttackSpec::Fgsm, &threat, facts.geometry)?;
            let more = self.confirmed(oracle, &stronger, &threat, facts.geometry)?;
            let count =
                |f: &dyn Fn(usize) -> bool| (0..base.len()).filter(|i| f(*i)).count() as u64;
            per_eps.push(EpsProbe {
                fgsm_only: count(&|i| fgsm[i] && !base[i]),
                iterative_only: count(&|i| base[i] && !fgsm[i]),
                robust_base: count(&|i| !base[i]),
                robust_more: count(&|i| !more[i]),
            });
        }
        let large = large_eps(plan.norm, facts.range, self.len);
        let threat = Threat::new(plan.norm, large, facts.range)?;
        let broken = self.confirmed(oracle, &iterative, &threat, facts.geometry)?;
        Ok(AttackProbe::Ran {
            n: self.atk_y.len() as u64,
            per_eps,
            robust_at_large_eps: broken.iter().filter(|b| !**b).count() as u64,
        })
    }

    /// Which probe examples `spec` breaks, each confirmed by a plain forward pass.
    fn confirmed(
        &self,
        oracle: &mut ModelOracle,
        spec: &AttackSpec,
        threat: &Threat,
        geometry: Geometry,
    ) -> Result<Vec<bool>> {
        let out = run_attack_at(
            spec,
            oracle,
            &self.atk_x,
            &self.atk_y,
            &self.atk_ids,
            threat,
            geometry,
        )?;
        let len = self.len;
        let idx: Vec<usize> = (0..self.atk_y.len()).filter(|i| out.success[*i]).collect();
        let mut res = vec![false; self.atk_y.len()];
        if idx.is_empty() {
            return Ok(res);
        }
        let adv = gather(&out.x_adv, &idx, len);
        let preds = predictions(&oracle.logits(&adv)?);
        for (m, &i) in idx.iter().enumerate() {
            let inside = threat.contains(
                &adv[m * len..(m + 1) * len],
                &self.atk_x[i * len..(i + 1) * len],
            );
            res[i] = inside && preds[m] != self.atk_y[i];
        }
        Ok(res)
    }
}

/// The checks from what the probes measured and the audit's numbers (`facts`, `robust`):
/// the same for one run and for shards merged by `report merge`.
pub fn checks(
    measured: &ProbeFacts,
    facts: &Facts,
    plan: Option<&RobustPlan>,
    robust: Option<&RobustReport>,
) -> Vec<Check> {
    let mut out = vec![
        logits_check(facts),
        measured.gradients.clone(),
        measured.randomness.clone(),
        attacked_check(facts, plan.is_some()),
    ];
    let Some(plan) = plan else {
        for d in [&SINGLE_STEP, &BUDGET, &LARGE_EPS, &BLACK_BOX] {
            out.push(d.not_run("needs attacks (--eps)"));
        }
        return out;
    };
    match &measured.attack {
        None => {
            for d in [&SINGLE_STEP, &BUDGET, &LARGE_EPS] {
                out.push(d.not_run("the attack probe did not run"));
            }
        }
        Some(AttackProbe::NotRun(why)) => {
            for d in [&SINGLE_STEP, &BUDGET, &LARGE_EPS] {
                out.push(d.not_run(why.clone()));
            }
        }
        Some(AttackProbe::Ran {
            n,
            per_eps,
            robust_at_large_eps,
        }) => out.extend(attack_checks(
            *n,
            per_eps,
            *robust_at_large_eps,
            facts,
            plan,
            robust,
        )),
    }
    out.push(black_box_check(plan, robust));
    out
}

/// The iterative attack the attack probe runs: the plan's first, else PGD.
fn probe_attack(plan: &RobustPlan) -> AttackSpec {
    let seed = plan.attacks.iter().find_map(seed_of).unwrap_or_default();
    plan.attacks
        .iter()
        .find(|a| a.kind() == AttackKind::Iterative)
        .cloned()
        .unwrap_or(AttackSpec::Pgd(PgdConfig {
            seed,
            ..Default::default()
        }))
}

fn attack_checks(
    n: u64,
    per_eps: &[EpsProbe],
    robust_at_large_eps: u64,
    facts: &Facts,
    plan: &RobustPlan,
    robust: Option<&RobustReport>,
) -> Vec<Check> {
    let iterative = probe_attack(plan);
    let stronger = iterative.stronger().unwrap_or_else(|| iterative.clone());
    let name = budget_name(&iterative);
    let tol = tolerance(n);
    let mut single_ev = vec![];
    let mut single_flag = false;
    let mut budget_ev = vec![];
    let mut budget_flag = false;
    for (e, (&eps, p)) in plan.eps.iter().zip(per_eps).enumerate() {
        let mut s = format!(
            "eps {eps}: on {n} clean-correct probe examples FGSM broke {} that {} missed ({} broke {} FGSM missed)",
            p.fgsm_only,
            iterative.name(),
            iterative.name(),
            p.iterative_only
        );
        single_flag |= p.fgsm_only > tol;
        if let Some(c) = robust
            .and_then(|r| r.results.get(e))
            .map(|r| &r.cross_checks)
            .filter(|_| {
                let has = |k| plan.attacks.iter().any(|a| a.kind() == k);
                has(AttackKind::SingleStep) && has(AttackKind::Iterative)
            })
        {
            s += &format!(
                "; in the run, single-step attacks broke {} of {} examples that iterative ones missed",
                c.single_step_beats_iterative, c.examples
            );
            single_flag |= c.single_step_beats_iterative > tolerance(c.examples);
        }
        single_ev.push(s);
        budget_flag |= p.robust_more > p.robust_base + tol;
        budget_ev.push(format!(
            "eps {eps}: {name} leaves {} of {n} probe examples robust, {} leaves {}",
            p.robust_base,
            budget_name(&stronger),
            p.robust_more
        ));
    }
    let note = format!(" (flagged when more than {tol} of {n} disagree)");
    let large = large_eps(plan.norm, facts.range, facts.example_len);
    let left = robust_at_large_eps as f64 / n as f64;
    let chance = 1.0 / facts.classes.max(1) as f64;
    let limit = chance + (1.0 - chance) / 2.0;
    vec![
        SINGLE_STEP.check(single_flag, single_ev.join("; ") + &note),
        BUDGET.check(budget_flag, budget_ev.join("; ") + &note),
        LARGE_EPS.check(
            left > limit,
            format!(
                "{name} at eps {} (half the input range{}) leaves {:.1}% of {n} clean-correct probe examples robust; chance is {:.1}% (flagged above {:.1}%, halfway from chance to 100%)",
                fmt_g(large),
                if plan.norm == Norm::L2 { ", times the square root of the input size" } else { "" },
                100.0 * left,
                100.0 * chance,
                100.0 * limit
            ),
        ),
    ]
}

fn logits_check(f: &Facts) -> Check {
    let softmax = f.output_kind == OutputKind::Probabilities;
    let all_rows = f.examples > 0 && f.rows_like_probabilities == f.examples;
    LOGITS.check(
        softmax || all_rows,
        format!(
            "the graph {} in a Softmax; {} of {} output rows are probability vectors",
            if softmax { "ends" } else { "does not end" },
            f.rows_like_probabilities,
            f.examples
        ),
    )
}

fn attacked_check(f: &Facts, attacks: bool) -> Check {
    if !attacks {
        return ATTACKED.not_run("needs attacks (--eps)");
    }
    if f.labelled == 0 {
        return ATTACKED.not_run("the data has no labels");
    }
    ATTACKED.check(
        f.correct == 0,
        format!(
            "{} of {} labelled examples are classified correctly and were attacked",
            f.correct, f.labelled
        ),
    )
}

fn black_box_check(plan: &RobustPlan, robust: Option<&RobustReport>) -> Check {
    let has = |k: AttackKind| plan.attacks.iter().any(|a| a.kind() == k);
    if !has(AttackKind::BlackBox) {
        return BLACK_BOX.not_run("needs the Square attack in --attacks (standard includes it)");
    }
    if !(has(AttackKind::Iterative) || has(AttackKind::SingleStep)) {
        return BLACK_BOX.not_run("needs a gradient attack in --attacks besides Square");
    }
    let Some(r) = robust else {
        return BLACK_BOX.not_run("no robust results");
    };
    let mut flagged = false;
    let ev: Vec<String> = r
        .results
        .iter()
        .map(|e| {
            let c = &e.cross_checks;
            flagged |= c.black_box_beats_white_box > tolerance(c.examples);
            format!(
                "eps {}: Square broke {} of {} clean-correct examples that every gradient attack tried and missed (flagged above {})",
                e.eps,
                c.black_box_beats_white_box,
                c.examples,
                tolerance(c.examples)
            )
        })
        .collect();
    BLACK_BOX.check(flagged, ev.join("; "))
}

/// Half the input range for Linf; for L2 the norm of moving every value by that much.
pub fn large_eps(norm: Norm, range: (f32, f32), len: usize) -> f32 {
    let half = (range.1 - range.0) / 2.0;
    match norm {
        Norm::Linf => half,
        Norm::L2 => half * (len as f32).sqrt(),
    }
}

fn seed_of(a: &AttackSpec) -> Option<u64> {
    match a {
        AttackSpec::Pgd(c) => Some(c.seed),
        AttackSpec::ApgdCe(c) | AttackSpec::ApgdDlr(c) | AttackSpec::ApgdT(c) => Some(c.seed),
        AttackSpec::Square(c) => Some(c.seed),
        AttackSpec::Fgsm => None,
    }
}

fn budget_name(a: &AttackSpec) -> String {
    match a.budget() {
        Some((steps, restarts)) => format!(
            "{} ({steps} steps, {restarts} restart{})",
            a.name(),
            if restarts == 1 { "" } else { "s" }
        ),
        None => a.name().to_string(),
    }
}

/// A short, stable rendering of a float.
pub fn fmt_g(v: f32) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e-3 && v.abs() < 1e4 {
        format!("{}", (v as f64 * 1e4).round() / 1e4)
    } else {
        format!("{v:.3e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerance_is_more_than_two_and_five_percent() {
        assert_eq!(tolerance(10), 2);
        assert_eq!(tolerance(32), 2);
        assert_eq!(tolerance(200), 10);
    }

    #[test]
    fn large_eps_reaches_the_middle() {
        assert_eq!(large_eps(Norm::Linf, (0.0, 1.0), 784), 0.5);
        assert_eq!(large_eps(Norm::L2, (0.0, 1.0), 16), 2.0);
    }

    #[test]
    fn nothing_attacked_is_flagged() {
        let facts = |labelled, correct| Facts {
            output_kind: OutputKind::Logits,
            rows_like_probabilities: 0,
            examples: 8,
            classes: 10,
            range: (0.0, 1.0),
            geometry: Geometry::Flat { len: 4 },
            example_len: 4,
            labelled,
            correct,
            rounding: None,
        };
        assert_eq!(attacked_check(&facts(8, 0), true).status, Status::Flagged);
        assert_eq!(attacked_check(&facts(8, 1), true).status, Status::Passed);
        assert_eq!(attacked_check(&facts(0, 0), true).status, Status::NotRun);
        assert_eq!(attacked_check(&facts(8, 0), false).status, Status::NotRun);
        assert!(attacked_check(&facts(8, 0), true).meaning.is_some());
    }

    #[test]
    fn every_check_is_listed_once() {
        let mut ids: Vec<&str> = ALL.iter().map(|d| d.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), ALL.len());
    }
}
