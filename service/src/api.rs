//! The client API (HTTPS). Routes and messages: `stockade_proto::wire`.

use crate::db::{Stage, Ticket, UploadRecord};
use crate::{now_secs, password, review, Service};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::TryStreamExt;
use rand::RngCore;
use std::sync::Arc;
use stockade_proto::envelope::{self, EnvelopeError};
use stockade_proto::identity::ClientPublicKey;
use stockade_proto::reason::Refusal;
use stockade_proto::serve::{ApiError, PeerAddr};
use stockade_proto::wire::*;
use tokio::io::AsyncWriteExt;

type Res<T> = Result<T, ApiError>;

/// Owner requests are valid this many seconds either side of the service's clock.
const OWNER_WINDOW_SECS: u64 = 300;

pub fn router(svc: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/info", get(info))
        .route("/v1/register", post(register))
        .route("/v1/upload-instructions", post(upload_instruction))
        .route("/v1/uploads", post(upload))
        .route("/v1/uploads/{id}", get(upload_status))
        .route("/v1/downloads", post(download))
        .route("/v1/files", get(files))
        .route("/v1/files/delete", post(delete))
        .route("/v1/password/rotate", post(rotate))
        .merge(crate::reduced_image::router())
        .merge(crate::templates::router())
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(svc)
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn refused(status: StatusCode, r: Refusal) -> ApiError {
    ApiError::new(status, r)
}

fn db_err(e: crate::db::DbError) -> ApiError {
    ApiError::internal("service database", e)
}

fn bearer(headers: &HeaderMap) -> Res<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            refused(
                StatusCode::UNAUTHORIZED,
                Refusal::Password("a server password is required".into()),
            )
        })
}

pub(crate) fn check_password(
    svc: &Service,
    headers: &HeaderMap,
) -> Res<(String, crate::db::PasswordRecord)> {
    password::check(svc, bearer(headers)?).map_err(|r| refused(StatusCode::UNAUTHORIZED, r))
}

async fn info(State(svc): State<Arc<Service>>) -> Json<ServiceInfo> {
    Json(ServiceInfo {
        name: svc.config.name.clone(),
        upload_public_key: hex::encode(svc.upload_key.public()),
        max_upload_bytes: svc.config.limits.max_upload_bytes,
    })
}

/// 61 → 71: keep the client's public key.
async fn register(
    State(svc): State<Arc<Service>>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    Json(req): Json<RegisterRequest>,
) -> Res<Json<RegisterResponse>> {
    let key = ClientPublicKey::from_pem(&req.public_key_pem)
        .map_err(|e| ApiError::bad_request(format!("public key: {e}")))?;
    let client_id = key.fingerprint();
    // Issue 16, defect 3: new keys per source and hour are capped (registering again is free).
    if svc.db.client(&client_id).map_err(db_err)?.is_none() {
        svc.fair
            .register(peer.ip())
            .map_err(|r| refused(StatusCode::TOO_MANY_REQUESTS, r))?;
    }
    svc.db
        .put_client(&client_id, &key.to_pem())
        .map_err(db_err)?;
    tracing::info!(client = %client_id, "client registered (71)");
    Ok(Json(RegisterResponse { client_id }))
}

/// 72 (first upload) or 101, 106–109 (re-upload with the server password).
async fn upload_instruction(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    Json(req): Json<UploadInstructionRequest>,
) -> Res<Json<UploadInstruction>> {
    if svc.db.client(&req.client_id).map_err(db_err)?.is_none() {
        return Err(refused(
            StatusCode::FORBIDDEN,
            Refusal::BadRequest("unknown client: register first (61)".into()),
        ));
    }
    let password_id = if headers.contains_key(axum::http::header::AUTHORIZATION) {
        let (id, acct) = check_password(&svc, &headers)?;
        // Issue 16, defect 1: the upload is signed by `client_id`'s key (checked when it
        // arrives), so this is what stops a share holder from adding or replacing files.
        if acct.owner != req.client_id {
            return Err(refused(StatusCode::FORBIDDEN, password::not_owner_upload()));
        }
        Some(id)
    } else {
        None
    };
    let ticket = random_hex(16);
    let ttl = svc.config.ticket_ttl_secs;
    svc.db
        .put_ticket(
            &ticket,
            &Ticket {
                client_id: req.client_id,
                password_id,
                expires_at: now_secs() + ttl,
                private_thumbnail: req.private_thumbnail,
            },
        )
        .map_err(db_err)?;
    Ok(Json(UploadInstruction {
        ticket,
        upload_public_key: hex::encode(svc.upload_key.public()),
        max_upload_bytes: svc.config.limits.max_upload_bytes,
        expires_in_secs: ttl,
    }))
}

/// Removes a partial quarantine file however the handler exits.
struct PartGuard(Option<std::path::PathBuf>);
impl Drop for PartGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// 63 / 105 → 93 / 110 (open and verify) → 74 (quarantine).
async fn upload(
    State(svc): State<Arc<Service>>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    headers: HeaderMap,
    body: Body,
) -> Res<(StatusCode, Json<UploadAccepted>)> {
    let env = |d: String| refused(StatusCode::BAD_REQUEST, Refusal::Envelope(d));
    // A bounded review queue (74): a flood waits outside, not in the service's memory or disk.
    svc.refresh_quarantine_gauge();
    let queued = svc.metrics.quarantine.get().max(0) as usize;
    if queued >= svc.config.limits.review_queue_max {
        svc.metrics.uploads.with_label_values(&["queue_full"]).inc();
        return Err(refused(
            StatusCode::SERVICE_UNAVAILABLE,
            Refusal::TooLarge(format!(
                "the review queue is full ({queued} uploads waiting); try again later"
            )),
        ));
    }
    let header_ticket = headers
        .get(TICKET_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| env(format!("missing {TICKET_HEADER} header")))?
        .to_string();
    let bad_ticket =
        || env("upload ticket unknown, already used or expired (a replayed upload?)".into());
    // Consumed now: a ticket is good for one attempt, successful or not.
    let ticket = svc
        .db
        .take_ticket(&header_ticket)
        .map_err(db_err)?
        .ok_or_else(bad_ticket)?;
    if ticket.expires_at < now_secs() {
        return Err(bad_ticket());
    }
    // Issue 16, defect 3: this source's share of the review queue (and of first uploads).
    let places = svc
        .fair
        .reserve_upload(peer.ip(), ticket.password_id.is_none())
        .map_err(|r| {
            svc.metrics.uploads.with_label_values(&["busy"]).inc();
            refused(StatusCode::TOO_MANY_REQUESTS, r)
        })?;
    // Issue 16, defect 3: a body trickled to hold the connection is cut off.
    let body = stockade_proto::serve::paced(body, svc.config.fair_share.body_rate());
    let id = random_hex(16);
    let dir = svc.quarantine_dir();
    let part = dir.join(format!(".part-{id}"));
    let mut guard = PartGuard(Some(part.clone()));
    let mut file = tokio::fs::File::create(&part)
        .await
        .map_err(|e| ApiError::internal("quarantine file", e))?;
    let limit = svc.config.limits.max_upload_bytes;
    let mut reader =
        tokio_util::io::StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let manifest = match envelope::open_upload(&svc.upload_key, &mut reader, &mut file, limit).await
    {
        Ok(m) => m,
        Err(EnvelopeError::Chunk(stockade_proto::chunked::ChunkError::TooLarge(l))) => {
            svc.metrics.uploads.with_label_values(&["too_large"]).inc();
            return Err(refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                Refusal::TooLarge(format!("the image is over the {l}-byte upload limit")),
            ));
        }
        Err(e) => {
            svc.metrics.uploads.with_label_values(&["envelope"]).inc();
            return Err(env(e.to_string()));
        }
    };
    if manifest.ticket != header_ticket || manifest.client_id != ticket.client_id {
        svc.metrics.uploads.with_label_values(&["envelope"]).inc();
        return Err(env(
            "the signed manifest does not match this upload's ticket".into(),
        ));
    }
    valid_file_name(&manifest.file_name).map_err(|r| refused(StatusCode::BAD_REQUEST, r))?;
    let pem = svc
        .db
        .client(&ticket.client_id)
        .map_err(db_err)?
        .ok_or_else(|| env("unknown client".into()))?;
    let key =
        ClientPublicKey::from_pem(&pem).map_err(|e| ApiError::internal("stored client key", e))?;
    if let Err(e) = manifest.verify(&key) {
        svc.metrics.uploads.with_label_values(&["envelope"]).inc();
        return Err(env(e.to_string()));
    }
    file.flush()
        .await
        .map_err(|e| ApiError::internal("quarantine file", e))?;
    file.sync_all()
        .await
        .map_err(|e| ApiError::internal("quarantine file", e))?;
    drop(file);
    tokio::fs::rename(&part, svc.quarantine_path(&id))
        .await
        .map_err(|e| ApiError::internal("quarantine file", e))?;
    guard.0 = None;
    stockade_proto::fsutil::sync_dir(&dir).map_err(|e| ApiError::internal("quarantine dir", e))?;
    let rec = UploadRecord {
        id: id.clone(),
        client_id: ticket.client_id,
        file_name: manifest.file_name,
        size: manifest.size,
        sha256: manifest.sha256,
        password_id: ticket.password_id,
        created_at: now_secs(),
        checks: vec![("signature".into(), "verified".into())],
        stage: Stage::Checking,
        new_account: None,
        operator: None,
        disarmed: None,
        private_thumbnail: ticket.private_thumbnail,
        source: Some(peer.ip().to_canonical().to_string()),
    };
    svc.fair.hold(&id, places);
    if let Err(e) = svc.db.put_upload(&rec) {
        // Issue 16, defect 8: no record, so no file either (the start-up sweep is the backstop).
        svc.erase_quarantined(&id);
        return Err(db_err(e));
    }
    svc.metrics.upload_bytes.inc_by(rec.size);
    svc.refresh_quarantine_gauge();
    tracing::info!(upload = %id, size = rec.size, "upload quarantined for review (74)");
    tokio::spawn(review::run_checks(svc.clone(), id.clone()));
    Ok((StatusCode::ACCEPTED, Json(UploadAccepted { upload_id: id })))
}

/// 64–66, 77, 81, 82: where the upload is, and what the client gets.
async fn upload_status(
    State(svc): State<Arc<Service>>,
    Path(id): Path<String>,
) -> Res<Json<UploadStatus>> {
    let rec = svc
        .db
        .upload(&id)
        .map_err(db_err)?
        .ok_or_else(|| ApiError::not_found("no such upload"))?;
    Ok(Json(match rec.stage {
        Stage::Checking => UploadStatus::Pending {
            stage: "virus and integrity checks (91, 92)".into(),
        },
        Stage::AwaitingOperator => UploadStatus::Pending {
            stage: "awaiting operator review (93)".into(),
        },
        Stage::Approved { note } => UploadStatus::Approved { note },
        Stage::Refused { refusal } => UploadStatus::Refused { refusal },
        Stage::Stored {
            stock_server,
            server_password_wrapped,
            account_key_wrapped,
        } => UploadStatus::Stored {
            file_name: rec.file_name,
            size: rec.size,
            stock_server,
            server_password_wrapped,
            account_key_wrapped,
            disarmed: rec.disarmed.as_ref().is_some_and(|d| d.changed),
            stored_sha256: rec.disarmed.as_ref().map(|d| d.sha256.clone()),
            stored_size: rec.disarmed.as_ref().map(|d| d.size),
        },
    }))
}

/// 121 → 131–135: check the password and the destination, have the stock server push.
async fn download(
    State(svc): State<Arc<Service>>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    headers: HeaderMap,
    Json(req): Json<DownloadRequest>,
) -> Res<Json<DownloadResponse>> {
    let count = |r: &str| svc.metrics.downloads.with_label_values(&[r]).inc();
    let (_, acct) = check_password(&svc, &headers).inspect_err(|_| count("password"))?;
    // 121: the push goes only to the address the request came from, so nobody can aim the
    // stock server at a third party.
    if req.destination.ip().to_canonical() != peer.ip().to_canonical() {
        count("destination");
        return Err(refused(
            StatusCode::FORBIDDEN,
            Refusal::Destination(format!(
                "mismatch: the destination {} is not this connection's address {}",
                req.destination.ip(),
                peer.ip()
            )),
        ));
    }
    valid_file_name(&req.file_name).map_err(|r| refused(StatusCode::BAD_REQUEST, r))?;
    let stock_err = |e: crate::stock_client::StockError| match e {
        crate::stock_client::StockError::Refused(_, r @ Refusal::NotFound(_)) => {
            refused(StatusCode::NOT_FOUND, r)
        }
        crate::stock_client::StockError::Refused(_, r @ Refusal::Busy(_)) => {
            refused(StatusCode::TOO_MANY_REQUESTS, r)
        }
        e => refused(
            StatusCode::SERVICE_UNAVAILABLE,
            Refusal::StockUnavailable(e.to_string()),
        ),
    };
    let identity = svc
        .stock
        .identity(&acct.stock_server)
        .await
        .map_err(stock_err)
        .inspect_err(|_| count("stock"))?;
    let nonce = random_hex(16);
    let push = PushRequest {
        file_name: req.file_name,
        destination: req.destination,
        nonce: nonce.clone(),
    };
    svc.stock
        .push(&acct.stock_server, &acct.database_key, &push)
        .await
        .map_err(stock_err)
        .inspect_err(|_| count("stock"))?;
    count("ok");
    Ok(Json(DownloadResponse {
        nonce,
        stock_public_key: identity.public_key,
    }))
}

async fn files(State(svc): State<Arc<Service>>, headers: HeaderMap) -> Res<Json<FileList>> {
    let (_, acct) = check_password(&svc, &headers)?;
    svc.stock
        .list(&acct.stock_server, &acct.database_key)
        .await
        .map(Json)
        .map_err(|e| {
            refused(
                StatusCode::SERVICE_UNAVAILABLE,
                Refusal::StockUnavailable(e.to_string()),
            )
        })
}

/// Delete and rotate: the password opens the account, and the request must be signed by the
/// account owner's registered key, fresh, and not replayed.
fn check_owner(
    svc: &Service,
    headers: &HeaderMap,
    req: &OwnerRequest,
    action: &str,
) -> Res<(String, crate::db::PasswordRecord)> {
    let (pw_id, acct) = check_password(svc, headers)?;
    let deny = |d: &str| refused(StatusCode::FORBIDDEN, Refusal::Password(d.into()));
    if req.action != action {
        return Err(ApiError::bad_request(format!("action must be {action:?}")));
    }
    if req.client_id != acct.owner {
        return Err(deny(
            "only the account owner may do this (a shared password is not enough)",
        ));
    }
    let now = now_secs();
    if req.timestamp + OWNER_WINDOW_SECS < now || req.timestamp > now + OWNER_WINDOW_SECS {
        return Err(deny("request timestamp outside the 5-minute window"));
    }
    let pem = svc
        .db
        .client(&acct.owner)
        .map_err(db_err)?
        .ok_or_else(|| deny("owner key missing"))?;
    let key =
        ClientPublicKey::from_pem(&pem).map_err(|e| ApiError::internal("stored client key", e))?;
    let sig = data_encoding::BASE64
        .decode(req.signature.as_bytes())
        .map_err(|_| deny("owner signature does not verify"))?;
    key.verify(&req.signing_bytes(), &sig)
        .map_err(|_| deny("owner signature does not verify"))?;
    // Kept in the database (issue 16, defect 8): a restart does not reopen the window.
    if req.nonce.is_empty() || req.nonce.len() > 128 {
        return Err(ApiError::bad_request("nonce must be 1 to 128 characters"));
    }
    if !svc
        .db
        .claim_nonce(&req.nonce, now + 2 * OWNER_WINDOW_SECS)
        .map_err(db_err)?
    {
        return Err(deny("request replayed"));
    }
    Ok((pw_id, acct))
}

async fn delete(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    Json(req): Json<OwnerRequest>,
) -> Res<StatusCode> {
    let (_, acct) = check_owner(&svc, &headers, &req, "delete")?;
    let name = req
        .file_name
        .clone()
        .ok_or_else(|| ApiError::bad_request("file_name is required"))?;
    valid_file_name(&name).map_err(|r| refused(StatusCode::BAD_REQUEST, r))?;
    let deleted = svc
        .stock
        .delete(&acct.stock_server, &acct.database_key, &name)
        .await;
    // Claim 6: the reduced image goes with its image (also when the stock server no longer
    // had the image: nothing may outlive it).
    let gone = match &deleted {
        Ok(()) => true,
        Err(crate::stock_client::StockError::Refused(_, r)) => matches!(r, Refusal::NotFound(_)),
        Err(_) => false,
    };
    if gone {
        crate::reduced_image::remove(&svc, &acct.stock_server, &acct.database_key, &name)
            .map_err(|e| ApiError::internal("deleting the reduced image", e))?;
    }
    match deleted {
        Ok(()) => {
            tracing::info!("file deleted by its owner");
            // The deletion is done; a trail that cannot be written is reported, loudly.
            if let Err(e) = svc.audit.append(crate::audit::Event {
                event: "deleted",
                account: acct.owner.clone(),
                file_name: Some(name.clone()),
                operator: Some(format!("owner {}", req.client_id)),
                reason: Some("deleted by the account owner".into()),
                ..Default::default()
            }) {
                tracing::error!(error = %e, "the deletion is not in the audit trail");
            }
            Ok(StatusCode::NO_CONTENT)
        }
        Err(crate::stock_client::StockError::Refused(_, r @ Refusal::NotFound(_))) => {
            Err(refused(StatusCode::NOT_FOUND, r))
        }
        Err(e) => Err(refused(
            StatusCode::SERVICE_UNAVAILABLE,
            Refusal::StockUnavailable(e.to_string()),
        )),
    }
}

/// 79–82 again: a new server password; the old one stops working in the same commit.
async fn rotate(
    State(svc): State<Arc<Service>>,
    headers: HeaderMap,
    Json(req): Json<OwnerRequest>,
) -> Res<Json<RotateResponse>> {
    let (old_id, acct) = check_owner(&svc, &headers, &req, "rotate")?;
    let pem = svc
        .db
        .client(&acct.owner)
        .map_err(db_err)?
        .ok_or_else(|| ApiError::internal("owner key", "missing"))?;
    let owner =
        ClientPublicKey::from_pem(&pem).map_err(|e| ApiError::internal("stored client key", e))?;
    let pw = password::issue(
        &svc,
        &acct.stock_server,
        &acct.database_key,
        &acct.owner,
        Some(&old_id),
    )
    .map_err(db_err)?;
    let wrapped = owner
        .wrap_key(pw.reveal().as_bytes())
        .map_err(|e| ApiError::internal("wrap password", e))?;
    tracing::info!("server password rotated");
    Ok(Json(RotateResponse {
        server_password_wrapped: data_encoding::BASE64.encode(&wrapped),
    }))
}
