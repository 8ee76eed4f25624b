//! One suite, every engine: the in-memory twin and RocksDB must behave the
//! same through the store.

use hourcell_storage::cell::cell_at;
use hourcell_storage::*;
use roaring::RoaringBitmap;

fn addr(code: &str, lat: f64, lng: f64, area: &str) -> AddressRecord {
    AddressRecord {
        code: code.into(),
        lat,
        lng,
        kind: AddressKind::Standard,
        area: area.into(),
        label: format!("test {code}"),
        id: 0,
    }
}

fn ev(
    person: u64,
    hour: i64,
    lat: f64,
    lng: f64,
    address: Option<&str>,
    source: &str,
) -> SliceEvent {
    SliceEvent {
        person,
        hour,
        cell: cell_at(lat, lng, 16),
        address: address.map(Into::into),
        source: source.into(),
    }
}

/// The persons (external ids) per cell during `hour`, from the cell-day sets.
fn collect_cells<E: KvEngine>(s: &MetaStore<E>, hour: i64) -> Vec<(u64, Vec<u64>)> {
    let bit = 1u32 << hour.rem_euclid(24);
    let mut out = Vec::new();
    s.cell_days(hour.div_euclid(24), 0, u64::MAX, &mut |c, set| {
        let b: RoaringBitmap = set.iter().filter(|e| e.1 & bit != 0).map(|e| e.0).collect();
        if !b.is_empty() {
            out.push((c, s.external_ids(&b)));
        }
    })
    .unwrap();
    out
}

/// The persons (external ids) at an address during `hour`, if any.
fn address_hour<E: KvEngine>(s: &MetaStore<E>, hour: i64, address: u32) -> Option<Vec<u64>> {
    let bit = 1u32 << hour.rem_euclid(24);
    let set = s.address_day(hour.div_euclid(24), address).unwrap()?;
    let b: RoaringBitmap = set.iter().filter(|e| e.1 & bit != 0).map(|e| e.0).collect();
    (!b.is_empty()).then(|| s.external_ids(&b))
}

fn run_suite<E: KvEngine>(make: &mut dyn FnMut() -> E) {
    // Basic apply and every read path.
    let s = MetaStore::open(make(), None).unwrap();
    assert_eq!(s.slice_level(), 16);
    s.apply(&Command::PutAddresses(vec![
        addr("H1", 30.0, 120.0, "A1"),
        addr("H2", 30.01, 120.01, "A1"),
        addr("W1", 30.05, 120.05, "A2"),
    ]))
    .unwrap();
    assert_eq!(s.address("H2").unwrap().id, 2);
    // A re-put keeps the id and the point (apply never moves a point).
    s.apply(&Command::PutAddresses(vec![addr("H2", 1.0, 1.0, "A1")]))
        .unwrap();
    assert_eq!(s.address("H2").unwrap().lat, 30.01);
    assert_eq!(s.area_addresses("A1"), vec![1, 2]);
    let events = vec![
        ev(900, 100, 30.0, 120.0, Some("H1"), "utility"),
        ev(7, 100, 30.0, 120.0, None, "access"),
        ev(900, 101, 30.05, 120.05, Some("W1"), "service"),
        ev(u64::MAX, -3, 30.01, 120.01, Some("H2"), "rental"),
    ];
    let out = s.apply(&Command::Ingest(events.clone())).unwrap();
    assert_eq!(out.new_persons, 3);
    // Idempotent: the same batch again changes no answer and no id.
    let again = s.apply(&Command::Ingest(events.clone())).unwrap();
    assert_eq!(again.new_persons, 0);
    let cells = collect_cells(&s, 100);
    assert_eq!(cells, vec![(cell_at(30.0, 120.0, 16), vec![7, 900])]);
    assert_eq!(collect_cells(&s, -3)[0].1, vec![u64::MAX]);
    assert_eq!(address_hour(&s, 100, 1), Some(vec![900]));
    assert_eq!(address_hour(&s, 101, 1), None);
    // Hours 100 and 101 share a day: 900 is in W1's day set for hour 101 only.
    let w1 = s.address_day(100 / 24, 3).unwrap().unwrap();
    assert_eq!(w1, vec![(s.internal_id(900).unwrap(), 1 << (101 % 24))]);
    let mut hours = Vec::new();
    s.hour_slices(-10, 1000, &mut |h, b| hours.push((h, b.len())))
        .unwrap();
    assert_eq!(hours, vec![(-3, 1), (100, 2), (101, 1)]);
    let id = s.internal_id(900).unwrap();
    let ph = s.person_hours(id, 0, 200).unwrap();
    assert_eq!(ph.len(), 2);
    assert_eq!(ph[0].0, 100);
    assert_eq!(ph[0].1[0].address.as_deref(), Some("H1"));
    assert_eq!(ph[0].1[0].source, "utility");
    assert_eq!(ph[0].1[0].cell, cell_at(30.0, 120.0, 16));
    assert_eq!(ph[1].1[0].address.as_deref(), Some("W1"));
    let last = s.last_active_before(id, 0, 101, &mut |_| true).unwrap();
    assert_eq!(last, Some(100));
    let last_w1 = s
        .last_active_before(id, 0, 1000, &mut |p| {
            p.iter().any(|e| e.address.as_deref() == Some("H1"))
        })
        .unwrap();
    assert_eq!(last_w1, Some(100));
    assert_eq!(
        s.last_active_before(id, 0, 100, &mut |_| true).unwrap(),
        None
    );
    s.apply(&Command::PutRegistrations(vec![RegistrationRecord {
        person: 7,
        address: "H1".into(),
        kind: RegistrationKind::Temporary,
        valid_from: 0,
        valid_until: Some(1000),
    }]))
    .unwrap();
    assert!(s.registration(7).unwrap().valid_at(999));
    assert!(!s.registration(7).unwrap().valid_at(1000));
    let (postings, places) = s.count_postings().unwrap();
    // cells: h100 {7,900}, h101 {900}, h-3 {max}; addresses: h100 H1 {900},
    // h101 W1 {900}, h-3 H2 {max}.
    assert_eq!(postings, 4 + 3);
    assert_eq!(places, 4);
    let st = s.stats().unwrap();
    assert_eq!((st.first_hour, st.last_hour), (Some(-3), Some(101)));
    assert_eq!(st.persons, 3);

    // Changing the slice level of an existing store is refused.
    drop(s);
}

fn merge_many_batches<E: KvEngine>(make: &mut dyn FnMut() -> E) {
    let s = MetaStore::open(make(), Some(16)).unwrap();
    let mut model = RoaringBitmap::new();
    for batch in 0..50u64 {
        let events: Vec<_> = (0..40u64)
            .map(|i| ev(batch * 1000 + i * 7 % 300, 5, 10.0, 10.0, None, "access"))
            .collect();
        s.apply(&Command::Ingest(events)).unwrap();
    }
    s.cell_days(0, 0, u64::MAX, &mut |_, set| {
        assert!(set.iter().all(|e| e.1 == 1 << 5));
        model = set.iter().map(|e| e.0).collect();
    })
    .unwrap();
    assert_eq!(model.len(), 50 * 40_u64.min(300));
}

#[test]
fn mem_engine_passes_suite() {
    run_suite(&mut || MemEngine::new());
    merge_many_batches(&mut || MemEngine::new());
}

#[test]
fn rocks_engine_passes_suite() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut i = 0;
    let mut make = || {
        i += 1;
        RocksEngine::open(dirs[i - 1].path(), &RocksConfig::default()).unwrap()
    };
    run_suite(&mut make);
    merge_many_batches(&mut make);
}

#[test]
fn rocks_store_survives_reopen_with_same_ids_and_level() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = MetaStore::open(
            RocksEngine::open(dir.path(), &RocksConfig::default()).unwrap(),
            Some(14),
        )
        .unwrap();
        s.apply(&Command::PutAddresses(vec![addr("H1", 1.0, 2.0, "A")]))
            .unwrap();
        s.apply(&Command::Ingest(vec![SliceEvent {
            person: 42,
            hour: 7,
            cell: cell_at(1.0, 2.0, 14),
            address: Some("H1".into()),
            source: "utility".into(),
        }]))
        .unwrap();
    }
    let e = RocksEngine::open(dir.path(), &RocksConfig::default()).unwrap();
    let err = MetaStore::open(e, Some(16))
        .err()
        .expect("level mismatch must fail");
    assert!(err.to_string().contains("level 14"), "{err}");
    let s = MetaStore::open(
        RocksEngine::open(dir.path(), &RocksConfig::default()).unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(s.slice_level(), 14);
    assert_eq!(s.internal_id(42), Some(0));
    assert_eq!(s.address("H1").unwrap().id, 1);
    let id = s.internal_id(42).unwrap();
    let ph = s.person_hours(id, 0, 10).unwrap();
    assert_eq!(ph[0].1[0].source, "utility");
    assert_eq!(ph[0].1[0].cell, cell_at(1.0, 2.0, 14));
    // New persons continue after the reloaded ones.
    s.apply(&Command::Ingest(vec![SliceEvent {
        person: 43,
        hour: 7,
        cell: cell_at(1.0, 2.0, 14),
        address: None,
        source: "utility".into(),
    }]))
    .unwrap();
    assert_eq!(s.internal_id(43), Some(1));
}

#[test]
fn data_directory_of_an_older_format_is_refused() {
    let e = MemEngine::new();
    let mut b = WriteBatch::default();
    b.put(keys::meta("slice_level"), vec![16]);
    e.write(b, true).unwrap();
    let err = MetaStore::open(e, None)
        .err()
        .expect("old format must fail");
    assert!(err.to_string().contains("format 1"), "{err}");
}

fn draft(kind: TaskKind, person: u64, address: &str) -> TaskDraft {
    TaskDraft {
        kind,
        person,
        address: address.into(),
        area: "A1".into(),
        score: Some(0.9),
        evidence: vec![],
        registration: None,
        last_seen_hour: Some(5),
    }
}

fn raise<E: KvEngine>(s: &MetaStore<E>, at: i64, drafts: Vec<TaskDraft>) -> Vec<u64> {
    s.apply(&Command::RaiseTasks {
        at,
        evaluation: format!("eval-{at}"),
        suppress_secs: 30 * 86_400,
        tasks: drafts,
    })
    .unwrap()
    .task_ids
}

fn update<E: KvEngine>(
    s: &MetaStore<E>,
    id: u64,
    state: TaskState,
    outcome: Option<Outcome>,
    at: i64,
) -> ApplyOutcome {
    s.apply(&Command::UpdateTask(TaskUpdate {
        id,
        state,
        outcome,
        note: "checked".into(),
        by: "field-7".into(),
        at,
    }))
    .unwrap()
}

fn task_lifecycle<E: KvEngine>(make: &mut dyn FnMut() -> E) {
    let s = MetaStore::open(make(), None).unwrap();
    let day = 86_400;
    let t0 = 1_000 * day;
    let a = draft(TaskKind::RegisterNewcomer, 1, "H1");
    let b = draft(TaskKind::ResidenceMismatch, 2, "H2");
    // Duplicates inside one evaluation collapse too.
    assert_eq!(
        raise(&s, t0, vec![a.clone(), b.clone(), a.clone()]),
        vec![1, 2]
    );
    // Evaluating again raises nothing while the tasks are open.
    assert!(raise(&s, t0 + 3600, vec![a.clone(), b.clone()]).is_empty());
    // The same person at another address, or another kind, is a new subject.
    let a2 = draft(TaskKind::RegisterNewcomer, 1, "H9");
    assert_eq!(raise(&s, t0 + 3600, vec![a2]), vec![3]);

    // Lifecycle: open → in_progress → resolved(rejected).
    assert!(update(&s, 1, TaskState::InProgress, None, t0 + day)
        .refused
        .is_none());
    let refused = update(&s, 1, TaskState::Open, None, t0 + day).refused;
    assert!(
        refused.unwrap().contains("cannot move"),
        "back to open is refused"
    );
    assert!(update(&s, 1, TaskState::Resolved, None, t0 + day)
        .refused
        .unwrap()
        .contains("outcome"));
    let rejected_at = t0 + 2 * day;
    let out = update(
        &s,
        1,
        TaskState::Resolved,
        Some(Outcome::Rejected),
        rejected_at,
    );
    assert_eq!((out.refused, out.task_ids), (None, vec![1]));
    let t1 = s.task(1).unwrap().unwrap();
    assert_eq!(
        (t1.state, t1.outcome, t1.updated_by.as_str(), t1.created_at),
        (TaskState::Resolved, Some(Outcome::Rejected), "field-7", t0)
    );
    assert!(update(&s, 99, TaskState::InProgress, None, t0)
        .refused
        .is_some());

    // Rejected: suppressed for 30 days, raised again (new id) after.
    assert!(raise(&s, rejected_at + 30 * day - 1, vec![a.clone()]).is_empty());
    assert_eq!(raise(&s, rejected_at + 30 * day, vec![a.clone()]), vec![4]);
    // Confirmed: not suppressed; the next evaluation may raise it again.
    update(
        &s,
        2,
        TaskState::Resolved,
        Some(Outcome::Confirmed),
        t0 + day,
    );
    assert_eq!(raise(&s, t0 + day + 1, vec![b]), vec![5]);

    // Listing with a filter and pagination by id.
    let open: Vec<u64> = s
        .tasks_after(0, 2, &mut |t| t.state == TaskState::Open)
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(open, vec![3, 4]);
    let rest: Vec<u64> = s
        .tasks_after(4, 10, &mut |t| t.state == TaskState::Open)
        .unwrap()
        .iter()
        .map(|t| t.id)
        .collect();
    assert_eq!(rest, vec![5]);

    // The change log has every creation and change, in order, no gaps.
    let changes = s.task_changes(0, 100).unwrap();
    let seqs: Vec<u64> = changes.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, (1..=s.last_task_change()).collect::<Vec<_>>());
    let ids: Vec<(u64, TaskState)> = changes.iter().map(|c| (c.task.id, c.task.state)).collect();
    assert_eq!(
        ids,
        vec![
            (1, TaskState::Open),
            (2, TaskState::Open),
            (3, TaskState::Open),
            (1, TaskState::InProgress),
            (1, TaskState::Resolved),
            (4, TaskState::Open),
            (2, TaskState::Resolved),
            (5, TaskState::Open),
        ]
    );
    assert_eq!(s.task_changes(5, 2).unwrap()[0].seq, 6);
}

#[test]
fn tasks_follow_their_lifecycle_on_every_engine() {
    task_lifecycle(&mut || MemEngine::new());
    let dir = tempfile::tempdir().unwrap();
    task_lifecycle(&mut || RocksEngine::open(dir.path(), &RocksConfig::default()).unwrap());
}

#[test]
fn task_ids_and_change_log_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let open = || {
        MetaStore::open(
            RocksEngine::open(dir.path(), &RocksConfig::default()).unwrap(),
            None,
        )
        .unwrap()
    };
    {
        let s = open();
        raise(&s, 10, vec![draft(TaskKind::VerifyDeparture, 1, "H1")]);
        update(&s, 1, TaskState::InProgress, None, 11);
    }
    let s = open();
    assert_eq!(s.last_task_change(), 2);
    // Still open after the restart: not raised twice.
    assert!(raise(&s, 12, vec![draft(TaskKind::VerifyDeparture, 1, "H1")]).is_empty());
    assert_eq!(
        raise(&s, 12, vec![draft(TaskKind::VerifyDeparture, 2, "H1")]),
        vec![2]
    );
    assert_eq!(s.last_task_change(), 3);
}

fn audit_entry(i: u64) -> AuditEntry {
    AuditEntry {
        time: 1_800_000_000 + i as i64,
        principal: format!("inspector-{i}"),
        roles: "investigator".into(),
        rpc: "Query.WhereWas".into(),
        parameters: format!("{{\"person\":{i}}}"),
        purpose: "generated test purpose".into(),
        case_ref: format!("CASE-{i}"),
        persons_returned: i,
        outcome: "ok".into(),
    }
}

fn audit_chain<E: KvEngine>(make: &mut dyn FnMut() -> E) {
    use hourcell_storage::audit::verify_chain;
    let s = MetaStore::open(make(), None).unwrap();
    s.apply(&Command::Audit((1..=3).map(audit_entry).collect()))
        .unwrap();
    s.apply(&Command::Audit(vec![audit_entry(4), audit_entry(5)]))
        .unwrap();
    let all = s.audit_records(0, 100).unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(s.audit_len(), 5);
    assert_eq!(verify_chain(&all), Ok(5));
    assert_eq!(s.audit_records(3, 100).unwrap()[0].seq, 4);

    // Edited: a record's contents change, its hash does not.
    let mut edited = all.clone();
    edited[2].entry.purpose = "something else".into();
    assert_eq!(verify_chain(&edited).unwrap_err().seq, 3);
    // Deleted: record 2 is missing.
    let deleted: Vec<_> = all.iter().filter(|r| r.seq != 2).cloned().collect();
    assert_eq!(verify_chain(&deleted).unwrap_err().seq, 3);
    // Reordered: 3 before 2.
    let mut reordered = all.clone();
    reordered.swap(1, 2);
    assert_eq!(verify_chain(&reordered).unwrap_err().seq, 3);
    // Renumbered to hide a deletion: the hash link still breaks.
    let mut renumbered = deleted.clone();
    for (i, r) in renumbered.iter_mut().enumerate() {
        r.seq = i as u64 + 1;
    }
    assert_eq!(verify_chain(&renumbered).unwrap_err().seq, 2);
}

#[test]
fn the_audit_log_is_a_hash_chain_on_every_engine() {
    audit_chain(&mut || MemEngine::new());
    let dir = tempfile::tempdir().unwrap();
    audit_chain(&mut || RocksEngine::open(dir.path(), &RocksConfig::default()).unwrap());
    // The chain continues after a reopen.
    let s = MetaStore::open(
        RocksEngine::open(dir.path(), &RocksConfig::default()).unwrap(),
        None,
    )
    .unwrap();
    s.apply(&Command::Audit(vec![audit_entry(6)])).unwrap();
    let all = s.audit_records(0, 100).unwrap();
    assert_eq!(hourcell_storage::audit::verify_chain(&all), Ok(6));
}

fn expire<E: KvEngine>(make: &mut dyn FnMut() -> E) {
    let s = MetaStore::open(make(), None).unwrap();
    s.apply(&Command::PutAddresses(vec![addr("H1", 30.0, 120.0, "A")]))
        .unwrap();
    // Persons 1..=3 every hour of days 10, 11 and 12 (hours 240..312).
    let evs: Vec<SliceEvent> = (240..312)
        .flat_map(|h| (1..=3).map(move |p| ev(p, h, 30.0, 120.0, Some("H1"), "utility")))
        .collect();
    s.apply(&Command::Ingest(evs)).unwrap();
    // A cut-off before the first stored hour changes nothing and records
    // nothing (the hourly run on a young store).
    let before = s.count_postings().unwrap();
    s.apply(&Command::Expire {
        cutoff_hour: 240,
        audit: audit_entry(9),
    })
    .unwrap();
    assert_eq!(s.count_postings().unwrap(), before);
    assert!(s.audit_records(0, 10).unwrap().is_empty());
    let cutoff = 11 * 24 + 7; // day 11, 07:00
    s.apply(&Command::Expire {
        cutoff_hour: cutoff,
        audit: audit_entry(1),
    })
    .unwrap();
    for h in [240, 250, 263, 264, 270] {
        assert!(collect_cells(&s, h).is_empty(), "hour {h} still has cells");
        assert!(address_hour(&s, h, 1).is_none(), "hour {h} still at H1");
    }
    for h in [cutoff, cutoff + 1, 300, 311] {
        assert_eq!(collect_cells(&s, h).len(), 1, "hour {h} lost");
        assert_eq!(address_hour(&s, h, 1), Some(vec![1, 2, 3]), "hour {h} lost");
    }
    let id = s.internal_id(2).unwrap();
    let hours: Vec<i64> = s
        .person_hours(id, 0, 400)
        .unwrap()
        .into_iter()
        .map(|(h, _)| h)
        .collect();
    assert_eq!(hours, (cutoff..312).collect::<Vec<_>>());
    let mut everyone = Vec::new();
    s.hour_slices(0, 400, &mut |h, _| everyone.push(h)).unwrap();
    assert_eq!(
        everyone.first(),
        Some(&cutoff),
        "hour bitmaps before the cut-off remain"
    );
    let audit = s.audit_records(0, 10).unwrap();
    assert_eq!(audit.len(), 1);
}

#[test]
fn retention_removes_whole_hours_on_every_engine() {
    expire(&mut || MemEngine::new());
    let dir = tempfile::tempdir().unwrap();
    expire(&mut || RocksEngine::open(dir.path(), &RocksConfig::default()).unwrap());
}

/// Retention forgets the persons whose every hour it removed (unless they
/// are registered) and redacts the parameters of audit records from before
/// the cut-off; the chain still verifies, and a forgotten person seen again
/// is a new id that does not inherit the old one's hours.
fn retention_forgets<E: KvEngine>(first: E, reopen: Option<&mut dyn FnMut() -> E>) {
    use hourcell_storage::audit::verify_chain;
    let cutoff = 11 * 24 + 7; // day 11, 07:00
    let cut_secs = cutoff * 3600;
    {
        let s = MetaStore::open(first, None).unwrap();
        s.apply(&Command::PutAddresses(vec![addr("H1", 30.0, 120.0, "A")]))
            .unwrap();
        s.apply(&Command::PutRegistrations(vec![RegistrationRecord {
            person: 3,
            address: "H1".into(),
            kind: RegistrationKind::Permanent,
            valid_from: 0,
            valid_until: None,
        }]))
        .unwrap();
        let at = |p: u64, h: i64| ev(p, h, 30.0, 120.0, Some("H1"), "utility");
        let mut evs: Vec<SliceEvent> = (240..250)
            .flat_map(|h| [at(1, h), at(2, h), at(3, h)])
            .collect();
        evs.push(at(2, 300)); // day 12: person 2 stays
        evs.extend((264..=270).map(|h| at(4, h))); // day 11 before 07:00 only
        evs.extend((264..=280).map(|h| at(5, h))); // and after 07:00: stays
        s.apply(&Command::Ingest(evs)).unwrap();
        let mut old = audit_entry(1);
        old.time = cut_secs - 10;
        let mut new = audit_entry(2);
        new.time = cut_secs;
        s.apply(&Command::Audit(vec![old, new])).unwrap();
        assert_eq!(s.stats().unwrap().persons, 5);
        let id1 = s.internal_id(1).unwrap();
        s.apply(&Command::Expire {
            cutoff_hour: cutoff,
            audit: audit_entry(3),
        })
        .unwrap();
        for p in [1, 4] {
            assert_eq!(s.internal_id(p), None, "person {p} is remembered");
        }
        for p in [2, 3, 5] {
            assert!(s.internal_id(p).is_some(), "person {p} was forgotten");
        }
        assert_eq!(s.external_id(id1), None);
        assert_eq!(s.stats().unwrap().persons, 3);
        let log = s.audit_records(0, 10).unwrap();
        assert_eq!(verify_chain(&log), Ok(3));
        assert!(log[0].redacted && log[0].entry.parameters.is_empty());
        assert_eq!(log[0].entry.principal, "inspector-1");
        assert!(!log[1].redacted && log[1].entry.parameters.contains("\"person\":2"));
        assert!(!log[2].redacted, "the retention record itself");
        // Seen again: a new id, and none of the old hours.
        s.apply(&Command::Ingest(vec![at(1, 400)])).unwrap();
        let again = s.internal_id(1).unwrap();
        assert_ne!(again, id1);
        let hours: Vec<i64> = s
            .person_hours(again, 0, 1000)
            .unwrap()
            .into_iter()
            .map(|(h, _)| h)
            .collect();
        assert_eq!(hours, vec![400]);
        // A second run redacts nothing twice and forgets nobody else.
        s.apply(&Command::Expire {
            cutoff_hour: cutoff + 1,
            audit: audit_entry(4),
        })
        .unwrap();
        assert_eq!(verify_chain(&s.audit_records(0, 10).unwrap()), Ok(4));
        assert!(s.internal_id(2).is_some() && s.internal_id(5).is_some());
    }
    // What retention forgot stays forgotten after a reopen.
    let Some(make) = reopen else { return };
    let s = MetaStore::open(make(), None).unwrap();
    assert_eq!(s.internal_id(4), None);
    let again = s.internal_id(1).unwrap();
    assert_eq!(s.external_id(again), Some(1));
    assert_eq!(s.stats().unwrap().persons, 4);
    s.apply(&Command::Ingest(vec![ev(
        6, 500, 30.0, 120.0, None, "utility",
    )]))
    .unwrap();
    assert!(s.internal_id(6).unwrap() > again);
    assert_eq!(verify_chain(&s.audit_records(0, 10).unwrap()), Ok(4));
}

#[test]
fn retention_forgets_unseen_persons_and_redacts_old_audit_parameters() {
    retention_forgets(MemEngine::new(), None);
    let dir = tempfile::tempdir().unwrap();
    let mut open = || RocksEngine::open(dir.path(), &RocksConfig::default()).unwrap();
    retention_forgets(open(), Some(&mut open));
}

/// A store replaced from another's frozen image holds the same data; one
/// whose replacement was interrupted refuses to open.
#[test]
fn restore_from_a_frozen_image_and_refuse_a_partial_one() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let open = |i: usize| RocksEngine::open(dirs[i].path(), &RocksConfig::default()).unwrap();
    let a = MetaStore::open(open(0), None).unwrap();
    a.apply(&Command::PutAddresses(vec![addr("H1", 30.0, 120.0, "A")]))
        .unwrap();
    a.apply(&Command::Ingest(
        (1..=50)
            .map(|p| ev(p, 300 + p as i64 % 5, 30.0, 120.0, Some("H1"), "utility"))
            .collect(),
    ))
    .unwrap();
    a.apply(&Command::Audit(vec![audit_entry(1)])).unwrap();
    let image = a.freeze().unwrap();
    // Writes after the freeze are not in the image.
    a.apply(&Command::Ingest(vec![ev(
        999, 301, 30.0, 120.0, None, "utility",
    )]))
    .unwrap();

    let b = MetaStore::open(open(1), None).unwrap();
    b.apply(&Command::Ingest(vec![ev(
        7_777, 10, 31.0, 121.0, None, "access",
    )]))
    .unwrap();
    b.begin_restore().unwrap();
    assert!(b.is_restoring());
    let mut pairs = Vec::new();
    image
        .scan(&[0x00], &[0xff; 16], &mut |k, v| {
            pairs.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    for chunk in pairs.chunks(7) {
        b.restore_chunk(chunk.to_vec()).unwrap();
    }
    b.finish_restore().unwrap();
    assert!(!b.is_restoring());
    assert_eq!(b.internal_id(7_777), None, "old contents are gone");
    assert_eq!(
        b.internal_id(999),
        None,
        "later writes are not in the image"
    );
    assert_eq!(b.stats().unwrap().persons, 50);
    assert_eq!(address_hour(&b, 301, 1).unwrap().len(), 10);
    assert_eq!(
        b.audit_records(0, 10).unwrap(),
        a.audit_records(0, 10).unwrap()
    );
    drop(b);

    // Interrupted: the mark stays, and the store refuses to open.
    let b = MetaStore::open(open(1), None).unwrap();
    b.begin_restore().unwrap();
    drop(b);
    let err = MetaStore::open(open(1), None).err().unwrap().to_string();
    assert!(err.contains("--join"), "{err}");
}

/// `scan_ranges` visits exactly what one `scan` per range visits, in order,
/// stops when told, and `cell_days_in` only hands over the cells `keep`
/// accepts.
fn multi_range_scans<E: KvEngine>(e: E) {
    // 0x7f: a prefix the store does not use, so the store opened on the
    // same engine below ignores these keys.
    let mut b = WriteBatch::default();
    for k in 0u8..40 {
        b.put(vec![0x7f, k], vec![k]);
    }
    e.write(b, true).unwrap();
    let ranges: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (vec![0x7f, 2], vec![0x7f, 5]),
        (vec![0x7f, 5], vec![0x7f, 6]),
        (vec![0x7f, 10], vec![0x7f, 10]),
        (vec![0x7f, 20], vec![0x7f, 23]),
        (vec![0x7f, 38], vec![0x80]),
    ];
    let mut want = Vec::new();
    for (s, t) in &ranges {
        e.scan(s, t, &mut |k, _| {
            want.push(k.to_vec());
            true
        })
        .unwrap();
    }
    let mut got = Vec::new();
    e.scan_ranges(&ranges, &mut |k, _| {
        got.push(k.to_vec());
        true
    })
    .unwrap();
    assert_eq!(got, want);
    assert_eq!(got.len(), 3 + 1 + 0 + 3 + 2);
    let mut first_five = Vec::new();
    e.scan_ranges(&ranges, &mut |k, _| {
        first_five.push(k.to_vec());
        first_five.len() < 5
    })
    .unwrap();
    assert_eq!(first_five, want[..5].to_vec());

    let s = MetaStore::open(e, Some(16)).unwrap();
    let day_hour = 20_000 * 24 + 5;
    let events: Vec<SliceEvent> = (0..6)
        .map(|i| SliceEvent {
            person: 100 + i,
            hour: day_hour,
            cell: cell_at(30.0 + 0.01 * i as f64, 120.0, 16),
            address: None,
            source: "s".into(),
        })
        .collect();
    s.apply(&Command::Ingest(events.clone())).unwrap();
    let mut cells: Vec<u64> = events.iter().map(|e| e.cell).collect();
    cells.sort_unstable();
    let all = |s: &MetaStore<E>, ranges: &[(u64, u64)], keep: &dyn Fn(u64) -> bool| {
        let mut out = Vec::new();
        s.cell_days_in(20_000, ranges, &mut |c| keep(c), &mut |c, set| {
            out.push((c, set.len()))
        })
        .unwrap();
        out
    };
    let every = all(&s, &[(0, u64::MAX)][..], &|_| true);
    assert_eq!(every, cells.iter().map(|&c| (c, 1)).collect::<Vec<_>>());
    let two = [(cells[0], cells[1]), (cells[4], cells[4])];
    assert_eq!(
        all(&s, &two[..], &|_| true),
        vec![(cells[0], 1), (cells[1], 1), (cells[4], 1)]
    );
    assert_eq!(
        all(&s, &two[..], &|c| c != cells[1]),
        vec![(cells[0], 1), (cells[4], 1)]
    );
}

#[test]
fn multi_range_scans_on_every_engine() {
    multi_range_scans(MemEngine::new());
    let dir = tempfile::tempdir().unwrap();
    multi_range_scans(RocksEngine::open(dir.path(), &RocksConfig::default()).unwrap());
}

/// A store's role is fixed when it is created: each refuses the other's
/// commands, a data directory opens only in its own role, and a replica
/// installs only an image of its own role.
#[test]
fn stores_keep_their_roles() {
    let dir = tempfile::tempdir().unwrap();
    let open =
        |sub: &str| RocksEngine::open(&dir.path().join(sub), &RocksConfig::default()).unwrap();
    let part = ShardIngest {
        part: ShardPart::Persons,
        persons: vec![(7, 0)],
        sources: vec![(0, "utility".into())],
        addresses: vec![],
        events: vec![],
        cell_events: vec![],
        person_events: vec![(0, 100, 0, 0, 0)],
    };
    {
        let meta = MetaStore::open(open("meta"), None).unwrap();
        let err = meta.apply(&Command::IngestShard(part.clone())).unwrap_err();
        assert!(err.to_string().contains("IngestShard"), "{err}");
        meta.apply(&Command::PutAddresses(vec![addr("H1", 30.0, 120.0, "A")]))
            .unwrap();
        let shard = ShardStore::open(open("shard"), None).unwrap();
        shard.apply(&Command::IngestShard(part)).unwrap();
        assert_eq!(shard.internal_id(7), Some(0));
        for cmd in [
            Command::PutAddresses(vec![addr("H1", 30.0, 120.0, "A")]),
            Command::Audit(vec![audit_entry(1)]),
            Command::Ingest(vec![ev(7, 100, 30.0, 120.0, None, "utility")]),
            Command::AssignIds {
                persons: vec![8],
                sources: vec![],
            },
        ] {
            let err = shard.apply(&cmd).unwrap_err();
            assert!(err.to_string().contains("a data shard"), "{err}");
        }
        // An image of the other role is refused.
        let image = |e: &RocksEngine| {
            let mut pairs = Vec::new();
            e.scan(&[], &[0xff; 16], &mut |k, v| {
                pairs.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
            pairs
        };
        let other = ShardStore::open(open("other"), None).unwrap();
        other.begin_restore().unwrap();
        other.restore_chunk(image(meta.engine())).unwrap();
        let err = other.finish_restore().unwrap_err();
        assert!(err.to_string().contains("the metadata store"), "{err}");
    }
    let err = MetaStore::open(open("shard"), None).err().unwrap();
    assert!(err.to_string().contains("holds a data shard"), "{err}");
    let err = ShardStore::open(open("meta"), None).err().unwrap();
    assert!(
        err.to_string().contains("holds the metadata store"),
        "{err}"
    );
}

/// Retention's dictionary rules in a sharded cluster. The metadata store
/// records each person's last week and forgets those whose last week lies
/// wholly before the cut-off (not a registered one); a person shard
/// forgets a person whose every hour it removed, and learns them again
/// from the next part naming them, under the newer id if the metadata
/// store gave a new one (a part proposed before the forgetting, naming
/// the older id, changes nothing). Both survive a reopen.
#[test]
fn sharded_retention_forgets_by_week_and_by_hour() {
    use hourcell_storage::shard::{week_of_hour, week_start_hour};
    let dir = tempfile::tempdir().unwrap();
    let open =
        |sub: &str| RocksEngine::open(&dir.path().join(sub), &RocksConfig::default()).unwrap();
    let (old_h, new_h) = (480_000i64, 480_000 + 24 * 14);
    let expire = |cut: i64| Command::Expire {
        cutoff_hour: cut,
        audit: audit_entry(2),
    };
    let cut = week_start_hour(week_of_hour(old_h) + 1);
    {
        let meta = MetaStore::open(open("meta"), None).unwrap();
        meta.apply(&Command::PutRegistrations(vec![RegistrationRecord {
            person: 3,
            address: "H1".into(),
            kind: RegistrationKind::Permanent,
            valid_from: 0,
            valid_until: None,
        }]))
        .unwrap();
        meta.apply(&Command::AssignIdsSeen {
            persons: vec![(1, week_of_hour(old_h)), (2, week_of_hour(old_h)), (3, 0)],
            sources: vec!["utility".into()],
        })
        .unwrap();
        // Person 2 is seen again later; a stale, older week changes nothing.
        for w in [week_of_hour(new_h), week_of_hour(old_h)] {
            meta.apply(&Command::AssignIdsSeen {
                persons: vec![(2, w)],
                sources: vec![],
            })
            .unwrap();
        }
        // Ids 0, 1, 2: persons 1, 2, 3.
        assert_eq!(meta.last_seen_week(0), Some(week_of_hour(old_h)));
        assert_eq!(meta.last_seen_week(1), Some(week_of_hour(new_h)));
        // A cut-off an hour short of the week's end forgets nobody.
        meta.apply(&expire(cut - 1)).unwrap();
        assert!(meta.internal_id(1).is_some());
        meta.apply(&expire(cut)).unwrap();
        assert_eq!(meta.internal_id(1), None, "last seen before the cut-off");
        assert_eq!(meta.internal_id(2), Some(1), "seen since");
        assert_eq!(meta.internal_id(3), Some(2), "registered");
        // Seen again: a new id, never the old one.
        meta.apply(&Command::AssignIdsSeen {
            persons: vec![(1, week_of_hour(new_h))],
            sources: vec![],
        })
        .unwrap();
        assert_eq!(meta.internal_id(1), Some(3));
    }
    let meta = MetaStore::open(open("meta"), None).unwrap();
    assert_eq!(meta.internal_id(1), Some(3));
    assert_eq!(meta.last_seen_week(3), Some(week_of_hour(new_h)));
    assert_eq!(meta.last_seen_week(0), None);

    let part = |person: u64, id: u32, hour: i64| {
        Command::IngestShard(ShardIngest {
            part: ShardPart::Persons,
            persons: vec![(person, id)],
            sources: vec![(0, "utility".into())],
            addresses: vec![],
            events: vec![],
            cell_events: vec![],
            person_events: vec![(id, hour, 0, 0, 0)],
        })
    };
    {
        let shard = ShardStore::open(open("shard"), None).unwrap();
        shard.apply(&part(1, 0, old_h)).unwrap();
        shard.apply(&part(2, 1, old_h)).unwrap();
        shard.apply(&part(2, 1, new_h)).unwrap();
        shard.apply(&expire(old_h + 1)).unwrap();
        assert_eq!(shard.internal_id(1), None, "every hour removed");
        assert_eq!(shard.internal_id(2), Some(1), "a later hour stays");
        // A part proposed before the shard forgot person 1 names them
        // again: learnt again.
        shard.apply(&part(1, 0, new_h)).unwrap();
        assert_eq!(shard.internal_id(1), Some(0));
        // The metadata group gave person 1 a new id: the newer one wins,
        // and a late part with the older id does not take it back.
        shard.apply(&part(1, 3, new_h + 1)).unwrap();
        shard.apply(&part(1, 0, new_h + 2)).unwrap();
        assert_eq!(shard.internal_id(1), Some(3));
        assert_eq!(shard.external_id(0), None);
    }
    let shard = ShardStore::open(open("shard"), None).unwrap();
    assert_eq!(shard.internal_id(1), Some(3));
    assert_eq!(shard.external_id(0), None);
    assert_eq!(shard.internal_id(2), Some(1));
}
