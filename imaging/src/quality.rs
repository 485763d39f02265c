//! PSNR, to state how close the preview is to the downscaled full composition.

use image::RgbaImage;

/// Peak signal-to-noise ratio over the R, G and B channels, in dB (infinite when identical).
/// Panics if the sizes differ.
pub fn psnr(a: &RgbaImage, b: &RgbaImage) -> f64 {
    assert_eq!(
        a.dimensions(),
        b.dimensions(),
        "PSNR of images of different sizes"
    );
    let mut se = 0u64;
    let mut n = 0u64;
    for (p, q) in a.pixels().zip(b.pixels()) {
        for i in 0..3 {
            let d = i64::from(p[i]) - i64::from(q[i]);
            se += (d * d) as u64;
        }
        n += 3;
    }
    if se == 0 {
        return f64::INFINITY;
    }
    let mse = se as f64 / n as f64;
    10.0 * (255.0f64 * 255.0 / mse).log10()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psnr_of_known_error() {
        let a = RgbaImage::from_pixel(10, 10, image::Rgba([100, 100, 100, 255]));
        let mut b = a.clone();
        assert!(psnr(&a, &b).is_infinite());
        // Every sample off by 5: MSE 25 → 10·log10(65025/25) = 34.15 dB.
        for p in b.pixels_mut() {
            p[0] = 105;
            p[1] = 95;
            p[2] = 105;
        }
        assert!((psnr(&a, &b) - 34.151).abs() < 0.01, "{}", psnr(&a, &b));
    }
}
