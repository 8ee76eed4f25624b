//! The one place where errors become gRPC statuses: every service and the
//! auth layer map through here, so a variant always gets the same code.

use hourcell_node::NodeError;
use hourcell_query::QueryError;
use tonic::Status;

/// Maps every error to a status: bad input is `INVALID_ARGUMENT` naming the
/// field and value; storage failures are `INTERNAL` (and logged); a node
/// that stopped serving is `UNAVAILABLE`.
pub fn to_status(e: NodeError) -> Status {
    match e {
        NodeError::Invalid(m) => Status::invalid_argument(m),
        NodeError::NotFound(m) => Status::not_found(m),
        NodeError::UnknownRole { .. } => Status::invalid_argument(e.to_string()),
        NodeError::Refused(m) => Status::failed_precondition(m),
        NodeError::Unavailable(m) => Status::unavailable(m),
        NodeError::Query(QueryError::InvalidArgument {
            field, ref reason, ..
        }) => {
            // The field also travels as a google.rpc.BadRequest violation.
            use tonic_types::{ErrorDetails, StatusExt};
            let details = ErrorDetails::with_bad_request_violation(field, reason.clone());
            Status::with_error_details(tonic::Code::InvalidArgument, e.to_string(), details)
        }
        NodeError::Query(QueryError::NotFound { .. }) => Status::not_found(e.to_string()),
        NodeError::Query(QueryError::Unavailable(m)) => Status::unavailable(m),
        // Caught by the fan-out, which falls back to older reads; should
        // one escape, retrying after the upgrade helps.
        NodeError::Query(QueryError::UnknownRead(m)) => Status::unavailable(m),
        NodeError::Query(QueryError::Storage(s)) | NodeError::Storage(s) => {
            tracing::error!(error = %s, "request failed in storage");
            if s.is_fatal() {
                Status::unavailable(format!("storage failure: {s}"))
            } else {
                Status::invalid_argument(s.to_string())
            }
        }
    }
}
