//! The patent's topology (Fig. 1, Fig. 12) as data: hosts, addresses, MACs, ports and the
//! names the lab gives them. Everything here is documentation addresses (DESIGN.md).

use std::net::Ipv4Addr;

use crate::LabError;

/// The data segment shared by both sides of the transparent gateway.
pub const DATA_PREFIX_LEN: u8 = 24;
/// The management link: a documentation /24 (see `MGMT_NETS`), split into /28 slots so that
/// several labs (and the tests) can each have one in the root namespace without two routes for
/// the same addresses.
pub const MGMT_PREFIX_LEN: u8 = 28;
pub const MGMT_SLOTS: u8 = 16;

pub const SERVICE_PORT: u16 = 8443;
pub const SERVICE_METRICS_PORT: u16 = 9101;
pub const STOCK_API_PORT: u16 = 7443;
pub const STOCK_METRICS_PORT: u16 = 9443;
/// DESIGN.md: the push port on clients, always.
pub const PUSH_PORT: u16 = 7137;
pub const SHARE_PORT: u16 = 7138;
pub const GATEWAY_METRICS_PORT: u16 = 9464;
pub const PROMETHEUS_PORT: u16 = 9090;

/// The gateway's port names inside its namespace.
pub const GATEWAY_OUTSIDE: &str = "outside";
pub const GATEWAY_INSIDE: &str = "inside";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Service,
    Monitor,
    Stock,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Clients, service servers, the monitor: the gateway's outside port.
    Outside,
    /// Stock servers only: the gateway's inside port.
    Inside,
}

/// One host of the topology (the gateway is separate: it has ports, not an address).
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub name: &'static str,
    pub role: Role,
    pub ip: Ipv4Addr,
    pub segment: Segment,
    /// Offset of this host's management address in the lab's /28 slot; `None`: not on the
    /// management link (clients, and never a stock server).
    pub mgmt_offset: Option<u8>,
}

pub const CLIENT1: Host = Host {
    name: "client1",
    role: Role::Client,
    ip: Ipv4Addr::new(198, 51, 100, 101),
    segment: Segment::Outside,
    mgmt_offset: None,
};
pub const CLIENT2: Host = Host {
    name: "client2",
    role: Role::Client,
    ip: Ipv4Addr::new(198, 51, 100, 220),
    segment: Segment::Outside,
    mgmt_offset: None,
};
pub const SERVICE1: Host = Host {
    name: "service1",
    role: Role::Service,
    ip: Ipv4Addr::new(198, 51, 100, 110),
    segment: Segment::Outside,
    mgmt_offset: Some(3),
};
pub const SERVICE2: Host = Host {
    name: "service2",
    role: Role::Service,
    ip: Ipv4Addr::new(198, 51, 100, 111),
    segment: Segment::Outside,
    mgmt_offset: Some(4),
};
pub const MONITOR: Host = Host {
    name: "monitor",
    role: Role::Monitor,
    ip: Ipv4Addr::new(198, 51, 100, 10),
    segment: Segment::Outside,
    mgmt_offset: Some(2),
};
pub const STOCK1: Host = Host {
    name: "stock1",
    role: Role::Stock,
    ip: Ipv4Addr::new(198, 51, 100, 50),
    segment: Segment::Inside,
    mgmt_offset: None,
};
pub const STOCK2: Host = Host {
    name: "stock2",
    role: Role::Stock,
    ip: Ipv4Addr::new(198, 51, 100, 51),
    segment: Segment::Inside,
    mgmt_offset: None,
};

/// Every addressed host, in the order `up` builds them.
pub const HOSTS: [Host; 7] = [
    CLIENT1, CLIENT2, SERVICE1, SERVICE2, MONITOR, STOCK1, STOCK2,
];

/// The gateway's name and management offset.
pub const GATEWAY: &str = "gateway";
pub const GATEWAY_MGMT_OFFSET: u8 = 1;
/// The root namespace's (or the Vagrant host's) address on the management link.
pub const ROOT_MGMT_OFFSET: u8 = 14;

/// The three switches (bridges), each in its own namespace.
pub const SWITCH_OUTSIDE: &str = "sw-out";
pub const SWITCH_INSIDE: &str = "sw-in";
pub const SWITCH_MGMT: &str = "sw-mgmt";

pub fn host(name: &str) -> Option<Host> {
    HOSTS.iter().copied().find(|h| h.name == name)
}

pub fn hosts_with(role: Role) -> impl Iterator<Item = Host> {
    HOSTS.into_iter().filter(move |h| h.role == role)
}

/// DESIGN.md: every lab host has the MAC `02:00:c6:33:64:<last octet in hex>`, i.e. 02:00
/// followed by the four bytes of its IPv4 address; the management interfaces follow the same
/// rule with their 192.0.2.x address.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// The documentation /24s the management link may use, in order of preference: DESIGN.md's
/// 192.0.2.0/24, then 203.0.113.0/24 for machines whose own network already is 192.0.2.0/24
/// (the lab never adds a root-namespace route that overlaps an existing one).
pub const MGMT_NETS: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 0, 2, 0), Ipv4Addr::new(203, 0, 113, 0)];

/// The lab's management addresses: slot `s` of the /24 `net` is `net`.(16 s)/28.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mgmt {
    pub net: Ipv4Addr,
    pub slot: u8,
}

impl Mgmt {
    pub fn new(net: Ipv4Addr, slot: u8) -> Result<Self, LabError> {
        if slot >= MGMT_SLOTS {
            return Err(LabError::Invalid(format!(
                "management slot {slot} is outside 0..{MGMT_SLOTS}"
            )));
        }
        if !MGMT_NETS.contains(&net) {
            return Err(LabError::Invalid(format!(
                "management network {net}/24 is not one of the documentation ranges {MGMT_NETS:?}"
            )));
        }
        Ok(Self { net, slot })
    }

    pub fn addr(&self, offset: u8) -> Ipv4Addr {
        let o = self.net.octets();
        Ipv4Addr::new(o[0], o[1], o[2], self.slot * 16 + offset)
    }

    pub fn root(&self) -> Ipv4Addr {
        self.addr(ROOT_MGMT_OFFSET)
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.addr(GATEWAY_MGMT_OFFSET)
    }

    pub fn of(&self, host: &Host) -> Option<Ipv4Addr> {
        host.mgmt_offset.map(|o| self.addr(o))
    }

    pub fn network(&self) -> Ipv4Addr {
        self.addr(0)
    }

    /// Parses a slot written as `203.0.113.16/28` (a /28 of one of `MGMT_NETS`, on its boundary).
    pub fn parse_cidr(s: &str) -> Result<Self, LabError> {
        let bad = |why: &str| {
            LabError::Invalid(format!(
                "management network {s:?}: {why} (write a /28 of {}, e.g. 203.0.113.16/28)",
                MGMT_NETS.map(|n| format!("{n}/24")).join(" or ")
            ))
        };
        let (a, len) = s.split_once('/').ok_or_else(|| bad("no prefix length"))?;
        let a: Ipv4Addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
        if len != MGMT_PREFIX_LEN.to_string() {
            return Err(bad("not a /28"));
        }
        let o = a.octets();
        if !o[3].is_multiple_of(16) {
            return Err(bad("not on a /28 boundary"));
        }
        let net = Ipv4Addr::new(o[0], o[1], o[2], 0);
        if !MGMT_NETS.contains(&net) {
            return Err(bad("not in a documentation range"));
        }
        Self::new(net, o[3] / 16)
    }
}

impl std::fmt::Display for Mgmt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{MGMT_PREFIX_LEN}", self.network())
    }
}

/// The names of one lab: every namespace is `<prefix>-<name>`, and the only link in the root
/// namespace is `<prefix>-mg`, so two labs (or a lab and the tests) never collide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

/// Longest prefix: the root link `<prefix>-mg` must fit Linux's 15-byte interface names.
pub const MAX_PREFIX_LEN: usize = 12;

impl Names {
    pub fn new(prefix: &str) -> Result<Self, LabError> {
        let ok = !prefix.is_empty()
            && prefix.len() <= MAX_PREFIX_LEN
            && prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !ok {
            return Err(LabError::Invalid(format!(
                "prefix {prefix:?}: use 1 to {MAX_PREFIX_LEN} lowercase letters or digits, starting with a letter (no '-': it separates the prefix from the host)"
            )));
        }
        Ok(Self {
            prefix: prefix.to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespace of a host, the gateway or a switch.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// The root namespace's end of the management link.
    pub fn root_link(&self) -> String {
        format!("{}-mg", self.prefix)
    }

    /// Whether a namespace name belongs to this lab.
    pub fn owns_ns(&self, ns: &str) -> bool {
        ns.strip_prefix(&self.prefix)
            .is_some_and(|rest| rest.starts_with('-'))
    }

    /// Every namespace the lab creates.
    pub fn all_namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = [SWITCH_OUTSIDE, SWITCH_INSIDE, SWITCH_MGMT, GATEWAY]
            .iter()
            .map(|n| self.ns(n))
            .collect();
        v.extend(HOSTS.iter().map(|h| self.ns(h.name)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_follow_design() {
        assert_eq!(mac_for(SERVICE1.ip), "02:00:c6:33:64:6e");
        assert_eq!(mac_for(SERVICE2.ip), "02:00:c6:33:64:6f");
        assert_eq!(mac_for(MONITOR.ip), "02:00:c6:33:64:0a");
        assert_eq!(mac_for(CLIENT2.ip), "02:00:c6:33:64:dc");
        assert_eq!(mac_for(STOCK2.ip), "02:00:c6:33:64:33");
    }

    #[test]
    fn prefixes_are_checked_and_never_overlap() {
        assert!(Names::new("stockade").is_ok());
        assert!(Names::new("").is_err());
        assert!(Names::new("a-b").is_err());
        assert!(Names::new("Caps").is_err());
        assert!(Names::new("1abc").is_err());
        assert!(Names::new("abcdefghijklm").is_err());
        let n = Names::new("lab").unwrap();
        assert_eq!(n.root_link(), "lab-mg");
        assert!(n.root_link().len() <= 15);
        assert!(n.owns_ns("lab-client1"));
        assert!(!n.owns_ns("lab2-client1"));
        assert!(!n.owns_ns("labclient1"));
        assert_eq!(n.all_namespaces().len(), 11);
        assert!(Names::new("abcdefghijkl").unwrap().root_link().len() <= 15);
    }

    #[test]
    fn management_slots() {
        let m = Mgmt::new(MGMT_NETS[0], 0).unwrap();
        assert_eq!(m.gateway(), Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(m.root(), Ipv4Addr::new(192, 0, 2, 14));
        let m = Mgmt::new(MGMT_NETS[1], 3).unwrap();
        assert_eq!(m.of(&SERVICE2), Some(Ipv4Addr::new(203, 0, 113, 52)));
        assert_eq!(m.of(&STOCK1), None);
        assert!(Mgmt::new(MGMT_NETS[0], 16).is_err());
        assert!(Mgmt::new(Ipv4Addr::new(10, 0, 0, 0), 0).is_err());
    }

    #[test]
    fn management_slots_from_cidr() {
        let m = Mgmt::parse_cidr("203.0.113.16/28").unwrap();
        assert_eq!(m, Mgmt::new(MGMT_NETS[1], 1).unwrap());
        assert_eq!(m.to_string(), "203.0.113.16/28");
        assert_eq!(Mgmt::parse_cidr("192.0.2.0/28").unwrap().slot, 0);
        for bad in [
            "203.0.113.17/28",
            "203.0.113.16/24",
            "192.168.121.0/28",
            "10.0.0.0/28",
            "203.0.113.16",
            "x/28",
        ] {
            let e = Mgmt::parse_cidr(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
