//! The operator's review desk (93): a root-only Unix socket (mode 0600, never on the network)
//! speaking one JSON request and one JSON answer per line. `stockade-service review ...` is its
//! client.

use crate::db::{Stage, UploadRecord};
use crate::{review, Service};
use serde::{Deserialize, Serialize};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use stockade_proto::reason::Refusal;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    /// The quarantine queue (74); `all` includes finished uploads.
    List {
        all: bool,
    },
    Show {
        id: String,
    },
    /// 93 yes → 94.
    Approve {
        id: String,
        operator: String,
    },
    /// 93 no → 95, 76, 77 with the operator's reason.
    Reject {
        id: String,
        reason: String,
        operator: String,
    },
    /// Claim 7: add a template (reviewed by 91 and 92, then stored on a stock server).
    TemplateAdd(crate::templates::AddTemplate),
    /// The templates, with their slots.
    TemplateList,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AdminResponse {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub uploads: Vec<UploadRecord>,
    /// Answers to the template requests (claim 7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub templates: Vec<stockade_proto::wire::TemplateEntry>,
}

impl AdminResponse {
    fn err(e: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(e.into()),
            uploads: vec![],
            templates: vec![],
        }
    }
    fn ok(uploads: Vec<UploadRecord>) -> Self {
        Self {
            ok: true,
            error: None,
            uploads,
            templates: vec![],
        }
    }
}

pub async fn handle(svc: &Arc<Service>, req: AdminRequest) -> AdminResponse {
    match req {
        AdminRequest::TemplateAdd(add) => match crate::templates::add(svc, add).await {
            Ok(t) => AdminResponse {
                templates: vec![t.entry],
                ..AdminResponse::ok(vec![])
            },
            Err(e) => AdminResponse::err(e.to_string()),
        },
        AdminRequest::TemplateList => match crate::templates::all(svc) {
            Ok(v) => AdminResponse {
                templates: v.into_iter().map(|t| t.entry).collect(),
                ..AdminResponse::ok(vec![])
            },
            Err(e) => AdminResponse::err(e.to_string()),
        },
        AdminRequest::List { all } => match svc.db.uploads() {
            Ok(mut v) => {
                if !all {
                    v.retain(|u| {
                        matches!(
                            u.stage,
                            Stage::Checking | Stage::AwaitingOperator | Stage::Approved { .. }
                        )
                    });
                }
                v.sort_by_key(|u| u.created_at);
                AdminResponse::ok(v)
            }
            Err(e) => AdminResponse::err(e.to_string()),
        },
        AdminRequest::Show { id } => match svc.db.upload(&id) {
            Ok(Some(u)) => AdminResponse::ok(vec![u]),
            Ok(None) => AdminResponse::err(format!("no upload {id}")),
            Err(e) => AdminResponse::err(e.to_string()),
        },
        AdminRequest::Approve { id, operator } => match svc.db.upload(&id) {
            Ok(Some(u)) if u.stage == Stage::AwaitingOperator => {
                tracing::info!(upload = %id, %operator, "operator approved (93 yes)");
                match review::approve(svc.clone(), u, operator).await {
                    Ok(()) => {
                        AdminResponse::ok(svc.db.upload(&id).ok().flatten().into_iter().collect())
                    }
                    Err(e) => AdminResponse::err(e.to_string()),
                }
            }
            Ok(Some(u)) => AdminResponse::err(format!(
                "upload {id} is not awaiting review (stage: {:?})",
                u.stage
            )),
            Ok(None) => AdminResponse::err(format!("no upload {id}")),
            Err(e) => AdminResponse::err(e.to_string()),
        },
        AdminRequest::Reject {
            id,
            reason,
            operator,
        } => {
            if reason.trim().is_empty() {
                return AdminResponse::err("a reason is required: the client is told it (77)");
            }
            match svc.db.upload(&id) {
                Ok(Some(mut u)) if u.stage == Stage::AwaitingOperator => {
                    tracing::info!(upload = %id, %operator, "operator rejected (93 no)");
                    u.operator = Some(operator);
                    match review::refuse(svc, u, "ethics", Refusal::Ethics(reason)).await {
                        Ok(()) => AdminResponse::ok(
                            svc.db.upload(&id).ok().flatten().into_iter().collect(),
                        ),
                        Err(e) => AdminResponse::err(e.to_string()),
                    }
                }
                Ok(Some(u)) => AdminResponse::err(format!(
                    "upload {id} is not awaiting review (stage: {:?})",
                    u.stage
                )),
                Ok(None) => AdminResponse::err(format!("no upload {id}")),
                Err(e) => AdminResponse::err(e.to_string()),
            }
        }
    }
}

/// Serves the admin socket until shutdown.
pub async fn serve(svc: Arc<Service>, path: &Path) -> std::io::Result<()> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    // Between bind and chmod the socket has umask permissions: the peer check below closes
    // that window (issue 16, defect 8), as the gateway's control socket does.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path)?);
    let mut stop = svc.shutdown.clone();
    loop {
        let (stream, _) = tokio::select! {
            r = listener.accept() => r?,
            _ = stockade_proto::serve::stopped(&mut stop) => break,
        };
        let svc = svc.clone();
        tokio::spawn(async move {
            let peer = stream.peer_cred().map(|c| c.uid());
            let (r, mut w) = stream.into_split();
            let mut line = String::new();
            let mut r = BufReader::new(r.take(MAX_LINE as u64));
            let read = r.read_line(&mut line).await;
            // The request is read (bounded) first, so the refusal reaches the peer.
            let allowed = matches!(peer, Ok(uid) if uid == 0 || uid == owner);
            let resp = match read {
                _ if !allowed => {
                    tracing::warn!(peer = ?peer, "admin socket: refused a peer that is neither root nor the service's user");
                    AdminResponse::err(
                        "the admin socket answers root and the service's own user only",
                    )
                }
                Ok(_) => match serde_json::from_str::<AdminRequest>(&line) {
                    Ok(req) => handle(&svc, req).await,
                    Err(e) => AdminResponse::err(format!("bad request: {e}")),
                },
                Err(e) => AdminResponse::err(format!("read: {e}")),
            };
            let mut out = serde_json::to_vec(&resp).unwrap_or_default();
            out.push(b'\n');
            let _ = w.write_all(&out).await;
        });
    }
    let _ = std::fs::remove_file(path);
    Ok(())
}

/// The CLI side: one request, one answer.
pub async fn call(path: &Path, req: &AdminRequest) -> anyhow::Result<AdminResponse> {
    use anyhow::Context;
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .with_context(|| {
            format!(
                "connecting to the admin socket {} (is the service running, and are you root?)",
                path.display()
            )
        })?;
    let (r, mut w) = stream.into_split();
    let mut out = serde_json::to_vec(req)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    let mut line = String::new();
    BufReader::new(r.take(16 << 20))
        .read_line(&mut line)
        .await?;
    serde_json::from_str(&line).context("admin answer")
}
