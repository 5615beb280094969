//! Named data sets (`mnist`, `fashion-mnist`, optionally `:train` / `:test`), found on
//! disk in the usual places. Nothing is downloaded.

use super::idx::IdxSource;
use super::npy::NpySource;
use super::DataSource;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Which split of a named data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// IDX file prefix (`train` / `t10k`).
    pub fn idx_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
    fn word(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Parses `:train` / `:test` suffixes (the part after the colon).
pub fn parse_split(s: &str, spec: &str) -> Result<Split> {
    match s {
        "train" => Ok(Split::Train),
        "test" | "t10k" => Ok(Split::Test),
        other => bail!("data: unknown split '{other}' in '{spec}' (use :train or :test)"),
    }
}

/// Canonical name and torchvision folder name of a known data set.
fn canonical(name: &str) -> Option<(&'static str, &'static str)> {
    match name.to_ascii_lowercase().as_str() {
        "mnist" => Some(("mnist", "MNIST")),
        "fashion-mnist" | "fashion_mnist" | "fashionmnist" => {
            Some(("fashion-mnist", "FashionMNIST"))
        }
        _ => None,
    }
}

/// The images and labels IDX files of `split` in `dir`, if both exist (plain or `.gz`).
pub fn idx_pair_in(dir: &Path, split: Split) -> Option<(PathBuf, PathBuf)> {
    let p = split.idx_prefix();
    let find = |stem: String| -> Option<PathBuf> {
        // The real files use "idx3-ubyte"; some copies use "idx3.ubyte".
        [
            format!("{stem}-ubyte"),
            format!("{stem}-ubyte.gz"),
            format!("{stem}.ubyte"),
            format!("{stem}.ubyte.gz"),
        ]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|f| f.is_file())
    };
    let images = find(format!("{p}-images-idx3"))?;
    let labels = find(format!("{p}-labels-idx1"))?;
    Some((images, labels))
}

/// Resolves a named data set. `Ok(None)` if `name` is not a known data set name;
/// an error if it is known but not found (or is malformed). `home` and `harden_data`
/// are the values of `$HOME` and `$HARDEN_DATA` (this function reads no environment).
pub fn resolve_named(
    name: &str,
    home: Option<&Path>,
    harden_data: Option<&Path>,
) -> Result<Option<Box<dyn DataSource>>> {
    let (base, split_s) = match name.split_once(':') {
        Some((b, s)) => (b, Some(s)),
        None => (name, None),
    };
    let Some((canon, torch)) = canonical(base) else {
        return Ok(None);
    };
    let split = match split_s {
        Some(s) => parse_split(s, name)?,
        None => Split::Test,
    };
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(h) = harden_data {
        dirs.push(h.join(canon));
        dirs.push(h.to_path_buf());
        dirs.push(h.join(torch).join("raw"));
    }
    dirs.push(PathBuf::from("/usr/share/datasets").join(canon));
    if let Some(h) = home {
        dirs.push(h.join(".keras/datasets").join(canon));
        dirs.push(h.join(".cache/harden").join(canon));
        dirs.push(h.join("data").join(torch).join("raw"));
        dirs.push(h.join(".cache").join(torch).join("raw"));
    }
    let mut looked: Vec<String> = Vec::new();
    for d in &dirs {
        if let Some((images, labels)) = idx_pair_in(d, split) {
            return Ok(Some(Box::new(IdxSource::open(&images, Some(&labels))?)));
        }
        looked.push(format!("{}/", d.display()));
    }
    // Keras keeps MNIST as one npz archive.
    if canon == "mnist" {
        let mut npzs = Vec::new();
        if let Some(h) = harden_data {
            npzs.push(h.join("mnist.npz"));
        }
        if let Some(h) = home {
            npzs.push(h.join(".keras/datasets/mnist.npz"));
        }
        for f in npzs {
            if f.is_file() {
                let w = split.word();
                let src =
                    NpySource::open_npz_members(&f, &format!("x_{w}"), Some(&format!("y_{w}")))?;
                return Ok(Some(Box::new(src)));
            }
            looked.push(f.display().to_string());
        }
    }
    let p = split.idx_prefix();
    bail!(
        "data: data set '{canon}' ({} split) not found: looked for {p}-images-idx3-ubyte[.gz] + {p}-labels-idx1-ubyte[.gz] in {}; to get it: apt-get install dataset-fashion-mnist (for fashion-mnist), or set HARDEN_DATA to a folder holding the IDX files",
        split.word(),
        looked.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::idx::tests::write_pair;
    use crate::data::npy::tests::{i64s, npy_bytes, write_npz};

    #[test]
    fn unknown_name_is_none() {
        assert!(resolve_named("cifar-7", None, None).unwrap().is_none());
        assert!(resolve_named("./some/path.npz", None, None)
            .unwrap()
            .is_none());
    }

    #[test]
    fn finds_in_harden_data_and_splits() {
        let d = tempfile::tempdir().unwrap();
        let sub = d.path().join("fashion-mnist");
        std::fs::create_dir(&sub).unwrap();
        write_pair(&sub, "t10k", 3, true);
        write_pair(&sub, "train", 5, false);
        let s = resolve_named("fashion-mnist", None, Some(d.path()))
            .unwrap()
            .unwrap();
        assert_eq!(s.len(), Some(3));
        let s = resolve_named("fashion-mnist:train", None, Some(d.path()))
            .unwrap()
            .unwrap();
        assert_eq!(s.len(), Some(5));
        // directly in $HARDEN_DATA
        write_pair(d.path(), "t10k", 4, false);
        let s = resolve_named("mnist:test", None, Some(d.path()))
            .unwrap()
            .unwrap();
        assert_eq!(s.len(), Some(4));
        let e = resolve_named("fashion-mnist:xyz", None, Some(d.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown split 'xyz'"), "{e}");
    }

    #[test]
    fn torchvision_and_keras_layouts() {
        let home = tempfile::tempdir().unwrap();
        let raw = home.path().join("data/MNIST/raw");
        std::fs::create_dir_all(&raw).unwrap();
        write_pair(&raw, "train", 2, true);
        let s = resolve_named("mnist:train", Some(home.path()), None)
            .unwrap()
            .unwrap();
        assert_eq!(s.len(), Some(2));
        // test split absent from the torchvision folder: falls back to keras' mnist.npz
        let keras = home.path().join(".keras/datasets");
        std::fs::create_dir_all(&keras).unwrap();
        let x = npy_bytes("|u1", &[2, 2, 2], false, &[0; 8], 1);
        let y = npy_bytes("<i8", &[2], false, &i64s(&[3, 4]), 1);
        write_npz(
            &keras.join("mnist.npz"),
            &[("x_test.npy", x), ("y_test.npy", y)],
        );
        let mut s = resolve_named("mnist", Some(home.path()), None)
            .unwrap()
            .unwrap();
        assert_eq!(s.example_shape(), &[2, 2]);
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        s.next_batch(10, &mut xs, &mut ys).unwrap();
        assert_eq!(ys, vec![Some(3), Some(4)]);
    }

    #[test]
    fn not_found_lists_places() {
        let home = tempfile::tempdir().unwrap();
        let hd = tempfile::tempdir().unwrap();
        let e = resolve_named("fashion-mnist:train", Some(home.path()), Some(hd.path())).err();
        // The machine may have the Debian package installed; only check the message if not.
        if let Some(e) = e {
            let e = e.to_string();
            assert!(!e.contains('\n'), "{e}");
            assert!(
                e.contains("apt-get install dataset-fashion-mnist") && e.contains("HARDEN_DATA"),
                "{e}"
            );
            assert!(
                e.contains(&hd.path().join("fashion-mnist").display().to_string()),
                "{e}"
            );
            assert!(e.contains(".keras/datasets/fashion-mnist"), "{e}");
            assert!(e.contains("FashionMNIST/raw"), "{e}");
        }
        let e = resolve_named("mnist", Some(home.path()), Some(hd.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("mnist.npz") && e.contains("t10k-images-idx3-ubyte"),
            "{e}"
        );
    }

    #[test]
    fn system_fashion_mnist_if_installed() {
        let dir = Path::new("/usr/share/datasets/fashion-mnist");
        if !dir.join("t10k-images-idx3-ubyte.gz").exists() {
            println!("note: {} absent, skipping", dir.display());
            return;
        }
        let mut s = resolve_named("fashion-mnist", None, None).unwrap().unwrap();
        assert_eq!(s.len(), Some(10_000));
        assert_eq!(s.example_shape(), &[28, 28]);
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        assert_eq!(s.next_batch(3, &mut xs, &mut ys).unwrap(), 3);
        // The first Fashion-MNIST test labels are 9 (ankle boot), 2, 1.
        assert_eq!(ys, vec![Some(9), Some(2), Some(1)]);
        assert!(xs.iter().all(|v| (0.0..=255.0).contains(v)));
    }
}
