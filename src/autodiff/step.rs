//! The attack step as a graph: a gradient graph extended with PGD's step, so that a
//! K-step attack is K runs of one graph, each taking the iterate the previous one
//! returned (bound on the device by [`crate::runtime::StepLoops`], no host round trip).
//!
//! [`step_graph`] takes a gradient graph ([`super::gradient_graph`]) and returns a graph
//! with inputs X (the iterate x_t), `harden_x0` (the clean examples, shaped like X), then
//! the loss head's inputs as the gradient graph takes them, and outputs `harden_logits`
//! (the logits of x_t, [B,K]) and `harden_next`, the next iterate, computed exactly as
//! [`crate::attack::Threat::ascend`] then [`crate::attack::Threat::project`] do on the
//! host:
//!
//! - Linf: x' = clip(clip(x + alpha * sign(g), x0 - eps, x0 + eps), lo, hi), sign(0) =
//!   sign(NaN) = 0. Every op is one float32 operation in the host's order, so x' is the
//!   host's bit for bit given the same gradient.
//! - L2: x + alpha * g / max(||g||, 1e-12), then, where ||x - x0|| > eps,
//!   x0 + (x - x0) * (eps / ||x - x0||), then clip to [lo, hi]. The norms are ReduceSums,
//!   whose summation order is not the host's sequential one: x' is within a few ulps of
//!   the host's.
//!
//! Standard `ai.onnx` ops only (Greater, Less, Cast, Mul, Add, Sub, Max, Min, ReduceSum,
//! Sqrt, Div, Where), in the model's opset (8 and up for Linf, 9 and up for L2), so
//! ONNX Runtime and tract both run it.

use anyhow::{anyhow, bail, Result};

use super::builder::Builder;
use super::{GradGraph, GRAD, LOGITS, LOSS};
use crate::attack::{Norm, Threat};
use crate::model::{self, pb, Dim};

/// The clean examples' input of a step graph.
pub const X0: &str = "harden_x0";
/// The next iterate, the step graph's second output.
pub const NEXT: &str = "harden_next";

/// One PGD step: the threat model (norm, eps, range) and the step size.
#[derive(Clone, Copy, Debug)]
pub struct StepRule {
    pub threat: Threat,
    pub alpha: f32,
}

impl StepRule {
    /// A key for caching graphs by rule: the norm, then the floats' bits.
    pub fn key(&self) -> [u32; 5] {
        let t = &self.threat;
        [
            match t.norm {
                Norm::Linf => 0,
                Norm::L2 => 1,
            },
            t.eps.to_bits(),
            t.range.0.to_bits(),
            t.range.1.to_bits(),
            self.alpha.to_bits(),
        ]
    }
}

/// What a K-step run needs besides its examples.
pub struct StepJob<'a> {
    pub steps: usize,
    /// The first step whose iterate is judged (0 with a random start; PGD does not judge
    /// the clean point, step 0, without one).
    pub judge_from: usize,
    /// Stop a run once all its examples are judged adversarial (their later iterates
    /// could not change the outcome).
    pub stop_early: bool,
    /// Whether example `i` (of the whole batch) is adversarial given its logits row.
    pub judge: &'a (dyn Fn(usize, &[f32]) -> bool + Sync),
}

/// What K steps found, per example: the first step whose iterate was judged adversarial
/// (`first`) and that iterate (the rows of `kept` where `first` is set), and the iterate
/// after the last step run (`last`); `copies_in`/`copies_out` count the iterates (a
/// whole run's) copied from the host to the session and back.
#[derive(Clone, Debug, Default)]
pub struct StepsDone {
    pub first: Vec<Option<usize>>,
    pub kept: Vec<f32>,
    pub last: Vec<f32>,
    pub copies_in: usize,
    pub copies_out: usize,
}

impl StepsDone {
    /// Appends the examples of `other` after these.
    pub fn append(&mut self, other: StepsDone) {
        self.first.extend(other.first);
        self.kept.extend(other.kept);
        self.last.extend(other.last);
        self.copies_in += other.copies_in;
        self.copies_out += other.copies_out;
    }
}

/// The step graph of `grad` (built for the model input `input`) under `rule` (see the
/// module documentation for its inputs and outputs); none when the model's opset is older
/// than the step's ops (8 for Linf, 9 for L2): its attacks step on the host.
pub fn step_graph(
    grad: &GradGraph,
    input: &str,
    rule: &StepRule,
) -> Result<Option<pb::ModelProto>> {
    let opset = model::opset_of(&grad.proto);
    let need = match rule.threat.norm {
        Norm::Linf => 8,
        Norm::L2 => 9,
    };
    if opset < need {
        return Ok(None);
    }
    if !(rule.alpha.is_finite() && rule.alpha > 0.0) {
        bail!("the step size must be positive, got {}", rule.alpha);
    }
    let mut out = grad.proto.clone();
    let g = out
        .graph
        .as_mut()
        .ok_or_else(|| anyhow!("the gradient graph has no graph"))?;
    let x_info = g
        .input
        .iter()
        .find(|v| v.name == input)
        .cloned()
        .ok_or_else(|| anyhow!("the gradient graph has no input '{input}'"))?;
    let x_shape = static_shape(&x_info)
        .ok_or_else(|| anyhow!("the gradient graph's input '{input}' has no static shape"))?;
    if g.output.iter().map(|o| o.name.as_str()).collect::<Vec<_>>() != [LOGITS, LOSS, GRAD] {
        bail!("not an input-gradient graph (outputs {LOGITS}, {LOSS}, {GRAD} expected)");
    }
    let mut b = Builder::new(opset, "harden_s_");
    let t = &rule.threat;
    let (lo, hi) = t.range;
    // Constants of X's rank ([1, 1, ...]): ONNX Runtime 1.31's CPU kernels broadcast a
    // rank-0 or [1] operand against a 4-d tensor through a slow path, 20x the time of a
    // same-rank one (measured: 238 us against 10 us for a Mul on 16x28x28x1).
    let ones = vec![1; x_shape.len()];
    let scalar = |b: &mut Builder, v: f32| b.const_f32(&ones, vec![v]);
    let alpha = scalar(&mut b, rule.alpha);
    let eps = scalar(&mut b, t.eps);
    let zero = scalar(&mut b, 0.0);
    let stepped = match t.norm {
        Norm::Linf => {
            // sign(g) with sign(0) = sign(NaN) = 0, as `attack::sign`.
            let gt = b.op("Greater", &[GRAD, &zero], vec![]);
            let lt = b.op("Less", &[GRAD, &zero], vec![]);
            let pos = b.as_float(&gt);
            let neg = b.as_float(&lt);
            let s = b.sub(&pos, &neg);
            let d = b.mul(&alpha, &s);
            let xs = b.add(input, &d);
            let lo_b = b.sub(X0, &eps);
            let hi_b = b.add(X0, &eps);
            let m = b.op("Max", &[&xs, &lo_b], vec![]);
            b.op("Min", &[&m, &hi_b], vec![])
        }
        Norm::L2 => {
            let axes: Vec<i64> = (1..x_shape.len() as i64).collect();
            let tiny = scalar(&mut b, 1e-12);
            let gg = b.mul(GRAD, GRAD);
            let n2 = b.reduce_sum(&gg, &axes, true);
            let n = b.op("Sqrt", &[&n2], vec![]);
            let n = b.op("Max", &[&n, &tiny], vec![]);
            let ag = b.mul(&alpha, GRAD);
            let d = b.div(&ag, &n);
            let xs = b.add(input, &d);
            // Onto the ball where outside it; points inside are kept as they are.
            let diff = b.sub(&xs, X0);
            let dd = b.mul(&diff, &diff);
            let m2 = b.reduce_sum(&dd, &axes, true);
            let m = b.op("Sqrt", &[&m2], vec![]);
            let outside = b.op("Greater", &[&m, &eps], vec![]);
            let s = b.div(&eps, &m);
            let scaled = b.mul(&diff, &s);
            let onto = b.add(X0, &scaled);
            b.op("Where", &[&outside, &onto, &xs], vec![])
        }
    };
    let lo = scalar(&mut b, lo);
    let hi = scalar(&mut b, hi);
    let m = b.op("Max", &[&stepped, &lo], vec![]);
    b.op_into("Min", &[&m, &hi], vec![], NEXT);
    g.node.extend(b.nodes);
    g.initializer.extend(b.inits);
    let dims: Vec<Dim> = x_shape.iter().map(|d| Dim::Fixed(*d)).collect();
    let at = g.input.iter().position(|v| v.name == input).unwrap_or(0);
    g.input.insert(at + 1, model::float_value_info(X0, &dims));
    let logits = g.output[0].clone();
    g.output = vec![logits, model::float_value_info(NEXT, &dims)];
    Ok(Some(out))
}

/// The static dimensions of a tensor's value info.
fn static_shape(v: &pb::ValueInfoProto) -> Option<Vec<usize>> {
    let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    t.shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match d.value {
            Some(pb::tensor_shape_proto::dimension::Value::DimValue(n)) if n > 0 => {
                Some(n as usize)
            }
            _ => None,
        })
        .collect()
}
