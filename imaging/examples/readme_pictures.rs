//! Makes the README pictures (docs/compose-preview.png, docs/compose-full.png) from images made
//! in code, through exactly the pipeline of `stockade compose`: the service's reduced images
//! (long side 256) for the preview, the full-size images for the full result.
//!
//! ```text
//! cargo run --release -p stockade-imaging --example readme_pictures -- docs
//! ```

use stockade_imaging::{
    compose, decode_bytes, quality, reduce, resize, synth, Fit, Limits, NormRect, Slot,
};

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "docs".into()));
    std::fs::create_dir_all(&dir).expect("output directory");
    let (tw, th) = (750, 500);
    let template = synth::frame(tw, th);
    let slot = Slot {
        x: 225,
        y: 50,
        w: 300,
        h: 400,
    };
    let mask = synth::oval_mask(slot.w, slot.h);
    let mask_png = {
        let mut out = std::io::Cursor::new(Vec::new());
        mask.write_to(&mut out, image::ImageFormat::Png)
            .expect("png");
        out.into_inner()
    };
    // The user's photo: a portrait scene stored turned on its side (as cameras do) with EXIF
    // orientation 6 ("rotate 90° clockwise to display"): composition shows it upright.
    let stored = image::imageops::rotate270(&synth::scene(480, 640));
    let photo = synth::jpeg(&stored, Some(6), None);
    let lim = Limits::default();
    let user = decode_bytes(&photo, lim, None).expect("photo");
    let norm = NormRect::from_slot(slot, tw, th);
    let full = compose(&template, Some(&mask), &user.image, norm, Fit::Cover, None).image;
    let t_red = reduce::reduce_bytes(&synth::png(&template), 256, lim).expect("template");
    let u_red = reduce::reduce_bytes(&photo, 256, lim).expect("photo");
    let (m_red, _, _) = reduce::reduce_mask(&mask_png, 256, lim).expect("mask");
    let png = |b: &[u8]| image::load_from_memory(b).expect("png");
    let aspects = (
        f64::from(tw) / f64::from(th),
        f64::from(u_red.source_width) / f64::from(u_red.source_height),
    );
    let preview = compose(
        &png(&t_red.png).into_rgba8(),
        Some(&png(&m_red).into_luma8()),
        &png(&u_red.png).into_rgba8(),
        norm,
        Fit::Cover,
        Some(aspects),
    )
    .image;
    let (pw, ph) = preview.dimensions();
    let scaled = resize::rgba(&full, resize::CropPx::full(tw, th), pw, ph);
    println!(
        "preview {pw}x{ph}, full {tw}x{th}; PSNR(preview, downscaled full) = {:.2} dB",
        quality::psnr(&scaled, &preview)
    );
    for (name, img) in [
        ("compose-preview.png", &preview),
        ("compose-full.png", &full),
    ] {
        let p = dir.join(name);
        std::fs::write(&p, reduce::encode_png(img)).expect("write");
        println!(
            "{} ({} bytes)",
            p.display(),
            std::fs::metadata(&p).expect("written").len()
        );
    }
}
