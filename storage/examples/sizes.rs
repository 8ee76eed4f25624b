//! Prints, per key prefix, how many keys a data directory holds and their
//! logical key and value bytes: `cargo run --release -p hourcell-storage
//! --example sizes -- DATA_DIR/db`. Stop the node first.

use hourcell_storage::{keys, KvEngine, RocksConfig, RocksEngine};

fn main() {
    let path = std::env::args().nth(1).expect("usage: sizes DB_DIR");
    let e = RocksEngine::open(std::path::Path::new(&path), &RocksConfig::default()).unwrap();
    let names = [
        (keys::META, "meta"),
        (keys::DICT_EXT, "dict ext->int"),
        (keys::DICT_INT, "dict int->ext"),
        (keys::ADDRESS, "addresses"),
        (keys::REGISTRATION, "registrations"),
        (keys::SOURCE, "sources"),
        (keys::CELL_DAY, "cell-day slices"),
        (keys::ADDRESS_DAY, "address-day slices"),
        (keys::HOUR_SLICE, "hour slices"),
        (keys::PERSON, "person index"),
    ];
    println!(
        "{:<16} {:>10} {:>12} {:>12}",
        "prefix", "keys", "key bytes", "value bytes"
    );
    for (p, name) in names {
        let (mut n, mut kb, mut vb) = (0u64, 0u64, 0u64);
        e.scan(&[p], &keys::prefix_end(&[p]), &mut |k, v| {
            n += 1;
            kb += k.len() as u64;
            vb += v.len() as u64;
            true
        })
        .unwrap();
        println!("{name:<16} {n:>10} {kb:>12} {vb:>12}");
    }
    println!("disk bytes (live SST + memtables): {}", e.disk_bytes());
}
