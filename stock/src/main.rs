//! `stockade-stock`: the stock server daemon (patent JP H11-73391, stock server 50).

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use stockade_stock::{
    api, config::StockConfig, database_key::Accounts, metrics::Metrics, store::FsStore, Stock,
};

#[derive(Parser)]
#[command(
    name = "stockade-stock",
    version,
    about = "Stockade stock server: per-account encryption, durable object store, one-way push to clients"
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
        /// YAML config file.
        #[arg(long, short)]
        config: PathBuf,
        /// Write the process id here once listening.
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
    /// Validate a config file and exit.
    CheckConfig { config: PathBuf },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    stockade_logging::init(cli.log.log_format);
    match cli.cmd {
        Cmd::CheckConfig { config } => {
            StockConfig::load(&config)?;
            println!("{}: ok", config.display());
            Ok(())
        }
        Cmd::Run { config, pid_file } => run(config, pid_file).await,
    }
}

async fn run(config_path: PathBuf, pid_file: Option<PathBuf>) -> anyhow::Result<()> {
    let config = StockConfig::load(&config_path)?;
    let accounts = Accounts::open(&config.data_dir).context("opening the account database")?;
    let store =
        FsStore::new(&config.data_dir.join("objects")).context("opening the object store")?;
    let removed = store
        .cleanup(&accounts.all_object_ids()?)
        .context("cleaning up after a crash")?;
    if removed > 0 {
        tracing::warn!(
            removed,
            "removed unreferenced or partial objects left by an earlier crash"
        );
    }
    let signing = stockade_proto::server_key::ServerSigningKey::load_or_create(
        &config.data_dir.join("push.key"),
    )?;
    let metrics = Metrics::new();
    metrics.accounts.set(accounts.account_count()? as i64);
    let api_tls = stockade_proto::tls::server_config(
        &config.tls.cert,
        &config.tls.key,
        Some(&config.tls.service_client_ca),
    )?;
    let metrics_tls = stockade_proto::tls::server_config(
        &config.tls.cert,
        &config.tls.key,
        Some(&config.tls.monitor_ca),
    )?;
    let api_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .with_context(|| format!("binding {}", config.metrics_listen))?;
    let stock = Arc::new(Stock {
        push_slots: Arc::new(tokio::sync::Semaphore::new(config.push_concurrency)),
        push_admission: stockade_proto::fairshare::Caps::new(
            config.push_queue_max,
            config.push_per_destination,
        ),
        config,
        accounts,
        store,
        signing,
        metrics: metrics.clone(),
    });
    let shutdown = stockade_proto::serve::shutdown_signal();
    tracing::info!(api = %stock.config.listen, metrics = %stock.config.metrics_listen, name = %stock.config.name, "stock server listening");
    if let Some(p) = &pid_file {
        stockade_proto::fsutil::write_atomic(
            p,
            format!("{}\n", std::process::id()).as_bytes(),
            0o644,
        )?;
    }
    let m = tokio::spawn(stockade_proto::serve::serve_tls(
        metrics_listener,
        metrics_tls,
        stockade_proto::serve::metrics_router(metrics.registry.clone()),
        shutdown.clone(),
        stockade_proto::serve::ConnLimits::default(),
    ));
    stockade_logging::ready::listening("serving the service servers");
    // Its only peers are the service servers (mutual TLS): no cap per source below the total.
    let limits = stockade_proto::serve::ConnLimits {
        max_connections_per_source: stockade_proto::serve::ConnLimits::default().max_connections,
        ..Default::default()
    };
    stockade_proto::serve::serve_tls(api_listener, api_tls, api::router(stock), shutdown, limits)
        .await;
    stockade_logging::ready::stopping();
    let _ = m.await;
    if let Some(p) = &pid_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
