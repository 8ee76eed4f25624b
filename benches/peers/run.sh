#!/usr/bin/env bash
# hourcell vs PostgreSQL 15 + PostGIS vs DuckDB vs SedonaDB on the same
# generated town (issues 6 and 19). Usage: benches/peers/run.sh [--quick]
#   [--persons N] [--days N] [--seed S] [--queries N] [--heavy N]
#   [--clients 1,8,32] [--work DIR] [--hourcell BIN] [--venv DIR]
#   [--append FILE] [--summary FILE] [--no-sedona] [--keep] [--keep-town]
#   [--force]
# Prints a markdown section; with --append FILE also appends it there.
# Needs root on Debian 12 (apt-get), network to Debian and PyPI.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PERSONS="${PEERS_PERSONS:-100000}"
SEED="${PEERS_SEED:-1}"
QUERIES="${PEERS_QUERIES:-50}"
DAYS="${PEERS_DAYS:-14}"
HEAVY="${PEERS_HEAVY:-20}"
CLIENTS="${PEERS_CLIENTS:-1,8,32}"
SEDONA=1
FORCE=0
SUMMARY=""
# Disk to leave free on the work directory's file system (GiB).
RESERVE_GIB="${PEERS_RESERVE_GIB:-8}"
START="2026-11-01T00:00:00Z"
WORK="${PEERS_WORK:-}"
HOURCELL="${PEERS_HOURCELL:-}"
VENV="${PEERS_VENV:-$HERE/.venv}"
APPEND=""
PG_PORT="${PEERS_PG_PORT:-55432}"
HC_PORT="${PEERS_HC_PORT:-57420}"
BATCH="${PEERS_BATCH:-20000}"
KEEP=0
# Keep the town, the peers' rows and the parameters (not the systems' data)
# to rerun one system's phase on them later.
KEEP_TOWN=0

while [ $# -gt 0 ]; do
  case "$1" in
    --quick) PERSONS=5000; QUERIES=20; HEAVY=10 ;;
    --persons) PERSONS="$2"; shift ;;
    --days) DAYS="$2"; shift ;;
    --heavy) HEAVY="$2"; shift ;;
    --clients) CLIENTS="$2"; shift ;;
    --summary) SUMMARY="$2"; shift ;;
    --no-sedona) SEDONA=0 ;;
    --force) FORCE=1 ;;
    --seed) SEED="$2"; shift ;;
    --queries) QUERIES="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    --hourcell) HOURCELL="$2"; shift ;;
    --venv) VENV="$2"; shift ;;
    --append) APPEND="$2"; shift ;;
    --keep) KEEP=1 ;;
    --keep-town) KEEP_TOWN=1 ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
COMMAND="benches/peers/run.sh --persons $PERSONS --days $DAYS --seed $SEED --queries $QUERIES --heavy $HEAVY --clients $CLIENTS"

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
    rm -rf "$PGDATA" "$WORK/pglog" "$HC_DATA" "$WORK/duck.db" "$WORK/duck.db.wal"
    if [ "$KEEP_TOWN" = 0 ]; then
      rm -rf "$WORK/prep" "$WORK/town"
      if [ "$CLEAN_WORK" = 1 ]; then rm -rf "$WORK"; fi
    fi
  fi
}
trap cleanup EXIT

# ---------------------------------------------------------------- disk
# Bytes per event, measured at 5k and 100k persons x 14 days: the town's
# events.csv ~75 (removed once hourcell has imported it), the peers' rows
# ~115, PostgreSQL's table and indexes ~260 (no WAL for the load with
# wal_level minimal), DuckDB ~20, hourcell ~5 after compaction (~11 before).
# The peak is the rows with PostgreSQL's files, plus a margin: 420. Persons
# x days x 6.6 events.
EVENTS_EST=$((PERSONS * DAYS * 66 / 10))
NEED_GIB=$(( (EVENTS_EST * 420 + (1 << 30) - 1) / (1 << 30) ))
AVAIL_GIB=$(( $(df -Pk "$WORK" | awk 'NR==2 {print $4}') / 1048576 ))
log "disk: about ${NEED_GIB} GiB needed for ~${EVENTS_EST} events; ${AVAIL_GIB} GiB free, ${RESERVE_GIB} GiB to stay free"
if [ $((AVAIL_GIB - NEED_GIB)) -lt "$RESERVE_GIB" ] && [ "$FORCE" = 0 ]; then
  echo "not enough disk: ${NEED_GIB} GiB needed, ${AVAIL_GIB} GiB free, ${RESERVE_GIB} GiB must stay free (--force to try anyway)" >&2
  exit 3
fi

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
if [ "$SEDONA" = 1 ] && ! "$VENV/bin/python" -W ignore -c 'import sedonadb, pyarrow, geoarrow.pyarrow' 2>/dev/null; then
  log "adding SedonaDB to the virtualenv"
  "$VENV/bin/pip" install -q sedonadb pyarrow geoarrow-pyarrow
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
# (a hard link where it can be: a rebuild writes a new file, and a debug
# binary is 800 MB)
ln -f "$HOURCELL" "$WORK/hourcell" 2>/dev/null || cp "$HOURCELL" "$WORK/hourcell"
HC="$WORK/hourcell"
HC_VERSION="$("$HC" --version)"
# A debug build's figures are not release figures: the report says which.
case "$HOURCELL" in */debug/*) HC_BUILD="${PEERS_HC_BUILD:-debug}" ;; *) HC_BUILD="${PEERS_HC_BUILD:-release}" ;; esac

# gRPC stubs from the repository's proto
mkdir -p "$WORK/gen"
"$PY" -m grpc_tools.protoc -I "$REPO/proto" --python_out="$WORK/gen" --grpc_python_out="$WORK/gen" "$REPO/proto/hourcell/v1/hourcell.proto"
touch "$WORK/gen/hourcell/__init__.py" "$WORK/gen/hourcell/v1/__init__.py"

# ---------------------------------------------------------------- town
START_UNIX="$(date -u -d "$START" +%s)"
AS_OF_UNIX=$((START_UNIX + DAYS * 86400))
log "generating the town: $PERSONS persons, $DAYS days, seed $SEED"
rm -rf "$WORK/town"
rm -rf "$WORK/prep"
if "$HC" gen --help | grep -q -- '--peers'; then
  # the generator writes the peers' rows (point, hour, level-16 cell) itself
  "$HC" gen --seed "$SEED" --persons "$PERSONS" --days "$DAYS" --start "$START" --out "$WORK/town" --peers "$WORK/prep" >&2
  PREP_HOW="written by \`hourcell gen --peers\` on $(nproc) threads, beside the town's CSV"
else
  "$HC" gen --seed "$SEED" --persons "$PERSONS" --days "$DAYS" --start "$START" --out "$WORK/town" >&2
  log "precomputing point, hour and S2 level-16 cell for the peers (Python)"
  "$PY" "$PEERS" prep --town "$WORK/town" --out "$WORK/prep" --workers "$(nproc)" >&2
  PREP_HOW="computed by \`peers.py prep\` on $(nproc) processes"
fi
chmod -R a+rX "$WORK/town" "$WORK/prep"
"$PY" "$PEERS" params --town "$WORK/town" --prep "$WORK/prep" --seed "$SEED" --n "$QUERIES" --nas "$QUERIES" \
  --heavy "$HEAVY" --start "$START_UNIX" --days "$DAYS" --out "$WORK/params.json" >&2

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
  --data "$HC_DATA" --gen "$WORK/gen" --pid "$HC_PID" --batch "$BATCH" --clients "$CLIENTS" \
  --out "$WORK/result_hourcell.json" >&2
log "hourcell from Rust: hourcell bench --params, the same parameter sets"
"$PY" "$PEERS" rust --bin "$HC" --params "$WORK/params.json" --listen "127.0.0.1:$HC_PORT" --clients "$CLIENTS" \
  --out "$WORK/result_hourcell_rust.json" >&2
kill "$HC_PID"; wait "$HC_PID" 2>/dev/null || true; HC_PID=""
# each system's footprint is measured; free the disk for the next one (the
# peers read the prepared rows, not the town's events.csv)
if [ "$KEEP" = 0 ]; then rm -rf "$HC_DATA"; fi
if [ "$KEEP" = 0 ] && [ "$KEEP_TOWN" = 0 ]; then rm -f "$WORK/town/events.csv"; fi

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
# The disk is shared: with wal_level minimal the COPY ... FREEZE into the
# table truncated in the same transaction and the index builds write no
# WAL (up to 300 bytes an event otherwise). Commits are still fsync'd.
wal_level = minimal
max_wal_senders = 0
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
  --pgdata "$PGDATA" --port "$PG_PORT" --postmaster-pid "$PM_PID" --clients "$CLIENTS" --out "$WORK/result_postgres.json" >&2
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null
PG_STARTED=0
if [ "$KEEP" = 0 ]; then rm -rf "$PGDATA"; fi

# ---------------------------------------------------------------- duckdb
log "duckdb: in process (a child Python process of its own)"
"$PY" "$PEERS" duckdb --town "$WORK/town" --prep "$WORK/prep" --params "$WORK/params.json" --db "$WORK/duck.db" \
  --clients "$CLIENTS" --out "$WORK/result_duckdb.json" >&2
if [ "$KEEP" = 0 ]; then rm -f "$WORK/duck.db" "$WORK/duck.db.wal"; fi

# ---------------------------------------------------------------- sedonadb
if [ "$SEDONA" = 1 ]; then
  log "sedonadb: in process, in memory"
  "$PY" "$PEERS" sedona --town "$WORK/town" --prep "$WORK/prep" --params "$WORK/params.json" --clients "$CLIENTS" \
    --out "$WORK/result_sedonadb.json" >&2
fi

# ---------------------------------------------------------------- compare, report
log "comparing answers"
"$PY" "$PEERS" compare --work "$WORK" --params "$WORK/params.json" >&2

CPU="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
RAM="$(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
MACHINE="$(nproc) vCPUs ($CPU), $RAM RAM, $(. /etc/os-release && echo "$PRETTY_NAME")"
REPORT="$("$PY" "$PEERS" report --work "$WORK" --params "$WORK/params.json" --prep "$WORK/prep" \
  --date "$(date -u +%Y-%m-%d)" --machine "$MACHINE" --command "$COMMAND" --hc-version "$HC_VERSION" \
  --hc-build "$HC_BUILD" --prep-how "$PREP_HOW" \
  --commit "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
  --persons "$PERSONS" --seed "$SEED" --batch "$BATCH")"
if [ -n "$SUMMARY" ]; then
  "$PY" "$PEERS" summary --work "$WORK" --params "$WORK/params.json" --prep "$WORK/prep" --persons "$PERSONS" --out "$SUMMARY"
fi
echo "$REPORT"
echo "$REPORT" > "$WORK/report.md"
if [ -n "$APPEND" ]; then
  { echo; echo "$REPORT"; } >> "$APPEND"
  log "appended to $APPEND"
fi
