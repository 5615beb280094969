//! MNIST-layout IDX files (`*-images-idx3-ubyte[.gz]` + `*-labels-idx1-ubyte[.gz]`).
//!
//! Only unsigned-byte IDX data (element type 0x08) is supported. Images may have any
//! number of dimensions past the example axis (`idx3`: N,H,W; `idx4`: N,H,W,C; ...).
//! Gzip is detected by the magic bytes `1f 8b`, not by the file name. The images file
//! is streamed; the labels (one byte each) are read at open.

use super::{DataSource, ValueKind};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

/// IDX element type for unsigned bytes.
const TYPE_U8: u8 = 0x08;

/// Whether the file starts with the gzip magic bytes `1f 8b`.
pub fn is_gzip(path: &Path) -> Result<bool> {
    let mut f =
        File::open(path).with_context(|| format!("data: cannot open {}", path.display()))?;
    let mut magic = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        let k = f
            .read(&mut magic[got..])
            .with_context(|| format!("data: cannot read {}", path.display()))?;
        if k == 0 {
            return Ok(false);
        }
        got += k;
    }
    Ok(magic == [0x1f, 0x8b])
}

/// Opens a file for reading, transparently decompressing gzip.
fn open_reader(path: &Path) -> Result<(Box<dyn Read + Send>, bool)> {
    let gz = is_gzip(path)?;
    let f = File::open(path).with_context(|| format!("data: cannot open {}", path.display()))?;
    let r = BufReader::with_capacity(1 << 16, f);
    if gz {
        Ok((
            Box::new(BufReader::with_capacity(
                1 << 16,
                flate2::read::MultiGzDecoder::new(r),
            )),
            true,
        ))
    } else {
        Ok((Box::new(r), false))
    }
}

/// Reads exactly `buf.len()` bytes; a short read becomes a "truncated" error naming the file.
fn read_full(r: &mut dyn Read, buf: &mut [u8], path: &Path, what: &str) -> Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            anyhow!(
                "data: IDX file {} is truncated (ended inside {what})",
                path.display()
            )
        } else {
            anyhow!("data: cannot read IDX file {}: {e}", path.display())
        }
    })
}

/// The header of an IDX file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxHeader {
    /// Element type byte (0x08 = u8).
    pub elem_type: u8,
    /// All dimensions, the first being the number of examples.
    pub dims: Vec<usize>,
}

impl IdxHeader {
    /// Size of the header in bytes.
    pub fn byte_len(&self) -> u64 {
        4 + 4 * self.dims.len() as u64
    }
}

fn read_header(r: &mut dyn Read, path: &Path) -> Result<IdxHeader> {
    let mut magic = [0u8; 4];
    read_full(r, &mut magic, path, "the header")?;
    if magic[0] != 0 || magic[1] != 0 || magic[3] == 0 {
        bail!(
            "data: {} is not an IDX file (magic bytes {:02x} {:02x} {:02x} {:02x}, expected 00 00 08 0N)",
            path.display(),
            magic[0],
            magic[1],
            magic[2],
            magic[3]
        );
    }
    if magic[2] != TYPE_U8 {
        bail!(
            "data: IDX file {} has element type 0x{:02x}; only unsigned bytes (0x08) are supported",
            path.display(),
            magic[2]
        );
    }
    let ndim = magic[3] as usize;
    let mut dims = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        let mut d = [0u8; 4];
        read_full(r, &mut d, path, "the header")?;
        dims.push(u32::from_be_bytes(d) as usize);
    }
    Ok(IdxHeader {
        elem_type: magic[2],
        dims,
    })
}

/// Reads only the header of an IDX file (gzipped or not).
pub fn read_idx_header(path: &Path) -> Result<IdxHeader> {
    let (mut r, _) = open_reader(path)?;
    read_header(&mut r, path)
}

/// Cheap check: does the file (after gunzip) start like an IDX file?
pub fn sniff_idx(path: &Path) -> bool {
    let Ok((mut r, _)) = open_reader(path) else {
        return false;
    };
    let mut magic = [0u8; 4];
    if r.read_exact(&mut magic).is_err() {
        return false;
    }
    magic[0] == 0
        && magic[1] == 0
        && (1..=8).contains(&magic[3])
        && (0x08..=0x0e).contains(&magic[2])
}

/// Number of bytes a reader yields until EOF.
fn count_remaining(r: &mut dyn Read, path: &Path) -> Result<u64> {
    io::copy(r, &mut io::sink())
        .with_context(|| format!("data: cannot read IDX file {}", path.display()))
}

/// Reads a labels (idx1, u8) file whole and validates its length.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let (mut r, _) = open_reader(path)?;
    let h = read_header(&mut r, path)?;
    if h.dims.len() != 1 {
        bail!(
            "data: labels file {} has {} dimensions; a labels file (idx1) must have exactly 1",
            path.display(),
            h.dims.len()
        );
    }
    let n = h.dims[0];
    let mut labels = Vec::new();
    (&mut r)
        .take(n as u64)
        .read_to_end(&mut labels)
        .with_context(|| format!("data: cannot read IDX file {}", path.display()))?;
    if labels.len() < n {
        bail!(
            "data: labels file {} is truncated (header says {n} labels, file holds {})",
            path.display(),
            labels.len()
        );
    }
    let extra = count_remaining(&mut r, path)?;
    if extra != 0 {
        bail!(
            "data: labels file {} has {extra} bytes after its {n} labels (corrupt or not a labels file)",
            path.display()
        );
    }
    Ok(labels)
}

/// An images IDX file streamed in batches, with optional labels.
pub struct IdxSource {
    images_path: PathBuf,
    labels_path: Option<PathBuf>,
    shape: Vec<usize>,
    example_len: usize,
    n: usize,
    pos: usize,
    reader: Box<dyn Read + Send>,
    labels: Option<Vec<u8>>,
    buf: Vec<u8>,
}

impl IdxSource {
    /// Opens an images file and (optionally) its labels file; validates magic numbers,
    /// dimensions, counts and file lengths up front (a gzipped images file is
    /// decompressed once, without keeping it, to check its length).
    pub fn open(images: &Path, labels: Option<&Path>) -> Result<Self> {
        let (mut reader, gz) = open_reader(images)?;
        let h = read_header(&mut reader, images)?;
        if h.dims.len() < 2 {
            bail!(
                "data: {} is a 1-dimensional IDX file (labels?), not an images file",
                images.display()
            );
        }
        let n = h.dims[0];
        let shape = h.dims[1..].to_vec();
        if shape.contains(&0) {
            bail!(
                "data: images file {} has a zero dimension in {:?}",
                images.display(),
                h.dims
            );
        }
        let example_len = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                anyhow!(
                    "data: images file {} has absurd dimensions {:?}",
                    images.display(),
                    h.dims
                )
            })?;
        let expected = (n as u64).checked_mul(example_len as u64).ok_or_else(|| {
            anyhow!(
                "data: images file {} has absurd dimensions {:?}",
                images.display(),
                h.dims
            )
        })?;
        let actual = if gz {
            let (mut r2, _) = open_reader(images)?;
            read_header(&mut r2, images)?;
            count_remaining(&mut r2, images)?
        } else {
            let len = std::fs::metadata(images)
                .with_context(|| format!("data: cannot stat {}", images.display()))?
                .len();
            len.saturating_sub(h.byte_len())
        };
        if actual != expected {
            bail!(
                "data: images file {} should hold {n} images of {shape:?} ({expected} bytes of pixels) but has {actual} bytes{}",
                images.display(),
                if actual < expected { " (truncated)" } else { " (trailing data)" }
            );
        }
        let labels_vec = match labels {
            Some(lp) => {
                let l = read_idx_labels(lp)?;
                if l.len() != n {
                    bail!(
                        "data: labels file {} has {} labels but images file {} has {n} images",
                        lp.display(),
                        l.len(),
                        images.display()
                    );
                }
                Some(l)
            }
            None => None,
        };
        Ok(IdxSource {
            images_path: images.to_path_buf(),
            labels_path: labels.map(Path::to_path_buf),
            shape,
            example_len,
            n,
            pos: 0,
            reader,
            labels: labels_vec,
            buf: Vec::new(),
        })
    }
}

impl DataSource for IdxSource {
    fn example_shape(&self) -> &[usize] {
        &self.shape
    }
    fn kind(&self) -> ValueKind {
        ValueKind::Pixel8
    }
    fn len(&self) -> Option<usize> {
        Some(self.n)
    }
    fn describe(&self) -> String {
        match &self.labels_path {
            Some(l) => format!(
                "IDX {} + {} ({} examples of {:?}, u8 pixels)",
                self.images_path.display(),
                l.display(),
                self.n,
                self.shape
            ),
            None => format!(
                "IDX {} ({} examples of {:?}, u8 pixels, no labels)",
                self.images_path.display(),
                self.n,
                self.shape
            ),
        }
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
        self.buf.resize(k * self.example_len, 0);
        let what = format!("example {}", self.pos);
        read_full(&mut self.reader, &mut self.buf, &self.images_path, &what)?;
        xs.extend(self.buf.iter().map(|&b| b as f32));
        match &self.labels {
            Some(l) => ys.extend(l[self.pos..self.pos + k].iter().map(|&v| Some(v as usize))),
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

    /// Bytes of an IDX u8 file with the given dims and data.
    pub(crate) fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = vec![0, 0, 8, dims.len() as u8];
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    pub(crate) fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// Writes a tiny MNIST-like pair (n images of 2x3) into `dir` with the given prefix.
    pub(crate) fn write_pair(dir: &Path, prefix: &str, n: u32, gzip: bool) -> (PathBuf, PathBuf) {
        let pixels: Vec<u8> = (0..n * 6).map(|i| (i % 256) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let mut img = idx_bytes(&[n, 2, 3], &pixels);
        let mut lab = idx_bytes(&[n], &labels);
        let ext = if gzip { ".gz" } else { "" };
        if gzip {
            img = gz(&img);
            lab = gz(&lab);
        }
        let ip = dir.join(format!("{prefix}-images-idx3-ubyte{ext}"));
        let lp = dir.join(format!("{prefix}-labels-idx1-ubyte{ext}"));
        std::fs::write(&ip, img).unwrap();
        std::fs::write(&lp, lab).unwrap();
        (ip, lp)
    }

    fn drain(src: &mut dyn DataSource, batch: usize) -> Result<(Vec<f32>, Vec<Option<usize>>)> {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        while src.next_batch(batch, &mut xs, &mut ys)? > 0 {}
        Ok((xs, ys))
    }

    #[test]
    fn reads_plain_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        for gzip in [false, true] {
            let (ip, lp) = write_pair(dir.path(), if gzip { "g" } else { "p" }, 5, gzip);
            let mut s = IdxSource::open(&ip, Some(&lp)).unwrap();
            assert_eq!(s.example_shape(), &[2, 3]);
            assert_eq!(s.len(), Some(5));
            assert_eq!(s.kind(), ValueKind::Pixel8);
            let (xs, ys) = drain(&mut s, 2).unwrap();
            assert_eq!(xs.len(), 30);
            assert_eq!(xs[7], 7.0);
            assert_eq!(ys, vec![Some(0), Some(1), Some(2), Some(3), Some(4)]);
        }
    }

    #[test]
    fn idx4_and_no_labels() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x-images-idx4-ubyte");
        std::fs::write(&p, idx_bytes(&[2, 2, 2, 3], &[9u8; 24])).unwrap();
        let mut s = IdxSource::open(&p, None).unwrap();
        assert_eq!(s.example_shape(), &[2, 2, 3]);
        let (xs, ys) = drain(&mut s, 10).unwrap();
        assert_eq!(xs.len(), 24);
        assert_eq!(ys, vec![None, None]);
    }

    #[test]
    fn truncated_images() {
        let dir = tempfile::tempdir().unwrap();
        for gzip in [false, true] {
            let p = dir.path().join(format!("t{gzip}-images-idx3-ubyte"));
            let mut b = idx_bytes(&[3, 2, 2], &[1u8; 11]);
            if gzip {
                b = gz(&b);
            }
            std::fs::write(&p, b).unwrap();
            let e = IdxSource::open(&p, None).err().unwrap().to_string();
            assert!(
                e.contains("truncated") && e.contains(&p.display().to_string()),
                "{e}"
            );
            assert!(!e.contains('\n'));
        }
        // header itself truncated
        let p = dir.path().join("h-images-idx3-ubyte");
        std::fs::write(&p, [0u8, 0, 8, 3, 0, 0]).unwrap();
        let e = IdxSource::open(&p, None).err().unwrap().to_string();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn wrong_magic_and_type() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad");
        std::fs::write(&p, b"PK\x03\x04abcdefgh").unwrap();
        let e = IdxSource::open(&p, None).err().unwrap().to_string();
        assert!(e.contains("not an IDX file"), "{e}");
        let mut b = idx_bytes(&[1, 1, 1], &[0, 0, 0, 0]);
        b[2] = 0x0d;
        std::fs::write(&p, b).unwrap();
        let e = IdxSource::open(&p, None).err().unwrap().to_string();
        assert!(e.contains("element type 0x0d"), "{e}");
    }

    #[test]
    fn label_count_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (ip, _) = write_pair(dir.path(), "a", 4, true);
        let lp = dir.path().join("b-labels-idx1-ubyte");
        std::fs::write(&lp, idx_bytes(&[3], &[1, 2, 3])).unwrap();
        let e = IdxSource::open(&ip, Some(&lp)).err().unwrap().to_string();
        assert!(
            e.contains("has 3 labels but images file") && e.contains("has 4 images"),
            "{e}"
        );
        // labels file given as images
        let e = IdxSource::open(&lp, None).err().unwrap().to_string();
        assert!(e.contains("not an images file"), "{e}");
        // labels header claiming far more than the file holds
        std::fs::write(&lp, gz(&idx_bytes(&[u32::MAX], &[1, 2, 3]))).unwrap();
        let e = IdxSource::open(&ip, Some(&lp)).err().unwrap().to_string();
        assert!(e.contains("truncated") && e.contains("file holds 3"), "{e}");
        // trailing data in labels
        std::fs::write(&lp, idx_bytes(&[4], &[1, 2, 3, 4, 5])).unwrap();
        let e = IdxSource::open(&ip, Some(&lp)).err().unwrap().to_string();
        assert!(e.contains("after its 4 labels"), "{e}");
    }
}
