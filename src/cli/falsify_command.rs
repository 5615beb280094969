//! `harden falsify`: VNN-COMP robustness properties answered `sat` with a point or
//! `unknown`.

use super::*;

#[derive(Args, Debug)]
pub struct FalsifyArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// The VNN-COMP property (.vnnlib).
    pub property: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 20.0)]
    pub timeout: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also write the answer to FILE (the competition's result file).
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
    #[command(flatten)]
    pub rounding: RoundingArgs,
}

/// Falsifies; where ONNX Runtime runs out of memory, again at half the batch size (the
/// points tried do not depend on it), down to one example, saying so, all within the one
/// --timeout.
pub(super) fn run(mut a: FalsifyArgs, env: &Env) -> Result<i32> {
    let started = Instant::now();
    halving_batch(a.run.batch_size, "falsifying", |b| {
        a.run.batch_size = b;
        falsify(&a, env, started)
    })
}

fn falsify(a: &FalsifyArgs, env: &Env, started: Instant) -> Result<i32> {
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        bail!("--timeout must be a positive number of seconds");
    }
    let mut model = OnnxModel::load(&a.model)?;
    a.rounding.apply(&mut model);
    let info = model.classifier_input()?;
    let props = crate::data::vnnlib::parse_vnnlib_file(&a.property)?;
    let example_shape = info.example_shape()?;
    let lo = props
        .iter()
        .flat_map(|p| p.input_lo.iter())
        .cloned()
        .fold(f64::INFINITY, f64::min) as f32;
    let hi = props
        .iter()
        .flat_map(|p| p.input_hi.iter())
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max) as f32;
    let spec_args = SpecArgs {
        layout: Some(Layout::Flat),
        range: Some((lo, if hi > lo { hi } else { lo + 1.0 })),
        ..Default::default()
    };
    let spec = InputSpec::resolve(&info, &spec_args)?;
    let opts = a.run.options(env)?;
    let classifier = Classifier::open(&model, &spec, &example_shape, &opts)?;
    let mut oracle = ModelOracle::new(&model, &spec, classifier, &opts)?;
    // Without gradients (ops harden cannot differentiate) only sampling runs.
    let gradients = model.unsupported_nodes().is_empty()
        && crate::runtime::unless_out_of_memory(oracle.prepare(LossKind::Linear))?.is_ok();
    let deadline = a.timeout;
    let mut answer = String::from("unknown\n");
    for (i, prop) in props.iter().enumerate() {
        let cfg = crate::falsify::FalsifyConfig {
            seed: a.seed.wrapping_add(i as u64),
            // Without gradients only sampling runs.
            steps: if gradients { 60 } else { 0 },
            ..Default::default()
        };
        let mut stop = || started.elapsed().as_secs_f64() > deadline;
        let (found, _stats) = crate::falsify::falsify(&mut oracle, prop, &cfg, &mut stop)?;
        if let Some(cx) = found {
            // Re-check on the original model with a plain forward pass, inside the box.
            let y = oracle.classifier().logits(&cx.x)?;
            let y: Vec<f32> = y.iter().copied().collect();
            let inside =
                cx.x.iter().enumerate().all(|(j, v)| {
                    (*v as f64) >= prop.input_lo[j] && (*v as f64) <= prop.input_hi[j]
                });
            if inside && prop.is_unsafe(&y) {
                answer = crate::falsify::render_counterexample(&crate::falsify::Counterexample {
                    x: cx.x,
                    y,
                });
                break;
            }
        }
        if started.elapsed().as_secs_f64() > deadline {
            break;
        }
    }
    if let Some(p) = &a.output {
        write_atomic(p, answer.as_bytes())?;
    }
    print_stdout(&answer)?;
    Ok(EXIT_OK)
}
