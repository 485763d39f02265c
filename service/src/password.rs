//! Server passwords on the service: issued bound to (stock server, database key) (79, 80),
//! stored only as HMAC-SHA256(pepper, secret), checked in constant time with a dummy compare
//! for unknown ids (106, 107, 131, 132). Every failure gets the same words.

use crate::db::{PasswordRecord, UploadRecord};
use crate::Service;
use stockade_proto::password::ServerPassword;
use stockade_proto::reason::Refusal;

/// The one answer to every bad password, whatever was wrong (108, 133).
pub fn refusal() -> Refusal {
    Refusal::Password("the server password is not valid".into())
}

/// Issue 16, defect 1: a share holder (Fig. 10) has the password to list and download; adding
/// or replacing files stays with the account owner, whose key signs every upload.
pub fn not_owner_upload() -> Refusal {
    Refusal::Password(
        "only the account owner may upload to this account (a shared password lets you list and download)"
            .into(),
    )
}

/// 107 / 132: checks a presented password; returns its id and record.
pub fn check(svc: &Service, presented: &str) -> Result<(String, PasswordRecord), Refusal> {
    let ok = (|| {
        let Ok(pw) = ServerPassword::parse(presented) else {
            // Same work as a real check (one HMAC, one comparison), so a malformed password
            // is not answered faster than a wrong one.
            ServerPassword::generate().verify(svc.pepper.as_ref(), None);
            return None;
        };
        let id = pw.id_text();
        let rec = svc.db.password(&id).ok().flatten();
        let stored = rec
            .as_ref()
            .and_then(|r| hex::decode(&r.hash).ok())
            .and_then(|h| <[u8; 32]>::try_from(h).ok());
        if pw.verify(svc.pepper.as_ref(), stored.as_ref()) {
            rec.map(|r| (id, r))
        } else {
            None
        }
    })();
    let label = if ok.is_some() { "ok" } else { "refused" };
    svc.metrics
        .password_checks
        .with_label_values(&[label])
        .inc();
    ok.ok_or_else(refusal)
}

/// 79, 80: issues a new password for an account; returns it (to wrap for the client, 81).
pub fn issue(
    svc: &Service,
    stock_server: &str,
    database_key: &str,
    owner: &str,
    replacing: Option<&str>,
) -> Result<ServerPassword, crate::db::DbError> {
    let pw = ServerPassword::generate();
    let rec = PasswordRecord {
        hash: hex::encode(pw.hash(svc.pepper.as_ref())),
        stock_server: stock_server.into(),
        database_key: database_key.into(),
        owner: owner.into(),
        created_at: crate::now_secs(),
    };
    match replacing {
        Some(old) => svc.db.replace_password(old, &pw.id_text(), &rec)?,
        None => svc.db.put_password(&pw.id_text(), &rec)?,
    }
    Ok(pw)
}

/// The upload's account: where it lives, if it exists yet.
pub fn account_of(svc: &Service, rec: &UploadRecord) -> Option<PasswordRecord> {
    rec.password_id
        .as_ref()
        .and_then(|id| svc.db.password(id).ok().flatten())
}
