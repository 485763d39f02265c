//! The command line. The end-to-end tests drive the binary through exactly these names.

use clap::{Args, Parser, Subcommand};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "stockade",
    version,
    about = "Stockade client: register, upload for review, receive pushed downloads, share an account",
    after_help = "Exit codes: 0 ok, 1 error, 3 refused by a server or a peer, 4 timed out waiting.\n\
                  The key passphrase comes from --passphrase-file or the STOCKADE_PASSPHRASE variable."
)]
pub struct Cli {
    #[command(flatten)]
    pub log: stockade_logging::LogArgs,
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Writes `shell`'s completion script for the whole command line.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "stockade", out);
}

/// Writes the manual page, stockade(1), in roff.
pub fn man(out: &mut dyn std::io::Write) -> std::io::Result<()> {
    clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(out)
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The client's home directory (state and, by default, the key) [default: ~/.stockade]
    #[arg(long, global = true, env = "STOCKADE_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// The service server's base URL, e.g. https://198.51.100.110:8443
    #[arg(long, global = true, env = "STOCKADE_SERVICE", value_name = "URL")]
    pub service: Option<String>,
    /// The CA certificate (PEM) the service's certificate is pinned to
    #[arg(long, global = true, env = "STOCKADE_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Source address for connections to the service, and the address the push listener binds
    #[arg(long, global = true, env = "STOCKADE_BIND", value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// The encrypted private key; any path, e.g. on removable media [default: HOME/client.key]
    #[arg(long, global = true, env = "STOCKADE_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// File holding the key passphrase (otherwise the STOCKADE_PASSPHRASE variable)
    #[arg(
        long,
        global = true,
        env = "STOCKADE_PASSPHRASE_FILE",
        value_name = "FILE"
    )]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate the client's RSA key, encrypted under the passphrase (mode 0600; never overwrites)
    Keygen {
        #[arg(long, default_value_t = 3072)]
        bits: usize,
    },
    /// Register the client's public key with the service (61, 71)
    Register,
    /// Upload a file for review and storage (62, 63; re-upload 101, 104, 105)
    Upload {
        file: PathBuf,
        /// Name to store it under [default: the file's name]
        #[arg(long)]
        name: Option<String>,
        /// Seconds to wait for the review before returning (exit 4)
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        wait: u64,
        /// Delete the local file once it is stored and the keys are kept (0059)
        #[arg(long)]
        remove_source: bool,
        /// With --remove-source: delete even if the file changed since it was uploaded
        #[arg(long, requires = "remove_source")]
        force: bool,
        /// Keep the reduced image private: only requests with this account's server password
        /// see it (claim 6; public by default)
        #[arg(long)]
        private_thumbnail: bool,
    },
    /// Show, or wait for, the outcome of an upload (64-66)
    Status {
        upload_id: String,
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        wait: u64,
    },
    /// Download a stored file: the stock server pushes it to BIND:7137 (121, 137, 124, 125)
    Download {
        name: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Seconds to wait for the push
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
    /// List the stored files of the account
    List,
    /// Delete a stored file (owner only, signed request)
    Delete { name: String },
    /// Server password actions
    Password {
        #[command(subcommand)]
        action: PasswordCommand,
    },
    /// Share the account key with another client, directly (Fig. 10, 11)
    Share {
        #[command(subcommand)]
        action: ShareCommand,
    },
    /// Reduced images kept by the service (claims 6, 14)
    Thumbs {
        #[command(subcommand)]
        action: ThumbsCommand,
    },
    /// Templates for composition (claims 7, 15)
    Templates {
        #[command(subcommand)]
        action: TemplatesCommand,
    },
    /// Print a shell completion script (the Debian package installs bash, zsh and fish ones)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff; the package installs it as stockade(1))
    #[command(hide = true)]
    Man,
    /// Compose a stored image into a template's slot (Fig. 12): a preview from reduced images,
    /// or the full-resolution result from what the stock server(s) push
    #[command(group(clap::ArgGroup::new("mode").required(true).args(["preview", "full"])))]
    Compose {
        /// The template's name
        #[arg(long)]
        template: String,
        /// The stored image's name in this account
        #[arg(long)]
        image: String,
        /// Where to write the result (PNG, or JPEG for .jpg/.jpeg)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// From the service's reduced images only
        #[arg(long)]
        preview: bool,
        /// At full resolution: the stock server(s) push the image and the template to BIND:7137
        #[arg(long)]
        full: bool,
        /// cover: fill the slot, cropping the image; contain: the whole image inside the slot
        #[arg(long, default_value = "cover", value_parser = parse_fit)]
        fit: stockade_imaging::Fit,
        /// With --full: seconds to wait for each push
        #[arg(long, default_value_t = 60, value_name = "SECS")]
        timeout: u64,
    },
}

fn parse_fit(s: &str) -> Result<stockade_imaging::Fit, String> {
    s.parse()
}

#[derive(Debug, Subcommand)]
pub enum ThumbsCommand {
    /// The reduced images this client may see: public ones and its account's
    List {
        /// Only this account's (needs its server password)
        #[arg(long, conflicts_with = "public")]
        account: bool,
        /// Only public ones
        #[arg(long)]
        public: bool,
    },
    /// Fetch one reduced image by id, or by name (this account's first, then a unique public one)
    Get {
        name: String,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplatesCommand {
    /// The templates: name, size, slot, mask (and the template key, wrapped to this client)
    List,
}

#[derive(Debug, Subcommand)]
pub enum PasswordCommand {
    /// Print the server password (to hand to another client beforehand, 0078)
    Show,
    /// Replace the server password (79-82); the old one stops working
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum ShareCommand {
    /// Client 1: hand the account key to a client that proves the client password (141-147)
    Serve {
        /// File holding the client password agreed with client 30 beforehand (0078)
        #[arg(long, value_name = "FILE")]
        client_password_file: PathBuf,
        /// Address to listen on [default: BIND:7138]
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Stop after this many failed attempts
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
        max_attempts: u32,
    },
    /// Client 30: ask client 1 for the account key (151-156)
    Request {
        /// Client 1's share address, HOST:PORT (port 7138 when omitted)
        #[arg(long, value_name = "ADDR")]
        from: String,
        /// File holding the client password client 1 gave us (0078)
        #[arg(long, value_name = "FILE")]
        client_password_file: PathBuf,
        /// File holding the server password client 1 gave us (0078)
        #[arg(long, value_name = "FILE")]
        server_password_file: PathBuf,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn clap_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("stockade").chain(args.iter().copied()))
    }

    #[test]
    fn global_options_before_or_after_the_command() {
        let c = parse(&[
            "--home",
            "/h",
            "--service",
            "https://127.0.0.1:8443",
            "--ca",
            "/ca.pem",
            "--bind",
            "198.51.100.101",
            "upload",
            "cat.png",
            "--key",
            "/media/usb/k",
            "--wait",
            "5",
        ])
        .unwrap();
        assert_eq!(c.global.home.as_deref(), Some(std::path::Path::new("/h")));
        assert_eq!(c.global.bind, Some("198.51.100.101".parse().unwrap()));
        assert_eq!(
            c.global.key.as_deref(),
            Some(std::path::Path::new("/media/usb/k"))
        );
        match c.command {
            Command::Upload {
                file,
                name,
                wait,
                remove_source,
                force,
                private_thumbnail,
            } => {
                assert_eq!(file, PathBuf::from("cat.png"));
                assert_eq!((name, wait, remove_source, force), (None, 5, false, false));
                assert!(
                    !private_thumbnail,
                    "reduced images are public by default (claim 6)"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults() {
        match parse(&["keygen"]).unwrap().command {
            Command::Keygen { bits } => assert_eq!(bits, 3072),
            other => panic!("{other:?}"),
        }
        match parse(&["download", "cat.png", "--out", "x"])
            .unwrap()
            .command
        {
            Command::Download { timeout, .. } => assert_eq!(timeout, 60),
            other => panic!("{other:?}"),
        }
        match parse(&["status", "u1"]).unwrap().command {
            Command::Status { wait, .. } => assert_eq!(wait, 120),
            other => panic!("{other:?}"),
        }
        match parse(&["share", "serve", "--client-password-file", "p"])
            .unwrap()
            .command
        {
            Command::Share {
                action:
                    ShareCommand::Serve {
                        listen,
                        max_attempts,
                        ..
                    },
            } => {
                assert_eq!((listen, max_attempts), (None, 3));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_invocations_are_rejected() {
        // --force only makes sense with --remove-source.
        assert!(parse(&["upload", "f", "--force"]).is_err());
        assert!(parse(&["upload", "f", "--remove-source", "--force"]).is_ok());
        assert!(
            parse(&["download", "cat.png"]).is_err(),
            "--out is required"
        );
        assert!(parse(&["--bind", "not-an-ip", "list"]).is_err());
        assert!(parse(&[
            "share",
            "serve",
            "--client-password-file",
            "p",
            "--max-attempts",
            "0"
        ])
        .is_err());
        assert!(parse(&[
            "share",
            "request",
            "--from",
            "a:1",
            "--client-password-file",
            "p"
        ])
        .is_err());
        assert!(parse(&["password"]).is_err());
        assert!(matches!(
            parse(&["password", "rotate"]).unwrap().command,
            Command::Password {
                action: PasswordCommand::Rotate
            }
        ));
    }
}
