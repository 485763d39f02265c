//! The service's side of the service ↔ stock link (mutual TLS, through firewall 45).

use crate::config::StockServer;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use stockade_proto::reason::Refusal;
use stockade_proto::wire::{
    CreateAccountRequest, CreateAccountResponse, ErrorBody, FileList, PushRequest, StockIdentity,
    StoredObject,
};

#[derive(Debug, thiserror::Error)]
pub enum StockError {
    /// The stock server cannot be reached or failed: the caller retries or says so.
    #[error("stock server {0} unavailable: {1}")]
    Unavailable(String, String),
    /// The stock server answered with a refusal.
    #[error("stock server {0} refused: {1}")]
    Refused(String, Refusal),
    #[error("unknown stock server {0:?}")]
    Unknown(String),
}

pub struct StockClients {
    http: reqwest::Client,
    servers: Vec<StockServer>,
    identities: Mutex<HashMap<String, StockIdentity>>,
}

impl StockClients {
    pub fn new(
        servers: Vec<StockServer>,
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> anyhow::Result<Self> {
        let tls = stockade_proto::tls::client_config(ca, Some((cert, key)))?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(std::time::Duration::from_secs(5))
            .build()?;
        Ok(Self {
            http,
            servers,
            identities: Mutex::new(HashMap::new()),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.servers.iter().map(|s| s.name.as_str())
    }

    fn url(&self, name: &str, path: &str) -> Result<String, StockError> {
        let s = self
            .servers
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| StockError::Unknown(name.into()))?;
        Ok(format!("{}{}", s.url.trim_end_matches('/'), path))
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Option<T>, StockError> {
        let unavailable = |e: reqwest::Error| StockError::Unavailable(name.into(), e.to_string());
        let resp = req.send().await.map_err(unavailable)?;
        let status = resp.status();
        if status.is_success() {
            if status == reqwest::StatusCode::NO_CONTENT || status == reqwest::StatusCode::ACCEPTED
            {
                return Ok(None);
            }
            return resp.json::<T>().await.map(Some).map_err(unavailable);
        }
        if status.is_server_error() {
            return Err(StockError::Unavailable(
                name.into(),
                format!("HTTP {status}"),
            ));
        }
        match resp.json::<ErrorBody>().await {
            Ok(b) => Err(StockError::Refused(name.into(), b.refusal)),
            Err(e) => Err(StockError::Unavailable(
                name.into(),
                format!("HTTP {status}: {e}"),
            )),
        }
    }

    /// The stock server's push-signing key (cached; it never changes while the server runs).
    pub async fn identity(&self, name: &str) -> Result<StockIdentity, StockError> {
        if let Some(i) = self.identities.lock().expect("not poisoned").get(name) {
            return Ok(i.clone());
        }
        let id: StockIdentity = self
            .send(name, self.http.get(self.url(name, "/v1/identity")?))
            .await?
            .ok_or_else(|| StockError::Unavailable(name.into(), "empty identity".into()))?;
        self.identities
            .lock()
            .expect("not poisoned")
            .insert(name.into(), id.clone());
        Ok(id)
    }

    /// 85–87.
    pub async fn create_account(
        &self,
        name: &str,
        owner_pem: &str,
    ) -> Result<CreateAccountResponse, StockError> {
        let body = CreateAccountRequest {
            owner_public_key_pem: owner_pem.into(),
            account_key: None,
        };
        self.send(
            name,
            self.http.post(self.url(name, "/v1/accounts")?).json(&body),
        )
        .await?
        .ok_or_else(|| StockError::Unavailable(name.into(), "empty answer".into()))
    }

    /// Claim 7: the template account, under the key the service generated and keeps (sent
    /// over this mutual-TLS link only); nothing is wrapped to an owner.
    pub async fn create_template_account(
        &self,
        name: &str,
        account_key: &[u8; 32],
    ) -> Result<CreateAccountResponse, StockError> {
        let body = CreateAccountRequest {
            owner_public_key_pem: String::new(),
            account_key: Some(data_encoding::BASE64.encode(account_key)),
        };
        self.send(
            name,
            self.http.post(self.url(name, "/v1/accounts")?).json(&body),
        )
        .await?
        .ok_or_else(|| StockError::Unavailable(name.into(), "empty answer".into()))
    }

    /// 78 / 112: sends the image (streamed from the quarantine file). `upload_id` makes a
    /// retry idempotent; `owner_signed` is the one case in which a taken name is replaced.
    pub async fn store(
        &self,
        name: &str,
        db_key: &str,
        file_name: &str,
        path: &Path,
        upload_id: Option<&str>,
        owner_signed: bool,
    ) -> Result<StoredObject, StockError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StockError::Unavailable(name.into(), format!("quarantine file: {e}")))?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let url = self.url(
            name,
            &format!(
                "/v1/accounts/{db_key}/objects/{}",
                stockade_proto::wire::path_segment(file_name)
            ),
        )?;
        let mut put = self.http.put(url).body(body);
        if let Some(id) = upload_id {
            put = put.header(stockade_proto::wire::UPLOAD_ID_HEADER, id);
        }
        if owner_signed {
            put = put.header(stockade_proto::wire::REPLACE_HEADER, "owner");
        }
        self.send(name, put)
            .await?
            .ok_or_else(|| StockError::Unavailable(name.into(), "empty answer".into()))
    }

    /// 135.
    pub async fn push(
        &self,
        name: &str,
        db_key: &str,
        req: &PushRequest,
    ) -> Result<(), StockError> {
        let url = self.url(name, &format!("/v1/accounts/{db_key}/push"))?;
        self.send::<serde_json::Value>(name, self.http.post(url).json(req))
            .await
            .map(|_| ())
    }

    pub async fn list(&self, name: &str, db_key: &str) -> Result<FileList, StockError> {
        let url = self.url(name, &format!("/v1/accounts/{db_key}/objects"))?;
        self.send(name, self.http.get(url))
            .await?
            .ok_or_else(|| StockError::Unavailable(name.into(), "empty answer".into()))
    }

    pub async fn delete(
        &self,
        name: &str,
        db_key: &str,
        file_name: &str,
    ) -> Result<(), StockError> {
        let url = self.url(
            name,
            &format!(
                "/v1/accounts/{db_key}/objects/{}",
                stockade_proto::wire::path_segment(file_name)
            ),
        )?;
        self.send::<serde_json::Value>(name, self.http.delete(url))
            .await
            .map(|_| ())
    }
}
