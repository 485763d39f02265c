//! `stockade-gateway compile` output is a batch nft accepts: checked with `nft -j -c -f` in a
//! scratch network namespace of the test's own (needs root and nft).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_stockade-gateway");

fn is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

/// A scratch namespace, deleted on drop (also when an assertion fails).
struct ScratchNs(String);

impl ScratchNs {
    fn new(tag: &str) -> Self {
        let name = format!("sgw{}{tag}-scratch", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {name}");
        ScratchNs(name)
    }
}

impl Drop for ScratchNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

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
        "ip saddr . ether saddr != @pins4",
    ] {
        assert!(text.contains(needle), "`{needle}` missing in:\n{text}");
    }
}
