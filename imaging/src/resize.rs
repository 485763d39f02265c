//! High-quality resizing with `fast_image_resize` (SIMD convolution, Lanczos3; alpha is
//! premultiplied for the convolution so transparent pixels do not bleed colour).

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{GrayImage, RgbaImage};

/// A rectangle in source pixels; fractional edges are honoured (sub-pixel crop).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropPx {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl CropPx {
    pub fn full(w: u32, h: u32) -> Self {
        Self {
            x: 0.0,
            y: 0.0,
            w: f64::from(w),
            h: f64::from(h),
        }
    }
}

fn options(crop: CropPx) -> ResizeOptions {
    ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .crop(crop.x, crop.y, crop.w, crop.h)
}

/// Resizes the `crop` region of `src` to `w`x`h`.
pub fn rgba(src: &RgbaImage, crop: CropPx, w: u32, h: u32) -> RgbaImage {
    let (w, h) = (w.max(1), h.max(1));
    let view = ImageRef::new(src.width(), src.height(), src.as_raw(), PixelType::U8x4)
        .expect("RgbaImage buffer matches its size");
    let mut dst = Image::new(w, h, PixelType::U8x4);
    Resizer::new()
        .resize(&view, &mut dst, &options(crop))
        .expect("same pixel type, non-empty sizes");
    RgbaImage::from_raw(w, h, dst.into_vec()).expect("sizes match")
}

/// Resizes a grayscale image (masks).
pub fn gray(src: &GrayImage, crop: CropPx, w: u32, h: u32) -> GrayImage {
    let (w, h) = (w.max(1), h.max(1));
    let view = ImageRef::new(src.width(), src.height(), src.as_raw(), PixelType::U8)
        .expect("GrayImage buffer matches its size");
    let mut dst = Image::new(w, h, PixelType::U8);
    Resizer::new()
        .resize(&view, &mut dst, &options(crop))
        .expect("same pixel type, non-empty sizes");
    GrayImage::from_raw(w, h, dst.into_vec()).expect("sizes match")
}

/// The whole image scaled so its long side is `long` (never upscaled).
pub fn fit_long_side(src: &RgbaImage, long: u32) -> RgbaImage {
    let (w, h) = crate::decode::fit_long_side(src.width(), src.height(), long);
    if (w, h) == src.dimensions() {
        return src.clone();
    }
    rgba(src, CropPx::full(src.width(), src.height()), w, h)
}
