//! The one list of ONNX ops harden handles.
//!
//! Every op a classifier may use is listed here with how harden treats it. `harden
//! inspect` names a model's ops that are missing from this list, and commands refuse
//! models that use them. The list is the registry of backward rules (`autodiff::rules`).

/// How an op takes part in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpClass {
    /// Carries values that depend on the input: needs a backward rule.
    Differentiable,
    /// Computes shapes or constants only (Shape, Gather on shapes, Cast of shapes): no gradient.
    ShapeOnly,
}

/// Every supported `ai.onnx` op and its class, sorted by name: the registry of backward
/// rules (`autodiff::rules`, one table per op family) is the one list.
pub fn supported_ops() -> Vec<(&'static str, OpClass)> {
    let mut v: Vec<(&'static str, OpClass)> = crate::autodiff::registered_ops().collect();
    v.sort_by_key(|(op, _)| op.to_lowercase());
    v
}

/// The class of `op` in `domain`, or `None` when harden does not handle it.
pub fn class_of(domain: &str, op: &str) -> Option<OpClass> {
    if !(domain.is_empty() || domain == "ai.onnx") {
        return None;
    }
    crate::autodiff::registered_ops()
        .find(|(name, _)| *name == op)
        .map(|(_, c)| c)
}

pub fn is_supported(domain: &str, op: &str) -> bool {
    class_of(domain, op).is_some()
}

/// The architectures in which an op is usually met, for messages about ops harden lacks.
pub fn usual_architectures(op: &str) -> Option<&'static str> {
    Some(match op {
        "HardSwish" | "HardSigmoid" => "MobileNetV3 (hard-swish activations, SE blocks)",
        "Erf" | "Gelu" => "ConvNeXt, ViT, DeiT, Swin (GELU activations)",
        "LayerNormalization" => "ConvNeXt, ViT, DeiT, Swin",
        "Einsum" | "Sqrt" | "Pow" | "ReduceMax" | "ReduceSum" => {
            "transformers (attention, hand-written normalisation)"
        }
        "Softplus" | "Mish" => "YOLO-style and Mish-activated CNNs",
        "Elu" | "Selu" | "Celu" => "self-normalising and ELU networks",
        "Resize" | "Upsample" | "DepthToSpace" | "SpaceToDepth" => {
            "segmentation-style heads and space-to-depth stems"
        }
        "InstanceNormalization" | "GroupNormalization" => "GroupNorm/InstanceNorm CNNs",
        "Split" | "Expand" | "Tile" | "Where" | "Range" | "ScatterND" | "CumSum" => {
            "exporter shape code (Swin window shifts, ViT class tokens)"
        }
        "Hardmax" | "ArgMax" | "TopK" => "models that end in a decision rather than scores",
        "QuantizeLinear" | "DequantizeLinear" | "QLinearConv" | "QLinearMatMul" | "ConvInteger"
        | "MatMulInteger" => "INT8 quantized models",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_are_unique() {
        // Sorted by name ignoring case, and unique even ignoring case.
        let ops = supported_ops();
        for w in ops.windows(2) {
            let (a, b) = (w[0].0.to_lowercase(), w[1].0.to_lowercase());
            assert!(
                a < b,
                "{} / {}: out of order or registered twice",
                w[0].0,
                w[1].0
            );
        }
    }

    #[test]
    fn other_domains_are_unsupported() {
        assert!(is_supported("", "Conv"));
        assert!(is_supported("ai.onnx", "Conv"));
        assert!(!is_supported("com.microsoft", "Conv"));
        assert!(!is_supported("", "Loop"));
    }
}
