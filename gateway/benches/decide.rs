//! Cost of `core::decide` per packet with 10, 10k and 100k prefixes in the rules.
//!
//! The prefixes form a blocklist set used by the first (inbound drop) rule, so every inbound
//! lookup goes through tables holding all of them. Measured paths:
//! - `new_no_rule`: a client's SYN to the stock server (full rule lookup, no state);
//! - `new_blocked`: a SYN from an address inside the blocklist (matched by the big set);
//! - `established`: an ACK on the service's tracked connection (flow lookup + TCP window);
//! - `parse_established`: the same frame including `packet::parse` and checksum verification.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use stockade_gateway::conntrack::ConnTable;
use stockade_gateway::core::decide;
use stockade_gateway::packet::{self, MacAddr, Port, TcpFlags};
use stockade_gateway::rules::{self, AddrRef, Cidr, Protocol, Rule, RuleAction, Ruleset};
use stockade_gateway::synth::{self, Endpoint, Segment};
use stockade_gateway::Direction;

const DEFAULT: &str = include_str!("../../rules/default.yaml");

fn lab(last: u8) -> Endpoint {
    Endpoint {
        mac: MacAddr([2, 0, 0xc6, 0x33, 0x64, last]),
        ip: IpAddr::V4(Ipv4Addr::new(198, 51, 100, last)),
    }
}

/// The lab rules plus a blocklist of `n` distinct pseudo-random prefixes (/16 to /32).
fn ruleset(n: usize) -> (Ruleset, Ipv4Addr) {
    let mut file = rules::load_str(DEFAULT, "default.yaml").expect("default rules");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut set = std::collections::BTreeSet::new();
    while set.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let addr = (x as u32) | 0x0100_0000; // stay out of 0/8
        let len = 16 + (x >> 40) as u8 % 17;
        let net = ipnet::Ipv4Net::new(Ipv4Addr::from(addr), len)
            .unwrap()
            .trunc();
        // Keep the lab's own /24 out of the blocklist.
        if !net.contains(&Ipv4Addr::new(198, 51, 100, 1)) {
            set.insert(Cidr(net.into()));
        }
    }
    let sample = match set.iter().next().unwrap().0 {
        ipnet::IpNet::V4(n) => n.network(),
        _ => unreachable!(),
    };
    file.sets
        .insert("blocklist".into(), set.into_iter().collect());
    file.rules.insert(
        0,
        Rule {
            name: "blocklist".into(),
            direction: Direction::Inbound,
            protocol: Protocol::Any,
            src: vec![AddrRef::Set("blocklist".into())],
            dst: vec![AddrRef::Any],
            src_ports: vec![],
            dst_ports: vec![],
            icmp_types: vec![],
            action: RuleAction::Drop,
            one_way: false,
            unpinned_reason: None,
            comment: None,
        },
    );
    (Ruleset::compile(&file).expect("compiles"), sample)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decide");
    for n in [10usize, 10_000, 100_000] {
        let (rs, blocked) = ruleset(n);
        let mut table = ConnTable::for_rules(&rs);
        let now = Instant::now();
        let (svc, stk, cli) = (lab(110), lab(50), lab(101));
        let bad = Endpoint {
            mac: MacAddr([2, 0, 0, 0, 0, 9]),
            ip: IpAddr::V4(blocked),
        };

        // Open the service's connection.
        let open = [
            (Port::Outside, svc, stk, Segment::syn(40000, 7443, 100)),
            (
                Port::Inside,
                stk,
                svc,
                Segment::Tcp {
                    sport: 7443,
                    dport: 40000,
                    seq: 9000,
                    ack: Some(101),
                    flags: TcpFlags::SYN,
                    window: 65160,
                    wscale: None,
                    payload: 0,
                },
            ),
            (
                Port::Outside,
                svc,
                stk,
                Segment::tcp(40000, 7443, 101, 9001, 0, 0),
            ),
        ];
        for (port, a, b, s) in &open {
            let f = synth::frame(*a, *b, s).unwrap();
            let p = packet::parse(&f, *port).unwrap();
            assert!(decide(now, &rs, &p, &mut table).is_forward());
        }

        let new_syn = synth::frame(cli, stk, &Segment::syn(5555, 7443, 1)).unwrap();
        let blocked_syn = synth::frame(bad, stk, &Segment::syn(5555, 7443, 1)).unwrap();
        let ack = synth::frame(stk, svc, &Segment::tcp(7443, 40000, 9001, 101, 0, 0)).unwrap();
        let p_new = packet::parse(&new_syn, Port::Outside).unwrap();
        let p_blocked = packet::parse(&blocked_syn, Port::Outside).unwrap();
        let p_ack = packet::parse(&ack, Port::Inside).unwrap();
        assert_eq!(
            decide(now, &rs, &p_blocked, &mut table).rule,
            Some(0),
            "blocklist matches"
        );
        assert!(!decide(now, &rs, &p_new, &mut table).is_forward());
        assert!(decide(now, &rs, &p_ack, &mut table).is_forward());

        g.bench_with_input(BenchmarkId::new("new_no_rule", n), &n, |b, _| {
            b.iter(|| decide(now, &rs, black_box(&p_new), &mut table))
        });
        g.bench_with_input(BenchmarkId::new("new_blocked", n), &n, |b, _| {
            b.iter(|| decide(now, &rs, black_box(&p_blocked), &mut table))
        });
        g.bench_with_input(BenchmarkId::new("established", n), &n, |b, _| {
            b.iter(|| decide(now, &rs, black_box(&p_ack), &mut table))
        });
        g.bench_with_input(BenchmarkId::new("parse_established", n), &n, |b, _| {
            b.iter(|| {
                let p = packet::parse(black_box(&ack), Port::Inside).unwrap();
                decide(now, &rs, &p, &mut table)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
