//! Examples as small PNG images (data URIs) for the HTML report's grid.

use std::io::Cursor;

use crate::audit::AuditReport;
use crate::spec::Layout;

/// How an example's values form an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Channels last (NHWC) rather than first.
    pub channels_last: bool,
}

/// The image shape of `a`'s examples: NCHW/NHWC with 1, 3 or 4 channels, or a flat
/// vector whose length is a square (shown as a grey square). `None` otherwise.
pub fn image_shape(a: &AuditReport) -> Option<ImageShape> {
    let s = &a.example_shape;
    let shape = match (a.input_spec.layout, s.as_slice()) {
        (Layout::Nchw, &[c, h, w]) => ImageShape {
            channels: c,
            height: h,
            width: w,
            channels_last: false,
        },
        (Layout::Nhwc, &[h, w, c]) => ImageShape {
            channels: c,
            height: h,
            width: w,
            channels_last: true,
        },
        _ => {
            let len: usize = s.iter().product();
            let side = (len as f64).sqrt().round() as usize;
            if side * side != len || side < 2 {
                return None;
            }
            ImageShape {
                channels: 1,
                height: side,
                width: side,
                channels_last: false,
            }
        }
    };
    matches!(shape.channels, 1 | 3 | 4).then_some(shape)
}

/// A PNG data URI of `values` (one example) with `lo..hi` mapped to black..white.
pub fn png_uri(values: &[f32], shape: ImageShape, lo: f32, hi: f32) -> Option<String> {
    let ImageShape {
        channels: c,
        height: h,
        width: w,
        channels_last,
    } = shape;
    if values.len() != c * h * w {
        return None;
    }
    let span = (hi - lo).max(1e-12);
    let byte = |v: f32| (((v - lo) / span).clamp(0.0, 1.0) * 255.0).round() as u8;
    let at = |ch: usize, y: usize, x: usize| {
        if channels_last {
            values[(y * w + x) * c + ch]
        } else {
            values[(ch * h + y) * w + x]
        }
    };
    let mut buf = Cursor::new(Vec::new());
    let result = if c == 1 {
        let px: Vec<u8> = (0..h * w).map(|i| byte(at(0, i / w, i % w))).collect();
        image::GrayImage::from_raw(w as u32, h as u32, px)?
            .write_to(&mut buf, image::ImageFormat::Png)
    } else {
        let px: Vec<u8> = (0..h * w)
            .flat_map(|i| (0..3).map(move |ch| (i, ch)))
            .map(|(i, ch)| byte(at(ch, i / w, i % w)))
            .collect();
        image::RgbImage::from_raw(w as u32, h as u32, px)?
            .write_to(&mut buf, image::ImageFormat::Png)
    };
    result.ok()?;
    Some(format!("data:image/png;base64,{}", base64(buf.get_ref())))
}

/// The perturbation `adv - clean` as an image: grey is no change, white +scale, black -scale.
pub fn perturbation_uri(
    adv: &[f32],
    clean: &[f32],
    shape: ImageShape,
    scale: f32,
) -> Option<String> {
    let d: Vec<f32> = adv.iter().zip(clean).map(|(a, c)| a - c).collect();
    let s = scale.max(1e-12);
    png_uri(&d, shape, -s, s)
}

/// Standard base64 with padding.
pub fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn png_round_trips() {
        let shape = ImageShape {
            channels: 1,
            height: 2,
            width: 3,
            channels_last: false,
        };
        let uri = png_uri(&[0.0, 0.5, 1.0, 1.0, 0.5, 0.0], shape, 0.0, 1.0).unwrap();
        let b64 = uri.strip_prefix("data:image/png;base64,").unwrap();
        // Decode by hand through the image crate: re-encode what we expect and compare.
        let want = image::GrayImage::from_raw(3, 2, vec![0, 128, 255, 255, 128, 0]).unwrap();
        let mut buf = Cursor::new(Vec::new());
        want.write_to(&mut buf, image::ImageFormat::Png).unwrap();
        assert_eq!(b64, base64(buf.get_ref()));
        assert!(png_uri(&[0.0; 5], shape, 0.0, 1.0).is_none());
    }
}
