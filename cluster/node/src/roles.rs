//! The roles a caller may hold. Configuration names them (`anonymous_roles`,
//! `cert_roles`) and tokens carry them; the server's auth layer decides
//! which RPC each role may call.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::NodeError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Write events, addresses and the registry.
    Ingest,
    /// Occupancy and counts only; small counts come back suppressed.
    Analyst,
    /// Also who-was-at, where-was and no-activity-since, each with a
    /// purpose and case reference, audited.
    Investigator,
    /// Field-staff tasks.
    Fieldwork,
    /// Cluster administration.
    Operator,
    /// Reads the audit log.
    Auditor,
}

pub const ALL_ROLES: [Role; 6] = [
    Role::Ingest,
    Role::Analyst,
    Role::Investigator,
    Role::Fieldwork,
    Role::Operator,
    Role::Auditor,
];

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Analyst => "analyst",
            Role::Investigator => "investigator",
            Role::Fieldwork => "fieldwork",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }

    pub fn parse(s: &str) -> Result<Role, NodeError> {
        ALL_ROLES
            .iter()
            .copied()
            .find(|r| r.name() == s)
            .ok_or_else(|| NodeError::UnknownRole {
                name: s.to_string(),
                known: ALL_ROLES.map(|r| r.name()).join(", "),
            })
    }

    /// Role names, where `all` stands for every role.
    pub fn parse_list(names: &[String]) -> Result<BTreeSet<Role>, NodeError> {
        let mut out = BTreeSet::new();
        for n in names {
            if n == "all" {
                out.extend(ALL_ROLES);
            } else {
                out.insert(Role::parse(n)?);
            }
        }
        Ok(out)
    }
}

impl std::str::FromStr for Role {
    type Err = NodeError;

    fn from_str(s: &str) -> Result<Role, NodeError> {
        Role::parse(s)
    }
}
