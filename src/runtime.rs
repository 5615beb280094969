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

/// Where harden looks for `libonnxruntime.so`, in order (the CLI supplies the
/// environment-derived entries, so library code reads no environment).
#[derive(Clone, Debug, Default)]
pub struct OrtLocator {
    pub candidates: Vec<PathBuf>,
}

impl OrtLocator {
    /// `ORT_DYLIB_PATH` (explicit), then `~/.cache/harden/onnxruntime/libonnxruntime.so`
    /// (where `scripts/fetch-onnxruntime.sh` puts it), then next to the executable.
    pub fn standard(
        ort_dylib_path: Option<PathBuf>,
        home: Option<&Path>,
        exe_dir: Option<&Path>,
    ) -> Self {
        let mut candidates = vec![];
        candidates.extend(ort_dylib_path);
        if let Some(h) = home {
            candidates.push(h.join(".cache/harden/onnxruntime/libonnxruntime.so"));
        }
        if let Some(d) = exe_dir {
            candidates.push(d.join("libonnxruntime.so"));
        }
        OrtLocator { candidates }
    }
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
    match choice {
        RuntimeChoice::Tract => Ok(Box::new(TractRuntime::new(model_bytes)?)),
        RuntimeChoice::Ort => Ok(Box::new(OrtRuntime::new(model_bytes, threads, ort)?)),
        RuntimeChoice::Auto => match ort_environment(ort) {
            Ok(_) => Ok(Box::new(OrtRuntime::new(model_bytes, threads, ort)?)),
            Err(_) => Ok(Box::new(TractRuntime::new(model_bytes)?)),
        },
    }
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
/// no limit when its shapes cannot be analysed (the limit only tunes speed).
pub fn chunk_for(
    proto: &crate::model::pb::ModelProto,
    input: &str,
    example_shape: &[usize],
) -> usize {
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
        for part in &plan.parts {
            let mut mine: Vec<(usize, Box<dyn Runtime>)> = vec![];
            for &size in part {
                if mine.iter().any(|(s, _)| *s == size) {
                    continue;
                }
                if !built.iter().any(|(s, _)| *s == size) {
                    built.push((size, build(size)?));
                }
                if let Some((_, bytes)) = built.iter().find(|(s, _)| *s == size) {
                    mine.push((size, open(choice, bytes, plan.intra, ort)?));
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
        let threads = threads.max(1);
        let (n, each) = if splittable && threads > 1 {
            (threads, 1)
        } else {
            (1, threads)
        };
        let sessions = (0..n)
            .map(|_| Ok(vec![(0, open(choice, model_bytes, each, ort)?)]))
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
        let threads = threads.max(1);
        let bytes = build(size)?;
        let sessions = (0..threads)
            .map(|_| Ok(vec![(size, open(choice, &bytes, 1, ort)?)]))
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
        for c in &loc.candidates {
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

/// ONNX Runtime session.
pub struct OrtRuntime {
    session: ort::session::Session,
}

impl OrtRuntime {
    pub fn new(model_bytes: &[u8], threads: usize, loc: &OrtLocator) -> Result<Self> {
        let (env, _) = ort_environment(loc)?;
        use ort::session::builder::GraphOptimizationLevel;
        let err =
            |e: ort::Error<ort::session::builder::SessionBuilder>| anyhow!("onnxruntime: {e}");
        let session = ort::session::Session::builder(env)
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
            .map_err(err)?
            .commit_from_memory(model_bytes)
            .map_err(|e| anyhow!("onnxruntime cannot load the model: {e}"))?;
        Ok(OrtRuntime { session })
    }
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
        let mut values = Vec::with_capacity(inputs.len());
        for (name, x) in names.iter().zip(inputs) {
            let t = ort::value::TensorRef::from_array_view(x.view())
                .map_err(|e| anyhow!("onnxruntime: input '{name}': {e}"))?;
            values.push((name.clone(), t));
        }
        let outputs = self
            .session
            .run(values)
            .map_err(|e| anyhow!("onnxruntime failed to run the model: {e}"))?;
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

type TractPlan = Arc<tract_onnx::prelude::TypedRunnableModel>;

/// tract: optimised plans, one per distinct input shape, built on first use.
pub struct TractRuntime {
    model: tract_onnx::prelude::InferenceModel,
    plans: HashMap<Vec<Vec<usize>>, TractPlan>,
}

impl TractRuntime {
    pub fn new(model_bytes: &[u8]) -> Result<Self> {
        use tract_onnx::prelude::*;
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
