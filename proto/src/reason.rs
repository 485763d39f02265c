//! Refusal reasons: a stable code (for metrics labels and scripts) plus words (for people).
//! Fig. 5: 91 virus, 92 integrity, 93 ethics; 107/132 password checks; 121 destination.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why something was not stored or not served. `code()` is the bounded metrics label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", content = "detail", rename_all = "snake_case")]
pub enum Refusal {
    /// 91: the virus check found something (detail: the signature name).
    Virus(String),
    /// 91: the virus check could not run (clamd down, timeout, limits): fail closed.
    ScanUnavailable(String),
    /// 92: the image does not fully decode within limits.
    Corrupt(String),
    /// 93: the operator refused it on ethical grounds.
    Ethics(String),
    /// 107 / 132: the server password is wrong or unknown.
    Password(String),
    /// The sealed envelope or its signature did not verify (93 in Fig. 4 numbering).
    Envelope(String),
    /// 121: the download destination is not the requester's own address.
    Destination(String),
    /// A size limit was exceeded.
    TooLarge(String),
    /// A named file does not exist.
    NotFound(String),
    /// The request itself is malformed.
    BadRequest(String),
    /// A stock server could not be reached.
    StockUnavailable(String),
    /// 92: the content (sniffed, never the file name) is a type the review does not take;
    /// detail: the detected type, e.g. `svg`.
    Unsupported(String),
    /// A file of that name is in the account already, and only the account owner's signed
    /// upload may replace it (a share holder's password is not enough).
    Exists(String),
    /// Too much at once: pushes to this address, or the stock server's push queue, are full
    /// (issue 16, defect 2). Try again when the running ones have finished.
    Busy(String),
}

impl Refusal {
    /// The stable code, e.g. `virus`, `corrupt`, `ethics`.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Virus(_) => "virus",
            Refusal::ScanUnavailable(_) => "scan_unavailable",
            Refusal::Corrupt(_) => "corrupt",
            Refusal::Ethics(_) => "ethics",
            Refusal::Password(_) => "password",
            Refusal::Envelope(_) => "envelope",
            Refusal::Destination(_) => "destination",
            Refusal::TooLarge(_) => "too_large",
            Refusal::NotFound(_) => "not_found",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::StockUnavailable(_) => "stock_unavailable",
            Refusal::Unsupported(_) => "unsupported",
            Refusal::Exists(_) => "exists",
            Refusal::Busy(_) => "busy",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            Refusal::Virus(d)
            | Refusal::ScanUnavailable(d)
            | Refusal::Corrupt(d)
            | Refusal::Ethics(d)
            | Refusal::Password(d)
            | Refusal::Envelope(d)
            | Refusal::Destination(d)
            | Refusal::TooLarge(d)
            | Refusal::NotFound(d)
            | Refusal::BadRequest(d)
            | Refusal::StockUnavailable(d)
            | Refusal::Unsupported(d)
            | Refusal::Exists(d)
            | Refusal::Busy(d) => d,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.code(), self.detail())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_code_and_words() {
        assert_eq!(
            Refusal::Virus("Eicar-Test".into()).to_string(),
            "virus:Eicar-Test"
        );
        let j = serde_json::to_string(&Refusal::Corrupt("truncated".into())).unwrap();
        assert_eq!(j, r#"{"code":"corrupt","detail":"truncated"}"#);
    }
}
