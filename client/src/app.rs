//! Runs one parsed command line. Output for people goes to stdout; refusals and errors are
//! returned for main to print (stderr) with their exit code.

use crate::cli::{Cli, Command, PasswordCommand, ShareCommand, TemplatesCommand, ThumbsCommand};
use crate::error::{ClientError, Result};
use crate::settings::{read_secret_file, Settings};
use crate::share::{self, ShareError, DEFAULT_SHARE_PORT};
use crate::state::{self, Account, AccountSource, ShareRecord, State};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use zeroize::Zeroizing;

pub async fn run(cli: Cli, passphrase_env: Option<Zeroizing<String>>) -> Result<()> {
    // Documentation needs no home, key or service.
    match &cli.command {
        Command::Completions { shell } => {
            crate::cli::completions(*shell, &mut std::io::stdout());
            return Ok(());
        }
        Command::Man => {
            return crate::cli::man(&mut std::io::stdout())
                .map_err(|e| ClientError::io("writing the manual page", e));
        }
        _ => {}
    }
    let settings = Settings::resolve(cli.global, passphrase_env)?;
    match cli.command {
        Command::Completions { .. } | Command::Man => Ok(()),
        Command::Keygen { bits } => crate::account::keygen(&settings, bits),
        Command::Register => crate::account::register(&settings).await,
        Command::Upload {
            file,
            name,
            wait,
            remove_source,
            force,
            private_thumbnail,
        } => {
            crate::upload::upload(
                &settings,
                &file,
                name.as_deref(),
                Duration::from_secs(wait),
                remove_source,
                force,
                private_thumbnail,
            )
            .await
        }
        Command::Thumbs {
            action: ThumbsCommand::List { account, public },
        } => {
            let scope = if account {
                crate::compose::Scope::Account
            } else if public {
                crate::compose::Scope::Public
            } else {
                crate::compose::Scope::All
            };
            crate::compose::thumbs_list(&settings, scope).await
        }
        Command::Thumbs {
            action: ThumbsCommand::Get { name, out },
        } => crate::compose::thumbs_get(&settings, &name, &out).await,
        Command::Templates {
            action: TemplatesCommand::List,
        } => crate::compose::templates_list(&settings).await,
        Command::Compose {
            template,
            image,
            out,
            preview: _,
            full,
            fit,
            timeout,
        } => {
            let mode = if full {
                crate::compose::Mode::Full {
                    timeout: Duration::from_secs(timeout),
                }
            } else {
                crate::compose::Mode::Preview
            };
            crate::compose::compose(&settings, &template, &image, &out, mode, fit).await
        }
        Command::Status { upload_id, wait } => {
            crate::upload::status(&settings, &upload_id, Duration::from_secs(wait)).await
        }
        Command::Download { name, out, timeout } => {
            crate::download::download(&settings, &name, &out, Duration::from_secs(timeout)).await
        }
        Command::List => crate::account::list(&settings).await,
        Command::Delete { name } => crate::account::delete(&settings, &name).await,
        Command::Password {
            action: PasswordCommand::Show,
        } => crate::account::password_show(&settings),
        Command::Password {
            action: PasswordCommand::Rotate,
        } => crate::account::password_rotate(&settings).await,
        Command::Share {
            action:
                ShareCommand::Serve {
                    client_password_file,
                    listen,
                    max_attempts,
                },
        } => {
            let client_password = read_secret_file(&client_password_file, "client password file")?;
            share_serve(&settings, &client_password, listen, max_attempts).await
        }
        Command::Share {
            action:
                ShareCommand::Request {
                    from,
                    client_password_file,
                    server_password_file,
                },
        } => {
            let client_password = read_secret_file(&client_password_file, "client password file")?;
            let server_password = read_secret_file(&server_password_file, "server password file")?;
            share_request(&settings, &from, &client_password, &server_password).await
        }
    }
}

impl From<ShareError> for ClientError {
    fn from(e: ShareError) -> Self {
        match e {
            ShareError::Refused(r) => ClientError::Refused(r),
            ShareError::Identity(e) => ClientError::Identity(e),
            ShareError::Timeout => ClientError::TimedOut(e.to_string()),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Client 1: `share serve` (141-147).
async fn share_serve(
    settings: &Settings,
    client_password: &str,
    listen: Option<SocketAddr>,
    max_attempts: u32,
) -> Result<()> {
    let key = settings.load_key()?;
    let st = State::load(&settings.home)?;
    let account_key = st.account()?.account_key(&key)?;
    let addr = listen.unwrap_or_else(|| {
        SocketAddr::new(
            settings.bind.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            DEFAULT_SHARE_PORT,
        )
    });
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| ClientError::io(format!("listening on {addr}"), e))?;
    println!(
        "waiting for a share request on {addr} (gives up after {max_attempts} failed attempt{})",
        if max_attempts == 1 { "" } else { "s" }
    );
    let granted = share::serve(
        listener,
        client_password.as_bytes(),
        &account_key,
        max_attempts,
    )
    .await?;
    // 144: remember whom the account key went to.
    let mut st = State::load(&settings.home)?;
    st.shared_with.push(ShareRecord {
        fingerprint: granted.requester_fingerprint.clone(),
        public_key_pem: granted.requester_public_key_pem,
        at: now(),
    });
    st.save(&settings.home)?;
    println!(
        "shared the account key with client {}",
        granted.requester_fingerprint
    );
    if !granted.acknowledged {
        eprintln!(
            "note: the requester did not confirm it opened the key; it was sent once, to its key only, and no further request is served"
        );
    }
    Ok(())
}

/// Client 1's share address: HOST:PORT, or an IP alone for the default port.
async fn resolve_peer(from: &str) -> Result<SocketAddr> {
    if let Ok(a) = from.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = from.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_SHARE_PORT));
    }
    tokio::net::lookup_host(from)
        .await
        .map_err(|e| ClientError::Config(format!("--from {from}: {e}")))?
        .next()
        .ok_or_else(|| ClientError::Config(format!("--from {from}: no address")))
}

async fn connect(peer: SocketAddr, bind: Option<IpAddr>) -> Result<TcpStream> {
    let ctx = || format!("connecting to {peer}");
    let sock = if peer.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| ClientError::io(ctx(), e))?;
    if let Some(ip) = bind {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| ClientError::io(format!("binding {ip}"), e))?;
    }
    tokio::time::timeout(Duration::from_secs(10), sock.connect(peer))
        .await
        .map_err(|_| ClientError::TimedOut(format!("{peer} did not answer within 10s")))?
        .map_err(|e| ClientError::io(ctx(), e))
}

/// Client 30: `share request` (151-156). Afterwards this home holds the account: the server
/// password wrapped to our own key, and the account key as client 1 wrapped it to us.
async fn share_request(
    settings: &Settings,
    from: &str,
    client_password: &str,
    server_password: &str,
) -> Result<()> {
    let key = settings.load_key()?;
    let st = State::load(&settings.home)?;
    if st.account.is_some() {
        return Err(ClientError::Config(format!(
            "{} already holds an account; use another --home to receive a share",
            settings.home.display()
        )));
    }
    // Checked before connecting: a typo should not cost one of client 1's attempts.
    let server_password_wrapped = state::wrap_password(&key.public(), server_password)?;
    let peer = resolve_peer(from).await?;
    let mut conn = connect(peer, settings.bind).await?;
    let got = share::request(&mut conn, client_password.as_bytes(), &key).await?;
    // 156: store.
    let mut st = State::load(&settings.home)?;
    st.account = Some(Account {
        server_password_wrapped,
        account_key_wrapped: data_encoding::BASE64.encode(&got.account_key_wrapped),
        stock_server: None,
        source: AccountSource::Share,
    });
    st.save(&settings.home)?;
    println!("received the account key from {peer}; this home can now download with the shared server password");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn share_peer_addresses() {
        assert_eq!(
            resolve_peer("198.51.100.101:9000").await.unwrap(),
            "198.51.100.101:9000".parse().unwrap()
        );
        assert_eq!(
            resolve_peer("198.51.100.101").await.unwrap(),
            "198.51.100.101:7138".parse().unwrap()
        );
        assert_eq!(resolve_peer("localhost:7138").await.unwrap().port(), 7138);
        assert!(resolve_peer("no such host !").await.is_err());
    }
}
