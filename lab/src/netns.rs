//! The wiring: network namespaces, veth links and the three switch bridges.
//!
//! ```text
//!  client1 .101 ─┐                                        ┌─ stock1 .50
//!  client2 .220 ─┤                                        │
//!  service1 .110─┼─ sw-out (br0) ─ outside ┤gateway├ inside ─ sw-in (br0) ─┤
//!  service2 .111─┤                                        └─ stock2 .51
//!  monitor .10 ──┘
//!  root ns <prefix>-mg ─ sw-mgmt (br0) ─ gateway, monitor, service1, service2 (192.0.2.x/28)
//! ```
//!
//! Every namespace is `<prefix>-<name>`; the only interface in the root namespace is
//! `<prefix>-mg`. Hosts' data interfaces are called `data`, management interfaces `mgmt`.

use std::net::Ipv4Addr;

use crate::sh::{self, ip, ip_ns, sysctl_ns};
use crate::topology::{self, Host, Mgmt, Names, Segment};
use crate::LabError;

/// The name of a host's data interface and of its management interface.
pub const DATA_IF: &str = "data";
pub const MGMT_IF: &str = "mgmt";
/// The gateway's ports have fixed locally administered MACs ("45": firewall 45) so that VMs can
/// name them by MAC; they never send a frame of their own.
pub const GATEWAY_OUTSIDE_MAC: &str = "02:00:00:00:45:01";
pub const GATEWAY_INSIDE_MAC: &str = "02:00:00:00:45:02";

/// Namespaces that exist now (`ip netns list`).
pub fn list_namespaces() -> Result<Vec<String>, LabError> {
    let out = ip(&["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// This lab's namespaces that exist now.
pub fn lab_namespaces(names: &Names) -> Result<Vec<String>, LabError> {
    Ok(list_namespaces()?
        .into_iter()
        .filter(|n| names.owns_ns(n))
        .collect())
}

pub fn link_exists(name: &str) -> bool {
    sh::try_run("ip", ["link", "show", "dev", name])
}

/// Process ids inside a namespace (`ip netns pids`).
pub fn ns_pids(ns: &str) -> Vec<i32> {
    match ip(&["netns", "pids", ns]) {
        Ok(out) => out
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect(),
        Err(_) => vec![],
    }
}

/// The /28 slots of the documentation /24 `net` that the root namespace already uses (an
/// address or a route of another lab, or of the machine's own network).
pub fn used_mgmt_slots(net: Ipv4Addr) -> Result<Vec<u8>, LabError> {
    Ok(mgmt_slot_users(net)?.into_iter().map(|(s, _)| s).collect())
}

/// Each used /28 slot of `net` with what uses it (`192.0.2.2/24 (address)`, `192.0.2.0/24
/// (route)`), for an error that names the collision.
pub fn mgmt_slot_users(net: Ipv4Addr) -> Result<Vec<(u8, String)>, LabError> {
    let out = ip(&["-4", "-o", "addr", "show"])?;
    let mut slots = vec![];
    for line in out.lines() {
        let mut it = line.split_whitespace();
        while let Some(tok) = it.next() {
            if tok == "inet" {
                if let Some(addr) = it.next() {
                    let (a, len) = addr.split_once('/').unwrap_or((addr, "32"));
                    if let (Ok(a), Ok(len)) = (a.parse::<Ipv4Addr>(), len.parse::<u8>()) {
                        let user = format!("address {addr}");
                        slots.extend(
                            slots_covered(net, a, len)
                                .into_iter()
                                .map(|s| (s, user.clone())),
                        );
                    }
                }
            }
        }
    }
    let routes = ip(&["-4", "route", "show", "table", "all"]).unwrap_or_default();
    for line in routes.lines() {
        if let Some(dst) = line.split_whitespace().next() {
            let (a, len) = dst.split_once('/').unwrap_or((dst, "32"));
            if let (Ok(a), Ok(len)) = (a.parse::<Ipv4Addr>(), len.parse::<u8>()) {
                let user = format!("route {dst}");
                slots.extend(
                    slots_covered(net, a, len)
                        .into_iter()
                        .map(|s| (s, user.clone())),
                );
            }
        }
    }
    slots.sort();
    slots.dedup_by_key(|(s, _)| *s);
    Ok(slots)
}

/// The /28 slots of the /24 `net` that `a/len` overlaps.
fn slots_covered(net: Ipv4Addr, a: Ipv4Addr, len: u8) -> Vec<u8> {
    let net = u32::from(net);
    let mask = |l: u8| {
        if l == 0 {
            0
        } else {
            u32::MAX << (32 - l.min(32))
        }
    };
    let a = u32::from(a);
    if len <= 24 {
        // A route that covers all of the /24 (a default route does not count: it is not a
        // claim on the documentation range).
        if len > 0 && (a & mask(len)) == (net & mask(len)) {
            return (0..topology::MGMT_SLOTS).collect();
        }
        return vec![];
    }
    if (a & mask(24)) != net {
        return vec![];
    }
    let first = ((a & mask(len)) - net) / 16;
    let count = (1u32 << (32 - len)).div_ceil(16);
    (first..first + count).map(|s| s as u8).collect()
}

/// Builds the whole topology. On error the caller tears down what exists (`teardown`).
pub fn build(names: &Names, mgmt: &Mgmt) -> Result<(), LabError> {
    for ns in names.all_namespaces() {
        tracing::debug!(%ns, "namespace");
        ip(&["netns", "add", &ns])?;
        ip_ns(&ns, &["link", "set", "lo", "up"])?;
        // Nothing routes around the gateway: IP forwarding off everywhere. IPv4 only; no IPv6
        // chatter from any lab host. Multi-homed hosts answer ARP only on the interface that
        // carries the address.
        sysctl_ns(
            &ns,
            &[
                "net.ipv4.ip_forward=0",
                "net.ipv4.conf.all.forwarding=0",
                "net.ipv4.conf.default.forwarding=0",
                "net.ipv6.conf.all.forwarding=0",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
            ],
        )?;
    }
    for sw in [
        topology::SWITCH_OUTSIDE,
        topology::SWITCH_INSIDE,
        topology::SWITCH_MGMT,
    ] {
        let ns = names.ns(sw);
        ip_ns(&ns, &["link", "add", "name", "br0", "type", "bridge"])?;
        ip_ns(&ns, &["link", "set", "br0", "up"])?;
    }

    // The gateway: two ports without any address, and its management interface.
    let gw = names.ns(topology::GATEWAY);
    for (port, sw, mac) in [
        (
            topology::GATEWAY_OUTSIDE,
            topology::SWITCH_OUTSIDE,
            GATEWAY_OUTSIDE_MAC,
        ),
        (
            topology::GATEWAY_INSIDE,
            topology::SWITCH_INSIDE,
            GATEWAY_INSIDE_MAC,
        ),
    ] {
        let sw_ns = names.ns(sw);
        ip_ns(
            &gw,
            &[
                "link", "add", "name", port, "type", "veth", "peer", "name", "gateway", "netns",
                &sw_ns,
            ],
        )?;
        ip_ns(&gw, &["link", "set", port, "address", mac])?;
        // The gateway never speaks on its ports (no link-local address either).
        sysctl_ns(&gw, &[&format!("net.ipv6.conf.{port}.disable_ipv6=1")])?;
        ip_ns(&gw, &["link", "set", port, "up"])?;
        ip_ns(&sw_ns, &["link", "set", "gateway", "master", "br0", "up"])?;
    }
    attach_mgmt(names, &gw, topology::GATEWAY, mgmt.gateway())?;

    for h in topology::HOSTS {
        attach_data(names, &h)?;
        if let Some(addr) = mgmt.of(&h) {
            attach_mgmt(names, &names.ns(h.name), h.name, addr)?;
        }
    }

    // The root namespace's end of the management link (and nothing else in it).
    let link = names.root_link();
    let sw = names.ns(topology::SWITCH_MGMT);
    ip(&[
        "link", "add", "name", &link, "type", "veth", "peer", "name", "root", "netns", &sw,
    ])?;
    ip(&[
        "link",
        "set",
        &link,
        "address",
        &topology::mac_for(mgmt.root()),
    ])?;
    // Only this interface's IPv6 is switched off; the root namespace's settings are not ours.
    sh::run(
        "sysctl",
        ["-qw", &format!("net.ipv6.conf.{link}.disable_ipv6=1")],
    )?;
    ip(&[
        "addr",
        "add",
        &format!("{}/{}", mgmt.root(), topology::MGMT_PREFIX_LEN),
        "dev",
        &link,
    ])?;
    ip(&["link", "set", &link, "up"])?;
    tx_off(None, &link)?;
    ip_ns(&sw, &["link", "set", "root", "master", "br0", "up"])?;
    Ok(())
}

/// A host's data interface, plugged into its segment's switch.
fn attach_data(names: &Names, h: &Host) -> Result<(), LabError> {
    let ns = names.ns(h.name);
    let sw = names.ns(match h.segment {
        Segment::Outside => topology::SWITCH_OUTSIDE,
        Segment::Inside => topology::SWITCH_INSIDE,
    });
    ip_ns(
        &ns,
        &[
            "link", "add", "name", DATA_IF, "type", "veth", "peer", "name", h.name, "netns", &sw,
        ],
    )?;
    ip_ns(
        &ns,
        &["link", "set", DATA_IF, "address", &topology::mac_for(h.ip)],
    )?;
    ip_ns(
        &ns,
        &[
            "addr",
            "add",
            &format!("{}/{}", h.ip, topology::DATA_PREFIX_LEN),
            "dev",
            DATA_IF,
        ],
    )?;
    ip_ns(&ns, &["link", "set", DATA_IF, "up"])?;
    tx_off(Some(&ns), DATA_IF)?;
    ip_ns(&sw, &["link", "set", h.name, "master", "br0", "up"])?;
    Ok(())
}

/// A management interface, plugged into the management switch.
fn attach_mgmt(names: &Names, ns: &str, peer: &str, addr: Ipv4Addr) -> Result<(), LabError> {
    let sw = names.ns(topology::SWITCH_MGMT);
    ip_ns(
        ns,
        &[
            "link", "add", "name", MGMT_IF, "type", "veth", "peer", "name", peer, "netns", &sw,
        ],
    )?;
    ip_ns(
        ns,
        &["link", "set", MGMT_IF, "address", &topology::mac_for(addr)],
    )?;
    ip_ns(
        ns,
        &[
            "addr",
            "add",
            &format!("{addr}/{}", topology::MGMT_PREFIX_LEN),
            "dev",
            MGMT_IF,
        ],
    )?;
    ip_ns(ns, &["link", "set", MGMT_IF, "up"])?;
    tx_off(Some(ns), MGMT_IF)?;
    ip_ns(&sw, &["link", "set", peer, "master", "br0", "up"])?;
    Ok(())
}

/// Transmit checksum offload off on a host-side veth: a veth hands frames over with partial
/// checksums, and the gateway verifies every L4 checksum (they would all be `checksum` drops).
fn tx_off(ns: Option<&str>, dev: &str) -> Result<(), LabError> {
    match ns {
        Some(ns) => sh::in_ns(ns, "ethtool", &["-K", dev, "tx", "off"]).map(|_| ()),
        None => sh::run("ethtool", ["-K", dev, "tx", "off"]).map(|_| ()),
    }
}

/// Removes every namespace with the lab's prefix and its root link. Safe to run at any point
/// (nothing there: nothing to do). Returns what was removed.
pub fn teardown(names: &Names) -> Result<Vec<String>, LabError> {
    let mut removed = vec![];
    for ns in lab_namespaces(names)? {
        if sh::try_run("ip", ["netns", "delete", ns.as_str()]) {
            removed.push(ns);
        } else {
            return Err(LabError::Invalid(format!(
                "could not delete namespace {ns}"
            )));
        }
    }
    // Deleting sw-mgmt destroys the veth pair; delete the root end too if it was left alone
    // (a crash between creating it and moving its peer).
    // The kernel destroys a deleted namespace's devices asynchronously, so the root end may
    // vanish between the check and the delete: only a link that is still there is an error.
    let link = names.root_link();
    if link_exists(&link) {
        match ip(&["link", "delete", "dev", &link]) {
            Ok(_) => removed.push(link),
            Err(e) if link_exists(&link) => return Err(e),
            Err(_) => removed.push(link),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 0);

    #[test]
    fn slot_coverage() {
        assert_eq!(slots_covered(G, Ipv4Addr::new(192, 0, 2, 14), 28), vec![0]);
        assert_eq!(slots_covered(G, Ipv4Addr::new(192, 0, 2, 33), 32), vec![2]);
        assert_eq!(
            slots_covered(G, Ipv4Addr::new(192, 0, 2, 0), 27),
            vec![0, 1]
        );
        assert_eq!(slots_covered(G, Ipv4Addr::new(192, 0, 2, 0), 24).len(), 16);
        assert!(slots_covered(G, Ipv4Addr::new(0, 0, 0, 0), 0).is_empty());
        assert!(slots_covered(G, Ipv4Addr::new(10, 0, 0, 1), 8).is_empty());
        assert!(slots_covered(G, Ipv4Addr::new(198, 51, 100, 1), 32).is_empty());
        let t = Ipv4Addr::new(203, 0, 113, 0);
        assert_eq!(
            slots_covered(t, Ipv4Addr::new(203, 0, 113, 20), 28),
            vec![1]
        );
        assert!(slots_covered(t, Ipv4Addr::new(192, 0, 2, 2), 24).is_empty());
    }
}
