//! Every message between client, service and stock server (JSON over HTTPS / mutual TLS).
//! Binary fields are base64 (`b64`) or hex as named.
//!
//! Client → service (HTTPS, `Authorization: Bearer stk1_...` where a server password is needed):
//! - `GET  /v1/info` → [`ServiceInfo`]
//! - `POST /v1/register` [`RegisterRequest`] → [`RegisterResponse`] (61, 71)
//! - `POST /v1/upload-instructions` [`UploadInstructionRequest`] → [`UploadInstruction`] (72; 101, 106–109)
//! - `POST /v1/uploads` header [`TICKET_HEADER`], body: the sealed envelope → [`UploadAccepted`] (63, 105)
//! - `GET  /v1/uploads/{id}` → [`UploadStatus`] (64–66, 77, 81, 82)
//! - `POST /v1/downloads` [`DownloadRequest`] → [`DownloadResponse`] (121, 131–135)
//! - `GET  /v1/files` → [`FileList`]
//! - `POST /v1/files/delete` [`OwnerRequest`] → 204
//! - `POST /v1/password/rotate` [`OwnerRequest`] → [`RotateResponse`] (79–82)
//! - `GET  /v1/reduced?scope=all|public|account` (password optional) → [`ReducedImageList`] (claims 6, 14)
//! - `GET  /v1/reduced/{id}` (password needed for a private one) → `image/png`
//! - `GET  /v1/templates?client_id=...` → [`TemplateList`] (claims 7, 15)
//! - `GET  /v1/templates/{name}/reduced`, `GET /v1/templates/{name}/mask` → `image/png`
//! - `POST /v1/templates/push` [`TemplatePushRequest`] → [`TemplatePushResponse`] (Fig. 12, 135, 137)
//!
//! Service → stock (mutual TLS, service certificates only):
//! - `GET  /v1/identity` → [`StockIdentity`]
//! - `POST /v1/accounts` [`CreateAccountRequest`] → [`CreateAccountResponse`] (85–87)
//! - `PUT  /v1/accounts/{database_key}/objects/{name}` headers [`UPLOAD_ID_HEADER`], [`REPLACE_HEADER`],
//!   body: the image → [`StoredObject`] (78, 85, 86, 112, 115); an existing name → 409 `exists`
//! - `POST /v1/accounts/{database_key}/push` [`PushRequest`] → 202 (135, 137)
//! - `GET  /v1/accounts/{database_key}/objects` → [`FileList`]
//! - `DELETE /v1/accounts/{database_key}/objects/{name}` → 204

use crate::reason::Refusal;

/// The upload's ticket travels in this header as well as inside the signed manifest, so the
/// service refuses an upload without a valid ticket before reading its body.
pub const TICKET_HEADER: &str = "x-stockade-ticket";

/// Service → stock store: the upload (or template) this object comes from. A store that repeats
/// the upload id of the object already under that name is a retry, not an overwrite.
pub const UPLOAD_ID_HEADER: &str = "x-stockade-upload-id";

/// Service → stock store: present (`owner`) only when the account owner signed this upload, the
/// one case in which an existing name may be replaced. Without it the stock server answers 409.
pub const REPLACE_HEADER: &str = "x-stockade-replace";
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Every error answer carries a refusal: a stable code and words (64, 65, 103, 123, 153).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub refusal: Refusal,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    /// Hex X25519 public key that uploads are sealed to.
    pub upload_public_key: String,
    pub max_upload_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub public_key_pem: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    pub client_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadInstructionRequest {
    pub client_id: String,
    /// Claim 6 with a choice: the reduced image of this upload is visible only to requests
    /// bearing the account's server password. Absent from older clients: public.
    #[serde(default)]
    pub private_thumbnail: bool,
}

/// The upload instruction (72, 109): a one-time ticket and the key to seal to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadInstruction {
    pub ticket: String,
    pub upload_public_key: String,
    pub max_upload_bytes: u64,
    pub expires_in_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadAccepted {
    pub upload_id: String,
}

/// Where an upload is in Fig. 5, and what the client gets at the end.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum UploadStatus {
    /// In quarantine (74): checks running or waiting for the operator.
    Pending { stage: String },
    /// Approved (94) but not yet delivered: the stock server is unreachable; retried.
    Approved { note: String },
    /// 75 no → 76, 77: erased, with the reason.
    Refused { refusal: Refusal },
    /// 78–82: stored. On a first upload the server password (79, 80) and the account key (87)
    /// come wrapped to the client's registered RSA key (81).
    Stored {
        file_name: String,
        size: u64,
        stock_server: String,
        server_password_wrapped: Option<String>,
        account_key_wrapped: Option<String>,
        /// The content disarm (Fig. 5, before 78) changed the image: what is stored differs
        /// from the upload (metadata, trailing data or a re-encode), so the upload is not a
        /// copy of what the stock server holds. Absent from older services: false.
        #[serde(default)]
        disarmed: bool,
        /// Hex SHA-256 and size of the stored (disarmed) image, when the service reports them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stored_sha256: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stored_size: Option<u64>,
    },
}

/// The destination of a push (121): the client's address and its push port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadRequest {
    pub file_name: String,
    pub destination: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DownloadResponse {
    /// Hex request nonce the push will carry.
    pub nonce: String,
    /// Hex Ed25519 key the push is signed with.
    pub stock_public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub name: String,
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub stored_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileList {
    pub files: Vec<FileEntry>,
}

/// Actions only the account owner may take (delete, rotate), signed with the owner's
/// registered RSA key so that someone a password was shared with cannot take them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerRequest {
    pub action: String,
    pub file_name: Option<String>,
    /// Seconds since the Unix epoch; requests older than the service's window are refused.
    pub timestamp: u64,
    /// Random hex; a nonce is accepted once.
    pub nonce: String,
    pub client_id: String,
    /// Base64 RSA-PSS signature over `signing_bytes()`.
    pub signature: String,
}

impl OwnerRequest {
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut m = b"stockade-owner-v1\0".to_vec();
        for part in [
            self.action.as_str(),
            self.file_name.as_deref().unwrap_or(""),
            self.nonce.as_str(),
            self.client_id.as_str(),
        ] {
            m.extend_from_slice(&(part.len() as u32).to_be_bytes());
            m.extend_from_slice(part.as_bytes());
        }
        m.extend_from_slice(&self.timestamp.to_be_bytes());
        m
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotateResponse {
    pub server_password_wrapped: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StockIdentity {
    pub name: String,
    /// Hex Ed25519 push-signing key.
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAccountRequest {
    pub owner_public_key_pem: String,
    /// Base64 32-byte account key chosen by the service (the template account, claim 7): the
    /// stock server files it instead of generating one, and the answer's
    /// `account_key_wrapped` is empty when `owner_public_key_pem` is. Absent: generated (85).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_key: Option<String>,
}

/// 87: the database key and the account key, wrapped to the owner so the service only relays it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateAccountResponse {
    pub database_key: String,
    pub account_key_wrapped: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredObject {
    pub object_id: String,
    pub size: u64,
    pub digest: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    pub file_name: String,
    pub destination: SocketAddr,
    pub nonce: String,
}

/// One reduced image kept by the service (claims 6, 14).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReducedImageEntry {
    /// Stable id (hex), unique across accounts: `GET /v1/reduced/{id}`.
    pub id: String,
    /// The file name in its account.
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// The full image's size, upright (EXIF orientation applied).
    pub source_width: u32,
    pub source_height: u32,
    /// Visible only with the account's server password (`--private-thumbnail`).
    pub private: bool,
    /// Belongs to the account whose server password the request bore.
    pub own: bool,
    /// What was done about colour (ICC) when it was made.
    pub colour: String,
    pub created_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReducedImageList {
    pub images: Vec<ReducedImageEntry>,
}

/// Where the user image goes in a template, in template pixels.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct TemplateSlot {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MaskInfo {
    /// The mask's full size; it is stretched over the slot.
    pub width: u32,
    pub height: u32,
}

/// A template (background image, claims 7, 15): full size on a stock server, reduced on the service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TemplateEntry {
    pub name: String,
    /// Full size, upright.
    pub width: u32,
    pub height: u32,
    pub slot: TemplateSlot,
    pub mask: Option<MaskInfo>,
    pub reduced_width: u32,
    pub reduced_height: u32,
    /// The stock server that holds it (Fig. 12).
    pub stock_server: String,
    pub colour: String,
    pub created_at: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateList {
    pub templates: Vec<TemplateEntry>,
    /// The template account key, RSA-OAEP-wrapped to the registered key of the `client_id`
    /// asked with (base64); absent when none was given or it is not registered.
    #[serde(default)]
    pub template_key_wrapped: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum TemplatePart {
    #[default]
    Template,
    Mask,
}

/// A template push needs no server password; the destination rule of 121 still holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplatePushRequest {
    pub template: String,
    #[serde(default)]
    pub part: TemplatePart,
    pub destination: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplatePushResponse {
    /// Hex request nonce the push will carry.
    pub nonce: String,
    /// Hex Ed25519 key the push is signed with.
    pub stock_public_key: String,
    /// The name the push header will carry.
    pub file_name: String,
}

/// Percent-encodes a (validated) file name for one URL path segment of the routes above.
pub fn path_segment(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Decodes a 32-byte key written in hex (service upload keys, stock push keys).
pub fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok().and_then(|v| v.try_into().ok())
}

/// File names are chosen by clients: keep them to one safe path component.
pub fn valid_file_name(name: &str) -> Result<(), Refusal> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ' ' | '+'));
    if ok {
        Ok(())
    } else {
        Err(Refusal::BadRequest(format!(
            "file name {name:?} must be 1-200 characters of letters, digits, space, '.', '-', '_', '+', not starting with '.'"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert!(valid_file_name("cat photo-1.png").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "..", "x\0y"] {
            assert!(valid_file_name(bad).is_err(), "{bad:?}");
        }
    }
}
