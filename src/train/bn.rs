//! `--update-bn`: BatchNormalization statistics recomputed from training data.
//!
//! Training keeps BN statistics frozen (inference mode). With `--update-bn` the running
//! mean and variance of every inference-form BatchNormalization whose statistics are
//! initializers are replaced, after training, by the per-channel mean and (population)
//! variance of its input over training examples, under the trained weights. Layers are
//! recalibrated in graph order, each with the earlier layers already updated, since a
//! layer's input depends on the statistics before it.

use anyhow::{anyhow, Result};
use ndarray::{ArrayD, IxDyn};

use crate::autodiff;
use crate::classifier::RunOptions;
use crate::model::{self, pb};
use crate::runtime;

/// The new (mean, var) initializer values, as updates for the original model.
///
/// `proto` is the model as trained (preprocessing in front, batch free) with the trained
/// weights already set; `x` holds examples in raw input space, `len` values each.
pub fn recompute(
    proto: &pb::ModelProto,
    input: &str,
    example_shape: &[usize],
    x: &[f32],
    batch: usize,
    opts: &RunOptions,
) -> Result<Vec<(String, Vec<f32>)>> {
    let g = proto
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("the model has no graph"))?;
    let inits: std::collections::HashSet<&str> =
        g.initializer.iter().map(|t| t.name.as_str()).collect();
    let layers: Vec<(String, String, String)> = g
        .node
        .iter()
        .filter(|n| {
            n.op_type == "BatchNormalization"
                && n.input.len() >= 5
                && n.output.len() == 1
                && inits.contains(n.input[3].as_str())
                && inits.contains(n.input[4].as_str())
        })
        .map(|n| (n.input[0].clone(), n.input[3].clone(), n.input[4].clone()))
        .collect();
    let mut current = proto.clone();
    let mut updates = vec![];
    for (tensor, mean_name, var_name) in layers {
        let (mut sum, mut sumsq, mut count) = (vec![], vec![], 0f64);
        let taps = std::slice::from_ref(&tensor);
        let shape = (input, example_shape);
        run_taps(&current, shape, taps, x, batch, opts, |take, _, out| {
            let a = out
                .into_iter()
                .next()
                .ok_or_else(|| anyhow!("no output for '{tensor}'"))?;
            let shape = a.shape().to_vec();
            let c = *shape
                .get(1)
                .ok_or_else(|| anyhow!("BatchNormalization input '{tensor}' has rank < 2"))?;
            let inner: usize = shape[2..].iter().product();
            if sum.is_empty() {
                sum = vec![0f64; c];
                sumsq = vec![0f64; c];
            }
            let flat = a
                .as_slice()
                .ok_or_else(|| anyhow!("non-contiguous output"))?;
            for ex in 0..take {
                for ch in 0..c {
                    let base = (ex * c + ch) * inner;
                    for v in &flat[base..base + inner] {
                        let v = *v as f64;
                        sum[ch] += v;
                        sumsq[ch] += v * v;
                    }
                }
            }
            count += (take * inner) as f64;
            Ok(())
        })?;
        let mean: Vec<f32> = sum.iter().map(|s| (s / count) as f32).collect();
        let var: Vec<f32> = sum
            .iter()
            .zip(&sumsq)
            .map(|(s, q)| ((q / count) - (s / count).powi(2)).max(0.0) as f32)
            .collect();
        let up = vec![(mean_name, mean), (var_name, var)];
        model::set_initializers(&mut current, &up)?;
        updates.extend(up);
    }
    Ok(updates)
}

/// Runs the tap graph of `tensors` (`proto` with those intermediate values as outputs, for
/// the input `input` of examples shaped `example_shape`) over the examples `x` in runs of
/// `batch` (at most the number of examples; the last run padded with zeros), and hands
/// each run's example count, run size and outputs to `visit`: the rows past the count are
/// padding.
pub(super) fn run_taps(
    proto: &pb::ModelProto,
    (input, example_shape): (&str, &[usize]),
    tensors: &[String],
    x: &[f32],
    batch: usize,
    opts: &RunOptions,
    mut visit: impl FnMut(usize, usize, Vec<ArrayD<f32>>) -> Result<()>,
) -> Result<()> {
    let len: usize = example_shape.iter().product();
    let n = x.len() / len.max(1);
    let batch = batch.min(n).max(1);
    let tap = autodiff::tap_graph(proto, input, example_shape, batch, tensors)?;
    let mut rt = runtime::open(
        opts.runtime,
        &prost::Message::encode_to_vec(&tap),
        opts.threads,
        &opts.ort,
    )?;
    let mut xs = vec![batch];
    xs.extend(example_shape);
    let mut done = 0;
    while done < n {
        let take = (n - done).min(batch);
        let xb = crate::runtime::padded_rows(x, done, take, batch, len);
        let xa = ArrayD::from_shape_vec(IxDyn(&xs), xb)?;
        visit(take, batch, rt.run(&[xa.view()])?)?;
        done += take;
    }
    Ok(())
}
