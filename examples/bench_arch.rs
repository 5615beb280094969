//! Throughput of one full-size classifier (224x224, random weights; scripts/bench-arch.sh
//! exports them) on harden's runtimes: forward, input gradient (the attacks' graph,
//! `gradient_graph`, cross-entropy) and weight gradient (the training graph with every
//! trainable initializer lifted, `training_graph_wrt(.., Wrt::PARAMS)`), each run as harden
//! runs it (`runtime::Split`: the batch cut over the threads, runs sized for the cache).
//! Prints one JSON line per work (images/s, median of `--reps` timed runs after one
//! warm-up run, graph build and session open time) and the process's peak RSS.
//! Usage: cargo run --example bench_arch -- --model /tmp/arch/resnet50.onnx
//!        [--runtime ort|tract] [--threads 2] [--batch 16] [--reps 3]
//!        [--work forward,input,weight] [--split parts|whole]
//! `--split whole`: gradient graphs run as one session with `--threads` intra-op threads
//! on the whole batch, instead of `Split`'s parts side by side (to compare the two).
mod common;

use std::cell::{Cell, RefCell};
use std::time::Instant;

use anyhow::{anyhow, Result};
use harden::autodiff::{gradient_graph, trainable_params, training_graph_wrt, LossKind, Wrt};
use harden::model::OnnxModel;
use harden::rng::Rng;
use harden::runtime::{self, Join, Split};
use harden::spec::{InputSpec, SpecArgs};
use ndarray::{ArrayD, IxDyn};

/// The process's peak resident set (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let get = common::arg;
    let path = get("--model", "/tmp/arch/resnet50.onnx");
    let threads: usize = get("--threads", "2").parse()?;
    let batch: usize = get("--batch", "16").parse()?;
    let reps: usize = get("--reps", "3").parse()?;
    let works = get("--work", "forward,input,weight");
    let splittable = match get("--split", "parts").as_str() {
        "parts" => true,
        "whole" => false,
        s => return Err(anyhow!("--split: unknown '{s}' (parts, whole)")),
    };
    let choice = common::runtime();
    let ort = common::ort();
    let model = OnnxModel::load(std::path::Path::new(&path))?;
    let spec = InputSpec::resolve(&model.classifier_input()?, &SpecArgs::default())?;
    let example: Vec<usize> = spec.model_shape[1..]
        .iter()
        .map(|d| d.fixed())
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow!("{path}: symbolic example dimensions"))?;
    let proto = spec.wrap(&model)?;
    let input = spec.input_name.clone();
    let len: usize = example.iter().product();
    let mut rng = Rng::new(0);
    let x: Vec<f32> = (0..batch * len).map(|_| rng.uniform()).collect();
    let mut shape = vec![batch];
    shape.extend(&example);
    let x = ArrayD::from_shape_vec(IxDyn(&shape), x)?;
    let chunk = runtime::chunk_for(&proto, &input, &example, &ort);
    let model_name = std::path::Path::new(&path)
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    for work in works.split(',') {
        let t_open = Instant::now();
        // (sessions, the inputs after x, the first output that is summed over the batch)
        let (mut split, extra, join_from): (Split, Vec<ArrayD<f32>>, usize) = match work {
            "forward" => (
                Split::open_free(
                    choice,
                    &prost::Message::encode_to_vec(&proto),
                    threads,
                    true,
                    &ort,
                )?,
                vec![],
                usize::MAX,
            ),
            "input" => {
                let k = Cell::new(0);
                let split = Split::open(choice, batch, threads, chunk, splittable, &ort, |n| {
                    let g = gradient_graph(&proto, &input, &example, n, LossKind::CrossEntropy)?;
                    k.set(g.num_classes);
                    Ok(prost::Message::encode_to_vec(&g.proto))
                })?;
                (split, vec![onehot(batch, k.get())], usize::MAX)
            }
            "weight" => {
                let params = trainable_params(&model.proto);
                let k = Cell::new(0);
                let values: RefCell<Vec<ArrayD<f32>>> = RefCell::new(vec![]);
                let split = Split::open(choice, batch, threads, chunk, splittable, &ort, |n| {
                    let t = training_graph_wrt(
                        &proto,
                        &input,
                        &example,
                        n,
                        LossKind::CrossEntropy,
                        &params,
                        Wrt::PARAMS,
                    )?;
                    k.set(t.grad.num_classes);
                    *values.borrow_mut() = t
                        .param_shapes
                        .iter()
                        .zip(&t.param_values)
                        .map(|(s, v)| ArrayD::from_shape_vec(IxDyn(s), v.clone()))
                        .collect::<Result<_, _>>()?;
                    Ok(prost::Message::encode_to_vec(&t.grad.proto))
                });
                let split = split?;
                let mut extra = vec![onehot(batch, k.get())];
                extra.extend(values.into_inner());
                // Outputs: logits, loss, input gradient (stacked), then weight gradients
                // (summed over the parts).
                (split, extra, 3)
            }
            w => return Err(anyhow!("--work: unknown '{w}' (forward, input, weight)")),
        };
        let open_s = t_open.elapsed().as_secs_f64();
        let mut inputs = vec![x.view()];
        inputs.extend(extra.iter().map(|a| a.view()));
        let batched = |i: usize| i < 2;
        let join = |j: usize| {
            if j >= join_from {
                Join::Sum
            } else {
                Join::Stack
            }
        };
        let mut times = vec![];
        for rep in 0..=reps {
            let t = Instant::now();
            let out = split.run(&inputs, batched, join)?;
            if out.iter().any(|o| o.iter().any(|v| !v.is_finite())) {
                return Err(anyhow!("{work}: non-finite outputs"));
            }
            if rep > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let secs = median(times);
        println!(
            "{{\"tool\": \"harden-{}\", \"model\": {model_name:?}, \"work\": {work:?}, \"batch\": {batch}, \"threads\": {threads}, \"images_per_s\": {:.2}, \"open_s\": {open_s:.1}, \"peak_rss_mib\": {:.0}}}",
            split.name(),
            batch as f64 / secs,
            peak_rss_mib()
        );
    }
    Ok(())
}

/// Labels 0, 1, 2, ... as one-hot rows.
fn onehot(batch: usize, k: usize) -> ArrayD<f32> {
    let mut a = ArrayD::zeros(IxDyn(&[batch, k.max(1)]));
    for i in 0..batch {
        a[[i, i % k.max(1)]] = 1.0;
    }
    a
}
