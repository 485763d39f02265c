//! End-to-end test of the userspace plane with real packets (needs root and iproute2/ethtool).
//!
//! Topology, all in namespaces named with a per-run prefix (`sgw<pid>-`), never the root one:
//!
//! ```text
//!  client (.101) ─┐
//!                 ├─ sw (bridge br0) ── outside ┤ gw: stockade-gateway ├ inside ── stock (.50)
//!  service (.110)─┘
//! ```
//!
//! The real binary runs in `gw`; the test drives traffic from threads that enter the other
//! namespaces (setns), and reads the gateway's real `/metrics` to assert the drop reasons.

use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_stockade-gateway");

const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 101);
const SERVICE4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 110);
const STOCK4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 50);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x101);
const SERVICE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x110);
const STOCK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x50);
/// The lab's fixed MACs: 02:00:c6:33:64:<last octet in hex> (DESIGN.md "Addresses").
const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x33, 0x64, 101];
const SERVICE_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x33, 0x64, 110];
const STOCK_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x33, 0x64, 50];

const STOCK_API: u16 = 7443;
const PUSH: u16 = 7137;
const UDP_PROBE: u16 = 9999;
const METRICS: &str = "127.0.0.1:9108";

/// How long a probe that must get nothing back waits.
const NOTHING_BACK: Duration = Duration::from_millis(1000);

fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------------------------
// Shell helpers
// ---------------------------------------------------------------------------------------------

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a thread that lives in network namespace `ns` (setns affects only that thread).
fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: setns(2) on a descriptor we own for the duration of the call; it changes only
        // the calling thread's network namespace, which is this short-lived thread's own.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
}

fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    in_ns(ns, f).join().expect("namespace thread panicked")
}

// ---------------------------------------------------------------------------------------------
// The lab: namespaces + the gateway process, torn down by Drop (also when a step panics)
// ---------------------------------------------------------------------------------------------

struct Lab {
    prefix: String,
    io: &'static str,
    dir: tempfile::TempDir,
    rules: PathBuf,
    ctl: PathBuf,
    gateway: Option<Child>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Lab {
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `io` selects the gateway's frame I/O; it also tags the namespaces, so both variants
    /// can run at once.
    fn new(io: &'static str) -> Lab {
        let prefix = format!("sgw{}{}-", std::process::id(), &io[..1]);
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab {
            rules: dir.path().join("rules.yaml"),
            ctl: dir.path().join("ctl.sock"),
            prefix,
            io,
            dir,
            gateway: None,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        lab.build();
        lab
    }

    fn build(&self) {
        let (sw, client, svc, stock, gw) = (
            self.ns("sw"),
            self.ns("client"),
            self.ns("svc"),
            self.ns("stock"),
            self.ns("gw"),
        );
        for ns in [&sw, &client, &svc, &stock, &gw] {
            sh(&["ip", "netns", "add", ns]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            // Nothing routes around the gateway; no DAD delays on the test's addresses.
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=0",
                "net.ipv6.conf.all.forwarding=0",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ]);
        }
        // The switch is a wire too: no IPv6 chatter of its own.
        sh(&[
            "ip",
            "netns",
            "exec",
            &sw,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ]);
        sh(&[
            "ip", "-n", &sw, "link", "add", "name", "br0", "type", "bridge",
        ]);
        sh(&["ip", "-n", &sw, "link", "set", "br0", "up"]);

        // Hosts on the outside segment: eth0 in the host, a port of br0 in the switch.
        for (ns, port, mac, v4, v6) in [
            (&client, "p-client", CLIENT_MAC, CLIENT4, CLIENT6),
            (&svc, "p-svc", SERVICE_MAC, SERVICE4, SERVICE6),
        ] {
            sh(&[
                "ip", "-n", ns, "link", "add", "name", "eth0", "type", "veth", "peer", "name",
                port, "netns", &sw,
            ]);
            self.host_if(ns, mac, v4, v6);
            sh(&["ip", "-n", &sw, "link", "set", port, "master", "br0", "up"]);
        }
        // The gateway's two ports: outside to the switch, inside straight to the stock server.
        sh(&[
            "ip", "-n", &gw, "link", "add", "name", "outside", "type", "veth", "peer", "name",
            "p-gw", "netns", &sw,
        ]);
        sh(&[
            "ip", "-n", &sw, "link", "set", "p-gw", "master", "br0", "up",
        ]);
        sh(&[
            "ip", "-n", &gw, "link", "add", "name", "inside", "type", "veth", "peer", "name",
            "eth0", "netns", &stock,
        ]);
        self.host_if(&stock, STOCK_MAC, STOCK4, STOCK6);
        // Separate v4 and v6 listeners on the same port.
        sh(&[
            "ip",
            "netns",
            "exec",
            &stock,
            "sysctl",
            "-qw",
            "net.ipv6.bindv6only=1",
        ]);
        // The client resolves the stock server statically, so its probes really leave the host
        // and reach the gateway whatever the gateway does with neighbour discovery.
        for addr in [
            STOCK4.to_string(),
            STOCK6.to_string(),
            self.stock_link_local().to_string(),
        ] {
            sh(&[
                "ip",
                "-n",
                &client,
                "neigh",
                "replace",
                &addr,
                "lladdr",
                &mac_str(STOCK_MAC),
                "dev",
                "eth0",
                "nud",
                "permanent",
            ]);
        }
    }

    fn host_if(&self, ns: &str, mac: [u8; 6], v4: Ipv4Addr, v6: Ipv6Addr) {
        sh(&[
            "ip",
            "-n",
            ns,
            "link",
            "set",
            "eth0",
            "address",
            &mac_str(mac),
        ]);
        // Without this every frame leaves with a partial checksum and is a `checksum` drop.
        sh(&[
            "ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso",
            "off",
        ]);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{v4}/24"),
            "dev",
            "eth0",
        ]);
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        sh(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
    }

    /// The stock server's EUI-64 link-local address (derived from its fixed MAC).
    fn stock_link_local(&self) -> Ipv6Addr {
        let m = STOCK_MAC;
        Ipv6Addr::new(
            0xfe80,
            0,
            0,
            0,
            u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
            u16::from_be_bytes([m[2], 0xff]),
            u16::from_be_bytes([0xfe, m[3]]),
            u16::from_be_bytes([m[4], m[5]]),
        )
    }

    fn start_gateway(&mut self) {
        let log = fs::File::create(self.dir.path().join("gateway.log")).unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns("gw"),
                BIN,
                "run",
                "--outside",
                "outside",
                "--inside",
                "inside",
            ])
            .arg("--rules")
            .arg(&self.rules)
            .args(["--io", self.io])
            .args(["--metrics", METRICS])
            .arg("--ctl")
            .arg(&self.ctl)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.gateway = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.gateway.as_mut().unwrap().try_wait().unwrap() {
                panic!("gateway exited early ({status}):\n{}", self.gateway_log());
            }
            if self.try_metrics().is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready in 15 s:\n{}",
                self.gateway_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn gateway_pid(&self) -> i32 {
        self.gateway.as_ref().expect("gateway running").id() as i32
    }

    fn gateway_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    fn try_metrics(&self) -> Option<String> {
        run_in(&self.ns("gw"), || {
            let addr: SocketAddr = METRICS.parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut body = String::new();
            s.read_to_string(&mut body).ok()?;
            let (head, body) = body.split_once("\r\n\r\n")?;
            head.starts_with("HTTP/1.1 200").then(|| body.to_string())
        })
    }

    fn metrics(&self) -> Metrics {
        Metrics::parse(&self.try_metrics().expect("GET /metrics"))
    }

    /// Polls /metrics until `cond` holds (bounded).
    fn wait_metrics(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&Metrics) -> bool,
    ) -> Metrics {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics();
            if cond(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; metrics:\n{}\nlog:\n{}",
                m.raw,
                self.gateway_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn gateway_cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN).args(args).output().unwrap()
    }

    /// Runs a background thread in `ns` until the lab stops.
    fn spawn_in(&mut self, ns: &str, f: impl FnOnce(Arc<AtomicBool>) + Send + 'static) {
        let stop = self.stop.clone();
        self.threads.push(in_ns(ns, move || f(stop)));
    }

    fn stop_gateway(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.gateway.take()?;
        // SAFETY: kill(2) with the pid of our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.gateway.take() {
            // SAFETY: kill(2) with the pid of our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- gateway log ----\n{}", self.gateway_log());
        }
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for ns in ["client", "svc", "stock", "gw", "sw"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(ns)])
                .status();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics parsing
// ---------------------------------------------------------------------------------------------

struct Metrics {
    raw: String,
    samples: HashMap<String, f64>,
}

impl Metrics {
    fn parse(raw: &str) -> Metrics {
        let samples = raw
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect();
        Metrics {
            raw: raw.to_string(),
            samples,
        }
    }

    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("metric {key} missing in:\n{}", self.raw))
    }

    fn drops(&self, reason: &str) -> f64 {
        self.get(&format!(
            "stockade_gateway_drops_total{{reason=\"{reason}\"}}"
        ))
    }

    fn reloads(&self, result: &str) -> f64 {
        self.get(&format!(
            "stockade_gateway_rules_reloads_total{{result=\"{result}\"}}"
        ))
    }

    fn all_drops(&self) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| k.starts_with("stockade_gateway_drops_total{"))
            .map(|(_, v)| v)
            .sum()
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic helpers
// ---------------------------------------------------------------------------------------------

/// What a sniffer on the stock server's interface saw arriving from elsewhere.
#[derive(Debug, Clone)]
struct Seen {
    src: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    payload: usize,
}

fn sniff(ifname: &'static str, seen: Arc<Mutex<Vec<Seen>>>, stop: Arc<AtomicBool>) {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == ifname)
        .expect("sniff iface");
    let cfg = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    let mut rx = match pnet_datalink::channel(&iface, cfg).expect("sniffer channel") {
        pnet_datalink::Channel::Ethernet(_, rx) => rx,
        _ => unreachable!(),
    };
    while !stop.load(Ordering::Relaxed) {
        let Ok(frame) = rx.next() else { continue };
        let Ok(p) = etherparse::SlicedPacket::from_ethernet(frame) else {
            continue;
        };
        let (src, proto) = match &p.net {
            Some(etherparse::NetSlice::Ipv4(v4)) => (
                IpAddr::V4(v4.header().source_addr()),
                v4.header().protocol().0,
            ),
            Some(etherparse::NetSlice::Ipv6(v6)) => (
                IpAddr::V6(v6.header().source_addr()),
                v6.payload().ip_number.0,
            ),
            _ => continue,
        };
        let (sport, dport, payload) = match &p.transport {
            Some(etherparse::TransportSlice::Tcp(t)) => {
                (t.source_port(), t.destination_port(), t.payload().len())
            }
            Some(etherparse::TransportSlice::Udp(u)) => {
                (u.source_port(), u.destination_port(), u.payload().len())
            }
            _ => (0, 0, 0),
        };
        seen.lock().unwrap().push(Seen {
            src,
            proto,
            sport,
            dport,
            payload,
        });
    }
}

/// Accepts connections and echoes what it reads (the stock API stand-in); records peers.
fn echo_server(addr: SocketAddr, accepted: Arc<Mutex<Vec<SocketAddr>>>, stop: Arc<AtomicBool>) {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    l.set_nonblocking(true).unwrap();
    while !stop.load(Ordering::Relaxed) {
        match l.accept() {
            Ok((mut s, peer)) => {
                accepted.lock().unwrap().push(peer);
                let stop = stop.clone();
                std::thread::spawn(move || {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    let mut buf = [0u8; 4096];
                    while !stop.load(Ordering::Relaxed) {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    ErrorKind::WouldBlock | ErrorKind::TimedOut
                                ) => {}
                            Err(_) => break,
                        }
                    }
                });
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Echoes UDP datagrams back; records senders.
fn udp_echo(addr: SocketAddr, got: Arc<Mutex<Vec<SocketAddr>>>, stop: Arc<AtomicBool>) {
    let s = UdpSocket::bind(addr).expect("bind udp echo");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, peer)) = s.recv_from(&mut buf) {
            got.lock().unwrap().push(peer);
            let _ = s.send_to(&buf[..n], peer);
        }
    }
}

/// Connects, sends a line and expects it echoed.
fn echo_roundtrip(to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"hello stock\n")?;
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf)?;
    assert_eq!(&buf, b"hello stock\n");
    Ok(s)
}

fn connect_gets_nothing(to: SocketAddr) {
    match TcpStream::connect_timeout(&to, NOTHING_BACK) {
        Ok(_) => panic!("TCP connect to {to} succeeded; the gateway must drop it"),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
            "TCP connect to {to}: expected silence (timeout), got {e} (something answered)"
        ),
    }
}

fn udp_gets_nothing(bind: SocketAddr, to: SocketAddr) {
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(NOTHING_BACK)).unwrap();
    s.send_to(b"probe", to).unwrap();
    let mut buf = [0u8; 64];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => panic!("UDP to {to}: got {n} bytes back from {from}"),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "UDP to {to}: expected silence, got {e}"
        ),
    }
}

/// Sends a hand-built Ethernet frame out of `ifname` (in the calling thread's namespace).
fn send_frame(ifname: &str, frame: &[u8], copies: usize) {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == ifname)
        .expect("iface");
    let mut tx = match pnet_datalink::channel(&iface, Default::default()).expect("channel") {
        pnet_datalink::Channel::Ethernet(tx, _) => tx,
        _ => unreachable!(),
    };
    for _ in 0..copies {
        tx.send_to(frame, None).expect("send").expect("send");
    }
}

/// An ICMP(v6) echo request from the client, and whether an echo reply came back in time.
fn ping_gets_nothing(dst: IpAddr, id: u16) {
    let b = etherparse::PacketBuilder::ethernet2(CLIENT_MAC, STOCK_MAC);
    let mut frame = Vec::new();
    match dst {
        IpAddr::V4(d) => b
            .ipv4(CLIENT4.octets(), d.octets(), 64)
            .icmpv4_echo_request(id, 1)
            .write(&mut frame, b"ping")
            .unwrap(),
        IpAddr::V6(d) => {
            let src = if d.segments()[0] == 0xfe80 {
                client_link_local()
            } else {
                CLIENT6
            };
            b.ipv6(src.octets(), d.octets(), 64)
                .icmpv6_echo_request(id, 1)
                .write(&mut frame, b"ping")
                .unwrap()
        }
    }
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == "eth0")
        .expect("iface");
    let cfg = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(50)),
        ..Default::default()
    };
    let (mut tx, mut rx) = match pnet_datalink::channel(&iface, cfg).expect("channel") {
        pnet_datalink::Channel::Ethernet(tx, rx) => (tx, rx),
        _ => unreachable!(),
    };
    tx.send_to(&frame, None).expect("send").expect("send");
    let deadline = Instant::now() + NOTHING_BACK;
    while Instant::now() < deadline {
        let Ok(f) = rx.next() else { continue };
        let Ok(p) = etherparse::SlicedPacket::from_ethernet(f) else {
            continue;
        };
        let reply = match &p.transport {
            Some(etherparse::TransportSlice::Icmpv4(i)) => {
                matches!(i.icmp_type(), etherparse::Icmpv4Type::EchoReply(e) if e.id == id)
            }
            Some(etherparse::TransportSlice::Icmpv6(i)) => {
                matches!(i.icmp_type(), etherparse::Icmpv6Type::EchoReply(e) if e.id == id)
            }
            _ => false,
        };
        assert!(!reply, "echo reply from {dst} came back");
    }
}

fn client_link_local() -> Ipv6Addr {
    let m = CLIENT_MAC;
    Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
        u16::from_be_bytes([m[2], 0xff]),
        u16::from_be_bytes([0xfe, m[3]]),
        u16::from_be_bytes([m[4], m[5]]),
    )
}

fn ifindex(name: &str) -> u32 {
    pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .expect("iface")
        .index
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

fn write_rules(path: &Path, yaml: &str) {
    // Replace the file the way editors do (write a temp file, rename over), so the gateway's
    // directory watch sees one complete new file.
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, yaml).unwrap();
    fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The rules the test runs with (the lab policy of rules/default.yaml, trimmed to the test hosts)
// ---------------------------------------------------------------------------------------------

fn rules_yaml(stock_ll: Ipv6Addr, with_service: bool) -> String {
    let service_rule = if with_service {
        "  - name: service_to_stock\n    direction: inbound\n    protocol: tcp\n    src: [service]\n    \
         dst: [stock]\n    dst_ports: [7443]\n    action: accept\n    \
         comment: the service server may open connections to the stock API (firewall 45)\n"
    } else {
        ""
    };
    format!(
        "settings:\n  inside_sources: [stock]\n  conntrack_limit: 4096\n\
         sets:\n  service: [198.51.100.110, \"2001:db8::110\"]\n  \
         stock: [198.51.100.50, \"2001:db8::50\", \"{stock_ll}\"]\n  \
         clients: [198.51.100.101, \"2001:db8::101\"]\n\
         pins:\n  198.51.100.110: \"{svc}\"\n  \"2001:db8::110\": \"{svc}\"\n\
         rules:\n{service_rule}  \
         - name: push\n    direction: outbound\n    protocol: tcp\n    src: [stock]\n    dst: [clients]\n    \
         dst_ports: [7137]\n    action: accept\n    one_way: true\n    \
         comment: claim 1 - the stock server pushes, the client may only acknowledge\n",
        svc = mac_str(SERVICE_MAC),
    )
}

// ---------------------------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------------------------

#[test]
fn firewall45_end_to_end_batched_io() {
    firewall45_end_to_end("batched");
}

#[test]
fn firewall45_end_to_end_ring_io() {
    firewall45_end_to_end("ring");
}

#[test]
fn firewall45_end_to_end_pnet_io() {
    firewall45_end_to_end("pnet");
}

fn firewall45_end_to_end(io: &'static str) {
    if !is_root() {
        eprintln!("firewall45_end_to_end({io}): SKIPPED, needs root (network namespaces)");
        return;
    }
    let started = Instant::now();
    let mut lab = Lab::new(io);
    let stock_ll = lab.stock_link_local();
    let ns_client = lab.ns("client");
    let ns_svc = lab.ns("svc");
    let ns_stock = lab.ns("stock");

    // A rules file that does not parse: the gateway refuses to start (fails closed).
    fs::write(&lab.rules, "settings:\n  inside_sources: [stock\n").unwrap();
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.ns("gw"),
            BIN,
            "run",
            "--outside",
            "outside",
            "--inside",
            "inside",
        ])
        .arg("--rules")
        .arg(&lab.rules)
        .args(["--metrics", METRICS])
        .arg("--ctl")
        .arg(&lab.ctl)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "gateway started with an invalid rules file"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rules.yaml"),
        "error should name the file: {err}"
    );

    write_rules(&lab.rules, &rules_yaml(stock_ll, true));
    let check = lab.gateway_cli(&["check", lab.rules.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "check on the test rules: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    // Stock-side stand-ins: the stock API (TCP echo, v4 and v6), a UDP echo, a sniffer.
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let udp_got = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    for addr in [
        SocketAddr::new(STOCK4.into(), STOCK_API),
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), STOCK_API),
    ] {
        let a = accepted.clone();
        lab.spawn_in(&ns_stock, move |stop| echo_server(addr, a, stop));
    }
    for addr in [
        SocketAddr::new(STOCK4.into(), UDP_PROBE),
        SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), UDP_PROBE),
    ] {
        let g = udp_got.clone();
        lab.spawn_in(&ns_stock, move |stop| udp_echo(addr, g, stop));
    }
    {
        let s = seen.clone();
        lab.spawn_in(&ns_stock, move |stop| sniff("eth0", s, stop));
    }

    lab.start_gateway();
    // `run` prepared its ports: no address at all, promiscuous, receive offloads off.
    for port in ["outside", "inside"] {
        let out = Command::new("ip")
            .args(["-n", &lab.ns("gw"), "addr", "show", "dev", port])
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            !shown.contains("inet"),
            "port {port} carries an address:\n{shown}"
        );
        assert!(
            shown.contains("PROMISC"),
            "port {port} not promiscuous:\n{shown}"
        );
        let out = Command::new("ip")
            .args(["netns", "exec", &lab.ns("gw"), "ethtool", "-k", port])
            .output()
            .unwrap();
        let features = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            features.contains("generic-receive-offload: off"),
            "{port}: {features}"
        );
    }
    let m0 = lab.metrics();
    assert_eq!(m0.get("stockade_gateway_rules_loaded"), 2.0);
    assert_eq!(m0.get("stockade_gateway_conntrack_limit"), 4096.0);

    // 1. The service server reaches the stock API (v4 and v6); keep one connection pooled.
    let mut pooled = run_in(&ns_svc, || {
        echo_roundtrip(
            SocketAddr::new(STOCK4.into(), STOCK_API),
            Duration::from_secs(5),
        )
    })
    .expect("service -> stock:7443 over IPv4 must work");
    run_in(&ns_svc, || {
        echo_roundtrip(
            SocketAddr::new(STOCK6.into(), STOCK_API),
            Duration::from_secs(5),
        )
    })
    .expect("service -> [2001:db8::50]:7443 must work");

    // The control socket is root-only and lists the service's flow.
    let mode = fs::metadata(&lab.ctl)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()))
        .unwrap();
    assert_eq!(mode & 0o777, 0o600, "control socket mode");
    let list = lab.gateway_cli(&["conntrack", "list", "--ctl", lab.ctl.to_str().unwrap()]);
    assert!(
        list.status.success(),
        "conntrack list: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    let list = String::from_utf8_lossy(&list.stdout).into_owned();
    assert!(
        list.lines()
            .any(|l| l.contains("198.51.100.110") && l.contains("7443")),
        "flows:\n{list}"
    );

    // 2. A client's TCP, UDP and ICMP to the stock server get nothing back, and never reach it.
    let before = lab.metrics();
    run_in(&ns_client, || {
        connect_gets_nothing(SocketAddr::new(STOCK4.into(), STOCK_API));
        udp_gets_nothing(
            SocketAddr::new(CLIENT4.into(), 0),
            SocketAddr::new(STOCK4.into(), UDP_PROBE),
        );
        ping_gets_nothing(STOCK4.into(), 0x4d01);
    });
    // 3. ... nor over IPv6, to the global and the link-local address.
    run_in(&ns_client, move || {
        let scope = ifindex("eth0");
        for dst in [
            SocketAddr::new(STOCK6.into(), STOCK_API),
            SocketAddr::V6(SocketAddrV6::new(stock_ll, STOCK_API, 0, scope)),
        ] {
            connect_gets_nothing(dst);
        }
        udp_gets_nothing(
            SocketAddr::new(CLIENT6.into(), 0),
            SocketAddr::new(STOCK6.into(), UDP_PROBE),
        );
        udp_gets_nothing(
            SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, scope)),
            SocketAddr::V6(SocketAddrV6::new(stock_ll, UDP_PROBE, 0, scope)),
        );
        ping_gets_nothing(STOCK6.into(), 0x6d01);
        ping_gets_nothing(stock_ll.into(), 0x6d02);
    });
    let after = lab.metrics();
    let client_reached_stock: Vec<Seen> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| {
            s.src == IpAddr::from(CLIENT4)
                || s.src == IpAddr::from(CLIENT6)
                || s.src == IpAddr::from(client_link_local())
        })
        .filter(|s| s.proto != 58 || s.sport != 0) // ICMPv6 neighbour discovery may pass
        .cloned()
        .collect();
    assert!(
        client_reached_stock.is_empty(),
        "client traffic reached the stock server: {client_reached_stock:?}"
    );
    assert!(accepted
        .lock()
        .unwrap()
        .iter()
        .all(|p| p.ip() != IpAddr::from(CLIENT4) && p.ip() != IpAddr::from(CLIENT6)));
    assert!(
        udp_got.lock().unwrap().is_empty(),
        "UDP reached the stock server: {:?}",
        udp_got.lock().unwrap()
    );
    // 9 probes (TCP retransmits SYNs, so at least that many drops), all counted as no_rule.
    assert!(
        after.drops("no_rule") - before.drops("no_rule") >= 9.0,
        "no_rule drops {} -> {}",
        before.drops("no_rule"),
        after.drops("no_rule")
    );

    // 4. A client sending as the service's address (with its own MAC) is `spoofed`.
    let before = lab.metrics();
    run_in(&ns_client, || {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2(CLIENT_MAC, STOCK_MAC)
            .ipv4(SERVICE4.octets(), STOCK4.octets(), 64)
            .tcp(40123, STOCK_API, 1, 64240)
            .syn()
            .write(&mut frame, &[])
            .unwrap();
        // A small flood: every frame is counted, but the drop log stays rate-limited.
        send_frame("eth0", &frame, 2000);
    });
    let after = lab.wait_metrics("spoofed drops", Duration::from_secs(5), |m| {
        m.drops("spoofed") >= before.drops("spoofed") + 100.0
    });
    let log = lab.gateway_log();
    let spoof_lines = log
        .lines()
        .filter(|l| l.contains("spoofed") && l.contains("198.51.100.110"))
        .count();
    assert!(
        (1..=20).contains(&spoof_lines),
        "drop log must name the spoofed 5-tuple and stay rate-limited ({spoof_lines} lines for {} drops):\n{log}",
        after.drops("spoofed") - before.drops("spoofed")
    );
    assert_eq!(
        after.drops("no_rule"),
        before.drops("no_rule"),
        "the spoofed SYN must count as spoofed only"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !seen.lock().unwrap().iter().any(|s| s.sport == 40123),
        "the spoofed SYN reached the stock server"
    );

    // 5. The push: the stock server connects out to the client's port 7137 and streams; the
    //    client's ACKs pass (2 MiB cannot arrive without them), its data is dropped as one_way.
    let before = lab.metrics();
    // Bound before the stock server connects (a socket keeps its namespace when it moves
    // to another thread).
    let l = run_in(&ns_client, || {
        TcpListener::bind(SocketAddr::new(CLIENT4.into(), PUSH)).unwrap()
    });
    let client_listener = std::thread::spawn(move || {
        l.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("client accept: {e}"),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = vec![0u8; 2 << 20];
        s.read_exact(&mut got)
            .expect("the whole push must arrive (ACKs pass)");
        assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
        s.write_all(b"client data the stock server must never see")
            .unwrap();
        s
    });
    let stock_side = run_in(&ns_stock, || {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::new(CLIENT4.into(), PUSH),
            Duration::from_secs(5),
        )
        .expect("stock -> client:7137 (push) must connect");
        let data: Vec<u8> = (0..(2usize << 20)).map(|i| (i % 251) as u8).collect();
        s.write_all(&data).unwrap();
        s
    });
    let _client_conn = client_listener.join().expect("client side of the push");
    let mut stock_side = stock_side;
    stock_side
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 64];
    match stock_side.read(&mut buf) {
        Ok(n) => panic!("the stock server read {n} bytes of client data on a one_way connection"),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "{e}"
        ),
    }
    let after = lab.metrics();
    assert!(
        after.drops("one_way") > before.drops("one_way"),
        "client data must count as one_way"
    );
    assert!(
        !seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.src == IpAddr::from(CLIENT4) && s.dport == PUSH && s.payload > 0),
        "client payload reached the stock server"
    );
    assert!(
        after.get("stockade_gateway_packets_total{action=\"forward\",direction=\"inbound\",rule=\"push\"}") > 100.0,
        "the client's ACKs must be forwarded under the push rule"
    );

    // 6. conntrack flush --src removes the push flow.
    let flush = lab.gateway_cli(&[
        "conntrack",
        "flush",
        "--src",
        "198.51.100.50/32",
        "--ctl",
        lab.ctl.to_str().unwrap(),
    ]);
    let flush_out = String::from_utf8_lossy(&flush.stdout).into_owned();
    assert!(
        flush.status.success() && !flush_out.contains("flushed 0"),
        "flush: {flush_out}"
    );

    // 7. An invalid edit is refused (counted, logged) and the old rules stay: the service
    //    still connects.
    write_rules(
        &lab.rules,
        "settings:\n  inside_sources: [stock]\nrules:\n  - name: broken\n    direction: sideways\n",
    );
    let m = lab.wait_metrics("reload error", Duration::from_secs(5), |m| {
        m.reloads("error") >= 1.0
    });
    assert_eq!(m.reloads("ok"), 0.0);
    assert_eq!(m.get("stockade_gateway_rules_loaded"), 2.0);
    run_in(&ns_svc, || {
        echo_roundtrip(
            SocketAddr::new(STOCK4.into(), STOCK_API),
            Duration::from_secs(3),
        )
    })
    .expect("after an invalid edit the old rules stay in force");
    assert!(
        lab.gateway_log().contains("sideways"),
        "the exact error must be logged:\n{}",
        lab.gateway_log()
    );

    // 8. An edit that removes the service is applied live: new connections stop and the pooled
    //    one is revoked.
    write_rules(&lab.rules, &rules_yaml(stock_ll, false));
    let m = lab.wait_metrics("reload ok", Duration::from_secs(5), |m| {
        m.reloads("ok") >= 1.0
    });
    assert_eq!(m.get("stockade_gateway_rules_loaded"), 1.0);
    assert!(
        m.get("stockade_gateway_flows_revoked_total") >= 1.0,
        "the service's flows must be revoked"
    );
    run_in(&ns_svc, || {
        connect_gets_nothing(SocketAddr::new(STOCK4.into(), STOCK_API))
    });
    pooled.set_read_timeout(Some(NOTHING_BACK)).unwrap();
    pooled.write_all(b"hello stock\n").unwrap();
    let mut buf = [0u8; 12];
    assert!(
        pooled.read_exact(&mut buf).is_err(),
        "a revoked pooled connection must not get answers"
    );

    // 9. SIGHUP reloads too.
    // SAFETY: kill(2) with the pid of our own child process.
    unsafe { libc::kill(lab.gateway_pid(), libc::SIGHUP) };
    lab.wait_metrics("SIGHUP reload", Duration::from_secs(5), |m| {
        m.reloads("ok") >= 2.0
    });

    // 10. The real exposition passes promtool, and every drop reason is present.
    let raw = lab.try_metrics().unwrap();
    let file = lab.dir.path().join("metrics.txt");
    fs::write(&file, &raw).unwrap();
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(fs::File::open(&file).unwrap())
        .output()
        .expect("promtool (Debian package `prometheus`) must be installed");
    assert!(
        promtool.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&promtool.stdout),
        String::from_utf8_lossy(&promtool.stderr)
    );
    let m = Metrics::parse(&raw);
    for reason in [
        "no_rule",
        "spoofed",
        "invalid_state",
        "malformed",
        "fragment",
        "conntrack_full",
        "non_ip",
        "arp_unknown",
        "one_way",
        "checksum",
        "kernel_other",
    ] {
        m.drops(reason);
    }
    assert_eq!(
        m.drops("checksum"),
        0.0,
        "test traffic has valid checksums (tx offload is off)"
    );
    assert!(m.all_drops() > 0.0);
    assert!(!raw.contains("198.51.100"), "labels never carry addresses");

    // 11. SIGTERM: the gateway stops forwarding and exits cleanly; afterwards nothing crosses
    //     (the push, admitted a moment ago, no longer connects).
    let status = lab
        .stop_gateway(Duration::from_secs(5))
        .expect("gateway must exit within 5 s of SIGTERM");
    assert!(
        status.success(),
        "gateway exit status {status}:\n{}",
        lab.gateway_log()
    );
    assert!(
        !lab.ctl.exists(),
        "the control socket is removed on shutdown"
    );
    let l = run_in(&ns_client, || {
        TcpListener::bind(SocketAddr::new(CLIENT4.into(), PUSH)).unwrap()
    });
    let l = std::thread::spawn(move || {
        l.set_nonblocking(true).unwrap();
        std::thread::sleep(NOTHING_BACK + Duration::from_millis(300));
        l.accept().is_ok()
    });
    run_in(&ns_stock, || {
        connect_gets_nothing(SocketAddr::new(CLIENT4.into(), PUSH))
    });
    assert!(!l.join().unwrap(), "a connection crossed a stopped gateway");

    eprintln!(
        "firewall45_end_to_end({io}): passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
