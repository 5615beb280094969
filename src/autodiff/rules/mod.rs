//! Backward rules as a registry: given the gradients of a node's outputs, a rule emits
//! nodes that compute the gradients of its inputs. All shapes are static (fixed batch).
//!
//! Each op family has its own file with one function per op and a table `OPS` of
//! [`OpDef`]s (name, class, minimum inputs, rule); [`registry`] chains the tables and is
//! the one list of ops harden handles (`crate::ops` answers questions about it). Adding an
//! op is one function, one line in its family's table, and one finite-difference check in
//! `tests/autodiff.rs` (a test there fails for a differentiable op without one).

use anyhow::{anyhow, bail, Result};

use super::builder::Builder;
use super::{Consts, Rounding, Shapes};
use crate::model::pb;
use crate::ops::OpClass;

mod elementwise;
mod fused;
mod linear;
mod norm;
mod pooling;
mod quant;
mod reduce;
mod shape;

pub(super) use fused::find_fused;

/// Gradients of a node's inputs, by input position (None: not needed or not differentiable).
pub(super) type Grads = Vec<Option<String>>;

/// A backward rule: reads the node and its output gradients from `Node`, writes the input
/// gradients it was asked for (`Node::need`) into `Grads`.
pub(crate) type Rule = fn(&mut Builder, &Node<'_, '_>, &mut Grads) -> Result<()>;

/// One registered op.
pub(crate) struct OpDef {
    pub op: &'static str,
    pub class: OpClass,
    /// Inputs the rule reads (fewer is a malformed node).
    pub min_inputs: usize,
    /// The rule reads the gradients of every output (`Node::dys`), not only the first's;
    /// it runs when any of them is present.
    pub all_outputs: bool,
    pub rule: Rule,
}

impl OpDef {
    /// A differentiable op with `min_inputs` inputs whose rule reads its first output's
    /// gradient.
    pub(crate) const fn diff(op: &'static str, min_inputs: usize, rule: Rule) -> OpDef {
        OpDef {
            op,
            class: OpClass::Differentiable,
            min_inputs,
            all_outputs: false,
            rule,
        }
    }

    /// An op that computes shapes or constants only: no gradient flows through it.
    pub(crate) const fn shape_only(op: &'static str) -> OpDef {
        OpDef {
            op,
            class: OpClass::ShapeOnly,
            min_inputs: 0,
            all_outputs: false,
            rule: no_gradient,
        }
    }

    /// A shape-only op whose rule still passes gradients on where a value flows through
    /// it (Cast of floats, Gather with constant indices).
    pub(crate) const fn shape_only_with(op: &'static str, min_inputs: usize, rule: Rule) -> OpDef {
        OpDef {
            op,
            class: OpClass::ShapeOnly,
            min_inputs,
            all_outputs: false,
            rule,
        }
    }

    /// The same op whose rule reads the gradients of all outputs.
    pub(crate) const fn multi_output(self) -> OpDef {
        OpDef {
            all_outputs: true,
            ..self
        }
    }
}

/// The op families, each with its table.
const FAMILIES: &[&[OpDef]] = &[
    elementwise::OPS,
    linear::OPS,
    pooling::OPS,
    norm::OPS,
    shape::OPS,
    reduce::OPS,
    quant::OPS,
];

/// Every registered op, family by family.
pub(crate) fn registry() -> impl Iterator<Item = &'static OpDef> {
    FAMILIES.iter().flat_map(|f| f.iter())
}

/// The registered op named `op` (default domain).
pub(crate) fn lookup(op: &str) -> Option<&'static OpDef> {
    registry().find(|d| d.op == op)
}

/// A node being differentiated: the node, its outputs' gradients, what is asked for, and
/// the static shapes and constants of the graph.
pub(crate) struct Node<'a, 'c> {
    pub n: &'a pb::NodeProto,
    /// The gradient of the first output ("" when only other outputs have one: rules that
    /// read other outputs are registered with `all_outputs`).
    pub dy: &'a str,
    /// The gradients of all outputs.
    pub dys: &'a [Option<String>],
    needs: &'a [bool],
    pub shapes: &'a Shapes,
    pub consts: &'a Consts<'c>,
    /// How gradients pass through rounding (`quant.rs`).
    pub rounding: Rounding,
}

impl<'a> Node<'a, '_> {
    /// Input `i`'s name ("" when absent).
    pub fn input(&self, i: usize) -> &'a str {
        self.n.input.get(i).map(String::as_str).unwrap_or("")
    }

    /// The first output's name.
    pub fn out(&self) -> &'a str {
        self.n.output.first().map(String::as_str).unwrap_or("")
    }

    /// Whether the gradient of input `i` is asked for.
    pub fn need(&self, i: usize) -> bool {
        self.needs.get(i).copied().unwrap_or(false)
    }

    /// The static shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<&'a Vec<usize>> {
        shape(self.shapes, name)
    }

    pub fn int(&self, name: &str, default: i64) -> i64 {
        int_attr(self.n, name, default)
    }

    pub fn float(&self, name: &str, default: f32) -> f32 {
        float_attr(self.n, name, default)
    }

    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        ints_attr(self.n, name)
    }

    /// A string attribute.
    pub fn string(&self, name: &str) -> Option<String> {
        attr(self.n, name).map(|a| String::from_utf8_lossy(&a.s).to_string())
    }

    /// The integer values of input `i`, which must be a constant (`what` names it in the
    /// error).
    pub fn const_i64s(&self, i: usize, what: &str) -> Result<Vec<i64>> {
        self.consts
            .i64s(self.input(i))
            .ok_or_else(|| anyhow!("{} {what} is not a constant", self.n.op_type))
    }
}

pub(super) fn attr<'a>(n: &'a pb::NodeProto, name: &str) -> Option<&'a pb::AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

pub(super) fn int_attr(n: &pb::NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).map(|a| a.i).unwrap_or(default)
}

pub(super) fn float_attr(n: &pb::NodeProto, name: &str, default: f32) -> f32 {
    attr(n, name).map(|a| a.f).unwrap_or(default)
}

pub(super) fn ints_attr(n: &pb::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

pub(super) fn shape<'a>(shapes: &'a Shapes, name: &str) -> Result<&'a Vec<usize>> {
    shapes
        .get(name)
        .ok_or_else(|| anyhow!("no static shape known for tensor '{name}'"))
}

pub(super) fn norm_axis(axis: i64, rank: usize) -> usize {
    if axis < 0 {
        (axis + rank as i64).max(0) as usize
    } else {
        axis as usize
    }
}

/// The rule of ops through which no gradient flows.
fn no_gradient(_: &mut Builder, _: &Node<'_, '_>, _: &mut Grads) -> Result<()> {
    Ok(())
}

/// Gradients of `n`'s inputs (None where not needed or not differentiable).
pub fn backward(
    b: &mut Builder,
    n: &pb::NodeProto,
    dys: &[Option<String>],
    needs: &[bool],
    shapes: &Shapes,
    consts: &Consts,
    rounding: Rounding,
) -> Result<Grads> {
    let known = (n.domain.is_empty() || n.domain == "ai.onnx")
        .then(|| lookup(&n.op_type))
        .flatten();
    let Some(def) = known else {
        bail!("no backward rule for op {}", n.op_type);
    };
    let first = dys.first().cloned().flatten();
    if first.is_none() && !(def.all_outputs && dys.iter().any(Option::is_some)) {
        return Ok(vec![None; n.input.len()]);
    }
    if n.input.len() < def.min_inputs || n.output.is_empty() {
        bail!(
            "has {} inputs and {} outputs; {} needs at least {} inputs and an output",
            n.input.len(),
            n.output.len(),
            n.op_type,
            def.min_inputs
        );
    }
    let node = Node {
        n,
        dy: first.as_deref().unwrap_or(""),
        dys,
        needs,
        shapes,
        consts,
        rounding,
    };
    let mut g: Grads = vec![None; n.input.len()];
    (def.rule)(b, &node, &mut g)?;
    Ok(g)
}
