//! Falsification of VNN-COMP properties: search an input box for a point whose outputs
//! fall in the unsafe region (a disjunction of conjunctions of linear constraints).
//!
//! Cheap sampling first (the centre, random points, random corners of the box), then
//! rounds of sign-gradient ascent from many starts at once, one disjunct at a time, on
//! the objective -max_i c_i(Y) of that disjunct's constraints c_i(Y) <= 0; its gradient
//! is J^T(-a_i*) for the currently most violated constraint i*, taken through the
//! `Linear` loss head with the coefficients chosen from the previous iterate's outputs.
//! A falsifier can only answer `sat` (with a point, re-checked by the caller on the
//! original model) or `unknown`: it never claims a property holds.

use anyhow::{bail, Result};

use crate::attack::{Head, Oracle};
use crate::data::vnnlib::{LinearConstraint, Property};
use crate::rng::Rng;

#[derive(Clone, Debug, serde::Serialize)]
pub struct FalsifyConfig {
    pub seed: u64,
    /// Random points and random corners tried before gradient search.
    pub samples: usize,
    /// Parallel starts per gradient round.
    pub starts: usize,
    /// Steps per gradient round.
    pub steps: usize,
}

impl Default for FalsifyConfig {
    fn default() -> Self {
        FalsifyConfig {
            seed: 0,
            samples: 1024,
            starts: 32,
            steps: 60,
        }
    }
}

/// A point of the box whose outputs lie in the unsafe region.
#[derive(Clone, Debug)]
pub struct Counterexample {
    pub x: Vec<f32>,
    pub y: Vec<f32>,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FalsifyStats {
    pub evaluations: u64,
    pub rounds: u64,
    /// Which stage found the counterexample: centre, sampling or gradient.
    pub found_by: Option<String>,
}

/// The f32 interval inside [lo, hi] (or the nearest f32 when the box is narrower than
/// f32 resolution).
fn f32_box(lo: f64, hi: f64) -> (f32, f32) {
    let mut l = lo as f32;
    if (l as f64) < lo {
        l = l.next_up();
    }
    let mut h = hi as f32;
    if (h as f64) > hi {
        h = h.next_down();
    }
    if l > h {
        let m = (0.5 * (lo + hi)) as f32;
        (m, m)
    } else {
        (l, h)
    }
}

/// Values of the constraints of one conjunction on `y`, and the index of the largest.
fn worst(conj: &[LinearConstraint], y: &[f32]) -> (usize, f64) {
    conj.iter()
        .enumerate()
        .map(|(i, c)| (i, c.value(y)))
        .fold((0, f64::NEG_INFINITY), |a, b| if b.1 > a.1 { b } else { a })
}

/// Searches `prop`'s box for an unsafe point. `stop` is polled between evaluations
/// (the caller's time limit).
pub fn falsify(
    oracle: &mut dyn Oracle,
    prop: &Property,
    cfg: &FalsifyConfig,
    stop: &mut dyn FnMut() -> bool,
) -> Result<(Option<Counterexample>, FalsifyStats)> {
    let d = oracle.example_len();
    let k = oracle.num_classes();
    if prop.n_inputs != d {
        bail!(
            "the property has {} inputs but the model takes {d} values",
            prop.n_inputs
        );
    }
    if prop.n_outputs > k {
        bail!(
            "the property names {} outputs but the model gives {k}",
            prop.n_outputs
        );
    }
    // f32 bounds inside the f64 box, so every point tried lies in the box exactly.
    let (lo, hi): (Vec<f32>, Vec<f32>) = prop
        .input_lo
        .iter()
        .zip(&prop.input_hi)
        .map(|(&l, &h)| f32_box(l, h))
        .unzip();
    let mut stats = FalsifyStats::default();
    let mut rng = Rng::derive(cfg.seed, 0xFA15);

    // Checks a batch of points; returns the first unsafe one.
    let check = |oracle: &mut dyn Oracle,
                 x: &[f32],
                 stats: &mut FalsifyStats|
     -> Result<Option<Counterexample>> {
        let l = oracle.logits(x)?;
        stats.evaluations += l.nrows() as u64;
        for (i, row) in l.rows().into_iter().enumerate() {
            let y: Vec<f32> = row.iter().copied().collect();
            if prop.is_unsafe(&y) {
                return Ok(Some(Counterexample {
                    x: x[i * d..(i + 1) * d].to_vec(),
                    y,
                }));
            }
        }
        Ok(None)
    };
    let found = |cx: Counterexample, mut stats: FalsifyStats, by: &str| {
        stats.found_by = Some(by.to_string());
        Ok((Some(cx), stats))
    };

    let centre: Vec<f32> = lo
        .iter()
        .zip(&hi)
        .map(|(l, h)| (0.5 * (l + h)).clamp(*l, *h))
        .collect();
    if let Some(cx) = check(oracle, &centre, &mut stats)? {
        return found(cx, stats, "centre");
    }
    // Random points and random corners, in batches.
    let batch = cfg.starts.max(1);
    let mut done = 0;
    while done < cfg.samples && !stop() {
        let mut x = Vec::with_capacity(batch * d);
        for b in 0..batch {
            for i in 0..d {
                x.push(if b % 2 == 0 {
                    rng.range(lo[i], hi[i])
                } else if rng.sign() > 0.0 {
                    hi[i]
                } else {
                    lo[i]
                });
            }
        }
        if let Some(cx) = check(oracle, &x, &mut stats)? {
            return found(cx, stats, "sampling");
        }
        done += batch;
    }

    // Gradient rounds, one disjunct at a time.
    let disjuncts: Vec<&Vec<LinearConstraint>> = prop
        .unsafe_region
        .iter()
        .filter(|c| !c.is_empty())
        .collect();
    if disjuncts.is_empty() {
        return Ok((None, stats));
    }
    // The disjuncts closest to holding at the centre first (for robustness properties:
    // the runner-up classes), then round-robin from the best.
    let mut disjuncts = disjuncts;
    {
        let y0: Vec<f32> = oracle.logits(&centre)?.iter().copied().collect();
        stats.evaluations += 1;
        disjuncts.sort_by(|a, b| worst(a, &y0).1.total_cmp(&worst(b, &y0).1));
    }
    let width: Vec<f32> = lo.iter().zip(&hi).map(|(a, b)| b - a).collect();
    let mut round = 0usize;
    while !stop() {
        let conj = disjuncts[round % disjuncts.len()];
        round += 1;
        stats.rounds += 1;
        // Starts: centre (first round), uniform points, corners.
        let mut x = Vec::with_capacity(batch * d);
        for b in 0..batch {
            for i in 0..d {
                x.push(match (round, b) {
                    (1, 0) => centre[i],
                    (_, b) if b % 3 == 2 => {
                        if rng.sign() > 0.0 {
                            hi[i]
                        } else {
                            lo[i]
                        }
                    }
                    _ => rng.range(lo[i], hi[i]),
                });
            }
        }
        let mut coeffs = vec![0.0f32; batch * k];
        let logits = oracle.logits(&x)?;
        stats.evaluations += batch as u64;
        let mut rows: Vec<Vec<f32>> = logits.rows().into_iter().map(|r| r.to_vec()).collect();
        // A larger first step for later rounds explores more of the box.
        let big = if round % 2 == 1 { 0.25 } else { 0.5 };
        for t in 0..cfg.steps {
            if stop() {
                break;
            }
            for (b, y) in rows.iter().enumerate() {
                let (i, _) = worst(conj, y);
                let c = &mut coeffs[b * k..(b + 1) * k];
                c.iter_mut().for_each(|v| *v = 0.0);
                for &(j, a) in &conj[i].coeffs {
                    c[j] = -(a as f32);
                }
            }
            let lg = oracle.loss_grad(&x, Head::Linear { coeffs: &coeffs })?;
            stats.evaluations += batch as u64;
            rows = lg.logits.rows().into_iter().map(|r| r.to_vec()).collect();
            for (b, y) in rows.iter().enumerate() {
                if prop.is_unsafe(y) {
                    return found(
                        Counterexample {
                            x: x[b * d..(b + 1) * d].to_vec(),
                            y: y.clone(),
                        },
                        stats,
                        "gradient",
                    );
                }
            }
            // Cosine-decayed sign steps, scaled by the box's width per coordinate.
            let frac = t as f32 / cfg.steps.max(1) as f32;
            let alpha = 0.005 + (big - 0.005) * 0.5 * (1.0 + (std::f32::consts::PI * frac).cos());
            for (b, ex) in x.chunks_mut(d).enumerate() {
                let g = &lg.grad[b * d..(b + 1) * d];
                for i in 0..d {
                    let s = crate::attack::sign(g[i]);
                    ex[i] = (ex[i] + alpha * width[i] * s).clamp(lo[i], hi[i]);
                }
            }
        }
        if let Some(cx) = check(oracle, &x, &mut stats)? {
            return found(cx, stats, "gradient");
        }
    }
    Ok((None, stats))
}

/// The counterexample in VNN-COMP's format: `sat` then `((X_0 v) ... (Y_0 v) ...)`.
pub fn render_counterexample(cx: &Counterexample) -> String {
    let mut s = String::from("sat\n(");
    let mut first = true;
    let mut item = |name: String, v: f32| {
        if !first {
            s.push_str("\n ");
        }
        first = false;
        // The f32's exact value in f64's shortest form: f32's own shortest form (0.03)
        // read back as f64, as checkers read it, can fall outside a box whose bound is
        // that f32 written in f64 (0.029999999329447746).
        s.push_str(&format!("({name} {:e})", f64::from(v)));
    };
    for (i, v) in cx.x.iter().enumerate() {
        item(format!("X_{i}"), *v);
    }
    for (j, v) in cx.y.iter().enumerate() {
        item(format!("Y_{j}"), *v);
    }
    s.push_str(")\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::testing::TinyNet;
    use crate::data::vnnlib::parse_vnnlib;

    fn prop_text(d: usize, centre: &[f32], eps: f32, label: usize, k: usize) -> String {
        let mut s = String::new();
        for i in 0..d {
            s += &format!("(declare-const X_{i} Real)\n");
        }
        for j in 0..k {
            s += &format!("(declare-const Y_{j} Real)\n");
        }
        for (i, c) in centre.iter().enumerate() {
            s += &format!(
                "(assert (>= X_{i} {}))\n(assert (<= X_{i} {}))\n",
                c - eps,
                c + eps
            );
        }
        s += "(assert (or\n";
        for j in (0..k).filter(|j| *j != label) {
            s += &format!("  (and (>= Y_{j} Y_{label}))\n");
        }
        s += "))\n";
        s
    }

    #[test]
    fn finds_counterexamples_and_never_lies() {
        let mut net = TinyNet::new(8, 12, 4, 41);
        let mut sat = 0;
        let mut rng = Rng::new(3);
        for case in 0..20 {
            let centre: Vec<f32> = (0..8).map(|_| rng.uniform()).collect();
            let l = net.logits(&centre).unwrap();
            let label = crate::metrics::argmax(l.row(0).as_slice().unwrap());
            let eps = if case % 2 == 0 { 0.3 } else { 0.001 };
            let props = parse_vnnlib(&prop_text(8, &centre, eps, label, 4), "t").unwrap();
            let mut calls = 0;
            let (cx, _) = falsify(&mut net, &props[0], &FalsifyConfig::default(), &mut || {
                calls += 1;
                calls > 200
            })
            .unwrap();
            if let Some(cx) = cx {
                sat += 1;
                assert!(props[0].is_unsafe(&net.logits(&cx.x).unwrap().row(0).to_vec()));
                for (i, v) in cx.x.iter().enumerate() {
                    assert!(
                        (*v as f64) >= props[0].input_lo[i] && (*v as f64) <= props[0].input_hi[i]
                    );
                }
            }
        }
        assert!(sat > 0);
        let out = render_counterexample(&Counterexample {
            x: vec![0.5, 0.25],
            y: vec![1.0],
        });
        assert_eq!(out, "sat\n((X_0 5e-1)\n (X_1 2.5e-1)\n (Y_0 1e0))\n");
    }
}
