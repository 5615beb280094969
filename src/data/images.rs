//! A folder of PNG/JPEG images with one sub-folder per class (the torchvision
//! `ImageFolder` layout).
//!
//! Classes are the sub-folders (hidden ones skipped), sorted by name; the label is the
//! position in that order. If every sub-folder name is an integer (at most
//! [`MAX_NUMERIC_CLASS`]), they are sorted numerically and the integer itself is the
//! label. Image headers are read at open (size, colour) so that a size mismatch is
//! reported up front; pixels are decoded batch by batch.
//!
//! With [`ImageOptions`] images of any size are brought to one: the shorter side resized
//! to `resize` (bilinear, antialiased: the filter widens with the downscale factor, as
//! PIL and torchvision do) and a centred `crop` x `crop` square cut out. Only 8-bit
//! grey, grey+alpha, RGB and RGBA PNG/JPEG files are read (alpha is dropped); 16-bit
//! images and CMYK JPEGs are refused, naming the file.

use super::{DataSource, ValueKind};
use anyhow::{anyhow, bail, Context, Result};
use image::{ColorType, ImageDecoder, ImageFormat, ImageReader};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// Largest integer sub-folder name treated as a numeric label.
pub const MAX_NUMERIC_CLASS: usize = 100_000;

/// The image format for a file name, by extension (case-insensitive).
pub fn image_format(path: &Path) -> Option<ImageFormat> {
    let ext = path.extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "png" => Some(ImageFormat::Png),
        "jpg" | "jpeg" => Some(ImageFormat::Jpeg),
        _ => None,
    }
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir)
        .with_context(|| format!("data: cannot list folder {}", dir.display()))?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.with_context(|| format!("data: cannot list folder {}", dir.display()))?;
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        v.push(e.path());
    }
    v.sort();
    Ok(v)
}

/// Class sub-folders of `dir` (not hidden), sorted by name.
fn class_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .collect())
}

/// Whether `dir` has at least one sub-folder holding a PNG/JPEG file.
pub fn looks_like_image_folder(dir: &Path) -> bool {
    let Ok(subs) = class_dirs(dir) else {
        return false;
    };
    subs.iter().any(|s| {
        sorted_entries(s)
            .map(|fs| fs.iter().any(|f| f.is_file() && image_format(f).is_some()))
            .unwrap_or(false)
    })
}

fn is_gray(c: ColorType) -> bool {
    matches!(
        c,
        ColorType::L8 | ColorType::La8 | ColorType::L16 | ColorType::La16
    )
}

/// How images are brought to the model's size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImageOptions {
    /// Resize so that the shorter side is this long (aspect ratio kept).
    pub resize: Option<u32>,
    /// Cut out the centred `crop` x `crop` square (after resizing).
    pub crop: Option<u32>,
}

impl ImageOptions {
    /// The size an image of `w` x `h` ends up with.
    pub fn output_size(&self, w: u32, h: u32) -> (u32, u32) {
        let (mut w, mut h) = (w, h);
        if let Some(n) = self.resize {
            // torchvision: the longer side is int(n * long / short).
            if w <= h {
                h = ((n as u64 * h as u64) / w.max(1) as u64) as u32;
                w = n;
            } else {
                w = ((n as u64 * w as u64) / h.max(1) as u64) as u32;
                h = n;
            }
        }
        if let Some(c) = self.crop {
            (c, c)
        } else {
            (w, h)
        }
    }

    fn active(&self) -> bool {
        self.resize.is_some() || self.crop.is_some()
    }
}

/// A class-per-sub-folder image folder, decoded lazily.
pub struct ImageFolderSource {
    root: PathBuf,
    class_names: Vec<String>,
    /// The class folders' names, by label (empty for numeric folders).
    folder_names: Vec<String>,
    files: Vec<(PathBuf, usize)>,
    shape: Vec<usize>,
    gray: bool,
    opts: ImageOptions,
    pos: usize,
}

impl ImageFolderSource {
    /// Lists the folder and reads every image header (images must share one size).
    pub fn open(root: &Path) -> Result<Self> {
        Self::open_with(root, ImageOptions::default())
    }

    /// Lists the folder and reads every image header; with `opts`, each image is resized
    /// and cropped as it is decoded, and only the results must share one size.
    pub fn open_with(root: &Path, opts: ImageOptions) -> Result<Self> {
        if opts.resize == Some(0) || opts.crop == Some(0) {
            bail!("--resize and --crop need a size of at least 1 pixel");
        }
        if !root.is_dir() {
            bail!("data: {} is not a folder", root.display());
        }
        let subs = class_dirs(root)?;
        let names: Vec<String> = subs
            .iter()
            .map(|s| {
                s.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect();
        let numeric: Option<Vec<usize>> = names
            .iter()
            .map(|n| n.parse::<usize>().ok().filter(|&v| v <= MAX_NUMERIC_CLASS))
            .collect();
        // (folder, label) pairs and the class-name table indexed by label.
        let is_numeric = numeric.as_ref().is_some_and(|n| !n.is_empty());
        let (classes, class_names): (Vec<(PathBuf, usize)>, Vec<String>) = match numeric {
            Some(nums) if !nums.is_empty() => {
                let max = nums.iter().copied().max().unwrap_or(0);
                let mut table: Vec<Option<String>> = vec![None; max + 1];
                for (n, name) in nums.iter().zip(&names) {
                    if let Some(prev) = &table[*n] {
                        bail!(
                            "data: image folder {} has two class folders for label {n}: '{prev}' and '{name}'",
                            root.display()
                        );
                    }
                    table[*n] = Some(name.clone());
                }
                let mut pairs: Vec<(PathBuf, usize)> =
                    subs.iter().cloned().zip(nums.iter().copied()).collect();
                pairs.sort_by_key(|p| p.1);
                let table = table
                    .into_iter()
                    .enumerate()
                    .map(|(i, n)| n.unwrap_or_else(|| i.to_string()))
                    .collect();
                (pairs, table)
            }
            _ => (subs.iter().cloned().zip(0..).collect(), names),
        };
        let mut files = Vec::new();
        for (dir, label) in &classes {
            for f in sorted_entries(dir)? {
                if f.is_file() && image_format(&f).is_some() {
                    files.push((f, *label));
                }
            }
        }
        if files.is_empty() {
            bail!(
                "data: folder {} has no PNG/JPEG images in class sub-folders (expected <folder>/<class>/<image>.png)",
                root.display()
            );
        }
        let mut size: Option<(u32, u32, PathBuf)> = None;
        let mut gray = true;
        for (f, _) in &files {
            let (w0, h0, c) = read_header(f)?;
            gray &= is_gray(c);
            check_fits(f, w0, h0, &opts)?;
            let (w, h) = opts.output_size(w0, h0);
            match &size {
                None => size = Some((w, h, f.clone())),
                Some((wa, ha, fa)) => {
                    if (w, h) != (*wa, *ha) {
                        if opts.active() {
                            bail!(
                                "data: image {} is {w}x{h} after resizing but {} is {wa}x{ha}; add --crop N to cut every image to one size",
                                f.display(),
                                fa.display()
                            );
                        }
                        bail!(
                            "data: image {} is {w}x{h} but {} (and the images before it) are {wa}x{ha}; all images must share one size (or pass --resize N --crop N)",
                            f.display(),
                            fa.display()
                        );
                    }
                }
            }
        }
        let (w, h, _) = size.ok_or_else(|| anyhow!("data: no images in {}", root.display()))?;
        let shape = if gray {
            vec![h as usize, w as usize]
        } else {
            vec![h as usize, w as usize, 3]
        };
        let folder_names = if is_numeric {
            vec![]
        } else {
            class_names.clone()
        };
        Ok(ImageFolderSource {
            root: root.to_path_buf(),
            class_names,
            folder_names,
            files,
            shape,
            gray,
            opts,
            pos: 0,
        })
    }

    /// Class names indexed by label.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
    }

    /// Labels the images by a class list instead of by folder order, when every class
    /// folder's name is one of `aliases` (each class's accepted names, by label; an
    /// ImageNet synset and its human name, say). Returns whether it did.
    pub fn relabel_by_names(&mut self, aliases: &[Vec<String>]) -> bool {
        if self.folder_names.is_empty() {
            return false;
        }
        let index: Option<Vec<usize>> = self
            .folder_names
            .iter()
            .map(|f| aliases.iter().position(|a| a.iter().any(|n| n == f)))
            .collect();
        let Some(index) = index else {
            return false;
        };
        for (_, label) in self.files.iter_mut() {
            *label = index[*label];
        }
        self.folder_names = aliases
            .iter()
            .map(|a| a.last().cloned().unwrap_or_default())
            .collect();
        self.class_names = self.folder_names.clone();
        true
    }

    /// Class names from the folder names (none for numeric class folders).
    pub fn named_classes(&self) -> Option<Vec<String>> {
        (!self.folder_names.is_empty()).then(|| self.folder_names.clone())
    }

    /// Decodes every image as `channels` (1: grey, 3: RGB) whatever the files hold.
    pub fn set_channels(&mut self, channels: usize) -> bool {
        if self.pos > 0 {
            return false;
        }
        let (h, w) = (self.shape[0], self.shape[1]);
        match channels {
            1 => {
                self.gray = true;
                self.shape = vec![h, w];
            }
            3 => {
                self.gray = false;
                self.shape = vec![h, w, 3];
            }
            _ => return false,
        }
        true
    }

    /// The image files in stream order with their labels.
    pub fn files(&self) -> &[(PathBuf, usize)] {
        &self.files
    }
}

fn reader(path: &Path) -> Result<ImageReader<BufReader<File>>> {
    let fmt = image_format(path)
        .ok_or_else(|| anyhow!("data: {} is not a PNG/JPEG file name", path.display()))?;
    let f =
        File::open(path).with_context(|| format!("data: cannot open image {}", path.display()))?;
    Ok(ImageReader::with_format(BufReader::new(f), fmt))
}

fn read_header(path: &Path) -> Result<(u32, u32, ColorType)> {
    if image_format(path) == Some(ImageFormat::Jpeg) {
        if let Some(n) = jpeg_components(path)? {
            if n == 4 {
                bail!(
                    "data: image {} is a CMYK JPEG (4 colour components), which harden does not read; convert it to RGB",
                    path.display()
                );
            }
        }
    }
    let dec = reader(path)?
        .into_decoder()
        .map_err(|e| anyhow!("data: cannot decode image {}: {e}", path.display()))?;
    let (w, h) = dec.dimensions();
    let c = dec.color_type();
    if !matches!(
        c,
        ColorType::L8 | ColorType::La8 | ColorType::Rgb8 | ColorType::Rgba8
    ) {
        bail!(
            "data: image {} has {c:?} pixels; harden reads 8-bit grey or RGB images only (convert 16-bit or float images to 8 bits)",
            path.display()
        );
    }
    if w == 0 || h == 0 {
        bail!(
            "data: image {} is {w}x{h}: it has no pixels",
            path.display()
        );
    }
    Ok((w, h, c))
}

/// The number of colour components a JPEG's frame header declares (`None` when no frame
/// header is found before the scan; the decoder then reports what is wrong).
fn jpeg_components(path: &Path) -> Result<Option<u8>> {
    use std::io::Read;
    let mut head = Vec::new();
    File::open(path)
        .with_context(|| format!("data: cannot open image {}", path.display()))?
        .take(1 << 20)
        .read_to_end(&mut head)
        .with_context(|| format!("data: cannot read image {}", path.display()))?;
    let mut i = 2; // after SOI
    while i + 4 <= head.len() {
        if head[i] != 0xFF {
            return Ok(None);
        }
        let marker = head[i + 1];
        if marker == 0xFF {
            i += 1;
            continue;
        }
        let len = u16::from_be_bytes([head[i + 2], head[i + 3]]) as usize;
        let is_sof = (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            return Ok(head.get(i + 9).copied());
        }
        if marker == 0xDA {
            return Ok(None);
        }
        i += 2 + len;
    }
    Ok(None)
}

/// Fails when `--crop` asks for more than the (resized) image holds.
fn check_fits(path: &Path, w: u32, h: u32, opts: &ImageOptions) -> Result<()> {
    let Some(c) = opts.crop else { return Ok(()) };
    let (rw, rh) = ImageOptions {
        crop: None,
        ..*opts
    }
    .output_size(w, h);
    if c > rw || c > rh {
        bail!(
            "data: image {} is {rw}x{rh}{}, smaller than --crop {c}",
            path.display(),
            if opts.resize.is_some() {
                format!(" after resizing (from {w}x{h})")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

/// Resizes (shorter side, bilinear with antialiasing) and centre-crops `img`.
pub fn resize_and_crop(img: image::DynamicImage, opts: &ImageOptions) -> image::DynamicImage {
    let mut img = img;
    if let Some(n) = opts.resize {
        let (w, h) = ImageOptions {
            resize: Some(n),
            crop: None,
        }
        .output_size(img.width(), img.height());
        if (w, h) != (img.width(), img.height()) {
            img = img.resize_exact(w, h, image::imageops::FilterType::Triangle);
        }
    }
    if let Some(c) = opts.crop {
        let (w, h) = (img.width(), img.height());
        // torchvision: top = int(round((h - c) / 2.0)), Python rounding halves to even.
        let left = ((w.saturating_sub(c)) as f64 / 2.0).round_ties_even() as u32;
        let top = ((h.saturating_sub(c)) as f64 / 2.0).round_ties_even() as u32;
        img = img.crop_imm(left, top, c.min(w), c.min(h));
    }
    img
}

impl DataSource for ImageFolderSource {
    fn example_shape(&self) -> &[usize] {
        &self.shape
    }
    fn kind(&self) -> ValueKind {
        ValueKind::Pixel8
    }
    fn len(&self) -> Option<usize> {
        Some(self.files.len())
    }
    fn label_names(&self) -> Option<Vec<String>> {
        self.named_classes()
    }
    fn set_channels(&mut self, channels: usize) -> bool {
        ImageFolderSource::set_channels(self, channels)
    }
    fn describe(&self) -> String {
        let mut prep = String::new();
        if let Some(n) = self.opts.resize {
            prep += &format!(", shorter side resized to {n}");
        }
        if let Some(c) = self.opts.crop {
            prep += &format!(", centre-cropped to {c}x{c}");
        }
        format!(
            "image folder {} ({} images of {:?}, {}{prep}, {} classes)",
            self.root.display(),
            self.files.len(),
            self.shape,
            if self.gray { "grayscale" } else { "RGB" },
            self.class_names.len()
        )
    }
    fn next_batch(
        &mut self,
        n: usize,
        xs: &mut Vec<f32>,
        ys: &mut Vec<Option<usize>>,
    ) -> Result<usize> {
        let k = n.min(self.files.len() - self.pos);
        for (f, label) in &self.files[self.pos..self.pos + k] {
            let img = reader(f)?
                .decode()
                .map_err(|e| anyhow!("data: cannot decode image {}: {e}", f.display()))?;
            let img = resize_and_crop(img, &self.opts);
            let expect = (self.shape[1] as u32, self.shape[0] as u32);
            if (img.width(), img.height()) != expect {
                bail!(
                    "data: image {} is {}x{} but the folder's images are {}x{}",
                    f.display(),
                    img.width(),
                    img.height(),
                    expect.0,
                    expect.1
                );
            }
            if self.gray {
                xs.extend(img.into_luma8().into_raw().into_iter().map(|v| v as f32));
            } else {
                xs.extend(img.into_rgb8().into_raw().into_iter().map(|v| v as f32));
            }
            ys.push(Some(*label));
        }
        self.pos += k;
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn write_gray(path: &Path, w: u32, h: u32, v: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        image::GrayImage::from_pixel(w, h, image::Luma([v]))
            .save(path)
            .unwrap();
    }

    fn drain(src: &mut dyn DataSource) -> (Vec<f32>, Vec<Option<usize>>) {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        while src.next_batch(2, &mut xs, &mut ys).unwrap() > 0 {}
        (xs, ys)
    }

    #[test]
    fn gray_named_classes() {
        let d = tempfile::tempdir().unwrap();
        write_gray(&d.path().join("cat/b.png"), 3, 2, 10);
        write_gray(&d.path().join("cat/a.PNG"), 3, 2, 11);
        write_gray(&d.path().join("ant/z.png"), 3, 2, 12);
        std::fs::write(d.path().join("ant/notes.txt"), "x").unwrap();
        assert!(looks_like_image_folder(d.path()));
        let mut s = ImageFolderSource::open(d.path()).unwrap();
        assert_eq!(s.class_names(), &["ant".to_string(), "cat".to_string()]);
        assert_eq!(s.example_shape(), &[2, 3]);
        let (xs, ys) = drain(&mut s);
        assert_eq!(ys, vec![Some(0), Some(1), Some(1)]);
        assert_eq!(xs.len(), 18);
        assert_eq!((xs[0], xs[6], xs[12]), (12.0, 11.0, 10.0));
    }

    #[test]
    fn numeric_classes_and_rgb() {
        let d = tempfile::tempdir().unwrap();
        write_gray(&d.path().join("10/a.png"), 2, 2, 1);
        write_gray(&d.path().join("2/a.png"), 2, 2, 2);
        let rgb = image::RgbImage::from_pixel(2, 2, image::Rgb([200, 100, 50]));
        rgb.save(d.path().join("2/b.jpg")).unwrap();
        let mut s = ImageFolderSource::open(d.path()).unwrap();
        assert_eq!(s.example_shape(), &[2, 2, 3]);
        assert_eq!(s.class_names().len(), 11);
        assert_eq!(s.class_names()[10], "10");
        let (xs, ys) = drain(&mut s);
        assert_eq!(ys, vec![Some(2), Some(2), Some(10)]);
        assert_eq!(xs.len(), 36);
        assert_eq!(&xs[0..3], &[2.0, 2.0, 2.0]);
        assert!((xs[12] - 200.0).abs() < 8.0, "{}", xs[12]);
    }

    #[test]
    fn odd_size_and_errors() {
        let d = tempfile::tempdir().unwrap();
        write_gray(&d.path().join("a/1.png"), 2, 2, 1);
        write_gray(&d.path().join("b/2.png"), 3, 2, 1);
        let e = ImageFolderSource::open(d.path()).err().unwrap().to_string();
        assert!(
            e.contains("2.png") && e.contains("3x2") && e.contains("one size"),
            "{e}"
        );
        std::fs::write(d.path().join("b/2.png"), b"not a png").unwrap();
        let e = ImageFolderSource::open(d.path()).err().unwrap().to_string();
        assert!(
            e.contains("cannot decode image") && e.contains("2.png"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let empty = tempfile::tempdir().unwrap();
        std::fs::create_dir(empty.path().join("a")).unwrap();
        assert!(!looks_like_image_folder(empty.path()));
        let e = ImageFolderSource::open(empty.path())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no PNG/JPEG"), "{e}");
    }

    #[test]
    fn resize_and_crop_bring_sizes_together() {
        let d = tempfile::tempdir().unwrap();
        // A horizontal ramp 40x20 and a 30x60 grey image.
        let ramp = image::GrayImage::from_fn(40, 20, |x, _| image::Luma([(x * 6) as u8]));
        std::fs::create_dir_all(d.path().join("a")).unwrap();
        ramp.save(d.path().join("a/ramp.png")).unwrap();
        write_gray(&d.path().join("b/flat.png"), 30, 60, 77);
        let e = ImageFolderSource::open(d.path()).err().unwrap().to_string();
        assert!(e.contains("--resize N --crop N"), "{e}");
        let opts = ImageOptions {
            resize: Some(10),
            crop: None,
        };
        assert_eq!(opts.output_size(40, 20), (20, 10));
        assert_eq!(opts.output_size(30, 60), (10, 20));
        let e = ImageFolderSource::open_with(d.path(), opts)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("after resizing") && e.contains("--crop"), "{e}");
        let opts = ImageOptions {
            resize: Some(10),
            crop: Some(8),
        };
        let mut s = ImageFolderSource::open_with(d.path(), opts).unwrap();
        assert_eq!(s.example_shape(), &[8, 8]);
        assert!(s.describe().contains("resized to 10") && s.describe().contains("8x8"));
        let (xs, ys) = drain(&mut s);
        assert_eq!(ys, vec![Some(0), Some(1)]);
        // The ramp halves in width: 20 columns, the crop keeps columns 6..14, whose
        // centres sit at source x = 2c + 0.5, so value 6 * (2c + 0.5).
        for c in 1..7 {
            let want = 6.0 * (2.0 * (c + 6) as f32 + 0.5);
            assert!(
                (xs[c] - want).abs() <= 1.5,
                "column {c}: {} vs {want}",
                xs[c]
            );
            assert_eq!(xs[c], xs[8 * 5 + c], "rows agree");
        }
        assert!(xs[64..].iter().all(|v| *v == 77.0));
    }

    #[test]
    fn downscaling_is_antialiased() {
        // A one-pixel checkerboard shrunk 3x: an antialiased filter averages it to grey;
        // plain bilinear sampling (output centres fall on source pixel centres) would
        // return its black and white pixels.
        let d = tempfile::tempdir().unwrap();
        let board = image::GrayImage::from_fn(48, 48, |x, y| {
            image::Luma([if (x + y) % 2 == 0 { 0 } else { 255 }])
        });
        std::fs::create_dir_all(d.path().join("a")).unwrap();
        board.save(d.path().join("a/board.png")).unwrap();
        let opts = ImageOptions {
            resize: Some(16),
            crop: None,
        };
        let mut s = ImageFolderSource::open_with(d.path(), opts).unwrap();
        assert_eq!(s.example_shape(), &[16, 16]);
        let (xs, _) = drain(&mut s);
        assert!(
            xs.iter().all(|v| (*v - 127.5).abs() < 16.0),
            "{:?}",
            &xs[..16]
        );
    }

    #[test]
    fn crop_larger_than_image_and_channels() {
        let d = tempfile::tempdir().unwrap();
        write_gray(&d.path().join("a/x.png"), 8, 6, 9);
        let opts = ImageOptions {
            resize: None,
            crop: Some(7),
        };
        let e = ImageFolderSource::open_with(d.path(), opts)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("x.png is 8x6, smaller than --crop 7"), "{e}");
        let mut s = ImageFolderSource::open_with(
            d.path(),
            ImageOptions {
                resize: None,
                crop: Some(4),
            },
        )
        .unwrap();
        assert!(DataSource::set_channels(&mut s, 3));
        assert_eq!(s.example_shape(), &[4, 4, 3]);
        let (xs, _) = drain(&mut s);
        assert_eq!(xs, vec![9.0; 48]);
        assert_eq!(s.label_names(), Some(vec!["a".to_string()]));
    }

    #[test]
    fn relabel_by_a_class_list() {
        let d = tempfile::tempdir().unwrap();
        write_gray(&d.path().join("n02/a.png"), 2, 2, 1);
        write_gray(&d.path().join("n01/a.png"), 2, 2, 2);
        let mut s = ImageFolderSource::open(d.path()).unwrap();
        let aliases = vec![
            vec!["n00".to_string(), "zero".to_string()],
            vec!["n01".to_string(), "one".to_string()],
            vec!["n02".to_string(), "two".to_string()],
        ];
        assert!(s.relabel_by_names(&aliases));
        let (_, ys) = drain(&mut s);
        assert_eq!(ys, vec![Some(1), Some(2)]);
        assert_eq!(s.label_names().unwrap(), vec!["zero", "one", "two"]);
        let mut s = ImageFolderSource::open(d.path()).unwrap();
        assert!(!s.relabel_by_names(&aliases[..2]));
    }

    #[test]
    fn unsupported_images_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a")).unwrap();
        let p16 = d.path().join("a/deep.png");
        image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_pixel(2, 2, image::Luma([999]))
            .save(&p16)
            .unwrap();
        let e = ImageFolderSource::open(d.path()).err().unwrap().to_string();
        assert!(
            e.contains("deep.png") && e.contains("L16") && e.contains("8-bit"),
            "{e}"
        );
        std::fs::remove_file(&p16).unwrap();
        // A JPEG whose frame header declares 4 components (CMYK / YCCK).
        let mut jpg = std::io::Cursor::new(Vec::new());
        image::RgbImage::from_pixel(4, 4, image::Rgb([1, 2, 3]))
            .write_to(&mut jpg, ImageFormat::Jpeg)
            .unwrap();
        let mut b = jpg.into_inner();
        let sof = b.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        assert_eq!(b[sof + 9], 3);
        b[sof + 9] = 4;
        let pc = d.path().join("a/print.jpg");
        std::fs::write(&pc, &b).unwrap();
        let e = ImageFolderSource::open(d.path()).err().unwrap().to_string();
        assert!(e.contains("print.jpg") && e.contains("CMYK"), "{e}");
        std::fs::remove_file(&pc).unwrap();
        std::fs::write(d.path().join("a/empty.png"), b"").unwrap();
        let e = ImageFolderSource::open(d.path()).err().unwrap().to_string();
        assert!(e.contains("empty.png") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn resize_and_crop_match_torchvision() {
        // fixtures/data/resize_ref: a 120x90 photo-like image and torchvision's
        // Resize(16) + CenterCrop(12) of it (scripts/make_resize_reference.py). The crop's
        // left edge, (21 - 12) / 2 = 4.5, rounds to even as Python does.
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/data");
        let opts = ImageOptions {
            resize: Some(16),
            crop: Some(12),
        };
        let mut s = ImageFolderSource::open_with(&root.join("resize_ref"), opts).unwrap();
        assert_eq!(s.example_shape(), &[12, 12, 3]);
        let (hwc, _) = drain(&mut s);
        let mut r = crate::data::npy::NpySource::open_npy(&root.join("resize_ref.npy")).unwrap();
        let (chw, _) = drain(&mut r);
        assert_eq!(chw.len(), 3 * 12 * 12);
        let mut worst = 0f32;
        let mut sum = 0f32;
        for c in 0..3 {
            for p in 0..144 {
                let d = (hwc[p * 3 + c] - chw[c * 144 + p] * 255.0).abs();
                worst = worst.max(d);
                sum += d;
            }
        }
        assert!(worst <= 1.01, "largest difference {worst} (8-bit steps)");
        assert!(sum / 432.0 < 0.5, "mean difference {}", sum / 432.0);
    }
}
