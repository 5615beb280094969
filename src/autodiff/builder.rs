//! Emitting ONNX nodes in the form the model's opset expects (attributes became inputs
//! at various opsets), with fresh names and constants.

use std::collections::HashMap;

use anyhow::{bail, Result};

use crate::model::pb;

pub fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 2,
        i: v,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// Accumulates the nodes and constants of a gradient graph.
pub struct Builder {
    pub opset: i64,
    pub nodes: Vec<pb::NodeProto>,
    pub inits: Vec<pb::TensorProto>,
    /// The gradient the last tiling MaxPool rule emitted, so that the rule of a Relu
    /// feeding that MaxPool can re-emit it with the ReLU's mask folded in.
    pub last_pool: Option<PoolGrad>,
    /// The zero-paddings emitted by `pad`: output, then (input, pads), for `sum`.
    pads: HashMap<String, (String, Vec<i64>)>,
    counter: usize,
    prefix: String,
}

/// How many nodes and constants a builder holds (to take back what was emitted since).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    nodes: usize,
    inits: usize,
}

/// A MaxPool's input gradient as emitted: the MaxPool node, the gradient of its output it
/// was built from, its name, and the builder's marks before and after.
pub struct PoolGrad {
    pub pool: pb::NodeProto,
    pub dy: String,
    pub dx: String,
    pub start: Mark,
    pub end: Mark,
}

impl Builder {
    pub fn new(opset: i64, prefix: &str) -> Builder {
        Builder {
            opset,
            nodes: vec![],
            inits: vec![],
            last_pool: None,
            pads: HashMap::new(),
            counter: 0,
            prefix: prefix.to_string(),
        }
    }

    pub fn mark(&self) -> Mark {
        Mark {
            nodes: self.nodes.len(),
            inits: self.inits.len(),
        }
    }

    /// Drops the nodes and constants emitted since `mark`.
    pub fn truncate(&mut self, mark: Mark) {
        self.nodes.truncate(mark.nodes);
        self.inits.truncate(mark.inits);
    }

    pub fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{}{}_{}", self.prefix, hint, self.counter)
    }

    /// Adds a node with one output; returns the output's name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<pb::AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.op_into(op, inputs, attrs, &out);
        out
    }

    /// Adds a node writing `out`.
    pub fn op_into(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
        out: &str,
    ) {
        let name = self.fresh(op);
        self.nodes.push(pb::NodeProto {
            op_type: op.into(),
            name,
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.to_string()],
            attribute: attrs,
            ..Default::default()
        });
    }

    pub fn const_f32(&mut self, dims: &[usize], values: Vec<f32>) -> String {
        let name = self.fresh("cf");
        self.inits.push(pb::TensorProto {
            name: name.clone(),
            dims: dims.iter().map(|d| *d as i64).collect(),
            data_type: 1,
            float_data: values,
            ..Default::default()
        });
        name
    }

    pub fn scalar(&mut self, v: f32) -> String {
        self.const_f32(&[], vec![v])
    }

    pub fn const_i64(&mut self, values: &[i64]) -> String {
        let name = self.fresh("ci");
        self.inits.push(pb::TensorProto {
            name: name.clone(),
            dims: vec![values.len() as i64],
            data_type: 7,
            int64_data: values.to_vec(),
            ..Default::default()
        });
        name
    }

    pub fn reshape(&mut self, x: &str, shape: &[usize]) -> String {
        let s = self.const_i64(&shape.iter().map(|d| *d as i64).collect::<Vec<_>>());
        self.op("Reshape", &[x, &s], vec![])
    }

    pub fn reduce_sum(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        let kd = attr_int("keepdims", keepdims as i64);
        if self.opset >= 13 {
            let a = self.const_i64(axes);
            self.op("ReduceSum", &[x, &a], vec![kd])
        } else {
            self.op("ReduceSum", &[x], vec![attr_ints("axes", axes), kd])
        }
    }

    pub fn reduce_max(&mut self, x: &str, axes: &[i64], keepdims: bool) -> String {
        self.reduce("ReduceMax", x, axes, keepdims)
    }

    /// A Reduce* op other than ReduceSum over `axes`: an attribute before opset 18, an
    /// input from it.
    pub fn reduce(&mut self, op: &str, x: &str, axes: &[i64], keepdims: bool) -> String {
        let kd = attr_int("keepdims", keepdims as i64);
        if self.opset >= 18 {
            let a = self.const_i64(axes);
            self.op(op, &[x, &a], vec![kd])
        } else {
            self.op(op, &[x], vec![attr_ints("axes", axes), kd])
        }
    }

    pub fn transpose(&mut self, x: &str, perm: &[usize]) -> String {
        let p: Vec<i64> = perm.iter().map(|v| *v as i64).collect();
        self.op("Transpose", &[x], vec![attr_ints("perm", &p)])
    }

    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b], vec![])
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.op("Add", &[a, b], vec![])
    }

    pub fn sub(&mut self, a: &str, b: &str) -> String {
        self.op("Sub", &[a, b], vec![])
    }

    pub fn div(&mut self, a: &str, b: &str) -> String {
        self.op("Div", &[a, b], vec![])
    }

    pub fn neg(&mut self, a: &str) -> String {
        self.op("Neg", &[a], vec![])
    }

    /// Boolean to float (1.0 / 0.0).
    pub fn as_float(&mut self, b: &str) -> String {
        self.op("Cast", &[b], vec![attr_int("to", 1)])
    }

    /// `x` where `cond`, else 0, as `x * float(cond)`: ONNX Runtime runs Cast and Mul
    /// together about twice as fast as a Where with a broadcast zero. (Unlike Where, an
    /// infinite or NaN `x` where `cond` is false gives NaN rather than 0.)
    pub fn select(&mut self, cond: &str, x: &str) -> String {
        let m = self.as_float(cond);
        self.mul(x, &m)
    }

    /// `a == b` for floats, from comparisons available at every opset.
    pub fn equal(&mut self, a: &str, b: &str) -> String {
        if self.opset >= 11 {
            return self.op("Equal", &[a, b], vec![]);
        }
        let lt = self.op("Less", &[a, b], vec![]);
        let gt = self.op("Greater", &[a, b], vec![]);
        let ne = self.op("Or", &[&lt, &gt], vec![]);
        self.op("Not", &[&ne], vec![])
    }

    /// Zero-padding of `x` by `pads` (ONNX order: all begins, then all ends).
    pub fn pad(&mut self, x: &str, pads: &[i64]) -> String {
        if pads.iter().all(|p| *p == 0) {
            return x.to_string();
        }
        let out = if self.opset >= 11 {
            let p = self.const_i64(pads);
            self.op("Pad", &[x, &p], vec![])
        } else {
            self.op("Pad", &[x], vec![attr_ints("pads", pads)])
        };
        self.pads
            .insert(out.clone(), (x.to_string(), pads.to_vec()));
        out
    }

    /// The sum of the gradient contributions `parts` to a tensor (of static shape
    /// `shape`, when known). Contributions that are zero-padded pieces of it side by side
    /// along one axis (the rules of Slice and Gather: a tensor cut into q, k and v) are
    /// put together by one Concat, the gaps filled with zeros, instead of a full-size Pad
    /// per piece and a full-size Add per piece but one; their Pad nodes are taken back
    /// unless `held` (a gradient still to be used elsewhere) or read by an emitted node.
    pub fn sum(
        &mut self,
        parts: Vec<String>,
        shape: Option<&[usize]>,
        held: &dyn Fn(&str) -> bool,
    ) -> Option<String> {
        if let Some(joined) = shape.and_then(|s| self.concat_pieces(&parts, s, held)) {
            return Some(joined);
        }
        let mut it = parts.into_iter();
        let first = it.next()?;
        Some(it.fold(first, |acc, p| self.add(&acc, &p)))
    }

    fn concat_pieces(
        &mut self,
        parts: &[String],
        shape: &[usize],
        held: &dyn Fn(&str) -> bool,
    ) -> Option<String> {
        if parts.len() < 2 {
            return None;
        }
        let r = shape.len();
        let pieces: Vec<&(String, Vec<i64>)> = parts
            .iter()
            .map(|p| self.pads.get(p).filter(|(_, pads)| pads.len() == 2 * r))
            .collect::<Option<_>>()?;
        // The one axis along which they are padded (any axis when none is).
        let axis = (0..r)
            .find(|&a| pieces.iter().any(|(_, p)| p[a] != 0 || p[r + a] != 0))
            .unwrap_or(0);
        let off_axis = |p: &[i64]| (0..r).any(|a| a != axis && (p[a] != 0 || p[r + a] != 0));
        if pieces.iter().any(|(_, p)| off_axis(p)) {
            return None;
        }
        let dim = shape[axis] as i64;
        let mut segs: Vec<(i64, i64, String)> = pieces
            .iter()
            .map(|(x, p)| (p[axis], dim - p[r + axis], x.clone()))
            .collect();
        segs.sort_by_key(|s| s.0);
        let mut at = 0;
        for (start, end, _) in &segs {
            if *start < at || end < start {
                return None;
            }
            at = *end;
        }
        let mut inputs = vec![];
        let mut at = 0;
        let gap = |b: &mut Builder, from: i64, to: i64| {
            let mut s = shape.to_vec();
            s[axis] = (to - from) as usize;
            b.const_f32(&s, vec![0.0; s.iter().product()])
        };
        for (start, end, x) in &segs {
            if *start > at {
                inputs.push(gap(self, at, *start));
            }
            inputs.push(x.clone());
            at = *end;
        }
        if at < dim {
            inputs.push(gap(self, at, dim));
        }
        // The Pads no one else reads are taken back. (A rule may pass a gradient on
        // unchanged to several tensors, Add's to both operands.) A MaxPool gradient
        // waiting to be re-emitted by a ReLU's rule counts nodes: it is dropped.
        let read: std::collections::HashSet<&str> = self
            .nodes
            .iter()
            .flat_map(|n| n.input.iter().map(String::as_str))
            .collect();
        let padded: std::collections::HashSet<String> = parts
            .iter()
            .filter(|p| !held(p) && !read.contains(p.as_str()))
            .cloned()
            .collect();
        let is_taken =
            |n: &pb::NodeProto| n.op_type == "Pad" && n.output.iter().any(|o| padded.contains(o));
        // With them their pads constants (read by nothing else).
        let consts: std::collections::HashSet<String> = self
            .nodes
            .iter()
            .filter(|n| is_taken(n))
            .flat_map(|n| n.input.iter().skip(1).cloned())
            .collect();
        self.nodes.retain(|n| !is_taken(n));
        self.inits.retain(|t| !consts.contains(&t.name));
        for p in &padded {
            self.pads.remove(p);
        }
        self.last_pool = None;
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        Some(self.op("Concat", &refs, vec![attr_int("axis", axis as i64)]))
    }

    /// `x[starts..ends]` on `axes`, step 1.
    pub fn slice(&mut self, x: &str, starts: &[i64], ends: &[i64], axes: &[i64]) -> String {
        if self.opset >= 10 {
            let s = self.const_i64(starts);
            let e = self.const_i64(ends);
            let a = self.const_i64(axes);
            self.op("Slice", &[x, &s, &e, &a], vec![])
        } else {
            self.op(
                "Slice",
                &[x],
                vec![
                    attr_ints("starts", starts),
                    attr_ints("ends", ends),
                    attr_ints("axes", axes),
                ],
            )
        }
    }

    /// Nearest-neighbour upsampling of the last two axes of a 4-D tensor by (kh, kw), each
    /// value repeated (Resize, opset 11+).
    pub fn resize_nearest(&mut self, x: &str, kh: usize, kw: usize) -> String {
        let roi = self.const_f32(&[0], vec![]);
        let scales = self.const_f32(&[4], vec![1.0, 1.0, kh as f32, kw as f32]);
        let s = |name: &str, v: &str| pb::AttributeProto {
            name: name.into(),
            r#type: 3,
            s: v.as_bytes().to_vec(),
            ..Default::default()
        };
        self.op(
            "Resize",
            &[x, &roi, &scales],
            vec![
                s("mode", "nearest"),
                s("coordinate_transformation_mode", "asymmetric"),
                s("nearest_mode", "floor"),
            ],
        )
    }

    /// Top-`k` values along the last axis (sorted, largest first).
    pub fn topk_values(&mut self, x: &str, k: usize) -> Result<String> {
        let values = self.fresh("topk_values");
        let indices = self.fresh("topk_indices");
        let name = self.fresh("TopK");
        let (inputs, attrs) = if self.opset >= 10 {
            let kk = self.const_i64(&[k as i64]);
            (vec![x.to_string(), kk], vec![attr_int("axis", -1)])
        } else if self.opset >= 1 {
            (
                vec![x.to_string()],
                vec![attr_int("axis", -1), attr_int("k", k as i64)],
            )
        } else {
            bail!("TopK is not available at opset {}", self.opset);
        };
        self.nodes.push(pb::NodeProto {
            op_type: "TopK".into(),
            name,
            input: inputs,
            output: vec![values.clone(), indices],
            attribute: attrs,
            ..Default::default()
        });
        Ok(values)
    }

    /// Sums `g` (of shape `from`) down to the broadcast source shape `to`.
    pub fn unbroadcast(&mut self, g: &str, from: &[usize], to: &[usize]) -> String {
        if from == to {
            return g.to_string();
        }
        let r = from.len();
        let pad = r - to.len().min(r);
        let axes: Vec<i64> = (0..r)
            .filter(|&i| i < pad || (to[i - pad] == 1 && from[i] != 1))
            .map(|i| i as i64)
            .collect();
        let summed = if axes.is_empty() {
            g.to_string()
        } else {
            self.reduce_sum(g, &axes, true)
        };
        self.reshape(&summed, to)
    }
}
