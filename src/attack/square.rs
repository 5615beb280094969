//! Square Attack, Linf (Andriushchenko et al. 2020): a gradient-free random search that
//! needs only logits. It starts from vertical stripes of +-eps, then at each query
//! proposes new +-eps values on one random square window (per channel) whose side
//! shrinks on a fixed schedule, and keeps the proposal when the margin loss
//! z_y - max_{j!=y} z_j decreases. Success is a negative margin.

use anyhow::{bail, Result};

use super::{check_batch, gather, Norm, Oracle, Outcome, Threat};
use crate::rng::Rng;

/// How an example's values are laid out, so that windows are spatial squares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Geometry {
    /// Channels first: index = (c * h + y) * w + x.
    Chw { c: usize, h: usize, w: usize },
    /// Channels last: index = (y * w + x) * c + ch.
    Hwc { c: usize, h: usize, w: usize },
    /// A flat vector: windows are contiguous runs.
    Flat { len: usize },
}

impl Geometry {
    fn len(&self) -> usize {
        match *self {
            Geometry::Chw { c, h, w } | Geometry::Hwc { c, h, w } => c * h * w,
            Geometry::Flat { len } => len,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct SquareConfig {
    /// Queries per example.
    pub queries: usize,
    /// Initial fraction of pixels changed per query (0.8 in AutoAttack).
    pub p_init: f32,
    pub seed: u64,
}

impl Default for SquareConfig {
    fn default() -> Self {
        SquareConfig {
            queries: 5000,
            p_init: 0.8,
            seed: 0,
        }
    }
}

/// The paper's schedule for the fraction of changed pixels at query `i` of `n`.
pub fn p_selection(p_init: f32, i: usize, n: usize) -> f32 {
    let it = (i as f64 / n.max(1) as f64 * 10000.0) as usize;
    let div = match it {
        0..=10 => 1.0,
        11..=50 => 2.0,
        51..=200 => 4.0,
        201..=500 => 8.0,
        501..=1000 => 16.0,
        1001..=2000 => 32.0,
        2001..=4000 => 64.0,
        4001..=6000 => 128.0,
        6001..=8000 => 256.0,
        _ => 512.0,
    };
    p_init / div
}

fn margins(oracle: &mut dyn Oracle, x: &[f32], y: &[usize]) -> Result<Vec<f32>> {
    let l = oracle.logits(x)?;
    Ok(l.rows()
        .into_iter()
        .zip(y)
        .map(|(row, &yi)| {
            let other = row
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != yi)
                .map(|(_, v)| *v)
                .fold(f32::NEG_INFINITY, f32::max);
            row[yi] - other
        })
        .collect())
}

/// Runs the Square attack (Linf) on the batch (example i's random stream numbered by its
/// place in the batch; [`square_at`] with positions in the data).
pub fn square(
    oracle: &mut dyn Oracle,
    x0: &[f32],
    labels: &[usize],
    threat: &Threat,
    geometry: Geometry,
    cfg: &SquareConfig,
) -> Result<Outcome> {
    square_at(
        oracle,
        x0,
        labels,
        threat,
        geometry,
        cfg,
        &super::local_ids(labels.len()),
    )
}

/// [`square`] with the examples' positions in the data (`ids`): every draw for example i
/// (its stripes, then one window per query while it stands) comes from
/// [`super::example_rng`]`(seed, 0x5175, ids[i])`.
pub fn square_at(
    oracle: &mut dyn Oracle,
    x0: &[f32],
    labels: &[usize],
    threat: &Threat,
    geometry: Geometry,
    cfg: &SquareConfig,
    ids: &[u64],
) -> Result<Outcome> {
    let len = check_batch(oracle, x0, labels, 2)?;
    if ids.len() != labels.len() {
        bail!("{} example ids for {} labels", ids.len(), labels.len());
    }
    if threat.norm != Norm::Linf {
        bail!("the Square attack here supports the Linf threat model only");
    }
    if geometry.len() != len {
        bail!("Square: geometry {geometry:?} does not match examples of {len} values");
    }
    if cfg.queries == 0 {
        bail!("Square needs at least 1 query");
    }
    let n = labels.len();
    let eps = threat.eps;
    let mut rngs: Vec<Rng> = ids
        .iter()
        .map(|&id| super::example_rng(cfg.seed, 0x5175, id))
        .collect();
    let mut out = Outcome::start(x0.to_vec(), n);
    // Init: vertical stripes, one random sign per (channel, column).
    let mut x_best = x0.to_vec();
    for (ex, rng) in x_best.chunks_mut(len).zip(rngs.iter_mut()) {
        match geometry {
            Geometry::Chw { c, h, w } => {
                for ch in 0..c {
                    for col in 0..w {
                        let s = rng.sign() * eps;
                        for row in 0..h {
                            ex[(ch * h + row) * w + col] += s;
                        }
                    }
                }
            }
            Geometry::Hwc { c, h, w } => {
                for col in 0..w {
                    for ch in 0..c {
                        let s = rng.sign() * eps;
                        for row in 0..h {
                            ex[(row * w + col) * c + ch] += s;
                        }
                    }
                }
            }
            Geometry::Flat { .. } => {
                for v in ex.iter_mut() {
                    *v += rng.sign() * eps;
                }
            }
        }
    }
    threat.project(&mut x_best, x0, len);
    let mut m_best = margins(oracle, &x_best, labels)?;
    out.spend_all();

    for q in 1..cfg.queries {
        let idx: Vec<usize> = (0..n).filter(|i| m_best[*i] >= 0.0).collect();
        if idx.is_empty() {
            break;
        }
        let p = p_selection(cfg.p_init, q, cfg.queries);
        let mut cand = gather(&x_best, &idx, len);
        for (j, &i) in idx.iter().enumerate() {
            let ex = &mut cand[j * len..(j + 1) * len];
            let c0 = &x0[i * len..(i + 1) * len];
            propose(ex, c0, geometry, p, eps, &mut rngs[i]);
        }
        let c0 = gather(x0, &idx, len);
        threat.project(&mut cand, &c0, len);
        let y: Vec<usize> = idx.iter().map(|i| labels[*i]).collect();
        let m = margins(oracle, &cand, &y)?;
        out.spend(&idx);
        for (j, &i) in idx.iter().enumerate() {
            if m[j] < m_best[i] {
                m_best[i] = m[j];
                x_best[i * len..(i + 1) * len].copy_from_slice(&cand[j * len..(j + 1) * len]);
            }
        }
    }
    out.success = m_best.iter().map(|m| *m < 0.0).collect();
    out.x_adv = x_best;
    Ok(out)
}

/// Sets one random window of `ex` to x0 +- eps (a fresh sign per channel).
fn propose(ex: &mut [f32], x0: &[f32], geometry: Geometry, p: f32, eps: f32, rng: &mut Rng) {
    match geometry {
        Geometry::Chw { c, h, w } | Geometry::Hwc { c, h, w } => {
            let side = ((p * (h * w) as f32).sqrt().round() as usize).clamp(1, h.min(w));
            let (r0, c0) = (rng.below(h - side + 1), rng.below(w - side + 1));
            for ch in 0..c {
                let s = rng.sign() * eps;
                for row in r0..r0 + side {
                    for col in c0..c0 + side {
                        let k = match geometry {
                            Geometry::Chw { .. } => (ch * h + row) * w + col,
                            _ => (row * w + col) * c + ch,
                        };
                        ex[k] = x0[k] + s;
                    }
                }
            }
        }
        Geometry::Flat { len } => {
            let run = ((p * len as f32).round() as usize).clamp(1, len);
            let start = rng.below(len - run + 1);
            for k in start..start + run {
                ex[k] = x0[k] + rng.sign() * eps;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::testing::{dataset, TinyNet};

    #[test]
    fn square_finds_adversarials_inside_the_ball() {
        let mut net = TinyNet::new(16, 16, 4, 31);
        let (x, y) = dataset(&mut net, 64, 32);
        let threat = Threat::new(Norm::Linf, 0.1, (0.0, 1.0)).unwrap();
        let geo = Geometry::Chw { c: 1, h: 4, w: 4 };
        let cfg = SquareConfig {
            queries: 300,
            ..Default::default()
        };
        let s = square(&mut net, &x, &y, &threat, geo, &cfg).unwrap();
        assert!(s.success.iter().any(|v| *v));
        for i in 0..64 {
            let adv = &s.x_adv[i * 16..(i + 1) * 16];
            assert!(threat.contains(adv, &x[i * 16..(i + 1) * 16]));
            let l = net.logits(adv).unwrap();
            let broke = crate::metrics::argmax(l.row(0).as_slice().unwrap()) != y[i];
            assert_eq!(broke, s.success[i], "example {i}");
        }
    }

    #[test]
    fn schedule_shrinks() {
        assert_eq!(p_selection(0.8, 0, 5000), 0.8);
        assert!(p_selection(0.8, 4999, 5000) < p_selection(0.8, 100, 5000));
    }
}
