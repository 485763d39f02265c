//! Decoding for reduced images and composition: EXIF orientation honoured, ICC profiles
//! converted to sRGB, and JPEG decode-time scaling (DCT domain, 1/2, 1/4, 1/8) when only a
//! reduced image is wanted (claim 6: the service's reduced image of every stored image).

use crate::colour::{self, Colour};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbaImage};
use std::io::{BufRead, Cursor, Seek};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("reading {0}: {1}")]
    Io(String, std::io::Error),
    #[error("not an image: content matches no known image format")]
    UnknownFormat,
    #[error("limits: {0}")]
    Limits(String),
    #[error("does not decode: {0}")]
    Decode(String),
}

/// Decoder limits (the service passes its review limits; the client generous defaults).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_width: u32,
    pub max_height: u32,
    /// Largest allocation the decoder may make.
    pub max_alloc: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_width: 16384,
            max_height: 16384,
            max_alloc: 1 << 30,
        }
    }
}

/// An image as composition sees it: RGBA8 in sRGB, upright.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub image: RgbaImage,
    /// Size of the full image, upright (after EXIF orientation), before any decode-time scaling.
    pub source_width: u32,
    pub source_height: u32,
    pub format: ImageFormat,
    /// The EXIF orientation that was applied.
    pub orientation: Orientation,
    /// The JPEG DCT-domain scale used (8 = full size, 1 = 1/8).
    pub dct_scale_eighths: u8,
    pub colour: Colour,
}

fn swaps_axes(o: Orientation) -> bool {
    matches!(
        o,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    )
}

/// Decodes a file. With `reduce_to = Some(long_side)` a JPEG is decoded at the smallest DCT
/// scale whose long side is still at least `long_side` (the caller resizes the rest of the way).
pub fn decode_file(
    path: &Path,
    limits: Limits,
    reduce_to: Option<u32>,
) -> Result<Decoded, DecodeError> {
    let bytes = std::fs::read(path).map_err(|e| DecodeError::Io(path.display().to_string(), e))?;
    decode_bytes(&bytes, limits, reduce_to)
}

pub fn decode_bytes(
    bytes: &[u8],
    limits: Limits,
    reduce_to: Option<u32>,
) -> Result<Decoded, DecodeError> {
    let format = image::guess_format(bytes).map_err(|_| DecodeError::UnknownFormat)?;
    if format == ImageFormat::Jpeg {
        if let Some(long) = reduce_to {
            if let Some(d) = jpeg_scaled(bytes, limits, long)? {
                return Ok(d);
            }
        }
    }
    decode_full(Cursor::new(bytes), format, limits)
}

/// The general path: the `image` crate's decoders (zune-jpeg for JPEG), full size.
fn decode_full<R: BufRead + Seek>(
    r: R,
    format: ImageFormat,
    limits: Limits,
) -> Result<Decoded, DecodeError> {
    let mut reader = ImageReader::with_format(r, format);
    let mut l = image::Limits::default();
    l.max_image_width = Some(limits.max_width);
    l.max_image_height = Some(limits.max_height);
    l.max_alloc = Some(limits.max_alloc);
    reader.limits(l);
    let mut dec = reader.into_decoder().map_err(describe)?;
    let orientation = dec.orientation().unwrap_or(Orientation::NoTransforms);
    let icc = dec.icc_profile().ok().flatten();
    let mut img = DynamicImage::from_decoder(dec).map_err(describe)?;
    img.apply_orientation(orientation);
    let (w, h) = (img.width(), img.height());
    let mut rgba = img.into_rgba8();
    let colour = colour::to_srgb(&mut rgba, icc.as_deref());
    Ok(Decoded {
        image: rgba,
        source_width: w,
        source_height: h,
        format,
        orientation,
        dct_scale_eighths: 8,
        colour,
    })
}

/// JPEG decode-time scaling with `jpeg-decoder` (`Decoder::scale`: the IDCT runs at 1/2, 1/4 or
/// 1/8 size, so a 24 MP photo never exists at full size). `None` when the pixel format is one
/// this path does not handle (the general path takes it).
fn jpeg_scaled(bytes: &[u8], limits: Limits, long: u32) -> Result<Option<Decoded>, DecodeError> {
    let mut dec = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    dec.read_info()
        .map_err(|e| DecodeError::Decode(e.to_string()))?;
    let info = dec
        .info()
        .ok_or_else(|| DecodeError::Decode("no JPEG header".into()))?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    if w > limits.max_width || h > limits.max_height {
        return Err(DecodeError::Limits(format!(
            "{w}x{h} is over {}x{}",
            limits.max_width, limits.max_height
        )));
    }
    if !matches!(
        info.pixel_format,
        jpeg_decoder::PixelFormat::RGB24 | jpeg_decoder::PixelFormat::L8
    ) {
        return Ok(None);
    }
    let (req_w, req_h) = fit_long_side(w, h, long);
    let (sw, sh) = dec
        .scale(req_w.min(65535) as u16, req_h.min(65535) as u16)
        .map_err(|e| DecodeError::Decode(e.to_string()))?;
    let (sw, sh) = (u32::from(sw), u32::from(sh));
    if u64::from(sw) * u64::from(sh) * 4 > limits.max_alloc {
        return Err(DecodeError::Limits(format!(
            "{sw}x{sh} needs more than {} bytes",
            limits.max_alloc
        )));
    }
    dec.set_max_decoding_buffer_size(limits.max_alloc.min(usize::MAX as u64) as usize);
    let pixels = dec
        .decode()
        .map_err(|e| DecodeError::Decode(e.to_string()))?;
    let rgba = match info.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => {
            let mut out = Vec::with_capacity(pixels.len() / 3 * 4);
            for p in pixels.chunks_exact(3) {
                out.extend_from_slice(&[p[0], p[1], p[2], 255]);
            }
            out
        }
        _ => pixels.iter().flat_map(|&g| [g, g, g, 255]).collect(),
    };
    let mut img = RgbaImage::from_raw(sw, sh, rgba)
        .ok_or_else(|| DecodeError::Decode("decoded size differs from the header".into()))?;
    let orientation = dec
        .exif_data()
        .and_then(Orientation::from_exif_chunk)
        .unwrap_or(Orientation::NoTransforms);
    let icc = dec.icc_profile();
    let colour = colour::to_srgb(&mut img, icc.as_deref());
    let mut dyn_img = DynamicImage::ImageRgba8(img);
    dyn_img.apply_orientation(orientation);
    let (source_width, source_height) = if swaps_axes(orientation) {
        (h, w)
    } else {
        (w, h)
    };
    Ok(Some(Decoded {
        image: dyn_img.into_rgba8(),
        source_width,
        source_height,
        format: ImageFormat::Jpeg,
        orientation,
        dct_scale_eighths: (8 * sw).div_ceil(w).clamp(1, 8) as u8,
        colour,
    }))
}

/// The size of a `w`x`h` image scaled so that its long side is `long` (never upscaled, at
/// least 1 pixel each way).
pub fn fit_long_side(w: u32, h: u32, long: u32) -> (u32, u32) {
    let m = w.max(h);
    if m <= long {
        return (w, h);
    }
    let s = f64::from(long) / f64::from(m);
    (
        ((f64::from(w) * s).round() as u32).max(1),
        ((f64::from(h) * s).round() as u32).max(1),
    )
}

fn describe(e: image::ImageError) -> DecodeError {
    match e {
        image::ImageError::Limits(l) => DecodeError::Limits(l.to_string()),
        e => DecodeError::Decode(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth as testimg;

    #[test]
    fn long_side_fits_without_upscaling() {
        assert_eq!(fit_long_side(4000, 3000, 256), (256, 192));
        assert_eq!(fit_long_side(3000, 4000, 256), (192, 256));
        assert_eq!(fit_long_side(100, 50, 256), (100, 50));
        assert_eq!(fit_long_side(10000, 1, 256), (256, 1));
    }

    #[test]
    fn jpeg_decode_time_scaling_picks_the_smallest_dct_scale() {
        let jpg = testimg::jpeg(&testimg::gradient(2048, 1536), None, None);
        let d = decode_bytes(&jpg, Limits::default(), Some(256)).unwrap();
        // 1/8 of 2048x1536 is 256x192: exactly the long side asked for.
        assert_eq!((d.image.width(), d.image.height()), (256, 192));
        assert_eq!(d.dct_scale_eighths, 1);
        assert_eq!((d.source_width, d.source_height), (2048, 1536));
        let d = decode_bytes(&jpg, Limits::default(), Some(300)).unwrap();
        assert_eq!((d.image.width(), d.image.height()), (512, 384), "1/4");
        let d = decode_bytes(&jpg, Limits::default(), None).unwrap();
        assert_eq!((d.image.width(), d.image.height()), (2048, 1536));
    }

    /// EXIF orientation 6 (rotate 90° clockwise to display): a landscape-stored JPEG is shown
    /// upright as portrait, on both decode paths, with the top-left marker moved to the top right.
    #[test]
    fn exif_orientation_is_honoured_on_both_paths() {
        let stored = testimg::marker(64, 48);
        let jpg = testimg::jpeg(&stored, Some(6), None);
        for reduce in [None, Some(24)] {
            let d = decode_bytes(&jpg, Limits::default(), reduce).unwrap();
            assert_eq!(d.orientation, Orientation::Rotate90, "{reduce:?}");
            assert_eq!((d.source_width, d.source_height), (48, 64), "{reduce:?}");
            let (w, h) = d.image.dimensions();
            assert!(h > w, "portrait after orientation: {w}x{h}");
            // The stored top-left (red) quadrant is now the top-right one.
            let p = d.image.get_pixel(w * 3 / 4, h / 8);
            assert!(p[0] > 180 && p[1] < 80 && p[2] < 80, "{reduce:?}: {p:?}");
            let q = d.image.get_pixel(w / 4, h / 8);
            assert!(q[0] < 80, "{reduce:?}: {q:?}");
        }
    }

    #[test]
    fn limits_and_garbage_are_refused() {
        let jpg = testimg::jpeg(&testimg::gradient(200, 100), None, None);
        let l = Limits {
            max_width: 100,
            ..Limits::default()
        };
        assert!(matches!(
            decode_bytes(&jpg, l, Some(64)),
            Err(DecodeError::Limits(_))
        ));
        assert!(matches!(
            decode_bytes(&jpg, l, None),
            Err(DecodeError::Limits(_))
        ));
        assert!(matches!(
            decode_bytes(b"hello", Limits::default(), None),
            Err(DecodeError::UnknownFormat)
        ));
    }
}
