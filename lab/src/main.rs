//! `stockade-lab`: argument parsing and output; the work is in the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use stockade_lab::lab::{self, Dataplane, Lab, UpOptions};
use stockade_lab::{probe, topology, vagrant};

#[derive(Parser)]
#[command(
    name = "stockade-lab",
    version,
    about = "The topology of JP H11-73391 (Fig. 1, Fig. 12) on one machine: namespaces, the real gateway, the daemons, Prometheus",
    after_help = "Start here:  stockade-lab up && stockade-lab demo   (as root; `stockade-lab down` removes everything)"
)]
struct Cli {
    #[command(flatten)]
    log: stockade_logging::LogArgs,
    /// Names every namespace (`PREFIX-client1`, ...) and the root link (`PREFIX-mg`).
    #[arg(long, global = true, default_value = lab::DEFAULT_PREFIX, env = "STOCKADE_LAB_PREFIX")]
    prefix: String,
    /// State directory (configs, PKI, pid files, logs) [default: /var/lib/stockade-lab/PREFIX].
    #[arg(long, global = true, env = "STOCKADE_LAB_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum PlaneArg {
    Userspace,
    Nftables,
}

#[derive(Clone, Copy, ValueEnum)]
enum Proto {
    Tcp,
    Udp,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the topology and start every daemon.
    Up {
        #[arg(long, value_enum, default_value = "userspace")]
        dataplane: PlaneArg,
        /// Rules file to copy into the state directory [default: the repo's rules/default.yaml].
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Directory of the stockade binaries [default: next to stockade-lab, else PATH].
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Operators decide 93 (ethics) with `stockade-service review`; by default the lab
        /// auto-approves it (91 virus and 92 integrity always run).
        #[arg(long)]
        manual_review: bool,
        /// Do not start Prometheus even if it is installed.
        #[arg(long)]
        no_prometheus: bool,
        /// On failure, leave what was built in place for inspection.
        #[arg(long)]
        keep_on_failure: bool,
    },
    /// Stop every daemon and remove every namespace and link of the lab.
    Down,
    /// Hosts, addresses, daemons and the gateway's counters.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Run a command in a host's namespace (clients get STOCKADE_* set for service1).
    Exec {
        /// client1, client2, service1, service2, monitor, stock1, stock2, gateway.
        host: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
    /// The whole story: upload, review, push download, sharing, refusals, the gateway's drops.
    Demo,
    /// Show a host's (or a daemon's) logs.
    Logs {
        host: String,
        /// Follow (tail -F).
        #[arg(short, long)]
        follow: bool,
    },
    /// One bounded connection attempt (run it inside a host with `exec`); exit 0 if reached.
    Probe {
        #[arg(value_enum)]
        proto: Proto,
        addr: SocketAddr,
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
    /// Render the Vagrant VMs' files (configs, PKI, units, networkd) into DIR.
    VagrantFiles {
        /// Output directory (vagrant/generated for the repo's Vagrantfile).
        out: PathBuf,
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// Provision the daemons from these Debian packages (the folder `cargo deb` wrote them
        /// to) instead of copying binaries: the VMs then run the packages' own units.
        #[arg(long, value_name = "DIR")]
        debs: Option<PathBuf>,
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Pass `--dataplane` to the gateway unit.
        #[arg(long)]
        dataplane: Option<String>,
        #[arg(long)]
        manual_review: bool,
        /// The VMs' management link, a documentation /28 (e.g. 203.0.113.16/28); default: the
        /// first one that overlaps no address or route of this machine.
        #[arg(long)]
        mgmt_net: Option<String>,
        /// Vagrant's own management network for every VM but the stock VMs, chosen the same way.
        #[arg(long)]
        vagrant_net: Option<String>,
        /// Vagrant's own management network for the stock VMs alone, chosen the same way.
        #[arg(long)]
        vagrant_stock_net: Option<String>,
    },
    /// Render the Debian packages' systemd units (from lab/templates, with the packages' paths)
    /// into DIR (packaging/units in the repository).
    PackageUnits { dir: PathBuf },
    /// Check, before anything is created, that a rendered topology.json's networks still
    /// overlap no address or route of this machine.
    VagrantCheck { topology: PathBuf },
    /// The demo's story on the Vagrant VMs (vagrant/test.sh runs it): its clients on the client
    /// VMs, over SSH.
    VmDemo {
        /// The rendered generated/topology.json.
        #[arg(long)]
        topology: PathBuf,
        /// What `vagrant ssh-config` prints for every VM.
        #[arg(long)]
        ssh_config: PathBuf,
        /// Where this machine keeps the run's files (a new numbered directory under it).
        #[arg(long, default_value = "/var/tmp/stockade-vm-demo")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    stockade_logging::init(cli.log.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stockade-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    if let Cmd::Probe {
        proto,
        addr,
        timeout,
    } = &cli.cmd
    {
        let t = Duration::from_secs(*timeout);
        let o = match proto {
            Proto::Tcp => probe::tcp(*addr, t),
            Proto::Udp => probe::udp(*addr, t),
        };
        println!("{o}");
        return Ok(if o.reached() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        });
    }
    if let Cmd::VagrantFiles {
        out,
        bin_dir,
        debs,
        rules,
        dataplane,
        manual_review,
        mgmt_net,
        vagrant_net,
        vagrant_stock_net,
    } = &cli.cmd
    {
        let parse = |s: &Option<String>| s.as_deref().map(topology::Mgmt::parse_cidr).transpose();
        let networks = vagrant::VmNetworks::choose(
            parse(mgmt_net)?,
            parse(vagrant_net)?,
            parse(vagrant_stock_net)?,
        )?;
        let t = vagrant::generate(&vagrant::VagrantOptions {
            networks,
            out: out.clone(),
            bin_dir: bin_dir.clone(),
            debs: debs.clone(),
            rules: rules.clone(),
            dataplane: dataplane.clone(),
            auto_approve_ethics: !manual_review,
        })?;
        let bad = vagrant::check_no_bypass(&t);
        anyhow::ensure!(bad.is_empty(), "topology check failed: {bad:?}");
        println!(
            "wrote {} VMs' files to {} (management link {}, Vagrant's networks {} and {} for the stock VMs; then: cd vagrant && vagrant up)",
            t.vms.len(),
            out.display(),
            networks.mgmt,
            networks.vagrant,
            networks.vagrant_stock,
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Cmd::VmDemo {
        topology,
        ssh_config,
        dir,
    } = &cli.cmd
    {
        let local = stockade_lab::demo::next_run_dir(dir)?;
        let hosts = stockade_lab::vm_hosts::VmHosts::new(topology, ssh_config, &local.join("ssh"))?;
        // A fresh directory on the VMs too: earlier runs' homes hold keys already.
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let remote = PathBuf::from(format!("/var/lib/stockade-demo/{stamp}"));
        let mut out = std::io::stdout();
        stockade_lab::demo::run_on(&hosts, local, remote, &mut out).context("vm-demo")?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Cmd::PackageUnits { dir } = &cli.cmd {
        stockade_lab::package::write_units(dir)?;
        println!("wrote the packages' units to {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    if let Cmd::VagrantCheck { topology } = &cli.cmd {
        let n = vagrant::check_rendered(topology)?;
        println!(
            "networks free: management link {}, Vagrant's networks {} and {} (stock VMs)",
            n.mgmt, n.vagrant, n.vagrant_stock
        );
        return Ok(ExitCode::SUCCESS);
    }
    let lab = Lab::new(&cli.prefix, cli.state_dir.clone())?;
    match cli.cmd {
        Cmd::Up {
            dataplane,
            rules,
            bin_dir,
            manual_review,
            no_prometheus,
            keep_on_failure,
        } => {
            let opts = UpOptions {
                dataplane: match dataplane {
                    PlaneArg::Userspace => Dataplane::Userspace,
                    PlaneArg::Nftables => Dataplane::Nftables,
                },
                rules,
                bin_dir,
                auto_approve_ethics: !manual_review,
                prometheus: !no_prometheus,
                keep_on_failure,
            };
            let r = lab.up(&opts)?;
            let st = &r.state;
            let mgmt = st.mgmt()?;
            println!(
                "lab {:?} is up in {:.1}s ({} plane); state in {}",
                st.prefix,
                r.elapsed.as_secs_f32(),
                st.dataplane.as_str(),
                st.state_dir.display()
            );
            println!(
                "  gateway metrics  http://{}:{}/metrics",
                mgmt.gateway(),
                topology::GATEWAY_METRICS_PORT
            );
            if st.prometheus {
                let mon = mgmt
                    .of(&topology::MONITOR)
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                match r.targets_healthy_after {
                    Some(t) => println!(
                        "  Prometheus       http://{mon}:{} (every target up after {:.1}s)",
                        topology::PROMETHEUS_PORT,
                        t.as_secs_f32()
                    ),
                    None => {
                        println!(
                            "  Prometheus       http://{mon}:{} — not every target is up yet:",
                            topology::PROMETHEUS_PORT
                        );
                        for t in &r.unhealthy_targets {
                            println!("    {t}");
                        }
                    }
                }
            } else {
                println!("  Prometheus       not running (not installed, or --no-prometheus)");
            }
            println!(
                "  rules (live)     {}",
                st.state_dir.join("rules.yaml").display()
            );
            println!("next: stockade-lab demo · stockade-lab status · stockade-lab exec client1 -- stockade list · stockade-lab down");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down => {
            let r = lab.down()?;
            if r.stopped.is_empty() && r.removed.is_empty() && r.killed_stray.is_empty() {
                println!("lab {:?}: nothing to remove", cli.prefix);
            } else {
                println!(
                    "lab {:?} is down: stopped {}; removed {}{}",
                    cli.prefix,
                    if r.stopped.is_empty() {
                        "no daemon".to_string()
                    } else {
                        r.stopped.join(", ")
                    },
                    r.removed.join(", "),
                    if r.killed_stray.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; also ended processes {:?} left in its namespaces",
                            r.killed_stray
                        )
                    }
                );
                println!("logs stay in {}", lab.state_dir.join("logs").display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status { json } => {
            let s = lab.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Exec { host, cmd } => {
            let code = lab.exec(&host, &cmd)?;
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Cmd::Demo => {
            let mut out = std::io::stdout();
            stockade_lab::demo::run(&lab, &mut out).context("demo")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Logs { host, follow } => {
            let files = lab.log_files(&host)?;
            if follow {
                return Err(Lab::follow(&files).into());
            }
            for f in files {
                println!("==> {} <==", f.display());
                print!("{}", std::fs::read_to_string(&f).unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Probe { .. }
        | Cmd::VagrantFiles { .. }
        | Cmd::VagrantCheck { .. }
        | Cmd::PackageUnits { .. }
        | Cmd::VmDemo { .. } => {
            unreachable!("handled above")
        }
    }
}

fn print_status(s: &lab::Status) {
    println!(
        "lab {:?} ({:?}, {} plane) · state {} · management {} (this machine: {})",
        s.prefix,
        s.phase,
        s.dataplane.as_str(),
        s.state_dir.display(),
        s.mgmt_network,
        s.mgmt_root
    );
    println!(
        "{:<9} {:<15} {:<18} {:<12} daemons",
        "host", "address", "mac", "mgmt"
    );
    for h in &s.hosts {
        let daemons: Vec<String> = h
            .daemons
            .iter()
            .map(|d| match d.pid {
                Some(p) => format!("{} {} (pid {p})", d.name, d.state),
                None => format!("{} {}", d.name, d.state),
            })
            .collect();
        println!(
            "{:<9} {:<15} {:<18} {:<12} {}{}",
            h.name,
            h.address.as_deref().unwrap_or("(ports only)"),
            h.mac.as_deref().unwrap_or("-"),
            h.mgmt_address.as_deref().unwrap_or("-"),
            if daemons.is_empty() {
                "-".to_string()
            } else {
                daemons.join(", ")
            },
            if h.namespace_exists {
                ""
            } else {
                "  [namespace missing]"
            }
        );
    }
    let g = &s.gateway;
    match &g.error {
        Some(e) => println!("gateway: metrics unreadable ({e})"),
        None => {
            let drops: Vec<String> = g
                .drops
                .iter()
                .filter(|(_, v)| **v > 0.0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            println!(
                "gateway: forwarded {} · dropped {}{} · conntrack {}/{} · rules {} · reloads ok {} error {} · revoked {}",
                g.forwarded_packets,
                g.dropped_packets,
                if drops.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", drops.join(", "))
                },
                g.conntrack_entries,
                g.conntrack_limit,
                g.rules_loaded,
                g.reloads_ok,
                g.reloads_error,
                g.flows_revoked
            );
        }
    }
    if let Some(p) = &s.prometheus {
        match &p.error {
            Some(e) => println!("prometheus: {} ({e})", p.url),
            None => {
                println!(
                    "prometheus: {} · targets up {}/{}",
                    p.url,
                    p.targets_up,
                    p.targets.len()
                );
                for t in p.targets.iter().filter(|t| t.health != "up") {
                    println!("  {} {} {}: {}", t.job, t.instance, t.health, t.last_error);
                }
            }
        }
    }
    println!("rules (live copy): {}", s.rules.display());
}
