//! Fig. 5, the review of a quarantined upload (74): 91 virus check (clamd), 92 integrity check
//! (full decode within limits), 93 ethics (an operator decides, or the lab's explicit
//! auto-approve switch). All yes → 94, delivered to the stock server (78); any no → 95: the
//! upload is erased (76) and the client is told which check failed and why (77).
//! A check that cannot run is a "no": nothing is stored that was not fully reviewed.

pub mod integrity;
pub mod virus;

use crate::db::{NewAccount, Stage, UploadRecord};
use crate::stock_client::StockError;
use crate::Service;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockade_proto::identity::ClientPublicKey;
use stockade_proto::reason::Refusal;

/// Runs 91 and 92 on a new upload, then 93 (operator or policy).
pub async fn run_checks(svc: Arc<Service>, id: String) {
    let _permit = svc
        .review_slots
        .acquire()
        .await
        .expect("semaphore is never closed");
    let Some(mut rec) = svc.db.upload(&id).ok().flatten() else {
        return;
    };
    if rec.stage != Stage::Checking {
        return;
    }
    let started = Instant::now();
    let path = svc.quarantine_path(&id);
    // 91: virus check.
    let addr = virus::ClamdAddr::parse(&svc.config.clamd.address);
    match virus::scan_file(&addr, &path, svc.config.clamd.timeout_secs).await {
        Ok(virus::Scan::Clean) => {
            svc.metrics.clamd_up.set(1);
            svc.metrics
                .review_decisions
                .with_label_values(&["virus", "pass"])
                .inc();
            rec.checks.push(("virus".into(), "clean".into()));
        }
        Ok(virus::Scan::Found(sig)) => {
            svc.metrics.clamd_up.set(1);
            return refuse(&svc, rec, "virus", Refusal::Virus(sig)).await;
        }
        Err(e) => {
            if matches!(
                e,
                virus::ScanError::Unreachable(_) | virus::ScanError::Timeout(_)
            ) {
                svc.metrics.clamd_up.set(0);
            }
            return refuse(&svc, rec, "virus", Refusal::ScanUnavailable(e.to_string())).await;
        }
    }
    // 92: integrity check, off the async threads and under a deadline.
    let limits = svc.config.limits.clone();
    let (p2, name) = (path.clone(), rec.file_name.clone());
    let deadline = Duration::from_secs(limits.decode_timeout_secs);
    let res = tokio::time::timeout(
        deadline,
        tokio::task::spawn_blocking(move || integrity::check(&p2, &name, &limits)),
    )
    .await;
    match res {
        Ok(Ok(Ok(detail))) => {
            svc.metrics
                .review_decisions
                .with_label_values(&["integrity", "pass"])
                .inc();
            rec.checks.push(("integrity".into(), detail));
        }
        Ok(Ok(Err(detail))) => {
            return refuse(&svc, rec, "integrity", Refusal::Corrupt(detail)).await
        }
        Ok(Err(e)) => {
            return refuse(
                &svc,
                rec,
                "integrity",
                Refusal::Corrupt(format!("decoder failed: {e}")),
            )
            .await
        }
        Err(_) => {
            return refuse(
                &svc,
                rec,
                "integrity",
                Refusal::Corrupt(format!(
                    "limits: decoding took over {} s",
                    deadline.as_secs()
                )),
            )
            .await
        }
    }
    svc.metrics
        .review_seconds
        .observe(started.elapsed().as_secs_f64());
    // 93: ethics.
    if svc.config.review.auto_approve_ethics {
        rec.checks
            .push(("ethics".into(), "auto-approved by policy (lab)".into()));
        let _ = svc.db.put_upload(&rec);
        approve(svc.clone(), id, "auto-approve policy".into()).await;
    } else {
        rec.stage = Stage::AwaitingOperator;
        if let Err(e) = svc.db.put_upload(&rec) {
            tracing::error!(error = %e, "recording review state");
        }
        tracing::info!(upload = %id, "awaiting operator review (93)");
    }
}

/// 95 → 76, 77: erase the upload and record why.
pub async fn refuse(svc: &Service, mut rec: UploadRecord, check: &str, refusal: Refusal) {
    svc.metrics
        .review_decisions
        .with_label_values(&[check, refusal.code()])
        .inc();
    svc.metrics
        .uploads
        .with_label_values(&[refusal.code()])
        .inc();
    tracing::info!(upload = %rec.id, %check, code = refusal.code(), "upload refused (95, 76, 77)");
    rec.stage = Stage::Refused { refusal };
    // Record the outcome first, then erase: a crash in between leaves a refused record whose
    // file the startup sweep removes, never a file without a decision.
    if let Err(e) = svc.db.put_upload(&rec) {
        tracing::error!(error = %e, "recording refusal");
    }
    svc.erase_quarantined(&rec.id);
}

/// 94: approved (by the operator or policy); deliver it.
pub async fn approve(svc: Arc<Service>, id: String, operator: String) {
    let Some(mut rec) = svc.db.upload(&id).ok().flatten() else {
        return;
    };
    if rec.stage != Stage::AwaitingOperator && rec.stage != Stage::Checking {
        return;
    }
    svc.metrics
        .review_decisions
        .with_label_values(&["ethics", "pass"])
        .inc();
    rec.stage = Stage::Approved {
        note: "delivering to the stock server".into(),
    };
    rec.operator = Some(operator);
    if let Err(e) = svc.db.put_upload(&rec) {
        tracing::error!(error = %e, "recording approval");
        return;
    }
    tokio::spawn(deliver(svc, id));
}

/// 78–82, retried while the stock server is unreachable: the upload stays in quarantine,
/// approved, and the client sees that it is waiting; it is never dropped silently.
pub async fn deliver(svc: Arc<Service>, id: String) {
    let started = Instant::now();
    let mut backoff = Duration::from_millis(500);
    loop {
        match deliver_once(&svc, &id).await {
            Ok(()) => {
                svc.metrics
                    .delivery_seconds
                    .observe(started.elapsed().as_secs_f64());
                return;
            }
            Err(DeliverError::Refused(r)) => {
                if let Some(rec) = svc.db.upload(&id).ok().flatten() {
                    refuse(&svc, rec, "delivery", r).await;
                }
                return;
            }
            Err(DeliverError::Retry(note)) => {
                tracing::warn!(upload = %id, %note, "delivery postponed");
                if let Some(mut rec) = svc.db.upload(&id).ok().flatten() {
                    rec.stage = Stage::Approved { note: note.clone() };
                    let _ = svc.db.put_upload(&rec);
                }
                let mut stop = svc.shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stockade_proto::serve::stopped(&mut stop) => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

enum DeliverError {
    Retry(String),
    Refused(Refusal),
}

impl From<StockError> for DeliverError {
    fn from(e: StockError) -> Self {
        match e {
            StockError::Refused(_, r) => DeliverError::Refused(r),
            e => DeliverError::Retry(e.to_string()),
        }
    }
}

async fn deliver_once(svc: &Service, id: &str) -> Result<(), DeliverError> {
    let db_err = |e: crate::db::DbError| DeliverError::Retry(e.to_string());
    let mut rec = svc
        .db
        .upload(id)
        .map_err(db_err)?
        .ok_or_else(|| DeliverError::Retry("upload record vanished".into()))?;
    let path = svc.quarantine_path(id);
    let (stock, db_key, first) = match (&rec.password_id, &rec.new_account) {
        // 111, 112: re-upload to the account the password names.
        (Some(_), _) => {
            let acct = crate::password::account_of(svc, &rec)
                .ok_or_else(|| DeliverError::Refused(crate::password::refusal()))?;
            (acct.stock_server, acct.database_key, false)
        }
        // A first upload whose account was already made (a retry after a crash or outage).
        (None, Some(a)) => (a.stock_server.clone(), a.database_key.clone(), true),
        // 85–87: first upload; make the account on a stock server (Fig. 12: several).
        (None, None) => {
            let owner = svc
                .db
                .client(&rec.client_id)
                .map_err(db_err)?
                .ok_or_else(|| DeliverError::Retry("client key missing".into()))?;
            let stock = svc.pick_stock(&rec.client_id);
            let made = svc.stock.create_account(&stock, &owner).await?;
            rec.new_account = Some(NewAccount {
                stock_server: stock.clone(),
                database_key: made.database_key.clone(),
                account_key_wrapped: made.account_key_wrapped,
            });
            svc.db.put_upload(&rec).map_err(db_err)?;
            (stock, made.database_key, true)
        }
    };
    // 78: send the decrypted, reviewed image.
    let stored = svc
        .stock
        .store(&stock, &db_key, &rec.file_name, &path)
        .await?;
    let (pw_wrapped, key_wrapped) = if first {
        // 79, 80: issue the server password; 81: wrap it to the client's registered key.
        let owner_pem = svc
            .db
            .client(&rec.client_id)
            .map_err(db_err)?
            .ok_or_else(|| DeliverError::Retry("client key missing".into()))?;
        let owner = ClientPublicKey::from_pem(&owner_pem)
            .map_err(|e| DeliverError::Retry(e.to_string()))?;
        let pw =
            crate::password::issue(svc, &stock, &db_key, &rec.client_id, None).map_err(db_err)?;
        let wrapped = owner
            .wrap_key(pw.reveal().as_bytes())
            .map_err(|e| DeliverError::Retry(e.to_string()))?;
        rec.password_id = Some(pw.id_text());
        (
            Some(data_encoding::BASE64.encode(&wrapped)),
            rec.new_account
                .as_ref()
                .map(|a| a.account_key_wrapped.clone()),
        )
    } else {
        (None, None)
    };
    rec.stage = Stage::Stored {
        stock_server: stock.clone(),
        server_password_wrapped: pw_wrapped,
        account_key_wrapped: key_wrapped,
    };
    svc.db.put_upload(&rec).map_err(db_err)?;
    // 78: the quarantined copy is erased after delivery.
    svc.erase_quarantined(id);
    svc.metrics.uploads.with_label_values(&["stored"]).inc();
    tracing::info!(upload = %id, stock = %stock, object = %stored.object_id, "delivered to the stock server (78-82)");
    Ok(())
}
