//! `stockade-gateway explain`: which rule (or drop reason) decides a given packet.
//!
//! It builds real frames with etherparse and runs them through [`crate::core::decide`] with
//! a fresh connection table, so the answer is the data plane's answer. For
//! `--state established` it first plays the connection's opening (the handshake, for TCP)
//! from whichever side the rules let open it, then decides the queried packet.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Instant;

use crate::conntrack::ConnTable;
use crate::core::{decide, Verdict};
use crate::packet::{self, MacAddr, Port, TcpFlags};
use crate::rules::{Protocol, Ruleset};
use crate::synth::{self, Endpoint, Segment};

/// Whether the queried packet opens a connection or belongs to one already open.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExplainState {
    /// The first packet of a connection (TCP SYN, UDP datagram, ICMP echo request).
    #[default]
    New,
    /// A data packet of an established connection.
    Established,
}

impl FromStr for ExplainState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "new" => Ok(ExplainState::New),
            "established" => Ok(ExplainState::Established),
            o => Err(format!("expected `new` or `established`, got `{o}`")),
        }
    }
}

impl fmt::Display for ExplainState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExplainState::New => "new",
            ExplainState::Established => "established",
        })
    }
}

/// The packet to explain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExplainQuery {
    /// The port it arrives on.
    pub iface: Port,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Protocol (`any` is explained as an unknown IP protocol, 253).
    pub proto: Protocol,
    /// Source port (default 40000); for ICMP the echo identifier.
    pub sport: Option<u16>,
    /// Destination port (default 0).
    pub dport: Option<u16>,
    /// New or established.
    pub state: ExplainState,
}

/// The answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    /// The question.
    pub query: ExplainQuery,
    /// The verdict, or why the query could not be turned into a packet.
    pub verdict: Result<Verdict, String>,
    /// The deciding rule's name, if a rule decided.
    pub rule_name: Option<String>,
    /// How the established connection was set up, or why it could not be.
    pub notes: Vec<String>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = &self.query;
        let ports = match q.proto {
            Protocol::Tcp | Protocol::Udp => format!(
                " {} -> {}",
                q.sport.unwrap_or(DEFAULT_SPORT),
                q.dport.unwrap_or(0)
            ),
            _ => String::new(),
        };
        writeln!(
            f,
            "packet: {} {} {} -> {}{} ({}) on {}",
            q.state,
            q.proto.as_str(),
            q.src,
            q.dst,
            ports,
            q.iface.direction(),
            q.iface
        )?;
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        match &self.verdict {
            Err(e) => writeln!(f, "error: {e}"),
            Ok(v) => {
                write!(f, "verdict: {}", v.action)?;
                if let Some(r) = v.reason {
                    write!(f, " reason={r}")?;
                }
                if let Some(name) = &self.rule_name {
                    write!(f, " rule={name}")?;
                }
                writeln!(f)
            }
        }
    }
}

const DEFAULT_SPORT: u16 = 40000;
/// An address no rule pins: stands in for a host whose MAC the rules do not fix.
const UNPINNED_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xfe]);
const ISN_SRC: u32 = 1_000;
const ISN_DST: u32 = 500_000;

struct Sim<'r> {
    rules: &'r Ruleset,
    table: ConnTable,
    now: Instant,
    src: Endpoint,
    dst: Endpoint,
}

impl Sim<'_> {
    /// Decide a frame from `from` (src or dst of the query) arriving on `port`.
    fn send(&mut self, from_src: bool, port: Port, seg: &Segment) -> Result<Verdict, String> {
        let (a, b) = if from_src {
            (self.src, self.dst)
        } else {
            (self.dst, self.src)
        };
        let frame = synth::frame(a, b, seg)?;
        let pkt = packet::parse(&frame, port)
            .map_err(|r| format!("the synthetic frame did not parse ({r})"))?;
        Ok(decide(self.now, self.rules, &pkt, &mut self.table))
    }
}

/// Explain how the rules decide the queried packet.
pub fn explain(rules: &Ruleset, query: ExplainQuery) -> Explanation {
    let mut notes = Vec::new();
    let endpoint = |ip: IpAddr| Endpoint {
        ip,
        mac: rules.pin(ip).unwrap_or(UNPINNED_MAC),
    };
    let mut sim = Sim {
        rules,
        table: ConnTable::for_rules(rules),
        now: Instant::now(),
        src: endpoint(query.src),
        dst: endpoint(query.dst),
    };
    let sport = query.sport.unwrap_or(DEFAULT_SPORT);
    let dport = query.dport.unwrap_or(0);
    let port = query.iface;
    let back = port.other();
    let v6 = query.src.is_ipv6();
    if query.proto == Protocol::Icmp && v6 || query.proto == Protocol::Icmpv6 && !v6 {
        notes.push(format!(
            "{} with {} addresses never matches anything",
            query.proto.as_str(),
            if v6 { "IPv6" } else { "IPv4" }
        ));
    }

    let verdict = match query.proto {
        Protocol::Tcp => explain_tcp(&mut sim, &query, sport, dport, &mut notes),
        Protocol::Udp => {
            let seg = |payload| Segment::Udp {
                sport,
                dport,
                payload,
            };
            let rev = Segment::Udp {
                sport: dport,
                dport: sport,
                payload: 16,
            };
            match query.state {
                ExplainState::New => sim.send(true, port, &seg(16)),
                ExplainState::Established => established(
                    &mut sim,
                    &mut notes,
                    &[(true, port, seg(16))],
                    &[(false, back, rev)],
                )
                .and_then(|_| sim.send(true, port, &seg(16))),
            }
        }
        Protocol::Icmp | Protocol::Icmpv6 => {
            let id = query.sport.unwrap_or(1);
            let echo = |request| Segment::Echo {
                request,
                id,
                seq: 1,
                payload: 56,
            };
            match query.state {
                ExplainState::New => sim.send(true, port, &echo(true)),
                ExplainState::Established => {
                    match established(
                        &mut sim,
                        &mut notes,
                        &[(true, port, echo(true))],
                        &[(false, back, echo(true))],
                    ) {
                        Ok(true) => sim.send(true, port, &echo(true)),
                        Ok(false) => sim.send(true, port, &echo(false)),
                        Err(e) => Err(e),
                    }
                }
            }
        }
        Protocol::Any => {
            notes.push("protocol `any`: explained as IP protocol 253 (experimental), which only `any` rules match".into());
            let seg = Segment::Raw {
                proto: 253,
                payload: 16,
            };
            match query.state {
                ExplainState::New => sim.send(true, port, &seg),
                ExplainState::Established => established(
                    &mut sim,
                    &mut notes,
                    &[(true, port, seg.clone())],
                    &[(false, back, seg.clone())],
                )
                .and_then(|_| sim.send(true, port, &seg)),
            }
        }
    };
    let rule_name = verdict
        .as_ref()
        .ok()
        .and_then(|v| v.rule)
        .map(|i| rules.rule_names()[i].clone());
    Explanation {
        query,
        verdict,
        rule_name,
        notes,
    }
}

/// Play an opening sequence from the query's source; if its first packet is not forwarded,
/// play the other one (from the destination). Ok(true) = opened by the source, Ok(false) =
/// opened by the destination or by neither (noted).
fn established(
    sim: &mut Sim,
    notes: &mut Vec<String>,
    by_src: &[(bool, Port, Segment)],
    by_dst: &[(bool, Port, Segment)],
) -> Result<bool, String> {
    for (opener_is_src, steps) in [(true, by_src), (false, by_dst)] {
        let mut all = true;
        for (from_src, port, seg) in steps {
            let v = sim.send(*from_src, *port, seg)?;
            if !v.is_forward() {
                all = false;
                break;
            }
        }
        if all {
            notes.push(format!(
                "connection opened by the {} ({}), as the rules allow",
                if opener_is_src {
                    "source"
                } else {
                    "destination"
                },
                if opener_is_src {
                    sim.src.ip
                } else {
                    sim.dst.ip
                }
            ));
            return Ok(opener_is_src);
        }
        sim.table.flush(None);
    }
    notes.push("no rule lets either side open this connection, so no flow exists".into());
    Ok(false)
}

fn explain_tcp(
    sim: &mut Sim,
    q: &ExplainQuery,
    sport: u16,
    dport: u16,
    notes: &mut Vec<String>,
) -> Result<Verdict, String> {
    let port = q.iface;
    let back = port.other();
    match q.state {
        ExplainState::New => sim.send(true, port, &Segment::syn(sport, dport, ISN_SRC)),
        ExplainState::Established => {
            let by_src = [
                (true, port, Segment::syn(sport, dport, ISN_SRC)),
                (false, back, syn_ack(dport, sport, ISN_DST, ISN_SRC + 1)),
                (
                    true,
                    port,
                    Segment::tcp(sport, dport, ISN_SRC + 1, ISN_DST + 1, 0, 0),
                ),
            ];
            let by_dst = [
                (false, back, Segment::syn(dport, sport, ISN_DST)),
                (true, port, syn_ack(sport, dport, ISN_SRC, ISN_DST + 1)),
                (
                    false,
                    back,
                    Segment::tcp(dport, sport, ISN_DST + 1, ISN_SRC + 1, 0, 0),
                ),
            ];
            established(sim, notes, &by_src, &by_dst)?;
            let data = Segment::tcp(sport, dport, ISN_SRC + 1, ISN_DST + 1, TcpFlags::PSH, 16);
            let v = sim.send(true, port, &data)?;
            if !v.is_forward() {
                // Tell apart "no data" (one_way) from "nothing at all".
                let ack = Segment::tcp(sport, dport, ISN_SRC + 1, ISN_DST + 1, 0, 0);
                if let Ok(a) = sim.send(true, port, &ack) {
                    notes.push(format!(
                        "a payload-free ACK on the same connection: {}{}",
                        a.action,
                        a.reason.map(|r| format!(" reason={r}")).unwrap_or_default()
                    ));
                }
            }
            notes.push("the explained packet is a 16-byte data segment".into());
            Ok(v)
        }
    }
}

fn syn_ack(sport: u16, dport: u16, seq: u32, ack: u32) -> Segment {
    Segment::Tcp {
        sport,
        dport,
        seq,
        ack: Some(ack),
        flags: TcpFlags::SYN,
        window: 65160,
        wscale: None,
        payload: 0,
    }
}

#[cfg(test)]
mod tests;
