//! The stock server's API, reachable only by the service (mutual TLS with the service-client
//! CA; behind firewall 45). Routes are listed in `stockade_proto::wire`.

use crate::database_key::{now_secs, AccountError, ObjectRecord};
use crate::store::ObjectStore;
use crate::Stock;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use sha2::Sha512;
use std::sync::Arc;
use stockade_proto::chunked::{self, ChunkHeader};
use stockade_proto::hashio::HashingWriter;
use stockade_proto::identity::ClientPublicKey;
use stockade_proto::reason::Refusal;
use stockade_proto::serve::ApiError;
use stockade_proto::wire::{
    self, CreateAccountRequest, CreateAccountResponse, FileEntry, FileList, PushRequest,
    StockIdentity, StoredObject,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Res<T> = Result<T, ApiError>;

pub fn router(stock: Arc<Stock>) -> Router {
    Router::new()
        .route("/v1/identity", get(identity))
        .route("/v1/accounts", post(create_account))
        .route("/v1/accounts/{db}/objects", get(list))
        .route(
            "/v1/accounts/{db}/objects/{name}",
            put(store).delete(delete),
        )
        .route("/v1/accounts/{db}/push", post(push))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(stock)
}

fn account_err(e: AccountError) -> ApiError {
    match e {
        AccountError::UnknownAccount => ApiError::not_found("unknown database key"),
        e @ AccountError::Exists(_) => {
            ApiError::new(StatusCode::CONFLICT, Refusal::Exists(e.to_string()))
        }
        e => ApiError::internal("account database", e),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AccountError> + Send + 'static,
) -> Res<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal("database task", e))?
        .map_err(account_err)
}

async fn identity(State(s): State<Arc<Stock>>) -> Json<StockIdentity> {
    Json(StockIdentity {
        name: s.config.name.clone(),
        public_key: hex::encode(s.signing.public()),
    })
}

/// 85–87: a new account; the account key goes back wrapped to the owner's RSA key, so the
/// service only relays it (an RSA public-key operation: no private key is used here).
async fn create_account(
    State(s): State<Arc<Stock>>,
    Json(req): Json<CreateAccountRequest>,
) -> Res<Json<CreateAccountResponse>> {
    // The template account (claim 7): the service chose the key and keeps it; no owner to wrap to.
    let given = match &req.account_key {
        Some(b64) => {
            let raw = zeroize::Zeroizing::new(
                data_encoding::BASE64
                    .decode(b64.as_bytes())
                    .map_err(|_| ApiError::bad_request("account_key is not base64"))?,
            );
            let key: [u8; 32] = raw
                .as_slice()
                .try_into()
                .map_err(|_| ApiError::bad_request("account_key must be 32 bytes"))?;
            Some(zeroize::Zeroizing::new(key))
        }
        None => None,
    };
    let owner = if given.is_some() && req.owner_public_key_pem.is_empty() {
        None
    } else {
        Some(
            ClientPublicKey::from_pem(&req.owner_public_key_pem)
                .map_err(|e| ApiError::bad_request(format!("owner public key: {e}")))?,
        )
    };
    let s2 = s.clone();
    let (db_key, key) = match given {
        Some(k) => blocking(move || s2.accounts.create_with_key(k)).await?,
        None => blocking(move || s2.accounts.create()).await?,
    };
    let wrapped = match owner {
        Some(owner) => owner
            .wrap_key(key.as_ref())
            .map_err(|e| ApiError::internal("wrap account key", e))?,
        None => Vec::new(),
    };
    s.metrics.accounts_created.inc();
    s.metrics.accounts.inc();
    tracing::info!(database_key = %db_key, "account created (85, 86)");
    Ok(Json(CreateAccountResponse {
        database_key: db_key,
        account_key_wrapped: data_encoding::BASE64.encode(&wrapped),
    }))
}

/// The store's own headers: which upload this is, and whether its owner signed it.
fn store_headers(headers: &HeaderMap) -> Res<(Option<String>, bool)> {
    let upload_id = match headers.get(wire::UPLOAD_ID_HEADER) {
        None => None,
        Some(v) => {
            let v = v
                .to_str()
                .ok()
                .filter(|v| {
                    (1..=64).contains(&v.len())
                        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{} must be 1 to 64 letters, digits or '-'",
                        wire::UPLOAD_ID_HEADER
                    ))
                })?;
            Some(v.to_string())
        }
    };
    let may_replace = match headers.get(wire::REPLACE_HEADER) {
        None => false,
        Some(v) if v == "owner" => true,
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "{} may only be \"owner\"",
                wire::REPLACE_HEADER
            )))
        }
    };
    Ok((upload_id, may_replace))
}

/// 78 → 85, 86 (and 112 → 115): encrypt the image under the account key and store it durably.
/// A taken name is replaced only when the owner signed the upload, or by a retry of the same
/// upload (issue 16, defect 1).
async fn store(
    State(s): State<Arc<Stock>>,
    Path((db, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Res<(StatusCode, Json<StoredObject>)> {
    wire::valid_file_name(&name).map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r))?;
    let (upload_id, may_replace) = store_headers(&headers)?;
    let started = std::time::Instant::now();
    let s2 = s.clone();
    let db2 = db.clone();
    let key = blocking(move || s2.accounts.account_key(&db2)).await?;
    // Refused before the body is read; `put_object` checks again, atomically, at the end.
    if !may_replace {
        let (s2, db2, name2) = (s.clone(), db.clone(), name.clone());
        if let Some(old) = blocking(move || s2.accounts.get_object(&db2, &name2)).await? {
            if !old.yields_to(upload_id.as_deref(), may_replace) {
                return Err(account_err(AccountError::Exists(name)));
            }
        }
    }
    let mut object_id = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut object_id);
    let oid = hex::encode(object_id);
    let max = s.config.max_object_bytes;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let mut reader = tokio_util::io::StreamReader::new(stream).take(max + 1);
    let pending = s
        .store
        .create(&db)
        .await
        .map_err(|e| ApiError::internal("create object", e))?;
    // Large buffered writes: each tokio::fs write is a hop to the blocking pool.
    let mut w =
        HashingWriter::<_, Sha512>::new(tokio::io::BufWriter::with_capacity(1 << 20, pending));
    let header = ChunkHeader {
        object_id,
        chunk_size: chunked::DEFAULT_CHUNK_SIZE,
    };
    let size = chunked::seal_stream(&key, header, &mut reader, &mut w)
        .await
        .map_err(|e| ApiError::bad_request(format!("receiving object: {e}")))?;
    if size > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::TooLarge(format!("object over {max} bytes")),
        ));
    }
    let stored_size = w.written();
    let (mut buffered, digest) = w.finish();
    buffered
        .flush()
        .await
        .map_err(|e| ApiError::internal("write object", e))?;
    let pending = buffered.into_inner();
    s.store
        .commit(pending, &db, &oid)
        .await
        .map_err(|e| ApiError::internal("commit object", e))?;
    let rec = ObjectRecord {
        object_id: oid.clone(),
        stored_size,
        size,
        digest: hex::encode(&digest),
        stored_at: now_secs(),
        upload_id,
    };
    let (s2, db2, name2, rec2) = (s.clone(), db.clone(), name.clone(), rec.clone());
    let old = match blocking(move || s2.accounts.put_object(&db2, &name2, &rec2, may_replace)).await
    {
        Ok(old) => old,
        Err(e) => {
            // Taken meanwhile by another upload: the object just written belongs to no name.
            if let Err(re) = s.store.remove(&db, &oid).await {
                tracing::warn!(error = %re, "removing an object that was not filed");
            }
            return Err(e);
        }
    };
    if let Some(old) = old {
        // Replaced under the same name: the old object is unreferenced now.
        if let Err(e) = s.store.remove(&db, &old.object_id).await {
            tracing::warn!(error = %e, "removing replaced object");
        }
    }
    s.metrics.objects_stored.inc();
    s.metrics.bytes_stored.inc_by(size);
    s.metrics
        .store_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(database_key = %db, object_id = %oid, size, "object stored (85, 86)");
    Ok((
        StatusCode::CREATED,
        Json(StoredObject {
            object_id: oid,
            size,
            digest: rec.digest,
        }),
    ))
}

async fn list(State(s): State<Arc<Stock>>, Path(db): Path<String>) -> Res<Json<FileList>> {
    let s2 = s.clone();
    let db2 = db.clone();
    if !blocking(move || s2.accounts.exists(&db2)).await? {
        return Err(ApiError::not_found("unknown database key"));
    }
    let items = blocking(move || s.accounts.list_objects(&db)).await?;
    Ok(Json(FileList {
        files: items
            .into_iter()
            .map(|(name, r)| FileEntry {
                name,
                size: r.size,
                stored_at: r.stored_at,
            })
            .collect(),
    }))
}

async fn delete(
    State(s): State<Arc<Stock>>,
    Path((db, name)): Path<(String, String)>,
) -> Res<StatusCode> {
    let (s2, db2, name2) = (s.clone(), db.clone(), name.clone());
    match blocking(move || s2.accounts.delete_object(&db2, &name2)).await? {
        Some(rec) => {
            s.store
                .remove(&db, &rec.object_id)
                .await
                .map_err(|e| ApiError::internal("remove object", e))?;
            s.metrics.objects_deleted.inc();
            tracing::info!(database_key = %db, "object deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(ApiError::not_found(format!("no file named {name:?}"))),
    }
}

/// 135 → 137: accept the service's instruction and push in the background. The push runs
/// after the answer so the service can hand the nonce to the client, who is already listening.
async fn push(
    State(s): State<Arc<Stock>>,
    Path(db): Path<String>,
    Json(req): Json<PushRequest>,
) -> Res<StatusCode> {
    wire::valid_file_name(&req.file_name).map_err(|r| ApiError::new(StatusCode::BAD_REQUEST, r))?;
    if req.nonce.len() != 32 || hex::decode(&req.nonce).is_err() {
        return Err(ApiError::bad_request(
            "nonce must be 16 random bytes in hex",
        ));
    }
    let (s2, db2, name2) = (s.clone(), db.clone(), req.file_name.clone());
    let rec = blocking(move || s2.accounts.get_object(&db2, &name2))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no file named {:?}", req.file_name)))?;
    let mut dest = req.destination;
    dest.set_port(s.config.push_port);
    // Issue 16, defect 2: a bounded queue and a cap per destination, before any task exists.
    let admitted = crate::push::admit(&s.push_admission, dest.ip()).map_err(|r| {
        s.metrics.pushes.with_label_values(&["busy"]).inc();
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, r)
    })?;
    tokio::spawn(crate::push::push_object(
        s,
        db,
        req.file_name,
        rec,
        dest,
        req.nonce,
        admitted,
    ));
    Ok(StatusCode::ACCEPTED)
}
