//! Account commands: register (61, 71), list, delete, password show / rotate (79-82).
//! Delete and rotate are owner actions: signed with the client key (RSA-PSS) so that a client
//! the password was shared with (Fig. 10, 11) cannot take them.

use crate::error::{ClientError, Result};
use crate::settings::Settings;
use crate::state::{self, State};
use rand::RngCore;
use std::time::{SystemTime, UNIX_EPOCH};
use stockade_proto::identity::ClientKey;
use stockade_proto::wire::{FileEntry, OwnerRequest};

/// `stockade keygen`: a new key, passphrase-encrypted, never over an existing one.
pub fn keygen(settings: &Settings, bits: usize) -> Result<()> {
    if settings.key.exists() {
        return Err(ClientError::Config(format!(
            "{} already exists: refusing to overwrite a client key",
            settings.key.display()
        )));
    }
    let pass = settings.passphrase()?;
    if settings.key.starts_with(&settings.home) {
        state::ensure_home(&settings.home)?;
    }
    let key = ClientKey::generate(bits)?;
    key.save(&settings.key, &pass)?;
    println!(
        "wrote {} ({bits}-bit RSA, encrypted); client id {}",
        settings.key.display(),
        key.public().fingerprint()
    );
    Ok(())
}

/// `stockade register` (61 → 71).
pub async fn register(settings: &Settings) -> Result<()> {
    let key = settings.load_key()?;
    let service = settings.service()?;
    let resp = service.register(&key.public().to_pem()).await?;
    let mut st = State::load(&settings.home)?;
    st.client_id = Some(resp.client_id.clone());
    st.save(&settings.home)?;
    println!("registered as client {}", resp.client_id);
    Ok(())
}

/// `stockade list`.
pub async fn list(settings: &Settings) -> Result<()> {
    let key = settings.load_key()?;
    let st = State::load(&settings.home)?;
    let password = st.account()?.server_password(&key)?;
    let files = settings.service()?.files(&password).await?.files;
    print!("{}", format_table(&files));
    Ok(())
}

/// The file list as a table: name, size in bytes, date stored (UTC).
pub fn format_table(files: &[FileEntry]) -> String {
    let rows: Vec<[String; 3]> = files
        .iter()
        .map(|f| [f.name.clone(), f.size.to_string(), utc_date(f.stored_at)])
        .collect();
    let head = [
        "NAME".to_string(),
        "SIZE".to_string(),
        "STORED (UTC)".to_string(),
    ];
    let w0 = rows
        .iter()
        .map(|r| r[0].len())
        .chain([head[0].len()])
        .max()
        .unwrap_or(0);
    let w1 = rows
        .iter()
        .map(|r| r[1].len())
        .chain([head[1].len()])
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for r in std::iter::once(&head).chain(rows.iter()) {
        out.push_str(&format!("{:<w0$}  {:>w1$}  {}\n", r[0], r[1], r[2]));
    }
    out
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM:SS` (proleptic Gregorian, UTC).
pub fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A signed owner request (delete / rotate).
pub fn owner_request(
    key: &ClientKey,
    client_id: &str,
    action: &str,
    file_name: Option<&str>,
) -> OwnerRequest {
    let mut nonce = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let timestamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut req = OwnerRequest {
        action: action.to_string(),
        file_name: file_name.map(str::to_string),
        timestamp,
        nonce: hex::encode(nonce),
        client_id: client_id.to_string(),
        signature: String::new(),
    };
    req.signature = data_encoding::BASE64.encode(&key.sign(&req.signing_bytes()));
    req
}

/// `stockade delete NAME`.
pub async fn delete(settings: &Settings, name: &str) -> Result<()> {
    let key = settings.load_key()?;
    let st = State::load(&settings.home)?;
    let password = st.account()?.server_password(&key)?;
    let req = owner_request(&key, st.client_id()?, "delete", Some(name));
    settings.service()?.delete(&req, &password).await?;
    println!("deleted {name}");
    Ok(())
}

/// `stockade password show` (0078: to hand to client 30 beforehand).
pub fn password_show(settings: &Settings) -> Result<()> {
    let key = settings.load_key()?;
    let st = State::load(&settings.home)?;
    let password = st.account()?.server_password(&key)?;
    println!("{}", password.as_str());
    Ok(())
}

/// `stockade password rotate` (79-82 again): the old password stops working.
pub async fn password_rotate(settings: &Settings) -> Result<()> {
    let key = settings.load_key()?;
    let mut st = State::load(&settings.home)?;
    let password = st.account()?.server_password(&key)?;
    let req = owner_request(&key, st.client_id()?, "rotate", None);
    let resp = settings.service()?.rotate(&req, &password).await?;
    // 66: open it to check it is ours before replacing the old one.
    let new = state::unwrap_password(&key, &resp.server_password_wrapped)?;
    if let Some(a) = st.account.as_mut() {
        a.server_password_wrapped = resp.server_password_wrapped;
    }
    st.save(&settings.home)?;
    println!("server password: {}", new.as_str());
    println!(
        "keep this password: it is shown once; the old one no longer works. Clients you shared\n\
         with keep their copy of the account key but need the new password to download."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::{key_a, key_b};

    #[test]
    fn dates_are_utc() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc_date(1_700_000_000), "2023-11-14 22:13:20");
        assert_eq!(utc_date(4_102_444_799), "2099-12-31 23:59:59");
    }

    #[test]
    fn table_has_name_size_date() {
        let t = format_table(&[
            FileEntry {
                name: "cat.png".into(),
                size: 1234,
                stored_at: 0,
            },
            FileEntry {
                name: "a much longer name.jpg".into(),
                size: 5,
                stored_at: 1_700_000_000,
            },
        ]);
        let lines: Vec<_> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("NAME")
                && lines[0].contains("SIZE")
                && lines[0].ends_with("STORED (UTC)")
        );
        assert!(
            lines[1].starts_with("cat.png ") && lines[1].contains(" 1234  1970-01-01 00:00:00")
        );
        assert!(lines[2].ends_with("   5  2023-11-14 22:13:20"));
        assert_eq!(format_table(&[]).lines().count(), 1);
    }

    #[test]
    fn owner_requests_are_signed_by_the_owner() {
        let r = owner_request(key_a(), "cid", "delete", Some("cat.png"));
        let sig = data_encoding::BASE64
            .decode(r.signature.as_bytes())
            .unwrap();
        key_a().public().verify(&r.signing_bytes(), &sig).unwrap();
        assert!(key_b().public().verify(&r.signing_bytes(), &sig).is_err());
        let r2 = owner_request(key_a(), "cid", "delete", Some("cat.png"));
        assert_ne!(r.nonce, r2.nonce, "a fresh nonce each time");
        // The signature covers the file name.
        let mut forged = r.clone();
        forged.file_name = Some("other.png".into());
        assert!(key_a()
            .public()
            .verify(&forged.signing_bytes(), &sig)
            .is_err());
    }

    #[test]
    fn keygen_refuses_to_overwrite() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("usb").join("client.key");
        std::fs::create_dir_all(key.parent().unwrap()).unwrap();
        std::fs::write(&key, "existing").unwrap();
        let s = Settings {
            home: d.path().join("home"),
            service: None,
            ca: None,
            bind: None,
            key: key.clone(),
            passphrase_file: None,
            passphrase_env: Some(zeroize::Zeroizing::new("p".into())),
        };
        let e = keygen(&s, 2048).unwrap_err().to_string();
        assert!(e.contains("refusing to overwrite"), "{e}");
        assert_eq!(std::fs::read_to_string(&key).unwrap(), "existing");
    }
}
