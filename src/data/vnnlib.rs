//! VNN-COMP `.vnnlib` properties (an SMT-LIB subset) as data.
//!
//! Accepted: `(declare-const X_i Real)` / `(declare-const Y_j Real)`, and `(assert F)`
//! where `F` is built from `and`, `or` and the comparisons `<=`, `>=`, `<`, `>`, `=`
//! (strict ones read as non-strict) between linear terms (`+`, `-`, `*` by a constant,
//! `/` by a constant, numbers, variables). Top-level asserts are combined with AND.
//! Constraints over a single input are box bounds; constraints over outputs form the
//! unsafe region (a disjunction of conjunctions of `sum(c_j * Y_j) + k <= 0`).
//! When box bounds sit inside disjuncts (VNN-COMP 2022+ style, several boxes per file),
//! each distinct box becomes its own [`Property`] carrying the output constraints of its
//! disjuncts. Constraints mixing inputs and outputs, or linking several inputs, are
//! rejected. Each property is one example: x = box centre, label = robust label.

use super::{DataSource, ValueKind};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest number of disjuncts produced when distributing `and` over `or`.
const MAX_DISJUNCTS: usize = 100_000;
/// Deepest nesting of parentheses accepted.
const MAX_DEPTH: usize = 256;

/// `sum(coeffs[k].1 * Y[coeffs[k].0]) + constant <= 0`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearConstraint {
    /// (output index, coefficient), sorted by index, no zero coefficients.
    pub coeffs: Vec<(usize, f64)>,
    pub constant: f64,
}

impl LinearConstraint {
    /// Value of the left-hand side on outputs `y` (NaN if `y` is too short).
    pub fn value(&self, y: &[f32]) -> f64 {
        self.coeffs
            .iter()
            .map(|&(j, c)| c * y.get(j).map_or(f64::NAN, |&v| v as f64))
            .sum::<f64>()
            + self.constant
    }
    /// Whether the constraint holds on `y`.
    pub fn holds(&self, y: &[f32]) -> bool {
        self.value(y) <= 0.0
    }
}

/// One property: an input box and an unsafe output region.
#[derive(Clone, Debug, PartialEq)]
pub struct Property {
    pub n_inputs: usize,
    pub n_outputs: usize,
    pub input_lo: Vec<f64>,
    pub input_hi: Vec<f64>,
    /// Disjunction of conjunctions; an empty conjunction is "always", an empty
    /// disjunction "never".
    pub unsafe_region: Vec<Vec<LinearConstraint>>,
}

/// If `c` is `a*Y_l - a*Y_j <= 0` (a > 0, no constant), returns (l, j).
fn pair(c: &LinearConstraint) -> Option<(usize, usize)> {
    if c.constant != 0.0 || c.coeffs.len() != 2 {
        return None;
    }
    let [(i0, c0), (i1, c1)] = [c.coeffs[0], c.coeffs[1]];
    if c0 + c1 != 0.0 || c0 == 0.0 {
        return None;
    }
    Some(if c0 > 0.0 { (i0, i1) } else { (i1, i0) })
}

impl Property {
    /// The true label L of an untargeted robustness property: every disjunct is exactly
    /// one constraint `Y_j >= Y_L` (j != L) with the same L. `None` otherwise (targeted
    /// properties, ACAS Xu safety properties, ...).
    pub fn robust_label(&self) -> Option<usize> {
        let mut label = None;
        if self.unsafe_region.is_empty() {
            return None;
        }
        for conj in &self.unsafe_region {
            let [c] = conj.as_slice() else {
                return None;
            };
            let (l, _) = pair(c)?;
            if *label.get_or_insert(l) != l || l >= self.n_outputs {
                return None;
            }
        }
        label
    }

    /// The target T of a targeted property: a single conjunction of constraints
    /// `Y_T >= Y_k` (k != T) with the same T, i.e. "T is the top class". `None` otherwise.
    pub fn target_label(&self) -> Option<usize> {
        let [conj] = self.unsafe_region.as_slice() else {
            return None;
        };
        if conj.is_empty() {
            return None;
        }
        let mut target = None;
        for c in conj {
            let (_, t) = pair(c)?;
            if *target.get_or_insert(t) != t || t >= self.n_outputs {
                return None;
            }
        }
        target
    }

    /// Whether outputs `y` lie in the unsafe region.
    pub fn is_unsafe(&self, y: &[f32]) -> bool {
        self.unsafe_region
            .iter()
            .any(|conj| conj.iter().all(|c| c.holds(y)))
    }

    /// Safety margin of outputs `y`: min over disjuncts of max over their constraints of
    /// the constraint value. `> 0` means safe, `<= 0` unsafe (+inf when the region is empty).
    pub fn margin(&self, y: &[f32]) -> f64 {
        self.unsafe_region
            .iter()
            .map(|conj| {
                conj.iter()
                    .map(|c| c.value(y))
                    .fold(f64::NEG_INFINITY, f64::max)
            })
            .fold(f64::INFINITY, f64::min)
    }

    /// Midpoint of the input box.
    pub fn centre(&self) -> Vec<f32> {
        self.input_lo
            .iter()
            .zip(&self.input_hi)
            .map(|(l, h)| (0.5 * (l + h)) as f32)
            .collect()
    }
}

// ---------------------------------------------------------------- parsing

#[derive(Debug)]
enum Sexp<'a> {
    Atom(&'a str, usize),
    List(Vec<Sexp<'a>>, usize),
}

impl Sexp<'_> {
    fn line(&self) -> usize {
        match self {
            Sexp::Atom(_, l) | Sexp::List(_, l) => *l,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    X(usize),
    Y(usize),
}

fn parse_var(s: &str) -> Option<Var> {
    let (kind, idx) = s.split_once('_')?;
    let i: usize = idx.parse().ok()?;
    if idx.starts_with('+') {
        return None;
    }
    match kind {
        "X" => Some(Var::X(i)),
        "Y" => Some(Var::Y(i)),
        _ => None,
    }
}

/// A linear form over X and Y: `sum x + sum y + c`.
#[derive(Clone, Debug, Default)]
struct Lin {
    x: Vec<(usize, f64)>,
    y: Vec<(usize, f64)>,
    c: f64,
}

impl Lin {
    fn scale(&mut self, k: f64) {
        self.x.iter_mut().for_each(|t| t.1 *= k);
        self.y.iter_mut().for_each(|t| t.1 *= k);
        self.c *= k;
    }
    fn add(&mut self, o: Lin) {
        self.x.extend(o.x);
        self.y.extend(o.y);
        self.c += o.c;
    }
    fn is_const(&self) -> bool {
        self.x.is_empty() && self.y.is_empty()
    }
    fn normalise(mut self) -> Lin {
        fn merge(v: &mut Vec<(usize, f64)>) {
            v.sort_by_key(|t| t.0);
            let mut out: Vec<(usize, f64)> = Vec::with_capacity(v.len());
            for &(i, c) in v.iter() {
                match out.last_mut() {
                    Some(last) if last.0 == i => last.1 += c,
                    _ => out.push((i, c)),
                }
            }
            out.retain(|t| t.1 != 0.0);
            *v = out;
        }
        merge(&mut self.x);
        merge(&mut self.y);
        self
    }
}

struct Parser<'a> {
    name: &'a str,
    n_x: usize,
    n_y: usize,
    declared_x: Vec<bool>,
    declared_y: Vec<bool>,
    max_x: Option<usize>,
    max_y: Option<usize>,
    /// Atoms asserted unconditionally.
    global: Vec<Lin>,
    /// Asserts that are genuine disjunctions.
    disj: Vec<Vec<Vec<Lin>>>,
}

type Dnf = Vec<Vec<Lin>>;

impl<'a> Parser<'a> {
    fn err(&self, line: usize, msg: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("data: vnnlib file {} line {line}: {msg}", self.name)
    }

    fn command(&mut self, form: Sexp<'a>) -> Result<()> {
        let line = form.line();
        let Sexp::List(items, _) = form else {
            return Err(self.err(line, "expected a parenthesised command at top level"));
        };
        let head = match items.first() {
            Some(Sexp::Atom(h, _)) => *h,
            _ => return Err(self.err(line, "expected a command name")),
        };
        match head {
            "declare-const" | "declare-fun" => {
                let (name, ty) = match items.as_slice() {
                    [_, Sexp::Atom(n, _), Sexp::Atom(t, _)] => (*n, *t),
                    [_, Sexp::Atom(n, _), Sexp::List(args, _), Sexp::Atom(t, _)]
                        if args.is_empty() =>
                    {
                        (*n, *t)
                    }
                    _ => return Err(self.err(line, "malformed declare-const")),
                };
                if ty != "Real" {
                    return Err(self.err(
                        line,
                        format!("variable {name} has type {ty}; only Real is supported"),
                    ));
                }
                let var = parse_var(name).ok_or_else(|| {
                    self.err(
                        line,
                        format!("unsupported variable name '{name}' (expected X_i or Y_j)"),
                    )
                })?;
                let (v, i) = match var {
                    Var::X(i) => (&mut self.declared_x, i),
                    Var::Y(i) => (&mut self.declared_y, i),
                };
                if i > 10_000_000 {
                    return Err(self.err(line, format!("absurd variable index in {name}")));
                }
                if v.len() <= i {
                    v.resize(i + 1, false);
                }
                if v[i] {
                    return Err(self.err(line, format!("variable {name} declared twice")));
                }
                v[i] = true;
                Ok(())
            }
            "assert" => {
                let [_, f] = items.as_slice() else {
                    return Err(self.err(line, "assert takes exactly one formula"));
                };
                let dnf = self.formula(f)?;
                if dnf.len() == 1 {
                    let mut dnf = dnf;
                    self.global.append(&mut dnf[0]);
                } else {
                    self.disj.push(dnf);
                }
                Ok(())
            }
            "set-logic" | "set-info" | "set-option" | "check-sat" | "get-model" | "exit" => Ok(()),
            other => Err(self.err(line, format!("unsupported command '{other}'"))),
        }
    }

    fn formula(&mut self, f: &Sexp<'a>) -> Result<Dnf> {
        let line = f.line();
        let items = match f {
            Sexp::Atom("true", _) => return Ok(vec![vec![]]),
            Sexp::Atom("false", _) => return Ok(vec![]),
            Sexp::Atom(a, _) => {
                return Err(self.err(line, format!("expected a formula, found '{a}'")))
            }
            Sexp::List(items, _) => items,
        };
        let Some(Sexp::Atom(op, _)) = items.first() else {
            return Err(self.err(line, "expected an operator"));
        };
        let args = &items[1..];
        match *op {
            "and" => {
                let mut acc: Dnf = vec![vec![]];
                for a in args {
                    let d = self.formula(a)?;
                    acc = self.product(acc, d, line)?;
                }
                Ok(acc)
            }
            "or" => {
                let mut acc: Dnf = Vec::new();
                for a in args {
                    acc.extend(self.formula(a)?);
                    if acc.len() > MAX_DISJUNCTS {
                        return Err(self.err(line, format!("more than {MAX_DISJUNCTS} disjuncts")));
                    }
                }
                Ok(acc)
            }
            "<=" | "<" | ">=" | ">" | "=" => {
                if args.len() < 2 {
                    return Err(self.err(line, format!("'{op}' needs at least two terms")));
                }
                let terms = args
                    .iter()
                    .map(|a| self.term(a))
                    .collect::<Result<Vec<Lin>>>()?;
                let mut conj = Vec::new();
                for w in terms.windows(2) {
                    let (a, b) = (w[0].clone(), w[1].clone());
                    let le = |mut l: Lin, mut r: Lin| {
                        r.scale(-1.0);
                        l.add(r);
                        l.normalise()
                    };
                    match *op {
                        "<=" | "<" => conj.push(le(a, b)),
                        ">=" | ">" => conj.push(le(b, a)),
                        _ => {
                            conj.push(le(a.clone(), b.clone()));
                            conj.push(le(b, a));
                        }
                    }
                }
                Ok(vec![conj])
            }
            other => Err(self.err(line, format!("unsupported operator '{other}' in a formula"))),
        }
    }

    fn product(&self, a: Dnf, b: Dnf, line: usize) -> Result<Dnf> {
        if a.len() == 1 {
            let base = a.into_iter().next().unwrap_or_default();
            return Ok(b
                .into_iter()
                .map(|mut d| {
                    let mut c = base.clone();
                    c.append(&mut d);
                    c
                })
                .collect());
        }
        if a.len().saturating_mul(b.len()) > MAX_DISJUNCTS {
            return Err(self.err(
                line,
                format!("formula expands to more than {MAX_DISJUNCTS} disjuncts"),
            ));
        }
        let mut out = Vec::with_capacity(a.len() * b.len());
        for x in &a {
            for y in &b {
                let mut c = x.clone();
                c.extend(y.iter().cloned());
                out.push(c);
            }
        }
        Ok(out)
    }

    fn term(&mut self, t: &Sexp<'a>) -> Result<Lin> {
        let line = t.line();
        match t {
            Sexp::Atom(a, _) => {
                if let Some(v) = parse_var(a) {
                    match v {
                        Var::X(i) => {
                            self.max_x = Some(self.max_x.map_or(i, |m| m.max(i)));
                            Ok(Lin {
                                x: vec![(i, 1.0)],
                                ..Lin::default()
                            })
                        }
                        Var::Y(i) => {
                            self.max_y = Some(self.max_y.map_or(i, |m| m.max(i)));
                            Ok(Lin {
                                y: vec![(i, 1.0)],
                                ..Lin::default()
                            })
                        }
                    }
                } else {
                    let c: f64 = a.parse().map_err(|_| {
                        self.err(line, format!("expected a number or X_i/Y_j, found '{a}'"))
                    })?;
                    if !c.is_finite() {
                        return Err(self.err(line, format!("non-finite number '{a}'")));
                    }
                    Ok(Lin {
                        c,
                        ..Lin::default()
                    })
                }
            }
            Sexp::List(items, _) => {
                let Some(Sexp::Atom(op, _)) = items.first() else {
                    return Err(self.err(line, "expected an arithmetic operator"));
                };
                let mut args = items[1..]
                    .iter()
                    .map(|a| self.term(a))
                    .collect::<Result<Vec<Lin>>>()?;
                if args.is_empty() {
                    return Err(self.err(line, format!("'{op}' without arguments")));
                }
                match *op {
                    "+" => {
                        let mut acc = Lin::default();
                        args.into_iter().for_each(|a| acc.add(a));
                        Ok(acc)
                    }
                    "-" => {
                        let mut it = args.into_iter();
                        let mut acc = it.next().unwrap_or_default();
                        let mut rest = it.peekable();
                        if rest.peek().is_none() {
                            acc.scale(-1.0);
                        }
                        for mut r in rest {
                            r.scale(-1.0);
                            acc.add(r);
                        }
                        Ok(acc)
                    }
                    "*" => {
                        let nonconst = args.iter().filter(|a| !a.is_const()).count();
                        if nonconst > 1 {
                            return Err(self.err(line, "non-linear product of variables"));
                        }
                        let k: f64 = args.iter().filter(|a| a.is_const()).map(|a| a.c).product();
                        let mut acc = match args.iter().position(|a| !a.is_const()) {
                            Some(p) => args.swap_remove(p),
                            None => Lin {
                                c: 1.0,
                                ..Lin::default()
                            },
                        };
                        acc.scale(k);
                        Ok(acc)
                    }
                    "/" => {
                        let mut it = args.into_iter();
                        let mut acc = it.next().unwrap_or_default();
                        for d in it {
                            if !d.is_const() || d.c == 0.0 {
                                return Err(self.err(line, "division by a variable or by zero"));
                            }
                            acc.scale(1.0 / d.c);
                        }
                        Ok(acc)
                    }
                    other => {
                        Err(self.err(line, format!("unsupported arithmetic operator '{other}'")))
                    }
                }
            }
        }
    }
}

/// Reads the S-expressions of `text`, handing each complete top-level form to `f`.
fn for_each_form<'a>(
    text: &'a str,
    name: &str,
    mut f: impl FnMut(Sexp<'a>) -> Result<()>,
) -> Result<()> {
    let b = text.as_bytes();
    let mut i = 0;
    let mut line = 1;
    let mut stack: Vec<(Vec<Sexp<'a>>, usize)> = Vec::new();
    let err = |line: usize, msg: &str| anyhow!("data: vnnlib file {name} line {line}: {msg}");
    while i < b.len() {
        let ch = b[i];
        match ch {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b' ' | b'\t' | b'\r' | 0x0c => i += 1,
            b';' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' => {
                if stack.len() >= MAX_DEPTH {
                    return Err(err(line, "parentheses nested too deeply"));
                }
                stack.push((Vec::new(), line));
                i += 1;
            }
            b')' => {
                let Some((items, l)) = stack.pop() else {
                    return Err(err(line, "unbalanced ')'"));
                };
                let node = Sexp::List(items, l);
                match stack.last_mut() {
                    Some((parent, _)) => parent.push(node),
                    None => f(node)?,
                }
                i += 1;
            }
            _ => {
                let start = i;
                let l0 = line;
                if ch == b'|' || ch == b'"' {
                    i += 1;
                    while i < b.len() && b[i] != ch {
                        if b[i] == b'\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                    if i >= b.len() {
                        return Err(err(l0, "unterminated quoted symbol or string"));
                    }
                    i += 1;
                } else {
                    while i < b.len()
                        && !matches!(
                            b[i],
                            b' ' | b'\t' | b'\r' | b'\n' | b'(' | b')' | b';' | 0x0c
                        )
                    {
                        i += 1;
                    }
                }
                let atom = Sexp::Atom(&text[start..i], l0);
                match stack.last_mut() {
                    Some((parent, _)) => parent.push(atom),
                    None => return Err(err(l0, "expected '(' at top level")),
                }
            }
        }
    }
    if let Some((_, l)) = stack.last() {
        return Err(err(*l, "unbalanced '(' (file ends inside this form)"));
    }
    Ok(())
}

/// Parses vnnlib text; `name` is used in error messages. Returns one property per
/// distinct input box (one for the usual files).
pub fn parse_vnnlib(text: &str, name: &str) -> Result<Vec<Property>> {
    let mut p = Parser {
        name,
        n_x: 0,
        n_y: 0,
        declared_x: Vec::new(),
        declared_y: Vec::new(),
        max_x: None,
        max_y: None,
        global: Vec::new(),
        disj: Vec::new(),
    };
    for_each_form(text, name, |form| p.command(form))?;
    let file_err = |msg: String| anyhow!("data: vnnlib file {name}: {msg}");
    if let Some(i) = p.declared_x.iter().position(|d| !d) {
        return Err(file_err(format!(
            "X_{i} is not declared but X_{} is",
            p.declared_x.len() - 1
        )));
    }
    if let Some(j) = p.declared_y.iter().position(|d| !d) {
        return Err(file_err(format!(
            "Y_{j} is not declared but Y_{} is",
            p.declared_y.len() - 1
        )));
    }
    p.n_x = p.declared_x.len();
    p.n_y = p.declared_y.len();
    if p.n_x == 0 {
        return Err(file_err("declares no input variables X_i".into()));
    }
    if let Some(m) = p.max_x.filter(|&m| m >= p.n_x) {
        return Err(file_err(format!(
            "uses X_{m} but declares only {} inputs",
            p.n_x
        )));
    }
    if let Some(m) = p.max_y.filter(|&m| m >= p.n_y) {
        return Err(file_err(format!(
            "uses Y_{m} but declares only {} outputs",
            p.n_y
        )));
    }
    let (n_x, n_y) = (p.n_x, p.n_y);

    // Split one conjunction into box bounds and output constraints.
    // Returns None when the conjunction is trivially false.
    type Bound = (usize, bool, f64); // (input, is_upper, value)
    let split = |conj: Vec<Lin>| -> Result<Option<(Vec<Bound>, Vec<LinearConstraint>)>> {
        let mut bounds = Vec::new();
        let mut outs = Vec::new();
        for a in conj {
            match (a.x.len(), a.y.is_empty()) {
                (0, true) => {
                    if a.c > 0.0 {
                        return Ok(None);
                    }
                }
                (0, false) => outs.push(LinearConstraint { coeffs: a.y, constant: a.c }),
                (1, true) => {
                    let (i, k) = a.x[0];
                    bounds.push((i, k > 0.0, -a.c / k));
                }
                (_, true) => return Err(file_err("a constraint links several inputs; only box bounds on single inputs are supported".into())),
                (_, false) => return Err(file_err("a constraint mixes inputs and outputs; this is not supported".into())),
            }
        }
        Ok(Some((bounds, outs)))
    };
    let apply = |lo: &mut [f64], hi: &mut [f64], bounds: &[Bound]| {
        for &(i, upper, v) in bounds {
            if upper {
                hi[i] = hi[i].min(v);
            } else {
                lo[i] = lo[i].max(v);
            }
        }
    };
    let check_box = |lo: &[f64], hi: &[f64]| -> Result<()> {
        for i in 0..n_x {
            if lo[i] == f64::NEG_INFINITY {
                return Err(file_err(format!("input X_{i} has no lower bound")));
            }
            if hi[i] == f64::INFINITY {
                return Err(file_err(format!("input X_{i} has no upper bound")));
            }
            if lo[i] > hi[i] {
                return Err(file_err(format!(
                    "input X_{i} has an empty range [{}, {}]",
                    lo[i], hi[i]
                )));
            }
        }
        Ok(())
    };

    let global = std::mem::take(&mut p.global);
    let Some((gbounds, gouts)) = split(global)? else {
        return Err(file_err(
            "its unconditional constraints are contradictory".into(),
        ));
    };
    let mut lo0 = vec![f64::NEG_INFINITY; n_x];
    let mut hi0 = vec![f64::INFINITY; n_x];
    apply(&mut lo0, &mut hi0, &gbounds);

    let mut disjuncts: Dnf = vec![vec![]];
    for d in std::mem::take(&mut p.disj) {
        disjuncts = p.product(disjuncts, d, 0).map_err(|_| {
            file_err(format!(
                "formula expands to more than {MAX_DISJUNCTS} disjuncts"
            ))
        })?;
    }
    // Group disjuncts by their box; key None = the unconditional box.
    type Group = (Option<(Vec<f64>, Vec<f64>)>, Vec<Vec<LinearConstraint>>);
    let mut groups: Vec<Group> = Vec::new();
    let mut index: HashMap<Option<Vec<u64>>, usize> = HashMap::new();
    for conj in disjuncts {
        let Some((bounds, mut outs)) = split(conj)? else {
            continue;
        };
        let mut all = gouts.clone();
        all.append(&mut outs);
        let (key, bx) = if bounds.is_empty() {
            (None, None)
        } else {
            let (mut lo, mut hi) = (lo0.clone(), hi0.clone());
            apply(&mut lo, &mut hi, &bounds);
            let key: Vec<u64> = lo.iter().chain(&hi).map(|v| v.to_bits()).collect();
            (Some(key), Some((lo, hi)))
        };
        match index.get(&key) {
            Some(&g) => groups[g].1.push(all),
            None => {
                index.insert(key, groups.len());
                groups.push((bx, vec![all]));
            }
        }
    }
    if groups.is_empty() {
        // Every disjunct is trivially false: the region is empty, the box is the global one.
        groups.push((None, vec![]));
    }
    let mut props = Vec::with_capacity(groups.len());
    for (bx, region) in groups {
        let (lo, hi) = bx.unwrap_or_else(|| (lo0.clone(), hi0.clone()));
        check_box(&lo, &hi)?;
        props.push(Property {
            n_inputs: n_x,
            n_outputs: n_y,
            input_lo: lo,
            input_hi: hi,
            unsafe_region: region,
        });
    }
    Ok(props)
}

/// Reads and parses one `.vnnlib` file (gzip-compressed files are accepted).
pub fn parse_vnnlib_file(path: &Path) -> Result<Vec<Property>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("data: cannot read {}", path.display()))?;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| anyhow!("data: cannot decompress {}: {e}", path.display()))?;
        out
    } else {
        bytes
    };
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow!("data: vnnlib file {} is not UTF-8 text", path.display()))?;
    parse_vnnlib(&text, &path.display().to_string())
}

/// Whether a file name looks like a vnnlib property (`*.vnnlib` or `*.vnnlib.gz`).
pub fn is_vnnlib_name(path: &Path) -> bool {
    let n = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    n.ends_with(".vnnlib") || n.ends_with(".vnnlib.gz")
}

/// The `*.vnnlib` files of a folder, sorted by name.
pub fn vnnlib_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir)
        .with_context(|| format!("data: cannot list folder {}", dir.display()))?;
    let mut v = Vec::new();
    for e in rd {
        let p = e
            .with_context(|| format!("data: cannot list folder {}", dir.display()))?
            .path();
        if is_vnnlib_name(&p) && p.is_file() {
            v.push(p);
        }
    }
    v.sort();
    Ok(v)
}

/// One `.vnnlib` file or a folder of them; each property is one example.
pub struct VnnlibSource {
    root: PathBuf,
    properties: Vec<Property>,
    paths: Vec<PathBuf>,
    shape: Vec<usize>,
    pos: usize,
}

impl VnnlibSource {
    /// Opens a file or a folder (its `*.vnnlib` files, sorted by name) and parses all.
    pub fn open(path: &Path) -> Result<Self> {
        let files = if path.is_dir() {
            let f = vnnlib_files(path)?;
            if f.is_empty() {
                bail!("data: folder {} has no .vnnlib files", path.display());
            }
            f
        } else {
            vec![path.to_path_buf()]
        };
        let mut properties = Vec::new();
        let mut paths = Vec::new();
        for f in &files {
            for p in parse_vnnlib_file(f)? {
                if let Some(first) = properties.first() {
                    let first: &Property = first;
                    if first.n_inputs != p.n_inputs {
                        bail!(
                            "data: vnnlib file {} has {} inputs but {} has {}; a data set needs one input size",
                            f.display(),
                            p.n_inputs,
                            paths.first().map(|p: &PathBuf| p.display().to_string()).unwrap_or_default(),
                            first.n_inputs
                        );
                    }
                }
                properties.push(p);
                paths.push(f.clone());
            }
        }
        let n = properties.first().map_or(0, |p| p.n_inputs);
        Ok(VnnlibSource {
            root: path.to_path_buf(),
            properties,
            paths,
            shape: vec![n],
            pos: 0,
        })
    }

    /// All parsed properties, in example order.
    pub fn properties(&self) -> &[Property] {
        &self.properties
    }

    /// The file each property came from (same order as [`Self::properties`]).
    pub fn property_paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

impl DataSource for VnnlibSource {
    /// Smallest lower and largest upper bound over all boxes (the range the
    /// examples' values are declared to lie in); `None` when there are no properties.
    fn value_bounds(&self) -> Option<(f32, f32)> {
        let lo = self
            .properties
            .iter()
            .flat_map(|p| &p.input_lo)
            .copied()
            .fold(f64::INFINITY, f64::min);
        let hi = self
            .properties
            .iter()
            .flat_map(|p| &p.input_hi)
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        (lo <= hi).then_some((lo as f32, hi as f32))
    }

    fn example_shape(&self) -> &[usize] {
        &self.shape
    }
    fn kind(&self) -> ValueKind {
        ValueKind::Real
    }
    fn len(&self) -> Option<usize> {
        Some(self.properties.len())
    }
    fn describe(&self) -> String {
        let labelled = self
            .properties
            .iter()
            .filter(|p| p.robust_label().is_some())
            .count();
        format!(
            "vnnlib {} ({} properties over {} inputs, {} with a robustness label; x = box centre)",
            self.root.display(),
            self.properties.len(),
            self.shape[0],
            labelled
        )
    }
    fn next_batch(
        &mut self,
        n: usize,
        xs: &mut Vec<f32>,
        ys: &mut Vec<Option<usize>>,
    ) -> Result<usize> {
        let k = n.min(self.properties.len() - self.pos);
        for p in &self.properties[self.pos..self.pos + k] {
            xs.extend(p.centre());
            ys.push(p.robust_label());
        }
        self.pos += k;
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(nx: usize, ny: usize) -> String {
        let mut s = String::from("; test\n");
        for i in 0..nx {
            s += &format!("(declare-const X_{i} Real)\n");
        }
        for j in 0..ny {
            s += &format!("(declare-const Y_{j} Real)\n");
        }
        s
    }

    fn one(text: &str) -> Property {
        let mut v = parse_vnnlib(text, "t.vnnlib").unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn robustness_property() {
        let mut s = header(2, 3);
        s += "(assert (<= X_0 0.5)) (assert (>= X_0 -0.1))\n(assert (<= X_1 1)) (assert (>= X_1 (- 1)))\n";
        s += "(assert (or\n  (and (>= Y_0 Y_2))\n  (and (>= Y_1 Y_2))))\n";
        let p = one(&s);
        assert_eq!((p.n_inputs, p.n_outputs), (2, 3));
        assert_eq!(p.input_lo, vec![-0.1, -1.0]);
        assert_eq!(p.input_hi, vec![0.5, 1.0]);
        assert_eq!(p.robust_label(), Some(2));
        assert_eq!(p.target_label(), None);
        assert_eq!(p.centre(), vec![0.2, 0.0]);
        assert!(!p.is_unsafe(&[0.0, 0.1, 1.0]));
        assert!(p.is_unsafe(&[0.0, 1.0, 1.0]));
        assert!(p.margin(&[0.0, 0.1, 1.0]) > 0.0);
        // <= form, bare disjuncts without `and`
        let mut s = header(1, 3);
        s += "(assert (<= X_0 1)) (assert (>= X_0 0))\n(assert (or (<= Y_1 Y_0) (< Y_1 Y_2)))";
        assert_eq!(one(&s).robust_label(), Some(1));
        // a single constraint (binary classifier)
        let mut s = header(1, 2);
        s += "(assert (<= X_0 1)) (assert (>= X_0 0)) (assert (>= Y_1 Y_0))";
        assert_eq!(one(&s).robust_label(), Some(0));
    }

    #[test]
    fn linear_terms_and_constants() {
        let mut s = header(1, 3);
        s += "(assert (<= X_0 1)) (assert (>= X_0 0))\n";
        s += "(assert (or (and (<= (+ Y_0 (* -1.0 Y_1)) 0)) (and (>= (- Y_2 Y_1) 0.5)) (and (<= Y_0 -0.5))))";
        let p = one(&s);
        assert_eq!(p.unsafe_region.len(), 3);
        assert_eq!(
            p.unsafe_region[0],
            vec![LinearConstraint {
                coeffs: vec![(0, 1.0), (1, -1.0)],
                constant: 0.0
            }]
        );
        assert_eq!(
            p.unsafe_region[1],
            vec![LinearConstraint {
                coeffs: vec![(1, 1.0), (2, -1.0)],
                constant: 0.5
            }]
        );
        assert_eq!(
            p.unsafe_region[2],
            vec![LinearConstraint {
                coeffs: vec![(0, 1.0)],
                constant: 0.5
            }]
        );
        assert_eq!(p.robust_label(), None);
        assert!(p.is_unsafe(&[-1.0, 0.0, 0.0]));
        assert!(!p.is_unsafe(&[1.0, 0.0, 0.0]));
    }

    #[test]
    fn targeted_and_acas_style() {
        let mut s = header(1, 3);
        s +=
            "(assert (<= X_0 1)) (assert (>= X_0 0))\n(assert (>= Y_0 Y_1))\n(assert (>= Y_0 Y_2))";
        let p = one(&s);
        assert_eq!(p.robust_label(), None);
        assert_eq!(p.target_label(), Some(0));
        assert!(p.is_unsafe(&[2.0, 1.0, 1.0]));
        assert!(!p.is_unsafe(&[2.0, 3.0, 1.0]));
        let mut s = header(1, 2);
        s += "(assert (<= X_0 1)) (assert (>= X_0 0)) (assert (>= Y_0 3.99))";
        let p = one(&s);
        assert_eq!(p.robust_label(), None);
        assert_eq!(p.target_label(), None);
        assert!(p.is_unsafe(&[4.0, 0.0]));
    }

    #[test]
    fn several_boxes() {
        let mut s = header(2, 2);
        s += "(assert (or\n";
        s += " (and (<= X_0 1) (>= X_0 0) (<= X_1 1) (>= X_1 0) (>= Y_1 Y_0))\n";
        s += " (and (<= X_0 3) (>= X_0 2) (<= X_1 1) (>= X_1 0) (>= Y_0 Y_1))\n";
        s += " (and (<= X_0 1) (>= X_0 0) (<= X_1 1) (>= X_1 0) (>= Y_0 5))\n))";
        let v = parse_vnnlib(&s, "m.vnnlib").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].input_lo, vec![0.0, 0.0]);
        assert_eq!(v[0].unsafe_region.len(), 2);
        assert_eq!(v[1].input_lo, vec![2.0, 0.0]);
        assert_eq!(v[1].robust_label(), Some(1));
        // global box + disjunct-level output constraints with shared global X bounds
        let mut s = header(1, 2);
        s += "(assert (<= X_0 1))\n(assert (or (and (>= X_0 0) (>= Y_1 Y_0)) (and (>= X_0 0) (>= Y_1 2))))";
        let v = parse_vnnlib(&s, "m.vnnlib").unwrap();
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].input_lo[0], v[0].input_hi[0]), (0.0, 1.0));
        assert_eq!(v[0].unsafe_region.len(), 2);
    }

    #[test]
    fn errors_are_one_line_and_name_the_file() {
        let cases = [
            (
                "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0 1))",
                "no lower bound",
            ),
            ("(declare-const X_0 Real)\n(assert (<= X_0 1)", "unbalanced"),
            ("(declare-const X_0 Real)\n(assert (<= X_3 1))", "uses X_3"),
            ("(declare-const X_0 Int)", "only Real"),
            ("(declare-const Z_0 Real)", "unsupported variable name"),
            (
                "(declare-const X_0 Real)(declare-const X_1 Real)(assert (<= (+ X_0 X_1) 1))",
                "several inputs",
            ),
            (
                "(declare-const X_0 Real)(declare-const Y_0 Real)(assert (<= X_0 Y_0))",
                "mixes inputs and outputs",
            ),
            (
                "(declare-const X_0 Real)(assert (<= X_0 abc))",
                "found 'abc'",
            ),
            (
                "(declare-const X_0 Real)(assert (not (<= X_0 1)))",
                "unsupported operator 'not'",
            ),
            (
                "(declare-const X_0 Real)(assert (<= X_0 0)) (assert (>= X_0 1))",
                "empty range",
            ),
            (
                "(declare-const X_0 Real)(assert (<= (* X_0 X_0) 1))",
                "non-linear",
            ),
            ("(declare-const X_1 Real)", "X_0 is not declared"),
        ];
        for (text, want) in cases {
            let e = parse_vnnlib(text, "bad.vnnlib").err().unwrap().to_string();
            assert!(
                e.contains(want) && e.contains("bad.vnnlib") && !e.contains('\n'),
                "{want}: {e}"
            );
        }
    }

    #[test]
    fn source_over_folder() {
        let d = tempfile::tempdir().unwrap();
        let mut s = header(2, 2);
        s += "(assert (<= X_0 1)) (assert (>= X_0 0)) (assert (<= X_1 1)) (assert (>= X_1 0)) (assert (>= Y_0 Y_1))";
        std::fs::write(d.path().join("b.vnnlib"), &s).unwrap();
        std::fs::write(
            d.path().join("a.vnnlib"),
            s.replace("(>= Y_0 Y_1)", "(>= Y_1 Y_0)"),
        )
        .unwrap();
        std::fs::write(d.path().join("notes.txt"), "x").unwrap();
        let mut src = VnnlibSource::open(d.path()).unwrap();
        assert_eq!(src.len(), Some(2));
        assert_eq!(src.example_shape(), &[2]);
        assert_eq!(src.value_bounds(), Some((0.0, 1.0)));
        assert!(src.property_paths()[0].ends_with("a.vnnlib"));
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        assert_eq!(src.next_batch(5, &mut xs, &mut ys).unwrap(), 2);
        assert_eq!(xs, vec![0.5; 4]);
        assert_eq!(ys, vec![Some(0), Some(1)]);
        assert_eq!(src.next_batch(5, &mut xs, &mut ys).unwrap(), 0);
    }

    fn corpus() -> Option<PathBuf> {
        let c = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
        if c.is_dir() {
            Some(c)
        } else {
            println!("note: {} absent, skipping corpus test", c.display());
            None
        }
    }

    #[test]
    fn corpus_all_parse() {
        let Some(c) = corpus() else { return };
        let mut dirs = Vec::new();
        for year in ["vnncomp2021", "vnncomp2022", "vnncomp2023", "zoo"] {
            let Ok(rd) = std::fs::read_dir(c.join(year)) else {
                continue;
            };
            for e in rd.flatten() {
                if e.path().join("vnnlib").is_dir() {
                    dirs.push(e.path().join("vnnlib"));
                }
            }
        }
        dirs.sort();
        let mut total = 0;
        for d in &dirs {
            let src = VnnlibSource::open(d).unwrap();
            let acas = d.to_string_lossy().contains("acasxu");
            let marabou = d.to_string_lossy().contains("marabou");
            for (p, f) in src.properties().iter().zip(src.property_paths()) {
                total += 1;
                let fname = f.file_name().unwrap().to_string_lossy().to_string();
                if acas {
                    assert_eq!(p.n_inputs, 5);
                    assert_eq!(p.robust_label(), None, "{fname}");
                } else if marabou {
                    // "...target5_orig4.vnnlib": targeted, not untargeted robustness
                    assert_eq!(p.robust_label(), None, "{fname}");
                    let t: usize = fname
                        .split("target")
                        .nth(1)
                        .unwrap()
                        .split('_')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap();
                    assert_eq!(p.target_label(), Some(t), "{fname}");
                } else {
                    assert!(p.robust_label().is_some(), "{}", f.display());
                    assert!(p.input_lo.iter().zip(&p.input_hi).all(|(l, h)| l <= h));
                }
            }
        }
        assert!(total >= 100, "only {total} corpus properties");
    }

    #[test]
    fn corpus_known_labels() {
        let Some(c) = corpus() else { return };
        let cases = [
            ("vnncomp2022/mnist_fc/vnnlib/prop_0_0.03.vnnlib", 4, 784),
            ("zoo/mnist-8/vnnlib/mnist8_img0_eps0.1.vnnlib", 4, 784),
            (
                "vnncomp2021/cifar10_resnet/vnnlib/prop_10_eps_0.004.vnnlib",
                9,
                3072,
            ),
            ("vnncomp2021/verivital/vnnlib/prop_0_0.004.vnnlib", 2, 784),
            ("vnncomp2023/vit/vnnlib/ibp_3_3_8_1279.vnnlib", 8, 3072),
        ];
        for (f, label, n) in cases {
            let path = c.join(f);
            if !path.exists() {
                println!("note: {} absent, skipped", path.display());
                continue;
            }
            let v = parse_vnnlib_file(&path).unwrap();
            assert_eq!(v.len(), 1);
            assert_eq!(v[0].robust_label(), Some(label), "{f}");
            assert_eq!(v[0].n_inputs, n, "{f}");
            assert_eq!(v[0].n_outputs, 10);
        }
        // ACAS Xu property 1: a single box with output constraint Y_0 >= 3.99...
        let p1 = c.join("vnncomp2022/acasxu/vnnlib/prop_1.vnnlib");
        if p1.exists() {
            let v = parse_vnnlib_file(&p1).unwrap();
            assert_eq!(v.len(), 1);
            let p = &v[0];
            assert_eq!(p.input_lo, vec![0.6, -0.5, -0.5, 0.45, -0.5]);
            assert_eq!(p.input_hi, vec![0.679857769, 0.5, 0.5, 0.5, -0.45]);
            assert_eq!(
                p.unsafe_region,
                vec![vec![LinearConstraint {
                    coeffs: vec![(0, -1.0)],
                    constant: 3.991125645861615
                }]]
            );
            assert!(p.is_unsafe(&[4.0, 0.0, 0.0, 0.0, 0.0]));
            assert!(!p.is_unsafe(&[3.0, 0.0, 0.0, 0.0, 0.0]));
        }
    }
}
