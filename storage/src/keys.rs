//! Key layout. One byte of prefix, then big-endian fields so that byte
//! order is numeric order.
//!
//! | prefix | rest                     | value                               |
//! |--------|--------------------------|-------------------------------------|
//! | 0x01   | meta name                | meta value                          |
//! | 0x02   | external person u64      | internal id u32                     |
//! | 0x03   | internal id u32          | external person u64                 |
//! | 0x04   | address code             | [`crate::AddressRecord`] (bincode)  |
//! | 0x06   | external person u64      | [`crate::RegistrationRecord`]       |
//! | 0x07   | source id u16            | source label                        |
//! | 0x10   | day, cell u64            | day set: (id, hour mask) per person |
//! | 0x11   | day, address id u32      | day set: (id, hour mask) per person |
//! | 0x12   | hour                     | roaring bitmap: everyone that hour  |
//! | 0x20   | internal id u32, day     | (cell, address, source) → hour mask |
//! | 0x30   | task id u64              | [`crate::tasks::TaskRecord`]        |
//! | 0x31   | kind u8, person u64, address code | [`crate::tasks::SubjectState`] |
//! | 0x32   | change seq u64           | [`crate::tasks::TaskChange`]        |
//! | 0x40   | audit seq u64            | [`crate::audit::AuditRecord`]       |
//!
//! Days are UTC days, `hour.div_euclid(24)`. Slices are time-major: a
//! window over a region is, per day, a handful of contiguous cell ranges
//! (Hilbert order keeps neighbours together), and retention can drop whole
//! days with one range delete (and trim the hours of the boundary day by
//! rewriting its masks). Keying slices per day rather than per hour cut
//! their keys ~8× and their values ~4× (people stay in one place for hours;
//! see `docs/benchmarks.md`). The person index is person-major so where-was
//! is one short scan.
//! In the person index a cell of 0 means "the slice cell of the entry's
//! address point" (most events sit at their address), which is why an
//! address's point never changes once stored.
//! Hours are stored as i32 with the sign bit flipped, so negative hours sort
//! before positive ones.

pub const META: u8 = 0x01;
pub const DICT_EXT: u8 = 0x02;
pub const DICT_INT: u8 = 0x03;
pub const ADDRESS: u8 = 0x04;
/// Sharded clusters, metadata group: the last week each internal id was
/// seen in (an i64, big-endian), so that retention can forget a person
/// whose every hour is gone without asking the shards.
pub const LAST_SEEN: u8 = 0x05;
pub const REGISTRATION: u8 = 0x06;
pub const SOURCE: u8 = 0x07;
/// An unreplicated store's log of ingest batches whose slices are held in
/// memory, not yet written (see `store::Deferred`): one key per batch.
pub const HELD: u8 = 0x08;
pub const CELL_DAY: u8 = 0x10;
pub const ADDRESS_DAY: u8 = 0x11;
pub const HOUR_SLICE: u8 = 0x12;
pub const PERSON: u8 = 0x20;
pub const TASK: u8 = 0x30;
pub const TASK_SUBJECT: u8 = 0x31;
pub const TASK_CHANGE: u8 = 0x32;
pub const AUDIT: u8 = 0x40;
/// Sharded clusters, metadata group: one key per time partition (week).
pub const PARTITION: u8 = 0x50;

/// Whether `k` has a shape this layout writes: a known prefix and, where
/// the rest is fixed-width, the right length. Readers slice keys by these
/// widths, so a store refuses an image (a raft snapshot from another node)
/// holding any other key rather than panic on it later.
pub fn well_formed(k: &[u8]) -> bool {
    let Some((&prefix, rest)) = k.split_first() else {
        return false;
    };
    match prefix {
        META | ADDRESS | TASK_SUBJECT => true,
        DICT_INT | LAST_SEEN | HOUR_SLICE | PARTITION => rest.len() == 4,
        SOURCE => rest.len() == 2,
        DICT_EXT | REGISTRATION | HELD | PERSON | ADDRESS_DAY | TASK | TASK_CHANGE | AUDIT => {
            rest.len() == 8
        }
        CELL_DAY => rest.len() == 12,
        _ => false,
    }
}

pub fn held(seq: u64) -> Vec<u8> {
    let mut k = vec![HELD];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn audit(seq: u64) -> Vec<u8> {
    let mut k = vec![AUDIT];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Smallest and largest hour a key can hold.
pub const MIN_HOUR: i64 = i32::MIN as i64;
pub const MAX_HOUR: i64 = i32::MAX as i64;

pub fn hour_bytes(hour: i64) -> [u8; 4] {
    debug_assert!((MIN_HOUR..=MAX_HOUR).contains(&hour));
    ((hour as i32 as u32) ^ 0x8000_0000).to_be_bytes()
}

pub fn hour_from(b: &[u8]) -> i64 {
    let v = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) ^ 0x8000_0000;
    v as i32 as i64
}

/// Partition key: the week, as an hour is encoded (weeks fit easily).
pub fn partition(week: i64) -> Vec<u8> {
    let mut k = vec![PARTITION];
    k.extend_from_slice(&hour_bytes(week));
    k
}

pub fn meta(name: &str) -> Vec<u8> {
    let mut k = vec![META];
    k.extend_from_slice(name.as_bytes());
    k
}

pub fn dict_ext(person: u64) -> Vec<u8> {
    let mut k = vec![DICT_EXT];
    k.extend_from_slice(&person.to_be_bytes());
    k
}

pub fn dict_int(id: u32) -> Vec<u8> {
    let mut k = vec![DICT_INT];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn last_seen(id: u32) -> Vec<u8> {
    let mut k = vec![LAST_SEEN];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn address(code: &str) -> Vec<u8> {
    let mut k = vec![ADDRESS];
    k.extend_from_slice(code.as_bytes());
    k
}

pub fn registration(person: u64) -> Vec<u8> {
    let mut k = vec![REGISTRATION];
    k.extend_from_slice(&person.to_be_bytes());
    k
}

pub fn source(id: u16) -> Vec<u8> {
    let mut k = vec![SOURCE];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Cell slice key: one per slice cell and UTC day.
pub fn cell_day(day: i64, cell: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(13);
    k.push(CELL_DAY);
    k.extend_from_slice(&hour_bytes(day));
    k.extend_from_slice(&cell.to_be_bytes());
    k
}

/// Address slice key: one per address and UTC day.
pub fn address_day(day: i64, address_id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(ADDRESS_DAY);
    k.extend_from_slice(&hour_bytes(day));
    k.extend_from_slice(&address_id.to_be_bytes());
    k
}

pub fn hour_slice(hour: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(5);
    k.push(HOUR_SLICE);
    k.extend_from_slice(&hour_bytes(hour));
    k
}

/// Person index key: one per person and UTC day (`hour.div_euclid(24)`),
/// stored like an hour. A day per key instead of an hour per key cuts the
/// index's keys about fivefold; where-was over 7 days reads 8 keys.
pub fn person_day(id: u32, day: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(PERSON);
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(&hour_bytes(day));
    k
}

pub fn task(id: u64) -> Vec<u8> {
    let mut k = vec![TASK];
    k.extend_from_slice(&id.to_be_bytes());
    k
}

pub fn task_subject(suffix: &[u8]) -> Vec<u8> {
    let mut k = vec![TASK_SUBJECT];
    k.extend_from_slice(suffix);
    k
}

pub fn task_change(seq: u64) -> Vec<u8> {
    let mut k = vec![TASK_CHANGE];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// A human-readable rendering of a key for error messages.
pub fn describe(key: &[u8]) -> String {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    format!("0x{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_sort_numerically_across_zero() {
        let hours = [MIN_HOUR, -5, -1, 0, 1, 500_000, MAX_HOUR];
        for w in hours.windows(2) {
            assert!(hour_bytes(w[0]) < hour_bytes(w[1]), "{} vs {}", w[0], w[1]);
            assert_eq!(hour_from(&hour_bytes(w[0])), w[0]);
        }
    }

    #[test]
    fn every_key_this_layout_writes_is_well_formed_and_others_are_not() {
        for k in [
            meta("format"),
            dict_ext(7),
            dict_int(7),
            address("H1"),
            registration(7),
            source(3),
            held(9),
            cell_day(-3, u64::MAX),
            address_day(100, 4),
            hour_slice(MIN_HOUR),
            person_day(7, 100),
            task(1),
            task_subject(b"\x01suffix"),
            task_change(2),
            audit(3),
            partition(2900),
        ] {
            assert!(well_formed(&k), "{}", describe(&k));
        }
        for k in [
            vec![],
            vec![CELL_DAY],
            vec![PERSON, 0, 0, 0, 7],
            dict_int(7)[..4].to_vec(),
            [audit(3), vec![0]].concat(),
            vec![0x05, 1, 2],
            vec![0xff; 9],
        ] {
            assert!(!well_formed(&k), "{}", describe(&k));
        }
    }

    #[test]
    fn prefix_end_is_exclusive_upper_bound() {
        assert_eq!(prefix_end(&[0x10, 0x01]), vec![0x10, 0x02]);
        assert_eq!(prefix_end(&[0x10, 0xff]), vec![0x11]);
        assert!(cell_day(3, u64::MAX) < prefix_end(&cell_day(3, 0)[..5]));
    }
}
