//! The optimiser step as an ONNX graph: the update of [`Optimizer::step`], op for op in
//! f32, so that where the gradient graphs run on a device the weights and the optimiser
//! state can stay there between steps (the GPU issue); on the CPU the host loop is as
//! fast, and training keeps it.
//!
//! Inputs, per parameter `i` in order: `w.i`, `g.i` (the gradient summed over the batch,
//! as the weight-gradient graph gives it), `m.i`, and for Adam `v.i`; then the scalars of
//! the step ([`Optimizer::advance`] gives them): `scale` (1 / batch), `lr`, and for Adam
//! `c1`, `c2` (the bias corrections 1 - beta^t). Outputs: `w.i.next`, `m.i.next` and for
//! Adam `v.i.next`, per parameter, then `nonfinite`: how many gradient entries are NaN or
//! infinite, so that the host reads one number instead of the gradients to refuse a
//! diverged step.

use crate::autodiff::builder::Builder;
use crate::model::{float_value_info, pb, Dim};

use super::optim::{OptimizerKind, StepScalars, ADAM_EPS, BETA1, BETA2};

/// One optimiser step over parameters of these shapes, `decay[i]` saying whether
/// parameter `i` gets weight decay. Returns the encoded model (opset 13).
pub fn build(
    kind: OptimizerKind,
    momentum: f32,
    weight_decay: f32,
    shapes: &[Vec<usize>],
    decay: &[bool],
) -> Vec<u8> {
    let mut b = Builder::new(13, "opt/");
    let adam = kind == OptimizerKind::Adam;
    let value = |name: &str, shape: &[usize]| {
        float_value_info(
            name,
            &shape.iter().map(|d| Dim::Fixed(*d)).collect::<Vec<_>>(),
        )
    };
    let (mut inputs, mut outputs) = (vec![], vec![]);
    for (i, s) in shapes.iter().enumerate() {
        let names = param_inputs(i);
        let used = if adam { 4 } else { 3 };
        inputs.extend(names[..used].iter().map(|n| value(n, s)));
    }
    inputs.extend(scalar_names(kind).iter().map(|n| value(n, &[])));
    let zero = b.scalar(0.0);
    let mut checks = vec![];
    for (i, shape) in shapes.iter().enumerate() {
        let [w, g_sum, m, v] = param_inputs(i);
        let [w_next, m_next, v_next] = param_outputs(i);
        let g = b.mul(&g_sum, "scale");
        let wd = if decay[i] { weight_decay } else { 0.0 };
        match kind {
            OptimizerKind::Sgd => {
                // m = mu * m + g + d * w; w -= lr * m
                let mu = b.scalar(momentum);
                let mm = b.mul(mu.as_str(), &m);
                let mg = b.add(&mm, &g);
                let d = b.scalar(wd);
                let dw = b.mul(&d, &w);
                b.op_into("Add", &[&mg, &dw], vec![], &m_next);
                let step = b.mul("lr", &m_next);
                b.op_into("Sub", &[&w, &step], vec![], &w_next);
            }
            OptimizerKind::Adam => {
                // m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g g;
                // w -= lr (m / c1 / (sqrt(v / c2) + eps) + d w)
                let (b1, nb1) = (b.scalar(BETA1), b.scalar(1.0 - BETA1));
                let (b2, nb2) = (b.scalar(BETA2), b.scalar(1.0 - BETA2));
                let t1 = b.mul(&b1, &m);
                let t2 = b.mul(&nb1, &g);
                b.op_into("Add", &[&t1, &t2], vec![], &m_next);
                let t3 = b.mul(&b2, &v);
                let t4 = b.mul(&nb2, &g);
                let t5 = b.mul(&t4, &g);
                b.op_into("Add", &[&t3, &t5], vec![], &v_next);
                let mh = b.div(&m_next, "c1");
                let vh = b.div(&v_next, "c2");
                let root = b.op("Sqrt", &[&vh], vec![]);
                let eps = b.scalar(ADAM_EPS);
                let den = b.add(&root, &eps);
                let q = b.div(&mh, &den);
                let d = b.scalar(wd);
                let dw = b.mul(&d, &w);
                let u = b.add(&q, &dw);
                let step = b.mul("lr", &u);
                b.op_into("Sub", &[&w, &step], vec![], &w_next);
            }
        }
        outputs.push(value(&w_next, &shapes[i]));
        outputs.push(value(&m_next, &shapes[i]));
        if adam {
            outputs.push(value(&v_next, &shapes[i]));
        }
        // IsNaN/IsInf, not `g * 0`: tract folds a product with zero.
        let nan = b.op("IsNaN", &[&g_sum], vec![]);
        let inf = b.op("IsInf", &[&g_sum], vec![]);
        let bad = b.op("Or", &[&nan, &inf], vec![]);
        let count = b.as_float(&bad);
        let all: Vec<i64> = (0..shape.len() as i64).collect();
        checks.push(if all.is_empty() {
            count
        } else {
            b.reduce_sum(&count, &all, false)
        });
    }
    let total = match checks.as_slice() {
        [] => zero.clone(),
        [one] => one.clone(),
        many => {
            let refs: Vec<&str> = many.iter().map(String::as_str).collect();
            b.op("Sum", &refs, vec![])
        }
    };
    b.op_into("Identity", &[&total], vec![], "nonfinite");
    outputs.push(value("nonfinite", &[]));
    crate::model::encode_opset13(pb::GraphProto {
        name: "optimizer_step".into(),
        node: b.nodes,
        initializer: b.inits,
        input: inputs,
        output: outputs,
        ..Default::default()
    })
}

/// Parameter `i`'s inputs: its value, its gradient summed over the batch, its first and
/// (Adam only) second moments.
pub fn param_inputs(i: usize) -> [String; 4] {
    [
        format!("w.{i}"),
        format!("g.{i}"),
        format!("m.{i}"),
        format!("v.{i}"),
    ]
}

/// Parameter `i`'s outputs: its new value and moments (the second for Adam only).
pub fn param_outputs(i: usize) -> [String; 3] {
    [
        format!("w.{i}.next"),
        format!("m.{i}.next"),
        format!("v.{i}.next"),
    ]
}

/// The names of the scalar inputs after the tensors, in the graph's order (their values:
/// [`scalar_inputs`]).
pub fn scalar_names(kind: OptimizerKind) -> &'static [&'static str] {
    match kind {
        OptimizerKind::Adam => &["scale", "lr", "c1", "c2"],
        OptimizerKind::Sgd => &["scale", "lr"],
    }
}

/// The scalar inputs after the tensors, in the graph's order.
pub fn scalar_inputs(kind: OptimizerKind, s: &StepScalars, batch: usize) -> Vec<f32> {
    let mut v = vec![1.0 / batch as f32, s.lr];
    if kind == OptimizerKind::Adam {
        v.extend([s.c1, s.c2]);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use crate::runtime;
    use crate::runtime::RuntimeChoice;
    use crate::testutil::{assert_close, ort_locator, runtimes};
    use crate::train::optim::{OptimConfig, Optimizer, Schedule};
    use ndarray::{ArrayD, IxDyn};

    /// The graph's update equals the host's over five steps of each optimiser with
    /// weight decay, momentum, warm-up and a cosine schedule, on both runtimes: bit for
    /// bit on ONNX Runtime; within 1e-6 of the largest value on tract, which divides by a
    /// scalar as a product with its reciprocal (1 ulp apart at Adam's bias corrections).
    #[test]
    fn the_graph_step_is_the_host_step() {
        let shapes = vec![vec![3, 4], vec![4], vec![2, 3, 3]];
        for choice in runtimes() {
            for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
                let cfg = OptimConfig {
                    kind,
                    lr: 0.05,
                    momentum: 0.9,
                    weight_decay: 0.01,
                    schedule: Schedule::Cosine,
                    warmup_steps: 2,
                    total_steps: 5,
                };
                let mut host = Optimizer::new(cfg.clone(), &shapes);
                let mut dev = Optimizer::new(cfg, &shapes);
                let bytes = build(kind, 0.9, 0.01, &shapes, &host.decay);
                let mut rt = runtime::open(choice, &bytes, 1, &ort_locator()).unwrap();
                let mut rng = Rng::new(7);
                let mut w: Vec<Vec<f32>> = shapes
                    .iter()
                    .map(|s| (0..s.iter().product()).map(|_| rng.normal()).collect())
                    .collect();
                let mut wg = w.clone();
                let batch = 8;
                for step in 0..5 {
                    let g: Vec<Vec<f32>> = w
                        .iter()
                        .map(|p| p.iter().map(|_| 3.0 * rng.normal()).collect())
                        .collect();
                    // The host: the mean gradient, then its step.
                    let mean: Vec<Vec<f32>> = g
                        .iter()
                        .map(|x| x.iter().map(|v| v * (1.0 / batch as f32)).collect())
                        .collect();
                    let mut views: Vec<&mut [f32]> =
                        w.iter_mut().map(|v| v.as_mut_slice()).collect();
                    let gviews: Vec<&[f32]> = mean.iter().map(Vec::as_slice).collect();
                    host.step(&mut views, &gviews);
                    // The graph.
                    let sc = scalar_inputs(kind, &dev.advance(), batch);
                    let mut ins: Vec<ArrayD<f32>> = vec![];
                    for i in 0..shapes.len() {
                        let arr = |v: &Vec<f32>| {
                            ArrayD::from_shape_vec(IxDyn(&shapes[i]), v.clone()).unwrap()
                        };
                        ins.push(arr(&wg[i]));
                        ins.push(arr(&g[i]));
                        ins.push(arr(&dev.m[i]));
                        if kind == OptimizerKind::Adam {
                            ins.push(arr(&dev.v[i]));
                        }
                    }
                    ins.extend(sc.iter().map(|v| ArrayD::from_elem(IxDyn(&[]), *v)));
                    let views: Vec<_> = ins.iter().map(|a| a.view()).collect();
                    let out = rt.run(&views).unwrap();
                    let per = if kind == OptimizerKind::Adam { 3 } else { 2 };
                    for i in 0..shapes.len() {
                        let o = &out[i * per..];
                        wg[i] = o[0].iter().copied().collect();
                        dev.m[i] = o[1].iter().copied().collect();
                        if kind == OptimizerKind::Adam {
                            dev.v[i] = o[2].iter().copied().collect();
                        }
                        let what = format!("{choice:?} {kind:?} step {step} parameter {i}");
                        let same = |want: &[f32], got: &[f32], part: &str| {
                            if choice == RuntimeChoice::Ort {
                                assert_eq!(want, got, "{what}: {part}");
                            } else {
                                assert_close(want, got, 1e-6, &format!("{what}: {part}"));
                            }
                        };
                        same(&w[i], &wg[i], "weights");
                        same(&host.m[i], &dev.m[i], "first moment");
                        if kind == OptimizerKind::Adam {
                            same(&host.v[i], &dev.v[i], "second moment");
                        }
                    }
                    assert_eq!(out.last().unwrap().iter().next(), Some(&0.0));
                }
                assert_eq!(dev.t, host.t);
            }
        }
    }

    /// `nonfinite` counts the NaN and infinite gradient entries; huge finite ones are
    /// not counted.
    #[test]
    fn nonfinite_flags_a_diverged_gradient() {
        let shapes = vec![vec![2, 2], vec![3]];
        for choice in runtimes() {
            let bytes = build(OptimizerKind::Sgd, 0.0, 0.0, &shapes, &[true, false]);
            let mut rt = runtime::open(choice, &bytes, 1, &ort_locator()).unwrap();
            for (bad, count) in [
                (None, 0.0),
                (Some(f32::MAX), 0.0),
                (Some(f32::NAN), 1.0),
                (Some(f32::INFINITY), 1.0),
                (Some(f32::NEG_INFINITY), 1.0),
            ] {
                let mut ins: Vec<ArrayD<f32>> = vec![];
                for (i, s) in shapes.iter().enumerate() {
                    let mut g = ArrayD::from_elem(IxDyn(s), 0.5f32);
                    if let (Some(v), 1) = (bad, i) {
                        g[[2]] = v;
                    }
                    ins.push(ArrayD::zeros(IxDyn(s)));
                    ins.push(g);
                    ins.push(ArrayD::zeros(IxDyn(s)));
                }
                ins.push(ArrayD::from_elem(IxDyn(&[]), 1.0));
                ins.push(ArrayD::from_elem(IxDyn(&[]), 0.1));
                let views: Vec<_> = ins.iter().map(|a| a.view()).collect();
                let out = rt.run(&views).unwrap();
                let flag = *out.last().unwrap().iter().next().unwrap();
                assert_eq!(flag, count, "{choice:?} {bad:?}");
            }
        }
    }
}
