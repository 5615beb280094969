//! Named data sets (`mnist`, `fashion-mnist`, `cifar10`, `cifar100`, optionally `:train` /
//! `:test`), found on disk in the usual places. Nothing is downloaded. Fashion-MNIST and
//! the CIFARs come with their class names.

use super::cifar::{self, CifarSource, Variant};
use super::classes::{self, ClassNames};
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

/// Finds CIFAR-10 or CIFAR-100 (binary version) in the usual places.
fn resolve_cifar(
    v: Variant,
    split: Split,
    home: Option<&Path>,
    harden_data: Option<&Path>,
) -> Result<Box<dyn DataSource>> {
    let (canon, folder, py) = match v {
        Variant::Cifar10 => ("cifar10", "cifar-10-batches-bin", "cifar-10-batches-py"),
        Variant::Cifar100 => ("cifar100", "cifar-100-binary", "cifar-100-python"),
    };
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(h) = harden_data {
        roots.push(h.join(canon));
        roots.push(h.to_path_buf());
    }
    roots.push(PathBuf::from("/usr/share/datasets").join(canon));
    if let Some(h) = home {
        roots.push(h.join(".cache/harden").join(canon));
        roots.push(h.join("data").join(canon));
        roots.push(h.join("data"));
        roots.push(h.join(".cache"));
    }
    let mut looked = Vec::new();
    let mut python = None;
    for r in &roots {
        for d in [r.clone(), r.join(folder)] {
            if let Some(files) = cifar::files_in(&d, v, split) {
                return Ok(Box::new(CifarSource::open(v, &files)?));
            }
            if python.is_none() && r.join(py).is_dir() {
                python = Some(r.join(py));
            }
            looked.push(format!("{}/", d.display()));
        }
    }
    let names = v.file_names(split);
    bail!(
        "data: data set '{canon}' ({} split) not found: looked for {} in {}{}; harden cannot download it: get the binary version ({}-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html), unpack it and set HARDEN_DATA to the folder holding {folder}, or pass --data {folder}",
        split.word(),
        if names.len() > 1 {
            format!("{} .. {}", names[0], names[names.len() - 1])
        } else {
            names[0].clone()
        },
        looked.join(", "),
        python
            .map(|p| format!(" (found {}, the Python version, which harden does not read)", p.display()))
            .unwrap_or_default(),
        match v {
            Variant::Cifar10 => "cifar-10",
            Variant::Cifar100 => "cifar-100",
        }
    )
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
    let cifar = match base.to_ascii_lowercase().as_str() {
        "cifar10" | "cifar-10" | "cifar_10" => Some(Variant::Cifar10),
        "cifar100" | "cifar-100" | "cifar_100" => Some(Variant::Cifar100),
        _ => None,
    };
    if let Some(v) = cifar {
        let split = match split_s {
            Some(s) => parse_split(s, name)?,
            None => Split::Test,
        };
        return resolve_cifar(v, split, home, harden_data).map(Some);
    }
    let Some((canon, torch)) = canonical(base) else {
        return Ok(None);
    };
    let split = match split_s {
        Some(s) => parse_split(s, name)?,
        None => Split::Test,
    };
    let named = |src: Box<dyn DataSource>| -> Box<dyn DataSource> {
        if canon == "fashion-mnist" {
            super::with_names(
                src,
                ClassNames::builtin("Fashion-MNIST", &classes::FASHION_MNIST),
            )
        } else {
            src
        }
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
            return Ok(Some(named(Box::new(IdxSource::open(
                &images,
                Some(&labels),
            )?))));
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
    fn cifar_found_in_harden_data_and_home() {
        use crate::data::cifar::tests::write_bin;
        let hd = tempfile::tempdir().unwrap();
        let d10 = hd.path().join("cifar-10-batches-bin");
        write_bin(&d10.join("test_batch.bin"), Variant::Cifar10, &[1, 2, 3]);
        for i in 1..=5 {
            write_bin(
                &d10.join(format!("data_batch_{i}.bin")),
                Variant::Cifar10,
                &[4],
            );
        }
        let s = resolve_named("cifar10", None, Some(hd.path()))
            .unwrap()
            .unwrap();
        assert_eq!(s.len(), Some(3));
        assert_eq!(s.label_names().unwrap()[0], "airplane");
        let s = resolve_named("CIFAR-10:train", None, Some(hd.path()))
            .unwrap()
            .unwrap();
        assert_eq!(s.len(), Some(5));
        let home = tempfile::tempdir().unwrap();
        let d100 = home.path().join("data/cifar-100-binary");
        write_bin(&d100.join("train.bin"), Variant::Cifar100, &[5, 6]);
        let s = resolve_named("cifar100:train", Some(home.path()), None)
            .unwrap()
            .unwrap();
        assert_eq!(s.len(), Some(2));
        let e = resolve_named("cifar100:test", Some(home.path()), Some(hd.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(
            e.contains("test.bin") && e.contains("cifar-100-binary") && e.contains("HARDEN_DATA"),
            "{e}"
        );
        assert!(e.contains(&d100.display().to_string()), "{e}");
        std::fs::create_dir_all(home.path().join("data/cifar-10-batches-py")).unwrap();
        let e = resolve_named("cifar10", Some(home.path()), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("the Python version"), "{e}");
        let e = resolve_named("cifar10:val", None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unknown split 'val'"), "{e}");
    }

    #[test]
    fn fashion_mnist_has_names() {
        let d = tempfile::tempdir().unwrap();
        write_pair(d.path(), "t10k", 2, false);
        let s = resolve_named("fashion-mnist", None, Some(d.path()))
            .unwrap()
            .unwrap();
        assert_eq!(s.label_names().unwrap()[9], "Ankle boot");
        let s = resolve_named("mnist", None, Some(d.path()))
            .unwrap()
            .unwrap();
        assert!(s.label_names().is_none());
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
