//! `stockade-lab demo`: the patent's whole story on the running lab, through the real gateway,
//! with readable output. Every step checks its outcome; a step that does not go as the patent
//! says stops the demo with an error (so the demo doubles as a smoke test).
//!
//! One story, two places: the lab's namespaces ([`LabHosts`]) or the Vagrant VMs
//! ([`crate::vm_hosts::VmHosts`], `stockade-lab vm-demo`). The story reaches its hosts only
//! through [`Hosts`]: a command on a host, a file put on or read from a host.
//!
//! Each run uses fresh client homes under a new `demo/<n>/` directory, so the demo can be run
//! again.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::lab::{self, Lab, LabState};
use crate::render::{VIRUS_MARKER, VIRUS_NAME};
use crate::topology::{self, Host, Mgmt};
use crate::{daemon, sh, LabError};

/// What the demo saw, for callers (the tests) to check beyond its own checks.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    pub dir: PathBuf,
    pub stored_on: String,
    pub client1_download: PathBuf,
    pub client2_download: PathBuf,
    pub service2_stored_on: String,
    pub virus_refusal: String,
    pub corrupt_refusal: String,
    pub direct_tcp: String,
    pub direct_udp: String,
    pub drops_before: BTreeMap<String, f64>,
    pub drops_after: BTreeMap<String, f64>,
    pub forwarded_before: f64,
    pub forwarded_after: f64,
}

/// Where the story's hosts are and how it reaches them.
pub trait Hosts {
    /// `program args` run on `host`, with `env`, in `dir` (a path on that host).
    fn command(
        &self,
        host: &Host,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        dir: &Path,
    ) -> Command;
    /// Writes a file on `host` (mode 0600), making its directory.
    fn put(&self, host: &Host, path: &Path, bytes: &[u8]) -> Result<(), LabError>;
    /// Reads a file on `host`.
    fn get(&self, host: &Host, path: &Path) -> Result<Vec<u8>, LabError>;
    /// Where a Stockade program is on the hosts.
    fn program(&self, name: &str) -> String;
    /// The CA certificate's path on the hosts.
    fn ca(&self) -> PathBuf;
    /// A service server's admin socket on its host.
    fn admin_socket(&self, service: &Host) -> PathBuf;
    /// The management link, which this machine joins (gateway metrics, Prometheus).
    fn mgmt(&self) -> Result<Mgmt, LabError>;
    /// One line saying where the story runs.
    fn title(&self) -> String;
    /// Whether something on `host` listens on TCP `port` (`ss`, run on that host).
    fn listening(&self, host: &Host, port: u16) -> bool {
        let filter = format!("sport = :{port}");
        let cmd = self.command(host, "ss", &["-Hltn".into(), filter], &[], Path::new("/"));
        sh::run_timeout(cmd, Duration::from_secs(30))
            .is_ok_and(|o| o.ok() && !o.stdout.trim().is_empty())
    }
}

/// The lab's hosts: network namespaces on this machine, sharing its file system.
pub struct LabHosts<'a> {
    lab: &'a Lab,
    st: LabState,
}

impl Hosts for LabHosts<'_> {
    fn command(
        &self,
        host: &Host,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        dir: &Path,
    ) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.names.ns(host.name)])
            .arg(program)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir);
        cmd
    }

    fn put(&self, _host: &Host, path: &Path, bytes: &[u8]) -> Result<(), LabError> {
        if let Some(d) = path.parent() {
            fs::create_dir_all(d)
                .map_err(|e| LabError::io(format!("creating {}", d.display()), e))?;
        }
        write_private(path, bytes)
    }

    fn get(&self, _host: &Host, path: &Path) -> Result<Vec<u8>, LabError> {
        fs::read(path).map_err(|e| LabError::io(format!("reading {}", path.display()), e))
    }

    fn program(&self, name: &str) -> String {
        if name == "stockade-lab" {
            if let Ok(me) = std::env::current_exe() {
                return me.display().to_string();
            }
        }
        self.st.bin_dir.join(name).display().to_string()
    }

    fn ca(&self) -> PathBuf {
        self.lab.layout().pki().join("ca.pem")
    }

    fn admin_socket(&self, service: &Host) -> PathBuf {
        self.lab.layout().admin_socket(service.name)
    }

    fn mgmt(&self) -> Result<Mgmt, LabError> {
        self.st.mgmt()
    }

    fn title(&self) -> String {
        format!(
            "Stockade lab {:?}: JP H11-73391 Fig. 1 / Fig. 12 through stockade-gateway ({} plane)",
            self.st.prefix,
            self.st.dataplane.as_str()
        )
    }
}

struct Demo<'a> {
    hosts: &'a dyn Hosts,
    /// This run's directory on this machine (the demo's own copies of what it made and got).
    local: PathBuf,
    /// The same directory's path on the hosts (the lab: the same directory).
    remote: PathBuf,
    out: &'a mut dyn std::io::Write,
    started: Instant,
}

/// A client home in this demo run, using one service server.
struct Client {
    host: Host,
    service: Host,
    /// On the client's host.
    home: PathBuf,
}

const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The story on the running lab.
pub fn run(lab: &Lab, out: &mut dyn std::io::Write) -> Result<DemoReport, LabError> {
    let st = lab.load_state()?;
    if st.phase != lab::Phase::Up {
        return Err(LabError::Invalid(
            "the lab did not finish `up`; run `stockade-lab down` and `up` again".into(),
        ));
    }
    let dir = next_run_dir(&st.state_dir.join("demo"))?;
    let hosts = LabHosts { lab, st };
    run_on(&hosts, dir.clone(), dir, out)
}

/// A new numbered directory under `root`.
pub fn next_run_dir(root: &Path) -> Result<PathBuf, LabError> {
    fs::create_dir_all(root).map_err(|e| LabError::io("creating the demo directory", e))?;
    let n = (1..)
        .find(|n| !root.join(n.to_string()).exists())
        .unwrap_or(1);
    let dir = root.join(n.to_string());
    fs::create_dir_all(&dir).map_err(|e| LabError::io("creating the demo directory", e))?;
    Ok(dir)
}

/// The story on any hosts: `local` is this run's directory here, `remote` its path on the hosts.
pub fn run_on(
    hosts: &dyn Hosts,
    local: PathBuf,
    remote: PathBuf,
    out: &mut dyn std::io::Write,
) -> Result<DemoReport, LabError> {
    let mut d = Demo {
        hosts,
        local,
        remote,
        out,
        started: Instant::now(),
    };
    d.story()
}

impl Demo<'_> {
    fn say(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
    }

    fn step(&mut self, title: &str) {
        let t = self.started.elapsed().as_secs_f32();
        let _ = writeln!(self.out, "\n== {title}  [{t:.1}s]");
    }

    fn indent(&mut self, text: &str) {
        for l in text.lines() {
            // The server password is a secret: the demo never prints it.
            let l = if let Some(rest) = l.strip_prefix("server password: ") {
                format!(
                    "server password: {}… (hidden by the demo)",
                    &rest[..rest.len().min(5)]
                )
            } else {
                l.to_string()
            };
            let _ = writeln!(self.out, "   | {l}");
        }
    }

    fn fail(&self, step: &str, detail: impl Into<String>) -> LabError {
        LabError::Demo {
            step: step.into(),
            detail: detail.into(),
        }
    }

    fn mgmt(&self) -> Result<Mgmt, LabError> {
        self.hosts.mgmt()
    }

    fn client(&self, host: Host, service: Host, tag: &str) -> Result<Client, LabError> {
        let home = self.remote.join(format!("{}{tag}", host.name));
        // Making a file makes the home (0700 where the hosts are remote).
        self.hosts.put(&host, &home.join(".demo"), b"")?;
        Ok(Client {
            host,
            service,
            home,
        })
    }

    /// Writes `bytes` as `name` in this run's directory here and on `host`; returns its path
    /// on the host.
    fn give(&self, host: &Host, name: &str, bytes: &[u8]) -> Result<PathBuf, LabError> {
        let local = self.local.join(name);
        fs::write(&local, bytes).map_err(|e| LabError::io(format!("writing {name}"), e))?;
        let remote = self.remote.join(name);
        if remote != local {
            self.hosts.put(host, &remote, bytes)?;
        }
        Ok(remote)
    }

    /// Reads a file a client wrote on its host; keeps a copy here.
    fn fetch(&self, c: &Client, path: &Path) -> Result<Vec<u8>, LabError> {
        let bytes = self.hosts.get(&c.host, path)?;
        let name = path
            .strip_prefix(&self.remote)
            .unwrap_or(path)
            .to_string_lossy()
            .replace('/', "-");
        let local = self.local.join(name);
        if local != path {
            fs::write(&local, &bytes).map_err(|e| LabError::io("keeping a copy", e))?;
        }
        Ok(bytes)
    }

    /// Runs `stockade ARGS` as a client, on its host.
    fn stockade(&self, c: &Client, args: &[&str]) -> Result<sh::Output, LabError> {
        let mut cmd = self.client_command(c, args);
        cmd.stdin(Stdio::null());
        sh::run_timeout(cmd, CLIENT_TIMEOUT)
    }

    fn client_command(&self, c: &Client, args: &[&str]) -> Command {
        let mut env = lab::client_env(&c.home, &c.host, &c.service, &self.hosts.ca());
        env.push(("RUST_LOG".into(), "warn".into()));
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        self.hosts.command(
            &c.host,
            &self.hosts.program("stockade"),
            &args,
            &env,
            &c.home,
        )
    }

    /// Runs a client command that must succeed; shows its output.
    fn ok(&mut self, step: &str, c: &Client, args: &[&str]) -> Result<String, LabError> {
        let o = self.stockade(c, args)?;
        let shown = format!("{}{}", o.stdout, o.stderr);
        self.indent(shown.trim_end());
        if !o.ok() {
            return Err(self.fail(
                step,
                format!("`stockade {}` exited {:?}", args.join(" "), o.code),
            ));
        }
        Ok(o.stdout)
    }

    /// Runs a client command that must be refused (exit 3); returns the refusal text.
    fn refused(&mut self, step: &str, c: &Client, args: &[&str]) -> Result<String, LabError> {
        let o = self.stockade(c, args)?;
        let shown = format!("{}{}", o.stdout, o.stderr);
        self.indent(shown.trim_end());
        if o.code != Some(3) {
            return Err(self.fail(
                step,
                format!(
                    "`stockade {}` should be refused (exit 3), exited {:?}",
                    args.join(" "),
                    o.code
                ),
            ));
        }
        Ok(o.stderr.trim().to_string())
    }

    fn counters(&mut self, title: &str) -> lab::GatewayCounters {
        let mgmt = match self.mgmt() {
            Ok(m) => m,
            Err(_) => return lab::GatewayCounters::default(),
        };
        let c = lab::gateway_counters(&mgmt);
        self.step(title);
        if let Some(e) = &c.error {
            self.indent(&format!("gateway metrics unreadable: {e}"));
        } else {
            let mut s = format!(
                "forwarded {} packets; dropped {}",
                c.forwarded_packets, c.dropped_packets
            );
            let nonzero: Vec<String> = c
                .drops
                .iter()
                .filter(|(_, v)| **v > 0.0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            if !nonzero.is_empty() {
                let _ = write!(s, " ({})", nonzero.join(", "));
            }
            self.indent(&s);
        }
        c
    }

    fn story(&mut self) -> Result<DemoReport, LabError> {
        let mut r = DemoReport {
            dir: self.local.clone(),
            ..Default::default()
        };
        let mgmt = self.mgmt()?;
        let title = self.hosts.title();
        self.say(&format!(
            "{title}\n\
             clients 198.51.100.101, .220 · service servers .110, .111 · stock servers .50, .51 behind the gateway\n\
             demo files: {}",
            self.local.display()
        ));
        let before = self.counters("gateway counters before");
        r.drops_before = before.drops.clone();
        r.forwarded_before = before.forwarded_packets;

        let c1 = self.client(topology::CLIENT1, topology::SERVICE1, "")?;
        let c2 = self.client(topology::CLIENT2, topology::SERVICE1, "")?;
        self.step(
            "client 1 and client 2 make RSA keys and register them with service server 1 (61, 71)",
        );
        for c in [&c1, &c2] {
            self.ok("keygen", c, &["keygen", "--bits", "2048"])?;
            self.ok("register", c, &["register"])?;
        }

        let photo_bytes = png_bytes(320, 240, 7)?;
        let photo = self.give(&c1.host, "photo.png", &photo_bytes)?;
        self.step("client 1 uploads photo.png (62, 63); the review runs (Fig. 5: 91 virus by clamd, 92 integrity, 93 ethics auto-approved in the lab)");
        let out = self.ok(
            "upload",
            &c1,
            &["upload", &photo.display().to_string(), "--wait", "90"],
        )?;
        r.stored_on = out
            .lines()
            .find_map(|l| l.strip_prefix("stored "))
            .and_then(|l| l.rsplit(" on ").next())
            .map(str::to_string)
            .ok_or_else(|| self.fail("upload", "no `stored ... on STOCK` line"))?;
        if let Some(id) = out
            .lines()
            .find_map(|l| l.strip_prefix("upload "))
            .and_then(|l| l.split_whitespace().next())
        {
            self.step("the review record on service server 1 (operator's desk)");
            let admin = self.hosts.admin_socket(&topology::SERVICE1);
            let cmd = self.hosts.command(
                &topology::SERVICE1,
                &self.hosts.program("stockade-service"),
                &[
                    "review".into(),
                    "--socket".into(),
                    admin.display().to_string(),
                    "show".into(),
                    id.into(),
                ],
                &[],
                Path::new("/"),
            );
            match sh::run_timeout(cmd, Duration::from_secs(60)) {
                Ok(o) => {
                    let text = format!("{}{}", o.stdout, o.stderr);
                    self.indent(text.trim_end());
                }
                Err(e) => self.indent(&format!("(review show: {e})")),
            }
        }

        self.step(&format!(
            "client 1 downloads it (121): the stock server {} pushes it through the gateway straight to 198.51.100.101:{} (137, 124, 125)",
            r.stored_on,
            topology::PUSH_PORT
        ));
        let back = c1.home.join("photo-back.png");
        self.ok(
            "download",
            &c1,
            &[
                "download",
                "photo.png",
                "--out",
                &back.display().to_string(),
            ],
        )?;
        let got = self.fetch(&c1, &back)?;
        same_bytes(&photo_bytes, &got, &back).map_err(|d| self.fail("download", d))?;
        self.indent("identical to the original");
        r.client1_download = back;

        self.step("client 1 shares the account key with client 2, peer to peer by PAKE, never through a server (Fig. 10, 11)");
        // Printed by `stockade password show`, never by the demo.
        let pw = self.stockade(&c1, &["password", "show"])?;
        if !pw.ok() {
            return Err(self.fail("password show", pw.stderr.trim().to_string()));
        }
        let pw = pw.stdout;
        let server_pw = c2.home.join("server-password");
        let client_pw1 = c1.home.join("client-password");
        let client_pw2 = c2.home.join("client-password");
        let agreed = b"a client password agreed in person\n";
        self.hosts
            .put(&c2.host, &server_pw, format!("{}\n", pw.trim()).as_bytes())?;
        self.hosts.put(&c1.host, &client_pw1, agreed)?;
        self.hosts.put(&c2.host, &client_pw2, agreed)?;
        self.indent(
            "client 1 handed client 2 its server password and a client password beforehand (0078)",
        );
        self.share(&c1, &c2, &client_pw1, &client_pw2, &server_pw)?;
        let c2_copy = c2.home.join("photo.png");
        self.ok(
            "client 2 download",
            &c2,
            &[
                "download",
                "photo.png",
                "--out",
                &c2_copy.display().to_string(),
            ],
        )?;
        let got = self.fetch(&c2, &c2_copy)?;
        same_bytes(&photo_bytes, &got, &c2_copy).map_err(|d| self.fail("client 2 download", d))?;
        self.indent("client 2's copy is identical to the original (0086)");
        r.client2_download = c2_copy;

        self.step("Fig. 12: client 2 also has an account on service server 2, which stores through the same gateway");
        let c2b = self.client(topology::CLIENT2, topology::SERVICE2, "-service2")?;
        self.ok("keygen (service 2)", &c2b, &["keygen", "--bits", "2048"])?;
        self.ok("register (service 2)", &c2b, &["register"])?;
        let photo2 = self.give(&c2b.host, "photo-2.png", &png_bytes(200, 150, 31)?)?;
        let out = self.ok(
            "upload (service 2)",
            &c2b,
            &["upload", &photo2.display().to_string(), "--wait", "90"],
        )?;
        r.service2_stored_on = out
            .lines()
            .find_map(|l| l.strip_prefix("stored "))
            .and_then(|l| l.rsplit(" on ").next())
            .map(str::to_string)
            .ok_or_else(|| self.fail("upload (service 2)", "no `stored ... on STOCK` line"))?;

        self.step(&format!(
            "bad uploads are refused with their reason (75 no → 76, 77 → 64, 65): a file carrying the test signature {VIRUS_NAME} (91)"
        ));
        let mut bytes = photo_bytes.clone();
        bytes.extend_from_slice(VIRUS_MARKER);
        let infected = self.give(&c1.host, "infected.png", &bytes)?;
        r.virus_refusal = self.refused(
            "virus upload",
            &c1,
            &["upload", &infected.display().to_string(), "--wait", "90"],
        )?;
        self.step("… and a truncated image that does not decode (92)");
        let corrupt = self.give(
            &c1.host,
            "corrupt.png",
            &photo_bytes[..photo_bytes.len() / 2],
        )?;
        r.corrupt_refusal = self.refused(
            "corrupt upload",
            &c1,
            &["upload", &corrupt.display().to_string(), "--wait", "90"],
        )?;

        self.step("client 1 tries to reach a stock server directly (firewall 45 admits only the service servers)");
        let target = SocketAddr::V4(SocketAddrV4::new(
            topology::STOCK1.ip,
            topology::STOCK_API_PORT,
        ));
        let tcp = self.probe(&c1.host, "tcp", target)?;
        self.indent(&format!("TCP {target} from 198.51.100.101: {tcp}"));
        if tcp.starts_with("reached") {
            return Err(self.fail("direct attempt", format!("client 1 reached {target}")));
        }
        r.direct_tcp = tcp;
        let udp_target = SocketAddr::V4(SocketAddrV4::new(topology::STOCK2.ip, 9999));
        let udp = self.probe(&c1.host, "udp", udp_target)?;
        self.indent(&format!("UDP {udp_target} from 198.51.100.101: {udp}"));
        if udp.starts_with("reached") || udp.starts_with("refused") {
            return Err(self.fail(
                "direct attempt",
                format!("something came back from {udp_target}: {udp}"),
            ));
        }
        r.direct_udp = udp;

        let after = self.counters("gateway counters after");
        let mut deltas = vec![];
        for (k, v) in &after.drops {
            let d = v - before.drops.get(k).copied().unwrap_or(0.0);
            if d > 0.0 {
                deltas.push(format!("{k} +{d}"));
            }
        }
        self.indent(&format!(
            "during the demo: forwarded +{} packets; drops {}",
            after.forwarded_packets - before.forwarded_packets,
            if deltas.is_empty() {
                "none".into()
            } else {
                deltas.join(", ")
            }
        ));
        let fwd: Vec<String> = after
            .forwarded_by_rule
            .iter()
            .filter(|(_, v)| **v > 0.0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        self.indent(&format!("forwarded by rule: {}", fwd.join(", ")));
        r.drops_after = after.drops.clone();
        r.forwarded_after = after.forwarded_packets;
        if after.error.is_none() && after.dropped_packets <= before.dropped_packets {
            return Err(self.fail(
                "gateway counters",
                "client 1's direct attempts did not show up as drops",
            ));
        }
        self.say(&format!(
            "\ndone in {:.1}s. Prometheus: http://{}:{} (from this machine, over the management link)",
            self.started.elapsed().as_secs_f32(),
            mgmt.of(&topology::MONITOR).map(|a| a.to_string()).unwrap_or_default(),
            topology::PROMETHEUS_PORT
        ));
        Ok(r)
    }

    /// Client 1 serves the share, client 2 requests it (151-156, 141-147).
    fn share(
        &mut self,
        c1: &Client,
        c2: &Client,
        client_pw1: &Path,
        client_pw2: &Path,
        server_pw: &Path,
    ) -> Result<(), LabError> {
        let listen = SocketAddrV4::new(c1.host.ip, topology::SHARE_PORT).to_string();
        let serve_out = self.local.join("share-serve.out");
        let f = fs::File::create(&serve_out).map_err(|e| LabError::io("share output", e))?;
        let f2 = f.try_clone().map_err(|e| LabError::io("share output", e))?;
        let mut serve = self
            .client_command(
                c1,
                &[
                    "share",
                    "serve",
                    "--client-password-file",
                    &client_pw1.display().to_string(),
                    "--listen",
                    &listen,
                    "--max-attempts",
                    "1",
                ],
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(f))
            .stderr(Stdio::from(f2))
            .spawn()
            .map_err(|e| LabError::io("starting share serve", e))?;
        let pid = serve.id() as i32;
        let start = Instant::now();
        while !self.hosts.listening(&c1.host, topology::SHARE_PORT) {
            if start.elapsed() > Duration::from_secs(60) || !daemon::is_alive(pid) {
                let _ = serve.kill();
                let _ = serve.wait();
                let text = fs::read_to_string(&serve_out).unwrap_or_default();
                return Err(self.fail("share serve", format!("not listening: {text}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let req = self.stockade(
            c2,
            &[
                "share",
                "request",
                "--from",
                &listen,
                "--client-password-file",
                &client_pw2.display().to_string(),
                "--server-password-file",
                &server_pw.display().to_string(),
            ],
        );
        // Client 1's side ends after the one exchange; bounded either way.
        let start = Instant::now();
        let served = loop {
            match serve.try_wait() {
                Ok(Some(st)) => break st.success(),
                Ok(None) if start.elapsed() > Duration::from_secs(60) => {
                    let _ = serve.kill();
                    let _ = serve.wait();
                    break false;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break false,
            }
        };
        let serve_text = fs::read_to_string(&serve_out).unwrap_or_default();
        self.indent(&format!("client 1: {}", serve_text.trim_end()));
        let req = req?;
        self.indent(&format!(
            "client 2: {}",
            format!("{}{}", req.stdout, req.stderr).trim_end()
        ));
        if !req.ok() || !served {
            return Err(self.fail(
                "share",
                format!("request exited {:?}, serve succeeded: {served}", req.code),
            ));
        }
        Ok(())
    }

    /// `stockade-lab probe` on a host.
    fn probe(&self, host: &Host, proto: &str, target: SocketAddr) -> Result<String, LabError> {
        let cmd = self.hosts.command(
            host,
            &self.hosts.program("stockade-lab"),
            &[
                "probe".into(),
                proto.into(),
                target.to_string(),
                "--timeout".into(),
                "4".into(),
            ],
            &[],
            Path::new("/"),
        );
        let o = sh::run_timeout(cmd, Duration::from_secs(60))?;
        Ok(o.stdout.trim().to_string())
    }
}

fn same_bytes(want: &[u8], got: &[u8], path: &Path) -> Result<(), String> {
    if want != got {
        return Err(format!(
            "{} ({} bytes) differs from the original ({} bytes)",
            path.display(),
            got.len(),
            want.len()
        ));
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
    f.write_all(bytes)
        .map_err(|e| LabError::io(format!("writing {}", path.display()), e))
}

/// A photo-like PNG with smooth gradients, encoded.
pub fn png_bytes(w: u32, h: u32, seed: u8) -> Result<Vec<u8>, LabError> {
    let mut out = std::io::Cursor::new(Vec::new());
    gradient(w, h, seed)
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| LabError::Invalid(format!("encoding a PNG: {e}")))?;
    Ok(out.into_inner())
}

fn gradient(w: u32, h: u32, seed: u8) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            ((x * 255) / w.max(1)) as u8 ^ seed,
            ((y * 255) / h.max(1)) as u8,
            (((x + y) * 3) as u8).wrapping_add(seed),
        ])
    })
}

/// A photo-like PNG with smooth gradients.
pub fn write_png(path: &Path, w: u32, h: u32, seed: u8) -> Result<(), LabError> {
    gradient(w, h, seed)
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| LabError::Invalid(format!("writing {}: {e}", path.display())))
}
