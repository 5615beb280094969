//! Data input: every `--data SPEC` form is turned into a [`DataSource`] that streams
//! examples in batches. Sources yield values exactly as stored (pixels 0..=255 for
//! image formats, reals for npy/npz/vnnlib); mapping into the model's declared input
//! space (range, layout) is done by `crate::spec`, not here.

use anyhow::Result;

/// How stored values should be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueKind {
    /// 8-bit pixels, 0..=255; mapped linearly onto the input range.
    Pixel8,
    /// Real values, used as they are (must already lie in the input range).
    Real,
}

/// A stream of labelled examples.
#[allow(clippy::len_without_is_empty)] // `len` is "known up front", not a container size
pub trait DataSource: Send {
    /// Shape of one example as stored, e.g. `[28, 28]`, `[28, 28, 1]`, `[3, 32, 32]`, `[784]`.
    fn example_shape(&self) -> &[usize];
    /// How the stored values are to be read.
    fn kind(&self) -> ValueKind;
    /// Number of examples, if known up front.
    fn len(&self) -> Option<usize>;
    /// One line naming the source (paths, format, count) for reports.
    fn describe(&self) -> String;
    /// Append up to `n` examples to `xs` (each flattened, row-major, `example_shape`
    /// elements) and their labels to `ys` (`None` where the source has no label).
    /// Returns how many were appended; 0 means the stream is exhausted.
    fn next_batch(
        &mut self,
        n: usize,
        xs: &mut Vec<f32>,
        ys: &mut Vec<Option<usize>>,
    ) -> Result<usize>;
    /// The range the stored values are declared to lie in, where the format declares one
    /// (vnnlib input boxes); `None` otherwise.
    fn value_bounds(&self) -> Option<(f32, f32)> {
        None
    }
    /// Class names by label, where the source knows them (image folder names, the named
    /// data sets, `--class-names`).
    fn label_names(&self) -> Option<Vec<String>> {
        None
    }
    /// Decodes examples with `channels` colour channels (1 grey, 3 RGB) where the source
    /// can convert (image folders); returns whether it did. Called before any batch.
    fn set_channels(&mut self, _channels: usize) -> bool {
        false
    }
}

pub mod cifar;
pub mod classes;
pub mod idx;
pub mod images;
pub mod named;
pub mod npy;
pub mod vnnlib;

pub use classes::ClassNames;
pub use images::{ImageFolderSource, ImageOptions};
pub use named::resolve_named;
pub use vnnlib::{LinearConstraint, Property, VnnlibSource};

use anyhow::bail;
use std::path::{Path, PathBuf};

/// A source as opened by [`open_detailed`], keeping the concrete type where callers
/// need more than the [`DataSource`] trait (vnnlib boxes, image class names).
pub enum Opened {
    Vnnlib(VnnlibSource),
    Images(ImageFolderSource),
    Other(Box<dyn DataSource>),
}

impl Opened {
    /// The source as a trait object.
    pub fn into_source(self) -> Box<dyn DataSource> {
        match self {
            Opened::Vnnlib(v) => Box::new(v),
            Opened::Images(i) => Box::new(i),
            Opened::Other(o) => o,
        }
    }
}

/// How to open data besides the spec: image resizing and class names.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Resize/crop for image folders.
    pub image: ImageOptions,
    /// `--class-names FILE`: names by label (image folders whose class folders are all
    /// named in it are labelled by it).
    pub class_names: Option<ClassNames>,
}

/// Opens a `--data SPEC`: a named data set (`mnist`, `fashion-mnist`, `cifar10`,
/// `cifar100`, each optionally `:train` / `:test`), a `.npz` / `.npy` / `.vnnlib` file,
/// an images IDX file (labels found next to it), a CIFAR `.bin` file, or a folder (of
/// `.vnnlib` files, of IDX files or CIFAR binary files, optionally `DIR:train`, or of
/// class sub-folders with images). `home` / `harden_data` are `$HOME` / `$HARDEN_DATA`.
pub fn open(
    spec: &str,
    home: Option<&Path>,
    harden_data: Option<&Path>,
) -> Result<Box<dyn DataSource>> {
    Ok(open_detailed(spec, home, harden_data)?.into_source())
}

/// [`open`] with options: image folders resized and cropped, class names attached.
pub fn open_with(
    spec: &str,
    home: Option<&Path>,
    harden_data: Option<&Path>,
    opts: &OpenOptions,
) -> Result<Box<dyn DataSource>> {
    let opened = open_detailed_with(spec, home, harden_data, opts.image)?;
    let src = match (opened, &opts.class_names) {
        (Opened::Images(mut i), Some(names)) => {
            if !i.relabel_by_names(&names.aliases) {
                if let Some(folders) = i.named_classes() {
                    if folders.len() != names.len() {
                        let missing: Vec<&str> = folders
                            .iter()
                            .filter(|f| !names.aliases.iter().any(|a| a.contains(f)))
                            .take(3)
                            .map(String::as_str)
                            .collect();
                        bail!(
                            "data: the image folder's {} class folders are not all named in {} ({} names; not found: {}), and their number differs, so labels cannot be matched",
                            folders.len(),
                            names.origin,
                            names.len(),
                            missing.join(", ")
                        );
                    }
                }
            }
            Box::new(i) as Box<dyn DataSource>
        }
        (o, _) => o.into_source(),
    };
    Ok(match &opts.class_names {
        Some(names) => with_names(src, names.clone()),
        None => src,
    })
}

/// Like [`open`], but keeps the concrete source type for vnnlib and image folders.
pub fn open_detailed(
    spec: &str,
    home: Option<&Path>,
    harden_data: Option<&Path>,
) -> Result<Opened> {
    open_detailed_with(spec, home, harden_data, ImageOptions::default())
}

/// [`open_detailed`] with image folders resized and cropped as `image` says.
pub fn open_detailed_with(
    spec: &str,
    home: Option<&Path>,
    harden_data: Option<&Path>,
    image: ImageOptions,
) -> Result<Opened> {
    if let Some(src) = named::resolve_named(spec, home, harden_data)? {
        return Ok(Opened::Other(src));
    }
    let mut path = PathBuf::from(spec);
    let mut split = None;
    if !path.exists() {
        if let Some((p, s)) = spec.rsplit_once(':') {
            if matches!(s, "train" | "test") && Path::new(p).exists() {
                split = Some(named::parse_split(s, spec)?);
                path = PathBuf::from(p);
            }
        }
    }
    if !path.exists() {
        bail!("data: '{spec}' is neither a known data set name (mnist, fashion-mnist, cifar10, cifar100) nor an existing file or folder");
    }
    if path.is_dir() {
        return open_dir(&path, split, image);
    }
    if split.is_some() {
        bail!(
            "data: a :train/:test suffix only applies to a folder of IDX files, not to the file {}",
            path.display()
        );
    }
    let lower = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if lower.ends_with(".npz") {
        return Ok(Opened::Other(Box::new(npy::NpySource::open_npz(&path)?)));
    }
    if lower.ends_with(".npy") {
        return Ok(Opened::Other(Box::new(npy::NpySource::open_npy(&path)?)));
    }
    if vnnlib::is_vnnlib_name(&path) {
        return Ok(Opened::Vnnlib(VnnlibSource::open(&path)?));
    }
    if let Some(v) = cifar::sniff(&path) {
        return Ok(Opened::Other(Box::new(cifar::CifarSource::open(
            v,
            std::slice::from_ref(&path),
        )?)));
    }
    if images::image_format(&path).is_some() {
        bail!(
            "data: {} is one image; pass a folder with one sub-folder of images per class",
            path.display()
        );
    }
    if idx::sniff_idx(&path) {
        let h = idx::read_idx_header(&path)?;
        if h.dims.len() < 2 {
            bail!(
                "data: {} is an IDX labels file; pass the images file instead",
                path.display()
            );
        }
        let labels = idx_labels_for(&path);
        return Ok(Opened::Other(Box::new(idx::IdxSource::open(
            &path,
            labels.as_deref(),
        )?)));
    }
    bail!(
        "data: cannot tell the format of {} (expected .npz, .npy, .vnnlib, an IDX file, or a folder)",
        path.display()
    )
}

/// The labels file next to an images IDX file (`images-idx3` -> `labels-idx1`), with or
/// without `.gz`.
pub fn idx_labels_for(images: &Path) -> Option<PathBuf> {
    let name = images.file_name()?.to_string_lossy().into_owned();
    let dims = (2..=9).find(|d| name.contains(&format!("images-idx{d}")))?;
    let lname = name.replace(&format!("images-idx{dims}"), "labels-idx1");
    let base = lname.strip_suffix(".gz").unwrap_or(&lname).to_string();
    [base.clone(), format!("{base}.gz")]
        .into_iter()
        .map(|n| images.with_file_name(n))
        .find(|p| p.is_file())
}

/// IDX image files (with their labels) in a folder, sorted by name.
fn idx_pairs(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("data: cannot list folder {}: {e}", dir.display()))?;
    let mut v = Vec::new();
    for e in rd.flatten() {
        let p = e.path();
        let is_images = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("-images-idx"));
        if is_images && p.is_file() {
            if let Some(l) = idx_labels_for(&p) {
                v.push((p, l));
            }
        }
    }
    v.sort();
    Ok(v)
}

fn open_dir(dir: &Path, split: Option<named::Split>, image: ImageOptions) -> Result<Opened> {
    if split.is_none() && !vnnlib::vnnlib_files(dir)?.is_empty() {
        return Ok(Opened::Vnnlib(VnnlibSource::open(dir)?));
    }
    for v in [cifar::Variant::Cifar10, cifar::Variant::Cifar100] {
        let want = split.unwrap_or(named::Split::Test);
        if let Some(files) = cifar::files_in(dir, v, want) {
            return Ok(Opened::Other(Box::new(cifar::CifarSource::open(
                v, &files,
            )?)));
        }
    }
    let pairs = idx_pairs(dir)?;
    if !pairs.is_empty() {
        let name_of = |p: &Path| {
            p.file_name()
                .map(|n| n.to_string_lossy().to_ascii_lowercase())
                .unwrap_or_default()
        };
        let is_test = |p: &Path| {
            let n = name_of(p);
            n.contains("t10k") || n.contains("test")
        };
        let is_train = |p: &Path| name_of(p).contains("train");
        let pick = match split {
            Some(named::Split::Train) => pairs.iter().find(|p| is_train(&p.0)),
            Some(named::Split::Test) => pairs.iter().find(|p| is_test(&p.0)),
            None => pairs.iter().find(|p| is_test(&p.0)).or(pairs.first()),
        };
        let Some((images, labels)) = pick else {
            bail!(
                "data: folder {} has no {} split IDX files (found {})",
                dir.display(),
                split.map_or("", |s| if s == named::Split::Train {
                    "train"
                } else {
                    "test"
                }),
                pairs
                    .iter()
                    .map(|p| name_of(&p.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        return Ok(Opened::Other(Box::new(idx::IdxSource::open(
            images,
            Some(labels),
        )?)));
    }
    if split.is_some() {
        bail!(
            "data: folder {} has no IDX files with matching labels files",
            dir.display()
        );
    }
    if images::looks_like_image_folder(dir) {
        return Ok(Opened::Images(ImageFolderSource::open_with(dir, image)?));
    }
    bail!(
        "data: folder {} holds no .vnnlib files, no IDX image/label pairs, no CIFAR binary files and no class sub-folders with PNG/JPEG images",
        dir.display()
    )
}

/// The first `n` examples of a source (`--limit N`).
pub struct Limit {
    inner: Box<dyn DataSource>,
    limit: usize,
    taken: usize,
}

impl Limit {
    pub fn new(inner: Box<dyn DataSource>, n: usize) -> Self {
        Limit {
            inner,
            limit: n,
            taken: 0,
        }
    }
}

/// Wraps `src` so that it yields at most `n` examples.
pub fn limit(src: Box<dyn DataSource>, n: usize) -> Box<dyn DataSource> {
    Box::new(Limit::new(src, n))
}

impl DataSource for Limit {
    fn example_shape(&self) -> &[usize] {
        self.inner.example_shape()
    }
    fn kind(&self) -> ValueKind {
        self.inner.kind()
    }
    fn len(&self) -> Option<usize> {
        Some(self.inner.len().map_or(self.limit, |l| l.min(self.limit)))
    }
    fn describe(&self) -> String {
        format!("{} (first {})", self.inner.describe(), self.limit)
    }
    fn value_bounds(&self) -> Option<(f32, f32)> {
        self.inner.value_bounds()
    }
    fn label_names(&self) -> Option<Vec<String>> {
        self.inner.label_names()
    }
    fn set_channels(&mut self, channels: usize) -> bool {
        self.inner.set_channels(channels)
    }
    fn next_batch(
        &mut self,
        n: usize,
        xs: &mut Vec<f32>,
        ys: &mut Vec<Option<usize>>,
    ) -> Result<usize> {
        let want = n.min(self.limit - self.taken);
        if want == 0 {
            return Ok(0);
        }
        let got = self.inner.next_batch(want, xs, ys)?;
        self.taken += got;
        Ok(got)
    }
}

/// A source with class names attached (they replace any the source has).
pub struct WithNames {
    inner: Box<dyn DataSource>,
    names: Vec<String>,
}

/// Wraps `src` so that its classes are called `names`.
pub fn with_names(src: Box<dyn DataSource>, names: ClassNames) -> Box<dyn DataSource> {
    Box::new(WithNames {
        inner: src,
        names: names.names(),
    })
}

impl DataSource for WithNames {
    fn example_shape(&self) -> &[usize] {
        self.inner.example_shape()
    }
    fn kind(&self) -> ValueKind {
        self.inner.kind()
    }
    fn len(&self) -> Option<usize> {
        self.inner.len()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn value_bounds(&self) -> Option<(f32, f32)> {
        self.inner.value_bounds()
    }
    fn label_names(&self) -> Option<Vec<String>> {
        Some(self.names.clone())
    }
    fn set_channels(&mut self, channels: usize) -> bool {
        self.inner.set_channels(channels)
    }
    fn next_batch(
        &mut self,
        n: usize,
        xs: &mut Vec<f32>,
        ys: &mut Vec<Option<usize>>,
    ) -> Result<usize> {
        self.inner.next_batch(n, xs, ys)
    }
}

/// Examples held in memory (stored values, as a source yielded them), streamed again.
pub struct MemorySource {
    shape: Vec<usize>,
    kind: ValueKind,
    name: String,
    xs: Vec<f32>,
    ys: Vec<Option<usize>>,
    pos: usize,
}

impl MemorySource {
    /// `xs` holds `ys.len()` examples of `shape`, as stored.
    pub fn new(
        name: String,
        shape: Vec<usize>,
        kind: ValueKind,
        xs: Vec<f32>,
        ys: Vec<Option<usize>>,
    ) -> MemorySource {
        MemorySource {
            shape,
            kind,
            name,
            xs,
            ys,
            pos: 0,
        }
    }
}

impl DataSource for MemorySource {
    fn example_shape(&self) -> &[usize] {
        &self.shape
    }
    fn kind(&self) -> ValueKind {
        self.kind
    }
    fn len(&self) -> Option<usize> {
        Some(self.ys.len())
    }
    fn describe(&self) -> String {
        format!("{} ({} examples)", self.name, self.ys.len())
    }
    fn next_batch(
        &mut self,
        n: usize,
        xs: &mut Vec<f32>,
        ys: &mut Vec<Option<usize>>,
    ) -> Result<usize> {
        let len: usize = self.shape.iter().product();
        let take = n.min(self.ys.len() - self.pos);
        xs.extend_from_slice(&self.xs[self.pos * len..(self.pos + take) * len]);
        ys.extend_from_slice(&self.ys[self.pos..self.pos + take]);
        self.pos += take;
        Ok(take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(src: &mut dyn DataSource) -> usize {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        let mut t = 0;
        loop {
            let k = src.next_batch(3, &mut xs, &mut ys).unwrap();
            if k == 0 {
                break;
            }
            t += k;
        }
        assert_eq!(xs.len(), t * src.example_shape().iter().product::<usize>());
        t
    }

    #[test]
    fn dispatch_idx_folder_and_file() {
        let d = tempfile::tempdir().unwrap();
        idx::tests::write_pair(d.path(), "train", 7, true);
        let (ti, _) = idx::tests::write_pair(d.path(), "t10k", 4, false);
        let ds = d.path().display().to_string();
        assert_eq!(open(&ds, None, None).unwrap().len(), Some(4));
        assert_eq!(
            open(&format!("{ds}:train"), None, None).unwrap().len(),
            Some(7)
        );
        let mut s = open(&ti.display().to_string(), None, None).unwrap();
        assert!(s.describe().contains("labels-idx1"));
        assert_eq!(count(s.as_mut()), 4);
        let e = open(
            &d.path()
                .join("t10k-labels-idx1-ubyte")
                .display()
                .to_string(),
            None,
            None,
        )
        .err()
        .unwrap();
        assert!(e.to_string().contains("labels file"), "{e}");
    }

    #[test]
    fn dispatch_files_and_errors() {
        let d = tempfile::tempdir().unwrap();
        let x = npy::tests::npy_bytes("<f4", &[2, 3], false, &npy::tests::f32s(&[0.0; 6]), 1);
        std::fs::write(d.path().join("a.npy"), &x).unwrap();
        npy::tests::write_npz(&d.path().join("b.npz"), &[("x.npy", x)]);
        let s = open(&d.path().join("a.npy").display().to_string(), None, None).unwrap();
        assert_eq!(s.example_shape(), &[3]);
        let s = open(&d.path().join("b.npz").display().to_string(), None, None).unwrap();
        assert_eq!(s.len(), Some(2));
        let e = open("/no/such/thing.npz", None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/no/such/thing.npz") && !e.contains('\n'), "{e}");
        std::fs::write(d.path().join("c.txt"), "hello").unwrap();
        let e = open(&d.path().join("c.txt").display().to_string(), None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("cannot tell the format"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = open(&empty.path().display().to_string(), None, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("holds no .vnnlib"), "{e}");
    }

    #[test]
    fn dispatch_vnnlib_and_images_and_limit() {
        let d = tempfile::tempdir().unwrap();
        let text = "(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)\
                    (assert (<= X_0 1))(assert (>= X_0 0))(assert (>= Y_1 Y_0))";
        for i in 0..3 {
            std::fs::write(d.path().join(format!("p{i}.vnnlib")), text).unwrap();
        }
        match open_detailed(&d.path().display().to_string(), None, None).unwrap() {
            Opened::Vnnlib(v) => assert_eq!(v.properties().len(), 3),
            _ => panic!("expected vnnlib"),
        }
        let mut l = limit(
            open(&d.path().display().to_string(), None, None).unwrap(),
            2,
        );
        assert_eq!(l.len(), Some(2));
        assert_eq!(count(l.as_mut()), 2);

        let im = tempfile::tempdir().unwrap();
        for (c, v) in [("x", 1u8), ("y", 2)] {
            std::fs::create_dir(im.path().join(c)).unwrap();
            image::GrayImage::from_pixel(2, 2, image::Luma([v]))
                .save(im.path().join(c).join("0.png"))
                .unwrap();
        }
        match open_detailed(&im.path().display().to_string(), None, None).unwrap() {
            Opened::Images(s) => assert_eq!(s.class_names(), &["x".to_string(), "y".to_string()]),
            _ => panic!("expected image folder"),
        }
    }

    #[test]
    fn dispatch_cifar_folders_files_and_class_names() {
        use cifar::tests::write_bin;
        use cifar::Variant;
        let d = tempfile::tempdir().unwrap();
        write_bin(&d.path().join("test_batch.bin"), Variant::Cifar10, &[1, 2]);
        for i in 1..=5 {
            write_bin(
                &d.path().join(format!("data_batch_{i}.bin")),
                Variant::Cifar10,
                &[3],
            );
        }
        let ds = d.path().display().to_string();
        assert_eq!(open(&ds, None, None).unwrap().len(), Some(2));
        assert_eq!(
            open(&format!("{ds}:train"), None, None).unwrap().len(),
            Some(5)
        );
        // A renamed file: told apart by its size (3 x 3074 bytes is CIFAR-100's).
        let odd = d.path().join("mine.bin");
        write_bin(&odd, Variant::Cifar100, &[7, 8, 9]);
        let s = open(&odd.display().to_string(), None, None).unwrap();
        assert_eq!(s.label_names().unwrap().len(), 100);
        // --class-names replaces the names; image folders not named in it must match in
        // number.
        let names = ClassNames::builtin("test", &["a", "b", "c"]);
        let opts = OpenOptions {
            class_names: Some(names),
            ..Default::default()
        };
        let s = open_with(&ds, None, None, &opts).unwrap();
        assert_eq!(s.label_names().unwrap(), vec!["a", "b", "c"]);
        let im = tempfile::tempdir().unwrap();
        for c in ["x", "y"] {
            std::fs::create_dir(im.path().join(c)).unwrap();
            image::GrayImage::from_pixel(2, 2, image::Luma([1]))
                .save(im.path().join(c).join("0.png"))
                .unwrap();
        }
        let e = open_with(&im.path().display().to_string(), None, None, &opts)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("2 class folders are not all named in test"),
            "{e}"
        );
    }
}
