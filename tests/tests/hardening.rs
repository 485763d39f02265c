//! The packaged units' restrictions do not break the daemons (issue 15): the service and stock
//! servers run as their own users, with no capabilities, NoNewPrivileges and the units'
//! SystemCallFilter= (see `stockade_tests::hardening`), and the first flow of the patent runs
//! through them: upload, virus check, review and store (61–87), then the push download
//! (121–137). Needs root (setpriv to another user), setpriv, systemd-analyze and Debian's
//! python3-seccomp; under CI a missing one fails the test.

use stockade_tests::*;

#[test]
fn restricted_daemons_upload_review_store_and_push_61_to_87_121_to_137() {
    if !stockade_tests::hardening::can_run() {
        return;
    }
    let sys = System::start(Options {
        stock_servers: 1,
        restricted: true,
        ..Options::default()
    });
    // They really run as their units' users.
    for (d, user) in [
        (sys.service.as_ref().unwrap(), "stockade-service"),
        (&sys.stocks[0], "stockade-stock"),
    ] {
        wait_until(
            "the daemon has dropped to its user",
            std::time::Duration::from_secs(10),
            || {
                let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid()))
                    .unwrap_or_default();
                let uid = status
                    .lines()
                    .find(|l| l.starts_with("Uid:"))
                    .unwrap_or_default()
                    .to_string();
                let seccomp = status.lines().any(|l| l == "Seccomp:\t2");
                uid.split_whitespace().nth(1) == Some(&hardening::ids(user).0.to_string())
                    && seccomp
            },
        );
    }
    let c1 = sys.client("c1");
    let img = png(96, 64, 7);
    let src = write(&c1.home, "cat.png", &img);
    let out = c1.ok(&["upload", &src, "--wait", "60"]);
    assert!(out.contains("stored cat.png"), "{out}\n{}", sys.logs());
    let dest = c1.home.join("downloaded.png");
    let out = c1.ok(&["download", "cat.png", "--out", dest.to_str().unwrap()]);
    assert!(out.contains("downloaded cat.png"), "{out}\n{}", sys.logs());
    assert_eq!(std::fs::read(&dest).unwrap(), img);
    // The review desk (root, over the admin socket) reaches the restricted service too.
    let review = sys.review(&["list"]);
    assert!(review.status.success(), "{}", text(&review.stderr));
    // Nothing the filter refused was needed: no "Operation not permitted" in the logs.
    let logs = sys.logs();
    assert!(!logs.contains("Operation not permitted"), "{logs}");
}
