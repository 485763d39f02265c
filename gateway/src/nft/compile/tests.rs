use super::*;
use crate::rules::compile_str;

const LAB: &str = include_str!("../../../../rules/default.yaml");

fn lab() -> Compiled {
    let (file, rules) = compile_str(LAB, "default.yaml").unwrap();
    let ids = RuleIds::new().assign(&rules);
    compile(&file, &rules, &ids, &PortNames::default())
}

fn json(b: &Nftables) -> String {
    serde_json::to_string(b).unwrap()
}

#[test]
fn every_rule_has_counters_and_every_reason_a_meaning() {
    let c = lab();
    for name in ["service-to-stock", "stock-push-to-clients", "stock-ping6"] {
        assert!(
            c.counters
                .values()
                .any(|m| m.rule.as_deref() == Some(name) && m.action == Action::Forward),
            "{name}"
        );
    }
    let one_way = c
        .counters
        .iter()
        .find(|(_, m)| m.reason == Some(DropReason::OneWay))
        .expect("the push rule has a one_way counter");
    assert_eq!(one_way.1.rule.as_deref(), Some("stock-push-to-clients"));
    for reason in [
        DropReason::NoRule,
        DropReason::Spoofed,
        DropReason::InvalidState,
        DropReason::Fragment,
        DropReason::ConntrackFull,
        DropReason::NonIp,
        DropReason::ArpUnknown,
        DropReason::KernelOther,
    ] {
        assert!(
            c.counters.values().any(|m| m.reason == Some(reason)),
            "{reason}"
        );
    }
    // Every counter a rule uses is declared in its table.
    for t in [&c.inet, &c.bridge] {
        for (_, stmts) in &t.rules {
            for st in stmts {
                if let Statement::Counter(Counter::Named(n)) = st {
                    assert!(t.counters.contains(n.as_ref()), "{n} not declared");
                }
            }
        }
    }
}

#[test]
fn sets_are_aggregated_and_shared() {
    let yaml = LAB.replace(
        "  monitor: [198.51.100.10, \"2001:db8:64::10\"]",
        "  monitor: [198.51.100.10, \"2001:db8:64::10\"]\n  big: [10.0.0.0/8, 10.1.0.0/16, 10.2.3.4, 11.0.0.0/8]",
    );
    let yaml = yaml.replace(
        "    src: [monitor]\n    dst: [stock]\n    dst_ports: [9443]",
        "    src: [monitor]\n    dst: [stock]\n    dst_ports: [9443, \"10000-10010\"]",
    );
    let (file, rules) = compile_str(&yaml, "x.yaml").unwrap();
    let ids = RuleIds::new().assign(&rules);
    let c = compile(&file, &rules, &ids, &PortNames::default());
    // `stock` is used by several rules and by inside_sources: one inet set per family.
    assert!(c.inet.sets.contains_key("set_stock_v4"));
    assert_eq!(
        c.inet
            .sets
            .keys()
            .filter(|k| k.starts_with("set_stock"))
            .count(),
        2
    );
    let j = json(&c.full_batch());
    assert!(j.contains("\"range\":[10000,10010]"), "{j}");
}

#[test]
fn one_way_spells_out_every_data_offset() {
    let c = lab();
    let j = json(&c.full_batch());
    for doff in 5..=15u32 {
        assert!(
            j.contains(&format!(
                "{{\"match\":{{\"left\":{{\"payload\":{{\"protocol\":\"ip\",\"field\":\"length\"}}}},\"right\":{},\"op\":\"!=\"}}}}",
                20 + 4 * doff
            )),
            "doff {doff}"
        );
    }
}

#[test]
fn ids_are_stable_across_reloads() {
    let (_, rules) = compile_str(LAB, "a").unwrap();
    let mut ids = RuleIds::new();
    let a = ids.assign(&rules);
    let edited = LAB.replace("name: service-to-stock", "name: service-to-stock-v2");
    let (_, rules2) = compile_str(&edited, "b").unwrap();
    let b = ids.assign(&rules2);
    assert_ne!(a[0], b[0], "a renamed rule is a new rule");
    assert_eq!(a[1..], b[1..], "the others keep their ids (and counters)");
}

#[test]
fn diff_changes_only_set_elements_and_keeps_counters() {
    let (f1, r1) = compile_str(LAB, "a").unwrap();
    let mut ids = RuleIds::new();
    let old = compile(&f1, &r1, &ids.assign(&r1), &PortNames::default());
    let edited = LAB.replace(
        "service: [198.51.100.110, 198.51.100.111,",
        "service: [198.51.100.110,",
    );
    let (f2, r2) = compile_str(&edited, "b").unwrap();
    let new = compile(&f2, &r2, &ids.assign(&r2), &PortNames::default());

    // Only set contents changed: the netlink path takes it, element by element.
    // .110 and .111 were aggregated to .110/31; now the /31 goes and .110 alone comes.
    let deltas = new.element_diff(&old).expect("only elements changed");
    let p = |s: &str| Key::Prefix(s.parse().unwrap());
    let service = deltas
        .iter()
        .find(|d| d.set == "set_service_v4")
        .expect("the service set changed");
    assert_eq!(service.delete, [p("198.51.100.110/31")]);
    assert_eq!(service.add, [p("198.51.100.110/32")]);
    assert!(deltas
        .iter()
        .all(|d| d.family == Family::Inet || d.set == "known4"));

    // nft's diff (used when rules change too) replaces the changed sets whole and keeps
    // every counter.
    let j = json(&new.diff_batch(&old));
    assert!(j.contains("\"delete\":{\"set\""), "{j}");
    assert!(!j.contains("\"delete\":{\"counter\""), "{j}");
    assert!(!j.contains("\"delete\":{\"table\""), "{j}");
    // Re-applying the same rules changes no set at all.
    let same = compile(&f2, &r2, &ids.assign(&r2), &PortNames::default());
    assert_eq!(same.element_diff(&new), Some(vec![]));
    let j = json(&same.diff_batch(&new));
    assert!(!j.contains("\"set\":{"), "{j}");
}

#[test]
fn rule_edits_are_not_element_diffs() {
    let (f1, r1) = compile_str(LAB, "a").unwrap();
    let mut ids = RuleIds::new();
    let old = compile(&f1, &r1, &ids.assign(&r1), &PortNames::default());
    let edited = LAB.replace("dst_ports: [7443]", "dst_ports: [7443, 7444]");
    let (f2, r2) = compile_str(&edited, "b").unwrap();
    let new = compile(&f2, &r2, &ids.assign(&r2), &PortNames::default());
    assert_eq!(new.element_diff(&old), None);
    // A pin changes a concatenated set (left to nft).
    let edited = LAB.replace("02:00:c6:33:64:6f", "02:00:c6:33:64:70");
    let (f3, r3) = compile_str(&edited, "c").unwrap();
    let pinned = compile(&f3, &r3, &ids.assign(&r3), &PortNames::default());
    assert_eq!(pinned.element_diff(&old), None);
}

#[test]
fn skeleton_leaves_address_sets_to_netlink() {
    let c = lab();
    let fill = c.fill();
    let names: Vec<&str> = fill.iter().map(|d| d.set.as_str()).collect();
    assert!(
        names.contains(&"set_service_v4") && names.contains(&"known4"),
        "{names:?}"
    );
    assert!(!names.iter().any(|n| n.starts_with("pins")), "{names:?}");
    assert!(fill
        .iter()
        .all(|d| d.delete.is_empty() && !d.add.is_empty()));
    let j = json(&c.skeleton_batch());
    assert!(
        !j.contains("198.51.100.220"),
        "address sets are empty in the skeleton"
    );
    assert!(
        j.contains("02:00:c6:33:64:6e"),
        "pins stay in the nft batch"
    );
}
