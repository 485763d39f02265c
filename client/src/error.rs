//! The client's error type. Exit codes follow the CLI contract: 3 when a server or a peer
//! refused (64, 65, 103, 123, 153), 4 when waiting timed out, 1 for everything else.

use stockade_proto::identity::IdentityError;
use stockade_proto::reason::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A server or a peer said no, with its stable code and words.
    #[error("refused: {}: {}", .0.code(), .0.detail())]
    Refused(Refusal),
    /// Waiting (for a review, a push) ran out of time; the message says what to do next.
    #[error("{0}")]
    TimedOut(String),
    /// Missing or inconsistent settings: the message names the option to set.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The service could not be reached or answered something unexpected.
    #[error("service: {0}")]
    Service(String),
    /// A push or share peer sent something that does not verify.
    #[error("{0}")]
    Protocol(String),
}

impl ClientError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Refused(_) => 3,
            ClientError::TimedOut(_) => 4,
            _ => 1,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClientError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_print_code_and_detail_and_exit_3() {
        let e = ClientError::Refused(Refusal::Virus("Eicar-Test-Signature".into()));
        assert_eq!(e.to_string(), "refused: virus: Eicar-Test-Signature");
        assert_eq!(e.exit_code(), 3);
        assert_eq!(ClientError::TimedOut("x".into()).exit_code(), 4);
        assert_eq!(ClientError::Config("x".into()).exit_code(), 1);
    }
}
