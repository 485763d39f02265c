//! The geometry of composition, in one pure function on normalised coordinates, so that the
//! preview (made from reduced images, claims 6, 7) and the full composition (from the full-size
//! images the stock server pushed, Fig. 12) place and crop the user image identically.

/// A rectangle as fractions (0..1) of an image's width and height.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormRect {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

impl NormRect {
    pub const FULL: NormRect = NormRect {
        x: 0.0,
        y: 0.0,
        w: 1.0,
        h: 1.0,
    };

    /// A pixel slot of a `tw`x`th` template, as fractions.
    pub fn from_slot(slot: Slot, tw: u32, th: u32) -> Self {
        Self {
            x: f64::from(slot.x) / f64::from(tw),
            y: f64::from(slot.y) / f64::from(th),
            w: f64::from(slot.w) / f64::from(tw),
            h: f64::from(slot.h) / f64::from(th),
        }
    }

    /// The pixel rectangle on a `w`x`h` image: edges rounded, so adjacent rectangles tile.
    pub fn to_px(self, w: u32, h: u32) -> PxRect {
        let x0 = (self.x * f64::from(w)).round().clamp(0.0, f64::from(w)) as u32;
        let y0 = (self.y * f64::from(h)).round().clamp(0.0, f64::from(h)) as u32;
        let x1 = ((self.x + self.w) * f64::from(w))
            .round()
            .clamp(0.0, f64::from(w)) as u32;
        let y1 = ((self.y + self.h) * f64::from(h))
            .round()
            .clamp(0.0, f64::from(h)) as u32;
        PxRect {
            x: x0,
            y: y0,
            w: x1.saturating_sub(x0),
            h: y1.saturating_sub(y0),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PxRect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// A template's slot in template pixels: where the user image goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    #[error("slot {0:?} is not four numbers x,y,w,h")]
    Syntax(String),
    #[error("slot {w}x{h} is empty: width and height must be at least 1")]
    Empty { w: u32, h: u32 },
    #[error("slot x={x},y={y},w={w},h={h} lies outside the {tw}x{th} template ({why})")]
    Outside {
        x: u32,
        y: u32,
        w: u32,
        h: u32,
        tw: u32,
        th: u32,
        why: String,
    },
}

impl Slot {
    /// Parses `x,y,w,h`.
    pub fn parse(s: &str) -> Result<Self, SlotError> {
        let v: Vec<u32> = s
            .split(',')
            .map(|p| p.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| SlotError::Syntax(s.into()))?;
        match v[..] {
            [x, y, w, h] => Ok(Slot { x, y, w, h }),
            _ => Err(SlotError::Syntax(s.into())),
        }
    }

    /// A slot must be non-empty and lie wholly inside the template.
    pub fn check(&self, tw: u32, th: u32) -> Result<(), SlotError> {
        let Slot { x, y, w, h } = *self;
        if w == 0 || h == 0 {
            return Err(SlotError::Empty { w, h });
        }
        let right = u64::from(x) + u64::from(w);
        let bottom = u64::from(y) + u64::from(h);
        let why = if right > u64::from(tw) {
            Some(format!("x+w = {right} > width {tw}"))
        } else if bottom > u64::from(th) {
            Some(format!("y+h = {bottom} > height {th}"))
        } else {
            None
        };
        match why {
            None => Ok(()),
            Some(why) => Err(SlotError::Outside {
                x,
                y,
                w,
                h,
                tw,
                th,
                why,
            }),
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{},{},{}", self.x, self.y, self.w, self.h)
    }
}

/// How the user image fills the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fit {
    /// Fill the whole slot; the image is cropped (centred) to the slot's shape.
    #[default]
    Cover,
    /// The whole image, as large as fits, centred in the slot; the rest shows the template.
    Contain,
}

impl std::str::FromStr for Fit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cover" => Ok(Fit::Cover),
            "contain" => Ok(Fit::Contain),
            _ => Err(format!("fit must be cover or contain, not {s:?}")),
        }
    }
}

/// Where the user image goes and which part of it is used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// The slot, as fractions of the template.
    pub slot: NormRect,
    /// Where the (cropped) user image is drawn, as fractions of the template; inside `slot`.
    pub dest: NormRect,
    /// The part of the user image drawn, as fractions of the user image.
    pub crop: NormRect,
}

/// The one geometry function. `template_aspect` and `image_aspect` are width / height of the
/// full-size template and user image (reduced images keep them, up to rounding).
pub fn place(template_aspect: f64, slot: NormRect, image_aspect: f64, fit: Fit) -> Placement {
    // The slot's shape in pixels, whatever the resolution.
    let slot_aspect = slot.w / slot.h * template_aspect;
    match fit {
        Fit::Cover => {
            let crop = if image_aspect > slot_aspect {
                let w = slot_aspect / image_aspect;
                NormRect {
                    x: (1.0 - w) / 2.0,
                    y: 0.0,
                    w,
                    h: 1.0,
                }
            } else {
                let h = image_aspect / slot_aspect;
                NormRect {
                    x: 0.0,
                    y: (1.0 - h) / 2.0,
                    w: 1.0,
                    h,
                }
            };
            Placement {
                slot,
                dest: slot,
                crop,
            }
        }
        Fit::Contain => {
            let dest = if image_aspect > slot_aspect {
                let h = slot.h * slot_aspect / image_aspect;
                NormRect {
                    x: slot.x,
                    y: slot.y + (slot.h - h) / 2.0,
                    w: slot.w,
                    h,
                }
            } else {
                let w = slot.w * image_aspect / slot_aspect;
                NormRect {
                    x: slot.x + (slot.w - w) / 2.0,
                    y: slot.y,
                    w,
                    h: slot.h,
                }
            };
            Placement {
                slot,
                dest,
                crop: NormRect::FULL,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: NormRect, b: NormRect) -> bool {
        [a.x - b.x, a.y - b.y, a.w - b.w, a.h - b.h]
            .iter()
            .all(|d| d.abs() < 1e-9)
    }

    #[test]
    fn cover_crops_the_long_axis_centred() {
        // 1000x500 template, slot 400x400 px at (100,50): a square slot.
        let slot = NormRect::from_slot(
            Slot {
                x: 100,
                y: 50,
                w: 400,
                h: 400,
            },
            1000,
            500,
        );
        // A 2:1 landscape image: half its width is used, centred.
        let p = place(2.0, slot, 2.0, Fit::Cover);
        assert!(close(p.dest, slot));
        assert!(
            close(
                p.crop,
                NormRect {
                    x: 0.25,
                    y: 0.0,
                    w: 0.5,
                    h: 1.0
                }
            ),
            "{p:?}"
        );
        // A 1:2 portrait image: half its height is used, centred.
        let p = place(2.0, slot, 0.5, Fit::Cover);
        assert!(
            close(
                p.crop,
                NormRect {
                    x: 0.0,
                    y: 0.25,
                    w: 1.0,
                    h: 0.5
                }
            ),
            "{p:?}"
        );
        // Same shape: nothing cropped.
        let p = place(2.0, slot, 1.0, Fit::Cover);
        assert!(close(p.crop, NormRect::FULL));
    }

    #[test]
    fn contain_letterboxes_inside_the_slot() {
        let slot = NormRect::from_slot(
            Slot {
                x: 100,
                y: 50,
                w: 400,
                h: 400,
            },
            1000,
            500,
        );
        // 2:1 image in a square 400 px slot: 400x200 px, centred vertically (y = 150 px).
        let p = place(2.0, slot, 2.0, Fit::Contain);
        assert!(close(p.crop, NormRect::FULL));
        assert_eq!(
            p.dest.to_px(1000, 500),
            PxRect {
                x: 100,
                y: 150,
                w: 400,
                h: 200
            }
        );
        // 1:2 image: 200x400 px centred horizontally (x = 200 px).
        let p = place(2.0, slot, 0.5, Fit::Contain);
        assert_eq!(
            p.dest.to_px(1000, 500),
            PxRect {
                x: 200,
                y: 50,
                w: 200,
                h: 400
            }
        );
    }

    #[test]
    fn geometry_is_resolution_independent() {
        // The same placement at full size and at a 1/10 preview differs only by rounding.
        let slot = NormRect::from_slot(
            Slot {
                x: 600,
                y: 400,
                w: 1800,
                h: 1200,
            },
            3000,
            2000,
        );
        for fit in [Fit::Cover, Fit::Contain] {
            let p = place(1.5, slot, 4.0 / 3.0, fit);
            let full = p.dest.to_px(3000, 2000);
            let small = p.dest.to_px(300, 200);
            for (a, b) in [
                (full.x, small.x),
                (full.y, small.y),
                (full.w, small.w),
                (full.h, small.h),
            ] {
                assert!(
                    (f64::from(a) / 10.0 - f64::from(b)).abs() <= 1.0,
                    "{fit:?} {full:?} {small:?}"
                );
            }
        }
    }

    #[test]
    fn slots_must_lie_inside_the_template() {
        assert_eq!(
            Slot::parse("1, 2,3,4").unwrap(),
            Slot {
                x: 1,
                y: 2,
                w: 3,
                h: 4
            }
        );
        assert!(matches!(Slot::parse("1,2,3"), Err(SlotError::Syntax(_))));
        assert!(matches!(Slot::parse("1,2,3,-4"), Err(SlotError::Syntax(_))));
        let s = Slot {
            x: 700,
            y: 10,
            w: 200,
            h: 100,
        };
        assert!(s.check(900, 600).is_ok());
        let e = s.check(800, 600).unwrap_err().to_string();
        assert!(
            e.contains("outside the 800x600 template") && e.contains("x+w = 900 > width 800"),
            "{e}"
        );
        let e = Slot {
            x: 0,
            y: 550,
            w: 10,
            h: 100,
        }
        .check(800, 600)
        .unwrap_err()
        .to_string();
        assert!(e.contains("y+h = 650 > height 600"), "{e}");
        assert!(matches!(
            Slot {
                x: 0,
                y: 0,
                w: 0,
                h: 5
            }
            .check(8, 8),
            Err(SlotError::Empty { .. })
        ));
        // No overflow on huge numbers.
        assert!(Slot {
            x: u32::MAX,
            y: 0,
            w: u32::MAX,
            h: 1
        }
        .check(8, 8)
        .is_err());
    }
}
