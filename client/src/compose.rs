//! Reduced images, templates and composition on the client (claims 6, 7, 14, 15; Fig. 12).
//!
//! `compose --preview` uses only the service's reduced images (of the template, its mask and
//! the user image); `compose --full` has the stock server(s) push the full-size template (and
//! mask) and the user image to this client's push port — the client never connects to a stock
//! server — and composes at full resolution. Both run the same `stockade_imaging::compose`
//! with the same normalised geometry, so the preview is the full result scaled down.

use crate::download::{receive_push, Expected};
use crate::error::{ClientError, Result};
use crate::settings::Settings;
use crate::state::{self, State};
use image::ImageFormat;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use stockade_imaging::{Colour, Fit, NormRect, Slot};
use stockade_proto::reason::Refusal;
use stockade_proto::wire::{
    DownloadRequest, ReducedImageEntry, TemplateEntry, TemplatePart, TemplatePushRequest,
};
use stockade_proto::PUSH_PORT;
use tokio::net::TcpListener;
use zeroize::Zeroizing;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    All,
    Public,
    Account,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::All => "all",
            Scope::Public => "public",
            Scope::Account => "account",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Mode {
    Preview,
    Full { timeout: Duration },
}

/// The server password of this home's account, if it holds one.
fn password(settings: &Settings, required: bool) -> Result<Option<Zeroizing<String>>> {
    let st = State::load(&settings.home)?;
    match &st.account {
        Some(a) => {
            let key = settings.load_key()?;
            Ok(Some(a.server_password(&key)?))
        }
        // `account()` says what to do when the home holds none.
        None if required => st.account().map(|_| None),
        None => Ok(None),
    }
}

/// `stockade thumbs list`.
pub async fn thumbs_list(settings: &Settings, scope: Scope) -> Result<()> {
    let pw = password(settings, scope == Scope::Account)?;
    let service = settings.service()?;
    let list = service
        .reduced_list(scope.as_str(), pw.as_deref().map(|p| p.as_str()))
        .await?;
    print!("{}", format_thumbs(&list.images));
    Ok(())
}

pub fn format_thumbs(images: &[ReducedImageEntry]) -> String {
    let mut out = format!(
        "{:<32}  {:<9}  {:<11}  {:<10}  {}\n",
        "ID", "REDUCED", "FULL", "VISIBILITY", "NAME"
    );
    for i in images {
        let vis = match (i.private, i.own) {
            (true, _) => "private",
            (false, true) => "public*",
            (false, false) => "public",
        };
        out.push_str(&format!(
            "{:<32}  {:<9}  {:<11}  {:<10}  {}{}\n",
            i.id,
            format!("{}x{}", i.width, i.height),
            format!("{}x{}", i.source_width, i.source_height),
            vis,
            i.name,
            if i.own { " (yours)" } else { "" }
        ));
    }
    out
}

/// Finds a reduced image by id, else by name: this account's first, then a unique public one.
fn resolve<'a>(images: &'a [ReducedImageEntry], name: &str) -> Result<&'a ReducedImageEntry> {
    if let Some(i) = images.iter().find(|i| i.id == name) {
        return Ok(i);
    }
    if let Some(i) = images.iter().find(|i| i.own && i.name == name) {
        return Ok(i);
    }
    let named: Vec<_> = images.iter().filter(|i| i.name == name).collect();
    match named[..] {
        [one] => Ok(one),
        [] => Err(ClientError::Refused(Refusal::NotFound(format!(
            "no reduced image named {name:?} is visible to this client"
        )))),
        _ => Err(ClientError::Config(format!(
            "{} reduced images are named {name:?}; give one of their ids: {}",
            named.len(),
            named
                .iter()
                .map(|i| i.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// `stockade thumbs get NAME --out FILE`.
pub async fn thumbs_get(settings: &Settings, name: &str, out: &Path) -> Result<()> {
    let pw = password(settings, false)?;
    let pw = pw.as_deref().map(|p| p.as_str());
    let service = settings.service()?;
    let list = service.reduced_list("all", pw).await?;
    let entry = resolve(&list.images, name)?;
    let png = service.reduced_get(&entry.id, pw).await?;
    write_atomic(out, &png)?;
    println!(
        "reduced image {} ({}x{}, of {}x{}) written to {}",
        entry.name,
        entry.width,
        entry.height,
        entry.source_width,
        entry.source_height,
        out.display()
    );
    Ok(())
}

/// `stockade templates list`.
pub async fn templates_list(settings: &Settings) -> Result<()> {
    let st = State::load(&settings.home)?;
    let client_id = st.client_id.clone();
    let list = settings.service()?.templates(client_id.as_deref()).await?;
    print!("{}", format_templates(&list.templates));
    if let Some(w) = &list.template_key_wrapped {
        // Open it to show it is ours: the key that opens every template push.
        let key = settings.load_key()?;
        state::unwrap_account_key(&key, w)?;
        println!("template key: received, wrapped to this client's registered key (opens)");
    }
    Ok(())
}

pub fn format_templates(ts: &[TemplateEntry]) -> String {
    let mut out = format!(
        "{:<24}  {:<11}  {:<20}  {:<11}  {}\n",
        "NAME", "SIZE", "SLOT (x,y,w,h)", "MASK", "STOCK SERVER"
    );
    for t in ts {
        out.push_str(&format!(
            "{:<24}  {:<11}  {:<20}  {:<11}  {}\n",
            t.name,
            format!("{}x{}", t.width, t.height),
            format!("{},{},{},{}", t.slot.x, t.slot.y, t.slot.w, t.slot.h),
            t.mask
                .as_ref()
                .map(|m| format!("{}x{}", m.width, m.height))
                .unwrap_or_else(|| "none".into()),
            t.stock_server
        ));
    }
    out
}

fn find_template<'a>(ts: &'a [TemplateEntry], name: &str) -> Result<&'a TemplateEntry> {
    ts.iter().find(|t| t.name == name).ok_or_else(|| {
        ClientError::Refused(Refusal::NotFound(format!(
            "no template named {name:?} (templates: {})",
            if ts.is_empty() {
                "none".to_string()
            } else {
                ts.iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )))
    })
}

fn slot_of(t: &TemplateEntry) -> NormRect {
    NormRect::from_slot(
        Slot {
            x: t.slot.x,
            y: t.slot.y,
            w: t.slot.w,
            h: t.slot.h,
        },
        t.width,
        t.height,
    )
}

fn decode_png(bytes: &[u8], what: &str) -> Result<image::DynamicImage> {
    image::load_from_memory_with_format(bytes, ImageFormat::Png)
        .map_err(|e| ClientError::Protocol(format!("{what}: {e}")))
}

/// `stockade compose`.
pub async fn compose(
    settings: &Settings,
    template: &str,
    image_name: &str,
    out: &Path,
    mode: Mode,
    fit: Fit,
) -> Result<()> {
    // Decide the output format before any work.
    let format = output_format(out)?;
    let key = settings.load_key()?;
    let st = State::load(&settings.home)?;
    let account = st.account()?;
    let pw = account.server_password(&key)?;
    let service = settings.service()?;
    let list = service.templates(Some(st.client_id()?)).await?;
    let t = find_template(&list.templates, template)?.clone();
    let slot = slot_of(&t);
    let (result, notes) = match mode {
        Mode::Preview => {
            let own = service.reduced_list("account", Some(pw.as_str())).await?;
            let img = own
                .images
                .iter()
                .find(|i| i.name == image_name)
                .ok_or_else(|| {
                    ClientError::Refused(Refusal::NotFound(format!(
                        "no image named {image_name:?} in this account (the service holds no reduced image of it)"
                    )))
                })?
                .clone();
            let t_png = service
                .template_reduced(&t.name, TemplatePart::Template)
                .await?;
            let m_png = match &t.mask {
                Some(_) => Some(
                    service
                        .template_reduced(&t.name, TemplatePart::Mask)
                        .await?,
                ),
                None => None,
            };
            let u_png = service.reduced_get(&img.id, Some(pw.as_str())).await?;
            let template_img = decode_png(&t_png, "the template's reduced image")?.into_rgba8();
            let mask = match m_png {
                Some(b) => Some(decode_png(&b, "the template's reduced mask")?.into_luma8()),
                None => None,
            };
            let user = decode_png(&u_png, "the image's reduced image")?.into_rgba8();
            // The full-size aspects, so the preview crops exactly as the full composition.
            let aspects = (
                f64::from(t.width) / f64::from(t.height),
                f64::from(img.source_width) / f64::from(img.source_height),
            );
            let composed = tokio::task::spawn_blocking(move || {
                stockade_imaging::compose(
                    &template_img,
                    mask.as_ref(),
                    &user,
                    slot,
                    fit,
                    Some(aspects),
                )
            })
            .await
            .map_err(|e| ClientError::Protocol(format!("composition: {e}")))?;
            let notes = vec![
                format!("template {}: {}", t.name, t.colour),
                format!("image {}: {}", img.name, img.colour),
            ];
            (composed.image, notes)
        }
        Mode::Full { timeout } => {
            let template_key = state::unwrap_account_key(
                &key,
                list.template_key_wrapped.as_deref().ok_or_else(|| {
                    ClientError::Service("the template list carried no template key".into())
                })?,
            )?;
            let account_key = account.account_key(&key)?;
            let ip = match settings.bind {
                Some(ip) => ip,
                None => {
                    crate::download::local_ip_towards(
                        settings.service.as_deref().unwrap_or_default(),
                    )
                    .await?
                }
            };
            let dir = work_dir(out)?;
            let dest = SocketAddr::new(ip, PUSH_PORT);
            // Fig. 12: the template (and mask) from the stock server holding the template account.
            let pushed = |part: TemplatePart, file: PathBuf| {
                let service = &service;
                let template_key = &template_key;
                let name = t.name.clone();
                let pw = &pw;
                async move {
                    let listener = listen(dest).await?;
                    let resp = service
                        .template_push(
                            &TemplatePushRequest {
                                template: name,
                                part,
                                destination: dest,
                            },
                            pw.as_str(),
                        )
                        .await?;
                    let expect = expected(&resp.nonce, &resp.stock_public_key, &resp.file_name)?;
                    receive_push(listener, &expect, template_key, &file, timeout).await?;
                    Ok::<PathBuf, ClientError>(file)
                }
            };
            let t_file = pushed(TemplatePart::Template, dir.path().join("template")).await?;
            let m_file = match &t.mask {
                Some(_) => Some(pushed(TemplatePart::Mask, dir.path().join("mask")).await?),
                None => None,
            };
            // 121 → 137: the user image from the stock server holding the account.
            let u_file = dir.path().join("image");
            let listener = listen(dest).await?;
            let resp = service
                .download(
                    &DownloadRequest {
                        file_name: image_name.to_string(),
                        destination: dest,
                    },
                    &pw,
                )
                .await?;
            let expect = expected(&resp.nonce, &resp.stock_public_key, image_name)?;
            receive_push(listener, &expect, &account_key, &u_file, timeout).await?;
            let (composed, notes) = tokio::task::spawn_blocking(move || {
                full_composition(&t_file, m_file.as_deref(), &u_file, slot, fit)
            })
            .await
            .map_err(|e| ClientError::Protocol(format!("composition: {e}")))??;
            drop(dir);
            (composed, notes)
        }
    };
    let (w, h) = result.dimensions();
    let bytes = tokio::task::spawn_blocking(move || encode(&result, format))
        .await
        .map_err(|e| ClientError::Protocol(format!("encoding: {e}")))??;
    write_atomic(out, &bytes)?;
    println!(
        "composed {} {image_name} into template {template} ({fit:?}, {w}x{h}) → {}",
        match mode {
            Mode::Preview => "a preview of",
            Mode::Full { .. } => "full-resolution",
        },
        out.display()
    );
    for n in notes {
        println!("colour: {n}");
    }
    Ok(())
}

fn full_composition(
    template: &Path,
    mask: Option<&Path>,
    image: &Path,
    slot: NormRect,
    fit: Fit,
) -> Result<(image::RgbaImage, Vec<String>)> {
    let lim = stockade_imaging::Limits::default();
    let dec = |p: &Path, what: &str| {
        stockade_imaging::decode_file(p, lim, None)
            .map_err(|e| ClientError::Protocol(format!("the pushed {what}: {e}")))
    };
    let t = dec(template, "template")?;
    let m = match mask {
        Some(p) => Some(dec(p, "mask")?),
        None => None,
    };
    let u = dec(image, "image")?;
    let mask_img = m
        .as_ref()
        .map(|m| stockade_imaging::reduce::to_mask(&m.image));
    let composed =
        stockade_imaging::compose(&t.image, mask_img.as_ref(), &u.image, slot, fit, None);
    let mut notes = vec![
        format!("template: {}", t.colour.describe()),
        format!("image: {}", u.colour.describe()),
    ];
    if let Some(m) = &m {
        if m.colour != Colour::Untagged {
            notes.push(format!("mask: {}", m.colour.describe()));
        }
    }
    Ok((composed.image, notes))
}

async fn listen(dest: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(dest)
        .await
        .map_err(|e| ClientError::io(format!("listening for the push on {dest}"), e))
}

fn expected(nonce: &str, stock_public_key: &str, file_name: &str) -> Result<Expected> {
    let nonce = hex::decode(nonce)
        .map_err(|_| ClientError::Service("push answer: nonce is not hex".into()))?;
    let stock_public: [u8; 32] = hex::decode(stock_public_key)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| ClientError::Service("push answer: bad stock_public_key".into()))?;
    Ok(Expected {
        nonce,
        stock_public,
        file_name: file_name.to_string(),
    })
}

/// A private scratch directory next to the output for the decrypted pushes (removed on drop).
fn work_dir(out: &Path) -> Result<tempfile::TempDir> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    tempfile::Builder::new()
        .prefix(".stockade-compose-")
        .tempdir_in(&parent)
        .map_err(|e| {
            ClientError::io(
                format!("creating a work directory in {}", parent.display()),
                e,
            )
        })
}

fn output_format(out: &Path) -> Result<ImageFormat> {
    match out
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .as_deref()
    {
        Some("png") => Ok(ImageFormat::Png),
        Some("jpg" | "jpeg") => Ok(ImageFormat::Jpeg),
        _ => Err(ClientError::Config(format!(
            "--out {}: the name must end in .png, .jpg or .jpeg",
            out.display()
        ))),
    }
}

fn encode(img: &image::RgbaImage, format: ImageFormat) -> Result<Vec<u8>> {
    match format {
        ImageFormat::Png => Ok(stockade_imaging::reduce::encode_png(img)),
        _ => {
            let rgb = image::DynamicImage::ImageRgba8(img.clone()).into_rgb8();
            let mut out = std::io::Cursor::new(Vec::new());
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
                .encode_image(&rgb)
                .map_err(|e| ClientError::Protocol(format!("JPEG encoding: {e}")))?;
            Ok(out.into_inner())
        }
    }
}

fn write_atomic(out: &Path, bytes: &[u8]) -> Result<()> {
    stockade_proto::fsutil::write_atomic(out, bytes, 0o644)
        .map_err(|e| ClientError::io(format!("writing {}", out.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, name: &str, own: bool, private: bool) -> ReducedImageEntry {
        ReducedImageEntry {
            id: id.into(),
            name: name.into(),
            width: 256,
            height: 171,
            source_width: 1200,
            source_height: 800,
            private,
            own,
            colour: "no ICC profile (taken as sRGB)".into(),
            created_at: 0,
        }
    }

    #[test]
    fn names_resolve_own_first_then_unique_public() {
        let v = vec![
            entry("a1", "cat.png", false, false),
            entry("b2", "cat.png", true, true),
            entry("c3", "dog.png", false, false),
            entry("d4", "dup.png", false, false),
            entry("e5", "dup.png", false, false),
        ];
        assert_eq!(resolve(&v, "cat.png").unwrap().id, "b2");
        assert_eq!(resolve(&v, "c3").unwrap().name, "dog.png");
        assert_eq!(resolve(&v, "dog.png").unwrap().id, "c3");
        let e = resolve(&v, "dup.png").unwrap_err().to_string();
        assert!(e.contains("d4") && e.contains("e5"), "{e}");
        let e = resolve(&v, "nope.png").unwrap_err();
        assert_eq!(e.exit_code(), 3);
        assert!(e
            .to_string()
            .contains("no reduced image named \"nope.png\""));
        let t = format_thumbs(&v);
        assert!(
            t.lines().nth(2).unwrap().contains("private") && t.contains("(yours)"),
            "{t}"
        );
    }

    #[test]
    fn missing_templates_are_named() {
        let e = find_template(&[], "frame").unwrap_err().to_string();
        assert!(
            e.contains("not_found")
                && e.contains("no template named \"frame\"")
                && e.contains("none"),
            "{e}"
        );
    }

    #[test]
    fn output_format_from_the_name() {
        assert_eq!(
            output_format(Path::new("a/b.PNG")).unwrap(),
            ImageFormat::Png
        );
        assert_eq!(
            output_format(Path::new("b.jpeg")).unwrap(),
            ImageFormat::Jpeg
        );
        assert!(output_format(Path::new("b.gif")).is_err());
    }
}
