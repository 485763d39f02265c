//! Preparing the two bridge ports (documented in README.md, "Port preparation").
//!
//! A gateway port is a wire, not a host: it carries no address (or the gateway would answer
//! ARP and send its own IPv6 NS/RS/MLD onto the data path), it receives every frame
//! (promiscuous), and the kernel must hand AF_PACKET the frames exactly as they were on the
//! wire: with GRO/LRO on, several segments arrive merged into one oversize frame that could not
//! be forwarded; GSO/TSO are turned off too so nothing on the gateway ever emits oversize frames.
//!
//! Setup writes the `disable_ipv6` sysctl directly and shells out to `ip` and `ethtool`
//! (iproute2 and ethtool must be installed); both are one-time steps at start-up.

use std::fs;
use std::path::Path;
use std::process::Command;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PortError {
    #[error("port {0}: no such interface")]
    NoSuchInterface(String),
    #[error(
        "port {port} carries address {addr}; a gateway port must carry no address \
         (is this the management interface?)"
    )]
    HasAddress { port: String, addr: String },
    #[error("port {port}: {what}: {detail}")]
    Setup {
        port: String,
        what: &'static str,
        detail: String,
    },
}

/// What `prepare` did, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedPort {
    pub name: String,
    pub index: u32,
    /// Offload features that `ethtool -k` still reports on (those marked `[fixed]` cannot change).
    pub offloads_left_on: Vec<String>,
    /// The port was promiscuous before `prepare` (an operator's capture, say): `release`
    /// leaves it so.
    pub promisc_before: bool,
}

/// Offloads that must be off (receive side: merged frames; send side: oversize frames).
const OFFLOADS: &[(&str, &str)] = &[
    ("gro", "generic-receive-offload"),
    ("lro", "large-receive-offload"),
    ("gso", "generic-segmentation-offload"),
    ("tso", "tcp-segmentation-offload"),
];

/// Receive-side offloads that make the plane unsafe if they stay on.
const MUST_BE_OFF: &[&str] = &["generic-receive-offload", "large-receive-offload"];

/// Prepares one port: refuses a port that carries an IPv4 or non-link-local IPv6 address,
/// sets `disable_ipv6=1`, brings the link up in promiscuous mode, turns the offloads off and
/// verifies that receive offloads are off.
pub fn prepare(name: &str) -> Result<PreparedPort, PortError> {
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| PortError::NoSuchInterface(name.to_string()))?;
    if let Some(ip) = iface.ips.iter().find(|ip| match ip.ip() {
        std::net::IpAddr::V4(_) => true,
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
    }) {
        return Err(PortError::HasAddress {
            port: name.to_string(),
            addr: ip.to_string(),
        });
    }

    let sysctl = Path::new("/proc/sys/net/ipv6/conf")
        .join(name)
        .join("disable_ipv6");
    if sysctl.exists() {
        fs::write(&sysctl, "1").map_err(|e| PortError::Setup {
            port: name.to_string(),
            what: "disable_ipv6",
            detail: e.to_string(),
        })?;
    }

    let promisc_before = u64::from(iface.flags) & libc::IFF_PROMISC as u64 != 0;
    run(
        name,
        "ip link set up promisc on",
        "ip",
        &["link", "set", "dev", name, "up", "promisc", "on"],
    )?;
    set_offloads(name)?;
    let left = offloads_on(name)?;
    if let Some(bad) = left.iter().find(|f| MUST_BE_OFF.contains(&f.as_str())) {
        return Err(PortError::Setup {
            port: name.to_string(),
            what: "offloads",
            detail: format!("{bad} is still on and cannot be changed"),
        });
    }
    Ok(PreparedPort {
        name: name.to_string(),
        index: iface.index,
        offloads_left_on: left,
        promisc_before,
    })
}

/// Undoes the promiscuous flag set by `prepare`, unless the port had it before (the link stays
/// up and address-free).
pub fn release(port: &PreparedPort) -> Result<(), PortError> {
    if port.promisc_before {
        return Ok(());
    }
    let name = &port.name;
    run(
        name,
        "ip link set promisc off",
        "ip",
        &["link", "set", "dev", name, "promisc", "off"],
    )
}

fn set_offloads(name: &str) -> Result<(), PortError> {
    let mut all = vec!["-K", name];
    for (short, _) in OFFLOADS {
        all.extend([*short, "off"]);
    }
    if run(name, "ethtool -K", "ethtool", &all).is_ok() {
        return Ok(());
    }
    // ethtool fails the whole call when one feature is fixed; set them one by one and let the
    // verification below decide whether what is left matters.
    for (short, _) in OFFLOADS {
        let _ = run(name, "ethtool -K", "ethtool", &["-K", name, short, "off"]);
    }
    Ok(())
}

/// Names of the watched offloads that `ethtool -k` reports as on.
fn offloads_on(name: &str) -> Result<Vec<String>, PortError> {
    let out = output(name, "ethtool -k", "ethtool", &["-k", name])?;
    Ok(parse_offloads_on(&out))
}

fn parse_offloads_on(ethtool_k: &str) -> Vec<String> {
    ethtool_k
        .lines()
        .filter_map(|line| {
            let (feature, value) = line.trim().split_once(':')?;
            let on = value.trim_start().starts_with("on");
            (on && OFFLOADS.iter().any(|(_, long)| *long == feature)).then(|| feature.to_string())
        })
        .collect()
}

fn run(port: &str, what: &'static str, prog: &str, args: &[&str]) -> Result<(), PortError> {
    output(port, what, prog, args).map(|_| ())
}

fn output(port: &str, what: &'static str, prog: &str, args: &[&str]) -> Result<String, PortError> {
    let err = |detail: String| PortError::Setup {
        port: port.to_string(),
        what,
        detail,
    };
    let out = Command::new(prog)
        .args(args)
        .output()
        .map_err(|e| err(format!("{prog}: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "{prog} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ethtool_feature_listing() {
        let listing = "Features for eth0:\nrx-checksumming: on\ntx-checksumming: on\n\
            tcp-segmentation-offload: on\n\ttx-tcp-segmentation: on\n\
            generic-segmentation-offload: off\ngeneric-receive-offload: on\n\
            large-receive-offload: off [fixed]\nrx-gro-hw: on\n";
        assert_eq!(
            parse_offloads_on(listing),
            vec![
                "tcp-segmentation-offload".to_string(),
                "generic-receive-offload".to_string()
            ]
        );
    }

    #[test]
    fn missing_port_is_an_error() {
        let err = prepare("sgw-no-such-if0").unwrap_err();
        assert!(matches!(err, PortError::NoSuchInterface(_)), "{err}");
    }
}
