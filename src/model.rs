//! ONNX import: the only module that touches protobuf types.
//!
//! Decodes a model with prost (tract-onnx's generated `pb` types), inlines external
//! data (refusing paths that leave the model's folder), checks the opset, and answers the
//! questions the rest of harden asks of a model: its real inputs and outputs, parameter
//! count, op histogram, whether it ends in a Softmax, and which ops harden cannot handle.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use prost::Message;
use sha2::{Digest, Sha256};
pub use tract_onnx::pb;

use crate::ops;

mod canon;
pub use canon::canonicalize;
pub mod quant;

/// The opsets harden accepts for the default `ai.onnx` domain.
pub const OPSET_RANGE: std::ops::RangeInclusive<i64> = 7..=21;

/// A tensor dimension as declared in the model.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    Symbolic(String),
}

impl Dim {
    pub fn fixed(&self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(*n),
            Dim::Symbolic(_) => None,
        }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => write!(f, "{s}"),
        }
    }
}

/// Formats a shape as `[1, 28, 28]`.
pub fn shape_string(dims: &[Dim]) -> String {
    let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// A graph input or output: name, element type and shape.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TensorInfo {
    pub name: String,
    pub elem_type: String,
    pub shape: Vec<Dim>,
}

impl TensorInfo {
    /// The fixed example dimensions (all but the batch); an error naming the first
    /// symbolic one, which only data can resolve (`audit` and the main command take
    /// such dims from the data's example shape).
    pub fn example_shape(&self) -> Result<Vec<usize>> {
        self.shape
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, d)| {
                d.fixed().ok_or_else(|| {
                    anyhow!(
                        "input '{}' has shape {}: its dimension {i} ('{d}') is symbolic, and only the batch (dimension 0) may be; export the model with that dimension fixed, or give data of the size wanted (`harden audit --data`)",
                        self.name,
                        shape_string(&self.shape)
                    )
                })
            })
            .collect()
    }
}

/// What the model's first output looks like, judged from the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputKind {
    Logits,
    Probabilities,
}

/// A decoded, self-contained ONNX model (external data inlined).
#[derive(Clone)]
pub struct OnnxModel {
    pub proto: pb::ModelProto,
    pub path: PathBuf,
    pub sha256: String,
    pub file_bytes: u64,
    /// What loading changed in `proto` so that runtimes take it (see [`canonicalize`]);
    /// `harden inspect` shows it.
    pub load_notes: LoadNotes,
}

/// The changes [`canonicalize`] made to a model at load time.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct LoadNotes {
    /// Graph inputs no node reads (tf2onnx leaves some), removed from the graph.
    pub pruned_inputs: Vec<String>,
    /// The IR version as saved, when it was lowered to `proto.ir_version` (ONNX Runtime
    /// refuses IR versions newer than it knows, even when the model uses nothing new).
    pub ir_lowered_from: Option<i64>,
    /// Why a newer-than-needed IR version could not be lowered, when it could not.
    pub ir_kept_because: Option<String>,
}

impl LoadNotes {
    /// One line per change, for `harden inspect`.
    pub fn lines(&self, ir_version: i64) -> Vec<String> {
        let mut out = vec![];
        if !self.pruned_inputs.is_empty() {
            out.push(format!(
                "unused graph input(s) {} removed (no node reads them)",
                self.pruned_inputs.join(", ")
            ));
        }
        if let Some(from) = self.ir_lowered_from {
            out.push(format!(
                "IR version {from} lowered to {ir_version} in memory (the model uses nothing newer; ONNX Runtime refuses IR versions it does not know)"
            ));
        }
        if let Some(why) = &self.ir_kept_because {
            out.push(format!(
                "IR version {ir_version} kept ({why}); ONNX Runtime may refuse it: try --runtime tract"
            ));
        }
        out
    }
}

impl OnnxModel {
    /// Reads and decodes `path`, inlining external data found next to it.
    pub fn load(path: &Path) -> Result<OnnxModel> {
        let bytes =
            fs::read(path).with_context(|| format!("cannot read model {}", path.display()))?;
        Self::from_bytes(&bytes, path)
    }

    /// Decodes a model from `bytes`; `path` names it in messages and locates external data.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<OnnxModel> {
        let sha256 = hex(&Sha256::digest(bytes));
        let mut proto = pb::ModelProto::decode(bytes).map_err(|e| {
            anyhow!(
                "{} is not a valid ONNX file (protobuf decoding failed: {e})",
                path.display()
            )
        })?;
        if proto.ir_version <= 0 {
            bail!(
                "{} is not a valid ONNX model: ir_version is missing",
                path.display()
            );
        }
        let graph = proto
            .graph
            .as_mut()
            .ok_or_else(|| anyhow!("{} is not an ONNX model: it has no graph", path.display()))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        inline_external_data(graph, dir, path)?;
        let load_notes = canonicalize(&mut proto);
        let model = OnnxModel {
            proto,
            path: path.to_path_buf(),
            sha256,
            file_bytes: bytes.len() as u64,
            load_notes,
        };
        model.check_structure()?;
        Ok(model)
    }

    pub fn graph(&self) -> &pb::GraphProto {
        // `load` refuses models without a graph; an empty one stands in if code ever
        // builds an OnnxModel otherwise.
        static EMPTY: std::sync::OnceLock<pb::GraphProto> = std::sync::OnceLock::new();
        self.proto
            .graph
            .as_ref()
            .unwrap_or_else(|| EMPTY.get_or_init(Default::default))
    }

    fn check_structure(&self) -> Result<()> {
        let opset = self.opset();
        if !OPSET_RANGE.contains(&opset) {
            bail!(
                "{}: unsupported opset {opset} (harden supports ai.onnx opsets {} to {})",
                self.path.display(),
                OPSET_RANGE.start(),
                OPSET_RANGE.end()
            );
        }
        let inputs = self.inputs();
        if inputs.is_empty() {
            bail!("{}: the graph has no inputs", self.path.display());
        }
        if self.graph().output.is_empty() {
            bail!("{}: the graph has no outputs", self.path.display());
        }
        Ok(())
    }

    /// The version of the default (`ai.onnx`) opset.
    pub fn opset(&self) -> i64 {
        opset_of(&self.proto)
    }

    pub fn producer(&self) -> String {
        let p = &self.proto;
        match (p.producer_name.is_empty(), p.producer_version.is_empty()) {
            (true, _) => String::new(),
            (false, true) => p.producer_name.clone(),
            (false, false) => format!("{} {}", p.producer_name, p.producer_version),
        }
    }

    fn initializer_names(&self) -> HashSet<&str> {
        self.graph()
            .initializer
            .iter()
            .map(|t| t.name.as_str())
            .collect()
    }

    /// Graph inputs that are fed by the user (IR < 4 also lists initializers as inputs).
    pub fn inputs(&self) -> Vec<TensorInfo> {
        let inits = self.initializer_names();
        self.graph()
            .input
            .iter()
            .filter(|v| !inits.contains(v.name.as_str()))
            .map(value_info)
            .collect()
    }

    pub fn outputs(&self) -> Vec<TensorInfo> {
        self.graph().output.iter().map(value_info).collect()
    }

    /// The single classifier input; errors if the model has several.
    pub fn classifier_input(&self) -> Result<TensorInfo> {
        let inputs = self.inputs();
        match inputs.as_slice() {
            [one] => {
                if one.elem_type != "float" {
                    bail!(
                        "{}: input '{}' has element type {}; harden handles float inputs only",
                        self.path.display(),
                        one.name,
                        one.elem_type
                    );
                }
                if one.shape.is_empty() {
                    bail!(
                        "{}: input '{}' has no declared shape",
                        self.path.display(),
                        one.name
                    );
                }
                Ok(one.clone())
            }
            _ => bail!(
                "{}: the model has {} inputs ({}); harden handles classifiers with one input",
                self.path.display(),
                inputs.len(),
                inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Number of elements in floating-point initializers and Constant nodes.
    pub fn parameter_count(&self) -> u64 {
        let g = self.graph();
        let init: u64 = g
            .initializer
            .iter()
            .filter(|t| is_float_type(t.data_type))
            .map(|t| element_count(&t.dims))
            .fold(0u64, u64::saturating_add);
        let consts: u64 = g
            .node
            .iter()
            .filter(|n| n.op_type == "Constant")
            .flat_map(|n| n.attribute.iter())
            .filter_map(|a| a.t.as_ref())
            // Scalars and one-element constants are normalisation constants, not weights.
            .filter(|t| is_float_type(t.data_type) && element_count(&t.dims) > 1)
            .map(|t| element_count(&t.dims))
            .fold(0u64, u64::saturating_add);
        init.saturating_add(consts)
    }

    /// Op type (with domain prefix where not `ai.onnx`) to number of nodes, sorted by name.
    pub fn op_histogram(&self) -> BTreeMap<String, usize> {
        let mut h = BTreeMap::new();
        for n in &self.graph().node {
            *h.entry(op_name(n)).or_insert(0) += 1;
        }
        h
    }

    /// Nodes whose op harden does not handle: (node name, op).
    pub fn unsupported_nodes(&self) -> Vec<(String, String)> {
        self.graph()
            .node
            .iter()
            .filter(|n| !ops::is_supported(&n.domain, &n.op_type))
            .map(|n| (node_label(n), op_name(n)))
            .collect()
    }

    /// Errors naming the first unsupported node, if any, or the first problem with the
    /// model's quantization (`quant::check`: the QOperator format, bad scales or zero
    /// points, unsupported types).
    pub fn require_supported(&self) -> Result<()> {
        quant::check(self.graph()).map_err(|e| anyhow!("{}: {e}", self.path.display()))?;
        let missing = self.unsupported_nodes();
        if let Some((node, op)) = missing.first() {
            let ops: std::collections::BTreeSet<&str> =
                missing.iter().map(|(_, op)| op.as_str()).collect();
            let usual = ops::usual_architectures(op)
                .map(|a| format!(" (usual in {a})"))
                .unwrap_or_default();
            bail!(
                "{}: node '{node}' uses op {op}{usual}, which harden does not support; missing ops: {} (`harden inspect` lists every node)",
                self.path.display(),
                ops.into_iter().collect::<Vec<_>>().join(", ")
            );
        }
        Ok(())
    }

    /// Whether the first output is produced by a Softmax (possibly through shape-only ops).
    pub fn output_kind(&self) -> OutputKind {
        let g = self.graph();
        let Some(out) = g.output.first() else {
            return OutputKind::Logits;
        };
        let mut name = out.name.as_str();
        for _ in 0..8 {
            let Some(node) = g.node.iter().find(|n| n.output.iter().any(|o| o == name)) else {
                break;
            };
            match node.op_type.as_str() {
                "Softmax" => return OutputKind::Probabilities,
                "Identity" | "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" | "Cast" => {
                    match node.input.first() {
                        Some(i) => name = i.as_str(),
                        None => break,
                    }
                }
                _ => break,
            }
        }
        OutputKind::Logits
    }

    /// Re-encodes the (self-contained) model to bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.proto.encode_to_vec()
    }

    /// The model with the float initializers named in `updates` given new values (same
    /// name, dims and type; only tensors whose values changed are touched) and the keys
    /// of `metadata` set in `metadata_props` (replacing earlier values of those keys).
    /// The graph, inputs, outputs, opset, IR version and other metadata stay as loaded.
    pub fn with_updates(
        &self,
        updates: &[(String, Vec<f32>)],
        metadata: &[(String, String)],
    ) -> Result<OnnxModel> {
        let mut proto = self.proto.clone();
        set_initializers(&mut proto, updates)?;
        for (k, v) in metadata {
            proto.metadata_props.retain(|p| &p.key != k);
            proto.metadata_props.push(pb::StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            });
        }
        let bytes = proto.encode_to_vec();
        Ok(OnnxModel {
            sha256: hex(&Sha256::digest(&bytes)),
            file_bytes: bytes.len() as u64,
            proto,
            path: self.path.clone(),
            load_notes: self.load_notes.clone(),
        })
    }
}

/// Elements of a tensor with `dims` (negative dims count as 0; saturates, never overflows).
fn element_count(dims: &[i64]) -> u64 {
    dims.iter()
        .fold(1u64, |acc, &d| acc.saturating_mul(d.max(0) as u64))
}

fn is_float_type(t: i32) -> bool {
    // FLOAT, FLOAT16, DOUBLE, BFLOAT16
    matches!(t, 1 | 10 | 11 | 16)
}

fn op_name(n: &pb::NodeProto) -> String {
    if n.domain.is_empty() || n.domain == "ai.onnx" {
        n.op_type.clone()
    } else {
        format!("{}:{}", n.domain, n.op_type)
    }
}

fn node_label(n: &pb::NodeProto) -> String {
    if !n.name.is_empty() {
        n.name.clone()
    } else {
        format!(
            "{} -> {}",
            n.op_type,
            n.output.first().map(String::as_str).unwrap_or("?")
        )
    }
}

/// The default (`ai.onnx`) opset a model imports; 0 when it imports none.
pub fn opset_of(proto: &pb::ModelProto) -> i64 {
    proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
        .unwrap_or(0)
}

/// ONNX element type names, as in the spec's TensorProto.DataType.
pub fn elem_type_name(t: i32) -> &'static str {
    match t {
        1 => "float",
        2 => "uint8",
        3 => "int8",
        4 => "uint16",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        8 => "string",
        9 => "bool",
        10 => "float16",
        11 => "double",
        12 => "uint32",
        13 => "uint64",
        16 => "bfloat16",
        17 => "float8e4m3fn",
        18 => "float8e4m3fnuz",
        19 => "float8e5m2",
        20 => "float8e5m2fnuz",
        21 => "uint4",
        22 => "int4",
        23 => "float4e2m1",
        _ => "unknown",
    }
}

fn value_info(v: &pb::ValueInfoProto) -> TensorInfo {
    use pb::tensor_shape_proto::dimension::Value;
    use pb::type_proto::Value as TV;
    let (elem_type, shape) = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(TV::TensorType(tt)) => {
            let shape = tt
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(Value::DimValue(n)) if *n > 0 => Dim::Fixed(*n as usize),
                            Some(Value::DimParam(p)) if !p.is_empty() => Dim::Symbolic(p.clone()),
                            _ => Dim::Symbolic("?".into()),
                        })
                        .collect()
                })
                .unwrap_or_default();
            (elem_type_name(tt.elem_type).to_string(), shape)
        }
        _ => ("unknown".to_string(), vec![]),
    };
    TensorInfo {
        name: v.name.clone(),
        elem_type,
        shape,
    }
}

/// Sets the shape of graph input `name` (used to give a dynamic batch a name or value).
pub fn set_value_shape(v: &mut pb::ValueInfoProto, dims: &[Dim]) {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    use pb::type_proto::Value as TV;
    if let Some(TV::TensorType(tt)) = v.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        tt.shape = Some(pb::TensorShapeProto {
            dim: dims
                .iter()
                .map(|d| Dimension {
                    denotation: String::new(),
                    value: Some(match d {
                        Dim::Fixed(n) => Value::DimValue(*n as i64),
                        Dim::Symbolic(s) => Value::DimParam(s.clone()),
                    }),
                })
                .collect(),
        });
    }
}

/// Every tensor name node `n` reads: its inputs, and what its subgraphs read (their
/// nodes' inputs and their outputs, which may name tensors of the enclosing graph).
pub fn node_reads(n: &pb::NodeProto, out: &mut HashSet<String>) {
    out.extend(n.input.iter().filter(|i| !i.is_empty()).cloned());
    for a in &n.attribute {
        for sub in a.g.iter().chain(a.graphs.iter()) {
            for m in &sub.node {
                node_reads(m, out);
            }
            out.extend(sub.output.iter().map(|o| o.name.clone()));
        }
    }
}

/// The first Mod node of an encoded model whose dividend is a constant (an initializer
/// or a Constant node's output) and divisor is not: tract 0.23 swaps such a Mod's
/// operands (integer or float) once the batch is above 1, so the tract runtime refuses
/// these models rather than compute wrong numbers. Only models holding a node whose
/// op_type is "Mod" are decoded: the encoded field (NodeProto field 4, length 3) is
/// looked for first, where a plain "Mod" would also match names such as "/model/...".
pub fn mod_with_constant_dividend(bytes: &[u8]) -> Option<String> {
    const MOD_OP_TYPE: &[u8] = b"\x22\x03Mod";
    if !bytes.windows(MOD_OP_TYPE.len()).any(|w| w == MOD_OP_TYPE) {
        return None;
    }
    let proto = pb::ModelProto::decode(bytes).ok()?;
    let g = proto.graph.as_ref()?;
    let mut consts: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    for n in g.node.iter().filter(|n| n.op_type == "Constant") {
        consts.extend(n.output.iter().map(String::as_str));
    }
    let is_const = |i: Option<&String>| i.is_some_and(|i| consts.contains(i.as_str()));
    g.node
        .iter()
        .find(|n| n.op_type == "Mod" && is_const(n.input.first()) && !is_const(n.input.get(1)))
        .map(|n| n.name.clone())
}

/// A float tensor value-info, for graphs harden builds.
pub fn float_value_info(name: &str, dims: &[Dim]) -> pb::ValueInfoProto {
    let mut v = pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: None,
            })),
        }),
        ..Default::default()
    };
    set_value_shape(&mut v, dims);
    v
}

/// `graph` as an encoded opset-13 model (IR 8) produced by harden: the shape of the
/// graphs harden builds to run on their own (the optimiser's step, probes, copies).
pub fn encode_opset13(graph: pb::GraphProto) -> Vec<u8> {
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        producer_name: "harden".into(),
        graph: Some(graph),
        ..Default::default()
    };
    prost::Message::encode_to_vec(&model)
}

/// `y = op(x)` over float tensors of `dims` (`None`: of any shape), encoded (opset 13).
pub fn unary_model(op: &str, dims: Option<&[Dim]>) -> Vec<u8> {
    let value = |name: &str| {
        let mut v = float_value_info(name, dims.unwrap_or(&[]));
        if dims.is_none() {
            if let Some(pb::type_proto::Value::TensorType(t)) =
                v.r#type.as_mut().and_then(|t| t.value.as_mut())
            {
                t.shape = None;
            }
        }
        v
    };
    encode_opset13(pb::GraphProto {
        name: op.to_lowercase(),
        node: vec![pb::NodeProto {
            op_type: op.into(),
            input: vec!["x".into()],
            output: vec!["y".into()],
            ..Default::default()
        }],
        input: vec![value("x")],
        output: vec![value("y")],
        ..Default::default()
    })
}

/// A float initializer with the given dims.
pub fn float_tensor(name: &str, dims: &[i64], values: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: values.to_vec(),
        ..Default::default()
    }
}

/// A node in the default domain.
pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> pb::NodeProto {
    pb::NodeProto {
        op_type: op.to_string(),
        name: name.to_string(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

/// Reads every externally stored tensor of `graph` into `raw_data`.
///
/// Sizes: nothing here limits a model to 2 GB. The `.onnx` file itself stays small (the
/// weights are outside it; protobuf caps one message at 2 GB, prost does not check), and
/// each tensor is read from its offset, with 64-bit offsets and lengths. What a model over
/// 2 GB does meet later is ONNX Runtime's in-memory loader, which takes the re-encoded
/// model as one protobuf message, which protobuf caps at 2 GB: such a model
/// runs on tract, and on ONNX Runtime only once the runtime loads it from a file with
/// external data (not done yet).
fn inline_external_data(graph: &mut pb::GraphProto, dir: &Path, model_path: &Path) -> Result<()> {
    let mut tensors: Vec<&mut pb::TensorProto> = graph.initializer.iter_mut().collect();
    for n in graph.node.iter_mut() {
        for a in n.attribute.iter_mut() {
            if let Some(t) = a.t.as_mut() {
                tensors.push(t);
            }
        }
    }
    let mut canonical_dir: Option<PathBuf> = None;
    for t in tensors {
        // TensorProto.DataLocation.EXTERNAL = 1
        if t.data_location != Some(1) {
            continue;
        }
        let mut location = None;
        let mut offset = 0u64;
        let mut length = None;
        for kv in &t.external_data {
            match kv.key.as_str() {
                "location" => location = Some(kv.value.clone()),
                "offset" => {
                    offset = kv.value.parse().map_err(|_| {
                        anyhow!(
                            "{}: tensor '{}' has a bad external data offset '{}'",
                            model_path.display(),
                            t.name,
                            kv.value
                        )
                    })?
                }
                "length" => {
                    length = Some(kv.value.parse::<u64>().map_err(|_| {
                        anyhow!(
                            "{}: tensor '{}' has a bad external data length '{}'",
                            model_path.display(),
                            t.name,
                            kv.value
                        )
                    })?)
                }
                _ => {}
            }
        }
        let location = location.ok_or_else(|| {
            anyhow!(
                "{}: tensor '{}' is stored externally but names no location",
                model_path.display(),
                t.name
            )
        })?;
        let rel = Path::new(&location);
        let escapes = rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir));
        if escapes {
            bail!(
                "{}: tensor '{}' refers to external data '{}' outside the model's folder; refusing to read it",
                model_path.display(),
                t.name,
                location
            );
        }
        let file = dir.join(rel);
        if !file.is_file() {
            bail!(
                "{}: external data file '{}' for tensor '{}' not found next to the model",
                model_path.display(),
                location,
                t.name
            );
        }
        // Symlinks must not lead out of the folder either.
        let cdir = match &canonical_dir {
            Some(d) => d.clone(),
            None => {
                let d = dir.canonicalize().with_context(|| {
                    format!("cannot resolve the model's folder {}", dir.display())
                })?;
                canonical_dir = Some(d.clone());
                d
            }
        };
        let cfile = file
            .canonicalize()
            .with_context(|| format!("cannot resolve external data file {}", file.display()))?;
        if !cfile.starts_with(&cdir) {
            bail!(
                "{}: external data '{}' for tensor '{}' resolves outside the model's folder; refusing to read it",
                model_path.display(),
                location,
                t.name
            );
        }
        // Only the tensor's bytes are read (seek, then read): a weights file of several
        // GB holding hundreds of tensors is read once in all, not once per tensor.
        let size = fs::metadata(&cfile)
            .with_context(|| format!("cannot read external data file {}", cfile.display()))?
            .len();
        let end = match length {
            Some(l) => offset.checked_add(l),
            None => Some(size),
        };
        let (start, end) = match end {
            Some(end) if offset <= end && end <= size => (offset, end),
            _ => bail!(
                "{}: external data file '{}' is too short for tensor '{}' (offset {offset}, length {:?}, file size {size})",
                model_path.display(),
                location,
                t.name,
                length,
            ),
        };
        let len = usize::try_from(end - start).map_err(|_| {
            anyhow!(
                "{}: tensor '{}' is too large for this machine",
                model_path.display(),
                t.name
            )
        })?;
        let mut data = vec![0u8; len];
        {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = fs::File::open(&cfile)
                .with_context(|| format!("cannot read external data file {}", cfile.display()))?;
            f.seek(SeekFrom::Start(start))
                .and_then(|_| f.read_exact(&mut data))
                .with_context(|| format!("cannot read external data file {}", cfile.display()))?;
        }
        t.raw_data = data;
        t.external_data.clear();
        t.data_location = None;
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A copy of `proto` with the fixed batch dimension of `input` made dynamic (named `N`),
/// for models exported with batch 1 (mnist-8, most VNN-COMP networks), so that they can
/// be run on many examples at once. Output batch dimensions become `N`, intermediate
/// shape annotations are dropped, and constant Reshape targets (initializers or Constant
/// nodes) that start with the fixed batch on a tensor that depends on the input get 0
/// ("copy the batch") there, or -1 where `allowzero` makes 0 a literal zero. Returns
/// `None` when the input has no fixed batch. The caller must check numerically that the
/// result agrees with the original (see `Classifier::open`).
pub fn free_batch(proto: &pb::ModelProto, input: &str) -> Option<pb::ModelProto> {
    let mut p = proto.clone();
    let g = p.graph.as_mut()?;
    let vi = g.input.iter_mut().find(|v| v.name == input)?;
    let info = value_info(vi);
    let batch = info.shape.first()?.fixed()? as i64;
    let mut dims = info.shape.clone();
    dims[0] = Dim::Symbolic("N".into());
    set_value_shape(vi, &dims);
    for o in g.output.iter_mut() {
        let mut d = value_info(o).shape;
        if let Some(first) = d.first_mut() {
            if first.fixed() == Some(batch as usize) {
                *first = Dim::Symbolic("N".into());
                set_value_shape(o, &d);
            }
        }
    }
    g.value_info.clear();
    // Tensors that depend on the input.
    let mut dynamic: HashSet<String> = HashSet::from([input.to_string()]);
    for n in &g.node {
        if n.input.iter().any(|i| dynamic.contains(i)) {
            dynamic.extend(n.output.iter().cloned());
        }
    }
    // Constant shapes: initializers and Constant nodes.
    let mut shape_consts: std::collections::HashMap<String, Vec<i64>> = g
        .initializer
        .iter()
        .filter_map(|t| Some((t.name.clone(), int64_values(t)?)))
        .collect();
    for n in &g.node {
        if n.op_type == "Constant" {
            if let (Some(o), Some(v)) = (
                n.output.first(),
                n.attribute
                    .iter()
                    .find(|a| a.name == "value")
                    .and_then(|a| a.t.as_ref())
                    .and_then(int64_values),
            ) {
                shape_consts.insert(o.clone(), v);
            }
        }
    }
    let mut new_inits = vec![];
    for (k, n) in g.node.iter_mut().enumerate() {
        if n.op_type != "Reshape" || n.input.len() < 2 || !dynamic.contains(&n.input[0]) {
            continue;
        }
        let Some(mut shape) = shape_consts.get(&n.input[1]).cloned() else {
            continue;
        };
        if shape.first() != Some(&batch) {
            continue;
        }
        // 0 copies the input's first dimension (the batch), unless `allowzero` = 1 makes it
        // a literal zero (dynamo exports write allowzero=1): there allowzero is turned off
        // when no other entry is a literal zero, else the batch entry becomes -1 (inferred)
        // when no other entry is. Otherwise the Reshape is left as it is (and the
        // caller's check finds the model disagreeing).
        let allowzero = n
            .attribute
            .iter()
            .position(|a| a.name == "allowzero" && a.i != 0);
        let rest = &shape[1..];
        match allowzero {
            None => shape[0] = 0,
            Some(at) if !rest.contains(&0) => {
                n.attribute.remove(at);
                shape[0] = 0;
            }
            Some(_) if !rest.contains(&-1) => shape[0] = -1,
            Some(_) => continue,
        }
        let name = format!("{}__harden_free_batch_{k}", n.input[1]);
        new_inits.push(pb::TensorProto {
            name: name.clone(),
            dims: vec![shape.len() as i64],
            data_type: 7,
            int64_data: shape,
            ..Default::default()
        });
        n.input[1] = name;
    }
    g.initializer.extend(new_inits);
    Some(p)
}

/// Gives the float initializers named in `updates` new values (same name, dims and
/// type); tensors whose values did not change are left untouched, bytes included.
pub fn set_initializers(proto: &mut pb::ModelProto, updates: &[(String, Vec<f32>)]) -> Result<()> {
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| anyhow!("the model has no graph"))?;
    for (name, values) in updates {
        let t = graph
            .initializer
            .iter_mut()
            .find(|t| &t.name == name)
            .ok_or_else(|| anyhow!("the model has no initializer '{name}'"))?;
        let old = float_values(t)
            .filter(|_| t.data_type == 1)
            .ok_or_else(|| anyhow!("initializer '{name}' is not a float tensor"))?;
        if old.len() != values.len() {
            bail!(
                "initializer '{name}' has {} values, {} given",
                old.len(),
                values.len()
            );
        }
        let same = old
            .iter()
            .zip(values)
            .all(|(a, b)| a.to_bits() == b.to_bits());
        if !same {
            t.float_data.clear();
            t.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        }
    }
    Ok(())
}

/// The values of a float or double tensor as f32, from the typed field or little-endian
/// `raw_data`; `None` for other types or when the count does not match the dims.
pub fn float_values(t: &pb::TensorProto) -> Option<Vec<f32>> {
    let v: Vec<f32> = match t.data_type {
        1 if !t.float_data.is_empty() => t.float_data.clone(),
        1 => t
            .raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        11 if !t.double_data.is_empty() => t.double_data.iter().map(|v| *v as f32).collect(),
        11 => t
            .raw_data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        _ => return None,
    };
    let count = t
        .dims
        .iter()
        .try_fold(1usize, |a, d| a.checked_mul(usize::try_from(*d).ok()?))?;
    (v.len() == count).then_some(v)
}

/// The values of an int64 tensor, from `int64_data` or little-endian `raw_data`.
pub fn int64_values(t: &pb::TensorProto) -> Option<Vec<i64>> {
    if t.data_type != 7 {
        return None;
    }
    if !t.int64_data.is_empty() {
        return Some(t.int64_data.clone());
    }
    if !t.raw_data.len().is_multiple_of(8) {
        return None;
    }
    Some(
        t.raw_data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x [1, 4] -> Reshape(x, `shape`, allowzero) -> y, the shape an initializer or a
    /// Constant node.
    fn reshape_model(shape: &[i64], allowzero: Option<i64>, as_node: bool) -> pb::ModelProto {
        let t = pb::TensorProto {
            name: "s".into(),
            dims: vec![shape.len() as i64],
            data_type: 7,
            int64_data: shape.to_vec(),
            ..Default::default()
        };
        let mut r = node("Reshape", "r", &["x", "s"], &["y"]);
        if let Some(a) = allowzero {
            r.attribute.push(pb::AttributeProto {
                name: "allowzero".into(),
                r#type: 2,
                i: a,
                ..Default::default()
            });
        }
        let mut g = pb::GraphProto {
            input: vec![float_value_info("x", &[Dim::Fixed(1), Dim::Fixed(4)])],
            output: vec![float_value_info("y", &[Dim::Fixed(1), Dim::Fixed(4)])],
            ..Default::default()
        };
        if as_node {
            let mut c = node("Constant", "c", &[], &["s"]);
            c.attribute.push(pb::AttributeProto {
                name: "value".into(),
                r#type: 4,
                t: Some(t),
                ..Default::default()
            });
            g.node.push(c);
        } else {
            g.initializer.push(t);
        }
        g.node.push(r);
        pb::ModelProto {
            ir_version: 8,
            graph: Some(g),
            ..Default::default()
        }
    }

    /// The freed Reshape's shape and whether it keeps allowzero = 1.
    fn freed(m: &pb::ModelProto) -> (Vec<i64>, bool) {
        let p = free_batch(m, "x").unwrap();
        let g = p.graph.unwrap();
        let r = g.node.iter().find(|n| n.op_type == "Reshape").unwrap();
        let t = g.initializer.iter().find(|t| t.name == r.input[1]).unwrap();
        let az = r
            .attribute
            .iter()
            .any(|a| a.name == "allowzero" && a.i == 1);
        (int64_values(t).unwrap(), az)
    }

    #[test]
    fn free_batch_keeps_reshape_meaning() {
        // Plain and Constant-node shapes: 0 copies the batch.
        assert_eq!(
            freed(&reshape_model(&[1, 4], None, false)),
            (vec![0, 4], false)
        );
        assert_eq!(
            freed(&reshape_model(&[1, 4], None, true)),
            (vec![0, 4], false)
        );
        // allowzero = 1 (dynamo exports): a 0 would be a literal zero; with no other zero
        // allowzero is dropped and 0 copies the batch.
        assert_eq!(
            freed(&reshape_model(&[1, 4], Some(1), false)),
            (vec![0, 4], false)
        );
        // With a literal zero elsewhere the batch entry is inferred instead.
        assert_eq!(
            freed(&reshape_model(&[1, 0, 4], Some(1), true)),
            (vec![-1, 0, 4], true)
        );
        // Both a literal zero and a -1: left as it is (the caller's check refuses it).
        let m = reshape_model(&[1, 0, -1], Some(1), false);
        let p = free_batch(&m, "x").unwrap();
        let g = p.graph.unwrap();
        assert_eq!(g.node[0].input[1], "s");
    }
}
