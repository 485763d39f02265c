//! Fig. 5, the review of a quarantined upload (74): 91 virus check (clamd), 92 integrity check
//! (full decode within limits, then the content disarm of `disarm`), 93 ethics (an operator decides, or the lab's explicit
//! auto-approve switch). All yes → 94, delivered to the stock server (78); any no → 95: the
//! upload is erased (76) and the client is told which check failed and why (77).
//! A check that cannot run is a "no": nothing is stored that was not fully reviewed.

pub mod disarm;
pub mod integrity;
pub mod virus;

use crate::db::{NewAccount, Stage, TransitionError, UploadRecord};
use crate::stock_client::StockError;
use crate::Service;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockade_proto::identity::ClientPublicKey;
use stockade_proto::reason::Refusal;

/// Runs 91 on the upload as received, 92 with the content disarm, 91 again on the disarmed
/// bytes, then 93 (operator or policy). The disarmed copy then replaces the upload in
/// quarantine: it is what the operator previews and what goes to the stock server (78).
pub async fn run_checks(svc: Arc<Service>, id: String) {
    // The review slot bounds concurrent decodes: it is held until the decoder has really
    // stopped, also when its deadline has passed.
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
    // 92, its cheap part first (type, name, the size the header declares): a bomb is refused
    // before clamd, which inflates image data itself, or a decoder spends time on it.
    let (src, name, limits) = (
        path.clone(),
        rec.file_name.clone(),
        svc.config.limits.clone(),
    );
    let pre = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&src)
            .map_err(|e| integrity::Failure::Corrupt(format!("unreadable: {e}")))?;
        integrity::precheck(&bytes, &name, &limits)
    })
    .await;
    match pre {
        Ok(Ok(())) => {}
        Ok(Err(f)) => return refuse_or_hold(&svc, rec, "integrity", f.refusal()).await,
        Err(e) => {
            return refuse_or_hold(
                &svc,
                rec,
                "integrity",
                Refusal::Corrupt(format!("decoder failed: {e}")),
            )
            .await
        }
    }
    // 91: virus check on the upload as received.
    if let Err(r) = scan(&svc, &path, "virus", "").await {
        return refuse_or_hold(&svc, rec, "virus", r).await;
    }
    rec.checks.push(("virus".into(), "clean".into()));
    // 92 and the disarm, off the async threads and under a deadline.
    let outcome = match disarm_step(
        path.clone(),
        rec.file_name.clone(),
        svc.config.limits.clone(),
        svc.disarm_part_path(&id),
        Some(svc.preview_path(&id)),
    )
    .await
    {
        DisarmStep::Done(o) => o,
        DisarmStep::Refused(r) => return refuse_or_hold(&svc, rec, "integrity", r).await,
        DisarmStep::TimedOut(r, decoder) => {
            refuse_or_hold(&svc, rec, "integrity", r).await;
            // Keep the slot until the decoder thread ends, then sweep what it wrote.
            let _ = decoder.await;
            svc.erase_quarantined(&id);
            return;
        }
    };
    svc.metrics
        .review_decisions
        .with_label_values(&["integrity", "pass"])
        .inc();
    rec.checks.push(("integrity".into(), outcome.integrity));
    rec.checks.push(("disarm".into(), outcome.summary));
    // 91 again, on the exact bytes that will be stored.
    let part = svc.disarm_part_path(&id);
    if let Err(r) = scan(
        &svc,
        &part,
        "virus_stored",
        " (in the disarmed image to be stored)",
    )
    .await
    {
        return refuse_or_hold(&svc, rec, "virus", r).await;
    }
    rec.checks
        .push(("virus (stored bytes)".into(), "clean".into()));
    // The disarmed copy replaces the upload; from here on only it exists.
    if let Err(e) = std::fs::rename(&part, &path)
        .and_then(|()| stockade_proto::fsutil::sync_dir(&svc.quarantine_dir()))
    {
        tracing::error!(upload = %id, error = %e, "replacing the upload with its disarmed copy");
        return refuse_or_hold(
            &svc,
            rec,
            "integrity",
            Refusal::ScanUnavailable(format!("storing the disarmed copy failed: {e}")),
        )
        .await;
    }
    rec.disarmed = Some(outcome.record);
    svc.metrics
        .review_seconds
        .observe(started.elapsed().as_secs_f64());
    // 93: ethics.
    if svc.config.review.auto_approve_ethics {
        rec.checks
            .push(("ethics".into(), "auto-approved by policy (lab)".into()));
        if let Err(e) = approve(svc.clone(), rec, "auto-approve policy".into()).await {
            tracing::error!(upload = %id, error = %e, "not approved by policy; the review re-runs at the next start");
        }
    } else {
        let checked = rec.stage.clone();
        let r = svc.db.transition(
            &id,
            |s| same_stage(s, &checked),
            |stored| {
                rec.stage = Stage::AwaitingOperator;
                *stored = rec;
                Ok::<(), std::convert::Infallible>(())
            },
        );
        match r {
            Ok(_) => tracing::info!(upload = %id, "awaiting operator review (93)"),
            Err(e) => tracing::error!(upload = %id, error = %e, "recording review state"),
        }
    }
}

/// What the blocking disarm step hands back (the bytes are already on disk).
pub(crate) struct DisarmDone {
    pub integrity: String,
    pub summary: String,
    pub record: crate::db::Disarmed,
}

/// How [`disarm_step`] ended.
pub(crate) enum DisarmStep {
    Done(DisarmDone),
    /// 92 said no (or the decoder failed): nothing was kept.
    Refused(Refusal),
    /// Over the decode deadline: refused, but the decoder thread may still be running and may
    /// yet write the disarmed copy; await the handle (holding the review slot) before sweeping.
    TimedOut(
        Refusal,
        tokio::task::JoinHandle<Result<DisarmDone, integrity::Failure>>,
    ),
}

/// 92 and the content disarm (`disarm`) of the file `src`, off the async threads and under the
/// decode deadline: the disarmed copy is written to `part` (and the operator's preview to
/// `preview`). Every upload and every template (`crate::templates`) goes through this; the
/// caller then scans `part` again (91) before it is stored.
pub(crate) async fn disarm_step(
    src: PathBuf,
    name: String,
    limits: crate::config::Limits,
    part: PathBuf,
    preview: Option<PathBuf>,
) -> DisarmStep {
    let deadline = Duration::from_secs(limits.decode_timeout_secs);
    let mut task = tokio::task::spawn_blocking(move || {
        disarm_to_files(&src, &name, &limits, deadline, &part, preview.as_deref())
    });
    match tokio::time::timeout(deadline, &mut task).await {
        Ok(Ok(Ok(o))) => DisarmStep::Done(o),
        Ok(Ok(Err(f))) => DisarmStep::Refused(f.refusal()),
        Ok(Err(e)) => DisarmStep::Refused(Refusal::Corrupt(format!("decoder failed: {e}"))),
        Err(_) => DisarmStep::TimedOut(
            Refusal::Corrupt(format!(
                "limits: decoding took over {} s",
                deadline.as_secs()
            )),
            task,
        ),
    }
}

/// 92 + disarm: reads the upload, writes the disarmed copy to `part` and the operator's
/// preview to `preview` (if asked for), both fsynced.
fn disarm_to_files(
    src: &Path,
    name: &str,
    limits: &crate::config::Limits,
    deadline: Duration,
    part: &Path,
    preview: Option<&Path>,
) -> Result<DisarmDone, integrity::Failure> {
    let started = Instant::now();
    let input =
        std::fs::read(src).map_err(|e| integrity::Failure::Corrupt(format!("unreadable: {e}")))?;
    let mut o = disarm::disarm(&input, name, limits, started + deadline)?;
    drop(input);
    let bytes = std::mem::take(&mut o.bytes);
    let write = |p: &Path, b: &[u8]| -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(p)?;
        f.write_all(b)?;
        f.sync_all()
    };
    let io =
        |e: std::io::Error| integrity::Failure::Corrupt(format!("writing the disarmed copy: {e}"));
    write(part, &bytes).map_err(io)?;
    if let Some(preview) = preview {
        write(preview, &o.preview_png).map_err(io)?;
    }
    use sha2::Digest;
    Ok(DisarmDone {
        integrity: o.integrity(),
        summary: o.summary(),
        record: crate::db::Disarmed {
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            size: bytes.len() as u64,
            changed: o.changed,
            format: integrity::format_name(o.format),
            width: o.width,
            height: o.height,
        },
    })
}

/// 91: one clamd scan of `path` for the review of an upload; `label` is the metrics check label.
async fn scan(svc: &Service, path: &Path, label: &str, which: &str) -> Result<(), Refusal> {
    clamd_scan(svc, path, which).await?;
    svc.metrics
        .review_decisions
        .with_label_values(&[label, "pass"])
        .inc();
    Ok(())
}

/// 91: one clamd scan of `path`, timed. A signature found, or a scan that cannot run (fail
/// closed), is the refusal; `which` is added to a signature's name. Uploads and templates.
pub(crate) async fn clamd_scan(svc: &Service, path: &Path, which: &str) -> Result<(), Refusal> {
    let addr = virus::ClamdAddr::parse(&svc.config.clamd.address);
    let t = Instant::now();
    let r = virus::scan_file(&addr, path, svc.config.clamd.timeout_secs).await;
    svc.metrics.scan_seconds.observe(t.elapsed().as_secs_f64());
    match r {
        Ok(virus::Scan::Clean) => {
            svc.metrics.clamd_up.set(1);
            Ok(())
        }
        Ok(virus::Scan::Found(sig)) => {
            svc.metrics.clamd_up.set(1);
            Err(Refusal::Virus(format!("{sig}{which}")))
        }
        Err(e) => {
            if matches!(
                e,
                virus::ScanError::Unreachable(_) | virus::ScanError::Timeout(_)
            ) {
                svc.metrics.clamd_up.set(0);
            }
            Err(Refusal::ScanUnavailable(e.to_string()))
        }
    }
}

/// The audit trail's view of an upload.
fn audit_event(rec: &UploadRecord, event: &'static str) -> crate::audit::Event {
    crate::audit::Event {
        event,
        upload: Some(rec.id.clone()),
        digest: Some(rec.sha256.clone()),
        stored_digest: rec.disarmed.as_ref().map(|d| d.sha256.clone()),
        account: rec.client_id.clone(),
        file_name: Some(rec.file_name.clone()),
        checks: rec.checks.clone(),
        operator: rec.operator.clone(),
        reason: None,
    }
}

fn observe_quarantine_time(svc: &Service, rec: &UploadRecord) {
    svc.metrics
        .quarantine_seconds
        .observe(crate::now_secs().saturating_sub(rec.created_at) as f64);
}

/// A decision that was not taken (issue 16, defect 5; issue 18): the operator is told, nothing
/// changed.
#[derive(Debug, thiserror::Error)]
pub enum Undecided {
    #[error("not decided: the audit trail cannot be written ({0}); nothing was changed")]
    Audit(#[from] crate::audit::AuditError),
    #[error("not decided: the upload record cannot be written ({0}); nothing was changed")]
    Record(String),
    /// Another decision (or the delivery) changed the upload first; this one was not taken.
    #[error("not decided: {0}")]
    Lost(String),
}

impl From<TransitionError<crate::audit::AuditError>> for Undecided {
    fn from(e: TransitionError<crate::audit::AuditError>) -> Self {
        match e {
            TransitionError::Step(a) => Undecided::Audit(a),
            TransitionError::Db(d) => Undecided::Record(d.to_string()),
            e @ (TransitionError::Lost { .. } | TransitionError::Missing(_)) => {
                Undecided::Lost(e.to_string())
            }
        }
    }
}

/// Two stages are the same step of Fig. 5 (an approved upload's note may change meanwhile).
fn same_stage(a: &Stage, b: &Stage) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// An automatic refusal that cannot be audited leaves the upload where it is, in quarantine
/// and undecided; the next start re-runs its review.
async fn refuse_or_hold(svc: &Service, rec: UploadRecord, check: &str, refusal: Refusal) {
    let id = rec.id.clone();
    if let Err(e) = refuse(svc, rec, check, refusal).await {
        tracing::error!(upload = %id, error = %e, "upload held in quarantine undecided");
    }
}

/// 95 → 76, 77: erase the upload and record why. `rec` is the caller's view of the upload: the
/// refusal is taken only if the upload is still at the stage it shows (`Db::transition`), so
/// it cannot undo an approval, a delivery or another refusal made meanwhile. The audit line is
/// written inside that transition: a refusal that cannot be audited is not made.
pub async fn refuse(
    svc: &Service,
    mut rec: UploadRecord,
    check: &str,
    refusal: Refusal,
) -> Result<(), Undecided> {
    let (id, seen) = (rec.id.clone(), rec.stage.clone());
    let why = refusal.clone();
    let rec = svc.db.transition(
        &id,
        |s| same_stage(s, &seen),
        |stored| {
            let mut ev = audit_event(&rec, "refused");
            ev.checks.push((check.to_string(), why.to_string()));
            ev.reason = Some(why.to_string());
            svc.audit.append(ev)?;
            rec.stage = Stage::Refused { refusal: why };
            *stored = rec;
            Ok(())
        },
    )?;
    svc.metrics
        .review_decisions
        .with_label_values(&[check, refusal.code()])
        .inc();
    svc.metrics
        .uploads
        .with_label_values(&[refusal.code()])
        .inc();
    tracing::info!(upload = %rec.id, %check, code = refusal.code(), "upload refused (95, 76, 77)");
    observe_quarantine_time(svc, &rec);
    // The outcome is recorded first, then the file erased: a crash in between leaves a refused
    // record whose file the startup sweep removes, never a file without a decision.
    svc.erase_quarantined(&rec.id);
    Ok(())
}

/// 94: approved (by the operator or policy); deliver it. `rec` is the caller's view: the
/// approval is taken only if the upload is still at that stage, awaiting the operator (or
/// checked, for the policy), so of two decisions at once exactly one takes effect and only the
/// winner starts a delivery (issue 18). The audit line is written inside that transition: an
/// approval that cannot be audited is not given.
pub async fn approve(
    svc: Arc<Service>,
    mut rec: UploadRecord,
    operator: String,
) -> Result<(), Undecided> {
    let (id, seen) = (rec.id.clone(), rec.stage.clone());
    if !matches!(seen, Stage::AwaitingOperator | Stage::Checking) {
        return Err(Undecided::Lost(format!(
            "upload {id} is {}, not awaiting review",
            seen.describe()
        )));
    }
    let rec = svc.db.transition(
        &id,
        |s| *s == seen,
        |stored| {
            rec.operator = Some(operator);
            svc.audit.append(audit_event(&rec, "approved"))?;
            rec.stage = Stage::Approved {
                note: "delivering to the stock server".into(),
            };
            *stored = rec;
            Ok(())
        },
    )?;
    svc.metrics
        .review_decisions
        .with_label_values(&["ethics", "pass"])
        .inc();
    observe_quarantine_time(&svc, &rec);
    tokio::spawn(deliver(svc, id));
    Ok(())
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
                    refuse_or_hold(&svc, rec, "delivery", r).await;
                }
                return;
            }
            // No longer approved: delivered or decided otherwise; this delivery ends.
            Err(DeliverError::Decided(stage)) => {
                tracing::warn!(upload = %id, %stage, "delivery ends: the upload is no longer approved");
                return;
            }
            Err(DeliverError::Retry(note)) => {
                tracing::warn!(upload = %id, %note, "delivery postponed");
                let r = svc.db.transition(
                    &id,
                    |s| matches!(s, Stage::Approved { .. }),
                    |rec| {
                        rec.stage = Stage::Approved { note: note.clone() };
                        Ok::<(), std::convert::Infallible>(())
                    },
                );
                match r {
                    Ok(_) => {}
                    Err(e @ (TransitionError::Lost { .. } | TransitionError::Missing(_))) => {
                        tracing::warn!(upload = %id, error = %e, "delivery ends: the upload is no longer approved");
                        return;
                    }
                    Err(e) => {
                        tracing::error!(upload = %id, error = %e, "recording the delivery note")
                    }
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
    /// The upload left `Approved` (stored by another delivery, or refused): nothing to do.
    Decided(String),
}

impl DeliverError {
    /// From a transition out of `Approved` that found another stage.
    fn from_transition(e: TransitionError<std::convert::Infallible>) -> Self {
        match e {
            e @ (TransitionError::Lost { .. } | TransitionError::Missing(_)) => {
                DeliverError::Decided(e.to_string())
            }
            TransitionError::Db(d) => DeliverError::Retry(d.to_string()),
            TransitionError::Step(never) => match never {},
        }
    }
}

/// The stage a delivery may write from.
fn approved(s: &Stage) -> bool {
    matches!(s, Stage::Approved { .. })
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
        .ok_or_else(|| DeliverError::Decided("the upload record is gone".into()))?;
    if !approved(&rec.stage) {
        return Err(DeliverError::Decided(rec.stage.describe()));
    }
    let path = svc.quarantine_path(id);
    let (stock, db_key, first) = match (&rec.password_id, &rec.new_account) {
        // 111, 112: re-upload to the account the password names.
        (Some(_), _) => {
            let acct = crate::password::account_of(svc, &rec)
                .ok_or_else(|| DeliverError::Refused(crate::password::refusal()))?;
            // Issue 16, defect 1: only the owner uploads to an account (the ticket is refused
            // to anyone else); checked again here, since this is what lets a name be replaced.
            if acct.owner != rec.client_id {
                return Err(DeliverError::Refused(crate::password::not_owner_upload()));
            }
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
            let account = NewAccount {
                stock_server: stock.clone(),
                database_key: made.database_key.clone(),
                account_key_wrapped: made.account_key_wrapped,
            };
            rec.new_account = Some(account.clone());
            svc.db
                .transition(id, approved, |stored| {
                    stored.new_account = Some(account);
                    Ok(())
                })
                .map_err(DeliverError::from_transition)?;
            (stock, made.database_key, true)
        }
    };
    // 78: send the decrypted, reviewed image.
    let stored = svc
        .stock
        .store(&stock, &db_key, &rec.file_name, &path, Some(id), !first)
        .await?;
    // Claims 6, 14: the reduced image, made from exactly the bytes just stored. A failure to
    // keep it is retried with the delivery; an image that will not decode (it passed 92, so
    // this is not expected) is stored without one, loudly.
    match crate::reduced_image::make_for_upload(svc, &rec, &stock, &db_key, &path).await {
        Ok(_) => {}
        Err(crate::reduced_image::ReducedError::Decode(e)) => {
            tracing::error!(upload = %id, error = %e, "no reduced image: the stored image does not decode");
        }
        Err(e) => {
            return Err(DeliverError::Retry(format!(
                "keeping the reduced image: {e}"
            )))
        }
    }
    // The delivery is audited before it is recorded as done; a trail that cannot be written
    // holds it here, retried (the stock server's store of the same upload is idempotent).
    let mut ev = audit_event(&rec, "stored");
    ev.reason = Some(format!("delivered to {stock} (78)"));
    svc.audit
        .append(ev)
        .map_err(|e| DeliverError::Retry(format!("audit trail: {e}")))?;
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
    // Only an approved upload becomes stored, once: a second delivery cannot overwrite the
    // record that holds the wrapped password (issue 18).
    svc.db
        .transition(id, approved, |stored| {
            *stored = rec;
            Ok(())
        })
        .map_err(DeliverError::from_transition)?;
    // 78: the quarantined copy is erased after delivery.
    svc.erase_quarantined(id);
    svc.metrics.uploads.with_label_values(&["stored"]).inc();
    tracing::info!(upload = %id, stock = %stock, object = %stored.object_id, "delivered to the stock server (78-82)");
    Ok(())
}
