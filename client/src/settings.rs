//! Resolved global settings: where the home, the key and the passphrase are, and how to reach
//! the service. Every option can also come from the environment (see `cli`).

use crate::api::Service;
use crate::error::{ClientError, Result};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use stockade_proto::identity::ClientKey;
use zeroize::Zeroizing;

pub const KEY_FILE: &str = "client.key";

/// No `Debug`: it holds the passphrase.
#[derive(Clone)]
pub struct Settings {
    pub home: PathBuf,
    pub service: Option<String>,
    pub ca: Option<PathBuf>,
    pub bind: Option<IpAddr>,
    /// The private key; any path (a removable medium, 0038). Defaults to HOME/client.key.
    pub key: PathBuf,
    pub passphrase_file: Option<PathBuf>,
    /// `STOCKADE_PASSPHRASE`, read by main so that it never appears as a flag.
    pub passphrase_env: Option<Zeroizing<String>>,
}

impl Settings {
    /// Fills defaults: HOME defaults to `~/.stockade`, the key to `HOME/client.key`.
    pub fn resolve(
        g: crate::cli::GlobalArgs,
        passphrase_env: Option<Zeroizing<String>>,
    ) -> Result<Self> {
        let home = match g.home {
            Some(h) => h,
            None => {
                let user_home = std::env::var_os("HOME").ok_or_else(|| {
                    ClientError::Config("set --home (STOCKADE_HOME): $HOME is not set".into())
                })?;
                PathBuf::from(user_home).join(".stockade")
            }
        };
        let key = g.key.unwrap_or_else(|| home.join(KEY_FILE));
        Ok(Self {
            home,
            service: g.service,
            ca: g.ca,
            bind: g.bind,
            key,
            passphrase_file: g.passphrase_file,
            passphrase_env: passphrase_env.filter(|p| !p.is_empty()),
        })
    }

    /// The key passphrase: `--passphrase-file` first, then `STOCKADE_PASSPHRASE`.
    pub fn passphrase(&self) -> Result<Zeroizing<String>> {
        if let Some(f) = &self.passphrase_file {
            return read_secret_file(f, "passphrase file");
        }
        if let Some(p) = &self.passphrase_env {
            return Ok(p.clone());
        }
        Err(ClientError::Config(
            "the client key needs a passphrase: give --passphrase-file FILE (STOCKADE_PASSPHRASE_FILE) \
             or set STOCKADE_PASSPHRASE"
                .into(),
        ))
    }

    /// Loads and decrypts the client key.
    pub fn load_key(&self) -> Result<ClientKey> {
        if !self.key.exists() {
            return Err(ClientError::Config(format!(
                "no client key at {}: run `stockade keygen` first (or give --key)",
                self.key.display()
            )));
        }
        let pass = self.passphrase()?;
        Ok(ClientKey::load(&self.key, &pass)?)
    }

    /// The service client, from --service, --ca and --bind.
    pub fn service(&self) -> Result<Service> {
        let url = self.service.as_deref().ok_or_else(|| {
            ClientError::Config(
                "set --service URL (STOCKADE_SERVICE), e.g. https://198.51.100.110:8443".into(),
            )
        })?;
        let ca = self.ca.as_deref().ok_or_else(|| {
            ClientError::Config(
                "set --ca FILE (STOCKADE_CA): the CA certificate the service's certificate is pinned to".into(),
            )
        })?;
        Service::new(url, ca, self.bind)
    }
}

/// Reads a one-line secret from a file, without its trailing newline.
pub fn read_secret_file(path: &Path, what: &str) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| ClientError::io(format!("reading {what} {}", path.display()), e))?,
    );
    let line = text.trim_end_matches(['\n', '\r']);
    if line.is_empty() {
        return Err(ClientError::Config(format!(
            "{what} {} is empty",
            path.display()
        )));
    }
    Ok(Zeroizing::new(line.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_and_passphrase_sources() {
        let d = tempfile::tempdir().unwrap();
        let cli = crate::cli::Cli::try_parse_from([
            "stockade",
            "--home",
            d.path().to_str().unwrap(),
            "register",
        ])
        .unwrap();
        let s = Settings::resolve(cli.global, None).unwrap();
        assert_eq!(s.key, d.path().join(KEY_FILE));
        let e = s.passphrase().unwrap_err().to_string();
        assert!(
            e.contains("--passphrase-file") && e.contains("STOCKADE_PASSPHRASE"),
            "{e}"
        );
        assert!(s.service().unwrap_err().to_string().contains("--service"));

        let s2 = Settings {
            passphrase_env: Some(Zeroizing::new("env pass".into())),
            ..s.clone()
        };
        assert_eq!(s2.passphrase().unwrap().as_str(), "env pass");
        // The file wins over the environment, and loses its trailing newline.
        let f = d.path().join("pass");
        std::fs::write(&f, "file pass\n").unwrap();
        let s3 = Settings {
            passphrase_file: Some(f),
            ..s2
        };
        assert_eq!(s3.passphrase().unwrap().as_str(), "file pass");
        let e = match s3.load_key() {
            Err(e) => e.to_string(),
            Ok(_) => panic!("no key was generated"),
        };
        assert!(e.contains("stockade keygen"), "{e}");
    }
}
