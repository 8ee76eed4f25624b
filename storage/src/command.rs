//! Commands: the unit of change a store applies. A raft log entry will
//! carry exactly one command (a batch, never a single event). Applying a
//! command reads nothing but the store and the command itself, so every
//! replica that applies the same commands in the same order holds the same
//! bytes.

use serde::{Deserialize, Serialize};

use crate::catalog::{AddressRecord, RegistrationRecord};

/// A validated event, already placed: its hour, its slice cell and the
/// address it names (if any). Validation happens before proposing, so apply
/// never rejects an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceEvent {
    pub person: u64,
    pub hour: i64,
    /// Slice-level S2 cell id.
    pub cell: u64,
    /// Address code, if the event carried one.
    pub address: Option<String>,
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Ingest(Vec<SliceEvent>),
    PutAddresses(Vec<AddressRecord>),
    PutRegistrations(Vec<RegistrationRecord>),
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard())
            .expect("commands always encode")
    }

    pub fn decode(b: &[u8]) -> Result<Self, String> {
        bincode::serde::decode_from_slice(b, bincode::config::standard())
            .map(|(c, _)| c)
            .map_err(|e| e.to_string())
    }
}

/// What applying a command did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    pub applied: u64,
    pub new_persons: u64,
}
