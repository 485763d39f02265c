//! 92: the integrity check. The image must fully decode with the `image` crate within the
//! configured limits (dimensions, pixels, decoder allocation, file size, time); truncated,
//! mislabelled, unsupported or over-limit files are refused with the reason.

use crate::config::Limits;
use image::{ImageDecoder, ImageFormat, ImageReader};
use std::path::Path;

/// Formats the review accepts (content-sniffed, never by file name alone).
pub const SUPPORTED: &[ImageFormat] = &[
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::Gif,
    ImageFormat::WebP,
    ImageFormat::Tiff,
];

pub(crate) fn format_name(f: ImageFormat) -> String {
    format!("{f:?}").to_ascii_lowercase()
}

/// Why 92 said no: a type the review does not take (`unsupported:<type>`), or a file that is
/// not a whole, in-limits image of its type (`corrupt:<detail>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    Unsupported(String),
    Corrupt(String),
}

impl Failure {
    pub fn refusal(self) -> stockade_proto::reason::Refusal {
        match self {
            Failure::Unsupported(t) => stockade_proto::reason::Refusal::Unsupported(t),
            Failure::Corrupt(d) => stockade_proto::reason::Refusal::Corrupt(d),
        }
    }
}

/// A fully decoded image and what its container said about colour and orientation.
pub struct Decoded {
    pub format: ImageFormat,
    pub image: image::DynamicImage,
    pub icc: Option<Vec<u8>>,
    pub orientation: image::metadata::Orientation,
}

impl Decoded {
    /// "png 640x480", as the review records it.
    pub fn describe(&self) -> String {
        format!(
            "{} {}x{}",
            format_name(self.format),
            self.image.width(),
            self.image.height()
        )
    }
}

/// What the first bytes say the content is: one of the supported formats, or a refusal.
/// Content sniffing only; the file name plays no part here.
pub fn sniff(bytes: &[u8]) -> Result<ImageFormat, Failure> {
    if bytes.is_empty() {
        return Err(Failure::Corrupt("not an image: the file is empty".into()));
    }
    if let Ok(f) = image::guess_format(bytes) {
        return if SUPPORTED.contains(&f) {
            Ok(f)
        } else {
            Err(Failure::Unsupported(format_name(f)))
        };
    }
    match other_type(bytes) {
        Some(t) => Err(Failure::Unsupported(t.into())),
        None => Err(Failure::Corrupt(
            "not an image: content matches no known image format".into(),
        )),
    }
}

/// Recognisable non-supported content, so the refusal can say what it was.
fn other_type(b: &[u8]) -> Option<&'static str> {
    let head = &b[..b.len().min(4096)];
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let has = |m: &[u8]| b.starts_with(m);
    if (trimmed.starts_with("<svg") || trimmed.starts_with("<?xml") || trimmed.starts_with("<!--"))
        && trimmed.contains("<svg")
    {
        Some("svg")
    } else if trimmed.starts_with("<!doctype html") || trimmed.starts_with("<html") {
        Some("html")
    } else if has(b"%PDF-") {
        Some("pdf")
    } else if has(b"PK\x03\x04") {
        Some("zip")
    } else if has(b"\x1f\x8b") {
        Some("gzip")
    } else if has(b"8BPS") {
        Some("psd")
    } else if has(b"\xff\x0a") || has(b"\x00\x00\x00\x0cJXL \r\n\x87\x0a") {
        Some("jpeg-xl")
    } else if has(b"\x00\x00\x00\x0cjP  \r\n\x87\x0a") {
        Some("jpeg2000")
    } else if b.len() >= 12 && &b[4..8] == b"ftyp" {
        match &b[8..12] {
            b"avif" | b"avis" => Some("avif"),
            b"heic" | b"heix" | b"mif1" | b"msf1" | b"hevc" => Some("heif"),
            _ => Some("iso-media"),
        }
    } else if has(b"\x7fELF") {
        Some("elf-executable")
    } else if has(b"MZ") {
        Some("windows-executable")
    } else {
        None
    }
}

/// 92: sniffs `bytes`, checks the name does not claim another image type, and decodes them
/// fully within `limits` (dimensions, pixels, decoded bytes, decoder allocations).
pub fn decode(bytes: &[u8], file_name: &str, limits: &Limits) -> Result<Decoded, Failure> {
    let format = sniff_named(bytes, file_name, limits)?;
    decode_as(bytes, format, limits)
}

/// Size limit, sniffed type, and a name that does not claim another image type.
fn sniff_named(bytes: &[u8], file_name: &str, limits: &Limits) -> Result<ImageFormat, Failure> {
    let corrupt = Failure::Corrupt;
    if bytes.len() as u64 > limits.max_upload_bytes {
        return Err(corrupt(format!(
            "limits: {} bytes exceeds {}",
            bytes.len(),
            limits.max_upload_bytes
        )));
    }
    let detected = sniff(bytes)?;
    if let Ok(named) = ImageFormat::from_path(file_name) {
        if named != detected && SUPPORTED.contains(&named) {
            return Err(corrupt(format!(
                "mislabelled: the name says {} but the content is {}",
                format_name(named),
                format_name(detected)
            )));
        }
    }
    Ok(detected)
}

/// The cheap part of 92, before anything is scanned or decoded: the sniffed type, the name,
/// and the dimensions, pixels and decoded size the header declares, against the limits.
pub fn precheck(bytes: &[u8], file_name: &str, limits: &Limits) -> Result<(), Failure> {
    let format = sniff_named(bytes, file_name, limits)?;
    open_decoder(bytes, format, limits).map(drop)
}

/// A decoder for `bytes` whose header is within `limits`.
fn open_decoder<'a>(
    bytes: &'a [u8],
    format: ImageFormat,
    limits: &Limits,
) -> Result<impl ImageDecoder + 'a, Failure> {
    let corrupt = |d: String| Failure::Corrupt(d);
    let mut il = image::Limits::default();
    il.max_image_width = Some(limits.max_width);
    il.max_image_height = Some(limits.max_height);
    il.max_alloc = Some(limits.max_decoded_bytes);
    let mut r = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    r.limits(il);
    let dec = r.into_decoder().map_err(|e| corrupt(describe(e)))?;
    let (w, h) = dec.dimensions();
    if w == 0 || h == 0 {
        return Err(corrupt(format!("does not decode: empty image {w}x{h}")));
    }
    if u64::from(w) * u64::from(h) > limits.max_pixels {
        return Err(corrupt(format!(
            "limits: {w}x{h} is over {} pixels",
            limits.max_pixels
        )));
    }
    if dec.total_bytes() > limits.max_decoded_bytes {
        return Err(corrupt(format!(
            "limits: {w}x{h} decodes to {} bytes, over {}",
            dec.total_bytes(),
            limits.max_decoded_bytes
        )));
    }
    Ok(dec)
}

/// Decodes `bytes` as `format` within `limits`.
pub fn decode_as(bytes: &[u8], format: ImageFormat, limits: &Limits) -> Result<Decoded, Failure> {
    let corrupt = |d: String| Failure::Corrupt(d);
    let mut dec = open_decoder(bytes, format, limits)?;
    let (w, h) = dec.dimensions();
    let icc = dec.icc_profile().map_err(|e| corrupt(describe(e)))?;
    let orientation = dec
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let image = image::DynamicImage::from_decoder(dec).map_err(|e| corrupt(describe(e)))?;
    if (image.width(), image.height()) != (w, h) {
        return Err(corrupt("decoded size differs from the header".into()));
    }
    Ok(Decoded {
        format,
        image,
        icc,
        orientation,
    })
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
    let bytes = std::fs::read(path).map_err(|e| format!("unreadable: {e}"))?;
    match decode(&bytes, file_name, limits) {
        Ok(d) => Ok(d.describe()),
        Err(Failure::Corrupt(d)) => Err(d),
        Err(Failure::Unsupported(t)) => Err(format!("unsupported format {t}")),
    }
}

pub(crate) fn describe(e: image::ImageError) -> String {
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
