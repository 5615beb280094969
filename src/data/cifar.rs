//! CIFAR-10 and CIFAR-100 in their binary format (the `-binary.tar.gz` downloads).
//!
//! CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin` .. `data_batch_5.bin` (train) and
//! `test_batch.bin`, each record one label byte and 3072 pixel bytes (1024 red, 1024 green,
//! 1024 blue, rows of 32). CIFAR-100 (`cifar-100-binary/`): `train.bin` and `test.bin`,
//! each record a coarse and a fine label byte, then the pixels; the fine label (0..100) is
//! the label. Examples are yielded as stored, `[3, 32, 32]` pixels. Files are streamed.

use super::classes::{self, ClassNames};
use super::named::Split;
use super::{DataSource, ValueKind};
use anyhow::{anyhow, bail, Context, Result};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// Pixel bytes of one example.
pub const PIXELS: usize = 3 * 32 * 32;

/// Which CIFAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    Cifar10,
    Cifar100,
}

impl Variant {
    /// Label bytes before each example's pixels.
    fn label_bytes(self) -> usize {
        match self {
            Variant::Cifar10 => 1,
            Variant::Cifar100 => 2,
        }
    }
    fn record(self) -> usize {
        self.label_bytes() + PIXELS
    }
    fn classes(self) -> usize {
        match self {
            Variant::Cifar10 => 10,
            Variant::Cifar100 => 100,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Variant::Cifar10 => "CIFAR-10",
            Variant::Cifar100 => "CIFAR-100",
        }
    }
    /// The file names of `split`, in order.
    pub fn file_names(self, split: Split) -> Vec<String> {
        match (self, split) {
            (Variant::Cifar10, Split::Train) => {
                (1..=5).map(|i| format!("data_batch_{i}.bin")).collect()
            }
            (Variant::Cifar10, Split::Test) => vec!["test_batch.bin".into()],
            (Variant::Cifar100, Split::Train) => vec!["train.bin".into()],
            (Variant::Cifar100, Split::Test) => vec!["test.bin".into()],
        }
    }
    /// The built-in class names.
    pub fn class_names(self) -> ClassNames {
        match self {
            Variant::Cifar10 => ClassNames::builtin("CIFAR-10", &classes::CIFAR10),
            Variant::Cifar100 => ClassNames::builtin("CIFAR-100", &classes::CIFAR100),
        }
    }
}

/// The files of `split` in `dir`, if they are all there.
pub fn files_in(dir: &Path, variant: Variant, split: Split) -> Option<Vec<PathBuf>> {
    let files: Vec<PathBuf> = variant
        .file_names(split)
        .into_iter()
        .map(|n| dir.join(n))
        .collect();
    files.iter().all(|f| f.is_file()).then_some(files)
}

/// The CIFAR variant a `.bin` file's name and size point to.
pub fn sniff(path: &Path) -> Option<Variant> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    if !name.ends_with(".bin") {
        return None;
    }
    if name.starts_with("data_batch") || name.starts_with("test_batch") {
        return Some(Variant::Cifar10);
    }
    if name == "train.bin" || name == "test.bin" {
        return Some(Variant::Cifar100);
    }
    let len = std::fs::metadata(path).ok()?.len() as usize;
    match (
        len.is_multiple_of(Variant::Cifar10.record()),
        len.is_multiple_of(Variant::Cifar100.record()),
    ) {
        (true, false) => Some(Variant::Cifar10),
        (false, true) => Some(Variant::Cifar100),
        _ => None,
    }
}

/// A stream over one or more CIFAR binary files.
pub struct CifarSource {
    variant: Variant,
    files: Vec<(PathBuf, usize)>,
    shape: Vec<usize>,
    current: Option<(usize, BufReader<File>, usize)>,
    next_file: usize,
    total: usize,
    record: Vec<u8>,
}

impl CifarSource {
    /// Opens `files` (in order); each must hold a whole number of records.
    pub fn open(variant: Variant, files: &[PathBuf]) -> Result<CifarSource> {
        let mut v = Vec::new();
        let mut total = 0;
        for f in files {
            let len = std::fs::metadata(f)
                .with_context(|| format!("data: cannot read {}", f.display()))?
                .len() as usize;
            let rec = variant.record();
            if len == 0 || !len.is_multiple_of(rec) {
                bail!(
                    "data: {} is not a {} binary file: its {len} bytes are not a whole number of {rec}-byte records ({} label byte{} + {PIXELS} pixels)",
                    f.display(),
                    variant.name(),
                    variant.label_bytes(),
                    if variant.label_bytes() == 1 { "" } else { "s" }
                );
            }
            total += len / rec;
            v.push((f.clone(), len / rec));
        }
        Ok(CifarSource {
            variant,
            files: v,
            shape: vec![3, 32, 32],
            current: None,
            next_file: 0,
            total,
            record: vec![0; variant.record()],
        })
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }
}

impl DataSource for CifarSource {
    fn example_shape(&self) -> &[usize] {
        &self.shape
    }
    fn kind(&self) -> ValueKind {
        ValueKind::Pixel8
    }
    fn len(&self) -> Option<usize> {
        Some(self.total)
    }
    fn describe(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|f| f.0.display().to_string())
            .collect();
        format!(
            "{} binary {} ({} examples of [3, 32, 32])",
            self.variant.name(),
            names.join(", "),
            self.total
        )
    }
    fn label_names(&self) -> Option<Vec<String>> {
        Some(self.variant.class_names().names())
    }
    fn next_batch(
        &mut self,
        n: usize,
        xs: &mut Vec<f32>,
        ys: &mut Vec<Option<usize>>,
    ) -> Result<usize> {
        let mut got = 0;
        while got < n {
            if self.current.as_ref().is_none_or(|c| c.2 == 0) {
                if self.next_file == self.files.len() {
                    break;
                }
                let (p, count) = &self.files[self.next_file];
                let f =
                    File::open(p).with_context(|| format!("data: cannot open {}", p.display()))?;
                self.current = Some((self.next_file, BufReader::with_capacity(1 << 16, f), *count));
                self.next_file += 1;
                continue;
            }
            let Some((fi, r, left)) = self.current.as_mut() else {
                break;
            };
            let path = &self.files[*fi].0;
            r.read_exact(&mut self.record)
                .map_err(|e| anyhow!("data: cannot read {}: {e}", path.display()))?;
            *left -= 1;
            let lb = self.variant.label_bytes();
            // CIFAR-100: coarse label, then fine label; the fine one is the class.
            let label = self.record[lb - 1] as usize;
            if label >= self.variant.classes() {
                bail!(
                    "data: {} has label {label} in record {}, out of range for {} ({} classes)",
                    path.display(),
                    self.files[*fi].1 - *left - 1,
                    self.variant.name(),
                    self.variant.classes()
                );
            }
            xs.extend(self.record[lb..].iter().map(|v| *v as f32));
            ys.push(Some(label));
            got += 1;
        }
        Ok(got)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes `labels.len()` records; example i has every pixel of channel c equal to
    /// `i + 10 * c` and, for CIFAR-100, coarse label 99 - fine.
    pub(crate) fn write_bin(path: &Path, variant: Variant, labels: &[u8]) {
        let mut b = Vec::new();
        for (i, l) in labels.iter().enumerate() {
            if variant == Variant::Cifar100 {
                b.push(99 - *l);
            }
            b.push(*l);
            for c in 0..3 {
                b.extend(std::iter::repeat_n((i + 10 * c) as u8, 1024));
            }
        }
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b).unwrap();
    }

    fn drain(s: &mut dyn DataSource, step: usize) -> (Vec<f32>, Vec<Option<usize>>) {
        let (mut xs, mut ys) = (vec![], vec![]);
        while s.next_batch(step, &mut xs, &mut ys).unwrap() > 0 {}
        (xs, ys)
    }

    #[test]
    fn cifar10_streams_across_files() {
        let d = tempfile::tempdir().unwrap();
        for i in 1..=5 {
            write_bin(
                &d.path().join(format!("data_batch_{i}.bin")),
                Variant::Cifar10,
                &[i as u8, 9],
            );
        }
        let files = files_in(d.path(), Variant::Cifar10, Split::Train).unwrap();
        assert!(files_in(d.path(), Variant::Cifar10, Split::Test).is_none());
        let mut s = CifarSource::open(Variant::Cifar10, &files).unwrap();
        assert_eq!(s.len(), Some(10));
        assert_eq!(s.example_shape(), &[3, 32, 32]);
        let (xs, ys) = drain(&mut s, 3);
        assert_eq!(ys.len(), 10);
        assert_eq!(ys[0..4], [Some(1), Some(9), Some(2), Some(9)]);
        // record 1 of a file: channel 2 pixels are 1 + 20
        assert_eq!(xs[PIXELS + 2048], 21.0);
        assert_eq!(xs[PIXELS + 1023], 1.0);
        assert_eq!(s.label_names().unwrap()[9], "truck");
    }

    #[test]
    fn cifar100_uses_fine_labels() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("test.bin");
        write_bin(&p, Variant::Cifar100, &[42, 7, 99]);
        assert_eq!(sniff(&p), Some(Variant::Cifar100));
        let mut s = CifarSource::open(Variant::Cifar100, &[p]).unwrap();
        let (xs, ys) = drain(&mut s, 2);
        assert_eq!(ys, vec![Some(42), Some(7), Some(99)]);
        assert_eq!(xs.len(), 3 * PIXELS);
        assert_eq!(xs[2 * PIXELS + 1024], 12.0);
        assert_eq!(s.label_names().unwrap()[42], "leopard");
    }

    #[test]
    fn bad_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("test_batch.bin");
        std::fs::write(&p, vec![0u8; 3073 + 5]).unwrap();
        let e = CifarSource::open(Variant::Cifar10, std::slice::from_ref(&p))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("test_batch.bin") && e.contains("3073-byte records"),
            "{e}"
        );
        write_bin(&p, Variant::Cifar10, &[3, 12]);
        let mut s = CifarSource::open(Variant::Cifar10, &[p]).unwrap();
        let (mut xs, mut ys) = (vec![], vec![]);
        let e = s.next_batch(5, &mut xs, &mut ys).unwrap_err().to_string();
        assert!(e.contains("label 12 in record 1"), "{e}");
    }
}
