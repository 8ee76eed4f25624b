//! Command-line definitions for the `hourcell` binary. Parsing only: every
//! subcommand hands its arguments to a library function.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::bench_args::BenchArgs;
pub use crate::defaults::DEFAULT_SERVER;

#[derive(Debug, Parser)]
#[command(
    name = "hourcell",
    version,
    about = "hourcell: hour-by-hour population slices (who was where) on S2 cells and addresses",
    long_about = "hourcell keeps, for every S2 cell and hour and for every address and hour, \
the set of pseudonymous persons seen there, plus a per-person index of where each person was. \
It answers who-was-at, where-was, occupancy and no-activity-since over gRPC.\n\n\
Start with `hourcell dev`: it starts a node on 127.0.0.1:7420 with a generated demo town \
and prints queries to try."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub credentials: Credentials,
}

/// How client commands authenticate. Each flag may come from its
/// environment variable instead (shown in --help), so that scripts set
/// them once.
#[derive(Debug, Args, Default)]
pub struct Credentials {
    /// A bearer token (see `hourcell token issue`).
    #[arg(long, global = true, env = "HOURCELL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long, global = true, env = "HOURCELL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the server's; enables TLS.
    #[arg(long, global = true, env = "HOURCELL_CA")]
    pub ca: Option<PathBuf>,
    /// This client's certificate (PEM), for mutual TLS.
    #[arg(long, global = true, env = "HOURCELL_CERT")]
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM), for mutual TLS.
    #[arg(long, global = true, env = "HOURCELL_KEY")]
    pub key: Option<PathBuf>,
}

impl Credentials {
    /// Hands the flags to the client channel, which reads them from the
    /// environment (where each flag may already have come from). Called
    /// once in `main`, before any thread starts.
    pub fn export(&self) {
        let set = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                std::env::set_var(name, v);
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        set("HOURCELL_TOKEN", self.token.clone());
        set("HOURCELL_TOKEN_FILE", path(&self.token_file));
        set("HOURCELL_CA", path(&self.ca));
        set("HOURCELL_CERT", path(&self.cert));
        set("HOURCELL_KEY", path(&self.key));
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a single node for trying hourcell out: on an empty data
    /// directory it generates and loads a demo town, then prints queries to
    /// try. Runs until Ctrl-C.
    Dev(DevArgs),
    /// Start a production node from a config file (see
    /// cluster/node.example.toml).
    Node(NodeArgs),
    /// Generate a deterministic synthetic town as CSV files.
    Gen(GenArgs),
    /// Import addresses, registrations or events from CSV, gzip'd CSV or
    /// Parquet into a node (role: ingest).
    Import(ImportArgs),
    /// Run a query against a node: `hourcell query KIND --help` lists each
    /// kind's flags. occupancy and grid: analyst or investigator (analysts
    /// see counts below 5 suppressed); who-was-at, where-was,
    /// no-activity-since: investigator, with --purpose and --case, audited.
    Query(QueryArgs),
    /// Show a node's status (role: operator).
    Status(ServerFormatArgs),
    /// The replicated cluster: nodes, the raft leader, replica health and
    /// lag; add and remove nodes (role: operator).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Field-staff tasks from the rule layer: run the rules, list, show,
    /// start, resolve and watch tasks (role: fieldwork; run also operator).
    #[command(subcommand)]
    Tasks(TasksCommand),
    /// Load generated data into a node over gRPC and measure ingest and
    /// query latency (p50/p99/max) (roles: ingest, investigator, operator).
    Bench(BenchArgs),
    /// The tamper-evident audit log (auditor role): list the records, or
    /// verify the hash chain and name the first bad record.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Bearer tokens: make a signing key, or issue a token for a subject
    /// and roles. Clients send one from HOURCELL_TOKEN or
    /// HOURCELL_TOKEN_FILE (local; needs the key file, no role).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The retention limit (`[security] retention_days`): the leader
    /// applies it every hour; `apply` does it now (operator role).
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Backups (operator role): `create` streams a consistent image of the
    /// cluster into a new directory (every person's data: needs --purpose
    /// and --case, and is audited); `verify` checks one; `restore` seeds a
    /// new node's data directory from one.
    #[command(subcommand)]
    Backup(BackupCommand),
    /// Print a shell completion script: `hourcell completions bash >
    /// /etc/bash_completion.d/hourcell` (also zsh, fish, elvish,
    /// powershell).
    Completions(CompletionsArgs),
    /// Write man pages for hourcell and every subcommand (hourcell.1,
    /// hourcell-query.1, ...) into a directory.
    Man(ManArgs),
    /// TLS certificates for trying hourcell out and for tests (local, no
    /// role). Clients use HOURCELL_CA, HOURCELL_CERT and HOURCELL_KEY.
    #[command(subcommand)]
    Certs(CertsCommand),
}

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make a local CA (ca.pem, ca.key), node certificates node-1..N for
    /// the given hosts, an `admin` client certificate and a token key in
    /// DIR, and print the config to use them. Refuses to overwrite files.
    Init(CertsInitArgs),
}

#[derive(Debug, Args)]
pub struct CertsInitArgs {
    pub dir: PathBuf,
    /// Node certificates to make.
    #[arg(long, default_value_t = 3)]
    pub nodes: u32,
    /// Host names and IP addresses the nodes are reached at,
    /// comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,localhost")]
    pub hosts: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Every audit record: who asked what, why, for which case, how many
    /// persons were returned.
    List(AuditListArgs),
    /// Re-computes the hash chain over every record; fails naming the
    /// first edited, deleted or reordered record, and, with --expect,
    /// when the log no longer reaches a checkpoint or differs there
    /// (truncated, or rewritten and rehashed).
    Verify(AuditVerifyArgs),
    /// Verifies the log and prints its head as SEQ:HASH. Keep it outside
    /// the cluster (a ticket, a notebook, another system) and pass it to
    /// `audit verify --expect` later.
    Checkpoint(ServerFormatArgs),
}

#[derive(Debug, Args)]
pub struct AuditVerifyArgs {
    /// A checkpoint printed by `hourcell audit checkpoint` (SEQ:HASH);
    /// repeat for several.
    #[arg(long = "expect")]
    pub expect: Vec<String>,
    /// text (table) or json.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

#[derive(Debug, Args)]
pub struct AuditListArgs {
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Show each record's parameters too. They name persons, so this
    /// needs a purpose and a case, and the listing is itself audited.
    #[arg(long, requires = "case_ref")]
    pub purpose: Option<String>,
    /// The case the listing belongs to (with --purpose).
    #[arg(long = "case", requires = "purpose")]
    pub case_ref: Option<String>,
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Writes a new random 32-byte signing key (mode 0600).
    Keygen(KeygenArgs),
    /// Prints a signed token (HS256 JWT).
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct IssueArgs {
    /// The signing key (the nodes' `token_key_file`).
    #[arg(long)]
    pub key_file: PathBuf,
    /// Who the token stands for (recorded in the audit log).
    #[arg(long)]
    pub subject: String,
    /// Roles, comma-separated: ingest, analyst, investigator, fieldwork,
    /// operator, auditor.
    #[arg(long, value_delimiter = ',', required = true)]
    pub roles: Vec<hourcell_node::roles::Role>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    pub ttl_secs: u64,
}

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Remove every hour older than the limit now, on every replica.
    Apply(ServerFormatArgs),
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a consistent backup of a running unsharded cluster into a new
    /// directory: the metadata group's store at a raft index that covers
    /// every write acknowledged before it began, with a manifest and
    /// SHA-256 checksums. Sharded clusters are not supported yet.
    Create(BackupCreateArgs),
    /// Check a backup: sizes, checksums, pair counts, key shapes and
    /// order, and the audit chain. Exit code 6 when it fails.
    Verify(BackupVerifyArgs),
    /// Seed a new node's empty data directory (from its config) with a
    /// backup. Restore every node of the new cluster (any number of nodes,
    /// as its config lists them) from the same backup, then start them all
    /// without --join. Local: reads the backup and writes the data
    /// directory, needs no server.
    Restore(BackupRestoreArgs),
}

#[derive(Debug, Args)]
pub struct BackupCreateArgs {
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// A new (or empty) directory to write the backup into.
    #[arg(long)]
    pub to: PathBuf,
    /// Why the backup is taken (recorded in the audit log).
    #[arg(long)]
    pub purpose: String,
    /// A case or change reference (recorded in the audit log).
    #[arg(long = "case")]
    pub case_ref: String,
    /// An earlier backup of the same cluster to build on (incremental): a
    /// group whose store applied no write since that backup's image is not
    /// sent again; its image file is hard-linked (or copied) from there, so
    /// the new directory is still a whole backup on its own. Past weeks'
    /// cell shards change no more, so most of a sharded cluster is reused.
    #[arg(long, value_name = "DIR")]
    pub base: Option<PathBuf>,
    /// text (table) or json.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct BackupVerifyArgs {
    /// The backup directory.
    pub dir: PathBuf,
    /// text (table) or json.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct BackupRestoreArgs {
    /// The backup directory.
    #[arg(long)]
    pub from: PathBuf,
    /// The new node's config (`hourcell node --config`); its data_dir must
    /// be empty or missing.
    #[arg(long)]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Data directory; created if missing. A new one gets the demo town.
    #[arg(long, default_value = "data/dev")]
    pub data_dir: PathBuf,
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:7420")]
    pub listen: SocketAddr,
    /// Persons in the demo town.
    #[arg(long, default_value_t = 3000)]
    pub persons: u64,
    /// Days of events in the demo town (ending today).
    #[arg(long, default_value_t = 14)]
    pub days: u32,
    /// Seed of the demo town.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Load the town, print the summary and exit instead of serving.
    #[arg(long)]
    pub no_serve: bool,
    /// Start this many nodes replicating one raft group (on consecutive
    /// ports from --listen, data in DATA_DIR/node1, node2, ...). 1 = a
    /// single node without raft.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=7))]
    pub nodes: u64,
    /// With --nodes > 1: shard the data as CELLS,PERSONS (e.g. 4,2): that
    /// many cell shards and person shards, each its own raft group beside
    /// the metadata group. Default: one group holds everything.
    #[arg(long, value_name = "CELLS,PERSONS", value_parser = parse_shards)]
    pub shards: Option<(u32, u32)>,
}

/// A `--shards` value that is not a layout.
#[derive(Debug, thiserror::Error)]
pub enum ShardsArgError {
    #[error("{0:?}: expected CELLS,PERSONS, e.g. 4,2")]
    Shape(String),
    #[error("{0:?} is not a number of shards")]
    Number(String),
    #[error("{0}")]
    Layout(#[from] hourcell_storage::StorageError),
}

fn parse_shards(s: &str) -> Result<(u32, u32), ShardsArgError> {
    let (c, p) = s
        .split_once(',')
        .ok_or_else(|| ShardsArgError::Shape(s.to_string()))?;
    let n = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| ShardsArgError::Number(v.to_string()))
    };
    let (c, p) = (n(c)?, n(p)?);
    hourcell_storage::shard::Layout::new(c, p)?;
    Ok((c, p))
}

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// TOML config file.
    #[arg(long)]
    pub config: PathBuf,
    /// Join the running cluster of the configured peers instead of
    /// starting a new one: for a node added to the cluster, or one whose
    /// data directory was lost (start it empty with --join; it is removed
    /// and re-added, and catches up from a snapshot). Same as
    /// `[cluster] join = true`.
    #[arg(long)]
    pub join: bool,
}

#[derive(Debug, Args)]
pub struct GenArgs {
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 2000)]
    pub persons: u64,
    #[arg(long, default_value_t = 14)]
    pub days: u32,
    /// First day (UTC midnight), RFC 3339 or unix seconds. Default
    /// 2026-11-01T00:00:00Z.
    #[arg(long)]
    pub start: Option<String>,
    /// Output directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the peer comparison's event rows (benches/peers) into
    /// this directory: one CSV per day with each event's resolved point,
    /// UTC hour and level-16 slice cell, and prep.json.
    #[arg(long)]
    pub peers: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImportKind {
    Events,
    Addresses,
    Registry,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// What the file holds.
    #[arg(long, value_enum)]
    pub kind: ImportKind,
    /// The rows: CSV with a header row (as written by `hourcell gen`),
    /// gzip'd CSV, or Parquet with the same column names (docs/FORMATS.md);
    /// told apart by their first bytes. `-` reads stdin.
    pub file: PathBuf,
    /// Rows per request.
    #[arg(long, default_value_t = 5000)]
    pub batch: usize,
    /// Event requests in flight at once (addresses and registrations are
    /// always sent one at a time, in file order).
    #[arg(long, default_value_t = 3)]
    pub in_flight: usize,
    /// How long to keep sending a batch again (and to wait for the node
    /// at the start) while the way to the node fails (unavailable, timed
    /// out, connection reset), with backoff from 0.2 s doubling to 5 s.
    /// Batches are idempotent, so a batch sent twice is stored once.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub retry_for: u64,
    /// The summary as text (table) or json (accepted, rejected and the
    /// first rejected rows with their line, or Parquet row, field and
    /// reason).
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

#[derive(Debug, Args)]
pub struct ServerArg {
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

/// A node to ask and how to print its answer.
#[derive(Debug, Args)]
pub struct ServerFormatArgs {
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// text (table) or json.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// The directory to write into (created if missing).
    #[arg(long, default_value = "man")]
    pub out: PathBuf,
}

/// The query kinds, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    WhoWasAt,
    WhereWas,
    Occupancy,
    NoActivitySince,
    Grid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Table,
    Csv,
    Json,
    /// A GeoJSON FeatureCollection of cell polygons (query grid only).
    Geojson,
    /// A PNG heat map written to --out; with --hourly, one frame per hour
    /// into the directory --out (query grid only).
    Png,
}

/// How a query's answer is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum QueryFormat {
    #[default]
    Table,
    Csv,
    Json,
    /// A GeoJSON FeatureCollection of cell polygons (grid only).
    Geojson,
    /// A PNG heat map written to --out; with --hourly, one frame per hour
    /// into the directory --out (grid only).
    Png,
    /// An Apache Parquet file (snappy): one row per person, hour or cell,
    /// typed columns (docs/FORMATS.md). Binary: to --out FILE, or stdout
    /// when it is not a terminal.
    Parquet,
    /// An Arrow IPC stream with the columns of --format parquet. Binary,
    /// as parquet.
    Arrow,
}

impl QueryFormat {
    /// Bytes, not text: never written to a terminal.
    pub fn is_binary(self) -> bool {
        matches!(self, QueryFormat::Parquet | QueryFormat::Arrow)
    }
}

/// The error for the grid's formats elsewhere.
pub fn grid_only() -> anyhow::Error {
    anyhow::anyhow!("--format geojson and png are only for `hourcell query grid`")
}

/// `hourcell query KIND`: one subcommand per kind, so that each `--help`
/// lists only the flags that kind takes.
#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(subcommand)]
    pub kind: QueryCommand,
}

#[derive(Debug, Subcommand)]
pub enum QueryCommand {
    /// The persons seen in a region during a window (investigator; needs
    /// --purpose and --case, audited).
    WhoWasAt(WhoWasAtArgs),
    /// Where one person was, hour by hour: cells, addresses and sources
    /// (investigator; needs --purpose and --case, audited).
    WhereWas(WhereWasArgs),
    /// Distinct persons in a region per hour and over the window (analyst
    /// or investigator; analysts see counts below 5 suppressed).
    Occupancy(OccupancyArgs),
    /// Registered persons with no activity since a time, optionally only
    /// those registered in a region (investigator; needs --purpose and
    /// --case, audited).
    NoActivitySince(NoActivityArgs),
    /// The population heat map: distinct persons per S2 cell of --level
    /// (and hour, with --hourly).
    Grid(GridArgs),
}

impl QueryCommand {
    pub fn kind(&self) -> QueryKind {
        match self {
            QueryCommand::WhoWasAt(_) => QueryKind::WhoWasAt,
            QueryCommand::WhereWas(_) => QueryKind::WhereWas,
            QueryCommand::Occupancy(_) => QueryKind::Occupancy,
            QueryCommand::NoActivitySince(_) => QueryKind::NoActivitySince,
            QueryCommand::Grid(_) => QueryKind::Grid,
        }
    }

    /// Where and how the answer goes, and which node is asked.
    pub fn output(&self) -> (&OutputArgs, &ServerArg) {
        match self {
            QueryCommand::WhoWasAt(a) => (&a.output, &a.server),
            QueryCommand::WhereWas(a) => (&a.output, &a.server),
            QueryCommand::Occupancy(a) => (&a.output, &a.server),
            QueryCommand::NoActivitySince(a) => (&a.output, &a.server),
            QueryCommand::Grid(a) => (&a.output, &a.server),
        }
    }
}

/// Regions made of cells: what the grid takes.
#[derive(Debug, Clone, Default, Args)]
pub struct CellRegionArgs {
    /// Rectangle LAT1,LNG1,LAT2,LNG2 (degrees).
    #[arg(long, allow_hyphen_values = true)]
    pub rect: Option<String>,
    /// Circle LAT,LNG,METRES.
    #[arg(long, allow_hyphen_values = true)]
    pub circle: Option<String>,
    /// S2 cell tokens, comma separated, any level.
    #[arg(long)]
    pub cells: Option<String>,
    /// A GeoJSON Polygon or MultiPolygon (holes allowed), or a Feature or
    /// one-feature FeatureCollection holding one: a file, `-` for stdin,
    /// or inline JSON starting with `{`. Positions are [lng, lat]; a cell
    /// counts when its quadrilateral meets the polygon. At most 10,000
    /// positions; split a polygon crossing the antimeridian at ±180.
    #[arg(long, allow_hyphen_values = true)]
    pub polygon: Option<String>,
}

/// Every kind of region: cells, or addresses.
#[derive(Debug, Clone, Default, Args)]
pub struct RegionArgs {
    #[command(flatten)]
    pub cells: CellRegionArgs,
    /// Address codes, comma separated.
    #[arg(long)]
    pub addresses: Option<String>,
    /// An area code: all addresses in it.
    #[arg(long)]
    pub area: Option<String>,
}

/// `--as-of`, which every kind takes.
#[derive(Debug, Clone, Default, Args)]
pub struct AsOfArg {
    /// Answer as of this time (default now): later hours are not seen.
    #[arg(long)]
    pub as_of: Option<String>,
}

/// The hours asked about.
#[derive(Debug, Clone, Default, Args)]
pub struct WindowArgs {
    /// Window start, RFC 3339 or unix seconds (widened to the hour).
    #[arg(long)]
    pub from: Option<String>,
    /// Window end, exclusive (widened to the hour). Default: as-of.
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub as_of: AsOfArg,
}

/// How the answer is written.
#[derive(Debug, Clone, Default, Args)]
pub struct OutputArgs {
    #[arg(long, value_enum, default_value_t = QueryFormat::Table)]
    pub format: QueryFormat,
    /// Write the answer to this file instead of stdout (`-`: stdout).
    /// With --format png: the PNG file, or with --hourly the directory for
    /// one frame per hour. Parquet and Arrow are never written to a
    /// terminal.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WhoWasAtArgs {
    #[command(flatten)]
    pub region: RegionArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    #[command(flatten)]
    pub why: WhyArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Args)]
pub struct WhereWasArgs {
    /// The person's id.
    #[arg(long)]
    pub person: u64,
    #[command(flatten)]
    pub window: WindowArgs,
    #[command(flatten)]
    pub why: WhyArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Args)]
pub struct OccupancyArgs {
    #[command(flatten)]
    pub region: RegionArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Args)]
pub struct NoActivityArgs {
    /// The time from which no activity is sought (RFC 3339 or unix
    /// seconds).
    #[arg(long)]
    pub since: Option<String>,
    #[command(flatten)]
    pub as_of: AsOfArg,
    // A region (optional): only persons registered in it.
    #[command(flatten)]
    pub scope: RegionArgs,
    /// Only activity inside this rectangle LAT1,LNG1,LAT2,LNG2 counts.
    #[arg(long, allow_hyphen_values = true, conflicts_with = "local_polygon")]
    pub local_rect: Option<String>,
    /// Only activity inside this GeoJSON Polygon or MultiPolygon counts
    /// (a file, `-` for stdin, or inline JSON starting with `{`; as
    /// --polygon).
    #[arg(long)]
    pub local_polygon: Option<String>,
    #[command(flatten)]
    pub why: WhyArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub server: ServerArg,
}

#[derive(Debug, Args)]
pub struct GridArgs {
    #[command(flatten)]
    pub region: CellRegionArgs,
    #[command(flatten)]
    pub window: WindowArgs,
    /// The S2 level of the grid's cells, 1 to the slice level (default 14,
    /// cells of about 600 m; analysts are served level 14 only).
    #[arg(long)]
    pub level: Option<u8>,
    /// One count per cell and hour (else one per cell for the window).
    #[arg(long)]
    pub hourly: bool,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub server: ServerArg,
}

/// `hourcell tasks ...`
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Evaluate the rules now (or as of --at) and store the new tasks.
    /// Running twice raises nothing new while tasks are open.
    Run(TasksRunArgs),
    /// Print every task matching the filters (follows all pages).
    List(TasksListArgs),
    /// Show one task with its evidence.
    Show(TaskIdArgs),
    /// Mark a task in progress.
    Start(TaskChangeArgs),
    /// Resolve a task with an outcome.
    Resolve(TaskResolveArgs),
    /// Print task changes as they happen, from --cursor on. Print the last
    /// seq seen and pass it as --cursor to resume with no gaps.
    Watch(TasksWatchArgs),
}

/// Why person-level data is asked for: written to the audit log before the
/// answer is sent. Person-level queries need both; field staff working one
/// task (show, start, resolve) may leave out --case: the task is the case.
#[derive(Debug, Clone, Default, Args)]
pub struct WhyArgs {
    /// Why the data is needed (e.g. "field visit").
    #[arg(long)]
    pub purpose: Option<String>,
    /// The case it belongs to (e.g. a round or assignment reference).
    #[arg(long = "case")]
    pub case: Option<String>,
}

#[derive(Debug, Args)]
pub struct TasksRunArgs {
    /// Evaluate as of this time (RFC 3339 or unix seconds) instead of now.
    #[arg(long, allow_hyphen_values = true)]
    pub at: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

#[derive(Debug, Args)]
pub struct TasksListArgs {
    /// Only tasks in this area.
    #[arg(long)]
    pub area: Option<String>,
    /// The rule that raised the task.
    #[arg(long, ignore_case = true, value_parser = ["REGISTER_NEWCOMER", "RESIDENCE_MISMATCH", "VERIFY_DEPARTURE"])]
    pub kind: Option<String>,
    /// Where the task stands.
    #[arg(long, value_parser = ["open", "in_progress", "resolved"])]
    pub state: Option<String>,
    /// Tasks fetched per request.
    #[arg(long, default_value_t = 500)]
    pub page_size: u32,
    #[command(flatten)]
    pub why: WhyArgs,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

#[derive(Debug, Args)]
pub struct TaskIdArgs {
    pub id: u64,
    #[command(flatten)]
    pub why: WhyArgs,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

#[derive(Debug, Args)]
pub struct TaskChangeArgs {
    pub id: u64,
    /// On whose behalf (a staff handle); the task history records the
    /// authenticated caller, and this after it.
    #[arg(long, default_value = "")]
    pub by: String,
    #[arg(long, default_value = "")]
    pub note: String,
    #[command(flatten)]
    pub why: WhyArgs,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

#[derive(Debug, Args)]
pub struct TaskResolveArgs {
    pub id: u64,
    /// What the visit found. A rejected task is not raised again for the
    /// same person, address and kind for 30 days.
    #[arg(long, value_parser = ["confirmed", "rejected", "not_found"])]
    pub outcome: String,
    /// On whose behalf (a staff handle); the task history records the
    /// authenticated caller, and this after it.
    #[arg(long, default_value = "")]
    pub by: String,
    #[arg(long, default_value = "")]
    pub note: String,
    #[command(flatten)]
    pub why: WhyArgs,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

#[derive(Debug, Args)]
pub struct TasksWatchArgs {
    /// Resume after this change seq (0 = from the first change).
    #[arg(long, default_value_t = 0)]
    pub cursor: u64,
    /// Stop after this many changes (default: run until Ctrl-C).
    #[arg(long)]
    pub limit: Option<u64>,
    #[command(flatten)]
    pub why: WhyArgs,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

/// `hourcell cluster ...`
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Ask one node for the known nodes, then every node for its raft
    /// state: membership (voter, learner), role, term, commit and applied
    /// index, lag behind the leader.
    Status(ClusterStatusArgs),
    /// Add a node to the cluster. It joins as a learner, catches up (by
    /// snapshot, then the log) and is promoted to voter by the leader.
    /// Start the new node with `hourcell node --join` (which asks for this
    /// itself) or run this command before starting it.
    AddNode(AddNodeArgs),
    /// Remove a node from the cluster (a leader hands over first). To
    /// replace a dead node: remove it, then add the new one.
    RemoveNode(RemoveNodeArgs),
    /// Split a cell shard of a sharded cluster now (shards also split on
    /// their own past `split_events_per_hour` or `split_grown_bytes`): a
    /// new shard on the least loaded nodes takes over the later writes of
    /// half of its cells, in its week and every later week. Reads and
    /// writes go on meanwhile; nothing is copied.
    Split(SplitArgs),
}

#[derive(Debug, Args)]
pub struct SplitArgs {
    /// The cell shard's raft group, as `hourcell cluster status` lists it
    /// (the GROUP column of its shard table).
    #[arg(long = "shard", value_name = "GROUP")]
    pub group: u64,
    /// text (table) or json.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

#[derive(Debug, Args)]
pub struct AddNodeArgs {
    /// The new node's id (unique, non-zero).
    #[arg(long)]
    pub id: u64,
    /// The new node's gRPC address (host:port), as peers will dial it.
    #[arg(long)]
    pub addr: String,
    /// If the id is already a member, remove it first (its data was lost).
    #[arg(long)]
    pub replace: bool,
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

#[derive(Debug, Args)]
pub struct RemoveNodeArgs {
    #[arg(long)]
    pub id: u64,
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}

#[derive(Debug, Args)]
pub struct ClusterStatusArgs {
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The node to ask (host:port, or https://host:port with TLS).
    #[arg(long, env = "HOURCELL_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
}
