//! `stockade-imaging-bench`: the figures of BENCHMARKS.md, "Reduced images and composition".
//!
//! 1. Reduced-image generation (claim 6) for 12 and 24 megapixel JPEGs made in code, against
//!    `vipsthumbnail -s 256` on the same files in the same run (median of N runs each; both
//!    read the JPEG from disk and write their result to disk).
//! 2. A full composition (Fig. 12) of a 24 MP template with a 12 MP image: time per stage and
//!    peak memory (VmHWM of a child process that does only that).
//!
//! ```text
//! cargo build --release -p stockade-imaging
//! target/release/stockade-imaging-bench [--runs 5] [--dir DIR]
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use stockade_imaging::{compose, decode_file, reduce_file, synth, Fit, Limits, NormRect, Slot};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn limits() -> Limits {
    Limits {
        max_width: 16384,
        max_height: 16384,
        max_alloc: 2 << 30,
    }
}

/// The child: one full composition, timed per stage, then its peak memory.
fn compose_once(template: &Path, image: &Path, out: &Path) {
    let t0 = Instant::now();
    let t = decode_file(template, limits(), None).expect("template decodes");
    let t1 = Instant::now();
    let u = decode_file(image, limits(), None).expect("image decodes");
    let t2 = Instant::now();
    let (tw, th) = t.image.dimensions();
    let slot = Slot {
        x: tw / 4,
        y: th / 8,
        w: tw / 2,
        h: th * 3 / 4,
    };
    // The mask is made in code here: its time is not part of the composition's.
    let mask = synth::oval_mask(slot.w, slot.h);
    let t3 = Instant::now();
    let made_mask = t3 - t2;
    let c = compose(
        &t.image,
        Some(&mask),
        &u.image,
        NormRect::from_slot(slot, tw, th),
        Fit::Cover,
        None,
    );
    let t4 = Instant::now();
    let rgb = image::DynamicImage::ImageRgba8(c.image).into_rgb8();
    let mut f = std::io::BufWriter::new(std::fs::File::create(out).expect("output"));
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut f, 92)
        .encode_image(&rgb)
        .expect("encode");
    drop(f);
    let t5 = Instant::now();
    let s = |a: Instant, b: Instant| (b - a).as_secs_f64();
    println!(
        "{:.3} {:.3} {:.3} {:.3} {:.3} {}",
        s(t0, t1),
        s(t1, t2),
        s(t3, t4),
        s(t4, t5),
        s(t0, t5) - made_mask.as_secs_f64(),
        peak_rss_kib()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("compose-once") {
        compose_once(
            Path::new(&args[2]),
            Path::new(&args[3]),
            Path::new(&args[4]),
        );
        return;
    }
    let mut runs = 5usize;
    let mut dir: Option<PathBuf> = None;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--runs" => {
                runs = args[i + 1].parse().expect("--runs N");
                i += 1;
            }
            "--dir" => {
                dir = Some(PathBuf::from(&args[i + 1]));
                i += 1;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 1;
    }
    let tmp = tempfile_dir(dir);
    let d = tmp.as_path();
    println!(
        "# stockade-imaging-bench (median of {runs} runs; files in {})",
        d.display()
    );
    let sizes = [("12 MP", 4000u32, 3000u32), ("24 MP", 6000, 4000)];
    let mut files = vec![];
    for (label, w, h) in sizes {
        let p = d.join(format!("photo-{w}x{h}.jpg"));
        if !p.exists() {
            std::fs::write(&p, synth::jpeg(&synth::scene(w, h), None, None)).expect("write jpeg");
        }
        files.push((label, w, h, p));
    }
    let vips = Command::new("vipsthumbnail")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success());
    println!(
        "vipsthumbnail: {}",
        vips.as_ref()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "not installed (apt-get install libvips-tools)".into())
    );
    println!("\n| JPEG | stockade reduce (s) | vipsthumbnail -s 256 (s) | ratio | output |");
    println!("| --- | ---: | ---: | ---: | --- |");
    for (label, w, h, p) in &files {
        let out = d.join(format!("reduced-{w}x{h}.png"));
        let mut ours = vec![];
        let mut dims = (0, 0, 0);
        for _ in 0..runs {
            let t = Instant::now();
            let r = reduce_file(p, 256, limits()).expect("reduces");
            std::fs::write(&out, &r.png).expect("write");
            ours.push(t.elapsed().as_secs_f64());
            dims = (r.width, r.height, r.dct_scale_eighths);
        }
        let ours = median(ours);
        let theirs = vips.as_ref().map(|_| {
            let vout = d.join(format!("vips-{w}x{h}.jpg"));
            median(
                (0..runs)
                    .map(|_| {
                        let t = Instant::now();
                        let st = Command::new("vipsthumbnail")
                            .arg("-s")
                            .arg("256")
                            .arg(p)
                            .arg("-o")
                            .arg(&vout)
                            .status()
                            .expect("vipsthumbnail runs");
                        assert!(st.success());
                        t.elapsed().as_secs_f64()
                    })
                    .collect(),
            )
        });
        println!(
            "| {label} ({w}x{h}) | {ours:.3} | {} | {} | {}x{} PNG, DCT scale {}/8 |",
            theirs
                .map(|t| format!("{t:.3}"))
                .unwrap_or_else(|| "-".into()),
            theirs
                .map(|t| format!("{:.2}x", ours / t))
                .unwrap_or_else(|| "-".into()),
            dims.0,
            dims.1,
            dims.2
        );
    }
    // Full composition: 24 MP template (PNG, as an operator's artwork) with the 12 MP photo.
    let template = d.join("template-6000x4000.png");
    if !template.exists() {
        std::fs::write(&template, synth::png(&synth::frame(6000, 4000))).expect("write template");
    }
    let exe = std::env::current_exe().expect("own path");
    let out = d.join("composed.jpg");
    let mut rows = vec![];
    for _ in 0..runs.min(3) {
        let o = Command::new(&exe)
            .arg("compose-once")
            .arg(&template)
            .arg(&files[0].3)
            .arg(&out)
            .output()
            .expect("child runs");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Vec<f64> = String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .map(|x| x.parse().expect("number"))
            .collect();
        rows.push(v);
    }
    let col = |i: usize| median(rows.iter().map(|r| r[i]).collect());
    println!("\nFull composition, 24 MP template (6000x4000 PNG) + 12 MP photo (4000x3000 JPEG), cover, oval mask, JPEG q92 out:");
    println!(
        "| decode template | decode image | compose (resize + blend) | encode | total | peak RSS |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {:.3} s | {:.3} s | {:.3} s | {:.3} s | {:.3} s | {:.0} MiB |",
        col(0),
        col(1),
        col(2),
        col(3),
        col(4),
        col(5) / 1024.0
    );
}

/// A kept directory when given, else a fresh one under the system temp dir.
fn tempfile_dir(dir: Option<PathBuf>) -> PathBuf {
    let d = dir.unwrap_or_else(|| std::env::temp_dir().join("stockade-imaging-bench"));
    std::fs::create_dir_all(&d).expect("bench directory");
    d
}
