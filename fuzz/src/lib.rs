//! Stockade's fuzz targets as plain functions over bytes.
//!
//! Each target takes whatever a peer (or an operator's file) could hand the code, must never
//! panic, and checks what must hold of any input it accepts. cargo-fuzz drives them with
//! coverage (`fuzz/libfuzzer/fuzz_targets/*.rs`, one line each); `tests/replay.rs` runs every committed
//! corpus file through them as a plain test, so CI replays what the fuzzing found without a
//! sanitizer build. See `fuzz/README.md`.

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

pub mod frame;

/// A fuzz target: bytes in, a panic on a broken invariant.
pub type Target = fn(&[u8]);

/// The targets by name (the names of `fuzz/libfuzzer/fuzz_targets/*.rs` and of `fuzz/corpus/*`).
pub const TARGETS: &[(&str, Target)] = &[
    ("frame_decide", frame::frame_decide),
    ("rules_yaml", rules_yaml),
    ("upload_envelope", upload_envelope),
    ("chunked_stream", chunked_stream),
    ("push_header", push_header),
    ("wire_message", wire_message),
    ("service_config", service_config),
    ("stock_config", stock_config),
    ("image_review", image_review),
];

/// Runs an I/O-free future: every reader and writer the targets hand the openers is an
/// in-memory slice or vector, so the future is ready on its first poll.
fn ready<T>(f: impl std::future::Future<Output = T>) -> T {
    f.now_or_never()
        .expect("in-memory I/O never waits, so the future completes at once")
}

/// The gateway's rules file: a rules file that loads must also compile to an nftables ruleset
/// (both planes are built from the one `RulesFile`), and its explanation must render.
pub fn rules_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok((file, rules)) = stockade_gateway::rules::compile_str(text, "fuzz.yaml") else {
        return;
    };
    let ids = stockade_gateway::nft::compile::RuleIds::new().assign(&rules);
    let compiled = stockade_gateway::nft::compile::compile(
        &file,
        &rules,
        &ids,
        &stockade_gateway::nft::compile::PortNames::default(),
    );
    // The batch must serialise: it is what `nft -j -f` is handed.
    serde_json::to_vec(&compiled.full_batch()).expect("an nft batch serialises");
}

/// A fixed service key for the upload envelope (its private half never leaves this process).
fn service_key() -> &'static stockade_proto::envelope::ServiceKey {
    static KEY: OnceLock<stockade_proto::envelope::ServiceKey> = OnceLock::new();
    KEY.get_or_init(stockade_proto::envelope::ServiceKey::generate)
}

/// 93 / 110, the upload envelope opener. Byte 0 picks the mode: even, the rest is an envelope
/// as a client would send it (it must fail before the AEAD unless it is one); odd, the rest is
/// the plaintext of an envelope (length-prefixed manifest, then image) sealed here to the
/// service key, so the manifest parser and the limit are reached past the encryption.
pub fn upload_envelope(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    const LIMIT: u64 = 64 * 1024;
    let key = service_key();
    let sealed;
    let mut envelope = if mode & 1 == 0 {
        rest
    } else {
        let mut out = Vec::new();
        ready(stockade_proto::envelope::seal_plaintext(
            &key.public(),
            rest,
            &mut out,
        ))
        .expect("sealing to an in-memory buffer succeeds");
        sealed = out;
        &sealed[..]
    };
    let mut image = Vec::new();
    if let Ok(manifest) = ready(stockade_proto::envelope::open_upload(
        key,
        &mut envelope,
        &mut image,
        LIMIT,
    )) {
        assert!(image.len() as u64 <= LIMIT, "the opener passed its limit");
        assert_eq!(
            manifest.sha256,
            stockade_proto::envelope::sha256_hex(&image),
            "an opened envelope's image must match its manifest's digest"
        );
    }
}

/// The chunk stream opener (stored objects, 122-124 and the envelope's inner stream). Byte 0
/// picks the mode as in [`upload_envelope`]: raw stream, or the rest sealed here first (which
/// must open to exactly the rest).
pub fn chunked_stream(data: &[u8]) {
    use stockade_proto::chunked;
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    const KEY: [u8; 32] = [7; 32];
    const LIMIT: u64 = 64 * 1024;
    if mode & 1 == 0 {
        let mut r = rest;
        let mut out = Vec::new();
        if let Ok(n) = ready(chunked::open_stream(&KEY, &mut r, &mut out, Some(LIMIT))) {
            assert_eq!(n, out.len() as u64);
            assert!(n <= LIMIT);
        }
        return;
    }
    // Small chunks so a short input spans several of them.
    let header = chunked::ChunkHeader {
        object_id: [mode; 32],
        chunk_size: 1 + u32::from(mode >> 1) % 64,
    };
    let mut sealed = Vec::new();
    ready(chunked::seal_stream(&KEY, header, rest, &mut sealed))
        .expect("sealing to an in-memory buffer succeeds");
    let mut out = Vec::new();
    let n = ready(chunked::open_stream(&KEY, &mut &sealed[..], &mut out, None))
        .expect("a stream sealed here opens");
    assert_eq!((n, &out[..]), (rest.len() as u64, rest));
}

/// 124, the push preamble the client reads before a pushed object. Byte 0 picks the mode: even,
/// the rest is a preamble off the wire; odd, the rest is a header's JSON, signed here with the
/// stock server's key so the header parser is reached past the signature.
pub fn push_header(data: &[u8]) {
    use stockade_proto::push;
    static KEY: OnceLock<stockade_proto::server_key::ServerSigningKey> = OnceLock::new();
    let key = KEY.get_or_init(stockade_proto::server_key::ServerSigningKey::generate);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let signed;
    let mut wire = if mode & 1 == 0 {
        rest
    } else {
        signed = push::encode_raw_preamble(rest, key);
        &signed[..]
    };
    if let Ok(h) = ready(push::read_preamble(&mut wire, &key.public())) {
        // What was accepted re-encodes to a preamble that reads back the same.
        let again = push::encode_preamble(&h, key);
        let back = ready(push::read_preamble(&mut &again[..], &key.public()))
            .expect("a preamble encoded here reads back");
        assert_eq!(back, h);
    }
}

/// Every JSON message of the wire protocol (`stockade_proto::wire`, the manifest and the push
/// header): byte 0 picks the type, the rest is the body. A body that parses must re-serialise
/// to a fixed point.
pub fn wire_message(data: &[u8]) {
    use stockade_proto::wire::*;
    fn check<T: serde::de::DeserializeOwned + serde::Serialize>(body: &[u8]) {
        if let Ok(v) = serde_json::from_slice::<T>(body) {
            let once = serde_json::to_vec(&v).expect("a parsed message serialises");
            let back: T = serde_json::from_slice(&once).expect("its serialisation parses");
            assert_eq!(
                serde_json::to_vec(&back).expect("serialises"),
                once,
                "not a fixed point"
            );
        }
    }
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let checks: &[fn(&[u8])] = &[
        check::<ErrorBody>,
        check::<ServiceInfo>,
        check::<RegisterRequest>,
        check::<RegisterResponse>,
        check::<UploadInstructionRequest>,
        check::<UploadInstruction>,
        check::<UploadAccepted>,
        check::<UploadStatus>,
        check::<DownloadRequest>,
        check::<DownloadResponse>,
        check::<FileEntry>,
        check::<FileList>,
        check::<OwnerRequest>,
        check::<RotateResponse>,
        check::<StockIdentity>,
        check::<CreateAccountRequest>,
        check::<CreateAccountResponse>,
        check::<StoredObject>,
        check::<PushRequest>,
        check::<ReducedImageEntry>,
        check::<ReducedImageList>,
        check::<TemplateSlot>,
        check::<MaskInfo>,
        check::<TemplateEntry>,
        check::<TemplateList>,
        check::<TemplatePart>,
        check::<TemplatePushRequest>,
        check::<TemplatePushResponse>,
        check::<stockade_proto::envelope::UploadManifest>,
        check::<stockade_proto::push::PushHeader>,
        check::<stockade_proto::reason::Refusal>,
    ];
    checks[usize::from(which) % checks.len()](body);
}

/// The service server's config file (`ServiceConfig::parse`: YAML, then its checks).
pub fn service_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ =
            stockade_service::config::ServiceConfig::parse(Path::new("/fuzz/service.yaml"), text);
    }
}

/// The stock server's config file (`StockConfig::parse`).
pub fn stock_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = stockade_stock::config::StockConfig::parse(Path::new("/fuzz/stock.yaml"), text);
    }
}

/// 92, the image review's precheck and disarm, under small limits. Byte 0 picks the name the
/// upload claims (the precheck compares it with the content). Whatever disarm passes must be
/// an image that the precheck and the integrity check pass in turn.
pub fn image_review(data: &[u8]) {
    use stockade_service::review::{disarm, integrity};
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    let names = ["a.png", "a.jpg", "a.gif", "a.webp", "a.tiff", "a.bin"];
    let name = names[usize::from(which) % names.len()];
    let limits = stockade_service::config::Limits {
        max_upload_bytes: 1 << 20,
        max_width: 512,
        max_height: 512,
        max_pixels: 64 * 1024,
        max_decoded_bytes: 1 << 20,
        decode_timeout_secs: 5,
        max_gif_frames: 16,
        ..Default::default()
    };
    if integrity::precheck(bytes, name, &limits).is_err() {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(limits.decode_timeout_secs);
    if let Ok(out) = disarm::disarm(bytes, name, &limits, deadline) {
        integrity::sniff(&out.bytes).expect("disarm's output is a supported image");
    }
}
