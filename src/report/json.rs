//! The report's JSON layout: pretty-printed (two-space indent, keys in declaration
//! order) except inside the arrays of per-example records (`per_example`, and a
//! comparison's `lost` examples), whose elements are written one per line, compact, so a
//! report of thousands of examples stays readable and small.

use std::io;

use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter, PrettyFormatter};

/// The keys whose array elements are written compact, one per line.
pub const ROWS_KEYS: [&str; 2] = ["per_example", "lost"];

/// `value` as pretty JSON with the elements of [`ROWS_KEYS`] arrays one per line.
pub fn to_string(value: &impl Serialize) -> serde_json::Result<String> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, RowsFormatter::default());
    value.serialize(&mut ser)?;
    // serde_json writes valid UTF-8.
    Ok(String::from_utf8(out).unwrap_or_default())
}

/// A `PrettyFormatter` that hands over to a `CompactFormatter` below a rows array.
#[derive(Default)]
struct RowsFormatter {
    pretty: PrettyFormatter<'static>,
    compact: CompactFormatter,
    /// Nesting depth of arrays and objects.
    depth: usize,
    /// Depth inside the current rows array (its elements open at this depth).
    rows_at: Option<usize>,
    /// The key being written, and whether it was the rows key.
    key: Option<String>,
    rows_next: bool,
}

impl RowsFormatter {
    /// Inside a row (containers opening or closing at the rows depth and below).
    fn in_row(&self) -> bool {
        self.rows_at.is_some_and(|d| self.depth >= d)
    }

    /// Strictly inside a row (separators between a row's own keys and values).
    fn inside_row(&self) -> bool {
        self.rows_at.is_some_and(|d| self.depth > d)
    }

    fn begin<W: ?Sized + io::Write>(&mut self, w: &mut W, array: bool) -> io::Result<()> {
        let r = if self.in_row() {
            if array {
                self.compact.begin_array(w)
            } else {
                self.compact.begin_object(w)
            }
        } else {
            if std::mem::take(&mut self.rows_next) && array {
                self.rows_at = Some(self.depth + 1);
            }
            if array {
                self.pretty.begin_array(w)
            } else {
                self.pretty.begin_object(w)
            }
        };
        self.depth += 1;
        r
    }

    fn end<W: ?Sized + io::Write>(&mut self, w: &mut W, array: bool) -> io::Result<()> {
        self.depth -= 1;
        if self.in_row() {
            return if array {
                self.compact.end_array(w)
            } else {
                self.compact.end_object(w)
            };
        }
        if self.rows_at == Some(self.depth + 1) {
            self.rows_at = None;
        }
        if array {
            self.pretty.end_array(w)
        } else {
            self.pretty.end_object(w)
        }
    }
}

impl Formatter for RowsFormatter {
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.begin(w, true)
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.end(w, true)
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.begin(w, false)
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.end(w, false)
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if self.inside_row() {
            self.compact.begin_array_value(w, first)
        } else {
            self.pretty.begin_array_value(w, first)
        }
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        if self.inside_row() {
            self.compact.end_array_value(w)
        } else {
            self.pretty.end_array_value(w)
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if self.inside_row() {
            self.compact.begin_object_key(w, first)
        } else {
            self.key = Some(String::new());
            self.pretty.begin_object_key(w, first)
        }
    }

    fn end_object_key<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        if let Some(k) = self.key.take() {
            self.rows_next = ROWS_KEYS.contains(&k.as_str());
        }
        if self.inside_row() {
            self.compact.end_object_key(w)
        } else {
            self.pretty.end_object_key(w)
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        if self.inside_row() {
            self.compact.begin_object_value(w)
        } else {
            self.pretty.begin_object_value(w)
        }
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        // A rows key whose value is not an array (null) leaves nothing pending.
        self.rows_next = false;
        if self.inside_row() {
            self.compact.end_object_value(w)
        } else {
            self.pretty.end_object_value(w)
        }
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if let Some(k) = self.key.as_mut() {
            k.push_str(fragment);
        }
        w.write_all(fragment.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_one_per_line_the_rest_pretty() {
        let v = serde_json::json!({
            "a": [1, 2],
            "per_example": [{"example": 0, "eps": [{"x": [1, 2]}]}, {"example": 1}],
            "b": {"per_example": [], "c": null},
        });
        let s = to_string(&v).unwrap();
        let want = "{\n  \"a\": [\n    1,\n    2\n  ],\n  \"per_example\": [\n    {\"example\":0,\"eps\":[{\"x\":[1,2]}]},\n    {\"example\":1}\n  ],\n  \"b\": {\n    \"per_example\": [],\n    \"c\": null\n  }\n}";
        assert_eq!(s, want);
        // Same value as the plain pretty form.
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
        // Pretty elsewhere: identical to serde_json's own without rows.
        let w = serde_json::json!({"x": [{"y": [1]}], "z": "per_example"});
        assert_eq!(
            to_string(&w).unwrap(),
            serde_json::to_string_pretty(&w).unwrap()
        );
    }
}
