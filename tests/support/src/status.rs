//! What `hourcell cluster status` says, for process tests.

use std::process::Command;

/// `hourcell cluster status --format json` through `port`, run from the
/// binary `bin`.
pub fn status_json(bin: &str, port: u16) -> serde_json::Value {
    let out = Command::new(bin)
        .args(["cluster", "status", "--format", "json", "--server"])
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn ids_of(v: &serde_json::Value) -> Vec<u64> {
    let mut ids: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    ids
}

/// Whether every data shard's voters are exactly the nodes the shard map
/// places it on (three, none of `absent`), with no learners and no lag.
pub fn placed_and_settled(v: &serde_json::Value, absent: &[u64], min_shards: usize) -> bool {
    let Some(shards) = v["shards"].as_array() else {
        return false;
    };
    shards.len() >= min_shards
        && shards.iter().all(|sh| {
            let voters = ids_of(&sh["voters"]);
            let replicas = ids_of(&sh["replicas"]);
            voters == replicas
                && voters.len() == 3
                && !voters.iter().any(|n| absent.contains(n))
                && sh["learners"].as_array().unwrap().is_empty()
                && sh["max_lag"] == 0
        })
}

/// Asks `hourcell cluster status` through `port` until
/// [`placed_and_settled`] holds (within 30 s; panics naming `what`
/// otherwise) and returns that status.
pub fn wait_settled(
    bin: &str,
    port: u16,
    absent: &[u64],
    min_shards: usize,
    what: &str,
) -> serde_json::Value {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let v = status_json(bin, port);
        if placed_and_settled(&v, absent, min_shards) {
            return v;
        }
        assert!(
            std::time::Instant::now() < end,
            "{what}: shards never settled: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
