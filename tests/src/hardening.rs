//! Runs a daemon with the restrictions of its packaged unit applied, without systemd (which
//! cannot run as PID 1 here): the unit's user (`setpriv --reuid/--regid`, no other groups), its
//! capabilities (bounding, inheritable and ambient sets), NoNewPrivileges, and its
//! SystemCallFilter= expanded by `systemd-analyze syscall-filter` and loaded with libseccomp
//! (`seccomp_exec.py`), failing other calls with the unit's SystemCallErrorNumber=.
//! The namespace settings (ProtectSystem=, PrivateUsers=, …) are not emulated; the VM smoke test
//! runs the units under systemd for real.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The restrictions a unit file puts on its process.
#[derive(Debug, Clone)]
pub struct Restriction {
    pub user: String,
    /// Capabilities (lowercase, without `cap_`) the process keeps: ambient and bounding.
    pub caps: Vec<String>,
    /// The expanded allow list, one call per line.
    pub allow_file: PathBuf,
    pub errno: i32,
}

fn values<'a>(unit: &'a str, key: &str) -> Vec<&'a str> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
        .collect()
}

/// `systemd-analyze syscall-filter @group`, nested groups expanded.
pub fn expand(group: &str, seen: &mut BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if !group.starts_with('@') {
        out.insert(group.to_string());
        return out;
    }
    if !seen.insert(group.to_string()) {
        return out;
    }
    let o = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager", group])
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    assert!(o.status.success(), "systemd-analyze syscall-filter {group}");
    for line in String::from_utf8_lossy(&o.stdout).lines().skip(1) {
        let name = line.trim();
        if name.is_empty() || name.starts_with('#') {
            continue;
        }
        out.extend(expand(name, seen));
    }
    out
}

impl Restriction {
    /// Reads `User=`, `AmbientCapabilities=`, `NoNewPrivileges=`, `SystemCallFilter=` and
    /// `SystemCallErrorNumber=` from a unit, and writes the allow list into `dir`.
    pub fn from_unit(unit: &str, dir: &Path) -> Self {
        let user = values(unit, "User")
            .first()
            .expect("the unit names its User=")
            .to_string();
        assert_eq!(
            values(unit, "NoNewPrivileges"),
            ["yes"],
            "NoNewPrivileges=yes"
        );
        let caps: Vec<String> = values(unit, "AmbientCapabilities")
            .iter()
            .flat_map(|v| v.split_whitespace())
            .map(|c| c.trim_start_matches("CAP_").to_lowercase())
            .collect();
        let bounding: Vec<String> = values(unit, "CapabilityBoundingSet")
            .iter()
            .flat_map(|v| v.split_whitespace())
            .map(|c| c.trim_start_matches("CAP_").to_lowercase())
            .collect();
        assert_eq!(caps, bounding, "ambient and bounding capabilities differ");
        // systemd's semantics: the first non-~ list is the allow list; ~ lines are removed from
        // it, later lines applying after earlier ones.
        let mut allow = BTreeSet::new();
        let mut seen = BTreeSet::new();
        for v in values(unit, "SystemCallFilter") {
            let (deny, list) = match v.strip_prefix('~') {
                Some(rest) => (true, rest),
                None => (false, v),
            };
            for g in list.split_whitespace() {
                seen.clear();
                let set = expand(g, &mut seen);
                if deny {
                    allow.retain(|c| !set.contains(c));
                } else {
                    allow.extend(set);
                }
            }
        }
        assert!(
            allow.contains("read") && allow.contains("execve"),
            "{allow:?}"
        );
        let errno = match values(unit, "SystemCallErrorNumber").first().copied() {
            Some("EPERM") => nix::errno::Errno::EPERM as i32,
            Some(other) => panic!("SystemCallErrorNumber={other}: not handled here"),
            None => panic!("the unit sets no SystemCallErrorNumber= (systemd would kill)"),
        };
        let allow_file = dir.join(format!("{user}.syscalls"));
        std::fs::write(
            &allow_file,
            allow.into_iter().collect::<Vec<_>>().join("\n") + "\n",
        )
        .unwrap();
        Restriction {
            user,
            caps,
            allow_file,
            errno,
        }
    }

    /// `program` under the restriction: setpriv, then the seccomp filter, then the program.
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("setpriv");
        let caps = |sign: &str| {
            std::iter::once("-all".to_string())
                .chain(self.caps.iter().map(|c| format!("{sign}{c}")))
                .collect::<Vec<_>>()
                .join(",")
        };
        cmd.args([
            "--reuid",
            &self.user,
            "--regid",
            &self.user,
            "--clear-groups",
        ])
        .args(["--inh-caps", &caps("+")])
        .args(["--ambient-caps", &caps("+")])
        .args(["--bounding-set", &caps("+")])
        .arg("--no-new-privs")
        .arg("--")
        .arg("/usr/bin/python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/seccomp_exec.py"))
        .arg(&self.allow_file)
        .arg(self.errno.to_string())
        .arg("--")
        .arg(program);
        cmd
    }
}

/// Whether the restricted daemons can run here: root, setpriv, systemd-analyze and Debian's
/// python3-seccomp. Under CI (`CI=true`) a missing one fails the calling test instead.
pub fn can_run() -> bool {
    let missing: Vec<&str> = [
        (nix::unistd::geteuid().is_root(), "root"),
        (
            std::process::Command::new("setpriv")
                .arg("--version")
                .output()
                .is_ok(),
            "setpriv (util-linux)",
        ),
        (
            std::process::Command::new("systemd-analyze")
                .arg("--version")
                .output()
                .is_ok(),
            "systemd-analyze (systemd)",
        ),
        (
            std::process::Command::new("/usr/bin/python3")
                .args(["-c", "import seccomp"])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false),
            "python3-seccomp",
        ),
    ]
    .into_iter()
    .filter(|(ok, _)| !ok)
    .map(|(_, what)| what)
    .collect();
    if missing.is_empty() {
        return true;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "cannot run the restricted daemons: missing {missing:?} (.ci/run installs them)"
    );
    eprintln!("SKIPPED: missing {missing:?}");
    false
}

/// Creates the daemon users from the packages' sysusers.d entries (idempotent).
pub fn ensure_users() {
    for (file, text) in stockade_lab::package::SYSUSERS {
        let mut child = Command::new("systemd-sysusers")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("systemd-sysusers (apt-get install systemd)");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "systemd-sysusers {file}");
    }
}

/// uid and gid of a user.
pub fn ids(user: &str) -> (u32, u32) {
    let u = nix::unistd::User::from_name(user)
        .unwrap()
        .unwrap_or_else(|| panic!("no user {user}"));
    (u.uid.as_raw(), u.gid.as_raw())
}
