//! The Vagrant VMs cannot boot here (no virtualization, no box download); this checks what can
//! be checked without them: the files `stockade-lab vagrant-files` renders (from the same
//! templates as the lab), the units (`systemd-analyze verify`), the Prometheus config
//! (`promtool check config`), the stock VMs' guard (`nft -c`), the provisioning script
//! (`bash -n`, `shellcheck`), and the Vagrantfile itself, loaded by Ruby with a recording
//! stand-in for Vagrant: no stock VM has a network other than the inside one; and
//! `vagrant validate` (Debian's vagrant and vagrant-libvirt, which `.ci/run` installs).
//!
//! Tools that are not installed are reported and their check is skipped; `bash -n` and the
//! topology checks always run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const LAB: &str = env!("CARGO_BIN_EXE_stockade-lab");

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn check(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Renders the VMs' files into a temporary copy of vagrant/ (as `generated/`).
fn render() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let vagrant = dir.path().join("vagrant");
    std::fs::create_dir_all(&vagrant).unwrap();
    for f in ["Vagrantfile", "provision.sh", "check-vagrantfile.rb"] {
        std::fs::copy(repo().join("vagrant").join(f), vagrant.join(f)).unwrap();
    }
    let out = Command::new(LAB)
        .arg("vagrant-files")
        .arg(vagrant.join("generated"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vagrant-files: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir, vagrant)
}

/// `--debs`: each VM gets its own package only and no unit or sysusers entry of ours for the
/// packaged daemon (the package brings them); the binaries folder holds stockade-lab alone.
#[test]
fn with_packages_each_vm_gets_its_own_and_no_rendered_unit() {
    let dir = tempfile::tempdir().unwrap();
    let debs = dir.path().join("debs");
    std::fs::create_dir_all(&debs).unwrap();
    for p in [
        "stockade-service",
        "stockade-stock",
        "stockade-gateway",
        "stockade",
    ] {
        std::fs::write(debs.join(format!("{p}_0.1.0-1_amd64.deb")), p).unwrap();
    }
    let g = dir.path().join("generated");
    let vagrant_files = || {
        Command::new(LAB)
            .arg("vagrant-files")
            .arg(&g)
            .arg("--debs")
            .arg(&debs)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = vagrant_files();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bins: Vec<String> = std::fs::read_dir(g.join("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(bins, ["stockade-lab"]);
    for (vm, pkg, unit) in [
        (
            "service1",
            Some("stockade-service"),
            "stockade-service.service",
        ),
        ("stock1", Some("stockade-stock"), "stockade-stock.service"),
        (
            "gateway",
            Some("stockade-gateway"),
            "stockade-gateway.service",
        ),
        ("client1", Some("stockade"), ""),
        ("monitor", None, ""),
    ] {
        let deb_dir = g.join(vm).join("deb");
        match pkg {
            Some(p) => {
                let names: Vec<String> = std::fs::read_dir(&deb_dir)
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                assert_eq!(names, [format!("{p}.deb")], "{vm}");
                assert_eq!(std::fs::read_to_string(deb_dir.join(&names[0])).unwrap(), p);
            }
            None => assert!(!deb_dir.exists(), "{vm}"),
        }
        if !unit.is_empty() {
            assert!(
                !g.join(vm)
                    .join("root/etc/systemd/system")
                    .join(unit)
                    .exists(),
                "{vm}: {unit} rendered although the package brings it"
            );
            let units = std::fs::read_to_string(g.join(vm).join("units")).unwrap();
            assert!(units.contains(unit), "{vm}: {units}");
        }
    }
    // Two candidates for one package: refused, naming it.
    std::fs::write(debs.join("stockade-stock_0.2.0-1_amd64.deb"), "x").unwrap();
    let out = vagrant_files();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exactly one stockade-stock_*.deb"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rendered_vm_files_are_consistent() {
    let (_dir, vagrant) = render();
    let g = vagrant.join("generated");
    let topo: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(g.join("topology.json")).unwrap()).unwrap();
    let vms = topo["vms"].as_array().unwrap();
    assert_eq!(vms.len(), 8);
    for vm in vms {
        let name = vm["name"].as_str().unwrap();
        let nets: Vec<&str> = vm["nics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["network"].as_str().unwrap())
            .collect();
        match vm["role"].as_str().unwrap() {
            "stock" => {
                assert_eq!(nets, ["stockade-inside"], "{name}");
                let units = std::fs::read_to_string(g.join(name).join("units")).unwrap();
                assert!(units.contains("stockade-guard.service"), "{name}: {units}");
                assert!(g.join(name).join("root/etc/stockade/guard.nft").exists());
                // The stock VM holds no key but its own.
                assert!(!g
                    .join(name)
                    .join("root/etc/stockade/pki/service-client.key")
                    .exists());
            }
            "gateway" => {
                for nic in vm["nics"].as_array().unwrap() {
                    if nic["network"] != "stockade-mgmt" {
                        assert_eq!(nic["port"], true);
                        assert!(nic["address"].is_null(), "{nic}");
                    }
                }
            }
            _ => assert!(!nets.contains(&"stockade-inside"), "{name}: {nets:?}"),
        }
    }
    // Transmit checksum offload off on every NIC of every VM (the gateway verifies every L4
    // checksum; a virtio NIC leaves them partial), as the lab does on every veth.
    for vm in vms {
        let name = vm["name"].as_str().unwrap();
        for nic in vm["nics"].as_array().unwrap() {
            let link = std::fs::read_dir(g.join(name).join("root/etc/systemd/network"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| {
                    p.extension().is_some_and(|x| x == "link")
                        && std::fs::read_to_string(p)
                            .unwrap()
                            .contains(nic["mac"].as_str().unwrap())
                })
                .unwrap_or_else(|| panic!("{name}: no .link file for {nic}"));
            let text = std::fs::read_to_string(&link).unwrap();
            assert!(
                text.contains("TransmitChecksumOffload=no"),
                "{name}: {}",
                link.display()
            );
        }
    }
    let provision = std::fs::read_to_string(repo().join("vagrant/provision.sh")).unwrap();
    assert!(provision.contains("ethtool -K \"$name\" tx off"));
    // Every host has forwarding off.
    for vm in vms {
        let name = vm["name"].as_str().unwrap();
        let sysctl =
            std::fs::read_to_string(g.join(name).join("root/etc/sysctl.d/90-stockade.conf"))
                .unwrap();
        assert!(sysctl.contains("net.ipv4.ip_forward=0"), "{name}");
    }
    let gw = std::fs::read_to_string(g.join("gateway/root/etc/sysctl.d/90-stockade.conf")).unwrap();
    assert!(gw.contains("net.ipv6.conf.outside.disable_ipv6=1"));
    assert!(gw.contains("net.ipv6.conf.inside.disable_ipv6=1"));
    // The same templates as the lab: the service config names both stock servers.
    let svc = std::fs::read_to_string(g.join("service1/root/etc/stockade/service.yaml")).unwrap();
    assert!(
        svc.contains("https://198.51.100.50:7443") && svc.contains("https://198.51.100.51:7443")
    );
    // The management link is the documentation /28 stockade-lab chose (never the host's own).
    let mgmt_net = topo["networks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "stockade-mgmt")
        .unwrap()["network_address"]
        .as_str()
        .unwrap()
        .to_string();
    let o: Vec<u8> = mgmt_net.split('.').map(|x| x.parse().unwrap()).collect();
    let service1_admin = format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3] + 3);
    assert!(
        svc.contains(&format!("metrics_listen: {service1_admin}:9101")),
        "{svc}"
    );
    let vagrant_nets: Vec<&str> = topo["vagrant_networks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["address"].as_str().unwrap())
        .collect();
    assert_eq!(vagrant_nets.len(), 2, "{vagrant_nets:?}");
    let mgmt_cidr = format!("{mgmt_net}/28");
    assert!(
        !vagrant_nets.contains(&mgmt_cidr.as_str()) && vagrant_nets[0] != vagrant_nets[1],
        "the three host-joined networks must differ: {mgmt_cidr} {vagrant_nets:?}"
    );
    // Strict reverse-path filtering on every VM, on every NIC (Debian sets 2 per interface, and
    // the kernel takes the larger of `all` and the interface's value).
    for vm in vms {
        let name = vm["name"].as_str().unwrap();
        let sysctl =
            std::fs::read_to_string(g.join(name).join("root/etc/sysctl.d/90-stockade.conf"))
                .unwrap();
        for key in ["all", "default", "*"] {
            assert!(
                sysctl.contains(&format!("net.ipv4.conf.{key}.rp_filter=1")),
                "{name}: {key}"
            );
        }
    }
    let provision = std::fs::read_to_string(repo().join("vagrant/provision.sh")).unwrap();
    assert!(
        provision.contains("systemd-sysctl"),
        "provision.sh must apply sysctl.d with systemd-sysctl (procps' sysctl does not expand globs)"
    );

    // Units: syntax and commands (with the binaries where this build has them).
    if have("systemd-analyze") {
        let units = tempfile::tempdir().unwrap();
        let bin = Path::new(LAB).parent().unwrap();
        let mut paths = vec![];
        for vm in vms {
            let dir = g
                .join(vm["name"].as_str().unwrap())
                .join("root/etc/systemd/system");
            for e in std::fs::read_dir(&dir).into_iter().flatten() {
                let p = e.unwrap().path();
                let text = std::fs::read_to_string(&p)
                    .unwrap()
                    .replace("/usr/local/bin", &bin.display().to_string());
                let dst = units.path().join(p.file_name().unwrap());
                std::fs::write(&dst, text).unwrap();
                paths.push(dst);
            }
        }
        paths.sort();
        paths.dedup();
        assert!(paths.len() >= 5, "{paths:?}");
        check(
            Command::new("systemd-analyze").arg("verify").args(&paths),
            "systemd-analyze verify",
        );
    } else if std::env::var("CI").as_deref() == Ok("true") {
        panic!("systemd-analyze is not installed: .ci/run must install systemd");
    } else {
        eprintln!("systemd-analyze not installed: units not verified");
    }

    // Prometheus' config, with the PKI paths pointed at the rendered files.
    if have("promtool") {
        let monitor = g.join("monitor/root");
        let text = std::fs::read_to_string(monitor.join("etc/prometheus/prometheus.yml"))
            .unwrap()
            .replace(
                "/etc/stockade/pki",
                &monitor.join("etc/stockade/pki").display().to_string(),
            )
            .replace(
                "/etc/prometheus/stockade-alerts.yml",
                &monitor
                    .join("etc/prometheus/stockade-alerts.yml")
                    .display()
                    .to_string(),
            );
        let cfg = monitor.join("check-prometheus.yml");
        std::fs::write(&cfg, text).unwrap();
        check(
            Command::new("promtool").args(["check", "config"]).arg(&cfg),
            "promtool check config",
        );
    } else {
        eprintln!("promtool not installed: prometheus.yml not checked");
    }

    // The stock guard parses (check only: nothing is loaded).
    if have("nft") && nix::unistd::geteuid().is_root() {
        let guard = std::fs::read_to_string(g.join("stock1/root/etc/stockade/guard.nft"))
            .unwrap()
            .replace("VAGRANT_HOST_IP", "203.0.113.99");
        let f = g.join("guard-check.nft");
        std::fs::write(&f, guard).unwrap();
        check(Command::new("nft").arg("-c").arg("-f").arg(&f), "nft -c");
    } else {
        eprintln!("nft not installed or not root: guard not checked");
    }
}

/// Every script of vagrant/ (provisioning, the box build, the VM test) and packaging/ (the
/// packages' test, the maintainer scripts): `bash -n`, and
/// shellcheck, which CI installs (under CI a missing shellcheck fails this test).
#[test]
fn vagrant_scripts_are_sound() {
    let scripts = [
        "vagrant/provision.sh",
        "vagrant/lib.sh",
        "vagrant/test.sh",
        "vagrant/full.sh",
        "vagrant/bypass.sh",
        "vagrant/box/build.sh",
        "vagrant/box/customize.sh",
        "packaging/test.sh",
        "packaging/debian/stockade-service/postinst",
        "packaging/debian/stockade-service/prerm",
        "packaging/debian/stockade-service/postrm",
        "packaging/debian/stockade-stock/postinst",
        "packaging/debian/stockade-stock/prerm",
        "packaging/debian/stockade-stock/postrm",
        "packaging/debian/stockade-gateway/postinst",
        "packaging/debian/stockade-gateway/prerm",
        "packaging/debian/stockade-gateway/postrm",
    ];
    for s in scripts {
        check(
            Command::new("bash").arg("-n").arg(repo().join(s)),
            "bash -n",
        );
    }
    // The no-bypass probe the VMs run (python3 is in the box).
    // (compile() only: py_compile would leave a __pycache__ in the clone.)
    check(
        Command::new("python3")
            .args([
                "-c",
                "import sys; compile(open(sys.argv[1]).read(), sys.argv[1], 'exec')",
            ])
            .arg(repo().join("vagrant/probe.py")),
        "python3: compile vagrant/probe.py",
    );
    if have("shellcheck") {
        check(
            Command::new("shellcheck")
                .arg("-x")
                .current_dir(repo())
                .args(scripts),
            "shellcheck",
        );
    } else if std::env::var("CI").as_deref() == Ok("true") {
        panic!("shellcheck is not installed: .ci/run must install it");
    } else {
        println!("SKIPPED: vagrant_scripts_are_sound: shellcheck is not installed (apt-get install shellcheck)");
    }
}

#[test]
fn vagrantfile_gives_stock_vms_no_path_around_the_gateway() {
    assert!(
        have("ruby"),
        "ruby is not installed (Debian's vagrant depends on it; .ci/run installs vagrant)"
    );
    let (_dir, vagrant) = render();
    check(
        Command::new("ruby")
            .arg("-c")
            .arg(vagrant.join("Vagrantfile")),
        "ruby -c",
    );
    let out = Command::new("ruby")
        .arg(vagrant.join("check-vagrantfile.rb"))
        .arg(vagrant.join("Vagrantfile"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loaded: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Vagrant's own network: the documentation /28 of topology.json, isolated, IPv4 only (not
    // vagrant-libvirt's default 192.168.121.0/24 with NAT).
    let topo: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(vagrant.join("generated/topology.json")).unwrap(),
    )
    .unwrap();
    let lv = &loaded["provider"]["libvirt"];
    assert_eq!(lv["management_network_mode"], "none", "{lv}");
    assert_eq!(lv["management_network_guest_ipv6"], "no", "{lv}");
    let vagrant_net = |name: &str| {
        topo["vagrant_networks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in topology.json"))
            .clone()
    };
    let vms = loaded["vms"].as_object().unwrap();
    assert_eq!(vms.len(), 8, "{vms:?}");
    for (name, vm) in vms {
        // Vagrant's own NIC: the stock VMs on a network of their own, every other VM on the
        // other one (no client or service VM shares a link with a stock VM).
        let want = if name.starts_with("stock") {
            "stockade-vagrant-stock"
        } else {
            "stockade-vagrant"
        };
        let own = &vm["provider"]["libvirt"];
        assert_eq!(own["management_network_name"], want, "{name}: {own}");
        let net = vagrant_net(want);
        assert_eq!(own["management_network_address"], net["address"], "{name}");
        assert_eq!(own["management_network_mode"], "none", "{name}: {own}");
        let addr = net["address"].as_str().unwrap();
        assert!(
            addr.starts_with("192.0.2.") || addr.starts_with("203.0.113."),
            "{addr}"
        );
        let nets: Vec<&str> = vm["networks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["libvirt__network_name"].as_str().unwrap())
            .collect();
        if name.starts_with("stock") {
            assert_eq!(nets, ["stockade-inside"], "{name}");
        } else if name != "gateway" {
            assert!(!nets.contains(&"stockade-inside"), "{name}: {nets:?}");
        }
        for n in vm["networks"].as_array().unwrap() {
            // Addresses come from the rendered networkd files; data networks have no host side.
            assert_eq!(n["auto_config"], "false", "{name}: {n}");
            if n["libvirt__network_name"] != "stockade-mgmt" {
                assert_eq!(n["libvirt__forward_mode"], "veryisolated", "{name}: {n}");
            }
        }
        let prov = vm["provision"].as_array().unwrap();
        assert_eq!(prov.len(), 1, "{name}");
        assert_eq!(prov[0]["path"], "provision.sh");
        assert!(
            prov[0]["args"]
                .as_str()
                .unwrap()
                .contains(net["host_ip"].as_str().unwrap()),
            "{name}: {}",
            prov[0]
        );
    }
}

/// `vagrant validate` on the Vagrantfile with the rendered files: for libvirt with the
/// vagrant-libvirt plugin (its provider options are checked too), and for VirtualBox (not a
/// Debian package, so its provider section is ignored). `.ci/run` installs both packages.
#[test]
fn vagrant_validate_accepts_the_vagrantfile() {
    assert!(
        have("vagrant"),
        "vagrant is not installed: apt-get install vagrant vagrant-libvirt (.ci/run does)"
    );
    let (dir, vagrant) = render();
    let home = dir.path().join("vagrant-home");
    let run = |provider: &str, args: &[&str]| {
        let out = Command::new("vagrant")
            .arg("validate")
            .args(args)
            .current_dir(&vagrant)
            .env("VAGRANT_DEFAULT_PROVIDER", provider)
            .env("VAGRANT_HOME", &home)
            // No call home to HashiCorp's version check.
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && text.contains("Vagrantfile validated successfully"),
            "vagrant validate ({provider}) failed:\n{text}"
        );
    };
    let plugins = Command::new("vagrant")
        .args(["plugin", "list"])
        .env("VAGRANT_HOME", &home)
        .env("VAGRANT_CHECKPOINT_DISABLE", "1")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&plugins.stdout).contains("vagrant-libvirt"),
        "the vagrant-libvirt plugin is missing: apt-get install vagrant-libvirt (.ci/run does)"
    );
    run("libvirt", &[]);
    run("virtualbox", &["--ignore-provider"]);
}
