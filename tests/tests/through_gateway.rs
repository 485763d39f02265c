//! End to end through the real gateway (issue 7), once per data plane: `stockade-lab up` with a
//! unique prefix and state directory (a Drop guard runs `down`, also on failure), then
//!
//! * every patent flow through the gateway: upload via each service server, the review (91-93,
//!   and a refusal), the push download (137) to the requesting client, sharing (Fig. 10, 11)
//!   and client 2's download;
//! * client 1 and client 2 cannot open a TCP connection, exchange UDP or get an ICMP echo
//!   answer from a stock server: nothing comes back, not even a reset (checked against probes
//!   that do see answers, and by a capture on the stock servers' interfaces);
//! * an impostor at 198.51.100.112 (its own namespace and MAC on the outside switch) gets
//!   nothing through, even with the service's client certificate; a client forging the
//!   service's source address gets nothing through and the gateway counts `spoofed`;
//! * removing the service's address from the lab's live copy of the rules stops new uploads at
//!   the gateway (reload counted), restoring it brings them back (the held upload too);
//! * `promtool check metrics` on the gateway's, services' and stock servers' metrics; the lab's
//!   Prometheus scrapes every target, loads the alert rules of monitoring/alerts.yml and
//!   evaluates every query of the Grafana dashboard without error;
//! * `down` leaves no namespace, link or process behind.
//!
//! Needs root, the workspace's binaries (`cargo build --bins -p stockade-lab -p
//! stockade-gateway -p stockade-service -p stockade-stock -p stockade-client`), clamd,
//! Prometheus (promtool) and python3: `.ci/run` installs them.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use stockade_tests::lab::{
    self, alive, have, is_root, metric, ok, run_bounded, Impostor, Lab, Sniffer, CLIENT1, CLIENT2,
    SERVICE1, SERVICE2, STOCK1, STOCK2,
};
use stockade_tests::{png, text};

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../monitoring/grafana/stockade.json"
);
const IMPOSTOR: std::net::Ipv4Addr = std::net::Ipv4Addr::new(198, 51, 100, 112);

#[test]
fn through_the_userspace_gateway() {
    through_gateway("u", "userspace");
}

#[test]
fn through_the_nftables_gateway() {
    through_gateway("n", "nftables");
}

fn through_gateway(tag: &str, plane: &str) {
    assert!(
        is_root(),
        "needs root: the lab creates network namespaces (run as root, as .ci/run does)"
    );
    for tool in ["clamd", "prometheus", "promtool", "python3", "ip"] {
        assert!(have(tool), "{tool} is not installed (.ci/run installs it)");
    }
    let started = Instant::now();
    let lab = Lab::up(tag, plane);
    assert!(
        lab.up_output.contains(&format!("({plane} plane)")),
        "{}",
        lab.up_output
    );
    assert!(
        lab.up_output.contains("every target up"),
        "up did not see every Prometheus target up:\n{}",
        lab.up_output
    );
    eprintln!("[{plane}] up in {:.1}s", lab.up_time.as_secs_f32());

    metrics_pass_promtool(&lab);
    let flows = patent_flows(&lab);
    eprintln!(
        "[{plane}] flows done at {:.1}s",
        started.elapsed().as_secs_f32()
    );
    nothing_reaches_the_stock_servers(&lab);
    eprintln!(
        "[{plane}] isolation done at {:.1}s",
        started.elapsed().as_secs_f32()
    );
    live_rules_edit(&lab, &flows);
    eprintln!(
        "[{plane}] reload done at {:.1}s",
        started.elapsed().as_secs_f32()
    );
    prometheus_sees_everything(&lab);
    eprintln!(
        "[{plane}] prometheus done at {:.1}s",
        started.elapsed().as_secs_f32()
    );
    down_leaves_nothing(&lab);
    eprintln!(
        "[{plane}] all done in {:.1}s",
        started.elapsed().as_secs_f32()
    );
}

// ---------------------------------------------------------------------------------------------
// Flows

/// What later steps reuse.
struct Flows {
    client1_home: std::path::PathBuf,
}

fn client_env(home: &Path, service: std::net::Ipv4Addr) -> Vec<(&'static str, String)> {
    vec![
        ("STOCKADE_HOME", home.display().to_string()),
        ("STOCKADE_SERVICE", format!("https://{service}:8443")),
    ]
}

/// `stockade ARGS` as a client of the lab; returns the output (not checked).
fn stockade(lab: &Lab, host: &str, env: &[(&str, String)], args: &[&str]) -> Output {
    let mut cmd = vec!["stockade"];
    cmd.extend_from_slice(args);
    lab.exec(host, &cmd, env, Duration::from_secs(150))
}

fn stockade_ok(lab: &Lab, host: &str, env: &[(&str, String)], args: &[&str]) -> String {
    ok(
        &stockade(lab, host, env, args),
        &format!("[{}] {host}: stockade {}", lab.plane, args.join(" ")),
    )
}

fn same(a: &Path, b: &Path) {
    assert!(
        std::fs::read(a).unwrap() == std::fs::read(b).unwrap(),
        "{} differs from {}",
        b.display(),
        a.display()
    );
}

fn gateway_forwarded(lab: &Lab, rule: &str) -> f64 {
    metric(
        &lab.gateway_metrics(),
        "stockade_gateway_packets_total",
        &[("rule", rule), ("action", "forward")],
    )
}

fn patent_flows(lab: &Lab) -> Flows {
    let files = lab.dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    let home1 = lab.state().join("hosts/client1/home");
    let home2 = lab.state().join("hosts/client2/home");
    let home2b = lab.dir.path().join("client2-on-service2");
    std::fs::create_dir_all(&home2b).unwrap();
    let c1 = client_env(&home1, SERVICE1);
    let c2 = client_env(&home2, SERVICE1);
    let c2b = client_env(&home2b, SERVICE2);

    let push_before = gateway_forwarded(lab, "stock-push-to-clients");
    let service_before = gateway_forwarded(lab, "service-to-stock");

    // 61, 71: keys and registration, with service server 1 (clients 1 and 2) and service
    // server 2 (client 2's second account, Fig. 12).
    for (host, env) in [("client1", &c1), ("client2", &c2), ("client2", &c2b)] {
        stockade_ok(lab, host, env, &["keygen", "--bits", "2048"]);
        stockade_ok(lab, host, env, &["register"]);
    }

    // 62, 63, Fig. 5, 78-82: an upload through each service server, stored on a stock server
    // behind the gateway.
    let photo1 = files.join("photo1.png");
    std::fs::write(&photo1, png(160, 120, 11)).unwrap();
    let photo2 = files.join("photo2.png");
    std::fs::write(&photo2, png(140, 100, 23)).unwrap();
    for (host, env, photo) in [("client1", &c1, &photo1), ("client2", &c2b, &photo2)] {
        let out = stockade_ok(
            lab,
            host,
            env,
            &["upload", photo.to_str().unwrap(), "--wait", "90"],
        );
        let name = photo.file_name().unwrap().to_str().unwrap();
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("stored {name} "))
                    && (l.ends_with(&format!(" on {STOCK1}"))
                        || l.ends_with(&format!(" on {STOCK2}")))),
            "[{}] upload through {} was not stored on a stock server:\n{out}",
            lab.plane,
            env[1].1
        );
    }

    // The review refuses an infected file (91) with its reason: the check ran.
    let infected = files.join("infected.png");
    let mut bytes = png(64, 64, 3);
    bytes.extend_from_slice(stockade_tests::VIRUS_MARKER);
    std::fs::write(&infected, bytes).unwrap();
    let out = stockade(
        lab,
        "client1",
        &c1,
        &["upload", infected.to_str().unwrap(), "--wait", "90"],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "infected upload not refused: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("virus"),
        "refusal without its reason: {}",
        text(&out.stderr)
    );

    // 121-137: client 1 downloads; the stock server pushes through the gateway to client 1.
    let back = files.join("client1-back.png");
    stockade_ok(
        lab,
        "client1",
        &c1,
        &["download", "photo1.png", "--out", back.to_str().unwrap()],
    );
    same(&photo1, &back);

    // Fig. 10, 11: client 1 shares the account key with client 2 (PAKE, peer to peer), and
    // client 2 downloads the same file by push.
    let server_pw = stockade_ok(lab, "client1", &c1, &["password", "show"]);
    let server_pw_file = files.join("server-password");
    let cpw1 = files.join("client-password-1");
    let cpw2 = files.join("client-password-2");
    std::fs::write(&server_pw_file, server_pw.trim()).unwrap();
    std::fs::write(&cpw1, "a client password agreed in person\n").unwrap();
    std::fs::write(&cpw2, "a client password agreed in person\n").unwrap();
    let listen = format!("{CLIENT1}:7138");
    let serve_out = files.join("share-serve.out");
    let mut serve_cmd = lab.exec_cmd(
        "client1",
        &[
            "stockade",
            "share",
            "serve",
            "--client-password-file",
            cpw1.to_str().unwrap(),
            "--listen",
            &listen,
            "--max-attempts",
            "1",
        ],
        &c1,
    );
    serve_cmd
        .stdout(std::fs::File::create(&serve_out).unwrap())
        .stderr(Stdio::from(
            std::fs::File::create(files.join("share-serve.err")).unwrap(),
        ));
    let mut serve = KillOnDrop(serve_cmd.spawn().unwrap());
    let start = Instant::now();
    loop {
        let ss = run_bounded(
            {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &lab.ns("client1"), "ss", "-Hltn"]);
                c
            },
            Duration::from_secs(10),
        );
        if text(&ss.stdout).contains(&listen) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "share serve never listened: {}",
            std::fs::read_to_string(files.join("share-serve.err")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stockade_ok(
        lab,
        "client2",
        &c2,
        &[
            "share",
            "request",
            "--from",
            &listen,
            "--client-password-file",
            cpw2.to_str().unwrap(),
            "--server-password-file",
            server_pw_file.to_str().unwrap(),
        ],
    );
    let start = Instant::now();
    let served = loop {
        if let Some(s) = serve.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "share serve did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(served.success(), "share serve failed");
    let c2_copy = files.join("client2-copy.png");
    stockade_ok(
        lab,
        "client2",
        &c2,
        &["download", "photo1.png", "--out", c2_copy.to_str().unwrap()],
    );
    same(&photo1, &c2_copy);

    // All of it crossed the gateway under its rules.
    let push_after = gateway_forwarded(lab, "stock-push-to-clients");
    let service_after = gateway_forwarded(lab, "service-to-stock");
    assert!(
        push_after > push_before,
        "[{}] no packet under stock-push-to-clients: {push_before} → {push_after}",
        lab.plane
    );
    assert!(
        service_after > service_before,
        "[{}] no packet under service-to-stock: {service_before} → {service_after}",
        lab.plane
    );
    Flows {
        client1_home: home1,
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Isolation

/// Runs commands at once; waits for all (bounded).
fn run_all(cmds: Vec<(String, Command)>, timeout: Duration) -> BTreeMap<String, Output> {
    let dir = tempfile::tempdir().unwrap();
    let mut running = vec![];
    for (i, (name, mut c)) in cmds.into_iter().enumerate() {
        let o = dir.path().join(format!("{i}.out"));
        let e = dir.path().join(format!("{i}.err"));
        c.stdout(std::fs::File::create(&o).unwrap())
            .stderr(std::fs::File::create(&e).unwrap())
            .stdin(Stdio::null());
        running.push((name, KillOnDrop(c.spawn().unwrap()), o, e));
    }
    let start = Instant::now();
    let mut done = BTreeMap::new();
    for (name, mut child, o, e) in running {
        let status = loop {
            if let Some(s) = child.0.try_wait().unwrap() {
                break s;
            }
            assert!(
                start.elapsed() < timeout,
                "{name} did not end in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        done.insert(
            name,
            Output {
                status,
                stdout: std::fs::read(&o).unwrap(),
                stderr: std::fs::read(&e).unwrap(),
            },
        );
    }
    done
}

fn count(capture: &serde_json::Value, key: &str, what: &str) -> u64 {
    capture[key][what].as_u64().unwrap_or(0)
}

fn nothing_reaches_the_stock_servers(lab: &Lab) {
    let plane = &lab.plane;
    let g0 = lab.gateway_metrics();
    let impostor = Impostor::plug(lab, IMPOSTOR);
    // Its frames to stock 1 go out without ARP (the gateway drops ARP from unknown senders);
    // toward stock 2 it has to ask.
    impostor.neighbour(STOCK1);

    let cap1 = Sniffer::start(lab, "stock1", "data", Duration::from_secs(60));
    let cap2 = Sniffer::start(lab, "stock2", "data", Duration::from_secs(60));

    let mut attempts = vec![];
    for stock in [STOCK1, STOCK2] {
        // The stock server's own ports (7443 API, 9443 metrics), the push port, other
        // daemons' ports, well-known ones and the extremes: a closed port would answer with a
        // reset or an ICMP port unreachable if anything got through.
        for p in [
            1, 22, 80, 443, 7137, 7443, 8443, 9090, 9101, 9443, 9464, 65535,
        ] {
            attempts.push(format!("tcp:{stock}:{p}"));
        }
        for p in [53, 123, 7443, 9443, 9999] {
            attempts.push(format!("udp:{stock}:{p}"));
        }
        attempts.push(format!("icmp:{stock}"));
    }
    let np = lab.netprobe().display().to_string();
    let pki = lab.state().join("pki");
    let p = |f: &str| pki.join(f).display().to_string();
    let mut cmds: Vec<(String, Command)> = vec![
        ("client1".into(), lab.probe_cmd("client1", 3, &attempts)),
        ("client2".into(), lab.probe_cmd("client2", 3, &attempts)),
        (
            // Controls: the same probes do see answers where the topology allows them.
            "controls-service1".into(),
            lab.probe_cmd(
                "service1",
                3,
                &[format!("tcp:{STOCK1}:7443"), format!("tcp:{STOCK2}:7443")],
            ),
        ),
        (
            "controls-client1".into(),
            lab.probe_cmd(
                "client1",
                3,
                &[
                    format!("icmp:{SERVICE1}"),
                    format!("udp:{CLIENT2}:9999"),
                    format!("tcp:{CLIENT2}:9"),
                ],
            ),
        ),
        (
            // A client forging the service's source address (its own MAC): TCP SYN, UDP,
            // ICMP echo, with valid checksums.
            "forger".into(),
            lab.exec_cmd(
                "client1",
                &[
                    "python3",
                    &np,
                    "forge",
                    "3",
                    "data",
                    &lab::mac_of(CLIENT1),
                    &lab::mac_of(STOCK1),
                    &SERVICE1.to_string(),
                    &STOCK1.to_string(),
                    "7443",
                ],
                &[],
            ),
        ),
        ("impostor".into(), {
            let mut specs = vec![np.clone(), "probe".into(), "3".into()];
            specs.extend([
                format!("tcp:{STOCK1}:7443"),
                format!("tcp:{STOCK1}:9443"),
                format!("udp:{STOCK1}:9999"),
                format!("icmp:{STOCK1}"),
                format!("tcp:{STOCK2}:7443"),
            ]);
            let mut args = vec!["python3"];
            args.extend(specs.iter().map(String::as_str));
            impostor.cmd(&args)
        }),
        (
            // Even holding the service's client certificate, the impostor gets no answer.
            "impostor-tls".into(),
            impostor.cmd(&[
                "python3",
                &np,
                "https",
                "4",
                &STOCK1.to_string(),
                "7443",
                "/",
                &p("ca.pem"),
                &p("service-client.pem"),
                &p("service-client.key"),
            ]),
        ),
    ];
    let outs = run_all(std::mem::take(&mut cmds), Duration::from_secs(60));
    let seen1 = cap1.finish();
    let seen2 = cap2.finish();
    let g1 = lab.gateway_metrics();

    let parse = |name: &str| -> BTreeMap<String, String> {
        lab::parse_probe(&ok(&outs[name], &format!("[{plane}] {name}")))
    };
    for client in ["client1", "client2"] {
        let r = parse(client);
        assert_eq!(r.len(), attempts.len(), "{client}: {r:?}");
        for (attempt, outcome) in &r {
            assert_eq!(
                outcome, "timeout",
                "[{plane}] {client} → {attempt}: something came back or the stack gave up ({outcome}); all: {r:?}"
            );
        }
    }
    let c = parse("controls-service1");
    assert!(
        c.values().all(|o| o == "reached"),
        "[{plane}] the service server could not reach the stock servers: {c:?}"
    );
    let c = parse("controls-client1");
    assert_eq!(c[&format!("icmp:{SERVICE1}")], "reached", "{c:?}");
    assert_eq!(c[&format!("udp:{CLIENT2}:9999")], "refused", "{c:?}");
    assert_eq!(c[&format!("tcp:{CLIENT2}:9")], "refused", "{c:?}");

    let forged = ok(&outs["forger"], "forger");
    assert!(forged.contains("sent 6"), "{forged}");
    assert!(
        forged.contains("answers 0"),
        "[{plane}] the stock server answered forged packets: {forged}"
    );

    let r = parse("impostor");
    for (attempt, outcome) in &r {
        let ok_outcome = outcome == "timeout"
            // No static neighbour toward stock 2: its ARP is dropped, the stack gives up.
            || (attempt.contains(&STOCK2.to_string()) && outcome.starts_with("unreachable:"));
        assert!(
            ok_outcome,
            "[{plane}] impostor → {attempt}: {outcome}; all: {r:?}"
        );
    }
    let tls = &outs["impostor-tls"];
    assert_eq!(
        tls.status.code(),
        Some(3),
        "[{plane}] the impostor's TLS attempt did not time out: {}{}",
        text(&tls.stdout),
        text(&tls.stderr)
    );

    // Ground truth on the stock servers' wires: not one IPv4 frame from client 1, client 2 or
    // the impostor (the forged frames carry client 1's MAC); the service's did arrive.
    for (stock, seen) in [("stock1", &seen1), ("stock2", &seen2)] {
        for (who, ip) in [
            ("client 1", CLIENT1),
            ("client 2", CLIENT2),
            ("the impostor", IMPOSTOR),
        ] {
            let n = count(seen, "by_mac", &lab::mac_of(ip));
            assert_eq!(
                n, 0,
                "[{plane}] {stock} received {n} IPv4 frames from {who}: {seen}"
            );
            let n = count(seen, "by_src", &ip.to_string());
            assert_eq!(
                n, 0,
                "[{plane}] {stock} received {n} IPv4 packets from {who}'s address: {seen}"
            );
        }
        assert!(
            count(seen, "by_mac", &lab::mac_of(SERVICE1)) > 0,
            "[{plane}] the capture on {stock} missed the service's control connection: {seen}"
        );
    }

    // The gateway counted it: default drops for the clients' and the impostor's attempts,
    // `spoofed` for the forged source.
    let d = |reason: &str| {
        metric(&g1, "stockade_gateway_drops_total", &[("reason", reason)])
            - metric(&g0, "stockade_gateway_drops_total", &[("reason", reason)])
    };
    let drops: BTreeMap<&str, f64> = [
        "no_rule",
        "spoofed",
        "arp_unknown",
        "invalid_state",
        "kernel_other",
    ]
    .into_iter()
    .map(|r| (r, d(r)))
    .collect();
    eprintln!("[{plane}] drops during the isolation checks: {drops:?}");
    // Every attempt of both clients sends at least one packet, and the impostor's 4 toward
    // stock 1.
    let least = (2 * attempts.len() + 4) as f64;
    assert!(
        drops["no_rule"] >= least,
        "[{plane}] fewer than {least} no_rule drops: {drops:?}"
    );
    assert!(
        drops["spoofed"] >= 6.0,
        "[{plane}] the forged packets were not counted as spoofed: {drops:?}"
    );
    assert!(
        drops["arp_unknown"] >= 1.0,
        "[{plane}] the impostor's ARP was not counted: {drops:?}"
    );

    drop(impostor);
    assert!(
        !Path::new("/run/netns").join(lab.ns("impostor")).exists(),
        "impostor namespace left"
    );
}

// ---------------------------------------------------------------------------------------------
// Live rules edit

fn reloads(lab: &Lab, result: &str) -> f64 {
    metric(
        &lab.gateway_metrics(),
        "stockade_gateway_rules_reloads_total",
        &[("result", result)],
    )
}

fn wait_reloads(lab: &Lab, want: f64) {
    let start = Instant::now();
    while reloads(lab, "ok") < want {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "[{}] the gateway did not reload the edited rules (ok reloads {} < {want}, errors {}); log:\n{}",
            lab.plane,
            reloads(lab, "ok"),
            reloads(lab, "error"),
            std::fs::read_to_string(lab.state().join("logs/gateway.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn live_rules_edit(lab: &Lab, flows: &Flows) {
    let plane = &lab.plane;
    let c1 = client_env(&flows.client1_home, SERVICE1);
    let original = lab.rules();
    let needle = format!("service: [{SERVICE1}, ");
    assert!(
        original.contains(&needle),
        "the lab's rules copy has no `{needle}`"
    );
    let without = original.replacen(&needle, "service: [", 1);
    let ok0 = reloads(lab, "ok");
    let err0 = reloads(lab, "error");
    let g0 = lab.gateway_metrics();

    let cap1 = Sniffer::start(lab, "stock1", "data", Duration::from_secs(90));
    let cap2 = Sniffer::start(lab, "stock2", "data", Duration::from_secs(90));
    lab.write_rules(&without);
    wait_reloads(lab, ok0 + 1.0);

    // A new upload through service server 1: the review passes, the delivery (78) is stopped
    // at the gateway, so the upload is still waiting when the client gives up (exit 4).
    let files = lab.dir.path().join("files");
    let held = files.join("held.png");
    std::fs::write(&held, png(120, 90, 41)).unwrap();
    let out = stockade(
        lab,
        "client1",
        &c1,
        &["upload", held.to_str().unwrap(), "--wait", "10"],
    );
    assert_eq!(
        out.status.code(),
        Some(4),
        "[{plane}] the upload was not held with the service's address removed: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("upload "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no upload id in {stdout}"))
        .to_string();
    let seen1 = cap1.finish();
    let seen2 = cap2.finish();
    let g1 = lab.gateway_metrics();
    for (stock, seen) in [("stock1", &seen1), ("stock2", &seen2)] {
        let n = count(seen, "by_src", &SERVICE1.to_string());
        assert_eq!(
            n, 0,
            "[{plane}] {stock} received {n} packets from service 1 after its address was removed: {seen}"
        );
    }
    let dropped = metric(&g1, "stockade_gateway_drops_total", &[])
        - metric(&g0, "stockade_gateway_drops_total", &[]);
    assert!(
        dropped >= 1.0,
        "[{plane}] the gateway dropped nothing while the delivery was attempted"
    );
    assert_eq!(
        reloads(lab, "error"),
        err0,
        "a reload failed; gateway log:\n{}",
        std::fs::read_to_string(lab.state().join("logs/gateway.log")).unwrap_or_default()
    );

    // Restored: the held upload is delivered, and new uploads go through again.
    lab.write_rules(&original);
    wait_reloads(lab, ok0 + 2.0);
    let status = stockade_ok(lab, "client1", &c1, &["status", &id, "--wait", "60"]);
    assert!(
        status.contains("stored held.png"),
        "[{plane}] the held upload was not delivered after the rules were restored: {status}"
    );
    let again = files.join("after.png");
    std::fs::write(&again, png(100, 80, 53)).unwrap();
    let out = stockade_ok(
        lab,
        "client1",
        &c1,
        &["upload", again.to_str().unwrap(), "--wait", "60"],
    );
    assert!(out.contains("stored after.png"), "{out}");
    assert_eq!(reloads(lab, "error"), err0);
}

// ---------------------------------------------------------------------------------------------
// Metrics and Prometheus

fn promtool_check(text_in: &str, what: &str) {
    let mut c = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = c.stdin.take().unwrap();
        stdin.write_all(text_in.as_bytes()).unwrap();
    }
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics on {what}:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn metrics_pass_promtool(lab: &Lab) {
    let gw = lab.gateway_metrics();
    assert!(gw.contains("stockade_gateway_packets_total"), "{gw}");
    promtool_check(&gw, "the gateway's metrics");
    for n in [1, 2] {
        let s = lab.service_metrics(n);
        assert!(s.contains("stockade_service_clamd_up 1"), "{s}");
        promtool_check(&s, &format!("service {n}'s metrics"));
    }
    for stock in [STOCK1, STOCK2] {
        let s = lab.stock_metrics(stock);
        assert!(s.contains("stockade_stock_pushes_total"), "{s}");
        promtool_check(&s, &format!("stock server {stock}'s metrics"));
    }
}

/// The Grafana dashboard's queries, with Grafana's variables replaced for an instant query.
fn dashboard_queries() -> Vec<(String, String)> {
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut v = vec![];
    for p in d["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let q = expr
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "15s")
                .replace("$__range", "1h");
            assert!(!q.contains('$'), "unhandled variable in {expr}");
            v.push((p["title"].as_str().unwrap().to_string(), q));
        }
    }
    assert!(v.len() >= 15, "{v:?}");
    v
}

fn prometheus_sees_everything(lab: &Lab) {
    let plane = &lab.plane;
    // Every target up, the stock servers scraped through the gateway.
    let t = lab.prometheus_api("targets", &[("state", "active")]);
    let targets = t["data"]["activeTargets"].as_array().unwrap();
    let mut jobs: Vec<&str> = targets
        .iter()
        .map(|t| t["labels"]["job"].as_str().unwrap())
        .collect();
    jobs.sort_unstable();
    assert_eq!(
        jobs,
        [
            "prometheus",
            "stockade-gateway",
            "stockade-service",
            "stockade-service",
            "stockade-stock",
            "stockade-stock"
        ],
        "{t}"
    );
    for t in targets {
        assert_eq!(t["health"], "up", "[{plane}] target down: {t}");
    }
    assert_eq!(lab.query_sum(r#"sum(up{job=~"stockade-.*"})"#), 5.0);

    // What the flows did, as Prometheus scraped it (bounded wait for a scrape).
    let start = Instant::now();
    loop {
        let pushes = lab.query_sum(r#"sum(stockade_stock_pushes_total{result="ok"})"#);
        let stored = lab.query_sum(r#"sum(stockade_service_uploads_total{result="stored"})"#);
        let virus = lab.query_sum(
            r#"sum(stockade_service_review_decisions_total{check="virus",result!="pass"})"#,
        );
        let reloads = lab.query_sum(r#"sum(stockade_gateway_rules_reloads_total{result="ok"})"#);
        if pushes >= 2.0 && stored >= 4.0 && virus >= 1.0 && reloads >= 2.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "[{plane}] Prometheus does not show the flows: pushes {pushes}, stored {stored}, virus refusals {virus}, reloads {reloads}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Every dashboard query evaluates, and every metric it names exists.
    let names = lab.prometheus_api("label/__name__/values", &[]);
    let names: Vec<&str> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    for (title, q) in dashboard_queries() {
        let data = lab.query(&q);
        assert!(data["resultType"].is_string(), "{title}: {q}: {data}");
        for word in q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("stockade_") {
                assert!(
                    names.contains(&word),
                    "[{plane}] panel {title:?}: Prometheus has no metric {word}"
                );
            }
        }
        if !q.contains("drop") && !q.contains("revoked") {
            assert!(
                !data["result"].as_array().unwrap().is_empty(),
                "[{plane}] panel {title:?}: {q} returned nothing"
            );
        }
    }

    // The alert rules of monitoring/alerts.yml are loaded and evaluate cleanly; none fires on
    // a healthy lab.
    let start = Instant::now();
    loop {
        let r = lab.prometheus_api("rules", &[("type", "alert")]);
        let rules: Vec<&serde_json::Value> = r["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        assert!(rules.len() >= 6, "[{plane}] alert rules not loaded: {r}");
        for want in [
            "StockadeGatewayDown",
            "StockadeRulesReloadFailed",
            "StockadeConntrackNearlyFull",
            "StockadeClamdDown",
            "StockadePushFailures",
        ] {
            assert!(
                rules.iter().any(|x| x["name"] == want),
                "{want} missing: {r}"
            );
        }
        if rules.iter().all(|x| x["health"] == "ok") {
            let firing: Vec<&&serde_json::Value> =
                rules.iter().filter(|x| x["state"] == "firing").collect();
            assert!(firing.is_empty(), "[{plane}] alerts firing: {firing:?}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "[{plane}] alert rules not all evaluated ok: {r}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

// ---------------------------------------------------------------------------------------------
// Down

fn down_leaves_nothing(lab: &Lab) {
    let mut pids = lab.ns_pids();
    pids.extend(lab.daemon_pids().values());
    assert!(pids.len() >= 8, "{pids:?}");
    let out = ok(
        &lab.run(&["down"], Duration::from_secs(120)),
        &format!("[{}] down", lab.plane),
    );
    assert!(out.contains("is down"), "{out}");
    assert!(lab.namespaces().is_empty(), "left: {:?}", lab.namespaces());
    assert!(lab.root_links().is_empty(), "left: {:?}", lab.root_links());
    for p in &pids {
        assert!(!alive(*p), "process {p} still runs after down");
    }
    let addrs = Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .unwrap();
    assert!(
        !text(&addrs.stdout).contains(&format!("{}-", lab.prefix)),
        "{}",
        text(&addrs.stdout)
    );
    if have("nft") {
        let nft = Command::new("nft")
            .args(["list", "tables"])
            .output()
            .unwrap();
        assert!(
            !text(&nft.stdout).contains(&lab.prefix),
            "nft tables left in the root namespace: {}",
            text(&nft.stdout)
        );
    }
    let again = ok(&lab.run(&["down"], Duration::from_secs(60)), "second down");
    assert!(again.contains("nothing to remove"), "{again}");
}
