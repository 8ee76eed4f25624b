//! The tamper-evident audit log.
//!
//! Every person-level query, every denied request and every retention
//! removal is written as an [`AuditEntry`] through a replicated command
//! before any result leaves the server. Apply gives each entry the next
//! sequence number and chains it: `hash = SHA-256(prev_hash ‖ bincode(seq,
//! entry))`, with 32 zero bytes before the first record. Editing a record
//! breaks its hash; deleting or reordering records breaks the sequence or
//! the link to the previous hash. [`verify_chain`] names the first record
//! that does not fit.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What happened, as the proposing node saw it. Deterministic to apply:
/// the time is the proposer's, carried in the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AuditEntry {
    /// Unix seconds.
    pub time: i64,
    /// Who asked: a certificate subject or token subject.
    pub principal: String,
    /// The roles the principal held, comma-separated.
    pub roles: String,
    /// The RPC, e.g. `Query.WhoWasAt`.
    pub rpc: String,
    /// The request's parameters (region, window, person), as JSON.
    pub parameters: String,
    pub purpose: String,
    pub case_ref: String,
    pub persons_returned: u64,
    /// `ok`, `denied: ...` or `retention: ...`.
    pub outcome: String,
}

/// A stored record: the entry, its place in the chain and its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub entry: AuditEntry,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

/// The hash of record `seq` with `entry`, following `prev`.
pub fn chain_hash(prev: &[u8; 32], seq: u64, entry: &AuditEntry) -> [u8; 32] {
    let body = bincode::serde::encode_to_vec((seq, entry), bincode::config::standard())
        .expect("audit entries always encode");
    let mut h = Sha256::new();
    h.update(prev);
    h.update(&body);
    h.finalize().into()
}

/// Why a chain does not verify: the first bad record and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit record {seq}: {why}")]
pub struct ChainError {
    pub seq: u64,
    pub why: String,
}

/// Checks records listed in order from sequence number 1. Returns how many
/// verified.
pub fn verify_chain<'a>(
    records: impl IntoIterator<Item = &'a AuditRecord>,
) -> Result<u64, ChainError> {
    let mut prev = [0u8; 32];
    let mut want = 1u64;
    for r in records {
        if r.seq != want {
            return Err(ChainError {
                seq: r.seq,
                why: format!(
                    "expected record {want} here (a record was deleted or the records were reordered)"
                ),
            });
        }
        if r.prev_hash != prev {
            return Err(ChainError {
                seq: r.seq,
                why: "does not link to the record before it (deleted or reordered records)".into(),
            });
        }
        if chain_hash(&prev, r.seq, &r.entry) != r.hash {
            return Err(ChainError {
                seq: r.seq,
                why: "its contents do not match its hash (the record was edited)".into(),
            });
        }
        prev = r.hash;
        want += 1;
    }
    Ok(want - 1)
}

/// The stored bytes of a record (what an offline tool would have to forge).
pub fn encode_record(r: &AuditRecord) -> Vec<u8> {
    bincode::serde::encode_to_vec(r, bincode::config::standard()).expect("records always encode")
}

pub fn decode_record(b: &[u8]) -> crate::Result<AuditRecord> {
    bincode::serde::decode_from_slice(b, crate::bincode_limits())
        .map(|(r, _)| r)
        .map_err(|e| crate::StorageError::Decode {
            what: "audit record",
            reason: e.to_string(),
        })
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
