//! Conversions between `hourcell.v1` messages and domain types, in one
//! place: request fields are validated here (bad input names the field and
//! value), replies are built here.

use hourcell_node::route::ReadPart;
use hourcell_node::types::ShardMembers;
use hourcell_proto::{internal, v1};
use hourcell_query::polygon::{MultiPolygon, Polygon, Vertex};
use hourcell_query::validate::{EventTime, RawAddress, RawEvent, RawRegistration, Rejection};
use hourcell_query::{Region, Window};
use hourcell_storage::cell;
use tonic::Status;

/// INVALID_ARGUMENT naming the field, in the message and as a
/// google.rpc.BadRequest field violation (tonic-types), so that clients
/// can point at the field without parsing text.
pub fn invalid(field: &str, value: impl std::fmt::Debug, why: &str) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("invalid {field} {value:?}: {why}"),
        ErrorDetails::with_bad_request_violation(field, why),
    )
}

pub fn region_from_proto(r: Option<v1::Region>, field: &'static str) -> Result<Region, Status> {
    let kind = r.and_then(|r| r.kind).ok_or_else(|| {
        invalid(
            field,
            "",
            "a region is required (rect, circle, cells, addresses, area or multipolygon)",
        )
    })?;
    Ok(match kind {
        v1::region::Kind::Rect(r) => Region::Rect {
            lat_lo: r.lat_lo,
            lng_lo: r.lng_lo,
            lat_hi: r.lat_hi,
            lng_hi: r.lng_hi,
        },
        v1::region::Kind::Circle(c) => Region::Circle {
            lat: c.lat,
            lng: c.lng,
            radius_m: c.radius_m,
        },
        v1::region::Kind::Cells(c) => {
            let mut ids = Vec::with_capacity(c.tokens.len());
            for t in &c.tokens {
                ids.push(
                    cell::parse_token(t)
                        .ok_or_else(|| invalid(field, t, "not an S2 cell token"))?,
                );
            }
            Region::Cells(ids)
        }
        v1::region::Kind::Addresses(a) => Region::Addresses(a.codes),
        v1::region::Kind::Area(a) => Region::Area(a),
        v1::region::Kind::Multipolygon(m) => Region::Polygon(multipolygon_from_proto(m)),
    })
}

/// The polygons as given; the query crate validates them (rings closed,
/// simple, in range, at most 10,000 positions).
pub fn multipolygon_from_proto(m: v1::MultiPolygon) -> MultiPolygon {
    MultiPolygon {
        polygons: m
            .polygons
            .into_iter()
            .map(|p| Polygon {
                rings: p
                    .rings
                    .into_iter()
                    .map(|r| {
                        r.points
                            .into_iter()
                            .map(|v| Vertex {
                                lat: v.lat,
                                lng: v.lng,
                            })
                            .collect()
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// A request's region as recorded in the audit log: the message as is
/// (`Debug`), except that a polygon is shown by its counts, its bounding
/// box and a SHA-256 of its positions (so that a copy kept by the analyst
/// can be matched), never by its up to 10,000 positions.
pub fn region_for_audit(r: Option<&v1::Region>) -> String {
    use sha2::Digest as _;
    match r.and_then(|r| r.kind.as_ref()) {
        Some(v1::region::Kind::Multipolygon(m)) => {
            // Counts before contents, so that no two shapes hash alike.
            let mut h = sha2::Sha256::new();
            h.update((m.polygons.len() as u64).to_le_bytes());
            for p in &m.polygons {
                h.update((p.rings.len() as u64).to_le_bytes());
                for r in &p.rings {
                    h.update((r.points.len() as u64).to_le_bytes());
                    for v in &r.points {
                        h.update(v.lat.to_le_bytes());
                        h.update(v.lng.to_le_bytes());
                    }
                }
            }
            let digest = h.finalize();
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            format!(
                "MultiPolygon {{ {}, sha256: {hex} }}",
                multipolygon_from_proto(m.clone()).summary()
            )
        }
        _ => format!("{r:?}"),
    }
}

pub fn optional_region(
    r: Option<v1::Region>,
    field: &'static str,
) -> Result<Option<Region>, Status> {
    match r {
        Some(v1::Region { kind: None }) | None => Ok(None),
        some => region_from_proto(some, field).map(Some),
    }
}

pub fn window_from_proto(w: Option<v1::Window>, now: i64) -> Result<(i64, i64, i64), Status> {
    let w = w.ok_or_else(|| invalid("window", "", "a window (start, end) is required"))?;
    Ok((w.start, w.end, w.as_of.unwrap_or(now)))
}

pub fn effective(w: &Window) -> v1::EffectiveWindow {
    v1::EffectiveWindow {
        start: w.from_secs(),
        end: w.to_secs(),
        as_of: w.as_of,
    }
}

pub fn rejections(r: Vec<Rejection>) -> Vec<v1::Rejection> {
    r.into_iter()
        .map(|r| v1::Rejection {
            index: r.index,
            field: r.field.to_string(),
            reason: r.reason,
        })
        .collect()
}

pub fn raw_address(a: v1::Address) -> RawAddress {
    RawAddress {
        code: a.code,
        lat: a.lat,
        lng: a.lng,
        kind: a.kind,
        area: a.area,
        label: a.label,
    }
}

pub fn raw_registration(r: v1::Registration) -> RawRegistration {
    RawRegistration {
        person: r.person,
        address: r.address,
        kind: r.kind,
        valid_from: r.valid_from,
        valid_until: r.valid_until,
    }
}

pub fn raw_event(e: v1::Event) -> RawEvent {
    RawEvent {
        person: e.person,
        time: match e.time {
            Some(v1::event::Time::UnixSeconds(t)) => EventTime::Unix(t),
            Some(v1::event::Time::Rfc3339(s)) => EventTime::Text(s),
            None => EventTime::Missing,
        },
        lat: e.lat,
        lng: e.lng,
        address: (!e.address.is_empty()).then_some(e.address),
        source: e.source,
    }
}

pub fn audit_to_proto(r: hourcell_storage::AuditRecord) -> v1::AuditRecord {
    v1::AuditRecord {
        seq: r.seq,
        time: r.entry.time,
        principal: r.entry.principal,
        roles: r.entry.roles,
        rpc: r.entry.rpc,
        parameters: r.entry.parameters,
        purpose: r.entry.purpose,
        case_ref: r.entry.case_ref,
        persons_returned: r.entry.persons_returned,
        outcome: r.entry.outcome,
        parameters_hash: r.parameters_hash.to_vec(),
        redacted: r.redacted,
        withheld: false,
        prev_hash: r.prev_hash.to_vec(),
        hash: r.hash.to_vec(),
    }
}

/// The stored form of a listed record, for verification by a client.
/// An audit record from the wire whose hash fields are not hashes.
#[derive(Debug, thiserror::Error)]
#[error("record {seq}: {field} is not 32 bytes")]
pub struct BadAuditRecord {
    pub seq: u64,
    pub field: &'static str,
}

pub fn audit_from_proto(
    r: &v1::AuditRecord,
) -> Result<hourcell_storage::AuditRecord, BadAuditRecord> {
    let h = |b: &[u8], field: &'static str| -> Result<[u8; 32], BadAuditRecord> {
        b.try_into()
            .map_err(|_| BadAuditRecord { seq: r.seq, field })
    };
    Ok(hourcell_storage::AuditRecord {
        seq: r.seq,
        entry: hourcell_storage::AuditEntry {
            time: r.time,
            principal: r.principal.clone(),
            roles: r.roles.clone(),
            rpc: r.rpc.clone(),
            parameters: r.parameters.clone(),
            purpose: r.purpose.clone(),
            case_ref: r.case_ref.clone(),
            persons_returned: r.persons_returned,
            outcome: r.outcome.clone(),
        },
        parameters_hash: h(&r.parameters_hash, "parameters_hash")?,
        // Withheld parameters verify as redacted ones do: by their hash.
        redacted: r.redacted || r.withheld,
        prev_hash: h(&r.prev_hash, "prev_hash")?,
        hash: h(&r.hash, "hash")?,
    })
}

pub fn task_to_proto(t: hourcell_storage::TaskRecord) -> v1::Task {
    let d = t.draft;
    v1::Task {
        id: t.id,
        kind: d.kind.as_str().into(),
        person: d.person,
        address: d.address,
        area: d.area,
        score: d.score,
        state: t.state.as_str().into(),
        outcome: t
            .outcome
            .map(|o| o.as_str().to_string())
            .unwrap_or_default(),
        note: t.note,
        updated_by: t.updated_by,
        evidence: d
            .evidence
            .into_iter()
            .map(|e| v1::SourceEvidence {
                source: e.source,
                nights_by_address: e.nights_by_address,
                nights_by_location: e.nights_by_location,
                weight: e.weight,
                contribution: e.contribution,
            })
            .collect(),
        registration: d.registration.map(|r| v1::Registration {
            person: r.person,
            address: r.address,
            kind: r.kind.as_str().into(),
            valid_from: r.valid_from,
            valid_until: r.valid_until,
        }),
        last_seen: d.last_seen_hour.map(|h| h * 3600),
        created_at: t.created_at,
        evaluation: t.evaluation,
        updated_at: t.updated_at,
    }
}

pub fn membership(r: &hourcell_node::node::Replication) -> v1::MembershipResponse {
    let s = r.handle.status(r.group);
    v1::MembershipResponse {
        voters: s.as_ref().map_or(Vec::new(), |s| s.voters.clone()),
        learners: s.as_ref().map_or(Vec::new(), |s| s.learners.clone()),
    }
}

pub fn shard_members_to_proto(groups: Vec<ShardMembers>) -> Vec<v1::ShardStatus> {
    groups
        .into_iter()
        .map(|s| v1::ShardStatus {
            group: s.group,
            shard: s.shard,
            leader: s.leader,
            term: s.term,
            commit: s.commit,
            applied: s.applied,
            voters: s.voters,
            learners: s.learners,
            first_index: s.first_index,
            disk_bytes: s.disk_bytes,
            replicas: s.replicas,
            map_version: s.map_version,
        })
        .collect()
}

pub fn shard_members_from_proto(groups: Vec<v1::ShardStatus>) -> Vec<ShardMembers> {
    groups
        .into_iter()
        .map(|s| ShardMembers {
            group: s.group,
            shard: s.shard,
            leader: s.leader,
            term: s.term,
            commit: s.commit,
            applied: s.applied,
            voters: s.voters,
            learners: s.learners,
            first_index: s.first_index,
            disk_bytes: s.disk_bytes,
            replicas: s.replicas,
            map_version: s.map_version,
        })
        .collect()
}

pub fn read_parts_to_proto(parts: &[ReadPart]) -> Vec<internal::ShardReadPart> {
    parts
        .iter()
        .map(|p| internal::ShardReadPart {
            group: p.group,
            barrier: p.barrier,
        })
        .collect()
}

pub fn read_parts_from_proto(parts: Vec<internal::ShardReadPart>) -> Vec<ReadPart> {
    parts
        .into_iter()
        .map(|p| ReadPart {
            group: p.group,
            barrier: p.barrier,
        })
        .collect()
}
