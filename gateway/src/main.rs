//! `stockade-gateway`: firewall 45 of JP H11-73391 as a two-port filtering bridge.
//! This file only parses arguments and wires the library together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use stockade_gateway::ctl::{self, CtlServer, Request, Response};
use stockade_gateway::dataplane::{DataPlane, Gateway, UserspacePlane};
use stockade_gateway::metrics::{self, Metrics};
use stockade_gateway::nft::{self, NftPlane};
use stockade_gateway::reload::{self, Reloader};
use stockade_gateway::{check, explain};
use tokio::sync::watch;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "stockade-gateway",
    version,
    about = "Stockade's packet-filter gateway (firewall 45 of JP H11-73391)"
)]
struct Cli {
    #[command(flatten)]
    log: stockade_logging::LogArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway: bridge OUTSIDE and INSIDE, enforcing the rules file.
    Run(RunArgs),
    /// Validate and lint a rules file (exit 0: clean, see --help of the rules docs for others).
    Check {
        /// The rules file.
        file: PathBuf,
        /// Exit 0 when the file loads, even with lints (they are still printed): what a unit's
        /// ExecStartPre runs, so a lint never keeps the gateway down but an error does.
        #[arg(long)]
        allow_lints: bool,
    },
    /// Show which rule (or drop reason) decides a given packet.
    Explain(ExplainArgs),
    /// Print the nftables JSON batch that `run --dataplane nftables` applies for FILE.
    Compile(CompileArgs),
    /// Inspect or flush the running gateway's connection table.
    Conntrack {
        #[command(subcommand)]
        op: ConntrackOp,
    },
}

#[derive(Args)]
struct RunArgs {
    /// The rules file (YAML); reloaded on SIGHUP and when it changes.
    #[arg(long)]
    rules: PathBuf,
    /// The outside port (clients, service servers).
    #[arg(long)]
    outside: String,
    /// The inside port (stock servers).
    #[arg(long)]
    inside: String,
    /// Management address for GET /metrics (never a port's address). Default: the rules
    /// file's `settings.metrics_listen`, else 127.0.0.1:9108.
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Root-only control socket for `conntrack list|flush`.
    #[arg(long, default_value = ctl::DEFAULT_PATH)]
    ctl: PathBuf,
    /// Do not prepare the ports (disable_ipv6, promiscuous, offloads off); for ports already
    /// prepared by provisioning.
    #[arg(long)]
    no_port_setup: bool,
    /// Frame I/O of the userspace plane: `ring` (PACKET_MMAP), `batched` (recvmmsg/sendmmsg)
    /// or `pnet`.
    #[arg(long, default_value = "ring")]
    io: stockade_gateway::dataplane::Io,
    /// Which data plane enforces the rules: `userspace` (this process forwards every frame) or
    /// `nftables` (the rules compiled into the kernel, the ports joined in a bridge).
    #[arg(long, value_enum, default_value = "userspace")]
    dataplane: PlaneKind,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum PlaneKind {
    Userspace,
    Nftables,
}

#[derive(Args)]
struct CompileArgs {
    /// The rules file.
    file: PathBuf,
    /// Load the batch into a scratch network namespace and print `nft list ruleset` instead.
    #[arg(long)]
    text: bool,
    /// Name of the outside port in the generated ruleset.
    #[arg(long, default_value = "outside")]
    outside: String,
    /// Name of the inside port in the generated ruleset.
    #[arg(long, default_value = "inside")]
    inside: String,
}

#[derive(Args)]
struct ExplainArgs {
    /// The rules file.
    #[arg(long)]
    rules: PathBuf,
    /// Port the packet arrives on: outside or inside.
    #[arg(long)]
    iface: String,
    #[arg(long)]
    src: std::net::IpAddr,
    #[arg(long)]
    dst: std::net::IpAddr,
    /// tcp, udp, icmp, icmpv6 or a protocol number.
    #[arg(long)]
    proto: String,
    #[arg(long)]
    sport: Option<u16>,
    #[arg(long)]
    dport: Option<u16>,
    /// new (default) or established.
    #[arg(long)]
    state: Option<String>,
}

#[derive(Subcommand)]
enum ConntrackOp {
    /// List tracked flows (one JSON object per line).
    List {
        #[arg(long, default_value = ctl::DEFAULT_PATH)]
        ctl: PathBuf,
    },
    /// Remove tracked flows, all of them or those whose source is in CIDR.
    Flush {
        #[arg(long)]
        src: Option<stockade_gateway::rules::Cidr>,
        #[arg(long, default_value = ctl::DEFAULT_PATH)]
        ctl: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log.log_format;
    let result = match cli.cmd {
        Cmd::Run(args) => {
            stockade_logging::init(log_format);
            run(args).map(|()| ExitCode::SUCCESS)
        }
        Cmd::Check { file, allow_lints } => {
            let report = check::check_file(&file);
            print!("{report}");
            let code = match report.exit_code() {
                1 if allow_lints => 0,
                c => c,
            };
            Ok(ExitCode::from(code as u8))
        }
        Cmd::Explain(args) => explain_cmd(args),
        Cmd::Compile(args) => compile_cmd(args),
        Cmd::Conntrack { op } => conntrack(op),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stockade-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: RunArgs) -> Result<()> {
    let (_, rules) = reload::load_checked(&args.rules)
        .with_context(|| format!("rules file {}", args.rules.display()))?;
    let metrics_addr = args
        .metrics
        .or(rules.settings().metrics_listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9108)));
    let metrics = Arc::new(Metrics::new()?);
    let gateway = Arc::new(Gateway::new(rules, metrics.clone()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("gw-mgmt")
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(metrics_addr)
            .await
            .with_context(|| format!("metrics address {metrics_addr}"))?;
        let ctl_server = CtlServer::bind(&args.ctl)?;
        let mut sigterm =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        // Install the SIGHUP handler now (tokio keeps it for the process lifetime), so a
        // SIGHUP that arrives before the reload task listens cannot kill the gateway.
        drop(tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        )?);

        // A kernel plane reports its own table size and counters (read before each scrape);
        // the userspace table's housekeeping does not apply to it.
        let mut kernel_refresh: Option<metrics::Refresh> = None;
        // The control socket answers from the table the plane keeps.
        let mut flow_table: Arc<dyn ctl::FlowTable> = gateway.clone();
        let mut plane: Box<dyn DataPlane> = match args.dataplane {
            PlaneKind::Userspace => {
                let mut plane = UserspacePlane::new(&args.outside, &args.inside).with_io(args.io);
                if args.no_port_setup {
                    plane = plane.without_port_setup();
                }
                Box::new(plane)
            }
            PlaneKind::Nftables => {
                let mut plane = NftPlane::new(&args.outside, &args.inside, &args.rules);
                if args.no_port_setup {
                    plane = plane.without_port_setup();
                }
                kernel_refresh = Some(plane.metrics_refresher());
                flow_table = plane.flow_table();
                Box::new(plane)
            }
        };
        plane.start(gateway.clone())?;
        let plane = Arc::new(std::sync::Mutex::new(plane));

        let (stop_tx, stop_rx) = watch::channel(false);
        let on_swap: reload::OnSwap = {
            let plane = plane.clone();
            Box::new(move |file, rules| {
                let mut p = plane.lock().unwrap_or_else(|e| e.into_inner());
                p.rules_changed(file, rules).map_err(|e| e.to_string())
            })
        };
        let reloader = Arc::new(Reloader::new(&args.rules, gateway.clone(), Some(on_swap)));
        let reload_task = tokio::spawn(reloader.run(stop_rx.clone()));
        let refresh: metrics::Refresh = match &kernel_refresh {
            Some(r) => r.clone(),
            None => {
                let gw = gateway.clone();
                Arc::new(move || {
                    gw.housekeeping(Instant::now());
                })
            }
        };
        let mut metrics_stop = stop_rx.clone();
        let metrics_task = tokio::spawn(metrics::serve(
            listener,
            metrics.clone(),
            refresh,
            async move {
                let _ = metrics_stop.changed().await;
            },
        ));
        let ctl_task = tokio::spawn(ctl_server.serve(flow_table));
        info!(metrics = %metrics_addr, ctl = %args.ctl.display(), "stockade-gateway running");
        // Ready only now: the rules are enforced by the plane, metrics and ctl are bound.
        stockade_logging::ready::listening("forwarding under the rules");

        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let failure = loop {
            tokio::select! {
                _ = sigterm.recv() => { info!("SIGTERM: shutting down"); break None; }
                _ = sigint.recv() => { info!("SIGINT: shutting down"); break None; }
                _ = tick.tick() => {
                    if kernel_refresh.is_none() {
                        gateway.housekeeping(Instant::now());
                    }
                    if !gateway.is_open() {
                        break Some("a receive loop failed; forwarding stopped");
                    }
                }
            }
        };
        stockade_logging::ready::stopping();
        // Stop forwarding first (the plane closes the gate before anything else), then the
        // management side.
        let stopped = tokio::task::spawn_blocking({
            let plane = plane.clone();
            move || plane.lock().unwrap_or_else(|e| e.into_inner()).stop()
        })
        .await?;
        let _ = stop_tx.send(true);
        ctl_task.abort();
        let _ = ctl_task.await; // drops the server, which removes the socket file
        let _ = tokio::time::timeout(Duration::from_secs(2), metrics_task).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), reload_task).await;
        if let Err(e) = stopped {
            error!(error = %e, "data plane stop");
        }
        if let Some(why) = failure {
            bail!(why);
        }
        info!("stopped");
        Ok(())
    })
}

fn explain_cmd(a: ExplainArgs) -> Result<ExitCode> {
    let file = stockade_gateway::rules::load_file(&a.rules)?;
    let rules = stockade_gateway::rules::Ruleset::compile(&file)?;
    let query = explain::ExplainQuery {
        iface: a
            .iface
            .parse()
            .map_err(|e| anyhow::anyhow!("--iface: {e}"))?,
        src: a.src,
        dst: a.dst,
        proto: a
            .proto
            .parse()
            .map_err(|e| anyhow::anyhow!("--proto: {e}"))?,
        sport: a.sport,
        dport: a.dport,
        state: match a.state.as_deref() {
            None => Default::default(),
            Some(s) => s.parse().map_err(|e| anyhow::anyhow!("--state: {e}"))?,
        },
    };
    let explanation = explain::explain(&rules, query);
    print!("{explanation}");
    Ok(ExitCode::SUCCESS)
}

fn compile_cmd(a: CompileArgs) -> Result<ExitCode> {
    let ports = nft::PortNames {
        outside: a.outside,
        inside: a.inside,
    };
    let compiled = nft::compile_file(&a.file, &ports)?;
    let batch = compiled.full_batch();
    if a.text {
        print!("{}", nft::text_listing(&batch)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&batch)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn conntrack(op: ConntrackOp) -> Result<ExitCode> {
    let timeout = Duration::from_secs(5);
    match op {
        ConntrackOp::List { ctl } => match ctl::request(&ctl, &Request::List, timeout)? {
            Response::Flows(flows) => {
                for f in flows {
                    println!("{f}");
                }
            }
            other => bail!("unexpected response {other:?}"),
        },
        ConntrackOp::Flush { src, ctl } => {
            match ctl::request(&ctl, &Request::Flush { src }, timeout)? {
                Response::Flushed(n) => println!("flushed {n} flows"),
                other => bail!("unexpected response {other:?}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
