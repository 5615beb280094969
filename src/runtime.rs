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

/// How a batch of `batch` examples runs on `threads` threads: split into parts that run
/// side by side, one single-threaded session each (measured on 2 cores: PGD-10 on the
/// demo CNN 1.3x, on the small Wong CNN 1.8x faster than one session with two intra-op
/// threads, whose per-op hand-offs cost more than small convolutions take), or whole on
/// one session with `threads` intra-op threads. Returns the part sizes (summing to
/// `batch`, largest first) and the intra-op threads of each part's session.
pub fn split_plan(batch: usize, threads: usize) -> (Vec<usize>, usize) {
    let threads = threads.max(1);
    if threads < 2 || batch < 2 * MIN_PART {
        return (vec![batch], threads);
    }
    let parts = threads.min(batch / MIN_PART);
    let sizes = (0..parts)
        .map(|i| batch / parts + usize::from(i < batch % parts))
        .collect();
    (sizes, (threads / parts).max(1))
}

/// One graph for a batch, run as parts side by side (see [`split_plan`]): a session per
/// part, each part on its own thread. Either built for one batch (each session for its
/// part's size) or, for a graph whose batch is free, cut anew for every run.
pub struct Split {
    /// Part sizes of a graph built for one batch; empty when the batch is free.
    sizes: Vec<usize>,
    parts: Vec<Box<dyn Runtime>>,
    threads: usize,
}

impl Split {
    /// Opens the graph `build(part_size)` once per part of `batch` split for `threads`;
    /// unless `splittable` (a graph whose batch cannot change), one part on `threads`.
    pub fn open(
        choice: RuntimeChoice,
        batch: usize,
        threads: usize,
        splittable: bool,
        ort: &OrtLocator,
        build: impl Fn(usize) -> Result<Vec<u8>>,
    ) -> Result<Split> {
        let (sizes, each) = if splittable {
            split_plan(batch, threads)
        } else {
            (vec![batch], threads.max(1))
        };
        let mut parts: Vec<Box<dyn Runtime>> = Vec::with_capacity(sizes.len());
        let mut built: Option<(usize, Vec<u8>)> = None;
        for &size in &sizes {
            if built.as_ref().map(|(s, _)| *s) != Some(size) {
                built = Some((size, build(size)?));
            }
            if let Some((_, bytes)) = &built {
                parts.push(open(choice, bytes, each, ort)?);
            }
        }
        Ok(Split {
            sizes,
            parts,
            threads,
        })
    }

    /// Opens `model_bytes`, whose batch is free, for runs of any batch: one single-threaded
    /// session per thread, each run cut by [`split_plan`]; unless `splittable`, one
    /// session on `threads`.
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
        let parts = (0..n)
            .map(|_| open(choice, model_bytes, each, ort))
            .collect::<Result<_>>()?;
        Ok(Split {
            sizes: vec![],
            parts,
            threads,
        })
    }

    pub fn name(&self) -> &'static str {
        self.parts[0].name()
    }

    /// Runs the graph on the whole batch: inputs whose `batched` flag is set are cut along
    /// axis 0 into the parts' sizes, the others go whole to every part; each output of
    /// the parts is put together as `join` says for its index, so the result is what one
    /// session would have returned for the whole batch.
    pub fn run(
        &mut self,
        inputs: &[ArrayViewD<'_, f32>],
        batched: impl Fn(usize) -> bool,
        join: impl Fn(usize) -> Join,
    ) -> Result<Vec<ArrayD<f32>>> {
        let parts = self.run_parts(inputs, batched)?;
        join_parts(parts, join)
    }

    /// Each part's outputs, in part order.
    fn run_parts(
        &mut self,
        inputs: &[ArrayViewD<'_, f32>],
        batched: impl Fn(usize) -> bool,
    ) -> Result<Vec<Vec<ArrayD<f32>>>> {
        let sizes = if !self.sizes.is_empty() {
            self.sizes.clone()
        } else {
            let Some(x) = (0..inputs.len()).find(|i| batched(*i)).map(|i| &inputs[i]) else {
                bail!("no batched input to cut");
            };
            let total = x.shape().first().copied().unwrap_or(0);
            if self.parts.len() == 1 {
                vec![total]
            } else {
                split_plan(total, self.threads).0
            }
        };
        let total: usize = sizes.iter().sum();
        let mut jobs: Vec<Vec<ArrayViewD<'_, f32>>> = vec![vec![]; sizes.len()];
        for (i, x) in inputs.iter().enumerate() {
            if !batched(i) {
                jobs.iter_mut().for_each(|j| j.push(x.view()));
                continue;
            }
            if x.ndim() == 0 || x.shape()[0] != total {
                bail!(
                    "graph input {i} has shape {:?}, expected a batch of {total} first",
                    x.shape()
                );
            }
            let mut start = 0;
            for (job, &size) in jobs.iter_mut().zip(&sizes) {
                job.push(x.slice_axis(ndarray::Axis(0), (start..start + size).into()));
                start += size;
            }
        }
        let (first, rest) = self.parts[..jobs.len()].split_at_mut(1);
        if rest.is_empty() {
            return Ok(vec![first[0].run(&jobs[0])?]);
        }
        std::thread::scope(|s| {
            let handles: Vec<_> = rest
                .iter_mut()
                .zip(&jobs[1..])
                .map(|(rt, job)| s.spawn(move || rt.run(job)))
                .collect();
            let mut outs = vec![first[0].run(&jobs[0])?];
            for h in handles {
                outs.push(
                    h.join()
                        .map_err(|_| anyhow!("a runtime thread panicked"))??,
                );
            }
            Ok(outs)
        })
    }
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
        assert_eq!(split_plan(128, 1), (vec![128], 1));
        assert_eq!(split_plan(128, 2), (vec![64, 64], 1));
        assert_eq!(split_plan(37, 2), (vec![19, 18], 1));
        assert_eq!(split_plan(128, 3), (vec![43, 43, 42], 1));
        // Too small to be worth cutting: whole, on the intra-op threads.
        assert_eq!(split_plan(15, 2), (vec![15], 2));
        // No part below MIN_PART.
        assert_eq!(split_plan(20, 8), (vec![10, 10], 4));
        for (b, t) in [(128, 2), (100, 3), (16, 2), (1000, 7)] {
            let (sizes, _) = split_plan(b, t);
            assert_eq!(sizes.iter().sum::<usize>(), b);
            assert!(sizes.iter().all(|s| *s >= MIN_PART));
        }
    }
}
