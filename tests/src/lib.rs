//! Harness for the end-to-end tests: starts the real daemons (clamd, stock servers, service) as
//! separate processes on loopback, each test with its own directory, ports and client
//! addresses (127.x.y.z, so clients can each listen on the push port 7137), and stops them all
//! when dropped, also when a test fails.

pub mod hardening;
pub mod lab;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The bytes our test signature matches (written into clamd's database by the harness).
pub const VIRUS_MARKER: &[u8] = b"STOCKADE-TEST-VIRUS-MARKER";
pub const VIRUS_NAME: &str = "Stockade.Test.Marker";

/// Directory holding the workspace's built binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> or target/<profile>/<bench binary> → target/<profile>
    let dir = exe.parent().expect("binary has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is not built: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1 (bind to 0 and release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback address unique to this process and call, for a client's push listener.
pub fn unique_loopback() -> Ipv4Addr {
    static N: AtomicU32 = AtomicU32::new(1);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let pid = std::process::id();
    Ipv4Addr::new(
        127,
        100 + (pid % 100) as u8,
        ((pid / 100) % 250) as u8,
        (n % 250 + 2) as u8,
    )
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A child process stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Daemon {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        cmd.stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .stdin(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Self {
            name: name.into(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

pub struct StockSpec {
    pub name: String,
    pub port: u16,
    pub metrics_port: u16,
    pub config: PathBuf,
}

/// Options for a test system.
#[derive(Clone)]
pub struct Options {
    pub auto_approve: bool,
    pub stock_servers: usize,
    pub max_upload_bytes: u64,
    pub start_clamd: bool,
    /// Overrides the stock servers' push port (benchmarks push to a local sink).
    pub push_port: Option<u16>,
    /// More top-level lines of each stock server's config (e.g. `push_stall_secs: 2`).
    pub extra_stock_yaml: String,
    /// clamd's size limits (clamd.conf lines); default 100M for each.
    pub clamd_limits: Option<String>,
    /// The service's clamd timeout.
    pub clamd_timeout_secs: u64,
    /// More lines under the service config's `limits:` (each indented two spaces).
    pub limits_yaml: String,
    /// More top-level sections of the service config (e.g. `console:`).
    pub extra_service_yaml: String,
    /// Run the service and stock servers as their packaged units would: own users,
    /// capabilities, NoNewPrivileges and seccomp filter (`hardening`). Needs root.
    pub restricted: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            auto_approve: true,
            stock_servers: 2,
            max_upload_bytes: 20 << 20,
            start_clamd: true,
            push_port: None,
            extra_stock_yaml: String::new(),
            clamd_limits: None,
            clamd_timeout_secs: 20,
            limits_yaml: String::new(),
            extra_service_yaml: String::new(),
            restricted: false,
        }
    }
}

/// clamd, the stock servers and the service, on loopback.
pub struct System {
    pub dir: tempfile::TempDir,
    pub pki: PathBuf,
    pub clamd: Option<Daemon>,
    pub clamd_socket: PathBuf,
    clamd_limits: Option<String>,
    pub stocks: Vec<Daemon>,
    pub stock_specs: Vec<StockSpec>,
    pub service: Option<Daemon>,
    pub service_config: PathBuf,
    pub service_port: u16,
    pub service_metrics_port: u16,
    pub admin_socket: PathBuf,
    /// The packaged units' restrictions, when `Options::restricted`.
    pub restrictions: Option<Restrictions>,
}

/// The service's and the stock servers' unit restrictions.
pub struct Restrictions {
    pub service: hardening::Restriction,
    pub stock: hardening::Restriction,
}

impl System {
    pub fn start(opts: Options) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("stockade-e2e-")
            .tempdir()
            .unwrap();
        let root = dir.path().to_path_buf();
        let pki = root.join("pki");
        stockade_proto::pki::generate(
            &pki,
            &["127.0.0.1".into(), "localhost".into()],
            &["127.0.0.1".into()],
        )
        .unwrap();
        let clamd_socket = root.join("clamd.sock");
        let mut sys = System {
            dir,
            pki: pki.clone(),
            clamd: None,
            clamd_socket: clamd_socket.clone(),
            clamd_limits: None,
            stocks: vec![],
            stock_specs: vec![],
            service: None,
            service_config: root.join("service.yaml"),
            service_port: free_port(),
            service_metrics_port: free_port(),
            admin_socket: root.join("admin.sock"),
            restrictions: None,
        };
        if opts.restricted {
            sys.restrict();
        }
        sys.clamd_limits = opts.clamd_limits.clone();
        if opts.start_clamd {
            sys.start_clamd();
        }
        for i in 0..opts.stock_servers {
            let name = format!("stock-{}", i + 1);
            let (port, metrics_port) = (free_port(), free_port());
            let config = root.join(format!("{name}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "name: {name}\nlisten: 127.0.0.1:{port}\nmetrics_listen: 127.0.0.1:{metrics_port}\ndata_dir: {name}-data\n\
                     tls:\n  cert: pki/stock.pem\n  key: pki/stock.key\n  service_client_ca: pki/service-client-ca.pem\n  monitor_ca: pki/monitor-ca.pem\n{}{}",
                    opts.push_port.map(|p| format!("push_port: {p}\n")).unwrap_or_default(),
                    opts.extra_stock_yaml
                ),
            )
            .unwrap();
            sys.stock_specs.push(StockSpec {
                name,
                port,
                metrics_port,
                config,
            });
            sys.stocks.push(sys.spawn_stock(i));
        }
        let stocks: String = sys
            .stock_specs
            .iter()
            .map(|s| {
                format!(
                    "  - name: {}\n    url: https://127.0.0.1:{}\n",
                    s.name, s.port
                )
            })
            .collect();
        std::fs::write(
            &sys.service_config,
            format!(
                "name: service-1\nlisten: 127.0.0.1:{}\nmetrics_listen: 127.0.0.1:{}\nadmin_socket: admin.sock\ndata_dir: service-data\n\
                 tls:\n  cert: pki/service.pem\n  key: pki/service.key\n  stock_ca: pki/ca.pem\n  client_cert: pki/service-client.pem\n  client_key: pki/service-client.key\n\
                 stock_servers:\n{stocks}clamd:\n  address: {}\n  timeout_secs: {}\nreview:\n  auto_approve_ethics: {}\nlimits:\n  max_upload_bytes: {}\n{}{}",
                sys.service_port,
                sys.service_metrics_port,
                clamd_socket.display(),
                opts.clamd_timeout_secs,
                opts.auto_approve,
                opts.max_upload_bytes,
                opts.limits_yaml,
                opts.extra_service_yaml,
            ),
        )
        .unwrap();
        sys.service = Some(sys.spawn_service());
        for s in &sys.stock_specs {
            wait_port(s.port);
        }
        wait_port(sys.service_port);
        sys
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Files owned as on a packaged host: the test directory (config, sockets, the service's
    /// data) by stockade-service, each private key by the one user that loads it (0600), the
    /// stock servers' data folders by stockade-stock.
    fn restrict(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        hardening::ensure_users();
        let unit = |d| stockade_lab::package::unit(d, "/usr/bin").unwrap();
        let service = hardening::Restriction::from_unit(
            &unit(stockade_lab::package::Daemon::Service),
            self.dir.path(),
        );
        let stock = hardening::Restriction::from_unit(
            &unit(stockade_lab::package::Daemon::Stock),
            self.dir.path(),
        );
        let own = |p: &Path, user: &str, mode: u32| {
            let (uid, gid) = hardening::ids(user);
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        own(self.root(), &service.user, 0o755);
        std::fs::set_permissions(&self.pki, std::fs::Permissions::from_mode(0o755)).unwrap();
        for e in std::fs::read_dir(&self.pki).unwrap() {
            let p = e.unwrap().path();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        for k in ["service.key", "service-client.key"] {
            own(&self.pki.join(k), &service.user, 0o600);
        }
        own(&self.pki.join("stock.key"), &stock.user, 0o600);
        self.restrictions = Some(Restrictions { service, stock });
    }

    /// A daemon's command: plain, or under its unit's restrictions.
    fn daemon_command(
        &self,
        program: &str,
        restriction: Option<&hardening::Restriction>,
    ) -> Command {
        match restriction {
            Some(r) => r.command(&bin(program)),
            None => Command::new(bin(program)),
        }
    }

    pub fn start_clamd(&mut self) {
        let root = self.root().to_path_buf();
        let db = root.join("clamav-db");
        std::fs::create_dir_all(&db).unwrap();
        let hex: String = VIRUS_MARKER.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(db.join("stockade.ndb"), format!("{VIRUS_NAME}:0:*:{hex}\n")).unwrap();
        let conf = root.join("clamd.conf");
        let _ = std::fs::remove_file(&self.clamd_socket);
        std::fs::write(
            &conf,
            format!(
                "LocalSocket {}\nLocalSocketMode 666\nForeground yes\nDatabaseDirectory {}\nLogFile {}\n{}\nAlertExceedsMax yes\nBytecode no\n",
                self.clamd_socket.display(),
                db.display(),
                root.join("clamd.log").display(),
                self.clamd_limits
                    .as_deref()
                    .unwrap_or("StreamMaxLength 100M\nMaxFileSize 100M\nMaxScanSize 100M")
            ),
        )
        .unwrap();
        let mut cmd = Command::new("clamd");
        cmd.arg("-c").arg(&conf);
        self.clamd = Some(Daemon::spawn("clamd", cmd, root.join("clamd.out")));
        let sock = self.clamd_socket.clone();
        wait_until("clamd socket", Duration::from_secs(60), || sock.exists());
    }

    pub fn spawn_stock(&self, i: usize) -> Daemon {
        let s = &self.stock_specs[i];
        if let Some(r) = &self.restrictions {
            let data = self.root().join(format!("{}-data", s.name));
            std::fs::create_dir_all(&data).unwrap();
            let (uid, gid) = hardening::ids(&r.stock.user);
            std::os::unix::fs::chown(&data, Some(uid), Some(gid)).unwrap();
        }
        let mut cmd = self.daemon_command(
            "stockade-stock",
            self.restrictions.as_ref().map(|r| &r.stock),
        );
        cmd.args(["run", "--config"])
            .arg(&s.config)
            .env("RUST_LOG", "info");
        Daemon::spawn(&s.name, cmd, self.root().join(format!("{}.log", s.name)))
    }

    pub fn restart_stock(&mut self, i: usize) {
        self.stocks[i].terminate();
        self.stocks[i] = self.spawn_stock(i);
        wait_port(self.stock_specs[i].port);
    }

    pub fn spawn_service(&self) -> Daemon {
        let mut cmd = self.daemon_command(
            "stockade-service",
            self.restrictions.as_ref().map(|r| &r.service),
        );
        cmd.args(["run", "--config"])
            .arg(&self.service_config)
            .env("RUST_LOG", "info");
        Daemon::spawn("service", cmd, self.root().join("service.log"))
    }

    pub fn service_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.service_port)
    }

    /// Runs `stockade-service review ...` against the running service.
    pub fn review(&self, args: &[&str]) -> Output {
        Command::new(bin("stockade-service"))
            .arg("review")
            .arg("--socket")
            .arg(&self.admin_socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// A new client with its own home, loopback address and key (keygen + register, 61).
    pub fn client(&self, name: &str) -> Client {
        let c = Client {
            name: name.into(),
            home: self.root().join(format!("client-{name}")),
            ip: unique_loopback(),
            service: self.service_url(),
            ca: self.pki.join("ca.pem"),
        };
        std::fs::create_dir_all(&c.home).unwrap();
        c.ok(&["keygen", "--bits", "2048"]);
        c.ok(&["register"]);
        c
    }

    pub fn logs(&self) -> String {
        let mut s = String::new();
        for d in self.stocks.iter().chain(self.service.iter()) {
            s.push_str(&format!("==== {} ====\n{}\n", d.name, d.log_text()));
        }
        s
    }
}

pub fn wait_port(port: u16) {
    wait_until(&format!("port {port}"), Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// A `stockade` client (clients 1 and 30).
pub struct Client {
    pub name: String,
    pub home: PathBuf,
    pub ip: Ipv4Addr,
    pub service: String,
    pub ca: PathBuf,
}

impl Client {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin("stockade"));
        cmd.env("STOCKADE_HOME", &self.home)
            .env("STOCKADE_SERVICE", &self.service)
            .env("STOCKADE_CA", &self.ca)
            .env("STOCKADE_BIND", self.ip.to_string())
            .env(
                "STOCKADE_PASSPHRASE",
                format!("passphrase of {}", self.name),
            )
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Uploads `bytes` as `name` and waits `wait_secs` for an outcome that does not come (exit
    /// 4: the upload is still queued, e.g. for the operator); returns the upload id.
    pub fn upload_queued(&self, name: &str, bytes: &[u8], wait_secs: u32) -> String {
        let file = write(&self.home, name, bytes);
        let out = self.run(&["upload", &file, "--wait", &wait_secs.to_string()]);
        assert_eq!(
            out.status.code(),
            Some(4),
            "upload {name}: still queued expected: {}",
            text(&out.stderr)
        );
        // "upload <id> queued for review"
        text(&out.stdout)
            .split_whitespace()
            .nth(1)
            .expect("the upload id")
            .to_string()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "stockade {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status.code(),
            text(&out.stdout),
            text(&out.stderr)
        );
        text(&out.stdout)
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// A small valid PNG with varied pixels.
pub fn png(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x as u8).wrapping_mul(seed),
            (y as u8).wrapping_add(seed),
            seed,
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A PNG of noise (xorshift): incompressible, so its size is about 3 bytes per pixel.
pub fn noisy_png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

pub fn jpeg(w: u32, h: u32, seed: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x as u8).wrapping_add(seed), (y as u8).wrapping_mul(3), 200])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

/// Writes `bytes` to `dir/name` and returns the path as a string (for command lines).
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_string_lossy().to_string()
}

/// Every file under `dir`, recursively (none if it does not exist).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Runs `promtool check metrics` (Debian package prometheus) on a scrape; panics on failure.
pub fn promtool(body: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
