//! Composition (claims 7, 15; Fig. 12): the user image placed in the template's slot, through
//! the slot's mask. The same function makes the preview (from reduced images) and the full
//! result (from full-size images); only the inputs' resolution differs.

use crate::geometry::{place, Fit, NormRect, Placement};
use crate::resize::{self, CropPx};
use image::{GrayImage, RgbaImage};

/// What composition used, for the caller to report.
#[derive(Debug, Clone, PartialEq)]
pub struct Composed {
    pub image: RgbaImage,
    pub placement: Placement,
}

/// Composes `user` into `template` at `slot` (fractions of the template).
///
/// `mask`: a grayscale image covering the slot (stretched to it): white = the user image shows,
/// black = the template shows, grey = alpha-blended. The user image's own alpha multiplies in.
/// Outside the drawn user image (contain mode's margins) the template shows.
///
/// `aspects` are the full-size template's and user image's width/height: a preview passes the
/// full-size ones so that its crop is exactly the full composition's crop (reduced images are
/// rounded to whole pixels).
pub fn compose(
    template: &RgbaImage,
    mask: Option<&GrayImage>,
    user: &RgbaImage,
    slot: NormRect,
    fit: Fit,
    aspects: Option<(f64, f64)>,
) -> Composed {
    let (tw, th) = template.dimensions();
    let (ta, ia) = aspects.unwrap_or((
        f64::from(tw) / f64::from(th),
        f64::from(user.width()) / f64::from(user.height()),
    ));
    let placement = place(ta, slot, ia, fit);
    let mut out = template.clone();
    let slot_px = slot.to_px(tw, th);
    let dest = placement.dest.to_px(tw, th);
    if dest.w == 0 || dest.h == 0 || slot_px.w == 0 || slot_px.h == 0 {
        return Composed {
            image: out,
            placement,
        };
    }
    let c = placement.crop;
    let (uw, uh) = (f64::from(user.width()), f64::from(user.height()));
    let crop = CropPx {
        x: c.x * uw,
        y: c.y * uh,
        w: c.w * uw,
        h: c.h * uh,
    };
    let drawn = resize::rgba(user, crop, dest.w, dest.h);
    let mask = mask.map(|m| {
        if m.dimensions() == (slot_px.w, slot_px.h) {
            m.clone()
        } else {
            resize::gray(m, CropPx::full(m.width(), m.height()), slot_px.w, slot_px.h)
        }
    });
    for y in 0..dest.h {
        let ty = dest.y + y;
        if ty >= th {
            break;
        }
        for x in 0..dest.w {
            let tx = dest.x + x;
            if tx >= tw {
                break;
            }
            let u = drawn.get_pixel(x, y);
            // Coverage in 0..=255*255: user alpha times mask.
            let m = match &mask {
                Some(m) => {
                    let mx = (tx - slot_px.x).min(slot_px.w - 1);
                    let my = (ty - slot_px.y).min(slot_px.h - 1);
                    u32::from(m.get_pixel(mx, my)[0])
                }
                None => 255,
            };
            let a = u32::from(u[3]) * m;
            if a == 0 {
                continue;
            }
            let t = out.get_pixel_mut(tx, ty);
            const FULL: u32 = 255 * 255;
            for i in 0..3 {
                let v = u32::from(u[i]) * a + u32::from(t[i]) * (FULL - a);
                t[i] = ((v + FULL / 2) / FULL) as u8;
            }
            let alpha = 255 * a + u32::from(t[3]) * (FULL - a);
            t[3] = ((alpha + FULL / 2) / FULL) as u8;
        }
    }
    Composed {
        image: out,
        placement,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::Slot;
    use image::Rgba;

    fn solid(w: u32, h: u32, c: [u8; 4]) -> RgbaImage {
        RgbaImage::from_pixel(w, h, Rgba(c))
    }

    #[test]
    fn cover_fills_the_slot_and_leaves_the_rest() {
        let t = solid(100, 80, [0, 0, 255, 255]);
        let u = solid(30, 10, [255, 0, 0, 255]);
        let slot = NormRect::from_slot(
            Slot {
                x: 10,
                y: 20,
                w: 40,
                h: 30,
            },
            100,
            80,
        );
        let c = compose(&t, None, &u, slot, Fit::Cover, None).image;
        assert_eq!(c.get_pixel(10, 20), &Rgba([255, 0, 0, 255]));
        assert_eq!(c.get_pixel(49, 49), &Rgba([255, 0, 0, 255]));
        assert_eq!(c.get_pixel(9, 20), &Rgba([0, 0, 255, 255]));
        assert_eq!(c.get_pixel(50, 49), &Rgba([0, 0, 255, 255]));
        assert_eq!(c.get_pixel(10, 50), &Rgba([0, 0, 255, 255]));
    }

    #[test]
    fn contain_shows_the_template_in_the_margins() {
        let t = solid(100, 100, [0, 0, 255, 255]);
        // 2:1 image in a 40x40 slot: drawn 40x20 at y = 10+10.
        let u = solid(60, 30, [255, 0, 0, 255]);
        let slot = NormRect::from_slot(
            Slot {
                x: 10,
                y: 10,
                w: 40,
                h: 40,
            },
            100,
            100,
        );
        let c = compose(&t, None, &u, slot, Fit::Contain, None).image;
        assert_eq!(c.get_pixel(30, 15), &Rgba([0, 0, 255, 255]), "top margin");
        assert_eq!(c.get_pixel(30, 20), &Rgba([255, 0, 0, 255]));
        assert_eq!(c.get_pixel(30, 39), &Rgba([255, 0, 0, 255]));
        assert_eq!(
            c.get_pixel(30, 40),
            &Rgba([0, 0, 255, 255]),
            "bottom margin"
        );
    }

    #[test]
    fn cover_crops_the_centre_of_the_user_image() {
        // A 3-band user image (red | green | blue, left to right) into a square slot: cover keeps
        // the middle third's green in the centre and crops away most of red and blue.
        let u = RgbaImage::from_fn(300, 100, |x, _| match x / 100 {
            0 => Rgba([255, 0, 0, 255]),
            1 => Rgba([0, 255, 0, 255]),
            _ => Rgba([0, 0, 255, 255]),
        });
        let t = solid(100, 100, [0, 0, 0, 255]);
        let c = compose(&t, None, &u, NormRect::FULL, Fit::Cover, None).image;
        for x in [5, 50, 94] {
            let p = c.get_pixel(x, 50);
            assert!(p[1] > 200 && p[0] < 30 && p[2] < 30, "x={x}: {p:?}");
        }
    }

    /// Masks with alpha: white shows the user image, black the template, grey blends; the user
    /// image's own alpha multiplies in.
    #[test]
    fn mask_alpha_blends() {
        let t = solid(4, 1, [0, 0, 200, 255]);
        let u = solid(4, 1, [200, 0, 0, 255]);
        let mask = GrayImage::from_raw(4, 1, vec![255, 0, 128, 64]).unwrap();
        let c = compose(&t, Some(&mask), &u, NormRect::FULL, Fit::Cover, None).image;
        assert_eq!(c.get_pixel(0, 0), &Rgba([200, 0, 0, 255]));
        assert_eq!(c.get_pixel(1, 0), &Rgba([0, 0, 200, 255]));
        let g = c.get_pixel(2, 0);
        assert!(g[0].abs_diff(100) <= 1 && g[2].abs_diff(100) <= 1, "{g:?}");
        let q = c.get_pixel(3, 0);
        assert!(q[0].abs_diff(50) <= 1 && q[2].abs_diff(150) <= 1, "{q:?}");
        // A half-transparent user image under a full mask blends half.
        let u2 = solid(4, 1, [200, 0, 0, 128]);
        let c = compose(&t, None, &u2, NormRect::FULL, Fit::Cover, None).image;
        let h = c.get_pixel(0, 0);
        assert!(
            h[0].abs_diff(100) <= 1 && h[2].abs_diff(100) <= 1 && h[3] == 255,
            "{h:?}"
        );
    }

    #[test]
    fn a_mask_of_another_size_is_stretched_to_the_slot() {
        let t = solid(40, 40, [0, 0, 0, 255]);
        let u = solid(40, 40, [255, 255, 255, 255]);
        // Left half white, right half black, at 4x2 pixels, stretched over a 20x20 slot.
        let mask = GrayImage::from_fn(4, 2, |x, _| image::Luma([if x < 2 { 255 } else { 0 }]));
        let slot = NormRect::from_slot(
            Slot {
                x: 10,
                y: 10,
                w: 20,
                h: 20,
            },
            40,
            40,
        );
        let c = compose(&t, Some(&mask), &u, slot, Fit::Cover, None).image;
        assert!(c.get_pixel(12, 20)[0] > 240);
        assert!(c.get_pixel(27, 20)[0] < 15);
        assert_eq!(c.get_pixel(5, 5)[0], 0);
    }
}

/// The preview is the full composition scaled down (claims 6, 7 preview vs Fig. 12 full
/// resolution): composing the reduced images gives, within a stated PSNR, the full-size
/// composition resized to the preview's size.
#[cfg(test)]
mod preview_tests {
    use super::*;
    use crate::decode::Limits;
    use crate::geometry::Slot;
    use crate::{quality, reduce, synth};

    /// The bound this crate promises (README, docs/compose.md).
    pub const PREVIEW_MIN_PSNR_DB: f64 = 40.0;

    #[test]
    fn preview_equals_the_downscaled_full_composition_within_psnr() {
        let template = synth::frame(1500, 1000);
        let slot = Slot {
            x: 450,
            y: 200,
            w: 600,
            h: 560,
        };
        let mask = synth::oval_mask(600, 560);
        let user_jpeg = synth::jpeg(&synth::scene(1200, 900), Some(6), None);
        let user_full = crate::decode::decode_bytes(&user_jpeg, Limits::default(), None).unwrap();
        let mask_png = {
            let mut out = std::io::Cursor::new(Vec::new());
            mask.write_to(&mut out, image::ImageFormat::Png).unwrap();
            out.into_inner()
        };
        // The reduced images, exactly as the service makes them.
        let t_red = reduce::reduce_bytes(&synth::png(&template), 256, Limits::default()).unwrap();
        let u_red = reduce::reduce_bytes(&user_jpeg, 256, Limits::default()).unwrap();
        let (m_red, _, _) = reduce::reduce_mask(&mask_png, 256, Limits::default()).unwrap();
        let t_small = image::load_from_memory(&t_red.png).unwrap().into_rgba8();
        let u_small = image::load_from_memory(&u_red.png).unwrap().into_rgba8();
        let m_small = image::load_from_memory(&m_red).unwrap().into_luma8();
        let norm = NormRect::from_slot(slot, 1500, 1000);
        let aspects = (
            1.5,
            f64::from(u_red.source_width) / f64::from(u_red.source_height),
        );
        for fit in [Fit::Cover, Fit::Contain] {
            let full = compose(&template, Some(&mask), &user_full.image, norm, fit, None);
            let preview = compose(&t_small, Some(&m_small), &u_small, norm, fit, Some(aspects));
            assert_eq!(
                full.placement, preview.placement,
                "same geometry, same crop"
            );
            let (pw, ph) = preview.image.dimensions();
            let scaled =
                crate::resize::rgba(&full.image, crate::resize::CropPx::full(1500, 1000), pw, ph);
            let db = quality::psnr(&scaled, &preview.image);
            println!("{fit:?}: preview {pw}x{ph} vs downscaled full: PSNR {db:.2} dB");
            assert!(
                db >= PREVIEW_MIN_PSNR_DB,
                "{fit:?}: PSNR {db:.2} dB < {PREVIEW_MIN_PSNR_DB}"
            );
            // And it is not trivially equal to the bare template: the user image is in it.
            let bare =
                crate::resize::rgba(&template, crate::resize::CropPx::full(1500, 1000), pw, ph);
            assert!(quality::psnr(&bare, &preview.image) < 25.0);
        }
    }
}
