//! What the query services share in answering: store work run off the
//! async runtime, who sees small counts suppressed, published units of
//! time, and the log of aggregate queries.

use std::sync::Arc;

use hourcell_node::node::Node;
use hourcell_node::NodeError;
use hourcell_proto::v1;
use tonic::Status;

use crate::auth::{Auth, Principal, Rpc};
use crate::convert::invalid;
use crate::status::to_status;

/// Runs blocking store work off the async runtime.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
        .map_err(to_status)
}

/// The threshold below which `p` sees counts suppressed (0: none).
pub(crate) fn suppression(auth: &Auth, p: &Principal) -> u64 {
    if p.has(crate::auth::Role::Investigator) {
        0
    } else {
        auth.suppress_below
    }
}

/// Logs an aggregate query of a caller who sees suppressed counts. The
/// answer need not wait for the record.
pub(crate) fn log_aggregate(
    node: &Arc<Node>,
    p: &Principal,
    rpc: Rpc,
    parameters: serde_json::Value,
) {
    let entry = hourcell_storage::AuditEntry {
        time: node.now(),
        principal: p.name.clone(),
        roles: p.role_names(),
        rpc: rpc.name().into(),
        parameters: parameters.to_string(),
        outcome: "ok (aggregate, counts below k suppressed)".into(),
        ..Default::default()
    };
    let node = node.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = node.audit(vec![entry]) {
            tracing::warn!(error = %e, "could not log an aggregate query");
        }
    });
}

/// The day (RFC 3339) of a window that is one whole UTC day which has
/// ended (and is seen whole: as_of not before its end); else `why`.
pub(crate) fn whole_past_day(
    window: Option<&v1::Window>,
    now: i64,
    why: &str,
) -> Result<String, Status> {
    let w = window.ok_or_else(|| invalid("window", "", why))?;
    let whole_day = w.start.rem_euclid(86_400) == 0 && w.end - w.start == 86_400;
    let ended = w.end <= now && w.as_of.is_none_or(|a| a >= w.end);
    if !whole_day || !ended {
        return Err(invalid("window", format!("{}..{}", w.start, w.end), why));
    }
    Ok(hourcell_query::time::format_time(w.start))
}
