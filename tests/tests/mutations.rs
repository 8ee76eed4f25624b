//! Structure-aware fuzzing of every decoder that takes bytes from the
//! network or the disk, as property tests bounded in cases (CI runs them
//! on every change; no nightly toolchain is needed).
//!
//! Random bytes rarely get past a decoder's first length prefix, so each
//! decoder starts from a committed corpus of valid encodings
//! (`tests/corpus/<decoder>/*.bin`) and decodes them after random edits:
//! bits flipped, bytes set, inserted and deleted, the tail cut. Every
//! mutant must decode or fail with an error, never panic. The seeds must
//! still decode as they are: a seed that stops decoding means the stored
//! or wire format changed (then bump the storage format, and regenerate
//! the corpus with `HOURCELL_WRITE_CORPUS=1`).
//!
//! The snapshot decoder is the store itself: a replica installs another
//! node's image key by key and then loads it, so its mutants are images
//! with edited keys and values, installed and then read.

use std::path::PathBuf;

use hourcell_node::shard_read::{self, ReadOp};
use hourcell_proto::{internal, v1};
use hourcell_raft::transport::Envelope;
use hourcell_storage::audit::{decode_record, encode_record, AuditRecord};
use hourcell_storage::catalog::{AddressKind, RegistrationKind};
use hourcell_storage::{
    codec, AddressRecord, AuditEntry, Command, KvEngine, MemEngine, MetaStore, RegistrationRecord,
    ShardIngest, ShardPart, SliceEvent,
};
use proptest::prelude::*;
use prost::Message as _;
use roaring::RoaringBitmap;

/// This crate's directory as cargo gives it to the running test (a test
/// binary reused from a checkout at another path still reads this one's
/// files); the directory it was built in otherwise.
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn corpus_dir() -> PathBuf {
    manifest_dir().join("corpus")
}

/// Every decoder under test: its corpus folder and a function that
/// decodes (and where it is one, converts) bytes, true if they decoded.
const DECODERS: &[(&str, fn(&[u8]) -> bool)] = &[
    ("command", |b| Command::decode(b).is_ok()),
    ("envelope", |b| Envelope::decode(b).is_ok()),
    ("raft_batch", |b| match internal::RaftBatch::decode(b) {
        Ok(batch) => batch.envelopes.iter().all(|e| Envelope::decode(e).is_ok()),
        Err(_) => false,
    }),
    ("day_set", |b| {
        codec::decode_day_set(&[0x10, 0, 0, 0, 1], b).is_ok()
    }),
    ("places", |b| codec::decode_places(&[0x20; 9], b).is_ok()),
    ("bitmap", |b| codec::decode_bitmap(&[0x12; 5], b).is_ok()),
    ("audit_record", |b| decode_record(b).is_ok()),
    ("read_op", |b| shard_read::decode::<ReadOp>(b).is_ok()),
    ("ingest_request", |b| match v1::IngestRequest::decode(b) {
        Ok(r) => {
            let store = MetaStore::open(MemEngine::new(), None).unwrap();
            let raw: Vec<_> = r
                .events
                .into_iter()
                .map(hourcell_server::convert::raw_event)
                .collect();
            let (ok, bad) = hourcell_query::validate::place_events(&store, &raw, 1_800_000_000);
            ok.len() + bad.len() == raw.len()
        }
        Err(_) => false,
    }),
];

fn event(person: u64, hour: i64, address: Option<&str>) -> SliceEvent {
    SliceEvent {
        person,
        hour,
        cell: hourcell_storage::cell::cell_at(30.0 + hour as f64 * 1e-4, 120.0, 16),
        address: address.map(Into::into),
        source: "utility".into(),
    }
}

fn address(code: &str) -> AddressRecord {
    AddressRecord {
        code: code.into(),
        lat: 30.0,
        lng: 120.0,
        kind: AddressKind::Standard,
        area: "A1".into(),
        label: format!("generated {code}"),
        id: 0,
    }
}

fn audit_entry(i: i64) -> AuditEntry {
    AuditEntry {
        time: 1_800_000_000 + i,
        principal: format!("inspector-{i}"),
        roles: "investigator".into(),
        rpc: "Query.WhereWas".into(),
        parameters: format!("{{\"person\":{i}}}"),
        purpose: "generated".into(),
        case_ref: format!("C-{i}"),
        persons_returned: 1,
        outcome: "ok".into(),
    }
}

fn raft_message(group: u64) -> Envelope {
    use hourcell_raft::{Entry, Message, MessageType};
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.from = 1;
    m.to = 2;
    m.term = 3;
    m.index = 41;
    m.log_term = 3;
    m.commit = 40;
    let mut e = Entry::default();
    e.term = 3;
    e.index = 42;
    e.data = Command::Ingest(vec![event(7, 100, Some("H1"))])
        .encode()
        .into();
    m.entries = vec![e].into();
    Envelope { group, msg: m }
}

/// A small store with every kind of table filled, as a snapshot image.
fn store_image() -> Vec<(Vec<u8>, Vec<u8>)> {
    let s = MetaStore::open(MemEngine::new(), None).unwrap();
    s.apply(&Command::PutAddresses(vec![address("H1"), address("H2")]))
        .unwrap();
    s.apply(&Command::PutRegistrations(vec![RegistrationRecord {
        person: 7,
        address: "H1".into(),
        kind: RegistrationKind::Temporary,
        valid_from: 0,
        valid_until: Some(2_000_000_000),
    }]))
    .unwrap();
    let evs = (100..130)
        .flat_map(|h| {
            [
                event(7, h, Some("H1")),
                event(8, h, None),
                event(9, h, Some("H2")),
            ]
        })
        .collect();
    s.apply(&Command::Ingest(evs)).unwrap();
    s.apply(&Command::Audit(vec![audit_entry(1), audit_entry(2)]))
        .unwrap();
    s.flush().unwrap();
    let mut pairs = Vec::new();
    s.engine()
        .scan(&[], &[0xff; 16], &mut |k, v| {
            pairs.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    pairs
}

/// The seeds of each decoder, as committed.
fn generate() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let commands = vec![
        Command::Ingest(vec![event(7, 100, Some("H1")), event(u64::MAX, -3, None)]),
        Command::PutAddresses(vec![address("H1"), address("W9")]),
        Command::PutRegistrations(vec![RegistrationRecord {
            person: 7,
            address: "H1".into(),
            kind: RegistrationKind::Permanent,
            valid_from: 10,
            valid_until: None,
        }]),
        Command::Audit(vec![audit_entry(1)]),
        Command::Expire {
            cutoff_hour: 500,
            audit: audit_entry(2),
        },
        Command::AssignIds {
            persons: vec![7, 8, 9],
            sources: vec!["rental".into()],
        },
        Command::IngestShard(ShardIngest {
            part: ShardPart::Persons,
            persons: vec![(7, 0)],
            sources: vec![(0, "utility".into())],
            addresses: vec![address("H1")],
            events: vec![event(7, 100, Some("H1"))],
            cell_events: vec![(0, 100, 1 << 40, 1)],
            person_events: vec![(0, 100, 12345, 1, 0)],
        }),
        Command::CreatePartitions {
            weeks: vec![(2900, vec![vec![1, 2, 3], vec![2, 3, 4]])],
        },
        Command::DropPartitions { weeks: vec![2899] },
    ];
    let mut audit = AuditRecord::new(1, audit_entry(1), [0; 32]);
    let second = AuditRecord::new(2, audit_entry(2), audit.hash);
    audit.redact();
    let batch = internal::RaftBatch {
        from: 1,
        envelopes: vec![raft_message(0).encode(), raft_message(5).encode()],
    };
    let ingest = v1::IngestRequest {
        events: vec![
            v1::Event {
                person: 7,
                time: Some(v1::event::Time::UnixSeconds(1_700_000_000)),
                lat: Some(30.0),
                lng: Some(120.0),
                address: "H1".into(),
                source: "utility".into(),
            },
            v1::Event {
                person: 8,
                time: Some(v1::event::Time::Rfc3339("2023-11-14T22:13:20Z".into())),
                lat: None,
                lng: None,
                address: "H1".into(),
                source: "rental".into(),
            },
        ],
    };
    let image = store_image();
    let chunk = internal::SnapshotChunk {
        keys: image.iter().map(|p| p.0.clone()).collect(),
        values: image.iter().map(|p| p.1.clone()).collect(),
    };
    vec![
        ("command", commands.iter().map(Command::encode).collect()),
        ("envelope", vec![raft_message(3).encode()]),
        ("raft_batch", vec![batch.encode_to_vec()]),
        (
            "day_set",
            vec![
                codec::encode_day_set(&[(1, 0xff_ffff), (5, 1), (70_000, 1 << 23)]),
                codec::encode_day_set(
                    &(0..300).map(|i| (i * 3, 1 << (i % 24))).collect::<Vec<_>>(),
                ),
            ],
        ),
        (
            "places",
            vec![codec::encode_places(&[
                (0, 1 << 40, 0, 0),
                (1, 1 << 40, 0, 0),
                (5, 99, 3, 2),
                (23, u64::MAX >> 4, u32::MAX, u16::MAX),
            ])],
        ),
        (
            "bitmap",
            vec![
                codec::encode_bitmap(&RoaringBitmap::from_iter([1u32, 2, 3, 100_000])),
                codec::encode_bitmap(&RoaringBitmap::from_iter(0u32..5000)),
            ],
        ),
        (
            "audit_record",
            vec![encode_record(&audit), encode_record(&second)],
        ),
        (
            "read_op",
            vec![
                ReadOp::CellDays {
                    day: 100,
                    lo: 0,
                    hi: u64::MAX,
                }
                .encode(),
                ReadOp::CellDaysIn {
                    day: 100,
                    ranges: vec![(1, 5), (9, 12)],
                }
                .encode(),
                ReadOp::PersonHours {
                    person: 7,
                    from: 0,
                    to: 1000,
                }
                .encode(),
                ReadOp::HourSlicesRev {
                    before: 500,
                    from: 100,
                }
                .encode(),
            ],
        ),
        ("ingest_request", vec![ingest.encode_to_vec()]),
        ("snapshot", vec![chunk.encode_to_vec()]),
    ]
}

fn read_corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = corpus_dir().join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|f| f.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds no seeds", dir.display());
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// Rewrites the corpus from [`generate`] (only when asked).
#[test]
fn corpus_is_written_when_asked() {
    if std::env::var_os("HOURCELL_WRITE_CORPUS").is_none() {
        return;
    }
    for (name, seeds) in generate() {
        let dir = corpus_dir().join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}.bin")), s).unwrap();
        }
    }
}

/// The committed seeds decode as they are: the formats they were written
/// in are still the formats read.
#[test]
fn every_committed_seed_still_decodes() {
    for (name, decode) in DECODERS {
        for (i, seed) in read_corpus(name).iter().enumerate() {
            assert!(decode(seed), "{name} seed {i} no longer decodes");
        }
    }
    for seed in read_corpus("snapshot") {
        let (pairs, loaded) = install(&seed, &[]);
        assert!(loaded, "the snapshot seed no longer installs");
        assert!(pairs > 10);
    }
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Edit::Flip(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Set(p, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Edit::Insert(p, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn mutate(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = b.len();
        match *e {
            Edit::Flip(p, bit) if n > 0 => b[p % n] ^= 1 << bit,
            Edit::Set(p, v) if n > 0 => b[p % n] = v,
            Edit::Insert(p, v) => b.insert(p % (n + 1), v),
            Edit::Delete(p) if n > 0 => {
                b.remove(p % n);
            }
            Edit::Truncate(p) => b.truncate(p % (n + 1)),
            _ => {}
        }
    }
    b
}

/// Installs a snapshot chunk into a fresh store, with `edits` applied to
/// the keys and values they pick, then reads everything back. Returns the
/// pairs installed and whether the image loaded.
fn install(chunk: &[u8], edits: &[(usize, bool, Vec<Edit>)]) -> (usize, bool) {
    let Ok(c) = internal::SnapshotChunk::decode(chunk) else {
        return (0, false);
    };
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = c.keys.into_iter().zip(c.values).collect();
    for (at, key, e) in edits {
        if pairs.is_empty() {
            break;
        }
        let n = pairs.len();
        let p = &mut pairs[at % n];
        if *key {
            p.0 = mutate(std::mem::take(&mut p.0), e);
        } else {
            p.1 = mutate(std::mem::take(&mut p.1), e);
        }
    }
    let n = pairs.len();
    let s = MetaStore::open(MemEngine::new(), None).unwrap();
    s.begin_restore().unwrap();
    if s.restore_chunk(pairs).is_err() || s.finish_restore().is_err() {
        return (n, false);
    }
    // Whatever loaded is read back through every read path.
    let _ = s.stats();
    let _ = s.audit_records(0, 100);
    let _ = s.tasks_after(0, 100, &mut |_| true);
    for day in 0..8 {
        let _ = s.cell_days(day, 0, u64::MAX, &mut |_, _| {});
        let _ = s.address_day(day, 1);
    }
    let _ = s.hour_slices(0, 200, &mut |_, _| {});
    for p in [7, 8, 9] {
        if let Some(id) = s.internal_id(p) {
            let _ = s.person_hours(id, 0, 200);
        }
    }
    (n, true)
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(4096))]

    #[test]
    fn edited_encodings_decode_or_fail_cleanly(
        which in any::<usize>(),
        seed in any::<usize>(),
        edits in proptest::collection::vec(edit(), 1..6),
    ) {
        let (name, decode) = DECODERS[which % DECODERS.len()];
        let seeds = read_corpus(name);
        let b = mutate(seeds[seed % seeds.len()].clone(), &edits);
        let _ = decode(&b);
    }
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn edited_snapshot_images_install_or_fail_cleanly(
        edits in proptest::collection::vec(
            (any::<usize>(), any::<bool>(), proptest::collection::vec(edit(), 1..4)),
            1..4,
        ),
    ) {
        let seed = &read_corpus("snapshot")[0];
        let _ = install(seed, &edits);
    }
}
