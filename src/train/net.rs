//! A model being trained: its trainable parameters held in memory and fed to every graph
//! as inputs (see `autodiff::training_graph`), so updated weights never need a rebuild.
//!
//! Three kinds of graph run here, each opened on first use and kept per (loss, batch):
//! the forward graph (logits), input-gradient graphs (attacks on the current weights) and
//! parameter-gradient graphs (the weight update). [`TrainNet`] is also an attack
//! [`Oracle`], so validation uses the same attacks as `harden audit`.
//!
//! With bound step loops on ONNX Runtime and one device, the weights and the optimiser's
//! moments move into the runtime's memory at the first training step ([`Resident`]);
//! the host copy is brought up to date only when read ([`TrainNet::weights`]).

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use ndarray::{Array2, ArrayD, ArrayViewD, IxDyn};

use crate::attack::{Head, LossGrad, Oracle};
use crate::autodiff::step::{StepJob, StepRule, StepsDone};
use crate::autodiff::{self, LossKind, Wrt};
use crate::classifier::RunOptions;
use crate::model::pb;
use crate::oracle::{head_inputs, open_step_loops};
use crate::runtime::StepMode;
use crate::runtime::{self, first_rows, Join, Runtime, Shared, Split, StepLoops};

use super::optim::Optimizer;
use super::resident::Resident;

/// Step loops by loss kind, step mode, step rule and run size.
type StepKey = (LossKind, StepMode, [u32; 5], usize);

/// What a gradient-graph run gives back.
pub struct GraphOut {
    pub logits: Array2<f32>,
    pub loss: Vec<f32>,
    /// d sum(loss) / dX (zeros for parameter-gradient graphs).
    pub grad: Vec<f32>,
    /// d sum(loss) / d param, in parameter order (empty for input-gradient graphs).
    pub param_grads: Vec<Vec<f32>>,
}

pub struct TrainNet {
    /// The model as trained: preprocessing in front, batch dimension free.
    proto: pb::ModelProto,
    input: String,
    example_shape: Vec<usize>,
    num_classes: usize,
    pub params: Vec<String>,
    /// The host copy of the weights: current unless `host_stale` (read through
    /// [`TrainNet::weights`]).
    values: Vec<ArrayD<f32>>,
    opts: RunOptions,
    /// Examples per forward run (and per run of `Oracle::loss_grad`).
    eval_batch: usize,
    forward: Option<Box<dyn Runtime>>,
    graphs: HashMap<(LossKind, bool, usize), Split>,
    /// Most examples per graph run (see [`runtime::chunk_for`]), found when the first
    /// gradient graph opens.
    pub(crate) chunk: Option<usize>,
    /// How the training attacks' steps run (see [`TrainNet::run_steps`]).
    step_mode: StepMode,
    /// Step graphs (weights as inputs) by loss kind, step rule and run size; `None`
    /// where the model's opset has none.
    step_loops: HashMap<StepKey, Option<StepLoops>>,
    /// Weights and optimiser state in the runtime's memory, once a step ran there.
    resident: Option<Resident>,
    /// Which copies are behind: the host's weights (after resident steps), the resident
    /// weights (after the host's changed), the optimiser's host moments, its resident ones.
    host_stale: bool,
    resident_stale: bool,
    state_host_stale: bool,
    state_resident_stale: bool,
    /// Set when a resident step ran out of memory: the steps run on the host since.
    resident_off: bool,
    /// What the caller should tell the user (runs made smaller after running out of
    /// memory), taken by [`TrainNet::take_notes`].
    notes: Vec<String>,
}

impl TrainNet {
    /// `proto` takes raw input `input` (examples of `example_shape`) with a free batch
    /// dimension; `params` are the float initializers to train.
    pub fn new(
        proto: pb::ModelProto,
        input: &str,
        example_shape: &[usize],
        num_classes: usize,
        params: Vec<String>,
        opts: &RunOptions,
        eval_batch: usize,
    ) -> Result<TrainNet> {
        if params.is_empty() {
            bail!("the model has no trainable weights (no float initializers feeding Conv, Gemm, MatMul, Add, BatchNormalization or PRelu)");
        }
        let g = proto
            .graph
            .as_ref()
            .ok_or_else(|| anyhow!("the model has no graph"))?;
        let mut values = vec![];
        for p in &params {
            let t = g
                .initializer
                .iter()
                .find(|t| &t.name == p)
                .ok_or_else(|| anyhow!("'{p}' is not an initializer of the model"))?;
            let shape: Vec<usize> = t.dims.iter().map(|d| *d as usize).collect();
            let v = crate::model::float_values(t)
                .ok_or_else(|| anyhow!("cannot read the float values of '{p}'"))?;
            values.push(ArrayD::from_shape_vec(IxDyn(&shape), v)?);
        }
        Ok(TrainNet {
            proto,
            input: input.to_string(),
            example_shape: example_shape.to_vec(),
            num_classes,
            params,
            values,
            opts: opts.clone(),
            eval_batch: eval_batch.max(1),
            forward: None,
            graphs: HashMap::new(),
            chunk: None,
            step_mode: opts.step_mode(),
            step_loops: HashMap::new(),
            resident: None,
            host_stale: false,
            resident_stale: false,
            state_host_stale: false,
            state_resident_stale: false,
            resident_off: false,
            notes: vec![],
        })
    }

    /// Sets how the training attacks' steps run (default: [`RunOptions::step_mode`]).
    pub fn set_step_mode(&mut self, mode: StepMode) {
        self.step_mode = mode;
    }

    /// `job`'s attack steps from `x` around `x0` under the loss `kind` (head inputs
    /// `heads`), each as [`crate::attack::Threat::ascend`] then `project` take it, run in
    /// the runtime as a step graph with the current weights (in place when they are held
    /// in the runtime's memory), in the step loops for `x`'s examples (see
    /// [`TrainNet::open_steps`]), again in smaller runs where they run out of memory.
    /// `None` with the step mode `Host` (or a model whose opset has no step graph), for
    /// the caller's loop. The training attack's and (as [`Oracle::run_steps`]) the
    /// validation attack's.
    pub fn steps_of(
        &mut self,
        kind: LossKind,
        heads: &[Vec<f32>],
        x0: &[f32],
        x: &[f32],
        rule: &StepRule,
        job: &StepJob<'_>,
    ) -> Result<Option<StepsDone>> {
        if self.step_mode == StepMode::Host || job.steps == 0 {
            return Ok(None);
        }
        let n = x.len() / self.example_len().max(1);
        self.shrinking(|net| match net.open_steps(kind, rule, n)? {
            Some(key) => net.steps_on(&key, heads, x0, x, job).map(Some),
            None => Ok(None),
        })
    }

    /// The key of the step loops (opened on first use) for `n` examples under the loss
    /// `kind` and `rule`, in runs of the gradient graphs' size and at least one per
    /// thread (or device); `None` where the model's opset has no step graph.
    fn open_steps(&mut self, kind: LossKind, rule: &StepRule, n: usize) -> Result<Option<StepKey>> {
        let chunk = self.chunk();
        let size = runtime::step_run_size(n, chunk, self.opts.ort.parts(self.opts.threads));
        let key = (kind, self.step_mode, rule.key(), size);
        if !self.step_loops.contains_key(&key) {
            crate::oracle::evict_if_full(&mut self.step_loops);
            let g = autodiff::training_graph_wrt(
                &self.proto,
                &self.input,
                &self.example_shape,
                size,
                kind,
                &self.params,
                Wrt::INPUT,
            )?;
            let loops = open_step_loops(
                &g.grad,
                &self.input,
                rule,
                (size, &self.example_shape, self.num_classes),
                &self.opts,
                self.step_mode,
            )?;
            self.step_loops.insert(key, loops);
        }
        Ok(matches!(self.step_loops.get(&key), Some(Some(_))).then_some(key))
    }

    /// `job`'s steps of the loops `key` from `x` around `x0`.
    fn steps_on(
        &mut self,
        key: &StepKey,
        heads: &[Vec<f32>],
        x0: &[f32],
        x: &[f32],
        job: &StepJob<'_>,
    ) -> Result<StepsDone> {
        let Some(Some(loops)) = self.step_loops.get_mut(key) else {
            bail!("no step loops open for these steps");
        };
        // The weights where they are current: bound in place when resident.
        if let (Some(r), true, false) = (&self.resident, loops.bound(), self.resident_stale) {
            return loops.run(x, x0, heads, Shared::Bound(r.weights()), job);
        }
        pull_weights(&mut self.resident, &mut self.values, &mut self.host_stale)?;
        let weights: Vec<ArrayViewD<'_, f32>> = self.values.iter().map(|v| v.view()).collect();
        loops.run(x, x0, heads, Shared::Host(&weights), job)
    }

    /// The current weights (fetched from the runtime's memory when training steps ran
    /// there).
    pub fn weights(&mut self) -> Result<&[ArrayD<f32>]> {
        self.pull()?;
        Ok(&self.values)
    }

    /// The current weights, to change on the host (the resident copy is refreshed before
    /// the next resident step).
    pub fn weights_mut(&mut self) -> Result<&mut [ArrayD<f32>]> {
        self.pull()?;
        self.resident_stale = true;
        Ok(&mut self.values)
    }

    /// Brings the host copy of the weights up to date.
    fn pull(&mut self) -> Result<()> {
        pull_weights(&mut self.resident, &mut self.values, &mut self.host_stale)
    }

    /// Brings `opt`'s moments up to date (from the resident ones after resident steps),
    /// for a checkpoint or a step on the host; `changing`: the host is about to change
    /// them, so the resident ones are refreshed before the next resident step.
    pub fn sync_optimizer(&mut self, opt: &mut Optimizer, changing: bool) -> Result<()> {
        if self.state_host_stale {
            if let Some(r) = self.resident.as_mut() {
                r.get_state(opt)?;
            }
            self.state_host_stale = false;
        }
        if changing {
            self.state_resident_stale = true;
        }
        Ok(())
    }

    /// Takes `opt` as the optimiser of the steps to come (a new one, or one restored
    /// from a checkpoint): its host moments are the current ones.
    pub fn start_optimizer(&mut self, opt: &Optimizer) -> Result<()> {
        self.state_host_stale = false;
        if let Some(r) = self.resident.as_mut() {
            r.adopt(opt)?;
        }
        self.state_resident_stale = false;
        Ok(())
    }

    /// After `e`, a run out of memory: the runs of every graph made half the size of
    /// the one that failed (the graphs opened anew), and a note for the user. `e` itself
    /// where the runs cannot shrink further (one example, or runs already cut to the size
    /// asked for that still failed: [`runtime::split_plan`]'s runs have a least size).
    fn shrink_runs(&mut self, e: anyhow::Error) -> Result<()> {
        let Some(n) = runtime::out_of_memory_in(&e).and_then(|o| o.examples) else {
            return Err(e);
        };
        if n <= 1 || self.chunk.is_some_and(|c| c < n) {
            return Err(e);
        }
        let half = n / 2;
        self.chunk = Some(half);
        self.graphs.clear();
        self.step_loops.clear();
        self.notes.push(format!(
            "onnxruntime ran out of memory running {n} examples at once; training goes on in runs of at most {} (the same batches)",
            half.max(runtime::MIN_PART.min(n - 1))
        ));
        Ok(())
    }

    /// After `e`, a resident step out of memory: the weights and the optimiser's state
    /// (`opt`) back to the host, the runtime's copies dropped, and the steps from now on
    /// on the host (in runs that shrink as they need to).
    pub fn leave_runtime_memory(&mut self, opt: &mut Optimizer, e: &anyhow::Error) -> Result<()> {
        self.pull()?;
        self.sync_optimizer(opt, true)?;
        self.resident = None;
        self.resident_off = true;
        let n = runtime::out_of_memory_in(e).and_then(|o| o.examples);
        self.notes.push(format!(
            "onnxruntime ran out of memory running {} examples at once with the weights held in its memory: they and the optimiser's state go back to the host, where the training steps run on (in smaller runs as needed)",
            n.map_or("the batch's".to_string(), |n| n.to_string())
        ));
        Ok(())
    }

    /// The notes for the user since the last call (see [`TrainNet::shrink_runs`]).
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Whether training steps run with the weights and the optimiser state in the
    /// runtime's memory: bound step loops on ONNX Runtime and one device (on several, the
    /// batch is split and the gradients summed on the host), unless a resident step ran
    /// out of memory. The whole batch is one run (on the CPU, where bound is not the
    /// default, without the cache-sized runs of the host loop).
    pub fn resident(&self) -> bool {
        !self.resident_off
            && self.step_mode == StepMode::Bound
            && runtime::uses_ort(self.opts.runtime, &self.opts.ort)
            && self.opts.ort.device.cuda_ids().len() <= 1
    }

    /// Whether a training step ran resident.
    pub fn ran_resident(&self) -> bool {
        self.resident.is_some()
    }

    /// One training step in the runtime's memory (see [`Resident`]) on the loss `kind`
    /// with head inputs `heads`: the weight gradients on `x`, then `opt`'s step. Returns
    /// the logits and the per-example losses.
    pub fn resident_step(
        &mut self,
        opt: &mut Optimizer,
        kind: LossKind,
        x: &[f32],
        heads: &[Vec<f32>],
    ) -> Result<(Array2<f32>, Vec<f32>)> {
        let b = x.len() / self.example_len().max(1);
        let k = self.num_classes;
        if self.resident.is_none() {
            self.pull()?;
            self.sync_optimizer(opt, false)?;
            let r = Resident::new(&self.opts.ort, self.opts.threads, &self.values, opt)?;
            self.resident = Some(r);
            self.resident_stale = false;
            self.state_resident_stale = false;
        }
        let x_shape = self.x_shape(b);
        let Self {
            resident: Some(r),
            proto,
            input,
            example_shape,
            params,
            ..
        } = self
        else {
            bail!("no resident weights");
        };
        if self.resident_stale {
            r.set_weights(&self.values)?;
            self.resident_stale = false;
        }
        if self.state_resident_stale {
            r.set_state(opt)?;
            self.state_resident_stale = false;
        }
        let graph = || {
            let g = autodiff::training_graph_wrt(
                proto,
                input,
                example_shape,
                b,
                kind,
                params,
                Wrt::PARAMS,
            )?;
            Ok(prost::Message::encode_to_vec(&g.grad.proto))
        };
        let (logits, loss) = r.step(graph, kind, x, &x_shape, heads, opt)?;
        self.host_stale = true;
        self.state_host_stale = true;
        Ok((Array2::from_shape_vec((b, k), logits)?, loss))
    }

    /// Host threads the run options allow (the optimiser's step uses them too).
    pub fn threads(&self) -> usize {
        self.opts.threads
    }

    pub fn shapes(&self) -> Vec<Vec<usize>> {
        self.values.iter().map(|v| v.shape().to_vec()).collect()
    }

    /// The runtime's name ("onnxruntime" or "tract").
    pub fn runtime_name(&mut self) -> Result<&'static str> {
        Ok(self.forward_runtime()?.name())
    }

    fn open(&self, proto: &pb::ModelProto) -> Result<Box<dyn Runtime>> {
        runtime::open(
            self.opts.runtime,
            &prost::Message::encode_to_vec(proto),
            self.opts.threads,
            &self.opts.ort,
        )
    }

    fn forward_runtime(&mut self) -> Result<&mut Box<dyn Runtime>> {
        if self.forward.is_none() {
            let g = autodiff::forward_graph(
                &self.proto,
                &self.input,
                &self.example_shape,
                &self.params,
            )?;
            self.forward = Some(self.open(&g)?);
        }
        self.forward
            .as_mut()
            .ok_or_else(|| anyhow!("no forward graph"))
    }

    /// Most examples per graph run, found once (see [`runtime::chunk_for`]).
    fn chunk(&mut self) -> usize {
        *self.chunk.get_or_insert_with(|| {
            runtime::chunk_for(
                &self.proto,
                &self.input,
                &self.example_shape,
                &self.opts.ort,
            )
        })
    }

    /// Builds (once) the graph for `kind` at `batch`, with parameter gradients or input
    /// gradients.
    pub fn prepare(&mut self, kind: LossKind, param_grads: bool, batch: usize) -> Result<()> {
        let key = (kind, param_grads, batch);
        if !self.graphs.contains_key(&key) {
            let wrt = if param_grads { Wrt::PARAMS } else { Wrt::INPUT };
            let chunk = self.chunk();
            let split = Split::open(
                self.opts.runtime,
                batch,
                self.opts.threads,
                chunk,
                true,
                &self.opts.ort,
                |part| {
                    let g = autodiff::training_graph_wrt(
                        &self.proto,
                        &self.input,
                        &self.example_shape,
                        part,
                        kind,
                        &self.params,
                        wrt,
                    )?;
                    Ok(prost::Message::encode_to_vec(&g.grad.proto))
                },
            )?;
            self.graphs.insert(key, split);
        }
        Ok(())
    }

    fn x_shape(&self, batch: usize) -> Vec<usize> {
        let mut s = vec![batch];
        s.extend(&self.example_shape);
        s
    }

    /// Runs the `kind` graph on exactly `batch` examples `x` with head inputs `heads`
    /// (`batch * k` values each).
    pub fn run_graph(
        &mut self,
        kind: LossKind,
        param_grads: bool,
        batch: usize,
        x: &[f32],
        heads: &[Vec<f32>],
    ) -> Result<GraphOut> {
        self.shrinking(|net| {
            net.prepare(kind, param_grads, batch)?;
            net.pull()?;
            let k = net.num_classes;
            let xa = ArrayD::from_shape_vec(IxDyn(&net.x_shape(batch)), x.to_vec())?;
            let ha: Vec<ArrayD<f32>> = heads
                .iter()
                .map(|h| ArrayD::from_shape_vec(IxDyn(&[batch, k]), h.clone()))
                .collect::<std::result::Result<_, _>>()?;
            let mut views: Vec<ArrayViewD<'_, f32>> = vec![xa.view()];
            views.extend(ha.iter().map(|h| h.view()));
            views.extend(net.values.iter().map(|v| v.view()));
            let split = net
                .graphs
                .get_mut(&(kind, param_grads, batch))
                .ok_or_else(|| anyhow!("no graph for {kind:?}"))?;
            // x and the heads are cut into the parts, the weights go whole to every part; the
            // per-example outputs (logits, loss, input gradient) are stacked, the weight
            // gradients (d sum(loss) / d param) of the parts added.
            let batched = views.len() - net.values.len();
            let out = split.run(
                &views,
                |i| i < batched,
                |j| {
                    if j < 3 {
                        Join::Stack
                    } else {
                        Join::Sum
                    }
                },
            )?;
            let want = 3 + if param_grads { net.params.len() } else { 0 };
            if out.len() != want {
                bail!(
                    "the training graph returned {} outputs, expected {want}",
                    out.len()
                );
            }
            let mut it = out.into_iter();
            let mut next = || it.next().ok_or_else(|| anyhow!("missing graph output"));
            let logits = next()?.into_shape_with_order((batch, k))?;
            let loss = next()?.into_raw_vec_and_offset().0;
            let grad = next()?.into_raw_vec_and_offset().0;
            let mut param_grads_out = vec![];
            if param_grads {
                for _ in 0..net.params.len() {
                    param_grads_out.push(next()?.into_raw_vec_and_offset().0);
                }
            }
            Ok(GraphOut {
                logits,
                loss,
                grad,
                param_grads: param_grads_out,
            })
        })
    }
}

/// Fetches the resident weights into `values` when `stale` says they are behind.
fn pull_weights(
    resident: &mut Option<Resident>,
    values: &mut [ArrayD<f32>],
    stale: &mut bool,
) -> Result<()> {
    if *stale {
        if let Some(r) = resident.as_mut() {
            r.get_weights(values)?;
        }
        *stale = false;
    }
    Ok(())
}

impl Oracle for TrainNet {
    fn num_classes(&self) -> usize {
        self.num_classes
    }

    fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }

    fn logits(&mut self, x: &[f32]) -> Result<Array2<f32>> {
        self.evaluating(|net, b| net.logits_at(x, b))
    }

    fn loss_grad(&mut self, x: &[f32], head: Head<'_>) -> Result<LossGrad> {
        self.evaluating(|net, b| net.loss_grad_at(x, head, b))
    }

    /// The validation attack's steps as the training attack's ([`TrainNet::steps_of`]).
    fn run_steps(
        &mut self,
        x: &[f32],
        x0: &[f32],
        head: Head<'_>,
        rule: &StepRule,
        job: &StepJob<'_>,
    ) -> Result<Option<StepsDone>> {
        let (kind, heads) = head_inputs(head, self.num_classes);
        self.steps_of(kind, &heads, x0, x, rule, job)
    }
}

impl TrainNet {
    /// `f` in batches of the evaluation batch size; where a run runs out of memory,
    /// again in batches of half the size, the sessions opened anew (a session keeps the
    /// memory its arena grew to), and a note for the user.
    fn evaluating<T>(&mut self, mut f: impl FnMut(&mut Self, usize) -> Result<T>) -> Result<T> {
        loop {
            let b = self.eval_batch;
            match f(self, b) {
                Err(e) if runtime::is_out_of_memory(&e) && b > 1 => {
                    self.forward = None;
                    self.graphs.clear();
                    self.eval_batch = b / 2;
                    self.notes.push(format!(
                        "onnxruntime ran out of memory running {b} examples at once; evaluating in runs of {}",
                        b / 2
                    ));
                }
                done => return done,
            }
        }
    }

    /// `f`, again after [`TrainNet::shrink_runs`] each time it runs out of memory.
    fn shrinking<T>(&mut self, mut f: impl FnMut(&mut Self) -> Result<T>) -> Result<T> {
        loop {
            match f(self) {
                Err(e) if runtime::is_out_of_memory(&e) => self.shrink_runs(e)?,
                done => return done,
            }
        }
    }

    /// [`Oracle::logits`] in batches of `b`.
    fn logits_at(&mut self, x: &[f32], b: usize) -> Result<Array2<f32>> {
        let len = self.example_len();
        let n = x.len() / len;
        let k = self.num_classes;
        let xs = self.x_shape(b);
        self.forward_runtime()?;
        self.pull()?;
        let mut rows = Vec::with_capacity(n * k);
        let mut done = 0;
        while done < n {
            let take = (n - done).min(b);
            let xb = runtime::padded_rows(x, done, take, b, len);
            let xa = ArrayD::from_shape_vec(IxDyn(&xs), xb)?;
            let mut views = vec![xa.view()];
            views.extend(self.values.iter().map(|v| v.view()));
            let rt = self
                .forward
                .as_mut()
                .ok_or_else(|| anyhow!("no forward graph"))?;
            let out = rt.run(&views)?;
            let first = out
                .into_iter()
                .next()
                .ok_or_else(|| anyhow!("the model gave no output"))?;
            rows.extend_from_slice(&first_rows(&first, take)?);
            done += take;
        }
        Ok(Array2::from_shape_vec((n, k), rows)?)
    }

    /// [`Oracle::loss_grad`] in batches of `b`.
    fn loss_grad_at(&mut self, x: &[f32], head: Head<'_>, b: usize) -> Result<LossGrad> {
        let k = self.num_classes;
        let len = self.example_len();
        let n = x.len() / len;
        let (kind, extra) = head_inputs(head, k);
        if extra.iter().any(|e| e.len() != n * k) {
            bail!("loss inputs do not match {n} examples of {k} classes");
        }
        let mut logits = Vec::with_capacity(n * k);
        let mut loss = Vec::with_capacity(n);
        let mut grad = Vec::with_capacity(n * len);
        let mut done = 0;
        while done < n {
            let take = (n - done).min(b);
            let xb = runtime::padded_rows(x, done, take, b, len);
            let heads: Vec<Vec<f32>> = extra
                .iter()
                .map(|e| runtime::padded_rows(e, done, take, b, k))
                .collect();
            let out = self.run_graph(kind, false, b, &xb, &heads)?;
            logits.extend(out.logits.iter().take(take * k));
            loss.extend(out.loss.iter().take(take));
            grad.extend(out.grad.iter().take(take * len));
            done += take;
        }
        Ok(LossGrad {
            logits: Array2::from_shape_vec((n, k), logits)?,
            loss,
            grad,
        })
    }
}
