//! Zero-copy frame parsing on top of etherparse.
//!
//! [`parse`] reads an Ethernet frame as it arrived on one of the two ports and returns the
//! fields the decision core needs, copied into a small fixed-size [`Packet`] (no heap
//! allocation per packet). The L4 checksum is verified here so that the core can refuse a
//! forged segment before it touches any state.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use etherparse::checksum::Sum16BitWords;
use etherparse::{Ethernet2Slice, IpSlice, TcpOptionElement, TcpSlice, UdpSlice};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::core::{Direction, DropReason};

pub mod options;
pub use options::{OptionLayout, SackBlocks};

/// IP protocol numbers the core knows by name.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;

    /// Short name for logs and `conntrack list`.
    pub fn name(p: u8) -> &'static str {
        match p {
            ICMP => "icmp",
            TCP => "tcp",
            UDP => "udp",
            ICMPV6 => "icmpv6",
            _ => "other",
        }
    }
}

/// One of the gateway's two ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Port {
    /// Clients and service servers (the internet/DMZ side).
    Outside,
    /// The stock servers.
    Inside,
}

impl Port {
    /// Label value for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Port::Outside => "outside",
            Port::Inside => "inside",
        }
    }

    /// The opposite port (where a forwarded frame leaves).
    pub fn other(self) -> Port {
        match self {
            Port::Outside => Port::Inside,
            Port::Inside => Port::Outside,
        }
    }

    /// The direction of a frame arriving on this port.
    pub fn direction(self) -> Direction {
        match self {
            Port::Outside => Direction::Inbound,
            Port::Inside => Direction::Outbound,
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "outside" => Ok(Port::Outside),
            "inside" => Ok(Port::Inside),
            other => Err(format!("expected `outside` or `inside`, got `{other}`")),
        }
    }
}

/// An Ethernet MAC address, written `02:00:c6:33:64:6e`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(|| {
                format!("expected a MAC address like 02:00:c6:33:64:6e, got `{s}`")
            })?;
            if p.len() != 2 {
                return Err(format!(
                    "expected a MAC address like 02:00:c6:33:64:6e, got `{s}`"
                ));
            }
            *b = u8::from_str_radix(p, 16)
                .map_err(|_| format!("expected a MAC address like 02:00:c6:33:64:6e, got `{s}`"))?;
        }
        if parts.next().is_some() {
            return Err(format!(
                "expected a MAC address like 02:00:c6:33:64:6e, got `{s}`"
            ));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for MacAddr {
    fn schema_name() -> String {
        "MacAddr".to_string()
    }
    fn json_schema(_: &mut schemars::gen::SchemaGenerator) -> schemars::schema::Schema {
        schemars::schema::SchemaObject {
            instance_type: Some(schemars::schema::InstanceType::String.into()),
            string: Some(Box::new(schemars::schema::StringValidation {
                pattern: Some("^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$".to_string()),
                ..Default::default()
            })),
            metadata: Some(Box::new(schemars::schema::Metadata {
                description: Some("An Ethernet MAC address, e.g. 02:00:c6:33:64:6e".to_string()),
                ..Default::default()
            })),
            ..Default::default()
        }
        .into()
    }
}

/// TCP flag bits as on the wire (low byte of the flags field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;

    /// True if all bits in `mask` are set.
    pub fn has(self, mask: u8) -> bool {
        self.0 & mask == mask
    }
    /// SYN set.
    pub fn syn(self) -> bool {
        self.has(Self::SYN)
    }
    /// ACK set.
    pub fn ack(self) -> bool {
        self.has(Self::ACK)
    }
    /// FIN set.
    pub fn fin(self) -> bool {
        self.has(Self::FIN)
    }
    /// RST set.
    pub fn rst(self) -> bool {
        self.has(Self::RST)
    }
}

/// The TCP fields connection tracking needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpInfo {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (meaningful when ACK is set).
    pub ack: u32,
    /// Raw (unscaled) window.
    pub window: u16,
    /// Flags.
    pub flags: TcpFlags,
    /// Window scale option (SYN segments only), clamped to 14 as RFC 7323 says.
    pub wscale: Option<u8>,
    /// Urgent pointer (meaningful with URG, but carried either way).
    pub urgent: u16,
    /// Bytes of options (4 x (data offset - 5)).
    pub options_len: u8,
    /// Their layout.
    pub layout: OptionLayout,
}

/// The UDP ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpInfo {
    /// Source port.
    pub src_port: u16,
    /// Destination port.
    pub dst_port: u16,
}

/// The 5-tuple of the packet quoted inside an ICMP error. For an embedded ICMP echo the
/// identifier is in `src_port` (see [`IpPacket::flow_ports`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embedded {
    /// Source of the original packet (the receiver of the error).
    pub src: IpAddr,
    /// Destination of the original packet.
    pub dst: IpAddr,
    /// IP protocol of the original packet.
    pub proto: u8,
    /// Source port (or echo identifier).
    pub src_port: u16,
    /// Destination port (0 for an echo).
    pub dst_port: u16,
}

/// ICMP or ICMPv6 fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpInfo {
    /// True for ICMPv6.
    pub v6: bool,
    /// Type.
    pub icmp_type: u8,
    /// Code.
    pub code: u8,
    /// Identifier of an echo request or reply.
    pub echo_id: Option<u16>,
    /// The quoted original packet of an error message, when it could be read.
    pub embedded: Option<Embedded>,
    /// Target address of an IPv6 neighbour solicitation or advertisement.
    pub nd_target: Option<Ipv6Addr>,
}

impl IcmpInfo {
    /// Echo request (ICMP 8 / ICMPv6 128).
    pub fn is_echo_request(&self) -> bool {
        self.icmp_type == if self.v6 { 128 } else { 8 }
    }
    /// Echo reply (ICMP 0 / ICMPv6 129).
    pub fn is_echo_reply(&self) -> bool {
        self.icmp_type == if self.v6 { 129 } else { 0 }
    }
    /// An error message that quotes another packet (v4: 3, 4, 5, 11, 12; v6: 1–4).
    pub fn is_error(&self) -> bool {
        if self.v6 {
            (1..=4).contains(&self.icmp_type)
        } else {
            matches!(self.icmp_type, 3 | 4 | 5 | 11 | 12)
        }
    }
    /// IPv6 neighbour discovery (router/neighbour solicitation/advertisement, redirect).
    pub fn is_ndp(&self) -> bool {
        self.v6 && (133..=137).contains(&self.icmp_type)
    }
}

/// The transport layer, as far as it was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP.
    Tcp(TcpInfo),
    /// UDP.
    Udp(UdpInfo),
    /// ICMP or ICMPv6.
    Icmp(IcmpInfo),
    /// Another protocol, or a fragment (whose transport header is not inspected).
    Other,
}

/// An IPv4 or IPv6 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpPacket {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number of the transport (after IPv6 extension headers).
    pub proto: u8,
    /// The payload is a fragment (any fragment, first or not).
    pub fragment: bool,
    /// IPv4 header and L4 checksums are correct (true where there is nothing to check).
    pub checksum_ok: bool,
    /// IPv4 options or IPv6 extension headers are present.
    pub header_extras: bool,
    /// Transport fields.
    pub l4: L4,
    /// Bytes of application payload (TCP/UDP data, ICMP data after the 8-byte header,
    /// the whole IP payload for other protocols).
    pub payload_len: usize,
}

impl IpPacket {
    /// The (source, destination) "ports" used as flow key: TCP/UDP ports; for an ICMP echo
    /// request (id, 0), for an echo reply (0, id), so that a reply's key is the reverse of its
    /// request's; (0, 0) otherwise.
    pub fn flow_ports(&self) -> (u16, u16) {
        match self.l4 {
            L4::Tcp(t) => (t.src_port, t.dst_port),
            L4::Udp(u) => (u.src_port, u.dst_port),
            L4::Icmp(i) => match i.echo_id {
                Some(id) if i.is_echo_request() => (id, 0),
                Some(id) => (0, id),
                None => (0, 0),
            },
            L4::Other => (0, 0),
        }
    }
}

/// An ARP packet for IPv4 over Ethernet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpInfo {
    /// 1 = request, 2 = reply.
    pub operation: u16,
    /// Sender hardware address.
    pub sender_mac: MacAddr,
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address.
    pub target_mac: MacAddr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

/// What the frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketKind {
    /// ARP (IPv4 over Ethernet).
    Arp(ArpInfo),
    /// IPv4 or IPv6.
    Ip(IpPacket),
    /// Anything else, including VLAN-tagged frames.
    NonIp {
        /// The outer EtherType.
        ether_type: u16,
    },
}

/// A parsed frame. Borrows the frame, owns only small copies of header fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The whole frame as received (forwarded unchanged).
    pub frame: &'a [u8],
    /// The port it arrived on.
    pub port: Port,
    /// Ethernet source.
    pub src_mac: MacAddr,
    /// Ethernet destination.
    pub dst_mac: MacAddr,
    /// Contents.
    pub kind: PacketKind,
}

impl Packet<'_> {
    /// The IP part, if any.
    pub fn ip(&self) -> Option<&IpPacket> {
        match &self.kind {
            PacketKind::Ip(ip) => Some(ip),
            _ => None,
        }
    }

    /// Direction of travel (inbound when it arrived on the outside port).
    pub fn direction(&self) -> Direction {
        self.port.direction()
    }
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_ARP: u16 = 0x0806;
const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Parse an Ethernet frame (without FCS) received on `port`.
///
/// Returns `Err(DropReason::Malformed)` when an Ethernet, ARP, IP or transport header is cut
/// short or inconsistent. Checksums are reported in [`IpPacket::checksum_ok`], not as an
/// error, so that the core decides the order of checks.
pub fn parse(frame: &[u8], port: Port) -> Result<Packet<'_>, DropReason> {
    let eth = Ethernet2Slice::from_slice_without_fcs(frame).map_err(|_| DropReason::Malformed)?;
    let ether_type = eth.ether_type().0;
    let payload = eth.payload().payload;
    let kind = match ether_type {
        ETHERTYPE_ARP => PacketKind::Arp(parse_arp(payload)?),
        ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => PacketKind::Ip(parse_ip(payload, ether_type)?),
        other => PacketKind::NonIp { ether_type: other },
    };
    Ok(Packet {
        frame,
        port,
        src_mac: MacAddr(eth.source()),
        dst_mac: MacAddr(eth.destination()),
        kind,
    })
}

fn parse_arp(p: &[u8]) -> Result<ArpInfo, DropReason> {
    // Ethernet/IPv4 ARP only: htype 1, ptype 0x0800, hlen 6, plen 4 (28 bytes).
    if p.len() < 28 || p[0..2] != [0, 1] || p[2..4] != [0x08, 0x00] || p[4] != 6 || p[5] != 4 {
        return Err(DropReason::Malformed);
    }
    let mac = |o: usize| MacAddr([p[o], p[o + 1], p[o + 2], p[o + 3], p[o + 4], p[o + 5]]);
    let ip = |o: usize| Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
    Ok(ArpInfo {
        operation: u16::from_be_bytes([p[6], p[7]]),
        sender_mac: mac(8),
        sender_ip: ip(14),
        target_mac: mac(18),
        target_ip: ip(24),
    })
}

fn parse_ip(p: &[u8], ether_type: u16) -> Result<IpPacket, DropReason> {
    let ip = IpSlice::from_slice(p).map_err(|_| DropReason::Malformed)?;
    let header_ok = match (&ip, ether_type) {
        (IpSlice::Ipv4(v4), ETHERTYPE_IPV4) => {
            Sum16BitWords::new()
                .add_slice(v4.header().slice())
                .ones_complement()
                == 0
        }
        (IpSlice::Ipv6(_), ETHERTYPE_IPV6) => true,
        // An IPv6 packet under the IPv4 EtherType or the reverse.
        _ => return Err(DropReason::Malformed),
    };
    let src = ip.source_addr();
    let dst = ip.destination_addr();
    let pl = ip.payload();
    let proto = pl.ip_number.0;
    let data = pl.payload;
    let mut pkt = IpPacket {
        src,
        dst,
        proto,
        fragment: pl.fragmented,
        checksum_ok: header_ok,
        header_extras: match &ip {
            IpSlice::Ipv4(v4) => v4.header().ihl() > 5,
            IpSlice::Ipv6(v6) => !v6.extensions().is_empty(),
        },
        l4: L4::Other,
        payload_len: data.len(),
    };
    if pl.fragmented {
        return Ok(pkt);
    }
    let pseudo = |len: usize| pseudo_header(src, dst, proto, len);
    match proto {
        proto::TCP => {
            let tcp = TcpSlice::from_slice(data).map_err(|_| DropReason::Malformed)?;
            let mut wscale = None;
            if tcp.syn() {
                for opt in tcp.options_iterator() {
                    match opt {
                        Ok(TcpOptionElement::WindowScale(s)) => wscale = Some(s.min(14)),
                        Ok(_) => {}
                        Err(_) => return Err(DropReason::Malformed),
                    }
                }
            }
            let mut flags = 0;
            for (set, bit) in [
                (tcp.fin(), TcpFlags::FIN),
                (tcp.syn(), TcpFlags::SYN),
                (tcp.rst(), TcpFlags::RST),
                (tcp.psh(), TcpFlags::PSH),
                (tcp.ack(), TcpFlags::ACK),
                (tcp.urg(), TcpFlags::URG),
            ] {
                if set {
                    flags |= bit;
                }
            }
            pkt.l4 = L4::Tcp(TcpInfo {
                src_port: tcp.source_port(),
                dst_port: tcp.destination_port(),
                seq: tcp.sequence_number(),
                ack: tcp.acknowledgment_number(),
                window: tcp.window_size(),
                flags: TcpFlags(flags),
                wscale,
                urgent: tcp.urgent_pointer(),
                options_len: tcp.options().len() as u8,
                layout: options::classify(tcp.options()),
            });
            pkt.payload_len = tcp.payload().len();
            pkt.checksum_ok &= pseudo(data.len()).add_slice(data).ones_complement() == 0;
        }
        proto::UDP => {
            let udp = UdpSlice::from_slice(data).map_err(|_| DropReason::Malformed)?;
            let seg = udp.slice();
            pkt.l4 = L4::Udp(UdpInfo {
                src_port: udp.source_port(),
                dst_port: udp.destination_port(),
            });
            pkt.payload_len = udp.payload().len();
            // A zero UDP checksum means "none" over IPv4 only (RFC 768 / RFC 8200 8.1).
            let ok = if udp.checksum() == 0 {
                src.is_ipv4()
            } else {
                pseudo(seg.len()).add_slice(seg).ones_complement() == 0
            };
            pkt.checksum_ok &= ok;
        }
        proto::ICMP | proto::ICMPV6 => {
            let v6 = proto == proto::ICMPV6;
            if v6 != src.is_ipv6() || data.len() < 8 {
                return Err(DropReason::Malformed);
            }
            let sum = if v6 {
                pseudo(data.len())
            } else {
                Sum16BitWords::new()
            };
            pkt.checksum_ok &= sum.add_slice(data).ones_complement() == 0;
            let mut info = IcmpInfo {
                v6,
                icmp_type: data[0],
                code: data[1],
                echo_id: None,
                embedded: None,
                nd_target: None,
            };
            if info.is_echo_request() || info.is_echo_reply() {
                info.echo_id = Some(u16::from_be_bytes([data[4], data[5]]));
            } else if info.is_error() {
                info.embedded = parse_embedded(&data[8..], v6);
            } else if v6 && (info.icmp_type == 135 || info.icmp_type == 136) {
                if data.len() < 24 {
                    return Err(DropReason::Malformed);
                }
                let mut t = [0u8; 16];
                t.copy_from_slice(&data[8..24]);
                info.nd_target = Some(Ipv6Addr::from(t));
            }
            pkt.payload_len = data.len() - 8;
            pkt.l4 = L4::Icmp(info);
        }
        _ => {}
    }
    Ok(pkt)
}

/// Sum of the TCP/UDP/ICMPv6 pseudo-header.
fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> Sum16BitWords {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Sum16BitWords::new()
            .add_slice(&s.octets())
            .add_slice(&d.octets())
            .add_2bytes([0, proto])
            .add_2bytes((len as u16).to_be_bytes()),
        (s, d) => {
            let s6 = match s {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            let d6 = match d {
                IpAddr::V6(a) => a.octets(),
                IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
            };
            Sum16BitWords::new()
                .add_slice(&s6)
                .add_slice(&d6)
                .add_slice(&(len as u32).to_be_bytes())
                .add_2bytes([0, proto])
        }
    }
}

/// Read the quoted original header of an ICMP error (it is usually truncated, so only the
/// IP header and the first 8 bytes of the transport are used; RFC 792 / RFC 4443).
fn parse_embedded(quoted: &[u8], v6: bool) -> Option<Embedded> {
    let lax = etherparse::LaxIpSlice::from_slice(quoted).ok()?.0;
    let (src, dst) = match &lax {
        etherparse::LaxIpSlice::Ipv4(s) if !v6 => (
            IpAddr::V4(s.header().source_addr()),
            IpAddr::V4(s.header().destination_addr()),
        ),
        etherparse::LaxIpSlice::Ipv6(s) if v6 => (
            IpAddr::V6(s.header().source_addr()),
            IpAddr::V6(s.header().destination_addr()),
        ),
        _ => return None,
    };
    let pl = lax.payload();
    let proto = pl.ip_number.0;
    let b = pl.payload;
    if b.len() < 8 {
        return None;
    }
    let (src_port, dst_port) = match proto {
        proto::TCP | proto::UDP => (
            u16::from_be_bytes([b[0], b[1]]),
            u16::from_be_bytes([b[2], b[3]]),
        ),
        proto::ICMP | proto::ICMPV6 => {
            let req = if v6 { 128 } else { 8 };
            let rep = if v6 { 129 } else { 0 };
            let id = u16::from_be_bytes([b[4], b[5]]);
            if b[0] == req {
                (id, 0)
            } else if b[0] == rep {
                (0, id)
            } else {
                return None;
            }
        }
        _ => (0, 0),
    };
    Some(Embedded {
        src,
        dst,
        proto,
        src_port,
        dst_port,
    })
}

#[cfg(test)]
mod tests;
