//! The lab for real (root required: network namespaces): `up` → the demo → `status` → `down`,
//! and `down` after an `up` that was killed half-way. Each test uses its own prefix and state
//! directory, and a Drop guard runs `down` even when an assertion fails. Every wait is bounded.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`), clamd, iproute2 and
//! ethtool; Prometheus is checked when installed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const LAB: &str = env!("CARGO_BIN_EXE_stockade-lab");

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether a root-only test can run. In CI (`CI=true`, root) one that cannot is a failure,
/// never a silent pass; elsewhere it says SKIPPED (scripts/test.sh counts those).
fn can_run_as_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{test} needs root: CI runs as root"
    );
    println!("SKIPPED: {test}: needs root (network namespaces)");
    false
}

/// A lab with a unique prefix; `down` on drop.
struct Guard {
    prefix: String,
    dir: tempfile::TempDir,
}

impl Guard {
    fn new(tag: &str) -> Self {
        // ≤ 12 characters: the root link is `<prefix>-mg`.
        let prefix = format!("t{tag}{}", std::process::id() % 100_000);
        let dir = tempfile::Builder::new()
            .prefix("stockade-lab-test-")
            .tempdir()
            .unwrap();
        Guard { prefix, dir }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(LAB);
        c.arg("--prefix")
            .arg(&self.prefix)
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str], timeout: Duration) -> Output {
        run_bounded(self.cmd(args), timeout)
    }

    fn namespaces(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .map(str::to_string)
            .collect()
    }

    fn root_link_exists(&self) -> bool {
        Command::new("ip")
            .args(["link", "show", "dev", &format!("{}-mg", self.prefix)])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    fn in_ns(&self, host: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &format!("{}-{host}", self.prefix)])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?} in {host}: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
    }

    fn assert_nothing_left(&self, pids: &[i32]) {
        assert!(
            self.namespaces().is_empty(),
            "left: {:?}",
            self.namespaces()
        );
        assert!(!self.root_link_exists(), "root link left");
        for p in pids {
            assert!(!alive(*p), "process {p} still runs");
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let out = self.run(&["down"], Duration::from_secs(120));
        if !out.status.success() {
            eprintln!("cleanup down failed: {}", text(&out.stderr));
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// Runs a command, killing it after `timeout` (output goes through files: no pipe can block).
fn run_bounded(mut cmd: Command, timeout: Duration) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (o, e) = (dir.path().join("out"), dir.path().join("err"));
    cmd.stdout(std::fs::File::create(&o).unwrap())
        .stderr(std::fs::File::create(&e).unwrap());
    let mut child = cmd.spawn().unwrap();
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
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: std::fs::read(&o).unwrap(),
        stderr: std::fs::read(&e).unwrap(),
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next().map(str::to_string))
        })
        .is_some_and(|st| st != "Z" && st != "X")
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?})\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn same(a: &Path, b: &Path) {
    assert_eq!(
        std::fs::read(a).unwrap(),
        std::fs::read(b).unwrap(),
        "{} differs from {}",
        b.display(),
        a.display()
    );
}

#[test]
fn up_demo_status_down_userspace() {
    full_story("a", "userspace");
}

#[test]
fn up_demo_status_down_nftables() {
    full_story("n", "nftables");
}

fn full_story(tag: &str, plane: &str) {
    if !can_run_as_root(&format!("up_demo_status_down_{plane}")) {
        return;
    }
    let lab = Guard::new(tag);
    let up = lab.run(&["up", "--dataplane", plane], Duration::from_secs(240));
    let up_out = ok(&up, "up");
    assert!(up_out.contains("is up"), "{up_out}");
    assert!(up_out.contains(&format!("({plane} plane)")), "{up_out}");

    // Up twice: a clear error, and the running lab is untouched.
    let again = lab.run(&["up"], Duration::from_secs(60));
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already up"),
        "{}",
        text(&again.stderr)
    );

    // The wiring the patent and DESIGN.md ask for.
    for ns in lab.namespaces() {
        let host = ns.strip_prefix(&format!("{}-", lab.prefix)).unwrap();
        assert_eq!(
            lab.in_ns(host, &["sysctl", "-n", "net.ipv4.ip_forward"])
                .trim(),
            "0",
            "forwarding on in {ns}"
        );
    }
    assert_eq!(lab.namespaces().len(), 11);
    for port in ["outside", "inside"] {
        let addrs = lab.in_ns("gateway", &["ip", "-o", "addr", "show", "dev", port]);
        assert!(addrs.trim().is_empty(), "{port} has addresses: {addrs}");
        let v6 = lab.in_ns(
            "gateway",
            &[
                "sysctl",
                "-n",
                &format!("net.ipv6.conf.{port}.disable_ipv6"),
            ],
        );
        assert_eq!(v6.trim(), "1");
    }
    for stock in ["stock1", "stock2"] {
        let links = lab.in_ns(stock, &["ip", "-o", "link", "show"]);
        let names: Vec<&str> = links
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or(""))
            .collect();
        assert_eq!(names, ["lo", "data"], "{stock} has {names:?}");
    }
    let client_mac = lab.in_ns("client1", &["cat", "/sys/class/net/data/address"]);
    assert_eq!(client_mac.trim(), "02:00:c6:33:64:65");
    let offload = lab.in_ns("service1", &["ethtool", "-k", "data"]);
    assert!(
        offload.contains("tx-checksumming: off"),
        "tx offload not off: {offload}"
    );

    // The story through the real gateway.
    let demo = lab.run(&["demo"], Duration::from_secs(420));
    let story = ok(&demo, "demo");
    for want in [
        "stored photo.png",
        "identical to the original",
        "client 2's copy is identical to the original",
        "refused: virus: Stockade.Test.Marker",
        "refused: corrupt",
        "TCP 198.51.100.50:7443 from 198.51.100.101: nothing came back",
        "UDP 198.51.100.51:9999 from 198.51.100.101: nothing came back",
        "drops no_rule +",
    ] {
        assert!(story.contains(want), "demo output lacks {want:?}:\n{story}");
    }
    assert!(
        !story.contains("stk1_") || story.contains("stk1_… (hidden"),
        "the demo printed a server password:\n{story}"
    );
    let d = lab.state().join("demo").join("1");
    same(
        &d.join("photo.png"),
        &d.join("client1").join("photo-back.png"),
    );
    same(&d.join("photo.png"), &d.join("client2").join("photo.png"));

    // The demo's own upload through `exec`, as a user would type it.
    let exec = lab.run(
        &[
            "exec",
            "client1",
            "--",
            "sh",
            "-c",
            "echo $STOCKADE_BIND $STOCKADE_SERVICE",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(
        ok(&exec, "exec").trim(),
        "198.51.100.101 https://198.51.100.110:8443"
    );
    let probe = lab.run(
        &[
            "exec",
            "client2",
            "--",
            LAB,
            "probe",
            "tcp",
            "198.51.100.51:7443",
            "--timeout",
            "2",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(
        probe.status.code(),
        Some(2),
        "client 2 reached a stock server"
    );

    // Status, as JSON.
    let status = ok(
        &lab.run(&["status", "--json"], Duration::from_secs(60)),
        "status",
    );
    let s: serde_json::Value = serde_json::from_str(&status).unwrap();
    let mut pids = vec![];
    for h in s["hosts"].as_array().unwrap() {
        assert_eq!(h["namespace_exists"], true, "{h}");
        for d in h["daemons"].as_array().unwrap() {
            assert_eq!(d["state"], "running", "{d}");
            pids.push(d["pid"].as_i64().unwrap() as i32);
        }
    }
    assert!(pids.len() >= 7, "{pids:?}");
    let gw = &s["gateway"];
    assert!(gw["error"].is_null(), "{gw}");
    assert!(gw["drops"]["no_rule"].as_f64().unwrap() >= 2.0, "{gw}");
    assert!(
        gw["forwarded_by_rule"]["stock-push-to-clients"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(
        gw["forwarded_by_rule"]["service-to-stock"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    if have("prometheus") {
        let p = &s["prometheus"];
        assert!(p["error"].is_null(), "{p}");
        let targets = p["targets"].as_array().unwrap();
        // prometheus, gateway, 2 services, 2 stock servers (over TLS through the gateway).
        assert_eq!(targets.len(), 6, "{p}");
        for t in targets {
            assert_eq!(t["health"], "up", "{t}");
        }
    }

    let down = ok(&lab.run(&["down"], Duration::from_secs(120)), "down");
    assert!(down.contains("is down"), "{down}");
    lab.assert_nothing_left(&pids);
    let twice = ok(&lab.run(&["down"], Duration::from_secs(60)), "second down");
    assert!(twice.contains("nothing to remove"), "{twice}");
}

#[test]
fn down_after_a_killed_up_leaves_nothing() {
    if !can_run_as_root("down_after_a_killed_up_leaves_nothing") {
        return;
    }
    let lab = Guard::new("b");
    let mut up = lab.cmd(&["up"]);
    up.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = up.spawn().unwrap();
    // Kill it once the namespaces exist and the gateway runs: namespaces, links, daemons and
    // pid files are all half there.
    let gateway_pid = lab.state().join("run").join("gateway.pid");
    let start = Instant::now();
    while !gateway_pid.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "up never started the gateway"
        );
        assert!(child.try_wait().unwrap().is_none(), "up ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let pids: Vec<i32> = std::fs::read_dir(lab.state().join("run"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    assert!(!pids.is_empty());
    assert!(!lab.namespaces().is_empty());

    // A crashed `up` is reported, not repeated over the remains.
    let again = lab.run(&["up"], Duration::from_secs(60));
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already up"),
        "{}",
        text(&again.stderr)
    );

    ok(&lab.run(&["down"], Duration::from_secs(120)), "down");
    lab.assert_nothing_left(&pids);
    ok(&lab.run(&["down"], Duration::from_secs(60)), "second down");
}

#[test]
fn failed_up_rolls_back() {
    if !can_run_as_root("failed_up_rolls_back") {
        return;
    }
    let lab = Guard::new("c");
    let rules = lab.dir.path().join("broken.yaml");
    std::fs::write(&rules, "rules: [this is not a rule\n").unwrap();
    let out = lab.run(
        &["up", "--no-prometheus", "--rules", rules.to_str().unwrap()],
        Duration::from_secs(240),
    );
    assert!(!out.status.success(), "up with broken rules succeeded");
    let err = text(&out.stderr);
    assert!(err.contains("gateway"), "{err}");
    let pids: Vec<i32> = std::fs::read_dir(lab.state().join("run"))
        .map(|d| {
            d.filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
                .filter_map(|t| t.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    lab.assert_nothing_left(&pids);
    // The gateway's refusal is in its log for the operator.
    let log = std::fs::read_to_string(lab.state().join("logs").join("gateway.log")).unwrap();
    assert!(!log.trim().is_empty());
}
