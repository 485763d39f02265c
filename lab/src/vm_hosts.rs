//! The story's hosts as the Vagrant VMs (`stockade-lab vm-demo`): commands over SSH with the
//! config `vagrant ssh-config` prints, run as root; files through SSH's standard input and
//! output. The story itself is `demo`'s, unchanged: the lab and the VMs run one story.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::demo::Hosts;
use crate::render::Layout;
use crate::topology::{Host, Mgmt};
use crate::vagrant::{self, BIN_DIR};
use crate::{sh, LabError};

/// Bound for one file copy to or from a VM (TCG guests are slow).
const COPY_TIMEOUT: Duration = Duration::from_secs(120);

pub struct VmHosts {
    ssh_config: PathBuf,
    mgmt: Mgmt,
    /// SSH connection sharing (one handshake per VM, not per command).
    control_dir: PathBuf,
}

impl VmHosts {
    /// From the rendered `topology.json` and `vagrant ssh-config`'s output.
    pub fn new(
        topology_json: &Path,
        ssh_config: &Path,
        control_dir: &Path,
    ) -> Result<Self, LabError> {
        let nets = vagrant::read_rendered(topology_json)?;
        std::fs::create_dir_all(control_dir)
            .map_err(|e| LabError::io(format!("creating {}", control_dir.display()), e))?;
        Ok(Self {
            ssh_config: ssh_config.to_path_buf(),
            mgmt: nets.mgmt,
            control_dir: control_dir.to_path_buf(),
        })
    }

    fn ssh(&self, host: &Host, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(&self.ssh_config)
            .args([
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=30",
                "-o",
                "ControlMaster=auto",
                "-o",
                "ControlPersist=120",
                "-o",
            ])
            .arg(format!("ControlPath={}/%C", self.control_dir.display()))
            .arg(host.name)
            .arg(remote);
        c
    }
}

impl VmHosts {
    /// Runs a file copy's remote `line` (bounded); its output, or an error naming the file.
    fn copy(
        &self,
        host: &Host,
        line: &str,
        input: Option<&[u8]>,
        what: &str,
        path: &Path,
    ) -> Result<Vec<u8>, LabError> {
        let c = sh::run_bytes(self.ssh(host, line), input, COPY_TIMEOUT)?;
        if c.code != Some(0) {
            return Err(LabError::Invalid(format!(
                "{what} {} on {}: {}",
                path.display(),
                host.name,
                String::from_utf8_lossy(&c.stderr).trim()
            )));
        }
        Ok(c.stdout)
    }
}

/// One word for the remote shell.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Hosts for VmHosts {
    fn command(
        &self,
        host: &Host,
        program: &str,
        args: &[String],
        env: &[(String, String)],
        dir: &Path,
    ) -> Command {
        // As root, in `dir` (which may be root's alone): the whole line goes to `sudo sh -c`.
        let mut line = format!("cd {} && exec env", quote(&dir.display().to_string()));
        for (k, v) in env {
            line.push(' ');
            line.push_str(&quote(&format!("{k}={v}")));
        }
        for a in std::iter::once(program).chain(args.iter().map(String::as_str)) {
            line.push(' ');
            line.push_str(&quote(a));
        }
        self.ssh(host, &format!("sudo sh -c {}", quote(&line)))
    }

    fn put(&self, host: &Host, path: &Path, bytes: &[u8]) -> Result<(), LabError> {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let line = format!(
            "sudo sh -c {}",
            quote(&format!(
                "mkdir -p -m 0700 {} && umask 077 && cat > {}",
                quote(&dir.display().to_string()),
                quote(&path.display().to_string())
            ))
        );
        self.copy(host, &line, Some(bytes), "writing", path)
            .map(drop)
    }

    fn get(&self, host: &Host, path: &Path) -> Result<Vec<u8>, LabError> {
        let line = format!("sudo cat {}", quote(&path.display().to_string()));
        self.copy(host, &line, None, "reading", path)
    }

    fn program(&self, name: &str) -> String {
        format!("{BIN_DIR}/{name}")
    }

    fn ca(&self) -> PathBuf {
        Layout::Vm.pki().join("ca.pem")
    }

    fn admin_socket(&self, service: &Host) -> PathBuf {
        Layout::Vm.admin_socket(service.name)
    }

    fn mgmt(&self) -> Result<Mgmt, LabError> {
        Ok(self.mgmt)
    }

    fn title(&self) -> String {
        "Stockade as Vagrant VMs: JP H11-73391 Fig. 1 / Fig. 12 through the gateway VM".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_the_remote_shell() {
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote("x'; echo injected; '$HOME")))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "x'; echo injected; '$HOME"
        );
    }
}
