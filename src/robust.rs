//! Robust evaluation: runs a list of attacks at each eps on the examples a model
//! classifies correctly, re-checks every adversarial example with a plain forward pass of
//! the original model (inside the eps-ball and the input range, misclassified), and
//! reports robust accuracy per attack and the per-example worst case over all attacks.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::attack::apgd::{apgd_at, ApgdConfig, ApgdLoss};
use crate::attack::fgsm::fgsm;
use crate::attack::pgd::{pgd_at, PgdConfig};
use crate::attack::square::{square_at, Geometry, SquareConfig};
use crate::attack::{gather, local_ids, Norm, Oracle, Outcome, Threat};
use crate::metrics::argmax;

/// The robust part of a report.
#[derive(Clone, Debug, Serialize)]
pub struct RobustReport {
    pub norm: Norm,
    pub range: (f32, f32),
    /// Attacks run as a cascade (each on the points the previous left robust)?
    pub cascade: bool,
    pub attacks: Vec<AttackSpec>,
    /// Labelled examples attacked (clean-correct ones are attacked, the others count as
    /// not robust).
    pub examples: u64,
    pub results: Vec<EpsResult>,
}

/// What to attack with during an audit.
pub struct RobustPlan {
    pub norm: Norm,
    pub eps: Vec<f32>,
    pub attacks: Vec<AttackSpec>,
    pub cascade: bool,
}

/// One attack as configured.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "attack", rename_all = "kebab-case")]
pub enum AttackSpec {
    Fgsm,
    Pgd(PgdConfig),
    ApgdCe(ApgdConfig),
    ApgdDlr(ApgdConfig),
    ApgdT(ApgdConfig),
    Square(SquareConfig),
}

impl AttackSpec {
    pub fn name(&self) -> &'static str {
        match self {
            AttackSpec::Fgsm => "fgsm",
            AttackSpec::Pgd(_) => "pgd",
            AttackSpec::ApgdCe(_) => "apgd-ce",
            AttackSpec::ApgdDlr(_) => "apgd-dlr",
            AttackSpec::ApgdT(_) => "apgd-t",
            AttackSpec::Square(_) => "square",
        }
    }

    /// Whether the attack needs input gradients (a gradient graph).
    pub fn needs_gradients(&self) -> bool {
        !matches!(self, AttackSpec::Square(_))
    }

    /// What kind of attack this is, for the sanity checks that compare kinds.
    pub fn kind(&self) -> AttackKind {
        match self {
            AttackSpec::Fgsm => AttackKind::SingleStep,
            AttackSpec::Square(_) => AttackKind::BlackBox,
            _ => AttackKind::Iterative,
        }
    }

    /// The same attack with more budget: twice the steps and one more restart
    /// (`None` for attacks without steps).
    pub fn stronger(&self) -> Option<AttackSpec> {
        match self {
            AttackSpec::Pgd(c) => Some(AttackSpec::Pgd(PgdConfig {
                steps: 2 * c.steps,
                restarts: c.restarts + 1,
                ..c.clone()
            })),
            AttackSpec::ApgdCe(c) | AttackSpec::ApgdDlr(c) | AttackSpec::ApgdT(c) => {
                let c2 = ApgdConfig {
                    steps: 2 * c.steps,
                    restarts: c.restarts + 1,
                    ..c.clone()
                };
                Some(match self {
                    AttackSpec::ApgdCe(_) => AttackSpec::ApgdCe(c2),
                    AttackSpec::ApgdDlr(_) => AttackSpec::ApgdDlr(c2),
                    _ => AttackSpec::ApgdT(c2),
                })
            }
            _ => None,
        }
    }

    /// The attack's budget per example: the most forward or gradient evaluations it may
    /// spend on one example (FGSM 2: the gradient and the re-check; PGD (steps + 1) x
    /// restarts; APGD (1 + steps) x restarts, for APGD-T times the targets plus the clean
    /// pass that ranks them; Square its queries).
    pub fn budget_per_example(&self) -> u64 {
        match self {
            AttackSpec::Fgsm => 2,
            AttackSpec::Pgd(c) => ((c.steps + 1) * c.restarts) as u64,
            AttackSpec::ApgdCe(c) | AttackSpec::ApgdDlr(c) => ((c.steps + 1) * c.restarts) as u64,
            AttackSpec::ApgdT(c) => {
                let targets = match c.loss {
                    ApgdLoss::DlrTargeted { n_targets } => n_targets,
                    _ => 1,
                };
                (1 + (c.steps + 1) * c.restarts * targets) as u64
            }
            AttackSpec::Square(c) => c.queries as u64,
        }
    }

    /// Steps and restarts, for reports (`None` for attacks without steps).
    pub fn budget(&self) -> Option<(usize, usize)> {
        match self {
            AttackSpec::Pgd(c) => Some((c.steps, c.restarts)),
            AttackSpec::ApgdCe(c) | AttackSpec::ApgdDlr(c) | AttackSpec::ApgdT(c) => {
                Some((c.steps, c.restarts))
            }
            _ => None,
        }
    }
}

/// Single-step (FGSM), iterative gradient (PGD, APGD) or black-box (Square).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttackKind {
    SingleStep,
    Iterative,
    BlackBox,
}

/// Knobs shared by the attacks of one run.
#[derive(Clone, Debug)]
pub struct AttackKnobs {
    /// Steps for iterative attacks (`None`: each attack's default).
    pub steps: Option<usize>,
    pub restarts: usize,
    pub seed: u64,
    pub square_queries: Option<usize>,
}

pub const ATTACK_NAMES: &str = "fgsm, pgd, pgd-margin, apgd-ce, apgd-dlr, apgd-t, square, standard";

/// Parses `--attacks` (comma-separated names, or `standard`). Returns the attacks and
/// whether they run as a cascade (each on the points the previous ones left robust).
pub fn parse_attacks(list: &str, k: &AttackKnobs) -> Result<(Vec<AttackSpec>, bool)> {
    if k.steps == Some(0) {
        bail!("--steps must be at least 1");
    }
    if k.restarts == 0 {
        bail!("--restarts must be at least 1");
    }
    if k.square_queries == Some(0) {
        bail!("--square-queries must be at least 1");
    }
    let apgd_cfg = |loss| ApgdConfig {
        restarts: k.restarts,
        seed: k.seed,
        ..ApgdConfig::new(loss, k.steps.unwrap_or(100))
    };
    let square_cfg = || SquareConfig {
        queries: k.square_queries.unwrap_or(5000),
        seed: k.seed,
        ..Default::default()
    };
    let mut out = vec![];
    let mut cascade = false;
    for name in list.split(',').map(str::trim) {
        match name {
            "standard" => {
                cascade = true;
                out.push(AttackSpec::ApgdCe(apgd_cfg(ApgdLoss::CrossEntropy)));
                out.push(AttackSpec::ApgdT(apgd_cfg(ApgdLoss::DlrTargeted {
                    n_targets: 9,
                })));
                out.push(AttackSpec::Square(square_cfg()));
            }
            "fgsm" => out.push(AttackSpec::Fgsm),
            "pgd" | "pgd-margin" => out.push(AttackSpec::Pgd(PgdConfig {
                steps: k.steps.unwrap_or(10),
                restarts: k.restarts,
                margin_loss: name == "pgd-margin",
                seed: k.seed,
                ..Default::default()
            })),
            "apgd-ce" => out.push(AttackSpec::ApgdCe(apgd_cfg(ApgdLoss::CrossEntropy))),
            "apgd-dlr" => out.push(AttackSpec::ApgdDlr(apgd_cfg(ApgdLoss::Dlr))),
            "apgd-t" => out.push(AttackSpec::ApgdT(apgd_cfg(ApgdLoss::DlrTargeted {
                n_targets: 9,
            }))),
            "square" => out.push(AttackSpec::Square(square_cfg())),
            "" => bail!("--attacks has an empty name in '{list}'"),
            other => bail!("unknown attack '{other}' (known: {ATTACK_NAMES})"),
        }
    }
    Ok((out, cascade))
}

/// Runs one attack on a batch (example i's random streams numbered by its place in the
/// batch; [`run_attack_at`] with positions in the data).
pub fn run_attack(
    spec: &AttackSpec,
    oracle: &mut dyn Oracle,
    x0: &[f32],
    labels: &[usize],
    threat: &Threat,
    geometry: Geometry,
) -> Result<Outcome> {
    let ids = local_ids(labels.len());
    run_attack_at(spec, oracle, x0, labels, &ids, threat, geometry)
}

/// Runs one attack on a batch whose examples sit at `ids` in the data: every random draw
/// for an example comes from a stream of (seed, run, its position)
/// ([`crate::attack::example_rng`]), so its outcome does not depend on the batch.
pub fn run_attack_at(
    spec: &AttackSpec,
    oracle: &mut dyn Oracle,
    x0: &[f32],
    labels: &[usize],
    ids: &[u64],
    threat: &Threat,
    geometry: Geometry,
) -> Result<Outcome> {
    match spec {
        AttackSpec::Fgsm => fgsm(oracle, x0, labels, threat),
        AttackSpec::Pgd(c) => pgd_at(oracle, x0, labels, None, threat, c, ids),
        AttackSpec::ApgdCe(c) | AttackSpec::ApgdDlr(c) | AttackSpec::ApgdT(c) => {
            apgd_at(oracle, x0, labels, threat, c, ids)
        }
        AttackSpec::Square(c) => square_at(oracle, x0, labels, threat, geometry, c, ids),
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AttackResult {
    pub attack: String,
    /// Examples this attack was run on (clean-correct ones, or those left by the cascade).
    pub attacked: u64,
    /// Adversarial examples found and confirmed by a plain forward pass.
    pub broken: u64,
    /// Adversarial examples the attack reported that the re-check refused.
    pub refused: u64,
    /// Correct and not broken by this attack (or by the cascade so far), over all examples.
    pub robust_accuracy: f64,
    pub evaluations: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EpsResult {
    pub eps: f32,
    pub attacks: Vec<AttackResult>,
    /// Per-example worst case over all attacks: correct and broken by none.
    pub robust: u64,
    pub robust_accuracy: f64,
    /// Per class (by true label): robust examples / support.
    pub per_class_robust_accuracy: Vec<Option<f64>>,
    /// Per-example comparisons between kinds of attack (for the sanity checks).
    pub cross_checks: CrossChecks,
    /// The first adversarial examples found (re-checked), for the report's image grid.
    pub examples: Vec<AdvPair>,
    /// The adversarial examples found for the watched examples
    /// ([`RobustTally::watch_examples`]; in memory only, for the comparison's images).
    #[serde(skip)]
    pub watched: Vec<AdvPair>,
}

/// Per-example comparisons between kinds of attack at one eps, over clean-correct
/// examples: how often one kind broke an example that another kind tried and missed.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct CrossChecks {
    /// Broken by a single-step attack, tried and missed by every iterative one.
    pub single_step_beats_iterative: u64,
    /// Broken by an iterative attack, tried and missed by every single-step one.
    pub iterative_beats_single_step: u64,
    /// Broken by Square, tried and missed by every white-box (gradient) attack.
    pub black_box_beats_white_box: u64,
    /// Clean-correct examples attacked.
    pub examples: u64,
}

/// One example's outcome in an audit: its label, the clean prediction and, per eps,
/// what each attack that ran on it found. The one per-example record of an audit: the
/// report's JSON (`per_example`), `--per-example` files and the baseline comparison
/// (`report::compare`) all read it; keyed by `example`, the position in the data, so
/// partial audits of the same data merge by it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExampleOutcome {
    /// Position of the example in the data (data order, from 0).
    pub example: u64,
    /// `None` for an unlabelled example (never attacked).
    pub label: Option<usize>,
    pub clean_prediction: usize,
    /// Per eps of the audit, in its order (empty without attacks or label).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub eps: Vec<EpsOutcome>,
}

impl ExampleOutcome {
    /// Labelled and classified correctly.
    pub fn correct(&self) -> bool {
        self.label == Some(self.clean_prediction)
    }

    /// The outcome at `eps`, if the audit attacked at that eps.
    pub fn at(&self, eps: f32) -> Option<&EpsOutcome> {
        self.eps.iter().find(|e| e.eps == eps)
    }
}

/// One example at one eps.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EpsOutcome {
    pub eps: f32,
    /// Per-example worst case: classified correctly and broken by no attack.
    pub robust: bool,
    /// The attacks that ran on the example, in the audit's order (a cascade skips the
    /// attacks after the one that broke it; misclassified examples are not attacked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attacks: Vec<AttackOutcome>,
}

/// What one attack did to one example.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AttackOutcome {
    pub attack: String,
    /// An adversarial example was found and confirmed by a plain forward pass.
    pub broken: bool,
    /// The confirmed adversarial example's class and the threat model's norm of its
    /// perturbation (when broken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adversarial_prediction: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance: Option<f32>,
    /// Forward or gradient evaluations the attack spent on this example (it stops at the
    /// first adversarial iterate)...
    pub evaluations: u64,
    /// ...of its budget for it ([`AttackSpec::budget_per_example`]).
    pub budget: u64,
    /// The attack reported an adversarial example that the plain forward re-check
    /// refused (outside the ball or range, or classified correctly).
    #[serde(default, skip_serializing_if = "is_false")]
    pub refused: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One clean example and the adversarial example an attack found for it (confirmed by a
/// plain forward pass). The values are kept in memory for the HTML image grid only.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct AdvPair {
    /// Position of the example in the data (data order, as [`ExampleOutcome::example`]).
    pub example: u64,
    pub label: usize,
    pub adversarial_prediction: usize,
    pub attack: String,
    /// Norm (the threat model's) of the perturbation.
    pub distance: f32,
    #[serde(skip)]
    pub clean: Vec<f32>,
    #[serde(skip)]
    pub adversarial: Vec<f32>,
}

/// Accumulates robust results over batches: every attacked example's outcomes and the
/// adversarial pairs kept for the report. The numbers ([`RobustTally::results`]) are
/// computed from the per-example outcomes alone ([`results_of`]), so partial audits of the
/// same data (shards) merge into exactly the numbers of one run.
pub struct RobustTally {
    k: usize,
    eps: Vec<f32>,
    attacks: Vec<AttackSpec>,
    cascade: bool,
    keep: usize,
    kept: Vec<Vec<AdvPair>>,
    /// Examples (data positions, sorted) whose adversarial examples are kept as well.
    watch: Vec<u64>,
    watched: Vec<Vec<AdvPair>>,
    /// Per attacked example (data position), its label and outcomes per eps, in data
    /// order.
    outcomes: Vec<(u64, usize, Vec<EpsOutcome>)>,
    /// Per eps, the adversarial pairs found in the last batch (the first `keep`).
    last_pairs: Vec<Vec<AdvPair>>,
}

impl RobustTally {
    pub fn new(k: usize, eps: &[f32], attacks: Vec<AttackSpec>, cascade: bool) -> RobustTally {
        RobustTally {
            k,
            eps: eps.to_vec(),
            cascade,
            keep: 8,
            kept: vec![vec![]; eps.len()],
            watch: vec![],
            watched: vec![vec![]; eps.len()],
            outcomes: vec![],
            last_pairs: vec![vec![]; eps.len()],
            attacks,
        }
    }

    /// Adds a batch attacked earlier (a resumed audit's checkpoint): its examples' labels
    /// and outcomes, in data order, and per eps the adversarial pairs it found.
    pub fn add_done(&mut self, rows: Vec<(u64, usize, Vec<EpsOutcome>)>, pairs: Vec<Vec<AdvPair>>) {
        self.outcomes.extend(rows);
        for (e, p) in pairs.into_iter().enumerate().take(self.eps.len()) {
            keep_first(&mut self.kept[e], p, self.keep);
        }
    }

    /// The outcomes of the examples at or after data position `first` (the last batch's),
    /// by position.
    pub fn outcomes_from(&self, first: u64) -> impl Iterator<Item = (u64, &Vec<EpsOutcome>)> {
        let start = self.outcomes.partition_point(|(id, _, _)| *id < first);
        self.outcomes[start..].iter().map(|(id, _, o)| (*id, o))
    }

    /// Per eps, the adversarial pairs the last batch found (at most the kept number).
    pub fn last_pairs(&self) -> &[Vec<AdvPair>] {
        &self.last_pairs
    }

    /// Keep the first `n` adversarial examples per eps for the report (default 8).
    pub fn keep_examples(&mut self, n: usize) {
        self.keep = n;
    }

    /// Also keep the adversarial examples found for these examples (data positions),
    /// one per eps: the examples a comparison with a baseline may show.
    pub fn watch_examples(&mut self, mut ids: Vec<u64>) {
        ids.sort_unstable();
        ids.dedup();
        self.watch = ids;
    }

    /// Attacks one batch (`x` in the model's raw input space; `ids` the examples'
    /// positions in the data) and re-checks every adversarial example with
    /// `oracle.logits` (a plain forward pass of the original model, not a gradient
    /// graph). Every random draw for an example comes from its own stream
    /// ([`run_attack_at`]), so its outcome does not depend on the batch.
    #[allow(clippy::too_many_arguments)]
    pub fn add_batch(
        &mut self,
        oracle: &mut dyn Oracle,
        x: &[f32],
        ids: &[u64],
        labels: &[usize],
        clean_pred: &[usize],
        norm: Norm,
        range: (f32, f32),
        geometry: Geometry,
    ) -> Result<()> {
        let len = oracle.example_len();
        let n = labels.len();
        if ids.len() != n {
            bail!("{} example ids for {n} labels", ids.len());
        }
        if let Some(&y) = labels.iter().find(|y| **y >= self.k) {
            bail!("label {y} is out of range for {} classes", self.k);
        }
        let mut per_example: Vec<Vec<EpsOutcome>> = vec![vec![]; n];
        let correct: Vec<bool> = (0..n).map(|i| clean_pred[i] == labels[i]).collect();
        for (e, &eps) in self.eps.clone().iter().enumerate() {
            let threat = Threat::new(norm, eps, range)?;
            let mut robust = correct.clone();
            // Per example: what each attack that ran on it found.
            let mut found_by: Vec<Vec<AttackOutcome>> = vec![vec![]; n];
            // Per example: the adversarial pair of the first attack that broke it.
            let mut pairs: Vec<Option<AdvPair>> = vec![None; n];
            for spec in self.attacks.iter() {
                let idx: Vec<usize> = (0..n)
                    .filter(|&i| if self.cascade { robust[i] } else { correct[i] })
                    .collect();
                for &i in &idx {
                    found_by[i].push(AttackOutcome {
                        attack: spec.name().to_string(),
                        broken: false,
                        adversarial_prediction: None,
                        distance: None,
                        evaluations: 0,
                        budget: spec.budget_per_example(),
                        refused: false,
                    });
                }
                if idx.is_empty() {
                    continue;
                }
                let x0 = gather(x, &idx, len);
                let y: Vec<usize> = idx.iter().map(|i| labels[*i]).collect();
                let at: Vec<u64> = idx.iter().map(|i| ids[*i]).collect();
                let out = run_attack_at(spec, oracle, &x0, &y, &at, &threat, geometry)?;
                for (j, &i) in idx.iter().enumerate() {
                    if let Some(o) = found_by[i].last_mut() {
                        o.evaluations = out.spent[j];
                    }
                }
                let found: Vec<usize> = (0..idx.len()).filter(|j| out.success[*j]).collect();
                if found.is_empty() {
                    continue;
                }
                let adv = gather(&out.x_adv, &found, len);
                // `Oracle::logits` is a plain forward pass of the original model.
                let preds = predictions(&oracle.logits(&adv)?);
                for (m, &j) in found.iter().enumerate() {
                    let i = idx[j];
                    let (xa, xc) = (&adv[m * len..(m + 1) * len], &x0[j * len..(j + 1) * len]);
                    let o = found_by[i]
                        .last_mut()
                        .expect("an outcome per attacked example");
                    if !(threat.contains(xa, xc) && preds[m] != y[j]) {
                        o.refused = true;
                        continue;
                    }
                    robust[i] = false;
                    let d = distance(norm, xa, xc);
                    o.broken = true;
                    o.adversarial_prediction = Some(preds[m]);
                    o.distance = Some(d);
                    if pairs[i].is_none() {
                        pairs[i] = Some(AdvPair {
                            example: ids[i],
                            label: y[j],
                            adversarial_prediction: preds[m],
                            attack: spec.name().to_string(),
                            distance: d,
                            clean: xc.to_vec(),
                            adversarial: xa.to_vec(),
                        });
                    }
                }
            }
            let mut pairs: Vec<AdvPair> = pairs.into_iter().flatten().collect();
            for p in &pairs {
                if self.watch.binary_search(&p.example).is_ok()
                    && !self.watched[e].iter().any(|w| w.example == p.example)
                {
                    self.watched[e].push(p.clone());
                }
            }
            pairs.truncate(self.keep);
            self.last_pairs[e] = pairs.clone();
            keep_first(&mut self.kept[e], pairs, self.keep);
            for i in 0..n {
                per_example[i].push(EpsOutcome {
                    eps,
                    robust: robust[i],
                    attacks: std::mem::take(&mut found_by[i]),
                });
            }
        }
        self.outcomes.extend(
            ids.iter()
                .zip(labels)
                .zip(per_example)
                .map(|((&id, &y), o)| (id, y, o)),
        );
        Ok(())
    }

    /// The attacked examples' outcomes per eps, by data position, in data order.
    pub fn take_outcomes(&mut self) -> Vec<(u64, Vec<EpsOutcome>)> {
        std::mem::take(&mut self.outcomes)
            .into_iter()
            .map(|(id, _, o)| (id, o))
            .collect()
    }

    /// The numbers per eps, from the per-example outcomes so far (call before
    /// [`RobustTally::take_outcomes`]); `correct_total` the clean-correct labelled examples.
    pub fn results(&self, correct_total: u64) -> Vec<EpsResult> {
        let rows: Vec<(usize, &[EpsOutcome])> = self
            .outcomes
            .iter()
            .map(|(_, y, o)| (*y, o.as_slice()))
            .collect();
        let mut r = results_of(
            self.k,
            &self.eps,
            &self.attacks,
            self.cascade,
            &rows,
            correct_total,
        );
        for (e, res) in r.iter_mut().enumerate() {
            res.examples = self.kept[e].clone();
            res.watched = self.watched[e].clone();
        }
        r
    }
}

/// Adds `new` (pairs in data order) to `kept` and keeps the first `keep` by data position:
/// the report shows the first adversarial examples of the data, whatever the batches or
/// shards they were found in.
pub fn keep_first(kept: &mut Vec<AdvPair>, new: Vec<AdvPair>, keep: usize) {
    kept.extend(new);
    kept.sort_by_key(|p| p.example);
    kept.dedup_by_key(|p| p.example);
    kept.truncate(keep);
}

/// The robust numbers per eps from the per-example outcomes of the labelled examples
/// (`rows`: label and outcomes per eps, each holding one entry per eps), in the order of
/// `eps`: per attack examples attacked, broken, refused, evaluations and robust accuracy,
/// the worst case overall and per class, and the cross checks between attack kinds.
/// `correct_total`: the clean-correct examples among them. The adversarial pairs
/// (`examples`, `watched`) are left empty for the caller.
pub fn results_of(
    k: usize,
    eps: &[f32],
    attacks: &[AttackSpec],
    cascade: bool,
    rows: &[(usize, &[EpsOutcome])],
    correct_total: u64,
) -> Vec<EpsResult> {
    let total = rows.len() as u64;
    let frac = |a: u64| {
        if total > 0 {
            a as f64 / total as f64
        } else {
            0.0
        }
    };
    let mut support = vec![0u64; k];
    for (y, _) in rows {
        if let Some(s) = support.get_mut(*y) {
            *s += 1;
        }
    }
    let kinds: Vec<AttackKind> = attacks.iter().map(|s| s.kind()).collect();
    eps.iter()
        .enumerate()
        .map(|(e, &eps)| {
            let na = attacks.len();
            let (mut attacked, mut broken, mut refused, mut evals, mut robust_after) = (
                vec![0u64; na],
                vec![0u64; na],
                vec![0u64; na],
                vec![0u64; na],
                vec![0u64; na],
            );
            let mut robust = 0u64;
            let mut class_robust = vec![0u64; k];
            let mut cross = CrossChecks::default();
            for (y, outs) in rows {
                let Some(o) = outs.get(e) else { continue };
                // The attacks that ran on this example, in the audit's order: a prefix of
                // the list in a cascade, all of it otherwise.
                for (a, x) in o.attacks.iter().enumerate().take(na) {
                    attacked[a] += 1;
                    broken[a] += x.broken as u64;
                    refused[a] += x.refused as u64;
                    evals[a] += x.evaluations;
                }
                if cascade && !o.attacks.is_empty() {
                    // Robust after attack a: clean-correct (attacked by the first attack)
                    // and broken by none of attacks 0..=a.
                    let first_broken = o.attacks.iter().position(|x| x.broken);
                    for (a, r) in robust_after.iter_mut().enumerate() {
                        if first_broken.is_none_or(|b| a < b) {
                            *r += 1;
                        }
                    }
                }
                if o.robust {
                    robust += 1;
                    if let Some(c) = class_robust.get_mut(*y) {
                        *c += 1;
                    }
                }
                if o.attacks.is_empty() {
                    continue;
                }
                // A clean-correct example: the cross checks between kinds.
                cross.examples += 1;
                let any = |f: &dyn Fn(AttackKind) -> bool, broke: bool| {
                    o.attacks
                        .iter()
                        .enumerate()
                        .take(na)
                        .any(|(a, x)| f(kinds[a]) && (!broke || x.broken))
                };
                let single = |k: AttackKind| k == AttackKind::SingleStep;
                let iter = |k: AttackKind| k == AttackKind::Iterative;
                let black = |k: AttackKind| k == AttackKind::BlackBox;
                let white = |k: AttackKind| k != AttackKind::BlackBox;
                if any(&single, true) && any(&iter, false) && !any(&iter, true) {
                    cross.single_step_beats_iterative += 1;
                }
                if any(&iter, true) && any(&single, false) && !any(&single, true) {
                    cross.iterative_beats_single_step += 1;
                }
                if any(&black, true) && any(&white, false) && !any(&white, true) {
                    cross.black_box_beats_white_box += 1;
                }
            }
            EpsResult {
                eps,
                attacks: attacks
                    .iter()
                    .enumerate()
                    .map(|(a, spec)| AttackResult {
                        attack: spec.name().to_string(),
                        attacked: attacked[a],
                        broken: broken[a],
                        refused: refused[a],
                        robust_accuracy: if cascade {
                            frac(robust_after[a])
                        } else {
                            frac(correct_total - broken[a])
                        },
                        evaluations: evals[a],
                    })
                    .collect(),
                robust,
                robust_accuracy: frac(robust),
                per_class_robust_accuracy: (0..k)
                    .map(|c| (support[c] > 0).then(|| class_robust[c] as f64 / support[c] as f64))
                    .collect(),
                cross_checks: cross,
                examples: vec![],
                watched: vec![],
            }
        })
        .collect()
}

/// The threat model's norm of `a - b`.
pub fn distance(norm: Norm, a: &[f32], b: &[f32]) -> f32 {
    match norm {
        Norm::Linf => a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs())),
        Norm::L2 => a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
            .sqrt(),
    }
}

/// Predicted classes for each row of logits.
pub fn predictions(logits: &ndarray::Array2<f32>) -> Vec<usize> {
    logits
        .rows()
        .into_iter()
        .map(|r| argmax(&r.iter().copied().collect::<Vec<_>>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::testing::{dataset, TinyNet};

    fn knobs() -> AttackKnobs {
        AttackKnobs {
            steps: Some(10),
            restarts: 1,
            seed: 1,
            square_queries: Some(200),
        }
    }

    #[test]
    fn names_parse_and_bad_names_fail() {
        let (a, cascade) = parse_attacks("standard", &knobs()).unwrap();
        assert!(cascade);
        assert_eq!(
            a.iter().map(|s| s.name()).collect::<Vec<_>>(),
            ["apgd-ce", "apgd-t", "square"]
        );
        let e = parse_attacks("pgd,cw", &knobs()).unwrap_err().to_string();
        assert!(e.contains("unknown attack 'cw'"), "{e}");
        let e = parse_attacks(
            "pgd",
            &AttackKnobs {
                steps: Some(0),
                ..knobs()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--steps"), "{e}");
    }

    #[test]
    fn worst_case_is_below_every_attack_and_clean() {
        let mut net = TinyNet::new(16, 16, 5, 51);
        let (x, mut y) = dataset(&mut net, 96, 52);
        // Make some labels wrong so that clean accuracy is below 1.
        for i in (0..96).step_by(7) {
            y[i] = (y[i] + 1) % 5;
        }
        let clean = predictions(&net.logits(&x).unwrap());
        let correct = clean.iter().zip(&y).filter(|(a, b)| a == b).count() as u64;
        let (attacks, cascade) = parse_attacks("fgsm,pgd,square", &knobs()).unwrap();
        let mut t = RobustTally::new(5, &[0.02, 0.1], attacks, cascade);
        let ids: Vec<u64> = (0..96).collect();
        t.add_batch(
            &mut net,
            &x,
            &ids,
            &y,
            &clean,
            Norm::Linf,
            (0.0, 1.0),
            Geometry::Chw { c: 1, h: 4, w: 4 },
        )
        .unwrap();
        let r = t.results(correct);
        let outcomes = t.take_outcomes();
        assert_eq!(outcomes.len(), 96);
        for (e, res) in r.iter().enumerate() {
            // The per-example records add up to the tallies.
            let robust = outcomes.iter().filter(|(_, o)| o[e].robust).count() as u64;
            assert_eq!(robust, res.robust);
            for att in &res.attacks {
                let name = &att.attack;
                let broken = outcomes
                    .iter()
                    .filter(|(_, o)| o[e].attacks.iter().any(|x| &x.attack == name && x.broken))
                    .count() as u64;
                assert_eq!(broken, att.broken, "{name}");
            }
            for att in &res.attacks {
                // The per-example spending adds up to the attack's, within its budget.
                let spent: u64 = outcomes
                    .iter()
                    .flat_map(|(_, o)| o[e].attacks.iter())
                    .filter(|x| x.attack == att.attack)
                    .inspect(|x| assert!(x.evaluations >= 1 && x.evaluations <= x.budget))
                    .map(|x| x.evaluations)
                    .sum();
                assert_eq!(spent, att.evaluations, "{}", att.attack);
            }
            for (i, o) in &outcomes {
                for x in o[e].attacks.iter().filter(|x| x.broken) {
                    assert!(x.distance.unwrap() <= res.eps * 1.0001, "{i}");
                    assert_ne!(x.adversarial_prediction, Some(y[*i as usize]));
                }
            }
        }
        let clean_acc = correct as f64 / 96.0;
        for e in &r {
            for a in &e.attacks {
                assert!(a.robust_accuracy <= clean_acc);
                assert!(e.robust_accuracy <= a.robust_accuracy);
                assert_eq!(a.refused, 0);
            }
        }
        assert!(
            r[1].robust_accuracy <= r[0].robust_accuracy,
            "larger eps is never more robust"
        );
        assert!(r[1].robust_accuracy < clean_acc);
    }

    #[test]
    fn outcomes_do_not_depend_on_batches() {
        let mut net = TinyNet::new(16, 16, 5, 61);
        let (x, y) = dataset(&mut net, 48, 62);
        let clean = predictions(&net.logits(&x).unwrap());
        let correct = clean.iter().zip(&y).filter(|(a, b)| a == b).count() as u64;
        let geo = Geometry::Chw { c: 1, h: 4, w: 4 };
        // The standard cascade (its random starts and Square's windows) plus PGD.
        for list in ["standard", "pgd,square"] {
            let run = |cuts: &[usize], net: &mut TinyNet| {
                let (attacks, cascade) = parse_attacks(list, &knobs()).unwrap();
                let mut t = RobustTally::new(5, &[0.05, 0.1], attacks, cascade);
                t.keep_examples(3);
                let mut start = 0;
                for &end in cuts.iter().chain([48].iter()) {
                    let ids: Vec<u64> = (start as u64..end as u64).collect();
                    t.add_batch(
                        net,
                        &x[start * 16..end * 16],
                        &ids,
                        &y[start..end],
                        &clean[start..end],
                        Norm::Linf,
                        (0.0, 1.0),
                        geo,
                    )
                    .unwrap();
                    start = end;
                }
                let r = t.results(correct);
                (r, t.take_outcomes())
            };
            let (r1, o1) = run(&[], &mut net);
            let (r2, o2) = run(&[5, 17, 40], &mut net);
            assert_eq!(o1, o2, "{list}");
            assert_eq!(r1, r2, "{list}");
            assert!(r1.iter().any(|e| e.examples.len() == 3), "{list}");
            assert!(r1[1].robust < correct, "{list}: something was broken");
        }
    }
}
