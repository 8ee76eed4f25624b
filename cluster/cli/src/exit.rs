//! Exit codes, distinct and documented (README, "Exit codes"), so that
//! scripts can tell a typo from a down server from a refusal.

use hourcell_server::error::ClientError;

/// Success.
pub const OK: i32 = 0;
/// Anything not below (an I/O error, a failed import, a bug).
pub const FAILED: i32 = 1;
/// Bad flags or arguments (clap uses 2 as well).
pub const USAGE: i32 = 2;
/// The server could not be reached, or is unavailable, overloaded or
/// too slow: retrying later may help.
pub const UNAVAILABLE: i32 = 3;
/// Not authenticated, or not allowed (role, purpose).
pub const DENIED: i32 = 4;
/// The server refused the request as invalid (a field, a state, an
/// unknown id).
pub const INVALID: i32 = 5;
/// `audit verify` found an edited, missing or reordered record, or a
/// checkpoint the log no longer matches.
pub const VERIFY_FAILED: i32 = 6;

/// An error with its exit code; the message is shown as it is.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn new(code: i32, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Failure {
            code,
            message: message.into(),
        })
    }
}

/// The exit code of a gRPC status.
pub fn of_status(code: tonic::Code) -> i32 {
    use tonic::Code::*;
    match code {
        Unavailable | DeadlineExceeded | ResourceExhausted | Aborted | Cancelled => UNAVAILABLE,
        Unauthenticated | PermissionDenied => DENIED,
        InvalidArgument | FailedPrecondition | OutOfRange | NotFound | AlreadyExists => INVALID,
        _ => FAILED,
    }
}

/// The exit code for an error: the first [`Failure`] in its chain, else
/// what a client error says, else [`FAILED`].
pub fn code_of(e: &anyhow::Error) -> i32 {
    for cause in e.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.code;
        }
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return match c {
                ClientError::Unreachable { .. } => UNAVAILABLE,
                ClientError::BadUrl { .. } | ClientError::NeedsCa { .. } => USAGE,
                ClientError::PlaintextWithTls { .. } => USAGE,
                ClientError::BadToken | ClientError::TokenFile { .. } => DENIED,
                _ => FAILED,
            };
        }
    }
    FAILED
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_distinct_and_found_through_context() {
        let all = [
            OK,
            FAILED,
            USAGE,
            UNAVAILABLE,
            DENIED,
            INVALID,
            VERIFY_FAILED,
        ];
        let set: std::collections::BTreeSet<i32> = all.into_iter().collect();
        assert_eq!(set.len(), all.len());
        let e = Failure::new(DENIED, "no").context("while asking");
        assert_eq!(code_of(&e), DENIED);
        assert_eq!(code_of(&anyhow::anyhow!("plain")), FAILED);
        assert_eq!(of_status(tonic::Code::PermissionDenied), DENIED);
        assert_eq!(of_status(tonic::Code::Unavailable), UNAVAILABLE);
        assert_eq!(of_status(tonic::Code::InvalidArgument), INVALID);
    }
}
