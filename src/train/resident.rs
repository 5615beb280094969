//! Training with the weights and the optimiser state kept in ONNX Runtime's memory (on a
//! CUDA device, its memory): a step runs the weight-gradient graph with the weights
//! bound where they live and the gradients written beside them, then the optimiser step
//! as a graph (`optim_graph`) from those values into a second set (the two sets swap),
//! so that per step only the batch goes in and the logits, the losses and the count of
//! non-finite gradient entries come out. The training attacks' step loops bind the same
//! weights ([`crate::runtime::Shared::Bound`]).
//!
//! The host copy of the weights (`TrainNet`'s values) and the optimiser's moments are
//! fetched only when something on the host needs them: validation, a checkpoint, the
//! end of training. On ONNX Runtime the steps are bit for bit the host's (one session,
//! same graph; the optimiser graph does the host's arithmetic op for op).

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use ndarray::ArrayD;

use crate::autodiff::LossKind;
use crate::runtime::bound::{BoundDevice, BoundGraph, Tensor};
use crate::runtime::OrtLocator;

use super::optim::{Optimizer, OptimizerKind};
use super::optim_graph;

/// Weights, optimiser moments and gradients on one device, and the graphs that step them.
pub struct Resident {
    dev: BoundDevice,
    loc: OrtLocator,
    threads: usize,
    shapes: Vec<Vec<usize>>,
    w: Vec<Tensor>,
    w_next: Vec<Tensor>,
    m: Vec<Tensor>,
    m_next: Vec<Tensor>,
    /// Adam's second moments (empty for SGD).
    v: Vec<Tensor>,
    v_next: Vec<Tensor>,
    g: Vec<Tensor>,
    /// Weight-gradient graphs by loss and batch size, each with the value its
    /// input-gradient output is written to (unused).
    grads: HashMap<(LossKind, usize), (BoundGraph, Tensor)>,
    /// The optimiser's step graph, for the settings it was built for.
    optim: Option<(OptimKey, BoundGraph)>,
}

/// What the optimiser's graph depends on: its kind, momentum and weight decay (bits).
type OptimKey = (OptimizerKind, u32, u32);

fn optim_key(opt: &Optimizer) -> OptimKey {
    (
        opt.cfg.kind,
        opt.cfg.momentum.to_bits(),
        opt.cfg.weight_decay.to_bits(),
    )
}

impl Resident {
    /// Puts `values` (the weights) and `opt`'s moments on the first device of `loc`;
    /// graphs run with `threads` threads.
    pub fn new(
        loc: &OrtLocator,
        threads: usize,
        values: &[ArrayD<f32>],
        opt: &Optimizer,
    ) -> Result<Resident> {
        let dev = BoundDevice::new(loc)?;
        let shapes: Vec<Vec<usize>> = values.iter().map(|v| v.shape().to_vec()).collect();
        let zeros = || -> Result<Vec<Tensor>> { shapes.iter().map(|s| dev.alloc(s)).collect() };
        let adam = opt.cfg.kind == OptimizerKind::Adam;
        let (w, w_next, m, m_next, g) = (zeros()?, zeros()?, zeros()?, zeros()?, zeros()?);
        let (v, v_next) = if adam {
            (zeros()?, zeros()?)
        } else {
            (vec![], vec![])
        };
        let mut r = Resident {
            dev,
            loc: loc.clone(),
            threads,
            shapes,
            w,
            w_next,
            m,
            m_next,
            v,
            v_next,
            g,
            grads: HashMap::new(),
            optim: None,
        };
        r.set_weights(values)?;
        r.set_state(opt)?;
        Ok(r)
    }

    /// The weights where the graphs read them.
    pub fn weights(&self) -> &[Tensor] {
        &self.w
    }

    /// Overwrites the weights with `values` (same shapes).
    pub fn set_weights(&mut self, values: &[ArrayD<f32>]) -> Result<()> {
        if values.len() != self.w.len() {
            bail!(
                "{} weight tensors given, {} held",
                values.len(),
                self.w.len()
            );
        }
        for (t, v) in self.w.iter_mut().zip(values) {
            let v = v
                .as_slice()
                .ok_or_else(|| anyhow!("weights are not contiguous"))?;
            self.dev.write(t, v)?;
        }
        Ok(())
    }

    /// The weights' values, fetched into `values`.
    pub fn get_weights(&mut self, values: &mut [ArrayD<f32>]) -> Result<()> {
        for (t, v) in self.w.iter().zip(values.iter_mut()) {
            let got = self.dev.download(t)?;
            let dst = v
                .as_slice_mut()
                .ok_or_else(|| anyhow!("weights are not contiguous"))?;
            if got.len() != dst.len() {
                bail!("a held weight tensor changed size");
            }
            dst.copy_from_slice(&got);
        }
        Ok(())
    }

    /// Takes `opt` (a new optimiser, or one restored from a checkpoint) as the one to
    /// step: its moments, and its graph where its settings differ.
    pub fn adopt(&mut self, opt: &Optimizer) -> Result<()> {
        let adam = opt.cfg.kind == OptimizerKind::Adam;
        if adam == self.v.is_empty() {
            let alloc = |dev: &BoundDevice| -> Result<Vec<Tensor>> {
                if adam {
                    self.shapes.iter().map(|s| dev.alloc(s)).collect()
                } else {
                    Ok(vec![])
                }
            };
            let (v, v_next) = (alloc(&self.dev)?, alloc(&self.dev)?);
            self.v = v;
            self.v_next = v_next;
        }
        if self
            .optim
            .as_ref()
            .is_some_and(|(k, _)| *k != optim_key(opt))
        {
            self.optim = None;
        }
        self.set_state(opt)
    }

    /// Overwrites the moments with `opt`'s.
    pub fn set_state(&mut self, opt: &Optimizer) -> Result<()> {
        if opt.m.len() != self.m.len() || opt.v.len() != self.v.len() {
            bail!("the optimiser's state does not fit the held weights");
        }
        for (t, m) in self.m.iter_mut().zip(&opt.m) {
            self.dev.write(t, m)?;
        }
        for (t, v) in self.v.iter_mut().zip(&opt.v) {
            self.dev.write(t, v)?;
        }
        Ok(())
    }

    /// The moments, fetched into `opt`.
    pub fn get_state(&mut self, opt: &mut Optimizer) -> Result<()> {
        for (t, m) in self.m.iter().zip(opt.m.iter_mut()) {
            *m = self.dev.download(t)?;
        }
        for (t, v) in self.v.iter().zip(opt.v.iter_mut()) {
            *v = self.dev.download(t)?;
        }
        Ok(())
    }

    /// One optimisation step on `x` (`x_shape`, batch first) with the loss head's inputs
    /// `heads` (as many values per example as the model has classes): the weight-gradient graph for this batch
    /// (`graph` gives its bytes the first time), then `opt`'s step as a graph. Returns
    /// the logits and the per-example losses.
    pub fn step(
        &mut self,
        graph: impl FnOnce() -> Result<Vec<u8>>,
        kind: LossKind,
        x: &[f32],
        x_shape: &[usize],
        heads: &[Vec<f32>],
        opt: &mut Optimizer,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        let b = x_shape.first().copied().unwrap_or(0).max(1);
        let Some(k) = heads.first().map(|h| h.len() / b) else {
            bail!("a training step needs the loss head's inputs");
        };
        if !self.grads.contains_key(&(kind, b)) {
            let g = BoundGraph::open(&graph()?, self.threads, &self.loc)?;
            let sink = self.dev.alloc(x_shape)?;
            self.grads.insert((kind, b), (g, sink));
        }
        let (graph, sink) = self
            .grads
            .get_mut(&(kind, b))
            .ok_or_else(|| anyhow!("no weight-gradient graph for {b} examples"))?;
        let names = graph.input_names();
        let outs = graph.output_names();
        let p = self.w.len();
        if names.len() != 1 + heads.len() + p || outs.len() != 3 + p {
            bail!(
                "the weight-gradient graph has {} inputs and {} outputs, expected {} and {}",
                names.len(),
                outs.len(),
                1 + heads.len() + p,
                3 + p
            );
        }
        // The batch and the head go in from the host; the weights are bound in place.
        let xt = BoundDevice::host_input(x, x_shape)?;
        let hts: Vec<Tensor> = heads
            .iter()
            .map(|h| BoundDevice::host_input(h, &[b, k]))
            .collect::<Result<_>>()?;
        let mut inputs: Vec<(&str, &Tensor)> = vec![(names[0].as_str(), &xt)];
        inputs.extend(
            names[1..]
                .iter()
                .map(String::as_str)
                .zip(hts.iter().chain(&self.w)),
        );
        let mut logits = BoundDevice::host(&[b, k])?;
        let mut loss = BoundDevice::host(&[b])?;
        let mut outputs: Vec<(&str, &mut Tensor)> = vec![
            (outs[0].as_str(), &mut logits),
            (outs[1].as_str(), &mut loss),
            (outs[2].as_str(), sink),
        ];
        outputs.extend(outs[3..].iter().map(String::as_str).zip(self.g.iter_mut()));
        graph.run(&inputs, &mut outputs, Some(b))?;
        drop(outputs);

        // The optimiser's step, from (w, m, v) into the second set.
        if self.optim.is_none() {
            let bytes = optim_graph::build(
                opt.cfg.kind,
                opt.cfg.momentum,
                opt.cfg.weight_decay,
                &self.shapes,
                &opt.decay,
            );
            let g = BoundGraph::open(&bytes, self.threads, &self.loc)?;
            self.optim = Some((optim_key(opt), g));
        }
        let (_, optim) = self
            .optim
            .as_mut()
            .ok_or_else(|| anyhow!("no optimiser graph"))?;
        let adam = opt.cfg.kind == OptimizerKind::Adam;
        if self.v.len() != if adam { p } else { 0 } {
            bail!("the held optimiser state is not {:?}'s", opt.cfg.kind);
        }
        let scalars = optim_graph::scalar_inputs(opt.cfg.kind, &opt.next_scalars(), b);
        let scalar_names = optim_graph::scalar_names(opt.cfg.kind);
        let sts: Vec<Tensor> = scalars
            .iter()
            .map(|s| BoundDevice::host_input(&[*s], &[]))
            .collect::<Result<_>>()?;
        let in_names: Vec<[String; 4]> = (0..p).map(optim_graph::param_inputs).collect();
        let out_names: Vec<[String; 3]> = (0..p).map(optim_graph::param_outputs).collect();
        let mut inputs: Vec<(&str, &Tensor)> = vec![];
        for (i, n) in in_names.iter().enumerate() {
            inputs.push((&n[0], &self.w[i]));
            inputs.push((&n[1], &self.g[i]));
            inputs.push((&n[2], &self.m[i]));
            if adam {
                inputs.push((&n[3], &self.v[i]));
            }
        }
        inputs.extend(scalar_names.iter().copied().zip(&sts));
        let mut nonfinite = BoundDevice::host(&[])?;
        let mut outputs: Vec<(&str, &mut Tensor)> = vec![];
        let mut v_next = self.v_next.iter_mut();
        for ((n, w), m) in out_names
            .iter()
            .zip(self.w_next.iter_mut())
            .zip(self.m_next.iter_mut())
        {
            outputs.push((&n[0], w));
            outputs.push((&n[1], m));
            if let Some(v) = v_next.next() {
                outputs.push((&n[2], v));
            }
        }
        outputs.push(("nonfinite", &mut nonfinite));
        optim.run(&inputs, &mut outputs, None)?;
        drop(outputs);
        let bad = nonfinite
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("onnxruntime: reading the optimiser's check: {e}"))?
            .1
            .first()
            .copied()
            .unwrap_or(0.0);
        if bad != 0.0 {
            bail!(super::DIVERGED);
        }
        opt.advance();
        std::mem::swap(&mut self.w, &mut self.w_next);
        std::mem::swap(&mut self.m, &mut self.m_next);
        std::mem::swap(&mut self.v, &mut self.v_next);
        let read = |t: &Tensor| -> Result<Vec<f32>> {
            Ok(t.try_extract_tensor()
                .map_err(|e| anyhow!("onnxruntime: reading an output: {e}"))?
                .1
                .to_vec())
        };
        Ok((read(&logits)?, read(&loss)?))
    }
}
