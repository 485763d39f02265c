//! The same topology as Vagrant VMs: `stockade-lab vagrant-files DIR` renders every VM's files
//! from the lab's templates (`render::host_files` with the VM layout, the same code path the
//! namespace lab runs), generates the PKI, and writes `topology.json`, which
//! `vagrant/Vagrantfile` reads, so addresses, MACs and networks have one source.
//!
//! ```text
//! DIR/topology.json             networks and VMs (NICs: network, MAC, name, address)
//! DIR/bin/                      the stockade binaries installed on every VM
//! DIR/<vm>/root/...             files copied to / on the VM (configs, PKI subset, units,
//!                               systemd-networkd .link/.network, sysctl, nftables guard)
//! DIR/<vm>/units                the units `vagrant/provision.sh` enables
//! ```

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::netns::{DATA_IF, GATEWAY_INSIDE_MAC, GATEWAY_OUTSIDE_MAC, MGMT_IF};
use crate::render::{self, Layout, Settings};
use crate::topology::{self, Mgmt, Role, Segment};
use crate::{sh, LabError};

pub const BIN_DIR: &str = "/usr/local/bin";
/// Replaced by `provision.sh` with the Vagrant host's address on the VM's own NIC.
pub const VAGRANT_HOST_MARKER: &str = "VAGRANT_HOST_IP";

#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    pub networks: Vec<Network>,
    /// Vagrant's own management network (vagrant-libvirt's `management_network_*`): SSH and
    /// provisioning only, isolated (no NAT, no route off the host).
    pub vagrant_network: VagrantNetwork,
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

/// The two host-joined networks of the VMs: the management link (gateway, monitor, services'
/// admin addresses, the host) and Vagrant's own network. Two distinct documentation /28s that
/// overlap no address or route of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmNetworks {
    pub mgmt: Mgmt,
    pub vagrant: Mgmt,
}

impl VmNetworks {
    /// Takes the given slots (checked against the host's addresses and routes) and chooses the
    /// missing ones as the lab does: the first free /28s.
    pub fn choose(mgmt: Option<Mgmt>, vagrant: Option<Mgmt>) -> Result<Self, LabError> {
        for m in [mgmt, vagrant].into_iter().flatten() {
            check_free(&m)?;
        }
        let mut free = crate::lab::free_mgmt_slots(3)?
            .into_iter()
            .filter(|m| Some(*m) != mgmt && Some(*m) != vagrant);
        let mut next = || {
            free.next()
                .ok_or_else(|| LabError::Invalid("no free management slot is left".into()))
        };
        let mgmt = match mgmt {
            Some(m) => m,
            None => next()?,
        };
        let vagrant = match vagrant {
            Some(m) => m,
            None => next()?,
        };
        if mgmt == vagrant {
            return Err(LabError::Invalid(format!(
                "the management link and Vagrant's network are both {mgmt}: they must differ"
            )));
        }
        Ok(Self { mgmt, vagrant })
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

/// The name of Vagrant's own network in libvirt.
pub const NET_VAGRANT: &str = "stockade-vagrant";

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

/// The VMs and their NICs (the Vagrant NAT/management NIC of each box is not listed: see the
/// stock VMs' guard).
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
        vagrant_network: VagrantNetwork {
            name: NET_VAGRANT.into(),
            address: nets.vagrant.to_string(),
            host_ip: nets.vagrant.addr(1).to_string(),
        },
        vms,
    }
}

/// Checks, before anything is created, that the host-joined networks of a rendered
/// `topology.json` still overlap no address or route of this machine.
pub fn check_rendered(topology_json: &Path) -> Result<VmNetworks, LabError> {
    let text = fs::read_to_string(topology_json)
        .map_err(|e| LabError::io(format!("reading {}", topology_json.display()), e))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let field = |ptr: &str| {
        v.pointer(ptr)
            .and_then(|x| x.as_str())
            .ok_or_else(|| LabError::Invalid(format!("{}: no {ptr}", topology_json.display())))
    };
    let vagrant = Mgmt::parse_cidr(field("/vagrant_network/address")?)?;
    let mgmt_net = v
        .pointer("/networks")
        .and_then(|n| n.as_array())
        .and_then(|n| n.iter().find(|n| n["name"] == NET_MGMT))
        .and_then(|n| n["network_address"].as_str())
        .ok_or_else(|| {
            LabError::Invalid(format!(
                "{}: no {NET_MGMT} network",
                topology_json.display()
            ))
        })?;
    let mgmt = Mgmt::parse_cidr(&format!("{mgmt_net}/{}", topology::MGMT_PREFIX_LEN))?;
    check_free(&mgmt)?;
    check_free(&vagrant)?;
    Ok(VmNetworks { mgmt, vagrant })
}

/// Options of `vagrant-files`.
#[derive(Debug, Clone)]
pub struct VagrantOptions {
    pub out: PathBuf,
    pub bin_dir: Option<PathBuf>,
    pub rules: Option<PathBuf>,
    pub dataplane: Option<String>,
    pub auto_approve_ethics: bool,
    pub networks: VmNetworks,
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
    for b in [
        "stockade-service",
        "stockade-stock",
        "stockade",
        "stockade-gateway",
    ] {
        let src = sh::find_program(b, opts.bin_dir.as_deref()).ok_or_else(|| {
            LabError::Missing(format!(
                "{b} not found (build the workspace, or pass --bin-dir)"
            ))
        })?;
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
        if b == "stockade-service" {
            service_bin = Some(src);
        }
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
        match (vm.role.as_str(), host) {
            ("service", Some(h)) => {
                unit(
                    &render::UNIT_CLAMD,
                    &[
                        ("host", h.name.into()),
                        ("config", layout.clamd_config(h.name).display().to_string()),
                    ],
                )?;
                unit(
                    &render::UNIT_SERVICE,
                    &[
                        ("host", h.name.into()),
                        ("bin_dir", BIN_DIR.into()),
                        (
                            "config",
                            layout.service_config(h.name).display().to_string(),
                        ),
                    ],
                )?;
                write(
                    &place(&layout.clamav_db()).join("stockade.ndb"),
                    &render::signature_db()?,
                )?;
                units.extend([
                    "stockade-clamd.service".into(),
                    "stockade-service.service".into(),
                ]);
            }
            ("stock", Some(h)) => {
                unit(
                    &render::UNIT_STOCK,
                    &[
                        ("host", h.name.into()),
                        ("bin_dir", BIN_DIR.into()),
                        ("config", layout.stock_config(h.name).display().to_string()),
                    ],
                )?;
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
                let extra = opts
                    .dataplane
                    .as_ref()
                    .map(|d| format!(" --dataplane {d}"))
                    .unwrap_or_default();
                unit(
                    &render::UNIT_GATEWAY,
                    &[
                        ("bin_dir", BIN_DIR.into()),
                        ("rules", get("--rules")),
                        ("outside", get("--outside")),
                        ("inside", get("--inside")),
                        ("metrics", get("--metrics")),
                        ("ctl", get("--ctl")),
                        ("extra_args", extra),
                    ],
                )?;
                write(&place(&layout.rules()), &rules)?;
                units.push("stockade-gateway.service".into());
            }
            _ => {}
        }
        // Interface names by MAC, addresses, no forwarding, no IPv6 on the gateway's ports.
        let netdir = place(Path::new("/etc/systemd/network"));
        let mut sysctl = String::from(
            "# Generated by stockade-lab: nothing routes around the gateway.\nnet.ipv4.ip_forward=0\nnet.ipv4.conf.all.forwarding=0\nnet.ipv6.conf.all.forwarding=0\nnet.ipv4.conf.all.arp_ignore=1\nnet.ipv4.conf.all.arp_announce=2\n",
        );
        let mut nics_list = String::new();
        for (i, nic) in vm.nics.iter().enumerate() {
            let n = 10 + i;
            write(
                &netdir.join(format!("{n}-stockade-{}.link", nic.name)),
                &format!(
                    "# Generated by stockade-lab.\n[Match]\nMACAddress={}\n\n[Link]\nName={}\n",
                    nic.mac, nic.name
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
/// management/NAT network, which must not become a path to the stock server. Only SSH from the
/// Vagrant host passes; the stock server itself starts nothing there.
///
/// Two stateless output rules, both toward the Vagrant host only: SSH replies (the session that
/// loads this guard predates it, and conntrack cannot follow a TCP connection it picked up
/// mid-stream with window scaling: its packets would be INVALID and the session would hang),
/// and DHCP renewals to libvirt's dnsmasq (unicast UDP 68 -> 67; the first request and rebinding
/// go over packet sockets, which nftables does not see; without renewals the lease lapses).
pub fn stock_guard() -> String {
    format!(
        "#!/usr/sbin/nft -f\n# Generated by stockade-lab: the stock VM is reachable only through the gateway.\n\
table inet stockade_guard\ndelete table inet stockade_guard\n\
table inet stockade_guard {{\n\
  chain input {{\n    type filter hook input priority -10; policy drop;\n    iifname \"lo\" accept\n    iifname \"{DATA_IF}\" accept\n    ct state established,related accept\n    ip saddr {VAGRANT_HOST_MARKER} tcp dport 22 accept\n  }}\n\
  chain forward {{\n    type filter hook forward priority -10; policy drop;\n  }}\n\
  chain output {{\n    type filter hook output priority -10; policy drop;\n    oifname \"lo\" accept\n    oifname \"{DATA_IF}\" accept\n    ct state established,related accept\n    ip daddr {VAGRANT_HOST_MARKER} tcp sport 22 accept\n    ip daddr {VAGRANT_HOST_MARKER} udp sport 68 udp dport 67 accept\n  }}\n\
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

/// Whether a VM is a stock server (for the static checks).
pub fn is_stock(vm: &Vm) -> bool {
    vm.role == role_name(Role::Stock)
}

/// The static check that no stock VM has a path around the gateway: a stock VM's only NIC is
/// on the inside network; the only VM on both data networks is the gateway, and only with
/// address-less ports; no stock VM is on the management network. Returns the violations.
pub fn check_no_bypass(t: &Topology) -> Vec<String> {
    let mut bad = vec![];
    for vm in &t.vms {
        let nets: Vec<&str> = vm.nics.iter().map(|n| n.network.as_str()).collect();
        if is_stock(vm) && nets != [NET_INSIDE] {
            bad.push(format!("{}: stock VM on {nets:?}", vm.name));
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
        if !is_stock(vm) && vm.role != "gateway" && nets.contains(&NET_INSIDE) {
            bad.push(format!("{}: on the inside network", vm.name));
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
        }
    }

    #[test]
    fn vagrant_network_is_a_documentation_slot() {
        let t = topology(&nets());
        assert_eq!(t.vagrant_network.address, "203.0.113.48/28");
        assert_eq!(t.vagrant_network.host_ip, "203.0.113.49");
        let m = t.networks.iter().find(|n| n.name == NET_MGMT).unwrap();
        assert_eq!(m.network_address, "203.0.113.32");
        assert_eq!(m.host_ip.as_deref(), Some("203.0.113.46"));
    }

    #[test]
    fn topology_has_no_bypass() {
        let t = topology(&nets());
        assert!(check_no_bypass(&t).is_empty(), "{:?}", check_no_bypass(&t));
        assert_eq!(t.vms.len(), 8);
        // Breaking it is caught.
        let mut broken = t.clone();
        let stock = broken.vms.iter_mut().find(|v| v.name == "stock1").unwrap();
        stock.nics.push(Nic {
            network: NET_OUTSIDE.into(),
            mac: "02:00:00:00:00:99".into(),
            name: "x".into(),
            address: Some("198.51.100.99/24".into()),
            port: false,
        });
        assert!(!check_no_bypass(&broken).is_empty());
    }

    #[test]
    fn guard_admits_only_ssh_from_the_host_outside_the_data_nic() {
        let g = stock_guard();
        assert!(g.contains("policy drop"));
        assert!(g.contains(&format!(
            "ip saddr {VAGRANT_HOST_MARKER} tcp dport 22 accept"
        )));
        assert!(g.contains("chain forward"));
        // The output chain: replies to the provisioning SSH session that loads the guard, and
        // DHCP renewals, both toward the Vagrant host only; nothing else leaves but on `data`.
        let output = &g[g.find("chain output").unwrap()..];
        let rules: Vec<&str> = output
            .lines()
            .map(str::trim)
            .filter(|l| l.ends_with("accept"))
            .collect();
        assert_eq!(
            rules,
            [
                "oifname \"lo\" accept".to_string(),
                format!("oifname \"{DATA_IF}\" accept"),
                "ct state established,related accept".to_string(),
                format!("ip daddr {VAGRANT_HOST_MARKER} tcp sport 22 accept"),
                format!("ip daddr {VAGRANT_HOST_MARKER} udp sport 68 udp dport 67 accept"),
            ]
        );
    }
}
