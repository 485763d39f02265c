//! The packaged units' hardening, measured by systemd itself: `systemd-analyze security
//! --offline=yes` on each unit as the package installs it (`packaging/units/`, rendered from
//! the templates the VMs use too) gives an exposure of at most 2.5 for the service and stock
//! servers and at most 4.0 for the gateway (issue 15). Under CI a missing systemd-analyze
//! fails the test.

use std::process::Command;

use stockade_lab::package::{self, Daemon};

/// "→ Overall exposure level for X.service: 1.2 OK 🙂" → 1.2
fn overall_exposure(report: &str) -> Option<f64> {
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))?;
    let after = line.rsplit_once(": ")?.1;
    after.split_whitespace().next()?.parse().ok()
}

#[test]
fn exposure_is_parsed_from_systemd_analyze() {
    let r = "✗ PrivateNetwork= ... 0.5\n\n→ Overall exposure level for stockade-stock.service: 1.2 OK 🙂\n";
    assert_eq!(overall_exposure(r), Some(1.2));
    assert_eq!(overall_exposure("nothing"), None);
}

#[test]
fn packaged_units_stay_within_their_exposure_limits() {
    let have = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok();
    if !have {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "systemd-analyze is not installed: .ci/run must install systemd"
        );
        eprintln!("SKIPPED: systemd-analyze is not installed (apt-get install systemd)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut figures = vec![];
    for d in Daemon::ALL {
        let file = format!("{}.service", d.name());
        std::fs::write(
            dir.path().join(&file),
            package::unit(d, package::PACKAGE_BIN_DIR).unwrap(),
        )
        .unwrap();
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(&file)
            .current_dir(dir.path())
            .env("SYSTEMD_COLORS", "0")
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        let exposure = overall_exposure(&report).unwrap_or_else(|| {
            panic!("{file}: no exposure in systemd-analyze's report:\n{report}")
        });
        assert!(
            exposure <= d.exposure_limit(),
            "{file}: exposure {exposure} is above {}:\n{report}",
            d.exposure_limit()
        );
        figures.push(format!("{}={exposure}", d.name()));
    }
    // The figures the README gives ("Install as packages").
    eprintln!("exposure: {}", figures.join(" "));
}
