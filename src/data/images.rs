//! A folder of PNG/JPEG images with one sub-folder per class (the torchvision
//! `ImageFolder` layout).
//!
//! Classes are the sub-folders (hidden ones skipped), sorted by name; the label is the
//! position in that order. If every sub-folder name is an integer (at most
//! [`MAX_NUMERIC_CLASS`]), they are sorted numerically and the integer itself is the
//! label. Image headers are read at open (size, colour) so that a size mismatch is
//! reported up front; pixels are decoded batch by batch.

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

/// A class-per-sub-folder image folder, decoded lazily.
pub struct ImageFolderSource {
    root: PathBuf,
    class_names: Vec<String>,
    files: Vec<(PathBuf, usize)>,
    shape: Vec<usize>,
    gray: bool,
    pos: usize,
}

impl ImageFolderSource {
    /// Lists the folder and reads every image header.
    pub fn open(root: &Path) -> Result<Self> {
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
            let (w, h, c) = read_header(f)?;
            gray &= is_gray(c);
            match &size {
                None => size = Some((w, h, f.clone())),
                Some((w0, h0, f0)) => {
                    if (w, h) != (*w0, *h0) {
                        bail!(
                            "data: image {} is {w}x{h} but {} (and the images before it) are {w0}x{h0}; all images must share one size",
                            f.display(),
                            f0.display()
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
        Ok(ImageFolderSource {
            root: root.to_path_buf(),
            class_names,
            files,
            shape,
            gray,
            pos: 0,
        })
    }

    /// Class names indexed by label.
    pub fn class_names(&self) -> &[String] {
        &self.class_names
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
    let dec = reader(path)?
        .into_decoder()
        .map_err(|e| anyhow!("data: cannot decode image {}: {e}", path.display()))?;
    let (w, h) = dec.dimensions();
    Ok((w, h, dec.color_type()))
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
    fn describe(&self) -> String {
        format!(
            "image folder {} ({} images of {:?}, {}, {} classes)",
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
}
