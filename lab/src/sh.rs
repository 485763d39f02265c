//! Running the system tools the lab is built from.
//!
//! The lab shells out to iproute2 (`ip`), `ethtool` and `sysctl` instead of speaking netlink
//! itself: it is a runner, these are the tools an operator would type, every step shows up in
//! the debug log exactly as one could repeat it by hand, and no `unsafe` setns/netlink code is
//! needed. Every command has a bounded run time.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::LabError;

/// A finished command.
#[derive(Debug)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().to_string();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion (killed after `timeout`), capturing its output through files so
/// that a chatty child can never block on a full pipe.
pub fn run_timeout(cmd: Command, timeout: Duration) -> Result<Output, LabError> {
    let c = run_bytes(cmd, None, timeout)?;
    Ok(Output {
        code: c.code,
        stdout: String::from_utf8_lossy(&c.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&c.stderr).into_owned(),
    })
}

/// What [`run_bytes`] captured.
pub struct Captured {
    pub code: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// [`run_timeout`] with `input` as standard input, and the output as bytes.
pub fn run_bytes(
    mut cmd: Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Captured, LabError> {
    use std::io::{Seek, Write};
    let what = describe(&cmd);
    tracing::debug!(cmd = %what, "run");
    let out = tempfile_pair().map_err(|e| LabError::io("creating capture files", e))?;
    let stdin = match input {
        None => Stdio::null(),
        Some(bytes) => {
            let mut f = anon_file().map_err(|e| LabError::io("creating an input file", e))?;
            f.write_all(bytes)
                .and_then(|_| f.rewind())
                .map_err(|e| LabError::io("writing an input file", e))?;
            Stdio::from(f)
        }
    };
    cmd.stdin(stdin)
        .stdout(Stdio::from(
            out.0
                .try_clone()
                .map_err(|e| LabError::io("capture file", e))?,
        ))
        .stderr(Stdio::from(
            out.1
                .try_clone()
                .map_err(|e| LabError::io("capture file", e))?,
        ));
    let mut child = cmd
        .spawn()
        .map_err(|e| LabError::io(format!("starting {what}"), e))?;
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if start.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LabError::Timeout(format!("{what} (after {timeout:?})")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(LabError::io(format!("waiting for {what}"), e)),
        }
    };
    Ok(Captured {
        code: status.code(),
        stdout: read_back(out.0),
        stderr: read_back(out.1),
    })
}

fn tempfile_pair() -> std::io::Result<(std::fs::File, std::fs::File)> {
    Ok((anon_file()?, anon_file()?))
}

/// An unnamed temporary file (created, then unlinked at once).
fn anon_file() -> std::io::Result<std::fs::File> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir();
    loop {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".stockade-lab-{}-{n}", std::process::id()));
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => {
                std::fs::remove_file(&path)?;
                return Ok(f);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1_000_000 => continue,
            Err(e) => return Err(e),
        }
    }
}

fn read_back(mut f: std::fs::File) -> Vec<u8> {
    use std::io::{Read, Seek};
    let mut v = Vec::new();
    let _ = f.rewind();
    let _ = f.read_to_end(&mut v);
    v
}

/// Default bound for one configuration command.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs a command and fails unless it exits 0.
pub fn run<I, S>(program: &str, args: I) -> Result<String, LabError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    let what = describe(&cmd);
    let out = run_timeout(cmd, STEP_TIMEOUT)?;
    if !out.ok() {
        return Err(LabError::Command {
            cmd: what,
            code: out.code,
            stderr: out.stderr.trim().to_string(),
        });
    }
    Ok(out.stdout)
}

/// Runs a command whose failure is acceptable (cleanup); returns whether it succeeded.
pub fn try_run<I, S>(program: &str, args: I) -> bool
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(program);
    cmd.args(args);
    matches!(run_timeout(cmd, STEP_TIMEOUT), Ok(o) if o.ok())
}

/// `ip ARGS...`
pub fn ip(args: &[&str]) -> Result<String, LabError> {
    run("ip", args)
}

/// `ip -n NS ARGS...`
pub fn ip_ns(ns: &str, args: &[&str]) -> Result<String, LabError> {
    let mut v = vec!["-n", ns];
    v.extend_from_slice(args);
    run("ip", v)
}

/// `ip netns exec NS PROGRAM ARGS...`
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
    let mut v = vec!["netns", "exec", ns, program];
    v.extend_from_slice(args);
    run("ip", v)
}

/// `sysctl -qw KEY=VALUE...` inside a namespace.
pub fn sysctl_ns(ns: &str, settings: &[&str]) -> Result<(), LabError> {
    let mut v = vec!["-qw"];
    v.extend_from_slice(settings);
    in_ns(ns, "sysctl", &v).map(|_| ())
}

/// Finds a program: next to this executable (a cargo target directory), then on PATH.
pub fn find_program(name: &str, bin_dir: Option<&Path>) -> Option<std::path::PathBuf> {
    if let Some(d) = bin_dir {
        let p = d.join(name);
        return p.is_file().then_some(p);
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join(name);
        if p.is_file() {
            return Some(p);
        }
        // Test binaries live in target/<profile>/deps.
        if dir.file_name().is_some_and(|n| n == "deps") {
            if let Some(p) = dir.parent().map(|d| d.join(name)).filter(|p| p.is_file()) {
                return Some(p);
            }
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_captures_and_reports_failures() {
        assert_eq!(run("sh", ["-c", "echo hi"]).unwrap(), "hi\n");
        let e = run("sh", ["-c", "echo oops >&2; exit 3"]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("oops") && msg.contains('3'), "{msg}");
    }

    #[test]
    fn run_timeout_kills() {
        let mut c = Command::new("sleep");
        c.arg("5");
        let start = Instant::now();
        assert!(matches!(
            run_timeout(c, Duration::from_millis(200)),
            Err(LabError::Timeout(_))
        ));
        assert!(start.elapsed() < Duration::from_secs(3));
    }
}
