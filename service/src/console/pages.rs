//! The console's pages, server-rendered with maud (escaped by construction). No script, no
//! external asset: one stylesheet served by the console itself. Native forms, labels and a
//! skip link, so every action works from the keyboard alone.

use crate::audit::Entry;
use crate::db::{Stage, UploadRecord};
use maud::{html, Markup, DOCTYPE};

pub const CSS: &str = r#"
:root { color-scheme: light; --ink:#1b1f24; --muted:#57606a; --line:#d0d7de; --ok:#1a7f37; --bad:#cf222e; --accent:#0b57d0; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.45 "DejaVu Sans", system-ui, sans-serif; color:var(--ink); background:#f6f8fa; }
a { color: var(--accent); }
.skip { position:absolute; left:-999px; top:0; background:#fff; padding:.5em; }
.skip:focus { left:.5em; }
header { display:flex; align-items:center; gap:1.5em; padding:.6em 1.2em; background:#24292f; color:#fff; }
header h1 { font-size:1.1em; margin:0; }
header nav { display:flex; gap:1em; flex:1; }
header nav a { color:#fff; }
header nav a[aria-current=page] { font-weight:bold; text-decoration:underline; }
header form { margin:0; }
main { max-width:1100px; margin:1.2em auto; padding:0 1em; }
:focus-visible { outline:3px solid #fb8c00; outline-offset:2px; }
.flash { padding:.6em 1em; border-radius:6px; background:#dafbe1; border:1px solid #4ac26b; }
.error { padding:.6em 1em; border-radius:6px; background:#ffebe9; border:1px solid #ff8182; }
.upload { display:grid; grid-template-columns: 260px 1fr; gap:1.2em; background:#fff; border:1px solid var(--line); border-radius:8px; padding:1em; margin:1em 0; }
.upload img { max-width:240px; max-height:240px; border:1px solid var(--line); background:
  repeating-conic-gradient(#eee 0 25%, #fff 0 50%) 0 0/16px 16px; }
.upload h2 { font-size:1.05em; margin:0 0 .4em; word-break:break-all; }
dl { display:grid; grid-template-columns:max-content 1fr; gap:.15em 1em; margin:0 0 .8em; }
dt { color:var(--muted); }
dd { margin:0; word-break:break-word; }
.pass { color:var(--ok); }
.fail { color:var(--bad); }
.actions { display:flex; flex-wrap:wrap; gap:.8em; align-items:flex-end; }
.actions form { display:flex; gap:.5em; align-items:flex-end; margin:0; }
label { display:block; font-size:.9em; color:var(--muted); }
input[type=text], input[type=password] { font:inherit; padding:.35em .5em; border:1px solid var(--line); border-radius:6px; min-width:16em; }
button { font:inherit; padding:.4em 1em; border-radius:6px; border:1px solid var(--line); background:#f6f8fa; cursor:pointer; }
button.approve { background:var(--ok); color:#fff; border-color:var(--ok); }
button.reject { background:var(--bad); color:#fff; border-color:var(--bad); }
table { border-collapse:collapse; width:100%; background:#fff; }
th, td { text-align:left; padding:.35em .5em; border-bottom:1px solid var(--line); vertical-align:top; font-size:.92em; }
.login { max-width:380px; margin:4em auto; background:#fff; border:1px solid var(--line); border-radius:8px; padding:1.5em; }
.login p { margin:.8em 0; }
.mono { font-family:"DejaVu Sans Mono", monospace; font-size:.9em; }
"#;

/// The page frame; `nav` is the current page's name, `who` the operator and CSRF token.
pub fn layout(title: &str, nav: Option<&str>, who: Option<(&str, &str)>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Stockade review desk" }
                link rel="stylesheet" href="/static/console.css";
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    h1 { "Stockade review desk" }
                    @if let Some((operator, csrf)) = who {
                        nav aria-label="Main" {
                            a href="/queue" aria-current=[(nav == Some("queue")).then_some("page")] { "Queue" }
                            a href="/history" aria-current=[(nav == Some("history")).then_some("page")] { "History" }
                        }
                        span { "Signed in as " strong { (operator) } }
                        form method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" { (body) }
            }
        }
    }
}

pub fn login(csrf: &str, error: Option<&str>) -> Markup {
    layout(
        "Sign in",
        None,
        None,
        html! {
            form.login method="post" action="/login" {
                h2 { "Operator sign-in" }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                input type="hidden" name="csrf" value=(csrf);
                p {
                    label for="username" { "Operator name" }
                    input #username type="text" name="username" autocomplete="username" required autofocus;
                }
                p {
                    label for="password" { "Password" }
                    input #password type="password" name="password" autocomplete="current-password" required;
                }
                p { button type="submit" { "Sign in" } }
            }
        },
    )
}

pub fn message(title: &str, text: &str) -> Markup {
    layout(
        title,
        None,
        None,
        html! { p.error role="alert" { (text) } p { a href="/login" { "Back to sign-in" } } },
    )
}

fn stage_text(s: &Stage) -> String {
    match s {
        Stage::Checking => "checks running (91, 92)".into(),
        Stage::AwaitingOperator => "awaiting your decision (93)".into(),
        Stage::Approved { note } => format!("approved: {note}"),
        Stage::Refused { refusal } => format!("refused: {refusal}"),
        Stage::Stored { stock_server, .. } => format!("stored on {stock_server}"),
    }
}

fn short(s: &str) -> &str {
    &s[..s.len().min(16)]
}

pub fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB ({n} bytes)", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB ({n} bytes)", n as f64 / 1024.0),
        n => format!("{n} bytes"),
    }
}

fn check_class(check: &str, result: &str) -> &'static str {
    let ok = ["clean", "verified", "unchanged", "auto-approved"]
        .iter()
        .any(|p| result.starts_with(p))
        || matches!(check, "integrity" | "disarm");
    if ok {
        "pass"
    } else {
        ""
    }
}

pub fn queue(
    uploads: &[UploadRecord],
    operator: &str,
    csrf: &str,
    flash: Option<String>,
) -> Markup {
    let body = html! {
        h2 { "Quarantine queue (74)" }
        @if let Some(f) = flash { p.flash role="status" { (f) } }
        @if uploads.is_empty() {
            p { "No uploads are waiting." }
        }
        @for u in uploads {
            article.upload aria-labelledby={ "f-" (u.id) } {
                div {
                    @if u.disarmed.is_some() && u.stage == Stage::AwaitingOperator {
                        img src={ "/preview/" (u.id) } alt={ "Preview of " (u.file_name) " (rendered from the disarmed image)" };
                    } @else {
                        p { "No preview yet: the checks have not finished." }
                    }
                }
                div {
                    h2 #{ "f-" (u.id) } { (u.file_name) }
                    dl {
                        dt { "Status" } dd { (stage_text(&u.stage)) }
                        dt { "Upload" } dd.mono { (u.id) }
                        dt { "Account" } dd.mono title=(u.client_id) { (short(&u.client_id)) "…" }
                        dt { "Received" } dd { (crate::audit::rfc3339(u.created_at)) }
                        dt { "Size received" } dd { (bytes(u.size)) }
                        dt { "SHA-256 received" } dd.mono { (short(&u.sha256)) "…" }
                        @if let Some(d) = &u.disarmed {
                            dt { "Type" } dd { (d.format) ", " (d.width) "×" (d.height) }
                            dt { "Size stored" } dd { (bytes(d.size)) @if d.changed { " (disarmed copy)" } @else { " (identical to the upload)" } }
                        }
                        @for (check, result) in &u.checks {
                            dt { (check) } dd class=(check_class(check, result)) { (result) }
                        }
                    }
                    @if u.stage == Stage::AwaitingOperator {
                        div.actions {
                            form method="post" action={ "/uploads/" (u.id) "/approve" } {
                                input type="hidden" name="csrf" value=(csrf);
                                button.approve type="submit" aria-label={ "Approve " (u.file_name) } { "Approve" }
                            }
                            form method="post" action={ "/uploads/" (u.id) "/reject" } {
                                input type="hidden" name="csrf" value=(csrf);
                                div {
                                    label for={ "r-" (u.id) } { "Reason (shown to the client)" }
                                    input type="text" id={ "r-" (u.id) } name="reason" required maxlength="300";
                                }
                                button.reject type="submit" aria-label={ "Reject " (u.file_name) } { "Reject" }
                            }
                        }
                    }
                }
            }
        }
    };
    layout("Queue", Some("queue"), Some((operator, csrf)), body)
}

pub fn history(
    entries: &[Entry],
    chain: Result<(u64, String), String>,
    operator: &str,
    csrf: &str,
) -> Markup {
    let body = html! {
        h2 { "History (audit trail)" }
        @match &chain {
            Ok((n, head)) => p role="status" { "Chain verified: " (n) " entries, head " span.mono { (short(head)) "…" } },
            Err(e) => p.error role="alert" { "The audit trail does not verify: " (e) },
        }
        table {
            caption.skip { "Latest decisions first" }
            thead { tr { th { "Time" } th { "Event" } th { "File" } th { "Account" } th { "Operator" } th { "Reason / checks" } } }
            tbody {
                @for e in entries {
                    tr {
                        td { (e.time) }
                        td { (e.event) }
                        td { (e.file_name.as_deref().unwrap_or("")) br; span.mono { (e.upload.as_deref().map(short).unwrap_or("")) } }
                        td.mono { (short(&e.account)) }
                        td { (e.operator.as_deref().unwrap_or("")) }
                        td {
                            @if let Some(r) = &e.reason { (r) br; }
                            @for (c, r) in &e.checks { span { (c) ": " (r) } br; }
                        }
                    }
                }
            }
        }
    };
    layout("History", Some("history"), Some((operator, csrf)), body)
}
