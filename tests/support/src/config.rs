//! Node config files for process tests: plaintext on loopback, every
//! role for requests without credentials, a retention limit generated data
//! of any date stays inside.

use std::path::Path;

/// The cluster secret of every process-test cluster (generated for tests,
/// not a real one).
pub const SECRET: &str = "process-test-cluster-secret-0123456789";

pub fn write_config(dir: &Path, id: usize, ports: &[u16], metrics: u16) -> std::path::PathBuf {
    write_config_tick(dir, id, ports, metrics, 50)
}

pub fn write_config_tick(
    dir: &Path,
    id: usize,
    ports: &[u16],
    metrics: u16,
    tick_ms: u64,
) -> std::path::PathBuf {
    let peers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{{ id = {}, addr = \"127.0.0.1:{p}\" }}", i + 1))
        .collect();
    let cfg = dir.join(format!("node{id}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nlisten = \"127.0.0.1:{}\"\nmetrics_listen = \"127.0.0.1:{metrics}\"\nblock_cache_mb = 16\nlog = \"warn\"\n\n[security]\ninsecure = true\nanonymous_roles = [\"all\"]\nretention_days = 36500\ncluster_secret = \"{SECRET}\"\n\n[rules]\nhourly = false\n\n[cluster]\nnode_id = {id}\ntick_ms = {tick_ms}\npeers = [{}]\n",
            dir.join(format!("node{id}")),
            ports[id - 1],
            peers.join(", ")
        ),
    )
    .unwrap();
    cfg
}

/// Makes a node config sharded: two cell shards and two person shards.
pub fn shard(cfg: &Path) {
    shard_as(cfg, 2, 2)
}

/// Makes a node config sharded with `cells` cell and `persons` person shards.
pub fn shard_as(cfg: &Path, cells: u32, persons: u32) {
    let text = std::fs::read_to_string(cfg).unwrap();
    std::fs::write(
        cfg,
        format!("{text}cell_shards = {cells}\nperson_shards = {persons}\n"),
    )
    .unwrap();
}
