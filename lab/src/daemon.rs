//! Daemons as ordinary processes: started in a namespace with `ip netns exec` (which execs, so
//! the pid we get is the daemon's), detached into their own process group, with a pid file and
//! a log in the state directory; stopped by pid with SIGTERM, then SIGKILL.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::LabError;

/// How a daemon is started.
#[derive(Debug, Clone)]
pub struct Spawn {
    pub name: String,
    pub ns: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub pid_file: PathBuf,
    pub cwd: PathBuf,
}

/// Starts the daemon and writes its pid file. Returns the pid.
pub fn spawn(s: &Spawn) -> Result<i32, LabError> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&s.log)
        .map_err(|e| LabError::io(format!("opening {}", s.log.display()), e))?;
    let err = log.try_clone().map_err(|e| LabError::io("log file", e))?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &s.ns])
        .arg(&s.program)
        .args(&s.args)
        .envs(s.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&s.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(err))
        // Its own process group: a Ctrl-C on the terminal that ran `up` does not reach it.
        .process_group(0);
    let child = cmd
        .spawn()
        .map_err(|e| LabError::io(format!("starting {}", s.name), e))?;
    let pid = child.id() as i32;
    // The child is not waited for: it outlives this process (`down` stops it by pid).
    drop(child);
    write_pid(&s.pid_file, pid)?;
    tracing::info!(daemon = %s.name, pid, ns = %s.ns, "started");
    Ok(pid)
}

pub fn write_pid(path: &Path, pid: i32) -> Result<(), LabError> {
    fs::write(path, format!("{pid}\n"))
        .map_err(|e| LabError::io(format!("writing {}", path.display()), e))
}

pub fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// A process that exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

/// The program a process runs (argv[0]'s file name).
pub fn program_of(pid: i32) -> Option<String> {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next()?;
    let argv0 = String::from_utf8_lossy(argv0);
    Some(
        Path::new(argv0.as_ref())
            .file_name()?
            .to_string_lossy()
            .to_string(),
    )
}

/// Whether `pid` is still the daemon we started: alive and running `program` (or still `ip`,
/// in the instant before its exec). A recycled pid is never signalled.
pub fn is_ours(pid: i32, program: &str) -> bool {
    is_alive(pid)
        && program_of(pid).is_some_and(|p| {
            let want = Path::new(program)
                .file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default();
            p == want || p == "ip"
        })
}

/// SIGTERM, up to `grace` for it to exit, then SIGKILL. Returns whether it had to be killed.
pub fn stop(pid: i32, grace: Duration) -> bool {
    if !is_alive(pid) {
        return false;
    }
    let p = Pid::from_raw(pid);
    let _ = kill(p, Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if !is_alive(pid) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = kill(p, Signal::SIGKILL);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) && is_alive(pid) {
        std::thread::sleep(Duration::from_millis(25));
    }
    true
}

/// Whether a process's network namespace has a TCP socket listening on `ip:port` (read from
/// `/proc/PID/net/tcp`, which shows the sockets of the namespace the process is in, so no
/// setns is needed).
pub fn listening(pid: i32, ip: std::net::Ipv4Addr, port: u16) -> bool {
    // The kernel prints the address as the in-memory (network order) u32 in hex.
    let want = format!("{:08X}:{port:04X}", u32::from_le_bytes(ip.octets()));
    fs::read_to_string(format!("/proc/{pid}/net/tcp"))
        .map(|t| {
            t.lines().skip(1).any(|l| {
                let mut it = l.split_whitespace();
                let local = it.nth(1).unwrap_or("");
                let state = it.nth(1).unwrap_or("");
                local == want && state == "0A"
            })
        })
        .unwrap_or(false)
}

/// The last `n` lines of a log, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Waits until `ready` holds, failing early if the daemon dies.
pub fn wait_ready(
    name: &str,
    pid: i32,
    log: &Path,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> Result<(), LabError> {
    let start = Instant::now();
    loop {
        if ready() {
            tracing::info!(daemon = name, after = ?start.elapsed(), "ready");
            return Ok(());
        }
        if !is_alive(pid) {
            return Err(LabError::DaemonFailed {
                name: name.to_string(),
                why: "exited during start-up".into(),
                log: log.to_path_buf(),
                tail: log_tail(log, 15),
            });
        }
        if start.elapsed() >= timeout {
            return Err(LabError::DaemonFailed {
                name: name.to_string(),
                why: format!("not ready after {timeout:?}"),
                log: log.to_path_buf(),
                tail: log_tail(log, 15),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_and_identity() {
        let me = std::process::id() as i32;
        assert!(is_alive(me));
        assert!(!is_alive(0));
        assert!(!is_alive(i32::MAX));
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        // Between fork and exec the child still shows the test binary's command line.
        let start = Instant::now();
        while program_of(pid).as_deref() != Some("sleep")
            && start.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(is_ours(pid, "/usr/bin/sleep"));
        assert!(!is_ours(pid, "stockade-stock"));
        assert!(!stop(pid, Duration::from_secs(5)));
        // Not yet reaped: a zombie counts as gone.
        assert!(!is_alive(pid));
        child.wait().unwrap();
    }

    #[test]
    fn listening_reads_proc() {
        // An address of its own, so no other listener on the machine can match.
        let ip = std::net::Ipv4Addr::new(127, 83, 41, 7);
        let l = std::net::TcpListener::bind((ip, 0)).unwrap();
        let port = l.local_addr().unwrap().port();
        let me = std::process::id() as i32;
        assert!(listening(me, ip, port));
        assert!(!listening(
            me,
            std::net::Ipv4Addr::new(127, 83, 41, 8),
            port
        ));
        drop(l);
        // Another test of this process may fork while the listener is open: the child holds a
        // copy of the socket until its exec closes it (CLOEXEC), so allow it a moment.
        let start = std::time::Instant::now();
        while listening(me, ip, port) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "still listening after the listener was dropped"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
