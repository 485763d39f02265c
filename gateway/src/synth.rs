//! Synthetic frames built with etherparse's `PacketBuilder`: what `explain` feeds to
//! `core::decide`, and what the tests and benchmarks use. Never sent anywhere.

use std::net::IpAddr;

use etherparse::{PacketBuilder, TcpOptionElement};

use crate::packet::{proto, MacAddr, TcpFlags};

/// One end of a synthetic packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Ethernet address.
    pub mac: MacAddr,
    /// IP address.
    pub ip: IpAddr,
}

/// The transport part of a synthetic packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A TCP segment; `flags` uses [`TcpFlags`] bits (ACK is set when `ack` is `Some`).
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Sequence number.
        seq: u32,
        /// Acknowledgment number (sets ACK).
        ack: Option<u32>,
        /// SYN/FIN/RST/PSH bits.
        flags: u8,
        /// Raw window.
        window: u16,
        /// Window scale option.
        wscale: Option<u8>,
        /// Payload bytes (filled with `b'x'`).
        payload: usize,
    },
    /// A UDP datagram.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Payload bytes.
        payload: usize,
    },
    /// An ICMP (v4 or v6, by address family) echo request or reply.
    Echo {
        /// Request (true) or reply.
        request: bool,
        /// Identifier.
        id: u16,
        /// Sequence number.
        seq: u16,
        /// Payload bytes.
        payload: usize,
    },
    /// Any ICMP/ICMPv6 message given as type, code, bytes 5-8 and body (e.g. an error quoting
    /// a packet, or a neighbour solicitation whose body starts with the target).
    Icmp {
        /// Type.
        icmp_type: u8,
        /// Code.
        code: u8,
        /// Bytes 5 to 8 of the header.
        rest: [u8; 4],
        /// Message body.
        body: Vec<u8>,
    },
    /// Another IP protocol with an opaque payload.
    Raw {
        /// Protocol number.
        proto: u8,
        /// Payload bytes.
        payload: usize,
    },
}

impl Segment {
    /// A TCP SYN.
    pub fn syn(sport: u16, dport: u16, seq: u32) -> Segment {
        Segment::Tcp {
            sport,
            dport,
            seq,
            ack: None,
            flags: TcpFlags::SYN,
            window: 64240,
            wscale: None,
            payload: 0,
        }
    }

    /// A TCP segment with ACK set and `flags` added.
    pub fn tcp(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8, payload: usize) -> Segment {
        Segment::Tcp {
            sport,
            dport,
            seq,
            ack: Some(ack),
            flags,
            window: 64240,
            wscale: None,
            payload,
        }
    }
}

/// Build an Ethernet frame (without FCS). Errors when the addresses' families differ.
pub fn frame(src: Endpoint, dst: Endpoint, seg: &Segment) -> Result<Vec<u8>, String> {
    let eth = PacketBuilder::ethernet2(src.mac.0, dst.mac.0);
    let ip = match (src.ip, dst.ip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => {
            return Err(format!(
                "source {} and destination {} are of different address families",
                src.ip, dst.ip
            ))
        }
    };
    let v6 = src.ip.is_ipv6();
    let mut out = Vec::with_capacity(128);
    let err = |e: etherparse::err::packet::BuildWriteError| e.to_string();
    match seg {
        Segment::Tcp {
            sport,
            dport,
            seq,
            ack,
            flags,
            window,
            wscale,
            payload,
        } => {
            let mut b = ip.tcp(*sport, *dport, *seq, *window);
            if let Some(a) = ack {
                b = b.ack(*a);
            }
            if flags & TcpFlags::SYN != 0 {
                b = b.syn();
            }
            if flags & TcpFlags::FIN != 0 {
                b = b.fin();
            }
            if flags & TcpFlags::RST != 0 {
                b = b.rst();
            }
            if flags & TcpFlags::PSH != 0 {
                b = b.psh();
            }
            if let Some(s) = wscale {
                b = b
                    .options(&[TcpOptionElement::WindowScale(*s)])
                    .map_err(|e| e.to_string())?;
            }
            b.write(&mut out, &vec![b'x'; *payload]).map_err(err)?;
        }
        Segment::Udp {
            sport,
            dport,
            payload,
        } => ip
            .udp(*sport, *dport)
            .write(&mut out, &vec![b'u'; *payload])
            .map_err(err)?,
        Segment::Echo {
            request,
            id,
            seq,
            payload,
        } => {
            let data = vec![b'p'; *payload];
            match (v6, request) {
                (false, true) => ip.icmpv4_echo_request(*id, *seq).write(&mut out, &data),
                (false, false) => ip.icmpv4_echo_reply(*id, *seq).write(&mut out, &data),
                (true, true) => ip.icmpv6_echo_request(*id, *seq).write(&mut out, &data),
                (true, false) => ip.icmpv6_echo_reply(*id, *seq).write(&mut out, &data),
            }
            .map_err(err)?
        }
        Segment::Icmp {
            icmp_type,
            code,
            rest,
            body,
        } => if v6 {
            ip.icmpv6_raw(*icmp_type, *code, *rest)
                .write(&mut out, body)
        } else {
            ip.icmpv4_raw(*icmp_type, *code, *rest)
                .write(&mut out, body)
        }
        .map_err(err)?,
        Segment::Raw { proto: p, payload } => {
            debug_assert!(![proto::TCP, proto::UDP].contains(p));
            ip.write(&mut out, etherparse::IpNumber(*p), &vec![0u8; *payload])
                .map_err(err)?
        }
    }
    Ok(out)
}

/// Changes to a TCP frame built by [`frame`]: header features it does not take (the one_way
/// tests' frames, claim 1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpEdit {
    /// Raw option bytes (a multiple of 4, at most 40) in place of the segment's options.
    pub options: Option<Vec<u8>>,
    /// Set the URG flag.
    pub urg: bool,
    /// The urgent pointer (with or without URG).
    pub urgent_pointer: u16,
    /// Add IPv4 options (a router alert, RFC 2113) or an IPv6 hop-by-hop header (two bytes of
    /// padding options).
    pub ip_extras: bool,
}

/// Applies `edit` to a TCP frame: the lengths and the checksums are made right again.
pub fn edit_tcp(frame: &[u8], edit: &TcpEdit) -> Result<Vec<u8>, String> {
    use etherparse::{IpNumber, NetHeaders, PacketHeaders, TransportHeader};
    let h = PacketHeaders::from_ethernet_slice(frame).map_err(|e| e.to_string())?;
    let payload = h.payload.slice();
    let (
        Some(etherparse::LinkHeader::Ethernet2(eth)),
        Some(net),
        Some(TransportHeader::Tcp(mut tcp)),
    ) = (h.link, h.net, h.transport)
    else {
        return Err("not an Ethernet TCP frame".into());
    };
    if let Some(o) = &edit.options {
        tcp.set_options_raw(o).map_err(|e| e.to_string())?;
    }
    tcp.urg |= edit.urg;
    if edit.urgent_pointer != 0 {
        tcp.urgent_pointer = edit.urgent_pointer;
    }
    let mut out = eth.to_bytes().to_vec();
    let err = |e: etherparse::err::ValueTooBigError<usize>| e.to_string();
    let seg_len = tcp.header_len() + payload.len();
    match net {
        NetHeaders::Ipv4(mut ip, _) => {
            if edit.ip_extras {
                ip.options = [0x94, 0x04, 0x00, 0x00].into();
            }
            ip.set_payload_len(seg_len).map_err(err)?;
            ip.header_checksum = ip.calc_header_checksum();
            tcp.checksum = tcp
                .calc_checksum_ipv4(&ip, payload)
                .map_err(|e| e.to_string())?;
            out.extend_from_slice(&ip.to_bytes());
        }
        NetHeaders::Ipv6(mut ip, mut exts) => {
            if edit.ip_extras {
                exts.hop_by_hop_options = Some(
                    etherparse::Ipv6RawExtHeader::new_raw(IpNumber::TCP, &[1, 4, 0, 0, 0, 0])
                        .map_err(|e| e.to_string())?,
                );
            }
            ip.next_header = exts.set_next_headers(IpNumber::TCP);
            ip.set_payload_length(exts.header_len() + seg_len)
                .map_err(err)?;
            tcp.checksum = tcp
                .calc_checksum_ipv6(&ip, payload)
                .map_err(|e| e.to_string())?;
            out.extend_from_slice(&ip.to_bytes());
            exts.write(&mut out, ip.next_header)
                .map_err(|e| e.to_string())?;
        }
    }
    out.extend_from_slice(&tcp.to_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// An ARP request or reply frame (Ethernet/IPv4), built by hand: etherparse 0.16 has no ARP.
pub fn arp(
    operation: u16,
    eth_src: MacAddr,
    eth_dst: MacAddr,
    sender: (MacAddr, std::net::Ipv4Addr),
    target: (MacAddr, std::net::Ipv4Addr),
) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&eth_dst.0);
    f.extend_from_slice(&eth_src.0);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
    f.extend_from_slice(&operation.to_be_bytes());
    f.extend_from_slice(&sender.0 .0);
    f.extend_from_slice(&sender.1.octets());
    f.extend_from_slice(&target.0 .0);
    f.extend_from_slice(&target.1.octets());
    f
}
