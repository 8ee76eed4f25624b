//! The one release gate for person-level data: every RPC whose answer
//! names a person ([`Rpc::person_level`]) clears [`Release::check`] (role,
//! purpose, case) before it computes the answer and [`Release::commit`]
//! (an audit record committed through the log) before the first byte of
//! it leaves. A service cannot build a `Release` any other way, and the
//! `side_doors` test calls every person-level RPC and counts the records.
//!
//! Field staff working a task may leave the case empty: the task id is
//! the case. Every other person-level call states both.

use hourcell_node::node::Node;
use hourcell_node::NodeError;
use hourcell_storage::AuditEntry;
use tonic::Status;

use crate::auth::{allowed, Principal, Role, Rpc};
use crate::status::to_status;

/// Longest purpose text and case reference.
pub const MAX_PURPOSE: usize = 1_000;

/// Why the caller asks, as the request states it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Why<'a> {
    pub purpose: &'a str,
    pub case_ref: &'a str,
    /// The task a field-staff request is about, if any (its case when
    /// none is given).
    pub task: Option<u64>,
}

/// A person-level answer cleared to be computed. Its audit record is
/// written by [`Release::commit`]; only then may the answer be sent.
#[must_use = "a person-level answer may only leave after Release::commit"]
#[derive(Debug, Clone)]
pub struct Release {
    entry: AuditEntry,
}

impl Release {
    /// Checks that `p` may receive `rpc`'s answer for the stated reason.
    pub fn check(
        p: &Principal,
        rpc: Rpc,
        why: Why<'_>,
        parameters: serde_json::Value,
    ) -> Result<Release, Status> {
        if !rpc.person_level() {
            return Err(Status::internal(format!(
                "{} is not a person-level RPC",
                rpc.name()
            )));
        }
        // The gate checked the role already; a second look costs nothing.
        if !allowed(p, rpc) {
            return Err(Status::permission_denied(format!(
                "{} may not call {}",
                p.name,
                rpc.name()
            )));
        }
        let purpose = why.purpose.trim();
        let mut case_ref = why.case_ref.trim().to_string();
        if case_ref.is_empty() && p.has(Role::Fieldwork) {
            if let Some(id) = why.task {
                case_ref = format!("task {id}");
            }
        }
        if purpose.is_empty() || case_ref.is_empty() {
            return Err(Status::invalid_argument(format!(
                "{} returns person-level data: it needs a purpose and a case reference \
                 (CLI: --purpose TEXT --case REF)",
                rpc.name()
            )));
        }
        if purpose.len() > MAX_PURPOSE || case_ref.len() > MAX_PURPOSE {
            return Err(Status::invalid_argument(format!(
                "purpose and case reference are limited to {MAX_PURPOSE} bytes"
            )));
        }
        Ok(Release {
            entry: AuditEntry {
                time: 0,
                principal: p.name.clone(),
                roles: p.role_names(),
                rpc: rpc.name().into(),
                parameters: parameters.to_string(),
                purpose: purpose.to_string(),
                case_ref,
                persons_returned: 0,
                outcome: "ok".into(),
            },
        })
    }

    /// Commits the audit record of an answer naming `persons` persons
    /// through the log (blocking: call it on the thread that computed the
    /// answer). The answer is returned only if this succeeds. A release
    /// may be committed again, for the next part of a stream.
    pub fn commit(&self, node: &Node, persons: u64) -> Result<(), NodeError> {
        let mut entry = self.entry.clone();
        entry.time = node.now();
        entry.persons_returned = persons;
        node.audit(vec![entry]).map_err(|e| {
            NodeError::Unavailable(format!(
                "the audit record could not be written, so no data is returned: {}",
                to_status(e).message()
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_role(r: Role) -> Principal {
        Principal {
            name: "p".into(),
            roles: [r].into(),
        }
    }

    #[test]
    fn purpose_and_case_are_required_unless_a_field_worker_names_the_task() {
        let inv = as_role(Role::Investigator);
        let field = as_role(Role::Fieldwork);
        let v = serde_json::Value::Null;
        let no_case = Why {
            purpose: "check",
            case_ref: " ",
            task: Some(7),
        };
        assert!(Release::check(&inv, Rpc::WhereWas, no_case, v.clone()).is_err());
        let r = Release::check(&field, Rpc::TasksGet, no_case, v.clone()).unwrap();
        assert_eq!(r.entry.case_ref, "task 7");
        let no_purpose = Why {
            purpose: "",
            case_ref: "C-1",
            task: Some(7),
        };
        assert!(Release::check(&field, Rpc::TasksGet, no_purpose, v.clone()).is_err());
        // No task named: a list needs a case like any other query.
        let list = Why {
            purpose: "rounds",
            case_ref: "",
            task: None,
        };
        assert!(Release::check(&field, Rpc::TasksList, list, v.clone()).is_err());
        // Not person-level, or the wrong role: refused.
        let ok = Why {
            purpose: "x",
            case_ref: "y",
            task: None,
        };
        assert!(Release::check(&inv, Rpc::Occupancy, ok, v.clone()).is_err());
        assert!(Release::check(&field, Rpc::WhereWas, ok, v).is_err());
    }
}
