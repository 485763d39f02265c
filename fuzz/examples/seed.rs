//! Writes the seed inputs of every target into `fuzz/corpus/<target>/seed-*` (the fuzzer grows
//! the corpus from them): `cargo run -p stockade-fuzz --example seed`. Seeds are valid inputs
//! of each kind (a push handshake, the shipped rules and configs, a sealed stream, a small
//! image of each format), so the fuzzing starts deep.

use std::io::Cursor;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use futures_util::FutureExt;
use stockade_gateway::packet::MacAddr;
use stockade_gateway::synth::{self, Endpoint, Segment};

fn corpus(target: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn put(target: &str, name: &str, data: &[u8]) {
    std::fs::write(corpus(target).join(format!("seed-{name}")), data).unwrap();
}

fn repo(path: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)).unwrap()
}

fn host(last: u8, v6: bool) -> Endpoint {
    let ip = if v6 {
        let hex = u16::from_str_radix(&last.to_string(), 16).unwrap();
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, hex))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, last))
    };
    Endpoint {
        mac: MacAddr([0x02, 0x00, 0xc6, 0x33, 0x64, last]),
        ip,
    }
}

fn tcp(sport: u16, dport: u16, seq: u32, ack: Option<u32>, flags: u8, payload: usize) -> Segment {
    Segment::Tcp {
        sport,
        dport,
        seq,
        ack,
        flags,
        window: 512,
        wscale: (flags & 0x02 != 0).then_some(7),
        payload,
    }
}

/// One record of the frame target: control (port in bit 0), length, frame.
fn record(out: &mut Vec<u8>, inside: bool, src: Endpoint, dst: Endpoint, seg: Segment) {
    let f = synth::frame(src, dst, &seg).unwrap();
    let f = &f[..f.len().min(255)];
    out.push(u8::from(inside));
    out.push(f.len() as u8);
    out.extend_from_slice(f);
}

fn frames() {
    const SYN: u8 = 0x02;
    const FIN: u8 = 0x01;
    const PSH: u8 = 0x08;
    for v6 in [false, true] {
        let fam = if v6 { "v6" } else { "v4" };
        let (stock, client, service) = (host(50, v6), host(101, v6), host(110, v6));
        // 137 / 124: the stock server pushes to the client; the client only acknowledges.
        let mut push = Vec::new();
        record(
            &mut push,
            true,
            stock,
            client,
            tcp(40000, 7137, 1000, None, SYN, 0),
        );
        record(
            &mut push,
            false,
            client,
            stock,
            tcp(7137, 40000, 5000, Some(1001), SYN, 0),
        );
        record(
            &mut push,
            true,
            stock,
            client,
            tcp(40000, 7137, 1001, Some(5001), 0, 0),
        );
        record(
            &mut push,
            true,
            stock,
            client,
            tcp(40000, 7137, 1001, Some(5001), PSH, 100),
        );
        record(
            &mut push,
            false,
            client,
            stock,
            tcp(7137, 40000, 5001, Some(1101), 0, 0),
        );
        record(
            &mut push,
            false,
            client,
            stock,
            tcp(7137, 40000, 5001, Some(1101), PSH, 10),
        );
        record(
            &mut push,
            true,
            stock,
            client,
            tcp(40000, 7137, 1101, Some(5001), FIN, 0),
        );
        record(
            &mut push,
            false,
            client,
            stock,
            tcp(7137, 40000, 5001, Some(1102), FIN, 0),
        );
        put("frame_decide", &format!("push-{fam}"), &push);
        // 78: the service server stores an approved image on the stock server.
        let mut store = Vec::new();
        record(
            &mut store,
            false,
            service,
            stock,
            tcp(50000, 7443, 9, None, SYN, 0),
        );
        record(
            &mut store,
            true,
            stock,
            service,
            tcp(7443, 50000, 77, Some(10), SYN, 0),
        );
        record(
            &mut store,
            false,
            service,
            stock,
            tcp(50000, 7443, 10, Some(78), PSH, 200),
        );
        record(
            &mut store,
            true,
            stock,
            service,
            tcp(7443, 50000, 78, Some(210), 0, 0),
        );
        put("frame_decide", &format!("store-{fam}"), &store);
        // A client trying to reach the stock server: no rule.
        let mut attack = Vec::new();
        record(
            &mut attack,
            false,
            client,
            stock,
            tcp(1234, 7443, 1, None, SYN, 0),
        );
        let udp = Segment::Udp {
            sport: 53,
            dport: 53,
            payload: 20,
        };
        record(&mut attack, false, client, stock, udp);
        let echo = Segment::Echo {
            request: true,
            id: 1,
            seq: 1,
            payload: 8,
        };
        record(&mut attack, true, stock, service, echo);
        let echo = Segment::Echo {
            request: false,
            id: 1,
            seq: 1,
            payload: 8,
        };
        record(&mut attack, false, service, stock, echo);
        put("frame_decide", &format!("mixed-{fam}"), &attack);
    }
}

fn files() {
    put("rules_yaml", "default", &repo("rules/default.yaml"));
    put(
        "rules_yaml",
        "patent-fig1",
        &repo("rules/examples/patent-fig1.yaml"),
    );
    put("rules_yaml", "empty-rules", b"rules: []\n");
    put("rules_yaml", "one-rule", b"sets:\n  a: [192.0.2.1]\nrules:\n  - name: r\n    direction: outbound\n    protocol: udp\n    src: [a]\n    dst: [192.0.2.0/24]\n    dst_ports: [1-9]\n    action: accept\n    one_way: true\n");
    put(
        "rules_yaml",
        "bad-line",
        b"rules:\n  - name: x\n    direction: sideways\n",
    );
    put(
        "service_config",
        "packaged",
        &repo("packaging/service/service.yaml"),
    );
    put(
        "service_config",
        "lab-template",
        &repo("lab/templates/service.yaml"),
    );
    put("service_config", "empty", b"{}\n");
    put(
        "service_config",
        "unknown-key",
        b"listen: 0.0.0.0:1\nnope: 1\n",
    );
    put("service_config", "not-yaml", b"listen: [\n");
    put(
        "stock_config",
        "packaged",
        &repo("packaging/stock/stock.yaml"),
    );
    put(
        "stock_config",
        "lab-template",
        &repo("lab/templates/stock.yaml"),
    );
    put("stock_config", "empty", b"{}\n");
    put("stock_config", "zero", b"push_concurrency: 0\n");
    put("stock_config", "not-yaml", b"- - -\n");
}

fn block<T>(f: impl std::future::Future<Output = T>) -> T {
    f.now_or_never().expect("in-memory I/O")
}

fn crypto() {
    use stockade_proto::chunked::{self, ChunkHeader};
    let manifest = serde_json::json!({
        "ticket": "t", "file_name": "a.png", "size": 3,
        "sha256": stockade_proto::envelope::sha256_hex(b"abc"),
        "client_id": "c", "signature": ""
    });
    let m = serde_json::to_vec(&manifest).unwrap();
    let mut plain = vec![1u8];
    plain.extend_from_slice(&(m.len() as u32).to_be_bytes());
    plain.extend_from_slice(&m);
    plain.extend_from_slice(b"abc");
    put("upload_envelope", "sealed-manifest", &plain);
    put(
        "upload_envelope",
        "sealed-short",
        &[1, 0, 0, 0, 2, b'{', b'}'],
    );
    put(
        "upload_envelope",
        "raw-magic",
        b"\0STKU\x01aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    );
    put("upload_envelope", "raw-empty", &[0]);
    put(
        "upload_envelope",
        "sealed-huge-len",
        &[1, 0xff, 0xff, 0xff, 0xff],
    );

    for (i, (size, body)) in [(3u32, &b"hello world"[..]), (64, &[0u8; 200][..]), (1, b"")]
        .into_iter()
        .enumerate()
    {
        let header = ChunkHeader {
            object_id: [i as u8; 32],
            chunk_size: size,
        };
        let mut out = vec![0u8];
        block(chunked::seal_stream(&[7; 32], header, body, &mut out)).unwrap();
        put("chunked_stream", &format!("raw-{i}"), &out);
        let mut sealed = vec![1 + 2 * i as u8];
        sealed.extend_from_slice(body);
        put("chunked_stream", &format!("sealed-{i}"), &sealed);
    }

    let h = serde_json::json!({
        "nonce": "00ff", "file_name": "a.png", "object_id": "ab", "object_digest": "cd", "size": 3
    });
    let mut signed = vec![1u8];
    signed.extend_from_slice(&serde_json::to_vec(&h).unwrap());
    put("push_header", "signed-header", &signed);
    put(
        "push_header",
        "signed-extra-key",
        b"\x01{\"nonce\":\"\",\"x\":1}",
    );
    put("push_header", "raw-preamble", b"\0STKP\x01\0\0\0\x02{}");
    put("push_header", "raw-too-long", b"\0STKP\x01\xff\xff\xff\xff");
    put("push_header", "signed-not-json", b"\x01\xff\xfe");
}

fn wire() {
    let samples: &[(u8, &str)] = &[
        (
            0,
            r#"{"error":"refused","reason":{"check":"integrity","detail":"corrupt"}}"#,
        ),
        (
            2,
            r#"{"public_key_pem":"-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"}"#,
        ),
        (4, r#"{"client_id":"c","file_name":"a.png","size":1}"#),
        (7, r#""queued""#),
        (10, r#"{"name":"a.png","size":1,"stored_at":0}"#),
        (
            12,
            r#"{"action":"delete","file_name":"a","timestamp":1,"nonce":"00","client_id":"c","signature":""}"#,
        ),
        (21, r#"{"x":0.1,"y":0.2,"w":0.5,"h":0.5}"#),
        (
            28,
            r#"{"ticket":"t","file_name":"a","size":1,"sha256":"00","client_id":"c","signature":""}"#,
        ),
        (
            29,
            r#"{"nonce":"","file_name":"","object_id":"","object_digest":"","size":0}"#,
        ),
        (30, r#"{"check":"virus","detail":"Eicar"}"#),
    ];
    for (which, json) in samples {
        let mut d = vec![*which];
        d.extend_from_slice(json.as_bytes());
        put("wire_message", &format!("type-{which}"), &d);
    }
}

fn images() {
    let img = image::RgbImage::from_fn(16, 12, |x, y| image::Rgb([x as u8 * 16, y as u8 * 20, 99]));
    let img = image::DynamicImage::ImageRgb8(img);
    for (i, (fmt, name)) in [
        (image::ImageFormat::Png, "png"),
        (image::ImageFormat::Jpeg, "jpeg"),
        (image::ImageFormat::Gif, "gif"),
        (image::ImageFormat::WebP, "webp"),
        (image::ImageFormat::Tiff, "tiff"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut out = Cursor::new(Vec::new());
        let img = if fmt == image::ImageFormat::WebP {
            image::DynamicImage::ImageRgba8(img.to_rgba8())
        } else {
            img.clone()
        };
        img.write_to(&mut out, fmt).unwrap();
        let mut d = vec![i as u8];
        d.extend_from_slice(&out.into_inner());
        put("image_review", name, &d);
    }
    put("image_review", "mislabelled", &[0, 0xff, 0xd8, 0xff]);
}

fn main() {
    frames();
    files();
    crypto();
    wire();
    images();
    for (name, _) in stockade_fuzz::TARGETS {
        let n = std::fs::read_dir(corpus(name)).unwrap().count();
        println!("{name}: {n} files");
    }
}
