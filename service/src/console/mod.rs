//! The operator web console: the review desk of Fig. 5 (74, 93) in a browser, served over HTTPS
//! on the admin address only. Operators sign in (argon2id hashes from the config, lockout
//! after repeated failures), see the quarantine queue with a preview rendered from the
//! disarmed image (never the raw upload), each check's result, size, type and account, approve
//! (93 yes → 94, 78) or reject with a reason the client is told (93 no → 95, 76, 77), and read
//! the history from the audit trail. Every form carries the session's CSRF token.

pub mod auth;
pub mod pages;

use crate::db::Stage;
use crate::{review, Service};
use auth::{Auth, LoginResult, Session, LOGIN_COOKIE, SESSION_COOKIE};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use maud::Markup;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use stockade_proto::reason::Refusal;
use stockade_proto::serve::PeerAddr;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// HTTPS address, on the management link only (e.g. 192.0.2.110:8443).
    pub listen: SocketAddr,
    /// Certificate and key (the lab CA's); default: the service's `tls.cert` / `tls.key`.
    #[serde(default)]
    pub cert: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    pub operators: Vec<Operator>,
    /// A session ends this long after sign-in...
    #[serde(default = "default_session_ttl")]
    pub session_ttl_secs: u64,
    /// ... or after this long without a request.
    #[serde(default = "default_idle")]
    pub idle_timeout_secs: u64,
    /// Failed sign-ins for one name before it is locked...
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// ... for this long.
    #[serde(default = "default_lockout")]
    pub lockout_secs: u64,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    pub name: String,
    /// argon2id PHC string from `stockade-service operator-hash`.
    pub password_hash: String,
}

fn default_session_ttl() -> u64 {
    8 * 3600
}
fn default_idle() -> u64 {
    30 * 60
}
fn default_max_failures() -> u32 {
    5
}
fn default_lockout() -> u64 {
    15 * 60
}

impl ConsoleConfig {
    pub fn paths_mut(&mut self) -> impl Iterator<Item = &mut PathBuf> {
        self.cert.iter_mut().chain(self.key.iter_mut())
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.operators.is_empty() {
            return Err("console.operators: at least one operator is required".into());
        }
        for (i, o) in self.operators.iter().enumerate() {
            if o.name.is_empty()
                || o.name.len() > 64
                || !o
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
            {
                return Err(format!(
                    "console.operators[{i}].name: 1-64 letters, digits, '.', '-' or '_'"
                ));
            }
            if self.operators[..i].iter().any(|p| p.name == o.name) {
                return Err(format!("console.operators: {} appears twice", o.name));
            }
            if !auth::valid_hash(&o.password_hash) {
                return Err(format!(
                    "console.operators[{i}].password_hash: not an argon2 PHC string (make one with `stockade-service operator-hash`)"
                ));
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err("console: give both cert and key, or neither".into());
        }
        if self.max_failures == 0 || self.session_ttl_secs == 0 || self.idle_timeout_secs == 0 {
            return Err(
                "console: max_failures, session_ttl_secs and idle_timeout_secs must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}

pub struct Console {
    svc: Arc<Service>,
    auth: Auth,
}

type Shared = Arc<Console>;

pub fn router(svc: Arc<Service>, cfg: ConsoleConfig) -> std::io::Result<Router> {
    let lockouts = svc.config.data_dir.join("console-lockouts.json");
    let state = Arc::new(Console {
        auth: Auth::new(cfg, Some(lockouts))?,
        svc,
    });
    Ok(Router::new()
        .route("/", get(|| async { Redirect::to("/queue") }))
        .route("/static/console.css", get(css))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/queue", get(queue))
        .route("/history", get(history))
        .route("/preview/{id}", get(preview))
        .route("/uploads/{id}/approve", post(approve))
        .route("/uploads/{id}/reject", post(reject))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state))
}

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        (
            "content-security-policy",
            "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
        ("strict-transport-security", "max-age=31536000"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(name: &str, value: &str, max_age: u64) -> (header::HeaderName, String) {
    (
        header::SET_COOKIE,
        format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"),
    )
}

fn html(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

async fn css() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        pages::CSS,
    )
        .into_response()
}

/// The signed-in operator, or a redirect to the sign-in page.
// An axum Response is the natural rejection of a page handler.
#[allow(clippy::result_large_err)]
fn signed_in(c: &Console, headers: &HeaderMap) -> Result<(String, Session), Response> {
    cookie(headers, SESSION_COOKIE)
        .and_then(|t| c.auth.session(t).map(|s| (t.to_string(), s)))
        .ok_or_else(|| Redirect::to("/login").into_response())
}

fn csrf_failed() -> Response {
    html(
        StatusCode::FORBIDDEN,
        pages::message(
            "Refused",
            "This form was refused: its CSRF token is missing or wrong (an expired page, or a request forged by another site). Reload the page and try again.",
        ),
    )
}

/// A signed-in operator whose form carries the session's CSRF token.
// An axum Response is the natural rejection of a page handler.
#[allow(clippy::result_large_err)]
fn checked(c: &Console, headers: &HeaderMap, csrf: &str) -> Result<Session, Response> {
    let (_, s) = signed_in(c, headers)?;
    if csrf.is_empty() || !auth::same(csrf, &s.csrf) {
        tracing::warn!(operator = %s.operator, "console form refused: CSRF token missing or wrong");
        return Err(csrf_failed());
    }
    Ok(s)
}

fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    let token = auth::random_token();
    let mut r = html(status, pages::login(&token, error));
    let (k, v) = set_cookie(LOGIN_COOKIE, &token, 600);
    r.headers_mut()
        .append(k, HeaderValue::from_str(&v).expect("ascii"));
    r
}

async fn login_form(State(c): State<Shared>, headers: HeaderMap) -> Response {
    if signed_in(&c, &headers).is_ok() {
        return Redirect::to("/queue").into_response();
    }
    login_page(StatusCode::OK, None)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

async fn login(
    State(c): State<Shared>,
    Extension(PeerAddr(peer)): Extension<PeerAddr>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    // Login CSRF: the form's token must be the one this browser got with the form.
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if f.csrf.is_empty() || expected.is_empty() || !auth::same(&f.csrf, expected) {
        return csrf_failed();
    }
    match c.auth.login(&f.username, &f.password, peer.ip()).await {
        LoginResult::Ok { token } => {
            tracing::info!(operator = ?f.username.trim(), "console sign-in");
            let mut r = Redirect::to("/queue").into_response();
            // 303 for a POST.
            *r.status_mut() = StatusCode::SEE_OTHER;
            for (k, v) in [
                set_cookie(SESSION_COOKIE, &token, c.auth.session_ttl_secs()),
                set_cookie(LOGIN_COOKIE, "", 0),
            ] {
                r.headers_mut()
                    .append(k, HeaderValue::from_str(&v).expect("ascii"));
            }
            r
        }
        LoginResult::Wrong => {
            tracing::info!(operator = ?f.username.trim(), %peer, "console sign-in failed");
            login_page(
                StatusCode::UNAUTHORIZED,
                Some("Wrong operator name or password."),
            )
        }
        LoginResult::Locked { retry_in } => login_page(
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many failed sign-ins: this operator is locked for {} more minute(s).",
                retry_in.as_secs().div_ceil(60)
            )),
        ),
    }
}

#[derive(Deserialize)]
struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(State(c): State<Shared>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    if let Err(r) = checked(&c, &headers, &f.csrf) {
        return r;
    }
    if let Some(t) = cookie(&headers, SESSION_COOKIE) {
        c.auth.logout(t);
    }
    let mut r = Redirect::to("/login").into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    let (k, v) = set_cookie(SESSION_COOKIE, "", 0);
    r.headers_mut()
        .append(k, HeaderValue::from_str(&v).expect("ascii"));
    r
}

#[derive(Deserialize)]
struct Flash {
    approved: Option<String>,
    rejected: Option<String>,
}

fn is_upload_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn queue(State(c): State<Shared>, headers: HeaderMap, Query(q): Query<Flash>) -> Response {
    let (_, s) = match signed_in(&c, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let mut uploads = match c.svc.db.uploads() {
        Ok(v) => v,
        Err(e) => return internal(e),
    };
    uploads.retain(|u| {
        matches!(
            u.stage,
            Stage::Checking | Stage::AwaitingOperator | Stage::Approved { .. }
        )
    });
    uploads.sort_by_key(|u| u.created_at);
    let name = |id: &str| {
        c.svc
            .db
            .upload(id)
            .ok()
            .flatten()
            .map(|u| u.file_name)
            .unwrap_or_default()
    };
    let flash = match (q.approved, q.rejected) {
        (Some(id), _) if is_upload_id(&id) => Some(format!(
            "Approved {}: on its way to the stock server (78).",
            name(&id)
        )),
        (_, Some(id)) if is_upload_id(&id) => Some(format!(
            "Rejected {}: erased, and the client is told the reason (76, 77).",
            name(&id)
        )),
        _ => None,
    };
    html(
        StatusCode::OK,
        pages::queue(&uploads, &s.operator, &s.csrf, flash),
    )
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "console");
    html(
        StatusCode::INTERNAL_SERVER_ERROR,
        pages::message("Error", "The service could not answer; see its log."),
    )
}

async fn history(State(c): State<Shared>, headers: HeaderMap) -> Response {
    let (_, s) = match signed_in(&c, &headers) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (entries, chain) = match c.svc.audit.recent(200) {
        Ok(v) => (v, Ok(c.svc.audit.head())),
        Err(e) => (vec![], Err(e.to_string())),
    };
    html(
        StatusCode::OK,
        pages::history(&entries, chain, &s.operator, &s.csrf),
    )
}

/// The preview, rendered from the disarmed image when the checks passed; there is none for an
/// upload still being checked, so the raw upload is never shown.
async fn preview(State(c): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = signed_in(&c, &headers) {
        return r;
    }
    let ready = is_upload_id(&id)
        && c.svc.db.upload(&id).ok().flatten().is_some_and(|u| {
            u.disarmed.is_some()
                && matches!(u.stage, Stage::AwaitingOperator | Stage::Approved { .. })
        });
    if !ready {
        return (StatusCode::NOT_FOUND, "no preview").into_response();
    }
    match tokio::fs::read(c.svc.preview_path(&id)).await {
        Ok(b) => ([(header::CONTENT_TYPE, "image/png")], b).into_response(),
        Err(_) => (StatusCode::NOT_FOUND, "no preview").into_response(),
    }
}

fn not_waiting(id: &str) -> Response {
    html(
        StatusCode::CONFLICT,
        pages::message(
            "Not waiting",
            &format!("Upload {id} is not awaiting a decision (already decided, or unknown)."),
        ),
    )
}

fn see_other(to: String) -> Response {
    let mut r = Redirect::to(&to).into_response();
    *r.status_mut() = StatusCode::SEE_OTHER;
    r
}

/// A decision the audit trail could not take (issue 16, defect 5): the operator is told.
fn undecided(title: &str, e: &review::Undecided) -> Response {
    tracing::error!(error = %e, "{title}");
    html(
        StatusCode::SERVICE_UNAVAILABLE,
        pages::message(title, &e.to_string()),
    )
}

/// 93 yes → 94 → 78.
async fn approve(
    State(c): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    let s = match checked(&c, &headers, &f.csrf) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match c.svc.db.upload(&id) {
        Ok(Some(u)) if u.stage == Stage::AwaitingOperator => {
            tracing::info!(upload = %id, operator = %s.operator, "operator approved in the console (93 yes)");
            match review::approve(c.svc.clone(), u, s.operator).await {
                Ok(()) => see_other(format!("/queue?approved={id}")),
                Err(e) => undecided("Not approved", &e),
            }
        }
        Ok(_) => not_waiting(&id),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct RejectForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    reason: String,
}

/// 93 no → 95, 76, 77 with the operator's reason.
async fn reject(
    State(c): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<RejectForm>,
) -> Response {
    let s = match checked(&c, &headers, &f.csrf) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let reason = f.reason.trim();
    if reason.is_empty() || reason.chars().count() > 300 || reason.chars().any(char::is_control) {
        return html(
            StatusCode::BAD_REQUEST,
            pages::message(
                "Reason needed",
                "A rejection needs a reason of 1-300 characters on one line: the client is told it (77).",
            ),
        );
    }
    match c.svc.db.upload(&id) {
        Ok(Some(mut u)) if u.stage == Stage::AwaitingOperator => {
            tracing::info!(upload = %id, operator = %s.operator, "operator rejected in the console (93 no)");
            u.operator = Some(s.operator);
            match review::refuse(&c.svc, u, "ethics", Refusal::Ethics(reason.to_string())).await {
                Ok(()) => see_other(format!("/queue?rejected={id}")),
                Err(e) => undecided("Not rejected", &e),
            }
        }
        Ok(_) => not_waiting(&id),
        Err(e) => internal(e),
    }
}
