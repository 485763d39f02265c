//! Images made in code for tests, benchmarks and the README pictures (no files shipped).

use image::{ImageEncoder, Rgba, RgbaImage};

/// A smooth two-axis gradient.
pub fn gradient(w: u32, h: u32) -> RgbaImage {
    RgbaImage::from_fn(w, h, |x, y| {
        Rgba([
            (x * 255 / w.max(1)) as u8,
            (y * 255 / h.max(1)) as u8,
            (((x + y) * 127) / (w + h).max(1)) as u8 + 64,
            255,
        ])
    })
}

/// Quadrants red (top left), green (top right), blue (bottom left), white (bottom right): to see
/// orientation and crop at a glance.
pub fn marker(w: u32, h: u32) -> RgbaImage {
    RgbaImage::from_fn(w, h, |x, y| match (x < w / 2, y < h / 2) {
        (true, true) => Rgba([230, 30, 30, 255]),
        (false, true) => Rgba([30, 200, 30, 255]),
        (true, false) => Rgba([30, 30, 230, 255]),
        (false, false) => Rgba([240, 240, 240, 255]),
    })
}

/// A photo-like scene: sky gradient, sun, hills, and fine texture (so JPEG and resizing have
/// real detail to work on).
pub fn scene(w: u32, h: u32) -> RgbaImage {
    let (fw, fh) = (w as f32, h as f32);
    RgbaImage::from_fn(w, h, |x, y| {
        let (u, v) = (x as f32 / fw, y as f32 / fh);
        let hill = 0.62 + 0.08 * (u * 9.0).sin() + 0.04 * (u * 23.0 + 1.0).sin();
        let (sx, sy) = ((u - 0.72) * fw / fh, v - 0.25);
        let sun = (sx * sx + sy * sy).sqrt() < 0.09;
        let grain = ((x.wrapping_mul(73_856_093) ^ y.wrapping_mul(19_349_663)) % 23) as f32 - 11.0;
        let (r, g, b) = if sun {
            (255.0, 214.0, 90.0)
        } else if v > hill {
            let stripes = 20.0 * ((u * 120.0 + v * 40.0).sin());
            (40.0 + stripes, 130.0 + 60.0 * (1.0 - v) + stripes, 50.0)
        } else {
            (90.0 + 80.0 * v, 150.0 + 70.0 * v, 235.0)
        };
        let c = |c: f32| (c + grain).clamp(0.0, 255.0) as u8;
        Rgba([c(r), c(g), c(b), 255])
    })
}

/// A picture-frame template: a patterned border around a lighter mat.
pub fn frame(w: u32, h: u32) -> RgbaImage {
    RgbaImage::from_fn(w, h, |x, y| {
        let (u, v) = (x as f32 / w as f32, y as f32 / h as f32);
        let d = u.min(v).min(1.0 - u).min(1.0 - v);
        if d < 0.06 {
            let k = (((x / 7) + (y / 7)) % 2) as u8;
            Rgba([120 + 40 * k, 70 + 20 * k, 30, 255])
        } else {
            let t = ((u * 40.0).sin() * (v * 30.0).cos() * 12.0) as i32;
            Rgba([
                (235 + t).clamp(0, 255) as u8,
                (225 + t).clamp(0, 255) as u8,
                205,
                255,
            ])
        }
    })
}

/// A soft oval vignette mask (white centre, black corners).
pub fn oval_mask(w: u32, h: u32) -> image::GrayImage {
    image::GrayImage::from_fn(w, h, |x, y| {
        let (u, v) = (
            (x as f32 + 0.5) / w as f32 * 2.0 - 1.0,
            (y as f32 + 0.5) / h as f32 * 2.0 - 1.0,
        );
        let r = (u * u + v * v).sqrt();
        image::Luma([((1.0 - (r - 0.8) / 0.2).clamp(0.0, 1.0) * 255.0) as u8])
    })
}

/// JPEG (quality 90), optionally with an EXIF orientation and an ICC profile.
pub fn jpeg(img: &RgbaImage, orientation: Option<u16>, icc: Option<Vec<u8>>) -> Vec<u8> {
    let rgb = image::DynamicImage::ImageRgba8(img.clone()).into_rgb8();
    let mut out = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90);
    if let Some(icc) = icc {
        enc.set_icc_profile(icc).expect("JPEG takes ICC profiles");
    }
    enc.write_image(
        rgb.as_raw(),
        rgb.width(),
        rgb.height(),
        image::ExtendedColorType::Rgb8,
    )
    .expect("JPEG encoding to memory");
    match orientation {
        Some(o) => with_exif_orientation(&out, o),
        None => out,
    }
}

pub fn png(img: &RgbaImage) -> Vec<u8> {
    crate::reduce::encode_png(img)
}

/// Inserts an EXIF APP1 segment carrying only an Orientation tag right after the SOI marker.
pub fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "a JPEG");
    // TIFF, little endian: header, IFD0 with one entry (0x0112 SHORT 1 = orientation), no next IFD.
    let mut tiff = vec![b'I', b'I', 42, 0, 8, 0, 0, 0, 1, 0];
    tiff.extend_from_slice(&0x0112u16.to_le_bytes());
    tiff.extend_from_slice(&3u16.to_le_bytes());
    tiff.extend_from_slice(&1u32.to_le_bytes());
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_le_bytes());
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE1]);
    out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}
