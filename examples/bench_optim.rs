//! The optimiser step on the host (`Optimizer::step_on`, 1 and --threads threads) against
//! the same step as an ONNX
//! graph (`train::optim_graph`) run by a runtime on host arrays, for the parameter
//! shapes of a CIFAR PreActResNet-18 (11.2 M values): what the graph costs where it cannot
//! keep the weights on a device (on a GPU it saves copying weights in and gradients out).
//! Usage: cargo run --example bench_optim -- [--runtime ort|tract] [--kind sgd|adam]
//!        [--steps 20] [--threads 2]
mod common;

use std::time::Instant;

use harden::runtime::{self, OrtLocator, RuntimeChoice};
use harden::train::optim::{OptimConfig, Optimizer, OptimizerKind, Schedule};
use harden::train::optim_graph;
use ndarray::{ArrayD, IxDyn};

/// PreActResNet-18's trainable shapes for 32x32x3 inputs and 10 classes.
fn preact_resnet18() -> Vec<Vec<usize>> {
    let mut s = vec![vec![64, 3, 3, 3]];
    let mut cin = 64;
    for (c, first_stride) in [(64, 1), (128, 2), (256, 2), (512, 2)] {
        for block in 0..2 {
            s.extend([vec![cin], vec![cin]]); // BN before the first conv
            s.push(vec![c, cin, 3, 3]);
            s.extend([vec![c], vec![c]]);
            s.push(vec![c, c, 3, 3]);
            if block == 0 && (first_stride != 1 || cin != c) {
                s.push(vec![c, cin, 1, 1]);
            }
            cin = c;
        }
    }
    s.extend([vec![512], vec![512], vec![10, 512], vec![10]]);
    s
}

fn main() -> anyhow::Result<()> {
    let get = common::arg;
    let steps: usize = get("--steps", "20").parse()?;
    let threads: usize = get("--threads", "2").parse()?;
    let choice = match get("--runtime", "ort").as_str() {
        "tract" => RuntimeChoice::Tract,
        _ => RuntimeChoice::Ort,
    };
    let kind = match get("--kind", "adam").as_str() {
        "sgd" => OptimizerKind::Sgd,
        _ => OptimizerKind::Adam,
    };
    let shapes = preact_resnet18();
    let total: usize = shapes.iter().map(|s| s.iter().product::<usize>()).sum();
    let cfg = OptimConfig {
        kind,
        lr: 0.01,
        momentum: 0.9,
        weight_decay: 5e-4,
        schedule: Schedule::Cosine,
        warmup_steps: 0,
        total_steps: steps as u64,
    };
    let mut host = Optimizer::new(cfg.clone(), &shapes);
    let mut dev = Optimizer::new(cfg, &shapes);
    let mut w: Vec<Vec<f32>> = shapes
        .iter()
        .map(|s| vec![0.01; s.iter().product()])
        .collect();
    let g: Vec<Vec<f32>> = w.iter().map(|p| vec![0.001; p.len()]).collect();
    let mut host_ms = [0.0; 2];
    for (k, t) in [1, threads].into_iter().enumerate() {
        let t0 = Instant::now();
        for _ in 0..steps {
            let mut views: Vec<&mut [f32]> = w.iter_mut().map(|v| v.as_mut_slice()).collect();
            let gviews: Vec<&[f32]> = g.iter().map(Vec::as_slice).collect();
            host.step_on(&mut views, &gviews, t);
        }
        host_ms[k] = t0.elapsed().as_secs_f64() * 1e3 / steps as f64;
    }

    let bytes = optim_graph::build(kind, 0.9, 5e-4, &shapes, &dev.decay);
    let loc = OrtLocator::standard(
        std::env::var_os("ORT_DYLIB_PATH").map(Into::into),
        std::env::var_os("HOME")
            .map(std::path::PathBuf::from)
            .as_deref(),
        None,
    );
    let mut rt = runtime::open(choice, &bytes, threads, &loc)?;
    let arr = |s: &[usize], v: Vec<f32>| ArrayD::from_shape_vec(IxDyn(s), v);
    let mut state: Vec<Vec<ArrayD<f32>>> = shapes
        .iter()
        .map(|s| -> anyhow::Result<Vec<ArrayD<f32>>> {
            let n = s.iter().product();
            let mut v = vec![arr(s, vec![0.01; n])?, arr(s, vec![0.0; n])?];
            if kind == OptimizerKind::Adam {
                v.push(arr(s, vec![0.0; n])?);
            }
            Ok(v)
        })
        .collect::<anyhow::Result<_>>()?;
    let grads: Vec<ArrayD<f32>> = shapes
        .iter()
        .map(|s| arr(s, vec![0.001 * 128.0; s.iter().product()]))
        .collect::<Result<_, _>>()?;
    let mut graph_ms = 0.0;
    for step in 0..=steps {
        let sc: Vec<ArrayD<f32>> = optim_graph::scalar_inputs(kind, &dev.advance(), 128)
            .into_iter()
            .map(|v| ArrayD::from_elem(IxDyn(&[]), v))
            .collect();
        let mut views = vec![];
        for (st, gr) in state.iter().zip(&grads) {
            views.push(st[0].view());
            views.push(gr.view());
            views.extend(st[1..].iter().map(|a| a.view()));
        }
        views.extend(sc.iter().map(|a| a.view()));
        let t = Instant::now();
        let out = rt.run(&views)?;
        if step > 0 {
            // The first run is the warm-up.
            graph_ms += t.elapsed().as_secs_f64() * 1e3;
        }
        let per = state[0].len();
        for (i, st) in state.iter_mut().enumerate() {
            for (j, a) in st.iter_mut().enumerate() {
                *a = out[i * per + j].clone();
            }
        }
    }
    graph_ms /= steps as f64;
    println!(
        "optimiser step ({kind:?}, {} tensors, {:.1} M values): host {:.1} ms on 1 thread, {:.1} ms on {threads}; graph on {choice:?} ({threads} threads) {graph_ms:.1} ms, graph/host {:.2}x",
        shapes.len(),
        total as f64 / 1e6,
        host_ms[0],
        host_ms[1],
        graph_ms / host_ms[1]
    );
    Ok(())
}
