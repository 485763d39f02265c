use super::*;
use crate::testutil::{DEFAULT_YAML, FIG1_YAML};

const HEAD: &str = "settings:\n  inside_sources: [stock]\nsets:\n  stock: [198.51.100.50]\n  service: [198.51.100.110]\n  clients: [198.51.100.101, 198.51.100.220]\npins:\n  198.51.100.110: \"02:00:c6:33:64:6e\"\n";

fn check(rules: &str) -> CheckReport {
    check_str(&format!("{HEAD}rules:\n{rules}"), "c.yaml")
}

fn only<'a>(r: &'a CheckReport, code: &str) -> Vec<&'a Finding> {
    r.lints.iter().filter(|l| l.code == code).collect()
}

fn codes(r: &CheckReport) -> Vec<&'static str> {
    // Most tests use only some of HEAD's sets.
    r.errors
        .iter()
        .chain(r.lints.iter())
        .map(|f| f.code)
        .filter(|c| *c != "unused-set")
        .collect()
}

const SVC: &str = "  - {name: svc, direction: inbound, protocol: tcp, src: [service], dst: [stock], dst_ports: [7443], action: accept}\n";
const PUSH: &str = "  - {name: push, direction: outbound, protocol: tcp, src: [stock], dst: [clients], dst_ports: [7137], action: accept, one_way: true}\n";

#[test]
fn the_shipped_rules_are_clean() {
    for (name, text) in [
        ("default.yaml", DEFAULT_YAML),
        ("patent-fig1.yaml", FIG1_YAML),
    ] {
        let r = check_str(text, name);
        assert_eq!(r.exit_code(), 0, "{r}");
        assert!(r.to_string().contains("valid"), "{r}");
    }
    let r = check_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../rules/default.yaml"
    ));
    assert_eq!(r.exit_code(), 0, "{r}");
    assert_eq!(r.rules, 5);
    assert_eq!(r.sets, 4);
}

#[test]
fn clean_minimal_file() {
    let r = check(&format!("{SVC}{PUSH}"));
    assert_eq!(r.exit_code(), 0, "{r}");
}

#[test]
fn errors_exit_2_with_position() {
    let r = check_str(
        "settings:\n  inside_sources: [stock]\n  bogus: 1\n",
        "e.yaml",
    );
    assert_eq!(r.exit_code(), 2);
    let s = r.to_string();
    assert!(
        s.starts_with(
            "e.yaml:3:3: error[invalid]: settings: unknown field `bogus`, expected one of"
        ),
        "{s}"
    );
    // Inbound accept without a pin and without a reason.
    let r = check("  - {name: open, direction: inbound, protocol: tcp, src: [clients], dst: [stock], action: accept}\n");
    assert_eq!(r.exit_code(), 2, "{r}");
    assert!(r.errors[0].message.contains("unpinned"), "{r}");
    assert_eq!(r.errors[0].position.map(|p| p.0), Some(10));
    let r = check_file("/nonexistent/rules.yaml");
    assert_eq!(r.exit_code(), 2);
    assert!(r.to_string().contains("cannot read"));
}

#[test]
fn shadowed_rules() {
    let r = check(&format!(
        "{SVC}{PUSH}  - {{name: svc-again, direction: inbound, protocol: tcp, src: [198.51.100.110], dst: [stock], dst_ports: [7443], action: drop}}\n"
    ));
    assert_eq!(codes(&r), ["shadowed"], "{r}");
    assert_eq!(r.exit_code(), 1);
    let sh = only(&r, "shadowed");
    assert!(sh[0].message.contains("`svc-again`") && sh[0].message.contains("`svc`"));
    assert_eq!(sh[0].position.map(|p| p.0), Some(12));
    // Covered by the union of two earlier port ranges and two CIDRs.
    let r = check(
        "  - {name: a, direction: outbound, protocol: tcp, src: [198.51.100.50/32], dst: [203.0.113.0/25, 203.0.113.128/25], dst_ports: [\"1-100\", \"101-200\"], action: drop}\n\
         \x20 - {name: b, direction: outbound, protocol: tcp, src: [stock], dst: [203.0.113.0/24], dst_ports: [\"50-150\"], action: drop}\n",
    );
    assert_eq!(codes(&r), ["shadowed"], "{r}");
    // Not shadowed: other direction, other protocol, wider ports, ICMP types not covered.
    let r = check(
        "  - {name: a, direction: outbound, protocol: tcp, src: [stock], dst: [any], dst_ports: [80], action: drop}\n\
         \x20 - {name: b, direction: inbound, protocol: tcp, src: [any], dst: [stock], dst_ports: [80], action: drop}\n\
         \x20 - {name: c, direction: outbound, protocol: udp, src: [stock], dst: [any], dst_ports: [80], action: drop}\n\
         \x20 - {name: d, direction: outbound, protocol: tcp, src: [stock], dst: [any], action: drop}\n\
         \x20 - {name: e, direction: outbound, protocol: icmp, src: [stock], dst: [any], icmp_types: [8], action: drop}\n\
         \x20 - {name: f, direction: outbound, protocol: icmp, src: [stock], dst: [any], icmp_types: [8, 13], action: drop}\n\
         \x20 - {name: g, direction: outbound, protocol: icmp, src: [stock], dst: [any], icmp_types: [13], action: drop}\n",
    );
    // Only g is covered (by f).
    assert_eq!(codes(&r), ["shadowed"], "{r}");
    assert!(only(&r, "shadowed")[0].message.contains("`g`"), "{r}");
}

#[test]
fn never_matching_families() {
    let r = check("  - {name: mixed, direction: outbound, protocol: tcp, src: [stock], dst: [\"2001:db8::/32\"], action: drop}\n");
    assert_eq!(codes(&r), ["never-matches"], "{r}");
    let r = check("  - {name: v6ping, direction: outbound, protocol: icmpv6, src: [stock], dst: [any], action: drop}\n");
    assert_eq!(codes(&r), ["never-matches"], "{r}");
}

#[test]
fn set_lints() {
    let text = format!(
        "settings:\n  inside_sources: [stock]\nsets:\n  stock: [198.51.100.50]\n  service: [198.51.100.110]\n  clients: [198.51.100.101, 198.51.100.220]\n  nobody: []\n  lab: [198.51.100.0/24]\n  spare: [203.0.113.1]\npins:\n  198.51.100.110: \"02:00:c6:33:64:6e\"\nrules:\n{SVC}{PUSH}  - {{name: lab-drop, direction: inbound, protocol: udp, src: [lab], dst: [stock], action: drop}}\n"
    );
    let r = check_str(&text, "s.yaml");
    let mut c: Vec<&str> = r.lints.iter().map(|l| l.code).collect();
    c.sort();
    assert_eq!(
        c,
        [
            "empty-set",
            "overlapping-sets",
            "overlapping-sets",
            "overlapping-sets",
            "unused-set"
        ],
        "{r}"
    );
    assert_eq!(r.exit_code(), 1);
    let s = r.to_string();
    assert!(s.contains("set `nobody` is empty"), "{s}");
    assert!(s.contains("set `spare` is not used"), "{s}");
    assert!(
        s.contains("sets `clients` and `lab` overlap")
            || s.contains("sets `lab` and `clients` overlap"),
        "{s}"
    );
    assert!(s.contains("s.yaml:7:3: warning[empty-set]"), "{s}");
}

#[test]
fn rules_that_admit_clients() {
    // Inbound from unpinned clients, with a reason: loads, but is flagged.
    let r = check("  - {name: open, direction: inbound, protocol: tcp, src: [clients], dst: [stock], action: accept, unpinned_reason: demo}\n");
    assert_eq!(codes(&r), ["admits-clients"], "{r}");
    assert!(
        only(&r, "admits-clients")[0]
            .message
            .contains("198.51.100.101"),
        "{r}"
    );
    // A two-way outbound connection to clients lets them send data back (claim 1).
    let r = check("  - {name: push2, direction: outbound, protocol: tcp, src: [stock], dst: [clients], action: accept}\n");
    assert_eq!(codes(&r), ["admits-clients"], "{r}");
    assert!(r.lints.iter().any(|l| l.message.contains("one_way")), "{r}");
    // ICMP echo to the service (pinned) is fine.
    let r = check("  - {name: ping, direction: outbound, protocol: icmp, src: [stock], dst: [service], action: accept}\n");
    assert!(codes(&r).is_empty(), "{r}");
}

#[test]
fn malformed_forward_is_flagged() {
    let text = DEFAULT_YAML.replace("malformed: drop", "malformed: forward");
    let r = check_str(&text, "m.yaml");
    assert_eq!(codes(&r), ["malformed-forward"], "{r}");
}
