//! `stockade-lab demo`: the patent's whole story on the running lab, through the real gateway,
//! with readable output. Every step checks its outcome; a step that does not go as the patent
//! says stops the demo with an error (so the demo doubles as a smoke test).
//!
//! Each run uses fresh client homes under `STATE/demo/<n>/`, so the demo can be run again.

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

struct Demo<'a> {
    lab: &'a Lab,
    st: LabState,
    dir: PathBuf,
    out: &'a mut dyn std::io::Write,
    started: Instant,
}

/// A client home in this demo run, using one service server.
struct Client {
    host: Host,
    service: Host,
    home: PathBuf,
}

const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

pub fn run(lab: &Lab, out: &mut dyn std::io::Write) -> Result<DemoReport, LabError> {
    let st = lab.load_state()?;
    if st.phase != lab::Phase::Up {
        return Err(LabError::Invalid(
            "the lab did not finish `up`; run `stockade-lab down` and `up` again".into(),
        ));
    }
    let root = st.state_dir.join("demo");
    fs::create_dir_all(&root).map_err(|e| LabError::io("creating the demo directory", e))?;
    let n = (1..)
        .find(|n| !root.join(n.to_string()).exists())
        .unwrap_or(1);
    let dir = root.join(n.to_string());
    fs::create_dir_all(&dir).map_err(|e| LabError::io("creating the demo directory", e))?;
    let mut d = Demo {
        lab,
        st,
        dir,
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
        self.st.mgmt()
    }

    fn client(&self, host: Host, service: Host, tag: &str) -> Result<Client, LabError> {
        let home = self.dir.join(format!("{}{tag}", host.name));
        fs::create_dir_all(&home).map_err(|e| LabError::io("creating a client home", e))?;
        Ok(Client {
            host,
            service,
            home,
        })
    }

    /// Runs `stockade ARGS` as a client, in its namespace.
    fn stockade(&self, c: &Client, args: &[&str]) -> Result<sh::Output, LabError> {
        let mut cmd = self.client_command(c, args);
        cmd.stdin(Stdio::null());
        sh::run_timeout(cmd, CLIENT_TIMEOUT)
    }

    fn client_command(&self, c: &Client, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.names.ns(c.host.name)])
            .arg(self.st.bin_dir.join("stockade"))
            .args(args)
            .envs(lab::client_env(
                &c.home,
                &c.host,
                &c.service,
                &self.lab.layout().pki().join("ca.pem"),
            ))
            .env("RUST_LOG", "warn")
            .current_dir(&c.home);
        cmd
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
            dir: self.dir.clone(),
            ..Default::default()
        };
        let mgmt = self.mgmt()?;
        self.say(&format!(
            "Stockade lab {:?}: JP H11-73391 Fig. 1 / Fig. 12 through stockade-gateway ({} plane)\n\
             clients 198.51.100.101, .220 · service servers .110, .111 · stock servers .50, .51 behind the gateway\n\
             demo files: {}",
            self.st.prefix,
            self.st.dataplane.as_str(),
            self.dir.display()
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

        let photo = self.dir.join("photo.png");
        write_png(&photo, 320, 240, 7)?;
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
            let admin = self.lab.layout().admin_socket(topology::SERVICE1.name);
            let mut cmd = Command::new(self.st.bin_dir.join("stockade-service"));
            cmd.arg("review")
                .arg("--socket")
                .arg(&admin)
                .args(["show", id]);
            match sh::run_timeout(cmd, Duration::from_secs(20)) {
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
        same_file(&photo, &back).map_err(|d| self.fail("download", d))?;
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
        write_private(&server_pw, pw.trim())?;
        write_private(&client_pw1, "a client password agreed in person")?;
        write_private(&client_pw2, "a client password agreed in person")?;
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
        same_file(&photo, &c2_copy).map_err(|d| self.fail("client 2 download", d))?;
        self.indent("client 2's copy is identical to the original (0086)");
        r.client2_download = c2_copy;

        self.step("Fig. 12: client 2 also has an account on service server 2, which stores through the same gateway");
        let c2b = self.client(topology::CLIENT2, topology::SERVICE2, "-service2")?;
        self.ok("keygen (service 2)", &c2b, &["keygen", "--bits", "2048"])?;
        self.ok("register (service 2)", &c2b, &["register"])?;
        let photo2 = self.dir.join("photo-2.png");
        write_png(&photo2, 200, 150, 31)?;
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
        let infected = self.dir.join("infected.png");
        let mut bytes = fs::read(&photo).map_err(|e| LabError::io("reading the photo", e))?;
        bytes.extend_from_slice(VIRUS_MARKER);
        fs::write(&infected, &bytes).map_err(|e| LabError::io("writing infected.png", e))?;
        r.virus_refusal = self.refused(
            "virus upload",
            &c1,
            &["upload", &infected.display().to_string(), "--wait", "90"],
        )?;
        self.step("… and a truncated image that does not decode (92)");
        let corrupt = self.dir.join("corrupt.png");
        let full = fs::read(&photo).map_err(|e| LabError::io("reading the photo", e))?;
        fs::write(&corrupt, &full[..full.len() / 2])
            .map_err(|e| LabError::io("writing corrupt.png", e))?;
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
        let serve_out = self.dir.join("share-serve.out");
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
        while !daemon::listening(pid, c1.host.ip, topology::SHARE_PORT) {
            if start.elapsed() > Duration::from_secs(30) || !daemon::is_alive(pid) {
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
                Ok(None) if start.elapsed() > Duration::from_secs(30) => {
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

    /// `stockade-lab probe` inside a host's namespace.
    fn probe(&self, host: &Host, proto: &str, target: SocketAddr) -> Result<String, LabError> {
        let me = std::env::current_exe().map_err(|e| LabError::io("finding stockade-lab", e))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.lab.names.ns(host.name)])
            .arg(me)
            .args(["probe", proto, &target.to_string(), "--timeout", "4"]);
        let o = sh::run_timeout(cmd, Duration::from_secs(20))?;
        Ok(o.stdout.trim().to_string())
    }
}

fn same_file(a: &Path, b: &Path) -> Result<(), String> {
    let x = fs::read(a).map_err(|e| format!("{}: {e}", a.display()))?;
    let y = fs::read(b).map_err(|e| format!("{}: {e}", b.display()))?;
    if x != y {
        return Err(format!(
            "{} ({} bytes) differs from {} ({} bytes)",
            b.display(),
            y.len(),
            a.display(),
            x.len()
        ));
    }
    Ok(())
}

fn write_private(path: &Path, text: &str) -> Result<(), LabError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
    writeln!(f, "{text}").map_err(|e| LabError::io(format!("writing {}", path.display()), e))
}

/// A photo-like PNG with smooth gradients.
pub fn write_png(path: &Path, w: u32, h: u32, seed: u8) -> Result<(), LabError> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            ((x * 255) / w.max(1)) as u8 ^ seed,
            ((y * 255) / h.max(1)) as u8,
            (((x + y) * 3) as u8).wrapping_add(seed),
        ])
    });
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| LabError::Invalid(format!("writing {}: {e}", path.display())))
}
