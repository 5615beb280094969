//! A classifier ready to score batches: the wrapped model (raw input in, logits out) on
//! one runtime, with the batching that the model's declared shape demands.

use anyhow::{bail, Result};
use ndarray::{Array2, ArrayViewD, IxDyn};

use crate::model::OnnxModel;
use crate::runtime::{
    first_rows, unless_out_of_memory, Join, OrtLocator, RuntimeChoice, Split, StepMode,
};
use crate::spec::InputSpec;

/// How to open a classifier.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub runtime: RuntimeChoice,
    pub threads: usize,
    /// Examples per run for models with a dynamic batch dimension.
    pub batch_size: usize,
    pub ort: OrtLocator,
    /// How attacks' steps run (`--step-loop`); `None`: [`StepMode::default_for`] the
    /// device.
    pub step_loop: Option<StepMode>,
}

impl RunOptions {
    /// How attacks' steps run: as asked, else the device's default; `Bound` is `Graph`
    /// where ONNX Runtime does not run the model.
    pub fn step_mode(&self) -> StepMode {
        self.step_loop
            .unwrap_or_else(|| StepMode::default_for(&self.ort))
            .on(self.runtime, &self.ort)
    }
}

pub struct Classifier {
    /// The model's sessions: one per thread when its batch is free (runs cut over them).
    runtime: Split,
    /// Examples per runtime call (the model's fixed batch, or the chosen batch size).
    batch: usize,
    example_shape: Vec<usize>,
    num_classes: usize,
    batch_freed: bool,
    /// Whether runs may use fewer examples than `batch` (see [`bucket`]).
    dynamic: bool,
    /// Reused input buffer, `batch * example_len` values.
    buffer: Vec<f32>,
}

impl Classifier {
    /// Opens `model` behind the preprocessing of `spec`, for examples of `example_shape`.
    pub fn open(
        model: &OnnxModel,
        spec: &InputSpec,
        example_shape: &[usize],
        opts: &RunOptions,
    ) -> Result<Classifier> {
        if opts.batch_size == 0 {
            bail!("--batch-size must be at least 1");
        }
        let wrapped = spec.wrap(model)?;
        let open = |proto: &crate::model::pb::ModelProto, free: bool| {
            Split::open_free(
                opts.runtime,
                &prost::Message::encode_to_vec(proto),
                opts.threads,
                free,
                &opts.ort,
            )
        };
        let batch = spec.fixed_batch().unwrap_or(opts.batch_size);
        let dynamic = spec.fixed_batch().is_none();
        let mut c = Classifier::with_runtime(open(&wrapped, dynamic)?, batch, example_shape)?;
        c.dynamic = dynamic;
        if c.batch < opts.batch_size {
            if let Some(freed) =
                c.try_free_batch(&wrapped, spec, opts.batch_size, &|p| open(p, true))?
            {
                c = freed;
            }
        }
        if c.num_classes < 2 {
            bail!(
                "the model's first output has {} value(s) per example; harden needs a classifier with at least 2 classes",
                c.num_classes
            );
        }
        Ok(c)
    }

    /// Wraps a runtime; the number of classes is read from one run on zeros (which also
    /// checks that the model runs at all).
    fn with_runtime(runtime: Split, batch: usize, example_shape: &[usize]) -> Result<Classifier> {
        let example_len: usize = example_shape.iter().product();
        let mut c = Classifier {
            runtime,
            batch,
            example_shape: example_shape.to_vec(),
            num_classes: 0,
            batch_freed: false,
            dynamic: false,
            buffer: Vec::with_capacity(batch * example_len),
        };
        c.num_classes = c.run_padded(&vec![0.0f32; example_len], 1)?.ncols();
        Ok(c)
    }

    /// The model with its fixed batch (usually 1) made dynamic, run `batch_size` examples
    /// at a time, when that gives the same outputs as `self` on a random probe. A model
    /// that does not run so stays at its batch; running out of memory at `batch_size` is
    /// an error (not a silent fall back to a run per example).
    fn try_free_batch(
        &mut self,
        wrapped: &crate::model::pb::ModelProto,
        spec: &InputSpec,
        batch_size: usize,
        open: &dyn Fn(&crate::model::pb::ModelProto) -> Result<Split>,
    ) -> Result<Option<Classifier>> {
        let Some(free) = crate::model::free_batch(wrapped, &spec.input_name) else {
            return Ok(None);
        };
        let opened =
            open(&free).and_then(|r| Classifier::with_runtime(r, batch_size, &self.example_shape));
        let Ok(mut candidate) = unless_out_of_memory(opened)? else {
            return Ok(None);
        };
        let mut rng = crate::rng::Rng::new(0xBA7C);
        let probe: Vec<f32> = (0..3 * self.batch * self.example_len())
            .map(|_| rng.range(spec.range.0, spec.range.1))
            .collect();
        let a = self.logits(&probe)?;
        let Ok(b) = unless_out_of_memory(candidate.logits(&probe))? else {
            return Ok(None);
        };
        let scale = a.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let agree = a.shape() == b.shape()
            && a.iter()
                .zip(b.iter())
                .all(|(x, y)| (x - y).abs() <= 1e-4 * scale);
        candidate.batch_freed = true;
        candidate.dynamic = true;
        Ok(agree.then_some(candidate))
    }

    /// Whether runs may take fewer examples than [`Classifier::batch`]: the model's batch
    /// dimension is free (declared so, or made so by `model::free_batch`).
    pub fn dynamic_batch(&self) -> bool {
        self.dynamic
    }

    /// Whether a fixed batch dimension was made dynamic (see `model::free_batch`).
    pub fn batch_freed(&self) -> bool {
        self.batch_freed
    }

    pub fn runtime_name(&self) -> &'static str {
        self.runtime.name()
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    pub fn example_shape(&self) -> &[usize] {
        &self.example_shape
    }

    pub fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }

    /// Examples per runtime call.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Logits (first output, one row per example) for `x`, `n * example_len` values in
    /// the model's raw input space.
    pub fn logits(&mut self, x: &[f32]) -> Result<Array2<f32>> {
        let len = self.example_len();
        let n = x.len() / len;
        let mut rows: Vec<f32> = Vec::with_capacity(n * self.num_classes);
        let mut done = 0;
        while done < n {
            let take = (n - done).min(self.batch);
            let out = self.run_padded(&x[done * len..(done + take) * len], take)?;
            rows.extend(out.iter());
            done += take;
        }
        let cols = self.num_classes.max(1);
        Ok(Array2::from_shape_vec((n, cols), rows)?)
    }

    /// Runs `take <= batch` examples, padded with zeros to a full batch; when the batch
    /// is dynamic, as they are on a runtime that runs any batch as it is (ONNX Runtime:
    /// the last examples an attack still works on, a few dozen of Square's queries, cost
    /// their own size), or padded to the smallest [`bucket`] that holds them on one that
    /// builds a plan per shape (tract; `Runtime::plans_per_shape`).
    fn run_padded(&mut self, x: &[f32], take: usize) -> Result<Array2<f32>> {
        let len = self.example_len();
        let b = if !self.dynamic {
            self.batch
        } else if !self.runtime.plans_per_shape() {
            take
        } else {
            bucket(take, self.batch)
        };
        self.buffer.clear();
        self.buffer.extend_from_slice(x);
        self.buffer.resize(b * len, 0.0);
        let mut shape = vec![b];
        shape.extend(&self.example_shape);
        let view = ArrayViewD::from_shape(IxDyn(&shape), &self.buffer)?;
        let outputs = self.runtime.run(&[view], |_| true, |_| Join::Stack)?;
        let Some(first) = outputs.into_iter().next() else {
            bail!("the model produced no output");
        };
        let total = first.len();
        if first.ndim() == 0 || first.shape()[0] != b || total % b != 0 {
            bail!(
                "the model's first output has shape {:?}, which does not have the batch ({}) first",
                first.shape(),
                b
            );
        }
        let cols = total / b;
        Ok(Array2::from_shape_vec(
            (take, cols),
            first_rows(&first, take)?.into_owned(),
        )?)
    }
}

/// Fails when a logit is NaN or infinite: a model with a broken weight (or one that
/// overflows) gives no meaningful accuracy. Names the examples (numbered from
/// `first_index`) and the outputs.
pub fn check_finite(logits: &Array2<f32>, first_index: usize) -> Result<()> {
    let mut first: Option<(usize, usize, f32)> = None;
    let mut examples = vec![];
    let mut values = 0usize;
    for (i, row) in logits.rows().into_iter().enumerate() {
        let bad = row.iter().filter(|v| !v.is_finite()).count();
        if bad == 0 {
            continue;
        }
        values += bad;
        examples.push(first_index + i);
        if first.is_none() {
            if let Some(j) = row.iter().position(|v| !v.is_finite()) {
                first = Some((first_index + i, j, row[j]));
            }
        }
    }
    let Some((ex, j, v)) = first else {
        return Ok(());
    };
    let shown: Vec<String> = examples.iter().take(8).map(|e| e.to_string()).collect();
    bail!(
        "the model's output is not finite: example {ex} gives {v} at output {j} (of {}); {values} non-finite value(s) in {} of {} examples of this batch (examples {}{}); a NaN or infinite weight, or an overflow inside the model: no accuracy can be measured",
        logits.ncols(),
        examples.len(),
        logits.nrows(),
        shown.join(", "),
        if examples.len() > 8 { ", ..." } else { "" }
    )
}

/// The examples per run for `n <= batch` examples: the smallest of batch, batch/4,
/// batch/16, ... (at least 1) that holds them.
pub fn bucket(n: usize, batch: usize) -> usize {
    let mut b = batch.max(1);
    while b / 4 >= n.max(1) {
        b /= 4;
    }
    b
}

#[cfg(test)]
mod tests {
    #[test]
    fn non_finite_logits_are_named() {
        use ndarray::array;
        super::check_finite(&array![[1.0f32, 2.0], [0.0, -3.0]], 0).unwrap();
        let e = super::check_finite(
            &array![[1.0f32, 2.0], [0.0, f32::NAN], [f32::INFINITY, f32::NAN]],
            10,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("example 11 gives NaN at output 1 (of 2)")
                && e.contains("3 non-finite value(s) in 2 of 3 examples")
                && e.contains("examples 11, 12"),
            "{e}"
        );
    }

    #[test]
    fn buckets() {
        use super::bucket;
        assert_eq!(bucket(128, 128), 128);
        assert_eq!(bucket(33, 128), 128);
        assert_eq!(bucket(32, 128), 32);
        assert_eq!(bucket(9, 128), 32);
        assert_eq!(bucket(8, 128), 8);
        assert_eq!(bucket(2, 128), 2);
        assert_eq!(bucket(1, 128), 2);
        assert_eq!(bucket(1, 1), 1);
        assert_eq!(bucket(3, 5), 5);
    }
}
