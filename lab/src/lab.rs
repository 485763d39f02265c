//! `up`, `down`, `status`, `exec`, `logs`: one lab, named by its prefix, living in one state
//! directory.
//!
//! State directory layout:
//!
//! ```text
//! .stockade-lab        marker: this directory belongs to the lab (it is wiped by `up`)
//! lab.json             the running lab (prefix, data plane, management slot, binaries)
//! rules.yaml           the gateway's copy of rules/default.yaml (edit it live; never the repo's)
//! pki/                 CA and certificates (`stockade-service pki`)
//! clamav-db/           the test signature database
//! hosts/<host>/        configs, data, sockets; clients' STOCKADE_HOME is hosts/<client>/home
//! run/<daemon>.pid     pid files; run/<daemon>.ready written by the daemon once listening
//! logs/<daemon>.log    daemon logs
//! ```

use std::fs;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::daemon::{self, Spawn};
use crate::render::{self, Layout, Settings};
use crate::topology::{self, Host, Mgmt, Names, Role};
use crate::{metrics, netns, sh, LabError};

pub const DEFAULT_PREFIX: &str = "stockade";
pub const DEFAULT_STATE_ROOT: &str = "/var/lib/stockade-lab";
const MARKER: &str = ".stockade-lab";
const STATE_FILE: &str = "lab.json";

/// The gateway's data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataplane {
    Userspace,
    Nftables,
}

impl Dataplane {
    pub fn as_str(&self) -> &'static str {
        match self {
            Dataplane::Userspace => "userspace",
            Dataplane::Nftables => "nftables",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// `up` is running, or crashed: `down` cleans up.
    Starting,
    Up,
}

/// `lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub prefix: String,
    pub state_dir: PathBuf,
    pub phase: Phase,
    pub dataplane: Dataplane,
    /// The management link: a /28 slot of a documentation /24.
    pub mgmt_net: std::net::Ipv4Addr,
    pub mgmt_slot: u8,
    /// Where the stockade binaries were found.
    pub bin_dir: PathBuf,
    pub prometheus: bool,
    pub auto_approve_ethics: bool,
    pub started_unix: u64,
}

impl LabState {
    pub fn mgmt(&self) -> Result<Mgmt, LabError> {
        Mgmt::new(self.mgmt_net, self.mgmt_slot)
    }
}

/// An exclusive lock (flock) over management slot allocation, shared by every lab on the machine.
pub struct SlotLock {
    _lock: nix::fcntl::Flock<fs::File>,
}

impl SlotLock {
    const PATH: &'static str = "/run/stockade-lab.lock";

    fn acquire() -> Result<Self, LabError> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(Self::PATH)
            .map_err(|e| LabError::io(format!("opening {}", Self::PATH), e))?;
        let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| LabError::io(format!("locking {}", Self::PATH), e.into()))?;
        Ok(Self { _lock: lock })
    }
}

/// The first /28 of the documentation ranges that nothing in the root namespace overlaps.
fn free_mgmt_slot() -> Result<Mgmt, LabError> {
    let mut slots = free_mgmt_slots(1)?;
    Ok(slots.remove(0))
}

/// The first `n` /28 slots of the documentation ranges that nothing in the root namespace
/// overlaps (an address or route of this machine, of another lab, or of libvirt's networks):
/// the lab takes one, the Vagrant VMs two (their management link and Vagrant's own network).
pub fn free_mgmt_slots(n: usize) -> Result<Vec<Mgmt>, LabError> {
    let mut free = vec![];
    for net in topology::MGMT_NETS {
        let used = netns::used_mgmt_slots(net)?;
        for slot in (0..topology::MGMT_SLOTS).filter(|s| !used.contains(s)) {
            free.push(Mgmt::new(net, slot)?);
            if free.len() == n {
                return Ok(free);
            }
        }
    }
    Err(LabError::Invalid(format!(
        "fewer than {n} free /28 slots are left in the management ranges {:?} (/24 each): this machine's addresses and routes use the rest",
        topology::MGMT_NETS
    )))
}

/// Options of `up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub dataplane: Dataplane,
    /// Rules file to copy (default: the repo's rules/default.yaml).
    pub rules: Option<PathBuf>,
    /// Directory holding stockade-service, stockade-stock, stockade, stockade-gateway.
    pub bin_dir: Option<PathBuf>,
    pub auto_approve_ethics: bool,
    /// Start Prometheus if it is installed.
    pub prometheus: bool,
    /// Leave what was built in place when `up` fails (for debugging).
    pub keep_on_failure: bool,
}

impl Default for UpOptions {
    fn default() -> Self {
        Self {
            dataplane: Dataplane::Userspace,
            rules: None,
            bin_dir: None,
            auto_approve_ethics: true,
            prometheus: true,
            keep_on_failure: false,
        }
    }
}

/// A daemon of the lab.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    pub name: String,
    /// The host (namespace) it runs in.
    pub host: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub ready: Ready,
    pub ready_timeout: Duration,
}

#[derive(Debug, Clone)]
pub enum Ready {
    /// A Unix socket appears.
    Socket(PathBuf),
    /// The daemon writes its pid file once listening (`--pid-file`).
    File(PathBuf),
    /// `GET path` answers 200 over the management link.
    Http(SocketAddr, &'static str),
}

/// The program each daemon name runs (also used when `lab.json` is gone, after a crash).
fn program_name(daemon: &str) -> &'static str {
    if daemon.starts_with("clamd") {
        "clamd"
    } else if daemon == "gateway" {
        "stockade-gateway"
    } else if daemon.starts_with("stock") {
        "stockade-stock"
    } else if daemon.starts_with("service") {
        "stockade-service"
    } else {
        "prometheus"
    }
}

/// Every daemon name in start order.
pub fn daemon_names() -> Vec<String> {
    let mut v = vec![];
    for h in topology::hosts_with(Role::Service) {
        v.push(format!("clamd-{}", h.name));
    }
    v.push("gateway".into());
    for h in topology::hosts_with(Role::Stock) {
        v.push(h.name.to_string());
    }
    for h in topology::hosts_with(Role::Service) {
        v.push(h.name.to_string());
    }
    v.push("prometheus".into());
    v
}

/// One lab: its names and state directory.
#[derive(Debug, Clone)]
pub struct Lab {
    pub names: Names,
    pub state_dir: PathBuf,
}

/// What `up` reports.
#[derive(Debug, Clone)]
pub struct UpReport {
    pub state: LabState,
    pub elapsed: Duration,
    /// Time until Prometheus saw every target up, if it ran and did.
    pub targets_healthy_after: Option<Duration>,
    pub unhealthy_targets: Vec<String>,
}

/// What `down` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DownReport {
    pub stopped: Vec<String>,
    pub killed_stray: Vec<i32>,
    pub removed: Vec<String>,
}

impl Lab {
    pub fn new(prefix: &str, state_dir: Option<PathBuf>) -> Result<Self, LabError> {
        let names = Names::new(prefix)?;
        let state_dir =
            state_dir.unwrap_or_else(|| Path::new(DEFAULT_STATE_ROOT).join(names.prefix()));
        Ok(Self { names, state_dir })
    }

    pub fn layout(&self) -> Layout {
        Layout::Lab {
            state: self.state_dir.clone(),
        }
    }

    fn state_file(&self) -> PathBuf {
        self.state_dir.join(STATE_FILE)
    }

    pub fn pid_file(&self, daemon: &str) -> PathBuf {
        self.state_dir.join("run").join(format!("{daemon}.pid"))
    }

    pub fn ready_file(&self, daemon: &str) -> PathBuf {
        self.state_dir.join("run").join(format!("{daemon}.ready"))
    }

    pub fn log_file(&self, daemon: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{daemon}.log"))
    }

    /// A client's STOCKADE_HOME for `exec`.
    pub fn client_home(&self, client: &str) -> PathBuf {
        self.state_dir.join("hosts").join(client).join("home")
    }

    pub fn load_state(&self) -> Result<LabState, LabError> {
        let path = self.state_file();
        let text = fs::read_to_string(&path).map_err(|_| LabError::NotUp {
            prefix: self.names.prefix().to_string(),
            state: path.clone(),
        })?;
        Ok(serde_json::from_str(&text)?)
    }

    fn save_state(&self, st: &LabState) -> Result<(), LabError> {
        let tmp = self.state_dir.join(format!("{STATE_FILE}.tmp"));
        fs::write(&tmp, serde_json::to_vec_pretty(st)?)
            .map_err(|e| LabError::io(format!("writing {}", tmp.display()), e))?;
        fs::rename(&tmp, self.state_file()).map_err(|e| LabError::io("saving lab.json", e))
    }

    /// The daemons of a lab in start order (Prometheus only when it runs).
    pub fn daemons(&self, st: &LabState) -> Result<Vec<DaemonSpec>, LabError> {
        let l = self.layout();
        let mgmt = st.mgmt()?;
        let bin = |n: &str| st.bin_dir.join(n);
        let mut v = vec![];
        let clamd = sh::find_program("clamd", None).ok_or_else(|| {
            LabError::Missing("clamd is not installed (apt-get install clamav-daemon)".into())
        })?;
        for h in topology::hosts_with(Role::Service) {
            v.push(DaemonSpec {
                name: format!("clamd-{}", h.name),
                host: h.name,
                program: clamd.clone(),
                args: vec!["-c".into(), l.clamd_config(h.name).display().to_string()],
                ready: Ready::Socket(l.clamd_socket(h.name)),
                ready_timeout: Duration::from_secs(120),
            });
        }
        let dataplane_flag = (st.dataplane == Dataplane::Nftables
            || gateway_has_dataplane_flag(&bin("stockade-gateway")))
        .then_some(st.dataplane.as_str());
        v.push(DaemonSpec {
            name: "gateway".into(),
            host: topology::GATEWAY,
            program: bin("stockade-gateway"),
            args: render::gateway_args(&l, &mgmt, dataplane_flag),
            ready: Ready::Http(
                SocketAddr::V4(SocketAddrV4::new(
                    mgmt.gateway(),
                    topology::GATEWAY_METRICS_PORT,
                )),
                "/metrics",
            ),
            ready_timeout: Duration::from_secs(30),
        });
        for h in topology::hosts_with(Role::Stock) {
            v.push(DaemonSpec {
                name: h.name.to_string(),
                host: h.name,
                program: bin("stockade-stock"),
                args: vec![
                    "run".into(),
                    "--config".into(),
                    l.stock_config(h.name).display().to_string(),
                    "--pid-file".into(),
                    self.ready_file(h.name).display().to_string(),
                ],
                ready: Ready::File(self.ready_file(h.name)),
                ready_timeout: Duration::from_secs(60),
            });
        }
        for h in topology::hosts_with(Role::Service) {
            v.push(DaemonSpec {
                name: h.name.to_string(),
                host: h.name,
                program: bin("stockade-service"),
                args: vec![
                    "run".into(),
                    "--config".into(),
                    l.service_config(h.name).display().to_string(),
                    "--pid-file".into(),
                    self.ready_file(h.name).display().to_string(),
                ],
                ready: Ready::File(self.ready_file(h.name)),
                ready_timeout: Duration::from_secs(60),
            });
        }
        if st.prometheus {
            let monitor = mgmt
                .of(&topology::MONITOR)
                .ok_or_else(|| LabError::Invalid("monitor without management address".into()))?;
            let listen = SocketAddr::V4(SocketAddrV4::new(monitor, topology::PROMETHEUS_PORT));
            v.push(DaemonSpec {
                name: "prometheus".into(),
                host: topology::MONITOR.name,
                program: sh::find_program("prometheus", None)
                    .ok_or_else(|| LabError::Missing("prometheus is not installed".into()))?,
                args: vec![
                    format!("--config.file={}", l.prometheus_config().display()),
                    format!("--storage.tsdb.path={}", l.prometheus_data().display()),
                    format!("--web.listen-address={listen}"),
                    "--storage.tsdb.retention.time=1d".into(),
                ],
                ready: Ready::Http(listen, "/-/ready"),
                ready_timeout: Duration::from_secs(60),
            });
        }
        Ok(v)
    }

    /// Is anything of this lab there? (`lab.json`, a namespace, the root link.)
    fn presence(&self) -> Result<Option<String>, LabError> {
        if self.state_file().exists() {
            let phase = self.load_state().map(|s| s.phase).ok();
            return Ok(Some(match phase {
                Some(Phase::Up) => format!("{} exists", self.state_file().display()),
                _ => format!(
                    "{} says an earlier `up` did not finish",
                    self.state_file().display()
                ),
            }));
        }
        let ns = netns::lab_namespaces(&self.names)?;
        if !ns.is_empty() {
            return Ok(Some(format!(
                "namespaces {} exist (left by a crash?)",
                ns.join(", ")
            )));
        }
        if netns::link_exists(&self.names.root_link()) {
            return Ok(Some(format!("link {} exists", self.names.root_link())));
        }
        Ok(None)
    }

    /// Brings the lab up. On failure everything built so far is torn down again.
    pub fn up(&self, opts: &UpOptions) -> Result<UpReport, LabError> {
        let start = Instant::now();
        require_root()?;
        for tool in ["ip", "ethtool", "sysctl"] {
            if sh::find_program(tool, None).is_none() {
                return Err(LabError::Missing(format!(
                    "`{tool}` is not installed (apt-get install iproute2 ethtool procps)"
                )));
            }
        }
        let bin_dir = find_bin_dir(opts.bin_dir.as_deref())?;
        if sh::find_program("clamd", None).is_none() {
            return Err(LabError::Missing(
                "clamd is not installed (apt-get install clamav-daemon)".into(),
            ));
        }
        if opts.dataplane == Dataplane::Nftables
            && !gateway_has_dataplane_flag(&bin_dir.join("stockade-gateway"))
        {
            return Err(LabError::Missing(format!(
                "{} has no nftables data plane yet (`stockade-gateway run --help` lists no --dataplane option); use --dataplane userspace",
                bin_dir.join("stockade-gateway").display()
            )));
        }
        let prometheus = opts.prometheus && sh::find_program("prometheus", None).is_some();
        if opts.prometheus && !prometheus {
            tracing::warn!("prometheus is not installed (apt-get install prometheus): the monitoring host runs without it");
        }
        if let Some(why) = self.presence()? {
            return Err(LabError::AlreadyUp {
                prefix: self.names.prefix().to_string(),
                why,
            });
        }
        let rules = render::rules_text(opts.rules.as_deref())?;
        self.fresh_state_dir()?;
        // Held until the root link has its address, so two `up`s never pick the same slot.
        let slot_lock = SlotLock::acquire()?;
        let mgmt = free_mgmt_slot()?;
        let mut st = LabState {
            prefix: self.names.prefix().to_string(),
            state_dir: self.state_dir.clone(),
            phase: Phase::Starting,
            dataplane: opts.dataplane,
            mgmt_net: mgmt.net,
            mgmt_slot: mgmt.slot,
            bin_dir,
            prometheus,
            auto_approve_ethics: opts.auto_approve_ethics,
            started_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        // create_new: a second `up` racing this one fails here.
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.state_file())
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => LabError::AlreadyUp {
                    prefix: self.names.prefix().to_string(),
                    why: "another `up` is running".into(),
                },
                _ => LabError::io("creating lab.json", e),
            })?;
        self.save_state(&st)?;

        let built = self.build(&mut st, &rules, slot_lock);
        match built {
            Ok(()) => {
                st.phase = Phase::Up;
                self.save_state(&st)?;
                let (healthy, unhealthy) = if st.prometheus {
                    self.wait_targets(&st, Duration::from_secs(45))
                } else {
                    (None, vec![])
                };
                Ok(UpReport {
                    state: st,
                    elapsed: start.elapsed(),
                    targets_healthy_after: healthy.map(|_| start.elapsed()),
                    unhealthy_targets: unhealthy,
                })
            }
            Err(e) => {
                if opts.keep_on_failure {
                    tracing::error!("up failed; leaving the lab in place (--keep-on-failure)");
                } else {
                    tracing::error!(error = %e, "up failed; tearing down what was built");
                    if let Err(d) = self.down() {
                        tracing::error!(error = %d, "teardown after the failed up");
                    }
                }
                Err(e)
            }
        }
    }

    /// Empties the state directory if it is the lab's (marker), refuses anything else.
    fn fresh_state_dir(&self) -> Result<(), LabError> {
        let d = &self.state_dir;
        if d.exists() {
            let nonempty = fs::read_dir(d)
                .map_err(|e| LabError::io(format!("reading {}", d.display()), e))?
                .next()
                .is_some();
            if nonempty && !d.join(MARKER).exists() {
                return Err(LabError::Invalid(format!(
                    "{} is not empty and is not a lab state directory (no {MARKER}); choose another --state-dir",
                    d.display()
                )));
            }
            fs::remove_dir_all(d)
                .map_err(|e| LabError::io(format!("clearing {}", d.display()), e))?;
        }
        for sub in ["", "run", "logs", "pki", "clamav-db"] {
            mkdir(&d.join(sub))?;
        }
        fs::write(
            d.join(MARKER),
            "state directory of stockade-lab; `stockade-lab up` wipes it\n",
        )
        .map_err(|e| LabError::io("writing the marker", e))
    }

    fn build(&self, st: &mut LabState, rules: &str, slot_lock: SlotLock) -> Result<(), LabError> {
        let mgmt = st.mgmt()?;
        tracing::info!(prefix = self.names.prefix(), mgmt = %mgmt.network(), "building the namespaces");
        netns::build(&self.names, &mgmt)?;
        drop(slot_lock);

        tracing::info!("generating the PKI and the configs");
        let pki = self.layout().pki();
        let mut args = vec!["pki".to_string(), pki.display().to_string()];
        for h in topology::hosts_with(Role::Service) {
            args.extend(["--service-name".into(), h.ip.to_string()]);
        }
        for h in topology::hosts_with(Role::Stock) {
            args.extend(["--stock-name".into(), h.ip.to_string()]);
        }
        sh::run(
            &st.bin_dir.join("stockade-service").display().to_string(),
            &args,
        )?;
        let settings = Settings {
            layout: self.layout(),
            mgmt,
            auto_approve_ethics: st.auto_approve_ethics,
        };
        for h in topology::HOSTS {
            mkdir(&self.layout().config_dir(h.name))?;
            match h.role {
                Role::Client => mkdir(&self.client_home(h.name))?,
                Role::Stock | Role::Service => mkdir(&self.layout().data_dir(h.name))?,
                Role::Monitor => mkdir(&self.layout().prometheus_data())?,
            }
            for f in render::host_files(&settings, &h)? {
                write(&f.path, &f.contents)?;
            }
        }
        mkdir(&self.layout().config_dir(topology::GATEWAY))?;
        write(
            &self.layout().clamav_db().join("stockade.ndb"),
            &render::signature_db()?,
        )?;
        write(&self.layout().rules(), rules)?;

        for d in self.daemons(st)? {
            self.start(&d)?;
        }
        Ok(())
    }

    fn start(&self, d: &DaemonSpec) -> Result<(), LabError> {
        let log = self.log_file(&d.name);
        let pid = daemon::spawn(&Spawn {
            name: d.name.clone(),
            ns: self.names.ns(d.host),
            program: d.program.clone(),
            args: d.args.clone(),
            env: vec![("RUST_LOG".into(), "info".into())],
            log: log.clone(),
            pid_file: self.pid_file(&d.name),
            cwd: self.state_dir.clone(),
        })?;
        daemon::wait_ready(&d.name, pid, &log, d.ready_timeout, || match &d.ready {
            Ready::Socket(p) | Ready::File(p) => p.exists(),
            Ready::Http(addr, path) => {
                metrics::http_get(*addr, path, Duration::from_secs(1)).is_ok()
            }
        })
    }

    /// Waits (bounded) for Prometheus to see every target up.
    fn wait_targets(&self, st: &LabState, timeout: Duration) -> (Option<()>, Vec<String>) {
        let start = Instant::now();
        let mut last = vec!["no answer from Prometheus".to_string()];
        while start.elapsed() < timeout {
            if let Ok(t) = prometheus_targets(st) {
                let down: Vec<String> = t
                    .iter()
                    .filter(|t| t.health != "up")
                    .map(|t| format!("{} {} ({}): {}", t.job, t.instance, t.health, t.last_error))
                    .collect();
                if down.is_empty() && !t.is_empty() {
                    return (Some(()), vec![]);
                }
                last = down;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        (None, last)
    }

    /// Stops every daemon by pid, then any other process left in the lab's namespaces, removes
    /// every namespace and link with the prefix. Safe to run twice, and after a crash.
    pub fn down(&self) -> Result<DownReport, LabError> {
        require_root()?;
        let mut report = DownReport::default();
        for name in daemon_names().iter().rev() {
            let pid_file = self.pid_file(name);
            if let Some(pid) = daemon::read_pid(&pid_file) {
                if daemon::is_ours(pid, program_name(name)) {
                    let killed = daemon::stop(pid, Duration::from_secs(10));
                    tracing::info!(daemon = %name, pid, killed, "stopped");
                    report.stopped.push(format!("{name} (pid {pid})"));
                }
            }
            let _ = fs::remove_file(&pid_file);
            let _ = fs::remove_file(self.ready_file(name));
        }
        // Whatever else runs in our namespaces was started in them through the lab (`exec`,
        // an interrupted `up` or `demo`): the namespaces are the lab's, so are the processes.
        for ns in netns::lab_namespaces(&self.names)? {
            for pid in netns::ns_pids(&ns) {
                daemon::stop(pid, Duration::from_secs(5));
                report.killed_stray.push(pid);
            }
        }
        report.removed = netns::teardown(&self.names)?;
        if self.state_file().exists() {
            fs::remove_file(self.state_file()).map_err(|e| LabError::io("removing lab.json", e))?;
        }
        Ok(report)
    }

    /// `status`.
    pub fn status(&self) -> Result<Status, LabError> {
        let st = self.load_state()?;
        let mgmt = st.mgmt()?;
        let existing = netns::lab_namespaces(&self.names)?;
        let specs = self.daemons(&st)?;
        let daemon_status = |host: &str| -> Vec<DaemonStatus> {
            specs
                .iter()
                .filter(|d| d.host == host)
                .map(|d| {
                    let pid = daemon::read_pid(&self.pid_file(&d.name));
                    let running = pid.is_some_and(|p| daemon::is_ours(p, program_name(&d.name)));
                    DaemonStatus {
                        name: d.name.clone(),
                        pid,
                        state: match (pid, running) {
                            (None, _) => "not started",
                            (Some(_), true) => "running",
                            (Some(_), false) => "dead",
                        }
                        .into(),
                        log: self.log_file(&d.name),
                    }
                })
                .collect()
        };
        let mut hosts = vec![];
        for h in topology::HOSTS {
            let ns = self.names.ns(h.name);
            hosts.push(HostStatus {
                name: h.name.to_string(),
                namespace_exists: existing.contains(&ns),
                namespace: ns,
                address: Some(h.ip.to_string()),
                mac: Some(topology::mac_for(h.ip)),
                mgmt_address: mgmt.of(&h).map(|a| a.to_string()),
                daemons: daemon_status(h.name),
            });
        }
        let gw_ns = self.names.ns(topology::GATEWAY);
        hosts.push(HostStatus {
            name: topology::GATEWAY.into(),
            namespace_exists: existing.contains(&gw_ns),
            namespace: gw_ns,
            address: None,
            mac: None,
            mgmt_address: Some(mgmt.gateway().to_string()),
            daemons: daemon_status(topology::GATEWAY),
        });
        let gateway = gateway_counters(&mgmt);
        let prometheus = st.prometheus.then(|| {
            let url = format!(
                "http://{}:{}",
                mgmt.of(&topology::MONITOR)
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                topology::PROMETHEUS_PORT
            );
            match prometheus_targets(&st) {
                Ok(t) => PrometheusStatus {
                    url,
                    targets_up: t.iter().filter(|t| t.health == "up").count(),
                    targets: t,
                    error: None,
                },
                Err(e) => PrometheusStatus {
                    url,
                    targets_up: 0,
                    targets: vec![],
                    error: Some(e.to_string()),
                },
            }
        });
        Ok(Status {
            prefix: st.prefix.clone(),
            state_dir: st.state_dir.clone(),
            phase: st.phase,
            dataplane: st.dataplane,
            rules: self.layout().rules(),
            mgmt_network: format!("{}/{}", mgmt.network(), topology::MGMT_PREFIX_LEN),
            mgmt_root: mgmt.root().to_string(),
            hosts,
            gateway,
            prometheus,
        })
    }

    /// The environment of a command run in a host with `exec`: the binaries on PATH, and for a
    /// client everything `stockade` needs (variables already set by the caller win).
    pub fn exec_env(&self, st: &LabState, host: &str) -> Vec<(String, String)> {
        let mut env = vec![];
        let path = std::env::var("PATH").unwrap_or_default();
        env.push(("PATH".into(), format!("{}:{path}", st.bin_dir.display())));
        if let Some(h) = topology::host(host).filter(|h| h.role == Role::Client) {
            let vars = client_env(
                &self.client_home(h.name),
                &h,
                &topology::SERVICE1,
                &self.layout().pki().join("ca.pem"),
            );
            for (k, v) in vars {
                if std::env::var_os(&k).is_none() {
                    env.push((k, v));
                }
            }
        }
        env
    }

    /// `exec HOST -- CMD...`: runs a command in a host's namespace, with the terminal.
    pub fn exec(&self, host: &str, cmd: &[String]) -> Result<i32, LabError> {
        let st = self.load_state()?;
        let ns = self.host_ns(host)?;
        let (program, args) = cmd
            .split_first()
            .ok_or_else(|| LabError::Invalid("exec: no command given".into()))?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns])
            .arg(program)
            .args(args)
            .envs(self.exec_env(&st, host));
        if topology::host(host).is_some_and(|h| h.role == Role::Client) {
            c.current_dir(self.client_home(host));
        }
        let status = c
            .status()
            .map_err(|e| LabError::io(format!("running {program} in {ns}"), e))?;
        Ok(status.code().unwrap_or(128))
    }

    /// The namespace of a host name given on the command line.
    pub fn host_ns(&self, host: &str) -> Result<String, LabError> {
        if host == topology::GATEWAY || topology::host(host).is_some() {
            Ok(self.names.ns(host))
        } else {
            Err(LabError::Invalid(format!(
                "unknown host {host:?}; hosts: {}, gateway",
                topology::HOSTS.map(|h| h.name).join(", ")
            )))
        }
    }

    /// `logs HOST`: the log files of the daemons on a host (or of one daemon by name).
    pub fn log_files(&self, host_or_daemon: &str) -> Result<Vec<PathBuf>, LabError> {
        let names = daemon_names();
        if names.iter().any(|n| n == host_or_daemon) {
            return Ok(vec![self.log_file(host_or_daemon)]);
        }
        self.host_ns(host_or_daemon)?;
        let files: Vec<PathBuf> = names
            .iter()
            .filter(|n| daemon_host(n) == host_or_daemon)
            .map(|n| self.log_file(n))
            .filter(|p| p.exists())
            .collect();
        if files.is_empty() {
            return Err(LabError::Invalid(format!(
                "{host_or_daemon} runs no daemon of the lab (clients run `stockade` through `exec`)"
            )));
        }
        Ok(files)
    }

    /// `logs -f`: follows the files with `tail -F` (replaces this process).
    pub fn follow(files: &[PathBuf]) -> LabError {
        let err = Command::new("tail")
            .arg("-n")
            .arg("50")
            .arg("-F")
            .args(files)
            .exec();
        LabError::io("running tail -F", err)
    }
}

/// The host a daemon runs on.
fn daemon_host(daemon: &str) -> &str {
    match daemon {
        "gateway" => topology::GATEWAY,
        "prometheus" => topology::MONITOR.name,
        d => d.strip_prefix("clamd-").unwrap_or(d),
    }
}

/// The variables `stockade` reads, for a client of the lab.
pub fn client_env(home: &Path, client: &Host, service: &Host, ca: &Path) -> Vec<(String, String)> {
    vec![
        ("STOCKADE_HOME".into(), home.display().to_string()),
        ("STOCKADE_SERVICE".into(), render::service_url(service)),
        ("STOCKADE_CA".into(), ca.display().to_string()),
        ("STOCKADE_BIND".into(), client.ip.to_string()),
        // A lab key passphrase (the lab's keys protect nothing real).
        (
            "STOCKADE_PASSPHRASE".into(),
            format!("lab passphrase of {}", client.name),
        ),
    ]
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub prefix: String,
    pub state_dir: PathBuf,
    pub phase: Phase,
    pub dataplane: Dataplane,
    pub rules: PathBuf,
    pub mgmt_network: String,
    pub mgmt_root: String,
    pub hosts: Vec<HostStatus>,
    pub gateway: GatewayCounters,
    pub prometheus: Option<PrometheusStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub namespace: String,
    pub namespace_exists: bool,
    pub address: Option<String>,
    pub mac: Option<String>,
    pub mgmt_address: Option<String>,
    pub daemons: Vec<DaemonStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DaemonStatus {
    pub name: String,
    pub pid: Option<i32>,
    pub state: String,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct GatewayCounters {
    pub metrics_url: String,
    pub error: Option<String>,
    pub forwarded_packets: f64,
    pub dropped_packets: f64,
    /// Drops by reason (every reason, zeros included).
    pub drops: std::collections::BTreeMap<String, f64>,
    /// Forwarded packets by rule.
    pub forwarded_by_rule: std::collections::BTreeMap<String, f64>,
    pub conntrack_entries: f64,
    pub conntrack_limit: f64,
    pub rules_loaded: f64,
    pub reloads_ok: f64,
    pub reloads_error: f64,
    pub flows_revoked: f64,
}

/// The gateway's counters, read from its /metrics over the management link.
pub fn gateway_counters(mgmt: &Mgmt) -> GatewayCounters {
    let addr = SocketAddr::V4(SocketAddrV4::new(
        mgmt.gateway(),
        topology::GATEWAY_METRICS_PORT,
    ));
    let mut c = GatewayCounters {
        metrics_url: format!("http://{addr}/metrics"),
        ..Default::default()
    };
    match metrics::http_get(addr, "/metrics", Duration::from_secs(3)) {
        Ok(text) => {
            let s = metrics::parse(&text);
            c.forwarded_packets = metrics::sum(
                &s,
                "stockade_gateway_packets_total",
                &[("action", "forward")],
            );
            c.dropped_packets = metrics::sum(&s, "stockade_gateway_drops_total", &[]);
            c.drops = metrics::by_label(&s, "stockade_gateway_drops_total", "reason");
            c.forwarded_by_rule = s
                .iter()
                .filter(|x| {
                    x.name == "stockade_gateway_packets_total"
                        && x.labels.get("action").map(String::as_str) == Some("forward")
                })
                .fold(Default::default(), |mut m, x| {
                    let rule = x.labels.get("rule").cloned().unwrap_or_default();
                    *m.entry(rule).or_insert(0.0) += x.value;
                    m
                });
            c.conntrack_entries = metrics::sum(&s, "stockade_gateway_conntrack_entries", &[]);
            c.conntrack_limit = metrics::sum(&s, "stockade_gateway_conntrack_limit", &[]);
            c.rules_loaded = metrics::sum(&s, "stockade_gateway_rules_loaded", &[]);
            c.reloads_ok = metrics::sum(
                &s,
                "stockade_gateway_rules_reloads_total",
                &[("result", "ok")],
            );
            c.reloads_error = metrics::sum(
                &s,
                "stockade_gateway_rules_reloads_total",
                &[("result", "error")],
            );
            c.flows_revoked = metrics::sum(&s, "stockade_gateway_flows_revoked_total", &[]);
        }
        Err(e) => c.error = Some(e.to_string()),
    }
    c
}

#[derive(Debug, Clone, Serialize)]
pub struct PrometheusStatus {
    pub url: String,
    pub targets_up: usize,
    pub targets: Vec<Target>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub job: String,
    pub instance: String,
    pub health: String,
    pub last_error: String,
}

/// Prometheus' active targets (`/api/v1/targets`).
pub fn prometheus_targets(st: &LabState) -> Result<Vec<Target>, LabError> {
    let mgmt = st.mgmt()?;
    let ip = mgmt
        .of(&topology::MONITOR)
        .ok_or_else(|| LabError::Invalid("monitor without management address".into()))?;
    let body = metrics::http_get(
        SocketAddr::V4(SocketAddrV4::new(ip, topology::PROMETHEUS_PORT)),
        "/api/v1/targets?state=active",
        Duration::from_secs(3),
    )?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let targets = v["data"]["activeTargets"]
        .as_array()
        .ok_or_else(|| LabError::Http("Prometheus: no activeTargets".into()))?;
    Ok(targets
        .iter()
        .map(|t| Target {
            job: t["labels"]["job"].as_str().unwrap_or("").to_string(),
            instance: t["labels"]["instance"].as_str().unwrap_or("").to_string(),
            health: t["health"].as_str().unwrap_or("").to_string(),
            last_error: t["lastError"].as_str().unwrap_or("").to_string(),
        })
        .collect())
}

fn require_root() -> Result<(), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::Invalid(
            "the lab creates network namespaces: run it as root".into(),
        ));
    }
    Ok(())
}

/// The directory with all four stockade binaries.
fn find_bin_dir(explicit: Option<&Path>) -> Result<PathBuf, LabError> {
    const BINS: [&str; 4] = [
        "stockade-service",
        "stockade-stock",
        "stockade",
        "stockade-gateway",
    ];
    let first = sh::find_program(BINS[0], explicit).ok_or_else(|| {
        LabError::Missing(
            "stockade-service not found next to stockade-lab, in --bin-dir or on PATH; build with `cargo build --workspace --bins`"
                .into(),
        )
    })?;
    let dir = first
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    for b in BINS {
        if !dir.join(b).is_file() {
            return Err(LabError::Missing(format!(
                "{} is missing (build with `cargo build --workspace --bins`)",
                dir.join(b).display()
            )));
        }
    }
    Ok(dir)
}

/// Whether this gateway build selects its data plane with `--dataplane`.
fn gateway_has_dataplane_flag(gateway: &Path) -> bool {
    let mut c = Command::new(gateway);
    c.args(["run", "--help"]);
    matches!(sh::run_timeout(c, Duration::from_secs(10)), Ok(o) if o.stdout.contains("--dataplane"))
}

fn mkdir(p: &Path) -> Result<(), LabError> {
    fs::create_dir_all(p).map_err(|e| LabError::io(format!("creating {}", p.display()), e))
}

fn write(p: &Path, contents: &str) -> Result<(), LabError> {
    if let Some(d) = p.parent() {
        mkdir(d)?;
    }
    fs::write(p, contents).map_err(|e| LabError::io(format!("writing {}", p.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_daemon_has_a_program_and_a_host() {
        let names = daemon_names();
        assert_eq!(names.first().map(String::as_str), Some("clamd-service1"));
        for n in &names {
            let host = daemon_host(n);
            assert!(
                host == topology::GATEWAY || topology::host(host).is_some(),
                "{n} → {host}"
            );
        }
        assert_eq!(program_name("clamd-service2"), "clamd");
        assert_eq!(program_name("stock2"), "stockade-stock");
        assert_eq!(program_name("service1"), "stockade-service");
        assert_eq!(program_name("gateway"), "stockade-gateway");
        assert_eq!(program_name("prometheus"), "prometheus");
    }

    #[test]
    fn state_dir_without_marker_is_refused() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("precious"), "x").unwrap();
        let lab = Lab::new("t", Some(d.path().to_path_buf())).unwrap();
        assert!(lab.fresh_state_dir().is_err());
        assert!(d.path().join("precious").exists());
        fs::write(d.path().join(MARKER), "").unwrap();
        lab.fresh_state_dir().unwrap();
        assert!(!d.path().join("precious").exists());
        assert!(d.path().join("run").is_dir());
    }
}
