//! NumPy `.npy` (format versions 1, 2, 3) and `.npz` (zip of `.npy` members).
//!
//! Supported dtypes: little-endian `f4`, `f8`, `u1`, `i4`, `i8`; C order only. The
//! first axis is the example axis. A `.npy` file is streamed row by row; an `.npz`
//! member is decompressed into memory once and then streamed from there.

use super::{DataSource, ValueKind};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::{self, BufReader, Cursor, Read};
use std::path::Path;

/// Element types this reader understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    U8,
    I32,
    I64,
    F32,
    F64,
}

impl Dtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::U8 => 1,
            Dtype::I32 | Dtype::F32 => 4,
            Dtype::I64 | Dtype::F64 => 8,
        }
    }
    fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F64)
    }
    fn parse(descr: &str, name: &str) -> Result<Dtype> {
        let little = cfg!(target_endian = "little");
        let (order, code) = descr.split_at(descr.len().min(1));
        let ok_order = match order {
            "<" | "|" => true,
            "=" => little,
            _ => false,
        };
        let dt = match code {
            "u1" | "B" => Some(Dtype::U8),
            "i4" => Some(Dtype::I32),
            "i8" => Some(Dtype::I64),
            "f4" => Some(Dtype::F32),
            "f8" => Some(Dtype::F64),
            _ => None,
        };
        match (ok_order, dt) {
            (true, Some(d)) => Ok(d),
            (false, Some(_)) => bail!("data: {name} has big-endian dtype '{descr}'; only little-endian arrays are supported"),
            _ => bail!("data: {name} has unsupported dtype '{descr}' (supported: f4, f8, u1, i4, i8, little-endian)"),
        }
    }
}

/// Parsed `.npy` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Bytes from the start of the file to the first data byte.
    pub data_offset: usize,
}

impl NpyHeader {
    /// Number of elements.
    pub fn count(&self, name: &str) -> Result<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| anyhow!("data: {name} has absurd shape {:?}", self.shape))
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8], name: &str, what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            anyhow!("data: {name} is truncated (ended inside {what})")
        } else {
            anyhow!("data: cannot read {name}: {e}")
        }
    })
}

/// Reads and parses a `.npy` header from `r` (left positioned at the data).
/// `name` names the file (and member) in error messages.
pub fn read_npy_header(r: &mut dyn Read, name: &str) -> Result<NpyHeader> {
    let mut pre = [0u8; 8];
    read_full(r, &mut pre, name, "the header")?;
    if &pre[..6] != b"\x93NUMPY" {
        bail!("data: {name} is not a .npy file (bad magic bytes)");
    }
    let (len, fixed) = match pre[6] {
        1 => {
            let mut l = [0u8; 2];
            read_full(r, &mut l, name, "the header")?;
            (u16::from_le_bytes(l) as usize, 10)
        }
        2 | 3 => {
            let mut l = [0u8; 4];
            read_full(r, &mut l, name, "the header")?;
            (u32::from_le_bytes(l) as usize, 12)
        }
        v => bail!("data: {name} has unsupported .npy format version {v}"),
    };
    if len > 1 << 24 {
        bail!("data: {name} has an absurd .npy header length {len}");
    }
    let mut text = vec![0u8; len];
    read_full(r, &mut text, name, "the header")?;
    let text =
        String::from_utf8(text).map_err(|_| anyhow!("data: {name} has a non-text .npy header"))?;
    let (descr, fortran, shape) = parse_header_dict(&text)
        .map_err(|e| anyhow!("data: {name} has a bad .npy header ({e}): {}", text.trim()))?;
    if fortran {
        bail!("data: {name} is stored in Fortran order; only C order is supported (save it with np.ascontiguousarray)");
    }
    let dtype = Dtype::parse(&descr, name)?;
    Ok(NpyHeader {
        dtype,
        shape,
        data_offset: fixed + len,
    })
}

/// Parses the Python dict literal of a `.npy` header into (descr, fortran_order, shape).
fn parse_header_dict(s: &str) -> std::result::Result<(String, bool, Vec<usize>), String> {
    let b = s.as_bytes();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] as char).is_ascii_whitespace() {
            *i += 1;
        }
    };
    let string = |i: &mut usize| -> std::result::Result<String, String> {
        let q = b[*i];
        if q != b'\'' && q != b'"' {
            return Err("expected a quoted string".into());
        }
        let start = *i + 1;
        let end = s[start..].find(q as char).ok_or("unterminated string")? + start;
        *i = end + 1;
        Ok(s[start..end].to_string())
    };
    ws(&mut i);
    if i >= b.len() || b[i] != b'{' {
        return Err("expected '{'".into());
    }
    i += 1;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    loop {
        ws(&mut i);
        if i >= b.len() {
            return Err("unterminated dict".into());
        }
        if b[i] == b'}' {
            break;
        }
        let key = string(&mut i)?;
        ws(&mut i);
        if i >= b.len() || b[i] != b':' {
            return Err("expected ':'".into());
        }
        i += 1;
        ws(&mut i);
        if i >= b.len() {
            return Err("missing value".into());
        }
        match b[i] {
            b'\'' | b'"' => {
                let v = string(&mut i)?;
                if key == "descr" {
                    descr = Some(v);
                }
            }
            b'(' => {
                let end = s[i..].find(')').ok_or("unterminated tuple")? + i;
                let mut dims = Vec::new();
                for part in s[i + 1..end].split(',') {
                    let p = part.trim().trim_end_matches('L');
                    if p.is_empty() {
                        continue;
                    }
                    dims.push(
                        p.parse::<usize>()
                            .map_err(|_| format!("bad dimension '{p}'"))?,
                    );
                }
                i = end + 1;
                if key == "shape" {
                    shape = Some(dims);
                }
            }
            b'[' => return Err(format!("structured dtype in '{key}' is not supported")),
            _ => {
                let end = s[i..].find([',', '}']).map(|k| k + i).unwrap_or(b.len());
                let v = s[i..end].trim();
                let val = match v {
                    "True" => true,
                    "False" => false,
                    _ => return Err(format!("unexpected value '{v}'")),
                };
                if key == "fortran_order" {
                    fortran = Some(val);
                }
                i = end;
            }
        }
        ws(&mut i);
        if i < b.len() && b[i] == b',' {
            i += 1;
        }
    }
    Ok((
        descr.ok_or("no 'descr'")?,
        fortran.ok_or("no 'fortran_order'")?,
        shape.ok_or("no 'shape'")?,
    ))
}

/// Decodes little-endian elements into f32, appending to `out`.
fn decode_into(dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) {
    match dtype {
        Dtype::U8 => out.extend(bytes.iter().map(|&v| v as f32)),
        Dtype::I32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32),
        ),
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        Dtype::I64 => {
            out.extend(bytes.chunks_exact(8).map(|c| {
                i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
            }))
        }
        Dtype::F64 => {
            out.extend(bytes.chunks_exact(8).map(|c| {
                f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
            }))
        }
    }
}

/// Reads a whole label array (shape `(N,)` or `(N, 1)`) and validates every value.
fn read_labels(r: &mut dyn Read, name: &str) -> Result<Vec<usize>> {
    let h = read_npy_header(r, name)?;
    let ok_shape = h.shape.len() == 1 || (h.shape.len() == 2 && h.shape[1] == 1);
    if !ok_shape {
        bail!(
            "data: labels {name} have shape {:?}; expected (N,) or (N, 1)",
            h.shape
        );
    }
    let n = h.shape[0];
    let want = (n as u64).saturating_mul(h.dtype.size() as u64);
    let mut bytes = Vec::new();
    r.take(want)
        .read_to_end(&mut bytes)
        .map_err(|e| anyhow!("data: cannot read {name}: {e}"))?;
    if (bytes.len() as u64) < want {
        bail!("data: {name} is truncated (ended inside the labels)");
    }
    let mut extra = [0u8; 1];
    if r.read(&mut extra)
        .map_err(|e| anyhow!("data: cannot read {name}: {e}"))?
        != 0
    {
        bail!("data: {name} has data after its {n} labels (trailing data)");
    }
    let mut out = Vec::with_capacity(bytes.len() / h.dtype.size());
    for (i, c) in bytes.chunks_exact(h.dtype.size()).enumerate() {
        let v: f64 = match h.dtype {
            Dtype::U8 => c[0] as f64,
            Dtype::I32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
            Dtype::I64 => {
                let v = i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                if v < 0 {
                    bail!("data: labels {name} hold a negative label {v} at index {i}");
                }
                if v > u32::MAX as i64 {
                    bail!("data: labels {name} hold an absurd label {v} at index {i}");
                }
                v as f64
            }
            Dtype::F32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
            Dtype::F64 => f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]),
        };
        if !v.is_finite() || v.fract() != 0.0 {
            bail!("data: labels {name} hold a non-integral label {v} at index {i}");
        }
        if v < 0.0 {
            bail!("data: labels {name} hold a negative label {v} at index {i}");
        }
        if v > u32::MAX as f64 {
            bail!("data: labels {name} hold an absurd label {v} at index {i}");
        }
        out.push(v as usize);
    }
    Ok(out)
}

/// `x` (and optional labels) from a `.npy` file or `.npz` archive, streamed in batches.
pub struct NpySource {
    name: String,
    label_name: Option<String>,
    dtype: Dtype,
    shape: Vec<usize>,
    row_bytes: usize,
    n: usize,
    pos: usize,
    reader: Box<dyn Read + Send>,
    labels: Option<Vec<usize>>,
    buf: Vec<u8>,
}

impl NpySource {
    /// A lone `.npy` file: examples without labels.
    pub fn open_npy(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let f = File::open(path).with_context(|| format!("data: cannot open {name}"))?;
        let file_len = f
            .metadata()
            .with_context(|| format!("data: cannot stat {name}"))?
            .len();
        let mut r = BufReader::with_capacity(1 << 16, f);
        let h = read_npy_header(&mut r, &name)?;
        Self::from_parts(name, h, Box::new(r), file_len, None, None)
    }

    /// An `.npz` archive with members `x` and (optionally) `y`.
    pub fn open_npz(path: &Path) -> Result<Self> {
        Self::open_npz_members(path, "x", Some("y"))
    }

    /// An `.npz` archive with the given member names (with or without `.npy`), e.g.
    /// Keras' `mnist.npz` with `x_test` / `y_test`. A missing `x` member is an error; a
    /// missing `y` member gives unlabelled examples.
    pub fn open_npz_members(path: &Path, x: &str, y: Option<&str>) -> Result<Self> {
        let pname = path.display().to_string();
        let f = File::open(path).with_context(|| format!("data: cannot open {pname}"))?;
        let mut zip = zip::ZipArchive::new(BufReader::new(f))
            .map_err(|e| anyhow!("data: {pname} is not a valid .npz (zip) archive: {e}"))?;
        let find = |zip: &zip::ZipArchive<BufReader<File>>, m: &str| -> Option<String> {
            let with = format!("{}.npy", m.trim_end_matches(".npy"));
            zip.file_names()
                .find(|n| *n == with || *n == m)
                .map(str::to_string)
        };
        let Some(xm) = find(&zip, x) else {
            let members: Vec<&str> = zip.file_names().collect();
            bail!(
                "data: {pname} has no member '{x}' (members: {})",
                members.join(", ")
            );
        };
        let read_member =
            |zip: &mut zip::ZipArchive<BufReader<File>>, m: &str| -> Result<Vec<u8>> {
                let mut file = zip
                    .by_name(m)
                    .map_err(|e| anyhow!("data: cannot read member {m} of {pname}: {e}"))?;
                let mut v = Vec::with_capacity(file.size().min(1 << 28) as usize);
                file.read_to_end(&mut v)
                    .map_err(|e| anyhow!("data: cannot decompress member {m} of {pname}: {e}"))?;
                Ok(v)
            };
        let (labels, label_name) = match y.and_then(|y| find(&zip, y)) {
            Some(ym) => {
                let bytes = read_member(&mut zip, &ym)?;
                let lname = format!("{pname}:{ym}");
                (
                    Some(read_labels(&mut Cursor::new(bytes), &lname)?),
                    Some(lname),
                )
            }
            None => (None, None),
        };
        let bytes = read_member(&mut zip, &xm)?;
        let len = bytes.len() as u64;
        let name = format!("{pname}:{xm}");
        let mut cur = Cursor::new(bytes);
        let h = read_npy_header(&mut cur, &name)?;
        Self::from_parts(name, h, Box::new(cur), len, labels, label_name)
    }

    fn from_parts(
        name: String,
        h: NpyHeader,
        reader: Box<dyn Read + Send>,
        total_len: u64,
        labels: Option<Vec<usize>>,
        label_name: Option<String>,
    ) -> Result<Self> {
        if h.shape.is_empty() {
            bail!(
                "data: {name} holds a scalar; expected an array whose first axis indexes examples"
            );
        }
        let count = h.count(&name)?;
        let data_len = (count as u64)
            .checked_mul(h.dtype.size() as u64)
            .ok_or_else(|| anyhow!("data: {name} has absurd shape {:?}", h.shape))?;
        let have = total_len.saturating_sub(h.data_offset as u64);
        if have != data_len {
            bail!(
                "data: {name} should hold {data_len} data bytes for shape {:?} but has {have}{}",
                h.shape,
                if have < data_len {
                    " (truncated)"
                } else {
                    " (trailing data)"
                }
            );
        }
        let n = h.shape[0];
        let shape = h.shape[1..].to_vec();
        let row_bytes = shape
            .iter()
            .try_fold(h.dtype.size(), |a, &d| a.checked_mul(d))
            .ok_or_else(|| anyhow!("data: {name} has absurd shape {:?}", h.shape))?;
        if let Some(l) = &labels {
            if l.len() != n {
                bail!(
                    "data: labels {} have {} labels but {name} has {n} examples",
                    label_name.as_deref().unwrap_or("?"),
                    l.len()
                );
            }
        }
        Ok(NpySource {
            name,
            label_name,
            dtype: h.dtype,
            shape,
            row_bytes,
            n,
            pos: 0,
            reader,
            labels,
            buf: Vec::new(),
        })
    }

    /// The element type of `x`.
    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
}

impl DataSource for NpySource {
    fn example_shape(&self) -> &[usize] {
        &self.shape
    }
    fn kind(&self) -> ValueKind {
        if self.dtype == Dtype::U8 {
            ValueKind::Pixel8
        } else {
            ValueKind::Real
        }
    }
    fn len(&self) -> Option<usize> {
        Some(self.n)
    }
    fn describe(&self) -> String {
        format!(
            "npy {} ({} examples of {:?}, {:?}{})",
            self.name,
            self.n,
            self.shape,
            self.dtype,
            match &self.label_name {
                Some(l) => format!(", labels {l}"),
                None => ", no labels".to_string(),
            }
        )
    }
    fn next_batch(
        &mut self,
        n: usize,
        xs: &mut Vec<f32>,
        ys: &mut Vec<Option<usize>>,
    ) -> Result<usize> {
        let k = n.min(self.n - self.pos);
        if k == 0 {
            return Ok(0);
        }
        self.buf.resize(k * self.row_bytes, 0);
        read_full(
            &mut self.reader,
            &mut self.buf,
            &self.name,
            &format!("example {}", self.pos),
        )?;
        let start = xs.len();
        decode_into(self.dtype, &self.buf, xs);
        if self.dtype.is_float() {
            if let Some(bad) = xs[start..].iter().position(|v| !v.is_finite()) {
                let row = self.pos + bad / (self.row_bytes / self.dtype.size()).max(1);
                xs.truncate(start);
                bail!("data: {} holds a non-finite value (NaN/inf, or beyond f32 range) in example {row}", self.name);
            }
        }
        match &self.labels {
            Some(l) => ys.extend(l[self.pos..self.pos + k].iter().map(|&v| Some(v))),
            None => ys.extend(std::iter::repeat_n(None, k)),
        }
        self.pos += k;
        Ok(k)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Bytes of a `.npy` file (format version `ver`).
    pub(crate) fn npy_bytes(
        descr: &str,
        shape: &[usize],
        fortran: bool,
        data: &[u8],
        ver: u8,
    ) -> Vec<u8> {
        let shape_s = match shape.len() {
            1 => format!("({},)", shape[0]),
            _ => format!(
                "({})",
                shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let f = if fortran { "True" } else { "False" };
        let mut dict =
            format!("{{'descr': '{descr}', 'fortran_order': {f}, 'shape': {shape_s}, }}");
        let pre = if ver == 1 { 10 } else { 12 };
        while (pre + dict.len() + 1) % 64 != 0 {
            dict.push(' ');
        }
        dict.push('\n');
        let mut v = b"\x93NUMPY".to_vec();
        v.push(ver);
        v.push(0);
        if ver == 1 {
            v.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        } else {
            v.extend_from_slice(&(dict.len() as u32).to_le_bytes());
        }
        v.extend_from_slice(dict.as_bytes());
        v.extend_from_slice(data);
        v
    }

    pub(crate) fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }
    pub(crate) fn i64s(v: &[i64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    pub(crate) fn write_npz(path: &Path, members: &[(&str, Vec<u8>)]) {
        let f = File::create(path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in members {
            z.start_file(*name, opts).unwrap();
            z.write_all(bytes).unwrap();
        }
        z.finish().unwrap();
    }

    fn drain(src: &mut dyn DataSource) -> Result<(Vec<f32>, Vec<Option<usize>>)> {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        while src.next_batch(2, &mut xs, &mut ys)? > 0 {}
        Ok((xs, ys))
    }

    #[test]
    fn npy_versions_and_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        for ver in [1, 2, 3] {
            std::fs::write(
                &p,
                npy_bytes("<f4", &[3, 2], false, &f32s(&[0., 1., 2., 3., 4., 5.]), ver),
            )
            .unwrap();
            let mut s = NpySource::open_npy(&p).unwrap();
            assert_eq!(s.example_shape(), &[2]);
            assert_eq!(s.kind(), ValueKind::Real);
            let (xs, ys) = drain(&mut s).unwrap();
            assert_eq!(xs, vec![0., 1., 2., 3., 4., 5.]);
            assert_eq!(ys, vec![None; 3]);
        }
        let f64b: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        std::fs::write(&p, npy_bytes("<f8", &[2], false, &f64b, 1)).unwrap();
        let (xs, _) = drain(&mut NpySource::open_npy(&p).unwrap()).unwrap();
        assert_eq!(xs, vec![1.5, -2.0]);
        std::fs::write(
            &p,
            npy_bytes("|u1", &[1, 2, 2], false, &[0, 1, 254, 255], 1),
        )
        .unwrap();
        let mut s = NpySource::open_npy(&p).unwrap();
        assert_eq!(s.kind(), ValueKind::Pixel8);
        assert_eq!(drain(&mut s).unwrap().0, vec![0., 1., 254., 255.]);
        std::fs::write(
            &p,
            npy_bytes("<i4", &[2, 1], false, &[7, 0, 0, 0, 255, 255, 255, 255], 1),
        )
        .unwrap();
        assert_eq!(
            drain(&mut NpySource::open_npy(&p).unwrap()).unwrap().0,
            vec![7., -1.]
        );
    }

    #[test]
    fn npy_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        std::fs::write(&p, npy_bytes("<f4", &[2, 2], true, &f32s(&[0.; 4]), 1)).unwrap();
        let e = NpySource::open_npy(&p).err().unwrap().to_string();
        assert!(e.contains("Fortran order") && e.contains("a.npy"), "{e}");
        std::fs::write(&p, npy_bytes(">f4", &[2, 2], false, &f32s(&[0.; 4]), 1)).unwrap();
        let e = NpySource::open_npy(&p).err().unwrap().to_string();
        assert!(e.contains("big-endian"), "{e}");
        std::fs::write(&p, npy_bytes("<c8", &[2, 2], false, &f32s(&[0.; 8]), 1)).unwrap();
        assert!(NpySource::open_npy(&p)
            .err()
            .unwrap()
            .to_string()
            .contains("unsupported dtype"));
        std::fs::write(&p, npy_bytes("<f4", &[2, 2], false, &f32s(&[0.; 3]), 1)).unwrap();
        let e = NpySource::open_npy(&p).err().unwrap().to_string();
        assert!(e.contains("truncated"), "{e}");
        std::fs::write(&p, b"not numpy at all").unwrap();
        assert!(NpySource::open_npy(&p)
            .err()
            .unwrap()
            .to_string()
            .contains("not a .npy"));
        std::fs::write(
            &p,
            npy_bytes("<f4", &[1, 2], false, &f32s(&[0., f32::NAN]), 1),
        )
        .unwrap();
        let e = drain(&mut NpySource::open_npy(&p).unwrap())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("non-finite") && e.contains("example 0"), "{e}");
    }

    #[test]
    fn npz_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.npz");
        let x = npy_bytes("|u1", &[3, 2], false, &[1, 2, 3, 4, 5, 6], 1);
        write_npz(
            &p,
            &[
                ("x.npy", x.clone()),
                ("y.npy", npy_bytes("<i8", &[3], false, &i64s(&[2, 0, 1]), 1)),
            ],
        );
        let mut s = NpySource::open_npz(&p).unwrap();
        assert_eq!(s.kind(), ValueKind::Pixel8);
        let (xs, ys) = drain(&mut s).unwrap();
        assert_eq!(xs.len(), 6);
        assert_eq!(ys, vec![Some(2), Some(0), Some(1)]);
        // float labels with integral values, (N,1) shape
        write_npz(
            &p,
            &[
                ("x.npy", x.clone()),
                (
                    "y.npy",
                    npy_bytes("<f4", &[3, 1], false, &f32s(&[1., 2., 3.]), 1),
                ),
            ],
        );
        let (_, ys) = drain(&mut NpySource::open_npz(&p).unwrap()).unwrap();
        assert_eq!(ys, vec![Some(1), Some(2), Some(3)]);
        // custom member names
        write_npz(
            &p,
            &[
                ("x_test.npy", x.clone()),
                ("y_test.npy", npy_bytes("|u1", &[3], false, &[9, 8, 7], 1)),
            ],
        );
        let (_, ys) =
            drain(&mut NpySource::open_npz_members(&p, "x_test", Some("y_test")).unwrap()).unwrap();
        assert_eq!(ys, vec![Some(9), Some(8), Some(7)]);
    }

    #[test]
    fn npz_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.npz");
        let x = npy_bytes("<f4", &[3, 1], false, &f32s(&[1., 2., 3.]), 1);
        write_npz(
            &p,
            &[("y.npy", npy_bytes("<i8", &[3], false, &i64s(&[2, 0, 1]), 1))],
        );
        let e = NpySource::open_npz(&p).err().unwrap().to_string();
        assert!(e.contains("no member 'x'") && e.contains("y.npy"), "{e}");
        write_npz(
            &p,
            &[
                ("x.npy", x.clone()),
                (
                    "y.npy",
                    npy_bytes("<i8", &[3], false, &i64s(&[2, -1, 1]), 1),
                ),
            ],
        );
        let e = NpySource::open_npz(&p).err().unwrap().to_string();
        assert!(e.contains("negative label -1"), "{e}");
        write_npz(
            &p,
            &[
                ("x.npy", x.clone()),
                (
                    "y.npy",
                    npy_bytes("<f4", &[3], false, &f32s(&[1., 1.5, 0.]), 1),
                ),
            ],
        );
        let e = NpySource::open_npz(&p).err().unwrap().to_string();
        assert!(e.contains("non-integral label 1.5"), "{e}");
        write_npz(
            &p,
            &[
                ("x.npy", x.clone()),
                ("y.npy", npy_bytes("<i4", &[2], false, &[0; 8], 1)),
            ],
        );
        let e = NpySource::open_npz(&p).err().unwrap().to_string();
        assert!(
            e.contains("have 2 labels but") && e.contains("has 3 examples"),
            "{e}"
        );
        // a lying header must not make us allocate its claimed size
        write_npz(
            &p,
            &[
                ("x.npy", x.clone()),
                ("y.npy", npy_bytes("<i8", &[1 << 60], false, &[0; 16], 1)),
            ],
        );
        let e = NpySource::open_npz(&p).err().unwrap().to_string();
        assert!(e.contains("truncated") && e.contains("y.npy"), "{e}");
        let huge = 1usize << 40;
        write_npz(
            &p,
            &[("x.npy", npy_bytes("<f4", &[0, huge, huge], false, &[], 1))],
        );
        let e = NpySource::open_npz(&p).err().unwrap().to_string();
        assert!(e.contains("absurd shape"), "{e}");
        std::fs::write(&p, b"garbage").unwrap();
        assert!(NpySource::open_npz(&p)
            .err()
            .unwrap()
            .to_string()
            .contains("not a valid .npz"));
    }
}
