use std::net::IpAddr;

use proptest::prelude::*;

use super::*;
use crate::testutil::{compile, parse_file, v4, v6, DEFAULT_YAML, FIG1_YAML};

fn q(src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> FlowQuery {
    FlowQuery {
        src,
        dst,
        proto,
        src_port: sport,
        dst_port: dport,
        icmp_type: None,
    }
}

const BASE: &str = "settings:\n  inside_sources: [10.0.0.0/8]\n";

fn with_rules(rules: &str) -> String {
    format!("{BASE}sets:\n  a: [192.0.2.0/24]\n  b: [192.0.2.128/25, \"2001:db8::/32\"]\nrules:\n{rules}")
}

#[test]
fn schema_file_is_generated_from_the_type() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../rules/schema.json");
    let generated = json_schema();
    if std::env::var_os("STOCKADE_WRITE_SCHEMA").is_some() {
        std::fs::write(path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "rules/schema.json is stale; regenerate with STOCKADE_WRITE_SCHEMA=1 cargo test -p stockade-gateway schema_file"
    );
}

#[test]
fn default_and_fig1_compile() {
    let rs = compile(DEFAULT_YAML);
    assert_eq!(
        rs.rule_names(),
        [
            "service-to-stock",
            "monitor-to-stock-metrics",
            "stock-push-to-clients",
            "stock-ping",
            "stock-ping6"
        ]
    );
    assert!(rs.rules()[2].one_way);
    assert_eq!(rs.settings().tcp_window, TcpWindow::Loose);
    assert_eq!(rs.settings().fragments, Policy::Drop);
    assert_eq!(rs.settings().malformed, Policy::Drop);
    assert_eq!(
        rs.settings().metrics_listen,
        Some("192.0.2.1:9464".parse().unwrap())
    );
    assert!(rs.is_inside_source(v4(50)));
    assert!(rs.is_inside_source(v6(51)));
    assert!(!rs.is_inside_source(v4(110)));
    assert_eq!(rs.pin(v4(110)), Some("02:00:c6:33:64:6e".parse().unwrap()));
    let fig1 = compile(FIG1_YAML);
    assert_eq!(
        fig1.first_match(
            Direction::Inbound,
            &q("133.170.49.110".parse().unwrap(), v4(50), 6, 40000, 7443)
        ),
        Some(0)
    );
}

#[test]
fn settings_defaults() {
    let f = parse_file(&with_rules("  []\n"));
    let s = &f.settings;
    assert_eq!(s.conntrack_limit, 65536);
    assert_eq!(s.timeouts, Timeouts::default());
    assert_eq!(s.tcp_window, TcpWindow::Loose);
    assert_eq!(s.fragments, Policy::Drop);
    assert_eq!(s.malformed, Policy::Drop);
    assert_eq!(s.metrics_listen, None);
}

#[test]
fn yaml_errors_carry_file_line_column_and_expectation() {
    let text = "settings:\n  inside_sources: [stock]\n  tcp_windw: strict\n";
    let e = load_str(text, "x.yaml").unwrap_err();
    assert_eq!((e.line, e.column), (Some(3), Some(3)), "{e}");
    assert!(e.to_string().starts_with("x.yaml:3:3: "), "{e}");
    assert!(e.message.contains("unknown field `tcp_windw`"), "{e}");
    assert!(e.message.contains("expected one of"), "{e}");

    let text = "settings:\n  inside_sources: [10.0.0.0/8]\n  tcp_window: tight\n";
    let e = load_str(text, "x.yaml").unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert!(
        e.message.contains("loose") && e.message.contains("strict"),
        "{e}"
    );

    let text = with_rules(
        "  - name: r\n    direction: inbound\n    protocol: tcp\n    src: [10.0.0.1/8]\n    dst: [any]\n    action: accept\n",
    );
    let e = load_str(&text, "x.yaml").unwrap_err();
    assert!(e.message.contains("host bits set"), "{e}");
    assert_eq!(e.line, Some(10), "{e}");

    let text = with_rules(
        "  - name: r\n    direction: inbound\n    protocol: tcp\n    src: [any]\n    dst: [any]\n    dst_ports: [70000]\n    action: accept\n",
    );
    let e = load_str(&text, "x.yaml").unwrap_err();
    assert!(e.message.contains("0-65535"), "{e}");

    let e = load_str("rules: []\n", "x.yaml").unwrap_err();
    assert!(e.message.contains("missing field `settings`"), "{e}");
}

#[test]
fn semantic_errors_are_located() {
    let text = with_rules(
        "  - name: first\n    direction: outbound\n    protocol: tcp\n    src: [a]\n    dst: [any]\n    action: accept\n  - name: second\n    direction: outbound\n    protocol: udp\n    src: [a]\n    dst: [nosuch]\n    action: accept\n",
    );
    let e = compile_str(&text, "f.yaml").unwrap_err();
    assert!(e.message.contains("unknown set `nosuch`"), "{e}");
    assert!(e.message.contains("a, b"), "lists the known sets: {e}");
    let line = text.lines().position(|l| l.contains("[nosuch]")).unwrap() + 1;
    assert_eq!(e.line, Some(line), "{e}");
    assert_eq!(e.column, Some(11), "{e}");
    assert!(e.to_string().starts_with(&format!("f.yaml:{line}:11: ")));
}

fn compile_err(rules: &str) -> String {
    compile_str(&with_rules(rules), "t.yaml")
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[test]
fn semantic_errors() {
    let e = compile_err("  - {name: r, direction: inbound, protocol: icmp, src: [any], dst: [any], dst_ports: [1], action: drop}\n");
    assert!(e.contains("ports need protocol tcp or udp"), "{e}");
    let e = compile_err("  - {name: r, direction: inbound, protocol: tcp, src: [any], dst: [any], icmp_types: [8], action: drop}\n");
    assert!(e.contains("icmp_types need protocol icmp"), "{e}");
    let e = compile_err("  - {name: r, direction: outbound, protocol: tcp, src: [any], dst: [any], action: drop, one_way: true}\n");
    assert!(e.contains("one_way applies only to accept"), "{e}");
    let e = compile_err(
        "  - {name: r, direction: outbound, protocol: tcp, src: [], dst: [any], action: drop}\n",
    );
    assert!(e.contains("at least one entry"), "{e}");
    let e = compile_err("  - {name: r, direction: outbound, protocol: tcp, src: [a], dst: [any], action: drop}\n  - {name: r, direction: outbound, protocol: udp, src: [a], dst: [any], action: drop}\n");
    assert!(e.contains("duplicate rule name `r`"), "{e}");
    let e = compile_err(
        "  - {name: 9r, direction: outbound, protocol: tcp, src: [a], dst: [any], action: drop}\n",
    );
    assert!(e.contains("rule name"), "{e}");
    // Inbound accept from an unpinned source needs a reason.
    let e = compile_err(
        "  - {name: r, direction: inbound, protocol: tcp, src: [a], dst: [any], action: accept}\n",
    );
    assert!(e.contains("unpinned source(s) 192.0.2.0/24"), "{e}");
    assert!(e.contains("unpinned_reason"), "{e}");
    compile_str(
        &with_rules("  - {name: r, direction: inbound, protocol: tcp, src: [a], dst: [any], action: accept, unpinned_reason: lab only}\n"),
        "t.yaml",
    )
    .unwrap();
    // An inbound drop needs no pin.
    compile_str(
        &with_rules("  - {name: r, direction: inbound, protocol: tcp, src: [a], dst: [any], action: drop}\n"),
        "t.yaml",
    )
    .unwrap();

    let e = compile_str("settings:\n  inside_sources: []\n", "t.yaml")
        .map(|_| ())
        .unwrap_err();
    assert!(e.message.contains("inside_sources"), "{e}");
    assert_eq!(e.line, Some(2));
    let e = compile_str(
        "settings:\n  inside_sources: [10.0.0.0/8]\n  conntrack_limit: 0\n",
        "t.yaml",
    )
    .map(|_| ())
    .unwrap_err();
    assert!(e.message.contains("conntrack_limit"), "{e}");
    let e = compile_str(
        "settings:\n  inside_sources: [10.0.0.0/8]\npins:\n  10.0.0.1: \"01:00:5e:00:00:01\"\n",
        "t.yaml",
    )
    .map(|_| ())
    .unwrap_err();
    assert!(e.message.contains("unicast"), "{e}");
    assert_eq!(e.line, Some(4));
    let e = load_str(
        "settings:\n  inside_sources: [10.0.0.0/8]\npins:\n  10.0.0.1: \"zz:00:5e:00:00:01\"\n",
        "t.yaml",
    )
    .unwrap_err();
    assert!(e.message.contains("MAC address"), "{e}");
}

#[test]
fn address_refs_ports_and_macs_parse() {
    assert_eq!("any".parse::<AddrRef>().unwrap(), AddrRef::Any);
    assert_eq!(
        "stock".parse::<AddrRef>().unwrap(),
        AddrRef::Set("stock".into())
    );
    assert_eq!(
        "198.51.100.7".parse::<AddrRef>().unwrap().to_string(),
        "198.51.100.7"
    );
    assert_eq!(
        "2001:db8::/32".parse::<AddrRef>().unwrap().to_string(),
        "2001:db8::/32"
    );
    assert!("bad name!".parse::<AddrRef>().is_err());
    assert!("300.1.1.1".parse::<AddrRef>().is_err());
    assert_eq!(
        "1024-65535".parse::<PortSpec>().unwrap(),
        PortSpec {
            lo: 1024,
            hi: 65535
        }
    );
    assert!("9-1".parse::<PortSpec>().is_err());
    assert!("x".parse::<PortSpec>().is_err());
    let m: MacAddr = "02:00:C6:33:64:6e".parse().unwrap();
    assert_eq!(m.to_string(), "02:00:c6:33:64:6e");
    assert!("02:00:c6:33:64".parse::<MacAddr>().is_err());
    assert!("02:00:c6:33:64:6e:00".parse::<MacAddr>().is_err());
}

#[test]
fn round_trip_through_yaml() {
    let f = parse_file(DEFAULT_YAML);
    let text = serde_yaml::to_string(&f).unwrap();
    assert_eq!(parse_file(&text), f);
}

#[test]
fn first_match_follows_file_order_and_fields() {
    let rs = compile(&with_rules(
        "  - {name: drop-b, direction: outbound, protocol: tcp, src: [10.0.0.0/8], dst: [b], dst_ports: [22], action: drop}\n\
         \x20 - {name: ssh, direction: outbound, protocol: tcp, src: [10.0.0.0/8], dst: [a], dst_ports: [22, \"2000-2010\"], action: accept}\n\
         \x20 - {name: udp-src, direction: outbound, protocol: udp, src: [10.0.0.0/8], dst: [any], src_ports: [53], action: accept}\n\
         \x20 - {name: ping, direction: outbound, protocol: icmp, src: [10.0.0.0/8], dst: [any], icmp_types: [8, 13], action: accept}\n\
         \x20 - {name: ping6, direction: outbound, protocol: icmpv6, src: [\"2001:db8:1::/48\"], dst: [b], action: accept}\n\
         \x20 - {name: all, direction: outbound, protocol: any, src: [10.1.0.0/16], dst: [any], action: accept}\n",
    ));
    let out = Direction::Outbound;
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let m = |q: FlowQuery| rs.first_match(out, &q).map(|i| rs.rule_names()[i].as_str());
    // b (.128/25) is inside a: the earlier drop rule wins for it.
    assert_eq!(
        m(q(ip("10.0.0.1"), ip("192.0.2.200"), 6, 1, 22)),
        Some("drop-b")
    );
    assert_eq!(
        m(q(ip("10.0.0.1"), ip("192.0.2.100"), 6, 1, 22)),
        Some("ssh")
    );
    assert_eq!(
        m(q(ip("10.0.0.1"), ip("192.0.2.100"), 6, 1, 2005)),
        Some("ssh")
    );
    assert_eq!(m(q(ip("10.0.0.1"), ip("192.0.2.100"), 6, 1, 2011)), None);
    assert_eq!(m(q(ip("10.0.0.1"), ip("192.0.2.100"), 17, 1, 22)), None);
    assert_eq!(
        m(q(ip("10.0.0.1"), ip("203.0.113.9"), 17, 53, 9)),
        Some("udp-src")
    );
    assert_eq!(m(q(ip("10.0.0.1"), ip("203.0.113.9"), 17, 54, 9)), None);
    let icmp = |t| FlowQuery {
        icmp_type: Some(t),
        ..q(ip("10.0.0.1"), ip("203.0.113.9"), 1, 0, 0)
    };
    assert_eq!(m(icmp(8)), Some("ping"));
    assert_eq!(m(icmp(13)), Some("ping"));
    assert_eq!(m(icmp(0)), None);
    let icmp6 = FlowQuery {
        icmp_type: Some(128),
        ..q(ip("2001:db8:1::5"), ip("2001:db8:ffff::1"), 58, 0, 0)
    };
    assert_eq!(m(icmp6), Some("ping6"));
    // `any` protocol, and an unknown one.
    assert_eq!(
        m(q(ip("10.1.2.3"), ip("198.51.100.1"), 47, 0, 0)),
        Some("all")
    );
    assert_eq!(m(q(ip("10.2.2.3"), ip("198.51.100.1"), 47, 0, 0)), None);
    // Direction is part of the match.
    assert_eq!(
        rs.first_match(
            Direction::Inbound,
            &q(ip("10.1.2.3"), ip("198.51.100.1"), 47, 0, 0)
        ),
        None
    );
}

#[test]
fn known_addresses() {
    let rs = compile(DEFAULT_YAML);
    for h in [10, 50, 51, 101, 110, 111, 220] {
        assert!(rs.is_known(v4(h)), "{h}");
    }
    assert!(rs.is_known(v6(50)));
    assert!(!rs.is_known(v4(99)));
    assert!(!rs.is_known("fe80::1".parse().unwrap()));
    // `any` in a rule does not make every address known.
    let rs = compile(&with_rules(
        "  - {name: r, direction: outbound, protocol: tcp, src: [10.0.0.0/8], dst: [any], action: accept}\n",
    ));
    assert!(!rs.is_known("203.0.113.1".parse().unwrap()));
    assert!(rs.is_known("192.0.2.1".parse().unwrap()));
}

#[test]
fn many_prefixes_compile_and_match() {
    let mut yaml = String::from("settings:\n  inside_sources: [10.0.0.0/8]\nsets:\n  big:\n");
    for i in 0..5000u32 {
        let a = std::net::Ipv4Addr::from(0xcb00_0000 + (i << 8));
        yaml.push_str(&format!("    - {a}/24\n"));
    }
    yaml.push_str("rules:\n  - {name: r, direction: outbound, protocol: tcp, src: [10.0.0.0/8], dst: [big], action: accept}\n");
    let rs = compile(&yaml);
    let hit = q(v4(1), "203.0.19.7".parse().unwrap(), 6, 1, 2);
    let hit = FlowQuery {
        src: "10.0.0.1".parse().unwrap(),
        ..hit
    };
    assert_eq!(rs.first_match(Direction::Outbound, &hit), Some(0));
    let miss = FlowQuery {
        dst: "204.0.0.1".parse().unwrap(),
        ..hit
    };
    assert_eq!(rs.first_match(Direction::Outbound, &miss), None);
}

// ---- property test: the prefix tables agree with a naive linear matcher ----

fn naive(file: &RulesFile, dir: Direction, q: &FlowQuery) -> Option<usize> {
    let contains = |refs: &[AddrRef], ip: IpAddr| {
        refs.iter().any(|r| match r {
            AddrRef::Any => true,
            AddrRef::Cidr(c) => c.0.contains(&ip),
            AddrRef::Set(s) => file.sets[s].iter().any(|c| c.0.contains(&ip)),
        })
    };
    let ports = |p: &[PortSpec], v: u16| p.is_empty() || p.iter().any(|r| r.lo <= v && v <= r.hi);
    file.rules.iter().position(|r| {
        r.direction == dir
            && r.protocol.matches(q.proto)
            && contains(&r.src, q.src)
            && contains(&r.dst, q.dst)
            && ports(&r.src_ports, q.src_port)
            && ports(&r.dst_ports, q.dst_port)
            && (r.icmp_types.is_empty() || q.icmp_type.is_some_and(|t| r.icmp_types.contains(&t)))
    })
}

/// Addresses from a small space (10.0.0.0/28 and 2001:db8::/124) so prefixes overlap often.
fn small_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u8..16).prop_map(|b| IpAddr::from([10, 0, 0, b])),
        (0u16..16).prop_map(|b| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, b])),
    ]
}

fn small_cidr() -> impl Strategy<Value = Cidr> {
    (small_ip(), 0u8..=4).prop_map(|(ip, shorten)| {
        let len = if ip.is_ipv4() {
            32 - shorten * 2
        } else {
            128 - shorten * 2
        };
        Cidr(IpNet::new(ip, len).unwrap().trunc())
    })
}

fn addr_ref(nsets: usize) -> impl Strategy<Value = AddrRef> {
    prop_oneof![
        1 => Just(AddrRef::Any),
        4 => small_cidr().prop_map(AddrRef::Cidr),
        3 => (0..nsets).prop_map(|i| AddrRef::Set(format!("s{i}"))),
    ]
}

fn port_spec() -> impl Strategy<Value = PortSpec> {
    (0u16..8, 0u16..4).prop_map(|(lo, w)| PortSpec { lo, hi: lo + w })
}

fn rule(i: usize) -> impl Strategy<Value = Rule> {
    let proto = prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Icmp),
        Just(Protocol::Icmpv6),
        Just(Protocol::Any)
    ];
    (
        proto,
        prop::bool::ANY,
        prop::collection::vec(addr_ref(3), 1..4),
        prop::collection::vec(addr_ref(3), 1..4),
        prop::collection::vec(port_spec(), 0..3),
        prop::collection::vec(port_spec(), 0..3),
        prop::collection::vec(0u8..4, 0..3),
        prop::bool::ANY,
    )
        .prop_map(move |(protocol, inbound, src, dst, sp, dp, it, accept)| {
            let l4 = matches!(protocol, Protocol::Tcp | Protocol::Udp);
            let icmp = matches!(protocol, Protocol::Icmp | Protocol::Icmpv6);
            Rule {
                name: format!("r{i}"),
                direction: if inbound {
                    Direction::Inbound
                } else {
                    Direction::Outbound
                },
                protocol,
                src,
                dst,
                src_ports: if l4 { sp } else { vec![] },
                dst_ports: if l4 { dp } else { vec![] },
                icmp_types: if icmp { it } else { vec![] },
                action: if accept {
                    RuleAction::Accept
                } else {
                    RuleAction::Drop
                },
                one_way: false,
                unpinned_reason: Some("property test".into()),
                comment: None,
            }
        })
}

fn rules_file() -> impl Strategy<Value = RulesFile> {
    (
        prop::collection::vec(prop::collection::vec(small_cidr(), 0..4), 3),
        (1usize..80).prop_flat_map(|n| (0..n).map(rule).collect::<Vec<_>>()),
    )
        .prop_map(|(sets, rules)| RulesFile {
            settings: Settings {
                inside_sources: vec![AddrRef::Cidr("10.0.0.0/30".parse().unwrap())],
                conntrack_limit: 16,
                timeouts: Timeouts::default(),
                tcp_window: TcpWindow::Loose,
                fragments: Policy::Drop,
                malformed: Policy::Drop,
                metrics_listen: None,
            },
            sets: sets
                .into_iter()
                .enumerate()
                .map(|(i, s)| (format!("s{i}"), s))
                .collect(),
            pins: BTreeMap::new(),
            rules,
        })
}

fn query() -> impl Strategy<Value = (bool, FlowQuery)> {
    (
        prop::bool::ANY,
        small_ip(),
        small_ip(),
        prop_oneof![Just(1u8), Just(6), Just(17), Just(58), Just(47)],
        0u16..12,
        0u16..12,
        0u8..5,
    )
        .prop_map(|(inbound, src, dst, proto, sp, dp, t)| {
            let icmp = proto == 1 || proto == 58;
            (
                inbound,
                FlowQuery {
                    src,
                    dst,
                    proto,
                    src_port: if icmp { 0 } else { sp },
                    dst_port: if icmp { 0 } else { dp },
                    icmp_type: icmp.then_some(t),
                },
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn prefix_lookup_agrees_with_linear_scan(
        file in rules_file(),
        queries in prop::collection::vec(query(), 64),
    ) {
        let rs = Ruleset::compile(&file).unwrap();
        for (inbound, q) in queries {
            let dir = if inbound { Direction::Inbound } else { Direction::Outbound };
            prop_assert_eq!(rs.first_match(dir, &q), naive(&file, dir, &q), "{:?} {:?}", dir, q);
        }
    }
}
