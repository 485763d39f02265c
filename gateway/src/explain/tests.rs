use super::*;
use crate::core::{Action, DropReason};
use crate::testutil::*;

fn q(
    iface: Port,
    src: IpAddr,
    dst: IpAddr,
    proto: Protocol,
    sport: Option<u16>,
    dport: Option<u16>,
    state: ExplainState,
) -> ExplainQuery {
    ExplainQuery {
        iface,
        src,
        dst,
        proto,
        sport,
        dport,
        state,
    }
}

#[test]
fn lab_rules() {
    let rs = compile(DEFAULT_YAML);
    let e = explain(
        &rs,
        q(
            Port::Outside,
            v4(SERVICE),
            v4(STOCK),
            Protocol::Tcp,
            None,
            Some(7443),
            ExplainState::New,
        ),
    );
    let v = e.verdict.clone().unwrap();
    assert_eq!(v.action, Action::Forward);
    assert_eq!(e.rule_name.as_deref(), Some("service-to-stock"));
    let text = e.to_string();
    assert!(
        text.contains("verdict: forward rule=service-to-stock"),
        "{text}"
    );
    assert!(text.contains("inbound"), "{text}");

    // A client toward the stock server.
    let e = explain(
        &rs,
        q(
            Port::Outside,
            v4(CLIENT1),
            v4(STOCK),
            Protocol::Tcp,
            None,
            Some(7443),
            ExplainState::New,
        ),
    );
    assert_eq!(e.verdict.as_ref().unwrap().reason, Some(DropReason::NoRule));
    assert!(e.to_string().contains("verdict: drop reason=no_rule"));

    // Established service connection: data passes both ways.
    let e = explain(
        &rs,
        q(
            Port::Inside,
            v4(STOCK),
            v4(SERVICE),
            Protocol::Tcp,
            Some(7443),
            Some(40000),
            ExplainState::Established,
        ),
    );
    assert!(e.verdict.as_ref().unwrap().is_forward(), "{e}");
    assert!(e.to_string().contains("opened by the destination"), "{e}");

    // Client data on the push connection: one_way; its pure ACK passes.
    let e = explain(
        &rs,
        q(
            Port::Outside,
            v4(CLIENT2),
            v4(STOCK),
            Protocol::Tcp,
            Some(7137),
            Some(45000),
            ExplainState::Established,
        ),
    );
    assert_eq!(
        e.verdict.as_ref().unwrap().reason,
        Some(DropReason::OneWay),
        "{e}"
    );
    assert_eq!(e.rule_name.as_deref(), Some("stock-push-to-clients"));
    assert!(
        e.to_string()
            .contains("payload-free ACK on the same connection: forward"),
        "{e}"
    );

    // A client's "established" connection that nobody could open.
    let e = explain(
        &rs,
        q(
            Port::Outside,
            v4(CLIENT1),
            v4(STOCK),
            Protocol::Tcp,
            Some(5000),
            Some(7443),
            ExplainState::Established,
        ),
    );
    assert_eq!(
        e.verdict.as_ref().unwrap().reason,
        Some(DropReason::InvalidState),
        "{e}"
    );
    assert!(
        e.to_string().contains("no rule lets either side open"),
        "{e}"
    );

    // UDP, ICMP and IPv6.
    let e = explain(
        &rs,
        q(
            Port::Outside,
            v4(CLIENT1),
            v4(STOCK),
            Protocol::Udp,
            None,
            Some(53),
            ExplainState::New,
        ),
    );
    assert_eq!(e.verdict.unwrap().reason, Some(DropReason::NoRule));
    let e = explain(
        &rs,
        q(
            Port::Inside,
            v4(STOCK),
            v4(SERVICE),
            Protocol::Icmp,
            None,
            None,
            ExplainState::New,
        ),
    );
    assert_eq!(e.rule_name.as_deref(), Some("stock-ping"));
    let e = explain(
        &rs,
        q(
            Port::Outside,
            v4(SERVICE),
            v4(STOCK),
            Protocol::Icmp,
            None,
            None,
            ExplainState::Established,
        ),
    );
    assert!(e.verdict.as_ref().unwrap().is_forward(), "{e}");
    let e = explain(
        &rs,
        q(
            Port::Outside,
            v6(220),
            v6(50),
            Protocol::Icmpv6,
            None,
            None,
            ExplainState::New,
        ),
    );
    assert_eq!(e.verdict.unwrap().reason, Some(DropReason::NoRule));
    let e = explain(
        &rs,
        q(
            Port::Outside,
            v6(110),
            v6(50),
            Protocol::Tcp,
            None,
            Some(7443),
            ExplainState::New,
        ),
    );
    assert!(e.verdict.unwrap().is_forward());

    // Spoofing as seen by explain: a stock address on the outside port.
    let e = explain(
        &rs,
        q(
            Port::Outside,
            v4(STOCK),
            v4(CLIENT1),
            Protocol::Tcp,
            None,
            Some(7137),
            ExplainState::New,
        ),
    );
    assert_eq!(e.verdict.unwrap().reason, Some(DropReason::Spoofed));

    // Mixed families cannot be a packet.
    let e = explain(
        &rs,
        q(
            Port::Outside,
            v4(SERVICE),
            v6(50),
            Protocol::Tcp,
            None,
            Some(7443),
            ExplainState::New,
        ),
    );
    assert!(e.verdict.is_err());
    assert!(e.to_string().contains("error:"), "{e}");
}

#[test]
fn patent_fig1() {
    let rs = compile(FIG1_YAML);
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    // Firewall 45 admits only 133.170.49.110 toward the stock server.
    let e = explain(
        &rs,
        q(
            Port::Outside,
            ip("133.170.49.110"),
            v4(STOCK),
            Protocol::Tcp,
            None,
            Some(7443),
            ExplainState::New,
        ),
    );
    assert_eq!(e.rule_name.as_deref(), Some("service-to-stock"), "{e}");
    for client in ["133.170.50.101", "133.170.90.220"] {
        let e = explain(
            &rs,
            q(
                Port::Outside,
                ip(client),
                v4(STOCK),
                Protocol::Tcp,
                None,
                Some(7443),
                ExplainState::New,
            ),
        );
        assert_eq!(e.verdict.unwrap().reason, Some(DropReason::NoRule));
        // Step 137: the stock server pushes to the client; claim 1: one way.
        let e = explain(
            &rs,
            q(
                Port::Inside,
                v4(STOCK),
                ip(client),
                Protocol::Tcp,
                None,
                Some(7137),
                ExplainState::New,
            ),
        );
        assert_eq!(e.rule_name.as_deref(), Some("stock-push-to-clients"));
        let e = explain(
            &rs,
            q(
                Port::Outside,
                ip(client),
                v4(STOCK),
                Protocol::Tcp,
                Some(7137),
                Some(40000),
                ExplainState::Established,
            ),
        );
        assert_eq!(e.verdict.unwrap().reason, Some(DropReason::OneWay));
    }
}

#[test]
fn state_parses() {
    assert_eq!("new".parse::<ExplainState>(), Ok(ExplainState::New));
    assert_eq!(
        "established".parse::<ExplainState>(),
        Ok(ExplainState::Established)
    );
    assert!("half".parse::<ExplainState>().is_err());
    assert_eq!(ExplainState::default(), ExplainState::New);
}
