//! The service's embedded database (redb): registered client keys (71), server password
//! records (80), upload tickets (72, 109) and the quarantine queue (74). Every commit is durable
//! when it returns.

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::path::Path;
use stockade_proto::reason::Refusal;

const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("clients");
const PASSWORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("passwords");
const TICKETS: TableDefinition<&str, &[u8]> = TableDefinition::new("tickets");
const UPLOADS: TableDefinition<&str, &[u8]> = TableDefinition::new("uploads");
/// Owner-request nonces seen, with when they may be forgotten (seconds since the epoch): kept
/// on disk, so a signed delete or rotate cannot be replayed after a restart.
const OWNER_NONCES: TableDefinition<&str, u64> = TableDefinition::new("owner_nonces");

#[derive(Debug, thiserror::Error)]
#[error("database: {0}")]
pub struct DbError(pub String);

macro_rules! db_err {
    ($($t:ty),*) => {$(impl From<$t> for DbError { fn from(e: $t) -> Self { Self(e.to_string()) } })*};
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

/// Why [`Db::transition`] changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError<E> {
    #[error("no upload {0}")]
    Missing(String),
    /// Another decision (or the delivery) came first.
    #[error("upload {id} was already {}: another decision came first", stage.describe())]
    Lost { id: String, stage: Stage },
    #[error(transparent)]
    Db(#[from] DbError),
    /// The step itself refused (e.g. the audit trail could not be written).
    #[error(transparent)]
    Step(E),
}

/// 80: what a server password opens: the stock server and database key it is bound to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PasswordRecord {
    /// Hex HMAC-SHA256(pepper, secret).
    pub hash: String,
    pub stock_server: String,
    pub database_key: String,
    /// The client that created the account; only it may delete or rotate.
    pub owner: String,
    pub created_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ticket {
    pub client_id: String,
    /// Set for a re-upload (109): the password id of the account.
    pub password_id: Option<String>,
    pub expires_at: u64,
    /// Claim 6 with a choice: this upload's reduced image is private to its account.
    #[serde(default)]
    pub private_thumbnail: bool,
}

/// Where an upload is in Fig. 5.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "stage", rename_all = "snake_case")]
pub enum Stage {
    /// 91, 92 running.
    Checking,
    /// 93: waiting for the operator.
    AwaitingOperator,
    /// 94: approved; being delivered to the stock server (78).
    Approved { note: String },
    /// 95, 76, 77: erased, with the reason.
    Refused { refusal: Refusal },
    /// 78–82 done.
    Stored {
        stock_server: String,
        server_password_wrapped: Option<String>,
        account_key_wrapped: Option<String>,
    },
}

impl Stage {
    /// In words, for the operator and the logs.
    pub fn describe(&self) -> String {
        match self {
            Stage::Checking => "checking (91, 92)".into(),
            Stage::AwaitingOperator => "awaiting review (93)".into(),
            Stage::Approved { note } => format!("approved: {note}"),
            Stage::Refused { refusal } => format!("refused: {refusal}"),
            Stage::Stored { stock_server, .. } => format!("stored on {stock_server}"),
        }
    }
}

/// One upload in the quarantine queue (74) and its outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadRecord {
    pub id: String,
    pub client_id: String,
    pub file_name: String,
    pub size: u64,
    pub sha256: String,
    pub password_id: Option<String>,
    pub created_at: u64,
    /// Results of each check so far: ("virus", "clean"), ("integrity", "png 640x480").
    pub checks: Vec<(String, String)>,
    pub stage: Stage,
    /// First upload: the account made on the stock server (so a retry does not make another).
    pub new_account: Option<NewAccount>,
    pub operator: Option<String>,
    /// The content disarm's result: what will be stored instead of the upload as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disarmed: Option<Disarmed>,
    /// Claim 6: the reduced image is visible only with the account's server password.
    #[serde(default)]
    pub private_thumbnail: bool,
    /// The address the upload came from: its fair share of the queue (issue 16, defect 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// The disarmed image that replaced the upload in quarantine (and goes to the stock server, 78).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Disarmed {
    /// Hex SHA-256 of the stored bytes.
    pub sha256: String,
    pub size: u64,
    /// Whether they differ from the upload.
    pub changed: bool,
    /// "png", "jpeg", ...
    pub format: String,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewAccount {
    pub stock_server: String,
    pub database_key: String,
    pub account_key_wrapped: String,
}

pub struct Db {
    db: Database,
}

impl Db {
    /// The database itself, for modules that keep their own tables (reduced images,
    /// templates: claims 6, 7).
    pub fn raw(&self) -> &Database {
        &self.db
    }

    /// One JSON value of a module's own table (reduced images, templates).
    pub fn get_json<T: DeserializeOwned>(
        &self,
        t: JsonTable,
        key: &str,
    ) -> Result<Option<T>, DbError> {
        get(&self.db, t, key)
    }

    pub fn put_json<T: Serialize>(&self, t: JsonTable, key: &str, v: &T) -> Result<(), DbError> {
        put(&self.db, t, key, v)
    }

    /// Every JSON value of a module's own table, in key order.
    pub fn all_json<T: DeserializeOwned>(&self, t: JsonTable) -> Result<Vec<T>, DbError> {
        all(&self.db, t)
    }
}

/// A table of JSON values under string keys.
pub type JsonTable = TableDefinition<'static, &'static str, &'static [u8]>;

fn get<T: DeserializeOwned>(db: &Database, t: JsonTable, key: &str) -> Result<Option<T>, DbError> {
    let r = db.begin_read()?;
    let table = match r.open_table(t) {
        Ok(table) => table,
        // A table nothing was written to yet is empty.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let v = table.get(key)?;
    Ok(match v {
        Some(v) => Some(serde_json::from_slice(v.value())?),
        None => None,
    })
}

fn put<T: Serialize>(db: &Database, t: JsonTable, key: &str, v: &T) -> Result<(), DbError> {
    let w = db.begin_write()?;
    w.open_table(t)?
        .insert(key, serde_json::to_vec(v)?.as_slice())?;
    w.commit()?;
    Ok(())
}

fn all<T: DeserializeOwned>(db: &Database, t: JsonTable) -> Result<Vec<T>, DbError> {
    let r = db.begin_read()?;
    let table = match r.open_table(t) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(vec![]),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for e in table.iter()? {
        let (_, v) = e?;
        out.push(serde_json::from_slice(v.value())?);
    }
    Ok(out)
}

impl Db {
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let db = Database::create(path)?;
        let w = db.begin_write()?;
        for t in [CLIENTS, PASSWORDS, TICKETS, UPLOADS] {
            w.open_table(t)?;
        }
        w.open_table(OWNER_NONCES)?;
        w.commit()?;
        Ok(Self { db })
    }

    /// 71: store the client's public key (idempotent: the id is its fingerprint).
    pub fn put_client(&self, client_id: &str, pem: &str) -> Result<(), DbError> {
        put(&self.db, CLIENTS, client_id, &pem)
    }

    pub fn client(&self, client_id: &str) -> Result<Option<String>, DbError> {
        get(&self.db, CLIENTS, client_id)
    }

    pub fn put_password(&self, id: &str, rec: &PasswordRecord) -> Result<(), DbError> {
        put(&self.db, PASSWORDS, id, rec)
    }

    pub fn password(&self, id: &str) -> Result<Option<PasswordRecord>, DbError> {
        get(&self.db, PASSWORDS, id)
    }

    /// Rotation (79–82 again): the new record and the removal of the old one in one commit.
    pub fn replace_password(
        &self,
        old_id: &str,
        new_id: &str,
        rec: &PasswordRecord,
    ) -> Result<(), DbError> {
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(PASSWORDS)?;
            t.remove(old_id)?;
            t.insert(new_id, serde_json::to_vec(rec)?.as_slice())?;
        }
        w.commit()?;
        Ok(())
    }

    pub fn put_ticket(&self, ticket: &str, t: &Ticket) -> Result<(), DbError> {
        put(&self.db, TICKETS, ticket, t)
    }

    /// Removes and returns a ticket: each ticket is good for exactly one upload.
    pub fn take_ticket(&self, ticket: &str) -> Result<Option<Ticket>, DbError> {
        let w = self.db.begin_write()?;
        let v = {
            let mut t = w.open_table(TICKETS)?;
            let v = t.remove(ticket)?;
            match v {
                Some(v) => Some(serde_json::from_slice(v.value())?),
                None => None,
            }
        };
        w.commit()?;
        Ok(v)
    }

    /// Drops expired tickets; returns how many.
    pub fn expire_tickets(&self, now: u64) -> Result<usize, DbError> {
        let w = self.db.begin_write()?;
        let n = {
            let mut t = w.open_table(TICKETS)?;
            let expired: Vec<String> = t
                .iter()?
                .filter_map(|e| e.ok())
                .filter(|(_, v)| {
                    serde_json::from_slice::<Ticket>(v.value())
                        .map(|t| t.expires_at < now)
                        .unwrap_or(true)
                })
                .map(|(k, _)| k.value().to_string())
                .collect();
            for k in &expired {
                t.remove(k.as_str())?;
            }
            expired.len()
        };
        w.commit()?;
        Ok(n)
    }

    /// Records an owner-request nonce until `forget_at`, durably, in the same transaction as
    /// the check that it is new. Returns false for a nonce already seen (a replay).
    pub fn claim_nonce(&self, nonce: &str, forget_at: u64) -> Result<bool, DbError> {
        let w = self.db.begin_write()?;
        let fresh = {
            let mut t = w.open_table(OWNER_NONCES)?;
            let seen = t.get(nonce)?.is_some();
            if !seen {
                t.insert(nonce, forget_at)?;
            }
            !seen
        };
        w.commit()?;
        Ok(fresh)
    }

    /// Forgets nonces whose requests are outside the freshness window anyway.
    pub fn expire_nonces(&self, now: u64) -> Result<usize, DbError> {
        let w = self.db.begin_write()?;
        let n = {
            let mut t = w.open_table(OWNER_NONCES)?;
            let before = t.len()?;
            t.retain(|_, forget_at| forget_at >= now)?;
            (before - t.len()?) as usize
        };
        w.commit()?;
        Ok(n)
    }

    /// Writes a new upload record (73, 74). Every later change of it goes through
    /// [`Db::transition`].
    pub fn put_upload(&self, rec: &UploadRecord) -> Result<(), DbError> {
        put(&self.db, UPLOADS, &rec.id, rec)
    }

    /// The one way an upload record changes once written: in one write transaction, read it,
    /// check that its stage is one `from` allows, let `step` change it (and do first what must
    /// happen before the change counts, such as the audit line), write it. redb has one writer
    /// at a time, so of two transitions from the same stage exactly one wins; the other gets
    /// [`TransitionError::Lost`] with the stage it found, and nothing of it is written (issue 18:
    /// two operators deciding at once, a decision racing the delivery).
    pub fn transition<E>(
        &self,
        id: &str,
        from: impl FnOnce(&Stage) -> bool,
        step: impl FnOnce(&mut UploadRecord) -> Result<(), E>,
    ) -> Result<UploadRecord, TransitionError<E>> {
        let w = self.db.begin_write().map_err(DbError::from)?;
        let rec = {
            let mut table = w.open_table(UPLOADS).map_err(DbError::from)?;
            let found: Option<UploadRecord> = match table.get(id).map_err(DbError::from)? {
                Some(v) => Some(serde_json::from_slice(v.value()).map_err(DbError::from)?),
                None => None,
            };
            let Some(mut rec) = found else {
                return Err(TransitionError::Missing(id.to_string()));
            };
            if !from(&rec.stage) {
                return Err(TransitionError::Lost {
                    id: id.to_string(),
                    stage: rec.stage,
                });
            }
            step(&mut rec).map_err(TransitionError::Step)?;
            let bytes = serde_json::to_vec(&rec).map_err(DbError::from)?;
            table.insert(id, bytes.as_slice()).map_err(DbError::from)?;
            rec
        };
        w.commit().map_err(DbError::from)?;
        Ok(rec)
    }

    pub fn upload(&self, id: &str) -> Result<Option<UploadRecord>, DbError> {
        get(&self.db, UPLOADS, id)
    }

    pub fn uploads(&self) -> Result<Vec<UploadRecord>, DbError> {
        all(&self.db, UPLOADS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16, defect 8: an owner request's nonce is remembered across a restart (reopen),
    /// until it is outside the freshness window anyway.
    #[test]
    fn owner_nonces_survive_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("db");
        let db = Db::open(&p).unwrap();
        assert!(db.claim_nonce("n1", 100).unwrap());
        assert!(!db.claim_nonce("n1", 100).unwrap(), "a replay");
        drop(db);
        let db = Db::open(&p).unwrap();
        assert!(
            !db.claim_nonce("n1", 100).unwrap(),
            "a replay after a restart"
        );
        assert!(db.claim_nonce("n2", 300).unwrap());
        assert_eq!(db.expire_nonces(200).unwrap(), 1);
        assert!(!db.claim_nonce("n2", 300).unwrap());
    }

    fn record(id: &str) -> UploadRecord {
        UploadRecord {
            id: id.into(),
            client_id: "c".into(),
            file_name: "a.png".into(),
            size: 1,
            sha256: "00".into(),
            password_id: None,
            created_at: 0,
            checks: vec![],
            stage: Stage::AwaitingOperator,
            new_account: None,
            operator: None,
            disarmed: None,
            private_thumbnail: false,
            source: None,
        }
    }

    /// Issue 18: of decisions racing from the same stage (an approve in the console, a reject
    /// from the CLI, a second approve) exactly one takes effect, and the losers learn what won.
    #[test]
    fn racing_decisions_93_have_exactly_one_winner() {
        let d = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(Db::open(&d.path().join("db")).unwrap());
        for round in 0..40 {
            let id = format!("u{round}");
            db.put_upload(&record(&id)).unwrap();
            let start = std::sync::Arc::new(std::sync::Barrier::new(6));
            let handles: Vec<_> = (0..6)
                .map(|k| {
                    let (db, start, id) = (db.clone(), start.clone(), id.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        db.transition(
                            &id,
                            |s| *s == Stage::AwaitingOperator,
                            |r| {
                                r.operator = Some(format!("op{k}"));
                                r.stage = if k % 2 == 0 {
                                    Stage::Approved { note: "n".into() }
                                } else {
                                    Stage::Refused {
                                        refusal: Refusal::Ethics("no".into()),
                                    }
                                };
                                Ok::<(), std::convert::Infallible>(())
                            },
                        )
                    })
                })
                .collect();
            let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let winners: Vec<&UploadRecord> =
                results.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(winners.len(), 1, "round {round}: {results:?}");
            let stored = db.upload(&id).unwrap().unwrap();
            assert_eq!(
                stored.operator, winners[0].operator,
                "the record is the winner's"
            );
            assert_eq!(stored.stage, winners[0].stage);
            for r in &results {
                match r {
                    Ok(_) => {}
                    Err(TransitionError::Lost { stage, .. }) => assert_eq!(*stage, stored.stage),
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }

    /// A step that fails (the audit trail cannot be written) changes nothing.
    #[test]
    fn a_failed_step_writes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("db")).unwrap();
        db.put_upload(&record("u")).unwrap();
        let r = db.transition(
            "u",
            |s| *s == Stage::AwaitingOperator,
            |r| {
                r.stage = Stage::Approved { note: "n".into() };
                Err("audit trail full")
            },
        );
        assert!(matches!(r, Err(TransitionError::Step("audit trail full"))));
        assert_eq!(
            db.upload("u").unwrap().unwrap().stage,
            Stage::AwaitingOperator
        );
        assert!(matches!(
            db.transition("nope", |_| true, |_| Ok::<(), ()>(())),
            Err(TransitionError::Missing(_))
        ));
    }

    #[test]
    fn tickets_are_single_use() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("db")).unwrap();
        db.put_ticket(
            "t",
            &Ticket {
                client_id: "c".into(),
                password_id: None,
                expires_at: 10,
                private_thumbnail: false,
            },
        )
        .unwrap();
        assert!(db.take_ticket("t").unwrap().is_some());
        assert!(db.take_ticket("t").unwrap().is_none());
        db.put_ticket(
            "old",
            &Ticket {
                client_id: "c".into(),
                password_id: None,
                expires_at: 5,
                private_thumbnail: false,
            },
        )
        .unwrap();
        db.put_ticket(
            "new",
            &Ticket {
                client_id: "c".into(),
                password_id: None,
                expires_at: 50,
                private_thumbnail: false,
            },
        )
        .unwrap();
        assert_eq!(db.expire_tickets(10).unwrap(), 1);
        assert!(db.take_ticket("new").unwrap().is_some());
    }

    #[test]
    fn password_rotation_replaces_atomically() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("db")).unwrap();
        let rec = PasswordRecord {
            hash: "h".into(),
            stock_server: "s".into(),
            database_key: "k".into(),
            owner: "o".into(),
            created_at: 1,
        };
        db.put_password("a", &rec).unwrap();
        db.replace_password("a", "b", &rec).unwrap();
        assert!(db.password("a").unwrap().is_none());
        assert!(db.password("b").unwrap().is_some());
    }
}
