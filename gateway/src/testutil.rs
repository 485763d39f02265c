//! Helpers shared by the unit tests: the lab rules, lab hosts and a small "wire" that builds
//! real frames with etherparse and runs them through `decide`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use crate::conntrack::ConnTable;
use crate::core::{decide, decide_frame, Verdict};
use crate::packet::{MacAddr, Port};
use crate::rules::{self, RulesFile, Ruleset};
use crate::synth::{self, Endpoint, Segment};

pub const DEFAULT_YAML: &str = include_str!("../../rules/default.yaml");
pub const FIG1_YAML: &str = include_str!("../../rules/examples/patent-fig1.yaml");

/// The lab's fixed MAC for a host: 02:00:c6:33:64:<last octet>.
pub fn lab_mac(last: u8) -> MacAddr {
    MacAddr([0x02, 0x00, 0xc6, 0x33, 0x64, last])
}

/// 198.51.100.<last>.
pub fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 51, 100, last))
}

/// 2001:db8:64::<last as written in decimal digits>, as in rules/default.yaml.
pub fn v6(last: u16) -> IpAddr {
    let hex = u16::from_str_radix(&last.to_string(), 16).unwrap();
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x64, 0, 0, 0, 0, hex))
}

/// A lab host with its own MAC.
pub fn host(last: u8) -> Endpoint {
    Endpoint {
        mac: lab_mac(last),
        ip: v4(last),
    }
}

/// A lab host's IPv6 address with its MAC.
pub fn host6(last: u8) -> Endpoint {
    Endpoint {
        mac: lab_mac(last),
        ip: v6(u16::from(last)),
    }
}

pub const SERVICE: u8 = 110;
pub const SERVICE2: u8 = 111;
pub const STOCK: u8 = 50;
pub const STOCK2: u8 = 51;
pub const CLIENT1: u8 = 101;
pub const CLIENT2: u8 = 220;
pub const MONITOR: u8 = 10;

pub fn compile(yaml: &str) -> Ruleset {
    match rules::compile_str(yaml, "test.yaml") {
        Ok((_, rs)) => rs,
        Err(e) => panic!("{e}"),
    }
}

pub fn parse_file(yaml: &str) -> RulesFile {
    rules::load_str(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"))
}

/// The gateway between two ports, with a clock the test moves.
pub struct Wire {
    pub rules: Ruleset,
    pub table: ConnTable,
    pub now: Instant,
}

impl Wire {
    pub fn new(rules: Ruleset) -> Wire {
        let table = ConnTable::for_rules(&rules);
        Wire {
            rules,
            table,
            now: Instant::now(),
        }
    }

    pub fn lab() -> Wire {
        Wire::new(compile(DEFAULT_YAML))
    }

    pub fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
    }

    pub fn frame(&mut self, port: Port, frame: &[u8]) -> Verdict {
        decide_frame(self.now, &self.rules, frame, port, &mut self.table).0
    }

    pub fn send(&mut self, port: Port, src: Endpoint, dst: Endpoint, seg: Segment) -> Verdict {
        let f = synth::frame(src, dst, &seg).unwrap();
        let pkt = crate::packet::parse(&f, port).unwrap();
        decide(self.now, &self.rules, &pkt, &mut self.table)
    }

    pub fn rule(&self, v: &Verdict) -> Option<&str> {
        v.rule.map(|i| self.rules.rule_names()[i].as_str())
    }
}
