//! The end-to-end lab shared by the netns behaviour tests of both data planes (factored from
//! `netns.rs`, parameterised by the `run` arguments that select the plane).
//!
//! Topology, all in namespaces named with a per-run prefix (`sgw<pid><tag>-`), never the root one:
//!
//! ```text
//!  client (.101) ─┐
//!                 ├─ sw (bridge br0) ── outside ┤ gw: stockade-gateway ├ inside ── stock (.50)
//!  service (.110)─┘
//! ```
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_stockade-gateway");

pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 101);
pub const SERVICE4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 110);
pub const STOCK4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 50);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x101);
pub const SERVICE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x110);
pub const STOCK6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x50);
/// The lab's fixed MACs: 02:00:c6:33:64:<last octet in hex> (DESIGN.md "Addresses").
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x33, 0x64, 101];
pub const SERVICE_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x33, 0x64, 110];
pub const STOCK_MAC: [u8; 6] = [0x02, 0x00, 0xc6, 0x33, 0x64, 50];

pub const STOCK_API: u16 = 7443;
pub const PUSH: u16 = 7137;
pub const UDP_PROBE: u16 = 9999;
pub const METRICS: &str = "127.0.0.1:9108";

/// How long a probe that must get nothing back waits.
pub const NOTHING_BACK: Duration = Duration::from_millis(1000);

pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------------------------
// Shell helpers
// ---------------------------------------------------------------------------------------------

pub fn sh(args: &[&str]) {
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
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
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

pub fn run_in<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    in_ns(ns, f).join().expect("namespace thread panicked")
}

// ---------------------------------------------------------------------------------------------
// The lab: namespaces + the gateway process, torn down by Drop (also when a step panics)
// ---------------------------------------------------------------------------------------------

pub struct Lab {
    pub prefix: String,
    /// Extra `run` arguments selecting and configuring the data plane.
    pub plane_args: Vec<String>,
    pub dir: tempfile::TempDir,
    pub rules: PathBuf,
    pub ctl: PathBuf,
    pub gateway: Option<Child>,
    pub stop: Arc<AtomicBool>,
    pub threads: Vec<JoinHandle<()>>,
    /// A command the gateway runs under, inside its namespace (e.g. setpriv and a seccomp
    /// filter: the packaged unit's restrictions); empty: none.
    pub wrapper: Vec<std::ffi::OsString>,
}

impl Lab {
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `plane_args` select the data plane (e.g. `--dataplane nftables`); `tag` (a few
    /// letters) tags the namespaces, so several labs can run at once.
    pub fn new(tag: &str, plane_args: &[&str]) -> Lab {
        let prefix = format!("sgw{}{tag}-", std::process::id());
        let dir = tempfile::tempdir().unwrap();
        let lab = Lab {
            rules: dir.path().join("rules.yaml"),
            ctl: dir.path().join("ctl.sock"),
            prefix,
            plane_args: plane_args.iter().map(|s| s.to_string()).collect(),
            dir,
            gateway: None,
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            wrapper: Vec::new(),
        };
        lab.build();
        lab
    }

    pub fn build(&self) {
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

    pub fn host_if(&self, ns: &str, mac: [u8; 6], v4: Ipv4Addr, v6: Ipv6Addr) {
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
    pub fn stock_link_local(&self) -> Ipv6Addr {
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

    pub fn start_gateway(&mut self) {
        let log = fs::File::create(self.dir.path().join("gateway.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("gw")])
            .args(&self.wrapper)
            .args([BIN, "run", "--outside", "outside", "--inside", "inside"])
            .arg("--rules")
            .arg(&self.rules)
            .args(&self.plane_args)
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

    pub fn gateway_pid(&self) -> i32 {
        self.gateway.as_ref().expect("gateway running").id() as i32
    }

    pub fn gateway_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    pub fn try_metrics(&self) -> Option<String> {
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

    pub fn metrics(&self) -> Metrics {
        Metrics::parse(&self.try_metrics().expect("GET /metrics"))
    }

    /// Polls /metrics until `cond` holds (bounded).
    pub fn wait_metrics(
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

    pub fn gateway_cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN).args(args).output().unwrap()
    }

    /// Runs a background thread in `ns` until the lab stops.
    pub fn spawn_in(&mut self, ns: &str, f: impl FnOnce(Arc<AtomicBool>) + Send + 'static) {
        let stop = self.stop.clone();
        self.threads.push(in_ns(ns, move || f(stop)));
    }

    pub fn stop_gateway(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
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

pub struct Metrics {
    pub raw: String,
    pub samples: HashMap<String, f64>,
}

impl Metrics {
    pub fn parse(raw: &str) -> Metrics {
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

    pub fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("metric {key} missing in:\n{}", self.raw))
    }

    pub fn drops(&self, reason: &str) -> f64 {
        self.get(&format!(
            "stockade_gateway_drops_total{{reason=\"{reason}\"}}"
        ))
    }

    pub fn reloads(&self, result: &str) -> f64 {
        self.get(&format!(
            "stockade_gateway_rules_reloads_total{{result=\"{result}\"}}"
        ))
    }

    pub fn all_drops(&self) -> f64 {
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
pub struct Seen {
    pub src: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    pub payload: usize,
}

/// A raw Ethernet channel on `ifname` in the calling thread's namespace (the sockets keep that
/// namespace): receives wait at most 50 ms, with a 1 MiB buffer so bursts are not lost.
pub fn channel(
    ifname: &str,
) -> (
    Box<dyn pnet_datalink::DataLinkSender>,
    Box<dyn pnet_datalink::DataLinkReceiver>,
) {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == ifname)
        .unwrap_or_else(|| panic!("no interface {ifname}"));
    let cfg = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(50)),
        read_buffer_size: 1 << 20,
        ..Default::default()
    };
    match pnet_datalink::channel(&iface, cfg).expect("packet channel") {
        pnet_datalink::Channel::Ethernet(tx, rx) => (tx, rx),
        _ => unreachable!("pnet only makes Ethernet channels"),
    }
}

pub fn sniff(ifname: &'static str, seen: Arc<Mutex<Vec<Seen>>>, stop: Arc<AtomicBool>) {
    let (_, mut rx) = channel(ifname);
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
pub fn echo_server(addr: SocketAddr, accepted: Arc<Mutex<Vec<SocketAddr>>>, stop: Arc<AtomicBool>) {
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
pub fn udp_echo(addr: SocketAddr, got: Arc<Mutex<Vec<SocketAddr>>>, stop: Arc<AtomicBool>) {
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
pub fn echo_roundtrip(to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"hello stock\n")?;
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf)?;
    assert_eq!(&buf, b"hello stock\n");
    Ok(s)
}

pub fn connect_gets_nothing(to: SocketAddr) {
    match TcpStream::connect_timeout(&to, NOTHING_BACK) {
        Ok(_) => panic!("TCP connect to {to} succeeded; the gateway must drop it"),
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock),
            "TCP connect to {to}: expected silence (timeout), got {e} (something answered)"
        ),
    }
}

pub fn udp_gets_nothing(bind: SocketAddr, to: SocketAddr) {
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
pub fn send_frame(ifname: &str, frame: &[u8], copies: usize) {
    let (mut tx, _) = channel(ifname);
    for _ in 0..copies {
        tx.send_to(frame, None).expect("send").expect("send");
    }
}

/// An ICMP(v6) echo request from the client, and whether an echo reply came back in time.
pub fn ping_gets_nothing(dst: IpAddr, id: u16) {
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
    let (mut tx, mut rx) = channel("eth0");
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

pub fn client_link_local() -> Ipv6Addr {
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

pub fn ifindex(name: &str) -> u32 {
    pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .expect("iface")
        .index
}

/// A scratch namespace, deleted on drop (also when an assertion fails).
pub struct ScratchNs(pub String);

impl ScratchNs {
    pub fn new(tag: &str) -> Self {
        let name = format!("sgw{}{tag}-scratch", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        ScratchNs(name)
    }
}

impl Drop for ScratchNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

pub fn write_rules(path: &Path, yaml: &str) {
    // Replace the file the way editors do (write a temp file, rename over), so the gateway's
    // directory watch sees one complete new file.
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, yaml).unwrap();
    fs::rename(&tmp, path).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The rules the test runs with (the lab policy of rules/default.yaml, trimmed to the test hosts)
// ---------------------------------------------------------------------------------------------

pub fn rules_yaml(stock_ll: Ipv6Addr, with_service: bool) -> String {
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
