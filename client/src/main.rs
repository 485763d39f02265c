//! `stockade`: the client CLI. Parsing and exit codes here; the work is in the library.

use clap::Parser;
use std::process::ExitCode;
use stockade_client::cli::Cli;
use stockade_client::ClientError;
use zeroize::Zeroizing;

fn main() -> ExitCode {
    let cli = Cli::parse();
    stockade_logging::init(cli.log.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<ClientError>() {
            // Refusals and timeouts carry their own words ("refused: <code>: <detail>").
            Some(ce @ (ClientError::Refused(_) | ClientError::TimedOut(_))) => {
                eprintln!("{ce}");
                ExitCode::from(ce.exit_code())
            }
            Some(ce) => {
                eprintln!("error: {ce}");
                ExitCode::from(ce.exit_code())
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Read here, not as a flag: a passphrase on the command line would show in `ps`.
    let passphrase = std::env::var("STOCKADE_PASSPHRASE")
        .ok()
        .map(Zeroizing::new);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(stockade_client::app::run(cli, passphrase))?;
    Ok(())
}
