//! The same topology as Vagrant VMs: `stockade-lab vagrant-files DIR` renders every VM's files
//! from the lab's templates (`render::host_files` with the VM layout, the same code path the
//! namespace lab runs), generates the PKI, and writes `topology.json`, which
//! `vagrant/Vagrantfile` reads, so addresses, MACs and networks have one source.
//!
//! ```text
//! DIR/topology.json             networks and VMs (NICs: network, MAC, name, address)
//! DIR/bin/                      the stockade binaries installed on every VM
//! DIR/<vm>/deb/<package>.deb    with `--debs`: the VM's package, which provision.sh installs
//!                               instead of the binaries (the daemon runs the package's unit)
//! DIR/<vm>/root/...             files copied to / on the VM (configs, PKI subset, units,
//!                               systemd-networkd .link/.network, sysctl, nftables guard)
//! DIR/<vm>/units                the units `vagrant/provision.sh` enables
//! ```

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::netns::{DATA_IF, GATEWAY_INSIDE_MAC, GATEWAY_OUTSIDE_MAC, MGMT_IF};
use crate::package::{self, Daemon};
use crate::render::{self, Layout, Settings};
use crate::topology::{self, Mgmt, Role, Segment};
use crate::{sh, LabError};

pub const BIN_DIR: &str = "/usr/local/bin";
/// Replaced by `provision.sh` with the Vagrant host's address on the VM's own NIC.
pub const VAGRANT_HOST_MARKER: &str = "VAGRANT_HOST_IP";

#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    pub networks: Vec<Network>,
    /// Vagrant's own management networks (vagrant-libvirt's `management_network_*`): SSH and
    /// provisioning only, isolated (no NAT, no route off the host). Two of them, so that no VM
    /// shares a link with a stock VM except the gateway's inside port: [`NET_VAGRANT`] for every
    /// other VM, [`NET_VAGRANT_STOCK`] for the stock VMs alone.
    pub vagrant_networks: Vec<VagrantNetwork>,
    pub vms: Vec<Vm>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VagrantNetwork {
    pub name: String,
    /// `203.0.113.16/28`: a documentation /28, as the lab chooses its management slot.
    pub address: String,
    /// The host's address on it (libvirt takes the first), which the stock VMs' guard admits
    /// for SSH.
    pub host_ip: String,
}

/// The host-joined networks of the VMs: the management link (gateway, monitor, services'
/// admin addresses, the host) and Vagrant's own two networks (the stock VMs on one of their
/// own). Three distinct documentation /28s that overlap no address or route of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmNetworks {
    pub mgmt: Mgmt,
    pub vagrant: Mgmt,
    pub vagrant_stock: Mgmt,
}

impl VmNetworks {
    /// Takes the given slots (checked against the host's addresses and routes) and chooses the
    /// missing ones as the lab does: the first free /28s.
    pub fn choose(
        mgmt: Option<Mgmt>,
        vagrant: Option<Mgmt>,
        vagrant_stock: Option<Mgmt>,
    ) -> Result<Self, LabError> {
        let given = [mgmt, vagrant, vagrant_stock];
        for m in given.into_iter().flatten() {
            check_free(&m)?;
        }
        let mut free = crate::lab::free_mgmt_slots(3 + given.iter().flatten().count())?
            .into_iter()
            .filter(|m| !given.contains(&Some(*m)));
        let mut take = |m: Option<Mgmt>| match m {
            Some(m) => Ok(m),
            None => free
                .next()
                .ok_or_else(|| LabError::Invalid("no free management slot is left".into())),
        };
        let n = Self {
            mgmt: take(mgmt)?,
            vagrant: take(vagrant)?,
            vagrant_stock: take(vagrant_stock)?,
        };
        n.check_distinct()?;
        Ok(n)
    }

    fn check_distinct(&self) -> Result<(), LabError> {
        let all = [
            ("the management link", self.mgmt),
            ("Vagrant's network", self.vagrant),
            ("Vagrant's network for the stock VMs", self.vagrant_stock),
        ];
        for (i, (a, m)) in all.iter().enumerate() {
            if let Some((b, _)) = all[i + 1..].iter().find(|(_, n)| n == m) {
                return Err(LabError::Invalid(format!(
                    "{a} and {b} are both {m}: they must differ"
                )));
            }
        }
        Ok(())
    }
}

/// Fails, in one sentence naming the collision, when a host address or route overlaps `m`.
pub fn check_free(m: &Mgmt) -> Result<(), LabError> {
    let users = crate::netns::mgmt_slot_users(m.net)?;
    if let Some((_, user)) = users.iter().find(|(s, _)| *s == m.slot) {
        return Err(LabError::Invalid(format!(
            "network {m} collides with this machine's {user}: choose another documentation /28 (or let stockade-lab choose)"
        )));
    }
    Ok(())
}

/// Vagrant's own network in libvirt, for every VM but the stock VMs.
pub const NET_VAGRANT: &str = "stockade-vagrant";
/// Vagrant's own network for the stock VMs alone: only the host (which forwards nothing
/// between its networks) shares it with them.
pub const NET_VAGRANT_STOCK: &str = "stockade-vagrant-stock";

#[derive(Debug, Clone, Serialize)]
pub struct Network {
    pub name: String,
    /// Whether the Vagrant host joins it (only the management link).
    pub host_joins: bool,
    pub host_ip: Option<String>,
    pub network_address: String,
    pub netmask: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Vm {
    pub name: String,
    pub role: String,
    /// The network of the box's own first NIC (DHCP from libvirt; SSH and provisioning): one
    /// of `Topology::vagrant_networks`.
    pub vagrant_network: String,
    pub nics: Vec<Nic>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Nic {
    pub network: String,
    pub mac: String,
    /// The interface name inside the VM (set by a systemd .link file matching the MAC).
    pub name: String,
    /// Address with prefix length; none on the gateway's ports.
    pub address: Option<String>,
    /// The gateway's ports: promiscuous, no address, no IPv6.
    pub port: bool,
}

pub const NET_OUTSIDE: &str = "stockade-outside";
pub const NET_INSIDE: &str = "stockade-inside";
pub const NET_MGMT: &str = "stockade-mgmt";

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Client => "client",
        Role::Service => "service",
        Role::Monitor => "monitor",
        Role::Stock => "stock",
    }
}

/// The VMs and their NICs (the box's own NIC, on Vagrant's network, is `Vm::vagrant_network`;
/// the Vagrantfile does not create it).
pub fn topology(nets: &VmNetworks) -> Topology {
    let mgmt = nets.mgmt;
    let nic = |network: &str, ip: Ipv4Addr, name: &str, len: u8| Nic {
        network: network.into(),
        mac: topology::mac_for(ip),
        name: name.into(),
        address: Some(format!("{ip}/{len}")),
        port: false,
    };
    let mut vms = vec![];
    for h in topology::HOSTS {
        let data_net = match h.segment {
            Segment::Outside => NET_OUTSIDE,
            Segment::Inside => NET_INSIDE,
        };
        let mut nics = vec![nic(data_net, h.ip, DATA_IF, topology::DATA_PREFIX_LEN)];
        if let Some(m) = mgmt.of(&h) {
            nics.push(nic(NET_MGMT, m, MGMT_IF, topology::MGMT_PREFIX_LEN));
        }
        vms.push(Vm {
            name: h.name.into(),
            role: role_name(h.role).into(),
            vagrant_network: match h.role {
                Role::Stock => NET_VAGRANT_STOCK,
                _ => NET_VAGRANT,
            }
            .into(),
            nics,
        });
    }
    let port = |network: &str, mac: &str, name: &str| Nic {
        network: network.into(),
        mac: mac.into(),
        name: name.into(),
        address: None,
        port: true,
    };
    vms.push(Vm {
        name: topology::GATEWAY.into(),
        role: "gateway".into(),
        vagrant_network: NET_VAGRANT.into(),
        nics: vec![
            port(NET_OUTSIDE, GATEWAY_OUTSIDE_MAC, topology::GATEWAY_OUTSIDE),
            port(NET_INSIDE, GATEWAY_INSIDE_MAC, topology::GATEWAY_INSIDE),
            nic(NET_MGMT, mgmt.gateway(), MGMT_IF, topology::MGMT_PREFIX_LEN),
        ],
    });
    let data = |name: &str| Network {
        name: name.into(),
        host_joins: false,
        host_ip: None,
        network_address: "198.51.100.0".into(),
        netmask: "255.255.255.0".into(),
    };
    Topology {
        networks: vec![
            data(NET_OUTSIDE),
            data(NET_INSIDE),
            Network {
                name: NET_MGMT.into(),
                host_joins: true,
                host_ip: Some(mgmt.root().to_string()),
                network_address: mgmt.network().to_string(),
                netmask: "255.255.255.240".into(),
            },
        ],
        vagrant_networks: [
            (NET_VAGRANT, nets.vagrant),
            (NET_VAGRANT_STOCK, nets.vagrant_stock),
        ]
        .into_iter()
        .map(|(name, m)| VagrantNetwork {
            name: name.into(),
            address: m.to_string(),
            host_ip: m.addr(1).to_string(),
        })
        .collect(),
        vms,
    }
}

/// The networks of a rendered `topology.json`.
pub fn read_rendered(topology_json: &Path) -> Result<VmNetworks, LabError> {
    let text = fs::read_to_string(topology_json)
        .map_err(|e| LabError::io(format!("reading {}", topology_json.display()), e))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let missing = |what: &str| LabError::Invalid(format!("{}: no {what}", topology_json.display()));
    let vagrant = |name: &str| {
        v.pointer("/vagrant_networks")
            .and_then(|n| n.as_array())
            .and_then(|n| n.iter().find(|n| n["name"] == name))
            .and_then(|n| n["address"].as_str())
            .ok_or_else(|| missing(name))
            .and_then(Mgmt::parse_cidr)
    };
    let mgmt_net = v
        .pointer("/networks")
        .and_then(|n| n.as_array())
        .and_then(|n| n.iter().find(|n| n["name"] == NET_MGMT))
        .and_then(|n| n["network_address"].as_str())
        .ok_or_else(|| missing(NET_MGMT))?;
    Ok(VmNetworks {
        mgmt: Mgmt::parse_cidr(&format!("{mgmt_net}/{}", topology::MGMT_PREFIX_LEN))?,
        vagrant: vagrant(NET_VAGRANT)?,
        vagrant_stock: vagrant(NET_VAGRANT_STOCK)?,
    })
}

/// Checks, before anything is created, that the host-joined networks of a rendered
/// `topology.json` still overlap no address or route of this machine.
pub fn check_rendered(topology_json: &Path) -> Result<VmNetworks, LabError> {
    let n = read_rendered(topology_json)?;
    for m in [n.mgmt, n.vagrant, n.vagrant_stock] {
        check_free(&m)?;
    }
    n.check_distinct()?;
    Ok(n)
}

/// Options of `vagrant-files`.
#[derive(Debug, Clone)]
pub struct VagrantOptions {
    pub out: PathBuf,
    pub bin_dir: Option<PathBuf>,
    /// The Debian packages (`stockade-*.deb`, `stockade_*.deb`) to provision the daemons from;
    /// `None`: the binaries are copied in and the same units rendered into /etc/systemd/system.
    pub debs: Option<PathBuf>,
    pub rules: Option<PathBuf>,
    pub dataplane: Option<String>,
    pub auto_approve_ethics: bool,
    pub networks: VmNetworks,
}

/// The one `<package>_*.deb` in `dir` (what `cargo deb` names its output).
fn find_deb(dir: &Path, package: &str) -> Result<PathBuf, LabError> {
    let prefix = format!("{package}_");
    let found: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| LabError::io(format!("reading {}", dir.display()), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(LabError::Missing(format!(
            "exactly one {prefix}*.deb in {} (found {})",
            dir.display(),
            found.len()
        ))),
    }
}

/// Writes everything the VMs need into `opts.out`.
pub fn generate(opts: &VagrantOptions) -> Result<Topology, LabError> {
    let out = &opts.out;
    let topo = topology(&opts.networks);
    let layout = Layout::Vm;
    let mgmt = opts.networks.mgmt;
    let settings = Settings {
        layout: layout.clone(),
        mgmt,
        auto_approve_ethics: opts.auto_approve_ethics,
    };
    if out.exists() {
        fs::remove_dir_all(out)
            .map_err(|e| LabError::io(format!("clearing {}", out.display()), e))?;
    }
    mkdir(out)?;

    // Binaries and PKI, once for all VMs.
    let bin_out = out.join("bin");
    mkdir(&bin_out)?;
    let mut service_bin = None;
    // stockade-lab too: `stockade-lab probe` is the demo's direct attempt, run on a client VM.
    for b in [
        "stockade-service",
        "stockade-stock",
        "stockade",
        "stockade-gateway",
        "stockade-lab",
    ] {
        let src = sh::find_program(b, opts.bin_dir.as_deref()).ok_or_else(|| {
            LabError::Missing(format!(
                "{b} not found (build the workspace, or pass --bin-dir)"
            ))
        })?;
        if b == "stockade-service" {
            service_bin = Some(src.clone());
        }
        // From packages, the VMs need only stockade-lab (the demo's probe; not packaged).
        if opts.debs.is_some() && b != "stockade-lab" {
            continue;
        }
        fs::copy(&src, bin_out.join(b))
            .map_err(|e| LabError::io(format!("copying {}", src.display()), e))?;
        // The VMs need no debug info (a debug build's is hundreds of MB to sync per VM).
        sh::run(
            "strip",
            &[
                "--strip-debug".into(),
                bin_out.join(b).display().to_string(),
            ],
        )?;
    }
    let pki = out.join("pki");
    let mut args = vec!["pki".to_string(), pki.display().to_string()];
    for h in topology::hosts_with(Role::Service) {
        args.extend(["--service-name".into(), h.ip.to_string()]);
    }
    for h in topology::hosts_with(Role::Stock) {
        args.extend(["--stock-name".into(), h.ip.to_string()]);
    }
    let service_bin = service_bin.ok_or_else(|| LabError::Missing("stockade-service".into()))?;
    sh::run(&service_bin.display().to_string(), &args)?;
    let rules = render::rules_text(opts.rules.as_deref())?;

    for vm in &topo.vms {
        let root = out.join(&vm.name).join("root");
        let place = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
        let mut units: Vec<String> = vec![];
        let host = topology::host(&vm.name);
        // The VM's own package, for provision.sh to install (each VM gets only its own files).
        let package = match vm.role.as_str() {
            "service" => Some("stockade-service"),
            "stock" => Some("stockade-stock"),
            "gateway" => Some("stockade-gateway"),
            "client" => Some("stockade"),
            _ => None,
        };
        if let (Some(dir), Some(pkg)) = (&opts.debs, package) {
            let deb = find_deb(dir, pkg)?;
            let deb_dir = out.join(&vm.name).join("deb");
            mkdir(&deb_dir)?;
            fs::copy(&deb, deb_dir.join(format!("{pkg}.deb")))
                .map_err(|e| LabError::io(format!("copying {}", deb.display()), e))?;
        }
        if let Some(h) = host {
            for f in render::host_files(&settings, &h)? {
                write(&place(&f.path), &f.contents)?;
            }
        }
        // PKI: each VM gets only what its role needs.
        let files: &[&str] = match vm.role.as_str() {
            "stock" => &[
                "ca.pem",
                "stock.pem",
                "stock.key",
                "service-client-ca.pem",
                "monitor-ca.pem",
            ],
            "service" => &[
                "ca.pem",
                "service.pem",
                "service.key",
                "service-client.pem",
                "service-client.key",
            ],
            "monitor" => &["ca.pem", "monitor-client.pem", "monitor-client.key"],
            "client" => &["ca.pem"],
            _ => &[],
        };
        for f in files {
            let dst = place(&layout.pki()).join(f);
            mkdir(dst.parent().unwrap_or(&root))?;
            fs::copy(pki.join(f), &dst).map_err(|e| LabError::io(format!("copying {f}"), e))?;
        }
        let units_dir = place(Path::new("/etc/systemd/system"));
        let unit = |t: &render::Template, vars: &[(&str, String)]| -> Result<(), LabError> {
            write(&units_dir.join(t.file), &render::render(t, vars)?)
        };
        // The packages' own units and system users (`package`), with the binaries in BIN_DIR;
        // provisioned from the .deb files, the package brings them itself.
        let packaged = |d: Daemon| -> Result<(), LabError> {
            if opts.debs.is_some() {
                return Ok(());
            }
            write(
                &units_dir.join(format!("{}.service", d.name())),
                &package::unit(d, BIN_DIR)?,
            )?;
            let (file, users) = d.sysusers();
            write(&place(Path::new("/usr/lib/sysusers.d")).join(file), users)
        };
        match (vm.role.as_str(), host) {
            ("service", Some(h)) => {
                unit(
                    &render::UNIT_CLAMD,
                    &[
                        ("host", h.name.into()),
                        ("config", layout.clamd_config(h.name).display().to_string()),
                    ],
                )?;
                packaged(Daemon::Service)?;
                write(
                    &place(&layout.clamav_db()).join("stockade.ndb"),
                    &render::signature_db()?,
                )?;
                units.extend([
                    "stockade-clamd.service".into(),
                    "stockade-service.service".into(),
                ]);
            }
            ("stock", Some(_)) => {
                packaged(Daemon::Stock)?;
                write(&place(Path::new("/etc/stockade/guard.nft")), &stock_guard())?;
                write(&units_dir.join("stockade-guard.service"), GUARD_UNIT)?;
                units.extend([
                    "stockade-guard.service".into(),
                    "stockade-stock.service".into(),
                ]);
            }
            ("monitor", _) => units.push("prometheus.service".into()),
            ("gateway", _) => {
                let args = render::gateway_args(&layout, &mgmt, opts.dataplane.as_deref());
                // args: run --rules R --outside O --inside I --metrics M --ctl C [--dataplane D]
                let get = |flag: &str| {
                    args.iter()
                        .position(|a| a == flag)
                        .and_then(|i| args.get(i + 1))
                        .cloned()
                        .unwrap_or_default()
                };
                if get("--ctl") != "/run/stockade-gateway/ctl.sock" {
                    return Err(LabError::Invalid(format!(
                        "the packaged gateway unit's control socket is /run/stockade-gateway/ctl.sock, not {}",
                        get("--ctl")
                    )));
                }
                packaged(Daemon::Gateway)?;
                write(
                    &place(Path::new(package::GATEWAY_ENV)),
                    &package::gateway_env(
                        Path::new(&get("--rules")),
                        &get("--outside"),
                        &get("--inside"),
                        &get("--metrics"),
                        opts.dataplane.as_deref().unwrap_or("userspace"),
                    ),
                )?;
                write(
                    &place(Path::new("/etc/modules-load.d/stockade-gateway.conf")),
                    package::GATEWAY_MODULES,
                )?;
                write(
                    &place(Path::new("/etc/sysctl.d/80-stockade-gateway.conf")),
                    package::GATEWAY_SYSCTL,
                )?;
                write(&place(&layout.rules()), &rules)?;
                units.push("stockade-gateway.service".into());
            }
            _ => {}
        }
        // Interface names by MAC, addresses, no forwarding, no IPv6 on the gateway's ports.
        let netdir = place(Path::new("/etc/systemd/network"));
        let mut sysctl = String::from(
            "# Generated by stockade-lab: nothing routes around the gateway.\nnet.ipv4.ip_forward=0\nnet.ipv4.conf.all.forwarding=0\nnet.ipv6.conf.all.forwarding=0\nnet.ipv4.conf.all.arp_ignore=1\nnet.ipv4.conf.all.arp_announce=2\n# Strict reverse-path filtering: a packet from an address routed via another NIC (a client's\n# data address arriving on Vagrant's network) is dropped. The kernel takes the larger of `all`\n# and the interface's value, and Debian sets 2 (loose) on every interface: set both.\nnet.ipv4.conf.all.rp_filter=1\nnet.ipv4.conf.default.rp_filter=1\nnet.ipv4.conf.*.rp_filter=1\n",
        );
        let mut nics_list = String::new();
        for (i, nic) in vm.nics.iter().enumerate() {
            let n = 10 + i;
            write(
                &netdir.join(format!("{n}-stockade-{}.link", nic.name)),
                &format!(
                    "# Generated by stockade-lab.\n[Match]\nMACAddress={}\n\n[Link]\nName={}\n{}",
                    nic.mac, nic.name, TX_CHECKSUM_OFF
                ),
            )?;
            let mut network = format!(
                "# Generated by stockade-lab.\n[Match]\nName={}\n\n[Network]\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n",
                nic.name
            );
            if let Some(a) = &nic.address {
                network.push_str(&format!("Address={a}\n"));
            }
            if nic.port {
                network.push_str("\n[Link]\nPromiscuous=yes\n");
                sysctl.push_str(&format!("net.ipv6.conf.{}.disable_ipv6=1\n", nic.name));
            }
            write(
                &netdir.join(format!("{n}-stockade-{}.network", nic.name)),
                &network,
            )?;
            nics_list.push_str(&format!("{} {}\n", nic.mac, nic.name));
        }
        write(&place(Path::new("/etc/sysctl.d/90-stockade.conf")), &sysctl)?;
        write(&out.join(&vm.name).join("nics"), &nics_list)?;
        write(
            &out.join(&vm.name).join("units"),
            &(units.join("\n") + "\n"),
        )?;
    }
    write(
        &out.join("topology.json"),
        &serde_json::to_string_pretty(&topo)?,
    )?;
    Ok(topo)
}

/// A stock VM's guard on every interface but its data NIC: Vagrant attaches each VM to its own
/// network, which must not become a path to the stock server. Only SSH from the Vagrant host
/// passes; the stock server itself starts nothing there.
///
/// Stateless on purpose: conntrack is not per interface, so `ct state established` would admit
/// on Vagrant's NIC a segment forged into a connection the stock server holds on its data NIC
/// (a client knows its own push connection's tuple and sequence numbers: claim 1's one-way
/// path would have a way back). So every rule names the host: SSH to port 22 and its replies
/// (which also keeps the provisioning session that loads this guard alive: it predates the
/// guard), and DHCP with libvirt's dnsmasq on the host (renewals are unicast UDP 67/68; the
/// first request goes over a packet socket, which nftables does not see).
pub fn stock_guard() -> String {
    let h = VAGRANT_HOST_MARKER;
    format!(
        "#!/usr/sbin/nft -f\n# Generated by stockade-lab: the stock VM is reachable only through the gateway.\n\
table inet stockade_guard\ndelete table inet stockade_guard\n\
table inet stockade_guard {{\n\
  chain input {{\n    type filter hook input priority -10; policy drop;\n    iifname \"lo\" accept\n    iifname \"{DATA_IF}\" accept\n    ip saddr {h} tcp dport 22 accept\n    ip saddr {h} udp sport 67 udp dport 68 accept\n  }}\n\
  chain forward {{\n    type filter hook forward priority -10; policy drop;\n  }}\n\
  chain output {{\n    type filter hook output priority -10; policy drop;\n    oifname \"lo\" accept\n    oifname \"{DATA_IF}\" accept\n    ip daddr {h} tcp sport 22 accept\n    ip daddr {h} udp sport 68 udp dport 67 accept\n  }}\n\
}}\n"
    )
}

const GUARD_UNIT: &str = "# Generated by stockade-lab.\n[Unit]\nDescription=Stockade stock VM guard (only the gateway's side reaches the stock server)\nBefore=network-pre.target stockade-stock.service\nWants=network-pre.target\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/sbin/nft -f /etc/stockade/guard.nft\n\n[Install]\nWantedBy=multi-user.target\n";

fn mkdir(p: &Path) -> Result<(), LabError> {
    fs::create_dir_all(p).map_err(|e| LabError::io(format!("creating {}", p.display()), e))
}

fn write(p: &Path, contents: &str) -> Result<(), LabError> {
    if let Some(d) = p.parent() {
        mkdir(d)?;
    }
    fs::write(p, contents).map_err(|e| LabError::io(format!("writing {}", p.display()), e))
}

/// Transmit checksum offload off on every NIC, as the lab does on every veth: a virtio NIC
/// hands frames to the host's bridge with partial checksums, and the gateway verifies every L4
/// checksum (found on the booted VMs: the monitor's scrapes of the stock servers were all
/// `checksum` drops). `provision.sh` applies it at once with ethtool; this keeps it at boot.
pub const TX_CHECKSUM_OFF: &str = "TransmitChecksumOffload=no\n";

/// Whether a VM is a stock server (for the static checks).
pub fn is_stock(vm: &Vm) -> bool {
    vm.role == role_name(Role::Stock)
}

/// Every link a VM has, the box's own NIC on Vagrant's network included: (network, whether it
/// is one of the gateway's address-less ports).
fn links(vm: &Vm) -> impl Iterator<Item = (&str, bool)> {
    vm.nics
        .iter()
        .map(|n| (n.network.as_str(), n.port && n.address.is_none()))
        .chain(std::iter::once((vm.vagrant_network.as_str(), false)))
}

/// The static check that no stock VM has a path around the gateway, over every NIC of every
/// VM, Vagrant's own included: a stock VM's only data NIC is on the inside network, and no VM
/// but another stock VM shares any of its networks, except the gateway through an address-less
/// port. The only VM on both data networks is the gateway. (The host joins Vagrant's networks
/// and the management link and forwards nothing between them: libvirt rejects forwarding to and
/// from isolated networks, and `vagrant/test.sh` checks the host's `ip_forward`.) Returns the
/// violations.
pub fn check_no_bypass(t: &Topology) -> Vec<String> {
    let mut bad = vec![];
    for vm in &t.vms {
        let nets: Vec<&str> = vm.nics.iter().map(|n| n.network.as_str()).collect();
        if is_stock(vm) {
            if nets != [NET_INSIDE] {
                bad.push(format!("{}: stock VM on {nets:?}", vm.name));
            }
            for (net, _) in links(vm) {
                for other in t.vms.iter().filter(|o| o.name != vm.name && !is_stock(o)) {
                    for (onet, port) in links(other) {
                        if onet == net && !(other.role == "gateway" && port) {
                            bad.push(format!(
                                "{}: shares {net} with {} ({})",
                                vm.name, other.name, other.role
                            ));
                        }
                    }
                }
            }
        }
        if nets.contains(&NET_OUTSIDE) && nets.contains(&NET_INSIDE) {
            let ports_ok = vm
                .nics
                .iter()
                .filter(|n| n.network != NET_MGMT)
                .all(|n| n.port && n.address.is_none());
            if vm.role != "gateway" || !ports_ok {
                bad.push(format!("{}: bridges outside and inside", vm.name));
            }
        }
        if !t
            .vagrant_networks
            .iter()
            .any(|n| n.name == vm.vagrant_network)
        {
            bad.push(format!(
                "{}: Vagrant network {} is not in vagrant_networks",
                vm.name, vm.vagrant_network
            ));
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets() -> VmNetworks {
        VmNetworks {
            mgmt: Mgmt::parse_cidr("203.0.113.32/28").unwrap(),
            vagrant: Mgmt::parse_cidr("203.0.113.48/28").unwrap(),
            vagrant_stock: Mgmt::parse_cidr("203.0.113.64/28").unwrap(),
        }
    }

    #[test]
    fn vagrant_networks_are_documentation_slots() {
        let t = topology(&nets());
        let v: Vec<(&str, &str, &str)> = t
            .vagrant_networks
            .iter()
            .map(|n| (n.name.as_str(), n.address.as_str(), n.host_ip.as_str()))
            .collect();
        assert_eq!(
            v,
            [
                (NET_VAGRANT, "203.0.113.48/28", "203.0.113.49"),
                (NET_VAGRANT_STOCK, "203.0.113.64/28", "203.0.113.65"),
            ]
        );
        let m = t.networks.iter().find(|n| n.name == NET_MGMT).unwrap();
        assert_eq!(m.network_address, "203.0.113.32");
        assert_eq!(m.host_ip.as_deref(), Some("203.0.113.46"));
        for vm in &t.vms {
            let want = if is_stock(vm) {
                NET_VAGRANT_STOCK
            } else {
                NET_VAGRANT
            };
            assert_eq!(vm.vagrant_network, want, "{}", vm.name);
        }
    }

    #[test]
    fn the_same_slot_twice_is_refused() {
        let mut n = nets();
        n.vagrant_stock = n.vagrant;
        let e = n.check_distinct().unwrap_err().to_string();
        assert!(e.contains("203.0.113.48/28"), "{e}");
        assert!(nets().check_distinct().is_ok());
    }

    fn stock1(t: &mut Topology) -> &mut Vm {
        t.vms.iter_mut().find(|v| v.name == "stock1").unwrap()
    }

    #[test]
    fn topology_has_no_bypass() {
        let t = topology(&nets());
        assert!(check_no_bypass(&t).is_empty(), "{:?}", check_no_bypass(&t));
        assert_eq!(t.vms.len(), 8);

        // A second NIC on the outside network.
        let mut broken = t.clone();
        stock1(&mut broken).nics.push(Nic {
            network: NET_OUTSIDE.into(),
            mac: "02:00:00:00:00:99".into(),
            name: "x".into(),
            address: Some("198.51.100.99/24".into()),
            port: false,
        });
        assert!(!check_no_bypass(&broken).is_empty());

        // The issue-14 path: a stock VM on the Vagrant network the clients are on.
        let mut broken = t.clone();
        stock1(&mut broken).vagrant_network = NET_VAGRANT.into();
        let bad = check_no_bypass(&broken);
        assert!(
            bad.iter()
                .any(|b| b.contains("stock1: shares stockade-vagrant with client1")),
            "{bad:?}"
        );

        // A client on the stock VMs' Vagrant network.
        let mut broken = t.clone();
        broken
            .vms
            .iter_mut()
            .find(|v| v.name == "client2")
            .unwrap()
            .vagrant_network = NET_VAGRANT_STOCK.into();
        assert!(!check_no_bypass(&broken).is_empty());

        // The gateway's inside NIC with an address (not a port) is a host on the inside.
        let mut broken = t.clone();
        let gw = broken.vms.iter_mut().find(|v| v.role == "gateway").unwrap();
        let inside = gw
            .nics
            .iter_mut()
            .find(|n| n.network == NET_INSIDE)
            .unwrap();
        inside.address = Some("198.51.100.1/24".into());
        inside.port = false;
        assert!(!check_no_bypass(&broken).is_empty());

        // A service VM on the inside network.
        let mut broken = t.clone();
        let svc = broken
            .vms
            .iter_mut()
            .find(|v| v.name == "service1")
            .unwrap();
        svc.nics[0].network = NET_INSIDE.into();
        assert!(!check_no_bypass(&broken).is_empty());
    }

    /// The lab and the VMs are one design: every host of the lab's topology is a VM with the
    /// lab's addresses and MACs (the lab sets them in `netns`), on the segment the lab puts it.
    #[test]
    fn the_vms_are_the_labs_hosts() {
        let n = nets();
        let t = topology(&n);
        assert_eq!(t.vms.len(), topology::HOSTS.len() + 1);
        for h in topology::HOSTS {
            let vm = t.vms.iter().find(|v| v.name == h.name).expect(h.name);
            let data = &vm.nics[0];
            assert_eq!(data.name, DATA_IF);
            assert_eq!(
                data.address,
                Some(format!("{}/{}", h.ip, topology::DATA_PREFIX_LEN))
            );
            assert_eq!(data.mac, topology::mac_for(h.ip));
            let segment = match h.segment {
                Segment::Outside => NET_OUTSIDE,
                Segment::Inside => NET_INSIDE,
            };
            assert_eq!(data.network, segment, "{}", h.name);
            let mgmt: Vec<_> = vm.nics.iter().filter(|x| x.network == NET_MGMT).collect();
            match n.mgmt.of(&h) {
                Some(a) => {
                    assert_eq!(mgmt.len(), 1, "{}", h.name);
                    assert_eq!(mgmt[0].address, Some(format!("{a}/28")));
                    assert_eq!(mgmt[0].mac, topology::mac_for(a));
                    assert_eq!(mgmt[0].name, MGMT_IF);
                }
                None => assert!(mgmt.is_empty(), "{}", h.name),
            }
        }
        let gw = t.vms.iter().find(|v| v.role == "gateway").unwrap();
        let ports: Vec<(&str, &str)> = gw
            .nics
            .iter()
            .filter(|x| x.port)
            .map(|x| (x.name.as_str(), x.mac.as_str()))
            .collect();
        assert_eq!(
            ports,
            [
                (topology::GATEWAY_OUTSIDE, GATEWAY_OUTSIDE_MAC),
                (topology::GATEWAY_INSIDE, GATEWAY_INSIDE_MAC)
            ]
        );
    }

    fn chain<'a>(g: &'a str, name: &str) -> Vec<&'a str> {
        let start = g.find(&format!("chain {name}")).unwrap();
        let body = &g[start..];
        body[..body.find('}').unwrap()]
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with("accept"))
            .collect()
    }

    #[test]
    fn guard_admits_only_the_host_outside_the_data_nic_and_keeps_no_state() {
        let g = stock_guard();
        assert_eq!(g.matches("policy drop").count(), 3, "{g}");
        let h = VAGRANT_HOST_MARKER;
        assert_eq!(
            chain(&g, "input"),
            [
                "iifname \"lo\" accept".to_string(),
                format!("iifname \"{DATA_IF}\" accept"),
                format!("ip saddr {h} tcp dport 22 accept"),
                format!("ip saddr {h} udp sport 67 udp dport 68 accept"),
            ]
        );
        assert!(chain(&g, "forward").is_empty());
        assert_eq!(
            chain(&g, "output"),
            [
                "oifname \"lo\" accept".to_string(),
                format!("oifname \"{DATA_IF}\" accept"),
                format!("ip daddr {h} tcp sport 22 accept"),
                format!("ip daddr {h} udp sport 68 udp dport 67 accept"),
            ]
        );
        // Conntrack is not per interface: a `ct state` rule would admit, on Vagrant's NIC, a
        // segment forged into the push connection of the data NIC.
        assert!(!g.contains("ct state"), "{g}");
    }
}
