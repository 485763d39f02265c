//! Harness for the tests through the gateway: the real lab (`stockade-lab up`, network
//! namespaces, the real gateway and daemons, Prometheus) with a unique prefix and state
//! directory, torn down by `down` when dropped (also when a test fails). Every wait is bounded.
//!
//! Probes run inside the lab's hosts through `stockade-lab exec` with `netprobe.py` (TCP, UDP,
//! ICMP attempts that tell "nothing came back" from a reset or an ICMP error; raw frames with a
//! forged source; a capture on a host's interface).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{bin, text};

/// The probe script, written into each lab's test directory.
pub const NETPROBE: &str = include_str!("netprobe.py");

/// The lab's fixed MACs (DESIGN.md: `02:00` and the four bytes of the address).
pub fn mac_of(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

pub const CLIENT1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 101);
pub const CLIENT2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 220);
pub const SERVICE1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 110);
pub const SERVICE2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 111);
pub const MONITOR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
pub const STOCK1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 50);
pub const STOCK2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 51);

/// Runs a command, killing it after `timeout`; output goes through files, so no pipe can block.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (o, e) = (dir.path().join("out"), dir.path().join("err"));
    cmd.stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap())
        .stdin(Stdio::null());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} timed out after {timeout:?}\nstdout: {}\nstderr: {}",
                std::fs::read_to_string(&o).unwrap_or_default(),
                std::fs::read_to_string(&e).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(&o).unwrap(),
        stderr: std::fs::read(&e).unwrap(),
    }
}

/// Asserts success; returns stdout.
pub fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|st| st != "Z" && st != "X")
}

/// Sum of the samples of `name` whose labels include all of `labels` (Prometheus text format).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (n, l) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let have: Vec<(&str, &str)> = l
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        if labels.iter().all(|want| have.contains(want)) {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

/// One lab, up, with a unique prefix and state directory; `down` when dropped.
pub struct Lab {
    pub prefix: String,
    pub plane: String,
    pub dir: tempfile::TempDir,
    pub lab_bin: PathBuf,
    /// `up`'s wall time (it returns once Prometheus sees every target up).
    pub up_time: Duration,
    pub up_output: String,
}

impl Lab {
    /// `stockade-lab up --dataplane PLANE`; panics with `up`'s output if it fails (the guard
    /// still runs `down`).
    pub fn up(tag: &str, plane: &str) -> Lab {
        // ≤ 12 characters: the root link is `<prefix>-mg`.
        let prefix = format!("g{tag}{}", std::process::id() % 100_000);
        let dir = tempfile::Builder::new()
            .prefix("stockade-through-gateway-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("netprobe.py"), NETPROBE).unwrap();
        let mut lab = Lab {
            prefix,
            plane: plane.into(),
            dir,
            lab_bin: bin("stockade-lab"),
            up_time: Duration::ZERO,
            up_output: String::new(),
        };
        let start = Instant::now();
        let out = lab.run(&["up", "--dataplane", plane], Duration::from_secs(240));
        lab.up_time = start.elapsed();
        lab.up_output = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(
            out.status.success(),
            "`stockade-lab up --dataplane {plane}` failed ({:?}):\n{}",
            out.status.code(),
            lab.up_output
        );
        lab
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn netprobe(&self) -> PathBuf {
        self.dir.path().join("netprobe.py")
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.lab_bin);
        c.arg("--prefix")
            .arg(&self.prefix)
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str], timeout: Duration) -> Output {
        run_bounded(self.cmd(args), timeout)
    }

    /// `stockade-lab exec HOST -- CMD...` with extra environment (variables set here win over
    /// the lab's client defaults).
    pub fn exec_cmd(&self, host: &str, cmd: &[&str], env: &[(&str, String)]) -> Command {
        let mut c = self.cmd(&["exec", host, "--"]);
        c.args(cmd);
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    pub fn exec(
        &self,
        host: &str,
        cmd: &[&str],
        env: &[(&str, String)],
        timeout: Duration,
    ) -> Output {
        run_bounded(self.exec_cmd(host, cmd, env), timeout)
    }

    /// The lab's management address at `offset` of its /28 (gateway 1, monitor 2, service1 3,
    /// service2 4), from `lab.json`.
    pub fn mgmt(&self, offset: u8) -> Ipv4Addr {
        let st: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(self.state().join("lab.json")).unwrap())
                .unwrap();
        let net: Ipv4Addr = st["mgmt_net"].as_str().unwrap().parse().unwrap();
        let slot = st["mgmt_slot"].as_u64().unwrap() as u8;
        let o = net.octets();
        Ipv4Addr::new(o[0], o[1], o[2], slot * 16 + offset)
    }

    pub fn http_get(&self, url: &str) -> String {
        let c = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let r = c
            .get(url)
            .send()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert!(r.status().is_success(), "GET {url}: {}", r.status());
        r.text().unwrap()
    }

    pub fn gateway_metrics_url(&self) -> String {
        format!("http://{}:9464/metrics", self.mgmt(1))
    }

    pub fn gateway_metrics(&self) -> String {
        self.http_get(&self.gateway_metrics_url())
    }

    /// A service server's metrics (1 or 2), over the management link.
    pub fn service_metrics(&self, n: u8) -> String {
        self.http_get(&format!("http://{}:9101/metrics", self.mgmt(2 + n)))
    }

    /// A stock server's metrics, fetched by the monitoring host through the gateway (rule
    /// monitor-to-stock-metrics) with its client certificate, as Prometheus does.
    pub fn stock_metrics(&self, stock: Ipv4Addr) -> String {
        let pki = self.state().join("pki");
        let p = |f: &str| pki.join(f).display().to_string();
        let np = self.netprobe().display().to_string();
        let addr = stock.to_string();
        let out = self.exec(
            "monitor",
            &[
                "python3",
                &np,
                "https",
                "10",
                &addr,
                "9443",
                "/metrics",
                &p("ca.pem"),
                &p("monitor-client.pem"),
                &p("monitor-client.key"),
            ],
            &[],
            Duration::from_secs(30),
        );
        ok(
            &out,
            &format!("GET https://{stock}:9443/metrics from the monitor"),
        )
    }

    pub fn prometheus_url(&self) -> String {
        format!("http://{}:9090", self.mgmt(2))
    }

    /// `GET /api/v1/<path>` with query parameters; the parsed JSON (status checked by callers).
    pub fn prometheus_api(&self, path: &str, params: &[(&str, &str)]) -> serde_json::Value {
        let url = format!("{}/api/v1/{path}", self.prometheus_url());
        let c = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let r = c
            .get(&url)
            .query(params)
            .send()
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let body = r.text().unwrap();
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"))
    }

    /// An instant query; panics unless Prometheus answers `success`.
    pub fn query(&self, q: &str) -> serde_json::Value {
        let v = self.prometheus_api("query", &[("query", q)]);
        assert_eq!(v["status"], "success", "query {q}: {v}");
        v["data"].clone()
    }

    /// The sum of an instant query's vector values.
    pub fn query_sum(&self, q: &str) -> f64 {
        self.query(q)["result"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
            .sum()
    }

    /// Runs `netprobe.py probe` in a host; returns SPEC → outcome.
    pub fn probe_cmd(&self, host: &str, timeout_s: u32, specs: &[String]) -> Command {
        let np = self.netprobe().display().to_string();
        let t = timeout_s.to_string();
        let mut args: Vec<&str> = vec!["python3", &np, "probe", &t];
        args.extend(specs.iter().map(String::as_str));
        self.exec_cmd(host, &args, &[])
    }

    pub fn probe(&self, host: &str, timeout_s: u32, specs: &[String]) -> BTreeMap<String, String> {
        let out = run_bounded(
            self.probe_cmd(host, timeout_s, specs),
            Duration::from_secs(u64::from(timeout_s) + 30),
        );
        parse_probe(&ok(&out, &format!("probes from {host}")))
    }

    /// Every namespace of this lab that exists now.
    pub fn namespaces(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .map(str::to_string)
            .collect()
    }

    /// Interfaces of the root namespace that carry the prefix.
    pub fn root_links(&self) -> Vec<String> {
        let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
        text(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .collect()
    }

    /// Every process in the lab's namespaces.
    pub fn ns_pids(&self) -> Vec<i32> {
        let mut pids = vec![];
        for ns in self.namespaces() {
            let out = Command::new("ip")
                .args(["netns", "pids", &ns])
                .output()
                .unwrap();
            pids.extend(
                text(&out.stdout)
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
        pids
    }

    /// Replaces the lab's live copy of the rules as an editor does (temp file, rename).
    pub fn write_rules(&self, contents: &str) {
        let path = self.state().join("rules.yaml");
        let tmp = self.state().join("rules.yaml.edit");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    pub fn rules(&self) -> String {
        std::fs::read_to_string(self.state().join("rules.yaml")).unwrap()
    }

    /// The daemons' pids from `run/*.pid` (name → pid).
    pub fn daemon_pids(&self) -> BTreeMap<String, i32> {
        let mut m = BTreeMap::new();
        for e in std::fs::read_dir(self.state().join("run")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "pid") {
                if let Some(pid) = std::fs::read_to_string(&p)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                {
                    m.insert(p.file_stem().unwrap().to_string_lossy().to_string(), pid);
                }
            }
        }
        m
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = run_bounded(self.cmd(&["down"]), Duration::from_secs(120));
        if !out.status.success() {
            eprintln!("cleanup: down failed: {}", text(&out.stderr));
        }
    }
}

pub fn parse_probe(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// A capture of the IPv4 frames arriving on a host's interface (`netprobe.py sniff`).
pub struct Sniffer {
    child: Option<Child>,
    out: PathBuf,
    stop: PathBuf,
}

impl Sniffer {
    /// Starts a capture on `iface` in `host` (at most `max` long) and waits until it listens.
    pub fn start(lab: &Lab, host: &str, iface: &str, max: Duration) -> Sniffer {
        let tag = format!("{host}-{}", rand_tag());
        let out = lab.dir.path().join(format!("sniff-{tag}.out"));
        let stop = lab.dir.path().join(format!("sniff-{tag}.stop"));
        let np = lab.netprobe().display().to_string();
        let secs = max.as_secs().to_string();
        let stop_s = stop.display().to_string();
        let mut c = lab.exec_cmd(host, &["python3", &np, "sniff", iface, &secs, &stop_s], &[]);
        c.stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null());
        let child = c.spawn().unwrap();
        let s = Sniffer {
            child: Some(child),
            out,
            stop,
        };
        let start = Instant::now();
        while !std::fs::read_to_string(&s.out)
            .unwrap_or_default()
            .contains("ready")
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the capture in {host} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// Stops the capture; `{"by_mac": {MAC: n}, "by_src": {IP: n}}`.
    pub fn finish(mut self) -> serde_json::Value {
        std::fs::write(&self.stop, "").unwrap();
        let mut child = self.child.take().unwrap();
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the capture did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let t = std::fs::read_to_string(&self.out).unwrap();
        let json = t.lines().find(|l| l.starts_with('{')).unwrap_or_else(|| {
            panic!("capture printed no result: {t}");
        });
        serde_json::from_str(json).unwrap()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::fs::write(&self.stop, "");
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn rand_tag() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}", N.fetch_add(1, Ordering::SeqCst))
}

/// A host that is not in the topology, plugged into the outside switch with its own namespace
/// (`<prefix>-impostor`, so the lab's `down` would remove it too) and MAC; removed when dropped.
pub struct Impostor {
    pub ns: String,
    pub ip: Ipv4Addr,
    pub mac: String,
}

impl Impostor {
    pub fn plug(lab: &Lab, ip: Ipv4Addr) -> Impostor {
        let ns = lab.ns("impostor");
        let imp = Impostor {
            ns: ns.clone(),
            ip,
            mac: mac_of(ip),
        };
        let sw = lab.ns("sw-out");
        let ip_cmd = |args: &[&str]| {
            let out = run_bounded(
                {
                    let mut c = Command::new("ip");
                    c.args(args);
                    c
                },
                Duration::from_secs(20),
            );
            ok(&out, &format!("ip {args:?}"));
        };
        ip_cmd(&["netns", "add", &ns]);
        ip_cmd(&["-n", &ns, "link", "set", "lo", "up"]);
        for s in [
            "net.ipv4.ip_forward=0",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ] {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns, "sysctl", "-qw", s]);
            ok(&run_bounded(c, Duration::from_secs(20)), s);
        }
        ip_cmd(&[
            "-n", &ns, "link", "add", "name", "data", "type", "veth", "peer", "name", "impostor",
            "netns", &sw,
        ]);
        ip_cmd(&["-n", &ns, "link", "set", "data", "address", &imp.mac]);
        ip_cmd(&["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "data"]);
        ip_cmd(&["-n", &ns, "link", "set", "data", "up"]);
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns, "ethtool", "-K", "data", "tx", "off"]);
        ok(&run_bounded(c, Duration::from_secs(20)), "ethtool tx off");
        ip_cmd(&["-n", &sw, "link", "set", "impostor", "master", "br0", "up"]);
        imp
    }

    /// A static neighbour entry, so that frames go out without an ARP answer (the gateway
    /// drops ARP from unknown senders).
    pub fn neighbour(&self, ip: Ipv4Addr) {
        let mut c = Command::new("ip");
        c.args([
            "-n",
            &self.ns,
            "neigh",
            "replace",
            &ip.to_string(),
            "lladdr",
            &mac_of(ip),
            "dev",
            "data",
            "nud",
            "permanent",
        ]);
        ok(&run_bounded(c, Duration::from_secs(20)), "ip neigh replace");
    }

    /// A command inside the impostor's namespace.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).args(args);
        c
    }

    pub fn exists(&self) -> bool {
        Path::new("/run/netns").join(&self.ns).exists()
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the veth, and so the switch's end.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns])
            .stderr(Stdio::null())
            .status();
    }
}
