#!/usr/bin/env bash
# Resident memory of one node after each step of a load (docs/capacity.md,
# "Which structure holds it"): addresses, then registrations, then events
# (compacted, so no memtable is replayed), restarting the node after each
# step and reading its VmRSS 5 s later.
# Usage: benches/rss_by_step.sh [--bin BIN] [--persons N] [--days D] [--work DIR]
set -euo pipefail
BIN=target/release/hourcell; P=100000; DAYS=1; WORK=""; PORT=57503
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift ;;
    --persons) P="$2"; shift ;;
    --days) DAYS="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    -h|--help) sed -n 2,6p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$WORK" ] || WORK="$(mktemp -d /var/tmp/hourcell-rss.XXXXXX)"
S="http://127.0.0.1:$PORT"; T="$WORK/town"; D="$WORK/node"; PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; true' EXIT
"$BIN" gen --seed 1 --persons "$P" --days "$DAYS" --out "$T" >/dev/null
. "$(dirname "$0")/node_env.sh"
write_node_toml 64
restart() {
  restart_node
  sleep 5
  printf '%-40s %8s kB\n' "$1" "$(awk '/VmRSS/{print $2}' "/proc/$PID/status")"
}
count() { echo $(( $(wc -l < "$T/$1") - 1 )); }
restart "empty node"
"$BIN" import --server "$S" --kind addresses "$T/addresses.csv" >/dev/null
restart "+ $(count addresses.csv) addresses"
"$BIN" import --server "$S" --kind registry "$T/registry.csv" >/dev/null
restart "+ $(count registry.csv) registrations"
"$BIN" import --server "$S" --kind events "$T/events.csv" --batch 20000 >/dev/null
# bench with --queries 0 on loaded data only compacts (its town is not loaded).
"$BIN" bench --server "$S" --persons 100 --days 1 --skip-load --queries 0 >/dev/null
restart "+ $(count events.csv) events, compacted"
