//! Recognised subgraphs: the chains of elementary ops an exporter writes for one
//! activation or normalisation (GELU as Div, Erf, Add, Mul, Mul; SiLU as Sigmoid and Mul;
//! a hand-written standardisation as ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div),
//! differentiated as one node. Each op's own rule would emit its own elementwise ops on
//! full activation tensors; the subgraph's derivative in closed form, reading the
//! forward's own intermediate tensors, takes fewer passes over them (GELU 7 instead of
//! 10, SiLU 4 instead of 6, a standardisation 5 instead of about 11).
//!
//! A subgraph is recognised only when each of its intermediate tensors is read by the
//! subgraph alone (not by another node, not a graph output), so that no gradient reaches
//! them from elsewhere; its constants (the GELU's 1/sqrt 2, 1 and 0.5, any values) must
//! be constants of the model, never trained parameters. The matchers and the closed
//! forms live with their op family (`elementwise.rs`, `norm.rs`); this file finds them.

use std::collections::HashMap;

use anyhow::Result;

use super::Node;
use crate::autodiff::builder::Builder;
use crate::autodiff::{Consts, Shapes};
use crate::model::pb;

/// The backward rule of a recognised subgraph: the gradients of `f.inputs` (None where
/// `needs` says not needed) from the gradient `dy` of its output.
pub(crate) type FusedRule =
    fn(&mut Builder, &Fused, &str, &[bool], &Shapes) -> Result<Vec<Option<String>>>;

/// A recognised subgraph.
pub(crate) struct Fused {
    /// What it is (for messages and tests): "gelu", "silu", "standardize".
    pub pattern: &'static str,
    /// Its nodes (indices into the graph's nodes); the last one writes its output.
    pub nodes: Vec<usize>,
    /// Its inputs that may need gradients, in the order the rule returns them.
    pub inputs: Vec<String>,
    /// Forward tensors the rule reads (its own meaning per pattern).
    pub tensors: Vec<String>,
    /// Constants the rule reads (its own meaning per pattern).
    pub values: Vec<f32>,
    /// Reduced axes (standardisation).
    pub axes: Vec<i64>,
    pub rule: FusedRule,
}

impl Fused {
    /// The root: the node writing the subgraph's output.
    pub fn root(&self) -> usize {
        *self.nodes.last().unwrap_or(&usize::MAX)
    }
}

/// The graph as the matchers see it: who writes each tensor, how often each is read.
pub(crate) struct View<'a, 'c> {
    pub g: &'a pb::GraphProto,
    pub opset: i64,
    pub shapes: &'a Shapes,
    pub consts: &'a Consts<'c>,
    producer: HashMap<&'a str, usize>,
    /// Per tensor, the nodes reading it as an input, once per input slot.
    readers: HashMap<&'a str, Vec<usize>>,
    /// Per tensor, the reads that are not node inputs: subgraphs, graph outputs.
    other_reads: HashMap<String, usize>,
}

impl<'a, 'c> View<'a, 'c> {
    fn new(g: &'a pb::GraphProto, opset: i64, shapes: &'a Shapes, consts: &'a Consts<'c>) -> Self {
        let mut producer = HashMap::new();
        let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut other_reads: HashMap<String, usize> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.as_str(), i);
            }
            for r in n.input.iter().filter(|r| !r.is_empty()) {
                readers.entry(r.as_str()).or_default().push(i);
            }
            if n.attribute
                .iter()
                .any(|a| a.g.is_some() || !a.graphs.is_empty())
            {
                let mut inner = std::collections::HashSet::new();
                for a in &n.attribute {
                    for sub in a.g.iter().chain(a.graphs.iter()) {
                        for m in &sub.node {
                            crate::model::node_reads(m, &mut inner);
                        }
                    }
                }
                for r in inner {
                    *other_reads.entry(r).or_default() += 1;
                }
            }
        }
        for o in &g.output {
            *other_reads.entry(o.name.clone()).or_default() += 1;
        }
        View {
            g,
            opset,
            shapes,
            consts,
            producer,
            readers,
            other_reads,
        }
    }

    pub fn node(&self, i: usize) -> &'a pb::NodeProto {
        &self.g.node[i]
    }

    /// The node writing `t`, if it is a default-domain `op` with one output.
    pub fn made_by(&self, t: &str, op: &str) -> Option<usize> {
        let i = *self.producer.get(t)?;
        let n = &self.g.node[i];
        (n.op_type == op && (n.domain.is_empty() || n.domain == "ai.onnx") && n.output.len() == 1)
            .then_some(i)
    }

    /// How many times `t` is read (node input slots, subgraphs, graph outputs).
    pub fn uses(&self, t: &str) -> usize {
        self.readers.get(t).map_or(0, Vec::len) + self.other_reads.get(t).copied().unwrap_or(0)
    }

    /// The value of a one-element float constant (not a trained parameter).
    pub fn scalar(&self, t: &str) -> Option<f32> {
        match self.consts.f32s(t)?.as_slice() {
            [v] => Some(*v),
            _ => None,
        }
    }

    /// Node `i` as a rule's `Node` (no gradients), to read its attributes and constant
    /// inputs the way the rules do.
    pub fn rule_node(&self, i: usize) -> Node<'a, '_> {
        Node {
            n: &self.g.node[i],
            dy: "",
            dys: &[],
            needs: &[],
            shapes: self.shapes,
            consts: self.consts,
            rounding: Default::default(),
        }
    }

    /// A binary node's other input than `t` (None unless exactly one input is `t`).
    pub fn other(&self, i: usize, t: &str) -> Option<&'a str> {
        match self.g.node[i].input.as_slice() {
            [a, b] if a == t && b != t => Some(b),
            [a, b] if b == t && a != t => Some(a),
            _ => None,
        }
    }

    /// The single node reading `t` (when `t` is read exactly once, by a node).
    pub fn sole_reader(&self, t: &str) -> Option<usize> {
        match (self.uses(t), self.readers.get(t).map(Vec::as_slice)) {
            (1, Some([i])) => Some(*i),
            _ => None,
        }
    }

    /// The nodes reading `t` as an input (a node once per slot).
    pub fn readers(&self, t: &str) -> &[usize] {
        self.readers.get(t).map_or(&[], Vec::as_slice)
    }
}

/// The matchers: each looks at node `i` as the first node of its subgraph.
type Matcher = fn(&View, usize) -> Option<Fused>;

const MATCHERS: &[Matcher] = &[
    super::elementwise::match_gelu_erf,
    super::elementwise::match_silu,
    super::norm::match_standardize,
];

/// The recognised subgraphs of `g`, by root node; no node belongs to two.
pub(crate) fn find_fused(
    g: &pb::GraphProto,
    opset: i64,
    shapes: &Shapes,
    consts: &Consts,
) -> HashMap<usize, Fused> {
    let view = View::new(g, opset, shapes, consts);
    let mut taken = vec![false; g.node.len()];
    let mut out = HashMap::new();
    for i in 0..g.node.len() {
        if taken[i] {
            continue;
        }
        for m in MATCHERS {
            if let Some(f) = m(&view, i) {
                if f.nodes.iter().all(|&j| !taken[j]) {
                    for &j in &f.nodes {
                        taken[j] = true;
                    }
                    out.insert(f.root(), f);
                    break;
                }
            }
        }
    }
    out
}
