//! Colour: composition works in sRGB. An embedded ICC profile that is not sRGB is converted to
//! sRGB with moxcms (pure Rust; the `image` crate's own colour engine); a profile that cannot be
//! converted (unparsable, CMYK/LUT-only, ...) is reported, never silently pretended.
//!
//! Blending and resizing happen on the sRGB-encoded values, as most image tools do by default.

use image::RgbaImage;
use moxcms::{ColorProfile, Layout, ProfileText, TransformOptions};

/// What was done about colour for one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Colour {
    /// No profile: taken as sRGB.
    Untagged,
    /// An sRGB (or sRGB-equivalent) profile: nothing to do.
    Srgb { profile: String },
    /// Converted from this profile to sRGB.
    Converted { profile: String },
    /// A profile was present but could not be converted; the pixels were used as if sRGB.
    NotConverted { profile: String, reason: String },
}

impl Colour {
    /// One line for people, e.g. in the output of `stockade compose`.
    pub fn describe(&self) -> String {
        match self {
            Colour::Untagged => "no ICC profile (taken as sRGB)".into(),
            Colour::Srgb { profile } => format!("sRGB ICC profile ({profile})"),
            Colour::Converted { profile } => {
                format!("converted from ICC profile {profile:?} to sRGB")
            }
            Colour::NotConverted { profile, reason } => format!(
                "ICC profile {profile:?} was NOT converted ({reason}); its pixels were used as sRGB"
            ),
        }
    }

    /// A short stable label (for metadata).
    pub fn label(&self) -> &'static str {
        match self {
            Colour::Untagged => "untagged",
            Colour::Srgb { .. } => "srgb",
            Colour::Converted { .. } => "converted",
            Colour::NotConverted { .. } => "not_converted",
        }
    }
}

fn text(t: &Option<ProfileText>) -> Option<String> {
    match t.as_ref()? {
        ProfileText::PlainString(s) => Some(s.clone()),
        ProfileText::Localizable(v) => v.first().map(|l| l.value.clone()),
        ProfileText::Description(d) => Some(d.ascii_string.clone()),
    }
    .map(|s| s.trim_matches(char::from(0)).trim().to_string())
    .filter(|s| !s.is_empty())
}

/// Converts `img` in place from the embedded profile `icc` to sRGB.
pub fn to_srgb(img: &mut RgbaImage, icc: Option<&[u8]>) -> Colour {
    let Some(icc) = icc else {
        return Colour::Untagged;
    };
    let profile = match ColorProfile::new_from_slice(icc) {
        Ok(p) => p,
        Err(e) => {
            return Colour::NotConverted {
                profile: "unreadable".into(),
                reason: format!("the profile does not parse: {e}"),
            }
        }
    };
    let name = text(&profile.description).unwrap_or_else(|| "unnamed".into());
    let srgb = ColorProfile::new_srgb();
    let transform = match profile.create_transform_8bit(
        Layout::Rgba,
        &srgb,
        Layout::Rgba,
        TransformOptions::default(),
    ) {
        Ok(t) => t,
        Err(e) => {
            return Colour::NotConverted {
                profile: name,
                reason: format!("no transform to sRGB: {e}"),
            }
        }
    };
    // sRGB-equivalent profiles (most cameras' "sRGB IEC61966-2.1") change nothing: check on
    // a grid of colours instead of trusting the name.
    let probe: Vec<u8> = (0..216u32)
        .flat_map(|i| {
            [
                (i % 6 * 51) as u8,
                (i / 6 % 6 * 51) as u8,
                (i / 36 * 51) as u8,
                255,
            ]
        })
        .collect();
    let mut out = vec![0u8; probe.len()];
    if transform.transform(&probe, &mut out).is_ok()
        && probe.iter().zip(&out).all(|(a, b)| a.abs_diff(*b) <= 2)
    {
        return Colour::Srgb { profile: name };
    }
    let src = img.as_raw().clone();
    match transform.transform(&src, img.as_mut()) {
        Ok(()) => Colour::Converted { profile: name },
        Err(e) => {
            img.as_mut().copy_from_slice(&src);
            Colour::NotConverted {
                profile: name,
                reason: format!("transform failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_p3_is_converted_and_srgb_left_alone() {
        let p3 = ColorProfile::new_display_p3().encode().unwrap();
        // Pure P3 red is outside sRGB: it maps to a clipped sRGB red, and a P3 mid grey stays grey.
        let mut img = RgbaImage::from_fn(2, 1, |x, _| {
            if x == 0 {
                image::Rgba([255, 0, 0, 255])
            } else {
                image::Rgba([128, 128, 128, 200])
            }
        });
        let c = to_srgb(&mut img, Some(&p3));
        assert!(matches!(c, Colour::Converted { .. }), "{c:?}");
        let red = img.get_pixel(0, 0);
        assert!(red[0] == 255 && red[1] < 40 && red[2] < 40, "{red:?}");
        let grey = img.get_pixel(1, 0);
        assert!(
            grey[0].abs_diff(128) <= 2 && grey[0].abs_diff(grey[2]) <= 2,
            "{grey:?}"
        );
        assert_eq!(grey[3], 200, "alpha untouched");

        let srgb = ColorProfile::new_srgb().encode().unwrap();
        let mut img2 = RgbaImage::from_pixel(1, 1, image::Rgba([10, 200, 30, 255]));
        let c = to_srgb(&mut img2, Some(&srgb));
        assert!(matches!(c, Colour::Srgb { .. }), "{c:?}");
        assert_eq!(img2.get_pixel(0, 0), &image::Rgba([10, 200, 30, 255]));
    }

    #[test]
    fn an_unreadable_profile_is_reported_not_pretended() {
        let mut img = RgbaImage::from_pixel(1, 1, image::Rgba([1, 2, 3, 255]));
        let c = to_srgb(&mut img, Some(b"not an icc profile at all, sorry"));
        assert!(matches!(c, Colour::NotConverted { .. }), "{c:?}");
        assert!(c.describe().contains("NOT converted"));
        assert_eq!(img.get_pixel(0, 0), &image::Rgba([1, 2, 3, 255]));
        assert_eq!(to_srgb(&mut img, None), Colour::Untagged);
    }
}
