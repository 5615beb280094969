//! The one list of ONNX ops harden handles.
//!
//! Every op a classifier may use is listed here with how harden treats it. `harden
//! inspect` names a model's ops that are missing from this list, and commands refuse
//! models that use them. Gradient rules (a later stage) are registered against this list.

/// How an op takes part in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpClass {
    /// Carries values that depend on the input: needs a backward rule.
    Differentiable,
    /// Computes shapes or constants only (Shape, Gather on shapes, Cast of shapes): no gradient.
    ShapeOnly,
}

/// Every supported `ai.onnx` op and its class.
pub const SUPPORTED_OPS: &[(&str, OpClass)] = {
    use OpClass::*;
    &[
        ("Add", Differentiable),
        ("AveragePool", Differentiable),
        ("BatchNormalization", Differentiable),
        ("Cast", ShapeOnly),
        ("Ceil", Differentiable),
        ("Clip", Differentiable),
        ("Concat", Differentiable),
        ("Constant", ShapeOnly),
        ("ConstantOfShape", ShapeOnly),
        ("Conv", Differentiable),
        ("Div", Differentiable),
        ("Dropout", Differentiable),
        ("Flatten", Differentiable),
        ("Floor", Differentiable),
        ("Gather", ShapeOnly),
        ("Gemm", Differentiable),
        ("GlobalAveragePool", Differentiable),
        ("Identity", Differentiable),
        ("LeakyRelu", Differentiable),
        ("LogSoftmax", Differentiable),
        ("MatMul", Differentiable),
        ("MaxPool", Differentiable),
        ("Mul", Differentiable),
        ("Pad", Differentiable),
        ("PRelu", Differentiable),
        ("RandomNormalLike", ShapeOnly),
        ("RandomUniformLike", ShapeOnly),
        ("ReduceMean", Differentiable),
        ("Relu", Differentiable),
        ("Reshape", Differentiable),
        ("Round", Differentiable),
        ("Shape", ShapeOnly),
        ("Sigmoid", Differentiable),
        ("Slice", Differentiable),
        ("Softmax", Differentiable),
        ("Squeeze", Differentiable),
        ("Sub", Differentiable),
        ("Tanh", Differentiable),
        ("Transpose", Differentiable),
        ("Unsqueeze", Differentiable),
    ]
};

/// The class of `op` in `domain`, or `None` when harden does not handle it.
pub fn class_of(domain: &str, op: &str) -> Option<OpClass> {
    if !(domain.is_empty() || domain == "ai.onnx") {
        return None;
    }
    SUPPORTED_OPS
        .iter()
        .find(|(name, _)| *name == op)
        .map(|(_, c)| *c)
}

pub fn is_supported(domain: &str, op: &str) -> bool {
    class_of(domain, op).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_is_sorted_and_unique() {
        for w in SUPPORTED_OPS.windows(2) {
            assert!(
                w[0].0.to_lowercase() < w[1].0.to_lowercase(),
                "{} / {}",
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
        assert!(!is_supported("", "Einsum"));
    }
}
