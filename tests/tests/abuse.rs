//! Issue 16, defect 3: the public API's timeouts and fair shares, against the real service. One
//! source may hold a few connections, not all of them; a request head that never ends is cut
//! off; new keys per source and hour are capped; one source's uploads fill its own share of the
//! review queue (74), not everyone's.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockade_tests::*;

const FAIR_SHARE: &str = "fair_share:
  header_timeout_secs: 2
  max_connections_per_source: 4
  registrations_per_source_per_hour: 2
  queued_uploads_per_source: 1
";

/// A client with its own home on a given source address (System::client gives each its own).
fn client_on(sys: &System, name: &str, ip: Ipv4Addr) -> Client {
    let c = Client {
        name: name.into(),
        home: sys.root().join(format!("client-{name}")),
        ip,
        service: sys.service_url(),
        ca: sys.pki.join("ca.pem"),
    };
    std::fs::create_dir_all(&c.home).unwrap();
    c.ok(&["keygen", "--bits", "2048"]);
    c
}

#[test]
fn public_api_timeouts_and_fair_shares_61_74() {
    let sys = System::start(Options {
        auto_approve: false,
        stock_servers: 1,
        extra_service_yaml: FAIR_SHARE.into(),
        ..Options::default()
    });

    // Connections: a fifth from one source is closed at once (the four wait for TLS). The
    // harness's start-up probe (a connect and close) may still hold a place when the first of
    // the four arrive, and the server then rightly closes one of them: reopen until four are
    // held open, then try the fifth.
    let mut held: Vec<TcpStream> = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while held.len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "four connections from one source are never held open at once"
        );
        while held.len() < 4 {
            held.push(TcpStream::connect(("127.0.0.1", sys.service_port)).unwrap());
        }
        std::thread::sleep(Duration::from_millis(300));
        held.retain(|s| {
            s.set_nonblocking(true).unwrap();
            let open = matches!(s.peek(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
            s.set_nonblocking(false).unwrap();
            open
        });
    }
    let mut fifth = TcpStream::connect(("127.0.0.1", sys.service_port)).unwrap();
    fifth
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(
        fifth.read(&mut b).map_err(|e| e.kind()),
        Ok(0),
        "a fifth connection from one source stays open"
    );
    drop(held);
    drop(fifth);
    std::thread::sleep(Duration::from_millis(300));

    // A request head that never ends is cut off after header_timeout_secs (2 s).
    let cfg = stockade_proto::tls::client_config(&sys.pki.join("ca.pem"), None).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", sys.service_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(b"GET /v1/info HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let r = tls.read_to_end(&mut got);
    assert!(
        !matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "a half-sent request head held the connection for 10 s"
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );

    // Registrations (61, 71): two new keys from one source this hour, not a third; the same
    // key again is free.
    let ip = unique_loopback();
    let a = client_on(&sys, "a", ip);
    let b = client_on(&sys, "b", ip);
    let c = client_on(&sys, "c", ip);
    a.ok(&["register"]);
    b.ok(&["register"]);
    let out = c.run(&["register"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("busy") && text(&out.stderr).contains(&ip.to_string()),
        "{}",
        text(&out.stderr)
    );
    a.ok(&["register"]);

    // Queued uploads (74): one waiting per source; the next from it is turned away, another
    // source still gets in, and the source's place comes back once its upload is decided.
    let id = a.upload_queued("one.png", &png(24, 24, 1), 1);
    let out = b.run(&[
        "upload",
        &write(&b.home, "two.png", &png(24, 24, 2)),
        "--wait",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("busy") && text(&out.stderr).contains("from"),
        "{}",
        text(&out.stderr)
    );
    let other = sys.client("other");
    other.upload_queued("three.png", &png(24, 24, 3), 1);
    let r = sys.review(&["reject", &id, "--reason", "not this one"]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    b.upload_queued("two.png", &png(24, 24, 2), 1);
}

/// Issue 16, defect 2 (131–137): a receiver that accepts the push and never reads (a zero
/// window; its pure ACKs are what `one_way` rightly admits) holds a push no longer than
/// `push_stall_secs`, and while it does, a second push to the same address is refused at
/// once instead of queueing behind it; afterwards downloads work again.
#[test]
fn a_receiver_that_never_reads_holds_no_push_137() {
    let sys = System::start(Options {
        stock_servers: 1,
        max_upload_bytes: 32 << 20,
        extra_stock_yaml: "push_stall_secs: 2\npush_per_destination: 1\n".into(),
        ..Options::default()
    });
    let c1 = sys.client("c1");
    // About 6.75 MB that does not compress: more than the push's socket buffers can hold.
    let img = noisy_png(1500, 1500, 7);
    c1.ok(&["upload", &write(&c1.home, "big.png", &img), "--wait", "120"]);
    let pw = c1.ok(&["password", "show"]).trim().to_string();

    // The stalling receiver: a 4 KiB receive buffer, accepts, never reads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dest = std::net::SocketAddr::new(c1.ip.into(), 7137);
    let listener = rt.block_on(async {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.bind(dest).unwrap();
        s.listen(4).unwrap()
    });
    let cfg = stockade_proto::tls::client_config(&sys.pki.join("ca.pem"), None).unwrap();
    let http = reqwest::blocking::Client::builder()
        .use_preconfigured_tls(cfg)
        .local_address(std::net::IpAddr::V4(c1.ip))
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let ask = || {
        http.post(format!("{}/v1/downloads", sys.service_url()))
            .bearer_auth(&pw)
            .json(&serde_json::json!({"file_name": "big.png", "destination": dest}))
            .send()
            .unwrap()
    };
    let r = ask();
    assert!(r.status().is_success(), "{}", r.text().unwrap());
    let (_conn, _) = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), listener.accept()).await })
        .expect("the push connects")
        .unwrap();
    // The push is stuck on a zero window: a second one to this address is refused, not queued.
    let r = ask();
    assert_eq!(r.status(), 429, "{}", r.text().unwrap());
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["refusal"]["code"], "busy");
    // ...and the stuck one ends within the stall limit, not push_timeout_secs (600 s).
    wait_until("the stalled push to end", Duration::from_secs(20), || {
        sys.logs().contains("stalled")
    });
    drop(_conn);
    drop(listener);
    let out = c1.home.join("back.png");
    c1.ok(&["download", "big.png", "--out", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(&out).unwrap(), img);
}
