//! harden's side of scripts/gpu-bench.sh: one piece of work on random CIFAR-shaped data
//! (uniform images in [0, 1], random labels of 10 classes; throughput, not accuracy), on
//! the device asked for; prints one JSON line like scripts/gpu_bench_torch.py's.
//! Usage: cargo run --example bench_gpu -- --model preact18.onnx --device cuda
//!        [--work pgd|fast|pgd-at] [--images N] [--batch 512] [--threads 2]
//!        [--runtime ort|tract] [--precision tf32|fp32] [--step host|graph|bound]
//! `pgd`: PGD-10 Linf (eps 8/255, step 2/255), every example every step (a plain PGD
//! loop's work), default 10,000 images. `fast`: one Fast-AT epoch (FGSM with a random
//! start, eps 8/255), `pgd-at`: one PGD-7 adversarial-training epoch (SGD, momentum 0.9),
//! default 50,000 images. A warm-up batch first builds and opens the graphs (not timed).
//! `--step`: how the attack's steps run (`runtime::StepMode`; default bound on CUDA, the
//! iterate kept on the device, and the host loop on the CPU); in training, `bound` also
//! keeps the weights and the optimiser's state on the device (`train::resident`), which
//! the JSON line's `train_weights` records.
mod common;

use std::time::Instant;

use harden::attack::pgd::{pgd, PgdConfig};
use harden::attack::{Norm, Threat};
use harden::autodiff::trainable_params;
use harden::classifier::{Classifier, RunOptions};
use harden::oracle::ModelOracle;
use harden::runtime::Device;
use harden::runtime::StepMode;
use harden::spec::{InputSpec, SpecArgs};
use harden::train::{self, optim, Examples, HardenConfig, Method, TrainNet};

fn main() -> anyhow::Result<()> {
    let get = common::arg;
    let work = get("--work", "pgd");
    let default_images = if work == "pgd" { "10000" } else { "50000" };
    let images: usize = get("--images", default_images).parse()?;
    let batch: usize = get("--batch", "512").parse()?;
    let device: Device = get("--device", "cuda").parse()?;
    let runtime = common::runtime();
    let mut ort = common::ort().with_device(device);
    // Where the harden command looks for the CUDA libraries.
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    ort.cuda_lib_dirs
        .extend(harden::cli::python_nvidia_dirs(home.as_deref()));
    let mut ort = ort.resolve(runtime)?;
    // `--precision tf32` (default here, as PyTorch's convolutions) or fp32.
    let precision = get("--precision", "tf32");
    ort.tf32 = precision == "tf32" && !ort.device.cuda_ids().is_empty();
    let opts = RunOptions {
        runtime,
        threads: get("--threads", "2").parse()?,
        batch_size: batch,
        ort: ort.clone(),
        step_loop: None,
    };
    let model_path = common::model_path();
    let model = harden::model::OnnxModel::load(std::path::Path::new(&model_path))?;
    let spec = InputSpec::resolve(&model.classifier_input()?, &SpecArgs::default())?;
    let example_shape: Vec<usize> = spec.model_shape[1..]
        .iter()
        .map(|d| d.fixed())
        .collect::<Option<_>>()
        .ok_or_else(|| anyhow::anyhow!("the model's example shape is not fixed"))?;
    let len: usize = example_shape.iter().product();
    let mut rng = harden::rng::Rng::new(0);
    let x: Vec<f32> = (0..images * len).map(|_| rng.uniform()).collect();
    let labels: Vec<usize> = (0..images).map(|_| rng.below(10)).collect();
    let eps = 8.0 / 255.0;
    let threat = Threat::new(Norm::Linf, eps, (0.0, 1.0))?;
    let step: String;
    let mut train_weights = "";
    let step_mode: Option<StepMode> = match get("--step", "").as_str() {
        "" => None,
        s => Some(
            <StepMode as clap::ValueEnum>::from_str(s, true)
                .map_err(|_| anyhow::anyhow!("--step {s}: expected host, graph or bound"))?,
        ),
    };
    let (secs, done) = match work.as_str() {
        "pgd" => {
            let classifier = Classifier::open(&model, &spec, &example_shape, &opts)?;
            let mut oracle = ModelOracle::new(&model, &spec, classifier, &opts)?;
            if let Some(m) = step_mode {
                oracle.set_step_mode(m);
            }
            step = format!("{:?}", oracle.step_mode()).to_lowercase();
            let cfg = PgdConfig {
                steps: 10,
                step_size: Some(2.0 / 255.0),
                every_step: true,
                ..Default::default()
            };
            pgd(
                &mut oracle,
                &x[..batch * len],
                &labels[..batch],
                None,
                &threat,
                &cfg,
            )?;
            let t0 = Instant::now();
            for (xb, yb) in x.chunks(batch * len).zip(labels.chunks(batch)) {
                pgd(&mut oracle, xb, yb, None, &threat, &cfg)?;
            }
            (t0.elapsed().as_secs_f64(), images)
        }
        "fast" | "pgd-at" => {
            let train_set = Examples { x, y: labels, len };
            let mut net = TrainNet::new(
                spec.wrap(&model)?,
                &spec.input_name,
                &example_shape,
                10,
                trainable_params(&model.proto),
                &opts,
                batch,
            )?;
            let mode = step_mode.unwrap_or(opts.step_mode());
            net.set_step_mode(mode);
            step = format!("{mode:?}").to_lowercase();
            let (method, steps) = if work == "fast" {
                (Method::Fast, 1)
            } else {
                (Method::Pgd, 7)
            };
            let cfg = HardenConfig {
                method,
                norm: Norm::Linf,
                eps,
                train_eps: None,
                epochs: 1,
                batch_size: batch,
                adv_ratio: 1.0,
                attack_steps: steps,
                step_size: None,
                beta: 6.0,
                optim: optim::OptimConfig {
                    kind: optim::OptimizerKind::Sgd,
                    lr: 0.01,
                    momentum: 0.9,
                    weight_decay: 5e-4,
                    schedule: optim::Schedule::Cosine,
                    warmup_steps: 0,
                    total_steps: 0,
                },
                warmup_epochs: 0.0,
                seed: 0,
                val_steps: 1,
                patience: None,
            };
            let warm = train_set.first(batch);
            let none = Examples::default();
            let t = Instant::now();
            let mut clock = || t.elapsed().as_secs_f64();
            let fit = |net: &mut TrainNet, set: &Examples, clock: &mut dyn FnMut() -> f64| {
                train::fit(
                    net,
                    set,
                    &none,
                    &threat,
                    &cfg,
                    None,
                    None,
                    &mut |_| {},
                    clock,
                )
            };
            fit(&mut net, &warm, &mut clock)?;
            let t0 = Instant::now();
            let fitted = fit(&mut net, &train_set, &mut clock)?;
            train_weights = if fitted.resident { "bound" } else { "host" };
            (
                t0.elapsed().as_secs_f64(),
                (train_set.len() / batch) * batch,
            )
        }
        w => anyhow::bail!("--work {w}: expected pgd, fast or pgd-at"),
    };
    // The arithmetic that ran (TF32 only on CUDA) and the conv weight-gradient form
    // forced, if any (HARDEN_CONV_WEIGHT_GRAD).
    let ran = if ort.tf32 { "tf32" } else { "fp32" };
    let wgrad = match std::env::var("HARDEN_CONV_WEIGHT_GRAD").as_deref() {
        Ok("gemm") => "gemm",
        Ok("correlation") => "correlation",
        _ => "auto",
    };
    println!(
        "{{\"tool\": \"harden-{ran}\", \"device\": \"{}\", \"work\": \"{work}\", \"step\": \"{step}\", \"train_weights\": \"{train_weights}\", \"conv_weight_grad\": \"{wgrad}\", \"images\": {done}, \"batch\": {batch}, \"seconds\": {secs:.3}, \"images_per_s\": {:.1}}}",
        ort.device,
        done as f64 / secs
    );
    Ok(())
}
