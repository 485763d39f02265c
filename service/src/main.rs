//! `stockade-service`: the service server daemon (patent JP H11-73391, service server 40) and
//! the operator's review commands.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use stockade_service::admin::{self, AdminRequest};
use stockade_service::config::ServiceConfig;
use stockade_service::db::{Db, Stage};
use stockade_service::{api, metrics::Metrics, review, stock_client::StockClients, Service};

#[derive(Parser)]
#[command(
    name = "stockade-service",
    version,
    about = "Stockade service server: public upload API, quarantine and review (Fig. 5), server passwords"
)]
struct Cli {
    #[command(flatten)]
    log: stockade_logging::LogArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon until SIGTERM/SIGINT.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Write the process id here once listening.
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Validate a config file and exit.
    CheckConfig { config: PathBuf },
    /// The operator's review desk (93), against the running service's admin socket.
    Review {
        /// The service config (to find the admin socket).
        #[arg(long, short, conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The admin socket path.
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        action: ReviewCmd,
    },
    /// Print an argon2id hash of an operator password (read from standard input, one line) for
    /// the `console.operators[].password_hash` setting.
    OperatorHash,
    /// Templates for composition (claim 7): only the operator adds them.
    Template {
        /// The service config (to find the admin socket).
        #[arg(long, short, conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The admin socket path.
        #[arg(long)]
        socket: Option<PathBuf>,
        #[command(subcommand)]
        action: TemplateCmd,
    },
    /// The review desk's audit trail.
    Audit {
        #[command(subcommand)]
        action: AuditCmd,
    },
    /// Generate local certificates for a lab or demo (CA, service, stock, service-client, monitor).
    Pki {
        /// Output directory.
        dir: PathBuf,
        /// Names (DNS or IP) for the service certificate; repeat.
        #[arg(long = "service-name", required = true)]
        service_names: Vec<String>,
        /// Names (DNS or IP) for the stock certificate; repeat.
        #[arg(long = "stock-name", required = true)]
        stock_names: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain; names the first altered, removed or inserted line.
    Verify { file: PathBuf },
    /// Print the entries (after verifying the chain).
    Show {
        file: PathBuf,
        /// Only entries at or after this time: RFC 3339 (2024-05-01T12:00:00Z), a date
        /// (2024-05-01) or seconds since the Unix epoch.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TemplateCmd {
    /// Add a template: reviewed (91 virus, 92 integrity), stored full-size on a stock server
    /// under the template account, its reduced image kept by the service.
    Add {
        /// The template image.
        file: PathBuf,
        /// Its unique name.
        #[arg(long)]
        name: String,
        /// Where the user image goes, in template pixels (upright): x,y,w,h.
        #[arg(long, value_name = "X,Y,W,H")]
        slot: String,
        /// A grayscale mask stretched over the slot: white = the user image shows.
        #[arg(long, value_name = "FILE")]
        mask: Option<PathBuf>,
        /// The stock server to hold it (Fig. 12) [default: chosen by name].
        #[arg(long, value_name = "NAME")]
        stock_server: Option<String>,
    },
    /// The templates and their slots.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ReviewCmd {
    /// Uploads in quarantine (74).
    List {
        /// Include finished uploads.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// One upload with each check's result.
    Show { id: String },
    /// 93 yes: approve for storage.
    Approve {
        id: String,
        #[arg(long, default_value = "operator")]
        operator: String,
    },
    /// 93 no: refuse; the reason is shown to the client (77).
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long, default_value = "operator")]
        operator: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    stockade_logging::init(cli.log.log_format);
    match cli.cmd {
        Cmd::CheckConfig { config } => {
            ServiceConfig::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Cmd::Run { config, pid_file } => run(config, pid_file).await,
        Cmd::OperatorHash => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let pw = zeroize::Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_string());
            println!("{}", stockade_service::console::auth::hash_password(&pw)?);
            Ok(())
        }
        Cmd::Audit { action } => audit_cmd(action),
        Cmd::Pki {
            dir,
            service_names,
            stock_names,
        } => {
            stockade_proto::pki::generate(&dir, &service_names, &stock_names)?;
            println!("certificates written to {}", dir.display());
            Ok(())
        }
        Cmd::Review {
            config,
            socket,
            action,
        } => {
            let socket = match (config, socket) {
                (_, Some(s)) => s,
                (Some(c), None) => ServiceConfig::load(&c)?.admin_socket,
                (None, None) => bail!("give --config FILE or --socket PATH"),
            };
            review_cmd(&socket, action).await
        }
        Cmd::Template {
            config,
            socket,
            action,
        } => {
            let socket = match (config, socket) {
                (_, Some(s)) => s,
                (Some(c), None) => ServiceConfig::load(&c)?.admin_socket,
                (None, None) => bail!("give --config FILE or --socket PATH"),
            };
            template_cmd(&socket, action).await
        }
    }
}

async fn template_cmd(socket: &std::path::Path, action: TemplateCmd) -> anyhow::Result<()> {
    let abs = |p: PathBuf| -> anyhow::Result<PathBuf> {
        std::fs::canonicalize(&p).with_context(|| format!("{}", p.display()))
    };
    let (req, json) = match action {
        TemplateCmd::Add {
            file,
            name,
            slot,
            mask,
            stock_server,
        } => (
            AdminRequest::TemplateAdd(stockade_service::templates::AddTemplate {
                file: abs(file)?,
                name,
                slot,
                mask: mask.map(abs).transpose()?,
                stock_server,
            }),
            false,
        ),
        TemplateCmd::List { json } => (AdminRequest::TemplateList, json),
    };
    let added = matches!(req, AdminRequest::TemplateAdd(_));
    let resp = admin::call(socket, &req).await?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_else(|| "refused".into()));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&resp.templates)?);
        return Ok(());
    }
    for t in &resp.templates {
        println!(
            "{}{}  {}x{}  slot {},{},{},{}  mask {}  on {}",
            if added { "added template " } else { "" },
            t.name,
            t.width,
            t.height,
            t.slot.x,
            t.slot.y,
            t.slot.w,
            t.slot.h,
            t.mask
                .as_ref()
                .map(|m| format!("{}x{}", m.width, m.height))
                .unwrap_or_else(|| "none".into()),
            t.stock_server
        );
    }
    if resp.templates.is_empty() {
        println!("(no templates)");
    }
    Ok(())
}

async fn review_cmd(socket: &std::path::Path, action: ReviewCmd) -> anyhow::Result<()> {
    let (req, json) = match action {
        ReviewCmd::List { all, json } => (AdminRequest::List { all }, json),
        ReviewCmd::Show { id } => (AdminRequest::Show { id }, false),
        ReviewCmd::Approve { id, operator } => (AdminRequest::Approve { id, operator }, false),
        ReviewCmd::Reject {
            id,
            reason,
            operator,
        } => (
            AdminRequest::Reject {
                id,
                reason,
                operator,
            },
            false,
        ),
    };
    let show = matches!(req, AdminRequest::Show { .. });
    let resp = admin::call(socket, &req).await?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_else(|| "refused".into()));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&resp.uploads)?);
        return Ok(());
    }
    for u in &resp.uploads {
        println!(
            "{}  {:<24} {:>10} B  client {}  {}",
            u.id,
            u.file_name,
            u.size,
            &u.client_id[..12.min(u.client_id.len())],
            Stage::describe(&u.stage)
        );
        if show {
            for (check, result) in &u.checks {
                println!("    {check}: {result}");
            }
            println!("    sha256: {}", u.sha256);
            if let Some(op) = &u.operator {
                println!("    operator: {op}");
            }
        }
    }
    if resp.uploads.is_empty() {
        println!("(no uploads)");
    }
    Ok(())
}

/// `--since`: RFC 3339, a date, or epoch seconds.
fn parse_since(s: &str) -> anyhow::Result<u64> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let bad = || {
        anyhow::anyhow!("--since {s:?}: give RFC 3339 (2024-05-01T12:00:00Z), a date (2024-05-01) or epoch seconds")
    };
    let (date, time) = s.split_once('T').unwrap_or((s, "00:00:00Z"));
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let t: Vec<i64> = time
        .trim_end_matches('Z')
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let ([y, m, dd], [hh, mm, ss]) = (d.as_slice(), t.as_slice()) else {
        return Err(bad());
    };
    // Days from civil (the inverse of audit::rfc3339).
    let y2 = if *m <= 2 { y - 1 } else { *y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).map_err(|_| bad())
}

fn audit_cmd(action: AuditCmd) -> anyhow::Result<()> {
    use stockade_service::audit;
    match action {
        AuditCmd::Verify { file } => {
            let lines = audit::verify(&file)
                .with_context(|| format!("{}: the audit trail does not verify", file.display()))?;
            let head = lines.last().map_or(audit::GENESIS, |l| l.hash.as_str());
            println!(
                "{}: ok, {} entries, head {head}",
                file.display(),
                lines.len()
            );
            Ok(())
        }
        AuditCmd::Show { file, since, json } => {
            let since = since.as_deref().map(parse_since).transpose()?.unwrap_or(0);
            let lines = audit::verify(&file)
                .with_context(|| format!("{}: the audit trail does not verify", file.display()))?;
            for l in lines.iter().filter(|l| l.entry.ts >= since) {
                let e = &l.entry;
                if json {
                    println!("{}", serde_json::to_string(e)?);
                    continue;
                }
                println!(
                    "#{} {} {:<8} {} {} account {} {}{}",
                    e.seq,
                    e.time,
                    e.event,
                    e.upload.as_deref().unwrap_or("-"),
                    e.file_name.as_deref().unwrap_or("-"),
                    &e.account[..12.min(e.account.len())],
                    e.operator
                        .as_deref()
                        .map(|o| format!("by {o} "))
                        .unwrap_or_default(),
                    e.reason.as_deref().unwrap_or("")
                );
                for (c, r) in &e.checks {
                    println!("    {c}: {r}");
                }
            }
            Ok(())
        }
    }
}

async fn run(config_path: PathBuf, pid_file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = ServiceConfig::load(&config_path)?;
    std::fs::create_dir_all(config.data_dir.join("quarantine"))
        .context("creating the quarantine directory")?;
    let db = Db::open(&config.data_dir.join("service.redb"))?;
    let pepper_path = config.data_dir.join("pepper.key");
    if !pepper_path.exists() {
        let mut p = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut p);
        stockade_proto::fsutil::write_atomic(&pepper_path, &p, 0o600)?;
    }
    let pepper = zeroize::Zeroizing::new(
        std::fs::read(&pepper_path).context("reading the password pepper")?,
    );
    let upload_key =
        stockade_proto::envelope::ServiceKey::load_or_create(&config.data_dir.join("upload.key"))?;
    let stock = StockClients::new(
        config.stock_servers.clone(),
        &config.tls.stock_ca,
        &config.tls.client_cert,
        &config.tls.client_key,
    )?;
    let tls = stockade_proto::tls::server_config(&config.tls.cert, &config.tls.key, None)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("binding {}", config.metrics_listen))?;
    let metrics = Metrics::new();
    let shutdown = stockade_proto::serve::shutdown_signal();
    let review_slots = tokio::sync::Semaphore::new(config.limits.review_concurrency);
    let audit_path = config
        .audit_log
        .clone()
        .unwrap_or_else(|| config.data_dir.join("audit.jsonl"));
    let audit = stockade_service::audit::AuditLog::open(&audit_path)
        .context("opening the audit trail (verify it with `stockade-service audit verify`)")?;
    let (entries, head) = audit.head();
    tracing::info!(path = %audit_path.display(), entries, %head, "audit trail opened");
    let console = match &config.console {
        Some(k) => {
            let tls = stockade_proto::tls::server_config(
                k.cert.as_ref().unwrap_or(&config.tls.cert),
                k.key.as_ref().unwrap_or(&config.tls.key),
                None,
            )?;
            let l = tokio::net::TcpListener::bind(k.listen)
                .await
                .with_context(|| format!("binding the console on {}", k.listen))?;
            Some((l, tls, k.clone()))
        }
        None => None,
    };
    let fair_share = config.fair_share.clone();
    let svc = Arc::new(Service {
        config,
        db,
        pepper,
        upload_key,
        stock,
        metrics: metrics.clone(),
        review_slots,
        shutdown: shutdown.clone(),
        audit,
        fair: stockade_service::fair_share::FairShares::new(&fair_share),
    });
    recover(&svc)?;
    // clamd health for the metric; the review itself never trusts this and fails closed.
    let s2 = svc.clone();
    tokio::spawn(async move {
        let addr = review::virus::ClamdAddr::parse(&s2.config.clamd.address);
        loop {
            let up = review::virus::ping(&addr, std::time::Duration::from_secs(3)).await;
            s2.metrics.clamd_up.set(i64::from(up));
            let _ = s2.db.expire_tickets(stockade_service::now_secs());
            let _ = s2.db.expire_nonces(stockade_service::now_secs());
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    });
    let s3 = svc.clone();
    let admin_path = svc.config.admin_socket.clone();
    let admin_task = tokio::spawn(async move {
        if let Err(e) = admin::serve(s3, &admin_path).await {
            tracing::error!(error = %e, "admin socket failed");
        }
    });
    let mut stop = shutdown.clone();
    let metrics_task = tokio::spawn(async move {
        let app = stockade_proto::serve::metrics_router(metrics.registry.clone());
        let _ = axum::serve(metrics_listener, app)
            .with_graceful_shutdown(async move { stockade_proto::serve::stopped(&mut stop).await })
            .await;
    });
    let console = match console {
        Some((l, tls, cfg)) => {
            let router = stockade_service::console::router(svc.clone(), cfg.clone())
                .context("the console's lockout records")?;
            Some((l, tls, cfg, router))
        }
        None => None,
    };
    let console_task = console.map(|(l, tls, cfg, router)| {
        tracing::info!(console = %cfg.listen, "operator console listening (HTTPS)");
        tokio::spawn(stockade_proto::serve::serve_tls(
            l,
            tls,
            router,
            shutdown.clone(),
            stockade_proto::serve::ConnLimits::default(),
        ))
    });
    tracing::info!(api = %svc.config.listen, metrics = %svc.config.metrics_listen, admin = %svc.config.admin_socket.display(), "service listening");
    if let Some(p) = &pid_file {
        stockade_proto::fsutil::write_atomic(
            p,
            format!("{}\n", std::process::id()).as_bytes(),
            0o644,
        )?;
    }
    stockade_logging::ready::listening("serving the upload API");
    let limits = svc.config.fair_share.conn_limits();
    stockade_proto::serve::serve_tls(listener, tls, api::router(svc.clone()), shutdown, limits)
        .await;
    stockade_logging::ready::stopping();
    let _ = metrics_task.await;
    let _ = admin_task.await;
    if let Some(t) = console_task {
        let _ = t.await;
    }
    if let Some(p) = &pid_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// After a restart: resume reviews and deliveries, erase what a crash left behind.
fn recover(svc: &Arc<Service>) -> anyhow::Result<()> {
    let uploads = svc.db.uploads()?;
    let known = uploads.iter().map(|u| u.id.clone()).collect();
    let swept = svc
        .sweep_quarantine(&known)
        .with_context(|| format!("sweeping {}", svc.quarantine_dir().display()))?;
    if swept > 0 {
        tracing::warn!(
            files = swept,
            "removed quarantine files no upload record names"
        );
    }
    // What a crash of `template add` left in its review directory.
    let dir = stockade_service::templates::review_dir(svc);
    stockade_service::templates::sweep_review_dir(&dir)
        .with_context(|| format!("sweeping {}", dir.display()))?;
    for u in uploads {
        // Uploads still in quarantine hold their fair-share places again (issue 16, defect 3).
        if matches!(
            u.stage,
            Stage::Checking | Stage::AwaitingOperator | Stage::Approved { .. }
        ) {
            let source = u.source.as_deref().and_then(|s| s.parse().ok());
            svc.fair.restore(&u.id, source, u.password_id.is_none());
        }
        match u.stage {
            Stage::Checking => {
                tokio::spawn(review::run_checks(svc.clone(), u.id));
            }
            Stage::Approved { .. } => {
                tokio::spawn(review::deliver(svc.clone(), u.id));
            }
            Stage::Refused { .. } | Stage::Stored { .. } => svc.erase_quarantined(&u.id),
            Stage::AwaitingOperator => {}
        }
    }
    svc.refresh_quarantine_gauge();
    Ok(())
}
