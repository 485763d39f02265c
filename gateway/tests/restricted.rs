//! Issue 15: the gateway does its whole job, on both data planes, with only what its packaged
//! unit gives it: its own user (`stockade-gateway`), CAP_NET_ADMIN and CAP_NET_RAW (ambient, so
//! `ip` and `ethtool` get them too), NoNewPrivileges and the unit's seccomp filter
//! (`stockade_tests::hardening`). The service reaches the stock API through it, a client does
//! not, and nothing it does is refused ("Operation not permitted"). Needs root, setpriv,
//! systemd-analyze, python3-seccomp, iproute2, ethtool and nft; in CI a missing one fails.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use stockade_tests::hardening::{self, Restriction};

fn status_field(pid: i32, key: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{key}:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default()
}

fn restricted_gateway(tag: &str, plane: &[&str]) {
    if !hardening::can_run() {
        return;
    }
    hardening::ensure_users();
    let mut lab = Lab::new(tag, plane);
    let unit =
        stockade_lab::package::unit(stockade_lab::package::Daemon::Gateway, "/usr/bin").unwrap();
    let r = Restriction::from_unit(&unit, lab.dir.path());
    assert_eq!(r.user, "stockade-gateway");
    assert_eq!(r.caps, ["net_admin", "net_raw"]);
    let wrapped = r.command(Path::new(BIN));
    let mut wrapper: Vec<std::ffi::OsString> = std::iter::once(wrapped.get_program())
        .chain(wrapped.get_args())
        .map(|a| a.to_owned())
        .collect();
    assert_eq!(wrapper.pop().as_deref(), Some(std::ffi::OsStr::new(BIN)));
    lab.wrapper = wrapper;
    // Its state directory is its own, as RuntimeDirectory= makes it (the rules file readable,
    // the control socket made there).
    let (uid, gid) = hardening::ids("stockade-gateway");
    std::os::unix::fs::chown(lab.dir.path(), Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(lab.dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(
        r.allow_file.as_path(),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    write_rules(&lab.rules, &rules_yaml(lab.stock_link_local(), true));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let a = accepted.clone();
    let ns_stock = lab.ns("stock");
    lab.spawn_in(&ns_stock, move |stop| {
        echo_server(SocketAddr::new(STOCK4.into(), STOCK_API), a, stop)
    });
    lab.start_gateway();

    // It runs as the unit says. `ip netns exec`, setpriv and the seccomp loader each exec the
    // next, so the child's pid is the gateway's (start_gateway waited until it served metrics).
    let gw = lab.gateway_pid();
    assert!(
        std::fs::read_link(format!("/proc/{gw}/exe"))
            .unwrap()
            .ends_with("stockade-gateway"),
        "pid {gw} is not the gateway"
    );
    let uid_line = status_field(gw, "Uid");
    assert!(
        uid_line.split_whitespace().all(|u| u == uid.to_string()),
        "Uid: {uid_line}"
    );
    assert_eq!(status_field(gw, "NoNewPrivs"), "1");
    assert_eq!(status_field(gw, "Seccomp"), "2");
    // CAP_NET_ADMIN (12) and CAP_NET_RAW (13), nothing else.
    assert_eq!(status_field(gw, "CapEff"), "0000000000003000");

    // Firewall 45 works: the service reaches the stock API, a client does not.
    run_in(&lab.ns("svc"), || {
        echo_roundtrip(
            SocketAddr::new(STOCK4.into(), STOCK_API),
            Duration::from_secs(5),
        )
    })
    .expect("service -> stock:7443 through the restricted gateway");
    run_in(&lab.ns("client"), || {
        connect_gets_nothing(SocketAddr::new(STOCK4.into(), STOCK_API))
    });
    assert_eq!(accepted.lock().unwrap().len(), 1);
    let log = lab.gateway_log();
    assert!(
        !log.contains("Operation not permitted") && !log.contains("Permission denied"),
        "the restricted gateway was refused something:\n{log}"
    );
    // A clean stop, as systemd's SIGTERM does.
    let st = lab.stop_gateway(Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "stopped: {st:?}\n{}",
        lab.gateway_log()
    );
}

#[test]
fn restricted_gateway_userspace_plane() {
    restricted_gateway("ru", &[]);
}

#[test]
fn restricted_gateway_nftables_plane() {
    restricted_gateway("rn", &["--dataplane", "nftables"]);
}
