//! Writing `.npz` files (a zip of `.npy` arrays), for `harden attack --out`.

use std::io::{Cursor, Write};

use anyhow::Result;

/// One array to write: shape and values.
pub enum Array<'a> {
    F32(&'a [usize], &'a [f32]),
    I64(&'a [usize], &'a [i64]),
    Bool(&'a [usize], &'a [bool]),
}

/// An `.npy` (format 1.0) file for `a`.
pub fn npy_bytes(a: &Array<'_>) -> Vec<u8> {
    let (descr, shape, data): (&str, &[usize], Vec<u8>) = match a {
        Array::F32(s, v) => ("<f4", s, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Array::I64(s, v) => ("<i8", s, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
        Array::Bool(s, v) => ("|b1", s, v.iter().map(|b| *b as u8).collect()),
    };
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_str = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header =
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_str}, }}");
    // magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len());
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(&data);
    out
}

/// An `.npz` archive (stored, uncompressed) of the named arrays.
pub fn write_npz(arrays: &[(&str, Array<'_>)]) -> Result<Vec<u8>> {
    let mut zip = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    for (name, a) in arrays {
        zip.start_file(format!("{name}.npy"), opts)?;
        zip.write_all(&npy_bytes(a))?;
    }
    Ok(zip.finish()?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npz_round_trips_through_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npz");
        let x = [0.5f32, 1.0, 0.25, 0.0, 1.0, 0.75];
        let y = [3i64, 1];
        std::fs::write(
            &p,
            write_npz(&[("x", Array::F32(&[2, 3], &x)), ("y", Array::I64(&[2], &y))]).unwrap(),
        )
        .unwrap();
        let mut src = crate::data::open(p.to_str().unwrap(), None, None).unwrap();
        assert_eq!(src.example_shape(), &[3]);
        let (mut xs, mut ys) = (vec![], vec![]);
        assert_eq!(src.next_batch(10, &mut xs, &mut ys).unwrap(), 2);
        assert_eq!(xs, x);
        assert_eq!(ys, vec![Some(3), Some(1)]);
    }
}
