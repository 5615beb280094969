//! Runtimes behind one trait: ONNX Runtime (`ort`, loaded at run time from
//! `libonnxruntime.so`) and tract (pure Rust, always compiled in).
//!
//! A runtime runs one ONNX graph (given as bytes) on float inputs, in graph input order,
//! and returns every graph output as a float array, in graph output order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, bail, Context, Result};
use ndarray::{ArrayD, ArrayViewD};

pub mod bound;
mod steps;
pub use steps::{Shared, StepLoops, StepMode};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeChoice {
    /// ONNX Runtime when its library loads, tract otherwise.
    Auto,
    /// ONNX Runtime (fails if the library cannot be loaded).
    Ort,
    /// tract, pure Rust.
    Tract,
}

/// Where harden looks for `libonnxruntime.so` and the CUDA libraries, and the device
/// ONNX Runtime sessions run on (the CLI supplies the environment-derived entries, so
/// library code reads no environment).
#[derive(Clone, Debug, Default)]
pub struct OrtLocator {
    /// `ORT_DYLIB_PATH`, tried first whatever the device.
    pub explicit: Option<PathBuf>,
    /// The CPU build's places, tried after the GPU build's ones.
    pub candidates: Vec<PathBuf>,
    /// The GPU build's places (`scripts/fetch-onnxruntime.sh --gpu`), tried before the
    /// CPU build's unless the device is the CPU.
    pub gpu_candidates: Vec<PathBuf>,
    /// Folders the CUDA and cuDNN libraries are loaded from before the system's search
    /// (`LD_LIBRARY_PATH`, ldconfig): the PyPI `nvidia-*` wheels' `nvidia/*/lib`.
    pub cuda_lib_dirs: Vec<PathBuf>,
    /// Where sessions run: as asked (`--device`), then as [`OrtLocator::resolve`] found
    /// it (`Cpu` or `Cuda`).
    pub device: Device,
    /// Why `--device auto` runs on the CPU, once resolved.
    pub fallback: Option<String>,
    /// `HARDEN_ORT_PROFILE`: every session writes ONNX Runtime's per-node profile (JSON)
    /// to `PREFIX-<pid>-<n>_<time>.json` when it closes (`scripts/ort-profile.py` sums it).
    pub profile: Option<PathBuf>,
    /// On CUDA, convolutions and matrix products in TF32 (`--precision tf32`): about 3x
    /// faster on an H200, outputs within about 1e-4 relative of float32's, and a batch of
    /// another size may round differently. Off: float32 throughout.
    pub tf32: bool,
    /// On CUDA, each session's memory arena capped at this many bytes
    /// (`--gpu-memory-limit`); none: the device's memory.
    pub cuda_memory_limit: Option<usize>,
}

impl OrtLocator {
    /// How many sessions a batch is spread over side by side: one per CUDA device, else
    /// one per thread of `threads` (at least one).
    pub fn parts(&self, threads: usize) -> usize {
        match self.device.cuda_ids().len() {
            0 => threads.max(1),
            gpus => gpus,
        }
    }

    /// `ORT_DYLIB_PATH` (explicit), then `~/.cache/harden/onnxruntime/libonnxruntime.so`
    /// (where `scripts/fetch-onnxruntime.sh` puts it), then next to the executable; for a
    /// CUDA device `~/.cache/harden/onnxruntime-gpu/libonnxruntime.so` before those two.
    pub fn standard(
        ort_dylib_path: Option<PathBuf>,
        home: Option<&Path>,
        exe_dir: Option<&Path>,
    ) -> Self {
        let mut candidates = vec![];
        let mut gpu_candidates = vec![];
        let mut cuda_lib_dirs = vec![];
        if let Some(h) = home {
            candidates.push(h.join(".cache/harden/onnxruntime/libonnxruntime.so"));
            let gpu = h.join(".cache/harden/onnxruntime-gpu");
            gpu_candidates.push(gpu.join("libonnxruntime.so"));
            cuda_lib_dirs.extend(nvidia_lib_dirs(&gpu));
        }
        if let Some(d) = exe_dir {
            candidates.push(d.join("libonnxruntime.so"));
        }
        OrtLocator {
            explicit: ort_dylib_path,
            candidates,
            gpu_candidates,
            cuda_lib_dirs,
            device: Device::Cpu,
            fallback: None,
            profile: None,
            tf32: false,
            cuda_memory_limit: None,
        }
    }

    /// This locator with sessions on `device` (unresolved: see [`OrtLocator::resolve`]).
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self.fallback = None;
        self
    }

    /// The libraries to try, in order.
    fn search(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.explicit.iter().cloned().collect();
        if self.device != Device::Cpu {
            v.extend(self.gpu_candidates.iter().cloned());
        }
        v.extend(self.candidates.iter().cloned());
        v
    }

    /// Checks the device asked for on `runtime` and returns this locator with the device
    /// graphs will run on: `Cpu`, or `Cuda` whose provider has started on every device
    /// asked for. `--device cuda` that cannot start is an error naming what is missing;
    /// `auto` takes CUDA device 0 when it starts and the CPU otherwise (`fallback` says why).
    pub fn resolve(mut self, runtime: RuntimeChoice) -> Result<OrtLocator> {
        match self.device.clone() {
            Device::Cpu => {}
            Device::Cuda(ids) => {
                if runtime == RuntimeChoice::Tract {
                    bail!(
                        "--device {}: tract runs on the CPU only; CUDA needs --runtime ort (or auto)",
                        self.device
                    );
                }
                check_cuda(&self, &ids).map_err(|e| anyhow!("--device {}: {e}", self.device))?;
            }
            Device::Auto => {
                let cuda = if runtime == RuntimeChoice::Tract {
                    Err(anyhow!("tract runs on the CPU only"))
                } else {
                    check_cuda(&self, &[0])
                };
                match cuda {
                    Ok(()) => self.device = Device::Cuda(vec![0]),
                    Err(e) => {
                        self.device = Device::Cpu;
                        self.fallback = Some(format!("CUDA not used: {e}"));
                    }
                }
            }
        }
        Ok(self)
    }

    /// The same locator with its sessions on the one CUDA device `id`.
    fn on(&self, id: usize) -> OrtLocator {
        OrtLocator {
            device: Device::Cuda(vec![id]),
            ..self.clone()
        }
    }
}

/// The arithmetic of convolutions and matrix products on CUDA (`--precision`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// float32 throughout: the same numbers as on the CPU (up to summation order).
    #[default]
    Fp32,
    /// TF32 tensor cores for convolutions and matrix products (PyTorch's default for
    /// convolutions): about 3x faster, within about 1e-4 relative of float32.
    Tf32,
}

/// Where ONNX Runtime runs graphs (`--device`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    /// CUDA devices by ordinal (`cuda` is `cuda:0`); with several, a batch is split
    /// across them as across threads (see [`Split`]).
    Cuda(Vec<usize>),
    /// CUDA device 0 when its provider starts, the CPU otherwise.
    Auto,
}

impl Device {
    /// The CUDA devices, empty for the CPU (and unresolved `auto`).
    pub fn cuda_ids(&self) -> &[usize] {
        match self {
            Device::Cuda(ids) => ids,
            _ => &[],
        }
    }
}

impl std::str::FromStr for Device {
    type Err = anyhow::Error;

    /// `cpu`, `auto`, `cuda` (device 0), `cuda:N` or `cuda:N,M,...`.
    fn from_str(s: &str) -> Result<Device> {
        let bad = || {
            anyhow!("--device '{s}': expected cpu, auto, cuda, cuda:N or cuda:N,M,... (N a device number)")
        };
        match s.trim() {
            "cpu" => Ok(Device::Cpu),
            "auto" => Ok(Device::Auto),
            "cuda" | "gpu" => Ok(Device::Cuda(vec![0])),
            t => {
                let list = t.strip_prefix("cuda:").ok_or_else(bad)?;
                let ids = list
                    .split(',')
                    .map(|p| p.trim().parse::<usize>().map_err(|_| bad()))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Device::Cuda(ids))
            }
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Auto => write!(f, "auto"),
            Device::Cuda(ids) => {
                let ids: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
                write!(f, "cuda:{}", ids.join(","))
            }
        }
    }
}

/// The `nvidia/*/lib` folders of a Python `site-packages` folder (or of any folder laid
/// out like one), where the PyPI `nvidia-*` wheels put the CUDA and cuDNN libraries.
pub fn nvidia_lib_dirs(site_packages: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(site_packages.join("nvidia")) else {
        return vec![];
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path().join("lib"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// A graph ready to run.
pub trait Runtime: Send {
    /// `"onnxruntime"` or `"tract"`.
    fn name(&self) -> &'static str;
    /// Whether each new input shape costs a plan of its own (tract), so that callers pad
    /// batches to a few sizes; ONNX Runtime runs a free batch at any size as it is.
    fn plans_per_shape(&self) -> bool {
        false
    }
    /// Runs the graph; inputs in graph input order, outputs in graph output order.
    fn run(&mut self, inputs: &[ArrayViewD<'_, f32>]) -> Result<Vec<ArrayD<f32>>>;
}

/// Opens `model_bytes` on the chosen runtime with `threads` intra-op threads.
pub fn open(
    choice: RuntimeChoice,
    model_bytes: &[u8],
    threads: usize,
    ort: &OrtLocator,
) -> Result<Box<dyn Runtime>> {
    if choice == RuntimeChoice::Tract && !ort.device.cuda_ids().is_empty() {
        bail!("--device {}: tract runs on the CPU only", ort.device);
    }
    match choice {
        RuntimeChoice::Tract => Ok(Box::new(TractRuntime::new(model_bytes)?)),
        RuntimeChoice::Ort => Ok(Box::new(OrtRuntime::new(model_bytes, threads, ort)?)),
        RuntimeChoice::Auto => match ort_environment(ort) {
            Ok(_) => Ok(Box::new(OrtRuntime::new(model_bytes, threads, ort)?)),
            Err(_) => Ok(Box::new(TractRuntime::new(model_bytes)?)),
        },
    }
}

/// Whether graphs opened with `choice` run on ONNX Runtime (`auto`: when its library
/// loads).
pub fn uses_ort(choice: RuntimeChoice, ort: &OrtLocator) -> bool {
    match choice {
        RuntimeChoice::Ort => true,
        RuntimeChoice::Tract => false,
        RuntimeChoice::Auto => ort_environment(ort).is_ok(),
    }
}

/// The size of the runs a step loop takes `n` examples in: at most `chunk`, and at least
/// one run for each of `parts` sessions when each gets [`MIN_PART`] examples.
pub fn step_run_size(n: usize, chunk: usize, parts: usize) -> usize {
    let size = chunk.min(n.max(1));
    if n / parts.max(1) >= MIN_PART {
        size.min(n.div_ceil(parts.max(1)))
    } else {
        size
    }
}

/// Rows `from..from + take` of `values` (`per` values a row), zeros after them up to
/// `size` rows: a batch padded to the size a graph runs at.
pub fn padded_rows(values: &[f32], from: usize, take: usize, size: usize, per: usize) -> Vec<f32> {
    let mut v = Vec::with_capacity(size.max(take) * per);
    v.extend_from_slice(&values[from * per..(from + take) * per]);
    v.resize(size * per, 0.0);
    v
}

/// The values of the first `n` entries along axis 0 of a runtime output, in order:
/// borrowed when the array is in standard layout (as runtimes and [`Split::run`] return
/// them), copied otherwise. An output with fewer entries is an error.
pub fn first_rows(a: &ArrayD<f32>, n: usize) -> Result<std::borrow::Cow<'_, [f32]>> {
    use std::borrow::Cow;
    let rows = a.shape().first().copied().unwrap_or(0);
    if a.ndim() == 0 || rows < n {
        bail!(
            "a graph output has shape {:?}, not {n} or more entries along its batch axis",
            a.shape()
        );
    }
    let end = n * (a.len() / rows.max(1));
    Ok(match a.as_slice() {
        Some(s) => Cow::Borrowed(&s[..end]),
        None => Cow::Owned(a.iter().copied().take(end).collect()),
    })
}

/// How the parts' values of one graph output make the whole batch's (see [`Split::run`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Join {
    /// Per-example values: the parts' outputs stacked along axis 0, in part order.
    Stack,
    /// Sums over the batch (weight gradients): the parts' outputs added.
    Sum,
}

/// Fewest examples per part when a batch is split over threads (smaller parts lose more
/// to per-run overhead than a second thread gains).
pub const MIN_PART: usize = 8;

/// Activation bytes that one run's largest tensor may take for the run to stay in a
/// core's cache. Measured on the demo CNN (2 cores, 1 MiB L2 each, ONNX Runtime 1.31.1,
/// one thread, median of 8): its attack gradient graph runs 2,857-3,052 images/s at batch
/// 16-24 against 2,275-2,430 at 128-64, its training graphs 17-30% faster; the small
/// Wong CNN, whose largest activation is 7x smaller, runs as fast at every batch from
/// 16 to 128 (its weight-gradient graph fastest at 128).
pub const CACHE_BYTES: usize = 2 << 20;

/// The most examples one run should take for a graph whose largest activation holds
/// `example_values` f32 values per example: the largest power of two whose activations
/// fit in [`CACHE_BYTES`], and at least [`MIN_PART`]. 0 (unknown) means no limit.
pub fn chunk_size(example_values: usize) -> usize {
    if example_values == 0 {
        return usize::MAX;
    }
    let fit = CACHE_BYTES / (4 * example_values);
    if fit < MIN_PART {
        MIN_PART
    } else {
        1 << fit.ilog2()
    }
}

/// [`chunk_size`] for the model `proto` (input `input`, examples of `example_shape`);
/// no limit when its shapes cannot be analysed (the limit only tunes speed), nor on a
/// GPU (`ort`'s device), where a whole batch is one run.
pub fn chunk_for(
    proto: &crate::model::pb::ModelProto,
    input: &str,
    example_shape: &[usize],
    ort: &OrtLocator,
) -> usize {
    if !ort.device.cuda_ids().is_empty() {
        return usize::MAX;
    }
    chunk_size(crate::autodiff::largest_activation(proto, input, example_shape).unwrap_or(0))
}

/// How a batch runs: the runs of each thread, in batch order (see [`split_plan`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Per thread, the sizes of the runs it makes one after the other; the threads'
    /// runs, concatenated, cover the batch in order.
    pub parts: Vec<Vec<usize>>,
    /// Intra-op threads of each session.
    pub intra: usize,
}

/// How a batch of `batch` examples runs on `threads` threads: split into parts that run
/// side by side, one single-threaded session each (measured on 2 cores: PGD-10 on the
/// demo CNN 1.3x, on the small Wong CNN 1.8x faster than one session with two intra-op
/// threads, whose per-op hand-offs cost more than small convolutions take), or whole on
/// one session with `threads` intra-op threads; and each part cut into runs of at most
/// `chunk` examples (see [`chunk_size`]) of near-equal size, none under [`MIN_PART`]
/// unless the part is.
pub fn split_plan(batch: usize, threads: usize, chunk: usize) -> Plan {
    let threads = threads.max(1);
    let (sizes, intra) = if threads < 2 || batch < 2 * MIN_PART {
        (vec![batch], threads)
    } else {
        let parts = threads.min(batch / MIN_PART);
        (even(batch, parts), (threads / parts).max(1))
    };
    let chunk = chunk.max(MIN_PART);
    let parts = sizes
        .into_iter()
        .map(|part| even(part, part.div_ceil(chunk).min(part / MIN_PART).max(1)))
        .collect();
    Plan { parts, intra }
}

/// `total` cut into `n` near-equal sizes, largest first.
fn even(total: usize, n: usize) -> Vec<usize> {
    (0..n)
        .map(|i| total / n + usize::from(i < total % n))
        .collect()
}

/// One graph for a batch, run as parts side by side, each part in runs of a size that
/// stays in cache (see [`split_plan`]): per thread a session per run size, each part on
/// its own thread. Either built for one batch (each session for its run's size) or, for
/// a graph whose batch is free, cut anew for every run.
pub struct Split {
    cut: Cut,
    /// Per thread, its sessions by run size (with a free batch, one session per thread
    /// whose size, 0, is not looked at).
    sessions: Vec<Vec<(usize, Box<dyn Runtime>)>>,
    threads: usize,
}

/// How a [`Split`] cuts the batch of a run.
enum Cut {
    /// A graph built for one batch, always cut by this plan.
    Fixed(Plan),
    /// A graph whose batch is free: one run per thread.
    Free,
    /// A graph built for runs of this many examples, all of whose outputs are per
    /// example: any batch runs as that many runs (the last padded with zeros), spread
    /// over the threads.
    Runs(usize),
}

impl Split {
    /// Opens the graph `build(run_size)` for every run size of `batch` split for
    /// `threads` with runs of at most `chunk` examples; unless `splittable` (a graph whose
    /// batch cannot change), one session for the whole batch on `threads`.
    pub fn open(
        choice: RuntimeChoice,
        batch: usize,
        threads: usize,
        chunk: usize,
        splittable: bool,
        ort: &OrtLocator,
        build: impl Fn(usize) -> Result<Vec<u8>>,
    ) -> Result<Split> {
        // On CUDA devices a part per device, each whole in one run (`chunk_for` sets no
        // limit there; one comes only from a run that ran out of memory).
        let threads = ort.parts(threads);
        let plan = if splittable {
            split_plan(batch, threads, chunk)
        } else {
            Plan {
                parts: vec![vec![batch]],
                intra: threads.max(1),
            }
        };
        let mut built: Vec<(usize, Vec<u8>)> = vec![];
        let mut sessions = Vec::with_capacity(plan.parts.len());
        for (i, part) in plan.parts.iter().enumerate() {
            let loc = device_of(ort, i);
            let mut mine: Vec<(usize, Box<dyn Runtime>)> = vec![];
            for &size in part {
                if mine.iter().any(|(s, _)| *s == size) {
                    continue;
                }
                if !built.iter().any(|(s, _)| *s == size) {
                    built.push((size, build(size)?));
                }
                if let Some((_, bytes)) = built.iter().find(|(s, _)| *s == size) {
                    mine.push((size, open(choice, bytes, plan.intra, &loc)?));
                }
            }
            sessions.push(mine);
        }
        Ok(Split {
            cut: Cut::Fixed(plan),
            sessions,
            threads,
        })
    }

    /// Opens `model_bytes`, whose batch is free, for runs of any batch: one single-threaded
    /// session per thread, each run cut by [`split_plan`] into one run per thread; unless
    /// `splittable`, one session on `threads` that takes every batch whole.
    pub fn open_free(
        choice: RuntimeChoice,
        model_bytes: &[u8],
        threads: usize,
        splittable: bool,
        ort: &OrtLocator,
    ) -> Result<Split> {
        let threads = ort.parts(threads);
        let (n, each) = if splittable && threads > 1 {
            (threads, 1)
        } else {
            (1, threads)
        };
        let sessions = (0..n)
            .map(|i| {
                Ok(vec![(
                    0,
                    open(choice, model_bytes, each, &device_of(ort, i))?,
                )])
            })
            .collect::<Result<_>>()?;
        Ok(Split {
            cut: Cut::Free,
            sessions,
            threads,
        })
    }

    /// Opens the graph `build(size)`, all of whose outputs are per example, once per
    /// thread for runs of exactly `size` examples: a batch of any size then runs as
    /// `size`-example runs spread over the threads, the last one padded with zeros (so a
    /// batch that shrank, as attacks' batches do, costs its own size rounded up to
    /// `size`, on sessions opened once).
    pub fn open_runs(
        choice: RuntimeChoice,
        size: usize,
        threads: usize,
        ort: &OrtLocator,
        build: impl Fn(usize) -> Result<Vec<u8>>,
    ) -> Result<Split> {
        let size = size.max(1);
        let threads = ort.parts(threads);
        let bytes = build(size)?;
        let sessions = (0..threads)
            .map(|i| Ok(vec![(size, open(choice, &bytes, 1, &device_of(ort, i))?)]))
            .collect::<Result<_>>()?;
        Ok(Split {
            cut: Cut::Runs(size),
            sessions,
            threads,
        })
    }

    pub fn name(&self) -> &'static str {
        self.sessions[0][0].1.name()
    }

    /// See [`Runtime::plans_per_shape`].
    pub fn plans_per_shape(&self) -> bool {
        self.sessions[0][0].1.plans_per_shape()
    }

    /// Runs the graph on the whole batch: inputs whose `batched` flag is set are cut along
    /// axis 0 into the runs' sizes, the others go whole to every run; each output of the
    /// runs is put together as `join` says for its index, so the result is what one
    /// session would have returned for the whole batch.
    pub fn run(
        &mut self,
        inputs: &[ArrayViewD<'_, f32>],
        batched: impl Fn(usize) -> bool,
        join: impl Fn(usize) -> Join,
    ) -> Result<Vec<ArrayD<f32>>> {
        let (runs, total) = self.run_parts(inputs, batched)?;
        let Cut::Runs(_) = self.cut else {
            return join_parts(runs, join);
        };
        if (0..runs.first().map_or(0, Vec::len)).any(|j| join(j) != Join::Stack) {
            bail!("a graph opened for runs of fixed size has per-example outputs only");
        }
        join_parts(runs, join)?
            .into_iter()
            .map(|a| {
                if a.ndim() == 0 || a.shape()[0] < total {
                    bail!(
                        "a graph output has shape {:?}, not {total} examples",
                        a.shape()
                    );
                }
                Ok(a.slice_axis(ndarray::Axis(0), (0..total).into()).to_owned())
            })
            .collect()
    }

    /// Each run's outputs, in batch order, and the batch's size (without padding).
    fn run_parts(
        &mut self,
        inputs: &[ArrayViewD<'_, f32>],
        batched: impl Fn(usize) -> bool,
    ) -> Result<(Vec<Vec<ArrayD<f32>>>, usize)> {
        let (parts, total) = match &self.cut {
            Cut::Fixed(plan) => (plan.parts.clone(), plan.parts.iter().flatten().sum()),
            Cut::Free => {
                let total = batch_rows(inputs, &batched)?;
                let parts = if self.sessions.len() == 1 {
                    vec![vec![total]]
                } else {
                    split_plan(total, self.threads, usize::MAX).parts
                };
                (parts, total)
            }
            Cut::Runs(size) => {
                let total = batch_rows(inputs, &batched)?;
                let runs = total.div_ceil(*size).max(1);
                let parts = even(runs, self.threads.min(runs))
                    .into_iter()
                    .map(|n| vec![*size; n])
                    .collect();
                (parts, total)
            }
        };
        // Batched inputs padded with zeros to the runs' rows (only a Runs cut pads).
        let rows: usize = parts.iter().flatten().sum();
        let padded: Vec<Option<ArrayD<f32>>> = inputs
            .iter()
            .enumerate()
            .map(|(i, x)| {
                if !batched(i) || rows == total || x.ndim() == 0 {
                    return Ok(None);
                }
                let mut shape = x.shape().to_vec();
                shape[0] = rows - total;
                let zeros = ArrayD::zeros(shape);
                ndarray::concatenate(ndarray::Axis(0), &[x.view(), zeros.view()])
                    .map(Some)
                    .map_err(|e| anyhow!("graph input {i} of shape {:?}: {e}", x.shape()))
            })
            .collect::<Result<_>>()?;
        let inputs: Vec<ArrayViewD<'_, f32>> = inputs
            .iter()
            .zip(&padded)
            .map(|(x, p)| p.as_ref().map_or_else(|| x.view(), |p| p.view()))
            .collect();
        // jobs[part][run] = that run's size and inputs
        let mut jobs: Vec<Vec<(usize, Vec<ArrayViewD<'_, f32>>)>> = parts
            .iter()
            .map(|p| p.iter().map(|size| (*size, vec![])).collect())
            .collect();
        for (i, x) in inputs.iter().enumerate() {
            if !batched(i) {
                jobs.iter_mut()
                    .flatten()
                    .for_each(|(_, run)| run.push(x.view()));
                continue;
            }
            if x.ndim() == 0 || x.shape()[0] != rows {
                bail!(
                    "graph input {i} has shape {:?}, expected a batch of {total} first",
                    x.shape()
                );
            }
            let mut start = 0;
            for (size, run) in jobs.iter_mut().flatten() {
                let size = *size;
                run.push(x.slice_axis(ndarray::Axis(0), (start..start + size).into()));
                start += size;
            }
        }
        let free = matches!(self.cut, Cut::Free);
        let (first, rest) = self.sessions[..jobs.len()].split_at_mut(1);
        if rest.is_empty() {
            return Ok((run_part(&mut first[0], &jobs[0], free)?, total));
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = rest
                .iter_mut()
                .zip(&jobs[1..])
                .map(|(mine, runs)| s.spawn(move || run_part(mine, runs, free)))
                .collect();
            let mut outs = run_part(&mut first[0], &jobs[0], free)?;
            for h in handles {
                outs.extend(
                    h.join()
                        .map_err(|_| anyhow!("a runtime thread panicked"))??,
                );
            }
            Ok((outs, total))
        })
    }
}

/// The locator for part `i` of a split: on CUDA, the part's device (parts go round the
/// devices), else `ort` itself.
fn device_of(ort: &OrtLocator, i: usize) -> OrtLocator {
    match ort.device.cuda_ids() {
        [] => ort.clone(),
        ids => ort.on(ids[i % ids.len()]),
    }
}

/// The batch size of a run: the rows of its first batched input.
fn batch_rows(inputs: &[ArrayViewD<'_, f32>], batched: impl Fn(usize) -> bool) -> Result<usize> {
    let Some(x) = (0..inputs.len()).find(|i| batched(*i)).map(|i| &inputs[i]) else {
        bail!("no batched input to cut");
    };
    Ok(x.shape().first().copied().unwrap_or(0))
}

/// One thread's runs, one after the other, each on its session for the run's size (on
/// its only session when the batch is `free`).
fn run_part(
    sessions: &mut [(usize, Box<dyn Runtime>)],
    runs: &[(usize, Vec<ArrayViewD<'_, f32>>)],
    free: bool,
) -> Result<Vec<Vec<ArrayD<f32>>>> {
    runs.iter()
        .map(|(size, inputs)| {
            let size = *size;
            let session = sessions
                .iter_mut()
                .find(|(s, _)| free || *s == size)
                .ok_or_else(|| anyhow!("no session for a run of {size} examples"))?;
            session.1.run(inputs)
        })
        .collect()
}

/// The parts' outputs put together, output by output, as `join` says.
fn join_parts(
    mut parts: Vec<Vec<ArrayD<f32>>>,
    join: impl Fn(usize) -> Join,
) -> Result<Vec<ArrayD<f32>>> {
    if parts.len() == 1 {
        return Ok(parts.pop().unwrap_or_default());
    }
    let n = parts[0].len();
    if parts.iter().any(|p| p.len() != n) {
        bail!("the parts of a split graph returned different numbers of outputs");
    }
    let mut columns: Vec<Vec<ArrayD<f32>>> = (0..n).map(|_| vec![]).collect();
    for part in parts {
        for (column, a) in columns.iter_mut().zip(part) {
            column.push(a);
        }
    }
    columns
        .into_iter()
        .enumerate()
        .map(|(j, column)| {
            let shapes = || {
                column
                    .iter()
                    .map(|a| a.shape().to_vec())
                    .collect::<Vec<_>>()
            };
            match join(j) {
                Join::Stack => {
                    let views: Vec<_> = column.iter().map(|a| a.view()).collect();
                    ndarray::concatenate(ndarray::Axis(0), &views).map_err(|e| {
                        anyhow!(
                            "graph output {j}: the parts' shapes {:?} do not stack: {e}",
                            shapes()
                        )
                    })
                }
                Join::Sum => {
                    if column.iter().any(|a| a.shape() != column[0].shape()) {
                        bail!("graph output {j}: the parts' shapes {:?} differ", shapes());
                    }
                    let mut it = column.into_iter();
                    let mut sum = it.next().ok_or_else(|| anyhow!("no parts"))?;
                    for a in it {
                        sum += &a;
                    }
                    Ok(sum)
                }
            }
        })
        .collect()
}

/// The ONNX Runtime library in use, or why none could be loaded.
pub fn ort_status(ort: &OrtLocator) -> Result<PathBuf> {
    ort_environment(ort).map(|(_, p)| p.clone())
}

static ORT_ENV: OnceLock<std::result::Result<(ort::environment::Environment, PathBuf), String>> =
    OnceLock::new();

fn ort_environment(loc: &OrtLocator) -> Result<&'static (ort::environment::Environment, PathBuf)> {
    let r = ORT_ENV.get_or_init(|| {
        let mut tried = vec![];
        for c in &loc.search() {
            if !c.is_file() {
                tried.push(format!("{} (absent)", c.display()));
                continue;
            }
            match ort::init_from(c) {
                Ok(b) => {
                    return b
                        .with_name("harden")
                        .with_telemetry(false)
                        .build()
                        .map(|e| (e, c.clone()))
                        .map_err(|e| format!("ONNX Runtime at {} failed to start: {e}", c.display()))
                }
                Err(e) => tried.push(format!("{} ({e})", c.display())),
            }
        }
        Err(format!(
            "ONNX Runtime library not found (tried: {}); run scripts/fetch-onnxruntime.sh or set ORT_DYLIB_PATH",
            if tried.is_empty() { "nothing".to_string() } else { tried.join(", ") }
        ))
    });
    r.as_ref().map_err(|e| anyhow!("{e}"))
}

/// ONNX Runtime's CUDA execution provider on device `id`; registering it fails (rather
/// than falling back to the CPU) when the provider library or its CUDA libraries cannot
/// load.
fn cuda_provider(
    id: usize,
    tf32: bool,
    limit: Option<usize>,
) -> ort::ep::ExecutionProviderDispatch {
    let cuda = ort::ep::CUDA::default()
        .with_device_id(i32::try_from(id).unwrap_or(i32::MAX))
        .with_tf32(tf32);
    match limit {
        Some(bytes) => cuda.with_memory_limit(bytes),
        None => cuda,
    }
    .build()
    .error_on_failure()
}

/// cuDNN's libraries in load order (cuDNN 9 loads its parts by name at run time).
const CUDNN_LIBS: &[&str] = &[
    "libcudnn.so.9",
    "libcudnn_graph.so.9",
    "libcudnn_ops.so.9",
    "libcudnn_heuristic.so.9",
    "libcudnn_adv.so.9",
    "libcudnn_cnn.so.9",
    "libcudnn_engines_precompiled.so.9",
    "libcudnn_engines_runtime_compiled.so.9",
];

/// Checks that ONNX Runtime's CUDA provider starts on each of `ids`: the library in use
/// has the provider next to it, the CUDA and cuDNN libraries load (from
/// `loc.cuda_lib_dirs` first), the devices exist, and a one-node graph runs on each.
fn check_cuda(loc: &OrtLocator, ids: &[usize]) -> Result<()> {
    let fix_ort = if loc.explicit.is_some() {
        "run scripts/fetch-onnxruntime.sh --gpu and point ORT_DYLIB_PATH at ~/.cache/harden/onnxruntime-gpu/libonnxruntime.so (or unset it)"
    } else {
        "run scripts/fetch-onnxruntime.sh --gpu"
    };
    let (env, lib) = ort_environment(loc).map_err(|e| anyhow!("{e} (for CUDA: {fix_ort})"))?;
    let dir = lib.parent().unwrap_or(Path::new("."));
    for f in [
        "libonnxruntime_providers_shared.so",
        "libonnxruntime_providers_cuda.so",
    ] {
        if !dir.join(f).is_file() {
            bail!(
                "the ONNX Runtime library in use ({}) has no CUDA provider ({f} is not next to it); {fix_ort}",
                lib.display()
            );
        }
    }
    let provider = dir.join("libonnxruntime_providers_cuda.so");
    let needed = elf_needed(&provider).unwrap_or_default();
    let cuda_major = needed
        .iter()
        .find_map(|n| n.strip_prefix("libcudart.so."))
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(13);
    preload_cuda_libs(&needed, cuda_major, &loc.cuda_lib_dirs);
    let fix = |missing: &str| cuda_fix(missing, cuda_major, &loc.cuda_lib_dirs);
    // A graph that runs on the provider: registering it loads the provider and its
    // libraries (a missing one is named by the loader), running it starts the device.
    let probe = probe_model();
    let start = |id: usize| -> Result<()> {
        use ort::session::builder::GraphOptimizationLevel;
        let mut session = ort::session::Session::builder(env)
            .map_err(|e| anyhow!("{e}"))?
            .with_optimization_level(GraphOptimizationLevel::Disable)
            .map_err(|e| anyhow!("{e}"))?
            .with_execution_providers([cuda_provider(id, false, None)])
            .map_err(|e| anyhow!("{e}"))?
            .commit_from_memory(&probe)
            .map_err(|e| anyhow!("{e}"))?;
        let x = ndarray::ArrayD::<f32>::from_elem(vec![4], -1.0);
        let t = ort::value::TensorRef::from_array_view(x.view()).map_err(|e| anyhow!("{e}"))?;
        let out = session
            .run(ort::inputs!["x" => t])
            .map_err(|e| anyhow!("{e}"))?;
        let y = out[0]
            .try_extract_array::<f32>()
            .map_err(|e| anyhow!("{e}"))?;
        if y.iter().any(|v| *v != 0.0) {
            bail!("a Relu on the device returned {y:?}, not zeros");
        }
        Ok(())
    };
    let first = ids.first().copied().unwrap_or(0);
    if let Err(e) = start(first) {
        let msg = one_line(&e);
        if let Some(missing) = missing_library(&msg) {
            bail!(
                "ONNX Runtime's CUDA provider cannot load {missing}: {}",
                fix(&missing)
            );
        }
        let count = device_count(cuda_major);
        if let Ok(n) = count {
            if first >= n {
                bail!("{}", no_such_device(first, n));
            }
        }
        bail!("ONNX Runtime's CUDA provider does not start on device {first}: {msg}");
    }
    let n = device_count(cuda_major)?;
    if let Some(&bad) = ids.iter().find(|&&i| i >= n) {
        bail!("{}", no_such_device(bad, n));
    }
    for &id in ids.iter().filter(|&&i| i != first) {
        start(id).map_err(|e| {
            anyhow!(
                "ONNX Runtime's CUDA provider does not start on device {id}: {}",
                one_line(&e)
            )
        })?;
    }
    Ok(())
}

fn no_such_device(id: usize, n: usize) -> String {
    match n {
        0 => format!("cuda:{id}: this machine has no CUDA device"),
        1 => format!("cuda:{id}: this machine has one CUDA device, cuda:0"),
        n => format!(
            "cuda:{id}: this machine has {n} CUDA devices, cuda:0 to cuda:{}",
            n - 1
        ),
    }
}

/// The library a loader message says it could not open (`libX.so.N: cannot open shared
/// object file`).
fn missing_library(msg: &str) -> Option<String> {
    let at = msg.find(": cannot open shared object file")?;
    let name = msg[..at]
        .rsplit(|c: char| c.is_whitespace() || c == '\'' || c == '"' || c == '(')
        .next()?;
    name.contains(".so").then(|| name.to_string())
}

/// What to do about a missing CUDA library.
fn cuda_fix(missing: &str, cuda_major: u32, dirs: &[PathBuf]) -> String {
    if missing.starts_with("libcuda.so") {
        return "it is the NVIDIA driver's library: this machine has no NVIDIA driver (or GPU); use --device cpu".into();
    }
    let sfx = if cuda_major >= 13 {
        String::new()
    } else {
        format!("-cu{cuda_major}")
    };
    let looked = if dirs.is_empty() {
        "harden found no nvidia-* wheel folders".to_string()
    } else {
        let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        format!("harden looked in {}", dirs.join(", "))
    };
    format!(
        "the provider needs CUDA {cuda_major} and cuDNN 9: pip install nvidia-cuda-runtime{sfx} nvidia-cublas{sfx} nvidia-curand{sfx} nvidia-cuda-nvrtc{sfx} nvidia-cudnn-cu{cuda_major} (into the Python environment harden looks in, or run scripts/fetch-onnxruntime.sh --gpu --cuda-libs), or put their folder on LD_LIBRARY_PATH; {looked}, then LD_LIBRARY_PATH and the system's folders"
    )
}

/// Loads, from the first of `dirs` that has it, each CUDA library the provider needs
/// (`needed`, its DT_NEEDED entries) and cuDNN's, in dependency order, so that the
/// provider's own loading finds them already loaded; what no folder has is left to the
/// system's search.
fn preload_cuda_libs(needed: &[String], cuda_major: u32, dirs: &[PathBuf]) {
    const ORDER: &[&str] = &[
        "libcudart.so",
        "libcublasLt.so",
        "libcublas.so",
        "libnvJitLink.so",
        "libnvrtc.so",
        "libcurand.so",
        "libcufft.so",
    ];
    let rank = |n: &str| {
        ORDER
            .iter()
            .position(|p| n.starts_with(&format!("{p}.")))
            .unwrap_or(ORDER.len())
    };
    let mut libs: Vec<String> = needed
        .iter()
        .filter(|n| {
            (n.starts_with("libcu") || n.starts_with("libnv")) && !n.starts_with("libcuda.so")
        })
        .cloned()
        .collect();
    // Loaded by name at run time rather than linked: NVRTC (cuDNN's runtime-compiled
    // engines) and cuDNN.
    libs.push(format!("libnvrtc.so.{cuda_major}"));
    libs.sort_by_key(|n| rank(n));
    libs.dedup();
    libs.extend(CUDNN_LIBS.iter().map(|s| s.to_string()));
    for name in &libs {
        if let Some(path) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
            // A library that fails here fails again, named, when the provider loads.
            let _ = ort::util::preload_dylib(&path);
        }
    }
}

/// The number of CUDA devices, from the CUDA runtime (`cudaGetDeviceCount`).
fn device_count(cuda_major: u32) -> Result<usize> {
    let name = format!("libcudart.so.{cuda_major}");
    // SAFETY: loading the CUDA runtime runs its initialisers, which have no
    // preconditions; the symbols are called with their C signatures.
    unsafe {
        let lib = libloading::Library::new(&name).map_err(|e| anyhow!("{name}: {e}"))?;
        let count: libloading::Symbol<unsafe extern "C" fn(*mut i32) -> i32> = lib
            .get(b"cudaGetDeviceCount\0")
            .map_err(|e| anyhow!("{name}: {e}"))?;
        let mut n = 0i32;
        let code = count(&mut n);
        if code != 0 {
            let text: Option<
                libloading::Symbol<unsafe extern "C" fn(i32) -> *const std::ffi::c_char>,
            > = lib.get(b"cudaGetErrorString\0").ok();
            let what = text
                .map(|f| f(code))
                .filter(|p| !p.is_null())
                .map(|p| std::ffi::CStr::from_ptr(p).to_string_lossy().into_owned())
                .unwrap_or_default();
            bail!("the CUDA runtime finds no usable device: error {code} {what}");
        }
        std::mem::forget(lib);
        Ok(usize::try_from(n).unwrap_or(0))
    }
}

/// A one-node graph (`y = Relu(x)`, x of 4 floats) to start a provider with.
fn probe_model() -> Vec<u8> {
    crate::model::unary_model("Relu", Some(&[crate::model::Dim::Fixed(4)]))
}

/// The DT_NEEDED entries of a 64-bit little-endian ELF shared library (read from its
/// program headers and dynamic section; the file is not loaded).
pub fn elf_needed(path: &Path) -> Result<Vec<String>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut read_at = |off: u64, len: usize| -> Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        f.seek(SeekFrom::Start(off))?;
        f.read_exact(&mut b)?;
        Ok(b)
    };
    let h = read_at(0, 64)?;
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        bail!("{} is not a 64-bit little-endian ELF file", path.display());
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
    let (phoff, phentsize, phnum) = (u64_at(&h, 32), u16_at(&h, 54), u16_at(&h, 56));
    let ph = read_at(phoff, (phentsize * phnum) as usize)?;
    let mut loads = vec![]; // (vaddr, offset, filesz)
    let mut dynamic = None; // (offset, filesz)
    for i in 0..phnum as usize {
        let e = &ph[i * phentsize as usize..];
        let kind = u32::from_le_bytes([e[0], e[1], e[2], e[3]]);
        let (off, vaddr, filesz) = (u64_at(e, 8), u64_at(e, 16), u64_at(e, 32));
        match kind {
            1 => loads.push((vaddr, off, filesz)),
            2 => dynamic = Some((off, filesz)),
            _ => {}
        }
    }
    let (doff, dsize) = dynamic.ok_or_else(|| anyhow!("{}: no dynamic section", path.display()))?;
    let d = read_at(doff, dsize as usize)?;
    let (mut strtab, mut strsz, mut needed) = (None, 0u64, vec![]);
    for e in d.chunks_exact(16) {
        let (tag, val) = (u64_at(e, 0), u64_at(e, 8));
        match tag {
            0 => break,
            1 => needed.push(val),
            5 => strtab = Some(val),
            10 => strsz = val,
            _ => {}
        }
    }
    let addr = strtab.ok_or_else(|| anyhow!("{}: no string table", path.display()))?;
    let off = loads
        .iter()
        .find(|(v, _, n)| (*v..v + n).contains(&addr))
        .map(|(v, o, _)| addr - v + o)
        .ok_or_else(|| anyhow!("{}: string table outside the file", path.display()))?;
    let strs = read_at(off, strsz as usize)?;
    Ok(needed
        .into_iter()
        .filter_map(|i| {
            let s = strs.get(i as usize..)?;
            let end = s.iter().position(|&c| c == 0)?;
            Some(String::from_utf8_lossy(&s[..end]).into_owned())
        })
        .collect())
}

/// ONNX Runtime session.
pub struct OrtRuntime {
    session: ort::session::Session,
}

impl OrtRuntime {
    pub fn new(model_bytes: &[u8], threads: usize, loc: &OrtLocator) -> Result<Self> {
        Ok(OrtRuntime {
            session: ort_session(model_bytes, threads, loc)?,
        })
    }
}

/// An ONNX Runtime session for `model_bytes` with `threads` intra-op threads, on the
/// device `loc` names (its first CUDA device, or the CPU).
pub(crate) fn ort_session(
    model_bytes: &[u8],
    threads: usize,
    loc: &OrtLocator,
) -> Result<ort::session::Session> {
    let (env, _) = ort_environment(loc)?;
    use ort::session::builder::GraphOptimizationLevel;
    let err = |e: ort::Error<ort::session::builder::SessionBuilder>| anyhow!("onnxruntime: {e}");
    let builder = ort::session::Session::builder(env)
        .map_err(|e| anyhow!("onnxruntime: {e}"))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(err)?
        .with_intra_threads(threads.max(1))
        .map_err(err)?
        .with_inter_threads(1)
        .map_err(err)?
        // Idle workers sleep instead of spinning: on a machine with few cores or
        // other work, and with several sessions taking turns (classifier and
        // gradient graphs), spinning threads take CPU from the ones computing
        // (measured: PGD-10 1.5x, clean audit 1.2x faster).
        .with_intra_op_spinning(false)
        .map_err(err)?;
    let builder = match &loc.profile {
        None => builder,
        Some(prefix) => {
            static SESSIONS: std::sync::atomic::AtomicUsize =
                std::sync::atomic::AtomicUsize::new(0);
            let n = SESSIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut name = prefix.as_os_str().to_owned();
            name.push(format!("-{}-{n}", std::process::id()));
            builder.with_profiling(PathBuf::from(name)).map_err(err)?
        }
    };
    let mut builder = match loc.device.cuda_ids().first() {
        None => builder,
        Some(&id) => builder
            .with_execution_providers([cuda_provider(id, loc.tf32, loc.cuda_memory_limit)])
            .map_err(|e| anyhow!("onnxruntime: CUDA device {id}: {e}"))?,
    };
    builder
        .commit_from_memory(model_bytes)
        .map_err(|e| anyhow!("onnxruntime cannot load the model: {e}"))
}

impl Runtime for OrtRuntime {
    fn name(&self) -> &'static str {
        "onnxruntime"
    }

    fn run(&mut self, inputs: &[ArrayViewD<'_, f32>]) -> Result<Vec<ArrayD<f32>>> {
        let names: Vec<String> = self
            .session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        if names.len() != inputs.len() {
            bail!("graph takes {} inputs, {} given", names.len(), inputs.len());
        }
        simulated_failure(
            inputs
                .first()
                .and_then(|x| x.shape().first().copied())
                .unwrap_or(0),
        )?;
        let mut values = Vec::with_capacity(inputs.len());
        for (name, x) in names.iter().zip(inputs) {
            let t = ort::value::TensorRef::from_array_view(x.view())
                .map_err(|e| anyhow!("onnxruntime: input '{name}': {e}"))?;
            values.push((name.clone(), t));
        }
        let outputs = self
            .session
            .run(values)
            .map_err(|e| run_failure(&e.to_string(), inputs.first().map(|x| x.shape()[0])))?;
        let mut result = Vec::with_capacity(outputs.len());
        for (name, v) in outputs.iter() {
            let a = v
                .try_extract_array::<f32>()
                .map_err(|e| anyhow!("onnxruntime: output '{name}' is not a float tensor: {e}"))?;
            result.push(a.to_owned());
        }
        Ok(result)
    }
}

/// ONNX Runtime's failure to run a graph on `batch` examples: out of memory (the CPU
/// arena's "Failed to allocate memory", CUDA's "out of memory", cuDNN's allocation
/// failures, an arena at its `--gpu-memory-limit`'s "Available memory of X is smaller
/// than requested bytes of Y") names `--batch-size`, the one setting that bounds it; anything else is
/// passed on.
pub(crate) fn run_failure(msg: &str, batch: Option<usize>) -> anyhow::Error {
    if let Some(e) = out_of_memory(msg, batch) {
        return e;
    }
    anyhow!(
        "onnxruntime failed to run the model: {}",
        msg.replace('\n', " ")
    )
}

/// A run that ran out of memory (the error [`run_failure`] gives for it, found in an
/// error's chain by [`is_out_of_memory`]).
#[derive(Debug)]
pub struct OutOfMemory {
    /// Examples in the run, where known.
    pub examples: Option<usize>,
    detail: String,
}

impl std::fmt::Display for OutOfMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.examples {
            Some(1) => write!(f, "onnxruntime ran out of memory running one example ({}): the model's graphs do not fit in this device's memory", self.detail),
            Some(n) => write!(f, "onnxruntime ran out of memory running {n} examples at once ({}); pass a smaller --batch-size", self.detail),
            None => write!(f, "onnxruntime ran out of memory ({}); pass a smaller --batch-size", self.detail),
        }
    }
}

impl OutOfMemory {
    /// ONNX Runtime's own words.
    pub fn detail(&self) -> &str {
        &self.detail
    }
}

impl std::error::Error for OutOfMemory {}

/// Whether `e` (or an error it wraps) is a run out of memory.
pub fn is_out_of_memory(e: &anyhow::Error) -> bool {
    out_of_memory_in(e).is_some()
}

/// The run out of memory that `e` is or wraps.
pub fn out_of_memory_in(e: &anyhow::Error) -> Option<&OutOfMemory> {
    e.chain().find_map(|c| c.downcast_ref::<OutOfMemory>())
}

/// `r` with running out of memory, the run's failure (the caller may run again in
/// smaller batches), as the outer error, and any other error, the model's (no gradient
/// graph, a batch that cannot be freed), left inside for the caller to fall back on.
pub fn unless_out_of_memory<T>(r: Result<T>) -> Result<Result<T>> {
    match r {
        Err(e) if is_out_of_memory(&e) => Err(e),
        r => Ok(r),
    }
}

/// For tests of failures that need a device to happen: with
/// `HARDEN_SIMULATE_OOM_ABOVE=N`, every ONNX Runtime run of more than N examples fails as
/// out of memory; with `N@K`, every such run after the first K. With
/// `HARDEN_SIMULATE_RUN_FAILURE=K`, the K-th run (from 1) and every later one fails as a
/// provider failing mid-run does (CUDA's illegal memory access).
pub(crate) fn simulated_failure(examples: usize) -> Result<()> {
    static FAIL_AT: OnceLock<Option<usize>> = OnceLock::new();
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let fail_at = FAIL_AT.get_or_init(|| {
        std::env::var("HARDEN_SIMULATE_RUN_FAILURE")
            .ok()?
            .trim()
            .parse()
            .ok()
            .filter(|k| *k >= 1)
    });
    if let Some(k) = *fail_at {
        if RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1 >= k {
            return Err(run_failure(
                &format!("CUDA failure 700: an illegal memory access was encountered (simulated: HARDEN_SIMULATE_RUN_FAILURE={k})"),
                Some(examples),
            ));
        }
    }
    simulated_oom(examples)
}

fn simulated_oom(examples: usize) -> Result<()> {
    static LIMIT: OnceLock<Option<(usize, usize)>> = OnceLock::new();
    static BIG_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let limit = LIMIT.get_or_init(|| {
        let v = std::env::var("HARDEN_SIMULATE_OOM_ABOVE").ok()?;
        let (n, k) = v.trim().split_once('@').unwrap_or((v.trim(), "0"));
        Some((n.parse().ok()?, k.parse().ok()?))
    });
    match *limit {
        Some((n, k)) if examples > n => {
            let seen = BIG_RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if seen < k {
                return Ok(());
            }
            Err(run_failure(
                &format!(
                    "Failed to allocate memory (simulated: HARDEN_SIMULATE_OOM_ABOVE={n}@{k})"
                ),
                Some(examples),
            ))
        }
        _ => Ok(()),
    }
}

/// The out-of-memory error for `msg`, if it is one.
pub(crate) fn out_of_memory(msg: &str, batch: Option<usize>) -> Option<anyhow::Error> {
    let m = msg.to_ascii_lowercase();
    let oom = [
        "out of memory",
        "failed to allocate",
        "bad_alloc",
        "alloc_failed",
        // The BFC arena at its cap (`--gpu-memory-limit`).
        "is smaller than requested bytes",
    ]
    .iter()
    .any(|p| m.contains(p));
    oom.then(|| {
        anyhow::Error::new(OutOfMemory {
            examples: batch,
            detail: msg.replace('\n', " "),
        })
    })
}

type TractPlan = Arc<tract_onnx::prelude::TypedRunnableModel>;

/// tract: optimised plans, one per distinct input shape, built on first use.
pub struct TractRuntime {
    model: tract_onnx::prelude::InferenceModel,
    plans: HashMap<Vec<Vec<usize>>, TractPlan>,
}

impl TractRuntime {
    pub fn new(model_bytes: &[u8]) -> Result<Self> {
        use tract_onnx::prelude::*;
        if let Some(node) = crate::model::mod_with_constant_dividend(model_bytes) {
            bail!("tract cannot run Mod node '{node}' correctly: its dividend is a constant, whose operands tract 0.23 swaps at batches above 1; use --runtime ort");
        }
        let model = tract_onnx::onnx()
            .model_for_read(&mut &model_bytes[..])
            .map_err(|e| anyhow!("tract cannot load the model: {}", one_line(&e)))?;
        Ok(TractRuntime {
            model,
            plans: HashMap::new(),
        })
    }

    fn plan(&mut self, shapes: Vec<Vec<usize>>) -> Result<TractPlan> {
        use tract_onnx::prelude::*;
        if let Some(p) = self.plans.get(&shapes) {
            return Ok(p.clone());
        }
        let mut m = self.model.clone();
        for (i, s) in shapes.iter().enumerate() {
            m = m
                .with_input_fact(i, f32::fact(s).into())
                .map_err(|e| anyhow!("tract: input {i}: {}", one_line(&e)))?;
        }
        let plan = m
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| {
                anyhow!(
                    "tract cannot prepare the model for shapes {shapes:?}: {}",
                    one_line(&e)
                )
            })?;
        self.plans.insert(shapes, plan.clone());
        Ok(plan)
    }
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

impl Runtime for TractRuntime {
    fn name(&self) -> &'static str {
        "tract"
    }

    fn plans_per_shape(&self) -> bool {
        true
    }

    fn run(&mut self, inputs: &[ArrayViewD<'_, f32>]) -> Result<Vec<ArrayD<f32>>> {
        use tract_onnx::prelude::*;
        let shapes = inputs.iter().map(|x| x.shape().to_vec()).collect();
        let plan = self.plan(shapes)?;
        let tensors: TVec<TValue> = inputs
            .iter()
            .map(|x| Tensor::from(x.to_owned()).into())
            .collect();
        let outputs = plan
            .run(tensors)
            .map_err(|e| anyhow!("tract failed to run the model: {}", one_line(&e)))?;
        outputs
            .into_iter()
            .map(|t| {
                let t = t
                    .into_tensor()
                    .cast_to::<f32>()
                    .map_err(|e| anyhow!("tract: output is not numeric: {}", one_line(&e)))?
                    .into_owned();
                t.into_plain_array::<f32>()
                    .map_err(|e| anyhow!("tract: {}", one_line(&e)))
            })
            .collect::<Result<Vec<_>>>()
            .context("reading tract outputs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_memory_names_the_batch_size() {
        let e = run_failure(
            "Failed to allocate memory for requested buffer of size 123",
            Some(64),
        );
        assert!(
            e.to_string()
                .contains("out of memory running 64 examples at once")
                && e.to_string().contains("--batch-size"),
            "{e}"
        );
        let e = run_failure("CUDA failure 2: out of memory ; GPU=0", Some(8));
        assert!(e.to_string().contains("--batch-size"), "{e}");
        // An arena capped by --gpu-memory-limit (gpu_mem_limit) words it otherwise.
        let e = run_failure("Non-zero status code returned while running Conv node. Name:'c1' Status Message: BFCArena::AllocateRawInternal: Available memory of 1048576 is smaller than requested bytes of 4194304", Some(8));
        assert!(is_out_of_memory(&e), "{e}");
        // Out of memory goes out; another failure stays inside for a fall back.
        assert!(unless_out_of_memory::<()>(Err(e)).is_err());
        let other = unless_out_of_memory::<()>(Err(anyhow!("no gradient rule for Foo")));
        assert!(matches!(other, Ok(Err(_))));
        let e = run_failure(
            "Non-zero status code returned while running Conv node",
            Some(8),
        );
        assert_eq!(e.to_string(), "onnxruntime failed to run the model: Non-zero status code returned while running Conv node");
    }

    #[test]
    fn split_plan_cuts_big_batches_over_threads() {
        let plan = |b, t| split_plan(b, t, usize::MAX);
        let one = |sizes: &[usize], intra| Plan {
            parts: sizes.iter().map(|s| vec![*s]).collect(),
            intra,
        };
        assert_eq!(plan(128, 1), one(&[128], 1));
        assert_eq!(plan(128, 2), one(&[64, 64], 1));
        assert_eq!(plan(37, 2), one(&[19, 18], 1));
        assert_eq!(plan(128, 3), one(&[43, 43, 42], 1));
        // Too small to be worth cutting: whole, on the intra-op threads.
        assert_eq!(plan(15, 2), one(&[15], 2));
        // No part below MIN_PART.
        assert_eq!(plan(20, 8), one(&[10, 10], 4));
        for (b, t) in [(128, 2), (100, 3), (16, 2), (1000, 7)] {
            let p = plan(b, t);
            assert_eq!(p.parts.iter().flatten().sum::<usize>(), b);
            assert!(p.parts.iter().flatten().all(|s| *s >= MIN_PART));
        }
    }

    #[test]
    fn devices_parse_and_print() {
        let d = |s: &str| s.parse::<Device>();
        assert_eq!(d("cpu").unwrap(), Device::Cpu);
        assert_eq!(d("auto").unwrap(), Device::Auto);
        assert_eq!(d("cuda").unwrap(), Device::Cuda(vec![0]));
        assert_eq!(d("cuda:3").unwrap(), Device::Cuda(vec![3]));
        assert_eq!(d("cuda:0,1").unwrap(), Device::Cuda(vec![0, 1]));
        for bad in ["", "tpu", "cuda:", "cuda:a", "cuda:0,", "cuda:-1", "cuda0"] {
            assert!(d(bad).is_err(), "{bad}");
        }
        for s in ["cpu", "auto", "cuda:0", "cuda:0,1"] {
            assert_eq!(d(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn gpu_devices_run_whole_batches() {
        let gpu = OrtLocator::default().with_device(Device::Cuda(vec![0]));
        let cpu = OrtLocator::default();
        let proto = crate::model::pb::ModelProto::default();
        assert_eq!(chunk_for(&proto, "x", &[1], &gpu), usize::MAX);
        // Parts go round the devices.
        let two = OrtLocator::default().with_device(Device::Cuda(vec![0, 1]));
        assert_eq!(device_of(&two, 0).device, Device::Cuda(vec![0]));
        assert_eq!(device_of(&two, 3).device, Device::Cuda(vec![1]));
        assert_eq!(device_of(&cpu, 3).device, Device::Cpu);
    }

    #[test]
    fn missing_libraries_are_read_from_loader_messages() {
        let m = "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: cannot open shared object file: No such file or directory";
        assert_eq!(missing_library(m).as_deref(), Some("libcublasLt.so.13"));
        assert_eq!(
            missing_library("CUDA failure 100: no CUDA-capable device"),
            None
        );
    }

    #[test]
    fn elf_needed_reads_a_binary() {
        let exe = std::env::current_exe().unwrap();
        let needed = elf_needed(&exe).unwrap();
        assert!(
            needed.iter().any(|n| n.starts_with("libc.so")),
            "{needed:?}"
        );
        assert!(elf_needed(Path::new("Cargo.toml")).is_err());
    }

    #[test]
    fn split_plan_cuts_parts_into_runs_that_fit_in_cache() {
        // The demo CNN's largest activation: 32 x 26 x 26 values per example.
        assert_eq!(chunk_size(32 * 26 * 26), 16);
        // The Wong CNN's: 16 x 14 x 14, small enough for a whole part of 64 and more.
        assert_eq!(chunk_size(16 * 14 * 14), 128);
        assert_eq!(chunk_size(10_000_000), MIN_PART);
        assert_eq!(chunk_size(0), usize::MAX);
        let p = split_plan(128, 2, 16);
        assert_eq!(p.parts, vec![vec![16; 4], vec![16; 4]]);
        assert_eq!(split_plan(100, 2, 16).parts, vec![vec![13, 13, 12, 12]; 2]);
        assert_eq!(split_plan(100, 1, 32).parts, vec![vec![25; 4]]);
        // Runs never fall under MIN_PART (a part of 9 stays whole), chunk or not.
        assert_eq!(split_plan(9, 1, 4).parts, vec![vec![9]]);
        assert_eq!(split_plan(24, 2, 8).parts, vec![vec![12], vec![12]]);
        for (b, t, c) in [(128, 2, 16), (100, 3, 16), (1000, 7, 64), (64, 1, 24)] {
            let p = split_plan(b, t, c);
            assert_eq!(p.parts.iter().flatten().sum::<usize>(), b);
            assert!(p.parts.iter().flatten().all(|s| (MIN_PART..=c).contains(s)));
        }
    }
}
