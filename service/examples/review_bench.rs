//! The review pipeline of one upload, timed step by step, for BENCHMARKS.md
//! (`scripts/bench-review.sh` runs it against the standard-tools baseline):
//! 91 clamd scan of the upload as received, 92 decode + content disarm (with the operator's
//! preview), the reduced image (claim 6) from the disarmed bytes, 91 again on the disarmed bytes.
//!
//! `review_bench make OUT.jpg MEGAPIXELS` writes a camera-like test JPEG;
//! `review_bench run CLAMD_SOCKET IMAGE` reviews one image and prints one line of timings.

use std::path::Path;
use std::time::{Duration, Instant};
use stockade_service::config::Limits;
use stockade_service::review::{disarm, virus};

fn make(out: &Path, mp: f64) -> anyhow::Result<()> {
    let w = (mp * 1e6 * 4.0 / 3.0).sqrt() as u32;
    let h = (f64::from(w) * 3.0 / 4.0) as u32;
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let n = (seed & 15) as u32;
        image::Rgb([
            ((x * 255 / w) + n) as u8,
            ((y * 255 / h) + n) as u8,
            (((x + y) / 7 % 200) + n) as u8,
        ])
    });
    let f = std::io::BufWriter::new(std::fs::File::create(out)?);
    image::codecs::jpeg::JpegEncoder::new_with_quality(f, 90).encode_image(&img)?;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn scan(addr: &virus::ClamdAddr, p: &Path) -> anyhow::Result<Duration> {
    let t = Instant::now();
    match virus::scan_file(addr, p, 120).await? {
        virus::Scan::Clean => Ok(t.elapsed()),
        virus::Scan::Found(s) => anyhow::bail!("{}: {s}", p.display()),
    }
}

async fn run(clamd: &str, image: &Path) -> anyhow::Result<()> {
    let addr = virus::ClamdAddr::parse(clamd);
    let limits = Limits::default();
    let total = Instant::now();
    let scan1 = scan(&addr, image).await?;
    let t = Instant::now();
    let input = std::fs::read(image)?;
    let name = image
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("x.jpg");
    let o = disarm::disarm(
        &input,
        name,
        &limits,
        Instant::now() + Duration::from_secs(120),
    )
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    drop(input);
    let disarmed = image.with_extension("disarmed");
    std::fs::write(&disarmed, &o.bytes)?;
    let decode_disarm = t.elapsed();
    let t = Instant::now();
    let reduced = stockade_imaging::reduce_file(
        &disarmed,
        stockade_imaging::DEFAULT_LONG_SIDE,
        stockade_imaging::Limits::default(),
    )?;
    let thumb = t.elapsed();
    let scan2 = scan(&addr, &disarmed).await?;
    let _ = std::fs::remove_file(&disarmed);
    println!(
        "{} {}x{}: total {:.0} ms = scan(received) {:.0} + decode+disarm+preview {:.0} + reduced {:.0} ({}x{}) + scan(disarmed) {:.0}; {}",
        name,
        o.width,
        o.height,
        ms(total.elapsed()),
        ms(scan1),
        ms(decode_disarm),
        ms(thumb),
        reduced.width,
        reduced.height,
        ms(scan2),
        o.summary()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["make", out, mp] => make(Path::new(out), mp.parse()?),
        ["run", clamd, image] => run(clamd, Path::new(image)).await,
        _ => anyhow::bail!("usage: review_bench make OUT.jpg MEGAPIXELS | run CLAMD_SOCKET IMAGE"),
    }
}
