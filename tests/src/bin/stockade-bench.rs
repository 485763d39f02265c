//! Benchmarks of the real daemons, each against a baseline measured in the same run
//! (figures go to BENCHMARKS.md). Build in release first:
//! `cargo build --release --bins && target/release/stockade-bench all`.

use std::path::Path;
use std::time::{Duration, Instant};
use stockade_proto::identity::ClientKey;
use stockade_tests::*;

fn http(sys: &System, identity: Option<(&str, &str)>) -> reqwest::Client {
    let cfg = stockade_proto::tls::client_config(
        &sys.pki.join("ca.pem"),
        identity
            .map(|(c, k)| (sys.pki.join(c), sys.pki.join(k)))
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .build()
        .unwrap()
}

fn stock_client(sys: &System) -> reqwest::Client {
    http(sys, Some(("service-client.pem", "service-client.key")))
}

async fn create_account(c: &reqwest::Client, base: &str, key: &ClientKey) -> String {
    let r: serde_json::Value = c
        .post(format!("{base}/v1/accounts"))
        .json(&serde_json::json!({"owner_public_key_pem": key.public().to_pem()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["database_key"].as_str().unwrap().to_string()
}

/// PUTs `size` bytes generated on the fly in 1 MiB pieces (no file, no big buffer).
async fn put_stream(c: &reqwest::Client, base: &str, db: &str, name: &str, size: u64) {
    let piece = bytes::Bytes::from(vec![0x5au8; 1 << 20]);
    let n = size / (1 << 20);
    let stream =
        futures_util::stream::iter((0..n).map(move |_| Ok::<_, std::io::Error>(piece.clone())));
    let r = c
        .put(format!("{base}/v1/accounts/{db}/objects/{name}"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "store failed: {}", r.status());
}

fn vm_hwm_kib(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

fn cp_sync(src: &Path, dst: &Path) -> Duration {
    let t = Instant::now();
    assert!(std::process::Command::new("cp")
        .arg(src)
        .arg(dst)
        .status()
        .unwrap()
        .success());
    assert!(std::process::Command::new("sync")
        .status()
        .unwrap()
        .success());
    t.elapsed()
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / d.as_secs_f64()
}

async fn bench_store(key: &ClientKey) {
    let sys = System::start(Options {
        stock_servers: 1,
        start_clamd: false,
        ..Options::default()
    });
    let c = stock_client(&sys);
    let base = format!("https://127.0.0.1:{}", sys.stock_specs[0].port);
    let db = create_account(&c, &base, key).await;
    println!("## Stock server store throughput (mutual TLS on loopback, encrypt + fsync + rename + metadata commit)\n");
    println!("| object | count | stock server | cp + sync | ratio |\n|---|---|---|---|---|");
    for (size, count) in [(1u64 << 20, 30u32), (100 << 20, 3)] {
        // Baseline: the same bytes, same disk, cp then sync, one object at a time.
        let src = sys.root().join("baseline-src");
        std::fs::write(&src, vec![0x5au8; size as usize]).unwrap();
        let mut base_t = Duration::ZERO;
        for i in 0..count {
            base_t += cp_sync(&src, &sys.root().join(format!("baseline-{i}")));
        }
        let t = Instant::now();
        for i in 0..count {
            put_stream(&c, &base, &db, &format!("o{size}-{i}"), size).await;
        }
        let ours = t.elapsed();
        let total = size * u64::from(count);
        println!(
            "| {} MiB | {count} | {:.0} MiB/s | {:.0} MiB/s | {:.2}× |",
            size >> 20,
            mib_s(total, ours),
            mib_s(total, base_t),
            base_t.as_secs_f64() / ours.as_secs_f64()
        );
    }
    println!();
}

async fn bench_rss(key: &ClientKey, size_mib: u64) {
    let sink_port = free_port();
    let sys = System::start(Options {
        stock_servers: 1,
        start_clamd: false,
        push_port: Some(sink_port),
        ..Options::default()
    });
    let pid = sys.stocks[0].pid();
    let idle = vm_hwm_kib(pid);
    let c = stock_client(&sys);
    let base = format!("https://127.0.0.1:{}", sys.stock_specs[0].port);
    let db = create_account(&c, &base, key).await;
    let t = Instant::now();
    put_stream(&c, &base, &db, "big", size_mib << 20).await;
    let store_t = t.elapsed();
    let after_store = vm_hwm_kib(pid);
    // A local sink on the push port counts what the stock server pushes.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", sink_port))
        .await
        .unwrap();
    let sink = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        tokio::io::copy(&mut s, &mut tokio::io::sink())
            .await
            .unwrap()
    });
    let t = Instant::now();
    let r = c
        .post(format!("{base}/v1/accounts/{db}/push"))
        .json(&serde_json::json!({"file_name": "big", "destination": format!("127.0.0.1:{sink_port}"), "nonce": "00112233445566778899aabbccddeeff"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let pushed = sink.await.unwrap();
    let push_t = t.elapsed();
    let peak = vm_hwm_kib(pid);
    println!("## Stock server peak memory with a {size_mib} MiB object\n");
    println!("| phase | peak RSS (VmHWM) | time | throughput |\n|---|---|---|---|");
    println!(
        "| idle (baseline, same process) | {:.1} MiB | | |",
        idle as f64 / 1024.0
    );
    println!(
        "| after storing | {:.1} MiB | {:.1} s | {:.0} MiB/s |",
        after_store as f64 / 1024.0,
        store_t.as_secs_f64(),
        mib_s(size_mib << 20, store_t)
    );
    println!(
        "| after pushing ({} bytes) | {:.1} MiB | {:.1} s | {:.0} MiB/s |\n",
        pushed,
        peak as f64 / 1024.0,
        push_t.as_secs_f64(),
        mib_s(pushed, push_t)
    );
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn upload_one(
    c: &reqwest::Client,
    base: &str,
    key: &ClientKey,
    client_id: &str,
    pw: Option<&str>,
    name: &str,
    img: &[u8],
) -> String {
    let mut req = c
        .post(format!("{base}/v1/upload-instructions"))
        .json(&serde_json::json!({"client_id": client_id}));
    if let Some(pw) = pw {
        req = req.bearer_auth(pw);
    }
    let ins: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
    let ticket = ins["ticket"].as_str().unwrap().to_string();
    let skey =
        stockade_proto::wire::decode_hex32(ins["upload_public_key"].as_str().unwrap()).unwrap();
    let mut m = stockade_proto::envelope::UploadManifest {
        ticket: ticket.clone(),
        file_name: name.into(),
        size: img.len() as u64,
        sha256: stockade_proto::envelope::sha256_hex(img),
        client_id: client_id.into(),
        signature: String::new(),
    };
    m.sign(key);
    let mut env = Vec::with_capacity(img.len() + 4096);
    stockade_proto::envelope::seal_upload(&skey, &m, img, &mut env)
        .await
        .unwrap();
    let r: serde_json::Value = c
        .post(format!("{base}/v1/uploads"))
        .header(stockade_proto::wire::TICKET_HEADER, ticket)
        .body(env)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = r["upload_id"]
        .as_str()
        .unwrap_or_else(|| panic!("upload refused: {r}"))
        .to_string();
    loop {
        let st: serde_json::Value = c
            .get(format!("{base}/v1/uploads/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match st["state"].as_str().unwrap() {
            "stored" => {
                return st["server_password_wrapped"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            }
            "refused" => panic!("refused: {st}"),
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn bench_e2e(key: &std::sync::Arc<ClientKey>, count: usize, concurrency: usize) {
    let sys = System::start(Options {
        stock_servers: 2,
        ..Options::default()
    });
    let c = http(&sys, None);
    let base = sys.service_url();
    let reg: serde_json::Value = c
        .post(format!("{base}/v1/register"))
        .json(&serde_json::json!({"public_key_pem": key.public().to_pem()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = reg["client_id"].as_str().unwrap().to_string();
    let img = noisy_png(600, 580, 7);
    let wrapped = upload_one(&c, &base, key, &client_id, None, "first.png", &img).await;
    let pw = String::from_utf8(
        key.unwrap_key(&data_encoding::BASE64.decode(wrapped.as_bytes()).unwrap())
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let metrics_url = format!("http://127.0.0.1:{}/metrics", sys.service_metrics_port);
    let before = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let t = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = vec![];
    for _ in 0..concurrency {
        let (c, base, client_id, pw, img, next, key) = (
            c.clone(),
            base.clone(),
            client_id.clone(),
            pw.clone(),
            img.clone(),
            next.clone(),
            key.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= count {
                    break;
                }
                upload_one(
                    &c,
                    &base,
                    &key,
                    &client_id,
                    Some(&pw),
                    &format!("b{i}.png"),
                    &img,
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let wall = t.elapsed();
    let after = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let d = |n: &str| metric(&after, n) - metric(&before, n);
    let review = d("stockade_service_review_seconds_sum")
        / d("stockade_service_review_seconds_count").max(1.0);
    let delivery = d("stockade_service_delivery_seconds_sum")
        / d("stockade_service_delivery_seconds_count").max(1.0);
    let per = wall.as_secs_f64() / count as f64 * concurrency as f64;
    println!("## End-to-end uploads of a {:.2} MiB PNG (auto-approve; clamd + full decode + store on 2 stock servers)\n", img.len() as f64 / (1 << 20) as f64);
    println!("| uploads | concurrency | wall time | uploads/s |\n|---|---|---|---|");
    println!(
        "| {count} | {concurrency} | {:.1} s | {:.1} |\n",
        wall.as_secs_f64(),
        count as f64 / wall.as_secs_f64()
    );
    println!("Where the time of one upload goes (means from the service's own histograms):\n");
    println!("| stage | mean |\n|---|---|");
    println!(
        "| 91 clamd scan + 92 full decode (review) | {:.0} ms |",
        review * 1000.0
    );
    println!(
        "| 78-82 delivery to the stock server (encrypt + fsync + commit) | {:.0} ms |",
        delivery * 1000.0
    );
    println!("| the rest: seal, TLS upload, open + verify, quarantine fsync, queueing, status polls | {:.0} ms |\n", (per - review - delivery).max(0.0) * 1000.0);
}

#[tokio::main]
async fn main() {
    let what = std::env::args().nth(1).unwrap_or_else(|| "all".into());
    let key = std::sync::Arc::new(ClientKey::generate(2048).unwrap());
    println!(
        "<!-- stockade-bench {what}: {} -->\n",
        std::process::Command::new("date")
            .arg("-u")
            .output()
            .map(|o| text(&o.stdout).trim().to_string())
            .unwrap_or_default()
    );
    if what == "store" || what == "all" {
        bench_store(&key).await;
    }
    if what == "rss" || what == "all" {
        let mib = std::env::var("STOCKADE_BENCH_RSS_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2048);
        bench_rss(&key, mib).await;
    }
    if what == "e2e" || what == "all" {
        bench_e2e(&key, 40, 4).await;
    }
}
