use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use super::*;
use crate::synth::{self, Endpoint, Segment};
use crate::testutil::*;

// Counts heap allocations per thread, to show that parsing and deciding a packet allocate
// nothing.
struct Counting;
thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}
// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(p, l) }
    }
}
#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocs() -> usize {
    ALLOCS.with(|c| c.get())
}

fn ip(p: &Packet) -> IpPacket {
    *p.ip().expect("an IP packet")
}

#[test]
fn tcp_fields() {
    let f = synth::frame(
        host(SERVICE),
        host(STOCK),
        &Segment::Tcp {
            sport: 40000,
            dport: 7443,
            seq: 123,
            ack: None,
            flags: TcpFlags::SYN,
            window: 29200,
            wscale: Some(9),
            payload: 0,
        },
    )
    .unwrap();
    let p = parse(&f, Port::Outside).unwrap();
    assert_eq!(p.src_mac, lab_mac(SERVICE));
    assert_eq!(p.dst_mac, lab_mac(STOCK));
    assert_eq!(p.direction(), crate::core::Direction::Inbound);
    let i = ip(&p);
    assert_eq!(
        (i.src, i.dst, i.proto),
        (v4(SERVICE), v4(STOCK), proto::TCP)
    );
    assert!(i.checksum_ok && !i.fragment);
    let L4::Tcp(t) = i.l4 else { panic!() };
    assert_eq!(
        (t.src_port, t.dst_port, t.seq, t.window),
        (40000, 7443, 123, 29200)
    );
    assert!(t.flags.syn() && !t.flags.ack());
    assert_eq!(t.wscale, Some(9));
    assert_eq!(i.flow_ports(), (40000, 7443));

    let f = synth::frame(
        host6(STOCK),
        host6(SERVICE),
        &Segment::tcp(7443, 40000, 5, 124, TcpFlags::PSH | TcpFlags::FIN, 333),
    )
    .unwrap();
    let i = ip(&parse(&f, Port::Inside).unwrap());
    let L4::Tcp(t) = i.l4 else { panic!() };
    assert!(t.flags.ack() && t.flags.fin() && t.flags.has(TcpFlags::PSH) && !t.flags.rst());
    assert_eq!((t.seq, t.ack, t.wscale), (5, 124, None));
    assert_eq!(i.payload_len, 333);
    assert!(i.checksum_ok);
}

#[test]
fn udp_and_checksums() {
    let seg = Segment::Udp {
        sport: 53,
        dport: 3333,
        payload: 7,
    };
    let mut f = synth::frame(host(STOCK), host(SERVICE), &seg).unwrap();
    let i = ip(&parse(&f, Port::Inside).unwrap());
    assert_eq!(
        i.l4,
        L4::Udp(UdpInfo {
            src_port: 53,
            dst_port: 3333
        })
    );
    assert_eq!(i.payload_len, 7);
    assert!(i.checksum_ok);
    // A zero UDP checksum means "none" over IPv4...
    let c = 14 + 20 + 6;
    f[c] = 0;
    f[c + 1] = 0;
    assert!(ip(&parse(&f, Port::Inside).unwrap()).checksum_ok);
    // ...but is invalid over IPv6.
    let mut f = synth::frame(host6(STOCK), host6(SERVICE), &seg).unwrap();
    let c = 14 + 40 + 6;
    f[c] = 0;
    f[c + 1] = 0;
    assert!(!ip(&parse(&f, Port::Inside).unwrap()).checksum_ok);
}

#[test]
fn icmp_echo_and_errors() {
    let f = synth::frame(
        host(STOCK),
        host(SERVICE),
        &Segment::Echo {
            request: true,
            id: 77,
            seq: 3,
            payload: 56,
        },
    )
    .unwrap();
    let i = ip(&parse(&f, Port::Inside).unwrap());
    let L4::Icmp(c) = i.l4 else { panic!() };
    assert!(c.is_echo_request() && !c.v6 && !c.is_error());
    assert_eq!(c.echo_id, Some(77));
    assert_eq!(i.payload_len, 56);
    assert_eq!(i.flow_ports(), (77, 0));
    assert!(i.checksum_ok);

    let f = synth::frame(
        host6(SERVICE),
        host6(STOCK),
        &Segment::Echo {
            request: false,
            id: 77,
            seq: 3,
            payload: 0,
        },
    )
    .unwrap();
    let i = ip(&parse(&f, Port::Outside).unwrap());
    let L4::Icmp(c) = i.l4 else { panic!() };
    assert!(c.v6 && c.is_echo_reply());
    assert_eq!(i.flow_ports(), (0, 77));
    assert!(i.checksum_ok);

    // Port unreachable quoting a UDP datagram.
    let orig = synth::frame(
        host(STOCK),
        host(SERVICE),
        &Segment::Udp {
            sport: 1111,
            dport: 2222,
            payload: 100,
        },
    )
    .unwrap();
    let body = orig[14..14 + 28].to_vec();
    let f = synth::frame(
        host(SERVICE),
        host(STOCK),
        &Segment::Icmp {
            icmp_type: 3,
            code: 3,
            rest: [0; 4],
            body,
        },
    )
    .unwrap();
    let i = ip(&parse(&f, Port::Outside).unwrap());
    let L4::Icmp(c) = i.l4 else { panic!() };
    assert!(c.is_error());
    assert_eq!(
        c.embedded,
        Some(Embedded {
            src: v4(STOCK),
            dst: v4(SERVICE),
            proto: proto::UDP,
            src_port: 1111,
            dst_port: 2222
        })
    );
    // ICMPv6 packet too big quoting an echo request.
    let orig = synth::frame(
        host6(STOCK),
        host6(SERVICE),
        &Segment::Echo {
            request: true,
            id: 9,
            seq: 1,
            payload: 32,
        },
    )
    .unwrap();
    let body = orig[14..14 + 48].to_vec();
    let f = synth::frame(
        host6(SERVICE),
        host6(STOCK),
        &Segment::Icmp {
            icmp_type: 2,
            code: 0,
            rest: [0, 0, 5, 0],
            body,
        },
    )
    .unwrap();
    let L4::Icmp(c) = ip(&parse(&f, Port::Outside).unwrap()).l4 else {
        panic!()
    };
    let e = c.embedded.unwrap();
    assert_eq!((e.proto, e.src_port, e.dst_port), (proto::ICMPV6, 9, 0));
    // A quote too short to read leaves `embedded` empty.
    let f = synth::frame(
        host(SERVICE),
        host(STOCK),
        &Segment::Icmp {
            icmp_type: 11,
            code: 0,
            rest: [0; 4],
            body: vec![0x45, 0],
        },
    )
    .unwrap();
    let L4::Icmp(c) = ip(&parse(&f, Port::Outside).unwrap()).l4 else {
        panic!()
    };
    assert!(c.is_error() && c.embedded.is_none());
}

#[test]
fn neighbour_discovery_target() {
    let target = v6(50);
    let IpAddr::V6(t) = target else {
        unreachable!()
    };
    let body = t.octets().to_vec();
    let f = synth::frame(
        host6(SERVICE),
        host6(STOCK),
        &Segment::Icmp {
            icmp_type: 135,
            code: 0,
            rest: [0; 4],
            body,
        },
    )
    .unwrap();
    let L4::Icmp(c) = ip(&parse(&f, Port::Outside).unwrap()).l4 else {
        panic!()
    };
    assert!(c.is_ndp());
    assert_eq!(c.nd_target.map(IpAddr::V6), Some(target));
    // An NS too short for its target is malformed.
    let f = synth::frame(
        host6(SERVICE),
        host6(STOCK),
        &Segment::Icmp {
            icmp_type: 135,
            code: 0,
            rest: [0; 4],
            body: vec![0; 8],
        },
    )
    .unwrap();
    assert_eq!(
        parse(&f, Port::Outside),
        Err(crate::core::DropReason::Malformed)
    );
}

#[test]
fn arp_fields() {
    let f = synth::arp(
        1,
        lab_mac(SERVICE),
        MacAddr([0xff; 6]),
        (lab_mac(SERVICE), Ipv4Addr::new(198, 51, 100, 110)),
        (MacAddr::default(), Ipv4Addr::new(198, 51, 100, 50)),
    );
    let p = parse(&f, Port::Outside).unwrap();
    let PacketKind::Arp(a) = p.kind else { panic!() };
    assert_eq!(a.operation, 1);
    assert_eq!(a.sender_mac, lab_mac(SERVICE));
    assert_eq!(a.sender_ip, Ipv4Addr::new(198, 51, 100, 110));
    assert_eq!(a.target_ip, Ipv4Addr::new(198, 51, 100, 50));
    // ARP for another protocol type is malformed here.
    let mut g = f.clone();
    g[14 + 2] = 0x86;
    assert_eq!(
        parse(&g, Port::Outside),
        Err(crate::core::DropReason::Malformed)
    );
}

#[test]
fn fragments_are_detected() {
    // IPv4: first fragment (MF set) and a later one (offset).
    for (mf, off) in [(true, 0u16), (false, 8)] {
        let mut h = etherparse::Ipv4Header::new(
            8,
            64,
            etherparse::IpNumber::UDP,
            [198, 51, 100, 110],
            [198, 51, 100, 50],
        )
        .unwrap();
        h.more_fragments = mf;
        h.fragment_offset = etherparse::IpFragOffset::try_new(off).unwrap();
        h.header_checksum = h.calc_header_checksum();
        let mut f = Vec::new();
        etherparse::Ethernet2Header {
            source: lab_mac(SERVICE).0,
            destination: lab_mac(STOCK).0,
            ether_type: etherparse::EtherType::IPV4,
        }
        .write(&mut f)
        .unwrap();
        h.write(&mut f).unwrap();
        f.extend_from_slice(&[0; 8]);
        let i = ip(&parse(&f, Port::Outside).unwrap());
        assert!(i.fragment && i.checksum_ok);
        assert_eq!(i.l4, L4::Other);
    }
    // IPv6 fragment header.
    let ip6 = etherparse::Ipv6Header {
        payload_length: 16,
        next_header: etherparse::IpNumber::IPV6_FRAGMENTATION_HEADER,
        hop_limit: 64,
        source: [
            0x20, 0x01, 0x0d, 0xb8, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x10,
        ],
        destination: [
            0x20, 0x01, 0x0d, 0xb8, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x50,
        ],
        ..Default::default()
    };
    let frag = etherparse::Ipv6FragmentHeader::new(
        etherparse::IpNumber::UDP,
        etherparse::IpFragOffset::try_new(0).unwrap(),
        true,
        7,
    );
    let mut f = Vec::new();
    etherparse::Ethernet2Header {
        source: lab_mac(SERVICE).0,
        destination: lab_mac(STOCK).0,
        ether_type: etherparse::EtherType::IPV6,
    }
    .write(&mut f)
    .unwrap();
    ip6.write(&mut f).unwrap();
    frag.write(&mut f).unwrap();
    f.extend_from_slice(&[0; 8]);
    let i = ip(&parse(&f, Port::Outside).unwrap());
    assert!(i.fragment);
}

#[test]
fn mismatched_ethertype_is_malformed() {
    let mut f = synth::frame(host6(SERVICE), host6(STOCK), &Segment::syn(1, 2, 3)).unwrap();
    f[12] = 0x08;
    f[13] = 0x00;
    assert_eq!(
        parse(&f, Port::Outside),
        Err(crate::core::DropReason::Malformed)
    );
}

#[test]
fn ports_parse_and_print() {
    assert_eq!("outside".parse::<Port>(), Ok(Port::Outside));
    assert_eq!("inside".parse::<Port>(), Ok(Port::Inside));
    assert!("middle".parse::<Port>().is_err());
    assert_eq!(Port::Inside.other(), Port::Outside);
    assert_eq!(Port::Outside.to_string(), "outside");
}

#[test]
fn parse_and_decide_do_not_allocate() {
    let mut w = Wire::lab();
    let svc = Endpoint {
        mac: lab_mac(SERVICE),
        ip: v4(SERVICE),
    };
    let stk = host(STOCK);
    let frames = [
        synth::frame(svc, stk, &Segment::syn(40000, 7443, 100)).unwrap(),
        synth::frame(host(CLIENT1), stk, &Segment::syn(40000, 7443, 100)).unwrap(),
        synth::frame(
            host6(SERVICE),
            host6(STOCK),
            &Segment::tcp(1, 7443, 1, 1, 0, 10),
        )
        .unwrap(),
        synth::frame(
            stk,
            svc,
            &Segment::Echo {
                request: true,
                id: 1,
                seq: 1,
                payload: 8,
            },
        )
        .unwrap(),
    ];
    // Warm up: the first packet of a flow may grow the table.
    for f in &frames {
        crate::core::decide_frame(w.now, &w.rules, f, Port::Outside, &mut w.table);
    }
    let now = Instant::now();
    let before = allocs();
    for _ in 0..100 {
        for (f, port) in
            frames
                .iter()
                .zip([Port::Outside, Port::Outside, Port::Outside, Port::Inside])
        {
            let p = parse(f, port).unwrap();
            std::hint::black_box(crate::core::decide(now, &w.rules, &p, &mut w.table));
        }
    }
    assert_eq!(allocs() - before, 0);
}
