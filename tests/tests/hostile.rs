//! Hostile input never crashes a node: the decoders and the request
//! validation take arbitrary bytes and values and answer with an error,
//! never a panic. (Property tests over the public message types; seeded by
//! proptest, bounded in cases.)

use hourcell_proto::{internal, v1};
use hourcell_query::validate::{place_events, EventTime, RawEvent};
use hourcell_raft::transport::Envelope;
use hourcell_server::auth::verify_token;
use hourcell_server::convert::{audit_from_proto, region_from_proto};
use hourcell_storage::{codec, Command, MemEngine, MetaStore};
use proptest::prelude::*;
use prost::Message as _;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn stored_and_replicated_bytes_decode_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Command::decode(&b);
        let _ = Envelope::decode(&b);
        let _ = codec::decode_bitmap(b"k", &b);
        let _ = codec::decode_day_set(b"k", &b);
        let _ = codec::decode_places(b"k", &b);
        let _ = hourcell_storage::audit::decode_record(&b);
        let _ = codec::merge_values(&[0x10, 0, 0, 0, 0], Some(&b), [&b[..]]);
    }

    #[test]
    fn protobuf_requests_decode_or_fail_cleanly(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = v1::IngestRequest::decode(&b[..]);
        let _ = v1::WhoWasAtRequest::decode(&b[..]);
        let _ = internal::RaftBatch::decode(&b[..]);
        let _ = internal::SnapshotChunk::decode(&b[..]);
        if let Ok(r) = v1::AuditRecord::decode(&b[..]) {
            let _ = audit_from_proto(&r);
        }
        if let Ok(r) = v1::Region::decode(&b[..]) {
            let _ = region_from_proto(Some(r), "region");
        }
    }

    #[test]
    fn node_to_node_and_operator_input_decodes_or_fails_cleanly(
        b in proptest::collection::vec(any::<u8>(), 0..300),
        text in "[0-9a-fA-F:xz ]{0,80}",
    ) {
        // Routed shard reads, node introductions, routed commands.
        let _ = hourcell_node::shard_read::decode::<hourcell_node::shard_read::ReadOp>(&b);
        let _ = internal::HelloRequest::decode(&b[..]);
        let _ = internal::ShardProposeRequest::decode(&b[..]);
        let _ = internal::ShardReadRequest::decode(&b[..]);
        // Audit checkpoints typed by an operator.
        let _ = text.parse::<hourcell_storage::audit::Checkpoint>();
        let _ = String::from_utf8_lossy(&b).parse::<hourcell_storage::audit::Checkpoint>();
    }

    #[test]
    fn tokens_of_any_shape_are_refused_without_panicking(t in "[A-Za-z0-9_.=+/-]{0,200}") {
        prop_assert!(verify_token(b"0123456789abcdef0123456789abcdef", &t, 0).is_err());
    }

    #[test]
    fn regions_with_any_numbers_validate_or_fail_cleanly(
        lat in any::<f64>(), lng in any::<f64>(), r in any::<f64>(),
        a in any::<f64>(), b in any::<f64>(),
        cells in proptest::collection::vec("[0-9a-fx]{0,20}", 0..5),
    ) {
        for kind in [
            v1::region::Kind::Circle(v1::Circle { lat, lng, radius_m: r }),
            v1::region::Kind::Rect(v1::Rect { lat_lo: lat, lng_lo: lng, lat_hi: a, lng_hi: b }),
            v1::region::Kind::Cells(v1::CellList { tokens: cells.clone() }),
        ] {
            let _ = region_from_proto(Some(v1::Region { kind: Some(kind) }), "region");
        }
    }

    #[test]
    fn queries_over_any_valid_region_answer_or_fail_cleanly(
        lat in -90.0f64..=90.0, lng in -180.0f64..=180.0, r in 0.0f64..2.0e7,
        lat2 in -90.0f64..=90.0, lng2 in -180.0f64..=180.0,
        from in -1_000_000i64..1_000_000, span in 0i64..12_000,
    ) {
        let store = std::sync::Arc::new(MetaStore::open(MemEngine::new(), None).unwrap());
        let q = hourcell_query::QueryEngine::new(store);
        for kind in [
            v1::region::Kind::Circle(v1::Circle { lat, lng, radius_m: r }),
            v1::region::Kind::Rect(v1::Rect { lat_lo: lat, lng_lo: lng, lat_hi: lat2, lng_hi: lng2 }),
        ] {
            if let Ok(region) = region_from_proto(Some(v1::Region { kind: Some(kind) }), "region") {
                let (from, to) = (from * 3600, (from + span) * 3600);
                let _ = q.who_was_at(&region, from, to, to);
                let _ = q.occupancy(&region, from, to, to);
            }
        }
    }

    #[test]
    fn events_with_any_values_are_placed_or_rejected(
        person in any::<u64>(), t in any::<i64>(), lat in any::<f64>(), lng in any::<f64>(),
        text in ".{0,40}", addr in ".{0,20}", source in ".{0,80}",
    ) {
        let store = MetaStore::open(MemEngine::new(), None).unwrap();
        let raw = vec![
            RawEvent { person, time: EventTime::Unix(t), lat: Some(lat), lng: Some(lng), address: Some(addr.clone()), source: source.clone() },
            RawEvent { person, time: EventTime::Text(text), lat: None, lng: None, address: Some(addr), source },
        ];
        let (ok, bad) = place_events(&store, &raw, 1_800_000_000);
        prop_assert_eq!(ok.len() + bad.len(), 2);
    }
}
