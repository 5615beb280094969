//! Command line: the only module that knows clap, the environment and exit codes.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::attack::Norm;
use crate::audit;
use crate::autodiff::LossKind;
use crate::classifier::{Classifier, RunOptions};
use crate::data::{self, DataSource};
use crate::inspect;
use crate::model::OnnxModel;
use crate::oracle::ModelOracle;
use crate::robust::AttackKnobs;
use crate::runtime::{Device, OrtLocator, Precision, RuntimeChoice, StepMode};
use crate::spec::{DataMapping, InputSpec, Layout, SpecArgs};

pub use crate::files::write_atomic;

mod attack_command;
mod audit_command;
mod falsify_command;
mod grad_command;
mod main_command;
mod report_diff;
mod report_merge;
mod shard_part;

/// Exit codes, like grep: 0 ok (or gate passed), 1 gate failed, 2 error.
pub const EXIT_OK: i32 = 0;
pub const EXIT_GATE_FAILED: i32 = 1;
pub const EXIT_ERROR: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "harden",
    version,
    about = "Audit and adversarially harden ONNX classifiers, without the training framework",
    after_help = "Exit codes: 0 ok, 1 a gate failed, 2 error (bad input, unsupported model)."
)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    override_usage = "harden MODEL.onnx --eps E [OPTIONS]   (harden: audit, fine-tune, export, audit again)\n       harden <COMMAND> [ARGS]"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub harden: HardenArgs,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MethodArg {
    Mixed,
    Pgd,
    Fast,
    Trades,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizerArg {
    Sgd,
    Adam,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleArg {
    Constant,
    Cosine,
    Step,
}

/// The main command: audit MODEL, fine-tune it on adversarial batches, export the
/// hardened ONNX and audit it again.
#[derive(Args, Debug)]
pub struct HardenArgs {
    /// The ONNX model to harden.
    #[arg(required = true)]
    pub model: Option<PathBuf>,
    /// Radius of the threat model, in raw input units.
    #[arg(long, required = true, allow_hyphen_values = true)]
    pub eps: Option<f32>,
    /// Radius of the training attack (default: --eps). A little above --eps (say 1.2x)
    /// often buys robust accuracy at --eps for some clean accuracy.
    #[arg(long, value_name = "E", allow_hyphen_values = true)]
    pub train_eps: Option<f32>,
    /// Training data (as for `audit --data`). Default: Fashion-MNIST's training set if
    /// installed, else the bundled slice (28x28 models only).
    #[arg(long)]
    pub data: Option<String>,
    /// Data for the before/after audits. Default: the test split of --data when it has
    /// one, else the validation examples held out from --data.
    #[arg(long)]
    pub audit_data: Option<String>,
    /// Train on at most N examples of --data (validation ones included).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Audit on at most N examples (the `standard` attacks on a robust model cost about
    /// 0.7 s per example on 2 cores).
    #[arg(long, default_value_t = 300)]
    pub audit_limit: usize,
    /// Attacks of the before/after audits (as for `audit --attacks`).
    #[arg(long, default_value = "standard")]
    pub attacks: String,
    /// Training method: mixed (clean + PGD), pgd (Madry), fast (FGSM with random start),
    /// trades.
    #[arg(long, value_enum, default_value = "fast")]
    pub method: MethodArg,
    /// Training epochs over --data.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Training examples per step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    #[arg(long, value_enum, default_value = "adam")]
    pub optimizer: OptimizerArg,
    /// Base learning rate (default: Adam 4e-3, SGD 0.01). Fine-tuning a pretrained model
    /// into a robust one needs a larger step than training it cleanly did.
    #[arg(long, allow_hyphen_values = true)]
    pub lr: Option<f32>,
    /// SGD momentum.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.9)]
    pub momentum: f32,
    /// Weight decay (on weights, not biases).
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.0)]
    pub weight_decay: f32,
    #[arg(long, value_enum, default_value = "cosine")]
    pub schedule: ScheduleArg,
    /// Linear learning-rate warm-up, in epochs (fractions allowed).
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.0)]
    pub warmup_epochs: f32,
    /// mixed: the fraction of each batch replaced by adversarial examples.
    #[arg(long, allow_hyphen_values = true, default_value_t = 0.5)]
    pub adv_ratio: f32,
    /// Steps of the training attack (mixed, pgd, trades).
    #[arg(long, default_value_t = 7)]
    pub attack_steps: usize,
    /// Step size of the training attack (default 2.5 eps / steps; fast: 1.25 eps).
    #[arg(long, allow_hyphen_values = true)]
    pub step_size: Option<f32>,
    /// trades: weight of the KL term.
    #[arg(long, allow_hyphen_values = true, default_value_t = 6.0)]
    pub beta: f32,
    /// Validation examples held out from the training data.
    #[arg(long, default_value_t = 1000)]
    pub val_size: usize,
    /// PGD steps of the per-epoch validation attack.
    #[arg(long, default_value_t = 10)]
    pub val_steps: usize,
    /// Stop after N epochs without a better validation robust accuracy.
    #[arg(long)]
    pub patience: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// After training, recompute BatchNormalization statistics from the training data
    /// (frozen during training otherwise).
    #[arg(long)]
    pub update_bn: bool,
    /// Keep a checkpoint here (at each epoch end and every few hundred batches).
    #[arg(long, value_name = "DIR")]
    pub checkpoint_dir: Option<PathBuf>,
    /// Also checkpoint every N training batches (0: at epoch ends only).
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub checkpoint_every: usize,
    /// Continue the run checkpointed in --checkpoint-dir.
    #[arg(long, requires = "checkpoint_dir")]
    pub resume: bool,
    /// The hardened model (default: MODEL.hardened.onnx next to MODEL).
    #[arg(short, long, value_name = "OUT.onnx")]
    pub output: Option<PathBuf>,
    /// Also write the robustness card (card.md) into the hardened model's metadata_props,
    /// under the key harden.robustness_card.
    #[arg(long)]
    pub card_in_model: bool,
    /// The before/after report (`--report DIR`), its gates on the hardened model and the
    /// sanity checks.
    #[command(flatten)]
    pub report: ReportArgs,
    /// Skip the sanity checks (they attack a few examples again).
    #[arg(long)]
    pub no_sanity_checks: bool,
    /// Threat model norm.
    #[arg(long, value_enum, default_value = "linf")]
    pub norm: NormArg,
    #[command(flatten)]
    pub input: InputArgs,
    /// auto takes ONNX Runtime when its library loads, tract otherwise.
    #[arg(long, value_enum, default_value = "auto")]
    pub runtime: RuntimeChoice,
    /// Threads for the runtime (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// How PGD's steps run (audits and training): host (a gradient-graph run per step,
    /// the step on the host), graph (the step in the graph) or bound (the step in the
    /// graph, the iterate kept in the runtime's memory, on the GPU on CUDA). Default:
    /// bound on CUDA, host on the CPU. The outcomes are the same.
    #[arg(long, value_enum)]
    pub step_loop: Option<StepMode>,
    #[command(flatten)]
    pub rounding: RoundingArgs,
    /// QDQ models: recompute the activation scales and zero points of the hardened model
    /// from the training data (min/max, as ONNX Runtime's MinMax calibration; the int32
    /// biases that depend on them follow) instead of keeping the original ones.
    #[arg(long)]
    pub recalibrate: bool,
}

// Parsed once per process: the size of the largest variant (audit's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
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
    /// Measure a model on data: clean accuracy, per-class precision/recall/F1, confusion,
    /// and with --eps robust accuracy under attacks (per attack and worst case).
    Audit(audit_command::AuditArgs),
    /// Run one attack on data and save the adversarial examples.
    Attack(attack_command::AttackArgs),
    /// Search a VNN-COMP property's input box for a counterexample: prints sat or unknown.
    Falsify(falsify_command::FalsifyArgs),
    /// Write the gradient graph of a model (loss and input gradient, standard ONNX ops).
    Grad(grad_command::GradArgs),
    /// Work on existing reports (report.json files) without running anything.
    #[command(subcommand)]
    Report(ReportCommand),
}

#[derive(Subcommand, Debug)]
pub enum ReportCommand {
    /// Compare report B with baseline report A (as `audit --baseline`): the same data,
    /// examples, threat model and attacks, per example, with McNemar's exact test. Prints
    /// the comparison as Markdown; exits 1 when a metric drops by more than --max-drop
    /// and significantly at --alpha.
    Diff(report_diff::DiffArgs),
    /// Merge the parts of a sharded audit (`audit --shard K/N --json PART.json`) into the
    /// report one unsharded run writes, after checking that they are the shards of one
    /// audit (same model, data, flags, seed and runtime; each shard once, none missing);
    /// the gates apply to the merged numbers.
    Merge(report_merge::MergeArgs),
}

/// How a report is compared with its baseline (`audit --baseline`, `report diff`).
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// Fail (exit 1) when clean or worst-case robust accuracy drops by more than X (a
    /// fraction: 0.02 for 2 points) and the drop is significant at --alpha.
    #[arg(long, value_name = "X", default_value_t = crate::report::compare::MAX_DROP, allow_hyphen_values = true)]
    pub max_drop: f64,
    /// Significance level of McNemar's exact test on the examples that changed.
    #[arg(long, value_name = "A", default_value_t = crate::report::compare::ALPHA, allow_hyphen_values = true)]
    pub alpha: f64,
}

/// Attack settings shared by `audit` and `attack`.
#[derive(Args, Debug, Clone)]
pub struct AttackOpts {
    /// Threat model norm.
    #[arg(long, value_enum, default_value = "linf")]
    pub norm: NormArg,
    /// Steps of iterative attacks (default: 10 for PGD, 100 for APGD).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Restarts of iterative attacks.
    #[arg(long, default_value_t = 1)]
    pub restarts: usize,
    /// Queries of the Square attack (default 5000).
    #[arg(long)]
    pub square_queries: Option<usize>,
    /// Seed of every random choice (same seed, same report).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum NormArg {
    Linf,
    L2,
}

impl AttackOpts {
    fn norm(&self) -> Norm {
        match self.norm {
            NormArg::Linf => Norm::Linf,
            NormArg::L2 => Norm::L2,
        }
    }

    fn knobs(&self) -> AttackKnobs {
        AttackKnobs {
            steps: self.steps,
            restarts: self.restarts,
            seed: self.seed,
            square_queries: self.square_queries,
        }
    }
}

/// How gradients pass through rounding (`--through-rounding`).
#[derive(Args, Debug, Clone)]
pub struct RoundingArgs {
    /// Gradients through rounding (QuantizeLinear, Round, Floor, Ceil, casts to integers):
    /// ste (straight-through: identity, or 1 inside the integer range of a QuantizeLinear;
    /// an approximation, recorded in the report) or zero (the exact derivative, zero:
    /// gradient attacks are blind on such models). Adversarial examples are always
    /// re-checked on the real model.
    #[arg(long, value_enum, default_value = "ste")]
    pub through_rounding: RoundingArg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RoundingArg {
    Ste,
    Zero,
}

impl RoundingArgs {
    pub fn rounding(&self) -> crate::autodiff::Rounding {
        match self.through_rounding {
            RoundingArg::Ste => crate::autodiff::Rounding::Ste,
            RoundingArg::Zero => crate::autodiff::Rounding::Zero,
        }
    }

    /// Records the choice on `model`, for every graph built from it (only on models that
    /// round on the input's path: others, and their hardened copies, stay as they are).
    pub fn apply(&self, model: &mut OnnxModel) {
        let Ok(input) = model.classifier_input() else {
            return;
        };
        if !crate::model::quant::rounding_ops(model.graph(), &input.name).is_empty() {
            crate::autodiff::set_through_rounding(&mut model.proto, self.rounding());
        }
    }
}

/// The report, its gates and per-example file (shared by `audit`, the hardening command
/// and `report merge`).
#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// Write report.json, report.md and report.html into DIR (created if missing).
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// Gate: exit with 1 when clean accuracy is below X (a fraction, 0.9 for 90%).
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    pub min_clean_accuracy: Option<f64>,
    /// Gate: exit with 1 when the worst-case robust accuracy at any eps is below X.
    #[arg(long, value_name = "X", allow_hyphen_values = true)]
    pub min_robust_accuracy: Option<f64>,
    /// Write the gates as a JUnit XML file (one test case per gate).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write every example's outcome (label, clean prediction, per eps and attack: broken,
    /// adversarial prediction, distance, budget) to FILE: .jsonl (JSON Lines) or .csv.
    #[arg(long, value_name = "FILE")]
    pub per_example: Option<PathBuf>,
}

impl ReportArgs {
    /// Checks the flags before any work: thresholds, and that the outputs can be written.
    pub fn validate(&self, has_eps: bool) -> Result<()> {
        self.validate_with(has_eps, false)
    }

    /// [`ReportArgs::validate`], with a baseline comparison (whose metrics also go to
    /// `--junit`) when `has_baseline`.
    pub fn validate_with(&self, has_eps: bool, has_baseline: bool) -> Result<()> {
        if let Some(d) = &self.report {
            crate::report::check_dir(d)?;
        }
        if let Some(p) = &self.per_example {
            crate::report::outcomes::format_of(p)?;
            self.check_output("--per-example", p)?;
        }
        use crate::report::gate::check_threshold;
        if let Some(v) = self.min_clean_accuracy {
            check_threshold("--min-clean-accuracy", v)?;
        }
        if let Some(v) = self.min_robust_accuracy {
            check_threshold("--min-robust-accuracy", v)?;
            if !has_eps {
                bail!("--min-robust-accuracy needs attacks: pass --eps");
            }
        }
        if let Some(j) = &self.junit {
            if self.min_clean_accuracy.is_none()
                && self.min_robust_accuracy.is_none()
                && !has_baseline
            {
                bail!(
                    "--junit writes the gates: pass --min-clean-accuracy, --min-robust-accuracy or --baseline"
                );
            }
            self.check_output("--junit", j)?;
        }
        Ok(())
    }

    /// [`check_writable`] for an output that may go into the `--report` folder, which is
    /// created (before any file is written into it: [`ReportArgs::prepare_for`]) only at
    /// the end.
    pub fn check_output(&self, flag: &str, path: &Path) -> Result<()> {
        match &self.report {
            Some(d) if path.parent() == Some(d.as_path()) && !path.is_dir() => {
                crate::report::check_dir(d)
            }
            _ => check_writable(flag, path),
        }
    }

    /// Creates the `--report` folder if `path` is to be written into it.
    pub fn prepare_for(&self, path: &Path) -> Result<()> {
        match &self.report {
            Some(d) if path.parent() == Some(d.as_path()) => crate::report::prepare_dir(d),
            _ => Ok(()),
        }
    }

    /// [`ReportArgs::finish`], then the terminal output of a command that also takes
    /// `--json FILE` (`-`: the JSON on standard output and nothing else): the audit's
    /// `text` and the report's summary, or the summary alone when a report folder is
    /// written, and where that folder's HTML is.
    pub fn finish_and_print(
        &self,
        report: &mut crate::report::Report,
        text: String,
        json_to: Option<&Path>,
    ) -> Result<i32> {
        let code = self.finish(report)?;
        let json = report.to_json()?;
        let summary = crate::report::summary(report);
        match json_to {
            Some(p) if p == Path::new("-") => print_stdout(&json)?,
            Some(p) => {
                write_atomic(p, json.as_bytes())?;
                print_stdout(&(text + "\n" + &summary))?;
            }
            None if self.report.is_some() => print_stdout(&summary)?,
            None => print_stdout(&(text + "\n" + &summary))?,
        }
        if let (Some(d), false) = (&self.report, json_to == Some(Path::new("-"))) {
            print_stdout(&format!("report   {}\n", d.join("report.html").display()))?;
        }
        Ok(code)
    }

    /// Evaluates the gates on the report's audit, adds the robustness card and writes the
    /// report folder, JUnit file and per-example file; returns the exit code (0 all gates
    /// passed and no significant drop from the baseline, 1 otherwise).
    pub fn finish(&self, report: &mut crate::report::Report) -> Result<i32> {
        report.gates = crate::report::gate::evaluate(
            report.primary(),
            self.min_clean_accuracy,
            self.min_robust_accuracy,
        )?;
        report.add_card();
        if let Some(d) = &self.report {
            crate::report::write_dir(d, report)?;
        }
        if let Some(j) = &self.junit {
            write_atomic(j, crate::report::junit::render(report).as_bytes())?;
        }
        if let Some(p) = &self.per_example {
            crate::report::outcomes::write(p, report)?;
        }
        Ok(if report.passed() {
            EXIT_OK
        } else {
            EXIT_GATE_FAILED
        })
    }
}

/// Fails now, before any work, when `path` cannot be written later (missing folder, a
/// folder in its place, no permission).
fn check_writable(flag: &str, path: &Path) -> Result<()> {
    if path.is_dir() {
        bail!(
            "{flag}: cannot write {}: it is a folder, not a file",
            path.display()
        );
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    tempfile::NamedTempFile::new_in(dir).map(drop).map_err(|e| {
        anyhow!(
            "{flag}: cannot write {}: cannot create a file in {}: {e}",
            path.display(),
            dir.display()
        )
    })
}

/// The host's name, for the report's `meta`.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Seconds since 1970, for the report's `meta`.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
    /// A data convention. imagenet: --resize 256 --crop 224, RGB, --mean 0.485,0.456,0.406
    /// --std 0.229,0.224,0.225 (applied in the graph, attacks stay in [0,1] pixels).
    /// Explicit flags override its parts.
    #[arg(long, value_enum)]
    pub preset: Option<PresetArg>,
    /// Image folders: resize each image so that its shorter side is N pixels (bilinear,
    /// antialiased), keeping its aspect ratio.
    #[arg(long, value_name = "N")]
    pub resize: Option<u32>,
    /// Image folders: cut out the centred N x N square (after --resize).
    #[arg(long, value_name = "N")]
    pub crop: Option<u32>,
    /// Class names in the model's class order: one per line, a JSON list, or a JSON object
    /// from index to name(s) (imagenet_class_index.json). Image class folders named in it
    /// are labelled by it.
    #[arg(long, value_name = "FILE")]
    pub class_names: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PresetArg {
    Imagenet,
}

/// ImageNet's per-channel mean and std (torchvision's pretrained models).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Where the graphs run (ONNX Runtime's device) and how on CUDA.
#[derive(Args, Debug, Clone)]
pub struct DeviceArgs {
    /// cpu, cuda (cuda:0), cuda:N, cuda:N,M,... (a batch split across them) or auto
    /// (CUDA when ONNX Runtime's CUDA provider starts, else the CPU).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: Device,
    /// On CUDA: fp32 (float32 throughout) or tf32 (convolutions and matrix products on
    /// TF32 tensor cores, about 3x faster, within about 1e-4 relative).
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: Precision,
    /// On CUDA: cap each ONNX Runtime session's memory arena at SIZE (bytes, or with
    /// K, M, G or T: powers of 1024), to share a GPU or to meet out-of-memory handling at
    /// a small size; runs that need more go out of memory as on a full device.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub gpu_memory_limit: Option<usize>,
}

/// A size in bytes: a whole number, optionally followed by K, M, G or T (KiB, MiB, GiB,
/// TiB: powers of 1024; a trailing "B" or "iB" is allowed).
pub fn parse_size(s: &str) -> std::result::Result<usize, String> {
    let t = s.trim();
    let body = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (digits, shift) = match body.chars().last() {
        Some(c @ ('K' | 'M' | 'G' | 'T' | 'k' | 'm' | 'g' | 't')) => (
            &body[..body.len() - 1],
            10 * (1 + "KMGT".find(c.to_ascii_uppercase()).unwrap_or(0) as u32),
        ),
        _ => (body, 0),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size (a number of bytes, or with K, M, G or T)"))?;
    n.checked_mul(1u64 << shift)
        .filter(|b| *b > 0)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("'{s}': the size must be above zero and below 2^64 bytes"))
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
    #[command(flatten)]
    pub device: DeviceArgs,
    /// How PGD's steps run (audits and training): host (a gradient-graph run per step,
    /// the step on the host), graph (the step in the graph) or bound (the step in the
    /// graph, the iterate kept in the runtime's memory, on the GPU on CUDA). Default:
    /// bound on CUDA, host on the CPU. The outcomes are the same.
    #[arg(long, value_enum)]
    pub step_loop: Option<StepMode>,
}

/// `--device`: see [`Device`].
pub fn parse_device(s: &str) -> std::result::Result<Device, String> {
    s.parse::<Device>().map_err(|e| {
        e.to_string()
            .trim_start_matches(&format!("--device '{s}': "))
            .to_string()
    })
}

/// The `nvidia/*/lib` folders of the Python environments on this machine (the active
/// virtualenv or conda environment, the Pythons on PATH, the user's and the system's
/// site-packages), where the PyPI `nvidia-*` wheels keep the CUDA and cuDNN libraries.
pub fn python_nvidia_dirs(home: Option<&Path>) -> Vec<PathBuf> {
    let mut prefixes: Vec<PathBuf> = vec![];
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        prefixes.extend(
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        );
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("python3").is_file() {
                prefixes.extend(dir.parent().map(Path::to_path_buf));
            }
        }
    }
    prefixes.extend(home.map(|h| h.join(".local")));
    prefixes.extend(["/usr/local", "/usr", "/opt/conda"].map(PathBuf::from));
    let mut dirs: Vec<PathBuf> = vec![];
    for prefix in prefixes {
        let lib = prefix.join("lib");
        let Ok(entries) = std::fs::read_dir(&lib) else {
            continue;
        };
        let mut pythons: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("python3"))
            })
            .collect();
        pythons.sort();
        for py in pythons {
            for sp in ["site-packages", "dist-packages"] {
                for d in crate::runtime::nvidia_lib_dirs(&py.join(sp)) {
                    if !dirs.contains(&d) {
                        dirs.push(d);
                    }
                }
            }
        }
    }
    dirs
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
        let preset = |v: &[f32; 3]| self.preset.map(|PresetArg::Imagenet| v.to_vec());
        Ok(SpecArgs {
            layout: self.layout,
            range,
            mean: self
                .mean
                .as_deref()
                .map(|s| parse_floats("--mean", s))
                .transpose()?
                .or_else(|| preset(&IMAGENET_MEAN)),
            std: self
                .std
                .as_deref()
                .map(|s| parse_floats("--std", s))
                .transpose()?
                .or_else(|| preset(&IMAGENET_STD)),
        })
    }

    /// Says where a refused mean/std came from when a preset gave it.
    fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        match self.preset {
            Some(PresetArg::Imagenet) if self.mean.is_none() || self.std.is_none() => {
                anyhow!("{e} (--preset imagenet sets --mean and --std for 3 RGB channels)")
            }
            _ => e,
        }
    }

    /// How to open data: resize/crop (flags, else the preset's) and class names.
    pub fn open_options(&self) -> Result<data::OpenOptions> {
        let (resize, crop) = match self.preset {
            Some(PresetArg::Imagenet) => (Some(256), Some(224)),
            None => (None, None),
        };
        for (flag, v) in [("--resize", self.resize), ("--crop", self.crop)] {
            if v == Some(0) {
                bail!("{flag} must be at least 1 pixel");
            }
        }
        Ok(data::OpenOptions {
            image: data::ImageOptions {
                resize: self.resize.or(resize),
                crop: self.crop.or(crop),
            },
            class_names: self
                .class_names
                .as_deref()
                .map(data::ClassNames::read)
                .transpose()?,
        })
    }
}

/// Facts from the environment, read once here and handed to the library.
pub struct Env {
    pub home: Option<PathBuf>,
    pub harden_data: Option<PathBuf>,
    pub ort: OrtLocator,
    /// How the command's `--data` is opened (`--resize`, `--crop`, `--class-names`).
    pub data: data::OpenOptions,
    /// The command line, `harden` and its arguments (for the report's `meta.command`).
    pub command: Vec<String>,
}

impl Env {
    pub fn from_process() -> Env {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let ort_path = std::env::var_os("ORT_DYLIB_PATH")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let exe = std::env::current_exe().ok();
        let exe_dir = exe.as_deref().and_then(Path::parent);
        let mut ort = OrtLocator::standard(ort_path, home.as_deref(), exe_dir);
        ort.cuda_lib_dirs
            .extend(python_nvidia_dirs(home.as_deref()));
        ort.profile = std::env::var_os("HARDEN_ORT_PROFILE")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        Env {
            ort,
            harden_data: std::env::var_os("HARDEN_DATA").map(PathBuf::from),
            home,
            data: data::OpenOptions::default(),
            command: std::iter::once("harden".to_string())
                .chain(std::env::args().skip(1))
                .collect(),
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
            threads: threads_or_all(self.threads),
            batch_size: self.batch_size,
            ort: resolve_device(env, &self.device, self.runtime)?,
            step_loop: self.step_loop,
        })
    }
}

/// `--threads`, or every core the process may use.
fn threads_or_all(given: Option<usize>) -> usize {
    given.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// `env`'s locator with `device` checked for `runtime` (see [`OrtLocator::resolve`]);
/// says on stderr where the graphs run unless on the CPU as asked.
pub fn resolve_device(env: &Env, args: &DeviceArgs, runtime: RuntimeChoice) -> Result<OrtLocator> {
    if args.device == Device::Cpu {
        if args.precision == Precision::Tf32 {
            bail!("--precision tf32 is for CUDA devices; give --device cuda (or auto)");
        }
        if args.gpu_memory_limit.is_some() {
            bail!("--gpu-memory-limit is for CUDA devices; give --device cuda (or auto)");
        }
    }
    let mut ort = env
        .ort
        .clone()
        .with_device(args.device.clone())
        .resolve(runtime)?;
    let cuda = !ort.device.cuda_ids().is_empty();
    ort.tf32 = args.precision == Precision::Tf32 && cuda;
    ort.cuda_memory_limit = args.gpu_memory_limit.filter(|_| cuda);
    match &ort.fallback {
        Some(why) => eprintln!("device   cpu ({why})"),
        None if ort.device != Device::Cpu => eprintln!("device   {}", ort.device),
        None => {}
    }
    Ok(ort)
}

/// Runs `f` at the batch size `batch`; where ONNX Runtime runs out of memory, again at
/// half the size, down to one example, saying so on stderr (`what`: what runs again).
/// For work whose outcomes do not depend on the batch size (audits).
pub(crate) fn halving_batch<T>(
    batch: usize,
    what: &str,
    mut f: impl FnMut(usize) -> Result<T>,
) -> Result<T> {
    let mut b = batch;
    let mut failed: Option<usize> = None;
    loop {
        match f(b) {
            Err(e) if crate::runtime::is_out_of_memory(&e) => {
                // Runs that did not shrink with the batch (a model's fixed batch): the
                // error as it is.
                let oom = crate::runtime::out_of_memory_in(&e);
                let n = oom.and_then(|o| o.examples);
                let detail = oom.map(|o| o.detail()).unwrap_or_default();
                if let (Some(n), Some(f)) = (n, failed) {
                    if n >= f {
                        bail!(
                            "onnxruntime ran out of memory running {n} examples at once, the model's fixed batch, which a smaller --batch-size does not change: the model does not fit in this device's memory ({detail})"
                        );
                    }
                }
                failed = n;
                if b <= 1 || n == Some(1) {
                    bail!("onnxruntime ran out of memory running one example at a time ({detail}): the model's graphs do not fit in this device's memory");
                }
                eprintln!(
                    "onnxruntime ran out of memory at --batch-size {b}; {what} again at --batch-size {}",
                    b / 2
                );
                b /= 2;
            }
            done => return done,
        }
    }
}

/// Records where the graphs ran in the report's `meta`.
pub fn stamp_device(report: &mut crate::report::Report, ort: &OrtLocator, steps: StepMode) {
    report.meta.device = ort.device.to_string();
    report.meta.step_loop = match steps {
        StepMode::Host => "host",
        StepMode::Graph => "graph",
        StepMode::Bound => "bound",
    }
    .to_string();
    if !ort.device.cuda_ids().is_empty() {
        report.meta.precision = if ort.tf32 { "tf32" } else { "fp32" }.to_string();
    }
    report.meta.device_note = ort.fallback.clone();
}

/// Runs the parsed command; returns the exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let mut env = Env::from_process();
    let input = match &cli.command {
        None => Some(&cli.harden.input),
        Some(Command::Audit(a)) => Some(&a.input),
        Some(Command::Attack(a)) => Some(&a.input),
        Some(_) => None,
    };
    if let Some(i) = input {
        env.data = i.open_options()?;
    }
    let Some(command) = cli.command else {
        return main_command::run(cli.harden, &env);
    };
    match command {
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
        Command::Audit(a) => audit_command::run(a, &env),
        Command::Attack(a) => attack_command::run(a, &env),
        Command::Falsify(a) => falsify_command::run(a, &env),
        Command::Grad(a) => grad_command::run(a),
        Command::Report(ReportCommand::Diff(a)) => report_diff::run(a),
        Command::Report(ReportCommand::Merge(a)) => report_merge::run(a, &env),
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
    match spec {
        Some(s) => Ok((s.to_string(), open_spec(s, env)?)),
        None => default_data("test", model_example_len, env),
    }
}

fn open_spec(spec: &str, env: &Env) -> Result<Box<dyn DataSource>> {
    data::open_with(
        spec,
        env.home.as_deref(),
        env.harden_data.as_deref(),
        &env.data,
    )
}

/// The demo data's `split` ("train" or "test"): Fashion-MNIST when installed, else the
/// bundled slice. Only for models whose examples have 784 values.
fn default_data(
    split: &str,
    model_example_len: Option<usize>,
    env: &Env,
) -> Result<(String, Box<dyn DataSource>)> {
    if model_example_len != Some(784) {
        bail!("no --data given and the model's input does not fit the bundled 28x28 demo data; pass --data");
    }
    let named = format!("fashion-mnist:{split}");
    match open_spec(&named, env) {
        Ok(d) => Ok((named, d)),
        Err(_) => {
            let s = format!("{}:{split}", bundled_slice().display());
            let src = open_spec(&s, env)?;
            // The slice is Fashion-MNIST: its classes have names (unless given).
            let src = match src.label_names() {
                Some(_) => src,
                None => data::with_names(
                    src,
                    data::ClassNames::builtin("Fashion-MNIST", &data::classes::FASHION_MNIST),
                ),
            };
            Ok((s.clone(), src))
        }
    }
}

/// A model opened on data: everything `audit` and `attack` share.
struct Session {
    model: OnnxModel,
    spec: InputSpec,
    data_spec: String,
    source: Box<dyn DataSource>,
    mapping: DataMapping,
    oracle: ModelOracle,
    /// Where the graphs run (resolved `--device`).
    ort: OrtLocator,
}

/// Opens the model (refusing ops without a backward rule when `needs_gradients`), the
/// data and the runtime.
#[allow(clippy::too_many_arguments)]
fn open_session(
    model_path: &Path,
    needs_gradients: bool,
    data: Option<&str>,
    limit: Option<usize>,
    input: &InputArgs,
    run: &RunArgs,
    rounding: &RoundingArgs,
    env: &Env,
) -> Result<Session> {
    let mut model = OnnxModel::load(model_path)?;
    rounding.apply(&mut model);
    // Bad quantization is refused even where no gradient is needed (Square alone).
    crate::model::quant::check(model.graph())
        .map_err(|e| anyhow!("{}: {e}", model.path.display()))?;
    if needs_gradients {
        model.require_supported()?;
    }
    let info = model.classifier_input()?;
    let spec_args = input.to_spec_args()?;
    let mut spec = InputSpec::resolve(&info, &spec_args).map_err(|e| input.explain(e))?;
    let model_example_len: Option<usize> = spec.model_shape[1..]
        .iter()
        .map(|d| d.fixed())
        .product::<Option<usize>>();
    let (data_spec, mut source) = open_data(data, model_example_len, env)?;
    if matches!(spec.layout, Layout::Nchw | Layout::Nhwc) {
        // Image folders decode as the model's channels (grey or RGB).
        source.set_channels(spec.channels);
    }
    let source = match limit {
        Some(0) => bail!("--limit must be at least 1"),
        Some(n) => data::limit(source, n),
        None => source,
    };
    if spec_args.range.is_none() {
        if let Some(bounds) = source.value_bounds() {
            spec.range_from_data(bounds)?;
        }
    }
    let mapping = DataMapping::new(&spec, source.example_shape(), source.kind()).map_err(|e| {
        if source.describe().starts_with("image folder") {
            anyhow!("{e}; for image folders pass --resize N and --crop N (or --preset imagenet) to bring the images to the model's size")
        } else {
            e
        }
    })?;
    let opts = run.options(env)?;
    let classifier = Classifier::open(&model, &spec, &mapping.example_shape, &opts)?;
    if let Some(names) = &env.data.class_names {
        names.check_count(classifier.num_classes())?;
    }
    let oracle = ModelOracle::new(&model, &spec, classifier, &opts)?;
    Ok(Session {
        ort: opts.ort.clone(),
        model,
        spec,
        data_spec,
        source,
        mapping,
        oracle,
    })
}

/// A progress bar on a terminal, nothing otherwise (CI, pipes).
fn progress_bar(len: Option<u64>, what: &'static str) -> indicatif::ProgressBar {
    let quiet = !std::io::stderr().is_terminal() || std::env::var_os("CI").is_some();
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    // Cleared when dropped unfinished too (an error, a run again at a smaller batch).
    let bar = match len {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new_spinner(),
    }
    .with_finish(indicatif::ProgressFinish::AndClear);
    bar.set_message(what);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Prints to stdout; a closed pipe is not an error.
fn print_stdout(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to standard output"),
    }
}

#[cfg(test)]
mod tests {
    use super::halving_batch;
    use crate::runtime::run_failure;

    /// Halving goes on while the failing runs shrink with the batch and stops, with one
    /// line saying why, at one example or where they stop shrinking (a fixed batch).
    #[test]
    fn halving_stops_at_one_example_or_where_runs_stop_shrinking() {
        let mut tried = vec![];
        let r: anyhow::Result<()> = halving_batch(64, "testing", |b| {
            tried.push(b);
            Err(run_failure(
                "CUDA failure 2: out of memory",
                Some(b.max(16)),
            ))
        });
        assert_eq!(tried, [64, 32, 16, 8]);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("16 examples at once, the model's fixed batch"),
            "{e}"
        );
        tried.clear();
        let r: anyhow::Result<()> = halving_batch(4, "testing", |b| {
            tried.push(b);
            Err(run_failure("CUDA failure 2: out of memory", Some(b)))
        });
        assert_eq!(tried, [4, 2, 1]);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("running one example") && e.contains("do not fit"),
            "{e}"
        );
        let r = halving_batch(8, "testing", |b| match b {
            8 => Err(run_failure("Failed to allocate memory", Some(8))),
            _ => Ok(b),
        });
        assert_eq!(r.unwrap(), 4);
    }
}
