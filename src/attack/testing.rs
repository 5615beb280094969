//! A reference oracle for attack tests: a small tanh network with hand-written gradients
//! for every loss head, so attacks are tested independently of gradient graphs.

use anyhow::Result;
use ndarray::Array2;

use super::{Head, LossGrad, Oracle};
use crate::rng::Rng;

/// z = W2 tanh(W1 x + b1) + b2.
pub struct TinyNet {
    pub d: usize,
    pub h: usize,
    pub k: usize,
    w1: Vec<f32>,
    b1: Vec<f32>,
    w2: Vec<f32>,
    b2: Vec<f32>,
    pub calls: u64,
}

impl TinyNet {
    pub fn new(d: usize, h: usize, k: usize, seed: u64) -> TinyNet {
        let mut r = Rng::new(seed);
        let s1 = 2.0 / (d as f32).sqrt();
        let s2 = 2.0 / (h as f32).sqrt();
        TinyNet {
            d,
            h,
            k,
            w1: (0..h * d).map(|_| r.normal() * s1).collect(),
            b1: (0..h).map(|_| r.normal() * 0.1).collect(),
            w2: (0..k * h).map(|_| r.normal() * s2).collect(),
            b2: (0..k).map(|_| r.normal() * 0.1).collect(),
            calls: 0,
        }
    }

    fn forward(&self, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let hid: Vec<f32> = (0..self.h)
            .map(|j| {
                let s: f32 = (0..self.d).map(|i| self.w1[j * self.d + i] * x[i]).sum();
                (s + self.b1[j]).tanh()
            })
            .collect();
        let z = (0..self.k)
            .map(|c| {
                (0..self.h)
                    .map(|j| self.w2[c * self.h + j] * hid[j])
                    .sum::<f32>()
                    + self.b2[c]
            })
            .collect();
        (hid, z)
    }

    fn backward(&self, hid: &[f32], dz: &[f32]) -> Vec<f32> {
        let dh: Vec<f32> = (0..self.h)
            .map(|j| {
                (0..self.k)
                    .map(|c| self.w2[c * self.h + j] * dz[c])
                    .sum::<f32>()
                    * (1.0 - hid[j] * hid[j])
            })
            .collect();
        (0..self.d)
            .map(|i| (0..self.h).map(|j| self.w1[j * self.d + i] * dh[j]).sum())
            .collect()
    }
}

fn softmax(z: &[f32]) -> Vec<f32> {
    let m = z.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

/// Loss and dLoss/dz for one example, in closed form.
pub fn head_loss(z: &[f32], head: &Head<'_>, i: usize) -> (f32, Vec<f32>) {
    let k = z.len();
    let order = |z: &[f32]| {
        let mut o: Vec<usize> = (0..k).collect();
        o.sort_by(|a, b| z[*b].total_cmp(&z[*a]));
        o
    };
    let best_other = |y: usize| {
        (0..k)
            .filter(|j| *j != y)
            .max_by(|a, b| z[*a].total_cmp(&z[*b]))
            .unwrap()
    };
    match *head {
        Head::CrossEntropy { labels } => {
            let p = softmax(z);
            let y = labels[i];
            let mut g = p.clone();
            g[y] -= 1.0;
            (-p[y].max(1e-30).ln(), g)
        }
        Head::TargetedCrossEntropy { targets } => {
            let p = softmax(z);
            let t = targets[i];
            let mut g: Vec<f32> = p.iter().map(|v| -v).collect();
            g[t] += 1.0;
            (p[t].max(1e-30).ln(), g)
        }
        Head::Margin { labels } => {
            let y = labels[i];
            let j = best_other(y);
            let mut g = vec![0.0; k];
            g[j] = 1.0;
            g[y] = -1.0;
            (z[j] - z[y], g)
        }
        Head::Dlr { labels } => {
            let y = labels[i];
            let o = order(z);
            let j = best_other(y);
            let den = z[o[0]] - z[o[2]] + 1e-12;
            let num = z[y] - z[j];
            let mut g = vec![0.0; k];
            g[y] -= 1.0 / den;
            g[j] += 1.0 / den;
            g[o[0]] += num / (den * den);
            g[o[2]] -= num / (den * den);
            (-num / den, g)
        }
        Head::DlrTargeted { labels, targets } => {
            let (y, t) = (labels[i], targets[i]);
            let o = order(z);
            let den = z[o[0]] - 0.5 * (z[o[2]] + z[o[3]]) + 1e-12;
            let num = z[y] - z[t];
            let mut g = vec![0.0; k];
            g[y] -= 1.0 / den;
            g[t] += 1.0 / den;
            g[o[0]] += num / (den * den);
            g[o[2]] -= 0.5 * num / (den * den);
            g[o[3]] -= 0.5 * num / (den * den);
            (-num / den, g)
        }
        Head::Kl { probs } => {
            let p = softmax(z);
            let q = &probs[i * k..(i + 1) * k];
            let kl: f32 = q
                .iter()
                .zip(&p)
                .filter(|(a, _)| **a > 0.0)
                .map(|(a, b)| a * (a.ln() - b.max(1e-30).ln()))
                .sum();
            (kl, p.iter().zip(q).map(|(a, b)| a - b).collect())
        }
        Head::Linear { coeffs } => {
            let c = &coeffs[i * k..(i + 1) * k];
            (c.iter().zip(z).map(|(a, b)| a * b).sum(), c.to_vec())
        }
    }
}

impl Oracle for TinyNet {
    fn num_classes(&self) -> usize {
        self.k
    }
    fn example_len(&self) -> usize {
        self.d
    }
    fn logits(&mut self, x: &[f32]) -> Result<Array2<f32>> {
        let n = x.len() / self.d;
        self.calls += n as u64;
        let mut out = Vec::with_capacity(n * self.k);
        for ex in x.chunks(self.d) {
            out.extend(self.forward(ex).1);
        }
        Ok(Array2::from_shape_vec((n, self.k), out)?)
    }
    fn loss_grad(&mut self, x: &[f32], head: Head<'_>) -> Result<LossGrad> {
        let n = x.len() / self.d;
        self.calls += n as u64;
        let (mut logits, mut loss, mut grad) = (vec![], vec![], vec![]);
        for (i, ex) in x.chunks(self.d).enumerate() {
            let (hid, z) = self.forward(ex);
            let (l, dz) = head_loss(&z, &head, i);
            grad.extend(self.backward(&hid, &dz));
            logits.extend(z);
            loss.push(l);
        }
        Ok(LossGrad {
            logits: Array2::from_shape_vec((n, self.k), logits)?,
            loss,
            grad,
        })
    }
}

/// `n` examples the net classifies correctly (labels = its own predictions), in [0, 1].
pub fn dataset(net: &mut TinyNet, n: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
    let mut r = Rng::new(seed);
    let x: Vec<f32> = (0..n * net.d).map(|_| r.uniform()).collect();
    let l = net.logits(&x).unwrap();
    let y = l
        .rows()
        .into_iter()
        .map(|row| crate::metrics::argmax(row.as_slice().unwrap()))
        .collect();
    net.calls = 0;
    (x, y)
}

#[test]
fn reference_heads_match_finite_differences() {
    let mut net = TinyNet::new(6, 5, 5, 3);
    let (x, y) = dataset(&mut net, 4, 9);
    let t: Vec<usize> = y.iter().map(|v| (v + 1) % 5).collect();
    let probs: Vec<f32> = (0..4).flat_map(|_| [0.1, 0.2, 0.3, 0.25, 0.15]).collect();
    let heads = [
        Head::CrossEntropy { labels: &y },
        Head::TargetedCrossEntropy { targets: &t },
        Head::Margin { labels: &y },
        Head::Dlr { labels: &y },
        Head::DlrTargeted {
            labels: &y,
            targets: &t,
        },
        Head::Kl { probs: &probs },
        Head::Linear { coeffs: &probs },
    ];
    for head in heads {
        let lg = net.loss_grad(&x, head).unwrap();
        let h = 1e-3;
        for i in 0..x.len() {
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            let fp: f32 = net.loss_grad(&xp, head).unwrap().loss.iter().sum();
            let fm: f32 = net.loss_grad(&xm, head).unwrap().loss.iter().sum();
            let fd = (fp - fm) / (2.0 * h);
            assert!(
                (fd - lg.grad[i]).abs() < 2e-2 * (1.0 + fd.abs()),
                "{head:?} coord {i}: fd {fd} vs {}",
                lg.grad[i]
            );
        }
    }
}
