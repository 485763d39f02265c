//! The decision core: one pure function from (rules, packet, connection table) to a verdict.
//!
//! This is firewall 45 of JP H11-73391 taken literally: toward the stock server only the
//! service server's pinned address may open connections; the stock server may open the
//! one-way push (claim 1); replies of admitted connections pass; everything else is dropped
//! with a reason.

use std::time::Instant;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::net::IpAddr;

use crate::conntrack::{ConnTable, FlowKey, FlowState};
use crate::packet::{self, ArpInfo, IpPacket, MacAddr, Packet, PacketKind, Port, L4};
use crate::rules::{AddrInfo, FlowQuery, Policy, RuleAction, Ruleset};

/// Which way a packet crosses the gateway. Inbound = from the outside port toward the inside
/// (stock) port; outbound = from the inside port toward the outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Toward the inside port (the stock servers).
    Inbound,
    /// Toward the outside port (clients, service servers).
    Outbound,
}

impl Direction {
    /// Label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }

    /// The port a packet going this way arrives on.
    pub fn ingress(self) -> Port {
        match self {
            Direction::Inbound => Port::Outside,
            Direction::Outbound => Port::Inside,
        }
    }
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the data plane does with the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Send the frame unchanged out of the other port.
    Forward,
    /// Discard the frame.
    Drop,
}

impl Action {
    /// Label value for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Forward => "forward",
            Action::Drop => "drop",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a frame was dropped. Every drop has exactly one reason (the metric label set is closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// No accept rule admits this new connection (also used, with the rule named in the
    /// verdict, when an explicit `action: drop` rule matched).
    NoRule,
    /// The source cannot arrive on this port, or a pinned address came with another MAC.
    Spoofed,
    /// A packet that does not fit the tracked connection (mid-stream without a flow,
    /// out of the TCP window, an unrelated ICMP error...).
    InvalidState,
    /// The frame could not be parsed (and the malformed policy is `drop`).
    Malformed,
    /// An IP fragment (and the fragment policy did not let it pass).
    Fragment,
    /// The connection table is full; new connections are refused, established ones go on.
    ConntrackFull,
    /// Neither IPv4, IPv6 nor ARP (includes VLAN-tagged frames).
    NonIp,
    /// ARP or IPv6 neighbour discovery about an address the rules do not know.
    ArpUnknown,
    /// Payload from the outside side on a `one_way` connection (claim 1: a client cannot send
    /// the stock server a byte of data).
    OneWay,
    /// Bad IPv4 header or L4 (TCP/UDP/ICMP/ICMPv6) checksum.
    Checksum,
    /// Dropped by the kernel for another reason (nftables plane only).
    KernelOther,
}

impl DropReason {
    /// Every reason, in a stable order (for pre-registering metric labels).
    pub const ALL: [DropReason; 11] = [
        DropReason::NoRule,
        DropReason::Spoofed,
        DropReason::InvalidState,
        DropReason::Malformed,
        DropReason::Fragment,
        DropReason::ConntrackFull,
        DropReason::NonIp,
        DropReason::ArpUnknown,
        DropReason::OneWay,
        DropReason::Checksum,
        DropReason::KernelOther,
    ];

    /// The label value, exactly as in `stockade_gateway_drops_total{reason}`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::NoRule => "no_rule",
            DropReason::Spoofed => "spoofed",
            DropReason::InvalidState => "invalid_state",
            DropReason::Malformed => "malformed",
            DropReason::Fragment => "fragment",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::NonIp => "non_ip",
            DropReason::ArpUnknown => "arp_unknown",
            DropReason::OneWay => "one_way",
            DropReason::Checksum => "checksum",
            DropReason::KernelOther => "kernel_other",
        }
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome for one frame.
///
/// * `Forward` with `rule: Some(i)`: admitted by rule `i` (new connection or a tracked flow
///   that rule `i` admitted); `rule: None`: passed without a rule (ARP/NDP for known
///   addresses, or a fragment/malformed frame under a `forward` policy).
/// * `Drop`: `reason` is always `Some`; `rule` is `Some(i)` only when an explicit
///   `action: drop` rule matched (reason `no_rule`) or the flow's rule is involved
///   (`one_way`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    /// Forward or drop.
    pub action: Action,
    /// Index into [`Ruleset::rule_names`].
    pub rule: Option<usize>,
    /// Set exactly when `action` is `Drop`.
    pub reason: Option<DropReason>,
    /// Inbound when the frame arrived on the outside port.
    pub direction: Direction,
}

impl Verdict {
    /// A forward verdict.
    pub fn forward(direction: Direction, rule: Option<usize>) -> Self {
        Verdict {
            action: Action::Forward,
            rule,
            reason: None,
            direction,
        }
    }

    /// A drop verdict.
    pub fn drop(direction: Direction, reason: DropReason, rule: Option<usize>) -> Self {
        Verdict {
            action: Action::Drop,
            rule,
            reason: Some(reason),
            direction,
        }
    }

    /// True when the frame is to be forwarded.
    pub fn is_forward(&self) -> bool {
        self.action == Action::Forward
    }

    /// The rule's name, or "" when no rule decided (metric label for `rule`).
    pub fn rule_name<'r>(&self, rules: &'r Ruleset) -> &'r str {
        self.rule
            .and_then(|i| rules.rule_names().get(i))
            .map(String::as_str)
            .unwrap_or("")
    }
}

/// Parse a frame and decide it; a frame that cannot be parsed gets the `malformed` policy.
/// This is the entry point for data planes; the parsed packet is returned for logging.
pub fn decide_frame<'a>(
    now: Instant,
    rules: &Ruleset,
    frame: &'a [u8],
    port: Port,
    table: &mut ConnTable,
) -> (Verdict, Option<Packet<'a>>) {
    match packet::parse(frame, port) {
        Ok(pkt) => (decide(now, rules, &pkt, table), Some(pkt)),
        Err(reason) => {
            let dir = port.direction();
            let v = match rules.settings().malformed {
                Policy::Forward => Verdict::forward(dir, None),
                Policy::Drop => Verdict::drop(dir, reason, None),
            };
            (v, None)
        }
    }
}

/// Decide one parsed packet.
///
/// Order of checks: fragment policy; non-IP; ARP and neighbour discovery only for addresses
/// the rules know (`arp_unknown`); checksums, before any state changes (`checksum`);
/// anti-spoofing by port and MAC pin (`spoofed`); a tracked flow (forward, with the
/// `one_way` check and TCP window tracking); else the first matching rule for a packet that
/// may open a connection (`no_rule`, `invalid_state`, `conntrack_full`).
pub fn decide(now: Instant, rules: &Ruleset, pkt: &Packet, table: &mut ConnTable) -> Verdict {
    let dir = pkt.port.direction();
    match &pkt.kind {
        PacketKind::NonIp { .. } => Verdict::drop(dir, DropReason::NonIp, None),
        PacketKind::Arp(arp) => decide_arp(rules, pkt, arp),
        PacketKind::Ip(ip) => decide_ip(now, rules, pkt, ip, table),
    }
}

/// The source may arrive on this port, and with this MAC if it is pinned.
#[inline]
fn source_ok(src: &AddrInfo, port: Port, macs: &[MacAddr]) -> bool {
    let port_ok = match port {
        Port::Inside => src.inside,
        Port::Outside => !src.inside,
    };
    port_ok
        && match src.pin {
            Some(pinned) => macs.iter().all(|m| *m == pinned),
            None => true,
        }
}

fn decide_arp(rules: &Ruleset, pkt: &Packet, arp: &ArpInfo) -> Verdict {
    let dir = pkt.port.direction();
    let sender = rules.addr_info(IpAddr::V4(arp.sender_ip));
    // An ARP probe (RFC 5227) has sender 0.0.0.0; only its target must be known.
    let probe = arp.sender_ip.is_unspecified();
    if !rules.is_known(IpAddr::V4(arp.target_ip)) || (!probe && !sender.known) {
        return Verdict::drop(dir, DropReason::ArpUnknown, None);
    }
    if !probe && !source_ok(sender, pkt.port, &[pkt.src_mac, arp.sender_mac]) {
        return Verdict::drop(dir, DropReason::Spoofed, None);
    }
    Verdict::forward(dir, None)
}

fn decide_ip(
    now: Instant,
    rules: &Ruleset,
    pkt: &Packet,
    ip: &IpPacket,
    table: &mut ConnTable,
) -> Verdict {
    let dir = pkt.port.direction();
    let settings = rules.settings();
    let src_info = rules.addr_info(ip.src);

    if ip.fragment {
        // Fragments carry no ports to match; they may only follow a tracked two-way flow.
        let pass = settings.fragments == Policy::Forward
            && ip.checksum_ok
            && source_ok(src_info, pkt.port, &[pkt.src_mac])
            && table.pair_admits(ip.proto, ip.src, ip.dst);
        return if pass {
            Verdict::forward(dir, None)
        } else {
            Verdict::drop(dir, DropReason::Fragment, None)
        };
    }

    let icmp = match ip.l4 {
        L4::Icmp(i) => Some(i),
        _ => None,
    };

    // IPv6 neighbour discovery passes only for addresses the rules know; it never opens
    // a flow (DESIGN.md: "as far as the topology needs").
    if let Some(i) = icmp.filter(|i| i.is_ndp()) {
        let src_known = ip.src.is_unspecified() || src_info.known;
        let target_known = match i.icmp_type {
            135 | 136 => i.nd_target.is_some_and(|t| rules.is_known(IpAddr::V6(t))),
            // Router solicitations/advertisements and redirects: the topology has no router.
            _ => false,
        };
        if !src_known || !target_known {
            return Verdict::drop(dir, DropReason::ArpUnknown, None);
        }
        if !ip.checksum_ok {
            return Verdict::drop(dir, DropReason::Checksum, None);
        }
        if !ip.src.is_unspecified() && !source_ok(src_info, pkt.port, &[pkt.src_mac]) {
            return Verdict::drop(dir, DropReason::Spoofed, None);
        }
        return Verdict::forward(dir, None);
    }

    // Before any state change: a forged RST with a bad checksum never reaches the table.
    if !ip.checksum_ok {
        return Verdict::drop(dir, DropReason::Checksum, None);
    }
    if !source_ok(src_info, pkt.port, &[pkt.src_mac]) {
        return Verdict::drop(dir, DropReason::Spoofed, None);
    }

    // ICMP errors travel with the flow they quote.
    if let Some(i) = icmp.filter(|i| i.is_error()) {
        if let Some(e) = i.embedded {
            let key = FlowKey {
                proto: e.proto,
                src: e.src,
                dst: e.dst,
                src_port: e.src_port,
                dst_port: e.dst_port,
            };
            // The error goes back to the sender of the quoted packet.
            if e.dst != ip.dst && e.src == ip.dst {
                if let Some(hit) = table.lookup(&key, now) {
                    // The quoted packet must have come from the side this error goes to.
                    let quoted_port = if hit.from_orig {
                        hit.opened_on
                    } else {
                        hit.opened_on.other()
                    };
                    if quoted_port != pkt.port {
                        table.touch(hit.id, now);
                        return Verdict::forward(dir, Some(hit.rule));
                    }
                }
            }
        }
        let q = query(ip);
        return match rules.first_match(dir, &q) {
            Some(r) if rules.rules()[r].action == RuleAction::Accept => {
                Verdict::forward(dir, Some(r))
            }
            _ => Verdict::drop(dir, DropReason::InvalidState, None),
        };
    }

    let key = FlowKey::of(ip);
    let tcp = match ip.l4 {
        L4::Tcp(t) => Some(t),
        _ => None,
    };
    if let Some(hit) = table.lookup(&key, now) {
        // A SYN on a fully closed flow (both FINs acknowledged, or a RST) is a new connection
        // from whichever end sent it, as in the kernel's conntrack (TIME_WAIT: the entry goes
        // and the SYN is looked up again): the rules decide it afresh, so the responder cannot
        // open toward the opener on a just-closed tuple, and the opener reopens as before.
        let reopen = hit.state == FlowState::TcpClosed
            && tcp.is_some_and(|t| t.flags.syn() && !t.flags.ack());
        if reopen {
            table.remove(hit.id);
        } else {
            let expected_port = if hit.from_orig {
                hit.opened_on
            } else {
                hit.opened_on.other()
            };
            if pkt.port != expected_port {
                return Verdict::drop(dir, DropReason::Spoofed, None);
            }
            // Claim 1: on a one-way (push) connection the outside side sends nothing but
            // acknowledgments (`one_way::admits`: no data, options, urgent data or extra IP
            // headers that could carry any).
            if hit.one_way
                && pkt.port == Port::Outside
                && !crate::one_way::admits(ip, table.sent(hit.id, !hit.from_orig))
            {
                return Verdict::drop(dir, DropReason::OneWay, Some(hit.rule));
            }
            return match table.track(hit.id, hit.from_orig, ip, settings.tcp_window, now) {
                Ok(()) => Verdict::forward(dir, Some(hit.rule)),
                Err(reason) => Verdict::drop(dir, reason, None),
            };
        }
    }

    // No flow: only a packet that opens a connection may create state.
    let (opens, stateful) = match ip.l4 {
        L4::Tcp(t) => (
            t.flags.syn() && !t.flags.ack() && !t.flags.rst() && !t.flags.fin(),
            true,
        ),
        L4::Udp(_) | L4::Other => (true, true),
        L4::Icmp(i) if i.is_echo_request() => (true, true),
        L4::Icmp(i) if i.is_echo_reply() => (false, true),
        // Other informational ICMP (e.g. timestamp) is matched per packet, never tracked.
        L4::Icmp(_) => (true, false),
    };
    if !opens {
        return Verdict::drop(dir, DropReason::InvalidState, None);
    }
    let q = query(ip);
    let Some(r) = rules.first_match_with(dir, src_info, rules.addr_info(ip.dst), &q) else {
        return Verdict::drop(dir, DropReason::NoRule, None);
    };
    let rule = &rules.rules()[r];
    if rule.action == RuleAction::Drop {
        return Verdict::drop(dir, DropReason::NoRule, Some(r));
    }
    if !stateful {
        return Verdict::forward(dir, Some(r));
    }
    match table.insert(ip, pkt.port, r, rule.one_way, now) {
        Ok(_) => Verdict::forward(dir, Some(r)),
        Err(reason) => Verdict::drop(dir, reason, None),
    }
}

/// The rule-matching view of a packet.
#[inline]
fn query(ip: &IpPacket) -> FlowQuery {
    let (src_port, dst_port, icmp_type) = match ip.l4 {
        L4::Tcp(t) => (t.src_port, t.dst_port, None),
        L4::Udp(u) => (u.src_port, u.dst_port, None),
        L4::Icmp(i) => (0, 0, Some(i.icmp_type)),
        L4::Other => (0, 0, None),
    };
    FlowQuery {
        src: ip.src,
        dst: ip.dst,
        proto: ip.proto,
        src_port,
        dst_port,
        icmp_type,
    }
}

#[cfg(test)]
mod tests;
