#!/usr/bin/env bash
# hourcell vs PostgreSQL 15 + PostGIS vs DuckDB on the same generated town
# (issue 6). Usage: benches/peers/run.sh [--quick] [--persons N] [--seed S]
#   [--queries N] [--work DIR] [--hourcell BIN] [--venv DIR] [--append FILE]
# Prints a markdown section; with --append FILE also appends it there.
# Needs root on Debian 12 (apt-get), network to Debian and PyPI.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PERSONS="${PEERS_PERSONS:-100000}"
SEED="${PEERS_SEED:-1}"
QUERIES="${PEERS_QUERIES:-50}"
DAYS=14
START="2026-11-01T00:00:00Z"
WORK="${PEERS_WORK:-}"
HOURCELL="${PEERS_HOURCELL:-}"
VENV="${PEERS_VENV:-$HERE/.venv}"
APPEND=""
PG_PORT="${PEERS_PG_PORT:-55432}"
HC_PORT="${PEERS_HC_PORT:-57420}"
BATCH="${PEERS_BATCH:-20000}"
KEEP=0

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) PERSONS=5000; QUERIES=20 ;;
    --persons) PERSONS="$2"; shift ;;
    --seed) SEED="$2"; shift ;;
    --queries) QUERIES="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    --hourcell) HOURCELL="$2"; shift ;;
    --venv) VENV="$2"; shift ;;
    --append) APPEND="$2"; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) sed -n 2,7p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
COMMAND="benches/peers/run.sh --persons $PERSONS --seed $SEED --queries $QUERIES"

log() { printf '\n== %s  %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------- work dir
if [ -z "$WORK" ]; then WORK="$(mktemp -d /var/tmp/hourcell-peers.XXXXXX)"; CLEAN_WORK=1; else CLEAN_WORK=0; fi
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
chmod 755 "$WORK"
PGDATA="$WORK/pgdata"
HC_DATA="$WORK/hourcell-data"
HC_PID=""
PG_STARTED=0

cleanup() {
  set +e
  if [ -n "$HC_PID" ] && kill -0 "$HC_PID" 2>/dev/null; then kill "$HC_PID"; wait "$HC_PID" 2>/dev/null; fi
  if [ "$PG_STARTED" = 1 ]; then runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1; fi
  if [ "$KEEP" = 0 ]; then
    rm -rf "$PGDATA" "$WORK/pglog" "$HC_DATA" "$WORK/duck.db" "$WORK/duck.db.wal" "$WORK/prep" "$WORK/town"
    if [ "$CLEAN_WORK" = 1 ]; then rm -rf "$WORK"; fi
  fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- packages
PG_BIN=/usr/lib/postgresql/15/bin
if [ ! -x "$PG_BIN/initdb" ] || [ ! -e /usr/share/postgresql/15/extension/postgis.control ]; then
  log "installing PostgreSQL 15 and PostGIS 3 (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq postgresql-15 postgresql-15-postgis-3 >/dev/null
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then apt-get install -y -qq python3-venv >/dev/null; fi

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import duckdb, psycopg, s2sphere, grpc, grpc_tools' 2>/dev/null; then
  log "creating the Python virtualenv $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q duckdb 'psycopg[binary]' s2sphere grpcio grpcio-tools
fi
PY="$VENV/bin/python"
PEERS="$HERE/peers.py"

# ---------------------------------------------------------------- hourcell binary
if [ -z "$HOURCELL" ]; then
  if [ -x "$REPO/target/release/hourcell" ]; then HOURCELL="$REPO/target/release/hourcell"
  else
    log "building hourcell (release)"
    (cd "$REPO" && cargo build --release -p hourcell-cli --bin hourcell)
    HOURCELL="$REPO/target/release/hourcell"
  fi
fi
# a private copy: a rebuild of the original during the run cannot change it
cp "$HOURCELL" "$WORK/hourcell"
HC="$WORK/hourcell"
HC_VERSION="$("$HC" --version)"

# gRPC stubs from the repository's proto
mkdir -p "$WORK/gen"
"$PY" -m grpc_tools.protoc -I "$REPO/proto" --python_out="$WORK/gen" --grpc_python_out="$WORK/gen" "$REPO/proto/hourcell/v1/hourcell.proto"
touch "$WORK/gen/hourcell/__init__.py" "$WORK/gen/hourcell/v1/__init__.py"

# ---------------------------------------------------------------- town
START_UNIX="$(date -u -d "$START" +%s)"
AS_OF_UNIX=$((START_UNIX + DAYS * 86400))
log "generating the town: $PERSONS persons, $DAYS days, seed $SEED"
rm -rf "$WORK/town"
"$HC" gen --seed "$SEED" --persons "$PERSONS" --days "$DAYS" --start "$START" --out "$WORK/town" >&2
chmod -R a+rX "$WORK/town"
log "precomputing point, hour and S2 level-16 cell for the peers"
"$PY" "$PEERS" prep --town "$WORK/town" --out "$WORK/prep" --workers "$(nproc)" >&2
chmod -R a+rX "$WORK/prep"
"$PY" "$PEERS" params --town "$WORK/town" --prep "$WORK/prep" --seed "$SEED" --n "$QUERIES" --nas "$QUERIES" \
  --start "$START_UNIX" --days "$DAYS" --out "$WORK/params.json" >&2

# ---------------------------------------------------------------- hourcell
log "hourcell: node, import, compact, queries"
rm -rf "$HC_DATA"
cat > "$WORK/node.toml" <<EOF
data_dir = "$HC_DATA"
listen = "127.0.0.1:$HC_PORT"
block_cache_mb = 1024
log = "warn"

[rules]
hourly = false

# Loopback benchmark on generated data: plaintext, every role for the
# harness, no rate limit, and a retention limit the generated town fits in.
[security]
insecure = true
anonymous_roles = ["all"]
requests_per_sec = 0
retention_days = 36500
EOF
"$HC" node --config "$WORK/node.toml" >"$WORK/hourcell-node.log" 2>&1 &
HC_PID=$!
for _ in $(seq 100); do "$HC" status --server "http://127.0.0.1:$HC_PORT" >/dev/null 2>&1 && break; sleep 0.2; done
"$PY" "$PEERS" hourcell --bin "$HC" --town "$WORK/town" --params "$WORK/params.json" --listen "127.0.0.1:$HC_PORT" \
  --data "$HC_DATA" --gen "$WORK/gen" --pid "$HC_PID" --batch "$BATCH" --out "$WORK/result_hourcell.json" >&2
kill "$HC_PID"; wait "$HC_PID" 2>/dev/null || true; HC_PID=""

# ---------------------------------------------------------------- postgres
log "postgres: private server on 127.0.0.1:$PG_PORT"
rm -rf "$PGDATA"
install -d -o postgres -g postgres -m 700 "$PGDATA"
install -d -o postgres -g postgres -m 755 "$WORK/pglog"
runuser -u postgres -- "$PG_BIN/initdb" -D "$PGDATA" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
# A competent setup for a 24 GiB, 2-core machine with fast disks, the same
# memory budget as hourcell's block cache. Durability stays at the defaults.
cat >> "$PGDATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PGDATA'
shared_buffers = 1GB
effective_cache_size = 16GB
work_mem = 64MB
maintenance_work_mem = 2GB
max_wal_size = 16GB
checkpoint_timeout = 30min
random_page_cost = 1.1
effective_io_concurrency = 200
max_parallel_maintenance_workers = 2
max_parallel_workers_per_gather = 2
fsync = on
synchronous_commit = on
full_page_writes = on
EOF
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" -l "$WORK/pglog/postgres.log" -w start >/dev/null
PG_STARTED=1
PM_PID="$(head -1 "$PGDATA/postmaster.pid")"
"$PY" "$PEERS" postgres --town "$WORK/town" --prep "$WORK/prep" --params "$WORK/params.json" --schema "$HERE/schema.sql" \
  --pgdata "$PGDATA" --port "$PG_PORT" --postmaster-pid "$PM_PID" --out "$WORK/result_postgres.json" >&2
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
PG_STARTED=0

# ---------------------------------------------------------------- duckdb
log "duckdb: in process (a child Python process of its own)"
"$PY" "$PEERS" duckdb --town "$WORK/town" --prep "$WORK/prep" --params "$WORK/params.json" --db "$WORK/duck.db" \
  --out "$WORK/result_duckdb.json" >&2

# ---------------------------------------------------------------- compare, report
log "comparing answers"
"$PY" "$PEERS" compare --work "$WORK" --params "$WORK/params.json" >&2

CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
RAM="$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
MACHINE="$(nproc) vCPUs ($CPU), $RAM RAM, $(. /etc/os-release && echo "$PRETTY_NAME")"
REPORT="$("$PY" "$PEERS" report --work "$WORK" --params "$WORK/params.json" --prep "$WORK/prep" \
  --date "$(date -u +%Y-%m-%d)" --machine "$MACHINE" --command "$COMMAND" --hc-version "$HC_VERSION" \
  --commit "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --persons "$PERSONS" --seed "$SEED" --batch "$BATCH" --workers "$(nproc)")"
echo "$REPORT"
echo "$REPORT" > "$WORK/report.md"
if [ -n "$APPEND" ]; then
  { echo; echo "$REPORT"; } >> "$APPEND"
  log "appended to $APPEND"
fi
