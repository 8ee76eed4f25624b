//! Validation of incoming events, addresses and registrations. A bad item
//! is rejected with its index, the field and why; its good neighbours go on.

use hourcell_storage::catalog::MAX_ADDRESS_CODE;
use hourcell_storage::cell::{cell_at, valid_coordinates};
use hourcell_storage::keys::{MAX_HOUR, MIN_HOUR};
use hourcell_storage::{
    AddressKind, AddressRecord, RegistrationKind, RegistrationRecord, SliceEvent,
};

use crate::source::SliceSource;
use crate::time::{format_time, hour_floor, parse_time};

/// Longest source label accepted, in bytes.
pub const MAX_SOURCE: usize = 32;
/// Longest address label accepted, in bytes.
pub const MAX_LABEL: usize = 256;
/// How far in the future an event may be, in seconds.
pub const MAX_FUTURE_SECS: i64 = 3600;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub index: u32,
    pub field: &'static str,
    pub reason: String,
}

/// When an event happened, as sent.
#[derive(Debug, Clone, PartialEq)]
pub enum EventTime {
    Unix(i64),
    Text(String),
    Missing,
}

/// An event as received, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    pub person: u64,
    pub time: EventTime,
    pub lat: Option<f64>,
    pub lng: Option<f64>,
    pub address: Option<String>,
    pub source: String,
}

fn reject(index: usize, field: &'static str, reason: impl Into<String>) -> Rejection {
    Rejection {
        index: index as u32,
        field,
        reason: reason.into(),
    }
}

/// Validates and places events (hour, slice cell, address) against the
/// catalog at time `now`. Returns the accepted events and the rejections.
pub fn place_events<S: SliceSource + ?Sized>(
    source: &S,
    raw: &[RawEvent],
    now: i64,
) -> (Vec<SliceEvent>, Vec<Rejection>) {
    place_events_retained(source, raw, now, None)
}

/// [`place_events`], also rejecting events in hours before
/// `retained_from` (the first hour the retention limit keeps).
pub fn place_events_retained<S: SliceSource + ?Sized>(
    source: &S,
    raw: &[RawEvent],
    now: i64,
    retained_from: Option<i64>,
) -> (Vec<SliceEvent>, Vec<Rejection>) {
    let mut ok = Vec::with_capacity(raw.len());
    let mut bad = Vec::new();
    for (i, e) in raw.iter().enumerate() {
        match place_checked(source, e, now, retained_from, i) {
            Ok(p) => ok.push(p.event(e.person, e.address.as_deref(), &e.source)),
            Err(r) => bad.push(r),
        }
    }
    (ok, bad)
}

/// [`place_events_retained`] that takes the events by value and moves
/// their address and source strings into the placed events instead of
/// copying them (two allocations per event on the ingest path).
pub fn place_events_owned<S: SliceSource + ?Sized>(
    source: &S,
    raw: Vec<RawEvent>,
    now: i64,
    retained_from: Option<i64>,
) -> (Vec<SliceEvent>, Vec<Rejection>) {
    // The checks read the event; the strings are moved out afterwards.
    let mut raw = raw;
    let mut placed_all = Vec::with_capacity(raw.len());
    let mut bad = Vec::new();
    for (i, e) in raw.iter().enumerate() {
        match place_checked(source, e, now, retained_from, i) {
            Ok(p) => placed_all.push((i, p)),
            Err(r) => bad.push(r),
        }
    }
    let ok = placed_all
        .into_iter()
        .map(|(i, p)| {
            let e = &mut raw[i];
            SliceEvent {
                person: e.person,
                hour: p.hour,
                cell: p.cell,
                address: if p.has_address {
                    e.address.take().map(owned_trimmed)
                } else {
                    None
                },
                source: owned_trimmed(std::mem::take(&mut e.source)),
            }
        })
        .collect();
    (ok, bad)
}

/// `s.trim()` as an owned string, reusing `s` when there is nothing to trim.
fn owned_trimmed(s: String) -> String {
    if s.trim().len() == s.len() {
        s
    } else {
        s.trim().to_string()
    }
}

/// Where an accepted event goes: its hour, its slice cell and whether it
/// keeps its address code.
#[derive(Debug, Clone, Copy)]
struct Placed {
    hour: i64,
    cell: u64,
    has_address: bool,
}

impl Placed {
    fn event(self, person: u64, address: Option<&str>, source: &str) -> SliceEvent {
        SliceEvent {
            person,
            hour: self.hour,
            cell: self.cell,
            address: if self.has_address {
                address.map(|a| a.trim().to_string())
            } else {
                None
            },
            source: source.trim().to_string(),
        }
    }
}

/// [`place_one`] and the retention check.
fn place_checked<S: SliceSource + ?Sized>(
    source: &S,
    e: &RawEvent,
    now: i64,
    retained_from: Option<i64>,
    i: usize,
) -> Result<Placed, Rejection> {
    place_one(source, e, now, source.slice_level(), i).and_then(|p| match retained_from {
        Some(first) if p.hour < first => Err(reject(
            i,
            "time",
            format!(
                "time {} is older than the retention limit (hours before {} are not kept)",
                format_time(p.hour * 3600),
                format_time(first * 3600)
            ),
        )),
        _ => Ok(p),
    })
}

fn place_one<S: SliceSource + ?Sized>(
    source: &S,
    e: &RawEvent,
    now: i64,
    level: u8,
    i: usize,
) -> Result<Placed, Rejection> {
    if e.person == 0 {
        return Err(reject(i, "person", "missing person (id 0)"));
    }
    let t = match &e.time {
        EventTime::Unix(t) => *t,
        EventTime::Text(s) => {
            parse_time("time", s).map_err(|err| reject(i, "time", err.to_string()))?
        }
        EventTime::Missing => return Err(reject(i, "time", "missing time")),
    };
    if t > now + MAX_FUTURE_SECS {
        return Err(reject(
            i,
            "time",
            format!(
                "time {} is more than 1 h in the future (now {})",
                format_time(t),
                format_time(now)
            ),
        ));
    }
    let hour = hour_floor(t);
    if !(MIN_HOUR..=MAX_HOUR).contains(&hour) {
        return Err(reject(i, "time", format!("time {t} is out of range")));
    }
    let source_label = e.source.trim();
    if source_label.is_empty() {
        return Err(reject(i, "source", "missing source label"));
    }
    if source_label.len() > MAX_SOURCE {
        return Err(reject(
            i,
            "source",
            format!("source label longer than {MAX_SOURCE} bytes"),
        ));
    }
    let address = match e.address.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(code) => match source.address_point(code) {
            Some((_, lat, lng, cell)) => Some((code, lat, lng, cell)),
            None => return Err(reject(i, "address", format!("unknown address {code:?}"))),
        },
    };
    let cell = match (e.lat, e.lng, &address) {
        (Some(lat), Some(lng), a) => {
            if !valid_coordinates(lat, lng) {
                return Err(reject(i, "lat,lng", format!("bad coordinates {lat},{lng}")));
            }
            // Most events with both sit exactly on their address's point,
            // whose cell is already known.
            match a {
                Some((_, alat, alng, c)) if *alat == lat && *alng == lng => *c,
                _ => cell_at(lat, lng, level),
            }
        }
        (Some(_), None, _) | (None, Some(_), _) => {
            return Err(reject(
                i,
                "lat,lng",
                "bad coordinates: give both lat and lng, or neither",
            ))
        }
        (None, None, Some((_, _, _, c))) => *c,
        (None, None, None) => {
            return Err(reject(
                i,
                "address",
                "no place: give lat,lng or an address code",
            ))
        }
    };
    Ok(Placed {
        hour,
        cell,
        has_address: address.is_some(),
    })
}

/// Raw address fields as received.
#[derive(Debug, Clone, PartialEq)]
pub struct RawAddress {
    pub code: String,
    pub lat: f64,
    pub lng: f64,
    pub kind: String,
    pub area: String,
    pub label: String,
}

/// Checks addresses. An address already stored keeps its point: person-index
/// entries refer to it, so a moved point is rejected (store it under a new
/// code instead).
pub fn check_addresses<S: SliceSource + ?Sized>(
    source: &S,
    raw: &[RawAddress],
) -> (Vec<AddressRecord>, Vec<Rejection>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let code = a.code.trim();
        let r = if code.is_empty() {
            Err(reject(i, "code", "missing address code"))
        } else if code.len() > MAX_ADDRESS_CODE {
            Err(reject(
                i,
                "code",
                format!("address code longer than {MAX_ADDRESS_CODE} bytes"),
            ))
        } else if !valid_coordinates(a.lat, a.lng) {
            Err(reject(
                i,
                "lat,lng",
                format!("bad coordinates {},{}", a.lat, a.lng),
            ))
        } else if a.area.trim().is_empty() {
            Err(reject(i, "area", "missing area code"))
        } else if a.label.len() > MAX_LABEL {
            Err(reject(
                i,
                "label",
                format!("label longer than {MAX_LABEL} bytes"),
            ))
        } else if let Some(old) = source
            .address(code)
            .filter(|old| old.lat != a.lat || old.lng != a.lng)
        {
            Err(reject(
                i,
                "lat,lng",
                format!(
                    "address {code:?} is stored at {},{}; an address's point cannot move (use a new code)",
                    old.lat, old.lng
                ),
            ))
        } else {
            match AddressKind::parse(a.kind.trim()) {
                None => Err(reject(
                    i,
                    "kind",
                    format!(
                        "unknown address kind {:?} (standard, nonstandard, virtual, point)",
                        a.kind
                    ),
                )),
                Some(kind) => Ok(AddressRecord {
                    code: code.to_string(),
                    lat: a.lat,
                    lng: a.lng,
                    kind,
                    area: a.area.trim().to_string(),
                    label: a.label.clone(),
                    id: 0,
                }),
            }
        };
        match r {
            Ok(a) => ok.push(a),
            Err(e) => bad.push(e),
        }
    }
    (ok, bad)
}

/// Raw registration fields as received.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRegistration {
    pub person: u64,
    pub address: String,
    pub kind: String,
    pub valid_from: i64,
    pub valid_until: Option<i64>,
}

pub fn check_registrations<S: SliceSource + ?Sized>(
    source: &S,
    raw: &[RawRegistration],
) -> (Vec<RegistrationRecord>, Vec<Rejection>) {
    let mut ok = Vec::new();
    let mut bad = Vec::new();
    for (i, r) in raw.iter().enumerate() {
        let kind = RegistrationKind::parse(r.kind.trim());
        let res = if r.person == 0 {
            Err(reject(i, "person", "missing person (id 0)"))
        } else if source.address(r.address.trim()).is_none() {
            Err(reject(
                i,
                "address",
                format!("unknown address {:?}", r.address),
            ))
        } else {
            match (kind, r.valid_until) {
                (None, _) => Err(reject(
                    i,
                    "kind",
                    format!(
                        "unknown registration kind {:?} (permanent, temporary)",
                        r.kind
                    ),
                )),
                (Some(RegistrationKind::Temporary), None) => Err(reject(
                    i,
                    "valid_until",
                    "a temporary registration needs valid_until",
                )),
                (Some(RegistrationKind::Permanent), Some(_)) => Err(reject(
                    i,
                    "valid_until",
                    "a permanent registration has no valid_until",
                )),
                (Some(_), Some(u)) if u <= r.valid_from => Err(reject(
                    i,
                    "valid_until",
                    format!(
                        "valid_until {} is not after valid_from {}",
                        format_time(u),
                        format_time(r.valid_from)
                    ),
                )),
                (Some(k), until) => Ok(RegistrationRecord {
                    person: r.person,
                    address: r.address.trim().to_string(),
                    kind: k,
                    valid_from: r.valid_from,
                    valid_until: until,
                }),
            }
        };
        match res {
            Ok(v) => ok.push(v),
            Err(e) => bad.push(e),
        }
    }
    (ok, bad)
}
