//! PGD-10 Linf (eps 0.1) over Fashion-MNIST test images with harden, and the same number
//! of runs of its fused gradient graph alone (the floor set by the runtime).
//! Usage: cargo run --example bench_pgd -- [--runtime ort|tract] [--images 1024]
//!        [--batch 128] [--threads 2] [--model models/fmnist_cnn.onnx|models/wong_cnn.onnx]
//!        [--stop-when-broken] [--step host|graph|bound]
//! By default every example is attacked for every step (`PgdConfig::every_step`, the work of
//! a plain PGD loop, what other tools do); with `--stop-when-broken`, as harden's audits run
//! it: an example leaves the batch once broken (same outcome, fewer runs). The overhead
//! ratio always compares the every-step attack with the graph runs. `--step` says how
//! PGD's steps run (`runtime::StepMode`): PGD's loop on the host (default), the step graph
//! step by step on host arrays, or bound (ONNX Runtime's IoBinding, one copy in and out
//! per run of examples).
mod common;

use std::time::Instant;

use harden::attack::pgd::{pgd, PgdConfig};
use harden::attack::{Head, Norm, Oracle, Threat};
use harden::classifier::Classifier;
use harden::oracle::ModelOracle;
use harden::runtime::StepMode;

fn main() -> anyhow::Result<()> {
    let get = common::arg;
    let images: usize = get("--images", "1024").parse()?;
    let common::Setup {
        model,
        spec,
        opts,
        mapping,
        x,
        labels,
    } = common::setup("fashion-mnist:test", images)?;
    // `--batch` and `--threads` are read once, by common::setup.
    let (batch, threads) = (opts.batch_size, opts.threads);
    let classifier = Classifier::open(&model, &spec, &mapping.example_shape, &opts)?;
    let mut oracle = ModelOracle::new(&model, &spec, classifier, &opts)?;
    let step = get("--step", "host");
    oracle.set_step_mode(match step.as_str() {
        "host" => StepMode::Host,
        "graph" => StepMode::Graph,
        "bound" => StepMode::Bound,
        s => anyhow::bail!("--step {s}: expected host, graph or bound"),
    });
    let len = oracle.example_len();
    let threat = Threat::new(Norm::Linf, 0.1, (0.0, 1.0))?;
    let stop_when_broken = std::env::args().any(|a| a == "--stop-when-broken");
    let full = PgdConfig {
        steps: 10,
        every_step: true,
        ..Default::default()
    };
    let cfg = PgdConfig {
        every_step: !stop_when_broken,
        ..full.clone()
    };
    // Warm-up: build the graph, first runs.
    oracle.loss_grad(
        &x[..batch * len],
        Head::CrossEntropy {
            labels: &labels[..batch],
        },
    )?;
    let mut best_graph = f64::INFINITY;
    let mut best_full = f64::INFINITY;
    let mut best_attack = f64::INFINITY;
    let mut robust = 0;
    let attack = |oracle: &mut ModelOracle, cfg: &PgdConfig| -> anyhow::Result<(f64, usize)> {
        let t0 = Instant::now();
        let mut r = 0;
        for (xb, yb) in x.chunks(batch * len).zip(labels.chunks(batch)) {
            let out = pgd(oracle, xb, yb, None, &threat, cfg)?;
            r += out.success.iter().filter(|s| !**s).count();
        }
        Ok((t0.elapsed().as_secs_f64(), r))
    };
    for _ in 0..3 {
        let t0 = Instant::now();
        for _ in 0..cfg.steps {
            for (xb, yb) in x.chunks(batch * len).zip(labels.chunks(batch)) {
                oracle.loss_grad(xb, Head::CrossEntropy { labels: yb })?;
            }
        }
        best_graph = best_graph.min(t0.elapsed().as_secs_f64());
        let (t, r) = attack(&mut oracle, &full)?;
        best_full = best_full.min(t);
        robust = r;
        if stop_when_broken {
            let (t, r) = attack(&mut oracle, &cfg)?;
            best_attack = best_attack.min(t);
            if r != robust {
                anyhow::bail!("stopping at broken examples left {r} robust, every step {robust}");
            }
        } else {
            best_attack = best_full;
        }
    }
    let n = labels.len() as f64;
    println!(
        "{{\"tool\": \"harden-{}\", \"model\": {:?}, \"work\": \"{}\", \"images\": {}, \"batch\": {batch}, \"threads\": {threads}, \"step\": \"{step}\", \"images_per_s\": {:.1}, \"graph_only_images_per_s\": {:.1}, \"overhead_over_graph\": {:.3}, \"not_broken\": {robust}}}",
        oracle.classifier().runtime_name(),
        common::model_path(),
        if stop_when_broken { "pgd10-stop" } else { "pgd10" },
        labels.len(),
        n / best_attack,
        n / best_graph,
        best_full / best_graph
    );
    Ok(())
}
