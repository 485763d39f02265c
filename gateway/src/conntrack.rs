//! Connection tracking: TCP (handshake, FIN/RST teardown, pf-style sequence windows), UDP
//! pseudo-connections, ICMP/ICMPv6 echo pairs and other protocols' address pairs.
//!
//! The table is bounded: when it holds `limit` flows, new connections are refused
//! (`conntrack_full`) while established ones keep working. Every flow remembers the rule that
//! admitted it and whether that rule is `one_way` (claim 1 of JP H11-73391), so a reload can
//! revoke the flows the new rules no longer admit.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use serde::Serialize;

use crate::core::DropReason;
use crate::packet::{proto, IpPacket, Port, TcpInfo, L4};
use crate::rules::{FlowQuery, RuleAction, Ruleset, TcpWindow, Timeouts};

/// A flow's identity in the direction of the packet that opened it. For ICMP echo the
/// identifier is in `src_port` (request) and `dst_port` (reply), see
/// [`IpPacket::flow_ports`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    /// IP protocol.
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (or echo id).
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

impl Hash for FlowKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        // One 37-byte write instead of a dozen small ones: the (DoS-resistant, keyed) SipHash
        // of std costs per call. IPv4 is hashed as IPv4-mapped IPv6; equality stays exact.
        let v6 = |a: IpAddr| match a {
            IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
            IpAddr::V6(v) => v.octets(),
        };
        let mut b = [0u8; 37];
        b[0] = self.proto;
        b[1..17].copy_from_slice(&v6(self.src));
        b[17..33].copy_from_slice(&v6(self.dst));
        b[33..35].copy_from_slice(&self.src_port.to_be_bytes());
        b[35..37].copy_from_slice(&self.dst_port.to_be_bytes());
        h.write(&b);
    }
}

impl FlowKey {
    /// The key of a packet.
    pub fn of(ip: &IpPacket) -> FlowKey {
        let (src_port, dst_port) = ip.flow_ports();
        FlowKey {
            proto: ip.proto,
            src: ip.src,
            dst: ip.dst,
            src_port,
            dst_port,
        }
    }

    /// The same flow seen from the other end.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// A flow's state, as listed and as used for its timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    /// TCP handshake in progress.
    TcpOpening,
    /// TCP established.
    TcpEstablished,
    /// TCP, a FIN was seen.
    TcpClosing,
    /// TCP, both FINs acknowledged or a RST: late segments still match until it expires.
    TcpClosed,
    /// UDP, traffic one way only so far.
    UdpSingle,
    /// UDP, traffic both ways.
    UdpMultiple,
    /// ICMP/ICMPv6 echo.
    IcmpEcho,
    /// Another IP protocol (address pair only).
    Other,
}

impl FlowState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowState::TcpOpening => "tcp_opening",
            FlowState::TcpEstablished => "tcp_established",
            FlowState::TcpClosing => "tcp_closing",
            FlowState::TcpClosed => "tcp_closed",
            FlowState::UdpSingle => "udp_single",
            FlowState::UdpMultiple => "udp_multiple",
            FlowState::IcmpEcho => "icmp_echo",
            FlowState::Other => "other",
        }
    }
}

/// pf's per-peer TCP states (ordered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
enum TcpPeerState {
    #[default]
    Closed,
    SynSent,
    Established,
    Closing,
    FinWait2,
    TimeWait,
}

/// What the gateway knows of one end's sequence space (pf's `pf_state_peer`).
#[derive(Clone, Copy, Debug, Default)]
struct Peer {
    /// A packet from this end has been seen.
    init: bool,
    /// Highest sequence number sent + 1.
    seqlo: u32,
    /// The sequence number of this end's first data byte (after its SYN).
    first: u32,
    /// Highest sequence number the other end's window allows this end to send.
    seqhi: u32,
    /// Largest window this end advertised (in its own scaled units).
    max_win: u32,
    /// Window scale shift in use for this end's windows.
    wscale: u8,
    /// The end offered window scaling in its SYN (RFC 7323).
    wscale_offered: bool,
    state: TcpPeerState,
}

/// One tracked flow.
#[derive(Clone, Debug)]
struct Flow {
    key: FlowKey,
    opened_on: Port,
    rule: usize,
    one_way: bool,
    state: FlowState,
    created: Instant,
    last_seen: Instant,
    /// [originator, responder].
    peers: [Peer; 2],
    packets: [u64; 2],
}

/// What `conntrack list` shows for one flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowInfo {
    /// Protocol name.
    pub proto: &'static str,
    /// Originator address.
    pub src: IpAddr,
    /// Originator port (or echo id).
    pub src_port: u16,
    /// Responder address.
    pub dst: IpAddr,
    /// Responder port.
    pub dst_port: u16,
    /// State.
    pub state: FlowState,
    /// Index of the admitting rule in the ruleset in force.
    pub rule: usize,
    /// Its name ([`ConnTable::list_named`]; empty from [`ConnTable::list`]).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub rule_name: String,
    /// Opened under a `one_way` rule.
    pub one_way: bool,
    /// The port the opening packet arrived on.
    pub opened_on: Port,
    /// Seconds since it was opened.
    pub age_secs: u64,
    /// Seconds since its last packet.
    pub idle_secs: u64,
    /// Packets from the originator.
    pub packets_orig: u64,
    /// Packets from the responder.
    pub packets_reply: u64,
}

/// Handle of a flow inside the table (valid until the flow is removed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowId(u32);

/// The result of a lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit {
    /// The flow.
    pub id: FlowId,
    /// The packet travels in the originator's direction.
    pub from_orig: bool,
    /// Index of the admitting rule.
    pub rule: usize,
    /// Opened under a `one_way` rule.
    pub one_way: bool,
    /// The port the originator's packets arrive on.
    pub opened_on: Port,
    /// Current state.
    pub state: FlowState,
}

/// The bounded connection table.
#[derive(Debug)]
pub struct ConnTable {
    limit: usize,
    timeouts: Timeouts,
    /// Both orientations of every flow's key map to its slot.
    index: HashMap<FlowKey, u32>,
    slots: Vec<Option<Flow>>,
    free: Vec<u32>,
    /// (proto, lower address, higher address) -> (flows, one_way flows); for the fragment
    /// policy, which can only see addresses.
    pairs: HashMap<(u8, IpAddr, IpAddr), (u32, u32)>,
    len: usize,
}

/// pf's MAXACKWINDOW: a fudge factor for ACKs behind or ahead of what was seen.
const MAXACKWINDOW: u32 = 0xffff + 1500;
/// The `loose` window: segments within ±1 GiB of the tracked sequence are accepted.
const LOOSE_WINDOW: u32 = 1 << 30;

pub(crate) fn seq_geq(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}
pub(crate) fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

fn pair_key(proto: u8, a: IpAddr, b: IpAddr) -> (u8, IpAddr, IpAddr) {
    if a <= b {
        (proto, a, b)
    } else {
        (proto, b, a)
    }
}

impl ConnTable {
    /// An empty table holding at most `limit` flows.
    pub fn new(limit: usize, timeouts: Timeouts) -> Self {
        let cap = limit.min(1 << 16);
        ConnTable {
            limit,
            timeouts,
            index: HashMap::with_capacity(cap * 2),
            slots: Vec::with_capacity(cap),
            free: Vec::new(),
            pairs: HashMap::with_capacity(cap),
            len: 0,
        }
    }

    /// A table sized and timed as the rules' settings say.
    pub fn for_rules(rules: &Ruleset) -> Self {
        let s = rules.settings();
        ConnTable::new(s.conntrack_limit, s.timeouts)
    }

    /// Apply a new limit and timeouts (on reload). A lower limit does not evict flows; it
    /// refuses new ones until the table has drained below it.
    pub fn reconfigure(&mut self, limit: usize, timeouts: Timeouts) {
        self.limit = limit;
        self.timeouts = timeouts;
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The configured maximum.
    pub fn limit(&self) -> usize {
        self.limit
    }

    fn timeout(&self, state: FlowState) -> Duration {
        let t = &self.timeouts;
        Duration::from_secs(match state {
            FlowState::TcpOpening => t.tcp_opening,
            FlowState::TcpEstablished => t.tcp_established,
            FlowState::TcpClosing => t.tcp_closing,
            FlowState::TcpClosed => t.tcp_closed,
            FlowState::UdpSingle => t.udp_single,
            FlowState::UdpMultiple => t.udp_multiple,
            FlowState::IcmpEcho | FlowState::Other => t.icmp,
        })
    }

    fn expired(&self, f: &Flow, now: Instant) -> bool {
        now.saturating_duration_since(f.last_seen) > self.timeout(f.state)
    }

    /// Find the flow a packet with this key belongs to (either direction). An expired flow is
    /// removed and not returned.
    pub fn lookup(&mut self, key: &FlowKey, now: Instant) -> Option<Hit> {
        // The index holds both orientations of every flow.
        let slot = *self.index.get(key)?;
        let f = self.slots[slot as usize].as_ref()?;
        let from_orig = f.key == *key;
        if self.expired(f, now) {
            self.remove_slot(slot);
            return None;
        }
        Some(Hit {
            id: FlowId(slot),
            from_orig,
            rule: f.rule,
            one_way: f.one_way,
            opened_on: f.opened_on,
            state: f.state,
        })
    }

    /// Open a flow for the first packet of a connection admitted by `rule`.
    pub fn insert(
        &mut self,
        ip: &IpPacket,
        opened_on: Port,
        rule: usize,
        one_way: bool,
        now: Instant,
    ) -> Result<FlowId, DropReason> {
        if self.len >= self.limit {
            return Err(DropReason::ConntrackFull);
        }
        let key = FlowKey::of(ip);
        let mut peers = [Peer::default(); 2];
        let state = match ip.l4 {
            L4::Tcp(t) => {
                let o = &mut peers[0];
                o.init = true;
                o.wscale_offered = t.flags.syn() && t.wscale.is_some();
                o.wscale = t.wscale.unwrap_or(0);
                // The window of a SYN is never scaled; keep max_win in this end's scaled units.
                let win = u32::from(t.window);
                o.max_win = if o.wscale_offered {
                    (win + (1 << o.wscale) - 1) >> o.wscale
                } else {
                    win
                }
                .max(1);
                let end = t
                    .seq
                    .wrapping_add(ip.payload_len as u32)
                    .wrapping_add(u32::from(t.flags.syn()))
                    .wrapping_add(u32::from(t.flags.fin()));
                o.seqlo = end;
                o.first = t.seq.wrapping_add(u32::from(t.flags.syn()));
                o.seqhi = end.wrapping_add(1);
                o.state = TcpPeerState::SynSent;
                FlowState::TcpOpening
            }
            L4::Udp(_) => FlowState::UdpSingle,
            L4::Icmp(_) => FlowState::IcmpEcho,
            L4::Other => FlowState::Other,
        };
        let flow = Flow {
            key,
            opened_on,
            rule,
            one_way,
            state,
            created: now,
            last_seen: now,
            peers,
            packets: [1, 0],
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(flow);
                s
            }
            None => {
                self.slots.push(Some(flow));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key, slot);
        self.index.insert(key.reversed(), slot);
        let p = self
            .pairs
            .entry(pair_key(key.proto, key.src, key.dst))
            .or_default();
        p.0 += 1;
        p.1 += u32::from(one_way);
        self.len += 1;
        Ok(FlowId(slot))
    }

    /// Remove a flow.
    pub fn remove(&mut self, id: FlowId) {
        self.remove_slot(id.0);
    }

    fn remove_slot(&mut self, slot: u32) {
        let Some(f) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        self.index.remove(&f.key);
        self.index.remove(&f.key.reversed());
        let pk = pair_key(f.key.proto, f.key.src, f.key.dst);
        if let Some(p) = self.pairs.get_mut(&pk) {
            p.0 -= 1;
            p.1 -= u32::from(f.one_way);
            if p.0 == 0 {
                self.pairs.remove(&pk);
            }
        }
        self.free.push(slot);
        self.len -= 1;
    }

    /// True if a tracked flow that is not `one_way` joins these two addresses with this
    /// protocol (the `fragments: forward` policy).
    pub fn pair_admits(&self, proto: u8, a: IpAddr, b: IpAddr) -> bool {
        self.pairs
            .get(&pair_key(proto, a, b))
            .is_some_and(|&(n, one_way)| n > one_way)
    }

    /// Account a packet of an existing flow and advance its state. For TCP this runs the
    /// sequence window checks; a segment that fails them (e.g. an out-of-window RST) is
    /// `invalid_state` and changes nothing.
    pub fn track(
        &mut self,
        id: FlowId,
        from_orig: bool,
        ip: &IpPacket,
        window: TcpWindow,
        now: Instant,
    ) -> Result<(), DropReason> {
        let f = self.slots[id.0 as usize]
            .as_mut()
            .ok_or(DropReason::InvalidState)?;
        match ip.l4 {
            L4::Tcp(t) => {
                tcp_track(f, from_orig, &t, ip.payload_len, window)?;
                f.state = tcp_flow_state(&f.peers);
            }
            L4::Udp(_) => {
                if !from_orig {
                    f.state = FlowState::UdpMultiple;
                }
            }
            L4::Icmp(_) | L4::Other => {}
        }
        f.last_seen = now;
        f.packets[usize::from(!from_orig)] += 1;
        Ok(())
    }

    /// The sequence range `[first, next)` that one end of a TCP flow has sent (the originator's
    /// when `orig`), once a packet from it has been seen: what the other end may acknowledge
    /// or select (SACK).
    pub fn sent(&self, id: FlowId, orig: bool) -> Option<(u32, u32)> {
        let f = self.slots.get(id.0 as usize)?.as_ref()?;
        let p = &f.peers[usize::from(!orig)];
        p.init.then_some((p.first, p.seqlo))
    }

    /// Note a related packet (e.g. an ICMP error about the flow) without changing its state.
    pub fn touch(&mut self, id: FlowId, now: Instant) {
        if let Some(f) = self.slots[id.0 as usize].as_mut() {
            f.last_seen = now;
        }
    }

    /// Remove expired flows; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let dead: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                f.as_ref()
                    .filter(|f| self.expired(f, now))
                    .map(|_| i as u32)
            })
            .collect();
        for s in &dead {
            self.remove_slot(*s);
        }
        dead.len()
    }

    /// After a reload: keep the flows whose opening packet the new rules still accept (their
    /// rule index and `one_way` follow the new rules), remove the others. Returns how many
    /// were revoked. An address that may no longer arrive on the opening port is revoked too.
    /// Flows already expired at `now` are removed without being counted.
    pub fn revoke(&mut self, rules: &Ruleset, now: Instant) -> usize {
        let mut revoked = 0;
        for slot in 0..self.slots.len() {
            let Some(f) = self.slots[slot].as_ref() else {
                continue;
            };
            if self.expired(f, now) {
                self.remove_slot(slot as u32);
                continue;
            }
            let k = f.key;
            let src_inside = rules.is_inside_source(k.src);
            let port_ok = match f.opened_on {
                Port::Inside => src_inside,
                Port::Outside => !src_inside,
            };
            let icmp_type = match k.proto {
                proto::ICMP => Some(8),
                proto::ICMPV6 => Some(128),
                _ => None,
            };
            let q = FlowQuery {
                src: k.src,
                dst: k.dst,
                proto: k.proto,
                src_port: if icmp_type.is_some() { 0 } else { k.src_port },
                dst_port: if icmp_type.is_some() { 0 } else { k.dst_port },
                icmp_type,
            };
            let admitted = rules
                .first_match(f.opened_on.direction(), &q)
                .filter(|&i| rules.rules()[i].action == RuleAction::Accept);
            match admitted {
                Some(i) if port_ok => {
                    let one_way = rules.rules()[i].one_way;
                    let pk = pair_key(k.proto, k.src, k.dst);
                    let f = self.slots[slot].as_mut().expect("checked above");
                    if f.one_way != one_way {
                        if let Some(p) = self.pairs.get_mut(&pk) {
                            if one_way {
                                p.1 += 1;
                            } else {
                                p.1 -= 1;
                            }
                        }
                    }
                    f.rule = i;
                    f.one_way = one_way;
                }
                _ => {
                    self.remove_slot(slot as u32);
                    revoked += 1;
                }
            }
        }
        revoked
    }

    /// Every flow with its rule's name, sorted by originator address and port.
    pub fn list_named(&self, rules: &Ruleset) -> Vec<FlowInfo> {
        let mut v = self.list();
        for f in &mut v {
            f.rule_name = rules.rule_names().get(f.rule).cloned().unwrap_or_default();
        }
        v
    }

    /// Every flow, sorted by originator address and port.
    pub fn list(&self) -> Vec<FlowInfo> {
        let now = Instant::now();
        let mut v: Vec<FlowInfo> = self
            .slots
            .iter()
            .flatten()
            .map(|f| FlowInfo {
                proto: proto::name(f.key.proto),
                src: f.key.src,
                src_port: f.key.src_port,
                dst: f.key.dst,
                dst_port: f.key.dst_port,
                state: f.state,
                rule: f.rule,
                rule_name: String::new(),
                one_way: f.one_way,
                opened_on: f.opened_on,
                age_secs: now.saturating_duration_since(f.created).as_secs(),
                idle_secs: now.saturating_duration_since(f.last_seen).as_secs(),
                packets_orig: f.packets[0],
                packets_reply: f.packets[1],
            })
            .collect();
        v.sort_by_key(|f| (f.src, f.src_port, f.dst, f.dst_port));
        v
    }

    /// Remove every flow whose originator address is in `src` (all flows when `None`);
    /// returns how many.
    pub fn flush(&mut self, src: Option<IpNet>) -> usize {
        let doomed: Vec<u32> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, f)| {
                f.as_ref()
                    .filter(|f| src.is_none_or(|n| n.contains(&f.key.src)))
                    .map(|_| i as u32)
            })
            .collect();
        for s in &doomed {
            self.remove_slot(*s);
        }
        doomed.len()
    }
}

fn tcp_flow_state(p: &[Peer; 2]) -> FlowState {
    use TcpPeerState::*;
    let (a, b) = (p[0].state, p[1].state);
    if a == TimeWait || b == TimeWait || (a >= FinWait2 && b >= FinWait2) {
        FlowState::TcpClosed
    } else if a >= Closing || b >= Closing {
        FlowState::TcpClosing
    } else if a >= Established && b >= Established {
        FlowState::TcpEstablished
    } else {
        FlowState::TcpOpening
    }
}

/// pf's `pf_tcp_track_full`, without sequence modulation or scrubbing. `strict` is pf's
/// check; `loose` keeps the bookkeeping but accepts data within ±1 GiB and checks only that a
/// RST falls inside the receiver's window (never tearing a flow down on a blind RST).
fn tcp_track(
    f: &mut Flow,
    from_orig: bool,
    t: &TcpInfo,
    payload_len: usize,
    mode: TcpWindow,
) -> Result<(), DropReason> {
    let (a, b) = f.peers.split_at_mut(1);
    let (src, dst) = if from_orig {
        (&mut a[0], &mut b[0])
    } else {
        (&mut b[0], &mut a[0])
    };
    let flags = t.flags;
    let orig_seq = t.seq;
    let mut seq = t.seq;
    let mut ack = t.ack;
    let mut win = u32::from(t.window);
    let len = payload_len as u32;

    // Window scaling applies only once both ends offered it, and never to a SYN's window.
    let (mut sws, mut dws) = if src.wscale_offered && dst.wscale_offered && !flags.syn() {
        (src.wscale, dst.wscale)
    } else {
        (0, 0)
    };

    let mut end;
    let mut data_end;
    if !src.init {
        // First packet from this end (the responder's SYN-ACK, normally).
        if !flags.syn() && mode == TcpWindow::Strict {
            return Err(DropReason::InvalidState);
        }
        end = seq.wrapping_add(len);
        if flags.syn() {
            end = end.wrapping_add(1);
            if dst.wscale_offered {
                match t.wscale {
                    Some(s) => {
                        src.wscale_offered = true;
                        src.wscale = s;
                        sws = s;
                        win = (win + (1 << sws) - 1) >> sws;
                        dws = dst.wscale;
                    }
                    None => {
                        // The other end will not scale: undo the originator's.
                        dst.max_win = (dst.max_win << dst.wscale).min(0xffff);
                        dst.wscale = 0;
                        dst.wscale_offered = false;
                    }
                }
            }
        }
        data_end = end;
        if flags.fin() {
            end = end.wrapping_add(1);
        }
        src.init = true;
        src.seqlo = seq;
        src.first = if flags.syn() {
            seq.wrapping_add(1)
        } else {
            seq
        };
        if src.state < TcpPeerState::SynSent {
            src.state = TcpPeerState::SynSent;
        }
        let w = (dst.max_win << dws).max(1);
        if src.seqhi == 0 || seq_geq(end.wrapping_add(w), src.seqhi) {
            src.seqhi = end.wrapping_add(w);
        }
        if win > src.max_win {
            src.max_win = win;
        }
    } else {
        end = seq.wrapping_add(len);
        if flags.syn() {
            end = end.wrapping_add(1);
        }
        data_end = end;
        if flags.fin() {
            end = end.wrapping_add(1);
        }
    }

    if !flags.ack() || !dst.init || (ack == 0 && flags.rst()) {
        // No ACK to check (pf: let it pass the ack-skew check).
        ack = dst.seqlo;
    }
    if seq == end {
        // Ease sequencing restrictions on segments without data.
        seq = src.seqlo;
        end = seq;
        data_end = seq;
    }
    let ackskew = dst.seqlo.wrapping_sub(ack) as i32 as i64;
    let back = dst.max_win << dws;

    let rst_exact = orig_seq == src.seqlo
        || orig_seq == src.seqlo.wrapping_add(1)
        || orig_seq.wrapping_add(1) == src.seqlo;
    let ok = match mode {
        TcpWindow::Strict => {
            seq_geq(src.seqhi, data_end)
                && seq_geq(seq, src.seqlo.wrapping_sub(back))
                && ackskew >= -(MAXACKWINDOW as i64)
                && ackskew <= (i64::from(MAXACKWINDOW) << sws)
                && (!flags.rst() || rst_exact)
        }
        TcpWindow::Loose => {
            if flags.rst() {
                // Inside the receiver's window (RFC 5961's acceptance test, seen from the
                // middle): a blind RST elsewhere must not tear the flow down.
                rst_exact
                    || (seq_geq(orig_seq, src.seqlo.wrapping_sub(back.max(1)))
                        && seq_geq(src.seqhi, orig_seq))
            } else {
                seq_geq(src.seqhi.wrapping_add(LOOSE_WINDOW), data_end)
                    && seq_geq(seq, src.seqlo.wrapping_sub(LOOSE_WINDOW))
            }
        }
    };
    let ok = ok
        || (mode == TcpWindow::Strict
            && !flags.rst()
            && (dst.state < TcpPeerState::SynSent
                || dst.state >= TcpPeerState::FinWait2
                || src.state >= TcpPeerState::FinWait2)
            && seq_geq(src.seqhi.wrapping_add(MAXACKWINDOW), data_end)
            && seq_geq(seq, src.seqlo.wrapping_sub(MAXACKWINDOW)));
    if !ok {
        return Err(DropReason::InvalidState);
    }

    if src.max_win < win {
        src.max_win = win;
    }
    if seq_gt(end, src.seqlo) {
        src.seqlo = end;
    }
    let scaled = win << sws;
    // Only once the other end has been seen: before that `ack` is a stand-in (a retransmitted
    // SYN acknowledges nothing) and its seqhi must stay 0, the mark that lets its first packet
    // (the SYN-ACK) set its window whatever its ISN. A lost SYN must not break the handshake.
    if dst.init && seq_geq(ack.wrapping_add(scaled), dst.seqhi) {
        dst.seqhi = ack.wrapping_add(scaled.max(1));
    }

    if flags.syn() && src.state < TcpPeerState::SynSent {
        src.state = TcpPeerState::SynSent;
    }
    if flags.fin() && src.state < TcpPeerState::Closing {
        src.state = TcpPeerState::Closing;
    }
    if flags.ack() {
        if dst.state == TcpPeerState::SynSent {
            dst.state = TcpPeerState::Established;
        } else if dst.state == TcpPeerState::Closing {
            dst.state = TcpPeerState::FinWait2;
        }
    }
    if flags.rst() {
        src.state = TcpPeerState::TimeWait;
        dst.state = TcpPeerState::TimeWait;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
