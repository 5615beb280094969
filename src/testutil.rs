//! Helpers shared by the unit tests.

/// Asserts that `got` equals `want` entry by entry within `rel` of the larger of `want`'s
/// largest magnitude and 1e-3; `what` names the values in the failure message.
pub fn assert_close(want: &[f32], got: &[f32], rel: f32, what: &str) {
    assert_eq!(want.len(), got.len(), "{what}: lengths differ");
    let scale = want.iter().fold(1e-3f32, |m, v| m.max(v.abs()));
    for (i, (u, v)) in want.iter().zip(got).enumerate() {
        assert!((u - v).abs() <= rel * scale, "{what}[{i}]: {u} vs {v}");
    }
}
