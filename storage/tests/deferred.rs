//! Held ingest writes: a replicated store gathers the slices of many ingest
//! commands in memory and writes them together. Reads must see them, other
//! commands and `sync_applied` must write them first, and a crash that
//! loses them must be repaired by replaying the raft log from the store's
//! durable index, to the same bytes as writing every command at once.

use hourcell_storage::cell::cell_at;
use hourcell_storage::*;

fn addr(code: &str, lat: f64, lng: f64) -> AddressRecord {
    AddressRecord {
        code: code.into(),
        lat,
        lng,
        kind: AddressKind::Standard,
        area: "A1".into(),
        label: format!("generated {code}"),
        id: 0,
    }
}

/// Index 1: the addresses; indexes 2..=6: five ingest batches over three
/// days, sharing persons, cells and addresses across batches (what makes
/// holding them worthwhile), with new persons and a new source on the way.
fn commands() -> Vec<(u64, Command)> {
    let mut out = vec![(
        1,
        Command::PutAddresses(vec![
            addr("H1", 30.0, 120.0),
            addr("H2", 30.01, 120.01),
            addr("W1", 30.05, 120.05),
        ]),
    )];
    let places = [
        (30.0, 120.0, Some("H1")),
        (30.01, 120.01, Some("H2")),
        (30.05, 120.05, Some("W1")),
        (30.02, 120.03, None),
    ];
    let sources = ["utility", "access", "rental", "service"];
    for b in 0..5u64 {
        let events = (0..60u64)
            .map(|i| {
                let (lat, lng, code) = places[((i * 7 + b) % 4) as usize];
                SliceEvent {
                    person: 1_000 + (i * 13 + b * 17) % (40 + b * 10),
                    hour: 480 + ((i * 5 + b * 11) % 72) as i64,
                    cell: cell_at(lat, lng, 16),
                    address: code.map(Into::into),
                    source: sources[((i + b) % (2 + b.min(2))) as usize].into(),
                }
            })
            .collect();
        out.push((2 + b, Command::Ingest(events)));
    }
    out
}

fn open(defer: usize) -> MetaStore<MemEngine> {
    let s = MetaStore::open(MemEngine::new(), Some(16)).unwrap();
    s.set_defer_events(defer).unwrap();
    s
}

fn apply(s: &MetaStore<MemEngine>, cmds: &[(u64, Command)]) {
    for (i, c) in cmds {
        s.apply_at(c, *i, false).unwrap();
    }
}

/// Every key and value in the engine, read past the store (no flush).
fn raw(e: &MemEngine) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    e.scan(&[0x00], &[0xff; 16], &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })
    .unwrap();
    out
}

fn copy(e: &MemEngine) -> MemEngine {
    let m = MemEngine::new();
    let mut b = WriteBatch::default();
    for (k, v) in raw(e) {
        b.put(k, v);
    }
    m.write(b, true).unwrap();
    m
}

/// What every read path answers, for comparing stores.
fn answers(s: &MetaStore<MemEngine>) -> String {
    answers_before(s, 10_000)
}

/// What every read path answers about the hours before `end` (and the
/// days 20..=22 for the day reads).
fn answers_before(s: &MetaStore<MemEngine>, end: i64) -> String {
    let mut out = String::new();
    s.hour_slices(0, end, &mut |h, b| {
        out += &format!("hour {h}: {:?}\n", s.external_ids(&b));
    })
    .unwrap();
    s.hour_slices_rev(end, &mut |h, b| {
        out += &format!("back {h}: {:?}\n", s.external_ids(&b));
        true
    })
    .unwrap();
    for day in 20..23 {
        s.cell_days(day, 0, u64::MAX, &mut |c, set| {
            out += &format!("cell {day} {c}: {set:?}\n");
        })
        .unwrap();
        for a in 1..=3 {
            out += &format!("address {day} {a}: {:?}\n", s.address_day(day, a).unwrap());
        }
    }
    for p in 1_000..1_100 {
        if let Some(id) = s.internal_id(p) {
            out += &format!("person {p}: {:?}\n", s.person_hours(id, 0, end).unwrap());
            s.person_hours_rev(id, 0, end, &mut |h, e| {
                out += &format!("person back {p} {h}: {e:?}\n");
                true
            })
            .unwrap();
        }
    }
    out
}

/// The store with every command written at once: the reference.
fn reference() -> MetaStore<MemEngine> {
    let r = open(0);
    apply(&r, &commands());
    assert_eq!(r.durable_applied().unwrap(), Some(6));
    r
}

#[test]
fn reads_see_held_ingest_and_the_flush_writes_the_same_bytes() {
    let r = reference();
    let d = open(1 << 20);
    apply(&d, &commands());
    // Only the addresses are written; the five batches are held.
    assert_eq!(d.durable_applied().unwrap(), Some(1));
    assert_ne!(raw(d.engine()), raw(r.engine()));
    // Dictionaries are in memory at once.
    assert_eq!(d.internal_id(1_000), r.internal_id(1_000));
    // Stats (polled by monitoring) see held hours without writing them.
    let (sd, sr) = (d.stats().unwrap(), r.stats().unwrap());
    assert_eq!((sd.first_hour, sd.last_hour), (sr.first_hour, sr.last_hour));
    assert_eq!((sd.persons, sd.addresses), (sr.persons, sr.addresses));
    assert_eq!(d.durable_applied().unwrap(), Some(1));
    // A read writes what is held first, and answers as if nothing was.
    assert_eq!(answers(&d), answers(&r));
    assert!(!answers(&r).is_empty());
    assert_eq!(d.durable_applied().unwrap(), Some(6));
    assert_eq!(raw(d.engine()), raw(r.engine()));
}

#[test]
fn a_crash_loses_held_writes_and_replaying_from_the_durable_index_restores_them() {
    let r = reference();
    let cmds = commands();
    // Events per batch: 60. A limit of 150 writes after the third batch
    // (index 4) and holds the last two.
    let d = open(150);
    apply(&d, &cmds);
    assert_eq!(d.durable_applied().unwrap(), Some(4));
    // Power loss: the engine keeps what was written, memory is gone.
    let crashed = MetaStore::open(copy(d.engine()), None).unwrap();
    crashed.set_defer_events(150).unwrap();
    let from = crashed.durable_applied().unwrap().unwrap();
    assert_eq!(from, 4);
    // Ids assigned by the held batches are gone too, and come back the same.
    let late: Vec<u64> = (1_000..1_100)
        .filter(|p| d.internal_id(*p).is_some() && crashed.internal_id(*p).is_none())
        .collect();
    assert!(!late.is_empty(), "the held batches brought new persons");
    apply(&crashed, &cmds[from as usize..]);
    assert_eq!(answers(&crashed), answers(&r));
    assert_eq!(raw(crashed.engine()), raw(r.engine()));

    // A crash with everything held replays from index 1; replaying a
    // command that was already written (a crash just after a flush, before
    // the index reached the raft log's applied mark) changes nothing.
    let d = open(1 << 20);
    apply(&d, &cmds);
    let crashed = MetaStore::open(copy(d.engine()), None).unwrap();
    assert_eq!(crashed.durable_applied().unwrap(), Some(1));
    apply(&crashed, &cmds[..]);
    crashed.flush().unwrap();
    assert_eq!(raw(crashed.engine()), raw(r.engine()));
}

#[test]
fn other_commands_snapshots_and_log_compaction_write_held_ingest_first() {
    let r = reference();
    let cmds = commands();
    let d = open(1 << 20);
    apply(&d, &cmds[..3]);
    assert_eq!(d.durable_applied().unwrap(), Some(1));
    // An audit record (index 4 in this store's log) writes indexes 2-3
    // first, then itself.
    let audit = Command::Audit(vec![AuditEntry {
        time: 1_800_000_000,
        principal: "generated-inspector".into(),
        roles: "investigator".into(),
        rpc: "Query.WhereWas".into(),
        parameters: "{}".into(),
        purpose: "generated test purpose".into(),
        case_ref: "CASE-1".into(),
        persons_returned: 0,
        outcome: "ok".into(),
    }]);
    d.apply_at(&audit, 4, false).unwrap();
    assert_eq!(d.durable_applied().unwrap(), Some(4));
    assert_eq!(d.audit_len(), 1);
    // The raft log is about to drop entries up to 5: they must be written.
    d.apply_at(&cmds[3].1, 5, false).unwrap();
    assert_eq!(d.durable_applied().unwrap(), Some(4));
    d.sync_applied(5).unwrap();
    assert_eq!(d.durable_applied().unwrap(), Some(5));
    // A snapshot holds what is held.
    d.apply_at(&cmds[4].1, 6, false).unwrap();
    let image = d.freeze().unwrap();
    assert_eq!(d.durable_applied().unwrap(), Some(6));
    let mut n = 0;
    image
        .scan(&[0x00], &[0xff; 16], &mut |_, _| {
            n += 1;
            true
        })
        .unwrap();
    assert_eq!(n, raw(d.engine()).len());
    // With the last batch, the same slices as the reference (the audit
    // record aside).
    d.apply_at(&cmds[5].1, 7, false).unwrap();
    assert_eq!(answers(&d), answers(&r));
    assert_eq!(d.durable_applied().unwrap(), Some(7));
}

fn held_log_keys(e: &MemEngine) -> usize {
    raw(e).iter().filter(|(k, _)| k[0] == keys::HELD).count()
}

#[test]
fn an_unreplicated_store_logs_held_rows_and_writes_them_on_reopen() {
    let r = reference();
    let cmds = commands();
    let s = open(1 << 20);
    for (_, c) in &cmds {
        s.apply(c).unwrap();
    }
    // Five batches logged (synced, one key each), no slices written yet.
    assert_eq!(held_log_keys(s.engine()), 5);
    assert!(!raw(s.engine()).iter().any(|(k, _)| k[0] == keys::PERSON));
    // A crash now: the reopened store writes the logged rows at open.
    let reopened = MetaStore::open(copy(s.engine()), None).unwrap();
    assert_eq!(held_log_keys(reopened.engine()), 0);
    assert_eq!(answers(&reopened), answers(&r));
    // The running store's first read writes them, and drops the log in
    // the same batch.
    assert_eq!(answers(&s), answers(&r));
    assert_eq!(held_log_keys(s.engine()), 0);
    // Replaying a batch whose log survived a crash after its slices were
    // written changes nothing (merges are set unions).
    s.apply(&cmds[3].1).unwrap();
    assert_eq!(held_log_keys(s.engine()), 1);
    let reopened = MetaStore::open(copy(s.engine()), None).unwrap();
    assert_eq!(answers(&reopened), answers(&r));
}

#[test]
fn synced_and_unheld_applies_write_at_once() {
    let cmds = commands();
    let s = open(1 << 20);
    s.apply_at(&cmds[0].1, 1, true).unwrap();
    s.apply_at(&cmds[1].1, 2, true).unwrap();
    assert_eq!(s.durable_applied().unwrap(), Some(2));
    let before = raw(s.engine());
    let _ = answers(&s);
    assert_eq!(raw(s.engine()), before, "nothing was held");
    s.set_defer_events(0).unwrap();
    s.apply(&cmds[2].1).unwrap();
    assert_eq!(held_log_keys(s.engine()), 0);
    let before = raw(s.engine());
    let _ = answers(&s);
    assert_eq!(raw(s.engine()), before, "nothing was held");
}

/// What the reads of hours before 720 (days 20..=22) answer.
fn past_answers(s: &MetaStore<MemEngine>) -> String {
    answers_before(s, 720)
}

/// A batch of the present hours (720..750: days 30 and 31), at raft index 7.
fn late_batch() -> Command {
    Command::Ingest(
        (0..40u64)
            .map(|i| SliceEvent {
                person: 1_000 + i,
                hour: 720 + (i % 30) as i64,
                cell: cell_at(30.0, 120.0, 16),
                address: Some("H1".into()),
                source: "utility".into(),
            })
            .collect(),
    )
}

#[test]
fn reads_of_other_hours_leave_held_ingest_held_and_reads_of_its_hours_write_it() {
    let r = reference();
    let d = open(1 << 20);
    apply(&d, &commands());
    assert_eq!(answers(&d), answers(&r));
    assert_eq!(d.durable_applied().unwrap(), Some(6));

    // Ingest of the present goes on while the past is read: those reads
    // answer from the engine and leave the batch held.
    d.apply_at(&late_batch(), 7, false).unwrap();
    let before = raw(d.engine());
    assert_eq!(past_answers(&d), past_answers(&r));
    assert!(past_answers(&r).contains("person back"));
    assert_eq!(
        raw(d.engine()),
        before,
        "a read of other hours wrote held rows"
    );
    assert_eq!(d.durable_applied().unwrap(), Some(6));
    // A window ending where the held hours begin does not meet them ...
    d.hour_slices(700, 720, &mut |_, _| {}).unwrap();
    assert_eq!(d.durable_applied().unwrap(), Some(6));
    // ... one that takes in their first hour does, and sees them.
    let mut seen = Vec::new();
    d.hour_slices(700, 721, &mut |h, _| seen.push(h)).unwrap();
    assert_eq!(seen, vec![720]);
    assert_eq!(d.durable_applied().unwrap(), Some(7));
    r.apply_at(&late_batch(), 7, false).unwrap();
    assert_eq!(raw(d.engine()), raw(r.engine()));

    // Each read kind writes held rows of its own hours before answering.
    type Read = fn(&MetaStore<MemEngine>) -> String;
    let reads: [(&str, Read); 4] = [
        ("cell day", |s| {
            let mut out = String::new();
            s.cell_days(30, 0, u64::MAX, &mut |c, set| {
                out += &format!("{c}: {set:?}")
            })
            .unwrap();
            out
        }),
        ("address day", |s| {
            format!("{:?}", s.address_day(31, 1).unwrap())
        }),
        ("person hours", |s| {
            format!(
                "{:?}",
                s.person_hours(s.internal_id(1_005).unwrap(), 725, 726)
                    .unwrap()
            )
        }),
        ("no activity since", |s| {
            let mut last = None;
            s.hour_slices_rev(10_000, &mut |h, _| {
                last = Some(h);
                false
            })
            .unwrap();
            format!("{last:?}")
        }),
    ];
    for (i, (what, read)) in reads.iter().enumerate() {
        let d = open(1 << 20);
        apply(&d, &commands());
        d.flush().unwrap();
        d.apply_at(&late_batch(), 7, false).unwrap();
        assert_eq!(d.durable_applied().unwrap(), Some(6), "{what}");
        let answer = read(&d);
        assert_eq!(answer, read(&r), "{what} ({i})");
        assert!(answer.len() > 6, "{what} found nothing: {answer}");
        assert_eq!(d.durable_applied().unwrap(), Some(7), "{what}");
    }
}

fn audit() -> Command {
    Command::Audit(vec![AuditEntry {
        time: 1_700_000_000,
        principal: "analyst-1".into(),
        rpc: "Query.WhereWas".into(),
        purpose: "test".into(),
        outcome: "ok".into(),
        ..Default::default()
    }])
}

#[test]
fn an_unreplicated_audit_record_does_not_wait_for_held_ingest() {
    let r = reference();
    let cmds = commands();
    let s = open(1 << 20);
    for (_, c) in &cmds {
        s.apply(c).unwrap();
    }
    let logged = held_log_keys(s.engine());
    assert_eq!(logged, 5);
    // The record of a person-level answer is written on its own (synced,
    // like every unreplicated write); the held batches stay held.
    s.apply(&audit()).unwrap();
    assert_eq!(held_log_keys(s.engine()), logged);
    assert!(!raw(s.engine()).iter().any(|(k, _)| k[0] == keys::PERSON));
    assert_eq!(s.audit_records(0, 10).unwrap().len(), 1);
    // A crash now loses neither: the logged rows are written at open.
    let reopened = MetaStore::open(copy(s.engine()), None).unwrap();
    assert_eq!(answers(&reopened), answers(&r));
    assert_eq!(
        reopened.audit_records(0, 10).unwrap(),
        s.audit_records(0, 10).unwrap()
    );
    assert_eq!(answers(&s), answers(&r));

    // A replicated store writes held ingest first: the record's raft index
    // must not pass the held commands'.
    let d = open(1 << 20);
    apply(&d, &cmds);
    assert_eq!(d.durable_applied().unwrap(), Some(1));
    d.apply_at(&audit(), 7, false).unwrap();
    assert_eq!(d.durable_applied().unwrap(), Some(7));
    assert!(raw(d.engine()).iter().any(|(k, _)| k[0] == keys::PERSON));
}

#[test]
fn held_ingest_is_written_once_ingest_has_been_idle() {
    let r = reference();
    let d = open(1 << 20);
    apply(&d, &commands());
    assert_eq!(d.durable_applied().unwrap(), Some(1));
    // Ingest held just now is not idle for an hour.
    assert!(!d.flush_idle(std::time::Duration::from_secs(3600)).unwrap());
    assert_eq!(d.durable_applied().unwrap(), Some(1));
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(d.flush_idle(std::time::Duration::from_millis(10)).unwrap());
    assert_eq!(d.durable_applied().unwrap(), Some(6));
    assert_eq!(raw(d.engine()), raw(r.engine()));
    // Nothing held: nothing to write.
    assert!(!d.flush_idle(std::time::Duration::ZERO).unwrap());
}
