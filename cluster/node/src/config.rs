//! Node configuration: serde defaults, `validate()`, and a checked-in
//! example (`cluster/node.example.toml`) that a test parses.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Where RocksDB keeps this node's data.
    pub data_dir: PathBuf,
    /// gRPC listen address.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where to serve Prometheus `/metrics` over plain HTTP; absent = not
    /// served.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// S2 level of slice cells. Fixed when the data directory is created;
    /// a different value on an existing directory is refused.
    #[serde(default = "default_level")]
    pub slice_level: u8,
    /// RocksDB block cache, MiB.
    #[serde(default = "default_cache")]
    pub block_cache_mb: usize,
    /// RocksDB memtable size, MiB.
    #[serde(default = "default_write_buffer")]
    pub write_buffer_mb: usize,
    /// Most events accepted in one ingest request.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Events whose slices each store gathers in memory before writing
    /// them to RocksDB together (about 90 bytes each; a sharded node splits
    /// this over a week's cell shards and over its person shards). Ingest is acknowledged
    /// once the raft log holds it, and a restart replays what was not yet
    /// written; reads write what is held first. 0 writes every batch at
    /// once (about 2.5 RocksDB merges per event instead of a fraction).
    #[serde(default = "default_hold_events")]
    pub hold_events: usize,
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "hourcell=debug".
    #[serde(default = "default_log")]
    pub log: String,
    /// "text" (the default) or "json": one JSON object per line, for log
    /// shippers.
    #[serde(default)]
    pub log_format: LogFormat,
    /// The rule layer (field-staff tasks).
    #[serde(default)]
    pub rules: RulesConfig,
    /// Replication. Absent: a single node that applies writes directly.
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Authentication, authorisation, suppression and retention.
    #[serde(default)]
    pub security: SecurityConfig,
}

/// `[security]`: see `docs/SECURITY.md`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Serve plaintext gRPC. `hourcell node` refuses to start without TLS
    /// unless this is set, and then logs a warning.
    pub insecure: bool,
    /// Roles of requests that carry no credentials. Only honoured when
    /// `insecure` is set (`hourcell dev` gives the local user `["all"]`);
    /// empty by default: deny.
    pub anonymous_roles: Vec<String>,
    /// HMAC-SHA256 key for bearer tokens (at least 32 bytes);
    /// `hourcell token issue` signs with the same file.
    pub token_key_file: Option<PathBuf>,
    /// Aggregate counts below this are returned as suppressed to callers
    /// without the investigator role.
    pub suppress_below: u64,
    /// Hours older than this many days are removed (hourly, through the
    /// log, on every replica) and refused at ingest.
    pub retention_days: u32,
    /// Requests per second each principal may make (bursts of twice
    /// that); more get RESOURCE_EXHAUSTED. 0: no limit.
    pub requests_per_sec: u32,
    /// TLS on the client API and between nodes (mutual between nodes).
    /// `hourcell certs init DIR` makes files to try it with.
    pub tls: Option<TlsPaths>,
    /// Roles of client certificates, by subject common name, e.g.
    /// `admin = ["all"]`. A certificate named `node-<id>` is a cluster
    /// node: it may send raft traffic and manage membership.
    pub cert_roles: std::collections::BTreeMap<String, Vec<String>>,
    /// The secret nodes of a cluster without TLS show each other on the
    /// internal Raft and Shard services (at least 32 characters, the same
    /// on every node; `hourcell dev --nodes` generates one). Required for
    /// a `[cluster]` without `[security.tls]`, whose nodes have no
    /// certificates to show; internal services never answer anonymously.
    pub cluster_secret: Option<Secret>,
    /// `hourcell node` refuses `insecure = true` on a non-loopback listen
    /// address, or together with a token key (bearer tokens would travel
    /// in clear), unless this is set; it then warns on every start.
    pub allow_insecure_network: bool,
    /// Open client and peer connections at most; more are closed as they
    /// arrive, before a byte is read.
    pub max_connections: u32,
}

/// A secret from the config: compared in constant time, never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Whether `other` is this secret, in time independent of where they
    /// differ (subtle's constant-time comparison).
    pub fn matches(&self, other: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(other).into()
    }

    /// A new random secret (64 hex digits).
    pub fn generate() -> Secret {
        use rand::RngCore;
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        Secret(b.iter().map(|x| format!("{x:02x}")).collect())
    }
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            insecure: false,
            anonymous_roles: Vec::new(),
            token_key_file: None,
            suppress_below: 5,
            retention_days: 90,
            requests_per_sec: 1_000,
            tls: None,
            cert_roles: Default::default(),
            cluster_secret: None,
            allow_insecure_network: false,
            max_connections: 4_096,
        }
    }
}

impl SecurityConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::roles::Role::parse_list(&self.anonymous_roles).map_err(|e| {
            ConfigError::invalid(
                "security.anonymous_roles",
                format!("security.anonymous_roles: {e}"),
            )
        })?;
        if !self.anonymous_roles.is_empty() && !self.insecure {
            return Err(ConfigError::invalid(
                "security.anonymous_roles",
                "security.anonymous_roles is only allowed with insecure = true (a TLS node \
                 authenticates every request)",
            ));
        }
        if self.insecure && self.tls.is_some() {
            return Err(ConfigError::invalid(
                "security",
                "security: set either insecure = true or [security.tls], not both",
            ));
        }
        for (cn, roles) in &self.cert_roles {
            crate::roles::Role::parse_list(roles).map_err(|e| {
                ConfigError::invalid(
                    "security.cert_roles",
                    format!("security.cert_roles.{cn}: {e}"),
                )
            })?;
        }
        if self.retention_days == 0 {
            return Err(ConfigError::invalid(
                "security.retention_days",
                "security.retention_days must be at least 1",
            ));
        }
        Ok(())
    }
}

/// `[security.tls]`: a node's certificate, key and the CA that signs its peers and clients.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// PEM certificate chain of this node.
    pub cert: PathBuf,
    /// PEM private key of this node.
    pub key: PathBuf,
    /// PEM CA certificate(s) that client and peer certificates must chain
    /// to, and that peers' server certificates are checked against.
    pub ca: PathBuf,
}

/// `[cluster]`: this node's id and every voter of the data group (this node
/// included). All nodes of a new cluster must list the same peers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub node_id: u64,
    pub peers: Vec<PeerConfig>,
    /// Raft tick, milliseconds; elections time out after 10 ticks (1–2 s
    /// at the default 100 ms).
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Whether a raft leader answers linearizable reads from its lease
    /// (true, the default) instead of a heartbeat round to a quorum per
    /// read. Safe while the nodes' monotonic clocks run at rates within a
    /// few percent of each other and no host is suspended (a suspended
    /// host's monotonic clock stops); turn it off where hosts may be
    /// suspended (see docs/ARCHITECTURE.md, "Reads").
    #[serde(default = "default_read_lease")]
    pub read_lease: bool,
    /// Join a running cluster instead of starting a new one: the node
    /// starts empty, asks the peers to add it (replacing its old
    /// membership if it had one) and catches up from a snapshot. For a new
    /// node, or one whose data directory was lost. `hourcell node --join`
    /// sets it.
    #[serde(default)]
    pub join: bool,
    /// Sharding, fixed when the cluster is created: the number of cell
    /// shards (cell and address slices, placed by ~300 m block of cells)
    /// and person shards (the person index and hour slices, placed by
    /// person). Each is a raft group of its own, beside the metadata group
    /// that holds the dictionaries, addresses, registry, tasks and audit
    /// log. 0 and 0 (the default): one group holds everything.
    #[serde(default)]
    pub cell_shards: u32,
    #[serde(default)]
    pub person_shards: u32,
    /// Sharded clusters: replicas per shard (each shard's raft group has
    /// this many voters, on different nodes; the metadata group is on
    /// every node). The same on every node; 3 by default.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Sharded clusters: a cell shard splits on its own once its leader has applied more than this many
    /// events an hour, measured over 30 s (0: never on its write rate; the
    /// default, 36M, is about 10,000 a second). A node splits at most one
    /// shard on its own every 30 s.
    #[serde(default = "default_split_events_per_hour")]
    pub split_events_per_hour: u64,
    /// Sharded clusters: a cell shard splits on its own once it has grown by more than this many bytes
    /// on disk since it was created or last split (0: never on its size).
    /// A split leaves what a shard holds in place and sends later writes
    /// of half its cells to the new shard, so growth, not size, is what
    /// a split relieves.
    #[serde(default = "default_split_grown_bytes")]
    pub split_grown_bytes: u64,
}

fn default_replicas() -> u32 {
    3
}

/// Node 1 alone, unsharded, with the defaults a config file gets.
impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            peers: Vec::new(),
            tick_ms: default_tick_ms(),
            read_lease: default_read_lease(),
            join: false,
            cell_shards: 0,
            person_shards: 0,
            replicas: default_replicas(),
            split_events_per_hour: default_split_events_per_hour(),
            split_grown_bytes: default_split_grown_bytes(),
        }
    }
}

fn default_split_events_per_hour() -> u64 {
    36_000_000
}

fn default_split_grown_bytes() -> u64 {
    8 << 30
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    /// The peer's gRPC address (`host:port`), the same one clients use.
    pub addr: String,
}

fn default_tick_ms() -> u64 {
    100
}

fn default_read_lease() -> bool {
    true
}

impl ClusterConfig {
    /// The shard layout, or `None` for an unsharded cluster.
    pub fn layout(
        &self,
    ) -> Result<Option<hourcell_storage::shard::Layout>, hourcell_storage::StorageError> {
        if self.cell_shards == 0 && self.person_shards == 0 {
            return Ok(None);
        }
        hourcell_storage::shard::Layout::new(self.cell_shards, self.person_shards).map(Some)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(ConfigError::invalid(
                "cluster.node_id",
                "cluster.node_id must be non-zero",
            ));
        }
        if (self.cell_shards == 0) != (self.person_shards == 0) {
            return Err(ConfigError::invalid(
                "cluster.cell_shards",
                "cluster.cell_shards and cluster.person_shards: set both (sharded) or neither",
            ));
        }
        if let Err(e) = self.layout() {
            return Err(ConfigError::invalid("cluster", format!("cluster: {e}")));
        }
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.peers.len() || ids.contains(&0) {
            return Err(ConfigError::invalid(
                "cluster.peers",
                "cluster.peers: ids must be unique and non-zero",
            ));
        }
        if !ids.contains(&self.node_id) {
            return Err(ConfigError::invalid(
                "cluster.peers",
                format!(
                    "cluster.peers does not list this node (node_id {})",
                    self.node_id
                ),
            ));
        }
        if !(1..=7).contains(&self.replicas) {
            return Err(ConfigError::invalid(
                "cluster.replicas",
                format!(
                    "cluster.replicas {} is outside 1..=7 (3 survives one node's loss, 5 two)",
                    self.replicas
                ),
            ));
        }
        if !(10..=10_000).contains(&self.tick_ms) {
            return Err(ConfigError::invalid(
                "cluster.tick_ms",
                format!("cluster.tick_ms {} is outside 10..=10000", self.tick_ms),
            ));
        }
        Ok(())
    }
}

/// `[rules]`: see `docs/rules.md`. Defaults are the product's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Evaluate the rules on their own every hour (a few minutes after the
    /// hour), as well as on demand (`hourcell tasks run`).
    pub hourly: bool,
    /// Local time zone as whole hours from UTC (nights are 20:00–06:00
    /// local).
    pub utc_offset_hours: i32,
    /// Credibility weight per source label; labels not listed get
    /// `unknown_weight`.
    pub weights: std::collections::BTreeMap<String, f64>,
    pub unknown_weight: f64,
    /// Should-register score at or above which a task is raised.
    pub threshold: f64,
    /// Nights counted for should-register.
    pub nights: u32,
    /// Verify-departure: temporary registrations ending within this many
    /// days...
    pub departure_days: i64,
    /// ...with no event inside the jurisdiction for this many hours.
    pub inactivity_hours: i64,
    /// The jurisdiction as area codes; empty = everywhere.
    pub jurisdiction_areas: Vec<String>,
    /// A rejected task is not raised again for the same person, address
    /// and kind for this many days.
    pub suppress_days: i64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        let d = hourcell_query::RuleConfig::default();
        Self {
            hourly: true,
            utc_offset_hours: d.utc_offset_hours,
            weights: d.weights,
            unknown_weight: d.unknown_weight,
            threshold: d.threshold,
            nights: d.nights,
            departure_days: d.departure_days,
            inactivity_hours: d.inactivity_hours,
            jurisdiction_areas: Vec::new(),
            suppress_days: d.suppress_days,
        }
    }
}

impl RulesConfig {
    pub fn to_rule_config(&self) -> hourcell_query::RuleConfig {
        hourcell_query::RuleConfig {
            utc_offset_hours: self.utc_offset_hours,
            weights: self.weights.clone(),
            unknown_weight: self.unknown_weight,
            threshold: self.threshold,
            nights: self.nights,
            departure_days: self.departure_days,
            inactivity_hours: self.inactivity_hours,
            jurisdiction: (!self.jurisdiction_areas.is_empty()).then(|| {
                self.jurisdiction_areas
                    .iter()
                    .map(|a| hourcell_query::Region::Area(a.clone()))
                    .collect()
            }),
            suppress_days: self.suppress_days,
        }
    }
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:7420".parse().unwrap()
}
fn default_level() -> u8 {
    hourcell_storage::DEFAULT_SLICE_LEVEL
}
fn default_cache() -> usize {
    512
}
fn default_write_buffer() -> usize {
    64
}
fn default_max_batch() -> usize {
    100_000
}
fn default_hold_events() -> usize {
    hourcell_storage::store::DEFAULT_DEFER_EVENTS
}
/// How the node writes its log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_log() -> String {
    "info".into()
}

impl NodeConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            listen: default_listen(),
            metrics_listen: None,
            slice_level: default_level(),
            block_cache_mb: default_cache(),
            write_buffer_mb: default_write_buffer(),
            max_batch: default_max_batch(),
            hold_events: default_hold_events(),
            log: default_log(),
            log_format: LogFormat::Text,
            rules: RulesConfig::default(),
            cluster: None,
            security: SecurityConfig::default(),
        }
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: NodeConfig = toml::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("data_dir", "data_dir is empty"));
        }
        if !(1..=30).contains(&self.slice_level) {
            return Err(ConfigError::invalid(
                "slice_level",
                format!("slice_level {} is outside 1..=30", self.slice_level),
            ));
        }
        if self.block_cache_mb < 8 {
            return Err(ConfigError::invalid(
                "block_cache_mb",
                format!("block_cache_mb {} is below 8", self.block_cache_mb),
            ));
        }
        if !(4..=4096).contains(&self.write_buffer_mb) {
            return Err(ConfigError::invalid(
                "write_buffer_mb",
                format!(
                    "write_buffer_mb {} is outside 4..=4096",
                    self.write_buffer_mb
                ),
            ));
        }
        if !(1..=1_000_000).contains(&self.max_batch) {
            return Err(ConfigError::invalid(
                "max_batch",
                format!("max_batch {} is outside 1..=1000000", self.max_batch),
            ));
        }
        if self.hold_events > 16 << 20 {
            return Err(ConfigError::invalid(
                "hold_events",
                format!(
                    "hold_events {} is above {} (about 1.5 GiB per store)",
                    self.hold_events,
                    16 << 20
                ),
            ));
        }
        if let Some(c) = &self.cluster {
            c.validate()?;
            if self.security.tls.is_none() {
                match &self.security.cluster_secret {
                    Some(s) if s.0.len() >= 32 => {}
                    Some(_) => {
                        return Err(ConfigError::invalid(
                            "security.cluster_secret",
                            "security.cluster_secret must be at least 32 characters",
                        ))
                    }
                    None => {
                        return Err(ConfigError::invalid(
                            "security.cluster_secret",
                            "a [cluster] without [security.tls] needs security.cluster_secret (at \
                             least 32 characters, the same on every node): its nodes have no \
                             certificates, and the internal Raft and Shard services never answer \
                             anonymously",
                        ))
                    }
                }
            }
        }
        self.security.validate()?;
        self.rules
            .to_rule_config()
            .validate()
            .map_err(|e| ConfigError::invalid("rules", format!("rules: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../node.example.toml");
        let cfg = NodeConfig::from_toml(text).unwrap();
        assert_eq!(cfg.slice_level, 16);
        assert_eq!(cfg.listen.port(), 7420);
        assert_eq!(cfg.rules, RulesConfig::default());
    }

    #[test]
    fn cluster_section_parses_and_is_checked() {
        let ok = "data_dir = \"d\"\n[security]\ncluster_secret = \"0123456789abcdef0123456789abcdef\"\n[cluster]\nnode_id = 2\npeers = [{ id = 1, addr = \"a:1\" }, { id = 2, addr = \"b:1\" }, { id = 3, addr = \"c:1\" }]\n";
        let cfg = NodeConfig::from_toml(ok).unwrap();
        assert!(
            !format!("{cfg:?}").contains("0123456789abcdef"),
            "secrets are not printed"
        );
        // Without TLS or a cluster secret, the internal services would have
        // no way to tell a node from anyone else.
        let anonymous = ok.replace(
            "cluster_secret = \"0123456789abcdef0123456789abcdef\"\n",
            "",
        );
        let e = NodeConfig::from_toml(&anonymous).unwrap_err().to_string();
        assert!(e.contains("cluster_secret"), "{e}");
        let short = ok.replace("0123456789abcdef0123456789abcdef", "short");
        let e = NodeConfig::from_toml(&short).unwrap_err().to_string();
        assert!(e.contains("at least 32"), "{e}");
        let c = cfg.cluster.unwrap();
        assert_eq!((c.node_id, c.peers.len(), c.tick_ms), (2, 3, 100));
        let missing = ok.replace("node_id = 2", "node_id = 4");
        let e = NodeConfig::from_toml(&missing).unwrap_err().to_string();
        assert!(e.contains("does not list this node"), "{e}");
        let dup = ok.replace("id = 3", "id = 2");
        let e = NodeConfig::from_toml(&dup).unwrap_err().to_string();
        assert!(e.contains("unique"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        let e = NodeConfig::from_toml("data_dir = \"d\"\nslice_level = 40\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("slice_level 40"), "{e}");
        let e = NodeConfig::from_toml("data_dir = \"d\"\nlisten_addr = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_addr"), "{e}");
        let e = NodeConfig::from_toml("data_dir = \"d\"\n[rules]\nthreshold = 0.8005\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("threshold"), "{e}");
    }
}
