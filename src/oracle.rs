//! The attacks' view of a model: logits from the plain classifier, loss gradients from
//! gradient graphs (one per loss kind, built on first use, run at a fixed batch with the
//! last chunk padded).

use std::collections::HashMap;

use anyhow::{bail, Result};
use ndarray::{Array2, ArrayD, IxDyn};

use crate::attack::{Head, LossGrad, Oracle};
use crate::autodiff::step::{self, StepJob, StepRule, StepsDone};
use crate::autodiff::{self, LossKind};
use crate::classifier::{Classifier, RunOptions};
use crate::model::{self, pb, OnnxModel};
use crate::runtime::{first_rows, padded_rows, Join, Shared, Split, StepLoops, StepMode};
use crate::spec::InputSpec;

pub struct ModelOracle {
    classifier: Classifier,
    /// The model as the classifier runs it (preprocessing in front, batch maybe freed).
    proto: pb::ModelProto,
    input: String,
    example_shape: Vec<usize>,
    batch: usize,
    opts: RunOptions,
    /// Gradient graphs by loss kind and batch (buckets of `batch` when it is dynamic;
    /// 0 for a graph in fixed-size runs, see `run_size`), each split over the threads
    /// when the batch is free.
    graphs: HashMap<(LossKind, usize), Split>,
    dynamic: bool,
    /// Most examples per graph run (see [`crate::runtime::chunk_for`]), found when the
    /// first gradient graph opens.
    chunk: Option<usize>,
    /// How PGD's steps run ([`Oracle::run_steps`]).
    step_mode: StepMode,
    /// Step graphs by loss kind, mode and step rule ([`StepRule::key`]), in runs of the run
    /// size; `None` where the model's opset has no step graph (the host loop runs).
    step_loops: HashMap<(LossKind, StepMode, [u32; 5]), Option<StepLoops>>,
}

impl ModelOracle {
    pub fn new(
        model: &OnnxModel,
        spec: &InputSpec,
        classifier: Classifier,
        opts: &RunOptions,
    ) -> Result<ModelOracle> {
        let mut proto = spec.wrap(model)?;
        if classifier.batch_freed() {
            if let Some(free) = model::free_batch(&proto, &spec.input_name) {
                proto = free;
            }
        }
        Ok(ModelOracle {
            batch: classifier.batch(),
            dynamic: classifier.dynamic_batch(),
            example_shape: classifier.example_shape().to_vec(),
            classifier,
            proto,
            input: spec.input_name.clone(),
            opts: opts.clone(),
            graphs: HashMap::new(),
            chunk: None,
            step_mode: opts.step_mode(),
            step_loops: HashMap::new(),
        })
    }

    /// Sets how attacks' steps run (default: [`RunOptions::step_mode`]).
    pub fn set_step_mode(&mut self, mode: StepMode) {
        self.step_mode = mode;
    }

    pub fn step_mode(&self) -> StepMode {
        self.step_mode
    }

    pub fn classifier(&mut self) -> &mut Classifier {
        &mut self.classifier
    }

    /// The gradient graph for `kind` at the oracle's batch.
    pub fn graph_proto(&self, kind: LossKind) -> Result<autodiff::GradGraph> {
        self.graph_at(kind, self.batch)
    }

    fn graph_at(&self, kind: LossKind, batch: usize) -> Result<autodiff::GradGraph> {
        autodiff::gradient_graph(&self.proto, &self.input, &self.example_shape, batch, kind)
    }

    /// Builds the gradient graph for `kind` now (errors name an unsupported node).
    pub fn prepare(&mut self, kind: LossKind) -> Result<()> {
        match self.run_size() {
            Some(size) => self.prepare_runs(kind, size),
            None => self.prepare_at(kind, self.batch),
        }
    }

    /// Most examples per graph run (see [`crate::runtime::chunk_for`]), found once.
    fn chunk(&mut self) -> usize {
        *self.chunk.get_or_insert_with(|| {
            crate::runtime::chunk_for(
                &self.proto,
                &self.input,
                &self.example_shape,
                &self.opts.ort,
            )
        })
    }

    /// When the batch is free and a run should hold fewer examples than the batch, the
    /// size of the fixed-size runs gradient graphs run as ([`Split::open_runs`]: a
    /// shrinking attack batch then costs its own size rounded up to a run, not the bucket
    /// that holds it); fewer examples than one run take the bucket of the run size.
    fn run_size(&mut self) -> Option<usize> {
        let chunk = self.chunk();
        (self.dynamic && chunk < self.batch).then_some(chunk)
    }

    /// The graph for `kind` at a fixed `batch` (key `(kind, batch)`).
    fn prepare_at(&mut self, kind: LossKind, batch: usize) -> Result<()> {
        if !self.graphs.contains_key(&(kind, batch)) {
            let chunk = self.chunk();
            let split = Split::open(
                self.opts.runtime,
                batch,
                self.opts.threads,
                chunk,
                self.dynamic,
                &self.opts.ort,
                |part| {
                    Ok(prost::Message::encode_to_vec(
                        &self.graph_at(kind, part)?.proto,
                    ))
                },
            )?;
            self.graphs.insert((kind, batch), split);
        }
        Ok(())
    }

    /// The graph for `kind` in runs of `size` (key `(kind, 0)`).
    fn prepare_runs(&mut self, kind: LossKind, size: usize) -> Result<()> {
        if !self.graphs.contains_key(&(kind, 0)) {
            let split = Split::open_runs(
                self.opts.runtime,
                size,
                self.opts.threads,
                &self.opts.ort,
                |s| {
                    Ok(prost::Message::encode_to_vec(
                        &self.graph_at(kind, s)?.proto,
                    ))
                },
            )?;
            self.graphs.insert((kind, 0), split);
        }
        Ok(())
    }
}

/// The step loops of `grad` (the input-gradient graph of `input`) under `rule`, for runs
/// of `size` examples shaped `example` with `classes` logits, run as `mode` says with
/// `opts`' runtime, threads and device; none where the model's opset has no step graph
/// (its attacks step on the host).
pub(crate) fn open_step_loops(
    grad: &autodiff::GradGraph,
    input: &str,
    rule: &StepRule,
    (size, example, classes): (usize, &[usize], usize),
    opts: &RunOptions,
    mode: StepMode,
) -> Result<Option<StepLoops>> {
    let Some(graph) = step::step_graph(grad, input, rule)? else {
        return Ok(None);
    };
    StepLoops::open(
        opts.runtime,
        mode == StepMode::Bound,
        &prost::Message::encode_to_vec(&graph),
        size,
        example,
        classes,
        opts.threads,
        &opts.ort,
    )
    .map(Some)
}

/// Step loops kept per cache (oracle or model in training) at most: each holds sessions,
/// and on CUDA each session its own memory arena.
pub(crate) const STEP_LOOPS_KEPT: usize = 4;

/// Empties a step-loop cache that is full, so that the loops of rules no longer in use
/// (another eps or step size) do not hold their sessions for the rest of the process.
pub(crate) fn evict_if_full<K, V>(cache: &mut HashMap<K, V>) {
    if cache.len() >= STEP_LOOPS_KEPT {
        cache.clear();
    }
}

/// The loss kind of `head` and the values of its graph inputs (`harden_a`, `harden_b`),
/// `n * k` each.
pub(crate) fn head_inputs(head: Head<'_>, k: usize) -> (LossKind, Vec<Vec<f32>>) {
    match head {
        Head::CrossEntropy { labels } => (LossKind::CrossEntropy, vec![onehot(labels, k)]),
        Head::TargetedCrossEntropy { targets } => {
            (LossKind::TargetedCrossEntropy, vec![onehot(targets, k)])
        }
        Head::Margin { labels } => (LossKind::Margin, vec![onehot(labels, k)]),
        Head::Dlr { labels } => (LossKind::Dlr, vec![onehot(labels, k)]),
        Head::DlrTargeted { labels, targets } => (
            LossKind::DlrTargeted,
            vec![onehot(labels, k), onehot(targets, k)],
        ),
        Head::Kl { probs } => (LossKind::Kl, vec![probs.to_vec()]),
        Head::Linear { coeffs } => (LossKind::Linear, vec![coeffs.to_vec()]),
    }
}

/// One-hot rows for class indices (an index >= k gives a zero row).
pub fn onehot(idx: &[usize], k: usize) -> Vec<f32> {
    let mut v = vec![0.0; idx.len() * k];
    for (i, &c) in idx.iter().enumerate() {
        if c < k {
            v[i * k + c] = 1.0;
        }
    }
    v
}

impl Oracle for ModelOracle {
    fn num_classes(&self) -> usize {
        self.classifier.num_classes()
    }

    fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }

    fn logits(&mut self, x: &[f32]) -> Result<Array2<f32>> {
        self.classifier.logits(x)
    }

    fn run_steps(
        &mut self,
        x: &[f32],
        x0: &[f32],
        head: Head<'_>,
        rule: &StepRule,
        job: &StepJob<'_>,
    ) -> Result<Option<StepsDone>> {
        if self.step_mode == StepMode::Host {
            return Ok(None);
        }
        let k = self.num_classes();
        let (kind, extra) = head_inputs(head, k);
        let key = (kind, self.step_mode, rule.key());
        if !self.step_loops.contains_key(&key) {
            evict_if_full(&mut self.step_loops);
            // Runs of the gradient graphs' size, and at least one per thread (or
            // device) for a full batch.
            let size = if self.dynamic {
                let parts = self.opts.ort.parts(self.opts.threads);
                crate::runtime::step_run_size(self.batch, self.chunk(), parts)
            } else {
                self.batch
            };
            let grad = self.graph_at(kind, size)?;
            let loops = open_step_loops(
                &grad,
                &self.input,
                rule,
                (size, &self.example_shape, k),
                &self.opts,
                self.step_mode,
            )?;
            self.step_loops.insert(key, loops);
        }
        match self.step_loops.get_mut(&key) {
            Some(Some(loops)) => loops.run(x, x0, &extra, Shared::Host(&[]), job).map(Some),
            _ => Ok(None),
        }
    }

    fn loss_grad(&mut self, x: &[f32], head: Head<'_>) -> Result<LossGrad> {
        let k = self.num_classes();
        let len = self.example_len();
        let n = x.len() / len;
        let (kind, extra) = head_inputs(head, k);
        if extra.iter().any(|e| e.len() != n * k) {
            bail!("loss inputs do not match {n} examples of {k} classes");
        }
        let mut logits = Vec::with_capacity(n * k);
        let mut loss = Vec::with_capacity(n);
        let mut grad = Vec::with_capacity(n * len);
        let runs = self.run_size();
        let mut done = 0;
        while done < n {
            let take = (n - done).min(self.batch);
            // In fixed-size runs the split pads the last run; else, and for fewer
            // examples than one run, a small remainder runs in a smaller graph when the
            // batch is free.
            let (b, key) = match runs {
                Some(size) if take >= size => {
                    self.prepare_runs(kind, size)?;
                    (take, (kind, 0))
                }
                _ => {
                    // Fewer examples than one run: the bucket of the run size (or of the
                    // batch) that holds them.
                    let b = match runs {
                        Some(size) => crate::classifier::bucket(take, size),
                        None if self.dynamic => crate::classifier::bucket(take, self.batch),
                        None => self.batch,
                    };
                    self.prepare_at(kind, b)?;
                    (b, (kind, b))
                }
            };
            let mut xshape = vec![b];
            xshape.extend(&self.example_shape);
            let Some(split) = self.graphs.get_mut(&key) else {
                bail!("no gradient graph for {kind:?}");
            };
            let xb = padded_rows(x, done, take, b, len);
            let xa = ArrayD::from_shape_vec(IxDyn(&xshape), xb)?;
            let heads: Vec<ArrayD<f32>> = extra
                .iter()
                .map(|e| ArrayD::from_shape_vec(IxDyn(&[b, k]), padded_rows(e, done, take, b, k)))
                .collect::<std::result::Result<_, _>>()?;
            let mut views = vec![xa.view()];
            views.extend(heads.iter().map(|h| h.view()));
            let out = split.run(&views, |_| true, |_| Join::Stack)?;
            if out.len() != 3 {
                bail!(
                    "the gradient graph returned {} outputs, expected 3",
                    out.len()
                );
            }
            logits.extend_from_slice(&first_rows(&out[0], take)?);
            loss.extend_from_slice(&first_rows(&out[1], take)?);
            grad.extend_from_slice(&first_rows(&out[2], take)?);
            done += take;
        }
        Ok(LossGrad {
            logits: Array2::from_shape_vec((n, k), logits)?,
            loss,
            grad,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{OrtLocator, RuntimeChoice};
    use crate::spec::SpecArgs;
    use crate::testutil::assert_close;

    fn mlp_oracle(chunk: usize) -> ModelOracle {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/mlp.onnx");
        let m = OnnxModel::load(&path).unwrap();
        let spec =
            InputSpec::resolve(&m.classifier_input().unwrap(), &SpecArgs::default()).unwrap();
        let opts = RunOptions {
            runtime: RuntimeChoice::Tract,
            threads: 2,
            batch_size: 32,
            ort: OrtLocator::standard(None, None, None),
            step_loop: None,
        };
        let c = Classifier::open(&m, &spec, &[784], &opts).unwrap();
        let mut o = ModelOracle::new(&m, &spec, c, &opts).unwrap();
        o.chunk = Some(chunk);
        o
    }

    /// Gradient graphs in fixed-size runs (the last one padded) give what graphs at the
    /// batch (padded to buckets) give, for batches that are and are not a multiple of
    /// the run size.
    #[test]
    fn fixed_size_runs_give_the_bucketed_outputs() {
        let mut rng = crate::rng::Rng::new(11);
        let mut whole = mlp_oracle(usize::MAX);
        let mut runs = mlp_oracle(8);
        for n in [37, 3, 2, 16] {
            let x: Vec<f32> = (0..n * 784).map(|_| rng.range(0.0, 1.0)).collect();
            let y: Vec<usize> = (0..n).map(|i| (i * 3) % 10).collect();
            let a = whole
                .loss_grad(&x, Head::CrossEntropy { labels: &y })
                .unwrap();
            let b = runs
                .loss_grad(&x, Head::CrossEntropy { labels: &y })
                .unwrap();
            let close = |u: &[f32], v: &[f32], what: &str| {
                assert_close(u, v, 1e-4, &format!("{what} ({n} examples)"))
            };
            close(
                a.logits.as_slice().unwrap(),
                b.logits.as_slice().unwrap(),
                "logits",
            );
            close(&a.loss, &b.loss, "loss");
            close(&a.grad, &b.grad, "gradient");
        }
        // The runs oracle used one graph in runs of 8 and, for 3 and 2 examples, the
        // buckets of 8 that hold them (8 and 2); the other, buckets of 32.
        let keys = |o: &ModelOracle| {
            let mut k: Vec<usize> = o.graphs.keys().map(|(_, b)| *b).collect();
            k.sort();
            k
        };
        assert_eq!(keys(&runs), vec![0, 2, 8]);
        assert_eq!(keys(&whole), vec![2, 8, 32]);
    }
}
