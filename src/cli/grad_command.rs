//! `harden grad`: writes a model's gradient graph.

use super::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LossArg {
    Ce,
    TargetedCe,
    Margin,
    Dlr,
    DlrTargeted,
    Kl,
    Linear,
}

#[derive(Args, Debug)]
pub struct GradArgs {
    /// The ONNX model.
    pub model: PathBuf,
    /// Where to write the gradient graph.
    #[arg(short, long)]
    pub output: PathBuf,
    /// The loss whose input gradient the graph computes.
    #[arg(long, value_enum, default_value = "ce")]
    pub loss: LossArg,
    /// Examples per run (the graph has static shapes).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[command(flatten)]
    pub input: InputArgs,
    #[command(flatten)]
    pub rounding: RoundingArgs,
}

pub(super) fn run(a: GradArgs) -> Result<i32> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let mut model = OnnxModel::load(&a.model)?;
    a.rounding.apply(&mut model);
    let info = model.classifier_input()?;
    let spec =
        InputSpec::resolve(&info, &a.input.to_spec_args()?).map_err(|e| a.input.explain(e))?;
    let example_shape = info.example_shape()?;
    let kind = match a.loss {
        LossArg::Ce => LossKind::CrossEntropy,
        LossArg::TargetedCe => LossKind::TargetedCrossEntropy,
        LossArg::Margin => LossKind::Margin,
        LossArg::Dlr => LossKind::Dlr,
        LossArg::DlrTargeted => LossKind::DlrTargeted,
        LossArg::Kl => LossKind::Kl,
        LossArg::Linear => LossKind::Linear,
    };
    let mut proto = spec.wrap(&model)?;
    if let (Some(b), true) = (spec.fixed_batch(), a.batch > 1) {
        if a.batch != b {
            proto = crate::model::free_batch(&proto, &spec.input_name)
                .ok_or_else(|| anyhow!("cannot change the model's fixed batch {b}"))?;
        }
    }
    let g =
        crate::autodiff::gradient_graph(&proto, &spec.input_name, &example_shape, a.batch, kind)?;
    write_atomic(&a.output, &prost::Message::encode_to_vec(&g.proto))?;
    print_stdout(&format!(
        "wrote {}: inputs {} [{}, ...]{}, outputs {} [{}, {}], {} [{}], {} (d loss / d input)\n",
        a.output.display(),
        spec.input_name,
        a.batch,
        match g.head_inputs {
            2 => format!(
                ", {} and {} [{}, {}]",
                crate::autodiff::HEAD_A,
                crate::autodiff::HEAD_B,
                a.batch,
                g.num_classes
            ),
            _ => format!(
                ", {} [{}, {}]",
                crate::autodiff::HEAD_A,
                a.batch,
                g.num_classes
            ),
        },
        crate::autodiff::LOGITS,
        a.batch,
        g.num_classes,
        crate::autodiff::LOSS,
        a.batch,
        crate::autodiff::GRAD
    ))?;
    Ok(EXIT_OK)
}
