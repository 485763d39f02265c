//! The service's client API over HTTPS (rustls, pinned to the given CA). Every error answer is a
//! `wire::ErrorBody` and becomes a refusal (64, 65, 103, 123).

use crate::error::{ClientError, Result};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use stockade_proto::wire::{
    DownloadRequest, DownloadResponse, ErrorBody, FileList, OwnerRequest, RegisterRequest,
    RegisterResponse, RotateResponse, UploadAccepted, UploadInstruction, UploadInstructionRequest,
    UploadStatus,
};

/// Small JSON calls; uploads are streamed and have no overall limit.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Service {
    http: reqwest::Client,
    base: String,
}

impl Service {
    /// `bind` is the source address of our connections: the service compares the download
    /// destination with it (121).
    pub fn new(url: &str, ca: &Path, bind: Option<IpAddr>) -> Result<Self> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| ClientError::Config(format!("--service {url}: {e}")))?;
        if parsed.scheme() != "https" {
            return Err(ClientError::Config(format!(
                "--service {url}: must be https (server passwords never travel in clear)"
            )));
        }
        let tls = stockade_proto::tls::client_config(ca, None)
            .map_err(|e| ClientError::Config(format!("--ca: {e}")))?;
        let mut b = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("stockade/", env!("CARGO_PKG_VERSION")));
        if let Some(ip) = bind {
            b = b.local_address(ip);
        }
        let http = b
            .build()
            .map_err(|e| ClientError::Config(format!("HTTPS client: {e}")))?;
        Ok(Self {
            http,
            base: url.trim_end_matches('/').to_string(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// GET /v1/... with an optional server password.
    fn get(&self, path: &str, password: Option<&str>) -> RequestBuilder {
        auth(
            self.http.get(self.url(path)).timeout(CALL_TIMEOUT),
            password,
        )
    }

    fn post(&self, path: &str, password: Option<&str>) -> RequestBuilder {
        auth(self.http.post(self.url(path)), password)
    }

    /// 61 → 71.
    pub async fn register(&self, public_key_pem: &str) -> Result<RegisterResponse> {
        let req = RegisterRequest {
            public_key_pem: public_key_pem.to_string(),
        };
        json(
            send(
                self.post("/v1/register", None)
                    .timeout(CALL_TIMEOUT)
                    .json(&req),
            )
            .await?,
        )
        .await
    }

    /// 72, or with a server password 101 → 109.
    pub async fn upload_instruction(
        &self,
        client_id: &str,
        password: Option<&str>,
    ) -> Result<UploadInstruction> {
        self.upload_instruction_with(client_id, password, false)
            .await
    }

    /// 72 / 109, choosing whether the upload's reduced image is private (claim 6).
    pub async fn upload_instruction_with(
        &self,
        client_id: &str,
        password: Option<&str>,
        private_thumbnail: bool,
    ) -> Result<UploadInstruction> {
        let req = UploadInstructionRequest {
            client_id: client_id.to_string(),
            private_thumbnail,
        };
        json(
            send(
                self.post("/v1/upload-instructions", password)
                    .timeout(CALL_TIMEOUT)
                    .json(&req),
            )
            .await?,
        )
        .await
    }

    /// 63 / 105: the sealed envelope as a streamed body.
    /// The ticket also travels in a header so the service can refuse a body without one unread.
    pub async fn upload(&self, ticket: &str, body: reqwest::Body) -> Result<UploadAccepted> {
        let rb = self
            .post("/v1/uploads", None)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(stockade_proto::wire::TICKET_HEADER, ticket)
            .body(body);
        json(send(rb).await?).await
    }

    /// 64-66, 77, 81, 82.
    pub async fn upload_status(&self, upload_id: &str) -> Result<UploadStatus> {
        check_id(upload_id)?;
        json(send(self.get(&format!("/v1/uploads/{upload_id}"), None)).await?).await
    }

    /// 121 → 131-135.
    pub async fn download(
        &self,
        req: &DownloadRequest,
        password: &str,
    ) -> Result<DownloadResponse> {
        json(
            send(
                self.post("/v1/downloads", Some(password))
                    .timeout(CALL_TIMEOUT)
                    .json(req),
            )
            .await?,
        )
        .await
    }

    /// Claims 6, 14: the reduced images this request may see (`scope`: all, public, account).
    pub async fn reduced_list(
        &self,
        scope: &str,
        password: Option<&str>,
    ) -> Result<stockade_proto::wire::ReducedImageList> {
        json(send(self.get(&format!("/v1/reduced?scope={scope}"), password)).await?).await
    }

    /// One reduced image (PNG bytes).
    pub async fn reduced_get(&self, id: &str, password: Option<&str>) -> Result<Vec<u8>> {
        check_id(id)?;
        bytes(send(self.get(&format!("/v1/reduced/{id}"), password)).await?).await
    }

    /// Claims 7, 15: the templates, with the template key wrapped to `client_id`'s key.
    pub async fn templates(
        &self,
        client_id: Option<&str>,
    ) -> Result<stockade_proto::wire::TemplateList> {
        let path = match client_id {
            Some(id) => {
                check_id(id)?;
                format!("/v1/templates?client_id={id}")
            }
            None => "/v1/templates".to_string(),
        };
        json(send(self.get(&path, None)).await?).await
    }

    /// A template's reduced image or reduced mask (PNG bytes).
    pub async fn template_reduced(
        &self,
        name: &str,
        part: stockade_proto::wire::TemplatePart,
    ) -> Result<Vec<u8>> {
        let which = match part {
            stockade_proto::wire::TemplatePart::Template => "reduced",
            stockade_proto::wire::TemplatePart::Mask => "mask",
        };
        let path = format!(
            "/v1/templates/{}/{which}",
            stockade_proto::wire::path_segment(name)
        );
        bytes(send(self.get(&path, None)).await?).await
    }

    /// Fig. 12: have the stock server push a template (the account's server password; 121's
    /// destination rule).
    pub async fn template_push(
        &self,
        req: &stockade_proto::wire::TemplatePushRequest,
        password: &str,
    ) -> Result<stockade_proto::wire::TemplatePushResponse> {
        json(
            send(
                self.post("/v1/templates/push", Some(password))
                    .timeout(CALL_TIMEOUT)
                    .json(req),
            )
            .await?,
        )
        .await
    }

    pub async fn files(&self, password: &str) -> Result<FileList> {
        json(send(self.get("/v1/files", Some(password))).await?).await
    }

    pub async fn delete(&self, req: &OwnerRequest, password: &str) -> Result<()> {
        let rb = self
            .post("/v1/files/delete", Some(password))
            .timeout(CALL_TIMEOUT)
            .json(req);
        send(rb).await.map(drop)
    }

    /// 79-82 again: a new server password, wrapped to the owner.
    pub async fn rotate(&self, req: &OwnerRequest, password: &str) -> Result<RotateResponse> {
        let rb = self
            .post("/v1/password/rotate", Some(password))
            .timeout(CALL_TIMEOUT)
            .json(req);
        json(send(rb).await?).await
    }
}

fn auth(rb: RequestBuilder, password: Option<&str>) -> RequestBuilder {
    match password {
        Some(p) => rb.bearer_auth(p),
        None => rb,
    }
}

/// Upload ids go into a URL path: keep them to one plain component.
fn check_id(id: &str) -> Result<()> {
    if !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(())
    } else {
        Err(ClientError::Config(format!("{id:?} is not an upload id")))
    }
}

/// Sends, and turns an error answer into a refusal (or a plain service error).
async fn send(rb: RequestBuilder) -> Result<Response> {
    let resp = rb
        .send()
        .await
        .map_err(|e| ClientError::Service(describe(&e)))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.bytes().await.unwrap_or_default();
    Err(error_from(status, &body))
}

/// An error answer: its refusal when it carries one, otherwise the status and some words.
pub fn error_from(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) => ClientError::Refused(e.refusal),
        Err(_) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_string();
            ClientError::Service(format!("HTTP {status}: {text}"))
        }
    }
}

async fn bytes(resp: Response) -> Result<Vec<u8>> {
    resp.bytes()
        .await
        .map(|b| b.to_vec())
        .map_err(|e| ClientError::Service(describe(&e)))
}

async fn json<T: DeserializeOwned>(resp: Response) -> Result<T> {
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| ClientError::Service(describe(&e)))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ClientError::Service(format!("unexpected answer: {e}")))
}

/// reqwest hides the root cause (TLS, connection refused) in its source chain.
fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockade_proto::reason::Refusal;

    #[test]
    fn error_bodies_become_refusals_64_65() {
        let body = br#"{"refusal":{"code":"password","detail":"server password is not valid"}}"#;
        match error_from(StatusCode::FORBIDDEN, body) {
            ClientError::Refused(r) => {
                assert_eq!(r, Refusal::Password("server password is not valid".into()))
            }
            other => panic!("{other}"),
        }
        let e = error_from(StatusCode::BAD_GATEWAY, b"upstream down");
        assert!(
            matches!(e, ClientError::Service(ref s) if s.contains("502") && s.contains("upstream down"))
        );
    }

    #[test]
    fn upload_ids_stay_one_path_component() {
        assert!(check_id("u-0123_abc").is_ok());
        for bad in ["", "../x", "a/b", "a?b", "a b"] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_https_with_a_ca() {
        let d = tempfile::tempdir().unwrap();
        let e = Service::new("http://127.0.0.1:8443", &d.path().join("ca.pem"), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("https"), "{e}");
        let e = Service::new("https://127.0.0.1:8443", &d.path().join("ca.pem"), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--ca"), "{e}");
    }
}
