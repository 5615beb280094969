//! Class names: read from `--class-names FILE`, built in for the named data sets, or taken
//! from an image folder's class folders. They label the per-class tables, confusions and
//! image captions of a report; they never change a label.

use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;

/// Fashion-MNIST's classes, by label.
pub const FASHION_MNIST: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// CIFAR-10's classes, by label (`batches.meta.txt`).
pub const CIFAR10: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

/// CIFAR-100's fine classes, by label (`fine_label_names.txt`).
pub const CIFAR100: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// A class list: for each label, the names it goes by (the last one is shown; the others,
/// an ImageNet synset say, match image folders).
#[derive(Clone, Debug, PartialEq)]
pub struct ClassNames {
    /// Where the names came from, for messages ("--class-names FILE", "CIFAR-10").
    pub origin: String,
    pub aliases: Vec<Vec<String>>,
}

impl ClassNames {
    /// A built-in list.
    pub fn builtin(origin: &str, names: &[&str]) -> ClassNames {
        ClassNames {
            origin: origin.into(),
            aliases: names.iter().map(|n| vec![n.to_string()]).collect(),
        }
    }

    /// The shown names, by label.
    pub fn names(&self) -> Vec<String> {
        self.aliases
            .iter()
            .map(|a| a.last().cloned().unwrap_or_default())
            .collect()
    }

    pub fn len(&self) -> usize {
        self.aliases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.aliases.is_empty()
    }

    /// Reads `--class-names FILE`: one name per line, a JSON list of names, or a JSON
    /// object from class index to a name or a list of names (`imagenet_class_index.json`:
    /// `{"0": ["n01440764", "tench"], ...}`).
    pub fn read(path: &Path) -> Result<ClassNames> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--class-names: cannot read {}", path.display()))?;
        let origin = format!("--class-names {}", path.display());
        let aliases = parse(&text).map_err(|e| anyhow!("{origin}: {e}"))?;
        if aliases.is_empty() {
            bail!("{origin}: the file lists no class names");
        }
        Ok(ClassNames { origin, aliases })
    }

    /// Fails unless there is one name per model class.
    pub fn check_count(&self, classes: usize) -> Result<()> {
        if self.len() != classes {
            bail!(
                "{} has {} class names but the model has {classes} classes; give one name per class, in the model's order",
                self.origin,
                self.len()
            );
        }
        Ok(())
    }
}

fn parse(text: &str) -> Result<Vec<Vec<String>>> {
    let t = text.trim_start_matches('\u{feff}').trim();
    if t.starts_with('[') || t.starts_with('{') {
        let v: serde_json::Value =
            serde_json::from_str(t).map_err(|e| anyhow!("not valid JSON: {e}"))?;
        let entry = |v: &serde_json::Value| -> Result<Vec<String>> {
            match v {
                serde_json::Value::String(s) => Ok(vec![s.clone()]),
                serde_json::Value::Array(a) if !a.is_empty() => a
                    .iter()
                    .map(|x| {
                        x.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| anyhow!("expected a string, found {x}"))
                    })
                    .collect(),
                other => bail!("expected a class name or a list of names, found {other}"),
            }
        };
        return match v {
            serde_json::Value::Array(a) => a.iter().map(entry).collect(),
            serde_json::Value::Object(o) => {
                let mut out: Vec<Option<Vec<String>>> = vec![None; o.len()];
                for (k, v) in &o {
                    let i: usize =
                        k.parse().ok().filter(|i| *i < o.len()).ok_or_else(|| {
                            anyhow!("key '{k}' is not a class index 0..{}", o.len())
                        })?;
                    out[i] = Some(entry(v)?);
                }
                out.into_iter()
                    .enumerate()
                    .map(|(i, v)| v.ok_or_else(|| anyhow!("class {i} has no name")))
                    .collect()
            }
            _ => bail!("expected a JSON list or object"),
        };
    }
    let mut lines: Vec<&str> = text.lines().map(str::trim).collect();
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    if let Some(i) = lines.iter().position(|l| l.is_empty()) {
        bail!("line {} is empty (one class name per line)", i + 1);
    }
    Ok(lines.into_iter().map(|l| vec![l.to_string()]).collect())
}

/// `c` with its name, when there is one: `3 Dress`.
pub fn label(c: usize, names: &[String]) -> String {
    match names.get(c) {
        Some(n) if !n.is_empty() && *n != c.to_string() => format!("{c} {n}"),
        _ => c.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_lists_have_their_sizes() {
        assert_eq!(FASHION_MNIST.len(), 10);
        assert_eq!(CIFAR100.len(), 100);
        let mut v = CIFAR100.to_vec();
        v.sort();
        v.dedup();
        assert_eq!(v.len(), 100, "CIFAR-100 names are distinct and sorted");
        assert_eq!(v, CIFAR100.to_vec());
    }

    #[test]
    fn reads_lines_json_lists_and_index_objects() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n.txt");
        std::fs::write(&p, "cat\r\n dog \n\n").unwrap();
        let c = ClassNames::read(&p).unwrap();
        assert_eq!(c.names(), vec!["cat", "dog"]);
        assert!(c.origin.contains("n.txt"));
        std::fs::write(&p, r#"["a", "b", "c"]"#).unwrap();
        assert_eq!(ClassNames::read(&p).unwrap().len(), 3);
        std::fs::write(&p, r#"{"1": ["n2", "goldfish"], "0": ["n1", "tench"]}"#).unwrap();
        let c = ClassNames::read(&p).unwrap();
        assert_eq!(c.names(), vec!["tench", "goldfish"]);
        assert_eq!(c.aliases[1], vec!["n2", "goldfish"]);
        let e = c.check_count(1000).unwrap_err().to_string();
        assert!(
            e.contains("2 class names") && e.contains("1000 classes"),
            "{e}"
        );
    }

    #[test]
    fn bad_files_are_one_line_errors() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("n.txt");
        for (text, needle) in [
            ("a\n\nb\n", "line 2 is empty"),
            ("", "no class names"),
            ("[1, 2]", "expected a class name"),
            ("{\"0\": \"a\", \"5\": \"b\"}", "key '5'"),
            ("[\"a\"", "not valid JSON"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = ClassNames::read(&p).unwrap_err().to_string();
            assert!(e.contains(needle) && !e.contains('\n'), "{text}: {e}");
        }
        let e = ClassNames::read(&d.path().join("none.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read"), "{e}");
    }

    #[test]
    fn labels_with_names() {
        let n = vec!["a".to_string(), "1".to_string()];
        assert_eq!(label(0, &n), "0 a");
        assert_eq!(label(1, &n), "1");
        assert_eq!(label(5, &n), "5");
    }
}
