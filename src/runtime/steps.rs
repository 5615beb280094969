//! K attack steps run by a runtime: a step graph (`autodiff::step`) run K times, each
//! run's next iterate the following run's input.
//!
//! On ONNX Runtime with `bound`, the runs go through an `IoBinding`: the clean examples
//! and the loss head's inputs are bound once per run of examples, the iterate ping-pongs
//! between two values allocated by the session's device allocator (CUDA memory on a
//! CUDA device, host memory on the CPU), and only the logits ([B,K]) come back to the
//! host after each step, for the caller to judge which examples are adversarial. An
//! iterate comes back whole only at a step where an example was first judged
//! adversarial (the rows kept), and once at the end: one copy in and one copy out per
//! run of examples, not per step. Otherwise (tract, or `bound` off) each step runs the
//! graph on host arrays, the iterate copied in and out every step.

use anyhow::{anyhow, bail, Result};
use ndarray::{ArrayD, ArrayViewD, IxDyn};

use super::bound::{ort_err, BoundDevice, Tensor};
use super::{device_of, even, open, OrtLocator, Runtime, RuntimeChoice};
use crate::autodiff::step::{StepJob, StepsDone, NEXT, X0};
use crate::autodiff::LOGITS;

/// How an attack's steps run (see `Oracle::run_steps`; `--step-loop`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum StepMode {
    /// The attack's own loop: a gradient graph run per step, the step taken on the host.
    Host,
    /// The step graph (`autodiff::step`), each step run on host arrays (any runtime).
    Graph,
    /// The step graph with the iterate kept in the session's memory between steps
    /// (ONNX Runtime's `IoBinding`; device memory on CUDA): one copy in and one out per
    /// run of examples. On tract, as `Graph`.
    Bound,
}

impl StepMode {
    /// The default on `ort`'s device: `Bound` on a GPU, where the iterate stays on the
    /// device; `Host` on the CPU, where the host loop, which drops examples from the batch
    /// once broken, costs as little or less.
    pub fn default_for(ort: &OrtLocator) -> StepMode {
        if ort.device.cuda_ids().is_empty() {
            StepMode::Host
        } else {
            StepMode::Bound
        }
    }

    /// The mode that runs on `choice`: `Bound` needs ONNX Runtime, and is `Graph` on tract.
    pub fn on(self, choice: RuntimeChoice, ort: &OrtLocator) -> StepMode {
        if self == StepMode::Bound && !super::uses_ort(choice, ort) {
            StepMode::Graph
        } else {
            self
        }
    }
}

/// The step graph's inputs after the loss head's, whole to every run (the weights of a
/// model being trained).
#[derive(Clone, Copy)]
pub enum Shared<'a> {
    /// Host arrays (bound loops copy them in once per run of examples).
    Host(&'a [ArrayViewD<'a, f32>]),
    /// Values already in the sessions' memory (`train::resident`'s weights), bound as
    /// they are: no copy. Bound loops only.
    Bound(&'a [Tensor]),
}

impl Shared<'_> {
    fn reborrow(&self) -> Shared<'_> {
        match *self {
            Shared::Host(v) => Shared::Host(v),
            Shared::Bound(v) => Shared::Bound(v),
        }
    }

    fn len(&self) -> usize {
        match self {
            Shared::Host(v) => v.len(),
            Shared::Bound(v) => v.len(),
        }
    }
}

/// A step graph opened for runs of exactly `size` examples, once per thread (or CUDA
/// device): a batch of any size runs as `size`-example runs spread over them, the last
/// padded with zeros.
pub struct StepLoops {
    size: usize,
    example: Vec<usize>,
    classes: usize,
    loops: Vec<Box<dyn StepLoop>>,
}

impl StepLoops {
    /// Opens the step graph `bytes` (built for runs of `size` examples shaped
    /// `example`, `classes` logits each) on `threads` single-threaded sessions, bound
    /// (see the module documentation) when `bound` and the runtime is ONNX Runtime.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        choice: RuntimeChoice,
        bound: bool,
        bytes: &[u8],
        size: usize,
        example: &[usize],
        classes: usize,
        threads: usize,
        ort: &OrtLocator,
    ) -> Result<StepLoops> {
        let threads = ort.parts(threads);
        let bound = bound && super::uses_ort(choice, ort);
        let loops = (0..threads)
            .map(|i| -> Result<Box<dyn StepLoop>> {
                let loc = device_of(ort, i);
                Ok(if bound {
                    Box::new(BoundLoop::new(bytes, &loc)?)
                } else {
                    Box::new(HostLoop {
                        runtime: open(choice, bytes, 1, &loc)?,
                    })
                })
            })
            .collect::<Result<_>>()?;
        Ok(StepLoops {
            size: size.max(1),
            example: example.to_vec(),
            classes,
            loops,
        })
    }

    /// Whether the runs are bound (ONNX Runtime's `IoBinding`).
    pub fn bound(&self) -> bool {
        self.loops.first().is_some_and(|l| l.bound())
    }

    /// Runs `job.steps` steps from `x` around `x0` (`n` examples each), the loss head's
    /// inputs `heads` (`n * classes` values each) and the graph's inputs after them
    /// (`shared`, whole to every run: the weights of a model being trained): per example,
    /// the first judged adversarial step and its iterate, and the last iterate.
    pub fn run(
        &mut self,
        x: &[f32],
        x0: &[f32],
        heads: &[Vec<f32>],
        shared: Shared<'_>,
        job: &StepJob<'_>,
    ) -> Result<StepsDone> {
        let len: usize = self.example.iter().product();
        let k = self.classes;
        if len == 0 || !x.len().is_multiple_of(len) || x0.len() != x.len() {
            bail!(
                "step runs take examples of {len} values; got {} and {} values",
                x.len(),
                x0.len()
            );
        }
        let n = x.len() / len;
        if heads.iter().any(|h| h.len() != n * k) {
            bail!("the loss inputs do not match {n} examples of {k} classes");
        }
        let size = self.size;
        let runs = n.div_ceil(size).max(1);
        let rows = runs * size;
        let pad = |v: &[f32], per: usize| super::padded_rows(v, 0, n, rows, per);
        let (x, x0) = (pad(x, len), pad(x0, len));
        let heads: Vec<Vec<f32>> = heads.iter().map(|h| pad(h, k)).collect();
        // Consecutive runs per thread.
        let per = even(runs, self.loops.len().min(runs));
        let mut jobs = vec![];
        let mut start = 0;
        for count in per {
            jobs.push((start, count));
            start += count;
        }
        let shape = &self.example;
        let work = |lp: &mut Box<dyn StepLoop>, (first, count): (usize, usize)| {
            (first..first + count)
                .map(|r| {
                    let (a, b) = (r * size, (r + 1) * size);
                    let real = n.saturating_sub(a).min(size);
                    let hs: Vec<&[f32]> = heads.iter().map(|h| &h[a * k..b * k]).collect();
                    let run = Run {
                        x: &x[a * len..b * len],
                        x0: &x0[a * len..b * len],
                        heads: &hs,
                        shared: shared.reborrow(),
                        size,
                        example: shape,
                        classes: k,
                        offset: a,
                        real,
                    };
                    lp.run(&run, job)
                })
                .collect::<Result<Vec<StepsDone>>>()
        };
        let parts: Vec<Vec<StepsDone>> = std::thread::scope(|s| {
            let (mine, rest) = self.loops.split_at_mut(1);
            let handles: Vec<_> = rest
                .iter_mut()
                .zip(jobs.iter().skip(1))
                .map(|(lp, j)| s.spawn(move || work(lp, *j)))
                .collect();
            let mut parts = vec![work(&mut mine[0], jobs[0])?];
            for h in handles {
                parts.push(
                    h.join()
                        .map_err(|_| anyhow!("a step-loop thread panicked"))??,
                );
            }
            Ok::<_, anyhow::Error>(parts)
        })?;
        let mut done = StepsDone::default();
        for d in parts.into_iter().flatten() {
            done.append(d);
        }
        done.first.truncate(n);
        done.kept.truncate(n * len);
        done.last.truncate(n * len);
        Ok(done)
    }
}

/// One run of `size` examples, of which the first `real` are examples (the rest
/// padding), the first being example `offset` of the batch.
struct Run<'a> {
    x: &'a [f32],
    x0: &'a [f32],
    heads: &'a [&'a [f32]],
    shared: Shared<'a>,
    size: usize,
    example: &'a [usize],
    classes: usize,
    offset: usize,
    real: usize,
}

impl Run<'_> {
    fn x_shape(&self) -> Vec<usize> {
        let mut s = vec![self.size];
        s.extend(self.example);
        s
    }

    fn len(&self) -> usize {
        self.example.iter().product()
    }

    /// Judges step `t`'s logits: marks the examples first found adversarial, keeps
    /// their rows of `xt` (the step's input, fetched only when one is found), and says
    /// whether the run is done.
    fn judge(
        &self,
        job: &StepJob<'_>,
        t: usize,
        logits: &[f32],
        done: &mut StepsDone,
        mut xt: impl FnMut() -> Result<Vec<f32>>,
    ) -> Result<bool> {
        let (k, len) = (self.classes, self.len());
        if t >= job.judge_from {
            let found: Vec<usize> = (0..self.real)
                .filter(|&r| {
                    done.first[r].is_none()
                        && (job.judge)(self.offset + r, &logits[r * k..(r + 1) * k])
                })
                .collect();
            if !found.is_empty() {
                let x = xt()?;
                for r in found {
                    done.first[r] = Some(t);
                    done.kept[r * len..(r + 1) * len].copy_from_slice(&x[r * len..(r + 1) * len]);
                }
            }
        }
        Ok(job.stop_early && done.first[..self.real].iter().all(Option::is_some))
    }

    fn start(&self) -> StepsDone {
        StepsDone {
            first: vec![None; self.size],
            kept: vec![0.0; self.size * self.len()],
            last: vec![],
            copies_in: 0,
            copies_out: 0,
        }
    }
}

trait StepLoop: Send {
    fn bound(&self) -> bool;
    fn run(&mut self, run: &Run<'_>, job: &StepJob<'_>) -> Result<StepsDone>;
}

/// Each step on host arrays (any runtime): the iterate copied in and out every step.
struct HostLoop {
    runtime: Box<dyn Runtime>,
}

impl StepLoop for HostLoop {
    fn bound(&self) -> bool {
        false
    }

    fn run(&mut self, run: &Run<'_>, job: &StepJob<'_>) -> Result<StepsDone> {
        let shape = run.x_shape();
        let hshape = [run.size, run.classes];
        let x0 = ArrayViewD::from_shape(IxDyn(&shape), run.x0)?;
        let heads: Vec<ArrayViewD<'_, f32>> = run
            .heads
            .iter()
            .map(|h| ArrayViewD::from_shape(IxDyn(&hshape), h))
            .collect::<std::result::Result<_, _>>()?;
        let mut done = run.start();
        let mut x = ArrayD::from_shape_vec(IxDyn(&shape), run.x.to_vec())?;
        for t in 0..job.steps {
            let mut inputs = vec![x.view(), x0.view()];
            inputs.extend(heads.iter().map(|h| h.view()));
            let Shared::Host(shared) = run.shared else {
                bail!("bound values given to a step loop on host arrays");
            };
            inputs.extend(shared.iter().map(|v| v.view()));
            let mut out = self.runtime.run(&inputs)?;
            done.copies_in += 1;
            done.copies_out += 1;
            if out.len() != 2 {
                bail!("the step graph returned {} outputs, expected 2", out.len());
            }
            let next = out.pop().unwrap_or_default();
            let logits = out.pop().unwrap_or_default();
            let logits = logits
                .as_slice()
                .ok_or_else(|| anyhow!("the step graph's logits are not contiguous"))?;
            let stop = run.judge(job, t, logits, &mut done, || {
                Ok(x.as_slice().map(<[f32]>::to_vec).unwrap_or_default())
            })?;
            x = next;
            if stop {
                break;
            }
        }
        done.last = x.into_raw_vec_and_offset().0;
        Ok(done)
    }
}

/// The steps through ONNX Runtime's `IoBinding` (see the module documentation).
struct BoundLoop {
    session: ort::session::Session,
    /// The device the session runs on (its allocator and copies).
    dev: BoundDevice,
    x_name: String,
    /// The inputs after X and x0: the head's, then the shared ones.
    rest_names: Vec<String>,
}

impl BoundLoop {
    fn new(bytes: &[u8], loc: &OrtLocator) -> Result<BoundLoop> {
        let session = super::ort_session(bytes, 1, loc)?;
        let names: Vec<String> = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        if names.len() < 2 || names[1] != X0 {
            bail!("not a step graph: inputs {names:?}");
        }
        let outs: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        if outs != [LOGITS, NEXT] {
            bail!("not a step graph: outputs {outs:?}");
        }
        Ok(BoundLoop {
            dev: BoundDevice::new(loc)?,
            x_name: names[0].clone(),
            rest_names: names[2..].to_vec(),
            session,
        })
    }
}

impl StepLoop for BoundLoop {
    fn bound(&self) -> bool {
        true
    }

    fn run(&mut self, run: &Run<'_>, job: &StepJob<'_>) -> Result<StepsDone> {
        super::simulated_failure(run.size)?;
        let shape = run.x_shape();
        let host = BoundDevice::host_input;
        let cuda = self.dev.is_cuda();
        let session = &mut self.session;
        let mut binding = session.create_binding().map_err(ort_err("binding"))?;
        let mut done = run.start();
        // Bound once: the clean examples and the head's inputs (copied to the device
        // here on CUDA), and the first iterate.
        binding
            .bind_input(X0, &host(run.x0, &shape)?)
            .map_err(ort_err("binding x0"))?;
        if self.rest_names.len() != run.heads.len() + run.shared.len() {
            bail!(
                "the step graph takes {} inputs after x0, given {}",
                self.rest_names.len(),
                run.heads.len() + run.shared.len()
            );
        }
        let (head_names, shared_names) = self.rest_names.split_at(run.heads.len());
        for (name, h) in head_names.iter().zip(run.heads) {
            binding
                .bind_input(name.as_str(), &host(h, &[run.size, run.classes])?)
                .map_err(ort_err("binding a loss input"))?;
        }
        match run.shared {
            Shared::Host(values) => {
                for (name, v) in shared_names.iter().zip(values) {
                    let t = Tensor::from_array(v.to_owned()).map_err(ort_err("a shared input"))?;
                    binding
                        .bind_input(name.as_str(), &t)
                        .map_err(ort_err("binding a shared input"))?;
                }
            }
            Shared::Bound(values) => {
                for (name, t) in shared_names.iter().zip(values) {
                    binding
                        .bind_input(name.as_str(), t)
                        .map_err(ort_err("binding a shared input"))?;
                }
            }
        }
        binding
            .bind_input(self.x_name.as_str(), &host(run.x, &shape)?)
            .map_err(ort_err("binding x"))?;
        if cuda {
            // The host values bound above are copied to the device asynchronously.
            binding
                .synchronize_inputs()
                .map_err(ort_err("synchronising the inputs"))?;
        }
        done.copies_in += 1;
        // The iterates' two values on the session's device; the logits on the host.
        let mut bufs = [self.dev.alloc(&shape)?, self.dev.alloc(&shape)?];
        let mut logits = BoundDevice::host(&[run.size, run.classes])?;
        binding
            .bind_output(LOGITS, &mut logits)
            .map_err(ort_err("binding logits"))?;
        // Step t writes bufs[t % 2] from bufs[(t + 1) % 2] (from the host x at step 0).
        let mut last_out = None;
        for t in 0..job.steps {
            let (o, i) = (t % 2, (t + 1) % 2);
            if t > 0 {
                binding
                    .bind_input(self.x_name.as_str(), &bufs[i])
                    .map_err(ort_err("binding the iterate"))?;
            }
            binding
                .bind_output(NEXT, &mut bufs[o])
                .map_err(ort_err("binding the next iterate"))?;
            session
                .run_binding(&binding)
                .map_err(|e| super::run_failure(&e.to_string(), Some(run.size)))?;
            if cuda {
                binding
                    .synchronize_outputs()
                    .map_err(ort_err("synchronising"))?;
            }
            last_out = Some(o);
            let dev = &self.dev;
            let got = logits
                .try_extract_tensor()
                .map_err(ort_err("reading the logits"))?
                .1;
            let stop = run.judge(job, t, got, &mut done, || {
                if t == 0 {
                    return Ok(run.x.to_vec());
                }
                dev.download(&bufs[i])
            })?;
            if t > 0 && done.first.contains(&Some(t)) {
                done.copies_out += 1;
            }
            if stop {
                break;
            }
        }
        // Nothing of this run stays bound once it returns.
        binding.clear();
        done.last = match last_out {
            Some(o) => self.dev.download(&bufs[o])?,
            None => run.x.to_vec(),
        };
        done.copies_out += 1;
        Ok(done)
    }
}
