//! Reduced images, templates and composition between the real processes (patent JP H11-73391,
//! claims 6, 7, 14, 15; Fig. 12): clamd, two stock servers, the service, `stockade` clients and
//! the operator's `stockade-service template add`.

use stockade_imaging::{synth, Fit, NormRect, Slot};
use stockade_tests::*;

fn png_bytes(img: &image::GrayImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Runs `stockade-service template ...` against the running service.
fn template(sys: &System, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin("stockade-service"))
        .arg("template")
        .arg("--socket")
        .arg(&sys.admin_socket)
        .args(args)
        .output()
        .unwrap()
}

/// `png` with what the content disarm strips: a `tEXt` chunk after the header (holding
/// `secret`) and a script after the end of the image.
fn png_with_hidden_data(png: &[u8], secret: &str) -> Vec<u8> {
    let data = format!("Comment\0{secret}-TEXT");
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    chunk.extend_from_slice(b"tEXt");
    chunk.extend_from_slice(data.as_bytes());
    let crc = crc32fast::hash(&chunk[4..]);
    chunk.extend_from_slice(&crc.to_be_bytes());
    // The signature (8 bytes) and IHDR (25) come first.
    let mut out = png[..33].to_vec();
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&png[33..]);
    out.extend_from_slice(format!("<script>{secret}-TAIL</script>").as_bytes());
    out
}

/// What the template path stored on the stock server: the push of `part` of template `name`,
/// received here (on `ip`'s push port) and opened with the template account key, read from
/// the service's data directory.
fn stored_template_part(
    sys: &System,
    ip: std::net::Ipv4Addr,
    password: &str,
    name: &str,
    part: &str,
) -> Vec<u8> {
    let key: [u8; 32] = std::fs::read(sys.root().join("service-data/template-account.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let listener = std::net::TcpListener::bind((ip, 7137)).unwrap();
    let r = https(sys, Some(std::net::IpAddr::V4(ip)))
        .post(format!("{}/v1/templates/push", sys.service_url()))
        .bearer_auth(password)
        .json(&serde_json::json!({"template": name, "part": part, "destination": format!("{ip}:7137")}))
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap());
    let body: serde_json::Value = r.json().unwrap();
    let stock_public: [u8; 32] = data_encoding::HEXLOWER
        .decode(body["stock_public_key"].as_str().unwrap().as_bytes())
        .unwrap()
        .try_into()
        .unwrap();
    let nonce = body["nonce"].as_str().unwrap().to_string();
    listener.set_nonblocking(true).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let (mut conn, _) =
            tokio::time::timeout(std::time::Duration::from_secs(30), listener.accept())
                .await
                .expect("a push within 30 s")
                .unwrap();
        let header = stockade_proto::push::read_preamble(&mut conn, &stock_public)
            .await
            .unwrap();
        assert_eq!(header.nonce, nonce);
        let mut out = Vec::new();
        stockade_proto::chunked::open_stream(&key, &mut conn.take(header.size), &mut out, None)
            .await
            .unwrap();
        out
    })
}

fn https(sys: &System, bind: Option<std::net::IpAddr>) -> reqwest::blocking::Client {
    let cfg = stockade_proto::tls::client_config(&sys.pki.join("ca.pem"), None).unwrap();
    let mut b = reqwest::blocking::Client::builder().use_preconfigured_tls(cfg);
    if let Some(ip) = bind {
        b = b.local_address(ip);
    }
    b.build().unwrap()
}

/// Fig. 12 with claims 6, 7, 14, 15: the user's image on one stock server, the template put
/// deliberately on the other; the preview from reduced images and the full composition from
/// both servers' pushes agree, and the full result is exactly the composition of the originals.
#[test]
fn fig12_template_and_image_on_different_stock_servers_compose_claims_6_7_14_15() {
    let mut sys = System::start(Options::default());
    let c1 = sys.client("c1");
    // A landscape-stored photo whose EXIF says "rotate 90° to display" (orientation 6).
    let photo = synth::jpeg(&synth::scene(1200, 900), Some(6), None);
    let out = c1.ok(&[
        "upload",
        &write(&c1.home, "photo.jpg", &photo),
        "--wait",
        "60",
    ]);
    let image_stock = if out.contains("on stock-1") {
        "stock-1"
    } else {
        assert!(out.contains("on stock-2"), "{out}");
        "stock-2"
    };
    let template_stock = if image_stock == "stock-1" {
        "stock-2"
    } else {
        "stock-1"
    };

    // Claim 6: the reduced image exists, upright (EXIF orientation honoured: 900x1200).
    let thumbs = c1.ok(&["thumbs", "list", "--account"]);
    assert!(
        thumbs.contains("photo.jpg") && thumbs.contains("192x256") && thumbs.contains("900x1200"),
        "{thumbs}"
    );

    // Claim 7: only the operator adds templates; a slot outside the template is refused clearly.
    // The template and its mask carry hidden data (a text chunk, a script after the end): the
    // review disarms them as it does uploads, so what is stored is without it.
    let frame = synth::frame(1200, 800);
    let tfile = write(
        sys.root(),
        "frame.png",
        &png_with_hidden_data(&synth::png(&frame), "TEMPLATE-SECRET"),
    );
    let slot = Slot {
        x: 360,
        y: 120,
        w: 480,
        h: 560,
    };
    let mask = synth::oval_mask(480, 560);
    let mfile = write(
        sys.root(),
        "oval.png",
        &png_with_hidden_data(&png_bytes(&mask), "MASK-SECRET"),
    );
    let bad = template(
        &sys,
        &[
            "add",
            &tfile,
            "--name",
            "frame",
            "--slot",
            "800,100,480,560",
        ],
    );
    assert!(!bad.status.success());
    let e = text(&bad.stderr);
    assert!(
        e.contains("lies outside the 1200x800 template") && e.contains("x+w = 1280 > width 1200"),
        "{e}"
    );
    let added = template(
        &sys,
        &[
            "add",
            &tfile,
            "--name",
            "frame",
            "--slot",
            "360,120,480,560",
            "--mask",
            &mfile,
            "--stock-server",
            template_stock,
        ],
    );
    assert!(
        added.status.success(),
        "{}\n{}",
        text(&added.stderr),
        sys.logs()
    );
    let o = text(&added.stdout);
    assert!(
        o.contains("added template frame") && o.contains(&format!("on {template_stock}")),
        "{o}"
    );
    // What was stored is the disarmed file: the same pixels, without the hidden data.
    let server_password = c1.ok(&["password", "show"]).trim().to_string();
    let review_dir = sys.root().join("service-data/template-review");
    for (part, secret, want) in [
        ("template", "TEMPLATE-SECRET", frame.clone()),
        (
            "mask",
            "MASK-SECRET",
            image::DynamicImage::ImageLuma8(mask.clone()).into_rgba8(),
        ),
    ] {
        let stored = stored_template_part(&sys, c1.ip, &server_password, "frame", part);
        assert!(
            !contains(&stored, secret.as_bytes()) && !contains(&stored, b"tEXt"),
            "{part}: the hidden data was stored"
        );
        assert!(
            stored.ends_with(b"IEND\xAE\x42\x60\x82"),
            "{part}: data after the end"
        );
        let got = image::load_from_memory_with_format(&stored, image::ImageFormat::Png)
            .unwrap()
            .into_rgba8();
        assert!(got == want, "{part}: the pixels changed");
    }
    // The review's copies are gone once `add` ends; a refused file leaves none either.
    assert_eq!(files_under(&review_dir), Vec::<std::path::PathBuf>::new());
    let svg = write(
        sys.root(),
        "frame.svg",
        b"<svg xmlns=\"http://www.w3.org/2000/svg\"/>",
    );
    let refused = template(&sys, &["add", &svg, "--name", "svg", "--slot", "0,0,1,1"]);
    let e = text(&refused.stderr);
    assert!(
        !refused.status.success()
            && e.contains("refused by the review")
            && e.contains("unsupported"),
        "{e}"
    );
    assert_eq!(files_under(&review_dir), Vec::<std::path::PathBuf>::new());
    // Names are unique.
    let dup = template(
        &sys,
        &["add", &tfile, "--name", "frame", "--slot", "0,0,10,10"],
    );
    assert!(
        text(&dup.stderr).contains("already exists"),
        "{}",
        text(&dup.stderr)
    );
    // The template account's key stays with the service, 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sys.root().join("service-data/template-account.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    let list = c1.ok(&["templates", "list"]);
    assert!(
        list.contains("frame")
            && list.contains("1200x800")
            && list.contains("360,120,480,560")
            && list.contains("480x560")
            && list.contains(template_stock)
            && list.contains("template key: received"),
        "{list}"
    );

    // The preview: reduced images only.
    let preview = c1.home.join("preview.png");
    let o = c1.ok(&[
        "compose",
        "--template",
        "frame",
        "--image",
        "photo.jpg",
        "--out",
        preview.to_str().unwrap(),
        "--preview",
    ]);
    assert!(o.contains("a preview of") && o.contains("256x171"), "{o}");
    // The full result: the image pushed by one stock server, the template and mask by the other.
    let full = c1.home.join("full.png");
    let o = c1.ok(&[
        "compose",
        "--template",
        "frame",
        "--image",
        "photo.jpg",
        "--out",
        full.to_str().unwrap(),
        "--full",
    ]);
    assert!(
        o.contains("full-resolution") && o.contains("1200x800"),
        "{o}"
    );
    // Fig. 12: each stock server pushed its part (the template's server twice: template, mask;
    // and twice before, for the read-back of what was stored).
    let pushes = |name: &str| {
        let i = sys.stocks.iter().position(|d| d.name == name).unwrap();
        sys.stocks[i].log_text().matches("pushed (137)").count()
    };
    assert_eq!(pushes(template_stock), 2 + 2, "{}", sys.logs());
    assert_eq!(pushes(image_stock), 1, "{}", sys.logs());

    // The full result is the composition of the originals: the service's disarm may re-encode
    // the JPEG (turning it upright), so it is compared within a PSNR, not bit for bit.
    let user = stockade_imaging::decode_bytes(&photo, Default::default(), None).unwrap();
    let norm = NormRect::from_slot(slot, 1200, 800);
    let want =
        stockade_imaging::compose(&frame, Some(&mask), &user.image, norm, Fit::Cover, None).image;
    let got = image::open(&full).unwrap().into_rgba8();
    assert_eq!(got.dimensions(), (1200, 800));
    let db_full = stockade_imaging::quality::psnr(&got, &want);
    println!("full composition vs local composition of the originals: PSNR {db_full:.2} dB");
    assert!(db_full >= 35.0, "PSNR {db_full:.2} dB");
    // Upright: the photo's stored top-left (sky) quadrant is on the right after orientation 6,
    // so the slot's top right shows sky blue, its bottom left hill green.
    let sky = got.get_pixel(360 + 400, 120 + 150);
    let hill = got.get_pixel(360 + 80, 120 + 400);
    assert!(sky[2] > 180 && sky[2] > sky[1], "{sky:?}");
    assert!(hill[1] > hill[2], "{hill:?}");
    // The preview is the full composition scaled down (same geometry, same crop), within 40 dB.
    let prev = image::open(&preview).unwrap().into_rgba8();
    let (pw, ph) = prev.dimensions();
    let scaled = stockade_imaging::resize::rgba(
        &got,
        stockade_imaging::resize::CropPx::full(1200, 800),
        pw,
        ph,
    );
    let db = stockade_imaging::quality::psnr(&scaled, &prev);
    println!("preview vs downscaled full composition: PSNR {db:.2} dB");
    assert!(db >= 40.0, "PSNR {db:.2} dB");

    // Missing template or image: named clearly, exit 3.
    for (t, i, mode, words) in [
        (
            "nope",
            "photo.jpg",
            "--preview",
            "no template named \"nope\"",
        ),
        (
            "frame",
            "gone.jpg",
            "--preview",
            "no image named \"gone.jpg\"",
        ),
        ("frame", "gone.jpg", "--full", "gone.jpg"),
    ] {
        let r = c1.run(&[
            "compose",
            "--template",
            t,
            "--image",
            i,
            "--out",
            c1.home.join("x.png").to_str().unwrap(),
            mode,
        ]);
        assert_eq!(r.status.code(), Some(3), "{}", text(&r.stderr));
        let e = text(&r.stderr);
        assert!(e.contains("not_found") && e.contains(words), "{e}");
    }

    // Issue 16, defect 2: a template push (which takes a stock server's push slot) needs an
    // account's server password; and it goes only to the requester's own address.
    let http = https(&sys, Some(std::net::IpAddr::V4(c1.ip)));
    let own = format!("{}:7137", c1.ip);
    for bearer in [None, Some("stk1_garbage")] {
        let mut r = http
            .post(format!("{}/v1/templates/push", sys.service_url()))
            .json(&serde_json::json!({"template": "frame", "destination": own}));
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        let r = r.send().unwrap();
        assert_eq!(r.status(), 401, "{bearer:?}");
        let body: serde_json::Value = r.json().unwrap();
        assert_eq!(body["refusal"]["code"], "password");
    }
    let r = http
        .post(format!("{}/v1/templates/push", sys.service_url()))
        .bearer_auth(&server_password)
        .json(&serde_json::json!({"template": "frame", "destination": "127.9.9.9:7137"}))
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["refusal"]["code"], "destination");
    assert!(body["refusal"]["detail"]
        .as_str()
        .unwrap()
        .starts_with("mismatch"));

    // A crash of `template add` (SIGKILL between copying and removing) leaves its copies in
    // the review directory: the next start removes them, and only them.
    sys.service.as_mut().unwrap().kill9();
    let leftovers = [
        "template-0123456789abcdef",
        "template-0123456789abcdef.disarmed",
        "mask-fedcba9876543210",
    ];
    for f in leftovers {
        write(&review_dir, f, b"half-reviewed");
    }
    let foreign = ["operator-notes.txt", "template-frame.png"];
    for f in foreign {
        write(&review_dir, f, b"not the service's");
    }
    sys.service = Some(sys.spawn_service());
    wait_port(sys.service_port);
    let svc = sys.service.as_ref().unwrap();
    wait_until(
        "the template review sweep",
        std::time::Duration::from_secs(30),
        || svc.log_text().contains("template review leftovers removed"),
    );
    // The log's fields may be styled: drop the ANSI escapes before reading them.
    let mut log = String::new();
    let raw = svc.log_text();
    let mut raw = raw.chars();
    while let Some(c) = raw.next() {
        if c == '\x1b' {
            raw.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            log.push(c);
        }
    }
    assert!(log.contains("removed=3") && log.contains("left=2"), "{log}");
    assert!(
        log.contains("left alone in the template review directory"),
        "{log}"
    );
    let mut left: Vec<String> = files_under(&review_dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, foreign);
}

/// Claim 6 with `--private-thumbnail`: another client cannot list or fetch it; the account
/// can. Reduced images are deleted with their image.
#[test]
fn private_reduced_images_and_deletion_claim_6() {
    let sys = System::start(Options::default());
    let c1 = sys.client("c1");
    let c2 = sys.client("c2");
    c1.ok(&[
        "upload",
        &write(&c1.home, "open.png", &png(300, 200, 3)),
        "--wait",
        "60",
    ]);
    c2.ok(&[
        "upload",
        &write(&c2.home, "secret.png", &png(200, 300, 5)),
        "--wait",
        "60",
        "--private-thumbnail",
    ]);

    // c1 sees its own and nothing private of c2's.
    let l1 = c1.ok(&["thumbs", "list"]);
    assert!(
        l1.contains("open.png") && !l1.contains("secret.png"),
        "{l1}"
    );
    let r = c1.run(&[
        "thumbs",
        "get",
        "secret.png",
        "--out",
        c1.home.join("s.png").to_str().unwrap(),
    ]);
    assert_eq!(r.status.code(), Some(3), "{}", text(&r.stderr));
    assert!(text(&r.stderr).contains("no reduced image named \"secret.png\""));
    // c2 lists and fetches its private one; the public one of c1 too.
    let l2 = c2.ok(&["thumbs", "list", "--account"]);
    assert!(
        l2.contains("secret.png") && l2.contains("private") && !l2.contains("open.png"),
        "{l2}"
    );
    let id = l2
        .lines()
        .find(|l| l.contains("secret.png"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let got = c2.home.join("s.png");
    c2.ok(&[
        "thumbs",
        "get",
        "secret.png",
        "--out",
        got.to_str().unwrap(),
    ]);
    assert_eq!(
        image::open(&got).unwrap().into_rgba8().dimensions(),
        (171, 256)
    );
    let pubs = c2.ok(&["thumbs", "list", "--public"]);
    assert!(
        pubs.contains("open.png") && !pubs.contains("secret.png"),
        "{pubs}"
    );
    // Without the password, by id: answered like a missing one.
    let http = https(&sys, None);
    let r = http
        .get(format!("{}/v1/reduced/{id}", sys.service_url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(format!("{}/v1/reduced?scope=all", sys.service_url()))
        .send()
        .unwrap();
    let body: serde_json::Value = r.json().unwrap();
    let names: Vec<_> = body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["open.png"]);

    // Deleted with the image: the listing and the file on the service both go.
    let files = || {
        std::fs::read_dir(sys.root().join("service-data/reduced/images"))
            .unwrap()
            .count()
    };
    assert_eq!(files(), 2);
    c2.ok(&["delete", "secret.png"]);
    assert!(!c2
        .ok(&["thumbs", "list", "--account"])
        .contains("secret.png"));
    assert_eq!(files(), 1);
    c1.ok(&["delete", "open.png"]);
    assert!(!c1.ok(&["thumbs", "list"]).contains("open.png"));
    assert_eq!(files(), 0);
}
