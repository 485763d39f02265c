//! One logging setup for every Stockade binary (daemons, client, lab).
//!
//! Logs go to stderr, which systemd hands to journald and the lab redirects into files. So:
//! - ANSI colour only when stderr is a terminal and `NO_COLOR` is unset or empty
//!   (<https://no-color.org>); never escape codes in a file or the journal;
//! - `--log-format json`: one JSON object per line (timestamp, level, target, fields), for log
//!   shippers;
//! - `RUST_LOG` filters as usual (default `info`).

pub mod ready;

use std::ffi::OsStr;
use std::io::IsTerminal;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour only on a terminal.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The `--log-format` option, flattened into every binary's command line.
#[derive(clap::Args, Clone, Copy, Debug, Default)]
pub struct LogArgs {
    /// Log format on stderr: text (colour only on a terminal) or json (one object per line).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Whether text logs may carry ANSI colour: only on a terminal, and not when `NO_COLOR` is set
/// to a non-empty value.
pub fn use_colour(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the process's `tracing` subscriber. A second call (tests) keeps the first one.
pub fn init(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A subscriber may already be installed (tests that start several components in one
    // process); the first one stays.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(use_colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some(OsStr::new(""))));
        assert!(!use_colour(true, Some(OsStr::new("1"))));
        assert!(!use_colour(false, None));
        assert!(!use_colour(false, Some(OsStr::new(""))));
    }

    #[test]
    fn log_format_parses_from_the_command_line() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            log: LogArgs,
        }
        assert_eq!(
            Cli::try_parse_from(["x"]).unwrap().log.log_format,
            LogFormat::Text
        );
        assert_eq!(
            Cli::try_parse_from(["x", "--log-format", "json"])
                .unwrap()
                .log
                .log_format,
            LogFormat::Json
        );
        let err = Cli::try_parse_from(["x", "--log-format", "xml"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--log-format"), "{err}");
    }
}
