//! Accounts under their database keys (86): the account key (the patent's per-client "server
//! key pair", 85) and the metadata of every object filed under it, in an embedded database
//! (redb, ACID: a commit is durable when it returns).
//!
//! Account keys at rest are wrapped under the stock server's master key with AES-256-GCM
//! (envelope encryption; the database key is the associated data, so a wrapped key cannot be
//! moved to another account). The master key file is created 0600 on first start.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::Path;
use zeroize::Zeroizing;

const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
/// Key: "<database key>/<file name>".
const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("unknown database key")]
    UnknownAccount,
    #[error("database: {0}")]
    Db(String),
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("stored account key does not open under the master key")]
    Unwrap,
    /// Issue 16, defect 1: the name is taken by another upload, and this store may not replace it.
    #[error("a file named {0:?} is in the account already; only its owner may replace it")]
    Exists(String),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(impl From<$t> for AccountError { fn from(e: $t) -> Self { Self::Db(e.to_string()) } })*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccountRecord {
    /// nonce (12) || AES-256-GCM(master, account key, aad = database key)
    wrapped_key: String,
    created_at: u64,
}

/// What is known about one stored object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ObjectRecord {
    pub object_id: String,
    /// Length of the stored (encrypted) object.
    pub stored_size: u64,
    /// Length of the image as received.
    pub size: u64,
    /// Hex SHA-512 of the stored object, computed once at store time.
    pub digest: String,
    pub stored_at: u64,
    /// The upload (or template) the object came from; a store that repeats it is a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
}

impl ObjectRecord {
    /// Issue 16, defect 1: whether a store may file another object under this one's name:
    /// with the owner's consent (`may_replace`), or as a retry of the same upload.
    pub fn yields_to(&self, upload_id: Option<&str>, may_replace: bool) -> bool {
        may_replace || (self.upload_id.is_some() && self.upload_id.as_deref() == upload_id)
    }
}

pub struct Accounts {
    db: Database,
    master: Zeroizing<[u8; 32]>,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Accounts {
    pub fn open(data_dir: &Path) -> Result<Self, AccountError> {
        std::fs::create_dir_all(data_dir).map_err(|e| AccountError::Db(e.to_string()))?;
        let mpath = data_dir.join("master.key");
        let master = if mpath.exists() {
            let bytes = Zeroizing::new(
                std::fs::read(&mpath).map_err(|e| AccountError::MasterKey(e.to_string()))?,
            );
            let arr: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                AccountError::MasterKey(format!("{} is not 32 bytes", mpath.display()))
            })?;
            Zeroizing::new(arr)
        } else {
            let mut k = Zeroizing::new([0u8; 32]);
            rand::rngs::OsRng.fill_bytes(k.as_mut());
            stockade_proto::fsutil::write_atomic(&mpath, k.as_ref(), 0o600)
                .map_err(|e| AccountError::MasterKey(e.to_string()))?;
            k
        };
        let db = Database::create(data_dir.join("metadata.redb"))?;
        let w = db.begin_write()?;
        w.open_table(ACCOUNTS)?;
        w.open_table(OBJECTS)?;
        w.commit()?;
        Ok(Self { db, master })
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new_from_slice(self.master.as_ref()).expect("32-byte key")
    }

    /// 85, 86: a new account with a random account key under a new random database key.
    pub fn create(&self) -> Result<(String, Zeroizing<[u8; 32]>), AccountError> {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(key.as_mut());
        self.create_with_key(key)
    }

    /// 86 for an account whose key the service chose (the template account, claim 7).
    pub fn create_with_key(
        &self,
        key: Zeroizing<[u8; 32]>,
    ) -> Result<(String, Zeroizing<[u8; 32]>), AccountError> {
        let mut idb = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut idb);
        let db_key = hex::encode(idb);
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: key.as_ref(),
                    aad: db_key.as_bytes(),
                },
            )
            .map_err(|_| AccountError::Unwrap)?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        let rec = AccountRecord {
            wrapped_key: data_encoding::BASE64.encode(&blob),
            created_at: now_secs(),
        };
        let w = self.db.begin_write()?;
        w.open_table(ACCOUNTS)?
            .insert(db_key.as_str(), serde_json::to_vec(&rec)?.as_slice())?;
        w.commit()?;
        Ok((db_key, key))
    }

    /// The account key for a database key (115: the same key for every upload of the account).
    pub fn account_key(&self, db_key: &str) -> Result<Zeroizing<[u8; 32]>, AccountError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(ACCOUNTS)?;
        let v = t.get(db_key)?.ok_or(AccountError::UnknownAccount)?;
        let rec: AccountRecord = serde_json::from_slice(v.value())?;
        let blob = data_encoding::BASE64
            .decode(rec.wrapped_key.as_bytes())
            .map_err(|_| AccountError::Unwrap)?;
        if blob.len() < 12 {
            return Err(AccountError::Unwrap);
        }
        let pt = Zeroizing::new(
            self.cipher()
                .decrypt(
                    Nonce::from_slice(&blob[..12]),
                    Payload {
                        msg: &blob[12..],
                        aad: db_key.as_bytes(),
                    },
                )
                .map_err(|_| AccountError::Unwrap)?,
        );
        let arr: [u8; 32] = pt.as_slice().try_into().map_err(|_| AccountError::Unwrap)?;
        Ok(Zeroizing::new(arr))
    }

    pub fn exists(&self, db_key: &str) -> Result<bool, AccountError> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(ACCOUNTS)?.get(db_key)?.is_some())
    }

    /// Files an object under the account; returns the record it replaced, if any.
    /// Files an object under `name`, in one transaction with the check of who may take it: a
    /// free name always; a taken one only when `may_replace` (the owner signed the upload) or
    /// when the object there came from the same upload (a retried store: idempotent). Returns
    /// the replaced record, whose object is then unreferenced.
    pub fn put_object(
        &self,
        db_key: &str,
        name: &str,
        rec: &ObjectRecord,
        may_replace: bool,
    ) -> Result<Option<ObjectRecord>, AccountError> {
        let key = format!("{db_key}/{name}");
        let w = self.db.begin_write()?;
        let old = {
            let mut t = w.open_table(OBJECTS)?;
            let old = match t.get(key.as_str())? {
                Some(v) => Some(serde_json::from_slice::<ObjectRecord>(v.value())?),
                None => None,
            };
            if let Some(old) = &old {
                if !old.yields_to(rec.upload_id.as_deref(), may_replace) {
                    // Dropping `w` without commit leaves the table as it was.
                    return Err(AccountError::Exists(name.to_string()));
                }
            }
            t.insert(key.as_str(), serde_json::to_vec(rec)?.as_slice())?;
            old
        };
        w.commit()?;
        Ok(old)
    }

    pub fn get_object(
        &self,
        db_key: &str,
        name: &str,
    ) -> Result<Option<ObjectRecord>, AccountError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(OBJECTS)?;
        let v = t.get(format!("{db_key}/{name}").as_str())?;
        Ok(match v {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    pub fn delete_object(
        &self,
        db_key: &str,
        name: &str,
    ) -> Result<Option<ObjectRecord>, AccountError> {
        let w = self.db.begin_write()?;
        let old = {
            let mut t = w.open_table(OBJECTS)?;
            let old = t.remove(format!("{db_key}/{name}").as_str())?;
            match old {
                Some(v) => Some(serde_json::from_slice::<ObjectRecord>(v.value())?),
                None => None,
            }
        };
        w.commit()?;
        Ok(old)
    }

    /// Every (name, record) of an account, by name.
    pub fn list_objects(&self, db_key: &str) -> Result<Vec<(String, ObjectRecord)>, AccountError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(OBJECTS)?;
        // '/' + 1 == '0': the range covers exactly "<db_key>/...".
        let (lo, hi) = (format!("{db_key}/"), format!("{db_key}0"));
        let mut out = Vec::new();
        for item in t.range(lo.as_str()..hi.as_str())? {
            let (k, v) = item?;
            let name = k.value()[lo.len()..].to_string();
            out.push((name, serde_json::from_slice(v.value())?));
        }
        Ok(out)
    }

    /// Every object id referenced by any account (to clean up orphans after a crash).
    pub fn all_object_ids(&self) -> Result<std::collections::HashSet<String>, AccountError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(OBJECTS)?;
        let mut out = std::collections::HashSet::new();
        for item in t.iter()? {
            let (_, v) = item?;
            out.insert(serde_json::from_slice::<ObjectRecord>(v.value())?.object_id);
        }
        Ok(out)
    }

    pub fn account_count(&self) -> Result<u64, AccountError> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(ACCOUNTS)?.len()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> ObjectRecord {
        ObjectRecord {
            object_id: id.into(),
            stored_size: 10,
            size: 5,
            digest: "d".into(),
            stored_at: 1,
            upload_id: Some(format!("upload-{id}")),
        }
    }

    /// Issue 16, defect 1 (101–115): a taken name is replaced only with the owner's consent or by
    /// a retry of the same upload; a refused store leaves the old record in place.
    #[test]
    fn a_taken_name_is_replaced_only_by_the_owner_or_a_retry_101() {
        let d = tempfile::tempdir().unwrap();
        let a = Accounts::open(d.path()).unwrap();
        let (k, _) = a.create().unwrap();
        assert!(a
            .put_object(&k, "p.png", &rec("1"), false)
            .unwrap()
            .is_none());
        // Someone else's upload under the same name: refused, nothing changes.
        let err = a.put_object(&k, "p.png", &rec("2"), false).unwrap_err();
        assert!(
            matches!(err, AccountError::Exists(ref n) if n == "p.png"),
            "{err}"
        );
        assert_eq!(a.get_object(&k, "p.png").unwrap(), Some(rec("1")));
        // The same upload stored again (a retry after a lost answer): idempotent.
        let mut again = rec("1b");
        again.upload_id = rec("1").upload_id;
        assert_eq!(
            a.put_object(&k, "p.png", &again, false).unwrap(),
            Some(rec("1"))
        );
        // An object with no upload id never counts as a retry of another one.
        let mut bare = rec("3");
        bare.upload_id = None;
        a.put_object(&k, "q.png", &bare, false).unwrap();
        assert!(a.put_object(&k, "q.png", &bare, false).is_err());
        // The owner's signed re-upload replaces.
        assert_eq!(
            a.put_object(&k, "p.png", &rec("4"), true).unwrap(),
            Some(again)
        );
    }

    /// Claim 7: the template account files the key the service chose.
    #[test]
    fn account_with_a_given_key_claim_7() {
        let d = tempfile::tempdir().unwrap();
        let a = Accounts::open(d.path()).unwrap();
        let (k, key) = a.create_with_key(Zeroizing::new([7u8; 32])).unwrap();
        assert_eq!(*key, [7u8; 32]);
        assert_eq!(*a.account_key(&k).unwrap(), [7u8; 32]);
        let (k2, _) = a.create_with_key(Zeroizing::new([7u8; 32])).unwrap();
        assert_ne!(k, k2, "a new database key each time");
    }

    #[test]
    fn accounts_85_86_115() {
        let d = tempfile::tempdir().unwrap();
        let a = Accounts::open(d.path()).unwrap();
        let (k1, key1) = a.create().unwrap();
        let (k2, _) = a.create().unwrap();
        assert_ne!(k1, k2);
        assert_eq!(*a.account_key(&k1).unwrap(), *key1);
        assert!(matches!(
            a.account_key("nope"),
            Err(AccountError::UnknownAccount)
        ));
        assert!(a
            .put_object(&k1, "a.png", &rec("1"), false)
            .unwrap()
            .is_none());
        assert_eq!(
            a.put_object(&k1, "a.png", &rec("2"), true).unwrap(),
            Some(rec("1"))
        );
        a.put_object(&k1, "b.png", &rec("3"), false).unwrap();
        a.put_object(&k2, "c.png", &rec("4"), false).unwrap();
        let names: Vec<_> = a
            .list_objects(&k1)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["a.png", "b.png"]);
        assert_eq!(a.delete_object(&k1, "a.png").unwrap(), Some(rec("2")));
        assert_eq!(a.all_object_ids().unwrap().len(), 2);
        drop(a);
        // Reopen: same master key, same account key (durable).
        let a = Accounts::open(d.path()).unwrap();
        assert_eq!(*a.account_key(&k1).unwrap(), *key1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.path().join("master.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
