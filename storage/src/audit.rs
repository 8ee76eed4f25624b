//! The tamper-evident audit log.
//!
//! Every person-level query, every denied request and every retention
//! removal is written as an [`AuditEntry`] through a replicated command
//! before any result leaves the server. Apply gives each entry the next
//! sequence number and chains it: `hash = SHA-256(prev_hash ‖ bincode(seq,
//! entry with its parameters replaced by SHA-256(parameters)))`, with 32
//! zero bytes before the first record. Editing a record breaks its hash;
//! deleting or reordering records breaks the sequence or the link to the
//! previous hash. [`verify_chain`] names the first record that does not fit.
//!
//! The parameters name persons (the person of a where-was, a region) and
//! expire with the hours: retention replaces them with nothing and marks
//! the record redacted ([`AuditRecord::redact`]). The chain covers only
//! their hash, so a redacted log still verifies; every other field of a
//! redacted record is still checked.

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
    /// The entry; its parameters are empty once redacted.
    pub entry: AuditEntry,
    /// SHA-256 of the entry's parameters as they were recorded.
    pub parameters_hash: [u8; 32],
    /// Whether retention removed the parameters.
    pub redacted: bool,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

impl AuditRecord {
    /// Record `seq` holding `entry`, chained after `prev`.
    pub fn new(seq: u64, entry: AuditEntry, prev: [u8; 32]) -> Self {
        let parameters_hash = parameters_hash(&entry.parameters);
        let hash = chain_hash(&prev, seq, &entry, &parameters_hash);
        AuditRecord {
            seq,
            entry,
            parameters_hash,
            redacted: false,
            prev_hash: prev,
            hash,
        }
    }

    /// Removes the parameters, keeping their hash: the chain still
    /// verifies.
    pub fn redact(&mut self) {
        self.entry.parameters.clear();
        self.redacted = true;
    }
}

pub fn parameters_hash(parameters: &str) -> [u8; 32] {
    Sha256::digest(parameters.as_bytes()).into()
}

/// The hash of record `seq` with `entry`, whose parameters hash to
/// `parameters_hash`, following `prev`. The parameters themselves are not
/// read, so a redacted entry hashes as it did before.
pub fn chain_hash(
    prev: &[u8; 32],
    seq: u64,
    entry: &AuditEntry,
    parameters_hash: &[u8; 32],
) -> [u8; 32] {
    let e = entry;
    let body = bincode::serde::encode_to_vec(
        (
            seq,
            e.time,
            &e.principal,
            &e.roles,
            &e.rpc,
            parameters_hash,
            &e.purpose,
            &e.case_ref,
            e.persons_returned,
            &e.outcome,
        ),
        bincode::config::standard(),
    )
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
        if r.redacted && !r.entry.parameters.is_empty() {
            return Err(ChainError {
                seq: r.seq,
                why: "it is marked redacted but holds parameters (the record was edited)".into(),
            });
        }
        if !r.redacted && parameters_hash(&r.entry.parameters) != r.parameters_hash {
            return Err(ChainError {
                seq: r.seq,
                why: "its parameters do not match their hash (the record was edited)".into(),
            });
        }
        if chain_hash(&prev, r.seq, &r.entry, &r.parameters_hash) != r.hash {
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

/// A (sequence number, hash) pair kept outside the cluster (`hourcell
/// audit checkpoint` prints one as `SEQ:HEX`). A chain that verifies on
/// its own can still have lost its tail, or have been rewritten and
/// rehashed from some record on; a checkpoint taken earlier catches both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: [u8; 32],
}

impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.seq, hex(&self.hash))
    }
}

impl std::str::FromStr for Checkpoint {
    type Err = ChainError;

    fn from_str(s: &str) -> Result<Self, ChainError> {
        let bad = |why: &str| ChainError {
            seq: 0,
            why: format!("bad checkpoint {s:?}: {why} (expected SEQ:HASH, 64 hex digits)"),
        };
        let (seq, h) = s.trim().split_once(':').ok_or_else(|| bad("no ':'"))?;
        let seq: u64 = seq.parse().map_err(|_| bad("SEQ is not a number"))?;
        if seq == 0 || h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("SEQ must be at least 1 and HASH 64 hex digits"));
        }
        let mut hash = [0u8; 32];
        for (i, out) in hash.iter_mut().enumerate() {
            *out = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).map_err(|_| bad("not hex"))?;
        }
        Ok(Checkpoint { seq, hash })
    }
}

/// [`verify_chain`], then each checkpoint: the log must still reach it
/// (else its tail was cut) and hold the same hash there (else it was
/// rewritten and rehashed).
pub fn verify_anchored(
    records: &[AuditRecord],
    checkpoints: &[Checkpoint],
) -> Result<u64, ChainError> {
    let n = verify_chain(records)?;
    for c in checkpoints {
        let Some(r) = records.get(c.seq as usize - 1) else {
            return Err(ChainError {
                seq: c.seq,
                why: format!(
                    "the log ends at record {n}, but a checkpoint was taken at {}: records \
                     were removed from its end",
                    c.seq
                ),
            });
        };
        if r.hash != c.hash {
            return Err(ChainError {
                seq: c.seq,
                why: format!(
                    "its hash is {}, but the checkpoint says {}: the log was rewritten and \
                     rehashed",
                    hex(&r.hash),
                    hex(&c.hash)
                ),
            });
        }
    }
    Ok(n)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `n` records whose entries say `who`.
    fn chain(n: u64, who: &str) -> Vec<AuditRecord> {
        let mut prev = [0u8; 32];
        (1..=n)
            .map(|seq| {
                let entry = AuditEntry {
                    principal: format!("{who}-{seq}"),
                    parameters: format!("{{\"person\":{seq}}}"),
                    ..Default::default()
                };
                let r = AuditRecord::new(seq, entry, prev);
                prev = r.hash;
                r
            })
            .collect()
    }

    #[test]
    fn a_redacted_log_still_verifies_and_an_edited_one_does_not() {
        let mut log = chain(4, "a");
        log[0].redact();
        log[1].redact();
        assert_eq!(verify_chain(&log).unwrap(), 4);
        assert!(log[0].entry.parameters.is_empty() && log[0].redacted);
        // Every other field of a redacted record is still covered.
        let mut edited = log.clone();
        edited[1].entry.principal = "someone-else".into();
        assert_eq!(verify_chain(&edited).unwrap_err().seq, 2);
        // Parameters put back (or made up) under the redaction mark.
        let mut edited = log.clone();
        edited[0].entry.parameters = "{\"person\":7}".into();
        let e = verify_chain(&edited).unwrap_err();
        assert!(e.seq == 1 && e.why.contains("marked redacted"), "{e}");
        // An unredacted record's parameters are checked against their hash.
        let mut edited = log.clone();
        edited[2].entry.parameters = "{\"person\":8}".into();
        let e = verify_chain(&edited).unwrap_err();
        assert!(e.seq == 3 && e.why.contains("parameters"), "{e}");
        // A record unmarked as redacted must carry its parameters.
        let mut edited = log;
        edited[0].redacted = false;
        assert_eq!(verify_chain(&edited).unwrap_err().seq, 1);
    }

    #[test]
    fn checkpoints_catch_truncation_and_rehashing() {
        let log = chain(5, "a");
        let cp = Checkpoint {
            seq: 4,
            hash: log[3].hash,
        };
        let parsed: Checkpoint = cp.to_string().parse().unwrap();
        assert_eq!(parsed, cp);
        assert_eq!(verify_anchored(&log, &[cp]).unwrap(), 5);
        // The tail cut off: the rest verifies on its own, not against the
        // checkpoint.
        assert_eq!(verify_chain(&log[..3]).unwrap(), 3);
        let e = verify_anchored(&log[..3], &[cp]).unwrap_err();
        assert!(e.why.contains("removed from its end"), "{e}");
        // Rewritten and rehashed from the start: a valid chain, the wrong
        // history.
        let forged = chain(5, "b");
        assert_eq!(verify_chain(&forged).unwrap(), 5);
        let e = verify_anchored(&forged, &[cp]).unwrap_err();
        assert_eq!(e.seq, 4);
        assert!(e.why.contains("rewritten"), "{e}");
        for bad in [
            "",
            "4",
            "x:00",
            "0:00",
            "4:abc",
            &format!("4:{}", "g".repeat(64)),
        ] {
            assert!(bad.parse::<Checkpoint>().is_err(), "{bad:?}");
        }
    }
}
