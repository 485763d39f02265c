//! Reduced images (claims 6, 14: the service keeps a lower-resolution copy of every stored
//! image and template, open to every client). The long side is configurable (default 256 px);
//! JPEGs are decoded at the smallest DCT scale that still covers it, then resized with Lanczos3.

use crate::colour::Colour;
use crate::decode::{self, DecodeError, Limits};
use image::{GrayImage, ImageFormat, RgbaImage};
use std::path::Path;

pub const DEFAULT_LONG_SIDE: u32 = 256;

/// A reduced image, encoded as PNG (lossless, so a preview adds no codec error of its own).
#[derive(Debug, Clone)]
pub struct Reduced {
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// The full image's size, upright.
    pub source_width: u32,
    pub source_height: u32,
    pub colour: Colour,
    /// The JPEG DCT-domain scale used (8 = none).
    pub dct_scale_eighths: u8,
}

/// Reduces an image file to `long_side`.
pub fn reduce_file(path: &Path, long_side: u32, limits: Limits) -> Result<Reduced, DecodeError> {
    let bytes = std::fs::read(path).map_err(|e| DecodeError::Io(path.display().to_string(), e))?;
    reduce_bytes(&bytes, long_side, limits)
}

pub fn reduce_bytes(bytes: &[u8], long_side: u32, limits: Limits) -> Result<Reduced, DecodeError> {
    let d = decode::decode_bytes(bytes, limits, Some(long_side))?;
    let small = crate::resize::fit_long_side(&d.image, long_side);
    Ok(Reduced {
        png: encode_png(&small),
        width: small.width(),
        height: small.height(),
        source_width: d.source_width,
        source_height: d.source_height,
        colour: d.colour,
        dct_scale_eighths: d.dct_scale_eighths,
    })
}

/// A reduced mask: grayscale, the long side reduced like any image.
pub fn reduce_mask(
    bytes: &[u8],
    long_side: u32,
    limits: Limits,
) -> Result<(Vec<u8>, u32, u32), DecodeError> {
    let d = decode::decode_bytes(bytes, limits, Some(long_side))?;
    let small = crate::resize::fit_long_side(&d.image, long_side);
    let g = to_mask(&small);
    let mut out = std::io::Cursor::new(Vec::new());
    g.write_to(&mut out, ImageFormat::Png)
        .expect("PNG encoding to memory cannot fail");
    Ok((out.into_inner(), g.width(), g.height()))
}

/// A mask's coverage from any image: its luma (white = shows), times its alpha.
pub fn to_mask(img: &RgbaImage) -> GrayImage {
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        let p = img.get_pixel(x, y);
        // Rec. 601 luma, integer.
        let l =
            (299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2]) + 500) / 1000;
        image::Luma([((l * u32::from(p[3]) + 127) / 255) as u8])
    })
}

pub fn encode_png(img: &RgbaImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    // Fully opaque images are written as RGB (smaller files).
    if img.pixels().all(|p| p[3] == 255) {
        image::DynamicImage::ImageRgba8(img.clone())
            .into_rgb8()
            .write_to(&mut out, ImageFormat::Png)
            .expect("PNG encoding to memory cannot fail");
    } else {
        img.write_to(&mut out, ImageFormat::Png)
            .expect("PNG encoding to memory cannot fail");
    }
    out.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth;

    #[test]
    fn reduced_image_keeps_the_aspect_and_long_side_claim_6() {
        let jpg = synth::jpeg(&synth::gradient(1200, 800), None, None);
        let r = reduce_bytes(&jpg, 256, Limits::default()).unwrap();
        assert_eq!((r.width, r.height), (256, 171));
        assert_eq!((r.source_width, r.source_height), (1200, 800));
        assert_eq!(r.dct_scale_eighths, 2, "1/4 scale: 300x200, then resized");
        let img = image::load_from_memory(&r.png).unwrap();
        assert_eq!((img.width(), img.height()), (256, 171));
        // Small images are not upscaled.
        let png = synth::png(&synth::gradient(100, 40));
        let r = reduce_bytes(&png, 256, Limits::default()).unwrap();
        assert_eq!((r.width, r.height), (100, 40));
    }

    /// EXIF orientation honoured in the reduced image (claim 6).
    #[test]
    fn reduced_image_is_upright() {
        let jpg = synth::jpeg(&synth::marker(640, 480), Some(8), None);
        let r = reduce_bytes(&jpg, 256, Limits::default()).unwrap();
        assert_eq!((r.width, r.height), (192, 256));
        assert_eq!((r.source_width, r.source_height), (480, 640));
        let img = image::load_from_memory(&r.png).unwrap().into_rgba8();
        // Orientation 8 (rotate 270° cw to display): the stored top-left (red) goes bottom-left.
        let p = img.get_pixel(20, 236);
        assert!(p[0] > 180 && p[1] < 80, "{p:?}");
    }

    #[test]
    fn masks_take_luma_times_alpha() {
        let img = RgbaImage::from_raw(
            3,
            1,
            vec![255, 255, 255, 255, 0, 0, 0, 255, 255, 255, 255, 128],
        )
        .unwrap();
        assert_eq!(to_mask(&img).into_raw(), vec![255, 0, 128]);
    }
}
