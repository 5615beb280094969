//! One epoch of adversarial training (default: `--method pgd`, 7 steps, eps 0.1, batch
//! 128, Adam) of the demo model on Fashion-MNIST training images with harden; prints one
//! JSON line like scripts/bench_tf.py's. No validation or audits: the training loop only.
//! Usage: cargo run --example bench_train -- [--runtime ort|tract] [--images 60000]
//!        [--method pgd|fast|mixed|trades] [--steps 7] [--batch 128] [--threads 2]
//!        [--model models/fmnist_cnn.onnx|models/wong_cnn.onnx]
//!        [--floor] [--step host|graph|bound]
//! With `--floor` (pgd and fast) it then also times the epoch's gradient-graph runs alone
//! (per batch, the attack's input-gradient runs and the one weight-gradient run, on the
//! clean images, no projection and no optimiser step): the floor set by the runtime, like
//! bench_pgd's graph-only figure (null without it: it takes as long as the epoch).
//! `--step`: how the training attack's steps run (`runtime::StepMode`; default the
//! network's: bound on CUDA, the host loop on the CPU).
mod common;

use std::time::Instant;

use harden::attack::{Norm, Oracle, Threat};
use harden::autodiff::trainable_params;
use harden::autodiff::LossKind;
use harden::oracle::onehot;
use harden::runtime::StepMode;

use harden::train::{self, optim, Examples, HardenConfig, Method, TrainNet};

fn main() -> anyhow::Result<()> {
    let get = common::arg;
    let images: usize = get("--images", "60000").parse()?;
    let steps: usize = get("--steps", "7").parse()?;
    let method = match get("--method", "pgd").as_str() {
        "fast" => Method::Fast,
        "mixed" => Method::Mixed,
        "trades" => Method::Trades,
        _ => Method::Pgd,
    };
    let common::Setup {
        model,
        spec,
        opts,
        mapping,
        x,
        labels,
    } = common::setup("fashion-mnist:train", images)?;
    // `--batch` and `--threads` are read once, by common::setup.
    let (batch, threads) = (opts.batch_size, opts.threads);
    let train_set = Examples {
        x,
        y: labels,
        len: mapping.example_len(),
    };
    let params = trainable_params(&model.proto);
    let mut net = TrainNet::new(
        spec.wrap(&model)?,
        &spec.input_name,
        &mapping.example_shape,
        10,
        params,
        &opts,
        batch,
    )?;
    let step = get("--step", "");
    match step.as_str() {
        "" => {}
        "host" => net.set_step_mode(StepMode::Host),
        "graph" => net.set_step_mode(StepMode::Graph),
        "bound" => net.set_step_mode(StepMode::Bound),
        s => anyhow::bail!("--step {s}: expected host, graph or bound"),
    }
    let cfg = HardenConfig {
        method,
        norm: Norm::Linf,
        eps: 0.1,
        train_eps: None,
        epochs: 1,
        batch_size: batch,
        adv_ratio: 0.5,
        attack_steps: steps,
        step_size: None,
        beta: 6.0,
        optim: optim::OptimConfig {
            kind: optim::OptimizerKind::Adam,
            lr: 1e-3,
            momentum: 0.9,
            weight_decay: 0.0,
            schedule: optim::Schedule::Cosine,
            warmup_steps: 0,
            total_steps: 0,
        },
        warmup_epochs: 0.0,
        seed: 0,
        val_steps: 1,
        patience: None,
    };
    let threat = Threat::new(Norm::Linf, 0.1, (0.0, 1.0))?;
    // Warm-up: build and open the graphs on a one-batch run.
    let warm = train_set.first(batch);
    let none = Examples::default();
    let t = Instant::now();
    let mut clock = || t.elapsed().as_secs_f64();
    train::fit(
        &mut net,
        &warm,
        &none,
        &threat,
        &cfg,
        None,
        None,
        &mut |_| {},
        &mut clock,
    )?;
    let t0 = Instant::now();
    let r = train::fit(
        &mut net,
        &train_set,
        &none,
        &threat,
        &cfg,
        None,
        None,
        &mut |_| {},
        &mut clock,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    let trained = (train_set.len() / batch) * batch;
    // The same graph runs without the loop around them.
    let floor = std::env::args().any(|a| a == "--floor");
    let input_runs = match method {
        Method::Pgd if floor => Some(steps),
        Method::Fast if floor => Some(1),
        _ => None,
    };
    let graph_secs = match input_runs {
        Some(runs) => {
            let (len, k) = (train_set.len, net.num_classes());
            let t0 = Instant::now();
            for (xb, yb) in train_set
                .x
                .chunks_exact(batch * len)
                .zip(train_set.y.chunks_exact(batch))
            {
                let heads = [onehot(yb, k)];
                for _ in 0..runs {
                    net.run_graph(LossKind::CrossEntropy, false, batch, xb, &heads)?;
                }
                net.run_graph(LossKind::CrossEntropy, true, batch, xb, &heads)?;
            }
            Some(t0.elapsed().as_secs_f64())
        }
        None => None,
    };
    let or_null =
        |v: Option<f64>, digits: usize| v.map_or("null".to_string(), |v| format!("{v:.digits$}"));
    println!(
        "{{\"tool\": \"harden-{}\", \"model\": {:?}, \"work\": \"train-{}{}\", \"images\": {trained}, \"batch\": {batch}, \"threads\": {threads}, \"step\": {step:?}, \"images_per_s\": {:.1}, \"graph_only_images_per_s\": {}, \"overhead_over_graph\": {}, \"epochs\": {}}}",
        net.runtime_name()?,
        common::model_path(),
        method.name(),
        if matches!(method, Method::Fast) { String::new() } else { steps.to_string() },
        trained as f64 / secs,
        or_null(graph_secs.map(|g| trained as f64 / g), 1),
        or_null(graph_secs.map(|g| secs / g), 3),
        r.epochs_run
    );
    Ok(())
}
