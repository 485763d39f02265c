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
    stockade_proto::init_logging();
    match Cli::parse().cmd {
        Cmd::CheckConfig { config } => {
            ServiceConfig::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Cmd::Run { config, pid_file } => run(config, pid_file).await,
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
    }
}

fn stage_text(s: &Stage) -> String {
    match s {
        Stage::Checking => "checking (91, 92)".into(),
        Stage::AwaitingOperator => "awaiting review (93)".into(),
        Stage::Approved { note } => format!("approved: {note}"),
        Stage::Refused { refusal } => format!("refused: {refusal}"),
        Stage::Stored { stock_server, .. } => format!("stored on {stock_server}"),
    }
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
            stage_text(&u.stage)
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
    let svc = Arc::new(Service {
        config,
        db,
        pepper,
        upload_key,
        stock,
        metrics: metrics.clone(),
        review_slots,
        owner_nonces: Default::default(),
        shutdown: shutdown.clone(),
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
    tracing::info!(api = %svc.config.listen, metrics = %svc.config.metrics_listen, admin = %svc.config.admin_socket.display(), "service listening");
    if let Some(p) = &pid_file {
        stockade_proto::fsutil::write_atomic(
            p,
            format!("{}\n", std::process::id()).as_bytes(),
            0o644,
        )?;
    }
    stockade_proto::serve::serve_tls(listener, tls, api::router(svc.clone()), shutdown).await;
    let _ = metrics_task.await;
    let _ = admin_task.await;
    if let Some(p) = &pid_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// After a restart: resume reviews and deliveries, erase what a crash left behind.
fn recover(svc: &Arc<Service>) -> anyhow::Result<()> {
    for e in std::fs::read_dir(svc.quarantine_dir())? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with(".part-") {
            std::fs::remove_file(e.path())?;
        }
    }
    for u in svc.db.uploads()? {
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
