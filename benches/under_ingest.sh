#!/usr/bin/env bash
# Query latency right after a load, after Admin.Compact, after a restart,
# and while ingesting (docs/benchmarks.md, "Session 14: right after a
# load, and reads under ingest"). One fresh single node; the queries are
# hourcell bench's occupancy, who-was-at and where-was.
# Usage: benches/under_ingest.sh [--bin BIN] [--persons N] [--days D]
#   [--rate EVENTS_PER_SEC (default: half the load's rate)] [--queries N] [--work DIR]
set -euo pipefail
BIN=target/release/hourcell; P=300000; DAYS=14; RATE=""; N=3000; WORK=""; PORT=57502
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) BIN="$2"; shift ;;
    --persons) P="$2"; shift ;;
    --days) DAYS="$2"; shift ;;
    --rate) RATE="$2"; shift ;;
    --queries) N="$2"; shift ;;
    --work) WORK="$2"; shift ;;
    -h|--help) sed -n 2,7p "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$WORK" ] || WORK="$(mktemp -d /var/tmp/hourcell-ingest.XXXXXX)"
S="http://127.0.0.1:$PORT"; D="$WORK/node"; PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; true' EXIT
. "$(dirname "$0")/node_env.sh"
write_node_toml 1024
Q=(--server "$S" --persons "$P" --days "$DAYS" --skip-load --no-compact --only occupancy,who-was-at,where-was)
pass() {
  echo "== $1 [$(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)]"
  "$BIN" bench "${Q[@]}" --queries "$N" "${@:2}" | grep -E "runs +[0-9]|ingest during"
}
restart_node
echo "== load"
loaded="$("$BIN" bench --server "$S" --persons "$P" --days "$DAYS" --queries 0 --no-compact | grep "^events:")"
echo "$loaded"
[ -n "$RATE" ] || RATE="$(echo "$loaded" | sed -E 's/.*\(([0-9]+) events\/s.*/\1/' | awk '{print int($1/2)}')"
pass "right after the load"; pass "again"
echo "== Admin.Compact"; "$BIN" bench --server "$S" --persons "$P" --days "$DAYS" --skip-load --queries 0 | grep compaction
pass "right after compaction"; pass "again"
restart_node
pass "after a restart"; pass "again"
pass "ingesting the present at $RATE" --ingest-during "$RATE"
pass "settled"
pass "ingesting the past at $RATE" --ingest-during "$RATE" --ingest-hours past
pass "settled"
