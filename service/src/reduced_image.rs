//! Reduced images (claims 6, 14; Fig. 12): when an approved upload has been stored on the stock
//! server (78), the service makes a reduced image of it — from the very bytes that were stored
//! — and keeps it: the PNG as a file in `<data_dir>/reduced/images/` (written atomically and
//! durably) and its metadata in the service database. As in the patent, reduced images are open
//! to every client; an upload made with `--private-thumbnail` keeps its reduced image visible
//! only to requests bearing that account's server password. Deleting the image deletes its
//! reduced image.
//!
//! Routes (client API): `GET /v1/reduced?scope=all|public|account`, `GET /v1/reduced/{id}`.

use crate::db::UploadRecord;
use crate::Service;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use redb::TableDefinition;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use stockade_proto::reason::Refusal;
use stockade_proto::serve::ApiError;
use stockade_proto::wire::{ReducedImageEntry, ReducedImageList};

/// id → [`ReducedRecord`] (JSON).
const REDUCED: TableDefinition<&str, &[u8]> = TableDefinition::new("reduced_images");

/// `reduced_images:` in the service config.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReducedImagesConfig {
    /// The long side of every reduced image, in pixels (claim 6's "lower resolution").
    #[serde(default = "default_long_side")]
    pub long_side: u32,
}

fn default_long_side() -> u32 {
    stockade_imaging::DEFAULT_LONG_SIDE
}

impl Default for ReducedImagesConfig {
    fn default() -> Self {
        Self {
            long_side: default_long_side(),
        }
    }
}

impl ReducedImagesConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(16..=4096).contains(&self.long_side) {
            return Err(format!(
                "reduced_images.long_side must be 16..4096 pixels, not {}",
                self.long_side
            ));
        }
        Ok(())
    }
}

/// What the service keeps about one reduced image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReducedRecord {
    pub id: String,
    pub name: String,
    /// The account it belongs to (never shown to clients).
    pub stock_server: String,
    pub database_key: String,
    pub private: bool,
    pub width: u32,
    pub height: u32,
    pub source_width: u32,
    pub source_height: u32,
    pub colour: String,
    pub created_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReducedError {
    #[error("database: {0}")]
    Db(String),
    #[error("reduced image file {0}: {1}")]
    Io(String, std::io::Error),
    #[error("the stored image does not decode: {0}")]
    Decode(#[from] stockade_imaging::DecodeError),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(impl From<$t> for ReducedError { fn from(e: $t) -> Self { Self::Db(e.to_string()) } })*};
}
db_err!(
    crate::db::DbError,
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error
);

pub fn images_dir(svc: &Service) -> PathBuf {
    svc.config.data_dir.join("reduced").join("images")
}

fn file_of(svc: &Service, id: &str) -> PathBuf {
    images_dir(svc).join(format!("{id}.png"))
}

/// The stable public id of (account, file name): keyed with the service's secret pepper, so it
/// tells nobody the database key, and the same name in the same account keeps its id (a
/// re-upload replaces its reduced image).
pub fn id_of(svc: &Service, stock_server: &str, database_key: &str, name: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"stockade-reduced-id-v1\0");
    h.update(svc.pepper.as_slice());
    for part in [stock_server, database_key, name] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(&h.finalize()[..16])
}

/// The decoder limits of the review (92) apply to reduced images too.
pub fn limits(svc: &Service) -> stockade_imaging::Limits {
    stockade_imaging::Limits {
        max_width: svc.config.limits.max_width,
        max_height: svc.config.limits.max_height,
        max_alloc: svc.config.limits.max_decoded_bytes,
    }
}

/// Claims 6, 14: makes and keeps the reduced image of an upload just stored (78) from `stored`,
/// the bytes the stock server received.
pub async fn make_for_upload(
    svc: &Service,
    rec: &UploadRecord,
    stock_server: &str,
    database_key: &str,
    stored: &Path,
) -> Result<ReducedRecord, ReducedError> {
    let id = id_of(svc, stock_server, database_key, &rec.file_name);
    let (path, long, lim) = (
        stored.to_path_buf(),
        svc.config.reduced_images.long_side,
        limits(svc),
    );
    let reduced =
        tokio::task::spawn_blocking(move || stockade_imaging::reduce_file(&path, long, lim))
            .await
            .map_err(|e| ReducedError::Db(format!("reduce task: {e}")))??;
    let record = ReducedRecord {
        id: id.clone(),
        name: rec.file_name.clone(),
        stock_server: stock_server.into(),
        database_key: database_key.into(),
        private: rec.private_thumbnail,
        width: reduced.width,
        height: reduced.height,
        source_width: reduced.source_width,
        source_height: reduced.source_height,
        colour: reduced.colour.describe(),
        created_at: crate::now_secs(),
    };
    put(svc, &record, &reduced.png)?;
    tracing::info!(reduced = %id, width = reduced.width, height = reduced.height, private = record.private, "reduced image kept (claim 6)");
    Ok(record)
}

/// File first (atomic, fsynced), then the record: a crash leaves at worst an unlisted file
/// that the next write of the same id replaces.
pub fn put(svc: &Service, record: &ReducedRecord, png: &[u8]) -> Result<(), ReducedError> {
    let dir = images_dir(svc);
    std::fs::create_dir_all(&dir).map_err(|e| ReducedError::Io(dir.display().to_string(), e))?;
    let file = file_of(svc, &record.id);
    stockade_proto::fsutil::write_atomic(&file, png, 0o640)
        .map_err(|e| ReducedError::Io(file.display().to_string(), e))?;
    svc.db.put_json(REDUCED, &record.id, record)?;
    Ok(())
}

/// Deletes the reduced image of (account, name), if any: the record first, then the file.
pub fn remove(
    svc: &Service,
    stock_server: &str,
    database_key: &str,
    name: &str,
) -> Result<bool, ReducedError> {
    let id = id_of(svc, stock_server, database_key, name);
    let w = svc.db.raw().begin_write()?;
    let existed = w.open_table(REDUCED)?.remove(id.as_str())?.is_some();
    w.commit()?;
    let file = file_of(svc, &id);
    match stockade_proto::fsutil::remove_durable(&file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ReducedError::Io(file.display().to_string(), e)),
    }
    if existed {
        tracing::info!(reduced = %id, "reduced image deleted with its image");
    }
    Ok(existed)
}

pub fn all(svc: &Service) -> Result<Vec<ReducedRecord>, ReducedError> {
    Ok(svc.db.all_json(REDUCED)?)
}

pub fn get_record(svc: &Service, id: &str) -> Result<Option<ReducedRecord>, ReducedError> {
    Ok(svc.db.get_json(REDUCED, id)?)
}

/// Who is asking: the account of the presented server password, if any.
type Viewer = Option<(String, String)>;

fn viewer(svc: &Service, headers: &HeaderMap) -> Result<Viewer, ApiError> {
    let Some(v) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bearer = v
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, crate::password::refusal()))?;
    let (_, rec) = crate::password::check(svc, bearer)
        .map_err(|r| ApiError::new(StatusCode::UNAUTHORIZED, r))?;
    Ok(Some((rec.stock_server, rec.database_key)))
}

fn is_own(r: &ReducedRecord, v: &Viewer) -> bool {
    v.as_ref()
        .is_some_and(|(s, d)| *s == r.stock_server && *d == r.database_key)
}

/// Claim 6: who may see a reduced image: everyone, unless private; then only its account.
pub fn visible(r: &ReducedRecord, v: &Viewer) -> bool {
    !r.private || is_own(r, v)
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub scope: Option<String>,
}

pub fn router() -> Router<Arc<Service>> {
    Router::new()
        .route("/v1/reduced", get(list))
        .route("/v1/reduced/{id}", get(fetch))
}

fn internal(e: ReducedError) -> ApiError {
    ApiError::internal("reduced images", e)
}

async fn list(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Result<Json<ReducedImageList>, ApiError> {
    let v = viewer(&svc, &headers)?;
    let scope = q.scope.as_deref().unwrap_or("all");
    if !matches!(scope, "all" | "public" | "account") {
        return Err(ApiError::bad_request(format!(
            "scope must be all, public or account, not {scope:?}"
        )));
    }
    if scope == "account" && v.is_none() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            Refusal::Password("the account's reduced images need its server password".into()),
        ));
    }
    let mut images: Vec<ReducedImageEntry> = all(&svc)
        .map_err(internal)?
        .into_iter()
        .filter(|r| visible(r, &v))
        .filter(|r| match scope {
            "public" => !r.private,
            "account" => is_own(r, &v),
            _ => true,
        })
        .map(|r| ReducedImageEntry {
            own: is_own(&r, &v),
            id: r.id,
            name: r.name,
            width: r.width,
            height: r.height,
            source_width: r.source_width,
            source_height: r.source_height,
            private: r.private,
            colour: r.colour,
            created_at: r.created_at,
        })
        .collect();
    images.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    Ok(Json(ReducedImageList { images }))
}

async fn fetch(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    UrlPath(id): UrlPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    let v = viewer(&svc, &headers)?;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::bad_request("a reduced image id is 32 hex digits"));
    }
    // A private reduced image of another account is answered exactly like a missing one.
    let not_found = || ApiError::not_found(format!("no reduced image {id}"));
    let rec = get_record(&svc, &id)
        .map_err(internal)?
        .filter(|r| visible(r, &v))
        .ok_or_else(not_found)?;
    let png = tokio::fs::read(file_of(&svc, &rec.id))
        .await
        .map_err(|e| ApiError::internal("reduced image file", e))?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(private: bool) -> ReducedRecord {
        ReducedRecord {
            id: "0".repeat(32),
            name: "cat.png".into(),
            stock_server: "stock-1".into(),
            database_key: "k1".into(),
            private,
            width: 256,
            height: 171,
            source_width: 1200,
            source_height: 800,
            colour: String::new(),
            created_at: 0,
        }
    }

    /// Claim 6: public to every client; a private one only to its own account.
    #[test]
    fn visibility_claim_6() {
        let own = Some(("stock-1".to_string(), "k1".to_string()));
        let other = Some(("stock-2".to_string(), "k1".to_string()));
        assert!(visible(&rec(false), &None));
        assert!(visible(&rec(false), &other));
        assert!(!visible(&rec(true), &None));
        assert!(
            !visible(&rec(true), &other),
            "same database key, other stock server"
        );
        assert!(visible(&rec(true), &own));
        assert!(is_own(&rec(false), &own) && !is_own(&rec(false), &None));
    }

    #[test]
    fn config_long_side_default_and_bounds() {
        let c: ReducedImagesConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c.long_side, 256);
        let c: ReducedImagesConfig = serde_json::from_str(r#"{"long_side": 512}"#).unwrap();
        assert!(c.validate().is_ok());
        let c: ReducedImagesConfig = serde_json::from_str(r#"{"long_side": 8}"#).unwrap();
        assert!(c.validate().unwrap_err().contains("16..4096"));
        assert!(serde_json::from_str::<ReducedImagesConfig>(r#"{"size": 1}"#).is_err());
    }
}
