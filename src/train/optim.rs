//! Optimisers and learning-rate schedules for fine-tuning: SGD with momentum (weight decay
//! added to the gradient) and Adam (decoupled weight decay, as AdamW), a linear warm-up,
//! then constant, cosine or step decay. Weight decay applies to weights (rank >= 2), not
//! to biases or normalisation parameters.

use anyhow::{bail, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    Sgd,
    Adam,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Constant,
    /// Cosine from the base rate down to 0 over the steps after warm-up.
    Cosine,
    /// x0.1 at 50% and again at 75% of the steps.
    Step,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimConfig {
    pub kind: OptimizerKind,
    pub lr: f32,
    /// SGD momentum (0 = plain SGD).
    pub momentum: f32,
    pub weight_decay: f32,
    pub schedule: Schedule,
    /// Steps of linear warm-up from lr/steps to lr.
    pub warmup_steps: u64,
    /// Total optimisation steps of the run (for the decay).
    pub total_steps: u64,
}

impl OptimConfig {
    pub fn check(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            bail!("--lr must be a positive number, got {}", self.lr);
        }
        if !(0.0..1.0).contains(&self.momentum) {
            bail!("--momentum must lie in [0, 1), got {}", self.momentum);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            bail!(
                "--weight-decay must be a number >= 0, got {}",
                self.weight_decay
            );
        }
        Ok(())
    }

    /// The learning rate at step `t` (0-based).
    pub fn lr_at(&self, t: u64) -> f32 {
        let warm = if t < self.warmup_steps {
            (t + 1) as f32 / self.warmup_steps as f32
        } else {
            1.0
        };
        let after = t.saturating_sub(self.warmup_steps) as f32;
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f32;
        let frac = (after / span).min(1.0);
        let decay = match self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Cosine => 0.5 * (1.0 + (std::f32::consts::PI * frac).cos()),
            Schedule::Step if frac >= 0.75 => 0.01,
            Schedule::Step if frac >= 0.5 => 0.1,
            Schedule::Step => 1.0,
        };
        self.lr * warm * decay
    }
}

/// Optimiser state: first and second moments (Adam) or velocity (SGD), and the step.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    pub cfg: OptimConfig,
    /// Whether each parameter gets weight decay.
    pub decay: Vec<bool>,
    /// SGD velocity or Adam's first moment, per parameter.
    pub m: Vec<Vec<f32>>,
    /// Adam's second moment (empty for SGD).
    pub v: Vec<Vec<f32>>,
    pub t: u64,
}

pub(crate) const BETA1: f32 = 0.9;
pub(crate) const BETA2: f32 = 0.999;
pub(crate) const ADAM_EPS: f32 = 1e-8;

/// The scalars of one step: its learning rate, and Adam's bias corrections 1 - beta^t.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepScalars {
    pub lr: f32,
    pub c1: f32,
    pub c2: f32,
}

impl Optimizer {
    /// An optimiser for parameters of these shapes.
    pub fn new(cfg: OptimConfig, shapes: &[Vec<usize>]) -> Optimizer {
        let zeros = |s: &Vec<usize>| vec![0.0f32; s.iter().product()];
        Optimizer {
            decay: shapes.iter().map(|s| s.len() >= 2).collect(),
            m: shapes.iter().map(zeros).collect(),
            v: match cfg.kind {
                OptimizerKind::Adam => shapes.iter().map(zeros).collect(),
                OptimizerKind::Sgd => vec![],
            },
            cfg,
            t: 0,
        }
    }

    /// Counts a step and returns its scalars (the host's [`Optimizer::step`] and the
    /// graph's, `optim_graph`, both take them from here).
    pub fn advance(&mut self) -> StepScalars {
        let s = self.next_scalars();
        self.t += 1;
        s
    }

    /// The scalars the next [`Optimizer::advance`] gives, without counting the step.
    pub fn next_scalars(&self) -> StepScalars {
        let t = (self.t + 1) as i32;
        StepScalars {
            lr: self.cfg.lr_at(self.t),
            c1: 1.0 - BETA1.powi(t),
            c2: 1.0 - BETA2.powi(t),
        }
    }

    /// One update of `params` along the mean gradients `grads`.
    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]]) {
        self.step_on(params, grads, 1);
    }

    /// [`Optimizer::step`] on up to `threads` threads: the values cut into pieces of
    /// `PIECE`, dealt out in turn. Each value's update is the same arithmetic whatever the
    /// threads, so the result is too.
    pub fn step_on(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], threads: usize) {
        const PIECE: usize = 1 << 16;
        let StepScalars { lr, c1, c2 } = self.advance();
        let (wd, mu) = (self.cfg.weight_decay, self.cfg.momentum);
        let mut v_iter = self.v.iter_mut();
        let mut pieces: Vec<Piece<'_>> = vec![];
        for (i, ((p, g), m)) in params
            .iter_mut()
            .zip(grads)
            .zip(self.m.iter_mut())
            .enumerate()
        {
            let d = if self.decay[i] { wd } else { 0.0 };
            let v = v_iter.next();
            let mut vs = v.map(|v| v.chunks_mut(PIECE));
            for ((w, g), m) in p
                .chunks_mut(PIECE)
                .zip(g.chunks(PIECE))
                .zip(m.chunks_mut(PIECE))
            {
                let v = vs.as_mut().and_then(|c| c.next());
                pieces.push(Piece { w, g, m, v, d });
            }
        }
        // Adam's pieces carry a second moment, SGD's none.
        let update = |piece: Piece<'_>| match piece.v {
            None => {
                let d = piece.d;
                for ((w, gw), m) in piece.w.iter_mut().zip(piece.g).zip(piece.m.iter_mut()) {
                    *m = mu * *m + gw + d * *w;
                    *w -= lr * *m;
                }
            }
            Some(v) => {
                let d = piece.d;
                // Zipped slices (no bounds checks), so the loop vectorises.
                for (((w, gw), m), v) in piece.w.iter_mut().zip(piece.g).zip(piece.m).zip(v) {
                    *m = BETA1 * *m + (1.0 - BETA1) * gw;
                    *v = BETA2 * *v + (1.0 - BETA2) * gw * gw;
                    let mh = *m / c1;
                    let vh = *v / c2;
                    *w -= lr * (mh / (vh.sqrt() + ADAM_EPS) + d * *w);
                }
            }
        };
        let threads = threads.clamp(1, pieces.len().max(1));
        if threads == 1 {
            pieces.into_iter().for_each(update);
            return;
        }
        let mut shares: Vec<Vec<Piece<'_>>> = (0..threads).map(|_| vec![]).collect();
        for (k, piece) in pieces.into_iter().enumerate() {
            shares[k % threads].push(piece);
        }
        std::thread::scope(|s| {
            for share in shares {
                s.spawn(|| share.into_iter().for_each(update));
            }
        });
    }
}

/// A stretch of one parameter's values and its gradient and state, updated together.
struct Piece<'a> {
    w: &'a mut [f32],
    g: &'a [f32],
    m: &'a mut [f32],
    /// Adam's second moment (none for SGD).
    v: Option<&'a mut [f32]>,
    /// The weight decay of this parameter (0 for biases).
    d: f32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: OptimizerKind) -> OptimConfig {
        OptimConfig {
            kind,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            schedule: Schedule::Constant,
            warmup_steps: 0,
            total_steps: 100,
        }
    }

    /// Both optimisers minimise a quadratic sum((w - 3)^2).
    #[test]
    fn optimisers_minimise_a_quadratic() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
            let mut opt = Optimizer::new(cfg(kind), &[vec![2, 2]]);
            let mut w = vec![0.0f32; 4];
            for _ in 0..300 {
                let g: Vec<f32> = w.iter().map(|v| 2.0 * (v - 3.0)).collect();
                opt.step(&mut [&mut w], &[&g]);
            }
            assert!(w.iter().all(|v| (v - 3.0).abs() < 1e-2), "{kind:?}: {w:?}");
        }
    }

    #[test]
    fn adam_first_step_moves_each_weight_by_lr() {
        let mut opt = Optimizer::new(cfg(OptimizerKind::Adam), &[vec![3]]);
        let mut w = vec![1.0f32, 1.0, 1.0];
        opt.step(&mut [&mut w], &[&[0.5, -2.0, 1e-3]]);
        for (v, s) in w.iter().zip([-1.0f32, 1.0, -1.0]) {
            assert!((v - (1.0 + 0.1 * s)).abs() < 1e-4, "{w:?}");
        }
    }

    /// The threaded step is the one-thread step, bit for bit, on tensors cut into several
    /// pieces (and one smaller than a piece).
    #[test]
    fn threads_do_not_change_the_step() {
        let shapes = [vec![3, 50_000], vec![7], vec![2, 1 << 16]];
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
            let mut c = cfg(kind);
            c.weight_decay = 0.01;
            let mut one = Optimizer::new(c.clone(), &shapes);
            let mut many = Optimizer::new(c, &shapes);
            let mut rng = crate::rng::Rng::new(3);
            let mut w1: Vec<Vec<f32>> = shapes
                .iter()
                .map(|s| (0..s.iter().product()).map(|_| rng.normal()).collect())
                .collect();
            let mut w3 = w1.clone();
            for _ in 0..3 {
                let g: Vec<Vec<f32>> = w1
                    .iter()
                    .map(|p| p.iter().map(|_| rng.normal()).collect())
                    .collect();
                let gv: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
                let mut v1: Vec<&mut [f32]> = w1.iter_mut().map(|v| v.as_mut_slice()).collect();
                one.step_on(&mut v1, &gv, 1);
                let mut v3: Vec<&mut [f32]> = w3.iter_mut().map(|v| v.as_mut_slice()).collect();
                many.step_on(&mut v3, &gv, 3);
            }
            assert_eq!(w1, w3, "{kind:?}");
            assert_eq!(one, many, "{kind:?}");
        }
    }

    #[test]
    fn weight_decay_spares_biases() {
        let mut c = cfg(OptimizerKind::Sgd);
        c.weight_decay = 0.5;
        c.momentum = 0.0;
        let mut opt = Optimizer::new(c, &[vec![1, 1], vec![1]]);
        let (mut w, mut b) = (vec![1.0f32], vec![1.0f32]);
        opt.step(&mut [&mut w, &mut b], &[&[0.0], &[0.0]]);
        assert!((w[0] - 0.95).abs() < 1e-6 && b[0] == 1.0);
    }

    #[test]
    fn schedules() {
        let mut c = cfg(OptimizerKind::Sgd);
        c.warmup_steps = 10;
        c.schedule = Schedule::Cosine;
        assert!((c.lr_at(0) - 0.01).abs() < 1e-6);
        assert!((c.lr_at(9) - 0.1).abs() < 1e-6);
        assert!((c.lr_at(55) - 0.05).abs() < 1e-3);
        assert!(c.lr_at(99) < 1e-3);
        c.schedule = Schedule::Step;
        c.warmup_steps = 0;
        assert_eq!(c.lr_at(10), 0.1);
        assert!((c.lr_at(60) - 0.01).abs() < 1e-7);
        assert!((c.lr_at(80) - 0.001).abs() < 1e-7);
    }
}
