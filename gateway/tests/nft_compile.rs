//! `stockade-gateway compile` output is a batch nft accepts: checked with `nft -j -c -f` in a
//! scratch network namespace of the test's own (needs root and nft). And the netlink path for
//! set elements (`nft::netlink`) leaves the kernel in exactly the state nft would.

mod common;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::{is_root, run_in, ScratchNs, BIN};
use stockade_gateway::nft::{self, compile_file, netlink, Compiled, PortNames};

fn compile(file: &Path, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("compile")
        .arg(file)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "compile {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn nft_check(ns: &ScratchNs, json: &str, dir: &Path) {
    let f = dir.join("batch.json");
    std::fs::write(&f, json).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "-j", "-c", "-f"])
        .arg(&f)
        .output()
        .expect("nft (Debian package `nftables`) must be installed");
    assert!(
        out.status.success(),
        "nft -j -c -f refused the batch: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A rules file with `n` IPv4 and `n` IPv6 prefixes in the client set, none adjacent to
/// another (so aggregation cannot merge them: the set really has `n` elements per family).
fn big_rules(n: usize) -> String {
    let mut clients = String::new();
    for i in 0..n {
        let _ = write!(
            clients,
            "10.{}.{}.0/24, \"2001:db8:{:x}::/48\", ",
            (2 * i) / 256,
            (2 * i) % 256,
            2 * i + 1
        );
    }
    let lab = include_str!("../../rules/default.yaml");
    let out = lab.replace(
        "  clients: [198.51.100.101, 198.51.100.220, \"2001:db8:64::101\", \"2001:db8:64::220\"]",
        &format!("  clients: [{clients}198.51.100.101, 198.51.100.220]"),
    );
    assert_ne!(
        out, lab,
        "the clients set of rules/default.yaml changed; update this test"
    );
    out
}

#[test]
fn compiled_batches_pass_nft_check() {
    if !is_root() {
        // In CI (root) a test that cannot run is a failure, never a silent pass.
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "needs root: CI runs as root"
        );
        eprintln!("compiled_batches_pass_nft_check: SKIPPED, needs root (network namespaces)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ns = ScratchNs::new("c");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["rules/default.yaml", "rules/examples/patent-fig1.yaml"] {
        let json = compile(&root.join(file), &[]);
        assert!(json.contains("\"stockade_gateway\""));
        nft_check(&ns, &json, dir.path());
    }
    // Other port names end up in the bridge chain.
    let json = compile(
        &root.join("rules/default.yaml"),
        &["--outside", "eth1", "--inside", "eth2"],
    );
    assert!(json.contains("\"eth1\"") && json.contains("\"eth2\""));
    nft_check(&ns, &json, dir.path());

    // 20k prefixes per family in one interval set each.
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, big_rules(20_000)).unwrap();
    let json = compile(&big, &[]);
    assert!(json.contains("\"2001:db8:9c3f::\"") && json.contains("\"10.156.62.0\""));
    assert!(json.matches("\"len\": 24").count() >= 20_000);
    nft_check(&ns, &json, dir.path());

    // A file that does not compile is refused with its location.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "settings:\n  inside_sources: [nowhere]\n").unwrap();
    let out = Command::new(BIN).arg("compile").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml"));
}

#[test]
fn compile_text_lists_both_tables() {
    if !is_root() {
        // In CI (root) a test that cannot run is a failure, never a silent pass.
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "needs root: CI runs as root"
        );
        eprintln!("compile_text_lists_both_tables: SKIPPED, needs root (unshare --net)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = compile(&root.join("rules/default.yaml"), &["--text"]);
    for needle in [
        "table inet stockade_gateway",
        "table bridge stockade_gateway",
        "ct count over 65536",
        "tcp doff 5 ip length != 40",
        "counter name \"oneway_3_in\" drop",
        "ip saddr . ether saddr @pins4 meta mark set 0x00000001 accept",
        "meta mark . ct mark vmap",
    ] {
        assert!(text.contains(needle), "`{needle}` missing in:\n{text}");
    }
}

/// `nft list ruleset` in `ns` (text: what an operator reads), with the objects of each table
/// (sets, chains, counters) in name order: nft lists them in creation order, and a reload that
/// replaces a set creates it anew.
fn listing(ns: &ScratchNs) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut tables = Vec::new();
    let (mut head, mut blocks, mut block) = (String::new(), Vec::new(), String::new());
    for line in text.lines() {
        if line.starts_with("table ") {
            head = line.to_string();
        } else if line == "}" {
            blocks.sort();
            tables.push(format!("{head}\n{}}}\n", blocks.concat()));
            blocks.clear();
        } else if !line.is_empty() {
            block.push_str(line);
            block.push('\n');
            if line == "\t}" {
                blocks.push(std::mem::take(&mut block));
            }
        }
    }
    tables.concat()
}

/// Asserts two listings are equal, showing the first difference (they are megabytes long).
fn same(a: &str, b: &str, what: &str) {
    if a != b {
        let (i, (x, y)) = a
            .lines()
            .zip(b.lines())
            .enumerate()
            .find(|(_, (x, y))| x != y)
            .unwrap_or((0, ("(length)", "(length)")));
        panic!("{what}: line {i} differs:\n  {x}\n  {y}");
    }
}

fn compiled(dir: &Path, name: &str, yaml: &str) -> Compiled {
    let f = dir.join(name);
    std::fs::write(&f, yaml).unwrap();
    compile_file(&f, &PortNames::default()).unwrap()
}

/// The lab rules with a blocklist of `n` IPv4 /24s (none adjacent to another, so each is one
/// interval) dropped before every accept rule, the first `changed` of them replaced by others.
fn blocklist_rules(n: usize, changed: usize) -> String {
    let mut list = String::new();
    for i in 0..n {
        let j = if i < changed { n + i } else { i } as u32;
        let a = std::net::Ipv4Addr::from(0x0b00_0000 + j * 512);
        let _ = write!(list, "{a}/24, ");
    }
    let lab = include_str!("../../rules/default.yaml");
    let monitor = "  monitor: [198.51.100.10, \"2001:db8:64::10\"]\n";
    assert!(
        lab.contains(monitor),
        "rules/default.yaml changed; update this test"
    );
    lab.replace(
        monitor,
        &format!("{monitor}  blocked: [{list}203.0.113.99]\n"),
    )
    .replace(
        "\nrules:\n",
        "\nrules:\n  - name: blocklist\n    direction: inbound\n    protocol: any\n    src: [blocked]\n    dst: [stock]\n    action: drop\n",
    )
}

/// Runs `f` in `ns` and returns its result and the time it took.
fn timed<T: Send + 'static>(ns: &ScratchNs, f: impl FnOnce() -> T + Send + 'static) -> (T, u128) {
    run_in(&ns.0, move || {
        let t = Instant::now();
        let v = f();
        (v, t.elapsed().as_millis())
    })
}

#[test]
fn netlink_set_elements_match_nft() {
    if !is_root() {
        // In CI (root) a test that cannot run is a failure, never a silent pass.
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "needs root: CI runs as root"
        );
        eprintln!("netlink_set_elements_match_nft: SKIPPED, needs root (network namespaces)");
        return;
    }
    const N: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let v0 = compiled(dir.path(), "v0.yaml", &blocklist_rules(N, 0));
    let v1 = compiled(dir.path(), "v1.yaml", &blocklist_rules(N, N / 100));
    let (by_nft, by_netlink) = (ScratchNs::new("n"), ScratchNs::new("l"));

    // Start-up: one nft transaction, or the skeleton plus the elements over netlink.
    let a = v0.clone();
    let ((), nft_ms) = timed(&by_nft, move || nft::apply(&a.full_batch()).unwrap());
    let b = v0.clone();
    let ((), nl_ms) = timed(&by_netlink, move || {
        nft::apply(&b.skeleton_batch()).unwrap();
        netlink::apply(&b.fill()).unwrap();
    });
    let first = listing(&by_nft);
    assert!(first.contains("11.0.2.0/24") && first.contains("203.0.113.99"));

    // The exporter's counter dump over netlink names exactly the counters nft lists.
    let by_netlink_dump = run_in(&by_nft.0, || {
        let mut names: Vec<String> = [netlink::Family::Inet, netlink::Family::Bridge]
            .into_iter()
            .flat_map(|f| netlink::counters(f).unwrap())
            .map(|(name, packets, bytes)| {
                assert_eq!((packets, bytes), (0, 0), "{name}: nothing was sent");
                name
            })
            .collect();
        names.sort();
        names
    });
    let mut by_nft_json: Vec<String> = first
        .lines()
        .filter_map(|l| l.strip_prefix("\tcounter ")?.strip_suffix(" {"))
        .map(str::to_string)
        .collect();
    by_nft_json.sort();
    assert!(by_nft_json.len() > 20, "{by_nft_json:?}");
    assert_eq!(by_netlink_dump, by_nft_json);
    same(&first, &listing(&by_netlink), "start-up states differ");

    // An allowlist edit: 1% of the prefixes replaced. Only elements differ, so the netlink
    // path applies and must arrive where a fresh load of the new file does.
    let deltas = v1.element_diff(&v0).expect("only set elements changed");
    // The blocklist's own set, and the bridge's set of every address the rules know (ARP).
    let sizes: Vec<(&str, usize, usize)> = deltas
        .iter()
        .map(|d| (d.set.as_str(), d.delete.len(), d.add.len()))
        .collect();
    assert_eq!(
        sizes,
        [
            ("set_blocked_v4", N / 100, N / 100),
            ("known4", N / 100, N / 100)
        ]
    );
    let a = v1.clone();
    run_in(&by_nft.0, move || nft::apply(&a.full_batch()).unwrap());
    let ((), nl_diff_ms) = timed(&by_netlink, move || netlink::apply(&deltas).unwrap());
    let second = listing(&by_nft);
    assert_ne!(first, second);
    same(
        &second,
        &listing(&by_netlink),
        "states after the edit differ",
    );

    // A transaction the kernel refuses (deleting an element that is not there) changes
    // nothing, not even the elements before the bad one.
    let bad = vec![
        netlink::SetDelta {
            family: netlink::Family::Inet,
            set: "set_blocked_v4".into(),
            delete: vec![netlink::Key::Prefix("11.39.16.0/24".parse().unwrap())],
            add: vec![],
        },
        netlink::SetDelta {
            family: netlink::Family::Inet,
            set: "set_blocked_v4".into(),
            delete: vec![netlink::Key::Prefix("192.0.2.0/24".parse().unwrap())],
            add: vec![],
        },
    ];
    let err = run_in(&by_netlink.0, move || netlink::apply(&bad).unwrap_err());
    assert!(err.to_string().contains("refused"), "{err}");
    assert_eq!(
        second,
        listing(&by_netlink),
        "a refused transaction changed the set"
    );

    // An edit that also changes a rule goes through nft's diff, which replaces changed sets
    // whole (also over sets the netlink path filled): same state as a fresh load again.
    let v2 = compiled(
        dir.path(),
        "v2.yaml",
        &blocklist_rules(N, N / 50).replace("dst_ports: [7443]", "dst_ports: [7443, 7444]"),
    );
    assert!(v2.element_diff(&v1).is_none(), "a rule changed");
    let a = v2.clone();
    run_in(&by_nft.0, move || nft::apply(&a.full_batch()).unwrap());
    let (a, old) = (v2.clone(), v1.clone());
    let ((), nft_diff_ms) = timed(&by_netlink, move || {
        nft::apply(&a.diff_batch(&old)).unwrap()
    });
    let third = listing(&by_nft);
    assert!(third.contains("7443, 7444"));
    assert_eq!(
        third,
        listing(&by_netlink),
        "states after a rule edit differ"
    );

    eprintln!(
        "{N} prefixes (debug build): apply {nft_ms} ms by nft, {nl_ms} ms skeleton + netlink; \
         1% edit {nl_diff_ms} ms by netlink; rule + 2% edit {nft_diff_ms} ms by nft diff"
    );
}
