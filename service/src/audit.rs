//! The audit trail of the review desk (Fig. 5): every decision (93), refusal (95, 76, 77),
//! delivery (78) and deletion, appended as one JSON line each and made durable (fsync) before
//! the append returns.
//!
//! Hash chain: each line carries `prev`, the hash of the line before it (64 zeros for the first)
//! and `seq`, its number; its own `hash` is the SHA-256 of the line's text without the
//! trailing `,"hash":"…"}` (that is, of the JSON object with `prev` but without `hash`). So an
//! edited line no longer matches its own hash (or, if the hash was recomputed, the next
//! line's `prev`), and a removed line breaks `seq` and `prev` at the line after it.
//! `stockade-service audit verify FILE` checks all of it and names the first bad line. A cut
//! at the end of the file leaves a valid chain: compare the head hash that `verify` prints
//! with one kept elsewhere (the service logs it at start).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const HASH_SUFFIX_LEN: usize = r#","hash":""#.len() + 64 + r#""}"#.len();

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("line {line}: {problem}")]
    Broken { line: usize, problem: String },
}

/// One event. `checks` are each check's result in order: ("virus", "clean"), ...
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    /// Seconds since the Unix epoch (for `--since`).
    pub ts: u64,
    /// `approved`, `refused`, `stored`, `deleted`.
    pub event: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<String>,
    /// Hex SHA-256 of the upload as received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Hex SHA-256 of the stored (disarmed) image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_digest: Option<String>,
    /// The client (key fingerprint) the upload or account belongs to.
    pub account: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    #[serde(default)]
    pub checks: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Hash of the previous line.
    pub prev: String,
}

/// What a caller records; `seq`, times and `prev` are filled in by the log.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub event: &'static str,
    pub upload: Option<String>,
    pub digest: Option<String>,
    pub stored_digest: Option<String>,
    pub account: String,
    pub file_name: Option<String>,
    pub checks: Vec<(String, String)>,
    pub operator: Option<String>,
    pub reason: Option<String>,
}

/// A line of the log as read back, with its hash.
#[derive(Debug, Clone)]
pub struct Line {
    pub entry: Entry,
    pub hash: String,
}

struct Head {
    file: std::fs::File,
    seq: u64,
    hash: String,
    /// Length of the file up to the last whole, synced line: what a failed append is cut
    /// back to, so a half-written line (disk full) never stays in the chain.
    len: u64,
}

pub struct AuditLog {
    path: PathBuf,
    head: Mutex<Head>,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Seconds since the epoch as RFC 3339 UTC (civil-from-days).
pub fn rfc3339(ts: u64) -> String {
    let days = (ts / 86_400) as i64;
    let rem = ts % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Parses and checks one line against the chain so far.
fn check_line(
    n: usize,
    text: &str,
    prev_hash: &str,
    prev_seq: Option<u64>,
) -> Result<Line, AuditError> {
    let broken = |problem: String| AuditError::Broken { line: n, problem };
    if text.len() < HASH_SUFFIX_LEN || !text.ends_with("\"}") {
        return Err(broken("not an audit entry (no hash at the end)".into()));
    }
    let split = text.len() - HASH_SUFFIX_LEN;
    // Issue 16, defect 5: a line edited to put a multi-byte character here must be named as
    // broken, not panic (a panic here poisoned the log's lock for every later decision).
    if !text.is_char_boundary(split) {
        return Err(broken("not an audit entry (no hash at the end)".into()));
    }
    let (body, tail) = text.split_at(split);
    let hash = tail
        .strip_prefix(r#","hash":""#)
        .and_then(|t| t.strip_suffix("\"}"))
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| broken("not an audit entry (no hash at the end)".into()))?;
    let body = format!("{body}}}");
    if sha256_hex(body.as_bytes()) != hash {
        return Err(broken(
            "altered: its content does not match its hash".into(),
        ));
    }
    let entry: Entry =
        serde_json::from_str(&body).map_err(|e| broken(format!("not an audit entry: {e}")))?;
    let want_seq = prev_seq.map_or(1, |s| s + 1);
    if entry.seq != want_seq {
        return Err(broken(format!(
            "sequence {} where {want_seq} was expected: {}",
            entry.seq,
            if entry.seq > want_seq {
                "lines were removed before it"
            } else {
                "lines were reordered or duplicated"
            }
        )));
    }
    if entry.prev != prev_hash {
        return Err(broken(
            "the chain is broken: it does not carry the hash of the line before it (that line was altered, removed or inserted)".into(),
        ));
    }
    Ok(Line {
        entry,
        hash: hash.to_string(),
    })
}

/// Reads and verifies a whole log; the error names the first bad line (1-based).
pub fn verify(path: &Path) -> Result<Vec<Line>, AuditError> {
    let io = |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut out: Vec<Line> = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let line = line.map_err(io)?;
        let (prev, seq) = out
            .last()
            .map_or((GENESIS, None), |l| (l.hash.as_str(), Some(l.entry.seq)));
        let l = check_line(i + 1, &line, prev, seq)?;
        out.push(l);
    }
    Ok(out)
}

impl AuditLog {
    /// Opens (or creates, 0600) the log and finds its head. A torn last line (a crash during an
    /// append, no newline) is cut off; a chain that does not verify is refused.
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        let io = |source| AuditError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Ok(bytes) = std::fs::read(path) {
            if !bytes.is_empty() && !bytes.ends_with(b"\n") {
                let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
                tracing::warn!(path = %path.display(), dropped = bytes.len() - keep, "audit log ends in a torn line; cutting it off");
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io)?;
                f.set_len(keep as u64).map_err(io)?;
                f.sync_all().map_err(io)?;
            }
        }
        let (seq, hash) = if path.exists() {
            let lines = verify(path)?;
            lines
                .last()
                .map_or((0, GENESIS.to_string()), |l| (l.entry.seq, l.hash.clone()))
        } else {
            (0, GENESIS.to_string())
        };
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if let Some(dir) = path.parent() {
            let _ = stockade_proto::fsutil::sync_dir(dir);
        }
        Ok(Self {
            path: path.to_path_buf(),
            head: Mutex::new(Head {
                file,
                seq,
                hash,
                len,
            }),
        })
    }

    /// The head. Nothing panics while holding it, and it changes only after a line is whole
    /// and synced, so even a poisoned lock holds a consistent head.
    fn lock(&self) -> std::sync::MutexGuard<'_, Head> {
        self.head
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (entries, head hash).
    pub fn head(&self) -> (u64, String) {
        let h = self.lock();
        (h.seq, h.hash.clone())
    }

    /// Appends one event and fsyncs it; returns the entry as written. On an error nothing of
    /// the line stays: the file is cut back to its last whole line (now, or before the next
    /// append if the cut fails too), and the caller must not take the decision.
    pub fn append(&self, ev: Event) -> Result<Entry, AuditError> {
        let mut h = self.lock();
        let ts = crate::now_secs();
        let entry = Entry {
            seq: h.seq + 1,
            time: rfc3339(ts),
            ts,
            event: ev.event.to_string(),
            upload: ev.upload,
            digest: ev.digest,
            stored_digest: ev.stored_digest,
            account: ev.account,
            file_name: ev.file_name,
            checks: ev.checks,
            operator: ev.operator,
            reason: ev.reason,
            prev: h.hash.clone(),
        };
        let body = serde_json::to_string(&entry).expect("entries serialise");
        let hash = sha256_hex(body.as_bytes());
        let line = format!(
            "{},\"hash\":\"{hash}\"}}\n",
            body.strip_suffix('}').expect("a JSON object")
        );
        let io = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        // A torn line left by an earlier failure whose cut failed too.
        if h.file.metadata().map_err(io)?.len() != h.len {
            h.file.set_len(h.len).map_err(io)?;
        }
        let written = h
            .file
            .write_all(line.as_bytes())
            .and_then(|()| h.file.sync_data());
        if let Err(e) = written {
            if let Err(cut) = h.file.set_len(h.len).and_then(|()| h.file.sync_data()) {
                tracing::error!(error = %cut, "cutting a failed audit line back; retried before the next append");
            }
            return Err(io(e));
        }
        h.seq = entry.seq;
        h.hash = hash;
        h.len += line.len() as u64;
        Ok(entry)
    }

    /// The last `n` entries, newest first (for the console's history page).
    pub fn recent(&self, n: usize) -> Result<Vec<Entry>, AuditError> {
        let _h = self.lock();
        let mut v: Vec<Entry> = verify(&self.path)?.into_iter().map(|l| l.entry).collect();
        let skip = v.len().saturating_sub(n);
        let mut v = v.split_off(skip);
        v.reverse();
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: usize) -> Event {
        Event {
            event: "refused",
            upload: Some(format!("u{i}")),
            digest: Some("ab".repeat(32)),
            account: "acct".into(),
            checks: vec![("virus".into(), "clean".into())],
            reason: Some("ethics:offensive \"quote\" }".into()),
            operator: Some("alice".into()),
            ..Default::default()
        }
    }

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn write_lines(p: &Path, l: &[String]) {
        std::fs::write(p, l.iter().map(|s| format!("{s}\n")).collect::<String>()).unwrap();
    }

    #[test]
    fn chain_verifies_and_survives_reopen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.jsonl");
        let log = AuditLog::open(&p).unwrap();
        for i in 0..3 {
            log.append(ev(i)).unwrap();
        }
        drop(log);
        let log = AuditLog::open(&p).unwrap();
        log.append(ev(3)).unwrap();
        let v = verify(&p).unwrap();
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].entry.prev, GENESIS);
        assert_eq!(v[3].entry.prev, v[2].hash);
        assert_eq!(log.recent(2).unwrap()[0].seq, 4);
        assert_eq!(log.head().0, 4);
    }

    #[test]
    fn edited_line_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.jsonl");
        let log = AuditLog::open(&p).unwrap();
        for i in 0..4 {
            log.append(ev(i)).unwrap();
        }
        let mut l = lines(&p);
        l[1] = l[1].replace("\"refused\"", "\"approved\"");
        write_lines(&p, &l);
        let e = verify(&p).unwrap_err();
        assert!(matches!(e, AuditError::Broken { line: 2, .. }), "{e}");
        assert!(e.to_string().contains("altered"), "{e}");
        // Reopening refuses a broken chain rather than extending it.
        assert!(AuditLog::open(&p).is_err());
    }

    #[test]
    fn edit_with_recomputed_hash_is_caught_by_the_next_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.jsonl");
        let log = AuditLog::open(&p).unwrap();
        for i in 0..3 {
            log.append(ev(i)).unwrap();
        }
        let mut l = lines(&p);
        let body = l[0][..l[0].len() - HASH_SUFFIX_LEN].replace("u0", "uX");
        let h = sha256_hex(format!("{body}}}").as_bytes());
        l[0] = format!("{body},\"hash\":\"{h}\"}}");
        write_lines(&p, &l);
        let e = verify(&p).unwrap_err();
        assert!(matches!(e, AuditError::Broken { line: 2, .. }), "{e}");
    }

    #[test]
    fn deleted_line_is_named() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.jsonl");
        let log = AuditLog::open(&p).unwrap();
        for i in 0..4 {
            log.append(ev(i)).unwrap();
        }
        let mut l = lines(&p);
        l.remove(1);
        write_lines(&p, &l);
        let e = verify(&p).unwrap_err();
        assert!(matches!(e, AuditError::Broken { line: 2, .. }), "{e}");
        assert!(e.to_string().contains("removed"), "{e}");
    }

    #[test]
    fn torn_last_line_is_cut_on_open() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.jsonl");
        let log = AuditLog::open(&p).unwrap();
        log.append(ev(0)).unwrap();
        drop(log);
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"seq\":2,\"ti").unwrap();
        drop(f);
        let log = AuditLog::open(&p).unwrap();
        log.append(ev(1)).unwrap();
        assert_eq!(verify(&p).unwrap().len(), 2);
    }

    /// Issue 16, defect 5: a multi-byte character where the hash should start is a broken line,
    /// named, not a panic (which poisoned the lock: every later decision panicked too).
    #[test]
    fn multibyte_character_at_the_hash_is_named_not_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.jsonl");
        let log = AuditLog::open(&p).unwrap();
        log.append(ev(0)).unwrap();
        let mut l = lines(&p);
        // "é" (2 bytes) straddling the split point: the line keeps its length minus one byte.
        let split = l[0].len() - HASH_SUFFIX_LEN;
        l[0].replace_range(split - 1..split + 1, "é");
        write_lines(&p, &l);
        let e = verify(&p).unwrap_err();
        assert!(matches!(e, AuditError::Broken { line: 1, .. }), "{e}");
        let e = log.recent(5).unwrap_err();
        assert!(matches!(e, AuditError::Broken { line: 1, .. }), "{e}");
        // The log still answers afterwards.
        assert_eq!(log.head().0, 1);
    }

    /// Issue 16, defect 5: a disk that fills in the middle of a line. Run in a child process
    /// whose file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) stops the write part-way: the
    /// append fails, the half-line is cut, and the chain still verifies and extends.
    #[test]
    fn a_half_written_line_does_not_break_the_chain() {
        const CHILD: &str = "STOCKADE_AUDIT_FSIZE_CHILD";
        let name = "audit::tests::a_half_written_line_does_not_break_the_chain";
        if let Some(p) = std::env::var_os(CHILD) {
            let p = PathBuf::from(p);
            let log = AuditLog::open(&p).unwrap();
            let mut failed = false;
            for i in 1..100 {
                if log.append(ev(i)).is_err() {
                    failed = true;
                    break;
                }
            }
            assert!(failed, "the size limit never stopped an append");
            let bytes = std::fs::read(&p).unwrap();
            assert!(bytes.ends_with(b"\n"), "a half-written line was left");
            assert_eq!(verify(&p).unwrap().len() as u64, log.head().0);
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("audit.jsonl");
        AuditLog::open(&p).unwrap().append(ev(0)).unwrap();
        // Room for a few more lines, and then a limit inside one.
        let limit = std::fs::metadata(&p).unwrap().len() * 4 + 100;
        let out = std::process::Command::new("sh")
            .args(["-c", "trap '' XFSZ; exec prlimit --fsize=\"$0\" -- \"$@\""])
            .arg(limit.to_string())
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", name, "--test-threads", "1", "--nocapture"])
            .env(CHILD, &p)
            .output()
            .expect("sh and prlimit (util-linux)");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the child ran the test"
        );
        let log = AuditLog::open(&p).unwrap();
        let before = log.head().0;
        log.append(ev(100)).unwrap();
        assert_eq!(verify(&p).unwrap().len() as u64, before + 1);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
