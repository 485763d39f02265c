//! Templates (claims 7, 15; Fig. 12): background images for composition. Only an operator adds
//! one (`stockade-service template add`, over the admin socket). It goes through the review as
//! an upload does: virus (91), integrity (92) with the content disarm (`review::disarm`; what
//! is stored is the disarmed copy), 91 again on the disarmed bytes; then full-size to a stock
//! server under the template account, whose account key the service generates and keeps
//! (`template-account.key`, 0600, in the data directory) and sends with the account over
//! mutual TLS. The service keeps the template's reduced image (and its mask's).
//!
//! Every client may list templates (the key comes wrapped to its registered RSA key), fetch
//! their reduced images and have them pushed (Fig. 12, 137) — no server password, but only to
//! the requester's own address (121's destination rule).

use crate::review;
use crate::Service;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{self, post};
use axum::{Extension, Json, Router};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use stockade_imaging::{Slot, SlotError};
use stockade_proto::identity::ClientPublicKey;
use stockade_proto::reason::Refusal;
use stockade_proto::serve::{ApiError, PeerAddr};
use stockade_proto::wire::{
    valid_file_name, MaskInfo, PushRequest, TemplateEntry, TemplateList, TemplatePart,
    TemplatePushRequest, TemplatePushResponse, TemplateSlot,
};
use zeroize::Zeroizing;

/// name → [`TemplateRecord`].
const TEMPLATES: TableDefinition<&str, &[u8]> = TableDefinition::new("templates");
/// stock server name → database key of its template account.
const TEMPLATE_ACCOUNTS: TableDefinition<&str, &str> = TableDefinition::new("template_accounts");

pub const KEY_FILE: &str = "template-account.key";
/// Template names leave room for the object-name prefixes.
const MAX_NAME: usize = 180;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TemplateRecord {
    pub entry: TemplateEntry,
    pub database_key: String,
    /// Object names on the stock server.
    pub object: String,
    pub mask_object: Option<String>,
}

/// What the operator asked for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddTemplate {
    pub file: PathBuf,
    pub name: String,
    /// `x,y,w,h` in template pixels (upright).
    pub slot: String,
    pub mask: Option<PathBuf>,
    /// Fig. 12: the stock server to hold it; default: chosen by name.
    pub stock_server: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Slot(#[from] SlotError),
    #[error("a template named {0:?} already exists (names are unique)")]
    Exists(String),
    #[error("{what} refused by the review: {refusal}")]
    Refused { what: String, refusal: Refusal },
    #[error("stock server: {0}")]
    Stock(#[from] crate::stock_client::StockError),
    #[error("{0}")]
    Internal(String),
}

macro_rules! internal {
    ($($t:ty),*) => {$(impl From<$t> for TemplateError { fn from(e: $t) -> Self { Self::Internal(e.to_string()) } })*};
}
internal!(
    crate::db::DbError,
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error,
    std::io::Error
);

fn reduced_dir(svc: &Service) -> PathBuf {
    svc.config.data_dir.join("reduced").join("templates")
}

fn reduced_file(svc: &Service, name: &str, part: TemplatePart) -> PathBuf {
    reduced_dir(svc).join(match part {
        TemplatePart::Template => format!("{name}.png"),
        TemplatePart::Mask => format!("{name}.mask.png"),
    })
}

/// The template account key: generated once, kept 0600 in the data directory.
pub fn account_key(svc: &Service) -> Result<Zeroizing<[u8; 32]>, TemplateError> {
    let path = svc.config.data_dir.join(KEY_FILE);
    if !path.exists() {
        let mut k = Zeroizing::new([0u8; 32]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, k.as_mut());
        stockade_proto::fsutil::write_atomic(&path, k.as_ref(), 0o600)?;
    }
    let bytes = Zeroizing::new(std::fs::read(&path)?);
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| TemplateError::Internal(format!("{} is not 32 bytes", path.display())))?;
    Ok(Zeroizing::new(key))
}

pub fn get(svc: &Service, name: &str) -> Result<Option<TemplateRecord>, TemplateError> {
    Ok(svc.db.get_json(TEMPLATES, name)?)
}

pub fn all(svc: &Service) -> Result<Vec<TemplateRecord>, TemplateError> {
    Ok(svc.db.all_json(TEMPLATES)?)
}

fn account_on(svc: &Service, stock: &str) -> Result<Option<String>, TemplateError> {
    let r = svc.db.raw().begin_read()?;
    let t = match r.open_table(TEMPLATE_ACCOUNTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let v = t.get(stock)?;
    Ok(v.map(|v| v.value().to_string()))
}

/// The template account on `stock`, made (85, 86 with the service's key) on first use.
async fn ensure_account(svc: &Service, stock: &str) -> Result<String, TemplateError> {
    if let Some(k) = account_on(svc, stock)? {
        return Ok(k);
    }
    let key = account_key(svc)?;
    let made = svc.stock.create_template_account(stock, &key).await?;
    let w = svc.db.raw().begin_write()?;
    w.open_table(TEMPLATE_ACCOUNTS)?
        .insert(stock, made.database_key.as_str())?;
    w.commit()?;
    tracing::info!(stock = %stock, "template account created (claim 7)");
    Ok(made.database_key)
}

/// Where `add` copies the operator's files while they are reviewed; swept at start
/// ([`sweep_review_dir`]).
pub fn review_dir(svc: &Service) -> PathBuf {
    svc.config.data_dir.join("template-review")
}

/// What `add` calls its files in [`review_dir`]: `template-<16 hex>` or `mask-<16 hex>`, the
/// operator's file as copied; the same with [`DISARMED`] appended, its disarmed copy.
const REVIEW_KINDS: [&str; 2] = ["template", "mask"];
const DISARMED: &str = ".disarmed";
const REVIEW_HEX: usize = 16;

fn review_file_name(what: &str) -> String {
    debug_assert!(REVIEW_KINDS.contains(&what));
    format!(
        "{what}-{}",
        hex::encode(rand::random::<[u8; REVIEW_HEX / 2]>())
    )
}

/// Whether `name` is one `add` made (see [`review_file_name`]).
fn is_review_file(name: &str) -> bool {
    REVIEW_KINDS.iter().any(|kind| {
        let Some(rest) = name.strip_prefix(kind).and_then(|r| r.strip_prefix('-')) else {
            return false;
        };
        // `get`, not slicing: a name from disk may have a multi-byte character there.
        let (Some(hex), Some(tail)) = (rest.get(..REVIEW_HEX), rest.get(REVIEW_HEX..)) else {
            return false;
        };
        hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            && (tail.is_empty() || tail == DISARMED)
    })
}

/// What [`sweep_review_dir`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub removed: usize,
    /// Entries `add` did not make, left in place.
    pub left: usize,
}

/// At start: removes what a crash of `add` left in `dir` (the copies it makes there are
/// removed when it ends). Only files named as `add` names them are removed; anything else is
/// left alone, with a warning. A missing directory is nothing to sweep.
pub fn sweep_review_dir(dir: &Path) -> std::io::Result<Swept> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Swept::default()),
        Err(e) => return Err(e),
    };
    let mut swept = Swept::default();
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let ours = name.to_str().is_some_and(is_review_file) && !e.file_type()?.is_dir();
        if ours {
            std::fs::remove_file(e.path())?;
            swept.removed += 1;
        } else {
            swept.left += 1;
            tracing::warn!(
                path = %e.path().display(),
                "not a file `template add` made: left alone in the template review directory"
            );
        }
    }
    if swept.removed > 0 {
        stockade_proto::fsutil::sync_dir(dir)?;
    }
    tracing::info!(
        dir = %dir.display(),
        removed = swept.removed,
        left = swept.left,
        "template review leftovers removed"
    );
    Ok(swept)
}

/// The review of a file the operator gave, as an upload's (Fig. 5): copied into the service's
/// own review directory, 91 on the copy, 92 with the content disarm (the same step as an
/// upload's, `review::disarm_step`), 91 again on the disarmed bytes. Returns the disarmed
/// copy: what is stored. Every file made is added to `made` (the caller removes them).
async fn review(
    svc: &Service,
    src: &Path,
    what: &str,
    dir: &Path,
    made: &mut Vec<PathBuf>,
) -> Result<PathBuf, TemplateError> {
    let name = src
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("template")
        .to_string();
    let base = review_file_name(what);
    let copy = dir.join(&base);
    made.push(copy.clone());
    tokio::fs::copy(src, &copy)
        .await
        .map_err(|e| TemplateError::Invalid(format!("reading {}: {e}", src.display())))?;
    let refused = |refusal: Refusal| TemplateError::Refused {
        what: format!("{what} {}", src.display()),
        refusal,
    };
    // 91.
    review::clamd_scan(svc, &copy, "").await.map_err(refused)?;
    // 92 and the content disarm, holding a review slot (it bounds concurrent decodes).
    let disarmed = dir.join(format!("{base}{DISARMED}"));
    made.push(disarmed.clone());
    let _permit = svc
        .review_slots
        .acquire()
        .await
        .expect("semaphore is never closed");
    let limits = svc.config.limits.clone();
    match review::disarm_step(copy.clone(), name, limits, disarmed.clone(), None).await {
        review::DisarmStep::Done(o) => {
            tracing::info!(%what, file = %src.display(), integrity = %o.integrity, disarm = %o.summary, "template file disarmed (92)");
        }
        review::DisarmStep::Refused(r) => return Err(refused(r)),
        review::DisarmStep::TimedOut(r, decoder) => {
            // The decoder may still write the disarmed copy: let it end before it is removed.
            let _ = decoder.await;
            return Err(refused(r));
        }
    }
    // 91 again, on the exact bytes that will be stored.
    review::clamd_scan(svc, &disarmed, " (in the disarmed image to be stored)")
        .await
        .map_err(refused)?;
    Ok(disarmed)
}

/// `stockade-service template add`.
pub async fn add(svc: &Service, req: AddTemplate) -> Result<TemplateRecord, TemplateError> {
    valid_file_name(&req.name)
        .map_err(|r| TemplateError::Invalid(format!("template name: {}", r.detail())))?;
    if req.name.len() > MAX_NAME {
        return Err(TemplateError::Invalid(format!(
            "template name: at most {MAX_NAME} characters"
        )));
    }
    let slot = Slot::parse(&req.slot)?;
    if get(svc, &req.name)?.is_some() {
        return Err(TemplateError::Exists(req.name));
    }
    let stock = match &req.stock_server {
        Some(s) if svc.stock.names().any(|n| n == s) => s.clone(),
        Some(s) => {
            return Err(TemplateError::Invalid(format!(
                "no stock server named {s:?} (configured: {})",
                svc.stock.names().collect::<Vec<_>>().join(", ")
            )))
        }
        None => svc.pick_stock(&format!("template:{}", req.name)),
    };
    let dir = review_dir(svc);
    tokio::fs::create_dir_all(&dir).await?;
    let mut copies = Vec::new();
    let result = add_reviewed(svc, &req, slot, &stock, &dir, &mut copies).await;
    for c in copies {
        let _ = std::fs::remove_file(c);
    }
    result
}

async fn add_reviewed(
    svc: &Service,
    req: &AddTemplate,
    slot: Slot,
    stock: &str,
    dir: &Path,
    copies: &mut Vec<PathBuf>,
) -> Result<TemplateRecord, TemplateError> {
    // What is stored (and reduced) from here on is the disarmed copy of each file.
    let t_copy = review(svc, &req.file, "template", dir, copies).await?;
    let m_copy = match &req.mask {
        Some(m) => Some(review(svc, m, "mask", dir, copies).await?),
        None => None,
    };
    // Sizes (upright, as composition sees them) and reduced images.
    let (long, lim) = (
        svc.config.reduced_images.long_side,
        crate::reduced_image::limits(svc),
    );
    let (tc, mc) = (t_copy.clone(), m_copy.clone());
    let (reduced, mask) = tokio::task::spawn_blocking(move || {
        let t = stockade_imaging::reduce_file(&tc, long, lim)?;
        let m = match mc {
            Some(m) => {
                let bytes = std::fs::read(&m)
                    .map_err(|e| stockade_imaging::DecodeError::Io(m.display().to_string(), e))?;
                let full = stockade_imaging::decode_bytes(&bytes, lim, Some(long))?;
                let (png, _, _) = stockade_imaging::reduce::reduce_mask(&bytes, long, lim)?;
                Some((png, full.source_width, full.source_height))
            }
            None => None,
        };
        Ok::<_, stockade_imaging::DecodeError>((t, m))
    })
    .await
    .map_err(|e| TemplateError::Internal(e.to_string()))?
    .map_err(|e| TemplateError::Refused {
        what: "template".into(),
        refusal: Refusal::Corrupt(e.to_string()),
    })?;
    slot.check(reduced.source_width, reduced.source_height)?;
    let db_key = ensure_account(svc, stock).await?;
    let object = format!("template-{}", req.name);
    // The template account is the service's own, and the operator asked for this name:
    // re-adding a template replaces it.
    svc.stock
        .store(stock, &db_key, &object, &t_copy, None, true)
        .await?;
    let mask_object = match &m_copy {
        Some(m) => {
            let o = format!("mask-{}", req.name);
            svc.stock.store(stock, &db_key, &o, m, None, true).await?;
            Some(o)
        }
        None => None,
    };
    let rdir = reduced_dir(svc);
    std::fs::create_dir_all(&rdir)?;
    stockade_proto::fsutil::write_atomic(
        &reduced_file(svc, &req.name, TemplatePart::Template),
        &reduced.png,
        0o640,
    )?;
    if let Some((png, _, _)) = &mask {
        stockade_proto::fsutil::write_atomic(
            &reduced_file(svc, &req.name, TemplatePart::Mask),
            png,
            0o640,
        )?;
    }
    let record = TemplateRecord {
        entry: TemplateEntry {
            name: req.name.clone(),
            width: reduced.source_width,
            height: reduced.source_height,
            slot: TemplateSlot {
                x: slot.x,
                y: slot.y,
                w: slot.w,
                h: slot.h,
            },
            mask: mask.as_ref().map(|(_, w, h)| MaskInfo {
                width: *w,
                height: *h,
            }),
            reduced_width: reduced.width,
            reduced_height: reduced.height,
            stock_server: stock.to_string(),
            colour: reduced.colour.describe(),
            created_at: crate::now_secs(),
        },
        database_key: db_key,
        object,
        mask_object,
    };
    // Names are unique: the insert checks again inside the write transaction.
    let w = svc.db.raw().begin_write()?;
    {
        let mut t = w.open_table(TEMPLATES)?;
        if t.get(req.name.as_str())?.is_some() {
            return Err(TemplateError::Exists(req.name.clone()));
        }
        t.insert(req.name.as_str(), serde_json::to_vec(&record)?.as_slice())?;
    }
    w.commit()?;
    tracing::info!(template = %req.name, stock = %stock, "template added (claim 7)");
    Ok(record)
}

pub fn router() -> Router<Arc<Service>> {
    Router::new()
        .route("/v1/templates", routing::get(list))
        .route("/v1/templates/push", post(push))
        .route("/v1/templates/{name}/reduced", routing::get(reduced))
        .route("/v1/templates/{name}/mask", routing::get(reduced_mask))
}

fn internal(e: TemplateError) -> ApiError {
    ApiError::internal("templates", e)
}

fn missing(name: &str) -> ApiError {
    ApiError::not_found(format!("no template named {name:?}"))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    pub client_id: Option<String>,
}

async fn list(
    State(svc): State<Arc<Service>>,
    Query(q): Query<ListQuery>,
) -> Result<Json<TemplateList>, ApiError> {
    let mut templates: Vec<TemplateEntry> = all(&svc)
        .map_err(internal)?
        .into_iter()
        .map(|r| r.entry)
        .collect();
    templates.sort_by(|a, b| a.name.cmp(&b.name));
    // The template key, wrapped to the asking client's registered key (an RSA public-key
    // operation only): only that client can open it.
    let template_key_wrapped = match &q.client_id {
        Some(id) if !templates.is_empty() => {
            match svc
                .db
                .client(id)
                .map_err(|e| ApiError::internal("service database", e))?
            {
                Some(pem) => {
                    let key = ClientPublicKey::from_pem(&pem)
                        .map_err(|e| ApiError::internal("stored client key", e))?;
                    let k = account_key(&svc).map_err(internal)?;
                    let wrapped = key
                        .wrap_key(k.as_ref())
                        .map_err(|e| ApiError::internal("wrap template key", e))?;
                    Some(data_encoding::BASE64.encode(&wrapped))
                }
                None => {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        Refusal::BadRequest("unknown client: register first (61)".into()),
                    ))
                }
            }
        }
        _ => None,
    };
    Ok(Json(TemplateList {
        templates,
        template_key_wrapped,
    }))
}

async fn serve_reduced(
    svc: &Service,
    name: &str,
    part: TemplatePart,
) -> Result<impl IntoResponse, ApiError> {
    let rec = get(svc, name)
        .map_err(internal)?
        .ok_or_else(|| missing(name))?;
    if part == TemplatePart::Mask && rec.mask_object.is_none() {
        return Err(ApiError::not_found(format!(
            "template {name:?} has no mask"
        )));
    }
    let png = tokio::fs::read(reduced_file(svc, name, part))
        .await
        .map_err(|e| ApiError::internal("reduced template file", e))?;
    Ok(([(header::CONTENT_TYPE, "image/png")], png))
}

async fn reduced(
    State(svc): State<Arc<Service>>,
    UrlPath(name): UrlPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    serve_reduced(&svc, &name, TemplatePart::Template).await
}

async fn reduced_mask(
    State(svc): State<Arc<Service>>,
    UrlPath(name): UrlPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    serve_reduced(&svc, &name, TemplatePart::Mask).await
}

/// Fig. 12, 135 → 137 for a template: no server password, but the push goes only to the
/// address the request came from.
async fn push(
    State(svc): State<Arc<Service>>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    headers: axum::http::HeaderMap,
    Json(req): Json<TemplatePushRequest>,
) -> Result<Json<TemplatePushResponse>, ApiError> {
    // Issue 16, defect 2: a push costs a stock server slot, so only an account holder (any
    // valid server password: templates are for composing with one's own images) starts one.
    crate::api::check_password(&svc, &headers)?;
    if req.destination.ip().to_canonical() != peer.ip().to_canonical() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            Refusal::Destination(format!(
                "mismatch: the destination {} is not this connection's address {}",
                req.destination.ip(),
                peer.ip()
            )),
        ));
    }
    let rec = get(&svc, &req.template)
        .map_err(internal)?
        .ok_or_else(|| missing(&req.template))?;
    let object = match req.part {
        TemplatePart::Template => rec.object.clone(),
        TemplatePart::Mask => rec.mask_object.clone().ok_or_else(|| {
            ApiError::not_found(format!("template {:?} has no mask", req.template))
        })?,
    };
    let stock = &rec.entry.stock_server;
    let unavailable = |e: crate::stock_client::StockError| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            Refusal::StockUnavailable(e.to_string()),
        )
    };
    let identity = svc.stock.identity(stock).await.map_err(unavailable)?;
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    svc.stock
        .push(
            stock,
            &rec.database_key,
            &PushRequest {
                file_name: object.clone(),
                destination: req.destination,
                nonce: nonce.clone(),
            },
        )
        .await
        .map_err(unavailable)?;
    Ok(Json(TemplatePushResponse {
        nonce,
        stock_public_key: identity.public_key,
        file_name: object,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_file_names_are_recognised_and_nothing_else() {
        for kind in REVIEW_KINDS {
            let n = review_file_name(kind);
            assert!(is_review_file(&n), "{n}");
            assert!(is_review_file(&format!("{n}{DISARMED}")), "{n}");
        }
        for n in [
            "template-0123456789abcde",
            "template-0123456789abcde\u{e9}.disarmed",
            "template-0123456789ABCDEF",
            "template-0123456789abcdefa",
            "template-0123456789abcdef.bak",
            "mask-0123456789abcdeg",
            "thumb-0123456789abcdef",
            "template-",
            "frame.png",
            ".tmp-xyz",
        ] {
            assert!(!is_review_file(n), "{n}");
        }
    }

    #[test]
    fn sweep_removes_only_what_add_left() {
        let d = tempfile::tempdir().unwrap();
        let ours = [
            "template-0123456789abcdef",
            "template-0123456789abcdef.disarmed",
            "mask-fedcba9876543210.disarmed",
        ];
        for f in ours {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        std::fs::write(d.path().join("notes.txt"), b"operator's").unwrap();
        // A directory is never removed, whatever its name.
        std::fs::create_dir(d.path().join("mask-0123456789abcdef")).unwrap();
        assert_eq!(
            sweep_review_dir(d.path()).unwrap(),
            Swept {
                removed: 3,
                left: 2
            }
        );
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["mask-0123456789abcdef", "notes.txt"]);
        // Nothing to sweep: no directory yet.
        assert_eq!(
            sweep_review_dir(&d.path().join("missing")).unwrap(),
            Swept::default()
        );
    }
}
