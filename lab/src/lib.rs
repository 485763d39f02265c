//! `stockade-lab`: the topology of JP H11-73391 (Fig. 1, Fig. 12) on one machine.
//!
//! Network namespaces for the clients, the service servers, the monitoring host, the gateway
//! and the stock servers behind it; a switch bridge per segment, each in its own namespace; a
//! management link from the root namespace; the real daemons with pid files and logs under one
//! state directory. The same templates also generate the Vagrant VMs' configs (`vagrant`).
//!
//! Modules: `topology` (hosts, addresses, names), `netns` (wiring), `render` (templates),
//! `daemon` (processes), `lab` (up, down, status, exec), `demo` (the story), `probe`,
//! `vagrant` (VM provisioning files), `package` (the Debian packages' units and users, which
//! the VMs run too), `metrics` (reading /metrics).

pub mod daemon;
pub mod demo;
pub mod lab;
pub mod metrics;
pub mod netns;
pub mod package;
pub mod probe;
pub mod render;
pub mod sh;
pub mod topology;
pub mod vagrant;
pub mod vm_hosts;

use std::path::PathBuf;

/// Everything that can go wrong in the lab, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed (exit {code:?}): {stderr}")]
    Command {
        cmd: String,
        code: Option<i32>,
        stderr: String,
    },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("template {file}: {message}")]
    Template { file: &'static str, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Missing(String),
    #[error(
        "lab {prefix:?} is already up ({why}); run `stockade-lab --prefix {prefix} down` first"
    )]
    AlreadyUp { prefix: String, why: String },
    #[error(
        "lab {prefix:?} is not up (no {state} found); run `stockade-lab --prefix {prefix} up`"
    )]
    NotUp { prefix: String, state: PathBuf },
    #[error("{name} {why}; log {log}:\n{tail}", log = log.display())]
    DaemonFailed {
        name: String,
        why: String,
        log: PathBuf,
        tail: String,
    },
    #[error("HTTP: {0}")]
    Http(String),
    #[error("demo step `{step}` did not go as the patent says: {detail}")]
    Demo { step: String, detail: String },
    #[error("state file: {0}")]
    State(#[from] serde_json::Error),
}

impl LabError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
