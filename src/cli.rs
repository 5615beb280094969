//! Command line: the only module that knows clap, the environment and exit codes.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::audit;
use crate::classifier::{Classifier, RunOptions};
use crate::data::{self, DataSource};
use crate::inspect;
use crate::model::OnnxModel;
use crate::runtime::{OrtLocator, RuntimeChoice};
use crate::spec::{DataMapping, InputSpec, Layout, SpecArgs};

/// Exit codes, like grep: 0 ok (or gate passed), 1 gate failed, 2 error.
pub const EXIT_OK: i32 = 0;
pub const EXIT_ERROR: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "harden",
    version,
    about = "Audit and adversarially harden ONNX classifiers, without the training framework",
    after_help = "Exit codes: 0 ok, 1 a gate failed, 2 error (bad input, unsupported model)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Describe a model: opset, inputs/outputs, parameters, ops, and what harden cannot handle.
    Inspect {
        /// The ONNX model.
        model: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Measure a model on data: clean accuracy, per-class precision/recall/F1, confusion.
    Audit(AuditArgs),
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// Data: fashion-mnist[:train|:test], mnist[:...], an IDX/.npz/.npy/.vnnlib file, or a
    /// folder (IDX files, one sub-folder of images per class, or .vnnlib files). Default: the
    /// Fashion-MNIST test set if installed, else the bundled slice (28x28 models only).
    #[arg(long)]
    pub data: Option<String>,
    /// Use only the first N examples.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write the report as JSON to FILE (`-` for standard output).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

/// The declared input space.
#[derive(Args, Debug, Clone)]
pub struct InputArgs {
    /// Image layout of the model input (guessed from its shape when absent).
    #[arg(long, value_enum)]
    pub layout: Option<Layout>,
    /// Valid range of the raw input, LO,HI (default 0,1).
    #[arg(long, value_name = "LO,HI", allow_hyphen_values = true)]
    pub input_range: Option<String>,
    /// Per-channel mean subtracted inside the graph (comma-separated).
    #[arg(long, value_name = "M[,M...]", allow_hyphen_values = true)]
    pub mean: Option<String>,
    /// Per-channel standard deviation divided inside the graph (comma-separated).
    #[arg(long, value_name = "S[,S...]")]
    pub std: Option<String>,
}

/// How to run the model.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// auto takes ONNX Runtime when its library loads, tract otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub runtime: RuntimeChoice,
    /// Threads for the runtime (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Examples per runtime call (models with a fixed batch use theirs).
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
}

fn parse_floats(flag: &str, s: &str) -> Result<Vec<f32>> {
    s.split(',')
        .map(|p| {
            p.trim()
                .parse::<f32>()
                .map_err(|_| anyhow!("{flag} '{s}': '{p}' is not a number"))
        })
        .collect()
}

impl InputArgs {
    pub fn to_spec_args(&self) -> Result<SpecArgs> {
        let range = match &self.input_range {
            None => None,
            Some(s) => match parse_floats("--input-range", s)?.as_slice() {
                [lo, hi] => Some((*lo, *hi)),
                _ => bail!("--input-range '{s}' needs two numbers, LO,HI"),
            },
        };
        Ok(SpecArgs {
            layout: self.layout,
            range,
            mean: self
                .mean
                .as_deref()
                .map(|s| parse_floats("--mean", s))
                .transpose()?,
            std: self
                .std
                .as_deref()
                .map(|s| parse_floats("--std", s))
                .transpose()?,
        })
    }
}

/// Facts from the environment, read once here and handed to the library.
pub struct Env {
    pub home: Option<PathBuf>,
    pub harden_data: Option<PathBuf>,
    pub ort: OrtLocator,
}

impl Env {
    pub fn from_process() -> Env {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let ort_path = std::env::var_os("ORT_DYLIB_PATH")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let exe = std::env::current_exe().ok();
        let exe_dir = exe.as_deref().and_then(Path::parent);
        Env {
            ort: OrtLocator::standard(ort_path, home.as_deref(), exe_dir),
            harden_data: std::env::var_os("HARDEN_DATA").map(PathBuf::from),
            home,
        }
    }
}

impl RunArgs {
    pub fn options(&self, env: &Env) -> Result<RunOptions> {
        if self.threads == Some(0) {
            bail!("--threads must be at least 1");
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        Ok(RunOptions {
            runtime: self.runtime,
            threads: self.threads.unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(1)
            }),
            batch_size: self.batch_size,
            ort: env.ort.clone(),
        })
    }
}

/// Runs the parsed command; returns the exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let env = Env::from_process();
    match cli.command {
        Command::Inspect { model, json } => {
            let m = OnnxModel::load(&model)?;
            let i = inspect::inspect(&m);
            let out = if json {
                serde_json::to_string_pretty(&i)? + "\n"
            } else {
                inspect::render_text(&i)
            };
            print_stdout(&out)?;
            Ok(EXIT_OK)
        }
        Command::Audit(a) => audit_command(a, &env),
    }
}

/// The bundled Fashion-MNIST slice, shipped in the source tree.
fn bundled_slice() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-slice")
}

/// Opens `--data`, or the default data for 28x28 models.
fn open_data(
    spec: Option<&str>,
    model_example_len: Option<usize>,
    env: &Env,
) -> Result<(String, Box<dyn DataSource>)> {
    let open = |s: &str| data::open(s, env.home.as_deref(), env.harden_data.as_deref());
    match spec {
        Some(s) => Ok((s.to_string(), open(s)?)),
        None => {
            if model_example_len != Some(784) {
                bail!("no --data given and the model's input does not fit the bundled 28x28 demo data; pass --data");
            }
            match open("fashion-mnist:test") {
                Ok(d) => Ok(("fashion-mnist:test".into(), d)),
                Err(_) => {
                    let p = bundled_slice();
                    let s = p.display().to_string();
                    Ok((s.clone(), open(&s)?))
                }
            }
        }
    }
}

fn audit_command(a: AuditArgs, env: &Env) -> Result<i32> {
    let started = Instant::now();
    let model = OnnxModel::load(&a.model)?;
    model.require_supported()?;
    let input = model.classifier_input()?;
    let spec_args = a.input.to_spec_args()?;
    let mut spec = InputSpec::resolve(&input, &spec_args)?;
    let model_example_len: Option<usize> = spec.model_shape[1..]
        .iter()
        .map(|d| d.fixed())
        .product::<Option<usize>>();
    let (data_spec, source) = open_data(a.data.as_deref(), model_example_len, env)?;
    let mut source = match a.limit {
        Some(0) => bail!("--limit must be at least 1"),
        Some(n) => data::limit(source, n),
        None => source,
    };
    if spec_args.range.is_none() {
        if let Some(bounds) = source.value_bounds() {
            spec.range_from_data(bounds)?;
        }
    }
    let mapping = DataMapping::new(&spec, source.example_shape(), source.kind())?;
    let opts = a.run.options(env)?;
    let mut classifier = Classifier::open(&model, &spec, &mapping.example_shape, &opts)?;
    let bar = progress_bar(source.len().map(|n| n as u64), "scoring");
    let mut report = audit::clean_audit(
        &model,
        &spec,
        &mut classifier,
        source.as_mut(),
        &data_spec,
        &mapping,
        &mut |n| bar.set_position(n),
    )?;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    report.meta = audit::Meta {
        harden_version: env!("CARGO_PKG_VERSION").to_string(),
        seconds: secs,
        examples_per_second: report.data.examples as f64 / secs.max(1e-9),
    };
    let json = serde_json::to_string_pretty(&report)? + "\n";
    match a.json.as_deref() {
        Some(p) if p == Path::new("-") => print_stdout(&json)?,
        Some(p) => {
            write_atomic(p, json.as_bytes())?;
            print_stdout(&audit::render_text(&report))?;
        }
        None => print_stdout(&audit::render_text(&report))?,
    }
    Ok(EXIT_OK)
}

/// A progress bar on a terminal, nothing otherwise (CI, pipes).
fn progress_bar(len: Option<u64>, what: &'static str) -> indicatif::ProgressBar {
    let quiet = !std::io::stderr().is_terminal() || std::env::var_os("CI").is_some();
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    };
    bar.set_message(what);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Writes `bytes` to `path` through a temporary file in the same folder, renamed into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| {
        format!(
            "cannot write {}: cannot create a file in {}",
            path.display(),
            dir.display()
        )
    })?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .map_err(|e| anyhow!("cannot write {}: {}", path.display(), e.error))?;
    Ok(())
}

/// Prints to stdout; a closed pipe is not an error.
fn print_stdout(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to standard output"),
    }
}
