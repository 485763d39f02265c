//! The gateway namespace's side of the nftables plane: the kernel bridge over the two ports and
//! the sysctls the ruleset depends on. Shells out to `ip` (iproute2), like `dataplane::ports`.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::NftError;

/// `bridge-nf-call-iptables` / `-ip6tables` in the calling process's network namespace.
const BRNF: [&str; 2] = [
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
];

/// br_netfilter must be present and pass bridged IPv4 and IPv6 through the inet hooks, or the
/// inet chain (where conntrack, and so all stateful filtering, happens) never sees a packet.
/// The sysctls are per network namespace since Linux 5.3 and default to 1 in a new one. A 0 is
/// an operator's decision (or a hardening script's), so it is refused, not overwritten. (The
/// bridge `gate` chain would drop everything in that state anyway: fail closed, but useless.)
pub fn check_br_netfilter() -> Result<(), NftError> {
    for path in BRNF {
        if !Path::new(path).exists() {
            // Try to load the module (it is built in on some kernels, a module on others).
            let _ = Command::new("modprobe").arg("br_netfilter").status();
        }
        let v = fs::read_to_string(path).map_err(|e| {
            NftError::Host(format!(
                "{path}: {e}: the nftables plane needs br_netfilter (modprobe br_netfilter)"
            ))
        })?;
        if v.trim() != "1" {
            return Err(NftError::Host(format!(
                "{path} is {}; the nftables plane filters bridged traffic in the inet family \
                 and needs it to be 1 in the gateway's namespace \
                 (sysctl -w net.bridge.{}=1)",
                v.trim(),
                path.rsplit('/').next().unwrap_or(path)
            )));
        }
    }
    Ok(())
}

/// Conntrack entries of this namespace (`nf_conntrack_count` is per namespace).
pub fn conntrack_count() -> Option<i64> {
    fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn ip(args: &[&str]) -> Result<(), NftError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| NftError::Host(format!("ip {}: {e}", args.join(" "))))?;
    if !out.status.success() {
        return Err(NftError::Host(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn exists(dev: &str) -> bool {
    Path::new("/sys/class/net").join(dev).exists()
}

fn disable_ipv6(dev: &str) -> Result<(), NftError> {
    let p = Path::new("/proc/sys/net/ipv6/conf")
        .join(dev)
        .join("disable_ipv6");
    if p.exists() {
        fs::write(&p, "1").map_err(|e| NftError::Host(format!("{}: {e}", p.display())))?;
    }
    Ok(())
}

/// Creates (or reuses, after a crash) the bridge, with no address and IPv6 off so the gateway
/// never speaks on the data path. STP stays off (the default), so ports forward at once.
pub fn ensure_bridge(bridge: &str) -> Result<(), NftError> {
    if !exists(bridge) {
        ip(&["link", "add", "name", bridge, "type", "bridge"])?;
    }
    disable_ipv6(bridge)?;
    ip(&["link", "set", "dev", bridge, "up"])
}

/// Makes `port` a member of `bridge`. Called only after the ruleset is in the kernel.
pub fn attach(bridge: &str, port: &str) -> Result<(), NftError> {
    disable_ipv6(port)?;
    ip(&["link", "set", "dev", port, "master", bridge, "up"])
}

/// Takes `port` out of any bridge (the first step of shutdown: a detached port forwards
/// nothing, whatever happens to the ruleset afterwards).
pub fn detach(port: &str) -> Result<(), NftError> {
    if !exists(port) {
        return Ok(());
    }
    ip(&["link", "set", "dev", port, "nomaster"])
}

/// Deletes the bridge (after the ports left it).
pub fn delete_bridge(bridge: &str) -> Result<(), NftError> {
    if !exists(bridge) {
        return Ok(());
    }
    ip(&["link", "del", "dev", bridge])
}

/// The conntrack timeouts of the rules' settings, as the namespace's sysctls (they are per
/// namespace and writable inside it, unlike `nf_conntrack_max`). Best effort: a kernel without
/// one of them keeps its default, and the caller logs what failed.
pub fn set_timeouts(t: &crate::rules::Timeouts) -> Vec<String> {
    let base = Path::new("/proc/sys/net/netfilter");
    let pairs: [(&str, u64); 9] = [
        ("nf_conntrack_tcp_timeout_syn_sent", t.tcp_opening),
        ("nf_conntrack_tcp_timeout_syn_recv", t.tcp_opening),
        ("nf_conntrack_tcp_timeout_established", t.tcp_established),
        ("nf_conntrack_tcp_timeout_fin_wait", t.tcp_closing),
        ("nf_conntrack_tcp_timeout_close_wait", t.tcp_closing),
        ("nf_conntrack_tcp_timeout_time_wait", t.tcp_closed),
        ("nf_conntrack_udp_timeout", t.udp_single),
        ("nf_conntrack_udp_timeout_stream", t.udp_multiple),
        ("nf_conntrack_icmp_timeout", t.icmp),
    ];
    let mut failed = Vec::new();
    for (name, v) in pairs
        .iter()
        .copied()
        .chain([("nf_conntrack_icmpv6_timeout", t.icmp)])
    {
        if let Err(e) = fs::write(base.join(name), v.to_string()) {
            failed.push(format!("{name}: {e}"));
        }
    }
    failed
}
