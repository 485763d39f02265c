//! The metrics endpoint serves exactly the documented metrics, and `promtool check metrics`
//! accepts the real output (no root needed: served on 127.0.0.1 in-process).

use std::io::{Read, Write};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stockade_gateway::dataplane::{Gateway, Outcome};
use stockade_gateway::metrics::{self, Metrics};
use stockade_gateway::packet::Port;
use stockade_gateway::rules::compile_str;
use stockade_gateway::DropReason;

const RULES: &str = "settings:\n  inside_sources: [stock]\n\
sets:\n  service: [198.51.100.110]\n  stock: [198.51.100.50]\n  clients: [198.51.100.101]\n\
pins:\n  198.51.100.110: \"02:00:c6:33:64:6e\"\n\
rules:\n  - name: service_to_stock\n    direction: inbound\n    protocol: tcp\n    src: [service]\n    dst: [stock]\n    dst_ports: [7443]\n    action: accept\n";

fn frame_tcp_syn(src_mac: [u8; 6], src: [u8; 4], dst: [u8; 4], dport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, [0x02, 0, 0xc6, 0x33, 0x64, 50])
        .ipv4(src, dst, 64)
        .tcp(40000, dport, 1, 64240)
        .syn()
        .write(&mut f, &[])
        .unwrap();
    f
}

fn get(addr: std::net::SocketAddr) -> String {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.to_string()
}

#[test]
fn metrics_endpoint_passes_promtool_and_counts_decisions() {
    let (_, rules) = compile_str(RULES, "test.yaml").unwrap();
    let metrics = Arc::new(Metrics::new().unwrap());
    let gw = Arc::new(Gateway::new(rules, metrics.clone()));

    // The gate is closed until a plane opens it: nothing is decided or forwarded.
    let svc_syn = frame_tcp_syn(
        [0x02, 0, 0xc6, 0x33, 0x64, 0x6e],
        [198, 51, 100, 110],
        [198, 51, 100, 50],
        7443,
    );
    let now = Instant::now();
    assert_eq!(
        gw.process(now, &svc_syn, Port::Outside, false).0,
        Outcome::GateClosed
    );
    gw.open();
    assert_eq!(
        gw.process(now, &svc_syn, Port::Outside, true).0,
        Outcome::Forward
    );
    let client_syn = frame_tcp_syn(
        [0x02, 0, 0xc6, 0x33, 0x64, 0x65],
        [198, 51, 100, 101],
        [198, 51, 100, 50],
        7443,
    );
    assert_eq!(
        gw.process(now, &client_syn, Port::Outside, false).0,
        Outcome::Drop(DropReason::NoRule)
    );
    // The client claiming the service's (pinned) address.
    let spoof = frame_tcp_syn(
        [0x02, 0, 0xc6, 0x33, 0x64, 0x65],
        [198, 51, 100, 110],
        [198, 51, 100, 50],
        7443,
    );
    assert_eq!(
        gw.process(now, &spoof, Port::Outside, false).0,
        Outcome::Drop(DropReason::Spoofed)
    );
    gw.close();
    assert_eq!(
        gw.process(now, &svc_syn, Port::Outside, false).0,
        Outcome::GateClosed
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let refresh: metrics::Refresh = {
        let gw = gw.clone();
        Arc::new(move || {
            gw.housekeeping(Instant::now());
        })
    };
    let server = std::thread::spawn(move || {
        rt.block_on(metrics::serve(listener, metrics, refresh, async move {
            let _ = rx.await;
        }))
    });
    let body = get(addr);
    tx.send(()).unwrap();
    server.join().unwrap().unwrap();

    let line = |k: &str| -> f64 {
        body.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("{k} missing:\n{body}"))
            .parse()
            .unwrap()
    };
    assert_eq!(line("stockade_gateway_packets_total{action=\"forward\",direction=\"inbound\",rule=\"service_to_stock\"}"), 1.0);
    assert_eq!(line("stockade_gateway_bytes_total{action=\"forward\",direction=\"inbound\",rule=\"service_to_stock\"}"), svc_syn.len() as f64);
    assert_eq!(
        line("stockade_gateway_packets_total{action=\"drop\",direction=\"inbound\",rule=\"-\"}"),
        2.0
    );
    assert_eq!(
        line("stockade_gateway_drops_total{reason=\"no_rule\"}"),
        1.0
    );
    assert_eq!(
        line("stockade_gateway_drops_total{reason=\"spoofed\"}"),
        1.0
    );
    for r in DropReason::ALL {
        line(&format!(
            "stockade_gateway_drops_total{{reason=\"{}\"}}",
            r.as_str()
        ));
    }
    assert_eq!(line("stockade_gateway_conntrack_entries"), 1.0);
    assert_eq!(line("stockade_gateway_conntrack_limit"), 65536.0);
    assert_eq!(line("stockade_gateway_rules_loaded"), 1.0);
    assert_eq!(
        line("stockade_gateway_rules_reloads_total{result=\"ok\"}"),
        0.0
    );
    assert_eq!(
        line("stockade_gateway_rules_reloads_total{result=\"error\"}"),
        0.0
    );
    assert_eq!(line("stockade_gateway_flows_revoked_total"), 0.0);
    assert_eq!(line("stockade_gateway_decision_seconds_count"), 1.0);
    // Exactly the documented families, nothing else.
    let mut families: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    families.sort();
    assert_eq!(
        families,
        [
            "stockade_gateway_bytes_total",
            "stockade_gateway_conntrack_entries",
            "stockade_gateway_conntrack_limit",
            "stockade_gateway_decision_seconds",
            "stockade_gateway_drops_total",
            "stockade_gateway_flows_revoked_total",
            "stockade_gateway_packets_total",
            "stockade_gateway_rules_loaded",
            "stockade_gateway_rules_reloads_total",
        ]
    );
    assert!(!body.contains("198.51.100"), "labels never carry addresses");

    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package `prometheus`) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
