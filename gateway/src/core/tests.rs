//! Every rule feature and every drop reason, with real frames (etherparse's PacketBuilder).

use std::net::{IpAddr, Ipv4Addr};

use etherparse::PacketBuilder;

use super::*;
use crate::packet::{MacAddr, TcpFlags};
use crate::synth::{self, Endpoint, Segment};
use crate::testutil::*;

use Port::{Inside, Outside};

fn dropped(v: Verdict) -> DropReason {
    assert_eq!(v.action, Action::Drop, "{v:?}");
    v.reason.expect("a drop has a reason")
}

fn fwd(w: &Wire, v: Verdict) -> Option<&str> {
    assert_eq!(v.action, Action::Forward, "{v:?}");
    assert_eq!(v.reason, None);
    w.rule(&v)
}

/// Service SYN, stock SYN-ACK, service ACK on 7443.
fn service_handshake(w: &mut Wire, sport: u16) {
    let (svc, stk) = (host(SERVICE), host(STOCK));
    let v = w.send(Outside, svc, stk, Segment::syn(sport, 7443, 100));
    assert_eq!(fwd(w, v), Some("service-to-stock"));
    assert_eq!(v.direction, Direction::Inbound);
    let v = w.send(Inside, stk, svc, syn_ack(7443, sport, 9000, 101));
    assert_eq!(fwd(w, v), Some("service-to-stock"));
    assert_eq!(v.direction, Direction::Outbound);
    let v = w.send(
        Outside,
        svc,
        stk,
        Segment::tcp(sport, 7443, 101, 9001, 0, 0),
    );
    assert_eq!(fwd(w, v), Some("service-to-stock"));
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

#[test]
fn drop_reason_labels_are_exact() {
    let labels: Vec<&str> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        labels,
        [
            "no_rule",
            "spoofed",
            "invalid_state",
            "malformed",
            "fragment",
            "conntrack_full",
            "non_ip",
            "arp_unknown",
            "one_way",
            "checksum",
            "kernel_other"
        ]
    );
    assert_eq!(Direction::Inbound.as_str(), "inbound");
    assert_eq!(Action::Forward.as_str(), "forward");
    assert_eq!(Port::Outside.direction(), Direction::Inbound);
    assert_eq!(Direction::Outbound.ingress(), Port::Inside);
}

#[test]
fn service_reaches_stock_and_the_connection_runs_both_ways() {
    let mut w = Wire::lab();
    service_handshake(&mut w, 40000);
    let (svc, stk) = (host(SERVICE), host(STOCK));
    // Data both ways (step 78: the image goes to the stock server; 87: keys come back).
    let v = w.send(
        Outside,
        svc,
        stk,
        Segment::tcp(40000, 7443, 101, 9001, TcpFlags::PSH, 1000),
    );
    assert_eq!(fwd(&w, v), Some("service-to-stock"));
    let v = w.send(
        Inside,
        stk,
        svc,
        Segment::tcp(7443, 40000, 9001, 1101, TcpFlags::PSH, 500),
    );
    assert_eq!(fwd(&w, v), Some("service-to-stock"));
    assert_eq!(
        w.table.list()[0].state,
        crate::conntrack::FlowState::TcpEstablished
    );
    // FIN teardown.
    let v = w.send(
        Outside,
        svc,
        stk,
        Segment::tcp(40000, 7443, 1101, 9501, TcpFlags::FIN, 0),
    );
    assert!(v.is_forward());
    let v = w.send(
        Inside,
        stk,
        svc,
        Segment::tcp(7443, 40000, 9501, 1102, TcpFlags::FIN, 0),
    );
    assert!(v.is_forward());
    let v = w.send(
        Outside,
        svc,
        stk,
        Segment::tcp(40000, 7443, 1102, 9502, 0, 0),
    );
    assert!(v.is_forward());
    assert_eq!(
        w.table.list()[0].state,
        crate::conntrack::FlowState::TcpClosed
    );
    // The second service server and the IPv6 addresses work the same way.
    let v = w.send(
        Outside,
        host(SERVICE2),
        host(STOCK2),
        Segment::syn(40001, 7443, 5),
    );
    assert_eq!(fwd(&w, v), Some("service-to-stock"));
    let v = w.send(
        Outside,
        host6(SERVICE),
        host6(STOCK),
        Segment::syn(40002, 7443, 5),
    );
    assert_eq!(fwd(&w, v), Some("service-to-stock"));
}

#[test]
fn a_new_syn_reopens_a_closed_tuple() {
    let mut w = Wire::lab();
    service_handshake(&mut w, 40000);
    let (svc, stk) = (host(SERVICE), host(STOCK));
    let v = w.send(
        Inside,
        stk,
        svc,
        Segment::tcp(7443, 40000, 9001, 101, TcpFlags::RST, 0),
    );
    assert!(v.is_forward());
    assert_eq!(
        w.table.list()[0].state,
        crate::conntrack::FlowState::TcpClosed
    );
    let v = w.send(Outside, svc, stk, Segment::syn(40000, 7443, 77_777));
    assert_eq!(fwd(&w, v), Some("service-to-stock"));
    assert_eq!(w.table.len(), 1);
    assert_eq!(
        w.table.list()[0].state,
        crate::conntrack::FlowState::TcpOpening
    );
}

/// After `service_handshake(40000)`: a FIN exchange (`rst` false) or a RST from the stock
/// server leaves the flow fully closed.
fn close_service_flow(w: &mut Wire, rst: bool) {
    let (svc, stk) = (host(SERVICE), host(STOCK));
    let steps: &[(bool, Segment)] = if rst {
        &[(
            false,
            Segment::tcp(7443, 40000, 9001, 101, TcpFlags::RST, 0),
        )]
    } else {
        &[
            (true, Segment::tcp(40000, 7443, 101, 9001, TcpFlags::FIN, 0)),
            (false, Segment::tcp(7443, 40000, 9001, 102, 0, 0)),
            (
                false,
                Segment::tcp(7443, 40000, 9001, 102, TcpFlags::FIN, 0),
            ),
            (true, Segment::tcp(40000, 7443, 102, 9002, 0, 0)),
        ]
    };
    for (from_svc, seg) in steps {
        let v = if *from_svc {
            w.send(Outside, svc, stk, seg.clone())
        } else {
            w.send(Inside, stk, svc, seg.clone())
        };
        assert!(v.is_forward(), "{seg:?}: {v:?}");
    }
    assert_eq!(
        w.table.list()[0].state,
        crate::conntrack::FlowState::TcpClosed
    );
}

#[test]
fn responder_syn_after_close_is_a_new_connection() {
    // The kernel's conntrack ends a closed entry on a SYN from either side and judges the SYN
    // as new: the stock server cannot open toward the service on the just-closed tuple.
    for rst in [false, true] {
        let mut w = Wire::lab();
        service_handshake(&mut w, 40000);
        close_service_flow(&mut w, rst);
        let (svc, stk) = (host(SERVICE), host(STOCK));
        let v = w.send(Inside, stk, svc, Segment::syn(7443, 40000, 555_555));
        assert_eq!(dropped(v), DropReason::NoRule, "rst={rst}");
        assert!(w.table.is_empty(), "rst={rst}: the old flow is gone");
        // Nothing of either connection passes any more.
        assert_eq!(
            dropped(w.send(Outside, svc, stk, syn_ack(40000, 7443, 300, 555_556))),
            DropReason::InvalidState
        );
        assert_eq!(
            dropped(w.send(
                Outside,
                svc,
                stk,
                Segment::tcp(40000, 7443, 102, 9002, 0, 0)
            )),
            DropReason::InvalidState
        );
        assert!(w.table.is_empty());
    }
}

#[test]
fn responder_syn_after_close_opens_where_a_rule_admits_it() {
    // Judged as new from the side that sent it: a rule for the reverse connection opens a
    // new flow, opened on the inside port under that rule.
    let yaml = DEFAULT_YAML.replace(
        "rules:\n",
        "rules:\n  - {name: stock-to-service, direction: outbound, protocol: tcp, src: [stock], dst: [service], dst_ports: [40000], action: accept}\n",
    );
    let mut w = Wire::new(compile(&yaml));
    service_handshake(&mut w, 40000);
    close_service_flow(&mut w, false);
    let (svc, stk) = (host(SERVICE), host(STOCK));
    let v = w.send(Inside, stk, svc, Segment::syn(7443, 40000, 555_555));
    assert_eq!(fwd(&w, v), Some("stock-to-service"));
    let flows = w.table.list();
    assert_eq!(flows.len(), 1);
    assert_eq!(
        (flows[0].src, flows[0].opened_on, flows[0].state),
        (v4(STOCK), Inside, crate::conntrack::FlowState::TcpOpening)
    );
    let v = w.send(Outside, svc, stk, syn_ack(40000, 7443, 300, 555_556));
    assert_eq!(fwd(&w, v), Some("stock-to-service"));
}

#[test]
fn no_rule_for_clients_toward_the_stock_server() {
    let mut w = Wire::lab();
    let (c1, stk) = (host(CLIENT1), host(STOCK));
    // Firewall 45: a client's TCP, UDP and ICMP to the stock server are dropped.
    assert_eq!(
        dropped(w.send(Outside, c1, stk, Segment::syn(5555, 7443, 1))),
        DropReason::NoRule
    );
    let udp = Segment::Udp {
        sport: 5555,
        dport: 7443,
        payload: 10,
    };
    assert_eq!(dropped(w.send(Outside, c1, stk, udp)), DropReason::NoRule);
    let ping = Segment::Echo {
        request: true,
        id: 7,
        seq: 1,
        payload: 8,
    };
    assert_eq!(
        dropped(w.send(Outside, c1, stk, ping.clone())),
        DropReason::NoRule
    );
    assert_eq!(
        dropped(w.send(Outside, host6(CLIENT1), host6(STOCK), ping)),
        DropReason::NoRule
    );
    let udp6 = Segment::Udp {
        sport: 5555,
        dport: 53,
        payload: 10,
    };
    assert_eq!(
        dropped(w.send(Outside, host6(CLIENT2), host6(STOCK2), udp6)),
        DropReason::NoRule
    );
    // Even the service on another port.
    assert_eq!(
        dropped(w.send(Outside, host(SERVICE), stk, Segment::syn(5555, 22, 1))),
        DropReason::NoRule
    );
    // The monitor only reaches 9443.
    let v = w.send(Outside, host(MONITOR), stk, Segment::syn(5555, 9443, 1));
    assert_eq!(fwd(&w, v), Some("monitor-to-stock-metrics"));
    assert_eq!(
        dropped(w.send(Outside, host(MONITOR), stk, Segment::syn(5556, 7443, 1))),
        DropReason::NoRule
    );
    assert!(
        w.table.len() == 1,
        "only the admitted connection holds state"
    );
}

#[test]
fn explicit_drop_rule_is_named() {
    let yaml = DEFAULT_YAML.replace(
        "rules:\n",
        "rules:\n  - {name: no-ssh, direction: inbound, protocol: tcp, src: [any], dst: [stock], dst_ports: [22], action: drop}\n",
    );
    let mut w = Wire::new(compile(&yaml));
    let v = w.send(Outside, host(SERVICE), host(STOCK), Segment::syn(1, 22, 1));
    assert_eq!(dropped(v), DropReason::NoRule);
    assert_eq!(w.rule(&v), Some("no-ssh"));
}

#[test]
fn one_way_push_passes_acks_and_drops_client_data() {
    let mut w = Wire::lab();
    let (stk, c1) = (host(STOCK), host(CLIENT1));
    // Step 137: the stock server opens the push connection.
    let v = w.send(Inside, stk, c1, Segment::syn(45000, 7137, 10));
    assert_eq!(fwd(&w, v), Some("stock-push-to-clients"));
    let v = w.send(Outside, c1, stk, syn_ack(7137, 45000, 70, 11));
    assert_eq!(fwd(&w, v), Some("stock-push-to-clients"));
    let v = w.send(Inside, stk, c1, Segment::tcp(45000, 7137, 11, 71, 0, 0));
    assert!(v.is_forward());
    let v = w.send(
        Inside,
        stk,
        c1,
        Segment::tcp(45000, 7137, 11, 71, TcpFlags::PSH, 1400),
    );
    assert!(v.is_forward());
    // The client's pure ACK passes.
    let v = w.send(Outside, c1, stk, Segment::tcp(7137, 45000, 71, 1411, 0, 0));
    assert_eq!(fwd(&w, v), Some("stock-push-to-clients"));
    // Claim 1: not a byte of client data reaches the stock server.
    let v = w.send(
        Outside,
        c1,
        stk,
        Segment::tcp(7137, 45000, 71, 1411, TcpFlags::PSH, 1),
    );
    assert_eq!(dropped(v), DropReason::OneWay);
    assert_eq!(w.rule(&v), Some("stock-push-to-clients"));
    // Nor data riding on a FIN.
    let v = w.send(
        Outside,
        c1,
        stk,
        Segment::tcp(7137, 45000, 71, 1411, TcpFlags::FIN, 5),
    );
    assert_eq!(dropped(v), DropReason::OneWay);
    // A payload-free FIN and RST pass.
    let v = w.send(
        Outside,
        c1,
        stk,
        Segment::tcp(7137, 45000, 71, 1411, TcpFlags::FIN, 0),
    );
    assert!(v.is_forward());
    let v = w.send(
        Outside,
        c1,
        stk,
        Segment::tcp(7137, 45000, 72, 1411, TcpFlags::RST, 0),
    );
    assert!(v.is_forward());
    // A client cannot open the push port the other way round.
    assert_eq!(
        dropped(w.send(Outside, c1, stk, Segment::syn(7137, 45001, 1))),
        DropReason::NoRule
    );
}

#[test]
fn spoofed_sources() {
    let mut w = Wire::lab();
    let (svc, stk, c1) = (host(SERVICE), host(STOCK), host(CLIENT1));
    // A client sending as the service's address (wrong MAC).
    let forged = Endpoint {
        mac: c1.mac,
        ip: svc.ip,
    };
    assert_eq!(
        dropped(w.send(Outside, forged, stk, Segment::syn(1, 7443, 1))),
        DropReason::Spoofed
    );
    // A stock address arriving on the outside port.
    assert_eq!(
        dropped(w.send(Outside, stk, c1, Segment::syn(1, 7137, 1))),
        DropReason::Spoofed
    );
    // A non-inside address arriving on the inside port.
    assert_eq!(
        dropped(w.send(Inside, c1, svc, Segment::syn(1, 80, 1))),
        DropReason::Spoofed
    );
    // A pinned stock address with another MAC on the inside.
    let fake_stock = Endpoint {
        mac: lab_mac(0x99),
        ip: stk.ip,
    };
    assert_eq!(
        dropped(w.send(Inside, fake_stock, c1, Segment::syn(1, 7137, 1))),
        DropReason::Spoofed
    );
    // IPv6 too.
    let forged6 = Endpoint {
        mac: c1.mac,
        ip: host6(SERVICE).ip,
    };
    assert_eq!(
        dropped(w.send(Outside, forged6, host6(STOCK), Segment::syn(1, 7443, 1))),
        DropReason::Spoofed
    );
    assert!(w.table.is_empty());
}

#[test]
fn a_flow_packet_on_the_wrong_port_is_spoofed() {
    // Rules that admit outside-to-outside traffic (the bridge sees both ends on one port).
    let yaml = DEFAULT_YAML.replace(
        "rules:\n",
        "rules:\n  - {name: svc-web, direction: inbound, protocol: tcp, src: [service], dst: [clients], dst_ports: [443], action: accept}\n",
    );
    let mut w = Wire::new(compile(&yaml));
    let (svc, c1) = (host(SERVICE), host(CLIENT1));
    assert!(w
        .send(Outside, svc, c1, Segment::syn(1000, 443, 1))
        .is_forward());
    // The reply must come from the outside port as well; on the inside it is forged.
    let v = w.send(Inside, c1, svc, syn_ack(443, 1000, 5, 2));
    assert_eq!(dropped(v), DropReason::Spoofed);
}

#[test]
fn invalid_state_without_a_flow() {
    let mut w = Wire::lab();
    let (svc, stk) = (host(SERVICE), host(STOCK));
    // Mid-stream segments cannot open a flow, even where a rule would admit the connection.
    assert_eq!(
        dropped(w.send(Outside, svc, stk, Segment::tcp(1, 7443, 1, 1, 0, 0))),
        DropReason::InvalidState
    );
    assert_eq!(
        dropped(w.send(Outside, svc, stk, syn_ack(1, 7443, 1, 1))),
        DropReason::InvalidState
    );
    let rst = Segment::Tcp {
        sport: 1,
        dport: 7443,
        seq: 1,
        ack: None,
        flags: TcpFlags::RST,
        window: 0,
        wscale: None,
        payload: 0,
    };
    assert_eq!(
        dropped(w.send(Outside, svc, stk, rst)),
        DropReason::InvalidState
    );
    let synfin = Segment::Tcp {
        sport: 1,
        dport: 7443,
        seq: 1,
        ack: None,
        flags: TcpFlags::SYN | TcpFlags::FIN,
        window: 0,
        wscale: None,
        payload: 0,
    };
    assert_eq!(
        dropped(w.send(Outside, svc, stk, synfin)),
        DropReason::InvalidState
    );
    // An echo reply nobody asked for.
    let reply = Segment::Echo {
        request: false,
        id: 1,
        seq: 1,
        payload: 0,
    };
    assert_eq!(
        dropped(w.send(Outside, svc, stk, reply)),
        DropReason::InvalidState
    );
    assert!(w.table.is_empty());
}

#[test]
fn checksum_is_verified_before_state_changes() {
    let mut w = Wire::lab();
    service_handshake(&mut w, 40000);
    let (svc, stk) = (host(SERVICE), host(STOCK));
    // A forged RST with the right sequence number but a bad checksum.
    let mut f = synth::frame(
        svc,
        stk,
        &Segment::tcp(40000, 7443, 101, 9001, TcpFlags::RST, 0),
    )
    .unwrap();
    let n = f.len();
    f[n - 3] ^= 0xff; // inside the TCP header (urgent pointer/checksum region)
    assert_eq!(dropped(w.frame(Outside, &f)), DropReason::Checksum);
    assert_eq!(
        w.table.list()[0].state,
        crate::conntrack::FlowState::TcpEstablished
    );
    // A bad checksum on a would-be new connection creates nothing.
    let mut f = synth::frame(host(SERVICE2), stk, &Segment::syn(1, 7443, 1)).unwrap();
    let n = f.len();
    f[n - 1] ^= 0x01;
    assert_eq!(dropped(w.frame(Outside, &f)), DropReason::Checksum);
    assert_eq!(w.table.len(), 1);
    // UDP and ICMP checksums too.
    let mut f = synth::frame(
        host(STOCK),
        host(SERVICE),
        &Segment::Echo {
            request: true,
            id: 1,
            seq: 1,
            payload: 4,
        },
    )
    .unwrap();
    let n = f.len();
    f[n - 1] ^= 0x10;
    assert_eq!(dropped(w.frame(Inside, &f)), DropReason::Checksum);
    let mut f = synth::frame(
        host(CLIENT1),
        stk,
        &Segment::Udp {
            sport: 1,
            dport: 2,
            payload: 4,
        },
    )
    .unwrap();
    let n = f.len();
    f[n - 1] ^= 0x10;
    assert_eq!(dropped(w.frame(Outside, &f)), DropReason::Checksum);
    // The IPv4 header checksum.
    let mut f = synth::frame(svc, stk, &Segment::syn(2, 7443, 1)).unwrap();
    f[14 + 8] ^= 0x01; // TTL
    assert_eq!(dropped(w.frame(Outside, &f)), DropReason::Checksum);
}

#[test]
fn malformed_frames_follow_the_policy() {
    let mut w = Wire::lab();
    let f = synth::frame(host(SERVICE), host(STOCK), &Segment::syn(1, 7443, 1)).unwrap();
    // Cut inside the TCP header.
    assert_eq!(
        dropped(w.frame(Outside, &f[..14 + 20 + 10])),
        DropReason::Malformed
    );
    // Shorter than an Ethernet header.
    assert_eq!(dropped(w.frame(Outside, &f[..10])), DropReason::Malformed);
    // An IPv4 total length beyond the frame.
    let mut g = f.clone();
    g[14 + 2] = 0x10;
    assert_eq!(dropped(w.frame(Outside, &g)), DropReason::Malformed);
    // A truncated ARP.
    let arp = synth::arp(
        1,
        lab_mac(SERVICE),
        MacAddr([0xff; 6]),
        (lab_mac(SERVICE), Ipv4Addr::new(198, 51, 100, 110)),
        (MacAddr::default(), Ipv4Addr::new(198, 51, 100, 50)),
    );
    assert_eq!(dropped(w.frame(Outside, &arp[..30])), DropReason::Malformed);

    let yaml = DEFAULT_YAML.replace("malformed: drop", "malformed: forward");
    let mut w = Wire::new(compile(&yaml));
    let v = w.frame(Outside, &f[..14 + 20 + 10]);
    assert!(v.is_forward() && v.rule.is_none());
}

#[test]
fn non_ip_frames() {
    let mut w = Wire::lab();
    let mut lldp = vec![0x01, 0x80, 0xc2, 0, 0, 0x0e];
    lldp.extend_from_slice(&lab_mac(SERVICE).0);
    lldp.extend_from_slice(&[0x88, 0xcc, 0, 0, 0, 0]);
    assert_eq!(dropped(w.frame(Outside, &lldp)), DropReason::NonIp);
    // A VLAN-tagged IP packet is not looked into.
    let f = PacketBuilder::ethernet2(lab_mac(SERVICE).0, lab_mac(STOCK).0)
        .single_vlan(etherparse::VlanId::try_new(5).unwrap())
        .ipv4([198, 51, 100, 110], [198, 51, 100, 50], 64)
        .tcp(1, 7443, 1, 100)
        .syn();
    let mut buf = Vec::new();
    f.write(&mut buf, &[]).unwrap();
    assert_eq!(dropped(w.frame(Outside, &buf)), DropReason::NonIp);
}

#[test]
fn arp_only_for_known_addresses() {
    let mut w = Wire::lab();
    let ip = |l| Ipv4Addr::new(198, 51, 100, l);
    let bcast = MacAddr([0xff; 6]);
    // The service asks for the stock server: both known.
    let f = synth::arp(
        1,
        lab_mac(SERVICE),
        bcast,
        (lab_mac(SERVICE), ip(SERVICE)),
        (MacAddr::default(), ip(STOCK)),
    );
    let v = w.frame(Outside, &f);
    assert!(v.is_forward() && v.rule.is_none(), "{v:?}");
    // The stock server answers.
    let f = synth::arp(
        2,
        lab_mac(STOCK),
        lab_mac(SERVICE),
        (lab_mac(STOCK), ip(STOCK)),
        (lab_mac(SERVICE), ip(SERVICE)),
    );
    assert!(w.frame(Inside, &f).is_forward());
    // Unknown target or unknown sender.
    let f = synth::arp(
        1,
        lab_mac(SERVICE),
        bcast,
        (lab_mac(SERVICE), ip(SERVICE)),
        (MacAddr::default(), ip(99)),
    );
    assert_eq!(dropped(w.frame(Outside, &f)), DropReason::ArpUnknown);
    let f = synth::arp(
        1,
        lab_mac(99),
        bcast,
        (lab_mac(99), ip(99)),
        (MacAddr::default(), ip(STOCK)),
    );
    assert_eq!(dropped(w.frame(Outside, &f)), DropReason::ArpUnknown);
    // A probe (sender 0.0.0.0) for a known address.
    let f = synth::arp(
        1,
        lab_mac(STOCK),
        bcast,
        (lab_mac(STOCK), Ipv4Addr::UNSPECIFIED),
        (MacAddr::default(), ip(STOCK)),
    );
    assert!(w.frame(Inside, &f).is_forward());
    // A client claiming the service's address in ARP (pinned: sender MAC differs).
    let f = synth::arp(
        2,
        lab_mac(CLIENT1),
        lab_mac(STOCK),
        (lab_mac(CLIENT1), ip(SERVICE)),
        (lab_mac(STOCK), ip(STOCK)),
    );
    assert_eq!(dropped(w.frame(Outside, &f)), DropReason::Spoofed);
    // Right Ethernet source, forged ARP sender hardware address.
    let f = synth::arp(
        2,
        lab_mac(SERVICE),
        lab_mac(STOCK),
        (lab_mac(CLIENT1), ip(SERVICE)),
        (lab_mac(STOCK), ip(STOCK)),
    );
    assert_eq!(dropped(w.frame(Outside, &f)), DropReason::Spoofed);
    // A stock address answering from the outside.
    let f = synth::arp(
        2,
        lab_mac(STOCK),
        lab_mac(SERVICE),
        (lab_mac(STOCK), ip(STOCK)),
        (lab_mac(SERVICE), ip(SERVICE)),
    );
    assert_eq!(dropped(w.frame(Outside, &f)), DropReason::Spoofed);
}

fn neighbour_solicitation(from: Endpoint, target: IpAddr) -> Segment {
    let IpAddr::V6(t) = target else {
        unreachable!()
    };
    let mut body = t.octets().to_vec();
    body.extend_from_slice(&[1, 1]);
    body.extend_from_slice(&from.mac.0);
    Segment::Icmp {
        icmp_type: 135,
        code: 0,
        rest: [0; 4],
        body,
    }
}

#[test]
fn neighbour_discovery_only_for_known_addresses() {
    let mut w = Wire::lab();
    let (svc, stk) = (host6(SERVICE), host6(STOCK));
    let v = w.send(Outside, svc, stk, neighbour_solicitation(svc, stk.ip));
    assert!(v.is_forward() && v.rule.is_none(), "{v:?}");
    // Advertisement back.
    let mut na = neighbour_solicitation(stk, stk.ip);
    if let Segment::Icmp { icmp_type, .. } = &mut na {
        *icmp_type = 136;
    }
    assert!(w.send(Inside, stk, svc, na).is_forward());
    // The stock server's link-local address is not in the rules.
    let ll: IpAddr = "fe80::c6ff:fe33:6432".parse().unwrap();
    let v = w.send(Outside, svc, stk, neighbour_solicitation(svc, ll));
    assert_eq!(dropped(v), DropReason::ArpUnknown);
    // Solicitation from an unknown source.
    let stranger = Endpoint {
        mac: lab_mac(0x77),
        ip: "2001:db8:64::77".parse().unwrap(),
    };
    let v = w.send(
        Outside,
        stranger,
        stk,
        neighbour_solicitation(stranger, stk.ip),
    );
    assert_eq!(dropped(v), DropReason::ArpUnknown);
    // Router advertisements: the topology has no router.
    let ra = Segment::Icmp {
        icmp_type: 134,
        code: 0,
        rest: [64, 0, 0, 0],
        body: vec![0; 8],
    };
    assert_eq!(
        dropped(w.send(Outside, svc, stk, ra)),
        DropReason::ArpUnknown
    );
    // A pinned address from another MAC.
    let forged = Endpoint {
        mac: lab_mac(CLIENT1),
        ip: svc.ip,
    };
    let v = w.send(Outside, forged, stk, neighbour_solicitation(forged, stk.ip));
    assert_eq!(dropped(v), DropReason::Spoofed);
    // Bad checksum.
    let mut f = synth::frame(svc, stk, &neighbour_solicitation(svc, stk.ip)).unwrap();
    let n = f.len();
    f[n - 1] ^= 1;
    assert_eq!(dropped(w.frame(Outside, &f)), DropReason::Checksum);
    assert!(w.table.is_empty());
}

#[test]
fn fragments_follow_the_policy() {
    let frag = |w: &mut Wire, port, src: Endpoint, dst: Endpoint| {
        let IpAddr::V4(s) = src.ip else {
            unreachable!()
        };
        let IpAddr::V4(d) = dst.ip else {
            unreachable!()
        };
        let mut ip =
            etherparse::Ipv4Header::new(16, 64, etherparse::IpNumber::TCP, s.octets(), d.octets())
                .unwrap();
        ip.more_fragments = true;
        ip.header_checksum = ip.calc_header_checksum();
        let mut f = Vec::new();
        etherparse::Ethernet2Header {
            source: src.mac.0,
            destination: dst.mac.0,
            ether_type: etherparse::EtherType::IPV4,
        }
        .write(&mut f)
        .unwrap();
        ip.write(&mut f).unwrap();
        f.extend_from_slice(&[0u8; 16]);
        w.frame(port, &f)
    };
    let mut w = Wire::lab();
    service_handshake(&mut w, 40000);
    assert_eq!(
        dropped(frag(&mut w, Outside, host(SERVICE), host(STOCK))),
        DropReason::Fragment
    );

    let yaml = DEFAULT_YAML.replace("fragments: drop", "fragments: forward");
    let mut w = Wire::new(compile(&yaml));
    // No flow between the two addresses yet.
    assert_eq!(
        dropped(frag(&mut w, Outside, host(SERVICE), host(STOCK))),
        DropReason::Fragment
    );
    service_handshake(&mut w, 40000);
    assert!(frag(&mut w, Outside, host(SERVICE), host(STOCK)).is_forward());
    assert!(frag(&mut w, Inside, host(STOCK), host(SERVICE)).is_forward());
    // Spoofed fragments still are not.
    let forged = Endpoint {
        mac: lab_mac(CLIENT1),
        ip: v4(SERVICE),
    };
    assert_eq!(
        dropped(frag(&mut w, Outside, forged, host(STOCK))),
        DropReason::Fragment
    );
    // Never on a one_way flow (fragments would smuggle client data).
    assert!(w
        .send(
            Inside,
            host(STOCK),
            host(CLIENT1),
            Segment::syn(45000, 7137, 1)
        )
        .is_forward());
    assert_eq!(
        dropped(frag(&mut w, Outside, host(CLIENT1), host(STOCK))),
        DropReason::Fragment
    );
}

#[test]
fn conntrack_full_drops_new_connections_only() {
    let yaml = DEFAULT_YAML.replace("conntrack_limit: 65536", "conntrack_limit: 1");
    let mut w = Wire::new(compile(&yaml));
    service_handshake(&mut w, 40000);
    let (svc, stk) = (host(SERVICE), host(STOCK));
    let v = w.send(Outside, svc, stk, Segment::syn(40001, 7443, 1));
    assert_eq!(dropped(v), DropReason::ConntrackFull);
    // The established connection keeps working.
    let v = w.send(
        Outside,
        svc,
        stk,
        Segment::tcp(40000, 7443, 101, 9001, TcpFlags::PSH, 10),
    );
    assert!(v.is_forward());
    let v = w.send(Inside, stk, svc, Segment::tcp(7443, 40000, 9001, 111, 0, 0));
    assert!(v.is_forward());
}

#[test]
fn icmp_echo_pairs() {
    let mut w = Wire::lab();
    let (stk, svc) = (host(STOCK), host(SERVICE));
    let req = Segment::Echo {
        request: true,
        id: 42,
        seq: 1,
        payload: 56,
    };
    let rep = Segment::Echo {
        request: false,
        id: 42,
        seq: 1,
        payload: 56,
    };
    let v = w.send(Inside, stk, svc, req.clone());
    assert_eq!(fwd(&w, v), Some("stock-ping"));
    let v = w.send(Outside, svc, stk, rep.clone());
    assert_eq!(fwd(&w, v), Some("stock-ping"));
    // Another identifier is not a reply to this echo.
    let other = Segment::Echo {
        request: false,
        id: 43,
        seq: 1,
        payload: 56,
    };
    assert_eq!(
        dropped(w.send(Outside, svc, stk, other)),
        DropReason::InvalidState
    );
    // ICMPv6.
    let v = w.send(Inside, host6(STOCK), host6(MONITOR), req);
    assert_eq!(fwd(&w, v), Some("stock-ping6"));
    assert!(w
        .send(Outside, host6(MONITOR), host6(STOCK), rep)
        .is_forward());
    // Never toward the clients.
    let req = Segment::Echo {
        request: true,
        id: 1,
        seq: 1,
        payload: 0,
    };
    assert_eq!(
        dropped(w.send(Inside, stk, host(CLIENT1), req)),
        DropReason::NoRule
    );
    // Expired after the icmp timeout.
    w.advance(21);
    let rep = Segment::Echo {
        request: false,
        id: 42,
        seq: 2,
        payload: 0,
    };
    assert_eq!(
        dropped(w.send(Outside, svc, stk, rep)),
        DropReason::InvalidState
    );
}

fn quote(src: Endpoint, dst: Endpoint, seg: &Segment) -> Vec<u8> {
    // The first 28 (v4) bytes of the offending packet, as routers quote it.
    let f = synth::frame(src, dst, seg).unwrap();
    f[14..14 + 28].to_vec()
}

#[test]
fn icmp_errors_related_to_a_flow_pass() {
    let mut w = Wire::lab();
    let (stk, c1) = (host(STOCK), host(CLIENT1));
    let syn = Segment::syn(45000, 7137, 10);
    assert!(w.send(Inside, stk, c1, syn.clone()).is_forward());
    // The client's host says "port unreachable" about the push SYN.
    let err = Segment::Icmp {
        icmp_type: 3,
        code: 3,
        rest: [0; 4],
        body: quote(stk, c1, &syn),
    };
    let v = w.send(Outside, c1, stk, err);
    assert_eq!(fwd(&w, v), Some("stock-push-to-clients"));
    // An error quoting a flow that does not exist.
    let other = Segment::syn(45001, 7137, 10);
    let err = Segment::Icmp {
        icmp_type: 3,
        code: 3,
        rest: [0; 4],
        body: quote(stk, c1, &other),
    };
    assert_eq!(
        dropped(w.send(Outside, c1, stk, err)),
        DropReason::InvalidState
    );
    // An error quoting the flow but sent to the wrong end (the quoted packet came from stk).
    let err = Segment::Icmp {
        icmp_type: 3,
        code: 3,
        rest: [0; 4],
        body: quote(c1, stk, &Segment::syn(7137, 45000, 1)),
    };
    assert_eq!(
        dropped(w.send(Outside, c1, stk, err)),
        DropReason::InvalidState
    );
}

#[test]
fn udp_pseudo_connections() {
    let yaml = DEFAULT_YAML.replace(
        "rules:\n",
        "rules:\n  - {name: dns, direction: outbound, protocol: udp, src: [stock], dst: [service], dst_ports: [53], action: accept}\n",
    );
    let mut w = Wire::new(compile(&yaml));
    let (stk, svc) = (host(STOCK), host(SERVICE));
    let q = Segment::Udp {
        sport: 3333,
        dport: 53,
        payload: 30,
    };
    let a = Segment::Udp {
        sport: 53,
        dport: 3333,
        payload: 90,
    };
    assert_eq!(
        dropped(w.send(Outside, svc, stk, a.clone())),
        DropReason::NoRule
    );
    let v = w.send(Inside, stk, svc, q);
    assert_eq!(fwd(&w, v), Some("dns"));
    let v = w.send(Outside, svc, stk, a.clone());
    assert_eq!(fwd(&w, v), Some("dns"));
    assert_eq!(
        w.table.list()[0].state,
        crate::conntrack::FlowState::UdpMultiple
    );
    w.advance(121);
    assert_eq!(dropped(w.send(Outside, svc, stk, a)), DropReason::NoRule);
}

#[test]
fn other_protocols_and_stateless_icmp() {
    let yaml = DEFAULT_YAML.replace(
        "rules:\n",
        "rules:\n  - {name: gre, direction: outbound, protocol: any, src: [stock], dst: [service], action: accept}\n  - {name: ts, direction: inbound, protocol: icmp, src: [service], dst: [stock], icmp_types: [13], action: accept}\n",
    );
    let mut w = Wire::new(compile(&yaml));
    let (stk, svc) = (host(STOCK), host(SERVICE));
    let gre = Segment::Raw {
        proto: 47,
        payload: 20,
    };
    let v = w.send(Inside, stk, svc, gre.clone());
    assert_eq!(fwd(&w, v), Some("gre"));
    let v = w.send(Outside, svc, stk, gre);
    assert_eq!(fwd(&w, v), Some("gre"));
    // An ICMP timestamp request matched per packet, never tracked.
    let ts = Segment::Icmp {
        icmp_type: 13,
        code: 0,
        rest: [0, 1, 0, 1],
        body: vec![0; 12],
    };
    let before = w.table.len();
    let v = w.send(Outside, svc, stk, ts);
    assert_eq!(fwd(&w, v), Some("ts"));
    assert_eq!(w.table.len(), before);
}

#[test]
fn decide_does_not_scan_rules_linearly_for_each_prefix() {
    // Functional check at scale: 20k prefixes, first match still right.
    let mut yaml = String::from(DEFAULT_YAML);
    let mut big = String::from("  big:\n");
    for i in 0..20_000u32 {
        big.push_str(&format!(
            "    - {}/32\n",
            Ipv4Addr::from(0xcb00_7100u32 + i)
        ));
    }
    yaml = yaml.replace("sets:\n", &format!("sets:\n{big}"));
    yaml = yaml.replace(
        "rules:\n",
        "rules:\n  - {name: big-drop, direction: inbound, protocol: tcp, src: [big], dst: [stock], action: drop}\n",
    );
    let mut w = Wire::new(compile(&yaml));
    let far = Endpoint {
        mac: lab_mac(0x55),
        ip: IpAddr::V4(Ipv4Addr::from(0xcb00_7100u32 + 19_999)),
    };
    let v = w.send(Outside, far, host(STOCK), Segment::syn(1, 7443, 1));
    assert_eq!(w.rule(&v), Some("big-drop"));
    let v = w.send(
        Outside,
        host(SERVICE),
        host(STOCK),
        Segment::syn(1, 7443, 1),
    );
    assert_eq!(w.rule(&v), Some("service-to-stock"));
}

/// The client's side of a push, frame by frame, with `edit` applied to its one segment.
fn push_with(edit: &crate::synth::TcpEdit, v6: bool, syn: bool) -> Verdict {
    let mut w = Wire::lab();
    let (stk, c1) = if v6 {
        (host6(STOCK), host6(CLIENT1))
    } else {
        (host(STOCK), host(CLIENT1))
    };
    let mut frame = |port, src, dst, seg: Segment, e: Option<&crate::synth::TcpEdit>| {
        let f = crate::synth::frame(src, dst, &seg).unwrap();
        let f = match e {
            Some(e) => crate::synth::edit_tcp(&f, e).unwrap(),
            None => f,
        };
        w.frame(port, &f)
    };
    assert!(frame(Inside, stk, c1, Segment::syn(45000, 7137, 10), None).is_forward());
    let e = syn.then_some(edit);
    let v = frame(Outside, c1, stk, syn_ack(7137, 45000, 70, 11), e);
    if syn {
        return v;
    }
    assert!(v.is_forward());
    assert!(frame(
        Inside,
        stk,
        c1,
        Segment::tcp(45000, 7137, 11, 71, 0, 1000),
        None
    )
    .is_forward());
    frame(
        Outside,
        c1,
        stk,
        Segment::tcp(7137, 45000, 71, 1011, 0, 0),
        Some(edit),
    )
}

#[test]
fn one_way_push_is_exact_claim_1_137() {
    use crate::synth::TcpEdit;
    let opts = |o: &[u8]| TcpEdit {
        options: Some(o.to_vec()),
        ..Default::default()
    };
    let ts = [1, 1, 8, 10, 0, 0, 0, 5, 0, 0, 0, 9];
    // SACK blocks inside what the stock server sent (bytes 11..1011), after a timestamp.
    let sack = |l: u32, r: u32| {
        let mut o = ts.to_vec();
        o.extend([1, 1, 5, 10]);
        o.extend(l.to_be_bytes());
        o.extend(r.to_be_bytes());
        o
    };
    let syn_opts = [
        2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
    ];
    for v6 in [false, true] {
        let ok = |e: &TcpEdit, syn: bool| {
            let v = push_with(e, v6, syn);
            assert!(v.is_forward(), "{e:?} (SYN-ACK: {syn}, v6: {v6}): {v:?}");
        };
        let bad = |e: &TcpEdit, syn: bool| {
            let v = push_with(e, v6, syn);
            assert_eq!(
                v.reason,
                Some(DropReason::OneWay),
                "{e:?} (SYN-ACK: {syn}, v6: {v6})"
            );
        };
        // The SYN-ACK: MSS, SACK-permitted, timestamp, window scale: 20 bytes as Linux lays
        // them out, 24 as macOS does.
        ok(&opts(&syn_opts), true);
        let macos = [
            2, 4, 5, 180, 1, 3, 3, 6, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 4, 2, 0, 0,
        ];
        ok(&opts(&macos), true);
        bad(&opts(&[&ts[..], &ts[..], &[1, 1, 1, 1]].concat()), true); // 28 bytes
                                                                       // Later: nothing, a timestamp, SACK blocks inside the sent range.
        ok(&TcpEdit::default(), false);
        ok(&opts(&ts), false);
        ok(&opts(&sack(500, 700)), false);
        ok(&opts(&[1, 1, 5, 10, 0, 0, 0, 11, 0, 0, 3, 0xf3]), false); // 11..1011, no timestamp
                                                                      // Refused: MSS or window scale after the handshake, a padded or reordered timestamp,
                                                                      // unknown kinds, SACK blocks outside the sent range or inverted.
        bad(&opts(&[2, 4, 5, 180]), false);
        bad(&opts(&[1, 3, 3, 7]), false);
        bad(&opts(&[8, 10, 0, 0, 0, 5, 0, 0, 0, 9, 1, 1]), false);
        bad(&opts(&[1, 1, 253, 6, 0xde, 0xad, 0xbe, 0xef]), false);
        bad(&opts(&sack(500, 1012)), false); // beyond the stock server's last byte
        bad(&opts(&sack(5, 700)), false); // before its first
        bad(&opts(&sack(700, 500)), false);
        // URG and the urgent pointer; IPv4 options and IPv6 extension headers.
        for syn in [true, false] {
            bad(
                &TcpEdit {
                    urg: true,
                    ..Default::default()
                },
                syn,
            );
            bad(
                &TcpEdit {
                    urgent_pointer: 9,
                    ..Default::default()
                },
                syn,
            );
            bad(
                &TcpEdit {
                    ip_extras: true,
                    ..Default::default()
                },
                syn,
            );
        }
    }
}
