//! The declared input space: layout, valid raw range, and the user's normalisation.
//!
//! harden attacks in the model's *raw* input space. Normalisation (`--mean`, `--std`) is
//! not applied to the data: it becomes graph nodes in front of the model
//! ([`InputSpec::wrap`]), so eps-balls and clipping are measured in raw input units.
//! This module also maps stored data examples onto the model's input shape and range.

use anyhow::{bail, Result};

use crate::data::ValueKind;
use crate::model::{self, pb, Dim, OnnxModel, TensorInfo};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// Images as [batch, channels, height, width].
    Nchw,
    /// Images as [batch, height, width, channels].
    Nhwc,
    /// Anything else: vectors or tensors taken element by element.
    Flat,
}

/// What the user said on the command line (all optional).
#[derive(Clone, Debug, Default)]
pub struct SpecArgs {
    pub layout: Option<Layout>,
    pub range: Option<(f32, f32)>,
    pub mean: Option<Vec<f32>>,
    pub std: Option<Vec<f32>>,
}

/// The resolved input space, written in every report.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct InputSpec {
    pub input_name: String,
    /// Declared input shape, batch first.
    pub model_shape: Vec<Dim>,
    pub layout: Layout,
    pub range: (f32, f32),
    pub channels: usize,
    /// Per-channel mean and std applied inside the graph; empty when none.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Which of layout/range/normalisation were guessed rather than given.
    pub guessed: Vec<String>,
}

fn channel_like(n: &Dim) -> bool {
    matches!(n, Dim::Fixed(1 | 3 | 4))
}

/// Guesses the layout from a declared shape.
pub fn guess_layout(shape: &[Dim]) -> Layout {
    if shape.len() != 4 {
        return Layout::Flat;
    }
    match (channel_like(&shape[1]), channel_like(&shape[3])) {
        (true, _) => Layout::Nchw,
        (false, true) => Layout::Nhwc,
        _ => Layout::Flat,
    }
}

impl InputSpec {
    /// Resolves the spec for `input` from the user's flags and guesses for the rest.
    pub fn resolve(input: &TensorInfo, args: &SpecArgs) -> Result<InputSpec> {
        let shape = &input.shape;
        if shape.len() < 2 {
            bail!(
                "input '{}' has shape {}; harden expects a batch dimension followed by the example's dimensions",
                input.name,
                model::shape_string(shape)
            );
        }
        let mut guessed = Vec::new();
        let layout = match args.layout {
            Some(l) => {
                if l != Layout::Flat && shape.len() != 4 {
                    bail!(
                        "--layout {l:?} needs a 4-dimensional image input, but input '{}' has shape {}",
                        input.name,
                        model::shape_string(shape)
                    );
                }
                l
            }
            None => {
                guessed.push("layout".to_string());
                guess_layout(shape)
            }
        };
        let channels = match layout {
            Layout::Nchw => shape[1].fixed(),
            Layout::Nhwc => shape[3].fixed(),
            Layout::Flat => Some(1),
        };
        let range = match args.range {
            Some((lo, hi)) => {
                if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                    bail!("--input-range {lo},{hi} is not a valid range: it needs LO < HI");
                }
                (lo, hi)
            }
            None => {
                guessed.push("range".to_string());
                (0.0, 1.0)
            }
        };
        let (mean, std) = match (&args.mean, &args.std) {
            (None, None) => (vec![], vec![]),
            (m, s) => {
                let c = channels.ok_or_else(|| {
                    anyhow::anyhow!(
                        "--mean/--std need a fixed channel count, but input '{}' has shape {}",
                        input.name,
                        model::shape_string(shape)
                    )
                })?;
                let expand = |v: &Option<Vec<f32>>, flag: &str, default: f32| -> Result<Vec<f32>> {
                    match v {
                        None => Ok(vec![default; c]),
                        Some(v) if v.len() == 1 => Ok(vec![v[0]; c]),
                        Some(v) if v.len() == c => Ok(v.clone()),
                        Some(v) => bail!(
                            "{flag} has {} values but the input has {c} channels ({:?} layout, shape {})",
                            v.len(),
                            layout,
                            model::shape_string(shape)
                        ),
                    }
                };
                let mean = expand(m, "--mean", 0.0)?;
                let std = expand(s, "--std", 1.0)?;
                if let Some(bad) = std.iter().find(|s| !(s.is_finite() && **s != 0.0)) {
                    bail!("--std value {bad} is not usable: it must be finite and non-zero");
                }
                if let Some(bad) = mean.iter().find(|m| !m.is_finite()) {
                    bail!("--mean value {bad} is not finite");
                }
                (mean, std)
            }
        };
        Ok(InputSpec {
            input_name: input.name.clone(),
            model_shape: shape.clone(),
            layout,
            range,
            channels: channels.unwrap_or(1),
            mean,
            std,
            guessed,
        })
    }

    /// Takes the valid range from the data's declared bounds (vnnlib input boxes) when the
    /// user gave none.
    pub fn range_from_data(&mut self, (lo, hi): (f32, f32)) -> Result<()> {
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            bail!("the data declares an unusable value range [{lo}, {hi}]");
        }
        // A degenerate box still needs a non-empty range.
        let hi = if hi > lo { hi } else { lo + 1.0 };
        self.range = (lo, hi);
        if let Some(g) = self.guessed.iter_mut().find(|g| *g == "range") {
            *g = "range (from the data's declared bounds)".into();
        }
        Ok(())
    }

    /// The fixed batch size the model declares, if any.
    pub fn fixed_batch(&self) -> Option<usize> {
        self.model_shape[0].fixed()
    }

    /// The model with normalisation nodes in front of its input, so that it takes raw
    /// input. The input keeps its name; a dynamic batch dimension is named `N`.
    pub fn wrap(&self, model: &OnnxModel) -> Result<pb::ModelProto> {
        let mut proto = model.proto.clone();
        let Some(graph) = proto.graph.as_mut() else {
            bail!("model has no graph");
        };
        let Some(vi) = graph.input.iter_mut().find(|v| v.name == self.input_name) else {
            bail!("model has no input named '{}'", self.input_name);
        };
        let mut dims = self.model_shape.clone();
        if dims[0].fixed().is_none() {
            dims[0] = Dim::Symbolic("N".into());
        }
        model::set_value_shape(vi, &dims);
        if self.mean.is_empty() {
            return Ok(proto);
        }
        let raw = self.input_name.clone();
        let normalised = format!("{raw}__harden_normalised");
        for n in graph.node.iter_mut() {
            for i in n.input.iter_mut() {
                if *i == raw {
                    *i = normalised.clone();
                }
            }
        }
        let c = self.mean.len() as i64;
        let const_dims: Vec<i64> = match self.layout {
            Layout::Nchw => vec![c, 1, 1],
            Layout::Nhwc | Layout::Flat => vec![c],
        };
        let mean_name = format!("{raw}__harden_mean");
        let std_name = format!("{raw}__harden_std");
        let centred = format!("{raw}__harden_centred");
        graph
            .initializer
            .push(model::float_tensor(&mean_name, &const_dims, &self.mean));
        graph
            .initializer
            .push(model::float_tensor(&std_name, &const_dims, &self.std));
        let sub = model::node(
            "Sub",
            "harden_preprocess_sub",
            &[&raw, &mean_name],
            &[&centred],
        );
        let div = model::node(
            "Div",
            "harden_preprocess_div",
            &[&centred, &std_name],
            &[&normalised],
        );
        graph.node.insert(0, div);
        graph.node.insert(0, sub);
        Ok(proto)
    }
}

/// How one stored example becomes one model example.
#[derive(Clone, Debug, PartialEq)]
pub enum Arrange {
    /// Same element order: a reshape.
    Copy,
    /// Stored [H, W, C], model wants [C, H, W].
    HwcToChw { h: usize, w: usize, c: usize },
    /// Stored [C, H, W], model wants [H, W, C].
    ChwToHwc { h: usize, w: usize, c: usize },
}

/// Maps stored data onto the model's input: shape, order and value range.
#[derive(Clone, Debug)]
pub struct DataMapping {
    /// The model's example shape (without batch).
    pub example_shape: Vec<usize>,
    pub arrange: Arrange,
    pub kind: ValueKind,
    pub range: (f32, f32),
}

impl DataMapping {
    pub fn new(spec: &InputSpec, data_shape: &[usize], kind: ValueKind) -> Result<DataMapping> {
        let ms = &spec.model_shape[1..];
        let dcount: usize = data_shape.iter().product();
        let mismatch = || {
            anyhow::anyhow!(
                "data examples have shape {:?} ({} values) but model input '{}' expects {} per example",
                data_shape,
                dcount,
                spec.input_name,
                model::shape_string(ms)
            )
        };
        let fixed: Option<Vec<usize>> = ms.iter().map(|d| d.fixed()).collect();
        let example_shape = match fixed {
            Some(f) => f,
            None => {
                // Symbolic non-batch dims: take them from the data where ranks agree.
                if data_shape.len() != ms.len()
                    || ms
                        .iter()
                        .zip(data_shape)
                        .any(|(m, d)| m.fixed().is_some_and(|m| m != *d))
                {
                    return Err(mismatch());
                }
                data_shape.to_vec()
            }
        };
        let mcount: usize = example_shape.iter().product();
        if mcount != dcount {
            return Err(mismatch());
        }
        let arrange = match (spec.layout, data_shape, example_shape.as_slice()) {
            (Layout::Nchw, &[h, w, c], &[mc, mh, mw]) if c > 1 && (c, h, w) == (mc, mh, mw) => {
                Arrange::HwcToChw { h, w, c }
            }
            (Layout::Nhwc, &[c, h, w], &[mh, mw, mc]) if c > 1 && (c, h, w) == (mc, mh, mw) => {
                Arrange::ChwToHwc { h, w, c }
            }
            _ => Arrange::Copy,
        };
        Ok(DataMapping {
            example_shape,
            arrange,
            kind,
            range: spec.range,
        })
    }

    pub fn example_len(&self) -> usize {
        self.example_shape.iter().product()
    }

    /// Maps `n` stored examples (`src`, flattened) into model input values (`dst`).
    /// `first_index` numbers the examples in error messages.
    pub fn map_batch(&self, src: &[f32], dst: &mut Vec<f32>, first_index: usize) -> Result<()> {
        let len = self.example_len();
        dst.clear();
        dst.reserve(src.len());
        let (lo, hi) = self.range;
        for (k, ex) in src.chunks(len).enumerate() {
            let index = first_index + k;
            if let Some(pos) = ex.iter().position(|v| !v.is_finite()) {
                bail!(
                    "data example {index} has a non-finite value ({}) at position {pos}",
                    ex[pos]
                );
            }
            let start = dst.len();
            match self.arrange {
                Arrange::Copy => dst.extend_from_slice(ex),
                Arrange::HwcToChw { h, w, c } => {
                    for ch in 0..c {
                        for p in 0..h * w {
                            dst.push(ex[p * c + ch]);
                        }
                    }
                }
                Arrange::ChwToHwc { h, w, c } => {
                    for p in 0..h * w {
                        for ch in 0..c {
                            dst.push(ex[ch * h * w + p]);
                        }
                    }
                }
            }
            let out = &mut dst[start..];
            match self.kind {
                ValueKind::Pixel8 => {
                    let scale = (hi - lo) / 255.0;
                    for v in out.iter_mut() {
                        *v = lo + *v * scale;
                    }
                }
                ValueKind::Real => {
                    let tol = 1e-5 * (hi - lo).abs().max(1.0);
                    if let Some(v) = out.iter().find(|v| **v < lo - tol || **v > hi + tol) {
                        bail!(
                            "data example {index} has value {v} outside the input range [{lo}, {hi}]; pass --input-range to declare the model's valid range"
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(shape: Vec<Dim>) -> TensorInfo {
        TensorInfo {
            name: "x".into(),
            elem_type: "float".into(),
            shape,
        }
    }

    #[test]
    fn guesses_layouts() {
        use Dim::*;
        let n = || Symbolic("N".into());
        assert_eq!(
            guess_layout(&[n(), Fixed(1), Fixed(28), Fixed(28)]),
            Layout::Nchw
        );
        assert_eq!(
            guess_layout(&[n(), Fixed(32), Fixed(32), Fixed(3)]),
            Layout::Nhwc
        );
        assert_eq!(guess_layout(&[n(), Fixed(784)]), Layout::Flat);
    }

    #[test]
    fn hwc_data_is_transposed_for_nchw_models() {
        use Dim::*;
        let spec = InputSpec::resolve(
            &info(vec![Symbolic("N".into()), Fixed(3), Fixed(1), Fixed(2)]),
            &SpecArgs::default(),
        )
        .unwrap();
        let m = DataMapping::new(&spec, &[1, 2, 3], ValueKind::Pixel8).unwrap();
        assert_eq!(m.arrange, Arrange::HwcToChw { h: 1, w: 2, c: 3 });
        let mut out = vec![];
        // pixel (0,0) = [0, 51, 102], pixel (0,1) = [153, 204, 255]
        m.map_batch(&[0., 51., 102., 153., 204., 255.], &mut out, 0)
            .unwrap();
        let want = [0.0, 0.6, 0.2, 0.8, 0.4, 1.0];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn bad_flags_and_data_are_refused() {
        use Dim::*;
        let i = info(vec![Symbolic("N".into()), Fixed(3), Fixed(4), Fixed(4)]);
        let args = SpecArgs {
            mean: Some(vec![0.1, 0.2]),
            ..Default::default()
        };
        let e = InputSpec::resolve(&i, &args).unwrap_err().to_string();
        assert!(e.contains("--mean has 2 values"), "{e}");
        let args = SpecArgs {
            range: Some((1.0, 0.0)),
            ..Default::default()
        };
        assert!(InputSpec::resolve(&i, &args).is_err());
        let spec = InputSpec::resolve(&i, &SpecArgs::default()).unwrap();
        let e = DataMapping::new(&spec, &[28, 28], ValueKind::Pixel8)
            .unwrap_err()
            .to_string();
        assert!(e.contains("expects [3, 4, 4]"), "{e}");
        let m = DataMapping::new(&spec, &[48], ValueKind::Real).unwrap();
        let mut v = vec![0.5f32; 48];
        v[7] = f32::NAN;
        let e = m.map_batch(&v, &mut vec![], 3).unwrap_err().to_string();
        assert!(e.contains("example 3"), "{e}");
        v[7] = 2.0;
        let e = m.map_batch(&v, &mut vec![], 0).unwrap_err().to_string();
        assert!(e.contains("outside the input range"), "{e}");
    }
}
