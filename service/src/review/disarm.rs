//! Content disarm, between the integrity check (92) and the delivery to the stock server (78):
//! only a clean image leaves the quarantine. No trailing data, embedded payloads or metadata
//! (EXIF incl. GPS, XMP, comments, text chunks, thumbnails) survive; the ICC profile is kept and
//! the EXIF orientation is applied to the pixels.
//!
//! How, per format (content-sniffed, never by file name):
//! - JPEG: a structural rewrite. Only the segments a decoder needs are copied (quantisation and
//!   Huffman tables, frame and scan headers, restart interval, the entropy-coded scans), plus a
//!   rebuilt JFIF header without thumbnail, the ICC profile (APP2) and the Adobe colour
//!   transform (APP14); every other APPn, every comment, bytes between segments and everything
//!   after the end-of-image marker are dropped. The scans are not re-encoded, so there is no
//!   generation loss. When the EXIF orientation is not "normal", the pixels are turned and the
//!   image is re-encoded (quality 92), since turning a JPEG needs its pixels.
//! - PNG, TIFF, WebP: decoded and re-encoded losslessly (PNG; uncompressed TIFF; lossless WebP),
//!   with the ICC profile; nothing of the original container survives. TIFF keeps its first page,
//!   WebP its first frame.
//! - GIF: the first frame is kept, its palette and pixel indices exactly (re-encoded with the
//!   `gif` crate); animation beyond it, comments and application extensions are dropped. A GIF of
//!   more than `limits.max_gif_frames` frames is refused (`corrupt:limits`).
//!
//! The bytes that come out are decoded again within the limits (92 on what will be stored), the
//! operator's preview is rendered from them, and they are scanned again (91).

use super::integrity::{self, Decoded, Failure};
use crate::config::Limits;
use image::metadata::Orientation;
use image::{DynamicImage, ImageEncoder, ImageFormat};
use std::io::Cursor;
use std::time::Instant;

/// The longest side of the operator's preview.
pub const PREVIEW_SIDE: u32 = 480;

/// A disarmed image, ready to be scanned (91) and stored (78).
pub struct Outcome {
    pub format: ImageFormat,
    pub width: u32,
    pub height: u32,
    /// The bytes that will be stored.
    pub bytes: Vec<u8>,
    /// Whether they differ from the upload.
    pub changed: bool,
    pub method: &'static str,
    /// What was taken out, for the operator and the audit trail.
    pub removed: Vec<String>,
    pub icc_kept: bool,
    pub orientation_applied: bool,
    /// PNG preview rendered from `bytes` (never from the upload).
    pub preview_png: Vec<u8>,
}

impl Outcome {
    /// "png 640x480", the integrity (92) result as the review records it.
    pub fn integrity(&self) -> String {
        format!(
            "{} {}x{}",
            integrity::format_name(self.format),
            self.width,
            self.height
        )
    }

    /// One line for the review record.
    pub fn summary(&self) -> String {
        if !self.changed {
            return "unchanged: already clean".into();
        }
        let mut s = self.method.to_string();
        if !self.removed.is_empty() {
            s.push_str("; removed ");
            s.push_str(&self.removed.join(", "));
        }
        if self.orientation_applied {
            s.push_str("; EXIF orientation applied to the pixels");
        }
        if self.icc_kept {
            s.push_str("; ICC profile kept");
        }
        s
    }
}

fn limits_time(limits: &Limits) -> Failure {
    Failure::Corrupt(format!(
        "limits: decoding took over {} s",
        limits.decode_timeout_secs
    ))
}

fn in_time(deadline: Instant, limits: &Limits) -> Result<(), Failure> {
    if Instant::now() > deadline {
        Err(limits_time(limits))
    } else {
        Ok(())
    }
}

/// 92 + disarm: checks and cleans `input` (the upload as received).
pub fn disarm(
    input: &[u8],
    file_name: &str,
    limits: &Limits,
    deadline: Instant,
) -> Result<Outcome, Failure> {
    let format = integrity::sniff(input)?;
    let (bytes, method, removed, orientation_applied, stored) = match format {
        ImageFormat::Jpeg => {
            let parts = jpeg_rewrite(input).map_err(Failure::Corrupt)?;
            // 92 on the rewritten bytes: the scans are the upload's, so this is the full decode.
            let mut dec = integrity::decode(&parts.out, file_name, limits)?;
            in_time(deadline, limits)?;
            let orientation = parts
                .exif
                .as_deref()
                .and_then(Orientation::from_exif_chunk)
                .unwrap_or(Orientation::NoTransforms);
            if orientation == Orientation::NoTransforms {
                (parts.out, "structural rewrite", parts.removed, false, dec)
            } else {
                dec.image.apply_orientation(orientation);
                let out = encode(&dec.image, ImageFormat::Jpeg, dec.icc.clone())?;
                in_time(deadline, limits)?;
                let stored = integrity::decode_as(&out, ImageFormat::Jpeg, limits)?;
                (
                    out,
                    "re-encoded (JPEG quality 92) to turn the pixels",
                    parts.removed,
                    true,
                    stored,
                )
            }
        }
        ImageFormat::Gif => {
            // 92: the first frame decodes fully (composited) within the limits.
            integrity::decode(input, file_name, limits)?;
            in_time(deadline, limits)?;
            let (out, removed) = gif_first_frame(input, limits, deadline)?;
            let stored = integrity::decode_as(&out, ImageFormat::Gif, limits)?;
            (
                out,
                "re-encoded first frame (palette and pixels kept)",
                removed,
                false,
                stored,
            )
        }
        f @ (ImageFormat::Png | ImageFormat::Tiff | ImageFormat::WebP) => {
            let mut dec = integrity::decode(input, file_name, limits)?;
            in_time(deadline, limits)?;
            let mut removed = match f {
                ImageFormat::Png => png_dropped(input),
                _ => vec![],
            };
            let turned = dec.orientation != Orientation::NoTransforms;
            if turned {
                dec.image.apply_orientation(dec.orientation);
            }
            let out = encode(&dec.image, f, dec.icc.clone())?;
            drop(dec);
            in_time(deadline, limits)?;
            let stored = integrity::decode_as(&out, f, limits)?;
            if f != ImageFormat::Png && out != input {
                removed.push("the original container (metadata, other pages or frames)".into());
            }
            let method = match f {
                ImageFormat::Png => "re-encoded (lossless PNG)",
                ImageFormat::Tiff => "re-encoded (uncompressed TIFF, first page)",
                _ => "re-encoded (lossless WebP, first frame)",
            };
            (out, method, removed, turned, stored)
        }
        other => return Err(Failure::Unsupported(integrity::format_name(other))),
    };
    in_time(deadline, limits)?;
    let preview_png = preview(&stored)?;
    let changed = bytes != input;
    Ok(Outcome {
        format,
        width: stored.image.width(),
        height: stored.image.height(),
        changed,
        method,
        removed: if changed { removed } else { vec![] },
        icc_kept: stored.icc.is_some(),
        orientation_applied,
        preview_png,
        bytes,
    })
}

/// Encodes `img` as `format` with the ICC profile.
fn encode(
    img: &DynamicImage,
    format: ImageFormat,
    icc: Option<Vec<u8>>,
) -> Result<Vec<u8>, Failure> {
    let mut out = Cursor::new(Vec::new());
    let fail = |e: image::ImageError| Failure::Corrupt(format!("re-encoding failed: {e}"));
    macro_rules! with_icc {
        ($enc:expr) => {{
            let mut enc = $enc;
            if let Some(p) = icc {
                // A profile the encoder cannot carry is dropped rather than failing the upload.
                let _ = enc.set_icc_profile(p);
            }
            img.write_with_encoder(enc).map_err(fail)?;
        }};
    }
    match format {
        ImageFormat::Png => with_icc!(image::codecs::png::PngEncoder::new(&mut out)),
        ImageFormat::Jpeg => with_icc!(image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut out, 92
        )),
        ImageFormat::Tiff => with_icc!(image::codecs::tiff::TiffEncoder::new(&mut out)),
        ImageFormat::WebP => with_icc!(image::codecs::webp::WebPEncoder::new_lossless(&mut out)),
        other => return Err(Failure::Unsupported(integrity::format_name(other))),
    }
    Ok(out.into_inner())
}

/// The operator's preview (PNG, at most `PREVIEW_SIDE` on its longer side), from stored pixels.
fn preview(stored: &Decoded) -> Result<Vec<u8>, Failure> {
    let img = &stored.image;
    let small = if img.width() > PREVIEW_SIDE || img.height() > PREVIEW_SIDE {
        img.thumbnail(PREVIEW_SIDE, PREVIEW_SIDE)
    } else {
        img.clone()
    };
    let small = DynamicImage::ImageRgba8(small.to_rgba8());
    let mut out = Cursor::new(Vec::new());
    small
        .write_to(&mut out, ImageFormat::Png)
        .map_err(|e| Failure::Corrupt(format!("rendering the preview failed: {e}")))?;
    Ok(out.into_inner())
}

/// The result of the JPEG structural rewrite.
pub(crate) struct JpegParts {
    pub out: Vec<u8>,
    pub removed: Vec<String>,
    /// The EXIF TIFF structure (after `Exif\0\0`), read for its orientation, then dropped.
    pub exif: Option<Vec<u8>>,
}

fn segment(out: &mut Vec<u8>, marker: u8, payload: &[u8]) {
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Copies only the segments a decoder needs; see the module comment.
pub(crate) fn jpeg_rewrite(b: &[u8]) -> Result<JpegParts, String> {
    if !b.starts_with(&[0xFF, 0xD8]) {
        return Err("not a JPEG: no start-of-image marker".into());
    }
    let truncated = || "truncated: no end-of-image marker".to_string();
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&[0xFF, 0xD8]);
    let mut removed: Vec<String> = vec![];
    let mut note = |what: String| {
        if !removed.contains(&what) {
            removed.push(what);
        }
    };
    let mut exif = None;
    let (mut seen_frame, mut seen_scan, mut jfif_done) = (false, false, false);
    let mut stray = 0usize;
    let mut i = 2;
    loop {
        if i >= b.len() {
            return Err(truncated());
        }
        if b[i] != 0xFF {
            stray += 1;
            i += 1;
            continue;
        }
        while i < b.len() && b[i] == 0xFF {
            i += 1;
        }
        let Some(&m) = b.get(i) else {
            return Err(truncated());
        };
        i += 1;
        match m {
            0xD9 => {
                if !seen_scan {
                    return Err("does not decode: end of image before any scan".into());
                }
                out.extend_from_slice(&[0xFF, 0xD9]);
                if i < b.len() {
                    note(format!("{} bytes after the end of the image", b.len() - i));
                }
                break;
            }
            0x00 | 0x01 | 0xD0..=0xD7 => {
                stray += 2;
                continue;
            }
            _ => {}
        }
        if i + 2 > b.len() {
            return Err(truncated());
        }
        let len = usize::from(u16::from_be_bytes([b[i], b[i + 1]]));
        if len < 2 || i + len > b.len() {
            return Err(truncated());
        }
        let whole = &b[i - 2..i + len];
        let payload = &b[i + 2..i + len];
        i += len;
        match m {
            0xE0 if payload.starts_with(b"JFIF\0") && payload.len() >= 12 && !jfif_done => {
                jfif_done = true;
                // Version, density units and density; no thumbnail.
                let mut p = payload[..12].to_vec();
                p.extend_from_slice(&[0, 0]);
                segment(&mut out, 0xE0, &p);
                if payload.len() > 14 {
                    note("JFIF thumbnail".into());
                }
            }
            0xE2 if payload.starts_with(b"ICC_PROFILE\0") => out.extend_from_slice(whole),
            0xEE if payload.starts_with(b"Adobe") && payload.len() >= 12 => {
                segment(&mut out, 0xEE, &payload[..12]);
            }
            0xE1 if payload.starts_with(b"Exif\0\0") => {
                let tiff = &payload[6..];
                note(if exif_has_gps(tiff) {
                    "EXIF (with GPS position)".into()
                } else {
                    "EXIF".into()
                });
                exif.get_or_insert_with(|| tiff.to_vec());
            }
            0xE1 if payload.starts_with(b"http://ns.adobe.com/xap/1.0/") => note("XMP".into()),
            0xED => note("Photoshop/IPTC (APP13)".into()),
            0xE0..=0xEF => note(format!("APP{} segment", m - 0xE0)),
            0xFE => note("comment".into()),
            0xDB | 0xC4 | 0xCC | 0xDD => out.extend_from_slice(whole),
            0xC0..=0xCF => {
                // SOF0-SOF15 (C4, C8 and CC are handled above or are not frames).
                if m == 0xC8 || seen_frame {
                    return Err("does not decode: unexpected frame header".into());
                }
                seen_frame = true;
                out.extend_from_slice(whole);
            }
            0xDA => {
                if !seen_frame {
                    return Err("does not decode: scan before the frame header".into());
                }
                seen_scan = true;
                out.extend_from_slice(whole);
                // The entropy-coded data runs to the next marker that is not a stuffed 0xFF00
                // or a restart marker.
                let start = i;
                loop {
                    if i + 1 >= b.len() {
                        return Err(truncated());
                    }
                    if b[i] == 0xFF && b[i + 1] != 0x00 && !(0xD0..=0xD7).contains(&b[i + 1]) {
                        break;
                    }
                    i += 1;
                }
                out.extend_from_slice(&b[start..i]);
            }
            0xDC | 0xDF => out.extend_from_slice(whole),
            other => note(format!("segment {other:02X}")),
        }
    }
    if stray > 0 {
        note(format!("{stray} stray bytes between segments"));
    }
    Ok(JpegParts { out, removed, exif })
}

/// Whether EXIF IFD0 points to a GPS IFD (tag 0x8825).
fn exif_has_gps(t: &[u8]) -> bool {
    let le = match t.get(..4) {
        Some([0x49, 0x49, 42, 0]) => true,
        Some([0x4D, 0x4D, 0, 42]) => false,
        _ => return false,
    };
    let u16_at = |o: usize| {
        t.get(o..o + 2).map(|b| {
            if le {
                u16::from_le_bytes([b[0], b[1]])
            } else {
                u16::from_be_bytes([b[0], b[1]])
            }
        })
    };
    let Some(ifd) = t.get(4..8).map(|b| {
        let a = [b[0], b[1], b[2], b[3]];
        (if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }) as usize
    }) else {
        return false;
    };
    let n = u16_at(ifd).unwrap_or(0) as usize;
    (0..n.min(512)).any(|k| u16_at(ifd + 2 + 12 * k) == Some(0x8825))
}

/// The chunks of a PNG that its lossless re-encode does not carry over, for the record.
fn png_dropped(b: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    let mut add = |s: String| {
        if !out.contains(&s) {
            out.push(s);
        }
    };
    let mut i = 8;
    while i + 12 <= b.len() {
        let len = u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]) as usize;
        let kind = &b[i + 4..i + 8];
        match kind {
            b"IHDR" | b"PLTE" | b"IDAT" | b"iCCP" | b"tRNS" | b"IEND" => {}
            b"tEXt" | b"zTXt" | b"iTXt" => add("text chunks (comments, XMP)".into()),
            b"eXIf" => add("EXIF".into()),
            b"acTL" | b"fcTL" | b"fdAT" => add("animation".into()),
            k => add(format!("{} chunk", String::from_utf8_lossy(k))),
        }
        let next = i.saturating_add(12).saturating_add(len);
        if kind == b"IEND" {
            if next < b.len() {
                add(format!(
                    "{} bytes after the end of the image",
                    b.len() - next
                ));
            }
            break;
        }
        i = next;
    }
    out
}

/// Keeps the first frame of a GIF exactly (palette, transparency, indices), nothing else.
fn gif_first_frame(
    b: &[u8],
    limits: &Limits,
    deadline: Instant,
) -> Result<(Vec<u8>, Vec<String>), Failure> {
    let corrupt = |e: gif::DecodingError| Failure::Corrupt(format!("does not decode: {e}"));
    let mem = std::num::NonZeroU64::new(limits.max_decoded_bytes.max(1)).expect("non-zero");
    // Count the frames first, without decompressing them.
    let mut opts = gif::DecodeOptions::new();
    opts.skip_frame_decoding(true);
    opts.set_memory_limit(gif::MemoryLimit::Bytes(mem));
    let mut counter = opts.read_info(Cursor::new(b)).map_err(corrupt)?;
    let mut frames = 0u32;
    while counter.next_frame_info().map_err(corrupt)?.is_some() {
        frames += 1;
        if frames > limits.max_gif_frames {
            return Err(Failure::Corrupt(format!(
                "limits: more than {} frames",
                limits.max_gif_frames
            )));
        }
        if frames & 63 == 0 {
            in_time(deadline, limits)?;
        }
    }
    let mut opts = gif::DecodeOptions::new();
    opts.set_color_output(gif::ColorOutput::Indexed);
    opts.set_memory_limit(gif::MemoryLimit::Bytes(mem));
    let mut d = opts.read_info(Cursor::new(b)).map_err(corrupt)?;
    let (w, h) = (d.width(), d.height());
    let global = d.global_palette().map(<[u8]>::to_vec).unwrap_or_default();
    let first = d
        .read_next_frame()
        .map_err(corrupt)?
        .ok_or_else(|| Failure::Corrupt("does not decode: no frames".into()))?;
    let frame = gif::Frame {
        left: first.left,
        top: first.top,
        width: first.width,
        height: first.height,
        buffer: first.buffer.clone(),
        palette: first.palette.clone(),
        transparent: first.transparent,
        ..gif::Frame::default()
    };
    let mut out = Vec::new();
    {
        let enc_err = |e: gif::EncodingError| Failure::Corrupt(format!("re-encoding failed: {e}"));
        let mut enc = gif::Encoder::new(&mut out, w, h, &global).map_err(enc_err)?;
        enc.write_frame(&frame).map_err(enc_err)?;
    }
    let mut removed = vec![];
    if frames > 1 {
        removed.push(format!("{} animation frames", frames - 1));
    }
    if out != b {
        removed.push("extensions, comments and any trailing data".into());
    }
    Ok((out, removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    fn rgb(w: u32, h: u32) -> DynamicImage {
        DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 5) as u8, (y * 9) as u8, ((x ^ y) * 3) as u8])
        }))
    }

    fn encoded(img: &DynamicImage, f: ImageFormat) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, f).unwrap();
        out.into_inner()
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// A JPEG with an EXIF segment (orientation `orient`, a GPS IFD and a marker string), an
    /// XMP segment, a comment, an ICC profile and a ZIP appended after the end of the image.
    pub(crate) fn dirty_jpeg(orient: u16) -> Vec<u8> {
        let clean = encoded(&rgb(40, 20), ImageFormat::Jpeg);
        // EXIF: II*, IFD0 at 8 with 2 entries: Orientation (0x0112) and GPSInfo (0x8825).
        let mut t = b"II*\0\x08\0\0\0".to_vec();
        t.extend_from_slice(&2u16.to_le_bytes());
        t.extend_from_slice(&0x0112u16.to_le_bytes());
        t.extend_from_slice(&3u16.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&orient.to_le_bytes());
        t.extend_from_slice(&[0, 0]);
        t.extend_from_slice(&0x8825u16.to_le_bytes());
        t.extend_from_slice(&4u16.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&38u32.to_le_bytes());
        t.extend_from_slice(&0u32.to_le_bytes());
        t.extend_from_slice(b"GPS-SECRET-51.5074N-0.1278W\0");
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&t);
        let mut icc = b"ICC_PROFILE\0\x01\x01".to_vec();
        icc.extend_from_slice(&[7u8; 128]);
        let mut out = clean[..2].to_vec();
        segment(&mut out, 0xE1, &app1);
        segment(
            &mut out,
            0xE1,
            b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta>XMP-SECRET</x:xmpmeta>",
        );
        segment(&mut out, 0xFE, b"COMMENT-SECRET");
        segment(&mut out, 0xE2, &icc);
        out.extend_from_slice(&clean[2..]);
        out.extend_from_slice(b"PK\x03\x04ZIP-SECRET-payload.sh");
        out
    }

    #[test]
    fn jpeg_structural_rewrite_strips_metadata_and_polyglot_tail_keeps_icc() {
        let dirty = dirty_jpeg(1);
        let o = disarm(&dirty, "a.jpg", &Limits::default(), later()).unwrap();
        assert!(o.changed);
        assert_eq!(o.method, "structural rewrite");
        for secret in [
            &b"GPS-SECRET"[..],
            b"XMP-SECRET",
            b"COMMENT-SECRET",
            b"ZIP-SECRET",
            b"PK\x03\x04",
            b"Exif",
        ] {
            assert!(
                !contains(&o.bytes, secret),
                "{}",
                String::from_utf8_lossy(secret)
            );
        }
        assert!(contains(&o.bytes, b"ICC_PROFILE\0"), "ICC profile kept");
        assert!(o.bytes.ends_with(&[0xFF, 0xD9]));
        let s = o.summary();
        assert!(
            s.contains("EXIF (with GPS position)") && s.contains("XMP"),
            "{s}"
        );
        assert!(
            s.contains("comment") && s.contains("after the end of the image"),
            "{s}"
        );
        // Disarm is a fixpoint: the clean output comes back unchanged.
        let again = disarm(&o.bytes, "a.jpg", &Limits::default(), later()).unwrap();
        assert!(!again.changed, "{}", again.summary());
    }

    #[test]
    fn jpeg_exif_orientation_is_applied_to_the_pixels() {
        // 6 = rotate 90° clockwise: a 40x20 image is stored as 20x40, without the EXIF.
        let o = disarm(&dirty_jpeg(6), "a.jpg", &Limits::default(), later()).unwrap();
        assert!(o.orientation_applied);
        assert_eq!((o.width, o.height), (20, 40));
        assert!(!contains(&o.bytes, b"GPS-SECRET") && !contains(&o.bytes, b"Exif\0\0"));
        assert!(o.icc_kept, "ICC kept through the re-encode");
    }

    #[test]
    fn clean_images_from_common_encoders_are_unchanged() {
        for f in [ImageFormat::Png, ImageFormat::Jpeg] {
            let b = encoded(&rgb(33, 17), f);
            let o = disarm(&b, "x", &Limits::default(), later()).unwrap();
            assert!(!o.changed, "{f:?}: {}", o.summary());
            assert_eq!(o.bytes, b);
        }
    }

    #[test]
    fn png_with_appended_script_and_text_comes_out_plain() {
        let clean = encoded(&rgb(16, 16), ImageFormat::Png);
        // Insert a tEXt chunk after IHDR and append a script after IEND.
        let mut chunk = Vec::new();
        let data = b"Comment\0TEXT-SECRET";
        chunk.extend_from_slice(&(data.len() as u32).to_be_bytes());
        chunk.extend_from_slice(b"tEXt");
        chunk.extend_from_slice(data);
        let crc = crc32fast::hash(&chunk[4..]);
        chunk.extend_from_slice(&crc.to_be_bytes());
        let mut dirty = clean[..33].to_vec();
        dirty.extend_from_slice(&chunk);
        dirty.extend_from_slice(&clean[33..]);
        dirty.extend_from_slice(b"<script>alert('SCRIPT-SECRET')</script>");
        let o = disarm(&dirty, "a.png", &Limits::default(), later()).unwrap();
        assert!(o.changed);
        assert_eq!(o.bytes, clean, "a lossless re-encode of the same pixels");
        let s = o.summary();
        assert!(
            s.contains("text chunks") && s.contains("after the end"),
            "{s}"
        );
    }

    /// A GIF/JavaScript polyglot: `GIF89a/*` makes the header a JS comment opener and the
    /// script follows in a comment extension and after the trailer.
    #[test]
    fn gif_js_polyglot_keeps_only_the_first_frame() {
        let mut frames = vec![];
        for k in 0..3u8 {
            let buf = image::RgbaImage::from_pixel(8, 8, image::Rgba([k * 80, 10, 200, 255]));
            frames.push(image::Frame::new(buf));
        }
        let mut g = Vec::new();
        image::codecs::gif::GifEncoder::new(&mut g)
            .encode_frames(frames)
            .unwrap();
        // A comment extension right after the header and screen descriptor/palette.
        let mut polyglot = g.clone();
        let trailer = polyglot.pop().unwrap();
        assert_eq!(trailer, 0x3B);
        polyglot.extend_from_slice(&[0x21, 0xFE, 12]);
        polyglot.extend_from_slice(b"*/alert(1)//");
        polyglot.push(0);
        polyglot.push(0x3B);
        polyglot.extend_from_slice(b"JS-SECRET();");
        let o = disarm(&polyglot, "a.gif", &Limits::default(), later()).unwrap();
        assert!(o.changed);
        assert!(!contains(&o.bytes, b"alert") && !contains(&o.bytes, b"JS-SECRET"));
        assert!(
            o.summary().contains("2 animation frames"),
            "{}",
            o.summary()
        );
        let back = image::load_from_memory(&o.bytes).unwrap().to_rgba8();
        assert_eq!(back.get_pixel(3, 3), &image::Rgba([0, 10, 200, 255]));
    }

    #[test]
    fn gif_with_thousands_of_frames_is_refused_by_limits() {
        let frames = (0..1500u32).map(|k| {
            image::Frame::new(image::RgbaImage::from_pixel(
                1,
                1,
                image::Rgba([(k % 251) as u8, 0, 0, 255]),
            ))
        });
        let mut g = Vec::new();
        image::codecs::gif::GifEncoder::new(&mut g)
            .encode_frames(frames)
            .unwrap();
        let e = disarm(&g, "a.gif", &Limits::default(), later())
            .err()
            .unwrap();
        assert!(
            matches!(&e, Failure::Corrupt(d) if d.starts_with("limits: more than")),
            "{e:?}"
        );
    }

    #[test]
    fn tiff_and_webp_are_reencoded_losslessly() {
        let img = rgb(20, 12);
        for f in [ImageFormat::Tiff, ImageFormat::WebP] {
            let b = encoded(&img, f);
            let o = disarm(&b, "x", &Limits::default(), later()).unwrap();
            let back = image::load_from_memory_with_format(&o.bytes, f).unwrap();
            assert_eq!(back.to_rgb8(), img.to_rgb8(), "{f:?}");
        }
    }

    #[test]
    fn unsupported_types_are_named_by_content() {
        let cases: [(&[u8], &str); 4] = [
            (
                b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"/>",
                "svg",
            ),
            (b"%PDF-1.7\n", "pdf"),
            (b"BM\x3a\0\0\0\0\0\0\0\x36\0\0\0\x28\0\0\0", "bmp"),
            (b"PK\x03\x04\x14\0", "zip"),
        ];
        for (bytes, t) in cases {
            // The name says PNG: the content decides.
            match disarm(bytes, "innocent.png", &Limits::default(), later()) {
                Err(Failure::Unsupported(got)) => assert_eq!(got, t),
                other => panic!("{t}: {:?}", other.err()),
            }
        }
        assert!(matches!(
            disarm(b"", "a.png", &Limits::default(), later()).err(),
            Some(Failure::Corrupt(d)) if d.contains("empty")
        ));
    }

    #[test]
    fn jpeg_65535_square_header_is_refused_by_limits() {
        let mut b = encoded(&rgb(8, 8), ImageFormat::Jpeg);
        let sof = b.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        b[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
        let e = disarm(&b, "a.jpg", &Limits::default(), later())
            .err()
            .unwrap();
        assert!(
            matches!(&e, Failure::Corrupt(d) if d.starts_with("limits")),
            "{e:?}"
        );
    }

    #[test]
    fn deadline_is_enforced() {
        let b = encoded(&rgb(64, 64), ImageFormat::Png);
        let e = disarm(
            &b,
            "a.png",
            &Limits::default(),
            Instant::now() - Duration::from_secs(1),
        )
        .err()
        .unwrap();
        assert!(matches!(&e, Failure::Corrupt(d) if d.starts_with("limits: decoding took")));
    }
}
