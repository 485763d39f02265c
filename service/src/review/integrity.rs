//! 92: the integrity check. The image must fully decode with the `image` crate within the
//! configured limits (dimensions, pixels, decoder allocation, file size, time); truncated,
//! mislabelled, unsupported or over-limit files are refused with the reason.

use crate::config::Limits;
use image::{ImageFormat, ImageReader};
use std::io::{BufReader, Read};
use std::path::Path;

/// Formats the review accepts (content-sniffed, never by file name alone).
pub const SUPPORTED: &[ImageFormat] = &[
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Gif,
    ImageFormat::WebP,
    ImageFormat::Tiff,
];

fn format_name(f: ImageFormat) -> String {
    format!("{f:?}").to_ascii_lowercase()
}

/// Decodes the file; Ok is a short description ("png 640x480"), Err the `corrupt:` detail.
pub fn check(path: &Path, file_name: &str, limits: &Limits) -> Result<String, String> {
    let size = std::fs::metadata(path)
        .map_err(|e| format!("unreadable: {e}"))?
        .len();
    if size > limits.max_upload_bytes {
        return Err(format!(
            "limits: {size} bytes exceeds {}",
            limits.max_upload_bytes
        ));
    }
    let mut head = [0u8; 64];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut head))
        .map_err(|e| format!("unreadable: {e}"))?;
    let detected = image::guess_format(&head[..n])
        .map_err(|_| "not an image: content matches no known image format".to_string())?;
    if !SUPPORTED.contains(&detected) {
        return Err(format!("unsupported format {}", format_name(detected)));
    }
    if let Ok(named) = ImageFormat::from_path(file_name) {
        if named != detected {
            return Err(format!(
                "mislabelled: the name says {} but the content is {}",
                format_name(named),
                format_name(detected)
            ));
        }
    }
    let mut il = image::Limits::default();
    il.max_image_width = Some(limits.max_width);
    il.max_image_height = Some(limits.max_height);
    il.max_alloc = Some(limits.max_decoded_bytes);
    let reader = || -> Result<ImageReader<BufReader<std::fs::File>>, String> {
        let f = std::fs::File::open(path).map_err(|e| format!("unreadable: {e}"))?;
        let mut r = ImageReader::with_format(BufReader::new(f), detected);
        r.limits(il.clone());
        Ok(r)
    };
    let (w, h) = reader()?.into_dimensions().map_err(describe)?;
    if u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err(format!(
            "limits: {w}x{h} is over {} pixels",
            limits.max_pixels
        ));
    }
    let img = reader()?.decode().map_err(describe)?;
    if (img.width(), img.height()) != (w, h) {
        return Err("decoded size differs from the header".into());
    }
    Ok(format!("{} {w}x{h}", format_name(detected)))
}

fn describe(e: image::ImageError) -> String {
    match e {
        image::ImageError::Limits(l) => format!("limits: {l}"),
        image::ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "truncated".into()
        }
        e => format!("does not decode: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 3) as u8, 99]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img =
            image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 5) as u8, (y * 9) as u8, 10]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    fn run(bytes: &[u8], name: &str, limits: &Limits) -> Result<String, String> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("q");
        std::fs::write(&p, bytes).unwrap();
        check(&p, name, limits)
    }

    #[test]
    fn good_images_pass_92() {
        assert_eq!(
            run(&png(64, 48), "a.png", &Limits::default()).unwrap(),
            "png 64x48"
        );
        assert_eq!(
            run(&jpeg(64, 48), "a.jpg", &Limits::default()).unwrap(),
            "jpeg 64x48"
        );
    }

    #[test]
    fn truncated_not_image_mislabelled_92() {
        let p = png(64, 48);
        let e = run(&p[..p.len() / 2], "a.png", &Limits::default()).unwrap_err();
        assert!(
            e.contains("truncated") || e.contains("does not decode"),
            "{e}"
        );
        let e = run(b"#!/bin/sh\necho hi\n", "a.png", &Limits::default()).unwrap_err();
        assert!(e.starts_with("not an image"), "{e}");
        let e = run(&jpeg(8, 8), "a.png", &Limits::default()).unwrap_err();
        assert!(e.starts_with("mislabelled"), "{e}");
    }

    #[test]
    fn over_limits_92() {
        let l = Limits {
            max_width: 32,
            ..Limits::default()
        };
        let e = run(&png(64, 48), "a.png", &l).unwrap_err();
        assert!(e.starts_with("limits"), "{e}");
        let l = Limits {
            max_pixels: 1000,
            ..Limits::default()
        };
        let e = run(&png(64, 48), "a.png", &l).unwrap_err();
        assert!(e.starts_with("limits"), "{e}");
    }

    #[test]
    fn decompression_bomb_92() {
        // A tiny PNG that claims 20000x20000 pixels of one colour: refused by dimensions and
        // by the allocation limit before any large buffer is made.
        let img = image::GrayImage::new(20000, 2000);
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        let bytes = out.into_inner();
        assert!(bytes.len() < 200_000, "bomb is small: {}", bytes.len());
        let l = Limits {
            max_decoded_bytes: 8 << 20,
            ..Limits::default()
        };
        let e = run(&bytes, "bomb.png", &l).unwrap_err();
        assert!(e.starts_with("limits"), "{e}");
    }
}
